//! Fuzzing the policy parser and compiler (see `crate::fuzzing`): policy files built from a
//! grammar of the real keys with random values (valid, borderline and wrong), mutated corpus
//! files, and arbitrary bytes. Properties: no panic, no hang, allocation linear in the text
//! (compiling a rule costs at most a trie node, about 300 bytes, per byte of its path), every
//! diagnostic positioned inside the text, and for a valid policy: it compiles (for both
//! backends) into a well-formed trie and CIDR list, and rendering it back to TOML gives the
//! same policy and version.
use agent_guard_common::{PATH_MAX, PORT_RANGES_MAX};
use proptest::{collection::vec, prelude::*, sample::select};

use super::*;
use crate::fuzzing::{bounded, bytes, corpus, fuzz, mutated};

/// Bytes a parse plus compile may allocate per byte of text, and in all.
const PER_BYTE: u64 = 2048;
const FIXED: u64 = 1 << 20;

/// A valid policy back as TOML (lists in order, keys in the order of the format).
fn render(p: &Policy) -> String {
    let list = |v: Vec<String>| {
        let items: Vec<String> = v.into_iter().map(|s| toml::Value::String(s).to_string()).collect();
        format!("[{}]", items.join(", "))
    };
    format!(
        "name = {}\nmode = \"{}\"\non_violation = \"{}\"\n[files]\nread = {}\nwrite = {}\ndeny = {}\n[exec]\nallow = {}\n\
         [network]\nconnect = {}\nraw_sockets = {}\n[syscalls]\ndeny = {}\n[bind]\ncgroups = {}\n",
        toml::Value::String(p.name.clone()),
        p.mode,
        p.on_violation,
        list(p.files_read.clone()),
        list(p.files_write.clone()),
        list(p.files_deny.clone()),
        list(p.exec_allow.clone()),
        list(p.network_connect.iter().map(ToString::to_string).chain(p.network_names.iter().map(ToString::to_string)).collect()),
        p.raw_sockets,
        list(p.syscalls_deny.iter().map(|(n, _)| n.clone()).collect()),
        list(p.bind_cgroups.clone()),
    )
}

/// Checks one policy text; see the module.
fn property(text: &str) -> Result<(), String> {
    let checked = bounded("parse", text.len(), PER_BYTE, FIXED, || parse(text, "fuzz.toml"))?;
    let lines = text.lines().count() + 1;
    for d in &checked.errors {
        if d.line > lines || d.message.is_empty() {
            return Err(format!("diagnostic outside the text ({lines} lines) or empty: {d:?}"));
        }
    }
    let Some(p) = checked.policy else {
        return if checked.errors.is_empty() { Err("no policy and no error".into()) } else { Ok(()) };
    };
    if !checked.errors.is_empty() {
        return Err(format!("a policy and errors: {:?}", checked.errors));
    }
    for lsm in [false, true] {
        let c = bounded("compile", text.len(), PER_BYTE, FIXED, || p.compile_for(7, lsm))?;
        for (i, (k, n)) in c.file_nodes.iter().enumerate() {
            if n.id as usize != i + 1 || k.parent >= n.id || k.ruleset != 7 {
                return Err(format!("trie entry {i} out of order: parent {} id {}", k.parent, n.id));
            }
        }
        if c.net_rules.windows(2).any(|w| (w[0].1.addr, w[0].0) > (w[1].1.addr, w[1].0)) {
            return Err("net rules not sorted".into());
        }
        if c.net_rules.iter().any(|(len, _, r)| *len > 32 + 128 || r.count as usize > PORT_RANGES_MAX) {
            return Err("net rule out of bounds".into());
        }
    }
    let again = render(&p);
    let back = parse(&again, "fuzz.toml");
    match back.policy {
        Some(mut q) => {
            q.source = p.source.clone();
            if q != p {
                return Err(format!("round trip changed the policy:\n{p:?}\n{q:?}\n{again}"));
            }
        }
        None => return Err(format!("round trip refused: {:?}\n{again}", back.errors)),
    }
    Ok(())
}

// ---- the grammar ----------------------------------------------------------------------------

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(&["usr", "lib", "etc", "bin", "tmp", "workspace", ".env", "a", "b", "x y", "ü", "*"][..]).prop_map(str::to_string),
        1 => select(&[".", "..", ""][..]).prop_map(str::to_string),
        1 => (250usize..260).prop_map(|n| "n".repeat(n)),
        1 => "[^/\u{0}]{1,8}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => (vec(component(), 0..5), any::<bool>()).prop_map(|(c, slash)| {
            let mut p = format!("/{}", c.join("/"));
            if slash && p != "/" {
                p.push('/');
            }
            p
        }),
        1 => Just("/".to_string()),
        1 => (60usize..70).prop_map(|n| "/d".repeat(n)),
        1 => (PATH_MAX - 4..PATH_MAX + 4).prop_map(|n| format!("/{}", "p".repeat(n))),
        1 => "[a-z/.]{0,12}",
        1 => Just("/a\u{0}b".to_string()),
    ]
}

