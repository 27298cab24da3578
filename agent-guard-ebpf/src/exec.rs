//! exec: the new image's executable (resolved path of mm->exe_file) and its argv.
use agent_guard_common::{
    ExecEvent, GrantKey, Kind, Rule, Verdict, ARGV_MAX, FLAG_ARGV_TRUNCATED, FLAG_PATH_TRUNCATED, FLAG_READ_ERROR,
};
use aya_ebpf::{helpers::generated::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};

use crate::{event, kernel, policy, run};

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
    let mut flags = 0u32;
    let mm: u64 = kernel::read(kernel::current_task(), o.task_mm).unwrap_or(0);
    let exe_file: u64 = kernel::read(mm, o.mm_exe_file).unwrap_or(0);
    let buf = crate::scratch::scratch();
    let walked = match buf {
        Some(buf) if exe_file != 0 => kernel::path_to_buf(&o, exe_file + o.file_f_path as u64, buf).ok(),
        _ => None,
    };
    let mut decision = policy::ALLOWED;
    let mut file_id = [0u8; 16];
    match &walked {
        Some(w) => {
            if w.truncated {
                flags |= FLAG_PATH_TRUNCATED;
            }
            if let Some(rs) = &rs {
                let key = || {
                    file_id = kernel::file_id(&o, exe_file);
                    GrantKey { run: run.run_cgroup, kind: Kind::Exec.as_raw(), port: 0, id: file_id }
                };
                // Under the lsm backend bprm_check_security has decided already (and used up
                // any one-time approval): judging again here would hold or kill it twice.
                if !crate::lsm::decides_exec() {
                    decision = policy::exec_decision(rs, w, false, key);
                }
            }
        }
        None => {
            flags |= FLAG_READ_ERROR;
            if let Some(rs) = &rs {
                // The executable could not be identified: never allowed by default.
                decision = policy::violation(rs, Rule::Unseen, false, policy::NO_HOLD);
            }
        }
    }
    let Some(mut entry) = event::reserve::<ExecEvent>(decision.verdict != Verdict::Allow) else { return 0 };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, writable ExecEvent; fields are written one by one to
    // keep the 512-byte stack free.
    unsafe {
        (*ev).hdr = event::header(Kind::Exec, &run);
        (*ev).hdr.verdict = decision.verdict_raw();
        (*ev).hdr.rule = decision.rule_raw();
        (*ev).hdr.ruleset = rs.as_ref().map(|r| r.id).unwrap_or(0);
        (*ev).path_len = 0;
        (*ev).argv_len = 0;
        (*ev)._pad = 0;
        (*ev).file_id = file_id;
        if let (Some(w), Some(buf)) = (&walked, buf) {
            (*ev).path_len = event::copy_walked(buf, w.start, (*ev).path.as_mut_ptr());
        }
        let start: u64 = kernel::read(mm, o.mm_arg_start).unwrap_or(0);
        let end: u64 = kernel::read(mm, o.mm_arg_end).unwrap_or(0);
        if start != 0 && end > start {
            let mut len = end - start;
            if len > ARGV_MAX as u64 {
                len = ARGV_MAX as u64;
                flags |= FLAG_ARGV_TRUNCATED;
            }
            let len = (len as u32) & (2 * ARGV_MAX as u32 - 1);
            if len <= ARGV_MAX as u32
                && bpf_probe_read_user((*ev).argv.as_mut_ptr().cast(), len, start as *const _) == 0
            {
                (*ev).argv_len = len;
            } else {
                flags |= FLAG_READ_ERROR;
            }
        }
        (*ev).hdr.flags = flags;
    }
    entry.submit(0);
    0
}
