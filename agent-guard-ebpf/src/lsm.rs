//! The `lsm` backend: BPF LSM programs that refuse an operation before it happens (EPERM),
//! where the kernel has BPF LSM active (`bpf` in /sys/kernel/security/lsm). Each program only
//! adapts its hook to the decisions in `policy` (the same maps, rule sets and verdicts as the
//! tracepoint backend): file opens and execs against `[files]` and `[exec]`, the write-side
//! path operations against `[files] write`, and self-protection for runs (no signal or ptrace
//! to a process outside the run, no bpf(), no mount).
//!
//! Every program starts with [`run::current_run`]: processes outside every run return at once.
//! A hook returns 0 (allow) or -EPERM; the verdict `kill` (on_violation = "kill") also sends
//! SIGKILL, `hold` SIGSTOP (see `policy::violation`). Events of LSM decisions carry
//! `FLAG_LSM`.
//!
//! Each hook's decision is one function (`on_<hook>`) with two thin entry points: the BPF LSM
//! program here (`ag_lsm_<hook>`, lsm backend) and the fmod_ret program on the kernel's
//! `security_<hook>` function (`ag_fmr_<hook>` in `trampoline.rs`, trampoline backend). Both
//! see the same arguments and return 0 or -EPERM.
//!
//! Errors inside a hook (an unreadable kernel structure) refuse: a path that cannot be
//! rebuilt is `unseen`, never allowed by default, as in the tracepoint backend.
use agent_guard_common::{
    Kind, Rule, Verdict, FLAG_LSM,
};
use aya_ebpf::{
    macros::lsm,
    programs::{FEntryContext, LsmContext},
    Argument,
};

use crate::{
    event, kernel,
    policy::{self, Decision},
    run,
};


/// The arguments of a security hook, as its BPF LSM program and its fmod_ret program both see
/// them (the hook's arguments in order, then the return value so far, which neither reads).
pub trait HookArgs {
    fn arg<T: Argument>(&self, n: usize) -> T;
}

impl HookArgs for LsmContext {
    #[inline(always)]
    fn arg<T: Argument>(&self, n: usize) -> T {
        LsmContext::arg(self, n)
    }
}

impl HookArgs for FEntryContext {
    #[inline(always)]
    fn arg<T: Argument>(&self, n: usize) -> T {
        FEntryContext::arg(self, n)
    }
}

const EPERM: i32 = 1;
const FMODE_READ: u32 = 1;
const FMODE_WRITE: u32 = 2;
/// Opened by exec (the executable, its interpreter): decided by `bprm_check_security`. The
/// same bit is `__FMODE_EXEC` in f_flags, which is where 6.x kernels carry it at file_open.
const FMODE_EXEC: u32 = 0x20;
const O_WRONLY: u32 = 0o1;
/// `OpenEvent::access` of a write-side path operation.
const ACCESS_WRITE: u32 = 2;

/// Syscall numbers reported in self-protection events (x86_64).
const NR_PTRACE: u32 = 101;
const NR_KILL: u32 = 62;
const NR_MOUNT: u32 = 165;
const NR_BPF: u32 = 321;

/// The hook's return value for a decision: only `deny` and `kill` refuse the operation (a
/// held one stops the process on its way back to user space).
///
/// Computed as `allowed - 1` after a volatile reload: the compiler otherwise emits
/// `-(denied & 1)`, and the verifier cannot bound a negation, while an LSM program must
/// provably return a value in [-4095, 0] (6.12 checks).
#[inline(always)]
pub fn answer(d: &Decision) -> i32 {
    let allowed = !(d.verdict == Verdict::Deny || d.verdict == Verdict::Kill) as i32;
    // SAFETY: read of a local variable.
    let allowed = unsafe { core::ptr::read_volatile(&allowed) } & 1;
    allowed - EPERM
}

/// Reports a decision on a path (an open, or a write-side path operation) as an `open`.
#[inline(always)]
fn report_path(run: &run::CurrentRun, rs_id: u32, d: &Decision, walked: Option<&kernel::Walked>, open: &event::Open) {
    event::report_open(run, d, rs_id, FLAG_LSM, d.verdict != Verdict::Allow, open, walked, None);
}

/// file_open(struct file *file): every open of a file, with its real access mode.
#[lsm(hook = "file_open")]
pub fn ag_lsm_file_open(ctx: LsmContext) -> i32 {
    on_file_open(&ctx)
}

