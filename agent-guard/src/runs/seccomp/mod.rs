//! The seccomp filter of runs started by `agent-guard run` under an enforce-mode policy with
//! `on_violation = "deny"`: syscalls the policy refuses get an errno *before* they run, and the
//! process goes on (the sys_enter check of the tracepoint backend can only kill after the fact).
//!
//! What the filter refuses (every refusal is an event, see below):
//! - each syscall of `[syscalls] deny` and of [`policy::UNSEEN_SYSCALLS`]: `EPERM` (`ENOSYS`
//!   for io_uring, [`policy::ENOSYS_SYSCALLS`], so programs fall back to plain syscalls).
//!   `link`/`linkat` are let through when the run's Landlock layer judges them
//!   ([`policy::LANDLOCK_JUDGED_SYSCALLS`]: the layer handles writes and no `deny` or `read`
//!   rule lies inside a write tree, where a hard link would give a carved-out file an allowed
//!   name); the run is marked `RUN_SECCOMP` so the sys_enter check does not kill them either;
//! - `mknod`/`mknodat` of a block or character device (`EPERM`; regular files, FIFOs and
//!   sockets are made as usual);
//! - `clone` with a namespace flag, or sharing the file table without being a thread (`EPERM`,
//!   as the sys_enter check refuses them); `clone3`, whose flags a filter cannot read, fails
//!   with `ENOSYS` without an event, so that libc falls back to `clone`, which is judged;
//! - 32-bit syscalls (`int 0x80`, `AUDIT_ARCH_I386`), x32 syscalls (`__X32_SYSCALL_BIT`) and
//!   numbers this build's syscall table does not know: `ENOSYS`, as on a kernel without them;
//! - `socket`/`socketpair` of a family outside `[network] families` (and the defaults: inet,
//!   inet6, unix, netlink route): `EPERM` before the socket exists, reported as a `socket`
//!   event with rule `network.families`. The family is compared as the kernel takes it, the
//!   low 32 bits of the register (`int family`), and for netlink the protocol (`arg2`) too.
//!   (The eBPF check can only kill at the syscall's entry, after which the socket is made.)
//!
//! Syscalls in [`policy::NEVER_ERRNO_SYSCALLS`] are never refused here (the sys_enter check
//! still kills them when the policy denies them).
//!
//! **Events.** Seccomp runs before the sys_enter tracepoint, so the eBPF programs never see a
//! refused syscall. Every refusal is `SECCOMP_RET_USER_NOTIF`: the child hands the filter's
//! listener to `agent-guard run` (outside the run's cgroup, waiting for the command) over a
//! socketpair before it execs; a thread there answers each notification with the errno, reads
//! the path argument of path syscalls from the process's memory, and reports the refusal to
//! the daemon, which emits the `syscall` event (`deny`, `layer: seccomp`; a refused socket
//! family: a `socket` event). If `run` dies, the
//! kernel answers every notification with `ENOSYS`: still refused, without an event.
//!
//! The filter is fixed when the run starts: a policy reload changes only the eBPF side.
use std::collections::BTreeSet;

use agent_guard_common::Rule;

use crate::policy::{self, contain, Mode, OnViolation, Policy};

pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

use agent_guard_common::clone::{NR_CLONE, NR_CLONE3};
// The clone flags, as the 32-bit words classic BPF compares (all of them are in the low half).
const CLONE_NEW_ANY: u32 = agent_guard_common::clone::NEW_ANY as u32;
const CLONE_FILES: u32 = agent_guard_common::clone::FILES as u32;
const CLONE_THREAD: u32 = agent_guard_common::clone::THREAD as u32;
const NR_MKNOD: u32 = 133;
const NR_MKNODAT: u32 = 259;
const NR_SOCKET: u32 = 41;
const NR_SOCKETPAIR: u32 = 53;
const NR_BPF: u32 = 321;
const S_IFMT: u32 = 0o170_000;

// Offsets in struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of argument `i` (little-endian).
const fn off_arg(i: u32) -> u32 {
    16 + 8 * i
}

