//! `agent-guard daemon`: loads the kernel programs, registers runs, streams events.
mod incident;
mod review;

use review::{answer, arm_hold_timeout, forget_run, on_hold, save_hold, Answer, Hold};

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use agent_guard_common::{drop_slot, Config as KernelConfig, RunEntry, NO_POLICY};
use anyhow::{bail, Context, Result};
use tokio::{
    io::{unix::AsyncFd, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    access,
    btf::KernelBtf,
    cgroup,
    config::Config,
    state::{PolicyRecord, State},
    control::{self, PolicyText, Request, Response},
    respond::Action,
    ebpf,
    event::{self, Detail, Event},
    bind::Binder,
    policies::{Installed, PolicyStore},
    policy,
};

/// Events waiting for the writer; beyond this they are counted as `userspace_queue` drops.
const QUEUE: usize = 65536;
/// How long a finished run's metadata is kept for events still in the ring buffer.
const RUN_LINGER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct RunInfo {
    id: String,
    name: Option<String>,
    labels: BTreeMap<String, String>,
    /// Absolute path of the run's cgroup directory.
    dir: PathBuf,
    cgroup_id: u64,
    /// Policy slot the run is bound to.
    policy: Option<u32>,
    started: SystemTime,
    ended: Option<Instant>,
    /// Events of the run with verdict deny, kill, would_deny or hold.
    violations: u64,
    /// Held for review: what it waits for.
    hold: Option<Hold>,
    /// Frozen by a responder (`agent-guard freeze`): answering a hold does not thaw it.
    frozen_by_responder: bool,
    /// What the run's Landlock layer refuses up front (runs of `agent-guard run` only).
    landlock: Option<crate::landlock::Coverage>,
}

impl RunInfo {
    fn record(&self) -> crate::state::RunRecord {
        crate::state::RunRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            dir: self.dir.clone(),
            cgroup_id: self.cgroup_id,
            started_ms: self.started.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            hold: self.hold.iter().flat_map(|h| h.attempts.iter().map(crate::hold::Recorded::from)).collect(),
            landlock: self.landlock.clone(),
        }
    }
}

/// The one owner of the kernel run map and the run registry.
struct Runs {
    map: aya::maps::HashMap<aya::maps::MapData, u64, RunEntry>,
    by_cgroup: HashMap<u64, RunInfo>,
    next_index: u32,
}

struct Shared {
    runs: Mutex<Runs>,
    policies: Mutex<PolicyStore>,
    binder: Mutex<Binder>,
    policy_dir: PathBuf,
    root: PathBuf,
    mount: PathBuf,
    host: String,
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, to turn kernel timestamps into wall time.
    boot_offset_ns: i128,
    tx: mpsc::Sender<Arc<Event>>,
    /// Events the log could not take (a write error): reported as `drop`, stage `sink`.
    sink_drops: Arc<std::sync::atomic::AtomicU64>,
    /// Events emitted once the ring buffer has been drained (see `read_ring`).
    after_ring: mpsc::UnboundedSender<Event>,
    queue_drops: std::sync::atomic::AtomicU64,
    state: State,
    /// Set once the daemon is shutting down: no new registrations or bindings.
    stopping: std::sync::atomic::AtomicBool,
    grants: Mutex<aya::maps::HashMap<aya::maps::MapData, agent_guard_common::GrantKey, u32>>,
    /// The kernel's list of processes stopped for a hold (see `answer`).
    held: Mutex<aya::maps::HashMap<aya::maps::MapData, u32, u32>>,
    hold_timeout: Duration,
    next_hold: std::sync::atomic::AtomicU64,
    /// Incident response: recent events, followers, control access.
    ctl: incident::Control,
    /// Prometheus counters, fed by `emit` (see `metrics`).
    metrics: Arc<crate::metrics::Metrics>,
    /// The enforcement backend in force, and why (`status`).
    backend: crate::backend::Choice,
}

impl Shared {
    fn run_for(&self, cgroup_id: u64) -> Option<RunInfo> {
        self.runs.lock().expect("runs lock").by_cgroup.get(&cgroup_id).cloned()
    }

    fn base_event(&self, kind: &'static str, run: Option<&RunInfo>) -> Event {
        self.event_at(kind, run, SystemTime::now())
    }

