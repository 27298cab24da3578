//! The ring buffer, drop counters, and one event-filling helper per kind (`report_*`), used by the tracepoint, cgroup and LSM
//! programs alike: each writes its record in place in the ring buffer.
use agent_guard_common::{
    drop_slot, ConnectEvent, EventHeader, ExecEvent, ExitEvent, Kind, OpenEvent, SocketEvent, SyscallEvent, UnixEvent,
    Verdict, ARGV_MAX, EVENTS_RING_BYTES, FLAG_ARGV_TRUNCATED, FLAG_PATH_TRUNCATED, FLAG_PATH_UNRESOLVED, FLAG_READ_ERROR,
    FLAG_UNIX, PATH_MAX, RUNS_MAX, UNIX_PATH_BYTES,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    helpers::generated::{bpf_get_current_comm, bpf_ktime_get_boot_ns, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_str},
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};

use crate::{
    kernel::{self, Walked},
    policy::{Decision, ALLOWED},
    run::CurrentRun,
};

#[map]
static AG_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Per-CPU loss counters, indexed by `drop_slot::*`. Never silent: the daemon reads these.
#[map]
static AG_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_slot::COUNT, 0);

#[inline(always)]
pub fn count_drop(slot: u32) {
    if let Some(c) = AG_DROPS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; programs do not migrate CPUs mid-run.
        unsafe { *c += 1 };
    }
}

pub const EPERM: i64 = 1;
pub const EACCES: i64 = 13;

/// A syscall result that is a permission refusal (the Landlock layer's, among others).
#[inline(always)]
pub fn refused(ret: i64) -> bool {
    ret == -EACCES || ret == -EPERM
}

/// bpf_ringbuf_query flags.
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// A run's share of the last eighth of the ring (see [`reserve`]): urgent events at 250 a
/// second with bursts of 256 (a generic cell rate: each event moves the run's theoretical
/// arrival time 4 ms on; an event more than 256 events ahead of now is over the share). Far
/// below what the daemon drains (it reads the ring every millisecond and writes some 12,000
/// events a second on the 2-core development machine), so a flooding run's share of the last
/// eighth is drained long before it fills, even when the daemon is starved for a while.
const URGENT_EVERY_NS: u64 = 4_000_000;
const URGENT_BURST_NS: u64 = 256 * URGENT_EVERY_NS;

/// Run cgroup -> its theoretical arrival time (ns). LRU: a run forgotten under pressure starts
/// afresh, which only errs on the side of reporting.
#[map]
static AG_URGENT: LruHashMap<u64, u64> = LruHashMap::with_max_entries(RUNS_MAX, 0);

/// Whether `run` may put one more event into the last eighth of the ring now.
#[inline(always)]
fn within_budget(run: &CurrentRun) -> bool {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = run.run_cgroup;
    if let Some(v) = AG_URGENT.get_ptr_mut(&key) {
        // SAFETY: updated in place; racing CPUs can only miscount by an event or two.
        let v = unsafe { &mut *v };
        let tat = if *v > now { *v } else { now };
        if tat - now > URGENT_BURST_NS {
            return false;
        }
        *v = tat + URGENT_EVERY_NS;
        return true;
    }
    let _ = AG_URGENT.insert(&key, &(now + URGENT_EVERY_NS), 0);
    true
}

/// Reserves `T` in the ring buffer, counting a failure. The ring is kept in three tiers so
/// that a run flooding it cannot cost another run (or itself) a violation event:
/// - routine events (allowed operations) only while the ring is less than 3/4 full;
/// - urgent events (violations, refusals) up to 7/8 full;
/// - the last eighth only for urgent events within their run's share
///   so a run flooding violations (refused UDP sends in a loop) cannot fill it either.
///   ([`URGENT_EVERY_NS`])
///
/// Nothing is lost while the ring has room. (The default ring of 16 MiB keeps 4 MiB for
/// violations: some 3,000 exec events, while the daemon reads the ring every millisecond.)
#[inline(always)]
pub fn reserve<T: 'static>(urgent: bool, run: &CurrentRun) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<T>> {
    let keep = if !urgent {
        4
    } else if within_budget(run) {
        0
    } else {
        8
    };
    if keep != 0 {
        let size = AG_EVENTS.query(BPF_RB_RING_SIZE);
        let used = AG_EVENTS.query(BPF_RB_AVAIL_DATA) + core::mem::size_of::<T>() as u64;
        if used + size / keep > size {
            count_drop(drop_slot::RINGBUF_FULL);
            return None;
        }
    }
    let e = AG_EVENTS.reserve::<T>(0);
    if e.is_none() {
        count_drop(drop_slot::RINGBUF_FULL);
    }
    e
}