/// The decision of `file_open` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_file_open(ctx: &impl HookArgs) -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let file: u64 = ctx.arg(0);
    let o = kernel::offsets();
    let fmode: u32 = kernel::read(file, o.file_f_mode).unwrap_or(FMODE_READ | FMODE_WRITE);
    let f_flags: u32 = kernel::read(file, o.file_f_flags).unwrap_or(0);
    if fmode & FMODE_EXEC != 0 || f_flags & FMODE_EXEC != 0 {
        return 0;
    }
    let rs = run::ruleset(&run);
    let walk = match crate::scratch::scratch() {
        Some(buf) => kernel::Walk::of(kernel::path_to_buf(&o, file + o.file_f_path as u64, buf)),
        None => kernel::Walk::NONE,
    };
    let walked = walk.get();
    let (read, write) = (fmode & FMODE_READ != 0, fmode & FMODE_WRITE != 0);
    let mut d = policy::ALLOWED;
    let mut file_id = [0u8; 16];
    let mut access = 0u32;
    if let Some(rs) = &rs {
        access = crate::files::access_bits(read, write);
        (d, file_id) = crate::files::decide_open(rs, &run, file, walked, read, write, true);
    }
    let open = event::Open { open_flags: f_flags, result: answer(&d), access, file_id };
    report_path(&run, rs.as_ref().map_or(0, |r| r.id), &d, walked, &open);
    answer(&d)
}

/// bprm_check_security(struct linux_binprm *bprm): each file exec runs, before it is loaded
/// (the script, then its interpreter; a memfd or an fexecve'd descriptor too). Allowed execs
/// are reported by the tracepoint at sched_process_exec (with argv); refusals here.
#[lsm(hook = "bprm_check_security")]
pub fn ag_lsm_bprm_check(ctx: LsmContext) -> i32 {
    on_bprm_check(&ctx)
}

/// The decision of `bprm_check_security` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_bprm_check(ctx: &impl HookArgs) -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let Some(rs) = run::ruleset(&run) else { return 0 };
    let bprm: u64 = ctx.arg(0);
    let o = kernel::offsets();
    let file: u64 = kernel::read(bprm, o.binprm_file).unwrap_or(0);
    let walk = match crate::scratch::scratch() {
        Some(buf) if file != 0 => kernel::Walk::of(kernel::path_to_buf(&o, file + o.file_f_path as u64, buf)),
        _ => kernel::Walk::NONE,
    };
    let walked = walk.get();
    let (d, file_id) = crate::exec::decide_exec(&rs, &run, file, walked, true);
    if d.verdict == Verdict::Allow {
        return 0;
    }
    event::report_exec(&run, &d, rs.id, FLAG_LSM, file_id, walked, None, None);
    answer(&d)
}

/// A write-side operation on `dentry` (on the mount `vfsmnt`): needs `[files] write`.
/// Violations are reported as an `open` for writing of that path.
#[inline(always)]
fn write_check(dentry: u64, vfsmnt: u64) -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let Some(rs) = run::ruleset(&run) else { return 0 };
    let o = kernel::offsets();
    let walk = match crate::scratch::scratch() {
        Some(buf) => kernel::Walk::of(kernel::dentry_to_buf(&o, dentry, vfsmnt, buf)),
        None => kernel::Walk::NONE,
    };
    let walked = walk.get();
    let d = match walked {
        Some(w) => policy::file_decision(&rs, w, false, true, true, policy::NO_HOLD),
        None => policy::violation(&rs, Rule::Unseen, true, policy::NO_HOLD),
    };
    if d.verdict == Verdict::Allow {
        return 0;
    }
    let open = event::Open { open_flags: O_WRONLY, result: answer(&d), access: ACCESS_WRITE, file_id: [0; 16] };
    report_path(&run, rs.id, &d, walked, &open);
    answer(&d)
}

/// `dentry` in the directory `dir` (a `const struct path *`).
#[inline(always)]
fn write_in(dir: u64, dentry: u64) -> i32 {
    let o = kernel::offsets();
    match kernel::read::<u64>(dir, o.path_mnt) {
        Ok(mnt) => write_check(dentry, mnt),
        Err(()) => unreadable(),
    }
}

/// A hook argument could not be read: refused for runs under an enforcing policy.
#[inline(always)]
fn unreadable() -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let Some(rs) = run::ruleset(&run) else { return 0 };
    answer(&policy::violation(&rs, Rule::Unseen, true, policy::NO_HOLD))
}

/// path_truncate(const struct path *path): truncate(2), ftruncate(2) (6.1: open(O_TRUNC) too).
#[lsm(hook = "path_truncate")]
pub fn ag_lsm_path_truncate(ctx: LsmContext) -> i32 {
    on_path_truncate(&ctx)
}

