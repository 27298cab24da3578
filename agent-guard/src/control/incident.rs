//! The daemon's side of incident response: who may connect, `ps`, `status`, `freeze`,
//! `thaw`, `kill` and `events`, and the recent-events feed they read.
use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        atomic::Ordering,
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    io::{AsyncBufRead, AsyncWrite, AsyncWriteExt},
    sync::broadcast::error::{RecvError, TryRecvError},
};
use tracing::{info, warn};

use crate::control::{lines::RequestLines, Request};
use crate::daemon::core::{RunInfo, Shared};
use crate::{control::peer as access, runs::cgroup, control::{ActionReport, DaemonStatus, Response, RunStatus, ViolationSummary}, output::event::{self, Detail, Event, Kind}, runs::respond::{self, Action, Candidate, Lookup}};

/// After a kill, how long the run's launcher has to report the run's end before the daemon
/// records it itself (a launcher that is gone never will).
const END_GRACE: Duration = Duration::from_secs(3);

impl Shared {
    /// Bookkeeping for an event the log has accepted: the feed, followers, the run's
    /// violation count and the drop total.
    pub(crate) fn record(&self, e: &Arc<Event>) {
        // Violations `ps` counts (deny, kill, would_deny, hold). A `hold` event records the
        // hold of a violation already counted.
        if e.verdict.is_violation() && e.kind != Kind::Hold {
            if let Some(run) = &e.run {
                let mut runs_own = self.own();
                let runs = &mut runs_own.runs;
                let mut matching: Vec<&mut RunInfo> = runs.by_cgroup.values_mut().filter(|r| &r.id == run).collect();
                // The live run of that id, else the one that ended last.
                matching.sort_by_key(|r| r.ended.is_none());
                if let Some(r) = matching.pop() {
                    r.violations += 1;
                }
                drop(runs_own);
                let mut tallies = self.ctl.tallies.lock().expect("tallies lock");
                let t = tallies.entry(run.clone()).or_default();
                t.total += 1;
                *t.by_rule.entry(e.rule.map_or("-", |r| r.name()).to_string()).or_default() += 1;
                if t.first.len() < ViolationSummary::FIRST {
                    t.first.push(format!("{} {}", e.kind.name(), target(e)));
                }
            }
        }
        if let Detail::Drop { count, stage } = &e.detail {
            if stage.starts_with("kernel") {
                self.ctl.kernel_drops.fetch_add(*count, Ordering::Relaxed);
            }
        }
        self.ctl.feed.push(e.clone());
    }

    /// The last `n` events of run `run` (by id) still in memory, oldest first: the evidence a
    /// reviewer sees.
    #[allow(dead_code)] // for hold for review
    pub(crate) fn last_events(&self, run: &str, n: usize) -> Vec<Arc<Event>> {
        self.ctl.feed.last_of_run(run, n)
    }

    fn bound_dirs(&self) -> Vec<(u64, PathBuf)> {
        let binder_own = self.own();
        let binder = &binder_own.binder;
        binder.bound.iter().map(|(id, b)| (*id, b.dir.clone())).collect()
    }

    pub(crate) fn scope(&self) -> respond::Scope {
        respond::Scope {
            mount: self.mount.clone(),
            managed_root: self.root.clone(),
            bound: self.bound_dirs().into_iter().map(|(_, d)| d).collect(),
        }
    }

    /// Runs a responder may name: every live run and bound cgroup (with `ended`, those that
    /// ended recently too), and run cgroups below the managed root the daemon has no record
    /// of (left by a daemon that stopped: they can still be frozen or killed).
    fn candidates(&self, with_ended: bool) -> Vec<(Candidate, Option<RunInfo>)> {
        let runs: Vec<RunInfo> = {
            let runs_own = self.own();
            let runs = &runs_own.runs;
            runs.by_cgroup.values().filter(|r| with_ended || r.ended.is_none()).cloned().collect()
        };
        let known: HashSet<PathBuf> = runs.iter().filter(|r| r.ended.is_none()).map(|r| r.dir.clone()).collect();
        let mut out: Vec<(Candidate, Option<RunInfo>)> = runs
            .into_iter()
            .map(|r| (Candidate { id: r.id.clone(), name: r.name.clone(), dir: r.dir.clone() }, Some(r)))
            .collect();
        for c in respond::runs_below(&self.root).unwrap_or_default() {
            if !known.contains(&c.dir) && !out.iter().any(|(o, _)| o.id == c.id) {
                out.push((c, None));
            }
        }
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        out
    }
}

