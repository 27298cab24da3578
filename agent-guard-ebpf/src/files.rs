//! open: flags are taken at syscall entry; at exit the path is rebuilt from the new
//! descriptor's `struct file` (the path the kernel resolved: symlinks, `..`, relative paths
//! and dirfds are already applied). A failed open reports the string the process passed.
use agent_guard_common::{
    drop_slot, kind, OpenEvent, PENDING_MAX, FLAG_PATH_TRUNCATED, FLAG_PATH_UNRESOLVED,
    FLAG_READ_ERROR, PATH_MAX,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user_str},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};

use crate::{event, kernel, run};

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
    // SAFETY: offsets inside the sys_enter_openat record.
    let (filename, flags) = unsafe { (ctx.read_at::<u64>(ARG1), ctx.read_at::<u64>(ARG2)) };
    remember(filename.unwrap_or(0), flags.unwrap_or(0) as u32);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn ag_enter_open(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets inside the sys_enter_open record.
    let (filename, flags) = unsafe { (ctx.read_at::<u64>(ARG0), ctx.read_at::<u64>(ARG1)) };
    remember(filename.unwrap_or(0), flags.unwrap_or(0) as u32);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn ag_enter_creat(ctx: TracePointContext) -> u32 {
    // SAFETY: offset inside the sys_enter_creat record.
    let filename = unsafe { ctx.read_at::<u64>(ARG0) };
    remember(filename.unwrap_or(0), O_CREAT | O_WRONLY | O_TRUNC);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn ag_enter_openat2(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets inside the sys_enter_openat2 record; `how` is a user pointer whose
    // first field is the u64 flags.
    let (filename, how) = unsafe { (ctx.read_at::<u64>(ARG1), ctx.read_at::<u64>(ARG2)) };
    let flags = match how {
        Ok(how) if how != 0 => unsafe { aya_ebpf::helpers::bpf_probe_read_user(how as *const u64) }
            .unwrap_or(0),
        _ => 0,
    };
    remember(filename.unwrap_or(0), flags as u32);
    0
}

#[inline(always)]
fn finish(ctx: &TracePointContext) -> u32 {
    let Some(run) = run::current_run() else { return 0 };
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the entry is copied out before it is removed.
    let Some(p) = (unsafe { AG_PENDING_OPEN.get(&key) }).copied() else { return 0 };
    let _ = AG_PENDING_OPEN.remove(&key);
    // SAFETY: offset inside the sys_exit_* record.
    let ret = unsafe { ctx.read_at::<i64>(RET) }.unwrap_or(-1);
    let Some(mut entry) = event::reserve::<OpenEvent>() else { return 0 };
    let ev = entry.as_mut_ptr();
    let o = kernel::offsets();
    let mut flags = 0u32;
    // SAFETY: `ev` points at a reserved, writable OpenEvent, written field by field.
    unsafe {
        (*ev).hdr = event::header(kind::OPEN, &run);
        (*ev).open_flags = p.flags;
        (*ev).result = ret as i32;
        (*ev).path_len = 0;
        (*ev)._pad = 0;
        let dst = (*ev).path.as_mut_ptr();
        let file = if ret >= 0 { kernel::fd_file(&o, ret as i32).unwrap_or(0) } else { 0 };
        let buf = event::scratch();
        if let (true, Some(buf)) = (file != 0, buf) {
            match kernel::path_to_buf(&o, file + o.file_f_path as u64, buf) {
                Ok(w) => {
                    if w.truncated {
                        flags |= FLAG_PATH_TRUNCATED;
                    }
                    (*ev).path_len = event::copy_walked(buf, w.start, dst);
                }
                Err(()) => flags |= FLAG_READ_ERROR,
            }
        } else {
            if ret >= 0 {
                flags |= FLAG_READ_ERROR;
            }
            flags |= FLAG_PATH_UNRESOLVED;
            let n = bpf_probe_read_user_str(dst.cast(), PATH_MAX as u32, p.filename as *const _);
            if n > 0 {
                (*ev).path_len = (n as u32 - 1) & (PATH_MAX as u32 - 1);
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
