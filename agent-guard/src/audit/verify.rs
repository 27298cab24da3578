//! `agent-guard log verify`: walks the events log's files, oldest first, and checks that
//! every line is chained to the one before it and every checkpoint's signature holds.
use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use ed25519_dalek::VerifyingKey;

use crate::output::chain::{self, Hash, LineError};

/// The first thing wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 when the file as a whole is the problem.
    pub line: usize,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file.display(), self.what),
            n => write!(f, "{}:{n}: {}", self.file.display(), self.what),
        }
    }
}

/// What an intact log holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub files: usize,
    pub lines: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    /// Lines after the last checkpoint: chained, not signed yet.
    pub unsigned: u64,
    /// The first line is not the chain's first (earlier lines were rotated away).
    pub anchored: bool,
    /// Lines before the chain's first line (seq 1): written before the daemon chained its
    /// log (an upgrade); not verified.
    pub before_chain: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (self.first_seq.unwrap_or(0), self.last_seq.unwrap_or(0));
        write!(f, "intact: {} lines (seq {a}..{b}) in {} file(s), {} checkpoint(s) verified", self.lines, self.files, self.checkpoints)?;
        if self.before_chain > 0 {
            write!(f, "; {} earlier line(s) from before the chain began are not verified", self.before_chain)?;
        }
        if self.anchored {
            write!(f, "; starts at seq {a} (earlier lines rotated away)")?;
        }
        if self.unsigned > 0 {
            write!(f, "; the last {} line(s) are chained but not yet under a checkpoint", self.unsigned)?;
        }
        Ok(())
    }
}

/// A log file's lines: (1-based number, bytes without the newline, complete).
pub fn lines_of(data: &[u8]) -> impl Iterator<Item = (usize, &[u8], bool)> {
    let complete = data.last().is_none_or(|b| *b == b'\n');
    let body = if complete && !data.is_empty() { &data[..data.len() - 1] } else { data };
    let n = if data.is_empty() { 0 } else { body.split(|b| *b == b'\n').count() };
    body.split(|b| *b == b'\n').take(n).enumerate().map(move |(i, l)| (i + 1, l, complete || i + 1 < n))
}

fn read(file: &Path) -> Result<Vec<u8>, Problem> {
    std::fs::read(file).map_err(|e| Problem { file: file.into(), line: 0, what: format!("cannot read: {e}") })
}

