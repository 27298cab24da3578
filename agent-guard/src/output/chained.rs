//! The log writer's side of the chain: seals each line it writes, keeps the head in
//! `data_dir` in step with what reached the log, and signs checkpoints every N lines or T
//! seconds.
use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use ed25519_dalek::SigningKey;
use tracing::{info, warn};

use crate::output::{
    chain::{self, Hash, Head},
    event::{self, Detail, Event, Kind},
};

pub struct ChainWriter {
    /// The last line that reached the log.
    seq: u64,
    chain: Hash,
    /// Where the batch being written started, and each of its lines as sealed.
    before: (u64, Hash),
    sealed: Vec<(u64, Hash)>,
    head: Head,
    key: SigningKey,
    pubkey: String,
    host: String,
    every_lines: u64,
    every: Duration,
    /// Lines written since the last checkpoint.
    uncovered: u64,
    last_checkpoint: Instant,
    /// Events to write before any other (a chain gap found at start).
    pending: Vec<Event>,
}

impl ChainWriter {
    /// Opens the key and the head in `data_dir` (making them on first start) and finds where
    /// the log `log` ends.
    pub fn open(data_dir: &Path, log: &Path, host: &str, every_lines: u64, every: Duration) -> anyhow::Result<Self> {
        let (key, made) = chain::load_or_create_key(data_dir).with_context(|| format!("the log signing key in data_dir {}", data_dir.display()))?;
        let pubkey = hex::encode(key.verifying_key().as_bytes());
        if made {
            info!("made the log signing key {} (public key {pubkey})", chain::key_path(data_dir).display());
        }
        let saved = chain::read_head(data_dir);
        let head = Head::open(data_dir).with_context(|| format!("the chain head in data_dir {}", data_dir.display()))?;
        let mut resume = chain::resume(log, saved).with_context(|| format!("reading the end of events_log {}", log.display()))?;
        if resume.partial {
            let cut = chain::cut_partial(log).with_context(|| format!("cutting the incomplete last line off events_log {}", log.display()))?;
            if let Some(g) = resume.gap.as_mut() {
                g.reason = format!("{} ({cut} bytes, cut off)", g.reason);
            }
            resume.partial = false;
        }
        let mut pending = Vec::new();
        if let Some(gap) = resume.gap {
            warn!("events_log chain: {}", gap.reason);
            let mut e = Event::new(Kind::ChainGap);
            e.ts = event::rfc3339(SystemTime::now());
            e.host = host.to_string();
            e.detail = Detail::ChainGap { head_seq: gap.head_seq, log_seq: gap.log_seq, reason: gap.reason };
            pending.push(e);
        }
        Ok(ChainWriter {
            seq: resume.seq,
            chain: resume.chain,
            before: (resume.seq, resume.chain),
            sealed: Vec::new(),
            head,
            key,
            pubkey,
            host: host.to_string(),
            every_lines: every_lines.max(1),
            every,
            uncovered: 0,
            last_checkpoint: Instant::now(),
            pending,
        })
    }