fn connect() -> impl Strategy<Value = String> {
    let v4 = (any::<[u8; 4]>(), 0u8..=34).prop_map(|(a, l)| format!("{}.{}.{}.{}/{l}", a[0], a[1], a[2], a[3]));
    let v6 = prop_oneof![
        Just("[::1]/128".to_string()),
        Just("[::]/0".to_string()),
        Just("[::ffff:10.0.0.0]/104".to_string()),
        Just("[2001:db8::]/32".to_string()),
        (any::<[u16; 8]>(), 0u8..=130).prop_map(|(a, l)| format!("[{}]/{l}", std::net::Ipv6Addr::from(a))),
    ];
    let net = prop_oneof![
        4 => select(&["127.0.0.1/32", "10.0.0.0/8", "0.0.0.0/0", "10.0.0.1", "192.0.2.0/24"][..]).prop_map(str::to_string),
        2 => v4,
        2 => v6,
        1 => "[0-9a-f:./\\[\\]]{0,20}",
    ];
    let port = prop_oneof![
        4 => (1u32..=65535).prop_map(|p| p.to_string()),
        3 => (0u32..=65536, 0u32..=65536).prop_map(|(a, b)| format!("{a}-{b}")),
        1 => select(&["0", "65536", "", "-", "1-", "x", "99999999999999999999"][..]).prop_map(str::to_string),
    ];
    prop_oneof![
        10 => (net, port).prop_map(|(n, p)| format!("{n}:{p}")),
        1 => "[ -~]{0,16}",
    ]
}

fn syscall() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(&["ptrace", "bpf", "mount", "unshare", "io_uring_setup", "openat", "read", "kexec_load"][..]).prop_map(str::to_string),
        2 => (0u32..600).prop_map(|n| n.to_string()),
        1 => select(&["-1", "4294967296", "", "Ptrace", "sys_ptrace"][..]).prop_map(str::to_string),
    ]
}

fn glob() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(&["agents.slice/*.scope", "a/b", "*", "{a,b}/c", "a/[bc]"][..]).prop_map(str::to_string),
        1 => select(&["", "/abs", "a/../b", "a//b", "[", "{a", "a/./b", "a\u{0}"][..]).prop_map(str::to_string),
        1 => "[a-z*?/\\[\\]{},.]{0,12}",
    ]
}

/// A TOML value of the wrong type, for any key.
fn wrong() -> impl Strategy<Value = String> {
    select(&["1", "true", "1.5", "{}", "[1, 2]", "[[\"/a\"]]", "1979-05-27T07:32:00Z", "\"\"", "[\"/a\", 1]"][..])
        .prop_map(str::to_string)
}

fn quoted(s: String) -> String {
    toml::Value::String(s).to_string()
}

/// `key = value` with a list of `item`s (sometimes duplicated, sometimes too long), or a
/// value of the wrong type.
fn list_line(key: &'static str, item: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => vec(item.clone(), 0..6).prop_map(move |v| {
            let v: Vec<String> = v.into_iter().map(quoted).collect();
            format!("{key} = [{}]", v.join(", "))
        }),
        1 => item.clone().prop_map(move |i| format!("{key} = [{q}, {q}]", q = quoted(i))),
        1 => (2usize..40).prop_map(move |n| {
            let v: Vec<String> = (0..n).map(|i| quoted(format!("10.0.{i}.0/24:{}", 1000 + i))).collect();
            format!("{key} = [{}]", v.join(", "))
        }),
        1 => wrong().prop_map(move |w| format!("{key} = {w}")),
    ]
}

fn keyword_line(key: &'static str, good: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(good).prop_map(move |v| format!("{key} = \"{v}\"")),
        1 => "[ -~]{0,10}".prop_map(move |v| format!("{key} = {}", quoted(v))),
        1 => wrong().prop_map(move |w| format!("{key} = {w}")),
    ]
}

/// A table: its header and some of its lines, in random order.
fn table(header: &'static str, lines: Vec<BoxedStrategy<String>>) -> impl Strategy<Value = String> {
    let n = lines.len();
    (lines, vec(any::<bool>(), n), Just(header)).prop_map(|(lines, keep, header)| {
        let body: Vec<String> = lines.into_iter().zip(keep).filter(|(_, k)| *k).map(|(l, _)| l).collect();
        format!("[{header}]\n{}\n", body.join("\n"))
    })
}

