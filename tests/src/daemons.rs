//! Daemons started side by side (spawned, then waited for), and a daemon whose managed cgroup
//! root is delegated to a test user, so that user can start runs itself.
use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::Ordering,
};

use crate::{cgroup2_mount, BackgroundRun, Daemon, SEQ};

impl Daemon {
    /// A daemon (not started) whose first process waits in the frozen cgroup of `gate` and
    /// starts only when the gate opens: daemons spawned behind one gate start at the same
    /// moment. Call `ready` after `gate.open_when`.
    pub fn spawn_behind(gate: &Gate, extra: &str) -> Daemon {
        let mut d = Daemon::configure(&crate::binary(), "agent-guard-test", extra);
        let stderr = std::fs::File::create(d.dir.path().join("daemon.stderr")).unwrap();
        // The shell freezes as it enters the gate's cgroup, then execs the daemon (same pid)
        // once thawed.
        let child = Command::new("sh")
            .args(["-c", "echo 0 > \"$1/cgroup.procs\" && exec \"$2\" --config \"$3\" daemon", "sh"])
            .arg(&gate.dir)
            .arg(&d.bin)
            .arg(&d.config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        d.spawned = std::time::Instant::now();
        d.child = Some(child);
        d
    }

    /// A daemon (not started) with the cgroup root `NAME/sub` and bpffs dir `NAME`.
    fn configure_below(sub: &str, extra: &str) -> Daemon {
        let mut d = Daemon::configure(&crate::binary(), "agent-guard-test", extra);
        let name = d.bpffs_dir.file_name().unwrap().to_string_lossy().into_owned();
        let root = format!("{name}/{sub}");
        let text = std::fs::read_to_string(&d.config).unwrap();
        std::fs::write(&d.config, text.replace(&format!("cgroup_root = \"{name}\""), &format!("cgroup_root = \"{root}\""))).unwrap();
        d.cgroup_root = cgroup2_mount().join(&root);
        d
    }

    /// Waits until a spawned daemon is ready (panics with its stderr if it exits first).
    pub fn ready(&mut self) {
        self.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A frozen cgroup of the test's own that processes wait in until `open` thaws it. Removed on
/// drop (drop it after the processes are gone).
pub struct Gate {
    dir: PathBuf,
}

impl Gate {
    pub fn new() -> Gate {
        let dir = cgroup2_mount().join(format!("agent-guard-test-gate-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup.freeze"), "1").unwrap();
        Gate { dir }
    }

    /// Waits until `n` processes are inside, frozen, then thaws them all at once.
    pub fn open_when(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let inside = crate::cgroup_procs(&self.dir).len();
            let events = std::fs::read_to_string(self.dir.join("cgroup.events")).unwrap_or_default();
            if inside >= n && events.lines().any(|l| l == "frozen 1") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{inside} of {n} processes at the gate after 30 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::fs::write(self.dir.join("cgroup.freeze"), "0").unwrap();
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A daemon whose managed root is `<mount>/NAME/runs`, with `<mount>/NAME/launch` beside it
/// for launchers: given to a user (`delegate`), that user's `agent-guard run` started in
/// `launch` can create run cgroups and move into them (cgroup v2 delegation: write access to
/// the managed root and to the common ancestor's cgroup.procs). Removed on drop, after the
/// daemon.
pub struct Delegated {
    daemon: Option<Daemon>,
    top: PathBuf,
    launch: PathBuf,
}

impl Delegated {
    pub fn start(extra: &str) -> Delegated {
        let mut d = Daemon::configure_below("runs", extra);
        let top = d.cgroup_root.parent().unwrap().to_path_buf();
        let launch = top.join("launch");
        d.spawn().unwrap();
        // The guard first: a daemon that fails to start is cleaned up in order too.
        let mut guard = Delegated { daemon: Some(d), top, launch };
        guard.daemon.as_mut().unwrap().ready();
        std::fs::create_dir(&guard.launch).unwrap();
        guard
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("running")
    }

    /// Lets `uid`/`gid` create runs below the managed root and move its launchers into them.
    pub fn delegate(&self, uid: u32, gid: u32) {
        let root = &self.daemon().cgroup_root;
        for p in [root.as_path(), &self.top.join("cgroup.procs")] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        }
    }

    /// Makes `cmd` start in the launch cgroup (moved there before it execs, while still root).
    pub fn in_launch(&self, cmd: &mut Command) {
        let procs = CString::new(self.launch.join("cgroup.procs").to_str().unwrap()).unwrap();
        // SAFETY: open, write and close are async-signal-safe; the path is prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(err)
                }
            });
        }
    }

    /// `cmd` (an `agent-guard run`) started in the background from the launch cgroup; its
    /// stderr is kept in the daemon's directory.
    pub fn spawn_run(&self, mut cmd: Command) -> BackgroundRun {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = self.daemon().dir.path();
        let stderr = dir.join(format!("run-{n}.err"));
        cmd.stdout(std::fs::File::create(dir.join(format!("run-{n}.out"))).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        self.in_launch(&mut cmd);
        BackgroundRun { child: Some(cmd.spawn().unwrap()), cgroup: None, stderr }
    }

    pub fn launch_dir(&self) -> &Path {
        &self.launch
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let _ = std::fs::remove_dir(&self.launch);
        let _ = std::fs::remove_dir(&self.top);
    }
}
