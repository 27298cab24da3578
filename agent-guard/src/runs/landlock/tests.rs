//! Unit tests of the Landlock plan and layer.
use super::*;
use std::os::fd::AsRawFd;
use crate::policy;
use crate::output::event::{Detail, Event, Kind, Rule, Verdict};

fn available() -> bool {
    if host_abi() < 1 {
        eprintln!("skip: Landlock not available");
        return false;
    }
    true
}

fn parse(text: &str) -> Policy {
    let checked = policy::parse(text, "test.toml");
    checked.policy.unwrap_or_else(|| panic!("{:?}", checked.errors))
}

/// The daemon's plan for an enforce-mode `policy`, on a host with Landlock ABI `abi`.
fn plan(policy: &Policy, abi: u32, loaders: &[String]) -> HostPlan {
    Plan::for_policy(policy).expect("an enforce-mode policy").on_host(abi, loaders)
}

fn list(paths: &[&Path]) -> String {
    paths.iter().map(|p| format!("{:?}", p.display().to_string())).collect::<Vec<_>>().join(", ")
}

fn enforce(read: &[&Path], write: &[&Path]) -> Policy {
    parse(&format!(
        "name = \"ll\"\nmode = \"enforce\"\n[files]\nread = [{}]\nwrite = [{}]\n",
        list(read),
        list(write)
    ))
}

const RICH: &str = r#"name = "rich"
[files]
read = ["/usr", "/ws", "/secret"]
write = ["/ws/out"]
deny = ["/secret", "/ws/.env"]
[exec]
allow = ["/usr/bin/git", "/opt/tools/"]
[network]
connect = ["127.0.0.1/32:8080", "10.0.0.0/8:443", "[::1]/128:8079-8081"]
"#;

#[test]
fn a_deny_policy_handles_reads_writes_execs_connects_and_scopes() {
    let p = plan(&parse(RICH), 7, &["/lib64/ld-linux-x86-64.so.2".to_string()]);
    assert_eq!(p.fs, write_access() | read_access());
    let g = |path: &str| p.grants.get(path).copied();
    assert_eq!(g("/usr"), Some(read_access()));
    assert_eq!(g("/ws"), Some(read_access()));
    // Write trees get every write right but device nodes (`[files] devices` grants those).
    assert_eq!(g("/ws/out"), Some((read_access() | write_access()) & !(AccessFs::MakeChar | AccessFs::MakeBlock)));
    // A deny at exactly an allowed path wins there; one deeper cannot be expressed.
    assert_eq!(g("/secret"), None);
    assert_eq!(g("/ws/.env"), None);
    assert_eq!(g("/usr/bin/git"), Some(exec_access()));
    assert_eq!(g("/opt/tools"), Some(exec_access()));
    assert_eq!(g("/lib64/ld-linux-x86-64.so.2"), Some(exec_access()));
    assert_eq!(p.ports, Some(vec![443, 8079, 8080, 8081]));
    assert_eq!(p.scopes, Scope::AbstractUnixSocket | Scope::Signal);
    let c = &p.coverage;
    assert_eq!(c.refuses(), ["read", "write", "exec", "tcp-connect", "signal", "abstract-unix"]);
    assert!(c.ebpf_only.is_empty(), "{c:?}");
}

#[test]
fn an_allowed_abstract_socket_turns_off_the_abstract_scope() {
    let text = RICH.replace("[network]", "[network]\nunix = [\"@agent\", \"/run/a.sock\"]");
    let plan = Plan::for_policy(&parse(&text)).unwrap();
    assert!(plan.abstract_unix_allowed);
    let p = plan.on_host(7, &[]);
    assert_eq!(p.scopes, BitFlags::from(Scope::Signal));
    assert_eq!(p.coverage.refuses(), ["read", "write", "exec", "tcp-connect", "signal"]);
    assert!(p.coverage.ebpf_only.iter().any(|l| l.contains("abstract-unix")), "{:?}", p.coverage.ebpf_only);
    // A plan from a daemon that does not send the field keeps the scope.
    let mut json: serde_json::Value = serde_json::to_value(&plan).unwrap();
    json.as_object_mut().unwrap().remove("abstract_unix_allowed");
    let old: Plan = serde_json::from_value(json).unwrap();
    assert_eq!(old.on_host(7, &[]).scopes, Scope::AbstractUnixSocket | Scope::Signal);
}

#[test]
fn kill_and_freeze_leave_reads_execs_and_connects_to_ebpf() {
    for action in ["kill", "freeze"] {
        let text = RICH.replace("name = \"rich\"", &format!("name = \"rich\"\non_violation = \"{action}\""));
        let p = plan(&parse(&text), 7, &["/lib64/ld-linux-x86-64.so.2".to_string()]);
        assert_eq!(p.fs, write_access(), "{action}");
        assert_eq!(p.grants.keys().collect::<Vec<_>>(), ["/ws/out"], "{action}");
        assert_eq!(p.ports, None);
        assert_eq!(p.coverage.refuses(), ["write", "signal", "abstract-unix"]);
        assert_eq!(p.coverage.ebpf_only.len(), 1, "{:?}", p.coverage.ebpf_only);
        assert!(p.coverage.ebpf_only[0].contains(action), "{:?}", p.coverage.ebpf_only);
    }
}

