//! A small program the enforcement tests run inside runs: each subcommand performs one
//! operation with plain syscalls and prints what the kernel answered, so a test can tell
//! EPERM from SIGKILL from success.
//!
//! Output: `ok ...` on success (exit 0) or `err ERRNO` (exit 1). A process the kernel kills
//! prints nothing after the operation. `agprobe and-go-on OP ARGS...` prints OP's line, then
//! `went on`, and exits 0 either way: the process lived through OP's answer.
use std::{
    ffi::CString,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::FromRawFd,
    process::ExitCode,
};

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".to_string(),
        Some(libc::EACCES) => "EACCES".to_string(),
        Some(libc::ENOENT) => "ENOENT".to_string(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".to_string(),
        Some(libc::ENOSYS) => "ENOSYS".to_string(),
        Some(libc::EAGAIN) => "EAGAIN".to_string(),
        Some(n) => format!("errno{n}"),
        None => e.to_string(),
    }
}

fn fail(e: std::io::Error) -> ExitCode {
    let name = errno_name(&e);
    println!("err {name}");
    ExitCode::from(1)
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn open(dirfd: i32, path: &str, flags: i32) -> Result<i32, std::io::Error> {
    // SAFETY: valid C string; the mode is used only with O_CREAT.
    let fd = unsafe { libc::openat(dirfd, c(path).as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 { Err(errno()) } else { Ok(fd) }
}

fn read_fd(fd: i32) -> String {
    // SAFETY: we own fd.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let go_on = args.first().is_some_and(|a| a == "and-go-on");
    if go_on {
        args.remove(0);
    }
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let r: Result<String, std::io::Error> = (|| match a(0) {
        "read" => open(libc::AT_FDCWD, a(1), libc::O_RDONLY).map(|fd| format!("ok {}", read_fd(fd).trim_end())),
        // chdir DIR, then read a relative path.
        "read-rel" => {
            std::env::set_current_dir(a(1))?;
            open(libc::AT_FDCWD, a(2), libc::O_RDONLY).map(|fd| format!("ok {}", read_fd(fd).trim_end()))
        }
        // Open DIR, then read a path relative to that descriptor.
        "read-at" => {
            let dir = open(libc::AT_FDCWD, a(1), libc::O_RDONLY | libc::O_DIRECTORY)?;
            open(dir, a(2), libc::O_RDONLY).map(|fd| format!("ok {}", read_fd(fd).trim_end()))
        }
        // O_PATH descriptor, then reopen it through /proc/self/fd.
        "read-procfd" => {
            let fd = open(libc::AT_FDCWD, a(1), libc::O_PATH)?;
            open(libc::AT_FDCWD, &format!("/proc/self/fd/{fd}"), libc::O_RDONLY)
                .map(|fd| format!("ok {}", read_fd(fd).trim_end()))
        }
        "read-openat2" => {
            // struct open_how { u64 flags; u64 mode; u64 resolve; }
            let how: [u64; 3] = [libc::O_RDONLY as u64, 0, 0];
            let p = c(a(1));
            // SAFETY: valid pointers for the duration of the call.
            let fd = unsafe { libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, p.as_ptr(), how.as_ptr(), 24usize) };
            if fd < 0 { Err(errno()) } else { Ok(format!("ok {}", read_fd(fd as i32).trim_end())) }
        }
        "write" => open(libc::AT_FDCWD, a(1), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC).map(|fd| {
            // SAFETY: we own fd.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            let _ = f.write_all(b"written\n");
            "ok".into()
        }),
        "connect" => {
            let addr: SocketAddr = a(1).parse().map_err(std::io::Error::other)?;
            TcpStream::connect(addr).map(|_| "ok connected".into())
        }
        // Connect, retrying after a refusal: N attempts MS apart, each result printed.
        "connect-retry" => {
            let addr: SocketAddr = a(1).parse().map_err(std::io::Error::other)?;
            let n: usize = a(2).parse().unwrap_or(10);
            let pause = std::time::Duration::from_millis(a(3).parse().unwrap_or(100));
            let mut out = std::io::stdout().lock();
            for i in 0..n {
                match TcpStream::connect(addr) {
                    Ok(_) => return Ok(format!("ok connected on attempt {i}")),
                    Err(e) => {
                        let _ = writeln!(out, "attempt {i}: {}", if e.raw_os_error() == Some(libc::EPERM) { "EPERM".into() } else { e.to_string() });
                        let _ = out.flush();
                    }
                }
                std::thread::sleep(pause);
            }
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        }
        // N connects to ADDR one after the other (MS apart, default 0), each result printed
        // ("connect I: ok|ERR").
        "connect-n" => {
            let addr: SocketAddr = a(1).parse().map_err(std::io::Error::other)?;
            let n: usize = a(2).parse().unwrap_or(1);
            let pause = std::time::Duration::from_millis(a(3).parse().unwrap_or(0));
            let mut out = std::io::stdout().lock();
            for i in 1..=n {
                if i > 1 {
                    std::thread::sleep(pause);
                }
                let r = match TcpStream::connect(addr) {
                    Ok(_) => "ok".to_string(),
                    Err(e) => errno_name(&e),
                };
                let _ = writeln!(out, "connect {i}: {r}");
                let _ = out.flush();
            }
            Ok("ok done".into())
        }
        // Opens and reads PATH N times; says how many opens succeeded.
        "read-n" => {
            let n: usize = a(2).parse().unwrap_or(1);
            let ok = (0..n).filter(|_| open(libc::AT_FDCWD, a(1), libc::O_RDONLY).map(read_fd).is_ok()).count();
            Ok(format!("ok {ok} of {n}"))
        }
        // Runs PATH (no arguments) N times, one after the other.
        "spawn-n" => {
            let n: usize = a(2).parse().unwrap_or(1);
            for _ in 0..n {
                std::process::Command::new(a(1)).status()?;
            }
            Ok(format!("ok spawned {n}"))
        }
        // One connect to each ADDR; each result printed.
        "connect-all" => {
            let mut out = std::io::stdout().lock();
            for (i, addr) in args[1..].iter().enumerate() {
                let addr: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
                let r = TcpStream::connect(addr).map_or_else(|e| errno_name(&e), |_| "ok".into());
                let _ = writeln!(out, "connect {}: {r}", i + 1);
            }
            Ok("ok done".into())
        }
        // Forks up to N children that wait; says how many it made and why it stopped.
        "fork-n" => {
            let n: usize = a(1).parse().unwrap_or(1);
            let mut kids = Vec::new();
            let mut why = "all".to_string();
            for _ in 0..n {
                // SAFETY: the child only sleeps and exits (async-signal-safe calls).
                match unsafe { libc::fork() } {
                    0 => unsafe {
                        libc::sleep(30);
                        libc::_exit(0)
                    },
                    -1 => {
                        why = errno_name(&std::io::Error::last_os_error());
                        break;
                    }
                    pid => kids.push(pid),
                }
            }
            for k in &kids {
                // SAFETY: our own children.
                unsafe {
                    libc::kill(*k, libc::SIGKILL);
                    libc::waitpid(*k, std::ptr::null_mut(), 0);
                }
            }
            Ok(format!("ok forked {} then {why}", kids.len()))
        }
        // connect(2) on descriptor FD (a socket this process inherited) to ADDR (IPv4).
        "connect-fd" => {
            let fd: i32 = a(1).parse().map_err(std::io::Error::other)?;
            let addr: std::net::SocketAddrV4 = a(2).parse().map_err(std::io::Error::other)?;
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: a valid sockaddr_in of the given length.
            let r = unsafe {
                libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of_val(&sa) as libc::socklen_t)
            };
            if r < 0 { Err(errno()) } else { Ok("ok connected".into()) }
        }
        "udp" => {
            let addr: SocketAddr = a(1).parse().map_err(std::io::Error::other)?;
            let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let s = UdpSocket::bind(bind)?;
            s.send_to(b"ping", addr).map(|n| format!("ok sent {n}"))
        }
        // Sends N datagrams to ADDR as fast as it can, whatever each send returns.
        "udp-flood" => {
            let addr: SocketAddr = a(1).parse().map_err(std::io::Error::other)?;
            let s = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            let n: u64 = a(2).parse().unwrap_or(1000);
            let refused = (0..n).filter(|_| s.send_to(b"x", addr).is_err()).count();
            Ok(format!("ok {refused} of {n} refused"))
        }
        "raw" => {
            // SAFETY: plain socket(2).
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            if fd < 0 { Err(errno()) } else { Ok("ok raw".into()) }
        }
        "ptrace" => {
            // SAFETY: PTRACE_TRACEME has no pointer arguments.
            let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            if r < 0 { Err(errno()) } else { Ok("ok traced".into()) }
        }
        "io_uring" => {
            let mut params = [0u8; 120];
            // SAFETY: params is a zeroed io_uring_params-sized buffer.
            let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
            if fd < 0 { Err(errno()) } else { Ok("ok io_uring".into()) }
        }
        "link" => {
            // SAFETY: valid C strings.
            let r = unsafe { libc::link(c(a(1)).as_ptr(), c(a(2)).as_ptr()) };
            if r < 0 { Err(errno()) } else { Ok("ok linked".into()) }
        }
        // Replaces this process with PATH (execve); only returns on failure.
        "execve" => {
            let p = c(a(1));
            let argv = [p.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated argv and envp arrays of valid C strings.
            unsafe { libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            Err(errno())
        }
        // execve(NAME) from DIR: a relative path. A failure is answered after a pause, so the
        // daemon finds the process (and its working directory) still there.
        "execve-rel" => {
            std::env::set_current_dir(a(1))?;
            let p = c(a(2));
            let argv = [p.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated argv and envp arrays of valid C strings.
            unsafe { libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            let e = errno();
            std::thread::sleep(std::time::Duration::from_millis(300));
            Err(e)
        }
        // Copies this program into a memfd and runs that (fexecve: no path in the file tree).
        "exec-memfd" => {
            let me = std::fs::read("/proc/self/exe")?;
            // SAFETY: valid C string; a new descriptor is checked below.
            let fd = unsafe { libc::memfd_create(c("agprobe").as_ptr(), 0) };
            if fd < 0 {
                return Err(errno());
            }
            // SAFETY: we own fd; ManuallyDrop keeps it open for fexecve.
            let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
            f.write_all(&me)?;
            let arg0 = c("agprobe");
            let arg1 = c("sleep");
            let arg2 = c("0");
            let argv = [arg0.as_ptr(), arg1.as_ptr(), arg2.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: as for exec.
            unsafe { libc::fexecve(fd, argv.as_ptr(), envp.as_ptr()) };
            Err(errno())
        }
        "rename" => std::fs::rename(a(1), a(2)).map(|_| "ok renamed".into()),
        "unlink" => std::fs::remove_file(a(1)).map(|_| "ok unlinked".into()),
        "mkdir" => std::fs::create_dir(a(1)).map(|_| "ok made".into()),
        "truncate" => {
            // SAFETY: valid C string.
            let r = unsafe { libc::truncate(c(a(1)).as_ptr(), 0) };
            if r < 0 { Err(errno()) } else { Ok("ok truncated".into()) }
        }
        // bpf(BPF_MAP_CREATE) of a one-entry array.
        "bpf" => {
            // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
            let mut attr = [0u32; 32];
            attr[..4].copy_from_slice(&[2, 4, 4, 1]); // BPF_MAP_TYPE_ARRAY
            // SAFETY: attr is a zeroed bpf_attr-sized buffer.
            let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
            if fd < 0 { Err(errno()) } else { Ok("ok bpf map".into()) }
        }
        // Mounts a tmpfs on DIR.
        "mount" => {
            let t = c("tmpfs");
            // SAFETY: valid C strings.
            let r = unsafe { libc::mount(t.as_ptr(), c(a(1)).as_ptr(), t.as_ptr(), 0, std::ptr::null()) };
            if r < 0 { Err(errno()) } else { Ok("ok mounted".into()) }
        }
        "unshare-mnt" => {
            // SAFETY: plain unshare(2).
            let r = unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUSER) };
            if r < 0 { Err(errno()) } else { Ok("ok unshared".into()) }
        }
        // Opens A then B, N times (pausing MS milliseconds between rounds), printing a line
        // per open: the reload-under-load loop.
        "loop" => {
            let n: usize = a(3).parse().unwrap_or(100);
            let pause = std::time::Duration::from_millis(a(4).parse().unwrap_or(0));
            let mut out = std::io::stdout().lock();
            for i in 0..n {
                for p in [a(1), a(2)] {
                    match open(libc::AT_FDCWD, p, libc::O_RDONLY) {
                        Ok(fd) => {
                            // SAFETY: we own fd.
                            unsafe { libc::close(fd) };
                            let _ = writeln!(out, "{i} ok {p}");
                        }
                        Err(e) => {
                            let _ = writeln!(out, "{i} err {p} {e}");
                        }
                    }
                    let _ = out.flush();
                }
                std::thread::sleep(pause);
            }
            Ok("ok done".into())
        }
        // Runs PATH ARGS... as a child (its output goes to ours) and says how it ended; an
        // exec the kernel refused is "err ERRNO" and this process goes on.
        "exec" => {
            use std::os::unix::process::ExitStatusExt;
            let st = std::process::Command::new(a(1)).args(args.iter().skip(2)).status()?;
            Ok(match st.signal() {
                Some(sig) => format!("ok signal {sig}"),
                None => format!("ok exit {}", st.code().unwrap_or(-1)),
            })
        }
        // Reads PATH (expecting a refusal), then reads AGAIN: the process lives on after the
        // first open fails.
        "read-then" => {
            let first = match open(libc::AT_FDCWD, a(1), libc::O_RDONLY) {
                Ok(fd) => format!("ok {}", read_fd(fd).trim_end()),
                Err(e) => format!("err {}", if e.raw_os_error() == Some(libc::EACCES) { "EACCES".into() } else { e.to_string() }),
            };
            println!("first {first}");
            open(libc::AT_FDCWD, a(2), libc::O_RDONLY).map(|fd| format!("ok {}", read_fd(fd).trim_end()))
        }
        // kill(PID, SIG).
        "kill" => {
            let (pid, sig): (i32, i32) = (a(1).parse().unwrap_or(0), a(2).parse().unwrap_or(0));
            // SAFETY: plain kill(2).
            if unsafe { libc::kill(pid, sig) } < 0 { Err(errno()) } else { Ok("ok signalled".into()) }
        }
        // Connects to the abstract unix socket @NAME.
        "abstract" => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(a(1).as_bytes())?;
            std::os::unix::net::UnixStream::connect_addr(&addr).map(|_| "ok connected".into())
        }
        // Containment probes (tests/tests/containment.rs).
        // Drops to UID (and gid UID, no supplementary groups), then runs the probe ARGS...
        "as-user" => {
            let uid: u32 = a(1).parse().map_err(std::io::Error::other)?;
            // SAFETY: plain credential syscalls.
            if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 || unsafe { libc::setgid(uid) } != 0 || unsafe { libc::setuid(uid) } != 0 {
                return Err(errno());
            }
            use std::os::unix::process::CommandExt;
            Err(std::process::Command::new(std::env::current_exe()?).args(&args[2..]).exec())
        }
        // Connects to the unix socket PATH (or @NAME: abstract).
        "unix-connect" => {
            use std::os::linux::net::SocketAddrExt;
            let addr = match a(1).strip_prefix('@') {
                Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?,
                None => std::os::unix::net::SocketAddr::from_pathname(a(1))?,
            };
            std::os::unix::net::UnixStream::connect_addr(&addr).map(|_| "ok connected".into())
        }
        // Sends a datagram to the unix socket PATH (or @NAME) from an unbound socket.
        "unix-send" => {
            use std::os::linux::net::SocketAddrExt;
            let addr = match a(1).strip_prefix('@') {
                Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?,
                None => std::os::unix::net::SocketAddr::from_pathname(a(1))?,
            };
            let s = std::os::unix::net::UnixDatagram::unbound()?;
            s.send_to_addr(b"ping", &addr).map(|n| format!("ok sent {n}"))
        }
        // socket(FAMILY, TYPE, PROTOCOL) with raw numbers (decimal or 0x hex, up to 64 bits:
        // the high bits go into the register as they are).
        "socket" => {
            let num = |s: &str| -> u64 {
                s.strip_prefix("0x").map_or_else(|| s.parse().unwrap_or(0), |h| u64::from_str_radix(h, 16).unwrap_or(0))
            };
            // SAFETY: raw socket(2) with integer arguments.
            let fd = unsafe { libc::syscall(libc::SYS_socket, num(a(1)), num(a(2)), num(a(3))) };
            if fd < 0 { Err(errno()) } else { Ok(format!("ok socket {fd}")) }
        }
        // socketpair(FAMILY, TYPE, 0).
        "socketpair" => {
            let mut sv = [0i32; 2];
            let f: i32 = a(1).parse().unwrap_or(0);
            let t: i32 = a(2).parse().unwrap_or(1);
            // SAFETY: sv has room for two descriptors.
            let r = unsafe { libc::socketpair(f, t, 0, sv.as_mut_ptr()) };
            if r < 0 { Err(errno()) } else { Ok("ok socketpair".into()) }
        }
        // An RTM_GETLINK dump on a NETLINK_ROUTE socket: counts the links the kernel reports.
        "netlink-route" => netlink_getlink(),
        // bind(ADDR) then listen on a TCP socket: "ok listening PORT".
        "listen" => {
            let addr: SocketAddr = a(1).parse().map_err(std::io::Error::other)?;
            let l = std::net::TcpListener::bind(addr)?;
            Ok(format!("ok listening {}", l.local_addr()?.port()))
        }
        // listen(2) on a TCP socket that was never bound (the kernel picks an ephemeral port on
        // every address).
        "listen-unbound" => {
            // SAFETY: plain socket(2) and listen(2).
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd < 0 {
                return Err(errno());
            }
            // SAFETY: as above.
            if unsafe { libc::listen(fd, 1) } < 0 { Err(errno()) } else { Ok("ok listening".into()) }
        }
        // bind(ADDR) on a UDP socket (port 0: the kernel picks one).
        "bind-udp" => {
            let addr: SocketAddr = a(1).parse().map_err(std::io::Error::other)?;
            UdpSocket::bind(addr).and_then(|s| s.local_addr()).map(|l| format!("ok bound {l}"))
        }
        // utimensat(AT_FDCWD, PATH, {2000-01-01, 2000-01-01}, 0).
        "utimensat" => {
            let t = libc::timespec { tv_sec: 946_684_800, tv_nsec: 0 };
            let times = [t, t];
            // SAFETY: valid C string and two timespecs.
            let r = unsafe { libc::utimensat(libc::AT_FDCWD, c(a(1)).as_ptr(), times.as_ptr(), 0) };
            if r < 0 { Err(errno()) } else { Ok("ok touched".into()) }
        }
        // mknod PATH char|block|fifo (a device node as 1:3, /dev/null's numbers).
        "mknod" => {
            let kind = match a(2) {
                "char" => libc::S_IFCHR,
                "block" => libc::S_IFBLK,
                _ => libc::S_IFIFO,
            };
            // SAFETY: valid C string.
            let r = unsafe { libc::mknodat(libc::AT_FDCWD, c(a(1)).as_ptr(), kind | 0o600, libc::makedev(1, 3)) };
            if r < 0 { Err(errno()) } else { Ok("ok made".into()) }
        }
        // clone(2) with CLONE_NEWNS: a child in a new mount namespace, which exits at once.
        "clone-ns" => {
            // SAFETY: a fork-like clone (no CLONE_VM); the child only calls _exit.
            let pid = unsafe { libc::syscall(libc::SYS_clone, (libc::CLONE_NEWNS | libc::SIGCHLD) as u64, 0u64, 0u64, 0u64, 0u64) };
            if pid == 0 {
                // SAFETY: leaving the child at once.
                unsafe { libc::_exit(0) };
            }
            if pid < 0 {
                return Err(errno());
            }
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
            Ok("ok cloned".into())
        }
        // getpid through the 32-bit entry (int 0x80, i386 number 20).
        "int80-getpid" => {
            let mut ret: i64 = 20;
            // SAFETY: int 0x80 with eax = 20 (getpid) reads and writes no memory.
            unsafe { std::arch::asm!("int 0x80", inout("rax") ret, out("r8") _, out("r9") _, out("r10") _, out("r11") _) };
            if ret < 0 { Err(std::io::Error::from_raw_os_error(-ret as i32)) } else { Ok(format!("ok pid {ret}")) }
        }
        // getpid with the x32 syscall bit (0x40000000 | 39).
        "x32-getpid" => {
            // SAFETY: a syscall without pointer arguments.
            let r = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
            if r < 0 { Err(errno()) } else { Ok(format!("ok pid {r}")) }
        }
        // Writes "0" (itself) into DIR/cgroup.procs: leaving its cgroup for DIR.
        "cgroup-join" => {
            let fd = open(libc::AT_FDCWD, &format!("{}/cgroup.procs", a(1)), libc::O_WRONLY)?;
            // SAFETY: we own fd; a one-byte buffer.
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            let err = errno();
            // SAFETY: we own fd.
            unsafe { libc::close(fd) };
            if n != 1 { Err(err) } else { Ok("ok joined".into()) }
        }
        // Replaces itself with CMD ARG... (execv): a scenario whose command is not the probe.
        "exec-argv" => {
            let argv: Vec<CString> = args[1..].iter().map(|a| c(a)).collect();
            let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            // SAFETY: NUL-terminated strings and a NULL-terminated array that outlive the call.
            unsafe { libc::execv(ptrs[0], ptrs.as_ptr()) };
            Err(errno())
        }
        // On one connection to the task socket SOCK: starts task "hop" with no policy of its
        // own, joins it, ends it; then reads PATH (an attempt to leave a narrower task for the
        // run's wider rules).
        "task-hop" => {
            use std::io::{BufRead, Write};
            let c = std::os::unix::net::UnixStream::connect(a(1))?;
            let mut r = std::io::BufReader::new(c.try_clone()?);
            let mut w = c;
            let me = std::process::id();
            for req in [
                r#"{"v":2,"op":"task_start","id":"hop"}"#.to_string(),
                format!(r#"{{"v":2,"op":"task_join","task":"hop","pid":{me}}}"#),
                r#"{"v":2,"op":"task_end","task":"hop"}"#.to_string(),
            ] {
                writeln!(w, "{req}")?;
                let mut line = String::new();
                r.read_line(&mut line)?;
                eprintln!("{}", line.trim_end());
            }
            open(libc::AT_FDCWD, a(2), libc::O_RDONLY).map(|fd| format!("ok {}", read_fd(fd).trim_end()))
        }
        // One JSON line to the unix socket SOCK; prints the response line.
        "unix-request" => {
            use std::io::{BufRead, Write};
            let mut c = std::os::unix::net::UnixStream::connect(a(1))?;
            // A server may answer (a refusal) and close before reading: then the write fails
            // with EPIPE and the answer is still there to read.
            if let Err(e) = writeln!(c, "{}", a(2)) {
                if e.raw_os_error() != Some(libc::EPIPE) {
                    return Err(e);
                }
            }
            let mut line = String::new();
            std::io::BufReader::new(c).read_line(&mut line)?;
            Ok(format!("ok {}", line.trim_end()))
        }
        // Writes TEXT to descriptor FD (one it inherited), then sleeps SECS.
        "write-fd" => {
            let fd: i32 = a(1).parse().map_err(std::io::Error::other)?;
            // SAFETY: writing a buffer of the given length to a descriptor.
            let n = unsafe { libc::write(fd, a(2).as_ptr().cast(), a(2).len()) };
            if n < 0 {
                return Err(errno());
            }
            println!("ok wrote");
            std::thread::sleep(std::time::Duration::from_secs_f64(a(3).parse().unwrap_or(0.0)));
            Ok("ok slept".into())
        }
        // clone3(CLONE_INTO_CGROUP) with DIR: a child that starts in DIR and exits at once.
        "clone3-into" => {
            // O_PATH: the kernel takes any descriptor of the directory, and no open is judged.
            let dir = open(libc::AT_FDCWD, a(1), libc::O_PATH | libc::O_DIRECTORY)?;
            // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack,
            // stack_size, tls, set_tid, set_tid_size, cgroup (11 u64, CLONE_ARGS_SIZE_VER2).
            let mut args = [0u64; 11];
            args[0] = 0x2_0000_0000; // CLONE_INTO_CGROUP
            args[4] = libc::SIGCHLD as u64;
            args[10] = dir as u64;
            // SAFETY: a fork-like clone3 (no CLONE_VM, no stack): the child only calls _exit.
            let pid = unsafe { libc::syscall(libc::SYS_clone3, args.as_mut_ptr(), std::mem::size_of_val(&args)) };
            if pid == 0 {
                // SAFETY: leaving the child at once.
                unsafe { libc::_exit(0) };
            }
            if pid < 0 {
                return Err(errno());
            }
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
            Ok("ok cloned into".into())
        }
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs_f64(a(1).parse().unwrap_or(1.0)));
            Ok("ok slept".into())
        }
        // dns NAME PORT udp|tcp: an A query for NAME to 192.0.2.1:53 (a server that does not
        // exist: name rules send it to the run's forwarder), then a TCP connect to the first
        // address of the answer on PORT. "refused" for an answer REFUSED.
        "dns" => {
            let (name, port, tcp) = (a(1), a(2).parse::<u16>().unwrap_or(0), a(3) == "tcp");
            match dns_query(name, tcp)? {
                Err(rcode) => Ok(format!("refused rcode {rcode}")),
                Ok(ip) => TcpStream::connect((ip, port)).map(|_| format!("ok connected {ip}")),
            }
        }
        other => Err(std::io::Error::other(format!("unknown probe {other:?}"))),
    })();
    let code = match r {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    };
    if go_on {
        println!("went on");
        return ExitCode::SUCCESS;
    }
    code
}

/// An A query for `name` to 192.0.2.1:53 over UDP or TCP: the first address, or the rcode.
fn dns_query(name: &str, tcp: bool) -> Result<Result<std::net::Ipv4Addr, u8>, std::io::Error> {
    use std::io::Read;
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let server: SocketAddr = "192.0.2.1:53".parse().expect("address");
    let timeout = Some(std::time::Duration::from_secs(5));
    let r = if tcp {
        let mut s = TcpStream::connect(server)?;
        s.set_read_timeout(timeout)?;
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&q);
        s.write_all(&out)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut r)?;
        r
    } else {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(timeout)?;
        s.send_to(&q, server)?;
        let mut r = vec![0u8; 4096];
        let (n, from) = s.recv_from(&mut r)?;
        if from != server {
            return Err(std::io::Error::other(format!("reply from {from}, not {server}")));
        }
        r.truncate(n);
        r
    };
    if r.len() < 12 || r[3] & 15 != 0 {
        return Ok(Err(r.get(3).map_or(255, |b| b & 15)));
    }
    // Skip the question, then find the first A record of the answer section.
    let mut i = 12;
    while i < r.len() && r[i] != 0 {
        i += 1 + r[i] as usize;
    }
    i += 5;
    let answers = u16::from_be_bytes([r[6], r[7]]);
    for _ in 0..answers {
        if i >= r.len() {
            break;
        }
        // A name: a pointer (2 bytes) or labels.
        if r[i] & 0xc0 == 0xc0 {
            i += 2;
        } else {
            while i < r.len() && r[i] != 0 {
                i += 1 + r[i] as usize;
            }
            i += 1;
        }
        if i + 10 > r.len() {
            break;
        }
        let (ty, len) = (u16::from_be_bytes([r[i], r[i + 1]]), u16::from_be_bytes([r[i + 8], r[i + 9]]) as usize);
        i += 10;
        if ty == 1 && len == 4 && i + 4 <= r.len() {
            return Ok(Ok(std::net::Ipv4Addr::new(r[i], r[i + 1], r[i + 2], r[i + 3])));
        }
        i += len;
    }
    Err(std::io::Error::other("no A record in the answer"))
}

/// Sends RTM_GETLINK (dump) on a NETLINK_ROUTE socket and counts RTM_NEWLINK answers.
fn netlink_getlink() -> Result<String, std::io::Error> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(errno());
    }
    // nlmsghdr (16 bytes) + ifinfomsg (16 bytes).
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&(libc::RTM_GETLINK as u16).to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNSPEC as u8;
    // SAFETY: a valid buffer of the given length.
    if unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(errno());
    }
    let mut links = 0;
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: a valid buffer of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(errno());
        }
        let mut off = 0usize;
        while off + 16 <= n as usize {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
            if ty == libc::NLMSG_DONE as u16 {
                return Ok(format!("ok links {links}"));
            }
            if ty == libc::RTM_NEWLINK {
                links += 1;
            }
            if len < 16 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}
