//! `cargo xtask vm-test`: the scenario suite (tests/src/scenarios.rs) on Debian cloud kernels
//! under QEMU, three ways on each kernel: `lsm` (booted with bpf in `lsm=`), `trampoline`
//! (booted without it, as Ubuntu boots by default: the fmod_ret programs) and
//! `tracepoint` (forced, booted with bpf). Each boot also checks what `backend = "auto"` picks
//! there (lsm, trampoline, lsm).
//!
//! For each kernel: the package comes from apt (bookworm's 6.1 through the machine's own
//! sources, bookworm-backports' 6.12 through a private apt configuration that leaves the
//! system's lists alone), cached in [`cache_dir`]; its vmlinuz boots with an initramfs built
//! here (busybox-static, the test binaries and the libraries `ldd` names; no Docker) whose
//! /init mounts what the daemon needs and runs `agscenarios --backend B`, which prints one
//! `AGSCENARIO` line per scenario. QEMU runs with TCG (KVM is not proven to work on these
//! machines, see shared/design/KERNEL.md), one vCPU each, [`jobs`] VMs at a time. The serial
//! console of each boot is kept in target/vm/<kernel>-<backend>.log.
use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// A kernel of the matrix: its label, and the apt suite its metapackage comes from (None:
/// the machine's default sources).
pub(crate) struct Kernel {
    pub(crate) label: &'static str,
    suite: Option<&'static str>,
}

pub(crate) const KERNELS: &[Kernel] = &[Kernel { label: "6.1", suite: None }, Kernel { label: "6.12", suite: Some("bookworm-backports") }];

/// The metapackage whose dependency names the current cloud kernel image.
const META: &str = "linux-image-cloud-amd64";

/// One boot may take this long before it counts as hung (TCG, a shared 2-core machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(480);

/// Kernel command line: the serial console; the LSM list comes from [`lsm_list`].
const APPEND: &str = "console=ttyS0 panic=-1 oops=panic loglevel=4";

/// The backends of the matrix, in the order they are reported.
pub const BACKENDS: &[&str] = &["lsm", "trampoline", "tracepoint"];

/// The active LSMs a boot for `backend` gets, and what `backend = "auto"` must pick there.
/// Debian's kernels list bpf by default (their CONFIG_LSM has it); Ubuntu's default boot does
/// not, and the trampoline boot is that case.
fn lsm_list(backend: &str) -> (&'static str, &'static str) {
    match backend {
        "trampoline" => ("lockdown,capability,landlock", "trampoline"),
        _ => ("lockdown,capability,landlock,bpf", "lsm"),
    }
}

/// How many VMs run at once (AG_VM_JOBS overrides): TCG keeps one host core busy per VM.
fn jobs() -> usize {
    std::env::var("AG_VM_JOBS").ok().and_then(|j| j.parse().ok()).filter(|j| *j > 0).unwrap_or(2)
}

/// The binaries the VM runs, from target/debug (built by the caller).
const BINARIES: &[&str] = &["agent-guard", "agprobe", "agscenarios"];

/// Where kernel packages are cached across runs (AG_VM_CACHE overrides).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("AG_VM_CACHE").map_or_else(|| PathBuf::from("/var/cache/agent-guard/vm"), PathBuf::from)
}

/// What one kernel's boot reported.
struct Outcome {
    label: &'static str,
    release: String,
    passed: Vec<String>,
    failed: Vec<String>,
    /// Why the suite did not complete (no summary line), if it did not.
    incomplete: Option<String>,
    log: PathBuf,
    secs: f64,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.failed.is_empty() && self.incomplete.is_none() && !self.passed.is_empty()
    }
}

