//! The sans-IO TCP replay machine: captured client packets, response records from intercept,
//! whether an intercept is available, and the passing of time go in; packets for the target
//! and CLIENT_ADD announcements are queued in an [`Outbox`] that the driver drains after each
//! batch of input. No sockets, no clock reads: `now` is always given by the caller.
//!
//! The behaviour follows ../shared/spec/tcpcopy.md sections 2.3-2.9, 3 and 4.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub mod conn;
pub mod endpoints;
pub mod fidelity;
pub mod ingress;
pub mod outbox;
pub mod timer;

use crate::packet::split::{needs_split, Splitter};
use crate::packet::{Completeness, DropReason, Segment, TcpPacket};
use conn::{Ctx, Phase, Session, TimeWaitFloor};
use endpoints::{MoveId, MovedPorts, RecentlyClosed};
pub use fidelity::{Fidelity, Outcome};
use ingress::{ClientIpMap, Sampler};
pub use outbox::{ClientAdd, Datagram, Outbox};

/// One `-x` transfer: captured traffic to `[src_ip:]src_port` goes to `dst_ip:dst_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Online address to match; `None` = any local address.
    pub src_ip: Option<IpAddr>,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// Datalink send (`-o`): MAC of the sending interface and of the next hop.
    pub src_mac: Option<[u8; 6]>,
    pub dst_mac: Option<[u8; 6]>,
}

/// Everything the replay machine needs to know from the command line.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// `-x`, in order (first match wins).
    pub transfers: Vec<Transfer>,
    /// `-c`, expanded (`x` subnets), target IPs already excluded. Empty = keep client IPs.
    pub client_ips: Vec<IpAddr>,
    /// `-H`: replacement source for captured packets from 127.0.0.1.
    pub localhost_replacement: Option<IpAddr>,
    /// `-n`: copies of every session (1 = no replication).
    pub replicas: u16,
    /// `-f`: port-shift factor (0 = off).
    pub port_shift: u16,
    /// `-r`: percentage of sessions replayed (0 or >= 100 = all).
    pub sample_percent: u8,
    /// `-g`: ramp sampling from 1% to 100% over about 100 s.
    pub gradual: bool,
    /// `-M`: MTU; captured packets longer than this are split.
    pub mtu: u16,
    /// `-D`: MSS in faked SYNs.
    pub fake_syn_mss: u16,
    /// `-R`: fixed RTT instead of the measured one.
    pub fixed_rtt: Option<Duration>,
    /// `-t`: drop a session when the target has been silent this long.
    pub session_timeout: Duration,
    /// `-k`: keepalive timeout for idle sessions that already sent requests.
    pub keepalive_timeout: Duration,
    /// `-O`: only replay sessions whose SYN was captured.
    pub only_with_syn: bool,
    /// `-W`: do not wait for the response before sending the next request.
    pub dont_wait: bool,
    /// `--single`: send no CLIENT_ADD (intercept in single mode forwards everything).
    pub single: bool,
    /// Most sessions alive at once; beyond it the oldest is dropped and counted.
    pub max_sessions: usize,
    /// Most bytes buffered per session; beyond it the session is dropped and counted.
    pub max_session_bytes: usize,
    /// Seed for the random port offset `R` of `-n`/`-f` (drawn in [0, 512)).
    pub seed: u64,
    /// `--auth-file` / `--protocol`: database logins are followed (and with credentials
    /// their answers recomputed for the target's challenge). See [`crate::auth`].
    pub auth: Option<std::sync::Arc<crate::auth::AuthConfig>>,
}

impl ReplayConfig {
    /// The online ports the transfers listen on (`-x SRC` ports), for the capture's filter.
    pub fn online_ports(&self) -> Vec<u16> {
        self.transfers.iter().map(|t| t.src_port).collect()
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            transfers: Vec::new(),
            client_ips: Vec::new(),
            localhost_replacement: None,
            replicas: 1,
            port_shift: 0,
            sample_percent: 0,
            gradual: false,
            mtu: 1500,
            fake_syn_mss: 1460,
            fixed_rtt: None,
            session_timeout: Duration::from_secs(600),
            keepalive_timeout: Duration::from_secs(720),
            only_with_syn: false,
            dont_wait: false,
            single: false,
            max_sessions: 1 << 20,
            max_session_bytes: 64 << 20,
            seed: 0,
            auth: None,
        }
    }
}

/// Counters with the meanings (and stats-line names) of spec section 9.2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub active: u64,
    pub released: u64,
    pub obsolete_deleted: u64,
    pub lingering: u64,
    pub conns: u64,
    pub resp: u64,
    pub resp_content: u64,
    pub resp_fin: u64,
    pub resp_rst: u64,
    pub send: u64,
    pub send_content: u64,
    pub send_syn: u64,
    pub send_fin: u64,
    pub send_rst: u64,
    pub reconnect: u64,
    pub for_no_syn: u64,
    pub retransmit: u64,
    pub recv_after_retransmit: u64,
    pub syn_cnt: u64,
    pub all_clt: u64,
    pub clt_cont: u64,
    pub clt_retransmit: u64,
    pub frag: u64,
    pub captured: u64,
    /// Captured segments whose IP or TCP checksum was not valid (transmit checksum offload
    /// on the capture side leaves partial ones): replayed with both recomputed. Not one of
    /// spec 9.2's lines.
    pub bad_checksum_fixed: u64,
    /// Packets of new connections that waited for the old session on their endpoint to end.
    pub deferred: u64,
    /// Captured segments whose IP options were removed before replay.
    pub ip_options_stripped: u64,
}