/// The decision of `path_truncate` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_path_truncate(ctx: &impl HookArgs) -> i32 {
    let path: u64 = ctx.arg(0);
    let o = kernel::offsets();
    match (kernel::read::<u64>(path, o.path_dentry), kernel::read::<u64>(path, o.path_mnt)) {
        (Ok(dentry), Ok(mnt)) => write_check(dentry, mnt),
        _ => unreadable(),
    }
}

/// path_unlink(const struct path *dir, struct dentry *dentry)
#[lsm(hook = "path_unlink")]
pub fn ag_lsm_path_unlink(ctx: LsmContext) -> i32 {
    on_path_unlink(&ctx)
}

/// The decision of `path_unlink` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_path_unlink(ctx: &impl HookArgs) -> i32 {
    write_in(ctx.arg(0), ctx.arg(1))
}

/// path_rmdir(const struct path *dir, struct dentry *dentry)
#[lsm(hook = "path_rmdir")]
pub fn ag_lsm_path_rmdir(ctx: LsmContext) -> i32 {
    on_path_rmdir(&ctx)
}

/// The decision of `path_rmdir` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_path_rmdir(ctx: &impl HookArgs) -> i32 {
    write_in(ctx.arg(0), ctx.arg(1))
}

/// path_mkdir(const struct path *dir, struct dentry *dentry, umode_t mode)
#[lsm(hook = "path_mkdir")]
pub fn ag_lsm_path_mkdir(ctx: LsmContext) -> i32 {
    on_path_mkdir(&ctx)
}

/// The decision of `path_mkdir` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_path_mkdir(ctx: &impl HookArgs) -> i32 {
    write_in(ctx.arg(0), ctx.arg(1))
}

/// path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int dev):
/// also every open(O_CREAT) that creates a file, before it exists.
#[lsm(hook = "path_mknod")]
pub fn ag_lsm_path_mknod(ctx: LsmContext) -> i32 {
    on_path_mknod(&ctx)
}

/// The decision of `path_mknod` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_path_mknod(ctx: &impl HookArgs) -> i32 {
    write_in(ctx.arg(0), ctx.arg(1))
}

/// path_symlink(const struct path *dir, struct dentry *dentry, const char *old_name)
#[lsm(hook = "path_symlink")]
pub fn ag_lsm_path_symlink(ctx: LsmContext) -> i32 {
    on_path_symlink(&ctx)
}

/// The decision of `path_symlink` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_path_symlink(ctx: &impl HookArgs) -> i32 {
    write_in(ctx.arg(0), ctx.arg(1))
}

/// path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry):
/// a new name for a file needs write access at the new name and at the file's own name
/// (hard links never cross mounts, so both are on new_dir's mount): a file the policy
/// denies cannot get an allowed second name.
#[lsm(hook = "path_link")]
pub fn ag_lsm_path_link(ctx: LsmContext) -> i32 {
    on_path_link(&ctx)
}

/// The decision of `path_link` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_path_link(ctx: &impl HookArgs) -> i32 {
    let (old_dentry, new_dir, new_dentry): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let o = kernel::offsets();
    let Ok(mnt) = kernel::read::<u64>(new_dir, o.path_mnt) else { return unreadable() };
    let r = write_check(old_dentry, mnt);
    if r != 0 {
        return r;
    }
    write_check(new_dentry, mnt)
}

/// path_rename(const struct path *old_dir, struct dentry *old_dentry, const struct path
/// *new_dir, struct dentry *new_dentry, unsigned int flags): both names need write access
/// (a denied file cannot be moved to an allowed name, nor an allowed one over a denied one).
#[lsm(hook = "path_rename")]
pub fn ag_lsm_path_rename(ctx: LsmContext) -> i32 {
    on_path_rename(&ctx)
}

/// The decision of `path_rename` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_path_rename(ctx: &impl HookArgs) -> i32 {
    let r = write_in(ctx.arg(0), ctx.arg(1));
    if r != 0 {
        return r;
    }
    write_in(ctx.arg(2), ctx.arg(3))
}

/// A run's process acting outside its run (self-protection): refused under an enforcing
/// policy (reported as would_deny in monitor mode), reported as a `syscall` event.
#[inline(always)]
fn outside_run(run: &run::CurrentRun, nr: u32, arg0: u64) -> i32 {
    let Some(rs) = run::ruleset(run) else { return 0 };
    let d = policy::violation(&rs, Rule::SelfProtection, true, policy::NO_HOLD);
    event::report_syscall(run, &d, rs.id, FLAG_LSM, nr, arg0);
    answer(&d)
}

/// task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const struct cred
/// *cred): a signal (kill, tgkill, sigqueue, pidfd_send_signal) to a process outside the run.
#[lsm(hook = "task_kill")]
pub fn ag_lsm_task_kill(ctx: LsmContext) -> i32 {
    on_task_kill(&ctx)
}