/// Whether the peer may use the control socket, and as what (see `access`).
pub(crate) fn admit(shared: &Shared, peer: access::Peer) -> Result<access::Role, String> {
    let bound: Vec<PathBuf> = shared.bound_dirs().into_iter().map(|(_, d)| d).collect();
    let rules = access::Rules {
        group: &shared.ctl.cfg.control_group,
        gid: shared.ctl.gid,
        admin_group: shared.ctl.cfg.admin_group.as_deref(),
        admin_gid: shared.ctl.admin_gid,
        mount: &shared.mount,
        managed_root: &shared.root,
        bound: &bound,
    };
    access::check(peer, &rules)
}

fn admin_group(shared: &Shared) -> Option<&str> {
    shared.ctl.cfg.admin_group.as_deref()
}

/// Whether `caller` may make request `req` (see `access`): policies are for root and
/// `admin_group`; a run is for the uid that started it, root and `admin_group`. Requests that
/// name a run by more than its id (freeze, thaw, kill, events) are checked once it is
/// resolved; `ps` and `events` show a member only its own runs.
pub(crate) fn authorize(shared: &Shared, caller: &access::Caller, req: &Request) -> Result<(), String> {
    let admins = admin_group(shared);
    let live_runs = |matches: &dyn Fn(&RunInfo) -> bool| -> Vec<(String, Option<u32>)> {
        let own = shared.own();
        own.runs.by_cgroup.values().filter(|r| r.ended.is_none() && matches(r)).map(|r| (r.id.clone(), r.started_by)).collect()
    };
    match req {
        Request::Ping
        | Request::Status
        | Request::Checkpoint
        | Request::Ps
        | Request::PolicyList
        | Request::PolicyShow { .. }
        | Request::PolicyHistory { .. }
        | Request::PolicyVersion { .. }
        | Request::Events { .. }
        | Request::Freeze { .. }
        | Request::Thaw { .. }
        | Request::Kill { .. } => Ok(()),
        Request::PolicyApply { file } => access::admin_only(caller, &format!("applying a policy ({})", file.source), admins),
        Request::PolicyRollback { name, .. } => access::admin_only(caller, &format!("rolling back policy {name:?}"), admins),
        // A member may run under a policy file of its own: it only narrows that run. One that
        // binds host cgroups is a policy for others.
        Request::Register { policy_file: Some(file), .. } if !caller.is_admin() => {
            match crate::policy::parse(&file.text, &file.source).policy {
                Some(p) if !p.bind_cgroups.is_empty() => access::admin_only(
                    caller,
                    &format!("a policy file with [bind] cgroups ({}: binds {})", file.source, p.bind_cgroups.join(", ")),
                    admins,
                ),
                _ => Ok(()),
            }
        }
        Request::Register { .. } => Ok(()),
        Request::Landlock { run, .. }
        | Request::End { run, .. }
        | Request::Seccomp { run }
        | Request::SeccompRefusal { run, .. } => {
            live_runs(&|r| &r.id == run).iter().try_for_each(|(id, by)| access::may_act_on(caller, id, *by, admins))
        }
        Request::Approve { run, .. } | Request::Deny { run, .. } | Request::HoldShow { run } => live_runs(&|r| &r.id == run || r.name.as_ref() == Some(run))
            .iter()
            .try_for_each(|(id, by)| access::may_act_on(caller, id, *by, admins)),
        Request::TaskStart { run: None, .. } => Err("task_start on the control socket names the run (`agent-guard task --run RUN`)".into()),
        Request::TaskStart { run: Some(run), .. } => {
            let runs = live_runs(&|r| &r.id == run || r.name.as_ref() == Some(run));
            if runs.is_empty() {
                return Err(format!("no active run {run:?}"));
            }
            runs.iter().try_for_each(|(id, by)| access::may_act_on(caller, id, *by, admins))
        }
        Request::TaskJoin { task, .. } | Request::TaskEnd { task, .. } => {
            let run = shared.own().runs.tasks.values().find(|t| &t.id == task && t.ended.is_none()).map(|t| t.run_id.clone());
            match run {
                None => Err(format!("no task {task:?}")),
                Some(run) => live_runs(&|r| r.id == run).iter().try_for_each(|(id, by)| access::may_act_on(caller, id, *by, admins)),
            }
        }
    }
}

