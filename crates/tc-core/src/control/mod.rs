//! The tcpcopy <-> intercept control channel of TCPCopy 1.0, bit for bit (spec tcpcopy.md
//! section 5, intercept.md section 4), so either end interoperates with the original:
//!
//! - tcpcopy -> intercept: 14-byte [`ClientMsg`] records, big-endian (client ip, client port,
//!   type, target ip, target port). The first record on a connection is the version record
//!   (type 6, all else zero); then CLIENT_ADD (1) per replayed session, CLIENT_DEL (2) unused.
//! - intercept -> tcpcopy: response [`Record`]s of 64 bytes (IPv4 header + TCP header with up
//!   to 24 option bytes, zero padded) or 192 bytes with `--payload` (up to 128 payload bytes),
//!   in combined frames `[u16 BE count][count records]` (default, count 1..=16, 1..=6 with
//!   payload) or bare with `--disable-combined`.
//!
//! Nothing on the wire announces the variant: both binaries take the same long options,
//! `--disable-combined` and `--payload`, to build the same [`WireFormat`]. Our own variants
//! are negotiated per tunnel, so an original peer never receives them: [`full_payload`]
//! (the target's response bytes) and [`ipv6`] (IPv6 CLIENT_ADDs and response records).
//! The codecs here touch no socket; `conn::FramedConn` (feature `io`) is the non-blocking mio
//! connection both binaries drive them with, and [`routing`] decides which of intercept's
//! tunnels gets a captured response.

#[cfg(feature = "io")]
pub mod conn;
pub mod full_payload;
pub mod ipv6;
pub mod probe;
pub mod routing;

use std::net::Ipv4Addr;

use crate::packet::checksum::checksum;
use crate::packet::{Completeness, TcpPacket};

/// The TCP port intercept listens on and tcpcopy connects to unless told otherwise (`-p`).
pub const DEFAULT_PORT: u16 = 36524;

/// tcpcopy -> intercept record size.
pub const CLIENT_MSG_LEN: usize = 14;
pub const PROTOCOL_VERSION: u16 = 6;
pub const CLIENT_ADD: u16 = 1;
pub const CLIENT_DEL: u16 = 2;
/// Response record sizes.
pub const RECORD_LEN: usize = 64;
pub const RECORD_LEN_PAYLOAD: usize = 192;
/// IP header bytes, then TCP header bytes (with options) kept in a record.
const RECORD_IP: usize = 20;
const RECORD_TCP: usize = 44;
/// Largest payload a payload record carries.
pub const MAX_RECORD_PAYLOAD: usize = 128;
/// Most records in one combined frame: 16, or 6 with payload records (the original's limits;
/// a receiver rejects more).
pub const MAX_BATCH: usize = 16;
pub const MAX_BATCH_PAYLOAD: usize = 6;

/// One tcpcopy -> intercept record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientMsg {
    pub client_ip: Ipv4Addr,
    pub client_port: u16,
    /// Message type, or the protocol version in the first record.
    pub kind: u16,
    pub target_ip: Ipv4Addr,
    pub target_port: u16,
}

impl ClientMsg {
    pub fn parse(b: &[u8; CLIENT_MSG_LEN]) -> ClientMsg {
        ClientMsg {
            client_ip: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            client_port: u16::from_be_bytes([b[4], b[5]]),
            kind: u16::from_be_bytes([b[6], b[7]]),
            target_ip: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
            target_port: u16::from_be_bytes([b[12], b[13]]),
        }
    }

    pub fn encode(&self) -> [u8; CLIENT_MSG_LEN] {
        let mut b = [0u8; CLIENT_MSG_LEN];
        b[0..4].copy_from_slice(&self.client_ip.octets());
        b[4..6].copy_from_slice(&self.client_port.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..12].copy_from_slice(&self.target_ip.octets());
        b[12..14].copy_from_slice(&self.target_port.to_be_bytes());
        b
    }

    /// The version record a tcpcopy sends first.
    pub fn version(v: u16) -> ClientMsg {
        ClientMsg {
            client_ip: Ipv4Addr::UNSPECIFIED,
            client_port: 0,
            kind: v,
            target_ip: Ipv4Addr::UNSPECIFIED,
            target_port: 0,
        }
    }
}

