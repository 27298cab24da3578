//! Policies enforced by the real kernel programs on real processes (tracepoint backend).
//!
//! Each test starts its own daemon, lays out a workspace with an allowed file, a denied
//! file and a secret outside every rule, and runs tests/src/bin/agprobe.rs inside runs.
//! What the process observes is asserted from its exit status and output (SIGKILL: status
//! 137 and nothing printed after the operation; EPERM: "err EPERM"), and what the kernel
//! decided from the events. The daemons here run with `landlock = false`: these tests are
//! about the eBPF layer alone, as it enforces bound cgroups and backs up the Landlock layer
//! of launched runs (tests/tests/landlock.rs).
use std::net::{TcpListener, UdpSocket};

use agent_guard_tests::{layout, probe, probe_in, require_root, run_id, s, status, stdout, Daemon, Layout, PolicyFile, TestCgroup};
use serde_json::Value;

const KILLED: i32 = 128 + 9;
/// No Landlock layer or seccomp filter under `agent-guard run`: the eBPF programs decide alone.
const EBPF_ONLY: &str = "landlock = false\nseccomp = false";

/// A policy that lets the probe start (its libraries, /proc) and allows `ws`.
fn policy(name: &str, l: &Layout) -> PolicyFile {
    PolicyFile::for_workspace(name, l).syscalls_deny(["ptrace"])
}

/// The first event of `kind` of the run named `name` that matches `pred`.
fn event_of(d: &Daemon, name: &str, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let events = d.wait_for(&format!("{kind} of {name}"), |e| {
        e["run_name"] == name && e["kind"] == kind && pred(e)
    });
    events.into_iter().find(|e| e["run_name"] == name && e["kind"] == kind && pred(e)).unwrap()
}

