//! A Landlock layer for the writes of runs started by `agent-guard run`.
//!
//! # What it adds
//!
//! The tracepoint backend judges an `open` at syscall exit and kills the process there: by
//! then an `open(O_CREAT|O_TRUNC)` of a file outside `[files] write` has already created or
//! truncated it. For an `enforce` policy, `run` therefore also puts the command under a
//! Landlock ruleset that handles the write-side filesystem rights (write, truncate, create
//! regular files / directories / symlinks / fifos / sockets / device nodes, remove files and
//! directories, rename and link across directories: [`write_access`]) and grants them only
//! beneath each `[files] write` path. Everywhere else the kernel refuses those operations with
//! `EACCES` *before* anything changes on disk: no file is created, truncated, removed or
//! renamed, and the process is not killed (the open failed; there is nothing to judge).
//!
//! Read and exec rights are not handled here: reads and execs are unaffected by this layer and
//! stay the eBPF programs' business, as does everything the policy says about writes inside
//! the write trees.
//!
//! The ruleset is built in `run` before the fork (opening the path descriptors is not
//! async-signal-safe) and applied by the child between its move into the run cgroup (itself a
//! file write) and `exec`, with the bare `landlock_restrict_self` syscall ([`Layer::apply`]).
//! The ruleset descriptor is close-on-exec: the command never sees it.
//!
//! # What it cannot do
//!
//! - **Carve-outs inside write trees.** Landlock only grants: a `deny` rule or a longer `read`
//!   rule inside a `write` tree cannot be expressed, so such a path stays writable for
//!   Landlock and a write to it is still killed by the eBPF programs after the open (with the
//!   file already created or truncated).
//! - **Reloads.** The layer is fixed when the run starts. Reloading the policy (or switching it
//!   to monitor) neither widens nor narrows it for runs already going; only the eBPF side
//!   follows reloads.
//! - **Paths that did not exist at launch.** A rule is bound to an inode; a `[files] write`
//!   path missing when the run starts gets no grant (`run` says so), and writes below it stay
//!   refused for that run even once it is created.
//! - **Grants are per inode tree, not per name.** A `write` path that is a symlink grants its
//!   target; one that is a regular file grants writing and truncating that file only (not
//!   re-creating it after removal, nor atomically replacing it with a rename).
//! - **Already-open descriptors** (e.g. stdout redirected by the shell) are not checked again.
//!
//! Where Landlock is unavailable, or the kernel supports only part of the rights (Landlock
//! ABI < 3 has no truncate right), `run` prints one warning and goes on: the eBPF layer still
//! enforces, after the fact.
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use anyhow::Context;
use landlock::{
    make_bitflags, AccessFs, BitFlags, PathBeneath, PathFd, PathFdError, RestrictSelfError, RestrictionStatus, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError, RulesetStatus, ABI,
};

use crate::policy::{self, Mode, Policy};

/// What the layer says when it cannot prevent writes up front.
const FALLBACK: &str = "writes outside [files] write are only killed after the fact \
                        (a file opened with O_CREAT/O_TRUNC is created/truncated before the kill)";

/// The rights this layer handles: the write side of Landlock ABI 4 (ABI 1's create, remove,
/// write rights, ABI 2's Refer, ABI 3's Truncate). Later ABIs' write-side additions (device
/// ioctls, connecting to named unix sockets) are not file writes in the policy's sense and are
/// left alone.
pub fn write_access() -> BitFlags<AccessFs> {
    AccessFs::from_write(ABI::V4)
}

/// The rights that make sense on a rule for a non-directory.
fn file_access() -> BitFlags<AccessFs> {
    make_bitflags!(AccessFs::{WriteFile | Truncate})
}

