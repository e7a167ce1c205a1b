//! Stamps the build with the commit it was made from: `MOONRAFT_BUILD_VERSION` is
//! `<package version>+<short commit>` (`-dirty` when the checkout had changes), or just the
//! package version where git or the repository is missing (a source tarball). Brokers answer it
//! on `/version`, and `moonraft --version` prints it, so an operator can tell builds apart.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let package = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let version = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            format!("{package}+{commit}{}", if dirty { "-dirty" } else { "" })
        }
        _ => package,
    };
    println!("cargo:rustc-env=MOONRAFT_BUILD_VERSION={version}");
    // Again when the checked-out commit moves (HEAD, or the branch it points to) or the index
    // changes (what "dirty" compares against).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
