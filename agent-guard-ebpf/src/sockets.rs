//! Socket families (`[network] families`): a run's processes may create AF_INET, AF_INET6,
//! AF_UNIX and AF_NETLINK/NETLINK_ROUTE sockets, and only the other families (and netlink
//! protocols) the policy lists.
//!
//! The cgroup `sock_create` hook runs only for IP sockets (inet_create/inet6_create), so it
//! cannot see the others. Under the lsm backend `socket_create` refuses them with EPERM before
//! the socket exists; under the tracepoint backend the entry of socket(2) and socketpair(2)
//! kills the process (the signal is taken when the syscall returns: the socket is created,
//! and the process never runs another instruction). The arguments are truncated to `int`
//! exactly as the kernel does (`__sys_socket(int family, int type, int protocol)`), so high
//! bits of a register cannot hide a family.
use agent_guard_common::{NetContain, NetOffsets, Rule, FLAG_LSM, FLAG_TRACEPOINT};
use aya_ebpf::{
    macros::{lsm, map, tracepoint},
    maps::HashMap,
    programs::{LsmContext, TracePointContext},
};

use crate::{event, kernel, lsm::{answer, HookArgs}, policy, run};

pub const AF_UNIX: u32 = 1;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const AF_NETLINK: u32 = 16;
const SOCK_TYPE_MASK: u32 = 0xf;

/// Rule set id -> what it allows beyond the defaults (written by the daemon with the rule set).
#[map]
static AG_NET_CONTAIN: HashMap<u32, NetContain> = HashMap::with_max_entries(agent_guard_common::RULESETS_MAX, 0);

/// Offsets for the containment programs, set by the daemon at load time from BTF.
#[unsafe(no_mangle)]
static AG_NET_OFFSETS: NetOffsets = NetOffsets {
    sa_kern_uaddr: 0,
    sa_kern_uaddrlen: 0,
    skc_family: 0,
    skc_num: 0,
    skc_rcv_saddr: 0,
    skc_v6_rcv_saddr: 0,
    unix_sock_addr: 0,
    unix_sock_path: 0,
    unix_address_len: 0,
    unix_address_name: 0,
    socket_sk: 0,
    socket_type: 0,
    file_private_data: 0,
    _pad: 0,
};

#[inline(always)]
pub fn net_offsets() -> NetOffsets {
    // SAFETY: read of a constant the loader rewrote.
    unsafe { core::ptr::read_volatile(&AG_NET_OFFSETS) }
}

/// Whether rule set `id` lets a run create a socket of `family` / `protocol` (both as the
/// kernel's `int`). A rule set without an entry (fail closed) allows only the defaults.
#[inline(always)]
fn family_allowed(id: u32, family: i32, protocol: i32) -> bool {
    let defaults = NetContain {
        families: (1 << AF_UNIX) | (1 << AF_INET) | (1 << AF_INET6) | (1 << AF_NETLINK),
        netlink: 1,
        flags: 0,
    };
    // SAFETY: copied out at once.
    let c = unsafe { AG_NET_CONTAIN.get(&id) }.copied().unwrap_or(defaults);
    if !(0..64).contains(&family) || c.families & (1u64 << family as u32) == 0 {
        return false;
    }
    if family as u32 == AF_NETLINK {
        return (0..32).contains(&protocol) && c.netlink & (1u32 << protocol as u32) != 0;
    }
    true
}

/// The decision on a new socket of `family` / `protocol` under `rs`: the one socket-family
/// decision of the syscall entries and the LSM hook. `can_refuse`: the hook can fail it.
#[inline(always)]
pub fn decide_family(rs: &run::Ruleset, family: i32, protocol: i32, can_refuse: bool) -> policy::Decision {
    if family_allowed(rs.id, family, protocol) {
        return policy::ALLOWED;
    }
    policy::violation(rs, Rule::Families, can_refuse, policy::NO_HOLD)
}

/// The decision for a new socket of the current task; reports a violation. `lsm`: the hook
/// can refuse (EPERM).
#[inline(always)]
fn judge(family: i32, ty: i32, protocol: i32, lsm: bool) -> policy::Decision {
    let Some(run) = run::current_run() else { return policy::ALLOWED };
    let Some(rs) = run::ruleset(&run) else { return policy::ALLOWED };
    let d = decide_family(&rs, family, protocol, lsm);
    if d.verdict != agent_guard_common::Verdict::Allow {
        let flags = if lsm { FLAG_LSM } else { FLAG_TRACEPOINT };
        event::report_socket(&run, &d, rs.id, flags, family as u32, ty as u32 & SOCK_TYPE_MASK, protocol as u32);
    }
    d
}

#[inline(always)]
fn enter(ctx: &TracePointContext) -> u32 {
    // Under lsm, socket_create decides (and refuses instead of killing).
    if run::decides_exec() {
        return 0;
    }
    // sys_enter_socket / sys_enter_socketpair: family, type, protocol from byte 16.
    let family = kernel::tp_u64(ctx, 16) as i32;
    let ty = kernel::tp_u64(ctx, 24) as i32;
    let protocol = kernel::tp_u64(ctx, 32) as i32;
    judge(family, ty, protocol, false);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn ag_enter_socket(ctx: TracePointContext) -> u32 {
    enter(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_enter_socketpair")]
pub fn ag_enter_socketpair(ctx: TracePointContext) -> u32 {
    enter(&ctx)
}

/// socket_create(int family, int type, int protocol, int kern): sockets the kernel makes for
/// itself (kern = 1) are not the process's.
#[lsm(hook = "socket_create")]
pub fn ag_lsm_socket_create(ctx: LsmContext) -> i32 {
    on_socket_create(&ctx)
}

/// The decision of `socket_create` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_socket_create(ctx: &impl HookArgs) -> i32 {
    let (family, ty, protocol, kern): (i32, i32, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    if kern != 0 {
        return 0;
    }
    answer(&judge(family, ty, protocol, true))
}
