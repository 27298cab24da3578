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
//! - **Carve-outs inside allowed trees** that cannot be listed around (carve.rs: a
//!   directory on the way with more than [`ENTRIES_MAX`] entries, or a carve-out that appears
//!   during the run): enforced by the eBPF programs alone (a read is killed before it
//!   returns). The others are refused up front: the tree is granted entry by entry around
//!   them, and new entries directly in the directories on the way get no grant (the cost).
//!   A `deny` at exactly an allowed path is honoured (that path is not granted).
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

use crate::policy::{Mode, OnViolation, Policy};

/// What the layer says when it cannot refuse something up front.
mod apply;
mod attribution;
mod carve;
pub use apply::*;
pub use attribution::*;
pub use carve::{review, Split, ENTRIES_MAX};

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
    /// Carve-outs inside allowed trees refused up front, and what that costs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carve_outs: Vec<String>,
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
    /// How the grants were split around carve-outs (directories listed by the daemon when
    /// the run registered); `run` opens its `exact` grants without following a final symlink.
    #[serde(default)]
    pub split: Split,
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
    /// How the grants were split around carve-outs; its `exact` grants are opened without
    /// following a final symlink.
    pub split: Split,
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
        // Device nodes are made only where `[files] devices` says so: never granted otherwise.
        let devices = if policy.devices { BitFlags::empty() } else { AccessFs::MakeChar | AccessFs::MakeBlock };
        let mut grant = |p: &str, rights: BitFlags<AccessFs>| {
            let rights = rights & fs & !devices;
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
        // A decoy must reach the eBPF layer, which trips on it whatever the rest says.
        for d in &policy.tripwires.decoy_files {
            grant(d, write_access() | read_access());
        }
        for e in &policy.exec_allow {
            let p = e.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(e);
            grant(p, exec_access());
        }
        // Carve-outs inside the trees: grant around them (module carve).
        let split = carve::split(&mut grants, &carve::carve_outs(policy, read_access() & fs), &mut carve::list);
        let exec_files = policy.exec_allow.iter().filter(|e| !e.ends_with('/')).cloned().collect();
        // Name rules' ports like CIDR rules' ports, and with them port 53: Landlock judges a
        // TCP query before the cgroup program sends it to the forwarder.
        let dns = (!policy.network_names.is_empty()).then_some((53, 53));
        let ports = policy.network_connect.iter().map(|r| r.ports).chain(policy.network_names.iter().map(|r| r.ports)).chain(dns);
        let tcp = match (refuse_all, connect_ports(ports)) {
            (false, _) => TcpPlan::Ebpf,
            (true, Ok(ports)) => TcpPlan::Ports(ports),
            (true, Err(count)) => TcpPlan::TooMany(count),
        };
        let abstract_unix_allowed = policy.network_unix.iter().any(|u| u.starts_with('@'));
        Some(Plan { on_violation: policy.on_violation, fs, grants, exec_files, tcp, split, abstract_unix_allowed })
    }

    /// What the layer refuses on a kernel with Landlock ABI `abi` (> 0), and what it leaves
    /// to the eBPF layer: the daemon's record of a run's layer, from the ABI `run` got.
    pub fn coverage(&self, abi: u32) -> Coverage {
        let kabi = ABI::from(abi as i32);
        let fs = self.fs & AccessFs::from_all(kabi);
        let mut ebpf_only: Vec<String> = self
            .split
            .unexpressed
            .iter()
            .map(|(c, why)| format!("{c}: {why}: inside a tree granted whole, the eBPF layer kills a read of it, after the fact"))
            .collect();
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
            carve_outs: carve_notes(&self.split),
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
        HostPlan { fs, grants, ports, scopes, coverage, split: self.split.clone() }
    }
}

/// What the layer does about carve-outs, for `status` and `policy check`: which it refuses
/// up front, and the cost.
fn carve_notes(split: &Split) -> Vec<String> {
    let refused: Vec<&str> =
        split.refused.iter().map(String::as_str).filter(|r| !split.unexpressed.contains_key(*r)).collect();
    if refused.is_empty() {
        return Vec::new();
    }
    let dirs: Vec<&str> = split.entry_dirs.iter().map(String::as_str).collect();
    vec![
        format!("refused up front (EACCES): {}", refused.join(", ")),
        format!(
            "cost: {} {} granted entry by entry, as listed when the run started: a file or directory created \
             directly in {} during the run is refused (EACCES) although the policy allows it; listing a \
             carved-out directory is left to the eBPF layer",
            dirs.join(", "),
            if dirs.len() == 1 { "is" } else { "are" },
            if dirs.len() == 1 { "it" } else { "them" },
        ),
    ]
}

/// Every port some connect rule allows (for some address), ascending; `Err(count)` when
/// that is more than [`PORTS_MAX`].
fn connect_ports(rules: impl Iterator<Item = (u16, u16)>) -> Result<Vec<u16>, usize> {
    let mut ranges: Vec<(u32, u32)> = rules.map(|(lo, hi)| (lo as u32, hi as u32)).collect();
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
mod tests;
