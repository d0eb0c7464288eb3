//! The path probe's questions and answers on the control channel: an extension of ours that
//! only tcpcopy's `--check` (and its start-up or running diagnosis) uses.
//!
//! - tcpcopy -> intercept: 14-byte [`ClientMsg`](super::ClientMsg) records with the types
//!   [`PROBE_HELLO`] ("tell me who you are, and watch for anything the target sends") and
//!   [`PROBE_QUERY`] ("what did you see from the target?"), carrying the probe's fake client
//!   and the target. The original intercept warns `unknown msg type` and ignores them
//!   (intercept spec 4.1), so a probe that gets no answer is talking to the original.
//! - intercept -> tcpcopy: one [`ProbeReply`] in a response record slot of the tunnel's own
//!   variant (a combined frame of one record, or a bare record). Its first byte is 0, which no
//!   IPv4 record can have, then the magic `TCR`: tcpcopy tells it from a response without
//!   ambiguity. Intercept sends one only when asked, so an original tcpcopy never sees one.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{ClientMsg, RECORD_LEN};

/// "Who are you; start watching packets from `target_ip`" (client fields: the probe client).
pub const PROBE_HELLO: u16 = 0x7470;
/// "What did you see from `target_ip` since the hello?"
pub const PROBE_QUERY: u16 = 0x7471;

const MAGIC: [u8; 4] = [0, b'T', b'C', b'R'];
/// The bytes of a reply (it fits the smallest record, 64 bytes).
const REPLY_LEN: usize = 42;
const _: () = assert!(REPLY_LEN <= RECORD_LEN);

/// Builds a probe question.
pub fn question(kind: u16, client: SocketAddrV4, target: SocketAddrV4) -> ClientMsg {
    ClientMsg {
        client_ip: *client.ip(),
        client_port: client.port(),
        kind,
        target_ip: *target.ip(),
        target_port: target.port(),
    }
}

/// What kind of answer a [`ProbeReply`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// The answer to [`PROBE_HELLO`]: who intercept is.
    Hello = 1,
    /// The answer to [`PROBE_QUERY`]: what the broad capture saw.
    Seen = 2,
}

/// intercept's answer to a probe question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeReply {
    pub kind: ReplyKind,
    /// intercept's version (major, minor, patch).
    pub version: (u8, u8, u8),
    /// intercept's wire variant.
    pub combined: bool,
    pub payload: bool,
    /// intercept runs with `--full-payload` (grants the target's response bytes).
    pub full_payload: bool,
    /// `net.ipv4.ip_forward` on intercept's host: `None` when it could not be read.
    pub ip_forward: Option<bool>,
    /// The broad capture on packets from the target could be opened.
    pub watching: bool,
    /// The question's client and target, echoed.
    pub client: SocketAddrV4,
    pub target: SocketAddrV4,
    /// Packets from the target seen by the broad capture (any destination).
    pub from_target: u32,
    /// Of those, packets to the probe client (any port of its address).
    pub to_client: u32,
    /// The TCP flags of those, or-ed.
    pub to_client_flags: u8,
    /// A destination of the target's packets other than the client (0.0.0.0: none).
    pub other_destination: Ipv4Addr,
    /// Responses intercept's own capture (its `-F` filter) took since it started.
    pub captured_total: u32,
}

impl ProbeReply {
    /// Writes the reply into a record slot of `record_len` bytes (64 or 192).
    pub fn encode(&self, record_len: usize) -> Vec<u8> {
        let mut b = vec![0u8; record_len.max(RECORD_LEN)];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = self.kind as u8;
        b[5] = self.version.0;
        b[6] = self.version.1;
        b[7] = self.version.2;
        let mut flags = 0u8;
        if self.combined {
            flags |= 1;
        }
        if self.payload {
            flags |= 2;
        }
        match self.ip_forward {
            Some(true) => flags |= 4,
            Some(false) => {}
            None => flags |= 8,
        }
        if self.watching {
            flags |= 16;
        }
        if self.full_payload {
            flags |= 32;
        }
        b[8] = flags;
        b[9..13].copy_from_slice(&self.target.ip().octets());
        b[13..15].copy_from_slice(&self.target.port().to_be_bytes());
        b[15..19].copy_from_slice(&self.client.ip().octets());
        b[19..21].copy_from_slice(&self.client.port().to_be_bytes());
        b[21..25].copy_from_slice(&self.from_target.to_be_bytes());
        b[25..29].copy_from_slice(&self.to_client.to_be_bytes());
        b[29] = self.to_client_flags;
        b[30..34].copy_from_slice(&self.other_destination.octets());
        b[34..38].copy_from_slice(&self.captured_total.to_be_bytes());
        b
    }

    /// True when a record slot holds a probe reply rather than a response.
    pub fn is_reply(record: &[u8]) -> bool {
        record.len() >= REPLY_LEN && record[..4] == MAGIC
    }

    /// Reads a reply; `None` when the slot is not one (or is malformed).
    pub fn parse(record: &[u8]) -> Option<ProbeReply> {
        if !Self::is_reply(record) {
            return None;
        }
        let b = record;
        let kind = match b[4] {
            1 => ReplyKind::Hello,
            2 => ReplyKind::Seen,
            _ => return None,
        };
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        let port = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
        let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let flags = b[8];
        Some(ProbeReply {
            kind,
            version: (b[5], b[6], b[7]),
            combined: flags & 1 != 0,
            payload: flags & 2 != 0,
            full_payload: flags & 32 != 0,
            ip_forward: if flags & 8 != 0 {
                None
            } else {
                Some(flags & 4 != 0)
            },
            watching: flags & 16 != 0,
            target: SocketAddrV4::new(ip(9), port(13)),
            client: SocketAddrV4::new(ip(15), port(19)),
            from_target: word(21),
            to_client: word(25),
            to_client_flags: b[29],
            other_destination: ip(30),
            captured_total: word(34),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProbeReply {
        ProbeReply {
            kind: ReplyKind::Seen,
            version: (0, 3, 1),
            combined: true,
            payload: false,
            full_payload: true,
            ip_forward: Some(true),
            watching: true,
            client: "203.0.113.7:61001".parse().unwrap(),
            target: "198.18.0.20:8080".parse().unwrap(),
            from_target: 12,
            to_client: 2,
            to_client_flags: 0x12,
            other_destination: Ipv4Addr::new(198, 18, 0, 10),
            captured_total: 99,
        }
    }

    #[test]
    fn replies_round_trip_in_both_record_sizes() {
        for len in [64, 192] {
            let b = sample().encode(len);
            assert_eq!(b.len(), len);
            assert_eq!(ProbeReply::parse(&b), Some(sample()));
        }
        let mut unknown = sample();
        unknown.ip_forward = None;
        unknown.kind = ReplyKind::Hello;
        assert_eq!(ProbeReply::parse(&unknown.encode(64)), Some(unknown));
    }

    #[test]
    fn a_response_record_is_never_a_reply() {
        // Every IPv4 record starts with 0x4_.
        let mut r = sample().encode(64);
        r[0] = 0x45;
        assert!(!ProbeReply::is_reply(&r));
        assert_eq!(ProbeReply::parse(&r[..20]), None);
        let mut bad_kind = sample().encode(64);
        bad_kind[4] = 9;
        assert_eq!(ProbeReply::parse(&bad_kind), None);
    }
}
