//! agbench: micro-operations in a tight loop with plain syscalls, for `cargo xtask bench`.
//!
//!   agbench [--quick] [--file PATH]
//!   agbench --flood SECS [--file PATH]    (opens for SECS seconds; prints the count)
//!
//! Prints one JSON object on stdout: ns per operation for
//! `open_close` (open(2)+close(2) of an existing file, read-only),
//! `connect` (TCP connect to a loopback listener of this process, accept on the same thread,
//! close both, the client with an RST so no TIME_WAIT piles up: one thread, so no cross-CPU
//! wake-up makes the number depend on where the scheduler puts an accepting thread),
//! `fork_exec` (fork, execv /bin/true, waitpid) and
//! `getpid` (the raw syscall: glibc's caching would hide it).
use std::{
    ffi::CString,
    io::Write,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    time::Instant,
};

fn die(msg: &str) -> ! {
    eprintln!("agbench: {msg}: {}", std::io::Error::last_os_error());
    std::process::exit(1);
}

/// Runs `op` `n` times after `n / 10` warm-up calls; ns per call.
fn measure(n: u64, mut op: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        op();
    }
    let t = Instant::now();
    for _ in 0..n {
        op();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn open_close(path: &CString) {
    // SAFETY: a NUL-terminated path; the fd is ours to close.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            die("open");
        }
        libc::close(fd);
    }
}

fn connect_close(addr: &libc::sockaddr_in, listener: i32) {
    // SAFETY: plain socket calls on sockets we own; `addr` is a valid sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            die("socket");
        }
        let r = libc::connect(
            fd,
            (addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if r != 0 {
            die("connect");
        }
        // On loopback the handshake is complete when connect returns: the accept is immediate.
        let peer = libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        );
        if peer < 0 {
            die("accept");
        }
        // Close with an RST: no TIME_WAIT, so the ephemeral ports never run out.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::close(fd);
        libc::close(peer);
    }
}

fn fork_exec(prog: &CString, argv: &[*const libc::c_char; 2]) {
    // SAFETY: the child only calls execv and _exit (async-signal-safe) on data prepared before
    // the fork; the parent reaps its own child.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            die("fork");
        }
        if pid == 0 {
            libc::execv(prog.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
        let mut status = 0;
        if libc::waitpid(pid, &mut status, 0) != pid || status != 0 {
            eprintln!("agbench: /bin/true exited with wait status {status}");
            std::process::exit(1);
        }
    }
}

fn getpid() {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::syscall(libc::SYS_getpid) };
}

fn main() {
    let mut quick = false;
    let mut file = None;
    let mut flood: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--file" => file = args.next(),
            "--flood" => flood = args.next().and_then(|s| s.parse().ok()),
            _ => {
                eprintln!("usage: agbench [--quick] [--file PATH] | --flood SECS [--file PATH]");
                std::process::exit(2);
            }
        }
    }
    let scale = if quick { 10 } else { 1 };
    let exe = std::env::current_exe().unwrap_or_else(|_| die("current_exe"));
    let path = CString::new(file.unwrap_or_else(|| exe.display().to_string())).unwrap();
    if let Some(secs) = flood {
        // Opens as fast as it can for `secs` seconds; prints how many.
        let end = Instant::now() + std::time::Duration::from_secs(secs);
        let mut n = 0u64;
        while Instant::now() < end {
            for _ in 0..1000 {
                open_close(&path);
            }
            n += 1000;
        }
        println!("{n}");
        return;
    }

    // Our own listener, accepted from on the measuring thread.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|_| die("bind"));
    let SocketAddr::V4(v4) = listener.local_addr().unwrap() else {
        unreachable!("bound to IPv4")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let prog = CString::new("/bin/true").unwrap();
    let argv = [prog.as_ptr(), std::ptr::null()];

    let r_open = measure(200_000 / scale, || open_close(&path));
    let r_connect = measure(20_000 / scale, || connect_close(&sin, listener.as_raw_fd()));
    let r_fork = measure(1_000 / scale, || fork_exec(&prog, &argv));
    let r_getpid = measure(2_000_000 / scale, getpid);
    let out = format!(
        "{{\"open_close\":{r_open:.1},\"connect\":{r_connect:.1},\"fork_exec\":{r_fork:.1},\"getpid\":{r_getpid:.1}}}\n"
    );
    std::io::stdout().write_all(out.as_bytes()).unwrap();
}
