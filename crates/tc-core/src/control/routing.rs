//! Which tunnel gets a captured response: pure logic, no I/O, time passed in as milliseconds
//! of a monotonic clock (tests drive a virtual one).
//!
//! * [`Routes`]: exact-tuple routes installed by CLIENT_ADD, with idle expiry and a bounded size
//!   (an approximate LRU made of two generations, so every operation is O(1)).
//! * [`DelayTable`]: SYN-ACKs and RSTs captured before their CLIENT_ADD, held 30 s.
//! * [`Router`]: both together, with the counters of the statistics line.
//! * [`SingleGroup`]: `--single` mode, where one tcpcopy's tunnels share responses by hash.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};

use crate::packet::flags;

/// A tunnel (one accepted control connection). Ids are never reused, so a stale id can never
/// reach a newer connection.
pub type TunnelId = u64;
/// Milliseconds of a monotonic clock.
pub type Millis = u64;

/// How long a SYN-ACK/RST waits for its CLIENT_ADD.
pub const DELAY_HOLD_MS: Millis = 30_000;
/// Records kept per delayed connection (a SYN-ACK and its retransmissions, a RST).
pub const DELAY_RECORDS_PER_KEY: usize = 32;
/// `--single`: tunnels accepted within this window of the first belong to the same tcpcopy.
pub const SINGLE_WINDOW_MS: Millis = 3_000;
/// `--single`: tunnels of a group that share the responses.
pub const SINGLE_MAX_TUNNELS: usize = 16;

/// A replayed connection as seen from intercept: the client tcpcopy sends from and the target
/// it sends to. Under `--dnat` the target IP is left out (zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub target_ip: IpAddr,
    pub target_port: u16,
}

impl RouteKey {
    pub fn new(
        client_ip: impl Into<IpAddr>,
        client_port: u16,
        target_ip: impl Into<IpAddr>,
        target_port: u16,
        dnat: bool,
    ) -> RouteKey {
        let (client_ip, target_ip) = (client_ip.into(), target_ip.into());
        RouteKey {
            client_ip,
            client_port,
            target_ip: if dnat {
                match client_ip {
                    IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                    IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
                }
            } else {
                target_ip
            },
            target_port,
        }
    }

    /// A well-mixed hash spreading `--single` responses over the tunnels. (The original's
    /// key ignored the low byte of the client port, so neighbouring ports shared a tunnel.)
    pub fn spread_hash(&self) -> u32 {
        let word = |ip: IpAddr| u64::from(u32::from_be_bytes(crate::session::ingress::fold4(ip)));
        let mut h = word(self.client_ip);
        h = (h << 16) | u64::from(self.client_port);
        h ^= word(self.target_ip).rotate_left(24) ^ u64::from(self.target_port);
        // splitmix64 finaliser
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (h ^ (h >> 31)) as u32
    }
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}<->{}:{}",
            self.client_ip, self.client_port, self.target_ip, self.target_port
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct RouteEntry {
    tunnel: TunnelId,
    /// The address of the tcpcopy that announced the route: only it may move the route.
    peer: IpAddr,
    last_used: Millis,
}

/// Counters of the route table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// CLIENT_ADDs installed ("route" / "all sessions" of the original).
    pub adds: u64,
    /// CLIENT_ADDs refused: the route belongs to a live tunnel of another peer address.
    pub refused: u64,
    /// Responses that found their route.
    pub hits: u64,
    /// Responses without a route.
    pub lost: u64,
    /// Routes discarded because the table was full.
    pub evicted: u64,
    /// Routes forgotten after the idle timeout.
    pub expired: u64,
    /// Routes removed because their tunnel closed.
    pub purged: u64,
}

/// A CLIENT_ADD refused because another peer address owns the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTaken {
    /// The tunnel that keeps the route.
    pub owner: TunnelId,
    pub owner_peer: IpAddr,
}

/// How long the route of a connection the target ended (its FIN or RST passed) stays after
/// its last record: this to twice this.
pub const CLOSING_HOLD_MS: Millis = 30_000;

type RouteMap = HashMap<RouteKey, RouteEntry>;
type ByTunnel = HashMap<TunnelId, HashSet<RouteKey>>;

/// Exact-tuple routes. Two generations: new and refreshed routes live in `current`; when it is
/// half the capacity, or one idle period has passed, `previous` (routes untouched since the
/// last rotation) is dropped and `current` becomes `previous`. A lookup that finds a route in
/// `previous` moves it back to `current`. So the table never exceeds its capacity, a route used
/// at least once per idle period is never expired, and the maps keep their allocations.
///
/// The route of a connection the target ended (a FIN or RST of it passed) moves to a second
/// pair of generations rotated every [`CLOSING_HOLD_MS`]: it stays for the connection's last
/// records (the ACK of the client's FIN, a retransmitted FIN) and for as long as records keep
/// coming (a half-closed connection), not for the idle timeout. At hundreds of short
/// connections a second the table would otherwise hold every connection of the last 20 to
/// 40 minutes (the original's fixed table evicted the least recently used instead).
///
/// Each tunnel's routes are also listed by tunnel, so closing a tunnel costs its own routes,
/// not a scan of the table. A route belongs to the peer address that announced it while its
/// tunnel lives: another address cannot take it (the same address may move it to another of
/// its tunnels, as a tcpcopy re-announcing does).
#[derive(Debug)]
pub struct Routes {
    current: RouteMap,
    previous: RouteMap,
    half_capacity: usize,
    idle_ms: Millis,
    rotated_at: Millis,
    /// Routes of ended connections, in their own generations.
    closing: RouteMap,
    closing_previous: RouteMap,
    closing_rotated_at: Millis,
    by_tunnel: ByTunnel,
    pub stats: RouteStats,
}

