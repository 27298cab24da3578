//! `policy suggest`: a policy built from what runs did (their events), every rule with its
//! evidence; with a base policy, only the additions it needs ("deny and suggest").
//!
//! Rules of thumb (stated in the output too):
//! - Files: a directory becomes one rule when the runs used [`FOLD_AT`] or more distinct
//!   entries in it; never `/`, a directory of [`NEVER_WHOLE`] or a home directory as a whole
//!   (a run that opened one of them itself gets a rule for exactly that path). A file the
//!   runs created stands for its directory (creating a file needs write access to the
//!   directory, and a rule for a file that does not exist yet grants nothing up front);
//!   temporary names (`tmp.XXXXXX`, `sedXXXXXX`, random suffixes, pid-numbered components)
//!   stand for their directory. Writes are kept apart from reads; a write implies a read.
//! - Likely secrets ([`secret`]) are never allowed: a `# deny` suggestion, active when a
//!   folded rule would otherwise cover it.
//! - Exec: [`FOLD_AT`] or more programs from one directory become `dir/`.
//! - Network: each address and port reached, as one host (`/32`, `/128`); unix sockets by
//!   path; binds by address and port; socket families and raw sockets the runs opened.
//! - Limits: twice the runs' peaks (see `limits`), unless the base policy has `[limits]`.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde_json::Value;

use super::{paths, Access, FileVerdict, Policy};

mod limits;
mod names;
mod render;
pub use names::{redact, secret, temporary};
use names::{foldable, parent, untemp};
use render::{header, plain, quote, render, values, List};

/// Distinct entries of a directory (or programs in it) that make the directory one rule.
pub const FOLD_AT: usize = 3;
/// Directories never suggested as a whole by folding.
pub const NEVER_WHOLE: &[&str] = &["/", "/etc", "/dev", "/home", "/root", "/run", "/var", "/var/lib", "/sys", "/boot", "/mnt", "/media", "/srv"];

const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;

/// Where a run used something first, how often, which runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Evidence {
    count: u64,
    /// Order of the first event (for `first` across merged evidence).
    seq: usize,
    first: String,
    runs: BTreeSet<String>,
}

impl Evidence {
    fn add(&mut self, seq: usize, first: &str, run: &str) {
        if self.count == 0 || seq < self.seq {
            self.seq = seq;
            self.first = first.to_string();
        }
        self.count += 1;
        self.runs.insert(run.to_string());
    }

    fn merge(&mut self, o: &Evidence) {
        if self.count == 0 || o.seq < self.seq {
            self.seq = o.seq;
            self.first = o.first.clone();
        }
        self.count += o.count;
        self.runs.extend(o.runs.iter().cloned());
    }

    fn comment(&self) -> String {
        let first: String = render::printable(&self.first).chars().take(100).collect();
        format!(
            "{} event{}, first: {first}; run{} {}",
            self.count,
            if self.count == 1 { "" } else { "s" },
            if self.runs.len() == 1 { "" } else { "s" },
            self.runs.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    }
}

/// What one event says a run did, in policy terms.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    File { path: String, write: bool, created: bool },
    Exec(String),
    Connect(String),
    Unix(String),
    Listen(String),
    Family(String),
    RawSockets,
}

fn field<'a>(e: &'a Value, name: &str) -> Result<&'a Value, String> {
    e.get(name).ok_or_else(|| format!("field {name}: missing"))
}

fn string<'a>(e: &'a Value, name: &str) -> Result<&'a str, String> {
    field(e, name)?.as_str().ok_or_else(|| format!("field {name}: not a string"))
}

fn number(e: &Value, name: &str) -> Result<i64, String> {
    field(e, name)?.as_i64().ok_or_else(|| format!("field {name}: not a number"))
}

fn host_rule(addr: &str, port: i64) -> Result<Option<String>, String> {
    let ip: IpAddr = addr.parse().map_err(|_| format!("field addr: {addr:?} is not an IP address"))?;
    if !(1..=65535).contains(&port) {
        return Ok(None);
    }
    Ok(Some(match super::normalise_addr(ip) {
        IpAddr::V4(v4) => format!("{v4}/32:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]/128:{port}"),
    }))
}

