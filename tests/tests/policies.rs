//! Policy files: `policy check` without a daemon, loading from policy_dir, `policy apply`,
//! SIGHUP, and atomic reloads under load.
use std::{path::Path, process::Command};

use agent_guard_tests::{binary, probe, probe_reads, require_root, status, stdout, Daemon, PolicyFile};
use serde_json::Value;

/// A policy that lets the probe run and read `extra_read`.
fn policy(name: &str, extra_read: &[&Path]) -> PolicyFile {
    PolicyFile::for_probe(name).read(extra_read)
}

#[test]
fn policy_check_names_file_line_and_column() {
    // Needs no daemon and no privilege.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n[files]\nread = [\"/usr\", \"etc/ssl\"]\n[network]\nconnect = [\"10.0.0.1/8:443\"]\n").unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "name = \"y\"\n[files]\nread = [\"/usr\"]\n").unwrap();
    let o = Command::new(binary()).args(["policy", "check"]).arg(&bad).arg(&good).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(err.contains(&format!("{}:3:17: files.read[1]", bad.display())), "{err}");
    assert!(err.contains(&format!("{}:5:12: network.connect[0]", bad.display())), "{err}");
    assert!(stdout(&o).contains(&format!("{}: ok", good.display())), "{o:?}");
    let o = Command::new(binary()).args(["policy", "check"]).arg(&good).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

fn reloads(d: &Daemon) -> Vec<Value> {
    d.events().into_iter().filter(|e| e["kind"] == "policy_reload").collect()
}

#[test]
fn policy_dir_apply_sighup_and_bad_policies_keep_the_old_one() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed.txt");
    std::fs::write(&allowed, "fine\n").unwrap();
    let pdir = tmp.path().join("policies.d");
    std::fs::create_dir(&pdir).unwrap();
    policy("agent", &[&allowed]).write_to(&pdir);
    std::fs::write(pdir.join("broken.toml"), "name = \"broken\"\nmode = \"enforced\"\n").unwrap();
    let d = Daemon::start_with(&format!("policy_dir = {:?}", pdir.display().to_string()));

    // Loaded at start; the broken file is reported and not loaded.
    let o = d.cli(&["policy", "list", "--json"]);
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], "agent");
    let v1 = list[0]["version"].as_str().unwrap().to_string();
    let errs: Vec<Value> = reloads(&d).into_iter().filter(|e| e["result"] == "error").collect();
    assert!(errs[0]["error"].as_str().unwrap().contains("broken.toml:2:8: mode"), "{errs:?}");

    // A run by name; an unknown name is refused before anything runs.
    let p = probe();
    let o = d.run(&["--policy", "agent", "--", p.to_str().unwrap(), "read", allowed.to_str().unwrap()]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok fine"), "{o:?}");
    let o = d.run(&["--policy", "nope", "--", p.to_str().unwrap(), "sleep", "0"]);
    assert_eq!(status(&o), 125, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no policy named \"nope\""), "{o:?}");

    // An invalid apply changes nothing and says why.
    let bad = tmp.path().join("agent-bad.toml");
    std::fs::write(&bad, "name = \"agent\"\n[exec]\nallow = [\"usr/bin/x\"]\n").unwrap();
    let o = d.cli(&["policy", "apply", bad.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("agent-bad.toml:3:10: exec.allow[0]") && err.contains("previous one stays in force"), "{err}");
    let o = d.cli(&["policy", "show", "agent"]);
    assert!(stdout(&o).contains(&v1), "{o:?}");
    // The refused apply is recorded with who asked (this test runs as root).
    let refused = |e: &Value| e["kind"] == "policy_reload" && e["source"].as_str().is_some_and(|s| s.ends_with("agent-bad.toml"));
    let ev = d.wait_for("refused apply", refused);
    let e = ev.iter().find(|e| refused(e)).unwrap();
    assert_eq!(e["requested_by_uid"], 0, "{e:#}");
    assert!(e["requested_by_pid"].as_u64().is_some_and(|p| p > 0), "{e:#}");

    // SIGHUP reloads the directory: a changed file is a new version, recorded as a reload.
    policy("agent", &[&allowed]).mode("monitor").write_to(&pdir);
    // SAFETY: signal to our own child daemon, by pid.
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    let ev = d.wait_for("reload after SIGHUP", |e| e["kind"] == "policy_reload" && e["previous_version"] == v1.as_str());
    let e = ev.iter().find(|e| e["previous_version"] == v1.as_str()).unwrap();
    assert_eq!(e["result"], "ok");
    assert!(e.get("requested_by_uid").is_none(), "a policy_dir reload is nobody's request: {e:#}");
    assert_ne!(e["policy_version"], v1.as_str());
    let o = d.cli(&["policy", "list", "--json"]);
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["mode"], "monitor");

    // The syscall check (run by every syscall on the host) was attached for the policied
    // run and is detached once no run is under a policy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !d.stderr().contains("syscall check detached") {
        assert!(std::time::Instant::now() < deadline, "syscall check still attached:\n{}", d.stderr());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(d.stderr().contains("syscall check attached"), "{}", d.stderr());
}

