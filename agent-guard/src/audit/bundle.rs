//! The evidence bundle of one run (a gzip-compressed tar) and its verification.
//!
//! ```text
//! evidence-RUN/manifest.json      format, run, host, when it was made, the host's public key
//! evidence-RUN/summary.md         the timeline a reviewer reads first
//! evidence-RUN/run.json           the run record; holds.json: each hold with its answer
//! evidence-RUN/events.jsonl       the run's lines exactly as in the log (seq, chain)
//! evidence-RUN/checkpoints.jsonl  the checkpoints in the span; the last covers the run's end
//! evidence-RUN/chain.json         start_seq, prev, and the digest of every line of the span
//! evidence-RUN/policies.json      each policy version in force, and its text's file if known
//! evidence-RUN/policies/NAME@VERSION.toml
//! evidence-RUN/pubkey             the host's public key (hex)
//! ```
//!
//! `chain.json` is what ties the run's lines to a signature without carrying other runs'
//! events: the chain is recomputed from `prev` over the digests, each of the run's lines must
//! have its digest at its seq and the chain value there, and the last checkpoint must sign
//! the chain up to the line before it.
use std::{
    collections::BTreeMap,
    fmt,
    io::Read,
    path::Path,
};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    audit::{collect::Collected, summary, verify::check_checkpoint},
    output::chain::{self, Hash},
};

pub const FORMAT: &str = "agent-guard-evidence/1";

#[derive(Debug, Serialize, Deserialize)]
pub struct ChainProof {
    pub start_seq: u64,
    pub prev: String,
    pub digests: Vec<String>,
}

/// A policy version in force during the run, and its text when it could be found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub name: String,
    pub version: String,
    /// The file in the bundle with its text (None: not available, see `note`).
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The members of a bundle, by their name below the bundle's directory.
pub fn members(c: &Collected, pubkey: &VerifyingKey, texts: &BTreeMap<(String, String), String>, created: &str) -> Vec<(String, Vec<u8>)> {
    let lines: Vec<&str> = c.events.iter().map(|e| e.text.as_str()).collect();
    let events = summary::parse_events(lines.iter().copied());
    let host = events.first().map_or(Value::Null, |e| e["host"].clone());
    let key = hex::encode(pubkey.as_bytes());
    let mut out = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| out.push((name.to_string(), bytes));
    let manifest = serde_json::json!({ "format": FORMAT, "run": c.run, "host": host, "created": created, "pubkey": key });
    add("manifest.json", pretty(&manifest));
    add("summary.md", summary::summary(&c.run, &events).into_bytes());
    add("run.json", pretty(&summary::run_record(&c.run, &events)));
    add("holds.json", pretty(&summary::holds(&events)));
    add("events.jsonl", lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes());
    add("checkpoints.jsonl", c.checkpoints.iter().map(|l| format!("{}\n", l.text)).collect::<String>().into_bytes());
    let proof = ChainProof { start_seq: c.start_seq, prev: chain::hash_hex(&c.prev), digests: c.digests.iter().map(chain::hash_hex).collect() };
    add("chain.json", serde_json::to_vec(&proof).expect("serializes"));
    let mut entries = Vec::new();
    for (name, version) in summary::policies(&events) {
        let file = format!("policies/{}@{}.toml", safe(&name), safe(&version));
        match texts.get(&(name.clone(), version.clone())) {
            Some(text) => {
                add(&file, text.clone().into_bytes());
                entries.push(PolicyEntry { name, version, file: Some(file), note: None });
            }
            None => entries.push(PolicyEntry {
                name,
                version,
                file: None,
                note: Some("text not available: the daemon no longer has this version loaded".into()),
            }),
        }
    }
    add("policies.json", pretty(&entries));
    add("pubkey", format!("{key}\n").into_bytes());
    out
}

fn pretty<T: Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("serializes");
    b.push(b'\n');
    b
}

/// A name safe as one path component.
fn safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.:".contains(c) { c } else { '_' }).collect()
}

/// Writes the members as `dir/NAME` entries of a gzip-compressed tar.
pub fn write_tar_gz(out: impl std::io::Write, dir: &str, members: &[(String, Vec<u8>)], mtime: u64) -> std::io::Result<()> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, format!("{dir}/{name}"), bytes.as_slice())?;
    }
    tar.into_inner()?.finish()?.flush()
}

