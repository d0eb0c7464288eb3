//! Pairing production's responses with the target's, within one connection. Sans-IO: the
//! caller feeds request boundaries, response bytes and ends of each side, and polls records.
//!
//! Responses are numbered by the request they answer: bytes a side sends before its first
//! request boundary form response 0 (a greeting, emitted only if a side had one), bytes after
//! its n-th boundary and before its next form response n. Each side counts its own boundaries,
//! so the target may lag production by any number of requests.
//!
//! - `Pairing::LockStep`: a side's response n is complete at that side's next boundary or end
//!   (request/response protocols replayed one request at a time, as tcpcopy does).
//! - `Pairing::Positional(protocol)`: boundaries are only counted; each side's byte stream is
//!   cut into messages by the protocol's framing (HTTP lengths, RESP replies), and the k-th
//!   message of one side is paired with the k-th of the other (pipelined protocols); messages
//!   are numbered from 1. Bytes have no framing: the whole stream is one message.
//!
//! A record comes out as soon as both sides' response n are complete, in order of n. A
//! response present on one side only (the other side ended, timed out or answered nothing) is
//! an `Unpaired` record.
//!
//! Memory: at most `max_bytes` response bytes are held by the pairer, half per side (waiting
//! responses included), so a side far ahead cannot starve the other. A response that would
//! pass its side's half is cut and flagged `truncated`, and the bytes dropped are counted. By position the framing is lost at a cut, so the side is then
//! treated as ended (`Gone::Overflow`). At most `max_pending` complete responses wait per side;
//! past it that side is ended the same way.

use std::collections::VecDeque;

use super::{http, resp, Protocol};

/// Which server a response comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Production,
    Target,
}

/// How responses are cut and paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pairing {
    LockStep,
    Positional(Protocol),
}

/// Why a side has no response to pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// The side's connection closed (FIN or RST) before answering.
    Closed,
    /// The side was given up on (no answer in time).
    TimedOut,
    /// The side moved on to its next request without a byte of answer.
    NoResponse,
    /// The pairer stopped following the side: its bound was reached.
    Overflow,
}

/// One side's response: the bytes kept and whether some were dropped at the bound.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

impl Response {
    /// No byte and nothing dropped: no answer.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && !self.truncated
    }
}

/// Both sides' answer to request `request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub request: u64,
    pub production: Response,
    pub target: Response,
}

/// An answer to `request` from `side` only; the other side is `gone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpaired {
    pub request: u64,
    pub side: Side,
    pub response: Response,
    pub gone: Gone,
}

/// What the pairer gives out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Pair(Pair),
    Unpaired(Unpaired),
}

#[derive(Debug, Default)]
struct SideState {
    /// Request boundaries seen.
    requests: u64,
    /// Complete responses not yet paired; the first has number `first_done`.
    done: VecDeque<Response>,
    first_done: u64,
    /// The response being received (lock-step), or the stream not yet framed (positional).
    current: Response,
    ended: Option<Gone>,
}

impl SideState {
    /// Number of the next response to complete.
    fn next_number(&self) -> u64 {
        self.first_done + self.done.len() as u64
    }
}

/// Pairs the responses of one connection. See the module documentation.
#[derive(Debug)]
pub struct Pairer {
    mode: Pairing,
    max_bytes: usize,
    max_pending: usize,
    /// Bytes held per side, at most `max_bytes / 2` each.
    held: [usize; 2],
    sides: [SideState; 2],
    next: u64,
    out: VecDeque<Record>,
    truncated_bytes: u64,
    truncated_responses: u64,
}

/// Default for `max_pending`.
pub const DEFAULT_MAX_PENDING: usize = 1024;

fn idx(side: Side) -> usize {
    match side {
        Side::Production => 0,
        Side::Target => 1,
    }
}

