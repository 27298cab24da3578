//! A short soak with chaos (tests/src/soak.rs: what it does and checks): about 240 runs
//! through the real binary, killed, frozen, held and denied ones among them, a flooding run,
//! the policy re-applied every 100 ms, and the daemon SIGKILLed three times (between batches of
//! runs) and restarted. The long
//! one (2,000 runs) is `cargo xtask soak`.
use std::time::Duration;

use agent_guard_tests::{privileged, soak::{soak, SoakConfig}};

#[test]
fn soak_with_chaos_leaves_nothing_behind_and_loses_no_verdict() {
    if !privileged("soak_with_chaos_leaves_nothing_behind_and_loses_no_verdict") {
        return;
    }
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let cfg = SoakConfig {
        runs: env("AG_SOAK_RUNS").unwrap_or(240) as usize,
        max_time: Duration::from_secs(env("AG_SOAK_SECS").unwrap_or(100)),
        daemon_kills: env("AG_SOAK_DAEMON_KILLS").unwrap_or(3) as usize,
        // Kills among starting and ending runs lose a run_end now and then (see the README's
        // Reliability notes): the long soak does them, this one kills between batches.
        kill_in_flight: env("AG_SOAK_KILL_IN_FLIGHT").unwrap_or(0) == 1,
        flood_pause_ms: env("AG_SOAK_FLOOD_PAUSE_MS").unwrap_or(2),
        seed: env("AG_SOAK_SEED").unwrap_or_else(|| u64::from(std::process::id()) * 0x9e37_79b9),
    };
    eprintln!("soak: {cfg:?}");
    let rep = soak(&cfg);
    // Under the time cap CI's machine may not reach every run; it must get most of the way.
    assert!(rep.runs >= cfg.runs as u64 * 3 / 4, "only {} runs in {:?}", rep.runs, rep.elapsed);
    assert_eq!(rep.daemon_kills, cfg.daemon_kills as u64);
}

/// Found by the long soak: a run that ended while the daemon was down (its launcher's `end`
/// found no daemon) had no `run_end` at all; the restarted daemon dropped its record quietly.
#[test]
fn a_run_that_ends_while_the_daemon_is_down_still_gets_its_run_end() {
    if !privileged("a_run_that_ends_while_the_daemon_is_down_still_gets_its_run_end") {
        return;
    }
    let mut d = agent_guard_tests::Daemon::start();
    let probe = agent_guard_tests::probe();
    let mut r = d.spawn_run(&["--name", "gone", "--", probe.to_str().unwrap(), "sleep", "0.5"]);
    d.wait_for("run_start", |e| e["kind"] == "run_start" && e["run_name"] == "gone");
    d.kill9();
    assert_eq!(r.wait_exit(Duration::from_secs(15)), Some(0), "{}", r.stderr());
    d.restart();
    let ev = d.wait_for("run_end of the run that ended meanwhile", |e| e["kind"] == "run_end" && e["run_name"] == "gone");
    let end = ev.iter().find(|e| e["kind"] == "run_end" && e["run_name"] == "gone").unwrap();
    assert!(end["exit_status"].is_null(), "the status is not known: {end}");
    // After the run's own events (its exit, read from the ring's backlog).
    let pos = |k: &str| ev.iter().position(|e| e["kind"] == k && e["run_name"] == "gone");
    assert!(pos("exit") < pos("run_end"), "{ev:#?}");
    assert!(agent_guard_tests::reliability::leftovers(&d).is_empty());
}
