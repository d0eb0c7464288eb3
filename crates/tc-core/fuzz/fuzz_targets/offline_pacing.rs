#![no_main]
//! Offline replay scheduling: arbitrary bytes as a capture file, every record read and paced
//! as tcpcopy's offline source does (`-a` and `-I` from the first two bytes), on a virtual
//! clock that jumps to each due time, over two passes. No panic (overflow), no wait beyond
//! the bound of `tc_core::offline`, and due times that never go back within a pass.

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tc_core::offline::{Pacer, Step, MAX_TIMESTAMP_JUMP};
use tc_core::packet::PcapReader;

fuzz_target!(|data: &[u8]| {
    let [accel, gap, file @ ..] = data else {
        return;
    };
    let accel = u32::from(*accel).max(1);
    let max_gap = (*gap != 0).then(|| Duration::from_millis(u64::from(*gap) * 10));
    let mut pacer = Pacer::new(accel, max_gap);
    let mut clock = Duration::ZERO;
    for _pass in 0..2 {
        let Ok(mut reader) = PcapReader::new(file) else {
            return;
        };
        pacer.restart();
        let pass_start = clock;
        let mut last_due = Duration::ZERO;
        let mut records = 0u32;
        // Each record consumes at least 12 bytes of the file.
        for _ in 0..file.len() {
            let ts = match reader.next_record() {
                Ok(Some(r)) => r.timestamp,
                Ok(None) | Err(_) => break,
            };
            records += 1;
            let (due, step) = pacer.schedule(ts);
            assert!(due >= last_due, "due time went back: {due:?} < {last_due:?}");
            let waited = due - last_due;
            let bound = max_gap.map_or(MAX_TIMESTAMP_JUMP, |g| g.min(MAX_TIMESTAMP_JUMP));
            assert!(waited <= bound / accel + Duration::from_nanos(1), "{waited:?} {step:?}");
            if step != Step::Paced {
                assert_eq!(waited, Duration::ZERO, "{step:?}");
            }
            last_due = due;
            // The virtual clock: the event loop sleeps until the packet is due.
            clock = clock.max(pass_start.saturating_add(due));
        }
        assert!(last_due <= MAX_TIMESTAMP_JUMP * records);
    }
    let s = pacer.stats;
    let _ = s.backwards + s.gaps_cut + s.jumps;
});
