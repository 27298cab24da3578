//! Chores: `cargo xtask test` (everything CI runs), `cargo xtask vm-test` (the scenario suite
//! against the lsm, trampoline and tracepoint backends on Debian kernels under QEMU, also part
//! of `test`), `cargo xtask
//! daemon` (build and start the daemon in the foreground), `cargo xtask deb` (the Debian
//! package), `cargo xtask bench` (overhead benchmarks, see BENCHMARKS.md) and `cargo xtask
//! soak` (the long soak with chaos, tests/src/soak.rs). Each first runs
//! deploy/setup-build.sh, so a fresh machine needs nothing installed by hand beyond rustup.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod soak;
mod vm;
mod vmbench;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the build prerequisites, build, and run every test: unit, integration on the
    /// real kernel, then the VM kernel matrix (`vm-test`)
    Test {
        /// Skip the VM kernel matrix (it is also skipped when a test filter is given)
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter)
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install the build prerequisites, build, and run the daemon in the foreground (root)
    Daemon {
        /// Configuration file (default: /etc/agent-guard/config.toml, or built-in defaults)
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the scenario suite against each backend on Debian kernels under QEMU (root):
    /// fetches and caches the kernels, builds an initramfs, one pass/fail line per backend and
    /// kernel (lsm: booted with bpf in lsm=; trampoline: booted without; tracepoint: forced)
    VmTest {
        /// Only this kernel (6.1, 6.12); repeatable (default: all)
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Only this backend; repeatable (default: lsm, trampoline and tracepoint)
        #[arg(long = "backend", value_parser = ["lsm", "trampoline", "tracepoint"])]
        backends: Vec<String>,
    },
    /// Build the Debian package (target/debian/agent-guard_VERSION-1_amd64.deb): installs the
    /// build prerequisites and cargo-deb if missing, then `cargo deb -p agent-guard`
    Deb,
    /// The long soak with chaos (root; not part of `test`): many runs started and ended
    /// (killed, frozen, held and denied among them) beside a flooding run, the policy
    /// re-applied every 100 ms, the daemon SIGKILLed at random points; then no wrong
    /// verdict, every run_end logged, nothing left behind, RSS and fds back (tests/src/soak.rs)
    Soak {
        /// Runs to start
        #[arg(long, default_value_t = 2000)]
        runs: u64,
        /// Stop starting runs after this many minutes
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// SIGKILLs of the daemon, at random points
        #[arg(long, default_value_t = 10)]
        daemon_kills: u64,
        /// The flooding run's pause between two opens, in milliseconds
        #[arg(long, default_value_t = 2)]
        flood_pause_ms: u64,
        /// Seed of the soak's random choices (default: from the pid)
        #[arg(long)]
        seed: Option<u64>,
        /// Kill the daemon only between batches of runs, not while runs start and end
        #[arg(long)]
        quiet_kills: bool,
    },
    /// Build release binaries and measure the overhead (root): micro-operations with no
    /// agent-guard, with a daemon (outside every run) and inside a run under a 2,000-rule
    /// policy; kernel ns per program invocation; daemon time to ready (see BENCHMARKS.md)
    Bench {
        /// Print JSON instead of tables
        #[arg(long)]
        json: bool,
        /// Fewer rounds and iterations (a smoke run, noisy numbers)
        #[arg(long)]
        quick: bool,
        /// Instead: every backend side by side in one boot of a Debian kernel under QEMU
        /// (KVM when it works, else TCG), as ratios to no agent-guard in the same boot
        #[arg(long)]
        vm: bool,
        /// With --vm: the kernel to boot (6.1, 6.12)
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// With --vm: rounds of (b), (d) and (c) per backend
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Inside the VM of `bench --vm` (its /init runs it): measures and prints the result
    #[command(hide = true)]
    BenchGuest {
        #[arg(long)]
        bin: PathBuf,
        #[arg(long)]
        agbench: PathBuf,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Comma-separated
        #[arg(long)]
        backends: String,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut c: Command) -> Result<()> {
    let status = c.status().with_context(|| format!("starting {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

/// deploy/setup-build.sh; `test`: also the tools the tests use (promtool); `vm`: also what
/// the VM kernel matrix needs (QEMU, busybox-static, cpio).
fn setup_with(test: bool, vm: bool) -> Result<()> {
    let mut c = Command::new(root().join("deploy/setup-build.sh"));
    c.env("AG_SETUP_QUIET", "1");
    if test {
        c.arg("--test");
    }
    if vm {
        c.arg("--vm");
    }
    run(c)
}

fn setup(test: bool) -> Result<()> {
    setup_with(test, false)
}

/// Builds the daemon and the test binaries, then runs the VM kernel matrix.
fn vm_test(kernels: &[String], backends: &[String]) -> Result<()> {
    let backends: Vec<&'static str> =
        vm::BACKENDS.iter().copied().filter(|b| backends.is_empty() || backends.iter().any(|x| x == b)).collect();
    setup_with(false, true)?;
    // The test binaries (agprobe, agscenarios) the initramfs carries, and the daemon.
    let mut build = cargo();
    build.args(["build", "--package", "agent-guard", "--package", "agent-guard-tests", "--bins"]);
    run(build)?;
    if !vm::vm_test(&root(), kernels, &backends)? {
        bail!("vm-test: a backend failed on at least one kernel (see above)");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Test { no_vm, args } => {
            let vm = !no_vm && args.is_empty();
            setup_with(true, vm)?;
            let mut build = cargo();
            build.args(["build", "--package", "agent-guard"]);
            run(build)?;
            let mut test = cargo();
            test.arg("test").env("AGENT_GUARD_BIN", root().join("target/debug/agent-guard")).args(&args);
            run(test)?;
            if !vm {
                return Ok(());
            }
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                let why = "the VM kernel matrix needs root (apt downloads into /var/cache/agent-guard/vm)";
                if std::env::var("CI").as_deref() == Ok("true") {
                    bail!("CI=true and {why}");
                }
                eprintln!("skip vm-test: {why}");
                return Ok(());
            }
            vm_test(&[], &[])
        }
        Cmd::Daemon { config } => {
            setup(false)?;
            let mut build = cargo();
            build.args(["build", "--release", "--package", "agent-guard"]);
            run(build)?;
            let mut d = Command::new(root().join("target/release/agent-guard"));
            if let Some(c) = config {
                d.arg("--config").arg(c);
            }
            d.arg("daemon");
            run(d)
        }
        Cmd::BenchGuest { bin, agbench, rounds, backends } => {
            let backends: Vec<String> = backends.split(',').filter(|b| !b.is_empty()).map(str::to_string).collect();
            vmbench::guest(&bin, &agbench, &backends, rounds)
        }
        Cmd::Bench { json, quick, vm, kernel, rounds } => {
            setup_with(false, vm)?;
            let mut build = cargo();
            build.args(["build", "--release", "--package", "agent-guard", "--package", "agent-guard-tests"]);
            build.args(["--bin", "agent-guard", "--bin", "agbench"]);
            if json {
                build.arg("--quiet");
            }
            run(build)?;
            if vm {
                return vmbench::bench_vm(&root(), &kernel, rounds, json);
            }
            bench::bench(&root(), quick, json)
        }
        Cmd::VmTest { kernels, backends } => vm_test(&kernels, &backends),
        Cmd::Soak { runs, minutes, daemon_kills, flood_pause_ms, seed, quiet_kills } => {
            setup(false)?;
            let mut build = cargo();
            build.args(["build", "--package", "agent-guard", "--package", "agent-guard-tests", "--bins"]);
            run(build)?;
            let mut test = cargo();
            test.env("AGENT_GUARD_BIN", root().join("target/debug/agent-guard"));
            soak::soak(test, &soak::Soak { runs, minutes, daemon_kills, flood_pause_ms, seed, quiet_kills })
        }
        Cmd::Deb => {
            setup(false)?;
            let have = cargo().args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
            if !have {
                let mut install = cargo();
                install.args(["install", "--locked", "cargo-deb", "--version", "^3"]);
                run(install)?;
            }
            let mut deb = cargo();
            deb.args(["deb", "--package", "agent-guard"]);
            run(deb)
        }
    }
}