impl Pairer {
    /// A pairer holding at most `max_bytes` response bytes, half per side.
    pub fn new(mode: Pairing, max_bytes: usize) -> Pairer {
        // By position there is no greeting: messages are numbered from 1.
        let first = u64::from(mode != Pairing::LockStep);
        let side = || SideState {
            first_done: first,
            ..SideState::default()
        };
        Pairer {
            mode,
            max_bytes,
            max_pending: DEFAULT_MAX_PENDING,
            held: [0; 2],
            sides: [side(), side()],
            next: first,
            out: VecDeque::new(),
            truncated_bytes: 0,
            truncated_responses: 0,
        }
    }

    /// At most `n` (at least 1) complete responses wait per side.
    pub fn with_max_pending(mut self, n: usize) -> Pairer {
        self.max_pending = n.max(1);
        self
    }

    /// `side` starts its next request: the bytes that follow answer it.
    pub fn request(&mut self, side: Side) {
        let s = &mut self.sides[idx(side)];
        if s.ended.is_some() {
            return;
        }
        s.requests += 1;
        if self.mode == Pairing::LockStep {
            self.complete(side);
            self.emit();
        }
    }

    /// Response bytes from `side`.
    pub fn response(&mut self, side: Side, bytes: &[u8]) {
        let i = idx(side);
        if bytes.is_empty() {
            return;
        }
        if self.sides[i].ended.is_some() {
            self.truncated_bytes += bytes.len() as u64;
            return;
        }
        let room = (self.max_bytes / 2).saturating_sub(self.held[i]);
        let keep = bytes.len().min(room);
        let s = &mut self.sides[i];
        s.current.bytes.extend_from_slice(&bytes[..keep]);
        self.held[i] += keep;
        if keep < bytes.len() {
            self.truncated_bytes += (bytes.len() - keep) as u64;
            if !s.current.truncated {
                s.current.truncated = true;
                self.truncated_responses += 1;
            }
        }
        if let Pairing::Positional(protocol) = self.mode {
            self.frame(side, protocol, false);
            if self.sides[i].current.truncated {
                // The framing is lost: what is held goes out as one cut response.
                self.complete(side);
                self.sides[i].ended = Some(Gone::Overflow);
            }
        }
        self.emit();
    }

    /// Some of `side`'s current response was lost before it reached the pairer (a capture
    /// gap, a cap upstream, a global memory bound): the response is flagged `truncated`, and
    /// compared as such.
    pub fn mark_truncated(&mut self, side: Side) {
        let s = &mut self.sides[idx(side)];
        if s.ended.is_none() && !s.current.truncated {
            s.current.truncated = true;
            self.truncated_responses += 1;
        }
    }

    /// `side` ended: closed, or timed out (`Gone::Closed` or `Gone::TimedOut`). Its current
    /// response is complete; later input for it is ignored.
    pub fn end(&mut self, side: Side, why: Gone) {
        let i = idx(side);
        if self.sides[i].ended.is_some() {
            return;
        }
        if let Pairing::Positional(protocol) = self.mode {
            self.frame(side, protocol, true);
        }
        self.complete(side);
        if self.sides[i].ended.is_none() {
            self.sides[i].ended = Some(why);
        }
        self.emit();
    }

    /// The next record, if one is ready.
    pub fn poll(&mut self) -> Option<Record> {
        self.out.pop_front()
    }

    /// Whether both sides ended and every record was polled.
    pub fn is_finished(&self) -> bool {
        self.sides
            .iter()
            .all(|s| s.ended.is_some() && s.done.is_empty())
            && self.out.is_empty()
    }

    /// Response bytes held now, both sides (at most `max_bytes`).
    pub fn held_bytes(&self) -> usize {
        self.held[0] + self.held[1]
    }

    /// Response bytes dropped at the bound so far (and bytes after a side's end).
    pub fn truncated_bytes(&self) -> u64 {
        self.truncated_bytes
    }

    /// Responses cut at the bound so far.
    pub fn truncated_responses(&self) -> u64 {
        self.truncated_responses
    }

    /// Request boundaries seen on `side`.
    pub fn requests(&self, side: Side) -> u64 {
        self.sides[idx(side)].requests
    }

