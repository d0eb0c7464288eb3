//! The path probe (`tcpcopy --check`, the start-up probe and the running verdict): one probe
//! SYN from a fake client to a target, followed hop by hop, and a verdict that names the hop
//! that is broken and the command that fixes it.
//!
//! Sans-IO like the session machine: the driver feeds intercept's answers, the target's
//! responses as intercept reported them, send errors and time; the probe queues control
//! messages and segments ([`ProbeOutput`]) and, once it knows, a [`Verdict`].
//!
//! The steps:
//! 1. a [`PROBE_HELLO`] to every intercept (ours answers with its version, variant, whether
//!    its host forwards IP, and starts a broad capture of everything the target sends; the
//!    original ignores it), and a CLIENT_ADD of the probe's 4-tuple;
//! 2. the SYN (once more after a second without an answer);
//! 3. a SYN-ACK reported by intercept: the path works (the probe then resets the connection
//!    at the target); a RST: the target refuses the port;
//! 4. nothing: a [`PROBE_QUERY`] to the intercepts that answered the hello, whose broad
//!    captures tell "the filter does not match" from "the target routes the answers
//!    elsewhere" from "nothing came from the target at all".

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::control::probe::{question, ProbeReply, ReplyKind, PROBE_HELLO, PROBE_QUERY};
use crate::control::{ClientMsg, WireFormat};
use crate::packet::build::{build_segment, SegmentSpec};
use crate::packet::TcpPacket;

/// How long intercepts get to answer the hello before the SYN goes anyway.
pub const HELLO_WAIT: Duration = Duration::from_millis(700);
/// A SYN without an answer is sent once more after this.
pub const SYN_RETRY: Duration = Duration::from_secs(1);
/// After the first SYN, how long the probe waits for the target's answer.
pub const ANSWER_WAIT: Duration = Duration::from_millis(2500);
/// How long intercepts get to answer the query.
pub const QUERY_WAIT: Duration = Duration::from_millis(700);

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// What the probe needs to know of the set-up.
#[derive(Debug, Clone)]
pub struct ProbeSetup {
    pub target: SocketAddrV4,
    /// The fake client the SYN comes from.
    pub client: SocketAddrV4,
    pub isn: u32,
    /// The `-s` intercepts (their control addresses).
    pub intercepts: Vec<SocketAddr>,
    /// tcpcopy's own wire variant.
    pub wire: WireFormat,
    /// The online host's route to the target: the source address it would use, or why
    /// there is none.
    pub online_route: Result<Ipv4Addr, String>,
    /// The client network as a route fix names it (e.g. `203.0.113.0/24`).
    pub client_net: String,
}

/// Something the driver must do for the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutput {
    /// A control record to one intercept (index into `ProbeSetup::intercepts`).
    Ask { intercept: usize, msg: ClientMsg },
    /// A CLIENT_ADD of the probe's 4-tuple, to every intercept.
    Announce(ClientMsg),
    /// A segment to send to the target (IPv4 datagram, checksums set).
    Send(Vec<u8>),
}

/// One line of a verdict: which hop, what was seen, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub hop: String,
    pub seen: String,
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = if self.ok { "ok" } else { "FAIL" };
        write!(f, "[{tag}] {}: {}", self.hop, self.seen)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// The probe's conclusion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The path works: every finding is ok.
    pub ok: bool,
    pub findings: Vec<Finding>,
}

impl Verdict {
    /// The first failing finding (the broken hop), if any.
    pub fn broken(&self) -> Option<&Finding> {
        self.findings.iter().find(|f| !f.ok)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Hello,
    Syn,
    Query,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    SynAck { intercept: usize },
    Reset { intercept: usize },
}

pub struct Probe {
    setup: ProbeSetup,
    step: Step,
    deadline: Instant,
    first_syn: Option<Instant>,
    syns: u32,
    answer: Option<Answer>,
    hello: Vec<Option<ProbeReply>>,
    seen: Vec<Option<ProbeReply>>,
    /// Why a tunnel to an intercept broke during the probe.
    tunnel_errors: Vec<Option<String>>,
    send_error: Option<String>,
    out: Vec<ProbeOutput>,
    verdict: Option<Verdict>,
}

impl Probe {
    pub fn start(setup: ProbeSetup, now: Instant) -> Probe {
        let n = setup.intercepts.len();
        let mut p = Probe {
            step: Step::Hello,
            deadline: now + HELLO_WAIT,
            first_syn: None,
            syns: 0,
            answer: None,
            hello: vec![None; n],
            seen: vec![None; n],
            tunnel_errors: vec![None; n],
            send_error: None,
            out: Vec::new(),
            verdict: None,
            setup,
        };
        for i in 0..n {
            let msg = question(PROBE_HELLO, p.setup.client, p.setup.target);
            p.out.push(ProbeOutput::Ask { intercept: i, msg });
        }
        let (c, t) = (p.setup.client, p.setup.target);
        p.out.push(ProbeOutput::Announce(ClientMsg::add(
            *c.ip(),
            c.port(),
            *t.ip(),
            t.port(),
        )));
        p
    }

