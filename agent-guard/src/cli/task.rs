//! `agent-guard task`: runs a command as a task of a run (see `runs::task`). From inside a run
//! (the usual case: a harness in the run wraps each tool call) it asks on the task socket and
//! needs no privileges; with `--run RUN`, from outside, on the control socket.
use std::{
    collections::BTreeMap,
    os::unix::process::{CommandExt, ExitStatusExt},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    config::Config,
    control::{self, PolicyText, Request},
    runs::landlock,
};

pub struct TaskArgs {
    pub run: Option<String>,
    pub id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub policy: Option<String>,
    pub argv: Vec<String>,
}

/// Runs the task; returns the command's status as `run` reports it (128+N when killed by
/// signal N).
pub fn task(cfg: &Config, args: TaskArgs) -> Result<i32> {
    if args.argv.is_empty() {
        bail!("no command given: agent-guard task [OPTIONS] -- CMD [ARG]...");
    }
    let socket = if args.run.is_some() { &cfg.control_socket } else { &cfg.task_socket };
    let (policy, policy_file) = match &args.policy {
        None => (None, None),
        Some(p) if p.contains('/') || p.ends_with(".toml") => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading policy file {p}"))?;
            (None, Some(PolicyText { source: p.clone(), text }))
        }
        Some(name) => (Some(name.clone()), None),
    };
    // One connection for the task's requests: once this process is in the task (from outside a
    // run: in a run's cgroup), it may no longer connect to the control socket, but it may
    // still use a connection it has.
    let mut client = control::Client::new(socket);
    let started = client.call(
        Request::TaskStart { run: args.run.clone(), id: args.id.clone(), labels: args.labels.clone(), policy, policy_file, argv: args.argv.clone() },
    )?;
    let Some(t) = started.task else { bail!("the daemon started no task") };
    if let Some(notes) = &started.text {
        for n in notes.lines() {
            eprintln!("agent-guard task: {n}: no effect (a task can only narrow its run)");
        }
    }
    let task_id = t.id.clone();
    let end = move |client: &mut control::Client, status: Option<i32>| {
        let req = || Request::TaskEnd { task: task_id.clone(), exit_status: status };
        // The task socket closes idle connections: then once more on a new one.
        let r = match client.call(req()) {
            Err(control::ClientError::Io { .. }) => control::call(socket, req()),
            r => r,
        };
        if let Err(e) = r {
            eprintln!("agent-guard task: ending task {task_id}: {e}");
        }
    };
    // The task's Landlock layer, stacked on the run's (Landlock layers only ever narrow).
    let layer = if cfg.landlock { landlock::prepare(started.landlock.as_ref()) } else { Default::default() };
    for w in &layer.warnings {
        eprintln!("agent-guard task: {w}");
    }
    // This process joins the task first, so the command starts inside it from its first
    // instruction (spawn returns only once the command has exec'd: nothing may wait for the
    // parent between fork and exec).
    if let Err(e) = client.call(Request::TaskJoin { task: t.id.clone(), pid: std::process::id() }) {
        end(&mut client, None);
        bail!("joining task {}: {e}", t.id);
    }
    let mut cmd = Command::new(&args.argv[0]);
    cmd.args(&args.argv[1..]).env("AGENT_GUARD_TASK", &t.id);
    if let Some(l) = layer.layer {
        // SAFETY: the prepared Landlock layer, applied as `agent-guard run` applies its own.
        unsafe {
            cmd.pre_exec(move || l.apply());
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            end(&mut client, None);
            return Err(e).with_context(|| format!("starting {}", args.argv[0]));
        }
    };
    let status = child.wait().context("waiting for the task's command")?;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    end(&mut client, Some(code));
    Ok(code)
}