#[test]
fn files_allowed_denied_and_bypass_attempts() {
    require_root!();
    let d = Daemon::start_with(EBPF_ONLY);
    let l = layout();
    let pol = policy("files", &l).write_to(d.dir.path());
    let secret = s(&l.outside.join("secret.txt"));

    // Allowed read: content printed, open allowed.
    let o = d.probe_run(&pol, "ok", &["read", &s(&l.ws.join("ok.txt"))]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok hello"), "{o:?}");
    let e = event_of(&d, "ok", "open", |e| e["path"] == s(&l.ws.join("ok.txt")));
    assert_eq!(e["verdict"], "allow");
    assert_eq!(e["policy"], "files");
    assert!(e["policy_version"].as_str().unwrap().starts_with("sha256:"));

    // Denied read, and every way around it: killed before the content is returned; the
    // event names the path the kernel resolved.
    let target = l.ws.join("link");
    std::os::unix::fs::symlink(&secret, &target).unwrap();
    let attempts: Vec<(&str, Vec<String>)> = vec![
        ("direct", vec!["read".into(), secret.clone()]),
        ("symlink", vec!["read".into(), s(&target)]),
        ("dotdot", vec!["read".into(), format!("{}/../outside/secret.txt", s(&l.ws))]),
        ("relative", vec!["read-rel".into(), s(&l.outside), "secret.txt".into()]),
        ("dirfd", vec!["read-at".into(), s(&l.ws), "../outside/secret.txt".into()]),
        ("procfd", vec!["read-procfd".into(), secret.clone()]),
        ("openat2", vec!["read-openat2".into(), secret.clone()]),
    ];
    for (name, args) in &attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = d.probe_run(&pol, name, &args);
        assert_eq!(status(&o), KILLED, "{name}: {o:?}");
        assert!(!stdout(&o).contains("TOPSECRET"), "{name}: content leaked: {o:?}");
        let e = event_of(&d, name, "open", |e| e["verdict"] != "allow");
        assert_eq!((e["verdict"].as_str(), e["rule"].as_str()), (Some("kill"), Some("files.read")), "{name}: {e}");
        assert_eq!(e["path"], secret.as_str(), "{name}: {e}");
    }

    // A pipe reopened through /proc/self/fd (`cat /dev/stdin`, bash's <(...)) is not a file
    // in the tree: allowed, whatever the rules on "/" say.
    let mut child = std::process::Command::new(agent_guard_tests::binary())
        .args(["--config", d.config.to_str().unwrap(), "run", "--policy", pol.to_str().unwrap(), "--name", "pipe", "--"])
        .arg(probe())
        .args(["read", "/proc/self/fd/0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"through a pipe\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok through a pipe"), "{o:?}");

    // A deny rule inside an allowed tree.
    let o = d.probe_run(&pol, "env", &["read", &s(&l.ws.join(".env"))]);
    assert_eq!(status(&o), KILLED, "{o:?}");
    assert!(!stdout(&o).contains("envsecret"));
    let e = event_of(&d, "env", "open", |e| e["verdict"] != "allow");
    assert_eq!(e["rule"], "files.deny");

    // Writes: allowed below out/; elsewhere (ws is read-only) killed at the open's exit (the
    // file may already be created or truncated by then: `run`'s Landlock layer refuses such
    // writes before they happen, see tests/tests/landlock.rs).
    let o = d.probe_run(&pol, "w-ok", &["write", &s(&l.ws.join("out/new.txt"))]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok"), "{o:?}");
    let o = d.probe_run(&pol, "w-bad", &["write", &s(&l.ws.join("new.txt"))]);
    assert_eq!(status(&o), KILLED, "{o:?}");
    let e = event_of(&d, "w-bad", "open", |e| e["verdict"] != "allow");
    assert_eq!((e["verdict"].as_str(), e["rule"].as_str(), e["layer"].as_str()), (Some("kill"), Some("files.write"), Some("ebpf")));

    // Hard links: creating one inside a run is refused (the link syscall is one this
    // backend cannot judge); one made outside the run is a second name, and the path model
    // decides on names: it is readable through the allowed name.
    let o = d.probe_run(&pol, "hardlink", &["link", &secret, &s(&l.ws.join("hl"))]);
    assert_eq!(status(&o), KILLED, "{o:?}");
    let e = event_of(&d, "hardlink", "syscall", |_| true);
    assert_eq!((e["rule"].as_str(), e["name"].as_str()), (Some("unseen"), Some("link")), "{e}");
}

#[test]
fn exec_syscalls_and_unseen_operations() {
    require_root!();
    // Syscalls are the eBPF check's here (tests/tests/seccomp.rs has the launcher's filter).
    let d = Daemon::start_with("seccomp = false");
    let l = layout();
    let pol = policy("exec", &l).write_to(d.dir.path());

    // The probe is allowed; /usr/bin/true is not, and never runs.
    let o = d.run(&["--policy", pol.to_str().unwrap(), "--name", "true", "--", "/usr/bin/true"]);
    assert_eq!(status(&o), KILLED, "{o:?}");
    let e = event_of(&d, "true", "exec", |_| true);
    assert_eq!((e["verdict"].as_str(), e["rule"].as_str(), e["path"].as_str()), (Some("kill"), Some("exec.allow"), Some("/usr/bin/true")));
    let o = d.probe_run(&pol, "probe", &["sleep", "0"]);
    assert_eq!(status(&o), 0, "{o:?}");
    assert_eq!(event_of(&d, "probe", "exec", |_| true)["verdict"], "allow");

    for (name, args, rule, syscall) in [
        ("ptrace", vec!["ptrace"], "syscalls.deny", "ptrace"),
        ("uring", vec!["io_uring"], "unseen", "io_uring_setup"),
        ("userns", vec!["unshare-mnt"], "unseen", "unshare"),
    ] {
        let o = d.probe_run(&pol, name, &args);
        assert_eq!(status(&o), KILLED, "{name}: {o:?}");
        let e = event_of(&d, name, "syscall", |_| true);
        assert_eq!((e["verdict"].as_str(), e["rule"].as_str(), e["name"].as_str()), (Some("kill"), Some(rule), Some(syscall)), "{e}");
    }

    // Raw sockets: refused with EPERM by the cgroup sock_create program.
    let o = d.probe_run(&pol, "raw", &["raw"]);
    assert_eq!((status(&o), stdout(&o).trim()), (1, "err EPERM"), "{o:?}");
    let e = event_of(&d, "raw", "socket", |_| true);
    assert_eq!((e["verdict"].as_str(), e["rule"].as_str()), (Some("deny"), Some("network.raw_sockets")));
}

#[test]
fn network_connect_and_udp_on_loopback() {
    require_root!();
    let d = Daemon::start_with(EBPF_ONLY);
    let l = layout();
    let ok4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let bad4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let ok6 = TcpListener::bind("[::1]:0").unwrap();
    let bad6 = TcpListener::bind("[::1]:0").unwrap();
    let udp_ok = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_bad = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = |a: std::io::Result<std::net::SocketAddr>| a.unwrap().port();
    let (p_ok4, p_bad4, p_ok6, p_bad6) = (port(ok4.local_addr()), port(bad4.local_addr()), port(ok6.local_addr()), port(bad6.local_addr()));
    let (u_ok, u_bad) = (port(udp_ok.local_addr()), port(udp_bad.local_addr()));
    let net = vec![
        format!("127.0.0.1/32:{p_ok4}"),
        format!("127.0.0.1:{u_ok}"),
        format!("[::1]/128:{p_ok6}"),
    ];
    let pol = policy("net", &l).connect(&net).write_to(d.dir.path());
    let cases = [
        ("v4-ok", "connect", format!("127.0.0.1:{p_ok4}"), "ok connected"),
        ("v4-bad", "connect", format!("127.0.0.1:{p_bad4}"), "err EPERM"),
        ("v6-ok", "connect", format!("[::1]:{p_ok6}"), "ok connected"),
        ("v6-bad", "connect", format!("[::1]:{p_bad6}"), "err EPERM"),
        ("mapped-ok", "connect", format!("[::ffff:127.0.0.1]:{p_ok4}"), "ok connected"),
        ("mapped-bad", "connect", format!("[::ffff:127.0.0.1]:{p_bad4}"), "err EPERM"),
        ("udp-ok", "udp", format!("127.0.0.1:{u_ok}"), "ok sent 4"),
        ("udp-bad", "udp", format!("127.0.0.1:{u_bad}"), "err EPERM"),
    ];
    for (name, op, addr, want) in &cases {
        let o = d.probe_run(&pol, name, &[op, addr]);
        assert_eq!(stdout(&o).trim(), *want, "{name}: {o:?}\n{}", d.stderr());
    }
    for name in ["v4-bad", "v6-bad", "mapped-bad"] {
        let e = event_of(&d, name, "connect", |_| true);
        assert_eq!((e["verdict"].as_str(), e["rule"].as_str(), e["error"].as_str()), (Some("deny"), Some("network.connect"), Some("EPERM")), "{e}");
    }
    let e = event_of(&d, "mapped-bad", "connect", |_| true);
    assert_eq!(e["port"], p_bad4);
    let e = event_of(&d, "udp-bad", "sendmsg", |_| true);
    assert_eq!((e["verdict"].as_str(), e["addr"].as_str(), e["port"].as_u64()), (Some("deny"), Some("127.0.0.1"), Some(u_bad as u64)), "{e}");
    assert_eq!(event_of(&d, "v4-ok", "connect", |_| true)["verdict"], "allow");

    // on_violation = "kill": the refused connect also ends the process.
    let pol = policy("net-kill", &l).on_violation("kill").connect(&net).write_to(d.dir.path());
    let o = d.probe_run(&pol, "kill", &["connect", &format!("127.0.0.1:{p_bad4}")]);
    assert_eq!(status(&o), KILLED, "{o:?}");
    assert_eq!(event_of(&d, "kill", "connect", |_| true)["verdict"], "kill");
}

#[test]
fn monitor_mode_allows_and_reports_would_deny() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let bad = TcpListener::bind("127.0.0.1:0").unwrap();
    let pol = policy("mon", &l).mode("monitor").write_to(d.dir.path());
    let secret = s(&l.outside.join("secret.txt"));
    let o = d.probe_run(&pol, "m-read", &["read", &secret]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok TOPSECRET"), "{o:?}");
    let e = event_of(&d, "m-read", "open", |e| e["path"] == secret.as_str());
    assert_eq!((e["verdict"].as_str(), e["rule"].as_str()), (Some("would_deny"), Some("files.read")));
    let o = d.probe_run(&pol, "m-net", &["connect", &bad.local_addr().unwrap().to_string()]);
    assert_eq!(stdout(&o).trim(), "ok connected", "{o:?}");
    assert_eq!(event_of(&d, "m-net", "connect", |_| true)["verdict"], "would_deny");
    let o = d.probe_run(&pol, "m-ptrace", &["ptrace"]);
    assert_eq!(status(&o), 0, "{o:?}");
    assert_eq!(event_of(&d, "m-ptrace", "syscall", |_| true)["verdict"], "would_deny");
}

/// While a run under a deny-everything policy is active, a process outside every managed
/// cgroup does all the things the policy forbids and is never touched.
#[test]
fn processes_outside_runs_are_never_touched() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let bad = TcpListener::bind("127.0.0.1:0").unwrap();
    let pol = policy("strict", &l).on_violation("kill").write_to(d.dir.path());
    let probe = probe();
    let mut inside = std::process::Command::new(agent_guard_tests::binary())
        .args(["--config", d.config.to_str().unwrap(), "run", "--policy", pol.to_str().unwrap(), "--name", "busy", "--"])
        .arg(&probe)
        .args(["sleep", "3"])
        .spawn()
        .unwrap();
    d.wait_for("run_start of busy", |e| e["kind"] == "run_start" && e["run_name"] == "busy");
    let secret = s(&l.outside.join("secret.txt"));
    let addr = bad.local_addr().unwrap().to_string();
    for args in [vec!["read", secret.as_str()], vec!["connect", addr.as_str()], vec!["ptrace"], vec!["raw"]] {
        let o = std::process::Command::new(&probe).args(&args).output().unwrap();
        assert!(o.status.success(), "outside process {args:?} was affected: {o:?}");
    }
    let o = std::process::Command::new("/usr/bin/true").output().unwrap();
    assert!(o.status.success());
    assert_eq!(inside.wait().unwrap().code(), Some(0));
    let events = d.events();
    let run = run_id(&events, "busy");
    assert!(events.iter().all(|e| e["run"].is_null() || e["run"] == run.as_str()), "only the run's events");
}

#[test]
fn bind_cgroups_by_glob_covers_subtrees_and_new_matches() {
    require_root!();
    let tree = TestCgroup::create("agent-guard-bindtest");
    let (top, top_name) = (tree.0.clone(), tree.name());
    std::fs::create_dir(top.join("a.scope")).unwrap();
    let l = layout();
    let bad = TcpListener::bind("127.0.0.1:0").unwrap();
    let pdir = l.tmp.path().join("policies.d");
    std::fs::create_dir(&pdir).unwrap();
    policy("bound", &l).bind([format!("{top_name}/*.scope")]).write_to(&pdir);
    let d = Daemon::start_with(&format!("policy_dir = {:?}", pdir.display().to_string()));
    let name_a = format!("/{top_name}/a.scope");
    d.wait_for("binding of a.scope", |e| e["kind"] == "run_start" && e["run_name"] == name_a.as_str());

    // A child cgroup created after the binding is covered at once.
    let child = top.join("a.scope/late");
    std::fs::create_dir(&child).unwrap();
    let secret = s(&l.outside.join("secret.txt"));
    let o = probe_in(&child, &["read", &secret]);
    assert_eq!(o.status.signal_or_code(), KILLED, "{o:?}");
    assert!(!stdout(&o).contains("TOPSECRET"));
    let o = probe_in(&child, &["connect", &bad.local_addr().unwrap().to_string()]);
    assert_eq!(stdout(&o).trim(), "err EPERM", "{o:?}");
    let e = d.wait_for("kill in a.scope", |e| e["kind"] == "open" && e["verdict"] == "kill");
    let e = e.iter().find(|e| e["kind"] == "open" && e["verdict"] == "kill").unwrap();
    assert_eq!((e["run_name"].as_str(), e["policy"].as_str()), (Some(name_a.as_str()), Some("bound")), "{e}");

    // A cgroup that starts matching later is bound at the next scan.
    std::fs::create_dir(top.join("b.scope")).unwrap();
    let name_b = format!("/{top_name}/b.scope");
    d.wait_for("binding of b.scope", |e| e["kind"] == "run_start" && e["run_name"] == name_b.as_str());
    let o = probe_in(&top.join("b.scope"), &["read", &secret]);
    assert_eq!(o.status.signal_or_code(), KILLED, "{o:?}");

    // The parent does not match: a process there is not touched.
    let o = probe_in(&top, &["read", &secret]);
    assert_eq!((o.status.code(), stdout(&o).trim()), (Some(0), "ok TOPSECRET"), "{o:?}");
}

trait SignalOrCode {
    fn signal_or_code(&self) -> i32;
}

impl SignalOrCode for std::process::ExitStatus {
    fn signal_or_code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        self.signal().map_or_else(|| self.code().unwrap_or(-1), |s| 128 + s)
    }
}
