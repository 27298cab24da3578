//! Loading and attaching the kernel programs. One owner (the daemon's core) holds the result.
use std::path::{Path, PathBuf};

use agent_guard_common::{names, Config as KernelConfig, GrantKey, KernelOffsets, NetOffsets, RunEntry};
use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{links::FdLink, CgroupAttachMode, CgroupSock, CgroupSockAddr, TracePoint},
    Ebpf, EbpfLoader,
};

use crate::kernel::backend::{
    bpf_lsm_listed, first_line, Backend, Choice, LSM_LINK_PREFIX, LSM_LIST, LSM_PROGRAMS, TRAMPOLINE_LINK_PREFIX,
    TRAMPOLINE_PROGRAMS,
};
use crate::config::BackendChoice;

/// The object built by build.rs from agent-guard-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-guard-ebpf"));

/// Always attached: they fire only at exec and at exit, and return at once for processes
/// outside every run.
const SCHED_TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("ag_exec", "sched", "sched_process_exec"),
    ("ag_exit", "sched", "sched_process_exit"),
];

/// Syscall tracepoints (program, category, event). Enabling any one of them sets the kernel's
/// syscall-tracepoint work flag on *every* task of the host, so every syscall of every process
/// takes the slower tracing entry and exit path (getpid measured 1.45x). They are therefore
/// attached only while some run or bound cgroup exists (see `attach_syscall_tracepoints`,
/// called before a run's kernel entry is created): a host with no run pays nothing.
const SYSCALL_TRACEPOINTS: &[(&str, &str, &str)] = &[
    // Opens: exit only (the flags come from the registers saved at entry, files.rs).
    ("ag_exit_openat", "syscalls", "sys_exit_openat"),
    ("ag_exit_open", "syscalls", "sys_exit_open"),
    ("ag_exit_creat", "syscalls", "sys_exit_creat"),
    ("ag_exit_openat2", "syscalls", "sys_exit_openat2"),
    ("ag_enter_execve", "syscalls", "sys_enter_execve"),
    ("ag_exit_execve", "syscalls", "sys_exit_execve"),
    ("ag_enter_execveat", "syscalls", "sys_enter_execveat"),
    ("ag_exit_execveat", "syscalls", "sys_exit_execveat"),
    ("ag_enter_connect", "syscalls", "sys_enter_connect"),
    ("ag_exit_connect", "syscalls", "sys_exit_connect"),
    ("ag_exit_sendto", "syscalls", "sys_exit_sendto"),
    ("ag_exit_sendmsg", "syscalls", "sys_exit_sendmsg"),
    ("ag_exit_sendmmsg", "syscalls", "sys_exit_sendmmsg"),
    ("ag_exit_socket", "syscalls", "sys_exit_socket"),
    // Containment (sockets.rs, listen.rs of the kernel crate): families and listen(2).
    ("ag_enter_socket", "syscalls", "sys_enter_socket"),
    ("ag_enter_socketpair", "syscalls", "sys_enter_socketpair"),
    ("ag_enter_listen", "syscalls", "sys_enter_listen"),
    // `[limits] processes` (tripwire.rs): forks the pids controller refused.
    ("ag_exit_clone", "syscalls", "sys_exit_clone"), ("ag_exit_clone3", "syscalls", "sys_exit_clone3"),
    ("ag_exit_fork", "syscalls", "sys_exit_fork"), ("ag_exit_vfork", "syscalls", "sys_exit_vfork"),
];

/// The syscall check: a raw tracepoint (cheaper per hit than a perf-event tracepoint), run by
/// every syscall on the host. Loaded at start, attached only while some run or bound cgroup
/// has a policy (see `attach_syscall_hook`): idle hosts do not pay for it.
const SYS_ENTER: (&str, &str) = ("ag_sys_enter", "sys_enter");