const RET_NOTIFY: u32 = libc::SECCOMP_RET_USER_NOTIF;
const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

/// What the filter answers one syscall with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `syscalls.deny`, `unseen` or `network.families`.
    pub rule: Rule,
    pub errno: i32,
    pub name: String,
}

/// A run's filter: the classic BPF program and the tables it was built from (which the
/// notification thread decides with, [`Filter::decide`]).
#[derive(Debug, Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    denied: BTreeSet<u32>,
    unseen: BTreeSet<u32>,
    enosys: BTreeSet<u32>,
    /// Device nodes may be made (`[files] devices`).
    devices: bool,
    families: Families,
}

/// The socket families a run may create, as the filter compares them: bit N of `families`
/// allows address family N, bit N of `netlink` netlink protocol N (the kernel programs'
/// `NetContain`, defaults included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Families {
    pub families: u64,
    pub netlink: u32,
}

impl Default for Families {
    /// Every family: what a plan without the field (an older daemon's) refuses.
    fn default() -> Families {
        Families { families: u64::MAX, netlink: u32::MAX }
    }
}

impl Families {
    fn all(&self) -> bool {
        *self == Families::default()
    }

    /// Whether a socket of `family` / `protocol` (the kernel's `int`s) may be created.
    pub fn allows(&self, family: i32, protocol: i32) -> bool {
        let c = agent_guard_common::NetContain { families: self.families, netlink: self.netlink, flags: 0 };
        self.all() || contain::family_allowed(&c, family, protocol)
    }
}

/// The outcome of [`prepare`]: maybe a filter, and lines for stderr.
#[derive(Debug, Default)]
pub struct Prepared {
    pub filter: Option<Filter>,
    pub warnings: Vec<String>,
}

/// What the daemon hands `run` for its seccomp filter (in the Register response), made from the
/// policy it parsed: the syscalls refused and whether hard links may be left to the Landlock
/// layer. `run` finishes it with what only the launching host knows ([`SeccompPlan::filter`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeccompPlan {
    /// `[syscalls] deny`, by number (those that can be refused with an errno).
    pub denied: BTreeSet<u32>,
    /// The unseen list, by number, less what `denied` has and what never gets an errno.
    pub unseen: BTreeSet<u32>,
    /// No `deny` or `read` rule lies inside a `[files] write` tree: link/linkat may be left to
    /// a Landlock layer that handles writes.
    pub links_judgeable: bool,
    /// `[network] families` with the defaults: other sockets are refused.
    #[serde(default)]
    pub families: Families,
    /// Lines for stderr (what the filter cannot refuse).
    pub warnings: Vec<String>,
    /// `[files] devices`: mknod of block and char devices is not refused.
    #[serde(default)]
    pub devices: bool,
    /// Monitor mode: no filter; the plan only says what enforce mode would leave to the
    /// Landlock layer (hard links), so monitor mode does not report those as would_deny.
    #[serde(default)]
    pub monitor: bool,
}

impl SeccompPlan {
    /// The plan for `policy`: none unless it enforces with `on_violation = "deny"` (with
    /// "kill" the sys_enter check kills, with "freeze" it holds; monitor mode refuses nothing).
    pub fn for_policy(policy: &Policy) -> Option<SeccompPlan> {
        if policy.on_violation != OnViolation::Deny {
            return None;
        }
        let mut warnings = Vec::new();
        let nr = |name: &str| policy::syscall_number(name);
        let never: BTreeSet<u32> = policy::NEVER_ERRNO_SYSCALLS.iter().filter_map(|n| nr(n)).collect();
        let mut denied = BTreeSet::new();
        for (name, n) in &policy.syscalls_deny {
            if never.contains(n) {
                warnings.push(format!(
                    "[syscalls] deny names {name}, which the seccomp filter cannot refuse with an errno: it stays killed by the eBPF check"
                ));
            } else {
                denied.insert(*n);
            }
        }
        let unseen =
            policy::UNSEEN_SYSCALLS.iter().filter_map(|n| nr(n)).filter(|n| !never.contains(n) && !denied.contains(n)).collect();
        let c = policy.net_contain();
        let families = Families { families: c.families, netlink: c.netlink };
        Some(SeccompPlan {
            denied,
            unseen,
            links_judgeable: !carve_outs_in_write_trees(policy),
            families,
            warnings,
            devices: policy.devices,
            monitor: policy.mode == Mode::Monitor,
        })
    }

