//! Link-layer decoding of every supported link type, with frames the tests build.

use std::net::Ipv4Addr;

use etherparse::{
    ArpHardwareId, EtherType, Ethernet2Header, LinuxSllHeader, LinuxSllPacketType,
    LinuxSllProtocolType, NetSlice, PacketBuilder, SingleVlanHeader, SlicedPacket,
    TcpOptionElement, TransportSlice, VlanId, VlanPcp,
};
use tc_core::packet::{
    build_segment, decode_frame, flags, ipv4_payload, DropReason, LinkType, SegmentSpec,
};

fn segment(payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 1600];
    let spec = SegmentSpec {
        src: Ipv4Addr::new(203, 0, 113, 5).into(),
        dst: Ipv4Addr::new(198, 18, 0, 2).into(),
        src_port: 33000,
        dst_port: 8080,
        seq: 100,
        ack: 200,
        flags: flags::ACK | flags::PSH,
        window: 4096,
        ip_id: 9,
        mss: None,
        timestamps: Some((1, 2)),
        payload,
    };
    let n = build_segment(&spec, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// An Ethernet II frame: MACs, then one 802.1Q-style tag per TPID of `tags` (VLAN ids 100,
/// 101, ...), then `ethertype` and `body`. Headers written by etherparse, not by our code.
fn ethernet(tags: &[u16], ethertype: u16, body: &[u8]) -> Vec<u8> {
    // Each header names the type of what follows it: the next tag's TPID, or `ethertype`.
    let mut next_types = tags.iter().copied().chain([ethertype]);
    let eth = Ethernet2Header {
        source: [0x02, 0, 0, 0, 0, 1],
        destination: [0x02, 0, 0, 0, 0, 2],
        ether_type: EtherType(next_types.next().unwrap()),
    };
    let mut f = eth.to_bytes().to_vec();
    for (i, next) in next_types.enumerate() {
        let tag = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(100 + i as u16).unwrap(),
            ether_type: EtherType(next),
        };
        f.extend_from_slice(&tag.to_bytes());
    }
    f.extend_from_slice(body);
    f
}

/// A Linux cooked (v1) frame carrying `body` as `protocol`, header written by etherparse.
fn sll(protocol: u16, body: &[u8]) -> Vec<u8> {
    let header = LinuxSllHeader {
        packet_type: LinuxSllPacketType::OUTGOING,
        arp_hrd_type: ArpHardwareId::ETHERNET,
        sender_address_valid_length: 6,
        sender_address: [0x02, 0, 0, 0, 0, 1, 0, 0],
        protocol_type: LinuxSllProtocolType::EtherType(EtherType(protocol)),
    };
    let mut f = header.to_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

// etherparse writes neither Linux cooked v2 nor BSD loopback headers: these two by hand.
fn sll2(protocol: u16, body: &[u8]) -> Vec<u8> {
    // protocol, reserved, ifindex, ARPHRD_ETHER, packet type, address length, address.
    let mut f = protocol.to_be_bytes().to_vec();
    f.extend_from_slice(&[0, 0, 0, 0, 0, 3, 0, 1, 4, 6, 0x02, 0, 0, 0, 0, 1, 0, 0]);
    f.extend_from_slice(body);
    f
}

fn null(family: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut f = family.to_vec();
    f.extend_from_slice(body);
    f
}

fn check_decodes(link: LinkType, frame: &[u8], ip: &[u8]) {
    assert_eq!(ipv4_payload(link, frame).unwrap(), ip, "{link:?}");
    let p = decode_frame(link, frame).unwrap_or_else(|e| panic!("{link:?}: {e}"));
    assert_eq!(p.src_ip(), Ipv4Addr::new(203, 0, 113, 5));
    assert_eq!(p.dst_port(), 8080);
    assert_eq!(p.payload(), b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(p.options().timestamps, Some((1, 2)));
    assert!(p.checksums_valid());
}

#[test]
fn every_link_type_decodes_a_tcp_segment() {
    let ip = segment(b"GET / HTTP/1.1\r\n\r\n");
    check_decodes(LinkType::RawIp, &ip, &ip);
    check_decodes(LinkType::Ethernet, &ethernet(&[], 0x0800, &ip), &ip);
    check_decodes(LinkType::Ethernet, &ethernet(&[0x8100], 0x0800, &ip), &ip);
    check_decodes(
        LinkType::Ethernet,
        &ethernet(&[0x88a8, 0x8100], 0x0800, &ip),
        &ip,
    );
    check_decodes(
        LinkType::Ethernet,
        &ethernet(&[0x9100, 0x8100], 0x0800, &ip),
        &ip,
    );
    check_decodes(LinkType::LinuxSll, &sll(0x0800, &ip), &ip);
    check_decodes(LinkType::LinuxSll2, &sll2(0x0800, &ip), &ip);
    check_decodes(LinkType::BsdLoopback, &null(2u32.to_le_bytes(), &ip), &ip);
    check_decodes(LinkType::BsdLoopback, &null(2u32.to_be_bytes(), &ip), &ip);
}

/// A frame built entirely by etherparse (double VLAN tag, TCP with timestamps) decodes to the
/// fields it was built with: our decoder against an independent encoder.
#[test]
fn frames_built_by_etherparse_decode() {
    let payload = b"GET /other HTTP/1.1\r\n\r\n";
    let builder = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2])
        .double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
        .ipv4([203, 0, 113, 9], [198, 18, 0, 30], 64)
        .tcp(41000, 8080, 0x8000_0001, 29200)
        .ack(77)
        .psh()
        .options(&[TcpOptionElement::Timestamp(5, 6)])
        .unwrap();
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).unwrap();
    let p = decode_frame(LinkType::Ethernet, &frame).unwrap();
    assert_eq!(
        (p.src_ip(), p.dst_ip(), p.src_port(), p.dst_port()),
        (
            Ipv4Addr::new(203, 0, 113, 9).into(),
            Ipv4Addr::new(198, 18, 0, 30).into(),
            41000,
            8080
        )
    );
    assert_eq!((p.seq(), p.ack(), p.window()), (0x8000_0001, 77, 29200));
    assert_eq!(p.flags(), flags::ACK | flags::PSH);
    assert_eq!(p.options().timestamps, Some((5, 6)));
    assert_eq!(p.payload(), payload);
    assert!(p.checksums_valid());
}

