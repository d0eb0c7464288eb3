//! The Debian package of scripts/package.sh, installed on this machine like an operator would:
//! `dpkg -i`, man pages found by `man -w`, the installed binaries' `-v`, their file
//! capabilities, the systemd units verified, then `dpkg --purge` leaving nothing behind.
//!
//! It installs into the real root file system. So: one run at a time on the machine (a lock
//! file), a package version of its own (`~pkgtest`) so a leftover of a killed run is recognised
//! and purged while an operator's real installation makes the test fail instead of being
//! removed, and a guard that purges the package when the test fails half-way.
//!
//! The package is built from the debug binaries the other end-to-end tests use (seconds)
//! rather than a release build (minutes on this machine): what is checked is the packaging,
//! which is the same for both.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tc_e2e::lab::{bin, require};

const PACKAGE: &str = "tcpcopy-rs";
/// Marks the packages this test builds (dpkg sorts `~` before anything: never an upgrade).
const TEST_SUFFIX: &str = "~pkgtest";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok(program: &str, args: &[&str]) -> String {
    let o = run(program, args);
    assert!(
        o.status.success(),
        "{program} {args:?} failed:\n{}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The installed version of the package, if any.
fn installed_version() -> Option<String> {
    let o = run(
        "dpkg-query",
        &["-W", "-f=${db:Status-Abbrev} ${Version}", PACKAGE],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    // "ii  0.1.0"; the second letter is the state: n = not installed, c = only its
    // configuration files left, i = installed, others half-way.
    let state = out.chars().nth(1)?;
    (o.status.success() && state != 'n').then(|| out[3..].trim().to_string())
}

fn purge() -> Output {
    run("dpkg", &["--purge", PACKAGE])
}

/// Exclusive for the whole test: another run of it (another worktree, another user) waits.
fn machine_lock() -> File {
    let path = std::env::temp_dir().join("tcpcopy-rs-package-test.lock");
    let f = File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: flock on a file descriptor owned by `f`, which outlives the lock.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", path.display());
    f
}

/// Purges the package and removes the build directory when dropped (also on a failure).
struct Installed {
    dir: PathBuf,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if installed_version().is_some() {
            let o = purge();
            eprintln!("cleanup: dpkg --purge {PACKAGE}: {}", text(&o));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn user_exists(name: &str) -> bool {
    run("getent", &["passwd", name]).status.success()
}

fn group_exists(name: &str) -> bool {
    run("getent", &["group", name]).status.success()
}

#[test]
#[ignore = "needs root"]
fn deb_installs_man_pages_capabilities_and_units_then_purges_to_nothing() {
    require(
        "package",
        &[
            "dpkg",
            "dpkg-deb",
            "dpkg-shlibdeps",
            "strip",
            "gzip",
            "man",
            "getcap",
            "setcap",
            "setpriv",
        ],
    );
    let _lock = machine_lock();
    match installed_version() {
        Some(v) if v.ends_with(TEST_SUFFIX) => {
            eprintln!("purging {PACKAGE} {v} left by an interrupted run of this test");
            let o = purge();
            assert!(o.status.success(), "{}", text(&o));
        }
        Some(v) => panic!(
            "{PACKAGE} {v} is installed on this machine: this test would remove it \
             (dpkg --purge {PACKAGE} first if it may go)"
        ),
        None => {}
    }
    assert!(
        !user_exists("tcpcopy") && !group_exists("tcpcopy"),
        "a user or group tcpcopy exists already: the package's would be mistaken for it"
    );

    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bins = bin("tcpcopy").parent().expect("bin dir").to_path_buf();
    let dir = std::env::temp_dir().join(format!("tc-package-test-{}", std::process::id()));
    let guard = Installed { dir: dir.clone() };
    let version = format!("{}{TEST_SUFFIX}", env!("CARGO_PKG_VERSION"));
    let built = ok(
        "bash",
        &[
            workspace.join("scripts/package.sh").to_str().unwrap(),
            "--bin-dir",
            bins.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
            "--version",
            &version,
        ],
    );
    let deb = built
        .lines()
        .last()
        .expect("package.sh printed the .deb")
        .to_string();
    assert!(
        deb.ends_with(".deb") && Path::new(&deb).is_file(),
        "{built}"
    );

    ok("dpkg", &["-i", &deb]);
    assert_eq!(installed_version().as_deref(), Some(version.as_str()));
    let files: Vec<String> = ok("dpkg", &["-L", PACKAGE])
        .lines()
        .filter(|l| Path::new(l).is_file())
        .map(String::from)
        .collect();
    for expected in [
        "/usr/sbin/tcpcopy",
        "/usr/sbin/intercept",
        "/usr/lib/systemd/system/intercept.service",
        "/usr/lib/systemd/system/tcpcopy@.service",
        "/etc/default/intercept",
        "/usr/share/bash-completion/completions/tcpcopy",
        "/usr/share/zsh/vendor-completions/_intercept",
        "/usr/share/fish/vendor_completions.d/tcpcopy.fish",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} not installed: {files:?}"
        );
    }

    // man -w finds the pages where an operator's `man 8 tcpcopy` looks.
    for page in ["tcpcopy", "intercept"] {
        let path = ok("man", &["-w", "8", page]);
        assert_eq!(path.trim(), format!("/usr/share/man/man8/{page}.8.gz"));
    }

    // The installed files run and say what they are: the same build as the test binaries.
    for (name, first) in [
        ("tcpcopy", "tcpcopy version:1.3.0"),
        ("intercept", "intercept version:1.0.0"),
    ] {
        let installed = ok(&format!("/usr/sbin/{name}"), &["-v"]);
        assert!(installed.starts_with(&format!("{first}\n")), "{installed}");
        let built = ok(bins.join(name).to_str().unwrap(), &["-v"]);
        assert_eq!(installed, built);
        assert!(installed.contains("(git commit "), "{installed}");
    }

    // File capabilities instead of root, for root and the group tcpcopy only.
    for (name, caps) in [
        ("tcpcopy", "cap_net_admin,cap_net_raw=ep"),
        ("intercept", "cap_net_admin,cap_net_raw=ep"),
    ] {
        let path = format!("/usr/sbin/{name}");
        let got = ok("getcap", &[&path]);
        assert_eq!(got.split_whitespace().nth(1), Some(caps), "{got}");
        let as_user = |user: &str| {
            run(
                "setpriv",
                &[
                    "--reuid",
                    user,
                    "--regid",
                    user,
                    "--init-groups",
                    &path,
                    "-v",
                ],
            )
        };
        let member = as_user("tcpcopy");
        assert!(member.status.success(), "user tcpcopy: {}", text(&member));
        let other = as_user("nobody");
        assert!(
            !other.status.success(),
            "nobody ran {path}: {}",
            text(&other)
        );
    }

    // The units as systemd reads them: no warning at all.
    if tc_test_support::on_path("systemd-analyze") {
        for unit in ["intercept.service", "tcpcopy@pkgtest.service"] {
            let o = run("systemd-analyze", &["verify", unit]);
            assert!(
                o.status.success() && text(&o).trim().is_empty(),
                "systemd-analyze verify {unit}:\n{}",
                text(&o)
            );
        }
    } else {
        eprintln!("systemd-analyze not installed: units not verified");
    }

    let o = purge();
    assert!(o.status.success(), "dpkg --purge: {}", text(&o));
    assert_eq!(installed_version(), None);
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    for dir in [
        "/etc/tcpcopy",
        "/usr/share/doc/tcpcopy-rs",
        "/var/log/tcpcopy",
        "/var/lib/tcpcopy",
    ] {
        assert!(!Path::new(dir).exists(), "{dir} left after purge");
    }
    assert!(!user_exists("tcpcopy"), "user tcpcopy left after purge");
    assert!(!group_exists("tcpcopy"), "group tcpcopy left after purge");
    drop(guard);
}
