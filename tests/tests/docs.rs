//! The documentation stays true: every relative link of README.md and docs/*.md resolves (the
//! file, and the heading an #anchor names), every repository path README.md mentions exists,
//! and deploy/config.toml documents exactly the keys agent-guard/src/config.rs parses (which
//! parses that file: see its unit tests). No privileges needed.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// README.md and docs/*.md.
fn documents() -> Vec<PathBuf> {
    let mut v = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "no docs/*.md");
    v.extend(docs);
    v
}

/// The text outside fenced code blocks, with inline code spans blanked out, line by line.
fn prose(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut clean = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            }
            clean.push(if in_code || c == '`' { ' ' } else { c });
        }
        out.push((i + 1, clean));
    }
    out
}

/// The targets of inline links `[text](target)` (and images) on a line.
fn link_targets(line: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        v.push(after[..end].trim().to_string());
        rest = &after[end..];
    }
    v
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (with GitHub's -1, -2 for repeats).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = anchor(line.trim_start_matches('#'));
        let mut a = base.clone();
        let mut n = 0;
        while seen.contains(&a) {
            n += 1;
            a = format!("{base}-{n}");
        }
        seen.insert(a);
    }
    seen
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    assert_eq!(anchor(" Fail closed: enforcement survives the daemon"), "fail-closed-enforcement-survives-the-daemon");
    assert_eq!(anchor(" What the process observes (lsm backend: BPF LSM active)"), "what-the-process-observes-lsm-backend-bpf-lsm-active");
    assert_eq!(anchor(" The control socket: who may do what"), "the-control-socket-who-may-do-what");
    assert!(anchors("# A\n## A\n```\n# not a heading\n```\n").into_iter().eq(["a", "a-1"]));
    assert_eq!(link_targets("see [x](a.md#b) and ![i](img.png), [y](#z)"), ["a.md#b", "img.png", "#z"]);
}

#[test]
fn every_relative_link_resolves_to_a_file_and_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = read(&doc);
        for (line, clean) in prose(&text) {
            for target in link_targets(&clean) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, frag) = match target.split_once('#') {
                    Some((p, f)) => (p, Some(f)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() { doc.clone() } else { doc.parent().unwrap().join(path) };
                let at = format!("{}:{line}: {target}", doc.strip_prefix(repo()).unwrap().display());
                if !file.exists() {
                    broken.push(format!("{at}: no file {}", file.display()));
                    continue;
                }
                if let Some(frag) = frag {
                    if file.extension().is_none_or(|x| x != "md") {
                        broken.push(format!("{at}: an anchor into a file that is not markdown"));
                    } else if !anchors(&read(&file)).contains(frag) {
                        broken.push(format!("{at}: no heading #{frag} in {}", file.display()));
                    }
                }
            }
        }
    }
    assert!(checked > 10, "only {checked} relative links found: is the link parser broken?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Paths into the repository that README.md names (in prose, code spans or code blocks):
/// `agent-guard/src/...`, `tests/...`, `deploy/...`, `docs/...`, `xtask/...`.
#[test]
fn every_repository_path_the_readme_names_exists() {
    let text = read(&repo().join("README.md"));
    let prefixes = ["agent-guard/src/", "agent-guard-ebpf/", "agent-guard-common/", "tests/", "deploy/", "docs/", "xtask/", "shared/"];
    let mut missing = BTreeSet::new();
    let mut checked = 0;
    for (n, line) in text.lines().enumerate() {
        for (i, _) in line.char_indices() {
            let rest = &line[i..];
            // A path starts at a word boundary.
            if i > 0 && line[..i].chars().next_back().is_some_and(|c| c.is_alphanumeric() || "-_/.~".contains(c)) {
                continue;
            }
            if !prefixes.iter().any(|p| rest.starts_with(p)) {
                continue;
            }
            let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || "-_/.".contains(*c)).collect();
            let path = path.trim_end_matches('.');
            // Placeholders (`target/vm/<kernel>.log`) and globs are not paths.
            if rest[path.len()..].starts_with(['<', '*', '{']) {
                continue;
            }
            checked += 1;
            if !repo().join(path).exists() {
                missing.insert(format!("README.md:{}: {path}", n + 1));
            }
        }
    }
    assert!(checked > 10, "only {checked} paths found");
    assert!(missing.is_empty(), "README.md names paths that are not in the repository:\n{}", missing.into_iter().collect::<Vec<_>>().join("\n"));
}

/// Keys of deploy/config.toml: `key = value` lines and commented-out examples `# key = value`,
/// each with the line number and whether a comment line comes right before it.
fn shipped_keys() -> Vec<(String, usize, bool)> {
    let text = read(&repo().join("deploy/config.toml"));
    let lines: Vec<&str> = text.lines().collect();
    let key_of = |l: &str| -> Option<String> {
        let l = l.strip_prefix("# ").unwrap_or(l);
        let (k, _) = l.split_once(" = ")?;
        (!k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then(|| k.to_string())
    };
    let mut v = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(k) = key_of(l) {
            let documented = i > 0 && lines[i - 1].starts_with('#') && key_of(lines[i - 1]).is_none();
            v.push((k, i + 1, documented));
        }
    }
    v
}

/// The fields of `struct Config` in agent-guard/src/config.rs, without `#[serde(skip)]` ones.
fn parsed_keys() -> BTreeSet<String> {
    let text = read(&repo().join("agent-guard/src/config.rs"));
    let start = text.find("pub struct Config {").expect("struct Config in config.rs");
    let body = &text[start..];
    let body = &body[..body.find("\n}").expect("end of struct Config")];
    let mut keys = BTreeSet::new();
    let mut skip = false;
    for line in body.lines().skip(1) {
        let line = line.trim();
        if line.starts_with("#[serde(skip") {
            skip = true;
        } else if let Some(rest) = line.strip_prefix("pub ") {
            let name = rest.split(':').next().unwrap().trim().to_string();
            if !std::mem::take(&mut skip) {
                keys.insert(name);
            }
        }
    }
    keys
}

#[test]
fn deploy_config_documents_exactly_the_keys_config_rs_parses() {
    let shipped = shipped_keys();
    let undocumented: Vec<_> = shipped.iter().filter(|(_, _, d)| !d).map(|(k, n, _)| format!("line {n}: {k}")).collect();
    assert!(undocumented.is_empty(), "deploy/config.toml: keys without a comment before them: {undocumented:?}");
    let names: BTreeSet<String> = shipped.iter().map(|(k, _, _)| k.clone()).collect();
    assert_eq!(names.len(), shipped.len(), "deploy/config.toml names a key twice: {shipped:?}");
    let parsed = parsed_keys();
    assert!(parsed.len() > 10, "struct Config parsed badly: {parsed:?}");
    let only_shipped: Vec<_> = names.difference(&parsed).collect();
    let only_parsed: Vec<_> = parsed.difference(&names).collect();
    assert!(only_shipped.is_empty(), "deploy/config.toml documents keys config.rs does not parse: {only_shipped:?}");
    assert!(only_parsed.is_empty(), "config.rs parses keys deploy/config.toml does not document: {only_parsed:?}");
    // docs/CONTRACT.md's table lists them too.
    let contract = read(&repo().join("docs/CONTRACT.md"));
    let missing: Vec<_> = parsed.iter().filter(|k| !contract.contains(&format!("| `{k}` |"))).collect();
    assert!(missing.is_empty(), "docs/CONTRACT.md's configuration table lacks {missing:?}");
}
