//! Types and constants shared by agent-guard's kernel programs and its userspace.
//!
//! One source of truth for every kernel/user type: map names, event kinds, flags and limits
//! are defined here once. Every struct is `#[repr(C)]`, `Copy`, with explicit padding so that
//! there are no holes, and no enums or bools cross the boundary.
#![no_std]

/// clone(2) and clone3(2) as both enforcement layers judge them: the eBPF syscall check and
/// the seccomp filter of launched runs refuse the same clones.
pub mod clone {
    pub const NR_CLONE: u32 = 56;
    pub const NR_CLONE3: u32 = 435;
    /// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: a new namespace
    /// would let the process remount paths under names the policy allows.
    pub const NEW_ANY: u64 = 0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;
    /// A child sharing the file table without being a thread: it would keep a descriptor whose
    /// opener was killed for opening it.
    pub const FILES: u64 = 0x0000_0400;
    pub const THREAD: u64 = 0x0001_0000;
    /// clone3 only: the child starts in the cgroup whose descriptor clone_args.cgroup gives,
    /// which may be outside the run.
    pub const INTO_CGROUP: u64 = 0x2_0000_0000;

    /// Whether a clone with these flags is refused.
    #[inline(always)]
    pub const fn refused(flags: u64) -> bool {
        flags & NEW_ANY != 0 || flags & (FILES | THREAD) == FILES
    }
}

/// Bytes kept of a path (the one the kernel resolved for an opened file, or an exe). Longer
/// paths keep their last `PATH_MAX - 1` bytes and carry [`FLAG_PATH_TRUNCATED`].
pub const PATH_MAX: usize = 1024;
/// Bytes kept of an exec's argv (NUL-separated). Longer argv carries [`FLAG_ARGV_TRUNCATED`].
pub const ARGV_MAX: usize = 1024;
/// Path components walked up from a dentry before giving up (flagged as truncated).
pub const PATH_DEPTH_MAX: u32 = 64;
/// Runs the kernel can track at once per daemon.
pub const RUNS_MAX: u32 = 16384;
/// In-flight syscalls (open, connect) tracked between entry and exit.
pub const PENDING_MAX: u32 = 16384;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 16 << 20;

/// Policies loaded at once (policy slots).
pub const POLICIES_MAX: u32 = 64;
/// Compiled rule sets alive at once: one per slot plus replaced generations while they
/// drain (a replaced rule set is removed a quarter of a second later).
pub const RULESETS_MAX: u32 = 1024;
/// Rules per list (files.read, files.write, files.deny, exec.allow, network.connect,
/// syscalls.deny) in one policy.
pub const RULES_MAX: usize = 4096;
/// Path-trie nodes across all loaded rule sets (one node per distinct path prefix).
pub const FILE_NODES_MAX: u32 = 1 << 18;
/// CIDR entries across all loaded rule sets.
pub const NET_RULES_MAX: u32 = 1 << 16;
/// Bytes of one path component in a trie key: NAME_MAX (255) plus a zero.
pub const NAME_BYTES: usize = 256;
/// Port ranges one CIDR entry can carry (after merging the ranges of enclosing CIDRs).
pub const PORT_RANGES_MAX: usize = 16;
/// 64-bit words of a syscall bitmap: syscall numbers 0..512.
pub const SYSCALL_WORDS: usize = 8;
/// `RunEntry::policy` of a run without a policy (observed, never enforced).
pub const NO_POLICY: u32 = u32::MAX;

pub mod dns;

