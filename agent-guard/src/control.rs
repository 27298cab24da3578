//! The control socket protocol: one JSON object per line each way, versioned by `v`.
//!
//! Requests (`op`): `ping`; `register` (a run's cgroup, before its command starts, with the
//! policy to bind: a loaded policy's name, or a policy file's text); `end` (the run is over);
//! `policy_apply` (load or replace a policy from its text); `policy_list`; `policy_show`.
//! Every response has `v`, `ok` and, when `ok` is false, `error`.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
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
    End {
        run: String,
        #[serde(default)]
        exit_status: Option<i32>,
    },
    PolicyApply {
        file: PolicyText,
    },
    PolicyList,
    PolicyShow {
        name: String,
    },
    /// Answer a hold for review: grant the held accesses (once, or for the rest of the run).
    Approve {
        run: String,
        #[serde(default)]
        for_run: bool,
    },
    /// Answer a hold for review: the violation stands (and with `kill`, the run ends).
    Deny {
        run: String,
        #[serde(default)]
        kill: bool,
    },
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
    pub policy: Option<crate::policies::PolicySummary>,
    /// `policy_apply`: ok | unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<crate::policies::PolicySummary>>,
    /// `policy_show`: the policy file's text as loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
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
    if env.v != PROTOCOL_VERSION {
        return Err(format!("unsupported protocol version {} (this daemon speaks {PROTOCOL_VERSION})", env.v));
    }
    Ok(env.req)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent-guard daemon at {path}: {source} (is `agent-guard daemon` running with this config?)")]
    Connect { path: String, source: std::io::Error },
    #[error("control socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("control socket {path}: bad response: {message}")]
    Protocol { path: String, message: String },
    #[error("the daemon refused: {0}")]
    Refused(String),
}

/// Sends one request and waits for its response.
pub fn call(socket: &Path, req: Request) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io { path: path.clone(), source };
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect { path: path.clone(), source })?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let mut line = serde_json::to_string(&Envelope { v: PROTOCOL_VERSION, req }).expect("serializable");
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut resp = String::new();
    BufReader::new(&s).read_line(&mut resp).map_err(io)?;
    let resp: Response = serde_json::from_str(&resp)
        .map_err(|e| ClientError::Protocol { path: path.clone(), message: e.to_string() })?;
    if !resp.ok {
        return Err(ClientError::Refused(resp.error.unwrap_or_default()));
    }
    Ok(resp)
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
        let line = serde_json::to_string(&Envelope { v: 1, req: r.clone() }).unwrap();
        assert!(line.contains("\"op\":\"register\""), "{line}");
        assert_eq!(parse_request(&line).unwrap(), r);
        assert!(parse_request("{\"v\":2,\"op\":\"ping\"}").unwrap_err().contains("version 2"));
        assert!(parse_request("{\"v\":1,\"op\":\"explode\"}").unwrap_err().contains("explode"));
        assert!(parse_request("not json").unwrap_err().starts_with("bad request"));
        assert!(parse_request("{\"v\":1,\"op\":\"end\",\"run\":\"r\",\"bogus\":1}").is_err());
    }
}
