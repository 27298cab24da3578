//! Runs: cgroups below the managed root, the launcher of `agent-guard run`, responses
//! (freeze, thaw, kill), holds' evidence, bound cgroups, and the Landlock layer.
pub mod bind;
pub mod cgroup;
pub mod hold;
pub mod landlock;
pub mod launch;
pub mod pids;
pub mod privileges;
pub mod respond;
pub mod session;
pub mod seccomp;
pub mod evidence;
pub mod escape;
pub mod task;
pub mod grant;
