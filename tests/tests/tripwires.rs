//! Tripwires on the real kernel: `[decoys]` (a decoy opened freezes the run, in monitor mode
//! too), `decoy plant`, and `[limits]` (per-run budgets counted in the kernel: a crossing is a
//! `limit` event and, by default, a hold; `processes` is the pids controller's cap).
use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use agent_guard_tests::{layout, probe, require_root, run_id, s, stdout, Daemon, PolicyFile};
use serde_json::Value;

/// `agent-guard run` of the probe in the background, its output captured.
fn start(d: &Daemon, pol: &Path, name: &str, args: &[&str]) -> Child {
    Command::new(agent_guard_tests::binary())
        .arg("--config")
        .arg(&d.config)
        .args(["run", "--policy", pol.to_str().unwrap(), "--name", name, "--", probe().to_str().unwrap()])
        .args(args)
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
    let is = |e: &Value| e["kind"] == "hold" && e["hold"] == "held" && e["run_name"] == name;
    d.wait_for("hold", is).into_iter().find(is).unwrap()
}

fn frozen(d: &Daemon, id: &str) -> bool {
    std::fs::read_to_string(d.cgroup_root.join(id).join("cgroup.events")).unwrap_or_default().contains("frozen 1")
}

fn stopped(pid: u64) -> bool {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let st = st.lines().find_map(|l| l.strip_prefix("State:")).unwrap_or("").trim().to_string();
    st.starts_with('T') || st.starts_with('t')
}

#[test]
fn reading_a_decoy_in_monitor_mode_freezes_the_run_with_a_decoy_event() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let decoy = l.ws.join(".env.production");
    std::fs::write(&decoy, "API_KEY=fake\n").unwrap();
    // Monitor mode, and the workspace readable: the rest of the policy would let it be.
    // Without the tripwire the read goes through unnoticed: nothing to hold.
    let plain = PolicyFile::for_probe("plain").mode("monitor").read([&l.ws]).write_to(d.dir.path());
    let o = d.probe_run(&plain, "untripped", &["read", &s(&decoy)]);
    assert_eq!(stdout(&o).trim(), "ok API_KEY=fake", "{o:?}");
    let pol = PolicyFile::for_probe("watch").mode("monitor").read([&l.ws]).decoy_files([&decoy]).write_to(d.dir.path());
    let run = start(&d, &pol, "tripped", &["read", &s(&decoy)]);

    let h = held(&d, "tripped");
    assert_eq!(h["reason"], "decoy", "{h:#}");
    assert_eq!(h["rule"], "decoys.files", "{h:#}");
    assert_eq!(h["attempts"][0]["kind"], "open", "{h:#}");
    assert!(h["attempts"][0]["what"].as_str().unwrap().starts_with(&s(&decoy)), "{h:#}");
    let id = run_id(&d.events(), "tripped");
    assert!(frozen(&d, &id), "the run is frozen");
    assert!(stopped(h["tgid"].as_u64().unwrap()), "the reader is stopped");
    let ev = d.events();
    let open = ev.iter().find(|e| e["kind"] == "open" && e["run_name"] == "tripped" && e["path"] == s(&decoy).as_str()).unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!((open["verdict"].as_str(), open["rule"].as_str()), (Some("decoy"), Some("decoys.files")), "{open:#}");
    assert_eq!((open["severity"].as_str(), h["severity"].as_str()), (Some("critical"), Some("critical")), "{open:#} {h:#}");
    // It stays held.
    std::thread::sleep(Duration::from_millis(300));
    assert!(frozen(&d, &id));

    // Denied: the reader, which holds the decoy open, ends.
    let o = d.cli(&["deny", &id]);
    assert!(o.status.success(), "{o:?}");
    let out = finish(run);
    assert!(!stdout(&out).contains("API_KEY"), "the content never reached the process: {out:?}");
    let ev = d.wait_for("denied", |e| e["kind"] == "hold" && e["hold"] == "denied");
    let denied = ev.iter().find(|e| e["kind"] == "hold" && e["hold"] == "denied").unwrap();
    assert_eq!(denied["reason"], "decoy", "{denied:#}");
    assert!(!ev.iter().any(|e| e["kind"] == "hold" && e["run_name"] == "untripped"), "{ev:#?}");
    let m = metrics(&d);
    assert!(m.contains("agent_guard_violations_total{action=\"decoy\",kind=\"open\",policy=\"watch\"} 1"), "{m}");
    conforms(&d);
}

