//! The single-threaded mio loop: capture sources, control tunnels, the replay machine's timers,
//! periodic statistics / memory checks / reconnects, and signals.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGPIPE, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use tc_core::capture::reopen::Reopening;
use tc_core::capture::Capture;
use tc_core::control::full_payload;
use tc_core::control::ipv6::{self, V6Grant};
use tc_core::metrics::{Limits as MetricsLimits, MetricsServer};
use tc_core::packet::link::ip_payload;
use tc_core::packet::{ipv4_payload, DropCounters, DropReason, LinkType};
use tc_core::session::Replayer;

use crate::diagnosis::{Diagnostician, ProbePlan};
use crate::diff::DiffEngine;
use crate::offline::{OfflineSource, OfflineStatus};
use crate::output::ReplayOutput;
use crate::report;
use crate::tunnels::{TunnelEvent, Tunnels};

const SIGNAL_TOKEN: Token = Token(60_000);
/// `--diff`: the capture of production's answers.
const RESPONSES_TOKEN: Token = Token(60_002);
/// `--diff`: idle connections are given up and the file flushed this often.
const DIFF_PERIOD: Duration = Duration::from_secs(5);
/// `--full-payload`: how long an intercept has to answer the request.
const GRANT_WAIT: Duration = Duration::from_secs(5);
/// The send backend's writable readiness.
const OUTPUT_TOKEN: Token = Token(60_001);
/// The metrics endpoint's listener and client slots.
const METRICS_TOKEN: Token = Token(60_100);
/// While datagrams wait for the send backend, it is retried at least this often (the
/// writable event is the main trigger; a backend without a descriptor only has this).
const SEND_RETRY_PERIOD: Duration = Duration::from_millis(5);
/// At exit, how long the datagrams still waiting for the backend (the sessions' RSTs) get.
const SEND_DRAIN_AT_EXIT: Duration = Duration::from_secs(1);
/// Capture sources use tokens 0..MAX_CAPTURES.
pub const MAX_CAPTURES: usize = 64;
/// Frames read from one source per turn, so tunnels and timers are not starved.
const CAPTURE_BUDGET: usize = 256;
/// Offline, reading paused ([`crate::offline::ReadAhead`]): when to look again (answers
/// arriving meanwhile wake the loop anyway).
const OFFLINE_PAUSE_RETRY: Duration = Duration::from_millis(1);
const STATS_PERIOD: Duration = Duration::from_secs(30);
const MEMORY_PERIOD: Duration = Duration::from_secs(60);
const RECONNECT_PERIOD: Duration = Duration::from_secs(12);
/// How often tunnels are checked for an intercept that stopped reading.
const TUNNEL_CHECK_PERIOD: Duration = Duration::from_secs(2);
/// A keepalive record on every tunnel this often (intercept closes tunnels idle for 60 s).
const KEEPALIVE_PERIOD: Duration = Duration::from_secs(20);
/// Offline progress: a line this often (on a terminal the line is redrawn every second).
const PROGRESS_PERIOD: Duration = Duration::from_secs(5);
const PROGRESS_PERIOD_TTY: Duration = Duration::from_secs(1);

/// Installs the handlers of the signals the loop reacts to. Done first thing at start-up so a
/// signal arriving while tcpcopy connects and opens devices is not fatal.
pub fn install_signals() -> std::io::Result<Signals> {
    Signals::new([SIGINT, SIGTERM, SIGHUP, SIGPIPE])
}

/// Why the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Signal(i32),
    /// Every intercept is gone and `-L` was not given.
    NoIntercept,
    MemoryLimit {
        rss: u64,
        limit: u64,
    },
    CaptureFailed(String),
    /// Every offline pass is done.
    OfflineDone,
    /// `--full-payload`: an intercept refused or did not answer.
    FullPayload(String),
    /// TCP over IPv6: an intercept refused the IPv6 variant or did not answer.
    Ipv6(String),
}

impl StopReason {
    /// Exit status. Every stop the original knows is a graceful shutdown with status 0
    /// (spec 5.5, 10: signals, no intercept left, the memory limit, the end of an offline
    /// replay); a capture that fails while running is an error.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::Signal(_) => 0,
            StopReason::MemoryLimit { .. } => 0,
            StopReason::NoIntercept => 0,
            StopReason::CaptureFailed(_) => 1,
            StopReason::OfflineDone => 0,
            StopReason::FullPayload(_) => 1,
            StopReason::Ipv6(_) => 1,
        }
    }
}

/// Where captured packets come from: live sources (fd-driven) and/or a pcap file (clock-driven).
pub struct Inputs {
    pub captures: Vec<Reopening<dyn Capture>>,
    pub offline: Option<OfflineSource>,
    /// `--diff` online: production's answers (this host's outgoing segments).
    pub responses: Option<Box<dyn Capture>>,
}

