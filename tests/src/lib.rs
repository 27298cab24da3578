//! Helpers for the integration tests: a real `agent-guard daemon` with a temporary config,
//! its own cgroup root and log, stopped and cleaned up on drop (`cargo xtask bench` starts
//! its daemons with the same launcher); policy files; processes started in a cgroup.
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod daemons;
pub mod dns;
pub mod flood;
pub mod scenarios;
pub mod scenarios_dns;
pub mod scenarios_tripwires;
pub mod soak;
pub mod reliability;
pub mod users;

/// Why privileged tests cannot run here, or None when they can.
pub fn missing_privilege() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    match (root, btf) {
        (true, true) => None,
        (false, _) => Some("not root (loading eBPF programs and creating cgroups need root)"),
        (true, false) => Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)"),
    }
}

/// True when privileged tests can run. Under CI=true a missing privilege is a failure;
/// elsewhere the test prints why it skips. Tests use [`require_root!`], which names them.
pub fn privileged(test: &str) -> bool {
    match missing_privilege() {
        None => true,
        Some(why) => skip(test, why),
    }
}

/// A test that cannot run: under CI=true it fails (panics), elsewhere it prints
/// `skip TEST: WHY`. Returns false, for `if !...`.
pub fn skip(test: &str, why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: CI=true and {why}");
    }
    eprintln!("skip {test}: {why}");
    false
}

/// The name of the enclosing function (a test's name), without its module path.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn f() {}
        $crate::function_name(std::any::type_name_of_val(&f))
    }};
}

/// `a::b::the_test::f` (or `...::the_test::{{closure}}::f`) -> `the_test`.
#[doc(hidden)]
pub fn function_name(path: &'static str) -> &'static str {
    let mut p = path.strip_suffix("::f").unwrap_or(path);
    while let Some(outer) = p.strip_suffix("::{{closure}}") {
        p = outer;
    }
    p.rsplit("::").next().unwrap_or(p)
}

/// Skips the enclosing test (returns from it) with a printed reason, or fails it under
/// CI=true: `skip_test!("{tool} is not installed")`.
#[macro_export]
macro_rules! skip_test {
    ($($why:tt)+) => {{
        $crate::skip($crate::test_name!(), &format!($($why)+));
        return;
    }};
}

/// Runs the rest of the enclosing test only if `cond` holds; otherwise skips it (a failure
/// under CI=true) with the reason: `require!(abi >= 3, "Landlock ABI {abi}, the test needs 3")`.
#[macro_export]
macro_rules! require {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            $crate::skip_test!($($why)+);
        }
    };
}

/// Runs the rest of the enclosing test only as root on a kernel with BTF; otherwise skips it
/// with the reason (a failure under CI=true), naming the test.
#[macro_export]
macro_rules! require_root {
    () => {
        if let Some(why) = $crate::missing_privilege() {
            $crate::skip_test!("{why}");
        }
    };
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

/// An `agent-guard daemon` with a config of its own (see [`write_config`]) in a temporary
/// directory, which also holds its stderr (`daemon.stderr`). On drop it is stopped, runs left
/// under its cgroup root are killed, and its pins, run cgroups and root are removed.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
    pub cgroup_root: PathBuf,
    pub bpffs_dir: PathBuf,
    bin: PathBuf,
    env: Vec<(String, String)>,
    /// The running daemon (not yet reaped: its pid is still ours to signal).
    child: Option<Child>,
    spawned: Instant,
}

/// A daemon that did not get ready: it could not be spawned, it exited (`status`), or it was
/// not ready in time (then it was killed).
#[derive(Debug)]
pub struct NotReady {
    pub status: Option<ExitStatus>,
    /// What it wrote on stderr.
    pub stderr: String,
    why: String,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:\n{}", self.why, self.stderr)
    }
}

impl std::error::Error for NotReady {}

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
            "control_socket = \"{d}/control.sock\"\ntask_socket = \"{d}/task.sock\"\nevents_log = \"{d}/events.jsonl\"\ncgroup_root = \"{name}\"\n\
             bpffs_dir = \"/sys/fs/bpf/{name}\"\nstate_dir = \"{d}/state\"\ndata_dir = \"{d}/data\"\n{policy_dir}{metrics}{extra}\n",
            d = dir.display(),
        ),
    )
    .unwrap();
    config
}

