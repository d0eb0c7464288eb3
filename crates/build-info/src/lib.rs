//! The build scripts of tcpcopy and intercept share this: the git commit the binary is built
//! from, as `TC_GIT_COMMIT` for `-v`.
//!
//! Order: `TC_GIT_COMMIT` set in the build environment (a packager building from a tarball
//! knows it); the `.cargo_vcs_info.json` that `cargo package` writes into a crate tarball;
//! `git rev-parse --short HEAD` in a checkout (uncommitted changes are not marked); otherwise
//! "unknown".

use std::path::{Path, PathBuf};
use std::process::Command;

/// Called from a binary crate's build script: sets `TC_GIT_COMMIT` for its `-v`.
pub fn emit_git_commit() {
    println!("cargo:rerun-if-env-changed=TC_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let commit = std::env::var("TC_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| from_vcs_info(&dir))
        .or_else(|| from_git(&dir))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TC_GIT_COMMIT={}", commit.trim());
}

/// The commit recorded by `cargo package` (`"sha1": "<40 hex>"`), shortened like git's.
fn from_vcs_info(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(".cargo_vcs_info.json")).ok()?;
    let rest = &text[text.find("\"sha1\"")? + "\"sha1\"".len()..];
    let start = rest.find('"')? + 1;
    let sha: String = rest[start..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (sha.len() >= 7).then(|| sha[..7].to_string())
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| text.trim().to_string())
}

/// `git rev-parse --short HEAD`, when this package is tracked in a git checkout (a crate
/// unpacked somewhere inside another repository is not).
fn from_git(dir: &Path) -> Option<String> {
    git(dir, &["ls-files", "--error-unmatch", "Cargo.toml"])?;
    let commit = git(dir, &["rev-parse", "--short", "HEAD"]).filter(|c| !c.is_empty())?;
    // Rebuild when HEAD moves: HEAD itself, the branch it points to, and packed refs.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(
            dir,
            &["rev-parse", "--path-format=absolute", "--git-path", &name],
        ) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    Some(commit)
}
