//! Binding and listening (`[network] listen`): a run may bind an IP socket to an address and
//! port, and listen on it, only where the policy lists it.
//!
//! - cgroup `bind4` / `bind6`: bind(2) to a listed address:port goes on, to another is
//!   refused with EPERM before it happens. A bind to port 0 (an ephemeral port, as clients do
//!   to pick a source address) is let through: the kernel picks the port, and serving on it
//!   is what `listen` judges.
//! - listen(2), on the address and port the socket is bound to (an unbound socket listens on
//!   an ephemeral port of every address, which no rule lists): under the lsm backend
//!   `socket_listen` refuses with EPERM; under the tracepoint backend the entry of listen(2)
//!   kills the process (its socket dies with it, unless another process shares it).
use agent_guard_common::{
    net_kind, net_rule, verdict, ConnectEvent, NetKey, NetRule, FLAG_LSM, NET_RULES_MAX, PORT_RANGES_MAX,
};
use aya_ebpf::{
    macros::{cgroup_sock_addr, lsm, map, tracepoint},
    maps::{lpm_trie::Key, LpmTrie},
    programs::{LsmContext, SockAddrContext, TracePointContext},
};

use crate::{event, kernel, lsm as lsm_backend, policy, run, sockets};

const BPF_F_NO_PREALLOC: u32 = 1;
const PASS: i32 = 1;
const REFUSE: i32 = 0;

/// (rule set, address prefix) -> ports a run may bind and listen on. IPv4 as IPv4-mapped.
#[map]
static AG_LISTEN_RULES: LpmTrie<NetKey, NetRule> = LpmTrie::with_max_entries(NET_RULES_MAX, BPF_F_NO_PREALLOC);

/// Whether `[network] listen` of rule set `id` allows `addr` (16 bytes) and `port`.
#[inline(always)]
fn listen_allowed(id: u32, addr: &[u8; 16], port: u16) -> bool {
    let key = Key::new(32 + 128, NetKey { ruleset_be: id.to_be_bytes(), addr: *addr });
    let Some(r) = AG_LISTEN_RULES.get(&key) else { return false };
    let n = if r.count as usize > PORT_RANGES_MAX { PORT_RANGES_MAX } else { r.count as usize };
    // Every slot at a constant offset (see policy::net_allowed).
    let mut ok = false;
    for (i, pr) in r.ranges.iter().enumerate() {
        ok |= i < n && port >= pr.lo && port <= pr.hi;
    }
    ok
}

#[inline(always)]
fn report(run: &run::CurrentRun, kind: u32, d: &policy::Decision, ruleset: u32, family: u16, addr: [u8; 16], port: u16, lsm: bool) {
    let Some(mut entry) = event::reserve::<ConnectEvent>(true) else { return };
    let mut hdr = event::header(kind, run);
    hdr.verdict = d.verdict;
    hdr.rule = d.rule;
    hdr.ruleset = ruleset;
    if lsm {
        hdr.flags |= FLAG_LSM;
    }
    // The event carries IPv4 in its first 4 bytes.
    let mut out = addr;
    if family == sockets::AF_INET as u16 {
        out = [0; 16];
        out[..4].copy_from_slice(&addr[12..16]);
    }
    let result = if d.verdict == verdict::DENY { -1 } else { 0 };
    entry.write(ConnectEvent { hdr, result, family, port, protocol: 0, sock_type: 0, _pad: 0, addr: out });
    entry.submit(0);
}

#[inline(always)]
fn check_bind(family: u16, addr: [u8; 16], port: u16) -> i32 {
    if port == 0 {
        return PASS;
    }
    let Some(run) = run::current_run() else { return PASS };
    let Some(rs) = run::ruleset(&run) else { return PASS };
    if listen_allowed(rs.id, &addr, port) {
        return PASS;
    }
    let d = policy::refusal(&rs, net_rule::LISTEN);
    report(&run, net_kind::BIND, &d, rs.id, family, addr, port, false);
    if d.verdict == verdict::DENY { REFUSE } else { PASS }
}

#[cgroup_sock_addr(bind4)]
pub fn ag_bind4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: context fields the verifier allows reading.
    let (ip, port) = unsafe { ((*sa).user_ip4, u16::from_be((*sa).user_port as u16)) };
    check_bind(sockets::AF_INET as u16, policy::mapped_v4(ip), port)
}

#[cgroup_sock_addr(bind6)]
pub fn ag_bind6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let mut a = [0u8; 16];
    // SAFETY: as above; user_ip6 is read as four u32 words.
    let port = unsafe {
        for i in 0..4 {
            a[i * 4..i * 4 + 4].copy_from_slice(&(*sa).user_ip6[i].to_ne_bytes());
        }
        u16::from_be((*sa).user_port as u16)
    };
    check_bind(sockets::AF_INET6 as u16, a, port)
}

/// Where the IP socket `sock` (a `struct socket *`) is bound: family, address (IPv4 mapped)
/// and port (0: not bound). None: not an IP socket.
#[inline(always)]
fn bound(sock: u64) -> Result<Option<(u16, [u8; 16], u16)>, ()> {
    let o = sockets::net_offsets();
    let sk: u64 = kernel::read(sock, o.socket_sk)?;
    let family: u16 = kernel::read(sk, o.skc_family)?;
    let port: u16 = kernel::read(sk, o.skc_num)?;
    let addr = match family as u32 {
        sockets::AF_INET => policy::mapped_v4(kernel::read::<u32>(sk, o.skc_rcv_saddr)?),
        sockets::AF_INET6 => kernel::read::<[u8; 16]>(sk, o.skc_v6_rcv_saddr)?,
        _ => return Ok(None),
    };
    Ok(Some((family, addr, port)))
}

/// The decision for listening on `sock`. `lsm`: the hook can refuse.
#[inline(always)]
fn check_listen(sock: u64, lsm: bool) -> policy::Decision {
    let Some(run) = run::current_run() else { return policy::ALLOWED };
    let Some(rs) = run::ruleset(&run) else { return policy::ALLOWED };
    let (family, addr, port) = match bound(sock) {
        Ok(Some(b)) => b,
        Ok(None) => return policy::ALLOWED,
        // Unreadable: refused, not guessed.
        Err(()) => (0, [0; 16], 0),
    };
    if port != 0 && listen_allowed(rs.id, &addr, port) {
        return policy::ALLOWED;
    }
    let d = policy::violation(&rs, net_rule::LISTEN, lsm, policy::NO_HOLD);
    report(&run, net_kind::LISTEN, &d, rs.id, family, addr, port, lsm);
    d
}

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn ag_enter_listen(ctx: TracePointContext) -> u32 {
    if lsm_backend::decides_exec() {
        return 0;
    }
    if run::current_run().is_none() {
        return 0;
    }
    let fd = kernel::tp_u64(&ctx, 16) as i32;
    let o = kernel::offsets();
    let no = sockets::net_offsets();
    let Ok(file) = kernel::fd_file(&o, fd) else { return 0 };
    let Ok(sock) = kernel::read::<u64>(file, no.file_private_data) else { return 0 };
    // Not a socket (listen fails with ENOTSOCK) or not an IP one: `bound` says so.
    check_listen(sock, false);
    0
}

/// socket_listen(struct socket *sock, int backlog).
#[lsm(hook = "socket_listen")]
pub fn ag_lsm_socket_listen(ctx: LsmContext) -> i32 {
    let sock: u64 = ctx.arg(0);
    sockets::answer(&check_listen(sock, true))
}