/// cgroup sock_addr programs, attached to the managed root (never to any other cgroup).
/// aya attaches them with bpf_link, which always lets other links coexist on the cgroup
/// and refuses attach flags: hence `CgroupAttachMode::Single` (no flags).
const SOCK_ADDR: &[&str] = &[
    "ag_connect4",
    "ag_connect6",
    "ag_sendmsg4",
    "ag_sendmsg6",
    "ag_bind4",
    "ag_bind6",
    // Replies of DNS queries sent to the forwarder (name rules).
    "ag_recvmsg4",
    "ag_recvmsg6",
];
const SOCK_CREATE: &str = "ag_sock_create";
/// How many programs `attach_cgroup` attaches to a cgroup with aya (the unix ones of
/// `sockaddr_unix`, on kernels that have them, come on top).
pub const CGROUP_PROGRAMS: usize = SOCK_ADDR.len() + 1;

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
    #[error("pinning {0}: {1}")]
    Pin(String, String),
    #[error("map {0} of the eBPF object is not in PINNED_MAPS (it would not survive a restart)")]
    Unpinned(String),
    /// The configured backend cannot run here (see `backend::choose`).
    #[error("{0}")]
    Backend(String),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The maps of the compiled rule sets (written by `kernel::rules`).
pub struct PolicyMaps {
    pub cur: Array<MapData, u32>,
    pub rulesets: HashMap<MapData, u32, agent_guard_common::RulesetHeader>,
    pub files: crate::kernel::trie::FileTrie,
    pub net: LpmTrie<MapData, agent_guard_common::NetKey, agent_guard_common::NetRule>,
    /// `[network] unix`, families and listen (see policy/contain.rs).
    pub unix: LpmTrie<MapData, agent_guard_common::UnixKey, u32>,
    pub contain: HashMap<MapData, u32, agent_guard_common::NetContain>,
    pub listen: LpmTrie<MapData, agent_guard_common::NetKey, agent_guard_common::NetRule>,
    /// `[limits]` and `[decoys] hosts` (see policy/tripwire.rs), and the runs' counters.
    pub limits: HashMap<MapData, u32, agent_guard_common::Limits>,
    pub decoy_hosts: HashMap<MapData, agent_guard_common::DecoyHostKey, u32>,
    pub limit_counts: HashMap<MapData, u64, agent_guard_common::LimitCounts>,
}

/// The loaded programs and the maps userspace works with.
pub struct Loaded {
    /// The programs (attachments to bound cgroups and the syscall check need them). Every
    /// attachment is a link pinned under `Pins`: dropping this detaches nothing.
    pub ebpf: Ebpf,
    pub runs: HashMap<MapData, u64, RunEntry>,
    pub tasks: HashMap<MapData, u64, RunEntry>,
    pub drops: PerCpuArray<MapData, u64>,
    pub events: RingBuf<MapData>,
    pub policy: PolicyMaps,
    pub bound: HashMap<MapData, u64, RunEntry>,
    pub bind_on: Array<MapData, u32>,
    pub grants: HashMap<MapData, GrantKey, u32>,
    /// Processes stopped for a hold (tgid), which the daemon lets go.
    pub held: HashMap<MapData, u32, u32>,
    /// Links found pinned by an earlier daemon and kept as they are (0 on a fresh start).
    pub adopted_links: usize,
    /// The enforcement backend in force, and why.
    pub backend: crate::kernel::backend::Choice,
    pub dns: crate::kernel::dns::DnsMaps,
}

/// Every map of the object, all pinned: a restarted daemon (and the programs an earlier one
/// left attached) share them. `load` refuses an object with a map missing from this list.
const PINNED_MAPS: &[&str] = &[
    names::RUNS,
    names::TASKS,
    names::BOUND,
    names::BIND_ON,
    names::POLICY_CUR,
    names::RULESETS,
    names::FILE_NODES,
    names::FILE_NODES_SHORT,
    names::NET_RULES,
    names::EVENTS,
    names::DROPS,
    "AG_SCRATCH",
    "AG_UNIX_SCRATCH",
    "AG_PENDING_EXEC",
    "AG_PENDING_CONNECT",
    "AG_KILL_PENDING",
    "AG_URGENT",
    names::GRANTS,
    names::HELD,
    names::LSM_ON,
    names::UNIX_RULES,
    names::NET_CONTAIN,
    names::LISTEN_RULES,
    names::LIMITS, names::LIMIT_COUNTS, names::DECOY_HOSTS, names::DESTS, "AG_TRIPPED",
    names::DNS_FWD, names::DNS_ALLOW, "AG_DNS_ORIG",
];

