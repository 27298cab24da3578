//! The enforcement scenario suite: one list, run on every backend. On the host it runs
//! against the tracepoint backend (tests/tests/scenarios.rs, part of `cargo xtask test`); in
//! each VM kernel of `cargo xtask vm-test` against the lsm backend (tests/src/bin/agscenarios.rs,
//! which the initramfs runs). Each scenario states what the process observes on each backend
//! (refused with an errno, killed, or allowed) and, for a violation, the event the kernel
//! reported.
//!
//! The policy: the probe may start (its libraries, /proc), reads `ws`, writes `ws/out`, and
//! `ws/out/locked` is denied although it lies inside the write tree. The daemon runs with
//! `landlock = false` and `seccomp = false`: the suite is about the eBPF backends (the Landlock
//! layer and the seccomp filter of `agent-guard run` have their own tests, tests/tests/landlock.rs
//! and tests/tests/seccomp.rs).
use std::{
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{layout, probe, s, status, stdout, Daemon, Layout, PolicyFile};

/// The enforcement backend a suite runs against (the daemon is started with it forced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Tracepoint,
    Lsm,
    /// The lsm backend's decisions as fmod_ret programs on the security_* functions: the same
    /// outcomes and events as lsm (`hook: "lsm"`, the security hook that decided).
    Trampoline,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tracepoint => "tracepoint",
            Backend::Lsm => "lsm",
            Backend::Trampoline => "trampoline",
        }
    }

    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "tracepoint" => Some(Backend::Tracepoint),
            "lsm" => Some(Backend::Lsm),
            "trampoline" => Some(Backend::Trampoline),
            _ => None,
        }
    }

    /// Whether the security hooks decide (lsm, trampoline): refusals before the act.
    pub fn hooks(self) -> bool {
        self != Backend::Tracepoint
    }
}

/// What the process in the run observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeds and prints this (exit 0).
    Ok(&'static str),
    /// Fails with this errno (`err EPERM`, exit 1), and goes on running.
    Err(&'static str),
    /// Fails with EPERM or EACCES: refused by whichever of the eBPF and Landlock layers
    /// comes first on that kernel.
    Refused,
    /// Killed by SIGKILL (status 137) before it prints the result.
    Killed,
}

impl Outcome {
    fn verdict(self) -> &'static str {
        match self {
            Outcome::Ok(_) => "allow",
            Outcome::Err(_) | Outcome::Refused => "deny",
            Outcome::Killed => "kill",
        }
    }

    fn matches(self, o: &Output) -> bool {
        let out = stdout(o);
        let out = out.trim();
        match self {
            Outcome::Ok(want) => status(o) == 0 && out.starts_with(want),
            Outcome::Err(e) => status(o) == 1 && out == format!("err {e}"),
            Outcome::Refused => status(o) == 1 && (out == "err EPERM" || out == "err EACCES"),
            Outcome::Killed => status(o) == 128 + 9 && !out.starts_with("ok"),
        }
    }
}

/// Where the suite runs: the daemon, the workspace, and what scenarios point at.
pub struct Ctx {
    pub daemon: Daemon,
    pub layout: Layout,
    pub policy: PathBuf,
    /// A file outside every rule ("TOPSECRET").
    pub secret: String,
    /// A process outside every run (a signal target).
    pub outside: Child,
    pub tcp_ok: TcpListener,
    pub tcp_bad: TcpListener,
    pub tcp6_ok: Option<TcpListener>,
    pub tcp6_bad: Option<TcpListener>,
    pub udp_ok: UdpSocket,
    pub udp_bad: UdpSocket,
    /// A TCP socket created outside every run, inherited by the runs (not close-on-exec).
    pub passed_socket: i32,
    /// Unix sockets, abstract names and ports of the containment scenarios.
    pub contain: Contain,
    /// Whether this kernel and backend judge unix peers (`status`: unix-connect is not
    /// `none`): the tracepoint backend before 6.7 has neither BPF LSM nor the cgroup unix
    /// hooks, so a denied unix connect goes through there (checked by `status_names`).
    pub unix_judged: bool,
}

/// What the containment scenarios point at: listeners outside every run.
pub struct Contain {
    /// `<dir>/allowed/ok.sock` (under the policy's `dir/` rule), `<dir>/bad.sock` (unlisted),
    /// `<dir>/bad.dgram` (an unlisted datagram socket).
    pub dir: PathBuf,
    pub abstract_ok: String,
    pub abstract_bad: String,
    /// A loopback port `[network] listen` lists, and one it does not.
    pub listen_ok: u16,
    pub listen_bad: u16,
    _listeners: Vec<std::os::unix::net::UnixListener>,
    _dgram: std::os::unix::net::UnixDatagram,
}