    /// The filter on this host. `landlock_writes`: the run's Landlock layer refuses writes
    /// outside `[files] write` (then, with no carve-out inside a write tree, it judges hard
    /// links and the filter lets link/linkat through).
    pub fn filter(&self, landlock_writes: bool) -> Prepared {
        let links_judged = landlock_writes && self.links_judgeable;
        let judged: BTreeSet<u32> =
            policy::LANDLOCK_JUDGED_SYSCALLS.iter().filter_map(|n| policy::syscall_number(n)).collect();
        let unseen: BTreeSet<u32> = self.unseen.iter().copied().filter(|n| !(links_judged && judged.contains(n))).collect();
        // clone3 too, should the policy deny it: libc then falls back to clone.
        let enosys = policy::ENOSYS_SYSCALLS.iter().filter_map(|n| policy::syscall_number(n)).chain([NR_CLONE3]).collect();
        let program = program(&self.denied.union(&unseen).copied().collect(), &self.families, self.devices);
        let filter = Filter { program, denied: self.denied.clone(), unseen, enosys, families: self.families, devices: self.devices };
        Prepared { filter: Some(filter), warnings: self.warnings.clone() }
    }
}

/// What the filter of a run under `policy` refuses, as a key the daemon compares when it
/// decides whether the run still needs the eBPF syscall check (`kernel::ondemand`). None when
/// a filter cannot stand in for the check: no filter (monitor mode, `kill`, `freeze`), a
/// `[syscalls] deny` of a syscall the filter never refuses, or a policy that holds processes
/// (decoys, `on_limit = "freeze"`: the check kills a held process someone else resumed).
pub fn cover_key(policy: &Policy) -> Option<crate::kernel::ondemand::CoverKey> {
    let plan = SeccompPlan::for_policy(policy).filter(|p| !p.monitor && policy.mode == Mode::Enforce)?;
    let never = policy::NEVER_ERRNO_SYSCALLS.iter().filter_map(|n| policy::syscall_number(n)).collect::<BTreeSet<u32>>();
    let t = &policy.tripwires;
    let holds = !t.decoy_files.is_empty()
        || !t.decoy_hosts.is_empty()
        || (t.has_limits() && t.on_limit == crate::policy::tripwire::OnLimit::Freeze);
    if holds || policy.syscalls_deny.iter().any(|(_, n)| never.contains(n)) {
        return None;
    }
    Some(format!("denied {:?} unseen {:?} families {:?} devices {}", plan.denied, plan.unseen, plan.families, plan.devices))
}

/// The filter for `policy` on a host whose Landlock layer does (or not) refuse writes.
pub fn for_policy(policy: &Policy, landlock_writes: bool) -> Prepared {
    SeccompPlan::for_policy(policy).filter(|p| !p.monitor).map(|p| p.filter(landlock_writes)).unwrap_or_default()
}

/// Whether a `deny` or `read` rule lies strictly inside a `[files] write` tree: Landlock only
/// grants, so there it lets a hard link give such a file a second, allowed name. (A `deny` at
/// exactly a write path is not granted at all; a `read` rule there changes nothing.)
fn carve_outs_in_write_trees(policy: &Policy) -> bool {
    !write_tree_carve_outs(policy).is_empty()
}

