//! Tripwires: `[decoys]` hosts (a connect or send to one is refused and the process stopped,
//! its run held, whatever the mode; decoy files are a flag of the path trie, see `policy`) and
//! `[limits]` (per-run budgets counted here over a fixed one-minute window). The userspace
//! compiler side is agent-guard/src/policy/tripwire.rs.
//!
//! A rule set without them costs a hook one bit test of its header's flags; processes outside
//! every run never get here.
use agent_guard_common::{
    limit, DecoyHostKey, DestKey, Kind, LimitCounts, LimitEvent, Limits, Verdict, DECOY_HOSTS_MAX, DESTS_MAX, FLAG_CGROUP,
    RS_DECOY_HOSTS, RS_LIMITS, RULESETS_MAX, RUNS_MAX,
};
use aya_ebpf::{
    helpers::generated::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};

use crate::{
    event, kernel, run,
    policy::{self, Decision},
    run::{CurrentRun, Ruleset},
};

/// Rule set id -> its budgets (only for rule sets with [`RS_LIMITS`]).
#[map]
static AG_LIMITS: HashMap<u32, Limits> = HashMap::with_max_entries(RULESETS_MAX, 0);

/// Run cgroup id -> the counters of its current window. LRU: a run's entry outlives it until
/// pushed out (cgroup ids are never reused); the daemon removes it when an approval resets
/// the window.
#[map]
static AG_LIMIT_COUNTS: LruHashMap<u64, LimitCounts> = LruHashMap::with_max_entries(RUNS_MAX, 0);

/// (rule set, address, port) of every `[decoys] hosts` entry.
#[map]
static AG_DECOY_HOSTS: HashMap<DecoyHostKey, u32> = HashMap::with_max_entries(DECOY_HOSTS_MAX, 0);

/// (run, address, port) a run has reached, for `distinct_destinations`.
#[map]
static AG_DESTS: LruHashMap<DestKey, u32> = LruHashMap::with_max_entries(DESTS_MAX, 0);

const BPF_NOEXIST: u64 = 1;

/// Whether `addr`:`port` is a decoy host of `rs` (the caller refuses and stops).
#[inline(always)]
pub fn decoy_host(rs: &Ruleset, addr: &[u8; 16], port: u16) -> bool {
    if rs.hdr.flags & RS_DECOY_HOSTS == 0 {
        return false;
    }
    let key = DecoyHostKey { ruleset: rs.id, port, _pad: 0, addr: *addr };
    // SAFETY: presence test only.
    unsafe { AG_DECOY_HOSTS.get(&key) }.is_some()
}

/// Counting one operation against a budget: nothing to do, or over it.
#[derive(Clone, Copy)]
pub struct Over {
    /// The operation is over the budget (`count > max`).
    pub over: bool,
    /// It is the first one over in this window: report it (once).
    pub first: bool,
    pub count: u32,
    pub max: u32,
    pub on_limit: u32,
    pub window_start: u64,
}

pub const WITHIN: Over = Over { over: false, first: false, count: 0, max: 0, on_limit: 0, window_start: 0 };

impl Over {
    /// The operation is refused where the hook can refuse it (a connect): over the budget
    /// and not `on_limit = "report"`.
    #[inline(always)]
    pub fn refuses(&self) -> bool {
        self.over && self.on_limit != limit::REPORT
    }
}

/// The budget `which` of the run's rule set, if it has one.
#[inline(always)]
fn budget(rs: &Ruleset, which: usize) -> Option<&'static Limits> {
    if rs.hdr.flags & RS_LIMITS == 0 || which >= limit::COUNT {
        return None;
    }
    // SAFETY: read in place; entries of a published rule set are never rewritten.
    let l = unsafe { AG_LIMITS.get(&rs.id) }?;
    if l.max[which] == 0 { None } else { Some(l) }
}

/// Whether the rule set budgets `which` (so a hook does the work that feeds it only then).
#[inline(always)]
pub fn budgets(rs: &Ruleset, which: usize) -> bool {
    budget(rs, which).is_some()
}

/// Counts one operation of kind `which` (`limit::*`) for the run. Atomic: two CPUs never
/// both see the crossing. The window is fixed (one minute from its first operation): one
/// counter and one compare per operation, no history to keep; the price is that a burst
/// split across two windows can pass up to twice the budget in a minute.
#[inline(always)]
pub fn count(run: &CurrentRun, rs: &Ruleset, which: usize) -> Over {
    let Some(l) = budget(rs, which) else { return WITHIN };
    tally(run, which, l.max[which], l.on_limit)
}