/// The variant both sides must agree on (nothing on the wire announces it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireFormat {
    /// `[u16 BE count][count records]` frames (default) or bare records.
    pub combined: bool,
    /// 192-byte records with up to 128 payload bytes.
    pub payload: bool,
}

impl WireFormat {
    pub fn record_len(&self) -> usize {
        if self.payload {
            RECORD_LEN_PAYLOAD
        } else {
            RECORD_LEN
        }
    }

    /// Most records in one combined frame (tcpcopy rejects more).
    pub fn max_batch(&self) -> usize {
        if self.payload {
            MAX_BATCH_PAYLOAD
        } else {
            MAX_BATCH
        }
    }
}

/// One response record, built on the stack.
#[derive(Clone, Copy)]
pub struct Record {
    bytes: [u8; RECORD_LEN_PAYLOAD],
    len: u8,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Record({:02x?})", &self.bytes[..40])
    }
}

impl Record {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Builds the record of a captured response. IP options are dropped (IHL set to 5 and the
    /// total length reduced by their size, so tcpcopy computes the right payload length); TCP
    /// headers longer than 44 bytes are cut; `dst_rewrite` replaces the destination address
    /// (`-D`) and then the IP checksum is recomputed.
    pub fn encode(
        pkt: &TcpPacket<&[u8]>,
        fmt: WireFormat,
        dst_rewrite: Option<Ipv4Addr>,
    ) -> Record {
        let mut r = Record {
            bytes: [0u8; RECORD_LEN_PAYLOAD],
            len: fmt.record_len() as u8,
        };
        let raw = pkt.as_bytes();
        let ip_len = pkt.ip_header_len();
        r.bytes[..RECORD_IP].copy_from_slice(&raw[..RECORD_IP]);
        let mut fix_checksum = false;
        if ip_len > RECORD_IP {
            let options = (ip_len - RECORD_IP) as u16;
            r.bytes[0] = (r.bytes[0] & 0xf0) | 5;
            let tot = pkt.total_len().saturating_sub(options);
            r.bytes[2..4].copy_from_slice(&tot.to_be_bytes());
            fix_checksum = true;
        }
        if let Some(ip) = dst_rewrite {
            r.bytes[16..20].copy_from_slice(&ip.octets());
            fix_checksum = true;
        }
        if fix_checksum {
            r.bytes[10] = 0;
            r.bytes[11] = 0;
            let sum = checksum(&r.bytes[..RECORD_IP]);
            r.bytes[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        let tcp_len = pkt.tcp_header_len();
        let tcp_copy = tcp_len.min(RECORD_TCP);
        r.bytes[RECORD_IP..RECORD_IP + tcp_copy].copy_from_slice(&raw[ip_len..ip_len + tcp_copy]);
        if fmt.payload {
            let payload = pkt.payload();
            let at = RECORD_IP + tcp_len;
            // Only a complete payload that fits (tcpcopy reads payload_len bytes at doff).
            if !payload.is_empty()
                && payload.len() == pkt.payload_len()
                && payload.len() <= MAX_RECORD_PAYLOAD
                && at + payload.len() <= RECORD_LEN_PAYLOAD
                && tcp_len <= RECORD_TCP
            {
                r.bytes[at..at + payload.len()].copy_from_slice(payload);
            }
        }
        r
    }
}

/// What a [`ClientMsg`]'s type field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMsgKind {
    Add,
    Del,
    Unknown(u16),
}

impl ClientMsg {
    pub fn add(
        client_ip: Ipv4Addr,
        client_port: u16,
        target_ip: Ipv4Addr,
        target_port: u16,
    ) -> ClientMsg {
        ClientMsg {
            client_ip,
            client_port,
            kind: CLIENT_ADD,
            target_ip,
            target_port,
        }
    }

    /// A CLIENT_DEL naming no connection: tcpcopy's keepalive on an idle tunnel. Both the
    /// original intercept and ours ignore CLIENT_DEL (spec 4.1: a debug line), and it counts as
    /// input for intercept's idle-tunnel timeout.
    pub fn keepalive() -> ClientMsg {
        ClientMsg {
            client_ip: Ipv4Addr::UNSPECIFIED,
            client_port: 0,
            kind: CLIENT_DEL,
            target_ip: Ipv4Addr::UNSPECIFIED,
            target_port: 0,
        }
    }

    /// The type of a record after the first one.
    pub fn classify(&self) -> ClientMsgKind {
        match self.kind {
            CLIENT_ADD => ClientMsgKind::Add,
            CLIENT_DEL => ClientMsgKind::Del,
            k => ClientMsgKind::Unknown(k),
        }
    }

    /// The first record of a connection must have a zero client ip and port (the original
    /// closes the connection otherwise); its type is the peer's protocol version.
    pub fn check_version_record(&self) -> Result<u16, HandshakeError> {
        if self.client_ip != Ipv4Addr::UNSPECIFIED || self.client_port != 0 {
            return Err(HandshakeError::NotAVersionRecord);
        }
        Ok(self.kind)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("client too old for intercept (first record is not a version record)")]
    NotAVersionRecord,
}

impl Default for WireFormat {
    fn default() -> Self {
        WireFormat {
            combined: true,
            payload: false,
        }
    }
}

/// A broken response stream: the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("combined frame of {count} records (at most {max})")]
    TooManyRecords { count: usize, max: usize },
}

/// Hands every complete response record at the front of `buf` to `on_record` and returns
/// how many bytes were consumed (the rest is an incomplete frame or record: keep it for the
/// next read). A combined count of 0 is accepted; a count above the maximum is an error.
pub fn split_frames(
    buf: &[u8],
    fmt: WireFormat,
    mut on_record: impl FnMut(&[u8]),
) -> Result<usize, FrameError> {
    let len = fmt.record_len();
    let mut at = 0;
    if fmt.combined {
        while let Some(head) = buf.get(at..at + 2) {
            let count = usize::from(u16::from_be_bytes([head[0], head[1]]));
            if count > fmt.max_batch() {
                return Err(FrameError::TooManyRecords {
                    count,
                    max: fmt.max_batch(),
                });
            }
            let end = at + 2 + count * len;
            let Some(body) = buf.get(at + 2..end) else {
                break;
            };
            body.chunks_exact(len).for_each(&mut on_record);
            at = end;
        }
    } else {
        let whole = buf.len() / len * len;
        buf[..whole].chunks_exact(len).for_each(&mut on_record);
        at = whole;
    }
    Ok(at)
}

/// Writes one combined frame of `records` (1..=max_batch, each `record_len` bytes) to `out`.
pub fn encode_frame(records: &[Record], fmt: WireFormat, out: &mut Vec<u8>) {
    if fmt.combined {
        out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    }
    for r in records {
        out.extend_from_slice(r.as_bytes());
    }
}

/// Views a response record as a segment, bounded by the record. Two things are normalised
/// in a copy (`norm`) first, so the payload length and the fixed TCP fields come out right:
/// - records from the original intercept keep the captured IHL although IP options were not
///   copied (the TCP header is at offset 20): IHL 5, total length less the options;
/// - a TCP header longer than the record holds (timestamps plus SACK blocks: up to 60 bytes,
///   the record keeps 44) is cut: its data offset is lowered to what is there and the total
///   length reduced by the same amount. The options left may end mid-option; the parser
///   stops there. Dropping such records instead would hide every ACK of a target that is
///   SACKing, and tcpcopy would retransmit the same segment forever.
pub fn record_view<'a>(record: &'a [u8], norm: &'a mut [u8; 256]) -> Option<TcpPacket<&'a [u8]>> {
    let record = &record[..record.len().min(RECORD_LEN_PAYLOAD)];
    let n = record.len();
    let first = *record.first()?;
    if first >> 4 != 4 || n < RECORD_IP + 20 {
        return TcpPacket::parse(record, Completeness::HeadersOnly).ok();
    }
    let ihl = usize::from(first & 0x0f) * 4;
    // Where the TCP header is: at the IHL when the record kept the options (our intercept
    // never does; a record long enough to hold them may), else right after 20 bytes.
    let tcp_at = if ihl > RECORD_IP { RECORD_IP } else { ihl };
    let doff = usize::from(record[tcp_at + 12] >> 4) * 4;
    let cut_ip = ihl > RECORD_IP;
    let cut_tcp = doff > 20 && tcp_at + doff > n.min(RECORD_IP + RECORD_TCP);
    if !cut_ip && !cut_tcp {
        return TcpPacket::parse(record, Completeness::HeadersOnly).ok();
    }
    norm[..n].copy_from_slice(record);
    let mut tot = u16::from_be_bytes([norm[2], norm[3]]);
    if cut_ip {
        norm[0] = 0x45;
        tot = tot.saturating_sub((ihl - RECORD_IP) as u16);
    }
    if cut_tcp {
        let kept = (n.min(RECORD_IP + RECORD_TCP) - RECORD_IP) / 4 * 4;
        norm[RECORD_IP + 12] = ((kept / 4) as u8) << 4 | (norm[RECORD_IP + 12] & 0x0f);
        tot = tot.saturating_sub((doff - kept) as u16);
        // A payload record carries no payload after a cut header (nothing to misread).
        norm[RECORD_IP + kept..n].fill(0);
    }
    norm[2..4].copy_from_slice(&tot.to_be_bytes());
    TcpPacket::parse(&norm[..n], Completeness::HeadersOnly).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(ip_opts: usize, tcp_opts: usize, payload: usize) -> Vec<u8> {
        let ihl = 20 + ip_opts;
        let doff = 20 + tcp_opts;
        let tot = ihl + doff + payload;
        let mut p = vec![0u8; tot];
        p[0] = 0x40 | (ihl / 4) as u8;
        p[2..4].copy_from_slice(&(tot as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[198, 18, 0, 30]);
        p[16..20].copy_from_slice(&[203, 0, 113, 5]);
        p[ihl..ihl + 2].copy_from_slice(&8080u16.to_be_bytes());
        p[ihl + 2..ihl + 4].copy_from_slice(&40000u16.to_be_bytes());
        p[ihl + 12] = ((doff / 4) as u8) << 4;
        p[ihl + 13] = 0x12;
        for (i, b) in p[ihl + doff..].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        p
    }

    #[test]
    fn plain_record() {
        let s = segment(0, 12, 10);
        let pkt = TcpPacket::parse(&s[..], Completeness::HeadersOnly).unwrap();
        let fmt = WireFormat {
            combined: true,
            payload: false,
        };
        let r = Record::encode(&pkt, fmt, None);
        assert_eq!(r.as_bytes().len(), 64);
        assert_eq!(&r.as_bytes()[..52], &s[..52]);
        assert!(r.as_bytes()[52..].iter().all(|&b| b == 0));
    }

    #[test]
    fn ip_options_removed_and_long_tcp_cut() {
        let s = segment(8, 40, 3);
        let pkt = TcpPacket::parse(&s[..], Completeness::HeadersOnly).unwrap();
        let r = Record::encode(
            &pkt,
            WireFormat {
                combined: false,
                payload: false,
            },
            None,
        );
        let b = r.as_bytes();
        assert_eq!(b[0], 0x45);
        assert_eq!(u16::from_be_bytes([b[2], b[3]]) as usize, s.len() - 8);
        assert_eq!(checksum(&b[..20]), 0);
        assert_eq!(&b[20..64], &s[28..72]);
    }

    #[test]
    fn payload_record_and_rewrite() {
        let s = segment(0, 12, 100);
        let pkt = TcpPacket::parse(&s[..], Completeness::HeadersOnly).unwrap();
        let fmt = WireFormat {
            combined: true,
            payload: true,
        };
        let r = Record::encode(&pkt, fmt, Some(Ipv4Addr::new(203, 0, 113, 9)));
        let b = r.as_bytes();
        assert_eq!(b.len(), 192);
        assert_eq!(&b[16..20], &[203, 0, 113, 9]);
        assert_eq!(checksum(&b[..20]), 0);
        assert_eq!(&b[52..152], &s[52..152]);
        // Too long a payload is left out entirely.
        let s = segment(0, 0, 129);
        let pkt = TcpPacket::parse(&s[..], Completeness::HeadersOnly).unwrap();
        let r = Record::encode(&pkt, fmt, None);
        assert!(r.as_bytes()[40..].iter().all(|&b| b == 0));
    }

    #[test]
    fn client_msg_roundtrip() {
        let m = ClientMsg {
            client_ip: Ipv4Addr::new(203, 0, 113, 1),
            client_port: 40000,
            kind: CLIENT_ADD,
            target_ip: Ipv4Addr::new(198, 18, 0, 30),
            target_port: 8080,
        };
        assert_eq!(ClientMsg::parse(&m.encode()), m);
        assert_eq!(
            ClientMsg::version(6).encode(),
            [0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0]
        );
    }
}
