//! IPv6 packets: reading the fixed header and walking the extension headers to the upper
//! layer (RFC 8200 section 4), the UDP checksum over the IPv6 pseudo-header (section 8.1),
//! and writing a UDP datagram with a plain 40-byte header.
//!
//! Fragments (a Fragment header) are reported, not reassembled: callers count and drop them
//! with [`V6Error::Fragment`]. ESP hides what follows, so it is [`V6Error::Unreadable`];
//! Jumbograms (payload length 0) are not read. Nothing here allocates.

use std::net::Ipv6Addr;

use super::checksum::{fold, sum_bytes};
use super::udp::{IPPROTO_UDP, UDP_HEADER_LEN};

pub const IPV6_HEADER_LEN: usize = 40;
/// Extension headers: hop-by-hop options, routing, fragment, ESP, AH, no next header,
/// destination options, mobility.
pub const NH_HOP_BY_HOP: u8 = 0;
pub const NH_ROUTING: u8 = 43;
pub const NH_FRAGMENT: u8 = 44;
pub const NH_ESP: u8 = 50;
pub const NH_AUTH: u8 = 51;
pub const NH_NONE: u8 = 59;
pub const NH_DEST_OPTS: u8 = 60;
pub const NH_MOBILITY: u8 = 135;
/// Extension headers walked at most (a chain longer than this is refused).
pub const MAX_EXTENSION_HEADERS: usize = 16;

/// Why an IPv6 packet cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum V6Error {
    /// Shorter than its headers or payload length claim.
    Truncated,
    /// Not version 6, a jumbogram, or an extension header chain that does not add up.
    BadHeader,
    /// A fragment (RFC 8200 section 4.5): not reassembled.
    Fragment,
    /// ESP, "no next header", or an extension chain too long: the upper layer is not readable.
    Unreadable,
    /// Readable, but not UDP.
    NotUdp,
    /// UDP length below 8 or beyond the payload.
    BadUdpHeader,
}

/// The IPv6 header fields, and where the upper layer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Info {
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The upper-layer protocol after the extension headers.
    pub protocol: u8,
    /// Offset of the upper-layer header.
    pub upper_offset: usize,
    /// End of the packet (40 + payload length; link padding after it is ignored).
    pub end: usize,
    /// Extension headers skipped.
    pub extensions: usize,
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

/// Where the walk over the extension headers stopped: at the upper layer, or at a Fragment
/// header.
struct Walked {
    next: u8,
    at: usize,
    /// Offset of the byte that holds `next` (6 in the fixed header, else the first byte of
    /// the last extension header walked).
    next_at: usize,
    end: usize,
    extensions: usize,
}

/// Checks the fixed header and walks the extension headers (hop-by-hop, routing,
/// destination options, AH, mobility) up to the upper layer or a Fragment header.
fn walk(ip: &[u8]) -> Result<Walked, V6Error> {
    if ip.len() < IPV6_HEADER_LEN {
        return Err(V6Error::Truncated);
    }
    if ip[0] >> 4 != 6 {
        return Err(V6Error::BadHeader);
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if payload_len == 0 {
        return Err(V6Error::BadHeader);
    }
    let end = IPV6_HEADER_LEN + payload_len;
    if end > ip.len() {
        return Err(V6Error::Truncated);
    }
    let mut next = ip[6];
    let mut next_at = 6;
    let mut at = IPV6_HEADER_LEN;
    let mut extensions = 0;
    loop {
        let len = match next {
            NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS | NH_MOBILITY => {
                let h = ip.get(at..at + 2).ok_or(V6Error::Truncated)?;
                (usize::from(h[1]) + 1) * 8
            }
            NH_AUTH => {
                let h = ip.get(at..at + 2).ok_or(V6Error::Truncated)?;
                (usize::from(h[1]) + 2) * 4
            }
            NH_ESP | NH_NONE => return Err(V6Error::Unreadable),
            _ => break,
        };
        // Hop-by-hop options are only allowed first.
        if next == NH_HOP_BY_HOP && extensions > 0 {
            return Err(V6Error::BadHeader);
        }
        if at + len > end {
            return Err(V6Error::Truncated);
        }
        extensions += 1;
        if extensions > MAX_EXTENSION_HEADERS {
            return Err(V6Error::Unreadable);
        }
        next = ip[at];
        next_at = at;
        at += len;
    }
    Ok(Walked {
        next,
        at,
        next_at,
        end,
        extensions,
    })
}

impl Ipv6Info {
    /// Reads the fixed header and skips the extension headers (hop-by-hop, routing,
    /// destination options, AH, mobility); a Fragment header is [`V6Error::Fragment`].
    pub fn parse(ip: &[u8]) -> Result<Ipv6Info, V6Error> {
        let w = walk(ip)?;
        if w.next == NH_FRAGMENT {
            return Err(V6Error::Fragment);
        }
        let word = u32::from_be_bytes([ip[0], ip[1], ip[2], ip[3]]);
        Ok(Ipv6Info {
            traffic_class: (word >> 20) as u8,
            flow_label: word & 0x000f_ffff,
            hop_limit: ip[7],
            src: addr(&ip[8..24]),
            dst: addr(&ip[24..40]),
            protocol: w.next,
            upper_offset: w.at,
            end: w.end,
            extensions: w.extensions,
        })
    }
}

/// An IPv6 fragment (RFC 8200 section 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frag6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub id: u32,
    /// The header after the Fragment header (of the first fragment: the upper layer).
    pub next_header: u8,
    /// Offset of this fragment's data in the fragmentable part, in bytes.
    pub offset: usize,
    pub more: bool,
    /// Length of the unfragmentable part (fixed header and the extension headers before the
    /// Fragment header).
    pub unfragmentable: usize,
    /// Offset (in the unfragmentable part) of the byte naming the Fragment header, which
    /// names `next_header` once the datagram is reassembled.
    pub next_at: usize,
    /// Where this fragment's data is in the packet.
    pub data_start: usize,
    pub data_end: usize,
}

