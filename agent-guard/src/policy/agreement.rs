//! The userspace evaluator ([`Policy::decide_file`], [`Policy::exec_allowed`],
//! [`Policy::connect_allowed`], [`Policy::listen_allowed`], [`Policy::unix_allowed`]) against the kernel's: random policies are compiled into the
//! kernel's map entries and every random path (destination) is judged both by the evaluator
//! and by a simulation of the kernel's lookups in those entries (agent-guard-ebpf/src/policy.rs:
//! `match_path`, `match_step`, `file_decision`, `exec_decision`; `net_allowed` and
//! `listen_allowed`, a longest-prefix match in a CIDR trie; unix.rs's `allowed`, a prefix
//! match in the unix-name trie). They must agree on every case.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use agent_guard_common::{file_rule, FileNode, FileNodeKey, NetKey, NetRule, NAME_BYTES, PATH_DEPTH_MAX, PORT_RANGES_MAX};
use proptest::{collection::vec, prelude::*, test_runner::Config};

use super::*;

/// The kernel's view of one compiled rule set: AG_FILE_NODES and the header's root flags.
struct Kernel {
    ruleset: u32,
    root_flags: u32,
    /// Keyed by the key's bytes, as the kernel's hash map is.
    nodes: HashMap<(u32, u32, [u8; NAME_BYTES]), FileNode>,
}

/// `PathMatch` of the kernel, plus the path of the node that last set the access bits (the
/// kernel does not report it; the evaluator's `matched` must be that prefix).
#[derive(Debug, PartialEq, Eq)]
struct Walk {
    access: u32,
    exec: bool,
    decided_at: Option<String>,
}

impl Kernel {
    fn new(policy: &Policy, ruleset: u32) -> Self {
        let c = policy.compile(ruleset);
        let nodes: HashMap<_, _> =
            c.file_nodes.iter().map(|(k, v): &(FileNodeKey, FileNode)| ((k.ruleset, k.parent, k.name), *v)).collect();
        assert_eq!(nodes.len(), c.file_nodes.len(), "duplicate trie keys");
        Kernel { ruleset, root_flags: c.header.root_flags, nodes }
    }

    /// `match_path`: from node 0 ("/", flags in the header), one lookup per component, root
    /// first, stopping at the first component the trie does not have; the access bits of the
    /// deepest node that has any replace the ones before; an exec directory rule counts for
    /// components strictly below it, an exec file rule for the last component only.
    fn walk(&self, path: &str) -> Walk {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let n = comps.len();
        assert!(n <= PATH_DEPTH_MAX as usize, "the generator keeps paths within the kernel's depth");
        let mut w = Walk {
            access: self.root_flags & file_rule::ACCESS_MASK,
            // Not for "/" itself: the kernel had that wrong until this test found it.
            exec: self.root_flags & file_rule::EXEC_DIR != 0 && n > 0,
            decided_at: (self.root_flags & file_rule::ACCESS_MASK != 0).then(|| "/".to_string()),
        };
        let mut node = 0;
        for (i, c) in comps.iter().enumerate() {
            if c.len() >= NAME_BYTES {
                break; // no rule has such a component
            }
            let mut name = [0u8; NAME_BYTES];
            name[..c.len()].copy_from_slice(c.as_bytes());
            let Some(found) = self.nodes.get(&(self.ruleset, node, name)) else { break };
            node = found.id;
            let depth = i + 1;
            if found.flags & file_rule::ACCESS_MASK != 0 {
                w.access = found.flags & file_rule::ACCESS_MASK;
                w.decided_at = Some(format!("/{}", comps[..depth].join("/")));
            }
            if found.flags & file_rule::EXEC_DIR != 0 && depth < n {
                w.exec = true;
            }
            if found.flags & file_rule::EXEC_FILE != 0 && depth == n {
                w.exec = true;
            }
        }
        w
    }

    /// `file_decision` for an access.
    fn decide_file(&self, path: &str, access: Access) -> FileVerdict {
        let w = self.walk(path);
        let (read, write) = access.read_write();
        let rule = if w.access & file_rule::DENY != 0 {
            "files.deny"
        } else if write && w.access & file_rule::WRITE == 0 {
            "files.write"
        } else if read && w.access & (file_rule::READ | file_rule::WRITE) == 0 {
            "files.read"
        } else {
            return FileVerdict::Allow;
        };
        FileVerdict::Deny { rule, matched: w.decided_at }
    }
}

/// Components that overlap as prefixes do on a real system ("usr" and "usrx", "a" and "a.b").
const ALPHABET: &[&str] = &["a", "b", "usr", "usrx", "a.b", "bin"];

