//! Hold for review (`on_violation = "freeze"`): the offending process is stopped in the kernel
//! at the violation, the daemon freezes the run and records the evidence, and a responder
//! approves or denies from the CLI; no answer within hold_timeout denies.
use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use agent_guard_tests::{layout, probe, require_root, run_id, s, stdout, Daemon, Layout, PolicyFile};
use serde_json::Value;

/// The "review" policy: the probe reads `ws`; anything else is held for review.
fn policy(l: &Layout) -> PolicyFile {
    PolicyFile::for_probe("review").on_violation("freeze").read([&l.ws])
}

/// A daemon (its config plus `extra`), the workspace, the "review" policy written, and a
/// loopback listener the policy does not allow (`target`).
struct Review {
    d: Daemon,
    l: Layout,
    pol: std::path::PathBuf,
    target: String,
    /// Kept open for the test's length.
    _listener: TcpListener,
}

fn review(extra: &str) -> Review {
    let d = Daemon::start_with(extra);
    let l = layout();
    let pol = policy(&l).write_to(d.dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    Review { d, l, pol, target, _listener: listener }
}

/// `agent-guard run` of the probe in the background, its output captured.
fn start(d: &Daemon, pol: &Path, name: &str, args: &[&str]) -> Child {
    let probe = probe();
    Command::new(agent_guard_tests::binary())
        .arg("--config")
        .arg(&d.config)
        .args(["run", "--policy", pol.to_str().unwrap(), "--name", name, "--", probe.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `agent-guard run` of any command in the background, its output captured.
fn start_cmd(d: &Daemon, pol: &Path, name: &str, argv: &[&str]) -> Child {
    Command::new(agent_guard_tests::binary())
        .arg("--config")
        .arg(&d.config)
        .args(["run", "--policy", pol.to_str().unwrap(), "--name", name, "--"])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the run to finish (at most 20 s; then it is ended and the test fails).
fn finish(mut c: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let o = c.wait_with_output().unwrap();
            panic!("the run did not finish: {o:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.wait_with_output().unwrap()
}

/// The `held` event of the run named `name`.
fn held(d: &Daemon, name: &str) -> Value {
    let ev = d.wait_for("hold", |e| e["kind"] == "hold" && e["hold"] == "held" && e["run_name"] == name);
    ev.into_iter().find(|e| e["kind"] == "hold" && e["hold"] == "held" && e["run_name"] == name).unwrap()
}

fn state_of(pid: u64) -> String {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines().find_map(|l| l.strip_prefix("State:")).unwrap_or("").trim().to_string()
}

/// One request on the control socket, as a harness would send it; the response.
fn raw(sock: &Path, req: Value) -> Value {
    use std::io::{BufRead, Write};
    let mut c = std::os::unix::net::UnixStream::connect(sock).unwrap();
    writeln!(c, "{req}").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(c).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn a_held_connect_is_frozen_until_approved_and_the_retry_goes_through() {
    require_root!();
    let Review { d, l: _l, pol, target, _listener } = review("");
    let run = start(&d, &pol, "approve-me", &["connect-retry", &target, "50", "100"]);

    let h = held(&d, "approve-me");
    let id = run_id(&d.events(), "approve-me");
    let dir = d.cgroup_root.join(&id);
    assert_eq!(h["verdict"], "hold");
    assert_eq!(h["rule"], "network.connect");
    assert_eq!(h["attempts"][0]["kind"], "connect");
    assert_eq!(h["attempts"][0]["what"], format!("tcp {target}"));
    assert!(h["held_argv"][1] == "connect-retry", "{h:#}");
    assert_eq!(h["ancestry"][0]["pid"], h["tgid"], "the held process first: {h:#}");
    assert_eq!(h["ancestry"][0]["exe"], s(&probe()), "{h:#}");
    assert!(h["freeze_ms"].as_f64().is_some(), "{h:#}");
    // Stopped in the kernel and frozen with its run.
    let pid = h["tgid"].as_u64().unwrap();
    assert!(std::fs::read_to_string(dir.join("cgroup.events")).unwrap().contains("frozen 1"));
    let st = state_of(pid);
    assert!(st.starts_with('T') || st.starts_with('t'), "stopped: {st}");
    // It stays held: nothing runs on.
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::fs::read_to_string(dir.join("cgroup.events")).unwrap().contains("frozen 1"));
    // `ps` says so, and what it waits for; `thaw` is not the way out of a hold.
    let o = d.cli(&["ps", "--json"]);
    let runs: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    let r = runs.as_array().unwrap().iter().find(|r| r["id"] == id.as_str()).unwrap_or_else(|| panic!("{runs:#}"));
    assert_eq!(r["state"], "held", "{r:#}");
    assert_eq!(r["violations"], 1, "the held connect, once (the hold record is not another): {r:#}");
    let why = r["held"].as_str().unwrap();
    assert!(why.contains(&format!("connect tcp {target}")) && why.contains("network.connect"), "{why}");
    let o = d.cli(&["thaw", &id]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("approve"), "{o:?}");

    // An approval approves exactly what the responder reviewed: a count that is not the
    // hold's approves nothing, and a control client that does not say what it reviewed is
    // refused.
    let o = d.cli(&["approve", "--attempts", "2", &id]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("nothing approved"), "{o:?}");
    let sock = d.dir.path().join("control.sock");
    let r = raw(&sock, serde_json::json!({"v": 2, "op": "approve", "run": id}));
    assert!(r["ok"] == false && r["error"].as_str().unwrap().contains("reviewed"), "{r}");
    let r = raw(&sock, serde_json::json!({"v": 2, "op": "approve", "run": id, "hold": 1, "attempts": 3}));
    assert!(r["ok"] == false && r["error"].as_str().unwrap().contains("nothing approved"), "{r}");
    assert!(std::fs::read_to_string(dir.join("cgroup.events")).unwrap().contains("frozen 1"), "still held");

    let o = d.cli(&["approve", "--attempts", "1", &id]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains(&format!("1. connect tcp {target}")), "the attempt approved is listed: {}", stdout(&o));
    assert!(stdout(&o).contains("approved"), "{}", stdout(&o));
    let out = finish(run);
    let text = stdout(&out);
    assert!(text.contains("attempt 0: EPERM"), "the held connect itself was refused: {text}");
    assert!(text.contains("ok connected on attempt 1"), "the retry went through: {text}");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let ev = d.wait_for("approved", |e| e["kind"] == "hold" && e["hold"] == "approved");
    let a = ev.iter().find(|e| e["kind"] == "hold" && e["hold"] == "approved").unwrap();
    assert_eq!(a["grant"], "once");
    assert_eq!(a["requested_by_uid"], 0);
    let granted = ev.iter().find(|e| e["kind"] == "connect" && e["rule"] == "grant");
    assert!(granted.is_some_and(|g| g["verdict"] == "allow"), "the retry is allowed by the grant: {ev:#?}");
}

#[test]
fn deny_keeps_it_denied_and_a_held_open_never_reaches_the_process() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let pol = policy(&l).write_to(d.dir.path());
    let secret = s(&l.outside.join("secret.txt"));
    let run = start(&d, &pol, "deny-open", &["read", &secret]);
    held(&d, "deny-open");
    let id = run_id(&d.events(), "deny-open");
    let o = d.cli(&["deny", &id]);
    assert!(o.status.success(), "{o:?}");
    let out = finish(run);
    assert_eq!(out.status.code(), Some(137), "the held open ends with its process: {out:?}");
    assert!(!stdout(&out).contains("TOPSECRET"), "{out:?}");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let run = start(&d, &pol, "deny-net", &["connect", &target]);
    held(&d, "deny-net");
    let id = run_id(&d.events(), "deny-net");
    assert!(d.cli(&["deny", &id]).status.success());
    let out = finish(run);
    assert_eq!(stdout(&out).trim(), "err EPERM", "{out:?}");
    let ev = d.wait_for("denied", |e| e["kind"] == "hold" && e["hold"] == "denied" && e["run_name"] == "deny-net");
    assert!(!ev.iter().any(|e| e["rule"] == "grant"), "nothing was granted");
    // Answering a run that is not held says so.
    let o = d.cli(&["approve", "no-such-run"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no active run"), "{o:?}");
}

#[test]
fn an_unanswered_hold_is_denied_at_the_timeout() {
    require_root!();
    let Review { d, l: _l, pol, target, _listener } = review("hold_timeout = \"1s\"");
    let t = Instant::now();
    let run = start(&d, &pol, "late", &["connect", &target]);
    let out = finish(run);
    assert_eq!(stdout(&out).trim(), "err EPERM", "{out:?}");
    assert!(t.elapsed() >= Duration::from_secs(1), "held for the timeout first: {:?}", t.elapsed());
    let ev = d.wait_for("timeout", |e| e["kind"] == "hold" && e["hold"] == "timeout");
    let e = ev.iter().find(|e| e["kind"] == "hold" && e["hold"] == "timeout").unwrap();
    assert_eq!(e["verdict"], "deny");
    assert!(e["held_ms"].as_u64().unwrap() >= 1000, "{e:#}");
}

#[test]
fn a_hold_survives_a_daemon_restart() {
    require_root!();
    let Review { mut d, l: _l, pol, target, _listener } = review("");
    let run = start(&d, &pol, "across", &["connect-retry", &target, "50", "100"]);
    held(&d, "across");
    let id = run_id(&d.events(), "across");
    d.kill9();
    d.restart();
    assert!(d.stderr().contains("still is"), "{}", d.stderr());
    let o = d.cli(&["ps", "--json"]);
    let runs: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    let r = runs.as_array().unwrap().iter().find(|r| r["id"] == id.as_str()).unwrap_or_else(|| panic!("{runs:#}"));
    assert_eq!(r["state"], "held", "{r:#}");
    let o = d.cli(&["approve", &id]);
    assert!(o.status.success(), "{o:?}");
    let out = finish(run);
    assert!(stdout(&out).contains("ok connected on attempt 1"), "{out:?}");
}

#[test]
fn a_held_process_resumed_behind_the_daemons_back_is_killed() {
    require_root!();
    let Review { d, l: _l, pol, target, _listener } = review("");
    let run = start(&d, &pol, "sneaky", &["connect-retry", &target, "50", "100"]);
    let h = held(&d, "sneaky");
    let id = run_id(&d.events(), "sneaky");
    let dir = d.cgroup_root.join(&id);
    // What an accomplice inside the run (or a tracer) could do: continue it and thaw the
    // cgroup without the daemon. Its first syscall is its last.
    let pid = h["tgid"].as_u64().unwrap() as i32;
    // SAFETY: plain kill(2) on the held probe, inside the run cgroup this test's daemon made.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::fs::write(dir.join("cgroup.freeze"), "0").unwrap();
    let out = finish(run);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert!(!stdout(&out).contains("ok connected"), "{out:?}");
}

#[test]
fn a_run_a_responder_froze_stays_frozen_when_its_hold_times_out() {
    require_root!();
    let Review { d, l: _l, pol, target, _listener } = review("hold_timeout = \"1s\"");
    let run = start(&d, &pol, "kept", &["connect", &target]);
    held(&d, "kept");
    let id = run_id(&d.events(), "kept");
    let o = d.cli(&["freeze", &id]);
    assert!(o.status.success(), "{o:?}");
    d.wait_for("timeout", |e| e["kind"] == "hold" && e["hold"] == "timeout");
    let events = std::fs::read_to_string(d.cgroup_root.join(&id).join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "the responder's freeze stands: {events}");
    let o = d.cli(&["thaw", &id]);
    assert!(o.status.success(), "{o:?}");
    let out = finish(run);
    assert_eq!(stdout(&out).trim(), "err EPERM", "{out:?}");
}

#[test]
fn approving_a_held_open_for_the_run_grants_that_file_to_later_opens() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let pol = policy(&l).exec(["/usr/bin/"]).write_to(d.dir.path());
    let secret = s(&l.outside.join("secret.txt"));
    let probe = s(&probe());
    let script = format!("{probe} read {secret}; {probe} read {secret}");
    let run = start_cmd(&d, &pol, "granted", &["sh", "-c", &script]);
    held(&d, "granted");
    let id = run_id(&d.events(), "granted");
    let o = d.cli(&["approve", "--for-run", &id]);
    assert!(o.status.success(), "{o:?}");
    let out = finish(run);
    assert_eq!(stdout(&out).matches("ok TOPSECRET").count(), 2, "the held open went on, the second was granted: {out:?}");
    let ev = d.wait_for("the granted open", |e| e["kind"] == "open" && e["rule"] == "grant" && e["path"] == secret.as_str());
    assert_eq!(ev.iter().filter(|e| e["kind"] == "hold" && e["hold"] == "held").count(), 1, "held once only");
}
