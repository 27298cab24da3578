//! cgroup v2: finding the mount, the managed root, run cgroups, moving, killing, removing.
//! Everything here acts only on cgroups below the managed root that agent-guard created.
use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The cgroup2 mount point, from /proc/self/mountinfo (/sys/fs/cgroup on unified hosts,
/// /sys/fs/cgroup/unified on hybrid ones).
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    parse_cgroup2_mount(&info).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "no cgroup2 filesystem in /proc/self/mountinfo")
    })
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTS
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup id the kernel reports for a cgroup2 directory (its inode number).
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// Level of `dir` below the cgroup2 mount (the mount is level 0).
pub fn level(mount: &Path, dir: &Path) -> io::Result<u32> {
    let rel = dir.strip_prefix(mount).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not below {}", dir.display(), mount.display()))
    })?;
    Ok(rel.components().count() as u32)
}

/// Moves process `pid` (0: the caller) into cgroup `dir`.
pub fn move_into(dir: &Path, pid: u32) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// Whether any process lives in `dir` or below (cgroup.events `populated`).
pub fn populated(dir: &Path) -> io::Result<bool> {
    let events = std::fs::read_to_string(dir.join("cgroup.events"))?;
    Ok(events.lines().any(|l| l == "populated 1"))
}

/// Kills every process in `dir` and below (cgroup.kill, which also takes processes that fork
/// during the kill), waits until it is empty and removes it with its child cgroups.
pub fn kill_and_remove(dir: &Path, timeout: Duration) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    // Someone else (`agent-guard kill`) emptied and removed it meanwhile.
    let gone = |e: io::Error| if removed(&e) { Ok(false) } else { Err(e) };
    if populated(dir).or_else(gone)? {
        match std::fs::write(dir.join("cgroup.kill"), "1") {
            Err(e) if removed(&e) => return Ok(()),
            r => r?,
        }
        while populated(dir).or_else(gone)? {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{} did not empty", dir.display())));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    remove_tree(dir)
}

/// The cgroup is gone: ENOENT before the open, ENODEV when it was removed between the open
/// of one of its files and the read or write.
pub fn removed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

/// Removes an empty cgroup and its (empty) descendants, deepest first.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if removed(&e) => return Ok(()),
        r => r?,
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if removed(&e) => Ok(()),
        r => r,
    }
}

/// Finds the directory of cgroup `id` at or below `dir` (bounded depth).
pub fn find_by_id(dir: &Path, id: u64, depth: u32) -> Option<PathBuf> {
    if cgroup_id(dir).ok()? == id {
        return Some(dir.to_path_buf());
    }
    if depth == 0 {
        return None;
    }
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let p = e.path();
        (e.file_type().ok()?.is_dir()).then(|| find_by_id(&p, id, depth - 1)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_cgroup2_mount(hybrid).unwrap(), Path::new("/sys/fs/cgroup/unified"));
        let unified = "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(unified).unwrap(), Path::new("/sys/fs/cgroup"));
        assert!(parse_cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n").is_none());
        let spaced = "30 24 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(spaced).unwrap(), Path::new("/mnt/my cg"));
    }

    #[test]
    fn level_counts_components_below_the_mount() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(level(m, Path::new("/sys/fs/cgroup/agent-guard")).unwrap(), 1);
        assert_eq!(level(m, Path::new("/sys/fs/cgroup/a/b/agent-guard")).unwrap(), 3);
        assert!(level(m, Path::new("/tmp/x")).is_err());
    }
}
