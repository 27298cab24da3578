//! The JSON-lines event log: appended in batches, rotated by size (`events_log.1` is the
//! newest old file, up to `events_log_keep` of them), and reopened on SIGHUP so logrotate can
//! move it away (`copytruncate` is not needed).
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::output::{
    chained::ChainWriter,
    event::{self, Event},
};

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
    /// unless one line alone does. On an error (a full disk) what was written of the failed
    /// piece is cut off again, so the file still ends with a whole line; the error says how
    /// many whole lines of `lines` did reach the log.
    pub fn write(&mut self, lines: &[u8]) -> Result<(), WriteError> {
        let mut rest = lines;
        let fail = |rest: &[u8], error| WriteError { error, written_lines: lines[..lines.len() - rest.len()].iter().filter(|b| **b == b'\n').count() };
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
                self.rotate().map_err(|e| fail(rest, e))?;
                continue;
            }
            if let Err(e) = self.file.write_all(&rest[..end]) {
                // A partial write (ENOSPC half-way): cut it off, or the next line would be
                // glued to half a line. If even that fails the size is what the file says.
                if self.file.set_len(self.size).is_err() {
                    self.size = self.file.metadata().map_or(self.size, |m| m.len());
                }
                return Err(fail(rest, e));
            }
            self.size += end as u64;
            rest = &rest[end..];
        }
        Ok(())
    }
}

/// A failed [`EventLog::write`]: the error, and how many whole lines were written before it.
#[derive(Debug)]
pub struct WriteError {
    pub error: io::Error,
    pub written_lines: usize,
}

