//! `FramedConn` over real loopback sockets on one mio poll: reassembly of partial reads,
//! batching, and hostile peers (half a record then silence, never reading) that must not hold
//! back the other connections of the loop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream as StdStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tc_core::control::conn::{ClientRecords, ConnError, FramedConn, Framing, ResponseFrames};
use tc_core::control::{split_frames, ClientMsg, WireFormat, CLIENT_MSG_LEN};

const DEADLINE: Duration = Duration::from_secs(10);

/// A connected pair: our end as a registered `FramedConn`, the peer as a blocking std stream.
fn pair(poll: &Poll, token: Token, max_frame: usize, limit: usize) -> (FramedConn, StdStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = StdStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut ours = TcpStream::from_std(ours);
    poll.registry()
        .register(&mut ours, token, Interest::READABLE)
        .unwrap();
    (
        FramedConn::new(ours, token, max_frame, limit).unwrap(),
        peer,
    )
}

fn add(port: u16) -> [u8; CLIENT_MSG_LEN] {
    ClientMsg::add([203, 0, 113, 1].into(), port, [198, 18, 0, 30].into(), 8080).encode()
}

#[test]
fn half_a_record_then_silence_does_not_hold_back_another_peer() {
    let mut poll = Poll::new().unwrap();
    let (mut stalled, mut stalled_peer) = pair(&poll, Token(1), CLIENT_MSG_LEN, 1 << 20);
    let (mut good, mut good_peer) = pair(&poll, Token(2), CLIENT_MSG_LEN, 1 << 20);
    stalled_peer.write_all(&add(1)[..7]).unwrap();
    // The good peer's records arrive in odd-sized pieces while the other one is silent.
    let mut stream = Vec::new();
    for port in 0..500u16 {
        stream.extend_from_slice(&add(port));
    }
    let writer = std::thread::spawn(move || {
        for piece in stream.chunks(33) {
            good_peer.write_all(piece).unwrap();
        }
        good_peer
    });
    let mut got = Vec::new();
    let mut stalled_units = 0;
    let mut events = Events::with_capacity(16);
    let start = Instant::now();
    while got.len() < 500 && start.elapsed() < DEADLINE {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for ev in events.iter() {
            let conn = if ev.token() == Token(1) {
                &mut stalled
            } else {
                &mut good
            };
            let r = conn.read_units(&ClientRecords, 1 << 20, |u| {
                if ev.token() == Token(1) {
                    stalled_units += 1;
                } else {
                    got.push(ClientMsg::parse(u.try_into().unwrap()).client_port);
                }
            });
            r.unwrap();
        }
    }
    let _good_peer = writer.join().unwrap();
    assert_eq!(
        got,
        (0..500).collect::<Vec<u16>>(),
        "every record, in order"
    );
    assert_eq!(stalled_units, 0);
    // The stalled connection reports how long its half record has waited.
    let waited = stalled.input_stalled_for(Instant::now());
    assert!(waited.is_some(), "half record not noticed");
    assert!(good.input_stalled_for(Instant::now()).is_none());
    // The rest of the record completes it.
    stalled_peer.write_all(&add(1)[7..]).unwrap();
    let mut units = Vec::new();
    let start = Instant::now();
    while units.is_empty() && start.elapsed() < DEADLINE {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        if events.iter().any(|e| e.token() == Token(1)) {
            stalled
                .read_units(&ClientRecords, 1 << 20, |u| units.push(u.to_vec()))
                .unwrap();
        }
    }
    assert_eq!(units, vec![add(1).to_vec()]);
    assert!(stalled.input_stalled_for(Instant::now()).is_none());
    // And a peer that closes is reported as such.
    drop(stalled_peer);
    let start = Instant::now();
    let mut closed = false;
    while !closed && start.elapsed() < DEADLINE {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        if events.iter().any(|e| e.token() == Token(1)) {
            closed = matches!(
                stalled.read_units(&ClientRecords, 1 << 20, |_| {}),
                Err(ConnError::Closed)
            );
        }
    }
    assert!(closed);
}

