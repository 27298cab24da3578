//! Unix sockets (`[network] unix`): a run's connect(2) to, and sendmsg(2) with the address
//! of, a pathname or abstract AF_UNIX socket is refused (EPERM) unless the policy lists it.
//!
//! - cgroup `connect_unix` / `sendmsg_unix` (kernel 6.7+): judge the address the process
//!   passed, as the kernel copied it (`bpf_sock_addr_kern.uaddr`). aya 0.14 has no attach
//!   type for them, so these two programs sit in `cgroup/connect4` and `cgroup/sendmsg4`
//!   sections (never loaded as such) and the daemon loads and attaches them itself with the
//!   unix attach types (agent-guard/src/kernel/sockaddr_unix.rs). A pathname with a `..`
//!   component is never allowed (it could climb out of a `dir/` rule); a relative one never
//!   matches (rules are absolute).
//! - lsm `unix_stream_connect` / `unix_may_send` (lsm backend, any kernel with BPF LSM):
//!   judge the peer socket itself: its resolved path (symlinks, `..`, relative names and
//!   bind mounts cannot disguise it), or its abstract name. Unnamed peers (socketpair, or
//!   sockets passed over SCM_RIGHTS) are not judged.
use agent_guard_common::{
    Kind, NetOffsets, Rule, UnixKey, Verdict, FLAG_LSM, PATH_MAX, UNIX_ABSTRACT, UNIX_PATHNAME,
    UNIX_RULES_MAX,
};
use aya_ebpf::{
    helpers::generated::bpf_probe_read_kernel,
    macros::{cgroup_sock_addr, lsm, map},
    maps::{lpm_trie::Key, LpmTrie, PerCpuArray},
    programs::{LsmContext, SockAddrContext},
};

use crate::{event, kernel, lsm::{answer, HookArgs}, policy, run, scratch, sockets};

const BPF_F_NO_PREALLOC: u32 = 1;
const PASS: i32 = 1;
const REFUSE: i32 = 0;
/// Longest sun_path.
const SUN_PATH: u32 = 108;

const EPERM: i32 = 1;

#[map]
static AG_UNIX_RULES: LpmTrie<UnixKey, u32> = LpmTrie::with_max_entries(UNIX_RULES_MAX, BPF_F_NO_PREALLOC);

/// A unix name to judge: the key (path or name filled in), and its length in bytes. Lives
/// in a per-CPU slot, not on the stack: with the path walk of the lsm hooks the stack would
/// pass the verifier's 512 bytes.
#[repr(C)]
pub struct Name {
    key: UnixKey,
    /// A pathname with a `..` component (or a name that cannot match): 1.
    climbs: u16,
    len: u32,
}

#[map]
static AG_UNIX_SCRATCH: PerCpuArray<Name> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's name slot, reset for a name of `kind`.
#[inline(always)]
fn slot(kind: u8) -> Option<&'static mut Name> {
    let p = AG_UNIX_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU memory; a program does not migrate CPUs while it runs.
    let n = unsafe { &mut *p };
    n.key.ruleset_be = [0; 4];
    n.key.kind = kind;
    n.key.len = 0;
    n.climbs = 0;
    n.len = 0;
    Some(n)
}

/// Whether rule set `id` allows `n`.
#[inline(always)]
fn allowed(id: u32, n: &mut Name) -> bool {
    if n.climbs != 0 {
        return false;
    }
    n.key.ruleset_be = id.to_be_bytes();
    let bits = if n.key.kind == UNIX_ABSTRACT {
        n.key.len = n.len as u8;
        48 + 8 * n.len
    } else {
        // The terminating zero is part of an exact rule; a `dir/` rule ends before it.
        if let Some(b) = n.key.path.get_mut(n.len as usize) {
            *b = 0;
        }
        48 + 8 * (n.len + 1)
    };
    AG_UNIX_RULES.get(Key::new(bits, n.key)).is_some()
}

