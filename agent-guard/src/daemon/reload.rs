//! Policies in the daemon: apply (control socket, policy_dir, SIGHUP), `run --policy FILE`,
//! and `[bind] cgroups` rebinding.
use std::{
    collections::HashMap,
    path::PathBuf,
    time::Instant,
};

use agent_guard_common::RunEntry;
use anyhow::Result;
use tracing::{info, warn};
use crate::{daemon::state::PolicyRecord, control::PolicyText, output::event::Detail, kernel::rules::Installed, policy};
use crate::runs::hold::forget_run;
use crate::daemon::core::*;
use crate::daemon::history::{valid_name, Entry, History};

/// Parses and validates a policy's text; every problem in one message, one per line.
pub(crate) fn check(file: &PolicyText) -> Result<policy::Policy, String> {
    let checked = policy::parse(&file.text, &file.source);
    match checked.policy {
        Some(p) if checked.errors.is_empty() => Ok(p),
        _ => Err(checked.errors.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")),
    }
}

/// Loads or replaces a policy and records a `policy_reload` event either way.
/// `by`: the uid and pid of the control client that asked (None: policy_dir at start or on
/// SIGHUP).
pub(crate) fn apply(shared: &Shared, file: PolicyText, by: Option<(u32, u32)>) -> Result<(crate::kernel::rules::PolicySummary, Installed), String> {
    let parsed = check(&file);
    apply_checked(shared, file, parsed, by)
}

/// `apply` for a policy text already parsed (`parsed` is `check(&file)`).
pub(crate) fn apply_checked(
    shared: &Shared,
    file: PolicyText,
    parsed: Result<policy::Policy, String>,
    by: Option<(u32, u32)>,
) -> Result<(crate::kernel::rules::PolicySummary, Installed), String> {
    apply_recorded(shared, file, parsed, by, None)
}

static APPLY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `apply_checked`, recorded in the policy history as a rollback to version `restores` when
/// it is one.
pub(crate) fn apply_recorded(
    shared: &Shared,
    file: PolicyText,
    parsed: Result<policy::Policy, String>,
    by: Option<(u32, u32)>,
    restores: Option<u64>,
) -> Result<(crate::kernel::rules::PolicySummary, Installed), String> {
    // One apply at a time, so the history lists versions in the order they came into force.
    let _serial = APPLY.lock().unwrap_or_else(|p| p.into_inner());
    let named = match &parsed {
        Ok(p) => Some((p.name.clone(), p.version.clone())),
        Err(_) => name_in(&file.text).map(|n| (n, String::new())),
    };
    let outcome = install_and_report(shared, &file, parsed, by);
    if let Some((name, version)) = named {
        let entry = match &outcome {
            Ok((_, Installed::Unchanged { .. })) => None,
            Ok((s, _)) => Some(history_entry(&file, s.version.clone(), "ok", None, by, restores)),
            Err(msg) => Some(history_entry(&file, version, "error", Some(msg.clone()), by, restores)),
        };
        if let Some(entry) = entry {
            let h = History::new(&shared.ctl.cfg.data_dir);
            if let Err(e) = h.record(&name, entry) {
                warn!("recording policy {name} in its history ({}): {e}", h.dir().display());
            }
        }
    }
    outcome
}

/// The `name` of a policy text that did not pass its check, if it can be read.
fn name_in(text: &str) -> Option<String> {
    let t: toml::Table = toml::from_str(text).ok()?;
    t.get("name")?.as_str().filter(|n| valid_name(n)).map(str::to_string)
}

fn history_entry(file: &PolicyText, version: String, result: &str, error: Option<String>, by: Option<(u32, u32)>, restores: Option<u64>) -> Entry {
    Entry {
        number: 0,
        version,
        time: crate::output::event::rfc3339(std::time::SystemTime::now()),
        source: file.source.clone(),
        requested_by_uid: by.map(|b| b.0),
        result: result.into(),
        error,
        restores,
        text: file.text.clone(),
    }
}

fn install_and_report(
    shared: &Shared,
    file: &PolicyText,
    parsed: Result<policy::Policy, String>,
    by: Option<(u32, u32)>,
) -> Result<(crate::kernel::rules::PolicySummary, Installed), String> {
    let file = file.clone();
    let mut e = shared.base_event(crate::output::event::Kind::PolicyReload, None);
    let outcome = parsed.and_then(|p| {
        let (name, version) = (p.name.clone(), p.version.clone());
        e.policy = Some(name.clone());
        e.policy_version = Some(version);
        let mut store_guard = shared.own();
        check_before_reload(&mut store_guard, &p)?;
        let store = &mut store_guard.policies;
        let installed = store.install(p, file.text.clone())?;
        let summary = store.summary(installed.slot()).expect("installed");
        Ok((summary, installed))
    });
    e.detail = match &outcome {
        Ok((_, installed)) => Detail::PolicyReload {
            result: installed.result(),
            previous_version: match installed {
                Installed::Replaced { previous, .. } => Some(previous.clone()),
                _ => None,
            },
            source: file.source.clone(),
            error: None,
            requested_by_uid: by.map(|b| b.0),
            requested_by_pid: by.map(|b| b.1),
        },
        Err(msg) => Detail::PolicyReload {
            result: "error",
            previous_version: None,
            source: file.source.clone(),
            error: Some(msg.clone()),
            requested_by_uid: by.map(|b| b.0),
            requested_by_pid: by.map(|b| b.1),
        },
    };
    if let Err(msg) = &outcome {
        warn!("policy {} not applied: {msg}", file.source);
    } else if let Ok((s, i)) = &outcome {
        if !matches!(i, Installed::Unchanged { .. }) {
            info!("policy {} {} loaded from {}", s.name, s.version, file.source);
            let ruleset = shared.own().policies.by_slot(s.slot).map_or(0, |x| x.ruleset);
            let rec = PolicyRecord { slot: s.slot, ruleset, source: file.source.clone(), text: file.text.clone() };
            if let Err(e) = shared.state.save_policy(&rec) {
                warn!("recording policy {} in {}: {e} (a restarted daemon will not know its text)", s.name, shared.state.dir().display());
            }
        }
    }
    shared.emit(e);
    outcome
}

/// `run --policy FILE`: the file's policy is loaded if its name is new, reused if the same
/// version is loaded, and refused if another version of it is in force (that is a reload,
/// which `policy apply` does for every run of the policy).
pub(crate) fn install_for_run(shared: &Shared, file: PolicyText, by: (u32, u32)) -> Result<crate::kernel::rules::PolicySummary, String> {
    let p = check(&file)?;
    {
        let store_guard = shared.own();
        let store = &store_guard.policies;
        if let Some(loaded) = store.slot_of(&p.name).and_then(|slot| store.summary(slot)) {
            if loaded.version != p.version {
                return Err(format!(
                    "{}: policy {:?} is loaded with version {}, this file is version {}; \
                     use `agent-guard policy apply {}` to replace it for every run",
                    file.source, p.name, loaded.version, p.version, file.source
                ));
            }
            return Ok(loaded);
        }
    }
    apply_checked(shared, file, Ok(p), Some(by)).map(|(s, _)| s)
}

/// Loads every `*.toml` in policy_dir. A broken file is reported (log and event) and skipped:
/// its policy is not loaded, so runs cannot be started under it.
pub(crate) fn load_policy_dir(shared: &Shared) {
    let dir = &shared.policy_dir;
    let entries = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!("policy_dir {} does not exist: no policies loaded from it", dir.display());
            return;
        }
        Err(e) => {
            warn!("policy_dir {}: {e}", dir.display());
            return;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for path in files {
        let source = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                warn!("policy {source}: {e}");
                continue;
            }
        };
        let file = PolicyText { source, text };
        let parsed = check(&file);
        if let Ok(p) = &parsed {
            if let Some(first) = seen.insert(p.name.clone(), path.clone()) {
                warn!("policy {}: name {:?} is already used by {}; skipped", file.source, p.name, first.display());
                continue;
            }
        }
        let _ = apply_checked(shared, file, parsed, None);
    }
}

