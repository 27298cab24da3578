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

mod serve;
pub(crate) use serve::{reconcile, start};

/// What a forwarder judges by: its policy's name rules, as of the last reconcile.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rules {
    pub(crate) policy: String,
    pub(crate) version: String,
    pub(crate) names: Vec<NameRuleSpec>,
    pub(crate) enforce: bool,
}

pub(crate) struct Forwarder {
    pub(crate) slot: u32,
    pub(crate) rules: Arc<RwLock<Arc<Rules>>>,
    pub(crate) ports: (u16, u16),
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
    /// (run cgroup, address) -> the name whose answer last opened it, and until when
    /// (monotonic ns): connect events name it (`domain`).
    pub(crate) opened: Mutex<HashMap<(u64, IpAddr), (String, u64)>>,
    /// Forwarder sockets could not be made: why (status).
    pub(crate) error: Mutex<Option<String>>,
}

impl Dns {
    pub(crate) fn new(maps: DnsMaps, upstream: Vec<SocketAddr>, grace: Duration) -> Self {
        let upstream = if upstream.is_empty() { resolv_conf_servers() } else { upstream };
        Dns {
            maps,
            upstream,
            grace,
            fwds: Mutex::new(HashMap::new()),
            opened: Mutex::new(HashMap::new()),
            error: Mutex::new(None),
        }
    }

    /// The name whose answer opened `addr` for the run (connect events' `domain`).
    pub(crate) fn domain_of(&self, run_cgroup: u64, addr: &str) -> Option<String> {
        let ip: IpAddr = addr.parse().ok()?;
        let opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        opened.get(&(run_cgroup, ip)).map(|(n, _)| n.clone())
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
