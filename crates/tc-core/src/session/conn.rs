//! One replayed connection: the per-session machine of spec section 4, written from the
//! behaviour rather than the original's state integer.
//!
//! Sequence numbers towards the target are the online client's own (never translated); only
//! the ack field is: every packet to the target acknowledges `tgt_ack`, the next byte the
//! target will send, learned from intercept's response records.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::endpoints::MoveId;
use super::fidelity::{Fidelity, Outcome};
use super::outbox::{ClientAdd, Outbox};
use super::timer::{Timer, TimerTable};
use super::{DropKind, Drops, ReplayConfig, ReplayStats};
use crate::packet::{build_segment, flags, Completeness, Layout, Segment, SegmentSpec, TcpPacket};

mod login;
use login::LoginStep;

/// Wrap-around aware sequence comparisons.
#[inline]
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}
#[inline]
pub fn seq_le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}
#[inline]
pub fn seq_gt(a: u32, b: u32) -> bool {
    seq_lt(b, a)
}

/// First check of an unfinished handshake, and the period of the session check (spec 4.19).
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(3);
const GC_PERIOD: Duration = Duration::from_secs(3);
/// How long a finished session lingers to absorb late packets (spec: 6 s).
const LINGER: Duration = Duration::from_secs(6);
/// SYN retransmission to a silent target (the original has none).
const SYN_RETRY: Duration = Duration::from_secs(1);
/// A handshake is given up this long after the first SYN (the original deletes the session
/// after 3 s, having sent one SYN). Three lost SYNs in a row are rare but happen on a lossy
/// path, and a session lost at its handshake loses every request it carries; a client's
/// kernel retries for two minutes.
const SYN_GIVE_UP: Duration = Duration::from_secs(6);
/// A missing captured segment is waited for this long, then skipped (the original stalls
/// until the session timeout, 600 s by default).
pub const GAP_WAIT: Duration = Duration::from_secs(2);
/// A held request waits at most this long for a response that never comes.
const NO_RESPONSE_CAP: Duration = Duration::from_secs(3);
/// Least quiet time that ends a response of unexpected length (see `Session::quiet`).
const RESPONSE_QUIET: Duration = Duration::from_millis(20);
/// The same after a full-sized segment: more of the response is probably on its way.
const RESPONSE_QUIET_STREAMING: Duration = Duration::from_millis(100);
/// Segments at least this long (and as long as the longest seen mid-response) count as full-sized.
const MIN_FULL_SEGMENT: u32 = 536;
/// Reconnections after target resets with no data acknowledged in between.
const MAX_RECON_TRIES: u8 = 3;
const MIN_RTO: Duration = Duration::from_millis(200);
const MAX_RTO: Duration = Duration::from_secs(5);

/// What a [`Stored`] segment costs besides its bytes: the record in its queue and the
/// allocator's header of its buffer (about 100 bytes: a short request costs twice its size).
/// Counted in [`Ctx::unsent`].
pub const STORED_OVERHEAD: usize = std::mem::size_of::<Stored>() + 16;

/// A captured client segment kept for sending and retransmission (the datagram already
/// rewritten to the fake client endpoint and the target).
pub struct Stored {
    pub seq: u32,
    /// seq + payload + FIN.
    pub end: u32,
    /// The online ack field (the online server's sequence space).
    pub online_ack: u32,
    pub flags: u8,
    pub payload: usize,
    /// Where the parts of `data` are (validated once, when it was captured).
    pub layout: Layout,
    /// Offset of the timestamps option from the TCP header, if it has one.
    pub ts_offset: Option<usize>,
    /// When it was captured (for the replay lag).
    pub captured_at: Instant,
    /// Not sent yet (its first sending counts in the fidelity figures).
    pub fresh: bool,
    pub data: Vec<u8>,
}

impl Stored {
    fn packet(&mut self) -> Option<TcpPacket<&mut [u8]>> {
        TcpPacket::from_layout(&mut self.data[..], self.layout)
    }

    /// Drops the first `n` payload bytes (the target has them already). Returns how many
    /// bytes the buffer shrank by.
    fn trim_front(&mut self, n: usize) -> usize {
        let Some(mut p) = self.packet() else {
            return 0;
        };
        if n == 0 || !p.trim_front(n) {
            return 0;
        }
        let len = p.as_bytes().len();
        let removed = self.data.len() - len;
        self.data.truncate(len);
        self.layout.payload_len -= n as u16;
        self.seq = self.seq.wrapping_add(n as u32);
        self.payload -= n;
        removed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No handshake with the target (yet, or again after a reset).
    Closed,
    SynSent,
    Established,
    /// Finished; lingering until its linger timer ends.
    Over,
}

/// Everything a session method needs from its owner.
pub struct Ctx<'a> {
    pub cfg: &'a ReplayConfig,
    pub stats: &'a mut ReplayStats,
    pub drops: &'a mut Drops,
    /// What the session wants sent, pulled by the driver afterwards.
    pub out: &'a mut Outbox,
    /// An input: whether any intercept can take announcements now.
    pub intercepts_available: bool,
    pub fidelity: &'a mut Fidelity,
    pub scratch: &'a mut [u8],
    pub pool: &'a mut Vec<Vec<u8>>,
    /// Memory the client segments not sent yet take, in every session's send queue: their
    /// bytes and [`STORED_OVERHEAD`] each. An offline replay reads the file at most so far
    /// ahead of what was sent; segments sent and not yet acknowledged are not counted (the
    /// target's windows bound them, and counting them would cap bytes in flight).
    pub unsent: &'a mut usize,
    /// Database logins of all sessions (`--auth-file`, `--protocol`).
    pub auth: &'a mut crate::auth::AuthReport,
}

impl Ctx<'_> {
    pub fn take_buf(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut v = self.pool.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(bytes);
        v
    }
    pub fn recycle(&mut self, v: Vec<u8>) {
        if self.pool.len() < 8192 && v.capacity() <= 4096 {
            self.pool.push(v);
        }
    }
}

/// See [`Session::time_wait_floor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWaitFloor {
    pub end: u32,
    pub ts: Option<u32>,
}

impl TimeWaitFloor {
    /// Whether a Linux target holding the old connection in TIME_WAIT accepts a SYN with
    /// `isn` (and timestamp `ts`) as a new connection: no older timestamp (PAWS), and a
    /// sequence number past the old connection's end or a newer timestamp.
    pub fn accepts(&self, isn: u32, ts: Option<u32>) -> bool {
        let newer_ts = match (self.ts, ts) {
            (Some(old), Some(new)) => Some(new.wrapping_sub(old) as i32),
            _ => None,
        };
        newer_ts.is_none_or(|d| d >= 0)
            && (seq_gt(isn, self.end) || newer_ts.is_some_and(|d| d > 0))
    }
}

