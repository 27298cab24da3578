//! open: flags are taken at syscall entry; at exit the path is rebuilt from the new
//! descriptor's `struct file` (the path the kernel resolved: symlinks, `..`, relative paths
//! and dirfds are already applied). A failed open reports the string the process passed.
use agent_guard_common::{
    drop_slot, GrantKey, Kind, OpenEvent, Rule, Verdict, PENDING_MAX, FLAG_PATH_TRUNCATED, FLAG_PATH_UNRESOLVED,
    FLAG_READ_ERROR, PATH_MAX,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user_str},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};

use crate::{event, kernel, policy, run};

#[repr(C)]
#[derive(Clone, Copy)]
struct PendingOpen {
    filename: u64,
    flags: u32,
    _pad: u32,
}

#[map]
static AG_PENDING_OPEN: LruHashMap<u64, PendingOpen> = LruHashMap::with_max_entries(PENDING_MAX, 0);

// Offsets of syscall arguments in the syscalls:sys_enter_* records (8-byte slots from 16).
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;

const O_WRONLY: u32 = 0o1;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;

#[inline(always)]
fn remember(filename: u64, flags: u32) {
    if run::current_run().is_none() {
        return;
    }
    let p = PendingOpen { filename, flags, _pad: 0 };
    if AG_PENDING_OPEN.insert(&bpf_get_current_pid_tgid(), &p, 0).is_err() {
        event::count_drop(drop_slot::PENDING_FULL);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn ag_enter_openat(ctx: TracePointContext) -> u32 {
    remember(kernel::tp_u64(&ctx, ARG1), kernel::tp_u64(&ctx, ARG2) as u32);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn ag_enter_open(ctx: TracePointContext) -> u32 {
    remember(kernel::tp_u64(&ctx, ARG0), kernel::tp_u64(&ctx, ARG1) as u32);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn ag_enter_creat(ctx: TracePointContext) -> u32 {
    remember(kernel::tp_u64(&ctx, ARG0), O_CREAT | O_WRONLY | O_TRUNC);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn ag_enter_openat2(ctx: TracePointContext) -> u32 {
    let (filename, how) = (kernel::tp_u64(&ctx, ARG1), kernel::tp_u64(&ctx, ARG2));
    // SAFETY: `how` is a user pointer whose first field is the u64 flags; a failed read is 0.
    let flags = match how {
        0 => 0,
        how => unsafe { aya_ebpf::helpers::bpf_probe_read_user(how as *const u64) }.unwrap_or(0),
    };
    remember(filename, flags as u32);
    0
}

const O_ACCMODE: u32 = 0o3;
const FMODE_READ: u32 = 1;
const FMODE_WRITE: u32 = 2;
const FMODE_PATH: u32 = 0x4000;

/// At syscall exit the new descriptor exists but the process has not seen it yet: an open
/// outside the policy gets SIGKILL here and never returns to user space with it. The
/// decision uses the path the kernel resolved and the descriptor's real access mode, so it
/// does not depend on the entry record (which can be lost under pressure) nor on the ring
/// buffer having room.
#[inline(always)]
fn finish(ctx: &TracePointContext) -> u32 {
    let Some(run) = run::current_run() else { return 0 };
    let rs = run::ruleset(&run);
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the entry is copied out before it is removed.
    let pending = (unsafe { AG_PENDING_OPEN.get(&key) }).copied();
    if pending.is_some() {
        let _ = AG_PENDING_OPEN.remove(&key);
    }
    let ret = kernel::tp_u64(ctx, RET) as i64;
    if pending.is_none() && (ret < 0 || rs.is_none()) {
        return 0; // nothing was opened, or nothing to enforce: the lost entry is counted
    }
    let p = pending.unwrap_or(PendingOpen { filename: 0, flags: 0, _pad: 0 });
    let o = kernel::offsets();
    let mut flags = 0u32;
    let file = if ret >= 0 { kernel::fd_file(&o, ret as i32).unwrap_or(0) } else { 0 };
    let buf = crate::scratch::scratch();
    let mut walked = None;
    let mut decision = policy::ALLOWED;
    let mut file_id = [0u8; 16];
    let mut access = 0u32;
    if ret >= 0 {
        match buf {
            Some(buf) if file != 0 => walked = kernel::path_to_buf(&o, file + o.file_f_path as u64, buf).ok(),
            _ => {}
        }
        if walked.is_none() {
            flags |= FLAG_READ_ERROR;
        }
        if let Some(rs) = &rs {
            let fmode: u32 = kernel::read(file, o.file_f_mode).unwrap_or(FMODE_READ | FMODE_WRITE);
            let acc = p.flags & O_ACCMODE;
            let write = fmode & FMODE_WRITE != 0 || acc != 0 || p.flags & (O_CREAT | O_TRUNC) != 0;
            let read = fmode & FMODE_READ != 0 || acc != 1;
            // O_PATH grants no access to the contents; reopening it is another open. Taken
            // from the file, not from flags a racing thread could change after entry.
            let path_only = fmode & FMODE_PATH != 0;
            // The approval is for this file with exactly this access (1 read, 2 write).
            access = read as u32 | (write as u32) << 1;
            let key = || {
                file_id = kernel::file_id(&o, file);
                GrantKey { run: run.run_cgroup, kind: Kind::Open.as_raw(), port: access, id: file_id }
            };
            decision = match &walked {
                _ if path_only => policy::ALLOWED,
                Some(w) => policy::file_decision(rs, w, read, write, false, Some(key)),
                // The file could not be identified: never allowed by default.
                None => policy::violation(rs, Rule::Unseen, false, policy::NO_HOLD),
            };
        }
    }
    if let Some(w) = &walked {
        if w.truncated {
            flags |= FLAG_PATH_TRUNCATED;
        }
    }
    let Some(mut entry) = event::reserve::<OpenEvent>(
        // A refused open of a policied run may be the Landlock layer's denial.
        decision.verdict != Verdict::Allow || (rs.is_some() && event::refused(ret)),
    ) else { return 0 };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, writable OpenEvent, written field by field.
    unsafe {
        (*ev).hdr = event::header(Kind::Open, &run);
        (*ev).hdr.verdict = decision.verdict_raw();
        (*ev).hdr.rule = decision.rule_raw();
        (*ev).hdr.ruleset = rs.as_ref().map(|r| r.id).unwrap_or(0);
        (*ev).open_flags = p.flags;
        (*ev).result = ret as i32;
        (*ev).path_len = 0;
        (*ev).access = access;
        (*ev).file_id = file_id;
        let dst = (*ev).path.as_mut_ptr();
        match (&walked, buf) {
            (Some(w), Some(buf)) => (*ev).path_len = event::copy_walked(buf, w.start, dst),
            _ => {
                flags |= FLAG_PATH_UNRESOLVED;
                let n = bpf_probe_read_user_str(dst.cast(), PATH_MAX as u32, p.filename as *const _);
                if n > 0 {
                    (*ev).path_len = (n as u32 - 1) & (PATH_MAX as u32 - 1);
                }
            }
        }
        (*ev).hdr.flags = flags;
    }
    entry.submit(0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn ag_exit_openat(ctx: TracePointContext) -> u32 {
    finish(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn ag_exit_open(ctx: TracePointContext) -> u32 {
    finish(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn ag_exit_creat(ctx: TracePointContext) -> u32 {
    finish(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn ag_exit_openat2(ctx: TracePointContext) -> u32 {
    finish(&ctx)
}
