//! Events: decoding the kernel's records and the JSON-lines form of the contract.
use std::{collections::BTreeMap, mem::size_of, net::IpAddr};

use agent_guard_common::{
    net_kind, net_rule, UnixEvent,
    kind, rule, verdict, ConnectEvent, EventHeader, ExecEvent, ExitEvent, OpenEvent, SocketEvent,
    SyscallEvent, FLAG_ARGV_TRUNCATED, FLAG_LSM, FLAG_PATH_TRUNCATED, FLAG_PATH_UNRESOLVED, FLAG_READ_ERROR,
};
use serde::Serialize;

/// One event as written to the log (one JSON object per line). Kind-specific fields are
/// omitted when they do not apply.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Event {
    pub ts: String,
    pub host: String,
    pub kind: &'static str,
    pub verdict: &'static str,
    pub rule: Option<String>,
    /// Which enforcement layer decided an operation: "ebpf" (the kernel programs) or
    /// "landlock" (the run's Landlock layer refused it before it happened). Absent on events
    /// the daemon makes and on `exit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<&'static str>,
    pub run: Option<String>,
    pub run_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub policy: Option<String>,
    pub policy_version: Option<String>,
    /// For an operation the eBPF layer judged under a policy: the kind of program that
    /// decided (`lsm`: a BPF LSM program of the lsm backend, before the operation;
    /// `tracepoint`: a tracepoint program; `cgroup`: a cgroup socket program).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tgid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// cgroup path relative to the cgroup2 mount; absent when the cgroup was already gone
    /// by the time the daemon looked it up (`cgroup_id` always says which one it was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Violations (deny, kill, would_deny, hold): the process and its ancestors in the run,
    /// the process first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ancestry: Option<Vec<Ancestor>>,
    #[serde(flatten)]
    pub detail: Detail,
}

/// One process of a violation's ancestry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ancestor {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub argv: Vec<String>,
}

