//! Offline input (spec 7): packets from a pcap file, paced by their timestamps (`-a` times
//! faster, gaps longer than `-I` cut out), `-T` passes, and a tail wait after the end of each
//! pass so sessions can finish. Driven by the event loop's clock, not by fd readiness.
//!
//! Differences from the original, on purpose: each packet is sent at its own due time (not one
//! gap early); a long gap is cut out once (the original re-added it every 10 ms tick); raw-IP
//! captures are accepted; the tail time is configurable (default 120 s). Pacing looks at every
//! IPv4 packet of the file, since the replay machine does not report which ones it used.
//!
//! Files are read with tc-core's [`PcapReader`] (classic pcap and pcapng, each record tagged
//! with its interface's link type) and paced by tc-core's [`Pacer`]: timestamps that go back,
//! or jump by more than an hour, are due at once and counted (see `tc_core::offline` for the
//! rule), so no file makes tcpcopy panic or wait for years. A record the reader cannot make
//! sense of ends the replay with "corrupt capture file at record N".

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tc_core::logging::RateLimit;
use tc_core::offline::{Pacer, PacingStats, Step};
use tc_core::packet::{LinkType, PcapReader};

/// What the source wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineStatus {
    /// Call again at this time.
    WakeAt(Instant),
    /// Every pass is done.
    Finished,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct OfflineStats {
    pub read: u64,
    /// Bytes of the records read (this pass and the ones before).
    pub bytes: u64,
    pub dispatched: u64,
    pub truncated: u64,
    /// Records of a link type we do not decode.
    pub unsupported_link: u64,
    pub passes_done: u32,
    /// Timestamps not paced as they are: back in time, jumps beyond an hour, gaps over `-I`.
    pub pacing: PacingStats,
}

/// How far the file is read ahead of the replay: a file read faster than the target answers
/// piles up in the sessions (up to `-m`), while the target's service rate is the limit
/// either way. Reading pauses while the sessions hold more than [`ReadAhead::LIMIT`] of
/// client packets not sent yet ([`tc_core::session::Replayer::unsent_bytes`]; packets in
/// flight are not counted, so bytes in flight are not capped), unless nothing was sent for
/// [`ReadAhead::STALL`]: what is held then is taken as stuck (a session whose target stopped
/// answering holds its requests until it times out) and the limit counts above it until the
/// sessions hold less than the limit again, so one stuck session does not starve the others.
#[derive(Debug, Clone, Copy)]
pub struct ReadAhead {
    /// Bytes taken as stuck at the last stall (shrinks with what is held).
    stuck: usize,
    last_unsent: usize,
    last_drain: Instant,
    /// Reads refused (for the statistics).
    pub pauses: u64,
    /// Stalls detected.
    pub stalls: u64,
}

impl ReadAhead {
    /// Memory of unsent client packets (bytes and per-segment overhead) beyond which reading
    /// pauses. In the bench's offline run (2000 connections, 200,000 short requests at `-a
    /// 100000`, `STEER=1`) 512 KB (about 2,500 such requests) replayed as fast as the 2 MB
    /// of payload allowed before (about 4 MB with the overhead), with 16 MB of peak RSS
    /// instead of 28: the per-session queues grow to what is read ahead and keep their size.
    pub const LIMIT: usize = 512 << 10;
    /// Nothing sent for this long while paused: a stall.
    pub const STALL: Duration = Duration::from_secs(1);

    pub fn new(now: Instant) -> ReadAhead {
        ReadAhead {
            stuck: 0,
            last_unsent: 0,
            last_drain: now,
            pauses: 0,
            stalls: 0,
        }
    }

    /// Whether the file may be read now, the sessions holding `unsent` bytes.
    pub fn may_read(&mut self, now: Instant, unsent: usize) -> bool {
        if unsent < self.last_unsent {
            self.last_drain = now;
        }
        self.last_unsent = unsent;
        // What was stuck can only have shrunk; below the limit, nothing stuck matters.
        self.stuck = if unsent <= Self::LIMIT {
            0
        } else {
            self.stuck.min(unsent)
        };
        if unsent <= self.stuck + Self::LIMIT {
            return true;
        }
        if now.saturating_duration_since(self.last_drain) >= Self::STALL {
            self.stalls += 1;
            self.stuck = unsent;
            self.last_drain = now;
            return true;
        }
        self.pauses += 1;
        false
    }
}

