//! Property test of the replay machine's safety: arbitrary event scripts (client packets,
//! mangled packets, response records, garbage records, time) never make it panic, send to
//! anything but a configured target, or leave a session behind (see `session_driver`).

mod session_driver;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_scripts_keep_the_safety_properties(
        data in prop::collection::vec(any::<u8>(), 0..4000)
    ) {
        session_driver::drive(&data);
    }
}

/// A script of plausible traffic (handshakes, data, responses in order) also holds them.
#[test]
fn a_plausible_script_keeps_the_safety_properties() {
    let mut data = vec![0u8];
    for i in 0..200u32 {
        // client packet on port 40000 + i % 4 with payload, then a response, then time.
        data.extend_from_slice(&[0, (i % 4) as u8, 0x18]);
        data.extend_from_slice(&(i * 100).to_be_bytes()[2..]);
        data.extend_from_slice(&[0, 0, 0, 1, 0, 100, 0, 0xff, 0xff]);
        data.extend_from_slice(&[
            2,
            0x02,
            (i % 4) as u8,
            0,
            0,
            0,
            1,
            0,
            0,
            0x12,
            0xff,
            0xff,
            0,
            0,
        ]);
        data.extend_from_slice(&[4, 0, 200]);
    }
    session_driver::drive(&data);
}

/// Found by the fuzzer: two real clients mapped onto one fake endpoint, one to each
/// transfer's target; their packets must not be mixed into one session.
#[test]
fn one_fake_endpoint_to_two_targets_is_two_sessions() {
    session_driver::drive(&[
        0x00, 0x00, 0xff, 0x8f, 0x97, 0x8f, 0x26, 0xde, 0xde, 0xde, 0xde, 0xde, 0xde, 0x93, 0x93,
        0xff, 0xff, 0xff, 0x00, 0x93, 0x89, 0x93, 0x93, 0x93, 0x93, 0x93, 0x93, 0x93, 0x93, 0x93,
        0x93, 0x93, 0x93, 0x93, 0x93, 0x93, 0x00, 0x10, 0x23, 0x00, 0x92, 0x49, 0xff, 0xff, 0x0b,
        0x24, 0x19,
    ]);
}

mod any_checksum {
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;
    use tc_core::packet::{build_segment, flags, Completeness, SegmentSpec, TcpPacket};
    use tc_core::session::{ReplayConfig, Replayer, Transfer};

    use super::session_driver::partial_checksum;

