//! Where the replay machine's queued output goes: the send backend, the control tunnels, and
//! the safety check that nothing is ever sent anywhere but a configured `-x` target.
//!
//! The datagrams of a flush are handed to the backend together (one `sendmmsg` per 64 for
//! the raw socket). The backend never blocks: what it cannot take now waits in a bounded
//! queue, in order, ahead of anything newer, and is retried when the backend is writable
//! (or on a short timer); datagrams beyond the bound are dropped and counted.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tc_core::logging::RateLimit;
use tc_core::send::{Outgoing, Sender};
use tc_core::session::{Outbox, Transfer};

use crate::tunnels::Tunnels;

/// Datagrams kept while the backend is full, at most this many bytes; beyond, new ones are
/// dropped (counted in `overflow`).
pub const MAX_WAITING_BYTES: usize = 8 << 20;
/// Datagrams offered to the backend per call when draining the queue.
const DRAIN_CHUNK: usize = 256;

#[derive(Debug, Clone, Copy, Default)]
pub struct SendStats {
    pub sent: u64,
    pub send_errors: u64,
    /// Datagrams refused because their destination is not a `-x` target.
    pub refused_not_target: u64,
    /// Calls into the backend (system calls for the raw socket).
    pub send_calls: u64,
    /// Times the backend was full (would have blocked).
    pub socket_full: u64,
    /// Datagrams that waited in the queue because the backend was full.
    pub deferred: u64,
    /// Datagrams dropped because the queue was full.
    pub overflow: u64,
}

pub struct ReplayOutput {
    sender: Box<dyn Sender>,
    targets: Vec<(IpAddr, u16)>,
    pub tunnels: Tunnels,
    pub stats: SendStats,
    single: bool,
    /// Origin of the rate limits' clock.
    started: Instant,
    error_log: RateLimit,
    refusal_log: RateLimit,
    overflow_log: RateLimit,
    /// The backend is registered for writable readiness (only while datagrams wait).
    armed: bool,
    /// Checked datagrams (with their transfer) the backend could not take yet, oldest first.
    waiting: VecDeque<(Box<[u8]>, usize)>,
    waiting_bytes: usize,
    /// The allocation of the batch handed to the backend, kept (empty) between flushes.
    batch: Vec<Outgoing<'static>>,
}

/// Empties `v` and gives its allocation back for borrows of another lifetime (the in-place
/// `collect` of an empty iterator keeps the buffer: nothing is allocated per flush).
fn recycle<'b>(mut v: Vec<Outgoing<'_>>) -> Vec<Outgoing<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("emptied")).collect()
}

impl ReplayOutput {
    pub fn new(
        sender: Box<dyn Sender>,
        transfers: &[Transfer],
        tunnels: Tunnels,
        single: bool,
    ) -> Self {
        ReplayOutput {
            sender,
            targets: transfers.iter().map(|t| (t.dst_ip, t.dst_port)).collect(),
            tunnels,
            stats: SendStats::default(),
            single,
            started: Instant::now(),
            error_log: RateLimit::new(Duration::from_secs(1), 1),
            refusal_log: RateLimit::new(Duration::from_secs(1), 1),
            overflow_log: RateLimit::new(Duration::from_secs(1), 1),
            armed: false,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            batch: Vec::new(),
        }
    }

    /// Watches the backend's writable readiness while datagrams wait for it, and only then
    /// (a registered socket reports every buffer it frees). Without a descriptor to watch,
    /// the caller's retry timer does the work.
    pub fn watch_writable(&mut self, registry: &mio::Registry, token: mio::Token) {
        let want = !self.waiting.is_empty();
        if want == self.armed {
            return;
        }
        let done = if want {
            self.sender.register(registry, token).map(|_| ())
        } else {
            self.sender.deregister(registry)
        };
        match done {
            Ok(()) => self.armed = want,
            Err(e) => {
                // Registered or not, the retry timer still runs while datagrams wait.
                self.armed = want;
                log::warn!("send backend: writable readiness ({e}): retrying on a timer");
            }
        }
    }

