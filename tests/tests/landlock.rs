//! The Landlock layer `agent-guard run` puts under enforce-mode runs: operations outside the
//! policy are refused with EACCES before they happen and the process goes on (the eBPF
//! programs alone would kill it, and for writes only after the open had created or truncated
//! the file), while the eBPF programs stay the backstop for what Landlock cannot express.
//!
//! Each test starts its own daemon and runs tests/src/bin/agprobe.rs inside runs, as
//! tests/tests/enforcement.rs does (which runs with `landlock = false`, to test the eBPF
//! layer alone).
use std::{net::TcpListener, process::Output};

use agent_guard_tests::{layout, probe, require, require_root, s, status, stdout, Daemon, PolicyFile};
use serde_json::Value;

const KILLED: i32 = 128 + 9;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The kernel's Landlock ABI (0: none).
fn landlock_abi() -> i64 {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attr only queries the ABI.
    unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) }
}

/// Skips the enclosing test (a failure under CI=true) unless the kernel's Landlock ABI is at
/// least `min`.
macro_rules! require_landlock {
    ($min:expr) => {
        let abi = landlock_abi();
        require!(abi >= $min, "Landlock ABI {abi} on this kernel, the test needs {}", $min);
    };
}

/// The first event of `kind` of the run named `name` that matches `pred`.
fn event_of(d: &Daemon, name: &str, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let events = d.wait_for(&format!("{kind} of {name}"), |e| e["run_name"] == name && e["kind"] == kind && pred(e));
    events.into_iter().find(|e| e["run_name"] == name && e["kind"] == kind && pred(e)).unwrap()
}

fn layer_of(e: &Value) -> (&str, &str, &str) {
    (e["verdict"].as_str().unwrap_or("?"), e["rule"].as_str().unwrap_or("-"), e["layer"].as_str().unwrap_or("-"))
}

#[test]
fn enforce_refuses_writes_outside_write_paths_before_they_happen() {
    require_root!();
    require_landlock!(3);
    let d = Daemon::start();
    let l = layout();
    let pol = PolicyFile::for_workspace("ll", &l).mode("enforce").write_to(d.dir.path());

    // A new file below the write path: created.
    let new_out = l.ws.join("out/new.txt");
    let o = d.probe_run(&pol, "w-ok", &["write", &s(&new_out)]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&new_out).unwrap(), "written\n");
    assert!(!stderr(&o).contains("Landlock"), "no warning where Landlock works: {o:?}");

    // A new file in the read-only tree: refused by Landlock, so nothing was opened, nothing
    // was created, and the process lives to report it.
    let new_ws = l.ws.join("new.txt");
    let o = d.probe_run(&pol, "w-create", &["write", &s(&new_ws)]);
    assert_eq!((status(&o), stdout(&o).trim()), (1, "err EACCES"), "{o:?}");
    assert!(!new_ws.exists(), "the refused create left a file behind");
    let e = event_of(&d, "w-create", "open", |e| e["verdict"] != "allow");
    assert_eq!(layer_of(&e), ("deny", "files.write", "landlock"), "{e}");

    // Truncating an existing read-only file: refused, content unchanged.
    let ok = l.ws.join("ok.txt");
    let o = d.probe_run(&pol, "w-trunc", &["write", &s(&ok)]);
    assert_eq!((status(&o), stdout(&o).trim()), (1, "err EACCES"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&ok).unwrap(), "hello\n");

    // An allowed read.
    let o = d.probe_run(&pol, "r-ok", &["read", &s(&ok)]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok hello"), "{o:?}");
    let e = event_of(&d, "r-ok", "open", |e| e["path"] == s(&ok).as_str());
    assert_eq!(layer_of(&e), ("allow", "-", "ebpf"), "{e}");
}

