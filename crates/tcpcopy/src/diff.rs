//! `--diff`: pairs each replayed connection's production responses (captured on this host, or
//! read from the offline file) with the target's (intercept's `--full-payload` data messages),
//! compares them with `tc_core::compare`, writes one JSON object per difference and keeps the
//! summary for the statistics, `--report` and `--metrics`.
//!
//! Both sides of a connection share the client's byte numbering (tcpcopy replays the client's
//! sequence numbers), so a response is identified by the acknowledgment number its segments
//! carry: each side's responses are cut where its ack moves forward (a new request was read),
//! and the n-th response of production is paired with the n-th of the target (lock-step).
//! Retransmitted and duplicated segments are skipped by sequence number; a capture gap marks
//! the response truncated.
//!
//! With `--diff-protocol redis` the replies are paired by position instead (the k-th reply of
//! production with the k-th of the target, each side's stream framed as RESP): clients
//! pipeline commands, and how a pipeline is cut into segments, and so where each side's ack
//! moves, differs between the two servers. The request excerpts then come from the client's
//! commands, framed the same way.
//!
//! Memory: at most `max_session_bytes` response bytes per connection (the pairer's bound),
//! `max_total_bytes` in all (beyond it responses are cut and counted), at most
//! [`MAX_CONNECTIONS`] connections followed; idle connections are given up after
//! [`IDLE_TIMEOUT`].

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tc_core::compare::{
    pairing::DEFAULT_MAX_PENDING, resp, Comparator, Comparison, DiffKind, Excerpt, Gone, Options,
    Pairer, Pairing, Protocol, Record, Side, Summary,
};
use tc_core::control::full_payload::{Data, DATA_CUT, DATA_FIN, DATA_RST, DEFAULT_CAP};
use tc_core::metrics::{Exposition, Kind};
use tc_core::packet::{Completeness, TcpPacket};
use tc_core::session::Key;

/// Connections followed at once; beyond it new ones are not compared (counted).
pub const MAX_CONNECTIONS: usize = 200_000;
/// A connection with no new bytes on either side this long is ended on both sides.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Client segments whose first bytes are kept per connection until the first side answers
/// past them (the request excerpts; production's capture may lag the client's).
const REQUESTS_KEPT: usize = 256;
const REQUEST_EXCERPT: usize = 96;
/// Request excerpts waiting for their pair, per connection (past it the oldest go).
const EXCERPTS_KEPT: usize = 1024;
/// By position: the longest start of a client command carried over to the next segment; past
/// it the connection's request excerpts stop.
const COMMAND_CARRY: usize = 4096;
/// By position: replies waiting for their pair per side and connection (past it the side is
/// given up on, `overflow`); lock-step keeps the pairer's default.
const POSITIONAL_PENDING: usize = 4096;

/// `--diff FILE` and its options.
#[derive(Debug, Clone)]
pub struct DiffConfig {
    pub file: PathBuf,
    /// `--diff-protocol` (`None`: detect).
    pub protocol: Option<Protocol>,
    pub ignore_headers: Vec<String>,
    pub max_session_bytes: usize,
    pub max_total_bytes: usize,
}

/// Counters of the engine besides the comparison summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiffCounters {
    pub connections: u64,
    /// Connections not followed: [`MAX_CONNECTIONS`] reached.
    pub untracked: u64,
    /// Responses cut because the global byte bound was reached.
    pub memory_cap_hits: u64,
    /// Segments missing in a side's byte stream (capture loss, or data intercept dropped).
    pub gaps: u64,
    /// Responses cut by intercept at its per-response cap.
    pub capped: u64,
    /// Production / target segments of no followed connection.
    pub unknown_production: u64,
    pub unknown_target: u64,
    pub differences_written: u64,
    pub write_errors: u64,
    /// Production's answers the capture dropped (kernel buffer full): their responses are
    /// cut or unpaired.
    pub capture_drops: u64,
}

#[derive(Debug, Default)]
struct SideTrack {
    next_seq: Option<u32>,
    last_ack: Option<u32>,
    /// Responses started (ack moves).
    count: u64,
    /// Bytes of the current response taken (the per-response cap).
    resp_bytes: usize,
    ended: bool,
}

struct Conn {
    online: Key,
    pairer: Pairer,
    sides: [SideTrack; 2],
    first_data: Option<u32>,
    /// Recent client segments: (seq, end, excerpt length, excerpt).
    requests: VecDeque<(u32, u32, u8, [u8; REQUEST_EXCERPT])>,
    /// The excerpt of request n, taken when the first side starts answering it (the
    /// request is then among the last client segments).
    /// (request number, its first byte, the ack that ended it, the excerpt: empty while
    /// its segment has not been seen, filled when it comes). Raw bytes: made printable only
    /// for a difference written.
    excerpts: VecDeque<(u64, Option<u32>, u32, RawExcerpt)>,
    /// By position: the client's commands (the excerpts of message k are command k's).
    commands: Option<Commands>,
    last_active: Instant,
}

