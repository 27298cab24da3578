//! Prometheus metrics: what the daemon counts, and the `/metrics` endpoint on `metrics_listen`.
//!
//! Counters are fed from the event stream (every event passes `Metrics::observe`), so a
//! metric and the log never disagree about what happened. What is a state rather than a
//! count (active runs, loaded policy versions) is read from the daemon at each scrape.
//! No run ids, paths or pids are labels: `policy` is bounded by the policy limit, `kind`,
//! `action`, `stage`, `outcome` and `result` are fixed sets.
use std::{
    collections::HashSet,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::Full;
use hyper::{body::Bytes, header, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    core::Collector, Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::warn;

use crate::output::event::{Detail, Event, Kind, Verdict};

/// Where events are lost, as `drop` events and `agent_guard_events_dropped_total` name it.
pub const DROP_STAGES: [&str; 5] = ["kernel_ringbuf", "kernel_pending", "userspace_queue", "follower", "sink"];
/// `result` of a `policy_reload` event.
pub const RELOAD_RESULTS: [&str; 3] = ["ok", "unchanged", "error"];
/// `outcome` of `agent_guard_runs_total`, from the run's `run_end`.
pub const RUN_OUTCOMES: [&str; 4] = ["ok", "failed", "killed", "unknown"];
/// Verdicts counted as violations (the action taken); `would_deny` is counted apart. A
/// tripwire (`decoy`) counts in any mode.
const ACTIONS: [Verdict; 4] = [Verdict::Deny, Verdict::Kill, Verdict::Hold, Verdict::Decoy];
/// Freezes take milliseconds; a slow one (a run with thousands of processes, a task stuck in
/// the kernel) is what the upper buckets are for.
const FREEZE_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Concurrent scrape connections; more are closed at once (a scraper needs one).
const MAX_CONNECTIONS: usize = 16;
/// Longest a scrape connection lives, and longest a client may take to send its headers.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Runs ended by `agent-guard kill` whose end is not recorded yet (bounded: a run whose end
/// never comes must not grow it forever).
const KILLED_MAX: usize = 4096;

/// The daemon's state as a scrape reports it.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub runs_active: usize,
    /// DNS forwarders serving runs with name rules.
    pub dns_forwarders: usize,
    /// (name, version) of every loaded policy.
    pub policies: Vec<(String, String)>,
}

pub struct Metrics {
    registry: Registry,
    violations: IntCounterVec,
    would_deny: IntCounterVec,
    limits: IntCounterVec,
    events: IntCounterVec,
    dropped: IntCounterVec,
    runs_active: IntGauge,
    dns_forwarders: IntGauge,
    runs: IntCounterVec,
    policy_info: IntGaugeVec,
    reloads: IntCounterVec,
    freeze: Histogram,
    landlock_denials: IntCounterVec,
    /// Serializes scrapes: a snapshot is applied and gathered as one.
    scrape: Mutex<()>,
    killed: Mutex<HashSet<String>>,
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    register(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

/// Adds `n` to the series of `vec` with `labels` (a label count mismatch is a bug, not a panic).
fn add(vec: &IntCounterVec, labels: &[&str], n: u64) {
    if let Ok(c) = vec.get_metric_with_label_values(labels) {
        c.inc_by(n);
    }
}

impl Metrics {
    /// `agent_guard_coverage{operation,action}` from `rows` (operation, action) of `status`'s
    /// enforcement table: 1 where the backend refuses or kills the operation's violations, 0
    /// where this host does not check them (action `none`), so an alert can fire on 0.
    pub fn set_coverage(&self, rows: &[(String, String)]) -> prometheus::Result<()> {
        let g = register(
            &self.registry,
            IntGaugeVec::new(
                Opts::new(
                    "agent_guard_coverage",
                    "Per operation, whether this host enforces it (1: refused or killed; 0: not checked), with the action.",
                ),
                &["operation", "action"],
            )?,
        )?;
        for (op, action) in rows {
            g.get_metric_with_label_values(&[op, action])?.set((action != "none") as i64);
        }
        Ok(())
    }

    /// The registry with every metric, and `backend_info` set for `backend`.
    pub fn new(backend: &str) -> prometheus::Result<Self> {
        let r = Registry::new();
        let m = Metrics {
            violations: counter(
                &r,
                "agent_guard_violations_total",
                "Operations a policy refused, by the action taken (deny, kill, hold).",
                &["policy", "kind", "action"],
            )?,
            would_deny: counter(
                &r,
                "agent_guard_would_deny_total",
                "Operations a policy in monitor mode would have refused.",
                &["policy", "kind"],
            )?,
            limits: counter(
                &r,
                "agent_guard_limit_exceeded_total",
                "Budgets of [limits] crossed by a run (once per window), by policy and limit.",
                &["policy", "limit"],
            )?,
            events: counter(&r, "agent_guard_events_total", "Events the daemon processed, by kind.", &["kind"])?,
            dropped: counter(
                &r,
                "agent_guard_events_dropped_total",
                "Events lost, by where they were lost (kernel_ringbuf, kernel_pending, userspace_queue, follower, sink).",
                &["stage"],
            )?,
            runs_active: register(&r, IntGauge::new("agent_guard_runs_active", "Runs and bound cgroups being watched now.")?)?,
            dns_forwarders: register(
                &r,
                IntGauge::new("agent_guard_dns_forwarders", "DNS forwarders serving runs whose policy has name rules.")?,
            )?,
            runs: counter(
                &r,
                "agent_guard_runs_total",
                "Runs that ended, by policy and outcome (ok, failed, killed, unknown).",
                &["policy", "outcome"],
            )?,
            policy_info: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("agent_guard_policy_info", "Loaded policies: 1 for the version in force."),
                    &["policy", "version"],
                )?,
            )?,
            reloads: counter(
                &r,
                "agent_guard_policy_reloads_total",
                "Policy loads and reloads, by result (ok, unchanged, error).",
                &["result"],
            )?,
            freeze: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "agent_guard_freeze_duration_seconds",
                        "Time to freeze a run (responder freeze or hold for review), until the kernel reported it frozen.",
                    )
                    .buckets(FREEZE_BUCKETS.to_vec()),
                )?,
            )?,
            landlock_denials: counter(
                &r,
                "agent_guard_landlock_denials_total",
                "Violations refused up front by a run's Landlock layer (EACCES; also counted in agent_guard_violations_total).",
                &["policy", "kind"],
            )?,
            registry: r,
            scrape: Mutex::new(()),
            killed: Mutex::new(HashSet::new()),
        };
        let backend_info = register(
            &m.registry,
            IntGaugeVec::new(
                Opts::new("agent_guard_backend_info", "The enforcement backend the daemon runs with (1)."),
                &["backend"],
            )?,
        )?;
        backend_info.get_metric_with_label_values(&[backend])?.set(1);
        let landlock_abi = register(
            &m.registry,
            IntGauge::new(
                "agent_guard_landlock_abi",
                "The kernel's Landlock ABI (0: no Landlock; runs get no Landlock layer and only the eBPF layer enforces).",
            )?,
        )?;
        landlock_abi.set(crate::runs::landlock::host_abi() as i64);
        // Series that exist from the start, so rate() and alerts see a 0 before the first loss.
        for stage in DROP_STAGES {
            add(&m.dropped, &[stage], 0);
        }
        for result in RELOAD_RESULTS {
            add(&m.reloads, &[result], 0);
        }
        m.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(m)
    }

    /// Counts one event. Called for every event the daemon emits, before it is queued for
    /// the log, so a full log queue loses no count.
    pub fn observe(&self, e: &Event) {
        let kind = e.kind.name();
        add(&self.events, &[kind], 1);
        let policy = e.policy.as_deref().unwrap_or("");
        // A `hold` event is the daemon's account of a held operation (and of its answer),
        // which was counted when the kernel reported it.
        if ACTIONS.contains(&e.verdict) && e.kind != Kind::Hold {
            add(&self.violations, &[policy, kind, e.verdict.name()], 1);
            if e.layer == Some("landlock") {
                add(&self.landlock_denials, &[policy, kind], 1);
            }
        } else if e.verdict == Verdict::WouldDeny {
            add(&self.would_deny, &[policy, kind], 1);
        }
        match &e.detail {
            // The log's losses are counted as they happen (watch_drops): a `drop` event of
            // stage sink may report some of them again after it was itself lost.
            Detail::Drop { count, stage } if *stage != "sink" => self.dropped(stage, *count),
            Detail::PolicyReload { result, .. } => add(&self.reloads, &[result], 1),
            Detail::Limit { limit, .. } => add(&self.limits, &[policy, limit], 1),
            Detail::RunEnd { exit_status } => {
                let killed = e.run.as_ref().is_some_and(|r| self.killed_set().remove(r));
                add(&self.runs, &[policy, outcome(*exit_status, killed)], 1);
            }
            // Freezes: a responder's (`agent-guard freeze`) and a hold's.
            Detail::Action { latency_ms, error: None, .. } if e.kind == Kind::Freeze => {
                self.freeze.observe(latency_ms / 1000.0);
            }
            Detail::Hold { hold: "held", freeze_ms: Some(ms), .. } => self.freeze.observe(ms / 1000.0),
            Detail::Action { error: None, .. } if e.kind == Kind::Kill => {
                if let Some(run) = &e.run {
                    let mut killed = self.killed_set();
                    if killed.len() >= KILLED_MAX {
                        killed.clear();
                    }
                    killed.insert(run.clone());
                }
            }
            _ => {}
        }
    }

    /// Counts `n` events lost at `stage` where no `drop` event goes through `observe`
    /// (a follower that fell behind, a failed write to the log).
    pub fn dropped(&self, stage: &str, n: u64) {
        add(&self.dropped, &[stage], n);
    }

    fn killed_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.killed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The text exposition of every metric, with `snap` (None: the daemon is stopping; the
    /// last state stays).
    pub fn render(&self, snap: Option<&Snapshot>) -> prometheus::Result<String> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = snap {
            self.runs_active.set(s.runs_active as i64);
            self.dns_forwarders.set(s.dns_forwarders as i64);
            // Only what is loaded now: a replaced version's series goes with it.
            self.policy_info.reset();
            for (name, version) in &s.policies {
                self.policy_info.get_metric_with_label_values(&[name.as_str(), version.as_str()])?.set(1);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// `outcome` of a run from its `run_end`: ok (status 0), failed (another status), killed
/// (ended by signal N: status 128+N as `agent-guard run` reports it; or by `agent-guard
/// kill` with no status reported), unknown (no status: a bound cgroup that went away, a run
/// whose launcher never reported its end).
pub fn outcome(exit_status: Option<i32>, killed: bool) -> &'static str {
    match exit_status {
        Some(0) => "ok",
        Some(s) if (129..=128 + 64).contains(&s) => "killed",
        Some(_) => "failed",
        None if killed => "killed",
        None => "unknown",
    }
}

/// Serves `GET /metrics` on `listener` until the runtime stops. `snapshot` reads the daemon's
/// state at each scrape.
pub async fn serve<F>(listener: TcpListener, metrics: Arc<Metrics>, snapshot: F)
where
    F: Fn() -> Option<Snapshot> + Send + Sync + 'static,
{
    let snapshot = Arc::new(snapshot);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("metrics_listen accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // closes the connection
        };
        let (metrics, snapshot) = (metrics.clone(), snapshot.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = respond(&req, &metrics, &*snapshot);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(slot);
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn respond<B>(req: &Request<B>, metrics: &Metrics, snapshot: &dyn Fn() -> Option<Snapshot>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => match metrics.render(snapshot().as_ref()) {
            Ok(body) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            Err(e) => {
                warn!("/metrics: {e}");
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics: {e}\n"))
            }
        },
        "/" => text(StatusCode::OK, "agent-guard: metrics at /metrics\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found: metrics are at /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, verdict: &str, policy: Option<&str>, detail: Detail) -> Event {
        let (kind, verdict) = (Kind::from_name(kind).unwrap(), Verdict::from_name(verdict).unwrap());
        Event { verdict, policy: policy.map(str::to_string), run: Some("r-1".into()), detail, ..Event::new(kind) }
    }

    /// Value of the sample `series` (name and labels exactly as rendered), if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Events touching every metric family.
    fn fed() -> Metrics {
        let m = Metrics::new("tracepoint").unwrap();
        m.set_coverage(&[("exec".into(), "kill".into()), ("create/truncate/unlink/rename".into(), "none".into())]).unwrap();
        m.observe(&event("open", "kill", Some("coding"), Detail::None));
        m.observe(&event("open", "kill", Some("coding"), Detail::None));
        m.observe(&event("connect", "deny", Some("coding"), Detail::None));
        m.observe(&Event { layer: Some("landlock"), ..event("open", "deny", Some("coding"), Detail::None) });
        m.observe(&event("exec", "hold", Some("review"), Detail::None));
        // The daemon's own hold events are not violations of their own.
        let held = Detail::Hold {
            hold: "held",
            reason: None,
            attempts: vec![],
            held_argv: vec![],
            recent_events: vec![],
            freeze_ms: Some(2.5),
            grant: None,
            held_ms: None,
            requested_by_uid: None,
            requested_by_pid: None,
        };
        m.observe(&event("hold", "hold", Some("review"), held));
        m.observe(&event("open", "would_deny", Some("watch"), Detail::None));
        m.observe(&event("open", "decoy", Some("watch"), Detail::None));
        let crossed = Detail::Limit { limit: "connects_per_minute", count: 6, max: 5, on_limit: "freeze", window_s: Some(60) };
        m.observe(&event("limit", "hold", Some("review"), crossed));
        m.observe(&event("open", "allow", None, Detail::None));
        m.observe(&event("drop", "allow", None, Detail::Drop { count: 7, stage: "kernel_ringbuf" }));
        let reload = |result| Detail::PolicyReload {
            result,
            previous_version: None,
            source: "p.toml".into(),
            error: None,
            requested_by_uid: None,
            requested_by_pid: None,
        };
        m.observe(&event("policy_reload", "allow", Some("coding"), reload("ok")));
        m.observe(&event("policy_reload", "allow", None, reload("error")));
        m.observe(&event("run_end", "allow", Some("coding"), Detail::RunEnd { exit_status: Some(137) }));
        let action = |latency_ms| Detail::Action {
            requested_by_uid: 0,
            requested_by_pid: 1,
            latency_ms,
            processes: 3,
            error: None,
        };
        m.observe(&event("freeze", "allow", None, action(1.5)));
        m.dropped("follower", 2);
        m
    }

    #[test]
    fn events_are_counted_by_kind_verdict_and_policy() {
        let m = fed();
        let snap = Snapshot { runs_active: 3, dns_forwarders: 0, policies: vec![("coding".into(), "sha256:aa".into())] };
        let t = m.render(Some(&snap)).unwrap();
        let v = |s: &str| sample(&t, s);
        assert_eq!(v(r#"agent_guard_violations_total{action="kill",kind="open",policy="coding"}"#), Some(2.0), "{t}");
        assert_eq!(v(r#"agent_guard_violations_total{action="deny",kind="connect",policy="coding"}"#), Some(1.0));
        assert_eq!(v(r#"agent_guard_violations_total{action="hold",kind="exec",policy="review"}"#), Some(1.0));
        assert!(!t.contains(r#"kind="hold",policy"#), "hold events are not violations: {t}");
        assert_eq!(v(r#"agent_guard_would_deny_total{kind="open",policy="watch"}"#), Some(1.0));
        assert_eq!(v(r#"agent_guard_events_total{kind="open"}"#), Some(6.0));
        assert_eq!(v(r#"agent_guard_violations_total{action="decoy",kind="open",policy="watch"}"#), Some(1.0), "a tripwire, in monitor mode too");
        assert_eq!(v(r#"agent_guard_limit_exceeded_total{limit="connects_per_minute",policy="review"}"#), Some(1.0));
        assert_eq!(v(r#"agent_guard_violations_total{action="deny",kind="open",policy="coding"}"#), Some(1.0));
        assert_eq!(v(r#"agent_guard_landlock_denials_total{kind="open",policy="coding"}"#), Some(1.0));
        assert_eq!(v("agent_guard_landlock_abi"), Some(crate::runs::landlock::host_abi() as f64));
        assert_eq!(v(r#"agent_guard_events_dropped_total{stage="kernel_ringbuf"}"#), Some(7.0));
        assert_eq!(v(r#"agent_guard_events_dropped_total{stage="follower"}"#), Some(2.0));
        assert_eq!(v(r#"agent_guard_events_dropped_total{stage="sink"}"#), Some(0.0));
        assert_eq!(v(r#"agent_guard_policy_reloads_total{result="ok"}"#), Some(1.0));
        assert_eq!(v(r#"agent_guard_policy_reloads_total{result="error"}"#), Some(1.0));
        assert_eq!(v(r#"agent_guard_policy_reloads_total{result="unchanged"}"#), Some(0.0));
        assert_eq!(v(r#"agent_guard_runs_total{outcome="killed",policy="coding"}"#), Some(1.0));
        assert_eq!(v("agent_guard_runs_active"), Some(3.0));
        assert_eq!(v(r#"agent_guard_policy_info{policy="coding",version="sha256:aa"}"#), Some(1.0));
        assert_eq!(v(r#"agent_guard_backend_info{backend="tracepoint"}"#), Some(1.0));
        assert_eq!(v("agent_guard_freeze_duration_seconds_count"), Some(2.0));
        assert_eq!(v(r#"agent_guard_freeze_duration_seconds_bucket{le="0.001"}"#), Some(0.0));
        assert_eq!(v(r#"agent_guard_freeze_duration_seconds_bucket{le="0.0025"}"#), Some(2.0));
        assert!(v("process_resident_memory_bytes").is_some_and(|b| b > 0.0), "{t}");

        // A reload replaces the version's series; without a snapshot the last state stays.
        let snap = Snapshot { runs_active: 0, dns_forwarders: 0, policies: vec![("coding".into(), "sha256:bb".into())] };
        let t = m.render(Some(&snap)).unwrap();
        assert!(!t.contains("sha256:aa") && t.contains("sha256:bb"), "{t}");
        let t = m.render(None).unwrap();
        assert!(t.contains("sha256:bb"), "{t}");
    }

    #[test]
    fn run_outcomes() {
        assert_eq!(outcome(Some(0), false), "ok");
        assert_eq!(outcome(Some(1), false), "failed");
        assert_eq!(outcome(Some(127), false), "failed");
        assert_eq!(outcome(Some(137), false), "killed");
        assert_eq!(outcome(Some(143), true), "killed");
        assert_eq!(outcome(Some(255), false), "failed");
        assert_eq!(outcome(None, true), "killed");
        assert_eq!(outcome(None, false), "unknown");
        let m = Metrics::new("tracepoint").unwrap();
        let kill = Detail::Action { requested_by_uid: 0, requested_by_pid: 1, latency_ms: 1.0, processes: 1, error: None };
        m.observe(&event("kill", "allow", None, kill));
        m.observe(&event("run_end", "allow", None, Detail::RunEnd { exit_status: None }));
        m.observe(&event("run_end", "allow", None, Detail::RunEnd { exit_status: None }));
        let t = m.render(None).unwrap();
        assert_eq!(sample(&t, r#"agent_guard_runs_total{outcome="killed",policy=""}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, r#"agent_guard_runs_total{outcome="unknown",policy=""}"#), Some(1.0), "{t}");
    }

    /// Every metric family the daemon exports, and every series name (a histogram's with its
    /// suffixes).
    fn exported() -> (Vec<String>, HashSet<String>) {
        let t = fed().render(Some(&Snapshot { runs_active: 1, dns_forwarders: 1, policies: vec![("p".into(), "v".into())] })).unwrap();
        let (mut families, mut names) = (Vec::new(), HashSet::new());
        for l in t.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let mut it = l.split(' ');
            let (Some(name), Some(kind)) = (it.next(), it.next()) else { continue };
            families.push(name.to_string());
            names.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
        }
        (families, names)
    }

    /// Metric names (agent_guard_* and process_*) a deploy file mentions.
    fn used(file: &str) -> HashSet<String> {
        let path = format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.starts_with("agent_guard_") || w.starts_with("process_"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_dashboard_and_the_alerts_use_only_exported_metrics() {
        let (families, exported) = exported();
        for file in ["grafana-dashboard.json", "prometheus-alerts.yml"] {
            let used = used(file);
            assert!(!used.is_empty(), "{file} uses no metric");
            let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
            assert!(unknown.is_empty(), "deploy/{file} uses metrics the daemon does not export: {unknown:?}");
        }
        // And the dashboard shows every agent_guard metric.
        let dash = used("grafana-dashboard.json");
        let missing: Vec<&String> = families
            .iter()
            .filter(|f| f.starts_with("agent_guard_") && !dash.iter().any(|u| u.starts_with(f.as_str())))
            .collect();
        assert!(missing.is_empty(), "the dashboard does not show {missing:?}");
        let dash: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}/../deploy/grafana-dashboard.json", env!("CARGO_MANIFEST_DIR"))).unwrap(),
        )
        .expect("the dashboard is JSON");
        assert!(dash["panels"].as_array().is_some_and(|p| !p.is_empty()));
    }
}
