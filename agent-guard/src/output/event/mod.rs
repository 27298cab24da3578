//! Events: decoding the kernel's records and the JSON-lines form of the contract.
use std::{
    collections::BTreeMap,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub use agent_guard_common::{Kind, Rule, Verdict};
use agent_guard_common::{
    ConnectEvent, EventHeader, ExecEvent, ExitEvent, LimitEvent, OpenEvent, SocketEvent, SyscallEvent, UnixEvent, FLAG_ARGV_TRUNCATED,
    FLAG_LISTEN, FLAG_LSM, FLAG_PATH_TRUNCATED, FLAG_PATH_UNRESOLVED, FLAG_READ_ERROR, FLAG_TRACEPOINT, FLAG_UNIX,
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
    /// How urgent a tripwire is: `critical` for a decoy touched (and its hold), `warning` for a
    /// budget crossed. Absent on other events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<&'static str>,
    /// Which enforcement layer decided an operation: "ebpf" (the kernel programs),
    /// "landlock" (the run's Landlock layer refused it before it happened) or "seccomp" (the
    /// seccomp filter of `agent-guard run` refused a syscall before it ran). Absent on events
    /// the daemon makes and on `exit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<&'static str>,
    pub run: Option<String>,
    pub run_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The task (`agent-guard task`) the process is in, and its labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_labels: Option<BTreeMap<String, String>>,
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
    /// A run whose record in `state_dir` goes once this line is in the log (its `run_end`):
    /// a daemon killed before that still finds the record and writes the run_end then.
    #[serde(skip)]
    pub forget_run: Option<String>,
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
            severity: None,
            layer: None,
            run: None,
            run_name: None,
            labels: BTreeMap::new(),
            task: None,
            task_labels: None,
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
            forget_run: None,
        }
    }
}

/// The `severity` of a tripwire's event: a decoy touched is critical, a budget crossed a
/// warning.
pub fn severity(kind: Kind, verdict: Verdict) -> Option<&'static str> {
    match (kind, verdict) {
        (_, Verdict::Decoy) => Some("critical"),
        (Kind::Limit, _) => Some("warning"),
        _ => None,
    }
}

/// The facts of a kernel record a hold is built from, decoded once (`decode`) and carried
/// with the event instead of being parsed back out of its text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// cgroup id of the record's run (`EventHeader::run_cgroup`; 0 for the daemon's events).
    pub run_cgroup: u64,
    pub target: Target,
    /// A refused exec's directory descriptor (execveat; AT_FDCWD for execve), which a relative
    /// path is relative to.
    pub dirfd: i32,
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
        /// The executable the kernel resolved; for a refused exec (`result`), the string the
        /// process passed.
        path: String,
        argv: Vec<String>,
        argv_truncated: bool,
        path_truncated: bool,
        /// An exec refused before it happened (tracepoint backend: execve/execveat failed):
        /// its -errno. Absent for an exec that happened.
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
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
        /// The name whose DNS answer opened the address for the run (name rules).
        #[serde(skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    },
    /// A DNS query of a run with name rules (kind `dns`), as the forwarder answered it.
    Dns {
        /// The name asked, lower case, without the trailing dot.
        query: String,
        /// A, AAAA, MX, ...
        qtype: String,
        /// udp | tcp
        proto: &'static str,
        /// NOERROR, NXDOMAIN, REFUSED (a name no rule covers), SERVFAIL (no upstream answer), ...
        rcode: String,
        /// The addresses the answer opened (allowed names only).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        answers: Vec<String>,
        /// The CNAME chain followed from the name asked.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        cnames: Vec<String>,
        /// The smallest TTL of the addresses opened, in seconds.
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl: Option<u32>,
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
        /// Refused by a launched run's seccomp filter: the errno the process got (EPERM).
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
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
        op: BindOp,
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
        /// What held the run: `violation`, `decoy` (a tripwire) or `limit` (a budget).
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
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
    /// A `[limits]` budget crossed (`limit` event): the counter, the budget, the window.
    Limit {
        limit: &'static str,
        count: u32,
        max: u32,
        on_limit: &'static str,
        /// The window of per-minute limits (absent: counted over the run's life).
        #[serde(skip_serializing_if = "Option::is_none")]
        window_s: Option<u64>,
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
    /// The host key's signature over the log's chain up to the line before (see `chain`).
    Checkpoint { covers_seq: u64, covers_chain: String, pubkey: String, signature: String },
    /// At start, the log did not continue the chain head (see `chain::resume`).
    ChainGap {
        head_seq: Option<u64>,
        log_seq: Option<u64>,
        reason: String,
    },
}

/// What a `bind` event's operation was.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BindOp {
    Bind,
    Listen,
}

