//! Issue 18: the live replay path allocates nothing per packet in steady state. A counting
//! global allocator (counting only on this test's thread, only while the path runs) watches
//! the real code from the capture buffer to the send call: a [`Capture`] handing out
//! prepared Ethernet frames, `ipv4_payload`, the replay machine, its outbox, [`ReplayOutput`]
//! and a [`Sender`] that copies into a buffer reserved up front; intercept's records go to
//! the machine and its output is flushed as in the event loop's tunnel turn. The simulated target
//! (tc-core's session simulator) runs between the turns, uncounted.
//!
//! The IPv6 variant runs the same load over IPv6: the captured frames are IPv6 (the
//! simulator's IPv4 segments with their addresses mapped into 2001:db8::/96), the target is
//! IPv6, the replayed segments are mapped back for the simulator and its records come back
//! as the IPv6 records of the control channel's IPv6 variant (conversions uncounted).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tc_core::capture::Capture;
use tc_core::packet::{DropCounters, LinkType};
use tc_core::send::{Outgoing, Sender};
use tc_core::session::Replayer;

use crate::event_loop::{capture_turn, flush_output};
use crate::output::ReplayOutput;
use crate::tunnels::Tunnels;

#[path = "../../tc-core/tests/session_sim/mod.rs"]
mod session_sim;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Backtraces left to print (`ALLOC_STEADY_TRACE=N`: where the first N allocations are).
    static TRACES: Cell<u32> = const { Cell::new(0) };
}

fn note_allocation() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            if TRACES.with(|t| t.get()) > 0 {
                TRACES.with(|t| t.set(t.get() - 1));
                on.set(false);
                eprintln!("{}", std::backtrace::Backtrace::force_capture());
                on.set(true);
            }
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// const-initialised thread locals without destructors (no allocation, no re-entrance).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f`, returning how many allocations it made on this thread.
pub(crate) fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.with(|n| n.get());
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (out, ALLOCATIONS.with(|n| n.get()) - before)
}

/// Hands out prepared frames: those before `available` not yet read.
struct FrameSource {
    frames: Vec<Vec<u8>>,
    next: usize,
    available: usize,
}

impl Capture for FrameSource {
    fn register(&mut self, _: &mio::Registry, _: mio::Token) -> std::io::Result<()> {
        Ok(())
    }

    fn read_frames(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(LinkType, &[u8]),
    ) -> std::io::Result<usize> {
        let mut n = 0;
        while n < budget && self.next < self.available {
            on_frame(LinkType::Ethernet, &self.frames[self.next]);
            self.next += 1;
            n += 1;
        }
        Ok(n)
    }
}