/// The uid that started run `id`: from the registry, or else from its `run_start` event if
/// that is still in memory. `Some(None)`: a known run whose starter is not recorded.
fn starter(shared: &Shared, id: &str) -> Option<Option<u32>> {
    {
        let own = shared.own();
        let mut matching: Vec<&RunInfo> = own.runs.by_cgroup.values().filter(|r| r.id == id).collect();
        matching.sort_by_key(|r| r.ended.is_none());
        if let Some(r) = matching.pop() {
            return Some(r.started_by);
        }
    }
    shared.ctl.feed.snapshot().iter().rev().find_map(|e| match &e.detail {
        Detail::RunStart { requested_by_uid, .. } if e.run.as_deref() == Some(id) => Some(Some(*requested_by_uid)),
        _ => None,
    })
}

/// Which events a member sees: those of the runs it started (an admin sees all).
struct Visible<'a> {
    shared: &'a Shared,
    caller: access::Caller,
    runs: std::collections::HashMap<String, bool>,
}

impl Visible<'_> {
    fn event(&mut self, e: &Event) -> bool {
        if self.caller.is_admin() {
            return true;
        }
        let Some(run) = &e.run else { return false };
        if let Some(&v) = self.runs.get(run) {
            return v;
        }
        let v = starter(self.shared, run).flatten() == Some(self.caller.uid);
        self.runs.insert(run.clone(), v);
        v
    }
}

fn unregistered(c: &Candidate, cgroup_id: u64) -> RunInfo {
    RunInfo {
        started: std::fs::metadata(&c.dir).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now()),
        ..RunInfo::new(c.id.clone(), c.dir.clone(), cgroup_id)
    }
}

/// The event recording a responder's `action` on `info` (or a task of it).
fn action_event(shared: &Shared, action: Action, info: &RunInfo, by: (u32, u32), latency: Duration, processes: usize, error: Option<String>) -> crate::output::event::Event {
    let mut e = shared.base_event(action.kind(), Some(info));
    e.detail = Detail::Action {
        requested_by_uid: by.0,
        requested_by_pid: by.1,
        latency_ms: respond::millis(latency),
        processes: processes as u64,
        error,
    };
    e
}

/// `freeze`, `thaw`, `kill` of a task (`agent-guard task`): on the task's cgroup only; the
/// rest of the run goes on.
fn act_on_task(shared: &Shared, action: Action, t: &crate::daemon::core::TaskInfo, caller: &access::Caller) -> Response {
    let info = shared.own().runs.by_cgroup.get(&t.run_cgroup).cloned();
    let Some(info) = info else { return Response::err(format!("task {}: its run is gone", t.id)) };
    if let Err(why) = access::may_act_on(caller, &info.id, info.started_by, admin_group(shared)) {
        return Response::err(why);
    }
    let result = respond::act(&shared.scope(), &t.dir, action, false, respond::TIMEOUT);
    let (latency, processes) = match &result {
        Ok(o) => (o.latency, o.processes),
        Err(_) => (Duration::ZERO, 0),
    };
    let mut e = action_event(shared, action, &info, (caller.uid, caller.pid), latency, processes, result.as_ref().err().map(|e| e.to_string()));
    e.task = Some(t.id.clone());
    e.task_labels = Some(t.labels.clone());
    e.cgroup = Some(shared.rel(&t.dir));
    shared.emit(e);
    match result {
        Ok(o) => Response {
            action: Some(ActionReport {
                run: info.id.clone(),
                name: Some(t.id.clone()),
                cgroup: shared.rel(&t.dir),
                latency_ms: respond::millis(o.latency),
                processes: o.processes as u64,
                removed: false,
            }),
            ..Response::ok()
        },
        Err(e) => Response::err(e.to_string()),
    }
}

