//! The daemon's configuration file (TOML). Every key is optional; unknown keys and bad values
//! are errors naming the file, line and column. A broken file never falls back to defaults.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use agent_guard_common::{Kind, Verdict};
use serde::Deserialize;

/// Where the CLI and the daemon look when neither `--config` nor AGENT_GUARD_CONFIG is given.
pub const DEFAULT_PATH: &str = "/etc/agent-guard/config.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Auto,
    Lsm,
    Trampoline,
    Tracepoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StderrEvents {
    All,
    Notable,
    None,
}

impl StderrEvents {
    /// Whether `kind` with `verdict` gets a human line on stderr.
    pub fn shows(self, kind: Kind, verdict: Verdict) -> bool {
        match self {
            StderrEvents::All => true,
            StderrEvents::None => false,
            // The allowed observations are the stream's bulk (tens of thousands a second under
            // load): they stay in the log. Everything else is rare and worth a glance.
            StderrEvents::Notable => {
                verdict != Verdict::Allow || !kind.is_kernel()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub control_socket: PathBuf,
    /// The socket processes inside runs start tasks of their own run on (`agent-guard task`):
    /// connectable by every run whatever its `[network] unix` says, and by nothing else.
    pub task_socket: PathBuf,
    pub events_log: PathBuf,
    /// Rotate events_log once it would grow past this many bytes (0: never; then rotate it
    /// with logrotate and SIGHUP, which reopens it).
    pub events_log_max_bytes: u64,
    /// Rotated event logs kept (events_log.1 is the newest).
    pub events_log_keep: u32,
    /// Which events the daemon also prints on stderr as a human line (journald keeps stderr
    /// under systemd): `notable` (violations, holds, run starts and ends, actions, drops),
    /// `all` (every exec, open, connect... too: for watching a daemon in a terminal), `none`.
    pub stderr_events: StderrEvents,
    pub policy_dir: PathBuf,
    pub metrics_listen: SocketAddr,
    /// Group (besides root) whose members may use the control socket: start runs and act on
    /// the runs they started.
    pub control_group: String,
    /// Group (besides root) whose members may also apply policies (which binds cgroups) and
    /// act on every run. None: root only.
    pub admin_group: Option<String>,
    /// Control connections served at once; one more is answered with an error and closed.
    pub control_max_connections: u32,
    /// Relative to the cgroup2 mount.
    pub cgroup_root: String,
    pub bpffs_dir: PathBuf,
    /// What a restarted daemon needs besides the pinned kernel state: run records and the
    /// text of loaded policies. On tmpfs by default: it lives exactly as long as the pins.
    pub state_dir: PathBuf,
    /// What must outlive a reboot: the events log's chain head and signing key, every applied
    /// policy version. On persistent storage by default.
    pub data_dir: PathBuf,
    /// The events log's chain is signed (a `checkpoint` line) after this many lines...
    pub log_checkpoint_lines: u64,
    /// ...or once this much time has passed since the last checkpoint with lines to cover.
    #[serde(with = "humantime_serde")]
    pub log_checkpoint_interval: std::time::Duration,
    /// A hold for review (`on_violation = "freeze"`) not answered within this time is denied.
    #[serde(with = "humantime_serde")]
    pub hold_timeout: std::time::Duration,
    pub backend: BackendChoice,
    /// `agent-guard run` puts enforce-mode runs under a Landlock ruleset compiled from their
    /// policy, so most denials are a clean EACCES before the operation (false: the eBPF layer
    /// alone, which kills after the fact).
    pub landlock: bool,
    /// `agent-guard run` puts runs under an enforce-mode policy with `on_violation = "deny"`
    /// under a seccomp filter that refuses `[syscalls] deny` and the syscalls the tracepoint
    /// backend cannot judge with an errno before they run (false: the eBPF layer kills them
    /// after the fact).
    pub seccomp: bool,
    /// Size of the kernel ring buffer that carries events, in bytes (a power of two, at
    /// least one page). Losses when it is full are counted and reported as `drop` events.
    pub events_ring_bytes: u32,
    /// Where the DNS forwarder of runs with name rules sends the queries it lets through
    /// ("IP:PORT"; empty: the nameservers of the host's /etc/resolv.conf, port 53).
    pub dns_upstream: Vec<SocketAddr>,
    /// How long an address an allowed answer opened stays open after the record's TTL.
    #[serde(with = "humantime_serde")]
    pub dns_grace: std::time::Duration,
    /// Whether an allowed answer may open loopback addresses (127.0.0.0/8, ::1). Off: a name
    /// that resolves to the host itself opens nothing (answers never open unspecified,
    /// multicast, broadcast or link-local addresses, cloud metadata among them).
    pub dns_loopback_answers: bool,
    /// The file this configuration was read from (None: the defaults, no file).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            control_socket: "/run/agent-guard/control.sock".into(),
            task_socket: "/run/agent-guard/task.sock".into(),
            events_log: "/var/log/agent-guard/events.jsonl".into(),
            events_log_max_bytes: 100 << 20,
            events_log_keep: 5,
            stderr_events: StderrEvents::Notable,
            policy_dir: "/etc/agent-guard/policies.d".into(),
            metrics_listen: "127.0.0.1:9464".parse().expect("valid default"),
            control_group: "agent-guard".into(),
            admin_group: None,
            control_max_connections: 64,
            cgroup_root: "agent-guard".into(),
            bpffs_dir: "/sys/fs/bpf/agent-guard".into(),
            state_dir: "/run/agent-guard/state".into(),
            data_dir: "/var/lib/agent-guard".into(),
            log_checkpoint_lines: 10_000,
            log_checkpoint_interval: std::time::Duration::from_secs(60),
            hold_timeout: std::time::Duration::from_secs(300),
            backend: BackendChoice::Auto,
            landlock: true,
            seccomp: true,
            events_ring_bytes: agent_guard_common::EVENTS_RING_BYTES,
            dns_upstream: Vec::new(),
            dns_grace: std::time::Duration::from_secs(60),
            dns_loopback_answers: false,
            source: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// agent-guard's own state, which no run may open whatever its policy grants: the pins,
    /// the state and data directories, the events log and its rotations, the control socket,
    /// the policy directory and this configuration file. Absolute paths as written.
    pub fn protected_paths(&self) -> Vec<String> {
        let mut v: Vec<std::path::PathBuf> =
            vec![self.bpffs_dir.clone(), self.state_dir.clone(), self.data_dir.clone(), self.control_socket.clone(), self.policy_dir.clone()];
        v.push(self.events_log.clone());
        for n in 1..=self.events_log_keep {
            let mut rotated = self.events_log.clone().into_os_string();
            rotated.push(format!(".{n}"));
            v.push(rotated.into());
        }
        v.extend(self.source.clone());
        let mut out: Vec<String> = v
            .into_iter()
            .filter(|p| p.is_absolute() && p.parent().is_some())
            .map(|p| p.display().to_string().trim_end_matches('/').to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }
    /// Loads `path`. When `explicit` is false and the file does not exist, the defaults apply
    /// (a host without /etc/agent-guard/config.toml); an explicit path must exist.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default());
            }
            Err(source) => return Err(ConfigError::Read { path: path.into(), source }),
        };
        let mut cfg = Self::parse(&text, path)?;
        cfg.source = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(cfg)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: path.into(), message };
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!("line {line}, column {col}: ")
                })
                .unwrap_or_default();
            let message = match e.message().trim() {
                "" => toml_blank_message(text, e.span()),
                m => m.to_string(),
            };
            invalid(format!("{at}{message}"))
        })?;
        cfg.validate().map_err(invalid)?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        for (field, p) in [
            ("control_socket", &self.control_socket),
            ("events_log", &self.events_log),
            ("policy_dir", &self.policy_dir),
            ("bpffs_dir", &self.bpffs_dir),
            ("state_dir", &self.state_dir),
            ("data_dir", &self.data_dir),
        ] {
            if !p.is_absolute() {
                return Err(format!("{field}: {} is not an absolute path", p.display()));
            }
        }
        if !self.bpffs_dir.starts_with("/sys/fs/bpf") || self.bpffs_dir == Path::new("/sys/fs/bpf") {
            return Err(format!(
                "bpffs_dir: {} must be a directory below /sys/fs/bpf (the daemon pins its programs there)",
                self.bpffs_dir.display()
            ));
        }
        if self.log_checkpoint_lines == 0 {
            return Err("log_checkpoint_lines: must be at least 1".into());
        }
        if self.log_checkpoint_interval.is_zero() {
            return Err("log_checkpoint_interval: must be longer than 0 (like \"60s\")".into());
        }
        if self.hold_timeout.is_zero() {
            return Err("hold_timeout: must be longer than 0 (like \"5m\")".into());
        }
        if self.dns_grace > std::time::Duration::from_secs(86_400) {
            return Err("dns_grace: at most 24h (an answer's address stays open for its TTL plus this)".into());
        }
        if let Some(a) = self.dns_upstream.iter().find(|a| a.port() == 0 || a.ip().is_unspecified()) {
            return Err(format!("dns_upstream: {a} is not a server address (write \"IP:PORT\", e.g. \"10.0.0.2:53\")"));
        }
        if !self.events_ring_bytes.is_power_of_two() || self.events_ring_bytes < 4096 {
            return Err(format!(
                "events_ring_bytes: {} must be a power of two of at least 4096",
                self.events_ring_bytes
            ));
        }
        for (field, group) in [("control_group", Some(&self.control_group)), ("admin_group", self.admin_group.as_ref())] {
            let Some(group) = group else { continue };
            if group.is_empty() || !group.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
                return Err(format!("{field}: {group:?} must be a group name (letters, digits, _ . -)"));
            }
        }
        if self.control_max_connections == 0 {
            return Err("control_max_connections: must be at least 1".into());
        }
        let root = Path::new(&self.cgroup_root);
        if self.cgroup_root.trim_matches('/').is_empty()
            || root.is_absolute()
            || root.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!(
                "cgroup_root: {:?} must be a relative path below the cgroup2 mount (like \"agent-guard\"), \
                 never the root cgroup and without \"..\"",
                self.cgroup_root
            ));
        }
        Ok(())
    }
}

