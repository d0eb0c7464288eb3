//! The non-blocking framed connection both ends of the control channel use (tcpcopy's tunnels
//! to its intercepts, intercept's tunnels from its tcpcopies), on a mio poll:
//!
//! - input: partial reads are reassembled in a fixed buffer sized for the longest frame; every
//!   complete unit (a 14-byte client record, or a response record of a frame) is handed out per
//!   readiness event, up to a byte budget so one busy peer cannot starve the loop;
//! - output: a bounded queue written as far as the socket takes; WRITABLE interest only while
//!   something is pending; a peer that stops reading overflows the bound and the caller closes
//!   it (it never blocks the process); combined response frames are batched in place;
//! - TCP_NODELAY: records are small and latency matters more than packet count;
//! - stall clocks: how long an incomplete frame or unsent output has waited, for timeouts.
//!
//! No allocation after construction except output growth up to the bound.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::{split_frames, FrameError, WireFormat, CLIENT_MSG_LEN};

/// How a byte stream is cut into units.
pub trait Framing {
    /// Longest frame: an incomplete frame never needs more input buffer than this.
    fn max_frame_len(&self) -> usize;
    /// Hands every complete unit at the front of `buf` to `on_unit`; returns the bytes used.
    fn split(&self, buf: &[u8], on_unit: &mut impl FnMut(&[u8])) -> Result<usize, FrameError>;
}

/// tcpcopy -> intercept: bare 14-byte records.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientRecords;

impl Framing for ClientRecords {
    fn max_frame_len(&self) -> usize {
        CLIENT_MSG_LEN
    }

    fn split(&self, buf: &[u8], on_unit: &mut impl FnMut(&[u8])) -> Result<usize, FrameError> {
        let whole = buf.len() / CLIENT_MSG_LEN * CLIENT_MSG_LEN;
        buf[..whole].chunks_exact(CLIENT_MSG_LEN).for_each(on_unit);
        Ok(whole)
    }
}

/// tcpcopy -> intercept under the IPv6 variant: 14-byte records and 50-byte IPv6 CLIENT_ADDs
/// (see [`super::ipv6`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientRecords6;

impl Framing for ClientRecords6 {
    fn max_frame_len(&self) -> usize {
        super::ipv6::CLIENT_ADD6_LEN
    }

    fn split(&self, buf: &[u8], on_unit: &mut impl FnMut(&[u8])) -> Result<usize, FrameError> {
        let mut at = 0;
        while let Some(n) = super::ipv6::client_unit_len(&buf[at..]) {
            let Some(unit) = buf.get(at..at + n) else {
                break;
            };
            on_unit(unit);
            at += n;
        }
        Ok(at)
    }
}

/// intercept -> tcpcopy: response records, combined or bare; units are single records.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFrames(pub WireFormat);

impl Framing for ResponseFrames {
    fn max_frame_len(&self) -> usize {
        if self.0.combined {
            2 + self.0.max_batch() * self.0.record_len()
        } else {
            self.0.record_len()
        }
    }

    fn split(&self, buf: &[u8], on_unit: &mut impl FnMut(&[u8])) -> Result<usize, FrameError> {
        split_frames(buf, self.0, on_unit)
    }
}

/// intercept -> tcpcopy on a tunnel that asked for full payloads: response frames or records,
/// and data messages (see [`super::full_payload`]), each a unit.
#[derive(Debug, Clone, Copy)]
pub struct FullPayloadFrames(pub WireFormat);

impl Framing for FullPayloadFrames {
    fn max_frame_len(&self) -> usize {
        ResponseFrames(self.0)
            .max_frame_len()
            .max(super::full_payload::MAX_UNIT)
    }

    fn split(&self, buf: &[u8], on_unit: &mut impl FnMut(&[u8])) -> Result<usize, FrameError> {
        super::full_payload::split_full(buf, self.0, on_unit)
    }
}

/// Why a connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("closed by peer")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    #[error("send queue full: {queued} bytes unsent (peer does not read)")]
    Overflow { queued: usize },
}

/// How a read turn ended (both mean: keep the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// The socket has nothing more now.
    Drained,
    /// The byte budget is used up and more may be waiting: read again next turn (mio is
    /// edge-triggered, no new event will come for data already there).
    BudgetUsed,
}

/// Bytes read per `read` call; the input buffer is this plus the longest frame.
const READ_CHUNK: usize = 16 * 1024;
/// Written bytes are compacted away once this many have accumulated at the front.
const COMPACT_AT: usize = 64 * 1024;

/// Input side: reassembles units from any byte source read in arbitrary pieces.
pub struct Reassembler {
    buf: Box<[u8]>,
    len: usize,
    /// When the incomplete frame at the front of `buf` started waiting.
    partial_since: Option<Instant>,
}

impl Reassembler {
    /// A buffer for frames of at most `max_frame_len` bytes (see [`Framing::max_frame_len`]).
    pub fn new(max_frame_len: usize) -> Reassembler {
        Reassembler {
            buf: vec![0u8; READ_CHUNK + max_frame_len].into_boxed_slice(),
            len: 0,
            partial_since: None,
        }
    }

    /// Reads from `src` until it would block or `budget` bytes were read (at least one read),
    /// handing every complete unit to `on_unit`. Units before an error or end of stream are
    /// handed out first.
    pub fn read_from<R: Read, F: Framing>(
        &mut self,
        src: &mut R,
        framing: &F,
        budget: usize,
        mut on_unit: impl FnMut(&[u8]),
    ) -> Result<ReadStatus, ConnError> {
        debug_assert!(self.buf.len() > framing.max_frame_len());
        let mut total = 0;
        loop {
            if total >= budget {
                return Ok(ReadStatus::BudgetUsed);
            }
            let n = match src.read(&mut self.buf[self.len..]) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            total += n;
            let was_partial = self.len > 0;
            self.len += n;
            let used = framing.split(&self.buf[..self.len], &mut on_unit)?;
            self.buf.copy_within(used..self.len, 0);
            self.len -= used;
            if self.len == 0 {
                self.partial_since = None;
            } else if used > 0 || !was_partial {
                // A new incomplete frame starts waiting now.
                self.partial_since = Some(Instant::now());
            }
        }
    }

