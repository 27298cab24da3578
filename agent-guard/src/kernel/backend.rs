//! The enforcement backend (config `backend = "auto" | "lsm" | "tracepoint"`): which one this
//! host runs, why, and what it does for each kind of operation (`agent-guard status`).
//!
//! `lsm` needs BPF LSM active (`bpf` listed in /sys/kernel/security/lsm) and its programs
//! loading and attaching; `auto` tries exactly that and falls back to `tracepoint`, saying
//! why. The LSM programs themselves are the probe: on a kernel that refuses BPF LSM programs
//! (like the development machines', which list `bpf` but refuse every LSM program with EPERM)
//! the first one fails and nothing stays attached.
use std::path::Path;


use serde::{Deserialize, Serialize};



/// The backend a daemon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Lsm,
    Tracepoint,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Lsm => "lsm",
            Backend::Tracepoint => "tracepoint",
        }
    }
}

/// The active LSM list.
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// BPF LSM programs and their hooks. Opens are decided here under `lsm` (the open
/// tracepoints are not attached then); execs are refused here and reported, when allowed,
/// by the sched_process_exec tracepoint (which has the argv).
pub const LSM_PROGRAMS: &[(&str, &str)] = &[
    ("ag_lsm_file_open", "file_open"),
    ("ag_lsm_bprm_check", "bprm_check_security"),
    ("ag_lsm_path_truncate", "path_truncate"),
    ("ag_lsm_path_unlink", "path_unlink"),
    ("ag_lsm_path_rmdir", "path_rmdir"),
    ("ag_lsm_path_mkdir", "path_mkdir"),
    ("ag_lsm_path_mknod", "path_mknod"),
    ("ag_lsm_path_symlink", "path_symlink"),
    ("ag_lsm_path_link", "path_link"),
    ("ag_lsm_path_rename", "path_rename"),
    ("ag_lsm_task_kill", "task_kill"),
    ("ag_lsm_ptrace_access_check", "ptrace_access_check"),
    ("ag_lsm_bpf", "bpf"),
    ("ag_lsm_sb_mount", "sb_mount"),
    ("ag_lsm_socket_connect", "socket_connect"),
    // Containment: socket families, unix peers, listening (kernel crate: sockets.rs,
    // unix.rs, listen.rs).
    ("ag_lsm_socket_create", "socket_create"),
    ("ag_lsm_unix_stream_connect", "unix_stream_connect"),
    ("ag_lsm_unix_may_send", "unix_may_send"),
    ("ag_lsm_socket_listen", "socket_listen"),
];

/// Pin-name prefix of the LSM programs' links.
pub const LSM_LINK_PREFIX: &str = "lsm-";

/// Whether `bpf` is in the active LSM list (mounting securityfs when it is not mounted);
/// Err says why not, in words for the log and `status`.
pub fn bpf_lsm_listed() -> Result<(), String> {
    if !Path::new(LSM_LIST).exists() {
        let dir = "/sys/kernel/security";
        if let Err(e) = crate::kernel::mounts::ensure_mounted("securityfs", dir) {
            return Err(format!("securityfs is not mounted and mounting it failed: {e}"));
        }
    }
    let list = std::fs::read_to_string(LSM_LIST).map_err(|e| format!("reading {LSM_LIST}: {e}"))?;
    let list = list.trim();
    if list.split(',').any(|l| l == "bpf") {
        Ok(())
    } else {
        Err(format!("BPF LSM is not active ({LSM_LIST}: {list}; boot with lsm={list},bpf to enable it)"))
    }
}

/// The outcome of choosing: the backend, and why (for the log and `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub backend: Backend,
    pub reason: String,
}

/// A load error in brief: its first line and, when there is a verifier log, the log's last
/// line (where the verifier says why it refused).
pub(crate) fn first_line(e: &dyn std::error::Error) -> String {
    let s = e.to_string();
    let mut lines = s.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect::<Vec<_>>().into_iter();
    let first = lines.next().unwrap_or_default();
    let first = first.strip_suffix(". Verifier output:").unwrap_or(first);
    match lines.rfind(|l| !l.starts_with("verification time") && !l.starts_with("processed ") && !l.starts_with("stack depth")) {
        Some(last) if last != first => format!("{first} ... {last}"),
        _ => first.to_string(),
    }
}

/// What the backend does with a violation of one kind of operation on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    /// exec, open-read, open-write, create/truncate/unlink/rename, connect, sendmsg,
    /// syscalls, self-protection.
    pub operation: String,
    /// deny (refused before it happens, the process goes on), kill, observe, or none;
    /// deny/kill: refused in runs of `agent-guard run`, killed elsewhere (`how` says which).
    pub action: String,
    pub how: String,
}

/// Whether this kernel's BTF lets the programs find the process a /proc file describes (set
/// once at load; false until then).
static PROC_JUDGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_proc_judged(yes: bool) {
    PROC_JUDGED.store(yes, std::sync::atomic::Ordering::Relaxed);
}

