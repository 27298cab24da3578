//! Runs the enforcement scenario suite (tests/src/scenarios.rs) against a daemon it starts
//! with the given backend, one `AGSCENARIO` line per scenario. The initramfs of `cargo xtask
//! vm-test` runs it inside each VM kernel.
//!
//! Usage: agscenarios --backend lsm|tracepoint [--auto lsm|tracepoint] [SCENARIO]...
//! (`--auto`: what `backend = "auto"` must pick here; default the backend under test).
//! The daemon binary is AGENT_GUARD_BIN (default /ag/agent-guard next to this program's
//! directory layout in the VM, else target/debug), the probe AGENT_GUARD_PROBE.
use std::process::ExitCode;

use agent_guard_tests::scenarios::{run_suite, Backend};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut backend = None;
    let mut auto = None;
    let mut only = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--backend" => backend = args.next().as_deref().and_then(Backend::parse),
            "--auto" => auto = args.next().as_deref().and_then(Backend::parse),
            _ => only.push(a),
        }
    }
    let Some(backend) = backend else {
        eprintln!("usage: agscenarios --backend lsm|tracepoint [--auto lsm|tracepoint] [SCENARIO]...");
        return ExitCode::from(2);
    };
    // Next to this program unless told otherwise (the VM's /ag holds all three binaries).
    if let Ok(me) = std::env::current_exe() {
        let dir = me.parent().map(|d| d.to_path_buf()).unwrap_or_default();
        for (var, name) in [("AGENT_GUARD_BIN", "agent-guard"), ("AGENT_GUARD_PROBE", "agprobe")] {
            if std::env::var_os(var).is_none() && dir.join(name).exists() {
                // SAFETY: single-threaded at this point.
                unsafe { std::env::set_var(var, dir.join(name)) };
            }
        }
    }
    if run_suite(backend, auto.unwrap_or(backend), &only).is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
