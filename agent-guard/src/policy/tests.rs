use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_guard_common::{action, file_rule, mode, RS_RAW_SOCKETS};

use super::*;
use agent_guard_common::RULES_MAX;

fn ok(text: &str) -> Policy {
    let c = parse(text, "p.toml");
    assert!(c.errors.is_empty(), "unexpected errors: {:#?}", c.errors);
    c.policy.expect("a policy when there are no errors")
}

fn errors(text: &str) -> Vec<Diagnostic> {
    let c = parse(text, "p.toml");
    assert!(c.policy.is_none() && !c.errors.is_empty(), "expected errors for {text:?}");
    c.errors
}

fn files(read: &[&str], write: &[&str], deny: &[&str]) -> Policy {
    let q = |v: &[&str]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    ok(&format!("name = \"t\"\n[files]\nread = [{}]\nwrite = [{}]\ndeny = [{}]\n", q(read), q(write), q(deny)))
}

fn connect(rules: &[&str]) -> Policy {
    let q = rules.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    ok(&format!("name = \"t\"\n[network]\nconnect = [{q}]\n"))
}

fn denied(rule: &'static str, matched: Option<&str>) -> FileVerdict {
    FileVerdict::Deny { rule, matched: matched.map(str::to_string) }
}

const EXAMPLE: &str = r#"
name = "coding-agent"
mode = "enforce"
on_violation = "deny"
[files]
read  = ["/usr", "/lib", "/etc/ssl", "/workspace"]
write = ["/workspace", "/tmp"]
deny  = ["/workspace/.env"]
[exec]
allow = ["/usr/bin/git", "/usr/bin/python3", "/usr/local/bin/"]
[network]
connect = ["127.0.0.1/32:8080", "10.0.0.0/8:443", "[::1]/128:1-65535"]
raw_sockets = false
[syscalls]
deny = ["ptrace", "mount", "bpf", "unshare"]
[bind]
cgroups = ["agents.slice/*.scope"]
"#;

#[test]
fn the_documented_example_is_valid_and_warning_free() {
    let c = parse(EXAMPLE, "p.toml");
    assert!(c.errors.is_empty(), "{:#?}", c.errors);
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let p = c.policy.unwrap();
    assert_eq!(p.name, "coding-agent");
    assert_eq!((p.mode, p.on_violation), (Mode::Enforce, OnViolation::Deny));
    assert_eq!(p.exec_allow, ["/usr/bin/git", "/usr/bin/python3", "/usr/local/bin/"]);
    assert_eq!(p.syscalls_deny[0], ("ptrace".to_string(), 101));
    assert_eq!(p.source, "p.toml");
    assert!(p.version.starts_with("sha256:") && p.version.len() == 7 + 64, "{}", p.version);
    assert_eq!(p.decide_file("/workspace/.env", Access::Read), denied("files.deny", Some("/workspace/.env")));
    assert_eq!(p.decide_file("/workspace/src/a.rs", Access::ReadWrite), FileVerdict::Allow);
    assert_eq!(p.decide_file("/etc/passwd", Access::Read), denied("files.read", None));
}

#[test]
fn defaults_and_minimal_policy() {
    let p = ok("name = \"min\"");
    assert_eq!((p.mode, p.on_violation, p.raw_sockets), (Mode::Enforce, OnViolation::Deny, false));
    assert_eq!(p.decide_file("/", Access::Read), denied("files.read", None));
    assert_eq!(p.decide_file("/tmp/x", Access::Write), denied("files.write", None));
    assert!(!p.exec_allowed("/bin/true"));
    assert!(!p.connect_allowed(IpAddr::V4(Ipv4Addr::LOCALHOST), 80));
}

#[test]
fn file_rules_match_on_directory_boundaries() {
    let p = files(&["/usr"], &[], &[]);
    for yes in ["/usr", "/usr/bin/x", "/usr/"] {
        assert_eq!(p.decide_file(yes, Access::Read), FileVerdict::Allow, "{yes}");
    }
    for no in ["/usrx", "/usrx/bin", "/us", "/", "/lib/usr"] {
        assert_eq!(p.decide_file(no, Access::Read), denied("files.read", None), "{no}");
    }
    // Trailing slashes are ignored in rules; "/" matches everything.
    let p = files(&["/usr/"], &[], &[]);
    assert_eq!(p.files_read, ["/usr"]);
    assert_eq!(p.decide_file("/usr/lib", Access::Read), FileVerdict::Allow);
    assert_eq!(p.decide_file("/usrx", Access::Read), denied("files.read", None));
    let p = files(&["/"], &[], &[]);
    assert_eq!(p.decide_file("/anything/at/all", Access::Read), FileVerdict::Allow);
    assert_eq!(p.decide_file("/", Access::Read), FileVerdict::Allow);
}

