//! Policies: one TOML file per agent role, checked, versioned and compiled into the kernel's
//! map entries.
//!
//! ```toml
//! name = "coding-agent"          # required: [A-Za-z0-9._-]+, at most 64 bytes
//! mode = "enforce"               # enforce | monitor        (default enforce)
//! on_violation = "deny"          # deny | kill | freeze     (default deny)
//! [files]
//! read  = ["/usr", "/lib", "/etc/ssl", "/workspace"]
//! write = ["/workspace", "/tmp"]
//! deny  = ["/workspace/.env"]
//! [exec]
//! allow = ["/usr/bin/git", "/usr/bin/python3", "/usr/local/bin/"]
//! [network]
//! connect = ["127.0.0.1/32:8080", "10.0.0.0/8:443", "[::1]/128:1-65535"]
//! raw_sockets = false            # default false
//! unix = ["/run/myagent.sock", "@abstract-name"]   # default none (see contain.rs)
//! families = ["packet"]          # beyond inet, inet6, unix, netlink route (default none)
//! listen = ["127.0.0.1:3000-3999", "[::1]:8080"]  # bind/listen (default none)
//! [syscalls]
//! deny = ["ptrace", "mount", "bpf", "unshare"]
//! [bind]
//! cgroups = ["agents.slice/*.scope"]
//! ```
//! Every table and key is optional except `name`; unknown keys anywhere are errors. Each list
//! holds at most [`RULES_MAX`] entries and no duplicates.
//!
//! # Semantics (the product's contract)
//!
//! **Modes.** `enforce` applies the verdicts below; `monitor` allows everything and reports
//! what would have been denied. `on_violation` says what a denial does: `deny` refuses the
//! operation (or kills the process where the backend cannot refuse it), `kill` kills the
//! process, `freeze` stops the process at the violation and holds its run for review
//! (`agent-guard approve|deny`; see `crate::hold`).
//!
//! **Files.** Rules are absolute path prefixes on directory boundaries: `/usr` matches `/usr`
//! and `/usr/bin/x`, never `/usrx`; `/` matches everything; a trailing slash is ignored
//! (`/usr/` is `/usr`). Paths must be normalised (no `.`, `..` or empty components): rules are
//! matched against the path the kernel resolved, so symlinks in a rule never match. For an
//! access to a path, the longest rule prefix that matches it, over `read`, `write` and `deny`
//! together, decides with the rules at exactly that prefix:
//! - a `deny` rule there: denied (deny beats allow at the same prefix);
//! - else a `write` rule there: read and write allowed (`write` implies read);
//! - else a `read` rule there: read allowed, write denied.
//!
//! No matching rule: denied. Consequences: a longer `read` rule inside a `write` tree makes
//! that subtree read-only; a longer `read`/`write` rule inside a `deny` tree re-opens that
//! part of it; a `deny` outside every allowed tree changes nothing. exec.allow rules are not
//! file rules and never take part in this match. A denial names `files.deny` when a deny rule
//! decided, `files.write` for a write to a read-only prefix, and otherwise (no rule matched)
//! `files.read` for a read and `files.write` for a write.
//!
//! **Exec.** `exec.allow` entries are absolute paths: `/usr/bin/git` allows exactly that file;
//! `/usr/local/bin/` (trailing slash) allows every file below that directory, at any depth.
//! Anything else is denied. The exec check is separate from the file check.
//!
//! **Network.** `network.connect` entries are `CIDR:PORT` or `CIDR:LO-HI` (inclusive, ports
//! 1-65535). IPv4 is written `10.0.0.0/8:443`; IPv6 in brackets, `[::1]/128:443` or
//! `[2001:db8::/32]:443`. An address without a prefix length is one host (`/32`, `/128`).
//! IPv4-mapped IPv6 (`[::ffff:10.0.0.0]/104:443`) is the IPv4 rule `10.0.0.0/8:443`, and an
//! IPv4-mapped destination address is checked as IPv4. IPv6 rules never match IPv4
//! destinations (`::/0` allows no IPv4 address). Host bits set after the prefix are an error.
//! A destination is allowed when any rule's CIDR contains its address and its port is in
//! that rule's range. Rules apply alike to TCP connect and UDP connect/sendto. Raw, packet
//! and ICMP sockets are refused unless `raw_sockets = true`. An entry whose host part is a
//! DNS name (`pypi.org:443`, `*.githubusercontent.com:443`) is a name rule (names.rs): the
//! daemon's DNS forwarder opens the addresses of allowed answers for the run.
//!
//! **Syscalls.** `syscalls.deny` names syscalls of the x86_64 table; each one is refused.
//! Independently, in enforce mode the backend refuses the syscalls it cannot check (see
//! [`UNSEEN_SYSCALLS`]).
//!
//! **Bind.** `bind.cgroups` are globs relative to the cgroup2 mount (`*`, `?` and `[..]` never
//! match `/`); a bound cgroup's whole subtree is covered.
//!
//! **Version.** [`Policy::version`] is `sha256:` + the SHA-256 of a canonical JSON form
//! (sorted, normalised lists): comments, whitespace and list order do not change it; any
//! change of meaning does.
mod compile;
pub mod contain;
pub mod diff;
mod eval;
mod narrow;
pub mod names;
mod net;
mod parse;
mod paths;
pub mod process;
pub mod suggest;
mod syscalls;
pub mod tripwire;
pub(crate) use paths::lexical;
#[cfg(test)]
mod agreement;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use compile::Compiled;
pub use eval::{Access, FileVerdict, PathMatch};
pub use parse::{check_files, check_files_on, host_notes, load_file, parse, HostNote};
#[allow(unused_imports)]
use parse::*;
pub use syscalls::*;
pub use narrow::narrow;
pub use net::{normalise_addr, NetRuleSpec};


