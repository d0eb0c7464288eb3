//! The tcpcopy binary's command line, run as a process (no root, no network beyond loopback).

use std::process::{Command, Output};

fn tcpcopy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tcpcopy"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run tcpcopy")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const X: &str = "80-198.18.0.30:8080";
const S: &str = "198.18.0.40";

#[test]
fn version() {
    let o = tcpcopy(&["-v"]);
    assert!(o.status.success());
    // The original's line first (scripts read it), then the build.
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("tcpcopy version:1.3.0\n{}\n", expected_build_line())
    );
}

/// The second line `-v` must print: the version of this package and the commit HEAD is at.
fn expected_build_line() -> String {
    tc_test_support::expected_build_line(env!("CARGO_MANIFEST_DIR"), env!("CARGO_PKG_VERSION"))
}

#[test]
fn help_is_grouped_with_defaults_and_examples() {
    let o = tcpcopy(&["-h"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "Required:",
        "Control channel:",
        "Capture:",
        "Send:",
        // clap renders the defaults of the option definitions.
        "[default: 36524]",
        "[default: 1500]",
        "Example:",
        "-x 80-198.18.0.30:8080",
    ] {
        assert!(text.contains(needle), "help lacks {needle:?}");
    }
}

#[test]
fn generate_docs_writes_the_man_page_and_completions() {
    let dir = std::env::temp_dir().join(format!("tcpcopy-docs-it-{}", std::process::id()));
    let o = tcpcopy(&["--generate-docs", dir.to_str().unwrap()]);
    let man = std::fs::read_to_string(dir.join("tcpcopy.8"));
    let listed = String::from_utf8_lossy(&o.stdout).lines().count();
    let present = ["tcpcopy.bash", "_tcpcopy", "tcpcopy.fish"].map(|f| dir.join(f).is_file());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(listed, 4, "{o:?}");
    assert_eq!(present, [true; 3]);
    let man = man.unwrap();
    assert!(man.contains(".TH TCPCOPY 8 "), "{man}");
    assert!(man.contains(".SH EXAMPLES"), "{man}");
    // Hidden: not an option operators need in -h or the man page.
    assert!(!man.contains("generate"), "{man}");
    let help = tcpcopy(&["-h"]);
    assert!(!String::from_utf8_lossy(&help.stdout).contains("generate"));
}

#[test]
fn usage_errors_exit_non_zero_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["-s", S], "no -x"),
        (&["-x", X], "-s"),
        (&["-x", X, "-s", S, "-q"], "-q"),
        (&["-x", X, "-s", S, "--bogus"], "--bogus"),
        (&["-x", X, "-s"], "-s"),
        (&["-x", "80-198.18.0.300:8080", "-s", S], "not a valid IPv4"),
        (&["-x", "80-198.18.0.30:99999", "-s", S], "not a valid port"),
        (&["-x", "80-8080", "-s", S], "needs an IP"),
        (
            &["-x", "80@zz:00:00:00:00:00-198.18.0.30:8080", "-s", S],
            "MAC",
        ),
        (&["-x", X, "-s", "198.18.0.40:70000"], "-s"),
        (
            &["-x", X, "-s", S, "-c", "203.0.113.*"],
            "use x instead of *",
        ),
        (&["-x", X, "-s", S, "-c", "203.0.113.999"], "-c"),
        (&["-x", X, "-s", S, "-C", "12"], "-C"),
        (&["-x", X, "-s", S, "-n", "1024"], "-n"),
        (&["-x", X, "-s", S, "-r", "150"], "-r"),
        (&["-x", X, "-s", S, "-f", "256"], "-f"),
        (&["-x", X, "-s", S, "-M", "70000"], "-M"),
        (&["-x", X, "-s", S, "-p", "abc"], "-p"),
        (&["-x", X, "-s", S, "--send", "pcap"], "-o"),
        (&["-x", X, "-s", S, "-F", "tcp"], "--capture pcap"),
        // A mistyped pcap path is not taken for a device name.
        (
            &["-x", X, "-s", S, "-i", "/no/such/dir/in.pcap"],
            "no such file",
        ),
        (
            &["-x", X, "-s", S, "-i", "no-such-capture.pcapng"],
            "no such file",
        ),
        (&["-x", X, "-s", S, "-i", "/"], "not a regular file"),
    ];
    for (args, needle) in cases {
        let o = tcpcopy(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert!(
            e.contains(needle),
            "{args:?}: stderr {e:?} lacks {needle:?}"
        );
    }
}

#[test]
fn unreachable_intercept_fails_start_up() {
    // A loopback port nobody listens on: bind, learn the port, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = tcpcopy(&["-x", X, "-s", &format!("127.0.0.1:{port}")]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("Can not connect to remote server"), "{e}");
}

#[test]
fn offline_file_that_is_not_a_capture_fails_start_up() {
    let dir = std::env::temp_dir().join(format!("tcpcopy-cli-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("in.pcap");
    std::fs::write(&file, b"").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s = listener.local_addr().unwrap().to_string();
    let o = tcpcopy(&["-x", X, "-s", &s, "-i", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("open "), "{}", stderr(&o));
}

/// What we refuse on purpose, the original clamped, truncated or skipped: the error says what
/// the original would have done (issue 20).
#[test]
fn refusals_say_what_the_original_did() {
    let cases: &[(&[&str], &str)] = &[
        (&["-f", "256"], "256 cut to 8 bits = 0: no shift"),
        (
            &["-r", "150"],
            "150 cut to 7 bits = 22 and replayed 22% of the sessions",
        ),
        (&["-C", "12"], "opened 11 connections per intercept"),
        (&["-n", "1024"], "no copies"),
        (&["-t", "-5"], "default of 600 s"),
        (&["-c", "203.0.113.*"], "the original skipped this item"),
        (&["-M", "70000"], "cut to 16 bits = 4464"),
        (&["--capture", "pcap", "-S", "40"], "first 40 bytes"),
        (&["-p", "x"], "atoi made it 0"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["-x", X, "-s", S];
        args.extend_from_slice(extra);
        let o = tcpcopy(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains(needle), "{args:?}: {e:?} lacks {needle:?}");
    }
    let many: Vec<String> = (1..=33).map(|i| format!("198.18.1.{i}")).collect();
    let o = tcpcopy(&["-x", X, "-s", &many.join(",")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("ignored the rest"), "{}", stderr(&o));
}

/// `-f` takes the original's 8-bit range; above 31 it warns that the shift wraps.
#[test]
fn port_shift_above_31_is_accepted_with_a_warning() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = format!("127.0.0.1:{port}");
    let o = tcpcopy(&["-x", X, "-s", &s, "-f", "200"]);
    // Accepted: start-up goes on to the intercept, which is not there.
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("-f 200: above 31 the port shift wraps"), "{e}");
    let o = tcpcopy(&["-x", X, "-s", &s, "-f", "31"]);
    assert!(!stderr(&o).contains("wraps"), "{}", stderr(&o));
}

/// `-i NAME` without a `/` or a capture extension is a device; when no interface has that
/// name the error says how to name a file.
#[test]
fn unknown_device_hints_at_the_file_rule() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s = listener.local_addr().unwrap().to_string();
    let o = tcpcopy(&["-x", X, "-s", &s, "-i", "nosuchdev0"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("no network interface is named nosuchdev0"),
        "{e}"
    );
    assert!(e.contains("./NAME"), "{e}");
}