/// The client's byte stream cut into commands (RESP arrays, or inline lines), for pairing by
/// position.
#[derive(Default)]
struct Commands {
    next: Option<u32>,
    /// The start of a command the last segment ended in.
    carry: Vec<u8>,
    count: u64,
    /// A gap in the client's stream or an over-long command: no more excerpts.
    lost: bool,
}

impl Commands {
    /// A client segment's payload at `seq`: each command that ends in it gets an excerpt.
    fn take(
        &mut self,
        seq: u32,
        payload: &[u8],
        excerpts: &mut VecDeque<(u64, Option<u32>, u32, RawExcerpt)>,
    ) {
        if self.lost || payload.is_empty() {
            return;
        }
        let mut data = payload;
        if let Some(next) = self.next {
            let end = seq.wrapping_add(payload.len() as u32);
            if !seq_gt(end, next) {
                return;
            }
            if seq_gt(next, seq) {
                data = &data[next.wrapping_sub(seq) as usize..];
            } else if seq_gt(seq, next) {
                self.lost = true;
                return;
            }
        }
        self.next = Some(seq.wrapping_add(payload.len() as u32));
        let mut push = |count: &mut u64, cmd: &[u8]| {
            *count += 1;
            let n = cmd.len().min(REQUEST_EXCERPT);
            let mut b = [0u8; REQUEST_EXCERPT];
            b[..n].copy_from_slice(&cmd[..n]);
            if excerpts.len() >= EXCERPTS_KEPT {
                excerpts.pop_front();
            }
            excerpts.push_back((*count, None, 0, (n as u8, b)));
        };
        if self.carry.is_empty() {
            let used = frame_commands(data, |cmd| push(&mut self.count, cmd));
            self.carry.extend_from_slice(&data[used..]);
        } else {
            self.carry.extend_from_slice(data);
            let carry = std::mem::take(&mut self.carry);
            let used = frame_commands(&carry, |cmd| push(&mut self.count, cmd));
            self.carry = carry;
            self.carry.drain(..used);
        }
        if self.carry.len() > COMMAND_CARRY {
            self.lost = true;
            self.carry = Vec::new();
        }
    }
}

/// Calls `f` with each complete command at the start of `bytes` (a RESP array, or an inline
/// command line); how many bytes they took.
fn frame_commands(bytes: &[u8], mut f: impl FnMut(&[u8])) -> usize {
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let n = if rest[0] == b'*' {
            resp::reply_len(rest, false)
        } else {
            rest.iter().position(|&b| b == b'\n').map(|i| i + 1)
        };
        let Some(n) = n.filter(|&n| n > 0) else {
            break;
        };
        f(&rest[..n]);
        at += n;
    }
    at
}

/// The first bytes of a request, as captured (length, bytes).
type RawExcerpt = (u8, [u8; REQUEST_EXCERPT]);

fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Production => 0,
        Side::Target => 1,
    }
}

pub struct DiffEngine {
    cfg: DiffConfig,
    comparator: Comparator,
    conns: HashMap<Key, Conn>,
    by_online: HashMap<Key, Key>,
    held: usize,
    pub summary: Summary,
    pub counters: DiffCounters,
    out: BufWriter<File>,
    path_shown: String,
}

impl DiffEngine {
    /// Creates (truncates) the difference file.
    pub fn open(cfg: DiffConfig) -> anyhow::Result<DiffEngine> {
        let file = File::create(&cfg.file).map_err(|e| {
            anyhow::anyhow!("cannot create the --diff file {}: {e}", cfg.file.display())
        })?;
        let comparator = Comparator::new(&Options {
            protocol: cfg.protocol,
            ignore_headers: cfg.ignore_headers.clone(),
            ..Options::default()
        });
        Ok(DiffEngine {
            path_shown: cfg.file.display().to_string(),
            cfg,
            comparator,
            conns: HashMap::new(),
            by_online: HashMap::new(),
            held: 0,
            summary: Summary::default(),
            counters: DiffCounters::default(),
            out: BufWriter::new(file),
        })
    }

    pub fn path(&self) -> &str {
        &self.path_shown
    }

