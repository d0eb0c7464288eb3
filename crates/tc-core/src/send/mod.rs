//! Send backends: how replayed packets leave for the target.
//!
//! A backend never blocks: what the kernel cannot take now is refused with
//! [`io::ErrorKind::WouldBlock`] and the driver keeps it (bounded) until the backend is
//! writable again. A flush hands the backend all its datagrams at once, so a backend that can
//! send several per system call (the raw socket's `sendmmsg`) does.

use std::io;

/// One ready IPv4 datagram (checksums valid) for the target of transfer `transfer` (which
/// selects the MACs in datalink mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing<'a> {
    pub bytes: &'a [u8],
    pub transfer: usize,
}

/// A way to put ready IPv4 datagrams on the wire towards the target.
pub trait Sender {
    /// Hands the first datagrams of `batch` to the kernel, in order, without blocking:
    /// * `Ok(n)`: the first `n` are sent (`n >= 1` unless `batch` is empty; a backend may take
    ///   fewer than offered: call again with the rest);
    /// * `Err(WouldBlock)`: none could be sent now (the socket is full): try again once
    ///   [`Sender::register`]ed readiness or a timer says so;
    /// * any other error: `batch[0]` failed and is not sent (count it, go on with the rest).
    fn send_batch(&mut self, batch: &[Outgoing<'_>]) -> io::Result<usize>;

    /// Sends one datagram, as [`Sender::send_batch`] with a batch of one.
    fn send(&mut self, datagram: &[u8], transfer: usize) -> io::Result<()> {
        let one = [Outgoing {
            bytes: datagram,
            transfer,
        }];
        match self.send_batch(&one)? {
            1 => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "datagram not sent",
            )),
        }
    }

    /// Registers the backend's descriptor for writable readiness; `false` when it has none to
    /// wait on (the driver then retries on a timer). Drivers register only while datagrams
    /// wait: a registered socket reports every freed buffer.
    fn register(&mut self, _registry: &mio::Registry, _token: mio::Token) -> io::Result<bool> {
        Ok(false)
    }

    /// Undoes [`Sender::register`].
    fn deregister(&mut self, _registry: &mio::Registry) -> io::Result<()> {
        Ok(())
    }
}

pub mod pcap_inject;
pub mod raw_socket;
pub mod raw_socket6;