impl std::fmt::Display for ReplayStats {
    /// The statistics lines of spec 9.2, with the original's names.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "active:{},rel:{},obs del:{},tw:{}",
            self.active, self.released, self.obsolete_deleted, self.lingering
        )?;
        writeln!(
            f,
            "conns:{},resp:{},c-resp:{}",
            self.conns, self.resp, self.resp_content
        )?;
        writeln!(f, "resp fin:{},resp rst:{}", self.resp_fin, self.resp_rst)?;
        writeln!(f, "send:{},send content:{}", self.send, self.send_content)?;
        writeln!(
            f,
            "send syn:{}, fin:{},reset:{}",
            self.send_syn, self.send_fin, self.send_rst
        )?;
        writeln!(
            f,
            "reconnect:{},for no syn:{}",
            self.reconnect, self.for_no_syn
        )?;
        writeln!(f, "retransmit:{}", self.retransmit)?;
        writeln!(
            f,
            "recv packs after retransmission:{}",
            self.recv_after_retransmit
        )?;
        writeln!(
            f,
            "syn cnt:{},all clt:{},clt cont:{}",
            self.syn_cnt, self.all_clt, self.clt_cont
        )?;
        writeln!(
            f,
            "total cont retransmit:{}, frag:{}",
            self.clt_retransmit, self.frag
        )?;
        write!(f, "total captured packets:{}", self.captured)
    }
}

/// Why a client packet or response record was not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropKind {
    /// The packet layer rejected it (truncated, not IPv4/TCP, fragment...).
    Packet(DropReason),
    /// Its destination matches no `-x` transfer.
    NoTransfer,
    /// Target-localhost mode and the source is not 127.0.0.1.
    NotLocalhost,
    /// Left out by `-r`/`-g` sampling.
    Sampled,
    /// A pure ACK (tcpcopy makes its own).
    PureAck,
    /// A non-SYN packet without payload and no session.
    NoSession,
    /// `-O` and no SYN was captured.
    NoSyn,
    /// A retransmitted SYN of a live session.
    DupSyn,
    /// A new connection (another ISN) on the key of a live session: moved to another port
    /// (counted, not dropped) or, when no port is free, dropped.
    KeyReuse,
    /// The session limit was reached.
    SessionLimit,
    /// A session's buffered bytes would exceed the limit.
    SessionTooBig,
    /// Data for a finished session.
    SessionOver,
    /// A captured client retransmission (already sent).
    ClientRetransmit,
    /// A missing captured segment given up on.
    CaptureGap,
    /// No intercept accepted the session.
    NoIntercept,
    /// A response record for no session.
    UnknownResponse,
    /// A response record that does not parse.
    BadResponse,
    /// A response record of the connection a session replaced on its 4-tuple.
    StaleResponse,
}

const DROP_KINDS: usize = 25;

impl DropKind {
    fn index(self) -> usize {
        match self {
            DropKind::Packet(r) => r.index(),
            DropKind::NoTransfer => 8,
            DropKind::NotLocalhost => 9,
            DropKind::Sampled => 10,
            DropKind::PureAck => 11,
            DropKind::NoSession => 12,
            DropKind::NoSyn => 13,
            DropKind::DupSyn => 14,
            DropKind::KeyReuse => 15,
            DropKind::SessionLimit => 16,
            DropKind::SessionTooBig => 17,
            DropKind::SessionOver => 18,
            DropKind::ClientRetransmit => 19,
            DropKind::CaptureGap => 20,
            DropKind::NoIntercept => 21,
            DropKind::UnknownResponse => 22,
            DropKind::BadResponse => 23,
            DropKind::StaleResponse => 24,
        }
    }

    fn name(index: usize) -> &'static str {
        match index {
            0..=7 => DropReason::ALL.get(index).map_or("packet", |r| r.as_str()),
            8 => "no transfer",
            9 => "not localhost",
            10 => "sampled out",
            11 => "pure ack",
            12 => "no session",
            13 => "no syn (-O)",
            14 => "dup syn",
            15 => "key reuse",
            16 => "session limit",
            17 => "session too big",
            18 => "session over",
            19 => "client retransmit",
            20 => "capture gap",
            21 => "no intercept",
            22 => "unknown response",
            23 => "bad response",
            _ => "stale response",
        }
    }
}

/// Counters of [`DropKind`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Drops([u64; DROP_KINDS]);

impl Drops {
    pub fn count(&mut self, kind: DropKind) {
        self.0[kind.index()] += 1;
    }
    pub fn get(&self, kind: DropKind) -> u64 {
        self.0[kind.index()]
    }
}

/// A session: fake client address and port, target address and port. The target is part
/// of the key: two real connections that map onto the same fake endpoint but go to
/// different targets (`-x` with several transfers) are different connections.
pub type Key = (IpAddr, u16, IpAddr, u16);

/// The [`Ctx`] of a session call: the Replayer's fields a session touches, borrowed apart
/// from `self.sessions` (a method could not split the borrow).
macro_rules! ctx {
    ($r:ident) => {
        Ctx {
            cfg: &$r.cfg,
            stats: &mut $r.stats,
            drops: &mut $r.drops,
            out: &mut $r.outbox,
            intercepts_available: $r.intercepts_available,
            fidelity: &mut $r.fidelity,
            scratch: &mut $r.scratch,
            pool: &mut $r.pool,
            unsent: &mut $r.unsent,
            auth: &mut $r.auth_report,
        }
    };
}

