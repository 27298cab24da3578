//! Types and constants shared by agent-guard's kernel programs and its userspace.
//!
//! One source of truth for every kernel/user type: map names, event kinds, flags and limits
//! are defined here once. Every struct is `#[repr(C)]`, `Copy`, with explicit padding so that
//! there are no holes, and no enums or bools cross the boundary.
#![no_std]

/// Bytes kept of a path (the one the kernel resolved for an opened file, or an exe). Longer
/// paths keep their last `PATH_MAX - 1` bytes and carry [`FLAG_PATH_TRUNCATED`].
pub const PATH_MAX: usize = 1024;
/// Bytes kept of an exec's argv (NUL-separated). Longer argv carries [`FLAG_ARGV_TRUNCATED`].
pub const ARGV_MAX: usize = 1024;
/// Path components walked up from a dentry before giving up (flagged as truncated).
pub const PATH_DEPTH_MAX: u32 = 64;
/// Runs the kernel can track at once per daemon.
pub const RUNS_MAX: u32 = 16384;
/// In-flight syscalls (open, connect) tracked between entry and exit.
pub const PENDING_MAX: u32 = 16384;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 16 << 20;

/// Map and global names, as the kernel object exports them.
pub mod names {
    pub const RUNS: &str = "AG_RUNS";
    pub const EVENTS: &str = "AG_EVENTS";
    pub const DROPS: &str = "AG_DROPS";
    pub const CONFIG: &str = "AG_CONFIG";
    pub const OFFSETS: &str = "AG_OFFSETS";
}

/// Event kinds (`EventHeader::kind`).
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const OPEN: u32 = 2;
    pub const CONNECT: u32 = 3;
    pub const EXIT: u32 = 4;
}

/// Index into the per-CPU `AG_DROPS` array.
pub mod drop_slot {
    /// Ring buffer reservation failed: the event was lost in the kernel.
    pub const RINGBUF_FULL: u32 = 0;
    /// The syscall-entry record could not be stored: the exit event was lost.
    pub const PENDING_FULL: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// `EventHeader::flags` bits.
pub const FLAG_PATH_TRUNCATED: u32 = 1 << 0;
pub const FLAG_ARGV_TRUNCATED: u32 = 1 << 1;
/// The path is the string the process passed (the open failed, so the kernel resolved none).
pub const FLAG_PATH_UNRESOLVED: u32 = 1 << 2;
/// A kernel read failed while building the event; some fields are empty.
pub const FLAG_READ_ERROR: u32 = 1 << 3;

/// Set by the daemon before load: which cgroup subtree this daemon manages.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// cgroup id (inode number) of the managed root, e.g. /sys/fs/cgroup/agent-guard.
    pub root_id: u64,
    /// Level of the managed root in the cgroup2 hierarchy (the mount itself is level 0).
    pub root_level: u32,
    pub _pad: u32,
}

/// Byte offsets of the kernel structure fields the programs read, taken from the running
/// kernel's BTF at load time. Nothing is hard-coded per kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_files: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_f_path: u32,
    pub file_private_data: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub vfsmount_mnt_root: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sock_protocol: u32,
    /// Size in bytes of `sock.sk_protocol`; 0 when it is a bitfield (older kernels).
    pub sock_protocol_size: u32,
    pub _pad: u32,
}

/// What the kernel keeps per run cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunEntry {
    /// Daemon-assigned number of the run (the daemon maps it to the run id and metadata).
    pub run_index: u32,
    pub flags: u32,
}

/// Common prefix of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    pub flags: u32,
    /// CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    /// cgroup id of the run (the managed root's child that contains the process).
    pub run_cgroup: u64,
    /// cgroup id the process is in (the run's or one of its descendants).
    pub cgroup: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: EventHeader,
    pub path_len: u32,
    pub argv_len: u32,
    pub _pad: u64,
    pub path: [u8; PATH_MAX],
    pub argv: [u8; ARGV_MAX],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenEvent {
    pub hdr: EventHeader,
    /// open(2) flags as passed.
    pub open_flags: u32,
    /// The new descriptor, or -errno.
    pub result: i32,
    pub path_len: u32,
    pub _pad: u32,
    pub path: [u8; PATH_MAX],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    pub hdr: EventHeader,
    /// 0 or -errno (-EINPROGRESS for a non-blocking connect in progress).
    pub result: i32,
    /// AF_INET or AF_INET6 (AF_* numbers).
    pub family: u16,
    /// Port in host byte order.
    pub port: u16,
    /// IPPROTO_* of the socket, or 0 if unknown.
    pub protocol: u16,
    /// SOCK_* type of the socket, or 0 if unknown.
    pub sock_type: u16,
    pub _pad: u32,
    /// IPv4 in the first 4 bytes, or IPv6; network byte order.
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub hdr: EventHeader,
    /// Wait status as the kernel encodes it: (code << 8) | signal.
    pub exit_code: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data, #[repr(C)] with explicit padding and no holes.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for RunEntry {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_holes() {
        assert_eq!(size_of::<EventHeader>(), 4 * 2 + 8 * 3 + 4 * 6 + 16);
        assert_eq!(size_of::<ExecEvent>(), size_of::<EventHeader>() + 16 + PATH_MAX + ARGV_MAX);
        assert_eq!(size_of::<OpenEvent>(), size_of::<EventHeader>() + 16 + PATH_MAX);
        assert_eq!(size_of::<ConnectEvent>(), size_of::<EventHeader>() + 32);
        assert_eq!(size_of::<ExitEvent>(), size_of::<EventHeader>() + 8);
        assert_eq!(size_of::<KernelOffsets>() % 8, 0);
        assert!(PATH_MAX.is_power_of_two() && ARGV_MAX.is_power_of_two());
    }
}
