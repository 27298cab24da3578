//! The seccomp filter of runs started by `agent-guard run` (enforce mode, `on_violation =
//! "deny"`), on the real kernel: a syscall the policy refuses gets an errno before it runs and
//! the process goes on, each refusal is an event (`layer: seccomp`), hard links are left to the
//! Landlock layer (git works), and where there is no launcher (a bound cgroup) or the policy
//! says `kill`, the eBPF check still kills.
use std::{
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::Path,
    process::Output,
};

use agent_guard_tests::{layout, privileged, probe, probe_in, s, status, stdout, Daemon, Layout, PolicyFile, TestCgroup};
use serde_json::Value;

const KILLED: i32 = 128 + 9;

/// The probe, the shell tools, unshare and git may run; `ws` is readable, `ws/out` writable.
fn policy(name: &str, l: &Layout) -> PolicyFile {
    PolicyFile::for_probe(name)
        .read(["/etc", "/dev/urandom"])
        .read([&l.ws])
        .write([l.ws.join("out"), "/dev/null".into()])
        .exec(["/usr/bin/", "/usr/local/bin/", "/usr/local/libexec/git-core/"])
        .syscalls_deny(["utimensat"])
}

/// The events of kind `syscall` that refused something in the run named `name`, once at least
/// `n` are in the log.
fn refusals(d: &Daemon, name: &str, n: usize) -> Vec<Value> {
    let is = |e: &Value| e["run_name"] == name && e["kind"] == "syscall" && e["verdict"] != "allow";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let found: Vec<Value> = d.events().into_iter().filter(is).collect();
        if found.len() >= n || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The one seccomp refusal of run `name`, checked: deny, `rule`, the syscall's name, `error`.
fn refusal(d: &Daemon, name: &str, rule: &str, syscall: &str, error: &str) -> Value {
    let events = refusals(d, name, 1);
    assert_eq!(events.len(), 1, "one refusal event for {name}: {events:#?}\ndaemon:\n{}", d.stderr());
    let e = events[0].clone();
    let got = (e["verdict"].as_str(), e["layer"].as_str(), e["rule"].as_str(), e["name"].as_str(), e["error"].as_str());
    assert_eq!(got, (Some("deny"), Some("seccomp"), Some(rule), Some(syscall), Some(error)), "{name}: {e}");
    assert!(e["pid"].as_u64().is_some_and(|p| p > 0) && e["comm"].is_string(), "{e}");
    assert!(e["ancestry"].as_array().is_some_and(|a| !a.is_empty()), "{e}");
    e
}

/// `out` printed exactly `lines`, and the probe went on after the operation.
fn went_on(o: &Output, first: &str) {
    assert_eq!((status(o), stdout(o).trim()), (0, format!("{first}\nwent on").as_str()), "{o:?}");
}

fn mtime(p: &Path) -> i64 {
    std::fs::metadata(p).unwrap().mtime()
}

#[test]
fn refused_syscalls_get_an_errno_and_the_process_goes_on() {
    if !privileged("refused_syscalls_get_an_errno_and_the_process_goes_on") {
        return;
    }
    let d = Daemon::start();
    let l = layout();
    let pol = d.write_policy("sc", &policy("sc", &l).to_string());
    let out = l.ws.join("out");

    // [syscalls] deny: utimensat is refused before it runs; the mtime stays.
    let file = out.join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let before = mtime(&file);
    assert_ne!(before, 946_684_800);
    went_on(&d.probe_run(&pol, "utimensat", &["and-go-on", "utimensat", &s(&file)]), "err EPERM");
    assert_eq!(mtime(&file), before);
    let e = refusal(&d, "utimensat", "syscalls.deny", "utimensat", "EPERM");
    assert_eq!(e["path"].as_str(), Some(s(&file).as_str()), "{e}");

    // touch(1) sets the times through its descriptor (utimensat(fd, NULL)): the event names
    // the file, and the shell goes on.
    let file2 = out.join("touched.txt");
    std::fs::write(&file2, "x").unwrap();
    let before = mtime(&file2);
    let script = format!("touch -d 2000-01-01 {}; echo after=$?", s(&file2));
    let o = d.run(&["--policy", pol.to_str().unwrap(), "--name", "touch", "--", "/usr/bin/sh", "-c", &script]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "after=1"), "{o:?}");
    assert!(agent_guard_tests::stderr(&o).contains("Operation not permitted"), "{o:?}");
    assert_eq!(mtime(&file2), before);
    let e = refusal(&d, "touch", "syscalls.deny", "utimensat", "EPERM");
    assert_eq!((e["path"].as_str(), e["comm"].as_str()), (Some(s(&file2).as_str()), Some("touch")), "{e}");

    // Unseen: io_uring is missing (ENOSYS, so programs fall back); namespaces are refused.
    went_on(&d.probe_run(&pol, "uring", &["and-go-on", "io_uring"]), "err ENOSYS");
    refusal(&d, "uring", "unseen", "io_uring_setup", "ENOSYS");
    let o = d.run(&["--policy", pol.to_str().unwrap(), "--name", "unshare", "--", "/usr/bin/unshare", "-m", "true"]);
    assert_eq!(status(&o), 1, "{o:?}");
    assert!(agent_guard_tests::stderr(&o).contains("Operation not permitted"), "{o:?}");
    refusal(&d, "unshare", "unseen", "unshare", "EPERM");
    went_on(&d.probe_run(&pol, "clone-ns", &["and-go-on", "clone-ns"]), "err EPERM");
    refusal(&d, "clone-ns", "unseen", "clone", "EPERM");

    // Device nodes are refused, a FIFO is made.
    let dev = out.join("null2");
    went_on(&d.probe_run(&pol, "mknod-char", &["and-go-on", "mknod", &s(&dev), "char"]), "err EPERM");
    assert!(!dev.exists());
    let e = refusal(&d, "mknod-char", "unseen", "mknodat", "EPERM");
    assert_eq!(e["path"].as_str(), Some(s(&dev).as_str()), "{e}");
    let fifo = out.join("fifo");
    let o = d.probe_run(&pol, "mknod-fifo", &["mknod", &s(&fifo), "fifo"]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok made"), "{o:?}");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(refusals(&d, "mknod-fifo", 0).is_empty());

    // 32-bit and x32 syscalls: as on a kernel without them.
    went_on(&d.probe_run(&pol, "x32", &["and-go-on", "x32-getpid"]), "err ENOSYS");
    refusal(&d, "x32", "unseen", "x32:39", "ENOSYS");
    went_on(&d.probe_run(&pol, "int80", &["and-go-on", "int80-getpid"]), "err ENOSYS");
    refusal(&d, "int80", "unseen", "i386:20", "ENOSYS");

    // Monitor mode has no filter: the eBPF layer reports would_deny and lets it run.
    let mon = d.write_policy("mon", &policy("mon", &l).mode("monitor").to_string());
    let o = d.probe_run(&mon, "monitor", &["utimensat", &s(&file)]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok touched"), "{o:?}");
    assert_eq!(mtime(&file), 946_684_800);
    let e = refusals(&d, "monitor", 1);
    assert_eq!((e[0]["verdict"].as_str(), e[0]["layer"].as_str()), (Some("would_deny"), Some("ebpf")), "{e:?}");
}

#[test]
fn git_works_and_hard_links_are_left_to_landlock() {
    if !privileged("git_works_and_hard_links_are_left_to_landlock") {
        return;
    }
    let git = ["/usr/bin/git", "/usr/local/bin/git"].into_iter().find(|g| Path::new(g).exists());
    let d = Daemon::start();
    let l = layout();
    let pol = d.write_policy("git", &policy("git", &l).to_string());
    let out = l.ws.join("out");

    // A hard link inside the write tree is made (the Landlock layer allows it), one that
    // would give a read-only file a writable name is refused by Landlock, not killed.
    std::fs::write(out.join("a.txt"), "a").unwrap();
    let o = d.probe_run(&pol, "link-ok", &["link", &s(&out.join("a.txt")), &s(&out.join("b.txt"))]);
    assert_eq!((status(&o), stdout(&o).trim()), (0, "ok linked"), "{o:?}");
    let o = d.probe_run(&pol, "link-ro", &["link", &s(&l.ws.join("ok.txt")), &s(&out.join("ok.txt"))]);
    assert_eq!(status(&o), 1, "{o:?}");
    assert!(stdout(&o).starts_with("err "), "{o:?}");
    assert!(!out.join("ok.txt").exists());

    // git's object store links each object from a temporary file.
    if let Some(git) = git {
        let repo = out.join("repo");
        std::fs::create_dir(&repo).unwrap();
        let script = format!(
            "export HOME={r} XDG_CONFIG_HOME={r}; cd {r} && {git} init -q . && echo hello > f && {git} add f && {git} -c user.name=t -c user.email=t@example.com commit -qm first && {git} log --format=%s",
            r = s(&repo)
        );
        let o = d.run(&["--policy", pol.to_str().unwrap(), "--name", "git", "--", "/usr/bin/sh", "-c", &script]);
        assert_eq!((status(&o), stdout(&o).trim()), (0, "first"), "{o:?}");
        assert!(repo.join(".git/objects").read_dir().unwrap().count() > 2);
    } else {
        eprintln!("no git on this machine: the git part is skipped");
    }
    for name in ["link-ok", "link-ro", "git"] {
        assert!(refusals(&d, name, 0).is_empty(), "{name}: {:#?}", refusals(&d, name, 0));
    }

    // A deny rule inside the write tree that the Landlock layer refuses up front (it grants
    // around it): links stay the Landlock layer's, which refuses a link of the denied file
    // (it may not gain rights by a new name) and allows the others.
    std::fs::write(out.join("secret"), "s3cret\n").unwrap();
    // (Around a carve-out nothing new is created directly in its directory: the link that
    // works is made in a subdirectory, granted whole.)
    std::fs::create_dir(out.join("sub")).unwrap();
    std::fs::write(out.join("sub/a.txt"), "a\n").unwrap();
    let carved = d.write_policy("carved", &policy("carved", &l).deny([out.join("secret")]).to_string());
    let o = d.probe_run(&carved, "link-secret", &["and-go-on", "link", &s(&out.join("secret")), &s(&out.join("sub-secret"))]);
    assert!(["err EACCES\nwent on", "err errno18\nwent on"].contains(&stdout(&o).trim()), "{o:?}");
    assert!(!out.join("sub-secret").exists());
    went_on(&d.probe_run(&carved, "link-carved-ok", &["and-go-on", "link", &s(&out.join("sub/a.txt")), &s(&out.join("sub/c.txt"))]), "ok linked");

    // One the Landlock layer cannot express (a directory on the way too large to grant entry by
    // entry): a link could give the denied file an allowed name, so the filter refuses links
    // (EPERM, an event), and the process goes on.
    let big = out.join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..=512 {
        std::fs::write(big.join(format!("f{i}")), "").unwrap();
    }
    std::fs::write(big.join("token"), "T\n").unwrap();
    let unexpressed = d.write_policy("unexpressed", &policy("unexpressed", &l).deny([big.join("token")]).to_string());
    went_on(&d.probe_run(&unexpressed, "link-carved", &["and-go-on", "link", &s(&out.join("a.txt")), &s(&out.join("d.txt"))]), "err EPERM");
    assert!(!out.join("d.txt").exists());
    let e = refusal(&d, "link-carved", "unseen", "link", "EPERM");
    assert_eq!(e["path"].as_str(), Some(s(&out.join("a.txt")).as_str()), "{e}");
}

fn shell_status(o: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal().map_or_else(|| o.status.code().unwrap_or(-1), |s| 128 + s)
}

#[test]
fn kill_policies_and_bound_cgroups_keep_the_ebpf_kill() {
    if !privileged("kill_policies_and_bound_cgroups_keep_the_ebpf_kill") {
        return;
    }
    let l = layout();
    let cgroup = TestCgroup::create("agent-guard-seccomptest");
    let (top_name, top) = (cgroup.name(), cgroup.0.clone());
    std::fs::create_dir(top.join("a.scope")).unwrap();
    let pdir = l.tmp.path().join("policies.d");
    std::fs::create_dir(&pdir).unwrap();
    let bound = policy("bound", &l).bind([format!("{top_name}/*.scope")]).to_string();
    std::fs::write(pdir.join("bound.toml"), bound).unwrap();
    let d = Daemon::start_with(&format!("policy_dir = {:?}", s(&pdir)));
    let name_a = format!("/{top_name}/a.scope");
    d.wait_for("binding of a.scope", |e| e["kind"] == "run_start" && e["run_name"] == name_a.as_str());
    let file = l.ws.join("out/file.txt");
    std::fs::write(&file, "x").unwrap();

    // A bound cgroup has no launcher, so no filter: the sys_enter check kills.
    let o = probe_in(&top.join("a.scope"), &["and-go-on", "utimensat", &s(&file)]);
    assert_eq!(shell_status(&o), KILLED, "{o:?}");
    assert!(!stdout(&o).contains("went on"), "{o:?}");
    let e = refusals(&d, &name_a, 1);
    let got = (e[0]["verdict"].as_str(), e[0]["layer"].as_str(), e[0]["name"].as_str());
    assert_eq!(got, (Some("kill"), Some("ebpf"), Some("utimensat")), "{e:?}");
    let o = probe_in(&top.join("a.scope"), &["and-go-on", "link", &s(&file), &s(&l.ws.join("out/l.txt"))]);
    assert_eq!(shell_status(&o), KILLED, "link in a bound cgroup: {o:?}");

    // on_violation = "kill": the launcher installs no filter either.
    let kill = d.write_policy("kill", &policy("kill", &l).on_violation("kill").to_string());
    let o = d.probe_run(&kill, "kill", &["and-go-on", "utimensat", &s(&file)]);
    assert_eq!(status(&o), KILLED, "{o:?}");
    let e = refusals(&d, "kill", 1);
    assert_eq!((e[0]["verdict"].as_str(), e[0]["layer"].as_str()), (Some("kill"), Some("ebpf")), "{e:?}");

    // Only the connection that registered a run may report its refusals (or mark it).
    let deny = d.write_policy("deny", &policy("deny", &l).to_string());
    let mut bg = d.spawn_run(&["--policy", deny.to_str().unwrap(), "--name", "victim", "--", probe().to_str().unwrap(), "sleep", "30"]);
    let id = agent_guard_tests::run_id(&d.wait_for("run_start of victim", |e| e["kind"] == "run_start" && e["run_name"] == "victim"), "victim");
    bg.cgroup = Some(d.cgroup_root.join(&id));
    let forged = format!(
        "{{\"v\":1,\"op\":\"seccomp_refusal\",\"run\":\"{id}\",\"refusal\":{{\"pid\":1,\"syscall\":\"ptrace\",\"nr\":101,\"arg0\":0,\"rule\":\"unseen\",\"errno\":1}}}}\n\
         {{\"v\":1,\"op\":\"seccomp\",\"run\":\"{id}\"}}\n"
    );
    let mut c = std::os::unix::net::UnixStream::connect(d.dir.path().join("control.sock")).unwrap();
    std::io::Write::write_all(&mut c, forged.as_bytes()).unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(c));
    for _ in 0..2 {
        let r: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert!(r["ok"] == false && r["error"].as_str().unwrap().contains("not registered on this connection"), "{r}");
    }
    drop(bg);
    assert!(refusals(&d, "victim", 0).is_empty());

    // `status` says which answer each gets.
    let o = d.cli(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let sys = v["enforcement"].as_array().unwrap().iter().find(|e| e["operation"] == "syscalls").cloned().unwrap();
    let how = sys["how"].as_str().unwrap();
    assert!(how.contains("seccomp") && how.contains("EPERM") && how.contains("SIGKILL") && how.contains("bound"), "{sys}");
}

/// Whether the daemon's syscall check (sys_enter) is attached: its pinned link, and what
/// `status` says, which must agree.
fn check_attached(d: &Daemon) -> bool {
    // Read while nothing changes (pins, status, pins again): a detach between two reads is
    // no disagreement.
    let mut last = None;
    for _ in 0..50 {
        let pinned = d.pinned_links().iter().any(|n| n == "sys_enter");
        let v: Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
        let again = d.pinned_links().iter().any(|n| n == "sys_enter");
        if pinned == again && v["syscall_check_attached"] == pinned {
            return pinned;
        }
        last = Some((pinned, again, v));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("status and the pins disagree for 1 s: {last:?}");
}

/// Waits up to 10 s for the syscall check to be attached (`want`) or detached.
fn wait_check(d: &Daemon, want: bool, why: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while check_attached(d) != want {
        assert!(std::time::Instant::now() < deadline, "{why}: the syscall check is still {}attached\n{}", if want { "not " } else { "" }, d.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The host-wide syscall check (sys_enter, run by every syscall of the host) is attached only
/// while a run needs it: a run whose launcher's seccomp filter refuses all its policy asks
/// does not (and its refusals still happen); a run under `on_violation = "kill"` does, and a
/// denied syscall there is killed as before; when that run ends the check goes, while the
/// covered run goes on. A reload that asks more than the covered run's filter refuses brings
/// the check back before it is published, and the covered run is killed for what its filter
/// lets through.
#[test]
fn the_syscall_check_is_attached_only_while_a_run_needs_it() {
    if !privileged("the_syscall_check_is_attached_only_while_a_run_needs_it") {
        return;
    }
    let d = Daemon::start();
    let l = layout();
    let file = l.ws.join("out/ondemand.txt");
    std::fs::write(&file, "x").unwrap();
    assert!(!check_attached(&d));

    // Covered: the filter is in place before the command starts; the check goes.
    let deny = d.write_policy("covered", &policy("covered", &l).to_string());
    let sh = "while :; do sleep 0.05; done";
    let mut covered = d.spawn_run(&["--policy", deny.to_str().unwrap(), "--name", "covered", "--", "sh", "-c", sh]);
    let id = agent_guard_tests::run_id(&d.wait_for("run_start of covered", |e| e["kind"] == "run_start" && e["run_name"] == "covered"), "covered");
    covered.cgroup = Some(d.cgroup_root.join(&id));
    wait_check(&d, false, "only a covered run exists");
    assert!(d.stderr().contains("syscall check detached"), "{}", d.stderr());
    assert!(d.pinned_links().iter().any(|n| n == "tp-ag_exit_openat"), "the syscall tracepoints stay: {:?}", d.pinned_links());
    // Its refusals need no check: an errno, the process goes on.
    went_on(&d.probe_run(&deny, "covered-utimensat", &["and-go-on", "utimensat", &s(&file)]), "err EPERM");
    assert!(!check_attached(&d));

    // on_violation = "kill": no filter, so the check is attached while it runs, and kills.
    let kill = d.write_policy("needs", &policy("needs", &l).on_violation("kill").to_string());
    let mut needs = d.spawn_run(&["--policy", kill.to_str().unwrap(), "--name", "needs", "--", "sh", "-c", sh]);
    let nid = agent_guard_tests::run_id(&d.wait_for("run_start of needs", |e| e["kind"] == "run_start" && e["run_name"] == "needs"), "needs");
    needs.cgroup = Some(d.cgroup_root.join(&nid));
    assert!(check_attached(&d), "attached before the run's entry exists");
    let o = d.probe_run(&kill, "needs-utimensat", &["and-go-on", "utimensat", &s(&file)]);
    assert_eq!(status(&o), KILLED, "{o:?}");
    let e = refusals(&d, "needs-utimensat", 1);
    assert_eq!((e[0]["verdict"].as_str(), e[0]["layer"].as_str()), (Some("kill"), Some("ebpf")), "{e:?}");
    // The last run that needs it ends: detached, the covered run still alive.
    assert!(d.cli(&["kill", &nid]).status.success());
    assert_eq!(needs.wait_exit(std::time::Duration::from_secs(10)), Some(KILLED));
    wait_check(&d, false, "the run that needed the check ended");
    assert!(agent_guard_tests::cgroup_populated(&d.cgroup_root.join(&id)), "the covered run goes on");

    // A reload that denies what the covered run's filter lets through: attached first.
    let more = policy("covered", &l).syscalls_deny(["mkdir"]);
    let o = d.cli(&["policy", "apply", d.write_policy("covered", &more.to_string()).to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    assert!(check_attached(&d), "attached before the new version was published");
    let probe_in_run = agent_guard_tests::probe_in(&d.cgroup_root.join(&id), &["and-go-on", "mkdir", &s(&l.ws.join("out/made"))]);
    assert_eq!(shell_status(&probe_in_run), KILLED, "{probe_in_run:?}");
    // Ended through the daemon (its launcher reports the end; a launcher killed before it
    // could would leave the run registered, and the check with it).
    assert!(d.cli(&["kill", &id]).status.success());
    assert_eq!(covered.wait_exit(std::time::Duration::from_secs(10)), Some(KILLED));
    wait_check(&d, false, "no run left");
}
