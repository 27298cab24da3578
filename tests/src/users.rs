//! Test users and groups: created with `groupadd`/`useradd` under unique names, removed on
//! drop; commands run as them with `setpriv --init-groups` (their groups as the system's
//! database says).
use std::{
    path::Path,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name (at most 32 bytes): `agt<pid>x<seq><role>`.
fn unique(role: &str) -> String {
    let mut n = format!("agt{}x{}{role}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    n.truncate(32);
    n
}

fn id_of(db: &str, name: &str) -> u32 {
    let out = Command::new("getent").args([db, name]).output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':').nth(2).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("getent {db} {name}: {line:?}"))
}

fn must(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A group of the test's own.
pub struct TestGroup {
    pub name: String,
    pub gid: u32,
}

impl TestGroup {
    pub fn new(role: &str) -> TestGroup {
        let name = unique(role);
        must(Command::new("groupadd").arg(&name));
        let gid = id_of("group", &name);
        TestGroup { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).stderr(Stdio::null()).status();
    }
}

/// A user of the test's own (no home, no login shell), with its own primary group and the
/// supplementary `groups`.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    pub fn new(role: &str, groups: &[&TestGroup]) -> TestUser {
        let name = unique(role);
        let mut c = Command::new("useradd");
        c.args(["--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin"]);
        if !groups.is_empty() {
            c.arg("--groups").arg(groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(","));
        }
        must(c.arg(&name));
        TestUser { uid: id_of("passwd", &name), gid: id_of("group", &name), name }
    }

    /// `setpriv` running `program ARGS...` as this user with its groups.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &self.uid.to_string(), "--regid", &self.gid.to_string(), "--init-groups", "--"])
            .arg(program)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// `agent-guard --config CONFIG ARGS...` as this user.
    pub fn cli(&self, config: &Path, args: &[&str]) -> Output {
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        self.command(&crate::binary(), &all).output().unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).stderr(Stdio::null()).status();
        // userdel removes the user's own group with USERGROUPS_ENAB; elsewhere it stays.
        let _ = Command::new("groupdel").arg(&self.name).stderr(Stdio::null()).status();
    }
}
