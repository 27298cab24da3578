//! The example policies of deploy/policies, each under a scripted, deterministic workload of
//! its role (tests/workloads/): the shipped file with its paths rewritten into a temporary
//! tree and its addresses to loopback servers the test runs outside the run. Each in monitor
//! mode (exit 0, no would_deny) and enforce mode (exit 0, no violation), then the role's
//! forbidden actions: refused with the errno the test expects while the process goes on, each
//! with its event; data-pipeline (on_violation = "kill") is killed where its policy says so.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex},
    time::Duration,
};

use agent_guard_tests::{privileged, probe, s, status, stdout, Daemon};
use serde_json::Value;

const KILLED: i32 = 128 + 9;
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The shipped policy `name` with each (from, to) replaced, in this mode; every `from` must be
/// in the file (a changed example policy fails here, not silently).
fn rewritten(name: &str, mode: &str, pairs: &[(&str, String)]) -> String {
    let mut text = std::fs::read_to_string(repo_file(&format!("deploy/policies/{name}.toml"))).unwrap();
    for (from, to) in pairs.iter().chain(&[("mode = \"enforce\"", format!("mode = \"{mode}\""))]) {
        assert!(text.contains(from), "deploy/policies/{name}.toml no longer has {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// A temporary tree outside every tree the example policies name, canonical (rules match
/// resolved paths). Never under /tmp, which they may write: the secrets carved out of the
/// tree would make the Landlock layer grant /tmp entry by entry (so nothing new could be made
/// directly in /tmp, where compilers put their temporary files). The checkout itself may be
/// under /tmp (CI's clone may be), so /var/tmp comes first.
fn site() -> tempfile::TempDir {
    let named = ["/tmp", "/workspace", "/home", "/data", "/opt", "/srv"];
    let inside = |p: &Path| named.iter().any(|n| p.starts_with(n));
    let base = [Path::new("/var/tmp/agent-guard-tests"), Path::new(env!("CARGO_TARGET_TMPDIR"))]
        .into_iter()
        .filter_map(|b| std::fs::create_dir_all(b).and_then(|()| b.canonicalize()).ok())
        .find(|b| !inside(b))
        .unwrap_or_else(|| panic!("no place for the workload tree outside {named:?}"));
    tempfile::Builder::new().prefix("ag-workload-").tempdir_in(base).unwrap()
}

fn mkdirs(root: &Path, dirs: &[&str]) {
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
}

fn put(path: &Path, text: &str, exec: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    if exec {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The probe (tests/src/bin/agprobe.rs) copied to `dir`, where the role's policy lets it run.
fn install_probe(dir: &Path) -> String {
    let to = dir.join("agprobe");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(probe(), &to).unwrap();
    s(&to)
}

/// A loopback server answering each connection with `reply` (HTTP: after the request and its
/// body); what it received is kept. Runs until the test process ends.
fn serve(reply: &'static str, http: bool) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut text = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                text.push_str(&line);
                if !http || line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            text.push_str(&String::from_utf8_lossy(&body));
            let reply = if http { reply.to_string() } else { reply.replace("{n}", text.split_whitespace().nth(2).unwrap_or("?")) };
            let mut c = c;
            let _ = c.write_all(reply.as_bytes());
            seen.lock().unwrap().push(text);
        }
    });
    (port, got)
}

/// `agent-guard run` of `argv` under `policy` as `name`, with exactly `env` (and PATH).
fn run(d: &Daemon, policy: &str, name: &str, env: &[(&str, String)], argv: &[&str]) -> Output {
    let mut c: Command = d.command(&[&["run", "--policy", policy, "--name", name, "--"], argv].concat());
    c.env_clear().env("PATH", PATH);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Every event of the run named `name`, once its run_end is in the log.
fn events_of(d: &Daemon, name: &str) -> Vec<Value> {
    d.wait_for(&format!("run_end of {name}"), |e| e["kind"] == "run_end" && e["run_name"] == name);
    // Kernel events of its last moments may trail the daemon's run_end.
    std::thread::sleep(Duration::from_millis(300));
    d.events().into_iter().filter(|e| e["run_name"] == name).collect()
}

fn line(e: &Value) -> String {
    let what = e["path"].as_str().or(e["name"].as_str()).map(str::to_string).unwrap_or_else(|| format!("{}:{}", e["addr"], e["port"]));
    format!("{} {} {} [{} {} {}]", e["kind"], e["comm"], what, e["verdict"], e["rule"], e["layer"])
}

/// Runs the workload in monitor and enforce mode: exit 0 both times, no would_deny, no
/// violation. `policy(mode)` writes the policy.
fn monitor_then_enforce(d: &Daemon, role: &str, policy: &dyn Fn(&str) -> PathBuf, env: &[(&str, String)], argv: &[&str]) {
    for mode in ["monitor", "enforce"] {
        let name = format!("{role}-{mode}");
        let env = env.to_vec();
        // Both modes' files name the same policy: the one in force is replaced, and the run
        // names it.
        let o = run(d, &apply(d, &policy(mode)), &name, &env, argv);
        if status(&o) != 0 {
            eprintln!("{name}: {o:?}");
        }
        let ev = events_of(d, &name);
        let bad: Vec<String> = ev
            .iter()
            .filter(|e| matches!(e["verdict"].as_str(), Some("would_deny" | "deny" | "kill" | "hold")))
            .map(line)
            .collect();
        let n = ev.iter().filter(|e| e["verdict"] == "would_deny").count();
        eprintln!("{name}: status {}, would_deny {n}, events {}", status(&o), ev.len());
        assert_eq!(status(&o), 0, "{name}: {o:?}\nviolations: {bad:#?}");
        assert!(bad.is_empty(), "{name}: the workload is within its policy, yet:\n{}\n{o:?}", bad.join("\n"));
        if mode == "enforce" {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!err.contains("warning"), "{name}: {err}");
        }
    }
}

/// Loads (or replaces) the policy file in the daemon; its name.
fn apply(d: &Daemon, file: &Path) -> String {
    let o = d.cli(&["policy", "apply", file.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let text = std::fs::read_to_string(file).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["name"].as_str().unwrap().to_string()
}

/// What `argv` (the probe under the role's enforce policy) must print and end with, and the
/// event it must leave: (kind, verdict, rule, layer) of the first violation of that run.
struct Forbidden<'a> {
    name: &'a str,
    argv: Vec<String>,
    status: i32,
    stdout: &'a str,
    event: Option<(&'a str, &'a str, &'a str, &'a str)>,
}

fn forbidden(d: &Daemon, policy: &str, env: &[(&str, String)], cases: Vec<Forbidden>) {
    for f in cases {
        let argv: Vec<&str> = f.argv.iter().map(String::as_str).collect();
        let o = run(d, policy, f.name, env, &argv);
        assert_eq!((status(&o), stdout(&o).as_str()), (f.status, f.stdout), "{}: {o:?}", f.name);
        let ev = events_of(d, f.name);
        let v: Vec<&Value> = ev.iter().filter(|e| matches!(e["verdict"].as_str(), Some("deny" | "kill"))).collect();
        match f.event {
            Some((kind, verdict, rule, layer)) => {
                let e = v.first().unwrap_or_else(|| panic!("{}: no violation event: {ev:#?}", f.name));
                let got = (e["kind"].as_str(), e["verdict"].as_str(), e["rule"].as_str(), e["layer"].as_str());
                assert_eq!(got, (Some(kind), Some(verdict), Some(rule), Some(layer)), "{}: {e}", f.name);
            }
            None => assert!(v.is_empty(), "{}: {v:#?}", f.name),
        }
    }
}

fn case<'a>(name: &'a str, argv: &[&str], status: i32, stdout: &'a str, event: Option<(&'a str, &'a str, &'a str, &'a str)>) -> Forbidden<'a> {
    Forbidden { name, argv: argv.iter().map(|a| a.to_string()).collect(), status, stdout, event }
}

#[test]
fn coding_agent_codes_and_is_refused_secrets_other_homes_hosts_and_tools() {
    if !privileged("coding_agent_codes_and_is_refused_secrets_other_homes_hosts_and_tools") {
        return;
    }
    let d = Daemon::start();
    let t = site();
    let r = t.path();
    let (ws, home) = (r.join("workspace"), r.join("home/agent"));
    mkdirs(r, &["workspace/repo", "home/agent/.ssh", "outside"]);
    put(&home.join(".ssh/id_rsa"), "-----BEGIN OPENSSH PRIVATE KEY-----\n", false);
    put(&ws.join(".env"), "TOKEN=envsecret\n", false);
    put(&ws.join("tools/ok.txt"), "hello\n", false);
    let agprobe = install_probe(&ws.join("tools"));
    let outside_tool = r.join("outside/tool");
    std::fs::copy("/usr/bin/true", &outside_tool).unwrap();
    let script = repo_file("tests/workloads/coding-agent.sh").canonicalize().unwrap();
    // The script runs from where the policy lets a shell read it.
    std::fs::copy(&script, ws.join("tools/coding-agent.sh")).unwrap();
    let (dev_port, _) = serve("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n", true);
    let policy = |mode: &str| {
        let text = rewritten("coding-agent", mode, &[("\"/workspace", format!("\"{}", s(&ws))), ("\"/home/agent", format!("\"{}", s(&home)))]);
        d.write_policy(&format!("coding-agent-{mode}"), &text)
    };
    let env = [("WORKSPACE", s(&ws)), ("HOME", s(&home)), ("DEV_PORT", dev_port.to_string())];
    let sh = s(&ws.join("tools/coding-agent.sh"));
    monitor_then_enforce(&d, "coding", &policy, &env, &["/bin/sh", &sh]);

    let p = apply(&d, &policy("enforce"));
    let ok = s(&ws.join("tools/ok.txt"));
    let then_ok = "first err EACCES\nok hello\n";
    let lands = |rule| Some(("open", "deny", rule, "landlock"));
    forbidden(
        &d,
        &p,
        &env,
        vec![
            case("c-ssh-key", &[&agprobe, "read-then", &s(&home.join(".ssh/id_rsa")), &ok], 0, then_ok, lands("files.deny")),
            case("c-dotenv", &[&agprobe, "read-then", &s(&ws.join(".env")), &ok], 0, then_ok, lands("files.deny")),
            case("c-shadow", &[&agprobe, "read-then", "/etc/shadow", &ok], 0, then_ok, lands("files.read")),
            case("c-root-home", &[&agprobe, "read-then", "/root/.bashrc", &ok], 0, then_ok, lands("files.read")),
            // 64515 ports are allowed: too many for Landlock, so the cgroup programs refuse.
            case("c-other-port", &[&agprobe, "connect", "127.0.0.1:80"], 1, "err EPERM\n", Some(("connect", "deny", "network.connect", "ebpf"))),
            case("c-other-host", &[&agprobe, "connect", &format!("127.0.0.2:{dev_port}")], 1, "err EPERM\n", Some(("connect", "deny", "network.connect", "ebpf"))),
            // Outside every tree: refused by Landlock (no event: the eBPF programs see no exec).
            case("c-exec-outside", &[&agprobe, "exec", &s(&outside_tool)], 1, "err EACCES\n", Some(("exec", "deny", "exec.allow", "landlock"))),
            // Inside a read tree but not in [exec] allow: the eBPF layer kills it before its
            // first instruction (Landlock grants execute where the policy lets an interpreter
            // read); the probe goes on.
            case("c-exec-sbin", &[&agprobe, "exec", "/usr/sbin/nologin"], 0, "ok signal 9\n", Some(("exec", "kill", "exec.allow", "ebpf"))),
        ],
    );
    assert_eq!(std::fs::read_to_string(ws.join(".env")).unwrap(), "TOKEN=envsecret\n");
}

#[test]
fn support_agent_answers_a_ticket_and_is_refused_writes_hosts_and_tools() {
    if !privileged("support_agent_answers_a_ticket_and_is_refused_writes_hosts_and_tools") {
        return;
    }
    let d = Daemon::start();
    let t = site();
    let r = t.path();
    let (opt, kb) = (r.join("opt/support-agent"), r.join("srv/knowledge-base"));
    mkdirs(r, &["outside"]);
    put(&kb.join("passwords.md"), "# Reset your password from the sign-in page\nChoose \"Forgot password\" to reset it.\n", false);
    put(&kb.join("billing.md"), "# Invoices are in the billing page\nDownload them as PDF.\n", false);
    put(&kb.join("ok.txt"), "hello\n", false);
    let agent = opt.join("bin/agent");
    put(&agent, &std::fs::read_to_string(repo_file("tests/workloads/support-agent.py")).unwrap(), true);
    let agprobe = install_probe(&opt.join("bin"));
    let outside_tool = r.join("outside/tool");
    std::fs::copy("/usr/bin/true", &outside_tool).unwrap();
    let (port, posted) = serve("HTTP/1.0 201 Created\r\nContent-Length: 0\r\n\r\n", true);
    let policy = |mode: &str| {
        let text = rewritten(
            "support-agent",
            mode,
            &[
                ("\"/opt/support-agent", format!("\"{}", s(&opt))),
                ("\"/srv/knowledge-base\"", format!("\"{}\"", s(&kb))),
                ("\"203.0.113.0/28:443\"", format!("\"127.0.0.1/32:{port}\"")),
            ],
        );
        d.write_policy(&format!("support-agent-{mode}"), &text)
    };
    // A service user's HOME (none: Python then does not look the user up in /etc/passwd).
    let env = [("KB_DIR", s(&kb)), ("HELPDESK", format!("127.0.0.1:{port}")), ("HOME", "/nonexistent".into())];
    monitor_then_enforce(&d, "support", &policy, &env, &[&s(&agent)]);
    let answers = posted.lock().unwrap().clone();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers.iter().all(|a| a.contains("\"article\": \"passwords.md\"")), "{answers:?}");

    let p = apply(&d, &policy("enforce"));
    let ok = s(&kb.join("ok.txt"));
    let then_ok = "first err EACCES\nok hello\n";
    let lands = |kind, rule| Some((kind, "deny", rule, "landlock"));
    forbidden(
        &d,
        &p,
        &env,
        vec![
            case("s-shadow", &[&agprobe, "read-then", "/etc/shadow", &ok], 0, then_ok, lands("open", "files.read")),
            case("s-root-home", &[&agprobe, "read-then", "/root/.bashrc", &ok], 0, then_ok, lands("open", "files.read")),
            case("s-write-kb", &[&agprobe, "write", &s(&kb.join("new.md"))], 1, "err EACCES\n", lands("open", "files.write")),
            case("s-write-tmp", &[&agprobe, "write", "/tmp/ag-support-agent-note"], 1, "err EACCES\n", lands("open", "files.write")),
            case("s-other-port", &[&agprobe, "connect", &format!("127.0.0.1:{}", if port == 65535 { 1024 } else { port + 1 })], 1, "err EACCES\n", lands("connect", "network.connect")),
            case("s-other-host", &[&agprobe, "connect", &format!("127.0.0.2:{port}")], 1, "err EPERM\n", Some(("connect", "deny", "network.connect", "ebpf"))),
            case("s-exec-outside", &[&agprobe, "exec", &s(&outside_tool)], 1, "err EACCES\n", Some(("exec", "deny", "exec.allow", "landlock"))),
            case("s-exec-curl", &[&agprobe, "exec", "/usr/bin/curl", "--version"], 0, "ok signal 9\n", Some(("exec", "kill", "exec.allow", "ebpf"))),
        ],
    );
    assert!(!kb.join("new.md").exists() && !Path::new("/tmp/ag-support-agent-note").exists());
}

#[test]
fn data_pipeline_publishes_and_is_killed_on_restricted_data() {
    if !privileged("data_pipeline_publishes_and_is_killed_on_restricted_data") {
        return;
    }
    let d = Daemon::start();
    let t = site();
    let r = t.path();
    let (opt, data) = (r.join("opt/pipeline"), r.join("data"));
    mkdirs(r, &["data/staging", "data/out"]);
    put(&data.join("raw/sales-eu.csv"), "region,amount\nEU ,10\neu,5\n", false);
    put(&data.join("raw/sales-us.csv"), "region,amount\nUS,7\nus,\n", false);
    put(&data.join("raw/restricted/people.csv"), "name,ssn\nAda,123-45-6789\n", false);
    let job = opt.join("bin/transform");
    put(&job, &std::fs::read_to_string(repo_file("tests/workloads/data-pipeline.py")).unwrap(), true);
    let agprobe = install_probe(&opt.join("bin"));
    let (port, loaded) = serve("OK {n}\n", false);
    let policy = |mode: &str| {
        let text = rewritten(
            "data-pipeline",
            mode,
            &[
                ("\"/opt/pipeline", format!("\"{}", s(&opt))),
                ("\"/data/", format!("\"{}/", s(&data))),
                ("\"192.0.2.20/32:5432\"", format!("\"127.0.0.1/32:{port}\"")),
            ],
        );
        d.write_policy(&format!("data-pipeline-{mode}"), &text)
    };
    let env = [("DATA_DIR", s(&data)), ("WAREHOUSE", format!("127.0.0.1:{port}")), ("HOME", "/nonexistent".into())];
    monitor_then_enforce(&d, "pipeline", &policy, &env, &[&s(&job)]);
    assert_eq!(std::fs::read_to_string(data.join("out/summary.csv")).unwrap(), "region,total\r\neu,15\r\nus,7\r\n");
    assert_eq!(loaded.lock().unwrap().len(), 2);

    let p = apply(&d, &policy("enforce"));
    forbidden(
        &d,
        &p,
        &env,
        vec![
            // What on_violation = "kill" asks for: the read is killed before it returns.
            case("p-restricted", &[&agprobe, "read", &s(&data.join("raw/restricted/people.csv"))], KILLED, "", Some(("open", "kill", "files.deny", "ebpf"))),
            case("p-shadow", &[&agprobe, "read", "/etc/shadow"], KILLED, "", Some(("open", "kill", "files.read", "ebpf"))),
            // Writes are still refused up front by Landlock, and the job goes on.
            case("p-write-raw", &[&agprobe, "write", &s(&data.join("raw/sales-eu.csv"))], 1, "err EACCES\n", Some(("open", "deny", "files.write", "landlock"))),
            case("p-other-port", &[&agprobe, "connect", &format!("127.0.0.1:{}", if port == 65535 { 1024 } else { port + 1 })], KILLED, "", Some(("connect", "kill", "network.connect", "ebpf"))),
            case("p-exec-true", &[&agprobe, "exec", "/usr/bin/true"], 0, "ok signal 9\n", Some(("exec", "kill", "exec.allow", "ebpf"))),
        ],
    );
    assert_eq!(std::fs::read_to_string(data.join("raw/sales-eu.csv")).unwrap(), "region,amount\nEU ,10\neu,5\n");
}