impl Daemon {
    /// Starts a daemon with a config of its own and waits until it is ready.
    pub fn start() -> Daemon {
        Self::start_with("")
    }

    /// Starts a daemon whose config also holds `extra` (TOML lines).
    pub fn start_with(extra: &str) -> Daemon {
        let mut d = Daemon::configure(&binary(), "agent-guard-test", extra);
        d.try_start().unwrap_or_else(|e| panic!("{e}"));
        d
    }

    /// A daemon of `bin` whose config also holds `extra`, its cgroup root and bpffs directory
    /// named PREFIX-PID-N; not started yet.
    pub fn configure(bin: &Path, prefix: &str, extra: &str) -> Daemon {
        let dir = daemon_dir();
        let name = format!("{prefix}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let config = write_config(dir.path(), &name, extra);
        Daemon {
            log: dir.path().join("events.jsonl"),
            cgroup_root: cgroup2_mount().join(&name),
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/{name}")),
            dir,
            config,
            bin: bin.to_path_buf(),
            env: Vec::new(),
            child: None,
            spawned: Instant::now(),
        }
    }

    /// Sets an environment variable for the daemons started from now on.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Daemon {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the daemon without waiting for it. The stderr of the one before, if any, goes
    /// to `daemon.stderr.before`.
    pub fn spawn(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            return Err(std::io::Error::other("the daemon is already running"));
        }
        let path = self.dir.path().join("daemon.stderr");
        if path.exists() {
            std::fs::rename(&path, self.dir.path().join("daemon.stderr.before"))?;
        }
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let mut c = Command::new(&self.bin);
        c.arg("--config").arg(&self.config).arg("daemon").stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.spawned = Instant::now();
        self.child = Some(c.spawn()?);
        Ok(())
    }

    /// Starts the daemon and waits until it is ready; the time from the spawn to its
    /// "ready in" line. A daemon not ready in time (AGENT_GUARD_READY_SECS, default 60) is killed.
    pub fn try_start(&mut self) -> Result<Duration, NotReady> {
        if let Err(e) = self.spawn() {
            return Err(NotReady { status: None, stderr: String::new(), why: format!("starting {}: {e}", self.bin.display()) });
        }
        self.wait_ready()
    }

    /// Waits until a spawned daemon is ready (see `try_start`).
    pub fn wait_ready(&mut self) -> Result<Duration, NotReady> {
        // AGENT_GUARD_READY_SECS: slower machines (the VM matrix under TCG) wait longer.
        let secs = std::env::var("AGENT_GUARD_READY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
        let deadline = self.spawned + Duration::from_secs(secs);
        loop {
            // "ready in N ms: ..." (not "Address already in use").
            if self.stderr().split("ready in ").skip(1).any(|rest| rest.starts_with(|c: char| c.is_ascii_digit())) {
                return Ok(self.spawned.elapsed());
            }
            if let Some(status) = self.exited() {
                let why = format!("daemon exited ({status}) before it was ready");
                return Err(NotReady { status: Some(status), stderr: self.stderr(), why });
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(NotReady { status: None, stderr: self.stderr(), why: format!("daemon not ready after {secs} s") });
            }
            // Fine-grained: `cargo xtask bench` reports this time.
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the daemon is running (started, and not seen to exit).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The daemon's exit status, once it has exited by itself (then it is reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// SIGKILLs the daemon (as a crash would) and reaps it.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// Sends `sig` to the daemon and waits until it exits; its exit status (None if it was
    /// not running).
    pub fn signal(&mut self, sig: i32) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, sig) };
        child.wait().ok()
    }

    /// SIGTERMs the daemon and waits until it exits.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Starts the daemon again with the same config (after `kill9` or `stop`; a running one
    /// is stopped first); returns how long it took to be ready. `stderr()` is the new
    /// daemon's, the earlier one's is in `daemon.stderr.before`.
    pub fn restart(&mut self) -> Duration {
        self.stop();
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
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

    /// The run cgroups under the managed root.
    pub fn runs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.cgroup_root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    }

