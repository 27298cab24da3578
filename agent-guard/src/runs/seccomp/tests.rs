//! Unit tests of the filter: its program run by a small classic BPF interpreter agrees with
//! `Filter::decide` on every syscall.
use super::*;

/// Runs the classic BPF program on one syscall, as the kernel would (the instructions
/// [`program`] emits only).
fn run(p: &[libc::sock_filter], arch: u32, nr: i32, args: [u64; 6]) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            OFF_NR => nr as u32,
            OFF_ARCH => arch,
            o if o >= 16 && (o - 16) % 4 == 0 => {
                let a = args[((o - 16) / 8) as usize];
                if (o - 16) % 8 == 0 { a as u32 } else { (a >> 32) as u32 }
            }
            o => panic!("load of offset {o}"),
        }
    };
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let i = p[pc];
        let code = i.code as u32;
        pc += 1;
        match code {
            c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => acc = word(i.k),
            c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => acc &= i.k,
            c if c == libc::BPF_RET | libc::BPF_K => return i.k,
            c if c & 0x07 == libc::BPF_JMP => {
                let taken = match c & 0xf0 {
                    libc::BPF_JEQ => acc == i.k,
                    libc::BPF_JGT => acc > i.k,
                    libc::BPF_JGE => acc >= i.k,
                    libc::BPF_JSET => acc & i.k != 0,
                    op => panic!("jump op {op:#x}"),
                };
                pc += if taken { i.jt } else { i.jf } as usize;
            }
            c => panic!("opcode {c:#x}"),
        }
    }
}

fn filter(text: &str, landlock_writes: bool) -> Prepared {
    let checked = policy::parse(text, "test.toml");
    for_policy(&checked.policy.unwrap_or_else(|| panic!("{:?}", checked.errors)), landlock_writes)
}

const BASE: &str = "name = \"p\"\n[files]\nread = [\"/usr\"]\nwrite = [\"/work\"]\n[syscalls]\ndeny = [\"utimensat\", \"ptrace\"]\n";

fn nr(name: &str) -> i32 {
    policy::syscall_number(name).unwrap() as i32
}

#[test]
fn the_program_and_decide_agree_on_every_syscall() {
    let f = filter(BASE, true).filter.unwrap();
    assert!(f.program.len() < 4096);
    let mut args_set = vec![[0u64; 6]];
    for mode in [libc::S_IFCHR, libc::S_IFBLK, libc::S_IFIFO, libc::S_IFREG, libc::S_IFSOCK] {
        args_set.push([0, mode as u64 | 0o644, mode as u64 | 0o600, 0, 0, 0]);
    }
    for flags in [libc::CLONE_NEWNS, libc::CLONE_NEWUSER, libc::CLONE_FILES, libc::CLONE_FILES | libc::CLONE_THREAD | libc::CLONE_VM, libc::SIGCHLD] {
        args_set.push([flags as u64, 0, 0, 0, 0, 0]);
    }
    for n in -1..560 {
        for args in &args_set {
            let ret = run(&f.program, AUDIT_ARCH_X86_64, n, *args);
            let d = f.decide(AUDIT_ARCH_X86_64, n, args);
            if n == NR_CLONE3 as i32 {
                assert_eq!((ret, d), (libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32, None));
                continue;
            }
            assert_eq!(ret == RET_NOTIFY, d.is_some(), "nr {n} args {args:?}: program {ret:#x}, decide {d:?}");
            assert!(ret == RET_NOTIFY || ret == RET_ALLOW, "nr {n}: {ret:#x}");
        }
    }
    for n in [0, 11, 59] {
        assert_eq!(run(&f.program, AUDIT_ARCH_I386, n, [0; 6]), RET_NOTIFY);
        assert_eq!(f.decide(AUDIT_ARCH_I386, n, &[0; 6]).unwrap().errno, libc::ENOSYS);
        let x32 = (X32_SYSCALL_BIT | n as u32) as i32;
        assert_eq!(run(&f.program, AUDIT_ARCH_X86_64, x32, [0; 6]), RET_NOTIFY);
        assert_eq!(f.decide(AUDIT_ARCH_X86_64, x32, &[0; 6]).unwrap().name, format!("x32:{n}"));
    }
}

