//! The events log's hash chain: how a line is sealed and checked, the host's signing key and
//! the chain head kept in `data_dir`.
//!
//! Every line the daemon writes ends with `"seq":N,"chain":"H"}`. The line's *canonical
//! bytes* are the line without its `,"chain":"H"` (so they end with `"seq":N}`), and
//!
//! ```text
//! chain(N) = SHA-256( chain(N-1) ‖ SHA-256(canonical bytes of line N) )     (32-byte values)
//! ```
//!
//! with `chain(0)` 32 zero bytes. Hashing the line's digest rather than the line itself lets an
//! evidence bundle prove that one run's lines belong to the chain while carrying only the
//! digests of the other runs' lines between them.
//!
//! A `checkpoint` line signs (Ed25519) the chain value of the line before it:
//! `"agent-guard checkpoint\0" ‖ seq (u64, big-endian) ‖ chain` (see [`checkpoint_message`]).
use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// `,"chain":"` + 64 hex digits + `"}`.
const SUFFIX_LEN: usize = 10 + 64 + 2;

/// SHA-256 of a line's canonical bytes.
pub fn digest(canonical: &[u8]) -> Hash {
    Sha256::digest(canonical).into()
}

/// The chain value of a line: its predecessor's, then its digest.
pub fn link(prev: &Hash, digest: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(digest);
    h.finalize().into()
}

/// Turns the JSON object at `buf[start..]` (one serialised event, no newline) into chained
/// line `seq` after `prev`, newline included; returns the line's chain value.
pub fn seal(buf: &mut Vec<u8>, start: usize, seq: u64, prev: &Hash) -> Hash {
    debug_assert_eq!(buf.last(), Some(&b'}'));
    buf.pop();
    // An object with fields already ("ts" always comes first).
    let _ = write!(buf, ",\"seq\":{seq}}}");
    let chain = link(prev, &digest(&buf[start..]));
    buf.pop();
    buf.extend_from_slice(b",\"chain\":\"");
    let mut hex = [0u8; 64];
    hex::encode_to_slice(chain, &mut hex).expect("64 hex digits");
    buf.extend_from_slice(&hex);
    buf.extend_from_slice(b"\"}\n");
    chain
}

/// What a chained line says about itself (the fields a verifier needs; the rest is ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Fields {
    pub seq: u64,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub ts: String,
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub run_name: Option<String>,
    #[serde(default)]
    pub covers_seq: Option<u64>,
    #[serde(default)]
    pub covers_chain: Option<String>,
    #[serde(default)]
    pub pubkey: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// One line of the log, checked for form (not yet against its neighbours).
#[derive(Debug, Clone)]
pub struct Line {
    pub fields: Fields,
    /// The chain value the line carries.
    pub chain: Hash,
    /// SHA-256 of its canonical bytes.
    pub digest: Hash,
}

/// Why a line is not a chained log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not a chained log line (no \"chain\" field at its end)")]
    Unchained,
    #[error("edited: not a valid event any more ({0})")]
    Json(String),
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<Line, LineError> {
    let n = line.len();
    if n < SUFFIX_LEN + 2 || !line.ends_with(b"\"}") || &line[n - SUFFIX_LEN..n - SUFFIX_LEN + 10] != b",\"chain\":\"" {
        return Err(LineError::Unchained);
    }
    let mut chain = [0u8; 32];
    hex::decode_to_slice(&line[n - 66..n - 2], &mut chain).map_err(|_| LineError::Unchained)?;
    let mut h = Sha256::new();
    h.update(&line[..n - SUFFIX_LEN]);
    h.update(b"}");
    let digest: Hash = h.finalize().into();
    let fields: Fields = serde_json::from_slice(line).map_err(|e| LineError::Json(e.to_string()))?;
    // The seq a line carries must be the one in its canonical bytes: the last field before
    // the chain (serde refuses a duplicated "seq").
    let tail = format!(",\"seq\":{}", fields.seq);
    if !line[..n - SUFFIX_LEN].ends_with(tail.as_bytes()) {
        return Err(LineError::Json("\"seq\" is not the field before \"chain\"".into()));
    }
    Ok(Line { fields, chain, digest })
}

/// What a checkpoint signs: the seq and chain value of the line before it.
pub fn checkpoint_message(seq: u64, chain: &Hash) -> Vec<u8> {
    let mut m = b"agent-guard checkpoint\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(chain);
    m
}

pub fn sign(key: &SigningKey, seq: u64, chain: &Hash) -> String {
    hex::encode(key.sign(&checkpoint_message(seq, chain)).to_bytes())
}

