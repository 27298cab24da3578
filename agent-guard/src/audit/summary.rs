//! A run's story from its events: the run record, its holds with their answers, and the
//! timeline a reviewer reads first (`summary.md`, and `agent-guard show`). Each is a pure
//! function of the events' lines, so `evidence verify` makes them again and compares.
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

fn str_of<'a>(e: &'a Value, k: &str) -> &'a str {
    e[k].as_str().unwrap_or("")
}

/// The events' lines as JSON (a line that is not JSON is left out: verification catches it).
pub fn parse_events<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Value> {
    lines.into_iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn is_violation(e: &Value) -> bool {
    matches!(str_of(e, "verdict"), "deny" | "kill" | "would_deny" | "hold")
}

/// Every (policy, version) an event of the run was judged under, in order.
pub fn policies(events: &[Value]) -> BTreeSet<(String, String)> {
    events
        .iter()
        .filter_map(|e| Some((e["policy"].as_str()?.to_string(), e["policy_version"].as_str()?.to_string())))
        .collect()
}

/// The run record: command, who started it, labels, times, exit, counts.
pub fn run_record(run: &str, events: &[Value]) -> Value {
    let start = events.iter().find(|e| e["kind"] == "run_start");
    let end = events.iter().rev().find(|e| e["kind"] == "run_end");
    let first = events.iter().find(|e| e["run"] == run);
    let pick = |k: &str| start.or(first).map_or(Value::Null, |e| e[k].clone());
    json!({
        "run": run,
        "name": pick("run_name"),
        "host": pick("host"),
        "labels": pick("labels"),
        "cgroup": pick("cgroup"),
        "command": start.map_or(Value::Null, |e| e["argv"].clone()),
        "started": start.map_or(Value::Null, |e| e["ts"].clone()),
        "started_by_uid": start.map_or(Value::Null, |e| e["requested_by_uid"].clone()),
        "started_by_pid": start.map_or(Value::Null, |e| e["requested_by_pid"].clone()),
        "ended": end.map_or(Value::Null, |e| e["ts"].clone()),
        "exit_status": end.map_or(Value::Null, |e| e["exit_status"].clone()),
        "policies": policies(events).into_iter().map(|(n, v)| json!({"name": n, "version": v})).collect::<Vec<_>>(),
        "events": events.len(),
        "violations": events.iter().filter(|e| is_violation(e) && e["kind"] != "hold").count(),
        "first_seq": events.first().map_or(Value::Null, |e| e["seq"].clone()),
        "last_seq": events.last().map_or(Value::Null, |e| e["seq"].clone()),
    })
}

/// Each hold: what was held (the attempts), and its answer: who, when, how.
pub fn holds(events: &[Value]) -> Value {
    let mut out: Vec<Value> = Vec::new();
    for e in events.iter().filter(|e| e["kind"] == "hold") {
        match str_of(e, "hold") {
            "held" => out.push(json!({
                "held_at": e["ts"], "seq": e["seq"], "rule": e["rule"], "pid": e["tgid"], "comm": e["comm"],
                "attempts": e["attempts"], "held_argv": e["held_argv"], "freeze_ms": e["freeze_ms"], "answer": Value::Null,
            })),
            answer => {
                let a = json!({
                    "answer": answer, "answered_at": e["ts"], "seq": e["seq"], "grant": e["grant"], "held_ms": e["held_ms"],
                    "by_uid": e["requested_by_uid"], "by_pid": e["requested_by_pid"],
                });
                match out.iter_mut().rev().find(|h| h["answer"].is_null()) {
                    Some(h) => h["answer"] = a,
                    None => out.push(json!({ "held_at": Value::Null, "answer": a })),
                }
            }
        }
    }
    Value::Array(out)
}

/// What an event was about, in a few words.
fn what(e: &Value) -> String {
    let s = |k: &str| str_of(e, k).to_string();
    let mut w = match str_of(e, "kind") {
        "exec" if e["argv"].as_array().is_some_and(|a| !a.is_empty()) => format!("exec `{}`", argv(&e["argv"])),
        "exec" => format!("exec `{}`", s("path")),
        "open" => format!("open `{}` ({})", s("path"), s("access")),
        "connect" | "sendmsg" if e["path"].is_string() => format!("{} unix `{}`", s("kind"), s("path")),
        "connect" | "sendmsg" => format!("{} {} {}:{}", s("kind"), s("proto"), s("addr"), e["port"]),
        "bind" => format!("{} {}:{}", s("op"), s("addr"), e["port"]),
        "syscall" => format!("syscall {}", s("name")),
        "socket" => format!("socket family {}", e["family_name"].as_str().map_or(e["family"].to_string(), str::to_string)),
        k => k.to_string(),
    };
    if let Some(err) = e["error"].as_str() {
        w.push_str(&format!(" → {err}"));
    }
    w
}

fn argv(v: &Value) -> String {
    v.as_array().map(|a| a.iter().map(|x| x.as_str().unwrap_or("?")).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// Markdown text from a run's data: never a control character, never a backtick that would
/// end a code span.
fn md(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '�' } else if c == '`' { '\'' } else { c }).collect()
}

/// The event with every string made safe for markdown (see `md`).
fn clean(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(md(s)),
        Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), clean(v))).collect()),
        other => other.clone(),
    }
}

