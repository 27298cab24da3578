//! Reading kernel structures at offsets taken from the running kernel's BTF, and rebuilding
//! the path of a `struct path` by walking dentries and mounts.
use agent_guard_common::{KernelOffsets, PATH_DEPTH_MAX, PATH_MAX};
use aya_ebpf::helpers::generated::{bpf_get_current_task, bpf_loop, bpf_probe_read_kernel};

/// Set by the daemon at load time from /sys/kernel/btf/vmlinux.
#[unsafe(no_mangle)]
static AG_OFFSETS: KernelOffsets = KernelOffsets {
    task_real_parent: 0,
    task_tgid: 0,
    task_files: 0,
    task_mm: 0,
    task_exit_code: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_f_path: 0,
    file_private_data: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    qstr_len: 0,
    qstr_name: 0,
    vfsmount_mnt_root: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    mm_exe_file: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    socket_type: 0,
    socket_sk: 0,
    sock_protocol: 0,
    sock_protocol_size: 0,
    task_ti_status: 0,
    file_f_mode: 0,
    pt_regs_di: 0,
    file_f_inode: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    super_block_s_dev: 0,
    binprm_file: 0,
    file_f_flags: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_level: 0,
    cgroup_ancestors: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    sock_sk_cgrp_data: 0,
    sock_cgroup_data_cgroup: 0,
    super_block_s_magic: 0,
    proc_inode_vfs_inode: 0,
    proc_inode_pid: 0,
    pid_tasks: 0,
    task_pid_links: 0,
    proc_ok: 0,
};

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: read of a constant the loader rewrote.
    unsafe { core::ptr::read_volatile(&AG_OFFSETS) }
}

/// Reads a `T` at `base + off` from kernel memory. A null base is an error, not a read.
#[inline(always)]
pub fn read<T: Copy>(base: u64, off: u32) -> Result<T, ()> {
    if base == 0 {
        return Err(());
    }
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: bpf_probe_read_kernel checks the source address and fails instead of faulting.
    let rc = unsafe {
        bpf_probe_read_kernel(
            v.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            (base + off as u64) as *const _,
        )
    };
    if rc == 0 {
        // SAFETY: the helper filled all of `v`.
        Ok(unsafe { v.assume_init() })
    } else {
        Err(())
    }
}

/// The 8-byte field at `off` of a syscalls:sys_enter_* / sys_exit_* record (arguments from
/// byte 16, or the return value at 16). A direct load from the context the verifier checked,
/// not a probe helper call as `TracePointContext::read_at` does.
#[inline(always)]
pub fn tp_u64(ctx: &aya_ebpf::programs::TracePointContext, off: usize) -> u64 {
    use aya_ebpf::EbpfContext;
    // SAFETY: callers pass fixed offsets inside the record, which the verifier checks.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(off).cast::<u64>()) }
}

#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_get_current_task() }
}

/// tgid of the current task's parent (the real parent, as getppid(2) reports it).
#[inline(always)]
pub fn current_ppid(o: &KernelOffsets) -> u32 {
    let parent: u64 = read(current_task(), o.task_real_parent).unwrap_or(0);
    read::<i32>(parent, o.task_tgid).unwrap_or(0) as u32
}

/// `struct file *` for descriptor `fd` of the current task.
#[inline(always)]
pub fn fd_file(o: &KernelOffsets, fd: i32) -> Result<u64, ()> {
    if fd < 0 {
        return Err(());
    }
    let files: u64 = read(current_task(), o.task_files)?;
    let fdt: u64 = read(files, o.files_fdt)?;
    let max: u32 = read(fdt, o.fdt_max_fds)?;
    if fd as u32 >= max {
        return Err(());
    }
    let arr: u64 = read(fdt, o.fdt_fd)?;
    read(arr + (fd as u64) * 8, 0)
}

/// A walk's outcome with every field defined. An `Option<Walked>` that is None has an
/// undefined payload, which the compiler may copy between registers (to keep it across a
/// helper call) and the verifier refuses to read (`!read_ok`); an `Option<&Walked>` is a
/// pointer or null, always defined. Hold a `Walk`, hand out [`Walk::get`].
pub struct Walk {
    w: Walked,
    ok: bool,
}

impl Walk {
    pub const NONE: Walk = Walk { w: Walked { start: 0, truncated: false, pseudo: false, ncomps: 0 }, ok: false };

    #[inline(always)]
    pub fn of(r: Result<Walked, ()>) -> Walk {
        match r {
            Ok(w) => Walk { w, ok: true },
            Err(()) => Walk::NONE,
        }
    }

    #[inline(always)]
    pub fn get(&self) -> Option<&Walked> {
        self.ok.then_some(&self.w)
    }
}