pub struct Session {
    pub client: (IpAddr, u16),
    /// The real client (address and port as captured, before `-c`, `-f` and `-n`): one
    /// fake endpoint may carry the connections of several.
    pub origin: (IpAddr, u16),
    pub target: (IpAddr, u16),
    pub transfer: usize,
    pub created: Instant,
    /// When the current handshake started (creation, or a reconstruction).
    syn_sent_at: Instant,
    /// When a RST last freed the 4-tuple from an older connection the target still held
    /// (see [`Session::on_response`]): at most one per [`SYN_RETRY`].
    stale_reset_at: Option<Instant>,
    pub phase: Phase,
    /// The handshake was invented (no SYN captured, or reconstruction).
    fake: bool,
    /// Our SYN's sequence number.
    pub isn: u32,
    /// Next client sequence to send (end of what was sent).
    snd_nxt: u32,
    /// Highest ack from the target.
    snd_una: u32,
    /// Next target byte expected (what every packet to the target acknowledges).
    tgt_ack: u32,
    /// The target's ISN (its SYN-ACK's sequence number).
    tgt_isn: u32,
    peer_win: u32,
    wscale: u8,
    ts_on: bool,
    ts_val: u32,
    ts_ecr: u32,
    /// Window field to put into our own ACKs.
    client_win: u16,
    ip_id: u16,
    syn_had_ts: bool,
    syn_pkt: Option<Vec<u8>>,
    /// TCP Fast Open: the client's first bytes that rode in its SYN, as the data segment they
    /// become once the client's first ACK shows what it acknowledged (see `start_with_syn`).
    tfo_data: Option<(Segment, Vec<u8>)>,
    pending: VecDeque<Stored>,
    unacked: VecDeque<Stored>,
    pub buffered: usize,
    /// Online ack of the current request (start of the online server's current response).
    cur_req_ack: Option<u32>,
    /// Target payload bytes since the current request went out.
    resp_bytes: u64,
    holding_since: Option<Instant>,
    last_resp_at: Option<Instant>,
    /// The hold deadline passed: the held request goes out without further waiting.
    hold_expired: bool,
    /// Longest response segment seen that more of the same response followed (the target's
    /// segment size, as far as seen), the last segment's length, and whether it was that long.
    max_resp_seg: u32,
    last_resp_seg: u32,
    last_resp_full: bool,
    rtt: Duration,
    syn_captured_at: Option<Instant>,
    rto: Duration,
    unacked_resp_segs: u32,
    timers: TimerTable,
    last_target_at: Instant,
    sent_request: bool,
    /// End of the highest captured client segment (sent or not).
    seen_end: u32,
    /// Where the captured client FIN ends (its sequence + 1), in the captured numbering:
    /// nothing of this connection lies beyond it but the client's last ACK.
    client_fin_end: Option<u32>,
    client_fin_sent: bool,
    target_fin: bool,
    dup_acks: u8,
    /// Reconnections after a target reset without progress since (bounded: a request that
    /// makes the target reset every time is not replayed forever).
    recon_tries: u8,
    /// The deadline of this session's live entry in the replayer's timer heap.
    pub scheduled: Option<Instant>,
    /// The connection was moved to this port (see `endpoints::MovedPorts`).
    pub moved_from: Option<MoveId>,
    /// For the fidelity report: a handshake with the target completed at least once; the
    /// target reset the connection since; the session check removed it.
    established_once: bool,
    reset_by_target: bool,
    timed_out: bool,
    /// Online ack of the last captured / sent request data (a new value = a new request).
    last_captured_req: Option<u32>,
    /// End of the client payload captured so far (retransmissions add nothing).
    captured_end: Option<u32>,
    last_sent_req: Option<u32>,
    /// The target already answered the last request sent.
    answered: bool,
    /// The database login being followed (`login.rs`); `None` once it is over.
    login: Option<Box<crate::auth::Login>>,
    /// Added to captured sequence numbers: a rewritten login answer changed the length.
    seq_shift: u32,
}

impl Session {
    pub fn new(
        now: Instant,
        client: (IpAddr, u16),
        target: (IpAddr, u16),
        transfer: usize,
        cfg: &ReplayConfig,
    ) -> Session {
        let mut timers = TimerTable::default();
        timers.set(Timer::Check, now + HANDSHAKE_DEADLINE);
        Session {
            client,
            origin: client,
            target,
            transfer,
            created: now,
            syn_sent_at: now,
            stale_reset_at: None,
            phase: Phase::Closed,
            fake: false,
            isn: 0,
            snd_nxt: 0,
            snd_una: 0,
            tgt_ack: 0,
            tgt_isn: 0,
            peer_win: 65535,
            wscale: 0,
            ts_on: false,
            ts_val: 0,
            ts_ecr: 0,
            client_win: 65535,
            ip_id: 0,
            syn_had_ts: false,
            syn_pkt: None,
            tfo_data: None,
            pending: VecDeque::new(),
            unacked: VecDeque::new(),
            buffered: 0,
            cur_req_ack: None,
            resp_bytes: 0,
            holding_since: None,
            last_resp_at: None,
            hold_expired: false,
            max_resp_seg: 0,
            last_resp_seg: 0,
            last_resp_full: false,
            rtt: cfg.fixed_rtt.unwrap_or(Duration::from_millis(1)),
            syn_captured_at: None,
            rto: MIN_RTO,
            unacked_resp_segs: 0,
            timers,
            last_target_at: now,
            sent_request: false,
            seen_end: 0,
            client_fin_end: None,
            client_fin_sent: false,
            target_fin: false,
            dup_acks: 0,
            recon_tries: 0,
            scheduled: None,
            moved_from: None,
            established_once: false,
            reset_by_target: false,
            timed_out: false,
            last_captured_req: None,
            captured_end: None,
            last_sent_req: None,
            answered: false,
            login: Session::new_login(cfg),
            seq_shift: 0,
        }
    }

    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    /// How this session ended (or stands, when the run ends with it live).
    pub fn outcome(&self) -> Outcome {
        if !self.established_once {
            Outcome::NeverEstablished
        } else if self.timed_out {
            Outcome::TimedOut
        } else if self.reset_by_target {
            Outcome::TargetReset
        } else if self.phase != Phase::Over {
            Outcome::StillActive
        } else {
            Outcome::Completed
        }
    }

    /// The client already closed (a new SYN on this key is then a new connection).
    pub fn client_closed(&self) -> bool {
        self.client_fin_sent
            || self
                .pending
                .iter()
                .any(|p| p.flags & (flags::FIN | flags::RST) != 0)
    }