#[test]
fn what_is_refused_and_with_which_errno() {
    let f = filter(BASE, true).filter.unwrap();
    let d = |name: &str, args: [u64; 6]| f.decide(AUDIT_ARCH_X86_64, nr(name), &args).map(|v| (v.rule, v.errno));
    assert_eq!(d("utimensat", [0; 6]), Some((Rule::Syscalls, libc::EPERM)));
    assert_eq!(d("unshare", [0; 6]), Some((Rule::Unseen, libc::EPERM)));
    assert_eq!(d("io_uring_setup", [0; 6]), Some((Rule::Unseen, libc::ENOSYS)));
    assert_eq!(d("mknod", [0, libc::S_IFCHR as u64 | 0o600, 0, 0, 0, 0]), Some((Rule::Unseen, libc::EPERM)));
    assert_eq!(d("mknodat", [0, 0, libc::S_IFBLK as u64 | 0o600, 0, 0, 0]), Some((Rule::Unseen, libc::EPERM)));
    assert_eq!(d("mknodat", [0, 0, libc::S_IFIFO as u64 | 0o600, 0, 0, 0]), None);
    assert_eq!(d("clone", [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0]), Some((Rule::Unseen, libc::EPERM)));
    assert_eq!(d("read", [0; 6]), None);
    assert_eq!(d("openat", [0; 6]), None);
    // The Landlock layer judges hard links here: the filter lets them through.
    assert_eq!(d("linkat", [0; 6]), None);
    assert_eq!(f.decide(AUDIT_ARCH_X86_64, 500, &[0; 6]).map(|v| (v.rule, v.errno)), Some((Rule::Unseen, libc::ENOSYS)));
    // A hole in the table (no syscall 400 on x86_64).
    assert_eq!(f.decide(AUDIT_ARCH_X86_64, 400, &[0; 6]).map(|v| v.name), Some("syscall_400".to_string()));
}

/// Socket arguments: family and protocol as the kernel's ints, high register bits ignored.
fn socket_args() -> Vec<[u64; 6]> {
    let mut v = Vec::new();
    for family in [0u64, 1, 2, 10, 16, 17, 30, 40, 45, 63, 64, 200, 0x1_0000_0011, 0xffff_ffff, u64::MAX] {
        for protocol in [0u64, 9, 15, 31, 32, 0x1_0000_0000, 0xffff_ffff] {
            v.push([family, libc::SOCK_RAW as u64, protocol, 0, 0, 0]);
        }
    }
    v
}

