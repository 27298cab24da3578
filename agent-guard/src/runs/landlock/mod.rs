//! The Landlock layer of runs started by `agent-guard run` under an enforce-mode policy.
//!
//! # What it adds
//!
//! On a host without BPF LSM the eBPF programs can only act after the fact: an open outside
//! the policy is judged at syscall exit and the process is killed there, an exec at
//! `sched_process_exec`. Landlock refuses the same operations with `EACCES` *before* they
//! happen, and the process goes on. For an `enforce` policy, `run` puts the command under a
//! ruleset compiled from the same policy ([`Plan::for_policy`]):
//!
//! - **Writes** (every `on_violation`): write, truncate, create, remove, rename and link
//!   rights ([`write_access`]), granted beneath each `[files] write` path. Refused before
//!   anything changes on disk, which the eBPF layer alone cannot do.
//! - **Reads and execs** (`on_violation = "deny"`): read-file, read-dir and execute, granted
//!   beneath each `[files] read` and `write` path, each `[exec] allow` entry and the dynamic
//!   loaders (an exec needs read and execute on the executable and on its `PT_INTERP`, which
//!   the kernel opens itself). Execute is granted beneath the read trees too: the policy judges
//!   a script by its interpreter, while Landlock checks the script file itself, so a script
//!   the policy allows can live anywhere the policy lets its interpreter read it. An exec of
//!   a binary inside a read tree but outside `[exec] allow` is therefore left to the eBPF
//!   layer (killed before its first instruction); outside every tree it is `EACCES`.
//! - **TCP connects** (`on_violation = "deny"`, Landlock ABI >= 4): every port some
//!   `[network] connect` rule allows, for any address (Landlock has no addresses; the cgroup
//!   programs still check them), when that is at most [`PORTS_MAX`] ports. Binds are not
//!   handled: the policy does not restrict them.
//! - **Scoping** (Landlock ABI >= 6): no signals to, and no connects to abstract unix sockets
//!   of, processes outside the run's Landlock domain. The policy has no rule that allows
//!   either.
//!
//! With `on_violation = "kill"` or `"freeze"` reads, execs and connects stay with the eBPF
//! layer, which kills or holds them: a Landlock refusal would keep it from ever seeing them.
//!
//! A path the policy allows is never refused here: every grant is at least as wide as the
//! policy. What Landlock cannot express stays the eBPF layer's (the backstop):
//! - **Carve-outs inside allowed trees.** Landlock only grants: a `deny` rule or a longer
//!   `read` rule inside an allowed tree is enforced by the eBPF programs alone (a read is
//!   killed before it returns; a write after the open, with the file already created or
//!   truncated). A `deny` at exactly an allowed path is honoured (that path is not granted).
//! - **Addresses, UDP, hot reload, hold-for-review**: the ruleset is fixed when the run
//!   starts; reloading the policy changes only the eBPF side.
//! - **Paths that did not exist at launch.** A rule is bound to an inode: a path missing when
//!   the run starts gets no grant (`run` says so), and access below it stays refused for that
//!   run even once it is created (unless it is created inside another granted tree).
//! - **Grants are per inode tree, not per name.** A rule path that is a symlink grants its
//!   target; a rule that is a regular file grants that file only.
//! - **Already-open descriptors** (e.g. stdout redirected by the shell) are not checked again.
//!
//! The daemon makes the [`Plan`] from the policy it loaded and hands it to `run` in its
//! `register` response; `run` parses no policy. It masks the plan with the host's Landlock
//! ABI and grants the dynamic loaders ([`Plan::on_host`]: both depend on the launching host),
//! builds the ruleset before the fork (opening the path descriptors is not async-signal-safe)
//! and the child applies it between its move into the run cgroup (itself a file write) and
//! `exec`, with the bare `landlock_restrict_self` syscall ([`Layer::apply`]). The ruleset
//! descriptor is close-on-exec: the command never sees it. `run` tells the daemon the ABI the
//! layer was applied with; the daemon derives the layer's [`Coverage`] from its plan
//! ([`Plan::coverage`]), shows it in `status` and `ps --json` and uses it to say in events
//! which layer refused an operation.
//!
//! Where Landlock is unavailable, or the kernel's ABI lacks some rights, `run` prints one
//! warning and goes on: the eBPF layer still enforces, after the fact.
use std::{
    collections::BTreeMap,
    os::{
        unix::fs::FileExt,
    },
    path::Path,
};

