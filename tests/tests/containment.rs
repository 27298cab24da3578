//! Containment: nothing leaves a run that the policy does not name. Unix sockets
//! (`[network] unix`), socket families (`[network] families`) and binding/listening
//! (`[network] listen`), on this host's kernel (tracepoint backend; the VM matrix runs the
//! scenarios of tests/src/scenarios.rs against the lsm backend).
//!
//! Each attack is a real process in a real run, as root and as an unprivileged user (the probe
//! drops to uid 65534 inside the run), and the same operation from a process outside every run
//! must still work. The daemons run with the default config: the run's Landlock layer is on,
//! and an abstract socket the policy allows must work through it; its seccomp filter refuses
//! unlisted socket families with EPERM before the socket exists, while in a bound cgroup the
//! eBPF check kills at the entry of socket(2).
use std::os::unix::net::{UnixDatagram, UnixListener};

use agent_guard_tests::{probe, probe_in, require_root, status, stdout, Daemon, PolicyFile, TestCgroup};
use serde_json::Value;

const KILLED: i32 = 128 + 9;

struct World {
    d: Daemon,
    tmp: tempfile::TempDir,
    policy: std::path::PathBuf,
    abstract_ok: String,
    abstract_bad: String,
    _keep: (Vec<UnixListener>, UnixDatagram),
}

/// The policy of the containment tests (`families` listed as given).
fn contain_policy(name: &str, tmp: &std::path::Path, abstract_ok: &str, families: &[&str]) -> PolicyFile {
    PolicyFile::for_probe(name)
        .connect(["127.0.0.1:1-65535"])
        .unix([format!("{}/allowed/", tmp.display()), format!("@{abstract_ok}")])
        .listen(["127.0.0.1:47000-47999"])
        .families(families)
        // The probe drops to uid 65534 inside the run (as-user), and makes packet sockets as
        // root: what it needs of the capabilities `agent-guard run` otherwise clears.
        .capabilities(["CAP_SETUID", "CAP_SETGID", "CAP_NET_RAW"])
}

impl World {
    fn path(&self, rel: &str) -> String {
        self.tmp.path().join(rel).display().to_string()
    }
}

fn world(families: &[&str]) -> World {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start();
    let tmp = tempfile::Builder::new().prefix("ag-contain-").tempdir().unwrap();
    // Reachable by the unprivileged user too: only the policy stands in the way.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(tmp.path().join("allowed")).unwrap();
    // Unique per world (tests run side by side in one process).
    let tag = tmp.path().file_name().unwrap().to_string_lossy().into_owned();
    let (abstract_ok, abstract_bad) = (format!("agc-ok-{tag}"), format!("agc-bad-{tag}"));
    let mut ls = vec![
        UnixListener::bind(tmp.path().join("allowed/agent.sock")).unwrap(),
        UnixListener::bind(tmp.path().join("docker.sock")).unwrap(),
    ];
    for n in [&abstract_ok, &abstract_bad] {
        ls.push(UnixListener::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(n.as_bytes()).unwrap()).unwrap());
    }
    let dgram = UnixDatagram::bind(tmp.path().join("journal.dgram")).unwrap();
    for f in ["allowed/agent.sock", "docker.sock", "journal.dgram"] {
        std::fs::set_permissions(tmp.path().join(f), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let policy = contain_policy("contain", tmp.path(), &abstract_ok, families).write_to(d.dir.path());
    World { d, tmp, policy, abstract_ok, abstract_bad, _keep: (ls, dgram) }
}

/// The probe in a run named `name`; `user`: as uid 65534 inside the run.
fn run(w: &World, name: &str, user: bool, args: &[&str]) -> std::process::Output {
    let mut v: Vec<&str> = Vec::new();
    if user {
        v.extend(["as-user", "65534"]);
    }
    v.extend_from_slice(args);
    w.d.probe_run(&w.policy, name, &v)
}

/// The probe outside every run.
fn outside(args: &[&str]) -> std::process::Output {
    std::process::Command::new(probe()).args(args).output().unwrap()
}

fn said(o: &std::process::Output) -> String {
    stdout(o).trim().to_string()
}

fn violation(d: &Daemon, name: &str, kind: &str) -> Value {
    let events = d.wait_for(&format!("{kind} violation of {name}"), |e| {
        e["run_name"] == name && e["kind"] == kind && e["verdict"] != "allow"
    });
    events.into_iter().find(|e| e["run_name"] == name && e["kind"] == kind && e["verdict"] != "allow").unwrap()
}

/// Every event so far matches the published schema (deploy/events.schema.json).
fn matches_schema(d: &Daemon) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/events.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    for e in d.events() {
        let errors: Vec<String> = v.iter_errors(&e).map(|x| x.to_string()).collect();
        assert!(errors.is_empty(), "{e}\ndoes not match the schema: {errors:?}");
    }
}

