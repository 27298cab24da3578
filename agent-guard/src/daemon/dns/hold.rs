//! A query for a name no rule covers, under `on_violation = "freeze"`: held for review. The
//! query waits in the forwarder while the run is frozen (a `hold` whose attempt is the name);
//! `approve` lets the name through (once: this query and the resolver's retries of it for
//! `ONCE_WINDOW`; `--for-run`: for the rest of the run), `deny` or the hold's timeout refuse it
//! (and its retries for `ONCE_WINDOW`).
use std::{
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use agent_guard_common::dns::FwdKey;

use super::Rules;
use crate::{
    daemon::core::Shared,
    output::event::{Detail, Facts, Kind, Rule, Verdict},
};

/// Where a query came from: the source port of the asking socket, and its family.
pub(crate) struct Asker {
    pub(crate) port: u16,
    pub(crate) v6: bool,
}

/// Holds the run for review of `query`; true when a responder approved it. Only a process of
/// the run holds it (a query from anywhere else is refused), and at most `HELD_MAX` queries of
/// one forwarder wait at once (`held` counts them).
pub(crate) async fn hold_name(
    shared: &Arc<Shared>,
    key: FwdKey,
    rules: &Rules,
    (query, qtype, proto): (&str, &str, &'static str),
    asker: Asker,
    held: &AtomicUsize,
) -> bool {
    // Answered a moment ago (the resolver retrying the held query): not held again.
    if let Some(approved) = shared.dns.decided(key.run, query) {
        return approved;
    }
    let run = shared.run_for(key.run);
    let dir = run.as_ref().map(|r| r.dir.clone());
    let who = match dir {
        Some(dir) => tokio::task::spawn_blocking(move || find_asker(&dir, proto, &asker)).await.ok().flatten(),
        None => None,
    };
    let Some((pid, comm)) = who else { return false };
    if held.fetch_add(1, Ordering::SeqCst) >= super::serve::HELD_MAX {
        held.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let wkey = (key.run, query.to_string());
    shared.dns.waiters.lock().unwrap_or_else(|p| p.into_inner()).entry(wkey.clone()).or_default().push(tx);
    let mut e = shared.base_event(Kind::Dns, run.as_ref());
    e.verdict = Verdict::Hold;
    e.rule = Some(Rule::Network);
    e.hook = Some("dns");
    e.policy = Some(rules.policy.clone());
    e.policy_version = Some(rules.version.clone());
    (e.pid, e.tgid) = (Some(pid), Some(pid));
    e.comm = (!comm.is_empty()).then_some(comm);
    e.facts = Facts { run_cgroup: key.run, ..Default::default() };
    e.detail = Detail::Dns {
        query: query.to_string(),
        qtype: qtype.to_string(),
        proto,
        rcode: "HELD".into(),
        answers: vec![],
        cnames: vec![],
        ttl: None,
        error: None,
    };
    shared.emit(e.clone());
    crate::runs::hold::on_hold(shared, e);
    // Answered by `answer` (approve, deny, timeout); a run that ends first refuses it.
    let wait = shared.hold_timeout + std::time::Duration::from_secs(10);
    let approved = matches!(tokio::time::timeout(wait, rx).await, Ok(Ok(Some(_))));
    held.fetch_sub(1, Ordering::SeqCst);
    // Unanswered (the run ended, say): nobody waits on this name any more.
    let mut waiters = shared.dns.waiters.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = waiters.get_mut(&wkey) {
        v.retain(|w| !w.is_closed());
        if v.is_empty() {
            waiters.remove(&wkey);
        }
    }
    approved
}

/// The process of the run whose socket has local port `asker.port` (the evidence of the
/// hold): the socket's inode from the kernel's table, then the run's processes' descriptors.
fn find_asker(dir: &Path, proto: &str, asker: &Asker) -> Option<(u32, String)> {
    let tables: &[&str] = match (proto, asker.v6) {
        ("tcp", false) => &["/proc/net/tcp", "/proc/net/tcp6"],
        ("tcp", true) => &["/proc/net/tcp6"],
        (_, false) => &["/proc/net/udp", "/proc/net/udp6"],
        (_, true) => &["/proc/net/udp6"],
    };
    let mut inodes = Vec::new();
    for t in tables {
        let text = std::fs::read_to_string(t).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            if port == Some(asker.port) {
                inodes.extend(f.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
            for fd in fds.flatten() {
                let Ok(link) = std::fs::read_link(fd.path()) else { continue };
                if inodes.iter().any(|i| Path::new(i) == link) {
                    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    return Some((pid, comm.trim().to_string()));
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            dirs.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
        }
    }
    None
}