pub struct OfflineSource {
    file: PathBuf,
    reader: PcapReader<BufReader<File>>,
    pacer: Pacer,
    passes_left: u32,
    tail: Duration,
    wall_base: Instant,
    pending: Vec<u8>,
    pending_link: LinkType,
    /// When the packet in `pending` is due (offset from `wall_base`).
    pending_due: Option<Duration>,
    jump_log: RateLimit,
    eof_at: Option<Instant>,
    pub stats: OfflineStats,
    file_len: u64,
    passes: u32,
    started: Instant,
    pub read_ahead: ReadAhead,
}

fn open(file: &Path) -> anyhow::Result<PcapReader<BufReader<File>>> {
    PcapReader::open(file).map_err(|e| anyhow::anyhow!("open {}: {e}", file.display()))
}

/// The offline source of `input` (`-i` with a file), opened and logged as the original
/// does; none for live captures.
pub fn from_input(input: &crate::cli::Input) -> anyhow::Result<Option<OfflineSource>> {
    let crate::cli::Input::Offline {
        file,
        accel,
        max_gap,
        passes,
        tail,
    } = input
    else {
        return Ok(None);
    };
    log::info!(
        "TC_OFFLINE mode: accelerated {accel} times,interval:{} ms, passes:{passes}",
        max_gap.map(|g| g.as_millis()).unwrap_or(0)
    );
    Ok(Some(OfflineSource::open(
        file,
        *accel,
        *max_gap,
        *passes,
        *tail,
        Instant::now(),
    )?))
}

impl OfflineSource {
    pub fn open(
        file: &Path,
        accel: u32,
        max_gap: Option<Duration>,
        passes: u32,
        tail: Duration,
        now: Instant,
    ) -> anyhow::Result<OfflineSource> {
        let reader = open(file)?;
        log::info!("open pcap success:{}", file.display());
        Ok(OfflineSource {
            file: file.to_path_buf(),
            reader,
            pacer: Pacer::new(accel, max_gap),
            passes_left: passes.max(1),
            tail,
            wall_base: now,
            pending: Vec::with_capacity(65536),
            pending_link: LinkType::RawIp,
            pending_due: None,
            jump_log: RateLimit::new(Duration::from_secs(1), 1),
            eof_at: None,
            stats: OfflineStats::default(),
            file_len: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
            passes: passes.max(1),
            started: now,
            read_ahead: ReadAhead::new(now),
        })
    }

    /// The end of the file was reached and the tail wait is running.
    pub fn in_tail(&self) -> bool {
        self.eof_at.is_some()
    }

    /// Ends the tail wait now (every session is closed: nothing is left to wait for).
    pub fn end_tail(&mut self, now: Instant) {
        if self.eof_at.is_some() {
            self.eof_at = Some(now.checked_sub(self.tail).unwrap_or(now));
        }
    }

    /// One progress line: packets and bytes read, how far into the file and the passes, time
    /// spent and an estimate of the time left (from the share of the file read so far).
    pub fn progress(&self, now: Instant, sessions_open: usize, sessions_done: u64) -> String {
        let pass = self.stats.passes_done.min(self.passes - 1);
        let in_pass = if self.file_len > 0 {
            (self.reader.offset() as f64 / self.file_len as f64).min(1.0)
        } else {
            1.0
        };
        let done = if self.eof_at.is_some() && self.stats.passes_done + 1 >= self.passes {
            1.0
        } else {
            (f64::from(pass) + in_pass) / f64::from(self.passes)
        };
        let elapsed = now.saturating_duration_since(self.started);
        let left = if done > 0.0 && done < 1.0 {
            format!("{:.0}s", elapsed.as_secs_f64() * (1.0 - done) / done)
        } else {
            "tail".to_string()
        };
        format!(
            "offline progress: {:.1}% (pass {}/{}), packets read:{}, bytes read:{}, sessions open:{}, done:{}, elapsed:{:.0}s, left:{}",
            done * 100.0,
            pass + 1,
            self.passes,
            self.stats.read,
            self.stats.bytes,
            sessions_open,
            sessions_done,
            elapsed.as_secs_f64(),
            left
        )
    }

