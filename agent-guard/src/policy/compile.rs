//! Compilation of a validated policy into the kernel's map entries.
use std::collections::HashMap;

use agent_guard_common::{
    action, file_rule, mode, FileNode, FileNodeKey, NetKey, NetRule, PortRange, RulesetHeader,
    NAME_BYTES, PORT_RANGES_MAX, RS_RAW_SOCKETS, SYSCALL_WORDS,
};
use ipnet::IpNet;

use super::{net, paths, syscall_number, Mode, OnViolation, Policy, LSM_JUDGED_SYSCALLS, UNSEEN_SYSCALLS};

/// The map entries of one compiled rule set. The daemon writes every entry, then publishes
/// the rule set id.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// AG_RULESETS value.
    pub header: RulesetHeader,
    /// AG_FILE_NODES entries: the path trie. Node 0 ("/") is implicit (its flags are
    /// `header.root_flags`); ids 1.. are unique within this rule set, a parent's id is always
    /// smaller than its children's and entries are in id order.
    pub file_nodes: Vec<(FileNodeKey, FileNode)>,
    /// AG_NET_RULES entries: (LPM prefix length in bits including the 32 rule-set bits, key,
    /// value), sorted by key. An entry with `count == 0` allows nothing: it is added at
    /// ::ffff:0:0/96 when an IPv6 rule (like "::/0") would otherwise be the longest match for
    /// IPv4 destinations, because IPv6 rules never allow IPv4 destinations.
    pub net_rules: Vec<(u32, NetKey, NetRule)>,
    /// AG_UNIX_RULES entries: (LPM prefix length in bits, key); see contain.rs.
    pub unix_rules: Vec<(u32, agent_guard_common::UnixKey)>,
    /// AG_NET_CONTAIN value (families, netlink protocols).
    pub contain: agent_guard_common::NetContain,
    /// AG_LISTEN_RULES entries, as `net_rules`.
    pub listen_rules: Vec<(u32, NetKey, NetRule)>,
    /// AG_LIMITS value (`[limits]`), and AG_DECOY_HOSTS keys (see tripwire.rs).
    pub limits: Option<agent_guard_common::Limits>,
    pub decoy_hosts: Vec<agent_guard_common::DecoyHostKey>,
}

struct Trie {
    ruleset: u32,
    index: HashMap<(u32, String), usize>,
    nodes: Vec<(FileNodeKey, FileNode)>,
    root_flags: u32,
}

impl Trie {
    fn add(&mut self, path: &str, flag: u32) {
        let mut parent = 0u32;
        let mut last = None;
        for c in paths::components(path) {
            let idx = match self.index.get(&(parent, c.to_string())) {
                Some(&i) => i,
                None => {
                    let id = u32::try_from(self.nodes.len() + 1).expect("node ids fit u32");
                    let mut name = [0u8; NAME_BYTES];
                    name[..c.len()].copy_from_slice(c.as_bytes());
                    self.nodes.push((
                        FileNodeKey { ruleset: self.ruleset, parent, name },
                        FileNode { id, flags: 0 },
                    ));
                    self.index.insert((parent, c.to_string()), self.nodes.len() - 1);
                    self.nodes.len() - 1
                }
            };
            parent = self.nodes[idx].1.id;
            last = Some(idx);
        }
        match last {
            None => self.root_flags |= flag,
            Some(i) => self.nodes[i].1.flags |= flag,
        }
    }
}

fn set_bit(map: &mut [u64; SYSCALL_WORDS], nr: u32) {
    let nr = nr as usize;
    if nr < SYSCALL_WORDS * 64 {
        map[nr / 64] |= 1 << (nr % 64);
    }
}

fn net_key(ruleset: u32, net: &IpNet) -> (u32, NetKey) {
    let (addr, len) = match net {
        IpNet::V4(n) => (n.addr().to_ipv6_mapped().octets(), 96 + u32::from(n.prefix_len())),
        IpNet::V6(n) => (n.addr().octets(), u32::from(n.prefix_len())),
    };
    (32 + len, NetKey { ruleset_be: ruleset.to_be_bytes(), addr })
}

impl Policy {
    /// Compiles this policy as rule set `ruleset` for the tracepoint backend.
    pub fn compile(&self, ruleset: u32) -> Compiled {
        self.compile_for(ruleset, false)
    }