/// Where this build's kernel state is pinned: `<bpffs_dir>/<state>/{maps,links}/NAME`.
///
/// `<state>` names the eBPF object's digest, the managed root's cgroup id and the ring size,
/// so a daemon only ever adopts state its own programs and layout created.
#[derive(Debug, Clone)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    pub fn new(bpffs_dir: &Path, root_id: u64, ring_bytes: u32) -> Self {
        Self { dir: bpffs_dir.join(state_name(root_id, ring_bytes)) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an earlier daemon left this state pinned (then it is adopted).
    pub fn exist(&self) -> bool {
        self.dir.join("links").is_dir()
    }

    fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    fn link(&self, name: &str) -> PathBuf {
        self.dir.join("links").join(name)
    }

    pub fn has_link(&self, name: &str) -> bool {
        self.link(name).exists()
    }

    /// Pins `link` as `name`: from here on it stays attached until the pin is removed.
    pub(crate) fn pin(&self, name: &str, link: FdLink) -> Result<(), LoadError> {
        let path = self.link(name);
        link.pin(&path).map(drop).map_err(|e| LoadError::Pin(path.display().to_string(), e.to_string()))
    }

    /// Detaches the link pinned as `name` (removing the pin drops the last reference).
    pub(crate) fn unpin(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.link(name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Names of the pinned links starting with `prefix`.
    pub fn links(&self, prefix: &str) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.dir.join("links")) else { return vec![] };
        dir.flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }
}

/// The first 12 hex digits of the eBPF object's SHA-256.
pub fn object_digest() -> String {
    use sha2::Digest;
    sha2::Sha256::digest(OBJECT).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn state_name(root_id: u64, ring_bytes: u32) -> String {
    format!("v1-{}-root{root_id}-ring{ring_bytes}", object_digest())
}

/// The managed root's cgroup id a pinned state directory's name carries (None: not a name
/// this program gives).
fn state_root(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("v1-")?;
    let (_, rest) = rest.split_once("-root")?;
    rest.split_once("-ring")?.0.parse().ok()
}

/// Pinned state in `bpffs_dir` that belongs to the managed root `root_id`, other than
/// `mine` (another build or ring size), plus entries this program did not name. State of
/// other managed roots (other daemons sharing the directory) is not included.
pub fn foreign_state(bpffs_dir: &Path, mine: &Path, root_id: u64) -> std::io::Result<Vec<PathBuf>> {
    Ok(state_dirs(bpffs_dir)?
        .into_iter()
        .filter(|p| p != mine)
        .filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(state_root).is_none_or(|r| r == root_id))
        .collect())
}

/// The managed root's cgroup id of a pinned state directory.
pub fn state_root_of(dir: &Path) -> Option<u64> {
    dir.file_name().and_then(|n| n.to_str()).and_then(state_root)
}

/// Every entry of `bpffs_dir`.
pub fn state_dirs(bpffs_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    match std::fs::read_dir(bpffs_dir) {
        Ok(d) => Ok(d.flatten().map(|e| e.path()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e),
    }
}

/// Removes pinned state under `dir`: the links first (which detaches every program), then
/// the maps. Returns how many links were detached.
pub fn remove_state(dir: &Path) -> std::io::Result<usize> {
    let mut links = 0;
    for sub in ["links", "maps"] {
        let d = dir.join(sub);
        match std::fs::read_dir(&d) {
            Ok(entries) => {
                for e in entries {
                    std::fs::remove_file(e?.path())?;
                    if sub == "links" {
                        links += 1;
                    }
                }
                std::fs::remove_dir(&d)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(links),
    }
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

fn tracepoint_pin(name: &str) -> String {
    format!("tp-{name}")
}

fn attach_tracepoint(ebpf: &mut Ebpf, pins: &Pins, name: &str, category: &str, event: &str) -> Result<(), LoadError> {
    let pin = tracepoint_pin(name);
    let prog: &mut TracePoint = program(ebpf, name)?;
    let id = prog
        .attach(category, event)
        .map_err(program_error(format!("{name} ({category}:{event})")))?;
    let link = prog.take_link(id).map_err(program_error(name))?;
    pins.pin(&pin, FdLink::try_from(link).map_err(|e| LoadError::Pin(pin.clone(), e.to_string()))?)
}

/// `attach_tracepoint`, again while the kernel answers EEXIST: a tracepoint keeps the programs
/// of perf events released a moment ago (the last run's links, just unpinned) until an RCU
/// grace period has passed, and the same program cannot be in its list twice. Up to 2 s.
fn attach_tracepoint_retrying(ebpf: &mut Ebpf, pins: &Pins, name: &str, category: &str, event: &str) -> Result<(), LoadError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match attach_tracepoint(ebpf, pins, name, category, event) {
            Err(e) if is_eexist(&e) && std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(10)),
            r => return r,
        }
    }
}

/// True when an OS error EEXIST caused `e`.
fn is_eexist(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::EEXIST) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The open and refused-exec tracepoints: not attached under the lsm and trampoline backends,
/// whose file_open program decides and reports opens, and whose bprm_check_security program
/// refuses and reports execs.
const LSM_DECIDES: &[&str] = &[
    "ag_exit_openat", "ag_exit_open", "ag_exit_creat", "ag_exit_openat2",
    "ag_enter_execve", "ag_exit_execve", "ag_enter_execveat", "ag_exit_execveat",
];

/// The syscall tracepoints this backend uses (the LSM or fmod_ret programs' links pinned: the
/// hooks decide opens and execs).
fn wanted_syscall_tracepoints(pins: &Pins) -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str)> {
    let lsm = pinned_backend(pins).hooks_decide();
    SYSCALL_TRACEPOINTS.iter().filter(move |(name, _, _)| !(lsm && LSM_DECIDES.contains(name)))
}