impl Contain {
    fn new(dir: PathBuf) -> Contain {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
        std::fs::create_dir_all(dir.join("allowed")).unwrap();
        let tag = std::process::id();
        let (abstract_ok, abstract_bad) = (format!("ag-ok-{tag}"), format!("ag-bad-{tag}"));
        let mut listeners = vec![
            UnixListener::bind(dir.join("allowed/ok.sock")).unwrap(),
            UnixListener::bind(dir.join("bad.sock")).unwrap(),
        ];
        for name in [&abstract_ok, &abstract_bad] {
            listeners.push(UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap());
        }
        let dgram = UnixDatagram::bind(dir.join("bad.dgram")).unwrap();
        // Free ports now (a race with other processes is unlikely on loopback).
        let free = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (listen_ok, listen_bad) = (free(), free());
        Contain { dir, abstract_ok, abstract_bad, listen_ok, listen_bad, _listeners: listeners, _dgram: dgram }
    }

    fn path(&self, rel: &str) -> String {
        s(&self.dir.join(rel))
    }
}

impl Ctx {
    fn ws(&self, rel: &str) -> String {
        s(&self.layout.ws.join(rel))
    }
    fn out(&self, rel: &str) -> String {
        s(&self.layout.ws.join("out").join(rel))
    }
    fn locked(&self, rel: &str) -> String {
        s(&self.layout.ws.join("out/locked").join(rel))
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // Our own child, by pid.
        let _ = self.outside.kill();
        let _ = self.outside.wait();
        // SAFETY: our own descriptor.
        unsafe { libc::close(self.passed_socket) };
    }
}

/// A check after the operation (e.g. the file was not changed); Err says what went wrong.
type After = fn(&Ctx, Backend) -> Result<(), String>;

pub struct Scenario {
    pub name: &'static str,
    /// agprobe's arguments.
    pub args: fn(&Ctx) -> Vec<String>,
    pub tracepoint: Outcome,
    /// Under lsm and trampoline (the same decisions, made by the same code).
    pub lsm: Outcome,
    /// The event of a violation: kind and rule (checked where the outcome is not Ok, except
    /// for EACCES, which may come from the Landlock layer).
    pub event: Option<(&'static str, &'static str)>,
    pub after: Option<After>,
}