/// What SIGHUP does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighup {
    /// In the foreground without `-l` (the terminal is gone): stop, as the original.
    Stop,
    /// With `-l`: the log file is reopened (logrotate), see `tc_core::logging`.
    ReopenLog,
    /// With `-d` and no log file: nothing to do.
    Ignore,
}

pub struct LoopConfig {
    pub lonely: bool,
    pub memory_limit_bytes: u64,
    pub sighup: Sighup,
    /// Offline progress is redrawn on a terminal (stderr is one and no `-l`), else logged.
    pub progress_tty: bool,
    /// `--report`: the fidelity report at exit; `--stats-json`: statistics lines.
    pub report_file: Option<std::path::PathBuf>,
    /// `--capture-lost-exit`: stop when no capture device has worked this long.
    pub capture_lost_exit: Duration,
    /// `--metrics`: serve the statistics there in the Prometheus text format.
    pub metrics: Option<std::net::SocketAddr>,
    pub stats_json_file: Option<std::path::PathBuf>,
    /// The path probe at start-up and when sessions fail (`None`: `--no-probe`).
    pub probe: Option<ProbePlan>,
    /// `--diff`: the comparison engine.
    pub diff: Option<DiffEngine>,
    /// `--full-payload`: every intercept must grant the target's bytes.
    pub full_payload: bool,
    /// TCP over IPv6: every intercept must grant the IPv6 variant before anything is
    /// captured (no IPv6 CLIENT_ADD goes to an intercept that has not).
    pub ipv6: bool,
}

pub struct EventLoop {
    poll: Poll,
    replayer: Replayer,
    output: ReplayOutput,
    captures: Vec<Reopening<dyn Capture>>,
    offline: Option<OfflineSource>,
    signals: Signals,
    cfg: LoopConfig,
    link_drops: DropCounters,
    capture_errors: u64,
    records: Vec<u8>,
    record_len: usize,
    started: Instant,
    metrics: Option<MetricsServer>,
    /// When the capture devices are next checked for existence (offset from the start).
    next_device_check: Duration,
    diagnostician: Option<Diagnostician>,
    diff: Option<DiffEngine>,
    responses: Option<Box<dyn Capture>>,
    /// `--full-payload`: each intercept's answer (`None`: none yet).
    grants: Vec<Option<bool>>,
    /// TCP over IPv6: each intercept's answer to the IPv6 request.
    v6_grants: Vec<Option<bool>>,
    /// Why the run must stop, found while handling an event.
    pending_stop: Option<StopReason>,
}