/// Output of [`path_to_buf`]: the path is `scratch[start..PATH_MAX]`.
pub struct Walked {
    pub start: u32,
    pub truncated: bool,
    /// Not a file in the tree (see `WALK_PSEUDO`); the text is its name, without a '/'.
    pub pseudo: bool,
    /// Components recorded in `Scratch::comps` (leaf first).
    pub ncomps: u32,
}

const WALK_RUNNING: u32 = 0;
const WALK_DONE: u32 = 1;
const WALK_TRUNCATED: u32 = 2;
const WALK_ERROR: u32 = 3;
/// A disconnected dentry that is not a mount root: pipes, sockets, anonymous inodes and
/// memfds (reachable again through /proc/PID/fd). Not a path in the file tree.
const WALK_PSEUDO: u32 = 4;

#[repr(C)]
struct WalkState {
    dentry: u64,
    mnt: u64,
    /// `mnt->mnt.mnt_root`, read once per mount rather than once per step.
    mnt_root: u64,
    /// Exclusive end of the free space in scratch[0..PATH_MAX]; the path is [pos..PATH_MAX].
    pos: u32,
    state: u32,
}

/// `dentry.d_parent` followed by `dentry.d_name` (a `struct qstr`: hash, len, name), as every
/// kernel since 3.x lays them out: read with one probe instead of three (see [`parent_name`]).
#[repr(C)]
#[derive(Clone, Copy)]
struct ParentName {
    parent: u64,
    hash: u32,
    len: u32,
    name: u64,
}

/// The parent, name length and name pointer of `dentry`.
#[inline(always)]
fn parent_name(o: &KernelOffsets, dentry: u64) -> Result<ParentName, ()> {
    if o.dentry_d_name == o.dentry_d_parent + 8 && o.qstr_len == 4 && o.qstr_name == 8 {
        return read(dentry, o.dentry_d_parent);
    }
    Ok(ParentName {
        parent: read(dentry, o.dentry_d_parent)?,
        hash: 0,
        len: read(dentry + o.dentry_d_name as u64, o.qstr_len)?,
        name: read(dentry + o.dentry_d_name as u64, o.qstr_name)?,
    })
}

/// One step of the walk, run by bpf_loop: the verifier checks it once, not once per
/// iteration (an unrolled 64-step walk exceeds the verifier's 1M-instruction budget).
extern "C" fn walk_step(_index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes the WalkState that path_to_buf handed it.
    let w = unsafe { &mut *(ctx as *mut WalkState) };
    match step(w) {
        Ok(WALK_RUNNING) => 0,
        Ok(s) => {
            w.state = s;
            1
        }
        Err(()) => {
            w.state = WALK_ERROR;
            1
        }
    }
}

/// `v & mask` in a register of its own. The 6.12 verifier links a register to copies of it
/// plus a constant (`len + 2` in a bounds check) and has lost the mask of the copy passed
/// as a helper's size ("R2 unbounded memory access"); a volatile reload breaks the link.
#[inline(always)]
fn masked(v: u32, mask: u32) -> u32 {
    // SAFETY: read of a local variable.
    unsafe { core::ptr::read_volatile(&v) & mask }
}

/// Per component: one probe of the dentry (parent and name) and one of the name's bytes.
#[inline(always)]
fn step(w: &mut WalkState) -> Result<u32, ()> {
    let o = offsets();
    let s = crate::scratch::scratch_all().ok_or(())?;
    let buf = s.cast::<u8>();
    let pn = parent_name(&o, w.dentry)?;
    if w.dentry == pn.parent && w.dentry != w.mnt_root {
        let len = pn.len & 255;
        if len + 1 < w.pos {
            let pos = (w.pos - len) & (PATH_MAX as u32 - 1);
            let len = masked(len, 255);
            // SAFETY: pos < PATH_MAX and len < 256: inside the 2 * PATH_MAX scratch.
            if unsafe { bpf_probe_read_kernel(buf.add(pos as usize).cast(), len, pn.name as *const _) } == 0 {
                w.pos = pos;
            }
        }
        return Ok(WALK_PSEUDO);
    }
    if w.dentry == w.mnt_root || w.dentry == pn.parent {
        // At the root of this mount: step to the mount point in the parent mount.
        let mnt_parent: u64 = read(w.mnt, o.mount_mnt_parent)?;
        if w.dentry != w.mnt_root || mnt_parent == w.mnt || mnt_parent == 0 {
            return Ok(WALK_DONE); // the root of the mount tree (or of a detached fs)
        }
        w.dentry = read(w.mnt, o.mount_mnt_mountpoint)?;
        w.mnt = mnt_parent;
        w.mnt_root = read(w.mnt + o.mount_mnt as u64, o.vfsmount_mnt_root)?;
        return Ok(WALK_RUNNING);
    }
    let len = pn.len & (PATH_MAX as u32 - 1);
    // Keep pos >= 1 so a result is at most PATH_MAX - 1 bytes (the masks below stay exact).
    if len + 2 > w.pos {
        return Ok(WALK_TRUNCATED); // the kept tail is still a valid suffix
    }
    let pos = (w.pos - len) & (PATH_MAX as u32 - 1);
    let len = masked(len, PATH_MAX as u32 - 1);
    // SAFETY: pos < PATH_MAX and len < PATH_MAX: the write stays inside 2 * PATH_MAX.
    let rc = unsafe { bpf_probe_read_kernel(buf.add(pos as usize).cast(), len, pn.name as *const _) };
    if rc != 0 {
        return Err(());
    }
    let pos = (pos - 1) & (PATH_MAX as u32 - 1);
    // SAFETY: per-CPU scratch; pos < PATH_MAX; the component index is masked into the array.
    unsafe {
        *buf.add(pos as usize) = b'/';
        let n = (*s).ncomps;
        (*s).comps[(n & (PATH_DEPTH_MAX - 1)) as usize] = pos;
        (*s).ncomps = n + 1;
    }
    w.pos = pos;
    w.dentry = pn.parent;
    Ok(WALK_RUNNING)
}

