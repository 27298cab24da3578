//! What a restarted daemon needs besides the pinned kernel state (`ebpf::Pins`): a record of
//! each run (its name and labels, which the kernel maps do not hold) and the text of each
//! loaded policy, by slot. Kept in `state_dir` (tmpfs by default: it lives exactly as long as
//! the pins, which a reboot also removes). Files are written whole (temporary file, then
//! rename), so a daemon killed mid-write leaves the old record or the new one.
use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub dir: PathBuf,
    pub cgroup_id: u64,
    /// Start time, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// The accesses the run is held for (empty: not held).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hold: Vec<crate::runs::grant::Recorded>,
    /// What the run's Landlock layer refuses up front, as `run` reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock: Option<crate::runs::landlock::Coverage>,
    /// The uid that started the run (None: not recorded, by a daemon before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by_uid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub slot: u32,
    /// The rule set id the text was compiled under: adopted only if the kernel's slot still
    /// points at it (a daemon killed between the switch and this record leaves an older one).
    #[serde(default)]
    pub ruleset: u32,
    pub source: String,
    pub text: String,
}

pub struct State {
    dir: PathBuf,
}

/// Holds `state_dir/lock` for the daemon's lifetime: one daemon per state directory.
pub struct Lock(#[allow(dead_code)] std::fs::File);

impl Lock {
    pub fn take(dir: &Path) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        mkdir(dir)?;
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                io::Error::other(format!(
                    "another agent-guard daemon uses {} (each daemon needs its own state_dir)",
                    dir.display()
                ))
            } else {
                e
            });
        }
        Ok(Self(f))
    }
}

fn mkdir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

impl State {
    /// Opens (creating) `dir` and its `runs/` and `policies/`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        for sub in ["runs", "policies"] {
            mkdir(&dir.join(sub))?;
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Forgets every record (a fresh start: there is no pinned state they could describe).
    pub fn clear(&self) -> io::Result<()> {
        for sub in ["runs", "policies"] {
            for e in std::fs::read_dir(self.dir.join(sub))? {
                std::fs::remove_file(e?.path())?;
            }
        }
        Ok(())
    }

    fn write<T: Serialize>(&self, path: PathBuf, value: &T) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(value).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, &path)
    }

    fn read_all<T: DeserializeOwned>(&self, sub: &str) -> (Vec<T>, Vec<String>) {
        let (mut items, mut errors) = (Vec::new(), Vec::new());
        let dir = self.dir.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => return (items, vec![format!("{}: {e}", dir.display())]),
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                let _ = std::fs::remove_file(&path); // a write that never got renamed
                continue;
            }
            match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<T>(&b).map_err(|e| e.to_string())
            }) {
                Ok(v) => items.push(v),
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
        (items, errors)
    }

    pub fn save_run(&self, r: &RunRecord) -> io::Result<()> {
        self.write(self.dir.join("runs").join(format!("{}.json", r.id)), r)
    }

    pub fn remove_run(&self, id: &str) {
        let _ = std::fs::remove_file(self.dir.join("runs").join(format!("{id}.json")));
    }

    /// The run records, and a message for each unreadable one.
    pub fn runs(&self) -> (Vec<RunRecord>, Vec<String>) {
        self.read_all("runs")
    }

    pub fn save_policy(&self, p: &PolicyRecord) -> io::Result<()> {
        self.write(self.dir.join("policies").join(format!("{}.json", p.slot)), p)
    }

    /// The policy records by slot, and a message for each unreadable one.
    pub fn policies(&self) -> (Vec<PolicyRecord>, Vec<String>) {
        let (mut v, e) = self.read_all::<PolicyRecord>("policies");
        v.sort_by_key(|p| p.slot);
        (v, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_clear() {
        let tmp = tempfile::tempdir().unwrap();
        let st = State::open(&tmp.path().join("state")).unwrap();
        let r = RunRecord {
            id: "r-1".into(),
            name: Some("n".into()),
            labels: BTreeMap::from([("k".into(), "v".into())]),
            dir: "/sys/fs/cgroup/x/r-1".into(),
            cgroup_id: 42,
            started_ms: 7,
            hold: vec![],
            landlock: Some(crate::runs::landlock::Coverage { abi: 7, files_read: true, ..Default::default() }),
            started_by_uid: Some(1001),
        };
        st.save_run(&r).unwrap();
        st.save_policy(&PolicyRecord { slot: 3, ruleset: 1, source: "p.toml".into(), text: "name = \"p\"".into() }).unwrap();
        std::fs::write(st.dir().join("runs/broken.json"), "{").unwrap();
        let (runs, errors) = st.runs();
        assert_eq!(runs, vec![r]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("broken.json"));
        assert_eq!(st.policies().0[0].slot, 3);
        st.remove_run("r-1");
        st.clear().unwrap();
        assert!(st.runs().0.is_empty() && st.policies().0.is_empty());
    }
}
