//! Per-CPU scratch space: room to rebuild a path, where its components start, and the state
//! of a trie match over it (see `policy`).
use agent_guard_common::{FileNodeKey, FileNodeShortKey, PATH_DEPTH_MAX, PATH_MAX};
use aya_ebpf::{macros::map, maps::PerCpuArray};

#[repr(C)]
pub struct MatchState {
    pub ruleset: u32,
    pub node: u32,
    /// Components matched so far (from the root).
    pub i: u32,
    pub n: u32,
    pub access: u32,
    pub exec: u32,
    /// The whole path is a `[decoys] files` entry.
    pub decoy: u32,
    pub _pad: u32,
}

/// Room to rebuild a path right to left (see `kernel::path_to_buf`), where its components
/// start, and a trie key to match it with (see `policy`).
#[repr(C)]
pub struct Scratch {
    pub buf: [u8; 2 * PATH_MAX],
    /// Offsets in `buf` of the '/' before each component, leaf first.
    pub comps: [u32; PATH_DEPTH_MAX as usize],
    /// Components recorded by the walk in progress. Loop state lives here rather than on
    /// the stack so that the verifier sees unknown values and checks a loop body once,
    /// instead of once per distinct constant.
    pub ncomps: u32,
    pub _pad: u32,
    pub m: MatchState,
    pub key: FileNodeKey,
    /// The key of a short component (see `SHORT_NAME_BYTES`).
    pub short: FileNodeShortKey,
}

#[map]
static AG_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn scratch() -> Option<*mut u8> {
    AG_SCRATCH.get_ptr_mut(0).map(|s| s.cast::<u8>())
}

#[inline(always)]
pub fn scratch_all() -> Option<*mut Scratch> {
    AG_SCRATCH.get_ptr_mut(0)
}

