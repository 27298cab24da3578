//! Which run, if any, the current task belongs to, and the rule set that governs it.
use agent_guard_common::{
    action, mode, Config, RulesetHeader, RunEntry, BIND_DEPTH_MAX, NO_POLICY, POLICIES_MAX, RULESETS_MAX, RUNS_MAX, RUN_TASKS,
    SYSCALL_WORDS,
};
use aya_ebpf::{
    helpers::generated::bpf_get_current_ancestor_cgroup_id,
    macros::map,
    maps::{Array, HashMap},
};

/// Set by the daemon at load time (see `agent_guard_common::Config`).
#[unsafe(no_mangle)]
static AG_CONFIG: Config = Config { root_id: 0, root_level: 0, _pad: 0 };

/// Run cgroup id -> run. Run cgroups are the managed root's direct children; a process in any
/// cgroup below a run belongs to that run.
#[map]
static AG_RUNS: HashMap<u64, RunEntry> = HashMap::with_max_entries(RUNS_MAX, 0);

/// Task cgroup id -> the task's entry (its policy slot). Tasks are the run cgroup's direct
/// children; a process in a task (or below it) is judged by the task's policy, the
/// intersection of its run's and its own (`agent-guard task`).
#[map]
static AG_TASKS: HashMap<u64, RunEntry> = HashMap::with_max_entries(RUNS_MAX, 0);

/// cgroups bound to a policy by `[bind] cgroups` (outside the managed root): cgroup id ->
/// entry. A process in a bound cgroup or any cgroup below it belongs to that binding.
#[map]
static AG_BOUND: HashMap<u64, RunEntry> = HashMap::with_max_entries(RUNS_MAX, 0);

/// [0] is non-zero while any cgroup is bound: only then do other processes pay for the
/// ancestor search.
#[map]
static AG_BIND_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Policy slot -> id of the rule set in force (0: none). The daemon swaps this one u32 to
/// reload a policy, after the new rule set is complete in the other maps.
#[map]
static AG_POLICY_CUR: Array<u32> = Array::with_max_entries(POLICIES_MAX, 0);

/// Rule set id -> its header (mode, action, syscall bitmaps).
#[map]
static AG_RULESETS: HashMap<u32, RulesetHeader> = HashMap::with_max_entries(RULESETS_MAX, 0);

/// The policy slot of a cgroup below the managed root that no run registered: no slot has
/// it, so [`ruleset`] answers with the fail-closed rule set.
pub const UNREGISTERED: u32 = POLICIES_MAX;

/// The current task's run. The task's own cgroup id is read when an event needs it
/// (`event::header`), not on every hook.
pub struct CurrentRun {
    pub run_cgroup: u64,
    pub policy: u32,
    /// `RunEntry::flags` (`RUN_*`).
    pub flags: u32,
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
        return bound_run();
    }
    let run_cgroup = unsafe { bpf_get_current_ancestor_cgroup_id(cfg.root_level as i32 + 1) };
    // SAFETY: the value is copied out at once.
    match unsafe { AG_RUNS.get(&run_cgroup) } {
        Some(e) if e.flags & RUN_TASKS != 0 => {
            // SAFETY: helper without pointer arguments; 0 for a process in the run cgroup itself.
            let task = unsafe { bpf_get_current_ancestor_cgroup_id(cfg.root_level as i32 + 2) };
            // SAFETY: copied out at once.
            let policy = match unsafe { AG_TASKS.get(&task) } {
                Some(t) if task != 0 => t.policy,
                _ => e.policy,
            };
            Some(CurrentRun { run_cgroup, policy, flags: e.flags })
        }
        Some(e) => Some(CurrentRun { run_cgroup, policy: e.policy, flags: e.flags }),
        // Below the managed root but no registered run (a cgroup made by hand, or the root
        // itself, run_cgroup 0): refused everything (the fail-closed rule set).
        None => Some(CurrentRun { run_cgroup, policy: UNREGISTERED, flags: 0 }),
    }
}

/// The binding the current task is under, searching its cgroup's ancestors from the top.
#[inline(always)]
fn bound_run() -> Option<CurrentRun> {
    if AG_BIND_ON.get(0).copied().unwrap_or(0) == 0 {
        return None;
    }
    for level in 1..=BIND_DEPTH_MAX {
        // SAFETY: helper without pointer arguments; 0 past the task's own level.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return None;
        }
        // SAFETY: copied out at once.
        if let Some(e) = unsafe { AG_BOUND.get(&id) } {
            return Some(CurrentRun { run_cgroup: id, policy: e.policy, flags: e.flags });
        }
    }
    None
}

/// The rule set that decides for `run` right now: looked up once per decision, so one
/// decision never mixes two generations of a policy (a generation's header is never
/// rewritten: a reload publishes a new id). `hdr` points into the map (or at
/// [`FAIL_CLOSED`]); its 144 bytes are not copied for the one or two fields a hook reads.
pub struct Ruleset {
    pub id: u32,
    pub hdr: &'static RulesetHeader,
}

/// None for a run without a policy. A run whose policy cannot be found (which the daemon
/// never allows to happen) fails closed: an enforcing rule set with no rules.
#[inline(always)]
pub fn ruleset(run: &CurrentRun) -> Option<Ruleset> {
    if run.policy == NO_POLICY {
        return None;
    }
    let id = AG_POLICY_CUR.get(run.policy).copied().unwrap_or(0);
    // SAFETY: copied out at once.
    match unsafe { AG_RULESETS.get(&id) } {
        Some(hdr) if id != 0 => Some(Ruleset { id, hdr }),
        _ => Some(Ruleset { id: 0, hdr: &FAIL_CLOSED }),
    }
}

/// The rule set of a run whose policy cannot be found: enforcing, no rules.
static FAIL_CLOSED: RulesetHeader = RulesetHeader {
    mode: mode::ENFORCE,
    on_violation: action::DENY,
    root_flags: 0,
    flags: 0,
    syscalls: [0; SYSCALL_WORDS],
    unseen: [0; SYSCALL_WORDS],
};

/// [0] is 1 when the security hook programs decide (the daemon sets it once it chose `lsm` or
/// `trampoline`).
#[map]
static AG_LSM_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the lsm or trampoline backend is in force: then `bprm_check_security` decides execs
/// (the exec tracepoint only reports).
#[inline(always)]
pub fn decides_exec() -> bool {
    AG_LSM_ON.get(0).copied().unwrap_or(0) != 0
}