impl Detail {
    /// A socket of a family the policy does not list, with the family's (and a netlink
    /// protocol's) name: from a kernel record or a launched run's seccomp filter.
    pub fn socket_family(family: u32, sock_type: u32, protocol: u32) -> Detail {
        use crate::policy::contain;
        let netlink = if family == contain::AF_NETLINK { contain::netlink_name(protocol) } else { None };
        Detail::SocketFamily { family, sock_type, protocol, family_name: contain::family_name(family), netlink, error: None }
    }
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
    } else if flags & agent_guard_common::FLAG_CGROUP != 0
        || (flags & FLAG_TRACEPOINT == 0 && matches!(kind, Kind::Connect | Kind::Sendmsg | Kind::Socket | Kind::Bind))
    {
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
    let mut dirfd = 0;
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
            dirfd = e.dirfd;
            Detail::Exec {
                path: text(&e.path, e.path_len),
                argv,
                argv_truncated: f & FLAG_ARGV_TRUNCATED != 0,
                path_truncated: f & FLAG_PATH_TRUNCATED != 0,
                result: (e.result < 0).then_some(e.result),
                error: errno_name(e.result),
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
        Kind::Connect | Kind::Sendmsg if f & FLAG_UNIX != 0 => {
            let e: UnixEvent = read(bytes, hdr.kind)?;
            let n = (e.path_len as usize).min(e.path.len());
            let name = &e.path[..n];
            let path = if e.abstract_name != 0 {
                // Abstract names may hold any byte, zeros included.
                let shown: String = name
                    .iter()
                    .map(|b| if b.is_ascii_graphic() || *b == b' ' { (*b as char).to_string() } else { format!("\\x{b:02x}") })
                    .collect();
                format!("@{shown}")
            } else {
                String::from_utf8_lossy(name).into_owned()
            };
            let result = if e.result < 0 { -libc::EPERM } else { 0 };
            Detail::Unix { family: "unix", path, result, error: errno_name(result) }
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
                domain: None,
            }
        }
        Kind::Syscall => {
            let e: SyscallEvent = read(bytes, hdr.kind)?;
            let name = crate::policy::syscall_name(e.nr).map(str::to_string).unwrap_or_else(|| format!("syscall_{}", e.nr));
            Detail::Syscall { name, nr: e.nr, arg0: e.arg0, path: None, error: None }
        }
        Kind::Socket if Rule::from_raw(hdr.rule) == Some(Rule::Families) => {
            let e: SocketEvent = read(bytes, hdr.kind)?;
            Detail::socket_family(e.family, e.sock_type, e.protocol)
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
        Kind::Bind => {
            let e: ConnectEvent = read(bytes, hdr.kind)?;
            let ip = ip_of(e.family, &e.addr);
            let op = if f & FLAG_LISTEN != 0 { BindOp::Listen } else { BindOp::Bind };
            let result = if e.result < 0 { -libc::EPERM } else { 0 };
            Detail::Bind {
                op,
                family: if ip.is_ipv4() { "inet" } else { "inet6" },
                addr: ip.to_string(),
                port: e.port,
                result,
                error: errno_name(result),
            }
        }
        Kind::Limit => {
            let e: LimitEvent = read(bytes, hdr.kind)?;
            let i = (e.limit as usize).min(agent_guard_common::limit::COUNT - 1);
            Detail::Limit {
                limit: crate::policy::tripwire::LIMIT_NAMES[i],
                count: e.count,
                max: e.max,
                on_limit: match e.on_limit {
                    agent_guard_common::limit::REPORT => "report",
                    agent_guard_common::limit::KILL => "kill",
                    _ => "freeze",
                },
                window_s: (e.window_ns != 0).then_some(e.window_ns / 1_000_000_000),
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
        facts: Facts { run_cgroup: hdr.run_cgroup, target, dirfd },
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

mod human;
pub use human::human;

#[cfg(test)]
mod tests;
