//! The `trampoline` backend: the lsm backend's decisions, reached through BPF trampolines
//! instead of BPF LSM. Each program here is a `BPF_MODIFY_RETURN` (fmod_ret) program on the
//! kernel function `security_<hook>` that calls the LSM hook: the kernel allows fmod_ret on
//! every `security_*` function even where `bpf` is not in the active LSM list (the stock boot
//! of most distributions), as long as it has BTF and BPF trampolines.
//!
//! An fmod_ret program sees the function's arguments (the LSM hook's, in the same order) and
//! the return value so far; returning non-zero makes `security_<hook>` return that value
//! without running (and without running the LSMs behind it), so a refusal is the same -EPERM
//! the lsm backend returns, before the operation. Each program only hands its arguments to
//! the shared decision (`lsm::on_<hook>` and its siblings): nothing is decided here.
//!
//! aya 0.14 has no fmod_ret program type: the section name is `fentry/security_<hook>` so
//! that aya parses the object, and the daemon loads these programs itself with expected attach
//! type BPF_MODIFY_RETURN (agent-guard/src/kernel/trampoline.rs). `fentry` is only the
//! container: aya's `#[fentry]` wrapper would drop the return value, hence the plain entry
//! points below.
use core::ffi::c_void;

use aya_ebpf::programs::FEntryContext;

use crate::{listen, lsm, sockets, unix};

/// `ag_fmr_<hook>`: the fmod_ret entry point of `security_<hook>`, deciding with `decide`.
macro_rules! fmod_ret {
    ($name:ident, $function:literal, $decide:path) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = concat!("fentry/", $function))]
        pub fn $name(ctx: *mut c_void) -> i32 {
            $decide(&FEntryContext::new(ctx))
        }
    };
}

fmod_ret!(ag_fmr_file_open, "security_file_open", lsm::on_file_open);
fmod_ret!(ag_fmr_bprm_check, "security_bprm_check", lsm::on_bprm_check);
fmod_ret!(ag_fmr_path_truncate, "security_path_truncate", lsm::on_path_truncate);
fmod_ret!(ag_fmr_path_unlink, "security_path_unlink", lsm::on_path_unlink);
fmod_ret!(ag_fmr_path_rmdir, "security_path_rmdir", lsm::on_path_rmdir);
fmod_ret!(ag_fmr_path_mkdir, "security_path_mkdir", lsm::on_path_mkdir);
fmod_ret!(ag_fmr_path_mknod, "security_path_mknod", lsm::on_path_mknod);
fmod_ret!(ag_fmr_path_symlink, "security_path_symlink", lsm::on_path_symlink);
fmod_ret!(ag_fmr_path_link, "security_path_link", lsm::on_path_link);
fmod_ret!(ag_fmr_path_rename, "security_path_rename", lsm::on_path_rename);
fmod_ret!(ag_fmr_task_kill, "security_task_kill", lsm::on_task_kill);
fmod_ret!(ag_fmr_ptrace_access_check, "security_ptrace_access_check", lsm::on_ptrace_access_check);
fmod_ret!(ag_fmr_bpf, "security_bpf", lsm::on_bpf);
fmod_ret!(ag_fmr_sb_mount, "security_sb_mount", lsm::on_sb_mount);
fmod_ret!(ag_fmr_socket_connect, "security_socket_connect", lsm::on_socket_connect);
fmod_ret!(ag_fmr_socket_create, "security_socket_create", sockets::on_socket_create);
fmod_ret!(ag_fmr_unix_stream_connect, "security_unix_stream_connect", unix::on_unix_stream_connect);
fmod_ret!(ag_fmr_unix_may_send, "security_unix_may_send", unix::on_unix_may_send);
fmod_ret!(ag_fmr_socket_listen, "security_socket_listen", listen::on_socket_listen);
