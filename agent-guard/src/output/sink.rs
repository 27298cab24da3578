//! The JSON-lines event log: appended in batches, rotated by size (`events_log.1` is the
//! newest old file, up to `events_log_keep` of them), and reopened on SIGHUP so logrotate can
//! move it away (`copytruncate` is not needed).
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::output::event::{self, Event};

pub struct EventLog {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    size: u64,
    /// Rotate once the file would grow past this (0: never).
    max_bytes: u64,
    /// Rotated files kept.
    keep: u32,
}

fn open(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

impl EventLog {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let (file, size) = open(path)?;
        Ok(Self { path: path.to_path_buf(), file, size, max_bytes, keep })
    }

    /// Opens the path again (after logrotate or a person moved the file away).
    pub fn reopen(&mut self) -> io::Result<()> {
        let (file, size) = open(&self.path)?;
        self.file = file;
        self.size = size;
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    /// Shifts `.1` -> `.2` ... (dropping the oldest) and starts a new file.
    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.keep).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        self.reopen()
    }

    /// Appends whole lines (`lines` ends with a newline), rotating between lines whenever the
    /// next one would not fit: a file never ends in half a line, and never outgrows the limit
    /// unless one line alone does.
    pub fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        let mut rest = lines;
        while !rest.is_empty() {
            // The longest run of whole lines that fits (at least one line).
            let room = if self.max_bytes == 0 { u64::MAX } else { self.max_bytes.saturating_sub(self.size) };
            let mut end = 0;
            for (i, b) in rest.iter().enumerate() {
                if *b == b'\n' {
                    if (i + 1) as u64 > room && end > 0 {
                        break;
                    }
                    end = i + 1;
                    if end as u64 >= room {
                        break;
                    }
                }
            }
            if end == 0 {
                end = rest.len(); // no newline: written as it is
            }
            if self.max_bytes > 0 && self.size > 0 && self.size + end as u64 > self.max_bytes {
                self.rotate()?;
                continue;
            }
            self.file.write_all(&rest[..end])?;
            self.size += end as u64;
            rest = &rest[end..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_keeps_n_files_and_loses_no_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("events.jsonl");
        let mut log = EventLog::open(&path, 100, 2).unwrap();
        for i in 0..20 {
            log.write(format!("{{\"n\":{i:03}}}\n").as_bytes()).unwrap(); // 10 bytes
        }
        // A batch larger than the limit is split between files at line boundaries.
        let batch: String = (20..30).map(|i| format!("{{\"n\":{i:03}}}\n")).collect();
        log.write(batch.as_bytes()).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let (cur, one, two) = (read(&path), read(&log.rotated(1)), read(&log.rotated(2)));
        assert!(!log.rotated(3).exists());
        assert_eq!(cur.lines().count() + one.lines().count() + two.lines().count(), 30);
        assert!(two.starts_with("{\"n\":000}") && one.starts_with("{\"n\":010}") && cur.ends_with("{\"n\":029}\n"), "{two}\n{cur}");
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
    }

    #[test]
    fn reopen_follows_a_moved_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("events.jsonl");
        let mut log = EventLog::open(&path, 0, 3).unwrap();
        log.write(b"a\n").unwrap();
        std::fs::rename(&path, tmp.path().join("moved")).unwrap();
        log.write(b"b\n").unwrap(); // still the moved file
        log.reopen().unwrap();
        log.write(b"c\n").unwrap();
        assert_eq!(std::fs::read_to_string(tmp.path().join("moved")).unwrap(), "a\nb\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "c\n");
    }
}

/// How long the log writer waits for a short batch to fill (see `write_events`).
pub(crate) const WRITE_PAUSE: Duration = Duration::from_millis(1);
/// Writes the events to the log (and a human line each to stderr, which journald keeps
/// under systemd). A batch that cannot be written is counted in `sink_drops` and reported
/// as a `drop` event (stage `sink`) by watch_drops once writing works again.
pub(crate) async fn write_events(
    mut rx: mpsc::Receiver<Arc<Event>>,
    mut log: EventLog,
    mut reopen: mpsc::UnboundedReceiver<()>,
    sink_drops: Arc<AtomicU64>,
    stderr_events: crate::config::StderrEvents,
) {
    let mut buf = Vec::with_capacity(1 << 16);
    let mut human = Vec::with_capacity(1 << 12);
    let mut stderr = std::io::stderr();
    loop {
        let first = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
            Some(()) = reopen.recv() => {
                match log.reopen() {
                    Ok(()) => info!("events_log reopened"),
                    Err(e) => warn!("reopening events_log: {e}; still writing to the old file"),
                }
                continue;
            }
        };
        let mut batch = vec![first];
        let mut more = |batch: &mut Vec<Arc<Event>>| {
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
        };
        more(&mut batch);
        if batch.len() < 64 {
            // A short batch: give the queue a moment to fill, so a stream of events costs one
            // wake-up and one write per millisecond, not one per event.
            tokio::time::sleep(WRITE_PAUSE).await;
            more(&mut batch);
        }
        buf.clear();
        human.clear();
        for e in &batch {
            serde_json::to_writer(&mut buf, &**e).expect("events serialize");
            buf.push(b'\n');
            if stderr_events.shows(e.kind, e.verdict) {
                let _ = writeln!(human, "{}", event::human(e));
            }
        }
        // One write for the batch's human lines (stderr is unbuffered).
        if !human.is_empty() {
            let _ = stderr.write_all(&human);
        }
        if let Err(e) = tokio::task::block_in_place(|| log.write(&buf)) {
            warn!("writing events_log: {e}; {} events lost (reported as a drop)", batch.len());
            sink_drops.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