#[test]
fn longest_match_decides_and_deny_wins_ties() {
    // write implies read; a longer read rule makes a subtree read-only.
    let p = files(&["/w/ro"], &["/w"], &[]);
    assert_eq!(p.decide_file("/w/a", Access::Read), FileVerdict::Allow);
    assert_eq!(p.decide_file("/w/a", Access::ReadWrite), FileVerdict::Allow);
    assert_eq!(p.decide_file("/w/ro/a", Access::Read), FileVerdict::Allow);
    assert_eq!(p.decide_file("/w/ro/a", Access::Write), denied("files.write", Some("/w/ro")));
    assert_eq!(p.decide_file("/w/rox", Access::Write), FileVerdict::Allow);

    // Deny at the same prefix as an allow: deny wins.
    let p = files(&["/a"], &["/a"], &["/a"]);
    assert_eq!(p.decide_file("/a/b", Access::Read), denied("files.deny", Some("/a")));

    // A longer allow inside a deny re-opens it; deny inside allow closes.
    let p = files(&["/", "/secret/public"], &[], &["/secret"]);
    assert_eq!(p.decide_file("/secret/key", Access::Read), denied("files.deny", Some("/secret")));
    assert_eq!(p.decide_file("/secret", Access::Read), denied("files.deny", Some("/secret")));
    assert_eq!(p.decide_file("/secret/public/x", Access::Read), FileVerdict::Allow);
    assert_eq!(p.decide_file("/secretx", Access::Read), FileVerdict::Allow);
    assert_eq!(p.decide_file("/etc", Access::Write), denied("files.write", Some("/")));

    // read and write of the same path is fine: write wins over read.
    let p = files(&["/x"], &["/x"], &[]);
    assert_eq!(p.decide_file("/x/y", Access::Write), FileVerdict::Allow);
}

#[test]
fn exec_exact_file_versus_directory() {
    let p = ok("name = \"t\"\n[exec]\nallow = [\"/usr/bin/git\", \"/usr/local/bin/\", \"/opt/tool/\"]\n");
    assert!(p.exec_allowed("/usr/bin/git"));
    assert!(!p.exec_allowed("/usr/bin/git2"));
    assert!(!p.exec_allowed("/usr/bin/git/x"));
    assert!(!p.exec_allowed("/usr/bin/gi"));
    assert!(p.exec_allowed("/usr/local/bin/rg"));
    assert!(p.exec_allowed("/usr/local/bin/sub/deep/tool"));
    assert!(!p.exec_allowed("/usr/local/bin"));
    assert!(!p.exec_allowed("/usr/local/binx/rg"));
    assert!(p.exec_allowed("/opt/tool/x"));
    // exec rules are not file rules.
    assert_eq!(p.decide_file("/usr/bin/git", Access::Read), denied("files.read", None));
    let p = ok("name = \"t\"\n[exec]\nallow = [\"/\"]\n");
    assert!(p.exec_allowed("/x"));
}

