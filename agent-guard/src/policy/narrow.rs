//! A task's effective policy: the intersection of its run's policy and its own (`agent-guard
//! task --policy`). A task can only narrow what its run may do: an access is allowed exactly
//! when both policies allow it (checked against the evaluator by the property test below).
//!
//! Files use the kernel's longest-prefix rule: for a path, the deeper of the two policies'
//! longest matching prefixes is the intersection's, and at it the weaker of the two labels
//! (write > read > none) holds, "none" written as a deny rule. So the intersection has a rule
//! at every prefix of either policy, labelled by what both allow there.
use std::collections::BTreeSet;

use super::{names::NameRuleSpec, paths, Mode, NetRuleSpec, OnViolation, Policy};

/// What a prefix lets through: the order is the meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Label {
    None,
    Read,
    Write,
}

fn label_at(p: &Policy, path: &str) -> Label {
    let m = p.match_path(path);
    if m.deny || m.prefix.is_none() {
        Label::None
    } else if m.write {
        Label::Write
    } else if m.read {
        Label::Read
    } else {
        Label::None
    }
}

/// The intersection of `run` and `task`, and what of `task` had no effect (a rule the run
/// does not allow, a setting a task cannot change), one message each.
pub fn narrow(run: &Policy, task: &Policy) -> (Policy, Vec<String>) {
    let mut notes = Vec::new();
    let mut out = run.clone();
    out.name = format!("{}~{}", run.name, task.name);
    out.source = task.source.clone();
    out.version = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(run.version.as_bytes());
        h.update(b"\0");
        h.update(task.version.as_bytes());
        format!("sha256:{}", hex_of(&h.finalize()))
    };
    // Files: every prefix of either, labelled by the meet.
    let prefixes: BTreeSet<&String> =
        run.files_read.iter().chain(&run.files_write).chain(&run.files_deny).chain(&task.files_read).chain(&task.files_write).chain(&task.files_deny).collect();
    out.files_read.clear();
    out.files_write.clear();
    out.files_deny.clear();
    for q in prefixes {
        match label_at(run, q).min(label_at(task, q)) {
            Label::Write => out.files_write.push(q.clone()),
            Label::Read => out.files_read.push(q.clone()),
            Label::None => out.files_deny.push(q.clone()),
        }
    }
    for r in task.files_read.iter().filter(|r| run.decide_file(r, super::Access::Read) != super::FileVerdict::Allow) {
        notes.push(format!("files.read {r}: the run may not read it, so neither may the task"));
    }
    for r in task.files_write.iter().filter(|r| run.decide_file(r, super::Access::Write) != super::FileVerdict::Allow) {
        notes.push(format!("files.write {r}: the run may not write it, so neither may the task"));
    }
    // Exec: exact files and "dir/" rules.
    out.exec_allow = meet_all(&run.exec_allow, &task.exec_allow, exec_meet);
    for r in &task.exec_allow {
        if !run.exec_allow.iter().any(|a| exec_meet(a, r).as_deref() == Some(r.as_str())) {
            notes.push(format!("exec.allow {r}: the run does not allow all of it; the task gets what both allow"));
        }
    }
    out.network_connect = meet_all(&run.network_connect, &task.network_connect, net_meet);
    out.network_listen = meet_all(&run.network_listen, &task.network_listen, net_meet);
    for r in &task.network_connect {
        if !run.network_connect.iter().any(|a| net_meet(a, r).as_ref() == Some(r)) {
            notes.push(format!("network.connect {r}: the run does not allow all of it; the task gets what both allow"));
        }
    }
    out.network_names = meet_all(&run.network_names, &task.network_names, name_meet);
    for r in &task.network_names {
        if !run.network_names.iter().any(|a| name_meet(a, r).as_ref() == Some(r)) {
            notes.push(format!("network.connect {r}: the run's name rules do not allow all of it; the task gets what both allow"));
        }
    }
    out.network_unix = meet_all(&run.network_unix, &task.network_unix, unix_meet);
    out.network_families = run.network_families.iter().filter(|f| task.network_families.contains(f)).cloned().collect();
    out.raw_sockets = run.raw_sockets && task.raw_sockets;
    out.devices = run.devices && task.devices;
    for (name, nr) in &task.syscalls_deny {
        if !out.syscalls_deny.iter().any(|(_, n)| n == nr) {
            out.syscalls_deny.push((name.clone(), *nr));
        }
    }
    out.capabilities = run.capabilities.iter().filter(|c| task.capabilities.contains(c)).cloned().collect();
    if task.run_as.is_some() && task.run_as != run.run_as {
        notes.push("process.user: a task runs as its run's user".into());
    }
    if !task.bind_cgroups.is_empty() {
        notes.push("bind.cgroups: a task binds nothing".into());
    }
    out.bind_cgroups.clear();
    out.mode = if run.mode == Mode::Enforce || task.mode == Mode::Enforce { Mode::Enforce } else { Mode::Monitor };
    if run.mode == Mode::Enforce && task.mode == Mode::Monitor {
        notes.push("mode: the run enforces, so does the task".into());
    }
    out.on_violation = severest(run.on_violation, task.on_violation);
    (out, notes)
}

