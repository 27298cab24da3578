//! exec: the new image's executable (resolved path of mm->exe_file) and its argv; and, on
//! the tracepoint backend, execs refused before they happened (the run's Landlock layer
//! fails them with EACCES, and `sched_process_exec` never fires for them).
use agent_guard_common::{drop_slot, limit, GrantKey, Kind, Rule, FLAG_READ_ERROR, PENDING_MAX};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};

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
        crate::tripwire::counted(&run, rs, limit::EXECS, &decision);
    }
    event::report_exec(&run, &decision, rs.as_ref().map_or(0, |r| r.id), flags, file_id, walked, Some(mm), None);
    0
}

/// An execve/execveat in progress: the filename the process passed and its dirfd.
#[repr(C)]
#[derive(Clone, Copy)]
struct PendingExec {
    filename: u64,
    dirfd: i32,
    _pad: u32,
}

/// Thread (pid_tgid) -> its exec in progress. A successful exec of a thread other than the
/// leader takes the leader's pid, so its entry is left to the LRU (never read again: every
/// exit is preceded by its own entry's insert).
#[map]
static AG_PENDING_EXEC: LruHashMap<u64, PendingExec> = LruHashMap::with_max_entries(PENDING_MAX, 0);

/// Offsets of the sys_enter_* arguments and of the sys_exit_* result in their records.
const ARG0: usize = 16;
const ARG1: usize = 24;
const RET: usize = 16;
const AT_FDCWD: i32 = -100;

#[inline(always)]
fn remember(filename: u64, dirfd: i32) {
    if run::current_run().is_none() {
        return;
    }
    let p = PendingExec { filename, dirfd, _pad: 0 };
    if AG_PENDING_EXEC.insert(&bpf_get_current_pid_tgid(), &p, 0).is_err() {
        event::count_drop(drop_slot::PENDING_FULL);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn ag_enter_execve(ctx: TracePointContext) -> u32 {
    remember(kernel::tp_u64(&ctx, ARG0), AT_FDCWD);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn ag_enter_execveat(ctx: TracePointContext) -> u32 {
    remember(kernel::tp_u64(&ctx, ARG1), kernel::tp_u64(&ctx, ARG0) as i32);
    0
}

/// A refused exec (EACCES, EPERM) of a run's process becomes an `exec` event with the path as
/// the process passed it and the error; the daemon says which layer refused it. The filename
/// is still in the caller's memory: a failed exec leaves the old image in place. Not attached
/// under the lsm backend, whose bprm_check_security program refuses and reports.
#[inline(always)]
fn finish(ctx: &TracePointContext) -> u32 {
    let Some(run) = run::current_run() else { return 0 };
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the entry is copied out before it is removed.
    let Some(p) = (unsafe { AG_PENDING_EXEC.get(&key) }).copied() else { return 0 };
    let _ = AG_PENDING_EXEC.remove(&key);
    let ret = kernel::tp_u64(ctx, RET) as i64;
    if !event::refused(ret) {
        return 0;
    }
    let rs = run::ruleset(&run);
    let refused = event::RefusedExec { filename: p.filename, dirfd: p.dirfd, result: ret as i32 };
    let ruleset = rs.as_ref().map_or(0, |r| r.id);
    event::report_exec(&run, &policy::ALLOWED, ruleset, 0, [0; 16], None, None, Some(&refused));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_execve")]
pub fn ag_exit_execve(ctx: TracePointContext) -> u32 {
    finish(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_execveat")]
pub fn ag_exit_execveat(ctx: TracePointContext) -> u32 {
    finish(&ctx)
}
