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
//! and ICMP sockets are refused unless `raw_sockets = true`.
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
mod net;
mod paths;
pub(crate) use paths::lexical;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fmt,
    io::Write,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr,
};

use agent_guard_common::{PORT_RANGES_MAX, RULES_MAX, SYSCALL_WORDS};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

pub use compile::Compiled;
pub use net::{normalise_addr, NetRuleSpec};

use paths::Problem;

/// Syscalls refused in enforce mode because the tracepoint backend cannot check what they do.
pub const UNSEEN_SYSCALLS: &[&str] = &[
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "link",
    "linkat",
    "open_by_handle_at",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "setns",
    "unshare",
    "chroot",
    "pidfd_getfd",
    "process_vm_readv",
    "process_vm_writev",
];

/// Of the [`UNSEEN_SYSCALLS`], those the lsm backend judges itself, so they are not refused
/// there as unseen: link and linkat (the path_link hook checks both names against the policy).
pub const LSM_JUDGED_SYSCALLS: &[&str] = &["link", "linkat"];

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
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
    pub raw_sockets: bool,
    /// (name, x86_64 number).
    pub syscalls_deny: Vec<(String, u32)>,
    pub bind_cgroups: Vec<String>,
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
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: warning: ", self.file, self.line, self.column)?;
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

impl Checked {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

// ---- raw TOML --------------------------------------------------------------------------

type SList = Option<Spanned<Vec<Spanned<String>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    on_violation: Option<Spanned<String>>,
    #[serde(default)]
    files: RawFiles,
    #[serde(default)]
    exec: RawExec,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    syscalls: RawSyscalls,
    #[serde(default)]
    bind: RawBind,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    read: SList,
    write: SList,
    deny: SList,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExec {
    allow: SList,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    connect: SList,
    raw_sockets: Option<Spanned<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSyscalls {
    deny: SList,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBind {
    cgroups: SList,
}

// ---- checking --------------------------------------------------------------------------

/// A valid list entry and where it was written.
struct Item<T> {
    field: String,
    span: Range<usize>,
    value: T,
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Warning>,
}

impl Ctx<'_> {
    fn pos(&self, span: &Range<usize>) -> (usize, usize) {
        crate::config::line_col(self.text, span.start)
    }

    fn error(&mut self, span: &Range<usize>, field: &str, (message, hint): Problem) {
        let (line, column) = self.pos(span);
        self.errors.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            field: field.to_string(),
            message,
            hint,
        });
    }

    fn warn<T>(&mut self, item: &Item<T>, message: String) {
        let (line, column) = self.pos(&item.span);
        self.warnings.push(Warning {
            file: self.file.to_string(),
            line,
            column,
            field: item.field.clone(),
            message,
        });
    }

    /// Checks a list: at most RULES_MAX entries, each valid per `check` (which returns the
    /// value and its canonical key), no two entries with the same key.
    fn list<T>(
        &mut self,
        field: &str,
        list: &SList,
        mut check: impl FnMut(&str) -> Result<(T, String), Problem>,
    ) -> Vec<Item<T>> {
        let Some(list) = list else { return Vec::new() };
        if list.get_ref().len() > RULES_MAX {
            self.error(
                &list.span(),
                field,
                (
                    format!("{} entries; a list holds at most {RULES_MAX}", list.get_ref().len()),
                    Some("split the role into several policies or use directory rules".into()),
                ),
            );
        }
        let mut seen: HashMap<String, (String, Range<usize>)> = HashMap::new();
        let mut out = Vec::new();
        for (i, entry) in list.get_ref().iter().enumerate() {
            let f = format!("{field}[{i}]");
            match check(entry.get_ref()) {
                Err(p) => self.error(&entry.span(), &f, p),
                Ok((value, key)) => {
                    if let Some((first, span)) = seen.get(&key) {
                        let (l, c) = self.pos(span);
                        let msg = format!("duplicate entry {key:?} (first at {first}, line {l} column {c})");
                        self.error(&entry.span(), &f, (msg, Some("remove one of them".into())));
                    } else {
                        seen.insert(key, (f.clone(), entry.span()));
                        out.push(Item { field: f, span: entry.span(), value });
                    }
                }
            }
        }
        out
    }
}

fn keyword<T: Copy>(
    ctx: &mut Ctx<'_>,
    field: &str,
    value: &Option<Spanned<String>>,
    default: T,
    allowed: &[(&str, T)],
) -> T {
    let Some(v) = value else { return default };
    match allowed.iter().find(|(k, _)| *k == v.get_ref()) {
        Some((_, t)) => *t,
        None => {
            let names: Vec<String> = allowed.iter().map(|(k, _)| format!("{k:?}")).collect();
            ctx.error(
                &v.span(),
                field,
                (
                    format!("unknown {field} {:?}; allowed values are {}", v.get_ref(), names.join(", ")),
                    None,
                ),
            );
            default
        }
    }
}

