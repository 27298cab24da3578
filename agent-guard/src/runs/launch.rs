//! `agent-guard run`: a command in its own cgroup below the managed root, registered with the
//! daemon before its first instruction.
use std::{
    collections::BTreeMap,
    ffi::CString,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{config::Config, control, runs::{cgroup, landlock, privileges, seccomp, session}};

/// Exit status when agent-guard itself fails before the command runs (as env(1) and
/// docker do: 125 for our own errors, 126 not executable, 127 not found).
pub const EXIT_SETUP_FAILED: i32 = 125;

/// The environment variable that tells a run's processes where the task socket is
/// (`agent-guard task` inside the run reads no configuration file).
pub const TASK_SOCKET_ENV: &str = "AGENT_GUARD_TASK_SOCKET";

pub struct RunArgs {
    /// A loaded policy's name, or a policy file (a path: contains '/' or ends in .toml).
    pub policy: Option<String>,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `--user USER[:GROUP]`.
    pub user: Option<String>,
    pub argv: Vec<String>,
}

/// Parses `K=V` as given to --label.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("label {s:?} is not K=V"))?;
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b)) {
        return Err(format!("label key {k:?} must be non-empty and use only letters, digits, _ . - /"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn new_run_id() -> String {
    format!("r-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Runs the command and returns the exit status `agent-guard run` should exit with.
pub fn run(cfg: &Config, args: RunArgs) -> Result<i32> {
    if args.argv.is_empty() {
        bail!("no command given: agent-guard run [OPTIONS] -- CMD [ARG]...");
    }
    // Before anything is registered: a run that cannot get its terminal does not start.
    let session = session::Session::prepare().context("creating a terminal for the run")?;
    let (policy, policy_file) = match &args.policy {
        None => (None, None),
        Some(p) if p.contains('/') || p.ends_with(".toml") => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading policy file {p}"))?;
            (None, Some(control::PolicyText { source: p.clone(), text }))
        }
        Some(name) => (Some(name.clone()), None),
    };
    let pong = control::call(&cfg.control_socket, control::Request::Ping)?;
    let root = PathBuf::from(pong.cgroup_root.context("daemon did not report its cgroup root")?);
    let (id, dir) = create_run_cgroup(&root)?;
    // Registered on a connection of its own: the run's seccomp refusals are reported on it.
    let mut client = control::Client::new(&cfg.control_socket);
    let registered = client.call(
        control::Request::Register {
            run: id.clone(),
            name: args.name.clone(),
            labels: args.labels.clone(),
            argv: args.argv.clone(),
            policy,
            policy_file,
        },
    );
    let registered = match registered {
        Ok(r) => r,
        Err(e) => {
            let _ = cgroup::remove_tree(&dir);
            return Err(e.into());
        }
    };
    // What the command keeps of privileges, and whom it runs as (names resolved before the
    // fork). A run that cannot drop what it must does not start.
    let process = registered.process.clone().unwrap_or_default();
    let privileges = match identity(args.user.as_deref(), process.user.as_deref()) {
        Ok(id) => privileges::Privileges::new(&process, id),
        Err(e) => {
            let _ = cgroup::remove_tree(&dir);
            let _ = control::call(&cfg.control_socket, control::Request::End { run: id.clone(), exit_status: None });
            return Err(e);
        }
    };
    // Built before the fork, from the plan the daemon made of the policy: opening the
    // policy's paths is not async-signal-safe.
    let layer = if cfg.landlock { landlock::prepare(registered.landlock.as_ref()) } else { Default::default() };
    for w in &layer.warnings {
        eprintln!("agent-guard: {w}");
    }
    if let Some(coverage) = &layer.coverage {
        // The daemon names the layer in events and in `status` (what it covers follows from
        // its plan and the ABI); without it the layer still applies, only events of
        // operations it refuses say less.
        let applied = control::Request::Landlock { run: id.clone(), abi: coverage.abi };
        if let Err(e) = control::call(&cfg.control_socket, applied) {
            eprintln!("agent-guard: telling the daemon about the run's Landlock layer: {e}");
        }
    }
    // `[limits] processes`: a run that cannot get its cap does not start.
    let pids = match process.pids_max.map(|max| crate::runs::pids::setup(&dir, max)).transpose() {
        Ok(p) => p,
        Err(e) => {
            let _ = cgroup::remove_tree(&dir);
            let _ = control::call(&cfg.control_socket, control::Request::End { run: id.clone(), exit_status: None });
            bail!("[limits] processes: {e}");
        }
    };
    let landlock_writes = layer.coverage.as_ref().is_some_and(|c| c.files_write);
    let (notifier, filter) = seccomp_for(cfg, registered.seccomp.as_ref(), landlock_writes, client, &id);
    let join = pids.as_ref().and_then(|p| p.join.clone());
    let spawned = spawn_in(&dir, join.as_deref(), &args.argv, layer.layer, filter, session, privileges, &cfg.task_socket);
    // The run is over when its command is: whatever it left behind goes with the cgroup.
    if let Err(e) = cgroup::kill_and_remove(&dir, Duration::from_secs(10)) {
        eprintln!("agent-guard: cleaning up run cgroup {}: {e}", dir.display());
    }
    drop(pids);
    let status = spawned.map(|(code, running)| {
        if let Some(r) = running {
            r.finish();
        }
        code
    });
    // Every refusal reported before the run ends.
    if let Some(n) = notifier {
        n.finish();
    }
    let exit_status = status.as_ref().ok().copied();
    match control::call(&cfg.control_socket, control::Request::End { run: id.clone(), exit_status }) {
        Ok(r) => {
            if let Some(v) = r.violations.filter(|v| v.total > 0) {
                eprintln!("{}", v.line(&id));
            }
        }
        Err(e) => eprintln!("agent-guard: telling the daemon the run ended: {e}"),
    }
    status
}

/// The run's seccomp filter (see `runs::seccomp`), if its policy gets one: the thread that
/// answers and reports its refusals on `client` (the connection that registered the run), and
/// the child's side. If that cannot start, the run goes on without the filter (the eBPF layer
/// kills what it would refuse).
fn seccomp_for(
    cfg: &Config,
    plan: Option<&seccomp::SeccompPlan>,
    landlock_writes: bool,
    mut client: control::Client,
    run: &str,
) -> (Option<seccomp::Notifier>, Option<seccomp::ChildSide>) {
    if !cfg.seccomp {
        return (None, None);
    }
    let Some(plan) = plan else { return (None, None) };
    if plan.monitor {
        // Nothing is refused in monitor mode; what enforce mode would leave to the Landlock
        // layer (hard links inside write trees) is not reported as would_deny either.
        if cfg.landlock && plan.links_judgeable && landlock::host_abi() >= 2 {
            if let Err(e) = client.call(control::Request::Seccomp { run: run.to_string() }) {
                eprintln!("agent-guard: telling the daemon about the run's hard links: {e}");
            }
        }
        return (None, None);
    }
    let prepared = plan.filter(landlock_writes);
    for w in &prepared.warnings {
        eprintln!("agent-guard: warning: {w}");
    }
    let Some(filter) = prepared.filter else { return (None, None) };
    // The connection is shared: the mark below goes after the listener started, refusals
    // come later on the same connection (the daemon accepts both only there).
    let client = std::sync::Arc::new(std::sync::Mutex::new(client));
    let reporter = client.clone();
    let run = run.to_string();
    let marked = run.clone();
    let (mut gone, mut warned) = (false, false);
    let report = move |refusal| {
        if gone {
            return;
        }
        let mut client = reporter.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = client.call(control::Request::SeccompRefusal { run: run.clone(), refusal }) {
            // Once the daemon is gone (or this connection is), later refusals are not reported:
            // a hung daemon must not hold up the run's answers.
            gone = !matches!(e, control::ClientError::Refused(_));
            if !std::mem::replace(&mut warned, true) {
                eprintln!("agent-guard: reporting a syscall the seccomp filter refused: {e} (the process got its errno)");
            }
        }
    };
    match seccomp::Notifier::start(filter, report) {
        Ok((n, child)) => {
            // Only once the filter will be installed (the child refuses to start without
            // it): the daemon may then detach the host-wide syscall check if no other run
            // needs it (kernel::ondemand). Without the mark the check stays, and kills
            // link/linkat, which the filter lets through to the Landlock layer.
            let mut client = client.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = client.call(control::Request::Seccomp { run: marked }) {
                eprintln!("agent-guard: telling the daemon about the run's seccomp filter: {e}");
            }
            (Some(n), Some(child))
        }
        Err(e) => {
            eprintln!("agent-guard: warning: cannot start the seccomp listener: {e}: no seccomp filter; the eBPF layer kills what it would refuse");
            (None, None)
        }
    }
}

fn create_run_cgroup(root: &Path) -> Result<(String, PathBuf)> {
    for _ in 0..16 {
        let id = new_run_id();
        let dir = root.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating run cgroup {}", dir.display())),
        }
    }
    bail!("could not find a free run id below {}", root.display())
}

/// Starts argv with the child moving itself into `dir` between fork and exec, so the command
/// is inside the run from its first instruction, then (after that move, which is itself a file
/// write) restricting itself with the Landlock `layer`, if any, and last installing the
/// seccomp `filter`, if any. Returns the shell-style exit status.
fn spawn_in(
    dir: &Path,
    pids_procs: Option<&Path>,
    argv: &[String],
    layer: Option<landlock::Layer>,
    filter: Option<seccomp::ChildSide>,
    session: session::Session,
    privileges: privileges::Privileges,
    task_socket: &Path,
) -> Result<(i32, Option<session::Running>)> {
    let procs = CString::new(dir.join("cgroup.procs").into_os_string().into_encoded_bytes())
        .context("cgroup path contains NUL")?;
    let pids_procs = pids_procs
        .map(|p| CString::new(p.as_os_str().as_encoded_bytes().to_vec()))
        .transpose()
        .context("cgroup path contains NUL")?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env(TASK_SOCKET_ENV, task_socket);
    let child_session = session.child();
    // SAFETY: the closure only calls async-signal-safe libc functions on data prepared above.
    unsafe {
        cmd.pre_exec(move || {
            // First a session (and terminal) of its own: nothing of the run shares the
            // launcher's.
            child_session.enter()?;
            if let Some(p) = &pids_procs {
                // The v1 pids cgroup of `[limits] processes` (runs::pids): joined before the run,
                // whose programs refuse a write to the cgroup filesystem from inside it.
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            if let Some(layer) = &layer {
                // The parent applied the same ruleset to a thread of its own already, so this
                // does not fail in practice; if it does, the command does not run unprotected.
                if let Err(e) = layer.apply() {
                    let msg = b"agent-guard: applying the Landlock layer failed\n";
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                    return Err(e);
                }
            }
            // The identity, capabilities and no_new_privs: after the Landlock layer (whose
            // ruleset was prepared with them), before the filter.
            if let Err(e) = privileges.apply() {
                let msg = b"agent-guard: dropping privileges failed\n";
                libc::write(2, msg.as_ptr().cast(), msg.len());
                return Err(e);
            }
            if let Some(filter) = &filter {
                // Last: from here on every syscall of the child passes the filter.
                if let Err(e) = filter.install() {
                    let msg = b"agent-guard: installing the seccomp filter failed\n";
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                    return Err(e);
                }
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // Our copy of the child's end of the seccomp socket goes with the command.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        // `agent-guard kill` between the registration and the move into the cgroup removed
        // the cgroup: the command never started, and the run ends as killed.
        Err(_) if !dir.exists() => {
            eprintln!("agent-guard: the run was killed before {} started", argv[0]);
            return Ok((128 + libc::SIGKILL, None));
        }
        Err(e) => {
            eprintln!("agent-guard: cannot run {}: {e}", argv[0]);
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => EXIT_SETUP_FAILED,
            };
            return Ok((code, None));
        }
    };
    CHILD.store(child.id() as i32, Ordering::Relaxed);
    let running = session.start();
    // SAFETY: installing handlers that only call kill(2). The command is in a session of its
    // own, so the launcher's terminal no longer signals it: what reaches the launcher is
    // passed on (with a terminal of its own, ^C reaches it as a byte through that terminal).
    unsafe {
        for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
            libc::signal(sig, forward as *const () as libc::sighandler_t);
        }
    }
    let status = child.wait().context("waiting for the command")?;
    Ok((status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)), Some(running)))
}

/// Whom the command runs as: `--user`, else the policy's `[process] user`, else the caller
/// (None). Both given and different: refused (the policy names whom its runs run as).
fn identity(cli: Option<&str>, policy: Option<&str>) -> Result<Option<privileges::Identity>> {
    let spec = match (cli, policy) {
        (Some(c), Some(p)) if c != p => {
            bail!("--user {c}: the run's policy runs its commands as {p} ([process] user)")
        }
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => return Ok(None),
    };
    let id = privileges::resolve(spec)?;
    let me = nix::unistd::geteuid().as_raw();
    if me != 0 && id.uid != me {
        bail!("--user {spec}: only root may run a command as another user");
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_bad_ones_say_why() {
        assert_eq!(parse_label("task=T-42").unwrap(), ("task".into(), "T-42".into()));
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_label("novalue").unwrap_err().contains("K=V"));
        assert!(parse_label("=v").unwrap_err().contains("non-empty"));
        assert!(parse_label("sp ace=v").is_err());
    }

    #[test]
    fn run_ids_look_like_the_contract() {
        let id = new_run_id();
        assert!(id.starts_with("r-") && id.len() == 8, "{id}");
    }
}
