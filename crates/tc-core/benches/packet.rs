//! Per-packet cost of the forwarding path: decode an Ethernet frame carrying a 1500-byte
//! segment and rewrite what tcpcopy rewrites (addresses, port, ack, window, timestamps),
//! keeping checksums valid incrementally, versus recomputing them in full.
//!
//! Captured checksums may be invalid (transmit offload on the capture side). Two ways to send
//! valid ones whatever was captured: verify the captured segment once at ingress (recompute
//! only when it is invalid) and update incrementally after (what the replayer does), or
//! recompute both checksums in full before every send. Compare `verify+decode+rewrite
//! incremental` with `decode+rewrite full checksum recomputation`.
//!
//! `decode_1500` compares our link/IP/TCP decode with etherparse's slicing of the same frame
//! (the fields the session reads), to decide whether `packet/link.rs` could use etherparse.
//!
//! `cargo bench -p tc-core --bench packet`

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tc_core::packet::{
    build_segment, checksum, decode_frame, flags, LinkType, SegmentSpec, TcpPacket,
};

/// An Ethernet frame with a 1500-byte IPv4 datagram (timestamps option, 1448 payload bytes).
fn frame() -> Vec<u8> {
    let payload: Vec<u8> = (0..1448u32).map(|i| (i * 7) as u8).collect();
    let spec = SegmentSpec {
        src: Ipv4Addr::new(203, 0, 113, 10).into(),
        dst: Ipv4Addr::new(198, 18, 0, 2).into(),
        src_port: 40000,
        dst_port: 80,
        seq: 1,
        ack: 2,
        flags: flags::ACK | flags::PSH,
        window: 502,
        ip_id: 1,
        mss: None,
        timestamps: Some((100, 200)),
        payload: &payload,
    };
    let mut f = vec![0u8; 14 + 1500];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let n = build_segment(&spec, &mut f[14..]).expect("segment fits");
    assert_eq!(n, 1500);
    f
}