fn unlink(by_tunnel: &mut ByTunnel, tunnel: TunnelId, key: &RouteKey) {
    if let Some(keys) = by_tunnel.get_mut(&tunnel) {
        keys.remove(key);
        if keys.is_empty() {
            by_tunnel.remove(&tunnel);
        }
    }
}

/// Drops `previous` (returns how many routes went) and makes `current` the previous one,
/// keeping both maps' allocations.
fn rotate(current: &mut RouteMap, previous: &mut RouteMap, by_tunnel: &mut ByTunnel) -> u64 {
    let mut dropped = std::mem::take(previous);
    let n = dropped.len() as u64;
    for (key, e) in dropped.drain() {
        unlink(by_tunnel, e.tunnel, &key);
    }
    *previous = std::mem::replace(current, dropped);
    n
}

impl Routes {
    /// `capacity` is rounded up to an even number of at least 2.
    pub fn new(capacity: usize, idle_ms: Millis, now: Millis) -> Routes {
        Routes {
            current: HashMap::new(),
            previous: HashMap::new(),
            half_capacity: capacity.div_ceil(2).max(1),
            idle_ms: idle_ms.max(1),
            rotated_at: now,
            closing: HashMap::new(),
            closing_previous: HashMap::new(),
            closing_rotated_at: now,
            by_tunnel: HashMap::new(),
            stats: RouteStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len() + self.closing.len() + self.closing_previous.len()
    }

    /// Routes of connections the target ended, still kept.
    pub fn closing_len(&self) -> usize {
        self.closing.len() + self.closing_previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Routes that lead to `tunnel`.
    pub fn tunnel_routes(&self, tunnel: TunnelId) -> usize {
        self.by_tunnel.get(&tunnel).map_or(0, HashSet::len)
    }

    fn rotate(&mut self) -> u64 {
        rotate(&mut self.current, &mut self.previous, &mut self.by_tunnel)
    }

    fn rotate_closing(&mut self) -> u64 {
        rotate(
            &mut self.closing,
            &mut self.closing_previous,
            &mut self.by_tunnel,
        )
    }

    /// Drops idle routes; call about once a second.
    pub fn expire(&mut self, now: Millis) {
        if now.saturating_sub(self.rotated_at) >= self.idle_ms {
            self.stats.expired += self.rotate();
            self.rotated_at = now;
        }
        if now.saturating_sub(self.closing_rotated_at) >= CLOSING_HOLD_MS {
            self.stats.expired += self.rotate_closing();
            self.closing_rotated_at = now;
        }
    }

    fn make_room(&mut self) {
        if self.current.len() >= self.half_capacity {
            self.stats.evicted += self.rotate();
        }
    }

    fn make_room_closing(&mut self) {
        if self.closing.len() >= self.half_capacity {
            self.stats.evicted += self.rotate_closing();
        }
    }

    /// Installs the route of `key` to `tunnel` of `peer`, or moves it there when the same peer
    /// address announced it before (the last ADD wins). Refused, and counted, when a live
    /// tunnel of another address owns it.
    pub fn add(
        &mut self,
        key: RouteKey,
        tunnel: TunnelId,
        peer: impl Into<IpAddr>,
        now: Millis,
    ) -> Result<(), RouteTaken> {
        let peer = peer.into();
        let existing = self
            .current
            .get(&key)
            .or_else(|| self.previous.get(&key))
            .or_else(|| self.closing.get(&key))
            .or_else(|| self.closing_previous.get(&key))
            .copied();
        if let Some(e) = existing {
            if e.peer != peer {
                self.stats.refused += 1;
                return Err(RouteTaken {
                    owner: e.tunnel,
                    owner_peer: e.peer,
                });
            }
            if e.tunnel != tunnel {
                unlink(&mut self.by_tunnel, e.tunnel, &key);
            }
        }
        self.stats.adds += 1;
        self.by_tunnel.entry(tunnel).or_default().insert(key);
        let entry = RouteEntry {
            tunnel,
            peer,
            last_used: now,
        };
        if let Some(e) = self.current.get_mut(&key) {
            *e = entry;
            return Ok(());
        }
        // A new connection on the 4-tuple of an ended one (a reused port): a live route again.
        self.previous.remove(&key);
        self.closing.remove(&key);
        self.closing_previous.remove(&key);
        self.make_room();
        self.current.insert(key, entry);
        Ok(())
    }

    /// The tunnel of `key`, refreshing the route. `ends`: the record ends the connection
    /// (the target's FIN or RST): its route moves to the generations of ended connections.
    pub fn lookup(&mut self, key: &RouteKey, now: Millis, ends: bool) -> Option<TunnelId> {
        let (mut e, ended) = if let Some(e) = self.current.get_mut(key) {
            if !ends {
                e.last_used = now;
                self.stats.hits += 1;
                return Some(e.tunnel);
            }
            (self.current.remove(key).expect("present"), false)
        } else if let Some(e) = self.previous.remove(key) {
            (e, false)
        } else if let Some(e) = self.closing.get_mut(key) {
            e.last_used = now;
            self.stats.hits += 1;
            return Some(e.tunnel);
        } else if let Some(e) = self.closing_previous.remove(key) {
            (e, true)
        } else {
            self.stats.lost += 1;
            return None;
        };
        e.last_used = now;
        self.stats.hits += 1;
        if ended || ends {
            self.make_room_closing();
            self.closing.insert(*key, e);
        } else {
            self.make_room();
            self.current.insert(*key, e);
        }
        Some(e.tunnel)
    }

    /// Forgets every route to `tunnel` (it closed): the cost is its own routes.
    pub fn remove_tunnel(&mut self, tunnel: TunnelId) {
        let Some(keys) = self.by_tunnel.remove(&tunnel) else {
            return;
        };
        for key in &keys {
            let _ = self.current.remove(key).is_some()
                || self.previous.remove(key).is_some()
                || self.closing.remove(key).is_some()
                || self.closing_previous.remove(key).is_some();
        }
        self.stats.purged += keys.len() as u64;
    }
}

/// Counters of the delay table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayStats {
    /// Records queued.
    pub delayed: u64,
    /// Records handed over after their CLIENT_ADD ("delay actual sent").
    pub sent: u64,
    /// Records discarded after waiting 30 s.
    pub expired: u64,
    /// Records refused because the table (entries or bytes) or the connection's queue was
    /// full.
    pub full: u64,
}

/// Bytes a delayed connection costs beyond its records (map slot, entry, bookkeeping).
pub const DELAY_ENTRY_COST: usize = 96;
/// Bytes of one item of the expiry order (kept until its entry's hold time ends).
pub const DELAY_ORDER_COST: usize = 24;

#[derive(Debug)]
struct DelayEntry {
    created: Millis,
    rec_len: usize,
    /// The records, back to back.
    bytes: Vec<u8>,
}

/// Records handed over by the delay table: same-length records back to back, in capture order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    rec_len: usize,
    bytes: Vec<u8>,
}

