//! Parsing and checking a policy file: TOML with spans, every problem with line and column.
use std::{
    collections::HashMap,
    io::Write,
    ops::Range,
    path::{Path, PathBuf},
};

use agent_guard_common::{PORT_RANGES_MAX, RULES_MAX};
use serde::Deserialize;
use toml::Spanned;

use super::*;
use super::paths::Problem;
use super::syscalls::*;

// ---- raw TOML --------------------------------------------------------------------------

pub(super) type SList = Option<Spanned<Vec<Spanned<String>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
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
    #[serde(default)]
    process: RawProcess,
    #[serde(default)]
    decoys: super::tripwire::RawDecoys,
    #[serde(default)]
    limits: super::tripwire::RawLimits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProcess {
    capabilities: SList,
    user: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFiles {
    devices: Option<Spanned<bool>>,
    read: SList,
    write: SList,
    deny: SList,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExec {
    allow: SList,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    connect: SList,
    raw_sockets: Option<Spanned<bool>>,
    unix: SList,
    families: SList,
    listen: SList,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSyscalls {
    deny: SList,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBind {
    cgroups: SList,
}

// ---- checking --------------------------------------------------------------------------

/// A valid list entry and where it was written.
pub(super) struct Item<T> {
    field: String,
    span: Range<usize>,
    value: T,
}

pub(super) struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Warning>,
    /// Every valid list entry: (field, canonical key, where), for remarks made later.
    located: Vec<(String, String, Range<usize>)>,
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
            note: false,
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
            // The policy is refused anyway: checking (and reporting) each of possibly
            // millions of entries would only cost time and memory.
            return Vec::new();
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
                        self.located.push((f.clone(), key.clone(), entry.span()));
                        seen.insert(key, (f.clone(), entry.span()));
                        out.push(Item { field: f, span: entry.span(), value });
                    }
                }
            }
        }
        out
    }
}