    /// Whether a pure client ACK still carries information (RTT sample, the online server's
    /// initial sequence for response lengths).
    pub fn wants_pure_ack(&self) -> bool {
        self.syn_captured_at.is_some() || self.cur_req_ack.is_none() || self.tfo_data.is_some()
    }

    /// What a later connection on this endpoint must lie beyond for the target to accept its
    /// SYN while it holds this one in TIME_WAIT: the end of this connection's client bytes
    /// (its FIN included, in the captured numbering) and its latest timestamp.
    pub fn time_wait_floor(&self) -> TimeWaitFloor {
        TimeWaitFloor {
            end: self
                .client_fin_end
                .unwrap_or_else(|| self.seen_end.wrapping_sub(self.seq_shift)),
            ts: self.syn_had_ts.then_some(self.ts_val),
        }
    }

    /// Whether a captured segment at `seq` (in the captured numbering) belongs to another
    /// connection on this key: it lies outside what this connection's byte numbering can
    /// reach: its ISN up to its captured FIN (the client's last ACK sits at the FIN's end),
    /// or, before a FIN, up to 64 KiB past the end of what was captured. Linux advances the
    /// ISN of a reused 4-tuple with time (about 16 per microsecond), so a connection that
    /// reuses a client port right after a short one starts past the old FIN but well
    /// within 64 KiB of it.
    pub fn is_other_connection(&self, seq: u32) -> bool {
        let limit = self.client_fin_end.unwrap_or_else(|| {
            self.seen_end
                .wrapping_sub(self.seq_shift)
                .wrapping_add(65536)
        });
        !(seq_gt(seq, self.isn) && seq_le(seq, limit))
    }

    /// Earliest deadline of this session: its timers and the end of the wait for a
    /// response (derived from when the wait began and when response data last came).
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.timers.next(), self.hold_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How long response data must have stopped before a response whose length does not
    /// match the online one counts as complete. Response records reach tcpcopy in bursts
    /// (intercept's capture and batching, scheduling on busy hosts): a gap of a few ms while
    /// the target is still streaming is common, so the online RTT alone is far too short;
    /// after a full-sized segment (the target is streaming) the wait is longer still.
    fn quiet(&self) -> Duration {
        let least = if self.last_resp_full {
            RESPONSE_QUIET_STREAMING
        } else {
            RESPONSE_QUIET
        };
        (self.rtt * 2).clamp(least, Duration::from_secs(1))
    }

    fn hold_deadline(&self) -> Option<Instant> {
        let since = self.holding_since?;
        Some(match self.last_resp_at {
            // Data is flowing: wait until it stops, however long the response takes.
            Some(t) => t + self.quiet(),
            // Nothing yet: a bounded wait for a response that may never come.
            None => since + NO_RESPONSE_CAP.max(self.rtt * 10),
        })
    }

    // ----- client side -------------------------------------------------------------------

    /// A captured SYN starts the session. Returns false when no intercept can take it.
    pub fn start_with_syn(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        seg: &Segment,
        datagram: &[u8],
    ) -> bool {
        self.isn = seg.seq;
        self.seen_end = seg.seq.wrapping_add(1);
        self.ip_id = seg.ip_id;
        self.client_win = seg.window;
        self.syn_had_ts = seg.options.timestamps.is_some();
        if let Some((val, _)) = seg.options.timestamps {
            self.ts_val = val;
        }
        if !self.announce(ctx) {
            return false;
        }
        self.syn_captured_at = Some(now);
        let buf = if seg.payload_len() > 0 {
            self.split_fast_open(ctx, seg, datagram)
        } else {
            ctx.take_buf(datagram)
        };
        self.syn_pkt = Some(buf);
        self.send_syn(ctx, now);
        true
    }

    /// TCP Fast Open (RFC 7413): the client's first bytes rode in its SYN with a cookie of
    /// the online server's, which the target does not know: it would take the SYN alone, and
    /// the bytes would be missing from the replay. The SYN goes without them (its options,
    /// window scale among them, unchanged); the bytes become the first data segment, queued
    /// when the client's first ACK is captured. Returns the SYN to send.
    fn split_fast_open(&mut self, ctx: &mut Ctx, seg: &Segment, datagram: &[u8]) -> Vec<u8> {
        let mut data = *seg;
        data.seq = seg.seq.wrapping_add(1);
        data.flags = (seg.flags & !flags::SYN) | flags::ACK | flags::PSH;
        self.tfo_data = Some((data, ctx.take_buf(datagram)));
        let head = seg.layout.headers_len();
        let mut syn = ctx.take_buf(&datagram[..head]);
        if seg.layout.v6 {
            syn[4..6].copy_from_slice(&((head - 40) as u16).to_be_bytes());
        } else {
            syn[2..4].copy_from_slice(&(head as u16).to_be_bytes());
        }
        if let Ok(mut p) = TcpPacket::parse(&mut syn[..], Completeness::Whole) {
            p.fill_checksums();
        }
        syn
    }

    /// Queues the CLIENT_ADD of this session. False when no intercept can take it now.
    fn announce(&mut self, ctx: &mut Ctx) -> bool {
        if ctx.cfg.single {
            // intercept --single forwards every response to its one tcpcopy.
            return true;
        }
        if !ctx.intercepts_available {
            return false;
        }
        ctx.out.announce(ClientAdd {
            client_ip: self.client.0,
            client_port: self.client.1,
            target_ip: self.target.0,
            target_port: self.target.1,
        });
        true
    }

    fn send_syn(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.phase != Phase::SynSent {
            self.syn_sent_at = now;
        }
        self.phase = Phase::SynSent;
        self.snd_nxt = self.isn.wrapping_add(1);
        self.snd_una = self.isn;
        ctx.stats.send_syn += 1;
        ctx.stats.send += 1;
        if let Some(syn) = self.syn_pkt.as_deref() {
            ctx.out.send(syn, self.transfer);
        } else {
            let spec = SegmentSpec {
                src: self.client.0,
                dst: self.target.0,
                src_port: self.client.1,
                dst_port: self.target.1,
                seq: self.isn,
                ack: 0,
                flags: flags::SYN,
                window: 65535,
                ip_id: self.ip_id.wrapping_sub(2),
                mss: Some(ctx.cfg.fake_syn_mss),
                timestamps: None,
                payload: &[],
            };
            if let Ok(n) = build_segment(&spec, ctx.scratch) {
                ctx.out.send(&ctx.scratch[..n], self.transfer);
            }
        }
        self.timers.arm(Timer::SynRetry, now + SYN_RETRY);
    }