fn severest(a: OnViolation, b: OnViolation) -> OnViolation {
    let rank = |v: OnViolation| match v {
        OnViolation::Deny => 0,
        OnViolation::Freeze => 1,
        OnViolation::Kill => 2,
    };
    if rank(a) >= rank(b) { a } else { b }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every pairwise meet of `a` and `b`, without duplicates, in a stable order.
fn meet_all<T: Clone + PartialEq>(a: &[T], b: &[T], meet: impl Fn(&T, &T) -> Option<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in a {
        for y in b {
            if let Some(m) = meet(x, y) {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
    }
    out
}

/// An exec rule: (the directory whose files strictly below it are allowed, or the exact file).
fn exec_parts(r: &str) -> (bool, &str) {
    match r.strip_suffix('/') {
        Some("") => (true, "/"),
        Some(d) => (true, d),
        None => (false, r),
    }
}

fn exec_meet(a: &String, b: &String) -> Option<String> {
    let ((a_dir, a_p), (b_dir, b_p)) = (exec_parts(a), exec_parts(b));
    match (a_dir, b_dir) {
        (false, false) => (a_p == b_p).then(|| a.clone()),
        (true, false) => paths::strictly_below(a_p, b_p).then(|| b.clone()),
        (false, true) => paths::strictly_below(b_p, a_p).then(|| a.clone()),
        (true, true) => {
            if paths::covers(a_p, b_p) {
                Some(b.clone())
            } else if paths::covers(b_p, a_p) {
                Some(a.clone())
            } else {
                None
            }
        }
    }
}

fn net_meet(a: &NetRuleSpec, b: &NetRuleSpec) -> Option<NetRuleSpec> {
    let net = if a.net.contains(&b.net) {
        b.net
    } else if b.net.contains(&a.net) {
        a.net
    } else {
        return None;
    };
    let (lo, hi) = (a.ports.0.max(b.ports.0), a.ports.1.min(b.ports.1));
    (lo <= hi).then_some(NetRuleSpec { net, ports: (lo, hi) })
}

/// Name rules: the narrower name, on the ports both allow.
fn name_meet(a: &NameRuleSpec, b: &NameRuleSpec) -> Option<NameRuleSpec> {
    let narrower = if a.covers_rule(b) {
        b
    } else if b.covers_rule(a) {
        a
    } else {
        return None;
    };
    let (lo, hi) = (a.ports.0.max(b.ports.0), a.ports.1.min(b.ports.1));
    (lo <= hi).then(|| NameRuleSpec { ports: (lo, hi), ..narrower.clone() })
}

/// `[network] unix` rules: "@name", "/path", "/dir/" (names below it) or "/" (every path).
fn unix_meet(a: &String, b: &String) -> Option<String> {
    if a == b {
        return Some(a.clone());
    }
    if a.starts_with('@') || b.starts_with('@') {
        return None;
    }
    // As sets of names: a rule covers a name (or the names of a narrower rule) when
    // `unix_allows` would let it through.
    let covers = |r: &String, s: &String| {
        if r == "/" {
            return true;
        }
        match (r.strip_suffix('/'), s.strip_suffix('/')) {
            (Some(d), Some(e)) => e == d || e.starts_with(&format!("{d}/")),
            (Some(_), None) => super::contain::unix_allows(std::slice::from_ref(r), s),
            (None, _) => false,
        }
    };
    if covers(a, b) {
        Some(b.clone())
    } else if covers(b, a) {
        Some(a.clone())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DIRS: &[&str] = &["/", "/a", "/a/b", "/a/b/c", "/a/d", "/e", "/e/f"];
    const NAMES: &[&str] = &["/a/x", "/a/b/x", "/a/b/c/x", "/a/d/x", "/e/x", "/e/f/x", "/x", "/a/b", "/e/f"];
    const EXECS: &[&str] = &["/a/", "/a/b/", "/a/b/x", "/e/x", "/", "/e/f/"];
    const UNIX: &[&str] = &["/", "/a/", "/a/b/", "/a/x", "/a/b/x", "@n", "@m"];
    const NETS: &[&str] = &["10.0.0.0/8:1-65535", "10.1.0.0/16:443", "10.1.2.3/32:80-443", "127.0.0.1/32:8000-9000", "[::1]/128:1-100"];

    fn policy(seed: &[u8]) -> Policy {
        let mut text = String::from("name = \"p\"\n[files]\n");
        let pick = |lists: &[&str], bits: u8| -> Vec<String> {
            lists.iter().enumerate().filter(|(i, _)| bits & (1 << (i % 8)) != 0).map(|(_, d)| format!("{d:?}")).collect()
        };
        let (r, w, d) = (pick(DIRS, seed[0]), pick(DIRS, seed[1] & !seed[0]), pick(DIRS, seed[2] & !seed[0] & !seed[1]));
        text += &format!("read = [{}]\nwrite = [{}]\ndeny = [{}]\n", r.join(","), w.join(","), d.join(","));
        text += &format!("[exec]\nallow = [{}]\n", pick(EXECS, seed[3]).join(","));
        text += &format!("[network]\nconnect = [{}]\nunix = [{}]\n", pick(NETS, seed[4]).join(","), pick(UNIX, seed[5]).join(","));
        let checked = super::super::parse(&text, "t.toml");
        checked.policy.unwrap_or_else(|| panic!("{text}\n{:?}", checked.errors))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
        /// The intersection allows exactly what both policies allow, for every access the
        /// evaluator (the kernel's model) judges.
        #[test]
        fn the_intersection_allows_exactly_what_both_allow(a in proptest::collection::vec(any::<u8>(), 6), b in proptest::collection::vec(any::<u8>(), 6)) {
            let (pa, pb) = (policy(&a), policy(&b));
            let (n, _) = narrow(&pa, &pb);
            for p in DIRS.iter().chain(NAMES) {
                for acc in [super::super::Access::Read, super::super::Access::Write, super::super::Access::ReadWrite] {
                    let both = pa.decide_file(p, acc) == super::super::FileVerdict::Allow && pb.decide_file(p, acc) == super::super::FileVerdict::Allow;
                    prop_assert_eq!(n.decide_file(p, acc) == super::super::FileVerdict::Allow, both, "{} {:?}\n{:?}\n{:?}\n{:?}", p, acc, pa, pb, n);
                }
                prop_assert_eq!(n.exec_allowed(p), pa.exec_allowed(p) && pb.exec_allowed(p), "exec {}", p);
                prop_assert_eq!(n.unix_allowed(p), pa.unix_allowed(p) && pb.unix_allowed(p), "unix {}", p);
            }
            for name in ["@n", "@m", "@o"] {
                prop_assert_eq!(n.unix_allowed(name), pa.unix_allowed(name) && pb.unix_allowed(name));
            }
            for addr in ["10.1.2.3", "10.1.9.9", "10.9.9.9", "127.0.0.1", "::1", "192.168.0.1"] {
                for port in [22u16, 80, 100, 443, 8080, 8500] {
                    let ip: std::net::IpAddr = addr.parse().unwrap();
                    prop_assert_eq!(n.connect_allowed(ip, port), pa.connect_allowed(ip, port) && pb.connect_allowed(ip, port), "{}:{}", addr, port);
                }
            }
        }
    }

    #[test]
    fn a_task_rule_the_run_does_not_allow_is_a_noted_no_op() {
        let run = super::super::parse("name = \"run\"\n[files]\nread = [\"/etc\", \"/usr\"]\n", "r.toml").policy.unwrap();
        let task = super::super::parse("name = \"t\"\n[files]\nread = [\"/usr\", \"/root\"]\n", "t.toml").policy.unwrap();
        let (n, notes) = narrow(&run, &task);
        assert_eq!(n.decide_file("/usr/bin/ls", super::super::Access::Read), super::super::FileVerdict::Allow);
        assert_ne!(n.decide_file("/etc/hostname", super::super::Access::Read), super::super::FileVerdict::Allow);
        assert_ne!(n.decide_file("/root/.bashrc", super::super::Access::Read), super::super::FileVerdict::Allow);
        assert!(notes.iter().any(|m| m.contains("/root")), "{notes:?}");
        assert_eq!(n.name, "run~t");
    }
}