#[test]
fn path_errors_have_hints_and_positions() {
    let text = "name = \"t\"\n[files]\nread = [\"/usr\", \"/lib\", \"etc/ssl\"]\n";
    let e = errors(text);
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].to_string(),
        "p.toml:3:25: files.read[2]: relative path \"etc/ssl\" (hint: file rules are absolute paths, e.g. \"/etc/ssl\")"
    );
    for (path, needle, hint) in [
        ("/a//b", "empty component", Some("\"/a/b\"")),
        ("/a/./b", "\".\"", Some("\"/a/b\"")),
        ("/a/../b", "\"..\"", Some("\"/b\"")),
        ("/a\0b", "NUL", None),
        ("", "empty path", None),
    ] {
        let e = errors(&format!("name = \"t\"\n[files]\nwrite = [{}]\n", toml::Value::String(path.into())));
        assert_eq!(e.len(), 1, "{path:?}: {e:?}");
        assert_eq!(e[0].field, "files.write[0]");
        assert!(e[0].message.contains(needle), "{path:?}: {}", e[0]);
        if let Some(h) = hint {
            assert!(e[0].hint.as_deref().unwrap_or("").contains(h), "{path:?}: {}", e[0]);
        }
    }
    let long = format!("/{}", "a".repeat(256));
    assert!(errors(&format!("name = \"t\"\n[files]\nread = [{long:?}]\n"))[0].message.contains("255"));
    let deep = "/a".repeat(65);
    assert!(errors(&format!("name = \"t\"\n[files]\nread = [{deep:?}]\n"))[0].message.contains("64"));
    ok(&format!("name = \"t\"\n[files]\nread = [{:?}]\n", "/a".repeat(64)));
    let wide = format!("/{}", vec!["b".repeat(200); 6].join("/"));
    assert!(errors(&format!("name = \"t\"\n[files]\nread = [{wide:?}]\n"))[0].message.contains("1023"));
    // exec: relative dir hint keeps the slash.
    let e = errors("name = \"t\"\n[exec]\nallow = [\"usr/local/bin/\"]\n");
    assert!(e[0].hint.as_deref().unwrap().contains("\"/usr/local/bin/\""), "{}", e[0]);
}

#[test]
fn all_problems_of_a_file_are_reported() {
    let text = "name = \"bad name\"\nmode = \"strict\"\non_violation = \"explode\"\n[files]\nread = [\"rel\"]\n\
                [network]\nconnect = [\"10.0.0.0/8\"]\n[syscalls]\ndeny = [\"ptrce\"]\n[bind]\ncgroups = [\"/abs\"]\n";
    let e = errors(text);
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        ["name", "mode", "on_violation", "files.read[0]", "network.connect[0]", "syscalls.deny[0]", "bind.cgroups[0]"]
    );
    assert!(e[1].message.contains("\"enforce\", \"monitor\""), "{}", e[1]);
    assert!(e[2].message.contains("\"deny\", \"kill\", \"freeze\""), "{}", e[2]);
    assert_eq!((e[1].line, e[1].column), (2, 8));
}

#[test]
fn name_rules() {
    ok("name = \"a.b_c-D9\"");
    ok(&format!("name = {:?}", "n".repeat(64)));
    for bad in ["", "a b", "a/b", "..", "é", &"n".repeat(65)] {
        let e = errors(&format!("name = {bad:?}"));
        assert_eq!(e[0].field, "name", "{bad:?}");
    }
    let e = errors("mode = \"monitor\"");
    assert_eq!((e[0].field.as_str(), e[0].line), ("name", 1));
}

#[test]
fn unknown_key_and_syntax_error_have_the_right_line_and_column() {
    let e = errors("name = \"t\"\n[files]\nread = []\n  reed = [\"/x\"]\n");
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].column), (4, 3), "{}", e[0]);
    assert!(e[0].message.contains("reed"), "{}", e[0]);
    let e = errors("name = \"t\"\ncolour = \"red\"\n");
    assert_eq!((e[0].line, e[0].column), (2, 1), "{}", e[0]);
    let e = errors("name = \"t\"\n[network]\nraw_socket = true\n");
    assert_eq!((e[0].line, e[0].column), (3, 1), "{}", e[0]);
    let e = errors("name = \"t\"\n[files]\nread = [\"/x\"\n");
    assert!(e[0].line >= 3, "{}", e[0]);
    assert!(!e[0].message.contains('\n'));
    let e = errors("name = \"t\"\n[files]\nread = \"/x\"\n");
    assert_eq!(e[0].line, 3, "{}", e[0]);
}

