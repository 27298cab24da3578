//! Building the Landlock ruleset of a plan and applying it in the launcher (between the
//! cgroup move and the exec).
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use anyhow::Context;
use landlock::{
    AccessNet, NetPort, PathBeneath, PathFd, PathFdError, RestrictSelfError,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError, RulesetStatus,
};

/// What the layer says when it cannot refuse something up front.
use super::*;

/// A prepared ruleset, to be applied in the child.
#[derive(Debug)]
pub struct Layer {
    /// Close-on-exec.
    pub(crate) fd: OwnedFd,
    /// The caller lacks CAP_SYS_ADMIN in its user namespace: Landlock requires no_new_privs.
    pub(crate) no_new_privs: bool,
}

impl Layer {
    /// Restricts the calling thread (and what it execs) with the ruleset. Only raw syscalls
    /// on prepared data: safe between fork and exec.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: prctl and landlock_restrict_self take no pointers; the fd is open.
        unsafe {
            if self.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_landlock_restrict_self, self.fd.as_raw_fd(), 0) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The outcome of [`prepare`]: maybe a layer, what it covers, and lines for stderr.
#[derive(Debug, Default)]
pub struct Prepared {
    pub layer: Option<Layer>,
    /// Set exactly when there is a layer (`run` tells the daemon its ABI).
    pub coverage: Option<Coverage>,
    pub warnings: Vec<String>,
}

/// The layer of a run whose policy's plan (from the daemon's `register` response) is `plan`,
/// if any: on this host's Landlock ABI, with this host's loaders. Never fails: whatever goes
/// wrong becomes a warning and the run goes on without the layer.
pub fn prepare(plan: Option<&Plan>) -> Prepared {
    let Some(plan) = plan else { return Prepared::default() };
    let abi = host_abi();
    if abi == 0 {
        return Prepared {
            warnings: vec![format!("warning: Landlock is not available on this kernel: no Landlock layer; {FALLBACK}")],
            ..Prepared::default()
        };
    }
    let plan = plan.on_host(abi, &loaders(plan));
    let mut warnings = Vec::new();
    let built = match build(&plan) {
        Ok(b) => b,
        Err(e) => {
            warnings.push(format!("warning: Landlock ruleset not built ({e:#}): no Landlock layer; {FALLBACK}"));
            return Prepared { warnings, ..Prepared::default() };
        }
    };
    let Some(layer) = built.layer.filter(|_| built.status != RulesetStatus::NotEnforced) else {
        warnings.push(format!("warning: the kernel does not enforce the Landlock ruleset: no Landlock layer; {FALLBACK}"));
        return Prepared { warnings, ..Prepared::default() };
    };
    // Only what this kernel lacks, not what the policy's on_violation leaves to eBPF.
    let lacking: Vec<&str> = plan
        .coverage
        .ebpf_only
        .iter()
        .filter(|n| n.contains("Landlock ABI"))
        .map(String::as_str)
        .collect();
    if !lacking.is_empty() || built.status == RulesetStatus::PartiallyEnforced {
        warnings.push(format!(
            "warning: Landlock is only partly available on this kernel ({}); for the rest {FALLBACK}",
            if lacking.is_empty() { format!("ABI {abi}") } else { lacking.join("; ") }
        ));
    }
    if !built.missing.is_empty() {
        const SHOWN: usize = 8;
        let more = built.missing.len().saturating_sub(SHOWN);
        warnings.push(format!(
            "note: policy paths not granted by Landlock (access below them is refused for this run): {}{}",
            built.missing[..built.missing.len().min(SHOWN)].join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        ));
    }
    Prepared { layer: Some(layer), coverage: Some(plan.coverage), warnings }
}

struct Built {
    layer: Option<Layer>,
    status: RulesetStatus,
    /// "PATH (why)" for each path not granted.
    missing: Vec<String>,
}

fn build(plan: &HostPlan) -> anyhow::Result<Built> {
    let mut attr = Ruleset::default().handle_access(plan.fs)?;
    if plan.ports.is_some() {
        attr = attr.handle_access(AccessNet::ConnectTcp)?;
    }
    if !plan.scopes.is_empty() {
        attr = attr.scope(plan.scopes)?;
    }
    let mut ruleset = attr.create()?;
    let mut missing = Vec::new();
    for (p, &rights) in &plan.grants {
        let granted = match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => rights,
            Ok(_) => rights & file_access(),
            Err(e) => {
                missing.push(format!("{p} ({})", short_io(&e)));
                continue;
            }
        };
        if granted.is_empty() {
            continue;
        }
        match PathFd::new(Path::new(p)) {
            Ok(fd) => ruleset = ruleset.add_rule(PathBeneath::new(fd, granted))?,
            Err(PathFdError::OpenCall { source, .. }) => missing.push(format!("{p} ({})", short_io(&source))),
            Err(e) => missing.push(format!("{p} ({e})")),
        }
    }
    for &port in plan.ports.iter().flatten() {
        ruleset = ruleset.add_rule(NetPort::new(port, AccessNet::ConnectTcp))?;
    }
    let (status, no_new_privs) = trial(&ruleset)?;
    let layer = match Option::<OwnedFd>::from(ruleset) {
        Some(fd) if status != RulesetStatus::NotEnforced => {
            set_cloexec(&fd).context("setting FD_CLOEXEC on the ruleset")?;
            Some(Layer { fd, no_new_privs })
        }
        _ => None,
    };
    Ok(Built { layer, status, missing })
}

/// Applies a copy of the ruleset to a throwaway thread of this process (Landlock restricts
/// the calling thread only), which is the only way the crate reports how much of it the
/// kernel enforces, and tells whether no_new_privs is needed: it is unless the caller has
/// CAP_SYS_ADMIN in its user namespace (kernel: `landlock_restrict_self` returns EPERM).
fn trial(ruleset: &RulesetCreated) -> anyhow::Result<(RulesetStatus, bool)> {
    let attempt = |nnp: bool| -> anyhow::Result<Result<RestrictionStatus, RulesetError>> {
        let copy = ruleset.try_clone().context("duplicating the ruleset")?;
        Ok(std::thread::scope(|s| s.spawn(move || copy.no_new_privs(nnp).restrict_self()).join())
            .unwrap_or_else(|p| std::panic::resume_unwind(p)))
    };
    match attempt(false)? {
        Ok(st) => Ok((st.ruleset, false)),
        Err(RulesetError::RestrictSelf(RestrictSelfError::RestrictSelfCall { source, .. }))
            if source.raw_os_error() == Some(libc::EPERM) =>
        {
            Ok((attempt(true)??.ruleset, true))
        }
        Err(e) => Err(e.into()),
    }
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if flags & libc::FD_CLOEXEC == 0
        && unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn short_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "does not exist".into(),
        _ => e.to_string(),
    }
}

