//! Control tunnels to the intercepts (spec 5): `-C` TCP connections per `-s` address, the
//! version record first, CLIENT_ADD announcements round-robin per intercept, response frames
//! reassembled without blocking, and (with `-L`) non-blocking reconnects of lost intercepts.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use tc_core::control::{split_frames, ClientMsg};

use crate::cli::{WireOptions, INTERNAL_VERSION};

/// Tokens of tunnel connections: `TUNNEL_TOKEN_BASE + intercept * SLOTS + connection`.
pub const TUNNEL_TOKEN_BASE: usize = 1 << 16;
const SLOTS: usize = 16;

pub use tc_core::control::{CLIENT_ADD, CLIENT_MSG_LEN, RECORD_LEN, RECORD_LEN_PAYLOAD};
/// Bytes queued for one tunnel before it counts as stuck and is dropped.
const MAX_PENDING_WRITE: usize = 1 << 20;
/// A non-blocking reconnect that has not completed by then is abandoned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The 14-byte `msg_clt` (spec 5.2).
pub fn client_message(
    kind: u16,
    client_ip: Ipv4Addr,
    client_port: u16,
    target_ip: Ipv4Addr,
    target_port: u16,
) -> [u8; CLIENT_MSG_LEN] {
    ClientMsg {
        client_ip,
        client_port,
        kind,
        target_ip,
        target_port,
    }
    .encode()
}

/// The version record: all zero but the type (spec 5.2).
pub fn version_message() -> [u8; CLIENT_MSG_LEN] {
    ClientMsg::version(INTERNAL_VERSION).encode()
}

