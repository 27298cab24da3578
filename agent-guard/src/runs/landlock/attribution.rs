//! Which layer decided: an operation the run's Landlock layer refused reaches the eBPF
//! programs only as a failure; the daemon names the rule with the policy in force.


use crate::{output::event::{Detail, Event, Kind, Rule, Verdict}, policy::{self, Mode, Policy}};

/// What the layer says when it cannot refuse something up front.
use super::*;


/// The layer named by an event from a kernel record before [`attribute`] looks closer:
/// "ebpf" for the kinds the eBPF programs judge, None for the others (exit, the daemon's own).
pub fn kernel_layer(kind: Kind) -> Option<&'static str> {
    (kind.is_kernel() && kind != Kind::Exit).then_some("ebpf")
}

/// Whether `e` may be an operation the run's Landlock layer refused (the eBPF programs saw
/// only its failure): an open that failed with EACCES for an access the layer handles, an
/// exec that failed with EACCES where the layer handles execs, or a TCP connect to a refused
/// destination that failed with EACCES (the cgroup programs refuse with EPERM). [`attribute`]
/// then needs the policy that was in force.
pub fn maybe_refused(e: &Event, cov: &Coverage) -> bool {
    match &e.detail {
        Detail::Exec { result: Some(result), .. } => *result == -libc::EACCES && e.verdict == Verdict::Allow && cov.exec,
        Detail::Open { result, path_resolved: false, path, flags, .. } => {
            let (read, write) = open_access(*flags);
            *result == -libc::EACCES
                && e.verdict == Verdict::Allow
                && path.starts_with('/')
                && ((read && cov.files_read) || (write && cov.files_write))
        }
        Detail::Connect { result, proto, .. } => {
            *result == -libc::EACCES && e.kind == Kind::Connect && e.verdict == Verdict::Deny && *proto == "tcp" && cov.tcp_connect
        }
        _ => false,
    }
}

/// Says which layer refused `e` (see [`maybe_refused`]): for an open, the daemon judges the
/// path the process passed (lexically normalised, then resolved if that name is allowed)
/// with the policy that was in force, and if the policy denies it the event becomes a `deny`
/// by `landlock` with the rule that denies it. For an exec, the daemon judges the file the
/// path names (resolved, a relative one against the process's working directory or dirfd)
/// with `Policy::exec_allowed`; when a relative path can no longer be resolved (the process is
/// gone), the event says the rule (`deny`, `exec.allow`) without claiming the layer. A failure
/// the policy would have allowed stays as the kernel reported it (a file's own permissions, or
/// a path Landlock could not grant).
pub fn attribute(e: &mut Event, cov: &Coverage, policy: Option<&Policy>) {
    if !maybe_refused(e, cov) {
        return;
    }
    match &e.detail {
        Detail::Connect { .. } => e.layer = Some("landlock"),
        Detail::Exec { path, .. } => {
            let Some(p) = policy.filter(|p| p.mode == Mode::Enforce) else { return };
            let layer = match exec_target(path, e.tgid.unwrap_or(0), e.pid.unwrap_or(0), e.facts.dirfd) {
                Some(file) if p.exec_allowed(&file) => return,
                Some(_) => Some("landlock"),
                None => None,
            };
            e.verdict = Verdict::Deny;
            e.rule = Some(Rule::Exec);
            e.layer = layer;
        }
        Detail::Open { path, flags, .. } => {
            let Some(p) = policy.filter(|p| p.mode == Mode::Enforce) else { return };
            let (read, write) = open_access(*flags);
            let denial = |path: &str| {
                let checks = [(write && cov.files_write, policy::Access::Write), (read && cov.files_read, policy::Access::Read)];
                checks.into_iter().filter(|(handled, _)| *handled).find_map(|(_, access)| match p.decide_file(path, access) {
                    policy::FileVerdict::Deny { rule, .. } => Some(rule),
                    policy::FileVerdict::Allow => None,
                })
            };
            let lexical = policy::lexical(path);
            // Through a symlink the name the process passed may be allowed while the file is
            // not: the daemon resolves the path itself (it shares the run's mount namespace
            // unless it runs under PrivateTmp, where /tmp differs; never /proc, whose
            // self-links would be the daemon's).
            let rule = denial(&lexical).or_else(|| {
                let canonical = (!lexical.starts_with("/proc/")).then(|| std::fs::canonicalize(&lexical).ok()).flatten()?;
                denial(canonical.to_str()?)
            });
            // The policy names its file rules as events do.
            if let Some(rule) = rule.and_then(Rule::from_name) {
                e.verdict = Verdict::Deny;
                e.rule = Some(rule);
                e.layer = Some("landlock");
            }
        }
        _ => {}
    }
}

/// (read, write) an open with `flags` asks for, as Landlock checks it.
fn open_access(flags: u32) -> (bool, bool) {
    let acc = flags & libc::O_ACCMODE as u32;
    let path_only = flags & libc::O_PATH as u32 != 0;
    let write = !path_only && (acc != 0 || flags & (libc::O_CREAT | libc::O_TRUNC) as u32 != 0);
    let read = !path_only && acc != libc::O_WRONLY as u32;
    (read, write)
}


