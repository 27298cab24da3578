//! The run's command gets a session of its own (`setsid`), and a terminal of its own when
//! `agent-guard run` has one (a new pseudo-terminal whose bytes `run` passes through). So a
//! process of the run cannot push keystrokes into the launcher's terminal (TIOCSTI), signal the
//! launcher's process group, or die of the SIGHUP an orphaned process group gets while the run
//! is held.
use std::{
    io::{self, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicI32, Ordering},
    thread::JoinHandle,
    time::Duration,
};

use nix::{
    pty::{openpty, Winsize},
    sys::termios::{self, SetArg, Termios},
};

/// The pseudo-terminal's controller side while a run uses it (for the SIGWINCH handler).
static CONTROLLER: AtomicI32 = AtomicI32::new(-1);

/// What the command's terminal is: a new pseudo-terminal (stdin is a terminal), or none.
pub struct Session {
    pty: Option<Pty>,
}

struct Pty {
    controller: OwnedFd,
    /// The command's end; the child makes it its controlling terminal and stdio.
    terminal: OwnedFd,
    /// The launcher's terminal settings, restored when the run ends.
    saved: Termios,
}

/// The child's half, used between fork and exec (only async-signal-safe calls).
#[derive(Clone, Copy)]
pub struct ChildSession {
    terminal: RawFd,
}

fn window(fd: RawFd) -> Option<Winsize> {
    let mut ws = Winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize into `ws`.
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0).then_some(ws)
}

extern "C" fn resize(_sig: libc::c_int) {
    let controller = CONTROLLER.load(Ordering::Relaxed);
    if controller >= 0 {
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: ioctl is async-signal-safe; both fds are open while CONTROLLER is set.
        unsafe {
            if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
                libc::ioctl(controller, libc::TIOCSWINSZ, &ws);
            }
        }
    }
}

impl Session {
    /// A new pseudo-terminal if stdin is a terminal (with its size and settings), else none.
    pub fn prepare() -> io::Result<Session> {
        let stdin = io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else { return Ok(Session { pty: None }) };
        let pty = openpty(window(0).as_ref(), Some(&saved)).map_err(io::Error::from)?;
        for fd in [&pty.master, &pty.slave] {
            // SAFETY: F_SETFD on an fd we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(Session { pty: Some(Pty { controller: pty.master, terminal: pty.slave, saved }) })
    }

    pub fn child(&self) -> ChildSession {
        ChildSession { terminal: self.pty.as_ref().map_or(-1, |p| p.terminal.as_raw_fd()) }
    }

    /// After the spawn: the launcher's terminal goes raw and the bytes flow both ways until
    /// [`Running::finish`].
    pub fn start(self) -> Running {
        let Some(pty) = self.pty else { return Running { output: None, saved: None } };
        let Pty { controller, terminal, saved } = pty;
        drop(terminal); // the child has its copy
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(io::stdin(), SetArg::TCSANOW, &raw);
        CONTROLLER.store(controller.as_raw_fd(), Ordering::Relaxed);
        // SAFETY: the handler only calls ioctl.
        unsafe { libc::signal(libc::SIGWINCH, resize as *const () as libc::sighandler_t) };
        // Keystrokes to the command. The thread blocks in read(0) and ends with the process.
        let input = controller.try_clone().ok();
        std::thread::spawn(move || {
            let Some(input) = input else { return };
            // SAFETY: `input` is an fd we own; File takes it over.
            let mut to = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(input)) };
            let mut buf = [0u8; 4096];
            let mut stdin = io::stdin().lock();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        // The command's output, until its terminal is closed by every process of the run.
        let output = std::thread::spawn(move || {
            let mut from = std::fs::File::from(controller);
            let mut buf = [0u8; 4096];
            let mut out = io::stdout();
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break, // EIO once the last terminal fd is closed
                    Ok(n) => {
                        if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Running { output: Some(output), saved: Some(saved) }
    }
}

impl ChildSession {
    /// Between fork and exec: a new session; with a terminal, it becomes the controlling
    /// terminal and stdin, stdout and stderr.
    pub fn enter(self) -> io::Result<()> {
        // SAFETY: setsid, ioctl, dup2 and close are async-signal-safe.
        unsafe {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if self.terminal >= 0 {
                if libc::ioctl(self.terminal, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                for fd in 0..3 {
                    if libc::dup2(self.terminal, fd) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
        }
        Ok(())
    }
}

/// A session in use: its output thread and the launcher's terminal settings.
pub struct Running {
    output: Option<JoinHandle<()>>,
    saved: Option<Termios>,
}

impl Running {
    /// After the run's processes are gone: the last output is written and the launcher's
    /// terminal is as it was.
    pub fn finish(self) {
        if let Some(output) = self.output {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while !output.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        CONTROLLER.store(-1, Ordering::Relaxed);
        if let Some(saved) = self.saved {
            let _ = termios::tcsetattr(io::stdin(), SetArg::TCSADRAIN, &saved);
        }
    }
}
