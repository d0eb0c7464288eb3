//! A simulated network for driving the sans-IO replay machine without sockets or sleeping:
//! a synthetic online capture (what tcpcopy would capture from an online client), a scripted
//! target TCP stack with a tiny request/response application, intercept's records fed back,
//! and a virtual clock.
//!
//! Application protocol (both the online server and the target run it): a request is a line
//! `REQ <resp_len> <filler...>\n`; the answer is `resp_len` bytes. With `greeting`, the server
//! first sends `greeting` bytes on accept.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tc_core::packet::{build_segment, flags, Completeness, SegmentSpec, TcpPacket};
use tc_core::session::{ReplayConfig, Replayer, Transfer};

/// The IPv4 address in `ip` (the simulation is IPv4).
pub fn v4(ip: std::net::IpAddr) -> Ipv4Addr {
    match ip {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(a) => panic!("IPv6 address {a} in an IPv4 simulation"),
    }
}

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const ONLINE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
pub const TARGET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 30);
pub const ONLINE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
pub const MSS: usize = 1448;

pub fn config() -> ReplayConfig {
    ReplayConfig {
        transfers: vec![Transfer {
            src_ip: None,
            src_port: ONLINE_PORT,
            dst_ip: TARGET.into(),
            dst_port: TARGET_PORT,
            src_mac: None,
            dst_mac: None,
        }],
        seed: 7,
        ..ReplayConfig::default()
    }
}

/// A request of the test protocol of `len` bytes asking for `resp` bytes; `tag` makes every
/// request's bytes distinct.
pub fn request(tag: usize, len: usize, resp: usize) -> Vec<u8> {
    let mut r = format!("REQ {resp} {tag} ").into_bytes();
    while r.len() + 1 < len {
        r.push(b'a' + (r.len() % 26) as u8);
    }
    r.push(b'\n');
    r
}

/// One captured client packet with its capture time offset.
#[derive(Clone)]
pub struct Captured {
    pub at: Duration,
    pub bytes: Vec<u8>,
}

/// Builds the inbound packets an online host captures for one client connection.
pub struct ClientConn {
    pub port: u16,
    pub isn: u32,
    pub server_isn: u32,
    pub greeting: usize,
    /// (request bytes, response length the online server sent)
    pub requests: Vec<(Vec<u8>, usize)>,
    pub with_syn: bool,
    pub with_fin: bool,
    /// The online server closed first: the client's FIN acknowledges the server's FIN too.
    pub server_closed_first: bool,
    pub timestamps: bool,
    pub rtt: Duration,
    /// Time between a response's end and the next request.
    pub think: Duration,
}

impl ClientConn {
    pub fn new(port: u16, requests: Vec<(Vec<u8>, usize)>) -> ClientConn {
        ClientConn {
            port,
            isn: 1_000_000u32.wrapping_mul(u32::from(port)),
            server_isn: 77_000,
            greeting: 0,
            requests,
            with_syn: true,
            with_fin: true,
            server_closed_first: false,
            timestamps: false,
            rtt: Duration::from_micros(300),
            think: Duration::from_millis(1),
        }
    }

    /// The exact byte stream the client sent (what the target application must receive).
    pub fn stream(&self) -> Vec<u8> {
        self.requests.iter().flat_map(|(r, _)| r.clone()).collect()
    }

    fn seg(&self, seq: u32, ack: u32, fl: u8, payload: &[u8], id: u16, ts: u32) -> Vec<u8> {
        let mut buf = vec![0u8; 1600];
        let spec = SegmentSpec {
            src: CLIENT.into(),
            dst: ONLINE.into(),
            src_port: self.port,
            dst_port: ONLINE_PORT,
            seq,
            ack,
            flags: fl,
            window: 502,
            ip_id: id,
            mss: if fl & flags::SYN != 0 {
                Some(1460)
            } else {
                None
            },
            timestamps: self.timestamps.then_some((ts, 5)),
            payload,
        };
        let n = build_segment(&spec, &mut buf).expect("segment fits");
        buf.truncate(n);
        buf
    }

