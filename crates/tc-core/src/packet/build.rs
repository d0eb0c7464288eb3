//! Building synthetic segments (faked SYN, ACK, RST, ...) into a caller-provided buffer.

use std::net::{IpAddr, Ipv6Addr};

use super::ipv6::IPV6_HEADER_LEN;

use super::tcp::{Completeness, TcpPacket, IPPROTO_TCP, IPV4_MIN_HEADER, TCP_MIN_HEADER};

/// Everything that describes a synthesized TCP segment: IPv4 (IHL 5, DF, TTL 64, TOS 0) when
/// `src` is an IPv4 address, else IPv6 (a plain 40-byte header, traffic class and flow label
/// 0, hop limit 64; an IPv4 `dst` is then written IPv4-mapped). `ip_id` is not used by IPv6.
#[derive(Debug, Clone, Copy)]
pub struct SegmentSpec<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub ip_id: u16,
    /// MSS option (kind 2, length 4).
    pub mss: Option<u16>,
    /// Timestamp block: NOP, NOP, kind 8 length 10, (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
    pub payload: &'a [u8],
}

/// The buffer is too small for the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer of {have} bytes cannot hold a {need}-byte segment")]
pub struct BufferTooSmall {
    pub need: usize,
    pub have: usize,
}

/// The TCP header length `spec` needs (with its options).
pub fn tcp_header_len(spec: &SegmentSpec) -> usize {
    TCP_MIN_HEADER
        + if spec.mss.is_some() { 4 } else { 0 }
        + if spec.timestamps.is_some() { 12 } else { 0 }
}

/// Writes the segment into `buf`, checksums computed; returns its length.
pub fn build_segment(spec: &SegmentSpec, buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
    let tcp_len = tcp_header_len(spec);
    let ip_len = match spec.src {
        IpAddr::V4(_) => IPV4_MIN_HEADER,
        IpAddr::V6(_) => IPV6_HEADER_LEN,
    };
    let total = ip_len + tcp_len + spec.payload.len();
    if total > buf.len() || total > usize::from(u16::MAX) {
        return Err(BufferTooSmall {
            need: total,
            have: buf.len(),
        });
    }
    let b = &mut buf[..total];
    match spec.src {
        IpAddr::V4(src) => {
            let dst = match spec.dst {
                IpAddr::V4(d) => d,
                IpAddr::V6(d) => d
                    .to_ipv4_mapped()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            };
            b[0] = 0x45;
            b[1] = 0;
            b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            b[4..6].copy_from_slice(&spec.ip_id.to_be_bytes());
            b[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
            b[8] = 64;
            b[9] = IPPROTO_TCP;
            b[10..12].fill(0);
            b[12..16].copy_from_slice(&src.octets());
            b[16..20].copy_from_slice(&dst.octets());
        }
        IpAddr::V6(src) => {
            let dst: Ipv6Addr = match spec.dst {
                IpAddr::V6(d) => d,
                IpAddr::V4(d) => d.to_ipv6_mapped(),
            };
            b[..4].copy_from_slice(&[0x60, 0, 0, 0]);
            b[4..6].copy_from_slice(&((total - IPV6_HEADER_LEN) as u16).to_be_bytes());
            b[6] = IPPROTO_TCP;
            b[7] = 64;
            b[8..24].copy_from_slice(&src.octets());
            b[24..40].copy_from_slice(&dst.octets());
        }
    }
    let t = &mut b[ip_len..];
    t[0..2].copy_from_slice(&spec.src_port.to_be_bytes());
    t[2..4].copy_from_slice(&spec.dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&spec.seq.to_be_bytes());
    t[8..12].copy_from_slice(&spec.ack.to_be_bytes());
    t[12] = ((tcp_len / 4) as u8) << 4;
    t[13] = spec.flags;
    t[14..16].copy_from_slice(&spec.window.to_be_bytes());
    t[16..20].fill(0);
    let mut at = TCP_MIN_HEADER;
    if let Some(mss) = spec.mss {
        t[at..at + 2].copy_from_slice(&[2, 4]);
        t[at + 2..at + 4].copy_from_slice(&mss.to_be_bytes());
        at += 4;
    }
    if let Some((val, ecr)) = spec.timestamps {
        t[at..at + 4].copy_from_slice(&[1, 1, 8, 10]);
        t[at + 4..at + 8].copy_from_slice(&val.to_be_bytes());
        t[at + 8..at + 12].copy_from_slice(&ecr.to_be_bytes());
        at += 12;
    }
    t[at..at + spec.payload.len()].copy_from_slice(spec.payload);
    let mut pkt = match TcpPacket::parse(&mut b[..], Completeness::Whole) {
        Ok(p) => p,
        // Cannot happen: the headers were just written consistently.
        Err(_) => unreachable!("freshly built segment must parse"),
    };
    pkt.fill_checksums();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tcp::flags;
    use std::net::Ipv4Addr;

    #[test]
    fn faked_syn_layout() {
        let mut buf = [0u8; 64];
        let spec = SegmentSpec {
            src: Ipv4Addr::new(203, 0, 113, 1).into(),
            dst: Ipv4Addr::new(198, 18, 0, 30).into(),
            src_port: 5555,
            dst_port: 8080,
            seq: 99,
            ack: 0,
            flags: flags::SYN,
            window: 65535,
            ip_id: 1,
            mss: Some(1460),
            timestamps: None,
            payload: &[],
        };
        let n = build_segment(&spec, &mut buf).unwrap();
        assert_eq!(n, 44);
        let p = TcpPacket::parse(&buf[..n], Completeness::Whole).unwrap();
        assert_eq!(p.tcp_header_len(), 24);
        assert_eq!(p.options().mss, Some(1460));
        assert!(p.syn() && !p.ack_flag());
        assert!(p.checksums_valid());
        assert_eq!(p.seq_len(), 1);
    }

    #[test]
    fn too_small_buffer_is_an_error() {
        let mut buf = [0u8; 30];
        let spec = SegmentSpec {
            src: Ipv4Addr::LOCALHOST.into(),
            dst: Ipv4Addr::LOCALHOST.into(),
            src_port: 1,
            dst_port: 2,
            seq: 0,
            ack: 0,
            flags: flags::RST,
            window: 0,
            ip_id: 0,
            mss: None,
            timestamps: None,
            payload: &[],
        };
        assert_eq!(
            build_segment(&spec, &mut buf),
            Err(BufferTooSmall { need: 40, have: 30 })
        );
    }
}
