//! The kernel maps of name rules (see agent_guard_common::dns): which runs' queries go to a
//! forwarder, and the addresses allowed answers opened. Shared by the forwarder's tasks.
use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use agent_guard_common::{
    dns::{Allow, AllowKey, Fwd, FwdKey},
    names, PortRange, PORT_RANGES_MAX,
};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};

use super::load::LoadError;

struct Maps {
    fwd: HashMap<MapData, FwdKey, Fwd>,
    allow: HashMap<MapData, AllowKey, Allow>,
}

/// The two maps, behind one lock.
#[derive(Clone)]
pub struct DnsMaps(Arc<Mutex<Maps>>);

/// CLOCK_MONOTONIC now, in nanoseconds (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The allow map's key of `addr` for forwarder `key`.
pub fn allow_key(key: FwdKey, addr: IpAddr) -> AllowKey {
    let addr = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    AllowKey { fwd: key, addr }
}

impl DnsMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        fn take<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &'static str) -> Result<HashMap<MapData, K, V>, LoadError> {
            let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
            HashMap::try_from(map).map_err(|source| LoadError::Map { name, source })
        }
        let fwd = take(ebpf, names::DNS_FWD)?;
        let allow = take(ebpf, names::DNS_ALLOW)?;
        Ok(DnsMaps(Arc::new(Mutex::new(Maps { fwd, allow }))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the queries of `key` to 127.0.0.1:`port4` / [::1]:`port6` (0: not redirected).
    pub fn set_forwarder(&self, key: FwdKey, port4: u16, port6: u16) -> Result<(), String> {
        self.lock().fwd.insert(key, Fwd { port4, port6, _pad: 0 }, 0).map_err(|e| format!("kernel DNS forwarder map: {e}"))
    }

    /// Ends a forwarder: its queries are no longer redirected, and every address its answers
    /// opened is closed.
    pub fn remove_forwarder(&self, key: FwdKey) {
        let mut m = self.lock();
        let _ = m.fwd.remove(&key);
        let stale: Vec<AllowKey> = m.allow.keys().flatten().filter(|k| k.fwd == key).collect();
        for k in stale {
            let _ = m.allow.remove(&k);
        }
    }

    /// The forwarder keys in the kernel (a restarted daemon finds an earlier one's).
    pub fn forwarders(&self) -> Vec<FwdKey> {
        self.lock().fwd.keys().flatten().collect()
    }

    /// Opens `addr` on `ports` for `key` until `ttl` from now: merged with what an entry that
    /// still lives allows, and never shortened.
    pub fn open(&self, key: FwdKey, addr: IpAddr, ports: &[(u16, u16)], ttl: Duration) -> Result<(), String> {
        let k = allow_key(key, addr);
        let now = monotonic_ns();
        let expires_ns = now.saturating_add(ttl.as_nanos().min(u128::from(u64::MAX)) as u64);
        let mut m = self.lock();
        let mut ranges: Vec<(u16, u16)> = ports.to_vec();
        let mut until = expires_ns;
        if let Ok(old) = m.allow.get(&k, 0) {
            if old.expires_ns > now {
                until = until.max(old.expires_ns);
                ranges.extend(old.ranges.iter().take((old.count as usize).min(PORT_RANGES_MAX)).map(|r| (r.lo, r.hi)));
            }
        }
        let ranges = crate::policy::names::coalesce_ports(ranges);
        let mut v = Allow { expires_ns: until, count: 0, _pad: 0, ranges: [PortRange::default(); PORT_RANGES_MAX] };
        // More ranges than fit (rules of many names on one address): the widest span of the
        // rest would allow ports no rule names, so the extra ranges are left out (refused).
        for (slot, (lo, hi)) in v.ranges.iter_mut().zip(ranges) {
            *slot = PortRange { lo, hi };
            v.count += 1;
        }
        m.allow.insert(k, v, 0).map_err(|e| format!("kernel DNS allow map: {e}"))
    }

    /// Removes entries that expired more than `linger` ago (the map is LRU; this keeps room).
    pub fn purge_expired(&self, linger: Duration) -> usize {
        let now = monotonic_ns();
        let mut m = self.lock();
        let dead: Vec<AllowKey> = m
            .allow
            .iter()
            .flatten()
            .filter(|(_, v)| v.expires_ns.saturating_add(linger.as_nanos() as u64) < now)
            .map(|(k, _)| k)
            .collect();
        for k in &dead {
            let _ = m.allow.remove(k);
        }
        dead.len()
    }
}
