//! Network. Enforcement: cgroup sock_addr programs on the managed root refuse connect(2) and
//! UDP sends to destinations outside `[network] connect` with EPERM, and the sock_create
//! program refuses raw and ICMP sockets. Observation: the destination is copied from the
//! caller's sockaddr at syscall entry, the result and the socket's type and protocol are
//! taken at exit (IPv4 and IPv6 only).
use agent_guard_common::{
    action, drop_slot, limit, mode, GrantKey, Kind, Rule, Verdict, PENDING_MAX, FLAG_READ_ERROR, RS_RAW_SOCKETS,
};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user},
    macros::{cgroup_sock, cgroup_sock_addr, map, tracepoint},
    maps::LruHashMap,
    programs::{SockAddrContext, SockContext, TracePointContext},
};

use crate::{dns, event, kernel, policy, run};

const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_UDPLITE: u32 = 136;
const IPPROTO_MPTCP: u32 = 262;
/// cgroup sock programs: 1 lets the operation go on, 0 fails it with EPERM.
const PASS: i32 = 1;
const REFUSE: i32 = 0;

/// What the exit of a network syscall must do for a thread whose operation a sock_addr
/// program judged (those programs cannot send signals): `PENDING_*`.
#[map]
static AG_KILL_PENDING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(PENDING_MAX, 0);

/// Refused, and `on_violation = "kill"`: SIGKILL.
const PENDING_KILL: u32 = 1;
/// Refused, and `on_violation = "freeze"`: SIGSTOP, the run is held for review.
const PENDING_STOP: u32 = 2;
/// Allowed by a one-time approval, which the sock_addr program used up.
const PENDING_GRANTED: u32 = 3;

/// The decision on a connect or UDP send to `addr` (IPv6, IPv4 as IPv4-mapped) and `port`
/// under `rs`: allowed, or refused (`deny`, `would_deny` in monitor mode), or allowed by an
/// approval. `grants`: the socket's protocol, to look up (and use up) approvals; the exit
/// tracepoints recompute without them (None) and learn from AG_KILL_PENDING what the hook
/// decided. The one network decision of the cgroup programs, the connect exit and the LSM
/// socket_connect hook (which turns a refusal into a `policy::violation` of its own).
#[inline(always)]
pub fn decide_connect(rs: &run::Ruleset, run: &run::CurrentRun, addr: &[u8; 16], port: u16, grants: Option<u32>) -> policy::Decision {
    if crate::tripwire::decoy_host(rs, addr, port) {
        // A tripwire, whatever the rest of the policy says and in monitor mode too: the
        // caller refuses it and stops the process.
        return policy::Decision { verdict: Verdict::Decoy, rule: Some(Rule::DecoyHosts) };
    }
    // Or an address an allowed DNS answer opened for the run. (A query to port 53 is no
    // exception here: the cgroup programs redirect it before they judge, and only they can;
    // the lsm hook judges sockets from outside the run, which no cgroup program rewrites.)
    if policy::net_allowed(rs, addr, port) || dns::allowed(run, addr, port) {
        return policy::ALLOWED;
    }
    let d = policy::refusal(rs, Rule::Network);
    if let (Some(protocol), Verdict::Deny) = (grants, d.verdict) {
        // The approval is for this address, port and protocol.
        let key = GrantKey { run: run.run_cgroup, kind: Kind::Connect.as_raw(), port: port as u32 | protocol << 16, id: *addr };
        if policy::granted(&key) {
            let _ = AG_KILL_PENDING.insert(&bpf_get_current_pid_tgid(), &PENDING_GRANTED, 0);
            return policy::GRANTED;
        }
    }
    d
}

/// [`decide_connect`] under the run's rule set, and that rule set (None: the run has no
/// policy, everything is allowed).
#[inline(always)]
fn net_decision(
    run: &run::CurrentRun,
    addr: &[u8; 16],
    port: u16,
    grants: Option<u32>,
) -> (policy::Decision, Option<run::Ruleset>) {
    let Some(rs) = run::ruleset(run) else { return (policy::ALLOWED, None) };
    (decide_connect(&rs, run, addr, port, grants), Some(rs))
}

