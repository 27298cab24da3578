//! Evidence a reviewer can trust: the events log is a hash chain signed by checkpoints
//! (`agent-guard log verify` names the first line edited, deleted, reordered or cut off, and a
//! checkpoint whose signature fails), it goes on across rotation and restart, and one run's
//! evidence bundle (`agent-guard evidence RUN`) verifies, and stops verifying once any of its
//! events is edited.
use std::{
    path::{Path, PathBuf},
    process::Output,
};

use agent_guard_tests::{layout, require_root, s, stdout, Daemon, PolicyFile};
use serde_json::Value;

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `agent-guard log verify --pubkey PUB FILES...` (no files: the daemon's own log).
fn verify(d: &Daemon, pubkey: Option<&Path>, files: &[&Path]) -> Output {
    let mut args = vec!["log".to_string(), "verify".to_string()];
    if let Some(p) = pubkey {
        args.extend(["--pubkey".to_string(), s(p)]);
    }
    args.extend(files.iter().map(|f| s(f)));
    d.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Asserts the verification failed at `file:line` with `what` in its message.
fn fails_at(o: &Output, file: &Path, line: usize, what: &str) {
    let err = stderr_of(o);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(err.starts_with(&format!("{}:{line}: ", file.display())), "expected {}:{line}: {what}, got: {err}", file.display());
    assert!(err.contains(what), "expected {what}: {err}");
}

/// The host's public key, as `agent-guard log pubkey` prints it, in a file.
fn pubkey_file(d: &Daemon) -> PathBuf {
    let o = d.cli(&["log", "pubkey"]);
    assert!(o.status.success(), "{o:?}");
    let key = stdout(&o);
    assert_eq!(key.trim().len(), 64, "{key}");
    let p = d.dir.path().join("host.pub");
    std::fs::write(&p, key).unwrap();
    p
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(str::to_string).collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    std::fs::write(p, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

/// A few runs of the probe under a policy that refuses the secret: allowed events and a
/// violation in the log.
fn some_runs(d: &Daemon, n: usize) {
    let l = layout();
    let pol = PolicyFile::for_probe("chain").read([&l.ws]).write_to(d.dir.path());
    for i in 0..n {
        d.probe_run(&pol, &format!("chain-{i}"), &["read", &s(&l.ws.join("ok.txt"))]);
    }
    let o = d.probe_run(&pol, "chain-denied", &["read", &s(&l.outside.join("secret.txt"))]);
    assert!(stdout(&o).contains("EACCES") || stdout(&o).contains("EPERM") || !o.status.success(), "{o:?}");
    d.wait_for("the run_end of chain-denied", |e| e["kind"] == "run_end" && e["run_name"] == "chain-denied");
}

#[test]
fn a_real_runs_log_verifies_and_each_tampering_is_named_at_its_line() {
    require_root!();
    let mut d = Daemon::start_with("log_checkpoint_lines = 8\n");
    some_runs(&d, 3);
    let pubkey = pubkey_file(&d);
    let o = d.cli(&["status"]);
    assert!(stdout(&o).contains(std::fs::read_to_string(&pubkey).unwrap().trim()), "status prints the key: {}", stdout(&o));
    d.stop();
    let key = std::fs::read_to_string(d.dir.path().join("data/log-signing.key")).unwrap();
    assert_eq!(key.trim().len(), 64);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(d.dir.path().join("data/log-signing.key")).unwrap().permissions().mode() & 0o777, 0o600);

    let log = lines(&d.log);
    let ev: Vec<Value> = log.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "{e}");
        assert_eq!(e["chain"].as_str().map(str::len), Some(64), "{e}");
    }
    let checkpoints: Vec<usize> = (0..ev.len()).filter(|i| ev[*i]["kind"] == "checkpoint").collect();
    assert!(checkpoints.len() >= 2, "a checkpoint per 8 lines: {log:#?}");
    assert_eq!(ev.last().unwrap()["kind"], "checkpoint", "the daemon signs the log when it stops");
    assert!(ev.iter().any(|e| e["verdict"] == "deny"), "a violation: {log:#?}");

    // Intact: with the host's key (from data_dir) and with --pubkey.
    let o = verify(&d, None, &[]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).starts_with(&format!("intact: {} lines (seq 1..{})", log.len(), log.len())), "{}", stdout(&o));
    let o = verify(&d, Some(&pubkey), &[&d.log]);
    assert!(o.status.success(), "{o:?}");

    let copy = d.dir.path().join("tampered.jsonl");
    let deny = ev.iter().position(|e| e["verdict"] == "deny").unwrap();
    // One byte of a line (the denied path's first letter after the slash).
    let mut t = log.clone();
    let at = t[deny].find("secret.txt").unwrap();
    t[deny].replace_range(at..at + 1, "S");
    write_lines(&copy, &t);
    fails_at(&verify(&d, Some(&pubkey), &[&copy]), &copy, deny + 1, "edited");
    // A line deleted.
    let mut t = log.clone();
    t.remove(deny);
    write_lines(&copy, &t);
    fails_at(&verify(&d, Some(&pubkey), &[&copy]), &copy, deny + 1, "deleted");
    // Two lines swapped.
    let mut t = log.clone();
    t.swap(3, 4);
    write_lines(&copy, &t);
    fails_at(&verify(&d, Some(&pubkey), &[&copy]), &copy, 4, "reordered");
    // The file cut short in the middle of a line.
    let text = std::fs::read(&d.log).unwrap();
    std::fs::write(&copy, &text[..text.len() - 30]).unwrap();
    fails_at(&verify(&d, Some(&pubkey), &[&copy]), &copy, log.len(), "truncated");
    // A checkpoint's signature replaced by another (well-formed) one.
    let cp = checkpoints[0];
    let sig = ev[cp]["signature"].as_str().unwrap();
    let other = ev[checkpoints[1]]["signature"].as_str().unwrap();
    let mut t = log.clone();
    t[cp] = t[cp].replace(sig, other);
    write_lines(&copy, &t);
    fails_at(&verify(&d, Some(&pubkey), &[&copy]), &copy, cp + 1, "bad checkpoint signature");
    // Another key.
    let wrong = d.dir.path().join("wrong.pub");
    std::fs::write(&wrong, format!("{}\n", "ab".repeat(32))).unwrap();
    let o = verify(&d, Some(&wrong), &[&d.log]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    // Garbage, and a key that is not one: errors, not panics.
    std::fs::write(&copy, "hello\n").unwrap();
    fails_at(&verify(&d, Some(&pubkey), &[&copy]), &copy, 1, "not a chained log line");
    std::fs::write(&wrong, "nope\n").unwrap();
    let o = verify(&d, Some(&wrong), &[&d.log]);
    assert!(o.status.code() == Some(1) && stderr_of(&o).contains(&s(&wrong)), "{o:?}");
    // Whole lines cut off the end of the live log: the chain head in data_dir knows.
    write_lines(&d.log, &log[..log.len() - 2]);
    fails_at(&verify(&d, None, &[]), &d.log, log.len() - 1, "truncated");
}

#[test]
fn rotation_and_restarts_keep_one_chain_and_a_gap_is_reported_at_start() {
    require_root!();
    let mut d = Daemon::start_with("events_log_max_bytes = 30000\nevents_log_keep = 50\nlog_checkpoint_lines = 20\n");
    some_runs(&d, 2);
    d.restart();
    some_runs(&d, 2);
    // A crash: no last checkpoint, and the head may lag the log.
    d.kill9();
    d.try_start().unwrap();
    some_runs(&d, 2);
    d.stop();
    let rotated = PathBuf::from(format!("{}.1", d.log.display()));
    assert!(rotated.exists(), "the log rotated");
    let o = verify(&d, None, &[]);
    assert!(o.status.success(), "{o:?}");
    assert!(!stdout(&o).contains(" 1 file(s)") && stdout(&o).starts_with("intact: ") && !stdout(&o).contains("rotated away"), "{}", stdout(&o));
    let all: Vec<Value> = {
        let mut files: Vec<PathBuf> = (1..50).map(|n| PathBuf::from(format!("{}.{n}", d.log.display()))).filter(|p| p.exists()).collect();
        files.reverse();
        files.push(d.log.clone());
        files.iter().flat_map(|f| lines(f)).map(|l| serde_json::from_str(&l).unwrap()).collect()
    };
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "one sequence across files and restarts: {e}");
    }
    assert!(!all.iter().any(|e| e["kind"] == "chain_gap"), "no gap: {all:#?}");

    // Lines lost while the daemon was down: reported at start, and verify points at it.
    let log = lines(&d.log);
    write_lines(&d.log, &log[..log.len() - 3]);
    d.try_start().unwrap();
    let ev = d.wait_for("chain_gap", |e| e["kind"] == "chain_gap");
    let gap = ev.iter().find(|e| e["kind"] == "chain_gap").unwrap();
    assert!(gap["reason"].as_str().unwrap().contains("3 lines are missing"), "{gap}");
    d.stop();
    let o = verify(&d, None, &[]);
    fails_at(&o, &d.log, log.len() - 2, "deleted");
    assert!(stderr_of(&o).contains("the daemon reported this gap at start"), "{}", stderr_of(&o));
}
