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

/// A valid Ed25519 public key that is not the host's (RFC 8032, test 1).
const OTHER_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

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
    std::fs::write(&wrong, format!("{OTHER_KEY}\n")).unwrap();
    fails_at(&verify(&d, Some(&wrong), &[&d.log]), &d.log, checkpoints[0] + 1, "not the trusted key");
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
    assert!(all.iter().any(|e| e["kind"] == "checkpoint"));

    // Lines lost while the daemon was down: reported at start, and verify points at it.
    let log = lines(&d.log);
    write_lines(&d.log, &log[..log.len() - 3]);
    d.try_start().unwrap();
    let ev = d.wait_for("chain_gap", |e| e["kind"] == "chain_gap");
    let gap = ev.iter().find(|e| e["kind"] == "chain_gap").unwrap();
    // Every line, checkpoints and the gap report too, is an event of the published schema.
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/events.schema.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for e in all.iter().chain(&ev) {
        let errors: Vec<String> = validator.iter_errors(e).map(|err| format!("{err} at {}", err.instance_path)).collect();
        assert!(errors.is_empty(), "{errors:#?}\n{e:#}");
    }
    assert!(gap["reason"].as_str().unwrap().contains("3 lines are missing"), "{gap}");
    d.stop();
    let o = verify(&d, None, &[]);
    fails_at(&o, &d.log, log.len() - 2, "deleted");
    assert!(stderr_of(&o).contains("the daemon reported this gap at start"), "{}", stderr_of(&o));
}