#[inline(always)]
fn ruleset_id(rs: &Option<run::Ruleset>) -> u32 {
    rs.as_ref().map_or(0, |r| r.id)
}

/// With `on_violation = "kill"`, a refused operation also ends the process, at the exit of
/// its syscall; with "freeze" (`holdable`: an address the responder can approve) it stops
/// there. Takes the rule set that refused, so the whole decision is one generation's.
/// Returns the verdict to report.
#[inline(always)]
fn kill_later(rs: &run::Ruleset, holdable: bool) -> Verdict {
    if rs.hdr.mode == mode::ENFORCE && rs.hdr.on_violation == action::KILL {
        let _ = AG_KILL_PENDING.insert(&bpf_get_current_pid_tgid(), &PENDING_KILL, 0);
        return Verdict::Kill;
    }
    if holdable && policy::holds(rs) {
        let _ = AG_KILL_PENDING.insert(&bpf_get_current_pid_tgid(), &PENDING_STOP, 0);
        return Verdict::Hold;
    }
    Verdict::Deny
}

/// A decoy host: refused here and stopped at the exit of the syscall (the daemon holds the
/// run).
#[inline(always)]
fn stop_later(v: Verdict) -> Verdict {
    let _ = AG_KILL_PENDING.insert(&bpf_get_current_pid_tgid(), &PENDING_STOP, 0);
    v
}

/// Counts a connect (`which`: `limit::CONNECTS`; `limit::COUNT` for a send, which only counts
/// towards destinations and denials) against the run's budgets. True when the operation is
/// over a budget under `freeze` or `kill`: the caller refuses it, and the exit of its syscall
/// stops or kills the process (these programs cannot send signals).
#[inline(always)]
fn budgeted(run: &run::CurrentRun, rs: &run::Ruleset, which: usize, addr: &[u8; 16], port: u16, d: &policy::Decision) -> bool {
    use crate::tripwire;
    if rs.hdr.flags & agent_guard_common::RS_LIMITS == 0 {
        return false;
    }
    let mut refuse = false;
    let mut act = |which: usize, o: tripwire::Over| {
        if o.first {
            tripwire::crossed(run, rs, which, &o, false);
        }
        if o.refuses() {
            refuse = true;
        }
    };
    if which == limit::CONNECTS {
        act(limit::CONNECTS, tripwire::count(run, rs, limit::CONNECTS));
    }
    if d.verdict == Verdict::Allow {
        act(limit::DESTINATIONS, tripwire::count_destination(run, rs, addr, port));
    }
    act(limit::DENIALS, tripwire::denied(run, rs, d));
    if refuse {
        let p = if rs_kills(rs) { PENDING_KILL } else { PENDING_STOP };
        let _ = AG_KILL_PENDING.insert(&bpf_get_current_pid_tgid(), &p, 0);
    }
    refuse
}

#[inline(always)]
fn rs_kills(rs: &run::Ruleset) -> bool {
    crate::tripwire::on_limit(rs) == limit::KILL
}

/// IPv4 address of a sock_addr context as IPv4-mapped bytes, and the port (host order).
#[inline(always)]
fn v4_of(sa: *const bpf_sock_addr) -> ([u8; 16], u16) {
    // SAFETY: the context pointer the kernel passed; fields read as the verifier allows.
    unsafe { (policy::mapped_v4((*sa).user_ip4), u16::from_be((*sa).user_port as u16)) }
}

#[inline(always)]
fn v6_of(sa: *const bpf_sock_addr) -> ([u8; 16], u16) {
    let mut a = [0u8; 16];
    // SAFETY: as above; user_ip6 is read as four u32 words.
    unsafe {
        for i in 0..4 {
            let w = (*sa).user_ip6[i].to_ne_bytes();
            a[i * 4..i * 4 + 4].copy_from_slice(&w);
        }
        (a, u16::from_be((*sa).user_port as u16))
    }
}