    /// Bytes of an incomplete frame held.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// How long an incomplete frame has waited for the rest of its bytes.
    pub fn stalled_for(&self, now: Instant) -> Option<Duration> {
        self.partial_since.map(|t| now.saturating_duration_since(t))
    }
}

pub struct FramedConn {
    stream: TcpStream,
    token: Token,
    input: Reassembler,
    output: Vec<u8>,
    output_pos: usize,
    output_limit: usize,
    /// Offset of the open combined frame's count field, and its records so far.
    batch_at: usize,
    batch_count: usize,
    /// Since when pending output has made no progress.
    output_since: Option<Instant>,
    write_interest: bool,
}

impl FramedConn {
    /// Wraps a connected stream that is registered for READABLE under `token`; sets
    /// TCP_NODELAY. `max_frame_len` sizes the input buffer (see [`Framing::max_frame_len`]);
    /// `output_limit` is the unsent bytes beyond which [`ConnError::Overflow`] is reported.
    pub fn new(
        stream: TcpStream,
        token: Token,
        max_frame_len: usize,
        output_limit: usize,
    ) -> io::Result<FramedConn> {
        stream.set_nodelay(true)?;
        Ok(FramedConn {
            stream,
            token,
            input: Reassembler::new(max_frame_len),
            output: Vec::new(),
            output_pos: 0,
            output_limit,
            batch_at: 0,
            batch_count: 0,
            output_since: None,
            write_interest: false,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn token(&self) -> Token {
        self.token
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }

    /// Reads up to `budget` bytes (at least one read), handing every complete unit to
    /// `on_unit` (see [`Reassembler::read_from`]).
    pub fn read_units<F: Framing>(
        &mut self,
        framing: &F,
        budget: usize,
        on_unit: impl FnMut(&[u8]),
    ) -> Result<ReadStatus, ConnError> {
        self.input
            .read_from(&mut self.stream, framing, budget, on_unit)
    }

    /// How long an incomplete frame has waited for the rest of its bytes.
    pub fn input_stalled_for(&self, now: Instant) -> Option<Duration> {
        self.input.stalled_for(now)
    }

    pub fn pending_output(&self) -> usize {
        self.output.len() - self.output_pos
    }

    /// How long pending output has made no progress.
    pub fn output_stalled_for(&self, now: Instant) -> Option<Duration> {
        self.output_since.map(|t| now.saturating_duration_since(t))
    }

    /// Queues bytes as they are (client records, bare response records). Not to be mixed
    /// with an open combined frame (it would land inside it).
    pub fn queue(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        debug_assert_eq!(self.batch_count, 0, "bytes queued into an open frame");
        self.note_pending();
        self.output.extend_from_slice(bytes);
        self.check_limit()
    }

    /// Queues one response record in the open combined frame (opening one if needed) and
    /// seals the frame when it holds `max_batch` records. Returns true if a frame was sealed.
    pub fn queue_batched(&mut self, record: &[u8], max_batch: usize) -> Result<bool, ConnError> {
        self.note_pending();
        if self.batch_count == 0 {
            self.batch_at = self.output.len();
            self.output.extend_from_slice(&[0, 0]);
        }
        self.output.extend_from_slice(record);
        self.batch_count += 1;
        let sealed = self.batch_count >= max_batch && self.seal();
        self.check_limit().map(|()| sealed)
    }

    /// Queues a full-payload data message after the records queued so far (an open combined
    /// frame is sealed first: the message goes between frames).
    pub fn queue_data(&mut self, message: &[u8]) -> Result<(), ConnError> {
        self.seal();
        self.note_pending();
        self.output.extend_from_slice(message);
        self.check_limit()
    }

    /// Closes the open combined frame (writes its count). True if there was one.
    pub fn seal(&mut self) -> bool {
        if self.batch_count == 0 {
            return false;
        }
        let count = (self.batch_count as u16).to_be_bytes();
        self.output[self.batch_at..self.batch_at + 2].copy_from_slice(&count);
        self.batch_count = 0;
        true
    }

    fn note_pending(&mut self) {
        if self.pending_output() == 0 {
            self.output_since = Some(Instant::now());
        }
    }

    fn check_limit(&self) -> Result<(), ConnError> {
        let queued = self.pending_output();
        if queued > self.output_limit {
            return Err(ConnError::Overflow { queued });
        }
        Ok(())
    }

    /// Seals the open frame, writes what the socket takes, and asks for WRITABLE only while
    /// something remains.
    pub fn flush(&mut self, registry: &Registry) -> Result<(), ConnError> {
        self.seal();
        while self.output_pos < self.output.len() {
            match self.stream.write(&self.output[self.output_pos..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => {
                    self.output_pos += n;
                    self.output_since = Some(Instant::now());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.output_pos == self.output.len() {
            self.output.clear();
            self.output_pos = 0;
            self.output_since = None;
        } else if self.output_pos >= COMPACT_AT {
            self.output.drain(..self.output_pos);
            self.output_pos = 0;
        }
        let want = self.pending_output() > 0;
        if want != self.write_interest {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry.reregister(&mut self.stream, self.token, interest)?;
            self.write_interest = want;
        }
        Ok(())
    }
}
