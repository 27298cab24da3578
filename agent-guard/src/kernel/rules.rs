//! The daemon's loaded policies and their kernel maps.
//!
//! Each policy name owns a slot (index into AG_POLICY_CUR); runs point at slots. Installing
//! a policy compiles it under a fresh rule set id, writes every map entry of that rule set,
//! and only then stores the id in the slot: one u32 write switches every run of the policy
//! from exactly the old rules to exactly the new ones. The old rule set's entries are
//! removed a little later, once no program can still be using them. A failure before the
//! switch removes what was written and leaves the old policy in force.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use agent_guard_common::{
    FileNodeKey, NetKey, FILE_NODES_MAX, NET_RULES_MAX,
    POLICIES_MAX, RULESETS_MAX,
};
use aya::maps::lpm_trie::Key;
use serde::{Deserialize, Serialize};

use crate::kernel::load::PolicyMaps;
use crate::policy::{Compiled, Policy};

/// How long a replaced rule set stays in the maps. A program that read the old id is inside
/// one RCU read-side section (microseconds); this is many grace periods longer.
const RETIRE_AFTER: Duration = Duration::from_millis(250);


pub struct Slot {
    pub policy: Arc<Policy>,
    pub ruleset: u32,
    /// The policy file's text, as loaded.
    pub text: String,
    compiled: Compiled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    pub name: String,
    pub version: String,
    pub mode: String,
    pub on_violation: String,
    pub source: String,
    pub slot: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    New { slot: u32 },
    Replaced { slot: u32, previous: String },
    Unchanged { slot: u32 },
}

impl Installed {
    /// The `result` a reload reports: "unchanged" or "ok".
    pub fn result(&self) -> &'static str {
        if matches!(self, Installed::Unchanged { .. }) { "unchanged" } else { "ok" }
    }

    pub fn slot(&self) -> u32 {
        match self {
            Installed::New { slot } | Installed::Replaced { slot, .. } | Installed::Unchanged { slot } => *slot,
        }
    }
}

pub struct PolicyStore {
    maps: PolicyMaps,
    slots: Vec<Option<Slot>>,
    /// Rule set id -> the policy it was compiled from.
    compiled_from: HashMap<u32, Arc<Policy>>,
    next_id: u32,
    retired: Vec<(Instant, u32, Compiled)>,
    /// Rule sets removed from the kernel: their description is kept a while for events still
    /// queued, then forgotten.
    forgotten: Vec<(Instant, u32)>,
    /// Slots the kernel enforces a policy in that this daemon has no text for (state lost):
    /// never given to another policy, so the runs bound to them keep their rules.
    reserved: HashSet<u32>,
    /// Compile for the lsm backend (see `Policy::compile_for`).
    lsm: bool,
    /// Denied in every policy installed or adopted (`Config::protected_paths`).
    protected: Vec<String>,
    /// Unix sockets every policy may connect to (the task socket).
    unix_always: Vec<String>,
}

/// How long a removed rule set's name and version stay known to the event enricher.
const DESCRIBE_AFTER_REMOVAL: Duration = Duration::from_secs(60);

impl PolicyStore {
    pub fn new(maps: PolicyMaps) -> Self {
        Self {
            maps,
            slots: (0..POLICIES_MAX).map(|_| None).collect(),
            compiled_from: HashMap::new(),
            next_id: 1,
            retired: Vec::new(),
            forgotten: Vec::new(),
            reserved: HashSet::new(),
            lsm: false,
            protected: Vec::new(),
            unix_always: Vec::new(),
        }
    }

    /// Paths denied in every policy from now on (set once, before any policy is loaded).
    pub fn protecting(mut self, paths: Vec<String>, unix_always: Vec<String>) -> Self {
        self.protected = paths;
        self.unix_always = unix_always;
        self
    }

    /// Compiles for `backend` from now on (set once, before any policy is loaded).
    pub fn for_backend(mut self, backend: crate::kernel::backend::Backend) -> Self {
        self.lsm = backend.hooks_decide();
        self
    }