    /// Invents a handshake for a session whose SYN was not captured (or after a reset): the
    /// ISN is one before the first unsent byte. Returns false when no intercept took it.
    fn fake_handshake(&mut self, ctx: &mut Ctx, now: Instant) -> bool {
        let Some(first) = self.pending.front() else {
            return false;
        };
        self.isn = first.seq.wrapping_sub(1);
        self.cur_req_ack = Some(first.online_ack);
        if !self.announce(ctx) {
            return false;
        }
        self.fake = true;
        self.syn_pkt = None;
        self.ts_on = false;
        self.wscale = 0;
        self.syn_had_ts = false;
        self.rtt = self.rtt.max(Duration::from_millis(1));
        self.resp_bytes = 0;
        self.holding_since = None;
        self.last_resp_at = None;
        self.timers.stop(Timer::SynRetry);
        self.send_syn(ctx, now);
        true
    }

    /// The first captured packet of a session whose SYN was not seen (mid-stream pickup).
    pub fn start_fake(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        seg: &Segment,
        datagram: &[u8],
    ) -> bool {
        self.count_captured(ctx.fidelity, seg);
        self.enqueue(ctx, now, seg, datagram);
        if self.pending.is_empty() {
            return false;
        }
        ctx.stats.for_no_syn += 1;
        self.fake_handshake(ctx, now)
    }

    /// A captured non-SYN client packet of this session.
    pub fn on_client(&mut self, ctx: &mut Ctx, now: Instant, seg: &Segment, datagram: &[u8]) {
        if seg.ack_flag() {
            if let Some((mut data, mut bytes)) = self.tfo_data.take() {
                // The bytes of a Fast Open SYN, before the client's first ACK.
                data.ack = seg.ack;
                if let Some(mut p) = TcpPacket::from_layout(&mut bytes[..], data.layout) {
                    p.set_seq(data.seq);
                    p.set_ack(data.ack);
                    p.set_flags(data.flags);
                }
                self.on_client(ctx, now, &data, &bytes);
                ctx.recycle(bytes);
            }
        }
        let other = self.is_other_connection(seg.seq);
        if (seg.fin() || seg.rst()) && !other {
            let end = seg.end();
            if self.client_fin_end.is_none_or(|e| seq_gt(e, end)) {
                self.client_fin_end = Some(end);
            }
        }
        let shifted;
        let seg = if self.seq_shift != 0 {
            shifted = self.shifted(seg);
            &shifted
        } else {
            seg
        };
        let end = seg.end();
        if seq_gt(end, self.seen_end) && !other {
            self.seen_end = end;
        }
        if let (Some(t0), None) = (self.syn_captured_at, ctx.cfg.fixed_rtt) {
            // The handshake ACK (or the first data) ends the RTT measurement of spec 4.12.
            self.rtt = now
                .saturating_duration_since(t0)
                .max(Duration::from_micros(50));
            self.syn_captured_at = None;
        }
        if seg.ack_flag() {
            self.client_win = seg.window;
            if self.cur_req_ack.is_none() {
                self.cur_req_ack = Some(seg.ack);
            }
        }
        if seg.payload_len() == 0 && !seg.fin() && !seg.rst() {
            // Pure ACKs are absorbed: tcpcopy makes its own (spec 3.1-9).
            ctx.drops.count(DropKind::PureAck);
            return;
        }
        self.count_captured(ctx.fidelity, seg);
        if self.phase == Phase::Over {
            ctx.drops.count(DropKind::SessionOver);
            return;
        }
        self.enqueue(ctx, now, seg, datagram);
        if self.phase == Phase::Established
            && self.target_fin
            && self.pending.iter().any(|q| q.payload > 0)
        {
            // A request after the target closed: deliver it on a new connection (spec 4.18).
            self.reconnect_or_finish(ctx, now, true);
            return;
        }
        if self.phase == Phase::Closed
            && !self.timers.is_armed(Timer::Reconnect)
            && !self.pending.is_empty()
        {
            if !self.fake_handshake(ctx, now) {
                ctx.drops.count(DropKind::NoIntercept);
            }
            return;
        }
        self.pump(ctx, now);
    }

    /// Inserts a captured segment into the pending list, ordered by sequence number.
    fn enqueue(&mut self, ctx: &mut Ctx, now: Instant, seg: &Segment, datagram: &[u8]) {
        let seq = seg.seq;
        let end = seg.end();
        if self.pending.is_empty() && self.seen_end == 0 || seq_gt(end, self.seen_end) {
            self.seen_end = end;
        }
        let has_len = end != seq;
        if has_len && self.phase != Phase::Closed && seq_le(end, self.snd_nxt) {
            // Entirely sent already: a client retransmission.
            ctx.stats.clt_retransmit += 1;
            ctx.drops.count(DropKind::ClientRetransmit);
            return;
        }
        // The usual case: a segment after every pending one (the queue is ordered by
        // sequence number), which none of them duplicates; the scans below are for the rest
        // (they cost a pass over a queue of thousands when the replay lags).
        let in_order = self.pending.back().is_none_or(|q| seq_lt(q.seq, seq));
        // Duplicates of a pending segment.
        if !in_order
            && self
                .pending
                .iter()
                .any(|q| q.seq == seq && q.end == end && q.flags == seg.flags)
        {
            ctx.stats.clt_retransmit += 1;
            ctx.drops.count(DropKind::ClientRetransmit);
            return;
        }
        if self.buffered + datagram.len() > ctx.cfg.max_session_bytes {
            ctx.drops.count(DropKind::SessionTooBig);
            return;
        }
        let mut stored = Stored {
            seq,
            end,
            online_ack: seg.ack,
            flags: seg.flags,
            payload: seg.payload_len(),
            layout: seg.layout,
            ts_offset: seg.options.timestamps_offset,
            captured_at: now,
            fresh: true,
            data: ctx.take_buf(datagram),
        };
        if self.seq_shift != 0 {
            login::set_stored_seq(&mut stored);
        }
        self.buffered += stored.data.len();
        *ctx.unsent += stored.data.len() + STORED_OVERHEAD;
        self.ip_id = seg.ip_id;
        if in_order {
            self.pending.push_back(stored);
            return;
        }
        // Insert after every pending segment that does not start after it.
        let at = self
            .pending
            .iter()
            .rposition(|q| seq_le(q.seq, seq))
            .map_or(0, |i| i + 1);
        self.pending.insert(at, stored);
    }