/// 1-based line and column of byte offset `at` in `text`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// What to say for a TOML error that comes without a message (toml refuses a control
/// character in a comment without a word): the character at the error's position.
pub(crate) fn toml_blank_message(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let c = span.and_then(|s| text.get(s.start..)).and_then(|t| t.chars().next());
    match c {
        Some(c) if c.is_control() => format!("control character {c:?} is not allowed here (not even in a comment)"),
        Some(c) => format!("unexpected character {c:?}"),
        None => "invalid TOML".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = Config::parse("", Path::new("c.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.control_socket, Path::new("/run/agent-guard/control.sock"));
        assert_eq!(c.cgroup_root, "agent-guard");
        assert_eq!(c.control_group, "agent-guard");
        assert_eq!(c.backend, BackendChoice::Auto);
        assert_eq!(c.hold_timeout, std::time::Duration::from_secs(300));
        let c = Config::parse("hold_timeout = \"90s\"", Path::new("c.toml")).unwrap();
        assert_eq!(c.hold_timeout, std::time::Duration::from_secs(90));
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let e = Config::parse("events_log = \"/tmp/x\"\ncontrol_sokcet = \"/x\"\n", Path::new("/etc/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/c.toml"), "{e}");
        assert!(e.contains("line 2, column 1"), "{e}");
        assert!(e.contains("control_sokcet"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for (text, field) in [
            ("backend = \"ebpf\"", "line 1"),
            ("metrics_listen = \"nope\"", "line 1"),
            ("events_log = \"relative.jsonl\"", "events_log"),
            ("cgroup_root = \"\"", "cgroup_root"),
            ("cgroup_root = \"/\"", "cgroup_root"),
            ("cgroup_root = \"../escape\"", "cgroup_root"),
            ("events_ring_bytes = 5000", "events_ring_bytes"),
            ("events_ring_bytes = 1024", "events_ring_bytes"),
            ("bpffs_dir = \"/sys/fs/bpf\"", "bpffs_dir"),
            ("bpffs_dir = \"/tmp/pins\"", "bpffs_dir"),
            ("hold_timeout = \"soon\"", "line 1"),
            ("hold_timeout = \"0s\"", "hold_timeout"),
            ("control_group = \"\"", "control_group"),
            ("control_group = \"a b\"", "control_group"),
            ("stderr_events = \"some\"", "line 1"),
            ("admin_group = \"\"", "admin_group"),
            ("admin_group = \"x;y\"", "admin_group"),
            ("control_max_connections = 0", "control_max_connections"),
            ("control_max_connections = -1", "line 1"),
            ("log_checkpoint_lines = 0", "log_checkpoint_lines"),
            ("log_checkpoint_interval = \"0s\"", "log_checkpoint_interval"),
            ("data_dir = \"var/lib\"", "data_dir"),
        ] {
            let e = Config::parse(text, Path::new("c.toml")).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn stderr_shows_violations_and_lifecycle_but_not_the_allowed_bulk() {
        let n = StderrEvents::Notable;
        assert!(!n.shows(Kind::Open, Verdict::Allow) && !n.shows(Kind::Exec, Verdict::Allow) && !n.shows(Kind::Connect, Verdict::Allow));
        assert!(n.shows(Kind::Open, Verdict::Kill) && n.shows(Kind::Connect, Verdict::Deny) && n.shows(Kind::Exec, Verdict::WouldDeny));
        assert!(n.shows(Kind::RunStart, Verdict::Allow) && n.shows(Kind::Drop, Verdict::Allow) && n.shows(Kind::Freeze, Verdict::Allow));
        assert!(StderrEvents::All.shows(Kind::Open, Verdict::Allow) && !StderrEvents::None.shows(Kind::Open, Verdict::Kill));
        let c = Config::parse("stderr_events = \"all\"", Path::new("c.toml")).unwrap();
        assert_eq!(c.stderr_events, StderrEvents::All);
    }

    /// deploy/config.toml says its values are the defaults, and its commented-out keys are
    /// keys this parser takes.
    #[test]
    fn the_shipped_config_is_the_defaults_and_its_examples_parse() {
        let text = include_str!("../../deploy/config.toml");
        let c = Config::parse(text, Path::new("deploy/config.toml")).unwrap();
        assert_eq!(c, Config::default());
        let examples: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(examples, text.lines().collect::<Vec<_>>().join("\n"), "no commented-out example key");
        let c = Config::parse(&examples, Path::new("deploy/config.toml")).unwrap();
        assert!(c.admin_group.is_some());
    }

    #[test]
    fn missing_default_file_means_defaults_but_missing_explicit_file_is_an_error() {
        let p = Path::new("/nonexistent/agent-guard.toml");
        assert_eq!(Config::load(p, false).unwrap(), Config::default());
        assert!(Config::load(p, true).unwrap_err().to_string().contains("/nonexistent"));
    }
}
