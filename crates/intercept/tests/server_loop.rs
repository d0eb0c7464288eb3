//! The intercept loop end to end without root: frames are injected through a datagram socket
//! posing as a capture, tcpcopy peers are real TCP connections on 127.0.0.1.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use intercept::cli::Config;
use intercept::server::{self, NamedSource, Server, Source, Stats, StopHandle};
use mio::unix::SourceFd;
use tc_core::capture::Capture;
use tc_core::control::{ClientMsg, CLIENT_ADD};
use tc_core::packet::{build_segment, flags, DropReason, LinkType, SegmentSpec};

const TARGET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 30);
const TARGET_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(5);

/// A capture fed by the test through a datagram socket (one datagram = one frame).
struct DgramCapture {
    sock: UnixDatagram,
    link: LinkType,
}

impl Capture for DgramCapture {
    fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.sock.as_raw_fd()),
            token,
            mio::Interest::READABLE,
        )
    }

    fn read_frames(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(LinkType, &[u8]),
    ) -> io::Result<usize> {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while n < budget {
            match self.sock.recv(&mut buf) {
                Ok(len) => {
                    n += 1;
                    on_frame(self.link, &buf[..len]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

impl Source for DgramCapture {}

struct Harness {
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    frames: UnixDatagram,
    stop: StopHandle,
    thread: Option<JoinHandle<Stats>>,
}

impl Harness {
    fn start(cfg: Config) -> Harness {
        Self::start_link(cfg, LinkType::RawIp)
    }

    fn start_link(cfg: Config, link: LinkType) -> Harness {
        let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
        theirs.set_nonblocking(true).unwrap();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let listener = server::bind_listener(Ipv4Addr::LOCALHOST, 0).expect("bind");
            let src = NamedSource::new("fake0", Box::new(DgramCapture { sock: theirs, link }));
            let mut server = Server::new(&cfg, listener, vec![src]).expect("server");
            tx.send((
                server.local_addr(),
                server.metrics_addr(),
                server.stop_handle(),
            ))
            .unwrap();
            server.run().expect("run")
        });
        let (addr, metrics, stop) = rx.recv_timeout(WAIT).expect("server did not start");
        Harness {
            addr,
            metrics,
            frames: ours,
            stop,
            thread: Some(thread),
        }
    }

    fn inject(&self, frame: &[u8]) {
        self.frames.send(frame).expect("inject frame");
    }

    fn stop(mut self) -> Stats {
        self.stop.stop();
        self.thread.take().unwrap().join().expect("server thread")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.stop();
            let _ = t.join();
        }
    }
}

fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, n)
}

/// A response segment target -> client.
fn response(cip: Ipv4Addr, cport: u16, fl: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    response_from(TARGET, cip, cport, fl, seq, payload)
}