/// The kind-specific part of an event.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Detail {
    #[default]
    None,
    Exec {
        path: String,
        argv: Vec<String>,
        argv_truncated: bool,
        path_truncated: bool,
    },
    Open {
        path: String,
        access: &'static str,
        flags: u32,
        /// The new descriptor, or -errno.
        result: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// false when the open failed and `path` is the string the process passed.
        path_resolved: bool,
        path_truncated: bool,
    },
    Connect {
        family: &'static str,
        addr: String,
        port: u16,
        proto: &'static str,
        result: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Syscall {
        name: String,
        nr: u32,
        arg0: u64,
    },
    Socket {
        family: u32,
        sock_type: u32,
        protocol: u32,
    },
    /// A socket of a family `[network] families` does not allow (kind `socket`).
    SocketFamily {
        family: u32,
        sock_type: u32,
        protocol: u32,
        /// "packet", "vsock", "netlink", ... (absent for an unnamed family number).
        #[serde(skip_serializing_if = "Option::is_none")]
        family_name: Option<&'static str>,
        /// For netlink: the protocol's name ("audit", "kobject_uevent", ...).
        #[serde(skip_serializing_if = "Option::is_none")]
        netlink: Option<&'static str>,
    },
    /// A connect or send to a unix socket (kind `connect` or `sendmsg`, family `unix`).
    Unix {
        family: &'static str,
        /// The path as passed (lsm backend: the peer's resolved path), or "@name".
        path: String,
        result: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A bind or listen on an IP address and port (kind `bind`).
    Bind {
        /// "bind" or "listen".
        op: &'static str,
        family: &'static str,
        addr: String,
        port: u16,
        result: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    PolicyReload {
        /// ok | unchanged | error
        result: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        previous_version: Option<String>,
        source: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Who asked, for `policy apply` and `run --policy FILE` (absent for policy_dir).
        #[serde(skip_serializing_if = "Option::is_none")]
        requested_by_uid: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        requested_by_pid: Option<u32>,
    },
    Exit {
        exit_code: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    RunStart {
        requested_by_uid: u32,
        requested_by_pid: u32,
        argv: Vec<String>,
    },
    RunEnd {
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_status: Option<i32>,
    },
    Drop {
        count: u64,
        stage: &'static str,
    },
    /// A hold for review: `held` when it starts (with the evidence), then `approved`,
    /// `denied` or `timeout`.
    Hold {
        hold: &'static str,
        attempts: Vec<crate::runs::grant::Attempt>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        held_argv: Vec<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        recent_events: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        freeze_ms: Option<f64>,
        /// approved: once | run
        #[serde(skip_serializing_if = "Option::is_none")]
        grant: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        held_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        requested_by_uid: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        requested_by_pid: Option<u32>,
    },
    /// `freeze`, `thaw` and `kill` of a run by a responder.
    Action {
        requested_by_uid: u32,
        requested_by_pid: u32,
        /// From the write to cgroupfs to the kernel's report that it is done.
        latency_ms: f64,
        /// Processes in the run when the action started.
        processes: u64,
        /// Absent when the action succeeded.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// A kernel record, decoded but not yet enriched with run metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub hdr: EventHeader,
    pub kind: &'static str,
    pub detail: Detail,
    pub read_error: bool,
    /// An open's or exec's file as the kernel identifies it (device, inode), when known.
    pub file_id: Option<[u8; 16]>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("record of kind {kind} has {len} bytes, expected {want}")]
    Size { kind: u32, len: usize, want: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
}

fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Size { kind, len: bytes.len(), want: size_of::<T>() });
    }
    // SAFETY: length checked; T is a #[repr(C)] plain-old-data record from agent-guard-common.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn text(bytes: &[u8], len: u32) -> String {
    let len = (len as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

pub fn errno_name(neg: i32) -> Option<String> {
    (neg < 0).then(|| format!("{:?}", nix::errno::Errno::from_raw(-neg)))
}

pub fn access_of(flags: u32) -> &'static str {
    match flags & libc::O_ACCMODE as u32 {
        0 => "read",
        1 => "write",
        _ => "read_write",
    }
}

/// The contract's verdict names.
pub fn verdict_name(v: u32) -> &'static str {
    match v {
        verdict::DENY => "deny",
        verdict::KILL => "kill",
        verdict::WOULD_DENY => "would_deny",
        verdict::HOLD => "hold",
        _ => "allow",
    }
}

/// As [`hook_of`], for a decoded record: the containment events of tracepoints (socket
/// families, listen) come under kinds the cgroup programs also report.
pub fn hook_of_raw(raw: &Raw) -> &'static str {
    match (&raw.detail, raw.hdr.flags & FLAG_LSM != 0) {
        (Detail::SocketFamily { .. }, false) | (Detail::Bind { op: "listen", .. }, false) => "tracepoint",
        _ => hook_of(raw.kind, raw.hdr.flags),
    }
}

/// The kind of program that decided a kernel event of `kind` with header `flags`.
pub fn hook_of(kind: &str, flags: u32) -> &'static str {
    if flags & FLAG_LSM != 0 {
        "lsm"
    } else if matches!(kind, "connect" | "sendmsg" | "socket" | "bind") {
        "cgroup"
    } else {
        "tracepoint"
    }
}

/// The policy part that decided, as events name it (None when nothing was violated).
pub fn rule_name(r: u32) -> Option<&'static str> {
    Some(match r {
        rule::FILES_READ => "files.read",
        rule::FILES_WRITE => "files.write",
        rule::FILES_DENY => "files.deny",
        rule::EXEC => "exec.allow",
        rule::NETWORK => "network.connect",
        rule::SYSCALLS => "syscalls.deny",
        rule::UNSEEN => "unseen",
        rule::PATH_TOO_LONG => "files.path_too_long",
        rule::RAW_SOCKET => "network.raw_sockets",
        rule::GRANT => "grant",
        rule::SELF_PROTECTION => "self_protection",
        net_rule::UNIX => "network.unix",
        net_rule::FAMILIES => "network.families",
        net_rule::LISTEN => "network.listen",
        _ => return None,
    })
}

fn inet(family: u16, addr: &[u8; 16]) -> (&'static str, String) {
    let v6 = std::net::Ipv6Addr::from(*addr);
    if let (true, Some(v4)) = (family == libc::AF_INET as u16, v6.to_ipv4_mapped()) {
        // sock_addr programs report IPv4 as IPv4-mapped.
        return ("inet", v4.to_string());
    }
    if family == libc::AF_INET as u16 {
        ("inet", IpAddr::from([addr[0], addr[1], addr[2], addr[3]]).to_string())
    } else {
        let v6 = std::net::Ipv6Addr::from(*addr);
        // sock_addr programs see IPv4 as IPv4-mapped; show it as the IPv4 it is.
        match v6.to_ipv4_mapped() {
            Some(v4) if family != libc::AF_INET6 as u16 => ("inet", v4.to_string()),
            _ => ("inet6", v6.to_string()),
        }
    }
}

