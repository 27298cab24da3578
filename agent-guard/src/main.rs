use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use agent_guard::{cli, config, control, daemon, policy, runs::launch as run, runs::respond::Action};
use clap::{Args, Parser, Subcommand};

/// Host-level sandbox monitor for AI-agent runs.
#[derive(Parser)]
#[command(name = "agent-guard", version, about, long_about = None)]
struct Cli {
    /// Configuration file [default: /etc/agent-guard/config.toml, defaults if absent]
    #[arg(long, global = true, env = "AGENT_GUARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the kernel programs and stream the events of runs (foreground; needs root)
    Daemon {
        /// Instead: detach and remove every program, link and map pinned under bpffs_dir, and
        /// the state records (the daemon must be stopped; live runs lose enforcement)
        #[arg(long)]
        uninstall: bool,
    },
    /// Run a command as an agent run in its own cgroup, watched from its first instruction
    #[command(arg_required_else_help = true)]
    Run {
        /// Policy to enforce: the name of a loaded policy, or a policy file (a path)
        #[arg(long, value_name = "NAME|FILE")]
        policy: Option<String>,
        /// A human name for the run, carried by its events
        #[arg(long)]
        name: Option<String>,
        /// A label carried by every event of the run (repeatable)
        #[arg(long = "label", value_name = "K=V", value_parser = run::parse_label)]
        labels: Vec<(String, String)>,
        /// Run the command as USER[:GROUP] (names or ids; root only). Default: the policy's
        /// [process] user, else the caller
        #[arg(long, value_name = "USER[:GROUP]")]
        user: Option<String>,
        /// The command and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Run a command as a task of a run: its own id, labels and a policy that can only narrow
    /// the run's (from inside the run, or with --run from outside)
    Task {
        /// The run (id or name), when called from outside it (needs the control socket's rights)
        #[arg(long)]
        run: Option<String>,
        /// The task's id, e.g. the harness's tool-call id (default: t-XXXXXX)
        #[arg(long)]
        id: Option<String>,
        /// A label carried by every event of the task (repeatable)
        #[arg(long = "label", value_name = "K=V", value_parser = run::parse_label)]
        labels: Vec<(String, String)>,
        /// The task's policy: a loaded policy's name or a policy file; the task gets what both
        /// it and the run allow
        #[arg(long, value_name = "NAME|FILE")]
        policy: Option<String>,
        /// The command and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Policies: check, apply, list, show; suggest one from runs, diff two, history, rollback
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Tripwires: plant the decoy files of a policy
    #[command(subcommand)]
    Decoy(DecoyCmd),
    /// Answer a hold for review: show the held attempts, grant exactly those and let the run go on
    Approve {
        /// The held run: its id or name
        run: String,
        /// Grant the access for the rest of the run (default: once)
        #[arg(long)]
        for_run: bool,
        /// The number of attempts you reviewed (the held events): any other number approves nothing
        #[arg(long, value_name = "N")]
        attempts: Option<usize>,
        /// Do not ask on a terminal
        #[arg(long, short)]
        yes: bool,
    },
    /// Answer a hold for review: the violation stands, and the run goes on without it
    Deny {
        /// The held run: its id or name
        run: String,
        /// Also kill the whole run
        #[arg(long)]
        kill: bool,
    },
    /// List runs and bound cgroups: id, name, policy, state, processes, violations, age
    /// (exit 3 when the daemon is not running)
    Ps {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// List each run's tasks under it (`agent-guard task`)
        #[arg(long)]
        tasks: bool,
    },
    /// Freeze every process of a run at once (cgroup freezer); prints how long it took
    #[command(after_help = RUN_HELP)]
    Freeze {
        /// The run: run id, name, cgroup path or a pid in it
        #[arg(value_name = "RUN")]
        run: String,
    },
    /// Thaw a frozen run
    #[command(after_help = RUN_HELP)]
    Thaw {
        /// The run: run id, name, cgroup path or a pid in it
        #[arg(value_name = "RUN")]
        run: String,
    },
    /// Kill every process of a run (cgroup.kill, which also takes processes forked meanwhile)
    /// and remove its cgroup
    #[command(after_help = RUN_HELP)]
    Kill {
        /// The run: run id, name, cgroup path or a pid in it
        #[arg(value_name = "RUN")]
        run: String,
    },
    /// Print the daemon's recent events (the last 10000), optionally one run's, and follow
    /// new ones (exit 3 when the daemon is not running)
    Events {
        /// Keep printing new events until interrupted
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the events of this run (run id, name, cgroup path or a pid in it)
        #[arg(long, value_name = "RUN")]
        run: Option<String>,
        /// Print the events' JSON lines instead of the human lines
        #[arg(long)]
        json: bool,
        /// Only violations: deny, kill, hold and would_deny
        #[arg(long)]
        violations: bool,
        /// Only events since WHEN: a duration ago (30s, 10m, 2h) or a time (RFC 3339, UTC)
        #[arg(long, value_name = "WHEN", value_parser = cli::parse_since)]
        since: Option<String>,
        /// Of the events the daemon still holds, only the last N (with --follow: then the new ones)
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// The events log's hash chain: verify it, print the key its checkpoints verify with
    #[command(subcommand)]
    Log(LogCmd),
    /// One run's evidence bundle (tar.gz: run record, policies, its events with their chain
    /// fields, holds, the covering checkpoints, summary.md); `evidence verify FILE` checks one
    Evidence(EvidenceArgs),
    /// A run's timeline from the events log: start, violations, holds and answers, freezes, end
    Show {
        /// The run: its id or name
        run: String,
    },
    /// The daemon's state: pid, uptime, paths, runs, policies, what is attached, drops
    /// (exit 3 when the daemon is not running)
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

const RUN_HELP: &str = "RUN is a run id (r-7f3a21, or b-<cgroup id> for a bound cgroup), a run name, a cgroup \
path (absolute, or relative to the cgroup2 mount) or the pid of a process in the run. An unknown \
or ambiguous RUN is an error that lists the runs.\n\nWhen the daemon is not running, freeze, thaw \
and kill act on cgroupfs directly (as root, on runs below the managed root, by id, path or pid); \
no event is recorded then.";

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true, arg_required_else_help = true)]
struct EvidenceArgs {
    #[command(subcommand)]
    cmd: Option<EvidenceCmd>,
    /// The run: its id or name (live, or finished while its events are in the log)
    #[arg(value_name = "RUN", required = true)]
    run: Option<String>,
    /// Where to write the bundle [default: evidence-RUN.tar.gz]
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Subcommand)]
enum EvidenceCmd {
    /// Check a bundle: its events are the chained lines under a valid checkpoint signature,
    /// and summary.md, run.json, holds.json and the policy texts are what they make (exit 0),
    /// or name what is wrong (exit 1)
    Verify {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The host's public key [default: the one in the bundle, which proves integrity only]
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LogCmd {
    /// Check that every line is chained to the one before and every checkpoint is signed by
    /// the host key: exit 0 and a summary, or 1 naming the first bad file:line and what is
    /// wrong (edited, deleted, reordered, truncated, bad checkpoint signature)
    Verify {
        /// The public key to verify checkpoints with [default: the host's, in data_dir]
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
        /// Log files, oldest first [default: events_log's rotations, then events_log]
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the host's public key (hex), to verify the log or a bundle elsewhere
    Pubkey,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate policy files without a daemon: errors name file:line:column (exit 1)
    #[command(arg_required_else_help = true)]
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Load or replace a policy in the running daemon, atomically for every run bound to it
    Apply {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// The policies the daemon has loaded
    List {
        #[arg(long)]
        json: bool,
    },
    /// A loaded policy's text and version, or with NAME@VERSION that version from the history
    Show {
        #[arg(value_name = "NAME[@VERSION]")]
        name: String,
    },
    /// Print a policy built from what runs did: each rule with its evidence, likely secrets
    /// never allowed (stderr warns); with --base, only the additions that policy needs
    #[command(arg_required_else_help = true)]
    Suggest {
        /// A run to learn from (id or name), finished or not: its events in the daemon's buffer,
        /// else in events_log (repeatable)
        #[arg(long = "run", value_name = "RUN")]
        runs: Vec<String>,
        /// A JSON-lines events file (the events log, a rotated one); with --run, only those
        /// runs' events (repeatable)
        #[arg(long = "events", value_name = "FILE")]
        events: Vec<PathBuf>,
        /// Suggest only what this policy lacks, from its would_deny and deny events
        #[arg(long, value_name = "NAME|FILE")]
        base: Option<String>,
        /// The suggested policy's name [default: the base's, else the runs' policy's]
        #[arg(long)]
        name: Option<String>,
    },
    /// What NEW allows that OLD did not, and the reverse, per section (exit 0 equal, 1
    /// different, 2 on error). OLD and NEW: a file, a loaded policy's name, or NAME@VERSION
    Diff {
        old: String,
        new: String,
        #[arg(long)]
        json: bool,
    },
    /// Every version of a policy the daemon applied: number, time, version, result, who, source
    History {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Apply an earlier version again, atomically like apply (default: the one before the
    /// version in force)
    Rollback {
        name: String,
        /// A number from `policy history`, or sha256:HEX
        version: Option<String>,
    },
}

#[derive(Subcommand)]
enum DecoyCmd {
    /// Create the policy's [decoys] files that do not exist (fake content with a marker unique
    /// to this host, mode 0600); never overwrites a file
    Plant {
        /// The policy file
        policy: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Decoy(DecoyCmd::Plant { policy }) = &cli.command {
        // Needs no daemon and no config.
        return ExitCode::from(cli::decoy::plant(policy, &mut std::io::stdout(), &mut std::io::stderr()));
    }
    if let Cmd::Policy(PolicyCmd::Check { files }) = &cli.command {
        // Needs no daemon and no config.
        let code = policy::check_files_on(files, &mut std::io::stdout(), &mut std::io::stderr(), &agent_guard::runs::landlock::review);
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    // Inside a run, `agent-guard task` needs only the task socket, which `agent-guard run`
    // hands down (the configuration file is agent-guard's own state: a run may not read it).
    if let (Cmd::Task { run: None, .. }, Some(sock)) = (&cli.command, std::env::var_os(run::TASK_SOCKET_ENV)) {
        let cfg = config::Config { task_socket: sock.into(), ..Default::default() };
        if let Cmd::Task { run, id, labels, policy, argv } = cli.command {
            return task_cmd(&cfg, run, id, labels, policy, argv);
        }
    }
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_PATH), false),
    };
    let cfg = match config::Config::load(&path, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent-guard: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Cmd::Daemon { uninstall: true } => match daemon::uninstall(&cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent-guard daemon --uninstall: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Daemon { uninstall: false } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            match daemon::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("agent-guard daemon: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Policy(PolicyCmd::Diff { old, new, json }) => match cli::policy::diff(&cfg, &old, &new, json) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("agent-guard policy diff: {e:#}");
                ExitCode::from(cli::policy::EXIT_TROUBLE)
            }
        },
        Cmd::Policy(PolicyCmd::Suggest { runs, events, base, name }) => {
            incident("policy suggest", cli::policy::suggest(&cfg, cli::policy::SuggestArgs { runs, events, base, name }))
        }
        Cmd::Policy(PolicyCmd::History { name, json }) => incident("policy history", cli::policy::history(&cfg, &name, json)),
        Cmd::Policy(PolicyCmd::Rollback { name, version }) => incident("policy rollback", cli::policy::rollback(&cfg, &name, version)),
        Cmd::Policy(PolicyCmd::Show { name }) if name.contains('@') => {
            let (name, version) = name.split_once('@').unwrap_or_default();
            incident("policy show", cli::policy::show_version(&cfg, name, version))
        }
        Cmd::Policy(cmd) => match policy_cmd(&cfg, cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent-guard policy: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Decoy(DecoyCmd::Plant { policy }) => ExitCode::from(cli::decoy::plant(&policy, &mut std::io::stdout(), &mut std::io::stderr())),
        Cmd::Approve { run, for_run, attempts, yes } => incident("approve", cli::approve(&cfg, run, for_run, attempts, yes)),
        Cmd::Deny { run, kill } => answer(&cfg, control::Request::Deny { run, kill }),
        Cmd::Ps { json, tasks } => incident("ps", cli::ps(&cfg, json, tasks)),
        Cmd::Freeze { run } => incident("freeze", cli::act(&cfg, Action::Freeze, &run)),
        Cmd::Thaw { run } => incident("thaw", cli::act(&cfg, Action::Thaw, &run)),
        Cmd::Kill { run } => incident("kill", cli::act(&cfg, Action::Kill, &run)),
        Cmd::Events { follow, run, json, violations, since, tail } => {
            let req = control::Request::Events { run, follow, json, violations, since, tail };
            incident("events", cli::events(&cfg, req))
        }
        Cmd::Log(LogCmd::Verify { pubkey, files }) => incident("log verify", cli::log::verify_cmd(&cfg, pubkey, files)),
        Cmd::Log(LogCmd::Pubkey) => incident("log pubkey", cli::log::pubkey_cmd(&cfg)),
        Cmd::Evidence(EvidenceArgs { cmd: Some(EvidenceCmd::Verify { file, pubkey }), .. }) => {
            incident("evidence verify", cli::evidence::verify_cmd(&cfg, &file, pubkey))
        }
        Cmd::Evidence(EvidenceArgs { cmd: None, run, output }) => {
            incident("evidence", cli::evidence::evidence_cmd(&cfg, run.as_deref().unwrap_or_default(), output))
        }
        Cmd::Show { run } => incident("show", cli::evidence::show_cmd(&cfg, &run)),
        Cmd::Status { json } => incident("status", cli::status(&cfg, json)),
        Cmd::Task { run, id, labels, policy, argv } => task_cmd(&cfg, run, id, labels, policy, argv),
        Cmd::Run { policy, name, labels, user, argv } => {
            let labels: BTreeMap<_, _> = labels.into_iter().collect();
            match run::run(&cfg, run::RunArgs { policy, name, labels, user, argv }) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("agent-guard run: {e:#}");
                    ExitCode::from(run::EXIT_SETUP_FAILED as u8)
                }
            }
        }
    }
}

fn task_cmd(
    cfg: &config::Config,
    run: Option<String>,
    id: Option<String>,
    labels: Vec<(String, String)>,
    policy: Option<String>,
    argv: Vec<String>,
) -> ExitCode {
    let labels: BTreeMap<_, _> = labels.into_iter().collect();
    match cli::task(cfg, cli::TaskArgs { run, id, labels, policy, argv }) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("agent-guard task: {e:#}");
            ExitCode::from(run::EXIT_SETUP_FAILED as u8)
        }
    }
}

fn answer(cfg: &config::Config, req: control::Request) -> ExitCode {
    match control::call(&cfg.control_socket, req) {
        Ok(r) => {
            println!("{}", r.text.unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent-guard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn incident(what: &str, r: anyhow::Result<cli::Code>) -> ExitCode {
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("agent-guard {what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn policy_cmd(cfg: &config::Config, cmd: PolicyCmd) -> anyhow::Result<()> {
    use anyhow::Context;
    match cmd {
        PolicyCmd::Check { .. } => unreachable!("handled before the config is read"),
        PolicyCmd::Suggest { .. } | PolicyCmd::Diff { .. } | PolicyCmd::History { .. } | PolicyCmd::Rollback { .. } => {
            unreachable!("handled in cli::policy")
        }
        PolicyCmd::Apply { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let source = file.display().to_string();
            let r = control::call(&cfg.control_socket, control::Request::PolicyApply { file: control::PolicyText { source, text } })?;
            let p = r.policy.context("daemon did not describe the policy")?;
            match r.result.as_deref() {
                Some("unchanged") => println!("policy {} unchanged ({})", p.name, p.version),
                _ => println!("policy {} applied: {} ({} mode)", p.name, p.version, p.mode),
            }
        }
        PolicyCmd::List { json } => {
            let r = control::call(&cfg.control_socket, control::Request::PolicyList)?;
            let list = r.policies.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<24} {:<8} {:<8} {:<20} SOURCE", "NAME", "MODE", "ACTION", "VERSION");
                for p in list {
                    let short: String = p.version.chars().take(19).collect();
                    println!("{:<24} {:<8} {:<8} {:<20} {}", p.name, p.mode, p.on_violation, short, p.source);
                }
            }
        }
        PolicyCmd::Show { name } => {
            let r = control::call(&cfg.control_socket, control::Request::PolicyShow { name })?;
            let p = r.policy.context("daemon did not describe the policy")?;
            println!("# {} {} (from {})", p.name, p.version, p.source);
            print!("{}", r.text.unwrap_or_default());
        }
    }
    Ok(())
}
