//! `policy diff OLD NEW`: what NEW allows that OLD did not, and the reverse, per section, in
//! words. Semantic: it compares the checked policies (normalised rule sets), so a reordered
//! or reformatted file, or one with other comments, has no difference.
use std::collections::BTreeSet;

use serde::Serialize;

use super::{Access, FileVerdict, Policy};

/// One difference: `+` a rule NEW has and OLD has not, `-` the reverse, `~` a value changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// "files", "exec", "network", "syscalls", "bind", "process", "decoys", "limits", "policy".
    pub section: &'static str,
    /// "+", "-" or "~".
    pub sign: &'static str,
    /// What kind of rule: "read", "write", "deny", "exec", "connect", "unix", "family",
    /// "listen", "raw_sockets", "deny syscall", "bind", "capability", "user", "devices",
    /// "mode", "on_violation", "name", "decoy file", "decoy host", a `[limits]` key.
    pub what: &'static str,
    /// The rule ("/workspace/cache", "10.0.0.0/8:5432") or, for `~`, "OLD -> NEW".
    pub rule: String,
    /// What the other policy decides there ("was denied", "now read-only"), when it says
    /// something.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sign == "~" {
            write!(f, "~ {}: {}", self.what, self.rule)?;
        } else {
            write!(f, "{} {} {}", self.sign, self.what, self.rule)?;
        }
        if let Some(n) = &self.note {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

/// One list of a policy's rules, as text.
type Rules = fn(&Policy) -> Vec<String>;

/// What a policy lets a process do with a path: "denied", "read-only", "writable".
fn file_state(p: &Policy, path: &str) -> &'static str {
    if p.decide_file(path, Access::Write) == FileVerdict::Allow {
        "writable"
    } else if p.decide_file(path, Access::Read) == FileVerdict::Allow {
        "read-only"
    } else {
        "denied"
    }
}

fn set(items: Vec<String>) -> BTreeSet<String> {
    items.into_iter().collect()
}

/// The differences from `old` to `new`, section by section (files, exec, network, syscalls,
/// bind, process), `~` changes of single values first. Empty: the same policy.
pub fn diff(old: &Policy, new: &Policy) -> Vec<Change> {
    let mut out = Vec::new();
    let mut value = |section, what, a: String, b: String| {
        if a != b {
            out.push(Change { section, sign: "~", what, rule: format!("{a} -> {b}"), note: None });
        }
    };
    value("policy", "name", old.name.clone(), new.name.clone());
    value("policy", "mode", old.mode.to_string(), new.mode.to_string());
    value("policy", "on_violation", old.on_violation.to_string(), new.on_violation.to_string());
    value("files", "devices", old.devices.to_string(), new.devices.to_string());
    value("network", "raw_sockets", old.raw_sockets.to_string(), new.raw_sockets.to_string());
    let user = |p: &Policy| p.run_as.clone().unwrap_or_else(|| "(the caller)".into());
    value("process", "user", user(old), user(new));
    for (i, name) in super::tripwire::LIMIT_NAMES.iter().enumerate() {
        let budget = |p: &Policy| p.tripwires.limits[i].map_or_else(|| "(none)".into(), |n| n.to_string());
        value("limits", name, budget(old), budget(new));
    }
    let on_limit = |p: &Policy| if p.tripwires.has_limits() { p.tripwires.on_limit.as_str() } else { "(no limits)" }.to_string();
    value("limits", "on_limit", on_limit(old), on_limit(new));

    // Files: each rule added or removed, with what the other side decides at that path.
    for (what, get) in [
        ("read", (|p: &Policy| p.files_read.clone()) as Rules),
        ("write", |p: &Policy| p.files_write.clone()),
        ("deny", |p: &Policy| p.files_deny.clone()),
    ] {
        let (a, b) = (set(get(old)), set(get(new)));
        for r in b.difference(&a) {
            let was = file_state(old, r);
            let now = file_state(new, r);
            let note = (was != now).then(|| format!("was {was}"));
            out.push(Change { section: "files", sign: "+", what, rule: r.clone(), note });
        }
        for r in a.difference(&b) {
            let was = file_state(old, r);
            let now = file_state(new, r);
            let note = (was != now).then(|| format!("now {now}"));
            out.push(Change { section: "files", sign: "-", what, rule: r.clone(), note });
        }
    }
    let lists: [(&'static str, &'static str, Rules); 10] = [
        ("exec", "exec", |p| p.exec_allow.clone()),
        ("network", "connect", |p| {
            p.network_connect.iter().map(ToString::to_string).chain(p.network_names.iter().map(ToString::to_string)).collect()
        }),
        ("network", "unix", |p| p.network_unix.clone()),
        ("network", "family", |p| p.network_families.clone()),
        ("network", "listen", |p| p.network_listen.iter().map(ToString::to_string).collect()),
        ("syscalls", "deny syscall", |p| p.syscalls_deny.iter().map(|(n, _)| n.clone()).collect()),
        ("bind", "bind", |p| p.bind_cgroups.clone()),
        ("process", "capability", |p| p.capabilities.iter().map(|(n, _)| n.clone()).collect()),
        ("decoys", "decoy file", |p| p.tripwires.decoy_files.clone()),
        ("decoys", "decoy host", |p| p.tripwires.decoy_hosts.iter().map(ToString::to_string).collect()),
    ];
    for (section, what, get) in lists {
        let (a, b) = (set(get(old)), set(get(new)));
        for r in b.difference(&a) {
            out.push(Change { section, sign: "+", what, rule: r.clone(), note: None });
        }
        for r in a.difference(&b) {
            out.push(Change { section, sign: "-", what, rule: r.clone(), note: None });
        }
    }
    let order = ["policy", "files", "exec", "network", "syscalls", "bind", "process", "decoys", "limits"];
    out.sort_by_key(|c| order.iter().position(|s| *s == c.section));
    out
}

