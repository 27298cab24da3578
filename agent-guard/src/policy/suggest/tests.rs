//! Tests of `policy suggest` on events written by hand (the real-kernel test is
//! tests/tests/lifecycle.rs).
use serde_json::{json, Value};

use super::*;

fn open(run: &str, path: &str, access: &str, flags: u64, verdict: &str) -> Value {
    json!({"kind": "open", "verdict": verdict, "run": run, "policy": "learn", "path": path, "access": access,
           "flags": flags, "result": 3, "comm": "cat"})
}

fn read(path: &str) -> Value {
    open("r-1", path, "read", 0, "would_deny")
}

fn exec(path: &str) -> Value {
    json!({"kind": "exec", "verdict": "allow", "run": "r-1", "path": path, "argv": [path, "--x"]})
}

fn connect(addr: &str, port: u16) -> Value {
    json!({"kind": "connect", "verdict": "would_deny", "run": "r-1", "family": "inet", "addr": addr, "port": port,
           "proto": "tcp", "result": 0})
}

fn at(events: Vec<Value>) -> Vec<(String, Value)> {
    events.into_iter().enumerate().map(|(i, e)| (format!("e:{}", i + 1), e)).collect()
}

fn policy(text: &str) -> Policy {
    let c = super::super::parse(text, "t.toml");
    assert!(c.errors.is_empty(), "{:?}\n{text}", c.errors);
    c.policy.unwrap()
}

#[test]
fn temporary_names_are_told_from_real_ones() {
    for t in ["1234", "tmp.AbC123", "tmp.abcdef12", "tmpk2x_9q0a", "tmpabcdefgh", "sedAb12Cd", "ag-workload-a1B2c3", "build-12345"] {
        assert!(temporary(t), "{t}");
    }
    for t in ["tmp", "tmpfiles.d", "python3", "python3.11", "sha256sum", "libc.so.6", "x86_64-linux-gnu", "Makefile", "calc.py", "lib64", "README.md", "v1.2.3"] {
        assert!(!temporary(t), "{t}");
    }
}

#[test]
fn secrets_are_recognised() {
    for s in ["/w/.env", "/w/.env.local", "/k/server.pem", "/home/a/.ssh/id_ed25519", "/home/a/.aws/credentials", "/home/a/.netrc", "/w/gh_token", "/w/.git-credentials", "/w/token.json", "/w/api-token.txt"] {
        assert!(secret(s).is_some(), "{s}");
    }
    for s in ["/w/env.py", "/home/a/.ssh/id_rsa.pub", "/w/calc.py", "/etc/passwd", "/usr/lib/python3.12/tokenize.py", "/usr/lib/python3.11/token.py", "/usr/lib/python3.11/__pycache__/token.cpython-311.pyc", "/etc/ssl/certs/ISRG_Root_X1.pem"] {
        assert!(secret(s).is_none(), "{s}");
    }
}

#[test]
fn credentials_in_argv_stay_out_of_the_comments() {
    assert_eq!(redact(&["curl", "-H", "Authorization: Bearer abc", "https://x"]), "curl -H Authorization:<redacted> https://x");
    assert_eq!(redact(&["tool", "--token=abc", "--password", "hunter2", "--verbose"]), "tool --token=<redacted> --password <redacted> --verbose");
    assert_eq!(redact(&["git", "push", "origin"]), "git push origin");
    let ev = vec![json!({"kind": "exec", "verdict": "allow", "run": "r-1", "path": "/usr/bin/tool", "argv": ["tool", "--api-key", "sk-123"]})];
    let s = suggest(&at(ev), None, None).unwrap();
    assert!(s.text.contains("first: tool --api-key <redacted>;") && !s.text.contains("sk-123"), "{}", s.text);
}