/// What the log lost: events whose write failed. Shared by the writer (which counts) and
/// `watch_drops` (which puts the count in the metrics and reports it as a `drop` event).
#[derive(Debug, Default)]
pub struct SinkLosses {
    /// Events lost since the daemon started (`agent_guard_events_dropped_total{stage="sink"}`).
    pub lost: AtomicU64,
    /// Lost events that no `drop` event in the log accounts for yet. A `drop` event (stage
    /// sink) that is itself lost gives its count back, so the one that finally reaches the
    /// log (once there is space again) accounts for everything lost before it.
    pub unreported: AtomicU64,
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
    fn a_failed_write_says_how_many_lines_got_through() {
        // /dev/full: every write fails with ENOSPC, as on a full disk.
        let mut log = EventLog::open(Path::new("/dev/full"), 0, 0).unwrap();
        let e = log.write(b"a\nb\n").unwrap_err();
        assert_eq!((e.error.raw_os_error(), e.written_lines), (Some(libc::ENOSPC), 0));
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

/// What the daemon asks of the log writer besides writing events.
#[derive(Debug)]
pub enum WriterCmd {
    /// Open events_log again (SIGHUP, after logrotate moved it).
    Reopen,
    /// Write what is queued, then a checkpoint if any line is not covered by one; the answer
    /// is the seq of the last checkpoint line written (None: no chain).
    Checkpoint(Option<tokio::sync::oneshot::Sender<Option<u64>>>),
}

/// Serialises `batch` into `buf` (sealed into the chain when there is one) and writes it;
/// returns how many of its events reached the log and the error, if any.
fn write_batch(log: &mut EventLog, chain: &mut Option<ChainWriter>, buf: &mut Vec<u8>, batch: &[Arc<Event>]) -> (usize, Option<WriteError>) {
    buf.clear();
    if let Some(c) = chain.as_mut() {
        c.begin();
    }
    for e in batch {
        let start = buf.len();
        serde_json::to_writer(&mut *buf, &**e).expect("events serialize");
        match chain.as_mut() {
            Some(c) => c.seal(buf, start),
            None => buf.push(b'\n'),
        }
    }
    let written = tokio::task::block_in_place(|| log.write(buf));
    let (lines, err) = match written {
        Ok(()) => (batch.len(), None),
        Err(e) => (e.written_lines.min(batch.len()), Some(e)),
    };
    if let Some(c) = chain.as_mut() {
        c.commit(lines);
    }
    (lines, err)
}

/// Writes a checkpoint if one is due (or `force`d and any line is uncovered); returns the
/// seq of the chain's last line when a checkpoint is the last line.
fn checkpoint(log: &mut EventLog, chain: &mut Option<ChainWriter>, buf: &mut Vec<u8>, force: bool) -> Option<u64> {
    let c = chain.as_mut()?;
    if !(c.due() || force && c.uncovered() > 0) {
        return (c.uncovered() == 0).then(|| c.last().0);
    }
    let e = Arc::new(c.checkpoint());
    let (lines, err) = write_batch(log, chain, buf, std::slice::from_ref(&e));
    let c = chain.as_mut()?;
    c.checkpointed(lines == 1);
    if let Some(err) = err {
        warn!("writing a checkpoint to events_log: {}", err.error);
        return None;
    }
    Some(c.last().0)
}

/// Writes the events to the log (and a human line each to stderr, which journald keeps
/// under systemd), each line sealed into the hash chain when `chain` is given. What of a
/// batch cannot be written is counted in `sink` and reported as a `drop` event (stage
/// `sink`) by watch_drops; that report reaches the log once writing works again (see
/// [`SinkLosses`]).
#[allow(clippy::too_many_arguments)]
pub async fn write_events(
    mut rx: mpsc::Receiver<Arc<Event>>,
    mut log: EventLog,
    mut chain: Option<ChainWriter>,
    mut cmds: mpsc::UnboundedReceiver<WriterCmd>,
    sink: Arc<SinkLosses>,
    stderr_events: crate::config::StderrEvents,
    forget_run: Box<dyn Fn(&str) + Send>,
) {
    let mut buf = Vec::with_capacity(1 << 16);
    let mut human = Vec::with_capacity(1 << 12);
    let mut stderr = std::io::stderr();
    if let Some(c) = chain.as_mut() {
        let first: Vec<Arc<Event>> = c.take_pending().into_iter().map(Arc::new).collect();
        if !first.is_empty() {
            if let (_, Some(e)) = write_batch(&mut log, &mut chain, &mut buf, &first) {
                warn!("writing events_log: {}", e.error);
            }
        }
    }
    loop {
        let deadline = chain.as_ref().and_then(ChainWriter::deadline);
        let first = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => {
                    checkpoint(&mut log, &mut chain, &mut buf, true);
                    return;
                }
            },
            Some(cmd) = cmds.recv() => {
                match cmd {
                    WriterCmd::Reopen => match log.reopen() {
                        Ok(()) => info!("events_log reopened"),
                        Err(e) => warn!("reopening events_log: {e}; still writing to the old file"),
                    },
                    WriterCmd::Checkpoint(reply) => {
                        // What is queued first, so the checkpoint covers it.
                        let queued: Vec<Arc<Event>> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
                        for part in queued.chunks(4096) {
                            write_logged(&mut log, &mut chain, &mut buf, part, &sink, &forget_run);
                        }
                        let seq = checkpoint(&mut log, &mut chain, &mut buf, true);
                        if let Some(reply) = reply {
                            let _ = reply.send(seq);
                        }
                    }
                }
                continue;
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                checkpoint(&mut log, &mut chain, &mut buf, false);
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
        human.clear();
        for e in &batch {
            if stderr_events.shows(e.kind, e.verdict) {
                let _ = writeln!(human, "{}", event::human(e));
            }
        }
        // One write for the batch's human lines (stderr is unbuffered).
        if !human.is_empty() {
            let _ = stderr.write_all(&human);
        }
        write_logged(&mut log, &mut chain, &mut buf, &batch, &sink, &forget_run);
        checkpoint(&mut log, &mut chain, &mut buf, false);
    }
}

async fn sleep_until(t: Option<std::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Writes a batch of events; accounts for the runs it ends and for what it lost.
fn write_logged(
    log: &mut EventLog,
    chain: &mut Option<ChainWriter>,
    buf: &mut Vec<u8>,
    batch: &[Arc<Event>],
    sink: &SinkLosses,
    forget_run: &dyn Fn(&str),
) {
    let (lines, err) = write_batch(log, chain, buf, batch);
    // Runs whose run_end is in the log now: their records are no longer needed.
    for id in batch[..lines].iter().filter_map(|e| e.forget_run.as_deref()) {
        forget_run(id);
    }
    if let Some(e) = err {
        let lost = &batch[lines..];
        let lost_reports: u64 = lost
            .iter()
            .map(|e| match e.detail {
                event::Detail::Drop { count, stage: "sink" } => count,
                _ => 0,
            })
            .sum();
        warn!("writing events_log: {}; {} events lost (reported as a drop)", e.error, lost.len());
        sink.lost.fetch_add(lost.len() as u64, Ordering::Relaxed);
        sink.unreported.fetch_add(lost.len() as u64 + lost_reports, Ordering::Relaxed);
    }
}