#[test]
fn older_abis_lose_what_they_lack_and_say_so() {
    let p = plan(&parse(RICH), 3, &[]);
    assert_eq!(p.fs, write_access() | read_access());
    assert_eq!((p.ports.clone(), p.scopes), (None, BitFlags::empty()));
    assert_eq!(p.coverage.refuses(), ["read", "write", "exec"]);
    let notes = p.coverage.ebpf_only.join("\n");
    assert!(notes.contains("ABI 3 has no network rules") && notes.contains("ABI 3 has no scoping"), "{notes}");
    let p = plan(&parse(RICH), 1, &[]);
    assert!(!p.fs.contains(AccessFs::Truncate) && p.fs.contains(AccessFs::WriteFile));
    assert!(p.coverage.ebpf_only.iter().any(|n| n.starts_with("truncate")), "{:?}", p.coverage.ebpf_only);
}

#[test]
fn connect_ports_are_the_union_of_the_rules_ports_within_a_bound() {
    let rules = |ports: &[(u16, u16)]| ports.to_vec().into_iter();
    assert_eq!(connect_ports(rules(&[])), Ok(vec![]));
    assert_eq!(connect_ports(rules(&[(5, 7), (1, 2), (6, 9), (3, 3)])), Ok(vec![1, 2, 3, 5, 6, 7, 8, 9]));
    assert_eq!(connect_ports(rules(&[(1, 1024)])).map(|v| v.len()), Ok(1024));
    assert_eq!(connect_ports(rules(&[(1, 1024), (2000, 2000)])), Err(1025));
    assert_eq!(connect_ports(rules(&[(1, 65535), (80, 80)])), Err(65535));
    // Too many ports: connects stay with the cgroup programs, and status says so.
    let p = plan(&parse("name = \"n\"\n[network]\nconnect = [\"[::1]/128:1-65535\"]\n"), 7, &[]);
    assert_eq!(p.ports, None);
    assert!(p.coverage.ebpf_only[0].contains("65535 ports"), "{:?}", p.coverage.ebpf_only);
}

#[test]
fn the_loader_of_an_allowed_binary_is_found() {
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let Some(interp) = elf_interp(&sh) else {
        eprintln!("skip: {} is not a dynamically linked ELF file", sh.display());
        return;
    };
    assert!(interp.contains("ld-"), "{interp}");
    let pol = parse(&format!("name = \"x\"\n[exec]\nallow = [{:?}]\n", sh.display().to_string()));
    assert!(loaders(&Plan::for_policy(&pol).unwrap()).contains(&interp));
    assert_eq!(elf_interp(Path::new("/etc/hostname")), None);
}

#[test]
fn no_plan_and_monitor_mean_no_layer() {
    let p = prepare(None);
    assert!(p.layer.is_none() && p.coverage.is_none() && p.warnings.is_empty());
    let monitor = parse("name = \"m\"\nmode = \"monitor\"\n[files]\nwrite = [\"/tmp\"]\n");
    assert_eq!(Plan::for_policy(&monitor), None);
}

#[test]
fn the_plan_crosses_the_control_socket_and_the_daemon_derives_the_runs_coverage() {
    for text in [RICH.to_string(), RICH.replace("name = \"rich\"", "name = \"rich\"\non_violation = \"kill\"")] {
        let plan = Plan::for_policy(&parse(&text)).unwrap();
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan, "{json}");
        for abi in 1..=7 {
            assert_eq!(plan.coverage(abi), plan.on_host(abi, &[]).coverage, "ABI {abi}");
        }
    }
    // Rights are the kernel's bits: unknown ones are refused, not dropped.
    let json = serde_json::to_string(&Plan::for_policy(&parse(RICH)).unwrap()).unwrap();
    let bad = json.replacen(&format!("\"fs\":{}", (write_access() | read_access()).bits()), "\"fs\":18446744073709551615", 1);
    assert_ne!(bad, json);
    assert!(serde_json::from_str::<Plan>(&bad).is_err());
}

fn open_event(path: &str, flags: i32, result: i32) -> Event {
    Event {
        layer: kernel_layer(Kind::Open),
        detail: Detail::Open {
            path: path.into(),
            access: crate::output::event::access_of(flags as u32),
            flags: flags as u32,
            result,
            error: crate::output::event::errno_name(result),
            path_resolved: result >= 0,
            path_truncated: false,
        },
        ..Event::new(Kind::Open)
    }
}

