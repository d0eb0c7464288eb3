//! The intercept binary: arguments, startup errors, listening, signals, daemon and pid file,
//! log format. Tests that capture on `lo` need root (CAP_NET_RAW).

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tc_test_support::require_root;

const BIN: &str = env!("CARGO_BIN_EXE_intercept");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run intercept")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("intercept-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Kills the child on drop (test failure paths).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: sending a signal to our own child.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn missing_filter() {
    let out = run(&["-i", "lo"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("please set filter (-F param) for capturing packets"));
}

/// The second line `-v` must print: the version of this package and the commit HEAD is at.
fn expected_build_line() -> String {
    tc_test_support::expected_build_line(env!("CARGO_MANIFEST_DIR"), env!("CARGO_PKG_VERSION"))
}

#[test]
fn version_and_help() {
    let out = run(&["-v"]);
    assert!(out.status.success());
    // The original's line first (scripts read it), then the build.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("intercept version:1.0.0\n{}\n", expected_build_line())
    );
    let out = run(&["-h"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "-i",
        "-F",
        "-n",
        "-p",
        "-s",
        "-D",
        "-l",
        "-P",
        "-b",
        "-v",
        "-h",
        "-d",
        "--single",
        "--payload",
        "--dnat",
        "--disable-combined",
        "--allow",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
    assert!(help.contains("36524") && help.contains("Examples"));
}

#[test]
fn generate_docs_writes_the_man_page_and_completions() {
    let dir = std::env::temp_dir().join(format!("intercept-docs-it-{}", std::process::id()));
    let o = run(&["--generate-docs", dir.to_str().unwrap()]);
    let man = std::fs::read_to_string(dir.join("intercept.8"));
    let listed = String::from_utf8_lossy(&o.stdout).lines().count();
    let present = ["intercept.bash", "_intercept", "intercept.fish"].map(|f| dir.join(f).is_file());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(listed, 4, "{o:?}");
    assert_eq!(present, [true; 3]);
    let man = man.unwrap();
    assert!(man.contains(".TH INTERCEPT 8 "), "{man}");
    assert!(man.contains(".SH EXAMPLES"), "{man}");
    // Hidden: not an option operators need in -h or the man page.
    assert!(!man.contains("generate"), "{man}");
    let help = run(&["-h"]);
    assert!(!String::from_utf8_lossy(&help.stdout).contains("generate"));
}

#[test]
fn bad_arguments() {
    for args in [
        &["-F", "tcp", "-x"][..],
        &["-F", "tcp", "-p"],
        &["-F", "tcp", "-b", "not-an-ip"],
        &["-F", "tcp", "-n", "99"],
        &["-F"],
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
}

#[test]
#[ignore = "needs root"]
fn port_in_use_is_a_bind_error() {
    // Captures open before the bind, so this needs a usable device.
    require_root("port_in_use_is_a_bind_error");
    let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = run(&["-F", "tcp", "-i", "lo", "-b", "127.0.0.1", "-p", &port]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Bind socket"), "{err}");
}

/// Issue 15.1: on a non-loopback address intercept does not start without an allow list, and
/// says what to add; `--allow any` starts (here up to the capture) with a warning.
#[test]
fn open_listener_refused_without_allow() {
    let port = free_port().to_string();
    let out = run(&["-F", "tcp", "-i", "nosuchdev0", "-p", &port]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("add --allow <tcpcopy host address>") && err.contains("--allow any"),
        "{err}"
    );
    assert!(
        !err.contains("device could not work"),
        "refused before capturing: {err}"
    );

    // It goes on to open the capture (which does not exist here).
    let err = run_without_device(&["--allow", "any"]);
    assert!(
        err.contains("[warn] --allow any: anyone who reaches 0.0.0.0"),
        "{err}"
    );
}

/// Issue 15.4: when accept fails for lack of descriptors (EMFILE), the connections waiting in
/// the backlog are accepted once descriptors are free again, without any new connection to
/// wake the listener. Here the hard limit is 40 descriptors and `--max-tunnels` lets
/// intercept try more; every peer sends a bad version record, so each one it accepts is
/// closed: all 60 must see their connection closed.
#[test]
#[ignore = "needs root"]
fn accept_retries_after_emfile() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    require_root("accept_retries_after_emfile");
    let port = free_port();
    let log = tmp("emfile.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(BIN);
    cmd.args(["-F", "tcp and port 1", "-i", "lo", "-b", "127.0.0.1"])
        .args(["--max-tunnels", "1000", "--peer-tunnels", "1000", "-p"])
        .arg(port.to_string())
        .arg("-l")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 40,
                rlim_max: 40,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _g = Guard(cmd.spawn().unwrap());
    assert!(wait_listening(port), "not listening");
    let mut bad = [0u8; 14];
    bad[0] = 1; // a client address in the version record: refused and closed
    bad[7] = 6;
    let mut peers: Vec<TcpStream> = (0..60)
        .map(|_| {
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
            s.write_all(&bad).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = 0;
    while !peers.is_empty() && Instant::now() < deadline {
        peers.retain_mut(|s| {
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Ok(0) => false,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
                _ => true,
            }
        });
        closed = 60 - peers.len();
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(closed, 60, "peers left waiting in the backlog:\n{text}");
    assert!(text.contains("open files limit:40"), "{text}");
    assert!(
        text.contains("accept failed"),
        "EMFILE not reached:\n{text}"
    );
}

/// Runs intercept with `extra` options on a device that does not exist: it fails there; its
/// stderr.
fn run_without_device(extra: &[&str]) -> String {
    let port = free_port().to_string();
    let mut args = vec!["-F", "tcp", "-i", "nosuchdev0", "-p", &port];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("device could not work:nosuchdev0"), "{err}");
    err
}

#[test]
fn no_usable_device() {
    let err = run_without_device(&["-b", "127.0.0.1"]);
    assert!(
        err.contains("no device available for snooping packets"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root"]
fn listens_on_b_and_p_stops_on_signals_with_summary() {
    require_root("listens_on_b_and_p_stops_on_signals_with_summary");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let port = free_port();
        let log = tmp(&format!("run-{sig}.log"));
        let _ = std::fs::remove_file(&log);
        let child = Command::new(BIN)
            .args(["-F", "tcp and port 1", "-i", "lo", "-b", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut g = Guard(child);
        assert!(wait_listening(port), "not listening on 127.0.0.1:{port}");
        let t = Instant::now();
        signal(g.0.id() as i32, sig);
        let st = wait_exit(&mut g.0, Duration::from_secs(5)).expect("still running after signal");
        eprintln!("stopped {:?} after signal {sig}", t.elapsed());
        assert!(st.success(), "exit status {st:?}");
        let mut text = String::new();
        std::fs::File::open(&log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert!(text.contains("intercept version:1.0.0"));
        assert!(text.contains(&format!("sig {sig} received")));
        assert!(
            text.contains("total resp packs:0, all:0, route:0, sock write cnt:0"),
            "{text}"
        );
        assert!(text.contains("release_resources end"));
        for line in text.lines() {
            let b = line.as_bytes();
            assert!(
                b.len() > 26
                    && b[4] == b'/'
                    && b[7] == b'/'
                    && b[13] == b':'
                    && b[16] == b':'
                    && b[20] == b'+'
                    && b[25] == b'[',
                "line without the YYYY/MM/DD HH:MM:SS +mmm [level] prefix: {line}"
            );
        }
    }
}

#[test]
#[ignore = "needs root"]
fn daemon_detaches_and_writes_pid() {
    require_root("daemon_detaches_and_writes_pid");
    let port = free_port();
    let pid_file = tmp("daemon.pid");
    let log = tmp("daemon.log");
    let _ = std::fs::remove_file(&pid_file);
    let out = Command::new(BIN)
        .args([
            "-F",
            "tcp and port 1",
            "-i",
            "lo",
            "-b",
            "127.0.0.1",
            "-d",
            "-p",
        ])
        .arg(port.to_string())
        .arg("-P")
        .arg(&pid_file)
        .arg("-l")
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "parent exit {:?}", out.status);
    assert!(wait_listening(port), "daemon not listening");
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid: i32 = loop {
        if let Ok(s) = std::fs::read_to_string(&pid_file) {
            if let Ok(p) = s.trim().parse() {
                break p;
            }
        }
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(10));
    };
    // SAFETY: probing and then stopping the daemon we started.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "pid {pid} not alive");
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "daemon did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!pid_file.exists(), "pid file removed at exit");
}

/// Issue 15 point 11: with -d, a start-up step that fails after the fork (here the pid file,
/// which names a running process) still gives a non-zero exit and a message on the terminal.
#[test]
#[ignore = "needs root"]
fn daemon_start_failure_reaches_the_terminal() {
    require_root("daemon_start_failure_reaches_the_terminal");
    let port = free_port();
    let pid_file = tmp("busy.pid");
    // pid 1 always runs: the pid file is refused.
    std::fs::write(&pid_file, "1\n").unwrap();
    let out = Command::new(BIN)
        .args(["-F", "tcp and port 1", "-i", "lo", "-b", "127.0.0.1", "-d"])
        .arg("-p")
        .arg(port.to_string())
        .arg("-P")
        .arg(&pid_file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit {:?}: {err}", out.status);
    assert!(err.contains("process 1"), "{err}");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), "1\n");
    // Nothing stays behind listening.
    std::thread::sleep(Duration::from_millis(200));
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    std::fs::remove_file(&pid_file).unwrap();
}

/// Issue 15 point 11: SIGHUP reopens the log file (logrotate moved it) and does not end a
/// foreground intercept.
#[test]
#[ignore = "needs root"]
fn sighup_reopens_the_log_file() {
    require_root("sighup_reopens_the_log_file");
    let port = free_port();
    let log = tmp("hup.log");
    let rotated = tmp("hup.log.1");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&rotated);
    let child = Command::new(BIN)
        .args(["-F", "tcp and port 1", "-i", "lo", "-b", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("-l")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Guard(child);
    assert!(wait_listening(port), "not listening");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = child.0.id() as i32;
    signal(pid, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP ended intercept"
    );
    signal(pid, libc::SIGTERM);
    let status = wait_exit(&mut child.0, Duration::from_secs(5)).expect("no exit");
    assert!(status.success(), "{status:?}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&log).expect("log file not reopened");
    assert!(old.contains("intercept version"), "{old}");
    assert!(
        !new.contains("intercept version") && !new.is_empty(),
        "{new}"
    );
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&rotated);
}

/// Issue 16: the start-up warnings: a filter that cannot match a TCP answer.
#[test]
#[ignore = "needs root"]
fn a_filter_that_cannot_match_tcp_answers_is_warned_about() {
    require_root("a_filter_that_cannot_match_tcp_answers_is_warned_about");
    let port = free_port();
    let child = Command::new(BIN)
        .args(["-F", "udp and src port 53", "-b", "127.0.0.1", "-i", "lo"])
        .args(["-p", &port.to_string()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut g = Guard(child);
    assert!(wait_listening(port), "intercept did not listen");
    signal(g.0.id() as i32, libc::SIGTERM);
    let _ = wait_exit(&mut g.0, Duration::from_secs(10));
    let mut err = String::new();
    use std::io::Read;
    g.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(
        err.contains("matches none of the TCP answers tried"),
        "no filter warning in:\n{err}"
    );
}