#[test]
fn cidr_forms() {
    let cases: &[(&str, &str)] = &[
        ("10.0.0.0/8:443", "10.0.0.0/8:443"),
        ("127.0.0.1:8080", "127.0.0.1/32:8080"),
        ("127.0.0.1/32:1-65535", "127.0.0.1/32:1-65535"),
        ("0.0.0.0/0:53", "0.0.0.0/0:53"),
        ("[::1]/128:443", "[::1]/128:443"),
        ("[::1]:443", "[::1]/128:443"),
        ("[2001:db8::/32]:443", "[2001:db8::]/32:443"),
        ("[2001:DB8::]/32:80-81", "[2001:db8::]/32:80-81"),
        ("[::ffff:10.0.0.0]/104:443", "10.0.0.0/8:443"),
        ("[::ffff:10.0.0.0/104]:443", "10.0.0.0/8:443"),
        ("[::ffff:127.0.0.1]:22", "127.0.0.1/32:22"),
        ("[::]/0:443", "[::]/0:443"),
    ];
    for (input, canonical) in cases {
        let s = net::parse_connect(input).unwrap_or_else(|e| panic!("{input}: {e:?}"));
        assert_eq!(s.to_string(), *canonical, "{input}");
    }
    let mapped = net::parse_connect("[::ffff:10.0.0.0]/104:443").unwrap();
    assert_eq!(mapped.net, "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap());

    let e = net::parse_connect("10.1.2.3/8:443").unwrap_err();
    assert!(e.0.contains("host bits"), "{e:?}");
    assert!(e.1.as_deref().unwrap().contains("\"10.0.0.0/8:443\""), "{e:?}");
    let e = net::parse_connect("[2001:db8::1]/32:443").unwrap_err();
    assert!(e.1.as_deref().unwrap().contains("[2001:db8::]/32:443"), "{e:?}");
    for bad in [
        "10.0.0.0/8",
        "10.0.0.0/33:443",
        "10.0.0.300/8:443",
        "2001:db8::/32:443",
        "[::1/128:443",
        "[::1]/128",
        "[::1/64]/64:443",
        "[::1]x:443",
        "host.example:443",
        "10.0.0.0/8:",
    ] {
        assert!(net::parse_connect(bad).is_err(), "{bad}");
    }
}

#[test]
fn port_ranges() {
    assert_eq!(net::parse_connect("10.0.0.0/8:1-1024").unwrap().ports, (1, 1024));
    assert_eq!(net::parse_connect("10.0.0.0/8:65535").unwrap().ports, (65535, 65535));
    for (bad, needle) in [
        ("10.0.0.0/8:0", "port 0"),
        ("10.0.0.0/8:0-10", "port 0"),
        ("10.0.0.0/8:200-100", "reversed"),
        ("10.0.0.0/8:70000", "out of range"),
        ("10.0.0.0/8:http", "not a port"),
        ("10.0.0.0/8:1-", "not a port"),
    ] {
        let e = net::parse_connect(bad).unwrap_err();
        assert!(e.0.contains(needle), "{bad}: {e:?}");
    }
    let p = connect(&["10.0.0.0/8:1000-2000"]);
    let a = IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7));
    assert!(p.connect_allowed(a, 1000) && p.connect_allowed(a, 2000) && p.connect_allowed(a, 1500));
    assert!(!p.connect_allowed(a, 999) && !p.connect_allowed(a, 2001));
    assert!(!p.connect_allowed(IpAddr::V4(Ipv4Addr::new(11, 0, 0, 1)), 1500));
}

#[test]
fn ipv6_and_v4_mapped_destinations() {
    let p = connect(&["[::1]/128:1-65535", "[2001:db8::/32]:443", "127.0.0.0/8:80"]);
    assert!(p.connect_allowed(IpAddr::V6(Ipv6Addr::LOCALHOST), 22));
    assert!(p.connect_allowed("2001:db8:1::5".parse().unwrap(), 443));
    assert!(!p.connect_allowed("2001:db9::5".parse().unwrap(), 443));
    // A v4-mapped destination is checked as IPv4.
    assert!(p.connect_allowed("::ffff:127.0.0.5".parse().unwrap(), 80));
    assert!(!p.connect_allowed("::ffff:127.0.0.5".parse().unwrap(), 81));
    // IPv6 rules never allow IPv4 destinations, even ::/0.
    let p = connect(&["[::]/0:443"]);
    assert!(p.connect_allowed("2001:db8::1".parse().unwrap(), 443));
    assert!(!p.connect_allowed(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)), 443));
    assert!(!p.connect_allowed("::ffff:1.2.3.4".parse().unwrap(), 443));
}

