//! What `hold_show`, `task_start` and `ps` answer with about holds and tasks.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A hold as `hold_show` gives it: what `approve` then names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HoldView {
    /// The run's id.
    pub run: String,
    pub hold: u64,
    /// Each attempt as a person reads it (control characters escaped).
    pub attempts: Vec<String>,
}

/// A task of a run, as `task_start` and `ps` give it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TaskStatus {
    pub id: String,
    /// The run's id.
    pub run: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The effective policy's name (the run's, or `RUN~TASK@HASH` for an intersection).
    #[serde(default)]
    pub policy: Option<String>,
    /// Relative to the cgroup2 mount, with a leading /.
    pub cgroup: String,
    #[serde(default)]
    pub processes: u64,
    /// running | frozen
    #[serde(default)]
    pub state: String,
}