fn component() -> impl Strategy<Value = String> {
    proptest::sample::select(ALPHABET).prop_map(str::to_string)
}

/// A normalised absolute path of `min..=max` components ("/" for none).
fn path(min: usize, max: usize) -> impl Strategy<Value = String> {
    vec(component(), min..=max).prop_map(|c| format!("/{}", c.join("/")))
}

#[derive(Debug, Clone)]
struct Rules {
    read: BTreeSet<String>,
    write: BTreeSet<String>,
    deny: BTreeSet<String>,
    /// Exact files and "dir/" rules ("/" is the root directory rule).
    exec: BTreeSet<String>,
}

fn rules() -> impl Strategy<Value = Rules> {
    let list = |max| proptest::collection::btree_set(path(0, 3), 0..=max);
    let exec_rule = (path(0, 3), any::<bool>())
        .prop_map(|(p, dir)| if dir && p != "/" { format!("{p}/") } else { p });
    (list(4), list(3), list(3), proptest::collection::btree_set(exec_rule, 0..=3))
        .prop_map(|(read, write, deny, exec)| Rules { read, write, deny, exec })
}

fn policy_text(r: &Rules) -> String {
    let q = |s: &BTreeSet<String>| s.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ");
    format!(
        "name = \"prop\"\n[files]\nread = [{}]\nwrite = [{}]\ndeny = [{}]\n[exec]\nallow = [{}]\n",
        q(&r.read),
        q(&r.write),
        q(&r.deny),
        q(&r.exec)
    )
}

/// Paths to judge: random ones, every rule path, a component below and beside each rule.
fn probes(r: &Rules, random: Vec<String>, extra: &str) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = random.into_iter().collect();
    for p in r.read.iter().chain(&r.write).chain(&r.deny).chain(&r.exec) {
        let p = p.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(p);
        out.insert(p.to_string());
        out.insert(if p == "/" { format!("/{extra}") } else { format!("{p}/{extra}") });
        out.insert(format!("{p}x")); // "/usr" vs "/usrx": never covered by "/usr"
    }
    out.insert("/".into());
    out
}

/// Judges every probe both ways; the first disagreement, if any.
fn disagreement(r: &Rules, random: Vec<String>, extra: &str) -> Result<usize, String> {
    let text = policy_text(r);
    let checked = parse(&text, "prop.toml");
    let policy = checked.policy.ok_or_else(|| format!("{text}\n{:?}", checked.errors))?;
    let kernel = Kernel::new(&policy, 7);
    let mut judged = 0;
    for p in probes(r, random, extra) {
        for access in [Access::Read, Access::Write, Access::ReadWrite] {
            let (user, kern) = (policy.decide_file(&p, access), kernel.decide_file(&p, access));
            if user != kern {
                return Err(format!("{text}{p} {access:?}: evaluator {user:?}, kernel {kern:?}"));
            }
        }
        let (user, kern) = (policy.exec_allowed(&p), kernel.walk(&p).exec);
        if user != kern {
            return Err(format!("{text}exec {p}: evaluator {user}, kernel {kern}"));
        }
        judged += 1;
    }
    Ok(judged)
}

const CASES: u32 = 2000;

#[test]
fn the_evaluator_agrees_with_the_kernels_trie_walk() {
    let mut runner = proptest::test_runner::TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    let start = std::time::Instant::now();
    let judged = std::cell::Cell::new(0usize);
    let strategy = (rules(), vec(path(0, 5), 0..8), component());
    runner
        .run(&strategy, |(r, random, extra)| {
            judged.set(judged.get() + disagreement(&r, random, &extra).map_err(TestCaseError::fail)?);
            Ok(())
        })
        .unwrap();
    eprintln!("{CASES} policies, {} paths judged both ways in {:?}", judged.get(), start.elapsed());
}

/// Cases the property test found or that its generator reaches only by chance.
#[test]
fn regressions() {
    let r = |read: &[&str], write: &[&str], deny: &[&str], exec: &[&str]| {
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect();
        Rules { read: s(read), write: s(write), deny: s(deny), exec: s(exec) }
    };
    let cases = [
        // The root as a rule of every kind, and "/" itself judged: the property test found
        // the kernel allowing the exec of "/" itself under an exec rule "/" (a directory rule
        // covers only what is strictly below it).
        r(&["/"], &[], &["/"], &["/"]),
        r(&["/a"], &["/"], &["/a/b"], &["/a/"]),
        // Prefixes that are not on a component boundary.
        r(&["/usr"], &["/usrx/a"], &[], &["/usr/bin/", "/usrx"]),
        // A read rule inside a write tree inside a deny tree, and the same path in every list.
        r(&["/a/b/a", "/b"], &["/a/b", "/b"], &["/a", "/b"], &["/a/b/a", "/a/b/"]),
    ];
    let random = ["/", "/a", "/a/b", "/a/b/a/b", "/usr/bin", "/usr/bin/a", "/usrx/a/b", "/b/usr"];
    for case in &cases {
        disagreement(case, random.iter().map(|p| p.to_string()).collect(), "bin").unwrap();
    }
}