/// Every syscall tracepoint is attached (an earlier daemon may have attached them).
pub fn syscall_tracepoints_attached(pins: &Pins) -> bool {
    wanted_syscall_tracepoints(pins).all(|(name, _, _)| pins.has_link(&tracepoint_pin(name)))
}

/// Some syscall tracepoint is attached.
pub fn any_syscall_tracepoint_attached(pins: &Pins) -> bool {
    SYSCALL_TRACEPOINTS.iter().any(|(name, _, _)| pins.has_link(&tracepoint_pin(name)))
}

/// Attaches the syscall tracepoints that are not attached yet and pins them; on error, what
/// this call attached is detached again.
pub fn attach_syscall_tracepoints(ebpf: &mut Ebpf, pins: &Pins) -> Result<(), LoadError> {
    let mut done: Vec<String> = Vec::new();
    for (name, category, event) in wanted_syscall_tracepoints(pins) {
        if pins.has_link(&tracepoint_pin(name)) {
            continue;
        }
        if let Err(e) = attach_tracepoint_retrying(ebpf, pins, name, category, event) {
            for pin in &done {
                let _ = pins.unpin(pin);
            }
            return Err(e);
        }
        done.push(tracepoint_pin(name));
    }
    Ok(())
}

/// Detaches every syscall tracepoint.
pub fn detach_syscall_tracepoints(pins: &Pins) -> std::io::Result<()> {
    for (name, _, _) in SYSCALL_TRACEPOINTS {
        pins.unpin(&tracepoint_pin(name))?;
    }
    Ok(())
}

/// The pin name of the syscall check's link.
const SYS_ENTER_LINK: &str = "sys_enter";

pub fn syscall_hook_attached(pins: &Pins) -> bool {
    pins.has_link(SYS_ENTER_LINK)
}

/// Attaches the syscall check (`[syscalls] deny`, unseen operations) and pins it.
pub fn attach_syscall_hook(ebpf: &mut Ebpf, pins: &Pins) -> Result<(), LoadError> {
    let (name, tp) = SYS_ENTER;
    let prog = sys_enter(ebpf)?;
    let id = prog.attach(tp).map_err(program_error(format!("{name} (raw {tp})")))?;
    let link = prog.take_link(id).map_err(program_error(name))?;
    pins.pin(SYS_ENTER_LINK, link.into())
}

pub fn detach_syscall_hook(pins: &Pins) -> std::io::Result<()> {
    pins.unpin(SYS_ENTER_LINK)
}

/// Pin-name prefix of the network programs' links on a bound cgroup.
pub fn cgroup_prefix(cgroup_id: u64) -> String {
    format!("cg{cgroup_id}-")
}

