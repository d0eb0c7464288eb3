//! A view of one IPv4 + TCP or IPv6 + TCP segment over a byte buffer, with in-place rewriting.
//!
//! IPv6 packets are read past their extension headers (hop-by-hop, routing, destination
//! options, AH, mobility: [`super::ipv6`]); a Fragment header is [`DropReason::Fragment`].
//! An IPv6 packet has no IP checksum nor IP id: [`TcpPacket::ip_id`] reads 0 and the setters
//! of those fields do nothing; its TCP checksum covers the IPv6 pseudo-header.
//!
//! Every read is bounded by the buffer (the captured bytes), never by what the headers claim.
//! Setters keep both checksums valid by RFC 1624 incremental updates, so a forwarded segment
//! is rewritten without a pass over its payload.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::ipv6::{self, Ipv6Info, V6Error, IPV6_HEADER_LEN};
use super::DropReason;

pub const IPV4_MIN_HEADER: usize = 20;
pub const TCP_MIN_HEADER: usize = 20;
pub const IPPROTO_TCP: u8 = 6;

/// TCP flag bits (the low byte of the flags field).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// IP flags/fragment field values.
const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// How much of the segment the buffer must hold for [`TcpPacket::parse`] to accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    /// The whole datagram (IP total length) must be present: a client segment to replay.
    /// Bytes beyond the total length (Ethernet padding) are ignored.
    Whole,
    /// Only the IP and TCP headers must be present; the payload length is taken from the IP
    /// total length (response records from intercept carry headers only).
    HeadersOnly,
}

/// TCP options of interest, parsed from a segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    /// (TSval, TSecr)
    pub timestamps: Option<(u32, u32)>,
    /// Offset of the TSval field from the start of the TCP header, for in-place rewriting.
    pub timestamps_offset: Option<usize>,
}

/// Parses a TCP option area. NOP is skipped, EOL stops, any other option needs a length of at
/// least 2 that fits in the area; a malformed option ends parsing (what was found is kept).
#[inline]
pub fn parse_options(area: &[u8]) -> TcpOptions {
    let mut opts = TcpOptions::default();
    // What nearly every segment after the handshake carries (Linux, BSD): NOP, NOP,
    // timestamps.
    if let Some(&[1, 1, 8, 10, v0, v1, v2, v3, e0, e1, e2, e3]) = area.get(..12) {
        if area.len() == 12 {
            opts.timestamps = Some((
                u32::from_be_bytes([v0, v1, v2, v3]),
                u32::from_be_bytes([e0, e1, e2, e3]),
            ));
            opts.timestamps_offset = Some(TCP_MIN_HEADER + 4);
            return opts;
        }
    }
    let mut i = 0;
    while i < area.len() {
        match area[i] {
            0 => break,
            1 => {
                i += 1;
                continue;
            }
            kind => {
                let Some(&len) = area.get(i + 1) else { break };
                let len = len as usize;
                if len < 2 || i + len > area.len() {
                    break;
                }
                let body = &area[i + 2..i + len];
                match (kind, len) {
                    (2, 4) => opts.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                    (3, 3) => opts.window_scale = Some(body[0].min(14)),
                    (4, 2) => opts.sack_permitted = true,
                    (8, 10) => {
                        let val = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        let ecr = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                        opts.timestamps = Some((val, ecr));
                        opts.timestamps_offset = Some(TCP_MIN_HEADER + i + 2);
                    }
                    _ => {}
                }
                i += len;
            }
        }
    }
    opts
}

/// An IPv4 or IPv6 datagram carrying a TCP segment, validated by [`TcpPacket::parse`].
///
/// `T` is the buffer: `&[u8]` to read, `&mut [u8]` (or an owned buffer) to rewrite in place.
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<T> {
    buf: T,
    /// IPv6 (else IPv4).
    v6: bool,
    /// IP header length: the IPv4 IHL, or 40 plus the IPv6 extension headers.
    ip_len: usize,
    tcp_len: usize,
    /// End of the payload within `buf` (≤ buf.len()).
    payload_end: usize,
    /// Payload length as declared by the IP total length.
    declared_payload: usize,
}

/// What the replay machine reads of a segment, decoded once when it is captured (or when a
/// response record arrives) and passed along with the bytes from ingress to the session,
/// which keeps the layout of the segments it stores: the bytes are not parsed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub ip_id: u16,
    /// The IP flags are exactly "DF, offset 0" (the original counts other values); always
    /// true for IPv6.
    pub plain_df: bool,
    pub options: TcpOptions,
    pub layout: Layout,
}

/// Where the parts of a validated datagram are: enough to rewrite it in place again without
/// validating it again ([`TcpPacket::from_layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// IPv6 (else IPv4).
    pub v6: bool,
    pub ip_len: u8,
    pub tcp_len: u8,
    /// Payload length as declared by the IP total length.
    pub payload_len: u16,
}

impl Layout {
    pub fn headers_len(&self) -> usize {
        usize::from(self.ip_len) + usize::from(self.tcp_len)
    }

    /// The IP header length without options or extension headers (20 or 40).
    pub fn plain_ip_len(&self) -> u8 {
        if self.v6 {
            IPV6_HEADER_LEN as u8
        } else {
            IPV4_MIN_HEADER as u8
        }
    }
}

impl Segment {
    pub fn syn(&self) -> bool {
        self.flags & flags::SYN != 0
    }
    pub fn fin(&self) -> bool {
        self.flags & flags::FIN != 0
    }
    pub fn rst(&self) -> bool {
        self.flags & flags::RST != 0
    }
    pub fn ack_flag(&self) -> bool {
        self.flags & flags::ACK != 0
    }
    #[inline]
    pub fn payload_len(&self) -> usize {
        usize::from(self.layout.payload_len)
    }
    /// The sequence number after the payload and a FIN.
    pub fn end(&self) -> u32 {
        self.seq
            .wrapping_add(u32::from(self.layout.payload_len) + u32::from(self.fin()))
    }
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    // One bounds check and one load (indexing each byte checked each).
    u16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// Swaps the bytes within each 16-bit half: `b0 b1 b2 b3` -> `b1 b0 b3 b2`.
#[inline]
fn swap_halves(v: u32) -> u32 {
    ((v & 0xff00_ff00) >> 8) | ((v & 0x00ff_00ff) << 8)
}

#[inline(always)]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The IPv6 address at `at` in `b`.
#[inline]
fn v6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(a)
}

