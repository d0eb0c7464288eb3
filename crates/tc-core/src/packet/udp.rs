//! IPv4/UDP datagrams: reading the headers of a captured one, writing a rewritten copy with
//! a fresh IPv4 header and UDP checksum, and cutting a datagram longer than the MTU into IPv4
//! fragments (spec 8, without the original's bug: every fragment carries the datagram's own
//! header, built before the first fragment is written).
//!
//! Nothing here allocates: the writers fill caller buffers.

use std::net::Ipv4Addr;

use super::checksum::{checksum, fold, pseudo_header_sum, sum_bytes};

pub const IPPROTO_UDP: u8 = 17;
pub const UDP_HEADER_LEN: usize = 8;
/// The header tcpcopy writes: 20 bytes, no options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Largest IPv4 datagram.
pub const MAX_IPV4_LEN: usize = u16::MAX as usize;
/// IPv4 flags: more fragments, don't fragment; the offset mask (8-byte units).
pub const IP_MF: u16 = 0x2000;
pub const IP_DF: u16 = 0x4000;
pub const IP_OFFSET_MASK: u16 = 0x1fff;

/// Why an IPv4 packet is not a usable UDP datagram (or fragment of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderError {
    /// Shorter than its headers or its total length claim.
    Truncated,
    /// Not IPv4, or a header length / total length that does not add up.
    BadIpHeader,
    /// IPv4 but another protocol.
    NotUdp,
    /// UDP length below 8 or beyond the datagram.
    BadUdpHeader,
}

/// The IPv4 header fields UDP replay needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Info {
    pub header_len: usize,
    /// The total length (bytes after it are link padding).
    pub total_len: usize,
    pub tos: u8,
    pub id: u16,
    /// The flags and fragment offset word.
    pub frag_word: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

impl Ipv4Info {
    /// Reads and checks an IPv4 header (version, header length, total length within the
    /// captured bytes). The protocol is not checked.
    pub fn parse(ip: &[u8]) -> Result<Ipv4Info, HeaderError> {
        if ip.len() < IPV4_HEADER_LEN {
            return Err(HeaderError::Truncated);
        }
        if ip[0] >> 4 != 4 {
            return Err(HeaderError::BadIpHeader);
        }
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if header_len < IPV4_HEADER_LEN || total_len < header_len {
            return Err(HeaderError::BadIpHeader);
        }
        if total_len > ip.len() {
            return Err(HeaderError::Truncated);
        }
        Ok(Ipv4Info {
            header_len,
            total_len,
            tos: ip[1],
            id: u16::from_be_bytes([ip[4], ip[5]]),
            frag_word: u16::from_be_bytes([ip[6], ip[7]]),
            ttl: ip[8],
            protocol: ip[9],
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        })
    }

    /// A fragment: more fragments follow, or it is not the first.
    pub fn is_fragment(&self) -> bool {
        self.frag_word & (IP_MF | IP_OFFSET_MASK) != 0
    }

    pub fn more_fragments(&self) -> bool {
        self.frag_word & IP_MF != 0
    }

    /// Offset of this fragment's payload in the datagram's, in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(self.frag_word & IP_OFFSET_MASK) * 8
    }

    pub fn dont_fragment(&self) -> bool {
        self.frag_word & IP_DF != 0
    }
}

/// A whole (unfragmented) IPv4/UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    pub ip: Ipv4Info,
    pub src_port: u16,
    pub dst_port: u16,
    /// The UDP payload, as long as the UDP length says (IP bytes past it are ignored).
    pub payload: &'a [u8],
}

impl<'a> UdpDatagram<'a> {
    /// Reads a whole IPv4/UDP datagram starting at its IP header (link padding after the
    /// total length allowed). Fragments are the caller's business: this reads the bytes as
    /// one datagram.
    pub fn parse(ip: &'a [u8]) -> Result<UdpDatagram<'a>, HeaderError> {
        let info = Ipv4Info::parse(ip)?;
        if info.protocol != IPPROTO_UDP {
            return Err(HeaderError::NotUdp);
        }
        let udp = &ip[info.header_len..info.total_len];
        if udp.len() < UDP_HEADER_LEN {
            return Err(HeaderError::BadUdpHeader);
        }
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if udp_len < UDP_HEADER_LEN || udp_len > udp.len() {
            return Err(HeaderError::BadUdpHeader);
        }
        Ok(UdpDatagram {
            ip: info,
            src_port: u16::from_be_bytes([udp[0], udp[1]]),
            dst_port: u16::from_be_bytes([udp[2], udp[3]]),
            payload: &udp[UDP_HEADER_LEN..udp_len],
        })
    }
}

/// What to write for one replayed datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSpec<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub payload: &'a [u8],
}

