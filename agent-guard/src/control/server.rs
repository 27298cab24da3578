//! The daemon's control-socket server: accepts clients, checks the peer once, dispatches
//! requests.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use agent_guard_common::{RunEntry, NO_POLICY};
use tokio::{
    io::BufReader,
    net::{UnixListener, UnixStream},
    sync::OwnedSemaphorePermit,
};
use tracing::{info, warn};
use crate::{control::peer as access, runs::cgroup, control::{self, Request, Response}, runs::respond::Action, output::event::Detail};
use crate::runs::hold::{answer, forget_run, Answer};
use crate::daemon::core::*;
use crate::control::incident;
use crate::control::lines::{LineError, RequestLines};
use crate::daemon::reload::{apply, install_for_run, rebind};
use crate::runs::landlock;

pub(crate) async fn accept(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match shared.ctl.connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(handle_client(shared.clone(), stream, permit));
                }
                Err(_) => {
                    let max = shared.ctl.cfg.control_max_connections;
                    info!("control socket: {max} connections already (control_max_connections): one more refused");
                    tokio::spawn(refuse(
                        stream,
                        format!("too many control connections (control_max_connections = {max}); try again later"),
                    ));
                }
            },
            Err(e) => {
                warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers `why` once and closes: nothing the peer sends is read.
async fn refuse(stream: UnixStream, why: String) {
    let (_rd, mut wr) = stream.into_split();
    let _ = tokio::time::timeout(Duration::from_secs(5), incident::write_response(&mut wr, &Response::err(why))).await;
}

/// One control connection, holding one of the `control_max_connections` permits.
pub(crate) async fn handle_client(shared: Arc<Shared>, stream: UnixStream, _permit: OwnedSemaphorePermit) {
    let Ok(cred) = stream.peer_cred() else { return };
    let peer = access::Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid().unwrap_or(0).max(0) as u32 };
    let (uid, pid) = (peer.uid, peer.pid);
    // Checked once, when the peer connects (see `access`). A refused peer is answered once
    // and its requests are never read.
    let caller = match incident::admit(&shared, peer) {
        Ok(role) => access::Caller { uid, pid, role },
        Err(why) => {
            info!("control socket: refused uid {uid} pid {pid}: {why}");
            return refuse(stream, why).await;
        }
    };
    let (rd, mut wr) = stream.into_split();
    let mut lines = RequestLines::new(BufReader::new(rd), control::MAX_LINE);
    // The run this connection registered: only it may report that run's seccomp refusals.
    let mut registered: Option<String> = None;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(LineError::Io) => return,
            Err(LineError::TooLong) => {
                info!("control socket: uid {uid} pid {pid} sent a request longer than {} bytes: connection closed", control::MAX_LINE);
                let why = format!("request longer than {} bytes: refused, connection closed", control::MAX_LINE);
                let _ = incident::write_response(&mut wr, &Response::err(why)).await;
                // The refused line's buffer (up to MAX_LINE) is freed; hand the freed heap back
                // to the kernel too, so a flood of such lines leaves no resident trace.
                // SAFETY: malloc_trim only releases free memory at the top of the heaps.
                unsafe { libc::malloc_trim(0) };
                return;
            }
        };
        let req = control::parse_request(&line).and_then(|req| incident::authorize(&shared, &caller, &req).map(|()| req));
        let resp = match req {
            Ok(Request::Events { run, follow, json, violations, since, tail }) => {
                let filter = incident::EventFilter { violations, since, tail };
                incident::stream_events(shared.clone(), caller, run, follow, json, filter, lines, wr).await;
                return;
            }
            Ok(Request::Ps) => incident::ps(&shared, &caller),
            Ok(Request::Status) => incident::status(&shared, &caller),
            Ok(Request::Checkpoint) => {
                let (done, signed) = tokio::sync::oneshot::channel();
                let sent = shared.log_writer.send(crate::output::sink::WriterCmd::Checkpoint(Some(done))).is_ok();
                match tokio::time::timeout(std::time::Duration::from_secs(10), signed).await {
                    Ok(Ok(Some(seq))) if sent => Response { result: Some(seq.to_string()), ..Response::ok() },
                    _ => Response::err("the log writer did not write a checkpoint (see the daemon's log)"),
                }
            }
            Ok(req @ (Request::Freeze { .. } | Request::Thaw { .. } | Request::Kill { .. })) => {
                // Waits for the kernel: off the async workers.
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || {
                    let (action, run) = match req {
                        Request::Freeze { run } => (Action::Freeze, run),
                        Request::Thaw { run } => (Action::Thaw, run),
                        Request::Kill { run } => (Action::Kill, run),
                        _ => return Response::err("unexpected request"),
                    };
                    incident::act(shared, action, &run, caller)
                })
                .await
                .unwrap_or_else(|e| Response::err(format!("internal error: {e}")))
            }
            Ok(req @ (Request::Approve { .. } | Request::Deny { .. } | Request::End { .. })) => {
                // Thawing waits for the kernel: off the async workers too.
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || handle(&shared, req, uid, pid))
                    .await
                    .unwrap_or_else(|e| Response::err(format!("internal error: {e}")))
            }
            Ok(req @ (Request::Seccomp { .. } | Request::SeccompRefusal { .. })) => {
                crate::control::seccomp::handle(&shared, req, registered.as_deref())
            }
            Ok(req) => {
                let run = if let Request::Register { run, .. } = &req { Some(run.clone()) } else { None };
                let resp = handle(&shared, req, uid, pid);
                if resp.ok && run.is_some() {
                    registered = run;
                }
                resp
            }
            Err(msg) => Response::err(msg),
        };
        if incident::write_response(&mut wr, &resp).await.is_err() {
            return;
        }
    }
}

