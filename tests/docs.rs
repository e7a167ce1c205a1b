//! `docs/` stands on its own and stays true to the code: every page exists and the README links
//! it, every link and every `docs/…#anchor` a code comment names resolves, no comment points
//! outside the repository, and the API page lists exactly what a live broker's OpenAPI
//! document and the gRPC definitions contain.

mod common;

use common::*;
use std::path::{Path, PathBuf};

const PAGES: [&str; 8] =
    ["architecture", "protocol", "api", "allocation", "migration", "failover", "operations", "compatibility"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Source files of the repository with one of `exts`, outside build output and VCS data.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                files(&path, exts, out);
            }
        } else if exts.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

/// The anchor a code host makes of a heading: lower case, spaces to `-`, other punctuation
/// dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(page: &Path) -> Vec<String> {
    let mut in_code = false;
    read(page)
        .lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            !in_code
        })
        .filter_map(|l| l.strip_prefix('#').map(|h| anchor(h.trim_start_matches('#'))))
        .collect()
}

/// Every `docs/<page>.md[#anchor]` in `text` (code comments) or, with `relative`, every
/// markdown link target `(<page>.md[#anchor])`.
fn references(text: &str, relative: bool) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let marker = if relative { "](" } else { "docs/" };
    let mut rest = text;
    while let Some(i) = rest.find(marker) {
        let tail = &rest[i + marker.len()..];
        let end = tail.find(|c: char| !(c.is_alphanumeric() || "-_./#".contains(c))).unwrap_or(tail.len());
        let target = &tail[..end];
        rest = &tail[end..];
        let (file, frag) = match target.split_once('#') {
            Some((f, a)) => (f, Some(a.to_owned())),
            None => (target, None),
        };
        if file.ends_with(".md") && !file.contains('/') {
            out.push((file.to_owned(), frag));
        } else if relative && file.is_empty() {
            // An anchor on the same page.
            out.push((String::new(), frag));
        }
    }
    out
}

#[test]
fn every_page_exists_and_the_readme_links_it() {
    let readme = read(&root().join("README.md"));
    for page in PAGES {
        let path = root().join(format!("docs/{page}.md"));
        assert!(path.exists(), "docs/{page}.md is missing");
        assert!(readme.contains(&format!("(docs/{page}.md")), "README does not link docs/{page}.md");
    }
}

#[test]
fn every_link_between_pages_and_from_code_resolves() {
    let docs = root().join("docs");
    let mut broken = Vec::new();
    for page in PAGES {
        let path = docs.join(format!("{page}.md"));
        for (file, frag) in references(&read(&path), true) {
            let target = if file.is_empty() { path.clone() } else { docs.join(&file) };
            if !target.exists() {
                broken.push(format!("docs/{page}.md → {file}"));
            } else if let Some(a) = frag {
                if !anchors(&target).contains(&a) {
                    broken.push(format!("docs/{page}.md → {file}#{a}"));
                }
            }
        }
    }
    let mut sources = Vec::new();
    files(&root(), &[".rs", ".proto"], &mut sources);
    assert!(sources.len() > 50, "{sources:?}");
    for source in &sources {
        for (file, frag) in references(&read(source), false) {
            let target = docs.join(&file);
            let shown = source.strip_prefix(root()).unwrap_or(source).display().to_string();
            if !target.exists() {
                broken.push(format!("{shown} → docs/{file}"));
            } else if let Some(a) = frag {
                if !anchors(&target).contains(&a) {
                    broken.push(format!("{shown} → docs/{file}#{a}"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "links that lead nowhere:\n{}", broken.join("\n"));
}

/// What a citation of a text outside the repository looks like: a section sign, the outside
/// list of weaknesses, the outside directory. Spelled in parts so this file does not match.
const OUTSIDE_MARKERS: [&str; 3] = ["\u{a7}", concat!("weak", " point"), concat!("shared", "/spec")];

#[test]
fn no_comment_points_outside_the_repository() {
    let mut sources = Vec::new();
    files(&root(), &[".rs", ".proto", ".sh", ".py", ".md", ".toml", ".yml"], &mut sources);
    let mut found = Vec::new();
    for source in &sources {
        let shown = source.strip_prefix(root()).unwrap_or(source).display().to_string();
        if shown == "tests/docs.rs" {
            continue;
        }
        for (n, line) in read(source).lines().enumerate() {
            if OUTSIDE_MARKERS.iter().any(|m| line.contains(m)) {
                found.push(format!("{shown}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "references to a text outside the repository:\n{}", found.join("\n"));
}

#[test]
fn the_api_page_lists_every_endpoint_and_rpc() {
    let broker = BrokerGroup::start(1);
    let reply = broker.members[0].http("GET", "/api/v3/openapi.json", None).expect("the OpenAPI document");
    assert_eq!(reply.status, 200);
    let dir = TempDir::new("openapi");
    let saved = dir.0.join("openapi.json");
    std::fs::write(&saved, &reply.body).expect("write");
    let out = std::process::Command::new("python3")
        .arg(root().join("scripts/api-doc.py"))
        .arg(&saved)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8_lossy(&out.stdout).into_owned();
    let page = read(&root().join("docs/api.md"));
    let start = page.find("<!-- generated: scripts/api-doc.py -->\n").expect("the generated section's start")
        + "<!-- generated: scripts/api-doc.py -->\n".len();
    let end = page.find("<!-- end generated -->").expect("the generated section's end");
    assert_eq!(page[start..end], generated, "docs/api.md is out of date: regenerate its table with scripts/api-doc.py");
    // Every RPC of the public services is on the page.
    let proto = read(&root().join("proto/proto/broker.proto"));
    let rpcs: Vec<&str> =
        proto.lines().filter_map(|l| l.trim().strip_prefix("rpc ")).filter_map(|l| l.split('(').next()).collect();
    assert!(rpcs.len() >= 35, "{rpcs:?}");
    let missing: Vec<&&str> = rpcs.iter().filter(|r| !page.contains(&format!("`{r}`"))).collect();
    assert!(missing.is_empty(), "RPCs not on docs/api.md: {missing:?}");
}
