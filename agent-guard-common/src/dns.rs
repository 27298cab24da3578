//! Name rules of `[network] connect` ("pypi.org:443"): the kernel side of the daemon's DNS
//! forwarder. A run whose policy has name rules has a forwarder (an entry in
//! [`names::DNS_FWD`](crate::names::DNS_FWD)); its queries to any server on port 53 are
//! redirected there by the cgroup sock_addr programs, and the addresses of the answers the
//! forwarder lets through are written, before the answer is returned, into
//! [`names::DNS_ALLOW`](crate::names::DNS_ALLOW) with the rules' ports and an expiry.

use crate::{PortRange, PORT_RANGES_MAX};

/// The DNS port: UDP and TCP queries to it are redirected.
pub const PORT: u16 = 53;
/// Entries of the allow map (LRU: an evicted entry is a refused connect, never a wider one).
pub const ALLOW_MAX: u32 = 1 << 16;
/// Forwarders (one per run and policy slot with name rules).
pub const FWD_MAX: u32 = 4096;
/// Redirected sockets whose original server the recvmsg programs restore (LRU).
pub const ORIG_MAX: u32 = 1 << 14;

/// Key of the forwarder map: the run cgroup and the policy slot deciding for the process (a
/// task's slot differs from its run's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FwdKey {
    pub run: u64,
    pub policy: u32,
    pub _pad: u32,
}

/// Where the forwarder of a [`FwdKey`] listens: 127.0.0.1:`port4` and [::1]:`port6` (0: none,
/// such queries are refused), UDP and TCP alike.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fwd {
    pub port4: u16,
    pub port6: u16,
    pub _pad: u32,
}

/// Key of the allow map: a forwarder's key and an address (IPv4 as IPv4-mapped IPv6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllowKey {
    pub fwd: FwdKey,
    pub addr: [u8; 16],
}

/// An address an answer opened: the ports of the rules that matched the name(s) and when the
/// entry ends (CLOCK_MONOTONIC nanoseconds, `bpf_ktime_get_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allow {
    pub expires_ns: u64,
    pub count: u32,
    pub _pad: u32,
    pub ranges: [PortRange; PORT_RANGES_MAX],
}

/// The server a redirected socket meant (recvmsg4/6 give it back as the reply's source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Orig {
    /// IPv6, IPv4 as IPv4-mapped; network byte order.
    pub addr: [u8; 16],
    /// Network byte order, as `bpf_sock_addr.user_port`.
    pub port_be: u32,
    /// 4 or 6: the family of the socket's call.
    pub family: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data, #[repr(C)] with explicit padding and no holes.
    unsafe impl aya::Pod for FwdKey {}
    unsafe impl aya::Pod for Fwd {}
    unsafe impl aya::Pod for AllowKey {}
    unsafe impl aya::Pod for Allow {}
    unsafe impl aya::Pod for Orig {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_holes() {
        assert_eq!(size_of::<FwdKey>(), 16);
        assert_eq!(size_of::<Fwd>(), 8);
        assert_eq!(size_of::<AllowKey>(), 32);
        assert_eq!(size_of::<Allow>(), 16 + 4 * PORT_RANGES_MAX);
        assert_eq!(size_of::<Orig>(), 24);
    }
}
