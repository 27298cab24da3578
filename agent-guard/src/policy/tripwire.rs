//! Tripwires: `[decoys]` and `[limits]`, checked and compiled for the kernel side
//! (agent-guard-ebpf/src/tripwire.rs).
//!
//! ```toml
//! [decoys]
//! files = ["/home/agent/.aws/credentials", "/workspace/.env.production"]
//! hosts = ["203.0.113.7:443", "[2001:db8::7]:443"]
//! [limits]
//! execs_per_minute = 600
//! opens_per_minute = 20000
//! connects_per_minute = 60
//! distinct_destinations = 20
//! denials_per_minute = 10
//! processes = 256
//! on_limit = "freeze"            # report | freeze | kill (default freeze)
//! ```
//! A decoy file is an exact file (not a prefix); opening it (read or write) in any mode, under
//! any other rule, stops the process and holds the run (verdict `decoy`). A decoy host is an
//! address and port (a name is refused: a decoy is an exact destination, and the name rules
//! of `[network] connect` open addresses, they do not watch them).
use std::net::{IpAddr, SocketAddr};

use agent_guard_common::{limit, DecoyHostKey, Limits};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::paths::Problem;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDecoys {
    pub(super) files: super::parse::SList,
    pub(super) hosts: super::parse::SList,
}

type SInt = Option<Spanned<i64>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) execs_per_minute: SInt,
    pub(super) opens_per_minute: SInt,
    pub(super) connects_per_minute: SInt,
    pub(super) distinct_destinations: SInt,
    pub(super) denials_per_minute: SInt,
    pub(super) processes: SInt,
    pub(super) on_limit: Option<Spanned<String>>,
}

impl RawLimits {
    /// (key, value) in `limit::*` index order.
    pub(super) fn entries(&self) -> [(&'static str, &SInt); limit::COUNT] {
        [
            ("limits.execs_per_minute", &self.execs_per_minute),
            ("limits.opens_per_minute", &self.opens_per_minute),
            ("limits.connects_per_minute", &self.connects_per_minute),
            ("limits.distinct_destinations", &self.distinct_destinations),
            ("limits.denials_per_minute", &self.denials_per_minute),
            ("limits.processes", &self.processes),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    Report,
    #[default]
    Freeze,
    Kill,
}

impl OnLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            OnLimit::Report => "report",
            OnLimit::Freeze => "freeze",
            OnLimit::Kill => "kill",
        }
    }
}

/// `[decoys]` and `[limits]` of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Tripwires {
    /// Normalised absolute file paths.
    pub decoy_files: Vec<String>,
    /// (address, port); IPv4-mapped IPv6 is kept as IPv4.
    pub decoy_hosts: Vec<SocketAddr>,
    /// Budgets in `limit::*` index order (None: no budget).
    pub limits: [Option<u32>; limit::COUNT],
    pub on_limit: OnLimit,
}

/// The limit names in `limit::*` order (as `[limits]` keys and metric labels).
pub const LIMIT_NAMES: [&str; limit::COUNT] =
    ["execs_per_minute", "opens_per_minute", "connects_per_minute", "distinct_destinations", "denials_per_minute", "processes"];

impl Tripwires {
    pub fn is_empty(&self) -> bool {
        self.decoy_files.is_empty() && self.decoy_hosts.is_empty() && !self.has_limits()
    }

    pub fn has_limits(&self) -> bool {
        self.limits.iter().any(Option::is_some)
    }

    /// `[limits] processes`: written to the run cgroup's pids.max.
    pub fn processes(&self) -> Option<u32> {
        self.limits[limit::PROCESSES]
    }

    /// The AG_LIMITS value (None without limits).
    pub fn kernel_limits(&self) -> Option<Limits> {
        if !self.has_limits() {
            return None;
        }
        let mut l = Limits::default();
        for (m, v) in l.max.iter_mut().zip(self.limits) {
            *m = v.unwrap_or(0);
        }
        l.on_limit = match self.on_limit {
            OnLimit::Report => limit::REPORT,
            OnLimit::Freeze => limit::FREEZE,
            OnLimit::Kill => limit::KILL,
        };
        Some(l)
    }

    /// AG_DECOY_HOSTS keys of rule set `ruleset`.
    pub fn decoy_host_keys(&self, ruleset: u32) -> Vec<DecoyHostKey> {
        self.decoy_hosts
            .iter()
            .map(|h| {
                let addr = match h.ip() {
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                    IpAddr::V6(a) => a.octets(),
                };
                DecoyHostKey { ruleset, port: h.port(), _pad: 0, addr }
            })
            .collect()
    }

