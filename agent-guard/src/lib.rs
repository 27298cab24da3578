//! agent-guard: a host-level sandbox monitor for AI-agent runs.
//!
//! Kernel programs (agent-guard-ebpf) watch the processes of runs (cgroups below the managed
//! root); the daemon loads them, registers runs and streams their events as JSON lines.
//!
//! Layers, each depending only on those above it:
//! - [`config`], [`policy`]: pure; the daemon's configuration and the policy model, parser,
//!   compiler and evaluator;
//! - [`kernel`]: aya; loading, pinning and attaching the programs, the backend, BTF offsets,
//!   the rule-set maps;
//! - [`output`]: the event model, the log, the recent-events feed, metrics;
//! - [`runs`]: cgroups, the launcher of `agent-guard run`, responses (freeze/thaw/kill),
//!   holds' evidence, bindings, the Landlock layer;
//! - [`control`]: the control-socket protocol, the peer check and the daemon's server;
//! - [`daemon`]: wiring: start-up, adoption, reload, uninstall;
//! - [`audit`]: the events log's chain checked, one run's lines, summary and evidence bundle;
//! - [`cli`]: the incident-response commands.
pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod kernel;
pub mod output;
pub mod policy;
pub mod runs;
#[cfg(test)]
mod fuzzing;