/// Owns every session. See the module docs.
pub struct Replayer {
    cfg: ReplayConfig,
    stats: ReplayStats,
    drops: Drops,
    sessions: HashMap<Key, Session>,
    /// Session deadlines. An entry is pushed only when a session's deadline moves earlier
    /// than its live entry; a later one is found when that entry fires early.
    timers: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Heap entries pushed so far (a measure of timer bookkeeping per packet).
    timer_pushes: u64,
    outbox: Outbox,
    intercepts_available: bool,
    fidelity: Fidelity,
    client_ips: ClientIpMap,
    sampler: Sampler,
    port_offset: u32,
    localhost_target: bool,
    /// Ingress rewriting buffer, split pieces buffer, synthesized segments buffer.
    ingress_buf: Vec<u8>,
    split_buf: Vec<u8>,
    scratch: Vec<u8>,
    pool: Vec<Vec<u8>>,
    /// See [`Ctx::unsent`].
    unsent: usize,
    /// Connections moved to another port because their key was held by a live session.
    moved_ports: MovedPorts,
    /// Fake endpoints of sessions removed lately (with `-n`), with the real client whose
    /// connection ended there: the target may still hold them in TIME_WAIT, so another
    /// client's connection starts there only if the target accepts its SYN.
    recently_closed: RecentlyClosed<Key, (TimeWaitFloor, Origin)>,
    /// New connections waiting for the session on their fake endpoint to end.
    deferred: HashMap<Key, Deferred>,
    /// Bytes of the packets in `deferred`.
    deferred_bytes: usize,
    /// The real client (address and port as captured) of the packet being handled.
    origin: Origin,
    /// Offline `-T` pass (0 for the first): later passes replay as other connections.
    pass: u32,
    pass_port_add: u32,
    /// The last client packet's online connection and the replayed one it became (its first
    /// copy), for `tcpcopy --diff`: see [`Replayer::last_mapping`].
    last_mapping: Option<(Key, Key)>,
    /// Database logins (with [`ReplayConfig::auth`]).
    auth_report: crate::auth::AuthReport,
}

/// How long a closed endpoint is avoided for replicas (Linux TIME_WAIT is 60 s).
const TIME_WAIT: Duration = Duration::from_secs(60);
/// A new connection captured on the fake endpoint of a session whose client closed but whose
/// target has not finished yet (it lags behind online: a client that reuses its port at once
/// is common when the server closes first). Tearing the old session down would reset the
/// target's answer; moving the new one to another port would meet that port's TIME_WAIT on
/// the target with an unrelated sequence number. So the new connection's packets wait, and
/// it starts on the same endpoint (with the online client's own ISN, which the target, like
/// the online server, accepts) once the old session is over, or after [`DEFER_WAIT`].
///
/// A client with few ports reuses each one again and again (a chain of short connections on
/// one endpoint); when the replay lags behind online, several connections wait at once. They
/// queue here in capture order and start one at a time, each when the one before is over.
///
/// Only one real client's connections queue on an endpoint (another client that meets it
/// with `-c` moves to another port): the packets of two would interleave.
struct Deferred {
    /// When the connection at the head of the queue began to wait.
    since: Instant,
    transfer: usize,
    origin: Origin,
    /// Each packet with the move that brought its connection to this endpoint, if any (the
    /// session it starts records it).
    packets: VecDeque<(Segment, Vec<u8>, Option<MoveId>)>,
}

/// A real client: address and port as captured, before `-c`, `-f` and `-n`.
type Origin = (IpAddr, u16);

/// Queues a packet of a connection that waits for its endpoint ([`Deferred`]), within
/// [`DEFER_MAX_PACKETS`] and [`DEFER_MAX_BYTES`] (beyond: counted as key reuse).
fn defer(
    deferred: &mut HashMap<Key, Deferred>,
    deferred_bytes: &mut usize,
    ctx: &mut Ctx,
    (key, now, transfer, seg, datagram): (Key, Instant, usize, &Segment, &[u8]),
    (origin, moved): (Origin, Option<MoveId>),
) {
    let d = deferred.entry(key).or_insert_with(|| Deferred {
        since: now,
        transfer,
        origin,
        packets: VecDeque::new(),
    });
    if d.origin == origin
        && d.packets.len() < DEFER_MAX_PACKETS
        && *deferred_bytes + datagram.len() <= DEFER_MAX_BYTES
    {
        d.packets.push_back((*seg, datagram.to_vec(), moved));
        *deferred_bytes += datagram.len();
        ctx.stats.deferred += 1;
    } else {
        ctx.drops.count(DropKind::KeyReuse);
    }
}

/// Longest wait of a deferred connection; then the old session is torn down.
const DEFER_WAIT: Duration = Duration::from_secs(3);
/// Most packets waiting on one endpoint (beyond: counted as key reuse).
const DEFER_MAX_PACKETS: usize = 4096;
/// Most bytes waiting on all endpoints together (beyond: counted as key reuse).
const DEFER_MAX_BYTES: usize = 32 << 20;

/// Most connections moved to another port at once.
const MAX_MOVED: usize = 1 << 16;
/// Most closed endpoints remembered (beyond it the oldest are forgotten early).
const MAX_RECENTLY_CLOSED: usize = 1 << 18;

const BUF_LEN: usize = 65536 + 64;

