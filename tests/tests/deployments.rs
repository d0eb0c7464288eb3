//! Fewer hosts (issue 17): `intercept --route` on the target host itself.
//!
//! - Two hosts: online (nginx :80, Redis :6379, tcpcopy `-s TARGET`) and target (nginx :8080,
//!   Redis :6380, `intercept --route 203.0.113.0/24`), the client in a third namespace; the
//!   assistant host of the lab is taken off the network and the target's route to it removed.
//!   Every request is replayed, and the target is left as it was.
//! - One host: online nginx :80 and test nginx :8080 on one address, tcpcopy and intercept
//!   beside them in the same namespace; every request replayed, the namespace left as it was.
//! - What is not intercept's (a route to the prefix, a device of its name, another running
//!   `--route`) is refused and left alone; a SIGKILLed intercept leaves nothing and starts
//!   again; without CAP_NET_ADMIN the error says so.

mod real_common;

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use real_common::*;
use tc_e2e::lab::*;

const PREFIX: &str = "203.0.113.0/24";
const DEVICE: &str = "tcrs0";

/// The lab of lab.md turned into two hosts: the target's route to the assistant removed
/// (intercept routes the fake clients itself) and the assistant off the bridge.
fn two_host_lab() -> Lab {
    let lab = Lab::start();
    must(
        None,
        "root",
        10,
        "ip",
        &["-n", &lab.ns(TARGET), "route", "del", PREFIX],
        None,
    );
    must(
        None,
        "root",
        10,
        "ip",
        &["-n", &lab.ns(ASSIST), "link", "set", "eth0", "down"],
        None,
    );
    lab
}