/// The file a refused exec named, as the policy judges executables: resolved through
/// symlinks (the kernel judges the file it would have run). An absolute path is taken as
/// passed (lexically normalised) when it cannot be resolved; a relative one is resolved
/// against the thread's working directory or `dirfd` (execveat) through /proc, which needs
/// the process still there: None when it is gone.
fn exec_target(path: &str, tgid: u32, pid: u32, dirfd: i32) -> Option<String> {
    let proc_dir = format!("/proc/{tgid}/task/{pid}");
    let named = if let Some(rest) = path.strip_prefix("/proc/self/") {
        format!("/proc/{tgid}/{rest}")
    } else if path.starts_with('/') {
        path.to_string()
    } else {
        let base = if dirfd == libc::AT_FDCWD { format!("{proc_dir}/cwd") } else { format!("{proc_dir}/fd/{dirfd}") };
        let resolved = std::fs::canonicalize(if path.is_empty() { base } else { format!("{base}/{path}") }).ok()?;
        return Some(resolved.to_str()?.to_string());
    };
    match std::fs::canonicalize(&named) {
        Ok(resolved) => resolved.to_str().map(str::to_string),
        Err(_) => Some(policy::lexical(&named)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::event::errno_name;

    fn refused_exec(path: &str, result: i32, dirfd: i32) -> Event {
        let mut e = Event {
            layer: kernel_layer(Kind::Exec),
            pid: Some(std::process::id()),
            tgid: Some(std::process::id()),
            detail: Detail::Exec { path: path.into(), argv: vec![], argv_truncated: false, path_truncated: false, result: Some(result), error: errno_name(result) },
            ..Event::new(Kind::Exec)
        };
        e.facts.dirfd = dirfd;
        e
    }

    #[test]
    fn refused_execs_are_named_by_the_policy_that_was_in_force() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap();
        let (allowed, other) = (dir.join("allowed"), dir.join("other"));
        for f in [&allowed, &other] {
            std::fs::write(f, "not a program").unwrap();
        }
        std::os::unix::fs::symlink(&other, dir.join("link")).unwrap();
        let text = format!("name = \"x\"\n[files]\nread = [\"/usr\"]\n[exec]\nallow = [{:?}]\n", allowed.display().to_string());
        let checked = policy::parse(&text, "x.toml");
        let pol = checked.policy.unwrap();
        let cov = Coverage { exec: true, files_read: true, ..Coverage::default() };
        let judged = |path: &str, result: i32, dirfd: i32, cov: &Coverage| {
            let mut e = refused_exec(path, result, dirfd);
            attribute(&mut e, cov, Some(&pol));
            (e.verdict.name(), e.rule.map(|r| r.name()), e.layer)
        };
        let eacces = -libc::EACCES;
        let landlock = ("deny", Some("exec.allow"), Some("landlock"));
        let d = |p: &std::path::Path| p.display().to_string();
        assert_eq!(judged(&d(&other), eacces, libc::AT_FDCWD, &cov), landlock);
        assert_eq!(judged(&format!("{}/../{}/./other", d(&dir), dir.file_name().unwrap().to_str().unwrap()), eacces, libc::AT_FDCWD, &cov), landlock);
        // Through a symlink, the file it names is judged.
        assert_eq!(judged(&d(&dir.join("link")), eacces, libc::AT_FDCWD, &cov), landlock);
        // Allowed by the policy: the file's own mode, not Landlock.
        assert_eq!(judged(&d(&allowed), eacces, libc::AT_FDCWD, &cov), ("allow", None, Some("ebpf")));
        // Relative to a directory descriptor of this (still running) process.
        let fd = std::fs::File::open(&dir).unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(judged("other", eacces, fd.as_raw_fd(), &cov), landlock);
        assert_eq!(judged("allowed", eacces, fd.as_raw_fd(), &cov), ("allow", None, Some("ebpf")));
        // A relative path whose process is gone: the rule, not the layer.
        assert_eq!(judged("other", eacces, 1 << 30, &cov), ("deny", Some("exec.allow"), None));
        // EPERM is not Landlock's; a layer that does not handle execs refuses none.
        assert_eq!(judged(&d(&other), -libc::EPERM, libc::AT_FDCWD, &cov), ("allow", None, Some("ebpf")));
        let no_exec = Coverage { exec: false, ..cov.clone() };
        assert_eq!(judged(&d(&other), eacces, libc::AT_FDCWD, &no_exec), ("allow", None, Some("ebpf")));
        // Monitor mode has no layer to name.
        let mon = policy::parse(&text.replace("name = \"x\"", "name = \"x\"\nmode = \"monitor\""), "x.toml").policy.unwrap();
        let mut e = refused_exec(&d(&other), eacces, libc::AT_FDCWD);
        attribute(&mut e, &cov, Some(&mon));
        assert_eq!(e.verdict, Verdict::Allow);
    }
}
