//! The event log as a sink: size-based rotation that loses no line, and reopening on SIGHUP
//! (what logrotate needs).
use std::path::{Path, PathBuf};

use agent_guard_tests::{require_root, Daemon, PolicyFile};
use serde_json::Value;

/// events.jsonl and its rotated files, oldest first.
fn log_files(log: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let base = log.file_name()?.to_str()?;
            if name == base {
                return Some((0, p));
            }
            name.strip_prefix(&format!("{base}."))?.parse::<u32>().ok().map(|n| (n, p))
        })
        .collect();
    v.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    v.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn the_log_rotates_by_size_without_losing_a_line_and_reopens_on_sighup() {
    require_root!();
    let d = Daemon::start_with("events_log_max_bytes = 200000\nevents_log_keep = 100");
    let out = d.run(&["--name", "many", "--", "sh", "-c", "for i in $(seq 150); do cat /etc/hostname >/dev/null; done"]);
    assert!(out.status.success(), "{out:?}");
    d.wait_for("run_end", |e| e["kind"] == "run_end" && e["run_name"] == "many");
    let files = log_files(&d.log);
    assert!(files.len() > 3, "rotated: {files:?}");
    let mut cats = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.len() <= 200000, "{} has {} bytes", f.display(), text.len());
        for line in text.lines() {
            let e: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{}: {err}: {line}", f.display()));
            if e["kind"] == "exec" && e["run_name"] == "many" && e["argv"][0] == "cat" {
                cats += 1;
            }
        }
    }
    assert_eq!(cats, 150, "every exec is in some file");

    // logrotate moves the file away and sends SIGHUP: the daemon writes a new one.
    let moved = d.log.with_extension("moved");
    std::fs::rename(&d.log, &moved).unwrap();
    // SAFETY: SIGHUP to our own child daemon, by pid.
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !d.stderr().contains("events_log reopened") {
        assert!(std::time::Instant::now() < deadline, "{}", d.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = d.run(&["--name", "after", "--", "true"]);
    assert!(out.status.success());
    d.wait_for("run_start in the new file", |e| e["kind"] == "run_start" && e["run_name"] == "after");
    assert!(!std::fs::read_to_string(&moved).unwrap().contains("\"after\""));
}

/// A policy for the probe: the workspace readable, one loopback port reachable, ptrace denied.
fn probe_policy(name: &str, l: &agent_guard_tests::Layout, port: u16) -> PolicyFile {
    PolicyFile::for_probe(name).read([&l.ws]).connect([format!("127.0.0.1/32:{port}")]).syscalls_deny(["ptrace"]).capabilities(["CAP_NET_RAW"])
}

#[test]
fn every_kind_of_event_matches_the_published_schema() {
    require_root!();
    use agent_guard_tests::{layout, run_id, s};
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/events.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    // It bites: an exec without its path, and an unknown verdict, are refused.
    let bad: Value = serde_json::json!({"ts":"2026-11-22T01:02:03.123456Z","host":"h","kind":"exec","verdict":"allow",
        "rule":null,"run":null,"run_name":null,"labels":{},"policy":null,"policy_version":null,"argv":[],
        "argv_truncated":false,"path_truncated":false});
    assert!(!validator.is_valid(&bad));
    let mut good = bad.clone();
    good["path"] = "/usr/bin/true".into();
    assert!(!validator.is_valid(&good), "an exec names the layer that decided");
    good["layer"] = "ebpf".into();
    assert!(validator.is_valid(&good));
    good["verdict"] = "maybe".into();
    assert!(!validator.is_valid(&good));
    let d = Daemon::start();
    let l = layout();
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (port, other) = (open.local_addr().unwrap().port(), closed.local_addr().unwrap().port());
    let pol = probe_policy("strict", &l, port).write_to(d.dir.path());
    let secret = s(&l.outside.join("secret.txt"));
    for (name, args) in [
        ("read-ok", vec!["read".to_string(), s(&l.ws.join("ok.txt"))]),
        ("read-secret", vec!["read".into(), secret]),
        ("exec-secret", vec!["execve".into(), s(&l.outside.join("secret.txt"))]),
        ("connect-ok", vec!["connect".into(), format!("127.0.0.1:{port}")]),
        ("connect-no", vec!["connect".into(), format!("127.0.0.1:{other}")]),
        ("udp-no", vec!["udp".into(), format!("127.0.0.1:{other}")]),
        ("raw", vec!["raw".into()]),
        ("ptrace", vec!["ptrace".into()]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        d.probe_run(&pol, name, &args);
    }
    // Monitor mode under a shell: would_deny, with the ancestry inside the run.
    let watch = PolicyFile::new("watch").mode("monitor").write_to(d.dir.path());
    let o = d.run(&["--policy", watch.to_str().unwrap(), "--name", "watched", "--", "sh", "-c", "cat /etc/hostname; true"]);
    assert!(o.status.success(), "{o:?}");
    // A held connect, denied; and freeze, thaw, kill of a run.
    let review = probe_policy("review", &l, port).on_violation("freeze").write_to(d.dir.path());
    let probe = agent_guard_tests::probe();
    let target = format!("127.0.0.1:{other}");
    let held = d.spawn_run(&["--policy", review.to_str().unwrap(), "--name", "held", "--", probe.to_str().unwrap(), "connect", &target]);
    d.wait_for("hold", |e| e["kind"] == "hold" && e["run_name"] == "held");
    assert!(d.cli(&["deny", "held"]).status.success());
    // The launcher cleans up after its command before the guard goes.
    d.wait_for("run_end of held", |e| e["kind"] == "run_end" && e["run_name"] == "held");
    drop(held);
    let sleeper = d.spawn_run(&["--name", "sleeper", "--", "sleep", "60"]);
    d.wait_for("sleeper", |e| e["kind"] == "exec" && e["run_name"] == "sleeper");
    for action in ["freeze", "thaw", "kill"] {
        let o = d.cli(&[action, "sleeper"]);
        assert!(o.status.success(), "{action}: {o:?}");
    }
    drop(sleeper);
    let events = d.wait_for("run_end of sleeper", |e| e["kind"] == "run_end" && e["run_name"] == "sleeper");

    let mut kinds = std::collections::BTreeSet::new();
    for e in &events {
        let errors: Vec<String> = validator.iter_errors(e).map(|err| format!("{} at {}", err, err.instance_path)).collect();
        assert!(errors.is_empty(), "{errors:#?}\n{e:#}");
        kinds.insert(e["kind"].as_str().unwrap().to_string());
    }
    for k in ["exec", "open", "connect", "sendmsg", "syscall", "socket", "exit", "run_start", "run_end", "policy_reload", "hold", "freeze", "thaw", "kill"] {
        assert!(kinds.contains(k), "no {k} event was checked: {kinds:?}");
    }
    // Both layers were checked: the secret's read was refused by the run's Landlock layer.
    for layer in ["ebpf", "landlock"] {
        assert!(events.iter().any(|e| e["layer"] == layer), "no event decided by {layer}");
    }
    // And its exec: an exec event with the error.
    assert!(events.iter().any(|e| e["kind"] == "exec" && e["run_name"] == "exec-secret" && e["error"] == "EACCES"), "no refused exec");
    // The ancestry of a violation: the process, then its parents inside the run.
    let cat = events
        .iter()
        .find(|e| e["run_name"] == "watched" && e["verdict"] == "would_deny" && e["kind"] == "exec" && e["argv"][0] == "cat")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(cat["ancestry"][0]["argv"][0], "cat", "{cat:#}");
    assert_eq!(cat["ancestry"][1]["argv"][0], "sh", "{cat:#}");
    assert_eq!(cat["ancestry"].as_array().unwrap().len(), 2, "the launcher is outside the run: {cat:#}");
    let _ = run_id(&events, "watched");
}
