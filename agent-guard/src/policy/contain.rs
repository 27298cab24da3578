//! Containment rules of `[network]`: `unix` (which AF_UNIX sockets a run may reach),
//! `families` (which socket families beyond IP, unix and netlink-route it may create) and
//! `listen` (where it may bind and listen; parsed as `connect`, see net.rs).
//!
//! - `unix`: `"/run/myagent.sock"` (exactly that path), `"/run/myagent/"` (every socket
//!   below that directory), `"@name"` (the abstract socket `name`, exactly). Paths are
//!   absolute and normalised, at most 108 bytes (sun_path); abstract names at most 107.
//! - `families`: names of address families (`packet`, `vsock`, `tipc`, ...), `netlink` (every
//!   netlink protocol) or `netlink:PROTOCOL` (`netlink:audit`, `netlink:kobject_uevent`, ...).
//!   AF_INET, AF_INET6, AF_UNIX and netlink `route` are always allowed.
use agent_guard_common::{NetContain, UnixKey, UNIX_ABSTRACT, UNIX_PATHNAME, UNIX_PATH_BYTES};

use super::{
    paths::{self, Problem},
    Policy,
};

/// Longest sun_path.
pub const SUN_PATH: usize = 108;

/// Address families by name (AF_* numbers of linux/socket.h).
pub const FAMILIES: &[(&str, u32)] = &[
    ("ax25", 3),
    ("ipx", 4),
    ("appletalk", 5),
    ("netrom", 6),
    ("bridge", 7),
    ("atmpvc", 8),
    ("x25", 9),
    ("rose", 11),
    ("decnet", 12),
    ("netbeui", 13),
    ("security", 14),
    ("key", 15),
    ("packet", 17),
    ("ash", 18),
    ("econet", 19),
    ("atmsvc", 20),
    ("rds", 21),
    ("sna", 22),
    ("irda", 23),
    ("pppox", 24),
    ("wanpipe", 25),
    ("llc", 26),
    ("ib", 27),
    ("mpls", 28),
    ("can", 29),
    ("tipc", 30),
    ("bluetooth", 31),
    ("iucv", 32),
    ("rxrpc", 33),
    ("isdn", 34),
    ("phonet", 35),
    ("ieee802154", 36),
    ("caif", 37),
    ("alg", 38),
    ("nfc", 39),
    ("vsock", 40),
    ("kcm", 41),
    ("qipcrtr", 42),
    ("smc", 43),
    ("xdp", 44),
    ("mctp", 45),
];

/// Netlink protocols by name (NETLINK_* of linux/netlink.h).
pub const NETLINK: &[(&str, u32)] = &[
    ("route", 0),
    ("usersock", 2),
    ("firewall", 3),
    ("sock_diag", 4),
    ("nflog", 5),
    ("xfrm", 6),
    ("selinux", 7),
    ("iscsi", 8),
    ("audit", 9),
    ("fib_lookup", 10),
    ("connector", 11),
    ("netfilter", 12),
    ("ip6_fw", 13),
    ("dnrtmsg", 14),
    ("kobject_uevent", 15),
    ("generic", 16),
    ("scsitransport", 18),
    ("ecryptfs", 19),
    ("rdma", 20),
    ("crypto", 21),
    ("smc", 22),
];

const AF_UNIX: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
pub const AF_NETLINK: u32 = 16;

/// One `families` entry: a family, or (netlink, Some(protocol)); netlink with None: all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Family {
    pub family: u32,
    pub netlink: Option<u32>,
}

/// Checks a `network.unix` entry; returns it normalised ("/p", "/dir/" or "@name").
pub fn check_unix(raw: &str) -> Result<(String, String), Problem> {
    if let Some(name) = raw.strip_prefix('@') {
        if name.is_empty() {
            return Err(("empty abstract socket name".into(), Some("write \"@name\"".into())));
        }
        if name.len() > SUN_PATH - 1 {
            return Err((format!("abstract name is {} bytes long; at most {}", name.len(), SUN_PATH - 1), None));
        }
        return Ok((raw.to_string(), raw.to_string()));
    }
    let (p, dir) = paths::normalise_rule(raw, "unix socket rules").map_err(|(m, h)| {
        (m, h.or_else(|| Some("an absolute path (\"/run/x.sock\"), a directory (\"/run/x/\") or \"@abstract-name\"".into())))
    })?;
    let r = if dir && p != "/" { format!("{p}/") } else { p };
    if r.len() > SUN_PATH {
        return Err((format!("{} bytes long; a unix socket path has at most {SUN_PATH}", r.len()), None));
    }
    Ok((r.clone(), r))
}

