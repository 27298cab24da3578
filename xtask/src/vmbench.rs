//! `cargo xtask bench --vm`: the overhead of each backend side by side, in one boot of a
//! Debian kernel under QEMU (booted with `bpf` in `lsm=`, so every backend can load).
//!
//! The host builds an initramfs with the release daemon, agbench and this xtask binary, and
//! boots it (KVM when a probe boot under KVM works, else TCG: which one is reported). In the
//! VM, `xtask bench-guest` measures agbench (its `--quick` iterations) under the conditions of
//! BENCHMARKS.md: (a) no agent-guard, then for each backend in [`BACKENDS`] a daemon of its own
//! forced to it (`backend = "..."`) and, over the rounds, (b) no run on the host, (d) outside
//! runs while another run is alive, (c) inside a run under the 2,000-rule policy of
//! `bench`. (a) is measured before each backend's daemon starts and once after the last, so
//! every ratio is against no agent-guard in the same boot. A backend the daemon refuses as
//! unknown is reported as "not available in this build"; one it refuses otherwise, with the
//! daemon's reason. The guest prints one `AGBENCH-RESULT` JSON line, which the host reads from
//! the serial console.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent_guard_tests::Daemon;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{bench, vm};

/// The backends measured, in table order. Data, not code: a backend this build does not know
/// shows as such in its row.
pub const BACKENDS: &[&str] = &["lsm", "trampoline", "tracepoint"];

/// The conditions with a daemon, in the order of a round (rotated each round).
const CONDS: [&str; 3] = ["b", "d", "c"];

/// The kernel command line: serial console and BPF in the LSM list (the lsm backend needs it;
/// trampoline and tracepoint work either way).
const APPEND: &str = "console=ttyS0 lsm=lockdown,capability,landlock,bpf panic=-1 oops=panic loglevel=4";

/// The /init of the bench VM. `agvm.probe=1`: only say the kernel is up (the KVM probe).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t securityfs securityfs /sys/kernel/security
ip link set lo up
echo "AGVM kernel $(uname -r) lsm $(cat /sys/kernel/security/lsm) cpus $(nproc)"
if grep -q agvm.probe=1 /proc/cmdline; then poweroff -f; fi
cd /tmp
export AGENT_GUARD_READY_SECS=600 RUST_LOG=info
rounds=$(sed -n 's/.*agvm.rounds=\([0-9]*\).*/\1/p' /proc/cmdline)
backends=$(sed -n 's/.*agvm.backends=\([a-z,]*\).*/\1/p' /proc/cmdline)
/ag/xtask bench-guest --bin /ag/agent-guard --agbench /ag/agbench --rounds "${rounds:-3}" --backends "$backends"
echo "AGVM exit $?"
poweroff -f
"#;

/// The whole boot may take this long under TCG (a shared 2-core machine).
const TIMEOUT: Duration = Duration::from_secs(90 * 60);

/// Host side: boots kernel `label` and reports the ratios per backend.
pub fn bench_vm(root: &Path, label: &str, rounds: usize, json_out: bool) -> Result<()> {
    let k = vm::KERNELS.iter().find(|k| k.label == label).with_context(|| format!("no kernel {label} (known: 6.1, 6.12)"))?;
    let cache = vm::cache_dir();
    std::fs::create_dir_all(&cache)?;
    let vmlinuz = vm::fetch(&cache, k).with_context(|| format!("fetching the {label} kernel"))?;
    let out = root.join("target/vm");
    std::fs::create_dir_all(&out)?;
    let initrd = initramfs(root, &out)?;
    let (accel, why) = choose_accel(&vmlinuz, &initrd, &out);
    eprintln!("bench --vm: kernel {label} ({}), accelerator {accel}: {why}", vmlinuz.display());
    let started = Instant::now();
    let log = out.join(format!("bench-{label}.log"));
    let extra = format!("agvm.rounds={rounds} agvm.backends={}", BACKENDS.join(","));
    let finished = boot(&vmlinuz, &initrd, &log, accel, &extra, TIMEOUT)?;
    let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    let Some(result) = text.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix("AGBENCH-RESULT ")) else {
        bail!(
            "the VM gave no result ({}; {:.0} s); serial log {}",
            if finished { "it powered off" } else { "timed out" },
            started.elapsed().as_secs_f64(),
            log.display()
        );
    };
    let mut v: Value = serde_json::from_str(result).context("the VM's AGBENCH-RESULT line")?;
    let release = text.lines().find_map(|l| l.strip_prefix("AGVM kernel ")).and_then(|r| r.split_whitespace().next()).unwrap_or_default().to_string();
    v["vm"] = json!({"kernel": release, "accelerator": accel, "why": why, "seconds": started.elapsed().as_secs_f64(), "log": log});
    if json_out {
        println!("{v}");
    } else {
        print_table(&v);
    }
    Ok(())
}