/// Writes the common header straight into a reserved event. Built on the stack instead, the
/// compiler zero-fills the comm and padding with memset calls: byte loops that the 6.1
/// verifier walks again for every state reaching them, which took the file_open LSM program
/// past its 1M-instruction budget there.
///
/// # Safety
/// `hdr` points at the header of a reserved, writable ring buffer entry.
#[inline(always)]
pub unsafe fn fill_header(hdr: *mut EventHeader, kind: Kind, run: &CurrentRun, d: &Decision, ruleset: u32, flags: u32) {
    let o = kernel::offsets();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: the caller's promise; the helper writes at most 16 bytes into comm.
    unsafe {
        (*hdr).kind = kind.as_raw();
        (*hdr).flags = flags;
        (*hdr).ts_ns = bpf_ktime_get_boot_ns();
        (*hdr).run_cgroup = run.run_cgroup;
        (*hdr).cgroup = aya_ebpf::helpers::generated::bpf_get_current_cgroup_id();
        (*hdr).pid = pid_tgid as u32;
        (*hdr).tgid = (pid_tgid >> 32) as u32;
        (*hdr).ppid = kernel::current_ppid(&o);
        (*hdr).uid = uid_gid as u32;
        (*hdr).gid = (uid_gid >> 32) as u32;
        (*hdr).verdict = d.verdict_raw();
        (*hdr).rule = d.rule_raw();
        (*hdr).ruleset = ruleset;
        let comm = (*hdr).comm.as_mut_ptr();
        if bpf_get_current_comm(comm.cast(), 16) != 0 {
            zero(comm, 16);
        }
    }
}

/// Zeroes `len` bytes (a multiple of 8) at `p` with stores the compiler cannot merge into a
/// memset call (see `fill_header`).
///
/// # Safety
/// `p` is writable for `len` bytes and 8-byte aligned.
#[inline(always)]
unsafe fn zero(p: *mut u8, len: usize) {
    for i in 0..len / 8 {
        // SAFETY: the caller's promise.
        unsafe { core::ptr::write_volatile(p.cast::<u64>().add(i), 0) };
    }
}

/// Writes 16 bytes (a file identity, an address) word by word (no memcpy or memset; see
/// `fill_header`).
///
/// # Safety
/// `dst` is writable for 16 bytes and 8-byte aligned.
#[inline(always)]
unsafe fn put16(dst: *mut u8, v: [u8; 16]) {
    // SAFETY: two u64 are 16 plain bytes; the caller's promise.
    unsafe {
        let w = core::mem::transmute::<[u8; 16], [u64; 2]>(v);
        core::ptr::write_volatile(dst.cast::<u64>(), w[0]);
        core::ptr::write_volatile(dst.cast::<u64>().add(1), w[1]);
    }
}

/// `flags` with `FLAG_PATH_TRUNCATED` if the walked path was truncated. Taken before the
/// record is reserved, and the path copied inside by `if let` on the same `Option<&Walked>`:
/// the shapes the verifier accepts from the compiler on every kernel of the matrix. (A
/// select between a field and a constant left an undefined `None` payload in registers the
/// verifier refuses to read, `!read_ok`.)
#[inline(always)]
fn path_flags(walked: Option<&Walked>, flags: u32) -> u32 {
    match walked {
        Some(w) if w.truncated => flags | FLAG_PATH_TRUNCATED,
        _ => flags,
    }
}

/// What an `open` event says besides its header and path.
pub struct Open {
    pub open_flags: u32,
    /// The new descriptor or -errno (an LSM hook: 0 or -EPERM).
    pub result: i32,
    /// `OpenEvent::access`.
    pub access: u32,
    pub file_id: [u8; 16],
}

/// Reports an open (or a write-side path operation) decided by `d`, with the path walked
/// (or, when there is none and `user_path` is given, the string the process passed).
/// `urgent`: see [`reserve`].
#[inline(always)]
pub fn report_open(
    run: &CurrentRun,
    d: &Decision,
    ruleset: u32,
    flags: u32,
    urgent: bool,
    open: &Open,
    walked: Option<&Walked>,
    user_path: Option<u64>,
) {
    let flags = path_flags(walked, flags);
    let Some(mut entry) = reserve::<OpenEvent>(urgent, run) else { return };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, writable OpenEvent, written field by field.
    unsafe {
        fill_header(&mut (*ev).hdr, Kind::Open, run, d, ruleset, flags);
        (*ev).open_flags = open.open_flags;
        (*ev).result = open.result;
        core::ptr::write_volatile(&mut (*ev).path_len, 0);
        core::ptr::write_volatile(&mut (*ev).access, open.access);
        put16((*ev).file_id.as_mut_ptr(), open.file_id);
        let dst = (*ev).path.as_mut_ptr();
        let mut flags = flags;
        match (walked, crate::scratch::scratch()) {
            (Some(w), Some(buf)) => (*ev).path_len = copy_walked(buf, w.start, dst),
            _ => {
                if let Some(filename) = user_path {
                    flags |= FLAG_PATH_UNRESOLVED;
                    let n = bpf_probe_read_user_str(dst.cast(), PATH_MAX as u32, filename as *const _);
                    if n > 0 {
                        (*ev).path_len = (n as u32 - 1) & (PATH_MAX as u32 - 1);
                    }
                }
            }
        }
        (*ev).hdr.flags = flags;
    }
    entry.submit(0);
}