/// Map and global names, as the kernel object exports them.
pub mod names {
    pub const RUNS: &str = "AG_RUNS";
    /// Task cgroup id -> [`RunEntry`](super::RunEntry) (the task's policy slot): tasks are
    /// the run cgroup's direct children (`agent-guard task`).
    pub const TASKS: &str = "AG_TASKS";
    pub const EVENTS: &str = "AG_EVENTS";
    pub const DROPS: &str = "AG_DROPS";
    pub const CONFIG: &str = "AG_CONFIG";
    pub const OFFSETS: &str = "AG_OFFSETS";
    pub const POLICY_CUR: &str = "AG_POLICY_CUR";
    pub const RULESETS: &str = "AG_RULESETS";
    pub const FILE_NODES: &str = "AG_FILE_NODES";
    /// The trie's entries whose component is at most `SHORT_NAME_BYTES` long.
    pub const FILE_NODES_SHORT: &str = "AG_FILE_NODES_SHORT";
    pub const NET_RULES: &str = "AG_NET_RULES";
    pub const BOUND: &str = "AG_BOUND";
    pub const BIND_ON: &str = "AG_BIND_ON";
    pub const GRANTS: &str = "AG_GRANTS";
    pub const HELD: &str = "AG_HELD";
    /// [0] = 1: the lsm backend's programs are attached (execs are decided there).
    pub const LSM_ON: &str = "AG_LSM_ON";
    /// LPM trie of `[network] unix` (key [`UnixKey`](super::UnixKey)).
    pub const UNIX_RULES: &str = "AG_UNIX_RULES";
    /// Rule set id -> [`NetContain`](super::NetContain) (families, netlink protocols).
    pub const NET_CONTAIN: &str = "AG_NET_CONTAIN";
    /// LPM trie of `[network] listen` (key [`NetKey`](super::NetKey), value
    /// [`NetRule`](super::NetRule), as `NET_RULES`).
    pub const LISTEN_RULES: &str = "AG_LISTEN_RULES";
    /// Global: [`NetOffsets`](super::NetOffsets).
    pub const NET_OFFSETS: &str = "AG_NET_OFFSETS";
    /// Rule set id -> [`Limits`](super::Limits).
    pub const LIMITS: &str = "AG_LIMITS";
    /// Run cgroup id -> [`LimitCounts`](super::LimitCounts).
    pub const LIMIT_COUNTS: &str = "AG_LIMIT_COUNTS";
    /// [`DecoyHostKey`](super::DecoyHostKey) -> 1.
    pub const DECOY_HOSTS: &str = "AG_DECOY_HOSTS";
    /// [`DestKey`](super::DestKey) -> 1 (LRU).
    pub const DESTS: &str = "AG_DESTS";
    /// [`dns::FwdKey`](super::dns::FwdKey) -> [`dns::Fwd`](super::dns::Fwd): runs whose DNS
    /// queries go to the daemon's forwarder.
    pub const DNS_FWD: &str = "AG_DNS_FWD";
    /// [`dns::AllowKey`](super::dns::AllowKey) -> [`dns::Allow`](super::dns::Allow) (LRU):
    /// addresses the run's allowed DNS answers opened.
    pub const DNS_ALLOW: &str = "AG_DNS_ALLOW";
}

/// cgroup levels below the mount searched for a bound ancestor (`[bind] cgroups`).
pub const BIND_DEPTH_MAX: i32 = 16;

/// Generates a `#[repr(u32)]` enum whose raw values and contract names are listed once.
macro_rules! named {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $raw:literal => $text:literal,)+ }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant = $raw,)+ }

        impl $name {
            /// Every variant, in raw-value order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The value a kernel record carries.
            #[inline(always)]
            pub const fn as_raw(self) -> u32 {
                self as u32
            }

            /// The name events, metrics and the CLI use (the JSON string of the contract).
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// The variant whose raw value is `raw`, if any.
            const fn from_discriminant(raw: u32) -> Option<Self> {
                $(if raw == $raw { return Some($name::$variant); })+
                None
            }

            /// The variant named `name` (see [`Self::name`]).
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named! {
    /// What an event is about (`EventHeader::kind` for the kinds the kernel reports; the
    /// others are the daemon's own events and never appear in a kernel record).
    pub enum Kind {
        Exec = 1 => "exec",
        Open = 2 => "open",
        Connect = 3 => "connect",
        Exit = 4 => "exit",
        /// A syscall a policy denies, or one this backend cannot see through (io_uring, ...).
        Syscall = 5 => "syscall",
        /// A UDP send to an explicit address that the policy does not allow.
        Sendmsg = 6 => "sendmsg",
        /// Creation of a raw or ICMP socket, or of a socket family (`[network] families`),
        /// the policy does not allow.
        Socket = 7 => "socket",
        /// A bind(2) or listen(2) (with [`FLAG_LISTEN`]) on an IP socket that `[network]
        /// listen` does not allow.
        Bind = 8 => "bind",
        /// A `[limits]` budget of a run crossed (a [`LimitEvent`]).
        Limit = 9 => "limit",
        RunStart = 100 => "run_start",
        RunEnd = 101 => "run_end",
        /// `freeze`, `thaw` and `kill` of a run by a responder.
        Freeze = 102 => "freeze",
        Thaw = 103 => "thaw",
        Kill = 104 => "kill",
        /// A hold for review, as the daemon reports it (held, then its answer).
        Hold = 105 => "hold",
        PolicyReload = 106 => "policy_reload",
        /// Events lost somewhere on the way (count, stage).
        Drop = 107 => "drop",
        /// The daemon's signature over the events log's hash chain up to the line before it.
        Checkpoint = 108 => "checkpoint",
        /// At start: the events log does not continue where the daemon's chain head says it
        /// ended (lines lost or removed, or the head itself missing).
        ChainGap = 109 => "chain_gap",
        /// A DNS query of a run with name rules, as the daemon's forwarder answered it.
        Dns = 110 => "dns",
    }
}

impl Kind {
    /// The kind of a kernel record (`EventHeader::kind`); None for a value no program
    /// writes, including the daemon's own kinds.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match Self::from_discriminant(raw) {
            Some(k) if k.is_kernel() => Some(k),
            _ => None,
        }
    }

    /// Reported by the kernel programs (as opposed to the daemon's own events).
    pub const fn is_kernel(self) -> bool {
        (self as u32) < 100
    }
}

