//! Kernel structure offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).
//! rustc emits no CO-RE relocations, so the kernel programs read fields at offsets the daemon
//! looks up here and hands over as a global (`AG_OFFSETS`) at load time.
use agent_guard_common::KernelOffsets;
use btf_rs::{Btf, Type};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF from {path}: {source} (agent-guard needs a kernel built with CONFIG_DEBUG_INFO_BTF)")]
    Read { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no field {field}")]
    NoField { strukt: String, field: String },
    #[error("kernel BTF: {0}")]
    Btf(#[from] btf_rs::Error),
}

/// Where a field lives: byte offset and size in bytes (0 for a bitfield).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, BtfError> {
        Btf::from_file(VMLINUX)
            .map(|btf| Self { btf })
            .map_err(|source| BtfError::Read { path: VMLINUX.into(), source })
    }

    /// Offset of `field` in `struct strukt`, looking through anonymous structs and unions.
    pub fn field(&self, strukt: &str, field: &str) -> Result<Field, BtfError> {
        let s = self
            .btf
            .resolve_types_by_name(strukt)?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        self.find_in(&s, field, 0)?.ok_or_else(|| BtfError::NoField {
            strukt: strukt.into(),
            field: field.into(),
        })
    }

    fn find_in(&self, s: &btf_rs::Struct, field: &str, base_bits: u32) -> Result<Option<Field>, BtfError> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let bits = base_bits + m.bit_offset();
            let ty = self.strip(self.btf.resolve_chained_type(m)?)?;
            if name == field {
                let size = match (m.bitfield_size(), &ty) {
                    (Some(n), _) if n > 0 => 0,
                    (_, Type::Int(i)) => i.size() as u32,
                    (_, Type::Ptr(_)) => 8,
                    (_, Type::Enum(e)) => e.size() as u32,
                    (_, Type::Struct(st)) | (_, Type::Union(st)) => st.size() as u32,
                    _ => 0,
                };
                return Ok(Some(Field { offset: bits / 8, size }));
            }
            if name.is_empty() {
                if let Type::Struct(inner) | Type::Union(inner) = &ty {
                    if let Some(f) = self.find_in(inner, field, bits)? {
                        return Ok(Some(f));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut ty: Type) -> Result<Type, BtfError> {
        for _ in 0..16 {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t)?,
                Type::Const(t) => self.btf.resolve_chained_type(t)?,
                Type::Volatile(t) => self.btf.resolve_chained_type(t)?,
                Type::Restrict(t) => self.btf.resolve_chained_type(t)?,
                Type::TypeTag(t) => self.btf.resolve_chained_type(t)?,
                _ => return Ok(ty),
            };
        }
        Ok(ty)
    }

    /// Every offset the kernel programs need.
    pub fn offsets(&self) -> Result<KernelOffsets, BtfError> {
        let f = |s: &str, m: &str| self.field(s, m).map(|f| f.offset);
        let protocol = self.field("sock", "sk_protocol")?;
        // fs/proc/internal.h's proc_inode is in the BTF of the kernels we know; optional all
        // the same (the check it serves is then reported as not covered).
        let proc = (|| -> Result<[u32; 4], BtfError> {
            Ok([f("proc_inode", "vfs_inode")?, f("proc_inode", "pid")?, f("pid", "tasks")?, f("task_struct", "pid_links")?])
        })()
        .ok();
        Ok(KernelOffsets {
            task_real_parent: f("task_struct", "real_parent")?,
            task_tgid: f("task_struct", "tgid")?,
            task_files: f("task_struct", "files")?,
            task_mm: f("task_struct", "mm")?,
            task_exit_code: f("task_struct", "exit_code")?,
            files_fdt: f("files_struct", "fdt")?,
            fdt_max_fds: f("fdtable", "max_fds")?,
            fdt_fd: f("fdtable", "fd")?,
            file_f_path: f("file", "f_path")?,
            file_private_data: f("file", "private_data")?,
            path_mnt: f("path", "mnt")?,
            path_dentry: f("path", "dentry")?,
            dentry_d_parent: f("dentry", "d_parent")?,
            dentry_d_name: f("dentry", "d_name")?,
            qstr_len: f("qstr", "len")?,
            qstr_name: f("qstr", "name")?,
            vfsmount_mnt_root: f("vfsmount", "mnt_root")?,
            mount_mnt: f("mount", "mnt")?,
            mount_mnt_parent: f("mount", "mnt_parent")?,
            mount_mnt_mountpoint: f("mount", "mnt_mountpoint")?,
            mm_exe_file: f("mm_struct", "exe_file")?,
            mm_arg_start: f("mm_struct", "arg_start")?,
            mm_arg_end: f("mm_struct", "arg_end")?,
            socket_type: f("socket", "type")?,
            socket_sk: f("socket", "sk")?,
            sock_protocol: protocol.offset,
            sock_protocol_size: protocol.size,
            task_ti_status: f("task_struct", "thread_info")? + f("thread_info", "status")?,
            file_f_mode: f("file", "f_mode")?,
            pt_regs_di: f("pt_regs", "di")?,
            file_f_inode: f("file", "f_inode")?,
            inode_i_ino: f("inode", "i_ino")?,
            inode_i_sb: f("inode", "i_sb")?,
            super_block_s_dev: f("super_block", "s_dev")?,
            binprm_file: f("linux_binprm", "file")?,
            file_f_flags: f("file", "f_flags")?,
            task_cgroups: f("task_struct", "cgroups")?,
            css_set_dfl_cgrp: f("css_set", "dfl_cgrp")?,
            cgroup_level: f("cgroup", "level")?,
            cgroup_ancestors: f("cgroup", "ancestors")?,
            cgroup_kn: f("cgroup", "kn")?,
            kernfs_node_id: f("kernfs_node", "id")?,
            sock_sk_cgrp_data: f("sock", "sk_cgrp_data")?,
            sock_cgroup_data_cgroup: f("sock_cgroup_data", "cgroup")?,
            super_block_s_magic: f("super_block", "s_magic")?,
            proc_inode_vfs_inode: proc.map_or(0, |p| p[0]),
            proc_inode_pid: proc.map_or(0, |p| p[1]),
            pid_tasks: proc.map_or(0, |p| p[2]),
            task_pid_links: proc.map_or(0, |p| p[3]),
            proc_ok: proc.is_some() as u32,
        })
    }
}

