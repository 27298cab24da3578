//! Carve-outs inside allowed trees, for the Landlock layer: a `deny` rule, or a longer `read`
//! rule inside a `write` tree, narrows what the policy allows below it. Landlock only grants,
//! and a grant covers everything beneath its directory, so a tree that holds a carve-out is
//! not granted whole: its entries are granted one by one, except the carve-out, and so on down
//! the path to it. For `write = ["/home/agent"]` with `deny = ["/home/agent/.ssh"]`:
//! every entry of /home/agent but `.ssh` gets the write grant, and /home/agent itself only
//! what every carve-out below it may have too (for a deny: listing it, `ReadDir`).
//!
//! The cost, said in the run's coverage and by `policy check`: the listing is taken when the
//! plan is made, so an entry created later directly in such a directory gets only that
//! directory's own rights: creating a file or directory there is refused (`EACCES`), which
//! is safe but may refuse what the policy allows. Listing a carved-out *directory* stays
//! allowed by Landlock (its parent lists) and is left to the eBPF layer. A directory with
//! more than [`ENTRIES_MAX`] entries (or that cannot be listed) is granted whole, as before,
//! and the carve-outs below it stay the eBPF layer's (a read is killed, after the fact).
use std::collections::{BTreeMap, BTreeSet};

use landlock::{AccessFs, BitFlags};

use crate::policy::Policy;

/// Most entries of one directory listed to grant them one by one.
pub const ENTRIES_MAX: usize = 512;
/// Most grants made by listing, for one plan.
pub const GRANTS_MAX: usize = 8192;

/// A path where the policy allows less than the tree around it.
#[derive(Debug, Clone)]
pub(super) struct Carve {
    pub path: String,
    /// Every right a grant from above may give at and below it.
    pub limit: BitFlags<AccessFs>,
    /// The rule that narrows it ("files.deny", "files.read").
    pub rule: &'static str,
}

/// The carve-outs of a policy that exist on this host, with the rights the policy allows
/// there (`read` is what a `read` rule grants).
pub(super) fn carve_outs(policy: &Policy, read: BitFlags<AccessFs>) -> Vec<Carve> {
    let mut out: BTreeMap<&str, Carve> = BTreeMap::new();
    for r in policy.files_read.iter().filter(|r| !policy.files_write.contains(r)) {
        out.insert(r, Carve { path: r.clone(), limit: read, rule: "files.read" });
    }
    for d in &policy.files_deny {
        out.insert(d, Carve { path: d.clone(), limit: BitFlags::empty(), rule: "files.deny" });
    }
    // A carve-out that does not exist has nothing to protect yet: the tree is granted whole
    // (and if it appears during the run, the eBPF layer still judges it).
    out.into_values().filter(|c| std::fs::symlink_metadata(&c.path).is_ok()).collect()
}

/// What splitting the grants around the carve-outs did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Split {
    /// Grants made entry by entry: opened without following a final symlink.
    pub exact: BTreeSet<String>,
    /// Carve-outs refused up front: "files.deny /home/agent/.ssh".
    pub refused: BTreeSet<String>,
    /// Directories granted entry by entry (new entries in them get no grant).
    pub entry_dirs: BTreeSet<String>,
    /// Carve-outs left to the eBPF layer ("files.deny /x/y"), and why.
    pub unexpressed: BTreeMap<String, String>,
}

/// One entry of a directory: its name and whether it is a directory or a symlink (not
/// followed).
pub(super) struct Entry {
    pub name: String,
    pub dir: bool,
    pub symlink: bool,
}

/// Lists `dir` without following symlinks in it, sorted by name.
pub(super) fn list(dir: &str) -> std::io::Result<Vec<Entry>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        v.push(Entry { name, dir: t.is_dir(), symlink: t.is_symlink() });
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

