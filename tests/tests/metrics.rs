//! `/metrics` of a real daemon: violations, would-deny, events, runs, policy versions and
//! freezes counted from what the real kernel programs reported, scraped over real HTTP, and
//! the exposition and the alert rules checked by promtool.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent_guard_tests::{
    binary, cgroup2_mount, layout, probe, require_root, run_id, s, skip_test, status, stderr, stdout, Daemon, Layout, PolicyFile,
};
use serde_json::Value;

const KILLED: i32 = 128 + 9;

/// The address the daemon printed: `metrics on http://ADDR/metrics`.
fn metrics_addr(d: &Daemon) -> String {
    let err = d.stderr();
    err.lines()
        .find_map(|l| l.split("metrics on http://").nth(1)?.split("/metrics").next().map(str::to_string))
        .unwrap_or_else(|| panic!("the daemon did not say where its metrics are:\n{err}"))
}

/// One HTTP/1.1 request; (status, head, body).
fn http(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).expect("the response is UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {raw:?}"));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad status line: {head}"));
    (code, head.to_string(), body.to_string())
}

/// A scrape: the text and its samples.
struct Scrape {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses `name{k="v",...} value` (label values may hold escaped quotes and backslashes).
fn sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    chars.next().filter(|(_, q)| *q == '"')?;
                    let mut val = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => val.push(match chars.next()?.1 {
                                'n' => '\n',
                                c => c,
                            }),
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), val);
                }
                c => key.push(c),
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

impl Scrape {
    /// Sum of the series of `name` whose labels include `labels`; None when there is none.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    fn val(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The label sets of the series of `name`.
    fn series(&self, name: &str) -> Vec<&BTreeMap<String, String>> {
        self.samples.iter().filter(|(n, _, _)| n == name).map(|(_, l, _)| l).collect()
    }

    /// The agent_guard_* lines, for the test's output.
    fn ours(&self) -> String {
        self.text.lines().filter(|l| l.starts_with("agent_guard_")).collect::<Vec<_>>().join("\n")
    }
}