/// A policy file from the grammar of the real keys.
fn policy_text() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        6 => "[A-Za-z0-9._-]{1,20}".prop_map(|n| format!("name = {}", quoted(n))),
        1 => "[ -~]{0,70}".prop_map(|n| format!("name = {}", quoted(n))),
        1 => wrong().prop_map(|w| format!("name = {w}")),
        1 => Just(String::new()),
    ];
    let head = (
        name,
        prop::option::of(keyword_line("mode", &["enforce", "monitor"])),
        prop::option::of(keyword_line("on_violation", &["deny", "kill", "freeze"])),
    )
        .prop_map(|(n, m, o)| [Some(n), m, o].into_iter().flatten().collect::<Vec<_>>().join("\n") + "\n");
    let files = table(
        "files",
        vec![
            list_line("read", path().boxed()).boxed(),
            list_line("write", path().boxed()).boxed(),
            list_line("deny", path().boxed()).boxed(),
        ],
    );
    let exec = table("exec", vec![list_line("allow", path().boxed()).boxed()]);
    let raw = prop_oneof![select(&["true", "false"][..]).prop_map(str::to_string), wrong()]
        .prop_map(|v| format!("raw_sockets = {v}"));
    let network = table("network", vec![list_line("connect", connect().boxed()).boxed(), raw.boxed()]);
    let syscalls = table("syscalls", vec![list_line("deny", syscall().boxed()).boxed()]);
    let bind = table("bind", vec![list_line("cgroups", glob().boxed()).boxed()]);
    let extra = prop_oneof![
        8 => Just(String::new()),
        1 => Just("unknown = 1\n".to_string()),
        1 => Just("[files.sub]\nx = 1\n".to_string()),
        1 => Just("# a comment\n".to_string()),
        1 => Just("[files]\n".to_string()),
    ];
    (
        head,
        prop::option::of(files),
        prop::option::of(exec),
        prop::option::of(network),
        prop::option::of(syscalls),
        prop::option::of(bind),
        extra,
        any::<u64>(),
    )
        .prop_map(|(head, f, e, n, s, b, extra, order)| {
            let mut tables: Vec<String> = [f, e, n, s, b].into_iter().flatten().collect();
            // The tables in a random order (TOML does not care; the parser must not either).
            let len = tables.len().max(1);
            tables.rotate_left((order as usize) % len);
            format!("{head}{}{extra}", tables.concat())
        })
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn fuzz_policy_grammar() {
    let seeds: Vec<String> = corpus("policy").iter().map(|b| text_of(b)).collect();
    let s = fuzz("policy", &seeds, policy_text(), |t| property(t));
    assert!(s.cases > seeds.len() as u64, "{s:?}");
}

#[test]
fn fuzz_policy_bytes() {
    let seeds = corpus("policy");
    let strategy = prop_oneof![4 => mutated(seeds.clone()), 1 => bytes(2048)];
    fuzz("policy-bytes", &seeds, strategy, |b| property(&text_of(b)));
}

/// Findings, kept as regression tests.
#[test]
fn fuzz_findings_policy() {
    // Every corpus policy renders back to itself.
    for text in corpus("policy") {
        property(&text_of(&text)).unwrap();
    }
    // toml refuses a control character in a comment with an empty message: the diagnostic
    // said nothing ("f:2:12: ").
    let c = parse("# x\n# it writes\u{7} no\nname = \"r\"\n", "f");
    assert_eq!((c.errors[0].line, c.errors[0].column), (2, 12));
    assert!(c.errors[0].message.contains("control character '\\u{7}'"), "{:?}", c.errors);
    // An unknown syscall's "did you mean" compared it with every name of the table, a row of
    // the edit-distance matrix allocated per character: 1.6 MB for three short words, and
    // seconds of CPU (and gigabytes) for a long one in a policy sent to the daemon.
    property("name = \"a\"\n[syscalls]\ndeny = [\"10.0.0.0/24:1000\", \"10.0.1.0/24:1001\"]\n").unwrap();
}

/// One huge value in each slot of the format (4 MiB is what a control request may carry):
/// refused or accepted in linear time and space.
#[test]
fn huge_values_are_linear() {
    let big = "x".repeat(1 << 20);
    let slots = [
        format!("name = \"{big}\""),
        format!("name = \"a\"\nmode = \"{big}\""),
        format!("name = \"a\"\n[files]\nread = [\"/{big}\"]"),
        format!("name = \"a\"\n[files]\nread = [\"{}\"]", "/a".repeat(1 << 19)),
        format!("name = \"a\"\n[exec]\nallow = [\"{big}\"]"),
        format!("name = \"a\"\n[network]\nconnect = [\"{big}\"]"),
        format!("name = \"a\"\n[network]\nconnect = [\"10.0.0.0/8:{big}\"]"),
        format!("name = \"a\"\n[syscalls]\ndeny = [\"{big}\"]"),
        format!("name = \"a\"\n[bind]\ncgroups = [\"{big}\"]"),
        format!("name = \"a\"\n[bind]\ncgroups = [\"{}\"]", "{a,".repeat(1 << 18)),
        format!("name = \"a\"\n# {big}"),
        format!("name = \"a\"\n[files]\nread = [{}]", (0..5000).map(|i| format!("\"/p{i}\"")).collect::<Vec<_>>().join(",")),
    ];
    for text in &slots {
        let t = std::time::Instant::now();
        property(text).unwrap_or_else(|e| panic!("{}...: {e}", &text[..60.min(text.len())]));
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{}...: {:?}", &text[..60], t.elapsed());
    }
}