/// Longest policy name.
pub const NAME_MAX_BYTES: usize = 64;

/// Executables that run arbitrary other programs (warned about in exec.allow).
const SHELLS: &[&str] = &[
    "/bin/sh",
    "/bin/bash",
    "/bin/dash",
    "/usr/bin/sh",
    "/usr/bin/bash",
    "/usr/bin/dash",
    "/usr/bin/zsh",
];
/// The dynamic loader: `ld.so FILE` runs any file it can read.
const LOADERS: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    Deny,
    Kill,
    Freeze,
}

impl OnViolation {
    pub fn as_str(self) -> &'static str {
        match self {
            OnViolation::Deny => "deny",
            OnViolation::Kill => "kill",
            OnViolation::Freeze => "freeze",
        }
    }
}

impl fmt::Display for OnViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked policy. Lists keep the file's order, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub name: String,
    pub mode: Mode,
    pub on_violation: OnViolation,
    /// Normalised, without a trailing slash ("/" for the root).
    pub files_read: Vec<String>,
    pub files_write: Vec<String>,
    pub files_deny: Vec<String>,
    /// Exact files, and directory rules ending with '/'.
    pub exec_allow: Vec<String>,
    pub network_connect: Vec<NetRuleSpec>,
    /// The name rules of `[network] connect` ("pypi.org:443", "*.example.com:443").
    pub network_names: Vec<names::NameRuleSpec>,
    pub raw_sockets: bool,
    /// `[network] unix`: "/path", "/dir/" or "@name" (see contain.rs).
    pub network_unix: Vec<String>,
    /// `[network] families`, as written (validated names).
    pub network_families: Vec<String>,
    /// `[network] listen`: where a run may bind and listen.
    pub network_listen: Vec<NetRuleSpec>,
    /// (name, x86_64 number).
    pub syscalls_deny: Vec<(String, u32)>,
    pub bind_cgroups: Vec<String>,
    /// `[process] capabilities`: (name, number) the command keeps; every other is cleared.
    pub capabilities: Vec<(String, u32)>,
    /// `[process] user`: USER or USER:GROUP the command runs as.
    pub run_as: Option<String>,
    /// `[files] devices`: device nodes may be created (mknod of block and char devices).
    pub devices: bool,
    /// `[decoys]` and `[limits]`.
    pub tripwires: tripwire::Tripwires,
    /// "sha256:" + hex.
    pub version: String,
    /// The file it came from (for messages).
    pub source: String,
}