fn free_port(lo: u16, hi: u16) -> u16 {
    (lo..=hi).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()).expect("a free port")
}

#[test]
fn unix_sockets_only_where_the_policy_says() {
    require_root!();
    let w = world(&[]);
    let st = w.d.cli(&["status", "--json"]);
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    let unix = st["enforcement"].as_array().unwrap().iter().find(|e| e["operation"] == "unix-connect").unwrap().clone();
    if unix["action"] == "none" {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and no unix enforcement here: {unix}");
        eprintln!("skip unix_sockets_only_where_the_policy_says: {}", unix["how"]);
        return;
    }
    let (ok, docker, dgram) = (w.path("allowed/agent.sock"), w.path("docker.sock"), w.path("journal.dgram"));
    let climb = w.path("allowed/../docker.sock");
    let (a_ok, a_bad) = (format!("@{}", w.abstract_ok), format!("@{}", w.abstract_bad));
    for user in [false, true] {
        let tag = if user { "user" } else { "root" };
        // Allowed: the listed path, below the listed directory, and the listed abstract name
        // (through the run's Landlock layer, whose abstract scope the policy turns off).
        for (what, target) in [("path", &ok), ("abstract", &a_ok)] {
            let o = run(&w, &format!("ok-{what}-{tag}"), user, &["unix-connect", target]);
            assert_eq!((status(&o), said(&o).as_str()), (0, "ok connected"), "{what} {tag}: {o:?}");
        }
        // Refused: an unlisted path, a climb out of the directory, an unlisted abstract name,
        // a datagram to an unlisted socket.
        for (what, args, kind) in [
            ("path", vec!["unix-connect", docker.as_str()], "connect"),
            ("climb", vec!["unix-connect", climb.as_str()], "connect"),
            ("abstract", vec!["unix-connect", a_bad.as_str()], "connect"),
            ("dgram", vec!["unix-send", dgram.as_str()], "sendmsg"),
        ] {
            let name = format!("bad-{what}-{tag}");
            let o = run(&w, &name, user, &args);
            assert_eq!((status(&o), said(&o).as_str()), (1, "err EPERM"), "{what} {tag}: {o:?}");
            let e = violation(&w.d, &name, kind);
            assert_eq!(
                (e["verdict"].as_str(), e["rule"].as_str(), e["family"].as_str(), e["layer"].as_str()),
                (Some("deny"), Some("network.unix"), Some("unix"), Some("ebpf")),
                "{e}"
            );
            let want = if what == "abstract" { a_bad.clone() } else { args[1].to_string() };
            assert_eq!(e["path"].as_str(), Some(want.as_str()), "{e}");
            assert_eq!(e["uid"], if user { 65534 } else { 0 }, "{e}");
        }
    }
    matches_schema(&w.d);
    // Outside every run nothing changes.
    for args in [vec!["unix-connect", docker.as_str()], vec!["unix-connect", a_bad.as_str()], vec!["unix-send", dgram.as_str()]] {
        let o = outside(&args);
        assert_eq!(status(&o), 0, "outside {args:?}: {o:?}");
    }
}

