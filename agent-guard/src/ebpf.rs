//! Loading and attaching the kernel programs. One owner (the daemon's core) holds the result.
use std::path::Path;

use agent_guard_common::{names, Config as KernelConfig, KernelOffsets, RunEntry};
use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, TracePoint},
    Ebpf, EbpfLoader,
};

use crate::policies::PolicyMaps;

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
    ("ag_exit_sendto", "syscalls", "sys_exit_sendto"),
    ("ag_exit_sendmsg", "syscalls", "sys_exit_sendmsg"),
    ("ag_exit_sendmmsg", "syscalls", "sys_exit_sendmmsg"),
    ("ag_exit_socket", "syscalls", "sys_exit_socket"),
];

/// The syscall check: a raw tracepoint (cheaper per hit than a perf-event tracepoint), run by
/// every syscall on the host. Loaded at start, attached only while some run or bound cgroup
/// has a policy (see `attach_syscall_hook`): idle hosts do not pay for it.
const SYS_ENTER: (&str, &str) = ("ag_sys_enter", "sys_enter");

/// cgroup sock_addr programs, attached to the managed root (never to any other cgroup).
/// aya attaches them with bpf_link, which always lets other links coexist on the cgroup
/// and refuses attach flags: hence `CgroupAttachMode::Single` (no flags).
const SOCK_ADDR: &[&str] = &["ag_connect4", "ag_connect6", "ag_sendmsg4", "ag_sendmsg6"];
const SOCK_CREATE: &str = "ag_sock_create";

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
    #[error("cannot open the managed cgroup {0}: {1}")]
    Cgroup(String, #[source] std::io::Error),
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
    pub policy: PolicyMaps,
    pub bound: HashMap<MapData, u64, RunEntry>,
    pub bind_on: Array<MapData, u32>,
}