    /// Connections followed now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Response bytes held now, all connections.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// A client packet as captured (`datagram`), and what the replay made of its connection
    /// (`Replayer::last_mapping`).
    pub fn on_client(&mut self, now: Instant, datagram: &[u8], mapping: Option<(Key, Key)>) {
        let Some((online, replayed)) = mapping else {
            return;
        };
        let Ok(p) = TcpPacket::parse(datagram, Completeness::Whole) else {
            return;
        };
        let syn = p.syn() && !p.has_flags(tc_core::packet::flags::ACK);
        let payload = p.payload();
        if !syn && payload.is_empty() {
            return;
        }
        let fresh = match self.conns.get(&replayed) {
            Some(c) => syn && c.first_data != Some(p.seq().wrapping_add(1)) || c.online != online,
            None => true,
        };
        if fresh {
            if self.conns.contains_key(&replayed) {
                self.finish(replayed, Gone::TimedOut);
            }
            if let Some(old) = self.by_online.get(&online).copied() {
                self.finish(old, Gone::TimedOut);
            }
            if self.conns.len() >= MAX_CONNECTIONS {
                self.counters.untracked += 1;
                return;
            }
            self.counters.connections += 1;
            let positional = self.cfg.protocol == Some(Protocol::Redis);
            let mode = if positional {
                Pairing::Positional(Protocol::Redis)
            } else {
                Pairing::LockStep
            };
            // By position, production may run a few pipelines ahead: more (small) replies
            // wait than answers in lock-step (each still within the byte bound).
            let pending = if positional {
                POSITIONAL_PENDING
            } else {
                DEFAULT_MAX_PENDING
            };
            let pairer = Pairer::new(mode, self.cfg.max_session_bytes).with_max_pending(pending);
            self.conns.insert(
                replayed,
                Conn {
                    online,
                    pairer,
                    sides: Default::default(),
                    first_data: Some(if syn {
                        p.seq().wrapping_add(1)
                    } else {
                        p.seq()
                    }),
                    requests: VecDeque::new(),
                    excerpts: VecDeque::new(),
                    commands: positional.then(Commands::default),
                    last_active: now,
                },
            );
            self.by_online.insert(online, replayed);
        }
        let Some(c) = self.conns.get_mut(&replayed) else {
            return;
        };
        c.last_active = now;
        if let Some(cmds) = c.commands.as_mut() {
            cmds.take(p.seq(), payload, &mut c.excerpts);
        } else if !payload.is_empty() {
            if c.requests.len() >= REQUESTS_KEPT {
                c.requests.pop_front();
            }
            let n = payload.len().min(REQUEST_EXCERPT);
            let mut b = [0u8; REQUEST_EXCERPT];
            b[..n].copy_from_slice(&payload[..n]);
            let end = p.seq().wrapping_add(payload.len() as u32);
            c.requests.push_back((p.seq(), end, n as u8, b));
            // An answer captured before its request (two captures, two sockets).
            for e in c.excerpts.iter_mut().filter(|e| e.3 .0 == 0) {
                if e.1 == Some(p.seq()) || e.2 == end {
                    e.3 = (n as u8, b);
                }
            }
        }
    }

    /// A production server segment (this host's outgoing capture, or the offline file).
    /// Segments of connections not followed are counted and ignored.
    pub fn on_production(&mut self, now: Instant, datagram: &[u8]) {
        let Ok(p) = TcpPacket::parse(datagram, Completeness::Whole) else {
            return;
        };
        let online = (p.dst_ip(), p.dst_port(), p.src_ip(), p.src_port());
        let Some(key) = self.by_online.get(&online).copied() else {
            if !p.payload().is_empty() {
                self.counters.unknown_production += 1;
            }
            return;
        };
        let mut flags_ = 0;
        if p.fin() {
            flags_ |= DATA_FIN;
        }
        if p.rst() {
            flags_ |= DATA_RST;
        }
        let (seq, ack, payload) = (p.seq(), p.ack(), p.payload());
        self.feed(now, key, Side::Production, seq, ack, payload, flags_);
    }

    /// One data message of intercept's.
    pub fn on_target(&mut self, now: Instant, d: &Data) {
        let key = (
            (*d.client.ip()).into(),
            d.client.port(),
            (*d.target.ip()).into(),
            d.target.port(),
        );
        if !self.conns.contains_key(&key) {
            if !d.payload.is_empty() {
                self.counters.unknown_target += 1;
            }
            return;
        }
        self.feed(now, key, Side::Target, d.seq, d.ack, d.payload, d.flags);
    }

