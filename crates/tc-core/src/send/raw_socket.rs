//! Raw IPv4 send, the original's default (spec 6.3): `IPPROTO_RAW` with IP_HDRINCL, one
//! `sendto` per datagram to its destination address, through the host's routing and netfilter.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::Sender;

pub struct RawSocketSend {
    socket: Socket,
}

impl RawSocketSend {
    /// Opens the socket (needs CAP_NET_RAW). Sends block at most 100 ms when the socket buffer
    /// is full; the caller counts a timeout like any other send error.
    pub fn open() -> io::Result<RawSocketSend> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("raw send socket: {e}")))?;
        socket.set_header_included_v4(true)?;
        socket.set_write_timeout(Some(Duration::from_millis(100)))?;
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

impl Sender for RawSocketSend {
    fn send(&mut self, datagram: &[u8], _transfer: usize) -> io::Result<()> {
        let Some(dst) = ipv4_destination(datagram) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "datagram shorter than an IPv4 header",
            ));
        };
        let addr = SockAddr::from(SocketAddrV4::new(dst, 0));
        loop {
            match self.socket.send_to(datagram, &addr) {
                Ok(n) if n == datagram.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("raw send: {n} of {} bytes sent", datagram.len()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
