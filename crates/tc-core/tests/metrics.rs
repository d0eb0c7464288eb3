//! `MetricsServer` on a real mio poll over loopback, with blocking std clients in threads: a
//! scrape, bad requests, a client that never finishes its request, more clients than allowed,
//! random bytes from many clients, a taken port; and the rendered text through
//! `promtool check metrics` (required when CI=true).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use tc_core::metrics::{Exposition, Kind, Limits, MetricsError, MetricsServer, CONTENT_TYPE};

const BASE: Token = Token(100);
const DEADLINE: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// What a tcpcopy scrape could look like: counters, gauges, a labelled family.
fn render(scrapes: u64) -> String {
    let mut e = Exposition::new();
    e.counter("tcpcopy_scrapes_total", "Scrapes answered so far.", scrapes)
        .counter(
            "tcpcopy_packets_sent_total",
            "Packets sent to the target (\"send\" in the statistics).",
            1234u64,
        )
        .gauge(
            "tcpcopy_sessions_active",
            "Sessions being replayed.\nSecond line.",
            17usize,
        )
        .gauge("tcpcopy_replay_lag_seconds", "Replay lag, p99.", 0.012);
    e.family(
        "tcpcopy_session_drops_total",
        "Captured packets not replayed, by reason.",
        Kind::Counter,
    )
    .sample(&[("reason", "no syn")], 3u64)
    .sample(&[("reason", "quote \" and \\ backslash")], 0u64);
    assert!(e.problems().is_empty(), "{:?}", e.problems());
    e.finish()
}

/// A server registered on its own poll, and a loop driving it.
struct Harness {
    poll: Poll,
    events: Events,
    server: MetricsServer,
    scrapes: u64,
}

