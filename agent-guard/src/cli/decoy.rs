//! `agent-guard decoy plant POLICY`: creates the policy's `[decoys] files` that do not exist,
//! with fake content that looks like the secret its name promises and a marker unique to this
//! host and path (so a copy found elsewhere names where it came from). Never overwrites: a
//! path that exists, whatever it is, is left alone and listed as kept.
use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::Path,
};

use sha2::{Digest, Sha256};

/// Plants the decoys of the policy file `policy`; prints one line per decoy. Exit code: 0
/// when every decoy exists afterwards, 1 when one could not be planted, 2 for an invalid
/// policy.
pub fn plant(policy: &Path, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let checked = crate::policy::load_file(policy);
    let Some(p) = checked.policy else {
        for e in &checked.errors {
            let _ = writeln!(err, "{e}");
        }
        return 2;
    };
    if p.tripwires.decoy_files.is_empty() {
        let _ = writeln!(err, "{}: no [decoys] files to plant", policy.display());
        return 0;
    }
    let host = host_identity();
    let mut code = 0;
    for path in &p.tripwires.decoy_files {
        let path = Path::new(path);
        if path.symlink_metadata().is_ok() {
            let _ = writeln!(out, "kept     {} (exists; never overwritten)", path.display());
            continue;
        }
        let marker = marker(&host, path);
        match create(path, &fake_content(path, &marker)) {
            Ok(()) => {
                let _ = writeln!(out, "planted  {} (marker {marker})", path.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = writeln!(out, "kept     {} (exists; never overwritten)", path.display());
            }
            Err(e) => {
                let _ = writeln!(err, "{}: {e}", path.display());
                code = 1;
            }
        }
    }
    code
}

/// Creates `path` (never an existing one: O_EXCL) with mode 0600, and its missing parent
/// directories with mode 0700; each new file or directory is owned as the nearest existing
/// directory above it, so the agent that lives there can open its decoy (and trip it).
fn create(path: &Path, content: &str) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let mut existing = parent;
    while existing.symlink_metadata().is_err() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let owner = std::fs::metadata(existing)?;
    let mut missing: Vec<&Path> = parent.ancestors().take_while(|a| a.symlink_metadata().is_err()).collect();
    missing.reverse();
    for dir in missing {
        std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        std::os::unix::fs::lchown(dir, Some(owner.uid()), Some(owner.gid()))?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    std::os::unix::fs::fchown(&f, Some(owner.uid()), Some(owner.gid()))?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

/// What identifies this host: /etc/machine-id, else the host name.
fn host_identity() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default())
}

/// `agdecoy-` and 16 hex digits of SHA-256(host, path): the same decoy on the same host always
/// carries the same marker; no two hosts' or paths' markers are alike.
pub fn marker(host: &str, path: &Path) -> String {
    let d = Sha256::digest(format!("agent-guard decoy\0{host}\0{}", path.display()).as_bytes());
    format!("agdecoy-{}", d.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>())
}

/// Characters from the marker's digest, for fake keys that look like real ones.
fn chars(marker: &str, n: usize, alphabet: &[u8]) -> String {
    let mut out = String::new();
    let mut seed = Sha256::digest(marker.as_bytes()).to_vec();
    while out.len() < n {
        for b in &seed {
            if out.len() < n {
                out.push(alphabet[*b as usize % alphabet.len()] as char);
            }
        }
        seed = Sha256::digest(&seed).to_vec();
    }
    out
}

const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Content that looks like what the file's name promises, with the marker in it.
pub fn fake_content(path: &Path, marker: &str) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let in_aws = path.components().any(|c| c.as_os_str() == ".aws");
    if in_aws && name == "credentials" {
        return format!(
            "[default]\naws_access_key_id = AKIA{}\naws_secret_access_key = {}\n# {marker}\n",
            chars(marker, 16, UPPER),
            chars(&format!("{marker}s"), 40, B64)
        );
    }
    if name.starts_with("id_") && !name.ends_with(".pub") {
        let body = chars(marker, 280, B64);
        let lines: Vec<&str> = (0..body.len()).step_by(70).map(|i| &body[i..(i + 70).min(body.len())]).collect();
        return format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n", lines.join("\n"));
    }
    if name.starts_with(".env") {
        return format!(
            "DATABASE_URL=postgres://app:{}@db.internal:5432/app\nAPI_KEY=sk_live_{}\nSECRET_KEY_BASE={}\n# {marker}\n",
            chars(marker, 20, B64).replace(['+', '/'], "x"),
            chars(&format!("{marker}k"), 32, UPPER).to_lowercase(),
            marker
        );
    }
    if name == ".netrc" {
        return format!("machine api.internal.example\n  login deploy\n  password {}\n# {marker}\n", chars(marker, 24, B64));
    }
    format!("token = {}\n# {marker}\n", chars(marker, 40, B64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_differ_per_host_and_path_and_content_carries_them() {
        let (a, b) = (Path::new("/home/a/.aws/credentials"), Path::new("/w/.env.production"));
        assert_ne!(marker("h1", a), marker("h2", a));
        assert_ne!(marker("h1", a), marker("h1", b));
        assert_eq!(marker("h1", a), marker("h1", a));
        let m = marker("h1", a);
        let aws = fake_content(a, &m);
        assert!(aws.starts_with("[default]\naws_access_key_id = AKIA") && aws.contains(&m), "{aws}");
        assert!(fake_content(b, &m).contains("DATABASE_URL=") && fake_content(b, &m).contains(&m));
        assert!(fake_content(Path::new("/x/token"), &m).contains(&m));
    }

    #[test]
    fn plants_only_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("ag-decoy-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("real.env");
        std::fs::write(&real, "REAL=1\n").unwrap();
        let planted = dir.join("sub/.env.production");
        let policy = dir.join("p.toml");
        std::fs::write(&policy, format!("name = \"p\"\n[decoys]\nfiles = [{:?}, {:?}]\n", real.display().to_string(), planted.display().to_string())).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(plant(&policy, &mut out, &mut err), 0, "{}", String::from_utf8_lossy(&err));
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "REAL=1\n");
        let m = std::fs::metadata(&planted).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("kept") && out.contains("planted"), "{out}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
