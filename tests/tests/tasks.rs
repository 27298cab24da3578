//! Tasks (`agent-guard task`): least privilege per tool call. A harness inside a run wraps a
//! command in a task with a narrower policy; the kernel judges the task's processes by the
//! intersection of the run's policy and the task's, and every event names the task. Real
//! runs, real kernel (this host's tracepoint backend, with the Landlock layer of `agent-guard
//! run` and the task's own layer stacked on it).
use std::path::{Path, PathBuf};

use agent_guard_tests::{binary, probe, require_root, s, status, stdout, Daemon, PolicyFile};
use serde_json::Value;

struct World {
    d: Daemon,
    tmp: tempfile::TempDir,
    /// The run's policy: reads /etc and the tree, may exec agent-guard and the probe.
    run_policy: PathBuf,
}

fn world() -> World {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start();
    // The task socket lies in the daemon's directory: reachable by the run's processes.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = tempfile::Builder::new().prefix("ag-tasks-").tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The probe's directory (read) holds the agent-guard binary too (cargo's target dir).
    let run_policy = PolicyFile::for_probe("taskrun")
        .read(["/etc".to_string(), s(tmp.path())])
        .exec([binary()])
        .connect(["127.0.0.1:1-65535"])
        .write_to(d.dir.path());
    World { d, tmp, run_policy }
}

/// A task policy: what the probe needs to start, plus `extra` reads.
fn task_policy(w: &World, name: &str, extra: &[&str]) -> String {
    let p = PolicyFile::for_probe(name).read(extra.iter().map(|e| e.to_string())).write_to(w.tmp.path());
    s(&p)
}

/// `agent-guard run` under the run policy of `cmd` (an agent-guard or probe command line).
fn in_run(w: &World, name: &str, cmd: &[&str]) -> std::process::Output {
    let mut args = vec!["--policy", w.run_policy.to_str().unwrap(), "--name", name, "--"];
    args.extend_from_slice(cmd);
    w.d.run(&args)
}

fn said(o: &std::process::Output) -> String {
    stdout(o).trim().to_string()
}

fn events_of(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    d.wait_for(what, &pred).into_iter().filter(|e| pred(e)).collect()
}

#[test]
fn a_task_gets_the_intersection_of_its_policy_and_its_runs() {
    require_root!();
    let w = world();
    let ag = s(&binary());
    let pr = s(&probe());
    let narrow = task_policy(&w, "narrow", &[]);
    // Inside the run, as a harness would: the task may not read /etc, which the run may.
    let o = in_run(&w, "tasks-narrow", &[&ag, "task", "--id", "toolu_1", "--label", "tool=cat", "--policy", &narrow, "--", &pr, "read", "/etc/hostname"]);
    assert!(said(&o) == "err EACCES" || said(&o) == "err EPERM" || status(&o) == 137, "the task read /etc: {o:?}");
    let e = events_of(&w.d, "the task's refused open", |e| e["kind"] == "open" && e["path"] == "/etc/hostname" && e["verdict"] != "allow");
    let e = e.first().unwrap();
    assert_eq!(e["task"], "toolu_1", "{e}");
    assert_eq!(e["task_labels"]["tool"], "cat", "{e}");
    assert_eq!(e["run_name"], "tasks-narrow", "{e}");
    // The same command in the run, outside the task, reads it.
    let o = in_run(&w, "tasks-plain", &[&pr, "read", "/etc/hostname"]);
    assert!(said(&o).starts_with("ok"), "{o:?}");
    // A task without --policy has the run's: it reads /etc, and its events name it.
    let o = in_run(&w, "tasks-same", &[&ag, "task", "--id", "toolu_2", "--", &pr, "read", "/etc/hostname"]);
    assert!(said(&o).starts_with("ok"), "{o:?}");
    // The command sees its task id.
    let o = in_run(&w, "tasks-env", &[&ag, "task", "--id", "toolu_3", "--", &pr, "read", "/proc/self/environ"]);
    assert!(stdout(&o).contains("AGENT_GUARD_TASK=toolu_3"), "{o:?}");
}

