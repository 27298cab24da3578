//! The control socket protocol: one JSON object per line each way, versioned by `v`.
//!
//! Access (see [`crate::control::peer`]): the socket file is mode 0660, owner root, group
//! `control_group`; per connection the daemon allows root or a member of that group or of
//! `admin_group` (SO_PEERCRED, and the peer's supplementary groups from /proc), and refuses
//! any process inside a run (its cgroup at or below the managed root or a bound cgroup), even
//! root. A refused connection gets one `{"v":1,"ok":false,"error":"permission denied: ..."}`
//! and is closed; nothing it sent is read. `policy_apply` (and a `register` whose policy file
//! binds cgroups) needs root or `admin_group`; a request about a run needs the uid that
//! started it, root or `admin_group` (the error names what was missing).
//!
//! Limits: a request line is at most [`MAX_LINE`] bytes (a longer one is refused as soon as
//! it passes that, and the connection closed); at most `control_max_connections` connections
//! are served at once (one more gets an error and is closed).
//!
//! Requests (`op`), several per connection:
//! - `ping`: the managed cgroup root (`cgroup_root`).
//! - `register` (a run's cgroup, before its command starts, with the policy to bind: a loaded
//!   policy's name, or a policy file's text): the bound policy (`policy`) and, for an
//!   enforce-mode policy, its Landlock plan (`landlock`: what the layer handles and grants,
//!   before the host's ABI masks it), from which `run` builds the layer; `landlock` (the
//!   Landlock ABI the run's layer was applied with, sent by `run` before the command starts:
//!   the daemon derives what the layer refuses from the plan it gave); `end` (the run is over).
//! - `seccomp` (the run's processes carry `run`'s seccomp filter: the kernel marks the run, so
//!   its sys_enter check leaves link/linkat to the launcher's layers) and `seccomp_refusal`
//!   (a syscall the filter refused: the daemon emits its `syscall` event, `layer: seccomp`).
//!   Both only on the connection that registered the run, for that run.
//! - `policy_apply` (load or replace a policy from its text); `policy_list`; `policy_show`.
//! - `policy_history` (`name`: every version applied, `history`), `policy_version` (`name`,
//!   `version`: a number or `sha256:HEX`; that entry with its text) and `policy_rollback`
//!   (`name`, optional `version`, default the one before the current: applied again as
//!   `policy_apply` does, needs root or `admin_group`).
//! - `ps`: the runs and bound cgroups (`runs`).
//! - `status`: the daemon's state (`status`).
//! - `freeze`, `thaw`, `kill` with `run` (a run id, name, cgroup path or pid): the action is
//!   done when the response comes (`action`: run, latency, processes) and is recorded as an
//!   event of that kind naming the requester.
//! - `events` with optional `run`, `follow`, `json`: the response has `stream: "events"`, then
//!   the daemon writes the buffered events (the run's only, with `run`), one per line: the
//!   event's JSON object (`json`) or its human line. Without `follow` it then closes the
//!   connection; with `follow` it goes on writing new events until the client closes. A
//!   follower too slow to keep up gets a `drop` event (stage `follower`, with the count it
//!   missed); the daemon and other clients never wait for it. `events` is the last request on
//!   its connection.
//!
//! Every response has `v`, `ok` and, when `ok` is false, `error`. Fields a request does not
//! produce are omitted; clients ignore fields they do not know, so new ones can be added
//! without a version bump.
//!
//! Versions:
//! - 2, later additions: `hold_show` gives a held run's hold id and attempts; `approve`
//!   carries the `hold` and the number of `attempts` the responder reviewed, and without
//!   them (or when the hold has changed since) it approves nothing; `policy_history`,
//!   `policy_version` and `policy_rollback` read and roll back a policy's versions.
//! - 2: `register`'s response carries the Landlock plan (`landlock`) instead of the policy's
//!   text (`text`, which `run` parsed again to build its layer), and the `landlock` request
//!   carries the ABI (`abi`) instead of the coverage `run` computed. The daemon still takes
//!   version 1's other requests, which are unchanged; a version 1 `register` or `landlock`
//!   is refused (an old `run` would otherwise start its command without the Landlock layer).
//! - 1: the first.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use super::views::{HoldView, TaskStatus};

pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest version whose requests the daemon takes (see the module's versions).
pub const OLDEST_PROTOCOL_VERSION: u32 = 1;
/// Longest request line the daemon reads; longer ones are refused.
pub const MAX_LINE: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping,
    Register {
        /// Run id, also the name of its cgroup directory below the managed root.
        run: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        argv: Vec<String>,
        /// Name of a loaded policy to bind the run to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
        /// Or the text of a policy file (loaded if its name is new).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy_file: Option<PolicyText>,
    },
    /// The run's Landlock layer was built from the `register` response's plan and is
    /// applied (before the command starts) on a kernel with this Landlock ABI.
    Landlock {
        run: String,
        abi: u32,
    },
    End {
        run: String,
        #[serde(default)]
        exit_status: Option<i32>,
    },
    /// The run's processes carry `run`'s seccomp filter (sent before the command starts).
    Seccomp {
        run: String,
    },
    /// A syscall the run's seccomp filter refused.
    SeccompRefusal {
        run: String,
        refusal: crate::runs::seccomp::Refusal,
    },
    PolicyApply {
        file: PolicyText,
    },
    PolicyList,
    PolicyShow {
        name: String,
    },
    /// Starts a task of a run (`agent-guard task`): a child cgroup of the run's with its own
    /// id, labels and policy (the intersection of the run's and this one). On the task
    /// socket `run` is the caller's own run (and may be left out); on the control socket it
    /// names the run. The command joins it with `task_join`.
    TaskStart {
        #[serde(default)]
        run: Option<String>,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        policy: Option<String>,
        #[serde(default)]
        policy_file: Option<PolicyText>,
        #[serde(default)]
        argv: Vec<String>,
    },
    /// Moves process `pid` (the caller's child) into task `task`.
    TaskJoin {
        task: String,
        pid: u32,
    },
    /// The task's command ended: its cgroup is emptied and removed.
    TaskEnd {
        task: String,
        #[serde(default)]
        exit_status: Option<i32>,
    },
    /// A run's hold as a responder reviews it before answering: its id and each attempt.
    HoldShow {
        run: String,
    },
    /// Every version of a policy the daemon applied (`data_dir`).
    PolicyHistory {
        name: String,
    },
    /// One version of a policy from its history, with its text: its number or `sha256:HEX`.
    PolicyVersion {
        name: String,
        version: String,
    },
    /// Applies a version from the history again (default: the one before the current).
    PolicyRollback {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// Answer a hold for review: grant the held accesses (once, or for the rest of the run).
    /// `hold` and `attempts` say what the responder was shown (`hold_show`): the approval is
    /// refused if the hold has changed since, so it approves exactly that.
    Approve {
        run: String,
        #[serde(default)]
        for_run: bool,
        #[serde(default)]
        hold: Option<u64>,
        #[serde(default)]
        attempts: Option<usize>,
    },
    /// Answer a hold for review: the violation stands (and with `kill`, the run ends).
    Deny {
        run: String,
        #[serde(default)]
        kill: bool,
    },
    Ps,
    Status,
    /// Sign the events log now (a `checkpoint` line after what is queued), so an evidence
    /// bundle of a live run is covered; `result` is the checkpoint's seq.
    Checkpoint,
    Freeze {
        run: String,
    },
    Thaw {
        run: String,
    },
    Kill {
        run: String,
    },
    Events {
        /// Only this run's events (id, name, cgroup path or pid).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
        /// Keep streaming new events until the client closes.
        #[serde(default)]
        follow: bool,
        /// JSON lines (else the human lines).
        #[serde(default)]
        json: bool,
        /// Only violations: verdict deny, kill, hold or would_deny.
        #[serde(default)]
        violations: bool,
        /// Only events at or after this time (RFC 3339, UTC, as events carry it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
        /// Of the events already in the daemon's buffer, only the last N (after the other
        /// filters); new events are all streamed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail: Option<usize>,
    },
}

/// One run (or bound cgroup) as `ps` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub policy: Option<String>,
    /// running | frozen | held
    pub state: String,
    /// Why the run is held for review, when it is.
    #[serde(default)]
    pub held: Option<String>,
    /// Processes in the run's cgroup and below.
    pub processes: u64,
    /// Events of the run with verdict deny, kill, would_deny or hold.
    pub violations: u64,
    pub age_secs: u64,
    /// RFC 3339.
    pub started: String,
    /// Relative to the cgroup2 mount, with a leading /.
    pub cgroup: String,
    /// A cgroup bound by a policy's `[bind] cgroups` (not started by `agent-guard run`).
    pub bound: bool,
    /// A cgroup below the managed root that the daemon has no record of.
    #[serde(default)]
    pub unregistered: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The run's live tasks (`agent-guard task`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskStatus>,
    /// What the run's Landlock layer refuses up front (runs of `agent-guard run` under an
    /// enforce-mode policy, on a kernel with Landlock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock: Option<crate::runs::landlock::Coverage>,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config_file: Option<String>,
    pub control_socket: String,
    pub control_group: String,
    /// None: the group does not exist, only root may use the socket.
    pub control_group_gid: Option<u32>,
    pub events_log: String,
    /// The public key (hex) that verifies the events log's checkpoints (None: no key yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_pubkey: Option<String>,
    pub policy_dir: String,
    pub bpffs_dir: String,
    pub cgroup_mount: String,
    pub managed_root: String,
    pub runs_running: u64,
    pub runs_frozen: u64,
    pub runs_held: u64,
    pub bound_cgroups: u64,
    pub policies: u64,
    /// The host-wide syscall check (raw tracepoint sys_enter) is attached in the kernel.
    pub syscall_check_attached: bool,
    /// The syscall tracepoints (opens, connects, sends) are attached: only while a run or a
    /// bound cgroup exists, since they slow every syscall on the host.
    #[serde(default)]
    pub syscall_tracepoints_attached: bool,
    /// Events lost (kernel ring buffer and queues) since the daemon started.
    pub events_dropped: u64,
    pub events_buffered: u64,
    pub followers: u64,
    /// The enforcement backend in force (`lsm` or `tracepoint`), and why it was chosen.
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub backend_reason: Option<String>,
    /// Per operation, what the backend does with a violation on this host.
    #[serde(default)]
    pub enforcement: Vec<crate::kernel::backend::Enforcement>,
    /// The host's Landlock ABI (0: none) and whether `run` uses it (config `landlock`).
    #[serde(default)]
    pub landlock_abi: u32,
    #[serde(default)]
    pub landlock_enabled: bool,
    /// Runs with a Landlock layer, and what it refuses.
    #[serde(default)]
    pub landlock_runs: Vec<LandlockRun>,
}

