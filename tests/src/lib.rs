//! Helpers for the integration tests: a real `agent-guard daemon` with a temporary config,
//! its own cgroup root and log, stopped and cleaned up on drop.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod daemons;
pub mod scenarios;
pub mod soak;
pub mod reliability;
pub mod users;

/// True when privileged tests can run. Under CI=true a missing privilege is a failure;
/// elsewhere the test prints why it skips.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let why = match (root, btf) {
        (true, true) => return true,
        (false, _) => "not root (loading eBPF programs and creating cgroups need root)",
        (true, false) => "the kernel has no BTF (/sys/kernel/btf/vmlinux)",
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: CI=true and {why}");
    }
    eprintln!("skip {test}: {why}");
    false
}

/// The agent-guard binary under test: AGENT_GUARD_BIN, or the workspace's target/debug one.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENT_GUARD_BIN") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/agent-guard");
    assert!(p.exists(), "{} is missing: build it first (cargo build -p agent-guard), or run `cargo xtask test`", p.display());
    p
}

pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .expect("a cgroup2 mount")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
    pub cgroup_root: PathBuf,
    pub bpffs_dir: PathBuf,
    child: Child,
    /// Whether `child` is running (not yet reaped: its pid is still ours to signal).
    alive: bool,
}

/// Writes `DIR/config.toml` for a daemon of its own: socket, log, state and policy_dir in
/// `dir`, cgroup root and bpffs directory named `name`, metrics on an ephemeral loopback port
/// (daemons of tests running side by side each get one), plus `extra` (TOML lines, which
/// may set policy_dir or metrics_listen instead). Returns the config's path.
pub fn write_config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let config = dir.join("config.toml");
    let policy_dir =
        if extra.contains("policy_dir") { String::new() } else { format!("policy_dir = \"{}/policies\"\n", dir.display()) };
    let metrics = if extra.contains("metrics_listen") { "" } else { "metrics_listen = \"127.0.0.1:0\"\n" };
    std::fs::write(
        &config,
        format!(
            "control_socket = \"{d}/control.sock\"\nevents_log = \"{d}/events.jsonl\"\ncgroup_root = \"{name}\"\n\
             bpffs_dir = \"/sys/fs/bpf/{name}\"\nstate_dir = \"{d}/state\"\n{policy_dir}{metrics}{extra}\n",
            d = dir.display(),
        ),
    )
    .unwrap();
    config
}

