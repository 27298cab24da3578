//! `agent-guard evidence RUN`, `agent-guard evidence verify FILE` and `agent-guard show RUN`:
//! read the events log directly (as root, where the daemon writes it).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{anyhow, Context, Result};

use crate::{
    audit::{bundle, collect, summary},
    cli::{log::trusted_key, Code},
    config::Config,
    control::{self, Request},
    output::{chain, event::rfc3339},
};

fn log_files(cfg: &Config) -> Result<Vec<PathBuf>> {
    let files = chain::log_files(&cfg.events_log);
    if files.is_empty() {
        return Err(anyhow!("no events log at {}", cfg.events_log.display()));
    }
    Ok(files)
}

/// The texts of the policy versions the run was judged under that this host still has: the
/// daemon's loaded policies, else the daemon's saved records in state_dir.
fn policy_texts(cfg: &Config, wanted: &std::collections::BTreeSet<(String, String)>) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let mut offer = |text: &str, source: &str| {
        if let Some(p) = crate::policy::parse(text, source).policy {
            let k = (p.name, p.version);
            if wanted.contains(&k) {
                out.entry(k).or_insert_with(|| text.to_string());
            }
        }
    };
    for (name, _) in wanted {
        if let Ok(r) = control::call(&cfg.control_socket, Request::PolicyShow { name: name.clone() }) {
            if let Some(text) = r.text {
                offer(&text, name);
            }
        }
    }
    if let Ok(state) = crate::daemon::state::State::open(&cfg.state_dir) {
        for p in state.policies().0 {
            offer(&p.text, &p.source);
        }
    }
    out
}

/// Writes the evidence bundle of run `spec` to `output` (default: evidence-RUN.tar.gz here).
pub fn evidence_cmd(cfg: &Config, spec: &str, output: Option<PathBuf>) -> Result<Code> {
    let files = log_files(cfg)?;
    let mut c = collect::collect(&files, spec).map_err(anyhow::Error::new)?;
    if !c.covered() {
        // A live run, or one the daemon has not signed yet: ask for a checkpoint now.
        control::call(&cfg.control_socket, Request::Checkpoint).map_err(|e| {
            anyhow!("run {}: its last events are not under a checkpoint yet, and the daemon could not write one: {e}", c.run)
        })?;
        c = collect::collect(&log_files(cfg)?, &c.run).map_err(anyhow::Error::new)?;
        if !c.covered() {
            return Err(anyhow!("run {}: its last events are still not under a checkpoint", c.run));
        }
    }
    let key = chain::host_pubkey(&cfg.data_dir).map_err(|e| anyhow!("the host's public key: {e}"))?;
    let events = summary::parse_events(c.events.iter().map(|e| e.text.as_str()));
    let texts = policy_texts(cfg, &summary::policies(&events));
    let now = SystemTime::now();
    let members = bundle::members(&c, &key, &texts, &rfc3339(now));
    let out = output.unwrap_or_else(|| PathBuf::from(format!("evidence-{}.tar.gz", c.run)));
    let file = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mtime = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    bundle::write_tar_gz(std::io::BufWriter::new(file), &format!("evidence-{}", c.run), &members, mtime)
        .with_context(|| format!("writing {}", out.display()))?;
    let run_lines = c.events.iter().filter(|e| e.parsed.fields.run.as_deref() == Some(c.run.as_str())).count();
    println!(
        "{}: run {}, {run_lines} events (log seq {}..{}), covered by the checkpoint at seq {}",
        out.display(),
        c.run,
        c.start_seq,
        c.events.last().map_or(0, |e| e.parsed.fields.seq),
        c.checkpoints.last().map_or(0, |e| e.parsed.fields.seq)
    );
    Ok(0)
}

/// Verifies a bundle: 0 and a summary, or 1 and what is wrong (FILE:member:line).
pub fn verify_cmd(cfg: &Config, file: &Path, pubkey: Option<PathBuf>) -> Result<Code> {
    let members = match bundle::read_bundle(file) {
        Ok(m) => m,
        Err(p) => {
            eprintln!("{}: {p}", file.display());
            return Ok(1);
        }
    };
    let (key, whose) = match &pubkey {
        Some(_) => (trusted_key(cfg, pubkey.as_ref())?, "the key given with --pubkey".to_string()),
        None => {
            let text = members.get("pubkey").map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            match chain::parse_pubkey(&text) {
                Ok(k) => (k, "the bundle's own key (pass --pubkey with the host's key to prove where it comes from)".into()),
                Err(e) => {
                    eprintln!("{}: pubkey: {e}", file.display());
                    return Ok(1);
                }
            }
        }
    };
    match bundle::verify(&members, &key) {
        Ok(v) => {
            println!(
                "{}: intact: run {}, {} events (log seq {}..{}) under the checkpoint at seq {}, signed by {} ({whose}); policy texts {} of {}",
                file.display(),
                v.run,
                v.events,
                v.first_seq,
                v.last_seq,
                v.checkpoint_seq,
                hex::encode(key.as_bytes()),
                v.policies_with_text,
                v.policies
            );
            Ok(0)
        }
        Err(p) => {
            eprintln!("{}: {p}", file.display());
            Ok(1)
        }
    }
}

/// Prints a run's summary (the timeline of summary.md) from the log.
pub fn show_cmd(cfg: &Config, spec: &str) -> Result<Code> {
    let c = collect::collect(&log_files(cfg)?, spec).map_err(anyhow::Error::new)?;
    let events = summary::parse_events(c.events.iter().map(|e| e.text.as_str()));
    print!("{}", summary::summary(&c.run, &events));
    Ok(0)
}