impl Held {
    pub fn records(&self) -> std::slice::ChunksExact<'_, u8> {
        self.bytes.chunks_exact(self.rec_len.max(1))
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / self.rec_len.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Responses waiting for the CLIENT_ADD of their connection. An entry lives `hold_ms` from its
/// creation (not refreshed), at most `capacity` entries of at most `per_key` records, and at
/// most `byte_cap` bytes in all: records are stored at their own length (64 or 192 bytes) and
/// every entry and expiry item is counted, so no flood of SYN-ACKs grows it beyond the cap.
#[derive(Debug)]
pub struct DelayTable {
    entries: HashMap<RouteKey, DelayEntry>,
    /// Creation order, for expiry; items of entries already taken are skipped.
    order: VecDeque<(Millis, RouteKey)>,
    capacity: usize,
    per_key: usize,
    hold_ms: Millis,
    byte_cap: usize,
    bytes: usize,
    pub stats: DelayStats,
}

impl DelayTable {
    pub fn new(capacity: usize, per_key: usize, hold_ms: Millis, byte_cap: usize) -> DelayTable {
        DelayTable {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            per_key: per_key.max(1),
            hold_ms,
            byte_cap,
            bytes: 0,
            stats: DelayStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held now (records, entries and expiry items), never above the cap.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn byte_cap(&self) -> usize {
        self.byte_cap
    }

    fn fits(&mut self, cost: usize, new_entry: bool, now: Millis) -> bool {
        let ok =
            |t: &Self| t.bytes + cost <= t.byte_cap && (!new_entry || t.entries.len() < t.capacity);
        if ok(self) {
            return true;
        }
        self.expire(now);
        ok(self)
    }

    /// Queues `record` for `key`; false if it was refused (table, bytes or queue full).
    pub fn hold(&mut self, key: RouteKey, record: &[u8], now: Millis) -> bool {
        if let Some(e) = self.entries.get(&key) {
            let queue_full =
                e.bytes.len() / e.rec_len.max(1) >= self.per_key || e.rec_len != record.len();
            if queue_full || !self.fits(record.len(), false, now) {
                self.stats.full += 1;
                return false;
            }
            // Expiry (to make room) may have removed it: then it starts anew below.
            if let Some(e) = self.entries.get_mut(&key) {
                e.bytes.reserve_exact(record.len());
                e.bytes.extend_from_slice(record);
                self.bytes += record.len();
                self.stats.delayed += 1;
                return true;
            }
        }
        let cost = DELAY_ENTRY_COST + DELAY_ORDER_COST + record.len();
        if !self.fits(cost, true, now) {
            self.stats.full += 1;
            return false;
        }
        let mut bytes = Vec::with_capacity(record.len());
        bytes.extend_from_slice(record);
        self.entries.insert(
            key,
            DelayEntry {
                created: now,
                rec_len: record.len(),
                bytes,
            },
        );
        self.order.push_back((now, key));
        self.bytes += cost;
        self.stats.delayed += 1;
        true
    }

    /// The records waiting for `key`, in capture order.
    pub fn take(&mut self, key: &RouteKey) -> Option<Held> {
        let e = self.entries.remove(key)?;
        // The expiry item stays (and is counted) until its time.
        self.bytes -= DELAY_ENTRY_COST + e.bytes.len();
        let held = Held {
            rec_len: e.rec_len,
            bytes: e.bytes,
        };
        self.stats.sent += held.len() as u64;
        Some(held)
    }

    /// Discards entries older than the hold time.
    pub fn expire(&mut self, now: Millis) {
        while let Some(&(created, key)) = self.order.front() {
            if now.saturating_sub(created) < self.hold_ms {
                break;
            }
            self.order.pop_front();
            self.bytes -= DELAY_ORDER_COST;
            if self.entries.get(&key).is_some_and(|e| e.created == created) {
                if let Some(e) = self.entries.remove(&key) {
                    self.bytes -= DELAY_ENTRY_COST + e.bytes.len();
                    self.stats.expired += (e.bytes.len() / e.rec_len.max(1)) as u64;
                }
            }
        }
    }
}

/// What happened to a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Deliver on this tunnel.
    Tunnel(TunnelId),
    /// No route yet; SYN/RST kept in the delay table.
    Delayed,
    /// No route, and not kept (not SYN/RST, or the delay table is full).
    Dropped,
}

/// Routes plus delay table (the non-single mode).
#[derive(Debug)]
pub struct Router {
    pub routes: Routes,
    pub delay: DelayTable,
}

impl Router {
    pub fn new(
        max_routes: usize,
        idle_ms: Millis,
        delay_capacity: usize,
        delay_bytes: usize,
        now: Millis,
    ) -> Self {
        Router {
            routes: Routes::new(max_routes, idle_ms, now),
            delay: DelayTable::new(
                delay_capacity,
                DELAY_RECORDS_PER_KEY,
                DELAY_HOLD_MS,
                delay_bytes,
            ),
        }
    }