impl EventLoop {
    pub fn new(
        poll: Poll,
        replayer: Replayer,
        output: ReplayOutput,
        inputs: Inputs,
        mut signals: Signals,
        cfg: LoopConfig,
        record_len: usize,
    ) -> anyhow::Result<EventLoop> {
        let Inputs {
            mut captures,
            offline,
            mut responses,
        } = inputs;
        if let Some(r) = responses.as_mut() {
            r.register(poll.registry(), RESPONSES_TOKEN)?;
        }
        register_captures(&mut captures, poll.registry())?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, mio::Interest::READABLE)?;
        let metrics = bind_metrics(cfg.metrics, poll.registry())?;
        let diagnostician = cfg
            .probe
            .clone()
            .map(|plan| Diagnostician::new(plan, Instant::now()));
        let mut cfg = cfg;
        let diff = cfg.diff.take();
        let grants = vec![None; output.tunnels.total_intercepts()];
        let v6_grants = vec![None; output.tunnels.total_intercepts()];
        Ok(EventLoop {
            diff,
            responses,
            grants,
            v6_grants,
            pending_stop: None,
            diagnostician,
            next_device_check: Duration::ZERO,
            metrics,
            poll,
            replayer,
            output,
            captures,
            offline,
            signals,
            cfg,
            link_drops: DropCounters::default(),
            capture_errors: 0,
            records: Vec::with_capacity(64 * 1024),
            record_len,
            started: Instant::now(),
        })
    }

    /// Runs until a stop condition, then shuts the sessions down and logs final statistics.
    pub fn run(&mut self) -> StopReason {
        let mut events = Events::with_capacity(1024);
        let start = Instant::now();
        let available = self.output.tunnels.active_intercepts() > 0;
        self.replayer.set_intercepts_available(available);
        log::info!("event loop running");
        if let Some(d) = self.diagnostician.as_mut() {
            d.start_up(Instant::now(), &mut self.output);
        }
        let mut next_stats = start + STATS_PERIOD;
        let mut next_memory = start + MEMORY_PERIOD;
        let mut next_reconnect = start + RECONNECT_PERIOD;
        let mut next_tunnel_check = start + TUNNEL_CHECK_PERIOD;
        let mut next_keepalive = start + KEEPALIVE_PERIOD;
        let mut next_diff = start + DIFF_PERIOD;
        let mut grant_deadline =
            (self.cfg.full_payload || self.cfg.ipv6).then_some(start + GRANT_WAIT);
        let mut responses_pending = false;
        let mut read_again = Vec::new();
        // On a terminal (and logging to it) the progress line is redrawn in place.
        let tty = self.cfg.progress_tty;
        let progress_period = if tty {
            PROGRESS_PERIOD_TTY
        } else {
            PROGRESS_PERIOD
        };
        let mut next_progress = self.offline.as_ref().map(|_| start + progress_period);
        // Sources that hit their budget and may hold more (mio is edge-triggered).
        let mut pending = vec![false; self.captures.len()];
        // The offline source reads its first packets at once.
        let mut offline_wake = self.offline.as_ref().map(|_| start);
        let stop = loop {
            let now = Instant::now();
            // TCP over IPv6: nothing is captured (so nothing announced) before every intercept
            // granted the IPv6 variant; what waits in the captures is read afterwards.
            let v6_waiting = self.cfg.ipv6 && self.v6_grants.iter().any(|g| *g != Some(true));
            let mut deadline = next_stats
                .min(next_memory)
                .min(next_tunnel_check)
                .min(next_keepalive);
            if self.cfg.lonely {
                deadline = deadline.min(next_reconnect);
            }
            if let Some(d) = self.replayer.next_deadline() {
                deadline = deadline.min(d);
            }
            if let Some(d) = &self.diagnostician {
                deadline = deadline.min(d.next_deadline());
            }
            if let Some(d) = offline_wake.filter(|_| !v6_waiting) {
                deadline = deadline.min(d);
            }
            if self.diff.is_some() {
                deadline = deadline.min(next_diff);
            }
            if let Some(d) = grant_deadline {
                deadline = deadline.min(d);
            }
            if let Some(d) = next_progress {
                deadline = deadline.min(d);
            }
            if self.output.waiting() > 0 {
                deadline = deadline.min(now + SEND_RETRY_PERIOD);
            }
            self.output
                .watch_writable(self.poll.registry(), OUTPUT_TOKEN);
            let busy = (pending.iter().any(|p| *p) && !v6_waiting)
                || responses_pending
                || self.output.tunnels.has_reads_pending();
            let timeout = if busy {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(now)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    break StopReason::CaptureFailed(format!("poll: {e}"));
                }
            }
            let mut stop = None;
            self.output.tunnels.take_read_again(&mut read_again);
            for &token in &read_again {
                self.on_tunnel_event(token, true, false);
            }
            for event in events.iter() {
                let token = event.token();
                if token == SIGNAL_TOKEN {
                    for sig in self.signals.pending() {
                        if sig == SIGHUP && self.cfg.sighup != Sighup::Stop {
                            if self.cfg.sighup == Sighup::ReopenLog {
                                // This line is the first one of the reopened file.
                                log::info!("SIGHUP: log file reopened");
                            }
                            continue;
                        }
                        if sig == SIGPIPE {
                            continue;
                        }
                        stop = Some(StopReason::Signal(sig));
                    }
                } else if self.metrics.as_ref().is_some_and(|m| m.owns(token)) {
                    let text = self.render_metrics();
                    if let Some(m) = self.metrics.as_mut() {
                        m.on_event(self.poll.registry(), token, Instant::now(), || text);
                    }
                } else if token == OUTPUT_TOKEN {
                    self.output.retry();
                } else if token == RESPONSES_TOKEN {
                    responses_pending = true;
                } else if token.0 < self.captures.len() {
                    pending[token.0] = true;
                } else if Tunnels::owns(token) {
                    self.on_tunnel_event(token, event.is_readable(), event.is_writable());
                }
            }
            for (i, more) in pending.iter_mut().enumerate() {
                if *more && !v6_waiting {
                    match self.drain_capture(i) {
                        Ok(n) => *more = n >= CAPTURE_BUDGET,
                        Err(e) => {
                            // A device deleted or gone down: reported, reopened with a backoff.
                            *more = false;
                            self.capture_errors += 1;
                            let since = start.elapsed();
                            self.captures[i].lose(since, &e);
                        }
                    }
                }
            }
            if responses_pending {
                responses_pending = self.drain_responses();
            }
            if let Some(s) = self.pending_stop.take() {
                stop = stop.or(Some(s));
            }
            if let Some(s) = self.reopen_captures(start) {
                stop = stop.or(Some(s));
            }
            if let Some(m) = self.metrics.as_mut() {
                m.tick(self.poll.registry(), Instant::now());
            }
            // After the end of the file the tail ends early once every session is closed.
            if let Some(o) = self.offline.as_mut() {
                if o.in_tail() && self.replayer.live_sessions() == 0 {
                    let now = Instant::now();
                    o.end_tail(now);
                    offline_wake = Some(now);
                }
            }
            if offline_wake.is_some_and(|d| d <= Instant::now()) && !v6_waiting {
                let (wake, s) = crate::offline::after_step(self.poll_offline());
                offline_wake = wake;
                stop = stop.or(s);
            }
            let now = Instant::now();
            if self.output.waiting() > 0 {
                self.output.retry();
            }
            if self.replayer.next_deadline().is_some_and(|d| d <= now) {
                self.replayer.on_timer(now);
                self.flush_output();
            }
            if next_progress.is_some_and(|d| now >= d) {
                next_progress = Some(now + progress_period);
                if let Some(o) = &self.offline {
                    let s = self.replayer.stats();
                    let line = o.progress(now, self.replayer.live_sessions(), s.released);
                    if tty {
                        use std::io::Write;
                        let mut err = std::io::stderr();
                        let _ = write!(err, "\r\x1b[2K{line}");
                        let _ = err.flush();
                    } else {
                        log::info!("{line}");
                    }
                }
            }
            if let Some(d) = self.diagnostician.as_mut() {
                if now >= d.next_deadline() {
                    d.tick(now, &self.replayer.stats(), &mut self.output);
                }
            }
            if now >= next_stats {
                next_stats = now + STATS_PERIOD;
                self.log_stats();
            }
            if now >= next_diff {
                next_diff = now + DIFF_PERIOD;
                if let Some(d) = self.diff.as_mut() {
                    d.tick(now);
                }
            }
            if grant_deadline.is_some_and(|d| now >= d) {
                grant_deadline = None;
                if let Some(s) = self.missing_grants() {
                    stop = stop.or(Some(s));
                }
                if let Some(s) = self.missing_v6_grants() {
                    stop = stop.or(Some(s));
                }
            }
            if now >= next_memory {
                next_memory = now + MEMORY_PERIOD;
                log_resources();
                if let Some(rss) = current_rss_bytes() {
                    log::info!("memory size:{} KB", rss / 1024);
                    if rss > self.cfg.memory_limit_bytes {
                        log::warn!(
                            "occupies too much memory, limit:{} KB",
                            self.cfg.memory_limit_bytes / 1024
                        );
                        stop = stop.or(Some(StopReason::MemoryLimit {
                            rss,
                            limit: self.cfg.memory_limit_bytes,
                        }));
                    }
                }
            }
            if now >= next_tunnel_check {
                next_tunnel_check = now + TUNNEL_CHECK_PERIOD;
                for addr in self.output.tunnels.close_stuck(now) {
                    log::warn!("intercept {addr} is gone");
                }
            }
            if now >= next_keepalive {
                next_keepalive = now + KEEPALIVE_PERIOD;
                for addr in self.output.tunnels.keepalive() {
                    log::warn!("intercept {addr} is gone");
                }
            }
            if self.cfg.lonely && now >= next_reconnect {
                next_reconnect = now + RECONNECT_PERIOD;
                if self.output.tunnels.active_intercepts() < self.output.tunnels.total_intercepts()
                {
                    self.output.tunnels.reconnect_inactive(now);
                }
            }
            if !self.cfg.lonely && self.output.tunnels.active_intercepts() == 0 {
                log::warn!("active num is zero");
                stop = stop.or(Some(StopReason::NoIntercept));
            }
            if let Some(s) = stop {
                break s;
            }
        };
        match &stop {
            StopReason::Signal(sig) => log::warn!("sig {sig} received"),
            other => log::warn!("stopping: {other:?}"),
        }
        self.replayer.shutdown(Instant::now());
        self.flush_output();
        let give_up = Instant::now() + SEND_DRAIN_AT_EXIT;
        while self.output.waiting() > 0 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(5));
            self.output.retry();
        }
        if let Some(d) = self.diff.as_mut() {
            // Answers still on their way are reported as unpaired (timed out).
            d.shutdown();
        }
        self.log_stats();
        log_resources();
        self.final_report();
        stop
    }

    /// Reads production's answers (`--diff`); true if more may be waiting.
    fn drain_responses(&mut self) -> bool {
        let (Some(capture), Some(diff)) = (self.responses.as_mut(), self.diff.as_mut()) else {
            return false;
        };
        let link_drops = &mut self.link_drops;
        let now = Instant::now();
        let read = capture.read_frames(CAPTURE_BUDGET, &mut |link, frame| match ipv4_payload(
            link, frame,
        ) {
            Ok(datagram) => diff.on_production(now, datagram),
            Err(reason) => link_drops.count(reason),
        });
        match read {
            Ok(n) => n >= CAPTURE_BUDGET,
            Err(e) => {
                log::error!("--diff: the capture of production's answers failed: {e}");
                self.responses = None;
                false
            }
        }
    }

    /// TCP over IPv6: the intercepts that have not answered the IPv6 request in time.
    fn missing_v6_grants(&self) -> Option<StopReason> {
        if !self.cfg.ipv6 {
            return None;
        }
        let silent = self.unanswered(&self.v6_grants)?;
        Some(StopReason::Ipv6(format!(
            "intercept {silent} did not answer the IPv6 request within {} s: it is the original intercept or an older one; TCP replay over IPv6 needs intercept-rs started with --ipv6",
            GRANT_WAIT.as_secs()
        )))
    }

    /// The intercepts (comma-separated) whose answer in `answers` has not come.
    fn unanswered(&self, answers: &[Option<bool>]) -> Option<String> {
        let silent: Vec<String> = answers
            .iter()
            .enumerate()
            .filter(|(_, g)| g.is_none())
            .filter_map(|(i, _)| self.output.tunnels.intercept_addr(i))
            .map(|a| a.to_string())
            .collect();
        (!silent.is_empty()).then(|| silent.join(","))
    }

    /// An intercept's answer to the IPv6 request.
    fn on_v6_grant(&mut self, intercept: Option<usize>, record: &[u8]) {
        let (Some(i), Some(g)) = (intercept, V6Grant::parse(record)) else {
            return;
        };
        self.note_grant(
            i,
            g.granted,
            |l| &mut l.v6_grants,
            |addr| {
                StopReason::Ipv6(format!(
                    "intercept {addr} refuses the IPv6 variant of the control channel: start it with --ipv6 (TCP replay over IPv6 needs it)"
                ))
            },
            |addr| log::info!("intercept {addr} grants the IPv6 variant"),
        );
    }

    /// Records intercept `i`'s answer to an opt-in request in its slot of `slots`: a refusal
    /// stops the run with `refused`'s reason, the first grant is logged with `granted_log`
    /// (both get the intercept's address).
    fn note_grant(
        &mut self,
        i: usize,
        granted: bool,
        slots: fn(&mut Self) -> &mut Vec<Option<bool>>,
        refused: impl FnOnce(&str) -> StopReason,
        granted_log: impl FnOnce(&str),
    ) {
        let addr = self
            .output
            .tunnels
            .intercept_addr(i)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let Some(slot) = slots(self).get_mut(i) else {
            return;
        };
        let first = slot.is_none();
        *slot = Some(granted);
        if !granted {
            self.pending_stop = Some(refused(&addr));
        } else if first {
            granted_log(&addr);
        }
    }

    /// `--full-payload`: the intercepts that have not answered the request in time.
    fn missing_grants(&self) -> Option<StopReason> {
        if !self.cfg.full_payload {
            return None;
        }
        let silent = self.unanswered(&self.grants)?;
        Some(StopReason::FullPayload(format!(
            "intercept {silent} did not answer the --full-payload request within {} s: it is the original intercept or an older one; --diff and --full-payload need intercept-rs started with --full-payload",
            GRANT_WAIT.as_secs()
        )))
    }

    /// An intercept's answer to the `--full-payload` request.
    fn on_grant(&mut self, intercept: Option<usize>, record: &[u8]) {
        let (Some(i), Some(g)) = (
            intercept,
            tc_core::control::full_payload::Grant::parse(record),
        ) else {
            return;
        };
        self.note_grant(
            i,
            g.granted,
            |l| &mut l.grants,
            |addr| {
                StopReason::FullPayload(format!(
                    "intercept {addr} refuses full payloads: start it with --full-payload (tcpcopy --diff / --full-payload needs the target's response bytes)"
                ))
            },
            |addr| {
                log::info!(
                    "intercept {addr} grants full payloads (up to {} bytes per response)",
                    g.cap
                )
            },
        );
    }

    /// The Prometheus text of the statistics (`--metrics`).
    fn render_metrics(&self) -> String {
        let mut text = report::metrics(&self.snapshot(), &self.output.tunnels);
        if let Some(d) = &self.diff {
            text.push_str(&d.metrics());
        }
        text
    }

    fn snapshot(&self) -> report::Snapshot<'_> {
        let o = &self.output.stats;
        report::Snapshot {
            stats: self.replayer.stats(),
            fidelity: self.replayer.fidelity(),
            drops: self.replayer.drop_counts(),
            sent_packets: o.sent,
            send_errors: o.send_errors,
            refused_not_target: o.refused_not_target,
            uptime_s: self.started.elapsed().as_secs_f64(),
        }
    }

    /// The fidelity summary at exit (logged, and `--report`).
    fn final_report(&self) {
        let snap = self.snapshot();
        for line in report::summary_lines(&snap) {
            log::info!("{line}");
        }
        if let Some(d) = &self.diff {
            log::info!("{}", d.stats_line());
            log::info!(
                "diff: {} lines written to {}",
                d.counters.differences_written,
                d.path()
            );
        }
        let logins = self.replayer.auth_report().counts();
        if !logins.is_empty() {
            let text: Vec<String> = logins.iter().map(|(n, c)| format!("{n}:{c}")).collect();
            log::info!("logins at exit:{}", text.join(","));
        }
        if let Some(path) = &self.cfg.report_file {
            let mut value = report::fidelity_report(&snap);
            if let Some(d) = &self.diff {
                value["diff"] = d.report_value();
            }
            match report::write_file(path, &value) {
                Ok(()) => log::info!("fidelity report written to {}", path.display()),
                Err(e) => log::error!("cannot write the report {}: {e}", path.display()),
            }
        }
    }

    /// Sends what the replay machine queued: CLIENT_ADDs to the tunnels first (an intercept
    /// must know a session before its SYN's answer), then the datagrams. Called after each
    /// batch of input; also tells the machine whether an intercept can take sessions now.
    fn flush_output(&mut self) {
        flush_output(&mut self.replayer, &mut self.output);
    }

    /// Reopens lost capture devices whose backoff passed; the run stops (exit 1) when no
    /// capture has worked for `--capture-lost-exit`.
    fn reopen_captures(&mut self, start: Instant) -> Option<StopReason> {
        let dead = crate::capture::reopen_lost(
            &mut self.captures,
            self.poll.registry(),
            start.elapsed(),
            &mut self.next_device_check,
        )?;
        (dead >= self.cfg.capture_lost_exit).then(|| {
            let names: Vec<&str> = self.captures.iter().map(|c| c.name.as_str()).collect();
            StopReason::CaptureFailed(format!(
                "nothing could be captured for {} s: every capture device is lost ({})",
                dead.as_secs(),
                names.join(",")
            ))
        })
    }

    fn drain_capture(&mut self, i: usize) -> std::io::Result<usize> {
        let Self {
            captures,
            replayer,
            output,
            link_drops,
            diagnostician,
            diff,
            cfg,
            ..
        } = self;
        let ipv6 = cfg.ipv6;
        let Some(capture) = captures[i].source_mut() else {
            return Ok(0);
        };
        // Without -c or --probe-client, a probe comes from a captured client's address.
        let mut learned = diagnostician.as_mut().filter(|d| d.learns_client());
        capture_turn(
            capture,
            replayer,
            output,
            link_drops,
            ipv6,
            &mut |replayer, now, datagram| {
                let v4 = datagram.first().is_some_and(|v| v >> 4 == 4);
                if let (Some(d), Some(src), true) = (learned.as_mut(), datagram.get(12..16), v4) {
                    d.learned_client = Some(Ipv4Addr::new(src[0], src[1], src[2], src[3]));
                }
                replayer.on_client_packet(now, datagram);
                if let Some(d) = diff.as_mut() {
                    d.on_client(now, datagram, replayer.last_mapping());
                }
            },
        )
    }

    fn poll_offline(&mut self) -> anyhow::Result<OfflineStatus> {
        let Self {
            offline,
            replayer,
            link_drops,
            diff,
            cfg,
            ..
        } = self;
        let ipv6 = cfg.ipv6;
        // Only --diff needs them (the closure below borrows the replayer mutably): without
        // it the offline path allocates nothing per turn.
        let transfers = if diff.is_some() {
            replayer.config().transfers.clone()
        } else {
            Vec::new()
        };
        let Some(source) = offline.as_mut() else {
            return Ok(OfflineStatus::Finished);
        };
        let now = Instant::now();
        if !source.in_tail() && !source.read_ahead.may_read(now, replayer.unsent_bytes()) {
            return Ok(OfflineStatus::WakeAt(now + OFFLINE_PAUSE_RETRY));
        }
        let status = source.poll(now, CAPTURE_BUDGET, &mut |pass, link, frame| {
            // `-T`: each pass replays as connections distinct from the last pass's.
            replayer.start_pass(pass);
            match decode(ipv6, link, frame) {
                Ok(datagram) => {
                    // `--diff`: the file's answers of production are compared, its requests
                    // replayed.
                    if let Some(d) = diff.as_mut() {
                        if crate::diff::is_production(datagram, &transfers) {
                            d.on_production(now, datagram);
                            return;
                        }
                    }
                    replayer.on_client_packet(now, datagram);
                    if let Some(d) = diff.as_mut() {
                        d.on_client(now, datagram, replayer.last_mapping());
                    }
                }
                Err(reason) => link_drops.count(reason),
            }
        });
        self.flush_output();
        status
    }

    fn on_tunnel_event(&mut self, token: Token, readable: bool, writable: bool) {
        self.records.clear();
        let intercept = self.output.tunnels.intercept_of(token);
        match self
            .output
            .tunnels
            .on_event(token, readable, writable, &mut self.records)
        {
            TunnelEvent::InterceptUp(addr) => log::info!("intercept {addr} is active again"),
            TunnelEvent::InterceptDown(addr) => log::warn!("intercept {addr} is gone"),
            TunnelEvent::Nothing => {}
        }
        let now = Instant::now();
        let records = std::mem::take(&mut self.records);
        let len = self.record_len;
        let mut at = 0;
        while at + len <= records.len() {
            let slot = &records[at..];
            // `--full-payload`: a data message, padded to whole record slots.
            if let Some(n) = full_payload::data_len(slot).filter(|&n| n <= slot.len()) {
                at += crate::tunnels::data_slots(n, len) * len;
                if let (Some(d), Some(data)) =
                    (self.diff.as_mut(), full_payload::parse_data(&slot[..n]))
                {
                    d.on_target(now, &data);
                }
                continue;
            }
            // TCP over IPv6: an IPv6 response unit, padded to whole record slots.
            if slot.starts_with(&ipv6::V6_MARKER) && slot.len() >= 4 {
                let n = 4 + usize::from(u16::from_be_bytes([slot[2], slot[3]]));
                at += crate::tunnels::data_slots(n, len) * len;
                match slot.get(..n).and_then(ipv6::record6) {
                    Some(record) => self.replayer.on_response(now, record),
                    None => self.replayer.on_response(now, &[]),
                }
                continue;
            }
            let record = &slot[..len];
            at += len;
            if V6Grant::is_grant(record) {
                self.on_v6_grant(intercept, record);
                continue;
            }
            if full_payload::Grant::is_grant(record) {
                self.on_grant(intercept, record);
                continue;
            }
            // The probe's replies and the target's answers to the probe client are not
            // the replay's.
            if let Some(d) = self.diagnostician.as_mut() {
                if d.on_record(intercept, record, now) {
                    continue;
                }
            }
            self.replayer.on_response(now, record);
        }
        self.records = records;
        self.flush_output();
    }

    fn log_stats(&mut self) {
        if let Some(path) = &self.cfg.stats_json_file {
            let mut line = report::stats_line(&self.snapshot());
            if let Some(d) = &self.diff {
                line["diff"] = d.report_value();
            }
            if let Err(e) = report::append_line(path, &line) {
                log::error!("cannot append statistics to {}: {e}", path.display());
            }
        }
        let s = self.replayer.stats();
        // Spec 9.2's lines, with the original's names (ReplayStats' Display).
        for line in s.to_string().lines() {
            log::info!("{line}");
        }
        // Spec 9.2 (there against the sessions in the table; here against every session
        // so far, so it also holds at exit): few completed handshakes usually mean the
        // target's SYN-ACKs do not reach intercept (route, filter) or the target is down.
        let sessions = s.active + s.released;
        if self.started.elapsed() > Duration::from_secs(3)
            && sessions > 0
            && s.conns * 100 / sessions < 80
        {
            log::warn!(
                "many connections can't be established (handshakes completed:{}, sessions:{}, syn sent:{}): check that the target routes its responses to the intercept host and that intercept's filter matches them",
                s.conns,
                sessions,
                s.send_syn
            );
        }
        let drops = self.replayer.drop_counts();
        if !drops.is_empty() {
            let text: Vec<String> = drops.iter().map(|(n, c)| format!("{n}:{c}")).collect();
            log::info!("session drops:{}", text.join(","));
        }
        let logins = self.replayer.auth_report().counts();
        if !logins.is_empty() {
            let text: Vec<String> = logins.iter().map(|(n, c)| format!("{n}:{c}")).collect();
            log::info!("logins:{}", text.join(","));
        }
        let o = &self.output.stats;
        let t = &self.output.tunnels.stats;
        let capture_dropped: u64 = self
            .captures
            .iter_mut()
            .filter_map(|c| c.source_mut())
            .map(|c| c.dropped())
            .sum();
        log::info!(
            "sent packets:{},send errors:{},refused (not a target):{},bad checksum fixed:{},ip options stripped:{},deferred:{}",
            o.sent,
            o.send_errors,
            o.refused_not_target,
            s.bad_checksum_fixed,
            s.ip_options_stripped,
            s.deferred
        );
        log::info!(
            "send queue: waiting:{},deferred:{},overflow dropped:{},socket full:{},send calls:{}",
            self.output.waiting(),
            o.deferred,
            o.overflow,
            o.socket_full,
            o.send_calls
        );
        log::info!(
            "capture drops:{},capture backend drops:{},capture errors:{}",
            self.link_drops,
            capture_dropped,
            self.capture_errors
        );
        if let Some(o) = &self.offline {
            log::info!(
                "offline read:{},dispatched:{},truncated:{},unsupported link:{},passes done:{},ts backwards:{},ts jumps cut:{},gaps cut:{},read paused (sessions full):{},stalls read past:{}",
                o.stats.read,
                o.stats.dispatched,
                o.stats.truncated,
                o.stats.unsupported_link,
                o.stats.passes_done,
                o.stats.pacing.backwards,
                o.stats.pacing.jumps,
                o.stats.pacing.gaps_cut,
                o.read_ahead.pauses,
                o.read_ahead.stalls
            );
        }
        log::info!(
            "intercepts active:{}/{},tunnels open:{},connects:{},disconnects:{},reconnect attempts:{},client add:{},client add failed:{},response records:{},broken frames:{},stuck (not reading):{},keepalives:{}",
            self.output.tunnels.active_intercepts(),
            self.output.tunnels.total_intercepts(),
            self.output.tunnels.open_connections(),
            t.connects,
            t.disconnects,
            t.reconnect_attempts,
            t.client_add_sent,
            t.client_add_failed,
            t.records,
            t.broken_frames,
            t.stuck,
            t.keepalives,
        );
        if let Some(d) = self.diff.as_mut() {
            if let Some(c) = self.responses.as_mut() {
                d.counters.capture_drops = c.dropped();
            }
            log::info!("{}", d.stats_line());
        }
        log::debug!("running for {:?}", self.started.elapsed());
    }
}

