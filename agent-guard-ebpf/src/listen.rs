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
use agent_guard_common::{Kind, Rule, Verdict, FLAG_LISTEN, FLAG_LSM, FLAG_TRACEPOINT};
use aya_ebpf::{
    macros::{cgroup_sock_addr, lsm, tracepoint},
    programs::{LsmContext, SockAddrContext, TracePointContext},
};

use crate::{event, kernel, lsm::{answer, HookArgs}, policy, run, sockets};

const PASS: i32 = 1;
const REFUSE: i32 = 0;
const EPERM: i32 = 1;

/// The decision on a bind to, or a listen on (`can_refuse` as `policy::violation`; a bind's
/// cgroup hook refuses through its return value, so None), `addr:port` under `rs`: the one
/// bind/listen decision of the cgroup, tracepoint and LSM programs. Port 0 is a socket never
/// bound (listen) and never allowed; a bind to port 0 does not get here.
#[inline(always)]
pub fn decide_listen(rs: &run::Ruleset, addr: &[u8; 16], port: u16, can_refuse: Option<bool>) -> policy::Decision {
    if port != 0 && policy::listen_allowed(rs, addr, port) {
        return policy::ALLOWED;
    }
    match can_refuse {
        Some(can_refuse) => policy::violation(rs, Rule::Listen, can_refuse, policy::NO_HOLD),
        None => policy::refusal(rs, Rule::Listen),
    }
}

#[inline(always)]
fn report(run: &run::CurrentRun, d: &policy::Decision, ruleset: u32, flags: u32, family: u16, addr: [u8; 16], port: u16) {
    let result = if d.verdict == Verdict::Deny { -EPERM } else { 0 };
    let c = event::Connect { result, family, port, protocol: 0, sock_type: 0, addr };
    event::report_connect(Kind::Bind, run, d, ruleset, flags, true, &c);
}

#[inline(always)]
fn check_bind(family: u16, addr: [u8; 16], port: u16) -> i32 {
    if port == 0 {
        return PASS;
    }
    let Some(run) = run::current_run() else { return PASS };
    let Some(rs) = run::ruleset(&run) else { return PASS };
    let d = decide_listen(&rs, &addr, port, None);
    if d.verdict == Verdict::Allow {
        return PASS;
    }
    report(&run, &d, rs.id, 0, family, addr, port);
    if d.verdict == Verdict::Deny { REFUSE } else { PASS }
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

/// The decision for listening on `sock`; reports a violation. `lsm`: the hook can refuse.
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
    let d = decide_listen(&rs, &addr, port, Some(lsm));
    if d.verdict != Verdict::Allow {
        let flags = FLAG_LISTEN | if lsm { FLAG_LSM } else { FLAG_TRACEPOINT };
        report(&run, &d, rs.id, flags, family, addr, port);
    }
    d
}

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn ag_enter_listen(ctx: TracePointContext) -> u32 {
    if run::decides_exec() {
        return 0;
    }
    if run::current_run().is_none() {
        return 0;
    }
    let fd = kernel::tp_u64(&ctx, 16) as i32;
    let o = kernel::offsets();
    let Ok(file) = kernel::fd_file(&o, fd) else { return 0 };
    let Ok(sock) = kernel::read::<u64>(file, o.file_private_data) else { return 0 };
    // Not a socket (listen fails with ENOTSOCK) or not an IP one: `bound` says so.
    check_listen(sock, false);
    0
}

/// socket_listen(struct socket *sock, int backlog).
#[lsm(hook = "socket_listen")]
pub fn ag_lsm_socket_listen(ctx: LsmContext) -> i32 {
    on_socket_listen(&ctx)
}

/// The decision of `socket_listen` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_socket_listen(ctx: &impl HookArgs) -> i32 {
    let sock: u64 = ctx.arg(0);
    answer(&check_listen(sock, true))
}