/// The operation an event records (None: an event that needs no rule), and how to show its
/// first use. Errors name the field.
fn observe(e: &Value) -> Result<Option<(Op, String)>, String> {
    if !e.is_object() {
        return Err("not an event (a JSON object)".into());
    }
    let kind = string(e, "kind")?;
    let verdict = string(e, "verdict")?;
    let op = match kind {
        "open" => {
            let path = string(e, "path")?;
            let result = number(e, "result")?;
            let error = e.get("error").and_then(Value::as_str);
            // Refused by file permissions, or a relative path as passed: nothing to allow.
            if (result < 0 && verdict == "allow" && matches!(error, Some("EACCES" | "EPERM"))) || !path.starts_with('/') {
                return Ok(None);
            }
            let flags = field(e, "flags")?.as_u64().ok_or("field flags: not a number")?;
            let write = matches!(string(e, "access")?, "write" | "read_write") || flags & (O_CREAT | O_TRUNC) != 0;
            let path = paths::lexical(path);
            (Op::File { path: path.clone(), write, created: flags & O_CREAT != 0 }, path)
        }
        "exec" => {
            let path = string(e, "path")?;
            if !path.starts_with('/') {
                return Ok(None);
            }
            let argv: Vec<&str> = e.get("argv").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            let first = if argv.is_empty() { path.to_string() } else { redact(&argv) };
            (Op::Exec(paths::lexical(path)), first)
        }
        "connect" | "sendmsg" => match string(e, "family")? {
            "unix" => {
                let path = string(e, "path")?;
                if path.is_empty() {
                    return Ok(None);
                }
                (Op::Unix(path.to_string()), format!("{kind} {path}"))
            }
            _ => match (e.get("domain").and_then(Value::as_str), host_rule(string(e, "addr")?, number(e, "port")?)?) {
                // An address a DNS answer opened (a run with name rules): the name, which
                // outlives the CDN's addresses.
                (Some(domain), Some(_)) => {
                    let port = number(e, "port")?;
                    (Op::Connect(format!("{domain}:{port}")), format!("{kind} {domain} ({}:{port})", string(e, "addr")?))
                }
                (None, Some(r)) => (Op::Connect(r), format!("{kind} {}:{}", string(e, "addr")?, number(e, "port")?)),
                (_, None) => return Ok(None),
            },
        },
        "bind" => match host_rule(string(e, "addr")?, number(e, "port")?)? {
            Some(r) => (Op::Listen(r.replacen("/32:", ":", 1).replacen("/128:", ":", 1)), format!("bind {}:{}", string(e, "addr")?, number(e, "port")?)),
            None => return Ok(None),
        },
        "socket" if verdict != "allow" => match (e.get("rule").and_then(Value::as_str), e.get("family_name").and_then(Value::as_str)) {
            (Some("network.raw_sockets"), _) => (Op::RawSockets, "a raw socket".to_string()),
            (_, Some(name)) => {
                let name = match e.get("netlink").and_then(Value::as_str) {
                    Some(proto) if name == "netlink" => format!("netlink:{proto}"),
                    _ => name.to_string(),
                };
                if name == "netlink:route" {
                    return Ok(None);
                }
                (Op::Family(name.clone()), format!("a {name} socket"))
            }
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(Some(op))
}

/// Folds paths into directory rules (see the module): deepest directory first, until no
/// directory has `FOLD_AT` used entries.
fn fold(mut cur: BTreeMap<String, Evidence>) -> BTreeMap<String, Evidence> {
    loop {
        let mut children: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for p in cur.keys() {
            let comps: Vec<&str> = paths::components(p).collect();
            for i in 1..comps.len() {
                children.entry(format!("/{}", comps[..i].join("/"))).or_default().insert(comps[i]);
            }
        }
        let pick = children
            .iter()
            .filter(|(d, c)| c.len() >= FOLD_AT && foldable(d))
            .max_by_key(|(d, _)| paths::depth(d))
            .map(|(d, _)| d.clone());
        let Some(dir) = pick else { return cur };
        let under: Vec<String> = cur.keys().filter(|p| paths::covers(&dir, p)).cloned().collect();
        let mut ev = Evidence::default();
        for p in under {
            ev.merge(&cur.remove(&p).expect("present"));
        }
        cur.insert(dir, ev);
    }
}

/// Folds exec paths: `FOLD_AT` or more programs in one directory become `dir/`.
fn fold_exec(cur: BTreeMap<String, Evidence>) -> BTreeMap<String, Evidence> {
    let mut by_dir: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in cur.keys() {
        by_dir.entry(parent(p).to_string()).or_default().push(p.clone());
    }
    let mut out = BTreeMap::new();
    for (dir, files) in by_dir {
        if files.len() >= FOLD_AT && dir != "/" {
            let mut ev = Evidence::default();
            for f in &files {
                ev.merge(&cur[f]);
            }
            out.insert(format!("{dir}/"), ev);
        } else {
            for f in files {
                out.insert(f.clone(), cur[&f].clone());
            }
        }
    }
    out
}

/// A suggested policy, and what to tell the user on stderr.
#[derive(Debug)]
pub struct Suggestion {
    /// The policy file's text (it passes `policy check`).
    pub text: String,
    /// One line each: likely secrets the runs read, and what was left out.
    pub warnings: Vec<String>,
    /// Rules suggested (additions, with a base).
    pub rules: usize,
    /// Events read.
    pub events: usize,
    pub runs: BTreeSet<String>,
}

/// What the events say the runs did, before folding.
#[derive(Default)]
struct Seen {
    /// Path (temporary names and created files already stand for their directory) ->
    /// (evidence, written).
    files: BTreeMap<String, (Evidence, bool)>,
    /// Likely secrets read: path -> (evidence, why).
    secrets: BTreeMap<String, (Evidence, &'static str)>,
    /// The other lists ("exec.allow", "network.connect", ...): value -> evidence.
    rest: BTreeMap<&'static str, BTreeMap<String, Evidence>>,
    runs: BTreeSet<String>,
    /// The policies the runs were under.
    policies: BTreeSet<String>,
    /// A run opened "/" itself.
    listed_root: bool,
}

/// True when `base` already allows what `op` did.
fn already_allows(base: &Policy, op: &Op) -> bool {
    match op {
        Op::File { path, write, .. } => base.decide_file(path, if *write { Access::ReadWrite } else { Access::Read }) == FileVerdict::Allow,
        Op::Exec(p) => base.exec_allowed(p),
        Op::Connect(r) => rule_allows(&base.network_connect, r) || name_allows(&base.network_names, r),
        Op::Unix(p) => base.unix_allowed(p),
        Op::Listen(r) => rule_allows(&base.network_listen, r),
        Op::Family(f) => base.network_families.contains(f),
        Op::RawSockets => base.raw_sockets,
    }
}

/// Reads the events (see [`suggest`]); an event that is not one names where it came from and
/// the field.
fn see(events: &[(String, Value)], base: Option<&Policy>) -> Result<Seen, String> {
    let mut seen = Seen::default();
    for (seq, (at, e)) in events.iter().enumerate() {
        let Some((op, first)) = observe(e).map_err(|m| format!("{at}: {m}"))? else { continue };
        let run = e.get("run").and_then(Value::as_str).unwrap_or("-").to_string();
        let verdict = e.get("verdict").and_then(Value::as_str).unwrap_or("allow");
        seen.runs.insert(run.clone());
        if let Some(p) = e.get("policy").and_then(Value::as_str) {
            seen.policies.insert(p.to_string());
        }
        if let Op::File { path, .. } = &op {
            if let Some(why) = secret(path) {
                seen.secrets.entry(path.clone()).or_insert_with(|| (Evidence::default(), why)).0.add(seq, &first, &run);
                continue;
            }
        }
        if let Some(b) = base {
            if !matches!(verdict, "would_deny" | "deny" | "kill" | "hold") || already_allows(b, &op) {
                continue;
            }
        }
        let (key, value) = match op {
            Op::File { path, write, created } => {
                if path == "/" {
                    seen.listed_root = true;
                    continue;
                }
                let mut rule = untemp(&path);
                if write && created && rule == path && foldable(parent(&path)) {
                    rule = parent(&path).to_string();
                }
                let entry = seen.files.entry(rule).or_default();
                entry.0.add(seq, &first, &run);
                entry.1 |= write;
                continue;
            }
            Op::Exec(p) => ("exec.allow", p),
            Op::Connect(r) => ("network.connect", r),
            Op::Unix(p) => ("network.unix", p),
            Op::Listen(r) => ("network.listen", r),
            Op::Family(f) => ("network.families", f),
            Op::RawSockets => ("network.raw_sockets", "true".into()),
        };
        seen.rest.entry(key).or_default().entry(value).or_default().add(seq, &first, &run);
    }
    Ok(seen)
}

/// The folded file rules: (reads, writes). Writes first (folded among themselves), then the
/// reads not under a write rule (a read under one counts as its evidence: a write rule allows
/// reading). Folding only climbs, so no read rule ends up inside a write rule, where it would
/// make that subtree read-only.
type Rules = BTreeMap<String, Evidence>;
fn file_rules(files: &BTreeMap<String, (Evidence, bool)>) -> (Rules, Rules) {
    let mut writes = fold(files.iter().filter(|(_, (_, w))| *w).map(|(p, (e, _))| (p.clone(), e.clone())).collect());
    let mut reads = BTreeMap::new();
    for (p, (e, _)) in files.iter().filter(|(_, (_, w))| !*w) {
        match writes.iter_mut().filter(|(r, _)| paths::covers(r, p)).max_by_key(|(r, _)| paths::depth(r)) {
            Some((_, ev)) => ev.merge(e),
            None => {
                reads.insert(p.clone(), e.clone());
            }
        }
    }
    (fold(reads), writes)
}

/// The base policy's lists, without comments.
fn base_lists(b: &Policy) -> BTreeMap<&'static str, List> {
    BTreeMap::from([
        ("files.read", plain(&b.files_read)),
        ("files.write", plain(&b.files_write)),
        ("files.deny", plain(&b.files_deny)),
        ("exec.allow", plain(&b.exec_allow)),
        ("network.connect", plain(b.network_connect.iter().map(ToString::to_string))),
        ("network.unix", plain(&b.network_unix)),
        ("network.families", plain(&b.network_families)),
        ("network.listen", plain(b.network_listen.iter().map(ToString::to_string))),
        ("syscalls.deny", plain(b.syscalls_deny.iter().map(|(n, _)| n))),
        ("bind.cgroups", plain(&b.bind_cgroups)),
        ("process.capabilities", plain(b.capabilities.iter().map(|(n, _)| n))),
    ])
}

/// `events`: (where it came from, for errors, e.g. "events.jsonl:12"; the event). With a
/// `base`, only its violations count (would_deny, deny, kill, hold) and only what it does not
/// already allow is added. `name`: the policy's name (default: the base's, else the policy
/// the runs were under, else "suggested").
pub fn suggest(events: &[(String, Value)], base: Option<&Policy>, name: Option<&str>) -> Result<Suggestion, String> {
    if let Some(n) = name {
        super::parse(&format!("name = {}\n", quote(n)), "--name").policy.ok_or_else(|| format!("{n:?} is not a valid policy name"))?;
    }
    let mut seen = see(events, base)?;
    let (reads, writes) = file_rules(&seen.files);
    let exec = fold_exec(seen.rest.remove("exec.allow").unwrap_or_default());

    // The policy: the base's lists (no comments) followed by the additions (with evidence).
    let mut lists = base.map(base_lists).unwrap_or_default();
    let mut added = 0;
    let mut add = |lists: &mut BTreeMap<&'static str, List>, key: &'static str, items: &Rules| {
        for (v, ev) in items {
            lists.entry(key).or_default().push((v.clone(), Some(ev.comment())));
            added += 1;
        }
    };
    add(&mut lists, "files.read", &reads);
    add(&mut lists, "files.write", &writes);
    add(&mut lists, "exec.allow", &exec);
    for key in ["network.connect", "network.unix", "network.families", "network.listen"] {
        add(&mut lists, key, &seen.rest.get(key).cloned().unwrap_or_default());
    }
    let raw = seen.rest.get("network.raw_sockets").and_then(|m| m.get("true")).cloned();
    if raw.is_some() {
        added += 1;
    }

    // Likely secrets: never allowed. A deny where a rule would cover one, a comment otherwise.
    let (mut warnings, mut secret_notes) = (Vec::new(), Vec::new());
    let base_allows = |path: &str| base.is_some_and(|b| b.decide_file(path, Access::Read) == FileVerdict::Allow);
    for (path, (ev, why)) in &seen.secrets {
        let runs = ev.runs.iter().cloned().collect::<Vec<_>>().join(", ");
        let so_far = Policy { files_read: values(&lists, "files.read"), files_write: values(&lists, "files.write"), files_deny: values(&lists, "files.deny"), ..empty_policy() };
        let covered = so_far.decide_file(path, Access::Read) == FileVerdict::Allow;
        if covered && !base_allows(path) {
            lists.entry("files.deny").or_default().push((path.clone(), Some(format!("likely secret ({why}), read by run {runs}: a rule above covers it"))));
            warnings.push(format!("run {runs} read {path}, a likely secret ({why}): not allowed; the suggestion denies it"));
        } else {
            let also = if covered { "; the base policy allows it: consider denying it" } else { "" };
            secret_notes.push(format!("# deny = [{}]  # likely secret ({why}), read by run {runs}: not allowed{also}", quote(path)));
            warnings.push(format!("run {runs} read {path}, a likely secret ({why}): not allowed; suggested as a commented deny"));
        }
    }
    if seen.listed_root {
        warnings.push("a run opened / itself (listed it): no rule suggested, a rule for / would allow every file".into());
    }

    let name = name.map(str::to_string).or_else(|| base.map(|b| b.name.clone())).unwrap_or_else(|| match seen.policies.len() {
        1 => seen.policies.iter().next().cloned().unwrap_or_default(),
        _ => "suggested".into(),
    });
    let mut text = render(&header(events.len(), &seen.runs, base, added), &name, base, &lists, raw.as_ref(), &secret_notes);
    // The base's tripwires as they are; budgets from the runs' peaks unless the base has its own.
    if let Some(b) = base {
        text.push_str(&b.tripwires.to_toml());
    }
    if !base.is_some_and(|b| b.tripwires.has_limits()) {
        text.push_str(&limits::render(&limits::peaks(events)));
    }
    // The last word: a valid policy, and no secret allowed that the base did not allow.
    let checked = super::parse(&text, "the suggestion");
    let Some(policy) = checked.policy.filter(|_| checked.errors.is_empty()) else {
        let errors: Vec<String> = checked.errors.iter().map(ToString::to_string).collect();
        return Err(format!("the suggestion is not a valid policy:\n{}\n{text}", errors.join("\n")));
    };
    if let Some(p) = seen.secrets.keys().find(|p| policy.decide_file(p, Access::Read) == FileVerdict::Allow && !base_allows(p)) {
        return Err(format!("the suggestion would allow {p}, a likely secret; refusing to print it"));
    }
    Ok(Suggestion { text, warnings, rules: added, events: events.len(), runs: seen.runs })
}

/// A policy with no rule, to judge paths against lists being built.
fn empty_policy() -> Policy {
    super::parse("name = \"suggestion\"\n", "suggestion").policy.expect("a valid empty policy")
}

/// True when `rule` (canonical "CIDR:PORT") is one host and port some rule of `list` allows.
fn rule_allows(list: &[super::NetRuleSpec], rule: &str) -> bool {
    let Some((addr, port)) = rule.rsplit_once(':') else { return false };
    let addr = addr.trim_start_matches('[').split(['/', ']']).next().unwrap_or("");
    match (addr.parse::<IpAddr>(), port.parse::<u16>()) {
        (Ok(a), Ok(p)) => list.iter().any(|r| r.allows(super::normalise_addr(a), p)),
        _ => false,
    }
}

/// Whether a name rule of `list` allows "NAME:PORT".
fn name_allows(list: &[super::names::NameRuleSpec], rule: &str) -> bool {
    let Some((name, port)) = rule.rsplit_once(':') else { return false };
    let Ok(port) = port.parse::<u16>() else { return false };
    list.iter().any(|r| r.covers(name) && r.ports.0 <= port && port <= r.ports.1)
}

#[cfg(test)]
mod tests;