#[test]
fn socket_families_beyond_ip_unix_and_netlink_route_are_refused() {
    require_root!();
    let w = world(&[]);
    // (what, socket(2) arguments, family_name, netlink protocol name)
    let refused: &[(&str, [&str; 3], &str, Option<&str>)] = &[
        ("packet", ["17", "3", "0"], "packet", None),
        // The high bits of the register are not the kernel's int: still AF_PACKET.
        ("packet-high", ["0x100000011", "3", "0"], "packet", None),
        ("vsock", ["40", "1", "0"], "vsock", None),
        ("tipc", ["30", "2", "0"], "tipc", None),
        ("audit", ["16", "3", "9"], "netlink", Some("audit")),
        ("uevent", ["16", "2", "15"], "netlink", Some("kobject_uevent")),
    ];
    // Launched runs (`on_violation = "deny"`): the run's seccomp filter refuses the socket
    // with EPERM before it exists, and the process goes on.
    for user in [false, true] {
        let tag = if user { "user" } else { "root" };
        for (what, args, family, netlink) in refused {
            let name = format!("{what}-{tag}");
            let o = run(&w, &name, user, &["socket", args[0], args[1], args[2]]);
            assert_eq!((status(&o), said(&o).as_str()), (1, "err EPERM"), "{name}: {o:?}");
            let e = violation(&w.d, &name, "socket");
            assert_eq!(
                (e["verdict"].as_str(), e["rule"].as_str(), e["family_name"].as_str(), e["netlink"].as_str()),
                (Some("deny"), Some("network.families"), Some(*family), *netlink),
                "{e}"
            );
            assert_eq!((e["layer"].as_str(), e["error"].as_str(), e.get("hook")), (Some("seccomp"), Some("EPERM"), None), "{e}");
            assert_eq!(e["uid"], if user { 65534 } else { 0 }, "{e}");
        }
        // What stays allowed: IP, unix pairs, netlink route (an RTM_GETLINK dump).
        let o = run(&w, &format!("route-{tag}"), user, &["netlink-route"]);
        assert!(status(&o) == 0 && said(&o).starts_with("ok links"), "{o:?}");
        let o = run(&w, &format!("pair-{tag}"), user, &["socketpair", "1", "1"]);
        assert_eq!(said(&o), "ok socketpair", "{o:?}");
        let o = run(&w, &format!("tcp-{tag}"), user, &["socket", "2", "1", "0"]);
        assert_eq!(status(&o), 0, "{o:?}");
    }
    // socketpair(2) of an unlisted family: refused the same way.
    let o = run(&w, "pair-tipc", false, &["socketpair", "30", "2"]);
    assert_eq!((status(&o), said(&o).as_str()), (1, "err EPERM"), "{o:?}");
    assert_eq!(violation(&w.d, "pair-tipc", "socket")["family_name"], "tipc");
    matches_schema(&w.d);
    // Outside every run, as root: packet and netlink audit sockets are created.
    for args in [["17", "3", "0"], ["16", "3", "9"], ["16", "2", "15"]] {
        let o = outside(&["socket", args[0], args[1], args[2]]);
        assert!(said(&o).starts_with("ok socket"), "outside {args:?}: {o:?}");
    }

    // A bound cgroup has no seccomp filter: the eBPF check kills at the entry of socket(2)
    // (the high bits of the register are not the kernel's int: still AF_PACKET).
    let tree = TestCgroup::create("agent-guard-containtest");
    let scope = tree.0.join("a.scope");
    std::fs::create_dir(&scope).unwrap();
    let bound = contain_policy("contain-bound", w.tmp.path(), &w.abstract_ok, &[]).bind([format!("{}/*.scope", tree.name())]);
    let out = w.d.cli(&["policy", "apply", bound.write_to(w.d.dir.path()).to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let name = format!("/{}/a.scope", tree.name());
    w.d.wait_for("binding of a.scope", |e| e["kind"] == "run_start" && e["run_name"] == name.as_str());
    for (what, args) in [("packet", ["17", "3", "0"]), ("packet-high", ["0x100000011", "3", "0"]), ("vsock", ["40", "1", "0"])] {
        let o = probe_in(&scope, &["socket", args[0], args[1], args[2]]);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&o.status), Some(9), "bound {what}: {o:?}");
        assert!(!said(&o).starts_with("ok"), "bound {what}: {o:?}");
    }
    let events = w.d.wait_for("bound family kills", |e| e["run_name"] == name.as_str() && e["kind"] == "socket");
    let e = events.iter().find(|e| e["run_name"] == name.as_str() && e["kind"] == "socket").unwrap();
    assert_eq!(
        (e["verdict"].as_str(), e["rule"].as_str(), e["family_name"].as_str(), e["hook"].as_str(), e["layer"].as_str()),
        (Some("kill"), Some("network.families"), Some("packet"), Some("tracepoint"), Some("ebpf")),
        "{e}"
    );
    let o = probe_in(&scope, &["netlink-route"]);
    assert!(status(&o) == 0 && said(&o).starts_with("ok links"), "{o:?}");
    matches_schema(&w.d);
    drop(tree);
    drop(w);

    // Listed families are allowed (vsock may be missing from the kernel: any answer but a
    // refusal by the policy will do).
    let w = world(&["vsock", "netlink:audit", "packet"]);
    let o = run(&w, "audit-listed", false, &["socket", "16", "3", "9"]);
    assert!(said(&o).starts_with("ok socket"), "{o:?}");
    let o = run(&w, "packet-listed", false, &["socket", "17", "3", "0"]);
    assert!(said(&o).starts_with("ok socket"), "{o:?}");
    let o = run(&w, "vsock-listed", false, &["socket", "40", "1", "0"]);
    assert!(status(&o) != KILLED && said(&o) != "err EPERM", "{o:?}");
    let o = run(&w, "uevent-unlisted", false, &["socket", "16", "2", "15"]);
    assert_eq!((status(&o), said(&o).as_str()), (1, "err EPERM"), "{o:?}");
    // No event says a listed family was refused.
    assert!(
        !w.d.events().iter().any(|e| e["kind"] == "socket" && e["run_name"] != "uevent-unlisted" && e["verdict"] != "allow"),
        "{:?}",
        w.d.events()
    );
}