    pub fn setup(&self) -> &ProbeSetup {
        &self.setup
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<ProbeOutput> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        (self.step != Step::Done).then_some(self.deadline)
    }

    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    /// True when a response record belongs to this probe (from the target to the client).
    pub fn owns_response(&self, pkt: &TcpPacket<&[u8]>) -> bool {
        pkt.src_ip() == *self.setup.target.ip()
            && pkt.src_port() == self.setup.target.port()
            && pkt.dst_ip() == *self.setup.client.ip()
            && pkt.dst_port() == self.setup.client.port()
    }

    /// True when an intercept's reply is about this probe.
    pub fn owns_reply(&self, reply: &ProbeReply) -> bool {
        reply.client == self.setup.client && reply.target == self.setup.target
    }

    pub fn on_reply(&mut self, intercept: usize, reply: ProbeReply, now: Instant) {
        if intercept >= self.hello.len() {
            return;
        }
        match reply.kind {
            ReplyKind::Hello => {
                self.hello[intercept] = Some(reply);
                if self.step == Step::Hello && self.hello.iter().all(Option::is_some) {
                    self.send_syn(now);
                }
            }
            ReplyKind::Seen => {
                self.seen[intercept] = Some(reply);
                if self.step == Step::Query && self.all_queried_answered() {
                    self.finish();
                }
            }
        }
    }

    /// A response of the target to the probe client, as intercept `intercept` reported it.
    pub fn on_response(&mut self, intercept: usize, pkt: &TcpPacket<&[u8]>, now: Instant) {
        if !self.owns_response(pkt) || self.answer.is_some() || self.step == Step::Done {
            return;
        }
        let flags = pkt.flags();
        if flags & RST != 0 {
            self.answer = Some(Answer::Reset { intercept });
            self.finish();
        } else if flags & (SYN | ACK) == SYN | ACK {
            self.answer = Some(Answer::SynAck { intercept });
            let _ = now;
            self.finish();
        }
    }

    /// Sending a probe segment failed.
    pub fn on_send_error(&mut self, error: String) {
        self.send_error.get_or_insert(error);
    }

    /// The tunnel to an intercept broke (a frame that does not parse: another variant).
    pub fn on_tunnel_error(&mut self, intercept: usize, error: String) {
        if let Some(slot) = self.tunnel_errors.get_mut(intercept) {
            slot.get_or_insert(error);
        }
    }

    pub fn on_timeout(&mut self, now: Instant) {
        if self.step == Step::Done || now < self.deadline {
            return;
        }
        match self.step {
            Step::Hello => self.send_syn(now),
            Step::Syn => {
                let first = self.first_syn.unwrap_or(now);
                if now >= first + ANSWER_WAIT {
                    self.query(now);
                } else {
                    // One retransmission, then wait out the rest.
                    self.send_syn(now);
                }
            }
            Step::Query => self.finish(),
            Step::Done => {}
        }
    }

    fn send_syn(&mut self, now: Instant) {
        let (c, t) = (self.setup.client, self.setup.target);
        let spec = SegmentSpec {
            src: (*c.ip()).into(),
            dst: (*t.ip()).into(),
            src_port: c.port(),
            dst_port: t.port(),
            seq: self.setup.isn,
            ack: 0,
            flags: SYN,
            window: 65535,
            ip_id: self.syns as u16,
            mss: Some(1460),
            timestamps: None,
            payload: &[],
        };
        self.push_segment(&spec);
        self.syns += 1;
        self.step = Step::Syn;
        let first = *self.first_syn.get_or_insert(now);
        self.deadline = if self.syns < 2 {
            now + SYN_RETRY
        } else {
            first + ANSWER_WAIT
        };
    }