/// A loop opens two files while the policy flips 100 times between a version that allows
/// only the first and one that allows only the second (monitor mode, so nothing dies):
/// every open must be decided by exactly one of the two versions, and the verdict must be
/// that version's. A second loop, in enforce mode, opens a file both versions allow and must
/// never be killed while the swaps happen.
#[test]
fn reload_under_load_never_mixes_versions() {
    require_root!();
    let d = Daemon::start();
    let tmp = tempfile::tempdir().unwrap();
    let (f1, f2) = (tmp.path().join("one"), tmp.path().join("two"));
    std::fs::write(&f1, "1").unwrap();
    std::fs::write(&f2, "2").unwrap();
    let a = tmp.path().join("a.toml");
    let b = tmp.path().join("b.toml");
    policy("flip", &[&f1]).mode("monitor").write_as(&a);
    policy("flip", &[&f2]).mode("monitor").write_as(&b);
    let ea = tmp.path().join("ea.toml");
    let eb = tmp.path().join("eb.toml");
    policy("steady", &[&f1]).write_as(&ea);
    policy("steady", &[&f1, &f2]).write_as(&eb);
    for f in [&a, &ea] {
        assert!(d.cli(&["policy", "apply", f.to_str().unwrap()]).status.success());
    }
    let version = |f: &Path| {
        let o = Command::new(binary()).args(["policy", "check"]).arg(f).output().unwrap();
        let out = stdout(&o);
        out.split("version ").nth(1).unwrap().trim_end_matches([')', '\n']).to_string()
    };
    let (va, vb) = (version(&a), version(&b));
    let p = probe();
    let spawn = |policy: &str, name: &str, file1: &Path, file2: &Path| {
        Command::new(binary())
            .args(["--config", d.config.to_str().unwrap(), "run", "--policy", policy, "--name", name, "--"])
            .arg(&p)
            .args(["loop", file1.to_str().unwrap(), file2.to_str().unwrap(), "400", "10"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let flip = spawn("flip", "flip", &f1, &f2);
    let steady = spawn("steady", "steady", &f1, &f1);
    for i in 0..100 {
        let f = if i % 2 == 0 { &b } else { &a };
        let o = d.cli(&["policy", "apply", f.to_str().unwrap()]);
        assert!(o.status.success(), "apply {i}: {o:?}");
        let f = if i % 2 == 0 { &eb } else { &ea };
        assert!(d.cli(&["policy", "apply", f.to_str().unwrap()]).status.success());
    }
    let out = flip.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = steady.wait_with_output().unwrap();
    assert!(out.status.success(), "the enforce-mode loop was hurt by a reload: {out:?}");
    assert!(stdout(&out).contains("399 ok"), "{}", stdout(&out));

    let events = d.wait_for("the loop's exit", |e| e["kind"] == "exit" && e["run_name"] == "flip");
    let opens: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "open" && e["run_name"] == "flip" && (e["path"] == f1.to_str().unwrap() || e["path"] == f2.to_str().unwrap()))
        .collect();
    assert_eq!(opens.len(), 800, "every open reported");
    let (mut by_a, mut by_b) = (0, 0);
    for e in &opens {
        let is_f1 = e["path"] == f1.to_str().unwrap();
        let v = e["policy_version"].as_str().unwrap();
        let allowed = if v == va {
            by_a += 1;
            is_f1
        } else if v == vb {
            by_b += 1;
            !is_f1
        } else {
            panic!("open decided by neither version: {e}");
        };
        let want = if allowed { "allow" } else { "would_deny" };
        assert_eq!(e["verdict"], want, "wrong verdict for its version: {e}");
    }
    eprintln!("800 opens: {by_a} decided by version a, {by_b} by version b");
    assert!(by_a > 0 && by_b > 0, "the swaps happened during the loop");
    let oks = reloads(&d).iter().filter(|e| e["result"] == "ok").count();
    assert!(oks >= 200, "every reload is an event: {oks}");
}

/// The limits: a policy with 4,096 rules in each of files.read and network.connect loads and
/// decides correctly, and 64 policies load at once while a 65th is refused with the reason.
#[test]
fn limits_4096_rules_and_64_policies() {
    require_root!();
    // The eBPF layer's limits: no Landlock layer refusing first.
    let d = Daemon::start_with("landlock = false");
    let tmp = tempfile::tempdir().unwrap();
    let last = tmp.path().join("d4000");
    std::fs::create_dir(&last).unwrap();
    std::fs::write(last.join("f"), "deep\n").unwrap();
    let probe = probe();
    let mut read = probe_reads();
    for i in read.len()..4096 {
        read.push(format!("{}/d{i}", tmp.path().display()));
    }
    let net: Vec<String> = (0..4096).map(|i| format!("10.{}.{}.0/24:443", i / 256, i % 256)).collect();
    let big = PolicyFile::new("big").read(read).exec([&probe]).connect(net).write_to(tmp.path());
    let t = std::time::Instant::now();
    let o = d.cli(&["policy", "apply", big.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    eprintln!("4096+4096-rule policy applied in {:?}", t.elapsed());
    let o = d.run(&["--policy", "big", "--", probe.to_str().unwrap(), "read", last.join("f").to_str().unwrap()]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok deep"), "{o:?}");
    std::fs::write(tmp.path().join("other"), "x").unwrap();
    let o = d.run(&["--policy", "big", "--", probe.to_str().unwrap(), "read", tmp.path().join("other").to_str().unwrap()]);
    assert_eq!(status(&o), 137, "{o:?}");

    for i in 1..64 {
        let f = PolicyFile::new(&format!("p{i}")).read(["/usr"]).write_to(tmp.path());
        let o = d.cli(&["policy", "apply", f.to_str().unwrap()]);
        assert!(o.status.success(), "policy {i}: {o:?}");
    }
    let f = PolicyFile::new("p64").write_to(tmp.path());
    let o = d.cli(&["policy", "apply", f.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("64 policies are loaded already"), "{o:?}");
    let o = d.cli(&["policy", "list", "--json"]);
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 64);
}