fn proto_name(protocol: u16, sock_type: u16) -> &'static str {
    match (protocol as i32, sock_type as i32) {
        (libc::IPPROTO_TCP, _) => "tcp",
        (libc::IPPROTO_UDP, _) => "udp",
        (libc::IPPROTO_MPTCP, _) => "mptcp",
        (libc::IPPROTO_SCTP, _) => "sctp",
        (libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6, _) => "icmp",
        (0, libc::SOCK_STREAM) => "tcp",
        (0, libc::SOCK_DGRAM) => "udp",
        _ => "other",
    }
}

pub fn decode(bytes: &[u8]) -> Result<Raw, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let hdr: EventHeader = read(bytes, 0)?;
    let f = hdr.flags;
    let mut file_id = None;
    let (kind, detail) = match hdr.kind {
        kind::EXEC => {
            let e: ExecEvent = read(bytes, hdr.kind)?;
            file_id = Some(e.file_id).filter(|id| *id != [0; 16]);
            let raw = &e.argv[..(e.argv_len as usize).min(e.argv.len())];
            let argv = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>();
            // argv ends with a NUL, which leaves one empty piece at the end.
            let argv = match argv.split_last() {
                Some((last, rest)) if last.is_empty() => rest.to_vec(),
                _ => argv,
            };
            ("exec", Detail::Exec {
                path: text(&e.path, e.path_len),
                argv,
                argv_truncated: f & FLAG_ARGV_TRUNCATED != 0,
                path_truncated: f & FLAG_PATH_TRUNCATED != 0,
            })
        }
        kind::OPEN => {
            let e: OpenEvent = read(bytes, hdr.kind)?;
            file_id = Some(e.file_id).filter(|id| *id != [0; 16]);
            ("open", Detail::Open {
                path: text(&e.path, e.path_len),
                access: access_of(e.open_flags),
                flags: e.open_flags,
                result: e.result,
                error: errno_name(e.result),
                path_resolved: f & FLAG_PATH_UNRESOLVED == 0,
                path_truncated: f & FLAG_PATH_TRUNCATED != 0,
            })
        }
        kind::CONNECT | kind::SENDMSG => {
            let e: ConnectEvent = read(bytes, hdr.kind)?;
            let (family, addr) = inet(e.family, &e.addr);
            let result = if hdr.kind == kind::SENDMSG && hdr.verdict == verdict::DENY { -libc::EPERM } else { e.result };
            (if hdr.kind == kind::CONNECT { "connect" } else { "sendmsg" }, Detail::Connect {
                family,
                addr,
                port: e.port,
                proto: proto_name(e.protocol, e.sock_type),
                result,
                error: errno_name(result),
            })
        }
        kind::SYSCALL => {
            let e: SyscallEvent = read(bytes, hdr.kind)?;
            let name = crate::policy::syscall_name(e.nr).map(str::to_string).unwrap_or_else(|| format!("syscall_{}", e.nr));
            ("syscall", Detail::Syscall { name, nr: e.nr, arg0: e.arg0 })
        }
        kind::SOCKET => {
            let e: SocketEvent = read(bytes, hdr.kind)?;
            ("socket", Detail::Socket { family: e.family, sock_type: e.sock_type, protocol: e.protocol })
        }
        kind::EXIT => {
            let e: ExitEvent = read(bytes, hdr.kind)?;
            let sig = (e.exit_code & 0x7f) as i32;
            ("exit", Detail::Exit {
                exit_code: ((e.exit_code >> 8) & 0xff) as i32,
                signal: (sig != 0).then_some(sig),
            })
        }
        net_kind::UNIX_CONNECT | net_kind::UNIX_SENDMSG => {
            let e: UnixEvent = read(bytes, hdr.kind)?;
            let n = (e.path_len as usize).min(e.path.len());
            let name = &e.path[..n];
            let path = if e.abstract_name != 0 {
                format!("@{}", name.iter().map(|b| if b.is_ascii_graphic() || *b == b' ' { (*b as char).to_string() } else { format!("\\x{b:02x}") }).collect::<String>())
            } else {
                String::from_utf8_lossy(name).into_owned()
            };
            let result = if e.result < 0 { -libc::EPERM } else { 0 };
            let kind = if hdr.kind == net_kind::UNIX_CONNECT { "connect" } else { "sendmsg" };
            (kind, Detail::Unix { family: "unix", path, result, error: errno_name(result) })
        }
        net_kind::BIND | net_kind::LISTEN => {
            let e: ConnectEvent = read(bytes, hdr.kind)?;
            let (family, addr) = inet(e.family, &e.addr);
            let result = if e.result < 0 { -libc::EPERM } else { 0 };
            let op = if hdr.kind == net_kind::BIND { "bind" } else { "listen" };
            ("bind", Detail::Bind { op, family, addr, port: e.port, result, error: errno_name(result) })
        }
        net_kind::FAMILY => {
            let e: SocketEvent = read(bytes, hdr.kind)?;
            let netlink = if e.family == crate::policy::contain::AF_NETLINK { crate::policy::contain::netlink_name(e.protocol) } else { None };
            ("socket", Detail::SocketFamily {
                family: e.family,
                sock_type: e.sock_type,
                protocol: e.protocol,
                family_name: crate::policy::contain::family_name(e.family),
                netlink,
            })
        }
        other => return Err(DecodeError::Kind(other)),
    };
    Ok(Raw { hdr, kind, detail, read_error: f & FLAG_READ_ERROR != 0, file_id })
}