#[test]
fn socket_families_outside_the_policy_are_refused_as_the_kernel_reads_them() {
    for (families, raw) in [("", false), ("families = [\"vsock\", \"netlink:audit\"]\n", false), ("families = [\"netlink\"]\n", true)] {
        let net = format!("[network]\n{families}{}", if raw { "raw_sockets = true\n" } else { "" });
        let f = filter(&format!("{BASE}{net}"), true).filter.unwrap();
        for nr in [NR_SOCKET as i32, NR_SOCKETPAIR as i32] {
            for args in socket_args() {
                let ret = run(&f.program, AUDIT_ARCH_X86_64, nr, args);
                let d = f.decide(AUDIT_ARCH_X86_64, nr, &args);
                assert_eq!(ret == RET_NOTIFY, d.is_some(), "{net} nr {nr} args {args:?}: program {ret:#x}, decide {d:?}");
                // The kernel programs' rule: the same answer for the same ints.
                let want = f.families.allows(args[0] as u32 as i32, args[2] as u32 as i32);
                assert_eq!(d.is_none(), want, "{net} {args:?}");
                if let Some(v) = d {
                    assert_eq!((v.rule, v.errno), (Rule::Families, libc::EPERM));
                }
            }
        }
    }
    let f = filter(&format!("{BASE}[network]\nfamilies = [\"vsock\", \"netlink:audit\"]\n"), true).filter.unwrap();
    let allowed = |family: u64, protocol: u64| f.decide(AUDIT_ARCH_X86_64, NR_SOCKET as i32, &[family, 3, protocol, 0, 0, 0]).is_none();
    assert!(allowed(2, 0) && allowed(10, 0) && allowed(1, 0) && allowed(16, 0) && allowed(40, 0) && allowed(16, 9));
    assert!(!allowed(17, 0) && !allowed(30, 0) && !allowed(16, 15) && !allowed(0x1_0000_0011, 0) && !allowed(64, 0));
    // The high half of the register is not the kernel's int: still AF_INET.
    assert!(allowed(0x1_0000_0002, 0));
    // A plan without families (an older daemon's) refuses none.
    let mut plan = SeccompPlan::for_policy(&policy::parse(BASE, "t.toml").policy.unwrap()).unwrap();
    plan.families = Families::default();
    let f = plan.filter(true).filter.unwrap();
    assert_eq!(run(&f.program, AUDIT_ARCH_X86_64, NR_SOCKET as i32, [17, 3, 0, 0, 0, 0]), RET_ALLOW);
}

#[test]
fn links_stay_refused_without_landlock_or_with_carve_outs_in_write_trees() {
    let refused = |p: &Prepared| p.filter.as_ref().unwrap().refused_names().contains(&"link");
    assert!(!refused(&filter(BASE, true)));
    assert!(refused(&filter(BASE, false)), "no Landlock layer judges the link");
    let carve = BASE.replace("write = [\"/work\"]", "write = [\"/work\"]\ndeny = [\"/work/.env\"]");
    assert!(refused(&filter(&carve, true)), "a link would give /work/.env an allowed name");
    let ro = BASE.replace("read = [\"/usr\"]", "read = [\"/usr\", \"/work/ro\"]");
    assert!(refused(&filter(&ro, true)));
    let same = BASE.replace("read = [\"/usr\"]", "read = [\"/usr\", \"/work\"]");
    assert!(!refused(&filter(&same, true)), "a read rule at a write path is no carve-out");
}

#[test]
fn only_enforce_mode_with_deny_gets_a_filter() {
    assert!(filter(BASE, true).filter.is_some());
    for header in ["on_violation = \"kill\"\n", "on_violation = \"freeze\"\n", "mode = \"monitor\"\n"] {
        assert!(filter(&BASE.replacen('\n', &format!("\n{header}"), 1), true).filter.is_none(), "{header}");
    }
    let p = filter(&BASE.replace("\"ptrace\"]", "\"ptrace\", \"exit_group\"]"), true);
    assert!(p.warnings[0].contains("exit_group"), "{:?}", p.warnings);
    assert!(!p.filter.unwrap().refused_names().contains(&"exit_group"));
}

#[test]
fn a_refusal_round_trips_as_json() {
    let r = Refusal { pid: 7, syscall: "utimensat".into(), nr: 280, arg0: 3, rule: Rule::Syscalls, errno: 1, path: Some("/w/f".into()), socket: None, process: Caller::of(std::process::id()) };
    let s = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<Refusal>(&s).unwrap(), r);
    let r = Refusal { syscall: "socket".into(), nr: 41, arg0: 17, rule: Rule::Families, path: None, socket: Some([17, 3, 0]), ..r };
    let s = serde_json::to_string(&r).unwrap();
    assert!(s.contains("\"rule\":\"network.families\"") && s.contains("\"socket\":[17,3,0]"), "{s}");
    assert_eq!(serde_json::from_str::<Refusal>(&s).unwrap(), r);
}
