//! Events: decoding the kernel's records and the JSON-lines form of the contract.
use std::{
    collections::BTreeMap,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub use agent_guard_common::{Kind, Rule, Verdict};
use agent_guard_common::{
    ConnectEvent, EventHeader, ExecEvent, ExitEvent, OpenEvent, SocketEvent, SyscallEvent, FLAG_ARGV_TRUNCATED, FLAG_LSM,
    FLAG_PATH_TRUNCATED, FLAG_PATH_UNRESOLVED, FLAG_READ_ERROR,
};
use serde::Serialize;

/// One event as written to the log (one JSON object per line). Kind-specific fields are
/// omitted when they do not apply. Kinds, verdicts and rules are written by their contract
/// names.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub ts: String,
    pub host: String,
    pub kind: Kind,
    pub verdict: Verdict,
    pub rule: Option<Rule>,
    /// Which enforcement layer decided an operation: "ebpf" (the kernel programs),
    /// "landlock" (the run's Landlock layer refused it before it happened) or "seccomp" (the
    /// seccomp filter of `agent-guard run` refused a syscall before it ran). Absent on events
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
    /// What the kernel record said beyond the fields above (not written).
    #[serde(skip)]
    pub facts: Facts,
}

impl Event {
    /// An event of `kind`, allowed, with every other field empty.
    pub fn new(kind: Kind) -> Self {
        Event {
            ts: String::new(),
            host: String::new(),
            kind,
            verdict: Verdict::Allow,
            rule: None,
            layer: None,
            run: None,
            run_name: None,
            labels: BTreeMap::new(),
            policy: None,
            policy_version: None,
            hook: None,
            pid: None,
            tgid: None,
            ppid: None,
            uid: None,
            gid: None,
            comm: None,
            exe: None,
            cgroup: None,
            cgroup_id: None,
            ancestry: None,
            detail: Detail::None,
            facts: Facts::default(),
        }
    }
}

/// The facts of a kernel record a hold is built from, decoded once (`decode`) and carried
/// with the event instead of being parsed back out of its text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// cgroup id of the record's run (`EventHeader::run_cgroup`; 0 for the daemon's events).
    pub run_cgroup: u64,
    pub target: Target,
}

/// What an operation was applied to, as the kernel programs key approvals of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Target {
    #[default]
    None,
    /// An open's or exec's file: its device and inode when the kernel identified it, and
    /// for an open the access the kernel judged (1 read | 2 write).
    File { id: Option<[u8; 16]>, access: u32 },
    /// A connect's or UDP send's destination (IPv4 as IPv4, never IPv4-mapped) and the IP
    /// protocol approvals of it are keyed with (None: a protocol nothing is approved for).
    Inet { ip: IpAddr, port: u16, protocol: Option<u32> },
}

impl Target {
    /// The destination as the kernel programs key addresses: IPv6 bytes, IPv4 as
    /// IPv4-mapped.
    pub fn key_addr(ip: IpAddr) -> [u8; 16] {
        match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }
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
        /// A path syscall refused by a launched run's seccomp filter: the path it named.
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// Refused by the seccomp filter: the errno the process got (EPERM, ENOSYS).
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Socket {
        family: u32,
        sock_type: u32,
        protocol: u32,
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
    pub kind: Kind,
    /// A verdict no program writes reads as `allow`.
    pub verdict: Verdict,
    pub rule: Option<Rule>,
    pub detail: Detail,
    pub read_error: bool,
    pub facts: Facts,
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
    // saturating: i32::MIN has no positive counterpart (an unknown errno either way).
    (neg < 0).then(|| format!("{:?}", nix::errno::Errno::from_raw(neg.saturating_neg())))
}

pub fn access_of(flags: u32) -> &'static str {
    match flags & libc::O_ACCMODE as u32 {
        0 => "read",
        1 => "write",
        _ => "read_write",
    }
}

/// The access bits the kernel programs key an open's grant with (1 read, 2 write), from the
/// open flags as they judge them (O_CREAT and O_TRUNC are writes): for records of programs
/// older than `OpenEvent::access`.
fn open_access(flags: u32) -> u32 {
    let acc = flags & libc::O_ACCMODE as u32;
    let write = acc != 0 || flags & (libc::O_CREAT | libc::O_TRUNC) as u32 != 0;
    let read = acc != libc::O_WRONLY as u32;
    read as u32 | (write as u32) << 1
}

/// The kind of program that decided a kernel event of `kind` with header `flags`.
pub fn hook_of(kind: Kind, flags: u32) -> &'static str {
    if flags & FLAG_LSM != 0 {
        "lsm"
    } else if matches!(kind, Kind::Connect | Kind::Sendmsg | Kind::Socket) {
        "cgroup"
    } else {
        "tracepoint"
    }
}

/// The address of a connect or send record. The one place that tells IPv4 from IPv4-mapped:
/// AF_INET records carry IPv4 in the first 4 bytes, or IPv4-mapped (as sock_addr programs see
/// it); any other family but AF_INET6 with an IPv4-mapped address is that IPv4 too. An
/// AF_INET6 socket's IPv4-mapped destination stays the IPv6 address it is.
fn ip_of(family: u16, addr: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    match (family as i32, v6.to_ipv4_mapped()) {
        (libc::AF_INET, Some(v4)) => v4.into(),
        (libc::AF_INET, None) => Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into(),
        (libc::AF_INET6, _) | (_, None) => v6.into(),
        (_, Some(v4)) => v4.into(),
    }
}

