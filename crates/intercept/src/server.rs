//! The event loop: one thread, one mio poll. Captured responses are decoded, routed and queued
//! on their tunnel; each tunnel's pending records are written at the end of every loop turn
//! (or as soon as a frame is full), so a response waits for no timer.
//!
//! Tunnels are non-blocking with bounded buffers: a peer that sends garbage, stops in the middle
//! of a record or never reads is closed and logged, and nothing else waits for it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use tc_core::capture::pcap_live::{self, PcapLive, PcapLiveOptions};
use tc_core::capture::reopen::Reopening;
use tc_core::capture::Capture;
use tc_core::control::conn::{ClientRecords, ClientRecords6, ConnError, FramedConn, ReadStatus};
use tc_core::control::ipv6::{ClientAdd6, Record6, V6Grant, CLIENT_ADD6_LEN, IPV6_REQUEST};
use tc_core::control::routing::{
    Admission, Held, Millis, RouteKey, Routed, Router, SingleGroup, TunnelId,
};
use tc_core::control::{
    ClientMsg, ClientMsgKind, Record, WireFormat, CLIENT_MSG_LEN, PROTOCOL_VERSION,
};
use tc_core::logging::RateLimit;
use tc_core::metrics::{Exposition, Limits as MetricsLimits, MetricsServer};
use tc_core::packet::link::ip_payload;
use tc_core::packet::{flags, ipv4_payload, Completeness, DropCounters, LinkType, TcpPacket};

use crate::cli::{Config, Devices};
use crate::probe::Watches;
use tc_core::control::full_payload::{self, Data, Grant, FULL_PAYLOAD_REQUEST};
use tc_core::control::probe::{PROBE_HELLO, PROBE_QUERY};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
const CAPTURE_BASE: usize = 16;
const TUNNEL_BASE: usize = 1 << 20;
/// The metrics endpoint's listener and client slots (below the tunnels, above any capture).
const METRICS_BASE: usize = TUNNEL_BASE - 64;

/// Frames read from one capture per loop turn before the others get their turn.
const CAPTURE_BUDGET: usize = 256;
/// Bytes read from one tunnel per loop turn.
const TUNNEL_READ_BUDGET: usize = 64 * 1024;
/// Connections accepted per loop turn.
const ACCEPT_BUDGET: usize = 64;
/// Unsent bytes a tunnel may hold before it is considered a peer that does not read.
pub const TUNNEL_OUT_LIMIT: usize = 4 << 20;
/// A started record must be completed, and the version record sent, within this time.
pub const TUNNEL_INPUT_TIMEOUT_MS: Millis = 5_000;
/// A tunnel whose pending output has not moved for this long is closed.
pub const TUNNEL_SEND_TIMEOUT_MS: Millis = 10_000;
/// Most simultaneous tunnels when the open-files limit allows no more (see
/// [`tunnel_cap`]).
pub const MAX_TUNNELS: usize = 4096;
/// Descriptors kept for everything but tunnels (captures, listener, log, poll, a refused
/// connection being closed).
pub const FD_RESERVE: u64 = 64;
/// After an accept failure (EMFILE, ENFILE...), the listener is tried again this soon even if
/// no new connection arrives.
pub const ACCEPT_RETRY_MS: Millis = 100;

/// The tunnel cap that `nofile` open files allow: all but [`FD_RESERVE`] descriptors.
pub fn tunnel_cap(nofile: u64) -> usize {
    nofile.saturating_sub(FD_RESERVE).clamp(1, 1 << 20) as usize
}

/// Raises the soft open-files limit to the hard one; returns (before, after).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}
const STATS_PERIOD_MS: Millis = 30_000;
const HOUSEKEEPING_MS: Millis = 200;
/// Per-event log lines allowed per second and category; the rest are counted.
const LOG_BURST: u32 = 10;

/// Snap lengths: headers only (Ethernet + 2 VLAN tags + 60 IP + 60 TCP = 148, rounded up), or
/// with 128 payload bytes.
pub const SNAPLEN: i32 = 200;
pub const SNAPLEN_PAYLOAD: i32 = 330;
pub const CAPTURE_BUFFER: i32 = 16 << 20;
/// Snap length with `--full-payload`: whole segments.
pub const SNAPLEN_FULL: i32 = 65535;
/// Data messages wait in a tunnel's output up to this much; beyond it they are dropped
/// (counted) so that a slow tcpcopy never loses the records the replay needs.
const DATA_OUT_LIMIT: usize = TUNNEL_OUT_LIMIT / 2;
/// Connections whose bytes per response are counted for the cap (a fixed table: a
/// connection whose slot is taken by another starts its count again).
const CAP_SLOTS: usize = 4096;

/// A capture source as the server sees it: a [`Capture`] that may report kernel drops.
pub trait Source: Capture {
    fn kernel_drops(&mut self) -> Option<u64> {
        None
    }
}

impl Source for PcapLive {
    fn kernel_drops(&mut self) -> Option<u64> {
        self.stats().map(|s| s.dropped + s.if_dropped)
    }
}

/// Opens a capture source again after it failed (its device deleted, for instance).
pub type Reopen = tc_core::capture::reopen::Reopen<dyn Source>;

/// A named capture source: lost and reopened as tc-core's [`Reopening`] says, plus whether it
/// may hold more frames (mio is edge-triggered).
pub struct NamedSource {
    inner: Reopening<dyn Source>,
    pending: bool,
}

impl NamedSource {
    pub fn new(name: &str, source: Box<dyn Source>) -> NamedSource {
        NamedSource {
            inner: Reopening::new(name, source),
            pending: true,
        }
    }

