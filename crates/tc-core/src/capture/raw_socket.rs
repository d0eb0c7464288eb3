//! Raw IP socket capture, the original's default (spec 6.1): `AF_INET/SOCK_RAW/IPPROTO_TCP`
//! delivers a copy of every TCP datagram the local stack accepts as inbound (defragmented,
//! IP header included). Outgoing packets, including tcpcopy's own output, are not seen.

use std::io;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::Capture;
use crate::packet::LinkType;

/// Receive buffer asked for (the original's 64 MiB).
pub const RAW_CAPTURE_RCVBUF: usize = 64 << 20;
const MAX_DATAGRAM: usize = 65536;
/// Datagrams read per `recvmmsg` call: a burst in one system call, where a `recv` per
/// datagram took one each and a last one to find the queue empty.
const BATCH: usize = 8;

pub struct RawSocketCapture {
    socket: Socket,
    /// [`BATCH`] slots of `slot_len` bytes, one per datagram of a `recvmmsg` (a page is
    /// resident only once a datagram was written to it).
    buf: Box<[u8]>,
    slot_len: usize,
    zero_reads: u64,
    /// Datagrams longer than the buffer (IPv4 BIG TCP merges above 64 KiB): dropped and
    /// counted, never handed on cut.
    truncated: u64,
}

impl RawSocketCapture {
    /// Opens a non-blocking raw TCP socket (needs CAP_NET_RAW) with a large receive buffer.
    pub fn open() -> io::Result<RawSocketCapture> {
        Self::open_protocol(libc::IPPROTO_TCP)
    }

    /// As [`open`](Self::open) for another IP protocol (UDP mode).
    pub fn open_protocol(protocol: libc::c_int) -> io::Result<RawSocketCapture> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(protocol)))
            .map_err(|e| io::Error::new(e.kind(), format!("raw capture socket: {e}")))?;
        set_receive_buffer(&socket, RAW_CAPTURE_RCVBUF);
        socket.set_nonblocking(true)?;
        Ok(RawSocketCapture {
            socket,
            buf: vec![0u8; BATCH * MAX_DATAGRAM].into_boxed_slice(),
            slot_len: MAX_DATAGRAM,
            zero_reads: 0,
            truncated: 0,
        })
    }

    /// Bytes of receive buffer the kernel granted.
    pub fn receive_buffer(&self) -> io::Result<usize> {
        self.socket.recv_buffer_size()
    }

    /// Lets the kernel drop every TCP datagram whose destination port is not one of `ports`
    /// (a classic BPF filter), so tcpcopy is not woken for traffic it would only count and
    /// drop: the control tunnels' own packets, other services of the host. The address part
    /// of a transfer is still checked by the replay machine. No filter for an empty list or
    /// more than [`MAX_FILTER_PORTS`] ports.
    pub fn keep_only_dst_ports(&self, ports: &[u16]) -> io::Result<bool> {
        self.keep_only(ports, None)
    }

    /// As [`keep_only_dst_ports`](Self::keep_only_dst_ports), and with a `share` only the
    /// datagrams of that share's flows ([`FlowShare`]); a share is always installed (without
    /// the port part when the ports cannot be).
    pub fn keep_only(&self, ports: &[u16], share: Option<FlowShare>) -> io::Result<bool> {
        let mut ports: Vec<u16> = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        let Some(program) = capture_filter(&ports, share) else {
            return Ok(false);
        };
        let prog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: setsockopt with a valid fd and a sock_fprog pointing at `program`, which
        // outlives the call (the kernel copies it).
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }
}

/// Most destination ports the kernel filter compares (jump offsets are 8 bits).
pub const MAX_FILTER_PORTS: usize = 240;

/// One of `count` disjoint shares of the captured flows (`--fanout I/N`): a flow belongs to
/// share `hash(source address, source port) % count`, so every packet a client sends on one
/// connection goes to the same share, and each connection to exactly one of the `count`
/// shares. Computed in the kernel filter ([`capture_filter`]) so several tcpcopy processes,
/// each capturing its share, replay every connection once between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowShare {
    /// 0-based, below `count`.
    pub index: u32,
    pub count: u32,
}

impl FlowShare {
    /// The multiplier of the hash (Fibonacci hashing: 2^32 / golden ratio).
    const MUL: u32 = 0x9E37_79B1;

    /// Which share the flow from `src` (address and port) belongs to: what the filter
    /// computes, `((addr ^ port) * MUL >> 16) % count` in 32-bit arithmetic.
    pub fn of(src_addr: u32, src_port: u16, count: u32) -> u32 {
        ((src_addr ^ u32::from(src_port)).wrapping_mul(Self::MUL) >> 16) % count.max(1)
    }
}

