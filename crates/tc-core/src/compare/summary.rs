//! Counters over many comparisons: how many pairs were compared, how many were equal, the
//! differences by kind, the unpaired responses by reason, and what the bound cut.

use super::pairing::{Gone, Unpaired};
use super::{Comparison, DiffKind};

/// Counts of comparison results. Fixed size; `merge` adds another's counts (per-thread or
/// per-session summaries into one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub compared: u64,
    pub equal: u64,
    different: [u64; DiffKind::ALL.len()],
    unpaired: [u64; 4],
    /// Responses cut at the pairing bound.
    pub truncated_responses: u64,
    /// Bytes dropped at the pairing bound.
    pub truncated_bytes: u64,
}

const GONE: [Gone; 4] = [
    Gone::Closed,
    Gone::TimedOut,
    Gone::NoResponse,
    Gone::Overflow,
];

fn gone_index(g: Gone) -> usize {
    match g {
        Gone::Closed => 0,
        Gone::TimedOut => 1,
        Gone::NoResponse => 2,
        Gone::Overflow => 3,
    }
}

impl Gone {
    pub fn name(self) -> &'static str {
        match self {
            Gone::Closed => "closed",
            Gone::TimedOut => "timed_out",
            Gone::NoResponse => "no_response",
            Gone::Overflow => "overflow",
        }
    }
}

impl Summary {
    /// Counts one comparison.
    pub fn record(&mut self, c: &Comparison) {
        self.compared += 1;
        match c {
            Comparison::Equal => self.equal += 1,
            Comparison::Different(d) => self.different[d.kind.index()] += 1,
        }
    }

    /// Counts one unpaired response.
    pub fn record_unpaired(&mut self, u: &Unpaired) {
        self.unpaired[gone_index(u.gone)] += 1;
    }

    /// Adds what a pairer cut (`Pairer::truncated_responses`, `Pairer::truncated_bytes`).
    pub fn record_truncation(&mut self, responses: u64, bytes: u64) {
        self.truncated_responses += responses;
        self.truncated_bytes += bytes;
    }

    /// Pairs that differed, all kinds.
    pub fn different(&self) -> u64 {
        self.different.iter().sum()
    }

    /// Pairs that differed with this kind.
    pub fn different_by(&self, kind: DiffKind) -> u64 {
        self.different[kind.index()]
    }

    /// Every kind with its count, zeros included, in `DiffKind::ALL` order.
    pub fn differences(&self) -> impl Iterator<Item = (DiffKind, u64)> + '_ {
        DiffKind::ALL.iter().map(|&k| (k, self.different_by(k)))
    }

    /// Unpaired responses, all reasons.
    pub fn unpaired(&self) -> u64 {
        self.unpaired.iter().sum()
    }

    /// Unpaired responses for this reason.
    pub fn unpaired_by(&self, gone: Gone) -> u64 {
        self.unpaired[gone_index(gone)]
    }

    /// Every reason with its count, zeros included.
    pub fn unpaired_reasons(&self) -> impl Iterator<Item = (Gone, u64)> + '_ {
        GONE.iter().map(|&g| (g, self.unpaired_by(g)))
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Summary) {
        self.compared += other.compared;
        self.equal += other.equal;
        for (a, b) in self.different.iter_mut().zip(other.different) {
            *a += b;
        }
        for (a, b) in self.unpaired.iter_mut().zip(other.unpaired) {
            *a += b;
        }
        self.truncated_responses += other.truncated_responses;
        self.truncated_bytes += other.truncated_bytes;
    }
}