/// The datagram length the IP header of `b` declares (IPv6: 40 + payload length).
#[inline]
fn total_len_of(b: &[u8], v6: bool) -> usize {
    if v6 {
        IPV6_HEADER_LEN + usize::from(be16(b, 4))
    } else {
        usize::from(be16(b, 2))
    }
}

/// Validates the IPv4 and TCP headers at the start of `b` without looking at the IP total
/// length; returns (IP header length, TCP header length). Shared by [`TcpPacket::parse`] and
/// the splitter, which also accepts GSO super-packets whose total length is 0.
#[inline(always)]
pub(crate) fn parse_headers(b: &[u8]) -> Result<(usize, usize), DropReason> {
    if b.len() < IPV4_MIN_HEADER {
        return Err(DropReason::Truncated);
    }
    if b[0] >> 4 != 4 {
        return Err(DropReason::NotIpv4);
    }
    let ip_len = usize::from(b[0] & 0x0f) * 4;
    if ip_len < IPV4_MIN_HEADER {
        return Err(DropReason::BadIpHeader);
    }
    if b[9] != IPPROTO_TCP {
        return Err(DropReason::NotTcp);
    }
    let frag = be16(b, 6);
    if frag & IP_MF != 0 || frag & IP_OFFSET_MASK != 0 {
        return Err(DropReason::Fragment);
    }
    Ok((ip_len, tcp_header_len(b, ip_len)?))
}