/// `freeze`, `thaw`, `kill` of the run `spec` names (or, when it names no run, of the live
/// task with that id), recorded as an event naming the requester.
pub(crate) fn act(shared: Arc<Shared>, action: Action, spec: &str, caller: access::Caller) -> Response {
    let (uid, pid) = (caller.uid, caller.pid);
    let cands = shared.candidates(false);
    let list: Vec<Candidate> = cands.iter().map(|(c, _)| c.clone()).collect();
    let c = match respond::resolve(spec, &list, &shared.mount, Lookup { names: true }) {
        Ok(c) => c.clone(),
        Err(e) => {
            // Runs come first: a task id is tried only when no run matches.
            let task = shared.own().runs.tasks.values().find(|t| t.id == spec && t.ended.is_none()).cloned();
            return match task {
                Some(t) => act_on_task(&shared, action, &t, &caller),
                None => Response::err(e.to_string()),
            };
        }
    };
    let info = cands
        .into_iter()
        .find(|(o, _)| o.id == c.id)
        .and_then(|(_, i)| i)
        .unwrap_or_else(|| unregistered(&c, cgroup::cgroup_id(&c.dir).unwrap_or(0)));
    if let Err(why) = access::may_act_on(&caller, &info.id, info.started_by, admin_group(&shared)) {
        return Response::err(why);
    }
    if let (Action::Thaw, Some(why)) = (action, info.hold.as_ref().map(crate::runs::hold::Hold::summary)) {
        return Response::err(format!(
            "run {} is held for review ({why}): answer it with `agent-guard approve {}` or `agent-guard deny {}`",
            info.id, info.id, info.id
        ));
    }
    let scope = shared.scope();
    // A bound cgroup belongs to whoever created it (systemd): emptied, not removed.
    let remove = info.dir.starts_with(&shared.root);
    let start = Instant::now();
    let result = respond::act(&scope, &info.dir, action, remove, respond::TIMEOUT);
    if let Err(respond::RespondError::Outside(..)) = &result {
        return Response::err(result.unwrap_err().to_string());
    }
    let (latency, processes) = match &result {
        Ok(o) => (o.latency, o.processes),
        Err(_) => (start.elapsed(), respond::procs(&info.dir).map(|p| p.len()).unwrap_or(0)),
    };
    shared.emit(action_event(&shared, action, &info, (uid, pid), latency, processes, result.as_ref().err().map(|e| e.to_string())));
    if result.is_ok() {
        let mut runs_own = shared.own();
        let runs = &mut runs_own.runs;
        if let Some(r) = runs.by_cgroup.get_mut(&info.cgroup_id) {
            match action {
                Action::Freeze => r.frozen_by_responder = true,
                Action::Thaw => r.frozen_by_responder = false,
                // A killed run's hold is over: nothing is left to let go or deny.
                Action::Kill => {
                    r.frozen_by_responder = false;
                    if r.hold.take().is_some() {
                        crate::runs::hold::save_hold(&shared, r);
                    }
                }
            }
        }
    }
    if action == Action::Kill {
        crate::runs::hold::forget_run(&shared, info.cgroup_id);
    }
    match result {
        Ok(o) => {
            info!(
                "{} {} ({} processes) in {:.3} ms, asked by uid {uid} pid {pid}",
                action.past(),
                info.id,
                o.processes,
                respond::millis(o.latency)
            );
            if action == Action::Kill && remove {
                end_later(shared.clone(), info.id.clone());
            }
            Response {
                action: Some(ActionReport {
                    run: info.id.clone(),
                    name: info.name.clone(),
                    cgroup: shared.rel(&info.dir),
                    latency_ms: respond::millis(o.latency),
                    processes: o.processes as u64,
                    removed: o.removed,
                }),
                ..Response::ok()
            }
        }
        Err(e) => {
            warn!("{} {} failed: {e}", action.name(), info.id);
            Response::err(format!("{} {}: {e}", action.name(), info.id))
        }
    }
}