    /// What the running (or last) daemon wrote on stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.stderr")).unwrap_or_default()
    }

    /// `agent-guard run ARGS...` against this daemon.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(&[&["run"], args].concat()).output().unwrap()
    }

    /// `agent-guard ARGS...` (any subcommand) against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The command `agent-guard --config C ARGS...`, to adjust before running it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
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
        self.child.as_ref().expect("the daemon is running").id() as i32
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
        // Runs left behind (a test that failed half-way, an interrupted benchmark): their
        // cgroups are this daemon's, below its own root.
        for run in self.runs() {
            let _ = std::fs::write(run.join("cgroup.kill"), "1");
        }
        self.stop();
        // A test that left a run behind also left the programs pinned: remove them.
        if self.bpffs_dir.exists() {
            let _ = self.cli(&["daemon", "--uninstall"]);
        }
        for run in self.runs() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while cgroup_populated(&run) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            remove_cgroup_tree(&run);
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

/// A test daemon's directory (config, socket, state, data, log): below /run/agent-guard-tests
/// when we may create it, as a deployment keeps them under /run and /var rather than under the
/// /tmp that policies grant runs (a run may never reach a daemon's state, so a granted tree
/// holding it would get carve-outs no real deployment has).
fn daemon_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let base = Path::new("/run/agent-guard-tests");
    if std::fs::create_dir_all(base).is_ok() {
        let _ = std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755));
        if let Ok(d) = tempfile::Builder::new().prefix("d-").tempdir_in(base) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// What the probe needs to start under a policy: its libraries, /proc, /dev/null and its