/// Spec 9.3's resource lines (every 60 s and at exit): CPU time used so far and the peak
/// resident size, from getrusage.
fn log_resources() {
    if let Some((user, sys, max_rss_kb)) = resource_usage() {
        log::info!("user time used:{}", user.as_secs());
        log::info!("sys  time used:{}", sys.as_secs());
        log::info!("max memory size:{max_rss_kb}");
    }
}

/// (user time, system time, peak RSS in KB) of this process.
fn resource_usage() -> Option<(Duration, Duration, u64)> {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    // Linux reports ru_maxrss in KB.
    let max_rss = u64::try_from(u.ru_maxrss).unwrap_or(0);
    Some((time(u.ru_utime), time(u.ru_stime), max_rss))
}

/// Registers the capture sources with `registry`, capture `i` under `Token(i)` (at most
/// `MAX_CAPTURES` of them); lost ones are registered when they are reopened.
pub(crate) fn register_captures(
    captures: &mut [Reopening<dyn Capture>],
    registry: &mio::Registry,
) -> anyhow::Result<()> {
    anyhow::ensure!(captures.len() <= MAX_CAPTURES, "too many capture sources");
    for (i, c) in captures
        .iter_mut()
        .enumerate()
        .filter_map(|(i, c)| Some((i, c.source_mut()?)))
    {
        c.register(registry, Token(i))?;
    }
    Ok(())
}

