//! The daemon's state: the run registry, the loaded policies, the bindings and the kernel maps
//! they write, the event queue and the control plane's state.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use agent_guard_common::RunEntry;
use tokio::sync::mpsc;
use crate::{daemon::state::State, output::event::{self, Event, Kind, Verdict}, runs::bind::Binder, kernel::rules::PolicyStore};
use crate::runs::grant::Hold;

/// An event to emit once the ring buffer has been drained (a run's `run_end`), and who waits
/// for it to be recorded.
pub(crate) type AfterRing = (Event, Option<std::sync::mpsc::SyncSender<()>>);

/// Events waiting for the writer; beyond this they are counted as `userspace_queue` drops.
pub(crate) const QUEUE: usize = 65536;
/// How long a finished run's metadata is kept for events still in the ring buffer.
pub(crate) const RUN_LINGER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub(crate) struct RunInfo {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    /// Absolute path of the run's cgroup directory.
    pub(crate) dir: PathBuf,
    pub(crate) cgroup_id: u64,
    /// Policy slot the run is bound to.
    pub(crate) policy: Option<u32>,
    pub(crate) started: SystemTime,
    pub(crate) ended: Option<Instant>,
    /// Events of the run with verdict deny, kill, would_deny or hold.
    pub(crate) violations: u64,
    /// Held for review: what it waits for.
    pub(crate) hold: Option<Hold>,
    /// Frozen by a responder (`agent-guard freeze`): answering a hold does not thaw it.
    pub(crate) frozen_by_responder: bool,
    /// What the run's Landlock layer refuses up front (runs of `agent-guard run` only).
    pub(crate) landlock: Option<crate::runs::landlock::Coverage>,
    /// The Landlock plan handed to the run's `agent-guard run` (what `landlock` follows from).
    pub(crate) landlock_plan: Option<Arc<crate::runs::landlock::Plan>>,
    /// The uid that registered the run (`agent-guard run`): it may act on the run (see
    /// `control::peer::may_act_on`). None: a bound cgroup, or a record from before this field.
    pub(crate) started_by: Option<u32>,
}

impl RunInfo {
    /// A run that has just been found: nothing known of it but where it is.
    pub(crate) fn new(id: String, dir: PathBuf, cgroup_id: u64) -> RunInfo {
        RunInfo {
            id,
            name: None,
            labels: BTreeMap::new(),
            dir,
            cgroup_id,
            policy: None,
            started: SystemTime::now(),
            ended: None,
            violations: 0,
            hold: None,
            frozen_by_responder: false,
            landlock: None,
            landlock_plan: None,
            started_by: None,
        }
    }

    /// A run as an earlier daemon recorded it (the inverse of [`RunInfo::record`], less its
    /// hold, which the adopter rebuilds).
    pub(crate) fn from_record(r: crate::daemon::state::RunRecord, policy: Option<u32>) -> RunInfo {
        RunInfo {
            name: r.name,
            labels: r.labels,
            policy,
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(r.started_ms),
            landlock: r.landlock,
            started_by: r.started_by_uid,
            ..RunInfo::new(r.id, r.dir, r.cgroup_id)
        }
    }

    pub(crate) fn record(&self) -> crate::daemon::state::RunRecord {
        crate::daemon::state::RunRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            dir: self.dir.clone(),
            cgroup_id: self.cgroup_id,
            started_ms: self.started.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            hold: self.hold.iter().flat_map(|h| h.attempts.iter().map(crate::runs::grant::Recorded::from)).collect(),
            landlock: self.landlock.clone(),
            started_by_uid: self.started_by,
        }
    }
}

/// A task of a run (`agent-guard task`, see `runs::task`).
#[derive(Debug, Clone)]
pub(crate) struct TaskInfo {
    pub(crate) id: String,
    pub(crate) run_id: String,
    pub(crate) run_cgroup: u64,
    pub(crate) cgroup_id: u64,
    pub(crate) dir: PathBuf,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) policy: Option<String>,
    /// The process that started it (`agent-guard task`): only it and its children may join.
    pub(crate) starter: u32,
    /// Where the starter was when it joined the task (it goes back there at the end, never
    /// anywhere wider).
    pub(crate) starter_from: Option<PathBuf>,
    /// Ended: kept a while so that its last events, read after the end, still name it.
    pub(crate) ended: Option<std::time::Instant>,
}

/// The one owner of the kernel run map and the run registry.
pub(crate) struct Runs {
    pub(crate) map: aya::maps::HashMap<aya::maps::MapData, u64, RunEntry>,
    pub(crate) by_cgroup: HashMap<u64, RunInfo>,
    pub(crate) next_index: u32,
    /// The kernel's task map (task cgroup id -> the task's policy slot) and the live tasks.
    pub(crate) tasks_map: aya::maps::HashMap<aya::maps::MapData, u64, RunEntry>,
    pub(crate) tasks: HashMap<u64, TaskInfo>,
}

