//! A run flooding the ring buffer with violations cannot cost another run its violations. In
//! a binary of its own, like tests/tests/flood.rs: the guarantee is about a daemon that keeps
//! up with the kernel, and two floods side by side on 2 cores measure something else.
use agent_guard_tests::{cgroup2_mount, probe, require_root, Daemon, PolicyFile};

/// A run flooding the ring with violations (refused UDP sends in a tight loop, each an urgent
/// event) cannot cost another run its violations either: beyond its share of the reserved
/// part of the ring per window, a run's violations are taken as routine events.
#[test]
fn a_run_flooding_violations_cannot_cost_a_quiet_run_its_violations() {
    require_root!();
    // 1 MiB: the flood still overflows it many times over, and the last eighth (128 KiB) holds
    // the quiet run's burst while the daemon works through the rest of the ring in order.
    let d = Daemon::start_with("events_ring_bytes = 1048576");
    let flood_policy = PolicyFile::for_probe("udpflood").write_to(d.dir.path());
    let p = probe();
    let mut flood = d.spawn_run(&["--policy", flood_policy.to_str().unwrap(), "--name", "udpflood", "--", p.to_str().unwrap(), "udp-flood", "127.0.0.1:9", "100000000"]);
    let ev = d.wait_for("the flood's first refusals", |e| e["kind"] == "sendmsg" && e["run_name"] == "udpflood");
    flood.cgroup = Some(cgroup2_mount().join(ev.iter().find(|e| e["run_name"] == "udpflood").unwrap()["cgroup"].as_str().unwrap().trim_start_matches('/')));
    let policy = PolicyFile::new("quiet2")
        .mode("monitor")
        .read(["/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/locale.alias"])
        .write_to(d.dir.path());
    let n = 100;
    let quiet = format!("i=0; while [ $i -lt {n} ]; do cat /etc/hostname; i=$((i+1)); done");
    let out = d.run(&["--policy", policy.to_str().unwrap(), "--name", "quiet2", "--", "sh", "-c", &quiet]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The flood ends first: its events would otherwise keep the daemon (and this test's
    // reading of the log) busy.
    let _ = std::fs::write(flood.cgroup.clone().unwrap().join("cgroup.kill"), "1");
    assert_eq!(flood.wait_exit(std::time::Duration::from_secs(10)), Some(137));
    d.wait_for("run_end of quiet2", |e| e["kind"] == "run_end" && e["run_name"] == "quiet2");
    let ev = d.wait_for("a kernel_ringbuf drop report", |e| e["kind"] == "drop" && e["stage"] == "kernel_ringbuf");
    let violations = ev
        .iter()
        .filter(|e| e["run_name"] == "quiet2" && e["kind"] == "open" && e["path"] == "/etc/hostname" && e["verdict"] == "would_deny")
        .count();
    let flooded = ev.iter().filter(|e| e["run_name"] == "udpflood" && e["kind"] == "sendmsg").count();
    let mut drops = std::collections::BTreeMap::new();
    for e in ev.iter().filter(|e| e["kind"] == "drop") {
        *drops.entry(e["stage"].as_str().unwrap_or("?").to_string()).or_insert(0u64) += e["count"].as_u64().unwrap_or(0);
    }
    eprintln!("udp flood: {flooded} refusal events written, dropped {drops:?}; quiet: {violations} of {n} violations");
    assert_eq!(violations, n, "violation events of the quiet run were lost");
}