/// Whether the `network.unix` rules allow connecting to `name` ("/path" as passed, or
/// "@name"), as the cgroup programs decide: exact paths, `dir/` prefixes, no `..` component.
pub fn unix_allows(rules: &[String], name: &str) -> bool {
    if !name.starts_with('@') && name.split('/').any(|c| c == "..") {
        return false;
    }
    rules.iter().any(|r| if r.starts_with('@') { r == name } else if let Some(d) = r.strip_suffix('/') { name.starts_with(&format!("{d}/")) } else { r == name || r == "/" && name.starts_with('/') })
}

/// Checks a `network.families` entry.
pub fn check_family(raw: &str) -> Result<(Family, String), Problem> {
    let hint = || {
        Some(format!(
            "one of {}, \"netlink\" or \"netlink:PROTOCOL\" ({})",
            FAMILIES.iter().map(|(n, _)| format!("{n:?}")).collect::<Vec<_>>().join(", "),
            NETLINK.iter().map(|(n, _)| *n).filter(|n| *n != "route").collect::<Vec<_>>().join(", ")
        ))
    };
    if matches!(raw, "inet" | "inet6" | "unix" | "netlink:route") {
        return Err((format!("{raw:?} is always allowed"), Some("remove it".into())));
    }
    if raw == "netlink" {
        return Ok((Family { family: AF_NETLINK, netlink: None }, raw.into()));
    }
    if let Some(proto) = raw.strip_prefix("netlink:") {
        return match NETLINK.iter().find(|(n, _)| *n == proto) {
            Some((_, nr)) => Ok((Family { family: AF_NETLINK, netlink: Some(*nr) }, raw.into())),
            None => Err((format!("unknown netlink protocol {proto:?}"), hint())),
        };
    }
    match FAMILIES.iter().find(|(n, _)| *n == raw) {
        Some((_, nr)) => Ok((Family { family: *nr, netlink: None }, raw.into())),
        None => Err((format!("unknown socket family {raw:?}"), hint())),
    }
}

/// The name of an address family number (for events); None if unnamed.
pub fn family_name(nr: u32) -> Option<&'static str> {
    match nr {
        AF_UNIX => Some("unix"),
        AF_INET => Some("inet"),
        AF_INET6 => Some("inet6"),
        AF_NETLINK => Some("netlink"),
        _ => FAMILIES.iter().find(|(_, n)| *n == nr).map(|(name, _)| *name),
    }
}

/// The name of a netlink protocol number.
pub fn netlink_name(nr: u32) -> Option<&'static str> {
    NETLINK.iter().find(|(_, n)| *n == nr).map(|(name, _)| *name)
}

/// The kernel's [`NetContain`] for these families (plus the defaults; `raw_sockets = true`
/// also allows packet sockets, as it always did).
pub fn compile_families(families: &[Family], raw_sockets: bool) -> NetContain {
    let mut c = NetContain {
        families: (1 << AF_UNIX) | (1 << AF_INET) | (1 << AF_INET6) | (1 << AF_NETLINK),
        netlink: 1,
        flags: 0,
    };
    if raw_sockets {
        c.families |= 1 << 17;
    }
    for f in families {
        c.families |= 1u64 << f.family;
        match f.netlink {
            Some(p) => c.netlink |= 1 << p,
            None if f.family == AF_NETLINK => c.netlink = u32::MAX,
            None => {}
        }
    }
    c
}

impl Policy {
    /// What the policy lets a run create beyond IP, unix and netlink route sockets: the
    /// kernel's AG_NET_CONTAIN value, which the seccomp filter of launched runs also compiles.
    pub fn net_contain(&self) -> NetContain {
        let families: Vec<Family> = self.network_families.iter().filter_map(|f| check_family(f).ok().map(|(f, _)| f)).collect();
        compile_families(&families, self.raw_sockets)
    }
}

/// Whether `c` allows a socket of `family` / `protocol`, both as the kernel's `int` (the
/// kernel programs' `family_allowed`, for the seccomp filter's listener and tests).
pub fn family_allowed(c: &NetContain, family: i32, protocol: i32) -> bool {
    if !(0..64).contains(&family) || c.families & (1u64 << family) == 0 {
        return false;
    }
    family as u32 != AF_NETLINK || ((0..32).contains(&protocol) && c.netlink & (1u32 << protocol) != 0)
}