impl KernelBtf {
    /// Offsets the containment programs read (unix sockets, binding); a field this kernel
    /// lacks is 0 and the program using it treats the structure as unreadable.
    pub fn net_offsets(&self) -> agent_guard_common::NetOffsets {
        let f = |s: &str, m: &str| self.field(s, m).map_or(0, |f| f.offset);
        agent_guard_common::NetOffsets {
            sa_kern_uaddr: f("bpf_sock_addr_kern", "uaddr"),
            sa_kern_uaddrlen: f("bpf_sock_addr_kern", "uaddrlen"),
            skc_family: f("sock_common", "skc_family"),
            skc_num: f("sock_common", "skc_num"),
            skc_rcv_saddr: f("sock_common", "skc_rcv_saddr"),
            skc_v6_rcv_saddr: f("sock_common", "skc_v6_rcv_saddr"),
            unix_sock_addr: f("unix_sock", "addr"),
            unix_sock_path: f("unix_sock", "path"),
            unix_address_len: f("unix_address", "len"),
            unix_address_name: f("unix_address", "name"),
            socket_sk: f("socket", "sk"),
            socket_type: f("socket", "type"),
            file_private_data: f("file", "private_data"),
            _pad: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the host's BTF: needs no privilege, only a kernel with BTF (CI machines have it).
    #[test]
    fn offsets_come_from_the_running_kernel() {
        if !std::path::Path::new(VMLINUX).exists() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {VMLINUX} is missing");
            eprintln!("skip: {VMLINUX} missing");
            return;
        }
        let btf = KernelBtf::load().unwrap();
        let o = btf.offsets().unwrap();
        // struct path is { struct vfsmount *mnt; struct dentry *dentry; } on every kernel.
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        // qstr: { u32 hash; u32 len } inside an anonymous union, then the name pointer.
        assert_eq!((o.qstr_len, o.qstr_name), (4, 8));
        assert!(o.file_f_path > 0 && o.task_real_parent > 0 && o.mm_arg_end > o.mm_arg_start);
        assert!(btf.field("task_struct", "no_such_field").is_err());
        // The /proc/PID check needs proc_inode: present in the BTF of the kernels we test on.
        assert_eq!(o.proc_ok, 1, "proc_inode missing from this kernel's BTF");
        assert!(o.proc_inode_vfs_inode > 0 && o.task_pid_links > 0);
    }
}
