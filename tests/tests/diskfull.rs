//! The events log on a full filesystem (a 1 MiB tmpfs the test mounts, fills, and frees):
//! enforcement goes on (a denied read is still refused, an allowed one works), the lost events
//! are counted (`agent_guard_events_dropped_total{stage="sink"}` while the disk is full), the
//! log never holds half a line, and once there is space again the daemon writes new events and
//! a `drop` event (stage `sink`) accounting for every event it lost.
use std::time::{Duration, Instant};

use agent_guard_tests::{
    layout, privileged,
    reliability::{metric, move_events_log, scrape, Tmpfs},
    s, stdout, Daemon, PolicyFile,
};

const SINK: &str = "agent_guard_events_dropped_total{stage=\"sink\"}";

#[test]
fn a_full_disk_loses_log_lines_not_enforcement_and_the_loss_is_reported_when_space_returns() {
    if !privileged("a_full_disk_loses_log_lines_not_enforcement_and_the_loss_is_reported_when_space_returns") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Declared before the daemon: dropped (unmounted) after it has stopped.
    let fs = Tmpfs::mount(tmp.path(), "1m");
    let mut d = Daemon::start();
    move_events_log(&mut d, &fs.dir.join("events.jsonl"));
    let l = layout();
    let pol = PolicyFile::for_probe("full").read([&l.ws]).write_to(d.dir.path());
    let secret = s(&l.outside.join("secret.txt"));
    let ok = s(&l.ws.join("ok.txt"));
    let probe_pair = |name: &str| {
        let denied = d.probe_run(&pol, &format!("{name}-denied"), &["read", &secret]);
        assert!(!denied.status.success() && !stdout(&denied).contains("TOPSECRET"), "denied read: {denied:?}");
        let allowed = d.probe_run(&pol, &format!("{name}-allowed"), &["read", &ok]);
        assert_eq!((allowed.status.code(), stdout(&allowed).trim()), (Some(0), "ok hello"), "allowed read: {allowed:?}");
    };
    probe_pair("before");
    d.wait_for("the first run's end", |e| e["kind"] == "run_end" && e["run_name"] == "before-allowed");
    assert_eq!(metric(&scrape(&d), SINK), Some(0.0));

    let filled = fs.fill("filler");
    eprintln!("tmpfs filled with {filled} bytes");
    let size_full = std::fs::metadata(&d.log).unwrap().len();
    // Enforcement does not depend on the log.
    for i in 0..3 {
        probe_pair(&format!("full-{i}"));
    }
    // Counted while the disk is still full (within a second of the loss).
    let deadline = Instant::now() + Duration::from_secs(10);
    let lost = loop {
        let v = metric(&scrape(&d), SINK).unwrap_or(0.0);
        if v > 0.0 {
            break v;
        }
        assert!(Instant::now() < deadline, "no sink drop counted while the disk is full:\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(100));
    };
    // At most the rest of the log's last page (tmpfs allocates by page) was appended, and
    // never half a line (events() fails on a line that is not JSON).
    let grew = std::fs::metadata(&d.log).unwrap().len() - size_full;
    assert!(grew < 4096, "{grew} bytes written to a full disk");
    d.events();
    assert!(d.stderr().contains("writing events_log"), "{}", d.stderr());

    std::fs::remove_file(fs.dir.join("filler")).unwrap();
    probe_pair("after");
    let ev = d.wait_for("a sink drop and the last run's end", |e| {
        e["kind"] == "run_end" && e["run_name"] == "after-allowed"
    });
    let ev = {
        // The drop report comes within a second of the first successful write.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ev = ev;
        while !ev.iter().any(|e| e["kind"] == "drop" && e["stage"] == "sink") {
            assert!(Instant::now() < deadline, "no drop event with stage sink after space returned: {ev:#?}");
            std::thread::sleep(Duration::from_millis(100));
            ev = d.events();
        }
        ev
    };
    let reported: u64 = ev.iter().filter(|e| e["kind"] == "drop" && e["stage"] == "sink").map(|e| e["count"].as_u64().unwrap()).sum();
    // The last run while the disk was full did not reach the log (the page's slack was long
    // used up); the runs after it did.
    assert!(!ev.iter().any(|e| e["run_name"] == "full-2-allowed"), "{ev:#?}");
    for name in ["after-denied", "after-allowed"] {
        assert!(ev.iter().any(|e| e["kind"] == "run_start" && e["run_name"] == name), "{name}: {ev:#?}");
    }
    let denied_after = ev.iter().find(|e| e["run_name"] == "after-denied" && e["verdict"] == "deny");
    assert!(denied_after.is_some(), "the denial after the outage is logged: {ev:#?}");
    // Every lost event is accounted for, once: the log's drop events and the metric agree.
    let metric_now = metric(&scrape(&d), SINK).unwrap();
    assert!(metric_now >= lost);
    assert_eq!(reported as f64, metric_now, "drop events in the log vs the metric");
    // Six runs while full: a run_start, exec, the denial or the read, exit and run_end each,
    // less the few lines the last page took.
    assert!(reported >= 12, "{reported} events reported lost");
    let st = d.cli(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(st["events_dropped"].as_u64().unwrap() >= reported, "{st:#}");
    // The lines that did not fit were never part of the chain: the log still verifies.
    let o = d.cli(&["log", "verify"]);
    assert!(o.status.success(), "{o:?}");
    drop(d);
    drop(fs);
}
