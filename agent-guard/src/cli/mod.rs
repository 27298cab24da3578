//! The incident-response commands of the CLI: `ps`, `freeze`, `thaw`, `kill`, `events`,
//! `status`. They ask the daemon; `freeze`, `thaw` and `kill` act on cgroupfs themselves when
//! no daemon is running (as root), so a responder is never left without a brake.
use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
};

pub mod decoy;
pub mod policy;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{runs::cgroup, config::Config, control::{self, ClientError, Request, RunStatus}, runs::respond::{self, Action, Lookup}};

/// Exit status when the daemon is not running (`status`, `ps`, `events`).
pub const EXIT_DAEMON_DOWN: u8 = 3;

/// How a command ended: its exit status, after it printed what it had to.
pub type Code = u8;

mod approve;
pub use approve::approve;
mod task;
pub use task::{task, TaskArgs};
pub mod evidence;
pub mod log;

fn down_message(e: &ClientError) -> String {
    match e {
        ClientError::Connect { path, source } => format!("the agent-guard daemon is not running ({path}: {source})"),
        e => format!("the agent-guard daemon is not running: {e}"),
    }
}

/// `ps`: the daemon's runs and bound cgroups.
pub fn ps(cfg: &Config, json: bool, tasks: bool) -> Result<Code> {
    let resp = match control::call(&cfg.control_socket, Request::Ps) {
        Ok(r) => r,
        Err(e) if e.daemon_down() => {
            eprintln!("agent-guard ps: {}", down_message(&e));
            return Ok(EXIT_DAEMON_DOWN);
        }
        Err(e) => return Err(e.into()),
    };
    let runs = resp.runs.unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    } else {
        print!("{}", ps_table(&runs));
        if tasks {
            for r in &runs {
                for t in &r.tasks {
                    let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let line = format!(
                        "{} task {}: {} {} processes, policy {}{}",
                        r.id,
                        t.id,
                        t.state,
                        t.processes,
                        t.policy.as_deref().unwrap_or("-"),
                        if labels.is_empty() { String::new() } else { format!(", labels {}", labels.join(",")) }
                    );
                    println!("{}", crate::output::text::printable(&line));
                }
            }
        }
    }
    Ok(0)
}

/// The human `ps` table.
pub fn ps_table(runs: &[RunStatus]) -> String {
    let rows: Vec<[String; 7]> = runs
        .iter()
        .map(|r| {
            let name = match (&r.name, r.unregistered) {
                (Some(n), _) => crate::output::text::printable(n).into_owned(),
                (None, true) => "(unregistered)".into(),
                (None, false) => "-".into(),
            };
            [
                r.id.clone(),
                name,
                r.policy.clone().unwrap_or_else(|| "-".into()),
                r.state.clone(),
                r.processes.to_string(),
                r.violations.to_string(),
                respond::age(r.age_secs),
            ]
        })
        .collect();
    let head = ["RUN", "NAME", "POLICY", "STATE", "PROCS", "VIOLATIONS", "AGE"];
    let mut width = head.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let fmt = |cells: &[String]| {
        let mut line = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        line.trim_end().to_string() + "\n"
    };
    let mut out = fmt(&head.map(String::from));
    for row in &rows {
        out.push_str(&fmt(row));
    }
    for r in runs.iter().filter(|r| r.held.is_some()) {
        out.push_str(&format!("{} held: {}\n", r.id, crate::output::text::printable(r.held.as_deref().unwrap_or_default())));
    }
    out
}

/// `freeze`, `thaw`, `kill` RUN: through the daemon (recorded as an event), or on cgroupfs
/// directly when no daemon runs.
pub fn act(cfg: &Config, action: Action, spec: &str) -> Result<Code> {
    let req = match action {
        Action::Freeze => Request::Freeze { run: spec.to_string() },
        Action::Thaw => Request::Thaw { run: spec.to_string() },
        Action::Kill => Request::Kill { run: spec.to_string() },
    };
    match control::call(&cfg.control_socket, req) {
        Ok(resp) => {
            let a = resp.action.context("the daemon did not say what it did")?;
            println!(
                "{}",
                action_line(action, &a.run, a.name.as_deref(), a.processes, a.latency_ms, a.removed)
            );
            Ok(0)
        }
        Err(e) if e.daemon_down() => act_direct(cfg, action, spec, &e),
        Err(e) => Err(e.into()),
    }
}

fn action_line(action: Action, run: &str, name: Option<&str>, processes: u64, latency_ms: f64, removed: bool) -> String {
    let name = name.map(|n| format!(" ({n})")).unwrap_or_default();
    let tail = match action {
        Action::Kill if removed => "; cgroup removed",
        _ => "",
    };
    format!("{} {run}{name}: {processes} processes in {latency_ms:.3} ms{tail}", action.past())
}

/// The cgroup2 mount and the managed root of this config.
fn managed_root(cfg: &Config) -> Result<(PathBuf, PathBuf)> {
    let mount = cgroup::cgroup2_mount().context("finding the cgroup2 mount")?;
    let root = mount.join(&cfg.cgroup_root);
    Ok((mount, root))
}