/// Length of the pathname in `n.key.path` (at most `max` bytes, up to its first zero), and
/// whether it has a `..` component.
#[inline(always)]
fn scan_path(n: &mut Name, max: u32) {
    let p = &n.key.path;
    // `get` rather than indexing: no panic path reaches the object (the verifier refuses
    // the call to a function that never returns).
    let at = |i: usize| p.get(i).copied().unwrap_or(0);
    let mut len = if max > SUN_PATH { SUN_PATH } else { max } as usize;
    let mut climbs = false;
    let mut i = 0usize;
    while i < SUN_PATH as usize {
        if i >= len {
            break;
        }
        let c = at(i);
        if c == 0 {
            len = i;
            break;
        }
        if c == b'.' && at(i + 1) == b'.' && (i == 0 || at(i.wrapping_sub(1)) == b'/') {
            let next = at(i + 2);
            if next == b'/' || next == 0 || i + 2 >= len {
                climbs = true;
            }
        }
        i += 1;
    }
    n.len = len as u32;
    n.climbs = u16::from(climbs);
}

/// The name in a `struct sockaddr_un` of `alen` bytes at `sa` (kernel memory). None: no name
/// (an address too short to carry one; the kernel refuses it itself).
#[inline(always)]
fn from_sockaddr(sa: u64, alen: u32) -> Option<&'static mut Name> {
    if alen <= 2 || sa == 0 {
        return None;
    }
    let first: u8 = kernel::read(sa, 2).ok()?;
    let avail = alen - 2;
    if first == 0 {
        let n = slot(UNIX_ABSTRACT)?;
        let len = if avail - 1 > SUN_PATH - 1 { SUN_PATH - 1 } else { avail - 1 };
        // SAFETY: kernel read of at most 107 bytes into a 110-byte array.
        if unsafe { bpf_probe_read_kernel(n.key.path.as_mut_ptr().cast(), SUN_PATH - 1, (sa + 3) as *const _) } != 0 {
            return None;
        }
        n.len = len;
        Some(n)
    } else {
        let n = slot(UNIX_PATHNAME)?;
        // SAFETY: kernel read of 108 bytes into a 110-byte array (sa is a sockaddr_storage).
        if unsafe { bpf_probe_read_kernel(n.key.path.as_mut_ptr().cast(), SUN_PATH, (sa + 2) as *const _) } != 0 {
            return None;
        }
        scan_path(n, avail);
        Some(n)
    }
}

/// The decision on a connect or datagram to the unix socket named `n` under `rs`: the one
/// unix decision of the cgroup and LSM programs. `can_refuse`: as `policy::violation`; the
/// cgroup programs refuse through their return value (None: no signal from there).
#[inline(always)]
pub fn decide_unix(rs: &run::Ruleset, n: &mut Name, can_refuse: Option<bool>) -> policy::Decision {
    if allowed(rs.id, n) {
        return policy::ALLOWED;
    }
    match can_refuse {
        Some(can_refuse) => policy::violation(rs, Rule::Unix, can_refuse, policy::NO_HOLD),
        None => policy::refusal(rs, Rule::Unix),
    }
}

/// Reports a unix decision.
#[inline(always)]
fn report(run: &run::CurrentRun, kind: Kind, d: &policy::Decision, ruleset: u32, n: &Name, sock_type: u16, lsm: bool) {
    let u = event::Unix {
        result: if d.verdict == Verdict::Deny { -EPERM } else { 0 },
        abstract_name: n.key.kind == UNIX_ABSTRACT,
        sock_type,
        len: n.len,
    };
    let flags = if lsm { FLAG_LSM } else { 0 };
    event::report_unix(kind, run, d, ruleset, flags, &u, n.key.path.as_ptr());
}

#[inline(always)]
fn check_sock_addr(ctx: &SockAddrContext, kind: Kind) -> i32 {
    let Some(run) = run::current_run() else { return PASS };
    let Some(rs) = run::ruleset(&run) else { return PASS };
    let o: NetOffsets = sockets::net_offsets();
    // The context is the kernel's struct bpf_sock_addr_kern.
    let kctx = ctx.sock_addr as u64;
    let (Ok(sa), Ok(alen)) = (kernel::read::<u64>(kctx, o.sa_kern_uaddr), kernel::read::<u32>(kctx, o.sa_kern_uaddrlen)) else {
        // Unreadable: refused, not guessed.
        let d = policy::refusal(&rs, Rule::Unix);
        return if d.verdict == Verdict::Deny { REFUSE } else { PASS };
    };
    let Some(n) = from_sockaddr(sa, alen) else { return PASS };
    let d = decide_unix(&rs, n, None);
    if d.verdict == Verdict::Allow {
        return PASS;
    }
    report(&run, kind, &d, rs.id, n, 0, false);
    if d.verdict == Verdict::Deny { REFUSE } else { PASS }
}

