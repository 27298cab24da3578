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
//!   numbers this build's syscall table does not know: `ENOSYS`, as on a kernel without them.
//!
//! Syscalls in [`policy::NEVER_ERRNO_SYSCALLS`] are never refused here (the sys_enter check
//! still kills them when the policy denies them).
//!
//! **Events.** Seccomp runs before the sys_enter tracepoint, so the eBPF programs never see a
//! refused syscall. Every refusal is `SECCOMP_RET_USER_NOTIF`: the child hands the filter's
//! listener to `agent-guard run` (outside the run's cgroup, waiting for the command) over a
//! socketpair before it execs; a thread there answers each notification with the errno, reads
//! the path argument of path syscalls from the process's memory, and reports the refusal to
//! the daemon, which emits the `syscall` event (`deny`, `layer: seccomp`). If `run` dies, the
//! kernel answers every notification with `ENOSYS`: still refused, without an event.
//!
//! The filter is fixed when the run starts: a policy reload changes only the eBPF side.
use std::{
    collections::BTreeSet,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::policy::{self, Mode, OnViolation, Policy};

pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const NR_CLONE: u32 = 56;
const NR_CLONE3: u32 = 435;
const NR_MKNOD: u32 = 133;
const NR_MKNODAT: u32 = 259;
/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
const CLONE_NEW_ANY: u32 = 0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;
const CLONE_FILES: u32 = 0x0000_0400;
const CLONE_THREAD: u32 = 0x0001_0000;
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

/// A refused syscall, as `run` reports it to the daemon (control request `seccomp_refusal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// The calling thread, as the kernel named it in the notification.
    pub pid: u32,
    /// The syscall's name (x86_64 table); `i386:NR`, `x32:NR` or `syscall_NR` for the others.
    pub syscall: String,
    pub nr: u32,
    pub arg0: u64,
    /// `syscalls.deny` or `unseen`.
    pub rule: String,
    /// The errno the process got.
    pub errno: i32,
    /// For a path syscall, the path it named (made absolute with the process's working
    /// directory or directory descriptor; the descriptor's path when the path is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What the filter answers one syscall with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub rule: &'static str,
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
}

/// The outcome of [`prepare`]: maybe a filter, and lines for stderr.
#[derive(Debug, Default)]
pub struct Prepared {
    pub filter: Option<Filter>,
    pub warnings: Vec<String>,
}

/// The filter for a run whose bound policy file is `text` (as the daemon returned it), if any.
/// `landlock_writes`: the run's Landlock layer refuses writes outside `[files] write`.
pub fn prepare(text: Option<&str>, origin: &str, landlock_writes: bool) -> Prepared {
    let Some(text) = text else { return Prepared::default() };
    match policy::parse(text, origin).policy {
        Some(p) => for_policy(&p, landlock_writes),
        // landlock::prepare already said why the text does not parse.
        None => Prepared::default(),
    }
}

