//! Rule paths: validation, normalisation and prefix matching on component boundaries.
use agent_guard_common::{PATH_DEPTH_MAX, PATH_MAX};

/// A validation problem: message and optional hint.
pub(super) type Problem = (String, Option<String>);

/// Longest path component the kernel has (NAME_MAX).
const NAME_MAX: usize = 255;

/// The non-empty components of an absolute path ("/" has none).
pub(super) fn components(p: &str) -> impl Iterator<Item = &str> + '_ {
    p.split('/').filter(|c| !c.is_empty())
}

/// True when `rule` is `path` or one of its ancestor directories ("/usr" covers "/usr" and
/// "/usr/bin/x", never "/usrx"; "/" covers everything).
pub(super) fn covers(rule: &str, path: &str) -> bool {
    let mut p = components(path);
    components(rule).all(|rc| p.next() == Some(rc))
}

/// True when `dir` is a proper ancestor of `path`.
pub(super) fn strictly_below(dir: &str, path: &str) -> bool {
    covers(dir, path) && components(path).count() > components(dir).count()
}

/// Number of components of a normalised path.
pub(super) fn depth(p: &str) -> usize {
    components(p).count()
}

/// "/a/./b//../c" -> "/a/c", lexically (hints, and the Landlock layer's attribution of a
/// refused open to the policy).
pub(crate) fn lexical(raw: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

fn with_slash(p: &str, dir: bool) -> String {
    if dir && p != "/" {
        format!("{p}/")
    } else {
        p.to_string()
    }
}

/// Validates a rule path. Returns the normalised path without a trailing slash ("/" for the
/// root) and whether the text ended with a slash (a directory rule in exec.allow).
/// `what` names the list kind in hints ("file rules", "exec rules").
pub(super) fn normalise_rule(raw: &str, what: &str) -> Result<(String, bool), Problem> {
    if raw.contains('\0') {
        return Err((format!("path {raw:?} contains a NUL byte"), None));
    }
    if raw.is_empty() {
        return Err(("empty path".into(), Some(format!("{what} are absolute paths, e.g. \"/usr\""))));
    }
    let trailing = raw.ends_with('/');
    if !raw.starts_with('/') {
        let fixed = with_slash(&lexical(&format!("/{raw}")), trailing);
        return Err((
            format!("relative path {raw:?}"),
            Some(format!("{what} are absolute paths, e.g. {fixed:?}")),
        ));
    }
    if raw == "/" {
        return Ok(("/".into(), true));
    }
    let body = &raw[1..];
    let body = body.strip_suffix('/').unwrap_or(body);
    let comps: Vec<&str> = body.split('/').collect();
    let fixed = with_slash(&lexical(raw), trailing);
    if comps.iter().any(|c| c.is_empty()) {
        return Err((
            format!("path {raw:?} has an empty component (\"//\")"),
            Some(format!("write the normalised path {fixed:?}")),
        ));
    }
    if let Some(c) = comps.iter().find(|c| **c == "." || **c == "..") {
        return Err((
            format!("path {raw:?} has a {c:?} component; rules match the path the kernel resolved"),
            Some(format!("write the normalised path, e.g. {fixed:?}")),
        ));
    }
    if let Some(c) = comps.iter().find(|c| c.len() > NAME_MAX) {
        return Err((
            format!("path component of {} bytes is longer than {NAME_MAX} (NAME_MAX)", c.len()),
            None,
        ));
    }
    if comps.len() > PATH_DEPTH_MAX as usize {
        return Err((
            format!(
                "path has {} components; the kernel matches at most {PATH_DEPTH_MAX}",
                comps.len()
            ),
            None,
        ));
    }
    let normal = format!("/{body}");
    if normal.len() > PATH_MAX - 1 {
        return Err((
            format!("path is {} bytes long; the kernel matches at most {}", normal.len(), PATH_MAX - 1),
            None,
        ));
    }
    Ok((normal, trailing))
}

/// Validates a bind.cgroups glob (relative to the cgroup2 mount).
pub(super) fn check_cgroup_glob(raw: &str) -> Result<globset::Glob, Problem> {
    let example = Some("cgroup globs are relative to the cgroup2 mount, e.g. \"agents.slice/*.scope\"".into());
    if raw.is_empty() {
        return Err(("empty cgroup glob".into(), example));
    }
    if raw.contains('\0') {
        return Err((format!("cgroup glob {raw:?} contains a NUL byte"), None));
    }
    if raw.starts_with('/') {
        let rel = raw.trim_start_matches('/');
        return Err((
            format!("absolute cgroup glob {raw:?}"),
            Some(format!("cgroup globs are relative to the cgroup2 mount, e.g. {rel:?}")),
        ));
    }
    let comps: Vec<&str> = raw.split('/').collect();
    if comps.contains(&"..") {
        return Err((format!("cgroup glob {raw:?} has a \"..\" component"), example));
    }
    if comps.iter().any(|c| c.is_empty() || *c == ".") {
        let fixed: Vec<&str> = comps.iter().copied().filter(|c| !c.is_empty() && *c != ".").collect();
        return Err((
            format!("cgroup glob {raw:?} is not normalised"),
            Some(format!("write {:?}", fixed.join("/"))),
        ));
    }
    build_glob(raw).map_err(|e| {
        (
            format!("invalid glob {raw:?}: {}", e.kind()),
            Some("globs use *, ?, [abc] and {a,b}; * and ? never match '/'".into()),
        )
    })
}

pub(super) fn build_glob(raw: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(raw).literal_separator(true).build()
}
