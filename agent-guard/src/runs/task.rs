//! Tasks (`agent-guard task`): a child cgroup of a run's cgroup with its own id, labels and
//! policy, so that one tool call of an agent gets least privilege and every event it causes
//! names it. A task's policy is the intersection of its parent's (the run's, or the task the
//! caller is in) and its own (`policy::narrow`): a task never widens. The kernel decides by the
//! task's rule set (AG_TASKS: task cgroup id -> policy slot, looked up only for runs flagged
//! `RUN_TASKS`).
//!
//! Who may ask: a process inside a run, through the task socket, for its own run only (the
//! daemon takes the run from the caller's cgroup, never from the request); anyone with the
//! control socket's rights over the run, through the control socket. Processes are moved into
//! a task by the daemon (`task_join`), and only the caller's own child: a run cannot write the
//! cgroup filesystem itself.
use std::{collections::BTreeMap, path::PathBuf};

use agent_guard_common::{RunEntry, RUN_TASKS};
use tracing::{info, warn};

use crate::{
    control::{PolicyText, Response, TaskStatus},
    daemon::core::{RunInfo, Shared, TaskInfo},
    policy::Policy,
};


/// Who asks for a task operation.
#[derive(Debug, Clone)]
pub(crate) enum Asker {
    /// A process of run `run_cgroup` (in task `task`, if any), on the task socket.
    InRun { run_cgroup: u64, task: Option<String>, pid: u32 },
    /// A control-socket client allowed to act on the run (checked by the caller).
    Control { pid: u32 },
}

impl Asker {
    fn pid(&self) -> u32 {
        match self {
            Asker::InRun { pid, .. } | Asker::Control { pid } => *pid,
        }
    }
}

pub(crate) fn valid_task_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) && !id.starts_with('.')
}

/// The live run whose cgroup holds `pid`, and the task it is in (if any): what the task
/// socket knows of its peer.
pub(crate) fn locate(shared: &Shared, pid: u32) -> Option<(u64, Option<String>)> {
    let dir = crate::runs::respond::pid_cgroup(pid, &shared.mount)?;
    let own = shared.own();
    let run = own.runs.by_cgroup.values().find(|r| r.ended.is_none() && dir.starts_with(&r.dir))?;
    let task = own.runs.tasks.values().find(|t| t.run_cgroup == run.cgroup_id && t.ended.is_none() && dir.starts_with(&t.dir)).map(|t| t.id.clone());
    Some((run.cgroup_id, task))
}

