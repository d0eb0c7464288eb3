//! intercept end to end in network namespaces (needs root): online 198.18.0.20, target
//! 198.18.0.30 (server :8080, route 203.0.113.0/24 via the assistant), assistant 198.18.0.40
//! running the intercept binary with libpcap on its eth0 and the default port 36524.
//!
//! A tcpcopy stand-in in the online namespace sends CLIENT_ADD, then a raw SYN from a fake
//! client 203.0.113.x, completes the exchange with raw segments, and must receive every response
//! segment of its connection, in capture order (compared with a reference capture taken in the
//! assistant), and nothing of another peer's connection.
//!
//! The namespaces, processes and their cleanup come from the shared lab (`tc_e2e::lab`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tc_core::control::{ClientMsg, CLIENT_ADD};
use tc_core::packet::{build_segment, flags, SegmentSpec};
use tc_e2e::lab::{require, wait_for, Lab, ASSIST, ASSIST_IP, CLIENT, ONLINE, TARGET, TARGET_IP};

const BIN: &str = env!("CARGO_BIN_EXE_intercept");
const TARGET_PORT: u16 = 8080;

/// Sends raw IPv4 segments (IP_HDRINCL) from the online namespace.
struct Raw(socket2::Socket);

impl Raw {
    fn send(&self, spec: &SegmentSpec) {
        let mut buf = [0u8; 1500];
        let n = build_segment(spec, &mut buf).unwrap();
        let to = std::net::SocketAddr::new(spec.dst, 0);
        self.0.send_to(&buf[..n], &to.into()).expect("raw send");
    }
}

fn seg<'a>(
    src: Ipv4Addr,
    sport: u16,
    seq: u32,
    ack: u32,
    fl: u8,
    payload: &'a [u8],
) -> SegmentSpec<'a> {
    SegmentSpec {
        src: src.into(),
        dst: TARGET_IP.into(),
        src_port: sport,
        dst_port: TARGET_PORT,
        seq,
        ack,
        flags: fl,
        window: 65535,
        ip_id: 1,
        mss: if fl & flags::SYN != 0 {
            Some(1460)
        } else {
            None
        },
        timestamps: None,
        payload,
    }
}

/// (dst ip, dst port, seq, ack, flags, payload bytes in the record)
type Seen = (Ipv4Addr, u16, u32, u32, u8);

fn seen_of(ip: &[u8]) -> Seen {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let t = &ip[ihl..];
    (
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        u16::from_be_bytes([t[2], t[3]]),
        u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        t[13],
    )
}

/// A tcpcopy stand-in: reassembles frames from a stream with a timeout.
struct Peer {
    s: TcpStream,
    combined: bool,
    rec_len: usize,
    buf: Vec<u8>,
    records: Vec<Vec<u8>>,
}

impl Peer {
    fn add(&mut self, cip: Ipv4Addr, cport: u16) {
        let m = ClientMsg {
            client_ip: cip,
            client_port: cport,
            kind: CLIENT_ADD,
            target_ip: TARGET_IP,
            target_port: TARGET_PORT,
        };
        self.s.write_all(&m.encode()).unwrap();
    }

    /// Reads what arrives within `wait` into `records`; returns how many new records.
    fn pump(&mut self, wait: Duration) -> usize {
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut tmp = [0u8; 8192];
        let before = self.records.len();
        match self.s.read(&mut tmp) {
            Ok(0) => panic!("intercept closed the tunnel"),
            Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("tunnel read: {e}"),
        }
        loop {
            let (hdr, count) = if self.combined {
                if self.buf.len() < 2 {
                    break;
                }
                let c = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
                let max = if self.rec_len == 64 { 16 } else { 6 };
                assert!((1..=max).contains(&c), "bad frame count {c}");
                (2, c)
            } else {
                (0, 1)
            };
            let need = hdr + count * self.rec_len;
            if self.buf.len() < need {
                break;
            }
            for i in 0..count {
                let at = hdr + i * self.rec_len;
                self.records.push(self.buf[at..at + self.rec_len].to_vec());
            }
            self.buf.drain(..need);
        }
        self.records.len() - before
    }

    fn wait_for(&mut self, what: &str, mut cond: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut checked = 0;
        loop {
            while checked < self.records.len() {
                if cond(&self.records[checked]) {
                    return self.records[checked].clone();
                }
                checked += 1;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.pump(Duration::from_millis(100));
        }
    }

    /// Reads until nothing arrived for `quiet`.
    fn drain_quiet(&mut self, quiet: Duration) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pump(quiet) > 0 {
            assert!(Instant::now() < deadline, "responses keep coming");
        }
    }
}