/// One run's Landlock layer, as `status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandlockRun {
    pub run: String,
    #[serde(default)]
    pub name: Option<String>,
    pub coverage: crate::runs::landlock::Coverage,
}

/// What a `freeze`, `thaw` or `kill` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionReport {
    pub run: String,
    #[serde(default)]
    pub name: Option<String>,
    pub cgroup: String,
    pub latency_ms: f64,
    pub processes: u64,
    /// kill: the run's cgroup tree was removed.
    #[serde(default)]
    pub removed: bool,
}

/// A policy file's text and the name it is known by in messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyText {
    pub source: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub req: Request,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The managed cgroup root (absolute path) on `ping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<String>,
    /// The policy a `register` bound or a `policy_apply` loaded: name and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::kernel::rules::PolicySummary>,
    /// `policy_apply`: ok | unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<crate::kernel::rules::PolicySummary>>,
    /// `register`: the Landlock plan of the bound policy (enforce mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock: Option<crate::runs::landlock::Plan>,
    /// `policy_show`: the policy file's text as loaded; `approve`, `deny`: what was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `ps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<Vec<RunStatus>>,
    /// `hold_show`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldView>,
    /// `task_start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskStatus>,
    /// `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DaemonStatus>,
    /// `freeze`, `thaw`, `kill`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionReport>,
    /// `events`: what the lines after this response are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// `register`: what the command keeps of privileges (`[process]`, `[files] devices`);
    /// absent: nothing (every capability is cleared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<crate::runs::privileges::ProcessPlan>,
    /// `register`: the seccomp filter's plan for an enforce-mode, `on_violation = "deny"`
    /// policy (the syscalls it refuses), which `run` installs before the command starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<crate::runs::seccomp::SeccompPlan>,
    /// `policy_history`: the versions (no texts); `policy_version`: the one asked for, with its
    /// text; `policy_rollback`: the version restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryEntry>>,
    /// `end`: the run's violations, for the line `run` prints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violations: Option<ViolationSummary>,
}