pub(crate) fn valid_run_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) fn handle(shared: &Shared, req: Request, uid: u32, pid: u32) -> Response {
    match req {
        Request::Ping => Response { cgroup_root: Some(shared.root.display().to_string()), ..Response::ok() },
        Request::Register { run, name, labels, argv, policy, policy_file } => {
            if !valid_run_id(&run) {
                return Response::err(format!("invalid run id {run:?}"));
            }
            let bound = match (policy, policy_file) {
                (Some(_), Some(_)) => return Response::err("give a policy name or a policy file, not both"),
                (None, None) => None,
                (Some(name), None) => {
                    let store_guard = shared.own();
                    let store = &store_guard.policies;
                    match store.slot_of(&name).and_then(|slot| store.summary(slot)) {
                        Some(summary) => Some(summary),
                        None => {
                            let loaded: Vec<_> = store.list().into_iter().map(|p| p.name).collect();
                            return Response::err(format!(
                                "no policy named {name:?} is loaded (loaded: {}); give a policy file or put it in {}",
                                if loaded.is_empty() { "none".to_string() } else { loaded.join(", ") },
                                shared.policy_dir.display()
                            ));
                        }
                    }
                }
                (None, Some(file)) => match install_for_run(shared, file, (uid, pid)) {
                    Ok(s) => Some(s),
                    Err(e) => return Response::err(e),
                },
            };
            // `run` builds its Landlock layer from this plan of the policy now bound.
            // `cover`: what the seccomp filter built from this plan refuses (kernel::ondemand).
            let (plan, seccomp, process, cover) = match &bound {
                Some(b) => {
                    let own = shared.own();
                    let slot = own.policies.by_slot(b.slot);
                    (
                        slot.and_then(|s| landlock::Plan::for_policy(&s.policy)).map(Arc::new),
                        slot.and_then(|s| crate::runs::seccomp::SeccompPlan::for_policy(&s.policy)),
                        slot.map(|s| crate::runs::privileges::ProcessPlan::for_policy(&s.policy)),
                        slot.and_then(|s| crate::runs::seccomp::cover_key(&s.policy)),
                    )
                }
                None => (None, None, None, None),
            };
            // Hard links of carve-outs inside write trees: the Landlock layer refuses them where
            // it refuses the carve-outs themselves (REFER: a link may not give a file more
            // access than it had), so the filter leaves link/linkat to it when every carve-out
            // is expressed.
            // (In monitor mode: as enforce mode would have it, so that what enforce mode leaves
            // to the Landlock layer is not reported as would_deny.)
            let mut seccomp = seccomp;
            if let (Some(s), Some(b)) = (seccomp.as_mut(), &bound) {
                let policy = shared.own().policies.by_slot(b.slot).map(|slot| slot.policy.clone());
                if let Some(policy) = policy {
                    let enforced = crate::policy::Policy { mode: crate::policy::Mode::Enforce, ..(*policy).clone() };
                    let split = match &plan {
                        Some(p) => Some(p.split.clone()),
                        None => landlock::Plan::for_policy(&enforced).map(|p| p.split),
                    };
                    let carved = crate::runs::seccomp::write_tree_carve_outs(&policy);
                    // Every carve-out that exists is refused up front (one that does not exist yet has
                    // no file to link; README, Known limits).
                    if split.is_some_and(|sp| carved.iter().all(|k| !sp.unexpressed.contains_key(k))) {
                        s.links_judgeable = true;
                    }
                }
            }
            let dir = shared.root.join(&run);
            let id = match cgroup::cgroup_id(&dir) {
                Ok(id) => id,
                Err(e) => return Response::err(format!("run cgroup {}: {e}", dir.display())),
            };
            let info = RunInfo {
                name,
                labels,
                policy: bound.as_ref().map(|p| p.slot),
                landlock_plan: plan.clone(),
                started_by: Some(uid),
                ..RunInfo::new(run.clone(), dir, id)
            };
            {
                // The syscall tracepoints (and for a policied run the syscall check) are
                // attached before the run's entry exists, and cannot be detached while we
                // hold the state.
                let mut own = shared.own();
                let own = &mut *own;
                if shared.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return Response::err("the daemon is stopping; run refused");
                }
                if let Err(e) = own.binder.hooks_for_new_run(bound.is_some()) {
                    return Response::err(format!("cannot attach the kernel hooks, run refused: {e}"));
                }
                let runs = &mut own.runs;
                if runs.by_cgroup.values().any(|r| r.id == run && r.ended.is_none()) {
                    return Response::err(format!("run {run} is already registered"));
                }
                let entry = RunEntry {
                    run_index: runs.next_index,
                    flags: 0,
                    policy: bound.as_ref().map_or(NO_POLICY, |p| p.slot),
                    _pad: 0,
                };
                // Recorded before the kernel entry: a daemon killed in between leaves a record
                // without an entry, which the next one drops, never an unnamed enforced run.
                if let Err(e) = shared.state.save_run(&info.record()) {
                    return Response::err(format!("recording the run in {}: {e}", shared.state.dir().display()));
                }
                if let Err(e) = runs.map.insert(id, entry, 0) {
                    shared.state.remove_run(&run);
                    return Response::err(format!("kernel run map: {e}"));
                }
                runs.next_index = runs.next_index.wrapping_add(1).max(1);
                runs.by_cgroup.insert(id, info.clone());
                // Needs the syscall check until its launcher says this filter is in place.
                own.binder.covered.offer(id, cover);
                // Name rules: the run's DNS forwarder exists before its first process does.
                crate::daemon::dns::reconcile(shared, own);
            }
            let mut e = shared.base_event(crate::output::event::Kind::RunStart, Some(&info));
            e.detail = Detail::RunStart { requested_by_uid: uid, requested_by_pid: pid, argv };
            shared.emit(e);
            Response { policy: bound, landlock: plan.map(Arc::unwrap_or_clone), seccomp, process, ..Response::ok() }
        }
        Request::PolicyApply { file } => {
            let source = file.source.clone();
            let applied = apply(shared, file, Some((uid, pid)));
            rebind(shared);
            crate::daemon::dns::reconcile(shared, &shared.own());
            match applied {
                Ok((summary, installed)) => Response {
                    result: Some(installed.result().into()),
                    policy: Some(summary),
                    ..Response::ok()
                },
                Err(e) => Response::err(format!("{source}: policy not applied, the previous one stays in force:\n{e}")),
            }
        }
        Request::PolicyList => {
            let store_guard = shared.own();
            let store = &store_guard.policies;
            Response { policies: Some(store.list()), ..Response::ok() }
        }
        Request::PolicyShow { name } => {
            let store_guard = shared.own();
            let store = &store_guard.policies;
            match (store.slot_of(&name).and_then(|slot| store.summary(slot)), store.get(&name)) {
                (Some(summary), Some(s)) => Response { policy: Some(summary), text: Some(s.text.clone()), ..Response::ok() },
                _ => Response::err(format!("no policy named {name:?} is loaded")),
            }
        }
        Request::PolicyHistory { name } => crate::daemon::rollback::history(shared, &name),
        Request::PolicyVersion { name, version } => crate::daemon::rollback::version(shared, &name, &version),
        Request::PolicyRollback { name, version } => crate::daemon::rollback::rollback(shared, &name, version.as_deref(), (uid, pid)),
        Request::TaskStart { run, id, labels, policy, policy_file, argv: _ } => {
            let run = run.unwrap_or_default();
            let info = shared.own().runs.by_cgroup.values().find(|r| r.ended.is_none() && (r.id == run || r.name.as_deref() == Some(&run))).cloned();
            let r = match info {
                Some(info) => crate::runs::task::start(shared, &crate::runs::task::Asker::Control { pid }, &info, id, labels, policy, policy_file),
                None => Response::err(format!("no active run {run:?}")),
            };
            crate::daemon::dns::reconcile(shared, &shared.own());
            r
        }
        Request::TaskJoin { task, pid: child } => crate::runs::task::join(shared, &crate::runs::task::Asker::Control { pid }, &task, child),
        Request::TaskEnd { task, .. } => crate::runs::task::end(shared, &crate::runs::task::Asker::Control { pid }, &task),
        Request::HoldShow { run } => match crate::runs::hold::show(shared, &run) {
            Ok(view) => Response { hold: Some(view), ..Response::ok() },
            Err(e) => Response::err(e),
        },
        Request::Approve { run, for_run, hold, attempts } => {
            let shown = hold.zip(attempts);
            match answer(shared, &run, None, Answer::Approve { for_run, shown }, Some((uid, pid))) {
                Ok(text) => Response { text: Some(text), ..Response::ok() },
                Err(e) => Response::err(e),
            }
        }
        Request::Deny { run, kill } => match answer(shared, &run, None, Answer::Deny { kill }, Some((uid, pid))) {
            Ok(text) => Response { text: Some(text), ..Response::ok() },
            Err(e) => Response::err(e),
        },
        Request::Freeze { .. }
        | Request::Thaw { .. }
        | Request::Kill { .. }
        | Request::Events { .. }
        | Request::Ps
        | Request::Status
        | Request::Checkpoint
        | Request::Seccomp { .. }
        | Request::SeccompRefusal { .. } => {
            Response::err("this request is handled by the connection, not here")
        }
        Request::Landlock { run, abi } => {
            let mut runs_own = shared.own();
            let runs = &mut runs_own.runs;
            let Some(info) = runs.by_cgroup.values_mut().find(|r| r.id == run && r.ended.is_none() && r.dir.starts_with(&shared.root)) else {
                return Response::err(format!("no active run {run}"));
            };
            let Some(plan) = &info.landlock_plan else {
                return Response::err(format!("run {run} was given no Landlock plan"));
            };
            if abi == 0 {
                return Response::err("Landlock ABI 0: no layer");
            }
            info.landlock = Some(plan.coverage(abi));
            if let Err(e) = shared.state.save_run(&info.record()) {
                warn!("recording run {run}'s Landlock layer in {}: {e}", shared.state.dir().display());
            }
            Response::ok()
        }
        Request::End { run, exit_status } => {
            let (info, forget) = {
                let mut runs_own = shared.own();
                let runs = &mut runs_own.runs;
                let Some(info) = runs.by_cgroup.values_mut().find(|r| r.id == run && r.ended.is_none()) else {
                    return Response::err(format!("no active run {run}"));
                };
                info.ended = Some(Instant::now());
                let info = info.clone();
                // Processes that survived the run's cleanup stay under its policy: the kernel
                // entry goes only once the cgroup is empty or gone.
                if matches!(cgroup::populated(&info.dir), Ok(true)) {
                    warn!("run {run} ended with processes still in {}; its policy stays on them", info.dir.display());
                    (info, false)
                } else {
                    let _ = runs.map.remove(&info.cgroup_id);
                    (info, true)
                }
            };
            forget_run(shared, info.cgroup_id);
            crate::runs::task::forget_run_tasks(shared, info.cgroup_id);
            let mut e = shared.base_event(crate::output::event::Kind::RunEnd, Some(&info));
            e.detail = Detail::RunEnd { exit_status };
            // Its record goes once the run_end is in the log (a daemon killed before that
            // writes it at its next start).
            e.forget_run = forget.then(|| info.id.clone());
            // run_end follows every record of the run still in the ring buffer; once it is
            // recorded, so are the run's violations, and the summary is complete.
            let (done, recorded) = std::sync::mpsc::sync_channel(1);
            if let Err(e) = shared.after_ring.send((e, Some(done))) {
                shared.emit(e.0 .0);
            } else if recorded.recv_timeout(std::time::Duration::from_secs(2)).is_err() {
                warn!("run {run}: run_end not recorded within 2 s; its violation summary may be short");
            }
            let violations = shared.ctl.tallies.lock().expect("tallies lock").remove(&info.id);
            Response { violations, ..Response::ok() }
        }
    }
}