use landlock::{
    make_bitflags, Access, AccessFs, BitFlags, Scope,
    ABI,
};
use serde::{Deserialize, Serialize};

use crate::policy::{self, Mode, OnViolation, Policy};

/// What the layer says when it cannot refuse something up front.
mod apply;
mod attribution;
pub use apply::*;
pub use attribution::*;

const FALLBACK: &str = "the eBPF layer still enforces, after the fact (a denied read or exec is killed, \
                        a file opened with O_CREAT/O_TRUNC is created/truncated before the kill)";

/// Most TCP ports the layer lists one by one (Landlock has a rule per port, no ranges). A
/// policy that allows more is left to the cgroup programs for connects.
pub const PORTS_MAX: usize = 1024;

/// Where the dynamic loaders live (an exec needs Landlock's execute right on the executable's
/// `PT_INTERP` too: the kernel opens it for the exec).
const LOADER_DIRS: &[&str] =
    &["/lib64", "/lib", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"];

/// The write side of Landlock ABI 4 (ABI 1's create, remove, write rights, ABI 2's Refer,
/// ABI 3's Truncate). Later ABIs' write-side additions (device ioctls, connecting to named
/// unix sockets) are not file writes in the policy's sense and are left alone.
pub fn write_access() -> BitFlags<AccessFs> {
    AccessFs::from_write(ABI::V4)
}

/// Reading files, listing directories, executing.
pub fn read_access() -> BitFlags<AccessFs> {
    AccessFs::from_read(ABI::V1)
}

/// What an exec needs on the executable (and on its interpreter).
fn exec_access() -> BitFlags<AccessFs> {
    make_bitflags!(AccessFs::{ReadFile | Execute})
}

/// The rights that make sense on a rule for a non-directory.
fn file_access() -> BitFlags<AccessFs> {
    make_bitflags!(AccessFs::{ReadFile | Execute | WriteFile | Truncate})
}

/// The kernel's Landlock ABI version; 0 when Landlock is not available.
pub fn host_abi() -> u32 {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attr only queries the ABI.
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    v.max(0) as u32
}

/// What a run's Landlock layer refuses up front on this host, as `run` reports it to the
/// daemon (`status`, `ps --json`, and which layer an event names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// The kernel's Landlock ABI.
    pub abi: u32,
    /// Opening for reading or listing outside `[files] read`/`write`.
    pub files_read: bool,
    /// Writing, truncating, creating, removing, renaming, linking outside `[files] write`.
    pub files_write: bool,
    /// Executing outside `[exec] allow`, the read trees and the loaders.
    pub exec: bool,
    /// TCP connects to ports no `[network] connect` rule allows.
    pub tcp_connect: bool,
    /// Signals to processes outside the run.
    pub scope_signal: bool,
    /// Connects to abstract unix sockets of processes outside the run.
    pub scope_abstract_unix: bool,
    /// What is left to the eBPF layer alone for this run, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ebpf_only: Vec<String>,
}