/// The UDP checksum of a datagram with these addresses and this UDP segment (header with a
/// zero checksum field, then payload); 0 is sent as 0xffff (0 means "none" in IPv4).
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let acc = pseudo_header_sum(
        src.octets(),
        dst.octets(),
        IPPROTO_UDP,
        segment.len() as u16,
    );
    match !fold(sum_bytes(segment, acc)) {
        0 => 0xffff,
        c => c,
    }
}

/// Writes an IPv4 header (20 bytes, checksum filled) into `out[..20]`.
#[allow(clippy::too_many_arguments)]
pub fn write_ipv4_header(
    out: &mut [u8],
    tos: u8,
    total_len: u16,
    id: u16,
    frag_word: u16,
    ttl: u8,
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    let h = &mut out[..IPV4_HEADER_LEN];
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag_word.to_be_bytes());
    h[8] = ttl;
    h[9] = protocol;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The buffer is too small for the datagram, or the datagram is longer than IPv4 allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

/// Writes the whole datagram of `spec` (20-byte IPv4 header, UDP header, payload, both
/// checksums valid) into `out`; returns its length.
pub fn write_udp_datagram(out: &mut [u8], spec: &UdpSpec<'_>) -> Result<usize, TooLong> {
    let udp_len = UDP_HEADER_LEN + spec.payload.len();
    let total = IPV4_HEADER_LEN + udp_len;
    if total > MAX_IPV4_LEN || total > out.len() {
        return Err(TooLong);
    }
    let udp = &mut out[IPV4_HEADER_LEN..total];
    udp[0..2].copy_from_slice(&spec.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&spec.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    udp[UDP_HEADER_LEN..].copy_from_slice(spec.payload);
    let c = udp_checksum(spec.src, spec.dst, udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    write_ipv4_header(
        out,
        spec.tos,
        total as u16,
        spec.id,
        if spec.dont_fragment { IP_DF } else { 0 },
        spec.ttl,
        IPPROTO_UDP,
        spec.src,
        spec.dst,
    );
    Ok(total)
}

/// Payload bytes per fragment for `mtu`: what is left after a 20-byte header, rounded down
/// to a multiple of 8 (fragment offsets count 8-byte units). At least 8.
pub fn fragment_payload_len(mtu: usize) -> usize {
    (mtu.saturating_sub(IPV4_HEADER_LEN) & !7).max(8)
}

/// How many fragments a datagram of `total_len` bytes (20-byte header) becomes at `mtu`.
pub fn fragment_count(total_len: usize, mtu: usize) -> usize {
    if total_len <= mtu {
        return 1;
    }
    let data = total_len.saturating_sub(IPV4_HEADER_LEN);
    data.div_ceil(fragment_payload_len(mtu))
}

/// Cuts `datagram` (written by [`write_udp_datagram`]: 20-byte header, valid checksums) into
/// fragments of at most `mtu` bytes, each with a copy of its header (offset, MF, total length
/// and header checksum set; DF cleared), handing each to `emit`. A datagram that fits is
/// handed over whole. `scratch` holds one fragment at a time (at least `mtu` bytes, or the
/// datagram's length if shorter). Returns how many pieces were emitted; `Err` (nothing
/// emitted) when `scratch` cannot hold a fragment.
pub fn fragment(
    datagram: &[u8],
    mtu: usize,
    scratch: &mut [u8],
    emit: &mut dyn FnMut(&[u8]),
) -> Result<usize, TooLong> {
    if datagram.len() <= mtu || datagram.len() < IPV4_HEADER_LEN {
        emit(datagram);
        return Ok(1);
    }
    let header = &datagram[..IPV4_HEADER_LEN];
    let data = &datagram[IPV4_HEADER_LEN..];
    let step = fragment_payload_len(mtu);
    if scratch.len() < IPV4_HEADER_LEN + step {
        return Err(TooLong);
    }
    let piece = scratch;
    let mut count = 0;
    let mut offset = 0;
    while offset < data.len() {
        let end = (offset + step).min(data.len());
        let last = end == data.len();
        let len = IPV4_HEADER_LEN + end - offset;
        piece[..IPV4_HEADER_LEN].copy_from_slice(header);
        piece[IPV4_HEADER_LEN..len].copy_from_slice(&data[offset..end]);
        let frag_word = ((offset / 8) as u16) | if last { 0 } else { IP_MF };
        let h = &mut piece[..IPV4_HEADER_LEN];
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        h[6..8].copy_from_slice(&frag_word.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        emit(&piece[..len]);
        count += 1;
        offset = end;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Ipv4HeaderSlice, UdpHeaderSlice};

    fn spec(payload: &[u8]) -> UdpSpec<'_> {
        UdpSpec {
            src: Ipv4Addr::new(203, 0, 113, 7),
            dst: Ipv4Addr::new(198, 18, 0, 30),
            src_port: 40000,
            dst_port: 53,
            tos: 0,
            ttl: 64,
            id: 0x1234,
            dont_fragment: true,
            payload,
        }
    }

    #[test]
    fn written_datagram_reads_back_with_valid_checksums() {
        let payload = b"\x12\x34hello dns";
        let mut out = [0u8; 2048];
        let n = write_udp_datagram(&mut out, &spec(payload)).unwrap();
        let d = UdpDatagram::parse(&out[..n]).unwrap();
        assert_eq!(
            (d.src_port, d.dst_port, d.payload),
            (40000, 53, &payload[..])
        );
        assert!(!d.ip.is_fragment() && d.ip.dont_fragment());
        // Checked by an independent implementation.
        let ip = Ipv4HeaderSlice::from_slice(&out[..n]).unwrap();
        assert_eq!(ip.to_header().calc_header_checksum(), ip.header_checksum());
        let udp = UdpHeaderSlice::from_slice(&out[20..n]).unwrap();
        let want = udp
            .to_header()
            .calc_checksum_ipv4_raw(ip.source(), ip.destination(), payload)
            .unwrap();
        assert_eq!(udp.checksum(), want);
    }

    #[test]
    fn bad_headers_are_told_apart() {
        let mut out = [0u8; 64];
        let n = write_udp_datagram(&mut out, &spec(b"abc")).unwrap();
        assert_eq!(
            UdpDatagram::parse(&out[..n - 1]),
            Err(HeaderError::Truncated)
        );
        let mut tcp = out;
        tcp[9] = 6;
        assert_eq!(UdpDatagram::parse(&tcp[..n]), Err(HeaderError::NotUdp));
        let mut short = out;
        short[24..26].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            UdpDatagram::parse(&short[..n]),
            Err(HeaderError::BadUdpHeader)
        );
        let mut v6 = out;
        v6[0] = 0x65;
        assert_eq!(UdpDatagram::parse(&v6[..n]), Err(HeaderError::BadIpHeader));
        // Padding after the total length is ignored.
        let d = UdpDatagram::parse(&out[..n + 10]).unwrap();
        assert_eq!(d.payload, b"abc");
    }

    #[test]
    fn fragments_cover_the_datagram_in_mtu_sized_pieces() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let mut out = vec![0u8; 4096];
        let n = write_udp_datagram(&mut out, &spec(&payload)).unwrap();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        fragment(&out[..n], 1500, &mut [0u8; 1500], &mut |p| {
            pieces.push(p.to_vec())
        })
        .unwrap();
        assert_eq!(pieces.len(), fragment_count(n, 1500));
        assert_eq!(pieces.len(), 3);
        let mut data = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            assert!(p.len() <= 1500);
            let info = Ipv4Info::parse(p).unwrap();
            assert_eq!(info.total_len, p.len());
            assert_eq!(info.frag_offset(), data.len());
            assert_eq!(info.more_fragments(), i + 1 < pieces.len());
            assert!(!info.dont_fragment());
            assert_eq!(info.id, 0x1234);
            assert_eq!(checksum(&p[..20]), 0, "header checksum of piece {i}");
            if i + 1 < pieces.len() {
                assert_eq!((p.len() - 20) % 8, 0);
            }
            data.extend_from_slice(&p[20..]);
        }
        assert_eq!(data, &out[20..n]);
        let mut whole = 0;
        fragment(&out[..n], 4096, &mut [0u8; 16], &mut |p| {
            whole += 1;
            assert_eq!(p, &out[..n]);
        })
        .unwrap();
        assert_eq!(
            fragment(&out[..n], 1500, &mut [0u8; 100], &mut |_| panic!("emitted")),
            Err(TooLong)
        );
        assert_eq!(whole, 1);
    }
}
