//! Generates the offline benchmark capture: what an online host on 198.18.0.20:80 captures
//! from `conns` client connections (half short, one request each; half keep-alive sharing the
//! rest) making `requests` requests of the bench protocol, each answered with 100 bytes.
//! Raw-IP pcap; prints `packets P requests R connections C`.
//!
//! usage: tc-bench-gen OUT.pcap CONNS REQUESTS

use std::net::Ipv4Addr;
use std::time::Duration;

use tc_core::packet::{build_segment, flags, LinkType, PcapWriter, SegmentSpec};

const RESP: u32 = 100;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 {
        eprintln!("usage: tc-bench-gen OUT.pcap CONNS REQUESTS");
        std::process::exit(2);
    }
    let conns: u32 = a[2].parse().expect("CONNS");
    let requests: u64 = a[3].parse().expect("REQUESTS");
    let short = conns / 2;
    let keep = (conns - short).max(1);
    let per_keep = (requests.saturating_sub(u64::from(short)) / u64::from(keep)).max(1);
    let mut packets: Vec<(Duration, Vec<u8>)> = Vec::new();
    let mut total_requests = 0u64;
    let mut buf = vec![0u8; 2048];
    for c in 0..conns {
        let port = 10_000 + (c % 50_000) as u16;
        let client = Ipv4Addr::new(198, 18, 1 + (c / 50_000) as u8, 10);
        let n = if c < short { 1 } else { per_keep };
        let mut t = Duration::from_micros(u64::from(c) * 500);
        let isn = 1000u32.wrapping_mul(c + 7);
        let mut seq = isn;
        let mut ack = 5000u32;
        let mut id = 1u16;
        let mut push = |t: Duration, seq: u32, ack: u32, fl: u8, payload: &[u8], id: u16| {
            let spec = SegmentSpec {
                src: client.into(),
                dst: Ipv4Addr::new(198, 18, 0, 20).into(),
                src_port: port,
                dst_port: 80,
                seq,
                ack,
                flags: fl,
                window: 502,
                ip_id: id,
                mss: (fl & flags::SYN != 0).then_some(1460),
                timestamps: None,
                payload,
            };
            let len = build_segment(&spec, &mut buf).expect("fits");
            packets.push((t, buf[..len].to_vec()));
        };
        push(t, seq, 0, flags::SYN, &[], id);
        seq = seq.wrapping_add(1);
        ack = ack.wrapping_add(1);
        t += Duration::from_micros(100);
        push(t, seq, ack, flags::ACK, &[], id + 1);
        for r in 0..n {
            id = id.wrapping_add(2);
            t += Duration::from_micros(200);
            let req = format!("REQ {RESP} {c} {r} {}\n", "x".repeat(50));
            push(t, seq, ack, flags::ACK | flags::PSH, req.as_bytes(), id);
            seq = seq.wrapping_add(req.len() as u32);
            ack = ack.wrapping_add(RESP);
            t += Duration::from_micros(100);
            push(t, seq, ack, flags::ACK, &[], id + 1);
            total_requests += 1;
        }
        t += Duration::from_micros(200);
        push(
            t,
            seq,
            ack,
            flags::ACK | flags::FIN,
            &[],
            id.wrapping_add(3),
        );
    }
    packets.sort_by_key(|p| p.0);
    let mut w = PcapWriter::create(&a[1], LinkType::RawIp).expect("create pcap");
    let base = Duration::from_secs(1_700_000_000);
    for (t, p) in &packets {
        w.write(base + *t, p).expect("write");
    }
    w.flush().expect("flush");
    let duration = match (packets.first(), packets.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => Duration::ZERO,
    };
    println!(
        "packets {} requests {} connections {} duration_s {:.3}",
        packets.len(),
        total_requests,
        conns,
        duration.as_secs_f64()
    );
}