    /// Whether the response to the current request is complete enough to send `next_ack`'s
    /// request: by length (the online server sent `next_ack - cur_req_ack` bytes; once the
    /// target sent as many the response is complete) or, as a fallback, by a quiet period.
    ///
    /// The client's FIN is stricter: a target response longer than the online one may still
    /// be streaming, and a FIN in the middle of a response makes servers abort it, so only
    /// an exact length match lets it go before the quiet period.
    fn response_complete(&self, now: Instant, next_ack: u32, fin_only: bool) -> bool {
        let Some(cur) = self.cur_req_ack else {
            return true;
        };
        if next_ack == cur || self.target_fin {
            // The online client did not wait for (more of) a response either; or the target
            // closed: nothing more of the response can come (its FIN also takes one of the
            // online sequence numbers the length is counted in, so lengths never match).
            return true;
        }
        let expected = if seq_gt(next_ack, cur) {
            u64::from(next_ack.wrapping_sub(cur))
        } else {
            0
        };
        let by_length = if fin_only {
            self.resp_bytes == expected
        } else {
            self.resp_bytes >= expected
        };
        if by_length || self.hold_expired {
            return true;
        }
        self.hold_deadline().is_some_and(|d| now >= d)
    }

    /// Whether a client RST acknowledging `ack` (`None`: a bare RST, which a closed socket
    /// sends when an answer reaches it) may go: when the online client acknowledged nothing
    /// of the current request's answer, once the target answered something (or closed), or
    /// after the bounded wait for an answer that does not come.
    fn rst_may_go(&self, now: Instant, ack: Option<u32>) -> bool {
        let acked_answer =
            self.cur_req_ack.is_none() || ack.is_some_and(|a| self.cur_req_ack != Some(a));
        acked_answer
            || self.resp_bytes > 0
            || self.target_fin
            || self.hold_expired
            || self.hold_deadline().is_some_and(|d| now >= d)
    }

    /// Sends every pending segment that may go now (spec 4.5-4.6, 4.11).
    pub fn pump(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.phase != Phase::Established {
            return;
        }
        while let Some(front) = self.pending.front() {
            let (seq, end, flags_, payload, ack) = (
                front.seq,
                front.end,
                front.flags,
                front.payload,
                front.online_ack,
            );
            let is_rst = flags_ & flags::RST != 0;
            let is_fin = flags_ & flags::FIN != 0;
            if end != seq && seq_le(end, self.snd_nxt) {
                let q = self.pop_pending(ctx.unsent);
                ctx.recycle(q.data);
                ctx.stats.clt_retransmit += 1;
                ctx.drops.count(DropKind::ClientRetransmit);
                continue;
            }
            if !is_rst && seq_gt(seq, self.snd_nxt) {
                // A captured segment is missing: wait a bounded time for it.
                self.timers.arm(Timer::CaptureGap, now + GAP_WAIT);
                break;
            }
            self.timers.stop(Timer::CaptureGap);
            if is_rst {
                // Spec 4.6-3: a client RST is held while a response is expected, also with
                // -W (which only lets requests go without waiting, 4.11), and also when the
                // online client reset without waiting for one: the online server had
                // answered before the RST reached it, and a RST right behind the request
                // makes the target drop its answer.
                let ready = if flags_ & flags::ACK != 0 {
                    self.response_complete(now, ack, true) && self.rst_may_go(now, Some(ack))
                } else {
                    self.rst_may_go(now, None)
                };
                if !ready {
                    self.holding_since.get_or_insert(now);
                    break;
                }
                self.holding_since = None;
                let mut q = self.pop_pending(ctx.unsent);
                let snd_nxt = self.snd_nxt;
                if let Some(mut p) = q.packet() {
                    if seq_lt(p.seq(), snd_nxt) {
                        p.set_seq(snd_nxt);
                    }
                }
                self.emit(ctx, &mut q);
                ctx.stats.send_rst += 1;
                ctx.recycle(q.data);
                self.finish(now);
                return;
            }
            if payload > 0 || is_fin {
                // -W sends requests without waiting; a bare FIN still waits for the
                // response, as in the original (spec 4.11: "FIN handling is unchanged").
                let wait = payload == 0 || !ctx.cfg.dont_wait;
                if wait && !self.response_complete(now, ack, payload == 0) {
                    self.holding_since.get_or_insert(now);
                    break;
                }
                if self.cur_req_ack != Some(ack) && payload > 0 {
                    // A new request: the response to the last one is complete.
                    self.cur_req_ack = Some(ack);
                    self.resp_bytes = 0;
                    self.last_resp_at = None;
                    self.hold_expired = false;
                }
                self.holding_since = None;
            }
            if is_fin && payload == 0 && self.snd_una != self.snd_nxt {
                // Spec 4.6-5: the FIN waits until the target acked all data.
                break;
            }
            let in_flight = self.snd_nxt.wrapping_sub(self.snd_una);
            if payload > 0 && in_flight > 0 && in_flight as usize + payload > self.peer_win as usize
            {
                break;
            }
            if seq_lt(seq, self.snd_nxt) {
                // Partly sent already: only the rest goes.
                let n = self.snd_nxt.wrapping_sub(seq) as usize;
                let front = self.pending.front_mut().expect("front exists");
                let removed = front.trim_front(n);
                self.buffered -= removed;
                *ctx.unsent -= removed;
            }
            if payload > 0 && self.login.is_some() && self.pending.front().is_some_and(|q| q.fresh)
            {
                match self.login_client(ctx, now) {
                    LoginStep::Go => {}
                    LoginStep::Hold => break,
                    LoginStep::Dropped => return,
                }
            }
            let mut q = self.pop_pending(ctx.unsent);
            self.emit(ctx, &mut q);
            if q.payload > 0 {
                ctx.stats.send_content += 1;
                self.sent_request = true;
                if q.fresh {
                    self.count_first_send(ctx.fidelity, now, &q);
                }
            }
            q.fresh = false;
            if is_fin {
                ctx.stats.send_fin += 1;
                self.client_fin_sent = true;
            }
            self.snd_nxt = q.end;
            self.timers.arm(Timer::Retransmit, now + self.rto);
            self.buffered += q.data.len();
            self.unacked.push_back(q);
            if is_fin && self.target_fin {
                self.finish(now);
                return;
            }
        }
    }

    /// The fidelity figures of a captured client segment: new payload bytes, a new request.
    fn count_captured(&mut self, fidelity: &mut Fidelity, seg: &Segment) {
        let len = seg.payload_len() as u32;
        if len == 0 {
            return;
        }
        let data_end = seg.seq.wrapping_add(len);
        let new = match self.captured_end {
            Some(end) if seq_le(data_end, end) => 0,
            Some(end) if seq_gt(end, seg.seq) => data_end.wrapping_sub(end),
            _ => len,
        };
        if new == 0 {
            return;
        }
        self.captured_end = Some(data_end);
        fidelity.bytes_captured += u64::from(new);
        if self.last_captured_req != Some(seg.ack) {
            self.last_captured_req = Some(seg.ack);
            fidelity.requests_captured += 1;
        }
    }