    /// Cuts the complete messages off the front of `side`'s stream.
    fn frame(&mut self, side: Side, protocol: Protocol, eof: bool) {
        let i = idx(side);
        loop {
            let s = &mut self.sides[i];
            if s.current.bytes.is_empty() || s.ended.is_some() {
                return;
            }
            let n = match protocol {
                Protocol::Http => http::message_len(&s.current.bytes, eof),
                Protocol::Redis => resp::reply_len(&s.current.bytes, eof),
                Protocol::Bytes => None,
            };
            let Some(n) = n.filter(|&n| n > 0 && n <= s.current.bytes.len()) else {
                return;
            };
            let rest = s.current.bytes.split_off(n);
            let msg = std::mem::replace(&mut s.current.bytes, rest);
            let truncated = s.current.truncated && s.current.bytes.is_empty();
            s.current.truncated &= !truncated;
            self.push_done(
                side,
                Response {
                    bytes: msg,
                    truncated,
                },
            );
        }
    }

    /// Moves `side`'s current response to its complete ones.
    fn complete(&mut self, side: Side) {
        let i = idx(side);
        if self.sides[i].ended.is_some() {
            return;
        }
        let r = std::mem::take(&mut self.sides[i].current);
        if self.mode != Pairing::LockStep && r.is_empty() {
            return;
        }
        self.push_done(side, r);
    }

    fn push_done(&mut self, side: Side, r: Response) {
        let i = idx(side);
        let s = &mut self.sides[i];
        if s.ended.is_some() {
            return;
        }
        if s.done.len() >= self.max_pending {
            // The side is no longer followed: drop this response and what is left unframed.
            let dropped = r.bytes.len() + std::mem::take(&mut s.current).bytes.len();
            self.truncated_bytes += dropped as u64;
            self.held[i] -= dropped;
            s.ended = Some(Gone::Overflow);
            return;
        }
        s.done.push_back(r);
    }

    /// Emits every record whose both sides are known.
    fn emit(&mut self) {
        loop {
            let n = self.next;
            let [p, t] = &mut self.sides;
            let pk = known(p, n);
            let tk = known(t, n);
            let (Some(pk), Some(tk)) = (pk, tk) else {
                return;
            };
            let take = |s: &mut SideState, present: bool| {
                present.then(|| {
                    s.first_done += 1;
                    s.done.pop_front().unwrap_or_default()
                })
            };
            let pr = take(p, pk.is_ok());
            let tr = take(t, tk.is_ok());
            if pr.is_none() && tr.is_none() {
                // Both sides gone: nothing more will pair.
                return;
            }
            self.next += 1;
            for (held, r) in self.held.iter_mut().zip([&pr, &tr]) {
                *held -= r.as_ref().map_or(0, |r| r.bytes.len());
            }
            // A response on one side only: the other side ended (`Err(why)`) or moved on
            // without an answer (`Ok`).
            let one_sided = |side, response, other: Result<(), Gone>| {
                Record::Unpaired(Unpaired {
                    request: n,
                    side,
                    response,
                    gone: other.err().unwrap_or(Gone::NoResponse),
                })
            };
            let record = match (pr, tr) {
                (Some(p), Some(t)) if !p.is_empty() && !t.is_empty() => Record::Pair(Pair {
                    request: n,
                    production: p,
                    target: t,
                }),
                (Some(p), _) if !p.is_empty() => one_sided(Side::Production, p, tk),
                (_, Some(t)) if !t.is_empty() => one_sided(Side::Target, t, pk),
                // No answer on either side (a request without a response, or no greeting).
                _ => continue,
            };
            self.out.push_back(record);
        }
    }
}

/// Whether `side`'s response `n` is known: `Ok` if complete and waiting, `Err(why)` if the side
/// ended without it, `None` if still to come.
fn known(s: &SideState, n: u64) -> Option<Result<(), Gone>> {
    if n < s.next_number() {
        Some(Ok(()))
    } else {
        s.ended.map(Err)
    }
}