/// The filter for `policy`: none unless it enforces with `on_violation = "deny"` (with
/// "kill" the sys_enter check kills, with "freeze" it holds; monitor mode refuses nothing).
pub fn for_policy(policy: &Policy, landlock_writes: bool) -> Prepared {
    if policy.mode != Mode::Enforce || policy.on_violation != OnViolation::Deny {
        return Prepared::default();
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
    let links_judged = landlock_writes && !carve_outs_in_write_trees(policy);
    let unseen: BTreeSet<u32> = policy::UNSEEN_SYSCALLS
        .iter()
        .filter(|n| !(links_judged && policy::LANDLOCK_JUDGED_SYSCALLS.contains(n)))
        .filter_map(|n| nr(n))
        .filter(|n| !never.contains(n) && !denied.contains(n))
        .collect();
    // clone3 too, should the policy deny it: libc then falls back to clone.
    let enosys = policy::ENOSYS_SYSCALLS.iter().filter_map(|n| nr(n)).chain([NR_CLONE3]).collect();
    let program = program(&denied.union(&unseen).copied().collect());
    Prepared { filter: Some(Filter { program, denied, unseen, enosys }), warnings }
}

/// Whether a `deny` or `read` rule lies inside (or at) a `[files] write` tree: Landlock only
/// grants, so inside a write tree it lets a hard link give such a file a second, allowed name.
fn carve_outs_in_write_trees(policy: &Policy) -> bool {
    let beneath = |p: &str, w: &str| p == w || w == "/" || p.strip_prefix(w).is_some_and(|r| r.starts_with('/'));
    policy
        .files_deny
        .iter()
        .chain(&policy.files_read)
        .any(|p| policy.files_write.iter().any(|w| beneath(p, w) && !(policy.files_deny.contains(p) && p == w)))
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

/// The classic BPF program: `refused` syscalls and the rest of the module's list go to the
/// listener, everything else is allowed.
fn program(refused: &BTreeSet<u32>) -> Vec<libc::sock_filter> {
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
        if refused.contains(&nr) {
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
    p.push(ret(RET_ALLOW));
    p
}

impl Filter {
    /// What the filter answers a syscall the kernel notified (`None`: the program lets it
    /// through, which the listener never sees). Mirrors [`program`].
    pub fn decide(&self, arch: u32, nr: i32, args: &[u64; 6]) -> Option<Verdict> {
        let unseen = |errno: i32, name: String| Some(Verdict { rule: "unseen", errno, name });
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
            return Some(Verdict { rule: "syscalls.deny", errno, name: name.into() });
        }
        let device = |mode: u64| matches!(mode as u32 & S_IFMT, libc::S_IFCHR | libc::S_IFBLK);
        let clone = |flags: u64| {
            let f = flags as u32;
            f & CLONE_NEW_ANY != 0 || f & (CLONE_FILES | CLONE_THREAD) == CLONE_FILES
        };
        let refused = self.unseen.contains(&n)
            || (n == NR_MKNOD && device(args[1]))
            || (n == NR_MKNODAT && device(args[2]))
            || (n == NR_CLONE && clone(args[0]));
        refused.then(|| Verdict { rule: "unseen", errno, name: name.into() })
    }

    /// The syscalls it refuses by name (for messages and tests).
    pub fn refused_names(&self) -> Vec<&'static str> {
        self.denied.union(&self.unseen).filter_map(|n| policy::syscall_name(*n)).collect()
    }
}

/// The launcher's end of a filter: the program and the socket its listener goes over.
/// [`ChildSide::install`] runs in the child between fork and exec.
pub struct ChildSide {
    program: Vec<libc::sock_filter>,
    sock: OwnedFd,
}

impl ChildSide {
    /// Installs the filter on the calling (single-threaded) process and sends its listener to
    /// the [`Notifier`]. Only raw syscalls on prepared data: safe between fork and exec.
    pub fn install(&self) -> io::Result<()> {
        let prog = libc::sock_fprog { len: self.program.len() as u16, filter: self.program.as_ptr().cast_mut() };
        let set = || {
            // SAFETY: prog points at the program, which outlives the call.
            unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    &prog as *const libc::sock_fprog,
                )
            }
        };
        let mut fd = set();
        if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EACCES) {
            // Without CAP_SYS_ADMIN a filter needs no_new_privs (the Landlock layer has
            // usually set it already).
            // SAFETY: prctl without pointers.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            fd = set();
        }
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = fd as RawFd;
        let sent = send_fd(self.sock.as_raw_fd(), fd);
        // SAFETY: our own descriptor; the Notifier has its copy.
        unsafe { libc::close(fd) };
        sent
    }
}

/// sendmsg(2) of one descriptor (SCM_RIGHTS) with one byte of data; async-signal-safe.
fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    // CMSG_SPACE(sizeof(int)) is 24 on x86_64; u64 words keep the buffer aligned.
    let mut control = [0u64; 4];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call, and
    // the control buffer is larger than CMSG_SPACE(4).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        libc::CMSG_DATA(c).cast::<RawFd>().write_unaligned(fd);
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The `agent-guard run` side: a thread that takes the listener from the child, answers every
/// notification with its errno, and a second one that reports the refusals (so a slow daemon
/// never delays an answer). Stopped by [`Notifier::finish`] (or on drop) once the run's
/// cgroup is empty.
pub struct Notifier {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How often the threads look at the stop flag while nothing happens.
const TICK: Duration = Duration::from_millis(100);

impl Notifier {
    /// Starts the threads for `filter`; `report` is called (on the reporting thread) with each
    /// refusal. Returns the child's side, to install in pre_exec.
    pub fn start(filter: Filter, mut report: impl FnMut(Refusal) + Send + 'static) -> io::Result<(Notifier, ChildSide)> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid out-array of two ints.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are ours.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Refusal>();
        let reporter = std::thread::Builder::new().name("seccomp-report".into()).spawn(move || {
            for r in rx {
                report(r);
            }
        })?;
        let program = filter.program.clone();
        let flag = stop.clone();
        let answerer = std::thread::Builder::new().name("seccomp-notify".into()).spawn(move || {
            if let Some(listener) = receive_listener(&ours, &flag) {
                serve(&listener, &filter, &flag, &tx);
            }
        })?;
        Ok((Notifier { stop, threads: vec![answerer, reporter] }, ChildSide { program, sock: theirs }))
    }