/// The kernel filter: `X = IP header length; A = TCP destination port; go on if A is one of
/// ports`, then with a share, `A = FlowShare::of(source address, source port); accept if A
/// is the share's index`. The filter sees a raw IPv4 socket's datagrams from the IP header
/// on (the UDP ports sit where TCP's do). It ends with `ret 0; ret -1` (drop, accept).
/// `None` (no filter) without a share and without ports (or more than
/// [`MAX_FILTER_PORTS`]); with a share, the port part is left out in that case.
pub(crate) fn capture_filter(
    ports: &[u16],
    share: Option<FlowShare>,
) -> Option<Vec<libc::sock_filter>> {
    let with_ports = !ports.is_empty() && ports.len() <= MAX_FILTER_PORTS;
    if !with_ports && share.is_none() {
        return None;
    }
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut share_part = Vec::new();
    if let Some(share) = share {
        share_part = vec![
            // ld [12]: the source address; st M[0]
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 12),
            op(libc::BPF_ST, 0, 0, 0),
            // ldh [x + 0]: the source port; ldx M[0]; xor x
            op(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, 0, 0, 0),
            op(libc::BPF_LDX | libc::BPF_W | libc::BPF_MEM, 0, 0, 0),
            op(libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X, 0, 0, 0),
            op(
                libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K,
                0,
                0,
                FlowShare::MUL,
            ),
            op(libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K, 0, 0, 16),
            op(
                libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
                0,
                0,
                share.count.max(1),
            ),
            // jeq #index, accept, drop
            op(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                1,
                0,
                share.index,
            ),
        ];
    }
    let mut p = Vec::with_capacity(ports.len() + share_part.len() + 4);
    // ldxb 4*([0]&0xf)
    p.push(op(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, 0, 0, 0));
    if with_ports {
        // ldh [x + 2]: the destination port
        p.push(op(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, 0, 0, 2));
        let n = ports.len();
        for (i, &port) in ports.iter().enumerate() {
            // jeq #port, next part (the share, or accept), next port; the last one's
            // "next port" is the drop.
            let to_next_part = if share.is_some() { n - 1 - i } else { n - i };
            let to_drop = if i + 1 == n { share_part.len() } else { 0 };
            p.push(op(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                to_next_part as u8,
                to_drop as u8,
                u32::from(port),
            ));
        }
    }
    p.extend(share_part);
    p.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, 0));
    p.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX));
    Some(p)
}

/// SO_RCVBUFFORCE goes past `net.core.rmem_max` when privileged; otherwise SO_RCVBUF.
fn set_receive_buffer(socket: &Socket, bytes: usize) {
    let value = bytes.min(i32::MAX as usize / 2) as libc::c_int;
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the given size.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        if let Err(e) = socket.set_recv_buffer_size(bytes) {
            log::warn!("raw capture: cannot set receive buffer to {bytes}: {e}");
        }
    }
}

