//! Hold for review (`on_violation = "freeze"`): the kernel stops the offending process with
//! SIGSTOP at the violation; the daemon freezes the whole run, records the evidence, and
//! waits for `agent-guard approve` or `deny` (or `hold_timeout`, which denies).
//!
//! This module has what does not need the daemon's state: the access a responder approves
//! (as the kernel's grant key) and the evidence a responder reads. Freezing and thawing the
//! run is `crate::respond`'s, as for `agent-guard freeze`.
use std::{os::unix::fs::MetadataExt, path::Path};

use agent_guard_common::{GrantKey, Kind};

use std::collections::HashMap;

use crate::output::event::{Ancestor, Detail, Event, Target};
use crate::runs::grant::Attempt;

/// The access in a `hold` event, or None when the event is not one a responder can answer.
/// The grant key is built from the kernel record's facts (`Event::facts`); a file the kernel
/// did not identify is looked up in /proc, whose device number can differ from the kernel's
/// (btrfs, overlayfs).
pub fn attempt(e: &Event) -> Option<Attempt> {
    let (pid, tgid) = (e.pid?, e.tgid?);
    let run = e.facts.run_cgroup;
    let (what, grant, happened) = match (&e.detail, e.facts.target) {
        (Detail::Open { path, access, result, .. }, Target::File { id, access: bits }) => {
            let id = id.or_else(|| (*result >= 0).then(|| stat_id(&format!("/proc/{tgid}/fd/{result}"))).flatten());
            let grant = id.map(|id| GrantKey { run, kind: Kind::Open.as_raw(), port: bits, id });
            (format!("{path} ({access})"), grant, true)
        }
        (Detail::Exec { path, .. }, Target::File { id, .. }) => {
            let grant = id.or_else(|| stat_id(&format!("/proc/{tgid}/exe"))).map(|id| GrantKey { run, kind: Kind::Exec.as_raw(), port: 0, id });
            (path.clone(), grant, true)
        }
        (Detail::Connect { addr, port, proto, .. }, Target::Inet { ip, port: p, protocol }) => {
            // UDP sends are approved with the connect key.
            let grant = protocol.map(|proto| GrantKey {
                run,
                kind: Kind::Connect.as_raw(),
                port: p as u32 | proto << 16,
                id: Target::key_addr(ip),
            });
            (format!("{proto} {addr}:{port}"), grant, false)
        }
        // A name held in the forwarder (name rules, `freeze`): the forwarder learns the answer
        // itself (`Dns::answered`); no kernel grant.
        (Detail::Dns { query, .. }, _) => (query.clone(), None, false),
        (Detail::Limit { limit, count, max, window_s, .. }, _) => {
            let window = window_s.map_or(String::new(), |w| format!(" in a {w} s window"));
            (format!("limits.{limit}: {count} over the budget of {max}{window}"), None, false)
        }
        _ => return None,
    };
    // A tripwire is never approved for later: each decoy access holds the run again.
    let grant = grant.filter(|_| e.verdict != agent_guard_common::Verdict::Decoy);
    Some(Attempt { kind: e.kind, what, rule: e.rule, pid, tgid, comm: e.comm.clone(), grant, happened })
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
        let v4 = Target::key_addr("10.1.2.3".parse().unwrap());
        assert_eq!(v4, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(Target::key_addr("::1".parse().unwrap())[15], 1);
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