/// After a kill the run's launcher reports its end; if it has not after `END_GRACE` (it was
/// killed too, or the run was never started by one), the daemon records the end itself.
fn end_later(shared: Arc<Shared>, id: String) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    rt.spawn(async move {
        tokio::time::sleep(END_GRACE).await;
        let info = {
            let mut runs_own = shared.own();
            let runs = &mut runs_own.runs;
            let Some(r) = runs.by_cgroup.values_mut().find(|r| r.id == id && r.ended.is_none()) else { return };
            if r.dir.exists() {
                return;
            }
            r.ended = Some(Instant::now());
            let info = r.clone();
            let _ = runs.map.remove(&info.cgroup_id);
            info
        };
        info!("run {id} was killed and nobody reported its end: recorded it");
        let mut e = shared.base_event(Kind::RunEnd, Some(&info));
        e.detail = Detail::RunEnd { exit_status: None };
        shared.emit(e);
    });
}

fn policy_name(shared: &Shared, slot: Option<u32>) -> Option<String> {
    let store_guard = shared.own();
    let store = &store_guard.policies;
    slot.and_then(|s| store.by_slot(s)).map(|s| s.policy.name.clone())
}

fn run_status(shared: &Shared, r: &RunInfo, bound: bool, unregistered: bool) -> RunStatus {
    let frozen = respond::frozen(&r.dir);
    let state = match (&r.hold, frozen) {
        (Some(_), _) => "held",
        (None, true) => "frozen",
        (None, false) => "running",
    };
    RunStatus {
        id: r.id.clone(),
        name: r.name.clone(),
        policy: policy_name(shared, r.policy),
        state: state.into(),
        held: r.hold.as_ref().map(crate::runs::hold::Hold::summary),
        processes: respond::procs(&r.dir).map_or(0, |p| p.len() as u64),
        violations: r.violations,
        age_secs: SystemTime::now().duration_since(r.started).unwrap_or_default().as_secs(),
        started: event::rfc3339(r.started),
        cgroup: shared.rel(&r.dir),
        bound,
        unregistered,
        labels: r.labels.clone(),
        tasks: crate::runs::task::statuses(shared, r.cgroup_id),
        landlock: r.landlock.clone(),
    }
}

/// The runs `caller` may see: all for root and `admin_group`, else those it started.
fn statuses(shared: &Shared, caller: &access::Caller) -> Vec<RunStatus> {
    let bound: HashSet<u64> = shared.bound_dirs().into_iter().map(|(id, _)| id).collect();
    let mut out: Vec<RunStatus> = shared
        .candidates(false)
        .into_iter()
        .filter(|(_, info)| caller.is_admin() || info.as_ref().is_some_and(|r| r.started_by == Some(caller.uid)))
        .map(|(c, info)| match info {
            Some(r) => run_status(shared, &r, bound.contains(&r.cgroup_id), false),
            None => run_status(shared, &unregistered(&c, 0), false, true),
        })
        .collect();
    out.sort_by(|a, b| b.age_secs.cmp(&a.age_secs).then_with(|| a.id.cmp(&b.id)));
    out
}

pub(crate) fn ps(shared: &Shared, caller: &access::Caller) -> Response {
    Response { runs: Some(statuses(shared, caller)), ..Response::ok() }
}

