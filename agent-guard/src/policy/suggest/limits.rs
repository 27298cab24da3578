//! `[limits]` from observed peaks: for each run, the most operations of a kind in any 60 s span
//! of its events (a sliding window, so the peak is never split across two fixed windows) and
//! the distinct destinations it reached; the suggestion is [`HEADROOM`] times the highest peak
//! of all runs, and at least [`FLOOR`].
use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

pub const HEADROOM: u64 = 2;
pub const FLOOR: u64 = 10;

/// The budget each kind of event counts towards (None: no per-minute budget).
fn budget_of(e: &Value) -> Vec<&'static str> {
    let kind = e["kind"].as_str().unwrap_or("");
    let verdict = e["verdict"].as_str().unwrap_or("");
    let mut out = Vec::new();
    match kind {
        "exec" if e.get("result").is_none() => out.push("execs_per_minute"),
        "open" if e["result"].as_i64().is_some_and(|r| r >= 0) => out.push("opens_per_minute"),
        "connect" => out.push("connects_per_minute"),
        _ => {}
    }
    if matches!(kind, "open" | "exec" | "connect" | "sendmsg") && matches!(verdict, "deny" | "kill" | "hold" | "would_deny") {
        out.push("denials_per_minute");
    }
    out
}

/// The most of `times` (seconds, any order) within any 60 s span.
fn peak(mut times: Vec<f64>) -> u64 {
    times.sort_by(f64::total_cmp);
    let (mut best, mut lo) = (0, 0);
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= 60.0 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as u64
}

/// Per budget: (the highest peak over the runs, the run that had it).
pub(super) fn peaks(events: &[(String, Value)]) -> BTreeMap<&'static str, (u64, String)> {
    let mut times: BTreeMap<(&'static str, String), Vec<f64>> = BTreeMap::new();
    let mut dests: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, e) in events {
        let Some(run) = e["run"].as_str() else { continue };
        let Some(t) = e["ts"].as_str().and_then(|t| humantime::parse_rfc3339_weak(t).ok()) else { continue };
        let t = t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        for b in budget_of(e) {
            times.entry((b, run.to_string())).or_default().push(t);
        }
        if matches!(e["kind"].as_str(), Some("connect" | "sendmsg")) && e["verdict"] == "allow" {
            if let (Some(a), Some(p)) = (e["addr"].as_str(), e["port"].as_u64()) {
                dests.entry(run.to_string()).or_default().insert(format!("{a}:{p}"));
            }
        }
    }
    let mut out: BTreeMap<&'static str, (u64, String)> = BTreeMap::new();
    let mut keep = |b: &'static str, n: u64, run: String| {
        if out.get(b).is_none_or(|(m, _)| n > *m) {
            out.insert(b, (n, run));
        }
    };
    for ((b, run), t) in times {
        keep(b, peak(t), run);
    }
    for (run, d) in dests {
        keep("distinct_destinations", d.len() as u64, run);
    }
    out
}

/// The `[limits]` section for `peaks` (empty when the runs did nothing it counts).
pub(super) fn render(peaks: &BTreeMap<&'static str, (u64, String)>) -> String {
    if peaks.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\n[limits]\n# {HEADROOM}x the highest peak of the runs (at least {FLOOR}); per-minute peaks over any 60 s of a run.\n\
         # processes is not suggested: the events do not say how many were alive at once.\n"
    );
    for name in crate::policy::tripwire::LIMIT_NAMES {
        if let Some((n, run)) = peaks.get(name) {
            let what = if name == "distinct_destinations" { "destinations" } else { "in a minute" };
            s.push_str(&format!("{name} = {}  # peak {n} {what}, run {run}\n", (n * HEADROOM).max(FLOOR)));
        }
    }
    s.push_str("on_limit = \"freeze\"\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(run: &str, secs: u64, kind: &str, verdict: &str, extra: Value) -> (String, Value) {
        let ts = humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000 + secs)).to_string();
        let mut e = json!({"run": run, "ts": ts, "kind": kind, "verdict": verdict});
        e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        (String::new(), e)
    }

    #[test]
    fn peaks_are_per_run_over_any_sixty_seconds_and_budgets_have_headroom() {
        let c = |a: &str| json!({"addr": "10.0.0.1", "port": a.parse::<u64>().unwrap()});
        let mut events = Vec::new();
        // Run a: 3 connects at 50-55 s and 4 at 100-105 s: 7 within 60 s (50..105), split by a
        // fixed minute boundary at 60 s.
        for s in [50, 52, 55, 100, 101, 102, 105] {
            events.push(ev("a", s, "connect", "allow", c("443")));
        }
        // Run b: 5 connects to 3 destinations, and 2 would-be denials.
        for (s, p) in [(0, "1"), (1, "2"), (2, "3"), (3, "1"), (200, "2")] {
            events.push(ev("b", s, "connect", "allow", c(p)));
        }
        events.push(ev("b", 5, "open", "would_deny", json!({"result": 3})));
        events.push(ev("b", 6, "open", "would_deny", json!({"result": -13})));
        let p = peaks(&events);
        assert_eq!(p["connects_per_minute"], (7, "a".to_string()));
        assert_eq!(p["distinct_destinations"], (3, "b".to_string()));
        assert_eq!(p["denials_per_minute"], (2, "b".to_string()));
        assert_eq!(p["opens_per_minute"], (1, "b".to_string()));
        let text = render(&p);
        assert!(text.contains("connects_per_minute = 14  # peak 7 in a minute, run a"), "{text}");
        assert!(text.contains("opens_per_minute = 10  # peak 1"), "{text}");
        let policy = crate::policy::parse(&format!("name = \"x\"\n{text}"), "t").policy.expect("valid");
        assert_eq!(policy.tripwires.limits[agent_guard_common::limit::CONNECTS], Some(14));
    }
}
