//! Splitting datagrams longer than the MTU (`-M`) into MTU-sized segments (spec 3.3).
//!
//! Captures taken with TSO/GRO/LRO active hold "super-packets" far larger than the MTU; the raw
//! send socket cannot emit them (IP_HDRINCL packets are never fragmented), so each is cut into
//! segments the way the sender's stack would have cut it:
//!
//! * every piece is a copy of the original IP and TCP headers (options included) followed by
//!   the next slice of at most `MTU - headers` payload bytes;
//! * the sequence number advances by the payload already emitted (plus one after a SYN);
//! * the IP total length fits the piece and the IP id is `original id + piece index`, added
//!   to the 16-bit id as a number. (The C original added the index to the id field in host
//!   byte order, i.e. +256 per piece on x86; that quirk is deliberately not kept.)
//! * FIN and PSH appear only on the last piece, SYN and CWR only on the first (as Linux GSO
//!   does), every other header field is copied;
//! * both checksums are computed in full for each piece (the original's are often not valid
//!   anyway: offloaded checksums are filled in by the NIC after capture).
//!
//! GRO/GSO super-packets larger than 64 KiB (Linux "BIG TCP") and some TSO captures carry an
//! IP total length of 0. Such a datagram is taken to extend to the end of the captured bytes.
//! A non-zero total length is authoritative: bytes after it are link padding and ignored, and a
//! total length beyond the captured bytes is [`DropReason::Truncated`].
//!
//! Nothing here allocates: [`Splitter::write_piece`] writes one piece into a caller buffer and
//! [`split_segment`] loops over all pieces, handing each to a closure.

use super::build::BufferTooSmall;
use super::tcp::{flags, parse_headers, Completeness, TcpPacket};
use super::DropReason;

/// Largest IPv4 datagram: a piece can never be longer, whatever the MTU.
const MAX_IPV4_LEN: usize = u16::MAX as usize;

/// Why [`split_segment`] did not split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The datagram is not usable (count it as a drop).
    #[error("dropped: {0}")]
    Drop(DropReason),
    /// The scratch buffer cannot hold a piece (a caller bug: size it to the MTU).
    #[error(transparent)]
    Buffer(#[from] BufferTooSmall),
}

impl From<DropReason> for SplitError {
    fn from(r: DropReason) -> Self {
        SplitError::Drop(r)
    }
}

/// The datagram length that counts: the IP total length, or the captured length when the
/// total length is 0 (GSO super-packet). `None` when shorter than an IPv4 header.
fn effective_len(ip: &[u8]) -> Option<usize> {
    if ip.len() < 4 {
        return None;
    }
    match usize::from(u16::from_be_bytes([ip[2], ip[3]])) {
        0 => Some(ip.len()),
        tot => Some(tot),
    }
}

/// True when `ip` (a datagram from [`super::ipv4_payload`]) must go through [`split_segment`]:
/// its length (see the module docs for total length 0) exceeds `mtu`.
///
/// IPv6 packets are never split (a limit of the IPv6 replay: captures with GSO/GRO
/// super-packets of IPv6 are replayed as they are).
pub fn needs_split(ip: &[u8], mtu: usize) -> bool {
    if ip.first().is_some_and(|v| v >> 4 == 6) {
        return false;
    }
    effective_len(ip).is_some_and(|len| len > mtu.min(MAX_IPV4_LEN))
}

/// A validated datagram and the plan to cut it into pieces of at most `mtu` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Splitter<'a> {
    /// The datagram, exactly its effective length (no padding).
    datagram: &'a [u8],
    ip_len: usize,
    headers_len: usize,
    max_piece_payload: usize,
    pieces: usize,
}

