//! `[process]`: what `agent-guard run` leaves the command of privileges (`capabilities`) and
//! whom it runs as (`user`).
use super::paths::Problem;

/// Linux capability names, by number (capability(7)); `CAP_` is optional in policies.
pub const CAPABILITIES: &[&str] = &[
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
    "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
    "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
    "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf",
    "checkpoint_restore",
];

/// The highest capability number this build knows.
pub const CAP_LAST: u32 = CAPABILITIES.len() as u32 - 1;

/// `CAP_NET_BIND_SERVICE` or `net_bind_service` (any case) -> ("CAP_NET_BIND_SERVICE", 10).
pub fn check_capability(s: &str) -> Result<((String, u32), String), Problem> {
    let lower = s.to_ascii_lowercase();
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    match CAPABILITIES.iter().position(|c| *c == bare) {
        Some(n) => {
            let name = format!("CAP_{}", bare.to_ascii_uppercase());
            Ok(((name.clone(), n as u32), name))
        }
        None => Err((
            format!("{s:?} is not a Linux capability"),
            Some("a name from capability(7), e.g. \"CAP_NET_BIND_SERVICE\"".into()),
        )),
    }
}

/// `USER` or `USER:GROUP`: names or numeric ids, as `--user` takes them.
pub fn check_user(s: &str) -> Result<(), Problem> {
    let ok = |part: &str| {
        !part.is_empty() && part.len() <= 32 && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    if ok(user) && group.is_none_or(ok) {
        Ok(())
    } else {
        Err((format!("{s:?} is not USER or USER:GROUP"), Some("e.g. \"agent\" or \"agent:agent\"".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_by_name_with_or_without_the_prefix() {
        assert_eq!(check_capability("CAP_NET_BIND_SERVICE").unwrap().0, ("CAP_NET_BIND_SERVICE".into(), 10));
        assert_eq!(check_capability("sys_admin").unwrap().0, ("CAP_SYS_ADMIN".into(), 21));
        assert_eq!(check_capability("cap_checkpoint_restore").unwrap().0 .1, 40);
        assert!(check_capability("CAP_EVERYTHING").unwrap_err().0.contains("not a Linux capability"));
        assert_eq!(CAP_LAST, 40);
    }

    #[test]
    fn users_are_names_or_ids_with_an_optional_group() {
        for ok in ["agent", "agent:agent", "1000", "1000:1000", "svc.bot-1"] {
            assert!(check_user(ok).is_ok(), "{ok}");
        }
        for bad in ["", ":g", "a:", "a b", "a:b:c", "ro;ot"] {
            assert!(check_user(bad).is_err(), "{bad}");
        }
    }
}
