//! systemd's service notification protocol (sd_notify(3)), for `Type=notify` units: READY=1
//! once the daemon serves, WATCHDOG=1 at half of `WatchdogSec=`, STOPPING=1 on shutdown.
//!
//! A few lines over a datagram socket rather than libsystemd: the protocol is one datagram of
//! `KEY=VALUE` lines to the socket named by NOTIFY_SOCKET (a path, or `@name` for the
//! abstract namespace). Without NOTIFY_SOCKET (not started by systemd, or by a unit of
//! another type) every call is a no-op. Failing to notify is logged, never fatal: a daemon
//! that enforces policies must not stop because its supervisor went away.
use std::{
    ffi::OsStr,
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

use tracing::{info, warn};

/// Where to send notifications, from the environment systemd gives a service.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// `socket` as NOTIFY_SOCKET gives it; `watchdog_usec` and `watchdog_pid` as the
    /// variables of those names (the watchdog is ours only when WATCHDOG_PID is unset or is
    /// `pid`, as sd_watchdog_enabled(3) says).
    pub fn new(socket: Option<&OsStr>, watchdog_usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Self {
        let target = socket.filter(|s| !s.is_empty()).and_then(|s| match connect(s) {
            Ok(t) => Some(t),
            Err(e) => {
                warn!("NOTIFY_SOCKET {}: {e}; systemd will not be told that the daemon is ready", s.to_string_lossy());
                None
            }
        });
        let ours = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().is_ok_and(|p| p == pid));
        let watchdog = match watchdog_usec.map(|u| u.trim().parse::<u64>()) {
            Some(Ok(usec)) if usec > 0 && ours && target.is_some() => Some(Duration::from_micros(usec)),
            Some(Err(_)) => {
                warn!("WATCHDOG_USEC {:?} is not a number of microseconds: no watchdog pings", watchdog_usec.unwrap_or(""));
                None
            }
            _ => None,
        };
        Self { target, watchdog }
    }

    /// Whether there is a supervisor to notify.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send WATCHDOG=1: half the supervisor's timeout, as systemd recommends.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|t| t / 2)
    }

    /// Sends one notification (`KEY=VALUE` lines). A no-op without NOTIFY_SOCKET.
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                warn!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
            }
        }
    }
}

/// An unbound datagram socket and the address of NOTIFY_SOCKET.
fn connect(socket: &OsStr) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None if bytes.starts_with(b"/") => SocketAddr::from_pathname(socket)?,
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither an absolute path nor an @abstract name",
            ))
        }
    };
    Ok((UnixDatagram::unbound()?, addr))
}

/// Tells the supervisor the daemon is ready, and keeps its watchdog fed from a task of the
/// daemon's runtime (pings stop when the runtime stops making progress). Call from inside the
/// runtime once the daemon serves. Returns the notifier for [`stopping`].
pub fn ready(status: &str) -> Notifier {
    let n = Notifier::from_env();
    if !n.enabled() {
        return n;
    }
    n.notify(&format!("READY=1\nSTATUS={status}"));
    info!("told systemd the daemon is ready");
    if let Some(every) = n.watchdog_every() {
        info!("watchdog: pinging systemd every {} ms", every.as_millis());
        let pinger = Notifier::from_env();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                pinger.notify("WATCHDOG=1");
            }
        });
    }
    n
}

/// Tells the supervisor the daemon is shutting down (so a slow cleanup is not mistaken for a
/// hang).
pub fn stopping(n: &Notifier) {
    n.notify("STOPPING=1\nSTATUS=stopping");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_socket_and_an_abstract_one() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Some(path.as_os_str()), None, None, 1);
        assert!(n.enabled());
        n.notify("READY=1");
        assert_eq!(recv(&server), "READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("agent-guard-notify-test-{}", std::process::id());
        let server = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let n = Notifier::new(Some(OsStr::new(&format!("@{name}"))), None, None, 1);
        n.notify("STOPPING=1");
        assert_eq!(recv(&server), "STOPPING=1");
    }

    #[test]
    fn without_notify_socket_nothing_happens() {
        let n = Notifier::new(None, Some("1000000"), None, 1);
        assert!(!n.enabled());
        assert_eq!(n.watchdog_every(), None);
        n.notify("READY=1"); // no socket, no error
        assert!(!Notifier::new(Some(OsStr::new("")), None, None, 1).enabled());
        assert!(!Notifier::new(Some(OsStr::new("relative.sock")), None, None, 1).enabled());
    }

    #[test]
    fn watchdog_is_half_the_timeout_and_only_for_the_named_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("n.sock");
        let _server = UnixDatagram::bind(&path).unwrap();
        let s = Some(path.as_os_str());
        assert_eq!(Notifier::new(s, Some("2000000"), None, 7).watchdog_every(), Some(Duration::from_secs(1)));
        assert_eq!(Notifier::new(s, Some("2000000"), Some("7"), 7).watchdog_every(), Some(Duration::from_secs(1)));
        assert_eq!(Notifier::new(s, Some("2000000"), Some("8"), 7).watchdog_every(), None);
        assert_eq!(Notifier::new(s, Some("0"), None, 7).watchdog_every(), None);
        assert_eq!(Notifier::new(s, Some("soon"), None, 7).watchdog_every(), None);
        assert_eq!(Notifier::new(s, None, None, 7).watchdog_every(), None);
    }
}
