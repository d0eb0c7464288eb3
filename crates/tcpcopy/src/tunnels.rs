//! Control tunnels to the intercepts (spec 5): `-C` TCP connections per `-s` address, the
//! version record first, CLIENT_ADD announcements round-robin per intercept, response frames
//! reassembled without blocking (tc-core's `FramedConn`), and (with `-L`) non-blocking
//! reconnects of lost intercepts. A tunnel whose intercept stops reading is closed, counted
//! and, with `-L`, reconnected: it never blocks the loop.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use tc_core::control::conn::{
    ConnError, FramedConn, Framing, FullPayloadFrames, ReadStatus, ResponseFrames,
};
use tc_core::control::ipv6::ClientAdd6;
use tc_core::control::{full_payload, ClientMsg};

use crate::cli::{WireOptions, INTERNAL_VERSION};

/// Tokens of tunnel connections: `TUNNEL_TOKEN_BASE + intercept * SLOTS + connection`.
pub const TUNNEL_TOKEN_BASE: usize = 1 << 16;
const SLOTS: usize = 16;

use tc_core::control::CLIENT_MSG_LEN;
/// Bytes queued for one tunnel before it counts as stuck and is dropped.
const MAX_PENDING_WRITE: usize = 1 << 20;
/// Queued output that has not moved for this long: the intercept is not reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Response bytes read from one tunnel per turn, so one busy intercept cannot starve the rest.
const READ_BUDGET: usize = 256 * 1024;
/// A non-blocking reconnect that has not completed by then is abandoned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The version record: all zero but the type (spec 5.2).
pub fn version_message() -> [u8; CLIENT_MSG_LEN] {
    ClientMsg::version(INTERNAL_VERSION).encode()
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
    /// Tunnels closed because the intercept stopped reading (queue full or no progress).
    pub stuck: u64,
    /// Keepalive records sent.
    pub keepalives: u64,
}

enum Conn {
    /// A non-blocking reconnect in progress, registered for READABLE | WRITABLE.
    Connecting {
        stream: TcpStream,
        since: Instant,
    },
    Up(FramedConn),
}

struct Intercept {
    addr: SocketAddr,
    conns: Vec<Option<Conn>>,
    active: bool,
    next: usize,
}

pub struct Tunnels {
    intercepts: Vec<Intercept>,
    conns_per_intercept: usize,
    framing: ResponseFrames,
    /// `--full-payload`: every tunnel asks for the target's bytes after its version record,
    /// and its input is split with [`FullPayloadFrames`].
    full_payload: bool,
    /// TCP over IPv6: every tunnel asks for the IPv6 variant after its version record, and
    /// its input is split with [`FullPayloadFrames`] (which hands out IPv6 units).
    ipv6: bool,
    registry: Registry,
    /// Tunnels that used their read budget with data possibly left (mio is edge-triggered).
    read_again: Vec<Token>,
    /// Broken frames since the path probe last looked: (intercept, error), a few at most.
    protocol_errors: Vec<(usize, String)>,
    pub stats: TunnelStats,
}

/// What happened on a tunnel event, for the event loop.
#[derive(Debug, PartialEq, Eq)]
pub enum TunnelEvent {
    Nothing,
    /// An intercept became active (first connection up after a reconnect).
    InterceptUp(SocketAddr),
    /// The last connection of an intercept is gone.
    InterceptDown(SocketAddr),
}

impl Tunnels {
    /// Connects `conns_per_intercept` tunnels to every intercept, blocking up to `timeout` per
    /// connection, sends the version records and registers everything. Any failure is an error.
    pub fn connect_all(
        intercepts: &[SocketAddr],
        conns_per_intercept: usize,
        wire: WireOptions,
        registry: &Registry,
        timeout: Duration,
    ) -> anyhow::Result<Tunnels> {
        Self::connect_all_with(
            intercepts,
            conns_per_intercept,
            wire,
            registry,
            timeout,
            false,
        )
    }