    /// An event of `run` that happened at `t`.
    fn event_at(&self, kind: &'static str, run: Option<&RunInfo>, t: SystemTime) -> Event {
        let (policy, policy_version) = match run.and_then(|r| r.policy) {
            Some(slot) => {
                let store = self.policies.lock().expect("policies lock");
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
            kind,
            verdict: "allow",
            run: run.map(|r| r.id.clone()),
            run_name: run.and_then(|r| r.name.clone()),
            labels: run.map(|r| r.labels.clone()).unwrap_or_default(),
            cgroup: run.map(|r| self.rel(&r.dir)),
            cgroup_id: run.map(|r| r.cgroup_id),
            ..Default::default()
        }
    }

    /// cgroup path as shown in events: relative to the cgroup2 mount, with a leading /.
    fn rel(&self, dir: &Path) -> String {
        format!("/{}", dir.strip_prefix(&self.mount).unwrap_or(dir).display())
    }

    /// `emit` for the ring reader: a violation waits for room in the queue instead of being
    /// dropped (the ring reader slows down; the kernel keeps room in the ring for violations).
    async fn emit_from_ring(&self, e: Event) {
        if e.verdict == "allow" {
            return self.emit(e);
        }
        self.metrics.observe(&e);
        let e = Arc::new(e);
        if self.tx.send(e.clone()).await.is_ok() {
            self.record(&e);
        }
    }

    fn emit(&self, e: Event) {
        self.metrics.observe(&e);
        let e = Arc::new(e);
        if self.tx.try_send(e.clone()).is_err() {
            self.queue_drops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.record(&e);
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

/// Mounts `fstype` at `dir` unless something of that type is mounted there already.
fn ensure_mounted(fstype: &str, dir: &str) -> Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mounted = info.lines().any(|l| {
        let Some((left, right)) = l.split_once(" - ") else { return false };
        left.split_whitespace().nth(4) == Some(dir) && right.split_whitespace().next() == Some(fstype)
    });
    if !mounted {
        info!("mounting {fstype} at {dir}");
        nix::mount::mount(Some(fstype), dir, Some(fstype), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mount {fstype} at {dir}"))?;
    }
    Ok(())
}

pub fn run(cfg: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> Result<()> {
    let started = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        bail!("agent-guard daemon must run as root (it loads eBPF programs and manages cgroups)");
    }
    ensure_mounted("tracefs", "/sys/kernel/tracing")?;
    ensure_mounted("bpf", "/sys/fs/bpf")?;
    let mount = cgroup::cgroup2_mount().context("finding the cgroup2 mount")?;
    let root = mount.join(&cfg.cgroup_root);
    std::fs::create_dir_all(&root).with_context(|| format!("creating the managed cgroup root {}", root.display()))?;
    let kcfg = KernelConfig {
        root_id: cgroup::cgroup_id(&root)?,
        root_level: cgroup::level(&mount, &root)?,
        _pad: 0,
    };
    let offsets = KernelBtf::load()?.offsets()?;
    let pins = ebpf::Pins::new(&cfg.bpffs_dir, kcfg.root_id, cfg.events_ring_bytes);
    // Before anything pinned is looked at: a second daemon with this config stops here.
    let _lock = crate::state::Lock::take(&cfg.state_dir).with_context(|| format!("state_dir {}", cfg.state_dir.display()))?;
    let metrics_listener = tokio::net::TcpListener::bind(cfg.metrics_listen)
        .await
        .with_context(|| format!("binding metrics_listen {}", cfg.metrics_listen))?;
    let foreign = ebpf::foreign_state(&cfg.bpffs_dir, pins.dir(), kcfg.root_id)
        .with_context(|| format!("reading bpffs_dir {}", cfg.bpffs_dir.display()))?;
    if !foreign.is_empty() {
        bail!(
            "bpffs_dir {} holds pinned state this daemon cannot adopt: {} (this build and configuration pin \
             {}). It comes from another agent-guard build, ring size or managed cgroup root, and mixing them is \
             refused. If its runs no longer need enforcing, remove it with `agent-guard daemon --uninstall` \
             (with the config that created it), then start again.",
            cfg.bpffs_dir.display(),
            foreign.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            pins.dir().display()
        );
    }
    let adopting = pins.exist();
    if !adopting && pins.dir().exists() {
        // Maps without links: a stop that died half-way through removing them. Nothing is
        // enforced by them; start from empty maps rather than reuse stale rule sets.
        ebpf::remove_state(pins.dir()).with_context(|| format!("removing stale {}", pins.dir().display()))?;
    }
    let state = State::open(&cfg.state_dir).with_context(|| format!("state_dir {}", cfg.state_dir.display()))?;
    if !adopting {
        state.clear().with_context(|| format!("clearing state_dir {}", cfg.state_dir.display()))?;
    }
    let loaded = match ebpf::load(&kcfg, &offsets, cfg.events_ring_bytes, &root, &pins, cfg.backend) {
        Ok(l) => l,
        Err(e) => {
            // A fresh start that failed half-way must not leave programs attached with no
            // daemon (nor be "adopted" next time). Adopted state stays: it is enforcing runs.
            if !adopting {
                if let Err(rm) = ebpf::remove_state(pins.dir()) {
                    warn!("removing the half-loaded state {}: {rm}", pins.dir().display());
                }
                let _ = std::fs::remove_dir(&cfg.bpffs_dir);
            }
            return Err(anyhow::Error::new(e).context("loading the kernel programs"));
        }
    };
    let ebpf::Loaded {
        ebpf: programs,
        runs,
        drops,
        events,
        policy: policy_maps,
        bound,
        bind_on,
        grants,
        held,
        adopted_links,
        backend,
    } = loaded;
    info!("enforcement backend: {} ({})", backend.backend.name(), backend.reason);
    let metrics = Arc::new(crate::metrics::Metrics::new(backend.backend.name()).context("setting up the metrics")?);
    if adopting {
        info!("adopting the pinned state in {} ({adopted_links} links attached by an earlier daemon)", pins.dir().display());
    }

    for p in [&cfg.control_socket, &cfg.events_log] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let log = crate::sink::EventLog::open(&cfg.events_log, cfg.events_log_max_bytes, cfg.events_log_keep)
        .with_context(|| format!("opening events_log {}", cfg.events_log.display()))?;
    let (reopen_log, reopen_rx) = mpsc::unbounded_channel();

    match std::fs::remove_file(&cfg.control_socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale {}", cfg.control_socket.display()))
        }
        _ => {}
    }
    let listener = UnixListener::bind(&cfg.control_socket)
        .with_context(|| format!("binding control_socket {}", cfg.control_socket.display()))?;
    std::fs::set_permissions(&cfg.control_socket, std::fs::Permissions::from_mode(0o660))?;
    let control_gid = access::secure_socket(&cfg.control_socket, &cfg.control_group)
        .with_context(|| format!("setting the owner of control_socket {}", cfg.control_socket.display()))?;

    let (tx, rx) = mpsc::channel(QUEUE);
    let (after_ring, after_ring_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        runs: Mutex::new(Runs { map: runs, by_cgroup: HashMap::new(), next_index: 1 }),
        policies: Mutex::new(PolicyStore::new(policy_maps).for_backend(backend.backend)),
        // Owns the programs; their attachments are pinned and outlive the daemon.
        binder: Mutex::new(Binder::new(programs, pins.clone(), bound, bind_on)),
        policy_dir: cfg.policy_dir.clone(),
        root: root.clone(),
        mount,
        host: hostname(),
        boot_offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        tx,
        sink_drops: Default::default(),
        after_ring,
        queue_drops: Default::default(),
        state,
        stopping: Default::default(),
        grants: Mutex::new(grants),
        held: Mutex::new(held),
        hold_timeout: cfg.hold_timeout,
        next_hold: Default::default(),
        ctl: incident::Control::new(&cfg, control_gid),
        metrics: metrics.clone(),
        backend,
    });

    let writer = tokio::spawn(write_events(rx, log, reopen_rx, shared.sink_drops.clone(), cfg.stderr_events));
    if adopting {
        adopt(&shared);
    }
    load_policy_dir(&shared);
    rebind(&shared);
    tokio::spawn(read_ring(shared.clone(), events, after_ring_rx));
    tokio::spawn(watch_drops(shared.clone(), drops));
    tokio::spawn(accept(shared.clone(), listener));
    let metrics_addr = metrics_listener.local_addr()?;
    let weak = Arc::downgrade(&shared);
    tokio::spawn(crate::metrics::serve(metrics_listener, metrics, move || weak.upgrade().map(|s| metrics_snapshot(&s))));
    info!("metrics on http://{metrics_addr}/metrics");
    info!(
        "ready in {} ms: managed cgroup root {}, events to {}, control socket {}",
        started.elapsed().as_millis(),
        root.display(),
        cfg.events_log.display(),
        cfg.control_socket.display()
    );
    let notify = crate::notify::ready(&format!("serving; managed cgroup root {}", root.display()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                info!("SIGHUP: reopening events_log, reloading policies from {}", shared.policy_dir.display());
                let _ = reopen_log.send(());
                load_policy_dir(&shared);
                rebind(&shared);
            }
        }
    }
    crate::notify::stopping(&notify);
    let _ = std::fs::remove_file(&cfg.control_socket);
    // Enforcement outlives the daemon while anything is under it; with nothing left, the
    // programs are detached so an idle host does not pay for them. `stopping` is set under the
    // binder lock, which registrations and rebinds take and then check it: none comes after
    // the decision.
    let idle = {
        let binder = shared.binder.lock().expect("binder lock");
        shared.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let live: Vec<String> = {
            let runs = shared.runs.lock().expect("runs lock");
            let mut live: Vec<String> = runs
                .by_cgroup
                .values()
                // A registered run may not have its first process in its cgroup yet.
                .filter(|r| r.ended.is_none() || matches!(cgroup::populated(&r.dir), Ok(true)))
                .map(|r| r.id.clone())
                .collect();
            // And what the kernel enforces that the registry forgot (ended runs whose
            // processes survived, entries adopted without a record).
            for (id, _) in runs.map.iter().flatten() {
                if runs.by_cgroup.get(&id).is_some_and(|r| live.contains(&r.id)) {
                    continue;
                }
                if let Some(dir) = cgroup::find_by_id(&shared.root, id, 1) {
                    if matches!(cgroup::populated(&dir), Ok(true)) {
                        live.push(dir.file_name().map_or_else(|| id.to_string(), |n| n.to_string_lossy().into_owned()));
                    }
                }
            }
            live
        };
        let bound = binder.bound.len();
        let idle = live.is_empty() && bound == 0;
        if idle {
            info!("stopping: no run or bound cgroup left, detaching the programs");
            if let Err(e) = ebpf::remove_state(pins.dir()) {
                warn!("removing pinned state {}: {e}", pins.dir().display());
            }
            let _ = std::fs::remove_dir(&cfg.bpffs_dir); // only when empty
            if let Err(e) = shared.state.clear() {
                warn!("clearing {}: {e}", shared.state.dir().display());
            }
        } else {
            info!(
                "stopping: {} run(s) and {bound} bound cgroup(s) stay enforced by the programs pinned in {} \
                 (a restarted daemon adopts them; `agent-guard daemon --uninstall` removes them): {}",
                live.len(),
                pins.dir().display(),
                live.join(", ")
            );
        }
        idle
    };
    drop(shared);
    // Give the writer a moment to flush what is queued.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    if idle {
        match std::fs::remove_dir(&root) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                warn!("{} still holds runs; left in place", root.display())
            }
            Err(e) => warn!("removing {}: {e}", root.display()),
        }
    }
    Ok(())
}

