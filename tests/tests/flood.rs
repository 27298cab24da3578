//! A run that floods the ring buffer cannot cost another run its violations. In a file of its
//! own: the guarantee is about a daemon that keeps up with the kernel, and the other tests of
//! a binary run side by side (their daemons and runs would share this 2-core machine's CPU
//! with the flood's daemon, which is not what this test measures).
use agent_guard_tests::{
    flood::{flooding, quiet_run_keeps_its_violations},
    require_root, Daemon,
};

/// A run that floods the ring buffer with allowed events cannot cost another run its
/// violations: the kernel keeps the last quarter of the ring for them, and the daemon never
/// drops one from its queue.
#[test]
fn a_flooding_run_cannot_cost_a_quiet_run_its_violations() {
    require_root!();
    // A small ring (the default is 16 MiB), so the flood overflows it many times over; 1 MiB
    // rather than less, so that its reserved quarter holds the quiet run's burst while a
    // daemon starved by other work on 2 cores works through the rest in order (on 256 KiB it
    // lost 3-8 of 100 in some runs).
    let d = Daemon::start_with("events_ring_bytes = 1048576");
    let files: Vec<String> = (0..200)
        .map(|i| {
            let p = d.dir.path().join(format!("f{i}"));
            std::fs::write(&p, "x").unwrap();
            p.to_str().unwrap().to_string()
        })
        .collect();
    let script = format!("while :; do cat {} > /dev/null; done", files.join(" "));
    let flood = d.spawn_run(&["--name", "flood", "--", "sh", "-c", &script]);
    let flood = flooding(&d, flood, "flood", "open");
    quiet_run_keeps_its_violations(&d, flood, "flood", "open", "quiet");
}

