//! `--ipv6`: an opt-in variant of ours that carries IPv6 connections on the control channel,
//! negotiated per tunnel like [`super::full_payload`], so that the original's wire format is
//! unchanged and an original peer is never sent anything it does not expect:
//!
//! 1. tcpcopy replaying IPv6 sends, right after the version record (and the full-payload
//!    request, if any), one [`ClientMsg`] of type [`IPV6_REQUEST`] (all other fields zero).
//! 2. Our intercept answers it with one [`V6Grant`] in a response record slot of the tunnel's
//!    variant (64 or 192 bytes: first byte 0, which no IPv4 record has, then the magic `TC6`):
//!    granted when it runs with `--ipv6`, refused otherwise. The original intercept warns
//!    `unknown msg type` and ignores the request: tcpcopy, having no answer within a few
//!    seconds, stops with an error naming the intercept. tcpcopy sends no IPv6 CLIENT_ADD
//!    before the grant.
//! 3. After a grant, tcpcopy announces IPv6 sessions with a [`CLIENT_ADD6_LEN`]-byte
//!    [`ClientAdd6`]: a 14-byte record of type [`CLIENT_ADD6`] (all other fields zero), then
//!    the client address (16 bytes), client port (2), target address (16), target port (2),
//!    big-endian. intercept reads a record of that type as one 50-byte unit.
//! 4. intercept sends each captured IPv6 response as a unit of its own:
//!    `[0xFF 0xFE][u16 BE n][n bytes]`, the n bytes an IPv6 record: the 40-byte IPv6 header
//!    (extension headers removed: next header TCP, payload length without them), the TCP
//!    header (up to 44 bytes: a longer one is cut, its data offset and the payload length
//!    lowered to match), zero padded to [`RECORD6_LEN`] = 84 bytes; with `--payload`
//!    [`RECORD6_LEN_PAYLOAD`] = 212 bytes, the payload after the TCP header when all of it
//!    (at most 128 bytes) fits. `0xFFFE` is neither a valid combined count (at most 16) nor
//!    the start of an IPv4 record nor a data message (`0xFFFF`), so
//!    [`super::full_payload::split_full`] hands these units out without ambiguity. IPv4
//!    responses keep the original's records and frames.

use std::net::Ipv6Addr;

use super::{ClientMsg, CLIENT_MSG_LEN, MAX_RECORD_PAYLOAD, RECORD_LEN};
use crate::packet::ipv6::IPV6_HEADER_LEN;
use crate::packet::TcpPacket;

/// The client record type asking for the IPv6 variant.
pub const IPV6_REQUEST: u16 = 0x7436;
/// The client record type of an IPv6 CLIENT_ADD (followed by 36 bytes).
pub const CLIENT_ADD6: u16 = 0x7437;
/// Length of an IPv6 CLIENT_ADD, its 14-byte record included.
pub const CLIENT_ADD6_LEN: usize = CLIENT_MSG_LEN + 36;

/// The marker that starts an IPv6 response unit.
pub const V6_MARKER: [u8; 2] = [0xff, 0xfe];
/// IPv6 header bytes, then TCP header bytes kept in an IPv6 record.
const RECORD6_IP: usize = IPV6_HEADER_LEN;
const RECORD6_TCP: usize = 44;
/// IPv6 record sizes (without the 4-byte unit header).
pub const RECORD6_LEN: usize = RECORD6_IP + RECORD6_TCP;
pub const RECORD6_LEN_PAYLOAD: usize = RECORD6_LEN + MAX_RECORD_PAYLOAD;
/// Longest IPv6 unit (marker and length included).
pub const MAX_UNIT6: usize = 4 + RECORD6_LEN_PAYLOAD;

const GRANT_MAGIC: [u8; 4] = [0, b'T', b'C', b'6'];
const GRANT_LEN: usize = 8;
const _: () = assert!(GRANT_LEN <= RECORD_LEN);

/// intercept's answer to [`IPV6_REQUEST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V6Grant {
    pub granted: bool,
}

impl V6Grant {
    /// The answer in a record slot of `record_len` bytes (64 or 192).
    pub fn encode(&self, record_len: usize) -> Vec<u8> {
        let mut b = vec![0u8; record_len.max(RECORD_LEN)];
        b[..4].copy_from_slice(&GRANT_MAGIC);
        b[4] = u8::from(self.granted);
        b
    }

    /// True when a record slot holds an IPv6 answer.
    pub fn is_grant(record: &[u8]) -> bool {
        record.len() >= GRANT_LEN && record[..4] == GRANT_MAGIC
    }

    pub fn parse(record: &[u8]) -> Option<V6Grant> {
        if !Self::is_grant(record) || record[4] > 1 {
            return None;
        }
        Some(V6Grant {
            granted: record[4] == 1,
        })
    }
}

/// The request tcpcopy sends after the version record.
pub fn request() -> [u8; CLIENT_MSG_LEN] {
    ClientMsg {
        kind: IPV6_REQUEST,
        ..ClientMsg::version(0)
    }
    .encode()
}

