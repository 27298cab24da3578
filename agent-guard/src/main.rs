use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use agent_guard::{config, daemon, run};
use clap::{Parser, Subcommand};

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
    Daemon,
    /// Run a command as an agent run in its own cgroup, watched from its first instruction
    #[command(arg_required_else_help = true)]
    Run {
        /// A human name for the run, carried by its events
        #[arg(long)]
        name: Option<String>,
        /// A label carried by every event of the run (repeatable)
        #[arg(long = "label", value_name = "K=V", value_parser = run::parse_label)]
        labels: Vec<(String, String)>,
        /// The command and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Cmd::Daemon => {
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
        Cmd::Run { name, labels, argv } => {
            let labels: BTreeMap<_, _> = labels.into_iter().collect();
            match run::run(&cfg, run::RunArgs { name, labels, argv }) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("agent-guard run: {e:#}");
                    ExitCode::from(run::EXIT_SETUP_FAILED as u8)
                }
            }
        }
    }
}
