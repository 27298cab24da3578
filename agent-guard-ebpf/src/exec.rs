//! exec: the new image's executable (resolved path of mm->exe_file) and its argv.
use agent_guard_common::{GrantKey, Kind, Rule, FLAG_READ_ERROR};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{event, kernel, policy, run};

/// The decision on executing `file`, and the file's identity if the decision needed it (a
/// violation an approval may cover; zero otherwise). `walked`: its path, rebuilt into scratch
/// (None: it could not be, and the exec is `unseen`, never allowed by default). `can_refuse`
/// as in `policy::violation`. The one decision of the exec tracepoint and of the LSM
/// bprm_check_security hook.
#[inline(always)]
pub fn decide_exec(
    rs: &run::Ruleset,
    run: &run::CurrentRun,
    file: u64,
    walked: Option<&kernel::Walked>,
    can_refuse: bool,
) -> (policy::Decision, [u8; 16]) {
    let mut file_id = [0u8; 16];
    let key = || {
        file_id = kernel::file_id(&kernel::offsets(), file);
        GrantKey { run: run.run_cgroup, kind: Kind::Exec.as_raw(), port: 0, id: file_id }
    };
    let d = match walked {
        Some(w) => policy::exec_decision(rs, w, can_refuse, key),
        None => policy::violation(rs, Rule::Unseen, can_refuse, policy::NO_HOLD),
    };
    (d, file_id)
}

/// sched:sched_process_exec fires after the new image is set up and before it runs one
/// instruction; `current` is the new image, so its mm holds the argv the kernel copied.
/// An executable outside `[exec] allow` gets SIGKILL here, which it receives before its
/// first instruction. A script is checked by the interpreter the kernel loaded for it.
///
/// The decision is taken before the event is reserved: a full ring buffer loses the event
/// (counted), never the enforcement.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn ag_exec(_ctx: TracePointContext) -> u32 {
    let Some(run) = run::current_run() else { return 0 };
    let rs = run::ruleset(&run);
    let o = kernel::offsets();
    let mm: u64 = kernel::read(kernel::current_task(), o.task_mm).unwrap_or(0);
    let exe_file: u64 = kernel::read(mm, o.mm_exe_file).unwrap_or(0);
    let walk = match crate::scratch::scratch() {
        Some(buf) if exe_file != 0 => kernel::Walk::of(kernel::path_to_buf(&o, exe_file + o.file_f_path as u64, buf)),
        _ => kernel::Walk::NONE,
    };
    let walked = walk.get();
    let flags = if walked.is_none() { FLAG_READ_ERROR } else { 0 };
    let mut decision = policy::ALLOWED;
    let mut file_id = [0u8; 16];
    if let Some(rs) = &rs {
        // Under the lsm backend bprm_check_security has decided already (and used up any
        // one-time approval): judging again here would hold or kill it twice. An executable
        // that cannot be identified is refused either way.
        if walked.is_none() || !crate::run::decides_exec() {
            (decision, file_id) = decide_exec(rs, &run, exe_file, walked, false);
        }
    }
    event::report_exec(&run, &decision, rs.as_ref().map_or(0, |r| r.id), flags, file_id, walked, Some(mm));
    0
}
