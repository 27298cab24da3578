//! Hold for review (`on_violation = "freeze"`): the kernel stops the offending process with
//! SIGSTOP at the violation; the daemon freezes the whole run, records the evidence, and
//! waits for `agent-guard approve` or `deny` (or `hold_timeout`, which denies).
//!
//! This module has what does not need the daemon's state: the access a responder approves
//! (as the kernel's grant key) and the evidence a responder reads. Freezing and thawing the
//! run is `crate::respond`'s, as for `agent-guard freeze`.
use std::{os::unix::fs::MetadataExt, path::Path};

use agent_guard_common::{kind, GrantKey};

use std::collections::HashMap;

use crate::output::event::{Ancestor, Detail, Event};
use crate::runs::grant::Attempt;

/// The access in a `hold` event, or None when the event is not one a responder can answer.
/// `file_id`: the file as the kernel identified it (device, inode); without it the daemon
/// asks /proc, whose device number can differ from the kernel's (btrfs, overlayfs).
pub fn attempt(e: &Event, run_cgroup: u64, file_id: Option<[u8; 16]>) -> Option<Attempt> {
    let (pid, tgid) = (e.pid?, e.tgid?);
    let (kind_name, what, grant, happened) = match &e.detail {
        Detail::Open { path, access, result, flags, .. } => {
            let id = file_id.or_else(|| (*result >= 0).then(|| stat_id(&format!("/proc/{tgid}/fd/{result}"))).flatten());
            let grant = id.map(|id| GrantKey { run: run_cgroup, kind: kind::OPEN, port: open_access(*flags), id });
            ("open", format!("{path} ({access})"), grant, true)
        }
        Detail::Exec { path, .. } => {
            let grant = file_id.or_else(|| stat_id(&format!("/proc/{tgid}/exe"))).map(|id| GrantKey { run: run_cgroup, kind: kind::EXEC, port: 0, id });
            ("exec", path.clone(), grant, true)
        }
        Detail::Connect { addr, port, proto, .. } => {
            let grant = match (addr.parse::<std::net::IpAddr>(), protocol_number(proto)) {
                (Ok(ip), Some(p)) => Some(GrantKey { run: run_cgroup, kind: kind::CONNECT, port: *port as u32 | p << 16, id: mapped(ip) }),
                _ => None,
            };
            (if e.kind == "sendmsg" { "sendmsg" } else { "connect" }, format!("{proto} {addr}:{port}"), grant, false)
        }
        _ => return None,
    };
    Some(Attempt { kind: kind_name.to_string(), what, rule: e.rule.clone(), pid, tgid, comm: e.comm.clone(), grant, happened })
}

/// The access bits the kernel programs key an open's grant with (1 read, 2 write), from the
/// open flags as they judge them: O_CREAT and O_TRUNC are writes.
fn open_access(flags: u32) -> u32 {
    let acc = flags & libc::O_ACCMODE as u32;
    let write = acc != 0 || flags & (libc::O_CREAT | libc::O_TRUNC) as u32 != 0;
    let read = acc != libc::O_WRONLY as u32;
    read as u32 | (write as u32) << 1
}

/// The IP protocol number of an event's `proto`.
fn protocol_number(proto: &str) -> Option<u32> {
    Some(match proto {
        "tcp" => libc::IPPROTO_TCP as u32,
        "udp" => libc::IPPROTO_UDP as u32,
        "udplite" => libc::IPPROTO_UDPLITE as u32,
        "mptcp" => libc::IPPROTO_MPTCP as u32,
        _ => return None,
    })
}

/// IPv6 bytes, IPv4 as IPv4-mapped (as the kernel programs key addresses).
fn mapped(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// A file's identity as the kernel programs compute it: the kernel's dev_t (major << 20 |
/// minor) and the inode number, little-endian.
fn stat_id(path: &str) -> Option<[u8; 16]> {
    let m = std::fs::metadata(path).ok()?;
    let dev = m.dev();
    let kdev = (libc::major(dev) as u64) << 20 | libc::minor(dev) as u64;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&kdev.to_le_bytes());
    id[8..].copy_from_slice(&m.ino().to_le_bytes());
    Some(id)
}

