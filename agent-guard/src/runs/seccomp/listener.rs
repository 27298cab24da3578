//! The listener of a run's seccomp filter: the child installs the filter and hands its
//! listener over a socketpair to `agent-guard run`, whose threads answer each notification
//! with its errno and report the refusal (see the module above).
use std::{
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

use super::{policy, Filter, Verdict};

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
    /// `syscalls.deny`, `unseen` or `network.families`.
    pub rule: agent_guard_common::Rule,
    /// The errno the process got.
    pub errno: i32,
    /// For a path syscall, the path it named (made absolute with the process's working
    /// directory or directory descriptor; the descriptor's path when the path is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A refused socket(2) or socketpair(2): its family, type and protocol, as the kernel's
    /// `int`s (the low 32 bits of the registers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<[u32; 3]>,
    /// The caller as /proc showed it while it waited for the answer (it may be gone by the
    /// time the daemon looks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Caller>,
}

/// What /proc says of the thread that made a refused syscall.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caller {
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default)]
    pub argv: Vec<String>,
}

impl Caller {
    /// Thread `pid` from /proc, or None once it is gone.
    pub fn of(pid: u32) -> Option<Caller> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let mut c = Caller::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            // Uid and Gid list real, effective, saved and filesystem ids: the real one.
            let first = || value.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match key {
                "Name" => c.comm = value.trim().to_string(),
                "Tgid" => c.tgid = first(),
                "PPid" => c.ppid = first(),
                "Uid" => c.uid = first(),
                "Gid" => c.gid = first(),
                _ => {}
            }
        }
        c.exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        c.argv = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        Some(c)
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
/// notification with its errno, and a second one that reports the refusals (a slow daemon
/// delays answers only once [`REPORT_QUEUE`] refusals wait for it). Stopped by
/// [`Notifier::finish`] (or on drop) once the run's cgroup is empty.
pub struct Notifier {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Refusals answered but not yet reported.
const REPORT_QUEUE: usize = 256;

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
        // Bounded: a process refused in a tight loop waits for its answer while the daemon
        // catches up, instead of growing this queue (or losing events).
        let (tx, rx) = mpsc::sync_channel::<Refusal>(REPORT_QUEUE);
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

/// Waits until `fd` is ready (its poll events), or the stop flag is set (None).
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

fn serve(listener: &OwnedFd, filter: &Filter, stop: &AtomicBool, tx: &mpsc::SyncSender<Refusal>) {
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
            rule: agent_guard_common::Rule::Unseen,
            errno: libc::EPERM,
            name: policy::syscall_name(d.nr as u32).map_or_else(|| format!("syscall_{}", d.nr), str::to_string),
        });
        // The caller waits while we read its memory; a path read from a task that went away
        // (its id no longer valid) could be another process's.
        let path = path_of(req.pid, &verdict.name, &d.args);
        let process = Caller::of(req.pid);
        // SAFETY: reads the id only.
        let valid = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &req.id) } == 0;
        let resp = libc::seccomp_notif_resp { id: req.id, val: 0, error: -verdict.errno, flags: 0 };
        // SAFETY: a valid response; ENOENT (the caller was killed meanwhile) is harmless.
        unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
        if !valid {
            continue;
        }
        let socket = (verdict.rule == agent_guard_common::Rule::Families).then(|| [0, 1, 2].map(|i| d.args[i] as u32));
        let _ = tx.send(Refusal {
            pid: req.pid,
            syscall: verdict.name,
            nr: d.nr as u32,
            arg0: d.args[0],
            rule: verdict.rule,
            errno: verdict.errno,
            path,
            socket,
            process,
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
