//! Soak and chaos through the real binary (tests/tests/soak.rs runs a short one, `cargo xtask
//! soak` the long one): many short runs started and ended (some killed with `agent-guard kill`,
//! some frozen and thawed, some held for review and denied), while a run floods events and
//! the policy is re-applied every 100 ms, and the daemon is SIGKILLed at random points and
//! restarted (it adopts the pinned state). Checked at the end, with the reasons in panics:
//! - no wrong verdict: every 10th step a known-denied read is refused and a known-allowed
//!   one works;
//! - every run whose `run_start` is in the log has its `run_end`;
//! - nothing left of a finished run: no cgroup below the managed root, no run record in
//!   state_dir, nothing in `ps`;
//! - the daemon's open descriptors back to where they were and its RSS within
//!   [`RSS_SLACK_KIB`] of it (same daemon, after warm-up vs after the soak);
//! - what the kernel recorded while the daemon was down (probes run inside a live run then)
//!   reaches the log after the restart, unless a `drop` event of a kernel stage says so.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    io::BufRead,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    binary, cgroup_frozen, layout, probe,
    reliability::{leftovers, rss_and_fds},
    s, stdout, BackgroundRun, Daemon, Layout,
};

/// RSS growth allowed between the warm daemon (its recent-events buffer full, see
/// [`FEED_EVENTS`]) and the same daemon after the soak: the allocator's arenas and
/// fragmentation, and event sizes that differ from the warm-up's (longer paths, ancestry of
/// violations). A leak of one event or run record per run would be far more over 2,000 runs.
pub const RSS_SLACK_KIB: u64 = 16 * 1024;
/// Descriptor growth allowed: none (the control connection of the `status` that measures
/// is the same each time).
pub const FD_SLACK: usize = 0;

#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Runs to start (each verdict pair counts two).
    pub runs: usize,
    /// Stop starting new runs after this long, whatever `runs` says.
    pub max_time: Duration,
    /// SIGKILLs of the daemon, at random steps.
    pub daemon_kills: usize,
    /// Kill the daemon while a batch of runs starts and ends (else after the batch ended,
    /// with only the anchor and the flood alive).
    pub kill_in_flight: bool,
    /// The flooding run's pause between rounds of two opens, in milliseconds.
    pub flood_pause_ms: u64,
    pub seed: u64,
}

#[derive(Debug, Default)]
pub struct SoakReport {
    pub runs: u64,
    pub verdict_probes: u64,
    pub killed: u64,
    pub frozen: u64,
    pub held_denied: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub daemon_kills: u64,
    pub probes_while_down: u64,
    pub run_ends: u64,
    pub log_lines: u64,
    pub drops: BTreeMap<String, u64>,
    /// (VmRSS KiB, fds) of the last daemon after warm-up, and after the soak.
    pub warm: (u64, usize),
    pub end: (u64, usize),
    pub elapsed: Duration,
}

/// A tiny xorshift: the soak's choices are reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn policy(l: &Layout, name: &str, on_violation: &str, extra_read: &str) -> String {
    crate::PolicyFile::for_probe(name).on_violation(on_violation).read([&l.ws]).read([extra_read]).to_string()
}

/// The run named `name` in `ps --json`, once it is there in `state` (None after 15 s).
fn wait_ps(d: &Daemon, name: &str, state: &str) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let o = d.cli(&["ps", "--json"]);
        if let Ok(Value::Array(runs)) = serde_json::from_slice::<Value>(&o.stdout) {
            if let Some(r) = runs.into_iter().find(|r| r["name"] == name && r["state"] == state) {
                return Some(r);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn spawn(d: &Daemon, pol: &Path, name: &str, args: &[&str]) -> BackgroundRun {
    let probe = probe();
    let mut v = vec!["--policy", pol.to_str().unwrap(), "--name", name, "--", probe.to_str().unwrap()];
    v.extend_from_slice(args);
    d.spawn_run(&v)
}

/// Runs the probe inside the cgroup `dir` (moved there before exec, as `run` does), with the
/// daemon down; returns its pid.
fn probe_in(dir: &Path, args: &[&str]) -> u32 {
    let procs = dir.join("cgroup.procs");
    let mut cmd = Command::new(probe());
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: the closure only writes to a file before exec.
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, "0"));
    }
    let mut c: Child = cmd.spawn().unwrap();
    let pid = c.id();
    let _ = c.wait();
    pid
}

