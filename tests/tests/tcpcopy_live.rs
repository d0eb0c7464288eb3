//! tcpcopy end to end in the namespace lab (lab.md): clients talk to the online servers,
//! tcpcopy on online replays to the target, intercept on assist returns the target's response
//! headers. The target must receive exactly the byte streams the online servers received,
//! connection by connection. Needs root.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tc_core::capture::pcap_live::{PcapLive, PcapLiveOptions};
use tc_core::capture::Capture;
use tc_core::packet::{ipv4_payload, Completeness, LinkType, PcapWriter, TcpPacket};
use tc_e2e::lab::*;
use tc_e2e::replay::{self, last_counter, start_tcpcopy, stop_tcpcopy, INTERCEPT_METRICS};

const ONLINE_PORT: u16 = 80;
const ONLINE_GREET_PORT: u16 = 81;
const TARGET_PORT: u16 = 8080;
const TARGET_GREET_PORT: u16 = 8081;
const INTERCEPT_PORT: u16 = 36524;
const REPLAY_DEADLINE: Duration = Duration::from_secs(120);

struct Setup {
    lab: Lab,
    online: Server,
    online_greet: Server,
    target: Server,
    target_greet: Server,
}

fn transfers() -> String {
    format!(
        "{ONLINE_PORT}-{TARGET_IP}:{TARGET_PORT},{ONLINE_GREET_PORT}-{TARGET_IP}:{TARGET_GREET_PORT}"
    )
}

/// Lab, servers, and intercept on assist.
fn setup() -> Setup {
    let lab = Lab::start();
    let online = Server::start(
        &lab,
        ONLINE,
        SocketAddrV4::new(ONLINE_IP, ONLINE_PORT),
        false,
    );
    let online_greet = Server::start(
        &lab,
        ONLINE,
        SocketAddrV4::new(ONLINE_IP, ONLINE_GREET_PORT),
        true,
    );
    let target = Server::start(
        &lab,
        TARGET,
        SocketAddrV4::new(TARGET_IP, TARGET_PORT),
        false,
    );
    let target_greet = Server::start(
        &lab,
        TARGET,
        SocketAddrV4::new(TARGET_IP, TARGET_GREET_PORT),
        true,
    );
    start_intercept(&lab);
    Setup {
        lab,
        online,
        online_greet,
        target,
        target_greet,
    }
}

fn start_intercept(lab: &Lab) {
    let filter = format!("tcp and (src port {TARGET_PORT} or src port {TARGET_GREET_PORT})");
    replay::start_intercept(lab, &filter);
}

/// The standard workload (run from the client namespace): short connections, keep-alive
/// connections, a server-first protocol, a 1 MB request and a 1 MB response.
struct Workload {
    short: usize,
    keepalive: usize,
    keepalive_requests: usize,
    greeting: usize,
    big: bool,
}

const FULL: Workload = Workload {
    short: 200,
    keepalive: 20,
    keepalive_requests: 100,
    greeting: 5,
    big: true,
};

fn run_workload(lab: &Lab, tag: &str, w: &Workload) -> usize {
    let online = SocketAddrV4::new(ONLINE_IP, ONLINE_PORT);
    let greet = SocketAddrV4::new(ONLINE_IP, ONLINE_GREET_PORT);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let short_per_thread = w.short.div_ceil(4).max(1);
    for t in 0..4 {
        let tag = tag.to_string();
        let count = short_per_thread.min(w.short.saturating_sub(t * short_per_thread));
        threads.push(lab.thread_in(CLIENT, move || {
            for i in 0..count {
                converse(
                    online,
                    &format!("{tag}-s{t}.{i}"),
                    false,
                    &[(100, 200)],
                    Duration::ZERO,
                )
                .expect("short connection");
            }
        }));
    }
    for k in 0..w.keepalive {
        let tag = tag.to_string();
        let n = w.keepalive_requests;
        threads.push(lab.thread_in(CLIENT, move || {
            let reqs = vec![(50, 100); n];
            converse(online, &format!("{tag}-k{k}"), false, &reqs, Duration::ZERO)
                .expect("keep-alive connection");
        }));
    }
    for g in 0..w.greeting {
        let tag = tag.to_string();
        threads.push(lab.thread_in(CLIENT, move || {
            converse(
                greet,
                &format!("{tag}-g{g}"),
                true,
                &[(20, 30); 3],
                Duration::ZERO,
            )
            .expect("server-first connection");
        }));
    }
    if w.big {
        let tag = tag.to_string();
        threads.push(lab.thread_in(CLIENT, move || {
            converse(
                online,
                &format!("{tag}-bigreq"),
                false,
                &[(1 << 20, 16)],
                Duration::ZERO,
            )
            .expect("1 MB request");
            converse(
                online,
                &format!("{tag}-bigresp"),
                false,
                &[(10, 1 << 20)],
                Duration::ZERO,
            )
            .expect("1 MB response");
        }));
    }
    for t in threads {
        t.join().expect("client thread");
    }
    w.short + w.keepalive + w.greeting + if w.big { 2 } else { 0 }
}