impl Replayer {
    pub fn new(cfg: ReplayConfig) -> Replayer {
        let localhost_target = cfg.transfers.iter().any(|t| t.dst_ip.is_loopback());
        Replayer {
            client_ips: ClientIpMap::new(cfg.client_ips.clone()),
            sampler: Sampler::new(cfg.sample_percent, cfg.gradual),
            port_offset: ingress::port_offset(cfg.seed),
            localhost_target,
            cfg,
            stats: ReplayStats::default(),
            drops: Drops::default(),
            sessions: HashMap::new(),
            // Room for the entries [`Replayer::compact_timers`] lets pile up over a few sessions.
            timers: BinaryHeap::with_capacity(2 * TIMER_COMPACT_SLACK),
            timer_pushes: 0,
            outbox: Outbox::default(),
            intercepts_available: true,
            fidelity: Fidelity::default(),
            ingress_buf: vec![0; BUF_LEN],
            split_buf: vec![0; BUF_LEN],
            scratch: vec![0; BUF_LEN],
            pool: Vec::new(),
            unsent: 0,
            moved_ports: MovedPorts::new(MAX_MOVED),
            recently_closed: RecentlyClosed::new(TIME_WAIT, MAX_RECENTLY_CLOSED),
            deferred: HashMap::new(),
            deferred_bytes: 0,
            origin: (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
            pass: 0,
            pass_port_add: 0,
            last_mapping: None,
            auth_report: crate::auth::AuthReport::default(),
        }
    }

    /// The connection of the last [`Replayer::on_client_packet`] as captured (client ip,
    /// client port, server ip, server port) and as replayed (fake client ip, port, target ip,
    /// port; the first copy with `-n`), if the packet got that far (not sampled out or
    /// dropped before its connection was known).
    pub fn last_mapping(&self) -> Option<(Key, Key)> {
        self.last_mapping
    }

    pub fn config(&self) -> &ReplayConfig {
        &self.cfg
    }

    /// An input: whether an intercept can take CLIENT_ADD announcements now (true until told
    /// otherwise). Without one no session starts: its SYN would be answered to nobody.
    pub fn set_intercepts_available(&mut self, available: bool) {
        self.intercepts_available = available;
    }

    /// What the machine wants sent since the last [`Replayer::clear_output`]: the driver
    /// sends the announcements first, then the datagrams, then clears.
    pub fn output(&self) -> &Outbox {
        &self.outbox
    }

    pub fn clear_output(&mut self) {
        self.outbox.clear();
    }

    /// Offline `-T`: packets of pass `pass` (0-based) follow. Each pass's connections must be
    /// distinct from the last's (same 4-tuples and sequence numbers would collide with the
    /// target's TIME_WAIT state): with two or more `-c` addresses every real client maps to
    /// another fake address each pass; otherwise the client ports move.
    pub fn start_pass(&mut self, pass: u32) {
        if pass == self.pass {
            return;
        }
        self.pass = pass;
        if self.cfg.client_ips.len() >= 2 {
            let mut ips = self.cfg.client_ips.clone();
            let n = ips.len();
            ips.rotate_left(pass as usize % n);
            self.client_ips = ClientIpMap::new(ips);
        } else {
            self.pass_port_add = pass.wrapping_mul(4099) % 60000;
        }
    }

    /// A captured IPv4 datagram (starting at the IP header; trailing link padding allowed).
    /// Runs the ingress pipeline (spec 3) and the session machine (spec 4).
    pub fn on_client_packet(&mut self, now: Instant, datagram: &[u8]) {
        self.stats.captured += 1;
        self.last_mapping = None;
        let mtu = usize::from(self.cfg.mtu.max(68));
        if needs_split(datagram, mtu) {
            let splitter = match Splitter::new(datagram, mtu) {
                Ok(s) => s,
                Err(r) => {
                    self.drops.count(DropKind::Packet(r));
                    return;
                }
            };
            let mut split_buf = std::mem::take(&mut self.split_buf);
            for i in 0..splitter.piece_count() {
                if let Ok(n) = splitter.write_piece(i, &mut split_buf) {
                    self.ingress(now, &split_buf[..n]);
                }
            }
            self.split_buf = split_buf;
        } else {
            self.ingress(now, datagram);
        }
        self.stats.active = self.sessions.len() as u64;
        self.compact_timers();
    }

    /// Drops the superseded timer entries once they outnumber the sessions: each deadline
    /// that moved earlier left one behind, and in a long keep-alive session they would pile
    /// up until their (late) time. Amortised over the pushes that made them; it keeps the
    /// heap within a small multiple of the session count, so it stops growing (and
    /// allocating) in steady state.
    fn compact_timers(&mut self) {
        if self.timers.len() <= 2 * self.sessions.len() + TIMER_COMPACT_SLACK {
            return;
        }
        let sessions = &self.sessions;
        self.timers
            .retain(|Reverse((t, key))| sessions.get(key).is_some_and(|s| s.scheduled == Some(*t)));
    }

    /// Spec 3.1 for one (split) datagram, then the session layer and replication.
    fn ingress(&mut self, now: Instant, datagram: &[u8]) {
        let p = match TcpPacket::parse(datagram, Completeness::Whole) {
            Ok(p) => p,
            Err(r) => {
                self.drops.count(DropKind::Packet(r));
                return;
            }
        };
        // Parsed once: the view travels with the bytes (rewritten alongside them).
        let mut seg = p.segment();
        if !seg.plain_df {
            self.stats.frag += 1;
        }
        let (dst_ip, dst_port) = (seg.dst, seg.dst_port);
        let Some(transfer) = self
            .cfg
            .transfers
            .iter()
            // A transfer replays one family: a packet of the other never matches it.
            .position(|t| {
                t.src_port == dst_port
                    && t.dst_ip.is_ipv6() == dst_ip.is_ipv6()
                    && t.src_ip.is_none_or(|ip| ip == dst_ip)
            })
        else {
            self.drops.count(DropKind::NoTransfer);
            return;
        };
        self.origin = (seg.src, seg.src_port);
        let mut src_ip = seg.src;
        if self.localhost_target {
            if !src_ip.is_loopback() {
                self.drops.count(DropKind::NotLocalhost);
                return;
            }
        } else if src_ip.is_loopback() {
            if let Some(h) = self
                .cfg
                .localhost_replacement
                .filter(|h| h.is_ipv6() == src_ip.is_ipv6())
            {
                src_ip = h;
            }
        }
        if let Some(fake) = self.client_ips.map(src_ip) {
            if fake.is_ipv6() == src_ip.is_ipv6() {
                src_ip = fake;
            }
        }
        let src_port = seg.src_port;
        if !self.sampler.admit(now, src_ip, src_port) {
            self.drops.count(DropKind::Sampled);
            if seg.syn() && !seg.ack_flag() {
                self.fidelity.sessions_sampled_out += 1;
            }
            return;
        }
        let mut shifted = ingress::shift_port(src_port, self.cfg.port_shift, self.port_offset);
        if self.pass_port_add > 0 {
            shifted = ingress::wrap_port(shifted, self.pass_port_add);
        }
        let t = self.cfg.transfers[transfer];
        // Pure ACKs of established sessions are absorbed before any copying (spec 3.1-9).
        if seg.payload_len() == 0 && !seg.syn() && !seg.fin() && !seg.rst() {
            let port = self.moved_port(src_ip, shifted, 0, (t.dst_ip, t.dst_port), seg.seq);
            if let Some(s) = self.sessions.get(&(src_ip, port, t.dst_ip, t.dst_port)) {
                if s.phase == Phase::Established && !s.wants_pure_ack() {
                    self.drops.count(DropKind::PureAck);
                    return;
                }
            }
        }
        if seg.syn() {
            self.stats.syn_cnt += 1;
        } else if seg.payload_len() > 0 {
            self.stats.clt_cont += 1;
        }
        self.stats.all_clt += 1;
        // Checksums are updated incrementally from here on, which keeps a valid one valid and
        // an invalid one invalid: a capture side that offloads transmit checksums (veth,
        // containers, VMs, tcpdump on the sending host) hands over partial ones, and the
        // target's kernel drops every segment that still carries one.
        let mut len = p.as_bytes().len();
        let mut buf = std::mem::take(&mut self.ingress_buf);
        // Copied and verified in one pass.
        let checksums_valid = p.copy_verified(&mut buf);
        if !checksums_valid {
            if self.stats.bad_checksum_fixed == 0 {
                log::info!(
                    "captured segments carry invalid checksums (transmit checksum offload where they were captured?): tcpcopy recomputes them (counted as 'bad checksum fixed')"
                );
            }
            self.stats.bad_checksum_fixed += 1;
        }
        if seg.layout.ip_len > seg.layout.plain_ip_len() {
            // IP options (source routes among them) are not replayed: the target gets a plain
            // header, as intercept's records do.
            if let Some(mut q) = TcpPacket::from_layout(&mut buf[..len], seg.layout) {
                len = q.strip_ip_options();
                seg.layout.ip_len = seg.layout.plain_ip_len();
                self.stats.ip_options_stripped += 1;
            }
        }
        let (syn, seq) = (seg.syn() && !seg.ack_flag(), seg.seq);
        let target = (t.dst_ip, t.dst_port);
        let syn_seq = syn.then_some((seq, seg.options.timestamps.map(|(val, _)| val)));
        let (port, moved) = self.resolve_port(now, (src_ip, shifted), 0, target, seq, syn_seq);
        if let Some(mut q) = TcpPacket::from_layout(&mut buf[..len], seg.layout) {
            q.rewrite(|w| {
                w.src_ip(src_ip)
                    .src_port(port)
                    .dst_ip(t.dst_ip)
                    .dst_port(t.dst_port);
            });
            if !checksums_valid {
                q.fill_checksums();
            }
        }
        self.last_mapping = Some((
            (seg.src, seg.src_port, seg.dst, seg.dst_port),
            (src_ip, port, t.dst_ip, t.dst_port),
        ));
        (seg.src, seg.src_port, seg.dst, seg.dst_port) = (src_ip, port, t.dst_ip, t.dst_port);
        self.session_layer(now, &seg, &buf[..len], transfer, moved);
        // `-n`: independent copies with their own ports (and client IPs with `-c`).
        for i in 1..self.cfg.replicas.max(1) {
            let port = ingress::replica_port(shifted, i, self.port_offset);
            let port = ingress::shift_port(port, self.cfg.port_shift, self.port_offset);
            let mut ip = src_ip;
            if self.client_ips.is_active() {
                let key = ingress::replica_ip_key(p.src_ip(), i, self.port_offset);
                if let Some(fake) = self.client_ips.map_key(key) {
                    if fake.is_ipv6() == ip.is_ipv6() {
                        ip = fake;
                    }
                }
            }
            let (port, moved) = self.resolve_port(now, (ip, port), i, target, seq, syn_seq);
            if let Some(mut q) = TcpPacket::from_layout(&mut buf[..len], seg.layout) {
                q.rewrite(|w| {
                    w.src_ip(ip).src_port(port);
                });
            }
            (seg.src, seg.src_port) = (ip, port);
            self.session_layer(now, &seg, &buf[..len], transfer, moved);
        }
        self.ingress_buf = buf;
    }

    /// The key of the handled connection's move (see [`MoveId`]).
    fn move_id(&self, replica: u16, target: (IpAddr, u16)) -> MoveId {
        (self.origin.0, self.origin.1, replica, target.0, target.1)
    }

    /// The port a segment at `seq` uses after a move by [`Self::resolve_port`]. The moved
    /// connection and the one that kept the port share the endpoint before rewriting: a
    /// segment in the byte numbering of the session on the port belongs to it.
    fn moved_port(
        &self,
        ip: IpAddr,
        port: u16,
        replica: u16,
        target: (IpAddr, u16),
        seq: u32,
    ) -> u16 {
        let Some(moved) = self.moved_ports.get(&self.move_id(replica, target)) else {
            return port;
        };
        match self.sessions.get(&(ip, port, target.0, target.1)) {
            Some(s) if s.origin == self.origin && !s.is_over() && !s.is_other_connection(seq) => {
                port
            }
            _ => moved,
        }
    }

    /// The fake client port of a connection. Many real connections map onto few fake
    /// endpoints (`-c`, `-n`, `-f`); when a new connection's SYN finds its endpoint held by a
    /// live session of another connection, it moves to the next free port instead of being
    /// dropped (the original ignores it until the old session ends), and its later packets
    /// follow it there. Counted as `key reuse`. `syn_seq` is the sequence number and
    /// timestamp of a SYN. Returns the port and, for a move, the connection's [`MoveId`]
    /// (recorded when its session is created, and forgotten with it).
    fn resolve_port(
        &mut self,
        now: Instant,
        (ip, port): (IpAddr, u16),
        replica: u16,
        target: (IpAddr, u16),
        seg_seq: u32,
        syn_seq: Option<(u32, Option<u32>)>,
    ) -> (u16, Option<MoveId>) {
        let id = self.move_id(replica, target);
        let Some((seq, syn_ts)) = syn_seq else {
            return (self.moved_port(ip, port, replica, target, seg_seq), None);
        };
        let origin = self.origin;
        // A session of the same client that closed is not busy: its next connection on the
        // endpoint waits for it to end there (see `Deferred`) rather than move. Another
        // client's session (`-c`) is busy until it is over.
        let busy = |s: &Session| {
            !s.is_over() && (!s.client_closed() || s.origin != origin) && s.isn != seq
        };
        // With `-n` every fake endpoint is shared by several connections' copies, and with
        // `-c` by several clients: none starts where another connection's session ended
        // (still in the table, or lately with `-n`) unless the target, which may hold that
        // endpoint in TIME_WAIT, accepts its SYN there. A client reusing its own port needs
        // no check: its sequence numbers and timestamps only grow, as the online server saw.
        let copies = self.cfg.replicas > 1;
        let refused = |floor: &TimeWaitFloor, other: Origin| {
            (copies || other != origin) && !floor.accepts(seq, syn_ts)
        };
        let mut chosen = port;
        for _ in 0..256 {
            let key = (ip, chosen, target.0, target.1);
            let taken = self.deferred.get(&key).is_some_and(|d| d.origin != origin)
                || match self.sessions.get(&key) {
                    Some(s) => busy(s) || (s.isn != seq && refused(&s.time_wait_floor(), s.origin)),
                    None => self
                        .recently_closed
                        .get(&key, now)
                        .is_some_and(|(floor, other)| refused(floor, *other)),
                };
            if !taken {
                if chosen == port {
                    self.moved_ports.clear_move(&id);
                    return (port, None);
                }
                self.drops.count(DropKind::KeyReuse);
                return (chosen, Some(id));
            }
            if !self.moved_ports.has_room() {
                // Not moved: the SYN meets the live session and is dropped as key reuse.
                break;
            }
            chosen = chosen.wrapping_add(1).max(1024);
        }
        (port, None)
    }

    /// Spec 4.4: find or create the session of a rewritten client datagram (`seg` is its
    /// view) and feed it. `moved`: the connection was moved to this port (a new session
    /// records the move).
    fn session_layer(
        &mut self,
        now: Instant,
        seg: &Segment,
        datagram: &[u8],
        transfer: usize,
        moved: Option<MoveId>,
    ) {
        let target = (seg.dst, seg.dst_port);
        let key = (seg.src, seg.src_port, target.0, target.1);
        let (syn, seq, payload) = (seg.syn() && !seg.ack_flag(), seg.seq, seg.payload_len());
        let mut ctx = ctx!(self);
        // Whether the packet queues behind connections waiting for this endpoint.
        let queue = 'decide: {
            if let Some(s) = self.sessions.get_mut(&key) {
                let waiting = self.deferred.contains_key(&key);
                let new_conn = if syn {
                    s.isn != seq
                } else {
                    waiting && s.is_other_connection(seq)
                };
                if new_conn && (waiting || (!s.is_over() && s.client_closed())) {
                    // The old connection ended at the client but not yet at the target, or
                    // others already wait on this endpoint: this one queues behind them.
                    break 'decide true;
                }
                let replace = if syn {
                    if s.isn == seq && s.phase != Phase::Over {
                        ctx.drops.count(DropKind::DupSyn);
                        return;
                    }
                    s.is_over() || s.client_closed()
                } else {
                    s.is_over() && payload > 0 && s.is_other_connection(seq)
                };
                if !replace {
                    if syn {
                        // Spec 4.4: a new connection while the old one lives is not replayed;
                        // counted rather than lost silently.
                        ctx.drops.count(DropKind::KeyReuse);
                        return;
                    }
                    s.on_client(&mut ctx, now, seg, datagram);
                    schedule(&mut self.timers, &mut self.timer_pushes, key, s);
                    self.start_deferred(now, key, false);
                    return;
                }
                // The old connection is done: it makes room for the new one on the same key.
                let mut old = self.sessions.remove(&key).expect("present");
                old.teardown(&mut ctx, now);
                ctx.fidelity.count(old.outcome());
                old.release(&mut ctx);
                ctx.stats.released += 1;
                if let Some(id) = old.moved_from {
                    self.moved_ports.session_gone(&id, key.1);
                }
            }
            // Connections wait on this endpoint (its session just ended): behind them.
            self.deferred.contains_key(&key)
        };
        if queue {
            if let Some(id) = moved {
                // Its later segments follow it here while it waits.
                self.moved_ports.insert(id, key.1);
            }
            let packet = (key, now, transfer, seg, datagram);
            defer(
                &mut self.deferred,
                &mut self.deferred_bytes,
                &mut ctx,
                packet,
                (self.origin, moved),
            );
            return;
        }
        if !syn && payload == 0 {
            ctx.drops.count(DropKind::NoSession);
            return;
        }
        if !syn && self.cfg.only_with_syn {
            ctx.drops.count(DropKind::NoSyn);
            return;
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            ctx.drops.count(DropKind::SessionLimit);
            return;
        }
        let mut s = Session::new(now, (key.0, key.1), target, transfer, ctx.cfg);
        s.origin = self.origin;
        if let Some(id) = moved {
            self.moved_ports.insert(id, key.1);
            s.moved_from = Some(id);
        }
        let started = if syn {
            s.start_with_syn(&mut ctx, now, seg, datagram)
        } else {
            s.start_fake(&mut ctx, now, seg, datagram)
        };
        if !started {
            ctx.drops.count(DropKind::NoIntercept);
        }
        self.sessions.insert(key, s);
        self.reschedule(key);
    }

