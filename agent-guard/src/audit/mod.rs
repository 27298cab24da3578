//! Evidence from the events log: checking its hash chain (`log verify`), one run's story
//! (`show`) and the bundle a reviewer checks elsewhere (`evidence`).
pub mod verify;
pub mod bundle;
pub mod collect;
pub mod summary;
#[cfg(test)]
mod tests;
