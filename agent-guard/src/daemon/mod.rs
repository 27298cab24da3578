//! `agent-guard daemon`: loads the kernel programs, registers runs, streams events.
pub(crate) mod adopt;
pub(crate) mod dns;
pub mod core;
pub(crate) mod reload;
pub mod history;
pub(crate) mod rollback;
pub(crate) mod uninstall;
pub mod notify;
pub mod state;

pub use uninstall::uninstall;
use adopt::adopt;
use reload::{load_policy_dir, rebind};
use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_guard_common::Config as KernelConfig;
use anyhow::{bail, Context, Result};
use tokio::{

    net::UnixListener,
    sync::mpsc,
};
use tracing::{info, warn};
use crate::{control::peer as access, kernel::btf::KernelBtf, runs::cgroup, config::Config, daemon::state::State, kernel::load as ebpf, runs::bind::Binder, kernel::rules::PolicyStore};
use crate::daemon::core::*;
use crate::output::{ring::{read_ring, watch_drops}, sink::{write_events, WriterCmd}};
use crate::control::server::accept;

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
    crate::kernel::mounts::ensure_mounted("tracefs", "/sys/kernel/tracing")?;
    crate::kernel::mounts::ensure_mounted("bpf", "/sys/fs/bpf")?;
    let mount = cgroup::cgroup2_mount().context("finding the cgroup2 mount")?;
    let root = mount.join(&cfg.cgroup_root);
    std::fs::create_dir_all(&root).with_context(|| format!("creating the managed cgroup root {}", root.display()))?;
    let kcfg = KernelConfig {
        root_id: cgroup::cgroup_id(&root)?,
        root_level: cgroup::level(&mount, &root)?,
        _pad: 0,
    };
    let btf = KernelBtf::load()?;
    let offsets = btf.offsets()?;
    crate::kernel::backend::set_proc_judged(offsets.proc_ok != 0);
    let net_offsets = btf.net_offsets();
    drop(btf);
    let pins = ebpf::Pins::new(&cfg.bpffs_dir, kcfg.root_id, cfg.events_ring_bytes);
    // Before anything pinned is looked at: a second daemon with this config stops here.
    let _lock = crate::daemon::state::Lock::take(&cfg.state_dir).with_context(|| format!("state_dir {}", cfg.state_dir.display()))?;
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
    let loaded = match ebpf::load(&kcfg, &offsets, &net_offsets, cfg.events_ring_bytes, &root, &pins, cfg.backend) {
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
        tasks,
        drops,
        events,
        policy: policy_maps,
        bound,
        bind_on,
        grants,
        held,
        adopted_links,
        backend,
        dns: dns_maps,
    } = loaded;
    info!("enforcement backend: {} ({})", backend.backend.name(), backend.reason);
    let metrics = Arc::new(crate::output::metrics::Metrics::new(backend.backend.name()).context("setting up the metrics")?);
    let coverage: Vec<(String, String)> =
        crate::kernel::backend::enforcement(backend.backend).into_iter().map(|e| (e.operation, e.action)).collect();
    metrics.set_coverage(&coverage).context("setting up the coverage metric")?;
    if adopting {
        info!("adopting the pinned state in {} ({adopted_links} links attached by an earlier daemon)", pins.dir().display());
    }

    for p in [&cfg.control_socket, &cfg.task_socket, &cfg.events_log] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    // Before the log is opened: it may cut a half-written last line off the log.
    let chain = crate::output::chained::ChainWriter::open(
        &cfg.data_dir,
        &cfg.events_log,
        &crate::daemon::core::hostname(),
        cfg.log_checkpoint_lines,
        cfg.log_checkpoint_interval,
    )?;
    let log = crate::output::sink::EventLog::open(&cfg.events_log, cfg.events_log_max_bytes, cfg.events_log_keep)
        .with_context(|| format!("opening events_log {}", cfg.events_log.display()))?;
    let (writer_cmd, writer_cmd_rx) = mpsc::unbounded_channel();

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
    let task_listener = crate::control::tasks::bind(&cfg.task_socket)?;

    let (tx, rx) = mpsc::channel(QUEUE);
    let (after_ring, after_ring_rx) = mpsc::unbounded_channel();
    let owned = Owned {
        runs: Runs { map: runs, by_cgroup: HashMap::new(), next_index: 1, tasks_map: tasks, tasks: HashMap::new() },
        policies: PolicyStore::new(policy_maps).for_backend(backend.backend).protecting(cfg.protected_paths(), vec![cfg.task_socket.display().to_string()]),
        // Owns the programs; their attachments are pinned and outlive the daemon.
        binder: Binder::new(programs, pins.clone(), bound, bind_on),
        grants,
        held,
    };
    let shared = Arc::new(Shared::new(
        owned,
        cfg.policy_dir.clone(),
        root.clone(),
        mount,
        tx,
        writer_cmd.clone(),
        after_ring,
        state,
        cfg.hold_timeout,
        Control::new(&cfg, control_gid),
        metrics.clone(),
        backend,
        dns::Dns::new(dns_maps, cfg.dns_upstream.clone(), cfg.dns_grace, cfg.dns_loopback_answers),
    ));
    let _ = shared.me.set(Arc::downgrade(&shared));

    // The writer drops a finished run's record once its run_end is in the log.
    let records = State::open(&cfg.state_dir).with_context(|| format!("state_dir {}", cfg.state_dir.display()))?;
    let forget_run = Box::new(move |id: &str| records.remove_run(id));
    let writer = tokio::spawn(write_events(rx, log, Some(chain), writer_cmd_rx, shared.sink_drops.clone(), cfg.stderr_events, forget_run));
    if adopting {
        adopt(&shared);
    }
    load_policy_dir(&shared);
    rebind(&shared);
    dns::start(&shared);
    tokio::spawn(read_ring(shared.clone(), events, after_ring_rx));
    tokio::spawn(watch_drops(shared.clone(), drops));
    tokio::spawn(accept(shared.clone(), listener));
    tokio::spawn(crate::control::tasks::accept(shared.clone(), task_listener));
    let metrics_addr = metrics_listener.local_addr()?;
    let weak = Arc::downgrade(&shared);
    tokio::spawn(crate::output::metrics::serve(metrics_listener, metrics, move || weak.upgrade().map(|s| metrics_snapshot(&s))));
    info!("metrics on http://{metrics_addr}/metrics");
    info!(
        "ready in {} ms: managed cgroup root {}, events to {}, control socket {}",
        started.elapsed().as_millis(),
        root.display(),
        cfg.events_log.display(),
        cfg.control_socket.display()
    );
    let notify = crate::daemon::notify::ready(&format!("serving; managed cgroup root {}", root.display()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                info!("SIGHUP: reopening events_log, reloading policies from {}", shared.policy_dir.display());
                let _ = writer_cmd.send(WriterCmd::Reopen);
                load_policy_dir(&shared);
                rebind(&shared);
                dns::reconcile(&shared, &shared.own());
            }
        }
    }
    crate::daemon::notify::stopping(&notify);
    let _ = std::fs::remove_file(&cfg.control_socket);
    // Enforcement outlives the daemon while anything is under it; with nothing left, the
    // programs are detached so an idle host does not pay for them. `stopping` is set under the
    // state lock, which registrations and rebinds take and then check it: none comes after
    // the decision.
    let idle = {
        let own = shared.own();
        let binder = &own.binder;
        shared.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let live: Vec<String> = {
            let runs = &own.runs;
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
    // What is queued goes to the log, signed by a last checkpoint.
    let (done, signed) = tokio::sync::oneshot::channel();
    if writer_cmd.send(WriterCmd::Checkpoint(Some(done))).is_ok() {
        match tokio::time::timeout(Duration::from_secs(2), signed).await {
            Ok(Ok(Some(seq))) => info!("events_log signed up to seq {seq}"),
            _ => warn!("events_log: no last checkpoint written"),
        }
    }
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

