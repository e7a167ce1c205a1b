//! The shape of the code: no two modules of a crate import each other, directly or around a
//! loop (a module's children may use their parent's items; that is how Rust nests modules).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The top-level modules of the crate (or module directory) at `dir` and the sibling modules
/// each one names through `keyword::` (`crate` or `super`), test code excluded.
fn imports(dir: &Path, keyword: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("a source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(dir).expect("under dir");
            let top =
                rel.components().next().map(|c| c.as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned());
            let Some(top) = top.filter(|t| !matches!(t.as_str(), "lib" | "main" | "mod")) else { continue };
            let text = std::fs::read_to_string(&path).expect("source");
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = graph.entry(top.clone()).or_default();
            let prefix = format!("{keyword}::");
            let mut rest = code;
            while let Some(i) = rest.find(&prefix) {
                rest = &rest[i + prefix.len()..];
                let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                    let inner = group.split('}').next().unwrap_or("");
                    inner.split(',').map(|p| p.trim().split("::").next().unwrap_or("").to_owned()).collect()
                } else {
                    vec![rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap_or("").to_owned()]
                };
                for n in names {
                    if !n.is_empty() && n != top && n != "self" && n.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        deps.insert(n);
                    }
                }
            }
        }
    }
    graph
}

/// A loop of imports, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut c = path[i..].to_vec();
            c.push(node.to_owned());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in g.get(node).into_iter().flatten().filter(|n| g.contains_key(*n)) {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(graph, n, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_itself_around_a_loop() {
    let crates = [
        ("proxy/src", "crate"),
        ("meta/src", "crate"),
        ("raft/src", "crate"),
        ("wire/src", "crate"),
        ("src", "crate"),
        ("src/broker", "super"),
        ("src/coordinator", "super"),
    ];
    let mut found = Vec::new();
    for (dir, keyword) in crates {
        let graph = imports(&root().join(dir), keyword);
        assert!(!graph.is_empty() || dir == "wire/src", "{dir}: no modules found");
        if let Some(c) = cycle(&graph) {
            found.push(format!("{dir}: {}", c.join(" → ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&g), Some(vec!["a".to_owned(), "b".into(), "c".into(), "a".into()]));
    if let Some(s) = g.get_mut("c") {
        s.clear();
    }
    assert_eq!(cycle(&g), None);
}