/// KVM when /dev/kvm opens and a probe boot under it reaches /init; TCG otherwise. The
/// reason, for the report.
fn choose_accel(vmlinuz: &Path, initrd: &Path, out: &Path) -> (&'static str, String) {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return ("tcg", format!("/dev/kvm: {e}"));
    }
    let log = out.join("bench-kvm-probe.log");
    let up = boot(vmlinuz, initrd, &log, "kvm", "agvm.probe=1", Duration::from_secs(30)).unwrap_or(false)
        && std::fs::read_to_string(&log).is_ok_and(|t| t.contains("AGVM kernel"));
    if up {
        return ("kvm", "a probe boot under KVM reached /init".into());
    }
    // QEMU says on stderr why KVM failed (e.g. "KVM internal error" on a nested hypervisor that
    // cannot run a stock kernel), and then waits rather than exits.
    let text = String::from_utf8_lossy(&std::fs::read(log.with_extension("qemu.err")).unwrap_or_default()).into_owned();
    let err = text.lines().find(|l| l.contains("KVM") || l.contains("kvm")).unwrap_or("no console output").trim().to_string();
    ("tcg", format!("/dev/kvm opens, but a probe boot under KVM did not reach /init ({err}; see {})", log.display()))
}

/// One boot; true when QEMU exited by itself before `timeout`.
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path, accel: &str, extra: &str, timeout: Duration) -> Result<bool> {
    let _ = std::fs::remove_file(log);
    let mut c = Command::new("qemu-system-x86_64");
    if accel == "kvm" {
        c.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        c.args(["-accel", "tcg,thread=multi", "-cpu", &vm::cpu()]);
    }
    let mut child = c
        .args(["-m", "2048", "-smp", "2", "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("{APPEND} {extra}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log.with_extension("qemu.err"))?)
        .spawn()
        .context("starting qemu-system-x86_64 (deploy/setup-build.sh --vm installs it)")?;
    let started = Instant::now();
    let mut seen = 0; // complete lines of the log shown so far
    loop {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        if started.elapsed() > timeout {
            // The QEMU this function started, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        // Progress from the guest, as it comes.
        if let Ok(text) = std::fs::read(log) {
            let text = String::from_utf8_lossy(&text);
            let complete = text.matches('\n').count();
            for l in text.lines().take(complete).skip(seen) {
                if l.starts_with("AGBENCH ") || l.starts_with("AGVM") {
                    eprintln!("[vm] {}", l.trim_end_matches('\r'));
                }
            }
            seen = complete;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// target/vm/bench-initramfs.cpio: busybox, the release daemon and agbench, this xtask
/// binary, and the libraries they load.
fn initramfs(root: &Path, out: &Path) -> Result<PathBuf> {
    let stage = out.join("bench-initramfs");
    vm::stage_base(&stage, INIT)?;
    let xtask = std::env::current_exe().context("this xtask binary")?;
    let bins = [
        (root.join("target/release/agent-guard"), "agent-guard"),
        (root.join("target/release/agbench"), "agbench"),
        (xtask, "xtask"),
    ];
    let mut libs = std::collections::BTreeSet::new();
    for (src, name) in &bins {
        if !src.exists() {
            bail!("{} is missing", src.display());
        }
        vm::strip_copy(src, &stage.join("ag").join(name))?;
        libs.extend(vm::ldd(src)?);
    }
    vm::pack(&stage, libs, &out.join("bench-initramfs.cpio"))
}

/// Guest side (`xtask bench-guest`, run by the VM's /init): measures and prints the result.
pub fn guest(bin: &Path, agbench: &Path, backends: &[String], rounds: usize) -> Result<()> {
    let dir = std::env::temp_dir().join("agbench-vm");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data"))?;
    let data = dir.join("data/file.txt");
    std::fs::write(&data, "agbench\n")?;
    let policy_file = bench::policy("agbench", agbench, &data).write_as(&dir.join("agbench.toml"));
    let args: Vec<String> = vec!["--file".into(), data.display().to_string(), "--quick".into()];
    // samples[backend][cond][op]; backend "none" holds (a).
    let mut samples: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<f64>>>> = BTreeMap::new();
    let mut status: BTreeMap<String, Value> = BTreeMap::new();
    let measure = |samples: &mut BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<f64>>>>,
                       backend: &str,
                       cond: &str,
                       daemon: Option<&Daemon>,
                       name: &str|
     -> Result<()> {
        let out = match daemon {
            Some(d) => bench::run_in_condition(d, cond, &policy_file, agbench, &args, name)?,
            None => Command::new(agbench).args(&args).stdin(Stdio::null()).output()?,
        };
        let r = bench::parse_result(&out, &format!("agbench, {backend} ({cond})"))?;
        println!("AGBENCH {backend} ({cond}) {}", json!(r));
        for (op, v) in r {
            samples.entry(backend.into()).or_default().entry(cond.into()).or_default().entry(op).or_default().push(v);
        }
        Ok(())
    };
    for backend in backends {
        measure(&mut samples, "none", "a", None, "a")?;
        let extra = format!("backend = \"{backend}\"\nevents_log_max_bytes = 0");
        let mut daemon = Daemon::configure(bin, "agbench-vm", &extra);
        let started = Instant::now();
        if let Err(e) = daemon.try_start() {
            let why = if e.stderr.contains("unknown variant") { "not available in this build".to_string() } else { format!("daemon refused it: {}", last_words(&e.stderr)) };
            println!("AGBENCH {backend}: {why}");
            status.insert(backend.clone(), json!({"available": false, "why": why}));
            continue;
        }
        let ready_s = started.elapsed().as_secs_f64();
        let st: Value = serde_json::from_slice(&daemon.cli(&["status", "--json"]).stdout).unwrap_or_default();
        println!("AGBENCH {backend}: daemon ready in {ready_s:.1} s, backend {} ({})", st["backend"], st["backend_reason"]);
        status.insert(backend.clone(), json!({"available": true, "backend": st["backend"], "reason": st["backend_reason"], "ready_s": ready_s}));
        for round in 0..rounds {
            for k in 0..CONDS.len() {
                let cond = CONDS[(round + k) % CONDS.len()];
                measure(&mut samples, backend, cond, Some(&daemon), &format!("agbench-{round}"))?;
            }
        }
        daemon.stop();
    }
    measure(&mut samples, "none", "a", None, "a")?;
    println!("AGBENCH-RESULT {}", json!({"rounds": rounds, "backends": backends, "status": status, "samples": samples}));
    Ok(())
}

/// The daemon's last non-empty stderr line (why it did not start).
fn last_words(stderr: &str) -> String {
    stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string()
}

fn median(v: &Value) -> f64 {
    let mut s: Vec<f64> = v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    s.sort_by(f64::total_cmp);
    bench::quantile(&s, 0.5)
}

/// One Markdown table: per backend and op, the ratio of (b), (d) and (c) to (a).
fn print_table(v: &Value) {
    let vm = &v["vm"];
    println!(
        "\nbench --vm: kernel {}, {} ({}), {} rounds, agbench --quick, {:.0} s",
        vm["kernel"].as_str().unwrap_or("?"),
        vm["accelerator"].as_str().unwrap_or("?"),
        vm["why"].as_str().unwrap_or(""),
        v["rounds"],
        vm["seconds"].as_f64().unwrap_or(0.0)
    );
    let base = |op: &str| median(&v["samples"]["none"]["a"][op]);
    println!("\n| backend | op | (a) no agent-guard, ns/op | (b) daemon, no run | (d) outside runs, a run alive | (c) inside a run |");
    println!("|---|---|---|---|---|---|");
    for b in BACKENDS {
        let st = &v["status"][*b];
        if st["available"] != true {
            let why = st["why"].as_str().unwrap_or("not measured");
            println!("| {b} | - | - | {why} | | |");
            continue;
        }
        for op in bench::OPS {
            let cell = |c: &str| {
                let m = median(&v["samples"][*b][c][op]);
                format!("x{:.2}", m / base(op))
            };
            println!("| {b} | {op} | {:.0} | {} | {} | {} |", base(op), cell("b"), cell("d"), cell("c"));
        }
    }
}