/// `net_allowed` over a rule set's AG_NET_RULES entries: the longest prefix (rule-set bits
/// then address bits) that matches the key decides, with its port ranges.
fn kernel_connect(entries: &[(u32, NetKey, NetRule)], ruleset: u32, addr: IpAddr, port: u16) -> bool {
    let addr = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(), // an IPv4-mapped one is the same key as the IPv4 address
    };
    let bits = |b: &[u8; 20], i: u32| b[(i / 8) as usize] >> (7 - i % 8) & 1;
    let mut key = [0u8; 20];
    key[..4].copy_from_slice(&ruleset.to_be_bytes());
    key[4..].copy_from_slice(&addr);
    let best = entries
        .iter()
        .filter(|(len, k, _)| {
            let mut data = [0u8; 20];
            data[..4].copy_from_slice(&k.ruleset_be);
            data[4..].copy_from_slice(&k.addr);
            (0..*len).all(|i| bits(&data, i) == bits(&key, i))
        })
        .max_by_key(|(len, _, _)| *len);
    let Some((_, _, rule)) = best else { return false };
    let n = (rule.count as usize).min(PORT_RANGES_MAX);
    rule.ranges[..n].iter().any(|r| r.lo <= port && port <= r.hi)
}

/// Nested and overlapping CIDRs of both families, IPv6 ones that cover the IPv4-mapped range.
const CIDRS: &[&str] = &[
    "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "0.0.0.0/0", "127.0.0.1/32",
    "[::]/0", "[::]/80", "[::1]/128", "[2001:db8::]/32", "[2001:db8:1::]/48", "[::ffff:10.1.0.0]/112",
];
const PORTS: &[&str] = &["22", "80", "443", "1-1024", "8000-8080", "1-65535", "8080"];
const ADDRS: &[&str] = &[
    "10.1.2.3", "10.1.2.4", "10.1.3.1", "10.2.0.1", "11.0.0.1", "127.0.0.1", "1.2.3.4", "::1", "::2",
    "2001:db8:1::5", "2001:db8:2::1", "2001:db9::1", "::ffff:10.1.2.3", "::ffff:1.2.3.4", "::a01:203",
];
const DEST_PORTS: &[u16] = &[1, 22, 79, 80, 81, 443, 1024, 1025, 7999, 8000, 8080, 8081, 65535];

#[test]
fn the_evaluator_agrees_with_the_kernels_cidr_trie() {
    let rule = (proptest::sample::select(CIDRS), proptest::sample::select(PORTS)).prop_map(|(c, p)| format!("{c}:{p}"));
    let mut runner = proptest::test_runner::TestRunner::new(Config { cases: CASES / 4, failure_persistence: None, ..Config::default() });
    let (start, judged) = (std::time::Instant::now(), std::cell::Cell::new(0));
    runner
        .run(&proptest::collection::btree_set(rule, 0..=6), |rules| {
            let q = rules.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ");
            let text = format!("name = \"net\"\n[network]\nconnect = [{q}]\n");
            let Some(policy) = parse(&text, "net.toml").policy else { return Ok(()) }; // e.g. duplicates once normalised
            let entries = policy.compile(9).net_rules;
            judged.set(judged.get() + 1);
            for addr in ADDRS.iter().map(|a| a.parse::<IpAddr>().unwrap()) {
                for &port in DEST_PORTS {
                    let (user, kern) = (policy.connect_allowed(addr, port), kernel_connect(&entries, 9, addr, port));
                    prop_assert_eq!(user, kern, "{}{}:{}", text, addr, port);
                }
            }
            Ok(())
        })
        .unwrap();
    eprintln!("{} network policies, {} destinations each, judged both ways in {:?}", judged.get(), ADDRS.len() * DEST_PORTS.len(), start.elapsed());
}