/// One version of a policy as it was applied (`policy_history`, `policy_version`,
/// `policy_rollback`; kept by `daemon::history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// 1, 2, 3, ... per policy name.
    pub number: u64,
    /// `sha256:...` (empty for a text that did not parse).
    pub version: String,
    /// When it was applied (RFC 3339, UTC).
    pub time: String,
    /// The file it came from, or `rollback`.
    pub source: String,
    /// The control-socket caller who asked (absent: policy_dir at start or on SIGHUP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by_uid: Option<u32>,
    /// `ok` (in force from then on) or `error` (refused; the previous version stayed).
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A rollback: the number of the version it restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restores: Option<u64>,
    /// The policy file's text (left out of `policy history` answers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
}

/// A run's violations (verdict deny, kill, hold or would_deny) as the daemon counted them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ViolationSummary {
    pub total: u64,
    /// Rule (e.g. `files.read`) -> count.
    pub by_rule: BTreeMap<String, u64>,
    /// The first few targets: `kind path` (or address, syscall).
    pub first: Vec<String>,
}

impl ViolationSummary {
    /// How many targets `first` keeps.
    pub const FIRST: usize = 3;

    /// The line `agent-guard run` prints on stderr when its run ends with violations.
    pub fn line(&self, run: &str) -> String {
        let rules: Vec<String> = self.by_rule.iter().map(|(r, n)| format!("{n} {r}")).collect();
        let more = if self.total as usize > self.first.len() { ", ..." } else { "" };
        format!(
            "agent-guard: run {run} ended with {} violation{} ({}): {}{more}; all of them: agent-guard events --run {run} --violations",
            self.total,
            if self.total == 1 { "" } else { "s" },
            rules.join(", "),
            self.first.join(", "),
        )
    }
}

impl Response {
    pub fn ok() -> Self {
        Self { v: PROTOCOL_VERSION, ok: true, ..Default::default() }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Self { v: PROTOCOL_VERSION, ok: false, error: Some(msg.into()), ..Default::default() }
    }
}

/// Parses one request line; the error text goes back to the client.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let env: Envelope = serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    if !(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&env.v) {
        return Err(format!("unsupported protocol version {} (this daemon speaks {PROTOCOL_VERSION})", env.v));
    }
    if env.v < 2 && matches!(env.req, Request::Register { .. } | Request::Landlock { .. }) {
        return Err(format!(
            "protocol version {} `register` and `landlock` are not supported since version 2 (this daemon speaks \
             {PROTOCOL_VERSION}): use the agent-guard binary of the daemon's version",
            env.v
        ));
    }
    Ok(env.req)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent-guard daemon at {path}: {source} (is `agent-guard daemon` running with this config?)")]
    Connect { path: String, source: std::io::Error },
    #[error("permission denied: cannot connect to the control socket {path}: only root and members of the daemon's control_group may use it")]
    Denied { path: String },
    #[error("control socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("control socket {path}: bad response: {message}")]
    Protocol { path: String, message: String },
    #[error("the daemon refused: {0}")]
    Refused(String),
}

