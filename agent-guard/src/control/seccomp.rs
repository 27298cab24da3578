//! The daemon's side of the seccomp filter of launched runs (see `runs::seccomp`): marking a
//! run whose processes carry it, and the event of each syscall it refused. Both requests are
//! accepted only on the connection that registered the run, for that run: `run` is the only
//! client that knows what its filter did.
use std::collections::HashMap;

use agent_guard_common::{Kind, Rule, Verdict, RUN_SECCOMP};

use crate::{
    control::{Request, Response},
    daemon::core::Shared,
    output::event::{errno_name, Detail},
    runs::seccomp::Refusal,
};

/// `seccomp` and `seccomp_refusal`; `registered`: the run this connection registered.
pub(crate) fn handle(shared: &Shared, req: Request, registered: Option<&str>) -> Response {
    let run = match &req {
        Request::Seccomp { run } | Request::SeccompRefusal { run, .. } => run.clone(),
        _ => return Response::err("unexpected request"),
    };
    if registered != Some(run.as_str()) {
        return Response::err(format!("run {run} was not registered on this connection"));
    }
    let mut own = shared.own();
    let runs = &mut own.runs;
    let Some(info) = runs.by_cgroup.values().find(|r| r.id == run && r.ended.is_none() && r.dir.starts_with(&shared.root)).cloned()
    else {
        return Response::err(format!("no active run {run}"));
    };
    match req {
        Request::Seccomp { .. } => {
            let mut entry = match runs.map.get(&info.cgroup_id, 0) {
                Ok(e) => e,
                Err(e) => return Response::err(format!("kernel run map: {e}")),
            };
            entry.flags |= RUN_SECCOMP;
            if let Err(e) = runs.map.insert(info.cgroup_id, entry, 0) {
                return Response::err(format!("kernel run map: {e}"));
            }
            // The filter the run was offered is in place (its command has not started): the
            // syscall check goes when no other run needs it (kernel::ondemand).
            if own.binder.covered.in_place(info.cgroup_id) {
                if let Err(e) = crate::daemon::reload::settle_hooks(&mut own) {
                    tracing::warn!("kernel hooks: {e}");
                }
            }
            Response::ok()
        }
        Request::SeccompRefusal { refusal, .. } => {
            drop(own);
            let kind = match (refusal.rule, refusal.socket) {
                (Rule::Syscalls | Rule::Unseen | Rule::SelfProtection, _) => Kind::Syscall,
                (Rule::Families, Some(_)) => Kind::Socket,
                (rule, _) => return Response::err(format!("the seccomp filter does not refuse by rule {rule}")),
            };
            let rule = refusal.rule;
            let mut e = shared.base_event(kind, Some(&info));
            e.verdict = Verdict::Deny;
            e.rule = Some(rule);
            e.layer = Some("seccomp");
            e.pid = Some(refusal.pid);
            let mut procs = HashMap::new();
            if let Some(c) = &refusal.process {
                (e.tgid, e.ppid, e.uid, e.gid) = (Some(c.tgid), Some(c.ppid), Some(c.uid), Some(c.gid));
                e.comm = Some(c.comm.clone());
                e.exe = c.exe.clone();
                // The caller may be gone by now; its parents usually are not.
                let exe = c.exe.clone().unwrap_or_default();
                procs.insert(c.tgid, crate::runs::evidence::Proc { ppid: c.ppid, exe, argv: c.argv.clone() });
            }
            let (tgid, ppid) = e.tgid.zip(e.ppid).unwrap_or((refusal.pid, 0));
            e.ancestry = Some(crate::runs::evidence::lineage(tgid, ppid, &procs, &shared.mount, &info.dir));
            let Refusal { syscall, nr, arg0, path, errno, socket, .. } = refusal;
            e.detail = match socket {
                Some([family, sock_type, protocol]) if kind == Kind::Socket => {
                    // The type without SOCK_NONBLOCK/SOCK_CLOEXEC, as the kernel programs report it.
                    let mut d = Detail::socket_family(family, sock_type & 0xf, protocol);
                    if let Detail::SocketFamily { error, .. } = &mut d {
                        *error = errno_name(-errno);
                    }
                    d
                }
                _ => Detail::Syscall { name: syscall, nr, arg0, path, error: errno_name(-errno) },
            };
            shared.emit(e);
            Response::ok()
        }
        _ => Response::err("unexpected request"),
    }
}
