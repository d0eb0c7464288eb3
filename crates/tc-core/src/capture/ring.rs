//! Memory-mapped capture ring (`AF_PACKET`, `TPACKET_V3`, `PACKET_RX_RING`): what the raw
//! socket captures (TCP datagrams addressed to this host, on every interface, from the IP
//! header on), read in place from blocks the kernel fills, without a system call or a copy
//! per packet. The kernel runs the same port filter as on the raw socket (plus "is TCP": a
//! packet socket sees every IPv4 protocol), skips the host's own outgoing packets
//! (`PACKET_IGNORE_OUTGOING`, or by packet type where the kernel lacks it), and counts what it
//! dropped for want of room in the ring (`PACKET_STATISTICS`, see [`Capture::dropped`]).
//!
//! Unlike the raw socket, IP fragments are not reassembled (they are counted as dropped
//! fragments by the decoder), and a block is handed over when full or after
//! [`RingOptions::block_timeout_ms`]: low traffic waits at most that long.
//!
//! A packet is never split across blocks: the kernel cuts one longer than a block can carry
//! (block size minus the block and frame headers) to what fits. GRO hands the host merged
//! segments of up to 64 KiB (an IPv4 datagram's limit, 65535 bytes), so the default block
//! (128 KiB) carries any of them whole; a packet cut anyway (smaller blocks, BIG TCP's larger
//! merges) is counted as a truncated drop ([`RingCapture::truncated`], part of
//! [`Capture::dropped`]), never handed on as a cut segment.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};

use super::raw_socket::{capture_filter, FlowShare};
use super::Capture;
use crate::packet::LinkType;

/// The ring's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingOptions {
    /// Bytes per block (a power-of-two multiple of the page size).
    pub block_size: u32,
    pub block_count: u32,
    /// A block that is not full is handed over after this long (ms).
    pub block_timeout_ms: u32,
    /// Only this share of the flows (`--fanout`), or all.
    pub share: Option<FlowShare>,
}

impl Default for RingOptions {
    /// 256 blocks of 128 KiB (32 MiB: about 22000 full-sized segments or 480 maximal GRO
    /// segments, or 256 blocks handed over partly filled), handed over at least every 2 ms (a
    /// jiffy, 4 ms at HZ=250): at a low packet rate tcpcopy may stall for a second before the
    /// kernel drops. 64 blocks dropped ~300 packets of the lab's 1 MB request workload
    /// (tcpcopy_live ring tests) even on a quiet machine. A block carries a 65535-byte
    /// datagram whole ([`RingOptions::max_packet`]).
    fn default() -> Self {
        RingOptions {
            block_size: 128 << 10,
            block_count: 256,
            block_timeout_ms: 2,
            share: None,
        }
    }
}

/// `BLK_PLUS_PRIV(0)`: the block descriptor, 8-byte aligned, before a block's first packet.
const BLOCK_HEADER: u32 = 48;
/// Where a `SOCK_DGRAM` packet's network header starts in its frame: `TPACKET3_HDRLEN`
/// (the 48-byte `tpacket3_hdr`, then a `sockaddr_ll`) 16-byte aligned, plus 16 bytes
/// reserved for a link header.
const FRAME_HEADER: u32 = 96;

impl RingOptions {
    /// The longest packet (from the IP header on) a block carries whole; longer ones arrive
    /// cut and are counted as truncated drops.
    pub fn max_packet(&self) -> u32 {
        self.block_size.saturating_sub(BLOCK_HEADER + FRAME_HEADER)
    }
}

/// What to do with a frame the kernel wrote at `data` (from the block's start) with
/// `snaplen` of its `len` bytes, in a block of `block_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameCheck {
    Whole,
    /// Cut by the kernel (longer than a block carries): a drop, not a segment.
    Truncated,
    /// Pointing outside the block: never read.
    Corrupt,
}