#[test]
fn denied_reads_are_eacces_and_the_run_goes_on() {
    require_root!();
    require_landlock!(1);
    let d = Daemon::start();
    let l = layout();
    let pol = PolicyFile::for_workspace("reads", &l).write_to(d.dir.path());
    let secret = s(&l.outside.join("secret.txt"));
    let ok = s(&l.ws.join("ok.txt"));

    // Refused, and the same process goes on to read an allowed file.
    let o = d.probe_run(&pol, "read-then", &["read-then", &secret, &ok]);
    assert_eq!((status(&o), stdout(&o).as_str()), (0, "first err EACCES\nok hello\n"), "{o:?}");
    let e = event_of(&d, "read-then", "open", |e| e["path"] == secret.as_str());
    assert_eq!(layer_of(&e), ("deny", "files.read", "landlock"), "{e}");
    assert_eq!((e["error"].as_str(), e["result"].as_i64()), (Some("EACCES"), Some(-13)), "{e}");
    assert!(e["ancestry"].is_array(), "a violation carries its ancestry: {e}");

    // Every way around it is refused too: Landlock judges the file the kernel resolved.
    let link = l.ws.join("link");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let attempts: Vec<(&str, Vec<String>)> = vec![
        ("symlink", vec!["read".into(), s(&link)]),
        ("dotdot", vec!["read".into(), format!("{}/../outside/secret.txt", s(&l.ws))]),
        ("relative", vec!["read-rel".into(), s(&l.outside), "secret.txt".into()]),
        ("dirfd", vec!["read-at".into(), s(&l.ws), "../outside/secret.txt".into()]),
        ("procfd", vec!["read-procfd".into(), secret.clone()]),
        ("openat2", vec!["read-openat2".into(), secret.clone()]),
    ];
    for (name, args) in &attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = d.probe_run(&pol, name, &args);
        assert_eq!((status(&o), stdout(&o).trim()), (1, "err EACCES"), "{name}: {o:?}");
    }
    // Absolute names are judged by the daemon, through the symlink too.
    for name in ["symlink", "dotdot", "openat2"] {
        let e = event_of(&d, name, "open", |e| e["verdict"] != "allow");
        assert_eq!(layer_of(&e), ("deny", "files.read", "landlock"), "{name}: {e}");
    }

    // A deny rule inside an allowed tree: the layer grants the tree around it (entry by
    // entry), so it is refused up front too, and the same process goes on.
    let env = s(&l.ws.join(".env"));
    let o = d.probe_run(&pol, "env", &["read-then", &env, &ok]);
    assert_eq!((status(&o), stdout(&o).as_str()), (0, "first err EACCES\nok hello\n"), "{o:?}");
    let e = event_of(&d, "env", "open", |e| e["path"] == env.as_str());
    assert_eq!(layer_of(&e), ("deny", "files.deny", "landlock"), "{e}");
}