#[test]
fn compile_merges_the_ranges_of_enclosing_cidrs() {
    let p = connect(&["10.0.0.0/8:443", "10.1.0.0/16:8080-8081", "10.1.0.0/16:8082", "0.0.0.0/0:53", "10.1.2.0/24:444"]);
    let c = p.compile(7);
    let find = |net: &str| -> &(u32, agent_guard_common::NetKey, agent_guard_common::NetRule) {
        let n: ipnet::IpNet = net.parse().unwrap();
        let IpAddr::V4(a) = n.addr() else { panic!() };
        c.net_rules
            .iter()
            .find(|(len, k, _)| k.addr == a.to_ipv6_mapped().octets() && *len == 32 + 96 + u32::from(n.prefix_len()))
            .unwrap_or_else(|| panic!("no entry for {net}: {:#?}", c.net_rules))
    };
    let ranges = |r: &agent_guard_common::NetRule| -> Vec<(u16, u16)> {
        r.ranges[..r.count as usize].iter().map(|p| (p.lo, p.hi)).collect()
    };
    assert_eq!(c.net_rules.len(), 4);
    assert_eq!(ranges(&find("0.0.0.0/0").2), [(53, 53)]);
    assert_eq!(ranges(&find("10.0.0.0/8").2), [(53, 53), (443, 443)]);
    assert_eq!(ranges(&find("10.1.0.0/16").2), [(53, 53), (443, 443), (8080, 8082)]);
    assert_eq!(ranges(&find("10.1.2.0/24").2), [(53, 53), (443, 444), (8080, 8082)]);
    let (len, key, _) = find("10.1.2.0/24");
    assert_eq!(*len, 32 + 96 + 24);
    assert_eq!(key.ruleset_be, 7u32.to_be_bytes());
    assert_eq!(key.addr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 0]);

    // IPv6 rules merge only with IPv6 rules; a v6 rule covering ::ffff:0:0/96 gets an
    // empty IPv4 catch-all so that IPv4 lookups never land on it.
    let p = connect(&["[::]/0:443", "[::1]/128:22"]);
    let c = p.compile(1);
    assert_eq!(c.net_rules.len(), 3);
    let v6_host = c.net_rules.iter().find(|(len, _, _)| *len == 32 + 128).unwrap();
    assert_eq!(v6_host.1.addr, Ipv6Addr::LOCALHOST.octets());
    assert_eq!((v6_host.2.count, v6_host.2.ranges[0].lo, v6_host.2.ranges[1].lo), (2, 22, 443));
    let blocker = c.net_rules.iter().find(|(len, _, _)| *len == 32 + 96).unwrap();
    assert_eq!(blocker.1.addr, Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
    assert_eq!(blocker.2.count, 0);
    // No blocker when an IPv4 /0 rule exists or no v6 rule covers the mapped range.
    assert_eq!(connect(&["[::]/0:443", "0.0.0.0/0:80"]).compile(1).net_rules.len(), 2);
    assert_eq!(connect(&["[2001:db8::]/32:443"]).compile(1).net_rules.len(), 1);
}

#[test]
fn too_many_port_ranges_after_merging_is_an_error() {
    let mut rules: Vec<String> = (0..16).map(|i| format!("10.0.0.0/8:{}", 100 + 2 * i)).collect();
    let q = |r: &[String]| r.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    ok(&format!("name = \"t\"\n[network]\nconnect = [{}]\n", q(&rules)));
    rules.push("10.1.0.0/16:1000".into());
    let e = errors(&format!("name = \"t\"\n[network]\nconnect = [{}]\n", q(&rules)));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].field, "network.connect[16]");
    assert!(e[0].message.contains("17 port ranges"), "{}", e[0]);
}