    /// The captured packets, starting at `start`.
    pub fn capture(&self, start: Duration) -> Vec<Captured> {
        let mut out = Vec::new();
        let mut t = start;
        let mut id = 1u16;
        let mut ts = 1000u32;
        let mut seq = self.isn;
        let mut ack = self.server_isn.wrapping_add(1);
        let mut push = |t: Duration, bytes: Vec<u8>| out.push(Captured { at: t, bytes });
        if self.with_syn {
            push(t, self.seg(seq, 0, flags::SYN, &[], id, ts));
            t += self.rtt;
            id += 1;
            ts += 1;
            push(
                t,
                self.seg(seq.wrapping_add(1), ack, flags::ACK, &[], id, ts),
            );
        }
        seq = seq.wrapping_add(1);
        if self.greeting > 0 {
            t += self.rtt;
            ack = ack.wrapping_add(self.greeting as u32);
            push(t, self.seg(seq, ack, flags::ACK, &[], id, ts));
        }
        for (req, resp) in &self.requests {
            t += self.think;
            for chunk in req.chunks(MSS) {
                id = id.wrapping_add(1);
                ts += 1;
                push(
                    t,
                    self.seg(seq, ack, flags::ACK | flags::PSH, chunk, id, ts),
                );
                seq = seq.wrapping_add(chunk.len() as u32);
                t += Duration::from_micros(20);
            }
            // The online server's response: the client acknowledges it.
            t += self.rtt;
            ack = ack.wrapping_add(*resp as u32);
            id = id.wrapping_add(1);
            push(t, self.seg(seq, ack, flags::ACK, &[], id, ts));
        }
        if self.with_fin {
            t += self.think;
            id = id.wrapping_add(1);
            if self.server_closed_first {
                ack = ack.wrapping_add(1);
            }
            push(t, self.seg(seq, ack, flags::ACK | flags::FIN, &[], id, ts));
        }
        out
    }
}

/// The scripted target: a minimal TCP receiver and the test application.
#[derive(Default)]
pub struct TargetConn {
    pub isn: u32,
    pub rcv_nxt: u32,
    pub snd_nxt: u32,
    pub received: Vec<u8>,
    pending_line: Vec<u8>,
    pub fin_received: bool,
    pub fin_sent: bool,
    /// For every data or FIN segment received: (its ack, what the target had sent by then).
    /// Equal values mean tcpcopy had seen the whole response before sending on.
    pub data_acks: Vec<(u32, u32)>,
    pub reset: bool,
    /// Virtual time at which a RST arrived.
    pub reset_at: Option<Instant>,
    pub syns: usize,
    pub ts: bool,
    /// Virtual time at which each complete request was received.
    pub request_times: Vec<Instant>,
    /// Virtual time at which each response was fully sent.
    pub response_times: Vec<Instant>,
    pub established: bool,
}