fn response_from(
    src: Ipv4Addr,
    cip: Ipv4Addr,
    cport: u16,
    fl: u8,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0u8; 1600];
    let spec = SegmentSpec {
        src: src.into(),
        dst: cip.into(),
        src_port: TARGET_PORT,
        dst_port: cport,
        seq,
        ack: 1,
        flags: fl,
        window: 65535,
        ip_id: seq as u16,
        mss: None,
        timestamps: Some((seq, 7)),
        payload,
    };
    let n = build_segment(&spec, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// A tcpcopy stand-in.
struct Peer {
    s: TcpStream,
    combined: bool,
    rec_len: usize,
}

impl Peer {
    fn connect(h: &Harness) -> Peer {
        Self::connect_with(h, true, 64, 6)
    }

    fn connect_with(h: &Harness, combined: bool, rec_len: usize, version: u16) -> Peer {
        Self::connect_from(h, Ipv4Addr::LOCALHOST, combined, rec_len, version)
    }

    /// From another loopback address (127.0.0.0/8 is local): another tcpcopy host.
    fn connect_from(
        h: &Harness,
        from: Ipv4Addr,
        combined: bool,
        rec_len: usize,
        version: u16,
    ) -> Peer {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&SocketAddr::from((from, 0)).into())
            .expect("bind peer address");
        sock.connect(&h.addr.into()).expect("connect");
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&ClientMsg::version(version).encode()).unwrap();
        Peer {
            s,
            combined,
            rec_len,
        }
    }

    fn add(&mut self, cip: Ipv4Addr, cport: u16) {
        self.add_target(cip, cport, TARGET);
    }

    fn add_target(&mut self, cip: Ipv4Addr, cport: u16, tip: Ipv4Addr) {
        let m = ClientMsg {
            client_ip: cip,
            client_port: cport,
            kind: CLIENT_ADD,
            target_ip: tip,
            target_port: TARGET_PORT,
        };
        self.s.write_all(&m.encode()).unwrap();
    }

    /// One frame: its records.
    fn frame(&mut self) -> Vec<Vec<u8>> {
        let count = if self.combined {
            let mut c = [0u8; 2];
            self.s.read_exact(&mut c).expect("frame count");
            let c = u16::from_be_bytes(c) as usize;
            let max = if self.rec_len == 64 { 16 } else { 6 };
            assert!((1..=max).contains(&c), "frame count {c}");
            c
        } else {
            1
        };
        let mut recs = Vec::new();
        for _ in 0..count {
            let mut r = vec![0u8; self.rec_len];
            self.s.read_exact(&mut r).expect("record");
            recs.push(r);
        }
        recs
    }

    /// One frame if it starts within `wait`.
    fn try_frame(&mut self, wait: Duration) -> Option<Vec<Vec<u8>>> {
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut c = [0u8; 2];
        let got = self.s.read_exact(&mut c).is_ok();
        self.s.set_read_timeout(Some(WAIT)).unwrap();
        if !got {
            return None;
        }
        let mut recs = Vec::new();
        for _ in 0..u16::from_be_bytes(c) {
            let mut r = vec![0u8; self.rec_len];
            self.s.read_exact(&mut r).expect("record");
            recs.push(r);
        }
        Some(recs)
    }

    /// Reads records until `n` arrived.
    fn records(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < n {
            out.extend(self.frame());
        }
        assert_eq!(out.len(), n, "more records than expected in the last frame");
        out
    }

    /// Waits for the connection to be closed by intercept.
    fn expect_closed(&mut self) {
        let mut b = [0u8; 64];
        let deadline = Instant::now() + WAIT;
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("expected close, got {e}"),
            }
            assert!(Instant::now() < deadline, "not closed");
        }
    }
}

fn rec_dst(r: &[u8]) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(r[16], r[17], r[18], r[19]),
        u16::from_be_bytes([r[22], r[23]]),
    )
}

fn rec_seq(r: &[u8]) -> u32 {
    u32::from_be_bytes([r[24], r[25], r[26], r[27]])
}

fn rec_flags(r: &[u8]) -> u8 {
    r[33]
}

/// ADD + a SYN-ACK the peer must receive: afterwards the route is known to be installed.
/// ADD, then the connection's SYN-ACK is captured.
fn announce(h: &Harness, p: &mut Peer, cip: Ipv4Addr, cport: u16) {
    p.add(cip, cport);
    h.inject(&response(cip, cport, flags::SYN | flags::ACK, 1000, &[]));
}

/// Tries `attempt` until it gives something, for [`WAIT`] at most.
fn retry<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = attempt() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
    }
}

fn establish(h: &Harness, p: &mut Peer, cip: Ipv4Addr, cport: u16) {
    announce(h, p, cip, cport);
    let r = p.records(1);
    assert_eq!(rec_dst(&r[0]), (cip, cport));
    assert_eq!(rec_flags(&r[0]), flags::SYN | flags::ACK);
}

fn cfg() -> Config {
    Config::with_filter("tcp")
}

#[test]
fn routes_to_the_announcing_peer_only_in_order() {
    let h = Harness::start(cfg());
    let mut a = Peer::connect(&h);
    let mut b = Peer::connect(&h);
    establish(&h, &mut a, client(1), 40001);
    establish(&h, &mut b, client(2), 40002);
    // A burst for A's connection, then a marker for B.
    for i in 0..40u32 {
        h.inject(&response(
            client(1),
            40001,
            flags::ACK | flags::PSH,
            2000 + i,
            b"x",
        ));
    }
    h.inject(&response(client(2), 40002, flags::ACK, 9, &[]));
    let recs = a.records(40);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(rec_dst(r), (client(1), 40001));
        assert_eq!(rec_seq(r), 2000 + i as u32, "capture order");
    }
    let rb = b.records(1);
    assert_eq!(rec_dst(&rb[0]), (client(2), 40002), "B got nothing of A's");
    let stats = h.stop();
    assert_eq!(stats.client_adds, 2);
    assert_eq!(stats.responses, 43);
    assert!(stats.all >= stats.responses);
    assert_eq!(stats.records_sent, 43);
}

