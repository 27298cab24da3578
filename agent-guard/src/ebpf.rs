//! Loading and attaching the kernel programs. One owner (the daemon's core) holds the result.
use agent_guard_common::{names, Config as KernelConfig, KernelOffsets, RunEntry};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};

/// The object built by build.rs from agent-guard-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-guard-ebpf"));

/// Tracepoint programs and where they attach (category, event).
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("ag_exec", "sched", "sched_process_exec"),
    ("ag_exit", "sched", "sched_process_exit"),
    ("ag_enter_openat", "syscalls", "sys_enter_openat"),
    ("ag_exit_openat", "syscalls", "sys_exit_openat"),
    ("ag_enter_open", "syscalls", "sys_enter_open"),
    ("ag_exit_open", "syscalls", "sys_exit_open"),
    ("ag_enter_creat", "syscalls", "sys_enter_creat"),
    ("ag_exit_creat", "syscalls", "sys_exit_creat"),
    ("ag_enter_openat2", "syscalls", "sys_enter_openat2"),
    ("ag_exit_openat2", "syscalls", "sys_exit_openat2"),
    ("ag_enter_connect", "syscalls", "sys_enter_connect"),
    ("ag_exit_connect", "syscalls", "sys_exit_connect"),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object failed: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(String),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The loaded programs and the maps userspace works with.
pub struct Loaded {
    /// Keeps programs and links alive; dropping it detaches everything.
    pub ebpf: Ebpf,
    pub runs: HashMap<MapData, u64, RunEntry>,
    pub drops: PerCpuArray<MapData, u64>,
    pub events: RingBuf<MapData>,
}

/// Loads the object with this daemon's cgroup root and the kernel's offsets, and attaches
/// every program. Errors carry the verifier log.
pub fn load(cfg: &KernelConfig, offsets: &KernelOffsets, ring_bytes: u32) -> Result<Loaded, LoadError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::EVENTS, ring_bytes)
        .override_global(names::CONFIG, cfg, true)
        .override_global(names::OFFSETS, offsets, true)
        .load(OBJECT)
        .map_err(LoadError::Object)?;
    for (name, category, event) in TRACEPOINTS {
        let prog: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::MissingProgram(name.to_string()))?
            .try_into()
            .map_err(|source| LoadError::Program { name: name.to_string(), source })?;
        prog.load().map_err(|source| LoadError::Program { name: name.to_string(), source })?;
        prog.attach(category, event)
            .map_err(|source| LoadError::Program { name: format!("{name} ({category}:{event})"), source })?;
    }
    let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(LoadError::MissingMap(name));
    let runs = take(&mut ebpf, names::RUNS)?;
    let drops = take(&mut ebpf, names::DROPS)?;
    let events = take(&mut ebpf, names::EVENTS)?;
    Ok(Loaded {
        runs: HashMap::try_from(runs).map_err(|source| LoadError::Map { name: names::RUNS, source })?,
        drops: PerCpuArray::try_from(drops).map_err(|source| LoadError::Map { name: names::DROPS, source })?,
        events: RingBuf::try_from(events).map_err(|source| LoadError::Map { name: names::EVENTS, source })?,
        ebpf,
    })
}