    const TARGET: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 0, 30), 8080);
    const FAKE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

    #[derive(Default)]
    struct Sent(Vec<Vec<u8>>);
    impl Sent {
        fn drain(&mut self, r: &mut Replayer) {
            self.0
                .extend(r.output().datagrams().map(|d| d.bytes.to_vec()));
            r.clear_output();
        }
    }

    /// How a captured segment's checksum fields look.
    #[derive(Debug, Clone, Copy)]
    enum Field {
        Valid,
        Partial,
        Zero,
        Garbage(u16),
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            Just(Field::Valid),
            Just(Field::Partial),
            Just(Field::Zero),
            any::<u16>().prop_map(Field::Garbage),
        ]
    }

    fn client_segment(seq: u32, fl: u8, payload: &[u8], tcp: Field, ip_bad: bool) -> Vec<u8> {
        let spec = SegmentSpec {
            src: Ipv4Addr::new(198, 18, 0, 10).into(),
            dst: Ipv4Addr::new(198, 18, 0, 20).into(),
            src_port: 40_000,
            dst_port: 80,
            seq,
            ack: 5_000,
            flags: fl,
            window: 502,
            ip_id: 1,
            mss: None,
            timestamps: Some((seq, 9)),
            payload,
        };
        let mut buf = vec![0u8; 2_000];
        let n = build_segment(&spec, &mut buf).expect("fits");
        buf.truncate(n);
        let value = match tcp {
            Field::Valid => None,
            Field::Partial => Some(partial_checksum(&buf)),
            Field::Zero => Some(0),
            Field::Garbage(v) => Some(v),
        };
        if let Some(v) = value {
            buf[36..38].copy_from_slice(&v.to_be_bytes());
        }
        if ip_bad {
            buf[10] ^= 0x5a;
        }
        buf
    }

    fn target_record(fl: u8, seq: u32, ack: u32) -> [u8; 64] {
        let spec = SegmentSpec {
            src: TARGET.0.into(),
            dst: FAKE.into(),
            src_port: TARGET.1,
            dst_port: 40_000,
            seq,
            ack,
            flags: fl,
            window: 65_535,
            ip_id: 0,
            mss: None,
            timestamps: None,
            payload: &[],
        };
        let mut buf = [0u8; 64];
        build_segment(&spec, &mut buf).expect("fits");
        buf
    }

    /// A replayer copying port 80 to the target from the fake client `FAKE`.
    fn replayer(dont_wait: bool) -> Replayer {
        Replayer::new(ReplayConfig {
            transfers: vec![Transfer {
                src_ip: None,
                src_port: 80,
                dst_ip: TARGET.0.into(),
                dst_port: TARGET.1,
                src_mac: None,
                dst_mac: None,
            }],
            client_ips: vec![FAKE.into()],
            dont_wait,
            ..ReplayConfig::default()
        })
    }

    /// Issue 15: captured IP options (a loose source route here) are not replayed; the
    /// segment goes out with a plain 20-byte header, valid checksums and the same payload.
    #[test]
    fn ip_options_are_not_replayed() {
        let with_options = |seg: Vec<u8>| {
            let mut d = seg[..20].to_vec();
            d.extend_from_slice(&[0x83, 0x07, 0x04, 198, 18, 0, 99, 0x00]);
            d.extend_from_slice(&seg[20..]);
            d[0] = 0x47;
            let tot = d.len() as u16;
            d[2..4].copy_from_slice(&tot.to_be_bytes());
            TcpPacket::parse(&mut d[..], Completeness::Whole)
                .unwrap()
                .fill_checksums();
            d
        };
        let mut r = replayer(false);
        let mut out = Sent::default();
        let now = Instant::now();
        let syn = with_options(client_segment(1_000, flags::SYN, &[], Field::Valid, false));
        r.on_client_packet(now, &syn);
        out.drain(&mut r);
        r.on_response(now, &target_record(flags::SYN | flags::ACK, 70_000, 1_001));
        out.drain(&mut r);
        let request = b"GET / HTTP/1.1\r\n\r\n";
        let req = with_options(client_segment(
            1_001,
            flags::ACK | flags::PSH,
            request,
            Field::Valid,
            false,
        ));
        r.on_client_packet(now, &req);
        out.drain(&mut r);
        assert_eq!(out.0.len(), 3, "SYN, handshake ACK, request");
        for d in &out.0 {
            let p = TcpPacket::parse(&d[..], Completeness::Whole).unwrap();
            assert_eq!(p.ip_header_len(), 20, "IP options replayed: {d:02x?}");
            assert!(p.checksums_valid());
        }
        let last = TcpPacket::parse(&out.0[2][..], Completeness::Whole).unwrap();
        assert_eq!(last.payload(), request);
        assert_eq!(r.stats().ip_options_stripped, 2);
    }

    proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
            /// Captured segments with any checksum fields (valid, partial, zero, garbage; the IP
            /// header's too) leave with both checksums valid, every request is sent, and every
            /// invalid one is counted.
            #[test]
            fn sent_segments_pass_a_full_checksum_check(
                segs in prop::collection::vec(
                    (field(), any::<bool>(), prop::collection::vec(any::<u8>(), 1..1400)),
                    1..6,
                ),
                syn in (field(), any::<bool>()),
            ) {
                let mut r = replayer(true);
                let mut out = Sent::default();
                let mut now = Instant::now();
                let isn = 1_000u32;
                // A garbage value can happen to be the right one: count what is really invalid.
                let invalid = |seg: &[u8]| {
                    let p = TcpPacket::parse(seg, Completeness::Whole).expect("parses");
                    u64::from(!p.checksums_valid())
                };
                let syn_seg = client_segment(isn, flags::SYN, &[], syn.0, syn.1);
                let mut bad = invalid(&syn_seg);
                r.on_client_packet(now, &syn_seg);
    out.drain(&mut r);
                r.on_response(now, &target_record(flags::SYN | flags::ACK, 70_000, isn + 1));
    out.drain(&mut r);
                let mut seq = isn + 1;
                let mut bytes = 0usize;
                for (tcp, ip_bad, payload) in &segs {
                    now += Duration::from_millis(1);
                    let seg = client_segment(seq, flags::ACK | flags::PSH, payload, *tcp, *ip_bad);
                    bad += invalid(&seg);
                    r.on_client_packet(now, &seg);
    out.drain(&mut r);
                    seq += payload.len() as u32;
                    bytes += payload.len();
                    r.on_response(now, &target_record(flags::ACK, 70_001, seq));
    out.drain(&mut r);
                }
                prop_assert!(!out.0.is_empty());
                let mut sent_bytes = 0;
                for d in &out.0 {
                    let p = TcpPacket::parse(&d[..], Completeness::Whole).expect("parses");
                    prop_assert!(p.checksums_valid(), "a sent segment has an invalid checksum: {:02x?}", d);
                    prop_assert_eq!((p.dst_ip(), p.dst_port()), (TARGET.0.into(), TARGET.1));
                    sent_bytes += p.payload_len();
                }
                prop_assert_eq!(sent_bytes, bytes, "every request byte is sent exactly once");
                prop_assert_eq!(r.stats().bad_checksum_fixed, bad);
            }
        }
}
