//! The policy lifecycle on a real kernel: a scripted task learned in monitor mode under a
//! near-empty policy (`policy suggest --run`), the suggestion checked and enforced (the task
//! passes with no violation, what it never did is refused), `--base` adding exactly what a
//! policy lacks, and the history of versions with `rollback` across a daemon restart.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use agent_guard_tests::{
    binary, privileged, probe, s, status, stderr, stdout,
    users::{TestGroup, TestUser},
    write_config, Daemon, PolicyFile,
};
use serde_json::Value;

const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The task: reads its data, sorts into out/, a temporary file in /tmp, a connect to the
/// test's server with the probe. Every step must succeed.
const TASK: &str = r#"#!/bin/sh
set -eu
cd "$WS"
cat data/a.csv data/b.csv data/c.csv > /dev/null
grep -c 1 data/a.csv
sort data/b.csv > out/sorted.txt
wc -l out/sorted.txt
tmp=$(mktemp)
echo scratch > "$tmp"
cat "$tmp"
rm -f "$tmp"
"$WS/tools/agprobe" connect "127.0.0.1:$PORT"
echo task done
"#;

/// A fresh tree for one test, outside /tmp (which the task writes) and with names that do not
/// look temporary (the suggestion folds those into their directory).
struct Site {
    root: PathBuf,
    ws: PathBuf,
}

impl Site {
    fn new(test: &str) -> Site {
        // The pid in letters: digits would be a pid-numbered name, which the suggestion folds.
        let pid: String = std::process::id().to_string().bytes().map(|d| (b'a' + (d - b'0')) as char).collect();
        let root = PathBuf::from(format!("/var/tmp/agent-guard-tests/lifecycle-{test}-{pid}"));
        let _ = std::fs::remove_dir_all(&root);
        let ws = root.join("ws");
        for d in ["data", "out", "tools"] {
            std::fs::create_dir_all(ws.join(d)).unwrap();
        }
        for (f, text) in [("a.csv", "id,n\n1,3\n"), ("b.csv", "b\nc\na\n"), ("c.csv", "x\n"), ("ok.txt", "hello\n")] {
            std::fs::write(ws.join("data").join(f), text).unwrap();
        }
        std::fs::write(ws.join(".env"), "TOKEN=envsecret\n").unwrap();
        std::fs::copy(probe(), ws.join("tools/agprobe")).unwrap();
        let task = ws.join("tools/task.sh");
        std::fs::write(&task, TASK).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&task, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ws = ws.canonicalize().unwrap();
        Site { root, ws }
    }

    fn probe(&self) -> String {
        s(&self.ws.join("tools/agprobe"))
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A loopback server that accepts and closes connections until the test process ends.
fn server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in l.incoming() {});
    port
}

/// `agent-guard run --policy POLICY --name NAME -- ARGV` with only PATH, WS and PORT set.
fn run(d: &Daemon, policy: &str, name: &str, site: &Site, port: u16, argv: &[&str]) -> Output {
    let mut c = d.command(&[&["run", "--policy", policy, "--name", name, "--"], argv].concat());
    c.env_clear().env("PATH", PATH).env("WS", s(&site.ws)).env("PORT", port.to_string());
    c.output().unwrap()
}

fn task(d: &Daemon, policy: &str, name: &str, site: &Site, port: u16) -> Output {
    let sh = s(&site.ws.join("tools/task.sh"));
    run(d, policy, name, site, port, &["/bin/sh", &sh])
}

/// Every event of the run named `name`, once its run_end is in the log.
fn events_of(d: &Daemon, name: &str) -> Vec<Value> {
    d.wait_for(&format!("run_end of {name}"), |e| e["kind"] == "run_end" && e["run_name"] == name);
    // Kernel events of its last moments may trail the daemon's run_end.
    std::thread::sleep(Duration::from_millis(300));
    d.events().into_iter().filter(|e| e["run_name"] == name).collect()
}

fn violations(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| matches!(e["verdict"].as_str(), Some("would_deny" | "deny" | "kill" | "hold")))
        .map(|e| format!("{} {} {} {}", e["kind"], e["verdict"], e["rule"], e["path"].as_str().or(e["addr"].as_str()).unwrap_or("")))
        .collect()
}

fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {o:?}\nstderr: {}", stderr(o));
    stdout(o)
}