/// Whether `signature` (hex) is `key`'s over (seq, chain).
pub fn signature_ok(key: &VerifyingKey, seq: u64, chain: &Hash, signature: &str) -> bool {
    let mut sig = [0u8; 64];
    hex::decode_to_slice(signature, &mut sig).is_ok()
        && key.verify(&checkpoint_message(seq, chain), &Signature::from_bytes(&sig)).is_ok()
}

pub fn hash_hex(h: &Hash) -> String {
    hex::encode(h)
}

pub fn parse_hash(s: &str) -> Option<Hash> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).ok().map(|_| h)
}

/// The signing key's file in `data_dir` (hex of the 32-byte secret, mode 0600).
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("log-signing.key")
}

/// The public key's file in `data_dir` (hex, one line; what `agent-guard log pubkey` prints).
pub fn pubkey_path(data_dir: &Path) -> PathBuf {
    data_dir.join("log-signing.pub")
}

/// The chain head's file in `data_dir`: the seq and chain value of the last line written.
pub fn head_path(data_dir: &Path) -> PathBuf {
    data_dir.join("chain.head")
}

/// The host's signing key: read from `data_dir`, or made (from the OS's random source) and
/// saved there on first start. The bool says it was made now.
pub fn load_or_create_key(data_dir: &Path) -> io::Result<(SigningKey, bool)> {
    let path = key_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a signing key: {e}", path.display())))?;
            let key = SigningKey::from_bytes(&seed);
            write_pubkey(data_dir, &key.verifying_key())?;
            Ok((key, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| io::Error::other(format!("random source: {e}")))?;
            let key = SigningKey::from_bytes(&seed);
            let tmp = data_dir.join("log-signing.key.tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(format!("{}\n", hex::encode(seed)).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            write_pubkey(data_dir, &key.verifying_key())?;
            Ok((key, true))
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

fn write_pubkey(data_dir: &Path, key: &VerifyingKey) -> io::Result<()> {
    let text = format!("{}\n", hex::encode(key.as_bytes()));
    let path = pubkey_path(data_dir);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&path, text)?;
    }
    Ok(())
}

/// A public key from text: 64 hex digits (surrounding whitespace allowed).
pub fn parse_pubkey(text: &str) -> Result<VerifyingKey, String> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut b).map_err(|e| format!("not an Ed25519 public key (64 hex digits): {e}"))?;
    VerifyingKey::from_bytes(&b).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// The public key in `file` (as `agent-guard log pubkey` prints it); errors name the file.
pub fn read_pubkey(file: &Path) -> Result<VerifyingKey, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    parse_pubkey(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// The host's public key from `data_dir` (its .pub file, else derived from the key).
pub fn host_pubkey(data_dir: &Path) -> Result<VerifyingKey, String> {
    match read_pubkey(&pubkey_path(data_dir)) {
        Ok(k) => Ok(k),
        Err(pub_err) => {
            let path = key_path(data_dir);
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{pub_err}; {}: {e}", path.display()))?;
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed).map_err(|e| format!("{}: not a signing key: {e}", path.display()))?;
            Ok(SigningKey::from_bytes(&seed).verifying_key())
        }
    }
}

/// The chain head in `data_dir`, rewritten in place after every write to the log.
pub struct Head {
    file: File,
}

/// `{seq:020} {chain hex}\n`: always the same length, so an in-place write replaces it whole.
fn head_text(seq: u64, chain: &Hash) -> String {
    format!("{seq:020} {}\n", hex::encode(chain))
}

impl Head {
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(head_path(data_dir))?;
        Ok(Head { file })
    }

    pub fn store(&self, seq: u64, chain: &Hash) -> io::Result<()> {
        self.file.write_all_at(head_text(seq, chain).as_bytes(), 0)
    }
}

/// The head saved in `data_dir`: None when there is none (or it is not readable as one).
pub fn read_head(data_dir: &Path) -> Option<(u64, Hash)> {
    let text = std::fs::read_to_string(head_path(data_dir)).ok()?;
    let (seq, chain) = text.trim().split_once(' ')?;
    Some((seq.parse().ok()?, parse_hash(chain)?))
}

