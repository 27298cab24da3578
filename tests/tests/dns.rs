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
/// Answers may open loopback addresses: the tests' names resolve to 127.0.53.N.
fn daemon(server: &DnsServer, grace: &str) -> Daemon {
    Daemon::start_with(&format!("dns_upstream = [\"{}\"]\ndns_grace = \"{grace}\"\ndns_loopback_answers = true\n", server.addr))
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

const READS: [&str; 8] = ["/usr", "/lib", "/lib64", "/etc", "/proc", "/dev", "/tmp", "/bin"];

/// The tests' server with `names` all at 127.0.53.`n`, a listener there, and a daemon
/// forwarding to the server: (server, the listener's port, the listener, the daemon).
fn world(n: u8, names: &[&str]) -> (DnsServer, u16, Vec<TcpListener>, Daemon) {
    let server = DnsServer::start(Ipv4Addr::LOCALHOST);
    let (port, l) = listen(&[loopback(n)]);
    for name in names {
        server.a(name, Ipv4Addr::new(127, 0, 53, n));
    }
    let d = daemon(&server, "60s");
    (server, port, l, d)
}

/// A policy named `name` that runs shells, Python, getent and curl (no network rules yet).
fn base(name: &str) -> PolicyFile {
    PolicyFile::new(name).read(READS).exec(["/usr/bin/", "/bin/"])
}

/// [`base`] that connects as `connect` says, written into the daemon's directory.
fn policy(d: &Daemon, name: &str, connect: &[String]) -> PathBuf {
    base(name).connect(connect).write_to(d.dir.path())
}

/// `agent-guard run` of `sh -c script`, to its end (at most 30 s).
fn run(d: &Daemon, pol: &Path, name: &str, script: &str) -> Output {
    finish(spawn(d, pol, name, script))
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

/// Python: a TCP connect to `addr`:`port`, no name involved: "LABEL connected" or "LABEL ERRNO".
fn py_direct(label: &str, addr: &str, port: u16) -> String {
    format!(
        "{PY} -c 'import socket; s = socket.socket()
try:
    s.connect((\"{addr}\", {port})); print(\"{label} connected\")
except OSError as e:
    print(\"{label}\", e.errno)'"
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
         curl -s --max-time 5 http://api.agtest.test:{port}/; echo curl=$?; {}",
        py_connect(&["api.agtest.test", "other.agtest.test"], port, "AF_INET"),
        py_direct("direct", "127.0.53.2", port)
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

/// Python: a raw query for `name` (type A) to `server` over UDP or TCP; prints
/// "NAME udp|tcp rcode N answers M" and, for UDP, "from ADDR PORT" (the reply's source).
fn py_raw_query(name: &str, server: &str, tcp: bool) -> String {
    py_raw_query_as(name, server, tcp, 1, 0)
}

/// [`py_raw_query`] with a query type and an opcode of its own.
fn py_raw_query_as(name: &str, server: &str, tcp: bool, qtype: u16, opcode: u8) -> String {
    let flags = 0x0100u16 | (u16::from(opcode) << 11);
    format!(
        "{PY} -c '
import socket, struct
name, server, tcp = \"{name}\", (\"{server}\", 53), {tcp}
qn = b\"\".join(bytes([len(l)]) + l.encode() for l in name.split(\".\")) + b\"\\0\"
pkt = struct.pack(\">HHHHHH\", 0x1234, {flags}, 1, 0, 0, 0) + qn + struct.pack(\">HH\", {qtype}, 1)
try:
    if tcp:
        s = socket.create_connection(server, timeout=5)
        s.sendall(struct.pack(\">H\", len(pkt)) + pkt)
        n = struct.unpack(\">H\", s.recv(2))[0]
        r = b\"\"
        while len(r) < n:
            r += s.recv(n - len(r))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(pkt, server)
        r, frm = s.recvfrom(4096)
        print(\"from\", frm[0], frm[1])
    print(name, \"tcp\" if tcp else \"udp\", \"rcode\", r[3] & 15, \"answers\", struct.unpack(\">H\", r[6:8])[0], flush=True)
except OSError as e:
    print(name, \"query failed\", e.errno, flush=True)
'",
        tcp = if tcp { "True" } else { "False" }
    )
}

#[test]
fn wildcards_cnames_aaaa_tcp_and_any_server() {
    require_root!();
    let server = DnsServer::start(Ipv4Addr::LOCALHOST);
    let ips = [loopback(3), loopback(4), loopback(5), IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)];
    let (port, _l) = listen(&ips);
    server
        .a("raw.cdn.agtest.test", Ipv4Addr::new(127, 0, 53, 3))
        .a("a.b.cdn.agtest.test", Ipv4Addr::new(127, 0, 53, 3))
        .a("cdn.agtest.test", Ipv4Addr::new(127, 0, 53, 4))
        .add("alias.agtest.test", 300, Data::Cname("edge.unlisted.test".into()))
        .a("edge.unlisted.test", Ipv4Addr::new(127, 0, 53, 5))
        .add("v6.agtest.test", 300, Data::Aaaa(std::net::Ipv6Addr::LOCALHOST))
        .a("tcp.agtest.test", Ipv4Addr::new(127, 0, 53, 3));
    let d = daemon(&server, "60s");
    let rules = ["*.cdn.agtest.test", "alias.agtest.test", "v6.agtest.test", "tcp.agtest.test"].map(|n| format!("{n}:{port}"));
    let pol = policy(&d, "wild", &rules);
    // 192.0.2.1 is no server at all (TEST-NET-1): the query is answered all the same, by the
    // forwarder, and the UDP reply says it came from 192.0.2.1:53.
    let script = [
        py_connect(&["raw.cdn.agtest.test", "a.b.cdn.agtest.test", "cdn.agtest.test", "alias.agtest.test", "edge.unlisted.test"], port, "AF_INET"),
        py_connect(&["v6.agtest.test"], port, "AF_INET6"),
        py_raw_query("tcp.agtest.test", "192.0.2.1", true),
        py_raw_query("tcp.agtest.test", "192.0.2.1", false),
        py_raw_query("nope.unlisted.test", "192.0.2.1", true),
    ]
    .join("; ");
    let o = run(&d, &pol, "wild", &script);
    let out = stdout(&o);
    for want in [
        "raw.cdn.agtest.test connected 127.0.53.3",
        "a.b.cdn.agtest.test connected 127.0.53.3",
        // The bare suffix of a wildcard is not covered.
        "cdn.agtest.test resolve gaierror",
        // A CNAME to a name no rule covers follows the rule of the name asked...
        "alias.agtest.test connected 127.0.53.5",
        // ...but that name asked directly is refused.
        "edge.unlisted.test resolve gaierror",
        "v6.agtest.test connected ::1",
        "tcp.agtest.test tcp rcode 0 answers 1",
        "from 192.0.2.1 53",
        "tcp.agtest.test udp rcode 0 answers 1",
        // REFUSED is rcode 5.
        "nope.unlisted.test tcp rcode 5 answers 0",
    ] {
        assert!(out.contains(want), "missing {want:?} in: {o:?}");
    }
    assert!(server.tcp_queries.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the TCP query reached the server over TCP");
    let ev = dns_events(&d, "wild");
    let alias = ev.iter().find(|e| e["query"] == "alias.agtest.test" && e["qtype"] == "A").expect("alias event");
    assert_eq!(alias["cnames"], serde_json::json!(["edge.unlisted.test"]), "{alias:#}");
    assert!(ev.iter().any(|e| e["query"] == "tcp.agtest.test" && e["proto"] == "tcp" && e["verdict"] == "allow"), "{ev:#?}");
}

#[test]
fn an_address_closes_after_its_ttl_and_the_grace() {
    require_root!();
    let server = DnsServer::start(Ipv4Addr::LOCALHOST);
    let (port, _l) = listen(&[loopback(6)]);
    server.add("short.agtest.test", 1, Data::A(Ipv4Addr::new(127, 0, 53, 6)));
    let d = daemon(&server, "1s");
    let pol = policy(&d, "ttl", &[format!("short.agtest.test:{port}")]);
    // TTL 1 s + grace 1 s: open at once, closed 3.5 s later (no new query), open again after
    // a new answer.
    let again = py_direct("late", "127.0.53.6", port);
    let script = format!("{}; sleep 3.5; {again}; {}", py_connect(&["short.agtest.test"], port, "AF_INET"), py_connect(&["short.agtest.test"], port, "AF_INET"));
    let o = run(&d, &pol, "ttl", &script);
    let out = stdout(&o);
    assert_eq!(out.matches("short.agtest.test connected 127.0.53.6").count(), 2, "{o:?}");
    assert!(out.contains(&format!("late {}", libc::EPERM)), "{o:?}");
    let ev = dns_events(&d, "ttl");
    assert!(ev.iter().any(|e| e["query"] == "short.agtest.test" && e["ttl"] == 1), "{ev:#?}");
}

#[test]
fn two_runs_resolve_the_same_name_and_only_the_allowed_one_connects() {
    require_root!();
    let (_server, port, _l, d) = world(7, &["api.agtest.test"]);
    let wide = policy(&d, "wide", &[format!("api.agtest.test:{port}")]);
    // The same name on another port: it resolves, and its address stays closed on `port`.
    let narrow = policy(&d, "narrow", &["api.agtest.test:1".to_string()]);
    let direct = py_direct("direct", "127.0.53.7", port);
    let o = run(&d, &wide, "wide", &py_connect(&["api.agtest.test"], port, "AF_INET"));
    assert!(stdout(&o).contains("api.agtest.test connected 127.0.53.7"), "{o:?}");
    // While the wide run's entry lives: the narrow run, as root and as nobody, cannot use it.
    let script = format!("{}; {direct}", py_connect(&["api.agtest.test"], port, "AF_INET"));
    let o = run(&d, &narrow, "narrow", &script);
    let out = stdout(&o);
    assert!(out.contains(&format!("api.agtest.test connect {}", libc::EPERM)), "{o:?}");
    assert!(out.contains(&format!("direct {}", libc::EPERM)), "{o:?}");
    let mut text = std::fs::read_to_string(&narrow).unwrap();
    text.push_str("\n[process]\nuser = \"nobody\"\n");
    let as_nobody = d.dir.path().join("narrow-nobody.toml");
    std::fs::write(&as_nobody, text.replace("name = \"narrow\"", "name = \"narrow-nobody\"")).unwrap();
    let o = run(&d, &as_nobody, "nobody", &format!("id -u; {script}"));
    let out = stdout(&o);
    assert!(out.starts_with("65534\n"), "{o:?}");
    assert!(out.contains(&format!("api.agtest.test connect {}", libc::EPERM)) && out.contains(&format!("direct {}", libc::EPERM)), "{o:?}");
    let ev = dns_events(&d, "narrow");
    assert!(ev.iter().any(|e| e["query"] == "api.agtest.test" && e["verdict"] == "allow"), "the narrow run resolved it: {ev:#?}");
}

#[test]
fn monitor_mode_answers_unlisted_names_and_reports_would_deny() {
    require_root!();
    let (_server, port, _l, d) = world(8, &["api.agtest.test", "other.agtest.test"]);
    let pol = base("watch")
        .mode("monitor")
        .connect([format!("api.agtest.test:{port}")])
        .write_to(d.dir.path());
    let o = run(&d, &pol, "watch", &py_connect(&["other.agtest.test"], port, "AF_INET"));
    assert!(stdout(&o).contains("other.agtest.test connected 127.0.53.8"), "{o:?}");
    let ev = dns_events(&d, "watch");
    let e = ev.iter().find(|e| e["query"] == "other.agtest.test").expect("event");
    assert_eq!((e["verdict"].as_str(), e["rule"].as_str()), (Some("would_deny"), Some("network.connect")), "{e:#}");
    // The connect names the name it resolved, and `policy suggest` proposes the name, not
    // the address.
    let is = |e: &Value| e["kind"] == "connect" && e["run_name"] == "watch" && e["addr"] == "127.0.53.8";
    let c = d.wait_for("the connect", is).into_iter().find(is).unwrap();
    assert_eq!((c["verdict"].as_str(), c["domain"].as_str()), (Some("would_deny"), Some("other.agtest.test")), "{c:#}");
    let o = d.cli(&["policy", "suggest", "--run", "watch"]);
    let text = stdout(&o);
    assert!(text.contains(&format!("\"other.agtest.test:{port}\"")), "{o:?}");
    assert!(!text.contains("127.0.53.8/32"), "{text}");
    let suggested = d.dir.path().join("suggested.toml");
    std::fs::write(&suggested, &text).unwrap();
    let o = Command::new(agent_guard_tests::binary()).args(["policy", "check"]).arg(&suggested).output().unwrap();
    assert!(o.status.success(), "the suggested policy checks: {o:?}");
}

#[test]
fn policy_check_names_bad_name_rules_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "name = \"bad\"\n[network]\nconnect = [\"pypi.org:443\", \"*.com:443\",\n  \"a..b.org:1\", \"files.pythonhosted.org\"]\n").unwrap();
    let o = Command::new(agent_guard_tests::binary()).args(["policy", "check"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{err}");
    for want in ["3:28: network.connect[1]", "top-level domain", "4:3: network.connect[2]", "empty label", "4:17: network.connect[3]", "has no port"] {
        assert!(err.contains(want), "missing {want:?}: {err}");
    }
    assert!(!err.contains("network.connect[0]"), "the good rule is not an error: {err}");
    std::fs::write(&p, "name = \"good\"\n[network]\nconnect = [\"PyPI.org:443\", \"*.githubusercontent.com:443\", \"10.0.0.0/8:5432\"]\n").unwrap();
    let o = Command::new(agent_guard_tests::binary()).args(["policy", "check"]).arg(&p).output().unwrap();
    assert!(o.status.success(), "{o:?}");
}

/// `agent-guard run` of `sh -c script` in the background.
fn spawn(d: &Daemon, pol: &Path, name: &str, script: &str) -> std::process::Child {
    Command::new(agent_guard_tests::binary())
        .arg("--config")
        .arg(&d.config)
        .args(["run", "--policy", pol.to_str().unwrap(), "--name", name, "--", "/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: std::process::Child) -> Output {
    let pid = c.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(c.wait_with_output().unwrap()));
    rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        panic!("the run did not finish")
    })
}

#[test]
fn under_freeze_an_unlisted_name_is_held_and_approve_or_deny_answers_it() {
    require_root!();
    let (_server, port, _l, d) = world(9, &["api.agtest.test", "new.agtest.test"]);
    let pol = base("held")
        .on_violation("freeze")
        .read([std::env::current_dir().unwrap()])
        .connect([format!("api.agtest.test:{port}")])
        .write_to(d.dir.path());
    for (name, answer) in [("approved", "approve"), ("denied", "deny")] {
        let run = spawn(&d, &pol, name, &py_connect(&["new.agtest.test"], port, "AF_INET"));
        let is_held = |e: &Value| e["kind"] == "hold" && e["hold"] == "held" && e["run_name"] == name;
        let h = d.wait_for("hold", is_held).into_iter().find(is_held).unwrap();
        // The evidence names the name, and the process that asked.
        assert_eq!(h["attempts"][0]["kind"], "dns", "{h:#}");
        assert_eq!(h["attempts"][0]["what"], "new.agtest.test", "{h:#}");
        assert_eq!(h["comm"], "python3", "{h:#}");
        assert!(h["pid"].as_u64().unwrap() > 0, "{h:#}");
        let id = h["run"].as_str().unwrap().to_string();
        let events = std::fs::read_to_string(d.cgroup_root.join(&id).join("cgroup.events")).unwrap_or_default();
        assert!(events.contains("frozen 1"), "the run is frozen while the name waits: {events}");
        let args: Vec<&str> = if answer == "approve" { vec!["approve", "--yes", &id] } else { vec!["deny", &id] };
        let o = d.cli(&args);
        assert!(o.status.success(), "{o:?}");
        let o = finish(run);
        let out = stdout(&o);
        if answer == "approve" {
            assert!(out.contains("new.agtest.test connected 127.0.53.9"), "{o:?}");
            let ev = dns_events(&d, name);
            assert!(ev.iter().any(|e| e["query"] == "new.agtest.test" && e["verdict"] == "allow" && e["rule"] == "grant"), "{ev:#?}");
        } else {
            assert!(out.contains("new.agtest.test resolve gaierror"), "{o:?}");
            // The resolver's retries of the denied name are refused, not held again.
            let holds = d.events().iter().filter(|e| e["kind"] == "hold" && e["hold"] == "held" && e["run_name"] == name).count();
            assert_eq!(holds, 1, "one hold for the name");
        }
    }
}

#[test]
fn a_task_resolves_only_the_names_both_it_and_its_run_allow() {
    use std::os::unix::fs::PermissionsExt;
    require_root!();
    let (_server, port, _l, d) = world(10, &["api.agtest.test", "other.agtest.test"]);
    // The task socket lies in the daemon's directory: reachable by the run's processes.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ag = agent_guard_tests::binary().canonicalize().unwrap();
    let both = [format!("api.agtest.test:{port}"), format!("other.agtest.test:{port}")];
    let run_pol = base("taskrun").read([ag.parent().unwrap()]).exec([&ag]).connect(&both).write_to(d.dir.path());
    // The task's policy file: somewhere the run may read.
    let tmp = tempfile::Builder::new().prefix("ag-dns-task-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let task_pol = base("tasknames").connect([&both[0]]).write_to(tmp.path());
    let lookups = py_connect(&["api.agtest.test", "other.agtest.test"], port, "AF_INET");
    let script = format!("{} task --id toolu_dns --policy {} -- /bin/sh -c {}; echo ---; {lookups}", ag.display(), task_pol.display(), shell_quote(&lookups));
    let o = run(&d, &run_pol, "taskdns", &script);
    let out = stdout(&o);
    let (task, run) = out.split_once("---").unwrap_or_else(|| panic!("{o:?}"));
    assert!(task.contains("api.agtest.test connected 127.0.53.10"), "{o:?}");
    assert!(task.contains("other.agtest.test resolve gaierror"), "the task resolved a name only its run allows: {o:?}");
    assert!(run.contains("other.agtest.test connected 127.0.53.10"), "{o:?}");
    let ev = dns_events(&d, "taskdns");
    let refused = ev.iter().find(|e| e["query"] == "other.agtest.test" && e["verdict"] == "deny").expect("refused in the task");
    // The task's own rule set (the intersection), and the task named.
    assert!(refused["policy"].as_str().unwrap_or("").starts_with("taskrun~tasknames"), "{refused:#}");
    assert_eq!(refused["task"], "toolu_dns", "{refused:#}");
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn answers_open_no_special_addresses_and_only_queries_go_upstream() {
    require_root!();
    let server = DnsServer::start(Ipv4Addr::LOCALHOST);
    let (port, _l) = listen(&[loopback(11)]);
    server.a("home.agtest.test", Ipv4Addr::new(127, 0, 53, 11)).a("meta.agtest.test", Ipv4Addr::new(169, 254, 169, 254));
    // The default: loopback answers open nothing.
    let d = Daemon::start_with(&format!("dns_upstream = [\"{}\"]\n", server.addr));
    let rules = [format!("home.agtest.test:{port}"), "meta.agtest.test:80".to_string()];
    let pol = policy(&d, "special", &rules);
    let before = server.queries.load(std::sync::atomic::Ordering::SeqCst);
    let script = [
        py_connect(&["home.agtest.test"], port, "AF_INET"),
        // AXFR (252) and an UPDATE (opcode 5) of an allowed name: NOTIMP (4), never upstream.
        py_raw_query_as("home.agtest.test", "192.0.2.1", true, 252, 0),
        py_raw_query_as("home.agtest.test", "192.0.2.1", false, 1, 5),
    ]
    .join("; ");
    let o = run(&d, &pol, "special", &script);
    let out = stdout(&o);
    // The answer comes back unchanged, and the address stays closed.
    assert!(out.contains(&format!("home.agtest.test connect {}", libc::EPERM)), "{o:?}");
    assert_eq!(out.matches("rcode 4 answers 0").count(), 2, "{o:?}");
    assert_eq!(server.queries.load(std::sync::atomic::Ordering::SeqCst) - before, 1, "only the A query reached the server");
    let ev = dns_events(&d, "special");
    let e = ev.iter().find(|e| e["query"] == "home.agtest.test" && e["qtype"] == "A").expect("event");
    assert!(e["error"].as_str().unwrap_or("").contains("not opened: 127.0.53.11"), "{e:#}");
    assert!(e.get("answers").is_none(), "{e:#}");
}