impl Coverage {
    /// The operations it refuses, as `status` lists them.
    pub fn refuses(&self) -> Vec<&'static str> {
        [
            (self.files_read, "read"),
            (self.files_write, "write"),
            (self.exec, "exec"),
            (self.tcp_connect, "tcp-connect"),
            (self.scope_signal, "signal"),
            (self.scope_abstract_unix, "abstract-unix"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// The layer for an enforce-mode policy, as the daemon hands it to `run` on `register`: what
/// it handles and grants, before the launching host's Landlock ABI masks it. Rights are the
/// kernel's `LANDLOCK_ACCESS_FS_*` bits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Reads, execs and connects are refused only with `on_violation = "deny"`.
    pub on_violation: OnViolation,
    /// Handled filesystem rights.
    pub fs: BitFlags<AccessFs>,
    /// Path -> rights granted beneath it (masked to file rights for a non-directory).
    pub grants: BTreeMap<String, BitFlags<AccessFs>>,
    /// The exact `[exec] allow` files: `run` grants their `PT_INTERP` what an exec needs.
    pub exec_files: Vec<String>,
    pub tcp: TcpPlan,
    /// `[network] unix` lists an `@name`: Landlock's scope would refuse every abstract socket
    /// outside the run, so the eBPF layer judges abstract sockets alone.
    #[serde(default)]
    pub abstract_unix_allowed: bool,
}

/// What the layer does with TCP connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpPlan {
    /// Left to the eBPF layer (`on_violation` is not "deny").
    Ebpf,
    /// Handled (Landlock ABI >= 4), with these ports allowed.
    Ports(Vec<u16>),
    /// The policy allows this many ports, more than [`PORTS_MAX`]: left to the cgroup programs.
    TooMany(usize),
}

/// A [`Plan`] on a kernel with Landlock ABI `abi`, with the loaders granted: what `run` builds.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPlan {
    /// Handled filesystem rights.
    pub fs: BitFlags<AccessFs>,
    /// Path -> rights granted beneath it (masked to file rights for a non-directory).
    pub grants: BTreeMap<String, BitFlags<AccessFs>>,
    /// TCP connect handled, with these ports allowed.
    pub ports: Option<Vec<u16>>,
    pub scopes: BitFlags<Scope>,
    pub coverage: Coverage,
}

impl Plan {
    /// The layer for `policy`: none in monitor mode.
    pub fn for_policy(policy: &Policy) -> Option<Plan> {
        if policy.mode != Mode::Enforce {
            return None;
        }
        // Reads, execs and connects only where a refusal is what the policy asks for.
        let refuse_all = policy.on_violation == OnViolation::Deny;
        let fs = if refuse_all { write_access() | read_access() } else { write_access() };
        let mut grants: BTreeMap<String, BitFlags<AccessFs>> = BTreeMap::new();
        let mut grant = |p: &str, rights: BitFlags<AccessFs>| {
            let rights = rights & fs;
            if !rights.is_empty() {
                *grants.entry(p.to_string()).or_insert_with(BitFlags::empty) |= rights;
            }
        };
        // A deny rule at exactly an allowed path wins there: that path is not granted (rules
        // deeper inside it still are).
        let denied = |p: &String| policy.files_deny.contains(p);
        for r in policy.files_read.iter().filter(|r| !denied(r)) {
            grant(r, read_access());
        }
        for w in policy.files_write.iter().filter(|w| !denied(w)) {
            grant(w, write_access() | read_access());
        }
        for e in &policy.exec_allow {
            let p = e.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(e);
            grant(p, exec_access());
        }
        let exec_files = policy.exec_allow.iter().filter(|e| !e.ends_with('/')).cloned().collect();
        let tcp = match (refuse_all, connect_ports(&policy.network_connect)) {
            (false, _) => TcpPlan::Ebpf,
            (true, Ok(ports)) => TcpPlan::Ports(ports),
            (true, Err(count)) => TcpPlan::TooMany(count),
        };
        let abstract_unix_allowed = policy.network_unix.iter().any(|u| u.starts_with('@'));
        Some(Plan { on_violation: policy.on_violation, fs, grants, exec_files, tcp, abstract_unix_allowed })
    }

