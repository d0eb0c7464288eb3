//! Issue 16: `tcpcopy --check` and the running verdict name the broken hop of the lab
//! (lab.md) for each of four misconfigurations, and a healthy lab passes the check leaving
//! no connection at the target. Needs root.

use std::net::SocketAddrV4;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tc_e2e::lab::*;

const ONLINE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const INTERCEPT_PORT: u16 = 36524;

fn transfer() -> String {
    format!("{ONLINE_PORT}-{TARGET_IP}:{TARGET_PORT}")
}

fn start_intercept(lab: &Lab, name: &str, filter_port: u16) {
    let filter = format!("tcp and src port {filter_port}");
    lab.spawn(
        ASSIST,
        name,
        &bin("intercept"),
        &[
            "-F",
            &filter,
            "-i",
            "eth0",
            "--allow",
            &ONLINE_IP.to_string(),
        ],
    );
    assert!(
        lab.wait_listening(
            ONLINE,
            SocketAddrV4::new(ASSIST_IP, INTERCEPT_PORT),
            Duration::from_secs(10)
        ),
        "intercept does not listen: {}",
        lab.log(name)
    );
}

/// The target's route to the fake clients via the intercept host (lab.md): "add" or "del".
fn fake_client_route(lab: &Lab, verb: &str) {
    ip(
        lab,
        TARGET,
        &[
            "route",
            verb,
            "203.0.113.0/24",
            "via",
            &ASSIST_IP.to_string(),
        ],
    );
}

fn target_server(lab: &Lab) -> Server {
    Server::start(
        lab,
        TARGET,
        SocketAddrV4::new(TARGET_IP, TARGET_PORT),
        false,
    )
}

fn sysctl(lab: &Lab, host: &str, setting: &str) {
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(host),
            "sysctl",
            "-q",
            "-w",
            setting,
        ])
        .status()
        .unwrap();
    assert!(st.success(), "sysctl {setting}");
}

fn ip(lab: &Lab, host: &str, args: &[&str]) {
    let st = Command::new("ip")
        .args(["-n", &lab.ns(host)])
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// Runs `tcpcopy --check` on online: (exit status, stdout, elapsed).
fn check(lab: &Lab) -> (i32, String, Duration) {
    check_with(lab, &[])
}

fn check_with(lab: &Lab, extra: &[&str]) -> (i32, String, Duration) {
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["30", "ip", "netns", "exec", &lab.ns(ONLINE)])
        .arg(bin("tcpcopy"))
        .args([
            "--check",
            "-x",
            &transfer(),
            "-s",
            &ASSIST_IP.to_string(),
            "-c",
            "203.0.113.x",
        ])
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text, started.elapsed())
}

/// The target's TCP sockets (`ss -tan`), to see what the probe left behind.
fn target_sockets(lab: &Lab) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(TARGET), "ss", "-tan"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `text` that names the broken hop (a `[FAIL]` line containing `what`).
fn assert_named(text: &str, what: &str, context: &str) {
    assert!(
        text.lines().any(|l| l.contains("FAIL") && l.contains(what)),
        "{context}: no FAIL line with {what:?} in:\n{text}"
    );
}

#[test]
#[ignore = "needs root"]
fn check_names_each_misconfiguration_and_passes_a_healthy_lab() {
    require_root("diagnosis::check");
    let lab = Lab::start();
    let _target = target_server(&lab);
    start_intercept(&lab, "intercept", TARGET_PORT);

    // Healthy: exit 0, and nothing left at the target from the probe.
    let (code, text, took) = check(&lab);
    assert_eq!(code, 0, "healthy lab: {text}");
    assert!(text.contains("SYN-ACK"), "{text}");
    assert!(text.contains("tcpcopy-rs intercept"), "{text}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left = target_sockets(&lab);
    while left.contains("203.0.113.") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = target_sockets(&lab);
    }
    assert!(
        !left.contains("203.0.113."),
        "the probe left a connection at the target:\n{left}"
    );

    // A variant mismatch (tcpcopy --payload, intercept without): named, with the fix.
    let (code, text, _) = check_with(&lab, &["--payload"]);
    assert_eq!(code, 1, "{text}");
    assert_named(&text, "same --payload", "variant mismatch");

    // 1. The target does not route the fake clients to the intercept host.
    fake_client_route(&lab, "del");
    let (code, text, took) = check(&lab);
    eprintln!("--- check ({took:?}):\n{text}");
    assert_eq!(code, 1, "{text}");
    assert_named(&text, "route", "no route on the target");
    assert!(
        text.contains("on the target: ip route add 203.0.113.0/24 via 198.18.0.40"),
        "{text}"
    );
    fake_client_route(&lab, "add");

    // 2. The intercept host forwards.
    sysctl(&lab, ASSIST, "net.ipv4.ip_forward=1");
    let (code, text, took) = check(&lab);
    eprintln!("--- check ({took:?}):\n{text}");
    sysctl(&lab, ASSIST, "net.ipv4.ip_forward=0");
    assert_eq!(code, 1, "{text}");
    assert_named(&text, "ip_forward=1", "ip_forward on the intercept host");

    // 3. The target port is closed.
    drop(_target);
    let (code, text, took) = check(&lab);
    eprintln!("--- check ({took:?}):\n{text}");
    assert_eq!(code, 1, "{text}");
    assert_named(&text, "closed", "target port closed");
    let _target = target_server(&lab);

    // 4. intercept's filter on the wrong port.
    lab.stop("intercept", libc::SIGTERM, Duration::from_secs(10));
    start_intercept(&lab, "intercept-wrong", TARGET_PORT + 1);
    let (code, text, took) = check(&lab);
    eprintln!("--- check ({took:?}):\n{text}");
    assert_eq!(code, 1, "{text}");
    assert_named(&text, "filter", "intercept -F on the wrong port");
    assert!(text.contains("src port 8080"), "{text}");
    // The target answered where intercept did not look: the probe was reset all the same.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left = target_sockets(&lab);
    while left.contains("203.0.113.") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = target_sockets(&lab);
    }
    assert!(
        !left.contains("203.0.113."),
        "the probe left a connection at the target:\n{left}"
    );
}