    /// CLIENT_ADD from `tunnel` of `peer`: installs the route and returns the responses that
    /// were waiting for it, in capture order, to be sent on `tunnel` before anything newer.
    /// Refused when another peer address owns the route.
    pub fn client_add(
        &mut self,
        key: RouteKey,
        tunnel: TunnelId,
        peer: impl Into<IpAddr>,
        now: Millis,
    ) -> Result<Option<Held>, RouteTaken> {
        self.routes.add(key, tunnel, peer, now)?;
        Ok(self.delay.take(&key))
    }

    /// Routes one response with the TCP flags `tcp_flags`: a SYN or RST may be delayed when
    /// there is no route yet; a FIN or RST ends its connection's route (see [`Routes`]).
    pub fn route(&mut self, key: &RouteKey, tcp_flags: u8, record: &[u8], now: Millis) -> Routed {
        let ends = tcp_flags & (flags::FIN | flags::RST) != 0;
        if let Some(t) = self.routes.lookup(key, now, ends) {
            return Routed::Tunnel(t);
        }
        let syn_or_rst = tcp_flags & (flags::SYN | flags::RST) != 0;
        if syn_or_rst && self.delay.hold(*key, record, now) {
            Routed::Delayed
        } else {
            Routed::Dropped
        }
    }

    pub fn tunnel_closed(&mut self, tunnel: TunnelId) {
        self.routes.remove_tunnel(tunnel);
    }

    /// Periodic housekeeping (about once a second).
    pub fn tick(&mut self, now: Millis) {
        self.routes.expire(now);
        self.delay.expire(now);
    }
}

/// Decision on a tunnel accepted in `--single` mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Member of the current group.
    Joined,
    /// Accepted but beyond [`SINGLE_MAX_TUNNELS`]: never used for responses.
    Spare,
    /// A new tcpcopy: these tunnels of the old group must be closed; the newcomer starts a
    /// new group.
    NewGroup { close: Vec<TunnelId> },
    /// `-c`: the old tcpcopy still has tunnels; close the newcomer.
    Refused,
}

/// `--single` mode: the tunnels of one tcpcopy. Unlike the original, tunnels that close leave
/// the group, so responses are spread over the living ones instead of being lost.
#[derive(Debug, Default)]
pub struct SingleGroup {
    started: Option<Millis>,
    members: Vec<TunnelId>,
    spares: Vec<TunnelId>,
    protect: bool,
}

impl SingleGroup {
    pub fn new(protect: bool) -> SingleGroup {
        SingleGroup {
            protect,
            ..SingleGroup::default()
        }
    }

    pub fn members(&self) -> &[TunnelId] {
        &self.members
    }