    fn push_segment(&mut self, spec: &SegmentSpec) {
        let mut buf = vec![0u8; 64];
        match build_segment(spec, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                self.out.push(ProbeOutput::Send(buf));
            }
            Err(e) => self.send_error = Some(e.to_string()),
        }
    }

    fn query(&mut self, now: Instant) {
        self.step = Step::Query;
        self.deadline = now + QUERY_WAIT;
        let mut asked = false;
        for i in 0..self.hello.len() {
            if self.hello[i].is_some() {
                let msg = question(PROBE_QUERY, self.setup.client, self.setup.target);
                self.out.push(ProbeOutput::Ask { intercept: i, msg });
                asked = true;
            }
        }
        if !asked {
            self.finish();
        }
    }

    fn all_queried_answered(&self) -> bool {
        self.hello
            .iter()
            .zip(&self.seen)
            .all(|(h, s)| h.is_none() || s.is_some())
    }

    fn finish(&mut self) {
        if self.syns > 0 && !matches!(self.answer, Some(Answer::Reset { .. })) {
            // Leave nothing half-open at the target (answered, or answered where intercept
            // did not see it): reset the probe connection; in its SYN-RECV state the
            // target takes a RST with the sequence number after the SYN.
            let (c, t) = (self.setup.client, self.setup.target);
            let spec = SegmentSpec {
                src: (*c.ip()).into(),
                dst: (*t.ip()).into(),
                src_port: c.port(),
                dst_port: t.port(),
                seq: self.setup.isn.wrapping_add(1),
                ack: 0,
                flags: RST,
                window: 0,
                ip_id: 0,
                mss: None,
                timestamps: None,
                payload: &[],
            };
            self.push_segment(&spec);
        }
        self.step = Step::Done;
        self.verdict = Some(self.conclude());
    }

    fn conclude(&self) -> Verdict {
        let s = &self.setup;
        let mut findings = Vec::new();
        let (target, client) = (s.target, s.client);
        let variant = |combined: bool, payload: bool| {
            format!(
                "{}{}",
                if combined { "combined" } else { "bare" },
                if payload {
                    " payload records"
                } else {
                    " records"
                }
            )
        };
        let ours = variant(s.wire.combined, s.wire.payload);
        // Hop 1: the control channel of each intercept.
        for (i, addr) in s.intercepts.iter().enumerate() {
            let hop = format!("intercept {addr}");
            if let Some(e) = &self.tunnel_errors[i] {
                findings.push(Finding {
                    ok: false,
                    hop,
                    seen: format!("the control channel broke: {e} (tcpcopy expects {ours})"),
                    fix: Some(
                        "give tcpcopy and intercept the same --payload and --disable-combined"
                            .into(),
                    ),
                });
                continue;
            }
            match &self.hello[i] {
                Some(h) => {
                    let theirs = variant(h.combined, h.payload);
                    let (a, b, c) = h.version;
                    findings.push(Finding {
                        ok: theirs == ours,
                        hop,
                        seen: format!(
                            "tcpcopy-rs intercept {a}.{b}.{c}, {theirs}{}",
                            if h.full_payload {
                                ", full payloads granted (--full-payload)"
                            } else {
                                ""
                            }
                        ),
                        fix: (theirs != ours).then(|| {
                            format!("tcpcopy uses {ours}: give both sides the same --payload and --disable-combined")
                        }),
                    });
                    if h.ip_forward == Some(true) {
                        findings.push(Finding {
                            ok: false,
                            hop: format!("intercept host {}", addr.ip()),
                            seen: "forwards IP packets (net.ipv4.ip_forward=1): the target's answers go on to the fake clients".into(),
                            fix: Some("on the intercept host: sysctl -w net.ipv4.ip_forward=0".into()),
                        });
                    }
                }
                None => findings.push(Finding {
                    ok: true,
                    hop,
                    seen: "connected; no answer to the probe question: the original intercept (or an older one), whose version and variant cannot be told".into(),
                    fix: None,
                }),
            }
        }
        // Hop 2: the path of the probe.
        let route_fix = |via: &SocketAddr| {
            if via.ip() == std::net::IpAddr::V4(*target.ip()) || via.ip().is_loopback() {
                // intercept runs on the target itself (two hosts, or one): it routes the
                // fake clients to itself with --route; no gateway route can do that.
                format!(
                    "on the target, where intercept runs: intercept --route {}",
                    s.client_net
                )
            } else {
                format!(
                    "on the target: ip route add {} via {}",
                    s.client_net,
                    via.ip()
                )
            }
        };
        let first_intercept = s.intercepts.first().copied();
        match self.answer {
            Some(Answer::SynAck { intercept }) => findings.push(Finding {
                ok: true,
                hop: format!("target {target}"),
                seen: format!(
                    "answered the probe SYN from {client} with a SYN-ACK, seen by intercept {} (the probe was reset)",
                    s.intercepts.get(intercept).map(|a| a.to_string()).unwrap_or_default()
                ),
                fix: None,
            }),
            Some(Answer::Reset { .. }) => findings.push(Finding {
                ok: false,
                hop: format!("target {target}"),
                seen: format!(
                    "refused the probe from {client} with a RST: port {} is closed or refuses connections",
                    target.port()
                ),
                fix: Some(format!(
                    "start the test server on {target}, or correct the target of -x"
                )),
            }),
            None => findings.push(self.nothing_came_back(&route_fix, first_intercept)),
        }
        Verdict {
            ok: findings.iter().all(|f| f.ok),
            findings,
        }
    }

