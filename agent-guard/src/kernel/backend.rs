//! The enforcement backend (config `backend = "auto" | "lsm" | "trampoline" | "tracepoint"`):
//! which one this host runs, why, and what it does for each kind of operation
//! (`agent-guard status`).
//!
//! `lsm` needs BPF LSM active (`bpf` listed in /sys/kernel/security/lsm) and its programs
//! loading and attaching. `trampoline` runs the same decisions as fmod_ret programs on the
//! kernel's `security_*` functions: it needs BTF and BPF trampolines but not BPF LSM (the
//! stock boot of most distributions). `auto` tries lsm, then trampoline, then falls back to
//! `tracepoint`, saying why each better one was refused. The programs themselves are the
//! probe: on a kernel that refuses them (like the development machines', which refuse every
//! LSM and trampoline program with EPERM) the first one fails and nothing stays attached.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::BackendChoice;


/// The backend a daemon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Lsm,
    Trampoline,
    Tracepoint,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Lsm => "lsm",
            Backend::Trampoline => "trampoline",
            Backend::Tracepoint => "tracepoint",
        }
    }

    /// Whether the security hooks decide (lsm and trampoline: the same programs' decisions,
    /// before the operation): then the open and exec tracepoints are not attached, policies
    /// are compiled for the hooks, and the exec tracepoint only reports.
    pub fn hooks_decide(self) -> bool {
        self != Backend::Tracepoint
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

/// The trampoline backend's fmod_ret programs and the kernel functions they attach to: the
/// `security_*` function that calls each hook of `LSM_PROGRAMS`, in the same order, each
/// program running that hook's decision (agent-guard-ebpf/src/trampoline.rs).
pub const TRAMPOLINE_PROGRAMS: &[(&str, &str)] = &[
    ("ag_fmr_file_open", "security_file_open"),
    ("ag_fmr_bprm_check", "security_bprm_check"),
    ("ag_fmr_path_truncate", "security_path_truncate"),
    ("ag_fmr_path_unlink", "security_path_unlink"),
    ("ag_fmr_path_rmdir", "security_path_rmdir"),
    ("ag_fmr_path_mkdir", "security_path_mkdir"),
    ("ag_fmr_path_mknod", "security_path_mknod"),
    ("ag_fmr_path_symlink", "security_path_symlink"),
    ("ag_fmr_path_link", "security_path_link"),
    ("ag_fmr_path_rename", "security_path_rename"),
    ("ag_fmr_task_kill", "security_task_kill"),
    ("ag_fmr_ptrace_access_check", "security_ptrace_access_check"),
    ("ag_fmr_bpf", "security_bpf"),
    ("ag_fmr_sb_mount", "security_sb_mount"),
    ("ag_fmr_socket_connect", "security_socket_connect"),
    ("ag_fmr_socket_create", "security_socket_create"),
    ("ag_fmr_unix_stream_connect", "security_unix_stream_connect"),
    ("ag_fmr_unix_may_send", "security_unix_may_send"),
    ("ag_fmr_socket_listen", "security_socket_listen"),
];

/// Pin-name prefix of the fmod_ret programs' links.
pub const TRAMPOLINE_LINK_PREFIX: &str = "fmr-";

/// The backend an earlier daemon's pinned state was loaded with, from the links it pinned
/// (`links(prefix)`: the names of the pinned links with that prefix).
pub fn pinned(links: impl Fn(&str) -> usize) -> Backend {
    if links(LSM_LINK_PREFIX) > 0 {
        Backend::Lsm
    } else if links(TRAMPOLINE_LINK_PREFIX) > 0 {
        Backend::Trampoline
    } else {
        Backend::Tracepoint
    }
}

/// Picks the backend for `choice`. `adopted`: the backend of an earlier daemon's pinned
/// state, which is kept. `lsm` and `trampoline` try to attach that backend's programs (Err:
/// why not, in the kernel's or the verifier's words, with nothing left attached); they are
/// called only when needed, best first. Err: the configured backend cannot run here.
pub fn choose(
    choice: BackendChoice,
    adopted: Option<Backend>,
    lsm: impl FnOnce() -> Result<(), String>,
    trampoline: impl FnOnce() -> Result<(), String>,
) -> Result<Choice, String> {
    if let Some(backend) = adopted {
        let forced = match choice {
            BackendChoice::Lsm => Some(Backend::Lsm),
            BackendChoice::Trampoline => Some(Backend::Trampoline),
            BackendChoice::Auto | BackendChoice::Tracepoint => None,
        };
        if let Some(want) = forced.filter(|w| *w != backend) {
            return Err(format!(
                "backend = \"{}\", but the pinned state was loaded with the {} backend (stop it with \
                 `agent-guard daemon --uninstall` to change backends)",
                want.name(),
                backend.name()
            ));
        }
        return Ok(Choice { backend, reason: "adopted from the pinned state of an earlier daemon".into() });
    }
    let other = "(use backend = \"auto\" or \"tracepoint\")";
    match choice {
        BackendChoice::Tracepoint => {
            Ok(Choice { backend: Backend::Tracepoint, reason: "backend = \"tracepoint\" in the config".into() })
        }
        BackendChoice::Lsm => {
            lsm().map_err(|why| format!("backend = \"lsm\", but {why} {other}"))?;
            Ok(Choice { backend: Backend::Lsm, reason: "backend = \"lsm\" in the config; BPF LSM programs attached".into() })
        }
        BackendChoice::Trampoline => {
            trampoline().map_err(|why| format!("backend = \"trampoline\", but {why} {other}"))?;
            Ok(Choice {
                backend: Backend::Trampoline,
                reason: "backend = \"trampoline\" in the config; fmod_ret programs on the security_* functions attached".into(),
            })
        }
        BackendChoice::Auto => {
            let lsm_why = match lsm() {
                Ok(()) => return Ok(Choice { backend: Backend::Lsm, reason: "auto: BPF LSM is active and its programs attached".into() }),
                Err(why) => why,
            };
            match trampoline() {
                Ok(()) => Ok(Choice {
                    backend: Backend::Trampoline,
                    reason: format!("auto: lsm refused ({lsm_why}); fmod_ret programs on the security_* functions attached"),
                }),
                Err(why) => Ok(Choice {
                    backend: Backend::Tracepoint,
                    reason: format!("auto: lsm refused ({lsm_why}); trampoline refused ({why})"),
                }),
            }
        }
    }
}

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

/// The kernel function that calls the LSM hook `hook` (where the trampoline backend's
/// fmod_ret program for it attaches).
pub fn security_function(hook: &str) -> String {
    match hook {
        "bprm_check_security" => "security_bprm_check".into(),
        _ => format!("security_{hook}"),
    }
}

/// Per operation, what `backend` really does (never more than it does).
pub fn enforcement(backend: Backend) -> Vec<Enforcement> {
    fn e(operation: &str, action: &str, how: impl AsRef<str>) -> Enforcement {
        Enforcement { operation: operation.into(), action: action.into(), how: how.as_ref().into() }
    }
    // The programs that decide under lsm and trampoline: the LSM hooks `hooks`, or the
    // fmod_ret programs on the security_* functions that call them.
    let via = |hooks: &str| match backend {
        Backend::Trampoline => format!("fmod_ret {}", hooks.split(", ").map(security_function).collect::<Vec<_>>().join(", ")),
        _ => format!("lsm {hooks}"),
    };
    let hooks = backend.hooks_decide();
    let net = [
        e(
            "connect",
            "deny",
            if hooks {
                format!("cgroup connect4/connect6: EPERM; {} for sockets created outside the run", via("socket_connect"))
            } else {
                "cgroup connect4/connect6: EPERM (not for a socket created outside the run and passed in)".into()
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
            match (&unix_cgroup, hooks) {
                (Err(_), false) => "none",
                _ => "deny",
            },
            match (&unix_cgroup, hooks) {
                (Ok(()), true) => format!(
                    "cgroup connect_unix/sendmsg_unix: EPERM for a name outside [network] unix (as passed); {}: EPERM for a \
                     peer whose resolved path or abstract name is outside it",
                    via("unix_stream_connect, unix_may_send")
                ),
                (Err(why), true) => format!(
                    "{}: EPERM for a peer whose resolved path or abstract name is outside [network] unix (no cgroup unix \
                     hooks: {why})",
                    via("unix_stream_connect, unix_may_send")
                ),
                (Ok(()), false) => "cgroup connect_unix/sendmsg_unix: EPERM for a name outside [network] unix \
                     (judged as passed: a symlink inside an allowed directory is followed)"
                    .to_string(),
                (Err(why), false) => format!(
                    "not checked: this kernel has neither BPF LSM nor the cgroup unix hooks ({why}); kernels before 6.7 \
                     without BPF LSM do not judge unix connects (runs from `agent-guard run` still get Landlock's \
                     abstract-socket scope, ABI 6)"
                ),
            },
        ),
        e(
            "socket-families",
            if hooks { "deny" } else { "deny/kill" },
            if hooks {
                format!(
                    "{}: EPERM for a family outside inet, inet6, unix, netlink route and [network] families (runs from \
                     `agent-guard run` with on_violation = \"deny\": their seccomp filter refuses first)",
                    via("socket_create")
                )
            } else {
                "runs from `agent-guard run` with on_violation = \"deny\": the launcher's seccomp filter refuses \
                 socket/socketpair of a family outside inet, inet6, unix, netlink route and [network] families with \
                 EPERM before the socket exists; bound cgroups and on_violation = \"kill\"/\"freeze\": \
                 socket/socketpair entry, SIGKILL (the socket is created; the process never runs again)"
                    .into()
            },
        ),
        e(
            "bind/listen",
            if hooks { "deny" } else { "deny/kill" },
            if hooks {
                format!(
                    "cgroup bind4/bind6: EPERM for an address:port outside [network] listen (port 0 allowed); {}: EPERM \
                     for listening on one",
                    via("socket_listen")
                )
            } else {
                "cgroup bind4/bind6: EPERM for an address:port outside [network] listen (port 0 allowed); listen(2) \
                 on one (or on an unbound socket): SIGKILL at entry"
                    .into()
            },
        ),
    ];
    let mut v = match backend {
        Backend::Lsm | Backend::Trampoline => vec![
            e("exec", "deny", format!("{}: EPERM, before the image loads (memfd and fexecve included)", via("bprm_check_security"))),
            e("open-read", "deny", format!("{}: EPERM", via("file_open"))),
            e("open-write", "deny", format!("{} (O_CREAT): EPERM, nothing created or truncated", via("file_open, path_mknod"))),
            e(
                "create/truncate/unlink/rename",
                "deny",
                format!(
                    "{}: EPERM",
                    via("path_truncate, path_unlink, path_rmdir, path_mkdir, path_mknod, path_symlink, path_link, path_rename")
                ),
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
    let lsm = hooks;
    v.push(e(
        "cgroup-escape",
        "deny/kill",
        if lsm {
            format!(
                "{}: EPERM for opening a file of the cgroup filesystem for writing (cgroup.procs, cgroup.threads, ...), \
                 whatever the policy; clone3(CLONE_INTO_CGROUP): the launcher's seccomp filter answers clone3 with ENOSYS, \
                 elsewhere sys_enter SIGKILL before the child exists",
                via("file_open")
            )
        } else {
            "open syscalls' exit: SIGKILL for opening a file of the cgroup filesystem for writing, before anything is \
             written, whatever the policy (runs from `agent-guard run`: their Landlock layer refuses it with EACCES first \
             unless [files] write grants the cgroup mount); clone3(CLONE_INTO_CGROUP): the launcher's seccomp filter \
             answers clone3 with ENOSYS, elsewhere sys_enter SIGKILL before the child exists"
                .into()
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
        (true, true) => e("other-processes-proc", "deny", format!("{}: EPERM for /proc/PID files of a process outside the run", via("file_open"))),
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
        Backend::Lsm | Backend::Trampoline => e(
            "self-protection",
            "deny",
            format!(
                "{}: EPERM (no signal or ptrace to a process outside the run, no bpf(), no mount)",
                via("task_kill, ptrace_access_check, bpf, sb_mount")
            ),
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
        for b in [Backend::Lsm, Backend::Trampoline, Backend::Tracepoint] {
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

    #[test]
    fn the_trampoline_programs_mirror_the_lsm_programs() {
        assert_eq!(TRAMPOLINE_PROGRAMS.len(), LSM_PROGRAMS.len());
        for ((fmr, function), (lsm, hook)) in TRAMPOLINE_PROGRAMS.iter().zip(LSM_PROGRAMS) {
            assert_eq!(fmr.strip_prefix("ag_fmr_"), lsm.strip_prefix("ag_lsm_"), "{fmr} runs {lsm}'s decision");
            assert_eq!(*function, security_function(hook), "{fmr} attaches where {hook} is called");
        }
    }

    #[test]
    fn auto_takes_lsm_then_trampoline_then_tracepoint_and_says_why() {
        let refused = |why: &'static str| move || Err::<(), String>(why.to_string());
        let c = choose(BackendChoice::Auto, None, || Ok(()), || panic!("not tried after lsm")).unwrap();
        assert_eq!(c.backend, Backend::Lsm);
        let c = choose(BackendChoice::Auto, None, refused("BPF LSM is not active"), || Ok(())).unwrap();
        assert_eq!(c.backend, Backend::Trampoline);
        assert!(c.reason.contains("BPF LSM is not active"), "{}", c.reason);
        let c = choose(BackendChoice::Auto, None, refused("lsm EPERM"), refused("fentry EPERM")).unwrap();
        assert_eq!(c.backend, Backend::Tracepoint);
        assert!(c.reason.contains("lsm refused (lsm EPERM)") && c.reason.contains("trampoline refused (fentry EPERM)"), "{}", c.reason);
    }

    #[test]
    fn a_forced_backend_runs_or_refuses_to_start() {
        let refused = || Err::<(), String>("EPERM".into());
        let c = choose(BackendChoice::Trampoline, None, || panic!("lsm not tried"), || Ok(())).unwrap();
        assert_eq!(c.backend, Backend::Trampoline);
        let e = choose(BackendChoice::Trampoline, None, || panic!("lsm not tried"), refused).unwrap_err();
        assert!(e.starts_with("backend = \"trampoline\", but EPERM"), "{e}");
        assert!(choose(BackendChoice::Lsm, None, refused, || panic!("no fallback")).is_err());
        let c = choose(BackendChoice::Tracepoint, None, || panic!("not tried"), || panic!("not tried")).unwrap();
        assert_eq!(c.backend, Backend::Tracepoint);
    }

    #[test]
    fn pinned_state_keeps_its_backend() {
        let c = choose(BackendChoice::Auto, Some(Backend::Trampoline), || panic!("no attach"), || panic!("no attach")).unwrap();
        assert_eq!(c.backend, Backend::Trampoline);
        assert!(choose(BackendChoice::Lsm, Some(Backend::Trampoline), || Ok(()), || Ok(())).is_err());
        assert!(choose(BackendChoice::Trampoline, Some(Backend::Tracepoint), || Ok(()), || Ok(())).is_err());
        assert_eq!(pinned(|p| usize::from(p == TRAMPOLINE_LINK_PREFIX)), Backend::Trampoline);
        assert_eq!(pinned(|p| usize::from(p == LSM_LINK_PREFIX)), Backend::Lsm);
        assert_eq!(pinned(|_| 0), Backend::Tracepoint);
    }
}