/// The rotated files of `log` that exist (`log.1` is the newest), oldest first, then `log`.
pub fn log_files(log: &Path) -> Vec<PathBuf> {
    let rotated = |n: u32| {
        let mut p = log.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    let mut n = 1;
    while rotated(n).exists() {
        n += 1;
    }
    let mut files: Vec<PathBuf> = (1..n).rev().map(rotated).collect();
    if log.exists() {
        files.push(log.to_path_buf());
    }
    files
}

/// The last whole line of `path` (without its newline), and whether the file ends in an
/// incomplete line after it.
pub fn last_line(path: &Path) -> io::Result<(Option<Vec<u8>>, bool)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, false)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut want = 64 * 1024u64;
    loop {
        let from = len.saturating_sub(want);
        f.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        (&mut f).take(len - from).read_to_end(&mut tail)?;
        let partial = !tail.is_empty() && tail.last() != Some(&b'\n');
        let complete = match tail.iter().rposition(|b| *b == b'\n') {
            Some(end) => &tail[..end],
            None if from == 0 => return Ok((None, partial)),
            None => {
                want *= 4;
                continue;
            }
        };
        match complete.iter().rposition(|b| *b == b'\n') {
            Some(start) => return Ok((Some(complete[start + 1..].to_vec()), partial)),
            None if from == 0 => return Ok((Some(complete.to_vec()), partial)),
            None => want *= 4,
        }
    }
}

/// Cuts an incomplete last line (a write cut short by a crash) off `path`: it was never part
/// of the chain (the head is written after the line). Returns the bytes cut.
pub fn cut_partial(path: &Path) -> io::Result<u64> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    let mut keep = len;
    let mut buf = vec![0u8; 64 * 1024];
    while keep > 0 {
        let from = keep.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(keep - from) as usize];
        f.read_exact_at(chunk, from)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            keep = from + i as u64 + 1;
            break;
        }
        keep = from;
    }
    f.set_len(keep)?;
    Ok(len - keep)
}

/// Where the chain goes on at start, and what did not add up.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// The last line written: its seq (0: none yet) and chain value.
    pub seq: u64,
    pub chain: Hash,
    /// Set when the log does not continue the head: reported as a `chain_gap` event.
    pub gap: Option<Gap>,
    /// The log ends in an incomplete line (a newline goes after it before anything else).
    pub partial: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    /// The last seq the head in data_dir says was written (None: no head).
    pub head_seq: Option<u64>,
    /// The last chained line found in the log (None: none).
    pub log_seq: Option<u64>,
    pub reason: String,
}

/// Compares the chain head in `data_dir` with the end of the log (`log`, or its newest
/// rotation when `log` is empty): the chain goes on from the later of the two, and whatever
/// does not match is a gap, never silently re-rooted.
pub fn resume(log: &Path, head: Option<(u64, Hash)>) -> io::Result<Resume> {
    let (mut last, partial) = last_line(log)?;
    if last.is_none() && !partial {
        let mut one = log.as_os_str().to_owned();
        one.push(".1");
        last = last_line(Path::new(&one))?.0;
    }
    let found = last.as_deref().and_then(|l| parse_line(l).ok()).map(|l| (l.fields.seq, l.chain));
    let gap = |reason: String| Some(Gap { head_seq: head.map(|h| h.0), log_seq: found.map(|f| f.0), reason });
    let (seq, chain, mut gap) = match (head, found) {
        (None, None) => (0, [0; 32], None),
        (Some((hs, hc)), Some((ls, lc))) if ls > hs || (ls == hs && lc == hc) => {
            let _ = hc;
            (ls, lc, None)
        }
        (Some((hs, hc)), Some((ls, _))) if ls == hs => {
            (hs, hc, gap(format!("the log's last line (seq {ls}) is not the line the daemon wrote: its chain differs")))
        }
        (Some((hs, hc)), Some((ls, _))) => (
            hs,
            hc,
            gap(format!("the log ends at seq {ls} but the daemon had written up to seq {hs}: {} lines are missing", hs - ls)),
        ),
        (Some((hs, hc)), None) => (
            hs,
            hc,
            gap(format!("the log holds no chained line but the daemon had written up to seq {hs} (moved away, emptied or replaced)")),
        ),
        (None, Some((ls, lc))) => (ls, lc, gap(format!("no chain head in data_dir: going on from the log's last line, seq {ls}"))),
    };
    if partial {
        let why = "the log ends in an incomplete line";
        match &mut gap {
            Some(g) => g.reason = format!("{}; {why}", g.reason),
            None => gap = Some(Gap { head_seq: head.map(|h| h.0), log_seq: found.map(|f| f.0), reason: why.into() }),
        }
    }
    Ok(Resume { seq, chain, gap, partial })
}

#[cfg(test)]
mod tests;