/// AG_UNIX_RULES entries: (LPM prefix length in bits, key).
pub fn compile_unix(ruleset: u32, rules: &[String]) -> Vec<(u32, UnixKey)> {
    rules
        .iter()
        .map(|r| {
            let mut key = UnixKey { ruleset_be: ruleset.to_be_bytes(), kind: UNIX_PATHNAME, len: 0, path: [0; UNIX_PATH_BYTES] };
            let bytes = match r.strip_prefix('@') {
                Some(name) => {
                    key.kind = UNIX_ABSTRACT;
                    key.len = name.len() as u8;
                    name.as_bytes()
                }
                None => r.as_bytes(),
            };
            key.path[..bytes.len()].copy_from_slice(bytes);
            // An exact path includes its terminating zero; a `dir/` rule and an abstract name
            // end at their last byte.
            let exact_path = key.kind == UNIX_PATHNAME && !r.ends_with('/');
            let bits = 48 + 8 * (bytes.len() as u32 + u32::from(exact_path));
            (bits, key)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_entries_are_checked_and_normalised() {
        assert_eq!(check_unix("/run/a.sock").unwrap().0, "/run/a.sock");
        assert_eq!(check_unix("/run/agent/").unwrap().0, "/run/agent/");
        assert_eq!(check_unix("@my-agent").unwrap().0, "@my-agent");
        assert!(check_unix("@").is_err());
        assert!(check_unix("run/a.sock").is_err());
        assert!(check_unix("/run/../a.sock").is_err());
        assert!(check_unix(&format!("/{}", "x".repeat(120))).is_err());
    }

    #[test]
    fn unix_matching_is_exact_or_below_a_directory_and_never_climbs() {
        let rules = vec!["/run/a.sock".to_string(), "/run/agent/".to_string(), "@x".to_string()];
        assert!(unix_allows(&rules, "/run/a.sock"));
        assert!(!unix_allows(&rules, "/run/a.sockx"));
        assert!(unix_allows(&rules, "/run/agent/s"));
        assert!(!unix_allows(&rules, "/run/agent/../docker.sock"));
        assert!(!unix_allows(&rules, "/run/agent"));
        assert!(unix_allows(&rules, "@x"));
        assert!(!unix_allows(&rules, "@xy"));
    }

    #[test]
    fn families_have_names_and_defaults_are_always_on() {
        assert_eq!(check_family("packet").unwrap().0, Family { family: 17, netlink: None });
        assert_eq!(check_family("netlink:audit").unwrap().0, Family { family: 16, netlink: Some(9) });
        assert!(check_family("inet").is_err());
        assert!(check_family("carrier-pigeon").is_err());
        let c = compile_families(&[check_family("vsock").unwrap().0, check_family("netlink:audit").unwrap().0], false);
        assert_eq!(c.families, (1 << 1) | (1 << 2) | (1 << 10) | (1 << 16) | (1 << 40));
        assert_eq!(c.netlink, 1 | (1 << 9));
        assert_eq!(compile_families(&[], true).families & (1 << 17), 1 << 17);
    }

    #[test]
    fn the_new_keys_parse_with_positions_and_change_the_version_only_when_set() {
        let base = "name = \"t\"\n[network]\nconnect = [\"10.0.0.0/8:443\"]\n";
        let plain = crate::policy::parse(base, "t.toml").policy.unwrap();
        let text = format!("{base}unix = [\"/run/a.sock\", \"@x\"]\nfamilies = [\"packet\"]\nlisten = [\"127.0.0.1:3000-3999\"]\n");
        let p = crate::policy::parse(&text, "t.toml").policy.unwrap();
        assert_eq!((p.network_unix.len(), p.network_families.len(), p.network_listen.len()), (2, 1, 1));
        assert_ne!(p.version, plain.version);
        // A policy without the keys keeps the version it had before they existed.
        assert_eq!(plain.version, crate::policy::parse(&format!("{base}unix = []\n"), "t.toml").policy.unwrap().version);
        assert!(p.unix_allowed("/run/a.sock") && !p.unix_allowed("/run/docker.sock"));
        assert!(p.listen_allowed("127.0.0.1".parse().unwrap(), 3000) && !p.listen_allowed("0.0.0.0".parse().unwrap(), 3000));
        let bad = format!("{base}unix = [\"relative.sock\"]\nfamilies = [\"pigeon\"]\nlisten = [\"127.0.0.1:0\"]\n");
        let c = crate::policy::parse(&bad, "t.toml");
        let where_: Vec<(usize, usize, &str)> = c.errors.iter().map(|d| (d.line, d.column, d.field.as_str())).collect();
        assert_eq!(where_, [(4, 9, "network.unix[0]"), (5, 13, "network.families[0]"), (6, 11, "network.listen[0]")], "{:?}", c.errors);
        let c = compiled(&p);
        assert_eq!((c.unix_rules.len(), c.listen_rules.len(), c.contain.families & (1 << 17)), (2, 1, 1 << 17));
    }

    fn compiled(p: &crate::policy::Policy) -> crate::policy::Compiled {
        p.compile(9)
    }

    #[test]
    fn unix_keys_cover_the_terminator_of_exact_paths_only() {
        let k = compile_unix(7, &["/a".into(), "/d/".into(), "@n".into()]);
        assert_eq!(k[0].0, 48 + 8 * 3);
        assert_eq!(k[1].0, 48 + 8 * 3);
        assert_eq!((k[2].0, k[2].1.kind, k[2].1.len), (48 + 8, UNIX_ABSTRACT, 1));
        assert_eq!(k[0].1.ruleset_be, 7u32.to_be_bytes());
    }
}
