//! tcpcopy as a process in a network namespace of its own (needs root for the raw sockets and
//! the namespace): control tunnels, losing intercepts with and without -L, signals, daemon and
//! pid file. The fake intercept is a listener the test opens inside the namespace; nothing is
//! routable there, so nothing can leave the machine.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tc_test_support::require_root;

const VERSION_RECORD: [u8; 14] = [0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0];

/// A network namespace with only `lo` up, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "tcxp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// A listener on 127.0.0.1:`port` inside the namespace (setns on a scratch thread: the
    /// network namespace is per thread, the socket keeps it).
    fn listen(&self, port: u16) -> TcpListener {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let l = TcpListener::bind(("127.0.0.1", port)).expect("bind fake intercept");
            l.set_nonblocking(true).unwrap();
            l
        })
        .join()
        .expect("listener thread")
    }

    fn spawn_tcpcopy(&self, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_tcpcopy")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpcopy")
    }

    /// tcpcopy copying port 1 with the fake intercept at 127.0.0.1, plus `extra`.
    fn spawn_copy(&self, extra: &[&str]) -> Child {
        let mut args = vec!["-x", X, "-s", "127.0.0.1"];
        args.extend_from_slice(extra);
        self.spawn_tcpcopy(&args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &[&str]) {
    let st = Command::new(cmd[0]).args(&cmd[1..]).status().expect(cmd[0]);
    assert!(st.success(), "{cmd:?} failed");
}

/// Kills the child on drop (for failing tests).
struct Guard(Option<Child>);

impl Guard {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
    fn signal(&mut self, sig: i32) {
        // SAFETY: kill on the pid of our own child.
        unsafe { libc::kill(self.child().id() as i32, sig) };
    }
    fn wait_exit(&mut self, within: Duration) -> Option<(i32, String)> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child().try_wait().unwrap() {
                let mut err = String::new();
                let mut child = self.0.take().unwrap();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                let _ = child.wait();
                return Some((status.code().unwrap_or(-1), err));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Accepts `n` tunnels within `within` and checks each starts with the version record.
fn accept_tunnels(l: &TcpListener, n: usize, within: Duration) -> Vec<TcpStream> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} tunnels",
            out.len()
        );
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                out.push(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    for s in &mut out {
        let mut v = [0u8; 14];
        s.read_exact(&mut v).unwrap();
        assert_eq!(v, VERSION_RECORD);
    }
    out
}

const X: &str = "1-198.18.0.30:8080";

/// Root check, a namespace with a fake intercept on the default port, and a scratch folder
/// named after `what`.
fn lab_with_dir(what: &str) -> (Netns, TcpListener, PathBuf) {
    require_root(what);
    let ns = Netns::new();
    let l = ns.listen(36524);
    let dir = std::env::temp_dir().join(format!("tcpcopy-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    (ns, l, dir)
}

#[test]
#[ignore = "needs root"]
fn losing_every_intercept_without_l_ends_the_run() {
    require_root("losing_every_intercept_without_l_ends_the_run");
    let ns = Netns::new();
    let l = ns.listen(36524);
    let mut tc = Guard(Some(ns.spawn_tcpcopy(&[
        "-x",
        X,
        "-s",
        "127.0.0.1",
        "-C",
        "3",
    ])));
    let tunnels = accept_tunnels(&l, 3, Duration::from_secs(10));
    drop(tunnels);
    let (code, err) = tc
        .wait_exit(Duration::from_secs(10))
        .expect("tcpcopy did not stop after losing its intercept");
    // A graceful shutdown, exit 0 as the original (spec 5.5, 10), the reason on stderr.
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("every intercept is gone"), "{err}");
}

#[test]
#[ignore = "needs root"]
fn with_l_it_keeps_running_and_reconnects() {
    require_root("with_l_it_keeps_running_and_reconnects");
    let ns = Netns::new();
    let l = ns.listen(36524);
    let mut tc = Guard(Some(ns.spawn_tcpcopy(&["-x", X, "-s", "127.0.0.1", "-L"])));
    let tunnels = accept_tunnels(&l, 2, Duration::from_secs(10));
    drop(tunnels);
    // Reconnect period is 12 s.
    let again = accept_tunnels(&l, 2, Duration::from_secs(20));
    assert!(tc.child().try_wait().unwrap().is_none(), "tcpcopy exited");
    tc.signal(libc::SIGTERM);
    let (code, err) = tc.wait_exit(Duration::from_secs(10)).expect("no exit");
    drop(again);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sig 15 received"), "{err}");
    assert!(err.contains("all clt:"), "final statistics missing: {err}");
    assert!(err.contains("connects:4,disconnects:2"), "{err}");
    // The original's resource lines (spec 9.3) at exit.
    for line in ["user time used:", "sys  time used:", "max memory size:"] {
        assert!(err.contains(line), "{line} missing: {err}");
    }
}

#[test]
#[ignore = "needs root"]
fn sigint_is_a_graceful_exit() {
    require_root("sigint_is_a_graceful_exit");
    let ns = Netns::new();
    let l = ns.listen(4000);
    let mut tc = Guard(Some(ns.spawn_tcpcopy(&[
        "-x",
        X,
        "-s",
        "127.0.0.1",
        "-p",
        "4000",
        "--capture",
        "pcap",
        "-i",
        "lo",
    ])));
    let _tunnels = accept_tunnels(&l, 2, Duration::from_secs(10));
    tc.signal(libc::SIGINT);
    let (code, err) = tc.wait_exit(Duration::from_secs(10)).expect("no exit");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sig 2 received"), "{err}");
    assert!(err.contains("filter = tcp and ((dst port 1))"), "{err}");
}

#[test]
#[ignore = "needs root"]
fn daemon_writes_its_pid_file() {
    let (ns, l, dir) = lab_with_dir("daemon_writes_its_pid_file");
    let pid_file: PathBuf = dir.join("tcpcopy.pid");
    let log_file: PathBuf = dir.join("tcpcopy.log");
    let mut parent = Guard(Some(ns.spawn_copy(&[
        "-d",
        "-P",
        pid_file.to_str().unwrap(),
        "-l",
        log_file.to_str().unwrap(),
    ])));
    let (code, _) = parent
        .wait_exit(Duration::from_secs(10))
        .expect("the foreground process did not exit");
    assert_eq!(code, 0);
    let _tunnels = accept_tunnels(&l, 2, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: signal 0 only checks the process exists; SIGTERM stops the daemon we started.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "daemon {pid} not running");
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_file.exists() {
        assert!(Instant::now() < deadline, "pid file not removed at exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(&log_file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(log.contains("sig 15 received"), "{log}");
    assert!(log.contains("tcpcopy version:1.3.0"), "{log}");
}

/// Issue 15 point 11: with -d, a start-up step that fails after the fork (the pid file names
/// a running process) gives a non-zero exit and the message on the terminal.
#[test]
#[ignore = "needs root"]
fn daemon_start_failure_reaches_the_terminal() {
    let (ns, l, dir) = lab_with_dir("daemon_start_failure_reaches_the_terminal");
    let pid_file: PathBuf = dir.join("busy.pid");
    // pid 1 always runs: the pid file is refused.
    std::fs::write(&pid_file, "1\n").unwrap();
    let mut parent = Guard(Some(ns.spawn_copy(&[
        "-d",
        "-P",
        pid_file.to_str().unwrap(),
    ])));
    let (code, err) = parent
        .wait_exit(Duration::from_secs(15))
        .expect("the foreground process did not exit");
    let kept = std::fs::read_to_string(&pid_file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("process 1"), "{err}");
    assert_eq!(kept, "1\n");
    drop(l);
}

/// Issue 15 point 11: SIGHUP with -l reopens the log file (logrotate moved it); tcpcopy runs
/// on.
#[test]
#[ignore = "needs root"]
fn sighup_reopens_the_log_file() {
    let (ns, l, dir) = lab_with_dir("sighup_reopens_the_log_file");
    let log_file: PathBuf = dir.join("tcpcopy.log");
    let rotated: PathBuf = dir.join("tcpcopy.log.1");
    let mut tc = Guard(Some(ns.spawn_copy(&["-l", log_file.to_str().unwrap()])));
    let _tunnels = accept_tunnels(&l, 2, Duration::from_secs(10));
    std::fs::rename(&log_file, &rotated).unwrap();
    tc.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        tc.child().try_wait().unwrap().is_none(),
        "SIGHUP ended tcpcopy"
    );
    tc.signal(libc::SIGTERM);
    let (code, err) = tc.wait_exit(Duration::from_secs(10)).expect("no exit");
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&log_file).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(old.contains("tcpcopy version:1.3.0"), "{old}");
    assert!(!old.contains("sig 15 received"), "{old}");
    assert!(new.contains("SIGHUP: log file reopened"), "{new}");
    assert!(new.contains("sig 15 received"), "{new}");
}

#[test]
#[ignore = "needs root"]
fn offline_replay_runs_its_passes_and_exits_zero() {
    require_root("offline_replay_runs_its_passes_and_exits_zero");
    let ns = Netns::new();
    let l = ns.listen(36524);
    let dir = std::env::temp_dir().join(format!("tcpcopy-offline-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("two.pcap");
    {
        // Two raw-IP TCP packets (to port 1 and port 2) 200 ms apart.
        let dead = pcap::Capture::dead(pcap::Linktype(12)).unwrap();
        let mut out = dead.savefile(&file).unwrap();
        for (i, port) in [1u16, 2].iter().enumerate() {
            let mut p = [0u8; 40];
            p[0] = 0x45;
            p[3] = 40;
            p[8] = 64;
            p[9] = 6;
            p[12..16].copy_from_slice(&[203, 0, 113, 1]);
            p[16..20].copy_from_slice(&[198, 18, 0, 20]);
            p[20..22].copy_from_slice(&40000u16.to_be_bytes());
            p[22..24].copy_from_slice(&port.to_be_bytes());
            p[32] = 0x50;
            p[33] = 0x02;
            let header = pcap::PacketHeader {
                ts: libc::timeval {
                    tv_sec: 1000,
                    tv_usec: (i as libc::suseconds_t) * 200_000,
                },
                caplen: 40,
                len: 40,
            };
            out.write(&pcap::Packet::new(&header, &p));
        }
        out.flush().unwrap();
    }
    let started = Instant::now();
    let mut tc = Guard(Some(ns.spawn_tcpcopy(&[
        "-x",
        X,
        "-s",
        "127.0.0.1",
        "-i",
        file.to_str().unwrap(),
        "-T",
        "2",
        "--offline-tail",
        "1",
    ])));
    let _tunnels = accept_tunnels(&l, 2, Duration::from_secs(10));
    let (code, err) = tc
        .wait_exit(Duration::from_secs(20))
        .expect("offline replay did not finish");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 0, "{err}");
    // Two passes of 200 ms plus 1 s tail each.
    assert!(started.elapsed() >= Duration::from_millis(2400), "{err}");
    assert!(err.contains("offline replay is complete"), "{err}");
    assert!(
        err.contains("offline read:4,dispatched:4,truncated:0,unsupported link:0,passes done:2"),
        "{err}"
    );
}

/// `-m`: the resident memory is checked every 60 s; above the limit tcpcopy stops (graceful
/// teardown, non-zero exit, clear message). Takes about a minute.
#[test]
#[ignore = "needs root"]
fn memory_limit_stops_the_run() {
    require_root("memory_limit_stops_the_run");
    let ns = Netns::new();
    let l = ns.listen(36524);
    let mut tc = Guard(Some(ns.spawn_tcpcopy(&[
        "-x",
        X,
        "-s",
        "127.0.0.1",
        "-m",
        "1",
    ])));
    let _tunnels = accept_tunnels(&l, 2, Duration::from_secs(10));
    let (code, err) = tc
        .wait_exit(Duration::from_secs(75))
        .expect("tcpcopy ignored its memory limit");
    // A graceful shutdown, exit 0 as the original (spec 5.5, 10), the reason on stderr.
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("occupies too much memory, limit:1024 KB"),
        "{err}"
    );
    assert!(err.contains("exceeds the -m limit"), "{err}");
    assert!(err.contains("all clt:"), "no final statistics: {err}");
}