/// Adds one to the run's counter `which` and compares the count with `max`.
#[inline(always)]
fn tally(run: &CurrentRun, which: usize, max: u32, on_limit: u32) -> Over {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = run.run_cgroup;
    let c = match AG_LIMIT_COUNTS.get_ptr_mut(&key) {
        Some(c) => c,
        None => {
            let fresh = LimitCounts { window_start: now, n: [0; limit::COUNT] };
            let _ = AG_LIMIT_COUNTS.insert(&key, &fresh, BPF_NOEXIST);
            match AG_LIMIT_COUNTS.get_ptr_mut(&key) {
                Some(c) => c,
                None => return WITHIN,
            }
        }
    };
    let which = if which < limit::COUNT { which } else { limit::COUNT - 1 };
    // SAFETY: the run's entry, updated in place; the counter with an atomic add.
    unsafe {
        let start = (*c).window_start;
        if now.wrapping_sub(start) >= limit::WINDOW_NS {
            // A racing CPU may reset too, or count into the old window: a miscount of a few
            // operations at the boundary, never a missed crossing within a window.
            (*c).window_start = now;
            for i in 0..limit::COUNT {
                // distinct_destinations counts over the run's life.
                if i != limit::DESTINATIONS {
                    (*c).n[i] = 0;
                }
            }
        }
        let slot = (*c).n.as_mut_ptr().add(which);
        // An atomic add whose result is unused (BPF_XADD: the object is built for the generic
        // CPU, which has no fetching atomics), then a read: concurrent operations all count,
        // and the one that records the crossing in AG_TRIPPED first reports it.
        core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(slot, 1);
        let n = core::ptr::read_volatile(slot);
        if n <= max {
            return WITHIN;
        }
        let window_start = (*c).window_start;
        let trip = Trip { run: key, window_start, which: which as u32, _pad: 0 };
        let first = AG_TRIPPED.insert(&trip, &1, BPF_NOEXIST).is_ok();
        Over { over: true, first, count: n, max, on_limit, window_start }
    }
}

/// (run, window, limit) crossings reported: exactly one operation per window reports.
#[repr(C)]
#[derive(Clone, Copy)]
struct Trip {
    run: u64,
    window_start: u64,
    which: u32,
    _pad: u32,
}

#[map]
static AG_TRIPPED: LruHashMap<Trip, u32> = LruHashMap::with_max_entries(RUNS_MAX, 0);

/// Counts an operation of kind `which` and, if `d` refuses it (or would, in monitor mode),
/// a denial; acts on a crossing (hooks that can send signals: opens, execs, syscalls).
#[inline(always)]
pub fn counted(run: &CurrentRun, rs: &Ruleset, which: usize, d: &Decision) {
    if rs.hdr.flags & RS_LIMITS == 0 {
        return;
    }
    let o = count(run, rs, which);
    if o.first {
        crossed(run, rs, which, &o, true);
    }
    let o = denied(run, rs, d);
    if o.first {
        crossed(run, rs, limit::DENIALS, &o, true);
    }
}

/// Counts `d` against `denials_per_minute` if it refuses (deny, kill, hold, would_deny). The
/// caller acts on the crossing.
#[inline(always)]
pub fn denied(run: &CurrentRun, rs: &Ruleset, d: &Decision) -> Over {
    if !matches!(d.verdict, Verdict::Deny | Verdict::Kill | Verdict::Hold | Verdict::WouldDeny) {
        return WITHIN;
    }
    count(run, rs, limit::DENIALS)
}

/// The rule set's `on_limit` (0 without limits).
#[inline(always)]
pub fn on_limit(rs: &Ruleset) -> u32 {
    if rs.hdr.flags & RS_LIMITS == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    unsafe { AG_LIMITS.get(&rs.id) }.map_or(0, |l| l.on_limit)
}

