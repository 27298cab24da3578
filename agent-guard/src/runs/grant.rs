//! What a hold is made of, without the daemon's state: each held access (the kernel's grant
//! key a responder approves, and what a person reads of it) and the hold of a run.
use std::time::Instant;

use agent_guard_common::{GrantKey, Kind, Rule};
use serde::{Deserialize, Serialize};

/// One held access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// open | exec | connect | sendmsg
    pub kind: Kind,
    /// What was attempted, as a person reads it: a path with its access, or addr:port.
    pub what: String,
    pub rule: Option<Rule>,
    pub pid: u32,
    pub tgid: u32,
    pub comm: Option<String>,
    /// The grant approving it, when the access can be identified (None: it cannot be
    /// approved, only let go on or denied).
    #[serde(skip)]
    pub grant: Option<GrantKey>,
    /// The access already happened when the process was stopped (open, exec): approving
    /// lets it go on; denying kills the process. Otherwise (network) it was refused with
    /// EPERM and approving lets a retry through.
    pub happened: bool,
}

/// A held access as a run record keeps it (`state_dir`), with its grant key, so a restarted
/// daemon can still answer the hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub attempt: Attempt,
    /// (run, kind, port, id) of the grant key.
    pub grant: Option<(u64, u32, u32, [u8; 16])>,
}

impl From<&Attempt> for Recorded {
    fn from(a: &Attempt) -> Self {
        Self { attempt: a.clone(), grant: a.grant.map(|k| (k.run, k.kind, k.port, k.id)) }
    }
}

impl From<Recorded> for Attempt {
    fn from(r: Recorded) -> Self {
        let grant = r.grant.map(|(run, kind, port, id)| GrantKey { run, kind, port, id });
        Attempt { grant, ..r.attempt }
    }
}

#[derive(Debug, Clone)]
pub struct Hold {
    pub id: u64,
    pub since: Instant,
    pub attempts: Vec<Attempt>,
    /// The run is frozen: only then can the hold be answered (an answer that thawed before
    /// the freeze landed would leave the run frozen with nobody waiting).
    pub ready: bool,
}

impl Hold {
    /// What the run waits for, as `ps` shows it.
    pub fn summary(&self) -> String {
        let what: Vec<String> = self
            .attempts
            .iter()
            .map(|a| {
                format!("{} {} by pid {} ({}), rule {}", a.kind, a.what, a.tgid, a.comm.as_deref().unwrap_or("?"), a.rule.map_or("-", Rule::name))
            })
            .collect();
        crate::output::text::printable(&format!("{}; held {} s", what.join("; "), self.since.elapsed().as_secs())).into_owned()
    }
}