/// Every event of the log matches deploy/events.schema.json.
fn conforms(d: &Daemon) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/events.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for e in d.events() {
        let errors: Vec<String> = validator.iter_errors(&e).map(|err| format!("{err} at {}", err.instance_path)).collect();
        assert!(errors.is_empty(), "{errors:?} in {e:#}");
    }
}

/// The daemon's `/metrics` text.
fn metrics(d: &Daemon) -> String {
    use std::io::{Read, Write};
    let err = d.stderr();
    let addr = err
        .lines()
        .find_map(|l| l.split("metrics on http://").nth(1)?.split("/metrics").next().map(str::to_string))
        .unwrap_or_else(|| panic!("no metrics address:\n{err}"));
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    write!(c, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn a_connect_to_a_decoy_host_is_refused_and_holds_the_run() {
    require_root!();
    let d = Daemon::start();
    let (l, target) = listener();
    l.set_nonblocking(true).unwrap();
    // Every loopback port is allowed: only the tripwire stands in the way.
    let pol = PolicyFile::for_probe("canary").connect(["127.0.0.1/32:1-65535"]).decoy_hosts([&target]).write_to(d.dir.path());
    let run = start(&d, &pol, "caller", &["connect", &target]);
    let h = held(&d, "caller");
    assert_eq!((h["reason"].as_str(), h["rule"].as_str()), (Some("decoy"), Some("decoys.hosts")), "{h:#}");
    assert_eq!(h["attempts"][0]["what"], format!("tcp {target}"), "{h:#}");
    let id = run_id(&d.events(), "caller");
    assert!(frozen(&d, &id));
    let ev = d.events();
    let c = ev.iter().find(|e| e["kind"] == "connect" && e["run_name"] == "caller").unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!((c["verdict"].as_str(), c["rule"].as_str()), (Some("decoy"), Some("decoys.hosts")), "{c:#}");
    let o = d.cli(&["deny", &id]);
    assert!(o.status.success(), "{o:?}");
    let out = finish(run);
    assert_eq!(stdout(&out).trim(), "err EPERM", "{out:?}");
    assert!(l.accept().is_err(), "no connection reached the decoy host");
    conforms(&d);
}

#[test]
fn a_decoy_written_under_enforce_is_a_decoy_not_a_denial_and_approve_lets_it_go_on() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let decoy = l.outside.join("credentials");
    std::fs::write(&decoy, "[default]\n").unwrap();
    // Outside every allow rule, under on_violation = "deny" (the Landlock layer applies).
    let pol = PolicyFile::for_probe("strict").read([&l.ws]).decoy_files([&decoy]).write_to(d.dir.path());
    let run = start(&d, &pol, "writer", &["write", &s(&decoy)]);
    let h = held(&d, "writer");
    assert_eq!((h["reason"].as_str(), h["rule"].as_str()), (Some("decoy"), Some("decoys.files")), "{h:#}");
    assert!(h["attempts"][0]["what"].as_str().unwrap().contains("write"), "{h:#}");
    let id = run_id(&d.events(), "writer");
    let o = d.cli(&["approve", "--attempts", "1", &id]);
    assert!(o.status.success(), "{o:?}");
    let out = finish(run);
    assert_eq!(stdout(&out).trim(), "ok", "{out:?}");
}

#[test]
fn decoy_plant_creates_what_is_missing_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real/.env.production");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, "REAL_SECRET=keep-me\n").unwrap();
    let aws = tmp.path().join("home/.aws/credentials");
    let pol = PolicyFile::new("decoys").decoy_files([&real, &aws]).write_to(tmp.path());
    let plant = || Command::new(agent_guard_tests::binary()).args(["decoy", "plant", &s(&pol)]).output().unwrap();

    let o = plant();
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    assert!(text.contains(&format!("kept     {}", s(&real))), "{text}");
    assert!(text.contains(&format!("planted  {}", s(&aws))), "{text}");
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "REAL_SECRET=keep-me\n", "the real file is untouched");
    let content = std::fs::read_to_string(&aws).unwrap();
    assert!(content.starts_with("[default]\naws_access_key_id = AKIA") && content.contains("aws_secret_access_key"), "{content}");
    let marker = text.split("marker ").nth(1).unwrap().trim_end_matches([')', '\n']).to_string();
    assert!(marker.starts_with("agdecoy-") && content.contains(&marker), "{marker} in {content}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&aws).unwrap().permissions().mode() & 0o777, 0o600);

    // Again: both exist now, nothing is written.
    std::fs::write(&aws, "changed by its owner\n").unwrap();
    let o = plant();
    assert!(o.status.success() && !stdout(&o).contains("planted"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&aws).unwrap(), "changed by its owner\n");
}

