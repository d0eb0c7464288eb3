//! `tcpcopy --udp` end to end (issue 21): a real DNS server (dnsmasq) on online and on the
//! target, a real client load (dnsperf from the client host), and the queries counted in the
//! target's dnsmasq query log: every query of the load must reach the target once, live (raw
//! socket and pcap capture) and offline (a tcpdump recording replayed with `-i`). Part of the
//! load are queries larger than the lab's 1500-byte MTU (a 2000-byte EDNS option): they cross
//! the wire as IPv4 fragments, and must be counted once each at the target (whole, never half),
//! and in tcpcopy's statistics as datagrams sent in fragments.
//!
//! Needs root and dnsmasq, dnsperf and tcpdump (scripts/test.sh installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tc_e2e::lab::*;

/// Small queries and large (fragmented) queries of one load.
const SMALL: usize = 300;
const LARGE: usize = 20;
/// Bytes of the EDNS option that makes a query larger than the MTU.
const LARGE_OPTION: usize = 2000;

const TOOLS: [&str; 3] = ["dnsmasq", "dnsperf", "tcpdump"];

/// Starts dnsmasq in `host` on `ip:53`, answering every name under udp.test itself and
/// logging each query to its stderr (the lab log `name`).
fn dnsmasq(lab: &Lab, host: &str, name: &str, ip: &str) {
    let listen = format!("--listen-address={ip}");
    lab.spawn(
        host,
        name,
        &PathBuf::from("/usr/sbin/dnsmasq"),
        &[
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--user=root",
            "--port=53",
            &listen,
            "--bind-interfaces",
            "--address=/udp.test/198.18.0.99",
            // Large queries: dnsmasq's receive buffer follows its EDNS size.
            "--edns-packet-max=4096",
            "--log-queries",
            "--log-facility=-",
        ],
    );
    wait_for(
        Duration::from_secs(10),
        || lab.log(name).contains("started"),
        || format!("dnsmasq {name} did not start: {}", lab.log(name)),
    );
}

/// Starts tcpdump in online (lab log "tcpdump"), recording what `filter` keeps of eth0 to
/// `file`, every packet written at once; waits until it listens.
fn record(lab: &Lab, file: &str, filter: &str) {
    lab.spawn(
        ONLINE,
        "tcpdump",
        &PathBuf::from("/usr/bin/tcpdump"),
        &[
            "-Z",
            "root",
            "-U",
            "--immediate-mode",
            "-i",
            "eth0",
            "-s",
            "4096",
            "-w",
            file,
            filter,
        ],
    );
    wait_for(
        Duration::from_secs(10),
        || lab.log("tcpdump").contains("listening on"),
        || format!("tcpdump: {}", lab.log("tcpdump")),
    );
}

/// Replays the recording `file` with `tcpcopy --udp -x x -c clients -a 10` in online (lab
/// log `name`) until it ends by itself; its log, which must say the replay is complete.
fn replay_offline(lab: &Lab, name: &str, x: &str, clients: &str, file: &str) -> String {
    lab.spawn(
        ONLINE,
        name,
        &bin("tcpcopy"),
        &["--udp", "-x", x, "-c", clients, "-i", file, "-a", "10"],
    );
    wait_for(
        Duration::from_secs(60),
        || !lab.running(name),
        || format!("offline tcpcopy did not finish: {}", lab.log(name)),
    );
    let log = lab.log(name);
    assert!(log.contains("offline replay is complete"), "{log}");
    log
}

/// Queries for names starting with `prefix` logged by the dnsmasq whose lab log is `log`,
/// from `from` (a prefix of the client address).
fn queries(lab: &Lab, log: &str, prefix: &str, from: &str) -> usize {
    let (name, client) = (format!("query[A] {prefix}"), format!(" from {from}"));
    lab.log(log)
        .lines()
        .filter(|l| l.contains(&name) && l.contains(&client))
        .count()
}

