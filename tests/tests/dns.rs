//! Name rules (`[network] connect = ["api.agtest.test:PORT"]`) on the real kernel: the run's
//! DNS queries, whatever server its resolv.conf names, go to the daemon's forwarder; names no
//! rule covers are refused (REFUSED, a `dns` event); the addresses of allowed answers are
//! opened for the record's TTL plus dns_grace, on the rule's ports, for that run only.
//! Real resolvers (glibc's getaddrinfo through Python and getent, curl), a real authoritative
//! server on loopback run by the test (tests/src/dns.rs), real TCP listeners.
use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use agent_guard_tests::{
    dns::{loopback, Data, DnsServer},
    require_root, stdout, Daemon, PolicyFile,
};
use serde_json::Value;

const PY: &str = "/usr/bin/python3";

/// A daemon whose forwarder asks `server`, with a short grace for the expiry test.
fn daemon(server: &DnsServer, grace: &str) -> Daemon {
    Daemon::start_with(&format!("dns_upstream = [\"{}\"]\ndns_grace = \"{grace}\"\n", server.addr))
}

/// TCP listeners on `ips`, all on one port, answering every connection with a tiny HTTP
/// reply (for curl); the port.
fn listen(ips: &[IpAddr]) -> (u16, Vec<TcpListener>) {
    'again: loop {
        let first = TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)) {
                Ok(l) => all.push(l),
                Err(_) => continue 'again,
            }
        }
        for l in &all {
            let l = l.try_clone().unwrap();
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let mut s = s;
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                }
            });
        }
        return (port, all);
    }
}

/// A policy that runs shells, Python, getent and curl, and connects as `connect` says.
fn policy(d: &Daemon, name: &str, connect: &[String]) -> PathBuf {
    PolicyFile::new(name)
        .read(["/usr", "/lib", "/lib64", "/etc", "/proc", "/dev", "/tmp", "/bin", "/sbin"])
        .exec(["/usr/bin/", "/bin/"])
        .connect(connect)
        .write_to(d.dir.path())
}

/// `agent-guard run` of `sh -c script` (at most 30 s).
fn run(d: &Daemon, pol: &Path, name: &str, script: &str) -> Output {
    let mut c = Command::new(agent_guard_tests::binary())
        .arg("--config")
        .arg(&d.config)
        .args(["run", "--policy", pol.to_str().unwrap(), "--name", name, "--", "/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            panic!("run {name} did not finish: {:?}", c.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.wait_with_output().unwrap()
}

/// Python: resolve each name (IPv4 unless `family` says otherwise) and connect to `port`;
/// one line per name: "NAME connected ADDR", "NAME resolve ERROR" or "NAME connect ERRNO".
fn py_connect(names: &[&str], port: u16, family: &str) -> String {
    let list = names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(",");
    format!(
        "{PY} -c '
import socket
for h in [{list}]:
    try:
        a = socket.getaddrinfo(h, {port}, socket.{family}, socket.SOCK_STREAM)[0][4]
    except Exception as e:
        print(h, \"resolve\", type(e).__name__, flush=True); continue
    s = socket.socket(socket.{family})
    try:
        s.connect(a); print(h, \"connected\", a[0], flush=True)
    except OSError as e:
        print(h, \"connect\", e.errno, flush=True)
'"
    )
}

fn dns_events(d: &Daemon, run: &str) -> Vec<Value> {
    d.events().into_iter().filter(|e| e["kind"] == "dns" && e["run_name"] == run).collect()
}

#[test]
fn allowed_names_resolve_and_connect_unlisted_names_are_refused() {
    require_root!();
    let (a, b) = (loopback(1), loopback(2));
    let server = DnsServer::start(Ipv4Addr::LOCALHOST);
    let (port, _l) = listen(&[a, b]);
    server.a("api.agtest.test", Ipv4Addr::new(127, 0, 53, 1)).a("other.agtest.test", Ipv4Addr::new(127, 0, 53, 2));
    let d = daemon(&server, "60s");
    let pol = policy(&d, "names", &[format!("api.agtest.test:{port}")]);
    let script = format!(
        "{}; getent hosts api.agtest.test; getent hosts other.agtest.test || echo getent-other-failed; \
         curl -s --max-time 5 http://api.agtest.test:{port}/; echo curl=$?; \
         {PY} -c 'import socket; s = socket.socket()
try:
    s.connect((\"127.0.53.2\", {port})); print(\"direct connected\")
except OSError as e:
    print(\"direct\", e.errno)'",
        py_connect(&["api.agtest.test", "other.agtest.test"], port, "AF_INET")
    );
    let o = run(&d, &pol, "names", &script);
    let out = stdout(&o);
    assert!(out.contains("api.agtest.test connected 127.0.53.1"), "{o:?}");
    assert!(out.contains("other.agtest.test resolve gaierror"), "{o:?}");
    assert!(out.contains("127.0.53.1") && out.lines().any(|l| l.starts_with("127.0.53.1") && l.contains("api.agtest.test")), "getent: {o:?}");
    assert!(out.contains("getent-other-failed"), "{o:?}");
    assert!(out.contains("ok\ncurl=0"), "curl by name: {o:?}");
    // An address of an unlisted name, learned outside the run: a plain refused connect.
    assert!(out.contains(&format!("direct {}", libc::EPERM)), "{o:?}");

    let ev = dns_events(&d, "names");
    let refused: Vec<&Value> = ev.iter().filter(|e| e["query"] == "other.agtest.test").collect();
    assert!(!refused.is_empty(), "{ev:#?}");
    for e in &refused {
        assert_eq!((e["verdict"].as_str(), e["rule"].as_str(), e["rcode"].as_str()), (Some("deny"), Some("network.connect"), Some("REFUSED")), "{e:#}");
    }
    let allowed = ev.iter().find(|e| e["query"] == "api.agtest.test" && e["qtype"] == "A").expect("allowed query event");
    assert_eq!(allowed["verdict"], "allow", "{allowed:#}");
    assert_eq!(allowed["answers"], serde_json::json!(["127.0.53.1"]), "{allowed:#}");
    let conn = d.wait_for("connect with domain", |e| e["kind"] == "connect" && e["addr"] == "127.0.53.1" && e["run_name"] == "names");
    let c = conn.iter().find(|e| e["kind"] == "connect" && e["addr"] == "127.0.53.1" && e["run_name"] == "names").unwrap();
    assert_eq!((c["verdict"].as_str(), c["domain"].as_str()), (Some("allow"), Some("api.agtest.test")), "{c:#}");
}