/// Rebuilds the absolute path of the `struct path` at `path_ptr` into the per-CPU scratch
/// buffer, right to left, crossing mount points up to the root of the mount tree.
#[inline(always)]
pub fn path_to_buf(o: &KernelOffsets, path_ptr: u64, buf: *mut u8) -> Result<Walked, ()> {
    let dentry: u64 = read(path_ptr, o.path_dentry)?;
    let vfsmnt: u64 = read(path_ptr, o.path_mnt)?;
    dentry_to_buf(o, dentry, vfsmnt, buf)
}

/// As [`path_to_buf`], for a dentry on the mount `vfsmnt` (the LSM path hooks get a
/// directory's `struct path` and a dentry in it, possibly negative: a name to be created).
#[inline(always)]
pub fn dentry_to_buf(o: &KernelOffsets, dentry: u64, vfsmnt: u64, buf: *mut u8) -> Result<Walked, ()> {
    let mut w = WalkState {
        dentry,
        mnt: vfsmnt.wrapping_sub(o.mount_mnt as u64), // container_of(vfsmnt, struct mount, mnt)
        mnt_root: read(vfsmnt, o.vfsmount_mnt_root)?,
        pos: PATH_MAX as u32,
        state: WALK_RUNNING,
    };
    let s = crate::scratch::scratch_all().ok_or(())?;
    // SAFETY: per-CPU scratch.
    unsafe { (*s).ncomps = 0 };
    // SAFETY: bpf_loop calls walk_step with &mut w, which outlives the call.
    unsafe {
        bpf_loop(
            PATH_DEPTH_MAX,
            walk_step as *const () as *mut _,
            (&mut w as *mut WalkState).cast(),
            0,
        )
    };
    if w.state == WALK_ERROR {
        return Err(());
    }
    if w.pos == PATH_MAX as u32 && w.state != WALK_PSEUDO {
        // The root itself.
        w.pos -= 1;
        // SAFETY: buf has 2 * PATH_MAX bytes.
        unsafe { *buf.add(PATH_MAX - 1) = b'/' };
    }
    // SAFETY: per-CPU scratch.
    let ncomps = unsafe { (*s).ncomps };
    let pseudo = w.state == WALK_PSEUDO;
    Ok(Walked { start: w.pos, truncated: w.state != WALK_DONE && !pseudo, pseudo, ncomps })
}

/// The identity of an open file for grants: its device (the kernel's dev_t) and inode
/// number, little-endian, 8 bytes each. Zero when unreadable (then no grant matches).
#[inline(always)]
pub fn file_id(o: &KernelOffsets, file: u64) -> [u8; 16] {
    if file == 0 {
        return [0; 16];
    }
    let inode: u64 = read(file, o.file_f_inode).unwrap_or(0);
    let ino: u64 = read(inode, o.inode_i_ino).unwrap_or(0);
    let sb: u64 = read(inode, o.inode_i_sb).unwrap_or(0);
    let dev: u32 = read(sb, o.super_block_s_dev).unwrap_or(0);
    // Built from two words: byte copies into a zeroed array become memset/memcpy calls
    // (see `event::fill_header`).
    let words = [(dev as u64).to_le(), ino.to_le()];
    // SAFETY: two u64 are 16 plain bytes.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) }
}
