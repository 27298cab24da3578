//! The forwarders: which runs need one (`reconcile`), their sockets, and the answer to each
//! query (see the parent module for the model).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use agent_guard_common::{dns::FwdKey, NO_POLICY};
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};
use tracing::warn;

use super::{Forwarder, Rules};
use crate::{
    daemon::core::{Owned, Shared},
    output::event::{Detail, Kind, Rule, Verdict},
    policy::{names, Mode},
};

/// How long one upstream server has to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries one forwarder answers at once; more are dropped (the resolver retries).
const INFLIGHT: usize = 128;
/// An idle TCP query connection is closed after this.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP query connections one forwarder serves at once; more are closed at once.
const TCP_CONNS: usize = 16;
/// Queries one forwarder holds for review at once; more are refused.
pub(super) const HELD_MAX: usize = 16;
/// Monitor mode: names remembered for connect events, over all runs.
const SEEN_MAX: usize = 1 << 16;
/// CNAMEs followed from the name asked.
const CHAIN_MAX: usize = 16;

/// What a forwarder's tasks share.
struct Ctx {
    key: FwdKey,
    rules: Arc<RwLock<Arc<Rules>>>,
    shared: Weak<Shared>,
    upstream: Vec<SocketAddr>,
    gate: Arc<Semaphore>,
    /// TCP connections being served.
    conns: Arc<Semaphore>,
    /// Queries held for review now.
    pub(super) held: std::sync::atomic::AtomicUsize,
}

impl Ctx {
    /// Where a query came from, for finding the asking process.
    fn asker(&self, from: SocketAddr) -> super::hold::Asker {
        super::hold::Asker { port: from.port(), v6: from.is_ipv6() }
    }
}

/// Starts the forwarders the state needs now, and a task that keeps them in step with runs,
/// tasks, bindings and policies (each second), and purges expired addresses.
pub(crate) fn start(shared: &Arc<Shared>) {
    {
        let own = shared.own();
        reconcile(shared, &own);
    }
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for n in 0u64.. {
            tick.tick().await;
            let Some(shared) = weak.upgrade() else { return };
            {
                let own = shared.own();
                reconcile(&shared, &own);
            }
            if n % 10 == 9 {
                purge(&shared);
            }
        }
    });
}

fn purge(shared: &Shared) {
    let dns = &shared.dns;
    dns.maps.purge_expired(Duration::from_secs(60));
    let now = crate::kernel::dns::monotonic_ns();
    let linger = Duration::from_secs(60).as_nanos() as u64;
    dns.seen.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, (_, until)| until.saturating_add(linger) > now);
}

/// Which forwarders should exist: one per live run, task and bound cgroup whose policy has
/// name rules, keyed as the kernel looks them up (run cgroup, policy slot).
fn wanted(own: &Owned) -> HashMap<FwdKey, (u32, Rules)> {
    let mut slots: Vec<(u64, u32)> = Vec::new();
    for r in own.runs.by_cgroup.values().filter(|r| r.ended.is_none()) {
        if let Some(slot) = r.policy {
            slots.push((r.cgroup_id, slot));
        }
    }
    for t in own.runs.tasks.values().filter(|t| t.ended.is_none()) {
        if let Ok(e) = own.runs.tasks_map.get(&t.cgroup_id, 0) {
            if e.policy != NO_POLICY {
                slots.push((t.run_cgroup, e.policy));
            }
        }
    }
    for (id, b) in &own.binder.bound {
        slots.push((*id, b.slot));
    }
    slots
        .into_iter()
        .filter_map(|(run, slot)| {
            let p = &own.policies.by_slot(slot)?.policy;
            let rules = Rules {
                policy: p.name.clone(),
                version: p.version.clone(),
                names: p.network_names.clone(),
                enforce: p.mode == Mode::Enforce,
                holds: p.on_violation == crate::policy::OnViolation::Freeze,
            };
            (!p.network_names.is_empty()).then_some((FwdKey { run, policy: slot, _pad: 0 }, (slot, rules)))
        })
        .collect()
}