#[test]
fn decoy_hosts_that_are_names_are_refused_with_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let pol = tmp.path().join("p.toml");
    std::fs::write(&pol, "name = \"p\"\n[decoys]\nhosts = [\"203.0.113.7:443\", \"canary.internal.example:443\"]\n[limits]\nprocesses = 0\n").unwrap();
    let o = Command::new(agent_guard_tests::binary()).args(["policy", "check", &s(&pol)]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned() + &stdout(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains(":3:29: decoys.hosts[1]: decoy host \"canary.internal.example:443\" is a name"), "{err}");
    assert!(err.contains(":5:13: limits.processes: 0 is not a budget"), "{err}");
}

/// A loopback listener that accepts everything (kept open for the test).
fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("127.0.0.1:{}", l.local_addr().unwrap().port());
    (l, target)
}

#[test]
fn six_connects_over_a_budget_of_five_hold_the_run_at_the_sixth_and_approve_starts_a_new_window() {
    require_root!();
    let d = Daemon::start();
    let (_l, target) = listener();
    // Without the budget all eight go through.
    let free = PolicyFile::for_probe("free").connect(["127.0.0.1/32:1-65535"]).write_to(d.dir.path());
    let o = d.probe_run(&free, "free", &["connect-n", &target, "8"]);
    assert_eq!(stdout(&o).matches(": ok").count(), 8, "{o:?}");
    let pol = PolicyFile::for_probe("budget").connect(["127.0.0.1/32:1-65535"]).limit("connects_per_minute", 5).write_to(d.dir.path());
    let run = start(&d, &pol, "chatty", &["connect-n", &target, "8"]);

    let h = held(&d, "chatty");
    assert_eq!((h["reason"].as_str(), h["rule"].as_str()), (Some("limit"), Some("limits.connects_per_minute")), "{h:#}");
    let what = h["attempts"][0]["what"].as_str().unwrap();
    assert!(what.contains("6 over the budget of 5 in a 60 s window"), "the counter, the limit and the window: {what}");
    assert!(!h["recent_events"].as_array().unwrap().is_empty(), "the last events: {h:#}");
    let ev = d.events();
    let lim = ev.iter().find(|e| e["kind"] == "limit").unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!((lim["rule"].as_str(), lim["verdict"].as_str()), (Some("limits.connects_per_minute"), Some("hold")), "{lim:#}");
    assert_eq!((lim["count"].as_u64(), lim["max"].as_u64(), lim["window_s"].as_u64()), (Some(6), Some(5), Some(60)), "{lim:#}");
    assert_eq!(lim["hook"], "cgroup", "counted by the connect program: {lim:#}");
    assert_eq!((lim["severity"].as_str(), h["severity"].as_str()), (Some("warning"), Some("warning")), "{lim:#}");
    let id = run_id(&ev, "chatty");
    assert!(frozen(&d, &id));
    let ok = ev.iter().filter(|e| e["kind"] == "connect" && e["run_name"] == "chatty" && e["verdict"] == "allow").count();
    assert_eq!(ok, 5, "five connects went through before the hold: {ev:#?}");

    let m = metrics(&d);
    assert!(m.contains("agent_guard_limit_exceeded_total{limit=\"connects_per_minute\",policy=\"budget\"} 1"), "{m}");

    let o = d.cli(&["approve", "--attempts", "1", &id]);
    assert!(o.status.success(), "{o:?}");
    let out = finish(run);
    let text = stdout(&out);
    // The sixth was refused (nothing over the budget without a review); the approval started
    // a new window, in which the seventh and eighth fit.
    assert!(text.contains("connect 5: ok\nconnect 6: EPERM\nconnect 7: ok\nconnect 8: ok"), "{text}");
    d.wait_for("approved", |e| e["kind"] == "hold" && e["hold"] == "approved" && e["reason"] == "limit");
    conforms(&d);
}

