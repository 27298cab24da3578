//! `agent-guard log verify` and `agent-guard log pubkey`.
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use ed25519_dalek::VerifyingKey;

use crate::{audit::verify, cli::Code, config::Config, output::chain};

/// The key that checkpoints must verify with: `--pubkey FILE`, else the host's own.
pub fn trusted_key(cfg: &Config, pubkey: Option<&PathBuf>) -> Result<VerifyingKey> {
    match pubkey {
        Some(file) => chain::read_pubkey(file).map_err(|e| anyhow!("--pubkey {e}")),
        None => chain::host_pubkey(&cfg.data_dir)
            .map_err(|e| anyhow!("no public key to verify with (pass --pubkey FILE, as `agent-guard log pubkey` prints it): {e}")),
    }
}

/// Checks `files` (default: events_log and its rotations, oldest first): 0 and a summary when
/// intact, 1 and the first bad line otherwise.
pub fn verify_cmd(cfg: &Config, pubkey: Option<PathBuf>, files: Vec<PathBuf>) -> Result<Code> {
    let key = trusted_key(cfg, pubkey.as_ref())?;
    let (files, head) = if files.is_empty() {
        // The head before the files: the daemon may write on meanwhile, never the other way.
        let head = chain::read_head(&cfg.data_dir);
        let files = chain::log_files(&cfg.events_log);
        if files.is_empty() {
            return Err(anyhow!("no events log at {}", cfg.events_log.display()));
        }
        (files, head)
    } else {
        (files, None)
    };
    match verify::verify(&files, &key, head) {
        Ok(r) => {
            println!("{r}; key {}", hex::encode(key.as_bytes()));
            Ok(0)
        }
        Err(p) => {
            eprintln!("{p}");
            Ok(1)
        }
    }
}

/// Prints the host's public key (hex, one line), for `--pubkey` elsewhere.
pub fn pubkey_cmd(cfg: &Config) -> Result<Code> {
    let key = chain::host_pubkey(&cfg.data_dir).map_err(|e| anyhow!("no log signing key in data_dir (the daemon makes it on first start): {e}"))?;
    println!("{}", hex::encode(key.as_bytes()));
    Ok(0)
}
