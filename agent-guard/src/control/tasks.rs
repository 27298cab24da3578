//! The task socket: where a process inside a run starts, joins and ends tasks of its own run
//! (`agent-guard task`). Every run may connect to it (the daemon adds it to every policy's
//! `[network] unix`); a peer outside every run is refused. The run a request is about is the
//! peer's own, found from the peer's cgroup: a request cannot name another run, and a task
//! policy can only narrow the policy the peer is under (see `runs::task`).
use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{io::BufReader, net::{UnixListener, UnixStream}};
use tracing::{info, warn};

use crate::{
    control::{self, incident, lines::RequestLines, Request, Response},
    daemon::core::Shared,
    runs::task::{self, Asker},
};

/// Connections served at once on the task socket: a pool of its own, so that runs can never
/// take the control socket's (incident response must always get through).
const TASK_CONNECTIONS: usize = 64;
static SLOTS: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(TASK_CONNECTIONS)));
/// A task socket connection with no request for this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// Longest request line on the task socket (a task policy file's text fits).
const MAX_TASK_LINE: usize = 1 << 20;

/// Binds the task socket (mode 0666: who may use it is decided per peer).
pub(crate) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale {}", path.display()))
        }
        _ => {}
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding task_socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

pub(crate) async fn accept(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match SLOTS.clone().try_acquire_owned() {
                Ok(permit) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        client(shared, stream).await;
                        drop(permit);
                    });
                }
                Err(_) => info!("task socket: {TASK_CONNECTIONS} connections already: one more refused"),
            },
            Err(e) => {
                warn!("task socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn client(shared: Arc<Shared>, stream: UnixStream) {
    let Ok(cred) = stream.peer_cred() else { return };
    let pid = cred.pid().unwrap_or(0).max(0) as u32;
    let (rd, mut wr) = stream.into_split();
    let here = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || task::locate(&shared, pid)).await.ok().flatten()
    };
    let Some((run_cgroup, in_task)) = here else {
        let why = "the task socket is for processes inside runs; from outside use the control socket (`agent-guard task --run RUN`)";
        let _ = incident::write_response(&mut wr, &Response::err(why)).await;
        return;
    };
    let _ = (run_cgroup, in_task);
    let mut lines = RequestLines::new(BufReader::new(rd), MAX_TASK_LINE);
    loop {
        // An idle connection is closed: a run must not hold the socket's slots.
        let line = match tokio::time::timeout(IDLE, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            _ => return,
        };
        let shared = shared.clone();
        let resp = tokio::task::spawn_blocking(move || match control::parse_request(&line) {
            // Where the peer is now, for every request: a process that joined a task since it
            // connected asks as that task's process.
            Ok(req) => match task::locate(&shared, pid) {
                Some((run_cgroup, task)) => handle(&shared, &Asker::InRun { run_cgroup, task, pid }, req),
                None => Response::err("the caller is no longer in a run"),
            },
            Err(e) => Response::err(e),
        })
        .await
        .unwrap_or_else(|e| Response::err(format!("internal error: {e}")));
        if incident::write_response(&mut wr, &resp).await.is_err() {
            return;
        }
    }
}

/// What a process in a run may ask on the task socket; everything else is refused.
fn handle(shared: &Shared, asker: &Asker, req: Request) -> Response {
    let Asker::InRun { run_cgroup, .. } = asker else { return Response::err("internal: not a run's peer") };
    let run = shared.own().runs.by_cgroup.get(run_cgroup).filter(|r| r.ended.is_none()).cloned();
    let Some(run) = run else { return Response::err("the caller's run has ended") };
    match req {
        Request::Ping => Response::ok(),
        Request::TaskStart { run: named, id, labels, policy, policy_file, argv: _ } => {
            if named.as_ref().is_some_and(|n| *n != run.id && run.name.as_ref() != Some(n)) {
                return Response::err(format!("a process of run {} may start tasks of its own run only", run.id));
            }
            let r = task::start(shared, asker, &run, id, labels, policy, policy_file);
            // A task whose policy has name rules resolves through its own forwarder.
            crate::daemon::dns::reconcile(shared, &shared.own());
            r
        }
        Request::TaskJoin { task: t, pid } => task::join(shared, asker, &t, pid),
        Request::TaskEnd { task: t, .. } => task::end(shared, asker, &t),
        Request::Freeze { run: t } | Request::Thaw { run: t } | Request::Kill { run: t } => {
            // Only tasks of its own run, never the run itself.
            match task::find(shared, asker, &t) {
                Ok(_) => Response::err("freezing or killing a task from inside its run is not supported yet: end its command"),
                Err(e) => Response::err(e),
            }
        }
        other => Response::err(format!("{} is not for the task socket", request_name(&other))),
    }
}

fn request_name(r: &Request) -> String {
    serde_json::to_value(r).ok().and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_string)).unwrap_or_else(|| "this request".into())
}
