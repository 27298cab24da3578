//! Containment, continued (issue "nothing leaves a run"): leaving the run's cgroup, reading
//! other processes' /proc files, a cgroup below the managed root that no run registered, and
//! the enforcement's own state (bpf(), agent-guard's paths). Real attacks from real runs on
//! this host's kernel (tracepoint backend; the VM matrix runs the scenarios against lsm), as
//! root inside the run and as an unprivileged user; each outcome is checked on the kernel's
//! side (the process did not move, nothing was read), not only on what the probe printed.
//!
//! On the tracepoint backend an open is judged at the syscall's exit: an open the Landlock
//! layer let through (these policies grant the trees on purpose) is answered with SIGKILL
//! before the process sees the descriptor. The lsm backend refuses it with EPERM.

use agent_guard_tests::{cgroup_procs, probe_in, require_root, status, stdout, Daemon, PolicyFile, TestCgroup};
use serde_json::Value;

const KILLED: i32 = 128 + 9;

fn said(o: &std::process::Output) -> String {
    stdout(o).trim().to_string()
}

/// Refused: killed at the syscall's exit (tracepoint) or refused with an errno (ESRCH: procfs
/// answers an `environ` open that its ptrace check refused so).
fn refused(o: &std::process::Output) -> bool {
    killed(o) || ["err EPERM", "err EACCES", "err ENOSYS", "err errno3"].contains(&said(o).as_str())
}

/// Killed by SIGKILL (a run's process: `agent-guard run` exits 128+9; a bare one: the signal).
fn killed(o: &std::process::Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status(o) == KILLED || o.status.signal() == Some(9)
}

fn event(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    d.wait_for(what, &pred).into_iter().find(|e| pred(e)).unwrap()
}

/// Class 1: a process of a run writes its pid into another cgroup's `cgroup.procs`, or starts
/// a child there with clone3(CLONE_INTO_CGROUP). The policy even grants writing the cgroup
/// filesystem: no policy can allow leaving the run.
#[test]
fn leaving_the_run_cgroup_is_refused() {
    require_root!();
    for seccomp in [true, false] {
        let d = Daemon::start_with(if seccomp { "" } else { "seccomp = false" });
        let target = TestCgroup::create(if seccomp { "ag-escape-a" } else { "ag-escape-b" });
        let t = target.0.display().to_string();
        let policy = PolicyFile::for_probe("escape")
            .read(["/sys/fs/cgroup"])
            .write(["/sys/fs/cgroup"])
            .capabilities(["CAP_SETUID", "CAP_SETGID"])
            .write_to(d.dir.path());
        for user in [false, true] {
            let who = if user { "user" } else { "root" };
            let mut join = vec!["cgroup-join", t.as_str()];
            let mut clone = vec!["clone3-into", t.as_str()];
            if user {
                join.splice(0..0, ["as-user", "65534"]);
                clone.splice(0..0, ["as-user", "65534"]);
            }
            let o = d.probe_run(&policy, &format!("join-{who}"), &join);
            assert!(refused(&o), "seccomp={seccomp} {who}: cgroup.procs write not refused: {o:?}");
            let o = d.probe_run(&policy, &format!("clone3-{who}"), &clone);
            assert!(refused(&o), "seccomp={seccomp} {who}: clone3(CLONE_INTO_CGROUP) not refused: {o:?}");
            assert_eq!(cgroup_procs(&target.0), Vec::<u32>::new(), "a process of the run reached {t}");
        }
        // As root the open of cgroup.procs itself is what the kernel programs refuse.
        let e = event(&d, "contain.cgroup refusal of join-root", |e| e["run_name"] == "join-root" && e["kind"] == "open" && e["verdict"] != "allow");
        assert_eq!(e["rule"], "contain.cgroup", "{e}");
        if !seccomp {
            // Without the launcher's seccomp filter (which answers clone3 with ENOSYS) the
            // eBPF check sees the flag.
            let e = event(&d, "clone3 refusal", |e| e["run_name"] == "clone3-root" && e["kind"] == "syscall" && e["verdict"] != "allow");
            assert_eq!(e["rule"], "contain.cgroup", "{e}");
        }
        // The same write from outside every run works: only runs are held.
        let o = probe_in(&target.0, &["read", "/proc/self/cgroup"]);
        assert!(said(&o).contains(&target.name()), "{o:?}");
    }
}

