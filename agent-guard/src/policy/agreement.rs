//! The userspace evaluator ([`Policy::decide_file`], [`Policy::exec_allowed`]) against the
//! kernel's: random policies are compiled into the kernel's map entries and every random path
//! is judged both by the evaluator and by a simulation of the kernel's trie walk over those
//! entries (agent-guard-ebpf/src/policy.rs: `match_path`, `match_step`, `file_decision`,
//! `exec_decision`). They must agree on every case.
use std::collections::{BTreeSet, HashMap};

use agent_guard_common::{file_rule, FileNode, FileNodeKey, NAME_BYTES, PATH_DEPTH_MAX};
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