#[test]
fn unknown_syscall_has_a_hint() {
    let e = errors("name = \"t\"\n[syscalls]\ndeny = [\"ptrace\", \"ptrce\"]\n");
    assert_eq!(e[0].field, "syscalls.deny[1]");
    assert_eq!(e[0].hint.as_deref(), Some("did you mean \"ptrace\"?"));
    assert_eq!(errors("name = \"t\"\n[syscalls]\ndeny = [\"io_uring\"]\n")[0].hint.as_deref(), Some("did you mean \"io_uring_enter\"?"));
    assert!(errors("name = \"t\"\n[syscalls]\ndeny = [\"600\"]\n")[0].message.contains("cannot be represented"));
    let p = ok("name = \"t\"\n[syscalls]\ndeny = [\"101\", \"bpf\"]\n");
    assert_eq!(p.syscalls_deny, [("ptrace".to_string(), 101), ("bpf".to_string(), 321)]);
    let e = errors("name = \"t\"\n[syscalls]\ndeny = [\"ptrace\", \"101\"]\n");
    assert!(e[0].message.contains("duplicate"));
}

#[test]
fn syscall_tables() {
    assert_eq!(syscall_name(0), Some("read"));
    assert_eq!(syscall_name(101), Some("ptrace"));
    assert_eq!(syscall_name(511), None);
    for name in UNSEEN_SYSCALLS {
        assert!(syscall_number(name).is_some(), "{name}");
    }
}

