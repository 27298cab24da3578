//! The kernel side, through aya: loading, pinning and attaching the programs, the backend in
//! force, BTF offsets, the maps that hold the compiled rule sets, and when the syscall check
//! is needed (ondemand).
pub mod backend;
pub mod btf;
pub mod dns;
pub mod load;
pub mod mounts;
pub mod ondemand;
pub mod rawbpf;
pub mod rules;
pub mod sockaddr_unix;
pub mod trampoline;
pub mod trie;
