//! `agent-guard approve`: shows the hold's attempts, then approves exactly those.
use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};

use crate::{config::Config, control::{self, Request}};

/// Shows the hold of `run` and approves exactly the attempts shown (the daemon refuses the
/// approval if the hold changed in between). `expect`: the number of attempts the responder
/// reviewed elsewhere (the held events): a different number approves nothing. On a terminal
/// without `yes`, asks first.
pub fn approve(cfg: &Config, run: String, for_run: bool, expect: Option<usize>, yes: bool) -> Result<super::Code> {
    let shown = control::call(&cfg.control_socket, Request::HoldShow { run: run.clone() })?;
    let Some(h) = shown.hold else { bail!("the daemon sent no hold for {run}") };
    println!("hold {} of run {}: {} attempt(s)", h.hold, h.run, h.attempts.len());
    for (i, a) in h.attempts.iter().enumerate() {
        println!("  {}. {a}", i + 1);
    }
    if let Some(n) = expect.filter(|n| *n != h.attempts.len()) {
        bail!("{n} attempt(s) expected, the hold has {}: nothing approved", h.attempts.len());
    }
    if !yes && std::io::stdin().is_terminal() {
        print!("approve {} these {}? [y/N] ", if for_run { "for the rest of the run" } else { "once" }, h.attempts.len());
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            println!("nothing approved");
            return Ok(1);
        }
    }
    let req = Request::Approve { run: h.run, for_run, hold: Some(h.hold), attempts: Some(h.attempts.len()) };
    let r = control::call(&cfg.control_socket, req)?;
    println!("{}", r.text.unwrap_or_default());
    Ok(0)
}