/// Loaded by the daemon as `cgroup/connect_unix` (see the module comment).
#[cgroup_sock_addr(connect4)]
pub fn ag_connect_unix(ctx: SockAddrContext) -> i32 {
    check_sock_addr(&ctx, Kind::Connect)
}

/// Loaded by the daemon as `cgroup/sendmsg_unix`.
#[cgroup_sock_addr(sendmsg4)]
pub fn ag_sendmsg_unix(ctx: SockAddrContext) -> i32 {
    check_sock_addr(&ctx, Kind::Sendmsg)
}

/// The name of the unix socket `sk` (a `struct sock *` of a unix_sock): its resolved path
/// when it has one, else its abstract name. None: unnamed.
#[inline(always)]
fn peer_name(sk: u64) -> Result<Option<&'static mut Name>, ()> {
    let o = sockets::net_offsets();
    let ko = kernel::offsets();
    if sk == 0 || o.unix_sock_path == 0 {
        return Err(());
    }
    let path = sk + o.unix_sock_path as u64;
    let dentry: u64 = kernel::read(path, ko.path_dentry)?;
    if dentry != 0 {
        let Some(buf) = scratch::scratch() else { return Err(()) };
        let w = kernel::path_to_buf(&ko, path, buf)?;
        let len = PATH_MAX as u32 - w.start;
        let n = slot(UNIX_PATHNAME).ok_or(())?;
        if w.truncated || len > SUN_PATH {
            // Longer than any rule can be: matches nothing.
            n.climbs = 1;
            return Ok(Some(n));
        }
        let start = w.start & (PATH_MAX as u32 - 1);
        // A fixed 108 bytes (the scratch buffer is 2 * PATH_MAX, so this stays inside it):
        // a size the verifier need not bound. Bytes past `len` are ignored by the match.
        // SAFETY: 108 bytes from the per-CPU scratch into a 110-byte array.
        if unsafe { bpf_probe_read_kernel(n.key.path.as_mut_ptr().cast(), SUN_PATH, buf.add(start as usize).cast()) } != 0 {
            return Err(());
        }
        n.len = len;
        return Ok(Some(n));
    }
    let addr: u64 = kernel::read(sk, o.unix_sock_addr)?;
    if addr == 0 {
        return Ok(None);
    }
    let alen: i32 = kernel::read(addr, o.unix_address_len)?;
    Ok(from_sockaddr(addr + o.unix_address_name as u64, alen as u32))
}

#[inline(always)]
fn check_peer(sock: u64, peer_sk: u64, kind: Kind) -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let Some(rs) = run::ruleset(&run) else { return 0 };
    let o = sockets::net_offsets();
    let sock_type: i16 = kernel::read(sock, o.socket_type).unwrap_or(0);
    let n = match peer_name(peer_sk) {
        Ok(Some(n)) => n,
        Ok(None) => return 0,
        Err(()) => match slot(UNIX_PATHNAME) {
            Some(n) => {
                n.climbs = 1;
                n
            }
            // No slot: refused, not guessed.
            None => return -1,
        },
    };
    let d = decide_unix(&rs, n, Some(true));
    if d.verdict == Verdict::Allow {
        return 0;
    }
    report(&run, kind, &d, rs.id, n, sock_type as u16, true);
    answer(&d)
}

/// unix_stream_connect(struct socket *sock, struct sock *other, struct sock *newsk).
#[lsm(hook = "unix_stream_connect")]
pub fn ag_lsm_unix_stream_connect(ctx: LsmContext) -> i32 {
    on_unix_stream_connect(&ctx)
}

/// The decision of `unix_stream_connect` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_unix_stream_connect(ctx: &impl HookArgs) -> i32 {
    let (sock, other): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    check_peer(sock, other, Kind::Connect)
}

/// unix_may_send(struct socket *sock, struct socket *other): every datagram to a peer.
#[lsm(hook = "unix_may_send")]
pub fn ag_lsm_unix_may_send(ctx: LsmContext) -> i32 {
    on_unix_may_send(&ctx)
}

/// The decision of `unix_may_send` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_unix_may_send(ctx: &impl HookArgs) -> i32 {
    let (sock, other): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    let o = sockets::net_offsets();
    let Ok(sk) = kernel::read::<u64>(other, o.socket_sk) else { return 0 };
    check_peer(sock, sk, Kind::Sendmsg)
}