    /// Datagrams waiting for the backend.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// Destination IP and TCP port of an IPv4/TCP datagram; `None` when it is not one.
pub fn tcp_destination(datagram: &[u8]) -> Option<(IpAddr, u16)> {
    let first = *datagram.first()?;
    if first >> 4 == 6 {
        // What the replay machine sends is a plain 40-byte header and TCP.
        if datagram.get(6) != Some(&6) {
            return None;
        }
        let d: [u8; 16] = datagram.get(24..40)?.try_into().ok()?;
        let p = datagram.get(42..44)?;
        return Some((IpAddr::from(d), u16::from_be_bytes([p[0], p[1]])));
    }
    if first >> 4 != 4 || datagram.get(9) != Some(&6) {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let d = datagram.get(16..20)?;
    let p = datagram.get(ihl + 2..ihl + 4)?;
    Some((
        Ipv4Addr::new(d[0], d[1], d[2], d[3]).into(),
        u16::from_be_bytes([p[0], p[1]]),
    ))
}

/// The transfer whose target is `dst`: `hint` first, then the first one that matches.
pub fn allowed_transfer(
    targets: &[(IpAddr, u16)],
    hint: usize,
    dst: (IpAddr, u16),
) -> Option<usize> {
    if targets.get(hint) == Some(&dst) {
        return Some(hint);
    }
    targets.iter().position(|t| *t == dst)
}

impl ReplayOutput {
    /// Performs what the replay machine queued: announcements, then datagrams.
    pub fn flush(&mut self, outbox: &Outbox) {
        if !self.single {
            // intercept --single forwards everything to its one tcpcopy: nothing to announce.
            for a in outbox.client_adds() {
                self.tunnels
                    .client_add(a.client_ip, a.client_port, a.target_ip, a.target_port);
            }
        }
        let mut batch = recycle(std::mem::take(&mut self.batch));
        for d in outbox.datagrams() {
            if let Some(index) = self.target_of(d.bytes, d.transfer) {
                batch.push(Outgoing {
                    bytes: d.bytes,
                    transfer: index,
                });
            }
        }
        self.send_in_order(&batch);
        self.batch = recycle(batch);
    }

    /// The path probe's CLIENT_ADD (none with `--single`: intercept sends everything).
    pub fn announce_probe(&mut self, m: &tc_core::control::ClientMsg) {
        if !self.single {
            self.tunnels
                .announce(m.client_ip, m.client_port, m.target_ip, m.target_port);
        }
    }

    /// Sends a probe segment now, if (and only if) it goes to a configured `-x` target;
    /// the error is the probe's evidence (`tcpcopy --check`).
    pub fn send_probe(&mut self, datagram: &[u8]) -> Result<(), String> {
        let Some(index) = self.target_of(datagram, 0) else {
            return Err("not addressed to a -x target (refused)".into());
        };
        self.stats.send_calls += 1;
        match self.sender.send_batch(&[Outgoing {
            bytes: datagram,
            transfer: index,
        }]) {
            Ok(1) => {
                self.stats.sent += 1;
                Ok(())
            }
            Ok(_) => {
                self.stats.socket_full += 1;
                Err("the send socket is full".into())
            }
            Err(e) => {
                self.stats.send_errors += 1;
                Err(e.to_string())
            }
        }
    }

    /// Sends one datagram, if (and only if) it goes to a configured `-x` target.
    #[cfg(test)]
    pub fn send_to_target(&mut self, datagram: &[u8], transfer: usize) {
        if let Some(index) = self.target_of(datagram, transfer) {
            self.send_in_order(&[Outgoing {
                bytes: datagram,
                transfer: index,
            }]);
        }
    }

    /// Retries the datagrams waiting for the backend (it is writable, or the retry timer
    /// fired).
    pub fn retry(&mut self) {
        while !self.waiting.is_empty() {
            let mut batch = recycle(std::mem::take(&mut self.batch));
            batch.extend(
                self.waiting
                    .iter()
                    .take(DRAIN_CHUNK)
                    .map(|(bytes, transfer)| Outgoing {
                        bytes,
                        transfer: *transfer,
                    }),
            );
            let offered = batch.len();
            let done = Self::send_now(
                &mut *self.sender,
                &mut self.stats,
                &mut self.error_log,
                self.started,
                &batch,
            );
            self.batch = recycle(batch);
            for (bytes, _) in self.waiting.drain(..done) {
                self.waiting_bytes -= bytes.len();
            }
            if done < offered {
                break;
            }
        }
    }

    /// The index of the `-x` transfer `datagram` goes to; `None` (counted, logged) when it is
    /// not addressed to a configured target: tcpcopy never sends anywhere else.
    fn target_of(&mut self, datagram: &[u8], transfer: usize) -> Option<usize> {
        let allowed = tcp_destination(datagram)
            .and_then(|dst| allowed_transfer(&self.targets, transfer, dst));
        if allowed.is_none() {
            self.stats.refused_not_target += 1;
            if let Some(suppressed) = self.refusal_log.allow(self.started.elapsed()) {
                log::error!(
                    "refused to send a datagram to {:?} (not a -x target; transfer {transfer}; {suppressed} more suppressed)",
                    tcp_destination(datagram)
                );
            }
        }
        allowed
    }

    /// Sends checked datagrams behind those already waiting; keeps what the backend cannot
    /// take now.
    fn send_in_order(&mut self, batch: &[Outgoing<'_>]) {
        self.retry();
        let done = if self.waiting.is_empty() {
            Self::send_now(
                &mut *self.sender,
                &mut self.stats,
                &mut self.error_log,
                self.started,
                batch,
            )
        } else {
            0
        };
        for d in &batch[done..] {
            if self.waiting_bytes + d.bytes.len() > MAX_WAITING_BYTES {
                self.stats.overflow += 1;
                if let Some(suppressed) = self.overflow_log.allow(self.started.elapsed()) {
                    log::warn!(
                        "send queue full ({} datagrams, {} bytes waiting for the socket): datagram dropped ({suppressed} more suppressed)",
                        self.waiting.len(),
                        self.waiting_bytes
                    );
                }
                continue;
            }
            self.stats.deferred += 1;
            self.waiting_bytes += d.bytes.len();
            self.waiting.push_back((d.bytes.into(), d.transfer));
        }
    }

    /// Hands `batch` to the backend until it is done or full: returns how many datagrams are
    /// dealt with (sent, or failed and counted); the rest would block.
    fn send_now(
        sender: &mut dyn Sender,
        stats: &mut SendStats,
        error_log: &mut RateLimit,
        started: Instant,
        batch: &[Outgoing<'_>],
    ) -> usize {
        let mut done = 0;
        while done < batch.len() {
            stats.send_calls += 1;
            match sender.send_batch(&batch[done..]) {
                Ok(0) => break,
                Ok(n) => {
                    stats.sent += n as u64;
                    done += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    stats.socket_full += 1;
                    break;
                }
                Err(e) => {
                    stats.send_errors += 1;
                    if let Some(suppressed) = error_log.allow(started.elapsed()) {
                        log::error!(
                            "send to back error,tot_len is:{}: {e} ({suppressed} more suppressed)",
                            batch[done].bytes.len()
                        );
                    }
                    done += 1;
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(dst: [u8; 4], port: u16) -> Vec<u8> {
        let mut d = vec![0u8; 40];
        d[0] = 0x45;
        d[9] = 6;
        d[16..20].copy_from_slice(&dst);
        d[22..24].copy_from_slice(&port.to_be_bytes());
        d
    }

    #[test]
    fn destination_parsing() {
        assert_eq!(
            tcp_destination(&datagram([198, 18, 0, 30], 8080)),
            Some((Ipv4Addr::new(198, 18, 0, 30).into(), 8080))
        );
        let mut udp = datagram([198, 18, 0, 30], 8080);
        udp[9] = 17;
        assert_eq!(tcp_destination(&udp), None);
        assert_eq!(tcp_destination(&datagram([1, 2, 3, 4], 1)[..22]), None);
        assert_eq!(tcp_destination(&[]), None);
        // An IPv6 datagram that is not TCP, and an IPv6/TCP one.
        let mut v6 = datagram([1, 2, 3, 4], 1);
        v6[0] = 0x60;
        assert_eq!(tcp_destination(&v6), None);
        let mut buf = [0u8; 80];
        let spec = tc_core::packet::SegmentSpec {
            src: "2001:db8:ffff::1".parse().unwrap(),
            dst: "2001:db8::30".parse().unwrap(),
            src_port: 40000,
            dst_port: 8080,
            seq: 1,
            ack: 0,
            flags: tc_core::packet::flags::SYN,
            window: 100,
            ip_id: 0,
            mss: None,
            timestamps: None,
            payload: &[],
        };
        let n = tc_core::packet::build_segment(&spec, &mut buf).unwrap();
        assert_eq!(
            tcp_destination(&buf[..n]),
            Some(("2001:db8::30".parse().unwrap(), 8080))
        );
    }

    #[test]
    fn only_targets_are_allowed() {
        let t: [(IpAddr, u16); 2] = [
            (Ipv4Addr::new(198, 18, 0, 30).into(), 8080),
            (Ipv4Addr::new(198, 18, 0, 31).into(), 80),
        ];
        assert_eq!(allowed_transfer(&t, 0, t[0]), Some(0));
        assert_eq!(allowed_transfer(&t, 0, t[1]), Some(1));
        assert_eq!(allowed_transfer(&t, 7, t[1]), Some(1));
        assert_eq!(
            allowed_transfer(&t, 0, (Ipv4Addr::new(198, 18, 0, 30).into(), 80)),
            None
        );
        assert_eq!(
            allowed_transfer(&t, 1, (Ipv4Addr::new(198, 18, 0, 20).into(), 80)),
            None
        );
    }

    type SentLog = std::rc::Rc<std::cell::RefCell<Vec<(usize, Vec<u8>)>>>;
    struct Recorder(SentLog);

    impl Sender for Recorder {
        fn send_batch(&mut self, batch: &[Outgoing<'_>]) -> std::io::Result<usize> {
            for d in batch {
                self.0.borrow_mut().push((d.transfer, d.bytes.to_vec()));
            }
            Ok(batch.len())
        }
    }

    /// An output for the transfers `x` (the `-x` grammar) with one tunnel to a local listener.
    fn output_with(x: &str, backend: Box<dyn Sender>) -> ReplayOutput {
        use crate::addr_spec::{parse_transfers, resolve_transfers};
        use crate::cli::WireOptions;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            panic!("v4")
        };
        let poll = mio::Poll::new().unwrap();
        let wire = WireOptions {
            combined: true,
            payload: false,
        };
        let tunnels = Tunnels::connect_all(
            &[addr.into()],
            1,
            wire,
            poll.registry(),
            Duration::from_secs(3),
        )
        .unwrap();
        let transfers = resolve_transfers(&parse_transfers(x).unwrap()).unwrap();
        ReplayOutput::new(backend, &transfers, tunnels, false)
    }

    #[test]
    fn output_refuses_everything_but_targets() {
        let sent = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut out = output_with(
            "80-198.18.0.30:8080,81-198.18.0.31:8081",
            Box::new(Recorder(sent.clone())),
        );
        out.send_to_target(&datagram([198, 18, 0, 30], 8080), 0);
        // Wrong index hint, right target: sent with the matching transfer's index.
        out.send_to_target(&datagram([198, 18, 0, 31], 8081), 0);
        // Not a target: the online server, a target IP with the wrong port, junk.
        out.send_to_target(&datagram([198, 18, 0, 20], 80), 0);
        out.send_to_target(&datagram([198, 18, 0, 30], 8081), 0);
        out.send_to_target(&[0x45, 0, 0], 0);
        let sent = sent.borrow();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].0, 0);
        assert_eq!(sent[1].0, 1);
        assert_eq!(out.stats.sent, 2);
        assert_eq!(out.stats.refused_not_target, 3);
    }

    /// A backend that takes `room` datagrams, then is full until `room` is raised.
    struct Throttled {
        sent: SentLog,
        room: std::rc::Rc<std::cell::Cell<usize>>,
        calls: std::rc::Rc<std::cell::Cell<usize>>,
    }

    impl Sender for Throttled {
        fn send_batch(&mut self, batch: &[Outgoing<'_>]) -> std::io::Result<usize> {
            self.calls.set(self.calls.get() + 1);
            let n = batch.len().min(self.room.get());
            if n == 0 && !batch.is_empty() {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            self.room.set(self.room.get() - n);
            for d in &batch[..n] {
                self.sent.borrow_mut().push((d.transfer, d.bytes.to_vec()));
            }
            Ok(n)
        }
    }

    fn throttled_output(
        room: usize,
    ) -> (
        ReplayOutput,
        SentLog,
        std::rc::Rc<std::cell::Cell<usize>>,
        std::rc::Rc<std::cell::Cell<usize>>,
    ) {
        let sent: SentLog = Default::default();
        let room = std::rc::Rc::new(std::cell::Cell::new(room));
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let backend = Throttled {
            sent: sent.clone(),
            room: room.clone(),
            calls: calls.clone(),
        };
        let out = output_with("80-198.18.0.30:8080", Box::new(backend));
        (out, sent, room, calls)
    }

    /// Issue 15 point 9: what a full backend cannot take waits, in order, behind nothing
    /// newer, and goes out on retry; nothing is lost or counted as an error.
    #[test]
    fn a_full_backend_defers_in_order_and_retries() {
        let (mut out, sent, room, calls) = throttled_output(3);
        let mut d = |i: u8| {
            let mut d = datagram([198, 18, 0, 30], 8080);
            d[39] = i;
            d
        };
        let first: Vec<Vec<u8>> = (0..5).map(&mut d).collect();
        let batch: Vec<Outgoing<'_>> = first
            .iter()
            .map(|b| Outgoing {
                bytes: b,
                transfer: 0,
            })
            .collect();
        out.send_in_order(&batch);
        // One call for the three the backend took, one that found it full.
        assert_eq!(calls.get(), 2);
        assert_eq!(sent.borrow().len(), 3);
        assert_eq!(out.waiting(), 2);
        // Still full: a newer datagram queues behind the waiting ones.
        out.send_to_target(&d(5), 0);
        assert_eq!(out.waiting(), 3);
        room.set(100);
        out.retry();
        assert_eq!(out.waiting(), 0);
        let order: Vec<u8> = sent.borrow().iter().map(|(_, b)| b[39]).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(out.stats.sent, 6);
        assert_eq!(out.stats.send_errors, 0);
        assert_eq!(out.stats.deferred, 3);
        assert_eq!(out.stats.overflow, 0);
        assert!(out.stats.socket_full >= 1);
    }

    #[test]
    fn the_waiting_queue_is_bounded_and_overflow_counted() {
        let (mut out, _sent, _room, _calls) = throttled_output(0);
        let mut big = vec![0u8; 1500];
        big[..40].copy_from_slice(&datagram([198, 18, 0, 30], 8080));
        let n = MAX_WAITING_BYTES / 1500 + 100;
        for _ in 0..n {
            out.send_to_target(&big, 0);
        }
        assert_eq!(out.waiting(), MAX_WAITING_BYTES / 1500);
        assert_eq!(out.stats.overflow, 100);
        // Refusal of non-targets comes first, full or not.
        out.send_to_target(&datagram([198, 18, 0, 20], 80), 0);
        assert_eq!(out.stats.refused_not_target, 1);
        assert_eq!(out.stats.overflow, 100);
    }
}