fn below(dir: &str, path: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path.len() > dir.len() + 1 && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Replaces each grant that covers a carve-out with more than it allows there by grants
/// along the path to it (see the module). `lister` lists a directory.
pub(super) fn split(
    grants: &mut BTreeMap<String, BitFlags<AccessFs>>,
    carves: &[Carve],
    lister: &mut dyn FnMut(&str) -> std::io::Result<Vec<Entry>>,
) -> Split {
    let mut s = Splitter { out: BTreeMap::new(), split: Split::default(), lister, made: 0 };
    let original = std::mem::take(grants);
    for (g, &rights) in &original {
        let inside: Vec<&Carve> = carves.iter().filter(|c| below(g, &c.path) && !(rights & !c.limit).is_empty()).collect();
        if inside.is_empty() {
            s.grant(g, rights, false);
        } else {
            s.expand(g, rights, &inside, false);
        }
    }
    *grants = s.out;
    s.split
}

struct Splitter<'a> {
    out: BTreeMap<String, BitFlags<AccessFs>>,
    split: Split,
    lister: &'a mut dyn FnMut(&str) -> std::io::Result<Vec<Entry>>,
    made: usize,
}

impl Splitter<'_> {
    fn grant(&mut self, p: &str, rights: BitFlags<AccessFs>, exact: bool) {
        if rights.is_empty() {
            return;
        }
        *self.out.entry(p.to_string()).or_insert_with(BitFlags::empty) |= rights;
        if exact {
            self.split.exact.insert(p.to_string());
        }
    }

    /// `dir` holds the `carves` (each narrower than `rights`) somewhere below it.
    fn expand(&mut self, dir: &str, rights: BitFlags<AccessFs>, carves: &[&Carve], exact: bool) {
        let entries = match (self.lister)(dir) {
            Ok(e) if e.len() > ENTRIES_MAX => Err(format!("{dir} has {} entries (at most {ENTRIES_MAX} are listed)", e.len())),
            Ok(e) if self.made + e.len() > GRANTS_MAX => Err(format!("more than {GRANTS_MAX} grants to list")),
            Ok(e) => Ok(e),
            Err(e) => Err(format!("{dir} cannot be listed ({e})")),
        };
        let entries = match entries {
            Ok(e) => e,
            Err(why) => {
                // Today's behaviour: the tree whole; the carve-outs stay the eBPF layer's.
                self.grant(dir, rights, exact);
                for c in carves {
                    self.split.unexpressed.insert(format!("{} {}", c.rule, c.path), why.clone());
                }
                return;
            }
        };
        self.made += entries.len();
        // The directory itself: what every carve-out below may have (its grant covers them),
        // and listing it.
        let common = carves.iter().fold(rights, |r, c| r & c.limit);
        self.grant(dir, common | (rights & AccessFs::ReadDir), exact);
        self.split.entry_dirs.insert(dir.to_string());
        for e in entries {
            // A symlink is not granted: what it points to is judged at its own path.
            if e.symlink {
                continue;
            }
            let p = join(dir, &e.name);
            let rights_here = match carves.iter().find(|c| c.path == p) {
                Some(c) => {
                    self.split.refused.insert(format!("{} {}", c.rule, c.path));
                    rights & c.limit
                }
                None => rights,
            };
            let deeper: Vec<&Carve> =
                carves.iter().copied().filter(|c| below(&p, &c.path) && !(rights_here & !c.limit).is_empty()).collect();
            if deeper.is_empty() || !e.dir {
                self.grant(&p, rights_here, true);
            } else {
                self.expand(&p, rights_here, &deeper, true);
            }
        }
    }
}