/// The `--metrics` endpoint when asked for: bound, registered with `registry` and logged.
pub(crate) fn bind_metrics(
    addr: Option<std::net::SocketAddr>,
    registry: &mio::Registry,
) -> anyhow::Result<Option<MetricsServer>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let mut m =
        MetricsServer::bind(addr, MetricsLimits::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    m.register(registry, METRICS_TOKEN)?;
    log::info!("metrics at http://{}/metrics", m.local_addr());
    Ok(Some(m))
}

/// The live replay path for one capture source's turn: at most [`CAPTURE_BUDGET`] frames from
/// the capture buffer, each decoded down to its IPv4 datagram and run through the replay
/// machine (`on_datagram` calls [`Replayer::on_client_packet`] and what else watches client
/// packets), then what the machine queued sent. Allocates nothing in steady state (see
/// `alloc_steady`).
pub(crate) fn capture_turn(
    capture: &mut dyn Capture,
    replayer: &mut Replayer,
    output: &mut ReplayOutput,
    link_drops: &mut DropCounters,
    ipv6: bool,
    on_datagram: &mut dyn FnMut(&mut Replayer, Instant, &[u8]),
) -> std::io::Result<usize> {
    let read = capture.read_frames(CAPTURE_BUDGET, &mut |link, frame| match decode(
        ipv6, link, frame,
    ) {
        Ok(datagram) => on_datagram(replayer, Instant::now(), datagram),
        Err(reason) => link_drops.count(reason),
    });
    flush_output(replayer, output);
    read
}