    /// What the layer refuses on a kernel with Landlock ABI `abi` (> 0), and what it leaves
    /// to the eBPF layer: the daemon's record of a run's layer, from the ABI `run` got.
    pub fn coverage(&self, abi: u32) -> Coverage {
        let kabi = ABI::from(abi as i32);
        let fs = self.fs & AccessFs::from_all(kabi);
        let mut ebpf_only = Vec::new();
        if self.on_violation != OnViolation::Deny {
            ebpf_only.push(format!(
                "read, exec, tcp-connect: on_violation = \"{}\" (the eBPF layer must see them to {})",
                self.on_violation,
                if self.on_violation == OnViolation::Kill { "kill" } else { "hold the run" }
            ));
        }
        if fs.contains(AccessFs::WriteFile) && !fs.contains(AccessFs::Truncate | AccessFs::Refer) {
            ebpf_only.push(format!("truncate and cross-directory rename/link: Landlock ABI {abi} (ABI 3 has them)"));
        }
        let tcp_connect = match &self.tcp {
            TcpPlan::Ebpf => false,
            _ if abi < 4 => {
                ebpf_only.push(format!("tcp-connect: Landlock ABI {abi} has no network rules (ABI 4); the cgroup programs refuse with EPERM"));
                false
            }
            TcpPlan::Ports(_) => true,
            TcpPlan::TooMany(count) => {
                ebpf_only.push(format!(
                    "tcp-connect: the policy allows {count} ports (Landlock lists ports one by one; at most {PORTS_MAX}); \
                     the cgroup programs refuse with EPERM"
                ));
                false
            }
        };
        let mut scopes = Scope::from_all(kabi);
        if scopes.is_empty() {
            ebpf_only.push(format!("signal, abstract-unix: Landlock ABI {abi} has no scoping (ABI 6)"));
        } else if self.abstract_unix_allowed {
            scopes.remove(Scope::AbstractUnixSocket);
            ebpf_only.push("abstract-unix: the policy allows abstract sockets ([network] unix \"@...\")".into());
        }
        Coverage {
            abi,
            files_read: fs.contains(AccessFs::ReadFile | AccessFs::ReadDir),
            files_write: fs.contains(AccessFs::WriteFile),
            exec: fs.contains(AccessFs::Execute),
            tcp_connect,
            scope_signal: scopes.contains(Scope::Signal),
            scope_abstract_unix: scopes.contains(Scope::AbstractUnixSocket),
            ebpf_only,
        }
    }

    /// The layer on a kernel with Landlock ABI `abi` (> 0); `loaders` are granted what an
    /// exec needs.
    pub fn on_host(&self, abi: u32, loaders: &[String]) -> HostPlan {
        let coverage = self.coverage(abi);
        let fs = self.fs & AccessFs::from_all(ABI::from(abi as i32));
        let mut grants: BTreeMap<String, BitFlags<AccessFs>> = BTreeMap::new();
        let paths = self.grants.iter().map(|(p, r)| (p, *r)).chain(loaders.iter().map(|l| (l, exec_access())));
        for (p, rights) in paths {
            let rights = rights & fs;
            if !rights.is_empty() {
                *grants.entry(p.clone()).or_insert_with(BitFlags::empty) |= rights;
            }
        }
        let ports = match &self.tcp {
            TcpPlan::Ports(ports) if coverage.tcp_connect => Some(ports.clone()),
            _ => None,
        };
        let mut scopes = Scope::from_all(ABI::from(abi as i32));
        if self.abstract_unix_allowed {
            scopes.remove(Scope::AbstractUnixSocket);
        }
        HostPlan { fs, grants, ports, scopes, coverage }
    }
}

/// Every port some connect rule allows (for some address), ascending; `Err(count)` when
/// that is more than [`PORTS_MAX`].
fn connect_ports(rules: &[policy::NetRuleSpec]) -> Result<Vec<u16>, usize> {
    let mut ranges: Vec<(u32, u32)> = rules.iter().map(|r| (r.ports.0 as u32, r.ports.1 as u32)).collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1 + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    let count: usize = merged.iter().map(|(lo, hi)| (hi - lo + 1) as usize).sum();
    if count > PORTS_MAX {
        return Err(count);
    }
    Ok(merged.into_iter().flat_map(|(lo, hi)| lo..=hi).map(|p| p as u16).collect())
}

