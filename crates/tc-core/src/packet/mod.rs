//! Packet bytes: link-layer decoding, IPv4/TCP views, in-place rewriting, synthetic segments.
//!
//! No I/O here. The capture backends hand frames to [`link`] which finds the IPv4 datagram;
//! [`tcp::TcpPacket`] validates and reads or rewrites it; [`build`] makes segments tcpcopy
//! invents (faked SYNs, ACKs, RSTs).

pub mod build;
pub mod checksum;
pub mod link;
pub mod tcp;

pub use build::{build_segment, SegmentSpec};
pub use link::{ipv4_payload, LinkType};
pub use tcp::{flags, parse_options, Completeness, TcpOptions, TcpPacket};

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
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::UnsupportedLinkType,
        DropReason::Truncated,
        DropReason::NotIpv4,
        DropReason::NotTcp,
        DropReason::BadIpHeader,
        DropReason::BadTcpHeader,
        DropReason::Fragment,
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
