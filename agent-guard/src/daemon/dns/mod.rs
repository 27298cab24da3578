//! Name rules' DNS forwarder: its state (this module) and its serving (`serve`).
//!
//! A run (or task, or bound cgroup) whose policy has name rules gets a forwarder: UDP and TCP
//! sockets on 127.0.0.1 and [::1] whose ports the kernel's forwarder map holds, so that the
//! cgroup programs send the run's DNS queries there. A query for a name no rule covers is
//! answered REFUSED (an honest "not by policy": a resolver says "temporary failure" rather
//! than claiming the name does not exist, as NXDOMAIN would); an allowed one goes upstream,
//! and the addresses of the answer (following CNAMEs from the name asked) are opened in the
//! kernel for the record's TTL plus `dns_grace` before the answer goes back unchanged.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use agent_guard_common::dns::FwdKey;

use crate::{kernel::dns::DnsMaps, policy::names::NameRuleSpec};

mod hold;
mod serve;
pub(crate) use serve::{reconcile, start};

/// What a forwarder judges by: its policy's name rules, as of the last reconcile.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rules {
    pub(crate) policy: String,
    pub(crate) version: String,
    pub(crate) names: Vec<NameRuleSpec>,
    pub(crate) enforce: bool,
    /// `on_violation = "freeze"`: a name no rule covers is held for review.
    pub(crate) holds: bool,
}

pub(crate) struct Forwarder {
    pub(crate) slot: u32,
    pub(crate) rules: Arc<RwLock<Arc<Rules>>>,
    pub(crate) tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub(crate) struct Dns {
    pub(crate) maps: DnsMaps,
    pub(crate) upstream: Vec<SocketAddr>,
    pub(crate) grace: Duration,
    pub(crate) fwds: Mutex<HashMap<FwdKey, Forwarder>>,
    /// Monitor mode: (run cgroup, address) -> the name an answer gave it, and until when
    /// (monotonic ns), opened nowhere: connect events name it (`domain`).
    pub(crate) seen: Mutex<HashMap<(u64, IpAddr), (String, u64)>>,
    /// Answers may open loopback addresses (config `dns_loopback_answers`).
    pub(crate) loopback_answers: bool,
    /// Forwarder sockets could not be made: why (status).
    pub(crate) error: Mutex<Option<String>>,
    /// Queries held for review (`on_violation = "freeze"`), by (run cgroup, name): told the
    /// answer (Some(for_run): approved; None: denied or timed out).
    pub(crate) waiters: Mutex<HashMap<(u64, String), Vec<tokio::sync::oneshot::Sender<Option<bool>>>>>,
    /// Names a responder answered, by (run cgroup, name): approved for the run (`until`
    /// None), or approved once or denied until the instant (the held query and the resolver's
    /// retries of it, which are not held again).
    pub(crate) decided: Mutex<HashMap<(u64, String), Decided>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decided {
    pub(crate) approved: bool,
    pub(crate) until: Option<std::time::Instant>,
}

/// How long an answer "once" (or a denial) of a held name also answers the resolver's retries.
pub(crate) const ONCE_WINDOW: Duration = Duration::from_secs(30);

impl Dns {
    pub(crate) fn new(maps: DnsMaps, upstream: Vec<SocketAddr>, grace: Duration, loopback_answers: bool) -> Self {
        let upstream = if upstream.is_empty() { resolv_conf_servers() } else { upstream };
        Dns {
            maps,
            upstream,
            grace,
            fwds: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            loopback_answers,
            error: Mutex::new(None),
            waiters: Mutex::new(HashMap::new()),
            decided: Mutex::new(HashMap::new()),
        }
    }

    /// A hold of run `run` was answered: its held names are let through (`approve`:
    /// Some(for_run)) or refused, and their queries answered.
    pub(crate) fn answered(&self, run: u64, names: impl Iterator<Item = String>, approve: Option<bool>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let mut decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            let window = Some(std::time::Instant::now() + ONCE_WINDOW);
            let d = match approve {
                Some(true) => Decided { approved: true, until: None },
                Some(false) => Decided { approved: true, until: window },
                None => Decided { approved: false, until: window },
            };
            decided.insert((run, name.clone()), d);
            for w in waiters.remove(&(run, name)).unwrap_or_default() {
                let _ = w.send(approve);
            }
        }
    }

    /// What a responder decided of `name` for the run, while that decision holds.
    pub(crate) fn decided(&self, run: u64, name: &str) -> Option<bool> {
        let mut decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
        let key = (run, name.to_string());
        let d = *decided.get(&key)?;
        if d.until.is_some_and(|u| u <= std::time::Instant::now()) {
            decided.remove(&key);
            return None;
        }
        Some(d.approved)
    }

    /// A run's forwarders are gone: its held queries are refused, its approvals forgotten.
    pub(crate) fn forget_run(&self, run: u64) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).retain(|(r, _), _| *r != run);
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).retain(|(r, _), _| *r != run);
        self.decided.lock().unwrap_or_else(|p| p.into_inner()).retain(|(r, _), _| *r != run);
    }

    /// The name whose answer opened `addr` for the run (connect events' `domain`).
    pub(crate) fn domain_of(&self, run_cgroup: u64, addr: &str) -> Option<String> {
        let ip: IpAddr = addr.parse().ok()?;
        let ip = crate::policy::normalise_addr(ip);
        self.maps.domain_of(run_cgroup, ip).or_else(|| {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.get(&(run_cgroup, ip)).map(|(n, _)| n.clone())
        })
    }

    /// How many forwarders serve runs now.
    pub(crate) fn forwarders(&self) -> usize {
        self.fwds.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The nameservers of /etc/resolv.conf, on port 53 (none: 127.0.0.1:53, as the resolver's
/// own default).
pub(crate) fn resolv_conf_servers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if out.is_empty() {
        out.push(SocketAddr::from(([127, 0, 0, 1], 53)));
    }
    out
}