impl Capture for RawSocketCapture {
    fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> io::Result<()> {
        let fd = self.socket.as_raw_fd();
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
        let slot_len = self.slot_len;
        debug_assert!(self.buf.len() >= BATCH * slot_len);
        let mut count = 0;
        while count < budget {
            let want = BATCH.min(budget - count);
            // SAFETY: all-zero iovecs and mmsghdrs are valid (null pointers, zero lengths).
            let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            let base = self.buf.as_mut_ptr();
            for (i, (iov, msg)) in iovs.iter_mut().zip(msgs.iter_mut()).enumerate() {
                // SAFETY: slot i lies within `buf` (BATCH slots of slot_len bytes).
                iov.iov_base = unsafe { base.add(i * slot_len) }.cast();
                iov.iov_len = slot_len;
                msg.msg_hdr.msg_iov = iov;
                msg.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: `want` <= BATCH message headers, each pointing at its own slot of our
            // buffer, on a valid fd. MSG_TRUNC: each datagram's real length, so a longer one
            // is known to be cut.
            let n = unsafe {
                libc::recvmmsg(
                    self.socket.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    want as libc::c_uint,
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            let n = n as usize;
            for (i, msg) in msgs.iter().enumerate().take(n) {
                count += 1;
                let len = msg.msg_len as usize;
                if len == 0 {
                    self.zero_reads += 1;
                    log::info!("recv len is 0");
                    continue;
                }
                if len > slot_len || msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    self.truncated += 1;
                    continue;
                }
                on_frame(LinkType::RawIp, &self.buf[i * slot_len..i * slot_len + len]);
            }
            if n < want {
                // recvmmsg stops at an empty queue: no need for a call that finds it so.
                break;
            }
        }
        Ok(count)
    }

    fn dropped(&mut self) -> u64 {
        self.truncated
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Needs CAP_NET_RAW: with the port filter, SYNs to a kept port are read, SYNs to another
    /// port on the same loopback are not (the kernel drops them before tcpcopy sees them).
    /// A datagram longer than the buffer (with the real 64 KiB buffer: an IPv4 BIG TCP merge)
    /// is counted as dropped, never handed on cut. Shown with a 200-byte buffer.
    #[test]
    #[ignore = "needs root"]
    fn a_datagram_longer_than_the_buffer_is_counted_not_cut() {
        tc_test_support::require_root("a_datagram_longer_than_the_buffer_is_counted_not_cut");
        let mut cap = RawSocketCapture::open().expect("raw socket");
        cap.buf = vec![0u8; BATCH * 200].into_boxed_slice();
        cap.slot_len = 200;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(cap.keep_only_dst_ports(&[port]).unwrap());
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server = listener.accept().unwrap();
        std::io::Write::write_all(&mut client, &[7u8; 1000]).unwrap();
        let mut lengths = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && cap.dropped() == 0 {
            cap.read_frames(64, &mut |_, frame| lengths.push(frame.len()))
                .unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(cap.dropped(), 1, "frames read: {lengths:?}");
        assert!(lengths.iter().all(|&n| n <= 200), "{lengths:?}");
    }

    #[test]
    #[ignore = "needs root"]
    fn port_filter_keeps_only_the_transfer_ports() {
        tc_test_support::require_root("port_filter_keeps_only_the_transfer_ports");
        let mut cap = RawSocketCapture::open().expect("raw socket");
        // Two closed ports on loopback: each connect sends a SYN (answered by a RST).
        let kept = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (kept_port, other_port) = (
            kept.local_addr().unwrap().port(),
            other.local_addr().unwrap().port(),
        );
        assert!(cap.keep_only_dst_ports(&[kept_port, 9]).unwrap());
        let _a = std::net::TcpStream::connect(("127.0.0.1", other_port)).unwrap();
        let _b = std::net::TcpStream::connect(("127.0.0.1", kept_port)).unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !seen.contains(&kept_port) {
            cap.read_frames(64, &mut |_, frame| {
                let ihl = usize::from(frame[0] & 0x0f) * 4;
                seen.push(u16::from_be_bytes([frame[ihl + 2], frame[ihl + 3]]));
            })
            .unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(seen.contains(&kept_port), "{seen:?}");
        assert!(seen.iter().all(|&p| p == kept_port), "{seen:?}");
    }

    /// Needs CAP_NET_RAW: the kernel runs the share filter as `FlowShare::of` says; two
    /// sockets with the two halves see each SYN to the kept port exactly once between them.
    #[test]
    #[ignore = "needs root"]
    fn kernel_splits_flows_between_two_shares() {
        tc_test_support::require_root("kernel_splits_flows_between_two_shares");
        let kept = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = kept.local_addr().unwrap().port();
        let mut caps: Vec<RawSocketCapture> = (0..2)
            .map(|index| {
                let c = RawSocketCapture::open().expect("raw socket");
                let share = FlowShare { index, count: 2 };
                assert!(c.keep_only(&[port], Some(share)).unwrap());
                c
            })
            .collect();
        let clients: Vec<std::net::TcpStream> = (0..20)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let expected: Vec<Vec<u16>> = (0..2u32)
            .map(|index| {
                let mut ports: Vec<u16> = clients
                    .iter()
                    .map(|c| c.local_addr().unwrap().port())
                    .filter(|&p| FlowShare::of(0x7f00_0001, p, 2) == index)
                    .collect();
                ports.sort_unstable();
                ports
            })
            .collect();
        assert!(expected.iter().all(|e| !e.is_empty()), "{expected:?}");
        let mut syns: Vec<Vec<u16>> = vec![Vec::new(), Vec::new()];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && syns != expected {
            for (i, cap) in caps.iter_mut().enumerate() {
                cap.read_frames(64, &mut |_, frame| {
                    let ihl = usize::from(frame[0] & 0x0f) * 4;
                    if frame[ihl + 13] & 0x02 != 0 {
                        syns[i].push(u16::from_be_bytes([frame[ihl], frame[ihl + 1]]));
                    }
                })
                .unwrap();
                syns[i].sort_unstable();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(syns, expected);
    }

    #[test]
    fn filter_program_shape() {
        assert!(capture_filter(&[], None).is_none());
        let p = capture_filter(&[80, 81], None).unwrap();
        assert_eq!(p.len(), 6);
        // The first comparison jumps over the second and the drop to the accept.
        assert_eq!((p[2].jt, p[2].k), (2, 80));
        assert_eq!((p[3].jt, p[3].k), (1, 81));
        assert_eq!(p[4].k, 0);
        assert_eq!(p[5].k, u32::MAX);
        let many: Vec<u16> = (1..=MAX_FILTER_PORTS as u16 + 1).collect();
        assert!(capture_filter(&many, None).is_none());
        // A share is installed even when the ports cannot be.
        let share = Some(FlowShare { index: 0, count: 2 });
        assert!(capture_filter(&many, share).is_some());
        assert!(capture_filter(&[], share).is_some());
    }

    /// Runs the classic BPF instructions `capture_filter` emits over `packet` (the kernel's
    /// semantics for them; out-of-bounds loads drop).
    fn run(prog: &[libc::sock_filter], packet: &[u8]) -> bool {
        let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
        let load = |at: usize, size: usize| -> Option<u32> {
            let b = packet.get(at..at + size)?;
            Some(b.iter().fold(0u32, |v, &byte| v << 8 | u32::from(byte)))
        };
        let mut pc = 0;
        for _ in 0..prog.len() {
            let i = prog[pc];
            let code = u32::from(i.code);
            pc += 1;
            match code {
                c if c == libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH => {
                    x = 4 * (u32::from(packet[i.k as usize]) & 0xf)
                }
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_IND => {
                    let Some(v) = load((x + i.k) as usize, 2) else {
                        return false;
                    };
                    a = v;
                }
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let Some(v) = load(i.k as usize, 4) else {
                        return false;
                    };
                    a = v;
                }
                c if c == libc::BPF_ST => mem[i.k as usize] = a,
                c if c == libc::BPF_LDX | libc::BPF_W | libc::BPF_MEM => x = mem[i.k as usize],
                c if c == libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X => a ^= x,
                c if c == libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K => a = a.wrapping_mul(i.k),
                c if c == libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K => a >>= i.k,
                c if c == libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K => a %= i.k,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf });
                }
                c if c == libc::BPF_RET | libc::BPF_K => return i.k != 0,
                other => panic!("instruction {other:#x} not expected"),
            }
        }
        panic!("the program ran off its end");
    }

    fn tcp_packet(src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&[198, 18, 0, 10]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    /// Every flow to a kept port goes to exactly one of the shares (the one
    /// `FlowShare::of` names), the shares are about even, other ports go to none.
    #[test]
    fn shares_split_the_flows_exactly_once() {
        for count in [1u32, 2, 3, 5] {
            let progs: Vec<_> = (0..count)
                .map(|index| capture_filter(&[80, 8080], Some(FlowShare { index, count })).unwrap())
                .collect();
            let mut per_share = vec![0usize; count as usize];
            for c in 0..40u8 {
                for sport in (32768u16..33768).step_by(7) {
                    let src = [203, 0, 113, c];
                    let pkt = tcp_packet(src, sport, 80);
                    let takers: Vec<u32> = (0..count)
                        .filter(|&i| run(&progs[i as usize], &pkt))
                        .collect();
                    let owner = FlowShare::of(u32::from_be_bytes(src), sport, count);
                    assert_eq!(takers, vec![owner], "{src:?}:{sport}");
                    per_share[owner as usize] += 1;
                    let other = tcp_packet(src, sport, 81);
                    assert!(progs.iter().all(|p| !run(p, &other)));
                }
            }
            let total: usize = per_share.iter().sum();
            for n in &per_share {
                // Within 10% of an even split.
                let even = total / count as usize;
                assert!(n.abs_diff(even) * 10 < even, "{per_share:?}");
            }
        }
        // Without ports, the share alone decides; with an IP header longer than 20 bytes
        // the port is read after the options.
        let prog = capture_filter(&[], Some(FlowShare { index: 1, count: 2 })).unwrap();
        let mut pkt = tcp_packet([203, 0, 113, 7], 40000, 9);
        let owner = FlowShare::of(u32::from_be_bytes([203, 0, 113, 7]), 40000, 2);
        assert_eq!(run(&prog, &pkt), owner == 1);
        pkt.splice(20..20, [1u8; 4]);
        pkt[0] = 0x46;
        assert_eq!(run(&prog, &pkt), owner == 1);
        // Without a share, the ports alone decide.
        let prog = capture_filter(&[80], None).unwrap();
        assert!(run(&prog, &tcp_packet([203, 0, 113, 7], 40000, 80)));
        assert!(!run(&prog, &tcp_packet([203, 0, 113, 7], 40000, 81)));
    }
}