/// Runs the matrix: every backend of `backends` on every kernel of `only` (empty: all).
/// Returns whether every boot passed.
pub fn vm_test(root: &Path, only: &[String], backends: &[&'static str]) -> Result<bool> {
    let started = Instant::now();
    let kernels: Vec<&Kernel> = KERNELS.iter().filter(|k| only.is_empty() || only.iter().any(|o| o == k.label)).collect();
    if kernels.is_empty() {
        bail!("no kernel matches {only:?} (known: {})", KERNELS.iter().map(|k| k.label).collect::<Vec<_>>().join(", "));
    }
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut images = Vec::new();
    for k in &kernels {
        images.push((*k, fetch(&cache, k).with_context(|| format!("fetching the {} kernel", k.label))?));
    }
    let out = root.join("target/vm");
    std::fs::create_dir_all(&out)?;
    let initrd = initramfs(root, &out).context("building the initramfs")?;
    eprintln!("vm-test: initramfs {} ({} MiB)", initrd.display(), std::fs::metadata(&initrd)?.len() >> 20);
    // Every (backend, kernel) boot, `jobs()` at a time, in that order.
    let boots: Vec<(&'static str, &Kernel, &PathBuf)> =
        backends.iter().flat_map(|b| images.iter().map(move |(k, v)| (*b, *k, v))).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs().min(boots.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((backend, k, vmlinuz)) = boots.get(i) else { break };
                let r = boot(k.label, vmlinuz, &initrd, &out, backend);
                results.lock().expect("not poisoned").push((i, r));
            });
        }
    });
    let mut results = results.into_inner().expect("not poisoned");
    results.sort_by_key(|(i, _)| *i);
    let mut all_ok = true;
    println!("\nvm-test: kernel matrix, {} boots ({:.0} s)", boots.len(), started.elapsed().as_secs_f64());
    let mut shown = None;
    for (i, o) in results {
        let backend = boots[i].0;
        if shown != Some(backend) {
            println!("vm-test: {backend} backend");
            shown = Some(backend);
        }
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                all_ok = false;
                println!("  FAIL  {e:#}");
                continue;
            }
        };
        let total = o.passed.len() + o.failed.len();
        if o.ok() {
            println!("  PASS  {:<5} {:<28} {}/{total} scenarios, {:.0} s", o.label, o.release, o.passed.len(), o.secs);
            continue;
        }
        all_ok = false;
        let why = match (&o.incomplete, o.failed.is_empty()) {
            (Some(why), _) => format!("incomplete: {why}; failed: {}", list(&o.failed)),
            (None, _) => format!("failed: {}", list(&o.failed)),
        };
        println!(
            "  FAIL  {:<5} {:<28} {}/{total} scenarios, {:.0} s; {why}; serial log {}",
            o.label,
            o.release,
            o.passed.len(),
            o.secs,
            o.log.display()
        );
    }
    Ok(all_ok)
}

fn list(v: &[String]) -> String {
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

/// apt options for `suite` (None: the system's configuration). A suite gets a private sources
/// list and lists directory under the cache, so the system's apt state is never touched.
fn apt_options(cache: &Path, suite: Option<&str>) -> Result<Vec<String>> {
    let Some(suite) = suite else { return Ok(vec![]) };
    let dir = cache.join(format!("apt-{suite}"));
    std::fs::create_dir_all(dir.join("lists/partial"))?;
    let sources = dir.join("sources.list");
    std::fs::write(
        &sources,
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"),
    )?;
    Ok(vec![
        format!("-oDir::Etc::SourceList={}", sources.display()),
        "-oDir::Etc::SourceParts=/dev/null".into(),
        format!("-oDir::State::Lists={}", dir.join("lists").display()),
        "-oDir::Cache::pkgcache=".into(),
        "-oDir::Cache::srcpkgcache=".into(),
        "-oAPT::Sandbox::User=root".into(),
    ])
}

fn apt_update(opts: &[String]) -> Result<()> {
    let o = Command::new("apt-get").args(opts).arg("update").output().context("running apt-get update")?;
    if !o.status.success() {
        bail!("apt-get update failed: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// The cloud kernel image package the metapackage currently depends on, unsigned flavour.
fn resolve(opts: &[String]) -> Option<String> {
    let o = Command::new("apt-cache").args(opts).args(["depends", META]).output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(|p| format!("{p}-unsigned"))
}

/// A cached package file of `pkg` in `cache`.
fn cached_deb(cache: &Path, pkg: &str) -> Option<PathBuf> {
    let prefix = format!("{pkg}_");
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb")))
        .collect();
    v.sort();
    v.pop()
}

/// The newest cached package for this kernel line (when apt cannot be asked).
fn newest_cached(cache: &Path, k: &Kernel) -> Option<PathBuf> {
    let prefix = format!("linux-image-{}", k.label);
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&prefix) && n.contains("-cloud-amd64-unsigned_") && n.ends_with(".deb")
                    && n[prefix.len()..].starts_with(['.', '-'])
            })
        })
        .collect();
    v.sort();
    v.pop()
}