impl Frag6 {
    /// Reads the fragment `ip`; `Ok(None)` when it is no fragment.
    pub fn parse(ip: &[u8]) -> Result<Option<Frag6>, V6Error> {
        let w = walk(ip)?;
        if w.next != NH_FRAGMENT {
            return Ok(None);
        }
        let f = ip.get(w.at..w.at + 8).ok_or(V6Error::Truncated)?;
        if w.at + 8 > w.end {
            return Err(V6Error::Truncated);
        }
        let word = u16::from_be_bytes([f[2], f[3]]);
        Ok(Some(Frag6 {
            src: addr(&ip[8..24]),
            dst: addr(&ip[24..40]),
            id: u32::from_be_bytes([f[4], f[5], f[6], f[7]]),
            next_header: f[0],
            offset: usize::from(word & !7),
            more: word & 1 == 1,
            unfragmentable: w.at,
            next_at: w.next_at,
            data_start: w.at + 8,
            data_end: w.end,
        }))
    }
}

/// A whole IPv6/UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp6Datagram<'a> {
    pub ip: Ipv6Info,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

impl<'a> Udp6Datagram<'a> {
    pub fn parse(ip: &'a [u8]) -> Result<Udp6Datagram<'a>, V6Error> {
        let info = Ipv6Info::parse(ip)?;
        if info.protocol != IPPROTO_UDP {
            return Err(V6Error::NotUdp);
        }
        let udp = &ip[info.upper_offset..info.end];
        if udp.len() < UDP_HEADER_LEN {
            return Err(V6Error::BadUdpHeader);
        }
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if udp_len < UDP_HEADER_LEN || udp_len > udp.len() {
            return Err(V6Error::BadUdpHeader);
        }
        Ok(Udp6Datagram {
            ip: info,
            src_port: u16::from_be_bytes([udp[0], udp[1]]),
            dst_port: u16::from_be_bytes([udp[2], udp[3]]),
            payload: &udp[UDP_HEADER_LEN..udp_len],
        })
    }
}

/// Sum of the IPv6 pseudo-header (RFC 8200 8.1): addresses, upper-layer length (32 bits),
/// next header.
pub fn pseudo_header_sum6(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, len: u32) -> u64 {
    let acc = sum_bytes(&src.octets(), 0);
    let acc = sum_bytes(&dst.octets(), acc);
    acc + u64::from(len >> 16) + u64::from(len & 0xffff) + u64::from(protocol)
}

/// The UDP checksum over the IPv6 pseudo-header of `segment` (its checksum field zero).
/// Mandatory in IPv6; a computed 0 is sent as 0xffff.
pub fn udp6_checksum(src: Ipv6Addr, dst: Ipv6Addr, segment: &[u8]) -> u16 {
    let acc = pseudo_header_sum6(src, dst, IPPROTO_UDP, segment.len() as u32);
    match !fold(sum_bytes(segment, acc)) {
        0 => 0xffff,
        c => c,
    }
}

/// What to write for one replayed IPv6 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp6Spec<'a> {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    pub payload: &'a [u8],
}

