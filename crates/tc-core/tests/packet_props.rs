//! Property tests of the packet layer: checksum upkeep under rewrites, trimming, splitting,
//! and robustness of every decoder against arbitrary bytes.

use std::net::Ipv4Addr;
use std::time::Duration;

use proptest::prelude::*;
use tc_core::packet::{
    flags, ipv4_payload, needs_split, parse_options, split_segment, Completeness, LinkType,
    PcapReader, PcapWriter, TcpPacket,
};

/// What a generated segment is made of.
#[derive(Debug, Clone)]
struct Seg {
    src: u32,
    dst: u32,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    ip_id: u16,
    ttl: u8,
    /// IP option words (NOPs): IHL 5..=15.
    ip_option_words: usize,
    tcp_options: Vec<u8>,
    payload: Vec<u8>,
}

/// One TCP option, encoded.
fn tcp_option() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![1u8]),
        any::<u16>().prop_map(|mss| {
            let b = mss.to_be_bytes();
            vec![2, 4, b[0], b[1]]
        }),
        (0u8..15).prop_map(|s| vec![3, 3, s]),
        Just(vec![4, 2]),
        (any::<u32>(), any::<u32>()).prop_map(|(v, e)| {
            let mut o = vec![8, 10];
            o.extend_from_slice(&v.to_be_bytes());
            o.extend_from_slice(&e.to_be_bytes());
            o
        }),
        // A SACK block.
        (any::<u32>(), any::<u32>()).prop_map(|(l, r)| {
            let mut o = vec![5, 10];
            o.extend_from_slice(&l.to_be_bytes());
            o.extend_from_slice(&r.to_be_bytes());
            o
        }),
    ]
}

fn tcp_options() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(tcp_option(), 0..6).prop_map(|opts| {
        let mut area = Vec::new();
        for o in opts {
            if area.len() + o.len() <= 40 {
                area.extend_from_slice(&o);
            }
        }
        while area.len() % 4 != 0 {
            area.push(0); // EOL padding
        }
        area
    })
}

fn seg_strategy(max_payload: usize) -> impl Strategy<Value = Seg> {
    (
        (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()),
        (any::<u32>(), any::<u32>(), any::<u8>(), any::<u16>()),
        (any::<u16>(), 1u8..=255, 0usize..=10),
        tcp_options(),
        prop::collection::vec(any::<u8>(), 0..=max_payload),
    )
        .prop_map(
            |(
                (src, dst, src_port, dst_port),
                (seq, ack, flags, window),
                (ip_id, ttl, ip_option_words),
                tcp_options,
                payload,
            )| Seg {
                src,
                dst,
                src_port,
                dst_port,
                seq,
                ack,
                flags,
                window,
                ip_id,
                ttl,
                ip_option_words,
                tcp_options,
                payload,
            },
        )
}

/// Encodes `s` with valid checksums.
fn encode(s: &Seg) -> Vec<u8> {
    let ip_len = 20 + 4 * s.ip_option_words;
    let tcp_len = 20 + s.tcp_options.len();
    let total = ip_len + tcp_len + s.payload.len();
    let mut b = vec![0u8; total];
    b[0] = 0x40 | (ip_len / 4) as u8;
    b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    b[4..6].copy_from_slice(&s.ip_id.to_be_bytes());
    b[6] = 0x40;
    b[8] = s.ttl;
    b[9] = 6;
    b[12..16].copy_from_slice(&s.src.to_be_bytes());
    b[16..20].copy_from_slice(&s.dst.to_be_bytes());
    b[20..ip_len].fill(1);
    let t = &mut b[ip_len..];
    t[0..2].copy_from_slice(&s.src_port.to_be_bytes());
    t[2..4].copy_from_slice(&s.dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&s.seq.to_be_bytes());
    t[8..12].copy_from_slice(&s.ack.to_be_bytes());
    t[12] = ((tcp_len / 4) as u8) << 4;
    t[13] = s.flags;
    t[14..16].copy_from_slice(&s.window.to_be_bytes());
    t[20..tcp_len].copy_from_slice(&s.tcp_options);
    t[tcp_len..].copy_from_slice(&s.payload);
    TcpPacket::parse(&mut b[..], Completeness::Whole)
        .expect("generated segment parses")
        .fill_checksums();
    b
}

#[derive(Debug, Clone)]
enum Rewrite {
    SrcIp(u32),
    DstIp(u32),
    SrcPort(u16),
    DstPort(u16),
    Seq(u32),
    Ack(u32),
    Window(u16),
    Flags(u8),
    IpId(u16),
    Ttl(u8),
    Timestamps(u32, u32),
}

