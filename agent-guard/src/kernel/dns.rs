//! The kernel maps of name rules (see agent_guard_common::dns): which runs' queries go to a
//! forwarder, and the addresses allowed answers opened, with the daemon's mirror of the
//! latter (what each forwarder opened, for which name, until when). One lock over all three,
//! so an entry is never written for a forwarder that has ended, and the mirror never drifts.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use agent_guard_common::{
    dns::{Allow, AllowKey, Fwd, FwdKey, ALLOW_MAX},
    names, PortRange, PORT_RANGES_MAX,
};
use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    Ebpf,
};

use super::load::LoadError;

/// The longest an answer keeps an address open, whatever its TTL says (plus the grace).
pub const TTL_MAX: Duration = Duration::from_secs(3600);
/// Addresses one run may have open at once, over all its forwarders (its tasks').
pub const OPEN_PER_RUN: usize = 4096;
/// Entries of the kernel map in use at most: the LRU map never has to evict one.
pub const OPEN_TOTAL: usize = ALLOW_MAX as usize / 8 * 7;

/// An address a forwarder opened: the name whose answer did, and until when (monotonic ns).
#[derive(Debug, Clone)]
pub struct Opened {
    pub name: String,
    pub until: u64,
}

struct Maps {
    fwd: BpfHashMap<MapData, FwdKey, Fwd>,
    allow: BpfHashMap<MapData, AllowKey, Allow>,
    /// Forwarders whose sockets exist (an answer may open addresses only for them).
    live: HashSet<FwdKey>,
    mirror: HashMap<FwdKey, HashMap<IpAddr, Opened>>,
}

/// The two maps and the mirror, behind one lock.
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
        fn take<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &'static str) -> Result<BpfHashMap<MapData, K, V>, LoadError> {
            let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
            BpfHashMap::try_from(map).map_err(|source| LoadError::Map { name, source })
        }
        let fwd = take(ebpf, names::DNS_FWD)?;
        let allow = take(ebpf, names::DNS_ALLOW)?;
        Ok(DnsMaps(Arc::new(Mutex::new(Maps { fwd, allow, live: HashSet::new(), mirror: HashMap::new() }))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the queries of `key` to 127.0.0.1:`port4` / [::1]:`port6` (0: not redirected).
    pub fn set_forwarder(&self, key: FwdKey, port4: u16, port6: u16) -> Result<(), String> {
        let mut m = self.lock();
        m.fwd.insert(key, Fwd { port4, port6, _pad: 0 }, 0).map_err(|e| format!("kernel DNS forwarder map: {e}"))?;
        m.live.insert(key);
        Ok(())
    }

    /// Ends a forwarder: its queries are no longer redirected, and every address its answers
    /// opened is closed; an answer still on its way opens nothing.
    pub fn remove_forwarder(&self, key: FwdKey) {
        let mut m = self.lock();
        m.live.remove(&key);
        let _ = m.fwd.remove(&key);
        for ip in m.mirror.remove(&key).unwrap_or_default().into_keys() {
            let _ = m.allow.remove(&allow_key(key, ip));
        }
    }

    /// Closes every address `key` opened (its policy's names changed): the run resolves again.
    pub fn close_all(&self, key: FwdKey) {
        let mut m = self.lock();
        for ip in m.mirror.remove(&key).unwrap_or_default().into_keys() {
            let _ = m.allow.remove(&allow_key(key, ip));
        }
    }

    /// Removes the forwarders an earlier daemon left in the kernel that `keep` does not name,
    /// with every address they opened (a walk of the whole allow map: at start only).
    pub fn remove_stale(&self, keep: &dyn Fn(&FwdKey) -> bool) {
        let mut m = self.lock();
        let stale: Vec<FwdKey> = m.fwd.keys().flatten().filter(|k| !keep(k) && !m.live.contains(k)).collect();
        if stale.is_empty() {
            return;
        }
        for k in &stale {
            let _ = m.fwd.remove(k);
        }
        let dead: Vec<AllowKey> = m.allow.keys().flatten().filter(|k| stale.contains(&k.fwd)).collect();
        for k in dead {
            let _ = m.allow.remove(&k);
        }
    }

    /// Opens `addr` on `ports` for `key` until `ttl` (at most [`TTL_MAX`]) plus `grace` from
    /// now, for `name`: merged with what an entry that still lives allows, never shortened.
    /// Refused when the forwarder has ended or a quota is reached.
    pub fn open(&self, key: FwdKey, addr: IpAddr, name: &str, ports: &[(u16, u16)], ttl: Duration, grace: Duration) -> Result<(), String> {
        let mut m = self.lock();
        if !m.live.contains(&key) {
            return Err("the run's forwarder has ended".into());
        }
        let fresh = !m.mirror.get(&key).is_some_and(|a| a.contains_key(&addr));
        if fresh {
            let run: usize = m.mirror.iter().filter(|(k, _)| k.run == key.run).map(|(_, a)| a.len()).sum();
            if run >= OPEN_PER_RUN {
                return Err(format!("the run already has {run} addresses open (at most {OPEN_PER_RUN})"));
            }
            let total: usize = m.mirror.values().map(HashMap::len).sum();
            if total >= OPEN_TOTAL {
                return Err(format!("{total} addresses are open for all runs (at most {OPEN_TOTAL})"));
            }
        }
        let k = allow_key(key, addr);
        let now = monotonic_ns();
        let life = ttl.min(TTL_MAX) + grace;
        let mut until = now.saturating_add(life.as_nanos().min(u128::from(u64::MAX)) as u64);
        let mut ranges: Vec<(u16, u16)> = ports.to_vec();
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
        m.allow.insert(k, v, 0).map_err(|e| format!("kernel DNS allow map: {e}"))?;
        m.mirror.entry(key).or_default().insert(addr, Opened { name: name.to_string(), until });
        Ok(())
    }

    /// The name whose answer opened `addr` for the run (any of its forwarders).
    pub fn domain_of(&self, run: u64, addr: IpAddr) -> Option<String> {
        let m = self.lock();
        m.mirror.iter().filter(|(k, _)| k.run == run).find_map(|(_, a)| a.get(&addr)).map(|o| o.name.clone())
    }

    /// How many addresses are open, over all runs.
    pub fn open_count(&self) -> usize {
        self.lock().mirror.values().map(HashMap::len).sum()
    }

    /// Closes the addresses that expired more than `linger` ago.
    pub fn purge_expired(&self, linger: Duration) -> usize {
        let now = monotonic_ns();
        let linger = linger.as_nanos() as u64;
        let mut m = self.lock();
        let mut dead = Vec::new();
        for (k, a) in &mut m.mirror {
            a.retain(|ip, o| {
                let keep = o.until.saturating_add(linger) >= now;
                if !keep {
                    dead.push(allow_key(*k, *ip));
                }
                keep
            });
        }
        for k in &dead {
            let _ = m.allow.remove(k);
        }
        dead.len()
    }
}