/// An exec refused before it happened (execve/execveat failed with EACCES or EPERM): the
/// filename the process passed (a user pointer), what a relative one is relative to, the
/// -errno.
pub struct RefusedExec {
    pub filename: u64,
    pub dirfd: i32,
    pub result: i32,
}

/// Reports an exec decided by `d`: of the new image, with the executable's walked path and,
/// given its `mm`, its argv; or, given `refused`, an exec that failed before it happened, with
/// the path as the process passed it and no argv. Refusals are urgent (see [`reserve`]).
#[inline(always)]
pub fn report_exec(
    run: &CurrentRun,
    d: &Decision,
    ruleset: u32,
    flags: u32,
    file_id: [u8; 16],
    walked: Option<&Walked>,
    mm: Option<u64>,
    refused: Option<&RefusedExec>,
) {
    let flags = path_flags(walked, flags);
    let Some(mut entry) = reserve::<ExecEvent>(d.verdict != Verdict::Allow || refused.is_some(), run) else { return };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, writable ExecEvent; fields are written one by one to
    // keep the 512-byte stack free.
    unsafe {
        fill_header(&mut (*ev).hdr, Kind::Exec, run, d, ruleset, flags);
        core::ptr::write_volatile(&mut (*ev).path_len, 0);
        core::ptr::write_volatile(&mut (*ev).argv_len, 0);
        core::ptr::write_volatile(&mut (*ev).result, 0);
        core::ptr::write_volatile(&mut (*ev).dirfd, 0);
        put16((*ev).file_id.as_mut_ptr(), file_id);
        let mut flags = flags;
        if let (Some(w), Some(buf)) = (walked, crate::scratch::scratch()) {
            (*ev).path_len = copy_walked(buf, w.start, (*ev).path.as_mut_ptr());
        }
        if let Some(r) = refused {
            flags |= FLAG_PATH_UNRESOLVED;
            (*ev).result = r.result;
            (*ev).dirfd = r.dirfd;
            let n = bpf_probe_read_user_str((*ev).path.as_mut_ptr().cast(), PATH_MAX as u32, r.filename as *const _);
            if n > 0 {
                (*ev).path_len = (n as u32 - 1) & (PATH_MAX as u32 - 1);
            } else {
                flags |= FLAG_READ_ERROR;
            }
        }
        if let Some(mm) = mm {
            let o = kernel::offsets();
            let start: u64 = kernel::read(mm, o.mm_arg_start).unwrap_or(0);
            let end: u64 = kernel::read(mm, o.mm_arg_end).unwrap_or(0);
            if start != 0 && end > start {
                let mut len = end - start;
                if len > ARGV_MAX as u64 {
                    len = ARGV_MAX as u64;
                    flags |= FLAG_ARGV_TRUNCATED;
                }
                let len = (len as u32) & (2 * ARGV_MAX as u32 - 1);
                if len <= ARGV_MAX as u32 && bpf_probe_read_user((*ev).argv.as_mut_ptr().cast(), len, start as *const _) == 0 {
                    (*ev).argv_len = len;
                } else {
                    flags |= FLAG_READ_ERROR;
                }
            }
        }
        (*ev).hdr.flags = flags;
    }
    entry.submit(0);
}

/// What a `connect` or `sendmsg` event says besides its header.
pub struct Connect {
    pub result: i32,
    pub family: u16,
    pub port: u16,
    pub protocol: u16,
    pub sock_type: u16,
    /// IPv6, IPv4 as IPv4-mapped (as approvals key it).
    pub addr: [u8; 16],
}

/// Reports a connect or UDP send (`kind`) decided by `d`. `urgent`: see [`reserve`].
#[inline(always)]
pub fn report_connect(kind: Kind, run: &CurrentRun, d: &Decision, ruleset: u32, flags: u32, urgent: bool, c: &Connect) {
    let Some(mut entry) = reserve::<ConnectEvent>(urgent, run) else { return };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved, writable ConnectEvent, written field by field.
    unsafe {
        fill_header(&mut (*ev).hdr, kind, run, d, ruleset, flags);
        (*ev).result = c.result;
        (*ev).family = c.family;
        (*ev).port = c.port;
        (*ev).protocol = c.protocol;
        (*ev).sock_type = c.sock_type;
        (*ev)._pad = 0;
        put16((*ev).addr.as_mut_ptr(), c.addr);
    }
    entry.submit(0);
}