/// A client making one short connection every 100 ms to online until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(lab: &Lab) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = lab.thread_in(CLIENT, move || {
            let online = SocketAddrV4::new(ONLINE_IP, ONLINE_PORT);
            for i in 0..600 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let _ = converse(online, &format!("t{i}"), false, &[(10, 10)], Duration::ZERO);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts tcpcopy, waits for its start-up probe's finding with `startup` (within 10 s), runs
/// traffic and waits for the running verdict naming `verdict`: within 10 s of the traffic.
/// (With `verdict` None the sessions work, as with ip_forward=1 in the lab: only the start-up
/// probe can tell.)
fn running_verdict(lab: &Lab, name: &str, startup: &str, verdict: Option<&str>) {
    let spawned = Instant::now();
    lab.spawn(
        ONLINE,
        name,
        &bin("tcpcopy"),
        &[
            "-x",
            &transfer(),
            "-s",
            &ASSIST_IP.to_string(),
            "-c",
            "203.0.113.x",
        ],
    );
    wait_for(
        Duration::from_secs(15),
        || {
            let log = lab.log(name);
            assert!(lab.running(name), "tcpcopy stopped: {log}");
            log.lines()
                .any(|l| l.contains("start-up probe: [FAIL]") && l.contains(startup))
        },
        || {
            format!(
                "{name}: start-up probe finding {startup:?}: {}",
                lab.log(name)
            )
        },
    );
    assert!(
        spawned.elapsed() <= Duration::from_secs(10),
        "{name}: start-up probe took {:?}",
        spawned.elapsed()
    );
    let Some(verdict) = verdict else {
        lab.stop(name, libc::SIGTERM, Duration::from_secs(10));
        return;
    };
    let traffic = Traffic::start(lab);
    let started = Instant::now();
    wait_for(
        Duration::from_secs(12),
        || {
            lab.log(name)
                .lines()
                .any(|l| l.contains("verdict (sessions failing") && l.contains(verdict))
        },
        || format!("{name}: running verdict {verdict:?}: {}", lab.log(name)),
    );
    let took = started.elapsed();
    drop(traffic);
    for l in lab
        .log(name)
        .lines()
        .filter(|l| l.contains("probe: [") || l.contains("verdict ("))
    {
        eprintln!("{name} after {took:?}: {l}");
    }
    assert!(
        took <= Duration::from_secs(10),
        "{name}: the verdict took {took:?}: {}",
        lab.log(name)
    );
    lab.stop(name, libc::SIGTERM, Duration::from_secs(10));
}

#[test]
#[ignore = "needs root"]
fn a_running_tcpcopy_names_the_broken_hop_within_10_s() {
    require_root("diagnosis::running");
    let lab = Lab::start();
    let _online = Server::start(
        &lab,
        ONLINE,
        SocketAddrV4::new(ONLINE_IP, ONLINE_PORT),
        false,
    );
    let target = target_server(&lab);
    start_intercept(&lab, "intercept", TARGET_PORT);

    fake_client_route(&lab, "del");
    running_verdict(
        &lab,
        "tcpcopy-route",
        "route",
        Some("ip route add 203.0.113.0/24"),
    );
    fake_client_route(&lab, "add");

    sysctl(&lab, ASSIST, "net.ipv4.ip_forward=1");
    running_verdict(&lab, "tcpcopy-forward", "ip_forward=1", None);
    sysctl(&lab, ASSIST, "net.ipv4.ip_forward=0");

    drop(target);
    running_verdict(&lab, "tcpcopy-closed", "closed", Some("closed"));
    let _target = target_server(&lab);

    lab.stop("intercept", libc::SIGTERM, Duration::from_secs(10));
    start_intercept(&lab, "intercept-wrong", TARGET_PORT + 1);
    running_verdict(&lab, "tcpcopy-filter", "filter", Some("filter"));
}