    /// Stops answering (a notification still pending then gets ENOSYS from the kernel) and
    /// waits until every refusal so far is reported.
    pub fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The answerer first: it holds the reporter's channel.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Waits until `fd` is readable (true), or the stop flag is set (false).
fn wait_readable(fd: RawFd, stop: &AtomicBool) -> Option<i16> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, TICK.as_millis() as i32) };
        if n > 0 {
            return Some(p.revents);
        }
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// The listener the child sends, or None if it never does (it failed before, or exited).
fn receive_listener(sock: &OwnedFd, stop: &AtomicBool) -> Option<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    wait_readable(sock.as_raw_fd(), stop)?;
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed these descriptors in this process.
            let mut owned = fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            return owned.next();
        }
    }
    None
}

fn serve(listener: &OwnedFd, filter: &Filter, stop: &AtomicBool, tx: &mpsc::Sender<Refusal>) {
    let fd = listener.as_raw_fd();
    while let Some(revents) = wait_readable(fd, stop) {
        if revents & libc::POLLIN == 0 {
            // POLLHUP: no process uses the filter any more.
            return;
        }
        // SAFETY: seccomp_notif is plain data; the kernel wants it zeroed.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: a valid seccomp_notif for the kernel to fill.
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
            continue; // ENOENT: the caller went away (killed) before we took it.
        }
        let d = &req.data;
        let verdict = filter.decide(d.arch, d.nr, &d.args).unwrap_or_else(|| Verdict {
            // The program and `decide` disagree (a bug): refuse anyway, and say so.
            rule: "unseen",
            errno: libc::EPERM,
            name: policy::syscall_name(d.nr as u32).map_or_else(|| format!("syscall_{}", d.nr), str::to_string),
        });
        // The caller waits while we read its memory; a path read from a task that went away
        // (its id no longer valid) could be another process's.
        let path = path_of(req.pid, &verdict.name, &d.args);
        // SAFETY: reads the id only.
        let valid = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &req.id) } == 0;
        let resp = libc::seccomp_notif_resp { id: req.id, val: 0, error: -verdict.errno, flags: 0 };
        // SAFETY: a valid response; ENOENT (the caller was killed meanwhile) is harmless.
        unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
        if !valid {
            continue;
        }
        let _ = tx.send(Refusal {
            pid: req.pid,
            syscall: verdict.name,
            nr: d.nr as u32,
            arg0: d.args[0],
            rule: verdict.rule.to_string(),
            errno: verdict.errno,
            path,
        });
    }
}

/// The path a path syscall of thread `pid` names, made absolute (see [`Refusal::path`]).
fn path_of(pid: u32, name: &str, args: &[u64; 6]) -> Option<String> {
    let (dirfd_arg, path_arg) = policy::path_argument(name)?;
    let dirfd = dirfd_arg.map_or(libc::AT_FDCWD, |i| args[i] as i32);
    let base = || {
        let link = if dirfd == libc::AT_FDCWD { format!("/proc/{pid}/cwd") } else { format!("/proc/{pid}/fd/{dirfd}") };
        std::fs::read_link(link).ok().map(|p| p.display().to_string())
    };
    let ptr = args[path_arg];
    let text = if ptr == 0 { String::new() } else { read_c_string(pid, ptr)? };
    if text.is_empty() {
        // utimensat(fd, NULL, ...) (futimens), or AT_EMPTY_PATH: the descriptor's file.
        return if dirfd >= 0 { base() } else { None };
    }
    if text.starts_with('/') {
        return Some(policy::lexical(&text));
    }
    Some(policy::lexical(&format!("{}/{text}", base()?)))
}