    /// Takes over the policies an earlier daemon left in the (pinned) kernel maps: each
    /// recorded policy is parsed and compiled again under the rule set id in force for its
    /// slot, which reproduces exactly the entries in the maps, so nothing is written and no
    /// run sees a change. Rule sets not in force (a replacement the earlier daemon had not
    /// yet cleaned up) are removed. Returns a message for each problem.
    pub fn adopt(&mut self, records: Vec<crate::daemon::state::PolicyRecord>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut live: HashSet<u32> = HashSet::new();
        for r in records {
            let cur = self.maps.cur.get(&r.slot, 0).unwrap_or(0);
            if cur == 0 || r.slot >= POLICIES_MAX {
                continue; // recorded, but never switched on in the kernel
            }
            if r.ruleset != cur {
                continue; // an older text: the slot is then handled as unrecorded below
            }
            let checked = crate::policy::parse(&r.text, &r.source);
            match checked.policy {
                Some(mut p) if checked.errors.is_empty() => {
                    p.protect(&self.protected);
                    p.allow_unix(&self.unix_always);
                    let compiled = p.compile_for(cur, self.lsm);
                    if !self.in_kernel(cur, &compiled) {
                        // Another daemon build compiles this text differently: its model of
                        // the kernel entries would be wrong, so the slot is kept as it is.
                        problems.push(format!(
                            "recorded policy {} (slot {}) does not compile to the rules the kernel holds",
                            r.source, r.slot
                        ));
                        continue;
                    }
                    let policy = Arc::new(p);
                    self.compiled_from.insert(cur, policy.clone());
                    self.slots[r.slot as usize] = Some(Slot { policy, ruleset: cur, text: r.text, compiled });
                    live.insert(cur);
                }
                _ => problems.push(format!("recorded policy {} (slot {}) no longer parses", r.source, r.slot)),
            }
        }
        for slot in 0..POLICIES_MAX {
            let cur = self.maps.cur.get(&slot, 0).unwrap_or(0);
            if cur != 0 && self.slots[slot as usize].is_none() {
                problems.push(format!(
                    "policy slot {slot} is enforced in the kernel (rule set {cur}) but its text was not recorded: \
                     kept as it is for the runs bound to it, and not reused"
                ));
                self.reserved.insert(slot);
                live.insert(cur);
            }
        }
        let ids: Vec<u32> = self.maps.rulesets.keys().flatten().collect();
        self.next_id = ids.iter().chain(live.iter()).max().map_or(1, |m| m.wrapping_add(1).max(1));
        let stale: HashSet<u32> = ids.into_iter().filter(|id| !live.contains(id)).collect();
        if !stale.is_empty() {
            for id in &stale {
                let _ = self.maps.rulesets.remove(id);
            }
            let nodes: Vec<FileNodeKey> =
                self.maps.files.keys().into_iter().filter(|k| stale.contains(&k.ruleset)).collect();
            for k in nodes {
                let _ = self.maps.files.remove(&k);
            }
            let nets: Vec<Key<NetKey>> = self
                .maps
                .net
                .keys()
                .flatten()
                .filter(|k| stale.contains(&u32::from_be_bytes(k.data().ruleset_be)))
                .collect();
            for k in nets {
                let _ = self.maps.net.remove(&k);
            }
            for id in &stale {
                let _ = self.maps.contain.remove(id);
                let _ = self.maps.limits.remove(id);
            }
            let decoys: Vec<_> = self.maps.decoy_hosts.keys().flatten().filter(|k| stale.contains(&k.ruleset)).collect();
            for k in decoys {
                let _ = self.maps.decoy_hosts.remove(&k);
            }
            let unix: Vec<_> = self
                .maps
                .unix
                .keys()
                .flatten()
                .filter(|k| stale.contains(&u32::from_be_bytes(k.data().ruleset_be)))
                .collect();
            for k in unix {
                let _ = self.maps.unix.remove(&k);
            }
            let listen: Vec<Key<NetKey>> = self
                .maps
                .listen
                .keys()
                .flatten()
                .filter(|k| stale.contains(&u32::from_be_bytes(k.data().ruleset_be)))
                .collect();
            for k in listen {
                let _ = self.maps.listen.remove(&k);
            }
        }
        problems
    }

