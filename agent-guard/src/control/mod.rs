//! The control socket: the protocol (one JSON object per line each way), who may connect,
//! and the daemon's side of incident response.
pub mod incident;
mod lines;
pub mod server;
pub mod tasks;
pub mod peer;
pub mod seccomp;
mod protocol;
mod views;
#[cfg(test)]
mod fuzz;
pub use protocol::*;
