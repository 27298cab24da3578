//! Name rules of `[network] connect`: "api.github.com:443", "*.githubusercontent.com:443"
//! (one label or more below the suffix, never the suffix itself), "pypi.org:80-443". The
//! daemon's DNS forwarder (`crate::dns`) lets a run resolve the names these cover and opens
//! the answers' addresses on the rules' ports; every other name is refused.
use std::fmt;

use serde::Serialize;

use super::paths::Problem;

/// One name rule: a lower-case DNS name (without the trailing dot), whether it is a `*.`
/// wildcard, and an inclusive port range.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameRuleSpec {
    /// For a wildcard, the suffix below which it matches ("githubusercontent.com").
    pub name: String,
    pub wildcard: bool,
    pub ports: (u16, u16),
}

impl fmt::Display for NameRuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)?;
        let (lo, hi) = self.ports;
        if lo == hi {
            write!(f, ":{lo}")
        } else {
            write!(f, ":{lo}-{hi}")
        }
    }
}

impl Serialize for NameRuleSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl NameRuleSpec {
    /// Whether the rule covers `qname` (any case, with or without the trailing dot).
    pub fn covers(&self, qname: &str) -> bool {
        let q = qname.strip_suffix('.').unwrap_or(qname);
        if !self.wildcard {
            return q.eq_ignore_ascii_case(&self.name);
        }
        // One label or more, then ".suffix".
        q.len() > self.name.len() + 1
            && q.as_bytes()[q.len() - self.name.len() - 1] == b'.'
            && q[q.len() - self.name.len()..].eq_ignore_ascii_case(&self.name)
    }

    /// Whether this rule covers every name `other` covers (on the names; ports apart).
    pub fn covers_rule(&self, other: &NameRuleSpec) -> bool {
        match (self.wildcard, other.wildcard) {
            (false, false) => self.name == other.name,
            (false, true) => false,
            (true, false) => self.covers(&other.name),
            (true, true) => other.name == self.name || self.covers(&other.name),
        }
    }
}

/// The port ranges of the rules that cover `qname`, coalesced (empty: no rule covers it).
pub fn ports_for(rules: &[NameRuleSpec], qname: &str) -> Vec<(u16, u16)> {
    super::net::coalesce(rules.iter().filter(|r| r.covers(qname)).map(|r| r.ports).collect())
}

/// Sorted and merged port ranges (the forwarder merges the ranges of every name that opened
/// an address).
pub fn coalesce_ports(v: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    super::net::coalesce(v)
}

/// Whether `s` (the part before ":PORT") is meant as a name rather than an address: it has a
/// letter or a '*' and no ':' '/' '[' (an address or CIDR always fails this).
pub(super) fn looks_like_name(host: &str) -> bool {
    !host.is_empty()
        && !host.contains(['/', '[', ']', ':'])
        && host.bytes().any(|b| b.is_ascii_alphabetic() || b == b'*')
}

const FORMS: &str = "write NAME:PORT or *.SUFFIX:LO-HI, e.g. \"pypi.org:443\" or \"*.githubusercontent.com:443\"";

/// Parses "NAME:PORT", "NAME:LO-HI" and "*.SUFFIX:PORT".
pub(super) fn parse_name_rule(s: &str) -> Result<NameRuleSpec, Problem> {
    let Some((host, ports)) = s.rsplit_once(':') else {
        return Err((format!("{s:?} has no port"), Some(format!("\"{s}:443\" allows port 443"))));
    };
    let ports = super::net::parse_ports(ports, s)?;
    let host = host.strip_suffix('.').unwrap_or(host);
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if name.contains('*') {
        return Err((
            format!("{s:?}: '*' is allowed only as the whole first label (\"*.example.com\")"),
            Some(FORMS.into()),
        ));
    }
    if name.len() > 253 {
        return Err((format!("{s:?}: a DNS name has at most 253 characters"), None));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for l in &labels {
        if l.is_empty() {
            return Err((format!("{s:?} has an empty label"), Some(FORMS.into())));
        }
        if l.len() > 63 {
            return Err((format!("{s:?}: label {l:?} is longer than 63 characters"), None));
        }
        if !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err((
                format!("{s:?}: label {l:?} has a character other than a-z, 0-9, '-' or '_'"),
                Some("write internationalised names in their xn-- (IDNA) form".into()),
            ));
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err((format!("{s:?}: label {l:?} starts or ends with '-'"), None));
        }
    }
    if wildcard && labels.len() < 2 {
        return Err((
            format!("{s:?} would cover a whole top-level domain"),
            Some("name a registered domain below it, e.g. \"*.example.com:443\"".into()),
        ));
    }
    // A top-level label starts with a letter ("com", "xn--p1ai"): "127.0.0.1v32" is a typo
    // of an address, not a name.
    if labels.last().is_some_and(|l| !l.as_bytes()[0].is_ascii_alphabetic()) {
        return Err((
            format!("{s:?} is neither an IP address nor a DNS name (its last label does not start with a letter)"),
            Some(FORMS.into()),
        ));
    }
    Ok(NameRuleSpec { name: name.to_ascii_lowercase(), wildcard, ports })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> NameRuleSpec {
        parse_name_rule(s).unwrap()
    }

    #[test]
    fn parses_and_prints_canonically() {
        assert_eq!(r("PyPI.org:443").to_string(), "pypi.org:443");
        assert_eq!(r("*.githubusercontent.com.:80-443").to_string(), "*.githubusercontent.com:80-443");
        for bad in ["pypi.org", "pypi.org:0", "a..b:1", "*.com:443", "a*.b.com:1", "x.*.com:1", "-a.com:1", "a.com:70000", "é.com:1", "1.2.3.999:80", "127.0.0.1v32:80"] {
            assert!(parse_name_rule(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn wildcard_covers_one_label_or_more_never_the_suffix() {
        let w = r("*.githubusercontent.com:443");
        assert!(w.covers("raw.githubusercontent.com"));
        assert!(w.covers("a.b.GitHubUserContent.com."));
        assert!(!w.covers("githubusercontent.com"));
        assert!(!w.covers("evilgithubusercontent.com"));
        assert!(!w.covers("githubusercontent.com.evil.org"));
        let e = r("pypi.org:443");
        assert!(e.covers("PYPI.org."));
        assert!(!e.covers("x.pypi.org"));
        assert!(w.covers_rule(&r("*.x.githubusercontent.com:1")));
        assert!(!e.covers_rule(&w));
    }

    #[test]
    fn ports_merge_over_the_rules_that_cover_a_name() {
        let rules = [r("x.pypi.org:443"), r("*.pypi.org:80"), r("other.net:22")];
        assert_eq!(ports_for(&rules, "x.pypi.org"), vec![(80, 80), (443, 443)]);
        assert!(ports_for(&rules, "other.com").is_empty());
    }

    #[test]
    fn tells_names_from_addresses() {
        for a in ["10.0.0.0/8", "127.0.0.1", "[::1]", "::1"] {
            assert!(!looks_like_name(a), "{a}");
        }
        for n in ["pypi.org", "*.x.com", "localhost"] {
            assert!(looks_like_name(n), "{n}");
        }
    }
}