/// Payload length of a record (IHL is 5 in records).
fn rec_payload_len(r: &[u8]) -> u32 {
    let tot = u32::from(u16::from_be_bytes([r[2], r[3]]));
    tot.saturating_sub(20 + u32::from(r[32] >> 4) * 4)
}

/// One full exchange per variant.
fn run_variant(tag: &str, extra: &[&str], combined: bool, rec_len: usize, client_net: u8) {
    let lab = Lab::start();
    // intercept logs (debug level) to the lab's log of the process: shown if the test fails,
    // removed with the lab.
    let log = lab.log_path("intercept");
    let log = log.to_str().expect("log path");
    let mut args = vec![
        "-F",
        "tcp and src port 8080",
        "-i",
        "eth0",
        "-l",
        log,
        "--allow",
        "198.18.0.20",
    ];
    args.extend_from_slice(extra);
    lab.spawn_env(
        ASSIST,
        "intercept",
        &PathBuf::from(BIN),
        &args,
        &[("RUST_LOG", "debug")],
    );

    // Target server: answers "hello" with 100 bytes, then 3000 more, then closes.
    let small: Vec<u8> = (0..100u8).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let listener = lab.in_ns(TARGET, || {
        TcpListener::bind((TARGET_IP, TARGET_PORT)).expect("target bind")
    });
    listener.set_nonblocking(true).unwrap();
    let server = {
        let stop = stop.clone();
        let small = small.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_nodelay(true).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut b = [0u8; 64];
                        if s.read(&mut b).unwrap_or(0) > 0 {
                            let _ = s.write_all(&small);
                            let _ = s.write_all(&[b'z'; 3000]);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };

    // Reference capture in the assistant, same filter.
    let ref_stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let reference = {
        let ref_stop = ref_stop.clone();
        let seen = seen.clone();
        lab.thread_in(ASSIST, move || {
            let mut cap = pcap::Capture::from_device("eth0")
                .unwrap()
                .immediate_mode(true)
                .timeout(20)
                .snaplen(200)
                .open()
                .expect("reference capture")
                .setnonblock()
                .unwrap();
            cap.filter("tcp and src port 8080", true).unwrap();
            ready_tx.send(()).unwrap();
            while !ref_stop.load(Ordering::SeqCst) {
                match cap.next_packet() {
                    Ok(p) => seen.lock().unwrap().push(seen_of(&p.data[14..])),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // Stand-ins and the raw socket in the online namespace.
    let (mut a, mut b, raw) = lab.in_ns(ONLINE, || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let connect = || loop {
            match TcpStream::connect((ASSIST_IP, 36524)) {
                Ok(mut s) => {
                    s.write_all(&ClientMsg::version(6).encode()).unwrap();
                    return Peer {
                        s,
                        combined,
                        rec_len,
                        buf: Vec::new(),
                        records: Vec::new(),
                    };
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "intercept not listening on 36524: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let a = connect();
        let b = connect();
        let raw = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
        .expect("raw socket");
        (a, b, Raw(raw))
    });

    let x = Ipv4Addr::new(203, 0, 113, client_net);
    let y = Ipv4Addr::new(203, 0, 113, client_net + 1);
    let (xp, yp) = (41000u16, 42000u16);

    // B's connection: SYN, SYN-ACK, RST.
    b.add(y, yp);
    raw.send(&seg(y, yp, 5000, 0, flags::SYN, &[]));
    let sa = b.wait_for("B's SYN-ACK", |r| {
        seen_of(r).1 == yp && seen_of(r).4 & flags::SYN != 0
    });
    assert_eq!(seen_of(&sa).0, y);
    raw.send(&seg(y, yp, 5001, 0, flags::RST, &[]));

    // A's connection: a full exchange.
    a.add(x, xp);
    raw.send(&seg(x, xp, 1000, 0, flags::SYN, &[]));
    let sa = a.wait_for("A's SYN-ACK", |r| seen_of(r).4 & flags::SYN != 0);
    let isn = seen_of(&sa).2;
    raw.send(&seg(x, xp, 1001, isn.wrapping_add(1), flags::ACK, &[]));
    raw.send(&seg(
        x,
        xp,
        1001,
        isn.wrapping_add(1),
        flags::ACK | flags::PSH,
        b"hello",
    ));
    // Wait for the 3100 bytes (possibly retransmitted), ACK them, then the FIN.
    let end = isn.wrapping_add(1 + 3100);
    a.wait_for("A's last data byte", |r| {
        let s = seen_of(r);
        s.2.wrapping_add(rec_payload_len(r)) == end || s.4 & flags::FIN != 0
    });
    raw.send(&seg(x, xp, 1006, end, flags::ACK, &[]));
    a.wait_for("A's FIN", |r| seen_of(r).4 & flags::FIN != 0);
    raw.send(&seg(
        x,
        xp,
        1006,
        end.wrapping_add(1),
        flags::RST | flags::ACK,
        &[],
    ));
    // Both intercept and the reference see the same segments (retransmissions included):
    // read until the stand-ins have as many as the reference and nothing more comes.
    let of = |v: &[Seen], ip: Ipv4Addr, port: u16| -> Vec<Seen> {
        v.iter()
            .copied()
            .filter(|s| s.0 == ip && s.1 == port)
            .collect()
    };
    for _ in 0..20 {
        a.drain_quiet(Duration::from_millis(300));
        b.drain_quiet(Duration::from_millis(50));
        let r = seen.lock().unwrap().clone();
        if of(&r, x, xp).len() == a.records.len() && of(&r, y, yp).len() == b.records.len() {
            break;
        }
    }
    ref_stop.store(true, Ordering::SeqCst);
    reference.join().unwrap();
    let reference = seen.lock().unwrap().clone();
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();

    let got_a: Vec<Seen> = a.records.iter().map(|r| seen_of(r)).collect();
    let want_a: Vec<Seen> = reference
        .iter()
        .copied()
        .filter(|s| s.0 == x && s.1 == xp)
        .collect();
    assert!(want_a.len() >= 4, "reference capture too small: {want_a:?}");
    assert_eq!(
        got_a, want_a,
        "A gets every response of its connection, in capture order"
    );
    let got_b: Vec<Seen> = b.records.iter().map(|r| seen_of(r)).collect();
    let want_b: Vec<Seen> = reference
        .iter()
        .copied()
        .filter(|s| s.0 == y && s.1 == yp)
        .collect();
    assert_eq!(got_b, want_b, "B gets only its own connection");

    if rec_len == 192 {
        // The 100-byte segment travels with its payload.
        let rec = a
            .records
            .iter()
            .find(|r| seen_of(r).2 == isn.wrapping_add(1) && rec_payload_len(r) == 100)
            .expect("the 100-byte data record");
        let doff = usize::from(rec[32] >> 4) * 4;
        assert_eq!(&rec[20 + doff..20 + doff + 100], &small[..]);
    }
    eprintln!(
        "variant {tag}: A got {} records, B got {}, reference {} segments",
        got_a.len(),
        got_b.len(),
        reference.len()
    );
}

#[test]
#[ignore = "needs root"]
fn lab_combined_plain_and_payload() {
    require("lab_combined_plain_and_payload", &["ip"]);
    run_variant("c", &[], true, 64, 10);
    run_variant("p", &["--disable-combined"], false, 64, 20);
    run_variant("y", &["--payload"], true, 192, 30);
}

/// `ip` in the namespace of `host`.
fn ip_in(lab: &Lab, host: &str, args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(["-n", &lab.ns(host)])
        .args(args)
        .status()
        .expect("run ip");
    assert!(st.success(), "ip {args:?} in {host}");
}

/// Issue 15.6: a capture device that disappears (its veth deleted) is reported, reopened
/// with a backoff once it is back, and when nothing can be captured for `--capture-lost-exit`
/// seconds intercept exits non-zero.
#[test]
#[ignore = "needs root"]
fn lab_lost_capture_device_is_reopened_then_fatal() {
    require("lab_lost_capture_device_is_reopened_then_fatal", &["ip"]);
    let lab = Lab::start();
    let add = || {
        ip_in(
            &lab,
            ASSIST,
            &[
                "link", "add", "cap0", "type", "veth", "peer", "name", "cap0p",
            ],
        );
        ip_in(&lab, ASSIST, &["link", "set", "cap0", "up"]);
        ip_in(&lab, ASSIST, &["link", "set", "cap0p", "up"]);
    };
    add();
    lab.spawn(
        ASSIST,
        "intercept",
        &PathBuf::from(BIN),
        &[
            "-F",
            "tcp",
            "-i",
            "cap0",
            "-b",
            "127.0.0.1",
            "--capture-lost-exit",
            "3",
        ],
    );
    let log = |what: &'static str| {
        let lab = &lab;
        move || format!("{what}; intercept log:\n{}", lab.log("intercept"))
    };
    wait_for(
        Duration::from_secs(10),
        || lab.log("intercept").contains("msg listen socket"),
        log("intercept listening"),
    );
    ip_in(&lab, ASSIST, &["link", "del", "cap0"]);
    wait_for(
        Duration::from_secs(5),
        || {
            lab.log("intercept")
                .contains("[error] capture device cap0 lost")
        },
        log("the loss reported"),
    );
    add();
    wait_for(
        Duration::from_secs(5),
        || {
            lab.log("intercept")
                .contains("capture device cap0 reopened")
        },
        log("cap0 reopened"),
    );
    assert!(lab.running("intercept"), "{}", lab.log("intercept"));
    ip_in(&lab, ASSIST, &["link", "del", "cap0"]);
    let t = Instant::now();
    wait_for(
        Duration::from_secs(10),
        || !lab.running("intercept"),
        log("intercept to exit"),
    );
    let code = lab.stop("intercept", 0, Duration::from_secs(1));
    let text = lab.log("intercept");
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit code {code:?}:\n{text}"
    );
    assert!(text.contains("nothing could be captured for 3 s"), "{text}");
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
}

/// A response segment from the target's server to a fake client, sent raw in the target (its
/// route for 203.0.113.0/24 leads through the assistant, where intercept captures it).
fn response_seg(client: Ipv4Addr, cport: u16, seq: u32, fl: u8) -> SegmentSpec<'static> {
    let mut s = seg(client, cport, seq, 1, fl, &[]);
    std::mem::swap(&mut s.src, &mut s.dst);
    std::mem::swap(&mut s.src_port, &mut s.dst_port);
    s.mss = None;
    s
}

/// A version-record-sent tunnel to intercept from `host`.
fn tunnel_from(lab: &Lab, host: &str) -> Peer {
    lab.in_ns(host, || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect((ASSIST_IP, 36524)) {
                Ok(mut s) => {
                    s.write_all(&ClientMsg::version(6).encode()).unwrap();
                    return Peer {
                        s,
                        combined: true,
                        rec_len: 64,
                        buf: Vec::new(),
                        records: Vec::new(),
                    };
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "intercept not listening: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    })
}

/// Issue 15.2: a tcpcopy on another host (the client host here) cannot take the route of a
/// connection announced by the tcpcopy on online while its tunnel lives: its CLIENT_ADD is
/// refused and logged, and the responses keep going to online.
#[test]
#[ignore = "needs root"]
fn lab_second_peer_cannot_take_a_route() {
    require("lab_second_peer_cannot_take_a_route", &["ip"]);
    let lab = Lab::start();
    lab.spawn(
        ASSIST,
        "intercept",
        &PathBuf::from(BIN),
        &[
            "-F",
            "tcp and src port 8080",
            "-i",
            "eth0",
            "--allow",
            "198.18.0.20,198.18.0.10",
        ],
    );
    let mut owner = tunnel_from(&lab, ONLINE);
    let mut other = tunnel_from(&lab, CLIENT);
    let raw = lab.in_ns(TARGET, || {
        Raw(socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
        .expect("raw socket"))
    });
    let x = Ipv4Addr::new(203, 0, 113, 60);
    let marker = Ipv4Addr::new(203, 0, 113, 61);
    owner.add(x, 43000);
    let is = |port: u16, seq: u32| move |r: &[u8]| seen_of(r).1 == port && seen_of(r).2 == seq;
    // Retransmitted until the capture is up and the route installed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while owner.pump(Duration::from_millis(100)) == 0 {
        assert!(
            Instant::now() < deadline,
            "no SYN-ACK for online: {}",
            lab.log("intercept")
        );
        raw.send(&response_seg(x, 43000, 1, flags::SYN | flags::ACK));
    }
    owner.wait_for("online's SYN-ACK", is(43000, 1));
    // The other host announces the same connection, then one of its own (a marker: when its
    // response arrives, the ADD before it was handled).
    other.add(x, 43000);
    other.add(marker, 43001);
    raw.send(&response_seg(marker, 43001, 2, flags::SYN | flags::ACK));
    other.wait_for("the marker's SYN-ACK", is(43001, 2));
    raw.send(&response_seg(x, 43000, 3, flags::ACK));
    owner.wait_for("online keeps its connection", is(43000, 3));
    other.drain_quiet(Duration::from_millis(300));
    assert!(
        !other.records.iter().any(|r| seen_of(r).1 == 43000),
        "the other host got online's responses"
    );
    let text = lab.log("intercept");
    assert!(
        text.contains("route add 203.0.113.60:43000<->198.18.0.30:8080 from tunnel")
            && text.contains("refused: it belongs to tunnel"),
        "{text}"
    );
}
