//! Incident response on cgroupfs: freeze, thaw and kill a run's cgroup, find the run a
//! responder names, and what `ps` shows of a run. Used by the daemon, and by the CLI itself
//! when the daemon is down.
//!
//! Every action goes through a [`Scope`]: only cgroups strictly below the managed root, or
//! cgroups a policy binds (known to the daemon only), are ever written to. Nothing else on the
//! host is frozen or killed, whatever path or pid a responder gives.
use std::{
    io,
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use crate::runs::cgroup;

/// How long an action waits for the kernel to report it done.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    #[error("refusing to act on {0}: it is not a run's cgroup below the managed root {1}")]
    Outside(PathBuf, PathBuf),
    // The cause is part of the message, not a `source`: printed as a chain it would appear twice.
    #[error("{call} {path}: {cause}")]
    Io {
        call: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("{what} {path}: not done after {waited:?} (cgroup.events: {events})")]
    Timeout {
        what: &'static str,
        path: PathBuf,
        waited: Duration,
        events: String,
    },
    #[error("{0}")]
    Resolve(String),
}

fn io_err(call: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RespondError {
    let path = path.to_path_buf();
    move |cause| RespondError::Io { call, path, cause }
}

/// The cgroups actions may touch.
#[derive(Debug, Clone)]
pub struct Scope {
    pub mount: PathBuf,
    pub managed_root: PathBuf,
    /// Bound cgroups (only the daemon knows them).
    pub bound: Vec<PathBuf>,
}

impl Scope {
    /// Ok when `dir` is a cgroup strictly below the managed root, or a bound cgroup or below
    /// one; compared component by component, with no `..` or `.` anywhere.
    pub fn check(&self, dir: &Path) -> Result<(), RespondError> {
        let plain = dir.is_absolute() && dir.components().skip(1).all(|c| matches!(c, Component::Normal(_)));
        let below_root = dir.starts_with(&self.managed_root) && dir != self.managed_root;
        let bound = self.bound.iter().any(|b| dir.starts_with(b));
        if !plain || !(below_root || bound) {
            return Err(RespondError::Outside(dir.to_path_buf(), self.managed_root.clone()));
        }
        if !dir.join("cgroup.events").exists() {
            return Err(RespondError::Io {
                call: "reading cgroup.events of",
                path: dir.to_path_buf(),
                cause: io::Error::new(io::ErrorKind::NotFound, "no such cgroup (the run may be over)"),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Freeze,
    Thaw,
    Kill,
}

impl Action {
    /// The event kind and request name.
    pub fn name(self) -> &'static str {
        match self {
            Action::Freeze => "freeze",
            Action::Thaw => "thaw",
            Action::Kill => "kill",
        }
    }

    /// The kind of the event that reports it.
    pub fn kind(self) -> agent_guard_common::Kind {
        match self {
            Action::Freeze => agent_guard_common::Kind::Freeze,
            Action::Thaw => agent_guard_common::Kind::Thaw,
            Action::Kill => agent_guard_common::Kind::Kill,
        }
    }

    pub fn past(self) -> &'static str {
        match self {
            Action::Freeze => "froze",
            Action::Thaw => "thawed",
            Action::Kill => "killed",
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// From the write to the kernel's report that it is done (frozen 1, frozen 0, populated 0).
    pub latency: Duration,
    /// Processes in the cgroup and its descendants when the action started.
    pub processes: usize,
    /// kill: the cgroup directory tree was removed.
    pub removed: bool,
}

/// Performs `action` on `dir` after checking it against `scope`. `remove` (kill only): also
/// remove the cgroup tree once it is empty (runs below the managed root; a bound cgroup
/// belongs to whoever created it and stays).
pub fn act(scope: &Scope, dir: &Path, action: Action, remove: bool, timeout: Duration) -> Result<Outcome, RespondError> {
    scope.check(dir)?;
    let processes = procs(dir).map_err(io_err("listing processes of", dir))?.len();
    let start = Instant::now();
    match action {
        Action::Freeze => {
            write(dir, "cgroup.freeze", "1")?;
            wait_for(dir, "frozen", true, start + timeout, "freezing")?;
        }
        Action::Thaw => {
            write(dir, "cgroup.freeze", "0")?;
            wait_for(dir, "frozen", false, start + timeout, "thawing")?;
        }
        Action::Kill => {
            // cgroup.kill also takes processes forked during the kill, and frozen ones.
            write(dir, "cgroup.kill", "1")?;
            wait_for(dir, "populated", false, start + timeout, "killing")?;
        }
    }
    let latency = start.elapsed();
    let mut removed = false;
    if action == Action::Kill && remove {
        remove_tree(dir, start + timeout)?;
        removed = true;
    }
    Ok(Outcome { latency, processes, removed })
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), RespondError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io_err("writing", &path))
}

/// Waits until cgroup.events says `key` is `want`.
fn wait_for(dir: &Path, key: &str, want: bool, deadline: Instant, what: &'static str) -> Result<(), RespondError> {
    let events = dir.join("cgroup.events");
    let mut pause = Duration::from_micros(100);
    loop {
        let text = match std::fs::read_to_string(&events) {
            Ok(t) => t,
            // Emptied and removed already (the run's launcher cleans up when its command dies),
            // or thawed, ran to its end and removed: not populated / not frozen, as asked.
            Err(e) if cgroup::removed(&e) && !want && (key == "populated" || key == "frozen") => return Ok(()),
            Err(e) => return Err(io_err("reading", &events)(e)),
        };
        if event_flag(&text, key) == Some(want) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(RespondError::Timeout {
                what,
                path: dir.to_path_buf(),
                waited: TIMEOUT,
                events: text.split_whitespace().collect::<Vec<_>>().join(" "),
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// A `key 0|1` line of cgroup.events.
pub fn event_flag(events: &str, key: &str) -> Option<bool> {
    events.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim() == "1")
    })
}

/// Removes an emptied run cgroup tree; tolerates a concurrent removal (the run's launcher
/// cleans up too) and retries briefly while the kernel still calls it busy.
fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), RespondError> {
    loop {
        match cgroup::remove_tree(dir) {
            Ok(()) => return Ok(()),
            Err(e) if cgroup::removed(&e) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => return Err(RespondError::Io { call: "removing", path: dir.to_path_buf(), cause: e }),
        }
    }
}

/// The pids in `dir` and every cgroup below it.
pub fn procs(dir: &Path) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        match std::fs::read_to_string(d.join("cgroup.procs")) {
            Ok(t) => out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
            // A child cgroup removed while we walk.
            Err(e) if cgroup::removed(&e) && d != dir => continue,
            Err(e) => return Err(e),
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    Ok(out)
}

/// Whether the cgroup is frozen (cgroup.events `frozen 1`).
pub fn frozen(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|t| event_flag(&t, "frozen") == Some(true))
}

/// A run a responder may name.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub name: Option<String>,
    pub dir: PathBuf,
}

impl Candidate {
    fn describe(&self, mount: &Path) -> String {
        let rel = self.dir.strip_prefix(mount).unwrap_or(&self.dir).display().to_string();
        match &self.name {
            Some(n) => format!("{} (name {n}, cgroup /{rel})", self.id),
            None => format!("{} (cgroup /{rel})", self.id),
        }
    }
}

/// How `resolve` found a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// Names are known (the daemon): match them too.
    pub names: bool,
}

