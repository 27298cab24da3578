//! Which run, if any, the current task belongs to.
use agent_guard_common::{Config, RunEntry, RUNS_MAX};
use aya_ebpf::{
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::map,
    maps::HashMap,
};

/// Set by the daemon at load time (see `agent_guard_common::Config`).
#[unsafe(no_mangle)]
static AG_CONFIG: Config = Config { root_id: 0, root_level: 0, _pad: 0 };

/// Run cgroup id -> run. Run cgroups are the managed root's direct children; a process in any
/// cgroup below a run belongs to that run.
#[map]
static AG_RUNS: HashMap<u64, RunEntry> = HashMap::with_max_entries(RUNS_MAX, 0);

pub struct CurrentRun {
    pub run_cgroup: u64,
    pub cgroup: u64,
}

/// The run the current task is in, or None for every process outside the managed root.
#[inline(always)]
pub fn current_run() -> Option<CurrentRun> {
    // SAFETY: read of a constant the loader rewrote; volatile so the compiler keeps the load.
    let cfg = unsafe { core::ptr::read_volatile(&AG_CONFIG) };
    if cfg.root_id == 0 {
        return None;
    }
    // The hot path for every other process on the host: one helper call, one compare.
    // SAFETY: plain helper calls without pointer arguments.
    let root = unsafe { bpf_get_current_ancestor_cgroup_id(cfg.root_level as i32) };
    if root != cfg.root_id {
        return None;
    }
    let run_cgroup = unsafe { bpf_get_current_ancestor_cgroup_id(cfg.root_level as i32 + 1) };
    // SAFETY: the value is only tested for presence.
    unsafe { AG_RUNS.get(&run_cgroup) }?;
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    Some(CurrentRun { run_cgroup, cgroup })
}