    /// How to open it again after a failure.
    pub fn with_reopen(mut self, reopen: Reopen) -> NamedSource {
        self.inner = self.inner.with_reopen(reopen);
        self
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn lose(&mut self, now: Millis, why: &dyn std::fmt::Display) {
        self.pending = false;
        self.inner.lose(Duration::from_millis(now), why);
    }

    /// Tries to reopen a lost source when its backoff has passed.
    fn try_reopen(&mut self, registry: &Registry, token: Token, now: Millis) {
        let reopened = self.inner.try_reopen(Duration::from_millis(now), |src| {
            src.register(registry, token)
                .map_err(|e| format!("cannot poll it: {e}"))
        });
        if reopened {
            self.pending = true;
        }
    }
}

/// Opens the listening socket (SO_REUSEADDR, non-blocking).
pub fn bind_listener(bind: impl Into<IpAddr>, port: u16) -> anyhow::Result<std::net::TcpListener> {
    let bind = bind.into();
    let addr = SocketAddr::new(bind, port);
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .context("cannot create the listening socket")?;
    if bind.is_ipv6() {
        // An IPv6 listener takes IPv6 peers only: IPv4 peers see the IPv4 listener's rules.
        sock.set_only_v6(true).context("cannot set IPV6_V6ONLY")?;
    }
    sock.set_reuse_address(true)
        .context("cannot set SO_REUSEADDR")?;
    sock.bind(&addr.into())
        .with_context(|| format!("Bind socket to {addr} (port:{port}) failed"))?;
    sock.listen(128)
        .with_context(|| format!("listen on {addr} failed"))?;
    sock.set_nonblocking(true)
        .context("cannot make the listener non-blocking")?;
    Ok(sock.into())
}

/// Opens a live capture on every configured device; devices that fail are logged and skipped.
pub fn open_captures(cfg: &Config) -> anyhow::Result<Vec<NamedSource>> {
    let devices = match &cfg.devices {
        Devices::All => Vec::new(),
        Devices::List(l) => l.clone(),
    };
    let mut opts = PcapLiveOptions::new(&cfg.filter);
    opts.snaplen = if cfg.full_payload {
        SNAPLEN_FULL
    } else if cfg.payload {
        SNAPLEN_PAYLOAD
    } else {
        SNAPLEN
    };
    opts.buffer_size = CAPTURE_BUFFER;
    Ok(pcap_live::open_devices(&devices, &opts)?
        .into_iter()
        .map(|cap| {
            let name = cap.device().to_owned();
            let (device, opts) = (name.clone(), opts.clone());
            NamedSource::new(&name, Box::new(cap)).with_reopen(Box::new(move || {
                PcapLive::open(&device, &opts)
                    .map(|c| Box::new(c) as Box<dyn Source>)
                    .map_err(|e| e.to_string())
            }))
        })
        .collect())
}

/// Counters of the statistics line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames read from the captures.
    pub frames: u64,
    /// IPv4 TCP packets seen ("all").
    pub all: u64,
    /// Responses with valid headers, routed ("total resp packs").
    pub responses: u64,
    /// CLIENT_ADD records processed ("route").
    pub client_adds: u64,
    /// CLIENT_ADDs refused: another peer address owns the route.
    pub refused_adds: u64,
    /// Frames (combined) or records (plain) queued for writing ("sock write cnt").
    pub writes: u64,
    /// Records queued on tunnels.
    pub records_sent: u64,
    /// Responses without a tunnel (no route, or its tunnel gone) and not delayed.
    pub unrouted: u64,
    /// Records lost with a tunnel closed for not reading.
    pub overflow: u64,
    pub accepted: u64,
    pub refused: u64,
    pub closed: u64,
    pub drops: DropCounters,
    pub kernel_drops: u64,
    /// Log lines suppressed by rate limiting.
    pub logs_suppressed: u64,
    /// Client records of an unknown type (ignored).
    pub unknown_msgs: u64,
    /// Answers to tcpcopy's path probe questions.
    pub probe_replies: u64,
    /// `--full-payload`: tunnels granted, data messages sent, payload bytes sent, bytes left
    /// out at the per-response cap, messages dropped because the tunnel was backed up.
    pub full_payload_tunnels: u64,
    pub data_messages: u64,
    pub data_bytes: u64,
    pub data_capped_bytes: u64,
    pub data_dropped: u64,
}

/// A handle to stop a running server from another thread.
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// Per-event log lines of one category: [`RateLimit`] on the loop's clock, the suppressed
/// lines counted in the statistics.
#[derive(Debug)]
struct LogLimit(RateLimit);

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit(RateLimit::new(Duration::from_secs(1), LOG_BURST))
    }
}

impl LogLimit {
    fn allow(&mut self, now: Millis, suppressed: &mut u64) -> bool {
        let allowed = self.0.allow(Duration::from_millis(now)).is_some();
        if !allowed {
            *suppressed += 1;
        }
        allowed
    }
}

struct Tunnel {
    id: TunnelId,
    conn: FramedConn,
    peer: SocketAddr,
    /// The peer's address.
    peer_ip: IpAddr,
    fd: i32,
    accepted_at: Millis,
    /// When the last complete record arrived (the version record included).
    last_input: Millis,
    handshaken: bool,
    /// The peer asked for full payloads and was granted them.
    full_payload: bool,
    /// The peer asked for the IPv6 variant and was granted it.
    ipv6: bool,
    dirty: bool,
    read_again: bool,
    closing: Option<&'static str>,
}

impl Tunnel {
    fn push(&mut self, rec: &[u8], fmt: WireFormat, max_batch: usize, stats: &mut Stats) {
        if self.closing.is_some() {
            stats.overflow += 1;
            return;
        }
        let queued = if fmt.combined {
            self.conn
                .queue_batched(rec, max_batch)
                .map(|sealed| stats.writes += u64::from(sealed))
        } else {
            stats.writes += 1;
            self.conn.queue(rec)
        };
        stats.records_sent += 1;
        if queued.is_err() {
            self.cut_off(stats);
        }
    }

    /// Queues an IPv6 unit (outside any combined frame).
    fn push6(&mut self, unit: &[u8], stats: &mut Stats) {
        if self.closing.is_some() {
            stats.overflow += 1;
            return;
        }
        stats.writes += 1;
        stats.records_sent += 1;
        if self.conn.queue_data(unit).is_err() {
            self.cut_off(stats);
        }
    }

    /// The send queue passed its limit: the tunnel closes at the end of the turn and what it
    /// holds is dropped, this record included, so an overflow is counted even when no later
    /// record arrives before the close.
    fn cut_off(&mut self, stats: &mut Stats) {
        self.closing = Some("send queue full (peer does not read)");
        stats.overflow += 1;
    }

    /// Marks the tunnel for the end-of-turn flush.
    fn mark_dirty(&mut self, dirty: &mut Vec<TunnelId>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(self.id);
        }
    }

    /// Writes as much as the socket takes. Returns false on a fatal error.
    fn write_out(&mut self, registry: &Registry, stats: &mut Stats) -> bool {
        if self.conn.seal() {
            stats.writes += 1;
        }
        match self.conn.flush(registry) {
            Ok(()) => true,
            Err(e) => {
                debug!("send tunnel {} ({}): {e}", self.id, self.peer);
                false
            }
        }
    }
}

/// What the loop does with a captured frame: [`Core::on_frame`] decides, the loop performs.
// The record stays on the stack (one per captured frame): boxing it would allocate per packet.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum FrameRoute {
    /// Queue this record on that tunnel.
    Forward(TunnelId, Record),
    /// Queue this IPv6 unit on that tunnel (outside any combined frame).
    Forward6(TunnelId, Record6),
    /// No route yet: kept in the delay table until its CLIENT_ADD.
    Held,
    /// No tunnel for it (counted and logged).
    Unrouted,
    /// Not a usable TCP response (counted as a capture drop).
    Dropped,
}