/// A NUL-terminated string at `addr` in thread `pid`'s memory (at most PATH_MAX bytes).
fn read_c_string(pid: u32, addr: u64) -> Option<String> {
    use std::os::unix::fs::FileExt;
    const PAGE: u64 = 4096;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < libc::PATH_MAX as usize {
        // Page by page: the string may end just before an unmapped page.
        let mut buf = vec![0u8; (PAGE - at % PAGE) as usize];
        let n = mem.read_at(&mut buf, at).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(end) = buf[..n].iter().position(|b| *b == 0) {
            out.extend_from_slice(&buf[..end]);
            return Some(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&buf[..n]);
        at += n as u64;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the classic BPF program on one syscall, as the kernel would (the instructions
    /// [`program`] emits only).
    fn run(p: &[libc::sock_filter], arch: u32, nr: i32, args: [u64; 6]) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                OFF_NR => nr as u32,
                OFF_ARCH => arch,
                o if o >= 16 && (o - 16) % 4 == 0 => {
                    let a = args[((o - 16) / 8) as usize];
                    if (o - 16) % 8 == 0 { a as u32 } else { (a >> 32) as u32 }
                }
                o => panic!("load of offset {o}"),
            }
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            let code = i.code as u32;
            pc += 1;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => acc = word(i.k),
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => acc &= i.k,
                c if c == libc::BPF_RET | libc::BPF_K => return i.k,
                c if c & 0x07 == libc::BPF_JMP => {
                    let taken = match c & 0xf0 {
                        libc::BPF_JEQ => acc == i.k,
                        libc::BPF_JGT => acc > i.k,
                        libc::BPF_JGE => acc >= i.k,
                        libc::BPF_JSET => acc & i.k != 0,
                        op => panic!("jump op {op:#x}"),
                    };
                    pc += if taken { i.jt } else { i.jf } as usize;
                }
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    fn filter(text: &str, landlock_writes: bool) -> Prepared {
        let checked = policy::parse(text, "test.toml");
        for_policy(&checked.policy.unwrap_or_else(|| panic!("{:?}", checked.errors)), landlock_writes)
    }

    const BASE: &str = "name = \"p\"\n[files]\nread = [\"/usr\"]\nwrite = [\"/work\"]\n[syscalls]\ndeny = [\"utimensat\", \"ptrace\"]\n";

    fn nr(name: &str) -> i32 {
        policy::syscall_number(name).unwrap() as i32
    }

    #[test]
    fn the_program_and_decide_agree_on_every_syscall() {
        let f = filter(BASE, true).filter.unwrap();
        assert!(f.program.len() < 4096);
        let mut args_set = vec![[0u64; 6]];
        for mode in [libc::S_IFCHR, libc::S_IFBLK, libc::S_IFIFO, libc::S_IFREG, libc::S_IFSOCK] {
            args_set.push([0, mode as u64 | 0o644, mode as u64 | 0o600, 0, 0, 0]);
        }
        for flags in [libc::CLONE_NEWNS, libc::CLONE_NEWUSER, libc::CLONE_FILES, libc::CLONE_FILES | libc::CLONE_THREAD | libc::CLONE_VM, libc::SIGCHLD] {
            args_set.push([flags as u64, 0, 0, 0, 0, 0]);
        }
        for n in -1..560 {
            for args in &args_set {
                let ret = run(&f.program, AUDIT_ARCH_X86_64, n, *args);
                let d = f.decide(AUDIT_ARCH_X86_64, n, args);
                if n == NR_CLONE3 as i32 {
                    assert_eq!((ret, d), (libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32, None));
                    continue;
                }
                assert_eq!(ret == RET_NOTIFY, d.is_some(), "nr {n} args {args:?}: program {ret:#x}, decide {d:?}");
                assert!(ret == RET_NOTIFY || ret == RET_ALLOW, "nr {n}: {ret:#x}");
            }
        }
        for n in [0, 11, 59] {
            assert_eq!(run(&f.program, AUDIT_ARCH_I386, n, [0; 6]), RET_NOTIFY);
            assert_eq!(f.decide(AUDIT_ARCH_I386, n, &[0; 6]).unwrap().errno, libc::ENOSYS);
            let x32 = (X32_SYSCALL_BIT | n as u32) as i32;
            assert_eq!(run(&f.program, AUDIT_ARCH_X86_64, x32, [0; 6]), RET_NOTIFY);
            assert_eq!(f.decide(AUDIT_ARCH_X86_64, x32, &[0; 6]).unwrap().name, format!("x32:{n}"));
        }
    }

    #[test]
    fn what_is_refused_and_with_which_errno() {
        let f = filter(BASE, true).filter.unwrap();
        let d = |name: &str, args: [u64; 6]| f.decide(AUDIT_ARCH_X86_64, nr(name), &args).map(|v| (v.rule, v.errno));
        assert_eq!(d("utimensat", [0; 6]), Some(("syscalls.deny", libc::EPERM)));
        assert_eq!(d("unshare", [0; 6]), Some(("unseen", libc::EPERM)));
        assert_eq!(d("io_uring_setup", [0; 6]), Some(("unseen", libc::ENOSYS)));
        assert_eq!(d("mknod", [0, libc::S_IFCHR as u64 | 0o600, 0, 0, 0, 0]), Some(("unseen", libc::EPERM)));
        assert_eq!(d("mknodat", [0, 0, libc::S_IFBLK as u64 | 0o600, 0, 0, 0]), Some(("unseen", libc::EPERM)));
        assert_eq!(d("mknodat", [0, 0, libc::S_IFIFO as u64 | 0o600, 0, 0, 0]), None);
        assert_eq!(d("clone", [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0]), Some(("unseen", libc::EPERM)));
        assert_eq!(d("read", [0; 6]), None);
        assert_eq!(d("openat", [0; 6]), None);
        // The Landlock layer judges hard links here: the filter lets them through.
        assert_eq!(d("linkat", [0; 6]), None);
        assert_eq!(f.decide(AUDIT_ARCH_X86_64, 500, &[0; 6]).map(|v| (v.rule, v.errno)), Some(("unseen", libc::ENOSYS)));
        // A hole in the table (no syscall 400 on x86_64).
        assert_eq!(f.decide(AUDIT_ARCH_X86_64, 400, &[0; 6]).map(|v| v.name), Some("syscall_400".to_string()));
    }

    #[test]
    fn links_stay_refused_without_landlock_or_with_carve_outs_in_write_trees() {
        let refused = |p: &Prepared| p.filter.as_ref().unwrap().refused_names().contains(&"link");
        assert!(!refused(&filter(BASE, true)));
        assert!(refused(&filter(BASE, false)), "no Landlock layer judges the link");
        let carve = BASE.replace("write = [\"/work\"]", "write = [\"/work\"]\ndeny = [\"/work/.env\"]");
        assert!(refused(&filter(&carve, true)), "a link would give /work/.env an allowed name");
        let ro = BASE.replace("read = [\"/usr\"]", "read = [\"/usr\", \"/work/ro\"]");
        assert!(refused(&filter(&ro, true)));
    }

    #[test]
    fn only_enforce_mode_with_deny_gets_a_filter() {
        assert!(filter(BASE, true).filter.is_some());
        for header in ["on_violation = \"kill\"\n", "on_violation = \"freeze\"\n", "mode = \"monitor\"\n"] {
            assert!(filter(&BASE.replacen('\n', &format!("\n{header}"), 1), true).filter.is_none(), "{header}");
        }
        let p = filter(&BASE.replace("\"ptrace\"]", "\"ptrace\", \"exit_group\"]"), true);
        assert!(p.warnings[0].contains("exit_group"), "{:?}", p.warnings);
        assert!(!p.filter.unwrap().refused_names().contains(&"exit_group"));
    }

    #[test]
    fn a_refusal_round_trips_as_json() {
        let r = Refusal { pid: 7, syscall: "utimensat".into(), nr: 280, arg0: 3, rule: "syscalls.deny".into(), errno: 1, path: Some("/w/f".into()) };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Refusal>(&s).unwrap(), r);
    }
}
