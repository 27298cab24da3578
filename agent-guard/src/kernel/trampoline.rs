//! The trampoline backend's programs: `BPF_MODIFY_RETURN` (fmod_ret) programs on the kernel's
//! `security_*` functions (agent-guard-ebpf/src/trampoline.rs), loaded and attached here with
//! raw bpf(2) calls (`rawbpf`).
//!
//! Why not aya: aya 0.14 knows fentry and fexit but not fmod_ret (its object parser refuses
//! `fmod_ret/` sections and `FEntry::load` fixes the attach type to BPF_TRACE_FENTRY), and
//! the kernel checks the expected attach type at load. The programs therefore sit in
//! `fentry/` sections, aya never loads them, and this module loads each as
//! `BPF_PROG_TYPE_TRACING` with expected attach type `BPF_MODIFY_RETURN` and the BTF id of
//! its `security_*` function (with the object's BTF function info, which the verifier needs
//! for a tracing program with calls), attaches it with BPF_LINK_CREATE and pins the link. The kernel
//! allows fmod_ret on any `security_*` function (`check_attach_modify_return`) whether or not
//! BPF LSM is active; kernels that refuse trampolines (no JIT support, lockdown, or as on the
//! development machines, EPERM for every fentry/fexit/fmod_ret program) fail the first load.
use std::{os::fd::OwnedFd, path::PathBuf};

use aya::Ebpf;

use crate::kernel::rawbpf;

const BPF_PROG_TYPE_TRACING: u32 = aya_obj::generated::bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
const BPF_MODIFY_RETURN: u32 = aya_obj::generated::bpf_attach_type::BPF_MODIFY_RETURN as u32;

/// Why the programs could not be loaded or attached, in the kernel's or the verifier's words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Loads every program of `programs` ((program, kernel function)) of `object` against the
/// maps of `ebpf` (before any map is taken out of it), attaches it and pins its link at
/// `pin(program)`; programs whose link is pinned already (an earlier daemon's) are left as
/// they are. On error, what this call pinned is removed again, so a failed probe leaves
/// nothing attached. Returns how many were adopted.
pub fn attach(
    object: &[u8],
    ebpf: &Ebpf,
    programs: &[(&str, &str)],
    pin: impl Fn(&str) -> PathBuf,
) -> Result<usize, Refused> {
    let obj = rawbpf::relocated(object, ebpf).map_err(Refused)?;
    let btf = aya::Btf::from_sys_fs().map_err(|e| Refused(format!("reading the kernel's BTF: {e}")))?;
    // Any program aya loaded: the sched_process_exec one is loaded before any backend.
    let object_btf = rawbpf::object_btf(ebpf, "ag_exec").map_err(Refused)?;
    let mut adopted = 0;
    let mut done: Vec<PathBuf> = Vec::new();
    let mut one = |name: &str, function: &str| -> Result<(), Refused> {
        let path = pin(name);
        if path.exists() {
            adopted += 1;
            return Ok(());
        }
        let at = format!("{name} (fmod_ret/{function})");
        let id = btf
            .id_by_type_name_kind(function, aya_obj::btf::BtfKind::Func)
            .map_err(|e| Refused(format!("{at}: the kernel's BTF has no function {function}: {e}")))?;
        let ty = rawbpf::ProgType {
            prog_type: BPF_PROG_TYPE_TRACING,
            expected_attach_type: BPF_MODIFY_RETURN,
            attach_btf_id: id,
            btf: Some(&object_btf),
        };
        let prog: OwnedFd = rawbpf::load_program(&obj, name, &ty).map_err(|e| match e {
            Ok(r) => Refused(format!("{at}: BPF_PROG_LOAD: {r}")),
            Err(e) => Refused(format!("{at}: {e}")),
        })?;
        let link = rawbpf::link_create(&prog, 0, BPF_MODIFY_RETURN).map_err(|e| Refused(format!("{at}: BPF_LINK_CREATE: {e}")))?;
        rawbpf::pin_fd(&link, &path).map_err(|e| Refused(format!("{at}: pinning {}: {e}", path.display())))?;
        done.push(path);
        Ok(())
    };
    for (name, function) in programs {
        if let Err(e) = one(name, function) {
            rawbpf::unpin_all(&done);
            return Err(e);
        }
    }
    Ok(adopted)
}