/// Takes over what an earlier daemon left pinned: its policies (same rule set ids, nothing
/// rewritten), its runs whose cgroups still exist, and its bound cgroups.
fn adopt(shared: &Arc<Shared>) {
    let (records, errors) = shared.state.policies();
    for e in errors {
        warn!("state: {e}");
    }
    let n = records.len();
    for msg in shared.policies.lock().expect("policies lock").adopt(records) {
        warn!("{msg}");
    }
    let (records, errors) = shared.state.runs();
    for e in errors {
        warn!("state: {e}");
    }
    let mut runs = shared.runs.lock().expect("runs lock");
    let entries: HashMap<u64, RunEntry> = runs.map.iter().flatten().collect();
    runs.next_index = entries.values().map(|e| e.run_index).max().unwrap_or(0).wrapping_add(1).max(1);
    let mut adopted = 0;
    for r in records {
        let alive = cgroup::cgroup_id(&r.dir).is_ok_and(|id| id == r.cgroup_id);
        match entries.get(&r.cgroup_id) {
            Some(entry) if alive => {
                let hold = (!r.hold.is_empty()).then(|| Hold {
                    id: shared.next_hold.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                    since: Instant::now(),
                    attempts: r.hold.into_iter().map(crate::hold::Attempt::from).collect(),
                    ready: true,
                });
                if let Some(h) = &hold {
                    warn!(
                        "run {} was held for review when the earlier daemon stopped, and still is ({}); \
                         hold_timeout starts again",
                        r.id,
                        h.summary()
                    );
                    arm_hold_timeout(&tokio::runtime::Handle::current(), shared.clone(), r.id.clone(), h.id);
                }
                let info = RunInfo {
                    id: r.id,
                    name: r.name,
                    labels: r.labels,
                    dir: r.dir,
                    cgroup_id: r.cgroup_id,
                    policy: (entry.policy != NO_POLICY).then_some(entry.policy),
                    started: SystemTime::UNIX_EPOCH + Duration::from_millis(r.started_ms),
                    ended: None,
                    hold,
                    violations: 0,
                    frozen_by_responder: false,
                    landlock: r.landlock,
                };
                runs.by_cgroup.insert(r.cgroup_id, info);
                adopted += 1;
            }
            _ => shared.state.remove_run(&r.id),
        }
    }
    // Kernel entries of runs that are gone (or never recorded, which a kill between the map
    // write and the record write leaves): a cgroup that still exists keeps its entry.
    for id in entries.keys() {
        if !runs.by_cgroup.contains_key(id) && cgroup::find_by_id(&shared.root, *id, 1).is_none() {
            let _ = runs.map.remove(id);
        }
    }
    drop(runs);
    let bound = shared.binder.lock().expect("binder lock").adopt(&shared.mount);
    for (id, dir, slot) in &bound {
        let info = bound_run_info(shared, *id, dir, *slot);
        shared.runs.lock().expect("runs lock").by_cgroup.insert(*id, info);
    }
    info!("adopted {n} policies, {adopted} runs and {} bound cgroups", bound.len());
}

