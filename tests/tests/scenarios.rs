//! The enforcement scenario suite (tests/src/scenarios.rs) on this host's kernel, against the
//! tracepoint backend. `cargo xtask vm-test` runs the same suite against the lsm, trampoline
//! and tracepoint backends on Debian kernels under QEMU.
use agent_guard_tests::{require_root, scenarios};

#[test]
fn scenario_suite_on_the_tracepoint_backend() {
    require_root!();
    // auto: this kernel lists bpf among its LSMs but refuses BPF LSM programs, and refuses
    // fentry/fexit/fmod_ret programs too (EPERM): tracepoint, with both reasons.
    let failed = scenarios::run_suite(scenarios::Backend::Tracepoint, scenarios::Backend::Tracepoint, &[]);
    assert!(failed.is_empty(), "failed scenarios: {failed:?} (see the AGSCENARIO lines above)");
}

/// `backend = "trampoline"` on a kernel that refuses trampolines: the daemon does not start,
/// and says why in the kernel's words.
#[test]
fn a_forced_trampoline_backend_that_the_kernel_refuses_stops_the_daemon_with_the_reason() {
    require_root!();
    let mut d = agent_guard_tests::Daemon::configure(&agent_guard_tests::binary(), "tramp", "backend = \"trampoline\"");
    if d.try_start().is_ok() {
        // A kernel that runs fmod_ret programs (not the development machines'): the VM suite covers it.
        let o = d.cli(&["status", "--json"]);
        assert!(String::from_utf8_lossy(&o.stdout).contains("\"backend\":\"trampoline\""), "{o:?}");
        return;
    }
    let err = d.stderr();
    assert!(
        err.contains("backend = \"trampoline\", but this kernel refuses fmod_ret programs on the security_* functions")
            && err.contains("BPF_PROG_LOAD"),
        "{err}"
    );
}
