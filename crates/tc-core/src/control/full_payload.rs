//! `--full-payload`: an opt-in variant of ours that carries the target's response bytes from
//! intercept to tcpcopy (for `tcpcopy --diff`), negotiated per tunnel so that neither side ever
//! sends an original peer anything it does not expect:
//!
//! 1. tcpcopy started with `--full-payload` sends, right after the version record, one
//!    [`ClientMsg`](super::ClientMsg) of type [`FULL_PAYLOAD_REQUEST`] (all other fields zero).
//! 2. Our intercept answers it with one [`Grant`] in a response record slot of the tunnel's
//!    variant (first byte 0, which no IPv4 record has, then the magic `TCF`): granted when it
//!    runs with `--full-payload`, refused otherwise. The original intercept warns `unknown msg
//!    type` and ignores the request: tcpcopy, having no answer within a few seconds, stops with
//!    an error naming the intercept. An original tcpcopy never sends the request, so intercept
//!    never sends it a grant nor data.
//! 3. After a grant, intercept sends, after the record of every target segment that carries
//!    data, FIN or RST, a data message: `[0xFF 0xFF][u16 BE n][n bytes]`, the n bytes being a
//!    [`DATA_HDR`]-byte header (flags, the connection, seq, ack) and the segment's payload.
//!    `0xFFFF` is never a valid combined count (at most 16) nor the start of an IPv4 record, so
//!    [`split_full`] tells data messages from frames and records without ambiguity. intercept
//!    sends at most a cap of bytes per response (the bytes sent while the target's ack stays
//!    the same); the message that reaches the cap carries [`DATA_CUT`].

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{split_frames, FrameError, WireFormat, RECORD_LEN};

/// The client record type asking for full payloads.
pub const FULL_PAYLOAD_REQUEST: u16 = 0x7472;

const GRANT_MAGIC: [u8; 4] = [0, b'T', b'C', b'F'];
const GRANT_LEN: usize = 12;
const _: () = assert!(GRANT_LEN <= RECORD_LEN);

/// The marker that starts a data message.
pub const DATA_MARKER: [u8; 2] = [0xff, 0xff];
/// Marker, length, flags, client ip/port, target ip/port, seq, ack.
pub const DATA_HDR: usize = 25;
/// Most payload bytes in one data message.
pub const MAX_DATA: usize = u16::MAX as usize - (DATA_HDR - 4);
/// Default cap of target bytes sent per response.
pub const DEFAULT_CAP: u32 = 64 * 1024;

/// Data message flags.
pub const DATA_FIN: u8 = 1;
pub const DATA_RST: u8 = 2;
/// intercept stopped sending this response's bytes at its cap (the rest is unknown).
pub const DATA_CUT: u8 = 4;

/// intercept's answer to [`FULL_PAYLOAD_REQUEST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: bool,
    /// Bytes per response intercept sends at most.
    pub cap: u32,
}

impl Grant {
    /// The grant in a record slot of `record_len` bytes (64 or 192).
    pub fn encode(&self, record_len: usize) -> Vec<u8> {
        let mut b = vec![0u8; record_len.max(RECORD_LEN)];
        b[..4].copy_from_slice(&GRANT_MAGIC);
        b[4] = u8::from(self.granted);
        b[5..9].copy_from_slice(&self.cap.to_be_bytes());
        b
    }

    /// True when a record slot holds a grant.
    pub fn is_grant(record: &[u8]) -> bool {
        record.len() >= GRANT_LEN && record[..4] == GRANT_MAGIC
    }

    pub fn parse(record: &[u8]) -> Option<Grant> {
        if !Self::is_grant(record) || record[4] > 1 {
            return None;
        }
        Some(Grant {
            granted: record[4] == 1,
            cap: u32::from_be_bytes([record[5], record[6], record[7], record[8]]),
        })
    }
}

/// One data message: a target segment's payload with its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data<'a> {
    pub flags: u8,
    /// The replayed client (the segment's destination).
    pub client: SocketAddrV4,
    /// The target (the segment's source).
    pub target: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub payload: &'a [u8],
}

impl Data<'_> {
    /// Writes the message (at most [`MAX_DATA`] payload bytes: the rest is cut and the
    /// message flagged [`DATA_CUT`]) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let n = self.payload.len().min(MAX_DATA);
        let flags = if n < self.payload.len() {
            self.flags | DATA_CUT
        } else {
            self.flags
        };
        out.extend_from_slice(&DATA_MARKER);
        out.extend_from_slice(&((DATA_HDR - 4 + n) as u16).to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&self.client.ip().octets());
        out.extend_from_slice(&self.client.port().to_be_bytes());
        out.extend_from_slice(&self.target.ip().octets());
        out.extend_from_slice(&self.target.port().to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ack.to_be_bytes());
        out.extend_from_slice(&self.payload[..n]);
    }
}

/// True when a unit from [`split_full`] is a data message.
pub fn is_data(unit: &[u8]) -> bool {
    unit.len() >= DATA_HDR && unit[..2] == DATA_MARKER
}

/// Length of the data message at the front of `buf` (marker included), if one starts there
/// and its length field is there.
pub fn data_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 4 || buf[..2] != DATA_MARKER {
        return None;
    }
    Some(4 + usize::from(u16::from_be_bytes([buf[2], buf[3]])))
}