/// The decision of `task_kill` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_task_kill(ctx: &impl HookArgs) -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let target: u64 = ctx.arg(0);
    let o = kernel::offsets();
    if crate::contain::task_in(&o, target, run.run_cgroup) {
        return 0;
    }
    let pid: i32 = kernel::read(target, o.task_tgid).unwrap_or(0);
    outside_run(&run, NR_KILL, pid as u64)
}

/// ptrace_access_check(struct task_struct *child, unsigned int mode): ptrace, and reading
/// another process's memory or descriptors through /proc, of a process outside the run.
#[lsm(hook = "ptrace_access_check")]
pub fn ag_lsm_ptrace_access_check(ctx: LsmContext) -> i32 {
    on_ptrace_access_check(&ctx)
}

/// The decision of `ptrace_access_check` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_ptrace_access_check(ctx: &impl HookArgs) -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let target: u64 = ctx.arg(0);
    let o = kernel::offsets();
    if crate::contain::task_in(&o, target, run.run_cgroup) {
        return 0;
    }
    let pid: i32 = kernel::read(target, o.task_tgid).unwrap_or(0);
    outside_run(&run, NR_PTRACE, pid as u64)
}

/// bpf(int cmd, union bpf_attr *attr, unsigned int size[, bool kernel]): no bpf() from a run.
#[lsm(hook = "bpf")]
pub fn ag_lsm_bpf(ctx: LsmContext) -> i32 {
    on_bpf(&ctx)
}

/// The decision of `bpf` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_bpf(ctx: &impl HookArgs) -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let cmd: i32 = ctx.arg(0);
    outside_run(&run, NR_BPF, cmd as u64)
}

/// sb_mount(const char *dev_name, const struct path *path, const char *type, unsigned long
/// flags, void *data): no mount from a run.
#[lsm(hook = "sb_mount")]
pub fn ag_lsm_sb_mount(ctx: LsmContext) -> i32 {
    on_sb_mount(&ctx)
}

/// The decision of `sb_mount` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_sb_mount(ctx: &impl HookArgs) -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let flags: u64 = ctx.arg(3);
    outside_run(&run, NR_MOUNT, flags)
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// socket_connect(struct socket *sock, struct sockaddr *address, int addrlen): a backstop
/// for the cgroup connect programs, which judge a socket by the cgroup that created it. A
/// socket created outside the run and passed in (inherited, or over AF_UNIX) is judged here,
/// by the connecting process's run; the others are left to the cgroup programs (their
/// approvals, kills and holds).
#[lsm(hook = "socket_connect")]
pub fn ag_lsm_socket_connect(ctx: LsmContext) -> i32 {
    on_socket_connect(&ctx)
}

/// The decision of `socket_connect` (BPF LSM, or fmod_ret on its `security_*` function).
#[inline(always)]
pub fn on_socket_connect(ctx: &impl HookArgs) -> i32 {
    let Some(run) = run::current_run() else { return 0 };
    let Some(rs) = run::ruleset(&run) else { return 0 };
    let (sock, addr, len): (u64, u64, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let o = kernel::offsets();
    let sk: u64 = kernel::read(sock, o.socket_sk).unwrap_or(0);
    if let Ok(cgrp) = kernel::read::<u64>(sk + o.sock_sk_cgrp_data as u64, o.sock_cgroup_data_cgroup) {
        if sk != 0 && crate::contain::cgroup_in(&o, cgrp, run.run_cgroup) {
            return 0;
        }
    }
    let family: u16 = kernel::read(addr, 0).unwrap_or(0);
    let port = u16::from_be(kernel::read::<u16>(addr, 2).unwrap_or(0));
    let ip = match family {
        AF_INET if len >= 16 => policy::mapped_v4(kernel::read::<u32>(addr, 4).unwrap_or(0)),
        AF_INET6 if len >= 24 => kernel::read::<[u8; 16]>(addr, 8).unwrap_or([0; 16]),
        _ => return 0,
    };
    let d = crate::net::decide_connect(&rs, &run, &ip, port, None);
    if d.verdict == Verdict::Allow {
        return 0;
    }
    // This hook can signal: a refusal is a violation as any other (kill, or deny).
    let d = if d.verdict == Verdict::Deny { policy::violation(&rs, Rule::Network, true, policy::NO_HOLD) } else { d };
    let sock_type: i16 = kernel::read(sock, o.socket_type).unwrap_or(0);
    let c = event::Connect { result: -EPERM, family, port, protocol: 0, sock_type: sock_type as u16, addr: ip };
    event::report_connect(Kind::Connect, &run, &d, rs.id, FLAG_LSM, true, &c);
    answer(&d)
}
