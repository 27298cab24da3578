//! connect: the destination is copied from the caller's sockaddr at syscall entry, the result
//! and the socket's type and protocol are taken at exit. IPv4 and IPv6 only; the cgroup
//! sock_addr programs (enforcement) see the same connects from the kernel side.
use agent_guard_common::{drop_slot, kind, ConnectEvent, PENDING_MAX, FLAG_READ_ERROR};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};

use crate::{event, kernel, run};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[repr(C)]
#[derive(Clone, Copy)]
struct PendingConnect {
    fd: i32,
    _pad: u32,
    /// sockaddr_in or sockaddr_in6 as passed (28 bytes used).
    sa: [u8; 32],
}

#[map]
static AG_PENDING_CONNECT: LruHashMap<u64, PendingConnect> =
    LruHashMap::with_max_entries(PENDING_MAX, 0);

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn ag_enter_connect(ctx: TracePointContext) -> u32 {
    if run::current_run().is_none() {
        return 0;
    }
    // SAFETY: offsets inside the sys_enter_connect record: fd, uservaddr, addrlen.
    let (fd, uaddr, alen) =
        unsafe { (ctx.read_at::<u64>(16), ctx.read_at::<u64>(24), ctx.read_at::<u64>(32)) };
    let (Ok(fd), Ok(uaddr), Ok(alen)) = (fd, uaddr, alen) else { return 0 };
    let mut p = PendingConnect { fd: fd as i32, _pad: 0, sa: [0; 32] };
    let n = if alen > 28 { 28 } else { alen as u32 };
    // SAFETY: user read of at most 28 bytes into a 32-byte array; failure leaves zeros.
    unsafe { bpf_probe_read_user(p.sa.as_mut_ptr().cast(), n & 31, uaddr as *const _) };
    let family = u16::from_ne_bytes([p.sa[0], p.sa[1]]);
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    if AG_PENDING_CONNECT.insert(&bpf_get_current_pid_tgid(), &p, 0).is_err() {
        event::count_drop(drop_slot::PENDING_FULL);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn ag_exit_connect(ctx: TracePointContext) -> u32 {
    let Some(run) = run::current_run() else { return 0 };
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let Some(p) = (unsafe { AG_PENDING_CONNECT.get(&key) }).copied() else { return 0 };
    let _ = AG_PENDING_CONNECT.remove(&key);
    // SAFETY: offset inside the sys_exit_connect record.
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(0);
    let o = kernel::offsets();
    let mut flags = 0;
    let mut sock_type = 0u16;
    let mut protocol = 0u16;
    match kernel::fd_file(&o, p.fd).and_then(|f| kernel::read::<u64>(f, o.file_private_data)) {
        Ok(sock) => {
            sock_type = kernel::read::<i16>(sock, o.socket_type).unwrap_or(0) as u16;
            let sk: u64 = kernel::read(sock, o.socket_sk).unwrap_or(0);
            if o.sock_protocol_size == 2 {
                protocol = kernel::read::<u16>(sk, o.sock_protocol).unwrap_or(0);
            }
        }
        Err(()) => flags |= FLAG_READ_ERROR,
    }
    let family = u16::from_ne_bytes([p.sa[0], p.sa[1]]);
    let port = u16::from_be_bytes([p.sa[2], p.sa[3]]);
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&p.sa[4..8]);
    } else {
        addr.copy_from_slice(&p.sa[8..24]);
    }
    let Some(mut entry) = event::reserve::<ConnectEvent>() else { return 0 };
    let mut hdr = event::header(kind::CONNECT, &run);
    hdr.flags = flags;
    entry.write(ConnectEvent {
        hdr,
        result: ret as i32,
        family,
        port,
        protocol,
        sock_type,
        _pad: 0,
        addr,
    });
    entry.submit(0);
    0
}