/// What is wrong with a bundle, and where (`member:line`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleProblem {
    pub member: Option<String>,
    pub line: usize,
    pub what: String,
}

impl fmt::Display for BundleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.member, self.line) {
            (Some(m), 0) => write!(f, "{m}: {}", self.what),
            (Some(m), n) => write!(f, "{m}:{n}: {}", self.what),
            (None, _) => write!(f, "{}", self.what),
        }
    }
}

fn problem(member: &str, line: usize, what: impl Into<String>) -> BundleProblem {
    BundleProblem { member: Some(member.into()), line, what: what.into() }
}

/// The members of a bundle file, by their name below its one directory. Bundles are small;
/// a member over 1 GiB is refused rather than read.
pub fn read_bundle(file: &Path) -> Result<BTreeMap<String, Vec<u8>>, BundleProblem> {
    let whole = |what: String| BundleProblem { member: None, line: 0, what };
    let mut f = std::fs::File::open(file).map_err(|e| whole(format!("cannot read: {e}")))?;
    let mut magic = [0u8; 2];
    if f.read_exact(&mut magic).is_err() || magic != [0x1f, 0x8b] {
        return Err(whole("not an evidence bundle (not a gzip-compressed tar)".into()));
    }
    let f = std::fs::File::open(file).map_err(|e| whole(format!("cannot read: {e}")))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = BTreeMap::new();
    let entries = tar.entries().map_err(|e| whole(format!("not an evidence bundle: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| whole(format!("not an evidence bundle: {e}")))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().map_err(|e| whole(format!("not an evidence bundle: {e}")))?.to_string_lossy().into_owned();
        let name = path.split_once('/').map_or(path.as_str(), |(_, rest)| rest).to_string();
        if entry.size() > 1 << 30 {
            return Err(problem(&name, 0, "larger than 1 GiB: refused"));
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(|e| problem(&name, 0, format!("cannot read: {e}")))?;
        out.insert(name, bytes);
    }
    Ok(out)
}

/// What an intact bundle holds.
#[derive(Debug, Clone)]
pub struct Verified {
    pub run: String,
    pub events: usize,
    pub first_seq: u64,
    pub last_seq: u64,
    pub checkpoint_seq: u64,
    pub policies_with_text: usize,
    pub policies: usize,
}

/// Checks a bundle's members under `key`.
pub fn verify(m: &BTreeMap<String, Vec<u8>>, key: &VerifyingKey) -> Result<Verified, BundleProblem> {
    let get = |name: &str| m.get(name).ok_or_else(|| BundleProblem { member: None, line: 0, what: format!("not an evidence bundle: no {name}") });
    let text = |name: &str| -> Result<&str, BundleProblem> { std::str::from_utf8(get(name)?).map_err(|_| problem(name, 0, "not UTF-8")) };
    let manifest: Value = serde_json::from_slice(get("manifest.json")?).map_err(|e| problem("manifest.json", 0, e.to_string()))?;
    if manifest["format"] != FORMAT {
        return Err(problem("manifest.json", 0, format!("format {} is not {FORMAT}", manifest["format"])));
    }
    let run = manifest["run"].as_str().ok_or_else(|| problem("manifest.json", 0, "no run"))?.to_string();
    let proof: ChainProof = serde_json::from_slice(get("chain.json")?).map_err(|e| problem("chain.json", 0, e.to_string()))?;
    let bad_hash = |i: usize| problem("chain.json", 0, format!("digest {i} is not 64 hex digits"));
    let prev = chain::parse_hash(&proof.prev).ok_or_else(|| problem("chain.json", 0, "prev is not 64 hex digits"))?;
    let digests: Vec<Hash> = proof.digests.iter().enumerate().map(|(i, d)| chain::parse_hash(d).ok_or_else(|| bad_hash(i))).collect::<Result<_, _>>()?;
    // The chain value at each seq of the span.
    let mut chains = Vec::with_capacity(digests.len());
    let mut at = prev;
    for d in &digests {
        at = chain::link(&at, d);
        chains.push(at);
    }
    let end = proof.start_seq + digests.len() as u64; // one past the span
    let index = |seq: u64| (seq >= proof.start_seq && seq < end).then(|| (seq - proof.start_seq) as usize);
    let check_lines = |member: &str| -> Result<Vec<(usize, chain::Line)>, BundleProblem> {
        let body = text(member)?;
        let mut out: Vec<(usize, chain::Line)> = Vec::new();
        for (n, l) in body.lines().enumerate().map(|(i, l)| (i + 1, l)) {
            let parsed = chain::parse_line(l.as_bytes()).map_err(|e| problem(member, n, e.to_string()))?;
            let seq = parsed.fields.seq;
            let i = index(seq).ok_or_else(|| problem(member, n, format!("seq {seq} is outside the chain the bundle proves ({}..{})", proof.start_seq, end - 1)))?;
            if let Some((_, p)) = out.last() {
                if p.fields.seq >= seq {
                    return Err(problem(member, n, format!("reordered: seq {seq} after seq {}", p.fields.seq)));
                }
            }
            if parsed.digest != digests[i] {
                return Err(problem(member, n, format!("edited: the line is not the one the chain holds at seq {seq}")));
            }
            if parsed.chain != chains[i] {
                return Err(problem(member, n, format!("edited: its chain value is not the chain's at seq {seq}")));
            }
            out.push((n, parsed));
        }
        Ok(out)
    };
    let events = check_lines("events.jsonl")?;
    let checkpoints = check_lines("checkpoints.jsonl")?;
    for (n, c) in &checkpoints {
        let i = index(c.fields.seq).expect("checked");
        let before = if i == 0 { prev } else { chains[i - 1] };
        check_checkpoint(&c.fields, c.fields.seq - 1, &before, key).map_err(|w| problem("checkpoints.jsonl", *n, w))?;
    }
    let Some((_, first)) = events.first() else { return Err(problem("events.jsonl", 0, "no events")) };
    let last_seq = events.last().map_or(0, |e| e.1.fields.seq);
    match checkpoints.last() {
        Some((_, c)) if c.fields.seq == end - 1 && c.fields.seq > last_seq => {}
        _ => return Err(problem("checkpoints.jsonl", 0, format!("no checkpoint covers the run's last line (seq {last_seq}): the events are chained but not signed"))),
    }
    if first.fields.seq != proof.start_seq {
        return Err(problem("chain.json", 0, format!("the span starts at seq {} but the first event is seq {}", proof.start_seq, first.fields.seq)));
    }
    // The derived members are exactly what the events make.
    let evs = summary::parse_events(text("events.jsonl")?.lines());
    for (name, made) in [
        ("summary.md", summary::summary(&run, &evs).into_bytes()),
        ("run.json", pretty(&summary::run_record(&run, &evs))),
        ("holds.json", pretty(&summary::holds(&evs))),
    ] {
        if get(name)? != &made {
            return Err(problem(name, 0, "edited: it is not what the bundle's events make"));
        }
    }
    // Each policy text is the version its name says (the version is a hash of the policy).
    let entries: Vec<PolicyEntry> = serde_json::from_slice(get("policies.json")?).map_err(|e| problem("policies.json", 0, e.to_string()))?;
    let listed: std::collections::BTreeSet<(String, String)> = entries.iter().map(|p| (p.name.clone(), p.version.clone())).collect();
    if listed != summary::policies(&evs) {
        return Err(problem("policies.json", 0, "edited: it does not list the policy versions the events name"));
    }
    for p in &entries {
        let Some(file) = &p.file else { continue };
        let body = text(file)?;
        let version = crate::policy::parse(body, file).policy.map(|x| (x.name, x.version));
        if version.as_ref() != Some(&(p.name.clone(), p.version.clone())) {
            return Err(problem(file, 0, format!("edited: this text is not policy {} version {}", p.name, p.version)));
        }
    }
    Ok(Verified {
        run,
        events: events.len(),
        first_seq: first.fields.seq,
        last_seq,
        checkpoint_seq: end - 1,
        policies_with_text: entries.iter().filter(|p| p.file.is_some()).count(),
        policies: entries.len(),
    })
}