fn bound_run_info(shared: &Shared, id: u64, dir: &Path, slot: u32) -> RunInfo {
    RunInfo {
        id: format!("b-{id}"),
        name: Some(shared.rel(dir)),
        labels: BTreeMap::from([("bound".to_string(), "true".to_string())]),
        dir: dir.to_path_buf(),
        cgroup_id: id,
        policy: Some(slot),
        started: SystemTime::now(),
        ended: None,
        hold: None,
        violations: 0,
        frozen_by_responder: false,
        landlock: None,
    }
}

/// `agent-guard daemon --uninstall`: detaches and removes every pinned program, link and map
/// under `bpffs_dir`, and the daemon's state records. Refused while the daemon answers.
pub fn uninstall(cfg: &Config) -> Result<()> {
    if control::call(&cfg.control_socket, Request::Ping).is_ok() {
        bail!(
            "the daemon is running (it answers on {}): stop it first (systemctl stop agent-guard, or SIGTERM)",
            cfg.control_socket.display()
        );
    }
    let mut removed = 0;
    // This config's managed root: only its state (and entries of unknown origin) go; other
    // daemons sharing bpffs_dir keep theirs.
    let root_id = cgroup::cgroup2_mount().ok().and_then(|m| cgroup::cgroup_id(&m.join(&cfg.cgroup_root)).ok());
    let others: Vec<PathBuf>;
    let dirs = match root_id {
        Some(id) => {
            let mine = ebpf::foreign_state(&cfg.bpffs_dir, Path::new(""), id)?;
            others = ebpf::state_dirs(&cfg.bpffs_dir)?.into_iter().filter(|d| !mine.contains(d)).collect();
            mine
        }
        None => {
            // This managed root is gone, so none of its runs is left to enforce: remove what
            // belongs to no existing managed root.
            let mount = cgroup::cgroup2_mount()?;
            let (live, dead): (Vec<PathBuf>, Vec<PathBuf>) = ebpf::state_dirs(&cfg.bpffs_dir)?.into_iter().partition(|d| {
                ebpf::state_root_of(d).is_some_and(|id| cgroup::find_by_id(&mount, id, 8).is_some())
            });
            others = live;
            dead
        }
    };
    for dir in dirs {
        let links = ebpf::remove_state(&dir).with_context(|| format!("removing {}", dir.display()))?;
        println!("removed {} ({links} links detached)", dir.display());
        removed += 1;
    }
    match std::fs::remove_dir(&cfg.bpffs_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => warn!("{}: {e}", cfg.bpffs_dir.display()),
        _ => {}
    }
    if cfg.state_dir.exists() {
        State::open(&cfg.state_dir)?.clear()?;
    }
    if removed == 0 {
        println!("nothing pinned under {} for this configuration", cfg.bpffs_dir.display());
    }
    for o in others {
        println!("left in place (another managed root's daemon): {}", o.display());
    }
    if let Ok(mount) = cgroup::cgroup2_mount() {
        let root = mount.join(&cfg.cgroup_root);
        let live: Vec<String> = std::fs::read_dir(&root)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir() && matches!(cgroup::populated(&e.path()), Ok(true)))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if live.is_empty() {
            let _ = std::fs::remove_dir(&root);
        } else {
            println!(
                "warning: {} run(s) still have processes and are no longer enforced: {} (`agent-guard kill RUN` ends them)",
                live.len(),
                live.join(", ")
            );
        }
    }
    Ok(())
}

/// What a scrape reports of the daemon's state.
fn metrics_snapshot(shared: &Shared) -> crate::metrics::Snapshot {
    let runs_active = shared.runs.lock().expect("runs lock").by_cgroup.values().filter(|r| r.ended.is_none()).count();
    let policies = shared.policies.lock().expect("policies lock").list().into_iter().map(|p| (p.name, p.version)).collect();
    crate::metrics::Snapshot { runs_active, policies }
}

