//! `agent-guard daemon --uninstall`.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tracing::warn;
use crate::{runs::cgroup, config::Config, daemon::state::State, control::{self, Request}, kernel::load as ebpf};

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