impl<'a> Splitter<'a> {
    /// Validates `ip` (a datagram starting at the IPv4 header) and plans the pieces.
    ///
    /// Errors: the [`TcpPacket::parse`] reasons; [`DropReason::Truncated`] when the total
    /// length exceeds the captured bytes; [`DropReason::Unsplittable`] when the headers leave
    /// no room for payload in an `mtu`-sized piece (or, without payload, exceed `mtu`).
    pub fn new(ip: &'a [u8], mtu: usize) -> Result<Self, DropReason> {
        let (ip_len, tcp_len) = parse_headers(ip)?;
        let headers_len = ip_len + tcp_len;
        let len = effective_len(ip).ok_or(DropReason::Truncated)?;
        if len < headers_len {
            return Err(DropReason::BadIpHeader);
        }
        if len > ip.len() {
            return Err(DropReason::Truncated);
        }
        let payload_len = len - headers_len;
        let max_piece_payload = mtu.min(MAX_IPV4_LEN).saturating_sub(headers_len);
        let pieces = if payload_len == 0 {
            if headers_len > mtu {
                return Err(DropReason::Unsplittable);
            }
            1
        } else {
            if max_piece_payload == 0 {
                return Err(DropReason::Unsplittable);
            }
            payload_len.div_ceil(max_piece_payload)
        };
        Ok(Splitter {
            datagram: &ip[..len],
            ip_len,
            headers_len,
            max_piece_payload,
            pieces,
        })
    }

    /// Number of pieces (1 when the datagram already fits).
    pub fn piece_count(&self) -> usize {
        self.pieces
    }

    /// Payload bytes of the original segment.
    pub fn payload_len(&self) -> usize {
        self.datagram.len() - self.headers_len
    }

    /// Length of the longest piece: a buffer of this size holds every piece.
    pub fn max_piece_len(&self) -> usize {
        self.headers_len + self.payload_len().min(self.max_piece_payload)
    }