#[test]
fn duplicate_entries_name_both_positions() {
    let e = errors("name = \"t\"\n[files]\nread = [\"/usr\",\n  \"/lib\",\n  \"/usr/\"]\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].field, "files.read[2]");
    assert_eq!((e[0].line, e[0].column), (5, 3));
    assert!(e[0].message.contains("files.read[0]") && e[0].message.contains("line 3 column 9"), "{}", e[0]);
    assert!(!errors("name = \"t\"\n[network]\nconnect = [\"10.0.0.0/8:443\", \"[::ffff:10.0.0.0]/104:443\"]\n").is_empty());
    assert!(!errors("name = \"t\"\n[bind]\ncgroups = [\"a/*\", \"a/*\"]\n").is_empty());
    // Same path in read and write, same CIDR with other ports: fine.
    ok("name = \"t\"\n[files]\nread = [\"/x\"]\nwrite = [\"/x\"]\n[network]\nconnect = [\"10.0.0.0/8:1\", \"10.0.0.0/8:2\"]\n");
    // exec file and exec dir rules of one path are different rules.
    ok("name = \"t\"\n[exec]\nallow = [\"/opt/x\", \"/opt/x/\"]\n");
}

#[test]
fn version_ignores_order_comments_and_whitespace_and_tracks_meaning() {
    let base = ok(EXAMPLE).version;
    let reordered = r#"
# a comment
name = "coding-agent"
on_violation = "deny"

[bind]
cgroups = ["agents.slice/*.scope"]
[syscalls]
deny = ["unshare", "bpf", "mount", "ptrace"]   # reordered
[network]
connect = ["[::1]/128:1-65535", "10.0.0.0/8:443", "127.0.0.1:8080"]
[exec]
allow = ["/usr/local/bin/", "/usr/bin/python3", "/usr/bin/git"]
[files]
deny  = ["/workspace/.env/"]
write = ["/tmp", "/workspace"]
read  = ["/workspace", "/etc/ssl", "/lib", "/usr"]
"#;
    assert_eq!(ok(reordered).version, base);
    for (from, to) in [
        ("\"enforce\"", "\"monitor\""),
        ("\"/tmp\"]", "\"/tmp\", \"/var/tmp\"]"),
        ("\"/usr/local/bin/\"", "\"/usr/local/bin\""),
        ("10.0.0.0/8:443", "10.0.0.0/8:444"),
        ("raw_sockets = false", "raw_sockets = true"),
        ("\"bpf\", ", ""),
        ("coding-agent", "coding-agent2"),
        ("on_violation = \"deny\"", "on_violation = \"kill\""),
        ("agents.slice/*.scope", "agents.slice/*"),
        ("write = [\"/workspace\", \"/tmp\"]", "write = [\"/workspace\", \"/tmp\", \"/usr\"]"),
    ] {
        assert!(EXAMPLE.contains(from), "{from}");
        let changed = ok(&EXAMPLE.replacen(from, to, 1));
        assert_ne!(changed.version, base, "{from} -> {to}");
    }
}

#[test]
fn compiled_trie_shape() {
    let text = "name = \"t\"\nmode = \"monitor\"\non_violation = \"kill\"\n[files]\nread = [\"/usr\", \"/\"]\n\
                write = [\"/usr/local\"]\ndeny = [\"/usr/local/secret\"]\n[exec]\nallow = [\"/usr/bin/git\", \"/usr/local/\"]\n\
                [network]\nraw_sockets = true\n[syscalls]\ndeny = [\"ptrace\", \"bpf\"]\n";
    let c = ok(text).compile(3);
    let name = |k: &agent_guard_common::FileNodeKey| {
        let end = k.name.iter().position(|b| *b == 0).unwrap();
        String::from_utf8(k.name[..end].to_vec()).unwrap()
    };
    let shape: Vec<(u32, u32, String, u32)> =
        c.file_nodes.iter().map(|(k, v)| (v.id, k.parent, name(k), v.flags)).collect();
    assert_eq!(
        shape,
        [
            (1, 0, "usr".to_string(), file_rule::READ),
            (2, 1, "local".to_string(), file_rule::WRITE | file_rule::EXEC_DIR),
            (3, 2, "secret".to_string(), file_rule::DENY),
            (4, 1, "bin".to_string(), 0),
            (5, 4, "git".to_string(), file_rule::EXEC_FILE),
        ]
    );
    assert!(c.file_nodes.iter().all(|(k, _)| k.ruleset == 3));
    let h = c.header;
    assert_eq!(h.root_flags, file_rule::READ);
    assert_eq!((h.mode, h.on_violation, h.flags), (mode::MONITOR, action::KILL, RS_RAW_SOCKETS));
    assert_eq!(h.syscalls[101 / 64], 1 << (101 % 64));
    assert_eq!(h.syscalls[321 / 64], 1 << (321 % 64));
    assert_eq!(h.syscalls.iter().map(|w| w.count_ones()).sum::<u32>(), 2);
    assert_eq!(h.unseen.iter().map(|w| w.count_ones()).sum::<u32>(), UNSEEN_SYSCALLS.len() as u32);
    assert_ne!(h.unseen[425 / 64] & (1 << (425 % 64)), 0, "io_uring_setup");

    let c = ok("name = \"t\"\n[exec]\nallow = [\"/\"]\n").compile(1);
    assert!(c.file_nodes.is_empty());
    assert_eq!(c.header.root_flags, file_rule::EXEC_DIR);
    assert_eq!(c.header.flags, 0);
    assert_eq!((c.header.mode, c.header.on_violation), (mode::ENFORCE, action::DENY));
}

#[test]
fn rule_limit_is_4096_per_list() {
    let list = |n: usize| (0..n).map(|i| format!("\"/d/{i}\"")).collect::<Vec<_>>().join(",");
    let p = ok(&format!("name = \"t\"\n[files]\nread = [{}]\n", list(RULES_MAX)));
    assert_eq!(p.files_read.len(), RULES_MAX);
    assert_eq!(p.compile(1).file_nodes.len(), RULES_MAX + 1);
    let e = errors(&format!("name = \"t\"\n[files]\nread = [{}]\n", list(RULES_MAX + 1)));
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].field.as_str(), e[0].line, e[0].column), ("files.read", 3, 8));
    assert!(e[0].message.contains("4097"), "{}", e[0]);
    let hosts = |n: usize| (0..n).map(|i| format!("\"10.0.{}.{}:443\"", i / 256, i % 256)).collect::<Vec<_>>().join(",");
    ok(&format!("name = \"t\"\n[network]\nconnect = [{}]\n", hosts(RULES_MAX)));
    errors(&format!("name = \"t\"\n[network]\nconnect = [{}]\n", hosts(RULES_MAX + 1)));
}

