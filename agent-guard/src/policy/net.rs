//! network.connect rules: parsing, canonical text and port-range merging.
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use serde::Serialize;

use super::paths::Problem;

/// One network.connect rule: a CIDR and an inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetRuleSpec {
    /// Normalised: host bits clear, IPv4 when the rule was written as IPv4-mapped IPv6.
    pub net: IpNet,
    /// Inclusive, 1 <= lo <= hi.
    pub ports: (u16, u16),
}

/// Canonical text: "10.0.0.0/8:443", "[::1]/128:1-65535".
impl fmt::Display for NetRuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_net(f, &self.net)?;
        let (lo, hi) = self.ports;
        if lo == hi {
            write!(f, ":{lo}")
        } else {
            write!(f, ":{lo}-{hi}")
        }
    }
}

impl Serialize for NetRuleSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn write_net(f: &mut impl fmt::Write, net: &IpNet) -> fmt::Result {
    match net {
        IpNet::V4(n) => write!(f, "{}/{}", n.addr(), n.prefix_len()),
        IpNet::V6(n) => write!(f, "[{}]/{}", n.addr(), n.prefix_len()),
    }
}

/// Canonical text of a CIDR alone ("10.0.0.0/8", "[::1]/128").
pub(super) fn net_text(net: &IpNet) -> String {
    let mut s = String::new();
    let _ = write_net(&mut s, net);
    s
}

impl NetRuleSpec {
    /// True when this rule allows `addr:port` (`addr` already normalised).
    pub fn allows(&self, addr: IpAddr, port: u16) -> bool {
        self.net.contains(&addr) && self.ports.0 <= port && port <= self.ports.1
    }

    /// Any address of its family on every port ("0.0.0.0/0", "::/0" with 1-65535).
    pub fn is_everything(&self) -> bool {
        self.net.prefix_len() == 0 && self.ports == (1, u16::MAX)
    }
}

/// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) become IPv4.
pub fn normalise_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4-mapped range ::ffff:0:0/96 (where IPv4 rules live in the kernel's trie).
pub(super) fn v4_mapped_base() -> Ipv6Addr {
    Ipv4Addr::UNSPECIFIED.to_ipv6_mapped()
}

const FORMS: &str = "write CIDR:PORT or CIDR:LO-HI, e.g. \"10.0.0.0/8:443\", \"127.0.0.1:8080\" or \"[::1]/128:1-65535\"";

/// Parses "CIDR:PORT" / "CIDR:LO-HI" (see the module documentation for the accepted forms).
pub(super) fn parse_connect(s: &str) -> Result<NetRuleSpec, Problem> {
    let missing_port = |cidr: &str| {
        (
            format!("{s:?} has no port"),
            Some(format!("\"{cidr}:443\" allows port 443, \"{cidr}:1-65535\" every port")),
        )
    };
    let (addr_s, len_s, ports_s): (&str, Option<&str>, &str) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err((format!("{s:?} has no ']' after the IPv6 address"), Some(FORMS.into())));
        };
        let (addr, len_in) = match inner.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (inner, None),
        };
        if let Some(a) = after.strip_prefix('/') {
            if len_in.is_some() {
                return Err((format!("{s:?} has two prefix lengths"), Some(FORMS.into())));
            }
            match a.split_once(':') {
                Some((l, p)) => (addr, Some(l), p),
                None => return Err(missing_port(s)),
            }
        } else if let Some(p) = after.strip_prefix(':') {
            (addr, len_in, p)
        } else if after.is_empty() {
            return Err(missing_port(s));
        } else {
            return Err((format!("unexpected {after:?} after ']' in {s:?}"), Some(FORMS.into())));
        }
    } else {
        match s.matches(':').count() {
            0 => return Err(missing_port(s)),
            1 => {
                let (cidr, p) = s.split_once(':').expect("one colon");
                match cidr.split_once('/') {
                    Some((a, l)) => (a, Some(l), p),
                    None => (cidr, None, p),
                }
            }
            _ => {
                return Err((
                    format!("{s:?}: an IPv6 address must be in brackets"),
                    Some("write \"[2001:db8::]/32:443\" or \"[2001:db8::/32]:443\"".into()),
                ))
            }
        }
    };
    let addr: IpAddr = addr_s
        .parse()
        .map_err(|_| (format!("{addr_s:?} is not an IP address (in {s:?})"), Some(FORMS.into())))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_s {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err((
                    format!("prefix length {l:?} in {s:?} is not a number from 0 to {max}"),
                    None,
                ))
            }
        },
    };
    let ports = parse_ports(ports_s, s)?;
    // IPv4-mapped IPv6 with a prefix inside ::ffff:0:0/96 is an IPv4 rule.
    let (addr, len) = match addr {
        IpAddr::V6(v6) if len >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), len - 96),
            None => (addr, len),
        },
        _ => (addr, len),
    };
    let net = IpNet::new(addr, len).expect("prefix length checked");
    if net.trunc().addr() != net.addr() {
        let fixed = format!("{}:{ports_s}", net_text(&net.trunc()));
        return Err((
            format!("{s:?} has host bits set after the /{len} prefix"),
            Some(format!("the network is {}; write {fixed:?}", net.trunc().addr())),
        ));
    }
    Ok(NetRuleSpec { net, ports })
}

pub(super) fn parse_ports(p: &str, whole: &str) -> Result<(u16, u16), Problem> {
    if p.is_empty() {
        return Err((format!("{whole:?} has no port after ':'"), Some(FORMS.into())));
    }
    let one = |t: &str| -> Result<u16, Problem> {
        match t.parse::<u32>() {
            Ok(0) => Err((
                format!("port 0 in {whole:?} is not a destination port"),
                Some("ports are 1-65535".into()),
            )),
            Ok(n) if n <= u32::from(u16::MAX) => Ok(n as u16),
            Ok(n) => Err((format!("port {n} in {whole:?} is out of range"), Some("ports are 1-65535".into()))),
            Err(_) => Err((format!("{t:?} in {whole:?} is not a port number"), Some(FORMS.into()))),
        }
    };
    let (lo, hi) = match p.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let n = one(p)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err((
            format!("port range {lo}-{hi} in {whole:?} is reversed"),
            Some(format!("write \"{hi}-{lo}\"")),
        ));
    }
    Ok((lo, hi))
}

/// For each distinct CIDR, the port ranges of its own rules and of every rule whose CIDR
/// (same address family) contains it, sorted and coalesced. An LPM lookup returns only the
/// longest matching prefix, so each entry must carry what its enclosing CIDRs allow.
pub(super) fn merged_ranges<'a>(rules: impl IntoIterator<Item = &'a NetRuleSpec>) -> BTreeMap<IpNet, Vec<(u16, u16)>> {
    let mut own: HashMap<IpNet, Vec<(u16, u16)>> = HashMap::new();
    for r in rules {
        own.entry(r.net).or_default().push(r.ports);
    }
    own.keys()
        .map(|net| {
            let mut ranges = Vec::new();
            for len in 0..=net.prefix_len() {
                let sup = IpNet::new(net.addr(), len).expect("len <= prefix_len").trunc();
                if let Some(r) = own.get(&sup) {
                    ranges.extend_from_slice(r);
                }
            }
            (*net, coalesce(ranges))
        })
        .collect()
}

/// Sorts and merges overlapping or adjacent ranges.
pub(super) fn coalesce(mut v: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    v.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        if let Some(last) = out.last_mut() {
            if u32::from(lo) <= u32::from(last.1) + 1 {
                last.1 = last.1.max(hi);
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}