    /// When a packet `offset` after the start of the pass is due (at once should the clock
    /// overflow, which the pacer's bound of an hour per record makes impossible in practice).
    fn due(&self, offset: Duration, now: Instant) -> Instant {
        self.wall_base.checked_add(offset).unwrap_or(now)
    }

    /// Reads ahead one packet into `pending`. False at the end of the file.
    fn read_next(&mut self) -> anyhow::Result<bool> {
        loop {
            let record = self
                .reader
                .next_record()
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", self.file.display()))?;
            let Some(r) = record else {
                return Ok(false);
            };
            self.stats.read += 1;
            self.stats.bytes += r.data.len() as u64;
            if r.is_truncated() {
                self.stats.truncated += 1;
                log::debug!("truncated packets,drop");
                continue;
            }
            let Some(link) = r.link else {
                self.stats.unsupported_link += 1;
                log::debug!("unsupported DLT type {}", r.dlt);
                continue;
            };
            let (ts, index) = (r.timestamp, r.index);
            self.pending.clear();
            self.pending.extend_from_slice(r.data);
            self.pending_link = link;
            let (due, step) = self.pacer.schedule(ts);
            self.pending_due = Some(due);
            self.stats.pacing = self.pacer.stats;
            if step == Step::Jump {
                if let Some(suppressed) = self.jump_log.allow(self.started.elapsed()) {
                    log::warn!(
                        "capture timestamp {:.6}s at record {index} jumps more than {} s: replayed at once ({suppressed} more suppressed)",
                        ts.as_secs_f64(),
                        tc_core::offline::MAX_TIMESTAMP_JUMP.as_secs()
                    );
                }
            }
            return Ok(true);
        }
    }

    /// Dispatches every packet due at `now` (at most `budget`), handles the end of a pass.
    /// `on_frame` gets the 0-based pass of each packet (a call can cross into the next pass).
    pub fn poll(
        &mut self,
        now: Instant,
        budget: usize,
        on_frame: &mut dyn FnMut(u32, LinkType, &[u8]),
    ) -> anyhow::Result<OfflineStatus> {
        let mut sent = 0;
        loop {
            if let Some(eof_at) = self.eof_at {
                let end = eof_at + self.tail;
                if now < end {
                    return Ok(OfflineStatus::WakeAt(end));
                }
                self.stats.passes_done += 1;
                log::info!("replay times:{}", self.stats.passes_done);
                self.passes_left -= 1;
                if self.passes_left == 0 {
                    log::info!("offline replay is complete");
                    return Ok(OfflineStatus::Finished);
                }
                self.reader = open(&self.file)?;
                self.wall_base = now;
                self.pacer.restart();
                self.eof_at = None;
            }
            if self.pending_due.is_none() && !self.read_next()? {
                log::info!("stop, null from pcap_next");
                self.eof_at = Some(now);
                continue;
            }
            let Some(offset) = self.pending_due else {
                continue;
            };
            let due = self.due(offset, now);
            if due > now {
                return Ok(OfflineStatus::WakeAt(due));
            }
            if sent == budget {
                return Ok(OfflineStatus::WakeAt(now));
            }
            on_frame(self.stats.passes_done, self.pending_link, &self.pending);
            sent += 1;
            self.stats.dispatched += 1;
            self.pending_due = None;
        }
    }
}

