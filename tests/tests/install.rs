//! The service: the systemd unit, sd_notify from the daemon, deploy/install.sh into a
//! temporary root, the example policies and the Debian package's metadata.
use std::{
    collections::BTreeMap,
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use agent_guard_tests::{binary, cgroup2_mount, require, require_root, stderr, stdout, Daemon};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Whether `tool` runs (tests without it skip: a failure under CI=true).
fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("deploy/agent-guard.service")).unwrap()
}

/// `Key=value` lines of the unit (values of repeated keys joined by a space).
fn unit_settings() -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    for l in unit_text().lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.starts_with('[')) {
        if let Some((k, v)) = l.split_once('=') {
            let e = m.entry(k.to_string()).or_default();
            if !e.is_empty() {
                e.push(' ');
            }
            e.push_str(v);
        }
    }
    m
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    require!(have("systemd-analyze"), "systemd-analyze is not installed");
    // verify wants ExecStart's binary to exist: check a copy that runs the one under test.
    let tmp = tempfile::tempdir().unwrap();
    let text = unit_text();
    assert!(text.contains("\nExecStart=/usr/bin/agent-guard --config /etc/agent-guard/config.toml daemon\n"), "{text}");
    let copy = tmp.path().join("agent-guard.service");
    std::fs::write(&copy, text.replace("ExecStart=/usr/bin/agent-guard ", &format!("ExecStart={} ", binary().display())))
        .unwrap();
    let o = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "systemd-analyze verify failed: {err}");
    let about_ours: Vec<&str> = err.lines().filter(|l| l.contains("agent-guard")).collect();
    assert!(about_ours.is_empty(), "systemd-analyze verify complains about the unit:\n{err}");
}

#[test]
fn unit_is_a_notify_service_with_watchdog_and_the_paths_the_config_writes() {
    let s = unit_settings();
    for (k, v) in [("Type", "notify"), ("Restart", "always"), ("NotifyAccess", "main"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"), ("RuntimeDirectory", "agent-guard"), ("RuntimeDirectoryPreserve", "yes"), ("LogsDirectory", "agent-guard")] {
        assert_eq!(s.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(s.get("WatchdogSec").is_some_and(|w| w.trim_end_matches('s').parse::<u32>().is_ok_and(|n| n > 0)), "{s:?}");
    let caps: Vec<&str> = s["CapabilityBoundingSet"].split_whitespace().collect();
    for c in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_CHOWN"] {
        assert!(caps.contains(&c), "{c} missing from {caps:?}");
        assert!(unit_text().contains(&format!("#   {c}")), "the unit does not say why it needs {c}");
    }
    // Every default path the daemon writes is writable under ProtectSystem=strict.
    let rw: Vec<&str> = s["ReadWritePaths"].split_whitespace().collect();
    let config = std::fs::read_to_string(repo().join("deploy/config.toml")).unwrap();
    let value = |key: &str| -> String {
        config
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.trim_start().strip_prefix('=')))
            .unwrap_or_else(|| panic!("{key} in deploy/config.toml"))
            .trim()
            .trim_matches('"')
            .to_string()
    };
    let writable = |p: &str| {
        rw.iter().any(|d| Path::new(p).starts_with(d))
            || Path::new(p).starts_with(format!("/run/{}", s["RuntimeDirectory"]))
            || Path::new(p).starts_with(format!("/var/log/{}", s["LogsDirectory"]))
    };
    for key in ["control_socket", "events_log", "state_dir", "bpffs_dir"] {
        let p = value(key);
        assert!(writable(&p), "{key} = {p} is not writable under the unit's sandbox");
    }
    assert!(rw.contains(&"/sys/fs/cgroup"), "run cgroups are created below the cgroup2 mount: {rw:?}");
}

/// A daemon started with NOTIFY_SOCKET (and WATCHDOG_USEC), as systemd starts a Type=notify
/// unit; not waited for.
fn notified_daemon(notify: &Path, watchdog_usec: Option<u64>) -> Daemon {
    let mut d = Daemon::configure(&binary(), "agent-guard-notify", "");
    d.env("NOTIFY_SOCKET", notify.to_str().unwrap());
    if let Some(us) = watchdog_usec {
        d.env("WATCHDOG_USEC", &us.to_string());
    }
    d.spawn().unwrap();
    d
}

/// Fails the test if the daemon has exited.
fn assert_alive(d: &mut Daemon) {
    if let Some(status) = d.exited() {
        panic!("the daemon exited ({status}):\n{}", d.stderr());
    }
}

/// The next datagram, or None after `timeout`.
fn next_message(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv on the notify socket: {e}"),
    }
}