/// Writes the datagram of `spec` (40-byte header, no extension headers, UDP checksum valid)
/// into `out`; its length, or `None` when it does not fit `out` or a 16-bit payload length.
pub fn write_udp6_datagram(out: &mut [u8], spec: &Udp6Spec<'_>) -> Option<usize> {
    let udp_len = UDP_HEADER_LEN + spec.payload.len();
    let total = IPV6_HEADER_LEN + udp_len;
    if udp_len > usize::from(u16::MAX) || total > out.len() {
        return None;
    }
    let word = 6u32 << 28 | u32::from(spec.traffic_class) << 20 | (spec.flow_label & 0x000f_ffff);
    let h = &mut out[..IPV6_HEADER_LEN];
    h[0..4].copy_from_slice(&word.to_be_bytes());
    h[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    h[6] = IPPROTO_UDP;
    h[7] = spec.hop_limit;
    h[8..24].copy_from_slice(&spec.src.octets());
    h[24..40].copy_from_slice(&spec.dst.octets());
    let udp = &mut out[IPV6_HEADER_LEN..total];
    udp[0..2].copy_from_slice(&spec.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&spec.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    udp[UDP_HEADER_LEN..].copy_from_slice(spec.payload);
    let c = udp6_checksum(spec.src, spec.dst, udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// Cuts `packet` (written by [`write_udp6_datagram`]: a 40-byte header, no extension
/// headers) into IPv6 fragments of at most `mtu` bytes (RFC 8200 section 4.5): each is the
/// header (payload length set, next header 44) and a Fragment header (offset, M flag,
/// `id`) followed by the next slice of the UDP datagram (a multiple of 8 bytes but for the
/// last). A packet that fits is handed over whole. `scratch` holds one fragment (at least
/// `mtu` bytes). Returns how many were emitted; `None` (nothing emitted) when `mtu` leaves
/// no room for 8 bytes of data or `scratch` is too small.
pub fn fragment6(
    packet: &[u8],
    mtu: usize,
    id: u32,
    scratch: &mut [u8],
    emit: &mut dyn FnMut(&[u8]),
) -> Option<usize> {
    if packet.len() <= mtu {
        emit(packet);
        return Some(1);
    }
    let step = mtu.checked_sub(IPV6_HEADER_LEN + 8)? & !7;
    if step == 0 || scratch.len() < IPV6_HEADER_LEN + 8 + step || packet.len() < IPV6_HEADER_LEN {
        return None;
    }
    let next = packet[6];
    let data = &packet[IPV6_HEADER_LEN..];
    let mut offset = 0;
    let mut count = 0;
    while offset < data.len() {
        let end = (offset + step).min(data.len());
        let more = end < data.len();
        let len = IPV6_HEADER_LEN + 8 + end - offset;
        scratch[..IPV6_HEADER_LEN].copy_from_slice(&packet[..IPV6_HEADER_LEN]);
        scratch[4..6].copy_from_slice(&((len - IPV6_HEADER_LEN) as u16).to_be_bytes());
        scratch[6] = NH_FRAGMENT;
        let f = &mut scratch[IPV6_HEADER_LEN..IPV6_HEADER_LEN + 8];
        f[0] = next;
        f[1] = 0;
        f[2..4].copy_from_slice(&((offset as u16) | u16::from(more)).to_be_bytes());
        f[4..8].copy_from_slice(&id.to_be_bytes());
        scratch[IPV6_HEADER_LEN + 8..len].copy_from_slice(&data[offset..end]);
        emit(&scratch[..len]);
        count += 1;
        offset = end;
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Ipv6HeaderSlice, UdpHeaderSlice};

    fn spec(payload: &[u8]) -> Udp6Spec<'_> {
        Udp6Spec {
            src: "2001:db8:ffff::7".parse().unwrap(),
            dst: "2001:db8::30".parse().unwrap(),
            src_port: 40000,
            dst_port: 53,
            traffic_class: 0x28,
            flow_label: 0x12345,
            hop_limit: 63,
            payload,
        }
    }

    #[test]
    fn written_datagram_reads_back_and_checks_independently() {
        let payload = b"dns query bytes";
        let mut out = [0u8; 256];
        let n = write_udp6_datagram(&mut out, &spec(payload)).unwrap();
        let d = Udp6Datagram::parse(&out[..n]).unwrap();
        assert_eq!(
            (d.src_port, d.dst_port, d.payload),
            (40000, 53, &payload[..])
        );
        assert_eq!(
            (d.ip.traffic_class, d.ip.flow_label, d.ip.hop_limit),
            (0x28, 0x12345, 63)
        );
        let ip = Ipv6HeaderSlice::from_slice(&out[..n]).unwrap();
        let udp = UdpHeaderSlice::from_slice(&out[40..n]).unwrap();
        let want = udp
            .to_header()
            .calc_checksum_ipv6_raw(ip.source(), ip.destination(), payload)
            .unwrap();
        assert_eq!(udp.checksum(), want);
    }

    /// Inserts extension headers (each `(type, bytes)`) between the fixed header and UDP.
    fn with_extensions(base: &[u8], ext: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = base[..40].to_vec();
        let mut chain: Vec<u8> = Vec::new();
        let mut first = None;
        for (i, (ty, body)) in ext.iter().enumerate() {
            first.get_or_insert(*ty);
            let next = ext.get(i + 1).map_or(IPPROTO_UDP, |e| e.0);
            let mut h = body.clone();
            h[0] = next;
            chain.extend_from_slice(&h);
        }
        if let Some(f) = first {
            out[6] = f;
        }
        out.extend_from_slice(&chain);
        out.extend_from_slice(&base[40..]);
        let plen = (out.len() - 40) as u16;
        out[4..6].copy_from_slice(&plen.to_be_bytes());
        out
    }

    #[test]
    fn extension_headers_are_skipped_and_fragments_reported() {
        let mut out = [0u8; 256];
        let n = write_udp6_datagram(&mut out, &spec(b"abc")).unwrap();
        let base = &out[..n];
        // Hop-by-hop (8 bytes: len 0), destination options (16: len 1), AH (12: len 1).
        let hbh = vec![0, 0, 1, 4, 0, 0, 0, 0];
        let dst = vec![0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let ah = vec![0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
        let p = with_extensions(
            base,
            &[
                (NH_HOP_BY_HOP, hbh.clone()),
                (NH_DEST_OPTS, dst),
                (NH_AUTH, ah),
            ],
        );
        let d = Udp6Datagram::parse(&p).unwrap();
        assert_eq!((d.ip.extensions, d.ip.upper_offset), (3, 40 + 8 + 16 + 12));
        assert_eq!(d.payload, b"abc");
        let frag = vec![0, 0, 0, 1, 0, 0, 0, 9];
        let p = with_extensions(base, &[(NH_HOP_BY_HOP, hbh.clone()), (NH_FRAGMENT, frag)]);
        assert_eq!(Udp6Datagram::parse(&p), Err(V6Error::Fragment));
        // Hop-by-hop after another header; ESP; a header running past the end.
        let p = with_extensions(
            base,
            &[(NH_DEST_OPTS, hbh.clone()), (NH_HOP_BY_HOP, hbh.clone())],
        );
        assert_eq!(Udp6Datagram::parse(&p), Err(V6Error::BadHeader));
        let p = with_extensions(base, &[(NH_ESP, vec![0; 8])]);
        assert_eq!(Udp6Datagram::parse(&p), Err(V6Error::Unreadable));
        let mut long = with_extensions(base, &[(NH_DEST_OPTS, hbh)]);
        long[41] = 200;
        assert_eq!(Udp6Datagram::parse(&long), Err(V6Error::Truncated));
        assert_eq!(Udp6Datagram::parse(&base[..n - 1]), Err(V6Error::Truncated));
        let mut v4 = base.to_vec();
        v4[0] = 0x45;
        assert_eq!(Udp6Datagram::parse(&v4), Err(V6Error::BadHeader));
        let mut tcp = base.to_vec();
        tcp[6] = 6;
        assert_eq!(Udp6Datagram::parse(&tcp), Err(V6Error::NotUdp));
    }

    #[test]
    fn fragments_cover_the_datagram() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
        let mut out = vec![0u8; 4096];
        let n = write_udp6_datagram(&mut out, &spec(&payload)).unwrap();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        let count = fragment6(&out[..n], 1280, 0xdead_beef, &mut [0u8; 1280], &mut |p| {
            pieces.push(p.to_vec())
        });
        assert_eq!(count, Some(3));
        let mut data = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            assert!(p.len() <= 1280);
            assert_eq!(&p[..4], &out[..4]);
            assert_eq!(&p[7..40], &out[7..40]);
            assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
            // Every fragment is reported as one by the parser.
            assert_eq!(Ipv6Info::parse(p), Err(V6Error::Fragment));
            let word = u16::from_be_bytes([p[42], p[43]]);
            assert_eq!(usize::from(word & !7), data.len());
            assert_eq!(word & 1 == 1, i + 1 < pieces.len());
            assert_eq!(
                (p[40], &p[44..48]),
                (IPPROTO_UDP, &0xdead_beefu32.to_be_bytes()[..])
            );
            if i + 1 < pieces.len() {
                assert_eq!((p.len() - 48) % 8, 0);
            }
            data.extend_from_slice(&p[48..]);
        }
        assert_eq!(data, &out[40..n]);
        let mut whole = 0;
        assert_eq!(
            fragment6(&out[..n], 9000, 1, &mut [], &mut |p| {
                whole += 1;
                assert_eq!(p, &out[..n]);
            }),
            Some(1)
        );
        assert_eq!(whole, 1);
        assert_eq!(
            fragment6(&out[..n], 50, 1, &mut [0u8; 64], &mut |_| ()),
            None
        );
    }
}