#[test]
fn record_format_combined_plain_payload() {
    // Combined (default): count-prefixed frames of 64-byte records.
    let h = Harness::start(cfg());
    let mut a = Peer::connect(&h);
    establish(&h, &mut a, client(3), 40003);
    let seg = response(client(3), 40003, flags::ACK, 5, b"hello");
    h.inject(&seg);
    let r = a.records(1).remove(0);
    // 20 IP + 32 TCP (12 option bytes), zero padded.
    assert_eq!(&r[..52], &seg[..52]);
    assert!(r[52..].iter().all(|&b| b == 0));
    drop(h);

    // Plain: bare 64-byte records.
    let mut c = cfg();
    c.combined = false;
    let h = Harness::start(c);
    let mut a = Peer::connect_with(&h, false, 64, 6);
    establish(&h, &mut a, client(4), 40004);
    let seg = response(client(4), 40004, flags::ACK, 6, b"hello");
    h.inject(&seg);
    assert_eq!(&a.records(1)[0][..52], &seg[..52]);
    drop(h);

    // Payload: 192-byte records, frames of at most 6.
    let mut c = cfg();
    c.payload = true;
    c.batch = 6;
    let h = Harness::start(c);
    let mut a = Peer::connect_with(&h, true, 192, 6);
    establish(&h, &mut a, client(5), 40005);
    let body = [0x5au8; 100];
    for i in 0..20 {
        h.inject(&response(client(5), 40005, flags::ACK, 100 + i, &body));
    }
    let mut got = 0;
    while got < 20 {
        let f = a.frame();
        assert!(f.len() <= 6);
        for r in f {
            assert_eq!(rec_seq(&r), 100 + got);
            assert_eq!(&r[52..152], &body[..]);
            assert!(r[152..].iter().all(|&b| b == 0));
            got += 1;
        }
    }
}

#[test]
fn isolated_response_is_not_held_back() {
    let h = Harness::start(cfg());
    let mut a = Peer::connect(&h);
    establish(&h, &mut a, client(6), 40006);
    // Nothing else happens: the record must still come (no waiting for a full batch).
    let t = Instant::now();
    h.inject(&response(client(6), 40006, flags::ACK, 77, &[]));
    let r = a.records(1);
    assert_eq!(rec_seq(&r[0]), 77);
    eprintln!("isolated response delivered in {:?}", t.elapsed());
}

#[test]
fn delay_table_and_unrouted() {
    let h = Harness::start(cfg());
    let mut a = Peer::connect(&h);
    // Make sure the handshake is processed (establish another connection first).
    establish(&h, &mut a, client(7), 1);
    // SYN-ACK and RST before their ADD...
    h.inject(&response(
        client(7),
        40007,
        flags::SYN | flags::ACK,
        500,
        &[],
    ));
    h.inject(&response(client(8), 40008, flags::RST, 600, &[]));
    // ...and a plain ACK without route: dropped for good.
    h.inject(&response(client(9), 40009, flags::ACK, 700, &[]));
    // A marker on the established route proves the three were processed.
    h.inject(&response(client(7), 1, flags::ACK, 1, &[]));
    assert_eq!(rec_seq(&a.records(1)[0]), 1);
    a.add(client(9), 40009);
    a.add(client(7), 40007);
    a.add(client(8), 40008);
    let r = a.records(2);
    assert_eq!((rec_dst(&r[0]), rec_seq(&r[0])), ((client(7), 40007), 500));
    assert_eq!((rec_dst(&r[1]), rec_seq(&r[1])), ((client(8), 40008), 600));
    // The ACK never comes: the next record is a fresh one.
    h.inject(&response(client(9), 40009, flags::ACK, 701, &[]));
    assert_eq!(rec_seq(&a.records(1)[0]), 701);
    let stats = h.stop();
    assert_eq!(stats.unrouted, 1);
}