    /// Starts the connection at the head of the queue waiting on `key` once its old session
    /// is over or gone (or, with `expired`, once it waited [`DEFER_WAIT`]: the old session is
    /// torn down first); the connections behind it go on waiting, for it now.
    fn start_deferred(&mut self, now: Instant, key: Key, expired: bool) {
        // Each turn starts one connection; one that ends at once (no intercept) lets the next
        // go in the same call. Bounded by the queue's length.
        for _ in 0..DEFER_MAX_PACKETS {
            let Some(d) = self.deferred.get(&key) else {
                return;
            };
            let old_done = self.sessions.get(&key).is_none_or(|s| s.is_over());
            let waited = expired && now.saturating_duration_since(d.since) >= DEFER_WAIT;
            if !old_done && !waited {
                return;
            }
            let mut d = self.deferred.remove(&key).expect("present");
            if !old_done {
                if let Some(s) = self.sessions.get_mut(&key) {
                    let mut ctx = ctx!(self);
                    s.teardown(&mut ctx, now);
                }
            }
            // The head connection: up to the next connection's SYN.
            let next = d
                .packets
                .iter()
                .skip(1)
                .position(|(seg, _, _)| seg.syn() && !seg.ack_flag())
                .map_or(d.packets.len(), |i| i + 1);
            let head: Vec<_> = d.packets.drain(..next).collect();
            let origin = std::mem::replace(&mut self.origin, d.origin);
            for (seg, bytes, moved) in &head {
                self.deferred_bytes -= bytes.len();
                self.session_layer(now, seg, bytes, d.transfer, *moved);
            }
            self.origin = origin;
            if d.packets.is_empty() {
                return;
            }
            // The rest waits for the head connection; anything deferred meanwhile (nothing,
            // unless the head's own packets met another session) comes after it.
            if let Some(mut later) = self.deferred.remove(&key) {
                d.packets.append(&mut later.packets);
            }
            d.since = now;
            self.deferred.insert(key, d);
        }
    }

