//! Start-up over pinned state: what an earlier daemon left enforcing is taken over.
use std::{
    collections::HashMap,
    sync::Arc,
    time::Instant,
};

use agent_guard_common::{Kind, RunEntry, NO_POLICY};
use tracing::{info, warn};
use crate::runs::cgroup;
use crate::runs::hold::{arm_hold_timeout, Hold};
use crate::daemon::core::*;

/// Takes over what an earlier daemon left pinned: its policies (same rule set ids, nothing
/// rewritten), its runs whose cgroups still exist, and its bound cgroups.
pub(crate) fn adopt(shared: &Arc<Shared>) {
    let (records, errors) = shared.state.policies();
    for e in errors {
        warn!("state: {e}");
    }
    let n = records.len();
    for msg in shared.own().policies.adopt(records) {
        warn!("{msg}");
    }
    let (records, errors) = shared.state.runs();
    for e in errors {
        warn!("state: {e}");
    }
    let mut runs_own = shared.own();
    let runs = &mut runs_own.runs;
    let entries: HashMap<u64, RunEntry> = runs.map.iter().flatten().collect();
    runs.next_index = entries.values().map(|e| e.run_index).max().unwrap_or(0).wrapping_add(1).max(1);
    let mut adopted = 0;
    let mut ended = Vec::new();
    for mut r in records {
        let alive = cgroup::cgroup_id(&r.dir).is_ok_and(|id| id == r.cgroup_id);
        match entries.get(&r.cgroup_id) {
            Some(entry) if alive => {
                let hold = (!r.hold.is_empty()).then(|| Hold {
                    id: shared.next_hold.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                    since: Instant::now(),
                    attempts: std::mem::take(&mut r.hold).into_iter().map(crate::runs::grant::Attempt::from).collect(),
                    ready: true,
                });
                if let Some(h) = &hold {
                    warn!(
                        "run {} was held for review when the earlier daemon stopped, and still is ({}); \
                         hold_timeout starts again",
                        r.id,
                        h.summary()
                    );
                    arm_hold_timeout(&tokio::runtime::Handle::current(), shared.clone(), r.id.clone(), h.id);
                }
                let policy = (entry.policy != NO_POLICY).then_some(entry.policy);
                let info = RunInfo { hold, ..RunInfo::from_record(r, policy) };
                runs.by_cgroup.insert(info.cgroup_id, info);
                adopted += 1;
            }
            entry => {
                // The run ended while no daemon was up (its launcher's `end` found none): its
                // run_end is still due, after whatever of it the ring buffer holds. The exit
                // status is unknown.
                let policy = entry.filter(|e| e.policy != NO_POLICY).map(|e| e.policy);
                let info = RunInfo { ended: Some(Instant::now()), ..RunInfo::from_record(r, policy) };
                info!("run {} ended while the daemon was down", info.id);
                ended.push(info);
            }
        }
    }
    // Kernel entries of runs that are gone (or never recorded, which a kill between the map
    // write and the record write leaves): a cgroup that still exists keeps its entry.
    for id in entries.keys() {
        if !runs.by_cgroup.contains_key(id) && cgroup::find_by_id(&shared.root, *id, 1).is_none() {
            let _ = runs.map.remove(id);
        }
    }
    drop(runs_own);
    for info in ended {
        let mut e = shared.base_event(Kind::RunEnd, Some(&info));
        e.detail = crate::output::event::Detail::RunEnd { exit_status: None };
        // The record goes once this run_end is in the log.
        e.forget_run = Some(info.id.clone());
        if let Err(e) = shared.after_ring.send((e, None)) {
            shared.emit(e.0 .0);
        }
    }
    let bound = shared.own().binder.adopt(&shared.mount);
    for (id, dir, slot) in &bound {
        let info = bound_run_info(shared, *id, dir, *slot);
        shared.own().runs.by_cgroup.insert(*id, info);
    }
    info!("adopted {n} policies, {adopted} runs and {} bound cgroups", bound.len());
}
