//! The cgroup `connect_unix` and `sendmsg_unix` programs (kernel 6.7+), loaded and attached
//! here with raw bpf(2) calls, because aya 0.14 has no attach type for them
//! (`CgroupSockAddrAttachType` stops at the IP ones).
//!
//! The kernel checks that a cgroup sock_addr program was loaded for the attach type it is
//! attached with (`expected_attach_type`), so they cannot be loaded by aya under another
//! type and attached as unix ones. Instead: the object is parsed again with aya-obj, its map
//! references are relocated to the maps aya created (same names, same file descriptors), and
//! the two programs' instructions are loaded with BPF_PROG_LOAD (`BPF_PROG_TYPE_CGROUP_SOCK_ADDR`,
//! expected attach type `BPF_CGROUP_UNIX_CONNECT` / `_SENDMSG`); they attach with
//! BPF_LINK_CREATE and their links are pinned like every other link (BPF_OBJ_PIN).
//!
//! On a kernel without these attach types (before 6.7) the load fails with EINVAL: the daemon
//! says so (`status`) and unix connects are judged only by the lsm backend, if any.
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
    sync::Mutex,
};

use aya::{maps::Map, Ebpf};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
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

/// bpf_attr for BPF_PROG_LOAD, up to expected_attach_type (the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 10],
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    _rest: [u64; 4],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr prefix of the given size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

/// The file descriptor of a map aya created (the variants this object uses).
fn map_fd(m: &Map) -> Option<RawFd> {
    let data = match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::RingBuf(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
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
    let mut obj = aya_obj::Object::parse(object).map_err(|e| format!("parsing the object: {e}"))?;
    let defs = obj.maps.clone();
    let fds: HashMap<String, RawFd> =
        ebpf.maps().filter_map(|(name, m)| map_fd(m).map(|fd| (name.to_string(), fd))).collect();
    let mut maps = Vec::new();
    for (name, def) in &defs {
        let fd = *fds.get(name).ok_or_else(|| format!("map {name} is not loaded"))?;
        maps.push((name.as_str(), fd, def));
    }
    let text: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(maps.into_iter(), &text).map_err(|e| format!("relocating maps: {e}"))?;
    obj.relocate_calls(&text).map_err(|e| format!("relocating calls: {e}"))?;
    let license = CString::new("GPL").expect("no NUL");
    let mut out = Vec::new();
    for (name, attach) in PROGRAMS {
        let prog = obj.programs.get(*name).ok_or_else(|| format!("program {name} is missing from the object"))?;
        let insns = &obj.functions[&prog.function_key()].instructions;
        // Without a log first (a full log fails a good load with ENOSPC); again with one
        // (the last lines are where the verifier says why) if that fails.
        let mut log = vec![0u8; 1 << 22];
        let mut try_load = |log_level: u32| {
            let mut attr = ProgLoad {
                prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                insn_cnt: insns.len() as u32,
                insns: insns.as_ptr() as u64,
                license: license.as_ptr() as u64,
                log_level,
                log_size: if log_level == 0 { 0 } else { log.len() as u32 },
                log_buf: if log_level == 0 { 0 } else { log.as_mut_ptr() as u64 },
                expected_attach_type: *attach,
                ..Default::default()
            };
            let short = name.as_bytes();
            attr.prog_name[..short.len().min(15)].copy_from_slice(&short[..short.len().min(15)]);
            bpf(BPF_PROG_LOAD, &mut attr)
        };
        let fd = match try_load(0).or_else(|_| try_load(1)) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && log[0] == 0 => {
                return Err("this kernel has no cgroup unix socket hooks (they came with 6.7)".into());
            }
            Err(e) => {
                let text = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(log.len())]).into_owned();
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                return Err(format!("BPF_PROG_LOAD of {name}: {e}; verifier: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | ")));
            }
        };
        // SAFETY: a new descriptor the kernel just returned.
        out.push((*name, *attach, unsafe { OwnedFd::from_raw_fd(fd as RawFd) }));
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
        let mut attr = LinkCreate {
            prog_fd: fd.as_raw_fd() as u32,
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: *attach,
            ..Default::default()
        };
        let link = match bpf(BPF_LINK_CREATE, &mut attr) {
            // SAFETY: a new descriptor the kernel just returned.
            Ok(l) => unsafe { OwnedFd::from_raw_fd(l as RawFd) },
            Err(e) => {
                undo(&done);
                return Err(format!("BPF_LINK_CREATE of {name}: {e}"));
            }
        };
        if let Err(e) = pin_fd(&link, &path) {
            undo(&done);
            return Err(format!("pinning {}: {e}", path.display()));
        }
        done.push(path);
    }
    Ok(done)
}

fn undo(pins: &[std::path::PathBuf]) {
    for p in pins {
        let _ = std::fs::remove_file(p);
    }
}

fn pin_fd(fd: &OwnedFd, path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let mut attr = ObjPin { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, ..Default::default() };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}