/// The human form: one line per change under a `[section]` heading; "" when equal.
pub fn text(changes: &[Change]) -> String {
    let mut s = String::new();
    let mut section = "";
    for c in changes {
        if c.section != section {
            section = c.section;
            s.push_str(&format!("[{section}]\n"));
        }
        s.push_str(&format!("{c}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Policy {
        let c = super::super::parse(text, "t.toml");
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        c.policy.unwrap()
    }

    fn lines(a: &str, b: &str) -> Vec<String> {
        diff(&p(a), &p(b)).iter().map(ToString::to_string).collect()
    }

    const FULL: &str = r#"
name = "x"
[files]
read = ["/usr", "/etc/ssl"]
write = ["/workspace"]
deny = ["/workspace/.env"]
[exec]
allow = ["/usr/bin/git", "/usr/local/bin/"]
[network]
connect = ["10.0.0.0/8:5432", "[::1]/128:443"]
unix = ["/run/a.sock"]
families = ["packet"]
listen = ["127.0.0.1:3000-3999"]
[syscalls]
deny = ["ptrace"]
[bind]
cgroups = ["agents.slice/*.scope"]
[process]
capabilities = ["CAP_NET_BIND_SERVICE"]
"#;

    #[test]
    fn a_reordered_reformatted_file_has_no_difference() {
        let other = r#"name = "x"   # same policy
[network]
listen = ["127.0.0.1/32:3000-3999"]
families = ["packet"]
unix = ["/run/a.sock"]
connect = [ "[::1]:443", "10.0.0.0/8:5432" ]
[files]
deny = ["/workspace/.env/"]
write = ["/workspace/"]
read = ["/etc/ssl", "/usr"]
[syscalls]
deny = ["ptrace"]
[exec]
allow = ["/usr/local/bin/", "/usr/bin/git"]
[process]
capabilities = ["CAP_NET_BIND_SERVICE"]
[bind]
cgroups = ["agents.slice/*.scope"]
"#;
        assert_eq!(lines(FULL, other), Vec::<String>::new());
        assert_eq!(text(&diff(&p(FULL), &p(other))), "");
    }

    #[test]
    fn files_rules_say_what_the_other_side_decided() {
        let a = "name = \"x\"\n[files]\nread = [\"/usr\", \"/workspace\"]\nwrite = [\"/tmp\"]\ndeny = [\"/workspace/.env\"]\n";
        let b = "name = \"x\"\n[files]\nread = [\"/usr\", \"/workspace\", \"/opt/cache\"]\nwrite = [\"/workspace/out\"]\ndeny = [\"/workspace/.env\", \"/usr/secret\"]\n";
        assert_eq!(
            lines(a, b),
            vec![
                "+ read /opt/cache (was denied)",
                "+ write /workspace/out (was read-only)",
                "- write /tmp (now denied)",
                "+ deny /usr/secret (was read-only)",
            ]
        );
        // Read of a path already read through a wider rule: no note, nothing changes there.
        assert_eq!(lines("name = \"x\"\n[files]\nread = [\"/usr\"]\n", "name = \"x\"\n[files]\nread = [\"/usr\", \"/usr/lib\"]\n"), vec!["+ read /usr/lib"]);
        // Removing a deny opens the path again.
        assert_eq!(lines(b, a)[3], "- deny /usr/secret (now read-only)");
    }

    #[test]
    fn every_other_rule_kind_and_value() {
        let empty = "name = \"x\"\n";
        let added = lines(empty, FULL);
        for want in [
            "+ read /usr (was denied)",
            "+ write /workspace (was denied)",
            "+ deny /workspace/.env",
            "+ exec /usr/bin/git",
            "+ exec /usr/local/bin/",
            "+ connect 10.0.0.0/8:5432",
            "+ connect [::1]/128:443",
            "+ unix /run/a.sock",
            "+ family packet",
            "+ listen 127.0.0.1/32:3000-3999",
            "+ deny syscall ptrace",
            "+ bind agents.slice/*.scope",
            "+ capability CAP_NET_BIND_SERVICE",
        ] {
            assert!(added.contains(&want.to_string()), "{want}: {added:#?}");
        }
        assert_eq!(added.len(), 14, "{added:#?}");
        let removed = lines(FULL, empty);
        assert!(removed.contains(&"- connect 10.0.0.0/8:5432".to_string()), "{removed:#?}");
        assert!(removed.contains(&"- read /usr (now denied)".to_string()), "{removed:#?}");
        assert_eq!(removed.len(), 14);
        let values = lines(
            empty,
            "name = \"y\"\nmode = \"monitor\"\non_violation = \"kill\"\n[files]\ndevices = true\n[network]\nraw_sockets = true\n[process]\nuser = \"agent\"\n",
        );
        assert_eq!(
            values,
            vec![
                "~ name: x -> y",
                "~ mode: enforce -> monitor",
                "~ on_violation: deny -> kill",
                "~ devices: false -> true",
                "~ raw_sockets: false -> true",
                "~ user: (the caller) -> agent",
            ]
        );
        let tripwires = lines(
            empty,
            "name = \"x\"\n[decoys]\nfiles = [\"/w/.env\"]\nhosts = [\"10.0.0.9:443\"]\n[limits]\nconnects_per_minute = 5\n",
        );
        assert_eq!(
            tripwires,
            vec!["+ decoy file /w/.env", "+ decoy host 10.0.0.9:443", "~ connects_per_minute: (none) -> 5", "~ on_limit: (no limits) -> freeze"],
        );
        let t = text(&diff(&p(empty), &p(FULL)));
        assert!(t.starts_with("[files]\n+ read /etc/ssl (was denied)\n"), "{t}");
        assert!(t.contains("\n[network]\n+ connect"), "{t}");
        let json = serde_json::to_value(diff(&p(empty), &p(FULL))).unwrap();
        assert_eq!(json[0]["section"], "files");
        assert_eq!(json[0]["sign"], "+");
        assert_eq!(json[0]["note"], "was denied");
    }
}