/// Writes the events to the log (and a human line each to stderr, which journald keeps
/// under systemd). A batch that cannot be written is counted in `sink_drops` and reported
/// as a `drop` event (stage `sink`) by watch_drops once writing works again.
async fn write_events(
    mut rx: mpsc::Receiver<Arc<Event>>,
    mut log: crate::sink::EventLog,
    mut reopen: mpsc::UnboundedReceiver<()>,
    sink_drops: Arc<std::sync::atomic::AtomicU64>,
    stderr_events: crate::config::StderrEvents,
) {
    let mut buf = Vec::with_capacity(1 << 16);
    let mut human = Vec::with_capacity(1 << 12);
    let mut stderr = std::io::stderr();
    loop {
        let first = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
            Some(()) = reopen.recv() => {
                match log.reopen() {
                    Ok(()) => info!("events_log reopened"),
                    Err(e) => warn!("reopening events_log: {e}; still writing to the old file"),
                }
                continue;
            }
        };
        let mut batch = vec![first];
        let mut more = |batch: &mut Vec<Arc<Event>>| {
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
        };
        more(&mut batch);
        if batch.len() < 64 {
            // A short batch: give the queue a moment to fill, so a stream of events costs one
            // wake-up and one write per millisecond, not one per event.
            tokio::time::sleep(WRITE_PAUSE).await;
            more(&mut batch);
        }
        buf.clear();
        human.clear();
        for e in &batch {
            serde_json::to_writer(&mut buf, &**e).expect("events serialize");
            buf.push(b'\n');
            if stderr_events.shows(e.kind, e.verdict) {
                let _ = writeln!(human, "{}", event::human(e));
            }
        }
        // One write for the batch's human lines (stderr is unbuffered).
        if !human.is_empty() {
            let _ = stderr.write_all(&human);
        }
        if let Err(e) = tokio::task::block_in_place(|| log.write(&buf)) {
            warn!("writing events_log: {e}; {} events lost (reported as a drop)", batch.len());
            sink_drops.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Records the ring reader takes out of the ring before it emits them.
const DRAIN_BATCH: usize = 256;

/// How long the ring reader pauses after a drain (see `read_ring`).
const RING_PAUSE: Duration = Duration::from_millis(5);

/// How long the log writer waits for a short batch to fill (see `write_events`).
const WRITE_PAUSE: Duration = Duration::from_millis(1);

/// Reads the kernel ring buffer. Events that must follow everything the kernel has recorded
/// so far (a run's `run_end`) arrive on `after_ring`: the ring is drained first, then they are
/// emitted, so a run's last exec/open/exit events always come before its run_end.
async fn read_ring(
    shared: Arc<Shared>,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    mut after_ring: mpsc::UnboundedReceiver<Event>,
) {
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until both drop.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot poll the ring buffer: {}", e.into_parts().1);
            return;
        }
    };
    let mut procs: HashMap<u32, crate::hold::Proc> = HashMap::new();
    let mut cgroup_paths: HashMap<u64, String> = HashMap::new();
    // Records are taken out of the ring in bounded batches, then emitted: an allowed event
    // that finds the queue full is dropped (and counted), a violation waits for room, so a
    // flooding run can cost other runs their allowed events but never their violations.
    let mut batch: Vec<(Event, u64, Option<[u8; 16]>)> = Vec::with_capacity(DRAIN_BATCH);
    let mut drain = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>, batch: &mut Vec<(Event, u64, Option<[u8; 16]>)>| {
        while batch.len() < DRAIN_BATCH {
            let Some(item) = ring.next() else { return false };
            match event::decode(&item) {
                Ok(raw) => {
                    let run_cgroup = raw.hdr.run_cgroup;
                    let file_id = raw.file_id;
                    batch.push((enrich(&shared, raw, &mut procs, &mut cgroup_paths), run_cgroup, file_id));
                }
                Err(e) => warn!("undecodable kernel record: {e}"),
            }
        }
        true
    };
    async fn emit_batch(shared: &Arc<Shared>, batch: &mut Vec<(Event, u64, Option<[u8; 16]>)>) {
        for (e, run_cgroup, file_id) in batch.drain(..) {
            let held = (e.verdict == "hold").then(|| e.clone());
            shared.emit_from_ring(e).await;
            if let Some(e) = held {
                on_hold(shared, run_cgroup, file_id, e);
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
            Some(e) = after_ring.recv() => {
                while drain(fd.get_mut(), &mut batch) {
                    emit_batch(&shared, &mut batch).await;
                }
                emit_batch(&shared, &mut batch).await;
                shared.emit(e);
            }
        }
    }
}

fn enrich(
    shared: &Shared,
    raw: event::Raw,
    procs: &mut HashMap<u32, crate::hold::Proc>,
    cgroup_paths: &mut HashMap<u64, String>,
) -> Event {
    let h = raw.hdr;
    let run = shared.run_for(h.run_cgroup);
    let wall = shared.boot_offset_ns + h.ts_ns as i128;
    let mut e = shared.event_at(raw.kind, run.as_ref(), SystemTime::UNIX_EPOCH + Duration::from_nanos(wall.max(0) as u64));
    e.verdict = event::verdict_name(h.verdict);
    e.rule = event::rule_name(h.rule).map(str::to_string);
    if h.ruleset != 0 {
        e.hook = Some(event::hook_of(raw.kind, h.flags));
        // The generation that decided, which may be older than the run's current policy.
        if let Some(p) = shared.policies.lock().expect("policies lock").policy_of(h.ruleset) {
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
    if let Detail::Exec { path, argv, .. } = &raw.detail {
        procs.insert(h.tgid, crate::hold::Proc { ppid: h.ppid, exe: path.clone(), argv: argv.clone() });
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
    e.detail = raw.detail;
    // Which layer decided: an operation the run's Landlock layer refused reached the eBPF
    // programs only as a failure; the daemon names the rule with the policy in force.
    e.layer = crate::landlock::kernel_layer(e.kind);
    if let Some(cov) = run.as_ref().and_then(|r| r.landlock.as_ref()) {
        if h.ruleset != 0 && crate::landlock::maybe_refused(&e, cov) {
            let policy = shared.policies.lock().expect("policies lock").policy_of(h.ruleset);
            crate::landlock::attribute(&mut e, cov, policy.as_deref());
        }
    }
    let violation = matches!(e.verdict, "deny" | "kill" | "would_deny" | "hold");
    if let (true, Some(run)) = (violation, &run) {
        e.ancestry = Some(crate::hold::lineage(h.tgid, h.ppid, procs, &shared.mount, &run.dir));
    }
    e
}

async fn watch_drops(shared: Arc<Shared>, drops: aya::maps::PerCpuArray<aya::maps::MapData, u64>) {
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
                let mut e = shared.base_event("drop", None);
                e.detail = Detail::Drop { count, stage };
                shared.emit(e);
            }
        }
        let lost = shared.sink_drops.load(std::sync::atomic::Ordering::Relaxed);
        if lost > sink_seen {
            let mut e = shared.base_event("drop", None);
            e.detail = Detail::Drop { count: lost - sink_seen, stage: "sink" };
            sink_seen = lost;
            shared.emit(e);
        }
        let q = shared.queue_drops.load(std::sync::atomic::Ordering::Relaxed);
        if q > queue_seen {
            let mut e = shared.base_event("drop", None);
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
        shared.policies.lock().expect("policies lock").reap(false);
        rebind(&shared);
        // Forget runs that ended a while ago.
        let mut runs = shared.runs.lock().expect("runs lock");
        runs.by_cgroup.retain(|_, r| r.ended.is_none_or(|t| t.elapsed() < RUN_LINGER));
    }
}

async fn accept(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle_client(shared.clone(), stream));
            }
            Err(e) => {
                warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle_client(shared: Arc<Shared>, stream: UnixStream) {
    let Ok(cred) = stream.peer_cred() else { return };
    let peer = access::Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid().unwrap_or(0).max(0) as u32 };
    let (uid, pid) = (peer.uid, peer.pid);
    // Checked once, when the peer connects (see `access`).
    let denied = incident::admit(&shared, peer).err();
    if let Some(why) = &denied {
        info!("control socket: refused uid {uid} pid {pid}: {why}");
    }
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd.take(control::MAX_LINE as u64 * 16)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let resp = if line.len() > control::MAX_LINE {
            Response::err(format!("request longer than {} bytes", control::MAX_LINE))
        } else if let Some(why) = &denied {
            Response::err(why.clone())
        } else {
            match control::parse_request(&line) {
                Ok(Request::Events { run, follow, json }) => {
                    incident::stream_events(shared.clone(), run, follow, json, lines, wr).await;
                    return;
                }
                Ok(req @ (Request::Freeze { .. } | Request::Thaw { .. } | Request::Kill { .. })) => {
                    // Waits for the kernel: off the async workers.
                    let shared = shared.clone();
                    tokio::task::spawn_blocking(move || {
                        let (action, run) = match req {
                            Request::Freeze { run } => (Action::Freeze, run),
                            Request::Thaw { run } => (Action::Thaw, run),
                            Request::Kill { run } => (Action::Kill, run),
                            _ => return Response::err("unexpected request"),
                        };
                        incident::act(shared, action, &run, uid, pid)
                    })
                    .await
                    .unwrap_or_else(|e| Response::err(format!("internal error: {e}")))
                }
                Ok(req @ (Request::Approve { .. } | Request::Deny { .. })) => {
                    // Thawing waits for the kernel: off the async workers too.
                    let shared = shared.clone();
                    tokio::task::spawn_blocking(move || handle(&shared, req, uid, pid))
                        .await
                        .unwrap_or_else(|e| Response::err(format!("internal error: {e}")))
                }
                Ok(req) => handle(&shared, req, uid, pid),
                Err(msg) => Response::err(msg),
            }
        };
        let mut out = serde_json::to_string(&resp).expect("serializable");
        out.push('\n');
        if wr.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn valid_run_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn handle(shared: &Shared, req: Request, uid: u32, pid: u32) -> Response {
    match req {
        Request::Ping => Response { cgroup_root: Some(shared.root.display().to_string()), ..Response::ok() },
        Request::Register { run, name, labels, argv, policy, policy_file } => {
            if !valid_run_id(&run) {
                return Response::err(format!("invalid run id {run:?}"));
            }
            let bound = match (policy, policy_file) {
                (Some(_), Some(_)) => return Response::err("give a policy name or a policy file, not both"),
                (None, None) => None,
                (Some(name), None) => {
                    let store = shared.policies.lock().expect("policies lock");
                    match store.slot_of(&name).and_then(|slot| store.summary(slot)) {
                        Some(summary) => Some(summary),
                        None => {
                            let loaded: Vec<_> = store.list().into_iter().map(|p| p.name).collect();
                            return Response::err(format!(
                                "no policy named {name:?} is loaded (loaded: {}); give a policy file or put it in {}",
                                if loaded.is_empty() { "none".to_string() } else { loaded.join(", ") },
                                shared.policy_dir.display()
                            ));
                        }
                    }
                }
                (None, Some(file)) => match install_for_run(shared, file, (uid, pid)) {
                    Ok(s) => Some(s),
                    Err(e) => return Response::err(e),
                },
            };
            let dir = shared.root.join(&run);
            let id = match cgroup::cgroup_id(&dir) {
                Ok(id) => id,
                Err(e) => return Response::err(format!("run cgroup {}: {e}", dir.display())),
            };
            let info = RunInfo {
                id: run.clone(),
                name,
                labels,
                dir,
                cgroup_id: id,
                policy: bound.as_ref().map(|p| p.slot),
                started: SystemTime::now(),
                ended: None,
                hold: None,
                violations: 0,
                frozen_by_responder: false,
                landlock: None,
            };
            {
                // Lock order: binder, then runs. The syscall tracepoints (and for a policied
                // run the syscall check) are attached before the run's entry exists, and
                // cannot be detached while we hold the binder.
                let mut binder = shared.binder.lock().expect("binder lock");
                if shared.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return Response::err("the daemon is stopping; run refused");
                }
                if let Err(e) = binder.hooks_for_new_run(bound.is_some()) {
                    return Response::err(format!("cannot attach the kernel hooks, run refused: {e}"));
                }
                let mut runs = shared.runs.lock().expect("runs lock");
                if runs.by_cgroup.values().any(|r| r.id == run && r.ended.is_none()) {
                    return Response::err(format!("run {run} is already registered"));
                }
                let entry = RunEntry {
                    run_index: runs.next_index,
                    flags: 0,
                    policy: bound.as_ref().map_or(NO_POLICY, |p| p.slot),
                    _pad: 0,
                };
                // Recorded before the kernel entry: a daemon killed in between leaves a record
                // without an entry, which the next one drops, never an unnamed enforced run.
                if let Err(e) = shared.state.save_run(&info.record()) {
                    return Response::err(format!("recording the run in {}: {e}", shared.state.dir().display()));
                }
                if let Err(e) = runs.map.insert(id, entry, 0) {
                    shared.state.remove_run(&run);
                    return Response::err(format!("kernel run map: {e}"));
                }
                runs.next_index = runs.next_index.wrapping_add(1).max(1);
                runs.by_cgroup.insert(id, info.clone());
            }
            let mut e = shared.base_event("run_start", Some(&info));
            e.detail = Detail::RunStart { requested_by_uid: uid, requested_by_pid: pid, argv };
            shared.emit(e);
            // The policy's text goes back too: `run` builds its Landlock layer from it.
            let text = bound.as_ref().and_then(|b| {
                shared.policies.lock().expect("policies lock").by_slot(b.slot).map(|s| s.text.clone())
            });
            Response { policy: bound, text, ..Response::ok() }
        }
        Request::PolicyApply { file } => {
            let source = file.source.clone();
            let applied = apply(shared, file, Some((uid, pid)));
            rebind(shared);
            match applied {
                Ok((summary, installed)) => Response {
                    result: Some(installed.result().into()),
                    policy: Some(summary),
                    ..Response::ok()
                },
                Err(e) => Response::err(format!("{source}: policy not applied, the previous one stays in force:\n{e}")),
            }
        }
        Request::PolicyList => {
            let store = shared.policies.lock().expect("policies lock");
            Response { policies: Some(store.list()), ..Response::ok() }
        }
        Request::PolicyShow { name } => {
            let store = shared.policies.lock().expect("policies lock");
            match (store.slot_of(&name).and_then(|slot| store.summary(slot)), store.get(&name)) {
                (Some(summary), Some(s)) => Response { policy: Some(summary), text: Some(s.text.clone()), ..Response::ok() },
                _ => Response::err(format!("no policy named {name:?} is loaded")),
            }
        }
        Request::Approve { run, for_run } => {
            match answer(shared, &run, None, Answer::Approve { for_run }, Some((uid, pid))) {
                Ok(text) => Response { text: Some(text), ..Response::ok() },
                Err(e) => Response::err(e),
            }
        }
        Request::Deny { run, kill } => match answer(shared, &run, None, Answer::Deny { kill }, Some((uid, pid))) {
            Ok(text) => Response { text: Some(text), ..Response::ok() },
            Err(e) => Response::err(e),
        },
        Request::Ps => incident::ps(shared),
        Request::Status => incident::status(shared),
        Request::Freeze { .. } | Request::Thaw { .. } | Request::Kill { .. } | Request::Events { .. } => {
            Response::err("this request is handled by the connection, not here")
        }
        Request::Landlock { run, coverage } => {
            let mut runs = shared.runs.lock().expect("runs lock");
            let Some(info) = runs.by_cgroup.values_mut().find(|r| r.id == run && r.ended.is_none() && r.dir.starts_with(&shared.root)) else {
                return Response::err(format!("no active run {run}"));
            };
            info.landlock = Some(coverage);
            if let Err(e) = shared.state.save_run(&info.record()) {
                warn!("recording run {run}'s Landlock layer in {}: {e}", shared.state.dir().display());
            }
            Response::ok()
        }
        Request::End { run, exit_status } => {
            let info = {
                let mut runs = shared.runs.lock().expect("runs lock");
                let Some(info) = runs.by_cgroup.values_mut().find(|r| r.id == run && r.ended.is_none()) else {
                    return Response::err(format!("no active run {run}"));
                };
                info.ended = Some(Instant::now());
                let info = info.clone();
                // Processes that survived the run's cleanup stay under its policy: the kernel
                // entry goes only once the cgroup is empty or gone.
                if matches!(cgroup::populated(&info.dir), Ok(true)) {
                    warn!("run {run} ended with processes still in {}; its policy stays on them", info.dir.display());
                } else {
                    let _ = runs.map.remove(&info.cgroup_id);
                    shared.state.remove_run(&info.id);
                }
                info
            };
            forget_run(shared, info.cgroup_id);
            let mut e = shared.base_event("run_end", Some(&info));
            e.detail = Detail::RunEnd { exit_status };
            if let Err(e) = shared.after_ring.send(e) {
                shared.emit(e.0);
            }
            Response::ok()
        }
    }
}

/// Parses and validates a policy's text; every problem in one message, one per line.
fn check(file: &PolicyText) -> Result<policy::Policy, String> {
    let checked = policy::parse(&file.text, &file.source);
    match checked.policy {
        Some(p) if checked.errors.is_empty() => Ok(p),
        _ => Err(checked.errors.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")),
    }
}

/// Loads or replaces a policy and records a `policy_reload` event either way.
/// `by`: the uid and pid of the control client that asked (None: policy_dir at start or on
/// SIGHUP).
fn apply(shared: &Shared, file: PolicyText, by: Option<(u32, u32)>) -> Result<(crate::policies::PolicySummary, Installed), String> {
    let parsed = check(&file);
    apply_checked(shared, file, parsed, by)
}

/// `apply` for a policy text already parsed (`parsed` is `check(&file)`).
fn apply_checked(
    shared: &Shared,
    file: PolicyText,
    parsed: Result<policy::Policy, String>,
    by: Option<(u32, u32)>,
) -> Result<(crate::policies::PolicySummary, Installed), String> {
    let mut e = shared.base_event("policy_reload", None);
    let outcome = parsed.and_then(|p| {
        let (name, version) = (p.name.clone(), p.version.clone());
        e.policy = Some(name.clone());
        e.policy_version = Some(version);
        let mut store = shared.policies.lock().expect("policies lock");
        let installed = store.install(p, file.text.clone())?;
        let summary = store.summary(installed.slot()).expect("installed");
        Ok((summary, installed))
    });
    e.detail = match &outcome {
        Ok((_, installed)) => Detail::PolicyReload {
            result: installed.result(),
            previous_version: match installed {
                Installed::Replaced { previous, .. } => Some(previous.clone()),
                _ => None,
            },
            source: file.source.clone(),
            error: None,
            requested_by_uid: by.map(|b| b.0),
            requested_by_pid: by.map(|b| b.1),
        },
        Err(msg) => Detail::PolicyReload {
            result: "error",
            previous_version: None,
            source: file.source.clone(),
            error: Some(msg.clone()),
            requested_by_uid: by.map(|b| b.0),
            requested_by_pid: by.map(|b| b.1),
        },
    };
    if let Err(msg) = &outcome {
        warn!("policy {} not applied: {msg}", file.source);
    } else if let Ok((s, i)) = &outcome {
        if !matches!(i, Installed::Unchanged { .. }) {
            info!("policy {} {} loaded from {}", s.name, s.version, file.source);
            let ruleset = shared.policies.lock().expect("policies lock").by_slot(s.slot).map_or(0, |x| x.ruleset);
            let rec = PolicyRecord { slot: s.slot, ruleset, source: file.source.clone(), text: file.text.clone() };
            if let Err(e) = shared.state.save_policy(&rec) {
                warn!("recording policy {} in {}: {e} (a restarted daemon will not know its text)", s.name, shared.state.dir().display());
            }
        }
    }
    shared.emit(e);
    outcome
}

/// `run --policy FILE`: the file's policy is loaded if its name is new, reused if the same
/// version is loaded, and refused if another version of it is in force (that is a reload,
/// which `policy apply` does for every run of the policy).
fn install_for_run(shared: &Shared, file: PolicyText, by: (u32, u32)) -> Result<crate::policies::PolicySummary, String> {
    let p = check(&file)?;
    {
        let store = shared.policies.lock().expect("policies lock");
        if let Some(loaded) = store.slot_of(&p.name).and_then(|slot| store.summary(slot)) {
            if loaded.version != p.version {
                return Err(format!(
                    "{}: policy {:?} is loaded with version {}, this file is version {}; \
                     use `agent-guard policy apply {}` to replace it for every run",
                    file.source, p.name, loaded.version, p.version, file.source
                ));
            }
            return Ok(loaded);
        }
    }
    apply_checked(shared, file, Ok(p), Some(by)).map(|(s, _)| s)
}

/// Loads every `*.toml` in policy_dir. A broken file is reported (log and event) and skipped:
/// its policy is not loaded, so runs cannot be started under it.
fn load_policy_dir(shared: &Shared) {
    let dir = &shared.policy_dir;
    let entries = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!("policy_dir {} does not exist: no policies loaded from it", dir.display());
            return;
        }
        Err(e) => {
            warn!("policy_dir {}: {e}", dir.display());
            return;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for path in files {
        let source = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                warn!("policy {source}: {e}");
                continue;
            }
        };
        let file = PolicyText { source, text };
        let parsed = check(&file);
        if let Ok(p) = &parsed {
            if let Some(first) = seen.insert(p.name.clone(), path.clone()) {
                warn!("policy {}: name {:?} is already used by {}; skipped", file.source, p.name, first.display());
                continue;
            }
        }
        let _ = apply_checked(shared, file, parsed, None);
    }
}