/// The run `spec` names: a run id, a run name (`names`), a cgroup path (absolute, or relative
/// to the cgroup2 mount; the run's cgroup or one below it) or a pid of a process in it.
/// Unknown or ambiguous: an error listing the candidates.
pub fn resolve<'a>(spec: &str, candidates: &'a [Candidate], mount: &Path, how: Lookup) -> Result<&'a Candidate, RespondError> {
    let spec = spec.trim();
    let list = |c: &mut dyn Iterator<Item = &Candidate>| {
        let v: Vec<String> = c.map(|c| format!("  {}", c.describe(mount))).collect();
        if v.is_empty() { "  (none)".to_string() } else { v.join("\n") }
    };
    if spec.is_empty() {
        return Err(RespondError::Resolve("no run given".into()));
    }
    let mut found: Vec<&Candidate> = Vec::new();
    fn push<'a>(c: &'a Candidate, found: &mut Vec<&'a Candidate>) {
        if !found.iter().any(|f| f.id == c.id) {
            found.push(c);
        }
    }
    if let Some(c) = candidates.iter().find(|c| c.id == spec) {
        return Ok(c);
    }
    let mut pid_note = None;
    if spec.bytes().all(|b| b.is_ascii_digit()) {
        match spec.parse::<u32>().ok().and_then(|p| pid_cgroup(p, mount)) {
            Some(dir) => match deepest(candidates, &dir) {
                Some(c) => push(c, &mut found),
                None => pid_note = Some(format!("process {spec} is in cgroup {}, which is in no run", dir.display())),
            },
            None => pid_note = Some(format!("there is no process {spec}")),
        }
    }
    if how.names {
        for c in candidates.iter().filter(|c| c.name.as_deref() == Some(spec)) {
            push(c, &mut found);
        }
    }
    // A path with `..` or `.` names nothing: no guessing which cgroup was meant.
    if spec.contains('/') && !spec.split('/').any(|c| c == ".." || c == ".") {
        let dir = cgroup_path(spec, mount);
        if let Some(c) = deepest(candidates, &dir) {
            push(c, &mut found);
        }
    }
    match found.len() {
        1 => Ok(found[0]),
        0 => {
            let what = if how.names { "a run id, name, cgroup path or pid" } else { "a run id, cgroup path or pid (names need the daemon)" };
            let note = pid_note.map(|n| format!(" ({n})")).unwrap_or_default();
            Err(RespondError::Resolve(format!(
                "no run matches {spec:?}{note}; give {what}. Runs:\n{}",
                list(&mut candidates.iter())
            )))
        }
        _ => Err(RespondError::Resolve(format!(
            "{spec:?} is ambiguous: it matches {} runs; give a run id:\n{}",
            found.len(),
            list(&mut found.into_iter())
        ))),
    }
}