    fn reschedule(&mut self, key: Key) {
        if let Some(s) = self.sessions.get_mut(&key) {
            schedule(&mut self.timers, &mut self.timer_pushes, key, s);
        }
    }

    /// Hands a response to the session `key`, if there is one (one table lookup).
    /// `payload`: the response's whole payload when the record carries it, else empty.
    fn respond(&mut self, key: Key, now: Instant, r: &Segment, payload: &[u8]) -> bool {
        let Some(s) = self.sessions.get_mut(&key) else {
            return false;
        };
        let mut ctx = ctx!(self);
        s.on_response(&mut ctx, now, r, payload);
        schedule(&mut self.timers, &mut self.timer_pushes, key, s);
        self.start_deferred(now, key, false);
        true
    }

    /// One response record from intercept (64 or 192 bytes: IPv4 header + TCP header).
    pub fn on_response(&mut self, now: Instant, record: &[u8]) {
        let mut norm = [0u8; 256];
        let Some(r) = crate::control::record_view(record, &mut norm) else {
            self.drops.count(DropKind::BadResponse);
            return;
        };
        // The payload only when the record carries all of it (--payload, at most 128 bytes).
        let payload = if r.payload().len() == r.payload_len() {
            r.payload()
        } else {
            &[]
        };
        let r = r.segment();
        if self.respond((r.dst, r.dst_port, r.src, r.src_port), now, &r, payload) {
            return;
        }
        // Spec 4.9 looks sessions up by the response's destination alone: behind a DNAT
        // (intercept --dnat) the answer comes from another address than the -x target.
        // Fall back to the transfers' targets on the same port.
        let found = self.cfg.transfers.iter().find_map(|t| {
            let k = (r.dst, r.dst_port, t.dst_ip, t.dst_port);
            (t.dst_port == r.src_port && self.sessions.contains_key(&k)).then_some(k)
        });
        if !found.is_some_and(|k| self.respond(k, now, &r, payload)) {
            self.drops.count(DropKind::UnknownResponse);
        }
        self.compact_timers();
    }

