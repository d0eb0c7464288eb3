#![no_main]
//! intercept -> tcpcopy frames: any byte stream in any variant, reassembled across arbitrary
//! read boundaries, every record viewed as a segment.

use libfuzzer_sys::fuzz_target;
use tc_core::control::{record_view, split_frames, WireFormat};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fmt = WireFormat {
        combined: mode & 1 == 0,
        payload: mode & 2 != 0,
    };
    let step = usize::from(mode >> 2).max(1);
    let mut buf = Vec::new();
    let mut whole = 0usize;
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        match split_frames(&buf, fmt, |r| {
            assert_eq!(r.len(), fmt.record_len());
            whole += 1;
            let mut norm = [0u8; 256];
            if let Some(v) = record_view(r, &mut norm) {
                let _ = (v.payload_len(), v.options(), v.payload().len());
            }
        }) {
            Ok(used) => {
                buf.drain(..used);
            }
            Err(_) => return,
        }
    }
});
