//! What `agent-guard run` takes away from the command before it execs: no_new_privs always,
//! every capability but those `[process] capabilities` lists (bounding, permitted, effective,
//! inheritable and ambient sets), and with `--user` or `[process] user` the identity.
use std::{ffi::CString, io};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::policy::{process::CAP_LAST, Policy};

/// The daemon's part (in the Register response): what the run's policy keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    /// Capability numbers the command keeps.
    pub capabilities: Vec<u32>,
    /// USER or USER:GROUP from `[process] user`.
    pub user: Option<String>,
    /// `[files] devices`.
    pub devices: bool,
    /// `[limits] processes`: the run's pids.max (see `runs::pids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u32>,
}

impl ProcessPlan {
    pub fn for_policy(policy: &Policy) -> ProcessPlan {
        ProcessPlan {
            capabilities: policy.capabilities.iter().map(|(_, n)| *n).collect(),
            user: policy.run_as.clone(),
            devices: policy.devices,
            pids_max: policy.tripwires.processes(),
        }
    }
}

/// An identity to switch to, resolved before the fork (name lookups are not
/// async-signal-safe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// `USER[:GROUP]` (names or numbers) -> uid, gid (the group's, else the user's primary) and
/// the user's supplementary groups.
pub fn resolve(spec: &str) -> Result<Identity> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let pw = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(uid.into()).ok().flatten(),
        Err(_) => nix::unistd::User::from_name(user).ok().flatten(),
    };
    let (uid, primary, name) = match (&pw, user.parse::<u32>()) {
        (Some(pw), _) => (pw.uid.as_raw(), pw.gid.as_raw(), Some(pw.name.clone())),
        (None, Ok(uid)) => (uid, uid, None),
        (None, Err(_)) => bail!("--user {spec}: no user {user:?} on this host"),
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .with_context(|| format!("--user {spec}: no group {g:?} on this host"))?
                .gid
                .as_raw(),
        },
    };
    let groups = match name {
        Some(n) => {
            let c = CString::new(n).context("user name with NUL")?;
            nix::unistd::getgrouplist(&c, nix::unistd::Gid::from_raw(gid))
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_else(|_| vec![gid])
        }
        None => vec![gid],
    };
    Ok(Identity { uid, gid, groups })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The child's part, applied between fork and exec with async-signal-safe calls only.
#[derive(Debug, Clone)]
pub struct Privileges {
    keep: u64,
    identity: Option<Identity>,
}

impl Privileges {
    pub fn new(plan: &ProcessPlan, identity: Option<Identity>) -> Privileges {
        let keep = plan.capabilities.iter().filter(|c| **c <= CAP_LAST).fold(0u64, |m, c| m | 1 << c);
        Privileges { keep, identity }
    }

    /// The capability mask the command keeps.
    pub fn keep(&self) -> u64 {
        self.keep
    }

    /// Between fork and exec. Order matters: the bounding set first (it needs CAP_SETPCAP in
    /// the effective set, which a change of identity clears), then the identity (keeping the
    /// permitted set across setuid), then the three sets, the ambient set, and no_new_privs.
    /// A launcher without CAP_SETPCAP (not root) leaves the bounding set: it holds nothing to
    /// drop from its sets either, and no_new_privs keeps setuid and file capabilities from
    /// giving any back.
    pub fn apply(&self) -> io::Result<()> {
        let check = |r: libc::c_int| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
        const CAP_SETPCAP: u32 = 8;
        // SAFETY: prctl, setgroups, setresgid, setresuid, capget and capset are
        // async-signal-safe system calls on memory owned by this frame.
        unsafe {
            let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
            let mut data = [CapData::default(); 2];
            check(libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) as libc::c_int)?;
            if data[0].effective & (1 << CAP_SETPCAP) != 0 {
                for cap in 0..=CAP_LAST {
                    if self.keep & (1 << cap) == 0 {
                        // EINVAL: a capability this kernel does not know; nothing to drop.
                        let r = libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                        if r < 0 && *libc::__errno_location() != libc::EINVAL {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
            }
            if let Some(id) = &self.identity {
                check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
                check(libc::setgroups(id.groups.len(), id.groups.as_ptr()))?;
                check(libc::setresgid(id.gid, id.gid, id.gid))?;
                check(libc::setresuid(id.uid, id.uid, id.uid))?;
                check(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0))?;
            }
            let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
            check(libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) as libc::c_int)?;
            let have = data[0].permitted as u64 | (data[1].permitted as u64) << 32;
            let keep = self.keep & have;
            for (i, d) in data.iter_mut().enumerate() {
                let part = (keep >> (32 * i)) as u32;
                *d = CapData { effective: part, permitted: part, inheritable: part };
            }
            check(libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) as libc::c_int)?;
            check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0))?;
            if self.identity.as_ref().is_some_and(|id| id.uid != 0) {
                // A non-root command keeps its capabilities across exec only as ambient ones.
                for cap in 0..=CAP_LAST {
                    if keep & (1 << cap) != 0 {
                        check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong, cap as libc::c_ulong, 0, 0))?;
                    }
                }
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_numeric_users_resolve() {
        let root = resolve("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let n = resolve("4242:4343").unwrap();
        assert_eq!((n.uid, n.gid, n.groups.clone()), (4242, 4343, vec![4343]));
        assert!(resolve("no-such-user-agent-guard").unwrap_err().to_string().contains("no user"));
        assert!(resolve("root:no-such-group-agent-guard").unwrap_err().to_string().contains("no group"));
    }

    #[test]
    fn the_mask_keeps_only_listed_known_capabilities() {
        let plan = ProcessPlan { capabilities: vec![10, 27, 99], user: None, devices: false, pids_max: None };
        assert_eq!(Privileges::new(&plan, None).keep(), 1 << 10 | 1 << 27);
        assert_eq!(Privileges::new(&ProcessPlan::default(), None).keep(), 0);
    }
}