/// Checks `files` (oldest first) as one chain under `key`. `head` (the chain head in
/// data_dir, read before the files) also catches lines cut off the end of the newest file;
/// with it, the newest file is the live log, whose last line may be half-written as it is
/// read: an incomplete line there is left for the head to judge.
pub fn verify(files: &[PathBuf], key: &VerifyingKey, head: Option<(u64, Hash)>) -> Result<Report, Problem> {
    // Where each seq is, for telling a reordering from a deletion.
    let mut at: HashMap<u64, (usize, usize)> = HashMap::new();
    for (fi, file) in files.iter().enumerate() {
        let data = read(file)?;
        for (n, l, _) in lines_of(&data) {
            if let Ok(l) = chain::parse_line(l) {
                at.entry(l.fields.seq).or_insert((fi, n));
            }
        }
    }
    let mut report = Report { files: files.len(), ..Report::default() };
    let mut prev: Option<(u64, Hash)> = None;
    let mut last_line = (PathBuf::new(), 0);
    let mut first_unchained: Option<(PathBuf, usize)> = None;
    for (fi, file) in files.iter().enumerate() {
        let data = read(file)?;
        let bad = |line: usize, what: String| Problem { file: file.clone(), line, what };
        last_line = (file.clone(), 0);
        for (n, raw, complete) in lines_of(&data) {
            if !complete {
                if head.is_some() && fi + 1 == files.len() {
                    break;
                }
                return Err(bad(n, "truncated: the file ends in an incomplete line".into()));
            }
            last_line.1 = n;
            let l = match chain::parse_line(raw) {
                Ok(l) if prev.is_none() && report.before_chain > 0 && l.fields.seq != 1 => {
                    return Err(bad(n, format!("the chain does not begin here (seq {}, not 1) after lines that are not chained", l.fields.seq)));
                }
                Ok(l) => l,
                // Lines of a daemon from before the chain, then the chain's first line.
                Err(LineError::Unchained) if prev.is_none() => {
                    first_unchained.get_or_insert((file.clone(), n));
                    report.before_chain += 1;
                    last_line.1 = n;
                    continue;
                }
                Err(e @ LineError::Unchained) => return Err(bad(n, e.to_string())),
                Err(e @ LineError::Json(_)) => return Err(bad(n, e.to_string())),
            };
            let seq = l.fields.seq;
            let base = match prev {
                None if seq == 1 => [0; 32],
                None => {
                    // The oldest line there is: its chain value is taken as it stands.
                    report.anchored = true;
                    report.first_seq = Some(seq);
                    prev = Some((seq, l.chain));
                    report.lines += 1;
                    report.unsigned += 1;
                    continue;
                }
                Some((pseq, pchain)) => {
                    if seq != pseq + 1 {
                        let note = match (l.fields.kind.as_str(), &l.fields.reason) {
                            ("chain_gap", Some(r)) => format!(" (the daemon reported this gap at start: {r})"),
                            _ => String::new(),
                        };
                        let want = pseq + 1;
                        let what = if seq <= pseq {
                            format!("reordered: seq {seq} comes after seq {pseq}")
                        } else if let Some((wf, wn)) = at.get(&want).filter(|w| **w > (fi, n)) {
                            format!("reordered: seq {seq} where seq {want} belongs (seq {want} is at {}:{wn})", files[*wf].display())
                        } else if n == 1 && fi > 0 {
                            format!(
                                "deleted or truncated: {} ends at seq {pseq} and this file starts at seq {seq}: seq {want}..{} are missing",
                                files[fi - 1].display(),
                                seq - 1
                            )
                        } else if want == seq - 1 {
                            format!("deleted: seq {want} is missing before this line")
                        } else {
                            format!("deleted: seq {want}..{} are missing before this line", seq - 1)
                        };
                        return Err(bad(n, what + &note));
                    }
                    pchain
                }
            };
            if l.fields.kind == "checkpoint" {
                check_checkpoint(&l.fields, seq - 1, &base, key).map_err(|w| bad(n, w))?;
            }
            if chain::link(&base, &l.digest) != l.chain {
                return Err(bad(n, "edited: the line does not match its chain value".into()));
            }
            if let Some((hs, hc)) = head {
                if hs == seq && hc != l.chain {
                    return Err(bad(n, format!("rewritten: the chain head in data_dir says seq {seq} has chain {}", chain::hash_hex(&hc))));
                }
            }
            report.first_seq.get_or_insert(seq);
            report.lines += 1;
            if l.fields.kind == "checkpoint" {
                report.checkpoints += 1;
                report.unsigned = 0;
            } else {
                report.unsigned += 1;
            }
            prev = Some((seq, l.chain));
        }
    }
    report.last_seq = prev.map(|p| p.0);
    if let (None, Some((file, line))) = (prev, first_unchained) {
        // Nothing chained at all: not a log of this daemon.
        return Err(Problem { file, line, what: LineError::Unchained.to_string() });
    }
    if let Some((hs, _)) = head {
        if hs > report.last_seq.unwrap_or(0) {
            let (file, n) = last_line;
            return Err(Problem {
                file,
                line: n + 1,
                what: format!(
                    "truncated: the log ends at seq {} but the daemon wrote up to seq {hs} (the chain head in data_dir)",
                    report.last_seq.unwrap_or(0)
                ),
            });
        }
    }
    Ok(report)
}

/// A checkpoint line must sign exactly the line before it (seq `pseq`, chain `pchain`) with
/// `key`.
pub fn check_checkpoint(f: &chain::Fields, pseq: u64, pchain: &Hash, key: &VerifyingKey) -> Result<(), String> {
    let (Some(cseq), Some(cchain), Some(pubkey), Some(sig)) = (f.covers_seq, &f.covers_chain, &f.pubkey, &f.signature) else {
        return Err("edited: a checkpoint without covers_seq, covers_chain, pubkey and signature".into());
    };
    if cseq != pseq || chain::parse_hash(cchain) != Some(*pchain) {
        return Err(format!("bad checkpoint: it covers seq {cseq}, but the line before it is seq {pseq} with another chain value"));
    }
    if *pubkey != hex::encode(key.as_bytes()) {
        return Err(format!("bad checkpoint: signed by key {pubkey}, not the trusted key {}", hex::encode(key.as_bytes())));
    }
    if !chain::signature_ok(key, cseq, pchain, sig) {
        return Err("bad checkpoint signature: it does not verify with the host key".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