#[test]
fn directories_used_broadly_fold_and_others_stay_exact() {
    let mut ev = vec![
        read("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        read("/usr/lib/x86_64-linux-gnu/libm.so.6"),
        read("/usr/lib/x86_64-linux-gnu/libz.so.1"),
        read("/usr/lib/locale/C.utf8/LC_CTYPE"),
        read("/usr/share/zoneinfo/UTC"),
        read("/usr/bin/python3"),
        read("/etc/ld.so.cache"),
        read("/etc/passwd"),
        read("/etc/nsswitch.conf"),
        read("/home/agent/.profile"),
        read("/home/agent/.bashrc"),
        read("/home/agent/.config/x.toml"),
        read("/proc/4242/status"),
        read("/proc/4243/maps"),
        read("/ws/data/a.csv"),
        read("/ws/data/b.csv"),
        read("/ws/data/c.csv"),
        open("r-2", "/ws/out/report.txt", "write", O_CREAT | O_TRUNC, "would_deny"),
        open("r-2", "/tmp/tmp.AbC123/x.o", "write", O_CREAT, "would_deny"),
        open("r-2", "/dev/null", "write", O_CREAT | O_TRUNC, "allow"),
        read("/ws/out/old.txt"),
    ];
    ev.push(exec("/usr/bin/cat"));
    ev.push(exec("/usr/bin/sed"));
    ev.push(exec("/usr/bin/grep"));
    ev.push(exec("/opt/tool/bin/run"));
    ev.push(connect("127.0.0.1", 8080));
    ev.push(connect("::ffff:127.0.0.1", 8080));
    ev.push(connect("::1", 9000));
    let s = suggest(&at(ev), None, None).unwrap();
    let p = policy(&s.text);
    assert_eq!(p.name, "learn", "the runs' policy name");
    assert_eq!(p.files_read, vec!["/etc/ld.so.cache", "/etc/nsswitch.conf", "/etc/passwd", "/home/agent/.bashrc", "/home/agent/.config/x.toml", "/home/agent/.profile", "/proc", "/usr", "/ws/data"], "{}", s.text);
    assert_eq!(p.files_write, vec!["/dev/null", "/tmp", "/ws/out"], "{}", s.text);
    assert_eq!(p.exec_allow, vec!["/opt/tool/bin/run", "/usr/bin/"]);
    let net: Vec<String> = p.network_connect.iter().map(ToString::to_string).collect();
    assert_eq!(net, vec!["127.0.0.1/32:8080", "[::1]/128:9000"]);
    assert!(s.text.contains("\"/usr\",  # 6 events, first: /usr/lib/x86_64-linux-gnu/libc.so.6; run r-1\n"), "{}", s.text);
    assert!(s.text.contains("\"/ws/out\",  # 2 events, first: /ws/out/report.txt; runs r-1, r-2\n"), "{}", s.text);
    assert!(s.text.contains("\"/usr/bin/\",  # 3 events, first: /usr/bin/cat --x; run r-1"), "{}", s.text);
    assert!(s.text.contains("Rules of thumb"), "{}", s.text);
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(s.rules, 9 + 3 + 2 + 2);
    // Nothing is allowed that the runs did not touch the directory of.
    assert_eq!(p.decide_file("/etc/shadow", Access::Read), FileVerdict::Deny { rule: "files.read", matched: None });
    assert!(p.decide_file("/home/agent/.ssh/id_rsa", Access::Read) != FileVerdict::Allow);
}

#[test]
fn secrets_are_never_allowed() {
    let ev = vec![read("/ws/a.py"), read("/ws/b.py"), read("/ws/.env"), read("/ws/c.py"), read("/home/agent/.ssh/id_rsa"), read("/k/server.pem")];
    let s = suggest(&at(ev), None, Some("mine")).unwrap();
    let p = policy(&s.text);
    assert_eq!(p.name, "mine");
    assert_eq!(p.files_read, vec!["/ws"]);
    // Covered by the folded /ws: an active deny; the others are denied anyway: comments.
    assert_eq!(p.files_deny, vec!["/ws/.env"]);
    assert!(s.text.contains("# deny = [\"/home/agent/.ssh/id_rsa\"]  # likely secret (SSH private key (id_*)), read by run r-1: not allowed"), "{}", s.text);
    assert!(s.text.contains("# deny = [\"/k/server.pem\"]"), "{}", s.text);
    for secret in ["/ws/.env", "/home/agent/.ssh/id_rsa", "/k/server.pem"] {
        assert!(p.decide_file(secret, Access::Read) != FileVerdict::Allow, "{secret}");
    }
    assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);
    assert!(s.warnings[0].contains("likely secret"), "{:?}", s.warnings);
}