#[test]
fn renames_cannot_give_a_denied_or_outside_file_an_allowed_name() {
    require_root!();
    require_landlock!(3);
    let d = Daemon::start();
    let l = layout();
    let pol = PolicyFile::for_workspace("refer", &l).mode("enforce").write_to(d.dir.path());
    let out = |n: &str| s(&l.ws.join("out").join(n));
    std::fs::write(l.ws.join("out/mine.txt"), "mine\n").unwrap();
    let refused = ["err EACCES", "err errno18"]; // EXDEV: Landlock's refusal of a reparenting
    for (name, from, to) in [
        ("mv-env", s(&l.ws.join(".env")), out("env")),
        ("mv-outside", s(&l.outside.join("secret.txt")), out("secret")),
        ("mv-readonly", s(&l.ws.join("ok.txt")), out("ok.txt")),
    ] {
        let o = d.probe_run(&pol, name, &["rename", &from, &to]);
        assert_eq!(status(&o), 1, "{name}: {o:?}");
        assert!(refused.contains(&stdout(&o).trim()), "{name}: {o:?}");
        assert!(std::path::Path::new(&from).exists() && !std::path::Path::new(&to).exists(), "{name}");
    }
    // Inside the write tree: allowed.
    let o = d.probe_run(&pol, "mv-ok", &["rename", &out("mine.txt"), &out("yours.txt")]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok renamed"), "{o:?}");
    // Hard links: the launcher's seccomp filter leaves link/linkat to the Landlock layer (no
    // carve-out inside the write tree), so a link inside the write tree works and one giving
    // the secret an allowed name is refused.
    let o = d.probe_run(&pol, "ln-ok", &["link", &out("yours.txt"), &out("again.txt")]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok linked"), "{o:?}");
    for (name, from) in [("ln-env", s(&l.ws.join(".env"))), ("ln-outside", s(&l.outside.join("secret.txt")))] {
        let o = d.probe_run(&pol, name, &["link", &from, &out(name)]);
        assert!(refused.contains(&stdout(&o).trim()) || stdout(&o).trim() == "err EPERM", "{name}: {o:?}");
        assert!(!l.ws.join("out").join(name).exists(), "{name}");
    }
}

#[test]
fn execs_outside_the_policy_are_eacces_and_allowed_ones_load_their_libraries() {
    require_root!();
    require_landlock!(1);
    let d = Daemon::start();
    let l = layout();
    let cat = std::fs::canonicalize("/usr/bin/cat").unwrap();
    let t = std::fs::canonicalize("/usr/bin/true").unwrap();
    // Tight: libraries and the probe, not /usr/bin.
    let probe = probe();
    let pol = PolicyFile::new("tight")
        .read(["/usr/lib", "/lib", "/lib64", "/etc/ld.so.cache", "/proc", "/dev/null"])
        .read([probe.parent().unwrap(), &l.ws])
        .exec([&probe, &cat])
        .write_to(d.dir.path());

    // An allowed, dynamically linked binary: its loader and libraries load, it reads.
    let o = d.probe_run(&pol, "cat", &["exec", &s(&cat), &s(&l.ws.join("ok.txt"))]);
    assert_eq!((status(&o), stdout(&o).as_str()), (0, "hello\nok exit 0\n"), "{o:?}");
    assert!(!stderr(&o).contains("Landlock"), "{o:?}");
    let e = event_of(&d, "cat", "exec", |e| e["path"] == s(&cat).as_str());
    assert_eq!(layer_of(&e), ("allow", "-", "ebpf"), "{e}");

    // Not allowed: the exec fails with EACCES and the probe carries on.
    let o = d.probe_run(&pol, "true", &["exec", &s(&t)]);
    assert_eq!((status(&o), stdout(&o).trim()), (1, "err EACCES"), "{o:?}");
    // The run's own command, likewise: `run` says it cannot run it (126).
    let o = d.run(&["--policy", pol.to_str().unwrap(), "--name", "cmd", "--", t.to_str().unwrap()]);
    assert_eq!(status(&o), 126, "{o:?}");
    assert!(stderr(&o).contains("Permission denied"), "{o:?}");
    let e = event_of(&d, "cmd", "exec", |e| e["result"].is_i64());
    assert_eq!((layer_of(&e), e["path"].as_str()), (("deny", "exec.allow", "landlock"), t.to_str()), "{e}");

    // A binary inside a read tree but outside [exec] allow is left to the eBPF layer (the
    // policy judges scripts by their interpreter, which Landlock cannot express): killed
    // before its first instruction.
    let wide = PolicyFile::for_workspace("wide", &l).write_to(d.dir.path());
    let o = d.probe_run(&wide, "wide-true", &["exec", &s(&t)]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok signal 9"), "{o:?}");
    let e = event_of(&d, "wide-true", "exec", |e| e["verdict"] != "allow");
    assert_eq!(layer_of(&e), ("kill", "exec.allow", "ebpf"), "{e}");
}

/// The eBPF programs see a refused exec only as a failed execve: the daemon names it from the
/// policy, like a refused open.
#[test]
fn refused_execs_are_events_that_name_the_rule_and_the_layer() {
    require_root!();
    require_landlock!(1);
    let d = Daemon::start();
    let l = layout();
    let t = std::fs::canonicalize("/usr/bin/true").unwrap();
    let bin = t.parent().unwrap();
    let probe = probe();
    // ok.txt is allowed to run, but is no program (mode 0644).
    let text = l.ws.join("ok.txt");
    let pol = PolicyFile::new("exec-ev")
        .read(["/usr/lib", "/lib", "/lib64", "/etc/ld.so.cache", "/proc", "/dev/null"])
        .read([probe.parent().unwrap(), &l.ws])
        .exec([&probe, &text])
        .write_to(d.dir.path());
    fn refused(e: &Value) -> ((&str, &str, &str), &str, Option<&str>, Option<i64>) {
        (layer_of(e), e["path"].as_str().unwrap_or("?"), e["error"].as_str(), e["result"].as_i64())
    }

    // Outside [exec] allow: EACCES, and the process goes on.
    let o = d.probe_run(&pol, "x-abs", &["and-go-on", "execve", &s(&t)]);
    assert_eq!((status(&o), stdout(&o).as_str()), (0, "err EACCES\nwent on\n"), "{o:?}");
    let e = event_of(&d, "x-abs", "exec", |e| e["result"].is_i64());
    let want = (("deny", "exec.allow", "landlock"), s(&t), Some("EACCES"), Some(-13));
    assert_eq!(refused(&e), (want.0, want.1.as_str(), want.2, want.3), "{e}");
    assert!(e["ancestry"].is_array() && e["argv"] == serde_json::json!([]), "{e}");
    // A violation: the run's summary line says so, and `events --violations` lists it.
    let line = stderr(&o).lines().find(|l| l.contains("ended with")).map(str::to_string);
    assert!(line.as_deref().is_some_and(|l| l.contains("1 violation (1 exec.allow)") && l.contains(&s(&t))), "{o:?}");
    let run = e["run"].as_str().unwrap();
    let v = d.cli(&["events", "--json", "--run", run, "--violations"]);
    let v: Vec<Value> = stdout(&v).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!((v[0]["kind"].as_str(), v[0]["path"].as_str()), (Some("exec"), Some(s(&t).as_str())), "{v:#?}");

    // A relative path: resolved against the process's working directory.
    let o = d.probe_run(&pol, "x-rel", &["execve-rel", &s(bin), t.file_name().unwrap().to_str().unwrap()]);
    assert_eq!((status(&o), stdout(&o).trim()), (1, "err EACCES"), "{o:?}");
    let e = event_of(&d, "x-rel", "exec", |e| e["result"].is_i64());
    assert_eq!(refused(&e), (want.0, "true", want.2, want.3), "{e}");

    // Allowed by the policy but not executable: the file's own mode refused it. An event
    // with the error, and no violation.
    let o = d.probe_run(&pol, "x-text", &["execve", &s(&text)]);
    assert_eq!((status(&o), stdout(&o).trim()), (1, "err EACCES"), "{o:?}");
    let e = event_of(&d, "x-text", "exec", |e| e["result"].is_i64());
    assert_eq!(refused(&e), (("allow", "-", "ebpf"), s(&text).as_str(), want.2, want.3), "{e}");
    assert!(!stderr(&o).contains("ended with"), "{o:?}");
    let run = e["run"].as_str().unwrap();
    let v = d.cli(&["events", "--json", "--run", run, "--violations"]);
    assert_eq!(stdout(&v).trim(), "", "{v:?}");
}

#[test]
fn tcp_connects_to_ports_outside_the_policy_are_refused_by_landlock() {
    require_root!();
    require_landlock!(4);
    let d = Daemon::start();
    let l = layout();
    let ok = TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = TcpListener::bind("127.0.0.1:0").unwrap();
    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = |t: &TcpListener| t.local_addr().unwrap().port();
    let (p_ok, p_bad, p_else) = (port(&ok), port(&bad), port(&elsewhere));
    // p_else is allowed for another address only: Landlock (ports only) lets it through and
    // the cgroup programs refuse the address.
    let pol = PolicyFile::for_workspace("net", &l)
        .connect([format!("127.0.0.1/32:{p_ok}"), format!("192.0.2.0/24:{p_else}")])
        .write_to(d.dir.path());
    for (name, p, want, layer) in [
        ("c-ok", p_ok, "ok connected", "ebpf"),
        ("c-bad", p_bad, "err EACCES", "landlock"),
        ("c-else", p_else, "err EPERM", "ebpf"),
    ] {
        let o = d.probe_run(&pol, name, &["connect", &format!("127.0.0.1:{p}")]);
        assert_eq!(stdout(&o).trim(), want, "{name}: {o:?}");
        let e = event_of(&d, name, "connect", |_| true);
        let verdict = if name == "c-ok" { "allow" } else { "deny" };
        assert_eq!((e["verdict"].as_str(), e["layer"].as_str()), (Some(verdict), Some(layer)), "{name}: {e}");
    }
}

#[test]
fn signals_and_abstract_sockets_outside_the_run_are_refused() {
    require_root!();
    require_landlock!(6);
    let d = Daemon::start();
    let l = layout();
    let pol = PolicyFile::for_workspace("scoped", &l).write_to(d.dir.path());
    // A process of the test's own, outside the run.
    let mut outside = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let o = d.probe_run(&pol, "signal", &["kill", &outside.id().to_string(), "0"]);
    assert_eq!((status(&o), stdout(&o).trim()), (1, "err EPERM"), "{o:?}");
    assert_eq!(outside.try_wait().unwrap(), None);
    let _ = outside.kill();
    let _ = outside.wait();

    let name = format!("agent-guard-test-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let o = d.probe_run(&pol, "abstract", &["abstract", &name]);
    assert_eq!((status(&o), stdout(&o).trim()), (1, "err EPERM"), "{o:?}");

    // Monitor mode gets no layer: both go through.
    let mon = PolicyFile::for_workspace("scoped-mon", &l).mode("monitor").write_to(d.dir.path());
    let o = d.probe_run(&mon, "abstract-mon", &["abstract", &name]);
    assert_eq!(stdout(&o).trim(), "ok connected", "{o:?}");
}

#[test]
fn status_lists_what_landlock_covers_for_each_run() {
    require_root!();
    require_landlock!(6);
    let d = Daemon::start();
    let l = layout();
    let pol = PolicyFile::for_workspace("shown", &l).write_to(d.dir.path());
    let kill = PolicyFile::for_workspace("shown-kill", &l).on_violation("kill").write_to(d.dir.path());
    let probe = probe();
    let p = probe.to_str().unwrap();
    let mut runs = [
        ("shown", d.spawn_run(&["--policy", pol.to_str().unwrap(), "--name", "shown", "--", p, "sleep", "30"])),
        ("shown-kill", d.spawn_run(&["--policy", kill.to_str().unwrap(), "--name", "shown-kill", "--", p, "sleep", "30"])),
        ("plain", d.spawn_run(&["--name", "plain", "--", p, "sleep", "30"])),
    ];
    for (n, b) in &mut runs {
        let e = event_of(&d, n, "exec", |_| true);
        // The guard kills and removes the run's cgroup when dropped.
        b.cgroup = Some(agent_guard_tests::cgroup2_mount().join(e["cgroup"].as_str().unwrap().trim_start_matches('/')));
    }
    let o = d.cli(&["status", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(st["landlock_abi"].as_u64().unwrap() >= 6, "{st:#}");
    assert_eq!(st["landlock_enabled"], true);
    let runs = st["landlock_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "runs without a policy have no layer: {st:#}");
    let cov = |name: &str| runs.iter().find(|r| r["name"] == name).map(|r| r["coverage"].clone()).unwrap();
    let full = cov("shown");
    for k in ["files_read", "files_write", "exec", "tcp_connect", "scope_signal", "scope_abstract_unix"] {
        assert_eq!(full[k], true, "{k}: {full:#}");
    }
    // ws/.env is carved out of the read tree: refused up front, and the cost is said.
    let carves = full["carve_outs"].to_string();
    assert!(carves.contains(&format!("files.deny {}/.env", l.ws.display())) && carves.contains("cost: "), "{full:#}");
    let k = cov("shown-kill");
    assert_eq!((k["files_read"].as_bool(), k["files_write"].as_bool(), k["exec"].as_bool()), (Some(false), Some(true), Some(false)), "{k:#}");
    assert!(k["ebpf_only"][0].as_str().unwrap().contains("kill"), "{k:#}");

    let o = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("landlock        ABI "), "{text}");
    assert!(text.contains("refuses read, write, exec, tcp-connect, signal, abstract-unix"), "{text}");
    assert!(text.contains("eBPF only: read, exec, tcp-connect: on_violation = \"kill\""), "{text}");
    assert!(text.contains("carve-outs: refused up front (EACCES): files.deny "), "{text}");
    let ps: Value = serde_json::from_slice(&d.cli(&["ps", "--json"]).stdout).unwrap();
    let plain = ps.as_array().unwrap().iter().find(|r| r["name"] == "plain").unwrap();
    assert!(plain.get("landlock").is_none(), "{plain:#}");
}

#[test]
fn kill_policies_and_landlock_off_leave_reads_to_the_ebpf_layer() {
    require_root!();
    require_landlock!(3);
    let l = layout();
    let secret = s(&l.outside.join("secret.txt"));
    {
        let d = Daemon::start();
        let pol = PolicyFile::for_workspace("killer", &l).on_violation("kill").write_to(d.dir.path());
        let o = d.probe_run(&pol, "k-read", &["read", &secret]);
        assert_eq!(status(&o), KILLED, "what the policy asks for: {o:?}");
        let e = event_of(&d, "k-read", "open", |e| e["verdict"] != "allow");
        assert_eq!(layer_of(&e), ("kill", "files.read", "ebpf"), "{e}");
        // Writes are still refused up front.
        let o = d.probe_run(&pol, "k-write", &["write", &s(&l.ws.join("ok.txt"))]);
        assert_eq!((status(&o), stdout(&o).trim()), (1, "err EACCES"), "{o:?}");
    }
    let d = Daemon::start_with("landlock = false");
    let pol = PolicyFile::for_workspace("off", &l).write_to(d.dir.path());
    let o = d.probe_run(&pol, "off-read", &["read", &secret]);
    assert_eq!(status(&o), KILLED, "{o:?}");
    assert!(!stdout(&o).contains("TOPSECRET"));
    let st: Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(st["landlock_enabled"], false, "{st:#}");
}

#[test]
fn monitor_mode_has_no_landlock_layer() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let pol = PolicyFile::for_workspace("llmon", &l).mode("monitor").write_to(d.dir.path());

    let new_ws = l.ws.join("new.txt");
    let o = d.probe_run(&pol, "mon-create", &["write", &s(&new_ws)]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&new_ws).unwrap(), "written\n");
    let o = d.probe_run(&pol, "mon-read", &["read", &s(&l.outside.join("secret.txt"))]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok TOPSECRET"), "{o:?}");
    assert!(!stderr(&o).contains("Landlock"), "{o:?}");
}

#[test]
fn missing_paths_are_noted_and_refused() {
    require_root!();
    require_landlock!(1);
    let d = Daemon::start();
    let l = layout();
    // Write access to ws/later, which does not exist when the run starts.
    let pol = PolicyFile::for_workspace("llmiss", &l).write([l.ws.join("later")]).write_to(d.dir.path());
    let later = l.ws.join("later");
    let o = d.probe_run(&pol, "miss", &["write", &s(&l.ws.join("out/x.txt"))]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok"), "{o:?}");
    let err = stderr(&o);
    assert!(
        err.contains("not granted by Landlock") && err.contains(&format!("{} (does not exist)", later.display())),
        "{err}"
    );
}