    /// The SYN got no answer through intercept: which hop?
    fn nothing_came_back(
        &self,
        route_fix: &dyn Fn(&SocketAddr) -> String,
        first_intercept: Option<SocketAddr>,
    ) -> Finding {
        let s = &self.setup;
        let (target, client) = (s.target, s.client);
        let waited = ANSWER_WAIT.as_millis() as f64 / 1000.0;
        if let Some(e) = &self.send_error {
            return Finding {
                ok: false,
                hop: format!("online host -> target {}", target.ip()),
                seen: format!("sending the probe SYN failed: {e}"),
                fix: Some(format!(
                    "on the online host: check the route and firewall to {}",
                    target.ip()
                )),
            };
        }
        if let Err(e) = &s.online_route {
            return Finding {
                ok: false,
                hop: format!("online host -> target {}", target.ip()),
                seen: format!("no route to the target: {e}"),
                fix: Some(format!(
                    "on the online host: ip route add {} via GATEWAY",
                    target.ip()
                )),
            };
        }
        // Evidence of intercepts that watched.
        let watched: Vec<(usize, &ProbeReply)> = self
            .seen
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().filter(|r| r.watching).map(|r| (i, r)))
            .collect();
        if let Some((i, r)) = watched.iter().find(|(_, r)| r.to_client > 0) {
            let addr = s.intercepts[*i];
            return Finding {
                ok: false,
                hop: format!("intercept {addr} filter (-F)"),
                seen: format!(
                    "the target's answers to {} reach the intercept host ({} packets, flags {}) but intercept's filter does not capture them",
                    client.ip(),
                    r.to_client,
                    flag_names(r.to_client_flags)
                ),
                fix: Some(format!(
                    "on the intercept host: intercept -F 'tcp and src port {}'",
                    target.port()
                )),
            };
        }
        if let Some((i, r)) = watched.iter().find(|(_, r)| r.from_target > 0) {
            let addr = s.intercepts[*i];
            let other = if r.other_destination.is_unspecified() {
                String::new()
            } else {
                format!(", e.g. to {}", r.other_destination)
            };
            return Finding {
                ok: false,
                hop: format!("target {} route", target.ip()),
                seen: format!(
                    "the target sends packets to the intercept host {} ({} seen{other}) but none to the fake client {}: it does not route {} there",
                    addr.ip(),
                    r.from_target,
                    client.ip(),
                    s.client_net
                ),
                fix: Some(route_fix(&addr)),
            };
        }
        if let Some((i, _)) = watched.first() {
            let addr = s.intercepts[*i];
            return Finding {
                ok: false,
                hop: format!("target {} route", target.ip()),
                seen: format!(
                    "no packet from the target reached the intercept host {} in {waited} s: the target does not route {} to it, or the target never got the SYN (tcpcopy sent it without error)",
                    addr.ip(),
                    s.client_net
                ),
                fix: Some(route_fix(&addr)),
            };
        }
        let via = first_intercept.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let why = if self.hello.iter().any(Option::is_some) {
            "intercept could not watch the target's packets (no broad capture)"
        } else {
            "the original intercept cannot tell whether any packet from the target reaches it"
        };
        Finding {
            ok: false,
            hop: format!("target {target} -> intercept"),
            seen: format!(
                "no answer to the probe SYN from {client} within {waited} s; {why}: the target does not route {} to the intercept host, or intercept's -F does not match its answers, or the target never got the SYN",
                s.client_net
            ),
            fix: Some(format!(
                "{}; and: intercept -F 'tcp and src port {}'",
                route_fix(&via),
                target.port()
            )),
        }
    }
}