fn act_direct(cfg: &Config, action: Action, spec: &str, why: &ClientError) -> Result<Code> {
    eprintln!("agent-guard {}: {}; acting on cgroupfs directly, no event is recorded", action.name(), down_message(why));
    if !nix::unistd::geteuid().is_root() {
        bail!("{} on cgroupfs without the daemon needs root", action.name());
    }
    let (mount, root) = managed_root(cfg)?;
    if let Some(dir) = respond::pid_cgroup(std::process::id(), &mount) {
        if dir.starts_with(&root) {
            bail!(
                "permission denied: this process is inside an agent run (cgroup {}); processes inside runs may not freeze, thaw or kill runs",
                dir.display()
            );
        }
    }
    let runs = match respond::runs_below(&root) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no runs: the managed root {} does not exist", root.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading the managed root {}", root.display())),
    };
    let c = respond::resolve(spec, &runs, &mount, Lookup { names: false })?;
    let scope = respond::Scope { mount: mount.clone(), managed_root: root, bound: vec![] };
    let o = respond::act(&scope, &c.dir, action, true, respond::TIMEOUT)?;
    println!(
        "{}",
        action_line(action, &c.id, None, o.processes as u64, respond::millis(o.latency), o.removed)
    );
    Ok(0)
}

/// `events`: the daemon's recent events, and with `follow` every new one.
/// `--since WHEN`: a duration ago (`10m`, `1h 30m`) or a time (RFC 3339), as the events' own
/// timestamp format (UTC, microseconds), which the daemon compares with.
pub fn parse_since(s: &str) -> Result<String, String> {
    let t = match humantime::parse_duration(s) {
        Ok(ago) => std::time::SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{s}: too long ago"))?,
        Err(_) => humantime::parse_rfc3339_weak(s)
            .map_err(|e| format!("{s:?} is neither a duration (30s, 10m, 2h) nor a time (2026-12-05T10:00:00Z): {e}"))?,
    };
    Ok(crate::output::event::rfc3339(t))
}

/// `agent-guard events`: `req` is the `Events` request built from the arguments.
pub fn events(cfg: &Config, req: Request) -> Result<Code> {
    let follow = matches!(req, Request::Events { follow: true, .. });
    let (_, mut lines) = match control::stream(&cfg.control_socket, req) {
        Ok(s) => s,
        Err(e) if e.daemon_down() => {
            eprintln!("agent-guard events: {}", down_message(&e));
            return Ok(EXIT_DAEMON_DOWN);
        }
        Err(e) => return Err(e.into()),
    };
    // Block-buffered: stdout alone flushes at every newline.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {
                // Flushed whenever nothing more has arrived, so a follower sees each event at
                // once; a closed stdout (`| head`) ends the command quietly.
                let more = !lines.buffer().is_empty();
                if out.write_all(&line).and_then(|_| if more { Ok(()) } else { out.flush() }).is_err() {
                    return Ok(0);
                }
            }
            Err(e) => bail!("reading events from {}: {e}", cfg.control_socket.display()),
        }
    }
    let _ = out.flush();
    if follow {
        eprintln!("agent-guard events: the daemon closed the stream (stopped?)");
        return Ok(1);
    }
    Ok(0)
}

#[derive(Serialize)]
struct Down {
    running: bool,
    error: String,
    managed_root: String,
    runs: Vec<DownRun>,
}

#[derive(Serialize)]
struct DownRun {
    id: String,
    cgroup: String,
    processes: u64,
    frozen: bool,
}

#[derive(Serialize)]
struct Up<'a> {
    running: bool,
    #[serde(flatten)]
    status: &'a control::DaemonStatus,
}