/// Distinct names: `<tag>-<i>.udp.test`; counted by the prefix `<tag>-`.
fn query_file(dir: &Path, tag: &str, n: usize) -> PathBuf {
    let path = dir.join(format!("{tag}.txt"));
    let text: String = (0..n).map(|i| format!("{tag}-{i}.udp.test A\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs dnsperf in the client host against `server` (online): each query of `file` once, at
/// most 500 a second, `option` an EDNS option to add. Returns the queries it saw answered.
fn dnsperf(lab: &Lab, server: &str, file: &Path, option: Option<&str>) -> usize {
    let file = file.to_str().unwrap().to_string();
    let mut args: Vec<String> = [
        "netns",
        "exec",
        &lab.ns(CLIENT),
        "timeout",
        "60",
        "dnsperf",
        "-s",
        server,
        "-p",
        "53",
        "-d",
        &file,
        "-n",
        "1",
        "-Q",
        "500",
        "-t",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(o) = option {
        args.push("-E".into());
        args.push(o.into());
    }
    let out = Command::new("ip").args(&args).output().expect("dnsperf");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dnsperf: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Queries completed:")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no 'Queries completed' in dnsperf's output: {text}"))
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tc-udp-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn large_option() -> String {
    format!("65001:{}", "ab".repeat(LARGE_OPTION))
}

/// Runs the load (small then large queries) from the client; both must be fully answered by
/// online.
fn client_load(lab: &Lab, dir: &Path, tag: &str) {
    client_load_to(lab, dir, tag, "198.18.0.20", "198.18.0.10");
}

/// [`client_load`] to the online address `server`, from the client address `client`.
fn client_load_to(lab: &Lab, dir: &Path, tag: &str, server: &str, client: &str) {
    let small = query_file(dir, &format!("{tag}s"), SMALL);
    let large = query_file(dir, &format!("{tag}l"), LARGE);
    assert_eq!(
        dnsperf(lab, server, &small, None),
        SMALL,
        "online answered every small query"
    );
    assert_eq!(
        dnsperf(lab, server, &large, Some(&large_option())),
        LARGE,
        "online answered every large query"
    );
    // dnsmasq writes its log lines when it has time: wait for them (bounded).
    for (prefix, n) in [(format!("{tag}s-"), SMALL), (format!("{tag}l-"), LARGE)] {
        wait_for(
            Duration::from_secs(5),
            || queries(lab, "dns-online", &prefix, client) >= n,
            || format!("online's log: {}", lab.log("dns-online")),
        );
        assert_eq!(queries(lab, "dns-online", &prefix, client), n);
    }
}

/// Waits until the target logged every query of the load tagged `tag` from the fake clients
/// 203.0.113.x, then checks none came twice.
fn target_got_everything(lab: &Lab, tag: &str) {
    target_got_everything_from(lab, tag, "203.0.113.");
}

/// [`target_got_everything`] from the fake clients whose addresses start with `from`.
fn target_got_everything_from(lab: &Lab, tag: &str, from: &str) {
    let (s, l) = (format!("{tag}s-"), format!("{tag}l-"));
    wait_for(
        Duration::from_secs(20),
        || {
            queries(lab, "dns-target", &s, from) >= SMALL
                && queries(lab, "dns-target", &l, from) >= LARGE
        },
        || {
            format!(
                "target got {} of {SMALL} small and {} of {LARGE} large queries\ntcpcopy: {}",
                queries(lab, "dns-target", &s, from),
                queries(lab, "dns-target", &l, from),
                lab.log("tcpcopy")
            )
        },
    );
    assert_eq!(
        queries(lab, "dns-target", &s, ""),
        SMALL,
        "no small query twice"
    );
    assert_eq!(
        queries(lab, "dns-target", &l, ""),
        LARGE,
        "no large query twice"
    );
}

/// The value after `key` in tcpcopy's last statistics line that has it.
fn stat(log: &str, key: &str) -> u64 {
    log.lines()
        .rev()
        .find_map(|l| {
            let at = l.find(key)? + key.len();
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {key} in tcpcopy's log:\n{log}"))
}

/// Stops tcpcopy (SIGTERM: statistics at exit) and checks its counts: every datagram
/// captured once, the large ones sent in two fragments each, nothing dropped on the way.
fn check_tcpcopy_counts(lab: &Lab, reassembled: bool) {
    assert_eq!(
        lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(10)),
        Some(0)
    );
    let log = lab.log("tcpcopy");
    let total = (SMALL + LARGE) as u64;
    assert_eq!(stat(&log, "udp packets captured:"), total, "{log}");
    assert_eq!(stat(&log, "udp datagrams replayed:"), total, "{log}");
    assert_eq!(stat(&log, ",fragmented:"), LARGE as u64, "{log}");
    assert_eq!(stat(&log, ",fragments:"), 2 * LARGE as u64, "{log}");
    assert_eq!(stat(&log, ",packets sent:"), total + LARGE as u64, "{log}");
    assert_eq!(stat(&log, ",send errors:"), 0, "{log}");
    // pcap and files see the fragments; the raw socket gets datagrams the kernel reassembled.
    let expect = if reassembled { LARGE as u64 } else { 0 };
    assert_eq!(stat(&log, "reassembled datagrams:"), expect, "{log}");
}

/// A test's lab: root and the tools checked, IPv6 enabled if `ipv6`, a temporary folder
/// (`tag`), and dnsmasq on online and on the target (lab logs "dns-online", "dns-target").
fn dns_lab(test: &str, tag: &str, ipv6: bool) -> (Lab, TempDir) {
    require(test, &TOOLS);
    let lab = Lab::start();
    let (online, target) = if ipv6 {
        lab.enable_ipv6();
        (ONLINE_IP6.to_string(), TARGET_IP6.to_string())
    } else {
        (ONLINE_IP.to_string(), TARGET_IP.to_string())
    };
    let dir = TempDir::new(tag);
    dnsmasq(&lab, ONLINE, "dns-online", &online);
    dnsmasq(&lab, TARGET, "dns-target", &target);
    (lab, dir)
}

fn start_tcpcopy(lab: &Lab, args: &[&str]) {
    lab.spawn(ONLINE, "tcpcopy", &bin("tcpcopy"), args);
    wait_for(
        Duration::from_secs(10),
        || lab.log("tcpcopy").contains("event loop running (udp)"),
        || format!("tcpcopy did not start: {}", lab.log("tcpcopy")),
    );
}

#[test]
#[ignore = "needs root"]
fn udp_live_raw_socket_dns() {
    let (lab, dir) = dns_lab("udp_live_raw_socket_dns", "raw", false);
    let json = dir.0.join("stats.jsonl");
    let report = dir.0.join("report.json");
    start_tcpcopy(
        &lab,
        &[
            "--udp",
            "-x",
            "53-198.18.0.30:53",
            "-c",
            "203.0.113.x",
            "--metrics",
            "127.0.0.1:9531",
            "--stats-json",
            json.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    client_load(&lab, &dir.0, "raw");
    target_got_everything(&lab, "raw");
    // --metrics: the Prometheus text passes promtool and counts what was sent.
    let (status, metrics) = lab
        .in_ns(ONLINE, || {
            tc_test_support::http_get("127.0.0.1:9531".parse().unwrap(), "/metrics")
        })
        .expect("scrape /metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    tc_test_support::promtool_check(&metrics);
    let total = SMALL + LARGE;
    assert!(
        metrics.contains(&format!("tcpcopy_udp_captured_total {total}")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("tcpcopy_udp_sent_total {}", total + LARGE)),
        "{metrics}"
    );
    check_tcpcopy_counts(&lab, false);
    // --stats-json: a line at exit with the same counts.
    let text = std::fs::read_to_string(&json).expect("stats json written");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a line")).expect("json");
    assert_eq!(last["udp"]["captured"], total as u64, "{text}");
    assert_eq!(last["udp"]["fragmented"], LARGE as u64, "{text}");
    // --report: the same counts, written once at exit.
    let text = std::fs::read_to_string(&report).expect("report written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(report["mode"], "udp", "{text}");
    assert_eq!(report["udp"]["captured"], total as u64, "{text}");
    assert_eq!(
        report["udp"]["packets_sent"],
        (total + LARGE) as u64,
        "{text}"
    );
}

#[test]
#[ignore = "needs root"]
fn udp_live_pcap_reassembles_fragments() {
    let (lab, dir) = dns_lab("udp_live_pcap_reassembles_fragments", "pcap", false);
    // pcap also sees what tcpcopy sends: the online address in -x keeps it apart.
    start_tcpcopy(
        &lab,
        &[
            "--udp",
            "-x",
            "198.18.0.20:53-198.18.0.30:53",
            "-c",
            "203.0.113.x",
            "--capture",
            "pcap",
            "-i",
            "eth0",
        ],
    );
    client_load(&lab, &dir.0, "pcap");
    target_got_everything(&lab, "pcap");
    check_tcpcopy_counts(&lab, true);
}

#[test]
#[ignore = "needs root"]
fn udp_offline_from_a_recording() {
    let (lab, dir) = dns_lab("udp_offline_from_a_recording", "offline", false);
    // Record on online as an operator would: both directions, fragments included.
    let file = dir.0.join("dns.pcap");
    let file_s = file.to_str().unwrap().to_string();
    record(&lab, &file_s, "udp port 53 or (ip[6:2] & 0x1fff != 0)");
    client_load(&lab, &dir.0, "off");
    // tcpdump writes every packet at once (-U); SIGINT closes the file.
    lab.stop("tcpdump", libc::SIGINT, Duration::from_secs(10));
    assert_eq!(
        queries(&lab, "dns-target", "off", ""),
        0,
        "nothing replayed yet"
    );
    replay_offline(&lab, "tcpcopy", "53-198.18.0.30:53", "203.0.113.x", &file_s);
    target_got_everything(&lab, "off");
    check_tcpcopy_counts(&lab, true);
}

/// IPv6 end to end: the same DNS load over IPv6 (2001:db8::/32 only), live through the raw
/// IPv6 socket while tcpdump records it, then the recording replayed offline. Every query
/// reaches the target once per replay, from the fake client prefix. The large ones are
/// fragmented by the client: online's kernel reassembles them for the raw socket, tcpcopy
/// reassembles them from the recording; both times they leave tcpcopy as IPv6 fragments.
#[test]
#[ignore = "needs root"]
fn udp_ipv6_live_and_offline() {
    let (lab, dir) = dns_lab("udp_ipv6_live_and_offline", "ipv6", true);
    let file = dir.0.join("dns6.pcap");
    let file_s = file.to_str().unwrap().to_string();
    // Not what the live tcpcopy sends to the target meanwhile.
    record(&lab, &file_s, "ip6 and not dst host 2001:db8::30");
    start_tcpcopy(
        &lab,
        &["--udp", "-x", "53-[2001:db8::30]:53", "-c", FAKE_PREFIX6],
    );
    client_load_to(&lab, &dir.0, "six", ONLINE_IP6, CLIENT_IP6);
    lab.stop("tcpdump", libc::SIGINT, Duration::from_secs(10));
    target_got_everything_from(&lab, "six", "2001:db8:ffff::");
    let small = |lab: &Lab| queries(lab, "dns-target", "sixs-", "2001:db8:ffff::");
    let large = |lab: &Lab| queries(lab, "dns-target", "sixl-", "2001:db8:ffff::");
    // The same counts as for IPv4 through the raw socket: the large ones in two fragments.
    check_tcpcopy_counts(&lab, false);

    // Offline: the recording (both directions, the large queries as fragments).
    let log = replay_offline(
        &lab,
        "tcpcopy-offline",
        "53-[2001:db8::30]:53",
        FAKE_PREFIX6,
        &file_s,
    );
    wait_for(
        Duration::from_secs(20),
        || small(&lab) >= 2 * SMALL && large(&lab) >= 2 * LARGE,
        || {
            format!(
                "target got {} of {}\ntcpcopy: {log}",
                small(&lab),
                2 * SMALL
            )
        },
    );
    assert_eq!(queries(&lab, "dns-target", "sixs-", ""), 2 * SMALL);
    assert_eq!(queries(&lab, "dns-target", "sixl-", ""), 2 * LARGE);
    let total = (SMALL + LARGE) as u64;
    assert_eq!(stat(&log, "udp packets captured:"), total, "{log}");
    assert_eq!(stat(&log, ",packets sent:"), total + LARGE as u64, "{log}");
    // Each large query was recorded in two fragments and put back together.
    assert_eq!(stat(&log, "udp fragments in:"), 2 * LARGE as u64, "{log}");
    assert_eq!(stat(&log, "reassembled datagrams:"), LARGE as u64, "{log}");
}

/// IPv6 through pcap capture: the large queries cross online's link as IPv6 fragments,
/// captured by the filter built from -x and reassembled by tcpcopy; every query reaches the
/// target once.
#[test]
#[ignore = "needs root"]
fn udp_ipv6_pcap_reassembles_fragments() {
    let (lab, dir) = dns_lab("udp_ipv6_pcap_reassembles_fragments", "ipv6pcap", true);
    start_tcpcopy(
        &lab,
        &[
            "--udp",
            "-x",
            "[2001:db8::20]:53-[2001:db8::30]:53",
            "-c",
            FAKE_PREFIX6,
            "--capture",
            "pcap",
            "-i",
            "eth0",
        ],
    );
    client_load_to(&lab, &dir.0, "p6", ONLINE_IP6, CLIENT_IP6);
    target_got_everything_from(&lab, "p6", "2001:db8:ffff::");
    check_tcpcopy_counts(&lab, true);
}

/// `-n 2`: every query reaches the target twice, from two fake client endpoints.
#[test]
#[ignore = "needs root"]
fn udp_replicas_double_the_load() {
    let (lab, dir) = dns_lab("udp_replicas_double_the_load", "replicas", false);
    start_tcpcopy(
        &lab,
        &[
            "--udp",
            "-x",
            "53-198.18.0.30:53",
            "-c",
            "203.0.113.x",
            "-n",
            "2",
        ],
    );
    let file = query_file(&dir.0, "rep", SMALL);
    assert_eq!(dnsperf(&lab, "198.18.0.20", &file, None), SMALL);
    wait_for(
        Duration::from_secs(20),
        || queries(&lab, "dns-target", "rep-", "203.0.113.") >= 2 * SMALL,
        || format!("target: {}", queries(&lab, "dns-target", "rep-", "")),
    );
    assert_eq!(queries(&lab, "dns-target", "rep-", ""), 2 * SMALL);
    // Each name twice, from two different fake client addresses or ports.
    let log = lab.log("dns-target");
    for i in [0, SMALL / 2, SMALL - 1] {
        let name = format!("query[A] rep-{i}.udp.test from ");
        let n = log.lines().filter(|l| l.contains(&name)).count();
        assert_eq!(n, 2, "rep-{i}");
    }
    assert_eq!(
        lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(10)),
        Some(0)
    );
    let log = lab.log("tcpcopy");
    assert_eq!(stat(&log, "udp packets captured:"), SMALL as u64, "{log}");
    assert_eq!(stat(&log, ",packets sent:"), 2 * SMALL as u64, "{log}");
}

/// Options of TCP sessions are refused with --udp: a clear message and exit status 2, before
/// anything is opened (no root needed).
#[test]
fn udp_refuses_session_options() {
    for (args, says) in [
        (&["-s", "198.18.0.40"][..], "-s does not apply to --udp"),
        (&["-W"], "-W does not apply to --udp"),
        (&["--capture", "ring"], "--capture ring reads TCP only"),
    ] {
        let out = Command::new(bin("tcpcopy"))
            .args(["--udp", "-x", "53-198.18.0.30:53"])
            .args(args)
            .output()
            .expect("tcpcopy runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // TCP over IPv6 (no --udp) refuses the options that speak IPv4 only.
    let out = Command::new(bin("tcpcopy"))
        .args(["-x", "53-[2001:db8::30]:53", "-s", "198.18.0.40", "--check"])
        .output()
        .expect("tcpcopy runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--check is not available with IPv6"));
}

/// `--send pcap` (Ethernet frames injected on -o with the MACs of -x): every query reaches
/// the target once, the large ones in fragments (the original's pcap-send builds could not
/// send UDP at all).
#[test]
#[ignore = "needs root"]
fn udp_send_pcap_injects_frames() {
    let (lab, dir) = dns_lab("udp_send_pcap_injects_frames", "sendpcap", false);
    let x = format!("53@{}-198.18.0.30:53@{}", lab.mac(ONLINE), lab.mac(TARGET));
    start_tcpcopy(
        &lab,
        &[
            "--udp",
            "-x",
            &x,
            "-c",
            "203.0.113.x",
            "--send",
            "pcap",
            "-o",
            "eth0",
        ],
    );
    client_load(&lab, &dir.0, "inj");
    target_got_everything(&lab, "inj");
    check_tcpcopy_counts(&lab, false);
}

/// IPv6 with `--send pcap`: frames with EtherType 0x86dd and the MACs of -x; every query
/// reaches the target once, the large ones in IPv6 fragments.
#[test]
#[ignore = "needs root"]
fn udp_ipv6_send_pcap() {
    let (lab, dir) = dns_lab("udp_ipv6_send_pcap", "ipv6inject", true);
    let x = format!(
        "53@{}-[2001:db8::30]:53@{}",
        lab.mac(ONLINE),
        lab.mac(TARGET)
    );
    start_tcpcopy(
        &lab,
        &[
            "--udp",
            "-x",
            &x,
            "-c",
            FAKE_PREFIX6,
            "--send",
            "pcap",
            "-o",
            "eth0",
        ],
    );
    client_load_to(&lab, &dir.0, "i6", ONLINE_IP6, CLIENT_IP6);
    target_got_everything_from(&lab, "i6", "2001:db8:ffff::");
    check_tcpcopy_counts(&lab, false);
}