/// What our builder writes, etherparse reads back with the same fields and valid checksums.
#[test]
fn segments_we_build_pass_etherparse() {
    let ip = segment(b"GET / HTTP/1.1\r\n\r\n");
    let sliced = SlicedPacket::from_ip(&ip).unwrap();
    let Some(NetSlice::Ipv4(v4)) = &sliced.net else {
        panic!("not IPv4: {:?}", sliced.net)
    };
    let header = v4.header();
    assert_eq!(
        header.header_checksum(),
        header.to_header().calc_header_checksum()
    );
    assert_eq!(header.destination_addr(), Ipv4Addr::new(198, 18, 0, 2));
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
        panic!("not TCP: {:?}", sliced.transport)
    };
    assert_eq!(
        tcp.checksum(),
        tcp.calc_checksum_ipv4(header.source(), header.destination())
            .unwrap()
    );
    assert_eq!(
        (tcp.sequence_number(), tcp.acknowledgment_number()),
        (100, 200)
    );
    assert_eq!(tcp.payload(), b"GET / HTTP/1.1\r\n\r\n");
}

#[test]
fn ethernet_padding_is_not_payload() {
    // A pure ACK is 52 bytes of IP; Ethernet pads the frame to 60 bytes (+ here 14 more).
    let ip = segment(b"");
    let mut frame = ethernet(&[], 0x0800, &ip);
    frame.resize(80, 0xee);
    let p = decode_frame(LinkType::Ethernet, &frame).unwrap();
    assert_eq!(p.payload_len(), 0);
    assert_eq!(p.as_bytes(), &ip[..]);
    assert!(p.checksums_valid());
}