    /// Fires the timers due at `now`, at most [`TIMER_BUDGET`] of them (the rest stay due:
    /// [`Replayer::next_deadline`] says so, and the driver drains the output in between).
    pub fn on_timer(&mut self, now: Instant) {
        let mut budget = TIMER_BUDGET;
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now || budget == 0 {
                break;
            }
            budget -= 1;
            self.timers.pop();
            let Some(s) = self.sessions.get_mut(&key) else {
                continue;
            };
            if s.scheduled != Some(t) {
                // Superseded by an earlier entry of the same session.
                continue;
            }
            s.scheduled = None;
            if s.next_deadline().is_some_and(|d| d > now) {
                // The deadline moved later since this entry was pushed.
                schedule(&mut self.timers, &mut self.timer_pushes, key, s);
                continue;
            }
            let mut ctx = ctx!(self);
            if s.on_timer(&mut ctx, now) {
                let mut s = self.sessions.remove(&key).expect("present");
                ctx.fidelity.count(s.outcome());
                s.release(&mut ctx);
                ctx.stats.released += 1;
                if let Some(id) = s.moved_from {
                    self.moved_ports.session_gone(&id, key.1);
                }
                // With `-n` every endpoint is shared by copies: remembered for TIME_WAIT.
                // Not with `-c` alone: a table of every endpoint closed in the last minute
                // costs memory with every client, and the rare SYN of another client that
                // meets TIME_WAIT there is answered with the old connection's ACK, which the
                // session resets (RFC 793) before its SYN goes again.
                if self.cfg.replicas > 1 {
                    self.recently_closed
                        .insert_with(key, now, (s.time_wait_floor(), s.origin));
                }
            } else {
                self.reschedule(key);
            }
            self.start_deferred(now, key, true);
        }
        self.stats.active = self.sessions.len() as u64;
    }

    /// Timer heap entries pushed since the start.
    pub fn timer_pushes(&self) -> u64 {
        self.timer_pushes
    }

    /// The earliest pending timer, for the event loop's poll timeout (possibly an entry
    /// whose session's deadline moved later: [`Replayer::on_timer`] then finds nothing due).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Ends every live session (teardown RST to the target), for a graceful exit.
    pub fn shutdown(&mut self, now: Instant) {
        let mut ctx = ctx!(self);
        self.deferred.clear();
        self.deferred_bytes = 0;
        for (_, mut s) in self.sessions.drain() {
            // Classified before the teardown makes every session look finished.
            ctx.fidelity.count(s.outcome());
            s.teardown(&mut ctx, now);
            s.release(&mut ctx);
            ctx.stats.released += 1;
        }
        self.moved_ports = MovedPorts::new(MAX_MOVED);
        self.timers.clear();
        self.stats.active = 0;
        self.stats.lingering = 0;
    }

    /// Sessions in the table (including lingering ones).
    pub fn active_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Connections currently moved to another port (each belongs to a live session).
    pub fn moved_connections(&self) -> usize {
        self.moved_ports.len()
    }

    /// Memory the client packets captured and not sent yet take: the sessions' send queues
    /// with their overhead ([`Ctx::unsent`], kept as segments come and go) and the
    /// connections waiting for an endpoint. O(1): the offline reader asks before each read.
    pub fn unsent_bytes(&self) -> usize {
        self.unsent + self.deferred_bytes
    }

    /// [`Replayer::unsent_bytes`] counted again from the sessions, for tests of the running
    /// count (O(segments)).
    pub fn unsent_bytes_recounted(&self) -> usize {
        let sessions: usize = self.sessions.values().map(|s| s.unsent_footprint()).sum();
        sessions + self.deferred_bytes
    }

    /// Sessions that are not finished (handshaking or established).
    pub fn live_sessions(&self) -> usize {
        self.sessions.values().filter(|s| !s.is_over()).count()
    }

    pub fn stats(&self) -> ReplayStats {
        let mut s = self.stats;
        s.active = self.sessions.len() as u64;
        s.lingering = self.sessions.values().filter(|s| s.is_over()).count() as u64;
        s
    }

    /// The fidelity figures so far. Sessions still in the table are not in the outcome
    /// counts until they end ([`Replayer::shutdown`] counts them as still active).
    pub fn fidelity(&self) -> &Fidelity {
        &self.fidelity
    }

    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    /// The database logins followed so far (with [`ReplayConfig::auth`]).
    pub fn auth_report(&self) -> &crate::auth::AuthReport {
        &self.auth_report
    }

    /// Drops by reason for every packet that is not replayed (name, count), for the stats line.
    pub fn drop_counts(&self) -> Vec<(&'static str, u64)> {
        self.drops
            .0
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (DropKind::name(i), *n))
            .collect()
    }
}

/// Superseded timer entries tolerated beyond two per session before the heap is compacted.
const TIMER_COMPACT_SLACK: usize = 64;

/// Most timers [`Replayer::on_timer`] fires in one call.
pub const TIMER_BUDGET: usize = 4096;

/// Pushes a heap entry for a session whose earliest deadline moved earlier than its live
/// entry (or that has none). A deadline that moved later keeps the live entry, which finds
/// the later deadline when it fires: an ACK that pushes the retransmission back costs no
/// heap operation. The superseded later entry is skipped when it pops.
fn schedule(
    timers: &mut BinaryHeap<Reverse<(Instant, Key)>>,
    pushes: &mut u64,
    key: Key,
    s: &mut Session,
) {
    let Some(next) = s.next_deadline() else {
        return;
    };
    if s.scheduled.is_none_or(|t| next < t) {
        s.scheduled = Some(next);
        timers.push(Reverse((next, key)));
        *pushes += 1;
    }
}
