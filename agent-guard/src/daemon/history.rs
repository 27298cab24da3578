//! Every version of each policy the daemon applied, kept in `data_dir/policies/NAME.jsonl`
//! (one JSON line per version, appended and synced; `data_dir` outlives reboots, unlike
//! `state_dir`). A version is recorded when it comes into force (a new policy, or a text with
//! another version than the one loaded: `policy apply`, policy_dir at start and on SIGHUP,
//! `run --policy FILE`, `policy rollback`), and a text that was refused is recorded as an
//! error when its name can be read. Numbers count from 1 per policy name.
//!
//! A line cut short by a crash is skipped when reading (and reported), never fatal.
use std::{
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

pub use crate::control::HistoryEntry as Entry;

/// Appends are serialised (numbers are read, then written).
static APPEND: Mutex<()> = Mutex::new(());

/// The history kept under one `data_dir`.
pub struct History {
    dir: PathBuf,
}

/// True for a name a policy may have (`[A-Za-z0-9._-]+`, at most 64 bytes): the file name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::policy::NAME_MAX_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl History {
    pub fn new(data_dir: &Path) -> History {
        History { dir: data_dir.join("policies") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> Result<PathBuf, String> {
        if !valid_name(name) {
            return Err(format!("{name:?} is not a policy name ([A-Za-z0-9._-]+, at most {} bytes)", crate::policy::NAME_MAX_BYTES));
        }
        Ok(self.dir.join(format!("{name}.jsonl")))
    }

    /// Every recorded version of `name`, oldest first, and a message for each line skipped.
    pub fn entries(&self, name: &str) -> Result<(Vec<Entry>, Vec<String>), String> {
        let path = self.file(name)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((vec![], vec![])),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let (mut v, mut skipped) = (Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str::<Entry>(line) {
                Ok(e) => v.push(e),
                Err(e) => skipped.push(format!("{}:{}: skipped: {e}", path.display(), i + 1)),
            }
        }
        Ok((v, skipped))
    }

    /// Records `e` (its number is assigned here) unless it is an `ok` of the version already
    /// in force by the history (the last `ok`). The entry as recorded, or None.
    pub fn record(&self, name: &str, mut e: Entry) -> io::Result<Option<Entry>> {
        let _serial = APPEND.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.file(name).map_err(io::Error::other)?;
        let (entries, _) = self.entries(name).map_err(io::Error::other)?;
        let last_ok = entries.iter().rev().find(|x| x.result == "ok");
        if e.result == "ok" && e.restores.is_none() && last_ok.is_some_and(|x| x.version == e.version) {
            return Ok(None);
        }
        e.number = entries.last().map_or(1, |x| x.number + 1);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let mut line = serde_json::to_string(&e).map_err(io::Error::other)?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        // A line cut short by a crash before this one would swallow it: start on a new line.
        let len = f.metadata()?.len();
        if len > 0 && !std::fs::read(&path)?.ends_with(b"\n") {
            line.insert(0, '\n');
        }
        f.write_all(line.as_bytes())?;
        f.sync_all()?;
        Ok(Some(e))
    }

    /// The entry `spec` names: its number (`3`), or its version (`sha256:ab12...`, or a
    /// prefix of the hex digits of at least 6: the first entry of that version).
    pub fn find<'a>(name: &str, entries: &'a [Entry], spec: &str) -> Result<&'a Entry, String> {
        let numbers = || match (entries.first(), entries.last()) {
            (Some(a), Some(b)) => format!("versions {}-{}; see `agent-guard policy history {name}`", a.number, b.number),
            _ => "no versions".into(),
        };
        if let Ok(n) = spec.parse::<u64>() {
            return entries.iter().find(|e| e.number == n).ok_or_else(|| format!("policy {name:?} has no version {n} ({})", numbers()));
        }
        let hex = spec.strip_prefix("sha256:").unwrap_or(spec);
        if hex.len() < 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("bad version {spec:?}: a number from `agent-guard policy history {name}`, or sha256:HEX (at least 6 hex digits)"));
        }
        let hits: Vec<&Entry> = entries.iter().filter(|e| e.result == "ok" && e.version.strip_prefix("sha256:").is_some_and(|v| v.starts_with(hex))).collect();
        match hits.first() {
            Some(e) => Ok(e),
            None => Err(format!("policy {name:?} has no version {spec} ({})", numbers())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: &str, result: &str) -> Entry {
        Entry {
            number: 0,
            version: version.into(),
            time: "2026-12-05T10:00:00.000000Z".into(),
            source: "p.toml".into(),
            requested_by_uid: Some(0),
            result: result.into(),
            error: None,
            restores: None,
            text: format!("name = \"p\" # {version}\n"),
        }
    }

    #[test]
    fn versions_are_numbered_deduplicated_and_found() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::new(tmp.path());
        assert_eq!(h.entries("p").unwrap().0, vec![]);
        assert_eq!(h.record("p", entry("sha256:aaaaaa11", "ok")).unwrap().unwrap().number, 1);
        // The same version again (a restart loading policy_dir): nothing new.
        assert!(h.record("p", entry("sha256:aaaaaa11", "ok")).unwrap().is_none());
        assert_eq!(h.record("p", entry("sha256:bbbbbb22", "ok")).unwrap().unwrap().number, 2);
        assert_eq!(h.record("p", entry("", "error")).unwrap().unwrap().number, 3);
        let back = Entry { restores: Some(1), ..entry("sha256:aaaaaa11", "ok") };
        assert_eq!(h.record("p", back).unwrap().unwrap().number, 4);
        let (all, skipped) = h.entries("p").unwrap();
        assert!(skipped.is_empty());
        assert_eq!(all.iter().map(|e| e.number).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(History::find("p", &all, "2").unwrap().version, "sha256:bbbbbb22");
        assert_eq!(History::find("p", &all, "sha256:aaaaaa").unwrap().number, 1);
        assert_eq!(History::find("p", &all, "bbbbbb22").unwrap().number, 2);
        assert!(History::find("p", &all, "9").unwrap_err().contains("no version 9 (versions 1-4"));
        assert!(History::find("p", &all, "xyz").unwrap_err().starts_with("bad version \"xyz\""));
        assert!(History::find("p", &all, "cccccc").unwrap_err().contains("no version cccccc"));
        assert!(h.entries("../x").unwrap_err().contains("not a policy name"));
    }

    #[test]
    fn a_line_cut_short_is_skipped_and_the_next_one_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::new(tmp.path());
        h.record("p", entry("sha256:aaaaaa11", "ok")).unwrap();
        let path = h.dir().join("p.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"number\":2,\"vers").unwrap();
        h.record("p", entry("sha256:bbbbbb22", "ok")).unwrap();
        let (all, skipped) = h.entries("p").unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("p.jsonl:2: skipped"), "{skipped:?}");
    }
}