/// A process's argv (from /proc; empty when it is gone).
pub fn argv(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| b.split(|c| *c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
        .unwrap_or_default()
}

/// What the daemon knows of a process of a run from its exec event.
#[derive(Debug, Clone)]
pub struct Proc {
    pub ppid: u32,
    pub exe: String,
    pub argv: Vec<String>,
}

/// (exe, argv, ppid) of a live process, from /proc.
fn from_proc(pid: u32) -> Option<(Option<String>, Vec<String>, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    let (_, tail) = stat.rsplit_once(')')?;
    let ppid = tail.split_whitespace().nth(1)?.parse().ok()?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string());
    Some((exe, argv(pid), ppid))
}

/// The process `tgid` (parent `ppid`) and its ancestors inside the run (`run_dir`), the
/// process first, up to the run's first process: from the exec events seen (`procs`), else
/// from /proc. A forked child that did not exec has its parent's exe and argv.
pub fn lineage(tgid: u32, ppid: u32, procs: &HashMap<u32, Proc>, mount: &Path, run_dir: &Path) -> Vec<Ancestor> {
    const DEPTH: usize = 16;
    let mut out = Vec::new();
    let (mut pid, mut parent) = (tgid, Some(ppid));
    for _ in 0..DEPTH {
        let (exe, argv, up) = match procs.get(&pid) {
            Some(p) => (Some(p.exe.clone()), p.argv.clone(), p.ppid),
            None => from_proc(pid).unwrap_or_default(),
        };
        out.push(Ancestor { pid, exe, argv });
        let next = parent.take().unwrap_or(up);
        let inside = next > 1 && (procs.contains_key(&next) || in_cgroup(next, mount, run_dir));
        if !inside {
            break;
        }
        pid = next;
    }
    out
}

/// Whether process `pid` is in `dir` or a cgroup below it.
pub fn in_cgroup(pid: u32, mount: &Path, dir: &Path) -> bool {
    crate::runs::respond::pid_cgroup(pid, mount).is_some_and(|c| c.starts_with(dir))
}

/// Sends `sig` to `pid` only if it is still inside the run's cgroup `dir`.
pub fn signal_in(pid: u32, sig: nix::sys::signal::Signal, mount: &Path, dir: &Path) -> bool {
    if !in_cgroup(pid, mount, dir) {
        return false;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_keyed_like_the_kernel_keys_them() {
        let v4 = mapped("10.1.2.3".parse().unwrap());
        assert_eq!(v4, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(mapped("::1".parse().unwrap())[15], 1);
    }

    #[test]
    fn open_access_is_judged_like_the_kernel_judges_it() {
        assert_eq!(open_access(libc::O_RDONLY as u32), 1);
        assert_eq!(open_access(libc::O_WRONLY as u32), 2);
        assert_eq!(open_access(libc::O_RDWR as u32), 3);
        assert_eq!(open_access((libc::O_RDONLY | libc::O_TRUNC) as u32), 3);
        assert_eq!(protocol_number("tcp"), Some(6));
        assert_eq!(protocol_number("raw"), None);
    }

    #[test]
    fn file_ids_use_the_kernel_dev_t() {
        let id = stat_id("/proc/self/exe").unwrap();
        let m = std::fs::metadata("/proc/self/exe").unwrap();
        assert_eq!(u64::from_le_bytes(id[8..].try_into().unwrap()), m.ino());
        let kdev = u64::from_le_bytes(id[..8].try_into().unwrap());
        assert_eq!(kdev >> 20, libc::major(m.dev()) as u64);
        assert_eq!(kdev & 0xfffff, libc::minor(m.dev()) as u64);
    }
}