/// Splits complete response records off the front of `buf` (spec 5.3), appending them to
/// `records`. Returns the bytes consumed, or an error for a frame count above the maximum.
pub fn take_records(buf: &[u8], wire: WireOptions, records: &mut Vec<u8>) -> Result<usize, String> {
    split_frames(buf, wire, |r| records.extend_from_slice(r)).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TunnelStats {
    pub connects: u64,
    pub disconnects: u64,
    pub reconnect_attempts: u64,
    pub client_add_sent: u64,
    pub client_add_failed: u64,
    pub records: u64,
    pub broken_frames: u64,
}

enum ConnState {
    Connecting(Instant),
    Up,
}

struct Conn {
    stream: TcpStream,
    state: ConnState,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    want_write: bool,
}

struct Intercept {
    addr: SocketAddrV4,
    conns: Vec<Option<Conn>>,
    active: bool,
    next: usize,
}

pub struct Tunnels {
    intercepts: Vec<Intercept>,
    conns_per_intercept: usize,
    wire: WireOptions,
    registry: Registry,
    pub stats: TunnelStats,
}

/// What happened on a tunnel event, for the event loop.
#[derive(Debug, PartialEq, Eq)]
pub enum TunnelEvent {
    Nothing,
    /// An intercept became active (first connection up after a reconnect).
    InterceptUp(SocketAddrV4),
    /// The last connection of an intercept is gone.
    InterceptDown(SocketAddrV4),
}

impl Tunnels {
    /// Connects `conns_per_intercept` tunnels to every intercept, blocking up to `timeout` per
    /// connection, sends the version records and registers everything. Any failure is an error.
    pub fn connect_all(
        intercepts: &[SocketAddrV4],
        conns_per_intercept: usize,
        wire: WireOptions,
        registry: &Registry,
        timeout: Duration,
    ) -> anyhow::Result<Tunnels> {
        let registry = registry.try_clone()?;
        let mut all = Vec::with_capacity(intercepts.len());
        for (i, &addr) in intercepts.iter().enumerate() {
            let mut conns = Vec::with_capacity(conns_per_intercept);
            for c in 0..conns_per_intercept {
                let std = connect_blocking(addr, timeout).map_err(|e| {
                    anyhow::anyhow!("Can not connect to remote server({addr}), err:{e}")
                })?;
                log::info!("connect to remote server({addr})");
                let mut stream = TcpStream::from_std(std);
                registry.register(&mut stream, token(i, c), Interest::READABLE)?;
                conns.push(Some(Conn {
                    stream,
                    state: ConnState::Up,
                    rbuf: Vec::with_capacity(4096),
                    wbuf: Vec::new(),
                    want_write: false,
                }));
            }
            all.push(Intercept {
                addr,
                conns,
                active: true,
                next: 0,
            });
        }
        let connects = (intercepts.len() * conns_per_intercept) as u64;
        Ok(Tunnels {
            intercepts: all,
            conns_per_intercept,
            wire,
            registry,
            stats: TunnelStats {
                connects,
                ..TunnelStats::default()
            },
        })
    }

    pub fn active_intercepts(&self) -> usize {
        self.intercepts.iter().filter(|i| i.active).count()
    }

    pub fn total_intercepts(&self) -> usize {
        self.intercepts.len()
    }

    pub fn open_connections(&self) -> usize {
        self.intercepts
            .iter()
            .flat_map(|i| i.conns.iter())
            .filter(|c| {
                matches!(
                    c,
                    Some(Conn {
                        state: ConnState::Up,
                        ..
                    })
                )
            })
            .count()
    }

    pub fn owns(token: Token) -> bool {
        token.0 >= TUNNEL_TOKEN_BASE
    }

    /// CLIENT_ADD to every active intercept, on its next connection round-robin. True when at
    /// least one intercept took it.
    pub fn client_add(
        &mut self,
        client_ip: Ipv4Addr,
        client_port: u16,
        target_ip: Ipv4Addr,
        target_port: u16,
    ) -> bool {
        let msg = client_message(CLIENT_ADD, client_ip, client_port, target_ip, target_port);
        let mut accepted = false;
        for i in 0..self.intercepts.len() {
            if !self.intercepts[i].active {
                continue;
            }
            let n = self.intercepts[i].conns.len();
            for _ in 0..n {
                let c = self.intercepts[i].next % n;
                self.intercepts[i].next = (c + 1) % n;
                let up = matches!(
                    self.intercepts[i].conns[c],
                    Some(Conn {
                        state: ConnState::Up,
                        ..
                    })
                );
                if !up {
                    continue;
                }
                match self.write_to(i, c, &msg) {
                    Ok(()) => {
                        accepted = true;
                        break;
                    }
                    Err(e) => {
                        log::error!("intercept {}: msg send error: {e}", self.intercepts[i].addr);
                        self.close(i, c);
                    }
                }
            }
        }
        if accepted {
            self.stats.client_add_sent += 1;
        } else {
            self.stats.client_add_failed += 1;
        }
        accepted
    }

    fn write_to(&mut self, i: usize, c: usize, msg: &[u8]) -> io::Result<()> {
        let Some(conn) = self.intercepts[i].conns[c].as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if conn.wbuf.is_empty() {
            let written = match conn.stream.write(msg) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            if written == msg.len() {
                return Ok(());
            }
            conn.wbuf.extend_from_slice(&msg[written..]);
        } else {
            if conn.wbuf.len() + msg.len() > MAX_PENDING_WRITE {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "tunnel not draining (1 MiB queued)",
                ));
            }
            conn.wbuf.extend_from_slice(msg);
        }
        if !conn.want_write {
            conn.want_write = true;
            self.registry.reregister(
                &mut conn.stream,
                token(i, c),
                Interest::READABLE | Interest::WRITABLE,
            )?;
        }
        Ok(())
    }

    /// Handles readiness of a tunnel. Complete response records are appended to `records`.
    pub fn on_event(
        &mut self,
        tok: Token,
        readable: bool,
        writable: bool,
        records: &mut Vec<u8>,
    ) -> TunnelEvent {
        let Some((i, c)) = self.slot(tok) else {
            return TunnelEvent::Nothing;
        };
        let was_active = self.intercepts[i].active;
        let result = self.handle(i, c, readable, writable, records);
        if let Err(e) = result {
            log::warn!("intercept {}: tunnel closed: {e}", self.intercepts[i].addr);
            self.close(i, c);
        }
        let now_active = self.intercepts[i].active;
        match (was_active, now_active) {
            (false, true) => TunnelEvent::InterceptUp(self.intercepts[i].addr),
            (true, false) => TunnelEvent::InterceptDown(self.intercepts[i].addr),
            _ => TunnelEvent::Nothing,
        }
    }

    fn slot(&self, tok: Token) -> Option<(usize, usize)> {
        let rel = tok.0.checked_sub(TUNNEL_TOKEN_BASE)?;
        let (i, c) = (rel / SLOTS, rel % SLOTS);
        self.intercepts.get(i)?.conns.get(c)?.as_ref()?;
        Some((i, c))
    }

    fn handle(
        &mut self,
        i: usize,
        c: usize,
        readable: bool,
        writable: bool,
        records: &mut Vec<u8>,
    ) -> io::Result<()> {
        let wire = self.wire;
        let addr = self.intercepts[i].addr;
        let Some(conn) = self.intercepts[i].conns[c].as_mut() else {
            return Ok(());
        };
        if let ConnState::Connecting(_) = conn.state {
            if let Some(e) = conn.stream.take_error()? {
                return Err(e);
            }
            match conn.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(e),
            }
            conn.state = ConnState::Up;
            conn.stream.set_nodelay(true)?;
            self.stats.connects += 1;
            log::info!("connect to remote server({addr})");
            // The version record goes first; the queue is empty on a fresh connection.
            conn.wbuf.extend_from_slice(&version_message());
            self.intercepts[i].active = true;
        }
        let Some(conn) = self.intercepts[i].conns[c].as_mut() else {
            return Ok(());
        };
        if writable || !conn.wbuf.is_empty() {
            while !conn.wbuf.is_empty() {
                match conn.stream.write(&conn.wbuf) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        conn.wbuf.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let want = !conn.wbuf.is_empty();
            if want != conn.want_write {
                conn.want_write = want;
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                self.registry
                    .reregister(&mut conn.stream, token(i, c), interest)?;
            }
        }
        if readable {
            let mut chunk = [0u8; 16384];
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "closed by intercept",
                        ))
                    }
                    Ok(n) => {
                        conn.rbuf.extend_from_slice(&chunk[..n]);
                        let before = records.len();
                        let used = take_records(&conn.rbuf, wire, records).map_err(|e| {
                            self.stats.broken_frames += 1;
                            io::Error::new(io::ErrorKind::InvalidData, e)
                        })?;
                        conn.rbuf.drain(..used);
                        let record_len = if wire.payload {
                            RECORD_LEN_PAYLOAD
                        } else {
                            RECORD_LEN
                        };
                        self.stats.records += ((records.len() - before) / record_len) as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn close(&mut self, i: usize, c: usize) {
        if let Some(mut conn) = self.intercepts[i].conns[c].take() {
            let _ = self.registry.deregister(&mut conn.stream);
            if matches!(conn.state, ConnState::Up) {
                self.stats.disconnects += 1;
            }
        }
        let any_up = self.intercepts[i].conns.iter().any(|c| {
            matches!(
                c,
                Some(Conn {
                    state: ConnState::Up,
                    ..
                })
            )
        });
        if !any_up && self.intercepts[i].active {
            self.intercepts[i].active = false;
            log::warn!("intercept {} is inactive", self.intercepts[i].addr);
        }
    }

    /// Starts non-blocking connects for every connection slot of inactive intercepts that is
    /// empty (or stuck connecting too long). Called every 12 s with `-L`.
    pub fn reconnect_inactive(&mut self, now: Instant) {
        for i in 0..self.intercepts.len() {
            if self.intercepts[i].active {
                continue;
            }
            for c in 0..self.conns_per_intercept {
                let stale = match &self.intercepts[i].conns[c] {
                    None => true,
                    Some(Conn {
                        state: ConnState::Connecting(started),
                        ..
                    }) => now.duration_since(*started) >= CONNECT_TIMEOUT,
                    Some(_) => false,
                };
                if !stale {
                    continue;
                }
                if let Some(mut old) = self.intercepts[i].conns[c].take() {
                    let _ = self.registry.deregister(&mut old.stream);
                }
                let addr = self.intercepts[i].addr;
                self.stats.reconnect_attempts += 1;
                match TcpStream::connect(SocketAddr::V4(addr)) {
                    Ok(mut stream) => {
                        if let Err(e) = self.registry.register(
                            &mut stream,
                            token(i, c),
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            log::warn!("intercept {addr}: cannot register reconnect: {e}");
                            continue;
                        }
                        self.intercepts[i].conns[c] = Some(Conn {
                            stream,
                            state: ConnState::Connecting(now),
                            rbuf: Vec::with_capacity(4096),
                            wbuf: Vec::new(),
                            want_write: true,
                        });
                    }
                    Err(e) => {
                        log::warn!("intercept {addr}: reconnect failed: {e}");
                        break;
                    }
                }
            }
        }
    }
}