/// Class 1, the backstop: a process of a run that ends up outside it anyway (here through a
/// descriptor of another cgroup's `cgroup.procs` it inherited from outside the run, which no
/// open check sees) is found by the daemon's scan, moved back into its run and killed there,
/// and reported.
#[test]
fn a_process_found_outside_its_run_is_brought_back_and_killed() {
    require_root!();
    let d = Daemon::start();
    let target = TestCgroup::create("ag-escape-fd");
    let procs = std::ffi::CString::new(target.0.join("cgroup.procs").to_str().unwrap()).unwrap();
    // SAFETY: a plain open without O_CLOEXEC: the run inherits it.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    let policy = PolicyFile::for_probe("leak").write_to(d.dir.path());
    let fds = fd.to_string();
    let t = std::time::Instant::now();
    let o = d.probe_run(&policy, "leaked-fd", &["write-fd", &fds, "0", "30"]);
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    assert!(killed(&o), "{o:?}");
    assert!(said(&o).starts_with("ok wrote"), "the write itself went through: {o:?}");
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "killed by the scan, not at the end of its sleep");
    let e = event(&d, "contain.cgroup kill", |e| e["run_name"] == "leaked-fd" && e["kind"] == "kill" && e["rule"] == "contain.cgroup");
    assert_eq!(e["verdict"], "kill", "{e}");
    assert_eq!(e["cgroup"], format!("/{}", target.name()), "where it was found: {e}");
    assert_eq!(cgroup_procs(&target.0), Vec::<u32>::new());
}

/// Class 8: /proc/PID files of a process outside the run, although the policy grants /proc.
#[test]
fn other_processes_proc_files_are_refused() {
    require_root!();
    let d = Daemon::start();
    use std::os::unix::process::CommandExt;
    let mut other = std::process::Command::new("sleep")
        .arg0("ag-marker-cmdline")
        .arg("30")
        .env("AG_SECRET", "hunter2-environ")
        .spawn()
        .unwrap();
    let pid = other.id();
    let policy = PolicyFile::for_probe("procs").capabilities(["CAP_SETUID", "CAP_SETGID"]).write_to(d.dir.path());
    for user in [false, true] {
        for f in ["cmdline", "environ", "status", "maps", "stat"] {
            let name = format!("proc-{f}-{}", if user { "user" } else { "root" });
            let path = format!("/proc/{pid}/{f}");
            let mut args = vec!["read", path.as_str()];
            if user {
                args.splice(0..0, ["as-user", "65534"]);
            }
            let o = d.probe_run(&policy, &name, &args);
            assert!(refused(&o), "{name}: {o:?}");
            let out = stdout(&o);
            assert!(!out.contains("ag-marker") && !out.contains("hunter2") && !out.contains("sleep"), "{name} read it: {out}");
        }
    }
    let e = event(&d, "contain.proc refusal", |e| e["run_name"] == "proc-cmdline-root" && e["kind"] == "open" && e["verdict"] != "allow");
    assert_eq!(e["rule"], "contain.proc", "{e}");
    // Its own process is the run's: readable.
    for f in ["/proc/self/cmdline", "/proc/self/status", "/proc/thread-self/comm", "/proc/meminfo"] {
        let o = d.probe_run(&policy, "proc-own", &["read", f]);
        assert!(said(&o).starts_with("ok"), "{f}: {o:?}");
    }
    // Outside every run it stays readable.
    let o = std::process::Command::new(agent_guard_tests::probe()).args(["read", &format!("/proc/{pid}/cmdline")]).output().unwrap();
    assert!(said(&o).contains("ag-marker"), "{o:?}");
    other.kill().unwrap();
    other.wait().unwrap();
}

