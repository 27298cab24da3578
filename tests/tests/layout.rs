//! The source layout of the two program crates (no privileges): no file of agent-guard/src is
//! longer than 700 lines, and the `crate::` paths between the modules of agent-guard/src, and
//! of agent-guard-ebpf/src, form no cycle.
//!
//! Each file is a module (`a/b.rs` and `a/b/mod.rs` are `a::b`; lib.rs and main.rs the root).
//! A `crate::x::y::...` path a module mentions outside comments, literals and `#[cfg(test)]`
//! code is an edge to the longest module that prefixes it (each item of a grouped
//! `use crate::{a::b, c}` is a path); edges to the module itself and to its parents do not
//! count. Files of `#[cfg(test)] mod x;` modules are left out.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::{Path, PathBuf},
};

const MAX_LINES: usize = 700;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The .rs files under `dir`, sorted.
fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `a/b.rs`, `a/b/mod.rs` -> `a::b`; `lib.rs`, `main.rs` -> `` (the crate root).
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let file = parts.pop().unwrap();
    let stem = file.trim_end_matches(".rs");
    if !(stem == "mod" || (parts.is_empty() && (stem == "lib" || stem == "main"))) {
        parts.push(stem.to_string());
    }
    parts.join("::")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The source with comments and string and char literals blanked (newlines kept, so lines
/// keep their numbers).
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied().unwrap_or('\0');
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if (c[i] == 'r' || (c[i] == 'b' && at(i + 1) == 'r'))
            && (i == 0 || !is_ident(c[i - 1]))
            && {
                let mut k = i + if c[i] == 'b' { 2 } else { 1 };
                while at(k) == '#' {
                    k += 1;
                }
                at(k) == '"'
            }
        {
            // A raw string: r"...", r#"..."#, br"...".
            let start = i;
            i += if c[i] == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while c[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#')) {
                i += 1;
            }
            i = (i + 1 + hashes).min(c.len());
            for &ch in &c[start..i] {
                blank(&mut out, ch);
            }
        } else if c[i] == '"' {
            blank(&mut out, c[i]);
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            if i < c.len() {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char literal ('x', '\n', '\u{1F600}'), not a lifetime.
            let start = i;
            i += if at(i + 1) == '\\' { 3 } else { 2 };
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i = (i + 1).min(c.len());
            for &ch in &c[start..i] {
                blank(&mut out, ch);
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Blanks the items under `#[cfg(test)]` (a whole file under `#![cfg(test)]`); also returns
/// the names of the `mod NAME;` declared under it (test-only files).
fn strip_cfg_test(code: &str) -> (String, Vec<String>) {
    if code.contains("#![cfg(test)]") {
        return (code.chars().map(|ch| if ch == '\n' { '\n' } else { ' ' }).collect(), vec![]);
    }
    let c: Vec<char> = code.chars().collect();
    let attr: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut cut = vec![false; c.len()];
    let mut test_mods = Vec::new();
    let mut i = 0;
    while i + attr.len() <= c.len() {
        if c[i..i + attr.len()] != attr[..] {
            i += 1;
            continue;
        }
        let start = i;
        i += attr.len();
        // Further attributes, then the item: up to its `;` or its closing brace.
        let item_start = i;
        let mut depth = 0i32;
        let mut opened = false;
        while i < c.len() {
            match c[i] {
                '(' | '[' | '{' => {
                    if c[i] == '{' && depth == 0 {
                        opened = true;
                    }
                    depth += 1;
                }
                ')' | ']' | '}' => {
                    depth -= 1;
                    if depth == 0 && c[i] == '}' && opened {
                        i += 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    i += 1;
                    let item: String = c[item_start..i].iter().collect();
                    let words: Vec<&str> = item.split(|ch: char| !is_ident(ch)).filter(|w| !w.is_empty()).collect();
                    if let Some(p) = words.iter().position(|w| *w == "mod") {
                        if let Some(name) = words.get(p + 1) {
                            test_mods.push(name.to_string());
                        }
                    }
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        for flag in &mut cut[start..i.min(c.len())] {
            *flag = true;
        }
    }
    let out = c.iter().zip(&cut).map(|(&ch, &x)| if x && ch != '\n' { ' ' } else { ch }).collect();
    (out, test_mods)
}

/// Every `crate::...` path in `code` (segments after `crate`), with its line; a grouped
/// `crate::{a::b, c::{d, e}}` gives one path per item.
fn crate_paths(code: &str) -> Vec<(Vec<String>, usize)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= c.len() {
        let word = c[i..i + 5].iter().collect::<String>() == "crate";
        let before_ok = i == 0 || !(is_ident(c[i - 1]) || c[i - 1] == '$');
        let after_ok = c.get(i + 5).is_none_or(|&ch| !is_ident(ch));
        if !(word && before_ok && after_ok) {
            i += 1;
            continue;
        }
        let line = c[..i].iter().filter(|&&ch| ch == '\n').count() + 1;
        let mut k = skip_ws(&c, i + 5);
        if c.get(k) == Some(&':') && c.get(k + 1) == Some(&':') {
            k += 2;
            let mut paths = Vec::new();
            parse_tree(&c, k, &mut vec![], &mut paths);
            out.extend(paths.into_iter().map(|p| (p, line)));
        }
        i += 5;
    }
    out
}

fn skip_ws(c: &[char], mut k: usize) -> usize {
    while c.get(k).is_some_and(|ch| ch.is_whitespace()) {
        k += 1;
    }
    k
}

/// Parses a use tree (or a plain path) at `k` below `prefix`; returns where it ends.
fn parse_tree(c: &[char], k: usize, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut k = skip_ws(c, k);
    match c.get(k) {
        Some('{') => {
            k += 1;
            loop {
                k = skip_ws(c, k);
                match c.get(k) {
                    None => return k,
                    Some('}') => return k + 1,
                    Some(',') => k += 1,
                    _ => {
                        let before = k;
                        k = parse_tree(c, k, &mut prefix.clone(), out);
                        // Whatever else (`as x`): on to the next item.
                        while c.get(k).is_some_and(|&ch| ch != ',' && ch != '}') {
                            k += 1;
                        }
                        if k == before {
                            k += 1;
                        }
                    }
                }
            }
        }
        Some('*') => {
            out.push(prefix.clone());
            k + 1
        }
        Some(&ch) if is_ident(ch) => {
            let start = k;
            while c.get(k).is_some_and(|&ch| is_ident(ch)) {
                k += 1;
            }
            let ident: String = c[start..k].iter().collect();
            if ident != "self" {
                prefix.push(ident);
            }
            let after = skip_ws(c, k);
            if c.get(after) == Some(&':') && c.get(after + 1) == Some(&':') {
                let next = skip_ws(c, after + 2);
                if c.get(next).is_some_and(|&ch| ch == '{' || ch == '*' || is_ident(ch)) {
                    return parse_tree(c, next, prefix, out);
                }
            }
            out.push(prefix.clone());
            k
        }
        _ => {
            out.push(prefix.clone());
            k
        }
    }
}

/// One crate's module graph: module -> module it mentions -> (file:line, the path).
type Graph = BTreeMap<String, BTreeMap<String, (String, String)>>;

fn module_graph(src: &Path) -> Graph {
    // (module, file, code); lib.rs and main.rs are both the root.
    let mut files = Vec::new();
    let mut test_only = BTreeSet::new();
    for f in rs_files(src) {
        let rel = f.strip_prefix(src).unwrap().to_path_buf();
        let m = module_of(&rel);
        let (code, test_mods) = strip_cfg_test(&code_only(&std::fs::read_to_string(&f).unwrap()));
        for t in test_mods {
            test_only.insert(if m.is_empty() { t } else { format!("{m}::{t}") });
        }
        files.push((m, rel, code));
    }
    let is_test = |m: &str| test_only.iter().any(|t| m == t || m.starts_with(&format!("{t}::")));
    let modules: BTreeSet<String> = files.iter().map(|(m, _, _)| m.clone()).filter(|m| !is_test(m)).collect();
    let mut graph = Graph::new();
    for (m, rel, code) in files.iter().filter(|(m, _, _)| modules.contains(m)) {
        let edges = graph.entry(m.clone()).or_default();
        for (path, line) in crate_paths(code) {
            let Some(target) = (1..=path.len()).rev().map(|k| path[..k].join("::")).find(|p| modules.contains(p)) else {
                continue;
            };
            if target == *m || m.starts_with(&format!("{target}::")) {
                continue;
            }
            edges.entry(target).or_insert_with(|| (format!("{}:{line}", rel.display()), format!("crate::{}", path.join("::"))));
        }
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on: BTreeSet::new(), out: vec![] };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// One cycle through the component's first module, each edge with where it is made.
fn describe(g: &Graph, scc: &[String]) -> String {
    let start = &scc[0];
    let inside: BTreeSet<&String> = scc.iter().collect();
    // Breadth-first from `start` back to it, within the component.
    let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    let mut last = None;
    'search: while let Some(v) = queue.pop_front() {
        for w in g[v].keys().filter(|w| inside.contains(w)) {
            if w == start {
                last = Some(v);
                break 'search;
            }
            if !prev.contains_key(w) {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    let mut path = vec![start.clone()];
    let mut v = last.expect("a component has a cycle");
    while v != start {
        path.push(v.clone());
        v = prev[v];
    }
    path[1..].reverse();
    path.push(start.clone());
    let mut text = format!("cycle among {scc:?}:\n");
    for pair in path.windows(2) {
        let (at, what) = &g[&pair[0]][&pair[1]];
        text += &format!("  {} -> {}   ({what} at {at})\n", pair[0], pair[1]);
    }
    text
}

#[test]
fn no_file_of_agent_guard_src_is_longer_than_700_lines() {
    let src = repo().join("agent-guard/src");
    let long: Vec<String> = rs_files(&src)
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(f, n)| format!("{} has {n} lines", f.strip_prefix(repo()).unwrap().display()))
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines (split them by concern):\n{}", long.join("\n"));
}

#[test]
fn crate_imports_between_modules_form_no_cycle() {
    for krate in ["agent-guard/src", "agent-guard-ebpf/src"] {
        let g = module_graph(&repo().join(krate));
        assert!(g.len() > 5, "{krate}: only {} modules found: {g:#?}", g.len());
        let found = cycles(&g);
        let text: String = found.iter().map(|scc| describe(&g, scc)).collect();
        assert!(found.is_empty(), "{krate}: the crate:: imports between modules form cycles:\n{text}");
        let edges: usize = g.values().map(BTreeMap::len).sum();
        eprintln!("{krate}: {} modules, {edges} edges between them, no cycle", g.len());
    }
}

/// The checker itself: paths, groups, comments, literals, test code, parents and a cycle.
#[test]
fn the_cycle_check_sees_what_it_should() {
    let src = "//! crate::doc::Thing\n\
        use crate::{a::b::{C, self}, d, e::*};\n\
        use crate::f as g;\n\
        fn x() { let _ = \"crate::lit\"; let _ = '\"'; crate::h::i(); $crate::j; }\n\
        /* crate::block::X */\n\
        #[cfg(test)]\nmod tests { use crate::k; }\n\
        #[cfg(test)]\nmod more;\n\
        pub(crate) fn y<'a>(_: &'a str) {}\n";
    let (code, test_mods) = strip_cfg_test(&code_only(src));
    let paths: Vec<String> = crate_paths(&code).into_iter().map(|(p, _)| p.join("::")).collect();
    assert_eq!(paths, ["a::b::C", "a::b", "d", "e", "f", "h::i"], "{code}");
    assert_eq!(test_mods, ["more"]);
    assert_eq!(module_of(Path::new("a/b/mod.rs")), "a::b");
    assert_eq!(module_of(Path::new("a/b.rs")), "a::b");
    assert_eq!(module_of(Path::new("main.rs")), "");

    let mut g = Graph::new();
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.into()).or_default().insert(b.into(), ("x.rs:1".into(), format!("crate::{b}")));
        g.entry(b.into()).or_default();
    };
    edge(&mut g, "a", "b");
    edge(&mut g, "b", "c");
    edge(&mut g, "c", "d");
    assert!(cycles(&g).is_empty());
    edge(&mut g, "c", "a");
    let found = cycles(&g);
    assert_eq!(found, [vec!["a".to_string(), "b".into(), "c".into()]]);
    assert!(describe(&g, &found[0]).contains("  c -> a   (crate::a at x.rs:1)"), "{}", describe(&g, &found[0]));
}