#[test]
fn a_peer_that_never_reads_overflows_while_another_keeps_receiving() {
    let fmt = WireFormat::default();
    let framing = ResponseFrames(fmt);
    let mut poll = Poll::new().unwrap();
    let limit = 256 * 1024;
    let (mut deaf, deaf_peer) = pair(&poll, Token(1), framing.max_frame_len(), limit);
    let (mut good, mut good_peer) = pair(&poll, Token(2), framing.max_frame_len(), limit);
    good_peer
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut record = [0u8; 64];
    let mut overflowed_after = None;
    let mut sent_to_good = 0u32;
    let mut events = Events::with_capacity(16);
    // Bounded: the kernel buffers of a loopback pair hold a few MB at most.
    for i in 0..400_000u32 {
        record[..4].copy_from_slice(&i.to_be_bytes());
        if overflowed_after.is_none() {
            match deaf.queue_batched(&record, fmt.max_batch()) {
                Ok(_) => {}
                Err(ConnError::Overflow { queued }) => {
                    assert!(queued > limit);
                    overflowed_after = Some(i);
                }
                Err(e) => panic!("{e}"),
            }
            deaf.flush(poll.registry()).unwrap();
        }
        if i % 16 == 0 {
            good.queue_batched(&record, fmt.max_batch()).unwrap();
            good.flush(poll.registry()).unwrap();
            sent_to_good += 1;
        }
        if i % 1024 == 0 {
            poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
            for ev in events.iter() {
                if ev.token() == Token(2) && ev.is_writable() {
                    good.flush(poll.registry()).unwrap();
                }
            }
            if let Ok(n) = good_peer.read(&mut chunk) {
                received.extend_from_slice(&chunk[..n]);
            }
        }
        if overflowed_after.is_some() && sent_to_good >= 2000 {
            break;
        }
    }
    let overflowed_after = overflowed_after.expect("the deaf peer never overflowed");
    assert!(overflowed_after > (limit / 64) as u32);
    // The good peer gets every record it was sent, in order, in valid combined frames.
    let decode = |bytes: &[u8]| {
        let mut seqs = Vec::new();
        let used = split_frames(bytes, fmt, |r| {
            seqs.push(u32::from_be_bytes(r[..4].try_into().unwrap()))
        })
        .unwrap();
        (used, seqs)
    };
    let start = Instant::now();
    while decode(&received).1.len() < sent_to_good as usize && start.elapsed() < DEADLINE {
        good.flush(poll.registry()).unwrap();
        if let Ok(n) = good_peer.read(&mut chunk) {
            received.extend_from_slice(&chunk[..n]);
        }
    }
    let (used, seqs) = decode(&received);
    assert_eq!(used, received.len());
    let expected: Vec<u32> = (0..sent_to_good).map(|k| k * 16).collect();
    assert!(
        seqs == expected,
        "{} of {} records",
        seqs.len(),
        expected.len()
    );
    assert!(deaf.output_stalled_for(Instant::now()).is_some());
    drop(deaf_peer);
}

#[test]
fn batches_and_reassembles_response_frames_across_tiny_reads() {
    for fmt in [
        WireFormat::default(),
        WireFormat {
            combined: true,
            payload: true,
        },
        WireFormat {
            combined: false,
            payload: false,
        },
    ] {
        let framing = ResponseFrames(fmt);
        let mut poll = Poll::new().unwrap();
        // Writer: a FramedConn batching records; reader: another FramedConn.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let w = StdStream::connect(addr).unwrap();
        let (r, _) = listener.accept().unwrap();
        let mut streams = Vec::new();
        for (s, t) in [(w, Token(1)), (r, Token(2))] {
            s.set_nonblocking(true).unwrap();
            let mut s = TcpStream::from_std(s);
            poll.registry()
                .register(&mut s, t, Interest::READABLE)
                .unwrap();
            streams.push(FramedConn::new(s, t, framing.max_frame_len(), 1 << 20).unwrap());
        }
        let mut reader = streams.pop().unwrap();
        let mut writer = streams.pop().unwrap();
        let len = fmt.record_len();
        let total = 1000usize;
        for i in 0..total {
            let rec: Vec<u8> = (0..len).map(|k| (i * 7 + k) as u8).collect();
            if fmt.combined {
                writer.queue_batched(&rec, fmt.max_batch()).unwrap();
                // An odd flush pattern: partial frames go out sealed as they are.
                if i % 5 == 0 {
                    writer.flush(poll.registry()).unwrap();
                }
            } else {
                writer.queue(&rec).unwrap();
            }
        }
        writer.flush(poll.registry()).unwrap();
        let mut got = Vec::new();
        let mut events = Events::with_capacity(16);
        let start = Instant::now();
        while got.len() < total && start.elapsed() < DEADLINE {
            poll.poll(&mut events, Some(Duration::from_millis(20)))
                .unwrap();
            writer.flush(poll.registry()).unwrap();
            // A tiny budget: every call reads at most one chunk, units still come out whole.
            reader
                .read_units(&framing, 1, |u| {
                    assert_eq!(u.len(), len);
                    got.push(u.to_vec());
                })
                .unwrap();
        }
        assert_eq!(got.len(), total, "{fmt:?}");
        for (i, rec) in got.iter().enumerate() {
            assert_eq!(rec[0], (i * 7) as u8, "{fmt:?} record {i}");
            assert_eq!(rec[len - 1], (i * 7 + len - 1) as u8);
        }
    }
}

#[test]
fn a_frame_count_above_the_maximum_is_a_protocol_error() {
    let fmt = WireFormat::default();
    let mut poll = Poll::new().unwrap();
    let framing = ResponseFrames(fmt);
    let (mut conn, mut peer) = pair(&poll, Token(1), framing.max_frame_len(), 1 << 20);
    let mut frame = vec![0u8, 1];
    frame.extend([1u8; 64]);
    frame.extend([0u8, 17]);
    peer.write_all(&frame).unwrap();
    let mut events = Events::with_capacity(4);
    let mut units = 0;
    let start = Instant::now();
    let mut result = None;
    while result.is_none() && start.elapsed() < DEADLINE {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        if !events.is_empty() {
            match conn.read_units(&framing, 1 << 20, |_| units += 1) {
                Ok(_) => {}
                Err(e) => result = Some(e),
            }
        }
    }
    assert!(matches!(result, Some(ConnError::Protocol(_))), "{result:?}");
    assert_eq!(units, 1, "the record before the bad count is handed out");
}