/// The length of the TCP header at `ip_len`, which `b` must hold whole.
#[inline(always)]
fn tcp_header_len(b: &[u8], ip_len: usize) -> Result<usize, DropReason> {
    if b.len() < ip_len + TCP_MIN_HEADER {
        return Err(DropReason::Truncated);
    }
    let tcp_len = usize::from(b[ip_len + 12] >> 4) * 4;
    if tcp_len < TCP_MIN_HEADER {
        return Err(DropReason::BadTcpHeader);
    }
    if b.len() < ip_len + tcp_len {
        return Err(DropReason::Truncated);
    }
    Ok(tcp_len)
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Validates the IPv4 and TCP headers of `buf` (which starts at the IP header).
    ///
    /// Rejects: not IPv4, not TCP, a header length below the minimum or beyond the buffer, an
    /// IP fragment (MF set or non-zero offset: a fragment is never a whole segment), and with
    /// [`Completeness::Whole`] a datagram whose total length exceeds the captured bytes.
    #[inline(always)]
    pub fn parse(buf: T, completeness: Completeness) -> Result<Self, DropReason> {
        let b = buf.as_ref();
        if b.first().is_some_and(|v| v >> 4 == 6) {
            return Self::parse6(buf, completeness);
        }
        let (ip_len, tcp_len) = parse_headers(b)?;
        let tot_len = usize::from(be16(b, 2));
        if tot_len < ip_len + tcp_len {
            return Err(DropReason::BadIpHeader);
        }
        let declared_payload = tot_len - ip_len - tcp_len;
        let payload_end = match completeness {
            Completeness::Whole => {
                if tot_len > b.len() {
                    return Err(DropReason::Truncated);
                }
                tot_len
            }
            Completeness::HeadersOnly => tot_len.min(b.len()),
        };
        Ok(TcpPacket {
            buf,
            v6: false,
            ip_len,
            tcp_len,
            payload_end,
            declared_payload,
        })
    }

    /// [`TcpPacket::parse`] of an IPv6 packet. With [`Completeness::HeadersOnly`] the payload
    /// length may exceed the buffer (a response record); the extension headers must be there.
    #[inline(never)]
    fn parse6(buf: T, completeness: Completeness) -> Result<Self, DropReason> {
        let b = buf.as_ref();
        if b.len() < IPV6_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        let tot = IPV6_HEADER_LEN + usize::from(be16(b, 4));
        if tot > usize::from(u16::MAX) {
            return Err(DropReason::BadIpHeader);
        }
        // The extension header walk is bounded by the payload length: for a headers-only
        // record, walk a copy of the fixed header that claims what the buffer holds.
        let info = if tot > b.len() && completeness == Completeness::HeadersOnly {
            let n = b.len().min(256);
            let mut head = [0u8; 256];
            head[..n].copy_from_slice(&b[..n]);
            head[4..6].copy_from_slice(&((n - IPV6_HEADER_LEN) as u16).to_be_bytes());
            Ipv6Info::parse(&head[..n])
        } else {
            Ipv6Info::parse(b)
        };
        let info = info.map_err(|e| match e {
            V6Error::Truncated => DropReason::Truncated,
            V6Error::Fragment => DropReason::Fragment,
            V6Error::NotUdp | V6Error::Unreadable => DropReason::NotTcp,
            V6Error::BadHeader | V6Error::BadUdpHeader => DropReason::BadIpHeader,
        })?;
        if info.protocol != IPPROTO_TCP {
            return Err(DropReason::NotTcp);
        }
        let ip_len = info.upper_offset;
        if ip_len > usize::from(u8::MAX) {
            return Err(DropReason::BadIpHeader);
        }
        let tcp_len = tcp_header_len(b, ip_len)?;
        if tot < ip_len + tcp_len {
            return Err(DropReason::BadIpHeader);
        }
        let payload_end = match completeness {
            Completeness::Whole => tot,
            Completeness::HeadersOnly => tot.min(b.len()),
        };
        Ok(TcpPacket {
            buf,
            v6: true,
            ip_len,
            tcp_len,
            payload_end,
            declared_payload: tot - ip_len - tcp_len,
        })
    }

    /// The view of a datagram validated before (its [`Segment::layout`]), without validating
    /// it again. `None` when the buffer does not hold that layout (never for the bytes the
    /// layout was read from).
    #[inline]
    pub fn from_layout(buf: T, layout: Layout) -> Option<Self> {
        let b = buf.as_ref();
        let (ip_len, tcp_len) = (usize::from(layout.ip_len), usize::from(layout.tcp_len));
        let payload_end = ip_len + tcp_len + usize::from(layout.payload_len);
        if b.len() < payload_end
            || ip_len < usize::from(layout.plain_ip_len())
            || tcp_len < TCP_MIN_HEADER
            || b[0] >> 4 != if layout.v6 { 6 } else { 4 }
            || total_len_of(b, layout.v6) != payload_end
        {
            return None;
        }
        Some(TcpPacket {
            buf,
            v6: layout.v6,
            ip_len,
            tcp_len,
            payload_end,
            declared_payload: usize::from(layout.payload_len),
        })
    }

    /// Decodes what the replay machine reads (header fields, options, layout) in one go.
    #[inline(always)]
    pub fn segment(&self) -> Segment {
        Segment {
            src: self.src_ip(),
            dst: self.dst_ip(),
            src_port: self.src_port(),
            dst_port: self.dst_port(),
            seq: self.seq(),
            ack: self.ack(),
            flags: self.flags(),
            window: self.window(),
            ip_id: self.ip_id(),
            plain_df: self.is_plain_df(),
            options: self.options(),
            layout: Layout {
                v6: self.v6,
                ip_len: self.ip_len as u8,
                tcp_len: self.tcp_len as u8,
                payload_len: self.declared_payload as u16,
            },
        }
    }

    /// TSval and TSecr at `offset` from the start of the TCP header (see
    /// [`TcpOptions::timestamps_offset`]); `None` when they would not lie in the header.
    pub fn timestamps_at(&self, offset: usize) -> Option<(u32, u32)> {
        if offset + 8 > self.tcp_len {
            return None;
        }
        let at = self.ip_len + offset;
        Some((be32(self.b(), at), be32(self.b(), at + 4)))
    }

    #[inline(always)]
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &T {
        &self.buf
    }

    /// The datagram bytes (IP header to end of captured payload; padding excluded).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.b()[..self.payload_end]
    }

    pub fn into_inner(self) -> T {
        self.buf
    }

    pub fn ip_header_len(&self) -> usize {
        self.ip_len
    }
    /// An IPv6 packet (else IPv4).
    pub fn is_v6(&self) -> bool {
        self.v6
    }
    pub fn tcp_header_len(&self) -> usize {
        self.tcp_len
    }
    pub fn headers_len(&self) -> usize {
        self.ip_len + self.tcp_len
    }
    /// The datagram length the IP header declares (IPv6: 40 plus the payload length).
    pub fn total_len(&self) -> u16 {
        total_len_of(self.b(), self.v6) as u16
    }
    /// The IPv4 id (0 for IPv6).
    #[inline]
    pub fn ip_id(&self) -> u16 {
        if self.v6 {
            return 0;
        }
        be16(self.b(), 4)
    }
    /// The raw flags/fragment-offset field (IPv6: reads as "DF, offset 0").
    #[inline]
    pub fn ip_frag_field(&self) -> u16 {
        if self.v6 {
            return IP_DF;
        }
        be16(self.b(), 6)
    }
    /// True when the IP flags are exactly "DF, offset 0" (the original counts other values).
    #[inline]
    pub fn is_plain_df(&self) -> bool {
        self.ip_frag_field() == IP_DF
    }
    /// TTL or hop limit.
    pub fn ttl(&self) -> u8 {
        self.b()[if self.v6 { 7 } else { 8 }]
    }
    #[inline]
    pub fn src_ip(&self) -> IpAddr {
        let b = self.b();
        if self.v6 {
            IpAddr::V6(v6_at(b, 8))
        } else {
            IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15]))
        }
    }
    #[inline]
    pub fn dst_ip(&self) -> IpAddr {
        let b = self.b();
        if self.v6 {
            IpAddr::V6(v6_at(b, 24))
        } else {
            IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19]))
        }
    }
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.b(), self.ip_len)
    }
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.b(), self.ip_len + 2)
    }
    #[inline]
    pub fn seq(&self) -> u32 {
        be32(self.b(), self.ip_len + 4)
    }
    #[inline]
    pub fn ack(&self) -> u32 {
        be32(self.b(), self.ip_len + 8)
    }
    #[inline]
    pub fn flags(&self) -> u8 {
        self.b()[self.ip_len + 13]
    }
    pub fn has_flags(&self, f: u8) -> bool {
        self.flags() & f == f
    }
    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }
    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }
    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }
    pub fn ack_flag(&self) -> bool {
        self.flags() & flags::ACK != 0
    }
    #[inline]
    pub fn window(&self) -> u16 {
        be16(self.b(), self.ip_len + 14)
    }
    #[inline]
    pub fn tcp_checksum(&self) -> u16 {
        be16(self.b(), self.ip_len + 16)
    }
    /// The IPv4 header checksum (0 for IPv6, which has none).
    #[inline]
    pub fn ip_checksum(&self) -> u16 {
        if self.v6 {
            return 0;
        }
        be16(self.b(), 10)
    }
    /// Payload length from the IP total length (may exceed the bytes present in
    /// [`Completeness::HeadersOnly`] views).
    pub fn payload_len(&self) -> usize {
        self.declared_payload
    }
    /// The payload bytes present in the buffer.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.ip_len + self.tcp_len..self.payload_end]
    }
    /// Sequence space the segment occupies: payload plus one for SYN and for FIN.
    pub fn seq_len(&self) -> u32 {
        self.declared_payload as u32 + u32::from(self.syn()) + u32::from(self.fin())
    }
    /// The TCP option bytes.
    #[inline]
    pub fn option_bytes(&self) -> &[u8] {
        &self.b()[self.ip_len + TCP_MIN_HEADER..self.ip_len + self.tcp_len]
    }
    #[inline]
    pub fn options(&self) -> TcpOptions {
        parse_options(self.option_bytes())
    }

    /// Checks both checksums against a full recomputation (needs the whole payload).
    #[inline]
    pub fn checksums_valid(&self) -> bool {
        let b = self.as_bytes();
        if b.len() < self.ip_len + self.tcp_len + self.declared_payload {
            return false;
        }
        (self.v6 || checksum::checksum(&b[..self.ip_len]) == 0) && self.tcp_sum_over_segment() == 0
    }

    /// Copies the datagram ([`TcpPacket::as_bytes`]) to the start of `out` (at least as long)
    /// and tells whether both checksums are valid, as [`TcpPacket::checksums_valid`] would.
    /// The segment is summed as it is copied ([`checksum::copy_and_sum`]).
    #[inline]
    pub fn copy_verified(&self, out: &mut [u8]) -> bool {
        let b = self.as_bytes();
        let out = &mut out[..b.len()];
        let (header, segment) = b.split_at(self.ip_len);
        let (out_header, out_segment) = out.split_at_mut(self.ip_len);
        out_header.copy_from_slice(header);
        let pseudo = self.pseudo_header_sum();
        let tcp_ok = checksum::fold(checksum::copy_and_sum(segment, out_segment, pseudo)) == 0xffff;
        b.len() >= self.ip_len + self.tcp_len + self.declared_payload
            && tcp_ok
            && (self.v6 || checksum::checksum(header) == 0)
    }

    #[inline]
    fn tcp_sum_over_segment(&self) -> u16 {
        let seg = &self.as_bytes()[self.ip_len..];
        !checksum::fold(checksum::sum_bytes(seg, self.pseudo_header_sum()))
    }

    /// The sum of the TCP pseudo-header (addresses, protocol, the segment's length) of the
    /// datagram's family.
    #[inline]
    fn pseudo_header_sum(&self) -> u64 {
        let b = self.as_bytes();
        let len = b.len() - self.ip_len;
        if self.v6 {
            return ipv6::pseudo_header_sum6(v6_at(b, 8), v6_at(b, 24), IPPROTO_TCP, len as u32);
        }
        let src = [b[12], b[13], b[14], b[15]];
        let dst = [b[16], b[17], b[18], b[19]];
        checksum::pseudo_header_sum(src, dst, IPPROTO_TCP, len as u16)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    #[inline(always)]
    fn bm(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }

    #[inline(always)]
    fn put16(&mut self, at: usize, v: u16) {
        self.bm()[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    #[inline(always)]
    fn put32(&mut self, at: usize, v: u32) {
        self.bm()[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// Rewrites header fields in `f`, then updates both checksums once for all of them. Each
    /// setter below is a rewrite of one field; a caller changing several fields uses one
    /// rewrite: updating the checksum after each change made every change wait for the
    /// previous one to be stored and read back.
    #[inline(always)]
    pub fn rewrite<R>(&mut self, f: impl FnOnce(&mut Rewrite<'_>) -> R) -> R {
        let (v6, ip_len, tcp_len) = (self.v6, self.ip_len, self.tcp_len);
        let (ip, rest) = self.bm().split_at_mut(ip_len);
        let mut w = Rewrite {
            ip,
            tcp: &mut rest[..tcp_len],
            v6,
            ip_delta: 0,
            tcp_delta: 0,
        };
        let r = f(&mut w);
        w.update_checksums();
        r
    }

    /// Source address (IP and TCP pseudo-header checksums updated). An address of the other
    /// family than the packet's is ignored (the command line never mixes them).
    #[inline(always)]
    pub fn set_src_ip(&mut self, ip: impl Into<IpAddr>) {
        self.rewrite(|w| {
            w.src_ip(ip);
        });
    }

    #[inline(always)]
    pub fn set_dst_ip(&mut self, ip: impl Into<IpAddr>) {
        self.rewrite(|w| {
            w.dst_ip(ip);
        });
    }

    #[inline(always)]
    pub fn set_src_port(&mut self, port: u16) {
        self.rewrite(|w| {
            w.src_port(port);
        });
    }

    #[inline(always)]
    pub fn set_dst_port(&mut self, port: u16) {
        self.rewrite(|w| {
            w.dst_port(port);
        });
    }

    #[inline(always)]
    pub fn set_seq(&mut self, seq: u32) {
        self.rewrite(|w| {
            w.seq(seq);
        });
    }

    #[inline(always)]
    pub fn set_ack(&mut self, ack: u32) {
        self.rewrite(|w| {
            w.ack(ack);
        });
    }

    #[inline(always)]
    pub fn set_window(&mut self, win: u16) {
        self.rewrite(|w| {
            w.window(win);
        });
    }

    /// Replaces the flags byte (the data-offset nibble is kept).
    #[inline(always)]
    pub fn set_flags(&mut self, f: u8) {
        self.rewrite(|w| {
            w.flags(f);
        });
    }

    /// Sets the IPv4 id (IPv6 has none: nothing happens).
    #[inline(always)]
    pub fn set_ip_id(&mut self, id: u16) {
        self.rewrite(|w| {
            w.ip_id(id);
        });
    }

    /// TTL or hop limit.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.rewrite(|w| {
            w.ttl(ttl);
        });
    }

    /// Rewrites the timestamp option values at `offset` (from [`TcpOptions::timestamps_offset`]).
    /// Does nothing when the offset does not lie inside the option area.
    #[inline]
    pub fn set_timestamps(&mut self, offset: usize, val: u32, ecr: u32) {
        self.rewrite(|w| {
            w.timestamps(offset, val, ecr);
        });
    }

    /// Recomputes both checksums from scratch (after a segment was rebuilt: trimmed, split).
    pub fn fill_checksums(&mut self) {
        let ip_len = self.ip_len;
        if !self.v6 {
            self.put16(10, 0);
            let c = checksum::checksum(&self.b()[..ip_len]);
            self.put16(10, c);
        }
        self.put16(ip_len + 16, 0);
        let c = self.tcp_sum_over_segment();
        self.put16(ip_len + 16, c);
    }

    /// Mutable payload bytes.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.ip_len + self.tcp_len, self.payload_end);
        &mut self.bm()[start..end]
    }

    /// Removes the IP options (source routes, record route...): the TCP segment moves down
    /// to offset 20, IHL and total length shrink and the IP checksum is recomputed (the TCP
    /// checksum does not cover IP options). IPv6: the extension headers go, the TCP segment
    /// moves to offset 40 and the next header is TCP. Returns the new datagram length; the
    /// view's bytes past it are left over. Only for views holding the whole payload; a view
    /// without options is unchanged.
    pub fn strip_ip_options(&mut self) -> usize {
        if self.v6 {
            return self.strip_extension_headers();
        }
        let opts = self.ip_len - IPV4_MIN_HEADER;
        if opts == 0 || self.payload_end - self.ip_len - self.tcp_len != self.declared_payload {
            return self.payload_end;
        }
        let (start, end) = (self.ip_len, self.payload_end);
        self.bm().copy_within(start..end, IPV4_MIN_HEADER);
        self.payload_end -= opts;
        self.ip_len = IPV4_MIN_HEADER;
        let b = self.bm();
        b[0] = (b[0] & 0xf0) | 5;
        let tot = (end - opts) as u16;
        self.put16(2, tot);
        self.put16(10, 0);
        let c = checksum::checksum(&self.b()[..IPV4_MIN_HEADER]);
        self.put16(10, c);
        self.payload_end
    }

    fn strip_extension_headers(&mut self) -> usize {
        let ext = self.ip_len - IPV6_HEADER_LEN;
        if ext == 0 || self.payload_end - self.ip_len - self.tcp_len != self.declared_payload {
            return self.payload_end;
        }
        let (start, end) = (self.ip_len, self.payload_end);
        self.bm().copy_within(start..end, IPV6_HEADER_LEN);
        self.payload_end -= ext;
        self.ip_len = IPV6_HEADER_LEN;
        self.bm()[6] = IPPROTO_TCP;
        let plen = (self.payload_end - IPV6_HEADER_LEN) as u16;
        self.put16(4, plen);
        self.payload_end
    }

    /// Sets the IP total length (IPv6: the payload length from it).
    fn set_total_len(&mut self, tot: usize) {
        if self.v6 {
            self.put16(4, (tot - IPV6_HEADER_LEN) as u16);
        } else {
            self.put16(2, tot as u16);
        }
    }

    /// Drops the first `n` payload bytes (already sent): the rest moves down, the sequence
    /// advances by `n` and the IP total length shrinks. Checksums are recomputed in full.
    /// Only for views holding the whole payload; returns false (unchanged) otherwise.
    pub fn trim_front(&mut self, n: usize) -> bool {
        let hdr = self.ip_len + self.tcp_len;
        if n == 0 || n > self.declared_payload || self.payload_end - hdr != self.declared_payload {
            return n == 0;
        }
        let end = self.payload_end;
        self.bm().copy_within(hdr + n..end, hdr);
        let new_tot = self.payload_end - n;
        self.set_total_len(new_tot);
        let seq = self.seq().wrapping_add(n as u32);
        let at = self.ip_len + 4;
        self.put32(at, seq);
        self.payload_end -= n;
        self.declared_payload -= n;
        self.fill_checksums();
        true
    }
}

/// Header fields of a [`TcpPacket`] being rewritten (from [`TcpPacket::rewrite`]): each field
/// is stored at once, and what each change does to the checksums (RFC 1624 eqn. 3: the
/// complement of the old 16-bit words plus the new ones) is summed and applied to both
/// checksums when the rewrite ends. One update for many fields gives the same checksums as
/// one update per field, without a chain of loads and stores through the checksum fields.
pub struct Rewrite<'a> {
    /// The IP header (with its options, or IPv6 with its extension headers) and the TCP
    /// header (with its options), apart: fixed offsets in them need no other bounds.
    ip: &'a mut [u8],
    tcp: &'a mut [u8],
    v6: bool,
    /// Sums of the changes not yet applied to the IPv4 header checksum and the TCP one.
    ip_delta: u64,
    tcp_delta: u64,
}

