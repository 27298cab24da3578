//! The backstop of "nothing leaves a run": every process the kernel reported for a run is
//! remembered, and once a second each is checked to still be inside its run's cgroup. One
//! found elsewhere (moved out through a descriptor of `cgroup.procs` it inherited from outside
//! the run, or by anyone else) is moved back into the run's cgroup, killed there, and
//! reported as a `kill` event with rule `contain.cgroup`. The kernel programs refuse the ways
//! a run's own processes have to leave (see `agent-guard-ebpf/src/contain.rs`); this catches
//! what they cannot see.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use tracing::warn;

use crate::{
    daemon::core::{RunInfo, Shared},
    output::event::{Detail, Kind, Verdict},
};

/// Processes remembered per run (beyond this, new ones of that run are not remembered).
const PER_RUN_MAX: usize = 8192;

/// Run cgroup id -> tgid -> its start time (field 22 of /proc/PID/stat, so a reused pid is
/// never taken for the process it replaced).
static MEMBERS: Mutex<Option<HashMap<u64, HashMap<u32, u64>>>> = Mutex::new(None);

/// Field `n` (1-based, n >= 3) of /proc/PID/stat as a number.
pub(crate) fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(n - 3)?.parse().ok()
}

/// Its start time (field 22), so that a reused pid is not taken for the process it replaced.
fn start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 22)
}

/// The kernel reported `tgid` as a process of run `run_cgroup`.
pub(crate) fn seen(run_cgroup: u64, tgid: u32) {
    let mut m = MEMBERS.lock().expect("members lock");
    let procs = m.get_or_insert_with(HashMap::new).entry(run_cgroup).or_default();
    if procs.contains_key(&tgid) || procs.len() >= PER_RUN_MAX {
        return;
    }
    if let Some(t) = start_time(tgid) {
        procs.insert(tgid, t);
    }
}

/// `tgid` of run `run_cgroup` has exited.
pub(crate) fn exited(run_cgroup: u64, tgid: u32) {
    if let Some(procs) = MEMBERS.lock().expect("members lock").as_mut().and_then(|m| m.get_mut(&run_cgroup)) {
        procs.remove(&tgid);
    }
}

/// Checks every remembered process of every live run; forgets ended runs and processes.
pub(crate) fn scan(shared: &Arc<Shared>) {
    let runs: HashMap<u64, RunInfo> = {
        let own = shared.own();
        own.runs.by_cgroup.iter().filter(|(_, r)| r.ended.is_none()).map(|(id, r)| (*id, r.clone())).collect()
    };
    let mut escaped = Vec::new();
    {
        let mut m = MEMBERS.lock().expect("members lock");
        let Some(m) = m.as_mut() else { return };
        m.retain(|id, _| runs.contains_key(id));
        for (id, procs) in m.iter_mut() {
            let run = &runs[id];
            procs.retain(|tgid, start| {
                if start_time(*tgid) != Some(*start) {
                    return false; // gone (or its pid reused)
                }
                if crate::runs::evidence::in_cgroup(*tgid, &shared.mount, &run.dir) {
                    return true;
                }
                escaped.push((run.clone(), *tgid));
                false
            });
        }
    }
    for (run, tgid) in escaped {
        bring_back(shared, &run, tgid);
    }
}

/// Moves `tgid` back into `run`'s cgroup (ours: the only place we signal), kills it there and
/// reports it.
fn bring_back(shared: &Shared, run: &RunInfo, tgid: u32) {
    let t = Instant::now();
    let found = crate::runs::respond::pid_cgroup(tgid, &shared.mount).map(|d| shared.rel(&d));
    let error = match std::fs::write(run.dir.join("cgroup.procs"), tgid.to_string()) {
        Err(e) => Some(format!("moving process {tgid} back into {}: {e}", run.dir.display())),
        Ok(()) if !crate::runs::evidence::signal_in(tgid, nix::sys::signal::Signal::SIGKILL, &shared.mount, &run.dir) => {
            Some(format!("process {tgid} left the run again before it could be killed"))
        }
        Ok(()) => None,
    };
    warn!(
        "run {}: process {tgid} found outside the run's cgroup (in {}): {}",
        run.id,
        found.as_deref().unwrap_or("?"),
        error.as_deref().unwrap_or("moved back and killed")
    );
    let mut e = shared.base_event(Kind::Kill, Some(run));
    e.verdict = Verdict::Kill;
    e.rule = Some(agent_guard_common::Rule::ContainCgroup);
    e.pid = Some(tgid);
    e.tgid = Some(tgid);
    e.cgroup = found;
    // Asked for by the daemon itself.
    e.detail = Detail::Action {
        requested_by_uid: nix::unistd::getuid().as_raw(),
        requested_by_pid: std::process::id(),
        latency_ms: crate::runs::respond::millis(t.elapsed()),
        processes: 1,
        error,
    };
    shared.emit(e);
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let me = std::process::id();
        let t = super::start_time(me).unwrap();
        assert!(t > 0);
        assert_eq!(super::start_time(me), Some(t));
        assert_eq!(super::start_time(u32::MAX), None);
    }

    #[test]
    fn a_sibling_cgroup_with_a_longer_name_is_not_inside() {
        // in_cgroup compares paths by component, as Path::starts_with does.
        assert!(!std::path::Path::new("/sys/fs/cgroup/a/r-1b").starts_with(std::path::Path::new("/sys/fs/cgroup/a/r-1")));
    }
}
