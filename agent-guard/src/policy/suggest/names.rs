//! The names `policy suggest` treats apart: likely secrets, temporary and pid-numbered names,
//! and the directories it never folds into.
use super::super::paths;
use super::NEVER_WHOLE;

/// Why `path` looks like a secret (`.env`, `*.pem`, `id_*`, `.aws/credentials`, `.netrc`,
/// `.git-credentials`, token files: `token`, `token.json`, `gh_token`, `api-token.txt`), or None.
pub fn secret(path: &str) -> Option<&'static str> {
    let base = path.rsplit('/').next().unwrap_or(path);
    let lower = base.to_ascii_lowercase();
    let (stem, ext) = lower.split_once('.').filter(|(s, _)| !s.is_empty()).unwrap_or((lower.as_str(), ""));
    // A token *file* holds data; `token.py` and its bytecode are Python's tokenizer.
    let data = matches!(ext, "" | "json" | "txt" | "yaml" | "yml" | "toml" | "conf" | "cfg" | "ini");
    if lower == ".env" || lower.starts_with(".env.") {
        Some(".env file")
    } else if lower.ends_with(".pem") && !path.contains("/certs/") && !path.starts_with("/usr/share/ca-certificates/") {
        // Public CA certificates (/etc/ssl/certs) are no secret.
        Some("private key (*.pem)")
    } else if lower.starts_with("id_") && !lower.ends_with(".pub") {
        Some("SSH private key (id_*)")
    } else if path.ends_with("/.aws/credentials") {
        Some("AWS credentials")
    } else if lower == ".netrc" || lower == ".git-credentials" {
        Some("password file")
    } else if lower == ".token" || (data && (stem == "token" || stem.ends_with("_token") || stem.ends_with("-token"))) {
        Some("token file")
    } else {
        None
    }
}

/// Words in an argument that say the next value (or the rest of this one) is a credential.
const SECRET_WORDS: &[&str] = &["token", "passw", "secret", "authorization", "bearer", "apikey", "api-key", "api_key", "credential"];

/// `argv` as one line for a comment, with credentials left out: `--token=X` and
/// `Authorization: Bearer X` keep their name, a value after `--password` or `-H
/// 'Authorization...'` is `<redacted>`.
pub fn redact(argv: &[&str]) -> String {
    let mut out = Vec::with_capacity(argv.len());
    let mut next_is_secret = false;
    for a in argv {
        let lower = a.to_ascii_lowercase();
        let names_one = SECRET_WORDS.iter().any(|w| lower.contains(w));
        if next_is_secret {
            out.push("<redacted>".to_string());
            next_is_secret = false;
        } else if names_one {
            match a.find(['=', ':']) {
                Some(i) => out.push(format!("{}<redacted>", &a[..=i])),
                None if a.starts_with('-') => {
                    out.push(a.to_string());
                    next_is_secret = true;
                }
                None => out.push("<redacted>".to_string()),
            }
        } else {
            out.push(a.to_string());
        }
    }
    out.join(" ")
}

/// True for a directory folding may make one rule of.
pub(super) fn foldable(dir: &str) -> bool {
    !NEVER_WHOLE.contains(&dir) && !home(dir)
}

/// `/root` and `/home/NAME`.
fn home(dir: &str) -> bool {
    dir == "/root" || (dir.starts_with("/home/") && paths::depth(dir) == 2)
}

/// Looks random: 6 or more letters and digits, mixing them (or cases) at least 3 times.
fn randomish(s: &str) -> bool {
    if s.len() < 6 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let class = |b: u8| if b.is_ascii_digit() { 0 } else if b.is_ascii_uppercase() { 1 } else { 2 };
    let b = s.as_bytes();
    let changes = b.windows(2).filter(|w| class(w[0]) != class(w[1])).count();
    changes >= 3 && b.iter().any(u8::is_ascii_digit) || (changes >= 4 && b.iter().any(u8::is_ascii_uppercase))
}

/// A temporary or pid-numbered name: `1234`, `tmp.AbC123`, `tmpk2x_9q0a`, `sedAb12Cd`,
/// `name-a1B2c3`, `name.12345`.
pub fn temporary(component: &str) -> bool {
    let c = component;
    if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let lower = c.to_ascii_lowercase();
    for prefix in ["tmp", "temp"] {
        if let Some(rest) = lower.strip_prefix(prefix) {
            let orig = &c[prefix.len()..];
            let rest_trim = rest.trim_start_matches(['.', '_', '-']);
            let orig_trim = orig.trim_start_matches(['.', '_', '-']);
            if rest_trim.len() >= 4
                && rest_trim.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && (rest_trim.bytes().any(|b| b.is_ascii_digit()) || orig_trim.bytes().any(|b| b.is_ascii_uppercase()) || rest_trim.len() == 8)
            {
                return true;
            }
        }
    }
    if let Some(rest) = c.strip_prefix("sed") {
        if rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return true;
        }
    }
    match c.rfind(['.', '-', '_']) {
        Some(i) if i > 0 => {
            let tail = &c[i + 1..];
            randomish(tail) || (tail.len() >= 3 && tail.bytes().all(|b| b.is_ascii_digit()) && c.as_bytes()[i] != b'.')
        }
        _ => false,
    }
}

/// `path` with its first temporary component and what follows replaced by their directory.
pub(super) fn untemp(path: &str) -> String {
    let mut out = String::new();
    for c in paths::components(path) {
        if temporary(c) {
            break;
        }
        out.push('/');
        out.push_str(c);
    }
    if out.is_empty() {
        "/".into()
    } else {
        out
    }
}

pub(super) fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}
