//! The event log as a sink: size-based rotation that loses no line, and reopening on SIGHUP
//! (what logrotate needs).
use std::path::{Path, PathBuf};

use agent_guard_tests::{privileged, Daemon};
use serde_json::Value;

/// events.jsonl and its rotated files, oldest first.
fn log_files(log: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let base = log.file_name()?.to_str()?;
            if name == base {
                return Some((0, p));
            }
            name.strip_prefix(&format!("{base}."))?.parse::<u32>().ok().map(|n| (n, p))
        })
        .collect();
    v.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    v.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn the_log_rotates_by_size_without_losing_a_line_and_reopens_on_sighup() {
    if !privileged("the_log_rotates_by_size_without_losing_a_line_and_reopens_on_sighup") {
        return;
    }
    let d = Daemon::start_with("events_log_max_bytes = 200000\nevents_log_keep = 100");
    let out = d.run(&["--name", "many", "--", "sh", "-c", "for i in $(seq 150); do cat /etc/hostname >/dev/null; done"]);
    assert!(out.status.success(), "{out:?}");
    d.wait_for("run_end", |e| e["kind"] == "run_end" && e["run_name"] == "many");
    let files = log_files(&d.log);
    assert!(files.len() > 3, "rotated: {files:?}");
    let mut cats = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.len() <= 200000, "{} has {} bytes", f.display(), text.len());
        for line in text.lines() {
            let e: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{}: {err}: {line}", f.display()));
            if e["kind"] == "exec" && e["run_name"] == "many" && e["argv"][0] == "cat" {
                cats += 1;
            }
        }
    }
    assert_eq!(cats, 150, "every exec is in some file");

    // logrotate moves the file away and sends SIGHUP: the daemon writes a new one.
    let moved = d.log.with_extension("moved");
    std::fs::rename(&d.log, &moved).unwrap();
    // SAFETY: SIGHUP to our own child daemon, by pid.
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !d.stderr().contains("events_log reopened") {
        assert!(std::time::Instant::now() < deadline, "{}", d.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = d.run(&["--name", "after", "--", "true"]);
    assert!(out.status.success());
    d.wait_for("run_start in the new file", |e| e["kind"] == "run_start" && e["run_name"] == "after");
    assert!(!std::fs::read_to_string(&moved).unwrap().contains("\"after\""));
}