fn scrape(addr: &str) -> Scrape {
    let (code, head, text) = http(addr, "GET", "/metrics");
    assert_eq!(code, 200, "{head}\n{text}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    let samples = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(|l| sample(l).unwrap_or_else(|| panic!("unparsable sample {l:?}"))).collect();
    Scrape { text, samples }
}

/// Scrapes until `pred` holds (20 s at most).
fn wait_scrape(d: &Daemon, addr: &str, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sc = scrape(addr);
        if pred(&sc) {
            return sc;
        }
        assert!(Instant::now() < deadline, "{what}: not after 20 s; last scrape:\n{}\ndaemon:\n{}", sc.ours(), d.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// promtool, if there (tests skip without it: a failure under CI=true).
fn promtool() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
}

/// Why a test needing promtool skips.
const NO_PROMTOOL: &str =
    "promtool is not installed (`deploy/setup-build.sh --test` installs it from Debian's prometheus package)";

/// `promtool ARGS...` with `input` on stdin; (success, output).
fn run_promtool(promtool: &Path, args: &[&str], input: &str) -> (bool, String) {
    let mut c = Command::new(promtool).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    (o.status.success(), format!("{}{}", stdout(&o), stderr(&o)))
}

/// A policy letting the probe start and read `ws` (tests/src/bin/agprobe.rs).
fn policy(name: &str, l: &Layout) -> PolicyFile {
    PolicyFile::for_probe(name).read([&l.ws])
}

/// The `ps --json` row of the run named `name`, once it has a process.
fn ps_row(d: &Daemon, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = d.cli(&["ps", "--json"]);
        let rows: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if let Some(r) = rows.as_array().and_then(|r| r.iter().find(|r| r["name"] == name && r["processes"].as_u64() >= Some(1))) {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "run {name} not in ps: {o:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_violation_shows_in_the_scrape_and_the_scrape_passes_promtool() {
    require_root!();
    // The eBPF layer alone (no Landlock layer): the README sample shows a kill.
    let d = Daemon::start_with("landlock = false");
    let addr = metrics_addr(&d);
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "the bound port, not 0: {addr}");

    let before = scrape(&addr);
    assert_eq!(before.get("agent_guard_backend_info", &[("backend", "tracepoint")]), Some(1.0), "{}", before.text);
    assert_eq!(before.get("agent_guard_runs_active", &[]), Some(0.0));
    for stage in ["kernel_ringbuf", "kernel_pending", "userspace_queue", "follower", "sink"] {
        assert_eq!(before.get("agent_guard_events_dropped_total", &[("stage", stage)]), Some(0.0), "{stage}: {}", before.text);
    }
    assert!(before.val("process_resident_memory_bytes", &[]) > 0.0, "process metrics: {}", before.text);
    assert!(before.get("agent_guard_violations_total", &[]).is_none(), "{}", before.text);

    // A real violation: reading outside the policy kills the probe in the kernel.
    let l = layout();
    let pol = policy("metered", &l).write_to(d.dir.path());
    let secret = s(&l.outside.join("secret.txt"));
    let o = d.probe_run(&pol, "violator", &["read", &secret]);
    assert_eq!(status(&o), KILLED, "{o:?}");
    let kill = d.wait_for("the kill", |e| e["run_name"] == "violator" && e["kind"] == "open" && e["verdict"] == "kill");
    let kill = kill.iter().find(|e| e["run_name"] == "violator" && e["kind"] == "open" && e["verdict"] == "kill").unwrap();
    let version = kill["policy_version"].as_str().unwrap().to_string();

    let violation = [("policy", "metered"), ("kind", "open"), ("action", "kill")];
    let after = wait_scrape(&d, &addr, "the violation, the run's end", |sc| {
        sc.val("agent_guard_violations_total", &violation) >= 1.0
            && sc.val("agent_guard_runs_total", &[("policy", "metered"), ("outcome", "killed")]) >= 1.0
    });
    eprintln!("scrape after a violation:\n{}", after.ours());
    assert_eq!(after.get("agent_guard_violations_total", &violation), Some(1.0));
    assert!(after.val("agent_guard_events_total", &[("kind", "open")]) > before.val("agent_guard_events_total", &[("kind", "open")]));
    assert!(after.val("agent_guard_events_total", &[("kind", "exec")]) >= 1.0);
    assert_eq!(after.get("agent_guard_events_total", &[("kind", "run_start")]), Some(1.0));
    assert_eq!(after.get("agent_guard_events_total", &[("kind", "policy_reload")]), Some(1.0));
    assert_eq!(after.get("agent_guard_policy_reloads_total", &[("result", "ok")]), Some(1.0));
    assert_eq!(after.get("agent_guard_policy_info", &[("policy", "metered"), ("version", &version)]), Some(1.0), "{}", after.ours());
    assert_eq!(after.get("agent_guard_runs_active", &[]), Some(0.0));
    assert!(after.get("agent_guard_would_deny_total", &[]).is_none(), "enforce mode: {}", after.ours());
    // No run ids, paths or pids as labels.
    let run = run_id(&d.events(), "violator");
    for bad in [run.as_str(), secret.as_str(), "violator"] {
        assert!(!after.text.contains(bad), "{bad} in the scrape:\n{}", after.text);
    }

    // The endpoint: other paths and methods are refused clearly.
    assert_eq!(http(&addr, "GET", "/").0, 200);
    assert_eq!(http(&addr, "GET", "/nope").0, 404);
    let (code, head, _) = http(&addr, "POST", "/metrics");
    assert_eq!(code, 405, "{head}");
    assert_eq!(http(&addr, "HEAD", "/metrics").0, 200);
    // Garbage is answered (or the connection closed), and the next scrape still works.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"\x00\xffNOT HTTP AT ALL\r\n\r\n").unwrap();
    let mut junk = Vec::new();
    let _ = c.read_to_end(&mut junk);
    assert!(junk.is_empty() || junk.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&junk));
    assert_eq!(scrape(&addr).get("agent_guard_violations_total", &violation), Some(1.0));

    let Some(promtool) = promtool() else { skip_test!("{NO_PROMTOOL}") };
    let (ok, out) = run_promtool(&promtool, &["check", "metrics"], &after.text);
    assert!(ok, "promtool check metrics on a live scrape:\n{out}\n{}", after.text);
}

#[test]
fn monitor_mode_counts_would_deny_and_no_violation() {
    require_root!();
    let d = Daemon::start();
    let addr = metrics_addr(&d);
    let l = layout();
    let pol = policy("watched", &l).mode("monitor").write_to(d.dir.path());
    let o = d.probe_run(&pol, "watched-1", &["read", &s(&l.outside.join("secret.txt"))]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok TOPSECRET"), "monitor mode allows: {o:?}");
    let sc = wait_scrape(&d, &addr, "would_deny", |sc| {
        sc.val("agent_guard_would_deny_total", &[("policy", "watched"), ("kind", "open")]) >= 1.0
            && sc.val("agent_guard_runs_total", &[("policy", "watched"), ("outcome", "ok")]) >= 1.0
    });
    assert!(sc.get("agent_guard_violations_total", &[("policy", "watched")]).is_none(), "{}", sc.ours());
}

#[test]
fn freezes_are_observed_in_the_histogram() {
    require_root!();
    let d = Daemon::start();
    let addr = metrics_addr(&d);
    let count = |sc: &Scrape| sc.val("agent_guard_freeze_duration_seconds_count", &[]);
    assert_eq!(count(&scrape(&addr)), 0.0);

    // A responder's freeze.
    let mut run = d.spawn_run(&["--name", "icy", "--", "sh", "-c", "sleep 600 & wait"]);
    let row = ps_row(&d, "icy");
    run.cgroup = Some(cgroup2_mount().join(row["cgroup"].as_str().unwrap().trim_start_matches('/')));
    let sc = wait_scrape(&d, &addr, "the run active", |sc| sc.val("agent_guard_runs_active", &[]) == 1.0);
    assert_eq!(count(&sc), 0.0);
    let o = d.cli(&["freeze", "icy"]);
    assert!(o.status.success(), "{o:?}");
    let sc = wait_scrape(&d, &addr, "the freeze", |sc| count(sc) == 1.0);
    let took = sc.val("agent_guard_freeze_duration_seconds_sum", &[]);
    assert!(took > 0.0 && took < 10.0, "{}", sc.ours());
    assert_eq!(sc.get("agent_guard_freeze_duration_seconds_bucket", &[("le", "+Inf")]), Some(1.0));
    assert_eq!(sc.get("agent_guard_freeze_duration_seconds_bucket", &[("le", "10")]), Some(1.0));
    // Thawing is not a freeze; a kill ends the run as killed.
    assert!(d.cli(&["thaw", "icy"]).status.success());
    assert!(d.cli(&["kill", "icy"]).status.success());
    assert_eq!(run.wait_exit(Duration::from_secs(10)), Some(KILLED));
    let sc = wait_scrape(&d, &addr, "the run's end", |sc| {
        sc.val("agent_guard_runs_total", &[("policy", ""), ("outcome", "killed")]) == 1.0 && sc.val("agent_guard_runs_active", &[]) == 0.0
    });
    assert_eq!(count(&sc), 1.0, "{}", sc.ours());

    // A hold for review freezes the run too; the held open is a violation with action hold.
    let l = layout();
    let pol = policy("review", &l).on_violation("freeze").write_to(d.dir.path());
    let probe = probe();
    let mut held = Command::new(binary())
        .args(["--config", d.config.to_str().unwrap(), "run", "--policy", pol.to_str().unwrap(), "--name", "held", "--"])
        .arg(&probe)
        .args(["read", &s(&l.outside.join("secret.txt"))])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    d.wait_for("the hold", |e| e["kind"] == "hold" && e["hold"] == "held" && e["run_name"] == "held");
    let sc = wait_scrape(&d, &addr, "the hold's freeze", |sc| count(sc) == 2.0);
    assert_eq!(sc.get("agent_guard_violations_total", &[("policy", "review"), ("kind", "open"), ("action", "hold")]), Some(1.0), "{}", sc.ours());
    assert!(sc.get("agent_guard_violations_total", &[("kind", "hold")]).is_none(), "{}", sc.ours());
    let id = run_id(&d.events(), "held");
    let o = d.cli(&["deny", &id]);
    assert!(o.status.success(), "{o:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(held.id() as i32, libc::SIGKILL) };
            panic!("the held run did not end after deny");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = held.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(KILLED), "{o:?}");
    // The denial is a hold event, not a second violation.
    let sc = wait_scrape(&d, &addr, "the held run's end", |sc| sc.val("agent_guard_runs_total", &[("policy", "review")]) == 1.0);
    assert_eq!(sc.val("agent_guard_violations_total", &[("policy", "review")]), 1.0, "{}", sc.ours());
}

#[test]
fn policy_info_follows_reloads() {
    require_root!();
    let d = Daemon::start();
    let addr = metrics_addr(&d);
    let l = layout();
    let file = policy("versioned", &l).write_to(d.dir.path());
    let apply = || {
        let o = d.cli(&["policy", "apply", file.to_str().unwrap()]);
        (o.status.success(), format!("{}{}", stdout(&o), stderr(&o)))
    };
    let versions = |sc: &Scrape| -> Vec<String> {
        sc.series("agent_guard_policy_info").iter().filter(|l| l["policy"] == "versioned").map(|l| l["version"].clone()).collect()
    };
    let reloads = |sc: &Scrape, result: &str| sc.val("agent_guard_policy_reloads_total", &[("result", result)]);
    // The version of the n-th successful load, from its policy_reload event.
    let version_of = |n: usize| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ev: Vec<Value> = d.events().into_iter().filter(|e| e["kind"] == "policy_reload" && e["result"] == "ok").collect();
            if let Some(e) = ev.get(n) {
                return e["policy_version"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no load {n}: {ev:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    assert!(apply().0);
    let v1 = version_of(0);
    let sc = scrape(&addr);
    assert_eq!(versions(&sc), vec![v1.clone()]);
    assert_eq!(reloads(&sc, "ok"), 1.0);

    policy("versioned", &l).read(["/srv"]).write_as(&file);
    let (ok, out) = apply();
    assert!(ok, "{out}");
    let v2 = version_of(1);
    assert_ne!(v1, v2);
    let sc = scrape(&addr);
    assert_eq!(versions(&sc), vec![v2.clone()], "the replaced version's series is gone: {}", sc.ours());
    assert_eq!(reloads(&sc, "ok"), 2.0);

    assert!(apply().0);
    assert_eq!(reloads(&scrape(&addr), "unchanged"), 1.0);

    std::fs::write(&file, "name = \"versioned\"\nmode = \"sometimes\"\n").unwrap();
    let (ok, out) = apply();
    assert!(!ok, "{out}");
    let sc = scrape(&addr);
    assert_eq!(reloads(&sc, "error"), 1.0);
    assert_eq!(versions(&sc), vec![v2], "the version in force stays: {}", sc.ours());
}

#[test]
fn a_metrics_listen_in_use_stops_the_daemon_at_start() {
    require_root!();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut d = Daemon::configure(&binary(), "agent-guard-test-busy", &format!("metrics_listen = \"127.0.0.1:{port}\""));
    // Not ready: it exited (a daemon that got ready, or hung, fails the test).
    let Err(refused) = d.try_start() else { panic!("the daemon started with its metrics port taken:\n{}", d.stderr()) };
    let err = refused.stderr.clone();
    let status = refused.status.unwrap_or_else(|| panic!("the daemon started with its metrics port taken:\n{err}"));
    assert!(!status.success());
    assert!(err.contains(&format!("binding metrics_listen 127.0.0.1:{port}")) && err.contains("in use"), "{err}");
    assert!(!err.contains(": ready in "), "the daemon never got ready: {err}");
}

#[test]
fn the_alert_rules_pass_promtool() {
    let Some(promtool) = promtool() else { skip_test!("{NO_PROMTOOL}") };
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus-alerts.yml");
    let (ok, out) = run_promtool(&promtool, &["check", "rules", rules.to_str().unwrap()], "");
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

#[test]
fn kernel_losses_are_counted_by_stage() {
    require_root!();
    // One page of ring buffer holds a few open events: a burst of 300 opens overflows it.
    let d = Daemon::start_with("events_ring_bytes = 4096");
    let addr = metrics_addr(&d);
    let files: Vec<String> = (0..300)
        .map(|i| {
            let p = d.dir.path().join(format!("f{i}"));
            std::fs::write(&p, "x").unwrap();
            s(&p)
        })
        .collect();
    let mut args = vec!["--name", "burst", "--", "cat"];
    args.extend(files.iter().map(String::as_str));
    let o = d.run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    d.wait_for("a kernel_ringbuf drop report", |e| e["kind"] == "drop" && e["stage"] == "kernel_ringbuf");
    // Reports come once a second: wait until the scrape and the log agree on every stage.
    let logged = |stage: &str| -> f64 {
        d.events().iter().filter(|e| e["kind"] == "drop" && e["stage"] == stage).map(|e| e["count"].as_u64().unwrap() as f64).sum()
    };
    let sc = wait_scrape(&d, &addr, "drop counts as logged", |sc| {
        ["kernel_ringbuf", "kernel_pending", "userspace_queue"]
            .iter()
            .all(|st| sc.val("agent_guard_events_dropped_total", &[("stage", st)]) == logged(st))
    });
    assert!(sc.val("agent_guard_events_dropped_total", &[("stage", "kernel_ringbuf")]) > 0.0, "{}", sc.ours());
    assert!(sc.val("agent_guard_events_total", &[("kind", "drop")]) >= 1.0, "{}", sc.ours());
}