fn check_frame(data: usize, snaplen: u32, len: u32, block_size: usize) -> FrameCheck {
    if data.saturating_add(snaplen as usize) > block_size {
        FrameCheck::Corrupt
    } else if snaplen < len {
        FrameCheck::Truncated
    } else {
        FrameCheck::Whole
    }
}

/// `TPACKET_V3` in `enum tpacket_versions`.
const TPACKET_V3: libc::c_int = 2;
/// `sll_pkttype` of a packet this host sends.
const PACKET_OUTGOING: u8 = 4;
const ETH_P_IP: u16 = 0x0800;

pub struct RingCapture {
    fd: OwnedFd,
    map: NonNull<u8>,
    map_len: usize,
    opts: RingOptions,
    /// The block being read, and where in it: the next packet's index and offset.
    block: usize,
    packet: u32,
    offset: usize,
    /// The host's own outgoing packets are skipped here (no `PACKET_IGNORE_OUTGOING`).
    skip_outgoing: bool,
    drops: u64,
    packets: u64,
    /// Packets cut by the kernel (see the module's doc), or with a corrupt offset.
    truncated: u64,
}

impl std::fmt::Debug for RingCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingCapture")
            .field("fd", &self.fd.as_raw_fd())
            .field("opts", &self.opts)
            .finish()
    }
}

fn setsockopt<T>(fd: libc::c_int, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points to a live value of the size passed; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `ldb [9]; jeq #6` in front of the port (and share) filter, or alone: only TCP passes.
fn tcp_port_filter(ports: &[u16], share: Option<FlowShare>) -> Vec<libc::sock_filter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let ports_prog = capture_filter(ports, share);
    let mut p = vec![op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 9)];
    match ports_prog {
        Some(rest) => {
            // On "not TCP" jump to the port program's `ret 0` (second to last).
            let to_drop = (rest.len() - 2) as u8;
            p.push(op(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                0,
                to_drop,
                6,
            ));
            p.extend(rest);
        }
        None => {
            p.push(op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, 6));
            p.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX));
            p.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, 0));
        }
    }
    p
}

/// Adds what failed to an error of [`RingCapture::open`].
fn ctx(what: &'static str) -> impl Fn(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("capture ring: {what}: {e}"))
}