named! {
    /// What was done with an operation (`EventHeader::verdict`).
    pub enum Verdict {
        Allow = 0 => "allow",
        /// Refused with an error (EPERM), the process goes on.
        Deny = 1 => "deny",
        /// The process was sent SIGKILL; it does not return to user space.
        Kill = 2 => "kill",
        /// Monitor mode: the policy would have denied it; it was allowed.
        WouldDeny = 3 => "would_deny",
        /// `on_violation = "freeze"`: the process was sent SIGSTOP at the violation and its
        /// run is held for review (an open or exec has happened, a network operation was
        /// refused).
        Hold = 4 => "hold",
        /// A `[decoys]` tripwire: a decoy file opened or a decoy host contacted, in any mode.
        /// The process was stopped (SIGSTOP; a connect is also refused) and its run is held.
        Decoy = 5 => "decoy",
    }
}

impl Verdict {
    /// The verdict of a kernel record; None for a value no program writes.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        Self::from_discriminant(raw)
    }

    /// The policy was violated (whatever was done about it).
    pub const fn is_violation(self) -> bool {
        !matches!(self, Verdict::Allow)
    }
}

/// `EventHeader::rule` when no rule decided.
pub const RULE_NONE: u32 = 0;

named! {
    /// Which part of the policy decided (`EventHeader::rule`; [`RULE_NONE`] for none).
    pub enum Rule {
        FilesRead = 1 => "files.read",
        FilesWrite = 2 => "files.write",
        FilesDeny = 3 => "files.deny",
        Exec = 4 => "exec.allow",
        Network = 5 => "network.connect",
        Syscalls = 6 => "syscalls.deny",
        /// An operation the tracepoint backend cannot check (io_uring, hard links, mounts,
        /// namespaces, open_by_handle_at, 32-bit syscalls): refused in enforce mode.
        Unseen = 7 => "unseen",
        /// The path was too long or too deep for the kernel matcher: never allowed by
        /// truncation.
        PathTooLong = 8 => "files.path_too_long",
        RawSocket = 9 => "network.raw_sockets",
        /// Allowed by a responder's approval of a hold (`agent-guard approve`), not by the
        /// policy.
        Grant = 10 => "grant",
        /// A run's process acting outside its run: a signal or ptrace to a process outside
        /// it, bpf(), a mount (lsm backend).
        SelfProtection = 11 => "self_protection",
        /// A connect or datagram to a unix socket `[network] unix` does not list.
        Unix = 12 => "network.unix",
        /// A socket of a family (or netlink protocol) `[network] families` does not list.
        Families = 13 => "network.families",
        /// A bind or listen on an address and port `[network] listen` does not list.
        Listen = 14 => "network.listen",
        /// Leaving the run's cgroup: a write to the cgroup filesystem (`cgroup.procs`,
        /// `cgroup.threads`, ...), `clone3(CLONE_INTO_CGROUP)`, or a process of the run
        /// found in another cgroup. No policy allows it.
        ContainCgroup = 15 => "contain.cgroup",
        /// Another process's /proc/PID files (cmdline, environ, maps, fd, ...): a process
        /// outside the run. No policy allows it.
        ContainProc = 16 => "contain.proc",
        /// A process in a cgroup below the managed root that is no registered run (made by
        /// hand, or the managed root itself): refused everything.
        Unregistered = 17 => "contain.unregistered",
        /// `[decoys] files`: a decoy file was opened (read or write).
        DecoyFiles = 18 => "decoys.files",
        /// `[decoys] hosts`: a connect or send to a decoy address and port.
        DecoyHosts = 19 => "decoys.hosts",
        LimitExecs = 20 => "limits.execs_per_minute",
        LimitOpens = 21 => "limits.opens_per_minute",
        LimitConnects = 22 => "limits.connects_per_minute",
        LimitDestinations = 23 => "limits.distinct_destinations",
        LimitDenials = 24 => "limits.denials_per_minute",
        LimitProcesses = 25 => "limits.processes",
    }
}

impl Rule {
    /// The rule of a kernel record; None for [`RULE_NONE`] or a value no program writes.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        Self::from_discriminant(raw)
    }

    /// The raw value of an optional rule ([`RULE_NONE`] for None).
    #[inline(always)]
    pub const fn raw_of(rule: Option<Rule>) -> u32 {
        match rule {
            Some(r) => r.as_raw(),
            None => RULE_NONE,
        }
    }
}

/// A responder's approval of one access for one run (`agent-guard approve`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrantKey {
    /// The run's cgroup id (a bound cgroup's id for bindings).
    pub run: u64,
    /// `Kind::Open` or `Kind::Exec` (id: the file's device and inode) or `Kind::Connect`
    /// (id: the IPv4-mapped address, with `port`; UDP sends use it too).
    pub kind: u32,
    pub port: u32,
    pub id: [u8; 16],
}

/// `AG_GRANTS` values.
pub mod grant {
    /// Used up by the first access it allows.
    pub const ONCE: u32 = 1;
    /// For the rest of the run.
    pub const RUN: u32 = 2;
}

