//! The policy lifecycle commands: `policy suggest`, `diff`, `history`, `show NAME@VERSION`
//! and `rollback`.
use std::{
    io::BufRead,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{
    config::Config,
    control::{self, HistoryEntry as Entry, Request},
    policy::{self, diff, suggest, Policy},
};

use super::Code;

/// `policy diff`'s exit status when the policies differ (0: equal; 2: an operand could not
/// be loaded).
pub const EXIT_DIFFERENT: Code = 1;
pub const EXIT_TROUBLE: Code = 2;

/// A policy operand: `NAME@VERSION` (from the history), a file (a path that exists, or one
/// with a '/' or ending in .toml), or the name of a loaded policy.
pub fn load(cfg: &Config, spec: &str) -> Result<Policy> {
    if Path::new(spec).is_file() {
        return checked(policy::load_file(Path::new(spec)), spec);
    }
    let (text, origin) = if let Some((name, version)) = spec.split_once('@') {
        let r = control::call(&cfg.control_socket, Request::PolicyVersion { name: name.into(), version: version.into() })
            .with_context(|| format!("{spec}: asking the daemon for that version"))?;
        let e = r.history.and_then(|mut h| h.pop()).context("the daemon did not send the version")?;
        (e.text, format!("{name}@{}", e.number))
    } else if spec.contains('/') || spec.ends_with(".toml") {
        return checked(policy::load_file(Path::new(spec)), spec);
    } else {
        let r = control::call(&cfg.control_socket, Request::PolicyShow { name: spec.into() })
            .with_context(|| format!("{spec}: not a file, so the name of a loaded policy; asking the daemon"))?;
        (r.text.unwrap_or_default(), format!("{spec} (loaded)"))
    };
    checked(policy::parse(&text, &origin), spec)
}

fn checked(c: policy::Checked, spec: &str) -> Result<Policy> {
    match c.policy {
        Some(p) if c.errors.is_empty() => Ok(p),
        _ => bail!("{spec} is not a valid policy:\n{}", c.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")),
    }
}

#[derive(Serialize)]
struct Side<'a> {
    name: &'a str,
    version: &'a str,
    source: &'a str,
}

#[derive(Serialize)]
struct DiffJson<'a> {
    equal: bool,
    old: Side<'a>,
    new: Side<'a>,
    changes: &'a [diff::Change],
}

/// `policy diff OLD NEW`: exit 0 when equal, 1 when different.
pub fn diff(cfg: &Config, old: &str, new: &str, json: bool) -> Result<Code> {
    let (a, b) = (load(cfg, old)?, load(cfg, new)?);
    let changes = diff::diff(&a, &b);
    if json {
        let out = DiffJson {
            equal: changes.is_empty(),
            old: Side { name: &a.name, version: &a.version, source: old },
            new: Side { name: &b.name, version: &b.version, source: new },
            changes: &changes,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if !changes.is_empty() {
        println!("--- {old} ({} {})", a.name, a.version);
        println!("+++ {new} ({} {})", b.name, b.version);
        print!("{}", diff::text(&changes));
    }
    Ok(if changes.is_empty() { 0 } else { EXIT_DIFFERENT })
}

/// The JSON lines of `path` that `keep` keeps, each with where it came from (`FILE:LINE`);
/// blank lines skipped, every line checked (a rotated log of 100 MB is not held whole).
/// `strict`: a line that is not JSON is an error; else it is skipped (the live log, whose
/// last line the daemon may be writing).
pub fn read_events(path: &Path, keep: &dyn Fn(&Value) -> bool, strict: bool) -> Result<Vec<(String, Value)>> {
    let f = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(|| format!("{}: cannot read", at()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) if strict => bail!("{}: not a JSON event: {e}", at()),
            Err(_) => continue,
        };
        if keep(&v) {
            out.push((at(), v));
        }
    }
    Ok(out)
}

/// The events of one run from the daemon's buffer (finished runs too, while their events are
/// still there).
fn daemon_events(cfg: &Config, run: &str) -> Result<Vec<(String, Value)>> {
    let req = Request::Events { run: Some(run.into()), follow: false, json: true, violations: false, since: None, tail: None };
    let (_, lines) = control::stream(&cfg.control_socket, req).with_context(|| format!("the events of run {run} from the daemon"))?;
    let mut out = Vec::new();
    for (i, line) in lines.lines().enumerate() {
        let at = format!("the daemon's events of run {run}, line {}", i + 1);
        let line = line.with_context(|| format!("{at}: cannot read"))?;
        let v: Value = serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("{at}: not a JSON event: {e}"))?;
        out.push((at, v));
    }
    Ok(out)
}

/// What `policy suggest` was asked for.
pub struct SuggestArgs {
    pub runs: Vec<String>,
    pub events: Vec<PathBuf>,
    pub base: Option<String>,
    pub name: Option<String>,
}

