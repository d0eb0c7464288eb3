//! Test helpers shared by every test crate of the workspace.
//!
//! **Tests that need root** (network namespaces, raw sockets, libpcap) carry
//! `#[ignore = "needs root"]`: a plain `cargo test` lists them as *ignored*, never as passed.
//! `scripts/test.sh` (as root, and CI) runs them with `-- --include-ignored`. Each such test
//! calls [`require_root`] (or [`require`] when it also runs outside programs) first: run without
//! what it needs, it fails with a message saying what is missing; it never passes silently.
//!
//! **Waiting** is [`wait_for`]: a condition polled under a deadline, with a message saying what
//! did not happen, instead of a sleep followed by an assertion.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A test that needs root calls this first: without root it fails loudly. Such a test is
/// `#[ignore = "needs root"]`, so it only runs when asked for (`--include-ignored`).
#[track_caller]
pub fn require_root(test: &str) {
    assert!(
        is_root(),
        "{test}: needs root (network namespaces, raw sockets, libpcap); run it as root \
         (sudo scripts/test.sh), or leave it out (it is #[ignore]d in a plain `cargo test`)"
    );
}

/// [`require_root`], and every program of `tools` must be on `PATH` (`scripts/test.sh`
/// installs them). A missing one fails the test with its name.
#[track_caller]
pub fn require(test: &str, tools: &[&str]) {
    require_root(test);
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    assert!(
        missing.is_empty(),
        "{test}: needs {missing:?} installed (scripts/test.sh installs them)"
    );
}

/// Whether an executable file `program` is in one of the `PATH` directories.
pub fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        Path::new(&dir)
            .join(program)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// How often [`wait_for`] checks its condition.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// Checks `cond` every [`POLL_EVERY`] until it holds and returns how long that took; once
/// `within` has passed without it, panics with "timed out after .. waiting for" and `what()`
/// (what was awaited, with whatever helps: a log tail, the last snapshot).
#[track_caller]
pub fn wait_for(
    within: Duration,
    mut cond: impl FnMut() -> bool,
    what: impl FnOnce() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() >= within {
            panic!("timed out after {within:?} waiting for {}", what());
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// `GET path` over HTTP/1.0 from `addr`: the status line and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    Ok((status, body.to_string()))
}

/// `promtool check metrics` on `text` must pass. Without promtool (Debian's `prometheus`
/// package) the check is skipped with a visible line, except under CI=true, where it fails.
/// Returns whether it ran.
pub fn promtool_check(text: &str) -> bool {
    use std::io::Write;
    use std::process::{Command, Stdio};
    if !on_path("promtool") {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "promtool not found on PATH: install Debian's `prometheus` package"
        );
        eprintln!("SKIPPED: promtool check metrics (promtool not on PATH)");
        return false;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\non:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// The second line `-v` prints: `tcpcopy-rs <version> (git commit <short HEAD>)`, the commit
/// as build.rs reads it (TC_GIT_COMMIT, else `git rev-parse --short HEAD` in `manifest_dir`),
/// or "unknown" outside a git checkout. Callers pass their own `env!("CARGO_MANIFEST_DIR")`
/// and `env!("CARGO_PKG_VERSION")`.
pub fn expected_build_line(manifest_dir: &str, version: &str) -> String {
    let commit = std::env::var("TC_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["-C", manifest_dir, "rev-parse", "--short", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    format!("tcpcopy-rs {version} (git commit {commit})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_returns_once_the_condition_holds() {
        let mut n = 0;
        wait_for(
            Duration::from_secs(5),
            || {
                n += 1;
                n == 3
            },
            || "three calls".into(),
        );
        assert_eq!(n, 3);
    }

    #[test]
    fn programs_on_path() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-program-tc"));
    }

    #[test]
    #[should_panic(expected = "timed out after 20ms waiting for nothing")]
    fn wait_for_fails_with_what_it_waited_for() {
        wait_for(Duration::from_millis(20), || false, || "nothing".into());
    }
}