/// The name events give a socket's protocol, and the IP protocol approvals of its operations
/// are keyed with (only those whose operations the cgroup programs approve).
fn proto_of(protocol: u16, sock_type: u16) -> (&'static str, Option<u32>) {
    let (tcp, udp, mptcp) = (libc::IPPROTO_TCP as u32, libc::IPPROTO_UDP as u32, libc::IPPROTO_MPTCP as u32);
    match (protocol as i32, sock_type as i32) {
        (libc::IPPROTO_TCP, _) | (0, libc::SOCK_STREAM) => ("tcp", Some(tcp)),
        (libc::IPPROTO_UDP, _) | (0, libc::SOCK_DGRAM) => ("udp", Some(udp)),
        (libc::IPPROTO_MPTCP, _) => ("mptcp", Some(mptcp)),
        (libc::IPPROTO_SCTP, _) => ("sctp", None),
        (libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6, _) => ("icmp", None),
        _ => ("other", None),
    }
}

pub fn decode(bytes: &[u8]) -> Result<Raw, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let hdr: EventHeader = read(bytes, 0)?;
    let f = hdr.flags;
    let kind = Kind::from_raw(hdr.kind).ok_or(DecodeError::Kind(hdr.kind))?;
    let verdict = Verdict::from_raw(hdr.verdict).unwrap_or(Verdict::Allow);
    let mut target = Target::None;
    let detail = match kind {
        Kind::Exec => {
            let e: ExecEvent = read(bytes, hdr.kind)?;
            target = Target::File { id: Some(e.file_id).filter(|id| *id != [0; 16]), access: 0 };
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
            Detail::Exec {
                path: text(&e.path, e.path_len),
                argv,
                argv_truncated: f & FLAG_ARGV_TRUNCATED != 0,
                path_truncated: f & FLAG_PATH_TRUNCATED != 0,
            }
        }
        Kind::Open => {
            let e: OpenEvent = read(bytes, hdr.kind)?;
            let access = if e.access != 0 { e.access } else { open_access(e.open_flags) };
            target = Target::File { id: Some(e.file_id).filter(|id| *id != [0; 16]), access };
            Detail::Open {
                path: text(&e.path, e.path_len),
                access: access_of(e.open_flags),
                flags: e.open_flags,
                result: e.result,
                error: errno_name(e.result),
                path_resolved: f & FLAG_PATH_UNRESOLVED == 0,
                path_truncated: f & FLAG_PATH_TRUNCATED != 0,
            }
        }
        Kind::Connect | Kind::Sendmsg => {
            let e: ConnectEvent = read(bytes, hdr.kind)?;
            let ip = ip_of(e.family, &e.addr);
            let (proto, protocol) = proto_of(e.protocol, e.sock_type);
            target = Target::Inet { ip, port: e.port, protocol };
            let result = if kind == Kind::Sendmsg && verdict == Verdict::Deny { -libc::EPERM } else { e.result };
            Detail::Connect {
                family: if ip.is_ipv4() { "inet" } else { "inet6" },
                addr: ip.to_string(),
                port: e.port,
                proto,
                result,
                error: errno_name(result),
            }
        }
        Kind::Syscall => {
            let e: SyscallEvent = read(bytes, hdr.kind)?;
            let name = crate::policy::syscall_name(e.nr).map(str::to_string).unwrap_or_else(|| format!("syscall_{}", e.nr));
            Detail::Syscall { name, nr: e.nr, arg0: e.arg0, path: None, error: None }
        }
        Kind::Socket => {
            let e: SocketEvent = read(bytes, hdr.kind)?;
            Detail::Socket { family: e.family, sock_type: e.sock_type, protocol: e.protocol }
        }
        Kind::Exit => {
            let e: ExitEvent = read(bytes, hdr.kind)?;
            let sig = (e.exit_code & 0x7f) as i32;
            Detail::Exit {
                exit_code: ((e.exit_code >> 8) & 0xff) as i32,
                signal: (sig != 0).then_some(sig),
            }
        }
        // Kind::from_raw gives only the kernel's kinds.
        _ => return Err(DecodeError::Kind(hdr.kind)),
    };
    Ok(Raw {
        hdr,
        kind,
        verdict,
        rule: Rule::from_raw(hdr.rule),
        detail,
        read_error: f & FLAG_READ_ERROR != 0,
        facts: Facts { run_cgroup: hdr.run_cgroup, target },
    })
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
        Detail::PolicyReload { result, source, error, .. } => format!(
            "{} {result} ({source}){}",
            e.policy.as_deref().unwrap_or("-"),
            error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        ),
        Detail::None => String::new(),
    };
    let rule = e.rule.map_or("", Rule::name);
    let verdict = match (e.verdict, e.layer) {
        (Verdict::Allow, _) => String::new(),
        (v, Some("landlock")) => format!(" [{} {rule} by landlock]", v.name().to_uppercase()),
        (v, _) => format!(" [{} {rule}]", v.name().to_uppercase()),
    };
    // Paths, argv and comm are the run's to choose: never a control character on a terminal.
    crate::output::text::printable(&format!("{} {:<7} {} {}{}", e.ts, e.kind.name(), who.trim_end(), what, verdict)).into_owned()
}

#[cfg(test)]
mod tests {
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
        let mut e = ExecEvent { hdr: hdr(Kind::Exec, FLAG_ARGV_TRUNCATED), path_len: 12, argv_len: 0, _pad: 0, file_id: [0; 16], path: [0; PATH_MAX], argv: [0; ARGV_MAX] };
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
        });
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
        assert_eq!(r.facts, Facts { run_cgroup: 7, target: Target::File { id: Some([7; 16]), access: 2 } });
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
            facts: Facts { run_cgroup: 9, target: Target::File { id: None, access: 1 } },
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
}