    #[allow(clippy::too_many_arguments)]
    fn feed(
        &mut self,
        now: Instant,
        key: Key,
        side: Side,
        seq: u32,
        ack: u32,
        payload: &[u8],
        flags_: u8,
    ) {
        let room = self.cfg.max_total_bytes.saturating_sub(self.held);
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let s = &mut c.sides[side_index(side)];
        if s.ended {
            return;
        }
        c.last_active = now;
        let before = c.pairer.held_bytes();
        let mut data = payload;
        let mut gap = false;
        if !data.is_empty() {
            match s.next_seq {
                None => {}
                Some(next) => {
                    let end = seq.wrapping_add(data.len() as u32);
                    if !seq_gt(end, next) {
                        data = &[];
                    } else if seq_gt(next, seq) {
                        data = &data[next.wrapping_sub(seq) as usize..];
                    } else if seq_gt(seq, next) {
                        gap = true;
                    }
                }
            }
        }
        if !data.is_empty() {
            let end = seq.wrapping_add(payload.len() as u32);
            s.next_seq = Some(end);
            if s.last_ack.is_none_or(|a| seq_gt(ack, a)) {
                // Request n runs from the ack of answer n - 1 (or the first byte) to `ack`.
                let start = s.last_ack.or(c.first_data);
                s.last_ack = Some(ack);
                s.count += 1;
                s.resp_bytes = 0;
                let n = s.count;
                c.pairer.request(side);
                if c.commands.is_none() && c.excerpts.back().is_none_or(|e| e.0 < n) {
                    // The segment where the request starts, else the one where it ends.
                    let text = start
                        .and_then(|start| c.requests.iter().find(|r| r.0 == start))
                        .or_else(|| c.requests.iter().find(|r| r.1 == ack))
                        .map_or((0, [0; REQUEST_EXCERPT]), |r| (r.2, r.3));
                    if c.excerpts.len() >= EXCERPTS_KEPT {
                        c.excerpts.pop_front();
                    }
                    c.excerpts.push_back((n, start, ack, text));
                    // The leading side answered up to `ack`: earlier requests are done with.
                    while c.requests.front().is_some_and(|r| !seq_gt(r.1, ack)) {
                        c.requests.pop_front();
                    }
                }
            }
            if gap {
                self.counters.gaps += 1;
                c.pairer.mark_truncated(side);
            }
            // Both sides are cut at intercept's cap, so a long answer compares as far as
            // both were kept (and is reported as truncated).
            let cap_room = (DEFAULT_CAP as usize).saturating_sub(s.resp_bytes);
            let mut take = data.len().min(cap_room);
            if take < data.len() {
                c.pairer.mark_truncated(side);
            }
            if take > room {
                take = room;
                self.counters.memory_cap_hits += 1;
                c.pairer.mark_truncated(side);
            }
            s.resp_bytes += take;
            c.pairer.response(side, &data[..take]);
        }
        if flags_ & DATA_CUT != 0 {
            self.counters.capped += 1;
            c.pairer.mark_truncated(side);
        }
        if flags_ & (DATA_FIN | DATA_RST) != 0 {
            s.ended = true;
            c.pairer.end(side, Gone::Closed);
        }
        let after = c.pairer.held_bytes();
        self.held = adjust(self.held, before, after);
        self.drain(key);
    }

    /// Takes the records the connection's pairer has ready; removes it once it is finished.
    fn drain(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let before = c.pairer.held_bytes();
        let mut next = c.pairer.poll();
        let after = c.pairer.held_bytes();
        self.held = adjust(self.held, before, after);
        while let Some(r) = next {
            self.record(key, r);
            next = self.conns.get_mut(&key).and_then(|c| c.pairer.poll());
        }
        let finished = self.conns.get(&key).is_some_and(|c| c.pairer.is_finished());
        if finished {
            self.remove(key);
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.held = self.held.saturating_sub(c.pairer.held_bytes());
            self.summary
                .record_truncation(c.pairer.truncated_responses(), c.pairer.truncated_bytes());
            if self.by_online.get(&c.online) == Some(&key) {
                self.by_online.remove(&c.online);
            }
        }
    }

    /// Ends both sides of a connection (`why`) and takes its last records.
    fn finish(&mut self, key: Key, why: Gone) {
        if let Some(c) = self.conns.get_mut(&key) {
            let before = c.pairer.held_bytes();
            c.pairer.end(Side::Production, why);
            c.pairer.end(Side::Target, why);
            let after = c.pairer.held_bytes();
            self.held = adjust(self.held, before, after);
        }
        self.drain(key);
        self.remove(key);
    }

    fn record(&mut self, key: Key, r: Record) {
        let n = match &r {
            Record::Pair(p) => p.request,
            Record::Unpaired(u) => u.request,
        };
        self.record_one(key, r);
        if let Some(c) = self.conns.get_mut(&key) {
            while c.excerpts.front().is_some_and(|e| e.0 <= n) {
                c.excerpts.pop_front();
            }
        }
    }