#[test]
fn daemon_notifies_ready_watchdog_and_stopping() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    // WatchdogSec=0.2s: a ping every 100 ms.
    let mut d = notified_daemon(&path, Some(200_000));

    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        assert!(Instant::now() < deadline, "no READY=1 after 60 s; daemon:\n{}", d.stderr());
        assert_alive(&mut d);
        match next_message(&sock, Duration::from_secs(1)) {
            Some(m) if m.lines().any(|l| l == "READY=1") => break m,
            Some(m) => assert!(!m.contains("WATCHDOG=1"), "a watchdog ping before READY=1: {m:?}"),
            None => {}
        }
    };
    assert!(ready.contains("STATUS="), "{ready:?}");
    // Ready means ready: the control socket answers at once.
    let o = Command::new(binary()).arg("--config").arg(&d.config).arg("status").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "status right after READY=1: {o:?}");
    assert!(d.stderr().contains("ready in"), "{}", d.stderr());

    let mut pings = 0;
    let t = Instant::now();
    while pings < 3 {
        assert!(t.elapsed() < Duration::from_secs(10), "only {pings} WATCHDOG=1 in 10 s; daemon:\n{}", d.stderr());
        if next_message(&sock, Duration::from_secs(1)).is_some_and(|m| m == "WATCHDOG=1") {
            pings += 1;
        }
    }

    let status = d.signal(libc::SIGTERM).unwrap();
    assert!(status.success(), "daemon exit after SIGTERM: {status}\n{}", d.stderr());
    let mut rest = Vec::new();
    while let Some(m) = next_message(&sock, Duration::from_millis(200)) {
        rest.push(m);
    }
    assert!(rest.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")), "no STOPPING=1 after SIGTERM: {rest:?}");
}

#[test]
fn daemon_without_notify_socket_or_with_a_dead_one_still_runs() {
    require_root!();
    // NOTIFY_SOCKET naming a socket nobody listens on: sends fail, the daemon goes on.
    let tmp = tempfile::tempdir().unwrap();
    let mut d = notified_daemon(&tmp.path().join("nobody.sock"), Some(100_000));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.stderr().contains("ready in") {
        assert!(Instant::now() < deadline, "not ready after 60 s:\n{}", d.stderr());
        assert_alive(&mut d);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let o = Command::new(binary()).arg("--config").arg(&d.config).arg("status").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}\n{}", d.stderr());
    assert!(d.signal(libc::SIGTERM).unwrap().success(), "{}", d.stderr());
    // And the plain case: the Daemon helper starts without NOTIFY_SOCKET.
    drop(Daemon::start());
}

fn policies() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn example_policies_pass_policy_check() {
    let names: Vec<String> = policies().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["coding-agent.toml", "data-pipeline.toml", "support-agent.toml"]);
    for p in policies() {
        let o = Command::new(binary()).args(["policy", "check"]).arg(&p).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}: {o:?}", p.display());
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(stdout(&o).contains(&format!("{}: ok (name {stem},", p.display())), "{o:?}");
        // No warnings, except the one a coding agent cannot avoid: it runs shell scripts.
        for w in stderr(&o).lines() {
            assert!(stem == "coding-agent" && w.contains("allows the shell"), "{}: unexpected warning: {w}", p.display());
        }
    }
}