/// Applies the policy text under `file_name` in the daemon's directory; its path.
fn apply(d: &Daemon, file_name: &str, text: &str) -> PathBuf {
    let p = d.write_policy(file_name, text);
    ok(&d.cli(&["policy", "apply", &s(&p)]), "policy apply");
    p
}

/// The task in monitor mode under a policy that names nothing, then `policy suggest --run`:
/// the suggestion's text.
fn learn(d: &Daemon, site: &Site, port: u16) -> String {
    apply(d, "learn-empty", &PolicyFile::new("learn").mode("monitor").to_string());
    let o = task(d, "learn", "learn-monitor", site, port);
    assert_eq!(status(&o), 0, "{o:?}");
    assert!(stdout(&o).ends_with("task done\n"), "{o:?}");
    let ev = events_of(d, "learn-monitor");
    assert!(!violations(&ev).is_empty(), "a near-empty monitor policy reports what the task did");
    let o = d.cli(&["policy", "suggest", "--run", "learn-monitor"]);
    eprintln!("policy suggest: {}", stderr(&o));
    ok(&o, "policy suggest")
}

#[test]
fn a_policy_learned_in_monitor_mode_passes_the_task_in_enforce_mode_and_refuses_the_rest() {
    if !privileged("a_policy_learned_in_monitor_mode_passes_the_task_in_enforce_mode_and_refuses_the_rest") {
        return;
    }
    let d = Daemon::start();
    let site = Site::new("learn");
    let port = server();
    let text = learn(&d, &site, port);
    eprintln!("suggestion:\n{text}");
    let ws = s(&site.ws);
    // Evidence on every rule, the data directory folded, the write kept apart, the host and
    // port reached, the exact program.
    assert!(text.contains("Rules of thumb"), "{text}");
    for want in [
        format!("\"{ws}/data\",  # "),
        format!("\"{ws}/out\",  # "),
        format!("\"{ws}/tools/agprobe\",  # "),
        format!("\"127.0.0.1/32:{port}\",  # 1 event, first: connect 127.0.0.1:{port}; run "),
        "\"/tmp\",  # ".to_string(),
        "\"/dev/null\",  # ".to_string(),
    ] {
        assert!(text.contains(&want), "{want}:\n{text}");
    }
    let file = d.write_policy("learned", &text);
    let o = d.cli(&["policy", "check", &s(&file)]);
    ok(&o, "policy check of the suggestion");
    let learned: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(learned["name"].as_str(), Some("learn"));
    assert_eq!(learned["mode"].as_str(), Some("enforce"));
    for list in [&learned["files"]["read"], &learned["files"]["write"]] {
        for rule in list.as_array().unwrap() {
            let rule = rule.as_str().unwrap();
            assert!(rule != "/" && rule != "/etc" && !rule.ends_with("/.env") && rule != ws, "too wide or a secret: {rule}\n{text}");
        }
    }

    // The same task, enforced under the suggestion: it passes with no violation.
    ok(&d.cli(&["policy", "apply", &s(&file)]), "policy apply of the suggestion");
    let o = task(&d, "learn", "learn-enforce", &site, port);
    assert!(status(&o) != 125, "the run did not start: {o:?}");
    let ev = events_of(&d, "learn-enforce");
    assert_eq!(status(&o), 0, "{o:?}\nviolations: {:#?}", violations(&ev));
    assert!(stdout(&o).ends_with("task done\n"), "{o:?}");
    assert_eq!(violations(&ev), Vec::<String>::new(), "{o:?}");
    assert_eq!(std::fs::read_to_string(site.ws.join("out/sorted.txt")).unwrap(), "a\nb\nc\n");

    // What the task never did is refused: /etc/shadow, and a connect to another port.
    let agprobe = site.probe();
    let okf = format!("{ws}/data/ok.txt");
    let o = run(&d, "learn", "learn-shadow", &site, port, &[&agprobe, "read-then", "/etc/shadow", &okf]);
    assert_eq!((status(&o), stdout(&o).as_str()), (0, "first err EACCES\nok hello\n"), "{o:?}");
    let ev = events_of(&d, "learn-shadow");
    assert!(ev.iter().any(|e| e["verdict"] == "deny" && e["rule"] == "files.read" && e["path"] == "/etc/shadow"), "{ev:#?}");
    let other = if port == 65535 { 1024 } else { port + 1 };
    let o = run(&d, "learn", "learn-port", &site, port, &[&agprobe, "connect", &format!("127.0.0.1:{other}")]);
    assert_eq!(status(&o), 1, "{o:?}");
    assert!(stdout(&o).starts_with("err "), "{o:?}");
    let ev = events_of(&d, "learn-port");
    assert!(ev.iter().any(|e| e["verdict"] == "deny" && e["rule"] == "network.connect"), "{ev:#?}");
    // And the secret it reads in monitor mode is never suggested as an allow.
    apply(&d, "learn-empty", &PolicyFile::new("learn").mode("monitor").to_string());
    let o = run(&d, "learn", "learn-secret", &site, port, &[&agprobe, "read", &format!("{ws}/.env")]);
    assert_eq!(status(&o), 0, "{o:?}");
    events_of(&d, "learn-secret");
    let o = d.cli(&["policy", "suggest", "--run", "learn-monitor", "--run", "learn-secret"]);
    let text = ok(&o, "policy suggest with a secret");
    assert!(stderr(&o).contains(&format!("read {ws}/.env, a likely secret (.env file): not allowed")), "{}", stderr(&o));
    let p: toml::Value = toml::from_str(&text).unwrap();
    let denied: Vec<&str> = p["files"].get("deny").and_then(|d| d.as_array()).map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    let reads: Vec<&str> = p["files"]["read"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    let covered = reads.iter().any(|r| Path::new(&format!("{ws}/.env")).starts_with(r));
    assert!(!reads.contains(&format!("{ws}/.env").as_str()), "{text}");
    assert!(!covered || denied.contains(&format!("{ws}/.env").as_str()), "{text}");
    assert!(text.contains(&format!("\"{ws}/.env\"")), "a deny suggestion: {text}");
}

#[test]
fn suggest_with_a_base_policy_adds_exactly_the_two_rules_it_lacks() {
    if !privileged("suggest_with_a_base_policy_adds_exactly_the_two_rules_it_lacks") {
        return;
    }
    let d = Daemon::start();
    let site = Site::new("base");
    let port = server();
    let text = learn(&d, &site, port);
    // A restarted daemon no longer holds the run's events: they come from the events log.
    let mut d = d;
    d.restart();
    let again = ok(&d.cli(&["policy", "suggest", "--run", "learn-monitor"]), "policy suggest from the log");
    assert_eq!(again, text);
    // The learned policy without its data directory and its one connect rule, in monitor
    // mode, as "learn-base".
    let mut p: toml::Table = toml::from_str(&text).unwrap();
    p.insert("name".into(), "learn-base".into());
    p.insert("mode".into(), "monitor".into());
    let data = format!("{}/data", s(&site.ws));
    let reads = p["files"]["read"].as_array().unwrap().clone();
    assert!(reads.iter().any(|r| r.as_str() == Some(&data)), "{text}");
    let reads: Vec<toml::Value> = reads.into_iter().filter(|r| r.as_str() != Some(&data)).collect();
    p.get_mut("files").unwrap().as_table_mut().unwrap().insert("read".into(), reads.into());
    p.get_mut("network").unwrap().as_table_mut().unwrap().remove("connect");
    let base = apply(&d, "learn-base", &toml::to_string(&p).unwrap());

    let o = task(&d, "learn-base", "base-monitor", &site, port);
    assert_eq!(status(&o), 0, "{o:?}");
    let ev = events_of(&d, "base-monitor");
    assert!(!violations(&ev).is_empty(), "{ev:#?}");
    let o = d.cli(&["policy", "suggest", "--base", "learn-base", "--run", "base-monitor"]);
    let suggested = ok(&o, "policy suggest --base");
    eprintln!("{}\n{suggested}", stderr(&o));
    assert!(stderr(&o).contains("2 additions to policy learn-base"), "{}", stderr(&o));
    let file = d.write_policy("learn-base-suggested", &suggested);
    ok(&d.cli(&["policy", "check", &s(&file)]), "policy check");
    // Against the loaded base (by name) and its file: the same two lines.
    for old in ["learn-base".to_string(), s(&base)] {
        let o = d.cli(&["policy", "diff", &old, &s(&file)]);
        assert_eq!(status(&o), 1, "{o:?}");
        let changes: Vec<String> = stdout(&o).lines().filter(|l| l.starts_with("+ ") || l.starts_with("- ") || l.starts_with("~ ")).map(String::from).collect();
        assert_eq!(changes, vec![format!("+ read {data} (was denied)"), format!("+ connect 127.0.0.1/32:{port}")], "{}", stdout(&o));
    }
    let o = d.cli(&["policy", "diff", "--json", "learn-base", &s(&file)]);
    let j: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((j["equal"].as_bool(), j["changes"].as_array().map(Vec::len)), (Some(false), Some(2)), "{j}");
}

fn history(d: &Daemon, name: &str) -> Vec<Value> {
    let o = d.cli(&["policy", "history", name, "--json"]);
    serde_json::from_str(&ok(&o, "policy history")).unwrap()
}

#[test]
fn history_and_rollback_survive_a_daemon_restart() {
    if !privileged("history_and_rollback_survive_a_daemon_restart") {
        return;
    }
    // As a service keeps it: the policy's file in policy_dir, loaded at every start.
    let mut d = Daemon::configure(&binary(), "agent-guard-test", "");
    let in_dir = d.policy_dir().join("hist.toml");
    std::fs::create_dir_all(d.policy_dir()).unwrap();
    let v1 = PolicyFile::new("hist").read(["/usr"]).to_string();
    let v2 = PolicyFile::new("hist").read(["/usr", "/opt"]).connect(["10.0.0.0/8:5432"]).to_string();
    std::fs::write(&in_dir, &v1).unwrap();
    d.try_start().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&in_dir, &v2).unwrap();
    ok(&d.cli(&["policy", "apply", &s(&in_dir)]), "policy apply");
    // Applying the version in force again records nothing.
    ok(&d.cli(&["policy", "apply", &s(&in_dir)]), "policy apply");
    let h = history(&d, "hist");
    assert_eq!(h.iter().map(|e| e["number"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2], "{h:#?}");
    assert_eq!((h[0]["source"].as_str(), h[0].get("requested_by_uid")), (Some(s(&in_dir).as_str()), None), "loaded from policy_dir: {h:#?}");
    assert_eq!((h[1]["result"].as_str(), h[1]["requested_by_uid"].as_u64()), (Some("ok"), Some(0)), "{h:#?}");
    let (sha1, sha2) = (h[0]["version"].as_str().unwrap().to_string(), h[1]["version"].as_str().unwrap().to_string());

    // A restart loads version 2 from policy_dir again: no new version.
    d.restart();
    let h = history(&d, "hist");
    assert_eq!(h.len(), 2, "a restart adds no version: {h:#?}");
    let table = ok(&d.cli(&["policy", "history", "hist"]), "policy history");
    assert!(table.lines().nth(2).is_some_and(|l| l.starts_with("2*")), "the version in force is marked:\n{table}");
    let o = d.cli(&["policy", "diff", "hist@1", "hist@2"]);
    assert_eq!(status(&o), 1, "{o:?}");
    assert!(stdout(&o).contains("+ read /opt (was denied)\n") && stdout(&o).contains("+ connect 10.0.0.0/8:5432\n"), "{o:?}");
    assert_eq!(status(&d.cli(&["policy", "diff", "hist@2", "hist"])), 0, "the loaded policy is version 2");

    // Back to the previous version: applied, recorded, announced.
    let o = d.cli(&["policy", "rollback", "hist"]);
    assert!(ok(&o, "policy rollback").starts_with(&format!("policy hist rolled back to version 1: {sha1}")), "{o:?}");
    let shown = ok(&d.cli(&["policy", "show", "hist"]), "policy show");
    assert!(shown.contains(&sha1) && shown.ends_with(&v1), "{shown}");
    let e = d.wait_for("the rollback's policy_reload", |e| e["kind"] == "policy_reload" && e["source"] == "rollback");
    let e = e.iter().find(|e| e["kind"] == "policy_reload" && e["source"] == "rollback").unwrap();
    assert_eq!((e["result"].as_str(), e["previous_version"].as_str(), e["policy_version"].as_str()), (Some("ok"), Some(sha2.as_str()), Some(sha1.as_str())), "{e}");
    assert_eq!(e["requested_by_uid"], 0);

    // The rollback does not edit policy_dir: a restart loads its file (version 2) again, and
    // the history says so.
    d.restart();
    let h = history(&d, "hist");
    assert_eq!(h.len(), 4, "{h:#?}");
    assert_eq!((h[2]["source"].as_str(), h[2]["restores"].as_u64(), h[2]["version"].as_str()), (Some("rollback"), Some(1), Some(sha1.as_str())));
    assert_eq!((h[3]["source"].as_str(), h[3]["version"].as_str()), (Some(s(&in_dir).as_str()), Some(sha2.as_str())));
    let shown = ok(&d.cli(&["policy", "show", "hist@2"]), "policy show NAME@VERSION");
    assert!(shown.starts_with(&format!("# hist version 2 {sha2}")) && shown.ends_with(&v2), "{shown}");
    let o = d.cli(&["policy", "rollback", "hist", &sha1]);
    assert!(ok(&o, "rollback to a version").starts_with("policy hist rolled back to version 1"), "{o:?}");

    // Bad input: clear errors, nothing applied.
    for (args, want) in [
        (vec!["policy", "history", "nope"], "no policy named \"nope\" was ever applied"),
        (vec!["policy", "rollback", "hist", "9"], "policy \"hist\" has no version 9 (versions 1-5"),
        (vec!["policy", "rollback", "hist", "1"], "policy \"hist\" is already at version 1"),
        (vec!["policy", "show", "hist@zz"], "bad version \"zz\""),
        (vec!["policy", "rollback", "../etc"], "\"../etc\" is not a policy name"),
    ] {
        let o = d.cli(&args);
        assert_eq!(status(&o), 1, "{args:?}: {o:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(history(&d, "hist").len(), 5);
    // A refused text is recorded as an error when its name can be read; never rolled back to.
    let broken = d.write_policy("hist-broken", "name = \"hist\"\n[files]\nread = [\"relative\"]\n");
    assert_eq!(status(&d.cli(&["policy", "apply", &s(&broken)])), 1);
    let h = history(&d, "hist");
    assert_eq!((h.len(), h[5]["result"].as_str(), h[5]["version"].as_str()), (6, Some("error"), Some("")), "{h:#?}");
    assert!(h[5]["error"].as_str().is_some_and(|e| e.contains("files.read[0]")), "{h:#?}");
    let o = d.cli(&["policy", "rollback", "hist", "6"]);
    assert!(stderr(&o).contains("version 6 of policy \"hist\" was refused when it was applied"), "{}", stderr(&o));
    let shown = ok(&d.cli(&["policy", "show", "hist"]), "policy show");
    assert!(shown.contains(&sha1), "version 1 stays in force: {shown}");
}

#[test]
fn broken_input_is_named_by_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "agent-guard-lifecycle-unused", "");
    let cli = |args: &[&str]| std::process::Command::new(binary()).arg("--config").arg(&config).args(args).output().unwrap();
    let ev = dir.path().join("events.jsonl");
    std::fs::write(&ev, "{\"kind\":\"open\",\"verdict\":\"allow\",\"path\":\"/a\",\"access\":\"read\",\"flags\":0,\"result\":3}\n{\"kind\":\"open\"\n").unwrap();
    let o = cli(&["policy", "suggest", "--events", &s(&ev)]);
    assert_eq!(status(&o), 1, "{o:?}");
    assert!(stderr(&o).contains(&format!("{}:2: not a JSON event", s(&ev))), "{}", stderr(&o));
    std::fs::write(&ev, "\n{\"kind\":\"exec\",\"verdict\":\"allow\"}\n").unwrap();
    let o = cli(&["policy", "suggest", "--events", &s(&ev)]);
    assert!(stderr(&o).contains(&format!("{}:2: field path: missing", s(&ev))), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    // A run whose start is not among its events: it says what may be missing.
    std::fs::write(&ev, "{\"kind\":\"open\",\"verdict\":\"allow\",\"run\":\"r-x\",\"path\":\"/a\",\"access\":\"read\",\"flags\":0,\"result\":3}\n").unwrap();
    let o = cli(&["policy", "suggest", "--events", &s(&ev), "--run", "r-x"]);
    assert_eq!(status(&o), 0, "{o:?}");
    assert!(stderr(&o).contains("the events of run r-x lack its start"), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"/a\",  # 1 event, first: /a; run r-x"), "{}", stdout(&o));
    let o = cli(&["policy", "suggest", "--name", "x"]);
    assert_eq!(status(&o), 1, "{o:?}");
    assert!(stderr(&o).contains("give the runs to learn from: --run RUN"), "{o:?}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n[files]\nread = [\"relative\"]\n").unwrap();
    let o = cli(&["policy", "diff", &s(&bad), &s(&bad)]);
    assert_eq!(status(&o), 2, "{o:?}");
    assert!(stderr(&o).contains(&format!("{}:3:", s(&bad))) && stderr(&o).contains("files.read[0]"), "{}", stderr(&o));
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "name = \"x\"\n").unwrap();
    let o = cli(&["policy", "diff", "--json", &s(&good), "missing.toml"]);
    assert_eq!(status(&o), 2, "{o:?}");
    assert!(stderr(&o).contains("missing.toml: cannot read"), "{}", stderr(&o));
}