/// The candidate whose cgroup is `dir` or its nearest ancestor.
fn deepest<'a>(candidates: &'a [Candidate], dir: &Path) -> Option<&'a Candidate> {
    candidates.iter().filter(|c| dir.starts_with(&c.dir)).max_by_key(|c| c.dir.components().count())
}

/// A cgroup path as a responder may give it: absolute under the mount, or relative to the
/// mount (with or without a leading /, as events show it).
pub fn cgroup_path(spec: &str, mount: &Path) -> PathBuf {
    let p = Path::new(spec);
    if p.starts_with(mount) {
        return p.components().collect();
    }
    mount.join(spec.trim_start_matches('/')).components().collect()
}

/// The absolute cgroup directory of process `pid`.
pub fn pid_cgroup(pid: u32, mount: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = crate::control::peer::parse_cgroup(&text)?;
    let rel = rel.trim_matches('/');
    Some(if rel.is_empty() { mount.to_path_buf() } else { mount.join(rel) })
}

/// The run cgroups directly below the managed root (what the CLI can see with no daemon:
/// their ids, not their names).
pub fn runs_below(root: &Path) -> io::Result<Vec<Candidate>> {
    let mut v: Vec<Candidate> = std::fs::read_dir(root)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| Candidate { id: e.file_name().to_string_lossy().into_owned(), name: None, dir: e.path() })
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(v)
}