/// The sent datagrams, concatenated, with their ends; capacity reserved up front.
#[derive(Default)]
struct Wire {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

struct CopyingSender(Rc<RefCell<Wire>>);

impl Sender for CopyingSender {
    fn send_batch(&mut self, batch: &[Outgoing<'_>]) -> std::io::Result<usize> {
        let mut w = self.0.borrow_mut();
        for d in batch {
            assert!(
                w.bytes.len() + d.bytes.len() <= w.bytes.capacity(),
                "test wire buffer too small"
            );
            w.bytes.extend_from_slice(d.bytes);
            let end = w.bytes.len();
            w.ends.push(end);
        }
        Ok(batch.len())
    }
}

/// The simulator's IPv4 address `a` as an IPv6 one (2001:db8::a.b.c.d), and back.
fn map6(a: std::net::Ipv4Addr) -> std::net::Ipv6Addr {
    let [b0, b1, b2, b3] = a.octets();
    std::net::Ipv6Addr::from([
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, b0, b1, b2, b3,
    ])
}

fn unmap6(a: &[u8]) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(a[12], a[13], a[14], a[15])
}

/// An IPv4/TCP datagram (or a headers-only record) as IPv6: a 40-byte header with the mapped
/// addresses, the same TCP bytes, the payload length of the IPv4 total length; with
/// `checksum` the TCP checksum is recomputed (a whole datagram).
fn to_v6(d: &[u8], checksum: bool) -> Vec<u8> {
    use tc_core::packet::{Completeness, TcpPacket};
    let p = TcpPacket::parse(d, Completeness::HeadersOnly).expect("an IPv4 segment");
    let ihl = p.ip_header_len();
    let plen = usize::from(p.total_len()) - ihl;
    let mut out = vec![0x60, 0, 0, 0];
    out.extend_from_slice(&(plen as u16).to_be_bytes());
    out.extend_from_slice(&[6, 64]);
    out.extend_from_slice(&map6(std::net::Ipv4Addr::new(d[12], d[13], d[14], d[15])).octets());
    out.extend_from_slice(&map6(std::net::Ipv4Addr::new(d[16], d[17], d[18], d[19])).octets());
    out.extend_from_slice(&d[ihl..]);
    if checksum {
        TcpPacket::parse(&mut out[..], Completeness::Whole)
            .expect("an IPv6 segment")
            .fill_checksums();
    }
    out
}

/// An IPv6/TCP datagram tcpcopy sent, as the IPv4 one the simulator understands.
fn to_v4(d: &[u8]) -> Vec<u8> {
    use tc_core::packet::{Completeness, TcpPacket};
    let tot = d.len() - 20;
    let mut out = vec![0x45, 0];
    out.extend_from_slice(&(tot as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    out.extend_from_slice(&unmap6(&d[8..24]).octets());
    out.extend_from_slice(&unmap6(&d[24..40]).octets());
    out.extend_from_slice(&d[40..]);
    TcpPacket::parse(&mut out[..], Completeness::Whole)
        .expect("an IPv4 segment")
        .fill_checksums();
    out
}

#[test]
fn steady_state_replay_allocates_nothing_per_packet() {
    steady_state(false);
}

#[test]
fn steady_state_ipv6_replay_allocates_nothing_per_packet() {
    steady_state(true);
}

fn steady_state(v6: bool) {
    use session_sim::*;
    const REQUESTS: usize = 800;
    const WARM_UP: usize = 200;
    // Keep-alive requests of 200..2700 bytes (one or two segments), answers of 300..4300.
    let requests: Vec<(Vec<u8>, usize)> = (0..REQUESTS)
        .map(|i| {
            let resp = 300 + (i * 37) % 4000;
            (request(i, 200 + (i * 53) % 2500, resp), resp)
        })
        .collect();
    let mut conn = ClientConn::new(40_000, requests);
    conn.with_fin = false;
    conn.timestamps = true;
    let stream = conn.stream();
    let captured = conn.capture(Duration::ZERO);
    // Request `i`'s first segment: where the counting starts.
    let warm_up_frame = captured
        .iter()
        .filter(|c| c.bytes.len() > 52)
        .nth(WARM_UP)
        .map(|c| c.at)
        .and_then(|at| captured.iter().position(|c| c.at == at))
        .expect("enough requests");
    let frames: Vec<Vec<u8>> = captured
        .iter()
        .map(|c| {
            let mut f = vec![0u8; 14];
            if v6 {
                f[12..14].copy_from_slice(&[0x86, 0xdd]);
                f.extend_from_slice(&to_v6(&c.bytes, true));
            } else {
                f[12..14].copy_from_slice(&[0x08, 0x00]);
                f.extend_from_slice(&c.bytes);
            }
            f
        })
        .collect();
    let total = frames.len();
    let mut source = FrameSource {
        frames,
        next: 0,
        available: 0,
    };

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        panic!("v4")
    };
    let poll = mio::Poll::new().unwrap();
    let wire_opts = crate::cli::WireOptions {
        combined: true,
        payload: false,
    };
    let tunnels = Tunnels::connect_all(
        &[addr.into()],
        1,
        wire_opts,
        poll.registry(),
        Duration::from_secs(3),
    )
    .unwrap();
    let wire = Rc::new(RefCell::new(Wire {
        bytes: Vec::with_capacity(4 << 20),
        ends: Vec::with_capacity(64 << 10),
    }));
    let mut cfg = config();
    if v6 {
        for t in cfg.transfers.iter_mut() {
            let std::net::IpAddr::V4(a) = t.dst_ip else {
                panic!("an IPv4 simulation")
            };
            t.dst_ip = map6(a).into();
        }
    }
    let mut output = ReplayOutput::new(
        Box::new(CopyingSender(wire.clone())),
        &cfg.transfers,
        tunnels,
        false,
    );
    let mut replayer = Replayer::new(cfg);
    replayer.set_intercepts_available(true);
    let mut link_drops = DropCounters::default();
    let mut core = SimCore::new();
    let mut records: Vec<u8> = Vec::with_capacity(1 << 20);

    let traces = std::env::var("ALLOC_STEADY_TRACE").ok();
    let traces: u32 = traces.and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut steady_allocations = 0u64;
    let mut steady_frames = 0usize;
    for k in 0..total {
        let steady = k >= warm_up_frame;
        if k == warm_up_frame {
            TRACES.with(|t| t.set(traces));
        }
        source.available = k + 1;
        let (read, n) = counted(|| {
            capture_turn(
                &mut source,
                &mut replayer,
                &mut output,
                &mut link_drops,
                v6,
                &mut |r, now, d| r.on_client_packet(now, d),
            )
        });
        assert_eq!(read.unwrap(), 1);
        if steady {
            steady_allocations += n;
            steady_frames += 1;
        }
        // The target answers; its records come back until it has nothing more to say.
        for _ in 0..1000 {
            core.now = Instant::now();
            {
                let mut w = wire.borrow_mut();
                let mut start = 0;
                for &end in &w.ends {
                    let sent = &w.bytes[start..end];
                    if v6 {
                        core.on_sent(&to_v4(sent));
                    } else {
                        core.on_sent(sent);
                    }
                    start = end;
                }
                w.bytes.clear();
                w.ends.clear();
            }
            if core.records.is_empty() {
                break;
            }
            records.clear();
            for (_, r) in core.records.drain(..) {
                if v6 {
                    // The record of the IPv6 variant, padded as the slot of a 64-byte one
                    // would not be: each is read alone below.
                    let mut rec = to_v6(&r, false);
                    rec.resize(tc_core::control::ipv6::RECORD6_LEN, 0);
                    records.extend_from_slice(&rec);
                } else {
                    records.extend_from_slice(&r);
                }
            }
            let rec_len = if v6 {
                tc_core::control::ipv6::RECORD6_LEN
            } else {
                64
            };
            let ((), n) = counted(|| {
                // As the event loop's tunnel turn: each record, then one flush.
                let now = Instant::now();
                for record in records.chunks_exact(rec_len) {
                    replayer.on_response(now, record);
                }
                flush_output(&mut replayer, &mut output);
                if replayer.next_deadline().is_some_and(|d| d <= now) {
                    replayer.on_timer(now);
                    flush_output(&mut replayer, &mut output);
                }
            });
            if steady {
                steady_allocations += n;
            }
        }
    }
    // The path did its work: every request reached the target, in order, once.
    assert_eq!(link_drops.0.iter().sum::<u64>(), 0, "{link_drops}");
    assert_eq!(received(&core, (session_sim::CLIENT, 40_000)), stream);
    assert!(steady_frames > 1000, "{steady_frames} frames counted");
    assert_eq!(
        steady_allocations, 0,
        "{steady_allocations} heap allocations over {steady_frames} captured frames in steady state"
    );
}
