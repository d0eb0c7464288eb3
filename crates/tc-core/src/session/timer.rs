//! A session's timers: one slot per kind, one deadline out.

use std::time::Instant;

/// The kinds of timer a session runs (spec 4.12-4.19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The periodic session check: handshake deadline, silence, keepalive (spec 4.19).
    Check,
    /// Retransmission of unacknowledged segments to the target.
    Retransmit,
    /// The delayed ACK of target data.
    DelayedAck,
    /// A missing captured segment is given up on.
    CaptureGap,
    /// The SYN is sent again to a silent target.
    SynRetry,
    /// A new handshake after the target closed or reset the connection.
    Reconnect,
    /// The end of lingering of a finished session.
    Linger,
}

const KINDS: usize = 7;

impl Timer {
    const ALL: [Timer; KINDS] = [
        Timer::Check,
        Timer::Retransmit,
        Timer::DelayedAck,
        Timer::CaptureGap,
        Timer::SynRetry,
        Timer::Reconnect,
        Timer::Linger,
    ];
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TimerTable {
    slots: [Option<Instant>; KINDS],
}

impl TimerTable {
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.slots[timer as usize] = Some(at);
    }

    /// Sets `timer` unless it is already armed.
    pub fn arm(&mut self, timer: Timer, at: Instant) {
        self.slots[timer as usize].get_or_insert(at);
    }

    pub fn stop(&mut self, timer: Timer) {
        self.slots[timer as usize] = None;
    }

    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.slots[timer as usize]
    }

    pub fn is_armed(&self, timer: Timer) -> bool {
        self.slots[timer as usize].is_some()
    }

    /// Whether `timer` is armed and due at `now`; a due timer is disarmed.
    pub fn expire(&mut self, timer: Timer, now: Instant) -> bool {
        let slot = &mut self.slots[timer as usize];
        if slot.is_some_and(|t| now >= t) {
            *slot = None;
            true
        } else {
            false
        }
    }

    /// Stops every timer but `keep`.
    pub fn stop_all_but(&mut self, keep: Timer) {
        for t in Timer::ALL {
            if t != keep {
                self.stop(t);
            }
        }
    }

    /// The earliest armed deadline.
    pub fn next(&self) -> Option<Instant> {
        self.slots.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_deadline_out() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Check, t0 + Duration::from_secs(3));
        t.set(Timer::Retransmit, t0 + Duration::from_millis(200));
        t.arm(Timer::Retransmit, t0 + Duration::from_secs(9));
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(200)));
        assert!(!t.expire(Timer::Retransmit, t0));
        assert!(t.expire(Timer::Retransmit, t0 + Duration::from_secs(1)));
        assert!(!t.is_armed(Timer::Retransmit));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(3)));
        t.set(Timer::Linger, t0 + Duration::from_secs(6));
        t.stop_all_but(Timer::Linger);
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(6)));
    }
}