/// `task_start`. `run`: the run named on the control socket (resolved by the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    shared: &Shared,
    asker: &Asker,
    run: &RunInfo,
    id: Option<String>,
    labels: BTreeMap<String, String>,
    policy: Option<String>,
    policy_file: Option<PolicyText>,
) -> Response {
    let id = id.unwrap_or_else(|| format!("t-{:06x}", rand::random::<u32>() & 0xff_ffff));
    if !valid_task_id(&id) {
        return Response::err(format!("invalid task id {id:?} (letters, digits, '-', '_', '.'; at most 64)"));
    }
    // A task id must never be taken for a run (or a pid) by `kill`, `freeze` or `events --run`.
    if id.bytes().all(|b| b.is_ascii_digit()) || id.starts_with("r-") || id.starts_with("b-") {
        return Response::err(format!("task id {id:?} could be taken for a pid or a run id; choose another"));
    }
    if shared.own().runs.by_cgroup.values().any(|r| r.ended.is_none() && (r.id == id || r.name.as_deref() == Some(&id))) {
        return Response::err(format!("task id {id:?} is the id or name of a run; choose another"));
    }
    if labels.len() > 32 || labels.iter().any(|(k, v)| k.len() > 128 || v.len() > 256) {
        return Response::err("too many or too long task labels (at most 32, keys of 128 and values of 256 bytes)");
    }
    // The parent: the task the caller is in, else the run.
    let parent_task = match asker {
        Asker::InRun { task, .. } => task.clone(),
        Asker::Control { .. } => None,
    };
    let task_policy: Option<(Policy, String)> = match (policy, policy_file) {
        (Some(_), Some(_)) => return Response::err("give a policy name or a policy file, not both"),
        (None, None) => None,
        (Some(name), None) => {
            let own = shared.own();
            match own.policies.slot_of(&name).and_then(|s| own.policies.by_slot(s)) {
                Some(s) => Some(((*s.policy).clone(), s.text.clone())),
                None => return Response::err(format!("no policy named {name:?} is loaded; give a policy file")),
            }
        }
        (None, Some(file)) => match crate::daemon::reload::check(&file) {
            Ok(p) => Some((p, file.text.clone())),
            Err(e) => return Response::err(e),
        },
    };
    let mut notes = Vec::new();
    let mut own = shared.own();
    if own.runs.tasks.values().any(|t| t.id == id && t.ended.is_none()) {
        return Response::err(format!("a task {id:?} is running already"));
    }
    let parent_slot = match &parent_task {
        Some(t) => match own.runs.tasks.values().find(|x| &x.id == t && x.run_cgroup == run.cgroup_id && x.ended.is_none()) {
            // A task without a policy of its own has its run's.
            Some(x) => match &x.policy {
                Some(n) => match own.policies.slot_of(n) {
                    Some(s) => Some(s),
                    None => return Response::err(format!("the policy of task {t} is no longer loaded: no task can be started from it")),
                },
                None => run.policy,
            },
            None => return Response::err(format!("the caller's task {t} has ended")),
        },
        None => run.policy,
    };
    let base = parent_slot.and_then(|s| own.policies.by_slot(s)).map(|s| s.policy.clone());
    let slot = match (task_policy, base) {
        (None, _) => parent_slot,
        (Some((p, text)), base) => {
            let mut effective = match &base {
                Some(b) => {
                    let (n, why) = crate::policy::narrow(b, &p);
                    notes.extend(why);
                    n
                }
                // A run without a policy allows everything: the task's own is the intersection.
                None => p,
            };
            // One slot per distinct pair: later tasks with the same policies share it.
            effective.name = format!("{}@{}", effective.name, effective.version.get(7..19).unwrap_or("x"));
            match own.policies.install(effective.clone(), text) {
                Ok(installed) => Some(installed.slot()),
                Err(e) => return Response::err(format!("installing the task's policy: {e}")),
            }
        }
    };
    let policy_name = slot.and_then(|s| own.policies.by_slot(s)).map(|s| s.policy.name.clone());
    let dir = run.dir.join(&id);
    if let Err(e) = std::fs::create_dir(&dir) {
        return Response::err(format!("creating the task cgroup {}: {e}", dir.display()));
    }
    let cgroup_id = match crate::runs::cgroup::cgroup_id(&dir) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            return Response::err(format!("task cgroup {}: {e}", dir.display()));
        }
    };
    // A task's policy may deny what the run's seccomp filter lets through: the syscall check
    // is attached before the task's entry exists (kernel::ondemand).
    if let Err(e) = own.binder.hooks_for_new_run(true) {
        let _ = std::fs::remove_dir(&dir);
        return Response::err(format!("cannot attach the kernel hooks, task refused: {e}"));
    }
    let runs = &mut own.runs;
    let Ok(mut entry) = runs.map.get(&run.cgroup_id, 0) else {
        let _ = std::fs::remove_dir(&dir);
        return Response::err(format!("run {} has no kernel entry", run.id));
    };
    let task_entry = RunEntry { run_index: entry.run_index, flags: entry.flags, policy: slot.unwrap_or(agent_guard_common::NO_POLICY), _pad: 0 };
    if let Err(e) = runs.tasks_map.insert(cgroup_id, task_entry, 0) {
        let _ = std::fs::remove_dir(&dir);
        return Response::err(format!("kernel task map: {e} (too many tasks: refused)"));
    }
    entry.flags |= RUN_TASKS;
    if let Err(e) = runs.map.insert(run.cgroup_id, entry, 0) {
        let _ = runs.tasks_map.remove(&cgroup_id);
        let _ = std::fs::remove_dir(&dir);
        return Response::err(format!("kernel run map: {e}"));
    }
    let info = TaskInfo {
        id: id.clone(),
        run_id: run.id.clone(),
        run_cgroup: run.cgroup_id,
        cgroup_id,
        dir: dir.clone(),
        labels: labels.clone(),
        policy: policy_name.clone(),
        starter: asker.pid(),
        starter_from: None,
        ended: None,
    };
    runs.tasks.insert(cgroup_id, info);
    // The task's Landlock layer, unless the configuration turns the layer off (`task` inside a
    // run reads no configuration: the daemon decides).
    let plan = slot
        .filter(|_| shared.ctl.cfg.landlock)
        .and_then(|s| own.policies.by_slot(s))
        .and_then(|s| crate::runs::landlock::Plan::for_policy(&s.policy));
    drop(own);
    info!("run {}: task {id} started (policy {})", run.id, policy_name.as_deref().unwrap_or("-"));
    let status = TaskStatus {
        id,
        run: run.id.clone(),
        labels,
        policy: policy_name,
        cgroup: shared.rel(&dir),
        processes: 0,
        state: "running".into(),
    };
    Response {
        task: Some(status),
        landlock: plan,
        text: (!notes.is_empty()).then(|| notes.join("\n")),
        ..Response::ok()
    }
}