#[inline(always)]
fn check_connect(sa: *mut bpf_sock_addr, v6: bool, addr: [u8; 16], port: u16) -> i32 {
    let Some(run) = run::current_run() else { return PASS };
    // SAFETY: context fields the verifier allows reading.
    let (protocol, sock_type, family) = unsafe { ((*sa).protocol, (*sa).type_, (*sa).user_family) };
    let (d, rs, reported, ret) = if dns::redirectable(&run, &addr, port) && dns::redirect(sa, &run, v6, &addr, port) {
        // A DNS query, now on its way to the run's forwarder (which judges the name): the
        // event names the server the process asked for.
        (policy::ALLOWED, run::ruleset(&run), Verdict::Allow, PASS)
    } else {
        let (d, rs) = net_decision(&run, &addr, port, Some(protocol));
        let (mut reported, mut ret) = match &rs {
            Some(rs) if d.verdict == Verdict::Deny => (kill_later(rs, true), REFUSE),
            Some(_) if d.verdict == Verdict::Decoy => (stop_later(Verdict::Decoy), REFUSE),
            _ => (d.verdict, PASS),
        };
        if let Some(rs) = &rs {
            if budgeted(&run, rs, limit::CONNECTS, &addr, port, &d) && ret == PASS {
                // Over a budget under freeze or kill: refused, and stopped or killed at the exit.
                (reported, ret) = (Verdict::Deny, REFUSE);
            }
        }
        (d, rs, reported, ret)
    };
    // Inside connect(2) (its entry left a record): leave the judgment for the exit's event,
    // which then needs neither the socket's kernel structures nor a second rule lookup.
    if let Some(p) = AG_PENDING_CONNECT.get_ptr_mut(&bpf_get_current_pid_tgid()) {
        // SAFETY: this thread's own record, written in place.
        unsafe {
            (*p).judged = 1;
            (*p).decision = policy::Decision { verdict: reported, rule: d.rule };
            (*p).ruleset = ruleset_id(&rs);
            (*p).sock_type = sock_type as u16;
            (*p).protocol = protocol as u16;
            (*p).port = port;
            (*p).family = family as u16;
            (*p).addr = addr;
        }
    }
    ret
}

/// UDP send to an explicit address: refused sends are reported here (allowed ones are not,
/// to keep DNS-heavy agents quiet); connect()ed sends are reported by the connect event.
#[inline(always)]
fn check_sendmsg(sa: *mut bpf_sock_addr, v6: bool, addr: [u8; 16], port: u16) -> i32 {
    let Some(run) = run::current_run() else { return PASS };
    if dns::redirectable(&run, &addr, port) && dns::redirect(sa, &run, v6, &addr, port) {
        // A DNS query: the forwarder judges (and reports) the name.
        return PASS;
    }
    // SAFETY: a context field the verifier allows reading.
    let protocol = unsafe { (*sa).protocol };
    let (d, rs) = net_decision(&run, &addr, port, Some(protocol));
    let over = match &rs {
        Some(rs) => budgeted(&run, rs, limit::COUNT, &addr, port, &d),
        None => false,
    };
    if d.verdict == Verdict::Allow {
        return if over { REFUSE } else { PASS };
    }
    let refused = d.verdict == Verdict::Deny || d.verdict == Verdict::Decoy;
    let reported = match &rs {
        Some(_) if d.verdict == Verdict::Decoy => stop_later(Verdict::Decoy),
        Some(rs) if refused => kill_later(rs, true),
        _ => d.verdict,
    };
    // SAFETY: context fields the verifier allows reading.
    let (family, sock_type, protocol) = unsafe { ((*sa).family as u16, (*sa).type_ as u16, (*sa).protocol as u16) };
    let c = event::Connect { result: 0, family, port, protocol, sock_type, addr };
    let reported = policy::Decision { verdict: reported, rule: d.rule };
    event::report_connect(Kind::Sendmsg, &run, &reported, ruleset_id(&rs), 0, true, &c);
    if refused && rs.is_some() {
        REFUSE
    } else {
        PASS
    }
}