/// own directory.
pub fn probe_reads() -> Vec<String> {
    let mut v: Vec<String> =
        ["/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/proc", "/dev/null"].iter().map(|s| s.to_string()).collect();
    v.push(probe().parent().unwrap().display().to_string());
    v
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

/// A policy file, built rule by rule:
/// `PolicyFile::new("name").mode("monitor").read(["/usr"]).exec(["/usr/bin/"]).write_to(dir)`.
/// Each list method adds to its list; a section is written only when it has rules.
#[derive(Clone, Debug)]
pub struct PolicyFile {
    name: String,
    mode: Option<String>,
    on_violation: Option<String>,
    read: Vec<String>,
    write: Vec<String>,
    deny: Vec<String>,
    exec: Vec<String>,
    connect: Vec<String>,
    unix: Vec<String>,
    families: Vec<String>,
    listen: Vec<String>,
    syscalls_deny: Vec<String>,
    bind: Vec<String>,
    capabilities: Vec<String>,
    decoy_files: Vec<String>,
    decoy_hosts: Vec<String>,
    /// `[limits]` keys and their TOML values, as written.
    limits: Vec<(String, String)>,
}

fn strings<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> impl Iterator<Item = String> {
    items.into_iter().map(|i| i.as_ref().to_string())
}

fn paths<P: AsRef<Path>>(items: impl IntoIterator<Item = P>) -> impl Iterator<Item = String> {
    items.into_iter().map(|i| i.as_ref().display().to_string())
}

impl PolicyFile {
    pub fn new(name: &str) -> PolicyFile {
        PolicyFile {
            name: name.to_string(),
            mode: None,
            on_violation: None,
            read: vec![],
            write: vec![],
            deny: vec![],
            exec: vec![],
            connect: vec![],
            unix: vec![],
            families: vec![],
            listen: vec![],
            syscalls_deny: vec![],
            bind: vec![],
            capabilities: vec![],
            decoy_files: vec![],
            decoy_hosts: vec![],
            limits: vec![],
        }
    }

    /// A policy that lets the probe start: it reads [`probe_reads`] and may exec the probe.
    pub fn for_probe(name: &str) -> PolicyFile {
        PolicyFile::new(name).read(probe_reads()).exec([probe()])
    }

    /// The probe's policy over a [`layout`]: reads `ws`, writes `ws/out`, denies `ws/.env`.
    pub fn for_workspace(name: &str, l: &Layout) -> PolicyFile {
        PolicyFile::for_probe(name).read([&l.ws]).write([l.ws.join("out")]).deny([l.ws.join(".env")])
    }

    /// `enforce` or `monitor`.
    pub fn mode(mut self, mode: &str) -> PolicyFile {
        self.mode = Some(mode.to_string());
        self
    }

    /// `deny`, `kill` or `freeze`.
    pub fn on_violation(mut self, action: &str) -> PolicyFile {
        self.on_violation = Some(action.to_string());
        self
    }

    /// files.read
    pub fn read<P: AsRef<Path>>(mut self, p: impl IntoIterator<Item = P>) -> PolicyFile {
        self.read.extend(paths(p));
        self
    }

    /// files.write
    pub fn write<P: AsRef<Path>>(mut self, p: impl IntoIterator<Item = P>) -> PolicyFile {
        self.write.extend(paths(p));
        self
    }

    /// files.deny
    pub fn deny<P: AsRef<Path>>(mut self, p: impl IntoIterator<Item = P>) -> PolicyFile {
        self.deny.extend(paths(p));
        self
    }

    /// exec.allow
    pub fn exec<P: AsRef<Path>>(mut self, p: impl IntoIterator<Item = P>) -> PolicyFile {
        self.exec.extend(paths(p));
        self
    }

    /// network.connect: `CIDR:PORT` or `CIDR:LO-HI`.
    pub fn connect<S: AsRef<str>>(mut self, rules: impl IntoIterator<Item = S>) -> PolicyFile {
        self.connect.extend(strings(rules));
        self
    }

    /// network.unix: `/path`, `/dir/` or `@name`.
    pub fn unix<S: AsRef<str>>(mut self, rules: impl IntoIterator<Item = S>) -> PolicyFile {
        self.unix.extend(strings(rules));
        self
    }

    /// network.families: `packet`, `vsock`, `netlink`, `netlink:audit`, ...
    pub fn families<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> PolicyFile {
        self.families.extend(strings(names));
        self
    }

    /// network.listen: `ADDR:PORT` or `ADDR:LO-HI` (CIDRs as connect).
    pub fn listen<S: AsRef<str>>(mut self, rules: impl IntoIterator<Item = S>) -> PolicyFile {
        self.listen.extend(strings(rules));
        self
    }

    /// syscalls.deny
    pub fn syscalls_deny<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> PolicyFile {
        self.syscalls_deny.extend(strings(names));
        self
    }

    /// bind.cgroups: globs relative to the cgroup2 mount.
    pub fn bind<S: AsRef<str>>(mut self, globs: impl IntoIterator<Item = S>) -> PolicyFile {
        self.bind.extend(strings(globs));
        self
    }

    /// process.capabilities: what the command keeps (every other capability is cleared).
    pub fn capabilities<S: AsRef<str>>(mut self, caps: impl IntoIterator<Item = S>) -> PolicyFile {
        self.capabilities.extend(strings(caps));
        self
    }

    /// decoys.files
    pub fn decoy_files<P: AsRef<Path>>(mut self, p: impl IntoIterator<Item = P>) -> PolicyFile {
        self.decoy_files.extend(paths(p));
        self
    }

    /// decoys.hosts: `IP:PORT`.
    pub fn decoy_hosts<S: AsRef<str>>(mut self, hosts: impl IntoIterator<Item = S>) -> PolicyFile {
        self.decoy_hosts.extend(strings(hosts));
        self
    }

    /// A `[limits]` budget (`connects_per_minute`, `processes`, ...).
    pub fn limit(mut self, name: &str, value: u32) -> PolicyFile {
        self.limits.push((name.to_string(), value.to_string()));
        self
    }

    /// limits.on_limit: `report`, `freeze` or `kill`.
    pub fn on_limit(mut self, action: &str) -> PolicyFile {
        self.limits.push(("on_limit".into(), toml::Value::String(action.into()).to_string()));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `DIR/NAME.toml`; its path.
    pub fn write_to(&self, dir: &Path) -> PathBuf {
        self.write_as(&dir.join(format!("{}.toml", self.name)))
    }

    /// Writes the policy to `path`; the path.
    pub fn write_as(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.to_string()).unwrap();
        path.to_path_buf()
    }
}

impl std::fmt::Display for PolicyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        writeln!(f, "name = {}", quote(&self.name))?;
        for (key, v) in [("mode", &self.mode), ("on_violation", &self.on_violation)] {
            if let Some(v) = v {
                writeln!(f, "{key} = {}", quote(v))?;
            }
        }
        type Lists<'a> = &'a [(&'a str, &'a Vec<String>)];
        let sections: [(&str, Lists); 6] = [
            ("files", &[("read", &self.read), ("write", &self.write), ("deny", &self.deny)]),
            ("exec", &[("allow", &self.exec)]),
            ("network", &[("connect", &self.connect), ("unix", &self.unix), ("families", &self.families), ("listen", &self.listen)]),
            ("syscalls", &[("deny", &self.syscalls_deny)]),
            ("bind", &[("cgroups", &self.bind)]),
            ("process", &[("capabilities", &self.capabilities)]),
        ];
        let decoys: Lists = &[("files", &self.decoy_files), ("hosts", &self.decoy_hosts)];
        for (section, lists) in sections.into_iter().chain([("decoys", decoys)]) {
            if lists.iter().all(|(_, v)| v.is_empty()) {
                continue;
            }
            writeln!(f, "[{section}]")?;
            for (key, v) in lists.iter().filter(|(_, v)| !v.is_empty()) {
                writeln!(f, "{key} = [{}]", v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", "))?;
            }
        }
        if !self.limits.is_empty() {
            writeln!(f, "[limits]")?;
            for (k, v) in &self.limits {
                writeln!(f, "{k} = {v}")?;
            }
        }
        Ok(())
    }
}

