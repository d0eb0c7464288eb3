//! tcpcopy's flags and the acceptance behaviours of the original (spec tcpcopy.md 2, 4, 14;
//! intercept.md 10) in real runs in the namespace lab: clients talk to online, one or more
//! tcpcopy instances replay to the target, intercept on the assistant returns the answers.
//! A sniffer on the target (and on online) records the segments with their times, so timing
//! rules are asserted on the wire. Several flags share one lab run (one tcpcopy each, told
//! apart by their `-c` address). Needs root.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tc_core::control::{ClientMsg, CLIENT_ADD, PROTOCOL_VERSION};
use tc_core::packet::{build_segment, flags, SegmentSpec};
use tc_core::send::raw_socket::RawSocketSend;
use tc_core::send::Sender;
use tc_e2e::lab::*;
use tc_e2e::replay::*;

const ONLINE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const TARGET_SHORT_PORT: u16 = 8081;

fn online_addr() -> SocketAddrV4 {
    SocketAddrV4::new(ONLINE_IP, ONLINE_PORT)
}

/// `-x` from online port 80 to the target's `port`.
fn to_target(port: u16) -> String {
    format!("{ONLINE_PORT}-{TARGET_IP}:{port}")
}

/// The lab with the online server on port 80, and intercept for `target_ports`.
fn lab_with_online(target_ports: &[u16]) -> (Lab, Server) {
    let lab = Lab::start();
    let online = Server::start(&lab, ONLINE, online_addr(), false);
    let filter = target_ports
        .iter()
        .map(|p| format!("src port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    start_intercept(&lab, &format!("tcp and ({filter})"));
    (lab, online)
}

/// A client connection that sends `requests` in lock-step and stays open afterwards until
/// the returned stream is dropped; its local port.
fn open_conversation(requests: &[(usize, usize)], tag: &str) -> (TcpStream, u16) {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(online_addr()), Duration::from_secs(5))
        .expect("connect online");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    let port = s.local_addr().unwrap().port();
    let mut buf = vec![0u8; 65536];
    for (i, &(body, resp)) in requests.iter().enumerate() {
        s.write_all(&request(&format!("{tag}/{i};"), body, resp))
            .unwrap();
        let mut got = 0;
        while got < resp {
            let n = s.read(&mut buf).expect("online response");
            assert!(n > 0, "online closed");
            got += n;
        }
    }
    (s, port)
}

/// Target connections from `ip`.
fn from_ip(server: &Server, ip: Ipv4Addr) -> Vec<ConnLog> {
    server
        .snapshot()
        .into_iter()
        .filter(|c| c.peer.ip() == &ip)
        .collect()
}

/// The segments of one replayed connection (client ip and port) in both directions.
fn session(seen: &[Seen], ip: Ipv4Addr, port: u16) -> Vec<Seen> {
    seen.iter()
        .filter(|s| (s.src == ip && s.sport == port) || (s.dst == ip && s.dport == port))
        .cloned()
        .collect()
}

fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

// ----- -F, -B, -S with --capture pcap ---------------------------------------------------------

/// A user filter that selects a subset (client ports with bit 1 clear) is obeyed; `-B` reaches libpcap;
/// a snaplen shorter than the requests truncates them, and truncated packets are counted and
/// dropped (spec 6.2 [rec]: the original read past the captured bytes), never sent.
#[test]
#[ignore = "needs root"]
fn pcap_capture_obeys_user_filter_buffer_and_snaplen() {
    require_root("pcap_capture_flags");
    let (lab, online) = lab_with_online(&[TARGET_PORT]);
    let target = Server::start(
        &lab,
        TARGET,
        SocketAddrV4::new(TARGET_IP, TARGET_PORT),
        false,
    );
    let x = to_target(TARGET_PORT);
    let even =
        format!("tcp and dst host {ONLINE_IP} and dst port {ONLINE_PORT} and (tcp[0:2] & 2 = 0)");
    start_tcpcopy(
        &lab,
        "filtered",
        &[
            "-x",
            &x,
            "-c",
            "203.0.113.21",
            "--capture",
            "pcap",
            "-i",
            "eth0",
            "-F",
            &even,
            "-B",
            "4",
        ],
    );
    start_tcpcopy(
        &lab,
        "snaplen",
        &[
            "-x",
            &x,
            "-c",
            "203.0.113.22",
            "--capture",
            "pcap",
            "-i",
            "eth0",
            "-S",
            "100",
        ],
    );
    let n = 40;
    let client = lab.thread_in(CLIENT, move || {
        for i in 0..n {
            converse(
                online_addr(),
                &format!("pcapflags{i}"),
                false,
                &[(300, 100)],
                Duration::ZERO,
            )
            .expect("short connection");
        }
    });
    client.join().unwrap();
    let online_conns: HashMap<u16, Vec<u8>> = online
        .snapshot()
        .into_iter()
        .map(|c| (c.peer.port(), c.received))
        .collect();
    assert_eq!(online_conns.len(), n);
    // Linux picks even ports for connect(): bit 1 splits them.
    let selected: Vec<u16> = online_conns
        .keys()
        .copied()
        .filter(|p| p & 2 == 0)
        .collect();
    assert!(
        !selected.is_empty() && selected.len() < n,
        "the client ports are not mixed: {selected:?}"
    );
    let filtered_ip = Ipv4Addr::new(203, 0, 113, 21);
    let (ok, _) = wait_until(&target, Duration::from_secs(30), |t| {
        t.iter()
            .filter(|c| c.peer.ip() == &filtered_ip && c.closed)
            .count()
            >= selected.len()
    });
    assert!(
        ok,
        "-F subset not replayed: {:?}",
        from_ip(&target, filtered_ip).len()
    );
    for c in from_ip(&target, filtered_ip) {
        let port = c.peer.port();
        assert_eq!(
            port & 2,
            0,
            "-F let a port outside the filter through: {port}"
        );
        assert_eq!(Some(&c.received), online_conns.get(&port), "port {port}");
    }
    assert_eq!(from_ip(&target, filtered_ip).len(), selected.len());

    // -S 100: every SYN fits, no request does.
    let snap_ip = Ipv4Addr::new(203, 0, 113, 22);
    // The FIN after a missing request is a capture gap: the session gives up on the bytes
    // and may end on a new connection, so there can be more than `n`.
    let (ok, _) = wait_until(&target, Duration::from_secs(30), |t| {
        t.iter()
            .filter(|c| c.peer.ip() == &snap_ip && c.closed)
            .count()
            >= n
    });
    let snapped = from_ip(&target, snap_ip);
    assert!(
        ok,
        "-S 100: {} of {n} connections closed",
        snapped.iter().filter(|c| c.closed).count()
    );
    assert!(
        snapped.iter().all(|c| c.received.is_empty()),
        "bytes of a truncated request reached the target"
    );
    let log = stop_tcpcopy(&lab, "snaplen");
    let truncated = last_counter(&log, "truncated:").unwrap_or(0);
    assert!(
        truncated >= n as u64,
        "truncated requests not counted: {log}"
    );
    assert!(log.contains("snaplen 100"), "{log}");
    let log = stop_tcpcopy(&lab, "filtered");
    assert!(log.contains(&format!("user filter:{even}")), "{log}");
    assert!(
        log.contains("buffer 4194304"),
        "-B 4 did not reach libpcap: {log}"
    );
}

// ----- -t, -k, linger, statistics every 30 s ---------------------------------------------------

/// The counters of tcpcopy's `active:...,rel:...,obs del:...,tw:...` line.
fn session_counters(line: &str) -> (u64, u64, u64, u64) {
    let get = |name: &str| last_counter(line, name).unwrap_or(u64::MAX);
    (get("active:"), get("rel:"), get("obs del:"), get("tw:"))
}

/// `-t 3 -k 12`: a session that never sent a request is dropped once the target has been
/// silent for `-t`; an idle keep-alive session (requests answered) lives until `-k` (spec
/// 4.19, 14.12). Each drop sends the teardown RST, lingers and is released: the statistics,
/// printed every 30 s while running (14.15), count them (`obs del`, `rel`, `tw` back to 0).
/// intercept's 30 s line is consistent with the traffic (intercept spec 10 #10) and SIGTERM
/// stops it at once with status 0.
#[test]
#[ignore = "needs root"]
fn session_and_keepalive_timeouts_and_periodic_statistics() {
    require_root("timeouts");
    let (lab, _online) = lab_with_online(&[TARGET_PORT]);
    let target = Server::start(
        &lab,
        TARGET,
        SocketAddrV4::new(TARGET_IP, TARGET_PORT),
        false,
    );
    let x = to_target(TARGET_PORT);
    let fake = Ipv4Addr::new(203, 0, 113, 31);
    start_tcpcopy(
        &lab,
        "tcpcopy",
        // --no-probe: intercept's route count is compared with tcpcopy's CLIENT_ADDs, and
        // the start-up probe announces one of its own.
        &[
            "-x",
            &x,
            "-c",
            "203.0.113.31",
            "-t",
            "3",
            "-k",
            "12",
            "--no-probe",
        ],
    );
    let started = Instant::now();
    // No request: a connection that only shakes hands. Keep-alive: one request, then idle.
    let (idle, idle_port) = lab.in_ns(CLIENT, || open_conversation(&[], "idle"));
    let (keep, keep_port) = lab.in_ns(CLIENT, || open_conversation(&[(50, 100)], "keep"));
    let keep_answered = Instant::now();
    // A connection closed by the client: replayed and closed cleanly.
    lab.in_ns(CLIENT, || {
        converse(online_addr(), "clean", false, &[(50, 100)], Duration::ZERO).unwrap()
    });

    let closed = |port: u16| {
        from_ip(&target, fake)
            .iter()
            .any(|c| c.peer.port() == port && c.closed)
    };
    wait_for(
        Duration::from_secs(15),
        || closed(idle_port),
        || format!("-t 3 dropped nothing: {}", lab.log("tcpcopy")),
    );
    let idle_dropped = started.elapsed();
    assert!(
        idle_dropped >= Duration::from_millis(2500),
        "the session without request was dropped after {idle_dropped:?}, before -t"
    );
    assert!(
        !closed(keep_port),
        "the keep-alive session was dropped at -t"
    );
    wait_for(
        Duration::from_secs(25),
        || closed(keep_port),
        || format!("-k 12 dropped nothing: {}", lab.log("tcpcopy")),
    );
    let keep_dropped = keep_answered.elapsed();
    assert!(
        keep_dropped >= Duration::from_secs(11),
        "the idle keep-alive session was dropped after {keep_dropped:?}, before -k"
    );

    // The periodic statistics (every 30 s, not only at exit), once every session is released.
    wait_for(
        Duration::from_secs(45),
        || lab.log("tcpcopy").contains("obs del:"),
        || format!("no statistics after 30 s: {}", lab.log("tcpcopy")),
    );
    assert!(lab.running("tcpcopy"));
    let log = lab.log("tcpcopy");
    let line = log.lines().find(|l| l.contains("obs del:")).unwrap();
    let (active, rel, obs, tw) = session_counters(line);
    assert_eq!((active, rel, obs, tw), (0, 3, 2, 0), "{line}");
    let adds = last_counter(&log, "client add:").unwrap();
    assert_eq!(adds, 3, "{log}");

    // intercept's own 30 s line (its timer started before tcpcopy's).
    wait_for(
        Duration::from_secs(10),
        || lab.log("intercept").contains("total resp packs:"),
        || format!("intercept statistics: {}", lab.log("intercept")),
    );
    let ilog = lab.log("intercept");
    let resp = last_counter(&ilog, "total resp packs:").unwrap();
    let all = last_counter(&ilog, " all:").unwrap();
    let routes = last_counter(&ilog, "route:").unwrap();
    assert!(resp > 0 && all >= resp, "{ilog}");
    assert_eq!(
        routes, adds,
        "intercept's routes vs tcpcopy's CLIENT_ADDs: {ilog}"
    );
    drop((idle, keep));

    let log = stop_tcpcopy(&lab, "tcpcopy");
    let exit_line = log.lines().rev().find(|l| l.contains("obs del:")).unwrap();
    assert_eq!(session_counters(exit_line), (0, 3, 2, 0), "{exit_line}");
    let stop = Instant::now();
    let code = lab.stop("intercept", libc::SIGTERM, Duration::from_secs(5));
    assert_eq!(code, Some(0));
    assert!(
        stop.elapsed() < Duration::from_secs(2),
        "intercept took {:?} to stop",
        stop.elapsed()
    );
    let ilog2 = lab.log("intercept");
    assert!(
        ilog2.matches("total resp packs:").count() > ilog.matches("total resp packs:").count(),
        "no final summary: {ilog2}"
    );
}

// ----- pacing: -W, -R and the wire behaviours of spec 14 ---------------------------------------

/// Times of one replayed keep-alive session of three requests of `req_len` bytes each.
struct Exchange {
    /// First segment of each request, as the target received it.
    req_first: Vec<Instant>,
    /// First and last data segment of each response.
    resp_first: Vec<Instant>,
    resp_last: Vec<Instant>,
}

fn exchange(s: &[Seen], ip: Ipv4Addr, req_len: u32, resp_len: u32) -> Exchange {
    let syn = s.iter().find(|p| p.src == ip && p.syn()).expect("SYN");
    let synack = s.iter().find(|p| p.dst == ip && p.syn()).expect("SYN-ACK");
    let (c0, t0) = (syn.seq.wrapping_add(1), synack.seq.wrapping_add(1));
    let mut e = Exchange {
        req_first: Vec::new(),
        resp_first: Vec::new(),
        resp_last: Vec::new(),
    };
    for i in 0..3u32 {
        let req_seq = c0.wrapping_add(i * req_len);
        let first = s
            .iter()
            .find(|p| p.src == ip && p.len > 0 && p.seq == req_seq)
            .unwrap_or_else(|| panic!("request {i} of {ip}"));
        e.req_first.push(first.at);
        let (lo, hi) = (
            t0.wrapping_add(i * resp_len),
            t0.wrapping_add((i + 1) * resp_len),
        );
        let data: Vec<&Seen> = s
            .iter()
            .filter(|p| p.dst == ip && p.len > 0 && !seq_after(lo, p.seq) && seq_after(hi, p.seq))
            .collect();
        assert!(!data.is_empty(), "response {i} to {ip}");
        e.resp_first.push(data[0].at);
        e.resp_last.push(data[data.len() - 1].at);
    }
    e
}

/// One lab, four tcpcopy instances on the same client traffic:
/// * .41 lock-step (spec 14.4) against a target that answers after 300 ms, and the wire
///   behaviours of 14.1 (CLIENT_ADD before the SYN, handshake ACK = target ISN + 1), 14.5 (a
///   multi-segment request back to back), 14.6 (pure client ACKs absorbed, tcpcopy acks the
///   response data itself) and 14.7 (the target's FIN acked, no RST, `rel`/`tw` at exit);
/// * .42 with `-W`: the next request goes before the (late) response;
/// * .43 with `-R 400` and .44 measuring the RTT, against a target whose answers are shorter
///   than online's: the response counts complete after a quiet period of 2 RTT, 800 ms with
///   `-R 400`, a few ms with the lab's measured RTT.
#[test]
#[ignore = "needs root"]
fn request_pacing_w_r_and_wire_behaviours() {
    require_root("pacing");
    let (lab, online) = lab_with_online(&[TARGET_PORT, TARGET_SHORT_PORT]);
    let slow = Answer {
        delay: Duration::from_millis(300),
        short_by: 0,
    };
    let target = Server::start_answering(
        &lab,
        TARGET,
        SocketAddrV4::new(TARGET_IP, TARGET_PORT),
        false,
        slow,
    );
    let short = Answer {
        delay: Duration::ZERO,
        short_by: 300,
    };
    let target_short = Server::start_answering(
        &lab,
        TARGET,
        SocketAddrV4::new(TARGET_IP, TARGET_SHORT_PORT),
        false,
        short,
    );
    let on_target = Sniffer::start(&lab, TARGET, "tcp and net 203.0.113.0/24");
    let on_online = Sniffer::start(
        &lab,
        ONLINE,
        &format!("tcp and ((dst host {ASSIST_IP} and dst port {INTERCEPT_PORT}) or dst host {TARGET_IP})"),
    );
    let (x, x_short) = (to_target(TARGET_PORT), to_target(TARGET_SHORT_PORT));
    start_tcpcopy(&lab, "lockstep", &["-x", &x, "-c", "203.0.113.41"]);
    start_tcpcopy(&lab, "w", &["-x", &x, "-c", "203.0.113.42", "-W"]);
    start_tcpcopy(
        &lab,
        "r400",
        &["-x", &x_short, "-c", "203.0.113.43", "-R", "400"],
    );
    start_tcpcopy(&lab, "rtt", &["-x", &x_short, "-c", "203.0.113.44"]);

    // Three requests of 112 bytes ("REQ 100 600\n" + 100), 600-byte answers; then one
    // request of 5000 bytes that leaves in several segments.
    let (keep_port, big_port) = lab.in_ns(CLIENT, || {
        let (s, keep) = open_conversation(&[(100, 600); 3], "pace");
        drop(s);
        let (s, big) = open_conversation(&[(5000, 100)], "big");
        drop(s);
        (keep, big)
    });
    let ips: Vec<Ipv4Addr> = (41..=44).map(|d| Ipv4Addr::new(203, 0, 113, d)).collect();
    let done = |server: &Server, ip: Ipv4Addr| {
        from_ip(server, ip).iter().filter(|c| c.closed).count() == 2
    };
    wait_for(
        Duration::from_secs(30),
        || {
            done(&target, ips[0])
                && done(&target, ips[1])
                && done(&target_short, ips[2])
                && done(&target_short, ips[3])
        },
        || "every replayed connection to close at the target".to_string(),
    );
    let online_streams: HashMap<u16, Vec<u8>> = online
        .snapshot()
        .into_iter()
        .map(|c| (c.peer.port(), c.received))
        .collect();
    for (server, ip) in [
        (&target, ips[0]),
        (&target, ips[1]),
        (&target_short, ips[2]),
        (&target_short, ips[3]),
    ] {
        for c in from_ip(server, ip) {
            assert_eq!(
                Some(&c.received),
                online_streams.get(&c.peer.port()),
                "{} replayed inexactly",
                c.peer
            );
        }
    }
    // Let the target's last FINs be acked, then stop everything.
    std::thread::sleep(Duration::from_millis(300));
    let mut logs = HashMap::new();
    for name in ["lockstep", "w", "r400", "rtt"] {
        logs.insert(name, stop_tcpcopy(&lab, name));
    }
    let seen = on_target.finish();
    let tunnel = on_online.finish();

    // 14.7 at exit: both sessions released, none timed out, none lingering.
    for (name, log) in &logs {
        let line = log.lines().rev().find(|l| l.contains("obs del:")).unwrap();
        let (_, rel, obs, tw) = session_counters(line);
        assert_eq!((rel, obs, tw), (2, 0, 0), "{name}: {line}");
    }

    const REQ: u32 = 112;
    const RESP: u32 = 600;
    for (i, &ip) in ips.iter().enumerate() {
        for port in [keep_port, big_port] {
            let s = session(&seen, ip, port);
            // 14.1: the handshake ACK acknowledges the target's ISN + 1 ...
            let synack = s.iter().find(|p| p.dst == ip && p.syn()).expect("SYN-ACK");
            let hs_ack = s
                .iter()
                .find(|p| p.src == ip && !p.syn() && p.at >= synack.at)
                .expect("handshake ACK");
            assert_eq!(
                hs_ack.ack,
                synack.seq.wrapping_add(1),
                "{ip}:{port} handshake ACK"
            );
            // ... and the CLIENT_ADD for the session left online before its SYN.
            let syn_out = tunnel
                .iter()
                .find(|p| p.src == ip && p.sport == port && p.syn())
                .expect("SYN leaving online");
            let tport = if i < 2 {
                TARGET_PORT
            } else {
                TARGET_SHORT_PORT
            };
            let mut add = ip.octets().to_vec();
            add.extend_from_slice(&port.to_be_bytes());
            add.extend_from_slice(&[0, 1]);
            add.extend_from_slice(&TARGET_IP.octets());
            add.extend_from_slice(&tport.to_be_bytes());
            let add_at = tunnel
                .iter()
                .find(|p| p.dport == INTERCEPT_PORT && p.head.windows(14).any(|w| w == add))
                .map(|p| p.at)
                .unwrap_or_else(|| panic!("no CLIENT_ADD for {ip}:{port}"));
            assert!(
                add_at <= syn_out.at,
                "{ip}:{port}: CLIENT_ADD after the SYN"
            );
            // 14.7: the target's FIN is acked, and nothing was reset.
            let fin = s
                .iter()
                .find(|p| p.dst == ip && p.fin())
                .expect("target FIN");
            let fin_end = fin.seq.wrapping_add(fin.len).wrapping_add(1);
            assert!(
                s.iter()
                    .any(|p| p.src == ip && p.at >= fin.at && p.ack == fin_end),
                "{ip}:{port}: the target's FIN was not acked"
            );
            assert!(
                !s.iter().any(Seen::rst),
                "{ip}:{port}: a RST in a clean session"
            );
            // 14.6: every response byte is acked by tcpcopy itself, and no online pure ACK
            // is forwarded: each pure ACK after the handshake acks something new.
            let mut acked = hs_ack.ack;
            for p in s.iter().filter(|p| p.src == ip && p.at > hs_ack.at) {
                if p.pure_ack() {
                    assert!(
                        seq_after(p.ack, acked),
                        "{ip}:{port}: a pure ACK that acks nothing new (forwarded from online?)"
                    );
                }
                if seq_after(p.ack, acked) {
                    acked = p.ack;
                }
            }
            for d in s.iter().filter(|p| p.dst == ip && p.len > 0) {
                let end = d.seq.wrapping_add(d.len);
                assert!(
                    s.iter()
                        .any(|p| p.src == ip && p.at >= d.at && !seq_after(end, p.ack)),
                    "{ip}:{port}: response data up to {end} never acked"
                );
            }
        }
        let log = logs[["lockstep", "w", "r400", "rtt"][i]].as_str();
        assert!(
            last_counter(log, "pure ack:").unwrap_or(0) > 0,
            "no online pure ACK was absorbed: {log}"
        );
    }

    // 14.5: the 5000-byte request reached the target in several segments, back to back
    // (nothing held them for a response, which only comes after the last one).
    let big = session(&seen, ips[0], big_port);
    let data: Vec<&Seen> = big
        .iter()
        .filter(|p| p.src == ips[0] && p.len > 0)
        .collect();
    assert!(
        data.len() >= 3,
        "the big request left in {} segments",
        data.len()
    );
    let span = data[data.len() - 1].at - data[0].at;
    assert!(
        span < Duration::from_millis(500),
        "the request's segments took {span:?}"
    );

    // 14.4: lock-step, each request after the previous (late) response.
    let lock = exchange(&session(&seen, ips[0], keep_port), ips[0], REQ, RESP);
    for k in 1..3 {
        assert!(
            lock.req_first[k] >= lock.resp_last[k - 1],
            "lock-step: request {k} went before response {} was complete",
            k - 1
        );
    }
    // -W: the next request went before the target answered the previous one.
    let w = exchange(&session(&seen, ips[1], keep_port), ips[1], REQ, RESP);
    assert!(
        w.req_first[1] < w.resp_first[0],
        "-W: request 1 waited for response 0 ({:?} after it)",
        w.req_first[1] - w.resp_first[0]
    );
    // ... but a FIN still waits for the response (spec 4.11: -W leaves the FIN handling
    // unchanged; a FIN in the middle of a response makes servers abort it): the one-request
    // connection closed right after its online answer, 300 ms before the target's.
    let w_big = session(&seen, ips[1], big_port);
    let w_fin = w_big
        .iter()
        .find(|p| p.src == ips[1] && p.fin())
        .expect("client FIN");
    let w_resp = w_big
        .iter()
        .find(|p| p.dst == ips[1] && p.len > 0)
        .expect("response");
    assert!(
        w_fin.at >= w_resp.at,
        "-W: the client FIN went {:?} before the response",
        w_resp.at - w_fin.at
    );
    // -R 400: quiet period of 800 ms after a short answer; measured RTT: a few ms.
    let short_resp = RESP - 300;
    let r = exchange(&session(&seen, ips[2], keep_port), ips[2], REQ, short_resp);
    let m = exchange(&session(&seen, ips[3], keep_port), ips[3], REQ, short_resp);
    for k in 1..3 {
        let gap_r = r.req_first[k] - r.resp_last[k - 1];
        let gap_m = m.req_first[k] - m.resp_last[k - 1];
        assert!(
            gap_r >= Duration::from_millis(700),
            "-R 400: request {k} went {gap_r:?} after the short response"
        );
        assert!(
            gap_m < Duration::from_millis(500),
            "measured RTT: request {k} waited {gap_m:?} after the short response"
        );
    }
}

// ----- -g, -H, -f -------------------------------------------------------------------------------

/// One lab for three flags on the same traffic:
/// * `-g`: the share of sessions replayed rises with time (1 % more each second from the
///   first packet; measured over the first 16 s only);
/// * `-H`: connections to 127.0.0.1 on the online host are replayed from the `-H` address;
/// * `-f 1` and `-f 2`: two instances with the same `-c` address share one intercept without
///   colliding: every online connection is replayed exactly once by each, whole;
/// * intercept's delay table meanwhile (intercept spec 10 #6, [`delay_table_under_traffic`]).
#[test]
#[ignore = "needs root"]
fn gradual_ramp_localhost_source_and_port_shift() {
    require_root("gradual_localhost_shift");
    let (lab, online) = lab_with_online(&[TARGET_PORT]);
    let online_lo = Server::start(
        &lab,
        ONLINE,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, ONLINE_PORT),
        false,
    );
    let target = Server::start(
        &lab,
        TARGET,
        SocketAddrV4::new(TARGET_IP, TARGET_PORT),
        false,
    );
    let x_online = format!("{ONLINE_IP}:{ONLINE_PORT}-{TARGET_IP}:{TARGET_PORT}");
    let x_lo = format!("127.0.0.1:{ONLINE_PORT}-{TARGET_IP}:{TARGET_PORT}");
    start_tcpcopy(&lab, "g", &["-x", &x_online, "-c", "203.0.113.51", "-g"]);
    start_tcpcopy(&lab, "h", &["-x", &x_lo, "-H", "203.0.113.52"]);
    start_tcpcopy(
        &lab,
        "f1",
        &["-x", &x_online, "-c", "203.0.113.53", "-f", "1"],
    );
    start_tcpcopy(
        &lab,
        "f2",
        &["-x", &x_online, "-c", "203.0.113.53", "-f", "2"],
    );

    let run_for = Duration::from_secs(16);
    let clients: Vec<JoinHandle<Vec<(u16, Duration)>>> = (0..2)
        .map(|t| {
            lab.thread_in(CLIENT, move || {
                let start = Instant::now();
                let mut started = Vec::new();
                let mut i = 0;
                while start.elapsed() < run_for {
                    let at = start.elapsed();
                    let (s, port) = open_conversation(&[(40, 60)], &format!("g{t}.{i}"));
                    drop(s);
                    started.push((port, at));
                    i += 1;
                    std::thread::sleep(Duration::from_millis(60));
                }
                started
            })
        })
        .collect();
    let lo = lab.thread_in(ONLINE, || {
        for i in 0..20 {
            converse(
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, ONLINE_PORT),
                &format!("lo{i}"),
                false,
                &[(40, 60)],
                Duration::ZERO,
            )
            .expect("loopback connection");
        }
    });
    delay_table_under_traffic(&lab);
    let mut started: Vec<(u16, Duration)> = Vec::new();
    for c in clients {
        started.extend(c.join().unwrap());
    }
    lo.join().unwrap();
    let total = started.len();
    assert!(total >= 100, "only {total} client connections");

    // -f: each online connection twice, whole, from the shared -c address.
    let shift_ip = Ipv4Addr::new(203, 0, 113, 53);
    let online_conns: Vec<ConnLog> = online
        .snapshot()
        .into_iter()
        .filter(|c| c.peer.ip() == &CLIENT_IP)
        .collect();
    assert_eq!(online_conns.len(), total);
    let (ok, _) = wait_until(&target, Duration::from_secs(40), |t| {
        let shifted: Vec<&ConnLog> = t.iter().filter(|c| c.peer.ip() == &shift_ip).collect();
        online_conns.iter().all(|o| {
            shifted
                .iter()
                .filter(|c| c.closed && c.received == o.received)
                .count()
                == 2
        })
    });
    let shifted = from_ip(&target, shift_ip);
    assert!(
        ok,
        "-f 1/-f 2: {} target connections for {total} online ones",
        shifted.len()
    );
    assert_eq!(
        shifted.len(),
        2 * total,
        "a session replayed more than twice"
    );
    for c in &shifted {
        let o = online_conns
            .iter()
            .find(|o| o.received == c.received)
            .unwrap();
        assert_ne!(
            c.peer.port(),
            o.peer.port(),
            "-f left a client port unshifted"
        );
    }

    // -H: the loopback connections, from the -H address, whole.
    let lo_streams: HashMap<u16, Vec<u8>> = online_lo
        .snapshot()
        .into_iter()
        .map(|c| (c.peer.port(), c.received))
        .collect();
    assert_eq!(lo_streams.len(), 20);
    let h_ip = Ipv4Addr::new(203, 0, 113, 52);
    let (ok, replayed) = wait_until(&target, Duration::from_secs(20), |t| {
        t.iter()
            .filter(|c| c.peer.ip() == &h_ip && c.closed)
            .count()
            == 20
    });
    assert!(
        ok,
        "-H replayed {} of 20",
        replayed.iter().filter(|c| c.peer.ip() == &h_ip).count()
    );
    for c in from_ip(&target, h_ip) {
        assert_eq!(
            Some(&c.received),
            lo_streams.get(&c.peer.port()),
            "{}",
            c.peer
        );
    }
    assert!(
        !target.snapshot().iter().any(|c| c.peer.ip().is_loopback()),
        "a 127.0.0.1 source reached the target"
    );

    // -g: the share replayed in the last 4 s is well above the share in the first 4 s.
    let g_ip = Ipv4Addr::new(203, 0, 113, 51);
    std::thread::sleep(Duration::from_secs(1));
    let g_ports: Vec<u16> = from_ip(&target, g_ip)
        .iter()
        .map(|c| c.peer.port())
        .collect();
    let share = |from: u64, to: u64| {
        let window: Vec<&(u16, Duration)> = started
            .iter()
            .filter(|(_, at)| (from..to).contains(&at.as_secs()))
            .collect();
        let replayed = window.iter().filter(|(p, _)| g_ports.contains(p)).count();
        (replayed as f64 / window.len().max(1) as f64, window.len())
    };
    let (early, n_early) = share(0, 4);
    let (late, n_late) = share(12, 16);
    assert!(
        late >= 0.06 && late > early + 0.04,
        "-g: {:.1}% of {n_early} sessions replayed in the first 4 s, {:.1}% of {n_late} in 12-16 s",
        early * 100.0,
        late * 100.0
    );
    let log = stop_tcpcopy(&lab, "g");
    assert!(log.contains("gradully replay"), "{log}");
    assert!(last_counter(&log, "sampled out:").unwrap_or(0) > 0, "{log}");
    for name in ["h", "f1", "f2"] {
        stop_tcpcopy(&lab, name);
    }
}

