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
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde_json::Value;

use super::{paths, Access, FileVerdict, Policy};

/// Distinct entries of a directory (or programs in it) that make the directory one rule.
pub const FOLD_AT: usize = 3;
/// Directories never suggested as a whole by folding.
pub const NEVER_WHOLE: &[&str] = &["/", "/etc", "/dev", "/home", "/root", "/run", "/var", "/var/lib", "/sys", "/boot", "/mnt", "/media", "/srv"];

const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;

/// Why `path` looks like a secret (`.env`, `*.pem`, `id_*`, `.aws/credentials`, `.netrc`,
/// `.git-credentials`, token files: `token`, `token.json`, `gh_token`, `api-token.txt`), or None.
pub fn secret(path: &str) -> Option<&'static str> {
    let base = path.rsplit('/').next().unwrap_or(path);
    let lower = base.to_ascii_lowercase();
    let stem = lower.split_once('.').filter(|(s, _)| !s.is_empty()).map_or(lower.as_str(), |(s, _)| s);
    if lower == ".env" || lower.starts_with(".env.") {
        Some(".env file")
    } else if lower.ends_with(".pem") && !path.contains("/certs/") && !path.starts_with("/usr/share/ca-certificates/") {
        // Public CA certificates (/etc/ssl/certs) are no secret.
        Some("private key (*.pem)")
    } else if lower.starts_with("id_") && !lower.ends_with(".pub") {
        Some("SSH private key (id_*)")
    } else if path.ends_with("/.aws/credentials") {
        Some("AWS credentials")
    } else if lower == ".netrc" || lower == ".git-credentials" {
        Some("password file")
    } else if lower == ".token" || stem == "token" || stem.ends_with("_token") || stem.ends_with("-token") {
        Some("token file")
    } else {
        None
    }
}

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
        let first: String = printable(&self.first).chars().take(100).collect();
        format!(
            "{} event{}, first: {first}; run{} {}",
            self.count,
            if self.count == 1 { "" } else { "s" },
            if self.runs.len() == 1 { "" } else { "s" },
            self.runs.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    }
}

/// One line of a comment: no control characters.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
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
            let first = if argv.is_empty() { path.to_string() } else { argv.join(" ") };
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
            _ => match host_rule(string(e, "addr")?, number(e, "port")?)? {
                Some(r) => (Op::Connect(r), format!("{kind} {}:{}", string(e, "addr")?, number(e, "port")?)),
                None => return Ok(None),
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

/// True for a directory folding may make one rule of.
fn foldable(dir: &str) -> bool {
    !NEVER_WHOLE.contains(&dir) && !home(dir)
}

/// `/root` and `/home/NAME`.
fn home(dir: &str) -> bool {
    dir == "/root" || (dir.starts_with("/home/") && paths::depth(dir) == 2)
}

/// Looks random: 6 or more letters and digits, mixing them (or cases) at least 3 times.
fn randomish(s: &str) -> bool {
    if s.len() < 6 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let class = |b: u8| if b.is_ascii_digit() { 0 } else if b.is_ascii_uppercase() { 1 } else { 2 };
    let b = s.as_bytes();
    let changes = b.windows(2).filter(|w| class(w[0]) != class(w[1])).count();
    changes >= 3 && b.iter().any(u8::is_ascii_digit) || (changes >= 4 && b.iter().any(u8::is_ascii_uppercase))
}

/// A temporary or pid-numbered name: `1234`, `tmp.AbC123`, `tmpk2x_9q0a`, `sedAb12Cd`,
/// `name-a1B2c3`, `name.12345`.
pub fn temporary(component: &str) -> bool {
    let c = component;
    if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let lower = c.to_ascii_lowercase();
    for prefix in ["tmp", "temp"] {
        if let Some(rest) = lower.strip_prefix(prefix) {
            let orig = &c[prefix.len()..];
            let rest_trim = rest.trim_start_matches(['.', '_', '-']);
            let orig_trim = orig.trim_start_matches(['.', '_', '-']);
            if rest_trim.len() >= 4
                && rest_trim.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && (rest_trim.bytes().any(|b| b.is_ascii_digit()) || orig_trim.bytes().any(|b| b.is_ascii_uppercase()) || rest_trim.len() == 8)
            {
                return true;
            }
        }
    }
    if let Some(rest) = c.strip_prefix("sed") {
        if rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return true;
        }
    }
    match c.rfind(['.', '-', '_']) {
        Some(i) if i > 0 => {
            let tail = &c[i + 1..];
            randomish(tail) || (tail.len() >= 3 && tail.bytes().all(|b| b.is_ascii_digit()) && c.as_bytes()[i] != b'.')
        }
        _ => false,
    }
}

