//! The Landlock layer `agent-guard run` puts under enforce-mode runs: writes outside
//! `[files] write` are refused with EACCES before anything changes on disk (the eBPF programs
//! alone would kill the process only after the open had created or truncated the file).
//!
//! Each test starts its own daemon and runs tests/src/bin/agprobe.rs inside runs, as
//! tests/tests/enforcement.rs does.
use std::process::Output;

use agent_guard_tests::{layout, privileged, probe, probe_reads, s, status, stdout, toml_items, Daemon, Layout};

/// A policy that lets the probe start (its libraries, /proc), reads `ws`, writes `ws/out`.
fn policy(name: &str, l: &Layout, header: &str) -> String {
    let probe = probe();
    format!(
        r#"name = "{name}"
{header}
[files]
read = [{base}, "{ws}"]
write = ["{ws}/out"]
[exec]
allow = ["{probe}"]
"#,
        base = toml_items(&probe_reads()),
        ws = l.ws.display(),
        probe = probe.display(),
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn enforce_refuses_writes_outside_write_paths_before_they_happen() {
    if !privileged("enforce_refuses_writes_outside_write_paths_before_they_happen") {
        return;
    }
    let d = Daemon::start();
    let l = layout();
    let pol = d.write_policy("ll", &policy("ll", &l, "mode = \"enforce\""));

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

    // Truncating an existing read-only file: refused, content unchanged.
    let ok = l.ws.join("ok.txt");
    let o = d.probe_run(&pol, "w-trunc", &["write", &s(&ok)]);
    assert_eq!((status(&o), stdout(&o).trim()), (1, "err EACCES"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&ok).unwrap(), "hello\n");

    // Reads are not the layer's business.
    let o = d.probe_run(&pol, "r-ok", &["read", &s(&ok)]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok hello"), "{o:?}");
}

#[test]
fn monitor_mode_has_no_landlock_layer() {
    if !privileged("monitor_mode_has_no_landlock_layer") {
        return;
    }
    let d = Daemon::start();
    let l = layout();
    let pol = d.write_policy("llmon", &policy("llmon", &l, "mode = \"monitor\""));

    let new_ws = l.ws.join("new.txt");
    let o = d.probe_run(&pol, "mon-create", &["write", &s(&new_ws)]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&new_ws).unwrap(), "written\n");
    assert!(!stderr(&o).contains("Landlock"), "{o:?}");
}

#[test]
fn missing_write_paths_are_noted_and_refused() {
    if !privileged("missing_write_paths_are_noted_and_refused") {
        return;
    }
    let d = Daemon::start();
    let l = layout();
    // Write access to ws/later, which does not exist when the run starts.
    let text = policy("llmiss", &l, "").replace(
        &format!("write = [\"{}/out\"]", l.ws.display()),
        &format!("write = [\"{0}/out\", \"{0}/later\"]", l.ws.display()),
    );
    let pol = d.write_policy("llmiss", &text);
    let later = l.ws.join("later");
    let o = d.probe_run(&pol, "miss", &["write", &s(&l.ws.join("out/x.txt"))]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok"), "{o:?}");
    let err = stderr(&o);
    assert!(
        err.contains("not granted by Landlock") && err.contains(&format!("{} (does not exist)", later.display())),
        "{err}"
    );
}