    pub fn admit(&mut self, tunnel: TunnelId, now: Millis) -> Admission {
        let in_window = self
            .started
            .is_some_and(|s| now.saturating_sub(s) <= SINGLE_WINDOW_MS);
        if in_window {
            if self.members.len() < SINGLE_MAX_TUNNELS {
                self.members.push(tunnel);
                return Admission::Joined;
            }
            self.spares.push(tunnel);
            return Admission::Spare;
        }
        let old_open = !self.members.is_empty() || !self.spares.is_empty();
        if self.started.is_some() && old_open && self.protect {
            return Admission::Refused;
        }
        let mut close = std::mem::take(&mut self.members);
        close.append(&mut self.spares);
        self.started = Some(now);
        self.members.push(tunnel);
        if close.is_empty() {
            Admission::Joined
        } else {
            Admission::NewGroup { close }
        }
    }

    pub fn remove(&mut self, tunnel: TunnelId) {
        self.members.retain(|&t| t != tunnel);
        self.spares.retain(|&t| t != tunnel);
    }

    /// The tunnel for a response of `key`: the same one for every response of a connection
    /// while the group does not change.
    pub fn pick(&self, key: &RouteKey) -> Option<TunnelId> {
        if self.members.is_empty() {
            return None;
        }
        let slot = key.spread_hash() as usize % self.members.len();
        self.members.get(slot).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> RouteKey {
        RouteKey::new(
            Ipv4Addr::new(203, 0, 113, 7),
            port,
            Ipv4Addr::new(198, 18, 0, 30),
            8080,
            false,
        )
    }

    /// The `n`th of many distinct connections (clients 203.0.x.y).
    fn many(n: u32) -> RouteKey {
        RouteKey::new(
            Ipv4Addr::from(0xcb00_0000 + (n >> 16)),
            n as u16,
            Ipv4Addr::new(198, 18, 0, 30),
            8080,
            false,
        )
    }

    const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
    const OTHER_PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 21);
    const BYTES: usize = 1 << 20;

    fn router() -> Router {
        Router::new(100, 60_000, 10, BYTES, 0)
    }

    /// A one-byte record.
    fn rec(v: u8) -> [u8; 1] {
        [v]
    }

    fn held(h: Option<Held>) -> Option<Vec<u8>> {
        h.map(|h| h.records().map(|r| r[0]).collect())
    }

    fn add(r: &mut Router, k: RouteKey, t: TunnelId, now: Millis) -> Option<Vec<u8>> {
        held(r.client_add(k, t, PEER, now).expect("route taken"))
    }

    #[test]
    fn exact_tuple_routing_and_last_add_wins() {
        let mut r = router();
        assert_eq!(add(&mut r, key(1000), 1, 0), None);
        assert_eq!(
            r.route(&key(1000), flags::ACK, &rec(0), 1),
            Routed::Tunnel(1)
        );
        // Another port, another target ip: no route.
        assert_eq!(r.route(&key(1001), flags::ACK, &rec(0), 1), Routed::Dropped);
        let mut other = key(1000);
        other.target_ip = Ipv4Addr::new(198, 18, 0, 31).into();
        assert_eq!(r.route(&other, flags::ACK, &rec(0), 1), Routed::Dropped);
        add(&mut r, key(1000), 2, 2);
        assert_eq!(
            r.route(&key(1000), flags::ACK, &rec(0), 3),
            Routed::Tunnel(2)
        );
        assert_eq!(r.routes.stats.adds, 2);
        assert_eq!(r.routes.stats.hits, 2);
        assert_eq!(r.routes.stats.lost, 2);
    }

    #[test]
    fn dnat_key_ignores_target_ip() {
        let a = RouteKey::new(
            Ipv4Addr::new(203, 0, 113, 1),
            5,
            Ipv4Addr::new(10, 0, 0, 1),
            80,
            true,
        );
        let b = RouteKey::new(
            Ipv4Addr::new(203, 0, 113, 1),
            5,
            Ipv4Addr::new(10, 9, 9, 9),
            80,
            true,
        );
        assert_eq!(a, b);
        let c = RouteKey::new(
            Ipv4Addr::new(203, 0, 113, 1),
            5,
            Ipv4Addr::new(10, 9, 9, 9),
            81,
            true,
        );
        assert_ne!(a, c);
        let mut r = Router::new(10, 1000, 10, BYTES, 0);
        add(&mut r, a, 7, 0);
        assert_eq!(r.route(&b, flags::ACK, &rec(0), 0), Routed::Tunnel(7));
    }

    #[test]
    fn closed_tunnel_routes_are_purged() {
        let mut r = router();
        add(&mut r, key(1), 1, 0);
        add(&mut r, key(2), 1, 0);
        add(&mut r, key(3), 2, 0);
        r.tunnel_closed(1);
        assert_eq!(r.routes.stats.purged, 2);
        assert_eq!(r.route(&key(1), flags::ACK, &rec(0), 1), Routed::Dropped);
        assert_eq!(r.route(&key(3), flags::ACK, &rec(0), 1), Routed::Tunnel(2));
        // A tunnel that never announced anything needs no scan and purges nothing.
        r.tunnel_closed(99);
        assert_eq!(r.routes.stats.purged, 2);
    }