/// Attaches the network programs to the cgroup `dir` and pins the links as
/// `<prefix><program>`. Links already pinned under those names are left as they are (an
/// earlier daemon attached them). On error, what this call attached is detached again.
pub fn attach_cgroup(ebpf: &mut Ebpf, pins: &Pins, dir: &Path, prefix: &str) -> Result<(), LoadError> {
    let cgroup = std::fs::File::open(dir).map_err(|e| LoadError::Cgroup(dir.display().to_string(), e))?;
    let mut done: Vec<String> = Vec::new();
    let mut attach_one = |ebpf: &mut Ebpf, name: &'static str| -> Result<(), LoadError> {
        let pin = format!("{prefix}{name}");
        if pins.has_link(&pin) {
            return Ok(());
        }
        let at = |source| LoadError::Program { name: format!("{name} (cgroup {})", dir.display()), source };
        let link: FdLink = if name == SOCK_CREATE {
            let prog: &mut CgroupSock = program(ebpf, name)?;
            let id = prog.attach(&cgroup, CgroupAttachMode::Single).map_err(at)?;
            let link = prog.take_link(id).map_err(program_error(name))?;
            FdLink::try_from(link).map_err(|e| LoadError::Pin(pin.clone(), e.to_string()))?
        } else {
            let prog: &mut CgroupSockAddr = program(ebpf, name)?;
            let id = prog.attach(&cgroup, CgroupAttachMode::Single).map_err(at)?;
            let link = prog.take_link(id).map_err(program_error(name))?;
            FdLink::try_from(link).map_err(|e| LoadError::Pin(pin.clone(), e.to_string()))?
        };
        pins.pin(&pin, link)?;
        done.push(pin);
        Ok(())
    };
    for name in SOCK_ADDR.iter().copied().chain([SOCK_CREATE]) {
        if let Err(e) = attach_one(ebpf, name) {
            for pin in &done {
                let _ = pins.unpin(pin);
            }
            return Err(e);
        }
    }
    if let Err(e) = crate::kernel::sockaddr_unix::attach(&cgroup, |name| pins.link(&format!("{prefix}{name}"))) {
        for pin in &done {
            let _ = pins.unpin(pin);
        }
        return Err(LoadError::Pin(format!("{prefix}unix programs (cgroup {})", dir.display()), e));
    }
    Ok(())
}

/// Detaches every link pinned with `prefix`.
pub fn detach_cgroup(pins: &Pins, prefix: &str) {
    for name in pins.links(prefix) {
        if let Err(e) = pins.unpin(&name) {
            tracing::warn!("removing pinned link {name}: {e}");
        }
    }
}

