//! `cargo xtask bench`: agbench (tests/src/bin/agbench.rs) under three conditions, interleaved
//! over rounds: (a) no agent-guard at all (daemon stopped: with no run under it, a stopped
//! daemon detaches everything), (b) a daemon running with agbench outside every run, (c)
//! agbench inside a run under a policy with 1,000 file rules and 1,000 CIDR rules, (e) the same
//! with every `[limits]` budget on (never reached: the cost of counting). Also the
//! kernel cost per invocation of each ag_* program (kernel.bpf_stats_enabled, restored after)
//! and the daemon's time to ready, fresh and with pinned state.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent_guard_tests::{Daemon, PolicyFile};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub const OPS: [&str; 4] = ["open_close", "connect", "fork_exec", "getpid"];
const CONDS: [&str; 5] = ["a", "b", "d", "c", "e"];
const COND_NAMES: [&str; 5] = [
    "(a) no agent-guard",
    "(b) daemon, no run on the host",
    "(d) outside runs, another run alive",
    "(c) inside a run",
    "(e) inside a run, with [limits]",
];
/// The conditions with agent-guard running, in table order.
const WITH_DAEMON: [&str; 4] = ["b", "d", "c", "e"];
/// Condition (e)'s budgets: every per-minute counter and distinct_destinations on, none ever
/// reached (agbench makes 200,000 opens and 20,000 connects a round), so each open and connect
/// is counted and nothing more happens.
const NEVER_REACHED: u32 = 1_000_000_000;

/// kernel.bpf_stats_enabled set to 1 for as long as this lives, then restored.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let p = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(p)
            .with_context(|| format!("reading {p}"))?
            .trim()
            .to_string();
        std::fs::write(p, "1").with_context(|| format!("writing {p} (root?)"))?;
        Ok(BpfStats(old))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// (run_count, run_time_ns) of every loaded program named ag_*, by id.
fn ag_programs() -> HashMap<u32, (String, u64, u64)> {
    let mut m = HashMap::new();
    for p in aya::programs::loaded_programs().flatten() {
        let name = p.name_as_str().unwrap_or("").to_string();
        if name.starts_with("ag_") {
            m.insert(
                p.id(),
                (name, p.run_count(), p.run_time().as_nanos() as u64),
            );
        }
    }
    m
}

/// Starts the daemon (the launcher the integration tests use); the time from the spawn to
/// ready, in ms. `ours`: the ag_* program ids it loaded (those that appeared while it started).
fn start(daemon: &mut Daemon, ours: &mut HashSet<u32>) -> Result<f64> {
    let before: HashSet<u32> = ag_programs().into_keys().collect();
    let ready = daemon.try_start()?;
    *ours = ag_programs().into_keys().filter(|id| !before.contains(id)).collect();
    Ok(ready.as_secs_f64() * 1e3)
}

/// Whether any of the daemon's syscall tracepoints is attached (their links are pinned; the
/// sched ones, always attached, aside). Which ones a backend attaches differs: under lsm the
/// open tracepoints are not.
fn syscall_tracepoints(daemon: &Daemon) -> bool {
    daemon.pinned_links().iter().any(|l| l.starts_with("tp-") && l != "tp-ag_exec" && l != "tp-ag_exit")
}