    fn record_one(&mut self, key: Key, r: Record) {
        match r {
            Record::Pair(pair) => {
                let cmp = self.comparator.compare_pair(&pair);
                self.summary.record(&cmp);
                if let Comparison::Different(d) = &cmp {
                    let protocol = self
                        .comparator
                        .protocol_for(&pair.production.bytes, &pair.target.bytes);
                    let v = json!({
                        "connection": self.connection_value(key),
                        "request": pair.request,
                        "request_excerpt": self.request_excerpt(key, pair.request),
                        "protocol": protocol.name(),
                        "kind": d.kind.name(),
                        "header": d.header,
                        "production": d.production.as_str(),
                        "target": d.target.as_str(),
                        "production_truncated": pair.production.truncated,
                        "target_truncated": pair.target.truncated,
                    });
                    self.write(&v);
                }
            }
            Record::Unpaired(u) => {
                self.summary.record_unpaired(&u);
                let side = match u.side {
                    Side::Production => "production",
                    Side::Target => "target",
                };
                let v = json!({
                    "connection": self.connection_value(key),
                    "request": u.request,
                    "request_excerpt": self.request_excerpt(key, u.request),
                    "kind": "unpaired",
                    "only": side,
                    "other_side": u.gone.name(),
                    "excerpt": Excerpt::of(&u.response.bytes).as_str(),
                });
                self.write(&v);
            }
        }
    }

    fn connection_value(&self, key: Key) -> Value {
        let replayed = format!(
            "{} -> {}",
            SocketAddr::new(key.0, key.1),
            SocketAddr::new(key.2, key.3)
        );
        match self.conns.get(&key) {
            Some(c) => json!({
                "online": format!(
                    "{} -> {}",
                    SocketAddr::new(c.online.0, c.online.1),
                    SocketAddr::new(c.online.2, c.online.3)
                ),
                "replayed": replayed,
            }),
            None => json!({ "replayed": replayed }),
        }
    }

    /// The first bytes of request `n` (see `Conn::excerpts`).
    fn request_excerpt(&self, key: Key, n: u64) -> String {
        let Some(c) = self.conns.get(&key) else {
            return String::new();
        };
        c.excerpts
            .iter()
            .find(|e| e.0 == n)
            .map(|e| {
                Excerpt::of(&e.3 .1[..usize::from(e.3 .0)])
                    .as_str()
                    .to_string()
            })
            .unwrap_or_default()
    }

    fn write(&mut self, v: &Value) {
        let ok =
            serde_json::to_writer(&mut self.out, v).is_ok() && self.out.write_all(b"\n").is_ok();
        if ok {
            self.counters.differences_written += 1;
        } else {
            self.counters.write_errors += 1;
            if self.counters.write_errors == 1 {
                log::error!("cannot write to the --diff file {}", self.path_shown);
            }
        }
    }

    /// Gives up connections idle for [`IDLE_TIMEOUT`]; flushes the file.
    pub fn tick(&mut self, now: Instant) {
        let idle: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_active) >= IDLE_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.finish(key, Gone::TimedOut);
        }
        let _ = self.out.flush();
    }

    /// At exit: every connection still open is ended (as timed out) and compared as far as
    /// it got; the file is flushed.
    pub fn shutdown(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.finish(key, Gone::TimedOut);
        }
        if self.out.flush().is_err() {
            self.counters.write_errors += 1;
        }
    }

    /// The statistics line.
    pub fn stats_line(&self) -> String {
        let s = &self.summary;
        let kinds: Vec<String> = s
            .differences()
            .map(|(k, n)| format!("{}:{n}", k.name()))
            .collect();
        let unpaired: Vec<String> = s
            .unpaired_reasons()
            .map(|(g, n)| format!("{}:{n}", g.name()))
            .collect();
        format!(
            "diff: compared:{},equal:{},different:{} ({}),unpaired:{} ({}),truncated responses:{},connections:{},open:{},held bytes:{},memory cap hits:{},untracked:{},gaps:{},capped by intercept:{},unknown production:{},unknown target:{},production capture drops:{}",
            s.compared,
            s.equal,
            s.different(),
            kinds.join(","),
            s.unpaired(),
            unpaired.join(","),
            s.truncated_responses,
            self.counters.connections,
            self.connections(),
            self.held_bytes(),
            self.counters.memory_cap_hits,
            self.counters.untracked,
            self.counters.gaps,
            self.counters.capped,
            self.counters.unknown_production,
            self.counters.unknown_target,
            self.counters.capture_drops,
        )
    }

    /// The `diff` object of `--report` and `--stats-json`.
    pub fn report_value(&self) -> Value {
        let s = &self.summary;
        let kinds: serde_json::Map<String, Value> = s
            .differences()
            .map(|(k, n)| (k.name().to_string(), json!(n)))
            .collect();
        let unpaired: serde_json::Map<String, Value> = s
            .unpaired_reasons()
            .map(|(g, n)| (g.name().to_string(), json!(n)))
            .collect();
        json!({
            "file": self.path_shown,
            "compared": s.compared,
            "equal": s.equal,
            "different": s.different(),
            "different_by_kind": kinds,
            "unpaired": s.unpaired(),
            "unpaired_by_reason": unpaired,
            "difference_rate": difference_rate(s),
            "truncated_responses": s.truncated_responses,
            "connections": self.counters.connections,
            "memory_cap_hits": self.counters.memory_cap_hits,
            "untracked_connections": self.counters.untracked,
            "gaps": self.counters.gaps,
            "capped_by_intercept": self.counters.capped,
            "unknown_production_segments": self.counters.unknown_production,
            "unknown_target_segments": self.counters.unknown_target,
            "production_capture_drops": self.counters.capture_drops,
        })
    }

    /// The `tcpcopy_diff_*` metrics.
    pub fn metrics(&self) -> String {
        let s = &self.summary;
        let mut e = Exposition::new();
        e.counter(
            "tcpcopy_diff_compared_total",
            "Response pairs compared (--diff).",
            s.compared,
        )
        .counter(
            "tcpcopy_diff_equal_total",
            "Response pairs found equal.",
            s.equal,
        )
        .counter(
            "tcpcopy_diff_unpaired_total",
            "Responses present on one side only.",
            s.unpaired(),
        )
        .counter(
            "tcpcopy_diff_memory_cap_hits_total",
            "Responses cut at the global --diff-memory-mb bound.",
            self.counters.memory_cap_hits,
        )
        .gauge(
            "tcpcopy_diff_difference_rate",
            "Different pairs over compared pairs.",
            difference_rate(s),
        )
        .gauge(
            "tcpcopy_diff_held_bytes",
            "Response bytes held for comparison.",
            self.held as u64,
        );
        let mut f = e.family(
            "tcpcopy_diff_different_total",
            "Response pairs that differed, by what differed first.",
            Kind::Counter,
        );
        for k in DiffKind::ALL {
            f.sample(&[("kind", k.name())], s.different_by(k));
        }
        drop(f);
        e.finish()
    }
}