/// The kernel image (vmlinuz) of `k`, downloaded and extracted into the cache if needed.
pub(crate) fn fetch(cache: &Path, k: &Kernel) -> Result<PathBuf> {
    let opts = apt_options(cache, k.suite)?;
    if k.suite.is_some() {
        let lists = cache.join(format!("apt-{}/lists", k.suite.unwrap_or_default()));
        let fresh = std::fs::read_dir(&lists)
            .ok()
            .and_then(|mut d| d.find(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with("Packages"))))
            .and_then(|e| e.ok()?.metadata().ok()?.modified().ok())
            .is_some_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(24 * 3600));
        if !fresh {
            if let Err(e) = apt_update(&opts) {
                eprintln!("vm-test: {e:#}");
            }
        }
    }
    let deb = match resolve(&opts) {
        Some(pkg) => match cached_deb(cache, &pkg) {
            Some(deb) => deb,
            None => {
                eprintln!("vm-test: downloading {pkg}");
                let get = || Command::new("apt-get").args(&opts).args(["-oAPT::Sandbox::User=root", "download", &pkg]).current_dir(cache).status();
                let mut ok = get().is_ok_and(|s| s.success());
                if !ok && k.suite.is_none() {
                    apt_update(&opts)?;
                    ok = get().is_ok_and(|s| s.success());
                }
                if !ok {
                    bail!("apt-get download {pkg} failed");
                }
                cached_deb(cache, &pkg).with_context(|| format!("{pkg} downloaded, but no {pkg}_*.deb in {}", cache.display()))?
            }
        },
        None => newest_cached(cache, k)
            .with_context(|| format!("apt names no {META} dependency for kernel {} and none is cached", k.label))?,
    };
    let stem = deb.file_stem().and_then(|s| s.to_str()).context("package file name")?.to_string();
    let dir = cache.join(&stem);
    if !dir.join("boot").is_dir() {
        let tmp = cache.join(format!("{stem}.partial"));
        let _ = std::fs::remove_dir_all(&tmp);
        let st = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp).status().context("running dpkg-deb")?;
        if !st.success() {
            bail!("dpkg-deb -x {} failed", deb.display());
        }
        // Only the kernel image is kept: the modules are not needed (everything the tests use
        // is built in on Debian's cloud kernels).
        std::fs::create_dir_all(dir.join("boot"))?;
        for e in std::fs::read_dir(tmp.join("boot"))?.flatten() {
            if e.file_name().to_string_lossy().starts_with("vmlinuz-") {
                std::fs::rename(e.path(), dir.join("boot").join(e.file_name()))?;
            }
        }
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::read_dir(dir.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .with_context(|| format!("no vmlinuz in {}", deb.display()))
}

/// The /init the VM runs: mounts, loopback, then the scenario suite; powers off after.
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
cd /tmp
export AGENT_GUARD_READY_SECS=300 RUST_LOG=info AGENT_GUARD_BIN=/ag/agent-guard AGENT_GUARD_PROBE=/ag/agprobe
backend=$(sed -n 's/.*agvm.backend=\([a-z]*\).*/\1/p' /proc/cmdline)
auto=$(sed -n 's/.*agvm.auto=\([a-z]*\).*/\1/p' /proc/cmdline)
/ag/agscenarios --backend "${backend:-lsm}" --auto "${auto:-lsm}"
echo "AGVM exit $?"
if [ -x /ag/extra-test ]; then
    /ag/extra-test --test-threads=1 2>&1
    echo "AGVM extra-test exit $?"
fi
poweroff -f
"#;

/// Builds target/vm/initramfs.cpio from busybox, the test binaries (debug info stripped)
/// and the shared libraries they load.
fn initramfs(root: &Path, out: &Path) -> Result<PathBuf> {
    let stage = out.join("initramfs");
    stage_base(&stage, INIT)?;
    let mut libs = std::collections::BTreeSet::new();
    for b in BINARIES {
        let src = root.join("target/debug").join(b);
        if !src.exists() {
            bail!("{} is missing (cargo build -p agent-guard -p agent-guard-tests --bins)", src.display());
        }
        let dst = stage.join("ag").join(b);
        strip_copy(&src, &dst)?;
        libs.extend(ldd(&src)?);
    }
    // AG_VM_EXTRA_TEST: an integration test binary (cargo test --no-run) run after the suite,
    // to see how other tests fare on these kernels.
    if let Some(extra) = std::env::var_os("AG_VM_EXTRA_TEST") {
        let extra = PathBuf::from(extra);
        strip_copy(&extra, &stage.join("ag/extra-test"))?;
        libs.extend(ldd(&extra)?);
    }
    pack(&stage, libs, &out.join("initramfs.cpio"))
}