impl Scenario {
    pub fn expect(&self, b: Backend) -> Outcome {
        match b {
            Backend::Tracepoint => self.tracepoint,
            Backend::Lsm | Backend::Trampoline => self.lsm,
        }
    }
}

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn unchanged(path: &str, want: &str) -> Result<(), String> {
    match std::fs::read_to_string(path) {
        Ok(t) if t == want => Ok(()),
        Ok(t) => Err(format!("{path} changed: {t:?}")),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

fn absent(path: &str) -> Result<(), String> {
    if Path::new(path).exists() { Err(format!("{path} exists")) } else { Ok(()) }
}

const KILLED: Outcome = Outcome::Killed;
const EPERM: Outcome = Outcome::Err("EPERM");

/// The suite. Names are stable: vm-test reports failures by name.
pub fn scenarios() -> Vec<Scenario> {
    let read = |name, args: fn(&Ctx) -> Vec<String>, rule| Scenario {
        name,
        args,
        tracepoint: KILLED,
        lsm: EPERM,
        event: Some(("open", rule)),
        after: None,
    };
    vec![
        Scenario { name: "read-allowed", args: |c| v(&["read", &c.ws("ok.txt")]), tracepoint: Outcome::Ok("ok hello"), lsm: Outcome::Ok("ok hello"), event: None, after: None },
        read("read-denied", |c| v(&["read", &c.secret]), "files.read"),
        read("read-symlink", |c| v(&["read", &c.ws("link")]), "files.read"),
        read("read-dotdot", |c| vec!["read".into(), format!("{}/../outside/secret.txt", c.ws(""))], "files.read"),
        read("read-relative", |c| vec!["read-rel".into(), s(&c.layout.outside), "secret.txt".into()], "files.read"),
        read("read-dirfd", |c| v(&["read-at", &c.ws(""), "../outside/secret.txt"]), "files.read"),
        read("read-procfd", |c| v(&["read-procfd", &c.secret]), "files.read"),
        read("read-openat2", |c| v(&["read-openat2", &c.secret]), "files.read"),
        read("read-deny-rule", |c| v(&["read", &c.ws(".env")]), "files.deny"),
        Scenario { name: "write-allowed", args: |c| v(&["write", &c.out("new.txt")]), tracepoint: Outcome::Ok("ok"), lsm: Outcome::Ok("ok"), event: None, after: None },
        // Killed after the open on the tracepoint backend: the file is truncated by then
        // (the Landlock layer, off here, is what refuses such writes up front there).
        Scenario {
            name: "write-read-only",
            args: |c| v(&["write", &c.ws("ro.txt")]),
            tracepoint: KILLED,
            lsm: EPERM,
            event: Some(("open", "files.write")),
            after: Some(|c, b| if b.hooks() { unchanged(&c.ws("ro.txt"), "READONLY\n") } else { Ok(()) }),
        },
        // A denied tree inside the write tree: only the eBPF layer can refuse these.
        Scenario {
            name: "create-in-denied",
            args: |c| v(&["write", &c.locked("new.txt")]),
            tracepoint: KILLED,
            lsm: EPERM,
            event: Some(("open", "files.deny")),
            after: Some(|c, b| if b.hooks() { absent(&c.locked("new.txt")) } else { Ok(()) }),
        },
        Scenario {
            name: "truncate-open-denied",
            args: |c| v(&["write", &c.locked("trunc-open.txt")]),
            tracepoint: KILLED,
            lsm: EPERM,
            event: Some(("open", "files.deny")),
            after: Some(|c, b| if b.hooks() { unchanged(&c.locked("trunc-open.txt"), "LOCKED\n") } else { Ok(()) }),
        },
        // truncate(2), unlink, mkdir and rename are not opens: the tracepoint backend does
        // not see them (a gap the lsm backend closes).
        Scenario {
            name: "truncate-denied",
            args: |c| v(&["truncate", &c.locked("trunc.txt")]),
            tracepoint: Outcome::Ok("ok truncated"),
            lsm: EPERM,
            event: Some(("open", "files.deny")),
            after: Some(|c, b| if b.hooks() { unchanged(&c.locked("trunc.txt"), "LOCKED\n") } else { Ok(()) }),
        },
        Scenario {
            name: "unlink-denied",
            args: |c| v(&["unlink", &c.locked("unlink.txt")]),
            tracepoint: Outcome::Ok("ok unlinked"),
            lsm: EPERM,
            event: Some(("open", "files.deny")),
            after: Some(|c, b| if b.hooks() { unchanged(&c.locked("unlink.txt"), "LOCKED\n") } else { Ok(()) }),
        },
        Scenario {
            name: "mkdir-denied",
            args: |c| v(&["mkdir", &c.locked("dir")]),
            tracepoint: Outcome::Ok("ok made"),
            lsm: EPERM,
            event: Some(("open", "files.deny")),
            after: Some(|c, b| if b.hooks() { absent(&c.locked("dir")) } else { Ok(()) }),
        },
        // The rename trick: move a denied file to an allowed name, then read it there.
        Scenario {
            name: "rename-trick",
            args: |c| v(&["rename", &c.locked("rename.txt"), &c.out("renamed.txt")]),
            tracepoint: Outcome::Ok("ok renamed"),
            lsm: EPERM,
            event: Some(("open", "files.deny")),
            after: Some(|c, b| if b.hooks() { absent(&c.out("renamed.txt")) } else { Ok(()) }),
        },
        // The hard-link trick: a second, allowed name for a denied file. The tracepoint
        // backend kills link(2) as an operation it cannot judge (the link is made first).
        Scenario {
            name: "hardlink-trick",
            args: |c| v(&["link", &c.locked("link.txt"), &c.out("linked.txt")]),
            tracepoint: KILLED,
            lsm: EPERM,
            event: None,
            after: Some(|c, b| if b.hooks() { absent(&c.out("linked.txt")) } else { Ok(()) }),
        },
        Scenario { name: "exec-allowed", args: |_| v(&["sleep", "0"]), tracepoint: Outcome::Ok("ok slept"), lsm: Outcome::Ok("ok slept"), event: None, after: None },
        Scenario {
            name: "exec-denied",
            args: |c| v(&["execve", &s(&c.layout.outside.join("prog"))]),
            tracepoint: KILLED,
            lsm: EPERM,
            event: Some(("exec", "exec.allow")),
            after: None,
        },
        Scenario { name: "exec-memfd", args: |_| v(&["exec-memfd"]), tracepoint: KILLED, lsm: EPERM, event: Some(("exec", "exec.allow")), after: None },
        Scenario { name: "ptrace-syscall-denied", args: |_| v(&["ptrace"]), tracepoint: KILLED, lsm: KILLED, event: Some(("syscall", "syscalls.deny")), after: None },
        Scenario { name: "io-uring", args: |_| v(&["io_uring"]), tracepoint: KILLED, lsm: KILLED, event: Some(("syscall", "unseen")), after: None },
        Scenario { name: "unshare", args: |_| v(&["unshare-mnt"]), tracepoint: KILLED, lsm: KILLED, event: Some(("syscall", "unseen")), after: None },
        Scenario { name: "raw-socket", args: |_| v(&["raw"]), tracepoint: EPERM, lsm: EPERM, event: Some(("socket", "network.raw_sockets")), after: None },
        Scenario {
            name: "connect-allowed",
            args: |c| v(&["connect", &c.tcp_ok.local_addr().unwrap().to_string()]),
            tracepoint: Outcome::Ok("ok connected"),
            lsm: Outcome::Ok("ok connected"),
            event: None,
            after: None,
        },
        Scenario {
            name: "connect-denied",
            args: |c| v(&["connect", &c.tcp_bad.local_addr().unwrap().to_string()]),
            tracepoint: EPERM,
            lsm: EPERM,
            event: Some(("connect", "network.connect")),
            after: None,
        },
        Scenario {
            name: "connect6-denied",
            args: |c| match &c.tcp6_bad {
                Some(l) => v(&["connect", &l.local_addr().unwrap().to_string()]),
                None => v(&["connect", "[::1]:9"]),
            },
            tracepoint: EPERM,
            lsm: EPERM,
            event: Some(("connect", "network.connect")),
            after: None,
        },
        // A socket created outside the run and passed in: the cgroup programs judge sockets by
        // the cgroup that created them and never see it; the lsm backend's socket_connect does.
        Scenario {
            name: "connect-passed-socket",
            args: |c| v(&["connect-fd", &c.passed_socket.to_string(), &c.tcp_bad.local_addr().unwrap().to_string()]),
            tracepoint: Outcome::Ok("ok connected"),
            lsm: EPERM,
            event: None,
            after: None,
        },
        Scenario {
            name: "udp-denied",
            args: |c| v(&["udp", &c.udp_bad.local_addr().unwrap().to_string()]),
            tracepoint: EPERM,
            lsm: EPERM,
            event: Some(("sendmsg", "network.connect")),
            after: None,
        },
        // Self-protection: a run cannot signal a process outside it, load BPF or mount.
        Scenario {
            name: "signal-outside",
            args: |c| v(&["kill", &c.outside.id().to_string(), "0"]),
            tracepoint: Outcome::Ok("ok signalled"),
            lsm: EPERM,
            event: Some(("syscall", "self_protection")),
            after: None,
        },
        Scenario {
            name: "bpf-syscall",
            args: |_| v(&["bpf"]),
            tracepoint: KILLED,
            lsm: EPERM,
            event: Some(("syscall", "self_protection")),
            after: None,
        },
        // Leaving the run's cgroup: no policy allows it (tests/tests/escape.rs has the host's
        // longer checks). The open of cgroup.procs for writing is what is refused, so nothing
        // is written; a clone3 killed at its entry never makes the child.
        Scenario {
            name: "cgroup-join",
            args: |_| v(&["cgroup-join", &s(&crate::cgroup2_mount())]),
            tracepoint: KILLED,
            lsm: EPERM,
            event: Some(("open", "contain.cgroup")),
            after: None,
        },
        Scenario {
            name: "clone3-into-cgroup",
            args: |_| v(&["clone3-into", &s(&crate::cgroup2_mount())]),
            tracepoint: KILLED,
            lsm: KILLED,
            event: Some(("syscall", "contain.cgroup")),
            after: None,
        },
        // Another process's /proc files, although the policy reads /proc; its own are its.
        Scenario {
            name: "proc-other",
            args: |c| vec!["read".into(), format!("/proc/{}/cmdline", c.outside.id())],
            tracepoint: KILLED,
            lsm: EPERM,
            event: Some(("open", "contain.proc")),
            after: None,
        },
        Scenario { name: "proc-own", args: |_| v(&["read", "/proc/self/status"]), tracepoint: Outcome::Ok("ok Name"), lsm: Outcome::Ok("ok Name"), event: None, after: None },
        // A task (agent-guard task) under a policy narrower than the run's: the workspace the
        // run reads is refused to the task, by the task's own rule set in the kernel.
        Scenario {
            name: "task-narrower",
            args: |c| {
                let mut v = v(&["exec-argv", &s(&crate::binary()), "task", "--id", "sc-task", "--policy", &c.ws("narrow.toml"), "--", &s(&probe())]);
                v.extend(["read".to_string(), c.ws("ok.txt")]);
                v
            },
            tracepoint: KILLED,
            lsm: EPERM,
            event: Some(("open", "files.deny")),
            after: None,
        },
        Scenario { name: "task-same", args: |c| v(&["exec-argv", &s(&crate::binary()), "task", "--id", "sc-task2", "--", &s(&probe()), "read", &c.ws("ok.txt")]), tracepoint: Outcome::Ok("ok hello"), lsm: Outcome::Ok("ok hello"), event: None, after: None },
        // The tracepoint backend kills mount(2) as it returns: the mount was made (the hook
        // below removes it again).
        Scenario {
            name: "mount",
            args: |c| v(&["mount", &c.out("mnt")]),
            tracepoint: KILLED,
            lsm: KILLED,
            event: Some(("syscall", "unseen")),
            after: Some(|c, _| {
                let p = std::ffi::CString::new(c.out("mnt")).unwrap();
                // SAFETY: valid C string; fails harmlessly when nothing is mounted there.
                unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
                Ok(())
            }),
        },
        // Containment (tests/tests/containment.rs has the host's own, longer checks).
        Scenario {
            name: "unix-allowed",
            args: |c| v(&["unix-connect", &c.contain.path("allowed/ok.sock")]),
            tracepoint: Outcome::Ok("ok connected"),
            lsm: Outcome::Ok("ok connected"),
            event: None,
            after: None,
        },
        Scenario {
            name: "unix-denied",
            args: |c| v(&["unix-connect", &c.contain.path("bad.sock")]),
            tracepoint: EPERM,
            lsm: EPERM,
            event: Some(("connect", "network.unix")),
            after: None,
        },
        // Out of the allowed directory with `..`: the cgroup programs refuse any `..`, the lsm
        // hooks see the peer's resolved path.
        Scenario {
            name: "unix-dotdot",
            args: |c| v(&["unix-connect", &c.contain.path("allowed/../bad.sock")]),
            tracepoint: EPERM,
            lsm: EPERM,
            event: Some(("connect", "network.unix")),
            after: None,
        },
        Scenario {
            name: "unix-abstract-allowed",
            args: |c| vec!["unix-connect".into(), format!("@{}", c.contain.abstract_ok)],
            tracepoint: Outcome::Ok("ok connected"),
            lsm: Outcome::Ok("ok connected"),
            event: None,
            after: None,
        },
        Scenario {
            name: "unix-abstract-denied",
            args: |c| vec!["unix-connect".into(), format!("@{}", c.contain.abstract_bad)],
            tracepoint: EPERM,
            lsm: EPERM,
            event: Some(("connect", "network.unix")),
            after: None,
        },
        Scenario {
            name: "unix-dgram-denied",
            args: |c| v(&["unix-send", &c.contain.path("bad.dgram")]),
            tracepoint: EPERM,
            lsm: EPERM,
            event: Some(("sendmsg", "network.unix")),
            after: None,
        },
        Scenario { name: "family-packet", args: |_| v(&["socket", "17", "3", "0"]), tracepoint: KILLED, lsm: EPERM, event: Some(("socket", "network.families")), after: None },
        // High bits of the register: the kernel takes an int, and so do the checks.
        Scenario {
            name: "family-packet-high-bits",
            args: |_| v(&["socket", "0x100000011", "3", "0"]),
            tracepoint: KILLED,
            lsm: EPERM,
            event: Some(("socket", "network.families")),
            after: None,
        },
        Scenario { name: "family-vsock", args: |_| v(&["socket", "40", "1", "0"]), tracepoint: KILLED, lsm: EPERM, event: Some(("socket", "network.families")), after: None },
        Scenario { name: "family-tipc", args: |_| v(&["socket", "30", "2", "0"]), tracepoint: KILLED, lsm: EPERM, event: Some(("socket", "network.families")), after: None },
        Scenario { name: "netlink-audit", args: |_| v(&["socket", "16", "3", "9"]), tracepoint: KILLED, lsm: EPERM, event: Some(("socket", "network.families")), after: None },
        Scenario { name: "netlink-uevent", args: |_| v(&["socket", "16", "2", "15"]), tracepoint: KILLED, lsm: EPERM, event: Some(("socket", "network.families")), after: None },
        Scenario { name: "netlink-route", args: |_| v(&["netlink-route"]), tracepoint: Outcome::Ok("ok links"), lsm: Outcome::Ok("ok links"), event: None, after: None },
        Scenario { name: "socketpair-unix", args: |_| v(&["socketpair", "1", "1"]), tracepoint: Outcome::Ok("ok socketpair"), lsm: Outcome::Ok("ok socketpair"), event: None, after: None },
        Scenario {
            name: "listen-allowed",
            args: |c| vec!["listen".into(), format!("127.0.0.1:{}", c.contain.listen_ok)],
            tracepoint: Outcome::Ok("ok listening"),
            lsm: Outcome::Ok("ok listening"),
            event: None,
            after: None,
        },
        Scenario {
            name: "listen-denied",
            args: |c| vec!["listen".into(), format!("127.0.0.1:{}", c.contain.listen_bad)],
            tracepoint: EPERM,
            lsm: EPERM,
            event: Some(("bind", "network.listen")),
            after: None,
        },
        Scenario {
            name: "listen-any-address",
            args: |c| vec!["listen".into(), format!("0.0.0.0:{}", c.contain.listen_ok)],
            tracepoint: EPERM,
            lsm: EPERM,
            event: Some(("bind", "network.listen")),
            after: None,
        },
        // listen(2) without bind: an ephemeral port on every address.
        Scenario { name: "listen-unbound", args: |_| v(&["listen-unbound"]), tracepoint: KILLED, lsm: EPERM, event: Some(("bind", "network.listen")), after: None },
        // A client's bind to port 0 (the kernel picks the port) is not serving.
        Scenario { name: "bind-port-zero", args: |_| v(&["bind-udp", "127.0.0.1:0"]), tracepoint: Outcome::Ok("ok bound"), lsm: Outcome::Ok("ok bound"), event: None, after: None },
    ]
}

/// The suite's policy (see the module comment).
fn policy(l: &Layout, net: &[String], contain: &Contain) -> PolicyFile {
    // The workspace's run may start agent-guard (a task scenario).
    let exec: Vec<std::path::PathBuf> = vec![crate::binary()];
    PolicyFile::for_workspace("scenarios", l)
        .exec(exec)
        .deny([l.ws.join("out/locked")])
        .connect(net)
        .unix([format!("{}/allowed/", contain.dir.display()), format!("@{}", contain.abstract_ok)])
        .listen([format!("127.0.0.1:{}", contain.listen_ok)])
        .syscalls_deny(["ptrace"])
        // The capabilities root needs to get as far as the layers under test (a raw socket,
        // bpf(), mount): without them the kernel's own capability checks refuse first.
        .capabilities(["CAP_NET_RAW", "CAP_BPF", "CAP_SYS_ADMIN"])
}

/// Starts a daemon with `backend` forced and lays out the workspace.
pub fn setup(backend: Backend) -> Ctx {
    let daemon = Daemon::start_with(&format!("backend = \"{}\"\nlandlock = false\nseccomp = false", backend.name()));
    let layout = layout();
    let secret = s(&layout.outside.join("secret.txt"));
    std::os::unix::fs::symlink(&secret, layout.ws.join("link")).unwrap();
    let locked = layout.ws.join("out/locked");
    std::fs::create_dir_all(&locked).unwrap();
    for f in ["trunc-open.txt", "trunc.txt", "unlink.txt", "rename.txt", "link.txt"] {
        std::fs::write(locked.join(f), "LOCKED\n").unwrap();
    }
    std::fs::copy(probe(), layout.outside.join("prog")).unwrap();
    std::fs::create_dir_all(layout.ws.join("out/mnt")).unwrap();
    std::fs::write(layout.ws.join("ro.txt"), "READONLY\n").unwrap();
    // A task's policy that lets the probe start and nothing of the workspace.
    PolicyFile::for_probe("narrow").write_as(&layout.ws.join("narrow.toml"));
    let tcp_ok = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_bad = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp6_ok = TcpListener::bind("[::1]:0").ok();
    let tcp6_bad = TcpListener::bind("[::1]:0").ok();
    let udp_ok = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_bad = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    let mut net = vec![format!("127.0.0.1/32:{}", port(&tcp_ok)), format!("127.0.0.1:{}", udp_ok.local_addr().unwrap().port())];
    if let Some(l) = &tcp6_ok {
        net.push(format!("[::1]/128:{}", port(l)));
    }
    let contain = Contain::new(layout.tmp.path().join("sock"));
    let policy = policy(&layout, &net, &contain).write_to(daemon.dir.path());
    // SAFETY: plain socket(2), without SOCK_CLOEXEC so that runs inherit it.
    let passed_socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(passed_socket >= 0, "socket: {}", std::io::Error::last_os_error());
    let outside = Command::new(probe()).args(["sleep", "600"]).stdout(Stdio::null()).spawn().unwrap();
    let unix_judged = status_action(&daemon, "unix-connect").is_some_and(|a| a != "none");
    Ctx { daemon, layout, policy, secret, outside, tcp_ok, tcp_bad, tcp6_ok, tcp6_bad, udp_ok, udp_bad, passed_socket, contain, unix_judged }
}

/// Runs one scenario; Err says how the observed behaviour differs from the expected one.
pub fn run_one(c: &Ctx, sc: &Scenario, backend: Backend) -> Result<(), String> {
    let args = (sc.args)(c);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut want = sc.expect(backend);
    // Not judged here (the status says `none`): the operation goes through.
    if !c.unix_judged && sc.event.is_some_and(|(_, rule)| rule == "network.unix") {
        want = Outcome::Ok("ok");
    }
    let o = c.daemon.probe_run(&c.policy, sc.name, &args);
    if !want.matches(&o) {
        return Err(format!(
            "expected {want:?}, got status {} stdout {:?} stderr {:?}",
            status(&o),
            stdout(&o).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    if let Some(after) = sc.after {
        after(c, backend)?;
    }
    match (sc.event, want) {
        (Some((kind, rule)), Outcome::Killed | Outcome::Err("EPERM")) => {
            let e = wait_event(&c.daemon, sc.name, kind, Duration::from_secs(10))
                .ok_or_else(|| format!("no {kind} event with a violation for run {}", sc.name))?;
            let got = (e["verdict"].as_str().unwrap_or(""), e["rule"].as_str().unwrap_or(""), e["hook"].as_str().unwrap_or(""));
            // A bind event of listen(2) (`op: listen`) comes from the backend's own hook.
            let hook = hook(if e["op"] == "listen" { "listen" } else { kind }, rule, want, backend);
            // Unix peers: the cgroup unix programs (6.7+) refuse first; older kernels have
            // only the lsm hooks.
            let hook = if rule == "network.unix" && backend.hooks() && got.2 == "lsm" { "lsm" } else { hook };
            if got != (want.verdict(), rule, hook) || e["layer"] != "ebpf" {
                return Err(format!("event: expected verdict {} rule {rule} layer ebpf hook {hook}, got {e}", want.verdict()));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The hook an event of `kind` with outcome `want` names on `backend`: network refusals are
/// the cgroup programs' on every backend, kills of syscalls the raw tracepoint's, and the
/// rest the backend's own.
fn hook(kind: &str, rule: &str, want: Outcome, backend: Backend) -> &'static str {
    // Socket families and listen(2): the backend's own hooks (no cgroup hook sees them).
    if rule == "network.families" || kind == "listen" {
        return if backend.hooks() { "lsm" } else { "tracepoint" };
    }
    match (kind, want, backend) {
        ("bind", _, _) => "cgroup",
        ("connect" | "sendmsg" | "socket", _, _) => "cgroup",
        ("syscall", Outcome::Killed, _) => "tracepoint",
        (_, _, Backend::Lsm | Backend::Trampoline) => "lsm",
        (_, _, Backend::Tracepoint) => "tracepoint",
    }
}

/// The first event of `kind` of the run named `name` whose verdict is not allow.
fn wait_event(d: &Daemon, name: &str, kind: &str, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = d.events().into_iter().find(|e| e["run_name"] == name && e["kind"] == kind && e["verdict"] != "allow");
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The action `status --json` gives for `operation`.
fn status_action(d: &Daemon, operation: &str) -> Option<String> {
    let o = d.cli(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    v["enforcement"].as_array()?.iter().find(|r| r["operation"] == operation)?["action"].as_str().map(str::to_string)
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// `agent-guard status --json` names `backend` and lists what it does per operation.
fn status_names(d: &Daemon, backend: Backend) -> Result<(), String> {
    let o = d.cli(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("status --json: {e}: {o:?}"))?;
    if v["backend"] != backend.name() {
        return Err(format!("status says backend {}, not {}", v["backend"], backend.name()));
    }
    if !v["backend_reason"].is_string() {
        return Err(format!("status gives no reason for the backend: {v}"));
    }
    let ops = v["enforcement"].as_array().map_or(0, Vec::len);
    if ops != 16 {
        return Err(format!("status lists {ops} operations, not 16: {}", v["enforcement"]));
    }
    // Unix peers are judged by the hooks (lsm, trampoline) and by the cgroup unix programs
    // (6.7+); only the tracepoint backend before 6.7 says `none`.
    let unix = status_action(d, "unix-connect").unwrap_or_default();
    let judged = backend.hooks() || kernel_at_least(6, 7);
    if (unix != "none") != judged {
        return Err(format!("status says unix-connect {unix:?} for {} on this kernel (judged: {judged})", backend.name()));
    }
    let want = format!("agent_guard_backend_info{{backend=\"{}\"}} 1", backend.name());
    let scrape = metrics(d)?;
    if !scrape.lines().any(|l| l == want) {
        return Err(format!("no `{want}` in the metrics:\n{scrape}"));
    }
    // One coverage series per row of the table, 0 exactly where it says `none`.
    for row in v["enforcement"].as_array().into_iter().flatten() {
        let (op, action) = (row["operation"].as_str().unwrap_or(""), row["action"].as_str().unwrap_or(""));
        let want = format!("agent_guard_coverage{{action=\"{action}\",operation=\"{op}\"}} {}", (action != "none") as u8);
        if !scrape.lines().any(|l| l == want) {
            return Err(format!("no `{want}` in the metrics:\n{scrape}"));
        }
    }
    Ok(())
}

/// While a run exists, the backend's own programs are attached and no other's: lsm and
/// trampoline attach their 19 hook programs (`lsm-*`, `fmr-*` links) and no open or exec
/// syscall tracepoint (the hooks decide those); tracepoint attaches the open tracepoints and
/// no hook program.
fn backend_programs(c: &Ctx, backend: Backend) -> Result<(), String> {
    let probe = probe();
    let policy = s(&c.policy);
    let _run = c.daemon.spawn_run(&["--policy", &policy, "--name", "sc-links", "--", &s(&probe), "sleep", "30"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.daemon.events().iter().any(|e| e["kind"] == "run_start" && e["run_name"] == "sc-links") {
        if Instant::now() > deadline {
            return Err("the run sc-links did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let links = c.daemon.pinned_links();
    let count = |prefix: &str| links.iter().filter(|l| l.starts_with(prefix)).count();
    let open_tps: Vec<&String> = links
        .iter()
        .filter(|l| ["openat", "open", "creat", "openat2", "execve", "execveat"].iter().any(|s| l.ends_with(&format!("_{s}")) && l.starts_with("tp-ag_")))
        .collect();
    let want = match backend {
        Backend::Lsm => (19, 0, false),
        Backend::Trampoline => (0, 19, false),
        Backend::Tracepoint => (0, 0, true),
    };
    let got = (count("lsm-"), count("fmr-"), links.iter().any(|l| l == "tp-ag_exit_openat"));
    if got != want || (backend.hooks() && !open_tps.is_empty()) {
        return Err(format!(
            "{} backend: expected (lsm links, fmod_ret links, open tracepoint) {want:?}, got {got:?}; open/exec tracepoints \
             {open_tps:?}; links {links:?}",
            backend.name()
        ));
    }
    Ok(())
}

/// `status` of a daemon with `backend = "auto"` that picked `auto` names why each better
/// backend was refused.
fn auto_reason(d: &Daemon, auto: Backend) -> Result<(), String> {
    let o = d.cli(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("status --json: {e}: {o:?}"))?;
    let reason = v["backend_reason"].as_str().unwrap_or_default();
    let want: &[&str] = match auto {
        Backend::Lsm => &["auto: BPF LSM is active"],
        Backend::Trampoline => &["lsm refused (", "fmod_ret programs on the security_* functions attached"],
        Backend::Tracepoint => &["lsm refused (", "trampoline refused ("],
    };
    match want.iter().find(|w| !reason.contains(*w)) {
        Some(missing) => Err(format!("auto picked {}, but its reason lacks {missing:?}: {reason}", auto.name())),
        None => Ok(()),
    }
}

/// A scrape of the daemon's metrics (the address it printed at start).
fn metrics(d: &Daemon) -> Result<String, String> {
    use std::io::{Read, Write};
    let err = d.stderr();
    let addr = err
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split("/metrics").next())
        .ok_or_else(|| format!("the daemon did not say where its metrics are:\n{err}"))?;
    let mut c = std::net::TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(c, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut body = String::new();
    c.read_to_string(&mut body).map_err(|e| format!("reading the metrics: {e}"))?;
    Ok(body)
}

/// Runs the suite (the scenarios named in `only`, or all), printing one line per scenario:
/// `AGSCENARIO pass NAME` or `AGSCENARIO FAIL NAME: why`, then `AGSCENARIOS done ...`.
/// `auto`: the backend `backend = "auto"` must pick on this kernel. Returns the names of the
/// failed scenarios.
pub fn run_suite(backend: Backend, auto: Backend, only: &[String]) -> Vec<String> {
    let c = setup(backend);
    let mut failed = Vec::new();
    let mut passed = 0;
    // The daemon says which backend it runs, in `status` and in the backend_info metric.
    match status_names(&c.daemon, backend) {
        Ok(()) => {
            passed += 1;
            println!("AGSCENARIO pass status-backend");
        }
        Err(why) => {
            println!("AGSCENARIO FAIL status-backend: {why}");
            failed.push("status-backend".to_string());
        }
    }
    type Check<'a> = Box<dyn Fn() -> Result<(), String> + 'a>;
    let tripwires: [(&str, Check); 4] = [
        ("backend-programs", Box::new(|| backend_programs(&c, backend))),
        ("tripwire-decoy-read", Box::new(|| crate::scenarios_tripwires::decoy_read(&c, backend))),
        ("tripwire-connect-budget", Box::new(|| crate::scenarios_tripwires::connect_budget(&c))),
        ("dns-names", Box::new(|| crate::scenarios_dns::names(backend))),
    ];
    for (name, check) in tripwires.iter().filter(|(n, _)| only.is_empty() || only.iter().any(|o| o == n)) {
        match check() {
            Ok(()) => {
                passed += 1;
                println!("AGSCENARIO pass {name}");
            }
            Err(why) => {
                println!("AGSCENARIO FAIL {name}: {why}");
                failed.push(name.to_string());
            }
        }
    }
    for sc in scenarios().iter().filter(|sc| only.is_empty() || only.iter().any(|o| o == sc.name)) {
        let t = Instant::now();
        match run_one(&c, sc, backend) {
            Ok(()) => {
                passed += 1;
                println!("AGSCENARIO pass {} ({} ms)", sc.name, t.elapsed().as_millis());
            }
            Err(why) => {
                println!("AGSCENARIO FAIL {}: {why}", sc.name);
                failed.push(sc.name.to_string());
            }
        }
    }
    // backend = "auto" picks lsm in the VMs booted with bpf in lsm=, trampoline in those booted
    // without it (the stock distribution boot), and tracepoint on the development machines,
    // whose kernel lists bpf but refuses its programs and trampolines: it says why each better
    // backend was refused.
    let auto_daemon = Daemon::start_with("backend = \"auto\"\nlandlock = false\nseccomp = false");
    match status_names(&auto_daemon, auto).and_then(|()| auto_reason(&auto_daemon, auto)) {
        Ok(()) => {
            passed += 1;
            println!("AGSCENARIO pass status-auto");
        }
        Err(why) => {
            println!("AGSCENARIO FAIL status-auto: {why}");
            failed.push("status-auto".to_string());
        }
    }
    drop(auto_daemon);
    println!("AGSCENARIOS done backend={} passed={passed} failed={}", backend.name(), failed.len());
    if !failed.is_empty() {
        println!("daemon stderr:\n{}", c.daemon.stderr());
    }
    failed
}