fn check_name(name: &str) -> Result<(), Problem> {
    let hint = Some("names use letters, digits, '.', '_' and '-', e.g. \"coding-agent\"".to_string());
    if name.is_empty() {
        return Err(("empty name".into(), hint));
    }
    if name.len() > NAME_MAX_BYTES {
        return Err((format!("name is {} bytes long; at most {NAME_MAX_BYTES}", name.len()), None));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err((format!("name {name:?} contains {c:?}"), hint));
    }
    if name == "." || name == ".." {
        return Err((format!("name {name:?} is reserved"), hint));
    }
    Ok(())
}

/// The x86_64 number of a syscall name.
fn syscall_number(name: &str) -> Option<u32> {
    syscalls::x86_64::Sysno::from_str(name).ok().and_then(|s| u32::try_from(s.id()).ok())
}

/// The x86_64 name of syscall `nr` (for events).
pub fn syscall_name(nr: u32) -> Option<&'static str> {
    syscalls::x86_64::Sysno::new(nr as usize).map(|s| s.name())
}

fn all_syscall_names() -> impl Iterator<Item = &'static str> {
    (0..SYSCALL_WORDS as u32 * 64).filter_map(syscall_name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn check_syscall(s: &str) -> Result<((String, u32), String), Problem> {
    let bits = SYSCALL_WORDS as u32 * 64;
    let (name, nr) = if let Ok(n) = s.parse::<u32>() {
        if n >= bits {
            return Err((
                format!("syscall number {n} cannot be represented (the kernel bitmap holds 0-{})", bits - 1),
                None,
            ));
        }
        match syscall_name(n) {
            Some(name) => (name.to_string(), n),
            None => return Err((format!("no x86_64 syscall has number {n}"), None)),
        }
    } else {
        match syscall_number(s) {
            Some(nr) => (s.to_string(), nr),
            None => return Err((format!("unknown syscall {s:?}"), Some(syscall_hint(s)))),
        }
    };
    if nr >= bits {
        return Err((format!("syscall {name} ({nr}) cannot be represented (the kernel bitmap holds 0-{})", bits - 1), None));
    }
    Ok(((name.clone(), nr), name))
}

fn syscall_hint(s: &str) -> String {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_prefix("sys_").unwrap_or(&lower);
    let best = all_syscall_names().map(|n| (edit_distance(lower, n), n)).min();
    if let Some((d, n)) = best {
        if d <= 2.max(lower.len() / 3) {
            return format!("did you mean {n:?}?");
        }
    }
    if let Some(n) = all_syscall_names().filter(|n| n.starts_with(lower)).min() {
        return format!("did you mean {n:?}?");
    }
    "names come from the x86_64 syscall table, e.g. \"ptrace\"".into()
}

fn exec_covers(rule: &str, file: &str) -> bool {
    match rule.strip_suffix('/') {
        Some(dir) => paths::strictly_below(if dir.is_empty() { "/" } else { dir }, file),
        None => rule == file,
    }
}

/// Checks a policy file's text. `origin` is the file name shown in messages.
pub fn parse(text: &str, origin: &str) -> Checked {
    let mut ctx = Ctx { text, file: origin, errors: Vec::new(), warnings: Vec::new() };
    let raw: Raw = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let (line, column) = e.span().map_or((0, 0), |s| ctx.pos(&s));
            let message = e.message().trim().replace('\n', "; ");
            return Checked {
                policy: None,
                errors: vec![Diagnostic { file: origin.into(), line, column, field: String::new(), message, hint: None }],
                warnings: Vec::new(),
            };
        }
    };

    let name = match &raw.name {
        None => {
            ctx.errors.push(Diagnostic {
                file: origin.into(),
                line: 1,
                column: 1,
                field: "name".into(),
                message: "missing required key `name`".into(),
                hint: Some("add e.g. name = \"coding-agent\"".into()),
            });
            String::new()
        }
        Some(n) => {
            if let Err(p) = check_name(n.get_ref()) {
                ctx.error(&n.span(), "name", p);
            }
            n.get_ref().clone()
        }
    };
    let mode = keyword(&mut ctx, "mode", &raw.mode, Mode::Enforce, &[("enforce", Mode::Enforce), ("monitor", Mode::Monitor)]);
    let on_violation = keyword(
        &mut ctx,
        "on_violation",
        &raw.on_violation,
        OnViolation::Deny,
        &[("deny", OnViolation::Deny), ("kill", OnViolation::Kill), ("freeze", OnViolation::Freeze)],
    );

    let file_rule = |s: &str| paths::normalise_rule(s, "file rules").map(|(p, _)| (p.clone(), p));
    let read = ctx.list("files.read", &raw.files.read, file_rule);
    let write = ctx.list("files.write", &raw.files.write, file_rule);
    let deny = ctx.list("files.deny", &raw.files.deny, file_rule);
    let exec = ctx.list("exec.allow", &raw.exec.allow, |s| {
        paths::normalise_rule(s, "exec rules").map(|(p, dir)| {
            let r = if dir && p != "/" { format!("{p}/") } else { p };
            (r.clone(), r)
        })
    });
    let connect = ctx.list("network.connect", &raw.network.connect, |s| {
        net::parse_connect(s).map(|r| (r, r.to_string()))
    });
    let sys = ctx.list("syscalls.deny", &raw.syscalls.deny, check_syscall);
    let bind = ctx.list("bind.cgroups", &raw.bind.cgroups, |s| {
        paths::check_cgroup_glob(s).map(|_| (s.to_string(), s.to_string()))
    });

    // Port ranges per kernel entry, once enclosing CIDRs are merged in.
    for (net, ranges) in net::merged_ranges(connect.iter().map(|i| &i.value)) {
        if ranges.len() > PORT_RANGES_MAX {
            let first = connect.iter().find(|i| i.value.net == net).expect("net comes from a rule");
            let (field, span) = (first.field.clone(), first.span.clone());
            ctx.error(
                &span,
                &field,
                (
                    format!(
                        "{} has {} port ranges once those of enclosing CIDRs are merged; at most {PORT_RANGES_MAX}",
                        net::net_text(&net),
                        ranges.len()
                    ),
                    Some("use fewer, wider port ranges".into()),
                ),
            );
        }
    }

    warnings(&mut ctx, &read, &write, &deny, &exec, &connect);
    if on_violation == OnViolation::Freeze {
        if let Some(v) = &raw.on_violation {
            let item = Item { field: "on_violation".into(), span: v.span(), value: () };
            ctx.warn(
                &item,
                "opens, execs, connects and UDP sends outside the policy hold the run for review; \
                 [syscalls] deny, unseen operations and raw sockets are killed or refused instead (a stop \
                 would come after they ran)"
                    .into(),
            );
        }
    }

    ctx.errors.sort_by_key(|d| (d.line, d.column));
    ctx.warnings.sort_by_key(|w| (w.line, w.column));
    let policy = ctx.errors.is_empty().then(|| {
        let mut p = Policy {
            name,
            mode,
            on_violation,
            files_read: read.into_iter().map(|i| i.value).collect(),
            files_write: write.into_iter().map(|i| i.value).collect(),
            files_deny: deny.into_iter().map(|i| i.value).collect(),
            exec_allow: exec.into_iter().map(|i| i.value).collect(),
            network_connect: connect.into_iter().map(|i| i.value).collect(),
            raw_sockets: raw.network.raw_sockets.as_ref().is_some_and(|b| *b.get_ref()),
            syscalls_deny: sys.into_iter().map(|i| i.value).collect(),
            bind_cgroups: bind.into_iter().map(|i| i.value).collect(),
            version: String::new(),
            source: origin.to_string(),
        };
        p.version = p.compute_version();
        p
    });
    Checked { policy, errors: ctx.errors, warnings: ctx.warnings }
}