#[test]
fn example_policies_load_into_a_daemon() {
    require_root!();
    let d = Daemon::start_with(&format!("policy_dir = {:?}", repo().join("deploy/policies").display().to_string()));
    let o = d.cli(&["policy", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut names: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["coding-agent", "data-pipeline", "support-agent"], "{list}\n{}", d.stderr());
    let errors: Vec<_> = d.events().into_iter().filter(|e| e["kind"] == "policy_reload" && e["result"] != "ok").collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

// ---- deploy/install.sh --------------------------------------------------------------------

fn install_sh(destdir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(repo().join("deploy/install.sh"));
    c.env("DESTDIR", destdir).args(args).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "install.sh failed: {}\n{}", o.status, stderr(o));
    stderr(o)
}

/// Every file and directory below `root`, as "path" (files) or "path/" (directories), with
/// its mode.
fn tree(root: &Path) -> BTreeMap<String, u32> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u32>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.insert(format!("{rel}/"), m.permissions().mode() & 0o7777);
                walk(root, &p, out);
            } else {
                out.insert(rel, m.permissions().mode() & 0o7777);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn files(t: &BTreeMap<String, u32>) -> Vec<&str> {
    t.keys().filter(|k| !k.ends_with('/')).map(String::as_str).collect()
}

fn sha256(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    stdout(&o).split_whitespace().next().unwrap().to_string()
}

fn group_exists(name: &str) -> bool {
    Command::new("getent").args(["group", name]).output().unwrap().status.success()
}

#[test]
fn install_sh_into_destdir_is_complete_idempotent_and_uninstalls() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let bin = binary();
    let bin = bin.to_str().unwrap();
    let group_before = group_exists("agent-guard");

    let out = ok(&install_sh(r, &["--binary", bin], &[]));
    assert!(out.contains("staged only"), "{out}");
    let t = tree(r);
    assert_eq!(
        files(&t),
        [
            "/etc/agent-guard/config.toml",
            "/etc/agent-guard/policies.d/coding-agent.toml",
            "/etc/agent-guard/policies.d/data-pipeline.toml",
            "/etc/agent-guard/policies.d/support-agent.toml",
            "/lib/systemd/system/agent-guard.service",
            "/usr/bin/agent-guard",
            "/var/lib/agent-guard/install-manifest",
        ],
        "{t:#?}"
    );
    assert_eq!(t["/usr/bin/agent-guard"], 0o755);
    assert_eq!(t["/etc/agent-guard/config.toml"], 0o644);
    assert_eq!(t["/lib/systemd/system/agent-guard.service"], 0o644);
    assert_eq!(t["/var/log/agent-guard/"], 0o750);
    assert_eq!(std::fs::read(r.join("usr/bin/agent-guard")).unwrap(), std::fs::read(bin).unwrap());
    // The unit as shipped (ExecStart is already /usr/bin/agent-guard with PREFIX=/usr).
    assert_eq!(std::fs::read_to_string(r.join("lib/systemd/system/agent-guard.service")).unwrap(), unit_text());
    assert_eq!(
        std::fs::read(r.join("etc/agent-guard/config.toml")).unwrap(),
        std::fs::read(repo().join("deploy/config.toml")).unwrap()
    );
    for p in policies() {
        let installed = r.join("etc/agent-guard/policies.d").join(p.file_name().unwrap());
        assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(&p).unwrap(), "{}", p.display());
    }
    let manifest = std::fs::read_to_string(r.join("var/lib/agent-guard/install-manifest")).unwrap();
    assert!(manifest.contains("would create group agent-guard"), "{manifest}");
    assert!(manifest.contains("would enable agent-guard.service"), "{manifest}");
    assert!(manifest.contains(&format!("file {} /usr/bin/agent-guard", sha256(Path::new(bin)))), "{manifest}");
    assert_eq!(group_exists("agent-guard"), group_before, "a DESTDIR install must not create the group");

    // Again: nothing changes.
    let out = ok(&install_sh(r, &["--binary", bin], &[]));
    assert!(out.contains("/etc/agent-guard/config.toml is up to date"), "{out}");
    assert_eq!(tree(r), t);

    // An edited config is kept; an unmodified policy from an older version is upgraded.
    let config = r.join("etc/agent-guard/config.toml");
    std::fs::write(&config, "hold_timeout = \"10m\"\n").unwrap();
    let policy = r.join("etc/agent-guard/policies.d/support-agent.toml");
    let old = "name = \"support-agent\"\n";
    std::fs::write(&policy, old).unwrap();
    let manifest_path = r.join("var/lib/agent-guard/install-manifest");
    let shipped = sha256(&repo().join("deploy/policies/support-agent.toml"));
    let m = std::fs::read_to_string(&manifest_path).unwrap().replace(&shipped, &sha256(&policy));
    std::fs::write(&manifest_path, m).unwrap();
    let out = ok(&install_sh(r, &["--no-build", "--binary", bin], &[]));
    assert!(out.contains("kept /etc/agent-guard/config.toml"), "{out}");
    assert!(out.contains("upgraded /etc/agent-guard/policies.d/support-agent.toml"), "{out}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "hold_timeout = \"10m\"\n");
    assert_eq!(sha256(&policy), shipped);

    // Uninstall: the binary, the unit and unmodified files go; the edited config stays.
    let out = ok(&install_sh(r, &["--uninstall"], &[]));
    assert!(out.contains("kept (modified locally; --purge removes them): /etc/agent-guard/config.toml"), "{out}");
    assert_eq!(files(&tree(r)), ["/etc/agent-guard/config.toml"], "{out}");
    // --purge takes the rest; a second uninstall has nothing to do.
    ok(&install_sh(r, &["--uninstall", "--purge"], &[]));
    assert_eq!(files(&tree(r)), Vec::<&str>::new());
    let out = ok(&install_sh(r, &["--uninstall"], &[]));
    assert!(out.contains("nothing to uninstall"), "{out}");
    assert_eq!(group_exists("agent-guard"), group_before);
}