impl RingCapture {
    /// Opens the ring (needs CAP_NET_RAW): TCP datagrams to this host whose destination port
    /// is one of `ports` (any port for an empty list or more than
    /// [`MAX_FILTER_PORTS`](super::raw_socket::MAX_FILTER_PORTS)), of `opts.share`'s flows.
    pub fn open(ports: &[u16], opts: RingOptions) -> io::Result<RingCapture> {
        let page = 4096u32;
        if opts.block_size < page
            || !opts.block_size.is_power_of_two()
            || opts.block_count == 0
            || u64::from(opts.block_size) * u64::from(opts.block_count) > 1 << 31
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("capture ring: bad shape {opts:?}"),
            ));
        }
        // Protocol 0 until everything is set up: nothing is queued before the filter is on.
        // SAFETY: plain socket(2) call.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("capture ring socket: {e}"),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = fd.as_raw_fd();
        setsockopt(s, libc::SOL_PACKET, libc::PACKET_VERSION, &TPACKET_V3)
            .map_err(ctx("TPACKET_V3"))?;
        let skip_outgoing = setsockopt(
            s,
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &1 as &libc::c_int,
        )
        .is_err();
        let program = tcp_port_filter(ports, opts.share);
        let prog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        setsockopt(s, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog).map_err(ctx("filter"))?;
        let frame_size = 2048u32;
        let req = libc::tpacket_req3 {
            tp_block_size: opts.block_size,
            tp_block_nr: opts.block_count,
            tp_frame_size: frame_size,
            tp_frame_nr: opts.block_size / frame_size * opts.block_count,
            tp_retire_blk_tov: opts.block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(s, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
            .map_err(ctx("PACKET_RX_RING"))?;
        let map_len = opts.block_size as usize * opts.block_count as usize;
        // SAFETY: maps the ring just configured on `s`; unmapped in Drop.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                s,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(ctx("mmap")(io::Error::last_os_error()));
        }
        let ring = RingCapture {
            fd,
            map: NonNull::new(map.cast()).expect("mmap returned a mapping"),
            map_len,
            opts,
            block: 0,
            packet: 0,
            offset: 0,
            skip_outgoing,
            drops: 0,
            packets: 0,
            truncated: 0,
        };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_IP.to_be();
        sll.sll_ifindex = 0;
        // SAFETY: bind with a sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                s,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(ctx("bind")(io::Error::last_os_error()));
        }
        Ok(ring)
    }

    /// Bytes mapped for the ring.
    pub fn ring_bytes(&self) -> usize {
        self.map_len
    }

    /// Packets dropped because the ring got them cut (longer than
    /// [`RingOptions::max_packet`]), included in [`Capture::dropped`].
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// Packets the kernel delivered to the ring so far (dropped ones included).
    pub fn kernel_packets(&mut self) -> u64 {
        self.read_statistics();
        self.packets
    }

    fn read_statistics(&mut self) {
        let mut st = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: getsockopt into a tpacket_stats_v3 of the size passed.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        // The kernel's counters restart at every read.
        if rc == 0 {
            self.drops += u64::from(st.tp_drops);
            self.packets += u64::from(st.tp_packets);
        }
    }

    fn block_ptr(&self, i: usize) -> *mut u8 {
        // SAFETY: i < block_count, so the offset stays within the mapping.
        unsafe { self.map.as_ptr().add(i * self.opts.block_size as usize) }
    }

    /// The status word of block `i`, shared with the kernel.
    fn block_status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: the block descriptor starts the block (8-byte aligned: blocks are page
        // aligned); its `block_status` is a u32 the kernel and we hand back and forth.
        unsafe {
            let desc = self.block_ptr(i).cast::<libc::tpacket_block_desc>();
            AtomicU32::from_ptr(std::ptr::addr_of_mut!((*desc).hdr.bh1.block_status))
        }
    }
}

impl Drop for RingCapture {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

impl Capture for RingCapture {
    fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        registry.register(
            &mut mio::unix::SourceFd(&fd),
            token,
            mio::Interest::READABLE,
        )
    }

    fn read_frames(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(LinkType, &[u8]),
    ) -> io::Result<usize> {
        let mut count = 0;
        let block_size = self.opts.block_size as usize;
        let sll_at = (std::mem::size_of::<libc::tpacket3_hdr>() + 15) & !15;
        while count < budget {
            let status = self.block_status(self.block).load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            let base = self.block_ptr(self.block);
            // SAFETY: the block is ours (TP_STATUS_USER, acquired above) until handed back.
            let (num_pkts, first) = unsafe {
                let bh = &(*base.cast::<libc::tpacket_block_desc>()).hdr.bh1;
                (bh.num_pkts, bh.offset_to_first_pkt as usize)
            };
            if self.packet == 0 {
                self.offset = first;
            }
            while self.packet < num_pkts && count < budget {
                let at = self.offset;
                if at + sll_at > block_size {
                    // A corrupt offset: abandon the block rather than read past it.
                    self.packet = num_pkts;
                    break;
                }
                // SAFETY: `at` is within the block (checked); the kernel wrote a
                // tpacket3_hdr there (4-byte aligned as the kernel lays them out).
                let h =
                    unsafe { std::ptr::read_unaligned(base.add(at).cast::<libc::tpacket3_hdr>()) };
                let data = at + usize::from(h.tp_net);
                let len = h.tp_snaplen as usize;
                self.packet += 1;
                self.offset = at + h.tp_next_offset as usize;
                count += 1;
                match check_frame(data, h.tp_snaplen, h.tp_len, block_size) {
                    FrameCheck::Whole => {}
                    FrameCheck::Corrupt => {
                        self.truncated += 1;
                        continue;
                    }
                    FrameCheck::Truncated => {
                        if self.truncated == 0 {
                            log::warn!(
                                "capture ring: a {}-byte packet arrived cut to {} bytes (blocks carry {} at most): dropped, counted in capture backend drops",
                                h.tp_len,
                                h.tp_snaplen,
                                self.opts.max_packet()
                            );
                        }
                        self.truncated += 1;
                        continue;
                    }
                }
                if self.skip_outgoing {
                    // SAFETY: the sockaddr_ll follows the header within the frame.
                    let pkttype = unsafe {
                        std::ptr::read_unaligned(base.add(at + sll_at).cast::<libc::sockaddr_ll>())
                            .sll_pkttype
                    };
                    if pkttype == PACKET_OUTGOING {
                        continue;
                    }
                }
                // SAFETY: `data..data + len` is within the block (checked above), which is
                // ours until handed back below, after the callback returned.
                let frame = unsafe { std::slice::from_raw_parts(base.add(data), len) };
                on_frame(LinkType::RawIp, frame);
            }
            if self.packet >= num_pkts {
                // Hand the block back to the kernel once every read of it is done.
                fence(Ordering::Release);
                self.block_status(self.block)
                    .store(libc::TP_STATUS_KERNEL, Ordering::Release);
                self.block = (self.block + 1) % self.opts.block_count as usize;
                self.packet = 0;
                self.offset = 0;
            }
        }
        Ok(count)
    }