/// The IP packet in a captured frame: IPv4 only, or with IPv6 transfers IPv6 too (an IPv4
/// run counts IPv6 frames as `not ipv4`, as before).
fn decode(ipv6: bool, link: LinkType, frame: &[u8]) -> Result<&[u8], DropReason> {
    if ipv6 {
        ip_payload(link, frame)
    } else {
        ipv4_payload(link, frame)
    }
}

/// Sends what the replay machine queued (see [`EventLoop::flush_output`]).
pub(crate) fn flush_output(replayer: &mut Replayer, output: &mut ReplayOutput) {
    let out = replayer.output();
    if !out.is_empty() {
        output.flush(out);
        replayer.clear_output();
    }
    let available = output.tunnels.active_intercepts() > 0;
    replayer.set_intercepts_available(available);
}

/// Current resident set size from /proc/self/statm.
pub fn current_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_core::session::ReplayStats;

    #[test]
    fn resource_usage_is_readable() {
        let (_, _, max_rss) = resource_usage().unwrap();
        assert!(max_rss > 0);
    }

    #[test]
    fn rss_is_readable() {
        let rss = current_rss_bytes().unwrap();
        assert!(rss > 0);
    }

    #[test]
    fn stats_line_names() {
        let s = ReplayStats {
            all_clt: 7,
            captured: 9,
            ..ReplayStats::default()
        };
        let text = s.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11);
        assert_eq!(lines[8], "syn cnt:0,all clt:7,clt cont:0");
        assert_eq!(lines[9], "total cont retransmit:0, frag:0");
        assert_eq!(lines[10], "total captured packets:9");
    }
}