/// `SA`, `R`, ... for a finding.
fn flag_names(flags: u8) -> String {
    let names = [
        (0x02, 'S'),
        (0x10, 'A'),
        (0x04, 'R'),
        (0x01, 'F'),
        (0x08, 'P'),
    ];
    names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// The network a route fix names for a fake client address: its /24.
pub fn client_net_of(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.0/24", o[0], o[1], o[2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Completeness;

    fn setup() -> ProbeSetup {
        ProbeSetup {
            target: "198.18.0.20:8080".parse().unwrap(),
            client: "203.0.113.9:61234".parse().unwrap(),
            isn: 1000,
            intercepts: vec!["198.18.0.40:36524".parse().unwrap()],
            wire: WireFormat::default(),
            online_route: Ok(Ipv4Addr::new(198, 18, 0, 10)),
            client_net: "203.0.113.0/24".into(),
        }
    }

    fn drain(p: &mut Probe) -> Vec<ProbeOutput> {
        std::iter::from_fn(|| p.poll_output()).collect()
    }

    fn reply(kind: ReplyKind, p: &Probe) -> ProbeReply {
        ProbeReply {
            kind,
            version: (0, 1, 0),
            combined: true,
            payload: false,
            full_payload: false,
            ip_forward: Some(false),
            watching: true,
            client: p.setup.client,
            target: p.setup.target,
            from_target: 0,
            to_client: 0,
            to_client_flags: 0,
            other_destination: Ipv4Addr::UNSPECIFIED,
            captured_total: 0,
        }
    }

    fn answer(p: &Probe, flags: u8) -> Vec<u8> {
        let (c, t) = (p.setup.client, p.setup.target);
        let spec = SegmentSpec {
            src: (*t.ip()).into(),
            dst: (*c.ip()).into(),
            src_port: t.port(),
            dst_port: c.port(),
            seq: 5000,
            ack: 1001,
            flags,
            window: 100,
            ip_id: 0,
            mss: None,
            timestamps: None,
            payload: &[],
        };
        let mut b = vec![0u8; 64];
        let n = build_segment(&spec, &mut b).unwrap();
        b.truncate(n);
        b
    }

    #[test]
    fn a_syn_ack_means_the_path_works_and_the_probe_is_reset() {
        let t0 = Instant::now();
        let mut p = Probe::start(setup(), t0);
        let out = drain(&mut p);
        assert!(matches!(out[0], ProbeOutput::Ask { msg, .. } if msg.kind == PROBE_HELLO));
        assert!(matches!(out[1], ProbeOutput::Announce(m) if m.kind == 1));
        let hello = reply(ReplyKind::Hello, &p);
        p.on_reply(0, hello, t0);
        let out = drain(&mut p);
        let ProbeOutput::Send(syn) = &out[0] else {
            panic!("{out:?}")
        };
        let syn = TcpPacket::parse(&syn[..], Completeness::Whole).unwrap();
        assert_eq!(syn.flags(), SYN);
        let sa = answer(&p, SYN | ACK);
        let pkt = TcpPacket::parse(&sa[..], Completeness::HeadersOnly).unwrap();
        p.on_response(0, &pkt, t0);
        let out = drain(&mut p);
        let ProbeOutput::Send(rst) = &out[0] else {
            panic!("{out:?}")
        };
        let rst = TcpPacket::parse(&rst[..], Completeness::Whole).unwrap();
        assert_eq!((rst.flags(), rst.seq()), (RST, 1001));
        let v = p.verdict().unwrap();
        assert!(v.ok, "{v:?}");
        assert!(v.findings[1].seen.contains("SYN-ACK"));
    }

    #[test]
    fn a_reset_names_the_closed_port() {
        let t0 = Instant::now();
        let mut p = Probe::start(setup(), t0);
        p.on_timeout(t0 + HELLO_WAIT);
        let r = answer(&p, RST | ACK);
        let pkt = TcpPacket::parse(&r[..], Completeness::HeadersOnly).unwrap();
        p.on_response(0, &pkt, t0);
        let v = p.verdict().unwrap();
        assert!(!v.ok);
        let b = v.broken().unwrap();
        assert!(b.seen.contains("port 8080 is closed"), "{b}");
    }

    /// Runs a probe that gets no answer, with `seen` as the intercept's query answer.
    fn silent(seen: Option<ProbeReply>, hello: bool) -> Verdict {
        silent_with(setup(), seen, hello)
    }

    fn silent_with(setup: ProbeSetup, seen: Option<ProbeReply>, hello: bool) -> Verdict {
        let t0 = Instant::now();
        let mut p = Probe::start(setup, t0);
        if hello {
            p.on_reply(0, reply(ReplyKind::Hello, &p), t0);
        }
        let mut now = t0;
        for _ in 0..20 {
            now += Duration::from_millis(300);
            p.on_timeout(now);
            let asked = drain(&mut p)
                .iter()
                .any(|o| matches!(o, ProbeOutput::Ask { msg, .. } if msg.kind == PROBE_QUERY));
            if asked {
                if let Some(s) = seen {
                    p.on_reply(0, s, now);
                }
            }
            if p.verdict().is_some() {
                break;
            }
        }
        assert!(now - t0 < Duration::from_secs(5), "took {:?}", now - t0);
        p.verdict().cloned().expect("a verdict")
    }

    #[test]
    fn silence_is_told_apart_by_the_broad_capture() {
        let p = Probe::start(setup(), Instant::now());
        let base = reply(ReplyKind::Seen, &p);
        let filter = silent(
            Some(ProbeReply {
                from_target: 3,
                to_client: 2,
                to_client_flags: SYN | ACK,
                ..base
            }),
            true,
        );
        let b = filter.broken().unwrap();
        assert!(b.hop.contains("filter"), "{b}");
        assert!(b.fix.as_ref().unwrap().contains("src port 8080"), "{b}");

        let route = silent(
            Some(ProbeReply {
                from_target: 4,
                other_destination: Ipv4Addr::new(198, 18, 0, 10),
                ..base
            }),
            true,
        );
        let b = route.broken().unwrap();
        assert!(b.hop.contains("route"), "{b}");
        assert_eq!(
            b.fix.as_deref(),
            Some("on the target: ip route add 203.0.113.0/24 via 198.18.0.40")
        );

        // Two hosts: intercept on the target itself routes with --route.
        let mut two_hosts = setup();
        two_hosts.intercepts = vec!["198.18.0.20:36524".parse().unwrap()];
        let v = silent_with(two_hosts, Some(base), true);
        let b = v.broken().unwrap();
        assert_eq!(
            b.fix.as_deref(),
            Some("on the target, where intercept runs: intercept --route 203.0.113.0/24")
        );

        let nothing = silent(Some(base), true);
        let b = nothing.broken().unwrap();
        assert!(b.seen.contains("no packet from the target"), "{b}");

        let original = silent(None, false);
        let b = original.broken().unwrap();
        assert!(b.seen.contains("original intercept"), "{b}");
    }

    #[test]
    fn forwarding_on_the_intercept_host_fails_even_when_answers_are_seen() {
        let t0 = Instant::now();
        let mut p = Probe::start(setup(), t0);
        let mut hello = reply(ReplyKind::Hello, &p);
        hello.ip_forward = Some(true);
        p.on_reply(0, hello, t0);
        let sa = answer(&p, SYN | ACK);
        let pkt = TcpPacket::parse(&sa[..], Completeness::HeadersOnly).unwrap();
        p.on_response(0, &pkt, t0);
        let v = p.verdict().unwrap();
        assert!(!v.ok);
        assert!(v
            .broken()
            .unwrap()
            .fix
            .as_ref()
            .unwrap()
            .contains("ip_forward=0"));
    }

    #[test]
    fn a_variant_mismatch_and_a_send_error_are_named() {
        let t0 = Instant::now();
        let mut p = Probe::start(setup(), t0);
        let mut hello = reply(ReplyKind::Hello, &p);
        hello.payload = true;
        p.on_reply(0, hello, t0);
        p.on_send_error("Network is unreachable".into());
        let mut now = t0;
        while p.verdict().is_none() {
            now += Duration::from_millis(500);
            p.on_timeout(now);
        }
        let v = p.verdict().unwrap();
        let fails: Vec<String> = v
            .findings
            .iter()
            .filter(|f| !f.ok)
            .map(|f| f.to_string())
            .collect();
        assert!(fails[0].contains("same --payload"), "{fails:?}");
        assert!(fails[1].contains("Network is unreachable"), "{fails:?}");
    }
}
