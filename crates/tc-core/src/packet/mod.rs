//! Packet bytes: link-layer decoding, IPv4/TCP and IPv6/TCP views, in-place rewriting,
//! synthetic segments.
//!
//! No I/O here. The capture backends hand frames to [`link`] which finds the IPv4 datagram;
//! [`tcp::TcpPacket`] validates and reads or rewrites it; [`build`] makes segments tcpcopy
//! invents (faked SYNs, ACKs, RSTs); [`split`] cuts super-packets (TSO/GRO) into MTU-sized
//! segments; [`pcapfile`] reads (and, for tests, writes) capture files for offline replay.
//!
//! Intake of one captured frame, in order:
//! 1. [`ipv4_payload`] finds the IPv4 datagram in the frame (or a [`DropReason`]);
//! 2. if [`split::needs_split`] says it is longer than the MTU, [`split::split_segment`] hands
//!    each MTU-sized piece to a closure; otherwise
//! 3. [`TcpPacket::parse`] with [`Completeness::Whole`] validates it.
//!
//! [`decode_frame`] is steps 1 and 3 in one call, for callers that do not split.
//!
//! TCP over IPv6 takes [`link::ip_payload`] in step 1 (IPv4 or IPv6); [`TcpPacket::parse`]
//! reads either family, and IPv6 packets are never split (step 2).

pub mod build;
pub mod checksum;
pub mod fragments;
pub mod ipv6;
pub mod link;
pub mod pcapfile;
pub mod split;
pub mod tcp;
pub mod udp;

pub use build::{build_segment, SegmentSpec};
pub use link::{ipv4_payload, LinkType};
pub use pcapfile::{PcapError, PcapReader, PcapRecord, PcapWriter};
pub use split::{needs_split, split_segment, SplitError, Splitter};
pub use tcp::{flags, parse_options, Completeness, Layout, Segment, TcpOptions, TcpPacket};

/// Decodes a captured frame down to a validated, complete IPv4/TCP segment: link-layer
/// decoding ([`ipv4_payload`]) then [`TcpPacket::parse`] with [`Completeness::Whole`].
/// Trailing link padding is excluded from the returned view.
#[inline]
pub fn decode_frame(link: LinkType, frame: &[u8]) -> Result<TcpPacket<&[u8]>, DropReason> {
    TcpPacket::parse(ipv4_payload(link, frame)?, Completeness::Whole)
}

/// Why a frame or packet was not used. Callers count drops by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The capture's link type is not one we decode.
    UnsupportedLinkType,
    /// Shorter than its headers claim (or than a minimal header).
    Truncated,
    /// Not an IPv4 datagram (IPv6, ARP, another EtherType...).
    NotIpv4,
    /// IPv4 but not TCP.
    NotTcp,
    /// IPv4 header length or total length inconsistent.
    BadIpHeader,
    /// TCP data offset below 20 bytes.
    BadTcpHeader,
    /// An IP fragment (MF or non-zero offset): never treated as a whole segment.
    Fragment,
    /// Longer than the MTU, but its headers leave no room for payload in an MTU-sized piece.
    Unsplittable,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::UnsupportedLinkType,
        DropReason::Truncated,
        DropReason::NotIpv4,
        DropReason::NotTcp,
        DropReason::BadIpHeader,
        DropReason::BadTcpHeader,
        DropReason::Fragment,
        DropReason::Unsplittable,
    ];

    /// Short stable name for statistics lines.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnsupportedLinkType => "link type",
            DropReason::Truncated => "truncated",
            DropReason::NotIpv4 => "not ipv4",
            DropReason::NotTcp => "not tcp",
            DropReason::BadIpHeader => "bad ip header",
            DropReason::BadTcpHeader => "bad tcp header",
            DropReason::Fragment => "fragment",
            DropReason::Unsplittable => "unsplittable",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Drop counters indexed by [`DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters(pub [u64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn count(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl std::fmt::Display for DropCounters {
    /// `truncated:3,not tcp:1` (only non-zero reasons; `none` when all are zero).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for r in DropReason::ALL {
            let n = self.get(r);
            if n > 0 {
                if !first {
                    f.write_str(",")?;
                }
                write!(f, "{}:{}", r, n)?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}