#[test]
fn install_sh_local_prefix_rewrites_execstart_and_refuses_bad_arguments() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let bin = binary();
    let bin = bin.to_str().unwrap();
    ok(&install_sh(r, &["--binary", bin], &[("PREFIX", "/usr/local")]));
    let unit = std::fs::read_to_string(r.join("etc/systemd/system/agent-guard.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/local/bin/agent-guard --config /etc/agent-guard/config.toml daemon\n"), "{unit}");
    assert_eq!(unit.replace("/usr/local/bin/agent-guard", "/usr/bin/agent-guard"), unit_text());
    assert!(r.join("usr/local/bin/agent-guard").exists());
    ok(&install_sh(r, &["--uninstall", "--purge"], &[("PREFIX", "/usr/local")]));
    assert_eq!(files(&tree(r)), Vec::<&str>::new());

    for (args, msg) in [
        (&["--frobnicate"][..], "unknown argument --frobnicate"),
        (&["--purge"][..], "--purge goes with --uninstall"),
        (&["--binary", "/nonexistent/agent-guard"][..], "/nonexistent/agent-guard does not exist"),
    ] {
        let o = install_sh(r, args, &[]);
        assert!(!o.status.success(), "{args:?}: {o:?}");
        assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
    }
    let o = install_sh(r, &["--help"], &[]);
    assert!(o.status.success() && stdout(&o).contains("--uninstall"), "{o:?}");
}

// ---- the Debian package -------------------------------------------------------------------

/// The Debian package is built by `cargo xtask deb` (cargo-deb); CI does not install
/// cargo-deb, so this checks that the metadata names files that exist and that every
/// deploy/ file a host needs is packaged.
#[test]
fn deb_metadata_assets_exist_and_cover_deploy() {
    let crate_dir = repo().join("agent-guard");
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    assert!(deb["maintainer"].as_str().is_some_and(|m| m.contains('<')), "{deb}");
    let mut dests = BTreeMap::new();
    for a in deb["assets"].as_array().unwrap() {
        let a: Vec<&str> = a.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let (src, dest, mode) = (a[0], a[1], a[2]);
        if src != "target/release/agent-guard" {
            let p = crate_dir.join(src);
            assert!(p.is_file(), "asset {src} ({}) does not exist", p.display());
        }
        assert!(!dest.starts_with('/'), "{dest}: cargo-deb destinations are relative");
        dests.insert(dest.to_string(), (src.to_string(), mode.to_string()));
    }
    assert_eq!(dests["usr/bin/"], ("target/release/agent-guard".into(), "755".into()));
    assert_eq!(dests["lib/systemd/system/agent-guard.service"].0, "../deploy/agent-guard.service");
    assert_eq!(dests["etc/agent-guard/config.toml"].0, "../deploy/config.toml");
    for p in policies() {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(dests[&format!("etc/agent-guard/policies.d/{name}")].0, format!("../deploy/policies/{name}"));
    }
    // The unit's ExecStart is where the package puts the binary.
    assert!(unit_text().contains("ExecStart=/usr/bin/agent-guard "));
    let scripts = crate_dir.join(deb["maintainer-scripts"].as_str().unwrap());
    for s in ["postinst", "prerm", "postrm"] {
        let p = scripts.join(s);
        let mode = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode();
        assert!(mode & 0o111 != 0, "{} is not executable", p.display());
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("#!/bin/sh\n") && text.contains("\nset -e\n"), "{}", p.display());
    }
    let prerm = std::fs::read_to_string(scripts.join("prerm")).unwrap();
    assert!(prerm.contains("/usr/bin/agent-guard --config /etc/agent-guard/config.toml daemon --uninstall"), "{prerm}");
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let tool = "shellcheck";
    // `deploy/setup-build.sh --test` (run by .ci/run and `cargo xtask test`) installs it.
    require!(Command::new(tool).arg("--version").output().is_ok(), "{tool} is not installed (deploy/setup-build.sh --test)");
    let d = repo().join("deploy");
    let o = Command::new(tool)
        .arg(d.join("install.sh"))
        .arg(d.join("setup-build.sh"))
        .args(["postinst", "prerm", "postrm"].map(|s| d.join("debian").join(s)))
        .arg(repo().join(".ci/run"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stdout(&o));
}

// ---- a real install, without DESTDIR, in a private mount namespace -------------------------