#[test]
fn processes_twenty_refuses_the_twenty_first_fork_and_reports_it() {
    require_root!();
    let d = Daemon::start();
    let pol = PolicyFile::for_probe("forks").limit("processes", 20).on_limit("report").write_to(d.dir.path());
    let o = d.probe_run(&pol, "forky", &["fork-n", "40"]);
    // The probe is the first of the run's 20 processes: 19 children, then EAGAIN.
    assert_eq!(stdout(&o).trim(), "ok forked 19 then EAGAIN", "{o:?}");
    let ev = d.wait_for("limit", |e| e["kind"] == "limit" && e["run_name"] == "forky");
    let lim = ev.iter().find(|e| e["kind"] == "limit").unwrap();
    assert_eq!((lim["rule"].as_str(), lim["verdict"].as_str()), (Some("limits.processes"), Some("deny")), "{lim:#}");
    assert_eq!((lim["count"].as_u64(), lim["max"].as_u64()), (Some(21), Some(20)), "{lim:#}");
    assert_eq!(ev.iter().filter(|e| e["kind"] == "limit").count(), 1, "reported once: {ev:#?}");
    conforms(&d);
    // On a hybrid host the run had a cgroup v1 pids group of its own: gone with the run.
    let v1 = Path::new("/sys/fs/cgroup/pids").join(d.cgroup_root.file_name().unwrap());
    assert!(!v1.exists(), "{} is left behind", v1.display());
}

#[test]
fn counters_of_one_run_never_count_anothers() {
    require_root!();
    let d = Daemon::start();
    let (_l, target) = listener();
    let pol = PolicyFile::for_probe("shared")
        .connect(["127.0.0.1/32:1-65535"])
        .limit("connects_per_minute", 5)
        .on_limit("report")
        .write_to(d.dir.path());
    // Two runs of the same policy at once, four connects each: eight in the minute, but never
    // more than five in one run.
    let (a, b) = (start(&d, &pol, "a", &["connect-n", &target, "4"]), start(&d, &pol, "b", &["connect-n", &target, "4"]));
    for run in [a, b] {
        let out = finish(run);
        assert_eq!(stdout(&out).matches(": ok").count(), 4, "{out:?}");
    }
    // A third run crosses its own budget: one event, its own.
    let o = d.probe_run(&pol, "c", &["connect-n", &target, "6"]);
    assert_eq!(stdout(&o).matches(": ok").count(), 6, "report lets it go on: {o:?}");
    let ev = d.wait_for("limit", |e| e["kind"] == "limit");
    let limits: Vec<&Value> = ev.iter().filter(|e| e["kind"] == "limit").collect();
    assert_eq!(limits.len(), 1, "{limits:#?}");
    assert_eq!((limits[0]["run_name"].as_str(), limits[0]["verdict"].as_str()), (Some("c"), Some("allow")), "{:#}", limits[0]);
}

/// The `limit` events of the run named `name`, once there is one.
fn limit_events(d: &Daemon, name: &str) -> Vec<Value> {
    let is = |e: &Value| e["kind"] == "limit" && e["run_name"] == name;
    d.wait_for("limit", is).into_iter().filter(is).collect()
}

#[test]
fn each_budget_counts_its_own_operations() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let ok = s(&l.ws.join("ok.txt"));
    let (_a, ta) = listener();
    let (_b, tb) = listener();
    let (_c, tc) = listener();
    let base = |name: &str| {
        PolicyFile::for_probe(name).mode("monitor").read([&l.ws]).exec(["/usr/bin/true"]).connect(["127.0.0.1/32:1-65535"]).on_limit("report")
    };
    // opens: 30 reads under a budget of 20; the 21st open crosses it.
    let pol = base("opens").limit("opens_per_minute", 20).write_to(d.dir.path());
    let o = d.probe_run(&pol, "opens", &["read-n", &ok, "30"]);
    assert_eq!(stdout(&o).trim(), "ok 30 of 30", "report lets them go on: {o:?}");
    let ev = limit_events(&d, "opens");
    assert_eq!((ev.len(), ev[0]["rule"].as_str(), ev[0]["count"].as_u64()), (1, Some("limits.opens_per_minute"), Some(21)), "{ev:#?}");
    // execs: the probe itself, then three of /usr/bin/true under a budget of 2.
    let pol = base("execs").limit("execs_per_minute", 2).write_to(d.dir.path());
    let o = d.probe_run(&pol, "execs", &["spawn-n", "/usr/bin/true", "3"]);
    assert_eq!(stdout(&o).trim(), "ok spawned 3", "{o:?}");
    let ev = limit_events(&d, "execs");
    assert_eq!((ev[0]["rule"].as_str(), ev[0]["count"].as_u64(), ev[0]["max"].as_u64()), (Some("limits.execs_per_minute"), Some(3), Some(2)), "{ev:#?}");
    // denials: five reads monitor mode would refuse, under a budget of 3.
    let pol = base("denials").limit("denials_per_minute", 3).write_to(d.dir.path());
    let o = d.probe_run(&pol, "denials", &["read-n", &s(&l.outside.join("secret.txt")), "5"]);
    assert_eq!(stdout(&o).trim(), "ok 5 of 5", "{o:?}");
    let ev = limit_events(&d, "denials");
    assert_eq!((ev[0]["rule"].as_str(), ev[0]["count"].as_u64()), (Some("limits.denials_per_minute"), Some(4)), "{ev:#?}");
    // destinations: three listeners, the first one twice, under a budget of 2: the third new one.
    let pol = base("dests").limit("distinct_destinations", 2).write_to(d.dir.path());
    let o = d.probe_run(&pol, "dests", &["connect-all", &ta, &ta, &tb, &tb, &tc]);
    assert_eq!(stdout(&o).matches(": ok").count(), 5, "{o:?}");
    let ev = limit_events(&d, "dests");
    assert_eq!((ev.len(), ev[0]["rule"].as_str(), ev[0]["count"].as_u64()), (1, Some("limits.distinct_destinations"), Some(3)), "{ev:#?}");
    assert!(ev[0].get("window_s").is_none(), "over the run's life: {:#}", ev[0]);
    conforms(&d);
}