/// The links of the network programs on one cgroup (for `[bind] cgroups`).
pub struct CgroupLinks {
    sock_addr: Vec<(&'static str, aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId)>,
    sock: Option<aya::programs::cgroup_sock::CgroupSockLinkId>,
}

/// Wraps a program error with the program's name (and where it attaches, when given).
fn program_error(name: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> LoadError {
    let name = name.into();
    move |source| LoadError::Program { name, source }
}

/// The program `name` of the object, as the program type `T` it must be.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| LoadError::MissingProgram(name.to_string()))?
        .try_into()
        .map_err(program_error(name))
}

fn sys_enter(ebpf: &mut Ebpf) -> Result<&mut aya::programs::RawTracePoint, LoadError> {
    program(ebpf, SYS_ENTER.0)
}

pub type SyscallHook = aya::programs::raw_trace_point::RawTracePointLinkId;

/// Attaches the syscall check (`[syscalls] deny`, unseen operations).
pub fn attach_syscall_hook(ebpf: &mut Ebpf) -> Result<SyscallHook, LoadError> {
    let (name, tp) = SYS_ENTER;
    sys_enter(ebpf)?
        .attach(tp)
        .map_err(program_error(format!("{name} (raw {tp})")))
}

pub fn detach_syscall_hook(ebpf: &mut Ebpf, link: SyscallHook) {
    if let Ok(p) = sys_enter(ebpf) {
        let _ = p.detach(link);
    }
}

/// Attaches the network programs to a bound cgroup (the daemon only binds cgroups a policy
/// names; on this project's test machines, only cgroups the tests created).
pub fn attach_cgroup(ebpf: &mut Ebpf, dir: &Path) -> Result<CgroupLinks, LoadError> {
    let cgroup = std::fs::File::open(dir).map_err(|e| LoadError::Cgroup(dir.display().to_string(), e))?;
    let mut links = CgroupLinks { sock_addr: Vec::new(), sock: None };
    for name in SOCK_ADDR {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        match prog.attach(&cgroup, CgroupAttachMode::Single) {
            Ok(id) => links.sock_addr.push((name, id)),
            Err(source) => {
                detach_cgroup(ebpf, links);
                return Err(LoadError::Program { name: format!("{name} (cgroup {})", dir.display()), source });
            }
        }
    }
    let prog: &mut CgroupSock = program(ebpf, SOCK_CREATE)?;
    match prog.attach(&cgroup, CgroupAttachMode::Single) {
        Ok(id) => links.sock = Some(id),
        Err(source) => {
            detach_cgroup(ebpf, links);
            return Err(LoadError::Program { name: format!("{SOCK_CREATE} (cgroup {})", dir.display()), source });
        }
    }
    Ok(links)
}

pub fn detach_cgroup(ebpf: &mut Ebpf, links: CgroupLinks) {
    for (name, id) in links.sock_addr {
        if let Ok(p) = program::<CgroupSockAddr>(ebpf, name) {
            let _ = p.detach(id);
        }
    }
    if let Some(id) = links.sock {
        if let Ok(p) = program::<CgroupSock>(ebpf, SOCK_CREATE) {
            let _ = p.detach(id);
        }
    }
}

/// Loads the object with this daemon's cgroup root and the kernel's offsets, and attaches
/// every program. Errors carry the verifier log.
pub fn load(
    cfg: &KernelConfig,
    offsets: &KernelOffsets,
    ring_bytes: u32,
    root: &Path,
) -> Result<Loaded, LoadError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::EVENTS, ring_bytes)
        .override_global(names::CONFIG, cfg, true)
        .override_global(names::OFFSETS, offsets, true)
        .load(OBJECT)
        .map_err(LoadError::Object)?;
    for (name, category, event) in TRACEPOINTS {
        let prog: &mut TracePoint = program(&mut ebpf, name)?;
        prog.load().map_err(program_error(*name))?;
        prog.attach(category, event)
            .map_err(program_error(format!("{name} ({category}:{event})")))?;
    }
    sys_enter(&mut ebpf)?
        .load()
        .map_err(program_error(SYS_ENTER.0))?;
    for name in SOCK_ADDR {
        program::<CgroupSockAddr>(&mut ebpf, name)?.load().map_err(program_error(*name))?;
    }
    program::<CgroupSock>(&mut ebpf, SOCK_CREATE)?.load().map_err(program_error(SOCK_CREATE))?;
    // On the managed root: the links live as long as `ebpf`.
    attach_cgroup(&mut ebpf, root)?;
    let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(LoadError::MissingMap(name));
    let runs = take(&mut ebpf, names::RUNS)?;
    let drops = take(&mut ebpf, names::DROPS)?;
    let events = take(&mut ebpf, names::EVENTS)?;
    let map_err = |name: &'static str| move |source| LoadError::Map { name, source };
    let policy = PolicyMaps {
        cur: Array::try_from(take(&mut ebpf, names::POLICY_CUR)?).map_err(map_err(names::POLICY_CUR))?,
        rulesets: HashMap::try_from(take(&mut ebpf, names::RULESETS)?).map_err(map_err(names::RULESETS))?,
        files: HashMap::try_from(take(&mut ebpf, names::FILE_NODES)?).map_err(map_err(names::FILE_NODES))?,
        net: LpmTrie::try_from(take(&mut ebpf, names::NET_RULES)?).map_err(map_err(names::NET_RULES))?,
    };
    let bound = HashMap::try_from(take(&mut ebpf, names::BOUND)?).map_err(map_err(names::BOUND))?;
    let bind_on = Array::try_from(take(&mut ebpf, names::BIND_ON)?).map_err(map_err(names::BIND_ON))?;
    Ok(Loaded {
        policy,
        bound,
        bind_on,
        runs: HashMap::try_from(runs).map_err(|source| LoadError::Map { name: names::RUNS, source })?,
        drops: PerCpuArray::try_from(drops).map_err(|source| LoadError::Map { name: names::DROPS, source })?,
        events: RingBuf::try_from(events).map_err(|source| LoadError::Map { name: names::EVENTS, source })?,
        ebpf,
    })
}
