//! A small authoritative DNS server for the name-rule tests: UDP and TCP on one port of a
//! loopback address, answering from a table the test fills (A, AAAA, CNAME with TTLs;
//! NXDOMAIN for names it does not hold). Threads, no runtime; stopped on drop.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{
        rdata::{A, AAAA, CNAME},
        Name, RData, Record, RecordType,
    },
};

#[derive(Clone, Debug)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    ttl: u32,
    data: Data,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    table: Arc<Mutex<Vec<Entry>>>,
    stop: Arc<AtomicBool>,
    /// Queries answered, over both transports.
    pub queries: Arc<AtomicUsize>,
    /// Queries that came over TCP.
    pub tcp_queries: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

fn lower(n: &str) -> String {
    n.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Listens on `ip` (UDP and TCP, one free port).
    pub fn start(ip: Ipv4Addr) -> DnsServer {
        let (tcp, udp) = loop {
            let tcp = TcpListener::bind((ip, 0)).expect("bind tcp");
            let port = tcp.local_addr().unwrap().port();
            if let Ok(udp) = UdpSocket::bind((ip, port)) {
                break (tcp, udp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let table: Arc<Mutex<Vec<Entry>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        udp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let mut threads = Vec::new();
        {
            let (table, stop, queries) = (table.clone(), stop.clone(), queries.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, from)) = udp.recv_from(&mut buf) else { continue };
                    if let Some(r) = respond(&table, &buf[..n]) {
                        queries.fetch_add(1, Ordering::SeqCst);
                        let _ = udp.send_to(&r, from);
                    }
                }
            }));
        }
        {
            let (table, stop, queries, tcp_queries) = (table.clone(), stop.clone(), queries.clone(), tcp_queries.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((mut s, _)) = tcp.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    loop {
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).is_err() {
                            break;
                        }
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut q).is_err() {
                            break;
                        }
                        let Some(r) = respond(&table, &q) else { break };
                        queries.fetch_add(1, Ordering::SeqCst);
                        tcp_queries.fetch_add(1, Ordering::SeqCst);
                        let mut out = (r.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&r);
                        if s.write_all(&out).is_err() {
                            break;
                        }
                    }
                }
            }));
        }
        DnsServer { addr, table, stop, queries, tcp_queries, threads }
    }

    /// Adds a record.
    pub fn add(&self, name: &str, ttl: u32, data: Data) -> &Self {
        self.table.lock().unwrap().push(Entry { name: lower(name), ttl, data });
        self
    }

    pub fn a(&self, name: &str, ip: Ipv4Addr) -> &Self {
        self.add(name, 300, Data::A(ip))
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn record(e: &Entry) -> Record {
    let name = Name::from_ascii(format!("{}.", e.name)).unwrap();
    let data = match &e.data {
        Data::A(ip) => RData::A(A(*ip)),
        Data::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        Data::Cname(t) => RData::CNAME(CNAME(Name::from_ascii(format!("{}.", lower(t))).unwrap())),
    };
    Record::from_rdata(name, e.ttl, data)
}

/// The answer: the CNAME chain from the name asked, then its records of the type asked.
fn respond(table: &Mutex<Vec<Entry>>, q: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(q).ok()?;
    if msg.metadata.message_type != MessageType::Query || msg.queries.len() != 1 {
        return None;
    }
    let question = &msg.queries[0];
    let table = table.lock().unwrap();
    let mut name = lower(&question.name.to_ascii());
    let mut r = Message::response(msg.metadata.id, msg.metadata.op_code);
    r.metadata.authoritative = true;
    r.metadata.recursion_desired = msg.metadata.recursion_desired;
    r.add_queries(msg.queries.clone());
    let mut found = false;
    for _ in 0..8 {
        let here: Vec<&Entry> = table.iter().filter(|e| e.name == name).collect();
        found |= !here.is_empty();
        if let Some(c) = here.iter().find(|e| matches!(e.data, Data::Cname(_))) {
            r.add_answer(record(c));
            let Data::Cname(t) = &c.data else { unreachable!() };
            name = lower(t);
            continue;
        }
        for e in here {
            let ok = matches!((&e.data, question.query_type), (Data::A(_), RecordType::A) | (Data::Aaaa(_), RecordType::AAAA));
            if ok {
                r.add_answer(record(e));
            }
        }
        break;
    }
    if !found {
        r.metadata.response_code = ResponseCode::NXDomain;
    }
    r.to_vec().ok()
}

/// The address a name's A record would be, for tests that listen on it: 127.0.53.N.
pub fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 53, n))
}
