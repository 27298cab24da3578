//! open: at syscall exit the flags are read from the registers saved at entry, and the path is rebuilt from the new
//! descriptor's `struct file` (the path the kernel resolved: symlinks, `..`, relative paths
//! and dirfds are already applied). A failed open reports the string the process passed.
use agent_guard_common::{limit, GrantKey, Kind, Rule, Verdict, FLAG_READ_ERROR};
use aya_ebpf::{
    helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{event, kernel, policy, run};

/// What the process asked for: the path pointer it passed and the open flags.
#[derive(Clone, Copy)]
struct PendingOpen {
    filename: u64,
    flags: u32,
}

// Offsets of the return value in the syscalls:sys_exit_* records.
const RET: usize = 16;

const O_WRONLY: u32 = 0o1;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;

/// Which open syscall: where its arguments are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Openat,
    Open,
    Creat,
    Openat2,
}

/// The open's arguments, read at its exit from the registers the kernel saved when the
/// syscall entered (x86_64 `struct pt_regs`: di, si and dx are the first three arguments and
/// stay as they were until the syscall returns; a run may not ptrace, which alone could change
/// them). One exit program, where there used to be an entry program too, with an LRU record
/// from one to the other: the entry tracepoints ran for every open of the host while a run
/// existed, and cost a run's opens a map insert, lookup and delete each. None: the registers
/// could not be read (the open is then judged as if it asked for write access).
#[inline(always)]
fn asked(call: Call) -> Option<PendingOpen> {
    // SAFETY: helpers on the current task (a trusted pointer the kernel hands out).
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return None;
    }
    // dx, si, di: adjacent, in this order, in every x86_64 kernel (the uapi layout).
    let [dx, si, di]: [u64; 3] = kernel::read(regs, kernel::offsets().pt_regs_di - 16).ok()?;
    Some(match call {
        Call::Openat => PendingOpen { filename: si, flags: dx as u32 },
        Call::Open => PendingOpen { filename: di, flags: si as u32 },
        Call::Creat => PendingOpen { filename: di, flags: O_CREAT | O_WRONLY | O_TRUNC },
        Call::Openat2 => {
            // `how` is a user pointer whose first field is the u64 flags; unreadable: 0, as
            // the kernel then fails the open.
            let flags = match dx {
                0 => 0,
                // SAFETY: user read; a failure is handled.
                how => unsafe { aya_ebpf::helpers::bpf_probe_read_user(how as *const u64) }.unwrap_or(0),
            };
            PendingOpen { filename: si, flags: flags as u32 }
        }
    })
}

const O_ACCMODE: u32 = 0o3;
const FMODE_READ: u32 = 1;
const FMODE_WRITE: u32 = 2;
const FMODE_PATH: u32 = 0x4000;

/// The access bits of an open as grant keys carry them (1 read | 2 write).
#[inline(always)]
pub fn access_bits(read: bool, write: bool) -> u32 {
    read as u32 | (write as u32) << 1
}

/// The decision on opening `file` with `read` and/or `write` access, and the file's identity
/// if the decision needed it (a violation an approval may cover; zero otherwise). `walked`:
/// its path, rebuilt into scratch (None: it could not be, and the open is `unseen`, never
/// allowed by default). `can_refuse` as in `policy::violation`. The one decision of the
/// tracepoint exit and of the LSM file_open hook.
#[inline(always)]
pub fn decide_open(
    rs: &run::Ruleset,
    run: &run::CurrentRun,
    file: u64,
    walked: Option<&kernel::Walked>,
    read: bool,
    write: bool,
    can_refuse: bool,
) -> (policy::Decision, [u8; 16]) {
    let mut file_id = [0u8; 16];
    // The approval is for this file with exactly this access.
    let key = || {
        file_id = kernel::file_id(&kernel::offsets(), file);
        GrantKey { run: run.run_cgroup, kind: Kind::Open.as_raw(), port: access_bits(read, write), id: file_id }
    };
    let d = match crate::contain::open_breaks(&kernel::offsets(), run, file, write) {
        Some(rule) => policy::violation(rs, rule, can_refuse, policy::NO_HOLD),
        None => match walked {
            Some(w) => policy::file_decision(rs, w, read, write, can_refuse, Some(key)),
            None => policy::violation(rs, Rule::Unseen, can_refuse, policy::NO_HOLD),
        },
    };
    crate::tripwire::counted(run, rs, limit::OPENS, &d);
    (d, file_id)
}

/// At syscall exit the new descriptor exists but the process has not seen it yet: an open
/// outside the policy gets SIGKILL here and never returns to user space with it. The
/// decision uses the path the kernel resolved and the descriptor's real access mode, so it
/// does not depend on the entry record (which can be lost under pressure) nor on the ring
/// buffer having room.
#[inline(always)]
fn finish(ctx: &TracePointContext, call: Call) -> u32 {
    let Some(run) = run::current_run() else { return 0 };
    let rs = run::ruleset(&run);
    let ret = kernel::tp_u64(ctx, RET) as i64;
    // Unreadable registers: no path to report for a failed open, and write intent assumed.
    let p = asked(call).unwrap_or(PendingOpen { filename: 0, flags: O_CREAT | O_WRONLY });
    let o = kernel::offsets();
    let mut flags = 0u32;
    let mut walk = kernel::Walk::NONE;
    let mut decision = policy::ALLOWED;
    let mut file_id = [0u8; 16];
    let mut access = 0u32;
    if ret >= 0 {
        let file = kernel::fd_file(&o, ret as i32).unwrap_or(0);
        if let (Some(buf), true) = (crate::scratch::scratch(), file != 0) {
            walk = kernel::Walk::of(kernel::path_to_buf(&o, file + o.file_f_path as u64, buf));
        }
        if walk.get().is_none() {
            flags |= FLAG_READ_ERROR;
        }
        if let Some(rs) = &rs {
            let fmode: u32 = kernel::read(file, o.file_f_mode).unwrap_or(FMODE_READ | FMODE_WRITE);
            let acc = p.flags & O_ACCMODE;
            let write = fmode & FMODE_WRITE != 0 || acc != 0 || p.flags & (O_CREAT | O_TRUNC) != 0;
            let read = fmode & FMODE_READ != 0 || acc != 1;
            access = access_bits(read, write);
            // O_PATH grants no access to the contents; reopening it is another open. Taken
            // from the file, not from flags a racing thread could change after entry.
            if fmode & FMODE_PATH == 0 {
                (decision, file_id) = decide_open(rs, &run, file, walk.get(), read, write, false);
            }
        }
    }
    // A refused open of a policied run may be the Landlock layer's denial.
    let urgent = decision.verdict != Verdict::Allow || (rs.is_some() && event::refused(ret));
    let open = event::Open { open_flags: p.flags, result: ret as i32, access, file_id };
    event::report_open(&run, &decision, rs.as_ref().map_or(0, |r| r.id), flags, urgent, &open, walk.get(), Some(p.filename));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn ag_exit_openat(ctx: TracePointContext) -> u32 {
    finish(&ctx, Call::Openat)
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn ag_exit_open(ctx: TracePointContext) -> u32 {
    finish(&ctx, Call::Open)
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn ag_exit_creat(ctx: TracePointContext) -> u32 {
    finish(&ctx, Call::Creat)
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn ag_exit_openat2(ctx: TracePointContext) -> u32 {
    finish(&ctx, Call::Openat2)
}
