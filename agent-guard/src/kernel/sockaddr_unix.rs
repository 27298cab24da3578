//! The cgroup `connect_unix` and `sendmsg_unix` programs (kernel 6.7+), loaded and attached
//! here with raw bpf(2) calls (`rawbpf`), because aya 0.14 has no attach type for them
//! (`CgroupSockAddrAttachType` stops at the IP ones): `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`,
//! expected attach type `BPF_CGROUP_UNIX_CONNECT` / `_SENDMSG`.
//!
//! On a kernel without these attach types (before 6.7) the load fails with EINVAL: the daemon
//! says so (`status`) and unix connects are judged only by the lsm backend, if any.
use std::{
    os::fd::{AsRawFd, OwnedFd},
    sync::Mutex,
};

use aya::Ebpf;

use crate::kernel::rawbpf;

const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_UNIX_CONNECT: u32 = 49;
const BPF_CGROUP_UNIX_SENDMSG: u32 = 50;

/// (program in the object, attach type).
pub const PROGRAMS: &[(&str, u32)] =
    &[("ag_connect_unix", BPF_CGROUP_UNIX_CONNECT), ("ag_sendmsg_unix", BPF_CGROUP_UNIX_SENDMSG)];

/// The loaded programs, or why they are not (for `status`).
static LOADED: Mutex<Option<Result<Vec<(&'static str, u32, OwnedFd)>, String>>> = Mutex::new(None);

/// Whether the unix programs are loaded (Err: why not).
pub fn state() -> Result<(), String> {
    match &*LOADED.lock().expect("not poisoned") {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e.clone()),
        None => Err("not loaded".into()),
    }
}

/// Loads the unix programs of `object` against the maps of `ebpf` (call before any map is
/// taken out of it). The outcome is kept for `attach` and `state`.
pub fn load(object: &[u8], ebpf: &Ebpf) {
    let r = load_inner(object, ebpf);
    if let Err(e) = &r {
        tracing::info!("cgroup connect_unix/sendmsg_unix programs not loaded: {e}");
    }
    *LOADED.lock().expect("not poisoned") = Some(r);
}

fn load_inner(object: &[u8], ebpf: &Ebpf) -> Result<Vec<(&'static str, u32, OwnedFd)>, String> {
    let obj = rawbpf::relocated(object, ebpf)?;
    let mut out = Vec::new();
    for (name, attach) in PROGRAMS {
        let ty = rawbpf::ProgType { prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR, expected_attach_type: *attach, attach_btf_id: 0, btf: None };
        let fd = match rawbpf::load_program(&obj, name, &ty) {
            Ok(fd) => fd,
            Err(Ok(r)) if r.error.raw_os_error() == Some(libc::EINVAL) && r.verifier.is_empty() => {
                return Err("this kernel has no cgroup unix socket hooks (they came with 6.7)".into());
            }
            Err(Ok(r)) => return Err(format!("BPF_PROG_LOAD of {name}: {r}")),
            Err(Err(e)) => return Err(e),
        };
        out.push((*name, *attach, fd));
    }
    Ok(out)
}

/// Attaches the loaded unix programs to `cgroup` and pins each link at `pin(name)`; links
/// already pinned are left as they are. Returns the pins it created (Ok(empty) when the
/// programs are not loaded on this kernel).
pub fn attach(cgroup: &std::fs::File, pin: impl Fn(&str) -> std::path::PathBuf) -> Result<Vec<std::path::PathBuf>, String> {
    let guard = LOADED.lock().expect("not poisoned");
    let Some(Ok(progs)) = &*guard else { return Ok(vec![]) };
    let mut done = Vec::new();
    for (name, attach, fd) in progs {
        let path = pin(name);
        if path.exists() {
            continue;
        }
        let link = match rawbpf::link_create(fd, cgroup.as_raw_fd(), *attach) {
            Ok(l) => l,
            Err(e) => {
                rawbpf::unpin_all(&done);
                return Err(format!("BPF_LINK_CREATE of {name}: {e}"));
            }
        };
        if let Err(e) = rawbpf::pin_fd(&link, &path) {
            rawbpf::unpin_all(&done);
            return Err(format!("pinning {}: {e}", path.display()));
        }
        done.push(path);
    }
    Ok(done)
}