fn spawn_daemon(config: &Path, stderr: &Path) -> Child {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(stderr).unwrap();
    Command::new(binary())
        .args(["--config", config.to_str().unwrap(), "daemon"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

impl Daemon {
    /// Starts a daemon with a config of its own and waits until it is ready.
    pub fn start() -> Daemon {
        Self::start_with("")
    }

    /// Starts a daemon whose config also holds `extra` (TOML lines).
    pub fn start_with(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("agent-guard-test-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let config = write_config(dir.path(), &name, extra);
        let log = dir.path().join("events.jsonl");
        let child = spawn_daemon(&config, &dir.path().join("daemon.stderr"));
        let mut d = Daemon {
            cgroup_root: cgroup2_mount().join(&name),
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/{name}")),
            dir,
            config,
            log,
            child,
            alive: true,
        };
        d.wait_ready();
        d
    }

    /// SIGKILLs the daemon (as a crash would) and reaps it.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&mut self, sig: i32) {
        if self.alive {
            // SAFETY: plain kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(self.child.id() as i32, sig) };
            let _ = self.child.wait();
            self.alive = false;
        }
    }

    /// SIGTERMs the daemon and waits until it exits.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Starts the daemon again with the same config (after `kill9` or `stop`); returns how
    /// long it took to be ready. Its stderr goes on after the earlier daemon's.
    pub fn restart(&mut self) -> Duration {
        let t = Instant::now();
        let log = self.dir.path().join("daemon.stderr");
        let before = std::fs::read_to_string(&log).unwrap_or_default();
        std::fs::write(&log, "").unwrap();
        std::fs::write(self.dir.path().join("daemon.stderr.before"), before).unwrap();
        self.signal(libc::SIGTERM);
        self.child = spawn_daemon(&self.config, &log);
        self.alive = true;
        self.wait_ready();
        t.elapsed()
    }

    /// The links pinned under this daemon's bpffs_dir.
    pub fn pinned_links(&self) -> Vec<String> {
        let mut v = Vec::new();
        for state in std::fs::read_dir(&self.bpffs_dir).into_iter().flatten().flatten() {
            for l in std::fs::read_dir(state.path().join("links")).into_iter().flatten().flatten() {
                v.push(l.file_name().to_string_lossy().into_owned());
            }
        }
        v.sort();
        v
    }

    fn wait_ready(&mut self) {
        // AGENT_GUARD_READY_SECS: slower machines (the VM matrix under TCG) wait longer.
        let secs = std::env::var("AGENT_GUARD_READY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let stderr = self.dir.path().join("daemon.stderr");
        loop {
            let text = std::fs::read_to_string(&stderr).unwrap_or_default();
            if text.contains("ready in") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daemon exited ({status}) before it was ready:\n{text}");
            }
            assert!(Instant::now() < deadline, "daemon not ready after {secs} s:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.stderr")).unwrap_or_default()
    }

    /// `agent-guard run ARGS...` against this daemon.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `agent-guard ARGS...` (any subcommand) against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The command `agent-guard --config C ARGS...`, to adjust before running it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(binary());
        c.arg("--config").arg(&self.config).args(args).stdin(Stdio::null());
        c
    }

    /// `agent-guard run ARGS...` in the background (stdout and stderr to files in the
    /// daemon's directory); the guard kills what is left of the run when dropped.
    pub fn spawn_run(&self, args: &[&str]) -> BackgroundRun {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let out = std::fs::File::create(self.dir.path().join(format!("run-{n}.out"))).unwrap();
        let err = std::fs::File::create(self.dir.path().join(format!("run-{n}.err"))).unwrap();
        let child = self.command(&[&["run"], args].concat()).stdout(out).stderr(err).spawn().unwrap();
        BackgroundRun { child: Some(child), cgroup: None, stderr: self.dir.path().join(format!("run-{n}.err")) }
    }

    /// The daemon's pid (to signal it, e.g. SIGHUP).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The policy_dir of this daemon's config (not created by the daemon).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// Writes a policy file named NAME.toml in the daemon's temporary directory.
    pub fn write_policy(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Runs the probe (tests/src/bin/agprobe.rs) under the policy file, as a run named `name`.
    pub fn probe_run(&self, policy: &Path, name: &str, args: &[&str]) -> Output {
        let probe = probe();
        let mut v = vec!["--policy", policy.to_str().unwrap(), "--name", name, "--", probe.to_str().unwrap()];
        v.extend_from_slice(args);
        self.run(&v)
    }

    /// Every event written so far.
    /// A line the daemon is still writing (no newline yet) is left for the next read.
    pub fn events(&self) -> Vec<Value> {
        let Ok(text) = std::fs::read_to_string(&self.log) else { return vec![] };
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i + 1],
            None => "",
        };
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("every line of the log is JSON: {e}: {l}")))
            .collect()
    }

    /// Waits until `pred` holds for some event, and returns all events.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ev = self.events();
            if ev.iter().any(&pred) {
                return ev;
            }
            assert!(Instant::now() < deadline, "no event {what} after 20 s; log:\n{ev:#?}\ndaemon:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // A test that left a run behind also left the programs pinned: remove them.
        if self.bpffs_dir.exists() {
            let _ = self.cli(&["daemon", "--uninstall"]);
        }
        let _ = std::fs::remove_dir(&self.cgroup_root);
    }
}

