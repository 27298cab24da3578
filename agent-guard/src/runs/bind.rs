//! `[bind] cgroups`: policies bound to existing cgroups (systemd slices and scopes) by glob,
//! relative to the cgroup2 mount.
//!
//! The daemon scans the cgroup tree when policies change and then every second, and binds
//! each matching cgroup: an AG_BOUND entry (the kernel programs search a task's cgroup
//! ancestors for one, so the whole subtree is covered at once, including cgroups created
//! below it later) and the network programs attached to it. A cgroup that newly matches a
//! glob is bound at the next scan: up to a second later. Runs started with
//! `agent-guard run --policy` have no such window.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use agent_guard_common::{RunEntry, BIND_DEPTH_MAX};
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData},
    Ebpf,
};

use crate::{runs::cgroup, kernel::load as ebpf};

pub struct Bound {
    pub dir: PathBuf,
    pub slot: u32,
    /// Whether the network programs are attached to it.
    pub network: bool,
}

/// Owns the loaded programs (attachments to bound cgroups need them) and the bind maps.
/// Every attachment is a pinned link (see `ebpf::Pins`), so it outlives this daemon.
pub struct Binder {
    pub ebpf: Ebpf,
    pub pins: ebpf::Pins,
    map: BpfHashMap<MapData, u64, RunEntry>,
    on: Array<MapData, u32>,
    pub bound: HashMap<u64, Bound>,
    /// Runs whose seccomp filter stands in for the syscall check (see `kernel::ondemand`).
    pub covered: crate::kernel::ondemand::Covered,
}

/// What a scan changed.
#[derive(Default)]
pub struct Changes {
    pub added: Vec<(u64, PathBuf, u32)>,
    pub removed: Vec<(u64, PathBuf, u32)>,
    pub errors: Vec<String>,
}

impl Binder {
    pub fn new(ebpf: Ebpf, pins: ebpf::Pins, map: BpfHashMap<MapData, u64, RunEntry>, on: Array<MapData, u32>) -> Self {
        Self { ebpf, pins, map, on, bound: HashMap::new(), covered: Default::default() }
    }

    /// Takes over the bindings an earlier daemon left in the kernel: each one whose cgroup
    /// still exists is kept as it is (no second attachment); the others are removed.
    pub fn adopt(&mut self, mount: &Path) -> Vec<(u64, PathBuf, u32)> {
        let entries: Vec<(u64, RunEntry)> = self.map.iter().flatten().collect();
        let mut adopted = Vec::new();
        for (id, entry) in entries {
            let prefix = ebpf::cgroup_prefix(id);
            match cgroup::find_by_id(mount, id, BIND_DEPTH_MAX as u32) {
                Some(dir) => {
                    let network = self.pins.links(&prefix).len() >= ebpf::CGROUP_PROGRAMS;
                    adopted.push((id, dir.clone(), entry.policy));
                    self.bound.insert(id, Bound { dir, slot: entry.policy, network });
                }
                None => {
                    let _ = self.map.remove(&id);
                    ebpf::detach_cgroup(&self.pins, &prefix);
                }
            }
        }
        // Links of bindings without a map entry (a daemon killed half-way through a bind).
        for name in self.pins.links("cg") {
            let id = name.trim_start_matches("cg").split('-').next().and_then(|i| i.parse::<u64>().ok());
            if id.is_none_or(|id| !self.bound.contains_key(&id)) {
                ebpf::detach_cgroup(&self.pins, &name);
            }
        }
        let _ = self.on.set(0, u32::from(!self.bound.is_empty()), 0);
        adopted
    }

    /// Attaches or detaches the host-wide hooks as needed: the syscall tracepoints while any
    /// run or bound cgroup exists (`runs`), the syscall check while any of them needs it
    /// (`policied`: under a policy that no seccomp filter of its launcher stands in for, see
    /// `kernel::ondemand`). Idle hosts pay for neither. Callers hold this Binder's lock while
    /// they add a run, so a concurrent "nothing needs it" check cannot detach them under it.
    pub fn hooks(&mut self, runs: bool, policied: bool) -> Result<(), String> {
        let policied = runs && policied;
        if runs && !ebpf::syscall_tracepoints_attached(&self.pins) {
            ebpf::attach_syscall_tracepoints(&mut self.ebpf, &self.pins).map_err(|e| e.to_string())?;
            tracing::info!("syscall tracepoints attached (a run or bound cgroup exists)");
        }
        match (policied, ebpf::syscall_hook_attached(&self.pins)) {
            (true, false) => {
                ebpf::attach_syscall_hook(&mut self.ebpf, &self.pins).map_err(|e| e.to_string())?;
                tracing::info!("syscall check attached (a run or cgroup under a policy)");
            }
            (false, true) => {
                ebpf::detach_syscall_hook(&self.pins).map_err(|e| format!("detaching the syscall check: {e}"))?;
                tracing::info!("syscall check detached (no run or cgroup under a policy that its seccomp filter does not cover)");
            }
            _ => {}
        }
        if !runs && self.syscall_tracepoints_attached() {
            ebpf::detach_syscall_tracepoints(&self.pins)
                .map_err(|e| format!("detaching the syscall tracepoints: {e}"))?;
            tracing::info!("syscall tracepoints detached (no run or bound cgroup)");
        }
        Ok(())
    }