/// What replacing the 16-bit word `old` by `new` adds to a one's-complement sum.
#[inline(always)]
fn delta16(old: u16, new: u16) -> u64 {
    u64::from(!old) + u64::from(new)
}

#[inline(always)]
fn delta32(old: u32, new: u32) -> u64 {
    delta16((old >> 16) as u16, (new >> 16) as u16) + delta16(old as u16, new as u16)
}

/// The big-endian word at `at`, replaced by `new`; returns the old one.
#[inline(always)]
fn swap16(b: &mut [u8], at: usize, new: u16) -> u16 {
    let field: &mut [u8; 2] = (&mut b[at..at + 2]).try_into().expect("2 bytes");
    let old = u16::from_be_bytes(*field);
    *field = new.to_be_bytes();
    old
}

#[inline(always)]
fn swap32(b: &mut [u8], at: usize, new: u32) -> u32 {
    let field: &mut [u8; 4] = (&mut b[at..at + 4]).try_into().expect("4 bytes");
    let old = u32::from_be_bytes(*field);
    *field = new.to_be_bytes();
    old
}

impl Rewrite<'_> {
    /// Source address (both checksums: the TCP one through its pseudo-header). An address of
    /// the other family than the packet's is ignored (the command line never mixes them).
    #[inline(always)]
    pub fn src_ip(&mut self, ip: impl Into<IpAddr>) -> &mut Self {
        match ip.into() {
            IpAddr::V4(ip) if !self.v6 => self.v4_at(12, ip),
            IpAddr::V6(ip) if self.v6 => self.v6_at(8, ip),
            _ => {}
        }
        self
    }

    #[inline(always)]
    pub fn dst_ip(&mut self, ip: impl Into<IpAddr>) -> &mut Self {
        match ip.into() {
            IpAddr::V4(ip) if !self.v6 => self.v4_at(16, ip),
            IpAddr::V6(ip) if self.v6 => self.v6_at(24, ip),
            _ => {}
        }
        self
    }

    #[inline(always)]
    fn v4_at(&mut self, at: usize, ip: Ipv4Addr) {
        let new = u32::from(ip);
        let d = delta32(swap32(self.ip, at, new), new);
        self.ip_delta += d;
        self.tcp_delta += d;
    }

    /// An IPv6 address: only the TCP checksum covers it (pseudo-header).
    fn v6_at(&mut self, at: usize, ip: Ipv6Addr) {
        for (i, w) in ip.octets().chunks_exact(4).enumerate() {
            let new = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
            self.tcp_delta += delta32(swap32(self.ip, at + 4 * i, new), new);
        }
    }

    #[inline(always)]
    fn tcp16(&mut self, at: usize, new: u16) {
        self.tcp_delta += delta16(swap16(self.tcp, at, new), new);
    }

    #[inline(always)]
    fn tcp32(&mut self, at: usize, new: u32) {
        self.tcp_delta += delta32(swap32(self.tcp, at, new), new);
    }

    #[inline(always)]
    pub fn src_port(&mut self, port: u16) -> &mut Self {
        self.tcp16(0, port);
        self
    }

    #[inline(always)]
    pub fn dst_port(&mut self, port: u16) -> &mut Self {
        self.tcp16(2, port);
        self
    }

    #[inline(always)]
    pub fn seq(&mut self, seq: u32) -> &mut Self {
        self.tcp32(4, seq);
        self
    }

    #[inline(always)]
    pub fn ack(&mut self, ack: u32) -> &mut Self {
        self.tcp32(8, ack);
        self
    }

    #[inline(always)]
    pub fn window(&mut self, win: u16) -> &mut Self {
        self.tcp16(14, win);
        self
    }

    /// Replaces the flags byte (the data-offset nibble is kept).
    #[inline(always)]
    pub fn flags(&mut self, f: u8) -> &mut Self {
        let old = be16(self.tcp, 12);
        self.tcp16(12, (old & 0xff00) | u16::from(f));
        self
    }

    /// The IPv4 id (IPv6 has none: nothing happens).
    #[inline(always)]
    pub fn ip_id(&mut self, id: u16) -> &mut Self {
        if !self.v6 {
            self.ip_delta += delta16(swap16(self.ip, 4, id), id);
        }
        self
    }

    /// TTL or hop limit.
    pub fn ttl(&mut self, ttl: u8) -> &mut Self {
        if self.v6 {
            self.ip[7] = ttl;
            return self;
        }
        let old = be16(self.ip, 8);
        let new = (u16::from(ttl) << 8) | (old & 0xff);
        self.ip_delta += delta16(swap16(self.ip, 8, new), new);
        self
    }

    /// The timestamp option values at `offset` (from [`TcpOptions::timestamps_offset`]).
    /// Nothing happens when the offset does not lie inside the option area.
    #[inline]
    pub fn timestamps(&mut self, offset: usize, val: u32, ecr: u32) -> &mut Self {
        if offset < TCP_MIN_HEADER || offset + 8 > self.tcp.len() {
            return self;
        }
        let old_val = swap32(self.tcp, offset, val);
        let old_ecr = swap32(self.tcp, offset + 4, ecr);
        // Options need not be 16-bit aligned (e.g. after a 3-byte window scale). A field at an
        // odd offset straddles the checksum's 16-bit words: its bytes then count with their
        // significance swapped, so the update uses each 16-bit half byte-swapped (RFC 1071
        // byte-order independence).
        let odd = |v: u32| if offset % 2 == 1 { swap_halves(v) } else { v };
        self.tcp_delta += delta32(odd(old_val), odd(val)) + delta32(odd(old_ecr), odd(ecr));
        self
    }

    /// Applies the summed changes to the checksums.
    #[inline(always)]
    fn update_checksums(&mut self) {
        if self.ip_delta != 0 && !self.v6 {
            let c = !checksum::fold(u64::from(!be16(self.ip, 10)) + self.ip_delta);
            swap16(self.ip, 10, c);
        }
        if self.tcp_delta != 0 {
            let c = !checksum::fold(u64::from(!be16(self.tcp, 16)) + self.tcp_delta);
            swap16(self.tcp, 16, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::{build_segment, SegmentSpec};

    fn sample(payload: &[u8], ts: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 1600];
        let spec = SegmentSpec {
            src: Ipv4Addr::new(198, 18, 0, 10).into(),
            dst: Ipv4Addr::new(198, 18, 0, 20).into(),
            src_port: 40000,
            dst_port: 80,
            seq: 1000,
            ack: 2000,
            flags: flags::ACK | flags::PSH,
            window: 502,
            ip_id: 7,
            mss: None,
            timestamps: ts.then_some((11, 22)),
            payload,
        };
        let n = build_segment(&spec, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn parse_reads_fields() {
        let buf = sample(b"hello", true);
        let p = TcpPacket::parse(&buf[..], Completeness::Whole).unwrap();
        assert_eq!(p.src_ip(), Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq(), 1000);
        assert_eq!(p.ack(), 2000);
        assert_eq!(p.payload(), b"hello");
        assert_eq!(p.tcp_header_len(), 32);
        assert_eq!(p.options().timestamps, Some((11, 22)));
        assert!(p.checksums_valid());
    }

    #[test]
    fn rewrites_keep_checksums_valid() {
        let mut buf = sample(b"some request bytes", true);
        let mut p = TcpPacket::parse(&mut buf[..], Completeness::Whole).unwrap();
        let ts_at = p.options().timestamps_offset.unwrap();
        p.set_dst_ip(Ipv4Addr::new(198, 18, 0, 30));
        p.set_src_ip(Ipv4Addr::new(203, 0, 113, 9));
        p.set_dst_port(8080);
        p.set_src_port(12345);
        p.set_ack(0xfedc_ba98);
        p.set_window(65535);
        p.set_ip_id(0xbeef);
        p.set_timestamps(ts_at, 777, 888);
        p.set_flags(flags::ACK);
        assert!(p.checksums_valid());
        assert_eq!(p.options().timestamps, Some((777, 888)));
    }

    #[test]
    fn one_rewrite_of_many_fields_equals_one_setter_each() {
        // Both families, with and without timestamps, the odd-offset timestamps included: the
        // bytes after one rewrite (one checksum update) are those after a setter per field.
        let mut odd_ts = sample(b"xyz", false);
        odd_ts.splice(40..40, [3u8, 3, 7, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]);
        let total = odd_ts.len() as u16;
        odd_ts[2..4].copy_from_slice(&total.to_be_bytes());
        odd_ts[32] = 9 << 4;
        TcpPacket::parse(&mut odd_ts[..], Completeness::Whole)
            .unwrap()
            .fill_checksums();
        let cases = [
            sample(b"some request bytes", true),
            sample(b"", false),
            odd_ts,
            sample6(b"an IPv6 request"),
        ];
        for (n, original) in cases.into_iter().enumerate() {
            let v6 = n == 3;
            let (src, dst): (IpAddr, IpAddr) = if v6 {
                (
                    "2001:db8:ffff::9".parse().unwrap(),
                    "2001:db8::30".parse().unwrap(),
                )
            } else {
                (
                    Ipv4Addr::new(203, 0, 113, 9).into(),
                    Ipv4Addr::new(198, 18, 0, 30).into(),
                )
            };
            let mut each = original.clone();
            let mut p = TcpPacket::parse(&mut each[..], Completeness::Whole).unwrap();
            let ts_at = p.options().timestamps_offset;
            p.set_src_ip(src);
            p.set_dst_ip(dst);
            p.set_src_port(12345);
            p.set_dst_port(8080);
            p.set_seq(0x0123_4567);
            p.set_ack(0xfedc_ba98);
            p.set_window(65535);
            p.set_flags(flags::ACK | flags::PSH);
            p.set_ip_id(0xbeef);
            p.set_ttl(17);
            if let Some(at) = ts_at {
                p.set_timestamps(at, 0x0102_0304, 0xa0b0_c0d0);
            }
            assert!(p.checksums_valid(), "case {n}");
            let mut once = original.clone();
            let mut q = TcpPacket::parse(&mut once[..], Completeness::Whole).unwrap();
            q.rewrite(|w| {
                w.src_ip(src)
                    .dst_ip(dst)
                    .src_port(12345)
                    .dst_port(8080)
                    .seq(0x0123_4567)
                    .ack(0xfedc_ba98)
                    .window(65535)
                    .flags(flags::ACK | flags::PSH)
                    .ip_id(0xbeef)
                    .ttl(17);
                if let Some(at) = ts_at {
                    w.timestamps(at, 0x0102_0304, 0xa0b0_c0d0);
                }
            });
            assert!(q.checksums_valid(), "case {n}");
            assert_eq!(once, each, "case {n}");
        }
    }

    #[test]
    fn timestamps_at_odd_offset_keep_checksum_valid() {
        // Window scale (3 bytes) puts the timestamp option at an odd offset.
        let mut buf = sample(b"xyz", false);
        let opts = [3u8, 3, 7, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0];
        buf.splice(40..40, opts);
        let total = buf.len() as u16;
        buf[2..4].copy_from_slice(&total.to_be_bytes());
        buf[32] = 9 << 4;
        let mut p = TcpPacket::parse(&mut buf[..], Completeness::Whole).unwrap();
        p.fill_checksums();
        let at = p.options().timestamps_offset.unwrap();
        assert_eq!(at % 2, 1);
        p.set_timestamps(at, 0x0102_0304, 0xa0b0_c0d0);
        assert_eq!(p.options().timestamps, Some((0x0102_0304, 0xa0b0_c0d0)));
        assert!(p.checksums_valid());
    }

    #[test]
    fn ip_options_are_stripped() {
        let seg = sample(b"GET / HTTP/1.1\r\n\r\n", true);
        // Insert 8 bytes of options (a loose source route and padding) after the IP header.
        let mut d = seg[..20].to_vec();
        d.extend_from_slice(&[0x83, 0x07, 0x04, 198, 18, 0, 99, 0x00]);
        d.extend_from_slice(&seg[20..]);
        d[0] = 0x47;
        let tot = d.len() as u16;
        d[2..4].copy_from_slice(&tot.to_be_bytes());
        TcpPacket::parse(&mut d[..], Completeness::Whole)
            .unwrap()
            .fill_checksums();
        let before = TcpPacket::parse(&d[..], Completeness::Whole)
            .unwrap()
            .segment();
        let mut p = TcpPacket::parse(&mut d[..], Completeness::Whole).unwrap();
        let n = p.strip_ip_options();
        assert_eq!(
            &d[..n],
            &seg[..],
            "the segment as it was before the options"
        );
        let q = TcpPacket::parse(&d[..n], Completeness::Whole).unwrap();
        assert_eq!(q.ip_header_len(), 20);
        assert!(q.checksums_valid());
        assert_eq!(q.payload(), b"GET / HTTP/1.1\r\n\r\n");
        let after = q.segment();
        assert_eq!(
            (after.seq, after.ack, after.options),
            (before.seq, before.ack, before.options)
        );
        // Without options: unchanged.
        let mut plain = seg.clone();
        let len = plain.len();
        assert_eq!(
            TcpPacket::parse(&mut plain[..], Completeness::Whole)
                .unwrap()
                .strip_ip_options(),
            len
        );
        assert_eq!(plain, seg);
    }

    #[test]
    fn trim_front_moves_payload() {
        let mut buf = sample(b"0123456789", false);
        let mut p = TcpPacket::parse(&mut buf[..], Completeness::Whole).unwrap();
        assert!(p.trim_front(4));
        assert_eq!(p.payload(), b"456789");
        assert_eq!(p.seq(), 1004);
        assert_eq!(usize::from(p.total_len()), 40 + 6);
        assert!(p.checksums_valid());
    }

    #[test]
    fn rejects_bad_input() {
        let buf = sample(b"abc", false);
        assert_eq!(
            TcpPacket::parse(&buf[..30], Completeness::Whole).err(),
            Some(DropReason::Truncated)
        );
        assert_eq!(
            TcpPacket::parse(&buf[..41], Completeness::Whole).err(),
            Some(DropReason::Truncated)
        );
        assert!(TcpPacket::parse(&buf[..41], Completeness::HeadersOnly).is_ok());
        let mut frag = buf.clone();
        frag[6] = 0x20; // MF
        assert_eq!(
            TcpPacket::parse(&frag[..], Completeness::Whole).err(),
            Some(DropReason::Fragment)
        );
        let mut v5 = buf.clone();
        v5[0] = 0x50;
        assert_eq!(
            TcpPacket::parse(&v5[..], Completeness::Whole).err(),
            Some(DropReason::NotIpv4)
        );
        // An IPv4 datagram read as IPv6 does not add up.
        let mut v6 = buf.clone();
        v6[0] = 0x60;
        assert!(TcpPacket::parse(&v6[..], Completeness::Whole).is_err());
        let mut udp = buf;
        udp[9] = 17;
        assert_eq!(
            TcpPacket::parse(&udp[..], Completeness::Whole).err(),
            Some(DropReason::NotTcp)
        );
    }

    fn sample6(payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 1600];
        let spec = SegmentSpec {
            src: "2001:db8::10".parse().unwrap(),
            dst: "2001:db8::20".parse().unwrap(),
            src_port: 40000,
            dst_port: 80,
            seq: 1000,
            ack: 2000,
            flags: flags::ACK | flags::PSH,
            window: 502,
            ip_id: 7,
            mss: None,
            timestamps: Some((11, 22)),
            payload,
        };
        let n = build_segment(&spec, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn ipv6_parse_rewrite_and_trim() {
        let mut buf = sample6(b"GET / HTTP/1.1\r\n\r\n");
        let p = TcpPacket::parse(&buf[..], Completeness::Whole).unwrap();
        assert!(p.is_v6());
        assert_eq!(p.ip_header_len(), 40);
        assert_eq!(p.src_ip(), "2001:db8::10".parse::<IpAddr>().unwrap());
        assert_eq!(p.payload(), b"GET / HTTP/1.1\r\n\r\n");
        assert!(p.checksums_valid());
        let seg = p.segment();
        assert!(seg.plain_df && seg.layout.v6);
        let mut q = TcpPacket::from_layout(&mut buf[..], seg.layout).unwrap();
        let ts = seg.options.timestamps_offset.unwrap();
        q.set_src_ip("2001:db8:ffff::9".parse::<IpAddr>().unwrap());
        q.set_dst_ip("2001:db8::30".parse::<IpAddr>().unwrap());
        q.set_dst_port(8080);
        q.set_ack(5);
        q.set_timestamps(ts, 1, 2);
        q.set_ip_id(9);
        assert!(q.checksums_valid());
        assert_eq!(q.ip_id(), 0);
        assert!(q.trim_front(4));
        assert_eq!(q.payload(), b"/ HTTP/1.1\r\n\r\n");
        assert!(q.checksums_valid());
        let q = TcpPacket::parse(q.as_bytes(), Completeness::Whole).unwrap();
        assert_eq!(q.dst_ip(), "2001:db8::30".parse::<IpAddr>().unwrap());
        assert_eq!(q.seq(), 1004);
    }

    #[test]
    fn ipv6_extension_headers_are_skipped_and_stripped_fragments_dropped() {
        let plain = sample6(b"hello");
        // A hop-by-hop header (8 bytes: next TCP, length 0, PadN) and a destination options one.
        let mut d = plain[..40].to_vec();
        d[6] = 0;
        d.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        d.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        d.extend_from_slice(&plain[40..]);
        let plen = (d.len() - 40) as u16;
        d[4..6].copy_from_slice(&plen.to_be_bytes());
        let p = TcpPacket::parse(&d[..], Completeness::Whole).unwrap();
        assert_eq!(p.ip_header_len(), 56);
        assert_eq!(p.payload(), b"hello");
        assert!(p.checksums_valid());
        let mut p = TcpPacket::parse(&mut d[..], Completeness::Whole).unwrap();
        let n = p.strip_ip_options();
        assert_eq!(&d[..n], &plain[..]);
        // A Fragment header.
        let mut f = plain[..40].to_vec();
        f[6] = 44;
        f.extend_from_slice(&[6, 0, 0, 1, 0, 0, 0, 1]);
        f.extend_from_slice(&plain[40..]);
        let plen = (f.len() - 40) as u16;
        f[4..6].copy_from_slice(&plen.to_be_bytes());
        assert_eq!(
            TcpPacket::parse(&f[..], Completeness::Whole).err(),
            Some(DropReason::Fragment)
        );
        // UDP in IPv6, and truncation.
        let mut u = plain.clone();
        u[6] = 17;
        assert_eq!(
            TcpPacket::parse(&u[..], Completeness::Whole).err(),
            Some(DropReason::NotTcp)
        );
        assert_eq!(
            TcpPacket::parse(&plain[..plain.len() - 1], Completeness::Whole).err(),
            Some(DropReason::Truncated)
        );
        assert!(TcpPacket::parse(&plain[..72], Completeness::HeadersOnly).is_ok());
    }

    #[test]
    fn options_parser_stops_on_malformed() {
        // MSS, then a kind with length 1 (invalid): MSS kept, parsing stops.
        let o = parse_options(&[2, 4, 0x05, 0xb4, 5, 1, 8, 10]);
        assert_eq!(o.mss, Some(1460));
        assert_eq!(o.timestamps, None);
        // Window scale and SACK-permitted with NOPs.
        let o = parse_options(&[1, 3, 3, 7, 4, 2, 0, 0]);
        assert_eq!(o.window_scale, Some(7));
        assert!(o.sack_permitted);
    }

    #[test]
    fn the_usual_timestamps_layout_reads_as_the_general_parser_reads_it() {
        // NOP, NOP, timestamps (the shortcut) against the same area with an EOL after it
        // (the general loop), and near misses that must take the loop.
        let ts = [1u8, 1, 8, 10, 1, 2, 3, 4, 0xa0, 0xb0, 0xc0, 0xd0];
        let mut longer = ts.to_vec();
        longer.push(0);
        let o = parse_options(&ts);
        assert_eq!(o, parse_options(&longer));
        assert_eq!(o.timestamps, Some((0x0102_0304, 0xa0b0_c0d0)));
        assert_eq!(o.timestamps_offset, Some(24));
        let mut bad_len = ts;
        bad_len[3] = 9;
        assert_eq!(parse_options(&bad_len).timestamps, None);
        assert_eq!(parse_options(&ts[..11]).timestamps, None);
    }
}