    /// [`Tunnels::connect_all`], and with `full_payload` each tunnel asks for the target's
    /// response bytes (`--full-payload`).
    pub fn connect_all_with(
        intercepts: &[SocketAddr],
        conns_per_intercept: usize,
        wire: WireOptions,
        registry: &Registry,
        timeout: Duration,
        full_payload: bool,
    ) -> anyhow::Result<Tunnels> {
        Self::connect_all_variants(
            intercepts,
            conns_per_intercept,
            wire,
            registry,
            timeout,
            full_payload,
            false,
        )
    }

    /// [`Tunnels::connect_all_with`], and with `ipv6` each tunnel asks for the IPv6 variant.
    pub fn connect_all_variants(
        intercepts: &[SocketAddr],
        conns_per_intercept: usize,
        wire: WireOptions,
        registry: &Registry,
        timeout: Duration,
        full_payload: bool,
        ipv6: bool,
    ) -> anyhow::Result<Tunnels> {
        let registry = registry.try_clone()?;
        let framing = ResponseFrames(wire);
        let max_frame = max_frame_len(wire, full_payload || ipv6);
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
                let mut conn = FramedConn::new(stream, token(i, c), max_frame, MAX_PENDING_WRITE)?;
                if full_payload {
                    conn.queue(&full_payload_request())?;
                    conn.flush(&registry)?;
                }
                if ipv6 {
                    conn.queue(&tc_core::control::ipv6::request())?;
                    conn.flush(&registry)?;
                }
                conns.push(Some(Conn::Up(conn)));
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
            framing,
            full_payload,
            ipv6,
            registry,
            read_again: Vec::new(),
            protocol_errors: Vec::new(),
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
            .filter(|c| matches!(c, Some(Conn::Up(_))))
            .count()
    }

    /// Which intercept a tunnel token belongs to.
    /// The address of intercept `i`.
    pub fn intercept_addr(&self, i: usize) -> Option<SocketAddr> {
        self.intercepts.get(i).map(|x| x.addr)
    }

    pub fn intercept_of(&self, tok: Token) -> Option<usize> {
        self.slot(tok).map(|(i, _)| i)
    }

    /// Broken frames since the last call (intercept index, error).
    pub fn take_protocol_errors(&mut self) -> Vec<(usize, String)> {
        std::mem::take(&mut self.protocol_errors)
    }

    /// A probe question to one intercept, on its next open connection. False if none took it.
    pub fn ask(&mut self, intercept: usize, msg: &ClientMsg) -> bool {
        let Some(ic) = self.intercepts.get_mut(intercept) else {
            return false;
        };
        let bytes = msg.encode();
        for slot in ic.conns.iter_mut() {
            if let Some(Conn::Up(conn)) = slot.as_mut() {
                if conn
                    .queue(&bytes)
                    .and_then(|()| conn.flush(&self.registry))
                    .is_ok()
                {
                    return true;
                }
            }
        }
        false
    }

    pub fn owns(token: Token) -> bool {
        token.0 >= TUNNEL_TOKEN_BASE
    }

    /// CLIENT_ADD to every active intercept, on its next connection round-robin. True when at
    /// least one intercept took it.
    pub fn client_add(
        &mut self,
        client_ip: impl Into<IpAddr>,
        client_port: u16,
        target_ip: impl Into<IpAddr>,
        target_port: u16,
    ) -> bool {
        let accepted = self.announce(client_ip, client_port, target_ip, target_port);
        if accepted {
            self.stats.client_add_sent += 1;
        } else {
            self.stats.client_add_failed += 1;
        }
        accepted
    }

