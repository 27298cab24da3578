//! What the daemon reports: the event model and its JSON-lines form, the events log, the
//! recent-events feed, and Prometheus metrics.
pub mod chain;
pub mod chained;
pub mod event;
pub mod feed;
pub mod metrics;
pub mod sink;
pub mod text;
pub mod ring;
#[cfg(test)]
mod fuzz;
