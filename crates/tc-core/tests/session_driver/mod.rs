//! Drives the replay machine with an event script decoded from arbitrary bytes (client
//! packets, well-formed or mangled; response records, plausible or garbage; the passing of
//! time) and checks its safety properties on everything it emits:
//! - every datagram parses, has valid checksums and goes to a configured target;
//! - its source is one of the `-c` addresses; announcements name a configured target;
//! - nothing panics, and time always moves the machine to a later deadline.
//!
//! Shared by the property test (`tests/session_props.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/session_replay.rs`).

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tc_core::packet::{build_segment, Completeness, SegmentSpec, TcpPacket};
use tc_core::session::{ReplayConfig, Replayer, Transfer};

const TARGET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 30);
const TARGETS: [(Ipv4Addr, u16); 2] = [(TARGET, 8080), (TARGET, 8081)];
const FAKE_CLIENTS: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2)];
const ONLINE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);

/// Checks every output of the machine.
/// The IPv4 address in `ip` (the driver replays IPv4).
fn v4(ip: std::net::IpAddr) -> std::net::Ipv4Addr {
    match ip {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(a) => panic!("IPv6 address {a} in an IPv4 run"),
    }
}

struct Checker {
    sent: usize,
    adds: usize,
    accept_adds: bool,
}

impl Checker {
    /// Checks and takes everything the machine queued, as the event loop would send it.
    fn drain(&mut self, r: &mut Replayer) {
        let out = r.output();
        for a in out.client_adds() {
            let (ci, ti, tp) = (v4(a.client_ip), v4(a.target_ip), a.target_port);
            assert!(TARGETS.contains(&(ti, tp)), "announced target {ti}:{tp}");
            assert!(FAKE_CLIENTS.contains(&ci), "announced client {ci}");
            self.adds += 1;
        }
        for d in out.datagrams() {
            let (datagram, transfer) = (d.bytes, d.transfer);
            let p = TcpPacket::parse(datagram, Completeness::Whole)
                .unwrap_or_else(|e| panic!("tcpcopy emitted a malformed datagram: {e:?}"));
            assert!(p.checksums_valid(), "bad checksum on an emitted datagram");
            let dst = (v4(p.dst_ip()), p.dst_port());
            assert!(TARGETS.contains(&dst), "datagram to {dst:?}, not a target");
            assert_eq!(
                TARGETS[transfer], dst,
                "transfer index and destination disagree"
            );
            assert!(
                FAKE_CLIENTS.contains(&v4(p.src_ip())),
                "datagram from {}, not a -c address",
                p.src_ip()
            );
            self.sent += 1;
        }
        r.clear_output();
        r.set_intercepts_available(self.accept_adds);
    }
}

/// A cursor over the script bytes; reads past the end give zeros.
struct Script<'a> {
    data: &'a [u8],
    at: usize,
}

impl Script<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