#[test]
fn binding_and_listening_only_where_listed() {
    require_root!();
    let w = world(&[]);
    let listed = free_port(47000, 47999);
    let unlisted = free_port(48000, 48999);
    for user in [false, true] {
        let tag = if user { "user" } else { "root" };
        let o = run(&w, &format!("listed-{tag}"), user, &["listen", &format!("127.0.0.1:{listed}")]);
        assert_eq!(said(&o), format!("ok listening {listed}"), "{o:?}");
        for (what, addr) in [("port", format!("127.0.0.1:{unlisted}")), ("any", format!("0.0.0.0:{listed}")), ("v6", format!("[::]:{listed}"))] {
            let name = format!("bind-{what}-{tag}");
            let o = run(&w, &name, user, &["listen", &addr]);
            assert_eq!((status(&o), said(&o).as_str()), (1, "err EPERM"), "{name}: {o:?}");
            let e = violation(&w.d, &name, "bind");
            assert_eq!(
                (e["verdict"].as_str(), e["rule"].as_str(), e["op"].as_str(), e["hook"].as_str()),
                (Some("deny"), Some("network.listen"), Some("bind"), Some("cgroup")),
                "{e}"
            );
        }
        // listen(2) on a socket never bound: an ephemeral port on every address.
        let name = format!("unbound-{tag}");
        let o = run(&w, &name, user, &["listen-unbound"]);
        assert_eq!(status(&o), KILLED, "{o:?}");
        let e = violation(&w.d, &name, "bind");
        assert_eq!((e["verdict"].as_str(), e["op"].as_str(), e["port"].as_u64()), (Some("kill"), Some("listen"), Some(0)), "{e}");
        // Clients: a bind to port 0 and a TCP connect work.
        let o = run(&w, &format!("port0-{tag}"), user, &["bind-udp", "0.0.0.0:0"]);
        assert!(said(&o).starts_with("ok bound"), "{o:?}");
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let o = run(&w, &format!("client-{tag}"), user, &["connect", &server.local_addr().unwrap().to_string()]);
        assert_eq!(said(&o), "ok connected", "{o:?}");
    }
    matches_schema(&w.d);
    // Outside every run: the unlisted port and every address.
    let o = outside(&["listen", &format!("0.0.0.0:{unlisted}")]);
    assert_eq!(said(&o), format!("ok listening {unlisted}"), "{o:?}");
    let o = outside(&["listen-unbound"]);
    assert_eq!(said(&o), "ok listening", "{o:?}");
}

#[test]
fn monitor_mode_reports_and_refuses_nothing() {
    require_root!();
    let w = world(&[]);
    let policy = contain_policy("contain-monitor", w.tmp.path(), &w.abstract_ok, &[]).mode("monitor").write_to(w.d.dir.path());
    let docker = w.path("docker.sock");
    let addr = format!("127.0.0.1:{}", free_port(48000, 48999));
    for (name, args, kind) in [
        ("m-unix", vec!["unix-connect", docker.as_str()], "connect"),
        ("m-packet", vec!["socket", "17", "3", "0"], "socket"),
        ("m-listen", vec!["listen", addr.as_str()], "bind"),
    ] {
        let o = w.d.probe_run(&policy, name, &args);
        assert_eq!(status(&o), 0, "{name}: {o:?}");
        let e = violation(&w.d, name, kind);
        assert_eq!(e["verdict"], "would_deny", "{e}");
    }
}