/// `path` with its first temporary component and what follows replaced by their directory.
fn untemp(path: &str) -> String {
    let mut out = String::new();
    for c in paths::components(path) {
        if temporary(c) {
            break;
        }
        out.push('/');
        out.push_str(c);
    }
    if out.is_empty() {
        "/".into()
    } else {
        out
    }
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
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

/// One list of the policy being written: (value, evidence comment) in order.
type List = Vec<(String, Option<String>)>;

/// `events`: (where it came from, for errors, e.g. "events.jsonl:12"; the event). With a
/// `base`, only its violations count (would_deny, deny, kill, hold) and only what it does not
/// already allow is added. `name`: the policy's name (default: the base's, else the policy
/// the runs were under, else "suggested").
pub fn suggest(events: &[(String, Value)], base: Option<&Policy>, name: Option<&str>) -> Result<Suggestion, String> {
    let mut files: BTreeMap<String, (Evidence, bool)> = BTreeMap::new(); // path -> (evidence, write)
    let mut secrets: BTreeMap<String, (Evidence, &'static str)> = BTreeMap::new();
    let mut rest: BTreeMap<&'static str, BTreeMap<String, Evidence>> = BTreeMap::new();
    let mut runs = BTreeSet::new();
    let mut policies = BTreeSet::new();
    let mut listed_root = false;
    for (seq, (at, e)) in events.iter().enumerate() {
        let Some((op, first)) = observe(e).map_err(|m| format!("{at}: {m}"))? else { continue };
        let run = e.get("run").and_then(Value::as_str).unwrap_or("-").to_string();
        let verdict = e.get("verdict").and_then(Value::as_str).unwrap_or("allow");
        runs.insert(run.clone());
        if let Some(p) = e.get("policy").and_then(Value::as_str) {
            policies.insert(p.to_string());
        }
        if let Op::File { path, .. } = &op {
            if let Some(why) = secret(path) {
                secrets.entry(path.clone()).or_insert_with(|| (Evidence::default(), why)).0.add(seq, &first, &run);
                continue;
            }
        }
        if base.is_some() && !matches!(verdict, "would_deny" | "deny" | "kill" | "hold") {
            continue;
        }
        let allowed = |b: &Policy| match &op {
            Op::File { path, write, .. } => b.decide_file(path, if *write { Access::ReadWrite } else { Access::Read }) == FileVerdict::Allow,
            Op::Exec(p) => b.exec_allowed(p),
            Op::Connect(r) => b.network_connect.iter().any(|x| x.to_string() == *r) || rule_allows(&b.network_connect, r),
            Op::Unix(p) => b.unix_allowed(p),
            Op::Listen(r) => rule_allows(&b.network_listen, r),
            Op::Family(f) => b.network_families.contains(f),
            Op::RawSockets => b.raw_sockets,
        };
        if base.is_some_and(allowed) {
            continue;
        }
        match op {
            Op::File { path, write, created } => {
                if path == "/" {
                    listed_root = true;
                    continue;
                }
                let mut rule = untemp(&path);
                if write && created && rule == path && foldable(parent(&path)) {
                    rule = parent(&path).to_string();
                }
                let entry = files.entry(rule).or_default();
                entry.0.add(seq, &first, &run);
                entry.1 |= write;
            }
            Op::Exec(p) => rest.entry("exec.allow").or_default().entry(p).or_default().add(seq, &first, &run),
            Op::Connect(r) => rest.entry("network.connect").or_default().entry(r).or_default().add(seq, &first, &run),
            Op::Unix(p) => rest.entry("network.unix").or_default().entry(p).or_default().add(seq, &first, &run),
            Op::Listen(r) => rest.entry("network.listen").or_default().entry(r).or_default().add(seq, &first, &run),
            Op::Family(f) => rest.entry("network.families").or_default().entry(f).or_default().add(seq, &first, &run),
            Op::RawSockets => rest.entry("network.raw_sockets").or_default().entry("true".into()).or_default().add(seq, &first, &run),
        }
    }

    // Writes first (folded among themselves), then reads not under a write rule (a read under
    // one counts as its evidence: a write rule allows reading).
    let mut writes = fold(files.iter().filter(|(_, (_, w))| *w).map(|(p, (e, _))| (p.clone(), e.clone())).collect());
    let mut reads_raw = BTreeMap::new();
    for (p, (e, _)) in files.iter().filter(|(_, (_, w))| !*w) {
        match writes.iter_mut().filter(|(r, _)| paths::covers(r, p)).max_by_key(|(r, _)| paths::depth(r)) {
            Some((_, ev)) => ev.merge(e),
            None => {
                reads_raw.insert(p.clone(), e.clone());
            }
        }
    }
    // Folding only climbs, so no read rule ends up inside a write rule (where it would make
    // that subtree read-only).
    let reads = fold(reads_raw);
    let exec = fold_exec(rest.remove("exec.allow").unwrap_or_default());

    // The policy: the base's lists (no comments) followed by the additions (with evidence).
    let mut lists: BTreeMap<&'static str, List> = BTreeMap::new();
    let mut draft = match base {
        Some(b) => b.clone(),
        None => {
            let mut p = super::parse(&format!("name = {}\n", quote(name.unwrap_or("suggested"))), "suggestion")
                .policy
                .ok_or_else(|| format!("{:?} is not a valid policy name", name.unwrap_or("suggested")))?;
            p.files_read.clear();
            p
        }
    };
    if let Some(b) = base {
        lists.insert("files.read", plain(&b.files_read));
        lists.insert("files.write", plain(&b.files_write));
        lists.insert("files.deny", plain(&b.files_deny));
        lists.insert("exec.allow", plain(&b.exec_allow));
        lists.insert("network.connect", plain(b.network_connect.iter().map(ToString::to_string)));
        lists.insert("network.unix", plain(&b.network_unix));
        lists.insert("network.families", plain(&b.network_families));
        lists.insert("network.listen", plain(b.network_listen.iter().map(ToString::to_string)));
        lists.insert("syscalls.deny", plain(b.syscalls_deny.iter().map(|(n, _)| n)));
        lists.insert("bind.cgroups", plain(&b.bind_cgroups));
        lists.insert("process.capabilities", plain(b.capabilities.iter().map(|(n, _)| n)));
    }
    let mut added = 0;
    let mut add = |lists: &mut BTreeMap<&'static str, List>, key: &'static str, items: &BTreeMap<String, Evidence>| {
        for (v, ev) in items {
            lists.entry(key).or_default().push((v.clone(), Some(ev.comment())));
            added += 1;
        }
    };
    add(&mut lists, "files.read", &reads);
    add(&mut lists, "files.write", &writes);
    add(&mut lists, "exec.allow", &exec);
    for key in ["network.connect", "network.unix", "network.families", "network.listen"] {
        add(&mut lists, key, &rest.get(key).cloned().unwrap_or_default());
    }
    let raw = rest.get("network.raw_sockets").and_then(|m| m.get("true")).cloned();
    if raw.is_some() {
        added += 1;
    }
    draft.files_read = values(&lists, "files.read");
    draft.files_write = values(&lists, "files.write");

    // Likely secrets: never allowed. A deny where a rule would cover one, a comment otherwise.
    let mut warnings = Vec::new();
    let mut secret_notes = Vec::new();
    for (path, (ev, why)) in &secrets {
        let covered = draft.decide_file(path, Access::Read) == FileVerdict::Allow;
        let runs = ev.runs.iter().cloned().collect::<Vec<_>>().join(", ");
        if covered && base.is_none_or(|b| b.decide_file(path, Access::Read) != FileVerdict::Allow) {
            lists.entry("files.deny").or_default().push((path.clone(), Some(format!("likely secret ({why}), read by run {runs}: a rule above covers it"))));
            warnings.push(format!("run {runs} read {path}, a likely secret ({why}): not allowed; the suggestion denies it"));
        } else {
            let also = if covered { "; the base policy allows it: consider denying it" } else { "" };
            secret_notes.push(format!("# deny = [{}]  # likely secret ({why}), read by run {runs}: not allowed{also}", quote(path)));
            warnings.push(format!("run {runs} read {path}, a likely secret ({why}): not allowed; suggested as a commented deny"));
        }
    }
    if listed_root {
        warnings.push("a run opened / itself (listed it): no rule suggested, a rule for / would allow every file".into());
    }

    let name = name.map(str::to_string).or_else(|| base.map(|b| b.name.clone())).unwrap_or_else(|| {
        if policies.len() == 1 {
            policies.iter().next().cloned().unwrap_or_default()
        } else {
            "suggested".into()
        }
    });
    let header = header(events.len(), &runs, base, added);
    let text = render(&header, &name, base, &lists, raw.as_ref(), &secret_notes);
    let checked = super::parse(&text, "the suggestion");
    let Some(policy) = checked.policy.filter(|_| checked.errors.is_empty()) else {
        let errors: Vec<String> = checked.errors.iter().map(ToString::to_string).collect();
        return Err(format!("the suggestion is not a valid policy:\n{}\n{text}", errors.join("\n")));
    };
    if let Some(p) = secrets.keys().find(|p| policy.decide_file(p, Access::Read) == FileVerdict::Allow && base.is_none_or(|b| b.decide_file(p, Access::Read) != FileVerdict::Allow)) {
        return Err(format!("the suggestion would allow {p}, a likely secret; refusing to print it"));
    }
    Ok(Suggestion { text, warnings, rules: added, events: events.len(), runs })
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

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn plain<S: ToString>(items: impl IntoIterator<Item = S>) -> List {
    items.into_iter().map(|s| (s.to_string(), None)).collect()
}

fn values(lists: &BTreeMap<&'static str, List>, key: &str) -> Vec<String> {
    lists.get(key).map(|l| l.iter().map(|(v, _)| v.clone()).collect()).unwrap_or_default()
}

fn header(events: usize, runs: &BTreeSet<String>, base: Option<&Policy>, added: usize) -> String {
    let runs = runs.iter().cloned().collect::<Vec<_>>().join(", ");
    let mut h = String::new();
    match base {
        Some(b) => h.push_str(&format!(
            "# Policy {} ({}, from {}) with the {added} rule{} its violations in runs {runs} call for\n\
             # ({events} events read), each commented with its evidence. The base's own comments are\n\
             # not kept. Review what it adds: agent-guard policy diff {} THIS-FILE\n",
            b.name,
            b.version,
            b.source,
            if added == 1 { "" } else { "s" },
            b.name
        )),
        None => h.push_str(&format!(
            "# Suggested by `agent-guard policy suggest` from {events} events of runs {runs}.\n\
             # Each rule says why: how many events needed it, the first one, the runs. Review it\n\
             # before you apply it (agent-guard policy diff OLD THIS-FILE).\n"
        )),
    }
    h.push_str(&format!(
        "# Rules of thumb: a directory becomes one rule when the runs used {FOLD_AT} or more entries\n\
         # in it, never one of {} or a home directory\n\
         # as a whole; a file the runs created stands for its directory; temporary names\n\
         # (tmp.XXXXXX, pid-numbered) stand for their directory; writes are kept apart from reads\n\
         # (a write rule allows reading too); {FOLD_AT} or more programs from one directory become\n\
         # dir/; network rules are the hosts and ports the runs reached. Likely secrets are never\n\
         # allowed.\n",
        NEVER_WHOLE.join(" ")
    ));
    h
}

fn render(header: &str, name: &str, base: Option<&Policy>, lists: &BTreeMap<&'static str, List>, raw: Option<&Evidence>, secret_notes: &[String]) -> String {
    let mut s = String::from(header);
    s.push_str(&format!("name = {}\n", quote(name)));
    match base {
        Some(b) => s.push_str(&format!("mode = \"{}\"\non_violation = \"{}\"\n", b.mode, b.on_violation)),
        None => s.push_str("mode = \"enforce\"                # try it in \"monitor\" mode first if the runs vary\non_violation = \"deny\"\n"),
    }
    let list = |s: &mut String, key: &str, field: &str| {
        let Some(items) = lists.get(field).filter(|l| !l.is_empty()) else { return };
        s.push_str(&format!("{key} = [\n"));
        for (v, c) in items {
            match c {
                Some(c) => s.push_str(&format!("    {},  # {}\n", quote(v), printable(c))),
                None => s.push_str(&format!("    {},\n", quote(v))),
            }
        }
        s.push_str("]\n");
    };
    s.push_str("\n[files]\n");
    if base.is_some_and(|b| b.devices) {
        s.push_str("devices = true\n");
    }
    list(&mut s, "read", "files.read");
    list(&mut s, "write", "files.write");
    list(&mut s, "deny", "files.deny");
    for n in secret_notes {
        s.push_str(n);
        s.push('\n');
    }
    s.push_str("\n[exec]\n");
    list(&mut s, "allow", "exec.allow");
    s.push_str("\n[network]\n");
    list(&mut s, "connect", "network.connect");
    list(&mut s, "unix", "network.unix");
    list(&mut s, "families", "network.families");
    list(&mut s, "listen", "network.listen");
    match (raw, base.is_some_and(|b| b.raw_sockets)) {
        (_, true) => s.push_str("raw_sockets = true\n"),
        (Some(ev), false) => s.push_str(&format!("raw_sockets = true  # {}\n", printable(&ev.comment()))),
        (None, false) => {}
    }
    if lists.get("syscalls.deny").is_some_and(|l| !l.is_empty()) {
        s.push_str("\n[syscalls]\n");
        list(&mut s, "deny", "syscalls.deny");
    }
    if lists.get("bind.cgroups").is_some_and(|l| !l.is_empty()) {
        s.push_str("\n[bind]\n");
        list(&mut s, "cgroups", "bind.cgroups");
    }
    let user = base.and_then(|b| b.run_as.as_deref());
    if user.is_some() || lists.get("process.capabilities").is_some_and(|l| !l.is_empty()) {
        s.push_str("\n[process]\n");
        list(&mut s, "capabilities", "process.capabilities");
        if let Some(u) = user {
            s.push_str(&format!("user = {}\n", quote(u)));
        }
    }
    s
}

#[cfg(test)]
#[path = "suggest_tests.rs"]
mod tests;
