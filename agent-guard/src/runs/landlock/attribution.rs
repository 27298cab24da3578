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
/// only its failure): an open that failed with EACCES for an access the layer handles, or a
/// TCP connect to a refused destination that failed with EACCES (the cgroup programs refuse
/// with EPERM). [`attribute`] then needs the policy that was in force.
pub fn maybe_refused(e: &Event, cov: &Coverage) -> bool {
    match &e.detail {
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
/// by `landlock` with the rule that denies it. A failure the policy would have allowed stays as the kernel reported it (a file's own
/// permissions, or a path Landlock could not grant).
pub fn attribute(e: &mut Event, cov: &Coverage, policy: Option<&Policy>) {
    if !maybe_refused(e, cov) {
        return;
    }
    match &e.detail {
        Detail::Connect { .. } => e.layer = Some("landlock"),
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