/// Online connections (closed by the client) keyed by client port.
/// Every online connection of the client (a client port may come back when the server closed
/// first), once `n` are recorded: a server records a connection when it sees the client's
/// close, which may come just after the client returned.
fn settled_online_conns(servers: &[&Server], n: usize) -> Vec<ConnLog> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conns: Vec<ConnLog> = servers
            .iter()
            .flat_map(|s| s.snapshot())
            .filter(|c| c.peer.ip() == &CLIENT_IP)
            .collect();
        if conns.len() >= n || Instant::now() > deadline {
            return conns;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn online_streams(servers: &[&Server]) -> HashMap<u16, Vec<u8>> {
    let mut out = HashMap::new();
    for s in servers {
        for c in s.snapshot() {
            if c.peer.ip() == &CLIENT_IP {
                out.insert(c.peer.port(), c.received);
            }
        }
    }
    out
}

fn target_conns(servers: &[&Server]) -> Vec<ConnLog> {
    servers.iter().flat_map(|s| s.snapshot()).collect()
}

/// Every online connection is on the target, same client port, byte for byte (connections
/// that share a port are matched as a multiset).
fn assert_identical_replay(s: &Setup, expected_conns: usize, clients: &[Ipv4Addr]) {
    let online = settled_online_conns(&[&s.online, &s.online_greet], expected_conns);
    assert_eq!(online.len(), expected_conns, "online connections");
    let deadline = Instant::now() + REPLAY_DEADLINE;
    let (matched, missing) = loop {
        let target = target_conns(&[&s.target, &s.target_greet]);
        let mut by_port: HashMap<u16, Vec<&ConnLog>> = HashMap::new();
        for c in &target {
            by_port.entry(c.peer.port()).or_default().push(c);
        }
        let mut matched = 0;
        let mut missing = Vec::new();
        for o in &online {
            let port = o.peer.port();
            let candidates = by_port.entry(port).or_default();
            match candidates.iter().position(|c| c.received == o.received) {
                Some(i) => {
                    candidates.swap_remove(i);
                    matched += 1;
                }
                None => missing.push(match candidates.first() {
                    Some(c) => format!(
                        "port {port}: target has {} of {} bytes",
                        c.received.len(),
                        o.received.len()
                    ),
                    None => format!("port {port}: no target connection"),
                }),
            }
        }
        for c in &target {
            assert!(
                clients.contains(c.peer.ip()),
                "target connection from {} (not a -c address)",
                c.peer
            );
        }
        if matched == online.len() || Instant::now() > deadline {
            break (matched, missing);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        matched,
        online.len(),
        "replayed {matched} of {} connections exactly; first problems: {:?}",
        online.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Records every frame leaving the online host; anything that is not the online service's
/// own answers, a packet to the target or tunnel traffic is reported.
struct EgressWatch {
    stop: Arc<AtomicBool>,
    unexpected: Arc<Mutex<Vec<String>>>,
    to_target: Arc<Mutex<u64>>,
    thread: Option<JoinHandle<()>>,
}

impl EgressWatch {
    fn start(lab: &Lab) -> EgressWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
        let to_target: Arc<Mutex<u64>> = Arc::default();
        let mut cap = lab.in_ns(ONLINE, || {
            // IGMP reports of a fresh interface are kernel noise, not ours: multicast is left out.
            let mut opts = PcapLiveOptions::new(&format!(
                "ip and not dst host {ONLINE_IP} and not ip multicast"
            ));
            opts.snaplen = 128;
            PcapLive::open("eth0", &opts).expect("capture on online eth0")
        });
        let (s, u, t) = (stop.clone(), unexpected.clone(), to_target.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let n = cap
                    .read_frames(256, &mut |link, frame| {
                        let Ok(ip) = ipv4_payload(link, frame) else {
                            return;
                        };
                        let what = match TcpPacket::parse(ip, Completeness::HeadersOnly) {
                            Ok(p) => {
                                let (src, dst) = (p.src_ip(), p.dst_ip());
                                let (sp, dp) = (p.src_port(), p.dst_port());
                                let service = src == ONLINE_IP
                                    && dst == CLIENT_IP
                                    && (sp == ONLINE_PORT || sp == ONLINE_GREET_PORT);
                                let replay = dst == TARGET_IP
                                    && (dp == TARGET_PORT || dp == TARGET_GREET_PORT)
                                    && matches!(src, std::net::IpAddr::V4(s) if s.octets()[..3] == [203, 0, 113]);
                                let tunnel =
                                    src == ONLINE_IP && dst == ASSIST_IP && dp == INTERCEPT_PORT;
                                if replay {
                                    *t.lock().unwrap() += 1;
                                }
                                if service || replay || tunnel {
                                    None
                                } else {
                                    Some(format!("tcp {src}:{sp} -> {dst}:{dp}"))
                                }
                            }
                            Err(e) => Some(format!(
                                "non-tcp ip packet of {} bytes ({e:?}): {:02x?}",
                                ip.len(),
                                &ip[..ip.len().min(40)]
                            )),
                        };
                        if let Some(w) = what {
                            u.lock().unwrap().push(w);
                        }
                    })
                    .unwrap_or(0);
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        EgressWatch {
            stop,
            unexpected,
            to_target,
            thread: Some(thread),
        }
    }

    /// Stops and asserts nothing unexpected left the host; returns packets seen to the target.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("egress watch");
        }
        let unexpected = self.unexpected.lock().unwrap();
        assert!(
            unexpected.is_empty(),
            "{} unexpected packets left online, e.g. {:?}",
            unexpected.len(),
            &unexpected[..unexpected.len().min(5)]
        );
        let n = *self.to_target.lock().unwrap();
        n
    }
}

/// The longest IP datagram (its header's total length) online's stack received for the
/// online service: above the MTU only when GRO merged segments.
struct IngressSize {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

impl IngressSize {
    fn start(lab: &Lab) -> IngressSize {
        let stop = Arc::new(AtomicBool::new(false));
        let mut cap = lab.in_ns(ONLINE, || {
            let mut opts = PcapLiveOptions::new(&format!(
                "tcp and dst host {ONLINE_IP} and dst port {ONLINE_PORT}"
            ));
            opts.snaplen = 128;
            PcapLive::open("eth0", &opts).expect("capture on online eth0")
        });
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut longest = 0;
            while !s.load(Ordering::Relaxed) {
                let n = cap
                    .read_frames(256, &mut |link, frame| {
                        if let Ok(ip) = ipv4_payload(link, frame) {
                            if ip.len() >= 4 {
                                longest =
                                    longest.max(usize::from(u16::from_be_bytes([ip[2], ip[3]])));
                            }
                        }
                    })
                    .unwrap_or(0);
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            longest
        });
        IngressSize {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("ingress watch"))
            .unwrap_or(0)
    }
}

impl Drop for IngressSize {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn client_range(first: u8, last: u8) -> Vec<Ipv4Addr> {
    (first..=last)
        .map(|d| Ipv4Addr::new(203, 0, 113, d))
        .collect()
}

fn fidelity(test: &str, extra: &[&str], send_pcap: bool) {
    fidelity_with(test, extra, send_pcap, false)
}

fn fidelity_with(test: &str, extra: &[&str], send_pcap: bool, offload: bool) {
    require_root(test);
    let s = setup();
    if offload {
        // Real hosts: the client's stack sends TSO super-segments, online's GRO merges
        // segments, and the raw socket hands tcpcopy datagrams far above the MTU.
        for host in [CLIENT, ONLINE] {
            let ns = s.lab.ns(host);
            let st = std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "ethtool", "-K", "eth0"])
                .args(["tx", "on", "tso", "on", "gso", "on", "gro", "on"])
                .status()
                .unwrap();
            assert!(st.success());
        }
    }
    let watch = EgressWatch::start(&s.lab);
    let ingress = IngressSize::start(&s.lab);
    let x = if send_pcap {
        let (om, tm) = (s.lab.mac(ONLINE), s.lab.mac(TARGET));
        format!(
            "{ONLINE_PORT}@{om}-{TARGET_IP}:{TARGET_PORT}@{tm},{ONLINE_GREET_PORT}@{om}-{TARGET_IP}:{TARGET_GREET_PORT}@{tm}"
        )
    } else {
        transfers()
    };
    let mut args = vec!["-x", x.as_str(), "-c", "203.0.113.11,203.0.113.12"];
    args.extend_from_slice(extra);
    start_tcpcopy(&s.lab, "tcpcopy", &args);
    let n = run_workload(&s.lab, test, &FULL);
    assert_identical_replay(&s, n, &client_range(11, 12));
    let log = stop_tcpcopy(&s.lab, "tcpcopy");
    let to_target = watch.finish();
    assert!(to_target > 0);
    let longest = ingress.finish();
    eprintln!("{test}: longest datagram received by online: {longest} bytes");
    if offload {
        // GRO merged the 1 MB request's segments: the capture saw datagrams far above the
        // 1500-byte MTU and replayed them exactly (above).
        assert!(
            longest > 30_000,
            "no GRO merge seen: longest datagram {longest} bytes"
        );
    } else {
        assert!(
            longest <= 1500,
            "GRO is off, yet a {longest}-byte datagram arrived"
        );
    }
    assert!(log.contains("all clt:"), "{log}");
    assert!(log.contains("refused (not a target):0"), "{log}");
    // The lab's links offload transmit checksums (issue 13): the captured client segments
    // carried partial checksums, and the exact replay above shows they left valid.
    assert!(
        !log.contains("bad checksum fixed:0"),
        "no partial checksum captured: the lab does not exercise checksum offload\n{log}"
    );
    assert!(
        !log.contains("many connections can't be established"),
        "{log}"
    );
    if extra.contains(&"ring") {
        assert!(log.contains("TPACKET_V3 ring"), "{log}");
        assert!(log.contains("kernel filter keeps tcp dst ports"), "{log}");
        assert_eq!(
            last_counter(&log, "capture backend drops:"),
            Some(0),
            "{log}"
        );
        assert!(!log.contains("no transfer:"), "{log}");
    }
    if !extra.contains(&"pcap") {
        // The raw socket's (and the ring's) kernel filter keeps the tunnel's own packets away
        // from tcpcopy.
        assert!(log.contains("kernel filter keeps tcp dst ports"), "{log}");
        assert!(!log.contains("no transfer:"), "{log}");
    }
}

#[test]
#[ignore = "needs root"]
fn replay_is_exact_with_raw_capture_and_raw_send() {
    fidelity("raw_raw", &["--capture", "raw"], false);
}

#[test]
#[ignore = "needs root"]
fn replay_is_exact_with_pcap_capture() {
    fidelity("pcap_capture", &["--capture", "pcap", "-i", "eth0"], false);
}

/// Issue 18: the memory-mapped ring (`--capture ring`) captures what the raw socket does;
/// nothing is lost in the kernel on the way (PACKET_STATISTICS).
#[test]
#[ignore = "needs root"]
fn replay_is_exact_with_ring_capture() {
    fidelity("ring_capture", &["--capture", "ring"], false);
}

#[test]
#[ignore = "needs root"]
fn replay_is_exact_with_datalink_send() {
    fidelity("pcap_send", &["--send", "pcap", "-o", "eth0"], true);
}

#[test]
#[ignore = "needs root"]
fn replay_is_exact_with_offloads_on() {
    fidelity_with("offload", &[], false, true);
}

/// Issue 18: GRO-merged segments (up to 64 KiB) fit the ring's blocks whole: the 1 MB
/// request replays exactly, nothing is counted cut or dropped.
#[test]
#[ignore = "needs root"]
fn replay_is_exact_with_ring_capture_and_offloads_on() {
    fidelity_with("offload_ring", &["--capture", "ring"], false, true);
}

/// `--report` and `--stats-json` (issue 16): the report parses, every session of the workload
/// completed, every request was sent and answered, and its statistics are the log's.
#[test]
#[ignore = "needs root"]
fn fidelity_report_matches_the_run() {
    require_root("fidelity_report");
    let s = setup();
    let dir = std::env::temp_dir().join(format!("tcpcopy-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (report, stats) = (dir.join("report.json"), dir.join("stats.jsonl"));
    let x = transfers();
    let (r, st) = (report.to_str().unwrap(), stats.to_str().unwrap());
    start_tcpcopy(
        &s.lab,
        "tcpcopy",
        &[
            "-x",
            &x,
            "-c",
            "203.0.113.21",
            "--report",
            r,
            "--stats-json",
            st,
            "--metrics",
            "127.0.0.1:9477",
        ],
    );
    let small = Workload {
        short: 20,
        keepalive: 4,
        keepalive_requests: 10,
        greeting: 0,
        big: false,
    };
    let n = run_workload(&s.lab, "report", &small);
    assert_identical_replay(&s, n, &[std::net::Ipv4Addr::new(203, 0, 113, 21)]);
    // A finished session lingers 6 s before it counts as ended: waiting that out is the
    // point (otherwise the report calls the last sessions still active).
    std::thread::sleep(Duration::from_secs(7));
    // --metrics (issue 16): the Prometheus text passes promtool and says what the report says.
    let (status, metrics) = s
        .lab
        .in_ns(ONLINE, || {
            tc_test_support::http_get("127.0.0.1:9477".parse().unwrap(), "/metrics")
        })
        .expect("scrape /metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    tc_test_support::promtool_check(&metrics);
    let metric = |name: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {metrics}"));
        line[name.len() + 1..].parse().unwrap()
    };
    let log = stop_tcpcopy(&s.lab, "tcpcopy");
    let text = std::fs::read_to_string(&report).expect("report written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    let requests = (small.short + small.keepalive * small.keepalive_requests) as u64;
    assert_eq!(v["sessions"]["completed"], n as u64, "{text}");
    assert_eq!(v["sessions"]["total"], n as u64, "{text}");
    assert_eq!(v["requests"]["captured"], requests, "{text}");
    assert_eq!(v["requests"]["sent"], requests, "{text}");
    assert_eq!(v["requests"]["answered"], requests, "{text}");
    assert_eq!(v["bytes"]["captured"], v["bytes"]["sent"], "{text}");
    assert!(v["replay_lag_us"]["samples"].as_u64().unwrap() >= requests);
    // Its statistics are the log's last statistics lines.
    let stat = |name: &str| last_counter(&log, name);
    let st = &v["statistics"]["stats"];
    assert_eq!(st["conns"].as_u64(), stat("conns:"), "{log}");
    assert_eq!(st["send"].as_u64(), stat("send:"), "{log}");
    assert_eq!(st["resp"].as_u64(), stat("resp:"), "{log}");
    assert_eq!(st["syn_cnt"].as_u64(), stat("syn cnt:"), "{log}");
    assert!(log.contains("fidelity: sessions"), "{log}");
    assert_eq!(
        Some(metric("tcpcopy_handshakes_total")),
        stat("conns:"),
        "{metrics}"
    );
    assert_eq!(
        Some(metric("tcpcopy_syn_total")),
        stat("syn cnt:"),
        "{metrics}"
    );
    assert_eq!(metric("tcpcopy_requests_sent_total"), requests, "{metrics}");
    // intercept's --metrics during the same replay: promtool passes, and its counters are
    // those of its final statistics lines.
    let (status, imetrics) = s
        .lab
        .in_ns(ASSIST, || {
            tc_test_support::http_get(INTERCEPT_METRICS.parse().unwrap(), "/metrics")
        })
        .expect("scrape intercept's /metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    tc_test_support::promtool_check(&imetrics);
    assert_eq!(
        s.lab
            .stop("intercept", libc::SIGTERM, Duration::from_secs(10)),
        Some(0)
    );
    let ilog = s.lab.log("intercept");
    let imetric = |name: &str| -> Option<u64> {
        let line = imetrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))?;
        line[name.len() + 1..].parse().ok()
    };
    assert_eq!(
        imetric("intercept_responses_total"),
        last_counter(&ilog, "total resp packs:"),
        "{imetrics}\n{ilog}"
    );
    assert_eq!(
        imetric("intercept_client_adds_total"),
        last_counter(&ilog, "route:"),
        "{imetrics}\n{ilog}"
    );
    assert!(imetric("intercept_client_adds_total") >= Some(n as u64));
    // --stats-json: one JSON object per line, the last one at exit.
    let lines = std::fs::read_to_string(&stats).expect("stats written");
    let last: serde_json::Value =
        serde_json::from_str(lines.lines().last().expect("a line")).expect("JSON line");
    assert_eq!(last["stats"]["conns"], st["conns"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15.6: a pcap capture device that disappears is reported, reopened when it is back,
/// and when nothing can be captured for `--capture-lost-exit` tcpcopy stops with status 1.
#[test]
#[ignore = "needs root"]
fn lost_capture_device_is_reopened_then_fatal() {
    require_root("lost_capture_device");
    let s = setup();
    let ns = s.lab.ns(ONLINE);
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(["-n", &ns])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    let make = || {
        ip(&[
            "link", "add", "cap0", "type", "veth", "peer", "name", "cap1",
        ]);
        ip(&["link", "set", "cap0", "up"]);
        ip(&["link", "set", "cap1", "up"]);
    };
    make();
    let x = transfers();
    start_tcpcopy(
        &s.lab,
        "tcpcopy",
        &[
            "-x",
            &x,
            "-c",
            "203.0.113.31",
            "--capture",
            "pcap",
            "-i",
            "cap0",
            "--capture-lost-exit",
            "3",
        ],
    );
    ip(&["link", "del", "cap0"]);
    wait_for(
        Duration::from_secs(10),
        || s.lab.log("tcpcopy").contains("capture device cap0 lost"),
        || format!("the loss reported: {}", s.lab.log("tcpcopy")),
    );
    make();
    wait_for(
        Duration::from_secs(15),
        || {
            s.lab
                .log("tcpcopy")
                .contains("capture device cap0 reopened")
        },
        || format!("the device reopened: {}", s.lab.log("tcpcopy")),
    );
    assert!(s.lab.running("tcpcopy"), "{}", s.lab.log("tcpcopy"));
    ip(&["link", "del", "cap0"]);
    wait_for(
        Duration::from_secs(20),
        || !s.lab.running("tcpcopy"),
        || format!("tcpcopy to stop: {}", s.lab.log("tcpcopy")),
    );
    let code = s.lab.stop("tcpcopy", 0, Duration::from_secs(5));
    let log = s.lab.log("tcpcopy");
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("nothing could be captured for"), "{log}");
}

#[test]
#[ignore = "needs root"]
fn three_copies_of_every_connection() {
    require_root("three_copies");
    let s = setup();
    let x = transfers();
    start_tcpcopy(
        &s.lab,
        "tcpcopy",
        &["-x", &x, "-c", "203.0.113.21", "-n", "3"],
    );
    let w = Workload {
        short: 20,
        keepalive: 2,
        keepalive_requests: 20,
        greeting: 2,
        big: false,
    };
    let n = run_workload(&s.lab, "n3", &w);
    let online = settled_online_conns(&[&s.online, &s.online_greet], n);
    assert_eq!(online.len(), n);
    // Each online stream (unique by its tagged bodies) appears exactly three times.
    let (ok, target) = wait_until(&s.target, REPLAY_DEADLINE, |_| {
        let all = target_conns(&[&s.target, &s.target_greet]);
        online
            .iter()
            .all(|o| all.iter().filter(|c| c.received == o.received).count() == 3)
    });
    let all = target_conns(&[&s.target, &s.target_greet]);
    assert!(
        ok,
        "copies: {} target connections for {} online ones",
        all.len(),
        online.len()
    );
    let _ = target;
    // Copies may reuse an endpoint over time (spec 2.6 port arithmetic with one fake IP);
    // the three-copies check above is what matters.
    stop_tcpcopy(&s.lab, "tcpcopy");
}

/// Issue 18, beyond one core: two tcpcopy processes, `--fanout 1/2` and `--fanout 2/2` on the
/// same capture and one intercept, with the same `-f`, replay every connection exactly once
/// between them, and each replays a share.
fn fanout(test: &str, capture: &str) {
    require_root(test);
    let s = setup();
    let x = transfers();
    // Fake clients (routed to the assistant), ports shifted alike in both processes.
    let c = "203.0.113.11,203.0.113.12";
    for (name, share) in [("tcpcopy1", "1/2"), ("tcpcopy2", "2/2")] {
        let args = [
            "-x",
            &x,
            "-c",
            c,
            "-f",
            "1",
            "--capture",
            capture,
            "--fanout",
            share,
        ];
        start_tcpcopy(&s.lab, name, &args);
    }
    let w = Workload {
        short: 60,
        keepalive: 6,
        keepalive_requests: 10,
        greeting: 4,
        big: false,
    };
    let n = run_workload(&s.lab, test, &w);
    let online = settled_online_conns(&[&s.online, &s.online_greet], n);
    assert_eq!(online.len(), n);
    // Each online stream (unique by its tagged bodies) reaches the target once.
    let (ok, _) = wait_until(&s.target, REPLAY_DEADLINE, |_| {
        let all = target_conns(&[&s.target, &s.target_greet]);
        online
            .iter()
            .all(|o| all.iter().any(|c| c.received == o.received))
    });
    assert!(ok, "not every connection was replayed");
    let all = target_conns(&[&s.target, &s.target_greet]);
    for o in &online {
        let times = all.iter().filter(|c| c.received == o.received).count();
        assert_eq!(
            times,
            1,
            "connection from port {} replayed {times} times",
            o.peer.port()
        );
    }
    assert_eq!(all.len(), n, "target connections");
    let syns: Vec<u64> = ["tcpcopy1", "tcpcopy2"]
        .iter()
        .map(|name| {
            let log = stop_tcpcopy(&s.lab, name);
            assert!(log.contains("(--fanout"), "{log}");
            last_counter(&log, "syn cnt:").unwrap_or(0)
        })
        .collect();
    assert!(
        syns.iter().all(|&c| c > 0),
        "SYNs captured per process: {syns:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn two_processes_share_the_connections_with_fanout() {
    fanout("fanout_raw", "raw");
}

#[test]
#[ignore = "needs root"]
fn two_processes_share_the_ring_capture_with_fanout() {
    fanout("fanout_ring", "ring");
}

#[test]
#[ignore = "needs root"]
fn sampling_replays_about_half_of_the_sessions_whole() {
    require_root("sampling");
    let s = setup();
    let x = transfers();
    start_tcpcopy(
        &s.lab,
        "tcpcopy",
        &["-x", &x, "-c", "203.0.113.31", "-r", "50"],
    );
    let w = Workload {
        short: 200,
        keepalive: 0,
        keepalive_requests: 0,
        greeting: 0,
        big: false,
    };
    run_workload(&s.lab, "r50", &w);
    let online = online_streams(&[&s.online]);
    // Let replays finish, then every replayed session must be whole.
    let (_, target) = wait_until(&s.target, Duration::from_secs(30), |t| {
        t.iter()
            .all(|c| online.get(&c.peer.port()).is_some_and(|b| b == &c.received))
            && !t.is_empty()
    });
    let replayed = target.len();
    assert!(
        (50..=150).contains(&replayed),
        "-r 50 replayed {replayed} of 200 sessions"
    );
    for c in &target {
        assert_eq!(
            Some(&c.received),
            online.get(&c.peer.port()),
            "session {} replayed partially",
            c.peer
        );
    }
    stop_tcpcopy(&s.lab, "tcpcopy");
}

/// Keep-alive connections already open when tcpcopy starts: picked up mid-stream (the target
/// gets the rest of the stream from a request boundary), or not at all with `-O`.
fn midstream(only_with_syn: bool) {
    let test = if only_with_syn {
        "midstream_O"
    } else {
        "midstream"
    };
    require_root(test);
    let s = setup();
    let online = SocketAddrV4::new(ONLINE_IP, ONLINE_PORT);
    let clients: Vec<JoinHandle<()>> = (0..5)
        .map(|k| {
            s.lab.thread_in(CLIENT, move || {
                converse(
                    online,
                    &format!("mid{k}"),
                    false,
                    &[(50, 100); 60],
                    Duration::from_millis(50),
                )
                .expect("keep-alive connection");
            })
        })
        .collect();
    // Let every connection get a few requests through first.
    let (ok, _) = wait_until(&s.online, Duration::from_secs(10), |c| {
        c.len() == 5 && c.iter().all(|c| c.received.len() > 5 * 60)
    });
    assert!(ok, "clients did not start");
    let x = transfers();
    let mut args = vec!["-x", x.as_str(), "-c", "203.0.113.41"];
    if only_with_syn {
        args.push("-O");
    }
    start_tcpcopy(&s.lab, "tcpcopy", &args);
    for c in clients {
        c.join().unwrap();
    }
    let online_streams = online_streams(&[&s.online]);
    if only_with_syn {
        // Give tcpcopy time to (wrongly) replay, then check nothing arrived: this wait is the
        // test (nothing to poll for when the right outcome is that nothing happens).
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            s.target.snapshot().is_empty(),
            "-O replayed a mid-stream session"
        );
    } else {
        let (ok, target) = wait_until(&s.target, REPLAY_DEADLINE, |t| {
            t.len() == 5
                && t.iter().all(|c| {
                    online_streams.get(&c.peer.port()).is_some_and(|b| {
                        !c.received.is_empty()
                            && b.ends_with(&c.received)
                            && c.received.starts_with(b"REQ ")
                    })
                })
        });
        assert!(
            ok,
            "mid-stream pickup: {:?}",
            target
                .iter()
                .map(|c| (c.peer, c.received.len()))
                .collect::<Vec<_>>()
        );
    }
    stop_tcpcopy(&s.lab, "tcpcopy");
}

#[test]
#[ignore = "needs root"]
fn connections_open_before_start_are_picked_up_mid_stream() {
    midstream(false);
}

#[test]
#[ignore = "needs root"]
fn with_o_connections_open_before_start_are_not_replayed() {
    midstream(true);
}

#[test]
#[ignore = "needs root"]
fn intercept_restart_with_l_is_survived() {
    require_root("intercept_restart");
    let s = setup();
    let x = transfers();
    start_tcpcopy(&s.lab, "tcpcopy", &["-x", &x, "-c", "203.0.113.51", "-L"]);
    let small = Workload {
        short: 10,
        keepalive: 0,
        keepalive_requests: 0,
        greeting: 0,
        big: false,
    };
    run_workload(&s.lab, "before", &small);
    // SIGKILL: the exit code is irrelevant, only that the tunnels go away.
    let _ = s
        .lab
        .stop("intercept", libc::SIGKILL, Duration::from_secs(5));
    wait_for(
        Duration::from_secs(10),
        || s.lab.log("tcpcopy").contains("is inactive"),
        || format!("tcpcopy to notice: {}", s.lab.log("tcpcopy")),
    );
    assert!(
        s.lab.running("tcpcopy"),
        "tcpcopy stopped without its intercept"
    );
    start_intercept(&s.lab);
    wait_for(
        Duration::from_secs(30),
        || s.lab.log("tcpcopy").contains("is active again"),
        || format!("the reconnect: {}", s.lab.log("tcpcopy")),
    );
    let before: usize = s.online.snapshot().len();
    run_workload(&s.lab, "after", &small);
    let online = online_streams(&[&s.online]);
    let after_ports: Vec<u16> = s
        .online
        .snapshot()
        .iter()
        .skip(before)
        .map(|c| c.peer.port())
        .collect();
    let (ok, target) = wait_until(&s.target, REPLAY_DEADLINE, |t| {
        after_ports.iter().all(|p| {
            t.iter()
                .any(|c| c.peer.port() == *p && Some(&c.received) == online.get(p))
        })
    });
    assert!(
        ok,
        "new connections after the restart not replayed: {} target conns",
        target.len()
    );
    stop_tcpcopy(&s.lab, "tcpcopy");
}

/// The harness itself: topology, servers and workload, without tcpcopy.
#[test]
#[ignore = "needs root"]
fn lab_workload_reaches_the_online_servers() {
    require_root("lab_workload");
    let lab = Lab::start();
    let online = Server::start(
        &lab,
        ONLINE,
        SocketAddrV4::new(ONLINE_IP, ONLINE_PORT),
        false,
    );
    let greet = Server::start(
        &lab,
        ONLINE,
        SocketAddrV4::new(ONLINE_IP, ONLINE_GREET_PORT),
        true,
    );
    let n = run_workload(&lab, "self", &FULL);
    let conns = settled_online_conns(&[&online, &greet], n);
    assert_eq!(conns.len(), n);
    let big = conns.iter().map(|c| c.received.len()).max().unwrap_or(0);
    assert!(big > 1 << 20, "1 MB request recorded: {big}");
    // The target host routes fake clients to the assistant.
    let out = std::process::Command::new("ip")
        .args(["-n", &lab.ns(TARGET), "route", "get", "203.0.113.9"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("via 198.18.0.40"));
}

/// Plumbing: with the real intercept, both capture backends see the clients' packets and the
/// tunnels come up (intercept admits `-C` connections).
#[test]
#[ignore = "needs root"]
fn capture_backends_see_the_client_traffic() {
    require_root("capture_plumbing");
    let s = setup();
    let x = transfers();
    start_tcpcopy(&s.lab, "raw", &["-x", &x, "-c", "203.0.113.61", "-C", "3"]);
    start_tcpcopy(
        &s.lab,
        "pcap",
        &[
            "-x",
            &x,
            "-c",
            "203.0.113.62",
            "--capture",
            "pcap",
            "-i",
            "eth0",
        ],
    );
    let w = Workload {
        short: 20,
        keepalive: 0,
        keepalive_requests: 0,
        greeting: 0,
        big: false,
    };
    run_workload(&s.lab, "plumbing", &w);
    // 20 connections of at least SYN, request, FIN: 60 client packets or more.
    for name in ["raw", "pcap"] {
        let log = stop_tcpcopy(&s.lab, name);
        let captured = last_counter(&log, "total captured packets:").unwrap_or(0);
        assert!(captured >= 60, "{name}: captured {captured}: {log}");
        assert_eq!(last_counter(&log, "capture errors:"), Some(0), "{log}");
    }
    let intercept = s.lab.log("intercept");
    assert_eq!(
        intercept.matches("it adds fd").count(),
        1 + 3 + 2,
        "{intercept}"
    );
}

/// Plumbing: without -L, losing the only intercept ends tcpcopy with a clear message.
#[test]
#[ignore = "needs root"]
fn losing_the_intercept_without_l_stops_tcpcopy() {
    require_root("intercept_loss");
    let s = setup();
    let x = transfers();
    start_tcpcopy(&s.lab, "tcpcopy", &["-x", &x, "-c", "203.0.113.71"]);
    let _ = s
        .lab
        .stop("intercept", libc::SIGKILL, Duration::from_secs(5));
    wait_for(
        Duration::from_secs(10),
        || !s.lab.running("tcpcopy"),
        || format!("tcpcopy to stop: {}", s.lab.log("tcpcopy")),
    );
    let code = s.lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(1));
    assert_eq!(code, Some(0), "graceful shutdown (spec 5.5)");
    assert!(s.lab.log("tcpcopy").contains("every intercept is gone"));
}

// ----- offline replay (issue 8) ---------------------------------------------------------------

/// Captured Ethernet frames with their capture times.
type Frames = Vec<(Duration, Vec<u8>)>;

/// Captures what arrives at online's service ports into Ethernet frames with timestamps.
struct OnlineRecorder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Frames>>,
}

impl OnlineRecorder {
    fn start(lab: &Lab) -> OnlineRecorder {
        let mut cap = lab.in_ns(ONLINE, || {
            let filter = format!(
                "tcp and dst host {ONLINE_IP} and (dst port {ONLINE_PORT} or dst port {ONLINE_GREET_PORT})"
            );
            let mut opts = PcapLiveOptions::new(&filter);
            opts.snaplen = 65535;
            PcapLive::open("eth0", &opts).expect("capture on online")
        });
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut idle_after_stop = 0;
            loop {
                let stopping = s.load(Ordering::Relaxed);
                let n = cap
                    .read_frames(512, &mut |_, frame| {
                        let ts = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default();
                        frames.push((ts, frame.to_vec()));
                    })
                    .unwrap_or(0);
                if n == 0 {
                    if stopping {
                        idle_after_stop += 1;
                        if idle_after_stop > 20 {
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            frames
        });
        OnlineRecorder {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Frames {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("recorder")
    }
}

/// Writes `frames` (Ethernet) as a pcap of link type `link`, converting each frame.
fn write_capture(path: &std::path::Path, link: LinkType, frames: &[(Duration, Vec<u8>)]) {
    let mut w = PcapWriter::create(path, link).expect("create pcap");
    for (ts, f) in frames {
        let ip = &f[14..];
        let bytes: Vec<u8> = match link {
            LinkType::Ethernet => f.clone(),
            LinkType::RawIp => ip.to_vec(),
            LinkType::LinuxSll => {
                // Linux cooked v1: packet type (0 = to us), ARPHRD_ETHER, address length 6,
                // the source MAC padded to 8 bytes, protocol 0x0800.
                let mut v = vec![0, 0, 0, 1, 0, 6];
                v.extend_from_slice(&f[6..12]);
                v.extend_from_slice(&[0, 0, 0x08, 0x00]);
                v.extend_from_slice(ip);
                v
            }
            other => panic!("no conversion to {other:?}"),
        };
        w.write(*ts, &bytes).expect("write record");
    }
    w.flush().expect("flush pcap");
}

/// Runs tcpcopy offline on `file` until it exits by itself; returns its log.
fn replay_offline(lab: &Lab, name: &str, file: &std::path::Path, extra: &[&str]) -> String {
    let path = file.to_str().unwrap().to_string();
    let mut args: Vec<&str> = vec!["-s", "198.18.0.40", "-i", &path, "--offline-tail", "3"];
    let x = transfers();
    args.extend_from_slice(&["-x", &x]);
    args.extend_from_slice(extra);
    lab.spawn(ONLINE, name, &bin("tcpcopy"), &args);
    wait_for(
        REPLAY_DEADLINE,
        || !lab.running(name),
        || format!("offline tcpcopy to finish: {}", lab.log(name)),
    );
    let code = lab.stop(name, libc::SIGTERM, Duration::from_secs(5));
    let log = lab.log(name);
    assert_eq!(code, Some(0), "offline tcpcopy exit: {log}");
    log
}

/// Target connections from `ip`, by client port.
fn target_from(s: &Setup, ip: Ipv4Addr) -> Vec<ConnLog> {
    target_conns(&[&s.target, &s.target_greet])
        .into_iter()
        .filter(|c| *c.peer.ip() == ip)
        .collect()
}

/// Waits until every online stream is on the target from `ip` `times` times, byte for byte.
fn assert_streams_replayed(s: &Setup, online: &[ConnLog], ips: &[Ipv4Addr], times: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let conns: Vec<ConnLog> = ips.iter().flat_map(|ip| target_from(s, *ip)).collect();
        let missing: Vec<u16> = online
            .iter()
            .filter(|o| {
                let same = online.iter().filter(|x| x.received == o.received).count();
                conns.iter().filter(|c| c.received == o.received).count() != times * same
            })
            .map(|o| o.peer.port())
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} online connections not replayed exactly {times}x (from {ips:?}): ports {:?}",
            missing.len(),
            online.len(),
            &missing[..missing.len().min(10)]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A capture made in the lab (keep-alive, short, server-first, 1 MB each way) is replayed
/// offline at 10x: the target receives 100% of the byte streams; `-T 2` doubles them; raw-IP
/// and Linux cooked captures replay as well as Ethernet.
#[test]
#[ignore = "needs root"]
fn offline_replay_of_a_lab_capture() {
    require_root("offline_replay");
    let s = setup();
    let rec = OnlineRecorder::start(&s.lab);
    let w = Workload {
        short: 40,
        keepalive: 5,
        keepalive_requests: 40,
        greeting: 3,
        big: true,
    };
    let n = run_workload(&s.lab, "offline", &w);
    let frames = rec.finish();
    let online = settled_online_conns(&[&s.online, &s.online_greet], n);
    assert_eq!(online.len(), n);
    let dir = std::env::temp_dir().join(format!("tc-offline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            LinkType::Ethernet,
            "eth.pcap",
            Ipv4Addr::new(203, 0, 113, 41),
        ),
        (LinkType::RawIp, "raw.pcap", Ipv4Addr::new(203, 0, 113, 42)),
        (
            LinkType::LinuxSll,
            "sll.pcap",
            Ipv4Addr::new(203, 0, 113, 43),
        ),
    ];
    for (link, file, ip) in cases {
        let path = dir.join(file);
        write_capture(&path, link, &frames);
        let c = ip.to_string();
        let log = replay_offline(&s.lab, file, &path, &["-a", "10", "-c", &c]);
        assert!(log.contains("offline replay is complete"), "{log}");
        assert_streams_replayed(&s, &online, &[ip], 1);
    }
    // Two passes, two fake addresses: every stream twice, as distinct connections.
    let path = dir.join("eth.pcap");
    let (a, b) = (
        Ipv4Addr::new(203, 0, 113, 44),
        Ipv4Addr::new(203, 0, 113, 45),
    );
    let list = format!("{a},{b}");
    let log = replay_offline(
        &s.lab,
        "two_passes",
        &path,
        &["-a", "10", "-T", "2", "-c", &list],
    );
    assert!(log.contains("replay times:2"), "{log}");
    assert_streams_replayed(&s, &online, &[a, b], 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A truncated pcap and one with a garbage record end with a clear error (non-zero exit, the
/// record named), never a panic; what came before is replayed.
#[test]
#[ignore = "needs root"]
fn offline_replay_of_broken_captures() {
    require_root("offline_broken");
    let s = setup();
    let rec = OnlineRecorder::start(&s.lab);
    let w = Workload {
        short: 10,
        keepalive: 0,
        keepalive_requests: 0,
        greeting: 0,
        big: false,
    };
    run_workload(&s.lab, "broken", &w);
    let frames = rec.finish();
    let dir = std::env::temp_dir().join(format!("tc-offline-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.pcap");
    write_capture(&good, LinkType::Ethernet, &frames);
    let bytes = std::fs::read(&good).unwrap();
    // Truncated in the middle of a record.
    let truncated = dir.join("truncated.pcap");
    std::fs::write(&truncated, &bytes[..bytes.len() - 30]).unwrap();
    // A record header claiming 1 GB after the first record.
    let garbage = dir.join("garbage.pcap");
    let mut g = bytes.clone();
    let first_len = u32::from_le_bytes(g[24 + 8..24 + 12].try_into().unwrap()) as usize;
    let second = 24 + 16 + first_len;
    g[second + 8..second + 12].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    g[second + 12..second + 16].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    std::fs::write(&garbage, &g).unwrap();
    for (name, file) in [("truncated", &truncated), ("garbage", &garbage)] {
        let path = file.to_str().unwrap().to_string();
        let x = transfers();
        let args = [
            "-s",
            "198.18.0.40",
            "-i",
            path.as_str(),
            "--offline-tail",
            "1",
            "-x",
            x.as_str(),
            "-c",
            "203.0.113.46",
        ];
        s.lab.spawn(ONLINE, name, &bin("tcpcopy"), &args);
        wait_for(
            Duration::from_secs(60),
            || !s.lab.running(name),
            || format!("{name}: tcpcopy to end: {}", s.lab.log(name)),
        );
        let code = s.lab.stop(name, libc::SIGTERM, Duration::from_secs(5));
        let log = s.lab.log(name);
        assert!(!log.contains("panicked"), "{name}: {log}");
        assert_ne!(
            code,
            Some(0),
            "{name}: a broken capture is an error exit: {log}"
        );
        assert!(
            log.contains("record") || log.contains("truncated") || log.contains("corrupt"),
            "{name}: the error names the record: {log}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Spec 9.2: when the target's answers never reach intercept (here: a target port intercept
/// does not watch, where nothing listens), the statistics warn that connections cannot be
/// established, and nothing is replayed.
#[test]
#[ignore = "needs root"]
fn unreachable_responses_are_diagnosed() {
    require_root("unreachable_responses");
    let s = setup();
    let started = Instant::now();
    start_tcpcopy(
        &s.lab,
        "tcpcopy",
        &[
            "-x",
            &format!("{ONLINE_PORT}-{TARGET_IP}:9"),
            "-c",
            "203.0.113.31",
        ],
    );
    let w = Workload {
        short: 8,
        keepalive: 0,
        keepalive_requests: 0,
        greeting: 0,
        big: false,
    };
    let n = run_workload(&s.lab, "unreach", &w);
    assert_eq!(settled_online_conns(&[&s.online], n).len(), n);
    // The diagnosis needs more than 3 s of running (spec 9.2): waiting that long on purpose.
    let at = started + Duration::from_millis(3500);
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
    let log = stop_tcpcopy(&s.lab, "tcpcopy");
    assert!(
        log.contains("many connections can't be established"),
        "{log}"
    );
    assert!(target_conns(&[&s.target]).is_empty());
}
