//! What a user sees of a run's violations: the line `agent-guard run` prints when its run
//! ends with violations, and `events --violations | --tail N | --since WHEN`.
use std::path::PathBuf;

use agent_guard_tests::{layout, require_root, s, status, stdout, Daemon, Layout, PolicyFile};

/// A policy named `name` that lets the probe (and `exec`) run and read the layout's workspace.
fn probe_policy(d: &Daemon, l: &Layout, name: &str, exec: &[&str]) -> PathBuf {
    PolicyFile::for_probe(name).read([&l.ws]).exec(exec).write_to(d.dir.path())
}

#[test]
fn a_run_with_violations_says_so_at_the_end_and_events_filter_them() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let policy = probe_policy(&d, &l, "viol", &[]);
    // Two refused reads (outside the policy), one allowed: the probe goes on after each.
    let secret = s(&l.outside.join("secret.txt"));
    let script = format!(
        "{p} read {secret}; {p} read {secret}; {p} read {ok}; true",
        p = s(&agent_guard_tests::probe()),
        ok = s(&l.ws.join("ok.txt"))
    );
    let sh_policy = probe_policy(&d, &l, "viol-sh", &["/usr/bin/"]);
    let o = d.run(&["--policy", sh_policy.to_str().unwrap(), "--name", "viol", "--", "/bin/sh", "-c", &script]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(status(&o), 0, "{o:?}");
    assert_eq!(stdout(&o).matches("err EACCES").count(), 2, "{o:?}");
    let events = d.wait_for("run_end", |e| e["kind"] == "run_end" && e["run_name"] == "viol");
    let run = agent_guard_tests::run_id(&events, "viol");
    let line = err.lines().find(|l| l.contains("ended with")).unwrap_or_else(|| panic!("no summary line: {err}"));
    assert!(line.contains(&format!("run {run} ended with 2 violations (2 files.read)")), "{line}");
    assert!(line.contains(&format!("open {secret}")), "{line}");
    assert!(line.contains(&format!("agent-guard events --run {run} --violations")), "{line}");
    // A run without violations prints no such line.
    let o = d.probe_run(&policy, "clean", &["read", &s(&l.ws.join("ok.txt"))]);
    assert_eq!(status(&o), 0, "{o:?}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("ended with"), "{o:?}");

    let json = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut v = vec!["events", "--json", "--run", &run];
        v.extend_from_slice(args);
        let o = d.cli(&v);
        assert_eq!(status(&o), 0, "{o:?}");
        stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let all = json(&[]);
    assert!(all.iter().any(|e| e["verdict"] == "allow"), "{all:#?}");
    let violations = json(&["--violations"]);
    assert_eq!(violations.len(), 2, "{violations:#?}");
    assert!(violations.iter().all(|e| e["verdict"] == "deny" && e["path"] == secret.as_str()), "{violations:#?}");
    let last = json(&["--tail", "1"]);
    assert_eq!(last.len(), 1, "{last:#?}");
    assert_eq!(last[0], *all.last().unwrap());
    assert!(json(&["--since", "2099-01-01T00:00:00Z"]).is_empty());
    assert_eq!(json(&["--since", "1h"]).len(), all.len());
    let o = d.cli(&["events", "--since", "yesterday-ish"]);
    assert_eq!(status(&o), 2, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("neither a duration"), "{o:?}");
}

/// An agent names a file so that its path, printed raw, would forge a line of evidence and
/// rewrite the responder's terminal: human output escapes it.
#[test]
fn human_output_escapes_control_characters_in_what_a_run_chose() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let evil = l.outside.join("x\n2026-01-01T00:00:00.000000Z open    r-000000 pid=1 ok.txt (read)\x1b[2K");
    std::fs::write(&evil, "secret\n").unwrap();
    let policy = probe_policy(&d, &l, "esc", &[]);
    let o = d.probe_run(&policy, "esc\x1b]0;pwned\x07", &["read", &s(&evil)]);
    assert_eq!(stdout(&o).trim(), "err EACCES", "{o:?}");
    let events = d.wait_for("the denied open", |e| e["kind"] == "open" && e["verdict"] == "deny");
    let run = events.iter().find(|e| e["kind"] == "open" && e["verdict"] == "deny").unwrap()["run"].as_str().unwrap().to_string();
    let o = d.cli(&["events", "--run", &run, "--violations"]);
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 1, "one event, one line: {text}");
    assert!(!text.contains('\x1b'), "{text:?}");
    assert!(text.contains("x\\n2026-01-01T00:00:00.000000Z open"), "{text}");
    assert!(text.contains("\\x1b[2K"), "{text}");
    // The JSON keeps the exact bytes (a machine reads it).
    let o = d.cli(&["events", "--run", &run, "--violations", "--json"]);
    let e: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(e["path"], s(&evil).as_str());
    let o = d.cli(&["ps"]);
    assert!(!stdout(&o).contains('\x1b'), "{o:?}");
}