    /// The fidelity figures of a request segment sent for the first time.
    fn count_first_send(&mut self, fidelity: &mut Fidelity, now: Instant, q: &Stored) {
        fidelity.bytes_sent += q.payload as u64;
        fidelity
            .lag
            .record(now.saturating_duration_since(q.captured_at));
        if self.last_sent_req != Some(q.online_ack) {
            self.last_sent_req = Some(q.online_ack);
            self.answered = false;
            fidelity.requests_sent += 1;
        }
    }

    /// This session's share of [`Ctx::unsent`], counted from its send queue.
    pub fn unsent_footprint(&self) -> usize {
        self.pending
            .iter()
            .map(|q| q.data.len() + STORED_OVERHEAD)
            .sum()
    }

    /// Takes the next segment out of the send queue (to send it or drop it).
    fn pop_pending(&mut self, unsent: &mut usize) -> Stored {
        let q = self.pending.pop_front().expect("pending not empty");
        self.buffered -= q.data.len();
        *unsent -= q.data.len() + STORED_OVERHEAD;
        q
    }

    /// Rewrites a stored client datagram for the target (ack, window, timestamps) and sends it.
    fn emit(&mut self, ctx: &mut Ctx, q: &mut Stored) {
        let ts_offset = q.ts_offset;
        if let Some(mut p) = q.packet() {
            let ts = ts_offset.and_then(|off| Some((off, p.timestamps_at(off)?)));
            let ack = p.ack_flag();
            p.rewrite(|p| {
                if ack {
                    p.ack(self.tgt_ack);
                }
                if self.fake {
                    p.window(65535);
                }
                if let (true, Some((off, (val, _)))) = (self.ts_on, ts) {
                    // Keep TSval non-decreasing (wrap-aware) and echo the target's latest TSval.
                    let val = if seq_gt(val, self.ts_val) {
                        val
                    } else {
                        self.ts_val
                    };
                    self.ts_val = val;
                    p.timestamps(off, val, self.ts_ecr);
                }
            });
        }
        ctx.stats.send += 1;
        ctx.out.send(&q.data, self.transfer);
        self.timers.stop(Timer::DelayedAck);
        self.unacked_resp_segs = 0;
    }

    /// A synthesized segment from the fake client to the target.
    fn send_synth(&mut self, ctx: &mut Ctx, seq: u32, flags_: u8) {
        self.ip_id = self.ip_id.wrapping_add(1);
        let window = if self.fake { 65535 } else { self.client_win };
        let spec = SegmentSpec {
            src: self.client.0,
            dst: self.target.0,
            src_port: self.client.1,
            dst_port: self.target.1,
            seq,
            ack: self.tgt_ack,
            flags: flags_,
            window,
            ip_id: self.ip_id,
            mss: None,
            timestamps: (self.ts_on && flags_ & flags::RST == 0)
                .then_some((self.ts_val, self.ts_ecr)),
            payload: &[],
        };
        if let Ok(n) = build_segment(&spec, ctx.scratch) {
            ctx.stats.send += 1;
            ctx.out.send(&ctx.scratch[..n], self.transfer);
        }
        if flags_ & flags::RST != 0 {
            ctx.stats.send_rst += 1;
        }
        self.timers.stop(Timer::DelayedAck);
        self.unacked_resp_segs = 0;
    }

    fn send_ack(&mut self, ctx: &mut Ctx) {
        self.send_synth(ctx, self.snd_nxt, flags::ACK);
    }

    /// Ends the session towards the target with a RST (unless it closed cleanly).
    pub fn teardown(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.phase == Phase::Over {
            return;
        }
        if self.phase != Phase::Closed && !(self.client_fin_sent && self.target_fin) {
            self.send_synth(ctx, self.snd_nxt, flags::RST | flags::ACK);
        }
        self.finish(now);
    }

    fn finish(&mut self, now: Instant) {
        self.phase = Phase::Over;
        // Only the end of lingering matters now.
        self.timers.set(Timer::Linger, now + LINGER);
        self.timers.stop_all_but(Timer::Linger);
        self.holding_since = None;
    }

    /// Releases buffered packets into the pool (the session is being removed).
    pub fn release(&mut self, ctx: &mut Ctx) {
        for q in self.pending.drain(..) {
            *ctx.unsent -= q.data.len() + STORED_OVERHEAD;
            ctx.recycle(q.data);
        }
        for q in self.unacked.drain(..) {
            ctx.recycle(q.data);
        }
        if let Some(s) = self.syn_pkt.take() {
            ctx.recycle(s);
        }
        if let Some((_, d)) = self.tfo_data.take() {
            ctx.recycle(d);
        }
        self.buffered = 0;
    }

    // ----- target side -------------------------------------------------------------------

