//! `[syscalls] deny`, and the syscalls this backend cannot see through, checked at entry of
//! every syscall of a run. A raw tracepoint (sys_enter): it runs for every syscall on the
//! host, and a raw tracepoint costs a fraction of a perf-event tracepoint program.
//!
//! What a process observes: SIGKILL, received when the syscall returns to user space. A
//! tracepoint cannot stop the syscall itself, so its effect may happen before the process
//! dies (see the README's enforcement table); the process never runs another instruction.
//!
//! Runs started by `agent-guard run` with `on_violation = "deny"` carry a seccomp filter
//! (`RUN_SECCOMP`) that refuses the same syscalls with an errno before this hook runs: a
//! refused syscall never gets here. Only `link`/`linkat` pass that filter (the run's Landlock
//! layer judges them, or the filter refuses them), so they are not killed as unseen here.
use agent_guard_common::{Rule, RUN_SECCOMP};
use aya_ebpf::{helpers::bpf_probe_read_user, macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{event, kernel, policy, run};

use agent_guard_common::clone::{INTO_CGROUP, NR_CLONE, NR_CLONE3};
const NR_LINK: u32 = 86;
const NR_LINKAT: u32 = 265;
const NR_BPF: u32 = 321;
/// x86 thread_info.status bit of a 32-bit (int 0x80 / compat) syscall, whose numbers are
/// another table.
const TS_COMPAT: u32 = 0x0002;

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn ag_sys_enter(ctx: RawTracePointContext) -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let Some(rs) = run::ruleset(&run) else { return 0 };
    if policy::is_held() {
        // Held for review, yet running: resumed by someone other than the daemon.
        policy::kill_current();
        return 0;
    }
    // TP_PROTO(struct pt_regs *regs, long id)
    let id: i64 = ctx.arg(1);
    let nr = id as u32;
    let o = kernel::offsets();
    let status: u32 = kernel::read(kernel::current_task(), o.task_ti_status).unwrap_or(0);
    // The first argument is read only for the syscalls it decides (and for a report).
    let arg0 = || kernel::read::<u64>(ctx.arg(0), o.pt_regs_di);
    let rule = if status & TS_COMPAT != 0 || id < 0 || id >= 512 {
        Rule::Unseen
    } else if policy::bit_set(&rs.hdr.syscalls, nr) {
        Rule::Syscalls
    } else if policy::bit_set(&rs.hdr.unseen, nr) {
        if run.flags & RUN_SECCOMP != 0 && (nr == NR_LINK || nr == NR_LINKAT) {
            return 0;
        }
        if nr == NR_BPF {
            Rule::SelfProtection
        } else {
            Rule::Unseen
        }
    } else if nr == NR_CLONE || nr == NR_CLONE3 {
        let Ok(arg0) = arg0() else {
            // The argument that decides could not be read: refused, not guessed.
            return report(&run, &rs, Rule::Unseen, nr, 0);
        };
        let rule = if nr == NR_CLONE {
            if !refused_clone(arg0) {
                return 0;
            }
            Rule::Unseen
        } else {
            match clone3_flags(arg0) {
                Some(f) if f & INTO_CGROUP != 0 => Rule::ContainCgroup,
                Some(f) if !refused_clone(f) => return 0,
                _ => Rule::Unseen,
            }
        };
        return report(&run, &rs, rule, nr, arg0);
    } else {
        return 0;
    };
    report(&run, &rs, rule, nr, arg0().unwrap_or(0))
}

#[inline(always)]
fn report(run: &run::CurrentRun, rs: &run::Ruleset, rule: Rule, nr: u32, arg0: u64) -> i32 {
    let d = policy::violation(rs, rule, false, policy::NO_HOLD);
    event::report_syscall(run, &d, rs.id, 0, nr, arg0);
    0
}

#[inline(always)]
fn refused_clone(flags: u64) -> bool {
    agent_guard_common::clone::refused(flags)
}

/// clone_args.flags (the first u64 of the struct clone3 is given); None if unreadable.
#[inline(always)]
fn clone3_flags(args: u64) -> Option<u64> {
    if args == 0 {
        return None;
    }
    // SAFETY: user read; failure is reported as None (refused).
    unsafe { bpf_probe_read_user(args as *const u64) }.ok()
}