/// The `deny` and `read` rules strictly inside a `[files] write` tree, as the Landlock plan's
/// carve-out keys name them ("files.deny /workspace/.env"): where a Landlock layer refuses
/// every one of them up front, it refuses their hard links too, and links may be left to it.
pub fn write_tree_carve_outs(policy: &Policy) -> Vec<String> {
    let inside = |p: &str, w: &str| p != w && (w == "/" || p.strip_prefix(w).is_some_and(|r| r.starts_with('/')));
    let in_write = |p: &String| policy.files_write.iter().any(|w| inside(p, w));
    let deny = policy.files_deny.iter().filter(|p| in_write(p)).map(|p| format!("files.deny {p}"));
    let read = policy.files_read.iter().filter(|p| in_write(p)).map(|p| format!("files.read {p}"));
    deny.chain(read).collect()
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_JMP | code | libc::BPF_K) as u16, jt, jf, k }
}

fn load(off: u32) -> libc::sock_filter {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, off)
}

fn ret(k: u32) -> libc::sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, k)
}

/// Ranges of x86_64 syscall numbers up to the last one this build knows that name no syscall.
fn unknown_ranges() -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = Vec::new();
    for n in 0..=policy::last_syscall_number() {
        if policy::syscall_name(n).is_some() {
            continue;
        }
        match v.last_mut() {
            Some(r) if r.1 + 1 == n => r.1 = n,
            _ => v.push((n, n)),
        }
    }
    v
}

/// The checks of socket(2) and socketpair(2), entered with the syscall's number loaded: a
/// family `families` allows (for netlink, with an allowed protocol) is allowed, anything else
/// goes to the listener. Every path ends in a return.
fn socket_checks(families: &Families) -> Vec<libc::sock_filter> {
    use libc::BPF_JEQ;
    let mut sec = vec![load(off_arg(0))];
    for f in (0..64u32).filter(|f| families.families & (1 << f) != 0 && *f != contain::AF_NETLINK) {
        sec.push(jump(BPF_JEQ, f, 0, 1));
        sec.push(ret(RET_ALLOW));
    }
    if families.families & (1 << contain::AF_NETLINK) != 0 {
        // Protocol by protocol even when all are allowed: 32 and above are none (the kernel
        // programs refuse them too).
        let mut netlink = vec![load(off_arg(2))];
        for p in (0..32u32).filter(|p| families.netlink & (1 << p) != 0) {
            netlink.push(jump(BPF_JEQ, p, 0, 1));
            netlink.push(ret(RET_ALLOW));
        }
        netlink.push(ret(RET_NOTIFY));
        sec.push(jump(BPF_JEQ, contain::AF_NETLINK, 0, u8::try_from(netlink.len()).expect("short")));
        sec.extend(netlink);
    }
    sec.push(ret(RET_NOTIFY));
    sec
}