/// Waits until no run is left and the daemon has detached its syscall tracepoints.
pub(crate) fn wait_idle(daemon: &Daemon) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.runs().is_empty() || syscall_tracepoints(daemon) {
        if Instant::now() > deadline {
            bail!("the daemon still has runs or syscall tracepoints after 20 s: (b) would not be an idle host");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits up to `timeout` for a run cgroup not in `before` whose process count satisfies
/// `ready`.
fn new_run(daemon: &Daemon, before: &HashSet<PathBuf>, timeout: Duration, ready: impl Fn(usize) -> bool) -> Option<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(cg) = daemon.runs().into_iter().find(|r| !before.contains(r)) {
            let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
            if ready(procs.lines().count()) {
                return Some(cg);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A policy that allows what agbench does, among 1,000 file rules and 1,000 CIDR rules.
pub(crate) fn policy(name: &str, agbench: &Path, data: &Path) -> PolicyFile {
    let mut read: Vec<String> = [
        "/usr",
        "/lib",
        "/lib64",
        "/etc/ld.so.cache",
        "/etc/locale.alias",
        "/proc",
        "/dev/null",
        "/sys/devices/system/cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The VM of `bench --vm` has busybox's applets there (on merged-/usr hosts a link to /usr/bin).
    read.push("/bin".into());
    read.push(agbench.parent().unwrap().display().to_string());
    read.push(data.parent().unwrap().display().to_string());
    let mut i = 0;
    while read.len() < 1000 {
        read.push(format!(
            "/srv/agbench/project-{:03}/src/module-{}",
            i / 10,
            i % 10
        ));
        i += 1;
    }
    let mut cidrs = vec!["127.0.0.1/32:1024-65535".to_string()];
    let mut i = 0u32;
    while cidrs.len() < 1000 {
        cidrs.push(format!("10.{}.{}.0/24:443", i / 256, i % 256));
        i += 1;
    }
    PolicyFile::new(name)
        .mode("enforce")
        .on_violation("deny")
        .read(read)
        .exec([Path::new("/usr/bin/"), Path::new("/bin/"), agbench])
        .connect(cidrs)
        // agbench's connect test accepts on a loopback listener of its own (an ephemeral port).
        .listen(["127.0.0.1:1024-65535"])
}

pub(crate) fn parse_result(out: &std::process::Output, what: &str) -> Result<BTreeMap<String, f64>> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what}: no JSON in {text:?}"))?;
    let v: Value = serde_json::from_str(line)?;
    Ok(OPS
        .iter()
        .map(|op| (op.to_string(), v[op].as_f64().unwrap_or(f64::NAN)))
        .collect())
}

pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    json!({"median": quantile(&s, 0.5), "min": s.first(), "max": s.last(), "samples": v})
}

fn machine() -> Value {
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    json!({
        "kernel": uname.unwrap_or_default(),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
    })
}

fn daemon_cpu_rss(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

pub fn bench(root: &Path, quick: bool, json_out: bool) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench needs root (eBPF programs, cgroups, kernel.bpf_stats_enabled)");
    }
    // AG_BENCH_BIN: another daemon build (an earlier commit's) under the same harness and agbench.
    let bin = std::env::var_os("AG_BENCH_BIN").map_or_else(|| root.join("target/release/agent-guard"), PathBuf::from);
    let agbench = root
        .join("target/release/agbench")
        .canonicalize()
        .context("target/release/agbench")?;
    let dir = std::env::temp_dir().join(format!("agbench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = bench_in(&bin, &agbench, &dir, quick, json_out);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench_in(bin: &Path, agbench: &Path, dir: &Path, quick: bool, json_out: bool) -> Result<()> {
    let rounds = if quick { 2 } else { 5 };
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let data = data_dir.join("file.txt");
    std::fs::write(&data, "agbench\n")?;
    let policy_file = dir.join("agbench.toml");
    policy("agbench", agbench, &data).write_as(&policy_file);
    let limits_file = dir.join("agbench-limits.toml");
    let mut limited = policy("agbench-limits", agbench, &data).on_limit("report");
    for l in ["execs_per_minute", "opens_per_minute", "connects_per_minute", "distinct_destinations", "denials_per_minute"] {
        limited = limited.limit(l, NEVER_REACHED);
    }
    limited.write_as(&limits_file);
    let policy_of = |cond: &str| if cond == "e" { &limits_file } else { &policy_file };

    let mut daemon = Daemon::configure(bin, "agent-guard-bench", "events_log_max_bytes = 0");
    let mut ours = HashSet::new();
    let mut bench_args: Vec<String> = vec!["--file".into(), data.display().to_string()];
    if quick {
        bench_args.push("--quick".into());
    }

    // samples[cond][op]
    let mut samples: BTreeMap<&str, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    // programs[cond][name] = (run_count, run_time_ns), summed over rounds
    let mut programs: BTreeMap<&str, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    let mut fresh_ready = Vec::new();
    for round in 0..rounds {
        for k in 0..CONDS.len() {
            let ci = (round + k) % CONDS.len();
            let cond = CONDS[ci];
            let want_daemon = cond != "a";
            if want_daemon && !daemon.is_running() {
                fresh_ready.push(start(&mut daemon, &mut ours)?);
            } else if !want_daemon && daemon.is_running() {
                daemon.stop();
                if daemon
                    .bpffs_dir
                    .read_dir()
                    .is_ok_and(|mut d| d.next().is_some())
                {
                    bail!("the stopped daemon left pins in {}: condition (a) would not be free of agent-guard", daemon.bpffs_dir.display());
                }
            }
            if !json_out {
                eprintln!("bench: round {}/{rounds}: {}", round + 1, COND_NAMES[ci]);
            }
            let out = run_in_condition(&daemon, cond, policy_of(cond), agbench, &bench_args, &format!("agbench-{round}"))?;
            let r = parse_result(&out, &format!("agbench under {}", COND_NAMES[ci]))?;
            for (op, v) in r {
                samples
                    .entry(cond)
                    .or_default()
                    .entry(op)
                    .or_default()
                    .push(v);
            }
        }
    }

    // Kernel cost per program: a separate pass of (b) and (c) with kernel.bpf_stats_enabled,
    // which adds two clock reads to every program run, so the timed rounds above go without.
    if !daemon.is_running() {
        fresh_ready.push(start(&mut daemon, &mut ours)?);
    }
    {
        let _stats = BpfStats::enable()?;
        for cond in WITH_DAEMON {
            let before = ag_programs();
            let out = run_in_condition(&daemon, cond, policy_of(cond), agbench, &bench_args, "agbench-stats")?;
            let after = ag_programs();
            parse_result(&out, "agbench (program cost pass)")?;
            for (id, (name, cnt, ns)) in &after {
                if !ours.contains(id) {
                    continue;
                }
                let (c0, n0) = before.get(id).map_or((0, 0), |b| (b.1, b.2));
                let e = programs
                    .entry(cond)
                    .or_default()
                    .entry(name.clone())
                    .or_default();
                e.0 += cnt - c0;
                e.1 += ns - n0;
            }
        }
    }

    // Event throughput: a run opening files as fast as it can (agbench's open loop alone).
    let throughput = throughput(
        &daemon,
        agbench,
        &policy_file,
        &data,
        if quick { 3 } else { 10 },
    )?;

    if !json_out {
        eprintln!("bench: isolation (a flooding run and a quiet violating one)");
    }
    wait_idle(&daemon)?;
    let isolation = isolation(&daemon, agbench, &policy_file, &data, if quick { 3 } else { 10 }, if quick { 100 } else { 500 })?;
    let mut freeze = Vec::new();
    for (n, reps) in [(100, if quick { 10 } else { 100 }), (1000, if quick { 3 } else { 20 })] {
        if !json_out {
            eprintln!("bench: freeze/thaw of {n} processes, {reps} times");
        }
        freeze.push(freeze_latency(&daemon, n, reps)?);
    }

    // Ready with pinned state: a run alive, the daemon killed with SIGKILL, started again.
    let mut pinned_ready = Vec::new();
    let holder = Holder::start(&daemon, &policy_file)?;
    let res: Result<()> = (|| {
        for _ in 0..if quick { 2 } else { 5 } {
            daemon.kill9();
            pinned_ready.push(start(&mut daemon, &mut ours)?);
        }
        Ok(())
    })();
    holder.stop();
    res?;
    // Fresh again: nothing under the daemon, so a stop detaches everything.
    std::thread::sleep(Duration::from_millis(200));
    daemon.stop();
    for _ in 0..if quick { 1 } else { 3 } {
        fresh_ready.push(start(&mut daemon, &mut ours)?);
        daemon.stop();
    }

    let results = Results {
        samples,
        programs,
        fresh: fresh_ready,
        pinned: pinned_ready,
        throughput,
        isolation,
        freeze,
    };
    report(&results, rounds, json_out);
    Ok(())
}

/// agbench in condition `cond`: (a) and (b) as a plain process, (d) the same with a holder
/// run alive elsewhere, (c) as a run under the policy. Before (b) it waits until the daemon
/// has detached the syscall tracepoints the last run needed, so (b) is an idle host.
pub(crate) fn run_in_condition(
    daemon: &Daemon,
    cond: &str,
    policy_file: &Path,
    agbench: &Path,
    args: &[String],
    name: &str,
) -> Result<std::process::Output> {
    if cond == "b" {
        wait_idle(daemon)?;
    }
    let holder = if cond == "d" { Some(Holder::start(daemon, policy_file)?) } else { None };
    let mut cmd = if cond == "c" || cond == "e" {
        let mut c = daemon.command(&[]);
        c.args(["run", "--policy"]).arg(policy_file).args(["--name", name, "--"]).arg(agbench);
        c
    } else {
        Command::new(agbench)
    };
    let out = cmd.args(args).stdin(Stdio::null()).output();
    if let Some(holder) = holder {
        holder.stop();
    }
    Ok(out?)
}

/// sleep(1): /usr/bin/sleep, or busybox's in the VM of `bench --vm`.
fn sleep_path() -> &'static str {
    if Path::new("/usr/bin/sleep").exists() { "/usr/bin/sleep" } else { "/bin/sleep" }
}

/// A run under the policy that only sleeps: the "another run alive" of condition (d), and
/// what keeps pinned state for the restart measurements.
struct Holder {
    child: Child,
    cgroup: PathBuf,
}

impl Holder {
    fn start(daemon: &Daemon, policy_file: &Path) -> Result<Holder> {
        let before: HashSet<PathBuf> = daemon.runs().into_iter().collect();
        let mut child = daemon
            .command(&[])
            .args(["run", "--policy"])
            .arg(policy_file)
            .args(["--name", "agbench-holder", "--", sleep_path(), "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(daemon.dir.path().join("holder.stderr"))?)
            .spawn()?;
        // Its cgroup holds the sleep (the launcher has exec'd; the hooks a run needs are
        // attached before its kernel entry exists).
        if let Some(cgroup) = new_run(daemon, &before, Duration::from_secs(60), |procs| procs > 0) {
            return Ok(Holder { child, cgroup });
        }
        let mut err = std::fs::read_to_string(daemon.dir.path().join("holder.stderr")).unwrap_or_default();
        for e in log_events(&daemon.log, 0).unwrap_or_default() {
            if e["run_name"] == "agbench-holder" && e["verdict"] != "allow" || e["kind"] == "kill" {
                err += &format!("\n{e}");
            }
        }
        bail!(
            "the holder run did not start (runs {:?}, syscall tracepoints attached: {}, launcher {:?}): {err}",
            daemon.runs(),
            syscall_tracepoints(daemon),
            child.try_wait()
        );
    }

    fn stop(mut self) {
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        let _ = self.child.wait();
    }
}

/// agent_guard_events_total and agent_guard_events_dropped_total samples from the daemon's
/// /metrics (its address from the "metrics on" line), by full series name.
fn event_counters(daemon: &Daemon) -> BTreeMap<String, f64> {
    use std::io::Write;
    let text = daemon.stderr();
    let Some(addr) = text
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
    else {
        return BTreeMap::new();
    };
    let Ok(mut c) = std::net::TcpStream::connect(addr) else {
        return BTreeMap::new();
    };
    let _ = write!(c, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut body = String::new();
    let _ = c.read_to_string(&mut body);
    body.lines()
        .filter(|l| {
            l.starts_with("agent_guard_events_total")
                || l.starts_with("agent_guard_events_dropped_total")
        })
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A run under the policy opening a file as fast as it can for `secs`: events the programs
/// produced (open events in the log), drops, daemon CPU and RSS.
fn throughput(
    daemon: &Daemon,
    agbench: &Path,
    policy_file: &Path,
    data: &Path,
    secs: u64,
) -> Result<Value> {
    if !daemon.is_running() {
        bail!("daemon not running");
    }
    let pid = daemon.pid() as u32;
    let log = daemon.log.clone();
    let log_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let (cpu0, _) = daemon_cpu_rss(pid);
    let counters0 = event_counters(daemon);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let t = Instant::now();
    let out = flood_command(daemon, policy_file, "agbench-flood", agbench, secs, data).output()?;
    if !out.status.success() {
        bail!("flood run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let opens: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let run_secs = t.elapsed().as_secs_f64();
    drain(&log);
    let drain_secs = t.elapsed().as_secs_f64() - run_secs - 1.0;
    let wall = t.elapsed().as_secs_f64();
    let (cpu1, rss_kb) = daemon_cpu_rss(pid);
    let counters: BTreeMap<String, f64> = event_counters(daemon)
        .into_iter()
        .map(|(k, v)| {
            let d = v - counters0.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d != 0.0)
        .collect();
    // The whole log from where it stood before the flood (never rotated: events_log_max_bytes = 0).
    let mut f = std::io::BufReader::new(std::fs::File::open(&log)?);
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(log_before))?;
    let (mut written, mut dropped) = (0u64, BTreeMap::<String, u64>::new());
    for l in std::io::BufRead::lines(f) {
        let l = l?;
        if !(l.contains("agbench-flood") || l.contains("\"drop\"")) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&l) else {
            continue;
        };
        if v["run_name"] == "agbench-flood" && v["kind"] == "open" {
            written += 1;
        }
        if v["kind"] == "drop" {
            *dropped
                .entry(v["stage"].as_str().unwrap_or("?").to_string())
                .or_default() += v["count"].as_u64().unwrap_or(0);
        }
    }
    Ok(json!({
        "seconds": secs,
        "log_drain_seconds_after_run": drain_secs,
        "opens": opens,
        "open_events_written": written,
        "drop_events_by_stage": dropped,
        "metrics_deltas": counters,
        "daemon_cpu_percent": (cpu1 - cpu0) as f64 / hz / wall * 100.0,
        "daemon_cpu_us_per_event": (cpu1 - cpu0) as f64 / hz * 1e6 / written.max(1) as f64,
        "daemon_rss_kib": rss_kb,
    }))
}

/// A run under the policy that opens `data` as fast as it can for `secs` (agbench --flood).
fn flood_command(daemon: &Daemon, policy_file: &Path, name: &str, agbench: &Path, secs: u64, data: &Path) -> Command {
    let mut c = daemon.command(&[]);
    c.args(["run", "--policy"])
        .arg(policy_file)
        .args(["--name", name, "--"])
        .arg(agbench)
        .args(["--flood", &secs.to_string(), "--file"])
        .arg(data)
        .stdin(Stdio::null());
    c
}

/// Lets the daemon write what it has read: until the log stops growing for 1 s (at most 120 s).
fn drain(log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut size, mut still) = (0, Instant::now());
    while Instant::now() < deadline && still.elapsed() < Duration::from_secs(1) {
        let now = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        if now != size {
            (size, still) = (now, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The log's events from byte `from` on.
fn log_events(log: &Path, from: u64) -> Result<Vec<Value>> {
    let mut f = std::io::BufReader::new(std::fs::File::open(log)?);
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(from))?;
    let mut out = Vec::new();
    for l in std::io::BufRead::lines(f) {
        if let Ok(v) = serde_json::from_str::<Value>(&l?) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Isolation: a run floods (opens as fast as it can) while a quiet run, under a policy of its
/// own, makes `violations` reads outside it (each `cat` of a denied file). Every one of the
/// quiet run's violations must reach the log.
fn isolation(daemon: &Daemon, agbench: &Path, policy_file: &Path, data: &Path, secs: u64, violations: u32) -> Result<Value> {
    let quiet_policy = PolicyFile::new("agbench-quiet")
        .mode("enforce")
        .on_violation("deny")
        .read(["/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/locale.alias", "/dev/null"])
        .exec(["/usr/bin/"])
        .write_to(daemon.dir.path());
    let log = daemon.log.clone();
    let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    let flood = flood_command(daemon, policy_file, "agbench-isolation-flood", agbench, secs, data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let quiet_start = t.elapsed().as_secs_f64();
    // Shell built-ins only, besides the `cat` that violates, and no redirection (a write the
    // policy refuses): nothing else may fail the loop. The run's output is captured.
    let script = format!("i=0; while [ $i -lt {violations} ]; do cat /etc/hostname; i=$((i+1)); done; exit 0");
    let quiet = daemon
        .command(&[])
        .args(["run", "--policy"])
        .arg(&quiet_policy)
        .args(["--name", "agbench-quiet", "--", "/usr/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .output()?;
    let quiet_end = t.elapsed().as_secs_f64();
    let flood_out = flood.wait_with_output()?;
    let flood_end = t.elapsed().as_secs_f64();
    if !quiet.status.success() {
        bail!("the quiet run failed: {}", String::from_utf8_lossy(&quiet.stderr));
    }
    if !flood_out.status.success() {
        bail!("the flooding run failed");
    }
    drain(&log);
    let events = log_events(&log, from)?;
    let seen = events
        .iter()
        .filter(|e| e["run_name"] == "agbench-quiet" && e["kind"] == "open" && e["path"] == "/etc/hostname")
        .count();
    let flood_events = events.iter().filter(|e| e["run_name"] == "agbench-isolation-flood" && e["kind"] == "open").count();
    let mut dropped = BTreeMap::<String, u64>::new();
    for e in events.iter().filter(|e| e["kind"] == "drop") {
        *dropped.entry(e["stage"].as_str().unwrap_or("?").to_string()).or_default() += e["count"].as_u64().unwrap_or(0);
    }
    Ok(json!({
        "flood_seconds": secs,
        "flood_opens": String::from_utf8_lossy(&flood_out.stdout).trim().parse::<u64>().unwrap_or(0),
        "flood_open_events_written": flood_events,
        "quiet_violations_made": violations,
        "quiet_violation_events_written": seen,
        "quiet_run_seconds": [quiet_start, quiet_end],
        "flood_ended_at_seconds": flood_end,
        "quiet_run_inside_the_flood": quiet_end <= flood_end,
        "drop_events_by_stage": dropped,
    }))
}

/// Freeze, thaw and kill latency of a run of `n` processes (a shell and `n - 1` sleeps), as
/// `agent-guard freeze/thaw/kill` report it (the write to cgroup.freeze / cgroup.kill until
/// cgroup.events says so), `reps` freeze+thaw cycles.
fn freeze_latency(daemon: &Daemon, n: u32, reps: usize) -> Result<Value> {
    let name = format!("agbench-freeze-{n}");
    let before: HashSet<PathBuf> = daemon.runs().into_iter().collect();
    let script = format!("for i in $(seq {}); do sleep 600 & done; wait", n - 1);
    let mut child = daemon
        .command(&[])
        .args(["run", "--name", &name, "--", "/usr/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let Some(cgroup) = new_run(daemon, &before, Duration::from_secs(60), |procs| procs >= n as usize) else {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        bail!("the {n}-process run did not start");
    };
    let act = |what: &str| -> Result<f64> {
        let out = daemon.command(&[what, &name]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("{what} {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let ms = text.split(" in ").nth(1).and_then(|t| t.split(" ms").next()).and_then(|t| t.parse().ok());
        ms.with_context(|| format!("no latency in {text:?}"))
    };
    let res: Result<(Vec<f64>, Vec<f64>)> = (|| {
        let (mut freeze, mut thaw) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            freeze.push(act("freeze")?);
            thaw.push(act("thaw")?);
        }
        Ok((freeze, thaw))
    })();
    let kill = act("kill");
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
    let _ = child.wait();
    let (freeze, thaw) = res?;
    let pct = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        json!({"median": quantile(&s, 0.5), "p99": quantile(&s, 0.99), "min": s.first(), "max": s.last(), "n": s.len()})
    };
    Ok(json!({"processes": n, "freeze_ms": pct(&freeze), "thaw_ms": pct(&thaw), "kill_ms": kill?}))
}

/// Everything one bench run measured.
struct Results {
    samples: BTreeMap<&'static str, BTreeMap<String, Vec<f64>>>,
    programs: BTreeMap<&'static str, BTreeMap<String, (u64, u64)>>,
    fresh: Vec<f64>,
    pinned: Vec<f64>,
    throughput: Value,
    isolation: Value,
    freeze: Vec<Value>,
}

fn report(r: &Results, rounds: usize, json_out: bool) {
    let Results { samples, programs, fresh, pinned, throughput, isolation, freeze } = r;
    let med = |c: &str, op: &str| {
        let mut v = samples
            .get(c)
            .and_then(|m| m.get(op))
            .cloned()
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        quantile(&v, 0.5)
    };
    let ratio = |c: &str, op: &str| med(c, op) / med("a", op);
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let at_most = |n: &'static str, m: f64, l: f64| (n, m, l, m <= l);
    let written = throughput["open_events_written"].as_f64().unwrap_or(0.0);
    let per_sec = written / throughput["seconds"].as_f64().unwrap_or(1.0);
    let freeze100 = freeze.iter().find(|f| f["processes"] == 100).cloned().unwrap_or_default();
    let ms = |k: &str| freeze100["freeze_ms"][k].as_f64().unwrap_or(f64::NAN);
    let lost = isolation["quiet_violations_made"].as_f64().unwrap_or(f64::NAN)
        - isolation["quiet_violation_events_written"].as_f64().unwrap_or(0.0);
    let targets = [
        at_most("outside every run, no run on the host: open+close", ratio("b", "open_close"), 1.03),
        at_most("outside every run, no run on the host: getpid", ratio("b", "getpid"), 1.03),
        at_most("outside every run, another run alive: open+close", ratio("d", "open_close"), 1.03),
        at_most("outside every run, another run alive: getpid", ratio("d", "getpid"), 1.03),
        at_most("inside a run: open+close", ratio("c", "open_close"), 1.10),
        at_most("inside a run: connect", ratio("c", "connect"), 1.10),
        at_most("inside a run: fork+exec", ratio("c", "fork_exec"), 1.10),
        ("events written per second (one flooding run)", per_sec, 500_000.0, per_sec >= 500_000.0),
        at_most("daemon CPU while flooding (cores)", throughput["daemon_cpu_percent"].as_f64().unwrap_or(f64::NAN) / 100.0, 1.0),
        at_most("violation events of the quiet run lost", lost, 0.0),
        at_most("freeze of 100 processes, median (ms)", ms("median"), 10.0),
        at_most("freeze of 100 processes, p99 (ms)", ms("p99"), 25.0),
        at_most("daemon ready, fresh (worst, s)", max(fresh) / 1e3, 1.0),
        at_most("daemon ready, pinned state (worst, s)", max(pinned) / 1e3, 1.0),
    ];
    if json_out {
        let conds: BTreeMap<&str, Value> = CONDS
            .iter()
            .map(|c| {
                (
                    *c,
                    json!(OPS
                        .iter()
                        .map(|op| (
                            op.to_string(),
                            stats(
                                samples
                                    .get(c)
                                    .and_then(|m| m.get(*op))
                                    .map_or(&[][..], |v| v)
                            )
                        ))
                        .collect::<BTreeMap<_, _>>()),
                )
            })
            .collect();
        let ratios: BTreeMap<&str, Value> = WITH_DAEMON
            .iter()
            .map(|c| {
                (
                    *c,
                    json!(OPS
                        .iter()
                        .map(|op| (op.to_string(), ratio(c, op)))
                        .collect::<BTreeMap<_, _>>()),
                )
            })
            .collect();
        let progs: BTreeMap<&str, Value> = programs
            .iter()
            .map(|(c, m)| {
                (*c, json!(m.iter().map(|(n, (cnt, ns))| (n.clone(), json!({"run_count": cnt, "run_time_ns": ns, "ns_per_run": if *cnt > 0 { *ns as f64 / *cnt as f64 } else { f64::NAN }}))).collect::<BTreeMap<_, _>>()))
            })
            .collect();
        let v = json!({
            "machine": machine(),
            "rounds": rounds,
            "unit": "ns/op",
            "conditions": conds,
            "ratios_to_a": ratios,
            "programs": progs,
            "ready_ms": {"fresh": stats(fresh), "pinned": stats(pinned)},
            "throughput": throughput,
            "isolation": isolation,
            "freeze": freeze,
            "targets": targets.iter().map(|(n, m, l, met)| json!({"target": n, "measured": m, "limit": l, "met": met})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
        return;
    }
    let m = machine();
    println!(
        "machine: kernel {}, {} CPUs, {}; {rounds} rounds, conditions interleaved\n",
        m["kernel"].as_str().unwrap_or(""),
        m["nproc"],
        m["cpu"].as_str().unwrap_or("")
    );
    println!("| op (ns/op, median [min-max]) | {} |", COND_NAMES.join(" | "));
    println!("|---|{}", "---|".repeat(CONDS.len()));
    for op in OPS {
        let mut row = format!("| {op} |");
        for c in CONDS {
            let mut v = samples
                .get(c)
                .and_then(|m| m.get(op))
                .cloned()
                .unwrap_or_default();
            v.sort_by(f64::total_cmp);
            let r = if c == "a" {
                String::new()
            } else {
                format!(" **x{:.3}**", ratio(c, op))
            };
            row += &format!(
                " {:.0} [{:.0}-{:.0}]{r} |",
                quantile(&v, 0.5),
                v.first().unwrap_or(&f64::NAN),
                v.last().unwrap_or(&f64::NAN)
            );
        }
        println!("{row}");
    }
    println!("\ncounting of [limits] on the open and connect paths, (e) against (c) in the same rounds:\n");
    println!("| op | (c) inside a run | (e) with [limits] | (e)/(c) |");
    println!("|---|---|---|---|");
    for op in ["open_close", "connect"] {
        println!("| {op} | {:.0} | {:.0} | **x{:.3}** |", med("c", op), med("e", op), med("e", op) / med("c", op));
    }
    println!("\nkernel cost per program invocation (one pass of (b), (d), (c) and (e) with kernel.bpf_stats_enabled):\n");
    println!("| program | (b) runs | (b) ns/run | (d) runs | (d) ns/run | (c) runs | (c) ns/run | (e) runs | (e) ns/run |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let names: std::collections::BTreeSet<&String> =
        programs.values().flat_map(|m| m.keys()).collect();
    for n in names {
        let cell = |c: &str| {
            programs
                .get(c)
                .and_then(|m| m.get(n))
                .map_or("-|-".to_string(), |(cnt, ns)| {
                    if *cnt == 0 {
                        "0 | -".to_string()
                    } else {
                        format!("{cnt} | {:.0}", *ns as f64 / *cnt as f64)
                    }
                })
        };
        println!("| {n} | {} | {} | {} | {} |", cell("b"), cell("d"), cell("c"), cell("e"));
    }
    let s = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        format!(
            "median {:.0} ms [{:.0}-{:.0}], n={}",
            quantile(&v, 0.5),
            v.first().unwrap_or(&f64::NAN),
            v.last().unwrap_or(&f64::NAN),
            v.len()
        )
    };
    println!("\ndaemon ready (spawn to \"ready in\"): fresh {}; pinned state (run alive, kill -9, restart) {}", s(fresh), s(pinned));
    println!("\nevent throughput: {throughput}");
    println!("\nisolation: {isolation}");
    println!("\n| freeze/thaw/kill (ms) | freeze median | freeze p99 | thaw median | thaw p99 | kill | samples |");
    println!("|---|---|---|---|---|---|---|");
    for f in freeze {
        let q = |k: &str, p: &str| f[k][p].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} processes | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} |",
            f["processes"],
            q("freeze_ms", "median"),
            q("freeze_ms", "p99"),
            q("thaw_ms", "median"),
            q("thaw_ms", "p99"),
            f["kill_ms"].as_f64().unwrap_or(f64::NAN),
            f["freeze_ms"]["n"]
        );
    }
    println!("\n| target | measured | limit | |");
    println!("|---|---|---|---|");
    for (n, m, l, met) in targets {
        println!("| {n} | {m:.3} | {l} | {} |", if met { "met" } else { "MISSED" });
    }
}
