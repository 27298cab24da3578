//! Containment that no policy widens: a process of a run never writes the cgroup filesystem
//! (which would move a task out of its run) and never opens another process's /proc/PID
//! files (environ, cmdline, maps, fd, ...). One check for the tracepoint exit and the LSM
//! file_open hook, judged on the opened file itself (its filesystem and, for procfs, the
//! process it describes), not on a path that a bind mount or a symlink could change.
use agent_guard_common::{KernelOffsets, Rule, BIND_DEPTH_MAX};

use crate::{kernel, run};

const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
const PROC_SUPER_MAGIC: u64 = 0x9fa0;

/// The containment rule an open of `file` breaks, whatever the policy says.
#[inline(always)]
pub fn open_breaks(o: &KernelOffsets, run: &run::CurrentRun, file: u64, write: bool) -> Option<Rule> {
    let inode: u64 = kernel::read(file, o.file_f_inode).ok()?;
    let sb: u64 = kernel::read(inode, o.inode_i_sb).ok()?;
    let magic: u64 = kernel::read(sb, o.super_block_s_magic).ok()?;
    if magic == CGROUP2_SUPER_MAGIC || magic == CGROUP_SUPER_MAGIC {
        return if write { Some(Rule::ContainCgroup) } else { None };
    }
    if magic != PROC_SUPER_MAGIC || o.proc_ok == 0 {
        return None;
    }
    // A procfs inode is the vfs_inode inside a proc_inode; per-process files carry the
    // process's struct pid (NULL for /proc/meminfo, /proc/sys/..., /proc/net/...).
    let pid: u64 = kernel::read(inode - o.proc_inode_vfs_inode as u64, o.proc_inode_pid).ok()?;
    if pid == 0 {
        return None;
    }
    // pid.tasks[PIDTYPE_PID].first: the task's pid_links[PIDTYPE_PID] (none: it has ended,
    // and an ended process is no process of this run).
    let first: u64 = kernel::read(pid, o.pid_tasks).unwrap_or(0);
    if first == 0 {
        return Some(Rule::ContainProc);
    }
    if task_in(o, first - o.task_pid_links as u64, run.run_cgroup) {
        None
    } else {
        Some(Rule::ContainProc)
    }
}

/// Whether `task` is in the cgroup `run_cgroup` or below it (cgroup v2).
#[inline(always)]
pub fn task_in(o: &KernelOffsets, task: u64, run_cgroup: u64) -> bool {
    let Ok(cset) = kernel::read::<u64>(task, o.task_cgroups) else { return false };
    let Ok(cgrp) = kernel::read::<u64>(cset, o.css_set_dfl_cgrp) else { return false };
    cgroup_in(o, cgrp, run_cgroup)
}

/// Whether the cgroup `cgrp` (a `struct cgroup *`) is `run_cgroup` or below it.
#[inline(always)]
pub fn cgroup_in(o: &KernelOffsets, cgrp: u64, run_cgroup: u64) -> bool {
    let Ok(level) = kernel::read::<i32>(cgrp, o.cgroup_level) else { return false };
    for l in 0..=BIND_DEPTH_MAX {
        if l > level {
            break;
        }
        let Ok(anc) = kernel::read::<u64>(cgrp + o.cgroup_ancestors as u64 + l as u64 * 8, 0) else { return false };
        let Ok(kn) = kernel::read::<u64>(anc, o.cgroup_kn) else { return false };
        if kernel::read::<u64>(kn, o.kernfs_node_id) == Ok(run_cgroup) {
            return true;
        }
    }
    false
}