    /// One response record (headers of a segment the target sent to this session).
    /// `data`: its payload when the record carried it (`--payload`), else empty.
    pub fn on_response(&mut self, ctx: &mut Ctx, now: Instant, r: &Segment, data: &[u8]) {
        ctx.stats.resp += 1;
        self.last_target_at = now;
        if self.phase == Phase::Over {
            // Lingering: acknowledge a retransmitted FIN, ignore the rest.
            if r.fin() && !r.rst() {
                self.send_ack(ctx);
            }
            return;
        }
        if self.phase == Phase::Established && !self.is_current(r) {
            ctx.drops.count(DropKind::StaleResponse);
            return;
        }
        if r.rst() {
            ctx.stats.resp_rst += 1;
            if self.phase != Phase::Closed {
                self.reset_by_target = true;
            }
            match self.phase {
                Phase::Established => self.on_target_reset(ctx, now),
                // Only a RST answering our SYN refuses it; others are left over from the
                // connection this one replaces on the same 4-tuple.
                Phase::SynSent if r.ack_flag() && r.ack == self.isn.wrapping_add(1) => {
                    self.finish(now)
                }
                _ => {}
            }
            return;
        }
        if r.syn() {
            if r.ack_flag() {
                self.on_syn_ack(ctx, now, r);
            }
            return;
        }
        if self.phase == Phase::SynSent && r.ack_flag() && r.ack != self.isn.wrapping_add(1) {
            // RFC 793, SYN-SENT: an ACK that does not acknowledge our SYN belongs to an older
            // connection the target still holds on this 4-tuple (TIME_WAIT refusing the SYN,
            // or a socket that never saw that connection end: its answer to our SYN is that
            // connection's ACK). A client's kernel answers with a RST at the acknowledged
            // sequence number, which frees the 4-tuple; then the SYN goes again.
            ctx.drops.count(DropKind::StaleResponse);
            if self
                .stale_reset_at
                .is_none_or(|t| now.saturating_duration_since(t) >= SYN_RETRY)
            {
                self.stale_reset_at = Some(now);
                self.send_synth(ctx, r.ack, flags::RST);
                self.send_syn(ctx, now);
            }
            return;
        }
        if self.phase != Phase::Established {
            return;
        }
        if let Some((val, _)) = r.options.timestamps {
            self.ts_ecr = val;
        }
        self.peer_win = u32::from(r.window) << self.wscale;
        let payload = r.payload_len() as u32;
        if payload > 0 {
            ctx.stats.resp_content += 1;
            let end = r.seq.wrapping_add(payload);
            if seq_gt(end, self.tgt_ack) {
                if self.login.is_some() && self.login_server(ctx, now, r.seq, payload, data) {
                    return;
                }
                let new = end.wrapping_sub(if seq_gt(r.seq, self.tgt_ack) {
                    r.seq
                } else {
                    self.tgt_ack
                });
                self.resp_bytes += u64::from(new);
                self.tgt_ack = end;
                let continued = self.answered;
                if !self.answered && self.last_sent_req.is_some() {
                    self.answered = true;
                    ctx.fidelity.requests_answered += 1;
                }
                self.last_resp_at = Some(now);
                // Only a segment that more of its response followed shows the segment size: a
                // one-segment answer of 900 bytes is complete, not the start of a stream.
                if continued {
                    self.max_resp_seg = self.max_resp_seg.max(self.last_resp_seg);
                }
                self.last_resp_seg = payload;
                self.last_resp_full = payload >= MIN_FULL_SEGMENT
                    && self.max_resp_seg > 0
                    && payload >= self.max_resp_seg;
                self.unacked_resp_segs += 1;
                if self.unacked_resp_segs >= 2 {
                    self.send_ack(ctx);
                } else {
                    let d =
                        (self.rtt / 2).clamp(Duration::from_micros(200), Duration::from_millis(20));
                    self.timers.arm(Timer::DelayedAck, now + d);
                }
            } else {
                // A target retransmission: our ACK was lost.
                self.send_ack(ctx);
            }
        }
        self.on_ack(ctx, now, r.ack, payload == 0 && !r.fin());
        if r.fin() {
            ctx.stats.resp_fin += 1;
            let fin_seq = r.seq.wrapping_add(payload);
            if seq_ge(fin_seq, self.tgt_ack) {
                self.tgt_ack = fin_seq.wrapping_add(1);
            }
            self.target_fin = true;
            self.send_ack(ctx);
            if self.client_fin_sent {
                self.finish(now);
                return;
            }
            if self.pending.iter().any(|q| q.payload > 0) {
                // Requests remain: reconnect to deliver them (spec 4.18).
                self.reconnect_or_finish(ctx, now, true);
                return;
            }
        }
        self.pump(ctx, now);
    }

    /// Whether a target segment belongs to this connection, not to the one it replaced on
    /// the same 4-tuple: intercept may still pass on that one's last segments (a FIN or an
    /// answer retransmitted) after this one's handshake. Both ends' numbers of a reused
    /// 4-tuple start past the old connection's, so such a segment acknowledges bytes before
    /// this connection's ISN, or sits before the target's ISN.
    fn is_current(&self, r: &Segment) -> bool {
        let acks_ours = !r.ack_flag()
            || (seq_gt(r.ack, self.isn) && seq_le(r.ack, self.snd_nxt.wrapping_add(1)));
        acks_ours && (r.syn() || seq_gt(r.seq, self.tgt_isn))
    }

    fn on_ack(&mut self, ctx: &mut Ctx, now: Instant, ack: u32, pure: bool) {
        if seq_gt(ack, self.snd_una) && seq_le(ack, self.snd_nxt) {
            self.snd_una = ack;
            self.recon_tries = 0;
            self.dup_acks = 0;
            while let Some(q) = self.unacked.front() {
                if seq_le(q.end, ack) {
                    let q = self.unacked.pop_front().expect("front");
                    self.buffered -= q.data.len();
                    ctx.recycle(q.data);
                } else {
                    break;
                }
            }
            self.rto = MIN_RTO.max(self.rtt * 4).min(MAX_RTO);
            if self.unacked.is_empty() {
                self.timers.stop(Timer::Retransmit);
            } else {
                self.timers.set(Timer::Retransmit, now + self.rto);
            }
        } else if pure && ack == self.snd_una && !self.unacked.is_empty() {
            self.dup_acks += 1;
            if self.dup_acks == 3 {
                self.retransmit(ctx, now);
            }
        }
    }

    fn on_syn_ack(&mut self, ctx: &mut Ctx, now: Instant, r: &Segment) {
        if self.phase == Phase::Established {
            // Our handshake ACK was lost.
            self.send_ack(ctx);
            return;
        }
        if self.phase != Phase::SynSent {
            return;
        }
        let opts = r.options;
        ctx.stats.conns += 1;
        self.phase = Phase::Established;
        self.established_once = true;
        self.reset_by_target = false;
        self.timers.stop(Timer::SynRetry);
        self.tgt_ack = r.seq.wrapping_add(1);
        self.tgt_isn = r.seq;
        self.snd_una = r.ack;
        self.wscale = opts.window_scale.unwrap_or(0);
        self.peer_win = u32::from(r.window);
        self.ts_on = opts.timestamps.is_some() && self.syn_had_ts;
        if let Some((val, _)) = opts.timestamps {
            self.ts_ecr = val;
        }
        self.timers.set(Timer::Check, now + GC_PERIOD);
        self.last_target_at = now;
        self.send_synth(ctx, self.isn.wrapping_add(1), flags::ACK);
        self.pump(ctx, now);
    }

    fn on_target_reset(&mut self, ctx: &mut Ctx, now: Instant) {
        let data_left = self
            .pending
            .iter()
            .chain(self.unacked.iter())
            .any(|q| q.payload > 0);
        if data_left {
            self.reconnect_or_finish(ctx, now, false);
        } else {
            self.finish(now);
        }
    }

    /// Reconnects to deliver what the target did not take, unless the last reconnections
    /// made no progress (a request the target always refuses is not replayed forever).
    fn reconnect_or_finish(&mut self, ctx: &mut Ctx, now: Instant, send_rst: bool) {
        if self.recon_tries < MAX_RECON_TRIES {
            self.recon_tries += 1;
            self.reconstruct(ctx, now, send_rst, true);
        } else if send_rst {
            self.teardown(ctx, now);
        } else {
            self.finish(now);
        }
    }

