//! The one-line human form of an event (`events` without `--json`, the daemon's stderr).
use super::*;

/// A concise human line for stderr.
pub fn human(e: &Event) -> String {
    let who = format!(
        "{} {}",
        e.run.as_deref().unwrap_or("-"),
        e.pid.map(|p| format!("pid={p}")).unwrap_or_default()
    );
    let what = match &e.detail {
        // A refused exec has no argv: its path, as passed, and the error.
        Detail::Exec { argv, path, error: Some(error), .. } if argv.is_empty() => format!("{path} {error}"),
        Detail::Exec { argv, .. } => argv.join(" "),
        Detail::Open { path, access, error, .. } => {
            format!("{path} ({access}){}", error.as_deref().map(|e| format!(" {e}")).unwrap_or_default())
        }
        Detail::Connect { addr, port, proto, error, domain, .. } => format!(
            "{proto} {addr}:{port}{}{}",
            domain.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(),
            error.as_deref().map(|e| format!(" {e}")).unwrap_or_default()
        ),
        Detail::Dns { query, qtype, rcode, answers, error, .. } => format!(
            "{query} {qtype} {rcode}{}{}",
            if answers.is_empty() { String::new() } else { format!(" -> {}", answers.join(" ")) },
            error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        ),
        Detail::Exit { exit_code, signal } => match signal {
            Some(s) => format!("signal {s}"),
            None => format!("code {exit_code}"),
        },
        Detail::RunStart { argv, .. } => format!("name={} {}", e.run_name.as_deref().unwrap_or("-"), argv.join(" ")),
        Detail::RunEnd { exit_status } => format!("status {}", exit_status.map_or("-".into(), |s| s.to_string())),
        Detail::Drop { count, stage } => format!("{count} events lost at {stage}"),
        Detail::Hold { hold, attempts, .. } => format!(
            "{hold}: {}",
            attempts
                .iter()
                .map(|a| format!("{} {} by pid {} ({})", a.kind, a.what, a.tgid, a.comm.as_deref().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Detail::Action { requested_by_uid, requested_by_pid, latency_ms, processes, error } => format!(
            "name={} {processes} processes in {latency_ms:.3} ms, by uid {requested_by_uid} pid {requested_by_pid}{}",
            e.run_name.as_deref().unwrap_or("-"),
            error.as_deref().map(|e| format!(": FAILED: {e}")).unwrap_or_default()
        ),
        Detail::Syscall { name, .. } => name.clone(),
        Detail::Limit { limit, count, max, window_s, .. } => match window_s {
            Some(w) => format!("{limit}: {count} over {max} in a {w} s window"),
            None => format!("{limit}: {count} over {max}"),
        },
        Detail::Socket { family, sock_type, protocol } => format!("family={family} type={sock_type} protocol={protocol}"),
        Detail::SocketFamily { family, sock_type, protocol, family_name, netlink, .. } => format!(
            "family={} type={sock_type} protocol={}",
            family_name.map_or(family.to_string(), str::to_string),
            netlink.map_or(protocol.to_string(), str::to_string)
        ),
        Detail::Unix { path, error, .. } => {
            format!("unix {path}{}", error.as_deref().map(|e| format!(" {e}")).unwrap_or_default())
        }
        Detail::Bind { op, addr, port, error, .. } => {
            format!("{} {addr}:{port}{}", if *op == BindOp::Listen { "listen" } else { "bind" }, error.as_deref().map(|e| format!(" {e}")).unwrap_or_default())
        }
        Detail::PolicyReload { result, source, error, .. } => format!(
            "{} {result} ({source}){}",
            e.policy.as_deref().unwrap_or("-"),
            error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        ),
        Detail::Checkpoint { covers_seq, .. } => format!("log signed up to seq {covers_seq}"),
        Detail::ChainGap { reason, .. } => format!("log chain gap: {reason}"),
        Detail::None => String::new(),
    };
    let rule = e.rule.map_or("", Rule::name);
    let verdict = match (e.verdict, e.layer) {
        (Verdict::Allow, _) => String::new(),
        (v, Some("landlock")) => format!(" [{} {rule} by landlock]", v.name().to_uppercase()),
        (v, _) => format!(" [{} {rule}]", v.name().to_uppercase()),
    };
    // Paths, argv and comm are the run's to choose: never a control character on a terminal.
    crate::output::text::printable(&format!("{} {:<7} {} {}{}", e.ts, e.kind.name(), who.trim_end(), what, verdict)).into_owned()
}
