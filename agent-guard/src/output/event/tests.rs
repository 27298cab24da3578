//! Tests of the kernel records' decoding and of the event lines.
use super::*;
use agent_guard_common::{ARGV_MAX, PATH_MAX};

fn hdr(kind: Kind, flags: u32) -> EventHeader {
    EventHeader {
        kind: kind.as_raw(),
        flags,
        ts_ns: 1,
        run_cgroup: 7,
        cgroup: 7,
        pid: 42,
        tgid: 42,
        ppid: 1,
        uid: 0,
        gid: 0,
        verdict: 0,
        rule: 0,
        ruleset: 0,
        comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
    }
}

fn bytes_of<T>(v: &T) -> Vec<u8> {
    // SAFETY: test records are plain-old-data.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

#[test]
fn exec_record_decodes_path_and_argv() {
    let mut e = ExecEvent { hdr: hdr(Kind::Exec, FLAG_ARGV_TRUNCATED), path_len: 12, argv_len: 0, result: 0, dirfd: 0, file_id: [0; 16], path: [0; PATH_MAX], argv: [0; ARGV_MAX] };
    e.path[..12].copy_from_slice(b"/usr/bin/cat");
    let argv = b"cat\0/etc/hostname\0";
    e.argv[..argv.len()].copy_from_slice(argv);
    e.argv_len = argv.len() as u32;
    let r = decode(&bytes_of(&e)).unwrap();
    assert_eq!(r.kind, Kind::Exec);
    assert_eq!(r.detail, Detail::Exec {
        path: "/usr/bin/cat".into(),
        argv: vec!["cat".into(), "/etc/hostname".into()],
        argv_truncated: true,
        path_truncated: false,
        result: None,
        error: None,
    });
    // A refused exec: the path as passed, no argv, the error, what it is relative to.
    let mut e = ExecEvent { hdr: hdr(Kind::Exec, FLAG_PATH_UNRESOLVED), path_len: 4, argv_len: 0, result: -13, dirfd: 3, file_id: [0; 16], path: [0; PATH_MAX], argv: [0; ARGV_MAX] };
    e.path[..4].copy_from_slice(b"true");
    let r = decode(&bytes_of(&e)).unwrap();
    assert_eq!(r.facts.dirfd, 3);
    assert_eq!(r.detail, Detail::Exec { path: "true".into(), argv: vec![], argv_truncated: false, path_truncated: false, result: Some(-13), error: Some("EACCES".into()) });
    let ev = Event { detail: r.detail, ..Event::new(Kind::Exec) };
    assert!(human(&ev).ends_with(" true EACCES"), "{}", human(&ev));
    let json = serde_json::to_value(&ev).unwrap();
    assert_eq!((json["result"].as_i64(), json["error"].as_str()), (Some(-13), Some("EACCES")), "{json}");
}

#[test]
fn open_and_connect_records_decode() {
    let mut o = OpenEvent { hdr: hdr(Kind::Open, FLAG_PATH_UNRESOLVED), open_flags: libc::O_RDWR as u32, result: -2, path_len: 4, access: 0, file_id: [0; 16], path: [0; PATH_MAX] };
    o.path[..4].copy_from_slice(b"/nox");
    match decode(&bytes_of(&o)).unwrap().detail {
        Detail::Open { path, access, error, path_resolved, .. } => {
            assert_eq!((path.as_str(), access, error.as_deref(), path_resolved), ("/nox", "read_write", Some("ENOENT"), false));
        }
        d => panic!("{d:?}"),
    }
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let c = ConnectEvent { hdr: hdr(Kind::Connect, 0), result: 0, family: libc::AF_INET as u16, port: 8080, protocol: libc::IPPROTO_TCP as u16, sock_type: 1, _pad: 0, addr };
    match decode(&bytes_of(&c)).unwrap().detail {
        Detail::Connect { addr, port, proto, family, .. } => assert_eq!((addr.as_str(), port, proto, family), ("127.0.0.1", 8080, "tcp", "inet")),
        d => panic!("{d:?}"),
    }
}

#[test]
fn open_access_is_judged_like_the_kernel_judges_it() {
    assert_eq!(open_access(libc::O_RDONLY as u32), 1);
    assert_eq!(open_access(libc::O_WRONLY as u32), 2);
    assert_eq!(open_access(libc::O_RDWR as u32), 3);
    assert_eq!(open_access((libc::O_RDONLY | libc::O_TRUNC) as u32), 3);
}

#[test]
fn records_carry_what_a_grant_is_keyed_with() {
    let mut o = OpenEvent { hdr: hdr(Kind::Open, 0), open_flags: libc::O_RDWR as u32, result: 3, path_len: 0, access: 2, file_id: [7; 16], path: [0; PATH_MAX] };
    o.hdr.verdict = Verdict::Hold.as_raw();
    o.hdr.rule = Rule::FilesWrite.as_raw();
    let r = decode(&bytes_of(&o)).unwrap();
    assert_eq!((r.verdict, r.rule), (Verdict::Hold, Some(Rule::FilesWrite)));
    assert_eq!(r.facts, Facts { run_cgroup: 7, target: Target::File { id: Some([7; 16]), access: 2 }, dirfd: 0 });
    // A record of programs that did not fill `access`: judged from the flags.
    o.access = 0;
    assert_eq!(decode(&bytes_of(&o)).unwrap().facts.target, Target::File { id: Some([7; 16]), access: 3 });

    let v4: IpAddr = "10.1.2.3".parse().unwrap();
    let mapped = Target::key_addr(v4);
    let mut first4 = [0u8; 16];
    first4[..4].copy_from_slice(&[10, 1, 2, 3]);
    let conn = |kind, family: i32, addr, protocol: i32, sock_type: i32| {
        let c = ConnectEvent { hdr: hdr(kind, 0), result: 0, family: family as u16, port: 53, protocol: protocol as u16, sock_type: sock_type as u16, _pad: 0, addr };
        decode(&bytes_of(&c)).unwrap()
    };
    // IPv4 in the first bytes or IPv4-mapped: the same IPv4 destination, keyed mapped.
    for (kind, addr) in [(Kind::Connect, first4), (Kind::Sendmsg, mapped)] {
        let r = conn(kind, libc::AF_INET, addr, 0, libc::SOCK_DGRAM);
        assert_eq!(r.facts.target, Target::Inet { ip: v4, port: 53, protocol: Some(17) });
        assert!(matches!(r.detail, Detail::Connect { family: "inet", ref addr, proto: "udp", .. } if addr == "10.1.2.3"), "{r:?}");
    }
    // An IPv6 socket's IPv4-mapped destination stays IPv6 (its key bytes are the same).
    let r = conn(Kind::Connect, libc::AF_INET6, mapped, libc::IPPROTO_TCP, libc::SOCK_STREAM);
    let Target::Inet { ip, protocol, .. } = r.facts.target else { panic!("{r:?}") };
    assert_eq!((ip.to_string().as_str(), Target::key_addr(ip), protocol), ("::ffff:10.1.2.3", mapped, Some(6)));
    assert!(matches!(r.detail, Detail::Connect { family: "inet6", .. }));
    // Protocols approvals are not keyed with.
    assert_eq!(proto_of(libc::IPPROTO_SCTP as u16, libc::SOCK_STREAM as u16), ("sctp", None));
    assert_eq!(proto_of(libc::IPPROTO_ICMP as u16, libc::SOCK_DGRAM as u16), ("icmp", None));
    assert_eq!(proto_of(0, libc::SOCK_RAW as u16), ("other", None));
}

#[test]
fn kinds_verdicts_and_rules_are_written_by_name_and_facts_not_at_all() {
    let e = Event {
        verdict: Verdict::WouldDeny,
        rule: Some(Rule::PathTooLong),
        facts: Facts { run_cgroup: 9, target: Target::File { id: None, access: 1 }, dirfd: 0 },
        ..Event::new(Kind::PolicyReload)
    };
    let v: serde_json::Value = serde_json::to_value(&e).unwrap();
    assert_eq!((v["kind"].as_str(), v["verdict"].as_str(), v["rule"].as_str()), (Some("policy_reload"), Some("would_deny"), Some("files.path_too_long")));
    assert!(v.get("facts").is_none() && v.get("run_cgroup").is_none() && v.get("target").is_none(), "{v}");
    assert_eq!(serde_json::to_value(Event::new(Kind::Exit)).unwrap()["rule"], serde_json::Value::Null);
}

#[test]
fn short_or_unknown_records_are_errors_not_panics() {
    assert_eq!(decode(&[0u8; 3]), Err(DecodeError::Short(3)));
    let h = EventHeader { kind: 99, ..hdr(Kind::Exec, 0) };
    assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::Kind(99)));
    let h = hdr(Kind::Exec, 0);
    assert!(matches!(decode(&bytes_of(&h)), Err(DecodeError::Size { .. })));
}