#[test]
fn members_read_the_history_and_only_admins_roll_back() {
    if !privileged("members_read_the_history_and_only_admins_roll_back") {
        return;
    }
    let ctl = TestGroup::new("ctl");
    let adm = TestGroup::new("adm");
    let member = TestUser::new("member", &[&ctl]);
    let admin = TestUser::new("admin", &[&ctl, &adm]);
    let d = Daemon::start_with(&format!("control_group = \"{}\"\nadmin_group = \"{}\"", ctl.name, adm.name));
    // The test daemon's directory is private by default: let the users reach the socket.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    apply(&d, "roles-v1", &PolicyFile::new("roles").read(["/usr"]).to_string());
    apply(&d, "roles-v2", &PolicyFile::new("roles").read(["/usr", "/opt"]).to_string());
    let h: Value = serde_json::from_str(&ok(&member.cli(&d.config, &["policy", "history", "--json", "roles"]), "member: history")).unwrap();
    assert_eq!(h.as_array().map(Vec::len), Some(2), "{h}");
    ok(&member.cli(&d.config, &["policy", "show", "roles@1"]), "member: show NAME@VERSION");
    let o = member.cli(&d.config, &["policy", "rollback", "roles"]);
    assert_eq!(status(&o), 1, "{o:?}");
    assert!(stderr(&o).contains("permission denied") && stderr(&o).contains("rolling back policy \"roles\""), "{}", stderr(&o));
    assert_eq!(history(&d, "roles").len(), 2, "a refused rollback changes nothing");
    ok(&admin.cli(&d.config, &["policy", "rollback", "roles"]), "admin: rollback");
    let h = history(&d, "roles");
    assert_eq!((h.len(), h[2]["requested_by_uid"].as_u64(), h[2]["restores"].as_u64()), (3, Some(admin.uid as u64), Some(1)), "{h:#?}");
}