/// Reads a data message (a unit for which [`is_data`] holds).
pub fn parse_data(unit: &[u8]) -> Option<Data<'_>> {
    if !is_data(unit) || data_len(unit)? != unit.len() {
        return None;
    }
    let b = unit;
    let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    let port = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    Some(Data {
        flags: b[4],
        client: SocketAddrV4::new(ip(5), port(9)),
        target: SocketAddrV4::new(ip(11), port(15)),
        seq: word(17),
        ack: word(21),
        payload: &b[DATA_HDR..],
    })
}

/// Longest unit [`split_full`] hands out.
pub const MAX_UNIT: usize = 4 + u16::MAX as usize;

/// [`split_frames`] for a tunnel that asked for full payloads or IPv6: data messages and IPv6
/// response units ([`super::ipv6`]) are handed out whole, frames and records as usual.
/// Returns the bytes consumed.
pub fn split_full(
    buf: &[u8],
    fmt: WireFormat,
    mut on_unit: impl FnMut(&[u8]),
) -> Result<usize, FrameError> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        if rest.len() < 2 {
            return Ok(at);
        }
        let v6 = rest[..2] == super::ipv6::V6_MARKER;
        if rest[..2] == DATA_MARKER || v6 {
            if rest.len() < 4 {
                return Ok(at);
            }
            let n = 4 + usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            if rest.len() < n {
                return Ok(at);
            }
            let too_short = if v6 {
                !super::ipv6::is_record6(&rest[..n])
            } else {
                n < DATA_HDR
            };
            if too_short {
                return Err(FrameError::TooManyRecords {
                    count: 0xffff,
                    max: fmt.max_batch(),
                });
            }
            on_unit(&rest[..n]);
            at += n;
            continue;
        }
        // One frame (combined) or one record (bare), up to the next possible data message.
        let one = if fmt.combined {
            let count = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            2 + count.min(fmt.max_batch() + 1) * fmt.record_len()
        } else {
            fmt.record_len()
        };
        let used = split_frames(&rest[..one.min(rest.len())], fmt, &mut on_unit)?;
        if used == 0 {
            return Ok(at);
        }
        at += used;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut out = Vec::new();
        Data {
            flags,
            client: "203.0.113.5:40000".parse().unwrap(),
            target: "198.18.0.20:8080".parse().unwrap(),
            seq: 7,
            ack: 0xdead_beef,
            payload,
        }
        .encode(&mut out);
        out
    }

    #[test]
    fn data_round_trip() {
        let m = data(b"HTTP/1.1 200 OK\r\n", DATA_FIN);
        assert!(is_data(&m));
        let d = parse_data(&m).unwrap();
        assert_eq!(d.payload, b"HTTP/1.1 200 OK\r\n");
        assert_eq!(d.flags, DATA_FIN);
        assert_eq!(d.ack, 0xdead_beef);
        assert_eq!(d.client.port(), 40000);
        let big = vec![1u8; MAX_DATA + 10];
        let m = data(&big, 0);
        let d = parse_data(&m).unwrap();
        assert_eq!(d.payload.len(), MAX_DATA);
        assert_eq!(d.flags, DATA_CUT);
    }

    #[test]
    fn grants_round_trip_and_are_not_records() {
        for len in [64, 192] {
            let g = Grant {
                granted: true,
                cap: 65536,
            };
            let b = g.encode(len);
            assert_eq!(b.len(), len);
            assert_eq!(Grant::parse(&b), Some(g));
            assert!(!super::super::probe::ProbeReply::is_reply(&b));
        }
        let mut r = vec![0x45u8; 64];
        assert!(!Grant::is_grant(&r));
        r[..4].copy_from_slice(&[0, b'T', b'C', b'R']);
        assert!(!Grant::is_grant(&r));
    }

    #[test]
    fn split_mixes_frames_records_and_data_in_any_pieces() {
        for combined in [true, false] {
            let fmt = WireFormat {
                combined,
                payload: false,
            };
            let mut stream = Vec::new();
            let rec = [0x45u8; 64];
            if combined {
                stream.extend_from_slice(&[0, 2]);
            }
            stream.extend_from_slice(&rec);
            stream.extend_from_slice(&[0x46; 64]);
            stream.extend(data(b"hello", 0));
            if combined {
                stream.extend_from_slice(&[0, 1]);
            }
            stream.extend_from_slice(&[0x47; 64]);
            stream.extend(data(&[9u8; 3000], DATA_RST));
            // Fed byte by byte and all at once, the same units come out.
            let all = |step: usize| {
                let mut units: Vec<Vec<u8>> = Vec::new();
                let mut buf: Vec<u8> = Vec::new();
                for piece in stream.chunks(step) {
                    buf.extend_from_slice(piece);
                    let used = split_full(&buf, fmt, |u| units.push(u.to_vec())).unwrap();
                    buf.drain(..used);
                }
                assert!(buf.is_empty());
                units
            };
            let whole = all(stream.len());
            assert_eq!(whole, all(1));
            assert_eq!(whole, all(7));
            assert_eq!(whole.len(), 5);
            assert_eq!(whole[0][0], 0x45);
            assert_eq!(whole[1][0], 0x46);
            assert_eq!(parse_data(&whole[2]).unwrap().payload, b"hello");
            assert_eq!(whole[3][0], 0x47);
            assert_eq!(parse_data(&whole[4]).unwrap().payload.len(), 3000);
        }
    }

    #[test]
    fn a_too_short_data_message_is_an_error_and_big_counts_still_are() {
        let fmt = WireFormat::default();
        assert!(split_full(&[0xff, 0xff, 0, 3, 1, 2, 3], fmt, |_| {}).is_err());
        assert!(split_full(&[0, 17], fmt, |_| {}).is_err());
    }
}