/// The host-wide hooks as the runs in the kernel need them now (no bound cgroup): the syscall
/// tracepoints while any run exists, the syscall check while one needs it (see
/// `kernel::ondemand`: a run whose launcher's seccomp filter refuses all its policy asks does
/// not).
pub(crate) fn settle_hooks(own: &mut Owned) -> Result<(), String> {
    let entries: Vec<(u64, RunEntry)> = own.runs.map.iter().flatten().collect();
    own.binder.covered.retain(|c| entries.iter().any(|(id, _)| *id == c));
    let policies = &own.policies;
    let key_of = |slot| policies.by_slot(slot).and_then(|s| crate::runs::seccomp::cover_key(&s.policy));
    let needs = crate::kernel::ondemand::any_needs(&own.binder.covered, &entries, key_of);
    own.binder.hooks(!entries.is_empty(), needs)
}

/// Before a reload of the policy named `name` to `new` is published: when a run whose seccomp
/// filter stood in for the syscall check would no longer be covered by it, the check is
/// attached first (Err: it could not be, and the reload must not happen).
fn check_before_reload(own: &mut Owned, new: &policy::Policy) -> Result<(), String> {
    let Some(slot) = own.policies.slot_of(&new.name) else { return Ok(()) };
    if own.binder.syscall_hook_attached() {
        return Ok(());
    }
    let entries: Vec<(u64, RunEntry)> = own.runs.map.iter().flatten().collect();
    let key = crate::runs::seccomp::cover_key(new);
    if own.binder.covered.uncovered_by(&entries, slot, key.as_ref()) {
        own.binder.hooks(true, true).map_err(|e| format!("cannot attach the syscall check the new version needs: {e}"))?;
    }
    Ok(())
}

