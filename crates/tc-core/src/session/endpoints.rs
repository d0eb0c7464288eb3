//! Bookkeeping of fake client endpoints shared by several real connections (`-c`, `-n`,
//! `-f`): connections moved to another port because theirs was held by a live session, and
//! endpoints closed lately that the target may still hold in TIME_WAIT.
//!
//! Both are bounded and cost O(1) per operation: a moved connection's entry lives as long as
//! its session (removed when the session is), and closed endpoints expire in time order.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A moved connection: its real client (address and port as captured, unique among live
/// connections, where several clients may share a fake endpoint with `-c`), replica index,
/// target.
pub type MoveId = (IpAddr, u16, u16, IpAddr, u16);

/// Connections moved to another port: their later segments follow them there.
#[derive(Debug)]
pub struct MovedPorts {
    ports: HashMap<MoveId, u16>,
    cap: usize,
}

impl MovedPorts {
    pub fn new(cap: usize) -> MovedPorts {
        MovedPorts {
            ports: HashMap::new(),
            cap,
        }
    }

    /// The port the connection `id` was moved to, if it was.
    pub fn get(&self, id: &MoveId) -> Option<u16> {
        self.ports.get(id).copied()
    }

    /// Whether one more move can be recorded. When it cannot, the connection is not moved
    /// (and not replayed while its endpoint is held): a move that is not recorded would send
    /// its later segments into another connection's session.
    pub fn has_room(&self) -> bool {
        self.ports.len() < self.cap
    }

    /// Records the move of a session that was just created on `port`.
    pub fn insert(&mut self, id: MoveId, port: u16) {
        self.ports.insert(id, port);
    }

    /// A new connection on `id` starts at its own port: later segments of `id` go there.
    pub fn clear_move(&mut self, id: &MoveId) {
        self.ports.remove(id);
    }

    /// The session moved as `id` to `port` is gone: its entry goes with it (unless a later
    /// connection on `id` was moved elsewhere since).
    pub fn session_gone(&mut self, id: &MoveId, port: u16) {
        if self.ports.get(id) == Some(&port) {
            self.ports.remove(id);
        }
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

/// Endpoints closed within the last `hold`, expired in time order, each with what its last
/// connection left (`V`).
#[derive(Debug)]
pub struct RecentlyClosed<K, V = ()> {
    closed_at: HashMap<K, (Instant, V)>,
    order: VecDeque<(Instant, K)>,
    hold: Duration,
    cap: usize,
}

impl<K: Copy + Eq + Hash> RecentlyClosed<K, ()> {
    /// `key` closed at `now` (times are non-decreasing).
    pub fn insert(&mut self, key: K, now: Instant) {
        self.insert_with(key, now, ());
    }

    /// Whether `key` closed less than `hold` before `now`.
    pub fn contains(&self, key: &K, now: Instant) -> bool {
        self.get(key, now).is_some()
    }
}

impl<K: Copy + Eq + Hash, V> RecentlyClosed<K, V> {
    pub fn new(hold: Duration, cap: usize) -> RecentlyClosed<K, V> {
        RecentlyClosed {
            closed_at: HashMap::new(),
            order: VecDeque::new(),
            hold,
            cap,
        }
    }

    /// `key` closed at `now` (times are non-decreasing), leaving `value`. Beyond the cap the
    /// oldest is forgotten early.
    pub fn insert_with(&mut self, key: K, now: Instant, value: V) {
        self.expire(now);
        if self.order.len() >= self.cap {
            self.pop_oldest();
        }
        self.closed_at.insert(key, (now, value));
        self.order.push_back((now, key));
    }

    /// What `key` left, if it closed less than `hold` before `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.closed_at
            .get(key)
            .filter(|(t, _)| now.saturating_duration_since(*t) < self.hold)
            .map(|(_, v)| v)
    }

    /// Forgets what closed `hold` or longer before `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(t, _)) = self.order.front() {
            if now.saturating_duration_since(t) < self.hold {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((t, key)) = self.order.pop_front() {
            // A later close of the same key keeps its own, later entry.
            if self.closed_at.get(&key).is_some_and(|(at, _)| *at == t) {
                self.closed_at.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.closed_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.closed_at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn closed_endpoints_expire_in_time_order() {
        let t0 = Instant::now();
        let hold = Duration::from_secs(60);
        let mut r = RecentlyClosed::new(hold, 1 << 16);
        // 1,000 closes a second for 5 minutes: only the last minute is held, at every step
        // (the old table held 65,536 and then scanned all of them on every close).
        for i in 0..300_000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            r.insert(i, now);
            assert!(r.len() <= 60_001, "{} held at {i}", r.len());
        }
        let now = t0 + Duration::from_millis(300_000);
        assert!(r.contains(&299_999, now));
        assert!(!r.contains(&1_000, now));
        r.expire(now + hold);
        assert!(r.is_empty());
    }

    #[test]
    fn a_key_closed_again_keeps_its_later_time() {
        let t0 = Instant::now();
        let mut r = RecentlyClosed::new(Duration::from_secs(60), 16);
        r.insert(7u32, t0);
        r.insert(7, t0 + Duration::from_secs(50));
        r.expire(t0 + Duration::from_secs(70));
        assert!(r.contains(&7, t0 + Duration::from_secs(70)));
        // Past the cap the oldest goes first.
        for k in 100..116u32 {
            r.insert(k, t0 + Duration::from_secs(71));
        }
        assert_eq!(r.len(), 16);
        assert!(!r.contains(&7, t0 + Duration::from_secs(71)));
    }

    #[test]
    fn a_moved_entry_lives_as_long_as_its_session() {
        let ip = IpAddr::from(Ipv4Addr::new(203, 0, 113, 1));
        let t = IpAddr::from(Ipv4Addr::new(198, 18, 0, 30));
        let a: MoveId = (ip, 40000, 0, t, 8080);
        let mut m = MovedPorts::new(2);
        m.insert(a, 40001);
        assert_eq!(m.get(&a), Some(40001));
        // A later connection on the same id moved elsewhere: the first session's end
        // leaves the later move alone.
        m.insert(a, 40002);
        m.session_gone(&a, 40001);
        assert_eq!(m.get(&a), Some(40002));
        m.session_gone(&a, 40002);
        assert!(m.is_empty());
        m.insert(a, 1);
        m.insert((ip, 1, 0, t, 80), 2);
        assert!(!m.has_room());
    }
}