/// `agent-guard run` of the probe in the background.
fn start_probe(d: &Daemon, pol: &Path, name: &str, args: &[&str]) -> std::process::Child {
    let probe = agent_guard_tests::probe();
    d.command(&["run", "--policy", &s(pol), "--name", name, "--", &s(&probe)])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Unpacks a bundle with the system's tar into `dir` (its one directory inside).
fn unpack(bundle: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let o = std::process::Command::new("tar").arg("xzf").arg(bundle).arg("-C").arg(dir).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    std::fs::read_dir(dir).unwrap().flatten().next().unwrap().path()
}

/// Packs `inner` (a bundle's directory) again as `out`.
fn repack(inner: &Path, out: &Path) {
    let o = std::process::Command::new("tar")
        .arg("czf")
        .arg(out)
        .arg("-C")
        .arg(inner.parent().unwrap())
        .arg(inner.file_name().unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn a_runs_bundle_with_a_violation_and_a_hold_verifies_and_fails_once_edited() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let pol = PolicyFile::for_probe("review").on_violation("freeze").read([&l.ws]).write_to(d.dir.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let run = start_probe(&d, &pol, "evidence-run", &["connect-retry", &target, "50", "100"]);
    d.wait_for("held", |e| e["kind"] == "hold" && e["hold"] == "held" && e["run_name"] == "evidence-run");
    let id = agent_guard_tests::run_id(&d.events(), "evidence-run");

    // While it is held: `show` tells the story so far, and a bundle of the live run is signed
    // (the daemon writes a checkpoint on request).
    let o = d.cli(&["show", "evidence-run"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("**held for review**: connect tcp"), "{}", stdout(&o));
    let live = d.dir.path().join("live.tar.gz");
    let o = d.cli(&["evidence", &id, "-o", &s(&live)]);
    assert!(o.status.success(), "{o:?}");
    let pubkey = pubkey_file(&d);
    let o = d.cli(&["evidence", "verify", &s(&live), "--pubkey", &s(&pubkey)]);
    assert!(o.status.success() && stdout(&o).contains("intact: run"), "{o:?}");

    assert!(d.cli(&["approve", &id]).status.success());
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    d.wait_for("run_end", |e| e["kind"] == "run_end" && e["run"] == id.as_str());

    let bundle = d.dir.path().join("bundle.tar.gz");
    let o = d.cli(&["evidence", "evidence-run", "-o", &s(&bundle)]);
    assert!(o.status.success(), "{o:?}");
    let o = d.cli(&["evidence", "verify", &s(&bundle), "--pubkey", &s(&pubkey)]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains(&format!("intact: run {id}")) && stdout(&o).contains("policy texts 1 of 1"), "{}", stdout(&o));
    // Without --pubkey: the bundle's own key, and it says so.
    let o = d.cli(&["evidence", "verify", &s(&bundle)]);
    assert!(o.status.success() && stdout(&o).contains("the bundle's own key"), "{o:?}");

    let inner = unpack(&bundle, &d.dir.path().join("x"));
    let summary = std::fs::read_to_string(inner.join("summary.md")).unwrap();
    assert!(summary.contains("**HOLD** connect tcp") && summary.contains("rule network.connect"), "the violation: {summary}");
    assert!(summary.contains("**hold approved** (once) by uid 0"), "the answer: {summary}");
    assert!(summary.contains("**started**") && summary.contains("**ended**, exit status 0"), "{summary}");
    let o = d.cli(&["show", &id]);
    assert_eq!(stdout(&o), summary, "show prints the bundle's summary");
    let holds: Value = serde_json::from_str(&std::fs::read_to_string(inner.join("holds.json")).unwrap()).unwrap();
    assert_eq!(holds[0]["answer"]["answer"], "approved", "{holds:#}");
    assert_eq!(holds[0]["attempts"][0]["what"], format!("tcp {target}"), "{holds:#}");
    let run_json: Value = serde_json::from_str(&std::fs::read_to_string(inner.join("run.json")).unwrap()).unwrap();
    assert_eq!((run_json["run"].as_str(), run_json["exit_status"].as_i64()), (Some(id.as_str()), Some(0)), "{run_json:#}");
    assert!(std::fs::read_dir(inner.join("policies")).unwrap().count() == 1);
    let events = lines(&inner.join("events.jsonl"));
    assert!(events.iter().all(|l| l.contains("\"seq\":") && l.contains("\"chain\":\"")));
    // The bundle's lines are the log's lines.
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(events.iter().all(|l| log.lines().any(|x| x == l)));

    // Any event edited (each of them, one digit of its time): named at its line.
    let tampered = d.dir.path().join("tampered.tar.gz");
    for (i, line) in events.iter().enumerate() {
        let mut t = events.clone();
        let at = line.find("\"ts\":\"").unwrap() + 7;
        t[i].replace_range(at..at + 1, if &line[at..at + 1] == "9" { "8" } else { "9" });
        write_lines(&inner.join("events.jsonl"), &t);
        repack(&inner, &tampered);
        let o = d.cli(&["evidence", "verify", &s(&tampered), "--pubkey", &s(&pubkey)]);
        let err = stderr_of(&o);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        assert!(err.contains(&format!("events.jsonl:{}: edited", i + 1)), "line {}: {err}", i + 1);
    }
    // An event left out, or the summary edited.
    let mut t = events.clone();
    t.remove(1);
    write_lines(&inner.join("events.jsonl"), &t);
    repack(&inner, &tampered);
    let o = d.cli(&["evidence", "verify", &s(&tampered), "--pubkey", &s(&pubkey)]);
    assert!(o.status.code() == Some(1) && stderr_of(&o).contains("summary.md: edited"), "{o:?}");
    write_lines(&inner.join("events.jsonl"), &events);
    std::fs::write(inner.join("summary.md"), summary.replace("approved", "denied")).unwrap();
    repack(&inner, &tampered);
    let o = d.cli(&["evidence", "verify", &s(&tampered), "--pubkey", &s(&pubkey)]);
    assert!(o.status.code() == Some(1) && stderr_of(&o).contains("summary.md: edited"), "{o:?}");
    // Another host's key, and things that are not bundles: errors, never panics.
    let wrong = d.dir.path().join("wrong.pub");
    std::fs::write(&wrong, format!("{OTHER_KEY}\n")).unwrap();
    let o = d.cli(&["evidence", "verify", &s(&bundle), "--pubkey", &s(&wrong)]);
    assert!(o.status.code() == Some(1) && stderr_of(&o).contains("checkpoints.jsonl:"), "{o:?}");
    let o = d.cli(&["evidence", "verify", &s(&d.log)]);
    assert!(o.status.code() == Some(1) && stderr_of(&o).contains("not an evidence bundle"), "{o:?}");
    let o = d.cli(&["evidence", "no-such-run"]);
    assert!(o.status.code() == Some(1) && stderr_of(&o).contains("no events of a run"), "{o:?}");
}