    /// Writes piece `index` (0-based) into the front of `out`; returns its length.
    /// An index past the last piece writes nothing and returns 0.
    pub fn write_piece(&self, index: usize, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        if index >= self.pieces {
            return Ok(0);
        }
        let payload = &self.datagram[self.headers_len..];
        let start = index * self.max_piece_payload;
        let end = (start + self.max_piece_payload).min(payload.len());
        let slice = &payload[start..end];
        let len = self.headers_len + slice.len();
        if out.len() < len {
            return Err(BufferTooSmall {
                need: len,
                have: out.len(),
            });
        }
        let piece = &mut out[..len];
        piece[..self.headers_len].copy_from_slice(&self.datagram[..self.headers_len]);
        piece[self.headers_len..].copy_from_slice(slice);

        // IP: total length (≤ 65535 by construction) and id + index, checksum zeroed below.
        piece[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let id = u16::from_be_bytes([piece[4], piece[5]]).wrapping_add(index as u16);
        piece[4..6].copy_from_slice(&id.to_be_bytes());

        // TCP: sequence number and flags.
        let t = self.ip_len;
        let orig_flags = piece[t + 13];
        let syn_len = u32::from(orig_flags & flags::SYN != 0);
        let seq = u32::from_be_bytes([piece[t + 4], piece[t + 5], piece[t + 6], piece[t + 7]]);
        let seq = if index == 0 {
            seq
        } else {
            seq.wrapping_add(syn_len).wrapping_add(start as u32)
        };
        piece[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        let mut f = orig_flags;
        if index + 1 < self.pieces {
            f &= !(flags::FIN | flags::PSH);
        }
        if index > 0 {
            f &= !(flags::SYN | flags::CWR);
        }
        piece[t + 13] = f;

        match TcpPacket::parse(&mut *piece, Completeness::Whole) {
            Ok(mut p) => p.fill_checksums(),
            // The headers were validated in `new` and the lengths just written agree.
            Err(_) => debug_assert!(false, "split piece must parse"),
        }
        Ok(len)
    }
}

/// Splits the datagram `ip` into pieces of at most `mtu` bytes, writing each into `scratch`
/// and handing it to `emit` in order; returns the number of pieces. A datagram that already
/// fits is emitted as one piece (with its total length fixed and checksums recomputed), so
/// callers that want to avoid that copy test [`needs_split`] first.
pub fn split_segment<F: FnMut(&mut [u8])>(
    ip: &[u8],
    mtu: usize,
    scratch: &mut [u8],
    mut emit: F,
) -> Result<usize, SplitError> {
    let splitter = Splitter::new(ip, mtu)?;
    if scratch.len() < splitter.max_piece_len() {
        return Err(SplitError::Buffer(BufferTooSmall {
            need: splitter.max_piece_len(),
            have: scratch.len(),
        }));
    }
    for index in 0..splitter.piece_count() {
        let len = splitter.write_piece(index, scratch)?;
        emit(&mut scratch[..len]);
    }
    Ok(splitter.piece_count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::{build_segment, SegmentSpec};
    use std::net::Ipv4Addr;

    fn segment(payload: &[u8], flags: u8, ts: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 70000];
        let spec = SegmentSpec {
            src: Ipv4Addr::new(198, 18, 0, 1).into(),
            dst: Ipv4Addr::new(198, 18, 0, 2).into(),
            src_port: 40000,
            dst_port: 80,
            seq: 0xffff_fff0,
            ack: 1,
            flags,
            window: 1000,
            ip_id: 0xfffe,
            mss: None,
            timestamps: ts.then_some((5, 6)),
            payload,
        };
        let n = build_segment(&spec, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn collect(ip: &[u8], mtu: usize) -> Result<Vec<Vec<u8>>, SplitError> {
        let mut scratch = vec![0u8; mtu];
        let mut out = Vec::new();
        split_segment(ip, mtu, &mut scratch, |p| out.push(p.to_vec()))?;
        Ok(out)
    }

    #[test]
    fn splits_with_ids_seqs_and_flags() {
        let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        let ip = segment(&payload, flags::ACK | flags::PSH | flags::FIN, true);
        assert!(needs_split(&ip, 1500));
        let pieces = collect(&ip, 1500).unwrap();
        // 52 header bytes, 1448 payload per piece: 1448 + 1448 + 1104.
        assert_eq!(pieces.len(), 3);
        let mut joined = Vec::new();
        for (i, bytes) in pieces.iter().enumerate() {
            let p = TcpPacket::parse(&bytes[..], Completeness::Whole).unwrap();
            assert!(bytes.len() <= 1500);
            assert!(p.checksums_valid());
            assert_eq!(p.ip_id(), 0xfffeu16.wrapping_add(i as u16));
            assert_eq!(p.seq(), 0xffff_fff0u32.wrapping_add(1448 * i as u32));
            assert_eq!(p.options().timestamps, Some((5, 6)));
            let last = i == pieces.len() - 1;
            assert_eq!(p.fin(), last);
            assert_eq!(p.has_flags(flags::PSH), last);
            assert!(p.ack_flag());
            joined.extend_from_slice(p.payload());
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn syn_only_on_first_piece_and_counts_in_sequence() {
        let payload = vec![7u8; 100];
        let ip = segment(&payload, flags::SYN, false);
        let pieces = collect(&ip, 90).unwrap();
        assert_eq!(pieces.len(), 2);
        let a = TcpPacket::parse(&pieces[0][..], Completeness::Whole).unwrap();
        let b = TcpPacket::parse(&pieces[1][..], Completeness::Whole).unwrap();
        assert!(a.syn() && !b.syn());
        assert_eq!(b.seq(), a.seq().wrapping_add(a.seq_len()));
    }

    #[test]
    fn gso_total_length_zero_uses_captured_length() {
        let payload = vec![1u8; 3000];
        let mut ip = segment(&payload, flags::ACK, false);
        ip[2..4].fill(0);
        assert!(needs_split(&ip, 1500));
        let pieces = collect(&ip, 1500).unwrap();
        assert_eq!(pieces.len(), 3);
        let total: usize = pieces.iter().map(|p| p.len() - 40).sum();
        assert_eq!(total, 3000);
    }

    #[test]
    fn padding_after_total_length_is_ignored() {
        let mut ip = segment(b"abc", flags::ACK, false);
        ip.extend_from_slice(&[0u8; 20]);
        assert!(!needs_split(&ip, 50));
        let pieces = collect(&ip, 50).unwrap();
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].len(), 43);
    }

    #[test]
    fn rejects_what_cannot_be_split() {
        let ip = segment(&[0u8; 200], flags::ACK, true);
        assert_eq!(
            collect(&ip, 52).err(),
            Some(SplitError::Drop(DropReason::Unsplittable))
        );
        assert_eq!(
            collect(&ip[..100], 1500).err(),
            Some(SplitError::Drop(DropReason::Truncated))
        );
        let mut small = vec![0u8; 10];
        assert!(matches!(
            split_segment(&ip, 1500, &mut small, |_| {}),
            Err(SplitError::Buffer(_))
        ));
        assert!(!needs_split(&[0x45], 0));
    }
}