/// `status`: the daemon's state; when it is down, say so (exit 3) and whether runs are left
/// under the managed root.
pub fn status(cfg: &Config, json: bool) -> Result<Code> {
    let resp = match control::call(&cfg.control_socket, Request::Status) {
        Ok(r) => r,
        Err(e) if e.daemon_down() => return status_down(cfg, json, &e),
        Err(e) => return Err(e.into()),
    };
    let s = resp.status.context("the daemon did not report its status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&Up { running: true, status: &s })?);
        return Ok(0);
    }
    let group = match s.control_group_gid {
        Some(gid) => format!("group {} (gid {gid})", s.control_group),
        None => format!("group {} does not exist: root only", s.control_group),
    };
    let syscall = if s.syscall_check_attached {
        "attached"
    } else {
        "not attached (no run or cgroup under a policy)"
    };
    println!("agent-guard {} daemon running, pid {}, up {}", s.version, s.pid, respond::age(s.uptime_secs));
    println!("config file     {}", s.config_file.as_deref().unwrap_or("(none: defaults)"));
    println!("control socket  {} ({group})", s.control_socket);
    println!("events log      {}", s.events_log);
    if let Some(key) = &s.log_pubkey {
        println!("log public key  {key} (verifies its checkpoints: agent-guard log verify)");
    }
    println!("policy dir      {}", s.policy_dir);
    println!("bpffs dir       {}", s.bpffs_dir);
    println!("managed root    {}", s.managed_root);
    println!(
        "runs            {} ({} running, {} frozen, {} held)",
        s.runs_running + s.runs_frozen + s.runs_held,
        s.runs_running,
        s.runs_frozen,
        s.runs_held
    );
    println!(
        "backend         {} ({})",
        s.backend.as_deref().unwrap_or("unknown"),
        s.backend_reason.as_deref().unwrap_or("no reason given")
    );
    for e in &s.enforcement {
        println!("  {:<30} {:<7} {}", e.operation, e.action, e.how);
    }
    println!("bound cgroups   {}", s.bound_cgroups);
    println!("policies        {} loaded", s.policies);
    println!("syscall check   {syscall}");
    println!(
        "syscall hooks   {}",
        if s.syscall_tracepoints_attached {
            "attached (every syscall on the host takes the traced path while a run exists)"
        } else {
            "not attached (no run or bound cgroup: no cost to the host)"
        }
    );
    println!("events dropped  {}", s.events_dropped);
    println!("events buffered {} ({} followers)", s.events_buffered, s.followers);
    let landlock = match (s.landlock_abi, s.landlock_enabled) {
        (0, _) => "not available on this kernel: the eBPF layer alone enforces, after the fact".to_string(),
        (abi, false) => format!("ABI {abi}, off (config landlock = false)"),
        (abi, true) => format!("ABI {abi}, for enforce-mode runs of `agent-guard run`; {} with a layer", s.landlock_runs.len()),
    };
    println!("landlock        {landlock}");
    for r in &s.landlock_runs {
        let c = &r.coverage;
        println!(
            "  {}{}  refuses {}",
            r.run,
            r.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
            c.refuses().join(", ")
        );
        for note in &c.ebpf_only {
            println!("    eBPF only: {note}");
        }
        for note in &c.carve_outs {
            println!("    carve-outs: {note}");
        }
    }
    Ok(0)
}

fn status_down(cfg: &Config, json: bool, why: &ClientError) -> Result<Code> {
    let (mount, root) = managed_root(cfg)?;
    let runs: Vec<DownRun> = respond::runs_below(&root)
        .unwrap_or_default()
        .into_iter()
        .map(|c| DownRun {
            cgroup: format!("/{}", c.dir.strip_prefix(&mount).unwrap_or(&c.dir).display()),
            processes: respond::procs(&c.dir).map_or(0, |p| p.len() as u64),
            frozen: respond::frozen(&c.dir),
            id: c.id,
        })
        .collect();
    if json {
        let d = Down { running: false, error: why.to_string(), managed_root: root.display().to_string(), runs };
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(EXIT_DAEMON_DOWN);
    }
    println!("{}", down_message(why));
    println!("{}", down_runs(&root, &runs));
    Ok(EXIT_DAEMON_DOWN)
}

fn down_runs(root: &Path, runs: &[DownRun]) -> String {
    if !root.exists() {
        return format!("managed root {}: does not exist (no runs)", root.display());
    }
    if runs.is_empty() {
        return format!("managed root {}: no runs", root.display());
    }
    let mut s = format!(
        "managed root {}: run cgroups left: {} (freeze, thaw and kill still work on them, as root)",
        root.display(),
        runs.len()
    );
    for r in runs {
        s.push_str(&format!(
            "\n  {}  {} processes{}",
            r.id,
            r.processes,
            if r.frozen { ", frozen" } else { "" }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_table_aligns_and_explains_held_runs() {
        let r = |id: &str, name: Option<&str>, state: &str, held: Option<&str>| RunStatus {
            id: id.into(),
            name: name.map(Into::into),
            policy: Some("coding-agent".into()),
            state: state.into(),
            held: held.map(Into::into),
            processes: 101,
            violations: 2,
            age_secs: 75,
            started: String::new(),
            cgroup: String::new(),
            bound: false,
            unregistered: false,
            labels: Default::default(),
            tasks: vec![],
            landlock: None,
        };
        let t = ps_table(&[r("r-000001", Some("a-much-longer-name"), "running", None), r("r-000002", None, "held", Some("files.read /etc/shadow"))]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("RUN       NAME                POLICY"), "{t}");
        assert!(lines[1].contains("a-much-longer-name  coding-agent  running  101"), "{t}");
        assert!(lines[2].contains(" -  ") && lines[2].contains("held") && lines[2].ends_with("1m15s"), "{t}");
        assert_eq!(lines[3], "r-000002 held: files.read /etc/shadow");
    }

    #[test]
    fn action_lines_say_what_happened() {
        assert_eq!(action_line(Action::Freeze, "r-1", Some("n"), 101, 3.2, false), "froze r-1 (n): 101 processes in 3.200 ms");
        assert_eq!(action_line(Action::Kill, "r-1", None, 5, 1.0, true), "killed r-1: 5 processes in 1.000 ms; cgroup removed");
    }
}