/// Brings the forwarders in step with `own`: new ones for runs that need one (before this
/// returns, so a run registered with name rules resolves from its first query), new rules
/// for reloaded policies, and ended ones closed with every address they opened.
pub(crate) fn reconcile(shared: &Shared, own: &Owned) {
    let want = wanted(own);
    let dns = &shared.dns;
    let mut fwds = dns.fwds.lock().unwrap_or_else(|p| p.into_inner());
    let gone: Vec<FwdKey> = fwds.keys().filter(|k| !want.contains_key(k)).copied().collect();
    for k in gone {
        fwds.remove(&k);
        dns.maps.remove_forwarder(k);
        if !fwds.keys().any(|f| f.run == k.run) {
            dns.forget_run(k.run);
        }
    }
    // An earlier daemon's forwarders (adopted state): their sockets are gone.
    dns.maps.remove_stale(&|k| want.contains_key(k));
    for (k, (slot, rules)) in want {
        if let Some(f) = fwds.get(&k).filter(|f| f.slot == slot) {
            let mut cur = f.rules.write().unwrap_or_else(|p| p.into_inner());
            if **cur != rules {
                // A reload that changes the names closes what the old ones opened: the run
                // resolves again under the new rules.
                if cur.names != rules.names || cur.enforce != rules.enforce {
                    dns.maps.close_all(k);
                }
                *cur = Arc::new(rules);
            }
            continue;
        }
        match spawn_forwarder(shared, k, slot, rules) {
            Ok(f) => {
                fwds.insert(k, f);
                *dns.error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) => {
                warn!("DNS forwarder for run cgroup {} (policy slot {slot}): {e}; its queries are refused", k.run);
                *dns.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        }
    }
}

/// A TCP listener and a UDP socket on the same port of `ip`.
fn bind_pair(ip: IpAddr) -> std::io::Result<(std::net::TcpListener, std::net::UdpSocket, u16)> {
    let mut last = None;
    for _ in 0..16 {
        let tcp = std::net::TcpListener::bind((ip, 0))?;
        let port = tcp.local_addr()?.port();
        match std::net::UdpSocket::bind((ip, port)) {
            Ok(udp) => {
                tcp.set_nonblocking(true)?;
                udp.set_nonblocking(true)?;
                return Ok((tcp, udp, port));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port")))
}

fn spawn_forwarder(shared: &Shared, key: FwdKey, slot: u32, rules: Rules) -> Result<Forwarder, String> {
    let weak = shared.me.get().cloned().ok_or("the daemon's state is not ready")?;
    let rt = tokio::runtime::Handle::try_current().map_err(|e| format!("no runtime: {e}"))?;
    let (tcp4, udp4, port4) = bind_pair(IpAddr::V4(Ipv4Addr::LOCALHOST)).map_err(|e| format!("binding 127.0.0.1: {e}"))?;
    // No IPv6 loopback: IPv6 queries are not redirected (and so judged as any connect).
    let v6 = bind_pair(IpAddr::V6(Ipv6Addr::LOCALHOST)).ok();
    let port6 = v6.as_ref().map_or(0, |v| v.2);
    let rules = Arc::new(RwLock::new(Arc::new(rules)));
    let ctx = Arc::new(Ctx {
        key,
        rules: rules.clone(),
        shared: weak,
        upstream: shared.dns.upstream.clone(),
        gate: Arc::new(Semaphore::new(INFLIGHT)),
        conns: Arc::new(Semaphore::new(TCP_CONNS)),
        held: Default::default(),
    });
    let mut tasks = Vec::new();
    let mut sockets = vec![(tcp4, udp4)];
    sockets.extend(v6.map(|(t, u, _)| (t, u)));
    for (tcp, udp) in sockets {
        let c = ctx.clone();
        tasks.push(rt.spawn(async move {
            if let Ok(l) = TcpListener::from_std(tcp) {
                tcp_loop(l, c).await;
            }
        }).abort_handle());
        let c = ctx.clone();
        tasks.push(rt.spawn(async move {
            if let Ok(s) = UdpSocket::from_std(udp) {
                udp_loop(s, c).await;
            }
        }).abort_handle());
    }
    // The kernel redirects only once the sockets exist.
    shared.dns.maps.set_forwarder(key, port4, port6)?;
    Ok(Forwarder { slot, rules, tasks })
}

async fn udp_loop(sock: UdpSocket, ctx: Arc<Ctx>) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else { continue };
        let Ok(permit) = ctx.gate.clone().try_acquire_owned() else { continue };
        let (q, sock, ctx) = (buf[..n].to_vec(), sock.clone(), ctx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = answer(&ctx, &q, false, from).await {
                let _ = sock.send_to(&reply, from).await;
            }
        });
    }
}

async fn tcp_loop(l: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let (mut s, from) = match l.accept().await {
            Ok(c) => c,
            Err(_) => {
                // Out of descriptors, say: no busy loop.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // At most TCP_CONNS at once per forwarder; one more is closed.
        let Ok(conn) = ctx.conns.clone().try_acquire_owned() else { continue };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _conn = conn;
            loop {
                let mut len = [0u8; 2];
                match tokio::time::timeout(TCP_IDLE, s.read_exact(&mut len)).await {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                if !matches!(tokio::time::timeout(TCP_IDLE, s.read_exact(&mut q)).await, Ok(Ok(_))) {
                    return;
                }
                let Ok(permit) = ctx.gate.clone().try_acquire_owned() else { return };
                let reply = answer(&ctx, &q, true, from).await;
                drop(permit);
                let Some(reply) = reply else { return };
                let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&reply);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The mnemonic of a response code (RFC 1035, 6895): NOERROR, NXDOMAIN, ...
fn rcode(c: ResponseCode) -> String {
    match u16::from(c) {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

fn norm(n: &Name) -> String {
    n.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// A reply with only the question and `code`.
fn error_reply(q: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut r = Message::error_msg(q.metadata.id, q.metadata.op_code, code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_queries(q.queries.clone());
    r.to_vec().ok()
}

/// The answer to one query (None: not a DNS message; nothing is sent back).
async fn answer(ctx: &Ctx, q: &[u8], tcp: bool, from: SocketAddr) -> Option<Vec<u8>> {
    let msg = Message::from_vec(q).ok()?;
    let proto = if tcp { "tcp" } else { "udp" };
    if msg.metadata.message_type != MessageType::Query || msg.queries.len() != 1 {
        return error_reply(&msg, ResponseCode::FormErr);
    }
    // Queries only: no UPDATE or NOTIFY reaches a server, nor a zone transfer.
    let question = &msg.queries[0];
    if msg.metadata.op_code != OpCode::Query || matches!(question.query_type, RecordType::AXFR | RecordType::IXFR) {
        return error_reply(&msg, ResponseCode::NotImp);
    }
    // What goes upstream is the query as parsed, encoded again, not the run's bytes.
    let q = &msg.to_vec().ok()?;
    let query = norm(&question.name);
    let qtype = question.query_type.to_string();
    let rules = ctx.rules.read().unwrap_or_else(|p| p.into_inner()).clone();
    // A label with a dot or another character a name rule cannot hold (escaped by to_ascii)
    // is no name any rule covers.
    let mut ports = if query.contains('\\') { Vec::new() } else { names::ports_for(&rules.names, &query) };
    let mut d = DnsDetail { query, qtype, proto, ..Default::default() };
    let mut rule = None;
    if ports.is_empty() && rules.enforce && rules.holds {
        // Held for review: the query waits here while the run is frozen; an approved name
        // opens its addresses on every port (the responder approved the destination).
        let approved = match ctx.shared.upgrade() {
            Some(shared) => super::hold::hold_name(&shared, ctx.key, &rules, (&d.query, &d.qtype, proto), ctx.asker(from), &ctx.held).await,
            None => false,
        };
        if approved {
            ports = vec![(1, u16::MAX)];
            rule = Some(Rule::Grant);
        } else {
            d.rcode = "REFUSED".into();
            report(ctx, &rules, d, Verdict::Deny, Some(Rule::Network));
            return error_reply(&msg, ResponseCode::Refused);
        }
    }
    if ports.is_empty() {
        let verdict = if rules.enforce { Verdict::Deny } else { Verdict::WouldDeny };
        if rules.enforce {
            d.rcode = "REFUSED".into();
            report(ctx, &rules, d, verdict, Some(Rule::Network));
            return error_reply(&msg, ResponseCode::Refused);
        }
        // Monitor mode: answered, reported, and nothing opened in the kernel; the daemon
        // remembers the name of each address, so the connect events that follow carry it
        // (`domain`, which `policy suggest` turns into a name rule).
        let reply = upstream(&ctx.upstream, q, tcp, msg.metadata.id).await;
        d.rcode = reply.as_ref().map_or("SERVFAIL".into(), |(_, m)| rcode(m.metadata.response_code));
        if let (Ok((_, m)), Some(shared)) = (&reply, ctx.shared.upgrade()) {
            let (addrs, cnames) = addresses(m, &d.query);
            d.cnames = cnames;
            let mut seen = shared.dns.seen.lock().unwrap_or_else(|p| p.into_inner());
            for (ip, ttl) in &addrs {
                let life = Duration::from_secs(u64::from(*ttl)).min(crate::kernel::dns::TTL_MAX) + shared.dns.grace;
                let until = crate::kernel::dns::monotonic_ns().saturating_add(life.as_nanos() as u64);
                if seen.len() < SEEN_MAX {
                    seen.insert((ctx.key.run, *ip), (d.query.clone(), until));
                }
            }
        }
        report(ctx, &rules, d, verdict, Some(Rule::Network));
        return reply.map_or_else(|_| error_reply(&msg, ResponseCode::ServFail), |(r, _)| Some(r));
    }
    let (reply, rmsg) = match upstream(&ctx.upstream, q, tcp, msg.metadata.id).await {
        Ok(r) => r,
        Err(e) => {
            d.rcode = "SERVFAIL".into();
            d.error = Some(e);
            report(ctx, &rules, d, Verdict::Allow, None);
            return error_reply(&msg, ResponseCode::ServFail);
        }
    };
    d.rcode = rcode(rmsg.metadata.response_code);
    let (addrs, cnames) = addresses(&rmsg, &d.query);
    d.cnames = cnames;
    let Some(shared) = ctx.shared.upgrade() else { return error_reply(&msg, ResponseCode::ServFail) };
    let dns = &shared.dns;
    // Addresses no answer opens: the host itself (unless configured), and what is no
    // destination of its own (unspecified, multicast, broadcast, link-local: cloud metadata).
    let (addrs, skipped): (Vec<(IpAddr, u32)>, Vec<(IpAddr, u32)>) = addrs.into_iter().partition(|(ip, _)| openable(*ip, dns.loopback_answers));
    if !skipped.is_empty() {
        d.error = Some(format!(
            "not opened: {} (loopback, link-local, multicast, unspecified or IPv4-mapped)",
            skipped.iter().map(|(ip, _)| ip.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    // Opened before the answer goes back: the run's first connect finds its address. (The
    // maps refuse a forwarder that has ended, and a run over its quota.)
    for (ip, ttl) in &addrs {
        if let Err(e) = dns.maps.open(ctx.key, *ip, &d.query, &ports, Duration::from_secs(u64::from(*ttl)), dns.grace) {
            d.error = Some(e);
            d.rcode = "SERVFAIL".into();
            report(ctx, &rules, d, Verdict::Allow, None);
            return error_reply(&msg, ResponseCode::ServFail);
        }
    }
    d.ttl = addrs.iter().map(|(_, t)| *t).min();
    d.answers = addrs.iter().map(|(ip, _)| ip.to_string()).collect();
    report(ctx, &rules, d, Verdict::Allow, rule);
    Some(reply)
}

/// Whether an answer may open `ip` (see [`answer`]).
fn openable(ip: IpAddr, loopback: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_link_local() || (v4.is_loopback() && !loopback))
        }
        IpAddr::V6(v6) => {
            let link_local = v6.segments()[0] & 0xffc0 == 0xfe80;
            !(v6.is_unspecified() || v6.is_multicast() || link_local || v6.to_ipv4_mapped().is_some() || (v6.is_loopback() && !loopback))
        }
    }
}

/// The A and AAAA records of the answer owned by the name asked or by a name its CNAME chain
/// leads to (records of other owners open nothing), with their TTLs; and the chain.
fn addresses(m: &Message, query: &str) -> (Vec<(IpAddr, u32)>, Vec<String>) {
    let mut chain = vec![query.to_string()];
    for _ in 0..CHAIN_MAX {
        let next = m.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if chain.contains(&norm(&r.name)) && !chain.contains(&norm(&c.0)) => Some(norm(&c.0)),
            _ => None,
        });
        match next {
            Some(n) => chain.push(n),
            None => break,
        }
    }
    let addrs = m
        .answers
        .iter()
        .filter(|r| chain.contains(&norm(&r.name)))
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
            _ => None,
        })
        .collect();
    chain.remove(0);
    (addrs, chain)
}

/// Asks the upstream servers in turn, over the client's transport; the reply must carry the
/// query's id.
async fn upstream(servers: &[SocketAddr], q: &[u8], tcp: bool, id: u16) -> Result<(Vec<u8>, Message), String> {
    let mut why = String::from("no upstream server (dns_upstream)");
    for s in servers {
        let r = tokio::time::timeout(UPSTREAM_TIMEOUT, ask(*s, q, tcp)).await;
        match r {
            Ok(Ok(reply)) => match Message::from_vec(&reply) {
                Ok(m) if m.metadata.id == id && m.metadata.message_type == MessageType::Response => return Ok((reply, m)),
                Ok(_) => why = format!("{s}: a reply to another query"),
                Err(e) => why = format!("{s}: not a DNS reply: {e}"),
            },
            Ok(Err(e)) => why = format!("{s}: {e}"),
            Err(_) => why = format!("{s}: no answer within {}s", UPSTREAM_TIMEOUT.as_secs()),
        }
    }
    Err(why)
}

async fn ask(server: SocketAddr, q: &[u8], tcp: bool) -> std::io::Result<Vec<u8>> {
    if tcp {
        let mut s = TcpStream::connect(server).await?;
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(q);
        s.write_all(&out).await?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await?;
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut reply).await?;
        Ok(reply)
    } else {
        let local: SocketAddr = if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let s = UdpSocket::bind(local).await?;
        s.connect(server).await?;
        s.send(q).await?;
        let mut buf = vec![0u8; 65535];
        let n = s.recv(&mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }
}

#[derive(Default)]
struct DnsDetail {
    query: String,
    qtype: String,
    proto: &'static str,
    rcode: String,
    answers: Vec<String>,
    cnames: Vec<String>,
    ttl: Option<u32>,
    error: Option<String>,
}

/// The task a forwarder serves (its policy slot is a task's, not its run's): the one live task
/// of the run under that slot, if exactly one.
fn task_of(shared: &Shared, key: FwdKey) -> Option<(String, std::collections::BTreeMap<String, String>)> {
    let own = shared.own();
    if own.runs.by_cgroup.get(&key.run).is_some_and(|r| r.policy == Some(key.policy)) {
        return None;
    }
    let mut tasks = own.runs.tasks.values().filter(|t| {
        t.run_cgroup == key.run && t.ended.is_none() && own.runs.tasks_map.get(&t.cgroup_id, 0).is_ok_and(|e| e.policy == key.policy)
    });
    match (tasks.next(), tasks.next()) {
        (Some(t), None) => Some((t.id.clone(), t.labels.clone())),
        _ => None,
    }
}

fn report(ctx: &Ctx, rules: &Rules, d: DnsDetail, verdict: Verdict, rule: Option<Rule>) {
    let Some(shared) = ctx.shared.upgrade() else { return };
    let run = shared.run_for(ctx.key.run);
    let mut e = shared.base_event(Kind::Dns, run.as_ref());
    e.verdict = verdict;
    e.rule = rule;
    e.hook = Some("dns");
    e.policy = Some(rules.policy.clone());
    e.policy_version = Some(rules.version.clone());
    (e.task, e.task_labels) = task_of(&shared, ctx.key).unzip();
    e.detail = Detail::Dns {
        query: d.query,
        qtype: d.qtype,
        proto: d.proto,
        rcode: d.rcode,
        answers: d.answers,
        cnames: d.cnames,
        ttl: d.ttl,
        error: d.error,
    };
    shared.emit(e);
}
