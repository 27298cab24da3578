//! The text of a suggested policy: header, sections, one comment of evidence per rule.
use std::collections::{BTreeMap, BTreeSet};

use super::super::Policy;
use super::{Evidence, FOLD_AT, NEVER_WHOLE};

/// One list of the policy being written: (value, evidence comment) in order.
pub(super) type List = Vec<(String, Option<String>)>;

/// One line of a comment: no control characters.
pub(super) fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

pub(super) fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub(super) fn plain<S: ToString>(items: impl IntoIterator<Item = S>) -> List {
    items.into_iter().map(|s| (s.to_string(), None)).collect()
}

pub(super) fn values(lists: &BTreeMap<&'static str, List>, key: &str) -> Vec<String> {
    lists.get(key).map(|l| l.iter().map(|(v, _)| v.clone()).collect()).unwrap_or_default()
}

pub(super) fn header(events: usize, runs: &BTreeSet<String>, base: Option<&Policy>, added: usize) -> String {
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
         # in it, but a home directory and these never as a whole:\n\
         #   {}\n\
         # A file the runs created stands for its directory; temporary names (tmp.XXXXXX,\n\
         # pid-numbered) stand for their directory; writes are kept apart from reads (a write\n\
         # rule allows reading too); {FOLD_AT} or more programs from one directory become dir/;\n\
         # network rules are the hosts and ports the runs reached. Likely secrets are never\n\
         # allowed.\n",
        NEVER_WHOLE.join(" ")
    ));
    h
}

pub(super) fn render(header: &str, name: &str, base: Option<&Policy>, lists: &BTreeMap<&'static str, List>, raw: Option<&Evidence>, secret_notes: &[String]) -> String {
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