pub const GRANTS_MAX: u32 = 4096;

/// `RulesetHeader::mode`.
pub mod mode {
    pub const ENFORCE: u32 = 1;
    pub const MONITOR: u32 = 2;
}

/// `RulesetHeader::on_violation`.
pub mod action {
    pub const DENY: u32 = 1;
    pub const KILL: u32 = 2;
    /// Hold for review: SIGSTOP at the violation, then the daemon freezes the run. Syscalls in
    /// `[syscalls] deny` and unseen operations are killed instead (they run before a stop).
    pub const FREEZE: u32 = 3;
}

/// `FileNode::flags` and `RulesetHeader::root_flags`: the rules that end at a trie node.
pub mod file_rule {
    pub const READ: u32 = 1 << 0;
    /// Write also grants read.
    pub const WRITE: u32 = 1 << 1;
    pub const DENY: u32 = 1 << 2;
    /// exec.allow of exactly this file.
    pub const EXEC_FILE: u32 = 1 << 3;
    /// exec.allow of everything below this directory ("dir/").
    pub const EXEC_DIR: u32 = 1 << 4;
    pub const ACCESS_MASK: u32 = READ | WRITE | DENY;
    /// `[decoys] files`: exactly this file is a decoy (not a prefix rule).
    pub const DECOY: u32 = 1 << 5;
}

/// `RulesetHeader::flags`.
pub const RS_RAW_SOCKETS: u32 = 1 << 0;
/// The rule set has `[decoys] hosts` (AG_DECOY_HOSTS entries): only then is it looked up.
pub const RS_DECOY_HOSTS: u32 = 1 << 1;
/// The rule set has `[limits]` (an AG_LIMITS entry): only then does a hook count.
pub const RS_LIMITS: u32 = 1 << 2;

/// `[limits]`: per-run budgets counted in the kernel (see `agent-guard-ebpf/src/tripwire.rs`).
pub mod limit {
    use super::Rule;
    /// Indexes of `Limits::max` and `LimitCounts::n`.
    pub const EXECS: usize = 0;
    pub const OPENS: usize = 1;
    pub const CONNECTS: usize = 2;
    pub const DESTINATIONS: usize = 3;
    pub const DENIALS: usize = 4;
    pub const PROCESSES: usize = 5;
    pub const COUNT: usize = 6;
    /// The rule each limit reports, by index.
    pub const RULES: [Rule; COUNT] = [
        Rule::LimitExecs,
        Rule::LimitOpens,
        Rule::LimitConnects,
        Rule::LimitDestinations,
        Rule::LimitDenials,
        Rule::LimitProcesses,
    ];
    /// The per-minute counters' window: fixed, one minute from the first operation counted
    /// after the previous window ended (or after an approval).
    pub const WINDOW_NS: u64 = 60_000_000_000;
    /// `Limits::on_limit`.
    pub const REPORT: u32 = 1;
    pub const FREEZE: u32 = 2;
    pub const KILL: u32 = 3;
}

/// AG_LIMITS value (keyed by rule set id): the budget per limit (0: none) and what a crossing
/// does (`limit::REPORT`, ...).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub max: [u32; limit::COUNT],
    pub on_limit: u32,
    pub _pad: u32,
}

/// AG_LIMIT_COUNTS value (keyed by run cgroup id): the counters of the current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitCounts {
    /// CLOCK_MONOTONIC ns at which the current window started.
    pub window_start: u64,
    pub n: [u32; limit::COUNT],
}

/// AG_DECOY_HOSTS key: a decoy destination of a rule set (IPv4 as IPv4-mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecoyHostKey {
    pub ruleset: u32,
    pub port: u16,
    pub _pad: u16,
    pub addr: [u8; 16],
}
pub const DECOY_HOSTS_MAX: u32 = 4096;

/// AG_DESTS key: a destination a run has connected or sent to (`distinct_destinations`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestKey {
    pub run: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u16; 3],
}
pub const DESTS_MAX: u32 = 1 << 16;

/// A budget crossed: the first operation over `max` in the window (`hdr.rule` names the
/// limit, `hdr.verdict` what was done: allow for `report`, hold, kill, or deny for a fork the
/// pids controller refused under `on_limit = "report"`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LimitEvent {
    pub hdr: EventHeader,
    /// `limit::*` index.
    pub limit: u32,
    /// The count including the operation that crossed.
    pub count: u32,
    pub max: u32,
    pub on_limit: u32,
    /// Window length and its start (CLOCK_MONOTONIC ns; 0 for limits without a window).
    pub window_ns: u64,
    pub window_start_ns: u64,
}

