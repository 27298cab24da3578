//! Fuzzing the kernel-record decoder, [`event::decode`] (see `crate::fuzzing`): arbitrary
//! bytes, mutated corpus records, and valid headers of every kind with random payloads and
//! lengths around the record's size. Properties: no panic, no hang, allocation linear in the
//! record; a record at least as long as its kind's struct decodes, a shorter one is a size
//! error; the header comes back as it was; the event serialises to one JSON line that parses
//! back with the same kind, and its human line is printable; paths and argv written into a
//! record come back exactly (round trip).
use std::mem::size_of;

use agent_guard_common::{Kind, ConnectEvent, EventHeader, ExecEvent, ExitEvent, OpenEvent, SocketEvent, SyscallEvent, ARGV_MAX, PATH_MAX};
use proptest::{collection::vec, prelude::*, sample::select};

use super::event::{self, Detail, Event};
use crate::fuzzing::{bounded, bytes, corpus, fuzz, mutated};

/// Bytes a decode may allocate per byte of the record, and in all: each argv byte may be an
/// empty argument (1024 NULs are 1024 arguments), a 24-byte String in a vector that grows by
/// doubling and is copied once more without its empty last piece.
const PER_BYTE: u64 = 48;
const FIXED: u64 = 16 << 10;

/// Every kernel record kind, and kinds no program writes.
const KINDS: &[u32] = &[
    Kind::Exec.as_raw(),
    Kind::Open.as_raw(),
    Kind::Connect.as_raw(),
    Kind::Sendmsg.as_raw(),
    Kind::Syscall.as_raw(),
    Kind::Socket.as_raw(),
    Kind::Exit.as_raw(),
    Kind::Bind.as_raw(),
    Kind::Limit.as_raw(),
    0,
    10,
    u32::MAX,
];

fn record_size(k: u32, flags: u32) -> Option<usize> {
    Some(match Kind::from_raw(k)? {
        Kind::Exec => size_of::<ExecEvent>(),
        Kind::Open => size_of::<OpenEvent>(),
        Kind::Connect | Kind::Sendmsg if flags & agent_guard_common::FLAG_UNIX != 0 => size_of::<agent_guard_common::UnixEvent>(),
        Kind::Connect | Kind::Sendmsg | Kind::Bind => size_of::<ConnectEvent>(),
        Kind::Syscall => size_of::<SyscallEvent>(),
        Kind::Socket => size_of::<SocketEvent>(),
        Kind::Exit => size_of::<ExitEvent>(),
        Kind::Limit => size_of::<agent_guard_common::LimitEvent>(),
        _ => return None,
    })
}