/// An IPv6 CLIENT_ADD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAdd6 {
    pub client_ip: Ipv6Addr,
    pub client_port: u16,
    pub target_ip: Ipv6Addr,
    pub target_port: u16,
}

impl ClientAdd6 {
    pub fn encode(&self) -> [u8; CLIENT_ADD6_LEN] {
        let mut b = [0u8; CLIENT_ADD6_LEN];
        b[..CLIENT_MSG_LEN].copy_from_slice(
            &ClientMsg {
                kind: CLIENT_ADD6,
                ..ClientMsg::version(0)
            }
            .encode(),
        );
        let at = CLIENT_MSG_LEN;
        b[at..at + 16].copy_from_slice(&self.client_ip.octets());
        b[at + 16..at + 18].copy_from_slice(&self.client_port.to_be_bytes());
        b[at + 18..at + 34].copy_from_slice(&self.target_ip.octets());
        b[at + 34..at + 36].copy_from_slice(&self.target_port.to_be_bytes());
        b
    }

    /// Reads a unit of [`CLIENT_ADD6_LEN`] bytes whose record type is [`CLIENT_ADD6`].
    pub fn parse(unit: &[u8]) -> Option<ClientAdd6> {
        if unit.len() != CLIENT_ADD6_LEN || u16::from_be_bytes([unit[6], unit[7]]) != CLIENT_ADD6 {
            return None;
        }
        let at = CLIENT_MSG_LEN;
        let ip = |at: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&unit[at..at + 16]);
            Ipv6Addr::from(a)
        };
        let port = |at: usize| u16::from_be_bytes([unit[at], unit[at + 1]]);
        Some(ClientAdd6 {
            client_ip: ip(at),
            client_port: port(at + 16),
            target_ip: ip(at + 18),
            target_port: port(at + 34),
        })
    }
}

/// The length of the client unit at the front of `buf` under the IPv6 variant: 14 bytes, or
/// [`CLIENT_ADD6_LEN`] for a record of type [`CLIENT_ADD6`]; `None` until its type is there.
pub fn client_unit_len(buf: &[u8]) -> Option<usize> {
    let kind = buf.get(6..8)?;
    Some(if u16::from_be_bytes([kind[0], kind[1]]) == CLIENT_ADD6 {
        CLIENT_ADD6_LEN
    } else {
        CLIENT_MSG_LEN
    })
}

/// One IPv6 response unit (marker, length, record), built on the stack.
#[derive(Clone, Copy)]
pub struct Record6 {
    bytes: [u8; MAX_UNIT6],
    len: u16,
}

impl std::fmt::Debug for Record6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Record6({:02x?})", &self.bytes[..64])
    }
}