/// Index into the per-CPU `AG_DROPS` array.
pub mod drop_slot {
    /// Ring buffer reservation failed: the event was lost in the kernel.
    pub const RINGBUF_FULL: u32 = 0;
    /// The syscall-entry record could not be stored: the exit event was lost.
    pub const PENDING_FULL: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// `EventHeader::flags` bits.
pub const FLAG_PATH_TRUNCATED: u32 = 1 << 0;
pub const FLAG_ARGV_TRUNCATED: u32 = 1 << 1;
/// The path is the string the process passed (the open or exec failed, so the kernel
/// resolved none).
pub const FLAG_PATH_UNRESOLVED: u32 = 1 << 2;
/// A kernel read failed while building the event; some fields are empty.
pub const FLAG_READ_ERROR: u32 = 1 << 3;
/// Decided by a BPF LSM program (lsm backend): a refusal happened before the operation.
pub const FLAG_LSM: u32 = 1 << 4;
/// A [`Kind::Connect`] or [`Kind::Sendmsg`] record to an AF_UNIX peer: a [`UnixEvent`], not a
/// [`ConnectEvent`].
pub const FLAG_UNIX: u32 = 1 << 5;
/// A [`Kind::Bind`] record of listen(2), not bind(2).
pub const FLAG_LISTEN: u32 = 1 << 6;
/// Decided at a syscall's entry tracepoint where the kind's usual program is a cgroup one
/// (a socket family, a listen): the event's `hook` is `tracepoint`.
pub const FLAG_TRACEPOINT: u32 = 1 << 7;
/// A [`Kind::Limit`] record written by a cgroup socket program (a connect or send crossed the
/// budget): the event's `hook` is `cgroup`.
pub const FLAG_CGROUP: u32 = 1 << 8;

/// Set by the daemon before load: which cgroup subtree this daemon manages.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// cgroup id (inode number) of the managed root, e.g. /sys/fs/cgroup/agent-guard.
    pub root_id: u64,
    /// Level of the managed root in the cgroup2 hierarchy (the mount itself is level 0).
    pub root_level: u32,
    pub _pad: u32,
}

/// Byte offsets of the kernel structure fields the programs read, taken from the running
/// kernel's BTF at load time. Nothing is hard-coded per kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_files: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_f_path: u32,
    pub file_private_data: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub vfsmount_mnt_root: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sock_protocol: u32,
    /// Size in bytes of `sock.sk_protocol`; 0 when it is a bitfield (older kernels).
    pub sock_protocol_size: u32,
    /// task_struct.thread_info.status (x86: TS_COMPAT marks a 32-bit syscall in progress).
    pub task_ti_status: u32,
    /// file.f_mode (FMODE_READ = 1, FMODE_WRITE = 2).
    pub file_f_mode: u32,
    /// pt_regs.di: the first syscall argument on x86_64.
    pub pt_regs_di: u32,
    pub file_f_inode: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub super_block_s_dev: u32,
    /// lsm backend: linux_binprm.file, file.f_flags, and the chain from a task to its cgroup
    /// v2 ancestors (task_struct.cgroups -> css_set.dfl_cgrp -> cgroup.ancestors[level] ->
    /// cgroup.kn -> kernfs_node.id) that tells whether a task is in a given run.
    pub binprm_file: u32,
    pub file_f_flags: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_level: u32,
    pub cgroup_ancestors: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// sock.sk_cgrp_data.cgroup: the cgroup v2 a socket belongs to (its creator's).
    pub sock_sk_cgrp_data: u32,
    pub sock_cgroup_data_cgroup: u32,
    /// super_block.s_magic: which filesystem a file is on (cgroup, procfs).
    pub super_block_s_magic: u32,
    /// Where a procfs inode's process is: proc_inode.vfs_inode and proc_inode.pid, then
    /// pid.tasks[PIDTYPE_PID].first, an hlist_node inside task_struct.pid_links[PIDTYPE_PID].
    /// `proc_ok` is 0 when this kernel's BTF lacks one of them: then another process's
    /// /proc/PID files are not judged (status says so).
    pub proc_inode_vfs_inode: u32,
    pub proc_inode_pid: u32,
    pub pid_tasks: u32,
    pub task_pid_links: u32,
    pub proc_ok: u32,
}

/// `RunEntry::flags`: the run's processes carry the seccomp filter of `agent-guard run`
/// (enforce mode, `on_violation = "deny"`), which refuses `[syscalls] deny` and the unseen
/// syscalls with an errno before they run. The sys_enter check then leaves `link`/`linkat` to
/// the launcher's layers (the filter refuses them, or the run's Landlock layer judges both
/// names) instead of killing them as unseen. Bound cgroups never have it.
pub const RUN_SECCOMP: u32 = 1 << 0;
/// `RunEntry::flags`: the run has tasks (children of its cgroup with a policy of their own,
/// in AG_TASKS): only then do its processes pay for the task lookup.
pub const RUN_TASKS: u32 = 1 << 1;

/// What the kernel keeps per run cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunEntry {
    /// Daemon-assigned number of the run (the daemon maps it to the run id and metadata).
    pub run_index: u32,
    /// `RUN_*` bits.
    pub flags: u32,
    /// Policy slot (index into AG_POLICY_CUR), or [`NO_POLICY`].
    pub policy: u32,
    pub _pad: u32,
}