/// The part of the simulation the replay machine's output reaches.
pub struct SimCore {
    pub now: Instant,
    pub conns: HashMap<(Ipv4Addr, u16), TargetConn>,
    pub old_conns: Vec<((Ipv4Addr, u16), TargetConn)>,
    /// Records on their way to tcpcopy, with the time they arrive.
    pub records: VecDeque<(Instant, Vec<u8>)>,
    /// Every `n`-th record (and all behind it) arrives this much later: intercept's path
    /// stalling for a moment (scheduling, batching) while the target streams on.
    pub record_stall: Option<(u64, Duration)>,
    records_made: u64,
    /// When the record path is free again (records keep their order).
    record_path_free: Option<Instant>,
    pub adds: Vec<(Ipv4Addr, u16, Ipv4Addr, u16)>,
    pub sent: Vec<Vec<u8>>,
    pub keep_sent: bool,
    pub loss_per_mille: u32,
    pub rng: u64,
    pub dropped: usize,
    pub greeting: usize,
    pub refuse: bool,
    pub close_after_response: bool,
    /// With `close_after_response`: intercept passes the target's FIN on again this much
    /// later (the target retransmitted it), possibly after the next connection on the same
    /// 4-tuple began.
    pub fin_again_after: Option<Duration>,
    /// Data on a connection the target already closed (FIN sent) is answered with a RST,
    /// as a closed socket does.
    pub reset_data_after_close: bool,
    /// The next this many data segments are answered with a RST instead of being taken.
    pub reset_data: usize,
    pub silent: bool,
    /// Source address of the target's answers as intercept sees them (another address
    /// than the one tcpcopy sends to behind a DNAT).
    pub reply_from: Ipv4Addr,
    pub accept_adds: bool,
    pub target_window: u16,
    pub resp_extra: isize,
    pub non_target_sends: usize,
    /// The target keeps every connection on its 4-tuple after it ended, as Linux keeps
    /// TIME_WAIT: a SYN there is taken only when the connection closed both ways and the
    /// SYN's sequence number lies past it; otherwise it is answered with that connection's
    /// ACK. A RST at exactly its next sequence number ends it (TIME_WAIT assassination).
    pub time_wait: bool,
    /// SYNs answered with an old connection's ACK.
    pub challenged_syns: usize,
    /// The next this many SYNs are lost on the way to the target.
    pub lose_syns: usize,
}

impl SimCore {
    pub fn new() -> SimCore {
        SimCore {
            now: Instant::now(),
            conns: HashMap::new(),
            old_conns: Vec::new(),
            records: VecDeque::new(),
            record_stall: None,
            records_made: 0,
            record_path_free: None,
            adds: Vec::new(),
            sent: Vec::new(),
            keep_sent: false,
            loss_per_mille: 0,
            rng: 0x1234_5678_9abc_def1,
            dropped: 0,
            greeting: 0,
            refuse: false,
            close_after_response: false,
            fin_again_after: None,
            reset_data_after_close: false,
            reset_data: 0,
            silent: false,
            reply_from: TARGET,
            accept_adds: true,
            target_window: 65535,
            resp_extra: 0,
            non_target_sends: 0,
            time_wait: false,
            challenged_syns: 0,
            lose_syns: 0,
        }
    }