/// What `policy check` says about the carve-outs of `policy` on this host (see the module):
/// a note for each one the Landlock layer refuses up front, with its cost, and a warning for
/// each one it cannot (a read of it is then killed on the tracepoint backend, not refused).
pub fn review(policy: &Policy) -> Vec<crate::policy::HostNote> {
    use crate::policy::{HostNote, Mode, OnViolation};
    // Monitor mode refuses nothing; under kill or freeze the eBPF layer must see the reads.
    if policy.mode != Mode::Enforce || policy.on_violation != OnViolation::Deny {
        return Vec::new();
    }
    let trees: Vec<&String> = policy.files_read.iter().chain(&policy.files_write).collect();
    let inside = |d: &String| trees.iter().any(|t| below(t, d) && std::fs::symlink_metadata(t.as_str()).is_ok());
    let kills = "this deny will kill, not refuse, on the tracepoint backend (the lsm backend refuses it with EPERM)";
    let abi = super::host_abi();
    let mut out = Vec::new();
    if abi == 0 {
        for d in policy.files_deny.iter().filter(|d| inside(d)) {
            let message = format!("{kills}: this kernel has no Landlock");
            out.push(HostNote { list: "files.deny", value: d.clone(), message, note: false });
        }
        return out;
    }
    // What a run would get in enforce mode (the notes are about that, whatever the mode).
    let enforced = Policy { mode: crate::policy::Mode::Enforce, ..policy.clone() };
    let Some(p) = super::Plan::for_policy(&enforced) else { return out };
    for d in policy.files_deny.iter().filter(|d| inside(d)) {
        let key = format!("files.deny {d}");
        let (message, note) = if let Some(why) = p.split.unexpressed.get(&key) {
            (format!("{kills}: {why}, so the Landlock layer grants the tree around it whole"), false)
        } else if p.split.refused.contains(&key) {
            let dirs: Vec<&str> = p.split.entry_dirs.iter().filter(|e| below(e, d)).map(String::as_str).collect();
            let msg = format!(
                "refused up front (EACCES) by the Landlock layer of `agent-guard run`; the cost: {} {} granted entry by \
                 entry as listed when a run starts, so a file or directory created directly in {} during the run is \
                 refused (EACCES) although the policy allows it",
                dirs.join(", "),
                if dirs.len() == 1 { "is" } else { "are" },
                if dirs.len() == 1 { "it" } else { "them" },
            );
            (msg, true)
        } else if std::fs::symlink_metadata(d).is_err() {
            (format!("{kills} if it is created during a run: it does not exist on this host, so there is nothing to carve out"), false)
        } else {
            continue;
        };
        out.push(HostNote { list: "files.deny", value: d.clone(), message, note });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{host_abi, prepare, read_access, write_access, exec_access, HostPlan, Plan, Prepared};
    use super::*;
    use crate::policy;

    /// The layer of `policy` on a kernel with ABI `abi`, as `run` builds it from the daemon's plan.
    fn plan(policy: &Policy, abi: u32, loaders: &[String]) -> HostPlan {
        Plan::for_policy(policy).expect("an enforce-mode policy").on_host(abi, loaders)
    }

    /// What `run` prepares from the daemon's plan of `policy`.
    fn for_policy(policy: &Policy) -> Prepared {
        prepare(Plan::for_policy(policy).as_ref())
    }

    fn s(p: &Path) -> String {
        p.display().to_string()
    }

    /// home/{.ssh/id_rsa, .config/{gh/hosts.yml, other/x}, notes.txt, key -> .ssh/id_rsa},
    /// ws/{.env, src/a.py, docs/readme}, outside/secret.
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["home/.ssh", "home/.config/gh", "home/.config/other", "ws/src", "ws/docs", "outside"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for (f, text) in [
            ("home/.ssh/id_rsa", "PRIVATE KEY"),
            ("home/.config/gh/hosts.yml", "token"),
            ("home/.config/other/x", "x"),
            ("home/notes.txt", "notes"),
            ("ws/.env", "TOKEN=envsecret"),
            ("ws/src/a.py", "print(1)"),
            ("ws/docs/readme", "read me"),
            ("outside/secret", "TOPSECRET"),
        ] {
            std::fs::write(r.join(f), text).unwrap();
        }
        std::os::unix::fs::symlink(r.join("home/.ssh/id_rsa"), r.join("home/key")).unwrap();
        t
    }

    fn policy_for(r: &Path, extra_deny: &str) -> policy::Policy {
        let text = format!(
            "name = \"carve\"\n[files]\nwrite = [\"{r}/home\", \"{r}/ws\"]\nread = [\"{r}/ws/docs\"]\n\
             deny = [\"{r}/home/.ssh\", \"{r}/home/.config/gh\", \"{r}/ws/.env\", \"{r}/home/.gnupg\"{extra_deny}]\n\
             [exec]\nallow = [\"{r}/ws/\"]\n",
            r = r.display()
        );
        let c = policy::parse(&text, "carve.toml");
        c.policy.unwrap_or_else(|| panic!("{:?}", c.errors))
    }

    #[test]
    fn trees_holding_carve_outs_are_granted_around_them() {
        let t = tree();
        let r = t.path();
        let p = plan(&policy_for(r, ""), 7, &[]);
        let g = |rel: &str| p.grants.get(&s(&r.join(rel))).copied();
        // Write trees get every write right but device nodes (`[files] devices` grants those).
        let full = (write_access() | read_access()) & !(AccessFs::MakeChar | AccessFs::MakeBlock);
        let readdir: BitFlags<AccessFs> = AccessFs::ReadDir.into();
        // The tree roots keep only listing; their entries get the tree's rights, but not the
        // carve-outs, nor the symlink.
        assert_eq!(g("home"), Some(readdir));
        assert_eq!(g("home/notes.txt"), Some(full));
        assert_eq!(g("home/.ssh"), None);
        assert_eq!(g("home/key"), None);
        assert_eq!(g("home/.config"), Some(readdir));
        assert_eq!(g("home/.config/other"), Some(full));
        assert_eq!(g("home/.config/gh"), None);
        // The exec grant on ws/ is split too (it would give read on .env).
        assert_eq!(g("ws"), Some(readdir));
        assert_eq!(g("ws/src"), Some(full | exec_access()));
        assert_eq!(g("ws/.env"), None);
        // A read rule inside the write tree: read-only there.
        assert_eq!(g("ws/docs"), Some(read_access()));
        assert!(p.split.exact.contains(&s(&r.join("home/notes.txt"))));
        assert!(!p.split.exact.contains(&s(&r.join("home"))), "a policy path is opened as before");
        assert!(p.split.unexpressed.is_empty(), "{:?}", p.split);
        let notes = p.coverage.carve_outs.join("\n");
        for c in ["files.deny {r}/home/.ssh", "files.deny {r}/ws/.env", "files.read {r}/ws/docs", "cost: {r}/home, {r}/home/.config"] {
            assert!(notes.contains(&c.replace("{r}", &s(r))), "{c}: {notes}");
        }
        // .gnupg does not exist: nothing to carve.
        assert!(!notes.contains(".gnupg"), "{notes}");
        assert!(p.coverage.ebpf_only.is_empty(), "{:?}", p.coverage.ebpf_only);
    }

    #[test]
    fn a_directory_too_large_to_list_is_granted_whole_and_said() {
        let t = tree();
        let r = t.path();
        let big = r.join("home/big");
        std::fs::create_dir(&big).unwrap();
        for i in 0..=ENTRIES_MAX {
            std::fs::write(big.join(format!("f{i}")), "").unwrap();
        }
        std::fs::write(big.join("token"), "T").unwrap();
        let p = plan(&policy_for(r, &format!(", \"{}/token\"", big.display())), 7, &[]);
        assert_eq!(p.grants.get(&s(&big)), Some(&((write_access() | read_access()) & !(AccessFs::MakeChar | AccessFs::MakeBlock))));
        let key = format!("files.deny {}/token", big.display());
        assert!(p.split.unexpressed.get(&key).is_some_and(|w| w.contains("entries")), "{:?}", p.split);
        assert!(p.coverage.ebpf_only.iter().any(|n| n.contains(&key) && n.contains("kills")), "{:?}", p.coverage);
        // The other carve-outs are still refused up front.
        assert_eq!(p.grants.get(&s(&r.join("home/.ssh"))), None);
        assert!(!p.coverage.carve_outs.join(" ").contains(&key), "{:?}", p.coverage);
    }

    fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
        r.unwrap_err().raw_os_error().unwrap()
    }

    #[test]
    fn carve_outs_are_refused_and_links_and_renames_cannot_give_them_an_allowed_name() {
        if host_abi() < 3 {
            eprintln!("skip: Landlock ABI {} (refer and truncate need 3)", host_abi());
            return;
        }
        let t = tree();
        let r = t.path().to_path_buf();
        let prepared = for_policy(&policy_for(&r, ""));
        let layer = prepared.layer.expect("a layer");
        std::thread::spawn(move || {
            layer.apply().unwrap();
            let j = |rel: &str| r.join(rel);
            // Carve-outs: EACCES, and the thread goes on.
            assert_eq!(errno(std::fs::read(j("home/.ssh/id_rsa"))), libc::EACCES);
            assert_eq!(errno(std::fs::read(j("home/key"))), libc::EACCES, "through a symlink");
            assert_eq!(errno(std::fs::read(j("ws/.env"))), libc::EACCES);
            assert_eq!(errno(std::fs::read(j("home/.config/gh/hosts.yml"))), libc::EACCES);
            assert_eq!(errno(std::fs::write(j("ws/docs/readme"), "x")), libc::EACCES, "read-only inside write");
            // Everything else the policy allows.
            assert_eq!(std::fs::read_to_string(j("home/notes.txt")).unwrap(), "notes");
            assert_eq!(std::fs::read_to_string(j("ws/docs/readme")).unwrap(), "read me");
            std::fs::write(j("ws/src/new.py"), "x").unwrap();
            std::fs::write(j("home/.config/other/y"), "y").unwrap();
            assert!(std::fs::read_dir(j("home")).unwrap().count() >= 4);
            assert!(std::fs::read_dir(j("ws")).is_ok());
            // The cost: a new entry directly in a directory on the way to a carve-out.
            assert_eq!(errno(std::fs::write(j("ws/new.txt"), "x")), libc::EACCES);
            assert_eq!(errno(std::fs::create_dir(j("home/.cache"))), libc::EACCES);
            // Listing a carved-out directory is left to the eBPF layer (its parent lists).
            assert!(std::fs::read_dir(j("home/.ssh")).is_ok());
            // Hard links inside a write tree work (git's object store), across its entries too.
            std::fs::hard_link(j("ws/src/a.py"), j("ws/src/b.py")).unwrap();
            std::fs::hard_link(j("ws/src/a.py"), j("home/.config/other/a.py")).unwrap();
            std::fs::rename(j("ws/src/new.py"), j("ws/src/newer.py")).unwrap();
            // A link or rename that would give a denied or outside file an allowed name.
            let refused = [libc::EXDEV, libc::EACCES];
            for (from, to) in [
                ("ws/.env", "ws/src/env"),
                ("home/.ssh/id_rsa", "home/.config/other/id"),
                ("outside/secret", "ws/src/secret"),
                ("ws/docs/readme", "ws/src/readme"),
            ] {
                let e = errno(std::fs::hard_link(j(from), j(to)));
                assert!(refused.contains(&e), "link {from} {to}: {e}");
                let e = errno(std::fs::rename(j(from), j(to)));
                assert!(refused.contains(&e), "rename {from} {to}: {e}");
                assert!(!j(to).exists());
            }
            // Renaming a carve-out within its directory needs rights there that it lacks.
            assert!(refused.contains(&errno(std::fs::rename(j("ws/.env"), j("ws/env")))));
        })
        .join()
        .unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("ws/.env")).unwrap(), "TOKEN=envsecret");
        assert_eq!(std::fs::read_to_string(t.path().join("ws/src/b.py")).unwrap(), "print(1)");
    }
}