/// An `agent-guard run` started in the background. On drop, whatever is left of it goes:
/// its cgroup (once known) is killed and removed, and the launcher, our child, is killed by
/// pid and reaped.
pub struct BackgroundRun {
    child: Option<Child>,
    /// The run's cgroup directory, once the test knows it.
    pub cgroup: Option<PathBuf>,
    stderr: PathBuf,
}

impl BackgroundRun {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits up to `timeout` for the launcher to exit; its shell-style status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.child = None;
                return Some(s.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for BackgroundRun {
    fn drop(&mut self) {
        if let Some(dir) = &self.cgroup {
            if dir.exists() {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                let deadline = Instant::now() + Duration::from_secs(10);
                while cgroup_populated(dir) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                remove_cgroup_tree(dir);
            }
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// cgroup.events says `populated 1`.
pub fn cgroup_populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|t| t.lines().any(|l| l == "populated 1"))
}

/// cgroup.events says `frozen 1`.
pub fn cgroup_frozen(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|t| t.lines().any(|l| l == "frozen 1"))
}

/// Removes an empty cgroup and its empty children, deepest first.
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The pids in a cgroup (not its children).
pub fn cgroup_procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// stderr of a finished command, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Makes `cmd` run as `uid`/`gid` with exactly the supplementary `groups` (set in the child
/// before exec, in the order setgroups, setgid, setuid, which dropping root needs).
pub fn as_user(cmd: &mut Command, uid: u32, gid: u32, groups: &[u32]) {
    use std::os::unix::process::CommandExt;
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: the closure only makes async-signal-safe syscalls on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The probe program the enforcement tests run inside runs (tests/src/bin/agprobe.rs):
/// AGENT_GUARD_PROBE, or the workspace's target/debug one.
pub fn probe() -> PathBuf {
    let p = std::env::var_os("AGENT_GUARD_PROBE")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/agprobe"), PathBuf::from);
    // Canonical, because policies name the path the kernel resolves.
    p.canonicalize().unwrap_or_else(|e| panic!("{}: {e} (cargo builds it for the tests)", p.display()))
}

/// What the probe needs to start under a policy: its libraries, /proc, /dev/null and its
/// own directory.
pub fn probe_reads() -> Vec<String> {
    let mut v: Vec<String> =
        ["/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/proc", "/dev/null"].iter().map(|s| s.to_string()).collect();
    v.push(probe().parent().unwrap().display().to_string());
    v
}

/// Strings as the inside of a TOML array: `"a", "b"`.
pub fn toml_items<S: AsRef<str>>(items: &[S]) -> String {
    items.iter().map(|i| format!("{:?}", i.as_ref())).collect::<Vec<_>>().join(", ")
}

/// A temporary tree for enforcement tests.
pub struct Layout {
    pub tmp: tempfile::TempDir,
    /// Readable tree: ok.txt ("hello"), .env, out/.
    pub ws: PathBuf,
    /// Outside every rule: secret.txt ("TOPSECRET").
    pub outside: PathBuf,
}

pub fn layout() -> Layout {
    let tmp = tempfile::Builder::new().prefix("ag-enf-").tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(ws.join("out")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(ws.join("ok.txt"), "hello\n").unwrap();
    std::fs::write(ws.join(".env"), "TOKEN=envsecret\n").unwrap();
    std::fs::write(outside.join("secret.txt"), "TOPSECRET\n").unwrap();
    Layout { tmp, ws, outside }
}

/// A path as text.
pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// stdout of a finished command, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The shell-style status of `agent-guard run`: the command's code, 128+N for signal N.
pub fn status(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// The run id printed by a `run_start` event for `name`.
pub fn run_id(events: &[Value], name: &str) -> String {
    events
        .iter()
        .find(|e| e["kind"] == "run_start" && e["run_name"] == name)
        .and_then(|e| e["run"].as_str())
        .unwrap_or_else(|| panic!("no run_start for {name}: {events:#?}"))
        .to_string()
}