/// A duration as `ps` shows an age: 42s, 3m12s, 2h05m, 3d04h.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Milliseconds with microsecond precision, as events and the CLI show latencies.
pub fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands() -> Vec<Candidate> {
        let c = |id: &str, name: Option<&str>, dir: &str| Candidate { id: id.into(), name: name.map(Into::into), dir: dir.into() };
        vec![
            c("r-000001", Some("alpha"), "/cg/ag/r-000001"),
            c("r-000002", Some("twin"), "/cg/ag/r-000002"),
            c("r-000003", Some("twin"), "/cg/ag/r-000003"),
            c("b-77", Some("/agents.slice/a.scope"), "/cg/agents.slice/a.scope"),
        ]
    }

    #[test]
    fn resolves_ids_names_and_paths() {
        let m = Path::new("/cg");
        let c = cands();
        let names = Lookup { names: true };
        assert_eq!(resolve("r-000002", &c, m, names).unwrap().id, "r-000002");
        assert_eq!(resolve("alpha", &c, m, names).unwrap().id, "r-000001");
        assert_eq!(resolve("/cg/ag/r-000003", &c, m, names).unwrap().id, "r-000003");
        assert_eq!(resolve("/ag/r-000003/", &c, m, names).unwrap().id, "r-000003");
        assert_eq!(resolve("ag/r-000001/sub/deeper", &c, m, names).unwrap().id, "r-000001");
        assert_eq!(resolve("/agents.slice/a.scope", &c, m, names).unwrap().id, "b-77");
        assert!(resolve("alpha", &c, m, Lookup { names: false }).unwrap_err().to_string().contains("names need the daemon"));
    }

    #[test]
    fn unknown_and_ambiguous_list_the_candidates() {
        let m = Path::new("/cg");
        let c = cands();
        let names = Lookup { names: true };
        let e = resolve("twin", &c, m, names).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("r-000002") && e.contains("r-000003") && !e.contains("r-000001"), "{e}");
        let e = resolve("nope", &c, m, names).unwrap_err().to_string();
        assert!(e.contains("no run matches") && e.contains("r-000001") && e.contains("b-77"), "{e}");
        assert!(resolve("/cg/ag/r-000001/../r-000002", &c, m, names).is_err());
        assert!(resolve("ag/r-000001/./x", &c, m, names).is_err());
        let e = resolve("/cg/ag", &c, m, names).unwrap_err().to_string();
        assert!(e.contains("no run matches"), "{e}");
        assert!(resolve("", &c, m, names).is_err());
        let e = resolve("4000000000", &c, m, names).unwrap_err().to_string();
        assert!(e.contains("no process"), "{e}");
    }

    #[test]
    fn scope_refuses_anything_outside_the_managed_root() {
        let s = Scope { mount: "/cg".into(), managed_root: "/cg/ag".into(), bound: vec!["/cg/b.scope".into()] };
        for bad in ["/cg", "/cg/ag", "/cg/other/r-1", "/cg/ag/../other", "/cg/agx/r-1", "relative/r-1"] {
            assert!(matches!(s.check(Path::new(bad)), Err(RespondError::Outside(..))), "{bad}");
        }
        // Inside the scope but not a cgroup here: a different error.
        assert!(matches!(s.check(Path::new("/cg/ag/r-1")), Err(RespondError::Io { .. })));
        assert!(matches!(s.check(Path::new("/cg/b.scope/x")), Err(RespondError::Io { .. })));
    }

    #[test]
    fn event_flags_and_ages() {
        assert_eq!(event_flag("populated 1\nfrozen 0\n", "frozen"), Some(false));
        assert_eq!(event_flag("populated 1\nfrozen 1\n", "frozen"), Some(true));
        assert_eq!(event_flag("populated 1\n", "frozen"), None);
        assert_eq!(age(42), "42s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(7500), "2h05m");
        assert_eq!(age(86400 * 3 + 3600 * 4), "3d04h");
        assert_eq!(millis(Duration::from_micros(3217)), 3.217);
    }
}
