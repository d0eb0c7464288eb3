//! Capture backends: where packets come in. Each is a small non-blocking source registered in
//! the caller's mio loop; on readiness the caller drains it with [`Capture::read_frames`].

pub mod pcap_live;
pub mod reopen;

use std::io;

use crate::packet::LinkType;

/// A source of captured frames.
pub trait Capture {
    /// Registers the underlying fd(s) for READABLE with `registry` under `token`.
    fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> io::Result<()>;

    /// Reads at most `budget` frames without blocking, handing each to `on_frame` with its link
    /// type. Returns how many were read (0 when nothing was ready). A frame's bytes are only
    /// valid during the call.
    fn read_frames(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(LinkType, &[u8]),
    ) -> io::Result<usize>;

    /// Frames the backend (or the kernel, where it tells) dropped so far.
    fn dropped(&mut self) -> u64 {
        0
    }
}

pub mod raw_socket;
pub mod raw_socket6;
pub mod ring;
