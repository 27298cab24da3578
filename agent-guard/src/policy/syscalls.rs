//! Syscall names and numbers in policies: what `[syscalls] deny` accepts, and the syscalls
//! the tracepoint backend cannot judge (refused unseen).
use super::paths::Problem;
use std::str::FromStr;

use agent_guard_common::SYSCALL_WORDS;

/// Syscalls refused in enforce mode because the tracepoint backend cannot check what they do.
pub const UNSEEN_SYSCALLS: &[&str] = &[
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "link",
    "linkat",
    "open_by_handle_at",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "setns",
    "unshare",
    "chroot",
    "pidfd_getfd",
    "process_vm_readv",
    "process_vm_writev",
    // Not unseen but never a run's business: the kernel state of the enforcement itself
    // (reported as `self_protection`).
    "bpf",
];

/// Of the [`UNSEEN_SYSCALLS`], those the lsm backend judges itself, so they are not refused
/// there as unseen: link and linkat (the path_link hook checks both names against the policy),
/// bpf (the bpf hook refuses it with EPERM).
pub const LSM_JUDGED_SYSCALLS: &[&str] = &["link", "linkat", "bpf"];

/// Of the [`UNSEEN_SYSCALLS`], those the Landlock layer of a launched run judges (a hard link
/// needs Landlock's make-file right in the new name's directory, and its refer right on both
/// sides when the directories differ): the launcher's seccomp filter lets them through when
/// the layer handles writes and no `deny` or `read` rule lies inside a write tree (see
/// `runs::seccomp`).
pub const LANDLOCK_JUDGED_SYSCALLS: &[&str] = &["link", "linkat"];

/// Of the [`UNSEEN_SYSCALLS`], those the seccomp filter of a launched run refuses with ENOSYS
/// rather than EPERM: io_uring, whose users fall back to plain syscalls when it is missing.
pub const ENOSYS_SYSCALLS: &[&str] = &["io_uring_setup", "io_uring_enter", "io_uring_register"];

/// Syscalls the seccomp filter of a launched run never refuses with an errno, even when
/// `[syscalls] deny` names them (the sys_enter check still kills them): `sendmsg`, which hands
/// the filter's listener to `agent-guard run` after the filter is in place, and those after
/// which a process cannot go on sensibly when refused (`exit`, `exit_group`, `rt_sigreturn`).
pub const NEVER_ERRNO_SYSCALLS: &[&str] = &["sendmsg", "exit", "exit_group", "rt_sigreturn"];

/// The highest x86_64 syscall number this build knows.
pub fn last_syscall_number() -> u32 {
    syscalls::x86_64::Sysno::last().id() as u32
}

/// Where a path syscall takes its path: (the index of its directory-descriptor argument, if
/// any; the index of the path argument). For events: the path, never a raw pointer.
pub fn path_argument(name: &str) -> Option<(Option<usize>, usize)> {
    Some(match name {
        "open" | "creat" | "stat" | "lstat" | "access" | "chmod" | "chown" | "lchown" | "truncate" | "unlink"
        | "rmdir" | "mkdir" | "mknod" | "rename" | "link" | "readlink" | "utime" | "utimes" | "chdir" | "chroot"
        | "execve" | "umount2" | "pivot_root" | "swapon" | "swapoff" | "acct" | "statfs" | "uselib" | "setxattr"
        | "lsetxattr" | "getxattr" | "lgetxattr" | "listxattr" | "llistxattr" | "removexattr" | "lremovexattr" => {
            (None, 0)
        }
        "symlink" | "mount" | "inotify_add_watch" => (None, 1),
        "openat" | "openat2" | "newfstatat" | "statx" | "faccessat" | "faccessat2" | "fchmodat" | "fchmodat2"
        | "fchownat" | "unlinkat" | "mkdirat" | "mknodat" | "renameat" | "renameat2" | "linkat" | "readlinkat"
        | "utimensat" | "futimesat" | "execveat" | "open_tree" | "open_tree_attr" | "fspick" | "move_mount"
        | "name_to_handle_at" | "setxattrat" | "getxattrat" | "listxattrat" | "removexattrat" | "file_getattr"
        | "file_setattr" => (Some(0), 1),
        "symlinkat" => (Some(1), 2),
        "fanotify_mark" => (Some(3), 4),
        _ => return None,
    })
}


/// The x86_64 number of a syscall name.
pub fn syscall_number(name: &str) -> Option<u32> {
    syscalls::x86_64::Sysno::from_str(name).ok().and_then(|s| u32::try_from(s.id()).ok())
}

/// The x86_64 name of syscall `nr` (for events).
pub fn syscall_name(nr: u32) -> Option<&'static str> {
    syscalls::x86_64::Sysno::new(nr as usize).map(|s| s.name())
}

pub(super) fn all_syscall_names() -> impl Iterator<Item = &'static str> {
    (0..SYSCALL_WORDS as u32 * 64).filter_map(syscall_name)
}

/// Longest word compared with syscall names for a hint (no name is longer).
const HINT_MAX: usize = 32;

/// Levenshtein distance over bytes, for words of at most [`HINT_MAX`] bytes (longer ones are
/// cut): no allocation, as it runs once per syscall name for every unknown entry.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (&a.as_bytes()[..a.len().min(HINT_MAX)], &b.as_bytes()[..b.len().min(HINT_MAX)]);
    let mut prev = [0usize; HINT_MAX + 1];
    let mut cur = [0usize; HINT_MAX + 1];
    for (j, p) in prev.iter_mut().enumerate().take(b.len() + 1) {
        *p = j;
    }
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

pub(super) fn check_syscall(s: &str) -> Result<((String, u32), String), Problem> {
    let bits = SYSCALL_WORDS as u32 * 64;
    let (name, nr) = if let Ok(n) = s.parse::<u32>() {
        if n >= bits {
            return Err((
                format!("syscall number {n} cannot be represented (the kernel bitmap holds 0-{})", bits - 1),
                None,
            ));
        }
        match syscall_name(n) {
            Some(name) => (name.to_string(), n),
            None => return Err((format!("no x86_64 syscall has number {n}"), None)),
        }
    } else {
        match syscall_number(s) {
            Some(nr) => (s.to_string(), nr),
            None => return Err((format!("unknown syscall {s:?}"), Some(syscall_hint(s)))),
        }
    };
    if nr >= bits {
        return Err((format!("syscall {name} ({nr}) cannot be represented (the kernel bitmap holds 0-{})", bits - 1), None));
    }
    Ok(((name.clone(), nr), name))
}

pub(super) fn syscall_hint(s: &str) -> String {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_prefix("sys_").unwrap_or(&lower);
    // No syscall name is longer than 32 bytes: a longer word is no typo of one, and the
    // distance to every name would cost its length times the table (a policy sent over the
    // control socket may carry megabytes).
    if lower.len() > HINT_MAX {
        return "names come from the x86_64 syscall table, e.g. \"ptrace\"".into();
    }
    let best = all_syscall_names().map(|n| (edit_distance(lower, n), n)).min();
    if let Some((d, n)) = best {
        if d <= 2.max(lower.len() / 3) {
            return format!("did you mean {n:?}?");
        }
    }
    if let Some(n) = all_syscall_names().filter(|n| n.starts_with(lower)).min() {
        return format!("did you mean {n:?}?");
    }
    "names come from the x86_64 syscall table, e.g. \"ptrace\"".into()
}

