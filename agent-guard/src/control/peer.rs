//! Who may use the control socket.
//!
//! Two layers. The socket file is mode 0660, owned by root and the `control_group` group, so
//! the kernel refuses `connect()` to everyone else. The daemon checks again per connection
//! with the peer's SO_PEERCRED credentials: root, or a process whose group or supplementary
//! groups include `control_group`. And a process inside a run (its cgroup is at or below the
//! managed root or a bound cgroup) is refused even as root: an agent must not be able to
//! freeze, thaw or kill runs, or start new ones outside its own.
//!
//! Checked when the connection is accepted: a descriptor passed to another process keeps the
//! rights of the process that connected.
use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use tracing::warn;

/// Gives the socket file mode 0660, owner root and group `group` (when it exists). Returns
/// the group's gid, or None (with a warning) when there is no such group: then only root can
/// use the socket.
pub fn secure_socket(socket: &Path, group: &str) -> io::Result<Option<u32>> {
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    let gid = match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Some(g.gid.as_raw()),
        Ok(None) => {
            warn!("control_group {group:?} does not exist: only root can use the control socket {}", socket.display());
            None
        }
        Err(e) => {
            warn!("looking up control_group {group:?}: {e}; only root can use the control socket {}", socket.display());
            None
        }
    };
    std::os::unix::fs::chown(socket, Some(0), Some(gid.unwrap_or(0)))?;
    Ok(gid)
}

/// The peer of a control connection, from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// 0 when the kernel could not name it (a peer in another pid namespace).
    pub pid: u32,
}

/// What the daemon knows to decide: the control group and the cgroups of runs.
pub struct Rules<'a> {
    pub group: &'a str,
    pub gid: Option<u32>,
    pub mount: &'a Path,
    pub managed_root: &'a Path,
    pub bound: &'a [PathBuf],
}

/// Ok when `peer` may use the control socket; otherwise the reason, starting with
/// "permission denied".
pub fn check(peer: Peer, rules: &Rules) -> Result<(), String> {
    if peer.pid == 0 {
        return Err("permission denied: the peer's process id is unknown (another pid namespace?)".into());
    }
    // Inside a run: refused whoever it is.
    let cgroup = match std::fs::read_to_string(format!("/proc/{}/cgroup", peer.pid)) {
        Ok(text) => parse_cgroup(&text),
        Err(e) => return Err(format!("permission denied: cannot read /proc/{}/cgroup of the peer: {e}", peer.pid)),
    };
    let Some(rel) = cgroup else {
        return Err(format!("permission denied: process {} has no cgroup v2 path", peer.pid));
    };
    let dir = rules.mount.join(rel.trim_start_matches('/'));
    if let Some(within) = inside_run(&dir, rules.managed_root, rules.bound) {
        return Err(format!(
            "permission denied: process {} is inside an agent run (cgroup {}, under {}); \
             processes inside runs may not use the control socket, even as root",
            peer.pid,
            dir.display(),
            within.display()
        ));
    }
    if peer.uid == 0 {
        return Ok(());
    }
    let Some(gid) = rules.gid else {
        return Err(format!(
            "permission denied: uid {} is not root, and control_group {:?} does not exist, so only root may use the control socket",
            peer.uid, rules.group
        ));
    };
    if peer.gid == gid {
        return Ok(());
    }
    let groups = std::fs::read_to_string(format!("/proc/{}/status", peer.pid))
        .map(|s| supplementary_groups(&s))
        .unwrap_or_default();
    if groups.contains(&gid) {
        return Ok(());
    }
    Err(format!(
        "permission denied: uid {} is neither root nor a member of control_group {:?} (gid {gid})",
        peer.uid, rules.group
    ))
}

/// The managed root or bound cgroup that `dir` is at or below, if any.
pub fn inside_run<'a>(dir: &Path, managed_root: &'a Path, bound: &'a [PathBuf]) -> Option<&'a Path> {
    if dir.starts_with(managed_root) {
        return Some(managed_root);
    }
    bound.iter().find(|b| dir.starts_with(b)).map(PathBuf::as_path)
}

/// The cgroup v2 path (`0::/...`) of a /proc/PID/cgroup text.
pub fn parse_cgroup(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// The `Groups:` line of a /proc/PID/status text.
pub fn supplementary_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_and_cgroup_lines() {
        let status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 100 \nNSpid:\t1\n";
        assert_eq!(supplementary_groups(status), vec![4, 24, 100]);
        assert_eq!(supplementary_groups("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(supplementary_groups("Name: x\n"), Vec::<u32>::new());
        assert_eq!(parse_cgroup("0::/agent-guard/r-1\n").as_deref(), Some("/agent-guard/r-1"));
        assert_eq!(parse_cgroup("12:cpu:/x\n0::/\n").as_deref(), Some("/"));
        assert_eq!(parse_cgroup("12:cpu:/x\n"), None);
    }

    #[test]
    fn inside_run_means_at_or_below_the_root_or_a_bound_cgroup() {
        let root = Path::new("/cg/agent-guard");
        let bound = vec![PathBuf::from("/cg/agents.slice/a.scope")];
        assert!(inside_run(Path::new("/cg/agent-guard/r-1/sub"), root, &bound).is_some());
        assert!(inside_run(Path::new("/cg/agent-guard"), root, &bound).is_some());
        assert!(inside_run(Path::new("/cg/agents.slice/a.scope/x"), root, &bound).is_some());
        assert!(inside_run(Path::new("/cg/agent-guardx"), root, &bound).is_none());
        assert!(inside_run(Path::new("/cg/agents.slice"), root, &bound).is_none());
        assert!(inside_run(Path::new("/cg/user.slice"), root, &bound).is_none());
    }
}
