#![no_main]
//! intercept -> tcpcopy frames: any byte stream in any variant (with or without the
//! `--full-payload` data messages and the IPv6 variant's units), fed to the reassembler tcpcopy's tunnels use in arbitrary
//! read sizes and budgets; every unit read as tcpcopy does: a data message, an IPv6 response
//! unit viewed as a segment, a full-payload or IPv6 grant, a probe reply, or a record viewed
//! as a segment.

use std::io::{ErrorKind, Read};

use libfuzzer_sys::fuzz_target;
use tc_core::control::conn::{Framing, FullPayloadFrames, Reassembler, ResponseFrames};
use tc_core::control::probe::ProbeReply;
use tc_core::control::{full_payload, ipv6, record_view, WireFormat};

/// Hands out `data` in `step`-byte reads, "would block" after each.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
    blocked: bool,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.blocked || self.data.is_empty() {
            self.blocked = false;
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.blocked = true;
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fmt = WireFormat {
        combined: mode & 1 == 0,
        payload: mode & 2 != 0,
    };
    // The full-payload splitter also serves the IPv6 variant (bit 8).
    let full = mode & 16 != 0 || mode & 8 != 0;
    let step = usize::from(mode >> 5).max(1);
    if full {
        run(FullPayloadFrames(fmt), fmt, rest, step, true);
    } else {
        run(ResponseFrames(fmt), fmt, rest, step, false);
    }
});

fn run(framing: impl Framing, fmt: WireFormat, rest: &[u8], step: usize, full: bool) {
    let mut src = Pieces {
        data: rest,
        step,
        blocked: false,
    };
    let mut r = Reassembler::new(framing.max_frame_len());
    let budget = step * 3;
    for _ in 0..=2 * rest.len() + 2 {
        let out = r.read_from(&mut src, &framing, budget, |unit| {
            if full && ipv6::is_record6(unit) {
                let rec = ipv6::record6(unit);
                let mut norm = [0u8; 256];
                if let Some(v) = rec.and_then(|rec| record_view(rec, &mut norm)) {
                    let s = v.segment();
                    let _ = (s.src, s.dst, s.payload_len(), v.payload().len());
                }
                return;
            }
            if full && full_payload::is_data(unit) {
                if let Some(d) = full_payload::parse_data(unit) {
                    let _ = (d.payload.len(), d.seq, d.ack);
                }
                return;
            }
            assert_eq!(unit.len(), fmt.record_len());
            let _ = full_payload::Grant::parse(unit);
            let _ = ipv6::V6Grant::parse(unit);
            let _ = ProbeReply::parse(unit);
            let mut norm = [0u8; 256];
            if let Some(v) = record_view(unit, &mut norm) {
                let _ = (v.payload_len(), v.options(), v.payload().len());
            }
        });
        if out.is_err() {
            return;
        }
        assert!(r.pending() <= framing.max_frame_len());
        if src.data.is_empty() && !src.blocked {
            return;
        }
    }
    panic!("reassembler made no progress");
}