fn warnings(
    ctx: &mut Ctx<'_>,
    read: &[Item<String>],
    write: &[Item<String>],
    deny: &[Item<String>],
    exec: &[Item<String>],
    connect: &[Item<NetRuleSpec>],
) {
    for w in write.iter().filter(|w| w.value == "/") {
        ctx.warn(w, "write access to \"/\" lets the agent write anywhere a deny rule does not cover".into());
    }
    for d in deny {
        if !read.iter().chain(write).any(|a| paths::covers(&a.value, &d.value)) {
            ctx.warn(
                d,
                format!(
                    "deny of {:?} has no effect: it is not inside any files.read or files.write tree, \
                     and paths outside them are denied anyway",
                    d.value
                ),
            );
        }
    }
    for a in read.iter().chain(write) {
        // The innermost deny strictly above the allow rule.
        let inner = deny
            .iter()
            .filter(|d| paths::covers(&d.value, &a.value) && d.value != a.value)
            .max_by_key(|d| paths::depth(&d.value));
        if let Some(d) = inner {
            let msg = format!(
                "re-opens part of the deny rule {:?} ({}): the longest match wins",
                d.value, d.field
            );
            ctx.warn(a, msg);
        }
    }
    for e in exec {
        if let Some(sh) = SHELLS.iter().find(|s| exec_covers(&e.value, s)) {
            ctx.warn(e, format!("allows the shell {sh}: a shell can run anything else the policy lets it read"));
        }
        if let Some(ld) = LOADERS.iter().find(|s| exec_covers(&e.value, s)) {
            ctx.warn(e, format!("allows the dynamic loader {ld}: ld.so runs any file it can read"));
        }
    }
    for c in connect.iter().filter(|c| c.value.is_everything()) {
        let family = if c.value.net.addr().is_ipv4() { "IPv4" } else { "IPv6" };
        ctx.warn(c, format!("{} allows every {family} address on every port", c.value));
    }
}

