//! The ring buffer, drop counters and the common event header.
use agent_guard_common::{drop_slot, EventHeader, Kind, EVENTS_RING_BYTES, PATH_MAX};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    helpers::generated::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};

use crate::{kernel, run::CurrentRun};

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

/// Reserves `T` in the ring buffer, counting a failure. The last quarter of the ring is kept
/// for `urgent` events (violations, refusals): a routine event that would eat into it is
/// dropped (and counted) instead, so a run flooding the ring with allowed events cannot cost
/// another run (or itself) a violation event. (The default ring of 16 MiB keeps 4 MiB: some
/// 3,000 exec events, while the daemon reads the ring every millisecond.)
#[inline(always)]
pub fn reserve<T: 'static>(urgent: bool) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<T>> {
    if !urgent {
        let size = AG_EVENTS.query(BPF_RB_RING_SIZE);
        let used = AG_EVENTS.query(BPF_RB_AVAIL_DATA) + core::mem::size_of::<T>() as u64;
        if used + size / 4 > size {
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

#[inline(always)]
pub fn header(kind: Kind, run: &CurrentRun) -> EventHeader {
    let o = kernel::offsets();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    EventHeader {
        kind: kind.as_raw(),
        flags: 0,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        run_cgroup: run.run_cgroup,
        // SAFETY: helper without arguments.
        cgroup: unsafe { aya_ebpf::helpers::generated::bpf_get_current_cgroup_id() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        ppid: kernel::current_ppid(&o),
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        verdict: 0,
        rule: 0,
        ruleset: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
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