impl ClientError {
    /// No daemon listens on the socket (missing, or nobody accepting): the CLI may act on
    /// cgroupfs itself where that makes sense.
    pub fn daemon_down(&self) -> bool {
        matches!(self, ClientError::Connect { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
    }
}

/// How long a request may take; freeze and kill wait up to `respond::TIMEOUT` in the daemon.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn send(socket: &Path, req: Request) -> Result<BufReader<UnixStream>, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io { path: path.clone(), source };
    let mut s = UnixStream::connect(socket).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::Denied { path: path.clone() }
        } else {
            ClientError::Connect { path: path.clone(), source }
        }
    })?;
    s.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_string(&Envelope { v: PROTOCOL_VERSION, req }).expect("serializable");
    line.push('\n');
    if let Err(e) = s.write_all(line.as_bytes()) {
        // The daemon may have answered and closed without reading (a refused peer, too many
        // connections): its answer says why better than the broken pipe.
        let mut r = BufReader::new(s);
        let mut answer = String::new();
        if r.read_line(&mut answer).is_ok() {
            if let Ok(Response { ok: false, error: Some(why), .. }) = serde_json::from_str::<Response>(&answer) {
                return Err(ClientError::Refused(why));
            }
        }
        return Err(io(e));
    }
    Ok(BufReader::new(s))
}

fn response(socket: &Path, r: &mut BufReader<UnixStream>) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let mut resp = String::new();
    r.read_line(&mut resp).map_err(|source| ClientError::Io { path: path.clone(), source })?;
    if resp.is_empty() {
        return Err(ClientError::Protocol { path, message: "the daemon closed the connection".into() });
    }
    let resp: Response =
        serde_json::from_str(&resp).map_err(|e| ClientError::Protocol { path: path.clone(), message: e.to_string() })?;
    if !resp.ok {
        return Err(ClientError::Refused(resp.error.unwrap_or_default()));
    }
    Ok(resp)
}

/// Sends one request and waits for its response.
pub fn call(socket: &Path, req: Request) -> Result<Response, ClientError> {
    let mut r = send(socket, req)?;
    response(socket, &mut r)
}

/// A connection for several requests in turn: `run` registers its run on one and reports
/// the run's seccomp refusals on it (the daemon accepts those only from that connection).
pub struct Client {
    socket: std::path::PathBuf,
    conn: Option<BufReader<UnixStream>>,
}

impl Client {
    /// A client of the daemon at `socket`; connects at the first request.
    pub fn new(socket: &Path) -> Client {
        Client { socket: socket.to_path_buf(), conn: None }
    }

    /// Sends one request on the connection and waits for its response. After an I/O error
    /// the connection is gone (a later request would open a new one, which has not
    /// registered anything).
    pub fn call(&mut self, req: Request) -> Result<Response, ClientError> {
        let r = match self.conn.take() {
            Some(mut r) => {
                let mut line = serde_json::to_string(&Envelope { v: PROTOCOL_VERSION, req }).expect("serializable");
                line.push('\n');
                r.get_mut()
                    .write_all(line.as_bytes())
                    .map_err(|source| ClientError::Io { path: self.socket.display().to_string(), source })?;
                r
            }
            None => send(&self.socket, req)?,
        };
        let mut r = r;
        let resp = response(&self.socket, &mut r);
        if matches!(resp, Ok(_) | Err(ClientError::Refused(_))) {
            self.conn = Some(r);
        }
        resp
    }
}