/// The dynamic loaders the layer grants exec rights to: those in the usual library
/// directories and the `PT_INTERP` of each exact `[exec] allow` file.
pub fn loaders(plan: &Plan) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for d in LOADER_DIRS {
        let Ok(entries) = std::fs::read_dir(d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("ld-") && name.contains(".so") {
                out.insert(format!("{d}/{name}"));
            }
        }
    }
    for e in &plan.exec_files {
        if let Some(i) = elf_interp(Path::new(e)) {
            out.insert(i);
        }
    }
    out.into_iter().collect()
}

/// The `PT_INTERP` of a 64-bit little-endian ELF file, if it has one.
fn elf_interp(path: &Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let mut h = [0u8; 64];
    f.read_exact_at(&mut h, 0).ok()?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let (phoff, phentsize, phnum) = (u64_at(&h, 0x20), u16_at(&h, 0x36) as u64, u16_at(&h, 0x38) as u64);
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        f.read_exact_at(&mut ph, phoff + i * phentsize).ok()?;
        if u32::from_le_bytes(ph[..4].try_into().expect("4 bytes")) == 3 {
            let (off, size) = (u64_at(&ph, 8), u64_at(&ph, 32));
            if size == 0 || size > 4096 {
                return None;
            }
            let mut s = vec![0u8; size as usize];
            f.read_exact_at(&mut s, off).ok()?;
            let s = s.split(|b| *b == 0).next()?;
            return std::str::from_utf8(s).ok().filter(|s| s.starts_with('/')).map(str::to_string);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use crate::output::event::{Detail, Event, Kind, Rule, Verdict};

    fn available() -> bool {
        if host_abi() < 1 {
            eprintln!("skip: Landlock not available");
            return false;
        }
        true
    }

    fn parse(text: &str) -> Policy {
        let checked = policy::parse(text, "test.toml");
        checked.policy.unwrap_or_else(|| panic!("{:?}", checked.errors))
    }

    /// The daemon's plan for an enforce-mode `policy`, on a host with Landlock ABI `abi`.
    fn plan(policy: &Policy, abi: u32, loaders: &[String]) -> HostPlan {
        Plan::for_policy(policy).expect("an enforce-mode policy").on_host(abi, loaders)
    }

    fn list(paths: &[&Path]) -> String {
        paths.iter().map(|p| format!("{:?}", p.display().to_string())).collect::<Vec<_>>().join(", ")
    }

    fn enforce(read: &[&Path], write: &[&Path]) -> Policy {
        parse(&format!(
            "name = \"ll\"\nmode = \"enforce\"\n[files]\nread = [{}]\nwrite = [{}]\n",
            list(read),
            list(write)
        ))
    }

    const RICH: &str = r#"name = "rich"
[files]
read = ["/usr", "/ws", "/secret"]
write = ["/ws/out"]
deny = ["/secret", "/ws/.env"]
[exec]
allow = ["/usr/bin/git", "/opt/tools/"]
[network]
connect = ["127.0.0.1/32:8080", "10.0.0.0/8:443", "[::1]/128:8079-8081"]
"#;

    #[test]
    fn a_deny_policy_handles_reads_writes_execs_connects_and_scopes() {
        let p = plan(&parse(RICH), 7, &["/lib64/ld-linux-x86-64.so.2".to_string()]);
        assert_eq!(p.fs, write_access() | read_access());
        let g = |path: &str| p.grants.get(path).copied();
        assert_eq!(g("/usr"), Some(read_access()));
        assert_eq!(g("/ws"), Some(read_access()));
        assert_eq!(g("/ws/out"), Some(read_access() | write_access()));
        // A deny at exactly an allowed path wins there; one deeper cannot be expressed.
        assert_eq!(g("/secret"), None);
        assert_eq!(g("/ws/.env"), None);
        assert_eq!(g("/usr/bin/git"), Some(exec_access()));
        assert_eq!(g("/opt/tools"), Some(exec_access()));
        assert_eq!(g("/lib64/ld-linux-x86-64.so.2"), Some(exec_access()));
        assert_eq!(p.ports, Some(vec![443, 8079, 8080, 8081]));
        assert_eq!(p.scopes, Scope::AbstractUnixSocket | Scope::Signal);
        let c = &p.coverage;
        assert_eq!(c.refuses(), ["read", "write", "exec", "tcp-connect", "signal", "abstract-unix"]);
        assert!(c.ebpf_only.is_empty(), "{c:?}");
    }

    #[test]
    fn an_allowed_abstract_socket_turns_off_the_abstract_scope() {
        let text = RICH.replace("[network]", "[network]\nunix = [\"@agent\", \"/run/a.sock\"]");
        let plan = Plan::for_policy(&parse(&text)).unwrap();
        assert!(plan.abstract_unix_allowed);
        let p = plan.on_host(7, &[]);
        assert_eq!(p.scopes, BitFlags::from(Scope::Signal));
        assert_eq!(p.coverage.refuses(), ["read", "write", "exec", "tcp-connect", "signal"]);
        assert!(p.coverage.ebpf_only.iter().any(|l| l.contains("abstract-unix")), "{:?}", p.coverage.ebpf_only);
        // A plan from a daemon that does not send the field keeps the scope.
        let mut json: serde_json::Value = serde_json::to_value(&plan).unwrap();
        json.as_object_mut().unwrap().remove("abstract_unix_allowed");
        let old: Plan = serde_json::from_value(json).unwrap();
        assert_eq!(old.on_host(7, &[]).scopes, Scope::AbstractUnixSocket | Scope::Signal);
    }

    #[test]
    fn kill_and_freeze_leave_reads_execs_and_connects_to_ebpf() {
        for action in ["kill", "freeze"] {
            let text = RICH.replace("name = \"rich\"", &format!("name = \"rich\"\non_violation = \"{action}\""));
            let p = plan(&parse(&text), 7, &["/lib64/ld-linux-x86-64.so.2".to_string()]);
            assert_eq!(p.fs, write_access(), "{action}");
            assert_eq!(p.grants.keys().collect::<Vec<_>>(), ["/ws/out"], "{action}");
            assert_eq!(p.ports, None);
            assert_eq!(p.coverage.refuses(), ["write", "signal", "abstract-unix"]);
            assert_eq!(p.coverage.ebpf_only.len(), 1, "{:?}", p.coverage.ebpf_only);
            assert!(p.coverage.ebpf_only[0].contains(action), "{:?}", p.coverage.ebpf_only);
        }
    }

    #[test]
    fn older_abis_lose_what_they_lack_and_say_so() {
        let p = plan(&parse(RICH), 3, &[]);
        assert_eq!(p.fs, write_access() | read_access());
        assert_eq!((p.ports.clone(), p.scopes), (None, BitFlags::empty()));
        assert_eq!(p.coverage.refuses(), ["read", "write", "exec"]);
        let notes = p.coverage.ebpf_only.join("\n");
        assert!(notes.contains("ABI 3 has no network rules") && notes.contains("ABI 3 has no scoping"), "{notes}");
        let p = plan(&parse(RICH), 1, &[]);
        assert!(!p.fs.contains(AccessFs::Truncate) && p.fs.contains(AccessFs::WriteFile));
        assert!(p.coverage.ebpf_only.iter().any(|n| n.starts_with("truncate")), "{:?}", p.coverage.ebpf_only);
    }

    #[test]
    fn connect_ports_are_the_union_of_the_rules_ports_within_a_bound() {
        let rules = |ports: &[(u16, u16)]| -> Vec<policy::NetRuleSpec> {
            ports.iter().map(|&ports| policy::NetRuleSpec { net: "10.0.0.0/8".parse().unwrap(), ports }).collect()
        };
        assert_eq!(connect_ports(&[]), Ok(vec![]));
        assert_eq!(connect_ports(&rules(&[(5, 7), (1, 2), (6, 9), (3, 3)])), Ok(vec![1, 2, 3, 5, 6, 7, 8, 9]));
        assert_eq!(connect_ports(&rules(&[(1, 1024)])).map(|v| v.len()), Ok(1024));
        assert_eq!(connect_ports(&rules(&[(1, 1024), (2000, 2000)])), Err(1025));
        assert_eq!(connect_ports(&rules(&[(1, 65535), (80, 80)])), Err(65535));
        // Too many ports: connects stay with the cgroup programs, and status says so.
        let p = plan(&parse("name = \"n\"\n[network]\nconnect = [\"[::1]/128:1-65535\"]\n"), 7, &[]);
        assert_eq!(p.ports, None);
        assert!(p.coverage.ebpf_only[0].contains("65535 ports"), "{:?}", p.coverage.ebpf_only);
    }

    #[test]
    fn the_loader_of_an_allowed_binary_is_found() {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let Some(interp) = elf_interp(&sh) else {
            eprintln!("skip: {} is not a dynamically linked ELF file", sh.display());
            return;
        };
        assert!(interp.contains("ld-"), "{interp}");
        let pol = parse(&format!("name = \"x\"\n[exec]\nallow = [{:?}]\n", sh.display().to_string()));
        assert!(loaders(&Plan::for_policy(&pol).unwrap()).contains(&interp));
        assert_eq!(elf_interp(Path::new("/etc/hostname")), None);
    }

    #[test]
    fn no_plan_and_monitor_mean_no_layer() {
        let p = prepare(None);
        assert!(p.layer.is_none() && p.coverage.is_none() && p.warnings.is_empty());
        let monitor = parse("name = \"m\"\nmode = \"monitor\"\n[files]\nwrite = [\"/tmp\"]\n");
        assert_eq!(Plan::for_policy(&monitor), None);
    }

    #[test]
    fn the_plan_crosses_the_control_socket_and_the_daemon_derives_the_runs_coverage() {
        for text in [RICH.to_string(), RICH.replace("name = \"rich\"", "name = \"rich\"\non_violation = \"kill\"")] {
            let plan = Plan::for_policy(&parse(&text)).unwrap();
            let json = serde_json::to_string(&plan).unwrap();
            assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan, "{json}");
            for abi in 1..=7 {
                assert_eq!(plan.coverage(abi), plan.on_host(abi, &[]).coverage, "ABI {abi}");
            }
        }
        // Rights are the kernel's bits: unknown ones are refused, not dropped.
        let json = serde_json::to_string(&Plan::for_policy(&parse(RICH)).unwrap()).unwrap();
        let bad = json.replacen(&format!("\"fs\":{}", (write_access() | read_access()).bits()), "\"fs\":18446744073709551615", 1);
        assert_ne!(bad, json);
        assert!(serde_json::from_str::<Plan>(&bad).is_err());
    }

    fn open_event(path: &str, flags: i32, result: i32) -> Event {
        Event {
            layer: kernel_layer(Kind::Open),
            detail: Detail::Open {
                path: path.into(),
                access: crate::output::event::access_of(flags as u32),
                flags: flags as u32,
                result,
                error: crate::output::event::errno_name(result),
                path_resolved: result >= 0,
                path_truncated: false,
            },
            ..Event::new(Kind::Open)
        }
    }

    #[test]
    fn events_say_which_layer_refused() {
        let pol = parse(RICH);
        let cov = plan(&pol, 7, &[]).coverage;
        let judged = |path: &str, flags: i32, result: i32| {
            let mut e = open_event(path, flags, result);
            attribute(&mut e, &cov, Some(&pol));
            (e.verdict.name(), e.rule.map(|r| r.name().to_string()), e.layer)
        };
        let eacces = -libc::EACCES;
        let landlock = |rule: &str| ("deny", Some(rule.to_string()), Some("landlock"));
        assert_eq!(judged("/etc/shadow", libc::O_RDONLY, eacces), landlock("files.read"));
        assert_eq!(judged("/ws/../etc//./shadow", libc::O_RDONLY, eacces), landlock("files.read"));
        assert_eq!(judged("/secret/x", libc::O_RDONLY, eacces), landlock("files.deny"));
        assert_eq!(judged("/ws/x", libc::O_WRONLY | libc::O_CREAT, eacces), landlock("files.write"));
        assert_eq!(judged("/etc/x", libc::O_RDWR, eacces), landlock("files.write"));
        // Allowed by the policy: the file's own permissions, not Landlock.
        assert_eq!(judged("/ws/x", libc::O_RDONLY, eacces), ("allow", None, Some("ebpf")));
        // Other errors, relative paths and successful opens are the eBPF layer's report.
        assert_eq!(judged("/etc/shadow", libc::O_RDONLY, -libc::ENOENT), ("allow", None, Some("ebpf")));
        assert_eq!(judged("shadow", libc::O_RDONLY, eacces), ("allow", None, Some("ebpf")));
        // A run whose layer does not handle reads (on_violation = "kill").
        let kill = parse(&RICH.replace("name = \"rich\"", "name = \"rich\"\non_violation = \"kill\""));
        let kcov = plan(&kill, 7, &[]).coverage;
        let mut e = open_event("/etc/shadow", libc::O_RDONLY, eacces);
        attribute(&mut e, &kcov, Some(&kill));
        assert_eq!((e.verdict.name(), e.layer), ("allow", Some("ebpf")));

        let connect = |result: i32, verdict: &'static str| {
            let mut e = Event {
                verdict: Verdict::from_name(verdict).unwrap(),
                rule: Some(Rule::Network),
                layer: kernel_layer(Kind::Connect),
                detail: Detail::Connect { family: "inet", addr: "127.0.0.1".into(), port: 9, proto: "tcp", result, error: None },
                ..Event::new(Kind::Connect)
            };
            attribute(&mut e, &cov, Some(&pol));
            (e.verdict.name(), e.layer)
        };
        assert_eq!(connect(eacces, "deny"), ("deny", Some("landlock")));
        assert_eq!(connect(-libc::EPERM, "deny"), ("deny", Some("ebpf")));
        assert_eq!(kernel_layer(Kind::Exit), None);
        assert_eq!(kernel_layer(Kind::RunStart), None);
    }

    #[test]
    fn the_layer_refuses_outside_the_policy_and_its_fd_does_not_leak() {
        if !available() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let out = ws.join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(ws.join("keep.txt"), "hello").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "TOPSECRET").unwrap();
        let gone = tmp.path().join("gone");
        let p = prepare(Plan::for_policy(&enforce(&[&ws], &[&out, &gone])).as_ref());
        assert_eq!(p.warnings.len(), 1, "{p:?}");
        assert!(p.warnings[0].contains("gone (does not exist)"), "{p:?}");
        let cov = p.coverage.clone().expect("coverage");
        assert!(cov.files_read && cov.files_write && cov.exec, "{cov:?}");
        let layer = p.layer.expect("a layer");
        // no_new_privs only where Landlock requires it: without CAP_SYS_ADMIN (bit 21).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let cap_eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
        let sys_admin = u64::from_str_radix(cap_eff, 16).unwrap() & (1 << 21) != 0;
        assert_eq!(layer.no_new_privs, !sys_admin);
        // SAFETY: F_GETFD on an open fd.
        let flags = unsafe { libc::fcntl(layer.fd.as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);

        // In a thread of its own: Landlock restricts the calling thread only.
        let root = tmp.path().to_path_buf();
        std::thread::spawn(move || {
            layer.apply().unwrap();
            std::fs::write(out.join("new.txt"), "x").unwrap();
            let e = std::fs::write(ws.join("new.txt"), "x").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES));
            let e = std::fs::write(ws.join("keep.txt"), "x").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES));
            let e = std::fs::remove_file(ws.join("keep.txt")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES));
            assert_eq!(std::fs::read_to_string(ws.join("keep.txt")).unwrap(), "hello");
            let e = std::fs::read_to_string(root.join("secret.txt")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES));
            let e = std::fs::read_dir(&root).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        })
        .join()
        .unwrap();
        assert!(!tmp.path().join("ws/new.txt").exists());
        assert_eq!(std::fs::read_to_string(tmp.path().join("ws/keep.txt")).unwrap(), "hello");
        assert!(tmp.path().join("ws/out/new.txt").exists());
    }
}
