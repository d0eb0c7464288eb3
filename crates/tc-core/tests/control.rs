//! The control-channel codecs against byte strings written by hand from the spec's field
//! tables (tcpcopy.md 5.2-5.3, intercept.md 4.1-4.3), and property tests of the framing.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use tc_core::control::conn::{ClientRecords, Framing, Reassembler, ResponseFrames};
use tc_core::control::*;
use tc_core::packet::{Completeness, TcpPacket};

/// A non-blocking source that hands out `wire` in pieces of the given sizes, with a
/// "would block" after each piece.
struct Pieces<'a> {
    wire: &'a [u8],
    at: usize,
    cuts: &'a [usize],
    next: usize,
    blocked: bool,
}

impl std::io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.blocked || self.at == self.wire.len() {
            self.blocked = false;
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = self.cuts[self.next % self.cuts.len()]
            .min(buf.len())
            .min(self.wire.len() - self.at);
        self.next += 1;
        buf[..n].copy_from_slice(&self.wire[self.at..self.at + n]);
        self.at += n;
        self.blocked = true;
        Ok(n)
    }
}

fn reassemble<F: Framing>(wire: &[u8], cuts: &[usize], budget: usize, framing: &F) -> Vec<Vec<u8>> {
    let mut src = Pieces {
        wire,
        at: 0,
        cuts,
        next: 0,
        blocked: false,
    };
    let mut r = Reassembler::new(framing.max_frame_len());
    let mut got = Vec::new();
    // Bounded: every call consumes at least one piece or reports "would block".
    for _ in 0..=2 * wire.len() + 2 {
        r.read_from(&mut src, framing, budget, |u| got.push(u.to_vec()))
            .unwrap();
        if src.at == wire.len() && !src.blocked {
            break;
        }
    }
    assert_eq!(r.pending(), 0, "bytes left in the reassembler");
    got
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn msg(bytes: &[u8]) -> [u8; 14] {
    bytes.try_into().unwrap()
}

#[test]
fn version_record_golden() {
    let wire = hex("00000000 0000 0006 00000000 0000");
    let m = ClientMsg::parse(&msg(&wire));
    assert_eq!(m.check_version_record(), Ok(6));
    assert_eq!(ClientMsg::version(PROTOCOL_VERSION).encode().to_vec(), wire);
    // A first record with a client address is not a version record.
    let bad = hex("cb007101 9c40 0001 c6120 01e 1f90"
        .replace(' ', "")
        .as_str());
    assert_eq!(
        ClientMsg::parse(&msg(&bad)).check_version_record(),
        Err(HandshakeError::NotAVersionRecord)
    );
    // Another version is reported for a warning, not refused.
    let v5 = hex("00000000 0000 0005 00000000 0000");
    assert_eq!(ClientMsg::parse(&msg(&v5)).check_version_record(), Ok(5));
}

#[test]
fn client_add_del_unknown_golden() {
    // 203.0.113.1:40000 -> 198.18.0.30:8080
    let add = hex("cb007101 9c40 0001 c612001e 1f90");
    let m = ClientMsg::parse(&msg(&add));
    assert_eq!(m.client_ip, Ipv4Addr::new(203, 0, 113, 1));
    assert_eq!(m.client_port, 40000);
    assert_eq!(m.target_ip, Ipv4Addr::new(198, 18, 0, 30));
    assert_eq!(m.target_port, 8080);
    assert_eq!(m.classify(), ClientMsgKind::Add);
    assert_eq!(m.encode().to_vec(), add);
    assert_eq!(
        ClientMsg::add(m.client_ip, 40000, m.target_ip, 8080)
            .encode()
            .to_vec(),
        add
    );
    let del = hex("cb007101 9c40 0002 c612001e 1f90");
    assert_eq!(ClientMsg::parse(&msg(&del)).classify(), ClientMsgKind::Del);
    let unknown = hex("cb007101 9c40 0009 c612001e 1f90");
    let u = ClientMsg::parse(&msg(&unknown));
    assert_eq!(u.classify(), ClientMsgKind::Unknown(9));
    assert_eq!(u.encode().to_vec(), unknown);
}

/// A SYN-ACK from 198.18.0.30:8080 to 203.0.113.1:40000 with MSS, SACK-permitted,
/// timestamps, NOP and window scale (doff 10 = 40 bytes), IP total length 60.
const SYN_ACK: &str = "4500003c 0000 4000 4006 0000 c612001e cb007101
                       1f90 9c40 00001000 00002001 a012 fe88 0000 0000
                       020405b4 0402080a 00000064 00000032 01030307";

#[test]
fn response_record_64_golden() {
    let seg = hex(SYN_ACK);
    let pkt = TcpPacket::parse(&seg[..], Completeness::Whole).unwrap();
    let fmt = WireFormat::default();
    let rec = Record::encode(&pkt, fmt, None);
    let mut want = seg.clone();
    want.resize(64, 0);
    assert_eq!(rec.as_bytes(), &want[..]);
    let mut norm = [0u8; 256];
    let v = record_view(rec.as_bytes(), &mut norm).unwrap();
    assert_eq!(
        (v.src_ip(), v.src_port()),
        (Ipv4Addr::new(198, 18, 0, 30).into(), 8080)
    );
    assert_eq!(
        (v.dst_ip(), v.dst_port()),
        (Ipv4Addr::new(203, 0, 113, 1).into(), 40000)
    );
    assert_eq!(v.seq(), 0x1000);
    assert_eq!(v.ack(), 0x2001);
    assert!(v.syn() && v.ack_flag());
    assert_eq!(v.options().window_scale, Some(7));
    assert_eq!(v.options().timestamps, Some((100, 50)));
    assert_eq!(v.payload_len(), 0);
}

/// Issue 13: a response captured with a partial, zero or garbage checksum (the target's
/// stack offloads transmit checksums) makes the same record but for those bytes, and
/// tcpcopy reads the same fields from it: nothing on the response path verifies them.
#[test]
fn records_do_not_depend_on_captured_checksums() {
    let seg = hex(SYN_ACK);
    let pkt = TcpPacket::parse(&seg[..], Completeness::Whole).unwrap();
    let fmt = WireFormat::default();
    let good = Record::encode(&pkt, fmt, None);
    let mut norm = [0u8; 256];
    let want = {
        let v = record_view(good.as_bytes(), &mut norm).unwrap();
        (
            v.src_ip(),
            v.dst_port(),
            v.seq(),
            v.ack(),
            v.flags(),
            v.window(),
        )
    };
    for (ip_sum, tcp_sum) in [(None, 0x1234u16), (None, 0), (Some(0xbeefu16), 0xffff)] {
        let mut bad = seg.clone();
        bad[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
        if let Some(v) = ip_sum {
            bad[10..12].copy_from_slice(&v.to_be_bytes());
        }
        let pkt = TcpPacket::parse(&bad[..], Completeness::Whole).unwrap();
        assert!(!pkt.checksums_valid());
        let rec = Record::encode(&pkt, fmt, None);
        let mut norm = [0u8; 256];
        let v = record_view(rec.as_bytes(), &mut norm).expect("the record is read");
        let got = (
            v.src_ip(),
            v.dst_port(),
            v.seq(),
            v.ack(),
            v.flags(),
            v.window(),
        );
        assert_eq!(got, want);
        let differ: Vec<usize> = (0..64)
            .filter(|&i| rec.as_bytes()[i] != good.as_bytes()[i])
            .collect();
        assert!(
            differ.iter().all(|i| [10, 11, 36, 37].contains(i)),
            "{differ:?}"
        );
    }
}

#[test]
fn record_with_ip_options_is_normalised() {
    // IHL 6 (4 option bytes: NOP x4), a data segment with 300 payload bytes (tot 344).
    let mut seg = hex("46000158 0001 4000 4006 0000 c612001e cb007101 01010101
                       1f90 9c40 00001000 00002001 5018 fe88 0000 0000");
    seg.extend(std::iter::repeat_n(0x61, 300));
    let pkt = TcpPacket::parse(&seg[..], Completeness::Whole).unwrap();
    let rec = Record::encode(&pkt, WireFormat::default(), None);
    let b = rec.as_bytes();
    assert_eq!(b[0], 0x45, "IHL 5 in the record");
    assert_eq!(
        u16::from_be_bytes([b[2], b[3]]),
        340,
        "total length less the options"
    );
    assert_eq!(&b[20..40], &seg[24..44], "TCP header from its real offset");
    let mut norm = [0u8; 256];
    assert_eq!(record_view(b, &mut norm).unwrap().payload_len(), 300);
    // A record as the original intercept writes it (IHL kept at 6, TCP at 20) reads the same.
    let mut orig = b.to_vec();
    orig[0] = 0x46;
    orig[2..4].copy_from_slice(&344u16.to_be_bytes());
    let v = record_view(&orig, &mut norm).unwrap();
    assert_eq!(v.payload_len(), 300);
    assert_eq!(v.dst_port(), 40000);
}

/// A TCP header longer than a record holds (timestamps and three SACK blocks: 60 bytes) is
/// cut to 44 bytes in the record; the view still gives the right ack, window, payload
/// length and timestamps (found in the lab: a SACKing target's ACKs were dropped).
#[test]
fn record_with_a_cut_tcp_header_is_understood() {
    // doff 15: NOP NOP TS(10) NOP NOP SACK(2 + 3 x 8), then 100 payload bytes (tot 180).
    let mut seg = hex("450000b4 0001 4000 4006 0000 c612001e cb007101
                       1f90 9c40 00001000 00002001 f018 0058 0000 0000
                       0101080a 11111111 22222222
                       0101051a 00000001 00000002 00000003 00000004 00000005 00000006");
    seg.extend(std::iter::repeat_n(0x61, 100));
    let pkt = TcpPacket::parse(&seg[..], Completeness::Whole).unwrap();
    assert_eq!(pkt.tcp_header_len(), 60);
    for fmt in [
        WireFormat::default(),
        WireFormat {
            combined: true,
            payload: true,
        },
    ] {
        let rec = Record::encode(&pkt, fmt, None);
        let b = rec.as_bytes();
        assert_eq!(
            &b[..64],
            &seg[..64],
            "the first 44 TCP header bytes, as captured"
        );
        let mut norm = [0u8; 256];
        let v = record_view(b, &mut norm).expect("a cut header is still a response");
        assert_eq!(v.ack(), 0x2001);
        assert_eq!(v.seq(), 0x1000);
        assert_eq!(v.window(), 0x58);
        assert_eq!(v.payload_len(), 100, "{fmt:?}");
        assert_eq!(v.options().timestamps, Some((0x1111_1111, 0x2222_2222)));
        // The same record as the original intercept writes it, with IP options: IHL 6.
        let mut orig = b.to_vec();
        orig[0] = 0x46;
        orig[2..4].copy_from_slice(&184u16.to_be_bytes());
        let v = record_view(&orig, &mut norm).unwrap();
        assert_eq!((v.ack(), v.payload_len()), (0x2001, 100));
    }
}

#[test]
fn payload_record_192_golden() {
    let mut seg = hex("45000030 0000 4000 4006 0000 c612001e cb007101
                       1f90 9c40 00001000 00002001 5018 fe88 0000 0000");
    seg.extend_from_slice(b"+PONG\r\n\0");
    let pkt = TcpPacket::parse(&seg[..], Completeness::Whole).unwrap();
    let fmt = WireFormat {
        combined: true,
        payload: true,
    };
    let rec = Record::encode(&pkt, fmt, None);
    let mut want = seg.clone();
    want.resize(192, 0);
    assert_eq!(rec.as_bytes(), &want[..]);
    let mut norm = [0u8; 256];
    let v = record_view(rec.as_bytes(), &mut norm).unwrap();
    assert_eq!(v.payload_len(), 8);
    assert_eq!(&v.payload()[..8], b"+PONG\r\n\0");
}

#[test]
fn framings_golden() {
    let r1 = [0x11u8; 64];
    let r2 = [0x22u8; 64];
    let mut combined = hex("0002");
    combined.extend_from_slice(&r1);
    combined.extend_from_slice(&r2);
    combined.extend(hex("0000")); // count 0 is accepted
    combined.extend(hex("0001"));
    combined.extend_from_slice(&r1[..10]); // incomplete frame stays
    let mut got = Vec::new();
    let used = split_frames(&combined, WireFormat::default(), |r| got.push(r.to_vec())).unwrap();
    assert_eq!(used, 2 + 128 + 2);
    assert_eq!(got, vec![r1.to_vec(), r2.to_vec()]);
    assert_eq!(
        split_frames(&hex("0011"), WireFormat::default(), |_| {}),
        Err(FrameError::TooManyRecords { count: 17, max: 16 })
    );
    let payload = WireFormat {
        combined: true,
        payload: true,
    };
    assert!(split_frames(&hex("0007"), payload, |_| {}).is_err());
    // Plain: bare records.
    let plain = WireFormat {
        combined: false,
        payload: false,
    };
    let mut bare = r1.to_vec();
    bare.extend_from_slice(&r2[..30]);
    let mut n = 0;
    assert_eq!(split_frames(&bare, plain, |_| n += 1).unwrap(), 64);
    assert_eq!(n, 1);
    // Encoding gives back the same bytes.
    let seg = hex(SYN_ACK);
    let pkt = TcpPacket::parse(&seg[..], Completeness::Whole).unwrap();
    let rec = Record::encode(&pkt, WireFormat::default(), None);
    let mut out = Vec::new();
    encode_frame(&[rec, rec], WireFormat::default(), &mut out);
    assert_eq!(&out[..2], &[0, 2]);
    assert_eq!(out.len(), 2 + 128);
    let mut back = Vec::new();
    split_frames(&out, WireFormat::default(), |r| back.push(r.to_vec())).unwrap();
    assert_eq!(back, vec![rec.as_bytes().to_vec(), rec.as_bytes().to_vec()]);
}

fn any_format() -> impl Strategy<Value = WireFormat> {
    (any::<bool>(), any::<bool>()).prop_map(|(combined, payload)| WireFormat { combined, payload })
}

proptest! {
    /// Any sequence of records, framed and then cut into arbitrary reads, is reassembled
    /// exactly by the reassembler both binaries' connections use.
    #[test]
    fn framing_survives_any_read_sizes(
        fmt in any_format(),
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 192), 0..40),
        cuts in prop::collection::vec(1usize..300, 1..60),
        budget in 1usize..5000,
    ) {
        let len = fmt.record_len();
        let recs: Vec<Vec<u8>> = records.iter().map(|r| r[..len].to_vec()).collect();
        let mut wire = Vec::new();
        for chunk in recs.chunks(fmt.max_batch()) {
            if fmt.combined {
                wire.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            }
            for r in chunk {
                wire.extend_from_slice(r);
            }
        }
        let framing = ResponseFrames(fmt);
        let got = reassemble(&wire, &cuts, budget, &framing);
        prop_assert_eq!(got, recs);
    }

    /// The same for tcpcopy -> intercept records.
    #[test]
    fn client_records_survive_any_read_sizes(
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 14), 0..100),
        cuts in prop::collection::vec(1usize..40, 1..60),
        budget in 1usize..500,
    ) {
        let wire: Vec<u8> = records.concat();
        prop_assert_eq!(reassemble(&wire, &cuts, budget, &ClientRecords), records);
    }

    /// Arbitrary bytes never panic the decoders.
    #[test]
    fn decoders_never_panic(fmt in any_format(), bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = split_frames(&bytes, fmt, |r| {
            let mut norm = [0u8; 256];
            let _ = record_view(r, &mut norm);
        });
        let mut norm = [0u8; 256];
        let _ = record_view(&bytes, &mut norm);
        if bytes.len() >= 14 {
            let m = ClientMsg::parse(&bytes[..14].try_into().unwrap());
            let _ = (m.classify(), m.check_version_record());
        }
    }
}