/// The word sum before issue 18 (big-endian 32-bit words, a byte swap per word), kept here
/// to show the ratio in one run (`checksum_1500`).
fn sum_bytes_before(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

#[derive(Clone, Copy, PartialEq)]
enum Checksums {
    /// As before issue 18: verify with the old word sum, then copy (two passes).
    VerifyBeforeIssue18,
    /// Incremental updates only (valid only when the captured checksums were).
    Incremental,
    /// Verify the captured segment, then incremental updates (recompute if it was invalid).
    VerifyThenIncremental,
    /// Incremental updates, then both recomputed in full.
    Full,
}

/// Decode, copy into the send buffer, and rewrite, keeping checksums as `how` says.
fn forward(frame: &[u8], out: &mut [u8], i: u32, how: Checksums) -> u16 {
    let p = decode_frame(LinkType::Ethernet, frame).expect("decodes");
    let len = p.as_bytes().len();
    let valid = match how {
        // What the replayer does: copy and verify in one pass.
        Checksums::VerifyThenIncremental => p.copy_verified(out),
        Checksums::VerifyBeforeIssue18 => {
            let b = p.as_bytes();
            let ip_ok = checksum::fold(sum_bytes_before(&b[..20], 0)) == 0xffff;
            let seg = &b[20..];
            let acc = checksum::pseudo_header_sum(
                [b[12], b[13], b[14], b[15]],
                [b[16], b[17], b[18], b[19]],
                6,
                seg.len() as u16,
            );
            let tcp_ok = checksum::fold(sum_bytes_before(seg, acc)) == 0xffff;
            out[..len].copy_from_slice(b);
            ip_ok && tcp_ok
        }
        _ => {
            out[..len].copy_from_slice(p.as_bytes());
            true
        }
    };
    // The replay decodes the fields it reads once, and views the copy with the same layout.
    let seg = p.segment();
    let ts_at = seg.options.timestamps_offset;
    let mut q = TcpPacket::from_layout(&mut out[..len], seg.layout).expect("copy parses");
    // As the replay does: addresses and port at ingress, then ack, window and timestamps
    // when the segment is sent; each a rewrite with one checksum update.
    q.rewrite(|w| {
        w.dst_ip(Ipv4Addr::new(198, 18, 0, 30))
            .dst_port(8080)
            .src_ip(Ipv4Addr::new(203, 0, 113, (i & 0xff) as u8));
    });
    q.rewrite(|w| {
        w.ack(i.wrapping_mul(2_654_435_761)).window(65535);
        if let Some(at) = ts_at {
            w.timestamps(at, i, i ^ 0x5555);
        }
    });
    if how == Checksums::Full || !valid {
        q.fill_checksums();
    }
    q.tcp_checksum()
}

fn bench(c: &mut Criterion) {
    let f = frame();
    let mut out = vec![0u8; 1500];
    let mut g = c.benchmark_group("forward_1500");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    g.bench_function("decode+rewrite incremental checksums", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(forward(black_box(&f), &mut out, i, Checksums::Incremental))
        })
    });
    g.bench_function(
        "verify+decode+rewrite, as before issue 18 (two passes)",
        |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                black_box(forward(
                    black_box(&f),
                    &mut out,
                    i,
                    Checksums::VerifyBeforeIssue18,
                ))
            })
        },
    );
    g.bench_function("verify+decode+rewrite incremental checksums", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(forward(
                black_box(&f),
                &mut out,
                i,
                Checksums::VerifyThenIncremental,
            ))
        })
    });
    g.bench_function("decode+rewrite full checksum recomputation", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(forward(black_box(&f), &mut out, i, Checksums::Full))
        })
    });
    // The rewrite alone, in place (no copy): what the send path does to an owned buffer.
    let mut owned = f[14..].to_vec();
    g.bench_function("rewrite in place, incremental", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let mut q = TcpPacket::parse(&mut owned[..], tc_core::packet::Completeness::Whole)
                .expect("parses");
            q.rewrite(|w| {
                w.dst_ip(Ipv4Addr::new(198, 18, 0, (i & 0xff) as u8))
                    .ack(i)
                    .window(i as u16);
            });
            black_box(q.tcp_checksum())
        })
    });
    g.finish();

    let mut k = c.benchmark_group("checksum_1500");
    k.throughput(Throughput::Bytes(1480));
    let seg = &f[34..];
    k.bench_function("word sum before issue 18 (big-endian words)", |b| {
        b.iter(|| black_box(checksum::fold(sum_bytes_before(black_box(seg), 0))))
    });
    k.bench_function("sum_bytes (native 32-bit words, 64-bit lanes)", |b| {
        b.iter(|| black_box(checksum::fold(checksum::sum_bytes(black_box(seg), 0))))
    });
    let mut copy = vec![0u8; seg.len()];
    k.bench_function("memcpy, then sum_bytes of the copy", |b| {
        b.iter(|| {
            copy.copy_from_slice(black_box(seg));
            black_box(checksum::fold(checksum::sum_bytes(&copy, 0)))
        })
    });
    k.bench_function("copy_and_sum (one pass)", |b| {
        b.iter(|| {
            black_box(checksum::fold(checksum::copy_and_sum(
                black_box(seg),
                &mut copy,
                0,
            )))
        })
    });
    k.finish();

    let mut d = c.benchmark_group("decode_1500");
    d.throughput(Throughput::Elements(1));
    d.bench_function("ours: decode_frame", |b| {
        b.iter(|| {
            let p = decode_frame(LinkType::Ethernet, black_box(&f)).expect("decodes");
            black_box((
                p.src_ip(),
                p.src_port(),
                p.seq(),
                p.ack(),
                p.payload().len(),
            ))
        })
    });
    d.bench_function("etherparse: SlicedPacket::from_ethernet", |b| {
        b.iter(|| {
            let s = etherparse::SlicedPacket::from_ethernet(black_box(&f)).expect("decodes");
            let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
                panic!("not IPv4")
            };
            let Some(etherparse::TransportSlice::Tcp(tcp)) = &s.transport else {
                panic!("not TCP")
            };
            black_box((
                ip.header().source_addr(),
                tcp.source_port(),
                tcp.sequence_number(),
                tcp.acknowledgment_number(),
                tcp.payload().len(),
            ))
        })
    });
    d.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
