//! Frame decoding: first byte picks the link type, the rest is the frame. Decodes (IPv4, and
//! IPv6 with its extension headers), parses the options, and rewrites a copy; a segment with
//! valid checksums must keep them valid.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use tc_core::packet::link::ip_payload;
use tc_core::packet::{ipv4_payload, Completeness, LinkType, TcpOptions, TcpPacket};

const LINKS: [LinkType; 5] = [
    LinkType::RawIp,
    LinkType::Ethernet,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::BsdLoopback,
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    let link = LINKS[usize::from(sel) % LINKS.len()];
    if let Ok(ip) = ipv4_payload(link, frame) {
        // Headers-only views must never panic either.
        if let Ok(p) = TcpPacket::parse(ip, Completeness::HeadersOnly) {
            let _ = (p.payload(), p.options(), p.checksums_valid(), p.seq_len());
        }
    }
    let Ok(pkt) = ip_payload(link, frame).and_then(|ip| TcpPacket::parse(ip, Completeness::Whole))
    else {
        return;
    };
    let opts = pkt.options();
    let payload_len = pkt.payload().len();
    let mut copy = pkt.as_bytes().to_vec();
    let Ok(mut p) = TcpPacket::parse(&mut copy[..], Completeness::Whole) else {
        panic!("a decoded segment must parse again");
    };
    // Start from valid checksums so that the incremental updates below are checked.
    p.fill_checksums();
    assert!(p.checksums_valid());
    if p.is_v6() {
        p.set_dst_ip(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99));
        p.set_src_ip(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, sel.into()));
        // Extension headers go; the segment stays valid.
        let n = p.strip_ip_options();
        let q = TcpPacket::parse(&copy[..n], Completeness::Whole).expect("stripped parses");
        assert_eq!(q.ip_header_len(), 40);
        assert!(q.checksums_valid());
        let mut stripped = copy[..n].to_vec();
        let Ok(p) = TcpPacket::parse(&mut stripped[..], Completeness::Whole) else {
            panic!("a stripped segment must parse again");
        };
        return rewrite_rest(p, sel, opts, payload_len);
    }
    p.set_dst_ip(Ipv4Addr::new(198, 18, 0, 99));
    p.set_src_ip(Ipv4Addr::new(203, 0, 113, 7));
    rewrite_rest(p, sel, opts, payload_len);
});

/// The rewrites of both families after the addresses.
fn rewrite_rest(mut p: TcpPacket<&mut [u8]>, sel: u8, opts: TcpOptions, payload_len: usize) {
    p.set_dst_port(sel.into());
    p.set_ack(u32::from(sel) * 0x0101_0101);
    p.set_window(0xffff);
    p.set_ip_id(0x1234);
    if let Some(at) = opts.timestamps_offset {
        p.set_timestamps(at, 1, 2);
        assert_eq!(p.options().timestamps, Some((1, 2)));
    }
    // Incremental updates keep a valid segment valid.
    assert!(p.checksums_valid());
    if payload_len > 0 {
        assert!(p.trim_front(1 + usize::from(sel) % payload_len));
        assert!(p.checksums_valid());
    }
}
