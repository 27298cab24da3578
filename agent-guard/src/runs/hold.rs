//! Hold for review in the daemon: a `hold` verdict from the kernel freezes the run and
//! records the evidence; `approve`, `deny` or the timeout answers it (see `crate::hold` for
//! what does not need the daemon's state).
use std::{sync::Arc, time::Instant};

use tracing::{info, warn};

use crate::daemon::core::{RunInfo, Shared};
pub(crate) use crate::runs::grant::Hold;
use crate::{output::event::{self, Detail, Event, Kind, Verdict}, runs::respond::{self, Action}};

/// What a run leaves behind in the kernel when it ends: its grants.
pub(crate) fn forget_run(shared: &Shared, run_cgroup: u64) {
    let mut grants_own = shared.own();
    let grants = &mut grants_own.grants;
    let keys: Vec<_> = grants.keys().flatten().filter(|k| k.run == run_cgroup).collect();
    for k in keys {
        let _ = grants.remove(&k);
    }
}

/// A `hold` verdict from the kernel: the process is stopped (SIGSTOP); freeze its whole run,
/// record the evidence and wait for an answer (or the timeout).
pub(crate) fn on_hold(shared: &Arc<Shared>, e: Event) {
    let run_cgroup = e.facts.run_cgroup;
    let Some(attempt) = crate::runs::evidence::attempt(&e) else { return };
    let (info, new_hold) = {
        let mut runs_own = shared.own();
        let runs = &mut runs_own.runs;
        let Some(info) = runs.by_cgroup.get_mut(&run_cgroup) else {
            warn!("hold for an unknown run (cgroup {run_cgroup}): process {} stays stopped until a responder acts", attempt.tgid);
            return;
        };
        let r = match &mut info.hold {
            Some(h) => {
                h.attempts.push(attempt.clone());
                (info.clone(), None)
            }
            None => {
                let id = shared.next_hold.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                info.hold = Some(Hold { id, since: Instant::now(), attempts: vec![attempt.clone()], ready: false });
                (info.clone(), Some(id))
            }
        };
        save_hold(shared, info);
        r
    };
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let freeze = match new_hold {
            Some(_) => match respond::act(&shared.scope(), &info.dir, Action::Freeze, false, respond::TIMEOUT) {
                Ok(o) => Some(respond::millis(o.latency)),
                Err(err) => {
                    warn!("hold of {}: freezing {}: {err}", info.id, info.dir.display());
                    None
                }
            },
            None => None,
        };
        if let Some(id) = new_hold {
            let mut runs_own = shared.own();
            let runs = &mut runs_own.runs;
            if let Some(h) = runs.by_cgroup.get_mut(&run_cgroup).and_then(|r| r.hold.as_mut()).filter(|h| h.id == id) {
                h.ready = true;
            }
        }
        let mut ev = shared.base_event(Kind::Hold, Some(&info));
        ev.verdict = Verdict::Hold;
        ev.rule = attempt.rule;
        ev.severity = event::severity(Kind::Hold, e.verdict).or(event::severity(e.kind, e.verdict));
        ev.pid = Some(attempt.pid);
        ev.tgid = Some(attempt.tgid);
        ev.comm = attempt.comm.clone();
        ev.exe = e.exe.clone();
        ev.ancestry = e.ancestry.clone();
        ev.task = e.task.clone();
        ev.task_labels = e.task_labels.clone();
        const EVIDENCE_EVENTS: usize = 10;
        let recent = shared
            .last_events(&info.id, EVIDENCE_EVENTS)
            .iter()
            .map(|e| event::human(e))
            .collect();
        ev.detail = Detail::Hold {
            hold: "held",
            reason: Some(reason(std::slice::from_ref(&attempt))),
            held_argv: crate::runs::evidence::argv(attempt.tgid),
            recent_events: recent,
            attempts: vec![attempt],
            freeze_ms: freeze,
            grant: None,
            held_ms: None,
            requested_by_uid: None,
            requested_by_pid: None,
        };
        info!("run {} held for review: {}", info.id, event::human(&ev));
        shared.emit(ev);
        if let Some(id) = new_hold {
            arm_hold_timeout(&tokio::runtime::Handle::current(), shared, info.id.clone(), id);
        }
    });
}

/// Records a run's hold (or its end) in its run record, so a restarted daemon still knows
/// what the run waits for. Bound cgroups have no record: their holds do not survive a restart.
pub(crate) fn save_hold(shared: &Shared, info: &RunInfo) {
    if info.id.starts_with("b-") {
        return;
    }
    if let Err(e) = shared.state.save_run(&info.record()) {
        warn!("recording the hold of run {}: {e} (a restarted daemon would not know it)", info.id);
    }
}