/// What `--route` could touch in `host`: devices, addresses, routes of every table, the
/// IPv4 interface settings (rp_filter among them).
fn net_state(lab: &Lab, host: &str) -> String {
    let ns = lab.ns(host);
    let mut out = String::new();
    for args in [
        &["-o", "link", "show"][..],
        &["-o", "addr", "show"],
        &["-4", "route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
    ] {
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        // IPv6 link-local addresses and their routes come and go with the kernel's duplicate
        // address detection on a new namespace (`tentative`, then a local route): not ours.
        for line in must(None, "root", 10, "ip", &all, None).lines() {
            if !line.contains("fe80") {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.push_str(&must(
        Some(lab),
        host,
        10,
        "sysctl",
        &["-a", "-r", "^net\\.ipv4\\.(conf\\.|ip_forward)"],
        None,
    ));
    out
}

fn has_device(lab: &Lab, host: &str) -> bool {
    run(
        None,
        "root",
        10,
        "ip",
        &["-n", &lab.ns(host), "link", "show", DEVICE],
        None,
    )
    .status
    .success()
}

fn route_to_prefix(lab: &Lab, host: &str) -> String {
    must(
        None,
        "root",
        10,
        "ip",
        &["-n", &lab.ns(host), "route", "show", PREFIX],
        None,
    )
}

/// Starts `intercept --route PREFIX extra...` in `host` as `name`, listening on `listen`;
/// waits until its route is in place and it listens.
fn start_route_intercept(lab: &Lab, host: &str, name: &str, listen: SocketAddrV4, extra: &[&str]) {
    let port = listen.port().to_string();
    let mut args = vec!["--route", PREFIX, "-p", &port];
    args.extend_from_slice(extra);
    lab.spawn(host, name, &bin("intercept"), &args);
    let (up, _) = poll(Duration::from_secs(10), || {
        (
            lab.log(name)
                .contains(&format!("route {PREFIX} dev {DEVICE}"))
                || !lab.running(name),
            (),
        )
    });
    assert!(up && lab.running(name), "{name}: {}", lab.log(name));
    wait_tcp(lab, host, listen, name);
}

/// The HTTP workload from the client namespace against `base`: keep-alive (ab -k, curl),
/// short connections and POSTs; returns how many requests it made.
fn http_workload(lab: &Lab, base: &str, tmp: &Path) -> usize {
    ab_keepalive_and_short(lab, base);
    let body = tmp.join("post.txt");
    std::fs::write(&body, "field=value&".repeat(200)).unwrap();
    ab_ok(
        lab,
        &[
            "-q",
            "-k",
            "-n",
            "20",
            "-c",
            "2",
            "-p",
            s(&body),
            "-T",
            "application/x-www-form-urlencoded",
            &format!("{base}/index.html"),
        ],
    );
    must(
        Some(lab),
        CLIENT,
        30,
        "curl",
        &[
            "-s",
            "-f",
            "-o",
            "/dev/null",
            &format!("{base}/index.html?q=[1-10]"),
        ],
        None,
    );
    200 + 30 + 20 + 10
}

/// The target's access log must end with the online's requests (method, URL, status,
/// bytes), all from fake clients; returns the count.
fn assert_http_replayed(lab: &Lab, online_log: &Path, target_log: &Path, expected: usize) -> usize {
    let (settled, (online_n, online_reqs)) = poll(Duration::from_secs(5), || {
        let l = access_log(online_log);
        (l.0 >= expected, l)
    });
    assert!(
        settled && online_n == expected,
        "online served {online_n} of {expected}"
    );
    let (same, (target_n, target_reqs)) = poll(REPLAY_DEADLINE, || {
        let l = access_log(target_log);
        (l.1 == online_reqs, l)
    });
    assert!(
        same,
        "target served {target_n} requests, online {online_n}; differences e.g. {:?}\n{}",
        count_diff(&online_reqs, &target_reqs),
        replay_report(lab)
    );
    for ip in access_log_clients(target_log) {
        assert!(ip.starts_with("203.0.113."), "target request from {ip}");
    }
    target_n
}

#[test]
#[ignore = "needs root"]
fn two_hosts_replay_http_and_redis_with_intercept_on_the_target() {
    require_root("two_hosts_replay_http_and_redis_with_intercept_on_the_target");
    let tmp = TempDir::new("two-hosts");
    let lab = two_host_lab();
    let target_before = net_state(&lab, TARGET);
    let online_log = start_nginx(&lab, ONLINE, "nginx-online", 80, &tmp.sub("online"));
    let target_log = start_nginx(&lab, TARGET, "nginx-target", 8080, &tmp.sub("target"));
    let online_redis = start_redis(
        &lab,
        ONLINE,
        "redis-online",
        REDIS_ONLINE_PORT,
        &tmp.sub("redis-online"),
    );
    let target_redis = start_redis(
        &lab,
        TARGET,
        "redis-target",
        REDIS_TARGET_PORT,
        &tmp.sub("redis-target"),
    );
    start_route_intercept(
        &lab,
        TARGET,
        "intercept",
        SocketAddrV4::new(TARGET_IP, INTERCEPT_PORT),
        &["--allow", &ONLINE_IP.to_string()],
    );
    assert!(has_device(&lab, TARGET));
    assert!(route_to_prefix(&lab, TARGET).contains(DEVICE));
    let x = format!("80-{TARGET_IP}:8080,{REDIS_ONLINE_PORT}-{TARGET_IP}:{REDIS_TARGET_PORT}");
    start_tcpcopy_args(
        &lab,
        &["-s", &TARGET_IP.to_string(), "-x", &x, "-c", "203.0.113.x"],
    );

    let expected = http_workload(&lab, &format!("http://{ONLINE_IP}"), tmp.path());
    // Redis: pipelined and plain INCRs over kept connections, and short connections.
    let (host, port) = (ONLINE_IP.to_string(), REDIS_ONLINE_PORT.to_string());
    must(
        Some(&lab),
        CLIENT,
        30,
        "redis-benchmark",
        &[
            "-h", &host, "-p", &port, "-c", "3", "-n", "150", "-q", "INCR", "counter",
        ],
        None,
    );
    for i in 0..10 {
        must(
            Some(&lab),
            CLIENT,
            10,
            "redis-cli",
            &["-h", &host, "-p", &port, "SET", &format!("short:{i}"), "v"],
            None,
        );
    }
    let served = assert_http_replayed(&lab, &online_log, &target_log, expected);
    let online_data = redis_dump(&online_redis);
    assert_eq!(online_data.len(), 11, "{online_data:?}");
    let (same, target_data) = poll(REPLAY_DEADLINE, || {
        let d = redis_dump(&target_redis);
        (d == online_data, d)
    });
    assert!(
        same,
        "redis: target {target_data:?}, online {online_data:?}\n{}",
        replay_report(&lab)
    );

    // A graceful stop removes the route and the device: the target is as it was.
    let code = lab.stop("intercept", libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", lab.log("intercept"));
    assert!(lab.log("intercept").contains(&format!(
        "removed the route {PREFIX} and the device {DEVICE}"
    )));
    assert_eq!(net_state(&lab, TARGET), target_before, "target changed");
    eprintln!(
        "two hosts: {served} HTTP requests and {} Redis keys replayed in full",
        online_data.len()
    );
}

#[test]
#[ignore = "needs root"]
fn one_host_replays_http_to_a_test_server_beside_the_online_one() {
    require_root("one_host_replays_http_to_a_test_server_beside_the_online_one");
    let tmp = TempDir::new("one-host");
    let lab = Lab::start();
    let host = ONLINE;
    let before = net_state(&lab, host);
    let online_log = start_nginx(&lab, host, "nginx-online", 80, &tmp.sub("online"));
    // The test server: same host, same address, another port.
    let target_log = start_nginx(&lab, host, "nginx-target", 8080, &tmp.sub("target"));
    let control = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, INTERCEPT_PORT);
    start_route_intercept(&lab, host, "intercept", control, &["-b", "127.0.0.1"]);
    let x = format!("80-{ONLINE_IP}:8080");
    start_tcpcopy_args(&lab, &["-s", "127.0.0.1", "-x", &x, "-c", "203.0.113.x"]);

    let expected = http_workload(&lab, &format!("http://{ONLINE_IP}"), tmp.path());
    let served = assert_http_replayed(&lab, &online_log, &target_log, expected);

    let code = lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", lab.log("tcpcopy"));
    let code = lab.stop("intercept", libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", lab.log("intercept"));
    assert_eq!(net_state(&lab, host), before, "the namespace changed");
    eprintln!("one host: {served} HTTP requests replayed in full");
}

fn intercept_once(lab: &Lab, host: &str, program: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = run(Some(lab), host, 10, program, args, None);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
#[ignore = "needs root"]
fn route_refuses_what_is_not_its_own_and_recovers_from_sigkill() {
    require_root("route_refuses_what_is_not_its_own_and_recovers_from_sigkill");
    let lab = Lab::start();
    let intercept = bin("intercept");
    let exe = intercept.to_str().unwrap();
    let listen = |port: u16| SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
    let args = |port: &'static str| vec![exe, "--route", PREFIX, "-b", "127.0.0.1", "-p", port];

    // The three-host lab's route to the assistant is not intercept's: refused, untouched.
    let (code, text) = intercept_once(&lab, TARGET, exe, &args("36601")[1..]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "a route to {PREFIX} already exists ({PREFIX} via {ASSIST_IP} dev eth0)"
        )),
        "{text}"
    );
    assert!(route_to_prefix(&lab, TARGET).contains(&ASSIST_IP.to_string()));
    assert!(!has_device(&lab, TARGET));

    // No CAP_NET_ADMIN: the error names it, nothing is created.
    let mut no_cap = vec!["--inh-caps=-all", "--bounding-set=-net_admin"];
    no_cap.extend(args("36602"));
    let (code, text) = intercept_once(&lab, ONLINE, "setpriv", &no_cap);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("needs CAP_NET_ADMIN"), "{text}");
    assert!(!has_device(&lab, ONLINE));

    // A device of its name that is not its own (persistent, as `ip tuntap add` makes it):
    // refused and left there.
    must(
        Some(&lab),
        ONLINE,
        10,
        "ip",
        &["tuntap", "add", DEVICE, "mode", "tun"],
        None,
    );
    let (code, text) = intercept_once(&lab, ONLINE, exe, &args("36603")[1..]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("a persistent TUN device tcrs0 exists"),
        "{text}"
    );
    assert!(
        has_device(&lab, ONLINE),
        "someone else's device was removed"
    );
    must(
        None,
        "root",
        10,
        "ip",
        &["-n", &lab.ns(ONLINE), "link", "del", DEVICE],
        None,
    );

    // A second intercept --route beside a running one is refused; the first keeps running.
    let before = net_state(&lab, ONLINE);
    start_route_intercept(&lab, ONLINE, "first", listen(36604), &["-b", "127.0.0.1"]);
    let (code, text) = intercept_once(&lab, ONLINE, exe, &args("36605")[1..]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("another intercept --route?"), "{text}");
    assert!(lab.running("first") && has_device(&lab, ONLINE));

    // SIGKILL: the kernel deletes the device and its route with the descriptor; the next
    // start works, and a graceful stop leaves the namespace as it was.
    assert_eq!(
        lab.stop("first", libc::SIGKILL, Duration::from_secs(10)),
        None
    );
    assert!(!has_device(&lab, ONLINE), "device left after SIGKILL");
    assert_eq!(
        route_to_prefix(&lab, ONLINE).trim(),
        "",
        "route left after SIGKILL"
    );
    start_route_intercept(&lab, ONLINE, "again", listen(36606), &["-b", "127.0.0.1"]);
    assert!(route_to_prefix(&lab, ONLINE).contains(DEVICE));
    assert_eq!(
        lab.stop("again", libc::SIGTERM, Duration::from_secs(10)),
        Some(0),
        "{}",
        lab.log("again")
    );
    assert_eq!(net_state(&lab, ONLINE), before, "the namespace changed");
}