/// What the loop does after a client record: [`Core::on_client_msg`] decides, the loop
/// performs.
#[derive(Debug)]
enum MsgAction {
    Nothing,
    /// A valid version record: the tunnel may now be used.
    Handshaken,
    /// Close the tunnel, for this reason.
    Close(&'static str),
    /// The connection just announced had responses waiting: send them on this tunnel first.
    Deliver(Held),
    /// A path probe question of tcpcopy's (`--check`): answer it on this tunnel.
    Probe(ClientMsg),
    /// tcpcopy asks for full payloads: grant or refuse on this tunnel.
    FullPayload,
    /// tcpcopy asks for the IPv6 variant: grant or refuse on this tunnel.
    Ipv6,
}

/// One unit a tunnel sent: a 14-byte record, or an IPv6 CLIENT_ADD.
#[derive(Debug, Clone, Copy)]
enum ClientUnit {
    Msg([u8; CLIENT_MSG_LEN]),
    Add6(ClientAdd6),
}

/// The tunnel as the routing decisions see it.
#[derive(Debug, Clone, Copy)]
struct TunnelView {
    id: TunnelId,
    peer: SocketAddr,
    peer_ip: IpAddr,
    handshaken: bool,
}

impl Tunnel {
    fn view(&self) -> TunnelView {
        TunnelView {
            id: self.id,
            peer: self.peer,
            peer_ip: self.peer_ip,
            handshaken: self.handshaken,
        }
    }
}

/// Routing state shared by the capture and control paths. It decides; the loop moves bytes.
struct Core {
    fmt: WireFormat,
    /// `--ipv6`: IPv6 answers are captured and the IPv6 variant granted.
    ipv6: bool,
    /// `--full-payload`: the per-response byte counts and the message being built.
    full_payload: Option<FullPayload>,
    max_batch: usize,
    dnat: bool,
    single_mode: bool,
    rewrite: Option<(Ipv4Addr, Ipv4Addr)>,
    router: Router,
    single: SingleGroup,
    stats: Stats,
    unrouted_log: LogLimit,
    peer_log: LogLimit,
}

impl Core {
    /// One captured frame: decode, build the record, decide where it goes.
    fn on_frame(&mut self, link: LinkType, frame: &[u8], now: Millis) -> FrameRoute {
        self.stats.frames += 1;
        let decoded = if self.ipv6 {
            ip_payload(link, frame)
        } else {
            ipv4_payload(link, frame)
        };
        let ip = match decoded {
            Ok(ip) => ip,
            Err(reason) => {
                self.stats.drops.count(reason);
                return FrameRoute::Dropped;
            }
        };
        if ip.get(9) == Some(&6) || ip.first().is_some_and(|v| v >> 4 == 6) {
            self.stats.all += 1;
        }
        let pkt = match TcpPacket::parse(ip, Completeness::HeadersOnly) {
            Ok(p) => p,
            Err(reason) => {
                self.stats.drops.count(reason);
                return FrameRoute::Dropped;
            }
        };
        self.stats.responses += 1;
        log::trace!(
            "captured {}:{} -> {}:{} seq={} ack={} flags={:#04x}",
            pkt.src_ip(),
            pkt.src_port(),
            pkt.dst_ip(),
            pkt.dst_port(),
            pkt.seq(),
            pkt.ack(),
            pkt.flags()
        );
        let mut client_ip = pkt.dst_ip();
        let mut dst_rewrite = None;
        if let Some((from, to)) = self.rewrite {
            if client_ip == from {
                client_ip = to.into();
                dst_rewrite = Some(to);
            }
        }
        let key = RouteKey::new(
            client_ip,
            pkt.dst_port(),
            pkt.src_ip(),
            pkt.src_port(),
            self.dnat,
        );
        // An IPv6 answer travels in a unit of the IPv6 variant (its bytes are what the delay
        // table holds and delivers).
        let (record, record6) = if pkt.is_v6() {
            (None, Some(Record6::encode(&pkt, self.fmt.payload)))
        } else {
            (Some(Record::encode(&pkt, self.fmt, dst_rewrite)), None)
        };
        let bytes = match (&record, &record6) {
            (Some(r), _) => r.as_bytes(),
            (_, Some(r)) => r.as_bytes(),
            _ => &[],
        };
        let target = if self.single_mode {
            self.single.pick(&key)
        } else {
            match self.router.route(&key, pkt.flags(), bytes, now) {
                Routed::Tunnel(t) => Some(t),
                Routed::Delayed => {
                    if pkt.rst()
                        && self
                            .unrouted_log
                            .allow(now, &mut self.stats.logs_suppressed)
                    {
                        info!("reset from tcp, delayed: {key}");
                    }
                    return FrameRoute::Held;
                }
                Routed::Dropped => None,
            }
        };
        match (target, record, record6) {
            (Some(t), Some(record), _) => FrameRoute::Forward(t, record),
            (Some(t), _, Some(record6)) => FrameRoute::Forward6(t, record6),
            _ => {
                self.unrouted(now, || {
                    format!(
                        "from bak:{}:{}-->{}:{},len {},seq={},ack={}",
                        pkt.src_ip(),
                        pkt.src_port(),
                        pkt.dst_ip(),
                        pkt.dst_port(),
                        pkt.total_len(),
                        pkt.seq(),
                        pkt.ack()
                    )
                });
                FrameRoute::Unrouted
            }
        }
    }

    /// Counts (and, rate-limited, logs) a response that no tunnel takes.
    fn unrouted(&mut self, now: Millis, what: impl FnOnce() -> String) {
        self.stats.unrouted += 1;
        if self
            .unrouted_log
            .allow(now, &mut self.stats.logs_suppressed)
        {
            info!("fd is null after session is created: {}", what());
        }
    }

    /// One complete 14-byte record from a tunnel.
    fn on_client_msg(
        &mut self,
        tunnel: TunnelView,
        raw: &[u8; CLIENT_MSG_LEN],
        now: Millis,
    ) -> MsgAction {
        let msg = ClientMsg::parse(raw);
        if !tunnel.handshaken {
            match msg.check_version_record() {
                Err(e) => {
                    error!("{e}: tunnel {} from {}", tunnel.id, tunnel.peer);
                    return MsgAction::Close("bad version record");
                }
                Ok(version) if version != PROTOCOL_VERSION => warn!(
                    "not compatible,client:{version},intercept:{PROTOCOL_VERSION} (tunnel {} from {})",
                    tunnel.id, tunnel.peer
                ),
                Ok(_) => {}
            }
            return MsgAction::Handshaken;
        }
        match msg.classify() {
            ClientMsgKind::Add => {
                self.stats.client_adds += 1;
                if self.single_mode {
                    return MsgAction::Nothing;
                }
                let key = RouteKey::new(
                    msg.client_ip,
                    msg.client_port,
                    msg.target_ip,
                    msg.target_port,
                    self.dnat,
                );
                self.add_route(tunnel, key, now)
            }
            ClientMsgKind::Del => {
                debug!("client del from tunnel {}", tunnel.id);
                MsgAction::Nothing
            }
            ClientMsgKind::Unknown(PROBE_HELLO | PROBE_QUERY) => MsgAction::Probe(msg),
            ClientMsgKind::Unknown(FULL_PAYLOAD_REQUEST) => MsgAction::FullPayload,
            ClientMsgKind::Unknown(IPV6_REQUEST) => MsgAction::Ipv6,
            ClientMsgKind::Unknown(other) => {
                // Spec 4.1: warned and ignored; the connection stays open.
                self.stats.unknown_msgs += 1;
                if self.peer_log.allow(now, &mut self.stats.logs_suppressed) {
                    warn!(
                        "unknown msg type:{other} (tunnel {} from {})",
                        tunnel.id, tunnel.peer
                    );
                }
                MsgAction::Nothing
            }
        }
    }

    /// An IPv6 CLIENT_ADD (only from a tunnel granted the IPv6 variant).
    fn on_client_add6(
        &mut self,
        tunnel: TunnelView,
        granted: bool,
        add: ClientAdd6,
        now: Millis,
    ) -> MsgAction {
        if !granted || !tunnel.handshaken {
            return MsgAction::Close("IPv6 CLIENT_ADD without the IPv6 variant");
        }
        self.stats.client_adds += 1;
        if self.single_mode {
            return MsgAction::Nothing;
        }
        let key = RouteKey::new(
            add.client_ip,
            add.client_port,
            add.target_ip,
            add.target_port,
            self.dnat,
        );
        self.add_route(tunnel, key, now)
    }