fn by(e: &Value) -> String {
    match (e["requested_by_uid"].as_u64(), e["requested_by_pid"].as_u64()) {
        (Some(u), Some(p)) => format!(" by uid {u} (pid {p})"),
        (Some(u), None) => format!(" by uid {u}"),
        _ => String::new(),
    }
}

/// One timeline line for a notable event (None: an allowed observation, counted instead).
fn timeline_line(e: &Value) -> Option<String> {
    let ts = str_of(e, "ts");
    let rule = e["rule"].as_str().map(|r| format!(", rule {r}")).unwrap_or_default();
    let proc_ = match (e["tgid"].as_u64(), e["comm"].as_str()) {
        (Some(p), Some(c)) => format!(" by pid {p} ({c})"),
        _ => String::new(),
    };
    let line = match (str_of(e, "kind"), str_of(e, "verdict")) {
        ("run_start", _) => format!("**started** `{}`{}", argv(&e["argv"]), by(e)),
        ("run_end", _) => format!("**ended**, exit status {}", e["exit_status"]),
        ("hold", _) => match str_of(e, "hold") {
            "held" => {
                let attempts: Vec<String> = e["attempts"]
                    .as_array()
                    .map(|a| a.iter().map(|x| format!("{} {}", str_of(x, "kind"), str_of(x, "what"))).collect())
                    .unwrap_or_default();
                format!("**held for review**: {}{rule}{proc_}", attempts.join("; "))
            }
            answer => format!(
                "**hold {answer}**{}{}{}",
                e["grant"].as_str().map(|g| format!(" ({g})")).unwrap_or_default(),
                by(e),
                e["held_ms"].as_u64().map(|m| format!(" after {m} ms")).unwrap_or_default()
            ),
        },
        (k @ ("freeze" | "thaw" | "kill"), _) => format!(
            "**{k}**{}, {} processes{}",
            by(e),
            e["processes"],
            e["error"].as_str().map(|x| format!(", FAILED: {x}")).unwrap_or_default()
        ),
        ("drop", _) => format!("**events lost**: {} at {}", e["count"], str_of(e, "stage")),
        ("chain_gap", _) => format!("**log chain gap**: {}", str_of(e, "reason")),
        ("policy_reload", _) => format!("policy {} {}", str_of(e, "policy"), str_of(e, "result")),
        (_, "allow") => return None,
        (_, v) => format!(
            "**{}** {}{rule}{proc_}{}",
            v.to_uppercase(),
            what(e),
            e["layer"].as_str().map(|l| format!(", by {l}")).unwrap_or_default()
        ),
    };
    Some(format!("- `{ts}` {line}"))
}

/// summary.md: the run at a glance, then the timeline of what a reviewer must see.
pub fn summary(run: &str, events: &[Value]) -> String {
    let r = run_record(run, events);
    let mut out = String::new();
    let name = r["name"].as_str().map(|n| format!(" ({})", md(n))).unwrap_or_default();
    out.push_str(&format!("# Run {}{name}\n\n", md(run)));
    let row = |k: &str, v: String| format!("| {k} | {} |\n", md(&v).replace('|', "\\|"));
    out.push_str("| | |\n|---|---|\n");
    out.push_str(&row("host", r["host"].as_str().unwrap_or("-").into()));
    out.push_str(&row("command", argv(&r["command"])));
    let started = match (r["started"].as_str(), r["started_by_uid"].as_u64()) {
        (Some(t), Some(u)) => format!("{t} by uid {u}"),
        (Some(t), None) => t.into(),
        _ => "- (no run_start in these events)".into(),
    };
    out.push_str(&row("started", started));
    let ended = match r["ended"].as_str() {
        Some(t) => format!("{t}, exit status {}", r["exit_status"]),
        None => "not yet (no run_end in these events)".into(),
    };
    out.push_str(&row("ended", ended));
    let pols: Vec<String> = policies(events).into_iter().map(|(n, v)| format!("{n} {v}")).collect();
    out.push_str(&row("policy", if pols.is_empty() { "-".into() } else { pols.join(", ") }));
    let labels: Vec<String> = r["labels"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect()).unwrap_or_default();
    if !labels.is_empty() {
        out.push_str(&row("labels", labels.join(", ")));
    }
    out.push_str(&row("events", format!("{} (log seq {}..{})", r["events"], r["first_seq"], r["last_seq"])));
    out.push_str(&row("violations", r["violations"].to_string()));
    let holds = holds(events);
    let holds = holds.as_array().map_or(0, Vec::len);
    out.push_str(&row("holds", holds.to_string()));
    out.push_str("\n## Timeline\n\n");
    let mut quiet: BTreeMap<String, u64> = BTreeMap::new();
    for e in events.iter().map(clean) {
        match timeline_line(&e) {
            Some(l) => {
                out.push_str(&l);
                out.push('\n');
            }
            None => *quiet.entry(str_of(&e, "kind").to_string()).or_default() += 1,
        }
    }
    if !quiet.is_empty() {
        let counts: Vec<String> = quiet.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push_str(&format!("\nAllowed, not listed above: {}.\n", md(&counts.join(", "))));
    }
    out
}