    /// Drops the current target connection (with a RST unless the target reset it) and
    /// schedules a new (faked) handshake for the captured data the target did not take: what
    /// was never sent, and what was sent but not acknowledged (the target's stack never took
    /// it, so its application never saw it) (spec 4.18).
    fn reconstruct(&mut self, ctx: &mut Ctx, now: Instant, send_rst: bool, replay_unacked: bool) {
        if send_rst && self.phase == Phase::Established {
            self.send_synth(ctx, self.snd_nxt, flags::RST | flags::ACK);
        }
        if !replay_unacked {
            for q in self.unacked.drain(..) {
                self.buffered -= q.data.len();
                ctx.recycle(q.data);
            }
        }
        // Unacknowledged segments go back to the front of the queue, minus acked bytes.
        while let Some(mut q) = self.unacked.pop_back() {
            if q.payload > 0 && seq_lt(q.seq, self.snd_una) && seq_lt(self.snd_una, q.end) {
                let n = self.snd_una.wrapping_sub(q.seq) as usize;
                self.buffered -= q.trim_front(n);
            }
            // Unsent again.
            *ctx.unsent += q.data.len() + STORED_OVERHEAD;
            self.pending.push_front(q);
        }
        self.phase = Phase::Closed;
        self.client_fin_sent = false;
        self.target_fin = false;
        self.timers.stop(Timer::Retransmit);
        self.timers.stop(Timer::DelayedAck);
        self.timers.stop(Timer::CaptureGap);
        self.holding_since = None;
        self.timers.set(
            Timer::Reconnect,
            now + self.rtt.max(Duration::from_millis(1)),
        );
    }

    fn retransmit(&mut self, ctx: &mut Ctx, now: Instant) {
        let Some(mut q) = self.unacked.pop_front() else {
            return;
        };
        self.emit(ctx, &mut q);
        ctx.stats.send -= 1; // counted as a retransmission, not a send (spec 9.2)
        ctx.stats.retransmit += 1;
        self.unacked.push_front(q);
        self.rto = (self.rto * 2).min(MAX_RTO);
        self.timers.set(Timer::Retransmit, now + self.rto);
        self.dup_acks = 0;
    }

    // ----- time --------------------------------------------------------------------------

    /// Fires whatever is due. Returns true when the session should be removed now.
    pub fn on_timer(&mut self, ctx: &mut Ctx, now: Instant) -> bool {
        if self.phase == Phase::Over {
            return self.timers.expire(Timer::Linger, now);
        }
        if self.timers.expire(Timer::Reconnect, now) {
            ctx.stats.reconnect += 1;
            if !self.fake_handshake(ctx, now) {
                self.finish(now);
                return false;
            }
        }
        if self.timers.expire(Timer::SynRetry, now)
            && self.phase == Phase::SynSent
            && now < self.syn_sent_at + SYN_GIVE_UP
            && (self.syn_pkt.is_some() || self.fake)
        {
            self.send_syn(ctx, now);
            self.timers.set(Timer::SynRetry, now + SYN_RETRY);
        }
        if self.timers.expire(Timer::Retransmit, now)
            && !self.unacked.is_empty()
            && self.phase == Phase::Established
        {
            self.retransmit(ctx, now);
        }
        if self.timers.expire(Timer::DelayedAck, now) && self.phase == Phase::Established {
            self.send_ack(ctx);
        }
        if self.timers.expire(Timer::CaptureGap, now) {
            if let Some(front) = self.pending.front() {
                if seq_gt(front.seq, self.snd_nxt) && self.phase == Phase::Established {
                    // Give up on the missing bytes: close this connection and replay the
                    // rest on a new one (counted).
                    ctx.drops.count(DropKind::CaptureGap);
                    // The segments before the gap were sent already: not replayed again.
                    self.reconstruct(ctx, now, true, false);
                    self.timers.set(Timer::Reconnect, now);
                    return false;
                }
            }
        }
        if self.hold_deadline().is_some_and(|d| now >= d) {
            // Whatever still holds the next request (a gap, the window), the wait for the
            // response is over: never re-arm a deadline that already passed.
            self.holding_since = None;
            self.hold_expired = true;
        }
        if self.timers.expire(Timer::Check, now) {
            self.timers.set(Timer::Check, now + GC_PERIOD);
            if self.obsolete(ctx, now) {
                ctx.stats.obsolete_deleted += 1;
                self.timed_out = true;
                self.teardown(ctx, now);
                return false;
            }
        }
        self.pump(ctx, now);
        false
    }

    fn obsolete(&self, ctx: &Ctx, now: Instant) -> bool {
        let silent = now.saturating_duration_since(self.last_target_at);
        match self.phase {
            Phase::Closed => {
                !self.timers.is_armed(Timer::Reconnect) && now >= self.created + HANDSHAKE_DEADLINE
            }
            Phase::SynSent => now >= self.syn_sent_at + SYN_GIVE_UP,
            Phase::Established => {
                // Spec 4.19: -t for a session holding captured data or without a request
                // yet, -k for an idle one whose requests were sent (also when -k < -t).
                let idle_keepalive = self.sent_request && self.pending.is_empty();
                (silent > ctx.cfg.session_timeout && !idle_keepalive)
                    || (silent > ctx.cfg.keepalive_timeout && idle_keepalive)
                    || (self.target_fin && silent > LINGER)
                    || self.buffered > ctx.cfg.max_session_bytes
            }
            Phase::Over => false,
        }
    }
}

#[inline]
fn seq_ge(a: u32, b: u32) -> bool {
    seq_le(b, a)
}

#[cfg(test)]
mod tests {
    use super::TimeWaitFloor;

    /// Linux's rule for a SYN meeting TIME_WAIT (tcp_timewait_state_process): no older
    /// timestamp, and a sequence number past the old end or a newer timestamp.
    #[test]
    fn time_wait_accepts_what_linux_accepts() {
        let with_ts = TimeWaitFloor {
            end: 1000,
            ts: Some(50),
        };
        assert!(with_ts.accepts(1001, Some(50)));
        assert!(
            with_ts.accepts(500, Some(51)),
            "newer timestamp, lower sequence"
        );
        assert!(
            !with_ts.accepts(1000, Some(50)),
            "neither past the end nor newer"
        );
        assert!(!with_ts.accepts(5000, Some(49)), "PAWS: an older timestamp");
        assert!(
            with_ts.accepts(1001, None),
            "no timestamp: the sequence decides"
        );
        let without = TimeWaitFloor {
            end: 1000,
            ts: None,
        };
        assert!(without.accepts(1001, Some(1)));
        assert!(!without.accepts(999, Some(1)));
        // Sequence numbers wrap.
        let near_wrap = TimeWaitFloor {
            end: u32::MAX - 10,
            ts: None,
        };
        assert!(near_wrap.accepts(5, None));
    }
}
