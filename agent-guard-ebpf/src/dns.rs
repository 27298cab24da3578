//! Name rules (`[network] connect = ["pypi.org:443"]`): a run whose policy has them has a
//! forwarder in the daemon (`AG_DNS_FWD`). The cgroup sock_addr programs send every DNS query
//! of such a run (UDP sends and TCP or UDP connects to any address on port 53) to it, and the
//! recvmsg programs give replies the source the resolver asked, so resolvers that check it
//! accept them. The forwarder writes the addresses of the answers it lets through into
//! `AG_DNS_ALLOW`, with the rules' ports and an expiry, before the run sees the answer: a
//! connect is allowed by [`allowed`] while that entry lives.
use agent_guard_common::dns::{Allow, AllowKey, Fwd, FwdKey, Orig, ALLOW_MAX, FWD_MAX, ORIG_MAX, PORT};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap},
    programs::SockAddrContext,
};

use crate::run::{self, CurrentRun};

#[map]
static AG_DNS_FWD: HashMap<FwdKey, Fwd> = HashMap::with_max_entries(FWD_MAX, 0);

#[map]
static AG_DNS_ALLOW: LruHashMap<AllowKey, Allow> = LruHashMap::with_max_entries(ALLOW_MAX, 0);

/// Socket cookie -> the server a redirected socket asked for.
#[map]
static AG_DNS_ORIG: LruHashMap<u64, Orig> = LruHashMap::with_max_entries(ORIG_MAX, 0);

/// 127.0.0.1 and ::1 as the context's 32-bit words hold them (network byte order).
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK6_LAST: u32 = u32::from_ne_bytes([0, 0, 0, 1]);
const MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const PASS: i32 = 1;

#[inline(always)]
fn key(run: &CurrentRun) -> FwdKey {
    FwdKey { run: run.run_cgroup, policy: run.policy, _pad: 0 }
}

#[inline(always)]
fn is_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

/// Whether a connect or send of `run` to `addr`:`port` may be redirected at all: not to a
/// decoy host (a tripwire on port 53 still fires).
#[inline(always)]
pub fn redirectable(run: &CurrentRun, addr: &[u8; 16], port: u16) -> bool {
    if port != PORT {
        return false;
    }
    match run::ruleset(run) {
        Some(rs) => !crate::tripwire::decoy_host(&rs, addr, port),
        None => true,
    }
}

/// The forwarder port a query of `run` to `addr` (IPv6, IPv4 as IPv4-mapped) on `port` goes
/// to, if it is redirected: only port 53, only runs with a forwarder, only a family it
/// listens on.
#[inline(always)]
fn redirect_port(run: &CurrentRun, addr: &[u8; 16], port: u16) -> Option<u16> {
    if port != PORT {
        return None;
    }
    // SAFETY: copied out at once.
    let f = unsafe { AG_DNS_FWD.get(&key(run)) }.copied()?;
    let p = if is_mapped(addr) { f.port4 } else { f.port6 };
    if p == 0 {
        None
    } else {
        Some(p)
    }
}

/// Whether an allowed DNS answer of the run opened `addr` on `port`, and the entry lives.
#[inline(always)]
pub fn allowed(run: &CurrentRun, addr: &[u8; 16], port: u16) -> bool {
    let k = AllowKey { fwd: key(run), addr: *addr };
    // SAFETY: the entry is read in place; the daemon replaces entries whole.
    let Some(a) = (unsafe { AG_DNS_ALLOW.get(&k) }) else { return false };
    // SAFETY: helper without arguments.
    if unsafe { bpf_ktime_get_ns() } >= a.expires_ns {
        return false;
    }
    let n = a.count as usize;
    // Every slot at a constant offset, no early exit (see policy::ports_allowed).
    let mut ok = false;
    for (i, r) in a.ranges.iter().enumerate() {
        ok |= i < n && port >= r.lo && port <= r.hi;
    }
    ok
}

/// Sends a query of `run` (on port 53: see [`redirect_port`]) to its forwarder: rewrites the
/// destination of the connect or send in `sa` and remembers the server asked, for the
/// replies. `v6`: a connect6/sendmsg6 context. True when redirected.
#[inline(always)]
pub fn redirect(sa: *mut bpf_sock_addr, run: &CurrentRun, v6: bool, addr: &[u8; 16], port: u16) -> bool {
    let Some(to) = redirect_port(run, addr, port) else { return false };
    // SAFETY: the context the kernel passed; user_port and the address words are writable in
    // connect and sendmsg programs.
    unsafe {
        let orig = Orig { addr: *addr, port_be: (*sa).user_port, family: if v6 { 6 } else { 4 } };
        let cookie = bpf_get_socket_cookie(sa.cast());
        let _ = AG_DNS_ORIG.insert(&cookie, &orig, 0);
        if !v6 {
            (*sa).user_ip4 = LOOPBACK4;
        } else if is_mapped(addr) {
            (*sa).user_ip6 = [0, 0, MAPPED_WORD, LOOPBACK4];
        } else {
            (*sa).user_ip6 = [0, 0, 0, LOOPBACK6_LAST];
        }
        (*sa).user_port = u32::from(to.to_be());
    }
    true
}

/// A reply read from a redirected socket: its source becomes the server the resolver asked.
#[inline(always)]
fn restore(sa: *mut bpf_sock_addr, v6: bool) -> i32 {
    let Some(run) = run::current_run() else { return PASS };
    // SAFETY: copied out at once.
    let Some(f) = (unsafe { AG_DNS_FWD.get(&key(&run)) }).copied() else { return PASS };
    // SAFETY: context fields the verifier allows reading and (in recvmsg programs) writing.
    unsafe {
        let from = u16::from_be((*sa).user_port as u16);
        let ours = if v6 {
            let w = (*sa).user_ip6;
            let mapped = w[0] == 0 && w[1] == 0 && w[2] == MAPPED_WORD && w[3] == LOOPBACK4;
            let lo6 = w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == LOOPBACK6_LAST;
            (mapped && from == f.port4) || (lo6 && from == f.port6)
        } else {
            (*sa).user_ip4 == LOOPBACK4 && from == f.port4
        };
        if !ours || from == 0 {
            return PASS;
        }
        let cookie = bpf_get_socket_cookie(sa.cast());
        let Some(o) = AG_DNS_ORIG.get(&cookie).copied() else { return PASS };
        if v6 {
            let mut w = [0u32; 4];
            for (i, word) in w.iter_mut().enumerate() {
                *word = u32::from_ne_bytes([o.addr[i * 4], o.addr[i * 4 + 1], o.addr[i * 4 + 2], o.addr[i * 4 + 3]]);
            }
            (*sa).user_ip6 = w;
        } else {
            (*sa).user_ip4 = u32::from_ne_bytes([o.addr[12], o.addr[13], o.addr[14], o.addr[15]]);
        }
        (*sa).user_port = o.port_be;
    }
    PASS
}

#[cgroup_sock_addr(recvmsg4)]
pub fn ag_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(ctx.sock_addr, false)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn ag_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore(ctx.sock_addr, true)
}
