//! Datalink send (spec 6.4): each datagram is framed in Ethernet (the transfer's next-hop MAC,
//! the output interface's MAC, EtherType 0x0800) and injected with libpcap on one device,
//! bypassing the host's routing, netfilter and conntrack.

use std::io;

use super::{Outgoing, Sender};

const ETHER_HEADER: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
/// Transient "no buffer space" errors are retried this many times (the original: 1024).
const RETRIES: usize = 64;

pub struct PcapInject {
    handle: pcap::Capture<pcap::Active>,
    /// (source MAC, destination MAC) per transfer index.
    macs: Vec<([u8; 6], [u8; 6])>,
    frame: Box<[u8]>,
}

impl PcapInject {
    /// Opens `device` for sending; `macs[i]` are the MACs of transfer `i`.
    pub fn open(device: &str, mtu: u16, macs: Vec<([u8; 6], [u8; 6])>) -> io::Result<PcapInject> {
        let to_io = |e: pcap::Error| io::Error::other(format!("pcap open {device}, failed: {e}"));
        let handle = pcap::Capture::from_device(device)
            .map_err(to_io)?
            .snaplen(i32::from(mtu) + ETHER_HEADER as i32)
            .promisc(false)
            .timeout(1)
            .open()
            .map_err(to_io)?;
        Ok(PcapInject {
            handle,
            macs,
            frame: vec![0u8; ETHER_HEADER + 65536].into_boxed_slice(),
        })
    }
}

/// Writes the Ethernet header for `datagram` into `frame` and returns the frame length.
/// The EtherType follows the datagram's version: IPv6 (UDP replay) or IPv4.
pub fn frame_ipv4(frame: &mut [u8], src: [u8; 6], dst: [u8; 6], datagram: &[u8]) -> Option<usize> {
    let len = ETHER_HEADER + datagram.len();
    let out = frame.get_mut(..len)?;
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    if datagram.first().is_some_and(|v| v >> 4 == 6) {
        out[12..14].copy_from_slice(&ETHERTYPE_IPV6);
    } else {
        out[12..14].copy_from_slice(&ETHERTYPE_IPV4);
    }
    out[ETHER_HEADER..].copy_from_slice(datagram);
    Some(len)
}

impl Sender for PcapInject {
    /// One `pcap_inject` per datagram (libpcap has no batch send); stops at the first error.
    fn send_batch(&mut self, batch: &[Outgoing<'_>]) -> io::Result<usize> {
        for (i, d) in batch.iter().enumerate() {
            if let Err(e) = self.send_one(d.bytes, d.transfer) {
                return if i == 0 { Err(e) } else { Ok(i) };
            }
        }
        Ok(batch.len())
    }
}

impl PcapInject {
    fn send_one(&mut self, datagram: &[u8], transfer: usize) -> io::Result<()> {
        let Some(&(src, dst)) = self.macs.get(transfer) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no MACs for transfer {transfer}"),
            ));
        };
        let Some(len) = frame_ipv4(&mut self.frame, src, dst, datagram) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("datagram of {} bytes too long to frame", datagram.len()),
            ));
        };
        let mut last = None;
        for _ in 0..RETRIES {
            match self.handle.sendpacket(&self.frame[..len]) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let text = e.to_string();
                    let transient = text.contains("No buffer space")
                        || text.contains("Resource temporarily unavailable");
                    last = Some(text);
                    if !transient {
                        break;
                    }
                }
            }
        }
        Err(io::Error::other(format!(
            "pcap inject: {}",
            last.unwrap_or_default()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let mut frame = [0u8; 64];
        let datagram = [0x45u8, 0, 0, 20];
        let n = frame_ipv4(
            &mut frame,
            [1, 2, 3, 4, 5, 6],
            [7, 8, 9, 10, 11, 12],
            &datagram,
        );
        assert_eq!(n, Some(18));
        assert_eq!(&frame[0..6], &[7, 8, 9, 10, 11, 12]);
        assert_eq!(&frame[6..12], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(&frame[14..18], &datagram);
        assert_eq!(
            frame_ipv4(&mut frame[..10], [0; 6], [0; 6], &datagram),
            None
        );
        frame_ipv4(&mut frame, [0; 6], [0; 6], &[0x60, 0, 0, 0]).unwrap();
        assert_eq!(&frame[12..14], &[0x86, 0xdd]);
    }
}
