//! Raw IPv4 send, the original's default (spec 6.3): `IPPROTO_RAW` with IP_HDRINCL, each
//! datagram to its destination address, through the host's routing and netfilter.
//!
//! Unlike the original (which spins on EAGAIN) the socket is non-blocking: a full socket
//! buffer is reported as `WouldBlock` at once and the driver retries when the socket is
//! writable. The datagrams of a flush go out with `sendmmsg`, up to [`MAX_BATCH`] per call.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::{Outgoing, Sender};

/// Datagrams per `sendmmsg` call.
pub const MAX_BATCH: usize = 64;

pub struct RawSocketSend {
    socket: Socket,
}

impl RawSocketSend {
    /// Opens the socket (needs CAP_NET_RAW), non-blocking, with a 4 MiB send buffer when the
    /// system allows it.
    pub fn open() -> io::Result<RawSocketSend> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("raw send socket: {e}")))?;
        socket.set_header_included_v4(true)?;
        socket.set_nonblocking(true)?;
        if let Err(e) = socket.set_send_buffer_size(4 << 20) {
            log::warn!("raw send: cannot set send buffer: {e}");
        }
        Ok(RawSocketSend { socket })
    }
}

/// The destination address of an IPv4 datagram, if it has a header.
pub fn ipv4_destination(datagram: &[u8]) -> Option<Ipv4Addr> {
    let d = datagram.get(16..20)?;
    Some(Ipv4Addr::new(d[0], d[1], d[2], d[3]))
}

fn short_datagram() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "datagram shorter than an IPv4 header",
    )
}

impl Sender for RawSocketSend {
    fn send_batch(&mut self, batch: &[Outgoing<'_>]) -> io::Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        // SAFETY: all-zero is a valid value of these plain C structures.
        let mut addrs: [libc::sockaddr_in; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut n = 0;
        for d in batch.iter().take(MAX_BATCH) {
            let Some(dst) = ipv4_destination(d.bytes) else {
                if n == 0 {
                    return Err(short_datagram());
                }
                break;
            };
            addrs[n].sin_family = libc::AF_INET as libc::sa_family_t;
            addrs[n].sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
            iovs[n].iov_base = d.bytes.as_ptr() as *mut libc::c_void;
            iovs[n].iov_len = d.bytes.len();
            n += 1;
        }
        for i in 0..n {
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        let sent = loop {
            // SAFETY: `msgs[..n]` point into `addrs`, `iovs` and the borrowed datagrams, all
            // alive for the call; the kernel only reads them (and writes `msg_len`).
            let r = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    n as libc::c_uint,
                    0,
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // A raw datagram goes whole or not at all; check anyway.
        if let Some(short) = (0..sent).find(|&i| msgs[i].msg_len as usize != batch[i].bytes.len()) {
            if short == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!(
                        "raw send: {} of {} bytes sent",
                        msgs[0].msg_len,
                        batch[0].bytes.len()
                    ),
                ));
            }
            return Ok(short);
        }
        Ok(sent)
    }

    fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> io::Result<bool> {
        let fd = self.socket.as_raw_fd();
        registry.register(
            &mut mio::unix::SourceFd(&fd),
            token,
            mio::Interest::WRITABLE,
        )?;
        Ok(true)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        let fd = self.socket.as_raw_fd();
        registry.deregister(&mut mio::unix::SourceFd(&fd))
    }
}