#[test]
fn listen_rules_agree_with_the_kernels_cidr_trie() {
    // The same CIDR compiler as connect, in its own trie; connect rules beside them must not
    // leak into it.
    let rule = (proptest::sample::select(CIDRS), proptest::sample::select(PORTS)).prop_map(|(c, p)| format!("{c}:{p}"));
    let mut runner = proptest::test_runner::TestRunner::new(Config { cases: CASES / 8, failure_persistence: None, ..Config::default() });
    runner
        .run(&(proptest::collection::btree_set(rule.clone(), 0..=5), proptest::collection::btree_set(rule, 0..=3)), |(listen, connect)| {
            let q = |s: &BTreeSet<String>| s.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ");
            let text = format!("name = \"net\"\n[network]\nconnect = [{}]\nlisten = [{}]\n", q(&connect), q(&listen));
            let Some(policy) = parse(&text, "net.toml").policy else { return Ok(()) };
            let entries = policy.compile(9).listen_rules;
            for addr in ADDRS.iter().map(|a| a.parse::<IpAddr>().unwrap()) {
                for &port in DEST_PORTS {
                    let (user, kern) = (policy.listen_allowed(addr, port), kernel_connect(&entries, 9, addr, port));
                    prop_assert_eq!(user, kern, "{}{}:{}", text, addr, port);
                }
            }
            Ok(())
        })
        .unwrap();
}

/// unix.rs's `allowed` over a rule set's AG_UNIX_RULES entries: the name's key (a pathname
/// with its terminating zero, an abstract name with its length) matches an entry whose
/// prefix it extends; a pathname with a `..` component matches nothing.
fn kernel_unix(entries: &[(u32, agent_guard_common::UnixKey)], ruleset: u32, name: &str) -> bool {
    use agent_guard_common::{UNIX_ABSTRACT, UNIX_PATHNAME};
    let bytes = |k: &agent_guard_common::UnixKey| {
        let mut b = vec![0u8; 6 + k.path.len()];
        b[..4].copy_from_slice(&k.ruleset_be);
        (b[4], b[5]) = (k.kind, k.len);
        b[6..].copy_from_slice(&k.path);
        b
    };
    let mut key = agent_guard_common::UnixKey { ruleset_be: ruleset.to_be_bytes(), kind: UNIX_PATHNAME, len: 0, path: [0; agent_guard_common::UNIX_PATH_BYTES] };
    let bits = match name.strip_prefix('@') {
        Some(n) => {
            (key.kind, key.len) = (UNIX_ABSTRACT, n.len() as u8);
            key.path[..n.len()].copy_from_slice(n.as_bytes());
            48 + 8 * n.len() as u32
        }
        None => {
            let b = name.as_bytes();
            let climbs = (0..b.len()).any(|i| {
                b[i..].starts_with(b"..") && (i == 0 || b[i - 1] == b'/') && (i + 2 == b.len() || b[i + 2] == b'/')
            });
            if climbs {
                return false;
            }
            key.path[..b.len()].copy_from_slice(b);
            48 + 8 * (b.len() as u32 + 1)
        }
    };
    let k = bytes(&key);
    let bit = |b: &[u8], i: u32| b[(i / 8) as usize] >> (7 - i % 8) & 1;
    entries.iter().any(|(len, e)| *len <= bits && (0..*len).all(|i| bit(&bytes(e), i) == bit(&k, i)))
}

#[test]
fn unix_rules_agree_with_the_kernels_trie() {
    let comp = proptest::sample::select(&["a", "b", "ab", "..", "."][..]);
    let path = vec(comp, 1..=4).prop_map(|c| format!("/{}", c.join("/")));
    let rule = prop_oneof![
        path.clone(),
        path.clone().prop_map(|p| format!("{p}/")),
        proptest::sample::select(&["@a", "@ab", "@b", "/"][..]).prop_map(str::to_string),
    ];
    let name = prop_oneof![path.clone(), path.prop_map(|p| format!("{p}/x")), proptest::sample::select(&["@a", "@ab", "@abc", "@"][..]).prop_map(str::to_string)];
    let mut runner = proptest::test_runner::TestRunner::new(Config { cases: CASES / 4, failure_persistence: None, ..Config::default() });
    runner
        .run(&(proptest::collection::btree_set(rule, 0..=5), vec(name, 1..=20)), |(rules, names)| {
            let q = rules.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ");
            let text = format!("name = \"unix\"\n[network]\nunix = [{q}]\n");
            let Some(policy) = parse(&text, "unix.toml").policy else { return Ok(()) }; // a rule with `..`
            let entries = policy.compile(9).unix_rules;
            for n in names.iter().filter(|n| n.as_str() != "@") {
                prop_assert_eq!(policy.unix_allowed(n), kernel_unix(&entries, 9, n), "{}{}", text, n);
            }
            Ok(())
        })
        .unwrap();
}