#[test]
fn last_add_wins_and_disconnects() {
    let h = Harness::start(cfg());
    let mut a = Peer::connect(&h);
    let mut b = Peer::connect(&h);
    establish(&h, &mut a, client(10), 40010);
    // B re-announces the same connection: later responses move to B.
    b.add(client(10), 40010);
    h.inject(&response(
        client(10),
        40010,
        flags::SYN | flags::ACK,
        1,
        &[],
    ));
    assert_eq!(rec_seq(&b.records(1)[0]), 1);
    // B goes away; responses for its sessions are dropped without harm while A keeps working.
    drop(b);
    establish(&h, &mut a, client(11), 40011);
    for seq in 100..120 {
        h.inject(&response(client(10), 40010, flags::ACK, seq, &[]));
        h.inject(&response(client(11), 40011, flags::ACK, seq, &[]));
        assert_eq!(rec_seq(&a.records(1)[0]), seq);
    }
    // A reconnecting peer gets the new ADDs.
    let mut b2 = Peer::connect(&h);
    establish(&h, &mut b2, client(10), 40010);
    let stats = h.stop();
    assert!(stats.closed >= 1);
}

/// Issue 15.2: a CLIENT_ADD from another peer address for a connection whose route a live
/// tunnel owns is refused and counted; the owner keeps receiving; once it is gone the route is
/// free.
#[test]
fn another_peer_cannot_take_a_route() {
    let h = Harness::start(cfg());
    let mut a = Peer::connect(&h);
    establish(&h, &mut a, client(16), 40016);
    let mut thief = Peer::connect_from(&h, Ipv4Addr::new(127, 0, 0, 2), true, 64, 6);
    thief.add(client(16), 40016);
    // A marker route of the thief proves its ADD was processed before the next response.
    establish(&h, &mut thief, client(17), 40017);
    h.inject(&response(client(16), 40016, flags::ACK, 5, &[]));
    assert_eq!(rec_seq(&a.records(1)[0]), 5, "the owner keeps its route");
    // The owner leaves: its routes go with it and the other address may announce it.
    drop(a);
    let f = retry("route free after its owner left", || {
        announce(&h, &mut thief, client(16), 40016);
        thief.try_frame(Duration::from_millis(100))
    });
    assert_eq!(rec_dst(&f[0]), (client(16), 40016));
    let stats = h.stop();
    assert!(stats.refused_adds >= 1, "{stats:?}");
}

#[test]
fn dnat_and_docker_rewrite() {
    let mut c = cfg();
    c.dnat = true;
    let h = Harness::start(c);
    let mut a = Peer::connect(&h);
    a.add_target(client(12), 40012, Ipv4Addr::new(198, 18, 0, 99));
    // The response comes from another address than the one announced.
    h.inject(&response_from(
        TARGET,
        client(12),
        40012,
        flags::SYN | flags::ACK,
        3,
        &[],
    ));
    assert_eq!(rec_seq(&a.records(1)[0]), 3);
    drop(h);

    let mut c = cfg();
    c.docker_rewrite = Some((Ipv4Addr::new(172, 17, 0, 2), client(13)));
    let h = Harness::start(c);
    let mut a = Peer::connect(&h);
    a.add(client(13), 40013);
    h.inject(&response(
        Ipv4Addr::new(172, 17, 0, 2),
        40013,
        flags::SYN | flags::ACK,
        4,
        &[],
    ));
    let r = a.records(1).remove(0);
    assert_eq!(rec_dst(&r), (client(13), 40013), "destination rewritten");
}

#[test]
fn handshake_variants() {
    let h = Harness::start(cfg());
    // Version 5: a warning only, the tunnel works.
    let mut old = Peer::connect_with(&h, true, 64, 5);
    establish(&h, &mut old, client(14), 40014);
    // A first record with a client address: closed.
    let mut bad = TcpStream::connect(h.addr).unwrap();
    bad.set_read_timeout(Some(WAIT)).unwrap();
    let mut m = ClientMsg::version(6);
    m.client_ip = client(1);
    bad.write_all(&m.encode()).unwrap();
    let mut bad = Peer {
        s: bad,
        combined: true,
        rec_len: 64,
    };
    bad.expect_closed();
    // Others keep being served.
    h.inject(&response(client(14), 40014, flags::ACK, 8, &[]));
    assert_eq!(rec_seq(&old.records(1)[0]), 8);
}