impl Harness {
    fn new(limits: Limits) -> Harness {
        let poll = Poll::new().unwrap();
        let mut server = MetricsServer::bind(loopback(), limits).unwrap();
        server.register(poll.registry(), BASE).unwrap();
        Harness {
            poll,
            events: Events::with_capacity(64),
            server,
            scrapes: 0,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// One turn of the loop: poll (up to the next deadline), hand events over, tick.
    fn turn(&mut self) {
        let now = Instant::now();
        let wait = self
            .server
            .next_deadline()
            .map_or(Duration::from_millis(20), |d| {
                d.saturating_duration_since(now)
                    .min(Duration::from_millis(20))
            });
        self.poll.poll(&mut self.events, Some(wait)).unwrap();
        let now = Instant::now();
        for event in self.events.iter() {
            let scrapes = &mut self.scrapes;
            assert!(self
                .server
                .on_event(self.poll.registry(), event.token(), now, || {
                    *scrapes += 1;
                    render(*scrapes)
                }));
        }
        self.server.tick(self.poll.registry(), now);
    }

    /// Runs the loop until every client thread is done; returns what each read.
    fn run<T>(&mut self, clients: Vec<JoinHandle<T>>) -> Vec<T> {
        let start = Instant::now();
        while !clients.iter().all(|c| c.is_finished()) {
            assert!(start.elapsed() < DEADLINE, "clients still running");
            self.turn();
        }
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    }

    /// Runs the loop until the server has seen every client go (a client thread ends before
    /// the server reads its close).
    fn settle(&mut self) -> usize {
        let start = Instant::now();
        while self.server.clients() > 0 && start.elapsed() < DEADLINE {
            self.turn();
        }
        self.server.clients()
    }
}

/// A client that sends `request` and reads until the server closes.
fn client(addr: SocketAddr, request: &'static [u8]) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    })
}

fn split_response(resp: &str) -> (&str, &str) {
    resp.split_once("\r\n\r\n")
        .expect("a complete response head")
}

#[test]
fn get_metrics_http_1_0_and_1_1() {
    let mut h = Harness::new(Limits::default());
    let got = h.run(vec![
        client(
            h.addr(),
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        ),
        client(h.addr(), b"GET /metrics HTTP/1.0\r\n\r\n"),
        client(h.addr(), b"HEAD /metrics HTTP/1.1\r\n\r\n"),
    ]);
    for resp in &got[..2] {
        let (head, body) = split_response(resp);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(&format!("\r\nContent-Type: {CONTENT_TYPE}\r\n")));
        assert!(head.contains("\r\nConnection: close"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert!(body.starts_with("# HELP tcpcopy_scrapes_total Scrapes answered so far.\n"));
        assert!(body.contains("tcpcopy_sessions_active 17\n"));
    }
    let (head, body) = split_response(&got[2]);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "");
    assert_eq!(h.scrapes, 3);
    assert_eq!(h.settle(), 0);
}

#[test]
fn other_requests_get_errors_without_a_render() {
    let mut h = Harness::new(Limits {
        max_request: 256,
        ..Limits::default()
    });
    let got = h.run(vec![
        client(h.addr(), b"GET / HTTP/1.1\r\n\r\n"),
        client(
            h.addr(),
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        ),
        client(
            h.addr(),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ),
        client(h.addr(), b"GET /metrics HTTP/2.0\r\n\r\n"),
        client(h.addr(), &[b'A'; 300]),
    ]);
    let status: Vec<&str> = got
        .iter()
        .map(|r| r.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(
        status,
        [
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 405 Method Not Allowed",
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 400 Bad Request",
        ]
    );
    assert!(got[1].contains("\r\nAllow: GET, HEAD\r\n"));
    assert!(got[4].ends_with("request too long\n"));
    assert_eq!(h.scrapes, 0);
    assert_eq!(h.settle(), 0);
}

#[test]
fn a_client_that_never_finishes_is_closed_after_the_timeout() {
    let timeout = Duration::from_millis(300);
    let mut h = Harness::new(Limits {
        timeout,
        ..Limits::default()
    });
    let addr = h.addr();
    let slow = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let start = Instant::now();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let mut out = Vec::new();
        let n = s.read_to_end(&mut out).map(|_| out.len());
        (start.elapsed(), n)
    });
    let (waited, read) = h.run(vec![slow]).pop().unwrap();
    assert_eq!(read.unwrap(), 0, "closed without an answer");
    assert!(waited >= timeout, "closed after {waited:?}");
    assert!(waited < timeout * 5, "closed only after {waited:?}");
    assert_eq!(h.settle(), 0);
    assert_eq!(h.server.next_deadline(), None);
}

#[test]
fn more_clients_than_allowed_get_503_and_the_others_are_served() {
    let mut h = Harness::new(Limits {
        max_clients: 2,
        ..Limits::default()
    });
    let addr = h.addr();
    // Two clients that connect and wait, holding both slots.
    let holders: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    while h.server.clients() < 2 {
        h.turn();
    }
    let extra = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    let got = h.run(vec![extra]).pop().unwrap();
    assert!(
        got.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{got}"
    );
    assert_eq!(h.server.clients(), 2);
    // The holders are still served.
    let handles = holders
        .into_iter()
        .map(|mut s| {
            thread::spawn(move || {
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
        })
        .collect();
    for resp in h.run(handles) {
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    }
    // Slots freed: a new client is served.
    let got = h.run(vec![client(addr, b"GET /metrics HTTP/1.1\r\n\r\n")]);
    assert!(got[0].starts_with("HTTP/1.1 200 OK\r\n"));
}

#[test]
fn arbitrary_bytes_from_many_clients_leave_the_server_serving() {
    let mut h = Harness::new(Limits {
        max_clients: 32,
        max_request: 512,
        ..Limits::default()
    });
    let addr = h.addr();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let clients = (0..24)
        .map(|i| {
            let len = (next() % 1500) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 3 == 0 {
                bytes.extend_from_slice(b"\r\n\r\n");
            }
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                // The server may answer and close before it has read everything: errors
                // here are fine, a hang or a panic of the server is not.
                let _ = s.write_all(&bytes);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                out
            })
        })
        .collect();
    for resp in h.run(clients) {
        assert!(
            resp.is_empty() || resp.starts_with(b"HTTP/1.1 "),
            "{:?}",
            String::from_utf8_lossy(&resp)
        );
    }
    assert_eq!(h.settle(), 0);
    let got = h.run(vec![client(addr, b"GET /metrics HTTP/1.1\r\n\r\n")]);
    assert!(got[0].starts_with("HTTP/1.1 200 OK\r\n"));
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let first = MetricsServer::bind(loopback(), Limits::default()).unwrap();
    let addr = first.local_addr();
    let err = MetricsServer::bind(addr, Limits::default()).err().unwrap();
    assert!(matches!(err, MetricsError::InUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("metrics address {addr} is in use (another process listens on it)")
    );
}

#[test]
fn tokens_outside_the_range_are_not_taken() {
    let h = Harness::new(Limits {
        max_clients: 3,
        ..Limits::default()
    });
    assert_eq!(h.server.limits().tokens(), 4);
    assert!(!h.server.owns(Token(99)));
    assert!((100..104).all(|t| h.server.owns(Token(t))));
    assert!(!h.server.owns(Token(104)));
    let none = Limits {
        max_clients: 0,
        ..Limits::default()
    };
    assert_eq!(none.tokens(), 2, "at least one client slot");
}

/// `promtool check metrics` on a scrape served over HTTP (skipped visibly without promtool,
/// except under CI=true where it must be installed: scripts/test.sh does).
#[test]
fn promtool_accepts_the_served_text() {
    let mut h = Harness::new(Limits::default());
    let resp = h
        .run(vec![client(h.addr(), b"GET /metrics HTTP/1.1\r\n\r\n")])
        .pop()
        .unwrap();
    let (_, body) = split_response(&resp);
    tc_test_support::promtool_check(body);
}
