//! The one userspace evaluator of a policy: what the kernel programs decide for a file access,
//! an exec, a connect, a unix connect and a bind or listen. Every userspace consumer that judges an access against a policy
//! (the Landlock layer's attribution of a refused open, `policy check`'s warnings) asks here.
//!
//! The kernel judges files and execs by walking the path trie that [`Policy::compile`] builds,
//! one component at a time from "/" (agent-guard-ebpf/src/policy.rs, `match_path`), and then
//! deciding from the rules that end at the deepest node it reached (`file_decision`,
//! `exec_decision`). [`Policy::match_path`] computes the same [`PathMatch`] from the rule
//! lists, and [`Policy::decide_file`] and [`Policy::exec_allowed`] decide from it exactly as
//! the kernel does; the property test in `agreement.rs` checks them against a simulation of
//! the kernel's walk over the compiled map entries.
use std::net::IpAddr;

use super::{normalise_addr, paths, Policy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    /// (read, write), as the kernel's `file_decision` takes them.
    pub fn read_write(self) -> (bool, bool) {
        match self {
            Access::Read => (true, false),
            Access::Write => (false, true),
            Access::ReadWrite => (true, true),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileVerdict {
    Allow,
    Deny {
        /// "files.read" | "files.write" | "files.deny"
        rule: &'static str,
        /// The rule prefix that decided, if any rule matched.
        matched: Option<String>,
    },
}

/// What a path matches in a policy: the kernel's `PathMatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathMatch<'a> {
    /// The longest `[files]` rule prefix that covers the path (over read, write and deny
    /// together), if any.
    pub prefix: Option<&'a str>,
    /// The lists with a rule at exactly that prefix.
    pub read: bool,
    pub write: bool,
    pub deny: bool,
    /// An `[exec] allow` rule allows this exact file or a directory strictly above it.
    pub exec: bool,
}

/// True when the `[exec] allow` rule `rule` allows executing `file`: an exact file, or a
/// directory rule ("dir/", "/" for the root) and a file strictly below it.
pub(super) fn exec_rule_covers(rule: &str, file: &str) -> bool {
    match rule.strip_suffix('/') {
        Some(dir) => paths::strictly_below(if dir.is_empty() { "/" } else { dir }, file),
        None => rule == file,
    }
}

impl Policy {
    /// What `path` (absolute, normalised) matches: the longest file rule and the exec rules.
    pub fn match_path(&self, path: &str) -> PathMatch<'_> {
        let prefix = self
            .files_read
            .iter()
            .chain(&self.files_write)
            .chain(&self.files_deny)
            .filter(|r| paths::covers(r, path))
            .max_by_key(|r| paths::depth(r))
            .map(String::as_str);
        // Rules are normalised: the rule at exactly the longest prefix is that string.
        let at = |list: &[String]| prefix.is_some_and(|p| list.iter().any(|r| r == p));
        PathMatch {
            prefix,
            read: at(&self.files_read),
            write: at(&self.files_write),
            deny: at(&self.files_deny),
            exec: self.exec_allow.iter().any(|r| exec_rule_covers(r, path)),
        }
    }

    /// The verdict for `access` to `path` (absolute, normalised), per the module's semantics:
    /// a deny rule at the longest matching prefix denies (`files.deny`); a write needs a write
    /// rule there (`files.write`); a read needs a read or write rule there (`files.read`).
    pub fn decide_file(&self, path: &str, access: Access) -> FileVerdict {
        let m = self.match_path(path);
        let (read, write) = access.read_write();
        let rule = if m.deny {
            "files.deny"
        } else if write && !m.write {
            "files.write"
        } else if read && !(m.read || m.write) {
            "files.read"
        } else {
            return FileVerdict::Allow;
        };
        FileVerdict::Deny { rule, matched: m.prefix.map(str::to_string) }
    }

    /// True when exec.allow allows executing `path` (absolute, normalised).
    pub fn exec_allowed(&self, path: &str) -> bool {
        self.match_path(path).exec
    }

    /// True when network.connect allows `addr:port` (IPv4-mapped IPv6 is checked as IPv4).
    pub fn connect_allowed(&self, addr: IpAddr, port: u16) -> bool {
        let addr = normalise_addr(addr);
        self.network_connect.iter().any(|r| r.allows(addr, port))
    }

    /// True when network.unix allows connecting to `name` (a path as passed, or "@name").
    pub fn unix_allowed(&self, name: &str) -> bool {
        super::contain::unix_allows(&self.network_unix, name)
    }

    /// True when network.listen allows binding and listening on `addr:port` (IPv4-mapped
    /// IPv6 is checked as IPv4).
    pub fn listen_allowed(&self, addr: IpAddr, port: u16) -> bool {
        let addr = normalise_addr(addr);
        self.network_listen.iter().any(|r| r.allows(addr, port))
    }
}