/// Loads the object with this daemon's cgroup root and the kernel's offsets, with every map
/// pinned under `pins` (reused when an earlier daemon pinned them), picks the backend (see
/// `backend::choose`; `lsm` attaches the LSM programs) and attaches every program that is not
/// attached already. Errors carry the verifier log.
pub fn load(
    cfg: &KernelConfig,
    offsets: &KernelOffsets,
    net_offsets: &NetOffsets,
    ring_bytes: u32,
    root: &Path,
    pins: &Pins,
    backend: crate::config::BackendChoice,
) -> Result<Loaded, LoadError> {
    for sub in ["maps", "links"] {
        let d = pins.dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| LoadError::Pin(d.display().to_string(), e.to_string()))?;
    }
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(names::EVENTS, ring_bytes)
        .override_global(names::CONFIG, cfg, true)
        .override_global(names::OFFSETS, offsets, true)
        .override_global(names::NET_OFFSETS, net_offsets, true);
    for name in PINNED_MAPS {
        loader.map_pin_path(name, pins.map(name));
    }
    // Links pinned before anything here attaches: an earlier daemon's state, adopted as it is.
    let adopting = !pins.links("").is_empty();
    let mut ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
    // Before any map is taken out of `ebpf`: they are relocated against its maps.
    crate::kernel::sockaddr_unix::load(OBJECT, &ebpf);
    if let Some((name, _)) = ebpf.maps().find(|(n, _)| !n.starts_with('.') && !PINNED_MAPS.contains(n)) {
        return Err(LoadError::Unpinned(name.to_string()));
    }
    let mut adopted_links = 0;
    for (name, category, event) in SCHED_TRACEPOINTS {
        let pin = tracepoint_pin(name);
        let prog: &mut TracePoint = program(&mut ebpf, name)?;
        prog.load().map_err(program_error(*name))?;
        if pins.has_link(&pin) {
            adopted_links += 1;
            continue;
        }
        attach_tracepoint(&mut ebpf, pins, name, category, event)?;
    }
    let backend = choose(backend, &mut ebpf, pins, adopting)?;
    tracing::info!("backend {}: {}", backend.backend.name(), backend.reason);
    mark(&mut ebpf, backend.backend)?;
    adopted_links += if adopting { pins.links(LSM_LINK_PREFIX).len() + pins.links(TRAMPOLINE_LINK_PREFIX).len() } else { 0 };
    // Only those this backend uses (the open and exec ones are not even verified under lsm).
    for (name, _, _) in wanted_syscall_tracepoints(pins) {
        program::<TracePoint>(&mut ebpf, name)?.load().map_err(program_error(*name))?;
        adopted_links += usize::from(pins.has_link(&tracepoint_pin(name)));
    }
    sys_enter(&mut ebpf)?
        .load()
        .map_err(program_error(SYS_ENTER.0))?;
    for name in SOCK_ADDR {
        program::<CgroupSockAddr>(&mut ebpf, name)?.load().map_err(program_error(*name))?;
    }
    program::<CgroupSock>(&mut ebpf, SOCK_CREATE)?.load().map_err(program_error(SOCK_CREATE))?;
    adopted_links += pins.links(ROOT_PREFIX).len() + usize::from(syscall_hook_attached(pins));
    // On the managed root (never any other cgroup): pinned like everything else.
    attach_cgroup(&mut ebpf, pins, root, ROOT_PREFIX)?;
    let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(LoadError::MissingMap(name));
    let map_err = |name: &'static str| move |source| LoadError::Map { name, source };
    let policy = PolicyMaps {
        cur: Array::try_from(take(&mut ebpf, names::POLICY_CUR)?).map_err(map_err(names::POLICY_CUR))?,
        rulesets: HashMap::try_from(take(&mut ebpf, names::RULESETS)?).map_err(map_err(names::RULESETS))?,
        files: crate::kernel::trie::FileTrie {
            long: HashMap::try_from(take(&mut ebpf, names::FILE_NODES)?).map_err(map_err(names::FILE_NODES))?,
            short: HashMap::try_from(take(&mut ebpf, names::FILE_NODES_SHORT)?).map_err(map_err(names::FILE_NODES_SHORT))?,
        },
        net: LpmTrie::try_from(take(&mut ebpf, names::NET_RULES)?).map_err(map_err(names::NET_RULES))?,
        unix: LpmTrie::try_from(take(&mut ebpf, names::UNIX_RULES)?).map_err(map_err(names::UNIX_RULES))?,
        contain: HashMap::try_from(take(&mut ebpf, names::NET_CONTAIN)?).map_err(map_err(names::NET_CONTAIN))?,
        listen: LpmTrie::try_from(take(&mut ebpf, names::LISTEN_RULES)?).map_err(map_err(names::LISTEN_RULES))?,
        limits: HashMap::try_from(take(&mut ebpf, names::LIMITS)?).map_err(map_err(names::LIMITS))?,
        decoy_hosts: HashMap::try_from(take(&mut ebpf, names::DECOY_HOSTS)?).map_err(map_err(names::DECOY_HOSTS))?,
        limit_counts: HashMap::try_from(take(&mut ebpf, names::LIMIT_COUNTS)?).map_err(map_err(names::LIMIT_COUNTS))?,
    };
    Ok(Loaded {
        policy,
        bound: HashMap::try_from(take(&mut ebpf, names::BOUND)?).map_err(map_err(names::BOUND))?,
        bind_on: Array::try_from(take(&mut ebpf, names::BIND_ON)?).map_err(map_err(names::BIND_ON))?,
        grants: HashMap::try_from(take(&mut ebpf, names::GRANTS)?).map_err(map_err(names::GRANTS))?,
        held: HashMap::try_from(take(&mut ebpf, names::HELD)?).map_err(map_err(names::HELD))?,
        runs: HashMap::try_from(take(&mut ebpf, names::RUNS)?).map_err(map_err(names::RUNS))?,
        tasks: HashMap::try_from(take(&mut ebpf, names::TASKS)?).map_err(map_err(names::TASKS))?,
        drops: PerCpuArray::try_from(take(&mut ebpf, names::DROPS)?).map_err(map_err(names::DROPS))?,
        events: RingBuf::try_from(take(&mut ebpf, names::EVENTS)?).map_err(map_err(names::EVENTS))?,
        dns: crate::kernel::dns::DnsMaps::take(&mut ebpf)?,
        ebpf,
        adopted_links,
        backend,
    })
}

