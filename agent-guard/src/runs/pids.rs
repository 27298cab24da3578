//! `[limits] processes`: the pids controller caps a run's live processes; a fork over the cap
//! fails with EAGAIN, which the kernel programs report (agent-guard-ebpf/src/tripwire.rs).
//!
//! On a unified host the run's own cgroup gets `pids.max`. On a hybrid host, where the pids
//! controller is bound to a cgroup v1 hierarchy (as on the development machines), the run
//! gets a v1 pids cgroup of its own, `<pids mount>/<managed root name>/<run id>`, which the
//! command joins with the v2 run cgroup before it starts.
use std::path::{Path, PathBuf};

/// The run's pids cgroup when it is not the run cgroup itself (cgroup v1).
#[derive(Debug, Default)]
pub struct Pids {
    /// `cgroup.procs` the command writes itself into, besides the run cgroup's.
    pub join: Option<PathBuf>,
    v1_dir: Option<PathBuf>,
}

/// Caps the processes of run `dir` (the v2 run cgroup, a child of the managed root) at `max`.
pub fn setup(dir: &Path, max: u32) -> Result<Pids, String> {
    let (Some(root), Some(id)) = (dir.parent(), dir.file_name()) else { return Err(format!("{} is no run cgroup", dir.display())) };
    // Unified: enable the controller for the managed root's children (an error says it is
    // not available to this subtree), then the run's own cap.
    let _ = std::fs::write(root.join("cgroup.subtree_control"), "+pids");
    if dir.join("pids.max").exists() {
        std::fs::write(dir.join("pids.max"), max.to_string()).map_err(|e| format!("writing {}/pids.max: {e}", dir.display()))?;
        return Ok(Pids::default());
    }
    let mount = v1_pids_mount().ok_or_else(|| {
        "no pids controller: not enabled for the managed cgroup root and no cgroup v1 pids hierarchy is mounted".to_string()
    })?;
    let root_name = root.file_name().map_or_else(|| "agent-guard".into(), |n| n.to_os_string());
    let v1 = mount.join(root_name).join(id);
    std::fs::create_dir_all(&v1).map_err(|e| format!("creating {}: {e}", v1.display()))?;
    let pids = Pids { join: Some(v1.join("cgroup.procs")), v1_dir: Some(v1.clone()) };
    std::fs::write(v1.join("pids.max"), max.to_string()).map_err(|e| format!("writing {}/pids.max: {e}", v1.display()))?;
    Ok(pids)
}

impl Drop for Pids {
    /// The v1 cgroup goes once the run's processes are gone (the run cgroup was emptied
    /// first), and its parent with it when no other run is left in it.
    fn drop(&mut self) {
        let Some(d) = &self.v1_dir else { return };
        for _ in 0..50 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                if let Some(parent) = d.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The mount point of the cgroup v1 hierarchy with the pids controller, from mountinfo.
fn v1_pids_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split(' ');
        let (fstype, _source, opts) = (post.next()?, post.next()?, post.next()?);
        (fstype == "cgroup" && opts.split(',').any(|o| o == "pids")).then(|| PathBuf::from(pre.split(' ').nth(4).unwrap_or("")))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_v1_pids_mount_when_there_is_one() {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let has = text.lines().any(|l| l.contains(" - cgroup ") && l.contains("pids"));
        assert_eq!(super::v1_pids_mount().is_some(), has);
    }
}