/// What the daemon writes into the kernel, with the registry that mirrors it: the run map and
/// its runs, the loaded policies and their rule-set maps, the bindings (which own the loaded
/// programs and attach them), the grants and the held processes. One owner behind one lock,
/// so no two parts of the daemon can see them out of step and there is no lock order to keep.
pub(crate) struct Owned {
    pub(crate) runs: Runs,
    pub(crate) policies: PolicyStore,
    pub(crate) binder: Binder,
    pub(crate) grants: aya::maps::HashMap<aya::maps::MapData, agent_guard_common::GrantKey, u32>,
    /// The kernel's list of processes stopped for a hold (see `answer`).
    pub(crate) held: aya::maps::HashMap<aya::maps::MapData, u32, u32>,
}

pub(crate) struct Shared {
    owned: Mutex<Owned>,
    pub(crate) policy_dir: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) mount: PathBuf,
    pub(crate) host: String,
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, to turn kernel timestamps into wall time.
    pub(crate) boot_offset_ns: i128,
    pub(crate) tx: mpsc::Sender<Arc<Event>>,
    /// Asks of the log writer: reopen the log, write a checkpoint.
    pub(crate) log_writer: mpsc::UnboundedSender<crate::output::sink::WriterCmd>,
    /// Events the log could not take (a write error): reported as `drop`, stage `sink`.
    pub(crate) sink_drops: Arc<crate::output::sink::SinkLosses>,
    /// Events emitted once the ring buffer has been drained (see `read_ring`).
    pub(crate) after_ring: mpsc::UnboundedSender<AfterRing>,
    pub(crate) queue_drops: std::sync::atomic::AtomicU64,
    pub(crate) state: State,
    /// Set once the daemon is shutting down: no new registrations or bindings.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    pub(crate) hold_timeout: Duration,
    pub(crate) next_hold: std::sync::atomic::AtomicU64,
    /// Incident response: recent events, followers, control access.
    pub(crate) ctl: Control,
    /// Prometheus counters, fed by `emit` (see `metrics`).
    pub(crate) metrics: Arc<crate::output::metrics::Metrics>,
    /// The enforcement backend in force, and why (`status`).
    pub(crate) backend: crate::kernel::backend::Choice,
    /// Name rules' DNS forwarders.
    pub(crate) dns: crate::daemon::dns::Dns,
    /// This state itself, for what a request starts that outlives it (DNS forwarders).
    pub(crate) me: std::sync::OnceLock<std::sync::Weak<Shared>>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        owned: Owned,
        policy_dir: PathBuf,
        root: PathBuf,
        mount: PathBuf,
        tx: mpsc::Sender<Arc<Event>>,
        log_writer: mpsc::UnboundedSender<crate::output::sink::WriterCmd>,
        after_ring: mpsc::UnboundedSender<AfterRing>,
        state: State,
        hold_timeout: Duration,
        ctl: Control,
        metrics: Arc<crate::output::metrics::Metrics>,
        backend: crate::kernel::backend::Choice,
        dns: crate::daemon::dns::Dns,
    ) -> Self {
        Shared {
            owned: Mutex::new(owned),
            policy_dir,
            root,
            mount,
            host: hostname(),
            boot_offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
            tx,
            log_writer,
            sink_drops: Default::default(),
            after_ring,
            queue_drops: Default::default(),
            state,
            stopping: Default::default(),
            hold_timeout,
            next_hold: Default::default(),
            ctl,
            metrics,
            backend,
            dns,
            me: std::sync::OnceLock::new(),
        }
    }

    /// The kernel state and the registry, locked. Hold it only for map and registry work:
    /// never across an await, a wait for the kernel (freezing, killing) or an `emit`.
    pub(crate) fn own(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().expect("daemon state lock")
    }

    pub(crate) fn run_for(&self, cgroup_id: u64) -> Option<RunInfo> {
        self.own().runs.by_cgroup.get(&cgroup_id).cloned()
    }

    pub(crate) fn base_event(&self, kind: Kind, run: Option<&RunInfo>) -> Event {
        self.event_at(kind, run, SystemTime::now())
    }

    /// An event of `run` that happened at `t`.
    pub(crate) fn event_at(&self, kind: Kind, run: Option<&RunInfo>, t: SystemTime) -> Event {
        let (policy, policy_version) = match run.and_then(|r| r.policy) {
            Some(slot) => {
                let store_guard = self.own();
                let store = &store_guard.policies;
                match store.by_slot(slot) {
                    Some(s) => (Some(s.policy.name.clone()), Some(s.policy.version.clone())),
                    None => (None, None),
                }
            }
            None => (None, None),
        };
        Event {
            policy,
            policy_version,
            ts: event::rfc3339(t),
            host: self.host.clone(),
            run: run.map(|r| r.id.clone()),
            run_name: run.and_then(|r| r.name.clone()),
            labels: run.map(|r| r.labels.clone()).unwrap_or_default(),
            cgroup: run.map(|r| self.rel(&r.dir)),
            cgroup_id: run.map(|r| r.cgroup_id),
            ..Event::new(kind)
        }
    }

    /// cgroup path as shown in events: relative to the cgroup2 mount, with a leading /.
    pub(crate) fn rel(&self, dir: &Path) -> String {
        format!("/{}", dir.strip_prefix(&self.mount).unwrap_or(dir).display())
    }

    /// `emit` for the ring reader: a violation waits for room in the queue instead of being
    /// dropped (the ring reader slows down; the kernel keeps room in the ring for violations).
    pub(crate) async fn emit_from_ring(&self, e: Event) {
        if e.verdict == Verdict::Allow {
            return self.emit(e);
        }
        self.metrics.observe(&e);
        let e = Arc::new(e);
        if self.tx.send(e.clone()).await.is_ok() {
            self.record(&e);
        }
    }

    pub(crate) fn emit(&self, e: Event) {
        self.metrics.observe(&e);
        let e = Arc::new(e);
        match self.tx.try_send(e.clone()) {
            Ok(()) => self.record(&e),
            // The daemon's own events (a run's start and end, holds, responders' actions,
            // policy reloads, drop reports) and violations are never dropped for a full
            // queue: they wait for room (seen: a run_end lost behind a flood of allowed opens).
            Err(mpsc::error::TrySendError::Full(_)) if !e.kind.is_kernel() || e.verdict != Verdict::Allow => {
                match tokio::runtime::Handle::try_current() {
                    Ok(h) => {
                        self.record(&e);
                        let tx = self.tx.clone();
                        h.spawn(async move {
                            let _ = tx.send(e).await;
                        });
                    }
                    Err(_) => {
                        self.queue_drops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            Err(_) => {
                self.queue_drops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

pub(crate) fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

pub(crate) fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}


pub(crate) fn bound_run_info(shared: &Shared, id: u64, dir: &Path, slot: u32) -> RunInfo {
    RunInfo {
        name: Some(shared.rel(dir)),
        labels: BTreeMap::from([("bound".to_string(), "true".to_string())]),
        policy: Some(slot),
        ..RunInfo::new(format!("b-{id}"), dir.to_path_buf(), id)
    }
}

/// What a scrape reports of the daemon's state.
pub(crate) fn metrics_snapshot(shared: &Shared) -> crate::output::metrics::Snapshot {
    let runs_active = shared.own().runs.by_cgroup.values().filter(|r| r.ended.is_none()).count();
    let policies = shared.own().policies.list().into_iter().map(|p| (p.name, p.version)).collect();
    crate::output::metrics::Snapshot { runs_active, dns_forwarders: shared.dns.forwarders(), policies }
}


/// The daemon's incident-response state.
pub(crate) struct Control {
    pub(crate) feed: crate::output::feed::Feed,
    pub(crate) started: Instant,
    pub(crate) cfg: crate::config::Config,
    /// gid of `control_group`, None when the group does not exist.
    pub(crate) gid: Option<u32>,
    /// gid of `admin_group`, None when it is not configured or does not exist.
    pub(crate) admin_gid: Option<u32>,
    /// Control connections being served: at most `control_max_connections`.
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
    pub(crate) kernel_drops: std::sync::atomic::AtomicU64,
    /// Per live run: its violations by rule and the first few targets, for the summary `run`
    /// prints when the run ends.
    pub(crate) tallies: Mutex<HashMap<String, crate::control::ViolationSummary>>,
}

impl Control {
    pub(crate) fn new(cfg: &crate::config::Config, gid: Option<u32>) -> Self {
        Self {
            feed: crate::output::feed::Feed::default(),
            started: Instant::now(),
            cfg: cfg.clone(),
            gid,
            admin_gid: crate::control::peer::admin_gid(cfg.admin_group.as_deref()),
            connections: Arc::new(tokio::sync::Semaphore::new(cfg.control_max_connections as usize)),
            kernel_drops: std::sync::atomic::AtomicU64::new(0),
            tallies: Default::default(),
        }
    }
}