/// The coding task of tests/workloads/coding-agent.sh (git, unittest, sed -i, make and cc, a
/// venv, curl to a dev server): learned in monitor mode from nothing, then enforced.
#[test]
fn a_coding_task_learned_from_nothing_passes_enforced() {
    if !privileged("a_coding_task_learned_from_nothing_passes_enforced") {
        return;
    }
    for tool in ["git", "python3", "make", "cc", "curl"] {
        if !std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success() {
            agent_guard_tests::skip_test!("{tool} is not installed");
        }
    }
    let d = Daemon::start();
    let site = Site::new("coding");
    let home = site.root.join("home");
    std::fs::create_dir_all(site.ws.join("repo")).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/coding-agent.sh");
    std::fs::copy(script, site.ws.join("tools/coding-agent.sh")).unwrap();
    let dev = TcpListener::bind("127.0.0.1:0").unwrap();
    let dev_port = dev.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        for c in dev.incoming().flatten() {
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let _ = (&c).write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
        }
    });
    let sh = s(&site.ws.join("tools/coding-agent.sh"));
    let code = |policy: &str, name: &str| {
        let mut c = d.command(&["run", "--policy", policy, "--name", name, "--", "/bin/sh", &sh]);
        c.env_clear().env("PATH", PATH).env("WORKSPACE", s(&site.ws)).env("HOME", s(&home)).env("DEV_PORT", dev_port.to_string());
        c.output().unwrap()
    };
    apply(&d, "code-empty", &PolicyFile::new("code").mode("monitor").to_string());
    let o = code("code", "code-monitor");
    assert_eq!(status(&o), 0, "{o:?}");
    events_of(&d, "code-monitor");
    let o = d.cli(&["policy", "suggest", "--run", "code-monitor"]);
    let text = ok(&o, "policy suggest");
    eprintln!("{}\n{text}", stderr(&o));
    let file = d.write_policy("code-learned", &text);
    ok(&d.cli(&["policy", "check", &s(&file)]), "policy check");
    ok(&d.cli(&["policy", "apply", &s(&file)]), "policy apply");
    let o = code("code", "code-enforce");
    let ev = events_of(&d, "code-enforce");
    assert_eq!((status(&o), violations(&ev)), (0, vec![]), "{o:?}");
    assert!(stdout(&o).ends_with("workload done\n"), "{o:?}");
}