fn property(b: &[u8]) -> Result<(), String> {
    let decoded = bounded("decode", b.len(), PER_BYTE, FIXED, || event::decode(b))?;
    let hdr_len = size_of::<EventHeader>();
    let word = |at: usize| (b.len() >= at + 4).then(|| u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes")));
    let want = word(0).and_then(|k| record_size(k, word(4).unwrap_or(0)));
    let raw = match (decoded, want) {
        (Err(_), Some(n)) if b.len() >= n => return Err(format!("a whole record of {} bytes refused", b.len())),
        (Err(_), _) => return Ok(()),
        (Ok(r), Some(n)) if b.len() >= n => r,
        (Ok(r), _) => return Err(format!("{} bytes decoded as {} (too short or unknown kind)", b.len(), r.kind)),
    };
    // SAFETY: the record is at least a header long (checked above: it decoded).
    let hdr: EventHeader = unsafe { std::ptr::read_unaligned(b[..hdr_len].as_ptr().cast()) };
    if raw.hdr != hdr {
        return Err("the header changed".into());
    }
    let mut e = Event::new(raw.kind);
    e.verdict = raw.verdict;
    e.rule = raw.rule;
    e.detail = raw.detail.clone();
    let line = serde_json::to_string(&e).map_err(|e| format!("serialise: {e}"))?;
    if line.contains('\n') {
        return Err("a JSON line with a newline".into());
    }
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
    if v["kind"] != raw.kind.name() {
        return Err(format!("kind {} became {}", raw.kind, v["kind"]));
    }
    let human = event::human(&e);
    if human.chars().any(|c| c.is_control()) {
        return Err(format!("a control character on a terminal: {human:?}"));
    }
    Ok(())
}

/// A header of `k` and random fields, then random bytes: `len` in all.
fn record_of(k: u32, fields: &[u8], len: usize) -> Vec<u8> {
    let mut b: Vec<u8> = fields.iter().copied().cycle().take(len).collect();
    if b.len() >= 4 {
        b[..4].copy_from_slice(&k.to_ne_bytes());
    }
    b
}

fn valid_header() -> impl Strategy<Value = Vec<u8>> {
    let kinds = select(KINDS);
    (kinds, vec(any::<u8>(), 1..512), -24i64..64, any::<bool>()).prop_map(|(k, fields, delta, short)| {
        // The header's flags are the fields' bytes 4..8 (see record_of): they choose the layout
        // of a connect (unix or IP).
        let f = |i: usize| fields[i % fields.len()];
        let flags = u32::from_ne_bytes([f(4), f(5), f(6), f(7)]);
        let base = record_size(k, flags).unwrap_or(size_of::<EventHeader>()) as i64;
        let len = if short { (base + delta).max(0) } else { base * 2 / 3 + delta.abs() } as usize;
        record_of(k, &fields, len)
    })
}

fn bytes_of<T>(v: &T) -> Vec<u8> {
    // SAFETY: the records are plain-old-data.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn header(k: u32) -> EventHeader {
    EventHeader { kind: k, flags: 0, ts_ns: 1, run_cgroup: 2, cgroup: 2, pid: 3, tgid: 3, ppid: 1, uid: 0, gid: 0, verdict: 0, rule: 0, ruleset: 0, comm: [b'x'; 16] }
}

/// An exec record carrying `path` and `argv` (each argument NUL-terminated).
fn exec_record(path: &str, argv: &[String]) -> Vec<u8> {
    let mut e = ExecEvent { hdr: header(Kind::Exec.as_raw()), path_len: 0, argv_len: 0, result: 0, dirfd: 0, file_id: [0; 16], path: [0; PATH_MAX], argv: [0; ARGV_MAX] };
    e.path[..path.len()].copy_from_slice(path.as_bytes());
    e.path_len = path.len() as u32;
    let mut n = 0;
    for a in argv {
        e.argv[n..n + a.len()].copy_from_slice(a.as_bytes());
        n += a.len() + 1;
    }
    e.argv_len = n as u32;
    bytes_of(&e)
}

fn open_record(path: &str, flags: u32, result: i32) -> Vec<u8> {
    let mut o = OpenEvent { hdr: header(Kind::Open.as_raw()), open_flags: flags, result, path_len: path.len() as u32, access: 0, file_id: [0; 16], path: [0; PATH_MAX] };
    o.path[..path.len()].copy_from_slice(path.as_bytes());
    bytes_of(&o)
}

fn seeds() -> Vec<Vec<u8>> {
    corpus("event")
}

#[test]
fn fuzz_event_bytes() {
    let seeds = seeds();
    let strategy = prop_oneof![4 => mutated(seeds.clone()), 1 => bytes(4096)];
    fuzz("event", &seeds, strategy, |b| property(b));
}

#[test]
fn fuzz_event_valid_headers() {
    let s = fuzz("event-headers", &[], valid_header(), |b| property(b));
    assert!(s.cases > 0);
}

#[test]
fn fuzz_event_paths_and_argv_round_trip() {
    let path = "/[^\u{0}]{0,200}".prop_filter("fits", |p| p.len() < PATH_MAX);
    let argv = vec("[^\u{0}]{0,40}", 1..12).prop_filter("fits", |a| a.iter().map(|s| s.len() + 1).sum::<usize>() <= ARGV_MAX);
    let strategy = (path, argv, any::<u32>(), any::<i32>());
    fuzz("event-round-trip", &[], strategy, |(path, argv, flags, result)| {
        let r = event::decode(&exec_record(path, argv)).map_err(|e| e.to_string())?;
        match r.detail {
            Detail::Exec { path: p, argv: a, .. } if p == *path && a == *argv => {}
            d => return Err(format!("exec came back as {d:?}")),
        }
        let r = event::decode(&open_record(path, *flags, *result)).map_err(|e| e.to_string())?;
        match r.detail {
            Detail::Open { path: p, flags: f, result: res, error, .. } if p == *path && f == *flags && res == *result => {
                if (*result < 0) != error.is_some() {
                    return Err(format!("error {error:?} for result {result}"));
                }
                Ok(())
            }
            d => Err(format!("open came back as {d:?}")),
        }
    });
}

/// Findings, kept as regression tests.
#[test]
fn fuzz_findings_event() {
    // An open whose result is i32::MIN: negating it for the errno overflowed (a panic in
    // debug builds, a wrong name in release).
    let b = open_record("/x", 0, i32::MIN);
    property(&b).unwrap();
    match event::decode(&b).unwrap().detail {
        Detail::Open { error, .. } => assert!(error.is_some()),
        d => panic!("{d:?}"),
    }
    let mut c = ConnectEvent { hdr: header(Kind::Connect.as_raw()), result: i32::MIN, family: 2, port: 1, protocol: 6, sock_type: 1, _pad: 0, addr: [0; 16] };
    property(&bytes_of(&c)).unwrap();
    c.result = -1;
    property(&bytes_of(&c)).unwrap();
    // argv of 1024 NULs: 1024 empty arguments, 75 KB for a 2 KB record (found at 16 bytes
    // per byte; linear, the bound now says why).
    let mut e = exec_record("/usr/bin/cat", &[]);
    let argv_len_at = size_of::<EventHeader>() + 4;
    e[argv_len_at..argv_len_at + 4].copy_from_slice(&(ARGV_MAX as u32).to_ne_bytes());
    property(&e).unwrap();
    match event::decode(&e).unwrap().detail {
        Detail::Exec { argv, .. } => assert_eq!(argv.len(), ARGV_MAX),
        d => panic!("{d:?}"),
    }
}

/// Writes the seed corpus of kernel records (run by hand: `cargo test -p agent-guard --lib
/// write_event_corpus -- --ignored`).
#[test]
#[ignore]
fn write_event_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/event");
    std::fs::create_dir_all(&dir).unwrap();
    let argv: Vec<String> = ["cat", "/etc/hostname"].iter().map(|s| s.to_string()).collect();
    let mut records = vec![
        ("exec", exec_record("/usr/bin/cat", &argv)),
        ("open", open_record("/etc/hostname", 0, 3)),
        ("open-denied", open_record("/etc/shadow", 0, -13)),
    ];
    let mut c = ConnectEvent { hdr: header(Kind::Connect.as_raw()), result: -1, family: libc::AF_INET as u16, port: 8080, protocol: 6, sock_type: 1, _pad: 0, addr: [0; 16] };
    c.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    records.push(("connect4", bytes_of(&c)));
    c.family = libc::AF_INET6 as u16;
    c.addr = std::net::Ipv6Addr::LOCALHOST.octets();
    c.hdr.kind = Kind::Sendmsg.as_raw();
    c.protocol = 17;
    records.push(("sendmsg6", bytes_of(&c)));
    records.push(("syscall", bytes_of(&SyscallEvent { hdr: header(Kind::Syscall.as_raw()), nr: 101, _pad: 0, arg0: 0 })));
    records.push(("socket", bytes_of(&SocketEvent { hdr: header(Kind::Socket.as_raw()), family: 17, sock_type: 3, protocol: 0, _pad: 0 })));
    records.push(("exit", bytes_of(&ExitEvent { hdr: header(Kind::Exit.as_raw()), exit_code: 9, _pad: 0 })));
    for (name, b) in records {
        std::fs::write(dir.join(format!("{name}.bin")), b).unwrap();
    }
}