/// Class 7: a cgroup made by hand below the managed root is no run: a process put there is
/// refused everything (here: its exec, and every open), and the event says why.
#[test]
fn a_cgroup_no_run_registered_is_refused_everything() {
    require_root!();
    let d = Daemon::start();
    let hand = d.cgroup_root.join("handmade");
    std::fs::create_dir(&hand).unwrap();
    let o = probe_in(&hand, &["read", "/etc/hostname"]);
    assert!(killed(&o), "{o:?}");
    let e = event(&d, "contain.unregistered refusal", |e| e["rule"] == "contain.unregistered");
    assert_ne!(e["verdict"], "allow", "{e}");
    let _ = std::fs::remove_dir(&hand);
}

/// Class 5: bpf() from a run, even with every capability it needs, is refused before it runs
/// (the seccomp filter of `agent-guard run`, or the eBPF check) and reported as self-protection.
#[test]
fn bpf_is_refused_in_runs() {
    require_root!();
    for seccomp in [true, false] {
        let d = Daemon::start_with(if seccomp { "" } else { "seccomp = false" });
        let policy =
            PolicyFile::for_probe("nobpf").capabilities(["CAP_BPF", "CAP_SYS_ADMIN", "CAP_PERFMON"]).write_to(d.dir.path());
        let o = d.probe_run(&policy, "bpf", &["bpf"]);
        assert!(refused(&o), "seccomp={seccomp}: {o:?}");
        let e = event(&d, "bpf refusal", |e| e["run_name"] == "bpf" && e["kind"] == "syscall" && e["verdict"] != "allow");
        assert_eq!(e["rule"], "self_protection", "{e}");
        // Outside every run bpf() works (the test runs as root).
        let o = std::process::Command::new(agent_guard_tests::probe()).arg("bpf").output().unwrap();
        assert_eq!(said(&o), "ok bpf map", "{o:?}");
    }
}

/// Class 5: agent-guard's own state (its pins, state and data directories, events log,
/// configuration, policy directory) stays out of a run's reach although the policy grants the
/// trees that hold them: reads, writes and unlinks are refused, and nothing changed.
#[test]
fn agent_guard_state_is_out_of_reach() {
    require_root!();
    let d = Daemon::start();
    let base = d.dir.path().parent().unwrap().display().to_string();
    assert!(base.starts_with("/run/"), "the test daemon's directory is not below /run: {base}");
    let policy = PolicyFile::for_probe("reach")
        .read([base.as_str(), "/sys/fs/bpf"])
        .write([base.as_str(), "/sys/fs/bpf"])
        .capabilities(["CAP_SETUID", "CAP_SETGID"])
        .write_to(d.dir.path());
    let pin = walk_files(&d.bpffs_dir).into_iter().next().expect("a pinned file");
    let dir = d.dir.path();
    let (log, config, state) = (dir.join("events.jsonl"), dir.join("config.toml"), dir.join("state/planted"));
    let s = |p: &std::path::Path| p.display().to_string();
    for user in [false, true] {
        let who = if user { "user" } else { "root" };
        for (what, args) in [
            ("log", vec!["read".to_string(), s(&log)]),
            ("config", vec!["read".into(), s(&config)]),
            ("state", vec!["write".into(), s(&state)]),
            ("pin", vec!["unlink".into(), s(&pin)]),
        ] {
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            if user {
                args.splice(0..0, ["as-user", "65534"]);
            }
            let o = d.probe_run(&policy, &format!("reach-{what}-{who}"), &args);
            assert!(refused(&o), "{what} as {who}: {o:?}");
            assert!(!stdout(&o).contains("run_name"), "{what} as {who}: read the log: {o:?}");
        }
    }
    assert!(pin.exists() && !state.exists(), "the run changed agent-guard's state");
    let e = event(&d, "refused read of the events log", |e| e["run_name"] == "reach-log-root" && e["verdict"] != "allow");
    assert_eq!(e["rule"], "files.deny", "{e}");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
