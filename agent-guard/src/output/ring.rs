//! The kernel ring buffer: records decoded, enriched with the run's metadata and emitted;
//! the kernel's drop counters reported as `drop` events.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use agent_guard_common::drop_slot;
use tokio::{
    io::unix::AsyncFd,
    sync::mpsc,
};
use tracing::warn;
use crate::{runs::cgroup, output::event::{self, Detail, Event, Kind, Verdict}};
use crate::runs::hold::on_hold;
use crate::daemon::core::*;
use crate::daemon::reload::rebind;

/// Records the ring reader takes out of the ring before it emits them.
pub(crate) const DRAIN_BATCH: usize = 256;

/// How long the ring reader pauses after a drain (see `read_ring`).
pub(crate) const RING_PAUSE: Duration = Duration::from_millis(5);

/// Reads the kernel ring buffer. Events that must follow everything the kernel has recorded
/// so far (a run's `run_end`) arrive on `after_ring`: the ring is drained first, then they are
/// emitted, so a run's last exec/open/exit events always come before its run_end.
pub(crate) async fn read_ring(
    shared: Arc<Shared>,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    mut after_ring: mpsc::UnboundedReceiver<AfterRing>,
) {
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until both drop.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot poll the ring buffer: {}", e.into_parts().1);
            return;
        }
    };
    let mut procs: HashMap<u32, crate::runs::evidence::Proc> = HashMap::new();
    let mut cgroup_paths: HashMap<u64, String> = HashMap::new();
    // Records are taken out of the ring in bounded batches, then emitted: an allowed event
    // that finds the queue full is dropped (and counted), a violation waits for room, so a
    // flooding run can cost other runs their allowed events but never their violations.
    let mut batch: Vec<Event> = Vec::with_capacity(DRAIN_BATCH);
    let mut drain = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>, batch: &mut Vec<Event>| {
        while batch.len() < DRAIN_BATCH {
            let Some(item) = ring.next() else { return false };
            match event::decode(&item) {
                Ok(raw) => batch.push(enrich(&shared, raw, &mut procs, &mut cgroup_paths)),
                Err(e) => warn!("undecodable kernel record: {e}"),
            }
        }
        true
    };
    async fn emit_batch(shared: &Arc<Shared>, batch: &mut Vec<Event>) {
        for e in batch.drain(..) {
            let held = matches!(e.verdict, Verdict::Hold | Verdict::Decoy).then(|| e.clone());
            if e.kind == Kind::Limit && e.verdict == Verdict::Kill {
                crate::runs::hold::on_limit_kill(shared, &e);
            }
            shared.emit_from_ring(e).await;
            if let Some(e) = held {
                on_hold(shared, e);
            }
        }
    }
    loop {
        tokio::select! {
            ready = fd.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        warn!("ring buffer poll: {e}");
                        return;
                    }
                };
                // Readiness is cleared before the drain, so a record submitted while it runs
                // wakes the next wait instead of waiting for the record after it.
                guard.clear_ready();
                while drain(guard.get_inner_mut(), &mut batch) {
                    emit_batch(&shared, &mut batch).await;
                }
                emit_batch(&shared, &mut batch).await;
                drop(guard);
                // The kernel wakes the reader at a record that finds it caught up: one wake-up
                // (an interrupt and a cross-CPU wake-up, several microseconds paid inside the
                // program that submits) and a hand-off to the writer per record while it keeps
                // up. A short pause after each drain lets records accumulate, so a busy ring
                // costs one wake-up per pause instead of one per record; a lone event after a
                // quiet spell still wakes the reader at once. The kernel decides every
                // verdict on its own; only the log and the followers see records up to this
                // much later. The ring holds the backlog meanwhile (its drops are counted).
                tokio::time::sleep(RING_PAUSE).await;
            }
            Some((e, done)) = after_ring.recv() => {
                while drain(fd.get_mut(), &mut batch) {
                    emit_batch(&shared, &mut batch).await;
                }
                emit_batch(&shared, &mut batch).await;
                shared.emit(e);
                if let Some(done) = done {
                    let _ = done.try_send(());
                }
            }
        }
    }
}