/// Denies hold `id` of `run` once hold_timeout has passed without an answer.
pub(crate) fn arm_hold_timeout(rt: &tokio::runtime::Handle, shared: Arc<Shared>, run: String, id: u64) {
    let timeout = shared.hold_timeout;
    rt.spawn(async move {
        tokio::time::sleep(timeout).await;
        let _ = tokio::task::spawn_blocking(move || answer(&shared, &run, Some(id), Answer::Timeout, None)).await;
    });
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer {
    /// `shown`: the hold id and the number of attempts the responder was shown.
    Approve { for_run: bool, shown: Option<(u64, usize)> },
    Deny { kill: bool },
    Timeout,
}

/// Answers the hold of `run` (a run id or name): approve (grant the held accesses, once or
/// for the rest of the run, and let the processes go on) or deny (the held opens and execs
/// end with their process, refused network operations stay refused; `kill` ends the run),
/// then thaws the run. `only`: answer only this hold (the timeout of an earlier hold must
/// not answer a later one).
pub(crate) fn answer(shared: &Shared, run: &str, only: Option<u64>, how: Answer, by: Option<(u32, u32)>) -> Result<String, String> {
    use nix::sys::signal::Signal;
    let (info, hold) = {
        let mut runs_own = shared.own();
        let runs = &mut runs_own.runs;
        let matches: Vec<u64> = runs
            .by_cgroup
            .iter()
            .filter(|(_, r)| r.ended.is_none() && (r.id == run || r.name.as_deref() == Some(run)))
            .map(|(id, _)| *id)
            .collect();
        let id = match matches.as_slice() {
            [id] => *id,
            [] => return Err(format!("no active run {run:?}")),
            _ => return Err(format!("{run:?} names {} runs; give the run id", matches.len())),
        };
        let info = runs.by_cgroup.get_mut(&id).expect("found");
        match (&info.hold, only) {
            (None, _) => return Err(format!("run {} is not held", info.id)),
            (Some(h), Some(only)) if h.id != only => return Err("answered already".into()),
            (Some(h), None) if !h.ready => {
                return Err(format!("run {} is being frozen for its hold; answer again in a moment", info.id))
            }
            _ => {}
        }
        if let (Answer::Approve { shown, .. }, Some(h)) = (how, &info.hold) {
            // An approval grants exactly the attempts the responder reviewed: not one that
            // arrived (before the freeze took hold) after they looked.
            match shown {
                None => return Err(format!("approving hold {} of run {} needs the hold and attempts reviewed (`agent-guard approve` shows them first)", h.id, info.id)),
                Some((id, n)) if id != h.id || n != h.attempts.len() => {
                    return Err(format!(
                        "hold {} of run {} now has {} attempt(s), {} reviewed (of hold {id}): nothing approved; review it again",
                        h.id,
                        info.id,
                        h.attempts.len(),
                        n
                    ))
                }
                Some(_) => {}
            }
        }
        let hold = info.hold.take().expect("held");
        save_hold(shared, info);
        (info.clone(), hold)
    };
    let mount = &shared.mount;
    let mut notes = Vec::new();
    match how {
        Answer::Approve { for_run, .. } => {
            let flags = if for_run { agent_guard_common::grant::RUN } else { agent_guard_common::grant::ONCE };
            let mut grants_own = shared.own();
            let grants = &mut grants_own.grants;
            for a in &hold.attempts {
                // A held open or exec has happened: approving once is letting it go on.
                if let (Some(key), true) = (&a.grant, for_run || !a.happened) {
                    if let Err(e) = grants.insert(key, flags, 0) {
                        notes.push(format!("grant for {} not recorded: {e}", a.what));
                    }
                }
            }
        }
        Answer::Deny { .. } | Answer::Timeout => {
            for a in hold.attempts.iter().filter(|a| a.happened) {
                if crate::runs::evidence::signal_in(a.tgid, Signal::SIGKILL, mount, &info.dir) {
                    notes.push(format!("process {} killed ({} was already open or loaded)", a.tgid, a.what));
                }
            }
        }
    }
    // A held DNS query waits in the forwarder for this answer (before the run is thawed, so
    // the reply is there when its resolver runs again).
    let names = hold.attempts.iter().filter(|a| a.kind == Kind::Dns).map(|a| a.what.clone());
    shared.dns.answered(info.cgroup_id, names, match how {
        Answer::Approve { for_run, .. } => Some(for_run),
        _ => None,
    });
    if let Answer::Deny { kill: true } = how {
        if let Err(e) = std::fs::write(info.dir.join("cgroup.kill"), "1") {
            notes.push(format!("cgroup.kill: {e}"));
        }
    }
    if let (Answer::Approve { .. }, true) = (how, hold.attempts.iter().any(|a| a.kind == Kind::Limit)) {
        // An approved budget starts a new window: the run goes on with its budgets intact
        // (not raised), counted afresh from the approval.
        shared.own().policies.reset_limits(info.cgroup_id);
    }
    {
        // Let go in the kernel first: a held process that runs is otherwise killed.
        let mut held_own = shared.own();
        let held = &mut held_own.held;
        for a in &hold.attempts {
            let _ = held.remove(&a.tgid);
        }
    }
    for a in &hold.attempts {
        crate::runs::evidence::signal_in(a.tgid, Signal::SIGCONT, mount, &info.dir);
    }
    if info.frozen_by_responder {
        notes.push("the run stays frozen: a responder froze it (`agent-guard thaw` lets it go on)".into());
    } else if let Err(e) = respond::act(&shared.scope(), &info.dir, Action::Thaw, false, respond::TIMEOUT) {
        if info.dir.exists() {
            notes.push(format!("thawing: {e}"));
        }
    }
    let (state, grant) = match how {
        Answer::Approve { for_run, .. } => ("approved", Some(if for_run { "run" } else { "once" })),
        Answer::Deny { .. } => ("denied", None),
        Answer::Timeout => ("timeout", None),
    };
    let mut ev = shared.base_event(Kind::Hold, Some(&info));
    ev.verdict = if matches!(how, Answer::Approve { .. }) { Verdict::Allow } else { Verdict::Deny };
    ev.detail = Detail::Hold {
        hold: state,
        reason: Some(reason(&hold.attempts)),
        attempts: hold.attempts.clone(),
        held_argv: vec![],
        recent_events: vec![],
        freeze_ms: None,
        grant,
        held_ms: Some(hold.since.elapsed().as_millis() as u64),
        requested_by_uid: by.map(|b| b.0),
        requested_by_pid: by.map(|b| b.1),
    };
    info!("run {} hold {state}{}", info.id, if notes.is_empty() { String::new() } else { format!(": {}", notes.join("; ")) });
    shared.emit(ev);
    let what: Vec<String> =
        hold.attempts.iter().map(|a| crate::output::text::printable(&format!("{} {}", a.kind, a.what)).into_owned()).collect();
    let mut text = format!("run {} {state} after {} ms: {}", info.id, hold.since.elapsed().as_millis(), what.join("; "));
    for n in notes {
        text.push_str(&format!("\n  {}", crate::output::text::printable(&n)));
    }
    Ok(text)
}

/// Run `run`'s hold for review as `approve` shows it before answering. Refused while the
/// run is still being frozen (attempts may still arrive).
pub(crate) fn show(shared: &Shared, run: &str) -> Result<crate::control::HoldView, String> {
    let own = shared.own();
    let matches: Vec<&RunInfo> =
        own.runs.by_cgroup.values().filter(|r| r.ended.is_none() && (r.id == run || r.name.as_deref() == Some(run))).collect();
    let info = match matches.as_slice() {
        [r] => *r,
        [] => return Err(format!("no active run {run:?}")),
        _ => return Err(format!("{run:?} names {} runs; give the run id", matches.len())),
    };
    let Some(h) = &info.hold else { return Err(format!("run {} is not held", info.id)) };
    if !h.ready {
        return Err(format!("run {} is being frozen for its hold; answer again in a moment", info.id));
    }
    let attempts = h
        .attempts
        .iter()
        .map(|a| {
            let what = format!("{} {} by pid {} ({}), rule {}", a.kind, a.what, a.tgid, a.comm.as_deref().unwrap_or("?"), a.rule.map_or("-", |r| r.name()));
            crate::output::text::printable(&what).into_owned()
        })
        .collect();
    Ok(crate::control::HoldView { run: info.id.clone(), hold: h.id, attempts })
}

/// What held a run, from its attempts: a tripwire (`decoy`), a budget (`limit`), or a
/// policy violation.
fn reason(attempts: &[crate::runs::grant::Attempt]) -> &'static str {
    use agent_guard_common::Rule;
    if attempts.iter().any(|a| matches!(a.rule, Some(Rule::DecoyFiles | Rule::DecoyHosts))) {
        "decoy"
    } else if attempts.iter().any(|a| a.kind == Kind::Limit) {
        "limit"
    } else {
        "violation"
    }
}

/// A budget crossed under `on_limit = "kill"`: the kernel killed the process that crossed
/// it; the run ends with it.
pub(crate) fn on_limit_kill(shared: &Arc<Shared>, e: &Event) {
    let run_cgroup = e.facts.run_cgroup;
    let info = shared.own().runs.by_cgroup.get(&run_cgroup).cloned();
    let Some(info) = info else { return };
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(err) = respond::act(&shared.scope(), &info.dir, Action::Kill, false, respond::TIMEOUT) {
            warn!("limit of run {}: killing {}: {err}", info.id, info.dir.display());
        }
    });
}