#[test]
fn on_limit_kill_ends_the_run_at_the_crossing() {
    require_root!();
    let d = Daemon::start();
    let (_l, target) = listener();
    let pol = PolicyFile::for_probe("strict-budget")
        .connect(["127.0.0.1/32:1-65535"])
        .limit("connects_per_minute", 2)
        .on_limit("kill")
        .write_to(d.dir.path());
    let o = d.probe_run(&pol, "killed", &["connect-n", &target, "5"]);
    assert_eq!(o.status.code(), Some(128 + 9), "{o:?}");
    let text = stdout(&o);
    assert!(text.starts_with("connect 1: ok\nconnect 2: ok\n") && !text.contains("connect 4"), "{text}");
    let ev = limit_events(&d, "killed");
    assert_eq!((ev[0]["verdict"].as_str(), ev[0]["count"].as_u64()), (Some("kill"), Some(3)), "{ev:#?}");
}

#[test]
fn budgets_and_their_counters_survive_a_daemon_restart() {
    require_root!();
    let mut d = Daemon::start();
    let (_l, target) = listener();
    let pol = PolicyFile::for_probe("kept").connect(["127.0.0.1/32:1-65535"]).limit("connects_per_minute", 3).on_limit("report").write_to(d.dir.path());
    // Five connects 700 ms apart; the daemon is killed after the first and started again.
    let run = start(&d, &pol, "steady", &["connect-n", &target, "5", "700"]);
    d.wait_for("first connect", |e| e["kind"] == "connect" && e["run_name"] == "steady");
    d.kill9();
    d.restart();
    let out = finish(run);
    assert_eq!(stdout(&out).matches(": ok").count(), 5, "{out:?}");
    // The fourth crossed the budget: counted in the pinned map across the restart, reported by
    // the new daemon.
    let ev = limit_events(&d, "steady");
    assert_eq!((ev.len(), ev[0]["count"].as_u64(), ev[0]["policy"].as_str()), (1, Some(4), Some("kept")), "{ev:#?}");
}

#[test]
fn a_refused_fork_under_freeze_holds_the_run_until_approved() {
    require_root!();
    let d = Daemon::start();
    // on_limit defaults to freeze.
    let pol = PolicyFile::for_probe("fork-hold").limit("processes", 5).write_to(d.dir.path());
    let run = start(&d, &pol, "forker", &["fork-n", "10"]);
    let h = held(&d, "forker");
    assert_eq!((h["reason"].as_str(), h["rule"].as_str()), (Some("limit"), Some("limits.processes")), "{h:#}");
    assert!(h["attempts"][0]["what"].as_str().unwrap().contains("6 over the budget of 5"), "{h:#}");
    let id = run_id(&d.events(), "forker");
    assert!(frozen(&d, &id));
    assert!(stopped(h["tgid"].as_u64().unwrap()), "the process whose fork was refused is stopped");
    let o = d.cli(&["approve", "--attempts", "1", &id]);
    assert!(o.status.success(), "{o:?}");
    let out = finish(run);
    assert_eq!(stdout(&out).trim(), "ok forked 4 then EAGAIN", "{out:?}");
}