/// A problem that makes a policy file invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem has no position (the file could not be read).
    pub line: usize,
    pub column: usize,
    /// e.g. "files.read[2]", "name"; empty for TOML syntax errors and read errors.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// Something legal but probably unintended; printed by `policy check`, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
    /// Only a note (something to know about this host), not a warning.
    #[serde(default)]
    pub note: bool,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.note { "note" } else { "warning" };
        write!(f, "{}:{}:{}: {what}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// The result of checking one file: a policy exactly when `errors` is empty.
#[derive(Debug, Clone)]
pub struct Checked {
    pub policy: Option<Policy>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Warning>,
}

impl Policy {
    /// Adds `paths` (agent-guard's own state, see `Config::protected_paths`) to the denied
    /// paths, whatever the policy grants: they are then refused on every layer (the kernel
    /// rules, and the Landlock layer's carve-outs where a granted tree contains them). The
    /// version stays that of the text.
    pub fn protect(&mut self, paths: &[String]) {
        for p in paths {
            if !self.files_deny.contains(p) {
                self.files_deny.push(p.clone());
            }
        }
    }

    /// Lets the run connect to the unix sockets `names` whatever `[network] unix` says (the
    /// task socket).
    pub fn allow_unix(&mut self, names: &[String]) {
        for n in names {
            if !self.network_unix.contains(n) {
                self.network_unix.push(n.clone());
            }
        }
    }
}

impl Checked {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

#[derive(Serialize)]
struct Canonical<'a> {
    format: u32,
    name: &'a str,
    mode: Mode,
    on_violation: OnViolation,
    files_read: Vec<&'a str>,
    files_write: Vec<&'a str>,
    files_deny: Vec<&'a str>,
    exec_allow: Vec<&'a str>,
    network_connect: Vec<String>,
    raw_sockets: bool,
    syscalls_deny: Vec<&'a str>,
    bind_cgroups: Vec<&'a str>,
    // Later keys: left out when unused, so a policy without them keeps its version.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    capabilities: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_as: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    devices: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    network_unix: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    network_families: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    network_listen: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tripwires: Vec<String>,
}

impl Policy {
    fn compute_version(&self) -> String {
        let mut network: Vec<String> =
            self.network_connect.iter().map(ToString::to_string).chain(self.network_names.iter().map(ToString::to_string)).collect();
        network.sort_unstable();
        network.dedup();
        let canonical = Canonical {
            format: 1,
            name: &self.name,
            mode: self.mode,
            on_violation: self.on_violation,
            files_read: sorted(&self.files_read),
            files_write: sorted(&self.files_write),
            files_deny: sorted(&self.files_deny),
            exec_allow: sorted(&self.exec_allow),
            network_connect: network,
            raw_sockets: self.raw_sockets,
            syscalls_deny: sorted(self.syscalls_deny.iter().map(|(n, _)| n)),
            bind_cgroups: sorted(&self.bind_cgroups),
            capabilities: sorted(self.capabilities.iter().map(|(n, _)| n)),
            run_as: self.run_as.as_deref(),
            devices: self.devices,
            network_unix: sorted(&self.network_unix),
            network_families: sorted(&self.network_families),
            network_listen: {
                let mut l: Vec<String> = self.network_listen.iter().map(ToString::to_string).collect();
                l.sort_unstable();
                l.dedup();
                l
            },
            tripwires: self.tripwires.canonical(),
        };
        let json = serde_json::to_vec(&canonical).expect("serialisable");
        let digest = Sha256::digest(&json);
        let mut s = String::with_capacity(7 + 64);
        s.push_str("sha256:");
        for b in digest.iter() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The bind.cgroups globs (relative to the cgroup2 mount; `*` never matches '/').
    pub fn bind_matcher(&self) -> globset::GlobSet {
        let mut b = globset::GlobSetBuilder::new();
        for g in &self.bind_cgroups {
            if let Ok(glob) = paths::build_glob(g) {
                b.add(glob);
            }
        }
        b.build().unwrap_or_else(|_| globset::GlobSet::empty())
    }

    /// True when the cgroup at `rel` (relative to the cgroup2 mount, no leading '/') is bound
    /// by this policy, directly or through an ancestor (a binding covers the subtree).
    pub fn binds_cgroup(&self, rel: &str) -> bool {
        let set = self.bind_matcher();
        let rel = rel.trim_matches('/');
        let mut prefix = String::new();
        for c in rel.split('/').filter(|c| !c.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
            if set.is_match(&prefix) {
                return true;
            }
        }
        false
    }
}
