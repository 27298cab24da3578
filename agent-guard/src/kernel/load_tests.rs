//! Unit tests of kernel::load.
use super::*;

#[test]
fn a_tracepoint_still_holding_the_last_runs_program_is_retried() {
    let err = |errno| LoadError::Program {
        name: "ag_enter_openat (syscalls:sys_enter_openat)".into(),
        source: aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: std::io::Error::from_raw_os_error(errno),
        }),
    };
    assert!(is_eexist(&err(libc::EEXIST)));
    assert!(!is_eexist(&err(libc::EPERM)));
    assert!(!is_eexist(&LoadError::MissingProgram("x".into())));
}

#[test]
fn state_names_carry_the_managed_root() {
    assert_eq!(state_root(&state_name(4242, 4096)), Some(4242));
    assert_eq!(state_root("v1-abc-root7-ring8"), Some(7));
    assert_eq!(state_root("something-else"), None);
}
