//! The README's first command, `scripts/demo.sh`, runs to its report in CI: live and offline
//! with three hosts, then with two hosts and on one host (`intercept --route`), the target
//! receiving every request the online server served, nothing left behind.

use std::path::PathBuf;
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run_demo(args: &[&str]) -> String {
    tc_test_support::require_root("demo");
    let bins = std::env::var("TC_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let exe = std::env::current_exe().expect("test exe");
            exe.parent()
                .and_then(|d| d.parent())
                .expect("target dir")
                .to_path_buf()
        });
    assert!(
        bins.join("tcpcopy").exists() && bins.join("intercept").exists(),
        "binaries missing in {}: run cargo build --workspace --bins",
        bins.display()
    );
    let before = netns_list();
    let out = Command::new("bash")
        .arg(workspace().join("scripts/demo.sh"))
        .args(args)
        .env("DEMO_BIN_DIR", &bins)
        .env("DEMO_REQUESTS", "20")
        .output()
        .expect("run scripts/demo.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo {args:?} failed:\n{text}");
    assert!(text.contains("requests served online:        20"), "{text}");
    assert!(text.contains("requests received by target:   20"), "{text}");
    assert!(
        text.contains("OK: the target received every request"),
        "{text}"
    );
    // This run's namespaces only (the other demo test may run meanwhile).
    let run = text
        .split("cleaned up (namespaces ")
        .nth(1)
        .and_then(|rest| rest.split("-*)").next())
        .unwrap_or_else(|| panic!("no cleanup line:\n{text}"))
        .to_string();
    assert!(run.starts_with("tcdemo"), "{run}");
    let left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{run}-")) && !before.contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    text
}

fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
#[ignore = "needs root"]
fn demo_live_and_offline() {
    assert!(run_demo(&[]).contains("report (three-host deployment)"));
    run_demo(&["--offline"]);
}

/// Issue 17: the two-host and one-host deployments, intercept --route cleaning up after
/// itself.
#[test]
#[ignore = "needs root"]
fn demo_two_hosts_and_one_host() {
    for (flag, deploy, host) in [
        ("--two-hosts", "two", "target"),
        ("--one-host", "one", "online"),
    ] {
        let text = run_demo(&[flag]);
        assert!(
            text.contains(&format!("report ({deploy}-host deployment)")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "device tcrs0 and route 203.0.113.0/24 removed from {host}"
            )),
            "{text}"
        );
    }
}