/// The daemon's state. The counts are of every run; the runs it names, `caller`'s only.
pub(crate) fn status(shared: &Shared, caller: &access::Caller) -> Response {
    let runs = statuses(shared, &access::Caller { role: access::Role::Root, ..*caller });
    let count = |state: &str| runs.iter().filter(|r| r.state == state).count() as u64;
    let cfg = &shared.ctl.cfg;
    let binder_own = shared.own();
    let binder = &binder_own.binder;
    let s = DaemonStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_secs: shared.ctl.started.elapsed().as_secs(),
        config_file: cfg.source.as_ref().map(|p| p.display().to_string()),
        control_socket: cfg.control_socket.display().to_string(),
        control_group: cfg.control_group.clone(),
        control_group_gid: shared.ctl.gid,
        events_log: cfg.events_log.display().to_string(),
        log_pubkey: crate::output::chain::host_pubkey(&cfg.data_dir).ok().map(|k| hex::encode(k.as_bytes())),
        policy_dir: cfg.policy_dir.display().to_string(),
        bpffs_dir: cfg.bpffs_dir.display().to_string(),
        cgroup_mount: shared.mount.display().to_string(),
        managed_root: shared.root.display().to_string(),
        runs_running: count("running"),
        runs_frozen: count("frozen"),
        runs_held: count("held"),
        bound_cgroups: runs.iter().filter(|r| r.bound).count() as u64,
        policies: binder_own.policies.list().len() as u64,
        syscall_check_attached: binder.syscall_hook_attached(),
        syscall_tracepoints_attached: binder.syscall_tracepoints_attached(),
        events_dropped: shared.ctl.kernel_drops.load(Ordering::Relaxed)
            + shared.queue_drops.load(Ordering::Relaxed)
            + shared.sink_drops.lost.load(Ordering::Relaxed),
        events_buffered: shared.ctl.feed.len() as u64,
        followers: shared.ctl.feed.followers() as u64,
        backend: Some(shared.backend.backend.name().into()),
        backend_reason: Some(shared.backend.reason.clone()),
        enforcement: crate::kernel::backend::enforcement(shared.backend.backend),
        landlock_abi: crate::runs::landlock::host_abi(),
        landlock_enabled: cfg.landlock,
        landlock_runs: runs
            .iter()
            .filter(|r| caller.is_admin() || starter(shared, &r.id).flatten() == Some(caller.uid))
            .filter_map(|r| {
                let coverage = r.landlock.clone()?;
                Some(crate::control::LandlockRun { run: r.id.clone(), name: r.name.clone(), coverage })
            })
            .collect(),
    };
    Response { status: Some(s), ..Response::ok() }
}

/// The run id `spec` names for `events --run`: live runs, runs that ended recently, and runs
/// whose events are still in memory.
fn events_filter(shared: &Shared, spec: &str) -> Result<String, String> {
    let mut list: Vec<Candidate> = shared.candidates(true).into_iter().map(|(c, _)| c).collect();
    for e in shared.ctl.feed.snapshot() {
        if let (Some(id), true) = (&e.run, e.kind == Kind::RunStart) {
            if !list.iter().any(|c| &c.id == id) {
                let dir = e.cgroup.as_deref().map_or_else(PathBuf::new, |c| respond::cgroup_path(c, &shared.mount));
                list.push(Candidate { id: id.clone(), name: e.run_name.clone(), dir });
            }
        }
    }
    // The same run id may appear twice (a run that ended and a bound cgroup re-bound).
    let mut seen = HashSet::new();
    list.retain(|c| seen.insert(c.id.clone()));
    respond::resolve(spec, &list, &shared.mount, Lookup { names: true }).map(|c| c.id.clone()).map_err(|e| e.to_string())
}

fn line(e: &Event, json: bool, out: &mut Vec<u8>) {
    if json {
        serde_json::to_writer(&mut *out, e).expect("events serialize");
    } else {
        // One event, one line, whatever its paths contain.
        out.extend_from_slice(event::human(e).replace('\n', "\\n").as_bytes());
    }
    out.push(b'\n');
}

/// `events`: the response, the buffered events, and with `follow` every new one until the
/// client closes its side. Takes the connection over.
/// What a violation was about, in a few words: the path, the address, the syscall.
fn target(e: &Event) -> String {
    match &e.detail {
        Detail::Open { path, .. } | Detail::Exec { path, .. } => path.clone(),
        Detail::Connect { addr, port, .. } => format!("{addr}:{port}"),
        Detail::Syscall { name, .. } => name.clone(),
        _ => e.rule.map(|r| r.name().to_string()).unwrap_or_default(),
    }
}

/// What `events` asks for besides the run: violations only, a start time, the last N.
#[derive(Debug, Default)]
pub(crate) struct EventFilter {
    pub(crate) violations: bool,
    pub(crate) since: Option<String>,
    pub(crate) tail: Option<usize>,
}

impl EventFilter {
    fn keeps(&self, e: &Event) -> bool {
        (!self.violations || e.verdict.is_violation()) && self.since.as_ref().is_none_or(|s| e.ts.as_str() >= s.as_str())
    }
}

