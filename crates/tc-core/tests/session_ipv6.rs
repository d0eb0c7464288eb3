//! The replay machine over IPv6: an online connection captured as IPv6 segments (one with a
//! hop-by-hop header) is replayed to an IPv6 target from a fake client of the -c prefix;
//! the target's answers come back as IPv6 records of the control channel's IPv6 variant.
//! The same code as IPv4: the announcement, the SYN, the ack translation, the request bytes.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use tc_core::control::ipv6::{record6, Record6};
use tc_core::packet::{build_segment, flags, Completeness, SegmentSpec, TcpPacket};
use tc_core::session::{ReplayConfig, Replayer, Transfer};

const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const ONLINE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20);
const TARGET: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x30);
const FAKE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);

fn seg(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    f: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0u8; 2000];
    let spec = SegmentSpec {
        src: src.into(),
        dst: dst.into(),
        src_port: ports.0,
        dst_port: ports.1,
        seq,
        ack,
        flags: f,
        window: 64000,
        ip_id: 0,
        mss: (f & flags::SYN != 0).then_some(1440),
        timestamps: None,
        payload,
    };
    let n = build_segment(&spec, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// `packet` with a hop-by-hop extension header (PadN) inserted after the fixed header.
fn with_hop_by_hop(packet: &[u8]) -> Vec<u8> {
    let mut d = packet[..40].to_vec();
    d[6] = 0;
    d.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    d.extend_from_slice(&packet[40..]);
    let plen = (d.len() - 40) as u16;
    d[4..6].copy_from_slice(&plen.to_be_bytes());
    d
}

/// An answer of the target as intercept sends it: the unit's record.
fn answer(seq: u32, ack: u32, f: u8, payload: &[u8], port: u16) -> Vec<u8> {
    let s = seg(TARGET, FAKE, (8080, port), seq, ack, f, payload);
    let p = TcpPacket::parse(&s[..], Completeness::Whole).unwrap();
    let unit = Record6::encode(&p, false);
    record6(unit.as_bytes()).unwrap().to_vec()
}

#[test]
fn an_ipv6_session_is_replayed_to_an_ipv6_target() {
    let cfg = ReplayConfig {
        transfers: vec![Transfer {
            src_ip: None,
            src_port: 80,
            dst_ip: TARGET.into(),
            dst_port: 8080,
            src_mac: None,
            dst_mac: None,
        }],
        client_ips: vec![FAKE.into()],
        seed: 3,
        ..ReplayConfig::default()
    };
    let mut r = Replayer::new(cfg);
    r.set_intercepts_available(true);
    let t0 = Instant::now();
    let ports = (40000, 80);
    // The online handshake and a request (the request with a hop-by-hop header).
    r.on_client_packet(t0, &seg(CLIENT, ONLINE, ports, 1000, 0, flags::SYN, b""));
    let adds = r.output().client_adds().to_vec();
    assert_eq!(adds.len(), 1);
    assert_eq!(adds[0].client_ip, IpAddr::from(FAKE));
    assert_eq!(adds[0].target_ip, IpAddr::from(TARGET));
    assert_eq!(adds[0].target_port, 8080);
    let port = adds[0].client_port;
    let sent: Vec<Vec<u8>> = r.output().datagrams().map(|d| d.bytes.to_vec()).collect();
    assert_eq!(sent.len(), 1);
    let syn = TcpPacket::parse(&sent[0][..], Completeness::Whole).unwrap();
    assert!(syn.is_v6() && syn.syn() && syn.checksums_valid());
    assert_eq!((syn.src_ip(), syn.dst_ip()), (FAKE.into(), TARGET.into()));
    assert_eq!((syn.seq(), syn.dst_port()), (1000, 8080));
    r.clear_output();

    // The target's SYN-ACK (ISN 5000) through intercept.
    let t1 = t0 + Duration::from_millis(1);
    r.on_response(t1, &answer(5000, 1001, flags::SYN | flags::ACK, b"", port));
    r.clear_output();
    // Online: the client's ACK and request.
    r.on_client_packet(t1, &seg(CLIENT, ONLINE, ports, 1001, 77, flags::ACK, b""));
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let captured = with_hop_by_hop(&seg(
        CLIENT,
        ONLINE,
        ports,
        1001,
        77,
        flags::ACK | flags::PSH,
        request,
    ));
    r.on_client_packet(t1, &captured);
    let sent: Vec<Vec<u8>> = r.output().datagrams().map(|d| d.bytes.to_vec()).collect();
    let data = sent
        .iter()
        .map(|b| TcpPacket::parse(&b[..], Completeness::Whole).unwrap())
        .find(|p| !p.payload().is_empty())
        .expect("the request was sent");
    assert!(data.checksums_valid());
    assert_eq!(
        data.ip_header_len(),
        40,
        "extension headers are not replayed"
    );
    assert_eq!(data.payload(), request);
    assert_eq!(
        (data.seq(), data.ack()),
        (1001, 5001),
        "ack translated to the target's"
    );
    assert_eq!(r.stats().ip_options_stripped, 1);
    r.clear_output();

    // The answer and the target's ack come back: the session is established and answered.
    let t2 = t1 + Duration::from_millis(1);
    let end = 1001 + request.len() as u32;
    r.on_response(
        t2,
        &answer(5001, end, flags::ACK | flags::PSH, &[b'x'; 100], port),
    );
    assert_eq!(r.stats().resp_content, 1);
    assert_eq!(r.active_sessions(), 1);
    // A fragment is counted and dropped.
    let mut frag = seg(CLIENT, ONLINE, ports, end, 77, flags::ACK, b"more")[..40].to_vec();
    frag[6] = 44;
    frag.extend_from_slice(&[6, 0, 0, 1, 0, 0, 0, 9]);
    frag.extend_from_slice(&seg(CLIENT, ONLINE, ports, end, 77, flags::ACK, b"more")[40..]);
    let plen = (frag.len() - 40) as u16;
    frag[4..6].copy_from_slice(&plen.to_be_bytes());
    let before: u64 = r.drop_counts().iter().map(|(_, n)| n).sum();
    r.on_client_packet(t2, &frag);
    let after: Vec<(&str, u64)> = r.drop_counts();
    assert_eq!(
        after.iter().map(|(_, n)| n).sum::<u64>(),
        before + 1,
        "{after:?}"
    );
    assert!(
        after
            .iter()
            .any(|(name, n)| name.contains("fragment") && *n == 1),
        "{after:?}"
    );
}

/// A packet of the other family never matches a transfer: nothing is sent for an IPv6
/// segment in an IPv4 run (nor for an IPv4 one in an IPv6 run), it is counted.
#[test]
fn the_other_family_is_not_replayed() {
    let v4_target: IpAddr = "198.18.0.30".parse().unwrap();
    for (target, fakes) in [
        (v4_target, vec!["203.0.113.1".parse::<IpAddr>().unwrap()]),
        (TARGET.into(), vec![FAKE.into()]),
    ] {
        let mut r = Replayer::new(ReplayConfig {
            transfers: vec![Transfer {
                src_ip: None,
                src_port: 80,
                dst_ip: target,
                dst_port: 8080,
                src_mac: None,
                dst_mac: None,
            }],
            client_ips: fakes,
            ..ReplayConfig::default()
        });
        r.set_intercepts_available(true);
        let other = if target.is_ipv6() {
            let mut buf = vec![0u8; 100];
            let spec = SegmentSpec {
                src: "198.18.0.10".parse().unwrap(),
                dst: "198.18.0.20".parse().unwrap(),
                src_port: 40000,
                dst_port: 80,
                seq: 1,
                ack: 0,
                flags: flags::SYN,
                window: 1000,
                ip_id: 1,
                mss: None,
                timestamps: None,
                payload: b"",
            };
            let n = build_segment(&spec, &mut buf).unwrap();
            buf.truncate(n);
            buf
        } else {
            seg(CLIENT, ONLINE, (40000, 80), 1, 0, flags::SYN, b"")
        };
        r.on_client_packet(Instant::now(), &other);
        assert!(r.output().is_empty(), "target {target}");
        assert_eq!(r.active_sessions(), 0);
        assert!(
            r.drop_counts().iter().any(|(_, n)| *n == 1),
            "{:?}",
            r.drop_counts()
        );
    }
}