/// The re-applier: `policy apply` of two versions in turn every 100 ms until `stop`.
fn reloader(config: PathBuf, files: [PathBuf; 2], stop: Arc<AtomicBool>, ok: Arc<AtomicU64>, failed: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let o = Command::new(binary())
                .arg("--config")
                .arg(&config)
                .args(["policy", "apply"])
                .arg(&files[i % 2])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if o.status.success() { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Every line of the log and its rotated files, oldest first, that `keep` wants, parsed.
fn log_lines(log: &Path, keep: impl Fn(&str) -> bool) -> (Vec<Value>, u64) {
    let mut files: Vec<PathBuf> = (1..=10).rev().map(|n| PathBuf::from(format!("{}.{n}", log.display()))).collect();
    files.push(log.to_path_buf());
    let (mut out, mut total) = (Vec::new(), 0);
    for f in files.iter().filter(|f| f.exists()) {
        for line in std::io::BufReader::new(std::fs::File::open(f).unwrap()).lines() {
            let line = line.unwrap();
            total += 1;
            if keep(&line) {
                out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", f.display())));
            }
        }
    }
    (out, total)
}

/// Events the daemon keeps for `events` (agent-guard/src/output/feed.rs BUFFER): RSS is
/// compared once this buffer is full, as it is for any daemon that has run a while.
const FEED_EVENTS: u64 = 10_000;

fn measure(d: &Daemon) -> (u64, usize) {
    // Warm means the recent-events buffer is full (the flood fills it within seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let o = d.cli(&["status", "--json"]);
        let st: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if st["events_buffered"].as_u64().is_some_and(|n| n >= FEED_EVENTS) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same request before each sample, so the daemon is in the same state.
    let _ = d.cli(&["status"]);
    std::thread::sleep(Duration::from_millis(300));
    rss_and_fds(d.pid())
}

pub fn soak(cfg: &SoakConfig) -> SoakReport {
    let t0 = Instant::now();
    let mut rng = Rng(cfg.seed | 1);
    let mut rep = SoakReport::default();
    let mut d = Daemon::start();
    let l = layout();
    let pol = d.write_policy("soak", &policy(&l, "soak", "deny", "/nonexistent-a"));
    let pol_b = d.write_policy("soak-b", &policy(&l, "soak", "deny", "/nonexistent-b"));
    let hold_pol = d.write_policy("soak-hold", &policy(&l, "soak-hold", "freeze", "/nonexistent-a"));
    let o = d.cli(&["policy", "apply", pol.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    // Runs name the loaded policy: its version changes under them every 100 ms.
    let pol_file = pol;
    let pol = PathBuf::from("soak");
    let secret = s(&l.outside.join("secret.txt"));
    let ok = s(&l.ws.join("ok.txt"));
    let ok_s = ok.as_str();

    // The anchor (alive throughout: the probes while the daemon is down run inside it) and
    // the flood.
    let mut anchor = spawn(&d, &pol, "anchor", &["sleep", "100000"]);
    let a = wait_ps(&d, "anchor", "running").expect("the anchor run starts");
    let anchor_dir = crate::cgroup2_mount().join(a["cgroup"].as_str().unwrap().trim_start_matches('/'));
    anchor.cgroup = Some(anchor_dir.clone());
    let pause = cfg.flood_pause_ms.to_string();
    let mut flood = spawn(&d, &pol, "flood", &["loop", ok_s, ok_s, "1000000000", &pause]);
    let f = wait_ps(&d, "flood", "running").expect("the flood run starts");
    flood.cgroup = Some(crate::cgroup2_mount().join(f["cgroup"].as_str().unwrap().trim_start_matches('/')));

    let stop = Arc::new(AtomicBool::new(false));
    let (reloads, reload_failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let re = reloader(d.config.clone(), [pol_file, pol_b], stop.clone(), reloads.clone(), reload_failures.clone());

    let steps = cfg.runs.div_ceil(3).max(10) as u64;
    // In the first 80% of the steps, so the last daemon has time to warm up and be measured.
    // A kill happens at the first batch step at or after each chosen step.
    let mut kill_at: Vec<u64> = (0..cfg.daemon_kills).map(|_| 10 + rng.below((steps * 8 / 10).saturating_sub(10))).collect();
    kill_at.sort_unstable_by(|a, b| b.cmp(a));
    let mut warm_at = 5u64;
    let mut warm_pid = 0;
    let mut down_pids: Vec<u32> = Vec::new();
    let mut step = 0u64;
    let mut n = 0u64;
    let mut name = || {
        n += 1;
        format!("s{n}")
    };
    while rep.runs < cfg.runs as u64 && t0.elapsed() < cfg.max_time {
        step += 1;
        // Only the last daemon is measured (no kill pending): warming up takes seconds.
        if step >= warm_at && warm_pid != d.pid() && kill_at.is_empty() {
            rep.warm = measure(&d);
            warm_pid = d.pid();
        }
        if step % 10 == 0 {
            // The verdict pair.
            let (dn, an) = (name(), name());
            let denied = d.probe_run(&pol, &dn, &["read", &secret]);
            assert!(!denied.status.success() && !stdout(&denied).contains("TOPSECRET"), "step {step}: denied read: {denied:?}");
            let allowed = d.probe_run(&pol, &an, &["read", ok_s]);
            assert_eq!((allowed.status.code(), stdout(&allowed).trim()), (Some(0), "ok hello"), "step {step}: allowed read: {allowed:?}");
            rep.runs += 2;
            rep.verdict_probes += 2;
            continue;
        }
        match step % 10 {
            3 => {
                let nm = name();
                let mut r = spawn(&d, &pol, &nm, &["sleep", "30"]);
                wait_ps(&d, &nm, "running").unwrap_or_else(|| panic!("step {step}: {nm} never ran: {}", r.stderr()));
                let o = d.cli(&["kill", &nm]);
                assert!(o.status.success(), "step {step}: kill {nm}: {o:?}");
                assert_eq!(r.wait_exit(Duration::from_secs(15)), Some(128 + 9), "step {step}: killed run {nm}: {}", r.stderr());
                rep.killed += 1;
                rep.runs += 1;
            }
            6 => {
                let nm = name();
                let mut r = spawn(&d, &pol, &nm, &["sleep", "0.3"]);
                let st = wait_ps(&d, &nm, "running").unwrap_or_else(|| panic!("step {step}: {nm} never ran: {}", r.stderr()));
                let dir = crate::cgroup2_mount().join(st["cgroup"].as_str().unwrap().trim_start_matches('/'));
                r.cgroup = Some(dir.clone());
                let o = d.cli(&["freeze", &nm]);
                assert!(o.status.success() && cgroup_frozen(&dir), "step {step}: freeze {nm}: {o:?}");
                std::thread::sleep(Duration::from_millis(50));
                let o = d.cli(&["thaw", &nm]);
                assert!(o.status.success(), "step {step}: thaw {nm}: {o:?}");
                assert_eq!(r.wait_exit(Duration::from_secs(15)), Some(0), "step {step}: thawed run {nm}: {}", r.stderr());
                rep.frozen += 1;
                rep.runs += 1;
            }
            8 => {
                let nm = name();
                let mut r = spawn(&d, &hold_pol, &nm, &["read", &secret]);
                wait_ps(&d, &nm, "held").unwrap_or_else(|| panic!("step {step}: {nm} was not held: {}", r.stderr()));
                let o = d.cli(&["deny", &nm]);
                assert!(o.status.success(), "step {step}: deny {nm}: {o:?}");
                let status = r.wait_exit(Duration::from_secs(15));
                assert!(status.is_some_and(|s| s != 0), "step {step}: the denied hold {nm} ended with {status:?}");
                rep.held_denied += 1;
                rep.runs += 1;
            }
            _ => {
                // A batch of short runs side by side; at a kill step, the daemon dies under them.
                let batch: Vec<(String, BackgroundRun)> = (0..3)
                    .map(|_| {
                        let nm = name();
                        let r = spawn(&d, &pol, &nm, &["read", ok_s]);
                        (nm, r)
                    })
                    .collect();
                let chaos = kill_at.last().is_some_and(|k| *k <= step);
                if chaos {
                    kill_at.pop();
                }
                let mut batch = batch;
                let mut statuses = Vec::new();
                if chaos && !cfg.kill_in_flight {
                    for (nm, r) in batch.iter_mut() {
                        statuses.push((nm.clone(), r.wait_exit(Duration::from_secs(30)), r.stderr()));
                    }
                }
                if chaos {
                    std::thread::sleep(Duration::from_millis(rng.below(300)));
                    d.kill9();
                    rep.daemon_kills += 1;
                    for _ in 0..3 {
                        down_pids.push(probe_in(&anchor_dir, &["read", ok_s]));
                        rep.probes_while_down += 1;
                    }
                    std::thread::sleep(Duration::from_millis(rng.below(500)));
                    d.restart();
                    warm_at = step + 5;
                }
                if statuses.is_empty() {
                    for (nm, mut r) in batch {
                        statuses.push((nm, r.wait_exit(Duration::from_secs(30)), r.stderr()));
                    }
                }
                for (nm, st, err) in statuses {
                    // A run whose registration met a dead daemon is refused (125).
                    assert!(st == Some(0) || (chaos && st == Some(125)), "step {step}: {nm} ended with {st:?}: {err}");
                    rep.runs += 1;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    re.join().unwrap();
    rep.reloads = reloads.load(Ordering::Relaxed);
    rep.reload_failures = reload_failures.load(Ordering::Relaxed);

    for (nm, r) in [("flood", &mut flood), ("anchor", &mut anchor)] {
        let o = d.cli(&["kill", nm]);
        assert!(o.status.success(), "kill {nm}: {o:?}");
        assert_eq!(r.wait_exit(Duration::from_secs(15)), Some(128 + 9), "{nm}");
    }
    // Nothing left of any run (the daemon forgets an ended run's record at once; ps lists
    // live runs).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = leftovers(&d);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left after every run ended: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    rep.end = measure(&d);

    // The log: run_start/run_end pairs, drops, and the probes of the outage.
    let keep = |l: &str| {
        l.contains("\"kind\":\"run_start\"")
            || l.contains("\"kind\":\"run_end\"")
            || l.contains("\"kind\":\"drop\"")
            || (l.contains("\"kind\":\"exec\"") && l.contains("\"run_name\":\"anchor\""))
    };
    let (ev, total) = log_lines(&d.log, keep);
    rep.log_lines = total;
    let started: BTreeSet<&str> = ev.iter().filter(|e| e["kind"] == "run_start").filter_map(|e| e["run"].as_str()).collect();
    let ended: HashSet<&str> = ev.iter().filter(|e| e["kind"] == "run_end").filter_map(|e| e["run"].as_str()).collect();
    rep.run_ends = ended.len() as u64;
    let missing: Vec<&&str> = started.iter().filter(|r| !ended.contains(**r)).collect();
    for e in ev.iter().filter(|e| e["kind"] == "drop") {
        *rep.drops.entry(e["stage"].as_str().unwrap_or("?").to_string()).or_default() += e["count"].as_u64().unwrap_or(0);
    }
    let execs: HashSet<u64> = ev.iter().filter(|e| e["kind"] == "exec").filter_map(|e| e["tgid"].as_u64()).collect();
    let lost_down: Vec<&u32> = down_pids.iter().filter(|p| !execs.contains(&u64::from(**p))).collect();
    let kernel_drops = rep.drops.get("kernel_ringbuf").copied().unwrap_or(0) + rep.drops.get("kernel_pending").copied().unwrap_or(0);
    rep.elapsed = t0.elapsed();
    eprintln!("soak: {rep:#?}");

    if !missing.is_empty() {
        // What the log has of them, for whoever looks into it.
        let ids: Vec<String> = missing.iter().map(|r| format!("\"run\":\"{r}\"")).collect();
        let (theirs, _) = log_lines(&d.log, |l| ids.iter().any(|i| l.contains(i.as_str())) && !l.contains("\"kind\":\"open\""));
        let seen: Vec<String> = theirs.iter().map(|e| format!("{} {} {} {}", e["ts"], e["run"], e["run_name"], e["kind"])).collect();
        panic!("runs without run_end: {missing:?}; their events (opens left out):\n{}", seen.join("\n"));
    }
    assert!(lost_down.is_empty() || kernel_drops > 0, "execs made while the daemon was down and missing from the log, with no kernel drop reported: {lost_down:?}");
    assert_eq!(warm_pid, d.pid(), "the last daemon was not measured warm (too few steps after its restart)");
    assert!(rep.end.1 <= rep.warm.1 + FD_SLACK, "open descriptors: {} warm, {} after the soak", rep.warm.1, rep.end.1);
    assert!(rep.end.0 <= rep.warm.0 + RSS_SLACK_KIB, "VmRSS: {} KiB warm, {} KiB after the soak", rep.warm.0, rep.end.0);
    assert!(rep.reloads > 0, "no policy apply went through");
    // The daemon kills left one hash chain: every line linked, every checkpoint signed.
    let o = d.cli(&["log", "verify"]);
    assert!(o.status.success(), "log verify after the soak: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("soak: log verify: {}", String::from_utf8_lossy(&o.stdout).trim());
    rep
}