/// One compiled policy generation (AG_RULESETS value, keyed by rule set id). The daemon
/// fills every map entry of a rule set before it publishes the id in AG_POLICY_CUR, and a
/// program reads AG_POLICY_CUR once per decision: a decision uses exactly one generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RulesetHeader {
    pub mode: u32,
    pub on_violation: u32,
    /// `file_rule` bits of rules on "/" itself.
    pub root_flags: u32,
    /// `RS_*` bits.
    pub flags: u32,
    /// Bitmap of syscall numbers `[syscalls] deny` names.
    pub syscalls: [u64; SYSCALL_WORDS],
    /// Bitmap of syscall numbers refused because this backend cannot see what they do.
    pub unseen: [u64; SYSCALL_WORDS],
}

/// Key of the path trie (AG_FILE_NODES): a path component below a parent node. Node 0 of
/// each rule set is "/".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileNodeKey {
    pub ruleset: u32,
    pub parent: u32,
    /// The component's bytes, zero-padded.
    pub name: [u8; NAME_BYTES],
}

/// Components up to this long are keyed in AG_FILE_NODES_SHORT by a [`FileNodeShortKey`]:
/// the map hashes a whole key on every lookup, and the 264 bytes of a [`FileNodeKey`] took a
/// sixth of an open's time inside a run; most path components are short.
pub const SHORT_NAME_BYTES: usize = 24;

/// [`FileNodeKey`] of a component of at most [`SHORT_NAME_BYTES`] bytes (AG_FILE_NODES_SHORT).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileNodeShortKey {
    pub ruleset: u32,
    pub parent: u32,
    /// The component's bytes, zero-padded.
    pub name: [u8; SHORT_NAME_BYTES],
}

impl FileNodeKey {
    /// The short form of this key, when its component fits in one.
    pub fn short(&self) -> Option<FileNodeShortKey> {
        if self.name[SHORT_NAME_BYTES..].iter().any(|b| *b != 0) {
            return None;
        }
        let mut name = [0u8; SHORT_NAME_BYTES];
        name.copy_from_slice(&self.name[..SHORT_NAME_BYTES]);
        Some(FileNodeShortKey { ruleset: self.ruleset, parent: self.parent, name })
    }
}

