//! exit: a process (thread group leader) of a run ends.
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};

use crate::{event, kernel, policy, run};

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn ag_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 != (pid_tgid >> 32) as u32 {
        return 0; // a thread other than the leader
    }
    let Some(run) = run::current_run() else { return 0 };
    policy::forget_held((pid_tgid >> 32) as u32);
    let o = kernel::offsets();
    let code: i32 = kernel::read(kernel::current_task(), o.task_exit_code).unwrap_or(0);
    event::report_exit(&run, code as u32);
    0
}