pub(super) fn keyword<T: Copy>(
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

pub(super) fn check_name(name: &str) -> Result<(), Problem> {
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

/// Checks a policy file's text. `origin` is the file name shown in messages.
pub fn parse(text: &str, origin: &str) -> Checked {
    parse_located(text, origin).0
}

/// Where each valid list entry was written: (field such as "files.deny[3]", canonical key,
/// line, column).
type Located = Vec<(String, String, usize, usize)>;

fn parse_located(text: &str, origin: &str) -> (Checked, Located) {
    let mut ctx = Ctx { text, file: origin, errors: Vec::new(), warnings: Vec::new(), located: Vec::new() };
    let raw: Raw = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let (line, column) = e.span().map_or((0, 0), |s| ctx.pos(&s));
            let mut message = e.message().trim().replace('\n', "; ");
            if message.is_empty() {
                // toml says nothing about some characters it refuses (a control character
                // in a comment): name the character.
                message = crate::config::toml_blank_message(text, e.span());
            }
            let checked = Checked {
                policy: None,
                errors: vec![Diagnostic { file: origin.into(), line, column, field: String::new(), message, hint: None }],
                warnings: Vec::new(),
            };
            return (checked, Vec::new());
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
    // Addresses and CIDRs, or DNS names (the forwarder's rules, see names.rs).
    let connect_all = ctx.list("network.connect", &raw.network.connect, |s| {
        let host = s.rsplit_once(':').map_or(s, |(h, _)| h);
        if super::names::looks_like_name(host) {
            super::names::parse_name_rule(s).map(|r| {
                let key = r.to_string();
                (Err(r), key)
            })
        } else {
            net::parse_connect(s).map(|r| (Ok(r), r.to_string()))
        }
    });
    let mut connect = Vec::new();
    let mut connect_names = Vec::new();
    for i in connect_all {
        match i.value {
            Ok(r) => connect.push(Item { field: i.field, span: i.span, value: r }),
            Err(n) => connect_names.push(n),
        }
    }
    let unix = ctx.list("network.unix", &raw.network.unix, super::contain::check_unix);
    let families = ctx.list("network.families", &raw.network.families, |s| {
        super::contain::check_family(s).map(|(f, k)| ((f, k.clone()), k))
    });
    let listen = ctx.list("network.listen", &raw.network.listen, |s| net::parse_connect(s).map(|r| (r, r.to_string())));
    let sys = ctx.list("syscalls.deny", &raw.syscalls.deny, check_syscall);
    let bind = ctx.list("bind.cgroups", &raw.bind.cgroups, |s| {
        paths::check_cgroup_glob(s).map(|_| (s.to_string(), s.to_string()))
    });
    let caps = ctx.list("process.capabilities", &raw.process.capabilities, super::process::check_capability);
    let user = raw.process.user.as_ref().and_then(|u| match super::process::check_user(u.get_ref()) {
        Ok(()) => Some(u.get_ref().clone()),
        Err(problem) => {
            ctx.error(&u.span(), "process.user", problem);
            None
        }
    });

    let decoy_files = ctx.list("decoys.files", &raw.decoys.files, super::tripwire::check_decoy_file);
    let decoy_hosts = ctx.list("decoys.hosts", &raw.decoys.hosts, super::tripwire::check_decoy_host);
    let mut tripwires = super::tripwire::Tripwires {
        decoy_files: decoy_files.into_iter().map(|i| i.value).collect(),
        decoy_hosts: decoy_hosts.into_iter().map(|i| i.value).collect(),
        ..Default::default()
    };
    for (slot, (field, v)) in tripwires.limits.iter_mut().zip(raw.limits.entries()) {
        if let Some(v) = v {
            match super::tripwire::check_limit(*v.get_ref()) {
                Ok(n) => *slot = Some(n),
                Err(p) => ctx.error(&v.span(), field, p),
            }
        }
    }
    use super::tripwire::OnLimit;
    tripwires.on_limit = keyword(
        &mut ctx,
        "limits.on_limit",
        &raw.limits.on_limit,
        OnLimit::Freeze,
        &[("report", OnLimit::Report), ("freeze", OnLimit::Freeze), ("kill", OnLimit::Kill)],
    );

    // Port ranges per kernel entry, once enclosing CIDRs are merged in.
    for list in [&connect, &listen] {
    for (net, ranges) in net::merged_ranges(list.iter().map(|i| &i.value)) {
        if ranges.len() > PORT_RANGES_MAX {
            let first = list.iter().find(|i| i.value.net == net).expect("net comes from a rule");
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
            network_names: connect_names,
            raw_sockets: raw.network.raw_sockets.as_ref().is_some_and(|b| *b.get_ref()),
            network_unix: unix.into_iter().map(|i| i.value).collect(),
            network_families: families.into_iter().map(|i| i.value.1).collect(),
            network_listen: listen.into_iter().map(|i| i.value).collect(),
            syscalls_deny: sys.into_iter().map(|i| i.value).collect(),
            bind_cgroups: bind.into_iter().map(|i| i.value).collect(),
            capabilities: caps.into_iter().map(|i| i.value).collect(),
            run_as: user,
            devices: raw.files.devices.as_ref().is_some_and(|b| *b.get_ref()),
            tripwires,
            version: String::new(),
            source: origin.to_string(),
        };
        p.version = p.compute_version();
        p
    });
    let located = ctx
        .located
        .iter()
        .map(|(f, k, span)| {
            let (l, c) = ctx.pos(span);
            (f.clone(), k.clone(), l, c)
        })
        .collect();
    (Checked { policy, errors: ctx.errors, warnings: ctx.warnings }, located)
}

pub(super) fn warnings(
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
        if let Some(sh) = SHELLS.iter().find(|s| super::eval::exec_rule_covers(&e.value, s)) {
            ctx.warn(e, format!("allows the shell {sh}: a shell can run anything else the policy lets it read"));
        }
        if let Some(ld) = LOADERS.iter().find(|s| super::eval::exec_rule_covers(&e.value, s)) {
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
    load_located(path).0
}

fn load_located(path: &Path) -> (Checked, Located) {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_located(&text, &origin),
        Err(e) => (Checked {
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
        }, Vec::new()),
    }
}

/// A remark on one entry of a checked policy that depends on this host (`policy check`):
/// the list ("files.deny"), the entry's canonical value, the message, and whether it is only
/// a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNote {
    pub list: &'static str,
    pub value: String,
    pub message: String,
    pub note: bool,
}

/// What `policy check` says about `policy` on this host, beside the checks of the text: an
/// exec.allow directory written without its trailing `/`, paths that do not exist here.
pub fn host_notes(policy: &Policy) -> Vec<HostNote> {
    let mut out: Vec<HostNote> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let lists: [(&'static str, &Vec<String>); 4] = [
        ("files.read", &policy.files_read),
        ("files.write", &policy.files_write),
        ("files.deny", &policy.files_deny),
        ("exec.allow", &policy.exec_allow),
    ];
    for (list, values) in lists {
        for v in values {
            let path = if v.len() > 1 { v.trim_end_matches('/') } else { v.as_str() };
            match std::fs::symlink_metadata(path) {
                // Once for a missing tree, not again for each rule inside it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound
                    && missing.iter().any(|m| paths::strictly_below(m, path)) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    out.push(HostNote {
                        list,
                        value: v.clone(),
                        message: format!("{path} does not exist on this host (nothing to match until it does)"),
                        note: true,
                    });
                    missing.push(path.to_string());
                }
                _ if list == "exec.allow" && !v.ends_with('/') && Path::new(path).is_dir() => out.push(HostNote {
                    list,
                    value: v.clone(),
                    message: format!(
                        "{path} is a directory on this host: without a trailing '/' this rule allows only a file \
                         of exactly that name, nothing inside it; write \"{path}/\" to allow what is in it"
                    ),
                    note: false,
                }),
                _ => {}
            }
        }
    }
    out
}

/// `agent-guard policy check FILE...`: prints "FILE: ok (name N, version V)" on `out` for each
/// valid file, errors and warnings on `err` (in file order, by position), and a summary line
/// when any file has errors. Returns the exit code: 0 when every file is valid (warnings
/// allowed), 1 otherwise.
pub fn check_files(paths: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    check_files_on(paths, out, err, &|_| Vec::new())
}

/// [`check_files`], with what `review` says about each valid policy on this host (the
/// Landlock layer's view of its carve-outs, which the policy layer does not know) added to
/// [`host_notes`], each at the entry it is about.
pub fn check_files_on(
    paths: &[PathBuf],
    out: &mut dyn Write,
    err: &mut dyn Write,
    review: &dyn Fn(&Policy) -> Vec<HostNote>,
) -> i32 {
    let mut bad_files = 0;
    let mut errors = 0;
    for p in paths {
        let (mut c, located) = load_located(p);
        if let Some(pol) = c.policy.as_ref().filter(|_| c.errors.is_empty()) {
            for n in host_notes(pol).into_iter().chain(review(pol)) {
                let at = located.iter().find(|(f, k, _, _)| f.strip_prefix(n.list).is_some_and(|r| r.starts_with('[')) && *k == n.value);
                let (field, line, column) = at.map_or((n.list.to_string(), 0, 0), |(f, _, l, c)| (f.clone(), *l, *c));
                c.warnings.push(Warning { file: p.display().to_string(), line, column, field, message: n.message, note: n.note });
            }
        }
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


pub(super) fn sorted<'a>(v: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    let mut v: Vec<&str> = v.into_iter().map(String::as_str).collect();
    v.sort_unstable();
    v.dedup();
    v
}