    /// Compiles this policy as rule set `ruleset`; `lsm`: for the lsm backend, which judges
    /// some of the [`UNSEEN_SYSCALLS`] itself ([`LSM_JUDGED_SYSCALLS`]).
    pub fn compile_for(&self, ruleset: u32, lsm: bool) -> Compiled {
        let mut header = RulesetHeader {
            mode: match self.mode {
                Mode::Enforce => mode::ENFORCE,
                Mode::Monitor => mode::MONITOR,
            },
            on_violation: match self.on_violation {
                OnViolation::Deny => action::DENY,
                OnViolation::Kill => action::KILL,
                OnViolation::Freeze => action::FREEZE,
            },
            root_flags: 0,
            flags: if self.raw_sockets { RS_RAW_SOCKETS } else { 0 },
            syscalls: [0; SYSCALL_WORDS],
            unseen: [0; SYSCALL_WORDS],
        };
        for (_, nr) in &self.syscalls_deny {
            set_bit(&mut header.syscalls, *nr);
        }
        for name in UNSEEN_SYSCALLS.iter().filter(|n| !(lsm && LSM_JUDGED_SYSCALLS.contains(n))) {
            if let Some(nr) = syscall_number(name) {
                set_bit(&mut header.unseen, nr);
            }
        }

        let mut trie = Trie { ruleset, index: HashMap::new(), nodes: Vec::new(), root_flags: 0 };
        for (list, flag) in [
            (&self.files_read, file_rule::READ),
            (&self.files_write, file_rule::WRITE),
            (&self.files_deny, file_rule::DENY),
        ] {
            for p in list {
                trie.add(p, flag);
            }
        }
        for p in &self.exec_allow {
            let flag = if p.ends_with('/') { file_rule::EXEC_DIR } else { file_rule::EXEC_FILE };
            trie.add(p, flag);
        }
        for p in &self.tripwires.decoy_files {
            trie.add(p, file_rule::DECOY);
        }
        let limits = self.tripwires.kernel_limits();
        let decoy_hosts = self.tripwires.decoy_host_keys(ruleset);
        if limits.is_some() {
            header.flags |= agent_guard_common::RS_LIMITS;
        }
        if !decoy_hosts.is_empty() {
            header.flags |= agent_guard_common::RS_DECOY_HOSTS;
        }
        header.root_flags = trie.root_flags;

        let net_rules = net_entries(ruleset, &self.network_connect);
        let listen_rules = net_entries(ruleset, &self.network_listen);
        Compiled {
            header,
            file_nodes: trie.nodes,
            net_rules,
            unix_rules: super::contain::compile_unix(ruleset, &self.network_unix),
            contain: self.net_contain(),
            listen_rules,
            limits,
            decoy_hosts,
        }
    }
}

/// LPM entries for CIDR:port rules (`network.connect`, `network.listen`).
fn net_entries(ruleset: u32, rules: &[net::NetRuleSpec]) -> Vec<(u32, NetKey, NetRule)> {
        let merged = net::merged_ranges(rules);
        let mut net_rules: Vec<(u32, NetKey, NetRule)> = merged
            .iter()
            .map(|(n, ranges)| {
                let (len, key) = net_key(ruleset, n);
                let mut rule = NetRule::default();
                for (slot, (lo, hi)) in rule.ranges.iter_mut().zip(ranges.iter().take(PORT_RANGES_MAX)) {
                    *slot = PortRange { lo: *lo, hi: *hi };
                }
                rule.count = ranges.len().min(PORT_RANGES_MAX) as u32;
                (len, key, rule)
            })
            .collect();
        let base = net::v4_mapped_base();
        let v6_covers_v4 = rules
            .iter()
            .any(|r| matches!(r.net, IpNet::V6(n) if n.contains(&base)));
        let v4_any: IpNet = "0.0.0.0/0".parse().expect("valid");
        if v6_covers_v4 && !merged.contains_key(&v4_any) {
            let (len, key) = net_key(ruleset, &v4_any);
            net_rules.push((len, key, NetRule::default()));
        }
        net_rules.sort_by_key(|a| (a.1.addr, a.0));
        net_rules
}