    fn add_route(&mut self, tunnel: TunnelView, key: RouteKey, now: Millis) -> MsgAction {
        {
            {
                debug!("route add {key} -> tunnel {}", tunnel.id);
                match self.router.client_add(key, tunnel.id, tunnel.peer_ip, now) {
                    Ok(Some(waiting)) => {
                        debug!("{} delayed responses sent for {key}", waiting.len());
                        MsgAction::Deliver(waiting)
                    }
                    Ok(None) => MsgAction::Nothing,
                    Err(taken) => {
                        self.stats.refused_adds += 1;
                        if self.peer_log.allow(now, &mut self.stats.logs_suppressed) {
                            warn!(
                                "route add {key} from tunnel {} ({}) refused: it belongs to tunnel {} of {}",
                                tunnel.id, tunnel.peer, taken.owner, taken.owner_peer
                            );
                        }
                        MsgAction::Nothing
                    }
                }
            }
        }
    }
}

/// Installs the SIGINT/SIGTERM handlers (their default action kills the process): done
/// first thing at start-up, before anything listens, so a stop signal that arrives while
/// intercept starts is a graceful stop once the loop runs.
pub fn install_signals() -> anyhow::Result<signal_hook_mio::v1_0::Signals> {
    signal_hook_mio::v1_0::Signals::new([libc::SIGINT, libc::SIGTERM])
        .context("cannot install signal handlers")
}

/// The server: listener, captures, tunnels, router.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    sources: Vec<NamedSource>,
    tunnels: HashMap<TunnelId, Tunnel>,
    next_tunnel: TunnelId,
    dirty: Vec<TunnelId>,
    /// Client records of one tunnel read, reused every turn.
    msg_scratch: Vec<ClientUnit>,
    core: Core,
    cfg: Config,
    start: Instant,
    stop_flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    listener_pending: bool,
    /// After an accept failure: when to try the listener again.
    accept_retry_at: Option<Millis>,
    /// Open tunnels per peer address.
    per_peer: HashMap<IpAddr, usize>,
    /// `--metrics`.
    metrics: Option<MetricsServer>,
    /// Broad captures for tcpcopy's path probes.
    watches: Watches,
    /// Responses captured and peers' CLIENT_ADDs when the capture was last seen working.
    capture_watch: CaptureWatch,
}

/// "Captured nothing for 30 s while peers announce sessions": the numbers it is judged by.
#[derive(Debug, Default)]
struct CaptureWatch {
    responses: u64,
    client_adds: u64,
    /// The first announcement after the last captured response.
    since: Option<Millis>,
    warned_at: Option<Millis>,
    adds_at_warning: u64,
}

impl CaptureWatch {
    const QUIET_MS: Millis = 30_000;
    const REPEAT_MS: Millis = 60_000;

    /// Called on every housekeeping turn with the counters: `Some((quiet ms, sessions
    /// announced meanwhile))` when it is time to warn (at most once a minute, and only if
    /// more sessions were announced since the last warning).
    fn judge(&mut self, now: Millis, responses: u64, client_adds: u64) -> Option<(Millis, u64)> {
        if responses != self.responses {
            // Working: judge the announcements from here on.
            self.responses = responses;
            self.client_adds = client_adds;
            self.since = None;
            return None;
        }
        if client_adds == self.client_adds {
            return None;
        }
        let since = *self.since.get_or_insert(now);
        let quiet = now.saturating_sub(since);
        if quiet >= Self::QUIET_MS
            && client_adds > self.adds_at_warning
            && self
                .warned_at
                .is_none_or(|t| now.saturating_sub(t) >= Self::REPEAT_MS)
        {
            self.warned_at = Some(now);
            self.adds_at_warning = client_adds;
            return Some((quiet, client_adds - self.client_adds));
        }
        None
    }
}