#[test]
fn with_a_base_only_its_violations_become_additions() {
    let base = policy(
        "name = \"b\"\nmode = \"monitor\"\n[files]\nread = [\"/usr\", \"/ws\"]\nwrite = [\"/ws/out\"]\ndeny = [\"/ws/.env\"]\n[exec]\nallow = [\"/usr/bin/\"]\n[network]\nconnect = [\"127.0.0.1/32:80\"]\n[syscalls]\ndeny = [\"ptrace\"]\n",
    );
    let ev = vec![
        open("r-1", "/usr/lib/libc.so.6", "read", 0, "allow"),
        open("r-1", "/etc/hosts", "read", 0, "would_deny"),
        open("r-1", "/ws/.env", "read", 0, "would_deny"),
        connect("127.0.0.1", 80),
        connect("127.0.0.1", 5432),
        exec("/usr/bin/cat"),
    ];
    let s = suggest(&at(ev), Some(&base), None).unwrap();
    let p = policy(&s.text);
    let changes: Vec<String> = super::super::diff::diff(&base, &p).iter().map(ToString::to_string).collect();
    assert_eq!(changes, vec!["+ read /etc/hosts (was denied)", "+ connect 127.0.0.1/32:5432"], "{}", s.text);
    assert_eq!(s.rules, 2);
    assert_eq!(p.mode, super::super::Mode::Monitor);
    assert!(s.text.contains("# deny = [\"/ws/.env\"]"), "{}", s.text);
}

#[test]
fn a_broken_event_is_named_by_where_it_came_from() {
    let e = suggest(&at(vec![read("/a"), json!({"kind": "open", "verdict": "allow"})]), None, None).unwrap_err();
    assert_eq!(e, "e:2: field path: missing");
    let e = suggest(&at(vec![json!([1])]), None, None).unwrap_err();
    assert_eq!(e, "e:1: not an event (a JSON object)");
    let e = suggest(&at(vec![json!({"kind": "connect", "verdict": "allow", "family": "inet", "addr": "nope", "port": 1})]), None, None).unwrap_err();
    assert!(e.contains("field addr"), "{e}");
    assert!(suggest(&at(vec![read("/a")]), None, Some("bad name!")).unwrap_err().contains("not a valid policy name"));
}

#[test]
fn sockets_binds_and_what_adds_nothing() {
    let ev = vec![
        json!({"kind": "connect", "verdict": "would_deny", "run": "r-1", "family": "unix", "path": "/run/app.sock", "result": 0}),
        json!({"kind": "sendmsg", "verdict": "would_deny", "run": "r-1", "family": "unix", "path": "@name", "result": 0}),
        json!({"kind": "bind", "verdict": "would_deny", "run": "r-1", "op": "listen", "family": "inet", "addr": "127.0.0.1", "port": 3000, "result": 0}),
        json!({"kind": "bind", "verdict": "allow", "run": "r-1", "op": "bind", "family": "inet", "addr": "0.0.0.0", "port": 0, "result": 0}),
        json!({"kind": "socket", "verdict": "would_deny", "run": "r-1", "rule": "network.families", "family": 16, "sock_type": 3, "protocol": 9, "family_name": "netlink", "netlink": "audit"}),
        json!({"kind": "socket", "verdict": "would_deny", "run": "r-1", "rule": "network.raw_sockets", "family": 2, "sock_type": 3, "protocol": 1}),
        // Refused by file permissions: nothing to allow. A relative path: no rule.
        json!({"kind": "open", "verdict": "allow", "run": "r-1", "path": "/etc/shadow", "access": "read", "flags": 0, "result": -13, "error": "EACCES"}),
        json!({"kind": "open", "verdict": "allow", "run": "r-1", "path": "rel/x", "access": "read", "flags": 0, "result": -2, "error": "ENOENT"}),
        // Listing / itself: no rule for every file, a warning.
        read("/"),
        read("/w/a"),
    ];
    let s = suggest(&at(ev), None, None).unwrap();
    let p = policy(&s.text);
    assert_eq!(p.network_unix, vec!["/run/app.sock", "@name"]);
    assert_eq!(p.network_listen.iter().map(ToString::to_string).collect::<Vec<_>>(), vec!["127.0.0.1/32:3000"]);
    assert_eq!(p.network_families, vec!["netlink:audit"]);
    assert!(p.raw_sockets);
    assert_eq!(p.files_read, vec!["/w/a"], "{}", s.text);
    assert!(s.warnings.iter().any(|w| w.contains("opened / itself")), "{:?}", s.warnings);
}