#[test]
fn a_task_policy_cannot_widen_its_run() {
    require_root!();
    let w = world();
    let secret_dir = w.tmp.path().join("..").join(format!("{}-outside", w.tmp.path().file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join("secret.txt");
    std::fs::write(&secret, "TOPSECRET").unwrap();
    let secret_dir = secret_dir.canonicalize().unwrap();
    let wide = task_policy(&w, "wide", &[&s(&secret_dir)]);
    let (ag, pr) = (s(&binary()), s(&probe()));
    let o = in_run(&w, "tasks-wide", &[&ag, "task", "--id", "toolu_w", "--policy", &wide, "--", &pr, "read", &s(&secret)]);
    assert!(!stdout(&o).contains("TOPSECRET"), "a task read what its run may not: {o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no effect"), "the task is told its rule has no effect: {o:?}");
    let _ = std::fs::remove_dir_all(&secret_dir);
}

#[test]
fn a_run_can_start_tasks_of_its_own_run_only() {
    require_root!();
    let w = world();
    let pr = s(&probe());
    let sock = s(&w.d.dir.path().join("task.sock"));
    // Another run, to aim at.
    let other = w.d.spawn_run(&["--policy", w.run_policy.to_str().unwrap(), "--name", "victim", "--", &pr, "sleep", "20"]);
    let victim = w.d.wait_for("the victim's start", |e| e["kind"] == "run_start" && e["run_name"] == "victim");
    let victim = victim.iter().find(|e| e["run_name"] == "victim").unwrap()["run"].as_str().unwrap().to_string();
    for (what, req) in [
        ("another run's task", format!(r#"{{"v":2,"op":"task_start","run":"{victim}"}}"#)),
        ("a kill", format!(r#"{{"v":2,"op":"kill","run":"{victim}"}}"#)),
        ("a policy", r#"{"v":2,"op":"policy_apply","file":{"source":"x.toml","text":"name = \"x\""}}"#.to_string()),
        ("a freeze of its own run", r#"{"v":2,"op":"freeze","run":"tasks-own"}"#.to_string()),
    ] {
        let o = in_run(&w, "tasks-own", &[&pr, "unix-request", &sock, &req]);
        let out = said(&o);
        assert!(out.starts_with("ok ") && out.contains(r#""ok":false"#), "{what} from inside a run: {o:?}");
    }
    // The control socket stays out of reach of a run.
    let ctl = s(&w.d.dir.path().join("control.sock"));
    let o = in_run(&w, "tasks-ctl", &[&pr, "unix-request", &ctl, r#"{"v":2,"op":"ps"}"#]);
    assert!(!said(&o).contains(r#""ok":true"#), "a run reached the control socket: {o:?}");
    // Outside every run the task socket refuses.
    let o = std::process::Command::new(probe()).args(["unix-request", &sock, r#"{"v":2,"op":"ping"}"#]).output().unwrap();
    assert!(said(&o).contains("for processes inside runs"), "{o:?}");
    drop(other);
}

#[test]
fn killing_one_task_leaves_the_run_and_ps_lists_tasks() {
    require_root!();
    let w = world();
    let (ag, pr) = (s(&binary()), s(&probe()));
    // A harness in the run with two tasks side by side.
    let script = format!("{ag} task --id toolu_a -- {pr} sleep 30 & {ag} task --id toolu_b -- {pr} sleep 3; wait");
    let policy_sh = PolicyFile::for_probe("taskrun-sh")
        .read(["/etc".to_string(), s(w.tmp.path())])
        .exec([binary(), PathBuf::from("/usr/bin/sh"), PathBuf::from("/usr/bin/dash")])
        .write_to(w.d.dir.path());
    let mut run = w.d.spawn_run(&["--policy", policy_sh.to_str().unwrap(), "--name", "tasks-two", "--", "sh", "-c", &script]);
    let t0 = std::time::Instant::now();
    let tasks = loop {
        let o = w.d.cli(&["ps", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let tasks: Vec<Value> = v.as_array().into_iter().flatten().filter(|r| r["name"] == "tasks-two").flat_map(|r| r["tasks"].as_array().cloned().unwrap_or_default()).collect();
        if tasks.len() == 2 || t0.elapsed() > std::time::Duration::from_secs(10) {
            break tasks;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(tasks.len(), 2, "ps lists both tasks: {tasks:?}");
    let o = w.d.cli(&["kill", "toolu_a"]);
    assert!(o.status.success(), "{o:?}");
    // toolu_b finishes its 3 s and the run ends normally: only toolu_a was killed.
    assert_eq!(run.wait_exit(std::time::Duration::from_secs(20)), Some(0), "{}", run.stderr());
    let k = events_of(&w.d, "the task's kill", |e| e["kind"] == "kill" && e["task"] == "toolu_a");
    assert!(!k.is_empty());
    let _ = Path::new("/");
}

#[test]
fn a_hold_of_a_task_names_the_task() {
    require_root!();
    let w = world();
    let (ag, pr) = (s(&binary()), s(&probe()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    // The run may connect to loopback; the task's policy allows no connect and holds
    // violations for review.
    let held = PolicyFile::for_probe("held").on_violation("freeze").write_to(w.tmp.path());
    let mut run = w.d.spawn_run(&[
        "--policy",
        w.run_policy.to_str().unwrap(),
        "--name",
        "tasks-hold",
        "--",
        &ag,
        "task",
        "--id",
        "toolu_h",
        "--policy",
        &s(&held),
        "--",
        &pr,
        "connect",
        &target,
    ]);
    let h = events_of(&w.d, "the task's hold", |e| e["kind"] == "hold" && e["hold"] == "held");
    let h = h.first().unwrap();
    assert_eq!(h["task"], "toolu_h", "{h}");
    assert_eq!(h["run_name"], "tasks-hold", "{h}");
    let id = h["run"].as_str().unwrap().to_string();
    let o = w.d.cli(&["deny", &id]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(run.wait_exit(std::time::Duration::from_secs(20)), Some(1), "the connect stays refused: {}", run.stderr());
}

/// A process in a narrower task that starts, joins and ends a task of its own goes back to
/// the narrower task, never to the run's wider rules. The Landlock layer is off here so that
/// the kernel's rules alone decide (the task's Landlock layer would otherwise still hold the
/// process wherever its cgroup is).
#[test]
fn ending_a_task_never_widens_its_starter() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start_with("landlock = false");
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = tempfile::Builder::new().prefix("ag-tasks-").tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run_policy = PolicyFile::for_probe("hoprun").read(["/etc".to_string(), s(tmp.path())]).exec([binary()]).write_to(d.dir.path());
    let narrow = PolicyFile::for_probe("hopnarrow").write_to(tmp.path());
    let sock = s(&d.dir.path().join("task.sock"));
    let (ag, pr) = (s(&binary()), s(&probe()));
    let mut args = vec!["--policy", run_policy.to_str().unwrap(), "--name", "hop-run", "--"];
    let cmd = [ag.as_str(), "task", "--id", "narrow-1", "--policy", narrow.to_str().unwrap(), "--", pr.as_str(), "task-hop", sock.as_str(), "/etc/hostname"];
    args.extend_from_slice(&cmd);
    let o = d.run(&args);
    assert!(!said(&o).starts_with("ok"), "the process left its narrower task for the run's rules: {o:?}");
    assert_eq!(status(&o), 137, "{o:?}");
}
