#![no_main]
//! UDP replay (`--udp`) under arbitrary captured packets, fragments among them, and time.
//! Input: two configuration bytes (MTU; replicas, -c, -r, -f), then records of
//! `[time step][length u16][bytes]`. Every packet queued must be at most the MTU, carry a
//! valid IPv4 header to a configured target, and (whole, or once its fragments are put back
//! together) be a UDP datagram with a valid checksum to the target's port; no panic; the
//! reassembly stays within its limits.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tc_core::packet::checksum::checksum;
use tc_core::packet::fragments::{Outcome, Reassembler, ReassemblyLimits};
use tc_core::packet::ipv6::{udp6_checksum, Udp6Datagram};
use tc_core::packet::udp::{udp_checksum, Ipv4Info, UdpDatagram};
use tc_core::session::{ReplayConfig, Transfer};
use tc_core::udp_replay::{ClientPrefix6, Transfer6, UdpConfig, UdpReplayer};

const TARGETS: [(Ipv4Addr, u16); 2] = [
    (Ipv4Addr::new(198, 18, 0, 30), 5353),
    (Ipv4Addr::new(198, 18, 0, 31), 514),
];
/// The IPv6 transfer: port 53 of any address to [2001:db8::30]:5353.
const TARGET6: (Ipv6Addr, u16) = (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x30), 5353);
const FAKES: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2)];

fn config(a: u8, b: u8) -> UdpConfig {
    let mut cfg = UdpConfig::from_replay(&ReplayConfig::default());
    cfg.transfers = vec![
        Transfer {
            src_ip: None,
            src_port: 53,
            dst_ip: TARGETS[0].0.into(),
            dst_port: TARGETS[0].1,
            src_mac: None,
            dst_mac: None,
        },
        Transfer {
            src_ip: Some(Ipv4Addr::new(198, 18, 0, 20).into()),
            src_port: 514,
            dst_ip: TARGETS[1].0.into(),
            dst_port: TARGETS[1].1,
            src_mac: None,
            dst_mac: None,
        },
    ];
    cfg.transfers6 = vec![Transfer6 {
        src_ip: None,
        src_port: 53,
        dst_ip: TARGET6.0,
        dst_port: TARGET6.1,
        src_mac: None,
        dst_mac: None,
    }];
    if b & 4 != 0 {
        cfg.client_prefix6 = Some(ClientPrefix6 {
            prefix: Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0),
            len: 64,
        });
    }
    cfg.mtu = 68 + (u16::from(a) << 4);
    cfg.replicas = 1 + u16::from(b & 3);
    if b & 4 != 0 {
        cfg.client_ips = FAKES.to_vec();
    }
    if b & 8 != 0 {
        cfg.sample_percent = 50;
    }
    if b & 16 != 0 {
        cfg.port_shift = 1;
    }
    cfg.reassembly = ReassemblyLimits {
        max_datagrams: 8,
        max_bytes: 64 << 10,
        max_pieces: 16,
        timeout: Duration::from_secs(1),
    };
    cfg.max_queued_bytes = 256 << 10;
    cfg.seed = u64::from(a) << 8 | u64::from(b);
    cfg
}

/// A whole datagram sent: valid, to a target, from a fake client when -c is set.
fn check_whole(ip: &[u8], fakes: bool) {
    let d = UdpDatagram::parse(ip).expect("a whole datagram sent parses");
    assert!(TARGETS.contains(&(d.ip.dst, d.dst_port)), "{:?}", d.ip.dst);
    assert!(!fakes || FAKES.contains(&d.ip.src));
    let udp = &ip[d.ip.header_len..d.ip.total_len];
    let mut zeroed = udp.to_vec();
    zeroed[6..8].copy_from_slice(&[0, 0]);
    assert_eq!(
        udp_checksum(d.ip.src, d.ip.dst, &zeroed),
        u16::from_be_bytes([udp[6], udp[7]]),
        "udp checksum"
    );
}

fuzz_target!(|data: &[u8]| {
    let [a, b, ref tail @ ..] = *data else {
        return;
    };
    let mut rest: &[u8] = tail;
    let cfg = config(a, b);
    let mtu = usize::from(cfg.mtu);
    let fakes = !cfg.client_ips.is_empty();
    let limits = cfg.reassembly;
    let mut r = UdpReplayer::new(cfg);
    let mut check = Reassembler::new(ReassemblyLimits {
        max_datagrams: 1 << 12,
        max_bytes: 64 << 20,
        max_pieces: 1 << 12,
        timeout: Duration::from_secs(3600),
    });
    let mut now = Instant::now();
    while let [step, hi, lo, ref tail @ ..] = *rest {
        let len = usize::from(u16::from_be_bytes([hi, lo])).min(tail.len());
        let (packet, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_millis(u64::from(step) * 8);
        r.on_packet(now, packet);
        r.on_timer(now);
        assert!(r.reassembling() <= limits.max_datagrams);
        let mut seen = 0;
        for (p, transfer) in r.queued() {
            seen += 1;
            if p[0] >> 4 == 6 {
                // IPv6: within the MTU (at least 1280), to the target; whole datagrams with
                // a valid checksum, or fragments of one.
                assert!(p.len() <= mtu.max(1280));
                assert_eq!(transfer, 0);
                if p[6] == tc_core::packet::ipv6::NH_FRAGMENT {
                    assert_eq!(
                        tc_core::packet::ipv6::Ipv6Info::parse(p),
                        Err(tc_core::packet::ipv6::V6Error::Fragment)
                    );
                    assert_eq!(p[24..40], TARGET6.0.octets());
                    continue;
                }
                let d = Udp6Datagram::parse(p).expect("a queued IPv6 datagram parses");
                assert_eq!((d.ip.dst, d.dst_port), TARGET6);
                assert!(!fakes || d.ip.src.segments()[..3] == [0x2001, 0xdb8, 0xffff]);
                let mut zeroed = p[40..].to_vec();
                zeroed[6..8].copy_from_slice(&[0, 0]);
                assert_eq!(
                    udp6_checksum(d.ip.src, d.ip.dst, &zeroed),
                    u16::from_be_bytes([p[46], p[47]])
                );
                continue;
            }
            assert!(p.len() <= mtu.max(28), "{} > {mtu}", p.len());
            assert!(transfer < TARGETS.len());
            let info = Ipv4Info::parse(p).expect("a queued packet has a valid header");
            assert_eq!(info.total_len, p.len());
            assert_eq!(checksum(&p[..info.header_len]), 0, "ip header checksum");
            assert_eq!(info.dst, TARGETS[transfer].0);
            if !info.is_fragment() {
                check_whole(p, fakes);
            } else if let Outcome::Complete(whole) = check.add(now, p, &info) {
                check_whole(whole, fakes);
            }
        }
        assert_eq!(seen, r.queued_packets());
        // Sometimes the backend takes only part of the queue.
        let n = if step & 1 == 1 { seen / 2 } else { seen };
        r.consume(n);
    }
});