/// Counts `addr`:`port` for `distinct_destinations` if the run has not reached it before.
#[inline(always)]
pub fn count_destination(run: &CurrentRun, rs: &Ruleset, addr: &[u8; 16], port: u16) -> Over {
    if !budgets(rs, limit::DESTINATIONS) {
        return WITHIN;
    }
    let key = DestKey { run: run.run_cgroup, addr: *addr, port, _pad: [0; 3] };
    // Looked up first: an LRU insert takes a free node (and its lock) even when the key is
    // there already, which doubled the connect program's cost in the benchmark.
    // SAFETY: presence test only.
    if unsafe { AG_DESTS.get(&key) }.is_some() {
        return WITHIN;
    }
    if AG_DESTS.insert(&key, &1, BPF_NOEXIST).is_err() {
        return WITHIN; // seen already (or no room: not counted)
    }
    count(run, rs, limit::DESTINATIONS)
}

/// Acts on a crossing: reports the first operation over the budget in the window, and under
/// `freeze` or `kill` stops or kills the process if `can_signal` (the cgroup socket programs
/// cannot: they refuse, and their syscall's exit stops or kills). Returns the verdict
/// reported.
#[inline(always)]
pub fn crossed(run: &CurrentRun, rs: &Ruleset, which: usize, o: &Over, can_signal: bool) -> Verdict {
    if !o.first {
        return Verdict::Allow;
    }
    let verdict = match o.on_limit {
        limit::KILL => {
            if can_signal {
                policy::kill_current();
            }
            Verdict::Kill
        }
        limit::FREEZE => {
            if can_signal {
                policy::stop_current();
            }
            Verdict::Hold
        }
        _ => Verdict::Allow,
    };
    report(run, rs, which, o, verdict, if can_signal { 0 } else { FLAG_CGROUP });
    verdict
}

/// Writes the `limit` event.
#[inline(always)]
pub fn report(run: &CurrentRun, rs: &Ruleset, which: usize, o: &Over, verdict: Verdict, flags: u32) {
    let which = if which < limit::COUNT { which } else { limit::COUNT - 1 };
    let rule = Some(limit::RULES[which]);
    let d = Decision { verdict, rule };
    let Some(mut e) = event::reserve::<LimitEvent>(true, run) else { return };
    let ev = e.as_mut_ptr();
    // SAFETY: a reserved, writable entry.
    unsafe {
        event::fill_header(&mut (*ev).hdr, Kind::Limit, run, &d, rs.id, flags);
        (*ev).limit = which as u32;
        (*ev).count = o.count;
        (*ev).max = o.max;
        (*ev).on_limit = o.on_limit;
        let windowed = which != limit::DESTINATIONS;
        (*ev).window_ns = if windowed { limit::WINDOW_NS } else { 0 };
        (*ev).window_start_ns = o.window_start;
    }
    e.submit(0);
}

/// A fork the pids controller refused (`processes`: pids.max of the run's cgroup, which
/// refuses the fork with EAGAIN whatever `on_limit` says): the first refusal in a window is
/// reported, and `freeze` or `kill` then acts on the process that tried.
#[inline(always)]
fn fork_refused(run: &CurrentRun, rs: &Ruleset) {
    let Some(l) = budget(rs, limit::PROCESSES) else { return };
    let max = l.max[limit::PROCESSES];
    // The counter counts refusals: the first one in the window is the crossing.
    let t = tally(run, limit::PROCESSES, 0, l.on_limit);
    if !t.first {
        return;
    }
    let o = Over { over: true, first: true, count: max.wrapping_add(1), max, on_limit: l.on_limit, window_start: t.window_start };
    if l.on_limit == limit::REPORT {
        report(run, rs, limit::PROCESSES, &o, Verdict::Deny, 0);
    } else {
        crossed(run, rs, limit::PROCESSES, &o, true);
    }
}

const EAGAIN: i64 = 11;

/// The exit of a fork-like syscall: EAGAIN in a run whose policy has `processes`.
#[inline(always)]
fn fork_exit(ctx: &TracePointContext) -> u32 {
    let Some(run) = run::current_run() else { return 0 };
    if kernel::tp_u64(ctx, 16) as i64 != -EAGAIN {
        return 0;
    }
    if let Some(rs) = run::ruleset(&run) {
        fork_refused(&run, &rs);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_clone")]
pub fn ag_exit_clone(ctx: TracePointContext) -> u32 {
    fork_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_clone3")]
pub fn ag_exit_clone3(ctx: TracePointContext) -> u32 {
    fork_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_fork")]
pub fn ag_exit_fork(ctx: TracePointContext) -> u32 {
    fork_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_vfork")]
pub fn ag_exit_vfork(ctx: TracePointContext) -> u32 {
    fork_exit(&ctx)
}