#[test]
fn events_say_which_layer_refused() {
    let pol = parse(RICH);
    let cov = plan(&pol, 7, &[]).coverage;
    let judged = |path: &str, flags: i32, result: i32| {
        let mut e = open_event(path, flags, result);
        attribute(&mut e, &cov, Some(&pol));
        (e.verdict.name(), e.rule.map(|r| r.name().to_string()), e.layer)
    };
    let eacces = -libc::EACCES;
    let landlock = |rule: &str| ("deny", Some(rule.to_string()), Some("landlock"));
    assert_eq!(judged("/etc/shadow", libc::O_RDONLY, eacces), landlock("files.read"));
    assert_eq!(judged("/ws/../etc//./shadow", libc::O_RDONLY, eacces), landlock("files.read"));
    assert_eq!(judged("/secret/x", libc::O_RDONLY, eacces), landlock("files.deny"));
    assert_eq!(judged("/ws/x", libc::O_WRONLY | libc::O_CREAT, eacces), landlock("files.write"));
    assert_eq!(judged("/etc/x", libc::O_RDWR, eacces), landlock("files.write"));
    // Allowed by the policy: the file's own permissions, not Landlock.
    assert_eq!(judged("/ws/x", libc::O_RDONLY, eacces), ("allow", None, Some("ebpf")));
    // Other errors, relative paths and successful opens are the eBPF layer's report.
    assert_eq!(judged("/etc/shadow", libc::O_RDONLY, -libc::ENOENT), ("allow", None, Some("ebpf")));
    assert_eq!(judged("shadow", libc::O_RDONLY, eacces), ("allow", None, Some("ebpf")));
    // A run whose layer does not handle reads (on_violation = "kill").
    let kill = parse(&RICH.replace("name = \"rich\"", "name = \"rich\"\non_violation = \"kill\""));
    let kcov = plan(&kill, 7, &[]).coverage;
    let mut e = open_event("/etc/shadow", libc::O_RDONLY, eacces);
    attribute(&mut e, &kcov, Some(&kill));
    assert_eq!((e.verdict.name(), e.layer), ("allow", Some("ebpf")));

    let connect = |result: i32, verdict: &'static str| {
        let mut e = Event {
            verdict: Verdict::from_name(verdict).unwrap(),
            rule: Some(Rule::Network),
            layer: kernel_layer(Kind::Connect),
            detail: Detail::Connect { family: "inet", addr: "127.0.0.1".into(), port: 9, proto: "tcp", result, error: None, domain: None },
            ..Event::new(Kind::Connect)
        };
        attribute(&mut e, &cov, Some(&pol));
        (e.verdict.name(), e.layer)
    };
    assert_eq!(connect(eacces, "deny"), ("deny", Some("landlock")));
    assert_eq!(connect(-libc::EPERM, "deny"), ("deny", Some("ebpf")));
    assert_eq!(kernel_layer(Kind::Exit), None);
    assert_eq!(kernel_layer(Kind::RunStart), None);
}

#[test]
fn the_layer_refuses_outside_the_policy_and_its_fd_does_not_leak() {
    if !available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let out = ws.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(ws.join("keep.txt"), "hello").unwrap();
    std::fs::write(tmp.path().join("secret.txt"), "TOPSECRET").unwrap();
    let gone = tmp.path().join("gone");
    let p = prepare(Plan::for_policy(&enforce(&[&ws], &[&out, &gone])).as_ref());
    assert_eq!(p.warnings.len(), 1, "{p:?}");
    assert!(p.warnings[0].contains("gone (does not exist)"), "{p:?}");
    let cov = p.coverage.clone().expect("coverage");
    assert!(cov.files_read && cov.files_write && cov.exec, "{cov:?}");
    let layer = p.layer.expect("a layer");
    // no_new_privs only where Landlock requires it: without CAP_SYS_ADMIN (bit 21).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    let sys_admin = u64::from_str_radix(cap_eff, 16).unwrap() & (1 << 21) != 0;
    assert_eq!(layer.no_new_privs, !sys_admin);
    // SAFETY: F_GETFD on an open fd.
    let flags = unsafe { libc::fcntl(layer.fd.as_raw_fd(), libc::F_GETFD) };
    assert!(flags & libc::FD_CLOEXEC != 0);

    // In a thread of its own: Landlock restricts the calling thread only.
    let root = tmp.path().to_path_buf();
    std::thread::spawn(move || {
        layer.apply().unwrap();
        std::fs::write(out.join("new.txt"), "x").unwrap();
        let e = std::fs::write(ws.join("new.txt"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        let e = std::fs::write(ws.join("keep.txt"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        let e = std::fs::remove_file(ws.join("keep.txt")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        assert_eq!(std::fs::read_to_string(ws.join("keep.txt")).unwrap(), "hello");
        let e = std::fs::read_to_string(root.join("secret.txt")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        let e = std::fs::read_dir(&root).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    })
    .join()
    .unwrap();
    assert!(!tmp.path().join("ws/new.txt").exists());
    assert_eq!(std::fs::read_to_string(tmp.path().join("ws/keep.txt")).unwrap(), "hello");
    assert!(tmp.path().join("ws/out/new.txt").exists());
}