pub(crate) fn enrich(
    shared: &Shared,
    raw: event::Raw,
    procs: &mut HashMap<u32, crate::runs::evidence::Proc>,
    cgroup_paths: &mut HashMap<u64, String>,
) -> Event {
    let h = raw.hdr;
    let run = shared.run_for(h.run_cgroup);
    if run.is_some() {
        if matches!(raw.detail, Detail::Exit { .. }) {
            crate::runs::escape::exited(h.run_cgroup, h.tgid);
        } else {
            crate::runs::escape::seen(h.run_cgroup, h.tgid);
        }
    }
    let wall = shared.boot_offset_ns + h.ts_ns as i128;
    let mut e = shared.event_at(raw.kind, run.as_ref(), SystemTime::UNIX_EPOCH + Duration::from_nanos(wall.max(0) as u64));
    e.verdict = raw.verdict;
    e.rule = raw.rule;
    e.severity = event::severity(raw.kind, raw.verdict);
    e.facts = raw.facts;
    if h.ruleset != 0 {
        e.hook = Some(event::hook_of(raw.kind, h.flags));
        // The generation that decided, which may be older than the run's current policy.
        if let Some(p) = shared.own().policies.policy_of(h.ruleset) {
            e.policy = Some(p.name.clone());
            e.policy_version = Some(p.version.clone());
        }
    }
    e.pid = Some(h.pid);
    e.tgid = Some(h.tgid);
    e.ppid = Some(h.ppid);
    e.uid = Some(h.uid);
    e.gid = Some(h.gid);
    let comm = h.comm.split(|b| *b == 0).next().unwrap_or_default();
    e.comm = Some(String::from_utf8_lossy(comm).into_owned());
    // An exec that happened (a refused one leaves the process as it was).
    if let Detail::Exec { path, argv, result: None, .. } = &raw.detail {
        procs.insert(h.tgid, crate::runs::evidence::Proc { ppid: h.ppid, exe: path.clone(), argv: argv.clone() });
    }
    e.exe = procs
        .get(&h.tgid)
        .map(|p| p.exe.clone())
        .or_else(|| std::fs::read_link(format!("/proc/{}/exe", h.tgid)).ok().map(|p| p.display().to_string()));
    if matches!(raw.detail, Detail::Exit { .. }) {
        procs.remove(&h.tgid);
    }
    e.cgroup_id = Some(h.cgroup);
    if let (Some(run), true) = (&run, h.cgroup != h.run_cgroup) {
        // A child cgroup of the run: find its path (it may already be gone, then say nothing
        // rather than name the wrong cgroup).
        e.cgroup = match cgroup_paths.get(&h.cgroup) {
            Some(p) => Some(p.clone()),
            None => cgroup::find_by_id(&run.dir, h.cgroup, 8).map(|d| {
                let p = shared.rel(&d);
                cgroup_paths.insert(h.cgroup, p.clone());
                p
            }),
        };
    }
    if run.is_some() && h.cgroup != h.run_cgroup {
        if let Some((task, labels)) = crate::runs::task::of_event(shared, h.run_cgroup, h.cgroup, e.cgroup.as_deref()) {
            e.task = Some(task);
            e.task_labels = Some(labels);
        }
    }
    e.detail = raw.detail;
    if let (Detail::Connect { addr, domain, .. }, Some(_)) = (&mut e.detail, &run) {
        *domain = shared.dns.domain_of(h.run_cgroup, addr);
    }
    // Which layer decided: an operation the run's Landlock layer refused reached the eBPF
    // programs only as a failure; the daemon names the rule with the policy in force.
    e.layer = crate::runs::landlock::kernel_layer(e.kind);
    if let Some(cov) = run.as_ref().and_then(|r| r.landlock.as_ref()) {
        if h.ruleset != 0 && crate::runs::landlock::maybe_refused(&e, cov) {
            let policy = shared.own().policies.policy_of(h.ruleset);
            crate::runs::landlock::attribute(&mut e, cov, policy.as_deref());
        }
    }
    if let (true, Some(run)) = (e.verdict.is_violation(), &run) {
        e.ancestry = Some(crate::runs::evidence::lineage(h.tgid, h.ppid, procs, &shared.mount, &run.dir));
    }
    e
}

pub(crate) async fn watch_drops(shared: Arc<Shared>, drops: aya::maps::PerCpuArray<aya::maps::MapData, u64>) {
    let stages = [(drop_slot::RINGBUF_FULL, "kernel_ringbuf"), (drop_slot::PENDING_FULL, "kernel_pending")];
    let mut seen = [0u64; 2];
    let mut queue_seen = 0u64;
    let mut sink_seen = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for (i, (slot, stage)) in stages.iter().enumerate() {
            let Ok(values) = drops.get(slot, 0) else { continue };
            let total: u64 = values.iter().sum();
            if total > seen[i] {
                let count = total - seen[i];
                seen[i] = total;
                warn!("{count} events lost at {stage}");
                let mut e = shared.base_event(Kind::Drop, None);
                e.detail = Detail::Drop { count, stage };
                shared.emit(e);
            }
        }
        // The log's losses: counted in the metrics as they happen; reported as a `drop` event
        // every second while any is unreported (while the disk is still full that event is
        // lost too and gives its count back, see SinkLosses).
        let lost = shared.sink_drops.lost.load(std::sync::atomic::Ordering::Relaxed);
        if lost > sink_seen {
            shared.metrics.dropped("sink", lost - sink_seen);
            sink_seen = lost;
        }
        let unreported = shared.sink_drops.unreported.swap(0, std::sync::atomic::Ordering::Relaxed);
        if unreported > 0 {
            let mut e = shared.base_event(Kind::Drop, None);
            e.detail = Detail::Drop { count: unreported, stage: "sink" };
            shared.emit(e);
        }
        let q = shared.queue_drops.load(std::sync::atomic::Ordering::Relaxed);
        if q > queue_seen {
            let mut e = shared.base_event(Kind::Drop, None);
            e.detail = Detail::Drop { count: q - queue_seen, stage: "userspace_queue" };
            queue_seen = q;
            // Reported through the queue once it has room again: never silently.
            shared.metrics.observe(&e);
            let e = Arc::new(e);
            if shared.tx.send(e.clone()).await.is_err() {
                return;
            }
            shared.record(&e);
        }
        shared.own().policies.reap(false);
        rebind(&shared);
        {
            let shared = shared.clone();
            let _ = tokio::task::spawn_blocking(move || crate::runs::escape::scan(&shared)).await;
        }
        // Forget runs that ended a while ago.
        let mut runs_own = shared.own();
        let runs = &mut runs_own.runs;
        runs.by_cgroup.retain(|_, r| r.ended.is_none_or(|t| t.elapsed() < RUN_LINGER));
        runs.tasks.retain(|_, t| t.ended.is_none_or(|e| e.elapsed() < RUN_LINGER));
        let known: std::collections::HashSet<&str> = runs.by_cgroup.values().map(|r| r.id.as_str()).collect();
        shared.ctl.tallies.lock().expect("tallies lock").retain(|id, _| known.contains(id.as_str()));
    }
}

