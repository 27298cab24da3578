//! Name rules in the scenario suite (run on every backend, see `scenarios`): a daemon of its
//! own forwarding to the tests' DNS server; the probe asks 192.0.2.1:53 (no such server) over
//! UDP and TCP and connects to the answer. On the lsm backend the TCP query also passes the
//! socket_connect hook, which must let through exactly what the cgroup program redirects.
use std::net::{Ipv4Addr, TcpListener};

use crate::{dns::DnsServer, probe, s, scenarios::Backend, stdout, Daemon, PolicyFile};

/// An allowed name resolves over UDP and TCP and its address connects; an unlisted name is
/// REFUSED; the unlisted name's address, learned elsewhere, is refused (EPERM).
pub fn names(backend: Backend) -> Result<(), String> {
    let server = DnsServer::start(Ipv4Addr::LOCALHOST);
    let ok = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = ok.local_addr().map_err(|e| e.to_string())?.port();
    let other = TcpListener::bind(("127.0.0.2", port)).map_err(|e| format!("127.0.0.2:{port}: {e}"))?;
    server.a("api.scenario.test", Ipv4Addr::new(127, 0, 0, 1)).a("other.scenario.test", Ipv4Addr::new(127, 0, 0, 2));
    let d = Daemon::start_with(&format!(
        "backend = \"{}\"\nlandlock = false\nseccomp = false\ndns_upstream = [\"{}\"]\ndns_loopback_answers = true\n",
        backend.name(),
        server.addr
    ));
    let pol = PolicyFile::for_probe("names").connect([format!("api.scenario.test:{port}")]).write_to(d.dir.path());
    let p = s(&probe());
    let run = |name: &str, args: &[&str]| {
        let mut a = vec!["--policy", pol.to_str().unwrap_or(""), "--name", name, "--", &p];
        a.extend_from_slice(args);
        let o = d.run(&a);
        stdout(&o).trim().to_string()
    };
    let port_s = port.to_string();
    // A socket created outside the run and passed in, connecting to port 53 of a host no rule
    // allows: no cgroup program sees it, so nothing redirects it; the lsm hook must refuse it
    // (the tracepoint backend does not judge passed sockets: see connect-passed-socket).
    let dns53 = TcpListener::bind("127.0.0.3:53").map_err(|e| format!("127.0.0.3:53: {e}"))?;
    // SAFETY: plain socket(2); the descriptor is inherited by the run (no CLOEXEC).
    let passed = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if passed < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    let passed_s = passed.to_string();
    let passed_out = run("dns-passed", &["connect-fd", &passed_s, "127.0.0.3:53"]);
    // SAFETY: our own descriptor.
    unsafe { libc::close(passed) };
    drop(dns53);
    let passed_want = if backend == Backend::Tracepoint { "ok connected" } else { "err EPERM" };
    if !passed_out.starts_with(passed_want) {
        return Err(format!("a passed socket's connect to 127.0.0.3:53: expected {passed_want:?}, got {passed_out:?}"));
    }
    let want = [
        (run("dns-udp", &["dns", "api.scenario.test", &port_s, "udp"]), "ok connected 127.0.0.1"),
        (run("dns-tcp", &["dns", "api.scenario.test", &port_s, "tcp"]), "ok connected 127.0.0.1"),
        (run("dns-refused", &["dns", "other.scenario.test", &port_s, "tcp"]), "refused rcode 5"),
        (run("dns-unopened", &["connect", &format!("127.0.0.2:{port}")]), "err EPERM"),
    ];
    drop((ok, other));
    for (got, expected) in &want {
        if got != expected {
            return Err(format!("expected {expected:?}, got {got:?} (all: {want:?})"));
        }
    }
    let refused = d.events().into_iter().any(|e| e["kind"] == "dns" && e["query"] == "other.scenario.test" && e["verdict"] == "deny");
    if !refused {
        return Err("no dns deny event for other.scenario.test".into());
    }
    Ok(())
}