/// Sends a request whose response is followed by a stream of lines (`events`): returns the
/// response and the reader positioned at the first line, with no read timeout.
pub fn stream(socket: &Path, req: Request) -> Result<(Response, BufReader<UnixStream>), ClientError> {
    let mut r = send(socket, req)?;
    let resp = response(socket, &mut r)?;
    r.get_ref()
        .set_read_timeout(None)
        .map_err(|source| ClientError::Io { path: socket.display().to_string(), source })?;
    Ok((resp, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_say_why() {
        let r = Request::Register {
            run: "r-1".into(),
            name: Some("n".into()),
            labels: BTreeMap::new(),
            argv: vec![],
            policy: Some("p".into()),
            policy_file: None,
        };
        let line = serde_json::to_string(&Envelope { v: PROTOCOL_VERSION, req: r.clone() }).unwrap();
        assert!(line.contains("\"op\":\"register\""), "{line}");
        assert_eq!(parse_request(&line).unwrap(), r);
        assert!(parse_request("{\"v\":3,\"op\":\"ping\"}").unwrap_err().contains("version 3"));
        assert!(parse_request("{\"v\":0,\"op\":\"ping\"}").unwrap_err().contains("version 0"));
        assert!(parse_request("{\"v\":1,\"op\":\"explode\"}").unwrap_err().contains("explode"));
        assert!(parse_request("not json").unwrap_err().starts_with("bad request"));
        assert!(parse_request("{\"v\":1,\"op\":\"end\",\"run\":\"r\",\"bogus\":1}").is_err());
        assert_eq!(parse_request("{\"v\":1,\"op\":\"freeze\",\"run\":\"r-1\"}").unwrap(), Request::Freeze { run: "r-1".into() });
        assert_eq!(
            parse_request("{\"v\":1,\"op\":\"events\",\"follow\":true}").unwrap(),
            Request::Events { run: None, follow: true, json: false, violations: false, since: None, tail: None }
        );
        assert!(parse_request("{\"v\":1,\"op\":\"kill\"}").unwrap_err().contains("run"));
        let r = parse_request(
            "{\"v\":1,\"op\":\"seccomp_refusal\",\"run\":\"r-1\",\"refusal\":{\"pid\":7,\"syscall\":\"unshare\",\"nr\":272,\"arg0\":0,\"rule\":\"unseen\",\"errno\":1}}",
        )
        .unwrap();
        assert!(matches!(&r, Request::SeccompRefusal { run, refusal } if run == "r-1" && refusal.syscall == "unshare" && refusal.path.is_none()), "{r:?}");
        assert_eq!(parse_request("{\"v\":1,\"op\":\"seccomp\",\"run\":\"r-1\"}").unwrap(), Request::Seccomp { run: "r-1".into() });
        assert_eq!(parse_request("{\"v\":2,\"op\":\"policy_history\",\"name\":\"p\"}").unwrap(), Request::PolicyHistory { name: "p".into() });
        assert_eq!(
            parse_request("{\"v\":2,\"op\":\"policy_version\",\"name\":\"p\",\"version\":\"3\"}").unwrap(),
            Request::PolicyVersion { name: "p".into(), version: "3".into() }
        );
        assert_eq!(parse_request("{\"v\":2,\"op\":\"policy_rollback\",\"name\":\"p\"}").unwrap(), Request::PolicyRollback { name: "p".into(), version: None });
        assert!(parse_request("{\"v\":2,\"op\":\"policy_version\",\"name\":\"p\"}").unwrap_err().contains("version"));
    }

    #[test]
    fn version_1_clients_keep_every_request_but_the_two_that_changed() {
        let v1 = serde_json::to_string(&Envelope {
            v: 1,
            req: Request::Register { run: "r-1".into(), name: None, labels: BTreeMap::new(), argv: vec![], policy: None, policy_file: None },
        })
        .unwrap();
        assert!(parse_request(&v1).unwrap_err().contains("since version 2"), "{v1}");
        let old_landlock = "{\"v\":1,\"op\":\"landlock\",\"run\":\"r-1\",\"coverage\":{\"abi\":7}}";
        assert!(parse_request(old_landlock).is_err());
        assert!(parse_request("{\"v\":1,\"op\":\"landlock\",\"run\":\"r-1\",\"abi\":7}").unwrap_err().contains("since version 2"));
        assert_eq!(
            parse_request("{\"v\":2,\"op\":\"landlock\",\"run\":\"r-1\",\"abi\":7}").unwrap(),
            Request::Landlock { run: "r-1".into(), abi: 7 }
        );
        assert_eq!(parse_request("{\"v\":1,\"op\":\"ps\"}").unwrap(), Request::Ps);
    }
}