#[test]
fn non_ipv4_frames_are_not_ipv4() {
    let ip = segment(b"x");
    let ipv6_body = {
        let mut b = ip.clone();
        b[0] = 0x60;
        b
    };
    let cases: Vec<(LinkType, Vec<u8>)> = vec![
        (LinkType::Ethernet, ethernet(&[], 0x86dd, &ipv6_body)),
        (LinkType::Ethernet, ethernet(&[], 0x0806, &[0u8; 28])),
        (LinkType::Ethernet, ethernet(&[0x8100], 0x86dd, &ipv6_body)),
        // Three tags: the third TPID is not an EtherType we accept.
        (
            LinkType::Ethernet,
            ethernet(&[0x88a8, 0x8100, 0x8100], 0x0800, &ip),
        ),
        (LinkType::LinuxSll, sll(0x86dd, &ipv6_body)),
        (LinkType::LinuxSll2, sll2(0x0806, &ip)),
        (LinkType::BsdLoopback, null(30u32.to_le_bytes(), &ipv6_body)),
        (LinkType::RawIp, ipv6_body.clone()),
        // IPv4 EtherType but an IPv6 packet inside.
        (LinkType::Ethernet, ethernet(&[], 0x0800, &ipv6_body)),
    ];
    for (link, frame) in cases {
        assert_eq!(
            ipv4_payload(link, &frame),
            Err(DropReason::NotIpv4),
            "{link:?} {frame:02x?}"
        );
        assert_eq!(decode_frame(link, &frame).err(), Some(DropReason::NotIpv4));
    }
}

#[test]
fn short_frames_are_truncated() {
    let ip = segment(b"abcdef");
    let frames: Vec<(LinkType, Vec<u8>, usize)> = vec![
        (LinkType::Ethernet, ethernet(&[], 0x0800, &ip), 14),
        (LinkType::Ethernet, ethernet(&[0x8100], 0x0800, &ip), 18),
        (
            LinkType::Ethernet,
            ethernet(&[0x88a8, 0x8100], 0x0800, &ip),
            22,
        ),
        (LinkType::LinuxSll, sll(0x0800, &ip), 16),
        (LinkType::LinuxSll2, sll2(0x0800, &ip), 20),
        (LinkType::BsdLoopback, null(2u32.to_le_bytes(), &ip), 4),
        (LinkType::RawIp, ip.clone(), 0),
    ];
    for (link, frame, link_len) in frames {
        // Every cut inside the link header is truncated, and so is every cut of the datagram.
        for cut in 0..frame.len() {
            let r = decode_frame(link, &frame[..cut]);
            assert_eq!(
                r.err(),
                Some(DropReason::Truncated),
                "{link:?} cut at {cut}"
            );
            if cut < link_len.max(1) {
                assert_eq!(
                    ipv4_payload(link, &frame[..cut]),
                    Err(DropReason::Truncated)
                );
            }
        }
        assert!(decode_frame(link, &frame).is_ok());
    }
}

#[test]
fn other_ip_protocols_and_fragments_are_dropped() {
    let mut udp = segment(b"abc");
    udp[9] = 17;
    assert_eq!(
        decode_frame(LinkType::RawIp, &udp).err(),
        Some(DropReason::NotTcp)
    );
    let mut frag = segment(b"abc");
    frag[6..8].copy_from_slice(&0x0010u16.to_be_bytes()); // offset 16
    assert_eq!(
        decode_frame(LinkType::RawIp, &frag).err(),
        Some(DropReason::Fragment)
    );
    let mut bad_doff = segment(b"abc");
    bad_doff[32] = 4 << 4;
    assert_eq!(
        decode_frame(LinkType::RawIp, &bad_doff).err(),
        Some(DropReason::BadTcpHeader)
    );
    let mut bad_ihl = segment(b"abc");
    bad_ihl[0] = 0x44;
    assert_eq!(
        decode_frame(LinkType::RawIp, &bad_ihl).err(),
        Some(DropReason::BadIpHeader)
    );
}

#[test]
fn link_type_numbers() {
    for (dlt, link) in [
        (0, LinkType::BsdLoopback),
        (1, LinkType::Ethernet),
        (12, LinkType::RawIp),
        (14, LinkType::RawIp),
        (101, LinkType::RawIp),
        (228, LinkType::RawIp),
        (113, LinkType::LinuxSll),
        (276, LinkType::LinuxSll2),
    ] {
        assert_eq!(LinkType::from_dlt(dlt), Some(link));
        assert_eq!(LinkType::from_dlt(link.to_dlt()), Some(link));
    }
    // Cisco HDLC, 802.11, IPv6-only raw: not decoded.
    for dlt in [104, 105, 229, -1] {
        assert_eq!(LinkType::from_dlt(dlt), None);
    }
}
