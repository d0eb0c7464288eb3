//! Which tunnel gets a captured response: pure logic, no I/O, time passed in as milliseconds
//! of a monotonic clock (tests drive a virtual one).
//!
//! * [`Routes`]: exact-tuple routes installed by CLIENT_ADD, with idle expiry and a bounded size
//!   (an approximate LRU made of two generations, so every operation is O(1)).
//! * [`DelayTable`]: SYN-ACKs and RSTs captured before their CLIENT_ADD, held 30 s.
//! * [`Router`]: both together, with the counters of the statistics line.
//! * [`SingleGroup`]: `--single` mode, where one tcpcopy's tunnels share responses by hash.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;

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
    pub client_ip: Ipv4Addr,
    pub client_port: u16,
    pub target_ip: Ipv4Addr,
    pub target_port: u16,
}

impl RouteKey {
    pub fn new(
        client_ip: Ipv4Addr,
        client_port: u16,
        target_ip: Ipv4Addr,
        target_port: u16,
        dnat: bool,
    ) -> RouteKey {
        RouteKey {
            client_ip,
            client_port,
            target_ip: if dnat {
                Ipv4Addr::UNSPECIFIED
            } else {
                target_ip
            },
            target_port,
        }
    }

    /// A well-mixed hash spreading `--single` responses over the tunnels. (The original's
    /// key ignored the low byte of the client port, so neighbouring ports shared a tunnel.)
    pub fn spread_hash(&self) -> u32 {
        let mut h = u64::from(u32::from(self.client_ip));
        h = (h << 16) | u64::from(self.client_port);
        h ^= u64::from(u32::from(self.target_ip)).rotate_left(24) ^ u64::from(self.target_port);
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
    last_used: Millis,
}

/// Counters of the route table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// CLIENT_ADDs installed ("route" / "all sessions" of the original).
    pub adds: u64,
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

/// Exact-tuple routes. Two generations: new and refreshed routes live in `current`; when it is
/// half the capacity, or one idle period has passed, `previous` (routes untouched since the
/// last rotation) is dropped and `current` becomes `previous`. A lookup that finds a route in
/// `previous` moves it back to `current`. So the table never exceeds its capacity, a route used
/// at least once per idle period is never expired, and the maps keep their allocations.
#[derive(Debug)]
pub struct Routes {
    current: HashMap<RouteKey, RouteEntry>,
    previous: HashMap<RouteKey, RouteEntry>,
    half_capacity: usize,
    idle_ms: Millis,
    rotated_at: Millis,
    /// Tunnels that ever announced a route: only their closing needs a purge scan.
    announcers: HashSet<TunnelId>,
    pub stats: RouteStats,
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
            announcers: HashSet::new(),
            stats: RouteStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn rotate(&mut self) {
        self.previous.clear();
        std::mem::swap(&mut self.current, &mut self.previous);
    }

    /// Drops idle routes; call about once a second.
    pub fn expire(&mut self, now: Millis) {
        if now.saturating_sub(self.rotated_at) >= self.idle_ms {
            self.stats.expired += self.previous.len() as u64;
            self.rotate();
            self.rotated_at = now;
        }
    }

    fn make_room(&mut self) {
        if self.current.len() >= self.half_capacity {
            self.stats.evicted += self.previous.len() as u64;
            self.rotate();
        }
    }

    /// Installs or moves the route of `key` to `tunnel` (the last ADD wins).
    pub fn add(&mut self, key: RouteKey, tunnel: TunnelId, now: Millis) {
        self.stats.adds += 1;
        self.announcers.insert(tunnel);
        let entry = RouteEntry {
            tunnel,
            last_used: now,
        };
        if let Some(e) = self.current.get_mut(&key) {
            *e = entry;
            return;
        }
        self.previous.remove(&key);
        self.make_room();
        self.current.insert(key, entry);
    }

    /// The tunnel of `key`, refreshing the route.
    pub fn lookup(&mut self, key: &RouteKey, now: Millis) -> Option<TunnelId> {
        if let Some(e) = self.current.get_mut(key) {
            e.last_used = now;
            self.stats.hits += 1;
            return Some(e.tunnel);
        }
        match self.previous.remove(key) {
            Some(mut e) => {
                e.last_used = now;
                self.make_room();
                self.current.insert(*key, e);
                self.stats.hits += 1;
                Some(e.tunnel)
            }
            None => {
                self.stats.lost += 1;
                None
            }
        }
    }

