//! The 2-minute version of `scripts/soak.sh` (issue 15): steady churn of short and keep-alive
//! connections through tcpcopy and intercept; RSS must stay flat after the warm-up, no request
//! may be lost, no session may remain once the traffic stopped. `sudo scripts/soak.sh 30` is
//! the long run. Needs root.

use std::process::Command;

use tc_e2e::lab::*;

#[test]
#[ignore = "needs root"]
fn two_minute_soak() {
    require_root("two_minute_soak");
    let tcpcopy = bin("tcpcopy");
    let bin_dir = tcpcopy.parent().expect("target dir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/soak.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("2")
        .env("BIN_DIR", bin_dir)
        .output()
        .expect("run soak.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "soak failed:\n{text}");
    assert!(text.contains("soak: PASSED"), "{text}");
    assert!(
        text.contains("sessions left after the traffic: 0"),
        "{text}"
    );
}