impl Record6 {
    /// The whole unit, marker and length included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The unit of a captured IPv6 response (`pkt.is_v6()`); `payload`: the 212-byte variant.
    pub fn encode(pkt: &TcpPacket<&[u8]>, payload: bool) -> Record6 {
        let n = if payload {
            RECORD6_LEN_PAYLOAD
        } else {
            RECORD6_LEN
        };
        let mut r = Record6 {
            bytes: [0u8; MAX_UNIT6],
            len: (4 + n) as u16,
        };
        r.bytes[..2].copy_from_slice(&V6_MARKER);
        r.bytes[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        let rec = &mut r.bytes[4..4 + n];
        let raw = pkt.as_bytes();
        let ip_len = pkt.ip_header_len();
        let tcp_len = pkt.tcp_header_len();
        let tcp_copy = tcp_len.min(RECORD6_TCP) / 4 * 4;
        rec[..RECORD6_IP].copy_from_slice(&raw[..RECORD6_IP]);
        rec[6] = crate::packet::tcp::IPPROTO_TCP;
        // Payload length as the record tells it: TCP header kept plus the payload.
        let plen = (tcp_copy + pkt.payload_len()).min(usize::from(u16::MAX)) as u16;
        rec[4..6].copy_from_slice(&plen.to_be_bytes());
        rec[RECORD6_IP..RECORD6_IP + tcp_copy].copy_from_slice(&raw[ip_len..ip_len + tcp_copy]);
        if tcp_copy < tcp_len {
            let at = RECORD6_IP + 12;
            rec[at] = ((tcp_copy / 4) as u8) << 4 | (rec[at] & 0x0f);
        }
        if payload && tcp_copy == tcp_len {
            let p = pkt.payload();
            let at = RECORD6_IP + tcp_len;
            if !p.is_empty()
                && p.len() == pkt.payload_len()
                && p.len() <= MAX_RECORD_PAYLOAD
                && at + p.len() <= n
            {
                rec[at..at + p.len()].copy_from_slice(p);
            }
        }
        r
    }
}

/// True when a unit from [`super::full_payload::split_full`] is an IPv6 response unit.
pub fn is_record6(unit: &[u8]) -> bool {
    unit.len() >= 4 + RECORD6_IP + 20 && unit[..2] == V6_MARKER
}

/// The IPv6 record in an IPv6 response unit.
pub fn record6(unit: &[u8]) -> Option<&[u8]> {
    if !is_record6(unit) {
        return None;
    }
    let n = usize::from(u16::from_be_bytes([unit[2], unit[3]]));
    unit.get(4..4 + n).filter(|_| 4 + n == unit.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::full_payload::split_full;
    use crate::control::{record_view, WireFormat};
    use crate::packet::{build_segment, flags, Completeness, SegmentSpec};

    fn v6_segment(payload: &[u8], ts: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 1600];
        let spec = SegmentSpec {
            src: "2001:db8::30".parse().unwrap(),
            dst: "2001:db8:ffff::5".parse().unwrap(),
            src_port: 8080,
            dst_port: 40000,
            seq: 9,
            ack: 77,
            flags: flags::ACK | flags::PSH,
            window: 500,
            ip_id: 0,
            mss: None,
            timestamps: ts.then_some((1, 2)),
            payload,
        };
        let n = build_segment(&spec, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn grant_and_client_add_round_trip() {
        for len in [64, 192] {
            for granted in [true, false] {
                let g = V6Grant { granted };
                let b = g.encode(len);
                assert_eq!(b.len(), len);
                assert_eq!(V6Grant::parse(&b), Some(g));
                assert!(!crate::control::full_payload::Grant::is_grant(&b));
            }
        }
        let a = ClientAdd6 {
            client_ip: "2001:db8:ffff::7".parse().unwrap(),
            client_port: 40001,
            target_ip: "2001:db8::30".parse().unwrap(),
            target_port: 8080,
        };
        let b = a.encode();
        assert_eq!(client_unit_len(&b), Some(CLIENT_ADD6_LEN));
        assert_eq!(ClientAdd6::parse(&b), Some(a));
        assert_eq!(client_unit_len(&ClientMsg::version(6).encode()), Some(14));
        assert_eq!(client_unit_len(&request()), Some(14));
        assert_eq!(ClientMsg::parse(&request()).kind, IPV6_REQUEST);
    }

    #[test]
    fn record6_reads_back_as_the_response() {
        for payload in [false, true] {
            let s = v6_segment(b"HTTP/1.1 200 OK\r\n", true);
            let pkt = TcpPacket::parse(&s[..], Completeness::Whole).unwrap();
            let r = Record6::encode(&pkt, payload);
            let unit = r.as_bytes();
            assert_eq!(unit.len(), 4 + if payload { 212 } else { 84 });
            let rec = record6(unit).unwrap();
            let mut norm = [0u8; 256];
            let v = record_view(rec, &mut norm).unwrap();
            let seg = v.segment();
            assert_eq!(seg.src, pkt.src_ip());
            assert_eq!(seg.dst_port, 40000);
            assert_eq!((seg.seq, seg.ack), (9, 77));
            assert_eq!(seg.payload_len(), 17);
            assert_eq!(seg.options.timestamps, Some((1, 2)));
            assert_eq!(v.payload().len() == 17, payload);
        }
    }

    #[test]
    fn long_tcp_header_is_cut_consistently() {
        let mut s = v6_segment(b"abc", false);
        // 40 option bytes (NOPs): data offset 15.
        s.splice(60..60, [1u8; 40]);
        s[52] = 15 << 4;
        let plen = (s.len() - 40) as u16;
        s[4..6].copy_from_slice(&plen.to_be_bytes());
        let pkt = TcpPacket::parse(&s[..], Completeness::Whole).unwrap();
        let r = Record6::encode(&pkt, false);
        let mut norm = [0u8; 256];
        let v = record_view(record6(r.as_bytes()).unwrap(), &mut norm).unwrap();
        assert_eq!(v.tcp_header_len(), 44);
        assert_eq!(v.payload_len(), 3);
    }

    #[test]
    fn units_split_among_frames() {
        let s = v6_segment(b"x", false);
        let pkt = TcpPacket::parse(&s[..], Completeness::Whole).unwrap();
        let unit = Record6::encode(&pkt, false);
        let fmt = WireFormat::default();
        let mut stream = vec![0u8, 1];
        stream.extend_from_slice(&[0x45; 64]);
        stream.extend_from_slice(unit.as_bytes());
        stream.extend_from_slice(&[0, 1]);
        stream.extend_from_slice(&[0x46; 64]);
        for step in [1, 5, stream.len()] {
            let mut units: Vec<Vec<u8>> = Vec::new();
            let mut buf: Vec<u8> = Vec::new();
            for piece in stream.chunks(step) {
                buf.extend_from_slice(piece);
                let used = split_full(&buf, fmt, |u| units.push(u.to_vec())).unwrap();
                buf.drain(..used);
            }
            assert!(buf.is_empty());
            assert_eq!(units.len(), 3);
            assert!(is_record6(&units[1]));
            assert_eq!(units[2][0], 0x46);
        }
    }
}