    /// Issue 15.2: a route announced by one peer address cannot be taken by another while
    /// its tunnel lives; the same address may move it; once the owner closes it is free.
    #[test]
    fn another_peer_cannot_take_a_live_route() {
        let mut r = router();
        add(&mut r, key(1), 1, 0);
        assert_eq!(
            r.client_add(key(1), 9, OTHER_PEER, 1),
            Err(RouteTaken {
                owner: 1,
                owner_peer: PEER.into()
            })
        );
        assert_eq!(r.routes.stats.refused, 1);
        assert_eq!(r.route(&key(1), flags::ACK, &rec(0), 2), Routed::Tunnel(1));
        // Same address, another tunnel: moved (a tcpcopy re-announcing).
        add(&mut r, key(1), 2, 3);
        assert_eq!(r.route(&key(1), flags::ACK, &rec(0), 4), Routed::Tunnel(2));
        assert_eq!(
            (r.routes.tunnel_routes(1), r.routes.tunnel_routes(2)),
            (0, 1)
        );
        // Tunnel 1 closing does not take tunnel 2's route.
        r.tunnel_closed(1);
        assert_eq!(r.route(&key(1), flags::ACK, &rec(0), 5), Routed::Tunnel(2));
        // The owner closes: the route is free for anyone.
        r.tunnel_closed(2);
        assert!(r.client_add(key(1), 9, OTHER_PEER, 6).is_ok());
        assert_eq!(r.route(&key(1), flags::ACK, &rec(0), 7), Routed::Tunnel(9));
    }

    /// Issue 15.5: closing a tunnel costs its own routes, not a scan of the table. 2000
    /// one-route tunnels close next to 300,000 routes of another tunnel; a scan per close
    /// (600 million entries visited) takes far longer than the bound.
    #[test]
    fn closing_tunnels_does_not_scan_the_table() {
        let mut routes = Routes::new(1 << 20, 1 << 40, 0);
        for p in 0..300_000u32 {
            routes.add(many(p), 1, PEER, 0).unwrap();
        }
        for t in 2..2002u64 {
            routes.add(key(t as u16), t, PEER, 0).unwrap();
        }
        let t0 = std::time::Instant::now();
        for t in 2..2002u64 {
            routes.remove_tunnel(t);
        }
        let took = t0.elapsed();
        assert_eq!(routes.stats.purged, 2000);
        assert_eq!(routes.len(), 300_000);
        assert!(took < std::time::Duration::from_millis(500), "{took:?}");
        routes.remove_tunnel(1);
        assert!(routes.is_empty());
    }

    /// Routes dropped by eviction or expiry leave their tunnel's list too.
    #[test]
    fn tunnel_lists_follow_eviction_and_expiry() {
        let mut routes = Routes::new(4, 1000, 0);
        for p in 0..4 {
            routes.add(key(p), 1, PEER, 0).unwrap();
        }
        for p in 10..14 {
            routes.add(key(p), 2, PEER, 0).unwrap();
        }
        assert_eq!(
            routes.tunnel_routes(1) + routes.tunnel_routes(2),
            routes.len()
        );
        routes.expire(1000);
        routes.expire(2000);
        assert!(routes.is_empty());
        assert_eq!((routes.tunnel_routes(1), routes.tunnel_routes(2)), (0, 0));
        // A route evicted from under tunnel 1 can be announced by another address.
        assert!(routes.add(key(0), 3, OTHER_PEER, 2001).is_ok());
    }

    /// Issue 15.5: the delay table stays under its byte cap whatever a SYN-ACK flood at the
    /// target captures: many connections, and many records per connection, of 192 bytes.
    #[test]
    fn delay_table_memory_is_bounded_in_bytes() {
        let cap = 1 << 20;
        let mut d = DelayTable::new(usize::MAX, DELAY_RECORDS_PER_KEY, DELAY_HOLD_MS, cap);
        let record = [0x45u8; 192];
        let mut held_records = 0u64;
        for p in 0..200_000u32 {
            let k = many(p);
            for _ in 0..3 {
                held_records += u64::from(d.hold(k, &record, u64::from(p) / 10));
                assert!(d.bytes() <= cap, "{} > {cap}", d.bytes());
            }
        }
        assert!(d.stats.full > 0);
        assert!(held_records > 1000);
        // Records are stored at their own size: 64-byte records take a third of the room.
        let mut small = DelayTable::new(usize::MAX, 1, DELAY_HOLD_MS, cap);
        let mut n = 0;
        while small.hold(key(n), &[0u8; 64], 0) {
            n += 1;
        }
        let per = DELAY_ENTRY_COST + DELAY_ORDER_COST + 64;
        assert_eq!(usize::from(n), cap / per);
        // Everything expires back to zero.
        small.expire(DELAY_HOLD_MS);
        assert_eq!(small.bytes(), 0);
    }

    #[test]
    fn delay_bytes_return_on_take() {
        let mut d = DelayTable::new(10, 4, 1000, BYTES);
        d.hold(key(1), &[1u8; 64], 0);
        d.hold(key(1), &[2u8; 64], 0);
        let h = d.take(&key(1)).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h.records().map(|r| r[0]).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(d.bytes(), DELAY_ORDER_COST);
        d.expire(1000);
        assert_eq!(d.bytes(), 0);
    }