    fn rand(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1000) as u32
    }

    /// A segment from the target to `key`, as intercept would report it: the first 64 bytes
    /// (IP + TCP headers, zero padded) with the IP total length of the whole segment. Returns
    /// the record's place in `records`.
    fn reply(
        &mut self,
        key: (Ipv4Addr, u16),
        seq: u32,
        ack: u32,
        fl: u8,
        payload_len: usize,
        ts: Option<(u32, u32)>,
    ) -> usize {
        let payload = vec![b'r'; payload_len];
        let mut buf = vec![0u8; 1600];
        let spec = SegmentSpec {
            src: self.reply_from.into(),
            dst: key.0.into(),
            src_port: TARGET_PORT,
            dst_port: key.1,
            seq,
            ack,
            flags: fl,
            window: self.target_window,
            ip_id: 0,
            mss: (fl & flags::SYN != 0).then_some(1460),
            timestamps: ts,
            payload: &payload,
        };
        let n = build_segment(&spec, &mut buf).expect("fits");
        let mut rec = vec![0u8; 64];
        let hdr = 20 + usize::from(buf[32] >> 4) * 4;
        rec[..hdr.min(64)].copy_from_slice(&buf[..hdr.min(64)]);
        let _ = n;
        self.records_made += 1;
        let mut at = self.now.max(self.record_path_free.unwrap_or(self.now));
        if let Some((every, stall)) = self.record_stall {
            if self.records_made.is_multiple_of(every) {
                at += stall;
            }
        }
        self.record_path_free = Some(at);
        // In time order (a late record, `fin_again_after`, may wait among them).
        let i = self.records.partition_point(|(t, _)| *t <= at);
        self.records.insert(i, (at, rec));
        i
    }

    fn on_datagram(&mut self, d: &[u8]) {
        let Ok(p) = TcpPacket::parse(d, Completeness::Whole) else {
            panic!("tcpcopy sent a malformed datagram");
        };
        assert!(
            p.checksums_valid(),
            "tcpcopy sent a datagram with a bad checksum"
        );
        if (p.dst_ip(), p.dst_port()) != (TARGET.into(), TARGET_PORT) {
            self.non_target_sends += 1;
            return;
        }
        if self.loss_per_mille > 0 && self.rand() < self.loss_per_mille {
            self.dropped += 1;
            return;
        }
        let key = (v4(p.src_ip()), p.src_port());
        let now = self.now;
        let ts_opt = p.options().timestamps;
        if p.rst() {
            // As Linux: a RST outside the receive window is dropped (a RST of another
            // connection's numbering on the same 4-tuple); TIME_WAIT takes only an exact one.
            let ignored = self.conns.get(&key).is_some_and(|c| {
                let off = p.seq().wrapping_sub(c.rcv_nxt);
                off >= 65535 || (self.time_wait && off != 0)
            });
            if ignored {
                return;
            }
            if let Some(c) = self.conns.get_mut(&key) {
                c.reset = true;
                c.reset_at = Some(now);
            }
            if let Some(c) = self.conns.remove(&key) {
                self.old_conns.push((key, c));
            }
            return;
        }
        if p.syn() {
            if self.silent {
                return;
            }
            if self.lose_syns > 0 {
                self.lose_syns -= 1;
                return;
            }
            if self.refuse {
                self.reply(
                    key,
                    0,
                    p.seq().wrapping_add(1),
                    flags::RST | flags::ACK,
                    0,
                    None,
                );
                return;
            }
            let existing = self
                .conns
                .get(&key)
                .map(|c| (c.isn, c.rcv_nxt, c.established));
            let isn = 5_000_000u32.wrapping_add(u32::from(key.1) * 7);
            match existing {
                Some((cisn, rcv, _)) if rcv == p.seq().wrapping_add(1) => {
                    // Retransmitted SYN: answer again.
                    let c = self.conns.get_mut(&key).expect("conn");
                    c.syns += 1;
                    let ts = c.ts.then_some((9000, ts_opt.map_or(0, |t| t.0)));
                    self.reply(key, cisn, rcv, flags::SYN | flags::ACK, 0, ts);
                    return;
                }
                Some(_) if self.time_wait => {
                    let c = &self.conns[&key];
                    let after = (p.seq().wrapping_sub(c.rcv_nxt) as i32) > 0;
                    if !(c.fin_sent && c.fin_received && after) {
                        self.challenged_syns += 1;
                        let (seq, ack) = (c.snd_nxt, c.rcv_nxt);
                        self.reply(key, seq, ack, flags::ACK, 0, None);
                        return;
                    }
                    let c = self.conns.remove(&key).expect("conn");
                    self.old_conns.push((key, c));
                }
                Some(_) => {
                    let c = self.conns.remove(&key).expect("conn");
                    self.old_conns.push((key, c));
                }
                None => {}
            }
            let c = TargetConn {
                isn,
                rcv_nxt: p.seq().wrapping_add(1),
                snd_nxt: isn.wrapping_add(1),
                syns: 1,
                ts: ts_opt.is_some(),
                ..TargetConn::default()
            };
            let ts = c.ts.then_some((9000, ts_opt.map_or(0, |t| t.0)));
            let rcv = c.rcv_nxt;
            self.conns.insert(key, c);
            self.reply(key, isn, rcv, flags::SYN | flags::ACK, 0, ts);
            return;
        }
        let greeting = self.greeting;
        let close_after = self.close_after_response;
        let extra = self.resp_extra;
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let ts = c.ts.then_some((9001, ts_opt.map_or(0, |t| t.0)));
        if !c.established {
            if p.ack_flag() && p.ack() == c.snd_nxt {
                c.established = true;
                if greeting > 0 {
                    let (seq, ack) = (c.snd_nxt, c.rcv_nxt);
                    c.snd_nxt = c.snd_nxt.wrapping_add(greeting as u32);
                    self.reply(key, seq, ack, flags::ACK | flags::PSH, greeting, ts);
                }
            } else {
                return;
            }
        }
        let c = self.conns.get_mut(&key).expect("conn");
        let payload = p.payload();
        if !payload.is_empty() || p.fin() {
            c.data_acks.push((p.ack(), c.snd_nxt));
        }
        let closed = c.fin_sent && self.reset_data_after_close;
        if !payload.is_empty() && (closed || self.reset_data > 0) {
            if !closed {
                self.reset_data -= 1;
            }
            let (seq, ack) = (c.snd_nxt, c.rcv_nxt);
            let c = self.conns.remove(&key).expect("conn");
            self.old_conns.push((key, c));
            self.reply(key, seq, ack, flags::RST | flags::ACK, 0, None);
            return;
        }
        let mut responses: Vec<usize> = Vec::new();
        if !payload.is_empty() || p.fin() {
            if p.seq() == c.rcv_nxt {
                c.received.extend_from_slice(payload);
                c.rcv_nxt = c.rcv_nxt.wrapping_add(payload.len() as u32);
                for &b in payload {
                    c.pending_line.push(b);
                    if b == b'\n' {
                        let line = String::from_utf8_lossy(&c.pending_line).to_string();
                        c.pending_line.clear();
                        c.request_times.push(now);
                        let n: isize = line
                            .split(' ')
                            .nth(1)
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        responses.push((n + extra).max(0) as usize);
                    }
                }
                if p.fin() {
                    c.fin_received = true;
                    c.rcv_nxt = c.rcv_nxt.wrapping_add(1);
                }
            }
            // In order or not: acknowledge what we have (a dup ACK for a hole).
            let (seq, ack) = (c.snd_nxt, c.rcv_nxt);
            let fin_now = c.fin_received && p.fin();
            let _ = fin_now;
            self.reply(key, seq, ack, flags::ACK, 0, ts);
        }
        for len in responses {
            let mut left = len;
            while left > 0 {
                let n = left.min(MSS);
                let c = self.conns.get_mut(&key).expect("conn");
                let (seq, ack) = (c.snd_nxt, c.rcv_nxt);
                c.snd_nxt = c.snd_nxt.wrapping_add(n as u32);
                left -= n;
                self.reply(key, seq, ack, flags::ACK | flags::PSH, n, ts);
            }
            let c = self.conns.get_mut(&key).expect("conn");
            c.response_times.push(now);
            if close_after && !c.fin_sent {
                let (seq, ack) = (c.snd_nxt, c.rcv_nxt);
                c.snd_nxt = c.snd_nxt.wrapping_add(1);
                c.fin_sent = true;
                let i = self.reply(key, seq, ack, flags::ACK | flags::FIN, 0, ts);
                if let Some(later) = self.fin_again_after {
                    let (at, rec) = self.records[i].clone();
                    let at = at + later;
                    let i = self.records.partition_point(|(t, _)| *t <= at);
                    self.records.insert(i, (at, rec));
                }
            }
        }
        let c = self.conns.get_mut(&key).expect("conn");
        if p.fin() && c.fin_received && !close_after {
            // Passive close: FIN back.
            let (seq, ack) = (c.snd_nxt, c.rcv_nxt);
            c.snd_nxt = c.snd_nxt.wrapping_add(1);
            self.reply(key, seq, ack, flags::ACK | flags::FIN, 0, ts);
        }
    }
}