/// Reports a syscall decided by `d` (always urgent: only violations are reported).
#[inline(always)]
pub fn report_syscall(run: &CurrentRun, d: &Decision, ruleset: u32, flags: u32, nr: u32, arg0: u64) {
    let Some(mut entry) = reserve::<SyscallEvent>(true, run) else { return };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved, writable SyscallEvent, written field by field.
    unsafe {
        fill_header(&mut (*ev).hdr, Kind::Syscall, run, d, ruleset, flags);
        (*ev).nr = nr;
        (*ev)._pad = 0;
        (*ev).arg0 = arg0;
    }
    entry.submit(0);
}

/// Reports a refused socket creation (always urgent): a raw or unseen socket, or a family
/// the policy does not list.
#[inline(always)]
pub fn report_socket(run: &CurrentRun, d: &Decision, ruleset: u32, flags: u32, family: u32, sock_type: u32, protocol: u32) {
    let Some(mut entry) = reserve::<SocketEvent>(true, run) else { return };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved, writable SocketEvent, written field by field.
    unsafe {
        fill_header(&mut (*ev).hdr, Kind::Socket, run, d, ruleset, flags);
        (*ev).family = family;
        (*ev).sock_type = sock_type;
        (*ev).protocol = protocol;
        (*ev)._pad = 0;
    }
    entry.submit(0);
}

/// What a unix `connect` or `sendmsg` event says besides its header.
pub struct Unix {
    pub result: i32,
    /// The name is abstract (`path[..len]` is the name without its leading zero).
    pub abstract_name: bool,
    /// SOCK_* type of the socket, or 0 if unknown.
    pub sock_type: u16,
    pub len: u32,
}

/// Reports a connect or datagram (`kind`) to a unix socket decided by `d` (always urgent:
/// only refusals are reported), its name copied from `path` (kernel memory, at least
/// `UNIX_PATH_BYTES` long). The record is a [`UnixEvent`], marked with `FLAG_UNIX`.
#[inline(always)]
pub fn report_unix(kind: Kind, run: &CurrentRun, d: &Decision, ruleset: u32, flags: u32, u: &Unix, path: *const u8) {
    let Some(mut entry) = reserve::<UnixEvent>(true, run) else { return };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved, writable UnixEvent, written field by field; the name is copied
    // with a fixed size from memory the caller vouches for.
    unsafe {
        fill_header(&mut (*ev).hdr, kind, run, d, ruleset, flags | FLAG_UNIX);
        (*ev).result = u.result;
        (*ev).abstract_name = u16::from(u.abstract_name);
        (*ev).sock_type = u.sock_type;
        (*ev).path_len = u.len;
        (*ev)._pad = 0;
        let dst = (*ev).path.as_mut_ptr();
        core::ptr::write_volatile(dst.add(UNIX_PATH_BYTES), 0);
        core::ptr::write_volatile(dst.add(UNIX_PATH_BYTES + 1), 0);
        if aya_ebpf::helpers::generated::bpf_probe_read_kernel(dst.cast(), UNIX_PATH_BYTES as u32, path.cast()) != 0 {
            (*ev).path_len = 0;
        }
    }
    entry.submit(0);
}

/// Reports the end of a run's process (never urgent).
#[inline(always)]
pub fn report_exit(run: &CurrentRun, exit_code: u32) {
    let Some(mut entry) = reserve::<ExitEvent>(false, run) else { return };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved, writable ExitEvent, written field by field.
    unsafe {
        fill_header(&mut (*ev).hdr, Kind::Exit, run, &ALLOWED, 0, 0);
        (*ev).exit_code = exit_code;
        (*ev)._pad = 0;
    }
    entry.submit(0);
}

/// Copies a path rebuilt by `kernel::path_to_buf` (at `scratch[start..PATH_MAX]`) into `dst`
/// (PATH_MAX bytes) and returns its length.
#[inline(always)]
pub fn copy_walked(scratch: *const u8, start: u32, dst: *mut u8) -> u32 {
    let start = start & (PATH_MAX as u32 - 1);
    let len = (PATH_MAX as u32 - start) & (PATH_MAX as u32 - 1);
    // SAFETY: start + len <= PATH_MAX inside a 2 * PATH_MAX scratch; dst holds PATH_MAX bytes.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            dst.cast(),
            len,
            scratch.add(start as usize).cast(),
        )
    };
    if rc == 0 { len } else { 0 }
}
