//! Enforcement that survives the daemon: programs, links and maps pinned under bpffs_dir,
//! re-adopted by a restarted daemon, removed only by `daemon --uninstall`.
//!
//! The processes that probe enforcement while the daemon is down are started by the test and
//! moved into the run's cgroup before they exec (as `agent-guard run` does), so they are
//! inside the run from their first instruction.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use agent_guard_tests::{layout, probe, probe_in, require_root, run_id, s, status, stdout, Daemon, Layout, PolicyFile};

/// Whether the process was killed by SIGKILL (the probes here are our direct children).
fn killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(libc::SIGKILL)
}

/// The probe reads `ws` and connects to `port` on loopback.
fn policy(l: &Layout, port: u16) -> PolicyFile {
    PolicyFile::for_probe("keep").read([&l.ws]).connect([format!("127.0.0.1/32:{port}")])
}

/// A background `agent-guard run`; ended (SIGTERM to our launcher, which forwards it to the
/// command) when dropped, also when a test fails half-way.
struct Launcher(Child);

impl Drop for Launcher {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// A background `agent-guard run` under the policy; returns the launcher and the run's cgroup.
fn start_run(d: &Daemon, pol: &Path, name: &str) -> (Launcher, PathBuf) {
    let probe = probe();
    let child = Command::new(agent_guard_tests::binary())
        .arg("--config")
        .arg(&d.config)
        .args(["run", "--policy", pol.to_str().unwrap(), "--name", name, "--", probe.to_str().unwrap(), "sleep", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let events = d.wait_for("run_start", |e| e["kind"] == "run_start" && e["run_name"] == name);
    let id = run_id(&events, name);
    (Launcher(child), d.cgroup_root.join(id))
}

#[test]
fn policy_stays_enforced_while_the_daemon_is_dead_and_a_restart_adopts_it() {
    require_root!();
    let mut d = Daemon::start();
    let l = layout();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let (port, other_port) = (allowed.local_addr().unwrap().port(), other.local_addr().unwrap().port());
    let pol = policy(&l, port).write_to(d.dir.path());
    let (launcher, dir) = start_run(&d, &pol, "keep");
    // The run's seccomp filter stands in for the syscall check (sys_enter), which goes once
    // the launcher said the filter is in place (kernel::ondemand).
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.pinned_links().iter().any(|n| n == "sys_enter") {
        assert!(Instant::now() < deadline, "the syscall check stays for a covered run: {:?}", d.pinned_links());
        std::thread::sleep(Duration::from_millis(20));
    }
    let links_before = d.pinned_links();
    assert!(links_before.iter().any(|n| n == "tp-ag_exit_openat"), "{links_before:?}");

    d.kill9();
    let secret = s(&l.outside.join("secret.txt"));
    let ok = s(&l.ws.join("ok.txt"));
    // Denied: killed before the content comes back. Allowed: works.
    let o = probe_in(&dir, &["read", &secret]);
    assert!(killed(&o), "denied read with the daemon dead: {o:?}");
    assert!(!stdout(&o).contains("TOPSECRET"), "{o:?}");
    let o = probe_in(&dir, &["read", &ok]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok hello"), "{o:?}");
    let o = probe_in(&dir, &["connect", &format!("127.0.0.1:{other_port}")]);
    assert_eq!(stdout(&o).trim(), "err EPERM", "denied connect with the daemon dead: {o:?}");
    let o = probe_in(&dir, &["connect", &format!("127.0.0.1:{port}")]);
    assert_eq!((status(&o), stdout(&o).trim().starts_with("ok")), (0, true), "allowed connect: {o:?}");
    // A process outside every run is untouched by the orphaned programs.
    let o = Command::new(probe()).args(["read", &secret]).output().unwrap();
    assert_eq!(stdout(&o).trim(), "ok TOPSECRET", "{o:?}");

    let gap = d.restart();
    eprintln!("restart: ready {} ms after the start command", gap.as_millis());
    let err = d.stderr();
    assert!(err.contains("adopting the pinned state"), "{err}");
    assert!(err.contains("adopted 1 policies, 1 runs"), "{err}");
    // No second attachment: the same links, no more, but for the syscall check, which an
    // adopted run gets (this daemon does not know its filter).
    assert_eq!(d.pinned_links().into_iter().filter(|n| n != "sys_enter").collect::<Vec<_>>(), links_before);
    // The backlog: what the kernel decided while the daemon was dead, attributed to the run.
    let events = d.wait_for("the denied read from the backlog", |e| e["kind"] == "open" && e["path"] == secret);
    let denied: Vec<_> = events.iter().filter(|e| e["kind"] == "open" && e["path"] == secret).collect();
    assert_eq!(denied.len(), 1, "one event per decision: {denied:#?}");
    assert_eq!(denied[0]["verdict"], "kill");
    assert_eq!(denied[0]["run_name"], "keep", "the run is known again: {:#?}", denied[0]);
    assert_eq!(denied[0]["policy"], "keep");
    // Still enforced, and events flow, after the restart.
    let o = probe_in(&dir, &["read", &ok]);
    assert_eq!(stdout(&o).trim(), "ok hello");
    // The read while the daemon was dead and the one after the restart, once each.
    let reads = || d.events().iter().filter(|e| e["kind"] == "open" && e["path"] == ok && e["run_name"] == "keep").count();
    let deadline = Instant::now() + Duration::from_secs(20);
    while reads() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200)); // a duplicate would be here by now
    assert_eq!(reads(), 2, "{:#?}", d.events());
    let o = d.cli(&["policy", "list"]);
    assert!(stdout(&o).contains("keep"), "{o:?}");
    // `ps` lists the run again, with its name and policy.
    let o = d.cli(&["ps", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    let run = runs.as_array().unwrap().iter().find(|r| r["name"] == "keep").unwrap_or_else(|| panic!("{runs:#}"));
    assert_eq!((run["policy"].as_str(), run["state"].as_str()), (Some("keep"), Some("running")), "{run:#}");

    drop(launcher);
    d.wait_for("run_end", |e| e["kind"] == "run_end" && e["run_name"] == "keep");
    // Nothing left to enforce: a stop detaches everything.
    d.stop();
    assert!(d.pinned_links().is_empty(), "{:?}\n{}", d.pinned_links(), d.stderr());
}

#[test]
fn a_stop_with_live_runs_keeps_enforcing_and_uninstall_removes_everything() {
    require_root!();
    let mut d = Daemon::start();
    let l = layout();
    let pol = policy(&l, 1).write_to(d.dir.path());
    let (launcher, dir) = start_run(&d, &pol, "live");
    d.stop();
    assert!(d.stderr().contains("stay enforced"), "{}", d.stderr());
    let secret = s(&l.outside.join("secret.txt"));
    assert!(killed(&probe_in(&dir, &["read", &secret])));

    // State from another build or configuration is never mixed with this one.
    let state = std::fs::read_dir(&d.bpffs_dir).unwrap().next().unwrap().unwrap().path();
    // Named for this managed root, as another build would name it.
    let root_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&d.cgroup_root).unwrap());
    let foreign = d.bpffs_dir.join(format!("v1-000000000000-root{root_id}-ring4096"));
    std::fs::create_dir(&foreign).unwrap();
    let refused = d.try_start();
    assert!(refused.is_err(), "the daemon started on top of foreign pinned state");
    let refused = refused.unwrap_err();
    let err = refused.stderr;
    assert!(refused.status.is_some_and(|s| !s.success()), "{err}");
    assert!(err.contains("cannot adopt") && err.contains(&s(&foreign)) && err.contains("--uninstall"), "{err}");
    std::fs::remove_dir(&foreign).unwrap();
    // Another managed root's state in the same directory (a second daemon's) is left alone.
    let other = d.bpffs_dir.join("v1-000000000000-root1-ring4096");
    std::fs::create_dir(&other).unwrap();

    let o = d.cli(&["daemon", "--uninstall"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{o:?}");
    assert!(out.contains(&s(&state)) && out.contains("links detached"), "{out}");
    assert!(out.contains("no longer enforced"), "the live run is named: {out}");
    assert!(!state.exists());
    assert!(other.exists() && out.contains("left in place"), "{out}");
    std::fs::remove_dir(&other).unwrap();
    // The run's processes are no longer under the policy.
    let o = probe_in(&dir, &["read", &secret]);
    assert_eq!(stdout(&o).trim(), "ok TOPSECRET", "{o:?}");
    drop(launcher);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!dir.exists(), "the launcher removes its run cgroup");
}

