//! One run's lines out of the events log, with what proves they belong to the chain: the
//! digests of every line from the run's first line to the checkpoint that covers its last.
use std::path::PathBuf;

use crate::{
    audit::verify::lines_of,
    output::chain::{self, Hash},
};

/// A line of the log, as it is there.
#[derive(Debug, Clone)]
pub struct Found {
    pub file: PathBuf,
    pub line: usize,
    pub text: String,
    pub parsed: chain::Line,
}

/// What the log holds of one run.
#[derive(Debug, Clone)]
pub struct Collected {
    /// The run's id.
    pub run: String,
    /// The run's lines, and the host's own `drop` and `chain_gap` lines between its first and
    /// last (they say events may be missing), in log order.
    pub events: Vec<Found>,
    /// The seq of the run's first line, the chain value of the line before it, and the
    /// digest of every line from there to the covering checkpoint (the last one).
    pub start_seq: u64,
    pub prev: Hash,
    pub digests: Vec<Hash>,
    /// The checkpoint lines in that span; the last covers the run's last line. Empty when no
    /// checkpoint has been written since (then `digests` goes to the log's end).
    pub checkpoints: Vec<Found>,
}

/// Why a run's lines could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("no run named: give a run id or name")]
    Empty,
    #[error("no events of a run {spec:?} (id or name) in {files}")]
    NoRun { spec: String, files: String },
    #[error("{spec:?} names {} runs: {}; give the run id", ids.len(), ids.join(", "))]
    Ambiguous { spec: String, ids: Vec<String> },
    #[error("{}: {error}", file.display())]
    Read { file: PathBuf, error: std::io::Error },
    /// The log is broken inside the run's span (`at` is FILE:LINE).
    #[error("{at}: {what}; `agent-guard log verify` says more")]
    Broken { at: String, what: String },
    #[error("{at}: the line before the run's first (seq {seq}) is not in the log (rotated away or broken): its events cannot be tied to the chain")]
    Unanchored { at: String, seq: u64 },
}

fn read(file: &PathBuf) -> Result<Vec<u8>, CollectError> {
    std::fs::read(file).map_err(|error| CollectError::Read { file: file.clone(), error })
}

/// The run ids of the lines whose `run` or `run_name` is `spec`.
fn runs_named(files: &[PathBuf], spec: &str) -> Result<Vec<String>, CollectError> {
    let mut ids: Vec<String> = Vec::new();
    for file in files {
        let data = read(file)?;
        for (_, raw, _) in lines_of(&data) {
            // Cheap test first: most lines are not the run's.
            if !raw.windows(spec.len()).any(|w| w == spec.as_bytes()) {
                continue;
            }
            let Ok(l) = chain::parse_line(raw) else { continue };
            if let Some(id) = l.fields.run.filter(|id| id == spec || l.fields.run_name.as_deref() == Some(spec)) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    Ok(ids)
}

/// Collects run `spec` (a run id, or the name of exactly one run) from `files` (oldest first).
pub fn collect(files: &[PathBuf], spec: &str) -> Result<Collected, CollectError> {
    if spec.is_empty() {
        return Err(CollectError::Empty);
    }
    let names = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    let ids = runs_named(files, spec)?;
    let run = match ids.as_slice() {
        [] => return Err(CollectError::NoRun { spec: spec.into(), files: names }),
        [one] => one.clone(),
        many if many.iter().any(|id| id == spec) => spec.to_string(),
        many => return Err(CollectError::Ambiguous { spec: spec.into(), ids: many.to_vec() }),
    };
    let mut out = Collected { run: run.clone(), events: Vec::new(), start_seq: 0, prev: [0; 32], digests: Vec::new(), checkpoints: Vec::new() };
    let mut before: Option<(u64, Hash)> = None;
    // Host lines seen since the run's last line (kept if another line of the run follows).
    let mut host_lines: Vec<Found> = Vec::new();
    let mut last_run_seq = 0;
    for file in files {
        let data = read(file)?;
        for (n, raw, complete) in lines_of(&data) {
            let where_ = || format!("{}:{n}", file.display());
            let started = !out.digests.is_empty();
            if !complete {
                // The live log's last line, still being written: the run's lines so far end here.
                break;
            }
            let parsed = match chain::parse_line(raw) {
                Ok(l) => l,
                Err(_) if !started => {
                    before = None;
                    continue;
                }
                Err(e) => return Err(CollectError::Broken { at: where_(), what: e.to_string() }),
            };
            let seq = parsed.fields.seq;
            let mine = parsed.fields.run.as_deref() == Some(run.as_str());
            if !started && !mine {
                before = Some((seq, parsed.chain));
                continue;
            }
            if !started {
                out.start_seq = seq;
                out.prev = match before {
                    Some((s, c)) if s + 1 == seq => c,
                    None if seq == 1 => [0; 32],
                    _ => return Err(CollectError::Unanchored { at: where_(), seq }),
                };
            } else if seq != out.start_seq + out.digests.len() as u64 {
                let want = out.start_seq + out.digests.len() as u64;
                return Err(CollectError::Broken { at: where_(), what: format!("the chain breaks here (seq {seq}, expected {want})") });
            }
            out.digests.push(parsed.digest);
            let found = || Found { file: file.clone(), line: n, text: String::from_utf8_lossy(raw).into_owned(), parsed: parsed.clone() };
            if mine {
                out.events.append(&mut host_lines);
                out.events.push(found());
                last_run_seq = seq;
            } else if matches!(parsed.fields.kind.as_str(), "drop" | "chain_gap") && parsed.fields.run.is_none() {
                host_lines.push(found());
            } else if parsed.fields.kind == "checkpoint" {
                out.checkpoints.push(found());
            }
        }
    }
    // The span ends at the first checkpoint after the run's last line.
    match out.checkpoints.iter().position(|c| c.parsed.fields.seq > last_run_seq) {
        Some(i) => {
            let end = out.checkpoints[i].parsed.fields.seq;
            out.checkpoints.truncate(i + 1);
            out.digests.truncate((end - out.start_seq + 1) as usize);
        }
        None => out.checkpoints.retain(|c| c.parsed.fields.seq <= last_run_seq),
    }
    Ok(out)
}

impl Collected {
    /// Whether a checkpoint covers the run's last line.
    pub fn covered(&self) -> bool {
        let last = self.events.iter().rev().find(|e| e.parsed.fields.run.as_deref() == Some(self.run.as_str()));
        match (self.checkpoints.last(), last) {
            (Some(c), Some(l)) => c.parsed.fields.seq > l.parsed.fields.seq,
            _ => false,
        }
    }
}