#[test]
fn robust_capture_counts_drops() {
    let h = Harness::start_link(cfg(), LinkType::Ethernet);
    let mut a = Peer::connect(&h);
    let eth = |ethertype: [u8; 2], tag: bool, ip: &[u8]| {
        let mut f = vec![0u8; 12];
        if tag {
            f.extend_from_slice(&[0x81, 0x00, 0, 5]);
        }
        f.extend_from_slice(&ethertype);
        f.extend_from_slice(ip);
        f
    };
    a.add(client(15), 40015);
    let synack = response(client(15), 40015, flags::SYN | flags::ACK, 1, &[]);
    let mut udp = synack.clone();
    udp[9] = 17;
    let mut bad_doff = synack.clone();
    bad_doff[32] = 0x20;
    h.inject(&eth([0x86, 0xdd], false, &[0x60; 40])); // IPv6
    h.inject(&eth([0x08, 0x06], false, &[0; 28])); // ARP
    h.inject(&eth([0x08, 0x00], false, &udp)); // not TCP
    h.inject(&eth([0x08, 0x00], false, &synack[..30])); // truncated
    h.inject(&eth([0x08, 0x00], false, &bad_doff)); // TCP header length 8
    h.inject(&[0u8; 5]); // runt
    h.inject(&eth([0x08, 0x00], true, &synack)); // 802.1Q: routed
    let r = a.records(1);
    assert_eq!(rec_seq(&r[0]), 1);
    let stats = h.stop();
    assert_eq!(stats.frames, 7);
    assert_eq!(stats.responses, 1);
    assert_eq!(stats.drops.get(DropReason::NotIpv4), 2);
    assert_eq!(stats.drops.get(DropReason::NotTcp), 1);
    assert_eq!(stats.drops.get(DropReason::Truncated), 2);
    assert_eq!(stats.drops.get(DropReason::BadTcpHeader), 1);
}

/// `--metrics` (issue 16): GET /metrics serves the statistics in the Prometheus text format
/// (promtool accepts it), and its counters are the statistics'.
#[test]
fn metrics_endpoint_serves_the_statistics() {
    let mut c = cfg();
    c.metrics = Some("127.0.0.1:0".parse().unwrap());
    let h = Harness::start(c);
    let addr = h.metrics.expect("metrics listening");
    let mut a = Peer::connect(&h);
    a.add(client(16), 40016);
    h.inject(&response(
        client(16),
        40016,
        flags::SYN | flags::ACK,
        1,
        &[],
    ));
    h.inject(&response(client(17), 40017, flags::ACK, 1, b"nobody"));
    a.records(1);
    let body = retry("two frames in the metrics", || {
        let (status, body) = tc_test_support::http_get(addr, "/metrics").ok()?;
        assert_eq!(status, "HTTP/1.1 200 OK");
        body.contains("intercept_frames_total 2\n").then_some(body)
    });
    assert!(body.contains("intercept_client_adds_total 1\n"), "{body}");
    assert!(body.contains("intercept_records_sent_total 1\n"), "{body}");
    assert!(body.contains("intercept_tunnels 1\n"), "{body}");
    tc_test_support::promtool_check(&body);
    let (status, _) = tc_test_support::http_get(addr, "/other").unwrap();
    assert!(status.contains("404"), "{status}");
    let stats = h.stop();
    assert_eq!(stats.frames, 2);
    assert_eq!(stats.client_adds, 1);
}

#[test]
fn allow_list_refuses_others() {
    let mut c = cfg();
    c.allow = intercept::cli::parse(["intercept", "-F", "tcp", "--allow", "127.0.0.2"])
        .unwrap()
        .allow;
    let h = Harness::start(c);
    let s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut p = Peer {
        s,
        combined: true,
        rec_len: 64,
    };
    p.expect_closed();
    let stats = h.stop();
    assert_eq!((stats.refused, stats.accepted), (1, 0));
}

