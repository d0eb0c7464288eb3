//! Offline pacing (spec 7.2) as a pure machine: the capture timestamp of each record in, the
//! time after the start of the pass at which it is due out. No clock is read; the caller adds
//! the offset to its own start time (tcpcopy's `OfflineSource`, the `offline_pacing` fuzz
//! target's virtual clock).
//!
//! The rule for timestamps that cannot be real pacing (a corrupt record, a clock step, files
//! merged from different days, an `if_tsoffset` of i64::MAX):
//! * A packet's timestamp is compared with the latest timestamp seen so far in the pass (the
//!   high mark), not with the previous packet's, so slightly reordered records (merged
//!   interfaces) neither slow nor speed up the replay.
//! * Earlier than the high mark by at most [`MAX_TIMESTAMP_JUMP`]: due with the high mark
//!   (at once), counted as `backwards`.
//! * More than [`MAX_TIMESTAMP_JUMP`] away from the high mark, in either direction: the jump
//!   is cut out (due at once, the high mark moves to this timestamp, so pacing goes on from
//!   here) and counted as `jumps`. No session survives an idle hour (`-t` 600 s, `-k` 720 s by
//!   default), so waiting it out would only delay the replay.
//! * Later than the high mark by more than `-I`: the gap is cut out once (due at once),
//!   counted as `gaps cut`.
//! * Otherwise the packet is due the gap later than the high mark, divided by `-a`.
//!
//! So the offset of a pass grows by at most min(`-I`, [`MAX_TIMESTAMP_JUMP`]) per record: no
//! overflow, and no wait longer than an hour between two packets, whatever the file holds.

use std::time::Duration;

/// The largest gap between two capture timestamps that is replayed as a wait.
pub const MAX_TIMESTAMP_JUMP: Duration = Duration::from_secs(3600);

/// What the pacer made of one timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The first packet of the pass, or one paced by its gap to the high mark.
    Paced,
    /// Earlier than the high mark (within [`MAX_TIMESTAMP_JUMP`]): due at once.
    Backwards,
    /// A gap longer than `-I`: cut out.
    GapCut,
    /// A jump of more than [`MAX_TIMESTAMP_JUMP`] either way: cut out.
    Jump,
}

/// Counters of the timestamps that were not paced as they are (all passes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacingStats {
    pub backwards: u64,
    pub gaps_cut: u64,
    pub jumps: u64,
}

/// Pacing of one pass over a capture file (restart it for the next pass).
#[derive(Debug, Clone)]
pub struct Pacer {
    accel: u32,
    max_gap: Option<Duration>,
    /// The latest capture timestamp of this pass.
    high: Option<Duration>,
    /// Capture time replayed so far in this pass (before the `-a` division).
    elapsed: Duration,
    pub stats: PacingStats,
}

impl Pacer {
    /// `accel`: `-a` (0 is taken as 1); `max_gap`: `-I`.
    pub fn new(accel: u32, max_gap: Option<Duration>) -> Pacer {
        Pacer {
            accel: accel.max(1),
            max_gap,
            high: None,
            elapsed: Duration::ZERO,
            stats: PacingStats::default(),
        }
    }

    /// A new pass: fresh timing (the counters go on).
    pub fn restart(&mut self) {
        self.high = None;
        self.elapsed = Duration::ZERO;
    }

    /// Schedules the next record of the pass, captured at `ts`: returns when it is due, as an
    /// offset from the start of the pass, and what was done with its timestamp.
    pub fn schedule(&mut self, ts: Duration) -> (Duration, Step) {
        let step = match self.high {
            None => {
                self.high = Some(ts);
                Step::Paced
            }
            Some(high) if ts < high => {
                if high - ts > MAX_TIMESTAMP_JUMP {
                    self.high = Some(ts);
                    self.stats.jumps += 1;
                    Step::Jump
                } else {
                    self.stats.backwards += 1;
                    Step::Backwards
                }
            }
            Some(high) => {
                let gap = ts - high;
                self.high = Some(ts);
                if gap > MAX_TIMESTAMP_JUMP {
                    self.stats.jumps += 1;
                    Step::Jump
                } else if self.max_gap.is_some_and(|max| gap > max) {
                    self.stats.gaps_cut += 1;
                    Step::GapCut
                } else {
                    self.elapsed = self.elapsed.saturating_add(gap);
                    Step::Paced
                }
            }
        };
        (self.elapsed / self.accel, step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn offsets(p: &mut Pacer, ts: &[Duration]) -> Vec<(Duration, Step)> {
        ts.iter().map(|&t| p.schedule(t)).collect()
    }

    #[test]
    fn paced_by_gaps_and_accelerated() {
        let mut p = Pacer::new(2, None);
        let got = offsets(&mut p, &[ms(1000), ms(1100), ms(1400)]);
        assert_eq!(
            got,
            vec![
                (ms(0), Step::Paced),
                (ms(50), Step::Paced),
                (ms(200), Step::Paced)
            ]
        );
        p.restart();
        assert_eq!(p.schedule(ms(5)), (ms(0), Step::Paced));
    }

    #[test]
    fn reordered_records_do_not_drift() {
        let mut p = Pacer::new(1, None);
        let got = offsets(&mut p, &[ms(0), ms(10), ms(9), ms(11)]);
        let due: Vec<Duration> = got.iter().map(|g| g.0).collect();
        assert_eq!(due, vec![ms(0), ms(10), ms(10), ms(11)]);
        assert_eq!(got[2].1, Step::Backwards);
        assert_eq!(p.stats.backwards, 1);
    }

    #[test]
    fn long_gaps_cut_once() {
        let mut p = Pacer::new(1, Some(ms(500)));
        let got = offsets(&mut p, &[ms(0), ms(10_000), ms(10_100)]);
        let due: Vec<Duration> = got.iter().map(|g| g.0).collect();
        assert_eq!(due, vec![ms(0), ms(0), ms(100)]);
        assert_eq!(p.stats.gaps_cut, 1);
    }

    /// Jumps beyond an hour, both ways, are cut out and pacing goes on from the new time.
    #[test]
    fn huge_jumps_cut_both_ways() {
        let max = Duration::MAX;
        for accel in [1, 1000] {
            for gap in [None, Some(ms(100))] {
                let mut p = Pacer::new(accel, gap);
                let got = offsets(&mut p, &[ms(0), max, ms(0), max, ms(0), ms(50)]);
                let due: Vec<Duration> = got.iter().map(|g| g.0).collect();
                assert_eq!(due[..5], [Duration::ZERO; 5], "{accel} {gap:?}");
                assert_eq!(due[5], ms(50) / accel);
                assert_eq!(p.stats.jumps, 4);
            }
        }
        let mut p = Pacer::new(1, None);
        let hour = MAX_TIMESTAMP_JUMP;
        assert_eq!(p.schedule(ms(0)).0, ms(0));
        assert_eq!(p.schedule(hour).0, hour);
        assert_eq!(p.schedule(hour * 2 + ms(1)), (hour, Step::Jump));
    }
}