    #[test]
    fn bounded_size_evicts_least_recently_used() {
        let mut routes = Routes::new(4, 1_000_000, 0);
        for p in 0..4 {
            routes.add(key(p), 1, PEER, 0).unwrap();
        }
        assert_eq!(routes.len(), 4);
        // Use 0 so that it survives; 1..3 are older.
        assert_eq!(routes.lookup(&key(0), 1, false), Some(1));
        for p in 10..20 {
            routes.add(key(p), 2, PEER, 2).unwrap();
            assert!(routes.len() <= 4, "len {}", routes.len());
        }
        assert!(routes.stats.evicted >= 8);
        assert_eq!(routes.lookup(&key(1), 3, false), None);
        assert_eq!(routes.lookup(&key(19), 3, false), Some(2));
        assert_eq!(
            routes.stats.evicted + routes.len() as u64,
            routes.stats.adds,
            "every route is either live or counted as evicted"
        );
    }

    /// The route of a connection the target ended stays for its last records and while
    /// records keep coming, then goes within two [`CLOSING_HOLD_MS`], where a live route
    /// waits for the idle timeout; a new connection on the same 4-tuple makes it live again;
    /// a closing tunnel takes its ended routes too.
    #[test]
    fn routes_of_ended_connections_go_sooner() {
        let idle = 20 * 60 * 1000;
        let mut r = Router::new(1 << 20, idle, 16, 1 << 20, 0);
        for p in 0..3 {
            r.client_add(key(p), 1, PEER, 0).unwrap();
        }
        // The target's FIN on 0, its RST on 1; 2 stays open.
        assert_eq!(
            r.route(&key(0), flags::FIN | flags::ACK, &rec(0), 10),
            Routed::Tunnel(1)
        );
        assert_eq!(r.route(&key(1), flags::RST, &rec(0), 10), Routed::Tunnel(1));
        assert_eq!(r.routes.closing_len(), 2);
        // The last ACK after the FIN still finds its way, and keeps the route a while.
        let mut now = 10;
        while now < CLOSING_HOLD_MS {
            now += 1000;
            r.tick(now);
        }
        assert_eq!(
            r.route(&key(0), flags::ACK, &rec(0), now),
            Routed::Tunnel(1)
        );
        for _ in 0..2 * CLOSING_HOLD_MS / 1000 + 1 {
            now += 1000;
            r.tick(now);
        }
        assert_eq!(r.route(&key(0), flags::ACK, &rec(0), now), Routed::Dropped);
        assert_eq!(r.route(&key(1), flags::ACK, &rec(0), now), Routed::Dropped);
        assert_eq!(
            r.route(&key(2), flags::ACK, &rec(0), now),
            Routed::Tunnel(1)
        );
        assert_eq!((r.routes.len(), r.routes.tunnel_routes(1)), (1, 1));
        // A port reused: the new connection's ADD makes the ended route live again.
        r.client_add(key(3), 2, PEER, now).unwrap();
        assert_eq!(
            r.route(&key(3), flags::FIN, &rec(0), now),
            Routed::Tunnel(2)
        );
        r.client_add(key(3), 2, PEER, now).unwrap();
        assert_eq!(r.routes.closing_len(), 0);
        for _ in 0..3 * CLOSING_HOLD_MS / 1000 {
            now += 1000;
            r.tick(now);
        }
        assert_eq!(
            r.route(&key(3), flags::ACK, &rec(0), now),
            Routed::Tunnel(2)
        );
        // Tunnel 2 closes with an ended route: gone too.
        assert_eq!(
            r.route(&key(3), flags::RST, &rec(0), now),
            Routed::Tunnel(2)
        );
        r.tunnel_closed(2);
        assert_eq!(r.route(&key(3), flags::ACK, &rec(0), now), Routed::Dropped);
        assert_eq!(r.routes.closing_len(), 0);
        assert_eq!(r.routes.tunnel_routes(2), 0);
    }

    /// Ended routes are bounded like live ones: at half the capacity their older generation
    /// is dropped.
    #[test]
    fn ended_routes_are_bounded() {
        let mut routes = Routes::new(8, 1 << 40, 0);
        for round in 0..10u16 {
            for p in 0..4 {
                let k = key(round * 4 + p);
                routes.add(k, 1, PEER, 0).unwrap();
                assert_eq!(routes.lookup(&k, 0, true), Some(1));
                assert!(routes.len() <= 8, "{}", routes.len());
            }
        }
        assert_eq!(routes.len(), routes.tunnel_routes(1));
    }

    #[test]
    fn idle_routes_expire_used_ones_stay() {
        let mut routes = Routes::new(100, 1000, 0);
        routes.add(key(1), 1, PEER, 0).unwrap();
        routes.add(key(2), 1, PEER, 0).unwrap();
        let mut now = 0;
        while now < 5000 {
            now += 100;
            routes.expire(now);
            if now % 500 == 0 {
                assert_eq!(routes.lookup(&key(1), now, false), Some(1), "at {now}");
            }
        }
        assert_eq!(routes.lookup(&key(2), now, false), None);
        assert_eq!(routes.stats.expired, 1);
    }