#[test]
fn warnings_are_reported_without_failing() {
    let text = r#"name = "t"
on_violation = "freeze"
[files]
read = ["/", "/secret/pub"]
write = ["/"]
deny = ["/secret", "/nowhere"]
[exec]
allow = ["/usr/bin/", "/lib64/ld-linux-x86-64.so.2", "/opt/tool"]
[network]
connect = ["0.0.0.0/0:1-65535", "[::]/0:1-65535", "0.0.0.0/0:443"]
"#;
    // "/nowhere" is inside "/" here, so make a second policy for the no-effect deny.
    let c = parse(text, "w.toml");
    assert!(c.errors.is_empty(), "{:#?}", c.errors);
    let got: Vec<(String, String)> = c.warnings.iter().map(|w| (w.field.clone(), w.message.clone())).collect();
    let has = |field: &str, needle: &str| got.iter().any(|(f, m)| f == field && m.contains(needle));
    assert!(has("on_violation", "hold the run for review"), "{got:#?}");
    assert!(has("files.write[0]", "write access to \"/\""), "{got:#?}");
    assert!(has("files.read[1]", "longest match wins"), "{got:#?}");
    assert!(has("exec.allow[0]", "a shell can run anything"), "{got:#?}");
    assert!(has("exec.allow[1]", "ld.so runs any file"), "{got:#?}");
    assert!(has("network.connect[0]", "every IPv4 address"), "{got:#?}");
    assert!(has("network.connect[1]", "every IPv6 address"), "{got:#?}");
    assert_eq!(got.len(), 7, "{got:#?}");
    let w = c.warnings.iter().find(|w| w.field == "files.write[0]").unwrap();
    assert_eq!(w.to_string(), format!("w.toml:5:10: warning: files.write[0]: {}", w.message));

    let c = parse("name = \"t\"\n[files]\nread = [\"/usr\"]\ndeny = [\"/etc/shadow\", \"/usr/x\"]\n", "w.toml");
    assert!(c.errors.is_empty());
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(c.warnings[0].field, "files.deny[0]");
    assert!(c.warnings[0].message.contains("no effect"));
    assert!(parse("name = \"t\"\nmode = \"monitor\"\n", "w.toml").warnings.is_empty());
    let c = parse("name = \"t\"\n[exec]\nallow = [\"/bin/bash\", \"/usr/lib/\"]\n", "w.toml");
    assert_eq!(c.warnings.len(), 2, "{:#?}", c.warnings);
}

#[test]
fn bind_cgroups() {
    let p = ok("name = \"t\"\n[bind]\ncgroups = [\"agents.slice/*.scope\", \"ci/job-[0-9]\"]\n");
    let m = p.bind_matcher();
    assert!(m.is_match("agents.slice/a.scope"));
    assert!(!m.is_match("agents.slice/x/a.scope"));
    assert!(m.is_match("ci/job-3"));
    assert!(p.binds_cgroup("agents.slice/a.scope/child"));
    assert!(!p.binds_cgroup("agents.slice"));
    for bad in ["", "/agents.slice", "a/../b", "a//b", "a/", "a/[", "./a"] {
        let e = errors(&format!("name = \"t\"\n[bind]\ncgroups = [{bad:?}]\n"));
        assert_eq!(e[0].field, "bind.cgroups[0]", "{bad:?}");
    }
}

#[test]
fn check_files_output_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let bad = dir.path().join("bad.toml");
    let warn = dir.path().join("warn.toml");
    std::fs::write(&good, EXAMPLE).unwrap();
    std::fs::write(&bad, "name = \"b\"\n[files]\nread = [\"etc\"]\n").unwrap();
    std::fs::write(&warn, "name = \"w\"\n[files]\nwrite = [\"/\"]\n").unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(check_files(&[good.clone(), warn.clone()], &mut out, &mut err), 0);
    let out_s = String::from_utf8(out).unwrap();
    let err_s = String::from_utf8(err).unwrap();
    let version = ok(EXAMPLE).version;
    assert!(out_s.contains(&format!("{}: ok (name coding-agent, version {version})", good.display())), "{out_s}");
    assert!(out_s.contains(&format!("{}: ok (name w,", warn.display())), "{out_s}");
    assert!(err_s.contains(&format!("{}:3:10: warning: files.write[0]: ", warn.display())), "{err_s}");

    let (mut out, mut err) = (Vec::new(), Vec::new());
    let missing = dir.path().join("missing.toml");
    assert_eq!(check_files(&[good, bad.clone(), missing.clone()], &mut out, &mut err), 1);
    let err_s = String::from_utf8(err).unwrap();
    assert!(err_s.contains(&format!("{}:3:9: files.read[0]: relative path \"etc\"", bad.display())), "{err_s}");
    assert!(err_s.contains(&format!("{}: cannot read: ", missing.display())), "{err_s}");
    assert!(err_s.trim_end().ends_with("policy check: 2 errors in 2 of 3 files"), "{err_s}");
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
}
