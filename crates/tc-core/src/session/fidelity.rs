//! How faithful a run was: sessions by outcome, requests and bytes captured against sent,
//! responses seen, and the replay lag (capture to send) of request data. Kept by the replayer
//! as it goes (fixed-size counters, no allocation per packet); the binary prints and exports
//! it (issue 16, the fidelity report).

use std::time::Duration;

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handshake completed and the session ended without a reset by the target or a timeout.
    Completed,
    /// Still in the table when the run ended.
    StillActive,
    /// The target reset it (after the handshake, or refused the SYN).
    TargetReset,
    /// No handshake with the target ever completed.
    NeverEstablished,
    /// Removed by the session check: target silent too long, too big.
    TimedOut,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Completed,
        Outcome::StillActive,
        Outcome::TargetReset,
        Outcome::NeverEstablished,
        Outcome::TimedOut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::StillActive => "still_active",
            Outcome::TargetReset => "target_reset",
            Outcome::NeverEstablished => "never_established",
            Outcome::TimedOut => "timed_out",
        }
    }
}

/// Latencies in a fixed log-linear histogram: 8 buckets per power of two of microseconds
/// (about 9% resolution), up to 2^40 us.
#[derive(Debug, Clone)]
pub struct LagHistogram {
    buckets: [u64; Self::BUCKETS],
    count: u64,
    max_us: u64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            buckets: [0; Self::BUCKETS],
            count: 0,
            max_us: 0,
        }
    }
}

impl LagHistogram {
    const SUB: u32 = 3;
    const BUCKETS: usize = 41 << Self::SUB;

    fn index(us: u64) -> usize {
        if us < (1 << Self::SUB) {
            return us as usize;
        }
        let log = 63 - us.leading_zeros();
        let sub = (us >> (log - Self::SUB)) & ((1 << Self::SUB) - 1);
        (((log - Self::SUB + 1) << Self::SUB) as usize + sub as usize).min(Self::BUCKETS - 1)
    }

    /// The largest value of bucket `i`.
    fn upper(i: usize) -> u64 {
        let per = 1usize << Self::SUB;
        if i < per {
            return i as u64;
        }
        let log = (i >> Self::SUB) as u32 + Self::SUB - 1;
        let sub = (i & (per - 1)) as u64;
        ((per as u64 + sub + 1) << (log - Self::SUB)) - 1
    }

    pub fn record(&mut self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::index(us)] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// The `p`-th percentile (0..=100) in microseconds: the upper bound of its bucket, never
    /// above the maximum seen. 0 without samples.
    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::upper(i).min(self.max_us);
            }
        }
        self.max_us
    }
}

/// The fidelity counters of a run.
#[derive(Debug, Clone, Default)]
pub struct Fidelity {
    outcomes: [u64; 5],
    /// Sessions whose SYN was left out by `-r`/`-g`.
    pub sessions_sampled_out: u64,
    /// Requests (client data after a response, or the first) captured and sent.
    pub requests_captured: u64,
    pub requests_sent: u64,
    /// Client payload bytes captured (new data, not retransmissions) and sent (first time).
    pub bytes_captured: u64,
    pub bytes_sent: u64,
    /// Requests the target answered with data.
    pub requests_answered: u64,
    /// Capture to send of request data.
    pub lag: LagHistogram,
}

impl Fidelity {
    pub fn count(&mut self, outcome: Outcome) {
        self.outcomes[outcome as usize] += 1;
    }

    pub fn sessions(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize]
    }

    /// Every session that ended (or was still there at the end), by outcome.
    pub fn sessions_total(&self) -> u64 {
        self.outcomes.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_bucket() {
        let mut h = LagHistogram::default();
        assert_eq!(h.percentile_us(50.0), 0);
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.percentile_us(50.0);
        assert!((500..=560).contains(&p50), "{p50}");
        let p99 = h.percentile_us(99.0);
        assert!((990..=1000).contains(&p99), "{p99}");
        assert_eq!(h.max_us(), 1000);
        assert_eq!(h.percentile_us(100.0), 1000);
        h.record(Duration::from_secs(1 << 30));
        assert_eq!(h.count(), 1001);
    }

    #[test]
    fn bucket_bounds_are_monotonic() {
        let mut last = 0;
        for i in 1..LagHistogram::BUCKETS {
            let u = LagHistogram::upper(i);
            assert!(u > last, "bucket {i}: {u} after {last}");
            last = u;
        }
        for us in [0u64, 1, 7, 8, 9, 15, 16, 100, 1_000_000, u64::MAX / 2] {
            let i = LagHistogram::index(us);
            assert!(
                LagHistogram::upper(i) >= us.min(LagHistogram::upper(LagHistogram::BUCKETS - 1))
            );
            if i > 0 {
                assert!(LagHistogram::upper(i - 1) < us, "{us} in bucket {i}");
            }
        }
    }
}