/// Brings `[bind] cgroups` bindings up to date and reports each change as a run start/end.
pub(crate) fn rebind(shared: &Shared) {
    let globs: Vec<(u32, globset::GlobSet)> = {
        let store_guard = shared.own();
        let store = &store_guard.policies;
        store
            .list()
            .iter()
            .filter_map(|p| {
                let slot = store.by_slot(p.slot)?;
                (!slot.policy.bind_cgroups.is_empty()).then(|| (p.slot, slot.policy.bind_matcher()))
            })
            .collect()
    };
    let mut guard = shared.own();
    let own = &mut *guard;
    if shared.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if globs.is_empty() && own.binder.bound.is_empty() {
        if let Err(e) = settle_hooks(own) {
            warn!("kernel hooks: {e}");
        }
        return;
    }
    let binder = &mut own.binder;
    if let Err(e) = binder.hooks(true, true) {
        warn!("cannot attach the kernel hooks; cgroups are not bound: {e}");
        return;
    }
    let current = binder.bound.iter().map(|(id, b)| (*id, (b.dir.clone(), b.slot))).collect();
    let desired = crate::runs::bind::scan(&shared.mount, &shared.root, &globs, &current);
    let changes = binder.apply(desired);
    drop(guard);
    for msg in &changes.errors {
        warn!("{msg}");
    }
    for (id, dir, slot) in changes.removed {
        let info = {
            let mut runs_own = shared.own();
            let runs = &mut runs_own.runs;
            runs.by_cgroup.get_mut(&id).map(|r| {
                r.ended = Some(Instant::now());
                r.clone()
            })
        };
        forget_run(shared, id);
        if let Some(info) = info {
            info!("unbound {} (policy slot {slot})", dir.display());
            let mut e = shared.base_event(crate::output::event::Kind::RunEnd, Some(&info));
            e.detail = Detail::RunEnd { exit_status: None };
            shared.emit(e);
        }
    }
    for (id, dir, slot) in changes.added {
        let rel = shared.rel(&dir);
        let info = bound_run_info(shared, id, &dir, slot);
        shared.own().runs.by_cgroup.insert(id, info.clone());
        info!("bound {rel} to policy slot {slot}");
        let mut e = shared.base_event(crate::output::event::Kind::RunStart, Some(&info));
        e.detail = Detail::RunStart { requested_by_uid: 0, requested_by_pid: std::process::id(), argv: vec![] };
        shared.emit(e);
    }
}

