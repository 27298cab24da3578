//! The foundation on the real kernel: a real daemon, real runs in real cgroups, real
//! processes and a real loopback socket; assertions on the JSON lines the daemon wrote.
use std::{net::TcpListener, process::Command};

use agent_guard_tests::{cgroup2_mount, require_root, run_id, Daemon, PolicyFile};
use serde_json::Value;

fn of_kind<'a>(events: &'a [Value], run: &str, kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["run"] == run && e["kind"] == kind).collect()
}

#[test]
fn a_run_is_watched_exec_open_connect_exit_and_nothing_outside_it() {
    require_root!();
    let d = Daemon::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || listener.accept().map(|_| ()));

    // A process outside every run, doing the same things at the same time.
    let outside = Command::new("cat").arg("/etc/hostname").stdout(std::process::Stdio::null()).spawn().unwrap();
    let outside_pid = outside.id() as u64;
    assert!(outside.wait_with_output().unwrap().status.success());

    let script = format!("cat /etc/hostname; bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}'; exit 7");
    let out = d.run(&["--name", "walk", "--label", "task=T-42", "--", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(7), "run exits with the command's status; stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), std::fs::read_to_string("/etc/hostname").unwrap().trim());
    accept.join().unwrap().unwrap();

    let ev = d.wait_for("run_end of walk", |e| e["kind"] == "run_end" && e["run_name"] == "walk");
    let run = run_id(&ev, "walk");
    assert!(run.starts_with("r-"), "{run}");

    // exec of cat with its argv, resolved exe, ppid and labels.
    let execs = of_kind(&ev, &run, "exec");
    let cat = execs.iter().find(|e| e["comm"] == "cat").unwrap_or_else(|| panic!("no exec of cat: {execs:#?}"));
    assert_eq!(cat["argv"], serde_json::json!(["cat", "/etc/hostname"]));
    assert_eq!(cat["argv_truncated"], false);
    let cat_exe = std::fs::canonicalize(which("cat")).unwrap();
    assert_eq!(cat["path"], cat_exe.to_str().unwrap(), "exe path is the resolved one");
    assert_eq!(cat["labels"]["task"], "T-42");
    assert_eq!(cat["run_name"], "walk");
    let sh = execs.iter().find(|e| e["argv"][0] == "sh").expect("exec of sh");
    assert_eq!(cat["ppid"], sh["pid"], "cat's parent is the run's shell");
    let cat_pid = cat["pid"].as_u64().unwrap();

    // open of /etc/hostname for read, by cat, successful.
    let opens = of_kind(&ev, &run, "open");
    let host_open = opens
        .iter()
        .find(|e| e["pid"].as_u64() == Some(cat_pid) && e["path"] == "/etc/hostname")
        .unwrap_or_else(|| panic!("no open of /etc/hostname by cat: {opens:#?}"));
    assert_eq!(host_open["access"], "read");
    assert!(host_open["result"].as_i64().unwrap() >= 0);
    assert_eq!(host_open["path_resolved"], true);

    // connect to 127.0.0.1:PORT over TCP, successful.
    let connects = of_kind(&ev, &run, "connect");
    let c = connects
        .iter()
        .find(|e| e["port"] == port)
        .unwrap_or_else(|| panic!("no connect to port {port}: {connects:#?}"));
    assert_eq!((c["addr"].as_str(), c["family"].as_str(), c["proto"].as_str()), (Some("127.0.0.1"), Some("inet"), Some("tcp")));
    assert_eq!(c["result"], 0);

    // exit of cat (status 0) and of the shell (status 7).
    let exits = of_kind(&ev, &run, "exit");
    assert!(exits.iter().any(|e| e["pid"].as_u64() == Some(cat_pid) && e["exit_code"] == 0), "{exits:#?}");
    assert!(exits.iter().any(|e| e["pid"] == sh["pid"] && e["exit_code"] == 7), "{exits:#?}");

    // Nothing from outside the run: every kernel event belongs to this run, and the outside
    // cat (a child of this test) left no trace.
    let me = std::process::id() as u64;
    for e in &ev {
        if ["exec", "open", "connect", "exit"].contains(&e["kind"].as_str().unwrap()) {
            assert_eq!(e["run"], run, "event outside the run: {e}");
            assert_ne!(e["ppid"].as_u64(), Some(me), "event of a process outside the run: {e}");
            assert_ne!(e["pid"].as_u64(), Some(outside_pid), "event of the outside cat: {e}");
        }
    }
    // The run's cgroup is gone once the run is over.
    let cg = ev.iter().find(|e| e["kind"] == "run_start").unwrap()["cgroup"].as_str().unwrap().to_string();
    assert!(!cgroup2_mount().join(cg.trim_start_matches('/')).exists(), "run cgroup {cg} left behind");
}

fn which(cmd: &str) -> std::path::PathBuf {
    std::env::var("PATH")
        .unwrap()
        .split(':')
        .map(|d| std::path::Path::new(d).join(cmd))
        .find(|p| p.exists())
        .unwrap()
}

#[test]
fn children_grandchildren_and_child_cgroups_are_covered() {
    require_root!();
    let d = Daemon::start();
    let mount = cgroup2_mount();
    // The grandchild moves itself into a child cgroup of the run before it opens a file.
    let script = d.dir.path().join("grandchild.sh");
    std::fs::write(
        &script,
        format!(
            "d={m}$(grep ^0:: /proc/self/cgroup | cut -d: -f3)\nmkdir $d/sub && echo $$ > $d/sub/cgroup.procs && head -c1 /etc/os-release >/dev/null\n",
            m = mount.display()
        ),
    )
    .unwrap();
    let script = format!("sh -c 'sh {}'", script.display());
    let out = d.run(&["--name", "tree", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ev = d.wait_for("run_end of tree", |e| e["kind"] == "run_end" && e["run_name"] == "tree");
    let run = run_id(&ev, "tree");
    // /etc/os-release is a symlink on Debian: the event names the file the kernel opened.
    let target = std::fs::canonicalize("/etc/os-release").unwrap();
    let open = ev
        .iter()
        .find(|e| e["kind"] == "open" && e["path"] == target.to_str().unwrap())
        .unwrap_or_else(|| panic!("open in the child cgroup not seen: {ev:#?}"));
    assert_eq!(open["run"], run);
    let start = ev.iter().find(|e| e["kind"] == "run_start" && e["run"] == run).unwrap();
    assert_ne!(open["cgroup_id"], start["cgroup_id"], "the open happened in a child cgroup: {open}");
    // The path is absent only when the sub-cgroup was removed before the daemon looked it up.
    if let Some(cg) = open.get("cgroup") {
        assert!(cg.as_str().unwrap().ends_with(&format!("{run}/sub")), "{open}");
    }
    assert_eq!(open["comm"], "head");
}

#[test]
fn exit_status_follows_the_command_and_signals_are_128_plus_n() {
    require_root!();
    let d = Daemon::start();
    assert_eq!(d.run(&["--", "sh", "-c", "exit 0"]).status.code(), Some(0));
    assert_eq!(d.run(&["--", "sh", "-c", "kill -TERM $$"]).status.code(), Some(128 + 15));
    let missing = d.run(&["--", "/nonexistent/agent-guard-test-cmd"]);
    assert_eq!(missing.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/agent-guard-test-cmd"));
}

#[test]
fn long_argv_is_bounded_and_flagged() {
    require_root!();
    let d = Daemon::start();
    let long = "x".repeat(3000);
    let out = d.run(&["--name", "long", "--", "/bin/echo", &long]);
    assert!(out.status.success());
    let ev = d.wait_for("exec of echo", |e| e["kind"] == "exec" && e["run_name"] == "long");
    let exec = ev.iter().find(|e| e["kind"] == "exec" && e["run_name"] == "long").unwrap();
    assert_eq!(exec["argv_truncated"], true);
    let kept: usize = exec["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().len() + 1).sum();
    assert!(kept <= 1024 + 1, "argv bound is 1024 bytes, kept {kept}");
    assert_eq!(exec["argv"][0], "/bin/echo");
}

#[test]
fn two_daemons_side_by_side_see_only_their_own_runs() {
    require_root!();
    let a = Daemon::start();
    let b = Daemon::start();
    assert!(a.run(&["--name", "in-a", "--", "cat", "/etc/hostname"]).status.success());
    assert!(b.run(&["--name", "in-b", "--", "cat", "/etc/hostname"]).status.success());
    let ea = a.wait_for("run_end in a", |e| e["kind"] == "run_end" && e["run_name"] == "in-a");
    let eb = b.wait_for("run_end in b", |e| e["kind"] == "run_end" && e["run_name"] == "in-b");
    let (ra, rb) = (run_id(&ea, "in-a"), run_id(&eb, "in-b"));
    assert!(ea.iter().all(|e| e["run"] != rb && e["run_name"] != "in-b"), "a saw b's run");
    assert!(eb.iter().all(|e| e["run"] != ra && e["run_name"] != "in-a"), "b saw a's run");
    assert!(ea.iter().any(|e| e["kind"] == "exec" && e["run"] == ra));
    assert!(eb.iter().any(|e| e["kind"] == "exec" && e["run"] == rb));
}

#[test]
fn run_without_a_daemon_fails_clearly_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("control_socket = \"{}/none.sock\"\n", dir.path().display())).unwrap();
    let marker = dir.path().join("ran");
    let out = Command::new(agent_guard_tests::binary())
        .args(["--config", cfg.to_str().unwrap(), "run", "--", "touch", marker.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent-guard daemon"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!marker.exists(), "the command ran unwatched");
}

#[test]
fn bad_config_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "events_log = \"/tmp/x\"\nbakend = \"lsm\"\n").unwrap();
    let out = Command::new(agent_guard_tests::binary())
        .args(["--config", cfg.to_str().unwrap(), "daemon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("line 2") && err.contains("bakend"), "{err}");
}

#[test]
fn a_full_ring_buffer_loses_nothing_silently() {
    require_root!();
    // One page of ring buffer holds three open events: a burst of 300 opens overflows it.
    let d = Daemon::start_with("events_ring_bytes = 4096");
    let files: Vec<String> = (0..300)
        .map(|i| {
            let p = d.dir.path().join(format!("f{i}"));
            std::fs::write(&p, "x").unwrap();
            p.to_str().unwrap().to_string()
        })
        .collect();
    let mut args = vec!["--name", "burst", "--", "cat"];
    args.extend(files.iter().map(String::as_str));
    let out = d.run(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.wait_for("run_end of burst", |e| e["kind"] == "run_end" && e["run_name"] == "burst");
    // Drop counts are reported once a second.
    let ev = d.wait_for("a kernel_ringbuf drop report", |e| e["kind"] == "drop" && e["stage"] == "kernel_ringbuf");
    let seen = ev.iter().filter(|e| e["kind"] == "open" && files.iter().any(|f| e["path"] == f.as_str())).count() as u64;
    let dropped: u64 = ev
        .iter()
        .filter(|e| e["kind"] == "drop" && e["stage"] == "kernel_ringbuf")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    eprintln!("300 opens: {seen} events written, {dropped} reported lost in the kernel ring buffer");
    assert!(dropped > 0);
    assert!(seen + dropped >= 300, "unaccounted events: {seen} seen + {dropped} dropped < 300");
}

/// Syscall tracepoints slow every syscall of the host (the kernel's tracing work flag is set on
/// every task while any is enabled): the daemon attaches them only while a run exists, before
/// the run's first instruction, and detaches them once the last run is gone.
#[test]
fn syscall_tracepoints_are_attached_only_while_a_run_exists() {
    require_root!();
    let d = Daemon::start();
    let syscall_links = |d: &Daemon| -> Vec<String> {
        d.pinned_links().into_iter().filter(|l| l.starts_with("tp-ag_enter_") || l.starts_with("tp-ag_exit_")).collect()
    };
    let status = |d: &Daemon| -> Value { serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap() };
    let links = d.pinned_links();
    assert!(links.contains(&"tp-ag_exec".to_string()) && links.contains(&"tp-ag_exit".to_string()), "{links:?}");
    assert_eq!(syscall_links(&d), Vec::<String>::new(), "no run yet: {links:?}");
    assert_eq!(status(&d)["syscall_tracepoints_attached"], false);

    // The run's very first open is seen: the hooks are in before its command starts.
    let mut run = d.spawn_run(&["--name", "first", "--", "sh", "-c", "cat /etc/hostname; sleep 600"]);
    let ev = d.wait_for("open of /etc/hostname", |e| {
        e["kind"] == "open" && e["run_name"] == "first" && e["path"] == "/etc/hostname"
    });
    assert!(ev.iter().any(|e| e["kind"] == "exec" && e["run_name"] == "first" && e["comm"] == "cat"));
    // 17 for opens (their exits only), execs, connects, sends and sockets, and 4 at the exit
    // of clone, clone3, fork and vfork (a fork the pids controller refused in a run,
    // `[limits] processes`).
    assert_eq!(syscall_links(&d).len(), 21, "{:?}", d.pinned_links());
    assert_eq!(status(&d)["syscall_tracepoints_attached"], true);

    // A policied run that needs it (no seccomp filter of its launcher stands in for it with
    // on_violation = "kill") brings the syscall check; a run without a policy started next
    // to it must not take it away.
    let policy =
        PolicyFile::new("some").on_violation("kill").read(["/usr", "/lib", "/lib64", "/etc"]).exec(["/usr/bin/"]).write_to(d.dir.path());
    let mut policied = d.spawn_run(&["--policy", policy.to_str().unwrap(), "--name", "policied", "--", "sleep", "600"]);
    let ev = d.wait_for("exec of the policied sleep", |e| e["kind"] == "exec" && e["run_name"] == "policied");
    assert_eq!(status(&d)["syscall_check_attached"], true);
    let out = d.run(&["--name", "plain", "--", "true"]);
    assert!(out.status.success());
    assert_eq!(status(&d)["syscall_check_attached"], true, "an unpolicied run detached the syscall check");
    let out = d.cli(&["kill", &run_id(&ev, "policied")]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), policied.stderr());
    assert_eq!(policied.wait_exit(std::time::Duration::from_secs(10)), Some(137));

    let id = run_id(&ev, "first");
    assert!(d.cli(&["kill", &id]).status.success());
    assert_eq!(run.wait_exit(std::time::Duration::from_secs(10)), Some(137));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !syscall_links(&d).is_empty() {
        assert!(std::time::Instant::now() < deadline, "still attached after the run: {:?}", d.pinned_links());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status(&d)["syscall_tracepoints_attached"], false);
    assert!(d.pinned_links().contains(&"tp-ag_exec".to_string()));
}