#[cgroup_sock_addr(connect4)]
pub fn ag_connect4(ctx: SockAddrContext) -> i32 {
    let (a, p) = v4_of(ctx.sock_addr);
    check_connect(ctx.sock_addr, false, a, p)
}

#[cgroup_sock_addr(connect6)]
pub fn ag_connect6(ctx: SockAddrContext) -> i32 {
    let (a, p) = v6_of(ctx.sock_addr);
    check_connect(ctx.sock_addr, true, a, p)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn ag_sendmsg4(ctx: SockAddrContext) -> i32 {
    let (a, p) = v4_of(ctx.sock_addr);
    check_sendmsg(ctx.sock_addr, false, a, p)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn ag_sendmsg6(ctx: SockAddrContext) -> i32 {
    let (a, p) = v6_of(ctx.sock_addr);
    check_sendmsg(ctx.sock_addr, true, a, p)
}

/// Raw sockets and ICMP datagram sockets, unless `[network] raw_sockets = true`. (Packet
/// sockets never reach this hook: see syscalls.rs.)
#[cgroup_sock(sock_create)]
pub fn ag_sock_create(ctx: SockContext) -> i32 {
    let Some(run) = run::current_run() else { return PASS };
    let Some(rs) = run::ruleset(&run) else { return PASS };
    // SAFETY: context fields the verifier allows reading.
    let (family, ty, proto) = unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    let raw = ty == SOCK_RAW || (ty == SOCK_DGRAM && (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6));
    // Protocols whose sends the sock_addr hooks see; others (SCTP, L2TP, ...) could reach
    // peers without passing connect4/sendmsg4.
    let checked = matches!(proto, 0 | IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_MPTCP);
    let rule = if raw {
        if rs.hdr.flags & RS_RAW_SOCKETS != 0 {
            return PASS;
        }
        Rule::RawSocket
    } else if !checked {
        Rule::Unseen
    } else {
        return PASS;
    };
    let d = policy::refusal(&rs, rule);
    event::report_socket(&run, &d, rs.id, 0, family, ty, proto);
    if d.verdict == Verdict::Deny {
        kill_later(&rs, false);
        return REFUSE;
    }
    PASS
}

#[inline(always)]
fn kill_if_pending() -> u32 {
    if run::current_run().is_none() {
        return 0;
    }
    act_on_pending();
    0
}

/// Carries out what a sock_addr program decided for this thread's syscall (`PENDING_*`, 0:
/// nothing) and returns it.
#[inline(always)]
fn act_on_pending() -> u32 {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let Some(p) = unsafe { AG_KILL_PENDING.get(&key) }.copied() else { return 0 };
    let _ = AG_KILL_PENDING.remove(&key);
    match p {
        PENDING_KILL => policy::kill_current(),
        PENDING_STOP => policy::stop_current(),
        _ => {}
    }
    p
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn ag_exit_sendto(_ctx: TracePointContext) -> u32 {
    kill_if_pending()
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmsg")]
pub fn ag_exit_sendmsg(_ctx: TracePointContext) -> u32 {
    kill_if_pending()
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmmsg")]
pub fn ag_exit_sendmmsg(_ctx: TracePointContext) -> u32 {
    kill_if_pending()
}

#[tracepoint(category = "syscalls", name = "sys_exit_socket")]
pub fn ag_exit_socket(_ctx: TracePointContext) -> u32 {
    kill_if_pending()
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[repr(C)]
#[derive(Clone, Copy)]
struct PendingConnect {
    fd: i32,
    /// Non-zero once connect4/connect6 judged this connect: the fields from `verdict` on
    /// are theirs (the address as the kernel copied it, the socket's type and protocol).
    judged: u32,
    /// sockaddr_in or sockaddr_in6 as passed (28 bytes used).
    sa: [u8; 32],
    /// The judgment (kernel-internal: written only by these programs).
    decision: policy::Decision,
    ruleset: u32,
    sock_type: u16,
    protocol: u16,
    port: u16,
    family: u16,
    _pad: [u16; 2],
    /// IPv4-mapped for IPv4.
    addr: [u8; 16],
}

#[map]
static AG_PENDING_CONNECT: LruHashMap<u64, PendingConnect> =
    LruHashMap::with_max_entries(PENDING_MAX, 0);

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn ag_enter_connect(ctx: TracePointContext) -> u32 {
    if run::current_run().is_none() {
        return 0;
    }
    // The sys_enter_connect record: fd, uservaddr, addrlen.
    let (fd, uaddr, alen) = (kernel::tp_u64(&ctx, 16), kernel::tp_u64(&ctx, 24), kernel::tp_u64(&ctx, 32));
    let mut p = PendingConnect {
        fd: fd as i32,
        judged: 0,
        sa: [0; 32],
        decision: policy::ALLOWED,
        ruleset: 0,
        sock_type: 0,
        protocol: 0,
        port: 0,
        family: 0,
        _pad: [0; 2],
        addr: [0; 16],
    };
    let n = if alen > 28 { 28 } else { alen as u32 };
    // SAFETY: user read of at most 28 bytes into a 32-byte array; failure leaves zeros.
    unsafe { bpf_probe_read_user(p.sa.as_mut_ptr().cast(), n & 31, uaddr as *const _) };
    let family = u16::from_ne_bytes([p.sa[0], p.sa[1]]);
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    if AG_PENDING_CONNECT.insert(&bpf_get_current_pid_tgid(), &p, 0).is_err() {
        event::count_drop(drop_slot::PENDING_FULL);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn ag_exit_connect(ctx: TracePointContext) -> u32 {
    let Some(run) = run::current_run() else { return 0 };
    let pending = act_on_pending();
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let Some(p) = (unsafe { AG_PENDING_CONNECT.get(&key) }).copied() else { return 0 };
    let _ = AG_PENDING_CONNECT.remove(&key);
    let ret = kernel::tp_u64(&ctx, 16) as i64;
    let mut flags = 0;
    let (d, ruleset, sock_type, protocol, family, port, addr) = if p.judged != 0 {
        // What connect4/connect6 decided, on the address the kernel used.
        (p.decision, p.ruleset, p.sock_type, p.protocol, p.family, p.port, p.addr)
    } else {
        let family = u16::from_ne_bytes([p.sa[0], p.sa[1]]);
        // The connect failed before the cgroup hook (bad descriptor or address, already
        // connected, ...): what the policy says of the address the process passed.
        let o = kernel::offsets();
        let mut sock_type = 0u16;
        let mut protocol = 0u16;
        match kernel::fd_file(&o, p.fd).and_then(|f| kernel::read::<u64>(f, o.file_private_data)) {
            Ok(sock) => {
                sock_type = kernel::read::<i16>(sock, o.socket_type).unwrap_or(0) as u16;
                let sk: u64 = kernel::read(sock, o.socket_sk).unwrap_or(0);
                if o.sock_protocol_size == 2 {
                    protocol = kernel::read::<u16>(sk, o.sock_protocol).unwrap_or(0);
                }
            }
            Err(()) => flags |= FLAG_READ_ERROR,
        }
        let port = u16::from_be_bytes([p.sa[2], p.sa[3]]);
        let addr = if family == AF_INET {
            policy::mapped_v4(u32::from_ne_bytes([p.sa[4], p.sa[5], p.sa[6], p.sa[7]]))
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(&p.sa[8..24]);
            a
        };
        let (mut d, rs) = net_decision(&run, &addr, port, None);
        if d.verdict == Verdict::Deny {
            match pending {
                PENDING_KILL => d.verdict = Verdict::Kill,
                PENDING_STOP => d.verdict = Verdict::Hold,
                PENDING_GRANTED => d = policy::GRANTED,
                _ => {}
            }
        }
        (d, ruleset_id(&rs), sock_type, protocol, family, port, addr)
    };
    let urgent = d.verdict != Verdict::Allow || event::refused(ret);
    let c = event::Connect { result: ret as i32, family, port, protocol, sock_type, addr };
    event::report_connect(Kind::Connect, &run, &d, ruleset, flags, urgent, &c);
    0
}
