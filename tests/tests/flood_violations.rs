//! A run flooding the ring buffer with violations cannot cost another run its violations. In
//! a binary of its own, like tests/tests/flood.rs: the guarantee is about a daemon that keeps
//! up with the kernel, and two floods side by side on 2 cores measure something else.
use agent_guard_tests::{
    flood::{flooding, quiet_run_keeps_its_violations},
    probe, require_root, Daemon, PolicyFile,
};

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
    let flood = d.spawn_run(&["--policy", flood_policy.to_str().unwrap(), "--name", "udpflood", "--", p.to_str().unwrap(), "udp-flood", "127.0.0.1:9", "100000000"]);
    let flood = flooding(&d, flood, "udpflood", "sendmsg");
    quiet_run_keeps_its_violations(&d, flood, "udpflood", "sendmsg", "quiet2");
}