    /// The `[decoys]` and `[limits]` sections as a policy file writes them (empty: none).
    pub fn to_toml(&self) -> String {
        let quote = |s: String| toml::Value::String(s).to_string();
        let mut s = String::new();
        if !self.decoy_files.is_empty() || !self.decoy_hosts.is_empty() {
            s.push_str("\n[decoys]\n");
            for (key, items) in [
                ("files", self.decoy_files.clone()),
                ("hosts", self.decoy_hosts.iter().map(ToString::to_string).collect()),
            ] {
                if !items.is_empty() {
                    s.push_str(&format!("{key} = [{}]\n", items.into_iter().map(quote).collect::<Vec<_>>().join(", ")));
                }
            }
        }
        if self.has_limits() {
            s.push_str("\n[limits]\n");
            for (name, v) in LIMIT_NAMES.iter().zip(self.limits) {
                if let Some(v) = v {
                    s.push_str(&format!("{name} = {v}\n"));
                }
            }
            s.push_str(&format!("on_limit = \"{}\"\n", self.on_limit.as_str()));
        }
        s
    }

    /// Canonical text of the lists and budgets, for the policy version.
    pub(super) fn canonical(&self) -> Vec<String> {
        let mut out: Vec<String> = self.decoy_files.iter().map(|f| format!("decoy file {f}")).collect();
        out.extend(self.decoy_hosts.iter().map(|h| format!("decoy host {h}")));
        for (name, v) in LIMIT_NAMES.iter().zip(self.limits) {
            if let Some(v) = v {
                out.push(format!("limit {name} {v}"));
            }
        }
        if self.has_limits() {
            out.push(format!("on_limit {}", self.on_limit.as_str()));
        }
        out.sort_unstable();
        out
    }
}

/// A `[decoys] files` entry: an absolute, normalised path of a file (not "/").
pub(super) fn check_decoy_file(s: &str) -> Result<(String, String), Problem> {
    let (p, _) = super::paths::normalise_rule(s, "decoy files")?;
    if p == "/" {
        return Err(("\"/\" is not a file".into(), Some("a decoy is one file, e.g. \"/home/agent/.aws/credentials\"".into())));
    }
    Ok((p.clone(), p))
}

/// A `[decoys] hosts` entry: "IPv4:PORT" or "[IPv6]:PORT", port 1-65535.
pub(super) fn check_decoy_host(s: &str) -> Result<(SocketAddr, String), Problem> {
    let hint = Some("write an address and a port, e.g. \"203.0.113.7:443\" or \"[2001:db8::7]:443\"".to_string());
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => Err((format!("decoy host {s:?} has port 0"), hint)),
        Ok(a) => {
            let a = SocketAddr::new(super::normalise_addr(a.ip()), a.port());
            Ok((a, a.to_string()))
        }
        Err(_) => {
            let host = s.rsplit_once(':').map_or(s, |(h, _)| h);
            if !host.is_empty() && host.parse::<IpAddr>().is_err() && host.chars().any(|c| c.is_ascii_alphabetic()) && !host.contains(['[', ']']) {
                Err((
                    format!("decoy host {s:?} is a name; a decoy host is an address (names are for [network] connect)"),
                    Some("give the address the name resolves to, e.g. \"203.0.113.7:443\"".into()),
                ))
            } else {
                Err((format!("invalid decoy host {s:?}"), hint))
            }
        }
    }
}

/// A budget: a whole number from 1 to 2^32-1.
pub(super) fn check_limit(v: i64) -> Result<u32, Problem> {
    match u32::try_from(v) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err((format!("{v} is not a budget; a limit is a whole number from 1 to {}", u32::MAX), Some("leave the key out for no limit".into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_addresses_and_names_are_refused_for_now() {
        assert_eq!(check_decoy_host("203.0.113.7:443").unwrap().1, "203.0.113.7:443");
        assert_eq!(check_decoy_host("[::ffff:203.0.113.7]:443").unwrap().1, "203.0.113.7:443");
        assert_eq!(check_decoy_host("[2001:db8::7]:443").unwrap().1, "[2001:db8::7]:443");
        assert!(check_decoy_host("canary.internal.example:443").unwrap_err().0.contains("is a name"));
        assert!(check_decoy_host("203.0.113.7").unwrap_err().0.contains("invalid"));
        assert!(check_decoy_host("203.0.113.7:0").unwrap_err().0.contains("port 0"));
        assert!(check_decoy_file("/").is_err() && check_decoy_file("relative").is_err());
        assert_eq!((check_limit(5).unwrap(), check_limit(0).is_err(), check_limit(-1).is_err()), (5, true, true));
        assert!(check_limit(1 << 33).is_err());
    }

    #[test]
    fn sections_written_back_parse_to_the_same_tripwires() {
        let text = "name = \"p\"\n[decoys]\nfiles = [\"/a/b\"]\nhosts = [\"[::1]:9\", \"10.0.0.1:443\"]\n[limits]\nprocesses = 20\nopens_per_minute = 5\non_limit = \"kill\"\n";
        let p = crate::policy::parse(text, "t").policy.expect("valid");
        let again = crate::policy::parse(&format!("name = \"p\"\n{}", p.tripwires.to_toml()), "t").policy.expect("valid");
        assert_eq!(again.tripwires, p.tripwires);
        assert_eq!(again.version, p.version);
    }
}