/// A fresh initramfs stage directory: the mount points, busybox, `init`, root's passwd and
/// group entries.
pub(crate) fn stage_base(stage: &Path, init: &str) -> Result<()> {
    let _ = std::fs::remove_dir_all(stage);
    for d in ["bin", "ag", "proc", "sys", "dev", "tmp", "run", "etc", "root"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing (deploy/setup-build.sh --vm installs busybox-static)");
    }
    std::fs::copy(busybox, stage.join("bin/busybox"))?;
    write_exec(&stage.join("init"), init)?;
    std::fs::write(stage.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(stage.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

/// Copies `libs` into `stage`, packs it as the newc archive `cpio` and removes the stage.
pub(crate) fn pack(stage: &Path, libs: std::collections::BTreeSet<PathBuf>, cpio: &Path) -> Result<PathBuf> {
    for lib in libs {
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let dst = stage.join(rel);
        std::fs::create_dir_all(dst.parent().expect("a library path has a parent"))?;
        std::fs::copy(&lib, &dst).with_context(|| format!("copying {}", lib.display()))?;
    }
    let files = Command::new("sh")
        .arg("-c")
        .arg("find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0")
        .current_dir(&stage)
        .stdout(std::fs::File::create(cpio)?)
        .status()
        .context("running cpio (deploy/setup-build.sh --vm installs it)")?;
    if !files.success() {
        bail!("cpio failed");
    }
    std::fs::remove_dir_all(stage)?;
    Ok(cpio.to_path_buf())
}

pub(crate) fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Copies a binary without its debug info (the initramfs stays small), or as it is when no
/// strip tool is there.
pub(crate) fn strip_copy(src: &Path, dst: &Path) -> Result<()> {
    for tool in ["strip", "llvm-strip-22"] {
        if Command::new(tool).arg("--strip-debug").arg("-o").arg(dst).arg(src).status().is_ok_and(|s| s.success()) {
            return Ok(());
        }
    }
    std::fs::copy(src, dst)?;
    Ok(())
}

/// The shared libraries (and the loader) `bin` needs, as absolute paths.
pub(crate) fn ldd(bin: &Path) -> Result<Vec<PathBuf>> {
    let o = Command::new("ldd").arg(bin).output().context("running ldd")?;
    if !o.status.success() {
        bail!("ldd {} failed: {}", bin.display(), String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// QEMU's CPU model (AG_VM_CPU overrides). Without cmpxchg16b: QEMU 7.2's TCG corrupts
/// state on the `gs`-relative cmpxchg16b that SLUB runs on every allocation, and Debian's
/// 6.12 then dies of a double fault within seconds to a minute (6.1 survives longer); the
/// kernel falls back to its lock-based path without it.
pub(crate) fn cpu() -> String {
    std::env::var("AG_VM_CPU").unwrap_or_else(|_| "max,-cx16".into())
}

/// Boots `vmlinuz` with the initramfs and collects the scenario lines from its serial console.
fn boot(label: &'static str, vmlinuz: &Path, initrd: &Path, out: &Path, backend: &'static str) -> Result<Outcome> {
    let log = out.join(format!("{label}-{backend}.log"));
    let (lsm, auto) = lsm_list(backend);
    let _ = std::fs::remove_file(&log);
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", &cpu(), "-m", "1024", "-smp", "1", "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("{APPEND} lsm={lsm} agvm.backend={backend} agvm.auto={auto}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (deploy/setup-build.sh --vm installs it)")?;
    let mut timed_out = false;
    loop {
        if let Some(_status) = child.try_wait()? {
            break;
        }
        if started.elapsed() > BOOT_TIMEOUT {
            timed_out = true;
            // The QEMU this function started, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut qemu_err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut qemu_err);
    }
    let secs = started.elapsed().as_secs_f64();
    let text = std::fs::read(&log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let mut o = Outcome { label, release: String::new(), passed: vec![], failed: vec![], incomplete: None, log: log.clone(), secs };
    let mut done = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("AGVM kernel ") {
            o.release = rest.split_whitespace().next().unwrap_or_default().to_string();
        } else if let Some(rest) = line.strip_prefix("AGSCENARIO pass ") {
            o.passed.push(rest.split(':').next().unwrap_or(rest).trim().to_string());
        } else if let Some(rest) = line.strip_prefix("AGSCENARIO FAIL ") {
            o.failed.push(rest.split(':').next().unwrap_or(rest).trim().to_string());
        } else if line.starts_with("AGSCENARIOS done") {
            done = true;
        }
    }
    if !done {
        o.incomplete = Some(if timed_out {
            format!("no result after {} s (QEMU killed)", BOOT_TIMEOUT.as_secs())
        } else if !qemu_err.trim().is_empty() {
            format!("QEMU: {}", qemu_err.trim())
        } else {
            "the suite did not finish (see the serial log)".into()
        });
    }
    // Show the scenario lines as they were printed.
    let mut stdout = std::io::stdout().lock();
    for line in std::io::BufReader::new(text.as_bytes()).lines().map_while(Result::ok) {
        if line.starts_with("AGSCENARIO") || line.starts_with("AGVM") {
            let _ = writeln!(stdout, "[{label} {backend}] {}", line.trim_end_matches('\r'));
        }
    }
    Ok(o)
}