#[test]
fn hostile_peers_do_not_delay_a_good_one() {
    let mut c = cfg();
    // The 1000 connections below come from one address.
    c.peer_tunnels = 2000;
    let h = Harness::start(c);
    let mut good = Peer::connect(&h);
    establish(&h, &mut good, client(20), 40020);

    // Garbage: no version record, just bytes.
    let mut garbage = Peer {
        s: TcpStream::connect(h.addr).unwrap(),
        combined: true,
        rec_len: 64,
    };
    garbage.s.set_read_timeout(Some(WAIT)).unwrap();
    garbage.s.write_all(&[0xffu8; 14 * 10]).unwrap();
    // Half a record, then silence.
    let mut half = Peer::connect(&h);
    half.s.write_all(&[0u8; 7]).unwrap();
    // A peer that announces a busy connection and never reads.
    let mut deaf = Peer::connect(&h);
    establish(&h, &mut deaf, client(21), 40021);
    // 1000 connections opened and dropped.
    for _ in 0..1000 {
        let s = TcpStream::connect(h.addr).unwrap();
        drop(s);
    }
    // Flood the deaf peer's connection (about 30 MB of records), interleaved with responses
    // for the good peer, which must all arrive, in order.
    let payload = [0u8; 1];
    let mut next = 0u32;
    for round in 0..50u32 {
        for i in 0..10_000u32 {
            h.inject(&response(
                client(21),
                40021,
                flags::ACK,
                round * 10_000 + i,
                &payload,
            ));
            if i % 1000 == 0 {
                h.inject(&response(client(20), 40020, flags::ACK, next, &payload));
                next += 1;
            }
        }
        // The good peer keeps up.
        let recs = good.records(10);
        for (k, r) in recs.iter().enumerate() {
            assert_eq!(rec_seq(r), round * 10 + k as u32);
        }
    }
    garbage.expect_closed();
    let stats = h.stop();
    eprintln!("{stats:?}");
    assert!(stats.overflow > 0, "the deaf peer was cut off: {stats:?}");
    assert!(stats.unrouted > 0, "its routes were purged: {stats:?}");
    assert_eq!(stats.accepted, 1004);
    drop(half);
    drop(deaf);
}

/// Issue 15.3: one peer address holds at most `peer_tunnels` tunnels; others are not affected
/// and a closed tunnel frees its place.
#[test]
fn tunnels_per_peer_address_are_capped() {
    let mut c = cfg();
    c.peer_tunnels = 2;
    let h = Harness::start(c);
    let mut a = Peer::connect(&h);
    let mut b = Peer::connect(&h);
    establish(&h, &mut a, client(50), 40050);
    establish(&h, &mut b, client(51), 40051);
    let mut third = Peer::connect(&h);
    third.expect_closed();
    let mut other = Peer::connect_from(&h, Ipv4Addr::new(127, 0, 0, 3), true, 64, 6);
    establish(&h, &mut other, client(52), 40052);
    drop(b);
    // Until B's closing is handled, a new tunnel is refused (closed, possibly reset while
    // the test writes to it).
    let first = retry("the closed tunnel's place freed", || {
        let mut s = TcpStream::connect(h.addr).ok()?;
        s.write_all(&ClientMsg::version(6).encode()).ok()?;
        let add = ClientMsg::add(client(53), 40053, TARGET, TARGET_PORT);
        s.write_all(&add.encode()).ok()?;
        h.inject(&response(
            client(53),
            40053,
            flags::SYN | flags::ACK,
            1,
            &[],
        ));
        let mut p = Peer {
            s,
            combined: true,
            rec_len: 64,
        };
        p.try_frame(Duration::from_millis(200))
    });
    assert_eq!(rec_dst(&first[0]), (client(53), 40053));
    let stats = h.stop();
    assert!(stats.refused >= 1, "{stats:?}");
}

/// Issue 15.3: a tunnel that holds no route and sends nothing is closed after the idle
/// timeout; one holding a route stays.
#[test]
fn idle_tunnels_without_routes_are_closed() {
    let mut c = cfg();
    c.idle_tunnel_timeout = Duration::from_secs(1);
    let h = Harness::start(c);
    let mut busy = Peer::connect(&h);
    establish(&h, &mut busy, client(54), 40054);
    let t = Instant::now();
    let mut idle = Peer::connect(&h);
    idle.expect_closed();
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // The busy tunnel is still served, well after the timeout.
    h.inject(&response(client(54), 40054, flags::ACK, 9, &[]));
    assert_eq!(rec_seq(&busy.records(1)[0]), 9);
}