impl FileNodeShortKey {
    pub fn long(&self) -> FileNodeKey {
        let mut name = [0u8; NAME_BYTES];
        name[..SHORT_NAME_BYTES].copy_from_slice(&self.name);
        FileNodeKey { ruleset: self.ruleset, parent: self.parent, name }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileNode {
    pub id: u32,
    /// `file_rule` bits of the rules that end here (0: an inner node only).
    pub flags: u32,
}

/// Data of an AG_NET_RULES LPM-trie key: the rule set id (big-endian, so that it is the
/// first 32 bits of every prefix) then the address, IPv4 as IPv4-mapped IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetKey {
    pub ruleset_be: [u8; 4],
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// The ports allowed for a CIDR, including those of every enclosing CIDR of the same rule
/// set (an LPM lookup returns only the longest prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    pub count: u32,
    pub _pad: u32,
    pub ranges: [PortRange; PORT_RANGES_MAX],
}

/// Common prefix of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// [`Kind::as_raw`] of one of the kernel's kinds.
    pub kind: u32,
    pub flags: u32,
    /// CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    /// cgroup id of the run (the managed root's child that contains the process).
    pub run_cgroup: u64,
    /// cgroup id the process is in (the run's or one of its descendants).
    pub cgroup: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// [`Verdict::as_raw`].
    pub verdict: u32,
    /// [`Rule::as_raw`], or [`RULE_NONE`].
    pub rule: u32,
    /// Rule set id that decided (0: none, the run has no policy).
    pub ruleset: u32,
    pub comm: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: EventHeader,
    pub path_len: u32,
    pub argv_len: u32,
    /// 0 for an exec that happened; -errno for one refused before it happened (execve or
    /// execveat failed with EACCES or EPERM: then `path` is the string the process passed,
    /// with [`FLAG_PATH_UNRESOLVED`], and argv is empty).
    pub result: i32,
    /// A refused exec's directory descriptor (execveat), or AT_FDCWD (-100): what a
    /// relative `path` is relative to.
    pub dirfd: i32,
    /// The executable's device and inode (see `GrantKey`), for approving a held exec; zero
    /// unless the exec violated the policy (the kernel identifies the file only then).
    pub file_id: [u8; 16],
    pub path: [u8; PATH_MAX],
    pub argv: [u8; ARGV_MAX],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenEvent {
    pub hdr: EventHeader,
    /// open(2) flags as passed.
    pub open_flags: u32,
    /// The new descriptor, or -errno.
    pub result: i32,
    pub path_len: u32,
    /// The access the kernel judged, as grant keys carry it (1 read | 2 write); 0 when the
    /// run has no policy or the open failed.
    pub access: u32,
    /// The opened file's device and inode (see `GrantKey`), for approving a held open; zero
    /// unless the open violated the policy (the kernel identifies the file only then).
    pub file_id: [u8; 16],
    pub path: [u8; PATH_MAX],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    pub hdr: EventHeader,
    /// 0 or -errno (-EINPROGRESS for a non-blocking connect in progress).
    pub result: i32,
    /// AF_INET or AF_INET6 (AF_* numbers).
    pub family: u16,
    /// Port in host byte order.
    pub port: u16,
    /// IPPROTO_* of the socket, or 0 if unknown.
    pub protocol: u16,
    /// SOCK_* type of the socket, or 0 if unknown.
    pub sock_type: u16,
    pub _pad: u32,
    /// IPv6, IPv4 as IPv4-mapped (as approvals key it); network byte order. (Programs of
    /// earlier versions put AF_INET addresses in the first 4 bytes; the daemon reads both.)
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub hdr: EventHeader,
    /// Wait status as the kernel encodes it: (code << 8) | signal.
    pub exit_code: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallEvent {
    pub hdr: EventHeader,
    /// Syscall number (x86_64 table).
    pub nr: u32,
    pub _pad: u32,
    /// First argument (flags of clone/unshare).
    pub arg0: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketEvent {
    pub hdr: EventHeader,
    pub family: u32,
    pub sock_type: u32,
    pub protocol: u32,
    pub _pad: u32,
}

// ---- containment: unix sockets, socket families, binding ----------------------------------

/// Bytes of a unix socket name kept (sun_path is 108 bytes; one more for the terminator).
pub const UNIX_PATH_BYTES: usize = 110;
/// `UnixKey::kind`.
pub const UNIX_PATHNAME: u8 = 1;
pub const UNIX_ABSTRACT: u8 = 2;
/// AG_UNIX_RULES entries across all rule sets.
pub const UNIX_RULES_MAX: u32 = 1 << 14;

/// Data of an AG_UNIX_RULES LPM-trie key. A pathname rule is stored as the path followed by
/// its terminating zero (an exact rule: the prefix covers the zero) or as `dir/` (a
/// directory rule: the prefix ends at the slash); `len` is 0. An abstract rule carries its
/// length in `len` (names may hold zero bytes) and the prefix covers exactly the name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixKey {
    pub ruleset_be: [u8; 4],
    pub kind: u8,
    pub len: u8,
    pub path: [u8; UNIX_PATH_BYTES],
}

/// What a rule set allows beyond the defaults. `families`: bit N allows address family N
/// (AF_INET, AF_INET6, AF_UNIX and AF_NETLINK are always set). `netlink`: bit N allows
/// netlink protocol N (NETLINK_ROUTE, 0, is always set).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetContain {
    pub families: u64,
    pub netlink: u32,
    pub flags: u32,
}

/// A unix connect or send: the name as the process passed it (lsm backend: the peer's
/// resolved path or abstract name).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixEvent {
    pub hdr: EventHeader,
    /// 0 or -errno.
    pub result: i32,
    /// 1 when the name is abstract (`path[..path_len]` is the name without its leading zero).
    pub abstract_name: u16,
    /// SOCK_* type of the socket, or 0 if unknown.
    pub sock_type: u16,
    pub path_len: u32,
    pub _pad: u32,
    pub path: [u8; UNIX_PATH_BYTES + 2],
}

/// Offsets the containment programs read (from BTF, 0 when the running kernel lacks them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetOffsets {
    /// bpf_sock_addr_kern.uaddr and .uaddrlen (the kernel's copy of the address; 6.7+).
    pub sa_kern_uaddr: u32,
    pub sa_kern_uaddrlen: u32,
    /// sock_common fields (at the start of struct sock).
    pub skc_family: u32,
    pub skc_num: u32,
    pub skc_rcv_saddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// unix_sock.addr (struct unix_address *) and unix_sock.path (struct path).
    pub unix_sock_addr: u32,
    pub unix_sock_path: u32,
    /// unix_address.len and .name (a struct sockaddr_un).
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// socket.sk, socket.type (repeated here so the containment programs need nothing else).
    pub socket_sk: u32,
    pub socket_type: u32,
    pub file_private_data: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod_net {
    use super::*;
    // SAFETY: plain-old-data, #[repr(C)] with explicit padding and no holes.
    unsafe impl aya::Pod for UnixKey {}
    unsafe impl aya::Pod for NetContain {}
    unsafe impl aya::Pod for NetOffsets {}
    unsafe impl aya::Pod for Limits {}
    unsafe impl aya::Pod for LimitCounts {}
    unsafe impl aya::Pod for DecoyHostKey {}
    unsafe impl aya::Pod for DestKey {}
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data, #[repr(C)] with explicit padding and no holes.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for RunEntry {}
    unsafe impl aya::Pod for GrantKey {}
    unsafe impl aya::Pod for RulesetHeader {}
    unsafe impl aya::Pod for FileNodeKey {}
    unsafe impl aya::Pod for FileNodeShortKey {}
    unsafe impl aya::Pod for FileNode {}
    unsafe impl aya::Pod for NetKey {}
    unsafe impl aya::Pod for NetRule {}
}