fn rewrite() -> impl Strategy<Value = Rewrite> {
    prop_oneof![
        any::<u32>().prop_map(Rewrite::SrcIp),
        any::<u32>().prop_map(Rewrite::DstIp),
        any::<u16>().prop_map(Rewrite::SrcPort),
        any::<u16>().prop_map(Rewrite::DstPort),
        any::<u32>().prop_map(Rewrite::Seq),
        any::<u32>().prop_map(Rewrite::Ack),
        any::<u16>().prop_map(Rewrite::Window),
        any::<u8>().prop_map(Rewrite::Flags),
        any::<u16>().prop_map(Rewrite::IpId),
        any::<u8>().prop_map(Rewrite::Ttl),
        (any::<u32>(), any::<u32>()).prop_map(|(v, e)| Rewrite::Timestamps(v, e)),
    ]
}

fn apply(p: &mut TcpPacket<&mut [u8]>, r: &Rewrite) {
    match *r {
        Rewrite::SrcIp(a) => p.set_src_ip(Ipv4Addr::from(a)),
        Rewrite::DstIp(a) => p.set_dst_ip(Ipv4Addr::from(a)),
        Rewrite::SrcPort(v) => p.set_src_port(v),
        Rewrite::DstPort(v) => p.set_dst_port(v),
        Rewrite::Seq(v) => p.set_seq(v),
        Rewrite::Ack(v) => p.set_ack(v),
        Rewrite::Window(v) => p.set_window(v),
        Rewrite::Flags(v) => p.set_flags(v),
        Rewrite::IpId(v) => p.set_ip_id(v),
        Rewrite::Ttl(v) => p.set_ttl(v),
        Rewrite::Timestamps(v, e) => {
            if let Some(at) = p.options().timestamps_offset {
                p.set_timestamps(at, v, e);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rewrites_keep_checksums_equal_to_full_recomputation(
        seg in seg_strategy(1460),
        rewrites in prop::collection::vec(rewrite(), 0..24),
    ) {
        let mut bytes = encode(&seg);
        let mut once = bytes.clone();
        let mut p = TcpPacket::parse(&mut bytes[..], Completeness::Whole).unwrap();
        prop_assert!(p.checksums_valid());
        for r in &rewrites {
            apply(&mut p, r);
        }
        prop_assert!(p.checksums_valid());
        let mut full = p.as_bytes().to_vec();
        TcpPacket::parse(&mut full[..], Completeness::Whole).unwrap().fill_checksums();
        prop_assert_eq!(p.as_bytes(), &full[..]);
        prop_assert_eq!(p.payload(), &seg.payload[..]);
        // The same changes in one rewrite (one checksum update): the same bytes.
        let mut q = TcpPacket::parse(&mut once[..], Completeness::Whole).unwrap();
        let ts_at = q.options().timestamps_offset;
        q.rewrite(|w| {
            for r in &rewrites {
                match *r {
                    Rewrite::SrcIp(a) => w.src_ip(Ipv4Addr::from(a)),
                    Rewrite::DstIp(a) => w.dst_ip(Ipv4Addr::from(a)),
                    Rewrite::SrcPort(v) => w.src_port(v),
                    Rewrite::DstPort(v) => w.dst_port(v),
                    Rewrite::Seq(v) => w.seq(v),
                    Rewrite::Ack(v) => w.ack(v),
                    Rewrite::Window(v) => w.window(v),
                    Rewrite::Flags(v) => w.flags(v),
                    Rewrite::IpId(v) => w.ip_id(v),
                    Rewrite::Ttl(v) => w.ttl(v),
                    Rewrite::Timestamps(v, e) => match ts_at {
                        Some(at) => w.timestamps(at, v, e),
                        None => w,
                    },
                };
            }
        });
        prop_assert_eq!(q.as_bytes(), &full[..]);
    }

    #[test]
    fn copy_verified_copies_and_judges_as_a_full_check(
        seg in seg_strategy(1460),
        flip in prop::option::of((any::<prop::sample::Index>(), 1u8..=255)),
    ) {
        // A valid segment, or one with a byte changed: the copying check says what
        // `checksums_valid` says, and the copy holds the bytes.
        let mut bytes = encode(&seg);
        if let Some((at, x)) = flip {
            let at = at.index(bytes.len());
            bytes[at] ^= x;
        }
        let Ok(p) = TcpPacket::parse(&bytes[..], Completeness::Whole) else {
            return Ok(());
        };
        let mut out = vec![0u8; bytes.len() + 1];
        let valid = p.copy_verified(&mut out[1..]);
        prop_assert_eq!(valid, p.checksums_valid());
        prop_assert_eq!(valid, flip.is_none());
        prop_assert_eq!(&out[1..1 + p.as_bytes().len()], p.as_bytes());
    }

    #[test]
    fn trim_front_keeps_checksums_and_sequence(seg in seg_strategy(1460), cut in any::<prop::sample::Index>()) {
        let mut bytes = encode(&seg);
        let mut p = TcpPacket::parse(&mut bytes[..], Completeness::Whole).unwrap();
        let n = if seg.payload.is_empty() { 0 } else { cut.index(seg.payload.len() + 1) };
        prop_assert!(p.trim_front(n));
        prop_assert!(p.checksums_valid());
        prop_assert_eq!(p.payload(), &seg.payload[n..]);
        prop_assert_eq!(p.seq(), seg.seq.wrapping_add(n as u32));
        prop_assert_eq!(usize::from(p.total_len()), p.as_bytes().len());
        prop_assert!(!p.trim_front(seg.payload.len() - n + 1));
    }

    #[test]
    fn split_then_concatenate_reproduces_the_segment(
        seg in seg_strategy(9000),
        mtu in 160usize..=1600,
        zero_total_length in any::<bool>(),
    ) {
        let mut bytes = encode(&seg);
        if zero_total_length {
            bytes[2..4].fill(0); // GSO super-packet marker
        }
        let orig = TcpPacket::parse(&encode(&seg)[..], Completeness::Whole).unwrap().as_bytes().to_vec();
        let orig = TcpPacket::parse(&orig[..], Completeness::Whole).unwrap();
        prop_assert_eq!(needs_split(&bytes, mtu), bytes.len() > mtu);
        let mut scratch = vec![0u8; mtu];
        let mut joined = Vec::new();
        let mut next_seq = seg.seq;
        let mut piece_flags = Vec::new();
        let mut ids = Vec::new();
        let count = split_segment(&bytes, mtu, &mut scratch, |piece| {
            let p = TcpPacket::parse(&*piece, Completeness::Whole).expect("piece parses");
            assert!(piece.len() <= mtu);
            assert!(p.checksums_valid());
            assert_eq!(p.seq(), next_seq);
            assert_eq!(p.option_bytes(), orig.option_bytes());
            assert_eq!((p.src_ip(), p.dst_ip(), p.src_port(), p.dst_port(), p.ack(), p.window()),
                (orig.src_ip(), orig.dst_ip(), orig.src_port(), orig.dst_port(), orig.ack(), orig.window()));
            next_seq = p.seq().wrapping_add(p.seq_len());
            joined.extend_from_slice(p.payload());
            piece_flags.push(p.flags());
            ids.push(p.ip_id());
        }).unwrap();
        prop_assert_eq!(count, piece_flags.len());
        prop_assert_eq!(&joined, &seg.payload);
        prop_assert_eq!(next_seq, seg.seq.wrapping_add(orig.seq_len()));
        for (i, f) in piece_flags.iter().enumerate() {
            let last = i + 1 == count;
            prop_assert_eq!(f & flags::FIN != 0, last && seg.flags & flags::FIN != 0);
            prop_assert_eq!(f & flags::PSH != 0, last && seg.flags & flags::PSH != 0);
            prop_assert_eq!(f & flags::SYN != 0, i == 0 && seg.flags & flags::SYN != 0);
            prop_assert_eq!(f & flags::ACK, seg.flags & flags::ACK);
            prop_assert_eq!(ids[i], seg.ip_id.wrapping_add(i as u16));
        }
        let max_payload = mtu - orig.headers_len();
        prop_assert_eq!(count, seg.payload.len().div_ceil(max_payload).max(1));
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        for link in [LinkType::RawIp, LinkType::Ethernet, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::BsdLoopback] {
            let _ = ipv4_payload(link, &bytes);
            let _ = tc_core::packet::decode_frame(link, &bytes).map(|p| (p.options(), p.checksums_valid()));
        }
        for c in [Completeness::Whole, Completeness::HeadersOnly] {
            if let Ok(p) = TcpPacket::parse(&bytes[..], c) {
                let _ = (p.payload(), p.options(), p.checksums_valid(), p.seq_len());
            }
        }
        let _ = parse_options(&bytes);
        let mut scratch = [0u8; 256];
        let _ = split_segment(&bytes, 100, &mut scratch, |_| {});
    }

    #[test]
    fn pcap_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400), prefix in 0usize..3) {
        // Arbitrary bytes, and arbitrary bytes behind a valid classic or pcapng header.
        let mut file = match prefix {
            0 => Vec::new(),
            1 => PcapWriter::new(Vec::new(), LinkType::Ethernet).unwrap().into_inner().unwrap(),
            _ => {
                let mut shb = vec![0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0];
                shb.extend_from_slice(&[0xff; 8]);
                shb.extend_from_slice(&[28, 0, 0, 0]);
                shb
            }
        };
        file.extend_from_slice(&bytes);
        if let Ok(mut r) = PcapReader::new(&file[..]) {
            for _ in 0..file.len() {
                match r.next_record() {
                    Ok(Some(rec)) => { let _ = (rec.is_truncated(), rec.timestamp > Duration::ZERO); }
                    _ => break,
                }
            }
        }
    }
}