/// Per operation, what `backend` really does (never more than it does).
pub fn enforcement(backend: Backend) -> Vec<Enforcement> {
    let e = |operation: &str, action: &str, how: &str| Enforcement { operation: operation.into(), action: action.into(), how: how.into() };
    let net = [
        e(
            "connect",
            "deny",
            if backend == Backend::Lsm {
                "cgroup connect4/connect6: EPERM; lsm socket_connect for sockets created outside the run"
            } else {
                "cgroup connect4/connect6: EPERM (not for a socket created outside the run and passed in)"
            },
        ),
        e("sendmsg", "deny", "cgroup sendmsg4/sendmsg6: EPERM"),
        e(
            "dns-names",
            "deny",
            "name rules: cgroup connect4/6 and sendmsg4/6 send every port-53 query of the run (any server) to the daemon's \
             forwarder, which answers REFUSED for a name no rule covers; a connect is allowed only to an address an \
             allowed answer opened for that run, for its TTL plus dns_grace",
        ),
        e(
            "syscalls",
            "deny/kill",
            "runs from `agent-guard run` with on_violation = \"deny\": the launcher's seccomp filter refuses [syscalls] deny \
             and unseen syscalls with EPERM (ENOSYS for io_uring) before they run; bound cgroups (no launcher) and \
             on_violation = \"kill\"/\"freeze\": raw tracepoint sys_enter, SIGKILL",
        ),
    ];
    let unix_cgroup = crate::kernel::sockaddr_unix::state();
    let contain = [
        e(
            "unix-connect",
            match (&unix_cgroup, backend) {
                (Err(_), Backend::Tracepoint) => "none",
                _ => "deny",
            },
            &match (&unix_cgroup, backend) {
                (Ok(()), Backend::Lsm) => "cgroup connect_unix/sendmsg_unix: EPERM for a name outside [network] unix (as passed); \
                     lsm unix_stream_connect/unix_may_send: EPERM for a peer whose resolved path or abstract name is outside it"
                    .to_string(),
                (Err(why), Backend::Lsm) => format!(
                    "lsm unix_stream_connect/unix_may_send: EPERM for a peer whose resolved path or abstract name is outside \
                     [network] unix (no cgroup unix hooks: {why})"
                ),
                (Ok(()), Backend::Tracepoint) => "cgroup connect_unix/sendmsg_unix: EPERM for a name outside [network] unix \
                     (judged as passed: a symlink inside an allowed directory is followed)"
                    .to_string(),
                (Err(why), Backend::Tracepoint) => format!(
                    "not checked: this kernel has neither BPF LSM nor the cgroup unix hooks ({why}); kernels before 6.7 \
                     without BPF LSM do not judge unix connects (runs from `agent-guard run` still get Landlock's \
                     abstract-socket scope, ABI 6)"
                ),
            },
        ),
        e(
            "socket-families",
            if backend == Backend::Lsm { "deny" } else { "deny/kill" },
            if backend == Backend::Lsm {
                "lsm socket_create: EPERM for a family outside inet, inet6, unix, netlink route and [network] families \
                 (runs from `agent-guard run` with on_violation = \"deny\": their seccomp filter refuses first)"
            } else {
                "runs from `agent-guard run` with on_violation = \"deny\": the launcher's seccomp filter refuses \
                 socket/socketpair of a family outside inet, inet6, unix, netlink route and [network] families with \
                 EPERM before the socket exists; bound cgroups and on_violation = \"kill\"/\"freeze\": \
                 socket/socketpair entry, SIGKILL (the socket is created; the process never runs again)"
            },
        ),
        e(
            "bind/listen",
            if backend == Backend::Lsm { "deny" } else { "deny/kill" },
            if backend == Backend::Lsm {
                "cgroup bind4/bind6: EPERM for an address:port outside [network] listen (port 0 allowed); lsm \
                 socket_listen: EPERM for listening on one"
            } else {
                "cgroup bind4/bind6: EPERM for an address:port outside [network] listen (port 0 allowed); listen(2) \
                 on one (or on an unbound socket): SIGKILL at entry"
            },
        ),
    ];
    let mut v = match backend {
        Backend::Lsm => vec![
            e("exec", "deny", "lsm bprm_check_security: EPERM, before the image loads (memfd and fexecve included)"),
            e("open-read", "deny", "lsm file_open: EPERM"),
            e("open-write", "deny", "lsm file_open, path_mknod (O_CREAT): EPERM, nothing created or truncated"),
            e(
                "create/truncate/unlink/rename",
                "deny",
                "lsm path_truncate, path_unlink, path_rmdir, path_mkdir, path_mknod, path_symlink, path_link, path_rename: EPERM",
            ),
        ],
        Backend::Tracepoint => vec![
            e("exec", "kill", "sched_process_exec: SIGKILL before the new image runs"),
            e("open-read", "kill", "open syscalls' exit: SIGKILL before the process sees the descriptor"),
            e(
                "open-write",
                "kill",
                "open syscalls' exit: SIGKILL after the open (a file created or truncated stays so; runs from \
                 `agent-guard run` also get a Landlock layer that refuses writes outside [files] write first)",
            ),
            e(
                "create/truncate/unlink/rename",
                "none",
                "not seen by this backend (link is killed as unseen in bound cgroups; runs from `agent-guard run` get the \
                 Landlock layer, which judges links, or their seccomp filter refuses link with EPERM)",
            ),
        ],
    };
    v.extend(net);
    v.extend(contain);
    let lsm = backend == Backend::Lsm;
    v.push(e(
        "cgroup-escape",
        "deny/kill",
        if lsm {
            "lsm file_open: EPERM for opening a file of the cgroup filesystem for writing (cgroup.procs, cgroup.threads, ...), \
             whatever the policy; clone3(CLONE_INTO_CGROUP): the launcher's seccomp filter answers clone3 with ENOSYS, \
             elsewhere sys_enter SIGKILL before the child exists"
        } else {
            "open syscalls' exit: SIGKILL for opening a file of the cgroup filesystem for writing, before anything is \
             written, whatever the policy (runs from `agent-guard run`: their Landlock layer refuses it with EACCES first \
             unless [files] write grants the cgroup mount); clone3(CLONE_INTO_CGROUP): the launcher's seccomp filter \
             answers clone3 with ENOSYS, elsewhere sys_enter SIGKILL before the child exists"
        },
    ));
    let proc_judged = PROC_JUDGED.load(std::sync::atomic::Ordering::Relaxed);
    v.push(match (proc_judged, lsm) {
        (false, _) => e(
            "other-processes-proc",
            "none",
            "not checked: this kernel's BTF has no proc_inode (runs from `agent-guard run` still get Landlock's ptrace \
             scope for environ, maps, mem and fd)",
        ),
        (true, true) => e("other-processes-proc", "deny", "lsm file_open: EPERM for /proc/PID files of a process outside the run"),
        (true, false) => e(
            "other-processes-proc",
            "kill",
            "open syscalls' exit: SIGKILL for /proc/PID files of a process outside the run, before the process reads \
             them (environ, maps, mem, fd: Landlock's ptrace scope refuses them first in runs from `agent-guard run`)",
        ),
    });
    v.push(e(
        "unregistered-cgroups",
        if lsm { "deny" } else { "deny/kill" },
        "a process below the managed root outside every registered run (a cgroup made by hand, the root itself) is \
         judged by an empty enforcing policy: every judged operation refused",
    ));
    v.push(e(
        "agent-guard-state",
        if lsm { "deny" } else { "deny/kill" },
        "the pins, state_dir, data_dir, events log, control socket, policy_dir and config are denied in every policy \
         (as [files] deny: refused up front by the Landlock layer where a granted tree holds them, by the kernel \
         programs otherwise)",
    ));
    v.push(match backend {
        Backend::Lsm => e(
            "self-protection",
            "deny",
            "lsm task_kill, ptrace_access_check (no signal or ptrace to a process outside the run), bpf, sb_mount: EPERM",
        ),
        Backend::Tracepoint => e(
            "self-protection",
            "deny/kill",
            "bpf(): the launcher's seccomp filter refuses it with EPERM, elsewhere sys_enter SIGKILL; mount, unshare, \
             setns and the like: refused or killed as unseen; signals to processes outside the run: Landlock's signal \
             scope in runs from `agent-guard run` (ABI 6), not checked in bound cgroups",
        ),
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_error_in_brief_keeps_the_verifiers_reason() {
        let e = std::io::Error::other(
            "program p: the BPF_PROG_LOAD syscall returned Permission denied. Verifier output:\n0: R1=ctx()\nR2 unbounded memory access\nverification time 9 usec\nprocessed 3 insns",
        );
        assert_eq!(first_line(&e), "program p: the BPF_PROG_LOAD syscall returned Permission denied ... R2 unbounded memory access");
        let e = std::io::Error::other("program p: Operation not permitted (os error 1). Verifier output: ");
        assert_eq!(first_line(&e), "program p: Operation not permitted (os error 1)");
    }

    #[test]
    fn every_operation_is_described_for_both_backends() {
        for b in [Backend::Lsm, Backend::Tracepoint] {
            let ops: Vec<String> = enforcement(b).into_iter().map(|e| e.operation).collect();
            assert_eq!(
                ops,
                [
                    "exec",
                    "open-read",
                    "open-write",
                    "create/truncate/unlink/rename",
                    "connect",
                    "sendmsg",
                    "dns-names",
                    "syscalls",
                    "unix-connect",
                    "socket-families",
                    "bind/listen",
                    "cgroup-escape",
                    "other-processes-proc",
                    "unregistered-cgroups",
                    "agent-guard-state",
                    "self-protection"
                ]
            );
        }
    }
}