pub(crate) async fn stream_events<R, W>(
    shared: Arc<Shared>,
    caller: access::Caller,
    run: Option<String>,
    follow: bool,
    json: bool,
    only: EventFilter,
    mut requests: RequestLines<R>,
    mut wr: W,
) where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // A task id: the events of that task (of its run, with `task` set to it).
    let task_run = run
        .as_deref()
        .filter(|spec| events_filter(&shared, spec).is_err())
        .and_then(|spec| shared.own().runs.tasks.values().find(|t| t.id == spec).map(|t| (t.id.clone(), t.run_id.clone())));
    let task_only = task_run.as_ref().map(|(t, _)| t.clone());
    let run = task_run.map(|(_, r)| r).or(run);
    let filter = match run.as_deref().map(|spec| events_filter(&shared, spec)).transpose().and_then(|id| {
        if let Some(id) = &id {
            access::may_act_on(&caller, id, starter(&shared, id).flatten(), admin_group(&shared))?;
        }
        Ok(id)
    }) {
        Ok(f) => f,
        Err(msg) => {
            let _ = write_response(&mut wr, &Response::err(msg)).await;
            return;
        }
    };
    if write_response(&mut wr, &Response { stream: Some("events".into()), ..Response::ok() }).await.is_err() {
        return;
    }
    let mut visible = Visible { shared: &shared, caller, runs: Default::default() };
    let mut wanted = |e: &Event| {
        filter.as_ref().is_none_or(|id| e.run.as_ref() == Some(id))
            && task_only.as_ref().is_none_or(|t| e.task.as_ref() == Some(t))
            && only.keeps(e)
            && visible.event(e)
    };
    let (recent, rx) = if follow {
        let (recent, rx) = shared.ctl.feed.follow();
        (recent, Some(rx))
    } else {
        (shared.ctl.feed.snapshot(), None)
    };
    let mut buf = Vec::with_capacity(1 << 16);
    let backlog: Vec<&Arc<Event>> = recent.iter().filter(|e| wanted(e)).collect();
    let skip = only.tail.map_or(0, |n| backlog.len().saturating_sub(n));
    for e in backlog.into_iter().skip(skip) {
        line(e, json, &mut buf);
        if buf.len() >= 1 << 16 {
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    }
    if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
        return;
    }
    drop(recent);
    let Some(mut rx) = rx else {
        let _ = wr.shutdown().await;
        return;
    };
    loop {
        buf.clear();
        tokio::select! {
            got = rx.recv() => {
                let mut got = got.map_err(|e| match e {
                    RecvError::Lagged(n) => Some(n),
                    RecvError::Closed => None,
                });
                // This one and whatever else is already there, in one write.
                loop {
                    match got {
                        Ok(e) => {
                            if wanted(&e) {
                                line(&e, json, &mut buf);
                            }
                        }
                        Err(Some(missed)) => {
                            shared.metrics.dropped("follower", missed);
                            let mut e = shared.base_event(Kind::Drop, None);
                            e.detail = Detail::Drop { count: missed, stage: "follower" };
                            line(&e, json, &mut buf);
                        }
                        Err(None) => return,
                    }
                    if buf.len() >= 1 << 16 {
                        break;
                    }
                    got = match rx.try_recv() {
                        Ok(e) => Ok(e),
                        Err(TryRecvError::Lagged(n)) => Err(Some(n)),
                        Err(TryRecvError::Closed) => Err(None),
                        Err(TryRecvError::Empty) => break,
                    };
                }
            }
            req = requests.next_line() => match req {
                Ok(Some(_)) => continue, // nothing more to ask on this connection
                _ => return,             // the client closed
            },
        }
        if !buf.is_empty() && (wr.write_all(&buf).await.is_err() || wr.flush().await.is_err()) {
            return;
        }
    }
}

pub(crate) async fn write_response<W: AsyncWrite + Unpin>(wr: &mut W, resp: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_string(resp).expect("serializable");
    out.push('\n');
    wr.write_all(out.as_bytes()).await?;
    wr.flush().await
}
