//! `cargo xtask soak`: the long soak with chaos (tests/src/soak.rs), through the same test as
//! the short one in `cargo xtask test` (tests/tests/soak.rs), with more runs, more daemon
//! kills and a time cap. Not part of `cargo xtask test`.
use std::process::Command;

use anyhow::{bail, Result};

pub struct Soak {
    pub runs: u64,
    pub minutes: f64,
    pub daemon_kills: u64,
    pub flood_pause_ms: u64,
    pub seed: Option<u64>,
    /// Kill the daemon only between batches of runs (as the short soak does).
    pub quiet_kills: bool,
}

/// Runs tests/tests/soak.rs with the soak's size in its environment; the report (runs,
/// reloads, kills, RSS and fds before and after) is printed on stderr.
pub fn soak(mut test: Command, s: &Soak) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak needs root (it loads eBPF programs and creates cgroups)");
    }
    test.args(["test", "--package", "agent-guard-tests", "--test", "soak", "--", "--nocapture"])
        .env("AG_SOAK_RUNS", s.runs.to_string())
        .env("AG_SOAK_SECS", ((s.minutes * 60.0) as u64).max(1).to_string())
        .env("AG_SOAK_DAEMON_KILLS", s.daemon_kills.to_string())
        .env("AG_SOAK_FLOOD_PAUSE_MS", s.flood_pause_ms.to_string())
        .env("AG_SOAK_KILL_IN_FLIGHT", if s.quiet_kills { "0" } else { "1" });
    if let Some(seed) = s.seed {
        test.env("AG_SOAK_SEED", seed.to_string());
    }
    let status = test.status()?;
    if !status.success() {
        bail!("soak failed: {status}");
    }
    Ok(())
}