impl Default for SimCore {
    fn default() -> Self {
        SimCore::new()
    }
}

impl SimCore {
    /// A datagram tcpcopy sent reaches the simulated target (for drivers that send through
    /// their own backend instead of [`SimCore::drain`]).
    pub fn on_sent(&mut self, datagram: &[u8]) {
        self.on_datagram(datagram);
    }

    /// Takes what the machine queued, as tcpcopy's event loop does after each batch of input:
    /// announcements, then datagrams to the simulated target; then tells it whether
    /// intercepts take sessions.
    pub fn drain(&mut self, replayer: &mut Replayer) {
        let out = replayer.output();
        for a in out.client_adds() {
            self.adds.push((
                v4(a.client_ip),
                a.client_port,
                v4(a.target_ip),
                a.target_port,
            ));
        }
        for d in out.datagrams() {
            if self.keep_sent {
                self.sent.push(d.bytes.to_vec());
            }
            self.on_datagram(d.bytes);
        }
        replayer.clear_output();
        replayer.set_intercepts_available(self.accept_adds);
    }
}

/// Runs a capture through the machine and the simulated target until everything settled or
/// `limit` of virtual time passed. Returns the virtual time used.
pub fn run(
    replayer: &mut Replayer,
    core: &mut SimCore,
    mut capture: Vec<Captured>,
    limit: Duration,
) -> Duration {
    capture.sort_by_key(|c| c.at);
    let t0 = core.now;
    let mut next = 0;
    let mut steps = 0u64;
    loop {
        steps += 1;
        assert!(steps < 50_000_000, "simulation did not settle");
        if steps.is_multiple_of(64) {
            check_unsent(replayer);
        }
        // Intercept's records reach tcpcopy (about 100 us after the target sent them).
        while core.records.front().is_some_and(|(at, _)| *at <= core.now) {
            let (_, rec) = core.records.pop_front().expect("front");
            let now = core.now;
            replayer.on_response(now, &rec);
            core.drain(replayer);
        }
        let cap_due = capture.get(next).map(|c| t0 + c.at);
        let timer_due = replayer.next_deadline();
        let record_due = core.records.front().map(|(at, _)| *at);
        let Some(due) = [cap_due, timer_due, record_due].into_iter().flatten().min() else {
            break;
        };
        if due > t0 + limit {
            break;
        }
        if due > core.now {
            core.now = due;
        }
        if record_due.is_some_and(|r| r <= core.now) {
            continue;
        }
        if cap_due.is_some_and(|c| c <= core.now) {
            let now = core.now;
            let bytes = std::mem::take(&mut capture[next].bytes);
            next += 1;
            replayer.on_client_packet(now, &bytes);
            core.drain(replayer);
        } else {
            let now = core.now;
            replayer.on_timer(now);
            core.drain(replayer);
            // No timer stays due after firing: a due one would spin the event loop.
            assert!(
                replayer.next_deadline().is_none_or(|d| d > now),
                "a timer is still due right after on_timer"
            );
        }
        if next >= capture.len() && replayer.live_sessions() == 0 && core.records.is_empty() {
            break;
        }
    }
    check_unsent(replayer);
    core.now.saturating_duration_since(t0)
}

/// The running count of unsent packets' memory (what bounds an offline read-ahead) against a
/// recount (every 64 steps of [`run`] and at its end: a recount walks every queued segment,
/// and a missed update stays visible).
fn check_unsent(replayer: &Replayer) {
    assert_eq!(
        replayer.unsent_bytes(),
        replayer.unsent_bytes_recounted(),
        "unsent bytes drifted"
    );
}

/// Every byte stream the target application received from `key`, across reconnections.
pub fn received(core: &SimCore, key: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, c) in &core.old_conns {
        if *k == key {
            out.extend_from_slice(&c.received);
        }
    }
    if let Some(c) = core.conns.get(&key) {
        out.extend_from_slice(&c.received);
    }
    out
}
