//! Incident response on the real kernel: `ps`, `freeze`, `thaw`, `kill`, `events` and
//! `status` against a real daemon, real run cgroups and real processes; the control socket's
//! access rules with real users; and the CLI acting on cgroupfs when the daemon is down.
use std::{
    io::{BufRead, BufReader},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use agent_guard_tests::{
    as_user, binary, cgroup2_mount, cgroup_frozen, cgroup_procs, command_in, require_root, skip_test, stderr, stdout, BackgroundRun,
    Daemon, PolicyFile, TestCgroup,
};
use serde_json::Value;

/// `ps --json` of the daemon.
fn ps(d: &Daemon) -> Vec<Value> {
    let out = d.cli(&["ps", "--json"]);
    assert!(out.status.success(), "ps: {}", stderr(&out));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

/// Waits until `ps` lists a run named `name` with at least `procs` processes; the run's row.
fn wait_run(d: &Daemon, name: &str, procs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = ps(d);
        if let Some(r) = runs.iter().find(|r| r["name"] == name && r["processes"].as_u64() >= Some(procs)) {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "run {name} with {procs} processes not in ps after 30 s: {runs:#?}\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `agent-guard run --name NAME -- sh -c SCRIPT` in the background and waits until its
/// cgroup holds `procs` processes. The guard knows the cgroup, so a failing test cleans up.
fn start(d: &Daemon, name: &str, script: &str, procs: u64) -> (BackgroundRun, Value, PathBuf) {
    let mut run = d.spawn_run(&["--name", name, "--", "sh", "-c", script]);
    let row = wait_run(d, name, procs);
    let dir = cgroup2_mount().join(row["cgroup"].as_str().unwrap().trim_start_matches('/'));
    run.cgroup = Some(dir.clone());
    (run, row, dir)
}

fn sleepers(n: u32) -> String {
    format!("for i in $(seq {n}); do sleep 600 & done; wait")
}

/// The kernel function a task is blocked in.
fn wchan(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
}

/// The live processes of a frozen cgroup, once each sits in the freezer's trap. A task counts
/// toward `frozen 1` just before it schedules out, so for a moment its wchan may still read 0;
/// an exited child its frozen shell cannot reap (a `seq`) is a zombie, outside the trap.
fn all_in_freezer_trap(dir: &Path) -> Vec<u32> {
    let zombie = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| st.rsplit_once(')').map(|(_, t)| t.trim_start().starts_with('Z')))
            .unwrap_or(true)
    };
    let live = || -> Vec<u32> { cgroup_procs(dir).into_iter().filter(|p| !zombie(*p)).collect() };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = live();
        let outside: Vec<_> = pids.iter().map(|&p| (p, wchan(p))).filter(|(_, w)| w != "get_signal").collect();
        if outside.is_empty() {
            return pids;
        }
        assert!(Instant::now() < deadline, "not in the freezer trap 2 s after frozen 1 (pid, wchan): {outside:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The latency the CLI printed: "... in 3.214 ms".
fn latency(out: &str) -> f64 {
    let ms = out.split(" in ").nth(1).and_then(|t| t.split(" ms").next()).unwrap_or_else(|| panic!("no latency in {out:?}"));
    ms.parse().unwrap_or_else(|_| panic!("bad latency in {out:?}"))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The process is gone, or a zombie no longer in `dir`.
fn gone_from(pid: u32, dir: &Path) -> bool {
    let rel = dir.strip_prefix(cgroup2_mount()).unwrap().display().to_string();
    match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(cg) => !cg.contains(&rel),
        Err(_) => true,
    }
}

#[test]
fn freeze_thaw_and_kill_a_run_of_100_processes() {
    require_root!();
    let d = Daemon::start();
    let (mut run, row, dir) = start(&d, "hundred", &sleepers(100), 101);
    let id = row["id"].as_str().unwrap().to_string();
    assert_eq!(row["state"], "running");
    assert_eq!(row["policy"], Value::Null);
    let pids = cgroup_procs(&dir);
    assert!(pids.len() >= 101, "{pids:?}");

    // freeze: the kernel reports the cgroup frozen, and every task sits in the freezer's trap
    // (on this kernel /proc/PID/status still says "S (sleeping)"; wchan names the trap).
    let out = d.cli(&["freeze", "hundred"]);
    assert!(out.status.success(), "freeze: {}", stderr(&out));
    let froze = stdout(&out);
    assert!(froze.starts_with(&format!("froze {id} (hundred): 101 processes in ")), "{froze}");
    let freeze_ms = latency(&froze);
    assert!(cgroup_frozen(&dir), "cgroup.events does not say frozen 1");
    let pids = all_in_freezer_trap(&dir);
    assert!(pids.len() >= 101, "{pids:?}");
    let row = ps(&d).into_iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(row["state"], "frozen");

    // thaw: frozen 0, and every task leaves the trap.
    let out = d.cli(&["thaw", &id]);
    assert!(out.status.success(), "thaw: {}", stderr(&out));
    let thaw_ms = latency(&stdout(&out));
    assert!(!cgroup_frozen(&dir));
    wait_until("every task out of the freezer trap", Duration::from_secs(10), || {
        pids.iter().all(|&p| wchan(p) != "get_signal")
    });

    // kill: nothing left, the cgroup gone, the launcher reports SIGKILL.
    let out = d.cli(&["kill", "hundred"]);
    assert!(out.status.success(), "kill: {}", stderr(&out));
    let killed = stdout(&out);
    assert!(killed.starts_with(&format!("killed {id} (hundred): 101 processes in ")) && killed.contains("cgroup removed"), "{killed}");
    let kill_ms = latency(&killed);
    assert!(!dir.exists(), "{} left behind", dir.display());
    wait_until("every process of the run gone", Duration::from_secs(10), || pids.iter().all(|&p| gone_from(p, &dir)));
    assert_eq!(run.wait_exit(Duration::from_secs(10)), Some(137), "launcher: {}", run.stderr());
    eprintln!("100-process run: freeze {freeze_ms} ms, thaw {thaw_ms} ms, kill {kill_ms} ms");

    // Each action is an event naming who asked, with its latency.
    let ev = d.wait_for("kill event", |e| e["kind"] == "kill" && e["run"] == id.as_str());
    for (kind, ms) in [("freeze", freeze_ms), ("thaw", thaw_ms), ("kill", kill_ms)] {
        let e = ev.iter().find(|e| e["kind"] == kind && e["run"] == id.as_str()).unwrap_or_else(|| panic!("no {kind} event"));
        assert_eq!(e["run_name"], "hundred");
        assert_eq!(e["requested_by_uid"], 0);
        assert!(e["requested_by_pid"].as_u64().unwrap() > 0);
        assert_eq!(e["latency_ms"].as_f64(), Some(ms), "{e}");
        assert_eq!(e["processes"], 101);
        assert!(e.get("error").is_none(), "{e}");
    }
}

#[test]
fn freeze_thaw_and_kill_work_on_cgroupfs_when_the_daemon_is_down() {
    require_root!();
    let mut d = Daemon::start();
    let (mut run, row, dir) = start(&d, "orphan", &sleepers(5), 6);
    let id = row["id"].as_str().unwrap().to_string();
    d.stop();
    let log_len = d.events().len();

    let out = d.cli(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let st = stdout(&out);
    assert!(st.contains("not running") && st.contains(&id) && st.contains("6 processes"), "{st}");

    // Names need the daemon; ids, paths and pids do not.
    let out = d.cli(&["freeze", "orphan"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("names need the daemon") && stderr(&out).contains(&id), "{}", stderr(&out));

    let out = d.cli(&["freeze", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("daemon is not running") && stderr(&out).contains("no event is recorded"), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("froze {id}: 6 processes in ")), "{}", stdout(&out));
    assert!(cgroup_frozen(&dir));
    let pids = all_in_freezer_trap(&dir);
    assert!(pids.len() >= 6, "{pids:?}");

    let rel = dir.strip_prefix(cgroup2_mount()).unwrap().display().to_string();
    let out = d.cli(&["thaw", &rel]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!cgroup_frozen(&dir));

    // Nothing outside the managed root, whatever is named.
    let me = std::process::id().to_string();
    let out = d.cli(&["freeze", &me]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("in no run"), "{}", stderr(&out));
    let out = d.cli(&["kill", cgroup2_mount().to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("no run matches"), "{}", stderr(&out));

    let out = d.cli(&["kill", &pids[0].to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cgroup removed"), "{}", stdout(&out));
    assert!(!dir.exists());
    assert_eq!(run.wait_exit(Duration::from_secs(10)), Some(137));
    assert_eq!(d.events().len(), log_len, "nothing may be logged with the daemon down");

    let out = d.cli(&["ps"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// The gid of group `name` in /etc/group.
fn group_gid(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok()).flatten()
        })
}

#[test]
fn the_control_socket_is_for_root_and_the_control_group_only() {
    require_root!();
    let Some(users) = group_gid("users") else { skip_test!("no group \"users\" in /etc/group") };
    let d = Daemon::start_with("control_group = \"users\"");
    // The test daemon's directory is private by default; nobody must reach the socket.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = d.dir.path().join("control.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o660, 0, users));

    let nobody = 65534;
    let as_ = |gid: u32, groups: &[u32], args: &[&str]| {
        let mut c = d.command(args);
        as_user(&mut c, nobody, gid, groups);
        c.output().unwrap()
    };
    // Not a member: the socket file refuses the connection.
    let out = as_(nobody, &[], &["ps"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("permission denied"), "{}", stderr(&out));
    // Nor does freeze fall back to cgroupfs for someone merely refused.
    let out = as_(nobody, &[], &["freeze", "anything"]);
    assert!(!out.status.success() && stderr(&out).contains("permission denied"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("cgroupfs"), "{}", stderr(&out));

    // A supplementary member, and a primary-group member: allowed.
    let out = as_(nobody, &[users], &["ps"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("RUN"), "{}", stdout(&out));
    let out = as_(users, &[], &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // With the file opened to everyone, the daemon's own check (SO_PEERCRED) still refuses.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_(nobody, &[], &["ps"]);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660)).unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("permission denied") && err.contains("uid 65534") && err.contains("users"), "{err}");
}

#[test]
fn a_process_inside_a_run_is_refused_even_as_root() {
    require_root!();
    let d = Daemon::start();
    let (_run, row, dir) = start(&d, "victim", &sleepers(1), 2);
    let bin = binary();
    let (bin, cfg) = (bin.to_str().unwrap(), d.config.to_str().unwrap());
    let out = d.run(&["--", bin, "--config", cfg, "ps"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("permission denied") && err.contains("inside an agent run"), "{err}");

    // Not freeze either, and no fallback to cgroupfs: the victim stays running.
    let out = d.run(&["--", bin, "--config", cfg, "freeze", row["id"].as_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("inside an agent run"), "{}", stderr(&out));
    assert!(!cgroup_frozen(&dir));
    // Nor a nested run.
    let out = d.run(&["--", bin, "--config", cfg, "run", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("inside an agent run"), "{}", stderr(&out));
}

#[test]
fn unknown_and_ambiguous_runs_list_the_candidates() {
    require_root!();
    let d = Daemon::start();
    let (_a, a, _) = start(&d, "twin", &sleepers(1), 2);
    let mut b_run = d.spawn_run(&["--name", "twin", "--", "sh", "-c", &sleepers(1)]);
    let (_solo, solo, solo_dir) = start(&d, "solo", &sleepers(2), 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    let b = loop {
        let runs = ps(&d);
        if let Some(b) = runs.iter().find(|r| r["name"] == "twin" && r["id"] != a["id"] && r["processes"].as_u64() >= Some(2)) {
            break b.clone();
        }
        assert!(Instant::now() < deadline, "second twin not up: {runs:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    b_run.cgroup = Some(cgroup2_mount().join(b["cgroup"].as_str().unwrap().trim_start_matches('/')));
    let (aid, bid, sid) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap(), solo["id"].as_str().unwrap());

    let out = d.cli(&["freeze", "twin"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("ambiguous") && err.contains(aid) && err.contains(bid) && !err.contains(sid), "{err}");

    let out = d.cli(&["kill", "no-such-run"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no run matches") && err.contains(aid) && err.contains(bid) && err.contains(sid), "{err}");

    // A pid in the run, and the cgroup path as events show it.
    let pid = cgroup_procs(&solo_dir)[0].to_string();
    let out = d.cli(&["freeze", &pid]);
    assert!(out.status.success() && stdout(&out).starts_with(&format!("froze {sid} (solo)")), "{}", stderr(&out));
    let out = d.cli(&["thaw", solo["cgroup"].as_str().unwrap()]);
    assert!(out.status.success() && stdout(&out).starts_with(&format!("thawed {sid}")), "{}", stderr(&out));
    let out = d.cli(&["freeze", solo_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cgroup_frozen(&solo_dir));
    // A frozen run can be killed.
    let out = d.cli(&["kill", sid]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!solo_dir.exists());

    // Nothing outside the runs: the test itself, the root cgroup.
    let out = d.cli(&["freeze", &std::process::id().to_string()]);
    assert!(!out.status.success() && stderr(&out).contains("in no run"), "{}", stderr(&out));
    let out = d.cli(&["freeze", "/"]);
    assert!(!out.status.success() && stderr(&out).contains("no run matches"), "{}", stderr(&out));
}

#[test]
fn events_of_a_run_and_a_follower_sees_what_happens_after_it_connected() {
    require_root!();
    let d = Daemon::start();
    let (_other, _, _) = start(&d, "other", &sleepers(1), 2);
    let (_run, row, _) = start(&d, "watched", &sleepers(1), 2);
    let id = row["id"].as_str().unwrap().to_string();

    let mut follower = d
        .command(&["events", "--follow", "--json", "--run", "watched"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout_pipe = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout_pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(serde_json::from_str(&line).expect("each line is one JSON event")).is_err() {
                break;
            }
        }
    });
    let next = |what: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(e) if pred(&e) => return e,
                Ok(e) => assert_eq!(e["run"], id.as_str(), "follower got another run's event: {e}"),
                Err(_) => panic!("follower: no {what} after 20 s"),
            }
        }
    };
    // The buffered run_start shows the follower is connected; the freeze comes after.
    next("buffered run_start", &|e| e["kind"] == "run_start");
    let out = d.cli(&["freeze", "watched"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let e = next("freeze event", &|e| e["kind"] == "freeze");
    assert_eq!(e["run"], id.as_str());
    assert_eq!(e["requested_by_uid"], 0);

    // The follower stops when it is told to; the daemon goes on.
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(follower.id() as i32, libc::SIGTERM) };
    let _ = follower.wait();
    reader.join().unwrap();

    // Without --follow: this run's buffered events, and then the stream ends.
    let out = d.cli(&["events", "--run", &id, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ev: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(ev.iter().all(|e| e["run"] == id.as_str()), "{ev:#?}");
    for kind in ["run_start", "exec", "freeze"] {
        assert!(ev.iter().any(|e| e["kind"] == kind), "no {kind}: {ev:#?}");
    }
    // Human lines, one per event.
    let out = d.cli(&["events", "--run", "watched"]);
    assert!(out.status.success());
    let human = stdout(&out);
    assert_eq!(human.lines().count(), ev.len(), "{human}");
    assert!(human.lines().any(|l| l.contains(" freeze ") && l.contains(&id) && l.contains(" ms, by uid 0")), "{human}");
    // All events: both runs.
    let all = stdout(&d.cli(&["events", "--json"]));
    assert!(all.contains("\"run_name\":\"other\"") && all.contains("\"run_name\":\"watched\""));
    let out = d.cli(&["events", "--run", "nope"]);
    assert!(!out.status.success() && stderr(&out).contains("no run matches"), "{}", stderr(&out));
}

#[test]
fn status_and_ps_report_runs_policies_and_violations() {
    require_root!();
    let d = Daemon::start();
    let out = d.cli(&["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["running"], true);
    assert_eq!(s["pid"], d.pid());
    assert_eq!(s["managed_root"], d.cgroup_root.to_str().unwrap());
    assert_eq!(s["config_file"], d.config.to_str().unwrap());
    assert_eq!(s["syscall_check_attached"], false);
    assert_eq!((s["runs_running"].as_u64(), s["policies"].as_u64()), (Some(0), Some(0)));
    assert_eq!(s["events_dropped"], 0);

    // A run under a monitor policy that reads outside it: would_deny events are violations,
    // and a policied run attaches the syscall check.
    let policy = PolicyFile::new("watch").mode("monitor").read(["/usr", "/lib", "/lib64"]).write_to(d.dir.path());
    let mut run = d.spawn_run(&["--policy", policy.to_str().unwrap(), "--name", "peek", "--", "sh", "-c", "cat /etc/hostname; sleep 600"]);
    let row = wait_run(&d, "peek", 2);
    run.cgroup = Some(cgroup2_mount().join(row["cgroup"].as_str().unwrap().trim_start_matches('/')));
    assert_eq!(row["policy"], "watch");
    d.wait_for("would_deny of /etc/hostname", |e| e["verdict"] == "would_deny" && e["run_name"] == "peek");
    let row = ps(&d).into_iter().find(|r| r["name"] == "peek").unwrap();
    assert!(row["violations"].as_u64().unwrap() >= 1, "{row}");
    let out = d.cli(&["freeze", "peek"]);
    assert!(out.status.success());

    let s: Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(s["syscall_check_attached"], true);
    assert_eq!((s["runs_running"].as_u64(), s["runs_frozen"].as_u64(), s["policies"].as_u64()), (Some(0), Some(1), Some(1)));
    let human = stdout(&d.cli(&["status"]));
    assert!(human.contains("daemon running") && human.contains("1 frozen") && human.contains("syscall check   attached"), "{human}");
    let table = stdout(&d.cli(&["ps"]));
    assert!(table.lines().any(|l| l.contains("peek") && l.contains("watch") && l.contains("frozen")), "{table}");
    let out = d.cli(&["kill", "peek"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(run.wait_exit(Duration::from_secs(10)), Some(137));
}

#[test]
fn a_bound_cgroup_is_listed_frozen_and_killed_but_left_in_place() {
    require_root!();
    let tree = TestCgroup::create("agent-guard-ctltest");
    let top_name = tree.name();
    let scope = tree.0.join("a.scope");
    std::fs::create_dir(&scope).unwrap();
    let d = Daemon::start();
    // Monitor mode: the processes there are only watched.
    let policy = PolicyFile::new("bound").mode("monitor").bind([format!("{top_name}/*.scope")]).write_to(d.dir.path());
    let out = d.cli(&["policy", "apply", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut sleeps: Vec<std::process::Child> =
        (0..3).map(|_| command_in(&scope, "/bin/sleep", &["600"]).spawn().unwrap()).collect();
    let name = format!("/{top_name}/a.scope");
    let row = wait_run(&d, &name, 3);
    let id = row["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("b-"), "{row}");
    assert_eq!((row["bound"].as_bool(), row["policy"].as_str()), (Some(true), Some("bound")), "{row}");

    // A process in a bound cgroup may not use the control socket either.
    let out = command_in(&scope, binary(), &["--config", d.config.to_str().unwrap(), "ps"]).output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("inside an agent run"), "{}", stderr(&out));

    let out = d.cli(&["freeze", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cgroup_frozen(&scope));
    let out = d.cli(&["thaw", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.cli(&["kill", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("killed {id} ({name}): 3 processes in ")), "{}", stdout(&out));
    assert!(!stdout(&out).contains("removed"), "{}", stdout(&out));
    for s in &mut sleeps {
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&s.wait().unwrap()), Some(9));
    }
    // The cgroup belongs to whoever made it: emptied, still there.
    assert!(scope.is_dir() && cgroup_procs(&scope).is_empty());
    let ev = d.wait_for("kill of the bound cgroup", |e| e["kind"] == "kill" && e["run"] == id.as_str());
    assert!(ev.iter().any(|e| e["kind"] == "freeze" && e["run"] == id.as_str() && e["run_name"] == name.as_str()));
}

#[test]
fn a_slow_follower_is_told_what_it_missed_and_slows_nobody() {
    require_root!();
    use std::io::{Read, Write};
    let d = Daemon::start();
    // A follower that asks and then does not read.
    let mut slow = std::os::unix::net::UnixStream::connect(d.dir.path().join("control.sock")).unwrap();
    slow.write_all(b"{\"v\":1,\"op\":\"events\",\"follow\":true,\"json\":true}\n").unwrap();
    // A follower that keeps up, through the CLI.
    let mut fast = d.command(&["events", "--follow", "--json"]).stdout(Stdio::piped()).spawn().unwrap();
    let fast_out = fast.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(fast_out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Both connected before the burst (a late one would start from the buffer's last 10000).
    wait_until("two followers", Duration::from_secs(10), || {
        let st: Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap_or_default();
        st["followers"] == 2
    });
    // Tens of thousands of events: every file open of a walk through /usr.
    let script = "find /usr -type f 2>/dev/null | head -n 20000 | xargs cat > /dev/null 2>&1; true";
    let out = d.run(&["--name", "burst", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The daemon answers while the slow follower is stuck.
    let st = d.cli(&["status", "--json"]);
    assert!(st.status.success(), "{}", stderr(&st));
    d.wait_for("run_end of burst", |e| e["kind"] == "run_end" && e["run_name"] == "burst");
    // The ring buffer may still hold events of the run when run_end is logged: wait until the
    // log stops growing.
    let opens = || d.events().iter().filter(|e| e["kind"] == "open" && e["run_name"] == "burst").count();
    let mut logged_opens = opens();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = opens();
        if now == logged_opens {
            break;
        }
        logged_opens = now;
    }
    assert!(logged_opens > 5000, "only {logged_opens} opens: not a burst");

    // The fast follower saw every event of the run the log has, and no loss notice.
    let mut fast_opens = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while fast_opens < logged_opens {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            panic!("the fast follower saw {fast_opens} of the {logged_opens} opens the log has");
        };
        let e: Value = serde_json::from_str(&line).unwrap();
        assert!(!(e["kind"] == "drop" && e["stage"] == "follower"), "the fast follower lost events: {e}");
        if e["run_name"] == "burst" && e["kind"] == "open" {
            fast_opens += 1;
        }
    }
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(fast.id() as i32, libc::SIGTERM) };
    let _ = fast.wait();
    reader.join().unwrap();

    // The slow one, reading at last, is told how many it missed.
    slow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(30);
    let missed = loop {
        match slow.read(&mut buf) {
            Ok(0) => panic!("the daemon closed the slow follower"),
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        let s = String::from_utf8_lossy(&text);
        let drop = s.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|e| e["kind"] == "drop" && e["stage"] == "follower");
        if let Some(e) = drop {
            break e["count"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "no drop notice for the slow follower");
    };
    assert!(missed > 0);
    eprintln!("burst of {logged_opens} opens: the slow follower was told it missed {missed} events");
}