    /// Forgets every route to `tunnel` (it closed).
    pub fn remove_tunnel(&mut self, tunnel: TunnelId) {
        if !self.announcers.remove(&tunnel) {
            return;
        }
        let before = self.len();
        self.current.retain(|_, e| e.tunnel != tunnel);
        self.previous.retain(|_, e| e.tunnel != tunnel);
        self.stats.purged += (before - self.len()) as u64;
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
    /// Records refused because the table (or the connection's queue) was full.
    pub full: u64,
}

#[derive(Debug)]
struct DelayEntry<R> {
    created: Millis,
    records: Vec<R>,
}

/// Responses waiting for the CLIENT_ADD of their connection. An entry lives `hold_ms` from its
/// creation (not refreshed), at most `capacity` entries of at most `per_key` records.
#[derive(Debug)]
pub struct DelayTable<R> {
    entries: HashMap<RouteKey, DelayEntry<R>>,
    /// Creation order, for expiry; items of entries already taken are skipped.
    order: VecDeque<(Millis, RouteKey)>,
    capacity: usize,
    per_key: usize,
    hold_ms: Millis,
    pub stats: DelayStats,
}

impl<R> DelayTable<R> {
    pub fn new(capacity: usize, per_key: usize, hold_ms: Millis) -> DelayTable<R> {
        DelayTable {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            per_key: per_key.max(1),
            hold_ms,
            stats: DelayStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues `record` for `key`; false if it was refused (table or queue full).
    pub fn hold(&mut self, key: RouteKey, record: R, now: Millis) -> bool {
        if let Some(e) = self.entries.get_mut(&key) {
            if e.records.len() >= self.per_key {
                self.stats.full += 1;
                return false;
            }
            e.records.push(record);
            self.stats.delayed += 1;
            return true;
        }
        if self.entries.len() >= self.capacity {
            self.expire(now);
            if self.entries.len() >= self.capacity {
                self.stats.full += 1;
                return false;
            }
        }
        self.entries.insert(
            key,
            DelayEntry {
                created: now,
                records: vec![record],
            },
        );
        self.order.push_back((now, key));
        self.stats.delayed += 1;
        true
    }

    /// The records waiting for `key`, in capture order.
    pub fn take(&mut self, key: &RouteKey) -> Option<Vec<R>> {
        let e = self.entries.remove(key)?;
        self.stats.sent += e.records.len() as u64;
        Some(e.records)
    }

    /// Discards entries older than the hold time.
    pub fn expire(&mut self, now: Millis) {
        while let Some(&(created, key)) = self.order.front() {
            if now.saturating_sub(created) < self.hold_ms {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&key).is_some_and(|e| e.created == created) {
                if let Some(e) = self.entries.remove(&key) {
                    self.stats.expired += e.records.len() as u64;
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
pub struct Router<R> {
    pub routes: Routes,
    pub delay: DelayTable<R>,
}

impl<R: Clone> Router<R> {
    pub fn new(max_routes: usize, idle_ms: Millis, delay_capacity: usize, now: Millis) -> Self {
        Router {
            routes: Routes::new(max_routes, idle_ms, now),
            delay: DelayTable::new(delay_capacity, DELAY_RECORDS_PER_KEY, DELAY_HOLD_MS),
        }
    }

    /// CLIENT_ADD from `tunnel`: installs the route and returns the responses that were waiting
    /// for it, in capture order, to be sent on `tunnel` before anything newer.
    pub fn client_add(&mut self, key: RouteKey, tunnel: TunnelId, now: Millis) -> Option<Vec<R>> {
        self.routes.add(key, tunnel, now);
        self.delay.take(&key)
    }

    /// Routes one response. `syn_or_rst`: it may be delayed when there is no route yet.
    pub fn route(&mut self, key: &RouteKey, syn_or_rst: bool, record: &R, now: Millis) -> Routed {
        if let Some(t) = self.routes.lookup(key, now) {
            return Routed::Tunnel(t);
        }
        if syn_or_rst && self.delay.hold(*key, record.clone(), now) {
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

    #[test]
    fn exact_tuple_routing_and_last_add_wins() {
        let mut r: Router<u32> = Router::new(100, 60_000, 10, 0);
        assert_eq!(r.client_add(key(1000), 1, 0), None);
        assert_eq!(r.route(&key(1000), false, &0, 1), Routed::Tunnel(1));
        // Another port, another target ip: no route.
        assert_eq!(r.route(&key(1001), false, &0, 1), Routed::Dropped);
        let mut other = key(1000);
        other.target_ip = Ipv4Addr::new(198, 18, 0, 31);
        assert_eq!(r.route(&other, false, &0, 1), Routed::Dropped);
        r.client_add(key(1000), 2, 2);
        assert_eq!(r.route(&key(1000), false, &0, 3), Routed::Tunnel(2));
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
        let mut r: Router<u8> = Router::new(10, 1000, 10, 0);
        r.client_add(a, 7, 0);
        assert_eq!(r.route(&b, false, &0, 0), Routed::Tunnel(7));
    }

    #[test]
    fn closed_tunnel_routes_are_purged() {
        let mut r: Router<u8> = Router::new(100, 60_000, 10, 0);
        r.client_add(key(1), 1, 0);
        r.client_add(key(2), 1, 0);
        r.client_add(key(3), 2, 0);
        r.tunnel_closed(1);
        assert_eq!(r.routes.stats.purged, 2);
        assert_eq!(r.route(&key(1), false, &0, 1), Routed::Dropped);
        assert_eq!(r.route(&key(3), false, &0, 1), Routed::Tunnel(2));
        // A tunnel that never announced anything needs no scan and purges nothing.
        r.tunnel_closed(99);
        assert_eq!(r.routes.stats.purged, 2);
    }

    #[test]
    fn bounded_size_evicts_least_recently_used() {
        let mut routes = Routes::new(4, 1_000_000, 0);
        for p in 0..4 {
            routes.add(key(p), 1, 0);
        }
        assert_eq!(routes.len(), 4);
        // Use 0 so that it survives; 1..3 are older.
        assert_eq!(routes.lookup(&key(0), 1), Some(1));
        for p in 10..20 {
            routes.add(key(p), 2, 2);
            assert!(routes.len() <= 4, "len {}", routes.len());
        }
        assert!(routes.stats.evicted >= 8);
        assert_eq!(routes.lookup(&key(1), 3), None);
        assert_eq!(routes.lookup(&key(19), 3), Some(2));
        assert_eq!(
            routes.stats.evicted + routes.len() as u64,
            routes.stats.adds,
            "every route is either live or counted as evicted"
        );
    }

    #[test]
    fn idle_routes_expire_used_ones_stay() {
        let mut routes = Routes::new(100, 1000, 0);
        routes.add(key(1), 1, 0);
        routes.add(key(2), 1, 0);
        let mut now = 0;
        while now < 5000 {
            now += 100;
            routes.expire(now);
            if now % 500 == 0 {
                assert_eq!(routes.lookup(&key(1), now), Some(1), "at {now}");
            }
        }
        assert_eq!(routes.lookup(&key(2), now), None);
        assert_eq!(routes.stats.expired, 1);
    }

    #[test]
    fn delay_table_delivers_after_add_in_order() {
        let mut r: Router<u32> = Router::new(100, 60_000, 10, 0);
        assert_eq!(r.route(&key(1), true, &10, 0), Routed::Delayed);
        assert_eq!(r.route(&key(1), true, &11, 5), Routed::Delayed);
        // A plain ACK without route is dropped, never kept.
        assert_eq!(r.route(&key(1), false, &12, 6), Routed::Dropped);
        assert_eq!(r.client_add(key(1), 3, 10), Some(vec![10, 11]));
        assert_eq!(r.delay.stats.sent, 2);
        assert_eq!(r.client_add(key(1), 3, 11), None);
        assert_eq!(r.route(&key(1), false, &13, 12), Routed::Tunnel(3));
    }

    #[test]
    fn delay_table_drops_after_30_s_not_refreshed() {
        let mut r: Router<u32> = Router::new(100, 60_000, 10, 0);
        assert_eq!(r.route(&key(1), true, &1, 1_000), Routed::Delayed);
        assert_eq!(r.route(&key(1), true, &2, 20_000), Routed::Delayed);
        r.tick(30_999);
        assert_eq!(r.delay.len(), 1);
        r.tick(31_000);
        assert_eq!(r.delay.len(), 0);
        assert_eq!(r.delay.stats.expired, 2);
        assert_eq!(r.client_add(key(1), 3, 31_001), None);
        // A new entry after expiry lives its own 30 s.
        assert_eq!(r.routes.lookup(&key(1), 31_002), Some(3));
        assert_eq!(r.route(&key(2), true, &5, 31_000), Routed::Delayed);
        r.tick(60_999);
        assert_eq!(r.client_add(key(2), 3, 60_999), Some(vec![5]));
    }

    #[test]
    fn delay_table_is_bounded() {
        let mut d: DelayTable<u32> = DelayTable::new(2, 3, DELAY_HOLD_MS);
        assert!(d.hold(key(1), 1, 0));
        assert!(d.hold(key(2), 1, 0));
        assert!(!d.hold(key(3), 1, 0), "table full");
        for _ in 0..2 {
            assert!(d.hold(key(1), 2, 0));
        }
        assert!(!d.hold(key(1), 9, 0), "per-connection queue full");
        assert_eq!(d.stats.full, 2);
        // Expiry makes room.
        assert!(d.hold(key(3), 1, DELAY_HOLD_MS));
        assert_eq!(d.len(), 1);
        assert_eq!(d.stats.expired, 4);
    }

    #[test]
    fn taken_then_recreated_entry_is_not_expired_by_stale_order() {
        let mut d: DelayTable<u32> = DelayTable::new(10, 4, 1000);
        d.hold(key(1), 1, 0);
        assert_eq!(d.take(&key(1)), Some(vec![1]));
        d.hold(key(1), 2, 500);
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