/// Inside `unshare --mount`: /etc, /usr/local, /var and /run are overlays whose changes land in
/// the test's directory, and /run/systemd is hidden (so install.sh takes the no-systemd path
/// and never talks to a host's systemd). Runs install.sh for real: group, direct start,
/// reinstall, uninstall.
const REAL_INSTALL: &str = r#"
set -euo pipefail
T="$1" BIN="$2" REPO="$3" NAME="$4"
for d in etc usr/local var run; do
    mkdir -p "$T/upper/$d" "$T/work/$d"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$T/upper/$d,workdir=$T/work/$d" "/$d"
done
if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; fi
getent group agent-guard >/dev/null && groupdel agent-guard   # only in the overlay
rm -rf /etc/agent-guard /usr/local/bin/agent-guard /var/lib/agent-guard /run/agent-guard /var/log/agent-guard
mkdir -p /etc/agent-guard
cat > /etc/agent-guard/config.toml <<TOML
cgroup_root = "$NAME"
bpffs_dir = "/sys/fs/bpf/$NAME"
TOML
AG="/usr/local/bin/agent-guard --config /etc/agent-guard/config.toml"

"$REPO/deploy/install.sh" --binary "$BIN" 2>&1 | tee "$T/install1.log"
grep -q "created group agent-guard" "$T/install1.log"
grep -q "systemd is not running here" "$T/install1.log"
grep -q "daemon running (pid" "$T/install1.log"
getent group agent-guard >/dev/null
pid1="$(cat /run/agent-guard/daemon.pid)"
$AG status
[ "$(stat -c %G /run/agent-guard/control.sock)" = agent-guard ]
$AG policy list | grep -q support-agent
$AG run --name smoke -- /bin/true
grep -q "kept /etc/agent-guard/config.toml" "$T/install1.log"
[ -x /usr/local/bin/agent-guard ] && [ -f /etc/systemd/system/agent-guard.service ]

# Again (an upgrade): the daemon it started is replaced, and the new one answers.
"$REPO/deploy/install.sh" --binary "$BIN" 2>&1 | tee "$T/install2.log"
grep -q "stopping the daemon started by install.sh (pid $pid1)" "$T/install2.log"
grep -q "group agent-guard exists" "$T/install2.log"
pid2="$(cat /run/agent-guard/daemon.pid)"
[ "$pid2" != "$pid1" ] && [ ! -d "/proc/$pid1" ]
$AG status

"$REPO/deploy/install.sh" --uninstall 2>&1 | tee "$T/uninstall.log"
grep -q "removing pinned kernel state" "$T/uninstall.log"
grep -q "removed group agent-guard" "$T/uninstall.log"
grep -q "kept (modified locally; --purge removes them): /etc/agent-guard/config.toml" "$T/uninstall.log"
[ ! -d "/proc/$pid2" ]
! getent group agent-guard >/dev/null
[ ! -e /usr/local/bin/agent-guard ] && [ ! -e /etc/systemd/system/agent-guard.service ]
[ ! -e /etc/agent-guard/policies.d ] && [ ! -e /var/lib/agent-guard/install-manifest ]
[ ! -e "/sys/fs/bpf/$NAME" ]
"$REPO/deploy/install.sh" --uninstall --purge
[ ! -e /etc/agent-guard ]
echo "REAL INSTALL OK"
"#;

#[test]
fn install_sh_for_real_without_systemd_starts_the_daemon_and_uninstalls() {
    require_root!();
    require!(have("unshare"), "unshare is not installed");
    let tmp = tempfile::Builder::new().prefix("ag-install-").tempdir().unwrap();
    let t = tmp.path();
    let name = format!("agent-guard-install-{}", std::process::id());
    let script = t.join("real-install.sh");
    std::fs::write(&script, REAL_INSTALL).unwrap();
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash"])
        .arg(&script)
        .arg(t)
        .arg(binary())
        .arg(repo())
        .arg(&name)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // Whatever happened, nothing stays: a daemon it left is ours to stop (by the pid file in
    // the overlay's upper layer), then its pins and cgroup root go.
    if let Ok(pid) = std::fs::read_to_string(t.join("upper/run/agent-guard/daemon.pid")) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("agent-guard") {
                // SAFETY: kill(2) on the daemon this test's install.sh started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
    let pins = PathBuf::from(format!("/sys/fs/bpf/{name}"));
    if pins.exists() {
        let _ = std::fs::remove_dir_all(&pins);
    }
    let _ = std::fs::remove_dir(cgroup2_mount().join(&name));
    let log = format!("stdout:\n{}\nstderr:\n{}", stdout(&o), stderr(&o));
    assert!(o.status.success() && stdout(&o).contains("REAL INSTALL OK"), "{log}");
}
