//! Helpers of the reliability tests (tests/tests/{soak,diskfull}.rs and `cargo xtask soak`):
//! a small tmpfs mounted for the test, the daemon's metrics, its resident memory and open
//! descriptors, and the leftovers of finished runs (cgroups, state records, `ps` entries).
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::Daemon;

/// A tmpfs of `size` (e.g. "256k") mounted on a new directory inside `parent`; unmounted
/// (lazily, should something still hold a file there) and removed on drop.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(parent: &Path, size: &str) -> Tmpfs {
        let dir = parent.join("tmpfs");
        std::fs::create_dir_all(&dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "agent-guard-test", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "mount tmpfs on {}: {o:?}", dir.display());
        Tmpfs { dir }
    }

    /// Fills the filesystem with a file named `name` until a write fails with ENOSPC.
    pub fn fill(&self, name: &str) -> u64 {
        let mut f = std::fs::File::create(self.dir.join(name)).unwrap();
        let chunk = vec![b'x'; 4096];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.dir.display()),
            }
        }
        // Byte by byte: the last page too.
        while f.write(b"x").is_ok_and(|k| k == 1) {
            n += 1;
        }
        n
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Moves the daemon's events log to `log` (stops it, edits its config, starts it again).
pub fn move_events_log(d: &mut Daemon, log: &Path) {
    d.stop();
    let text = std::fs::read_to_string(&d.config).unwrap();
    let old = format!("events_log = \"{}\"", d.log.display());
    assert!(text.contains(&old), "{text}");
    std::fs::write(&d.config, text.replace(&old, &format!("events_log = \"{}\"", log.display()))).unwrap();
    d.log = log.to_path_buf();
    d.restart();
}

/// The address the daemon printed: `metrics on http://ADDR/metrics`.
pub fn metrics_addr(d: &Daemon) -> String {
    let err = d.stderr();
    err.lines()
        .rev()
        .find_map(|l| l.split("metrics on http://").nth(1)?.split("/metrics").next().map(str::to_string))
        .unwrap_or_else(|| panic!("the daemon did not say where its metrics are:\n{err}"))
}

/// GET /metrics: the exposition text.
pub fn scrape(d: &Daemon) -> String {
    let addr = metrics_addr(d);
    let mut c = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// The value of the sample written exactly `series` (e.g. `x_total{stage="sink"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The daemon's resident memory (VmRSS, KiB) and open descriptors.
pub fn rss_and_fds(pid: i32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

/// What is left of runs: cgroup directories below the managed root, files in state_dir/runs
/// (or state_dir), and the runs `ps --json` lists. Each empty when every run has ended.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub cgroups: Vec<String>,
    pub state_files: Vec<String>,
    pub ps: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.cgroups.is_empty() && self.state_files.is_empty() && self.ps.is_empty()
    }
}

fn files_below(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            files_below(&p, out);
        } else {
            out.push(p.display().to_string());
        }
    }
}

/// The leftovers of runs of daemon `d` (run records only: policy texts in state_dir stay).
pub fn leftovers(d: &Daemon) -> Leftovers {
    let mut l = Leftovers::default();
    for e in std::fs::read_dir(&d.cgroup_root).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            l.cgroups.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    let mut files = Vec::new();
    files_below(&d.dir.path().join("state"), &mut files);
    l.state_files = files.into_iter().filter(|f| f.contains("/runs/")).collect();
    let o = d.cli(&["ps", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    l.ps = runs.as_array().into_iter().flatten().filter_map(|r| r["id"].as_str().map(str::to_string)).collect();
    l
}