    /// Before a run's kernel entry is created: attaches what it needs, detaches nothing (an
    /// unpolicied run must not take the syscall check away from a policied one).
    pub fn hooks_for_new_run(&mut self, policied: bool) -> Result<(), String> {
        let policied = policied || self.syscall_hook_attached();
        self.hooks(true, policied)
    }

    pub fn syscall_hook_attached(&self) -> bool {
        ebpf::syscall_hook_attached(&self.pins)
    }

    /// Any syscall tracepoint is attached (all of them, unless an attach failed half-way).
    pub fn syscall_tracepoints_attached(&self) -> bool {
        ebpf::any_syscall_tracepoint_attached(&self.pins)
    }

    /// Makes the bindings match `desired` (cgroup id -> (dir, policy slot)).
    pub fn apply(&mut self, desired: HashMap<u64, (PathBuf, u32)>) -> Changes {
        let mut ch = Changes::default();
        let stale: Vec<u64> = self
            .bound
            .iter()
            .filter(|(id, b)| desired.get(id).is_none_or(|(_, slot)| *slot != b.slot))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let b = self.bound.remove(&id).expect("present");
            let _ = self.map.remove(&id);
            ebpf::detach_cgroup(&self.pins, &ebpf::cgroup_prefix(id));
            ch.removed.push((id, b.dir, b.slot));
        }
        for (id, (dir, slot)) in desired {
            if let Some(b) = self.bound.get_mut(&id) {
                b.dir = dir; // an adopted binding learns where its cgroup is now
                if !b.network {
                    // Attaching is idempotent (pinned links are kept): retried at every scan.
                    match ebpf::attach_cgroup(&mut self.ebpf, &self.pins, &b.dir, &ebpf::cgroup_prefix(id)) {
                        Ok(()) => b.network = true,
                        Err(e) => ch.errors.push(format!(
                            "binding {}: network programs still not attached, network NOT enforced there: {e}",
                            b.dir.display()
                        )),
                    }
                }
                continue;
            }
            let entry = RunEntry { run_index: 0, flags: 0, policy: slot, _pad: 0 };
            if let Err(e) = self.map.insert(id, entry, 0) {
                ch.errors.push(format!("binding {}: kernel map: {e}", dir.display()));
                continue;
            }
            // Files, exec and syscalls are enforced from here on; a failed attach leaves the
            // network unenforced for this cgroup, which is reported, never silent.
            let network = match ebpf::attach_cgroup(&mut self.ebpf, &self.pins, &dir, &ebpf::cgroup_prefix(id)) {
                Ok(()) => true,
                Err(e) => {
                    ch.errors.push(format!("binding {}: network programs not attached, network NOT enforced there: {e}", dir.display()));
                    false
                }
            };
            ch.added.push((id, dir.clone(), slot));
            self.bound.insert(id, Bound { dir, slot, network });
        }
        let _ = self.on.set(0, u32::from(!self.bound.is_empty()), 0);
        ch
    }
}

/// The cgroup directories of PID 1 and of this daemon: never bound (nor their ancestors).
fn protected(mount: &Path) -> Vec<PathBuf> {
    ["/proc/1/cgroup", "/proc/self/cgroup"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|t| t.lines().find_map(|l| l.strip_prefix("0::").map(|p| mount.join(p.trim_start_matches('/')))))
        .collect()
}

/// Cgroups below `mount` matching some policy's globs, outside `managed_root`. A match's
/// subtree is not searched further (the binding covers it). A binding in `current` stays
/// unless its cgroup is gone or no longer matches: a failed directory read never unbinds.
pub fn scan(
    mount: &Path,
    managed_root: &Path,
    policies: &[(u32, globset::GlobSet)],
    current: &HashMap<u64, (PathBuf, u32)>,
) -> HashMap<u64, (PathBuf, u32)> {
    let mut found = HashMap::new();
    if policies.is_empty() {
        return found;
    }
    let protected = protected(mount);
    let mut stack = vec![(mount.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) || path.starts_with(managed_root) {
                continue; // the managed root and its runs are never bound
            }
            if managed_root.starts_with(&path) {
                stack.push((path, depth + 1)); // an ancestor of the root: look below only
                continue;
            }
            let rel = path.strip_prefix(mount).unwrap_or(&path).to_string_lossy().into_owned();
            if protected.iter().any(|p| p.starts_with(&path)) {
                // Holds PID 1 or the daemon: binding it would put them under a policy.
                stack.push((path, depth + 1));
                continue;
            }
            match policies.iter().find(|(_, g)| g.is_match(&rel)) {
                Some((slot, _)) => {
                    if let Ok(id) = cgroup::cgroup_id(&path) {
                        found.insert(id, (path, *slot));
                    }
                }
                None if depth + 1 < BIND_DEPTH_MAX => stack.push((path, depth + 1)),
                None => {}
            }
        }
    }
    for (id, (dir, slot)) in current {
        if found.contains_key(id) {
            continue;
        }
        let rel = dir.strip_prefix(mount).unwrap_or(dir).to_string_lossy().into_owned();
        let still = cgroup::cgroup_id(dir).is_ok_and(|i| i == *id)
            && policies.iter().any(|(s, g)| s == slot && g.is_match(&rel));
        if still {
            found.insert(*id, (dir.clone(), *slot));
        }
    }
    found
}
