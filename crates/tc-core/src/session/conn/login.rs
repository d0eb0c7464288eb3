//! The session's side of database logins ([`crate::auth`]): the target's bytes go to the
//! session's [`Login`]; each captured client segment of the login is sent as captured, held
//! for the target's challenge, rewritten (its answer recomputed) or the session is dropped.
//!
//! A rewritten answer may change the segment's length: the captured client stream after it
//! is then shifted by the difference (`seq_shift`), so the target sees contiguous sequence
//! numbers.

use std::time::Instant;

use super::{seq_gt, Ctx, Session, Stored};
use crate::auth::{ClientVerdict, Login, Refusal, ServerEvent};
use crate::packet::{flags, Completeness, Segment, TcpPacket};

/// What [`Session::login_client`] decided for the front pending segment.
pub(super) enum LoginStep {
    /// Send it (as captured or rewritten).
    Go,
    /// Hold it until the target's challenge comes.
    Hold,
    /// The session was dropped.
    Dropped,
}

impl Session {
    /// A new session follows its login when the operator asked for it.
    pub(super) fn new_login(cfg: &super::ReplayConfig) -> Option<Box<Login>> {
        cfg.auth.as_ref().map(|a| Box::new(Login::new(a.protocol)))
    }

    /// New in-order target bytes at `seq` (`tgt_ack` is the first byte not seen yet);
    /// `data` is empty when the record did not carry the payload. Returns true when the
    /// session was dropped.
    pub(super) fn login_server(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        seq: u32,
        len: u32,
        data: &[u8],
    ) -> bool {
        let Some(login) = self.login.as_mut() else {
            return false;
        };
        let end = seq.wrapping_add(len);
        let event = if seq_gt(seq, self.tgt_ack) || data.len() != len as usize {
            // Bytes before these were missed, or these were not carried.
            login.on_server_missing(end.wrapping_sub(self.tgt_ack) as usize);
            None
        } else {
            let skip = self.tgt_ack.wrapping_sub(seq) as usize;
            login.on_server(&data[skip.min(data.len())..])
        };
        let user = login.user().map(str::to_string);
        let dropped = match event {
            None => false,
            Some(ServerEvent::Accepted) => {
                ctx.auth.accepted += 1;
                false
            }
            Some(ServerEvent::Rejected { user: u }) => {
                if let Some(line) = ctx.auth.rejected(u.as_deref().or(user.as_deref())) {
                    log::warn!("{line}");
                }
                false
            }
            Some(ServerEvent::Refuse(r)) => {
                self.refuse_login(ctx, now, &r);
                true
            }
        };
        self.end_login_if_done();
        dropped
    }

    /// Decides for the front pending segment (fresh, with payload) before it is sent.
    pub(super) fn login_client(&mut self, ctx: &mut Ctx, now: Instant) -> LoginStep {
        let (Some(login), Some(front)) = (self.login.as_mut(), self.pending.front()) else {
            return LoginStep::Go;
        };
        let creds = ctx.cfg.auth.as_ref().and_then(|a| a.credentials.as_ref());
        let hdr = front.layout.headers_len();
        let payload = &front.data[hdr..hdr + front.payload];
        let counted = login.rewritten();
        let step = match login.on_client(now, creds, payload) {
            ClientVerdict::Pass => LoginStep::Go,
            ClientVerdict::Wait => LoginStep::Hold,
            ClientVerdict::Replace(new) => {
                let user = login.user().map(str::to_string);
                if self.replace_front_payload(ctx, &new) {
                    if !counted {
                        ctx.auth.rewritten += 1;
                    }
                    LoginStep::Go
                } else {
                    let r = Refusal {
                        kind: crate::auth::RefusalKind::Malformed,
                        user,
                        method: "rewritten answer does not fit the segment".into(),
                    };
                    self.refuse_login(ctx, now, &r);
                    LoginStep::Dropped
                }
            }
            ClientVerdict::Refuse(r) => {
                self.refuse_login(ctx, now, &r);
                LoginStep::Dropped
            }
        };
        self.end_login_if_done();
        step
    }

    fn end_login_if_done(&mut self) {
        if self.login.as_ref().is_some_and(|l| l.is_done()) {
            // Nothing more to follow: the per-packet path is as without logins.
            self.login = None;
        }
    }

    fn refuse_login(&mut self, ctx: &mut Ctx, now: Instant, r: &Refusal) {
        if let Some(line) = ctx.auth.refused(r) {
            log::warn!("{line}");
        }
        self.login = None;
        self.teardown(ctx, now);
    }

    /// Replaces the front pending segment's payload with `new`, and shifts the captured
    /// stream after it by the length difference. False when it cannot be done.
    fn replace_front_payload(&mut self, ctx: &mut Ctx, new: &[u8]) -> bool {
        let Some(front) = self.pending.front_mut() else {
            return false;
        };
        let old_len = front.payload;
        let hdr = front.layout.headers_len();
        let total = hdr + new.len();
        if total > usize::from(u16::MAX) {
            return false;
        }
        let mut data = ctx.take_buf(&front.data[..hdr]);
        data.extend_from_slice(new);
        data[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        let Ok(mut p) = TcpPacket::parse(&mut data[..], Completeness::Whole) else {
            ctx.recycle(data);
            return false;
        };
        p.fill_checksums();
        let layout = p.segment().layout;
        let old = std::mem::replace(&mut front.data, data);
        self.buffered = self.buffered + front.data.len() - old.len();
        *ctx.unsent = *ctx.unsent + front.data.len() - old.len();
        ctx.recycle(old);
        front.layout = layout;
        front.payload = new.len();
        let fin = u32::from(front.flags & flags::FIN != 0);
        front.end = front.seq.wrapping_add(new.len() as u32 + fin);
        let delta = (new.len() as u32).wrapping_sub(old_len as u32);
        if delta != 0 {
            self.shift_after_front(delta);
        }
        true
    }

    /// Moves every captured byte after the front pending segment by `delta` (and the bytes
    /// captured later: `seq_shift`).
    fn shift_after_front(&mut self, delta: u32) {
        self.seq_shift = self.seq_shift.wrapping_add(delta);
        self.seen_end = self.seen_end.wrapping_add(delta);
        if let Some(e) = self.captured_end.as_mut() {
            *e = e.wrapping_add(delta);
        }
        for q in self.pending.iter_mut().skip(1) {
            shift(q, delta);
        }
    }

    /// A captured segment in the shifted numbering (after a rewritten login answer).
    pub(super) fn shifted(&self, seg: &Segment) -> Segment {
        Segment {
            seq: seg.seq.wrapping_add(self.seq_shift),
            ..*seg
        }
    }
}

fn shift(q: &mut Stored, delta: u32) {
    q.seq = q.seq.wrapping_add(delta);
    q.end = q.end.wrapping_add(delta);
    let seq = q.seq;
    if let Some(mut p) = q.packet() {
        p.set_seq(seq);
    }
}

/// Puts the shifted sequence number into a freshly stored copy of a captured datagram.
pub(super) fn set_stored_seq(q: &mut Stored) {
    let seq = q.seq;
    if let Some(mut p) = q.packet() {
        p.set_seq(seq);
    }
}