/// What an event loop does with the outcome of an offline step: when to step again (never
/// once the file is done or failed), and why the run stops, if it does.
pub fn after_step(
    status: anyhow::Result<OfflineStatus>,
) -> (Option<Instant>, Option<crate::event_loop::StopReason>) {
    use crate::event_loop::StopReason;
    match status {
        Ok(OfflineStatus::WakeAt(t)) => (Some(t), None),
        Ok(OfflineStatus::Finished) => (None, Some(StopReason::OfflineDone)),
        Err(e) => (None, Some(StopReason::CaptureFailed(format!("{e:#}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_pauses_while_the_sessions_hold_too_much() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let limit = ReadAhead::LIMIT;
        let mut r = ReadAhead::new(t0);
        assert!(r.may_read(ms(0), 0));
        assert!(r.may_read(ms(1), limit));
        assert!(!r.may_read(ms(2), limit + 1));
        // Draining, but still above: paused, however long it takes.
        for i in 0..100 {
            assert!(!r.may_read(ms(3 + i * 100), 2 * limit - i as usize));
        }
        assert!(r.may_read(ms(10_000), limit - 1));
        assert_eq!((r.pauses, r.stalls), (101, 0));
    }

    #[test]
    fn a_stuck_session_does_not_stop_the_reading() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let limit = ReadAhead::LIMIT;
        let stuck = 3 * limit;
        let mut r = ReadAhead::new(t0);
        assert!(!r.may_read(ms(0), stuck));
        assert!(!r.may_read(ms(999), stuck));
        // Nothing sent for STALL: what is held is taken as stuck, reading goes on...
        assert!(r.may_read(ms(1000), stuck));
        assert_eq!(r.stalls, 1);
        // ...up to the limit above it, the others' requests going out as usual.
        assert!(r.may_read(ms(1001), stuck + limit));
        assert!(!r.may_read(ms(1002), stuck + limit + 10));
        assert!(!r.may_read(ms(1003), stuck + limit + 5));
        assert!(r.may_read(ms(1004), stuck + limit - 5));
        // The stuck session ends: the limit counts from zero again.
        assert!(r.may_read(ms(1100), limit / 2));
        assert!(!r.may_read(ms(1101), limit + 1));
        assert_eq!(r.stalls, 1);
    }

    /// Writes a raw-IP pcap with one tiny "packet" per (timestamp ms, marker byte); the
    /// record with `truncate_marker` claims a longer original length.
    fn write_pcap(path: &Path, packets: &[(u64, u8)], truncate_marker: Option<u8>) {
        let mut out = tc_core::packet::PcapWriter::create(path, LinkType::RawIp).unwrap();
        for &(ms, marker) in packets {
            let data = [0x45u8, 0, 0, 20, marker];
            let len = if Some(marker) == truncate_marker {
                100
            } else {
                5
            };
            out.write_record(Duration::from_millis(ms), &data, len)
                .unwrap();
        }
        out.flush().unwrap();
    }

    /// A file in a directory of its own, removed with the guard.
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn temp(name: &str) -> TempFile {
        let dir =
            std::env::temp_dir().join(format!("tcpcopy-offline-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempFile(dir.join(name))
    }

    fn collect(src: &mut OfflineSource, now: Instant, seen: &mut Vec<u8>) -> OfflineStatus {
        collect_passes(src, now, seen, &mut Vec::new())
    }

    fn collect_passes(
        src: &mut OfflineSource,
        now: Instant,
        seen: &mut Vec<u8>,
        passes: &mut Vec<u32>,
    ) -> OfflineStatus {
        src.poll(now, 100, &mut |pass, link, frame| {
            assert_eq!(link, LinkType::RawIp);
            seen.push(frame[4]);
            passes.push(pass);
        })
        .unwrap()
    }

    /// A poll that crosses into the next pass reports the new pass with its first packet
    /// (the replay machine moves its connections per pass: a packet of pass 2 under pass 1's
    /// addresses would land on the finished connection).
    #[test]
    fn the_first_packet_of_a_pass_carries_its_pass() {
        let file = temp("passes.pcap");
        write_pcap(&file.0, &[(1000, 1), (1001, 2)], None);
        let t0 = Instant::now();
        let tail = Duration::from_millis(10);
        let mut src = OfflineSource::open(&file.0, 1000, None, 3, tail, t0).unwrap();
        let (mut seen, mut passes) = (Vec::new(), Vec::new());
        let mut now = t0;
        for _ in 0..20 {
            match collect_passes(&mut src, now, &mut seen, &mut passes) {
                OfflineStatus::WakeAt(t) => now = now.max(t),
                OfflineStatus::Finished => break,
            }
        }
        assert_eq!(seen, vec![1, 2, 1, 2, 1, 2]);
        assert_eq!(passes, vec![0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn paced_accelerated_and_passes() {
        let file = temp("paced.pcap");
        let path = &file.0;
        write_pcap(path, &[(1000, 1), (1100, 2), (1400, 3)], None);
        let t0 = Instant::now();
        let mut src = OfflineSource::open(path, 2, None, 2, Duration::from_secs(1), t0).unwrap();
        let mut seen = Vec::new();
        // The first packet at once; the next one 100 ms later in the file = 50 ms at -a 2.
        assert_eq!(
            collect(&mut src, t0, &mut seen),
            OfflineStatus::WakeAt(t0 + Duration::from_millis(50))
        );
        assert_eq!(seen, vec![1]);
        assert_eq!(
            collect(&mut src, t0 + Duration::from_millis(50), &mut seen),
            OfflineStatus::WakeAt(t0 + Duration::from_millis(200))
        );
        assert_eq!(seen, vec![1, 2]);
        let t_end = t0 + Duration::from_millis(200);
        // Last packet, then the end of the file: wait for the tail.
        assert_eq!(
            collect(&mut src, t_end, &mut seen),
            OfflineStatus::WakeAt(t_end + Duration::from_secs(1))
        );
        assert_eq!(seen, vec![1, 2, 3]);
        // Second pass starts after the tail, with fresh timing.
        let t2 = t_end + Duration::from_secs(1);
        assert_eq!(
            collect(&mut src, t2, &mut seen),
            OfflineStatus::WakeAt(t2 + Duration::from_millis(50))
        );
        assert_eq!(seen, vec![1, 2, 3, 1]);
        let t3 = t2 + Duration::from_secs(5);
        let status = collect(&mut src, t3, &mut seen);
        assert_eq!(seen, vec![1, 2, 3, 1, 2, 3]);
        assert_eq!(status, OfflineStatus::WakeAt(t3 + Duration::from_secs(1)));
        assert_eq!(
            collect(&mut src, t3 + Duration::from_secs(1), &mut seen),
            OfflineStatus::Finished
        );
        assert_eq!(src.stats.passes_done, 2);
    }

    #[test]
    fn long_gaps_are_cut_once_and_truncated_records_dropped() {
        let file = temp("gaps.pcap");
        let path = &file.0;
        write_pcap(
            path,
            &[(0, 1), (10_000, 2), (10_100, 3), (10_200, 9)],
            Some(9),
        );
        let t0 = Instant::now();
        let mut src = OfflineSource::open(
            path,
            1,
            Some(Duration::from_millis(500)),
            1,
            Duration::ZERO,
            t0,
        )
        .unwrap();
        let mut seen = Vec::new();
        // The 10 s gap is skipped: packet 2 is due at once, packet 3 100 ms later.
        assert_eq!(
            collect(&mut src, t0, &mut seen),
            OfflineStatus::WakeAt(t0 + Duration::from_millis(100))
        );
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(
            collect(&mut src, t0 + Duration::from_millis(100), &mut seen),
            OfflineStatus::Finished
        );
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(src.stats.truncated, 1);
    }

    /// A pcapng file, little-endian: interfaces given as (if_tsresol, if_tsoffset), packets
    /// as (interface, timestamp units, marker byte), raw IP.
    fn write_pcapng(path: &Path, interfaces: &[(u8, i64)], packets: &[(u32, u64, u8)]) {
        fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
            let total = (12 + body.len().div_ceil(4) * 4) as u32;
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&total.to_le_bytes());
            out.extend_from_slice(body);
            out.resize(out.len() + (4 - body.len() % 4) % 4, 0);
            out.extend_from_slice(&total.to_le_bytes());
        }
        let mut out = Vec::new();
        let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
        shb.extend_from_slice(&[1, 0, 0, 0]);
        shb.extend_from_slice(&u64::MAX.to_le_bytes());
        block(&mut out, 0x0a0d_0d0a, &shb);
        for &(resol, offset) in interfaces {
            let mut idb = 101u16.to_le_bytes().to_vec(); // LINKTYPE_RAW
            idb.extend_from_slice(&[0, 0]);
            idb.extend_from_slice(&0u32.to_le_bytes());
            idb.extend_from_slice(&[9, 0, 1, 0, resol, 0, 0, 0]);
            idb.extend_from_slice(&[14, 0, 8, 0]);
            idb.extend_from_slice(&offset.to_le_bytes());
            idb.extend_from_slice(&[0, 0, 0, 0]);
            block(&mut out, 1, &idb);
        }
        for &(interface, units, marker) in packets {
            let mut epb = interface.to_le_bytes().to_vec();
            epb.extend_from_slice(&((units >> 32) as u32).to_le_bytes());
            epb.extend_from_slice(&(units as u32).to_le_bytes());
            epb.extend_from_slice(&5u32.to_le_bytes());
            epb.extend_from_slice(&5u32.to_le_bytes());
            epb.extend_from_slice(&[0x45, 0, 0, 20, marker]);
            block(&mut out, 6, &epb);
        }
        std::fs::write(path, out).unwrap();
    }

    /// Runs a source to its end on a virtual clock: the markers seen and the virtual time it
    /// took. Fails on a wait of more than an hour or on a source that never finishes.
    fn run_to_end(src: &mut OfflineSource, t0: Instant) -> (Vec<u8>, Duration) {
        let mut seen = Vec::new();
        let mut now = t0;
        for _ in 0..1000 {
            match collect(src, now, &mut seen) {
                OfflineStatus::WakeAt(t) => {
                    let wait = t.saturating_duration_since(now);
                    assert!(wait <= Duration::from_secs(3600), "waits {wait:?}");
                    now = now.max(t);
                }
                OfflineStatus::Finished => return (seen, now - t0),
            }
        }
        panic!("the offline source never finishes");
    }

    /// Issue 15 point 7: timestamps at 0 and u64::MAX seconds (pcapng `if_tsresol` 0), an
    /// interface whose `if_tsoffset` is i64::MAX, a classic pcap jumping from 0 to 2^32-1 s:
    /// every record is replayed at once (the jumps are counted), with and without `-a`/`-I`,
    /// instead of panicking on `Instant + Duration` or `skipped += gap`, or waiting 136 years.
    #[test]
    fn absurd_timestamps_neither_panic_nor_hang() {
        let ng = temp("absurd.pcapng");
        write_pcapng(
            &ng.0,
            &[(0, 0), (6, i64::MAX)],
            &[
                (0, 0, 1),
                (0, u64::MAX, 2),
                (0, 0, 3),
                (0, u64::MAX, 4),
                (1, 5, 5),
                (0, 1, 6),
            ],
        );
        let classic = temp("absurd.pcap");
        write_pcap(
            &classic.0,
            &[
                (0, 1),
                (0xFFFF_FFFF * 1000, 2),
                (0, 3),
                (0xFFFF_FFFF * 1000, 4),
            ],
            None,
        );
        for (file, markers) in [(&ng, vec![1, 2, 3, 4, 5, 6]), (&classic, vec![1, 2, 3, 4])] {
            for accel in [1, 7] {
                for max_gap in [None, Some(Duration::from_millis(100))] {
                    let t0 = Instant::now();
                    let tail = Duration::from_secs(1);
                    let mut src =
                        OfflineSource::open(&file.0, accel, max_gap, 2, tail, t0).unwrap();
                    let (seen, took) = run_to_end(&mut src, t0);
                    let mut want = markers.clone();
                    want.extend_from_slice(&markers);
                    assert_eq!(seen, want, "{accel} {max_gap:?}");
                    // Two passes, two tails, and the one-second step of the last record.
                    assert!(took <= Duration::from_secs(4), "{took:?}");
                    assert!(src.stats.pacing.jumps >= 6, "{:?}", src.stats.pacing);
                }
            }
        }
    }

    #[test]
    fn not_a_pcap_is_an_open_error() {
        let file = temp("junk.pcap");
        let path = &file.0;
        std::fs::write(path, b"this is not a capture").unwrap();
        let e = OfflineSource::open(path, 1, None, 1, Duration::ZERO, Instant::now());
        assert!(e.is_err());
    }
}
