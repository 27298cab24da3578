//! agent-guard: a host-level sandbox monitor for AI-agent runs.
//!
//! Kernel programs (agent-guard-ebpf) watch the processes of runs (cgroups below the managed
//! root); the daemon loads them, registers runs and streams their events as JSON lines.
pub mod access;
pub mod backend;
pub mod bind;
pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod ebpf;
pub mod event;
pub mod hold;
pub mod feed;
pub mod landlock;
pub mod metrics;
pub mod policies;
pub mod policy;
pub mod respond;
pub mod run;
pub mod notify;
pub mod sink;
pub mod state;
