//! What `agent-guard run` takes from the command before it execs: no_new_privs, every
//! capability but those `[process] capabilities` lists, and with `--user` or `[process] user`
//! its identity; device nodes only with `[files] devices`. Attacks as root in the run.
use std::os::unix::fs::PermissionsExt;

use agent_guard_tests::{layout, probe, require_root, s, status, stdout, Daemon, PolicyFile};

/// `Name:\tvalue` lines of /proc/self/status as the command saw them.
fn proc_status(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let mut v = args.to_vec();
    v.extend(["--", "/bin/sh", "-c", "grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status; id -u"]);
    let o = d.run(&v);
    (status(&o), stdout(&o), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).map(str::trim).unwrap_or_else(|| panic!("{name} in {text}"))
}

#[test]
fn root_in_a_run_has_no_capabilities_and_no_new_privileges() {
    require_root!();
    let d = Daemon::start();
    let (code, out, err) = proc_status(&d, &[]);
    assert_eq!(code, 0, "{err}");
    for f in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(field(&out, f), "0000000000000000", "{f}: {out}");
    }
    assert_eq!(field(&out, "NoNewPrivs"), "1", "{out}");
    assert_eq!(out.lines().last(), Some("0"), "still uid 0: {out}");

    // The attack: root in the run reads another user's private file (DAC override).
    let l = layout();
    let private = l.outside.join("private.txt");
    std::fs::write(&private, "theirs\n").unwrap();
    std::os::unix::fs::chown(&private, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(l.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = d.run(&["--", probe().to_str().unwrap(), "read", &s(&private)]);
    assert_eq!(stdout(&o).trim(), "err EACCES", "root without CAP_DAC_OVERRIDE: {o:?}");
    // Outside a run, root reads it (the test would prove nothing otherwise).
    assert_eq!(std::fs::read_to_string(&private).unwrap(), "theirs\n");

    // [process] capabilities keeps exactly what it lists.
    let pol = PolicyFile::new("caps").mode("monitor").to_string() + "[process]\ncapabilities = [\"CAP_DAC_OVERRIDE\", \"net_bind_service\"]\n";
    let pol = d.write_policy("caps", &pol);
    let (code, out, err) = proc_status(&d, &["--policy", pol.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(field(&out, "CapEff"), format!("{:016x}", 1u64 << 1 | 1 << 10), "{out}");
    assert_eq!(field(&out, "CapBnd"), format!("{:016x}", 1u64 << 1 | 1 << 10), "{out}");
    let o = d.run(&["--policy", pol.to_str().unwrap(), "--", probe().to_str().unwrap(), "read", &s(&private)]);
    assert_eq!(stdout(&o).trim(), "ok theirs", "{o:?}");
}

#[test]
fn user_runs_the_command_as_another_account() {
    require_root!();
    let d = Daemon::start();
    let (code, out, err) = proc_status(&d, &["--user", "nobody"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().last(), Some("65534"), "{out}");
    assert_eq!(field(&out, "CapEff"), "0000000000000000", "{out}");
    assert_eq!(field(&out, "NoNewPrivs"), "1", "{out}");

    // The policy's user; --user must agree with it.
    let pol = d.write_policy("as-nobody", &(PolicyFile::new("as-nobody").mode("monitor").to_string() + "[process]\nuser = \"nobody\"\n"));
    let (code, out, err) = proc_status(&d, &["--policy", pol.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().last(), Some("65534"), "{out}");
    let o = d.run(&["--policy", pol.to_str().unwrap(), "--user", "root", "--", "true"]);
    assert_eq!(status(&o), 125, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("runs its commands as nobody"), "{o:?}");
    let o = d.run(&["--user", "no-such-user-agent-guard", "--", "true"]);
    assert_eq!(status(&o), 125, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no user"), "{o:?}");
    // Nothing of those refused runs is left.
    assert!(d.runs().is_empty(), "{:?}", d.runs());
}

#[test]
fn device_nodes_only_with_files_devices() {
    require_root!();
    let d = Daemon::start();
    let l = layout();
    let out = l.ws.join("out");
    let base = || PolicyFile::for_workspace("dev", &l).mode("enforce");
    let without = base().write_to(d.dir.path());
    let o = d.probe_run(&without, "mknod-refused", &["and-go-on", "mknod", &s(&out.join("null")), "char"]);
    assert!(stdout(&o).starts_with("err EPERM"), "{o:?}");
    assert!(!out.join("null").exists());
    let with = d.write_policy(
        "dev-ok",
        &(base().to_string().replace("name = \"dev\"", "name = \"dev-ok\"").replace("[files]", "[files]\ndevices = true")
            + "[process]\ncapabilities = [\"CAP_MKNOD\"]\n"),
    );
    let o = d.probe_run(&with, "mknod-ok", &["mknod", &s(&out.join("null2")), "char"]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok made"), "{o:?}");
    assert!(out.join("null2").exists());
}