/// Checks the policy file at `path`. A read error is one diagnostic at line 0, column 0.
pub fn load_file(path: &Path) -> Checked {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &origin),
        Err(e) => Checked {
            policy: None,
            errors: vec![Diagnostic {
                file: origin,
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("cannot read: {e}"),
                hint: None,
            }],
            warnings: Vec::new(),
        },
    }
}

/// `agent-guard policy check FILE...`: prints "FILE: ok (name N, version V)" on `out` for each
/// valid file, errors and warnings on `err` (in file order, by position), and a summary line
/// when any file has errors. Returns the exit code: 0 when every file is valid (warnings
/// allowed), 1 otherwise.
pub fn check_files(paths: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let mut bad_files = 0;
    let mut errors = 0;
    for p in paths {
        let c = load_file(p);
        let mut lines: Vec<((usize, usize), String)> = c
            .errors
            .iter()
            .map(|d| ((d.line, d.column), d.to_string()))
            .chain(c.warnings.iter().map(|w| ((w.line, w.column), w.to_string())))
            .collect();
        lines.sort_by_key(|(pos, _)| *pos);
        for (_, l) in lines {
            let _ = writeln!(err, "{l}");
        }
        match &c.policy {
            Some(pol) if c.errors.is_empty() => {
                let _ = writeln!(out, "{}: ok (name {}, version {})", p.display(), pol.name, pol.version);
            }
            _ => {
                bad_files += 1;
                errors += c.errors.len();
            }
        }
    }
    let _ = out.flush();
    if bad_files > 0 {
        let _ = writeln!(
            err,
            "policy check: {errors} error{} in {bad_files} of {} file{}",
            if errors == 1 { "" } else { "s" },
            paths.len(),
            if paths.len() == 1 { "" } else { "s" }
        );
        let _ = err.flush();
        1
    } else {
        0
    }
}

// ---- the reference semantics ------------------------------------------------------------

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
}

fn sorted<'a>(v: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    let mut v: Vec<&str> = v.into_iter().map(String::as_str).collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl Policy {
    fn compute_version(&self) -> String {
        let mut network: Vec<String> = self.network_connect.iter().map(ToString::to_string).collect();
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

    /// The verdict for `access` to `path` (absolute, normalised), per the module's semantics.
    pub fn file_access(&self, path: &str, access: Access) -> FileVerdict {
        let best = self
            .files_read
            .iter()
            .chain(&self.files_write)
            .chain(&self.files_deny)
            .filter(|r| paths::covers(r, path))
            .max_by_key(|r| paths::depth(r));
        let Some(best) = best else {
            let rule = if access == Access::Read { "files.read" } else { "files.write" };
            return FileVerdict::Deny { rule, matched: None };
        };
        let at = |list: &[String]| list.iter().any(|r| paths::depth(r) == paths::depth(best) && paths::covers(r, path));
        if at(&self.files_deny) {
            FileVerdict::Deny { rule: "files.deny", matched: Some(best.clone()) }
        } else if at(&self.files_write) || access == Access::Read {
            FileVerdict::Allow
        } else {
            FileVerdict::Deny { rule: "files.write", matched: Some(best.clone()) }
        }
    }

    /// True when exec.allow allows executing `path` (absolute, normalised).
    pub fn exec_allowed(&self, path: &str) -> bool {
        self.exec_allow.iter().any(|r| exec_covers(r, path))
    }

    /// True when network.connect allows `addr:port` (IPv4-mapped IPv6 is checked as IPv4).
    pub fn connect_allowed(&self, addr: IpAddr, port: u16) -> bool {
        let addr = normalise_addr(addr);
        self.network_connect.iter().any(|r| r.allows(addr, port))
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
