//! Control-plane owners and limits on the real daemon: who may act on which run (its starter,
//! another control_group member, an admin_group member, root), who may apply policies, the
//! connection limit, and a 100 MB request line without a newline.
use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    process::Output,
    time::{Duration, Instant},
};

use agent_guard_tests::{
    cgroup2_mount, cgroup_frozen, daemons::Delegated, privileged, stderr, stdout,
    users::{TestGroup, TestUser},
    Daemon,
};
use serde_json::Value;

fn ok(what: &str, out: &Output) -> String {
    assert!(out.status.success(), "{what}: expected success, got {:?}: {}{}", out.status, stdout(out), stderr(out));
    stdout(out)
}

fn refused(what: &str, out: &Output, needle: &str) {
    assert!(!out.status.success(), "{what}: expected a refusal, got success: {}", stdout(out));
    let err = stderr(out);
    assert!(err.contains(needle), "{what}: the refusal should say {needle:?}:\n{err}");
}

/// The run ids in `ps --json` output.
fn ps_ids(out: &Output) -> Vec<String> {
    let v: Value = serde_json::from_str(&ok("ps", out)).unwrap();
    v.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn runs_belong_to_their_starter_admins_and_root_policies_to_admins_and_root() {
    if !privileged("roles") {
        return;
    }
    let ctl = TestGroup::new("ctl");
    let adm = TestGroup::new("adm");
    let starter = TestUser::new("starter", &[&ctl]);
    let other = TestUser::new("other", &[&ctl]);
    let admin = TestUser::new("admin", &[&ctl, &adm]);
    let outsider = TestUser::new("outsider", &[]);
    let del = Delegated::start(&format!("control_group = \"{}\"\nadmin_group = \"{}\"", ctl.name, adm.name));
    let d = del.daemon();
    // The test daemon's directory is private by default: open it so the users reach the
    // socket and the config (the socket file itself stays 0660 root:control_group).
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    del.delegate(starter.uid, starter.gid);
    let cfg = d.config.clone();

    // The starter, a control_group member, starts a run itself.
    let mut run = del.spawn_run(starter.command(
        &agent_guard_tests::binary(),
        &["--config", cfg.to_str().unwrap(), "run", "--name", "mine", "--", "sleep", "600"],
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        let v: Value = serde_json::from_str(&ok("ps as root", &d.cli(&["ps", "--json"]))).unwrap();
        if let Some(r) = v.as_array().unwrap().iter().find(|r| r["name"] == "mine" && r["processes"].as_u64() >= Some(1)) {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "the starter's run is not in ps after 30 s: {v:#}\nlauncher: {}\n{}", run.stderr(), d.stderr());
        std::thread::sleep(Duration::from_millis(50));
    };
    let id = row["id"].as_str().unwrap().to_string();
    let dir = cgroup2_mount().join(row["cgroup"].as_str().unwrap().trim_start_matches('/'));
    run.cgroup = Some(dir.clone());
    let start = d.wait_for("run_start", |e| e["kind"] == "run_start" && e["run"] == id.as_str());
    let start = start.iter().find(|e| e["kind"] == "run_start" && e["run"] == id.as_str()).unwrap();
    assert_eq!(start["requested_by_uid"], starter.uid, "{start}");
    // The state record keeps the starter (a restarted daemon knows it).
    let record = std::fs::read_to_string(d.dir.path().join(format!("state/runs/{id}.json"))).unwrap();
    assert!(record.contains(&format!("\"started_by_uid\":{}", starter.uid)), "{record}");

    let owner_msg =
        format!("run {id} was started by uid {}; acting on it needs that uid, root or admin_group \"{}\"", starter.uid, adm.name);

    // Another member: does not see it, may not touch it, and its refusals say who may.
    assert!(ps_ids(&other.cli(&cfg, &["ps", "--json"])).is_empty(), "another member sees others' runs");
    for verb in ["freeze", "thaw", "kill", "approve", "deny"] {
        refused(&format!("{verb} by another member"), &other.cli(&cfg, &[verb, &id]), &owner_msg);
    }
    refused("freeze by name, another member", &other.cli(&cfg, &["freeze", "mine"]), &owner_msg);
    refused("events --run, another member", &other.cli(&cfg, &["events", "--run", &id]), &owner_msg);
    let all = ok("events, another member", &other.cli(&cfg, &["events", "--json"]));
    assert!(!all.contains(&id), "another member sees the run's events:\n{all}");
    assert!(!cgroup_frozen(&dir), "a refused freeze froze the run");
    assert!(dir.exists(), "a refused kill removed the run");

    // The starter: sees it, watches it, freezes and thaws it; approve and deny reach the hold
    // check (the run is not held).
    assert_eq!(ps_ids(&starter.cli(&cfg, &["ps", "--json"])), vec![id.clone()]);
    let ev = ok("events --run, starter", &starter.cli(&cfg, &["events", "--run", &id, "--json"]));
    assert!(ev.contains("\"run_start\""), "{ev}");
    let ev = ok("events, starter", &starter.cli(&cfg, &["events", "--json"]));
    assert!(ev.lines().all(|l| l.contains(&id)), "the starter sees events of other runs or none:\n{ev}");
    ok("freeze, starter", &starter.cli(&cfg, &["freeze", &id]));
    assert!(cgroup_frozen(&dir));
    ok("thaw, starter", &starter.cli(&cfg, &["thaw", "mine"]));
    assert!(!cgroup_frozen(&dir));
    for verb in ["approve", "deny"] {
        refused(&format!("{verb}, starter"), &starter.cli(&cfg, &[verb, &id]), "is not held");
    }
    let ev = d.wait_for("the starter's freeze", |e| e["kind"] == "freeze" && e["run"] == id.as_str());
    let e = ev.iter().find(|e| e["kind"] == "freeze" && e["run"] == id.as_str()).unwrap();
    assert_eq!(e["requested_by_uid"], starter.uid);

    // Policies are for admins and root: not for members, not even the starter; nor a run
    // under a policy file that binds host cgroups.
    let policy = d.write_policy("p", "name = \"roles-p\"\nmode = \"monitor\"\n");
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = policy.to_str().unwrap();
    let admins = format!("needs root or admin_group \"{}\"", adm.name);
    refused("policy apply, starter", &starter.cli(&cfg, &["policy", "apply", p]), &admins);
    refused("policy apply, another member", &other.cli(&cfg, &["policy", "apply", p]), &admins);
    let binder = d.write_policy("b", "name = \"roles-bind\"\nmode = \"monitor\"\n[bind]\ncgroups = [\"nothing-here-*\"]\n");
    std::fs::set_permissions(&binder, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = starter.command(&agent_guard_tests::binary(), &["--config", cfg.to_str().unwrap(), "run", "--policy", binder.to_str().unwrap(), "--", "true"]);
    del.in_launch(&mut c);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    refused("run under a binding policy file, starter", &out, &admins);
    assert!(!ok("policy list", &d.cli(&["policy", "list"])).contains("roles-bind"));

    // An admin_group member: sees and acts on every run, applies policies.
    assert_eq!(ps_ids(&admin.cli(&cfg, &["ps", "--json"])), vec![id.clone()]);
    ok("events --run, admin", &admin.cli(&cfg, &["events", "--run", &id]));
    ok("freeze, admin", &admin.cli(&cfg, &["freeze", &id]));
    ok("thaw, admin", &admin.cli(&cfg, &["thaw", &id]));
    ok("policy apply, admin", &admin.cli(&cfg, &["policy", "apply", p]));
    // Root likewise.
    assert_eq!(ps_ids(&d.cli(&["ps", "--json"])), vec![id.clone()]);
    ok("policy apply, root", &d.cli(&["policy", "apply", p]));
    ok("freeze, root", &d.cli(&["freeze", &id]));
    ok("thaw, root", &d.cli(&["thaw", &id]));

    // Outside control_group: no connection at all (the file refuses it first).
    refused("ps, outsider", &outsider.cli(&cfg, &["ps"]), "permission denied");

    // The starter ends its own run.
    ok("kill, starter", &starter.cli(&cfg, &["kill", &id]));
    assert!(!dir.exists());
    assert_eq!(run.wait_exit(Duration::from_secs(10)), Some(137), "{}", run.stderr());
}

/// One request line, one response line, on a raw connection.
fn ping(s: &mut UnixStream) -> Value {
    s.write_all(b"{\"v\":1,\"op\":\"ping\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&*s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// What the daemon says on a connection before closing it.
fn answer(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

#[test]
fn at_most_control_max_connections_are_served_at_once() {
    if !privileged("connection_limit") {
        return;
    }
    let d = Daemon::start_with("control_max_connections = 3");
    let sock = d.dir.path().join("control.sock");
    let mut held: Vec<UnixStream> = (0..3).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    for s in &mut held {
        assert_eq!(ping(s)["ok"], true);
    }
    // The fourth is answered with an error and closed, whatever it sends.
    let mut fourth = UnixStream::connect(&sock).unwrap();
    let text = answer(&mut fourth);
    assert!(text.contains("too many control connections (control_max_connections = 3)"), "{text:?}");
    let out = d.cli(&["status"]);
    refused("status at the limit", &out, "too many control connections");
    // The ones being served still are.
    assert_eq!(ping(&mut held[0])["ok"], true);
    // One closes: a new connection is served again.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if s.write_all(b"{\"v\":1,\"op\":\"ping\"}\n").is_ok() {
            let mut line = String::new();
            let _ = BufReader::new(&s).read_line(&mut line);
            if line.contains("\"ok\":true") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no connection served 10 s after one closed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// VmRSS and VmHWM of a process, in kB.
fn memory_kb(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_100_mb_line_without_a_newline_is_refused_without_being_buffered() {
    if !privileged("huge_line") {
        return;
    }
    let d = Daemon::start();
    let sock = d.dir.path().join("control.sock");
    // Settle: the first requests fault in what serving them needs.
    for _ in 0..3 {
        ok("status", &d.cli(&["status"]));
    }
    let (rss0, hwm0) = memory_kb(d.pid());
    // Three times: what one costs must not pile up.
    for round in 0..3 {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let chunk = vec![b'x'; 1 << 16];
        let mut sent = 0usize;
        while sent < 100 << 20 {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) => {
                    assert!(
                        matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset),
                        "writing the line: {e}"
                    );
                    break;
                }
            }
        }
        let text = answer(&mut s);
        let (rss1, hwm1) = memory_kb(d.pid());
        eprintln!(
            "100 MB line #{round}: the daemon took {} KiB before closing; VmRSS {rss0} -> {rss1} kB ({:+} kB), \
             VmHWM {hwm0} -> {hwm1} kB ({:+} kB)",
            sent >> 10,
            rss1 as i64 - rss0 as i64,
            hwm1 as i64 - hwm0 as i64
        );
        assert!(text.contains("\"ok\":false") && text.contains("request longer than"), "{text:?}");
        assert!(sent < 16 << 20, "the daemon read {sent} bytes of the line instead of giving up at the limit");
        assert!(rss1 < rss0 + 6 * 1024, "VmRSS grew from {rss0} to {rss1} kB");
        assert!(hwm1 < hwm0 + 8 * 1024, "VmHWM grew from {hwm0} to {hwm1} kB: the line was buffered");
    }
    // The daemon goes on serving.
    ok("status after", &d.cli(&["status"]));
}