    fn dropped(&mut self) -> u64 {
        self.read_statistics();
        self.drops + self.truncated
    }
}

// The mapping is owned by the capture alone.
unsafe impl Send for RingCapture {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn tcp_filter_shapes() {
        let any = tcp_port_filter(&[], None);
        assert_eq!(any.len(), 4);
        assert_eq!((any[1].jt, any[1].jf, any[1].k), (0, 1, 6));
        assert_eq!(any[2].k, u32::MAX);
        assert_eq!(any[3].k, 0);
        let two = tcp_port_filter(&[80, 81], None);
        // ldb, jeq tcp, then the 6 instructions of the port program.
        assert_eq!(two.len(), 8);
        // "Not TCP" lands on the port program's `ret 0`: index 2 + 1 + jf.
        let drop_at = 2 + usize::from(two[1].jf);
        assert_eq!(
            (two[drop_at].code, two[drop_at].k),
            ((libc::BPF_RET | libc::BPF_K) as u16, 0)
        );
        assert_eq!(two[drop_at + 1].k, u32::MAX);
    }

    #[test]
    fn cut_frames_are_not_whole() {
        let block = 128 << 10;
        assert_eq!(check_frame(144, 1500, 1500, block), FrameCheck::Whole);
        assert_eq!(check_frame(144, 65392, 65535, block), FrameCheck::Truncated);
        assert_eq!(check_frame(144, 65535, 65535, block), FrameCheck::Whole);
        assert_eq!(check_frame(block - 10, 11, 11, block), FrameCheck::Corrupt);
        assert_eq!(check_frame(usize::MAX, 1, 1, block), FrameCheck::Corrupt);
        // The default block carries a maximal IPv4 datagram (a GRO merge) whole; a 64 KiB
        // block does not.
        assert!(RingOptions::default().max_packet() >= 65535);
        let small = RingOptions {
            block_size: 64 << 10,
            ..RingOptions::default()
        };
        assert!(small.max_packet() < 65535);
        assert_eq!(
            RingOptions::default().block_size as usize
                * RingOptions::default().block_count as usize,
            32 << 20
        );
    }