/// `held` after one connection's bytes went from `before` to `after`.
fn adjust(held: usize, before: usize, after: usize) -> usize {
    (held + after).saturating_sub(before)
}

fn difference_rate(s: &Summary) -> f64 {
    if s.compared == 0 {
        0.0
    } else {
        s.different() as f64 / s.compared as f64
    }
}

/// The BPF filter of production's answers on this host: `tcp and (src port P ...)`.
pub fn production_filter(transfers: &[tc_core::session::Transfer]) -> String {
    let terms: Vec<String> = transfers
        .iter()
        .map(|t| match t.src_ip {
            Some(ip) => format!("(src port {} and src host {})", t.src_port, ip),
            None => format!("(src port {})", t.src_port),
        })
        .collect();
    format!("tcp and ({})", terms.join(" or "))
}

/// Whether a datagram of the offline file is a production answer of a `-x` port.
pub fn is_production(datagram: &[u8], transfers: &[tc_core::session::Transfer]) -> bool {
    let Ok(p) = TcpPacket::parse(datagram, Completeness::HeadersOnly) else {
        return false;
    };
    transfers
        .iter()
        .any(|t| t.src_port == p.src_port() && t.src_ip.is_none_or(|ip| ip == p.src_ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tc_core::packet::build::{build_segment, SegmentSpec};

    fn cfg(dir: &std::path::Path) -> DiffConfig {
        DiffConfig {
            file: dir.join("diff.jsonl"),
            protocol: None,
            ignore_headers: Vec::new(),
            max_session_bytes: 64 * 1024,
            max_total_bytes: 1 << 20,
        }
    }

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const ONLINE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const FAKE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
    const TARGET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);

    fn seg(
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        seq: u32,
        ack: u32,
        fl: u8,
        data: &[u8],
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let n = build_segment(
            &SegmentSpec {
                src: src.0.into(),
                dst: dst.0.into(),
                src_port: src.1,
                dst_port: dst.1,
                seq,
                ack,
                flags: fl,
                window: 65535,
                ip_id: 1,
                mss: None,
                timestamps: None,
                payload: data,
            },
            &mut buf,
        )
        .unwrap();
        buf.truncate(n);
        buf
    }

    fn data<'a>(seq: u32, ack: u32, flags: u8, payload: &'a [u8]) -> Data<'a> {
        Data {
            flags,
            client: std::net::SocketAddrV4::new(FAKE, 40000),
            target: std::net::SocketAddrV4::new(TARGET, 8080),
            seq,
            ack,
            payload,
        }
    }

    fn http(status: &str, date: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nDate: {date}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn lock_step_pairs_by_ack_and_reports_only_differences() {
        let dir = std::env::temp_dir().join(format!("tcdiff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut e = DiffEngine::open(cfg(&dir)).unwrap();
        let now = Instant::now();
        let online: Key = (CLIENT.into(), 40000, ONLINE.into(), 80);
        let replayed: Key = (FAKE.into(), 40000, TARGET.into(), 8080);
        let (c, s) = ((CLIENT, 40000), (ONLINE, 80));
        let syn = seg(c, s, 1000, 0, 0x02, b"");
        e.on_client(now, &syn, Some((online, replayed)));
        let reqs = [
            "GET /a HTTP/1.1\r\n\r\n",
            "GET /b HTTP/1.1\r\n\r\n",
            "GET /c HTTP/1.1\r\n\r\n",
        ];
        let mut cseq = 1001u32;
        let mut acks = Vec::new();
        for r in reqs {
            let p = seg(c, s, cseq, 5001, 0x18, r.as_bytes());
            e.on_client(now, &p, Some((online, replayed)));
            cseq += r.len() as u32;
            acks.push(cseq);
        }
        // Production answers the three; the target differs on /b (body) only, with another
        // Date, and its answers arrive split and with a duplicate.
        let bodies = [
            ("200 OK", "aaa"),
            ("200 OK", "bbb"),
            ("404 Not Found", "ccc"),
        ];
        let mut pseq = 5001u32;
        let mut tseq = 9001u32;
        for (i, (st, body)) in bodies.iter().enumerate() {
            let p = http(st, "Mon", body);
            e.on_production(now, &seg(s, c, pseq, acks[i], 0x18, &p));
            pseq += p.len() as u32;
            let tb = if i == 1 { "bXb" } else { body };
            let t = http(st, "Tue", tb);
            let (a, b) = t.split_at(10);
            e.on_target(now, &data(tseq, acks[i], 0, a));
            e.on_target(now, &data(tseq, acks[i], 0, a));
            e.on_target(now, &data(tseq + 10, acks[i], 0, b));
            tseq += t.len() as u32;
        }
        e.on_production(now, &seg(s, c, pseq, cseq, 0x11, b""));
        e.on_target(now, &data(tseq, cseq, DATA_FIN, b""));
        assert_eq!(e.connections(), 0, "finished connections are removed");
        assert_eq!(e.held_bytes(), 0);
        e.shutdown();
        assert_eq!(e.summary.compared, 3);
        assert_eq!(e.summary.equal, 2);
        assert_eq!(e.summary.different_by(DiffKind::Body), 1);
        let text = std::fs::read_to_string(dir.join("diff.jsonl")).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["request"], 2);
        assert_eq!(lines[0]["kind"], "body");
        assert!(
            lines[0]["request_excerpt"]
                .as_str()
                .unwrap()
                .starts_with("GET /b"),
            "{text}"
        );
        assert!(lines[0]["target"].as_str().unwrap().contains("bXb"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn bulk(v: &str) -> String {
        format!("${}\r\n{v}\r\n", v.len())
    }

    fn get(key: &str) -> String {
        format!("*2\r\n$3\r\nGET\r\n{}", bulk(key))
    }

    /// `--diff-protocol redis`: a pipeline of 4 GETs, sent across two client segments (the
    /// second command cut in the middle); production answers after each segment (two acks),
    /// the target once for all (one ack), its third reply differs. By position exactly
    /// reply 3 differs, with the third command as its excerpt.
    #[test]
    fn redis_pipelines_are_paired_by_position() {
        let dir = std::env::temp_dir().join(format!("tcdiff3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = cfg(&dir);
        c.protocol = Some(Protocol::Redis);
        let mut e = DiffEngine::open(c).unwrap();
        let now = Instant::now();
        let online: Key = (CLIENT.into(), 40002, ONLINE.into(), 6379);
        let replayed: Key = (FAKE.into(), 40000, TARGET.into(), 8080);
        let (cl, sv) = ((CLIENT, 40002), (ONLINE, 6379));
        e.on_client(
            now,
            &seg(cl, sv, 99, 0, 0x02, b""),
            Some((online, replayed)),
        );
        let pipeline = [get("k1"), get("k2"), get("k3"), get("k4")].concat();
        let cut = get("k1").len() + 10;
        let (first, second) = pipeline.as_bytes().split_at(cut);
        e.on_client(
            now,
            &seg(cl, sv, 100, 1, 0x18, first),
            Some((online, replayed)),
        );
        // A retransmission of the first segment changes nothing.
        e.on_client(
            now,
            &seg(cl, sv, 100, 1, 0x18, first),
            Some((online, replayed)),
        );
        let end2 = 100 + pipeline.len() as u32;
        e.on_client(
            now,
            &seg(cl, sv, 100 + cut as u32, 1, 0x18, second),
            Some((online, replayed)),
        );
        let prod1 = bulk("v1");
        let prod2 = [bulk("v2"), bulk("v3"), bulk("v4")].concat();
        e.on_production(
            now,
            &seg(sv, cl, 1, 100 + cut as u32, 0x18, prod1.as_bytes()),
        );
        e.on_production(
            now,
            &seg(sv, cl, 1 + prod1.len() as u32, end2, 0x18, prod2.as_bytes()),
        );
        let target = [bulk("v1"), bulk("v2"), bulk("XX"), bulk("v4")].concat();
        e.on_target(now, &data(1, end2, 0, target.as_bytes()));
        e.shutdown();
        assert_eq!(e.summary.compared, 4, "{}", e.stats_line());
        assert_eq!(e.summary.different(), 1, "{}", e.stats_line());
        let text = std::fs::read_to_string(dir.join("diff.jsonl")).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["request"], 3, "{text}");
        assert_eq!(lines[0]["kind"], "value", "{text}");
        assert!(
            lines[0]["request_excerpt"].as_str().unwrap().contains("k3"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The steady state of a keep-alive connection whose answers are equal but for Date
    /// (two segments a side): per request, one buffer per side for its answer (the pairer
    /// hands the bytes out with the pair) and its growth when the second segment comes: 4
    /// allocations; none to compare (18 a request with the full HTTP parse).
    #[test]
    fn equal_answers_cost_one_buffer_per_side_and_request() {
        let dir = std::env::temp_dir().join(format!("tcdiff4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut e = DiffEngine::open(cfg(&dir)).unwrap();
        let now = Instant::now();
        let online: Key = (CLIENT.into(), 40003, ONLINE.into(), 80);
        let replayed: Key = (FAKE.into(), 40000, TARGET.into(), 8080);
        let (c, s) = ((CLIENT, 40003), (ONLINE, 80));
        e.on_client(
            now,
            &seg(c, s, 1000, 0, 0x02, b""),
            Some((online, replayed)),
        );
        let req = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n";
        let body = "<p>replay</p>".repeat(60);
        let (mut cseq, mut pseq, mut tseq) = (1001u32, 5001u32, 9001u32);
        let mut step = |e: &mut DiffEngine, date: &str| {
            let p = seg(c, s, cseq, pseq, 0x18, req);
            cseq += req.len() as u32;
            let prod = http("200 OK", "Mon", &body);
            let targ = http("200 OK", date, &body);
            let segs = [
                seg(s, c, pseq, cseq, 0x18, &prod[..500]),
                seg(s, c, pseq + 500, cseq, 0x18, &prod[500..]),
            ];
            pseq += prod.len() as u32;
            let ((), made) = crate::alloc_steady::counted(|| {
                e.on_client(now, &p, Some((online, replayed)));
                for sg in &segs {
                    e.on_production(now, sg);
                }
                e.on_target(now, &data(tseq, cseq, 0, &targ[..400]));
                e.on_target(now, &data(tseq + 400, cseq, 0, &targ[400..]));
            });
            tseq += targ.len() as u32;
            made
        };
        for _ in 0..50 {
            step(&mut e, "Tue");
        }
        let made: u64 = (0..1000).map(|_| step(&mut e, "Wed")).sum();
        assert_eq!(e.summary.different(), 0, "{}", e.stats_line());
        assert!(e.summary.compared >= 1000);
        // One buffer per side, and a realloc each where a second segment adds to it.
        assert!(made <= 4 * 1000, "{made} allocations for 1000 requests");
        eprintln!("{made} allocations for 1000 request/answer pairs of 2 segments a side");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_global_bound_cuts_and_counts() {
        let dir = std::env::temp_dir().join(format!("tcdiff2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = cfg(&dir);
        c.max_total_bytes = 100;
        let mut e = DiffEngine::open(c).unwrap();
        let now = Instant::now();
        let online: Key = (CLIENT.into(), 40001, ONLINE.into(), 80);
        let replayed: Key = (FAKE.into(), 40000, TARGET.into(), 8080);
        let req = seg(
            (CLIENT, 40001),
            (ONLINE, 80),
            1,
            1,
            0x18,
            b"GET / HTTP/1.1\r\n\r\n",
        );
        e.on_client(now, &req, Some((online, replayed)));
        let big = vec![b'x'; 300];
        e.on_production(now, &seg((ONLINE, 80), (CLIENT, 40001), 1, 19, 0x18, &big));
        assert!(e.held_bytes() <= 100);
        assert!(e.counters.memory_cap_hits >= 1);
        e.on_target(now, &data(1, 19, 0, &big));
        e.shutdown();
        assert_eq!(e.summary.compared, 1);
        assert_eq!(e.summary.different_by(DiffKind::Truncated), 1);
        assert_eq!(e.held_bytes(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