    /// The events to write first (a gap report).
    pub fn take_pending(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.pending)
    }

    /// A batch starts.
    pub fn begin(&mut self) {
        self.before = (self.seq, self.chain);
        self.sealed.clear();
    }

    /// Seals the event serialised at `buf[start..]` as the next line.
    pub fn seal(&mut self, buf: &mut Vec<u8>, start: usize) {
        let (seq, prev) = self.sealed.last().copied().unwrap_or(self.before);
        let chain = chain::seal(buf, start, seq + 1, &prev);
        self.sealed.push((seq + 1, chain));
    }

    /// `written` lines of the batch reached the log: the chain goes on from the last of them
    /// (lines that did not are sealed again with the next batch's numbers), and the head in
    /// data_dir says so.
    pub fn commit(&mut self, written: usize) {
        let written = written.min(self.sealed.len());
        (self.seq, self.chain) = if written == 0 { self.before } else { self.sealed[written - 1] };
        self.uncovered += written as u64;
        if written > 0 {
            if let Err(e) = self.head.store(self.seq, &self.chain) {
                warn!("writing the chain head: {e}");
            }
        }
        self.sealed.clear();
    }

    /// Whether a checkpoint is due (lines written since the last one, and N of them or T).
    pub fn due(&self) -> bool {
        self.uncovered > 0 && (self.uncovered >= self.every_lines || self.last_checkpoint.elapsed() >= self.every)
    }

    /// When the next checkpoint is due by time (None: nothing to cover).
    pub fn deadline(&self) -> Option<Instant> {
        (self.uncovered > 0).then(|| self.last_checkpoint + self.every)
    }

    /// Lines not covered by a checkpoint yet.
    pub fn uncovered(&self) -> u64 {
        self.uncovered
    }

    /// The checkpoint event over the last line written.
    pub fn checkpoint(&self) -> Event {
        let mut e = Event::new(Kind::Checkpoint);
        e.ts = event::rfc3339(SystemTime::now());
        e.host = self.host.clone();
        e.detail = Detail::Checkpoint {
            covers_seq: self.seq,
            covers_chain: chain::hash_hex(&self.chain),
            pubkey: self.pubkey.clone(),
            signature: chain::sign(&self.key, self.seq, &self.chain),
        };
        e
    }

    /// A checkpoint line reached the log (or not).
    pub fn checkpointed(&mut self, ok: bool) {
        if ok {
            self.uncovered = 0;
        }
        self.last_checkpoint = Instant::now();
    }

    /// The last line written: seq and chain value.
    pub fn last(&self) -> (u64, Hash) {
        (self.seq, self.chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(c: &mut ChainWriter, buf: &mut Vec<u8>, text: &str) {
        let start = buf.len();
        buf.extend_from_slice(text.as_bytes());
        c.seal(buf, start);
    }

    #[test]
    fn lines_that_did_not_reach_the_log_are_sealed_again_and_checkpoints_come_when_due() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, log) = (tmp.path().join("data"), tmp.path().join("events.jsonl"));
        let mut c = ChainWriter::open(&data, &log, "h", 3, Duration::from_secs(3600)).unwrap();
        assert!(c.take_pending().is_empty(), "a first start is no gap");
        let mut buf = Vec::new();
        c.begin();
        line(&mut c, &mut buf, r#"{"ts":"a"}"#);
        line(&mut c, &mut buf, r#"{"ts":"b"}"#);
        // Only the first line reached the log (a full disk).
        c.commit(1);
        let first = buf.split(|b| *b == b'\n').next().unwrap().to_vec();
        assert_eq!(c.last().0, 1);
        assert_eq!(chain::read_head(&data), Some(c.last()));
        assert!(!c.due());
        let mut next = Vec::new();
        c.begin();
        line(&mut c, &mut next, r#"{"ts":"b"}"#);
        line(&mut c, &mut next, r#"{"ts":"c"}"#);
        c.commit(2);
        // The retried line is seq 2 and links to line 1.
        let l1 = chain::parse_line(&first).unwrap();
        let l2 = chain::parse_line(next.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!((l2.fields.seq, chain::link(&l1.chain, &l2.digest)), (2, l2.chain));
        assert!(c.due(), "3 lines written: a checkpoint is due");
        let cp = c.checkpoint();
        match &cp.detail {
            Detail::Checkpoint { covers_seq, covers_chain, pubkey, signature } => {
                assert_eq!((*covers_seq, covers_chain.as_str()), (3, chain::hash_hex(&c.last().1).as_str()));
                let key = chain::parse_pubkey(pubkey).unwrap();
                assert!(chain::signature_ok(&key, 3, &c.last().1, signature));
            }
            other => panic!("{other:?}"),
        }
        c.begin();
        let mut b = Vec::new();
        let start = b.len();
        serde_json::to_writer(&mut b, &cp).unwrap();
        c.seal(&mut b, start);
        c.commit(1);
        c.checkpointed(true);
        assert!(!c.due() && c.deadline().is_none());
    }
}

#[cfg(test)]
mod partial {
    use super::*;

    #[test]
    fn a_half_written_last_line_is_cut_off_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, log) = (tmp.path().join("data"), tmp.path().join("events.jsonl"));
        let mut buf = br#"{"ts":"a"}"#.to_vec();
        let c1 = chain::seal(&mut buf, 0, 1, &[0; 32]);
        let whole = buf.clone();
        buf.extend_from_slice(br#"{"ts":"b","kind":"op"#);
        std::fs::write(&log, &buf).unwrap();
        Head::open(&data).unwrap().store(1, &c1).unwrap();
        let mut c = ChainWriter::open(&data, &log, "h", 10, Duration::from_secs(60)).unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), whole, "cut back to the last whole line");
        assert_eq!(c.last(), (1, c1));
        let gap = c.take_pending();
        match &gap[..] {
            [e] => match &e.detail {
                Detail::ChainGap { reason, head_seq: Some(1), log_seq: Some(1) } => assert!(reason.contains("(20 bytes, cut off)"), "{reason}"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
}
