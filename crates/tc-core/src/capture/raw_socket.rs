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

pub struct RawSocketCapture {
    socket: Socket,
    buf: Box<[u8]>,
    zero_reads: u64,
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
            buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
            zero_reads: 0,
        })
    }

    /// Bytes of receive buffer the kernel granted.
    pub fn receive_buffer(&self) -> io::Result<usize> {
        self.socket.recv_buffer_size()
    }
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
        let mut count = 0;
        while count < budget {
            // SAFETY: recv into our own buffer of the given length on a valid fd.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
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
            count += 1;
            let n = n as usize;
            if n == 0 {
                self.zero_reads += 1;
                log::info!("recv len is 0");
                continue;
            }
            on_frame(LinkType::RawIp, &self.buf[..n]);
        }
        Ok(count)
    }
}