/// A prepared ruleset, to be applied in the child.
#[derive(Debug)]
pub struct Layer {
    /// Close-on-exec.
    fd: OwnedFd,
    /// The caller lacks CAP_SYS_ADMIN in its user namespace: Landlock requires no_new_privs.
    no_new_privs: bool,
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

/// The outcome of [`prepare`]: maybe a layer, and lines for stderr.
#[derive(Debug, Default)]
pub struct Prepared {
    pub layer: Option<Layer>,
    pub warnings: Vec<String>,
}

/// The layer for a run whose bound policy file is `text` (as the daemon returned it), if any.
/// Never fails: whatever goes wrong becomes a warning and the run goes on without the layer.
pub fn prepare(text: Option<&str>, origin: &str) -> Prepared {
    let Some(text) = text else { return Prepared::default() };
    let checked = policy::parse(text, origin);
    let Some(policy) = checked.policy else {
        let why = checked.errors.first().map_or_else(|| "no policy".to_string(), |e| e.message.clone());
        return Prepared {
            layer: None,
            warnings: vec![format!(
                "warning: the run's policy text does not parse ({why}): no Landlock layer; {FALLBACK}"
            )],
        };
    };
    for_policy(&policy)
}

/// The layer for `policy`: none in monitor mode.
pub fn for_policy(policy: &Policy) -> Prepared {
    if policy.mode != Mode::Enforce {
        return Prepared::default();
    }
    let mut warnings = Vec::new();
    let built = match build(&policy.files_write) {
        Ok(b) => b,
        Err(e) => {
            warnings.push(format!("warning: Landlock ruleset not built ({e}); {FALLBACK}"));
            return Prepared { layer: None, warnings };
        }
    };
    let layer = match (built.status, built.layer) {
        (RulesetStatus::FullyEnforced, Some(layer)) => Some(layer),
        (RulesetStatus::PartiallyEnforced, Some(layer)) => {
            warnings.push(format!(
                "warning: Landlock is only partially enforced on this kernel (no truncate/refer rights before Landlock ABI 3); \
                 for what it cannot refuse, {FALLBACK}"
            ));
            Some(layer)
        }
        (_, _) => {
            warnings.push(format!("warning: Landlock is not available on this kernel; {FALLBACK}"));
            None
        }
    };
    if layer.is_some() && !built.missing.is_empty() {
        warnings.push(format!(
            "note: [files] write paths not granted by Landlock (writes below them are refused for this run): {}",
            built.missing.join(", ")
        ));
    }
    Prepared { layer, warnings }
}

struct Built {
    layer: Option<Layer>,
    status: RulesetStatus,
    /// "PATH (why)" for each write path not granted.
    missing: Vec<String>,
}

fn build(write_paths: &[String]) -> anyhow::Result<Built> {
    let access = write_access();
    let mut ruleset = Ruleset::default().handle_access(access)?.create()?;
    let mut missing = Vec::new();
    for p in write_paths {
        let granted = match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => access,
            Ok(_) => access & file_access(),
            Err(e) => {
                missing.push(format!("{p} ({})", short_io(&e)));
                continue;
            }
        };
        match PathFd::new(Path::new(p)) {
            Ok(fd) => ruleset = ruleset.add_rule(PathBeneath::new(fd, granted))?,
            Err(PathFdError::OpenCall { source, .. }) => missing.push(format!("{p} ({})", short_io(&source))),
            Err(e) => missing.push(format!("{p} ({e})")),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn available() -> bool {
        // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attr only queries the ABI.
        let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
        if v < 1 {
            eprintln!("skip: Landlock not available");
        }
        v >= 1
    }

    fn enforce(write: &[&Path]) -> Policy {
        let mut text = String::from("name = \"ll\"\nmode = \"enforce\"\n[files]\nwrite = [");
        text.push_str(&write.iter().map(|p| format!("{:?}", p.display().to_string())).collect::<Vec<_>>().join(", "));
        text.push_str("]\n");
        let checked = policy::parse(&text, "test.toml");
        checked.policy.unwrap_or_else(|| panic!("{:?}", checked.errors))
    }

    #[test]
    fn the_handled_rights_are_the_write_side_only() {
        let a = write_access();
        for r in [AccessFs::WriteFile, AccessFs::Truncate, AccessFs::MakeReg, AccessFs::RemoveFile, AccessFs::Refer] {
            assert!(a.contains(r), "{r:?}");
        }
        for r in [AccessFs::ReadFile, AccessFs::ReadDir, AccessFs::Execute, AccessFs::IoctlDev] {
            assert!(!a.contains(r), "{r:?}");
        }
    }

    #[test]
    fn no_text_and_monitor_mean_no_layer_and_bad_text_warns() {
        let p = prepare(None, "x");
        assert!(p.layer.is_none() && p.warnings.is_empty());
        let p = prepare(Some("name = \"m\"\nmode = \"monitor\"\n[files]\nwrite = [\"/tmp\"]\n"), "m.toml");
        assert!(p.layer.is_none() && p.warnings.is_empty(), "{p:?}");
        let p = prepare(Some("this is not toml ["), "bad.toml");
        assert!(p.layer.is_none());
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].contains("after the fact"), "{p:?}");
    }

    #[test]
    fn the_layer_refuses_creates_outside_write_paths_and_its_fd_does_not_leak() {
        if !available() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(tmp.path().join("keep.txt"), "hello").unwrap();
        let gone = tmp.path().join("gone");
        let p = for_policy(&enforce(&[&out, &gone]));
        assert_eq!(p.warnings.len(), 1, "{p:?}");
        assert!(p.warnings[0].contains("gone (does not exist)"), "{p:?}");
        let layer = p.layer.expect("a layer");
        // no_new_privs only where Landlock requires it: without CAP_SYS_ADMIN (bit 21).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let cap_eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
        let sys_admin = u64::from_str_radix(cap_eff, 16).unwrap() & (1 << 21) != 0;
        assert_eq!(layer.no_new_privs, !sys_admin);
        // SAFETY: F_GETFD on an open fd.
        let flags = unsafe { libc::fcntl(layer.fd.as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);

        // In a thread of its own: Landlock restricts the calling thread only.
        let root = tmp.path().to_path_buf();
        std::thread::spawn(move || {
            layer.apply().unwrap();
            std::fs::write(out.join("new.txt"), "x").unwrap();
            let e = std::fs::write(root.join("new.txt"), "x").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES));
            let e = std::fs::write(root.join("keep.txt"), "x").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES));
            let e = std::fs::remove_file(root.join("keep.txt")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES));
            // Reads are not this layer's business.
            assert_eq!(std::fs::read_to_string(root.join("keep.txt")).unwrap(), "hello");
        })
        .join()
        .unwrap();
        assert!(!tmp.path().join("new.txt").exists());
        assert_eq!(std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(), "hello");
        assert!(tmp.path().join("out/new.txt").exists());
    }
}