    pub fn slot_of(&self, name: &str) -> Option<u32> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.policy.name == name))
            .map(|i| i as u32)
    }

    pub fn get(&self, name: &str) -> Option<&Slot> {
        self.slot_of(name).and_then(|i| self.slots[i as usize].as_ref())
    }

    pub fn by_slot(&self, slot: u32) -> Option<&Slot> {
        self.slots.get(slot as usize).and_then(|s| s.as_ref())
    }

    /// The policy a rule set id was compiled from (kept a while after it is replaced, for
    /// the events it decided).
    pub fn policy_of(&self, ruleset: u32) -> Option<Arc<Policy>> {
        self.compiled_from.get(&ruleset).cloned()
    }

    /// What `policy list` shows of the policy in `slot`.
    pub fn summary(&self, slot: u32) -> Option<PolicySummary> {
        let p = &self.by_slot(slot)?.policy;
        Some(PolicySummary {
            name: p.name.clone(),
            version: p.version.clone(),
            mode: p.mode.as_str().to_string(),
            on_violation: p.on_violation.as_str().to_string(),
            source: p.source.clone(),
            slot,
        })
    }

    pub fn list(&self) -> Vec<PolicySummary> {
        (0..POLICIES_MAX).filter_map(|slot| self.summary(slot)).collect()
    }

    /// Whether the kernel maps hold exactly `c`'s header, path-trie and network entries for
    /// rule set `id`.
    fn in_kernel(&self, id: u32, c: &Compiled) -> bool {
        self.maps.rulesets.get(&id, 0).is_ok_and(|h| h == c.header)
            && c.file_nodes.iter().all(|(k, v)| self.maps.files.get(k, 0).is_ok_and(|x| x == *v))
            && c.net_rules.iter().all(|(len, k, v)| self.maps.net.get(&Key::new(*len, *k), 0).is_ok_and(|x| x == *v))
            && self.maps.contain.get(&id, 0).is_ok_and(|x| x == c.contain)
            && c.unix_rules.iter().all(|(len, k)| self.maps.unix.get(&Key::new(*len, *k), 0).is_ok())
            && c.listen_rules.iter().all(|(len, k, v)| self.maps.listen.get(&Key::new(*len, *k), 0).is_ok_and(|x| x == *v))
            && c.limits.is_none_or(|l| self.maps.limits.get(&id, 0).is_ok_and(|x| x == l))
            && c.decoy_hosts.iter().all(|k| self.maps.decoy_hosts.get(k, 0).is_ok())
    }

    /// Starts a new window for the run's budgets (an approval of a limit's hold): its
    /// per-minute counters and distinct_destinations count afresh from here.
    pub fn reset_limits(&mut self, run_cgroup: u64) {
        let _ = self.maps.limit_counts.remove(&run_cgroup);
    }

    fn entries_in_use(&self) -> (usize, usize, usize) {
        let live = self.slots.iter().flatten().map(|s| &s.compiled);
        let old = self.retired.iter().map(|(_, _, c)| c);
        live.chain(old).fold((0, 0, 0), |(f, n, r), c| (f + c.file_nodes.len(), n + c.net_rules.len(), r + 1))
    }

    /// Installs `policy` (new, or replacing the one with its name). On error nothing changed.
    pub fn install(&mut self, mut policy: Policy, text: String) -> Result<Installed, String> {
        policy.protect(&self.protected);
        policy.allow_unix(&self.unix_always);
        self.reap(false);
        let existing = self.slot_of(&policy.name);
        if let Some(i) = existing {
            let cur = self.slots[i as usize].as_ref().expect("slot in use");
            if cur.policy.version == policy.version {
                return Ok(Installed::Unchanged { slot: i });
            }
        }
        let slot = match existing {
            Some(i) => i,
            None => self
                .slots
                .iter()
                .enumerate()
                .position(|(i, s)| s.is_none() && !self.reserved.contains(&(i as u32)))
                .ok_or_else(|| format!("{POLICIES_MAX} policies are loaded already (the limit)"))?
                as u32,
        };
        let id = self.next_id;
        let compiled = policy.compile_for(id, self.lsm);
        let (files, nets, sets) = self.entries_in_use();
        if files + compiled.file_nodes.len() > FILE_NODES_MAX as usize {
            return Err(format!(
                "policy {} needs {} path-trie nodes; {files} of {FILE_NODES_MAX} are in use",
                policy.name,
                compiled.file_nodes.len()
            ));
        }
        if nets + compiled.net_rules.len() > NET_RULES_MAX as usize {
            return Err(format!(
                "policy {} needs {} network entries; {nets} of {NET_RULES_MAX} are in use",
                policy.name,
                compiled.net_rules.len()
            ));
        }
        if sets + 1 > RULESETS_MAX as usize {
            return Err("too many policy reloads in flight; retry in a few seconds".into());
        }
        if let Err(e) = self.write(id, &compiled) {
            self.erase(id, &compiled);
            return Err(format!("writing policy {} to the kernel maps: {e}", policy.name));
        }
        // The switch: from here on every decision for this slot uses rule set `id`.
        if let Err(e) = self.maps.cur.set(slot, id, 0) {
            self.erase(id, &compiled);
            return Err(format!("publishing policy {}: {e}", policy.name));
        }
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let policy = Arc::new(policy);
        self.compiled_from.insert(id, policy.clone());
        let new = Slot { policy, ruleset: id, text, compiled };
        let old = self.slots[slot as usize].replace(new);
        Ok(match old {
            Some(old) => {
                let previous = old.policy.version.clone();
                self.retired.push((Instant::now(), old.ruleset, old.compiled));
                Installed::Replaced { slot, previous }
            }
            None => Installed::New { slot },
        })
    }

    fn write(&mut self, id: u32, c: &Compiled) -> Result<(), aya::maps::MapError> {
        for (k, v) in &c.file_nodes {
            self.maps.files.insert(k, v, 0)?;
        }
        for (len, k, v) in &c.net_rules {
            self.maps.net.insert(&Key::new(*len, *k), v, 0)?;
        }
        for (len, k) in &c.unix_rules {
            self.maps.unix.insert(&Key::new(*len, *k), 1, 0)?;
        }
        for (len, k, v) in &c.listen_rules {
            self.maps.listen.insert(&Key::new(*len, *k), v, 0)?;
        }
        self.maps.contain.insert(id, c.contain, 0)?;
        if let Some(l) = c.limits {
            self.maps.limits.insert(id, l, 0)?;
        }
        for k in &c.decoy_hosts {
            self.maps.decoy_hosts.insert(k, 1, 0)?;
        }
        self.maps.rulesets.insert(id, c.header, 0)
    }

    fn erase(&mut self, id: u32, c: &Compiled) {
        let _ = self.maps.rulesets.remove(&id);
        for (k, _) in &c.file_nodes {
            let _ = self.maps.files.remove(k);
        }
        for (len, k, _) in &c.net_rules {
            let _ = self.maps.net.remove(&Key::new(*len, *k));
        }
        let _ = self.maps.contain.remove(&id);
        for (len, k) in &c.unix_rules {
            let _ = self.maps.unix.remove(&Key::new(*len, *k));
        }
        for (len, k, _) in &c.listen_rules {
            let _ = self.maps.listen.remove(&Key::new(*len, *k));
        }
        let _ = self.maps.limits.remove(&id);
        for k in &c.decoy_hosts {
            let _ = self.maps.decoy_hosts.remove(k);
        }
    }

    /// Removes the entries of rule sets replaced long enough ago (all of them with `all`).
    pub fn reap(&mut self, all: bool) {
        let (due, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.retired).into_iter().partition(|(t, _, _)| all || t.elapsed() >= RETIRE_AFTER);
        self.retired = keep;
        for (_, id, c) in due {
            self.erase(id, &c);
            self.forgotten.push((Instant::now(), id));
        }
        let (old, recent): (Vec<_>, Vec<_>) = std::mem::take(&mut self.forgotten)
            .into_iter()
            .partition(|(t, _)| t.elapsed() >= DESCRIBE_AFTER_REMOVAL);
        self.forgotten = recent;
        for (_, id) in old {
            self.compiled_from.remove(&id);
        }
    }
}
