//! Raw bpf(2) calls for the programs aya 0.14 cannot load or attach: the cgroup unix socket
//! programs (`sockaddr_unix`) and the fmod_ret programs of the trampoline backend
//! (`trampoline`). aya has no attach type for either, and the kernel checks the attach type a
//! program was loaded with, so they cannot be loaded by aya under another type and attached
//! as these.
//!
//! Instead: the object is parsed again with aya-obj, its map references are relocated to the
//! maps aya created (same names, same file descriptors), and the program's instructions are
//! loaded with BPF_PROG_LOAD under the right type and expected attach type; BPF_LINK_CREATE
//! attaches them and BPF_OBJ_PIN pins the links like every other link.
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use aya::{maps::Map, Ebpf};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_LINK_CREATE: libc::c_long = 28;

/// bpf_attr for BPF_PROG_LOAD, up to attach_btf_obj_fd (the rest stays zero).
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
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    /// The kernel BTF id of the function a tracing program attaches to.
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    // Named, not padding: a Rust struct's padding bytes are not zeroed, and the kernel
    // refuses (EINVAL) non-zero bytes past the fields it knows.
    core_relo_cnt: u32,
    _rest: [u64; 6],
}

#[repr(C)]
#[derive(Default)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
    _rest: [u32; 9],
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
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::LpmTrie(d)
        | Map::RingBuf(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// `object` parsed again, its map references relocated to the maps of `ebpf` (call before any
/// map is taken out of it) and its calls resolved.
pub fn relocated(object: &[u8], ebpf: &Ebpf) -> Result<aya_obj::Object, String> {
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
    Ok(obj)
}

/// What a program is loaded as.
pub struct ProgType<'a> {
    pub prog_type: u32,
    pub expected_attach_type: u32,
    /// Tracing programs: the kernel BTF id of the function (0 otherwise).
    pub attach_btf_id: u32,
    /// The object's BTF as loaded in the kernel ([`object_btf`]), for the programs' function
    /// info: tracing programs with calls need it ("missing btf func_info"). None: loaded
    /// without BTF.
    pub btf: Option<&'a OwnedFd>,
}

/// The object's BTF as aya loaded it into the kernel, found through `program` (one aya
/// loaded already): the func_info type ids of a relocated object refer to it.
pub fn object_btf(ebpf: &Ebpf, program: &str) -> Result<OwnedFd, String> {
    let info = ebpf
        .program(program)
        .ok_or_else(|| format!("program {program} is missing from the object"))?
        .info()
        .map_err(|e| format!("the info of {program}: {e}"))?;
    let id = info.btf_id().ok_or_else(|| format!("{program} was loaded without BTF"))?;
    let mut attr = GetFdById { id, ..Default::default() };
    // SAFETY: a new descriptor the kernel just returned.
    bpf(BPF_BTF_GET_FD_BY_ID, &mut attr)
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
        .map_err(|e| format!("BPF_BTF_GET_FD_BY_ID {id}: {e}"))
}

/// Why BPF_PROG_LOAD refused a program: the kernel's error and the verifier log's last lines
/// (empty when the verifier wrote nothing).
pub struct Refused {
    pub error: std::io::Error,
    pub verifier: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.verifier.is_empty() {
            write!(f, "{}", self.error)
        } else {
            write!(f, "{}; verifier: {}", self.error, self.verifier)
        }
    }
}

/// Loads the program `name` of the relocated `obj` as `ty` (GPL).
pub fn load_program(obj: &aya_obj::Object, name: &str, ty: &ProgType) -> Result<OwnedFd, Result<Refused, String>> {
    let prog = obj.programs.get(name).ok_or_else(|| Err(format!("program {name} is missing from the object")))?;
    let function = &obj.functions[&prog.function_key()];
    let insns = &function.instructions;
    let func_info = &function.func_info.func_info;
    let license = CString::new("GPL").expect("no NUL");
    // Without a log first (a full log fails a good load with ENOSPC); again with one (the
    // last lines are where the verifier says why) if that fails.
    let mut log = vec![0u8; 1 << 22];
    let mut try_load = |log_level: u32| {
        let mut attr = ProgLoad {
            prog_type: ty.prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size: if log_level == 0 { 0 } else { log.len() as u32 },
            log_buf: if log_level == 0 { 0 } else { log.as_mut_ptr() as u64 },
            expected_attach_type: ty.expected_attach_type,
            attach_btf_id: ty.attach_btf_id,
            ..Default::default()
        };
        if let Some(btf) = ty.btf.filter(|_| !func_info.is_empty()) {
            attr.prog_btf_fd = btf.as_raw_fd() as u32;
            attr.func_info_rec_size = function.func_info_rec_size as u32;
            attr.func_info = func_info.as_ptr() as u64;
            attr.func_info_cnt = func_info.len() as u32;
        }
        let short = &name.as_bytes()[..name.len().min(15)];
        attr.prog_name[..short.len()].copy_from_slice(short);
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    match try_load(0).or_else(|_| try_load(1)) {
        // SAFETY: a new descriptor the kernel just returned.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(error) => {
            let text = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(log.len())]).into_owned();
            let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).rev().take(8).collect();
            Err(Ok(Refused { error, verifier: tail.into_iter().rev().collect::<Vec<_>>().join(" | ") }))
        }
    }
}

/// Attaches `prog` with BPF_LINK_CREATE (target_fd: a cgroup, or 0 for a tracing program).
pub fn link_create(prog: &OwnedFd, target_fd: RawFd, attach_type: u32) -> std::io::Result<OwnedFd> {
    let mut attr =
        LinkCreate { prog_fd: prog.as_raw_fd() as u32, target_fd: target_fd as u32, attach_type, ..Default::default() };
    // SAFETY: a new descriptor the kernel just returned.
    bpf(BPF_LINK_CREATE, &mut attr).map(|l| unsafe { OwnedFd::from_raw_fd(l as RawFd) })
}

/// Pins `fd` (a link) at `path` on bpffs.
pub fn pin_fd(fd: &OwnedFd, path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let mut attr = ObjPin { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, ..Default::default() };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Removes the pins in `pins` (undoing a partial attach).
pub fn unpin_all(pins: &[std::path::PathBuf]) {
    for p in pins {
        let _ = std::fs::remove_file(p);
    }
}