fn token(intercept: usize, conn: usize) -> Token {
    Token(TUNNEL_TOKEN_BASE + intercept * SLOTS + conn)
}

fn connect_blocking(addr: SocketAddrV4, timeout: Duration) -> io::Result<StdTcpStream> {
    let mut stream = StdTcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(&version_message())?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMBINED: WireOptions = WireOptions {
        combined: true,
        payload: false,
    };

    #[test]
    fn messages() {
        assert_eq!(
            version_message(),
            [0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0]
        );
        let m = client_message(
            CLIENT_ADD,
            Ipv4Addr::new(203, 0, 113, 1),
            0x1234,
            Ipv4Addr::new(198, 18, 0, 30),
            8080,
        );
        assert_eq!(
            m,
            [203, 0, 113, 1, 0x12, 0x34, 0, 1, 198, 18, 0, 30, 0x1f, 0x90]
        );
    }

    #[test]
    fn combined_frames_partial_and_broken() {
        let mut buf = vec![0, 2];
        buf.extend(std::iter::repeat_n(1u8, 64));
        buf.extend(std::iter::repeat_n(2u8, 64));
        buf.extend([0, 0]); // an empty frame
        buf.extend([0, 1]);
        buf.extend(std::iter::repeat_n(3u8, 10)); // incomplete
        let mut out = Vec::new();
        let used = take_records(&buf, COMBINED, &mut out).unwrap();
        assert_eq!(used, 2 + 128 + 2);
        assert_eq!(out.len(), 128);
        assert_eq!(out[64], 2);
        let mut out = Vec::new();
        assert!(take_records(&[0, 17], COMBINED, &mut out).is_err());
        let payload = WireOptions {
            combined: true,
            payload: true,
        };
        assert!(take_records(&[0, 7], payload, &mut out).is_err());
    }

    #[test]
    fn bare_records() {
        let wire = WireOptions {
            combined: false,
            payload: false,
        };
        let mut out = Vec::new();
        assert_eq!(take_records(&[0u8; 150], wire, &mut out).unwrap(), 128);
        assert_eq!(out.len(), 128);
    }

    #[test]
    fn tunnel_round_trip_over_loopback() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            panic!("v4")
        };
        let mut poll = mio::Poll::new().unwrap();
        let mut tunnels = Tunnels::connect_all(
            &[addr],
            2,
            COMBINED,
            poll.registry(),
            Duration::from_secs(3),
        )
        .unwrap();
        let (mut a, _) = listener.accept().unwrap();
        let (mut b, _) = listener.accept().unwrap();
        let mut v = [0u8; 14];
        a.read_exact(&mut v).unwrap();
        assert_eq!(v, version_message());
        b.read_exact(&mut v).unwrap();
        assert_eq!(v, version_message());
        assert!(tunnels.client_add(
            Ipv4Addr::new(203, 0, 113, 1),
            1000,
            Ipv4Addr::new(198, 18, 0, 30),
            8080
        ));
        assert!(tunnels.client_add(
            Ipv4Addr::new(203, 0, 113, 1),
            1001,
            Ipv4Addr::new(198, 18, 0, 30),
            8080
        ));
        // Round robin: one message on each connection.
        a.read_exact(&mut v).unwrap();
        assert_eq!(&v[4..6], &1000u16.to_be_bytes());
        b.read_exact(&mut v).unwrap();
        assert_eq!(&v[4..6], &1001u16.to_be_bytes());
        // A response frame comes back through on_event.
        let mut frame = vec![0u8, 1];
        frame.extend([9u8; 64]);
        a.write_all(&frame).unwrap();
        let mut events = mio::Events::with_capacity(8);
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while records.is_empty() && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for e in events.iter() {
                tunnels.on_event(e.token(), e.is_readable(), e.is_writable(), &mut records);
            }
        }
        assert_eq!(records, vec![9u8; 64]);
        // Both connections lost: the intercept goes down.
        drop(a);
        drop(b);
        let mut down = false;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !down && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for e in events.iter() {
                if let TunnelEvent::InterceptDown(_) =
                    tunnels.on_event(e.token(), e.is_readable(), e.is_writable(), &mut records)
                {
                    down = true;
                }
            }
        }
        assert!(down);
        assert_eq!(tunnels.active_intercepts(), 0);
        assert!(!tunnels.client_add(
            Ipv4Addr::new(203, 0, 113, 1),
            1002,
            Ipv4Addr::new(198, 18, 0, 30),
            8080
        ));
        // Reconnect: a new connection gets the version record first.
        tunnels.reconnect_inactive(Instant::now());
        let mut up = false;
        let deadline = Instant::now() + Duration::from_secs(5);
        listener.set_nonblocking(true).unwrap();
        let mut accepted = Vec::new();
        while !up && Instant::now() < deadline {
            if let Ok((s, _)) = listener.accept() {
                accepted.push(s);
            }
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            for e in events.iter() {
                if let TunnelEvent::InterceptUp(_) =
                    tunnels.on_event(e.token(), e.is_readable(), e.is_writable(), &mut records)
                {
                    up = true;
                }
            }
        }
        assert!(up);
        assert_eq!(tunnels.active_intercepts(), 1);
        let mut s = accepted
            .pop()
            .unwrap_or_else(|| listener.accept().unwrap().0);
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Give the loop a chance to flush the queued version record.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(20)))
                .unwrap();
            for e in events.iter() {
                tunnels.on_event(e.token(), e.is_readable(), e.is_writable(), &mut records);
            }
            if tunnels.open_connections() == 2 {
                break;
            }
        }
        s.read_exact(&mut v).unwrap();
        assert_eq!(v, version_message());
    }
}
