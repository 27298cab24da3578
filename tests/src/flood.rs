//! The flood tests (tests/tests/flood.rs, flood_violations.rs): a quiet run with 100
//! violations beside a run that floods the ring buffer must keep every violation event.
use crate::{cgroup2_mount, BackgroundRun, Daemon, PolicyFile};

/// Waits for the flooding run `flood` (named `name`) to report its first `kind` event and
/// records its cgroup, so that it can be ended by the test.
pub fn flooding(d: &Daemon, mut flood: BackgroundRun, name: &str, kind: &str) -> BackgroundRun {
    let ev = d.wait_for("the flood's first events", |e| e["kind"] == kind && e["run_name"] == name);
    let cgroup = ev.iter().find(|e| e["run_name"] == name).unwrap()["cgroup"].as_str().unwrap().trim_start_matches('/').to_string();
    flood.cgroup = Some(cgroup2_mount().join(cgroup));
    flood
}

/// Runs a quiet monitor-mode run `quiet` whose 100 reads of /etc/hostname are each a
/// `would_deny`, ends the flood (its events would otherwise keep the daemon, and this test's
/// reading of the log, busy), and asserts that the ring overflowed and that every one of the
/// quiet run's violation events was written. Prints what the flood (`name`, `kind` events)
/// wrote and where events were dropped.
pub fn quiet_run_keeps_its_violations(d: &Daemon, mut flood: BackgroundRun, name: &str, kind: &str, quiet: &str) {
    // Monitor mode: each read of /etc/hostname is a would_deny violation, and the run goes on.
    let policy = PolicyFile::new(quiet)
        .mode("monitor")
        .read(["/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/locale.alias"])
        .write_to(d.dir.path());
    let n = 100;
    let script = format!("i=0; while [ $i -lt {n} ]; do cat /etc/hostname; i=$((i+1)); done");
    let out = d.run(&["--policy", policy.to_str().unwrap(), "--name", quiet, "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::write(flood.cgroup.clone().unwrap().join("cgroup.kill"), "1");
    assert_eq!(flood.wait_exit(std::time::Duration::from_secs(10)), Some(137));
    d.wait_for("run_end of the quiet run", |e| e["kind"] == "run_end" && e["run_name"] == quiet);
    // The flood overflowed the ring meanwhile (drop counts are reported once a second).
    let ev = d.wait_for("a kernel_ringbuf drop report", |e| e["kind"] == "drop" && e["stage"] == "kernel_ringbuf");
    let violations = ev
        .iter()
        .filter(|e| e["run_name"] == quiet && e["kind"] == "open" && e["path"] == "/etc/hostname" && e["verdict"] == "would_deny")
        .count();
    let flooded = ev.iter().filter(|e| e["run_name"] == name && e["kind"] == kind).count();
    let mut drops = std::collections::BTreeMap::new();
    for e in ev.iter().filter(|e| e["kind"] == "drop") {
        *drops.entry(e["stage"].as_str().unwrap_or("?").to_string()).or_insert(0u64) += e["count"].as_u64().unwrap_or(0);
    }
    eprintln!("{name}: {flooded} {kind} events written, dropped {drops:?}; quiet: {violations} of {n} violations");
    assert_eq!(violations, n, "violation events of the quiet run were lost");
}