#[test]
fn json_line_has_the_contract_fields() {
    let e = Event {
        ts: rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_000_001)),
        verdict: Verdict::Allow,
        run: Some("r-abc123".into()),
        detail: Detail::Exit { exit_code: 0, signal: None },
        ..Event::new(Kind::Exit)
    };
    let v: serde_json::Value = serde_json::to_value(&e).unwrap();
    assert_eq!(v["ts"], "1970-01-01T00:00:01.000001Z");
    assert_eq!(v["kind"], "exit");
    assert_eq!(v["run"], "r-abc123");
    assert_eq!(v["exit_code"], 0);
    assert!(v.get("signal").is_none());
}

#[test]
fn control_actions_name_who_asked_and_how_long_it_took() {
    let e = Event {
        run: Some("r-abc123".into()),
        run_name: Some("coding-1".into()),
        detail: Detail::Action { requested_by_uid: 1000, requested_by_pid: 42, latency_ms: 3.217, processes: 101, error: None },
        ..Event::new(Kind::Freeze)
    };
    let v: serde_json::Value = serde_json::to_value(&e).unwrap();
    assert_eq!((v["kind"].as_str(), v["requested_by_uid"].as_u64(), v["requested_by_pid"].as_u64()), (Some("freeze"), Some(1000), Some(42)));
    assert_eq!((v["latency_ms"].as_f64(), v["processes"].as_u64()), (Some(3.217), Some(101)));
    assert!(v.get("error").is_none());
    let h = human(&e);
    assert!(h.contains("freeze  r-abc123 name=coding-1 101 processes in 3.217 ms, by uid 1000 pid 42"), "{h}");
}