/// The first segment `sniff` saw that matches `what` (bounded wait).
fn wait_seen(sniff: &Sniffer, what: &str, f: impl Fn(&Seen) -> bool) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = sniff.snapshot().into_iter().find(&f) {
            return p;
        }
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// intercept spec 10 #6, while the test's clients are being replayed: a SYN-ACK captured
/// before its CLIENT_ADD is delivered right after the ADD; a data response without a route is
/// dropped, logged (`fd is null after session is created`) and not delivered later.
fn delay_table_under_traffic(lab: &Lab) {
    let fake = Ipv4Addr::new(203, 0, 113, 99);
    let cport = 40099u16;
    let sniff = Sniffer::start(lab, TARGET, &format!("tcp and host {fake}"));
    let mut raw = lab.in_ns(ONLINE, || RawSocketSend::open().expect("raw socket"));
    let mut send = |seq: u32, ack: u32, fl: u8, payload: &[u8]| {
        let spec = SegmentSpec {
            src: fake.into(),
            dst: TARGET_IP.into(),
            src_port: cport,
            dst_port: TARGET_PORT,
            seq,
            ack,
            flags: fl,
            window: 65535,
            ip_id: 1,
            mss: (fl & flags::SYN != 0).then_some(1460),
            timestamps: None,
            payload,
        };
        let mut buf = [0u8; 1500];
        let n = build_segment(&spec, &mut buf).unwrap();
        raw.send(&buf[..n], 0).expect("raw send");
    };
    // A connection nobody announced: SYN, then a request once the target answered.
    let isn = 7_000_000u32;
    send(isn, 0, flags::SYN, &[]);
    let synack = wait_seen(&sniff, "the SYN-ACK", |p| p.src == TARGET_IP && p.syn());
    let req = request("delay", 10, 20);
    send(
        isn + 1,
        synack.seq.wrapping_add(1),
        flags::ACK | flags::PSH,
        &req,
    );
    wait_seen(&sniff, "the answer", |p| p.src == TARGET_IP && p.len > 0);
    // Reset: the target forgets the connection and sends nothing more.
    send(isn + 1 + req.len() as u32, 0, flags::RST, &[]);
    wait_for(
        Duration::from_secs(10),
        || {
            lab.log("intercept")
                .contains("fd is null after session is created")
        },
        || {
            format!(
                "intercept to drop the unrouted answer: {}",
                lab.log("intercept")
            )
        },
    );
    // A tcpcopy stand-in announces the connection now.
    let records: Vec<Vec<u8>> = lab.in_ns(ONLINE, || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(ASSIST_IP, INTERCEPT_PORT)),
            Duration::from_secs(5),
        )
        .expect("tunnel");
        let version = ClientMsg {
            client_ip: Ipv4Addr::UNSPECIFIED,
            client_port: 0,
            kind: PROTOCOL_VERSION,
            target_ip: Ipv4Addr::UNSPECIFIED,
            target_port: 0,
        };
        let add = ClientMsg {
            client_ip: fake,
            client_port: cport,
            kind: CLIENT_ADD,
            target_ip: TARGET_IP,
            target_port: TARGET_PORT,
        };
        s.write_all(&version.encode()).unwrap();
        s.write_all(&add.encode()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut bytes = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        // Combined frames: a big-endian count, then 64-byte records.
        let mut out = Vec::new();
        let mut at = 0;
        while at + 2 <= bytes.len() {
            let count = usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
            at += 2;
            assert!(
                (1..=16).contains(&count) && at + count * 64 <= bytes.len(),
                "a broken frame from intercept"
            );
            for _ in 0..count {
                out.push(bytes[at..at + 64].to_vec());
                at += 64;
            }
        }
        out
    });
    let syn_acks = records.iter().filter(|r| r[33] & 0x12 == 0x12).count();
    assert!(
        syn_acks >= 1,
        "the delayed SYN-ACK was not delivered after the ADD: {} records",
        records.len()
    );
    assert!(
        records.iter().all(|r| {
            let total = u16::from_be_bytes([r[2], r[3]]);
            total == 20 + u16::from(r[32] >> 4) * 4
        }),
        "an answer captured without a route was delivered later"
    );
    drop(sniff);
}
