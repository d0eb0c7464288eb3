//! Capture-file reading: arbitrary bytes as a pcap/pcapng file. Every record is decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tc_core::packet::{decode_frame, PcapReader};

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = PcapReader::new(data) else {
        return;
    };
    let _ = reader.link_type();
    // Each record consumes at least 12 bytes, so this bound is never the one that stops.
    for _ in 0..data.len() {
        match reader.next_record() {
            Ok(Some(rec)) => {
                assert!(rec.offset < data.len() as u64);
                let _ = rec.is_truncated();
                if let Some(link) = rec.link {
                    let _ = decode_frame(link, rec.data).map(|p| p.options());
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    // After the end (or an error) the reader stays finished.
    assert!(matches!(reader.next_record(), Ok(None)));
});