/// RFC 3339 UTC with microseconds, e.g. 2026-11-22T01:02:03.123456Z.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.microsecond()
    )
}

/// A concise human line for stderr.
pub fn human(e: &Event) -> String {
    let who = format!(
        "{} {}",
        e.run.as_deref().unwrap_or("-"),
        e.pid.map(|p| format!("pid={p}")).unwrap_or_default()
    );
    let what = match &e.detail {
        Detail::Exec { argv, .. } => argv.join(" "),
        Detail::Open { path, access, error, .. } => {
            format!("{path} ({access}){}", error.as_deref().map(|e| format!(" {e}")).unwrap_or_default())
        }
        Detail::Connect { addr, port, proto, error, .. } => format!(
            "{proto} {addr}:{port}{}",
            error.as_deref().map(|e| format!(" {e}")).unwrap_or_default()
        ),
        Detail::Exit { exit_code, signal } => match signal {
            Some(s) => format!("signal {s}"),
            None => format!("code {exit_code}"),
        },
        Detail::RunStart { argv, .. } => format!("name={} {}", e.run_name.as_deref().unwrap_or("-"), argv.join(" ")),
        Detail::RunEnd { exit_status } => format!("status {}", exit_status.map_or("-".into(), |s| s.to_string())),
        Detail::Drop { count, stage } => format!("{count} events lost at {stage}"),
        Detail::Hold { hold, attempts, .. } => format!(
            "{hold}: {}",
            attempts
                .iter()
                .map(|a| format!("{} {} by pid {} ({})", a.kind, a.what, a.tgid, a.comm.as_deref().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Detail::Action { requested_by_uid, requested_by_pid, latency_ms, processes, error } => format!(
            "name={} {processes} processes in {latency_ms:.3} ms, by uid {requested_by_uid} pid {requested_by_pid}{}",
            e.run_name.as_deref().unwrap_or("-"),
            error.as_deref().map(|e| format!(": FAILED: {e}")).unwrap_or_default()
        ),
        Detail::Syscall { name, .. } => name.clone(),
        Detail::Socket { family, sock_type, protocol } => format!("family={family} type={sock_type} protocol={protocol}"),
        Detail::SocketFamily { family, sock_type, protocol, family_name, netlink } => format!(
            "family={} type={sock_type} protocol={}",
            family_name.map_or(family.to_string(), str::to_string),
            netlink.map_or(protocol.to_string(), str::to_string)
        ),
        Detail::Unix { path, error, .. } => {
            format!("unix {path}{}", error.as_deref().map(|e| format!(" {e}")).unwrap_or_default())
        }
        Detail::Bind { op, addr, port, error, .. } => {
            format!("{op} {addr}:{port}{}", error.as_deref().map(|e| format!(" {e}")).unwrap_or_default())
        }
        Detail::PolicyReload { result, source, error, .. } => format!(
            "{} {result} ({source}){}",
            e.policy.as_deref().unwrap_or("-"),
            error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        ),
        Detail::None => String::new(),
    };
    let verdict = match (e.verdict, e.layer) {
        ("allow", _) => String::new(),
        (v, Some("landlock")) => format!(" [{} {} by landlock]", v.to_uppercase(), e.rule.as_deref().unwrap_or("")),
        (v, _) => format!(" [{} {}]", v.to_uppercase(), e.rule.as_deref().unwrap_or("")),
    };
    format!("{} {:<7} {} {}{}", e.ts, e.kind, who.trim_end(), what, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_guard_common::{ARGV_MAX, PATH_MAX};

    fn hdr(kind: u32, flags: u32) -> EventHeader {
        EventHeader {
            kind,
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
        let mut e = ExecEvent { hdr: hdr(kind::EXEC, FLAG_ARGV_TRUNCATED), path_len: 12, argv_len: 0, _pad: 0, file_id: [0; 16], path: [0; PATH_MAX], argv: [0; ARGV_MAX] };
        e.path[..12].copy_from_slice(b"/usr/bin/cat");
        let argv = b"cat\0/etc/hostname\0";
        e.argv[..argv.len()].copy_from_slice(argv);
        e.argv_len = argv.len() as u32;
        let r = decode(&bytes_of(&e)).unwrap();
        assert_eq!(r.kind, "exec");
        assert_eq!(r.detail, Detail::Exec {
            path: "/usr/bin/cat".into(),
            argv: vec!["cat".into(), "/etc/hostname".into()],
            argv_truncated: true,
            path_truncated: false,
        });
    }

    #[test]
    fn open_and_connect_records_decode() {
        let mut o = OpenEvent { hdr: hdr(kind::OPEN, FLAG_PATH_UNRESOLVED), open_flags: libc::O_RDWR as u32, result: -2, path_len: 4, _pad: 0, file_id: [0; 16], path: [0; PATH_MAX] };
        o.path[..4].copy_from_slice(b"/nox");
        match decode(&bytes_of(&o)).unwrap().detail {
            Detail::Open { path, access, error, path_resolved, .. } => {
                assert_eq!((path.as_str(), access, error.as_deref(), path_resolved), ("/nox", "read_write", Some("ENOENT"), false));
            }
            d => panic!("{d:?}"),
        }
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let c = ConnectEvent { hdr: hdr(kind::CONNECT, 0), result: 0, family: libc::AF_INET as u16, port: 8080, protocol: libc::IPPROTO_TCP as u16, sock_type: 1, _pad: 0, addr };
        match decode(&bytes_of(&c)).unwrap().detail {
            Detail::Connect { addr, port, proto, family, .. } => assert_eq!((addr.as_str(), port, proto, family), ("127.0.0.1", 8080, "tcp", "inet")),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn short_or_unknown_records_are_errors_not_panics() {
        assert_eq!(decode(&[0u8; 3]), Err(DecodeError::Short(3)));
        let h = hdr(99, 0);
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::Kind(99)));
        let h = hdr(kind::EXEC, 0);
        assert!(matches!(decode(&bytes_of(&h)), Err(DecodeError::Size { .. })));
    }

    #[test]
    fn json_line_has_the_contract_fields() {
        let e = Event {
            ts: rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_000_001)),
            kind: "exit",
            verdict: "allow",
            run: Some("r-abc123".into()),
            detail: Detail::Exit { exit_code: 0, signal: None },
            ..Default::default()
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
            kind: "freeze",
            run: Some("r-abc123".into()),
            run_name: Some("coding-1".into()),
            detail: Detail::Action { requested_by_uid: 1000, requested_by_pid: 42, latency_ms: 3.217, processes: 101, error: None },
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!((v["kind"].as_str(), v["requested_by_uid"].as_u64(), v["requested_by_pid"].as_u64()), (Some("freeze"), Some(1000), Some(42)));
        assert_eq!((v["latency_ms"].as_f64(), v["processes"].as_u64()), (Some(3.217), Some(101)));
        assert!(v.get("error").is_none());
        let h = human(&e);
        assert!(h.contains("freeze  r-abc123 name=coding-1 101 processes in 3.217 ms, by uid 1000 pid 42"), "{h}");
    }
}
