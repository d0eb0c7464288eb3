//! The path probe against the real tunnels and send socket: `tcpcopy --check`, the probe at
//! start-up, and the verdict while running (tc_core::diagnose decides; this moves bytes).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use tc_core::control::probe::ProbeReply;
use tc_core::control::{record_view, WireFormat};
use tc_core::diagnose::{client_net_of, Probe, ProbeOutput, ProbeSetup, Verdict};

use tc_core::session::ReplayStats;

use crate::cli::Options;
use crate::output::ReplayOutput;

/// Probe client ports come from this range (above Linux's default ephemeral ports, so a
/// probe does not take the 4-tuple of a real client).
const PROBE_PORT_BASE: u16 = 61_000;
const PROBE_PORT_SPAN: u16 = 4_000;

/// One probe per `-x` target.
pub struct Diagnosis {
    probes: Vec<Probe>,
}

/// The online host's route to `target`: the source address it would use, or why there is
/// none (a UDP connect sends nothing).
pub fn online_route(target: SocketAddrV4) -> Result<Ipv4Addr, String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.connect(target).map_err(|e| e.to_string())?;
    match sock.local_addr().map_err(|e| e.to_string())? {
        std::net::SocketAddr::V4(a) => Ok(*a.ip()),
        other => Err(format!("unexpected local address {other}")),
    }
}

/// What a probe of this run needs: the `-x` targets, the `-s` intercepts, the variant, and
/// the fake client (`--probe-client`, else the first `-c` address; `None`: a captured
/// client's address, known once traffic comes).
#[derive(Debug, Clone)]
pub struct ProbePlan {
    pub targets: Vec<SocketAddrV4>,
    pub intercepts: Vec<std::net::SocketAddr>,
    pub wire: WireFormat,
    pub client: Option<Ipv4Addr>,
}

impl ProbePlan {
    pub fn of(options: &Options) -> ProbePlan {
        let mut targets: Vec<SocketAddrV4> = Vec::new();
        for t in &options.replay.transfers {
            // The path probe speaks IPv4 (its records are the original's).
            let std::net::IpAddr::V4(ip) = t.dst_ip else {
                continue;
            };
            let a = SocketAddrV4::new(ip, t.dst_port);
            if !targets.contains(&a) {
                targets.push(a);
            }
        }
        ProbePlan {
            targets,
            intercepts: options.intercepts.clone(),
            wire: options.wire,
            client: options.probe_client.or_else(|| {
                options.replay.client_ips.iter().find_map(|ip| match ip {
                    std::net::IpAddr::V4(a) => Some(*a),
                    std::net::IpAddr::V6(_) => None,
                })
            }),
        }
    }