/// Runs one script. Panics on a violated property.
pub fn drive(data: &[u8]) {
    let mut s = Script { data, at: 0 };
    let setup = s.u8();
    let cfg = ReplayConfig {
        transfers: vec![
            Transfer {
                src_ip: None,
                src_port: 80,
                dst_ip: TARGETS[0].0.into(),
                dst_port: TARGETS[0].1,
                src_mac: None,
                dst_mac: None,
            },
            Transfer {
                src_ip: Some(ONLINE.into()),
                src_port: 81,
                dst_ip: TARGETS[1].0.into(),
                dst_port: TARGETS[1].1,
                src_mac: None,
                dst_mac: None,
            },
        ],
        client_ips: FAKE_CLIENTS.iter().map(|&a| a.into()).collect(),
        replicas: 1 + u16::from(setup & 3),
        port_shift: u16::from((setup >> 2) & 1) * 3,
        mtu: if setup & 0x10 != 0 { 576 } else { 1500 },
        dont_wait: setup & 0x20 != 0,
        only_with_syn: setup & 0x40 != 0,
        max_sessions: 64,
        max_session_bytes: 256 * 1024,
        ..ReplayConfig::default()
    };
    let mut r = Replayer::new(cfg);
    let mut out = Checker {
        sent: 0,
        adds: 0,
        accept_adds: setup & 0x80 == 0,
    };
    r.set_intercepts_available(out.accept_adds);
    let mut now = Instant::now();
    let mut buf = vec![0u8; 70_000];
    let payload = vec![b'x'; 65_000];
    // Per-port sequence bases make later packets land inside earlier sessions.
    let bases = [1_000u32, 5_000_000, 0xffff_f000, 77];
    let mut events = 0;
    while !s.done() && events < 2_000 {
        events += 1;
        match s.u8() % 5 {
            0 | 1 => {
                let port = 40_000 + u16::from(s.u8() % 4);
                let fl = s.u8();
                let seq = bases[usize::from(port % 4)].wrapping_add(u32::from(s.u16()));
                let ack = s.u32();
                let len = usize::from(s.u16()) % 3_000;
                let opts = s.u8();
                let spec = SegmentSpec {
                    src: Ipv4Addr::new(198, 18, 0, 10 + (opts & 1)).into(),
                    dst: ONLINE.into(),
                    src_port: port,
                    dst_port: if opts & 2 != 0 { 81 } else { 80 },
                    seq,
                    ack,
                    flags: fl,
                    window: s.u16(),
                    ip_id: 1,
                    mss: (opts & 4 != 0).then_some(1460),
                    timestamps: (opts & 8 != 0).then_some((s.u32(), 0)),
                    payload: &payload[..len],
                };
                let Ok(mut n) = build_segment(&spec, &mut buf) else {
                    continue;
                };
                match opts & 0x30 {
                    // Cut short.
                    0x30 => n = (usize::from(s.u16()) % (n + 1)).max(1),
                    // A header byte changed, checksums made valid again (a capture with bad
                    // checksums is forwarded as it is: the target drops it, as online did).
                    0x20 => {
                        let at = usize::from(s.u8()) % 60.min(n);
                        buf[at] ^= s.u8();
                        if let Ok(mut p) = TcpPacket::parse(&mut buf[..n], Completeness::Whole) {
                            p.fill_checksums();
                        }
                    }
                    // Any checksum fields: partial (what transmit offload leaves: the folded
                    // pseudo-header sum), zero or garbage; the IP header's too.
                    0x10 => {
                        let ip_len = usize::from(buf[0] & 0x0f) * 4;
                        let tcp_sum = match s.u8() % 3 {
                            0 => partial_checksum(&buf[..n]),
                            1 => 0,
                            _ => s.u16(),
                        };
                        buf[ip_len + 16..ip_len + 18].copy_from_slice(&tcp_sum.to_be_bytes());
                        if s.u8() & 1 != 0 {
                            buf[10..12].copy_from_slice(&s.u16().to_be_bytes());
                        }
                    }
                    _ => {}
                }
                r.on_client_packet(now, &buf[..n]);
                out.drain(&mut r);
            }
            2 => {
                // A response record: mostly a plausible segment from a target to a fake client.
                let mut rec = [0u8; 64];
                let kind = s.u8();
                if kind & 7 == 0 {
                    for b in rec.iter_mut() {
                        *b = s.u8();
                    }
                } else {
                    let (tip, tport) = TARGETS[usize::from(kind >> 7)];
                    let spec = SegmentSpec {
                        src: tip.into(),
                        dst: FAKE_CLIENTS[usize::from((kind >> 6) & 1)].into(),
                        src_port: tport,
                        dst_port: 40_000 + u16::from(s.u8() % 8),
                        seq: s.u32(),
                        ack: bases[usize::from(kind >> 3 & 3)].wrapping_add(u32::from(s.u16())),
                        flags: s.u8(),
                        window: s.u16(),
                        ip_id: 0,
                        mss: (kind & 8 != 0).then_some(1460),
                        timestamps: (kind & 16 != 0).then_some((s.u32(), s.u32())),
                        payload: &payload[..usize::from(s.u16()) % 1_500],
                    };
                    if let Ok(n) = build_segment(&spec, &mut buf) {
                        let h = n.min(64);
                        rec[..h].copy_from_slice(&buf[..h]);
                    }
                }
                r.on_response(now, &rec);
                out.drain(&mut r);
            }
            3 => now += Duration::from_millis(u64::from(s.u8()) * 40),
            _ => now += Duration::from_micros(u64::from(s.u16())),
        }
        if r.next_deadline().is_some_and(|d| d <= now) {
            r.on_timer(now);
            out.drain(&mut r);
            assert!(
                r.next_deadline().is_none_or(|d| d > now),
                "a timer is still due right after on_timer"
            );
        }
    }
    // Let every timer run out: the machine ends every session in bounded steps.
    for _ in 0..10_000 {
        let Some(d) = r.next_deadline() else {
            break;
        };
        now = now.max(d);
        r.on_timer(now);
        out.drain(&mut r);
    }
    assert_eq!(
        r.live_sessions(),
        0,
        "sessions left after every timer ran out"
    );
    // The running count of unsent packets' memory (what bounds an offline read-ahead) never
    // drifted.
    assert_eq!(
        r.unsent_bytes(),
        r.unsent_bytes_recounted(),
        "unsent bytes drifted"
    );
}

/// The TCP checksum field a sender with transmit checksum offload hands to the NIC (and to a
/// capture on its own host or a veth peer): the folded pseudo-header sum, not complemented.
pub fn partial_checksum(datagram: &[u8]) -> u16 {
    use tc_core::packet::checksum::{fold, pseudo_header_sum};
    let ip_len = usize::from(datagram[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let at = |i: usize| {
        [
            datagram[i],
            datagram[i + 1],
            datagram[i + 2],
            datagram[i + 3],
        ]
    };
    let tcp_len = total.saturating_sub(ip_len) as u16;
    fold(pseudo_header_sum(at(12), at(16), 6, tcp_len))
}
