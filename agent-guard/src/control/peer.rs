//! Who may use the control socket, and for what.
//!
//! Two layers. The socket file is mode 0660, owned by root and the `control_group` group, so
//! the kernel refuses `connect()` to everyone else. The daemon checks again per connection
//! with the peer's SO_PEERCRED credentials: root, or a process whose group or supplementary
//! groups include `control_group` (or `admin_group`). And a process inside a run (its cgroup
//! is at or below the managed root or a bound cgroup) is refused even as root: an agent must
//! not be able to freeze, thaw or kill runs, or start new ones outside its own.
//!
//! Then the peer has a [`Role`]: root; a member of `admin_group` (may apply policies, which
//! binds cgroups, and act on every run); or a member of `control_group`, who may start runs
//! and act only on the runs its uid started ([`may_act_on`]).
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

/// The gid of `admin_group`, or None (with a warning when it is configured but missing: then
/// only root has its rights).
pub fn admin_gid(group: Option<&str>) -> Option<u32> {
    let group = group?;
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Some(g.gid.as_raw()),
        Ok(None) => {
            warn!("admin_group {group:?} does not exist: only root may apply policies and act on others' runs");
            None
        }
        Err(e) => {
            warn!("looking up admin_group {group:?}: {e}; only root may apply policies and act on others' runs");
            None
        }
    }
}

/// The peer of a control connection, from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// 0 when the kernel could not name it (a peer in another pid namespace).
    pub pid: u32,
}

/// What the peer may do, once admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Root,
    /// A member of `admin_group`.
    Admin,
    /// A member of `control_group` only: its own runs.
    Member,
}

/// An admitted peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub pid: u32,
    pub role: Role,
}

impl Caller {
    /// Root or `admin_group`: every run, policies, bindings.
    pub fn is_admin(&self) -> bool {
        matches!(self.role, Role::Root | Role::Admin)
    }
}

/// What the daemon knows to decide: the control and admin groups and the cgroups of runs.
pub struct Rules<'a> {
    pub group: &'a str,
    pub gid: Option<u32>,
    /// `admin_group` and its gid (None: not configured, or no such group).
    pub admin_group: Option<&'a str>,
    pub admin_gid: Option<u32>,
    pub mount: &'a Path,
    pub managed_root: &'a Path,
    pub bound: &'a [PathBuf],
}

/// The peer's role when it may use the control socket; otherwise the reason, starting with
/// "permission denied".
pub fn check(peer: Peer, rules: &Rules) -> Result<Role, String> {
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
        return Ok(Role::Root);
    }
    let groups = std::cell::OnceCell::new();
    let member = |gid: u32| {
        peer.gid == gid
            || groups
                .get_or_init(|| {
                    std::fs::read_to_string(format!("/proc/{}/status", peer.pid))
                        .map(|s| supplementary_groups(&s))
                        .unwrap_or_default()
                })
                .contains(&gid)
    };
    if rules.admin_gid.is_some_and(member) {
        return Ok(Role::Admin);
    }
    let Some(gid) = rules.gid else {
        return Err(format!(
            "permission denied: uid {} is not root, and control_group {:?} does not exist, so only root may use the control socket",
            peer.uid, rules.group
        ));
    };
    if member(gid) {
        return Ok(Role::Member);
    }
    Err(format!(
        "permission denied: uid {} is neither root nor a member of control_group {:?} (gid {gid})",
        peer.uid, rules.group
    ))
}

/// Who besides root may do what a member may not: `root or admin_group "x"`, or `root
/// (admin_group is not set)`.
pub fn admins(admin_group: Option<&str>) -> String {
    match admin_group {
        Some(g) => format!("root or admin_group {g:?}"),
        None => "root (admin_group is not set)".into(),
    }
}

/// Ok when `caller` may act on run `run` (list it, watch its events, freeze, thaw, kill,
/// approve, deny, end it), which uid `started_by` started (None: a bound cgroup, or a run
/// whose starter is not recorded). The refusal names the role that was missing.
pub fn may_act_on(caller: &Caller, run: &str, started_by: Option<u32>, admin_group: Option<&str>) -> Result<(), String> {
    if caller.is_admin() || started_by == Some(caller.uid) {
        return Ok(());
    }
    let who = admins(admin_group);
    Err(match started_by {
        Some(uid) => format!(
            "permission denied: run {run} was started by uid {uid}; acting on it needs that uid, {who} (you are uid {})",
            caller.uid
        ),
        None => format!(
            "permission denied: run {run} has no recorded starter (a bound cgroup, or a run left by an earlier daemon); \
             acting on it needs {who} (you are uid {})",
            caller.uid
        ),
    })
}

/// Ok when `caller` may do `what` (apply a policy, bind cgroups), which needs root or
/// `admin_group`.
pub fn admin_only(caller: &Caller, what: &str, admin_group: Option<&str>) -> Result<(), String> {
    if caller.is_admin() {
        return Ok(());
    }
    Err(format!(
        "permission denied: {what} needs {} (uid {} is a member of control_group only: it may start runs and act on its own)",
        admins(admin_group),
        caller.uid
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
    fn members_act_on_their_own_runs_admins_and_root_on_every_run() {
        let member = Caller { uid: 1001, pid: 1, role: Role::Member };
        let other = Caller { uid: 1002, pid: 1, role: Role::Member };
        let admin = Caller { uid: 1003, pid: 1, role: Role::Admin };
        let root = Caller { uid: 0, pid: 1, role: Role::Root };
        let g = Some("agent-guard-admin");
        assert!(may_act_on(&member, "r-1", Some(1001), g).is_ok());
        assert!(may_act_on(&admin, "r-1", Some(1001), g).is_ok() && may_act_on(&root, "r-1", None, None).is_ok());
        let e = may_act_on(&other, "r-abc123", Some(1001), g).unwrap_err();
        assert!(
            e.contains("run r-abc123 was started by uid 1001; acting on it needs that uid, root or admin_group \"agent-guard-admin\""),
            "{e}"
        );
        let e = may_act_on(&member, "b-7", None, None).unwrap_err();
        assert!(e.contains("no recorded starter") && e.contains("needs root (admin_group is not set)"), "{e}");
        assert!(admin_only(&admin, "applying a policy", g).is_ok() && admin_only(&root, "x", None).is_ok());
        let e = admin_only(&member, "applying a policy", g).unwrap_err();
        assert!(e.starts_with("permission denied: applying a policy needs root or admin_group \"agent-guard-admin\""), "{e}");
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
