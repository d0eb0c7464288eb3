//! Segment builder and splitter: a segment built from fuzz bytes is split at a fuzzed MTU and
//! the pieces must reassemble it exactly; arbitrary bytes are also fed to the splitter raw.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use tc_core::packet::{
    build_segment, flags, split_segment, Completeness, SegmentSpec, SplitError, TcpPacket,
};

fn u16_at(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[i], d[i + 1]])
}

fn u32_at(d: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]])
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 32 {
        return;
    }
    let (head, payload) = data.split_at(32);
    let mtu = usize::from(u16_at(head, 0)) % 2100;
    let mut scratch = vec![0u8; 2100];

    // Raw bytes: must not panic, and whatever comes out is a valid segment within the MTU.
    let _ = split_segment(payload, mtu, &mut scratch, |piece| {
        assert!(piece.len() <= mtu);
        let p = TcpPacket::parse(&*piece, Completeness::Whole).expect("piece parses");
        assert!(p.checksums_valid());
    });

    let spec = SegmentSpec {
        src: Ipv4Addr::from(u32_at(head, 2)).into(),
        dst: Ipv4Addr::from(u32_at(head, 6)).into(),
        src_port: u16_at(head, 10),
        dst_port: u16_at(head, 12),
        seq: u32_at(head, 14),
        ack: u32_at(head, 18),
        flags: head[22],
        window: u16_at(head, 23),
        ip_id: u16_at(head, 25),
        mss: (head[27] & 1 != 0).then(|| u16_at(head, 28)),
        timestamps: (head[27] & 2 != 0).then(|| (u32_at(head, 14), u32_at(head, 28))),
        payload,
    };
    let mut seg = vec![0u8; payload.len() + 80];
    let Ok(n) = build_segment(&spec, &mut seg) else {
        return;
    };
    let seg = &seg[..n];
    let orig = TcpPacket::parse(seg, Completeness::Whole).expect("built segment parses");
    assert!(orig.checksums_valid());

    let mut joined = Vec::with_capacity(payload.len());
    let mut next_seq = orig.seq();
    let mut pieces = Vec::new();
    let r = split_segment(seg, mtu, &mut scratch, |piece| {
        let p = TcpPacket::parse(&*piece, Completeness::Whole).expect("piece parses");
        assert!(piece.len() <= mtu);
        assert!(p.checksums_valid());
        assert_eq!(p.seq(), next_seq);
        assert_eq!(p.option_bytes(), orig.option_bytes());
        next_seq = p.seq().wrapping_add(p.seq_len());
        joined.extend_from_slice(p.payload());
        pieces.push(p.flags());
    });
    match r {
        Ok(count) => {
            assert_eq!(count, pieces.len());
            assert_eq!(joined, payload);
            assert_eq!(next_seq, orig.seq().wrapping_add(orig.seq_len()));
            for (i, f) in pieces.iter().enumerate() {
                let last = i + 1 == pieces.len();
                assert_eq!(f & flags::FIN != 0, last && orig.fin());
                assert_eq!(f & flags::SYN != 0, i == 0 && orig.syn());
            }
        }
        Err(SplitError::Drop(_)) => assert!(orig.headers_len() >= mtu),
        Err(SplitError::Buffer(e)) => panic!("scratch of 2100 bytes too small: {e}"),
    }
});
