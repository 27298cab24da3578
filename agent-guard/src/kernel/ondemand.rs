//! The syscall check (`ag_sys_enter`, a raw tracepoint on sys_enter) on demand.
//!
//! The check runs for every syscall of every process on the host while it is attached, and
//! its presence alone keeps every task on the kernel's slow, traced syscall path (getpid
//! x2.5 outside runs, see BENCHMARKS.md). A run started by `agent-guard run` under an
//! enforcing `on_violation = "deny"` policy carries a seccomp filter that refuses, before they
//! run, what the check would kill (`runs::seccomp`): such a run does not need the check. It
//! is attached while some run needs it and detached when none does:
//!
//! - a policied run needs it from its registration (before its entry exists in the kernel)
//!   until its launcher says its filter is in place (the `seccomp` request, sent before the
//!   command is started), and only then stops needing it if the filter refuses all the
//!   policy asks (see [`Covered::needs`]);
//! - bound cgroups, runs with tasks (a task's policy may deny more than the run's filter),
//!   monitor mode, `kill`/`freeze`, policies that hold (decoys, `on_limit = "freeze"`: a held
//!   process resumed by someone else is killed by the check) and `[syscalls] deny` of a
//!   syscall the filter cannot refuse keep needing it;
//! - a policy reload that asks more than a covered run's filter refuses attaches the check
//!   before the new rule set is published (`reload`), or the reload is refused;
//! - runs adopted from an earlier daemon need it (their filters are not known here).
use std::collections::HashMap;

use agent_guard_common::{RunEntry, NO_POLICY, RUN_SECCOMP, RUN_TASKS};

/// What a run's seccomp filter refuses, as compared with what its policy asks now
/// (`runs::seccomp::cover_key`): equal keys, the filter refuses everything the check would.
pub type CoverKey = String;

/// The runs whose seccomp filter stands in for the syscall check, by run cgroup id.
#[derive(Debug, Default)]
pub struct Covered {
    /// Handed to the launcher at registration (the filter it will build), not yet in place.
    offered: HashMap<u64, CoverKey>,
    /// In place: the launcher said so before it started the command.
    runs: HashMap<u64, CoverKey>,
}

impl Covered {
    /// At registration: the filter the launcher is given for run `cgroup` (None: none).
    pub fn offer(&mut self, cgroup: u64, key: Option<CoverKey>) {
        self.runs.remove(&cgroup);
        match key {
            Some(k) => self.offered.insert(cgroup, k),
            None => self.offered.remove(&cgroup),
        };
    }

    /// The launcher of run `cgroup` says its filter is in place: the one it was offered.
    /// Returns whether the run is covered from now on.
    pub fn in_place(&mut self, cgroup: u64) -> bool {
        match self.offered.remove(&cgroup) {
            Some(k) => {
                self.runs.insert(cgroup, k);
                true
            }
            None => false,
        }
    }

    /// Forgets every run for which `live` is false (ended runs).
    pub fn retain(&mut self, live: impl Fn(u64) -> bool) {
        self.offered.retain(|c, _| live(*c));
        self.runs.retain(|c, _| live(*c));
    }

    /// The key run `cgroup` is covered with, if it is.
    pub fn key(&self, cgroup: u64) -> Option<&CoverKey> {
        self.runs.get(&cgroup)
    }

    /// Whether run `cgroup` with kernel entry `entry` needs the syscall check, its policy
    /// asking `now` of a filter (None: nothing a filter can stand in for).
    pub fn needs(&self, cgroup: u64, entry: &RunEntry, now: Option<&CoverKey>) -> bool {
        if entry.policy == NO_POLICY {
            return false;
        }
        if entry.flags & RUN_TASKS != 0 || entry.flags & RUN_SECCOMP == 0 {
            return true;
        }
        match (self.runs.get(&cgroup), now) {
            (Some(had), Some(now)) => had != now,
            _ => true,
        }
    }

    /// Covered runs under policy `slot` whose filter would not refuse all that `new` asks:
    /// a reload to `new` needs the check first.
    pub fn uncovered_by(&self, entries: &[(u64, RunEntry)], slot: u32, new: Option<&CoverKey>) -> bool {
        entries
            .iter()
            .filter(|(_, e)| e.policy == slot)
            .any(|(c, _)| self.runs.get(c).is_some_and(|had| Some(had) != new))
    }
}

/// Whether any of the kernel's run entries needs the check; `key_of(slot)`: what the policy
/// in `slot` asks of a filter now.
pub fn any_needs(covered: &Covered, entries: &[(u64, RunEntry)], key_of: impl Fn(u32) -> Option<CoverKey>) -> bool {
    entries.iter().any(|(c, e)| covered.needs(*c, e, key_of(e.policy).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(policy: u32, flags: u32) -> RunEntry {
        RunEntry { run_index: 1, flags, policy, _pad: 0 }
    }

    #[test]
    fn a_run_needs_the_check_until_its_filter_is_in_place_and_covers_its_policy() {
        let mut c = Covered::default();
        let k = Some("k1".to_string());
        c.offer(7, k.clone());
        // Registered, filter not in place yet.
        assert!(c.needs(7, &entry(0, 0), k.as_ref()));
        assert!(c.in_place(7));
        assert!(!c.needs(7, &entry(0, RUN_SECCOMP), k.as_ref()));
        // The policy now asks for something else (a reload), or can no longer be covered.
        assert!(c.needs(7, &entry(0, RUN_SECCOMP), Some(&"k2".to_string())));
        assert!(c.needs(7, &entry(0, RUN_SECCOMP), None));
        // Tasks, and a run without the kernel mark.
        assert!(c.needs(7, &entry(0, RUN_SECCOMP | RUN_TASKS), k.as_ref()));
        assert!(c.needs(7, &entry(0, 0), k.as_ref()));
        // No policy: nothing to check.
        assert!(!c.needs(8, &entry(NO_POLICY, 0), None));
        // A run never offered a filter (adopted, seccomp off) is not covered by a mark.
        assert!(!c.in_place(9));
        assert!(c.needs(9, &entry(0, RUN_SECCOMP), k.as_ref()));
        // A reload asking more than the filter of a covered run refuses.
        let entries = [(7, entry(0, RUN_SECCOMP))];
        assert!(c.uncovered_by(&entries, 0, Some(&"k2".to_string())));
        assert!(!c.uncovered_by(&entries, 0, k.as_ref()));
        assert!(!c.uncovered_by(&entries, 1, None));
        assert!(!any_needs(&c, &entries, |_| k.clone()));
        c.retain(|cg| cg != 7);
        assert!(any_needs(&c, &entries, |_| k.clone()));
    }
}