/// The classic BPF program: `refused` syscalls and the rest of the module's list go to the
/// listener, everything else is allowed.
fn program(refused: &BTreeSet<u32>, families: &Families, devices: bool) -> Vec<libc::sock_filter> {
    use libc::{BPF_ALU, BPF_AND, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JSET, BPF_K};
    let mut p = vec![
        load(OFF_ARCH),
        jump(BPF_JEQ, AUDIT_ARCH_X86_64, 1, 0),
        ret(RET_NOTIFY),
        load(OFF_NR),
        jump(BPF_JSET, X32_SYSCALL_BIT, 0, 1),
        ret(RET_NOTIFY),
        jump(BPF_JGT, policy::last_syscall_number(), 0, 1),
        ret(RET_NOTIFY),
    ];
    for (lo, hi) in unknown_ranges() {
        // lo <= nr <= hi: refused.
        p.push(jump(BPF_JGE, lo, 0, 2));
        p.push(jump(BPF_JGT, hi, 1, 0));
        p.push(ret(RET_NOTIFY));
    }
    for &nr in refused {
        p.push(jump(BPF_JEQ, nr, 0, 1));
        p.push(ret(RET_NOTIFY));
    }
    p.push(jump(BPF_JEQ, NR_CLONE3, 0, 1));
    p.push(ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    // The argument checks load another word: each ends in a return.
    for (nr, arg) in [(NR_MKNOD, 1), (NR_MKNODAT, 2)] {
        if refused.contains(&nr) || devices {
            continue;
        }
        p.push(jump(BPF_JEQ, nr, 0, 6));
        p.push(load(off_arg(arg)));
        p.push(stmt(BPF_ALU | BPF_AND | BPF_K, S_IFMT));
        p.push(jump(BPF_JEQ, libc::S_IFCHR, 1, 0));
        p.push(jump(BPF_JEQ, libc::S_IFBLK, 0, 1));
        p.push(ret(RET_NOTIFY));
        p.push(ret(RET_ALLOW));
    }
    if !refused.contains(&NR_CLONE) {
        p.push(jump(BPF_JEQ, NR_CLONE, 0, 6));
        p.push(load(off_arg(0)));
        p.push(jump(BPF_JSET, CLONE_NEW_ANY, 3, 0));
        p.push(stmt(BPF_ALU | BPF_AND | BPF_K, CLONE_FILES | CLONE_THREAD));
        p.push(jump(BPF_JEQ, CLONE_FILES, 1, 0));
        p.push(ret(RET_ALLOW));
        p.push(ret(RET_NOTIFY));
    }
    if !families.all() {
        let sec = socket_checks(families);
        for nr in [NR_SOCKET, NR_SOCKETPAIR].into_iter().filter(|nr| !refused.contains(nr)) {
            p.push(jump(BPF_JEQ, nr, 0, u8::try_from(sec.len()).expect("fewer than 256 checks")));
            p.extend(sec.iter().copied());
        }
    }
    p.push(ret(RET_ALLOW));
    p
}

impl Filter {
    /// What the filter answers a syscall the kernel notified (`None`: the program lets it
    /// through, which the listener never sees). Mirrors [`program`].
    pub fn decide(&self, arch: u32, nr: i32, args: &[u64; 6]) -> Option<Verdict> {
        let unseen = |errno: i32, name: String| Some(Verdict { rule: Rule::Unseen, errno, name });
        if arch != AUDIT_ARCH_X86_64 {
            let abi = if arch == AUDIT_ARCH_I386 { "i386" } else { "arch" };
            return unseen(libc::ENOSYS, format!("{abi}:{nr}"));
        }
        let n = nr as u32;
        if n & X32_SYSCALL_BIT != 0 {
            return unseen(libc::ENOSYS, format!("x32:{}", n & !X32_SYSCALL_BIT));
        }
        let Some(name) = policy::syscall_name(n).filter(|_| n <= policy::last_syscall_number()) else {
            return unseen(libc::ENOSYS, format!("syscall_{n}"));
        };
        let errno = if self.enosys.contains(&n) { libc::ENOSYS } else { libc::EPERM };
        if self.denied.contains(&n) {
            return Some(Verdict { rule: Rule::Syscalls, errno, name: name.into() });
        }
        let device = |mode: u64| !self.devices && matches!(mode as u32 & S_IFMT, libc::S_IFCHR | libc::S_IFBLK);
        // The filter compares the low 32 bits, where every flag it judges lives.
        let clone = |flags: u64| agent_guard_common::clone::refused(flags & u32::MAX as u64);
        let refused = self.unseen.contains(&n)
            || (n == NR_MKNOD && device(args[1]))
            || (n == NR_MKNODAT && device(args[2]))
            || (n == NR_CLONE && clone(args[0]));
        if refused {
            let rule = if n == NR_BPF { Rule::SelfProtection } else { Rule::Unseen };
            return Some(Verdict { rule, errno, name: name.into() });
        }
        // The kernel's `int family, int type, int protocol`: the low 32 bits.
        let socket = n == NR_SOCKET || n == NR_SOCKETPAIR;
        (socket && !self.families.allows(args[0] as u32 as i32, args[2] as u32 as i32))
            .then(|| Verdict { rule: Rule::Families, errno: libc::EPERM, name: name.into() })
    }

    /// The syscalls it refuses by name (for messages and tests).
    pub fn refused_names(&self) -> Vec<&'static str> {
        self.denied.union(&self.unseen).filter_map(|n| policy::syscall_name(*n)).collect()
    }
}

mod listener;
pub use listener::*;

#[cfg(test)]
mod tests;