    #[test]
    fn bad_shapes_are_refused() {
        for opts in [
            RingOptions {
                block_size: 1000,
                ..RingOptions::default()
            },
            RingOptions {
                block_count: 0,
                ..RingOptions::default()
            },
        ] {
            let e = RingCapture::open(&[80], opts).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
    }

    /// Needs CAP_NET_RAW: SYNs to a kept port on loopback are read from the ring (once: the
    /// outgoing copy is skipped), SYNs to another port are not.
    #[test]
    #[ignore = "needs root"]
    fn ring_reads_kept_ports_once() {
        tc_test_support::require_root("ring_reads_kept_ports_once");
        let kept = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (kept_port, other_port) = (
            kept.local_addr().unwrap().port(),
            other.local_addr().unwrap().port(),
        );
        let mut cap = RingCapture::open(&[kept_port, 9], RingOptions::default()).expect("ring");
        let _a = std::net::TcpStream::connect(("127.0.0.1", other_port)).unwrap();
        let _b = std::net::TcpStream::connect(("127.0.0.1", kept_port)).unwrap();
        let mut syns = 0;
        let mut ports = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        // The handshake's SYN and ACK to the kept port, each once.
        while Instant::now() < deadline && ports.len() < 2 {
            cap.read_frames(64, &mut |link, frame| {
                assert_eq!(link, LinkType::RawIp);
                let ihl = usize::from(frame[0] & 0x0f) * 4;
                ports.push(u16::from_be_bytes([frame[ihl + 2], frame[ihl + 3]]));
                if frame[ihl + 13] & 0x02 != 0 {
                    syns += 1;
                }
            })
            .unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        // Nothing else follows (the loopback's outgoing copies are not read).
        let settle = Instant::now() + Duration::from_millis(50);
        while Instant::now() < settle {
            cap.read_frames(64, &mut |_, frame| {
                let ihl = usize::from(frame[0] & 0x0f) * 4;
                ports.push(u16::from_be_bytes([frame[ihl + 2], frame[ihl + 3]]));
            })
            .unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(ports, vec![kept_port, kept_port], "{ports:?}");
        assert_eq!(syns, 1);
        assert_eq!(cap.dropped(), 0);
        assert!(cap.kernel_packets() >= 2);
    }

    /// Sends `bytes` on loopback to a port the ring keeps and reads the ring until they all
    /// came in, or a packet came in cut and the ring is empty, or a deadline passed:
    /// (the ring, payload bytes read whole, longest packet read).
    fn loopback_bulk(opts: RingOptions, bytes: usize) -> (RingCapture, usize, usize) {
        use std::io::{Read, Write};
        let kept = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = kept.local_addr().unwrap().port();
        let mut cap = RingCapture::open(&[port], opts).expect("ring");
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut s, _) = kept.accept().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got.len()
        });
        c.write_all(&vec![b'x'; bytes]).unwrap();
        drop(c);
        assert_eq!(reader.join().unwrap(), bytes);
        let (mut payload, mut longest) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && payload < bytes {
            let n = cap
                .read_frames(64, &mut |_, frame| {
                    let total = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
                    assert_eq!(total, frame.len(), "a cut or padded packet was handed on");
                    let ihl = usize::from(frame[0] & 0x0f) * 4;
                    let doff = usize::from(frame[ihl + 12] >> 4) * 4;
                    payload += frame.len() - ihl - doff;
                    longest = longest.max(frame.len());
                })
                .unwrap();
            if n == 0 && cap.truncated() > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (cap, payload, longest)
    }

    /// Needs CAP_NET_RAW: loopback carries segments of up to 64 KiB, as GRO hands over on a
    /// real host. The default ring reads them whole; a ring of 4 KiB blocks gets them cut and
    /// counts them as truncated drops, handing on only whole packets.
    #[test]
    #[ignore = "needs root"]
    fn long_packets_are_read_whole_or_counted_cut() {
        tc_test_support::require_root("long_packets_are_read_whole_or_counted_cut");
        let (cap, payload, longest) = loopback_bulk(RingOptions::default(), 1 << 20);
        assert_eq!(cap.truncated(), 0);
        assert_eq!(payload, 1 << 20);
        assert!(longest > 60_000, "longest packet {longest} bytes");
        let small = RingOptions {
            block_size: 4096,
            block_count: 256,
            block_timeout_ms: 2,
            share: None,
        };
        let (mut cap, _, longest) = loopback_bulk(small, 1 << 20);
        assert!(cap.truncated() > 0);
        assert!(longest <= small.max_packet() as usize, "{longest}");
        assert!(cap.dropped() >= cap.truncated());
    }
}