    #[test]
    fn delay_table_delivers_after_add_in_order() {
        let mut r = router();
        assert_eq!(r.route(&key(1), flags::SYN, &rec(10), 0), Routed::Delayed);
        assert_eq!(r.route(&key(1), flags::SYN, &rec(11), 5), Routed::Delayed);
        // A plain ACK without route is dropped, never kept.
        assert_eq!(r.route(&key(1), flags::ACK, &rec(12), 6), Routed::Dropped);
        assert_eq!(add(&mut r, key(1), 3, 10), Some(vec![10, 11]));
        assert_eq!(r.delay.stats.sent, 2);
        assert_eq!(add(&mut r, key(1), 3, 11), None);
        assert_eq!(
            r.route(&key(1), flags::ACK, &rec(13), 12),
            Routed::Tunnel(3)
        );
    }

    #[test]
    fn delay_table_drops_after_30_s_not_refreshed() {
        let mut r = router();
        assert_eq!(
            r.route(&key(1), flags::SYN, &rec(1), 1_000),
            Routed::Delayed
        );
        assert_eq!(
            r.route(&key(1), flags::SYN, &rec(2), 20_000),
            Routed::Delayed
        );
        r.tick(30_999);
        assert_eq!(r.delay.len(), 1);
        r.tick(31_000);
        assert_eq!(r.delay.len(), 0);
        assert_eq!(r.delay.stats.expired, 2);
        assert_eq!(add(&mut r, key(1), 3, 31_001), None);
        // A new entry after expiry lives its own 30 s.
        assert_eq!(r.routes.lookup(&key(1), 31_002, false), Some(3));
        assert_eq!(
            r.route(&key(2), flags::SYN, &rec(5), 31_000),
            Routed::Delayed
        );
        r.tick(60_999);
        assert_eq!(add(&mut r, key(2), 3, 60_999), Some(vec![5]));
    }

    #[test]
    fn delay_table_is_bounded() {
        let mut d = DelayTable::new(2, 3, DELAY_HOLD_MS, BYTES);
        assert!(d.hold(key(1), &rec(1), 0));
        assert!(d.hold(key(2), &rec(1), 0));
        assert!(!d.hold(key(3), &rec(1), 0), "table full");
        for _ in 0..2 {
            assert!(d.hold(key(1), &rec(2), 0));
        }
        assert!(!d.hold(key(1), &rec(9), 0), "per-connection queue full");
        assert_eq!(d.stats.full, 2);
        // Expiry makes room.
        assert!(d.hold(key(3), &rec(1), DELAY_HOLD_MS));
        assert_eq!(d.len(), 1);
        assert_eq!(d.stats.expired, 4);
    }

    #[test]
    fn taken_then_recreated_entry_is_not_expired_by_stale_order() {
        let mut d = DelayTable::new(10, 4, 1000, BYTES);
        d.hold(key(1), &rec(1), 0);
        assert_eq!(held(d.take(&key(1))), Some(vec![1]));
        d.hold(key(1), &rec(2), 500);
        d.expire(1000);
        assert_eq!(d.len(), 1, "entry created at 500 lives until 1500");
        d.expire(1500);
        assert!(d.is_empty());
    }

    #[test]
    fn single_group_window_and_hashing() {
        let mut g = SingleGroup::new(false);
        assert_eq!(g.pick(&key(1)), None);
        assert_eq!(g.admit(1, 0), Admission::Joined);
        assert_eq!(g.admit(2, 3000), Admission::Joined);
        // Same connection -> same tunnel; both tunnels are used by some connection.
        let mut used = HashSet::new();
        for p in 0..64 {
            let t = g.pick(&key(p)).unwrap();
            assert_eq!(g.pick(&key(p)), Some(t));
            used.insert(t);
        }
        assert_eq!(used.len(), 2);
        // A tunnel after the window is a new tcpcopy: the old group is closed.
        assert_eq!(g.admit(3, 3001), Admission::NewGroup { close: vec![1, 2] });
        assert_eq!(g.members(), &[3]);
        assert_eq!(g.pick(&key(5)), Some(3));
        // Closed tunnels leave the group.
        g.remove(3);
        assert_eq!(g.pick(&key(5)), None);
    }

    #[test]
    fn single_group_protect_and_limit() {
        let mut g = SingleGroup::new(true);
        for t in 0..SINGLE_MAX_TUNNELS as u64 {
            assert_eq!(g.admit(t, 0), Admission::Joined);
        }
        assert_eq!(g.admit(100, 10), Admission::Spare);
        assert_eq!(g.admit(101, 5000), Admission::Refused);
        for t in 0..SINGLE_MAX_TUNNELS as u64 {
            g.remove(t);
        }
        assert_eq!(
            g.admit(102, 5000),
            Admission::Refused,
            "a spare is still open"
        );
        g.remove(100);
        assert_eq!(g.admit(103, 5001), Admission::Joined);
        assert_eq!(g.members(), &[103]);
    }
}
