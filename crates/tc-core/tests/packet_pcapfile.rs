//! Capture-file reading (classic pcap in both byte orders and precisions, pcapng) and writing.

use std::net::Ipv4Addr;
use std::time::Duration;

use tc_core::packet::{
    build_segment, decode_frame, flags, LinkType, PcapError, PcapReader, PcapWriter, SegmentSpec,
};

fn segment(payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 1600];
    let spec = SegmentSpec {
        src: Ipv4Addr::new(203, 0, 113, 5).into(),
        dst: Ipv4Addr::new(198, 18, 0, 2).into(),
        src_port: 33000,
        dst_port: 80,
        seq: 1,
        ack: 2,
        flags: flags::ACK,
        window: 1,
        ip_id: 3,
        mss: None,
        timestamps: None,
        payload,
    };
    let n = build_segment(&spec, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn eth(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// Reads all records as (index, offset, timestamp, dlt, data, orig_len).
type Rec = (u64, u64, Duration, u32, Vec<u8>, u32);

fn read_all(bytes: &[u8]) -> (Vec<Rec>, Option<PcapError>) {
    let mut r = PcapReader::new(bytes).expect("header");
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match r.next_record() {
            Ok(Some(rec)) => out.push((
                rec.index,
                rec.offset,
                rec.timestamp,
                rec.dlt,
                rec.data.to_vec(),
                rec.orig_len,
            )),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
    panic!("reader did not end");
}

#[test]
fn classic_round_trip_in_both_byte_orders_and_precisions() {
    let frames = [eth(&segment(b"one")), eth(&segment(b"second record"))];
    let times = [
        Duration::new(1_700_000_000, 123_456_789),
        Duration::new(1_700_000_001, 5_000),
    ];
    for big_endian in [false, true] {
        for nanos in [false, true] {
            let mut w = PcapWriter::with_options(Vec::new(), 1, big_endian, nanos).unwrap();
            for (t, f) in times.iter().zip(&frames) {
                w.write(*t, f).unwrap();
            }
            let file = w.into_inner().unwrap();
            let reader = PcapReader::new(&file[..]).unwrap();
            assert_eq!(reader.link_type(), Some(LinkType::Ethernet));
            let (recs, err) = read_all(&file);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(recs.len(), 2);
            for (i, rec) in recs.iter().enumerate() {
                let expect_ts = if nanos {
                    times[i]
                } else {
                    Duration::new(times[i].as_secs(), times[i].subsec_micros() * 1000)
                };
                assert_eq!(rec.0, i as u64);
                assert_eq!(rec.2, expect_ts, "be={big_endian} ns={nanos}");
                assert_eq!(rec.3, 1);
                assert_eq!(rec.4, frames[i]);
                assert_eq!(rec.5 as usize, frames[i].len());
            }
            assert_eq!(recs[0].1, 24);
            assert_eq!(recs[1].1, 24 + 16 + frames[0].len() as u64);
            let p = decode_frame(LinkType::Ethernet, &recs[1].4).unwrap();
            assert_eq!(p.payload(), b"second record");
        }
    }
}

#[test]
fn snaplen_cut_records_are_reported_truncated() {
    let frame = eth(&segment(&[7u8; 300]));
    let mut w = PcapWriter::new(Vec::new(), LinkType::Ethernet).unwrap();
    w.write_record(Duration::from_secs(1), &frame[..96], frame.len() as u32)
        .unwrap();
    w.write(Duration::from_secs(2), &frame).unwrap();
    let file = w.into_inner().unwrap();
    let mut r = PcapReader::new(&file[..]).unwrap();
    let first = r.next_record().unwrap().unwrap();
    assert!(first.is_truncated());
    assert_eq!(first.data.len(), 96);
    let second = r.next_record().unwrap().unwrap();
    assert!(!second.is_truncated());
    assert!(r.next_record().unwrap().is_none());
}

#[test]
fn file_ending_inside_a_record_names_index_and_offset() {
    let frame = eth(&segment(b"payload"));
    let mut w = PcapWriter::new(Vec::new(), LinkType::Ethernet).unwrap();
    for i in 0..3 {
        w.write(Duration::from_secs(i), &frame).unwrap();
    }
    let file = w.into_inner().unwrap();
    let rec_len = 16 + frame.len();
    let third = 24 + 2 * rec_len;
    // Cut inside the third record's data, then inside its header.
    for (cut, what) in [(third + 20, "packet data"), (third + 7, "record header")] {
        let (recs, err) = read_all(&file[..cut]);
        assert_eq!(recs.len(), 2);
        match err {
            Some(PcapError::Truncated {
                what: w,
                index,
                offset,
                ..
            }) => {
                assert_eq!((w, index, offset), (what, 2, third as u64));
                let msg = err_text(&file[..cut]);
                assert!(
                    msg.contains("record 2") && msg.contains(&third.to_string()),
                    "{msg}"
                );
            }
            other => panic!("expected a truncation error, got {other:?}"),
        }
    }
    // Cut exactly at a record boundary: a clean end.
    let (recs, err) = read_all(&file[..third]);
    assert_eq!((recs.len(), err.is_none()), (2, true));
}

fn err_text(file: &[u8]) -> String {
    let mut r = PcapReader::new(file).unwrap();
    loop {
        match r.next_record() {
            Ok(Some(_)) => continue,
            Ok(None) => return String::new(),
            Err(e) => return e.to_string(),
        }
    }
}

#[test]
fn corrupt_and_foreign_files_are_errors() {
    assert!(matches!(
        PcapReader::new(&b""[..]),
        Err(PcapError::NotPcap { .. })
    ));
    assert!(matches!(
        PcapReader::new(&b"GET / HTTP/1.1\r\n"[..]),
        Err(PcapError::NotPcap { .. })
    ));
    let header = PcapWriter::new(Vec::new(), LinkType::RawIp)
        .unwrap()
        .into_inner()
        .unwrap();
    assert!(matches!(
        PcapReader::new(&header[..10]),
        Err(PcapError::Truncated { .. })
    ));
    // A record claiming 1 GiB of data.
    let mut file = header.clone();
    file.extend_from_slice(&[0; 8]);
    file.extend_from_slice(&(1u32 << 30).to_le_bytes());
    file.extend_from_slice(&(1u32 << 30).to_le_bytes());
    let (recs, err) = read_all(&file);
    assert!(recs.is_empty());
    assert!(
        matches!(
            err,
            Some(PcapError::Corrupt {
                index: 0,
                offset: 24,
                ..
            })
        ),
        "{err:?}"
    );
    let missing = PcapReader::open("/nonexistent/capture.pcap").unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/capture.pcap"));
}

#[test]
fn unsupported_link_type_is_reported_per_record() {
    let mut w = PcapWriter::with_options(Vec::new(), 105, false, false).unwrap(); // 802.11
    w.write(Duration::from_secs(1), &[0u8; 40]).unwrap();
    let file = w.into_inner().unwrap();
    let mut r = PcapReader::new(&file[..]).unwrap();
    assert_eq!(r.link_type(), None);
    let rec = r.next_record().unwrap().unwrap();
    assert_eq!((rec.dlt, rec.link), (105, None));
}

/// Builds pcapng blocks in either byte order.
struct Ng {
    big: bool,
    out: Vec<u8>,
}

impl Ng {
    fn u16(&self, v: u16) -> [u8; 2] {
        if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
    fn u32(&self, v: u32) -> [u8; 4] {
        if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
    fn block(&mut self, kind: u32, body: &[u8]) {
        let mut body = body.to_vec();
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        let total = body.len() as u32 + 12;
        let (k, t) = (self.u32(kind), self.u32(total));
        self.out.extend_from_slice(&k);
        self.out.extend_from_slice(&t);
        self.out.extend_from_slice(&body);
        self.out.extend_from_slice(&t);
    }
    fn shb(&mut self) {
        let mut b = self.u32(0x1a2b_3c4d).to_vec();
        b.extend_from_slice(&self.u16(1));
        b.extend_from_slice(&self.u16(0));
        b.extend_from_slice(&[0xff; 8]);
        self.block(0x0a0d_0d0a, &b);
    }
    fn idb(&mut self, dlt: u16, snaplen: u32, tsresol: Option<u8>) {
        let mut b = self.u16(dlt).to_vec();
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.u32(snaplen));
        if let Some(r) = tsresol {
            b.extend_from_slice(&self.u16(9));
            b.extend_from_slice(&self.u16(1));
            b.extend_from_slice(&[r, 0, 0, 0]);
            b.extend_from_slice(&[0; 4]); // opt_endofopt
        }
        self.block(1, &b);
    }
    fn epb(&mut self, iface: u32, units: u64, data: &[u8], orig: u32) {
        let mut b = self.u32(iface).to_vec();
        b.extend_from_slice(&self.u32((units >> 32) as u32));
        b.extend_from_slice(&self.u32(units as u32));
        b.extend_from_slice(&self.u32(data.len() as u32));
        b.extend_from_slice(&self.u32(orig));
        b.extend_from_slice(data);
        self.block(6, &b);
    }
    fn spb(&mut self, data: &[u8]) {
        let mut b = self.u32(data.len() as u32).to_vec();
        b.extend_from_slice(data);
        self.block(3, &b);
    }
}

#[test]
fn pcapng_in_both_byte_orders_with_resolutions_and_interfaces() {
    let ip = segment(b"ng");
    let frame = eth(&ip);
    for big in [false, true] {
        let mut ng = Ng {
            big,
            out: Vec::new(),
        };
        ng.shb();
        ng.idb(1, 65535, None); // microseconds
        ng.idb(101, 65535, Some(9)); // nanoseconds, raw IP
        ng.idb(113, 65535, Some(0x80 | 10)); // 2^-10 s, Linux SLL
        ng.block(0x0000_0004, &[1, 2, 3, 4]); // name resolution block: skipped
        ng.epb(0, 1_700_000_000_250_000, &frame, frame.len() as u32);
        ng.epb(1, 1_700_000_000_123_456_789, &ip, ip.len() as u32);
        ng.epb(2, (1_700_000_000u64 << 10) | 512, &[0u8; 20], 60);
        ng.spb(&frame);
        // A second section: interfaces start afresh.
        ng.shb();
        ng.idb(276, 0, Some(6));
        ng.epb(0, 5_000_001, &[1, 2, 3], 3);
        let (recs, err) = read_all(&ng.out);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(recs.len(), 5);
        assert_eq!(recs[0].2, Duration::new(1_700_000_000, 250_000_000));
        assert_eq!(recs[0].3, 1);
        assert_eq!(recs[0].4, frame);
        assert_eq!(recs[1].2, Duration::new(1_700_000_000, 123_456_789));
        assert_eq!(recs[1].3, 101);
        assert_eq!(
            decode_frame(LinkType::RawIp, &recs[1].4).unwrap().payload(),
            b"ng"
        );
        assert_eq!(recs[2].2, Duration::new(1_700_000_000, 500_000_000));
        assert_eq!((recs[2].3, recs[2].4.len(), recs[2].5), (113, 20, 60));
        // Simple packet block: interface 0, previous timestamp, length from the block.
        assert_eq!((recs[3].2, recs[3].3), (recs[2].2, 1));
        assert_eq!(recs[3].4, frame);
        assert_eq!((recs[4].2, recs[4].3), (Duration::new(5, 1_000), 276));
        let offsets: Vec<u64> = recs.iter().map(|r| r.1).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            recs.iter().map(|r| r.0).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
    }
}

#[test]
fn pcapng_corruption_is_an_error_with_offset() {
    let frame = eth(&segment(b"x"));
    let mut ng = Ng {
        big: false,
        out: Vec::new(),
    };
    ng.shb();
    ng.idb(1, 0, None);
    ng.epb(0, 1, &frame, frame.len() as u32);
    let good_len = ng.out.len();
    // Packet of an interface that was never described.
    ng.epb(7, 2, &frame, frame.len() as u32);
    let (recs, err) = read_all(&ng.out);
    assert_eq!(recs.len(), 1);
    assert!(
        matches!(&err, Some(PcapError::Corrupt { index: 1, offset, .. }) if *offset == good_len as u64),
        "{err:?}"
    );
    // Trailer length that disagrees with the header.
    let mut bad = ng.out[..good_len].to_vec();
    let n = bad.len();
    bad[n - 4] ^= 4;
    let (recs, err) = read_all(&bad);
    assert!(recs.is_empty());
    assert!(matches!(err, Some(PcapError::Corrupt { .. })), "{err:?}");
    // File cut inside the packet block.
    let (recs, err) = read_all(&ng.out[..good_len - 10]);
    assert!(recs.is_empty());
    assert!(
        matches!(err, Some(PcapError::Truncated { index: 0, .. })),
        "{err:?}"
    );
}

#[test]
fn writer_output_reads_back_through_a_file() {
    let dir = std::env::temp_dir().join(format!("tc-core-pcapfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.pcap");
    let ip = segment(b"file");
    let mut w = PcapWriter::create(&path, LinkType::RawIp).unwrap();
    w.write(Duration::from_millis(1500), &ip).unwrap();
    w.flush().unwrap();
    drop(w);
    let mut r = PcapReader::open(&path).unwrap();
    let rec = r.next_record().unwrap().unwrap();
    assert_eq!(rec.link, Some(LinkType::RawIp));
    assert_eq!(rec.timestamp, Duration::from_millis(1500));
    assert_eq!(
        decode_frame(LinkType::RawIp, rec.data).unwrap().payload(),
        b"file"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pcapng_timestamp_extremes_do_not_wrap() {
    // if_tsresol 10^0 (seconds) with the largest timestamp, and an if_tsoffset.
    let mut ng = Ng {
        big: false,
        out: Vec::new(),
    };
    ng.shb();
    ng.idb(1, 0, Some(0));
    ng.epb(0, u64::MAX, &[0u8; 4], 4);
    let mut idb = ng.u16(1).to_vec();
    idb.extend_from_slice(&[0; 6]);
    idb.extend_from_slice(&ng.u16(14));
    idb.extend_from_slice(&ng.u16(8));
    idb.extend_from_slice(&(-100i64).to_le_bytes());
    ng.block(1, &idb);
    ng.epb(1, 1_000_000 * 250, &[0u8; 4], 4);
    let (recs, err) = read_all(&ng.out);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(recs[0].2, Duration::from_secs(u64::MAX));
    assert_eq!(recs[1].2, Duration::from_secs(150));
}