/// Events name kinds, verdicts and rules by their contract names (`name()`).
#[cfg(feature = "user")]
mod names_serde {
    use super::*;

    macro_rules! by_name {
        ($($t:ident $what:literal),+) => {$(
            impl serde::Serialize for $t {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_str(self.name())
                }
            }

            impl<'de> serde::Deserialize<'de> for $t {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    struct V;
                    impl serde::de::Visitor<'_> for V {
                        type Value = $t;
                        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                            write!(f, "the name of a {}", $what)
                        }
                        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$t, E> {
                            $t::from_name(v).ok_or_else(|| E::custom(format_args!("unknown {} {v:?}", $what)))
                        }
                    }
                    d.deserialize_str(V)
                }
            }
        )+};
    }

    by_name!(Kind "kind", Verdict "verdict", Rule "rule");
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_holes() {
        assert_eq!(size_of::<EventHeader>(), 4 * 2 + 8 * 3 + 4 * 8 + 16);
        assert_eq!(size_of::<SyscallEvent>(), size_of::<EventHeader>() + 16);
        assert_eq!(size_of::<SocketEvent>(), size_of::<EventHeader>() + 16);
        assert_eq!(size_of::<RunEntry>(), 16);
        assert_eq!(size_of::<RulesetHeader>(), 16 + 16 * SYSCALL_WORDS);
        assert_eq!(size_of::<FileNodeKey>(), 8 + NAME_BYTES);
        assert_eq!(size_of::<FileNodeShortKey>(), 8 + SHORT_NAME_BYTES);
        assert_eq!(size_of::<NetKey>(), 20);
        assert_eq!(size_of::<NetRule>(), 8 + 4 * PORT_RANGES_MAX);
        assert_eq!(size_of::<ExecEvent>(), size_of::<EventHeader>() + 32 + PATH_MAX + ARGV_MAX);
        assert_eq!(size_of::<OpenEvent>(), size_of::<EventHeader>() + 32 + PATH_MAX);
        assert_eq!(size_of::<ConnectEvent>(), size_of::<EventHeader>() + 32);
        assert_eq!(size_of::<ExitEvent>(), size_of::<EventHeader>() + 8);
        assert_eq!(size_of::<KernelOffsets>() % 8, 0);
        assert!(PATH_MAX.is_power_of_two() && ARGV_MAX.is_power_of_two());
        assert_eq!(size_of::<UnixKey>(), 6 + UNIX_PATH_BYTES);
        assert_eq!(size_of::<UnixEvent>(), size_of::<EventHeader>() + 16 + UNIX_PATH_BYTES + 2);
        assert_eq!(size_of::<NetOffsets>() % 8, 0);
        assert_eq!(size_of::<Limits>(), 4 * limit::COUNT + 8);
        assert_eq!(size_of::<LimitCounts>(), 8 + 4 * limit::COUNT);
        assert_eq!((size_of::<DecoyHostKey>(), size_of::<DestKey>()), (24, 32));
        assert_eq!(size_of::<LimitEvent>(), size_of::<EventHeader>() + 32);
    }

    #[test]
    fn raw_values_and_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(*k));
            assert_eq!(Kind::from_raw(k.as_raw()), k.is_kernel().then_some(*k));
        }
        for v in Verdict::ALL {
            assert_eq!((Verdict::from_raw(v.as_raw()), Verdict::from_name(v.name())), (Some(*v), Some(*v)));
        }
        for r in Rule::ALL {
            assert_eq!((Rule::from_raw(r.as_raw()), Rule::from_name(r.name())), (Some(*r), Some(*r)));
        }
        assert_eq!((Kind::from_raw(0), Kind::from_raw(Kind::RunStart.as_raw()), Kind::from_raw(10)), (None, None, None));
        assert_eq!((Verdict::from_raw(6), Rule::from_raw(RULE_NONE), Rule::from_raw(26)), (None, None, None));
        for (i, r) in limit::RULES.iter().enumerate() {
            assert!(r.name().starts_with("limits.") && limit::RULES[..i].iter().all(|o| o != r));
        }
        assert_eq!((Kind::Bind.name(), Rule::Unix.name(), Rule::Families.name(), Rule::Listen.name()), ("bind", "network.unix", "network.families", "network.listen"));
        assert_eq!(Rule::raw_of(None), RULE_NONE);
        assert_eq!((Kind::Sendmsg.as_raw(), Verdict::WouldDeny.as_raw(), Rule::Grant.as_raw()), (6, 3, 10));
        assert_eq!((Kind::PolicyReload.name(), Verdict::WouldDeny.name(), Rule::PathTooLong.name()), ("policy_reload", "would_deny", "files.path_too_long"));
    }
}