/// `policy suggest`: the policy on stdout; warnings and a summary on stderr.
pub fn suggest(cfg: &Config, a: SuggestArgs) -> Result<Code> {
    if a.runs.is_empty() && a.events.is_empty() {
        bail!("give the runs to learn from: --run RUN (their events in the daemon or its events log) and/or --events FILE (JSON lines, e.g. a rotated log)");
    }
    let of_run = |e: &Value, run: &str| e["run"].as_str() == Some(run) || e["run_name"].as_str() == Some(run);
    let wanted = |e: &Value| a.runs.is_empty() || a.runs.iter().any(|r| of_run(e, r));
    let mut from_files = Vec::new();
    for f in &a.events {
        from_files.extend(read_events(f, &wanted, true)?);
    }
    let mut events = Vec::new();
    if a.runs.is_empty() {
        events = from_files;
    } else {
        for run in &a.runs {
            let mut mine: Vec<(String, Value)> = from_files.iter().filter(|(_, e)| of_run(e, run)).cloned().collect();
            let mut asked = Vec::new();
            if mine.is_empty() {
                match daemon_events(cfg, run) {
                    Ok(v) => mine = v,
                    Err(e) => asked.push(format!("{e:#}")),
                }
            }
            // Events that left the daemon's buffer (a long run, or a daemon restarted since):
            // the log, when it holds more of the run (its run_start).
            let started = |v: &[(String, Value)]| v.iter().any(|(_, e)| e["kind"] == "run_start");
            if !started(&mine) && cfg.events_log.is_file() {
                match read_events(&cfg.events_log, &|e| of_run(e, run), false) {
                    Ok(logged) => {
                        if mine.is_empty() || started(&logged) {
                            mine = logged;
                        }
                    }
                    Err(e) => asked.push(format!("{e:#}")),
                }
            }
            if !mine.is_empty() && !started(&mine) {
                eprintln!(
                    "agent-guard policy suggest: warning: the events of run {run} lack its start: what it did first may be missing \
                     (give the rotated events logs with --events FILE)"
                );
            }
            if mine.is_empty() {
                bail!(
                    "run {run}: no events in the daemon's buffer{}, nor in {}{}; give a rotated log with --events FILE",
                    if a.events.is_empty() { "" } else { ", the --events files" },
                    cfg.events_log.display(),
                    asked.iter().map(|e| format!("\n  {e}")).collect::<String>()
                );
            }
            events.extend(mine);
        }
    }
    let base = a.base.as_deref().map(|b| load(cfg, b)).transpose()?;
    let s = suggest::suggest(&events, base.as_ref(), a.name.as_deref()).map_err(anyhow::Error::msg)?;
    for w in &s.warnings {
        eprintln!("agent-guard policy suggest: warning: {w}");
    }
    let runs = s.runs.iter().cloned().collect::<Vec<_>>().join(", ");
    match &base {
        Some(b) => eprintln!("agent-guard policy suggest: {} addition{} to policy {} from {} events of runs {runs}", s.rules, if s.rules == 1 { "" } else { "s" }, b.name, s.events),
        None => eprintln!("agent-guard policy suggest: {} rules from {} events of runs {runs}", s.rules, s.events),
    }
    print!("{}", s.text);
    Ok(0)
}

/// `policy history NAME`.
pub fn history(cfg: &Config, name: &str, json: bool) -> Result<Code> {
    let r = control::call(&cfg.control_socket, Request::PolicyHistory { name: name.into() })?;
    let entries = r.history.unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(0);
    }
    let current = control::call(&cfg.control_socket, Request::PolicyShow { name: name.into() }).ok().and_then(|r| r.policy).map(|p| p.version);
    let in_force = current.as_ref().and_then(|c| entries.iter().rposition(|e| e.result == "ok" && &e.version == c));
    println!("{:<8} {:<27} {:<21} {:<7} {:<9} SOURCE", "VERSION", "TIME", "SHA256", "RESULT", "BY");
    for (i, e) in entries.iter().enumerate() {
        println!("{}", history_line(e, in_force == Some(i)));
    }
    Ok(0)
}

fn history_line(e: &Entry, in_force: bool) -> String {
    let sha: String = e.version.strip_prefix("sha256:").unwrap_or("-").chars().take(19).collect();
    let by = e.requested_by_uid.map_or_else(|| "policy_dir".to_string(), |u| format!("uid {u}"));
    let mut source = e.source.clone();
    if let Some(n) = e.restores {
        source.push_str(&format!(" (to version {n})"));
    }
    if let Some(err) = &e.error {
        source.push_str(&format!(": {}", err.lines().next().unwrap_or_default()));
    }
    let number = format!("{}{}", e.number, if in_force { "*" } else { "" });
    format!("{number:<8} {:<27} {:<21} {:<7} {by:<9} {source}", e.time, if sha.is_empty() { "-".into() } else { sha }, e.result)
}

/// `policy show NAME@VERSION`: that version's text, from the history.
pub fn show_version(cfg: &Config, name: &str, version: &str) -> Result<Code> {
    let r = control::call(&cfg.control_socket, Request::PolicyVersion { name: name.into(), version: version.into() })?;
    let e = r.history.and_then(|mut h| h.pop()).context("the daemon did not send the version")?;
    println!("# {name} version {} {} (applied {} from {}, {})", e.number, e.version, e.time, e.source, e.result);
    print!("{}", e.text);
    Ok(0)
}

/// `policy rollback NAME [VERSION]`.
pub fn rollback(cfg: &Config, name: &str, version: Option<String>) -> Result<Code> {
    let r = control::call(&cfg.control_socket, Request::PolicyRollback { name: name.into(), version })?;
    let p = r.policy.context("the daemon did not describe the policy")?;
    let n = r.history.and_then(|mut h| h.pop()).map_or_else(String::new, |e| format!(" version {}", e.number));
    println!("policy {} rolled back to{n}: {} ({} mode)", p.name, p.version, p.mode);
    Ok(0)
}