/// Issue 15.3: in `--single` mode a connection joins the group only with a valid version
/// record: a port scan after the 3 s window does not close the running tcpcopy's tunnels.
#[test]
fn single_mode_port_scan_does_not_replace_the_tcpcopy() {
    let mut c = cfg();
    c.single = true;
    let h = Harness::start(c);
    let mut a = Peer::connect(&h);
    // The version record is processed once a response comes back.
    retry("the tunnel joins", || {
        h.inject(&response(client(55), 40055, flags::ACK, 0, &[]));
        a.try_frame(Duration::from_millis(50))
    });
    // Past the window of the group (3 s), a scanner connects, and another sends garbage.
    std::thread::sleep(Duration::from_millis(
        tc_core::control::routing::SINGLE_WINDOW_MS + 200,
    ));
    let scan = TcpStream::connect(h.addr).unwrap();
    let mut garbage = TcpStream::connect(h.addr).unwrap();
    garbage.write_all(&[0xffu8; 14]).unwrap();
    // The running tcpcopy is still served, and not closed.
    for seq in 1000..1010 {
        h.inject(&response(client(55), 40055, flags::ACK, seq, &[]));
        assert_eq!(rec_seq(&a.records(1)[0]), seq);
    }
    drop((scan, garbage));
    let stats = h.stop();
    assert_eq!(stats.closed, 3, "a, the scanner and the garbage: {stats:?}");
}

/// Spec 4.1: a record of an unknown type after the handshake is warned about and ignored;
/// the tunnel stays open and its later announcements route as usual.
#[test]
fn unknown_record_types_are_ignored() {
    let h = Harness::start(cfg());
    let mut p = Peer::connect(&h);
    let mut odd = ClientMsg::add(client(40), 40040, TARGET, TARGET_PORT);
    odd.kind = 9;
    p.s.write_all(&odd.encode()).unwrap();
    establish(&h, &mut p, client(40), 40041);
    h.inject(&response(client(40), 40041, flags::ACK, 7, &[1]));
    let recs = p.records(1);
    assert_eq!(rec_seq(&recs[0]), 7);
    let stats = h.stop();
    // The response after the odd record was routed: the tunnel stayed open.
    assert_eq!(stats.unknown_msgs, 1);
}

#[test]
fn single_mode_spreads_by_connection_without_adds() {
    let mut c = cfg();
    c.single = true;
    let h = Harness::start(c);
    let mut a = Peer::connect(&h);
    let mut b = Peer::connect(&h);
    // Probe until both tunnels are in the group (each received a probe response).
    let mut seen = [false, false];
    for i in 0..500u16 {
        h.inject(&response(client(31), 60000 + i, flags::ACK, 0, &[]));
        for (k, peer) in [&mut a, &mut b].into_iter().enumerate() {
            peer.s
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let mut c = [0u8; 2];
            if peer.s.read_exact(&mut c).is_ok() {
                peer.s.set_read_timeout(Some(WAIT)).unwrap();
                let mut r = vec![0u8; 64 * usize::from(u16::from_be_bytes(c))];
                peer.s.read_exact(&mut r).unwrap();
                seen[k] = true;
            }
        }
        if seen == [true, true] {
            break;
        }
    }
    assert_eq!(seen, [true, true], "both tunnels joined");
    // No CLIENT_ADD at all: every response goes to one of the two tunnels, the same one for
    // every segment of a connection. Two rounds per port; each peer reads what it got.
    let ports: Vec<u16> = (50000..50032).collect();
    for round in 0..2u32 {
        for &p in &ports {
            h.inject(&response(client(30), p, flags::ACK, round, &[]));
        }
    }
    let total = ports.len() * 2;
    let mut got: Vec<(u16, u32, char)> = Vec::new();
    let deadline = Instant::now() + WAIT;
    for (peer, name) in [(&mut a, 'a'), (&mut b, 'b')] {
        peer.s
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut c = [0u8; 2];
        while Instant::now() < deadline {
            match peer.s.read_exact(&mut c) {
                Ok(()) => {
                    for _ in 0..u16::from_be_bytes(c) {
                        let mut r = vec![0u8; 64];
                        peer.s.read_exact(&mut r).unwrap();
                        got.push((rec_dst(&r).1, rec_seq(&r), name));
                    }
                }
                Err(_) => break,
            }
        }
    }
    assert_eq!(got.len(), total);
    let a_count = got.iter().filter(|g| g.2 == 'a').count();
    assert!(
        a_count > 0 && a_count < total,
        "both tunnels used: {a_count}/{total}"
    );
    for &p in &ports {
        let peers: Vec<char> = got.iter().filter(|g| g.0 == p).map(|g| g.2).collect();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0], peers[1], "port {p} stays on one tunnel");
    }
}