/// Pin-name prefix of the network programs' links on the managed root.
const ROOT_PREFIX: &str = "root-";

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;

/// Loads and attaches every LSM program, pinning the links as `lsm-<program>`; links
/// already pinned (an earlier daemon's) are kept. On error, what this call attached is
/// detached again, so a failed probe leaves nothing behind. Returns how many were adopted.
pub fn attach_lsm(ebpf: &mut Ebpf, pins: &Pins) -> Result<usize, LoadError> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::Pin("kernel BTF".into(), e.to_string()))?;
    let mut adopted = 0;
    let mut done: Vec<String> = Vec::new();
    let mut one = |ebpf: &mut Ebpf, name: &str, hook: &str| -> Result<(), LoadError> {
        let pin = format!("{LSM_LINK_PREFIX}{name}");
        if pins.has_link(&pin) {
            adopted += 1;
            return Ok(());
        }
        let at = |source| LoadError::Program { name: format!("{name} (lsm/{hook})"), source };
        let prog: &mut aya::programs::Lsm = ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::MissingProgram(name.to_string()))?
            .try_into()
            .map_err(at)?;
        prog.load(hook, &btf).map_err(at)?;
        let id = prog.attach().map_err(at)?;
        let link = prog.take_link(id).map_err(at)?;
        pins.pin(&pin, link.into())?;
        done.push(pin);
        Ok(())
    };
    for (name, hook) in LSM_PROGRAMS {
        if let Err(e) = one(ebpf, name, hook) {
            for pin in &done {
                let _ = pins.unpin(pin);
            }
            return Err(e);
        }
    }
    Ok(adopted)
}

/// Tells the kernel programs whether the security hooks decide (AG_LSM_ON): under lsm and
/// trampoline the exec tracepoint reports and leaves the decision to `bprm_check_security`.
pub fn mark(ebpf: &mut Ebpf, backend: Backend) -> Result<(), LoadError> {
    let name = agent_guard_common::names::LSM_ON;
    let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
    let mut on: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map).map_err(|source| LoadError::Map { name, source })?;
    on.set(0, u32::from(backend.hooks_decide()), 0).map_err(|source| LoadError::Map { name, source })
}

/// The backend whose hook programs an earlier daemon left attached (tracepoint: none).
pub fn pinned_backend(pins: &Pins) -> Backend {
    crate::kernel::backend::pinned(|prefix| pins.links(prefix).len())
}

/// Picks the backend for `choice` (`backend::choose`), attaching the LSM or the fmod_ret
/// programs as it tries them. `adopting`: an earlier daemon's pinned state, whose backend is
/// kept.
pub fn choose(choice: BackendChoice, ebpf: &mut Ebpf, pins: &Pins, adopting: bool) -> Result<Choice, LoadError> {
    let lsm = |ebpf: &mut Ebpf| {
        bpf_lsm_listed()?;
        attach_lsm(ebpf, pins)
            .map(drop)
            .map_err(|e| format!("bpf is listed in {LSM_LIST} but this kernel refuses BPF LSM programs: {}", first_line(&e)))
    };
    let trampoline = |ebpf: &Ebpf| {
        crate::kernel::trampoline::attach(OBJECT, ebpf, TRAMPOLINE_PROGRAMS, |name| pins.link(&format!("{TRAMPOLINE_LINK_PREFIX}{name}")))
            .map(drop)
            .map_err(|e| format!("this kernel refuses fmod_ret programs on the security_* functions: {e}"))
    };
    let adopted = adopting.then(|| pinned_backend(pins));
    // Both closures need the object; only one runs at a time.
    let ebpf = std::cell::RefCell::new(ebpf);
    crate::kernel::backend::choose(choice, adopted, || lsm(&mut ebpf.borrow_mut()), || trampoline(&ebpf.borrow()))
        .map_err(LoadError::Backend)
}