    /// The probes: from `client` to every target.
    pub fn setups(&self, client: Ipv4Addr, seed: u64) -> Vec<ProbeSetup> {
        let mut x = seed | 1;
        let mut next = || {
            // xorshift: a port and an ISN nobody predicts from the last run.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        self.targets
            .iter()
            .map(|&target| {
                let port = PROBE_PORT_BASE + (next() % u64::from(PROBE_PORT_SPAN)) as u16;
                ProbeSetup {
                    target,
                    client: SocketAddrV4::new(client, port),
                    isn: next() as u32,
                    intercepts: self.intercepts.clone(),
                    wire: self.wire,
                    online_route: online_route(target),
                    client_net: client_net_of(client),
                }
            })
            .collect()
    }
}

/// The seed of a probe: the clock and the pid.
pub fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

impl Diagnosis {
    pub fn start(setups: Vec<ProbeSetup>, now: Instant, output: &mut ReplayOutput) -> Diagnosis {
        for s in &setups {
            log::info!(
                "probe: SYN from {} to {} (intercepts: {})",
                s.client,
                s.target,
                s.intercepts
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        let mut d = Diagnosis {
            probes: setups.into_iter().map(|s| Probe::start(s, now)).collect(),
        };
        output.tunnels.take_protocol_errors();
        d.pump(output);
        d
    }

    /// Performs what the probes queued.
    pub fn pump(&mut self, output: &mut ReplayOutput) {
        for (i, e) in output.tunnels.take_protocol_errors() {
            for p in &mut self.probes {
                p.on_tunnel_error(i, e.clone());
            }
        }
        for p in &mut self.probes {
            while let Some(o) = p.poll_output() {
                match o {
                    ProbeOutput::Ask { intercept, msg } => {
                        output.tunnels.ask(intercept, &msg);
                    }
                    ProbeOutput::Announce(m) => output.announce_probe(&m),
                    ProbeOutput::Send(datagram) => {
                        if let Err(e) = output.send_probe(&datagram) {
                            p.on_send_error(e);
                        }
                    }
                }
            }
        }
    }

    /// A record from intercept `intercept`: true when it was the probe's (a reply, or the
    /// target's answer to the probe client), which the replay must not see.
    pub fn on_record(&mut self, intercept: Option<usize>, record: &[u8], now: Instant) -> bool {
        if ProbeReply::is_reply(record) {
            if let (Some(r), Some(i)) = (ProbeReply::parse(record), intercept) {
                for p in self.probes.iter_mut().filter(|p| p.owns_reply(&r)) {
                    p.on_reply(i, r, now);
                }
            }
            return true;
        }
        let mut norm = [0u8; 256];
        let Some(pkt) = record_view(record, &mut norm) else {
            return false;
        };
        let mut ours = false;
        for p in self.probes.iter_mut().filter(|p| p.owns_response(&pkt)) {
            p.on_response(intercept.unwrap_or(0), &pkt, now);
            ours = true;
        }
        ours
    }

    pub fn on_timer(&mut self, now: Instant) {
        for p in &mut self.probes {
            p.on_timeout(now);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.probes.iter().filter_map(Probe::next_deadline).min()
    }

    /// Every probe's verdict, once all are known.
    pub fn verdicts(&self) -> Option<Vec<(SocketAddrV4, &Verdict)>> {
        self.probes
            .iter()
            .map(|p| p.verdict().map(|v| (p.setup().target, v)))
            .collect()
    }
}

/// When sessions stop establishing or responses stop, for how long; judged once a second
/// from the statistics' deltas.
#[derive(Debug, Default)]
pub struct Health {
    last: (u64, u64, u64, u64),
    trouble_since: Option<Instant>,
}

/// Trouble this long starts a running probe.
pub const TROUBLE_BEFORE_PROBE: Duration = Duration::from_secs(3);
/// A running verdict is repeated at most this often.
pub const VERDICT_REPEAT: Duration = Duration::from_secs(60);

impl Health {
    /// `syn`: SYNs sent; `conns`: handshakes completed; `requests`: request segments sent;
    /// `answers`: responses with content. Returns how long things have been wrong.
    pub fn update(
        &mut self,
        now: Instant,
        syn: u64,
        conns: u64,
        requests: u64,
        answers: u64,
    ) -> Option<Duration> {
        let (s0, c0, r0, a0) = self.last;
        self.last = (syn, conns, requests, answers);
        let (ds, dc, dr, da) = (
            syn.saturating_sub(s0),
            conns.saturating_sub(c0),
            requests.saturating_sub(r0),
            answers.saturating_sub(a0),
        );
        let healthy = dc > 0 || da > 0;
        let failing = (ds > 0 && dc == 0) || (dr > 0 && da == 0);
        if healthy {
            self.trouble_since = None;
        } else if failing {
            self.trouble_since.get_or_insert(now);
        }
        self.trouble_since.map(|t| now.duration_since(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trouble_is_sessions_that_do_not_establish_or_requests_without_answers() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.update(t0, 0, 0, 0, 0), None);
        // SYNs go out, nothing establishes.
        assert_eq!(h.update(t0, 5, 0, 0, 0), Some(Duration::ZERO));
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(h.update(t3, 9, 0, 0, 0), Some(Duration::from_secs(3)));
        // A quiet second keeps the trouble (nothing got better).
        assert!(h.update(t3, 9, 0, 0, 0).is_some());
        // One handshake: healthy again.
        assert_eq!(h.update(t3, 10, 1, 0, 0), None);
        // Requests without answers.
        assert!(h.update(t3, 10, 1, 4, 0).is_some());
        assert_eq!(h.update(t3, 10, 1, 4, 2), None);
    }

    #[test]
    fn the_online_route_is_read_without_sending() {
        assert_eq!(
            online_route("127.0.0.1:9".parse().unwrap()),
            Ok(Ipv4Addr::LOCALHOST)
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    StartUp,
    Running { failing_for: Duration },
}

/// The probe of a running tcpcopy: once at start-up, and again when sessions stop
/// establishing or responses stop (a verdict line within 10 s, the same line at most once a
/// minute).
pub struct Diagnostician {
    plan: ProbePlan,
    active: Option<(Diagnosis, Purpose)>,
    health: Health,
    /// When the last running probe started (none since sessions last worked).
    last_probe: Option<Instant>,
    /// The last verdict lines logged, and when.
    last_lines: Option<(Instant, Vec<String>)>,
    next_tick: Instant,
    /// The address of a captured client, for a probe without `-c`/`--probe-client`.
    pub learned_client: Option<Ipv4Addr>,
    no_client_noted: bool,
}

impl Diagnostician {
    pub fn new(plan: ProbePlan, now: Instant) -> Diagnostician {
        Diagnostician {
            plan,
            active: None,
            health: Health::default(),
            last_probe: None,
            last_lines: None,
            next_tick: now + Duration::from_secs(1),
            learned_client: None,
            no_client_noted: false,
        }
    }

    /// Whether the captured clients' addresses are wanted (no fixed probe client).
    pub fn learns_client(&self) -> bool {
        self.plan.client.is_none()
    }

    /// The start-up probe (or why there is none).
    pub fn start_up(&mut self, now: Instant, output: &mut ReplayOutput) {
        match self.plan.client {
            Some(client) => {
                let setups = self.plan.setups(client, seed());
                self.active = Some((Diagnosis::start(setups, now, output), Purpose::StartUp));
            }
            None => log::info!(
                "start-up probe skipped: no fake client address (-c or --probe-client); when sessions fail, the probe comes from a captured client's address"
            ),
        }
    }

    pub fn next_deadline(&self) -> Instant {
        let probe = self.active.as_ref().and_then(|(d, _)| d.next_deadline());
        probe.map_or(self.next_tick, |p| p.min(self.next_tick))
    }

    /// A record from intercept: true when it is the probe's and not the replay's.
    pub fn on_record(&mut self, intercept: Option<usize>, record: &[u8], now: Instant) -> bool {
        match self.active.as_mut() {
            Some((d, _)) => d.on_record(intercept, record, now),
            // A late reply of a finished probe.
            None => ProbeReply::is_reply(record),
        }
    }

    /// Timers, the health judgement, and verdicts.
    pub fn tick(&mut self, now: Instant, stats: &ReplayStats, output: &mut ReplayOutput) {
        if let Some((d, _)) = self.active.as_mut() {
            d.on_timer(now);
            d.pump(output);
        }
        let done = self
            .active
            .as_ref()
            .is_some_and(|(d, _)| d.verdicts().is_some());
        if done {
            if let Some((d, purpose)) = self.active.take() {
                self.report(&d, purpose, now);
            }
        }
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + Duration::from_secs(1);
        let failing = self.health.update(
            now,
            stats.send_syn,
            stats.conns,
            stats.send_content,
            stats.resp_content,
        );
        let Some(failing_for) = failing else {
            // Sessions work: the next trouble is probed at once.
            self.last_probe = None;
            return;
        };
        if failing_for < TROUBLE_BEFORE_PROBE
            || self.active.is_some()
            || self
                .last_probe
                .is_some_and(|t| now.duration_since(t) < VERDICT_REPEAT)
        {
            return;
        }
        let Some(client) = self.plan.client.or(self.learned_client) else {
            if !self.no_client_noted {
                self.no_client_noted = true;
                log::warn!("sessions fail for {} s; no probe: no client address known (give -c or --probe-client)", failing_for.as_secs());
            }
            return;
        };
        self.last_probe = Some(now);
        let setups = self.plan.setups(client, seed());
        self.active = Some((
            Diagnosis::start(setups, now, output),
            Purpose::Running { failing_for },
        ));
    }

    fn report(&mut self, d: &Diagnosis, purpose: Purpose, now: Instant) {
        let Some(verdicts) = d.verdicts() else {
            return;
        };
        let mut lines = Vec::new();
        for (_, v) in &verdicts {
            match purpose {
                Purpose::StartUp => {
                    for f in &v.findings {
                        if f.ok {
                            log::info!("start-up probe: {f}");
                        } else {
                            log::warn!("start-up probe: {f}");
                        }
                    }
                }
                Purpose::Running { .. } => {
                    lines.extend(v.findings.iter().filter(|f| !f.ok).map(|f| f.to_string()));
                    if v.ok {
                        lines.push(format!(
                            "the probe's path works ({}): the failing sessions are not a path problem (target overloaded or answering slowly?)",
                            v.findings.last().map(|f| f.seen.as_str()).unwrap_or("")
                        ));
                    }
                }
            }
        }
        if let Purpose::Running { failing_for } = purpose {
            let repeated = self
                .last_lines
                .as_ref()
                .is_some_and(|(t, l)| *l == lines && now.duration_since(*t) < VERDICT_REPEAT);
            if !repeated {
                for l in &lines {
                    log::warn!(
                        "verdict (sessions failing for {} s): {l}",
                        failing_for.as_secs()
                    );
                }
                self.last_lines = Some((now, lines));
            }
        }
    }
}
