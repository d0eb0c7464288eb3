//! Raw IPv6 send for UDP replay: `AF_INET6/SOCK_RAW/IPPROTO_RAW`, which on Linux takes whole
//! IPv6 packets (header included, as IP_HDRINCL for IPv4), each sent to its destination
//! address through the host's routing. Like the IPv4 socket: non-blocking, `sendmmsg` in
//! batches, and no fragmentation by the kernel (a packet over the route's MTU fails with
//! EMSGSIZE).

use std::io;
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::raw_socket::MAX_BATCH;
use super::{Outgoing, Sender};

pub struct RawSocketSend6 {
    socket: Socket,
}

impl RawSocketSend6 {
    /// Opens the socket (needs CAP_NET_RAW), non-blocking, 4 MiB send buffer if allowed.
    pub fn open() -> io::Result<RawSocketSend6> {
        let socket = Socket::new(
            Domain::IPV6,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("raw IPv6 send socket: {e}")))?;
        socket.set_nonblocking(true)?;
        if let Err(e) = socket.set_send_buffer_size(4 << 20) {
            log::warn!("raw IPv6 send: cannot set send buffer: {e}");
        }
        Ok(RawSocketSend6 { socket })
    }
}

/// The destination address of an IPv6 packet, if it has a header.
pub fn ipv6_destination(packet: &[u8]) -> Option<Ipv6Addr> {
    if packet.first()? >> 4 != 6 {
        return None;
    }
    let d: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
    Some(Ipv6Addr::from(d))
}

impl Sender for RawSocketSend6 {
    fn send_batch(&mut self, batch: &[Outgoing<'_>]) -> io::Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        // SAFETY: all-zero is a valid value of these plain C structures.
        let mut addrs: [libc::sockaddr_in6; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let mut n = 0;
        for d in batch.iter().take(MAX_BATCH) {
            let Some(dst) = ipv6_destination(d.bytes) else {
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not an IPv6 packet",
                    ));
                }
                break;
            };
            addrs[n].sin6_family = libc::AF_INET6 as libc::sa_family_t;
            addrs[n].sin6_addr.s6_addr = dst.octets();
            iovs[n].iov_base = d.bytes.as_ptr() as *mut libc::c_void;
            iovs[n].iov_len = d.bytes.len();
            n += 1;
        }
        for i in 0..n {
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        let sent = loop {
            // SAFETY: `msgs[..n]` point into `addrs`, `iovs` and the borrowed packets, all
            // alive for the call.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ipv6::{write_udp6_datagram, Udp6Spec};
    use std::time::Duration;

    #[test]
    fn destination_of_a_packet() {
        let mut p = [0u8; 40];
        p[0] = 0x60;
        p[39] = 1;
        assert_eq!(ipv6_destination(&p), Some(Ipv6Addr::LOCALHOST));
        p[0] = 0x45;
        assert_eq!(ipv6_destination(&p), None);
        assert_eq!(ipv6_destination(&[0x60; 30]), None);
    }

    /// Needs CAP_NET_RAW and IPv6 on loopback: a packet written by tc-core arrives at a UDP
    /// socket with its payload and source port.
    #[test]
    #[ignore = "needs root"]
    fn a_written_datagram_arrives() {
        tc_test_support::require_root("a_written_datagram_arrives");
        let server = std::net::UdpSocket::bind("[::1]:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut out = [0u8; 128];
        let n = write_udp6_datagram(
            &mut out,
            &Udp6Spec {
                src: Ipv6Addr::LOCALHOST,
                dst: Ipv6Addr::LOCALHOST,
                src_port: 40123,
                dst_port: server.local_addr().unwrap().port(),
                traffic_class: 0,
                flow_label: 0,
                hop_limit: 64,
                payload: b"hello v6",
            },
        )
        .unwrap();
        let mut s = RawSocketSend6::open().expect("raw IPv6 socket");
        s.send(&out[..n], 0).expect("sent");
        let mut buf = [0u8; 64];
        let (len, from) = server.recv_from(&mut buf).expect("received");
        assert_eq!(&buf[..len], b"hello v6");
        assert_eq!(from.port(), 40123);
    }
}
