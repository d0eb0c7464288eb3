//! Send backends: how replayed packets leave for the target.

use std::io;

/// A way to put a ready IPv4 datagram (checksums valid) on the wire towards the target.
pub trait Sender {
    /// Sends one IPv4 datagram. `next_hop` selects the transfer (its MACs in datalink mode).
    fn send(&mut self, datagram: &[u8], transfer: usize) -> io::Result<()>;
}

pub mod pcap_inject;
pub mod raw_socket;