    /// CLIENT_ADD as [`Tunnels::client_add`], not counted in the replay's statistics (the
    /// path probe's).
    pub fn announce(
        &mut self,
        client_ip: impl Into<IpAddr>,
        client_port: u16,
        target_ip: impl Into<IpAddr>,
        target_port: u16,
    ) -> bool {
        // An IPv6 session goes in the IPv6 variant's CLIENT_ADD (sent only once every
        // intercept granted the variant: see the event loop).
        let (v4, v6);
        let msg: &[u8] = match (client_ip.into(), target_ip.into()) {
            (IpAddr::V4(c), IpAddr::V4(t)) => {
                v4 = ClientMsg::add(c, client_port, t, target_port).encode();
                &v4
            }
            (IpAddr::V6(c), IpAddr::V6(t)) => {
                v6 = ClientAdd6 {
                    client_ip: c,
                    client_port,
                    target_ip: t,
                    target_port,
                }
                .encode();
                &v6
            }
            _ => return false,
        };
        let mut accepted = false;
        for i in 0..self.intercepts.len() {
            if !self.intercepts[i].active {
                continue;
            }
            let n = self.intercepts[i].conns.len();
            for _ in 0..n {
                let c = self.intercepts[i].next % n;
                self.intercepts[i].next = (c + 1) % n;
                let Some(Conn::Up(conn)) = self.intercepts[i].conns[c].as_mut() else {
                    continue;
                };
                match conn.queue(msg).and_then(|()| conn.flush(&self.registry)) {
                    Ok(()) => {
                        accepted = true;
                        break;
                    }
                    Err(e) => {
                        log::error!("intercept {}: msg send error: {e}", self.intercepts[i].addr);
                        if matches!(e, ConnError::Overflow { .. }) {
                            self.stats.stuck += 1;
                        }
                        self.close(i, c);
                    }
                }
            }
        }
        accepted
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
            // Nothing on the wire says which record variant is used: a broken frame is
            // almost always a mismatch of the two sides' options.
            let hint = match e {
                ConnError::Protocol(_) => {
                    " (do tcpcopy and intercept use the same --payload and --disable-combined?)"
                }
                _ => "",
            };
            log::warn!(
                "intercept {}: tunnel closed: {e}{hint}",
                self.intercepts[i].addr
            );
            if matches!(e, ConnError::Protocol(_)) && self.protocol_errors.len() < 16 {
                self.protocol_errors.push((i, e.to_string()));
            }
            match e {
                ConnError::Protocol(_) => self.stats.broken_frames += 1,
                ConnError::Overflow { .. } => self.stats.stuck += 1,
                _ => {}
            }
            self.close(i, c);
        }
        let now_active = self.intercepts[i].active;
        match (was_active, now_active) {
            (false, true) => TunnelEvent::InterceptUp(self.intercepts[i].addr),
            (true, false) => TunnelEvent::InterceptDown(self.intercepts[i].addr),
            _ => TunnelEvent::Nothing,
        }
    }

    /// Tunnels to read again this turn (they used their budget last time).
    pub fn take_read_again(&mut self, into: &mut Vec<Token>) {
        into.clear();
        into.append(&mut self.read_again);
    }

    pub fn has_reads_pending(&self) -> bool {
        !self.read_again.is_empty()
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
    ) -> Result<(), ConnError> {
        let addr = self.intercepts[i].addr;
        let slot = &mut self.intercepts[i].conns[c];
        if let Some(Conn::Connecting { stream, .. }) = slot {
            if let Some(e) = stream.take_error()? {
                return Err(e.into());
            }
            match stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let Some(Conn::Connecting { mut stream, .. }) = slot.take() else {
                unreachable!("checked above");
            };
            self.registry
                .reregister(&mut stream, token(i, c), Interest::READABLE)?;
            let mut conn = FramedConn::new(
                stream,
                token(i, c),
                max_frame_len(self.framing.0, self.full_payload || self.ipv6),
                MAX_PENDING_WRITE,
            )?;
            // The version record goes first; the queue is empty on a fresh connection.
            conn.queue(&version_message())?;
            if self.full_payload {
                conn.queue(&full_payload_request())?;
            }
            if self.ipv6 {
                conn.queue(&tc_core::control::ipv6::request())?;
            }
            *slot = Some(Conn::Up(conn));
            self.stats.connects += 1;
            log::info!("connect to remote server({addr})");
            self.intercepts[i].active = true;
        }
        let Some(Conn::Up(conn)) = self.intercepts[i].conns[c].as_mut() else {
            return Ok(());
        };
        if writable || conn.pending_output() > 0 {
            conn.flush(&self.registry)?;
        }
        if readable {
            let record_len = self.framing.0.record_len();
            let before = records.len();
            let mut data = 0;
            let status = if self.full_payload || self.ipv6 {
                // A data message or an IPv6 unit goes in whole, padded to a multiple of the
                // record length: the reader walks the records and skips the padding (see
                // `data_slots`). An IPv6 unit counts as one record.
                conn.read_units(&FullPayloadFrames(self.framing.0), READ_BUDGET, |r| {
                    records.extend_from_slice(r);
                    let v6 = tc_core::control::ipv6::is_record6(r);
                    if full_payload::is_data(r) || v6 {
                        data += data_slots(r.len(), record_len) - usize::from(v6);
                        let pad = data_slots(r.len(), record_len) * record_len - r.len();
                        records.extend(std::iter::repeat_n(0u8, pad));
                    }
                })
            } else {
                conn.read_units(&self.framing, READ_BUDGET, |r| records.extend_from_slice(r))
            };
            self.stats.records += ((records.len() - before) / record_len - data) as u64;
            if status? == ReadStatus::BudgetUsed {
                self.read_again.push(token(i, c));
            }
        }
        Ok(())
    }

    fn close(&mut self, i: usize, c: usize) {
        match self.intercepts[i].conns[c].take() {
            Some(Conn::Up(mut conn)) => {
                conn.deregister(&self.registry);
                self.stats.disconnects += 1;
            }
            Some(Conn::Connecting { mut stream, .. }) => {
                let _ = self.registry.deregister(&mut stream);
            }
            None => {}
        }
        let any_up = self.intercepts[i]
            .conns
            .iter()
            .any(|c| matches!(c, Some(Conn::Up(_))));
        if !any_up && self.intercepts[i].active {
            self.intercepts[i].active = false;
            log::warn!("intercept {} is inactive", self.intercepts[i].addr);
        }
    }

    /// A keepalive record on every open tunnel, so that an intercept's idle-tunnel timeout
    /// never closes the tunnels of a tcpcopy whose traffic is quiet for a while (without `-L`
    /// tcpcopy would then stop). Returns the intercepts that went down on a send error.
    pub fn keepalive(&mut self) -> Vec<SocketAddr> {
        let msg = ClientMsg::keepalive().encode();
        let mut down = Vec::new();
        for i in 0..self.intercepts.len() {
            for c in 0..self.intercepts[i].conns.len() {
                let Some(Conn::Up(conn)) = self.intercepts[i].conns[c].as_mut() else {
                    continue;
                };
                if let Err(e) = conn.queue(&msg).and_then(|()| conn.flush(&self.registry)) {
                    log::error!(
                        "intercept {}: keepalive send error: {e}",
                        self.intercepts[i].addr
                    );
                    let was_active = self.intercepts[i].active;
                    self.close(i, c);
                    if was_active && !self.intercepts[i].active {
                        down.push(self.intercepts[i].addr);
                    }
                } else {
                    self.stats.keepalives += 1;
                }
            }
        }
        down
    }

    /// Closes tunnels whose queued output has not moved for [`SEND_TIMEOUT`] (the intercept
    /// stopped reading). Returns the intercepts that went down.
    pub fn close_stuck(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut down = Vec::new();
        for i in 0..self.intercepts.len() {
            for c in 0..self.intercepts[i].conns.len() {
                let stuck = matches!(
                    &self.intercepts[i].conns[c],
                    Some(Conn::Up(conn)) if conn.output_stalled_for(now) >= Some(SEND_TIMEOUT)
                );
                if stuck {
                    let was_active = self.intercepts[i].active;
                    log::warn!(
                        "intercept {}: tunnel closed: nothing sent for {} s (intercept not reading)",
                        self.intercepts[i].addr,
                        SEND_TIMEOUT.as_secs()
                    );
                    self.stats.stuck += 1;
                    self.close(i, c);
                    if was_active && !self.intercepts[i].active {
                        down.push(self.intercepts[i].addr);
                    }
                }
            }
        }
        down
    }

    /// Starts non-blocking connects for every connection slot of inactive intercepts that is
    /// empty (or stuck connecting too long). Called every 12 s with `-L`. Only intercepts
    /// that are gone (spec 5.5): a single new tunnel to an intercept in single mode would
    /// look like a new tcpcopy there and close the tunnels still working.
    pub fn reconnect_inactive(&mut self, now: Instant) {
        for i in 0..self.intercepts.len() {
            if self.intercepts[i].active {
                continue;
            }
            for c in 0..self.conns_per_intercept {
                let stale = match &self.intercepts[i].conns[c] {
                    None => true,
                    Some(Conn::Connecting { since, .. }) => {
                        now.duration_since(*since) >= CONNECT_TIMEOUT
                    }
                    Some(Conn::Up(_)) => false,
                };
                if !stale {
                    continue;
                }
                if let Some(Conn::Connecting { mut stream, .. }) =
                    self.intercepts[i].conns[c].take()
                {
                    let _ = self.registry.deregister(&mut stream);
                }
                let addr = self.intercepts[i].addr;
                self.stats.reconnect_attempts += 1;
                match TcpStream::connect(addr) {
                    Ok(mut stream) => {
                        if let Err(e) = self.registry.register(
                            &mut stream,
                            token(i, c),
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            log::warn!("intercept {addr}: cannot register reconnect: {e}");
                            continue;
                        }
                        self.intercepts[i].conns[c] = Some(Conn::Connecting { stream, since: now });
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

/// The input buffer a tunnel needs: a whole frame, or a whole data message.
fn max_frame_len(wire: WireOptions, full_payload: bool) -> usize {
    if full_payload {
        FullPayloadFrames(wire).max_frame_len()
    } else {
        ResponseFrames(wire).max_frame_len()
    }
}

/// The `--full-payload` request (sent after the version record).
pub fn full_payload_request() -> [u8; CLIENT_MSG_LEN] {
    ClientMsg {
        kind: full_payload::FULL_PAYLOAD_REQUEST,
        ..ClientMsg::version(0)
    }
    .encode()
}

/// Record slots a data message of `len` bytes takes in the records buffer.
pub fn data_slots(len: usize, record_len: usize) -> usize {
    len.div_ceil(record_len)
}

fn token(intercept: usize, conn: usize) -> Token {
    Token(TUNNEL_TOKEN_BASE + intercept * SLOTS + conn)
}

pub fn connect_blocking(addr: SocketAddr, timeout: Duration) -> io::Result<StdTcpStream> {
    let mut stream = StdTcpStream::connect_timeout(&addr, timeout)?;
    stream.set_write_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(&version_message())?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::Ipv4Addr;
    use std::net::SocketAddrV4;

    const COMBINED: WireOptions = WireOptions {
        combined: true,
        payload: false,
    };

    /// A loopback "intercept" listener and two tunnels to it (not yet accepted).
    fn one_intercept_two_tunnels() -> (std::net::TcpListener, mio::Poll, Tunnels) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            panic!("v4")
        };
        let poll = mio::Poll::new().unwrap();
        let tunnels = Tunnels::connect_all(
            &[addr.into()],
            2,
            COMBINED,
            poll.registry(),
            Duration::from_secs(3),
        )
        .unwrap();
        (listener, poll, tunnels)
    }

    /// Runs the loop (at most 5 s) until `done` holds for the tunnels and the records.
    fn drive_until(
        poll: &mut mio::Poll,
        tunnels: &mut Tunnels,
        records: &mut Vec<u8>,
        mut done: impl FnMut(&Tunnels, &Vec<u8>) -> bool,
    ) {
        let mut events = mio::Events::with_capacity(8);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(tunnels, records) && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(20)))
                .unwrap();
            for e in events.iter() {
                tunnels.on_event(e.token(), e.is_readable(), e.is_writable(), records);
            }
        }
    }

    #[test]
    fn messages() {
        assert_eq!(
            version_message(),
            [0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0]
        );
        let m = ClientMsg::add(
            Ipv4Addr::new(203, 0, 113, 1),
            0x1234,
            Ipv4Addr::new(198, 18, 0, 30),
            8080,
        )
        .encode();
        assert_eq!(
            m,
            [203, 0, 113, 1, 0x12, 0x34, 0, 1, 198, 18, 0, 30, 0x1f, 0x90]
        );
    }

    /// The keepalive is a CLIENT_DEL naming no connection, on every tunnel.
    #[test]
    fn keepalive_on_every_tunnel() {
        let (listener, _poll, mut tunnels) = one_intercept_two_tunnels();
        let mut peers: Vec<_> = (0..2).map(|_| listener.accept().unwrap().0).collect();
        let mut v = [0u8; 14];
        for p in &mut peers {
            p.read_exact(&mut v).unwrap();
            assert_eq!(v, version_message());
        }
        assert!(tunnels.keepalive().is_empty());
        assert_eq!(tunnels.stats.keepalives, 2);
        for p in &mut peers {
            p.read_exact(&mut v).unwrap();
            assert_eq!(v, [0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0]);
        }
    }

    #[test]
    fn tunnel_round_trip_over_loopback() {
        let (listener, mut poll, mut tunnels) = one_intercept_two_tunnels();
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
        drive_until(&mut poll, &mut tunnels, &mut records, |_, r| !r.is_empty());
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

    fn listener_with_small_receive_buffer() -> (std::net::TcpListener, SocketAddrV4) {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(8).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            panic!("v4")
        };
        (listener, addr)
    }

    /// One intercept never reads: its tunnel overflows, is closed and counted; the other
    /// intercept keeps getting every announcement, and the caller never blocks.
    #[test]
    fn an_intercept_that_never_reads_is_dropped_and_the_other_keeps_flowing() {
        use std::net::TcpListener;
        let (deaf_listener, deaf_addr) = listener_with_small_receive_buffer();
        let good_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(good_addr) = good_listener.local_addr().unwrap() else {
            panic!("v4")
        };
        let poll = mio::Poll::new().unwrap();
        let mut tunnels = Tunnels::connect_all(
            &[deaf_addr.into(), good_addr.into()],
            1,
            COMBINED,
            poll.registry(),
            Duration::from_secs(3),
        )
        .unwrap();
        let (_deaf, _) = deaf_listener.accept().unwrap();
        let (mut good, _) = good_listener.accept().unwrap();
        // The good intercept reads everything, counting CLIENT_ADDs, until the stream ends.
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0usize;
            loop {
                match good.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            (total - CLIENT_MSG_LEN) / CLIENT_MSG_LEN
        });
        let started = Instant::now();
        let mut sent = 0usize;
        // Bounded: 1 MiB queue + kernel buffers (a few MB) fill well before this.
        for port in 0..2_000_000u32 {
            assert!(tunnels.client_add(
                Ipv4Addr::new(203, 0, 113, 1),
                port as u16,
                Ipv4Addr::new(198, 18, 0, 30),
                8080
            ));
            sent += 1;
            if tunnels.stats.stuck > 0 && sent.is_multiple_of(1000) {
                break;
            }
        }
        assert_eq!(
            tunnels.stats.stuck, 1,
            "the deaf intercept's tunnel was not dropped"
        );
        assert_eq!(tunnels.active_intercepts(), 1);
        assert_eq!(tunnels.stats.client_add_failed, 0);
        assert!(started.elapsed() < Duration::from_secs(60));
        // Flush what is queued for the good intercept, then end its stream.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events = mio::Events::with_capacity(8);
        let mut records = Vec::new();
        let mut poll = poll;
        loop {
            let Some(Conn::Up(conn)) = tunnels.intercepts[1].conns[0].as_ref() else {
                panic!("good tunnel gone")
            };
            if conn.pending_output() == 0 || Instant::now() > deadline {
                break;
            }
            poll.poll(&mut events, Some(Duration::from_millis(20)))
                .unwrap();
            for e in events.iter() {
                tunnels.on_event(e.token(), e.is_readable(), e.is_writable(), &mut records);
            }
        }
        drop(tunnels);
        assert_eq!(
            reader.join().unwrap(),
            sent,
            "announcements lost on the good tunnel"
        );
    }

    /// An intercept that sends half a frame and stops holds back nothing: the other
    /// intercept's records come through, the half frame is kept until it completes.
    #[test]
    fn half_a_frame_from_one_intercept_does_not_hold_back_another() {
        use std::net::TcpListener;
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = |l: &TcpListener| match l.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            _ => panic!("v4"),
        };
        let mut poll = mio::Poll::new().unwrap();
        let mut tunnels = Tunnels::connect_all(
            &[addr(&l1).into(), addr(&l2).into()],
            1,
            COMBINED,
            poll.registry(),
            Duration::from_secs(3),
        )
        .unwrap();
        let (mut half, _) = l1.accept().unwrap();
        let (mut good, _) = l2.accept().unwrap();
        let mut frame = vec![0u8, 2];
        frame.extend([7u8; 64]);
        frame.extend([8u8; 64]);
        half.write_all(&frame[..70]).unwrap();
        let mut records = Vec::new();
        for k in 0..50u8 {
            let mut f = vec![0u8, 1];
            f.extend([k; 64]);
            good.write_all(&f).unwrap();
        }
        drive_until(&mut poll, &mut tunnels, &mut records, |_, r| {
            r.len() >= 50 * 64
        });
        assert_eq!(records.len(), 50 * 64);
        assert!(records.chunks(64).enumerate().all(|(k, r)| r[0] == k as u8));
        assert_eq!(tunnels.open_connections(), 2);
        // The rest of the half frame completes it.
        half.write_all(&frame[70..]).unwrap();
        records.clear();
        drive_until(&mut poll, &mut tunnels, &mut records, |_, r| r.len() >= 128);
        assert_eq!(&records[..64], &[7u8; 64]);
        assert_eq!(&records[64..], &[8u8; 64]);
        assert_eq!(tunnels.stats.broken_frames, 0);
    }

    /// With -L, a single tunnel lost while its intercept stays active is not reopened (spec
    /// 5.5: only intercepts that are gone are reconnected, all their tunnels together).
    #[test]
    fn a_lost_tunnel_of_an_active_intercept_is_left_closed() {
        let (listener, mut poll, mut tunnels) = one_intercept_two_tunnels();
        let (a, _) = listener.accept().unwrap();
        let (_b, _) = listener.accept().unwrap();
        drop(a);
        let mut records = Vec::new();
        drive_until(&mut poll, &mut tunnels, &mut records, |t, _| {
            t.open_connections() != 2
        });
        assert_eq!(tunnels.open_connections(), 1);
        assert_eq!(tunnels.active_intercepts(), 1);
        let attempts = tunnels.stats.reconnect_attempts;
        tunnels.reconnect_inactive(Instant::now());
        assert_eq!(tunnels.stats.reconnect_attempts, attempts);
        listener.set_nonblocking(true).unwrap();
        assert!(listener.accept().is_err(), "no new tunnel");
    }
}