/// `program ARGS` whose child moves itself into `cgroup` between fork and exec (as `agent-guard
/// run` does), so it is inside from its first instruction; stdin is /dev/null.
pub fn command_in(cgroup: &Path, program: impl AsRef<OsStr>, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").to_str().unwrap()).unwrap();
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        });
    }
    cmd
}

/// Runs the probe with ARGS inside `cgroup` (see [`command_in`]) and waits for it.
pub fn probe_in(cgroup: &Path, args: &[&str]) -> Output {
    command_in(cgroup, probe(), args).output().unwrap()
}

/// A cgroup tree a test creates below the cgroup2 mount (`NAME-PID`); on drop, what is left
/// in it is killed and the tree removed.
pub struct TestCgroup(pub PathBuf);

impl TestCgroup {
    pub fn create(name: &str) -> TestCgroup {
        let dir = cgroup2_mount().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        TestCgroup(dir)
    }

    /// Its name below the cgroup2 mount.
    pub fn name(&self) -> String {
        self.0.file_name().unwrap().to_string_lossy().into_owned()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while cgroup_populated(&self.0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        remove_cgroup_tree(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_name_is_the_enclosing_function() {
        assert_eq!(test_name!(), "test_name_is_the_enclosing_function");
        let in_closure = || test_name!();
        assert_eq!(in_closure(), "test_name_is_the_enclosing_function");
    }

    #[test]
    fn policy_file_writes_only_the_sections_it_has() {
        let p = PolicyFile::new("p").mode("monitor").read(["/usr", "/a \"b\""]).exec([Path::new("/usr/bin/")]);
        assert_eq!(p.to_string(), "name = \"p\"\nmode = \"monitor\"\n[files]\nread = [\"/usr\", '/a \"b\"']\n[exec]\nallow = [\"/usr/bin/\"]\n");
        let p = PolicyFile::new("q").on_violation("kill").connect(["127.0.0.1/32:80"]).syscalls_deny(["ptrace"]).bind(["a/*.scope"]);
        let text = p.to_string();
        assert_eq!(text, "name = \"q\"\non_violation = \"kill\"\n[network]\nconnect = [\"127.0.0.1/32:80\"]\n[syscalls]\ndeny = [\"ptrace\"]\n[bind]\ncgroups = [\"a/*.scope\"]\n");
        let parsed: toml::Table = text.parse().unwrap();
        assert_eq!(parsed["bind"]["cgroups"][0].as_str(), Some("a/*.scope"));
    }
}