/// Brings `[bind] cgroups` bindings up to date and reports each change as a run start/end.
fn rebind(shared: &Shared) {
    let globs: Vec<(u32, globset::GlobSet)> = {
        let store = shared.policies.lock().expect("policies lock");
        store
            .list()
            .iter()
            .filter_map(|p| {
                let slot = store.by_slot(p.slot)?;
                (!slot.policy.bind_cgroups.is_empty()).then(|| (p.slot, slot.policy.bind_matcher()))
            })
            .collect()
    };
    let mut binder = shared.binder.lock().expect("binder lock");
    if shared.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if globs.is_empty() && binder.bound.is_empty() {
        let (runs, policied) = {
            let runs = shared.runs.lock().expect("runs lock");
            let entries: Vec<RunEntry> = runs.map.iter().flatten().map(|(_, e)| e).collect();
            (!entries.is_empty(), entries.iter().any(|e| e.policy != NO_POLICY))
        };
        if let Err(e) = binder.hooks(runs, policied) {
            warn!("kernel hooks: {e}");
        }
        return;
    }
    if let Err(e) = binder.hooks(true, true) {
        warn!("cannot attach the kernel hooks; cgroups are not bound: {e}");
        return;
    }
    let current = binder.bound.iter().map(|(id, b)| (*id, (b.dir.clone(), b.slot))).collect();
    let desired = crate::bind::scan(&shared.mount, &shared.root, &globs, &current);
    let changes = binder.apply(desired);
    drop(binder);
    for msg in &changes.errors {
        warn!("{msg}");
    }
    for (id, dir, slot) in changes.removed {
        let info = {
            let mut runs = shared.runs.lock().expect("runs lock");
            runs.by_cgroup.get_mut(&id).map(|r| {
                r.ended = Some(Instant::now());
                r.clone()
            })
        };
        forget_run(shared, id);
        if let Some(info) = info {
            info!("unbound {} (policy slot {slot})", dir.display());
            let mut e = shared.base_event("run_end", Some(&info));
            e.detail = Detail::RunEnd { exit_status: None };
            shared.emit(e);
        }
    }
    for (id, dir, slot) in changes.added {
        let rel = shared.rel(&dir);
        let info = bound_run_info(shared, id, &dir, slot);
        shared.runs.lock().expect("runs lock").by_cgroup.insert(id, info.clone());
        info!("bound {rel} to policy slot {slot}");
        let mut e = shared.base_event("run_start", Some(&info));
        e.detail = Detail::RunStart { requested_by_uid: 0, requested_by_pid: std::process::id(), argv: vec![] };
        shared.emit(e);
    }
}