impl Server {
    /// Builds the loop around an already bound listener and opened captures.
    pub fn new(
        cfg: &Config,
        listener: std::net::TcpListener,
        mut sources: Vec<NamedSource>,
    ) -> anyhow::Result<Server> {
        let poll = Poll::new().context("cannot create the event loop")?;
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        for (i, s) in sources.iter_mut().enumerate() {
            let name = s.name().to_string();
            if let Some(src) = s.inner.source_mut() {
                src.register(poll.registry(), Token(CAPTURE_BASE + i))
                    .with_context(|| format!("cannot poll capture {name}"))?;
            }
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let fmt = WireFormat {
            combined: cfg.combined,
            payload: cfg.payload,
        };
        let core = Core {
            fmt,
            ipv6: cfg.ipv6,
            full_payload: cfg.full_payload.then(FullPayload::new),
            max_batch: cfg.batch.clamp(1, fmt.max_batch()),
            dnat: cfg.dnat,
            single_mode: cfg.single,
            rewrite: cfg.docker_rewrite,
            router: Router::new(
                cfg.max_routes,
                cfg.route_timeout.as_millis() as Millis,
                // The original's -s counts hash buckets with unbounded chains: a smaller
                // value must not make the bounded table refuse what the original held.
                cfg.delay_table.max(crate::cli::DEFAULT_DELAY_TABLE),
                cfg.delay_mem,
                0,
            ),
            single: SingleGroup::new(cfg.protect),
            stats: Stats::default(),
            unrouted_log: LogLimit::default(),
            peer_log: LogLimit::default(),
        };
        let metrics = match cfg.metrics {
            Some(addr) => {
                let mut m = MetricsServer::bind(addr, MetricsLimits::default())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                m.register(poll.registry(), Token(METRICS_BASE))
                    .context("cannot poll the metrics listener")?;
                info!("metrics at http://{}/metrics", m.local_addr());
                Some(m)
            }
            None => None,
        };
        Ok(Server {
            poll,
            listener,
            local_addr,
            sources,
            tunnels: HashMap::new(),
            next_tunnel: 1,
            dirty: Vec::new(),
            msg_scratch: Vec::with_capacity(TUNNEL_READ_BUDGET / CLIENT_MSG_LEN + 1),
            core,
            cfg: cfg.clone(),
            start: Instant::now(),
            stop_flag: Arc::new(AtomicBool::new(false)),
            waker,
            signals: None,
            listener_pending: true,
            metrics,
            accept_retry_at: None,
            per_peer: HashMap::new(),
            watches: Watches::new(&cfg.devices, fmt, cfg.route.is_some())
                .with_full_payload(cfg.full_payload),
            capture_watch: CaptureWatch::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `--metrics` listens, if it does.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// The Prometheus text of the statistics (the same counters as the statistics lines).
    fn render_metrics(&self) -> String {
        let s = &self.core.stats;
        let r = &self.core.router.routes.stats;
        let d = &self.core.router.delay.stats;
        let mut e = Exposition::new();
        e.counter(
            "intercept_frames_total",
            "Frames read from the captures.",
            s.frames,
        )
        .counter(
            "intercept_responses_total",
            "Responses with valid headers (total resp packs).",
            s.responses,
        )
        .counter(
            "intercept_client_adds_total",
            "CLIENT_ADD records (route).",
            s.client_adds,
        )
        .counter(
            "intercept_refused_adds_total",
            "CLIENT_ADDs refused: another peer address owns the route.",
            r.refused,
        )
        .counter(
            "intercept_records_sent_total",
            "Records queued on tunnels.",
            s.records_sent,
        )
        .counter(
            "intercept_unrouted_total",
            "Responses without a tunnel.",
            s.unrouted,
        )
        .counter(
            "intercept_overflow_total",
            "Records lost with a tunnel closed for not reading.",
            s.overflow,
        )
        .counter(
            "intercept_route_hits_total",
            "Responses routed by a route.",
            r.hits,
        )
        .counter(
            "intercept_delayed_total",
            "Responses held for their CLIENT_ADD.",
            d.delayed,
        )
        .counter(
            "intercept_tunnels_accepted_total",
            "Tunnels accepted.",
            s.accepted,
        )
        .counter(
            "intercept_tunnels_refused_total",
            "Tunnels refused.",
            s.refused,
        )
        .counter(
            "intercept_tunnels_closed_total",
            "Tunnels closed.",
            s.closed,
        )
        .counter(
            "intercept_capture_drops_total",
            "Frames dropped by the packet layer.",
            s.drops.total(),
        )
        .counter(
            "intercept_kernel_drops_total",
            "Frames the capture's kernel buffer dropped.",
            s.kernel_drops,
        )
        .gauge("intercept_tunnels", "Open tunnels.", self.tunnels.len())
        .gauge(
            "intercept_routes",
            "Routes in the table.",
            self.core.router.routes.len(),
        )
        .gauge(
            "intercept_delay_waiting",
            "Connections with responses held.",
            self.core.router.delay.len(),
        )
        .gauge(
            "intercept_captures_lost",
            "Capture devices lost now.",
            self.sources.iter().filter(|s| s.inner.is_lost()).count(),
        );
        e.finish()
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: self.stop_flag.clone(),
            waker: self.waker.clone(),
        }
    }

    /// SIGINT and SIGTERM stop the loop; `signals` were installed early by the caller (see
    /// [`install_signals`]), so a signal before the loop runs is not fatal.
    pub fn handle_signals(
        &mut self,
        mut signals: signal_hook_mio::v1_0::Signals,
    ) -> anyhow::Result<()> {
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        self.core.stats
    }

    fn now(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis
    }

    /// Runs until stopped; returns the final counters (also logged).
    pub fn run(&mut self) -> anyhow::Result<Stats> {
        let mut events = Events::with_capacity(1024);
        let mut next_housekeeping = HOUSEKEEPING_MS;
        let mut next_stats = STATS_PERIOD_MS;
        let mut read_again: Vec<TunnelId> = Vec::new();
        loop {
            let now = self.now();
            if self.accept_retry_at.is_some_and(|t| now >= t) {
                self.accept_retry_at = None;
                self.listener_pending = true;
            }
            let busy = self.listener_pending
                || !read_again.is_empty()
                || self.sources.iter().any(|s| s.pending);
            let wake_at = self
                .accept_retry_at
                .map_or(next_housekeeping, |t| t.min(next_housekeeping));
            let timeout = if busy {
                Duration::ZERO
            } else {
                Duration::from_millis(wake_at.saturating_sub(now).clamp(1, 500))
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("event loop poll failed"),
            }
            let now = self.now();
            if let Some(m) = self.metrics.as_mut() {
                m.tick(self.poll.registry(), Instant::now());
            }
            let mut to_read = std::mem::take(&mut read_again);
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.listener_pending = true,
                    WAKER => {}
                    SIGNALS => {
                        if let Some(s) = self.signals.as_mut() {
                            for sig in s.pending() {
                                warn!("sig {sig} received");
                                self.stop_flag.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                    token if self.metrics.as_ref().is_some_and(|m| m.owns(token)) => {
                        let text = self.render_metrics();
                        if let Some(m) = self.metrics.as_mut() {
                            m.on_event(self.poll.registry(), token, Instant::now(), || text);
                        }
                    }
                    Token(t) if (CAPTURE_BASE..TUNNEL_BASE).contains(&t) => {
                        if let Some(s) = self.sources.get_mut(t - CAPTURE_BASE) {
                            s.pending = true;
                        }
                    }
                    Token(t) => {
                        let id = (t - TUNNEL_BASE) as TunnelId;
                        if let Some(tunnel) = self.tunnels.get_mut(&id) {
                            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                            if readable && !tunnel.read_again {
                                tunnel.read_again = true;
                                to_read.push(id);
                            }
                            if ev.is_writable() || ev.is_write_closed() {
                                if !tunnel.write_out(self.poll.registry(), &mut self.core.stats) {
                                    tunnel.closing.get_or_insert("send failed");
                                }
                                tunnel.mark_dirty(&mut self.dirty);
                            }
                        }
                    }
                }
            }
            // Control first: CLIENT_ADDs that arrived with the responses route them.
            for id in to_read {
                if let Some(tunnel) = self.tunnels.get_mut(&id) {
                    tunnel.read_again = false;
                    if self.read_tunnel_budgeted(id, now) {
                        if let Some(t) = self.tunnels.get_mut(&id) {
                            t.read_again = true;
                            read_again.push(id);
                        }
                    }
                }
            }
            if self.listener_pending {
                self.accept(now);
            }
            self.read_captures(now);
            self.flush();
            if now >= next_housekeeping {
                self.housekeeping(now);
                next_housekeeping = now + HOUSEKEEPING_MS;
                let limit = self.cfg.capture_lost_exit.as_millis() as Millis;
                if let Some(dead) = self.capture_dead_for(now).filter(|&d| d >= limit) {
                    let names: Vec<String> =
                        self.sources.iter().map(|s| s.name().to_string()).collect();
                    self.shutdown();
                    anyhow::bail!(
                        "nothing could be captured for {} s: every capture device is lost ({})",
                        dead / 1000,
                        names.join(",")
                    );
                }
            }
            if now >= next_stats {
                self.log_stats("statistics");
                next_stats = now + STATS_PERIOD_MS;
            }
            self.close_finished();
            if self.stop_flag.load(Ordering::SeqCst) {
                break;
            }
        }
        self.shutdown();
        Ok(self.core.stats)
    }

    fn accept(&mut self, now: Millis) {
        for _ in 0..ACCEPT_BUDGET {
            let (stream, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the connections wait in the backlog, and no new
                    // event may come for them; try again on a timer, without spinning.
                    if self
                        .core
                        .peer_log
                        .allow(now, &mut self.core.stats.logs_suppressed)
                    {
                        error!("accept failed: {e} (retrying in {ACCEPT_RETRY_MS} ms)");
                    }
                    self.listener_pending = false;
                    self.accept_retry_at = Some(now + ACCEPT_RETRY_MS);
                    return;
                }
            };
            self.admit(stream, peer, now);
        }
        // Budget used: more may be waiting (edge-triggered), come back next turn.
        self.listener_pending = true;
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Millis) {
        // An IPv4-mapped peer (a dual-stack listener) counts as its IPv4 address.
        let peer_ip = match peer.ip() {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
            ip => ip,
        };
        let allowed = self.cfg.peer_allowed(peer_ip);
        let refuse = |core: &mut Core, why: &str| {
            core.stats.refused += 1;
            if core.peer_log.allow(now, &mut core.stats.logs_suppressed) {
                warn!("refused tcpcopy connection from {peer}: {why}");
            }
        };
        if !allowed {
            refuse(&mut self.core, "not in the --allow list");
            return;
        }
        if self.tunnels.len() >= self.cfg.max_tunnels {
            refuse(&mut self.core, "too many tunnels");
            return;
        }
        if self.per_peer.get(&peer_ip).copied().unwrap_or(0) >= self.cfg.peer_tunnels {
            refuse(
                &mut self.core,
                &format!(
                    "this address already has {} tunnels (--peer-tunnels)",
                    self.cfg.peer_tunnels
                ),
            );
            return;
        }
        if let Err(e) = stream.set_nodelay(true) {
            refuse(&mut self.core, &format!("TCP_NODELAY failed: {e}"));
            return;
        }
        let id = self.next_tunnel;
        self.next_tunnel += 1;
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(TUNNEL_BASE + id as usize),
            Interest::READABLE,
        ) {
            error!("cannot poll tunnel from {peer}: {e}");
            return;
        }
        let fd = stream.as_raw_fd();
        let token = Token(TUNNEL_BASE + id as usize);
        // Input holds one client record at most; output is bounded by TUNNEL_OUT_LIMIT.
        let max_unit = if self.core.ipv6 {
            CLIENT_ADD6_LEN
        } else {
            CLIENT_MSG_LEN
        };
        let conn = match FramedConn::new(stream, token, max_unit, TUNNEL_OUT_LIMIT) {
            Ok(c) => c,
            Err(e) => {
                error!("cannot set up tunnel from {peer}: {e}");
                return;
            }
        };
        self.core.stats.accepted += 1;
        *self.per_peer.entry(peer_ip).or_insert(0) += 1;
        info!("it adds fd:{fd} (tunnel {id} from {peer})");
        self.tunnels.insert(
            id,
            Tunnel {
                id,
                conn,
                peer,
                peer_ip,
                fd,
                accepted_at: now,
                last_input: now,
                handshaken: false,
                full_payload: false,
                ipv6: false,
                dirty: false,
                read_again: false,
                closing: None,
            },
        );
    }

    /// Reads and handles records; returns true if the budget ran out with data left.
    fn read_tunnel_budgeted(&mut self, id: TunnelId, now: Millis) -> bool {
        let Some(tunnel) = self.tunnels.get_mut(&id) else {
            return false;
        };
        let core = &mut self.core;
        let watches = &mut self.watches;
        let msgs = &mut self.msg_scratch;
        msgs.clear();
        let mut on_unit = |unit: &[u8]| {
            if let Ok(raw) = unit.try_into() {
                msgs.push(ClientUnit::Msg(raw));
            } else if let Some(add) = ClientAdd6::parse(unit) {
                msgs.push(ClientUnit::Add6(add));
            }
        };
        // IPv6 CLIENT_ADDs are read as such only by an intercept that grants them.
        let status = if core.ipv6 {
            tunnel
                .conn
                .read_units(&ClientRecords6, TUNNEL_READ_BUDGET, &mut on_unit)
        } else {
            tunnel
                .conn
                .read_units(&ClientRecords, TUNNEL_READ_BUDGET, &mut on_unit)
        };
        if !msgs.is_empty() {
            tunnel.last_input = now;
        }
        let mut joined = false;
        // Records that arrived before an end of stream or error are still handled.
        for unit in msgs.iter() {
            if tunnel.closing.is_some() {
                break;
            }
            let action = match unit {
                ClientUnit::Msg(raw) => core.on_client_msg(tunnel.view(), raw, now),
                ClientUnit::Add6(add) => core.on_client_add6(tunnel.view(), tunnel.ipv6, *add, now),
            };
            match action {
                MsgAction::Nothing => {}
                MsgAction::Handshaken => {
                    tunnel.handshaken = true;
                    joined = core.single_mode;
                }
                MsgAction::Close(why) => tunnel.closing = Some(why),
                MsgAction::Deliver(waiting) => {
                    for rec in waiting.records() {
                        if rec.starts_with(&tc_core::control::ipv6::V6_MARKER) {
                            tunnel.push6(rec, &mut core.stats);
                        } else {
                            tunnel.push(rec, core.fmt, core.max_batch, &mut core.stats);
                        }
                    }
                }
                MsgAction::Ipv6 => {
                    let grant = V6Grant { granted: core.ipv6 };
                    if grant.granted {
                        tunnel.ipv6 = true;
                        info!("tunnel {id} from {}: IPv6 variant granted", tunnel.peer);
                    } else {
                        warn!(
                            "tunnel {id} from {} asks for the IPv6 variant (tcpcopy replaying IPv6): refused, intercept runs without --ipv6",
                            tunnel.peer
                        );
                    }
                    let rec = grant.encode(core.fmt.record_len());
                    let mut not_counted = Stats::default();
                    tunnel.push(&rec, core.fmt, core.max_batch, &mut not_counted);
                }
                MsgAction::Probe(msg) => {
                    let client = SocketAddrV4::new(msg.client_ip, msg.client_port);
                    let target = SocketAddrV4::new(msg.target_ip, msg.target_port);
                    let reply = if msg.kind == PROBE_HELLO {
                        watches.hello(id, client, target, now)
                    } else {
                        watches.query(id, client, target, core.stats.responses)
                    };
                    let rec = reply.encode(core.fmt.record_len());
                    // Counted apart: the records and frames counters are the responses'.
                    let mut not_counted = Stats::default();
                    tunnel.push(&rec, core.fmt, core.max_batch, &mut not_counted);
                    core.stats.probe_replies += 1;
                }
                MsgAction::FullPayload => {
                    let grant = Grant {
                        granted: core.full_payload.is_some(),
                        cap: full_payload::DEFAULT_CAP,
                    };
                    if grant.granted {
                        if !tunnel.full_payload {
                            core.stats.full_payload_tunnels += 1;
                        }
                        tunnel.full_payload = true;
                        info!(
                            "tunnel {id} from {}: full payloads granted (up to {} bytes per response)",
                            tunnel.peer, grant.cap
                        );
                    } else {
                        warn!(
                            "tunnel {id} from {} asks for full payloads (tcpcopy --full-payload): refused, intercept runs without --full-payload",
                            tunnel.peer
                        );
                    }
                    let rec = grant.encode(core.fmt.record_len());
                    // Counted apart, like the probe's replies.
                    let mut not_counted = Stats::default();
                    tunnel.push(&rec, core.fmt, core.max_batch, &mut not_counted);
                }
            }
        }
        let more = match status {
            Ok(ReadStatus::Drained) => false,
            Ok(ReadStatus::BudgetUsed) => tunnel.closing.is_none(),
            Err(ConnError::Closed) => {
                info!(
                    "recv length 0,fd:{} (tunnel {} from {})",
                    tunnel.fd, id, tunnel.peer
                );
                tunnel.closing.get_or_insert("peer closed");
                false
            }
            Err(e) => {
                info!("recv error on tunnel {id} from {}: {e}", tunnel.peer);
                tunnel.closing.get_or_insert("receive error");
                false
            }
        };
        tunnel.mark_dirty(&mut self.dirty);
        if joined {
            self.single_admit(id, now);
        }
        more
    }

    /// `--single`: a tunnel joins the group once its version record is valid, so a connection
    /// that sends nothing valid (a port scan) cannot replace the running tcpcopy's tunnels.
    fn single_admit(&mut self, id: TunnelId, now: Millis) {
        let Some(peer) = self.tunnels.get(&id).map(|t| t.peer) else {
            return;
        };
        match self.core.single.admit(id, now) {
            Admission::Joined => {}
            Admission::Spare => warn!(
                "reach the fd limit for single:{}",
                tc_core::control::routing::SINGLE_MAX_TUNNELS
            ),
            Admission::NewGroup { close } => {
                warn!("it does not support distributed clients: new tcpcopy from {peer}, closing {} old tunnels", close.len());
                for old in close {
                    if let Some(t) = self.tunnels.get_mut(&old) {
                        t.closing
                            .get_or_insert("replaced by a new tcpcopy (--single)");
                    }
                }
            }
            Admission::Refused => {
                self.core.stats.refused += 1;
                if self
                    .core
                    .peer_log
                    .allow(now, &mut self.core.stats.logs_suppressed)
                {
                    warn!("refused tcpcopy connection from {peer}: sth tries to connect to server (-c: the first tcpcopy is still connected)");
                }
                if let Some(t) = self.tunnels.get_mut(&id) {
                    t.closing = Some("refused (--single -c)");
                }
            }
        }
    }

    fn read_captures(&mut self, now: Millis) {
        let Server {
            sources,
            core,
            tunnels,
            dirty,
            ..
        } = self;
        for s in sources.iter_mut().filter(|s| s.pending) {
            let Some(source) = s.inner.source_mut() else {
                s.pending = false;
                continue;
            };
            let mut on_frame = |link: LinkType, frame: &[u8]| {
                let route = core.on_frame(link, frame, now);
                if let FrameRoute::Forward6(t, unit) = &route {
                    match tunnels.get_mut(t) {
                        Some(tunnel) => {
                            tunnel.push6(unit.as_bytes(), &mut core.stats);
                            tunnel.mark_dirty(dirty);
                        }
                        None => core.unrouted(now, || format!("tunnel {t} is gone")),
                    }
                }
                if let FrameRoute::Forward(t, record) = route {
                    match tunnels.get_mut(&t) {
                        Some(tunnel) => {
                            tunnel.push(
                                record.as_bytes(),
                                core.fmt,
                                core.max_batch,
                                &mut core.stats,
                            );
                            if tunnel.full_payload && tunnel.closing.is_none() {
                                if let Some(fp) = core.full_payload.as_mut() {
                                    fp.send(link, frame, core.rewrite, tunnel, &mut core.stats);
                                }
                            }
                            tunnel.mark_dirty(dirty);
                        }
                        // Routes leave with their tunnel, so this is not expected.
                        None => core.unrouted(now, || format!("tunnel {t} is gone")),
                    }
                }
            };
            match source.read_frames(CAPTURE_BUDGET, &mut on_frame) {
                Ok(n) => {
                    log::trace!("capture {}: {n} frames", s.name());
                    s.pending = n >= CAPTURE_BUDGET
                }
                // A device deleted or gone down: dropped, reopened by the housekeeping.
                Err(e) => s.lose(now, &e),
            }
        }
    }

    /// Writes every tunnel that got records (or input) this turn.
    fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for id in &dirty {
            let Some(t) = self.tunnels.get_mut(id) else {
                continue;
            };
            t.dirty = false;
            if t.closing.is_none() && !t.write_out(self.poll.registry(), &mut self.core.stats) {
                t.closing = Some("send failed");
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// How long no capture has worked, if none works now.
    fn capture_dead_for(&self, now: Millis) -> Option<Millis> {
        if self.sources.iter().any(|s| !s.inner.is_lost()) {
            return None;
        }
        let since = self
            .sources
            .iter()
            .filter_map(|s| s.inner.lost_at())
            .max()?;
        Some((now as u128).saturating_sub(since.as_millis()) as Millis)
    }

    fn housekeeping(&mut self, now: Millis) {
        for s in self.sources.iter_mut() {
            if s.inner.check_device(Duration::from_millis(now)) {
                s.pending = false;
            }
        }
        for (i, s) in self.sources.iter_mut().enumerate() {
            s.try_reopen(self.poll.registry(), Token(CAPTURE_BASE + i), now);
        }
        self.core.router.tick(now);
        self.watches.tick(now);
        self.check_capture_alive(now);
        let clock = Instant::now();
        let input_timeout = Duration::from_millis(TUNNEL_INPUT_TIMEOUT_MS);
        let send_timeout = Duration::from_millis(TUNNEL_SEND_TIMEOUT_MS);
        let idle_ms = self.cfg.idle_tunnel_timeout.as_millis() as Millis;
        for t in self.tunnels.values_mut() {
            if t.closing.is_some() {
                continue;
            }
            if !t.handshaken && now.saturating_sub(t.accepted_at) >= TUNNEL_INPUT_TIMEOUT_MS {
                t.closing = Some("no version record in time");
            } else if idle_ms > 0
                && !self.core.single_mode
                && now.saturating_sub(t.last_input) >= idle_ms
                && self.core.router.routes.tunnel_routes(t.id) == 0
            {
                t.closing = Some("idle: holds no route and sent nothing (--idle-tunnel-timeout)");
            } else if t.conn.input_stalled_for(clock) >= Some(input_timeout) {
                t.closing = Some("incomplete record (peer stopped mid-record)");
            } else if t.conn.output_stalled_for(clock) >= Some(send_timeout) {
                t.closing = Some("send timeout (peer does not read)");
            }
        }
        let mut kernel = 0;
        let mut known = false;
        for s in &mut self.sources {
            if let Some(d) = s.inner.source_mut().and_then(|s| s.kernel_drops()) {
                kernel += d;
                known = true;
            }
        }
        if known {
            self.core.stats.kernel_drops = kernel;
        }
    }

    /// Warns (at most once a minute) when the capture has taken nothing for 30 s while
    /// tcpcopy peers keep announcing sessions: the target's answers do not reach this host,
    /// or `-F` does not match them.
    fn check_capture_alive(&mut self, now: Millis) {
        let s = &self.core.stats;
        if let Some((quiet, adds)) = self.capture_watch.judge(now, s.responses, s.client_adds) {
            warn!(
                "captured no response for {} s while tcpcopy announced {adds} sessions: the target's answers do not reach this host (on the target: ip route add FAKE_CLIENT_NET via THIS_HOST) or the filter '{}' does not match them (run tcpcopy --check)",
                quiet / 1000,
                self.cfg.filter
            );
        }
    }

    fn close_finished(&mut self) {
        let finished: Vec<TunnelId> = self
            .tunnels
            .values()
            .filter(|t| t.closing.is_some())
            .map(|t| t.id)
            .collect();
        for id in finished {
            self.release(id);
        }
    }

    fn release(&mut self, id: TunnelId) {
        self.watches.forget_tunnel(id);
        let Some(mut t) = self.tunnels.remove(&id) else {
            return;
        };
        let why = t.closing.unwrap_or("shutdown");
        let lost = t.conn.pending_output();
        info!(
            "release tunnel resources, fd:{} (tunnel {id} from {}): {why}{}",
            t.fd,
            t.peer,
            if lost > 0 {
                format!(", {lost} unsent bytes dropped")
            } else {
                String::new()
            }
        );
        t.conn.deregister(self.poll.registry());
        if let Some(n) = self.per_peer.get_mut(&t.peer_ip) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&t.peer_ip);
            }
        }
        self.core.router.tunnel_closed(id);
        self.core.single.remove(id);
        self.core.stats.closed += 1;
    }

    fn log_stats(&self, what: &str) {
        let s = &self.core.stats;
        let r = &self.core.router.routes.stats;
        let d = &self.core.router.delay.stats;
        info!(
            "total resp packs:{}, all:{}, route:{}, sock write cnt:{}",
            s.responses, s.all, s.client_adds, s.writes
        );
        info!(
            "{what}: route hit:{},lost:{},routes:{},all sessions:{},evicted:{},expired:{},purged:{},refused adds:{}",
            r.hits,
            r.lost,
            self.core.router.routes.len(),
            r.adds,
            r.evicted,
            r.expired,
            r.purged,
            r.refused
        );
        info!(
            "{what}: delayed:{},delay actual sent:{},delay expired:{},delay full:{},waiting:{},delay bytes:{}",
            d.delayed,
            d.sent,
            d.expired,
            d.full,
            self.core.router.delay.len(),
            self.core.router.delay.bytes()
        );
        info!(
            "{what}: records sent:{},unrouted:{},overflow:{},tunnels:{},accepted:{},refused:{},closed:{},unknown msg types:{},probe replies:{}",
            s.records_sent,
            s.unrouted,
            s.overflow,
            self.tunnels.len(),
            s.accepted,
            s.refused,
            s.closed,
            s.unknown_msgs,
            s.probe_replies
        );
        info!(
            "{what}: capture frames:{},drops:{},kernel drops:{},log lines suppressed:{}",
            s.frames, s.drops, s.kernel_drops, s.logs_suppressed
        );
        if self.core.full_payload.is_some() {
            info!(
                "{what}: full payload tunnels:{},data messages:{},data bytes:{},capped bytes:{},dropped (tunnel backed up):{}",
                s.full_payload_tunnels,
                s.data_messages,
                s.data_bytes,
                s.data_capped_bytes,
                s.data_dropped
            );
        }
    }

    fn shutdown(&mut self) {
        info!("release_resources begin");
        // Deliver what is already queued, without waiting for slow peers.
        for t in self.tunnels.values_mut() {
            if t.closing.is_none() {
                let _ = t.write_out(self.poll.registry(), &mut self.core.stats);
            }
        }
        let ids: Vec<TunnelId> = self.tunnels.keys().copied().collect();
        for id in ids {
            self.release(id);
        }
        self.log_stats("final");
        info!("release_resources end");
    }
}

/// `--full-payload`: what intercept sends a granted tunnel after each record (see
/// `tc_core::control::full_payload`).
struct FullPayload {
    /// Per connection slot: (connection hash, the response's ack, bytes sent, cut).
    slots: Box<[(u64, u32, u32, bool)]>,
    /// The message being built (reused).
    message: Vec<u8>,
}

impl FullPayload {
    fn new() -> FullPayload {
        FullPayload {
            slots: vec![(0, 0, 0, false); CAP_SLOTS].into_boxed_slice(),
            message: Vec::with_capacity(full_payload::MAX_UNIT),
        }
    }

