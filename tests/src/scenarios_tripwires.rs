//! Tripwires in the scenario suite (run on every backend, see `scenarios`): a decoy read in
//! monitor mode holds the run with a `decoy` event from the backend's open hook, and a
//! connect budget crossed is a `limit` event from the cgroup connect program.
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{probe, s, scenarios::Backend, PolicyFile};

/// The first event of the run named `name` that `pred` accepts, within 20 s.
fn event(d: &crate::Daemon, name: &str, pred: impl Fn(&Value) -> bool) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = d.events().into_iter().find(|e| e["run_name"] == name && pred(e)) {
            return Ok(e);
        }
        if Instant::now() > deadline {
            return Err(format!("no such event of run {name} in 20 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a decoy under a monitor-mode policy: held (reason decoy), the open reported with
/// verdict decoy by the backend's hook; denied, the run ends.
pub fn decoy_read(c: &crate::scenarios::Ctx, backend: Backend) -> Result<(), String> {
    let d = &c.daemon;
    let decoy = c.layout.ws.join(".env.production");
    std::fs::write(&decoy, "API_KEY=fake\n").map_err(|e| e.to_string())?;
    let pol = PolicyFile::for_probe("tripwire-watch").mode("monitor").read([&c.layout.ws]).decoy_files([&decoy]).write_to(d.dir.path());
    let mut run = d.spawn_run(&["--policy", &s(&pol), "--name", "decoy-read", "--", &s(&probe()), "read", &s(&decoy)]);
    let h = event(d, "decoy-read", |e| e["kind"] == "hold" && e["hold"] == "held")?;
    if h["reason"] != "decoy" || h["rule"] != "decoys.files" {
        return Err(format!("hold: {h}"));
    }
    let open = event(d, "decoy-read", |e| e["kind"] == "open" && e["path"] == s(&decoy).as_str())?;
    let hook = if backend.hooks() { "lsm" } else { "tracepoint" };
    if open["verdict"] != "decoy" || open["rule"] != "decoys.files" || open["hook"] != hook {
        return Err(format!("open: expected verdict decoy rule decoys.files hook {hook}, got {open}"));
    }
    let run_id = h["run"].as_str().unwrap_or("").to_string();
    let o = d.cli(&["deny", &run_id]);
    if !o.status.success() {
        return Err(format!("deny: {o:?}"));
    }
    match run.wait_exit(Duration::from_secs(20)) {
        Some(137) => Ok(()),
        other => Err(format!("the reader should end killed after deny, got {other:?}: {}", run.stderr())),
    }
}

/// Three connects under `connects_per_minute = 2` (`on_limit = "report"`): the third is a
/// limit event from the cgroup program, and goes through.
pub fn connect_budget(c: &crate::scenarios::Ctx) -> Result<(), String> {
    let d = &c.daemon;
    let target = format!("127.0.0.1:{}", c.tcp_ok.local_addr().map_err(|e| e.to_string())?.port());
    let pol = PolicyFile::for_probe("tripwire-budget")
        .connect([target.replace(':', "/32:")])
        .limit("connects_per_minute", 2)
        .on_limit("report")
        .write_to(d.dir.path());
    let o = d.probe_run(&pol, "connect-budget", &["connect-n", &target, "3"]);
    let out = crate::stdout(&o);
    if out.matches(": ok").count() != 3 {
        return Err(format!("report lets all three through: {o:?}"));
    }
    let l = event(d, "connect-budget", |e| e["kind"] == "limit")?;
    let got = (l["rule"].as_str(), l["verdict"].as_str(), l["count"].as_u64(), l["max"].as_u64(), l["hook"].as_str());
    if got != (Some("limits.connects_per_minute"), Some("allow"), Some(3), Some(2), Some("cgroup")) {
        return Err(format!("limit: {l}"));
    }
    Ok(())
}
