//! The enforcement scenario suite (tests/src/scenarios.rs) on this host's kernel, against the
//! tracepoint backend. `cargo xtask vm-test` runs the same suite against the lsm backend on
//! Debian kernels under QEMU.
use agent_guard_tests::{require_root, scenarios};

#[test]
fn scenario_suite_on_the_tracepoint_backend() {
    require_root!();
    // auto: this kernel lists bpf among its LSMs but refuses BPF LSM programs.
    let failed = scenarios::run_suite(scenarios::Backend::Tracepoint, scenarios::Backend::Tracepoint, &[]);
    assert!(failed.is_empty(), "failed scenarios: {failed:?} (see the AGSCENARIO lines above)");
}