/// The live task `id`, if `asker` may act on it (a process in a run: only its run's tasks).
pub(crate) fn find(shared: &Shared, asker: &Asker, id: &str) -> Result<TaskInfo, String> {
    let own = shared.own();
    let t = own.runs.tasks.values().find(|t| t.id == id && t.ended.is_none()).ok_or_else(|| format!("no task {id:?}"))?;
    if let Asker::InRun { run_cgroup, .. } = asker {
        if t.run_cgroup != *run_cgroup {
            return Err(format!("no task {id:?} in this run"));
        }
    }
    Ok(t.clone())
}

/// `task_join`: moves `pid`, a child of the process that started the task, into it.
pub(crate) fn join(shared: &Shared, asker: &Asker, task: &str, pid: u32) -> Response {
    let t = match find(shared, asker, task) {
        Ok(t) => t,
        Err(e) => return Response::err(e),
    };
    if asker.pid() != t.starter || (pid != asker.pid() && parent_of(pid) != Some(asker.pid())) {
        return Response::err(format!("process {pid} is neither the process that started task {task} nor its child"));
    }
    // Only from where the starter is (the task was narrowed from there): a child in a narrower
    // task of its own must not move into a wider one.
    let from = crate::runs::respond::pid_cgroup(pid, &shared.mount);
    if from.is_none() || from != crate::runs::respond::pid_cgroup(asker.pid(), &shared.mount) {
        return Response::err(format!("process {pid} is not where the process that started task {task} is"));
    }
    // From inside a run the child must be in that run already (it is the caller's child).
    if let Asker::InRun { .. } = asker {
        let run_dir = t.dir.parent().map(PathBuf::from).unwrap_or_default();
        if !crate::runs::evidence::in_cgroup(pid, &shared.mount, &run_dir) {
            return Response::err(format!("process {pid} is not in the task's run"));
        }
    }
    match std::fs::write(t.dir.join("cgroup.procs"), pid.to_string()) {
        Ok(()) => {
            if pid == t.starter {
                if let Some(x) = shared.own().runs.tasks.get_mut(&t.cgroup_id) {
                    x.starter_from = from;
                }
            }
            Response::ok()
        }
        Err(e) => Response::err(format!("moving process {pid} into task {task}: {e}")),
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    crate::runs::escape::stat_field(pid, 4).map(|p| p as u32)
}

/// `task_end`: what is left in the task is killed, and the task is forgotten.
pub(crate) fn end(shared: &Shared, asker: &Asker, task: &str) -> Response {
    let t = match find(shared, asker, task) {
        Ok(t) => t,
        Err(e) => return Response::err(e),
    };
    if asker.pid() != t.starter {
        return Response::err(format!("task {task} is ended by the process that started it"));
    }
    // The starter (`agent-guard task`, inside its task) goes back to where it joined from
    // before what is left in the task is killed; if that is gone, it ends with the task.
    if crate::runs::evidence::in_cgroup(t.starter, &shared.mount, &t.dir) {
        let back = t.starter_from.as_ref().filter(|d| d.exists()).map(|d| std::fs::write(d.join("cgroup.procs"), t.starter.to_string()));
        if !matches!(back, Some(Ok(()))) {
            warn!("task {task}: its starter {} cannot go back where it came from: it ends with the task", t.starter);
        }
    }
    forget(shared, &t);
    Response::ok()
}

fn forget(shared: &Shared, t: &TaskInfo) {
    if matches!(crate::runs::cgroup::populated(&t.dir), Ok(true)) {
        let _ = crate::runs::respond::act(&shared.scope(), &t.dir, crate::runs::respond::Action::Kill, false, crate::runs::respond::TIMEOUT);
    }
    if matches!(crate::runs::cgroup::populated(&t.dir), Ok(true)) {
        // Survivors keep the task's rules: the kernel entry stays until the cgroup is empty.
        warn!("task {}: processes survived its end; they stay under its rules", t.id);
        if let Some(x) = shared.own().runs.tasks.get_mut(&t.cgroup_id) {
            x.ended = Some(std::time::Instant::now());
        }
        return;
    }
    if let Err(e) = std::fs::remove_dir(&t.dir) {
        if t.dir.exists() {
            warn!("task {}: removing {}: {e}", t.id, t.dir.display());
        }
    }
    let mut own = shared.own();
    let _ = own.runs.tasks_map.remove(&t.cgroup_id);
    if let Some(x) = own.runs.tasks.get_mut(&t.cgroup_id) {
        x.ended = Some(std::time::Instant::now());
    }
}


/// A run ended: its tasks go with it.
pub(crate) fn forget_run_tasks(shared: &Shared, run_cgroup: u64) {
    let tasks: Vec<TaskInfo> = shared.own().runs.tasks.values().filter(|t| t.run_cgroup == run_cgroup && t.ended.is_none()).cloned().collect();
    for t in tasks {
        forget(shared, &t);
    }
}

/// The task an event of cgroup `cgroup_id` (at `cgroup`, relative to the mount) belongs to.
pub(crate) fn of_event(shared: &Shared, run_cgroup: u64, cgroup_id: u64, cgroup: Option<&str>) -> Option<(String, BTreeMap<String, String>)> {
    let own = shared.own();
    if let Some(t) = own.runs.tasks.get(&cgroup_id) {
        return Some((t.id.clone(), t.labels.clone()));
    }
    let path = cgroup?;
    own.runs
        .tasks
        .values()
        .find(|t| t.run_cgroup == run_cgroup && std::path::Path::new(path).starts_with(shared.rel(&t.dir)))
        .map(|t| (t.id.clone(), t.labels.clone()))
}

/// The live tasks of run `run_cgroup`, for `ps`.
pub(crate) fn statuses(shared: &Shared, run_cgroup: u64) -> Vec<TaskStatus> {
    let tasks: Vec<TaskInfo> = shared.own().runs.tasks.values().filter(|t| t.run_cgroup == run_cgroup && t.ended.is_none()).cloned().collect();
    tasks
        .into_iter()
        .map(|t| TaskStatus {
            processes: crate::runs::respond::procs(&t.dir).map(|p| p.len() as u64).unwrap_or(0),
            state: if std::fs::read_to_string(t.dir.join("cgroup.events")).is_ok_and(|s| s.contains("frozen 1")) {
                "frozen".into()
            } else {
                "running".into()
            },
            cgroup: shared.rel(&t.dir),
            id: t.id,
            run: t.run_id,
            labels: t.labels,
            policy: t.policy,
        })
        .collect()
}
