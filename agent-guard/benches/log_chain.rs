//! Events per second the daemon's log writer (`output::sink::write_events`, the function the
//! daemon runs) writes with the hash chain and its signed checkpoints, against the same
//! writer without the chain: the same events, in the same process, rounds interleaved, so
//! the ratio compares like with like on whatever machine runs it.
//!
//! `cargo bench -p agent-guard --bench log_chain [-- EVENTS ROUNDS]` (default 200000 and 5).
//! Prints each round, then the medians and their ratio. Not a pass/fail test.
use std::{sync::Arc, time::Instant};

use agent_guard::{
    config::StderrEvents,
    output::{
        chained::ChainWriter,
        event::{Detail, Event, Kind, Verdict},
        sink::{write_events, EventLog, SinkLosses},
    },
};

/// An allowed open of a run, as the daemon writes thousands of them a second.
fn event(i: u64) -> Event {
    let mut e = Event::new(Kind::Open);
    e.ts = format!("2026-12-05T09:28:02.{:06}Z", i % 1_000_000);
    e.host = "bench-host".into();
    e.verdict = Verdict::Allow;
    e.layer = Some("ebpf");
    e.hook = Some("tracepoint");
    e.run = Some("r-93c75d".into());
    e.run_name = Some("bench".into());
    e.policy = Some("coding-agent".into());
    e.policy_version = Some("sha256:8d48213fbc495e0fbfaef71fb67052ef3442bb0cb6798878961ac77cd164badb".into());
    (e.pid, e.tgid, e.ppid, e.uid, e.gid) = (Some(23922), Some(23922), Some(23917), Some(1000), Some(1000));
    e.comm = Some("cc1".into());
    e.exe = Some("/usr/lib/gcc/x86_64-linux-gnu/12/cc1".into());
    e.cgroup = Some("/agent-guard/r-93c75d".into());
    e.cgroup_id = Some(506109);
    e.detail = Detail::Open {
        path: format!("/srv/work/project/src/module-{}/file-{i}.h", i % 97),
        access: "read",
        flags: 524288,
        result: 3,
        error: None,
        path_resolved: true,
        path_truncated: false,
    };
    e
}

/// Writes `events` through the daemon's writer into a fresh log; events per second.
fn round(rt: &tokio::runtime::Runtime, dir: &std::path::Path, events: &[Arc<Event>], chained: bool) -> f64 {
    let log_path = dir.join(if chained { "chained.jsonl" } else { "plain.jsonl" });
    let data = dir.join("data");
    let _ = std::fs::remove_file(&log_path);
    let _ = std::fs::remove_file(agent_guard::output::chain::head_path(&data));
    let log = EventLog::open(&log_path, 0, 0).unwrap();
    // The daemon's defaults: a checkpoint per 10000 lines or 60 s.
    let chain = chained.then(|| ChainWriter::open(&data, &log_path, "bench-host", 10_000, std::time::Duration::from_secs(60)).unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(65536);
    let (_cmd, cmds) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    rt.block_on(async {
        let writer = tokio::spawn(write_events(rx, log, chain, cmds, Arc::new(SinkLosses::default()), StderrEvents::None, Box::new(|_: &str| {})));
        for e in events {
            tx.send(e.clone()).await.unwrap();
        }
        drop(tx);
        writer.await.unwrap();
    });
    let secs = started.elapsed().as_secs_f64();
    let lines = std::fs::read(&log_path).unwrap().iter().filter(|b| **b == b'\n').count();
    assert!(lines >= events.len(), "every event written: {lines} of {}", events.len());
    events.len() as f64 / secs
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let n: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let events: Vec<Arc<Event>> = (0..n).map(|i| Arc::new(event(i))).collect();
    // Two workers, as the daemon's runtime.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::Builder::new().prefix("ag-log-bench-").tempdir_in("/var/tmp").unwrap();
    let (mut plain, mut chained, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    round(&rt, dir.path(), &events[..n as usize / 10], true); // warm-up
    for r in 0..rounds {
        let p = round(&rt, dir.path(), &events, false);
        let c = round(&rt, dir.path(), &events, true);
        println!("round {r}: without chain {p:.0} events/s, with chain {c:.0} events/s ({:.2})", c / p);
        plain.push(p);
        chained.push(c);
        ratios.push(c / p);
    }
    let (p, c, r) = (median(&mut plain), median(&mut chained), median(&mut ratios));
    println!("median of {rounds} rounds of {n} events: without chain {p:.0} events/s, with chain {c:.0} events/s; median ratio of a round {r:.2}");
}
