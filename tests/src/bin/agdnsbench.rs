//! agdnsbench: what the DNS forwarder of name rules adds, measured side by side inside one run.
//!
//!   agdnsbench [--queries N] [--secs S] [--clients C]
//!
//! Starts the tests' authoritative server on 127.0.0.1 and a daemon (the agent-guard binary of
//! AGENT_GUARD_BIN or target/debug) forwarding to it, then runs itself inside a run whose policy
//! has a name rule and allows the server's own address and port. Inside the run it measures,
//! interleaved, the same A query (i) sent straight to the server (a CIDR rule: not redirected)
//! and (ii) sent to 192.0.2.1:53, which the cgroup programs redirect to the run's forwarder,
//! which judges the name, asks the same server, opens the answer's address in the kernel and
//! replies: per-query latency (median, p99, one client) and queries per second with C clients.
//! Prints a Markdown table.
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use agent_guard_tests::{dns::DnsServer, Daemon, PolicyFile};

fn query(id: u16) -> Vec<u8> {
    let mut p = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in "api.bench.test".split('.') {
        p.push(l.len() as u8);
        p.extend_from_slice(l.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// One query and its answer; the latency.
fn ask(s: &UdpSocket, to: SocketAddr, id: u16) -> Duration {
    let t = Instant::now();
    s.send_to(&query(id), to).expect("send");
    let mut buf = [0u8; 512];
    loop {
        let (n, _) = s.recv_from(&mut buf).expect("no answer within 5 s");
        if n >= 2 && buf[0] == (id >> 8) as u8 && buf[1] == id as u8 {
            assert_eq!(buf[3] & 15, 0, "rcode");
            return t.elapsed();
        }
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

/// Queries per second with `clients` threads for `secs`.
fn qps(to: SocketAddr, clients: usize, secs: f64) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut n = 0u64;
                while Instant::now() < end {
                    ask(&s, to, (c as u16) << 12 | (n as u16 & 0xfff));
                    n += 1;
                }
                n
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum::<u64>() as f64 / secs
}

fn client(server: SocketAddr, queries: usize, secs: f64, clients: usize) {
    let redirected: SocketAddr = "192.0.2.1:53".parse().unwrap();
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut direct, mut fwd) = (Vec::new(), Vec::new());
    for i in 0..queries {
        direct.push(ask(&s, server, i as u16));
        fwd.push(ask(&s, redirected, i as u16));
    }
    let (d50, d99, f50, f99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99), pct(&mut fwd, 0.5), pct(&mut fwd, 0.99));
    let (dq, fq) = (qps(server, clients, secs), qps(redirected, clients, secs));
    println!("| path | median µs | p99 µs | queries/s ({clients} clients, {secs} s) |");
    println!("|---|---|---|---|");
    println!("| direct to the server | {d50:.0} | {d99:.0} | {dq:.0} |");
    println!("| through the forwarder | {f50:.0} | {f99:.0} | {fq:.0} |");
    println!("| added | {:.0} (x{:.2}) | {:.0} (x{:.2}) | x{:.2} |", f50 - d50, f50 / d50, f99 - d99, f99 / d99, fq / dq);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut queries, mut secs, mut clients, mut inner) = (2000usize, 5.0f64, 4usize, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--queries" => queries = args.next().and_then(|v| v.parse().ok()).expect("--queries N"),
            "--secs" => secs = args.next().and_then(|v| v.parse().ok()).expect("--secs S"),
            "--clients" => clients = args.next().and_then(|v| v.parse().ok()).expect("--clients C"),
            "--client" => inner = args.next().and_then(|v| v.parse::<SocketAddr>().ok()),
            _ => {
                eprintln!("usage: agdnsbench [--queries N] [--secs S] [--clients C]");
                std::process::exit(2);
            }
        }
    }
    if let Some(server) = inner {
        return client(server, queries, secs, clients);
    }
    let server = DnsServer::start(Ipv4Addr::LOCALHOST);
    server.a("api.bench.test", Ipv4Addr::new(127, 0, 53, 99));
    let d = Daemon::start_with(&format!("dns_upstream = [\"{}\"]\ndns_loopback_answers = true\n", server.addr));
    let me = std::env::current_exe().unwrap().canonicalize().unwrap();
    let pol = PolicyFile::new("dnsbench")
        .read(["/usr", "/lib", "/lib64", "/etc", "/proc", "/dev"])
        .read([me.parent().unwrap()])
        .exec([&me])
        .connect([format!("{}:{}", server.addr.ip(), server.addr.port()), "api.bench.test:443".to_string()])
        .write_to(d.dir.path());
    let o = Command::new(agent_guard_tests::binary())
        .arg("--config")
        .arg(&d.config)
        .args(["run", "--policy", pol.to_str().unwrap(), "--", me.to_str().unwrap(), "--client", &server.addr.to_string()])
        .args(["--queries", &queries.to_string(), "--secs", &secs.to_string(), "--clients", &clients.to_string()])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&o.stdout));
    if !o.status.success() {
        eprintln!("agdnsbench: the run failed: {}", String::from_utf8_lossy(&o.stderr));
        std::process::exit(1);
    }
}
