//! `[syscalls] deny`, and the syscalls this backend cannot see through, checked at entry of
//! every syscall of a run. A raw tracepoint (sys_enter): it runs for every syscall on the
//! host, and a raw tracepoint costs a fraction of a perf-event tracepoint program.
//!
//! What a process observes: SIGKILL, received when the syscall returns to user space. A
//! tracepoint cannot stop the syscall itself, so its effect may happen before the process
//! dies (see the README's enforcement table); the process never runs another instruction.
use agent_guard_common::{kind, rule, RS_RAW_SOCKETS, SyscallEvent};
use aya_ebpf::{helpers::bpf_probe_read_user, macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{event, kernel, policy, run};

const NR_SOCKET: u32 = 41;
const NR_CLONE: u32 = 56;
const NR_CLONE3: u32 = 435;
const AF_PACKET: u64 = 17;
/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: a new namespace
/// would let the process remount paths under names the policy allows.
const CLONE_NEW_ANY: u64 = 0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;
/// x86 thread_info.status bit of a 32-bit (int 0x80 / compat) syscall, whose numbers are
/// another table.
const TS_COMPAT: u32 = 0x0002;

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn ag_sys_enter(ctx: RawTracePointContext) -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let Some(rs) = run::ruleset(&run) else { return 0 };
    // TP_PROTO(struct pt_regs *regs, long id)
    let regs: u64 = ctx.arg(0);
    let id: i64 = ctx.arg(1);
    let o = kernel::offsets();
    let arg0: u64 = kernel::read(regs, o.pt_regs_di).unwrap_or(0);
    let nr = id as u32;
    let status: u32 = kernel::read(kernel::current_task(), o.task_ti_status).unwrap_or(0);
    let rule = if status & TS_COMPAT != 0 || id < 0 || id >= 512 {
        rule::UNSEEN
    } else if policy::bit_set(&rs.hdr.syscalls, nr) {
        rule::SYSCALLS
    } else if policy::bit_set(&rs.hdr.unseen, nr) {
        rule::UNSEEN
    } else if nr == NR_CLONE && arg0 & CLONE_NEW_ANY != 0 {
        rule::UNSEEN
    } else if nr == NR_CLONE3 && clone3_flags(arg0) & CLONE_NEW_ANY != 0 {
        rule::UNSEEN
    } else if nr == NR_SOCKET && arg0 == AF_PACKET && rs.hdr.flags & RS_RAW_SOCKETS == 0 {
        // Packet sockets never reach the cgroup sock_create hook.
        rule::RAW_SOCKET
    } else {
        return 0;
    };
    let d = policy::violation(&rs, rule, false);
    let Some(mut entry) = event::reserve::<SyscallEvent>() else { return 0 };
    let mut hdr = event::header(kind::SYSCALL, &run);
    hdr.verdict = d.verdict;
    hdr.rule = d.rule;
    hdr.ruleset = rs.id;
    entry.write(SyscallEvent { hdr, nr: id as u32, _pad: 0, arg0 });
    entry.submit(0);
    0
}

/// clone_args.flags (the first u64 of the struct clone3 is given).
#[inline(always)]
fn clone3_flags(args: u64) -> u64 {
    if args == 0 {
        return 0;
    }
    // SAFETY: user read; a failure is treated as "no new namespace" because the kernel then
    // fails the clone3 with EFAULT as well.
    unsafe { bpf_probe_read_user(args as *const u64) }.unwrap_or(0)
}
