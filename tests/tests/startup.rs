//! Start-up races: daemons that start at once on a host where tracefs is not mounted all
//! mount it (or find it mounted by another) and become ready.
use std::{ffi::CString, path::Path};

use agent_guard_tests::{daemons::Gate, privileged, Daemon};

/// tracefs mounts at /sys/kernel/tracing in this thread's mount namespace.
fn tracefs_mounts() -> usize {
    std::fs::read_to_string("/proc/thread-self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split_once(" - ").is_some_and(|(left, right)| {
                left.split_whitespace().nth(4) == Some("/sys/kernel/tracing") && right.starts_with("tracefs ")
            })
        })
        .count()
}

/// Moves the calling thread (and the processes it spawns from now on) into a private mount
/// namespace of its own, as `unshare -m --propagation private` does: nothing it mounts or
/// unmounts is seen outside.
fn private_mount_namespace() {
    // SAFETY: plain syscalls; CLONE_NEWNS with a per-thread fs_struct (CLONE_FS) affects only
    // this thread, which the test spawned for it.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS), 0, "unshare: {}", std::io::Error::last_os_error());
        let root = CString::new("/").unwrap();
        let rc = libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null());
        assert_eq!(rc, 0, "making / private: {}", std::io::Error::last_os_error());
    }
}

/// Unmounts every tracefs at /sys/kernel/tracing in this (private) namespace.
fn unmount_tracefs() {
    let dir = CString::new("/sys/kernel/tracing").unwrap();
    while tracefs_mounts() > 0 {
        // SAFETY: umount2 on a path in our own private mount namespace.
        let rc = unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
        assert_eq!(rc, 0, "umount /sys/kernel/tracing: {}", std::io::Error::last_os_error());
    }
}

#[test]
fn three_daemons_starting_at_once_without_tracefs_all_become_ready() {
    if !privileged("startup_race") {
        return;
    }
    assert!(Path::new("/sys/kernel/tracing").is_dir(), "no /sys/kernel/tracing directory");
    // Everything in a thread of our own: the mount namespace is per thread until it spawns.
    std::thread::spawn(|| {
        private_mount_namespace();
        // A few rounds: the race is between three mounts, and each round is another chance
        // for two of them to collide.
        for round in 0..3 {
            unmount_tracefs();
            assert_eq!(tracefs_mounts(), 0);
            // Held in a frozen cgroup until all three are there, then let go together.
            let gate = Gate::new();
            let mut daemons: Vec<Daemon> = (0..3).map(|_| Daemon::spawn_behind(&gate, "")).collect();
            gate.open_when(3);
            for (i, d) in daemons.iter_mut().enumerate() {
                d.ready();
                let err = d.stderr();
                assert!(err.contains("ready in"), "round {round}, daemon {i}:\n{err}");
            }
            let mounted = tracefs_mounts();
            assert!(mounted >= 1, "round {round}: the daemons are ready but tracefs is not mounted here");
            let mounting = daemons.iter().filter(|d| d.stderr().contains("mounting tracefs")).count();
            let lost = daemons.iter().filter(|d| d.stderr().contains("was mounted meanwhile")).count();
            eprintln!(
                "round {round}: 3 daemons ready; {mounting} tried to mount tracefs, {lost} of them lost the race, {mounted} mount(s) now"
            );
            assert!(mounting >= 1, "round {round}: no daemon mounted tracefs, yet it was unmounted");
            // Each serves its own control socket.
            for d in &daemons {
                let out = d.cli(&["status"]);
                assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}