    /// The data message of a captured response that carries data, FIN or RST, queued on
    /// `tunnel` (at most the cap per response; dropped and counted when the tunnel is backed
    /// up).
    fn send(
        &mut self,
        link: LinkType,
        frame: &[u8],
        rewrite: Option<(Ipv4Addr, Ipv4Addr)>,
        tunnel: &mut Tunnel,
        stats: &mut Stats,
    ) {
        let Ok(ip) = ipv4_payload(link, frame) else {
            return;
        };
        let Ok(pkt) = TcpPacket::parse(ip, Completeness::HeadersOnly) else {
            return;
        };
        let payload = pkt.payload();
        let payload = &payload[..payload.len().min(pkt.payload_len())];
        let mut flags_ = 0;
        if pkt.has_flags(flags::FIN) {
            flags_ |= full_payload::DATA_FIN;
        }
        if pkt.has_flags(flags::RST) {
            flags_ |= full_payload::DATA_RST;
        }
        if payload.is_empty() && flags_ == 0 {
            return;
        }
        // Full payloads are IPv4 only (ipv4_payload above).
        let (IpAddr::V4(mut client_ip), IpAddr::V4(target_ip)) = (pkt.dst_ip(), pkt.src_ip())
        else {
            return;
        };
        if let Some((from, to)) = rewrite {
            if client_ip == from {
                client_ip = to;
            }
        }
        let client = SocketAddrV4::new(client_ip, pkt.dst_port());
        let target = SocketAddrV4::new(target_ip, pkt.src_port());
        // The bytes of one response: sent while the target's ack stays the same.
        let h = conn_hash(client, target);
        let slot = &mut self.slots[(h % CAP_SLOTS as u64) as usize];
        if slot.0 != h || slot.1 != pkt.ack() {
            *slot = (h, pkt.ack(), 0, false);
        }
        let room = full_payload::DEFAULT_CAP.saturating_sub(slot.2) as usize;
        let mut keep = payload.len().min(room);
        if payload.len() < pkt.payload_len() {
            // Not all captured (a frame beyond the snap length): the rest is unknown.
            flags_ |= full_payload::DATA_CUT;
        }
        if keep < payload.len() {
            stats.data_capped_bytes += (payload.len() - keep) as u64;
            if slot.3 && flags_ == 0 {
                return;
            }
            slot.3 = true;
            flags_ |= full_payload::DATA_CUT;
        }
        keep = keep.min(full_payload::MAX_DATA);
        slot.2 += keep as u32;
        self.message.clear();
        Data {
            flags: flags_,
            client,
            target,
            seq: pkt.seq(),
            ack: pkt.ack(),
            payload: &payload[..keep],
        }
        .encode(&mut self.message);
        if tunnel.conn.pending_output() + self.message.len() > DATA_OUT_LIMIT {
            stats.data_dropped += 1;
            return;
        }
        if tunnel.conn.queue_data(&self.message).is_err() {
            tunnel.closing = Some("send queue full (peer does not read)");
            return;
        }
        stats.data_messages += 1;
        stats.data_bytes += keep as u64;
    }
}

/// A hash of a connection for the cap table (never 0 for a real one).
fn conn_hash(client: SocketAddrV4, target: SocketAddrV4) -> u64 {
    let a = u64::from(u32::from(*client.ip())) << 16 | u64::from(client.port());
    let b = u64::from(u32::from(*target.ip())) << 16 | u64::from(target.port());
    let mut h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b;
    h ^= h >> 31;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (h ^ (h >> 29)) | 1
}

#[cfg(test)]
mod tests {
    use super::CaptureWatch;

    #[test]
    fn nothing_captured_for_30_s_while_sessions_are_announced_warns_once_a_minute() {
        let mut w = CaptureWatch::default();
        // Nobody announces anything: no warning however long.
        assert_eq!(w.judge(100_000, 0, 0), None);
        // Announcements from 100 s on, nothing captured.
        assert_eq!(w.judge(100_000, 0, 3), None);
        assert_eq!(w.judge(129_800, 0, 5), None);
        assert_eq!(w.judge(130_000, 0, 6), Some((30_000, 6)));
        // Not again within a minute, nor without new announcements.
        assert_eq!(w.judge(150_000, 0, 9), None);
        assert_eq!(w.judge(190_000, 0, 9), Some((90_000, 9)));
        assert_eq!(w.judge(260_000, 0, 9), None);
        // A response captured: all is well again.
        assert_eq!(w.judge(261_000, 1, 10), None);
        assert_eq!(w.judge(300_000, 1, 11), None);
    }
}
