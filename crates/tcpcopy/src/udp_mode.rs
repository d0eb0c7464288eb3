//! `--udp`: the stateless UDP replay (the original's "udpcopy" build, spec 8) as a run-time
//! mode of the same binary. A loop of its own, much smaller than the TCP one: capture (raw
//! UDP socket with a kernel port filter, pcap, or a pcap file; IPv4 or IPv6, one family per
//! run), `tc_core::udp_replay` to rewrite, reassemble and fragment, the send backend,
//! signals, statistics every 30 s and at exit (`--stats-json`, `--metrics`), the `-m` memory
//! check. No intercept, no sessions: the target's answers are not tracked.

use std::io;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::{Events, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGPIPE};
use signal_hook_mio::v1_0::Signals;
use tc_core::capture::raw_socket::RawSocketCapture;
use tc_core::capture::raw_socket6::RawSocketCapture6;
use tc_core::capture::reopen::Reopening;
use tc_core::capture::Capture;
use tc_core::daemon;
use tc_core::logging::RateLimit;
use tc_core::metrics::exposition::{Exposition, Kind};
use tc_core::metrics::MetricsServer;
use tc_core::packet::fragments::FragDrop;
use tc_core::packet::link::ip_payload;
use tc_core::packet::DropCounters;
use tc_core::send::pcap_inject::PcapInject;
use tc_core::send::raw_socket6::RawSocketSend6;
use tc_core::send::{Outgoing, Sender};
use tc_core::session::Transfer;
use tc_core::udp_replay::{Transfer6, UdpConfig, UdpDrop, UdpReplayer};

use crate::cli::{Input, Options};
use crate::event_loop::{current_rss_bytes, StopReason};
use crate::offline::{OfflineSource, OfflineStatus};

const SIGNAL_TOKEN: Token = Token(60_000);
const OUTPUT_TOKEN: Token = Token(60_001);
const CAPTURE_BUDGET: usize = 256;
const STATS_PERIOD: Duration = Duration::from_secs(30);
const MEMORY_PERIOD: Duration = Duration::from_secs(60);
const SEND_RETRY_PERIOD: Duration = Duration::from_millis(5);
const SEND_DRAIN_AT_EXIT: Duration = Duration::from_secs(1);
/// Packets handed to the send backend per call.
const SEND_BATCH: usize = 64;

/// The pcap filter of `--udp` without `-F`: datagrams to each transfer's source, and the
/// non-first fragments of datagrams (they carry no port) to the transfers' addresses; the
/// targets' addresses are left out of the fragment term where no transfer captures them, so
/// the fragments tcpcopy sends are not captured again.
pub fn auto_filter(transfers: &[Transfer]) -> String {
    let terms: Vec<String> = transfers
        .iter()
        .map(|t| match t.src_ip {
            Some(ip) => format!("(dst port {} and dst host {})", t.src_port, ip),
            None => format!("(dst port {})", t.src_port),
        })
        .collect();
    let mut hosts: Vec<String> = Vec::new();
    let any_host = transfers.iter().any(|t| t.src_ip.is_none());
    if !any_host {
        for t in transfers {
            if let Some(ip) = t.src_ip {
                let term = format!("dst host {ip}");
                if !hosts.contains(&term) {
                    hosts.push(term);
                }
            }
        }
    }
    let mut fragments = "(ip[6:2] & 0x1fff != 0".to_string();
    if !hosts.is_empty() {
        fragments.push_str(&format!(" and ({})", hosts.join(" or ")));
    } else {
        let mut targets: Vec<String> = Vec::new();
        for t in transfers {
            let term = format!("not dst host {}", t.dst_ip);
            if !transfers.iter().any(|s| s.src_ip == Some(t.dst_ip)) && !targets.contains(&term) {
                targets.push(term);
            }
        }
        for t in targets {
            fragments.push_str(&format!(" and {t}"));
        }
    }
    fragments.push(')');
    format!("ip and udp and ({} or {fragments})", terms.join(" or "))
}

/// The pcap filter of `--udp` for IPv6 transfers: datagrams to each transfer's source, and
/// packets whose first header after IPv6 is a Fragment header (they carry no port), to the
/// transfers' addresses but not to the targets' (tcpcopy's own fragments).
pub fn auto_filter6(transfers: &[Transfer6]) -> String {
    let terms: Vec<String> = transfers
        .iter()
        .map(|t| match t.src_ip {
            Some(ip) => format!("(dst port {} and dst host {})", t.src_port, ip),
            None => format!("(dst port {})", t.src_port),
        })
        .collect();
    let mut fragments = "(ip6[6] == 44".to_string();
    if transfers.iter().all(|t| t.src_ip.is_some()) {
        let mut hosts: Vec<String> = Vec::new();
        for ip in transfers.iter().filter_map(|t| t.src_ip) {
            let term = format!("dst host {ip}");
            if !hosts.contains(&term) {
                hosts.push(term);
            }
        }
        fragments.push_str(&format!(" and ({})", hosts.join(" or ")));
    } else {
        let mut targets: Vec<String> = Vec::new();
        for t in transfers {
            let term = format!("not dst host {}", t.dst_ip);
            if !transfers.iter().any(|s| s.src_ip == Some(t.dst_ip)) && !targets.contains(&term) {
                targets.push(term);
            }
        }
        for t in targets {
            fragments.push_str(&format!(" and {t}"));
        }
    }
    fragments.push(')');
    format!(
        "ip6 and ((udp and ({})) or {fragments})",
        terms.join(" or ")
    )
}

/// The send backend of `--udp` with IPv6 transfers: the raw IPv6 socket, or frames injected
/// with the MACs of `-x` (`--send pcap`).
pub fn open_sender6(options: &Options) -> anyhow::Result<Box<dyn Sender>> {
    if let crate::cli::OutputKind::Pcap { device } = &options.output {
        log::info!("send: pcap inject on {device}");
        let macs = options
            .transfers6
            .iter()
            .map(|t| (t.src_mac.unwrap_or_default(), t.dst_mac.unwrap_or_default()))
            .collect();
        return Ok(Box::new(PcapInject::open(
            device,
            options.replay.mtu,
            macs,
        )?));
    }
    log::info!("send: raw IPv6 socket");
    Ok(Box::new(
        RawSocketSend6::open().context("Create raw IPv6 socket to output failed")?,
    ))
}

/// As `capture::check_self_capture` for IPv6 transfers: a target that some transfer would
/// capture again is refused.
fn check_self_capture6(
    transfers: &[Transfer6],
    input: &Input,
    local: &[Ipv6Addr],
) -> anyhow::Result<()> {
    let pcap_auto = matches!(input, Input::Pcap { filter: None, .. });
    for (i, t) in transfers.iter().enumerate() {
        for src in transfers.iter().filter(|s| s.src_port == t.dst_port) {
            let captured = match src.src_ip {
                Some(ip) => ip == t.dst_ip,
                None => pcap_auto || t.dst_ip.is_loopback() || local.contains(&t.dst_ip),
            };
            if captured {
                anyhow::bail!(
                    "-x transfer {}: target [{}]:{} would be captured again as online traffic; tcpcopy would replay its own output",
                    i + 1,
                    t.dst_ip,
                    t.dst_port
                );
            }
        }
    }
    Ok(())
}

/// This host's IPv6 addresses.
fn local_ipv6_addresses() -> io::Result<Vec<Ipv6Addr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, released below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        // SAFETY: ifa_addr, when set, points to a sockaddr whose family tells its type.
        if !ifa.ifa_addr.is_null()
            && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET6
        {
            // SAFETY: AF_INET6 addresses are sockaddr_in6.
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            out.push(Ipv6Addr::from(sin6.sin6_addr.s6_addr));
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// Opens the capture of `options.input` for UDP (none offline).
fn open_captures(options: &Options) -> anyhow::Result<Vec<Reopening<dyn Capture>>> {
    let ipv6 = !options.transfers6.is_empty();
    Ok(match &options.input {
        Input::Raw if ipv6 => {
            let c = RawSocketCapture6::open_protocol(libc::IPPROTO_UDP)
                .context("Create raw IPv6 socket to input failed")?;
            let ports: Vec<u16> = options.transfers6.iter().map(|t| t.src_port).collect();
            crate::capture::log_port_filter(c.keep_only_dst_ports(&ports), "udp", &ports);
            log::info!(
                "capture: raw IPv6 udp socket, receive buffer {} bytes",
                c.receive_buffer().unwrap_or(0)
            );
            vec![Reopening::new(
                "raw IPv6 socket",
                Box::new(c) as Box<dyn Capture>,
            )]
        }
        Input::Raw => {
            let c = RawSocketCapture::open_protocol(libc::IPPROTO_UDP)
                .context("Create raw socket to input failed")?;
            let ports = options.replay.online_ports();
            // The raw socket sees datagrams after the kernel reassembled them: the port
            // filter sees every datagram whole.
            crate::capture::log_port_filter(c.keep_only_dst_ports(&ports), "udp", &ports);
            log::info!(
                "capture: raw udp socket, receive buffer {} bytes",
                c.receive_buffer().unwrap_or(0)
            );
            vec![Reopening::new(
                "raw socket",
                Box::new(c) as Box<dyn Capture>,
            )]
        }
        Input::Pcap {
            devices,
            filter,
            buffer_bytes,
            snaplen,
        } => crate::capture::open_pcap(devices, filter.as_ref(), *snaplen, *buffer_bytes, || {
            if ipv6 {
                auto_filter6(&options.transfers6)
            } else {
                auto_filter(&options.replay.transfers)
            }
        })?,
        Input::Offline { .. } => Vec::new(),
        // Refused with --udp on the command line: the ring keeps TCP only.
        Input::Ring => {
            anyhow::bail!("--capture ring reads TCP only: with --udp use --capture raw or pcap")
        }
    })
}

/// Runs `--udp` until a signal, the end of an offline replay, or a failure; the exit code.
pub fn run(
    options: Options,
    sender: Box<dyn Sender>,
    mut signals: Signals,
    detached: Option<daemon::Detached>,
) -> anyhow::Result<i32> {
    log::info!("TC_UDP mode: datagrams are replayed without sessions; the target's answers are not tracked");
    log::info!("target:{}", options.transfers_text);
    if let Some(c) = &options.client_ips_text {
        log::info!("raw_clt_tf_ip:{c}");
    }
    if options.replay.replicas > 1 {
        log::info!("repl num:{}", options.replay.replicas);
    }
    if options.transfers6.is_empty() {
        let local_ips =
            crate::capture::local_ipv4_addresses().context("cannot list local addresses")?;
        crate::capture::check_self_capture(&options.replay.transfers, &options.input, &local_ips)?;
    } else {
        let local = local_ipv6_addresses().context("cannot list local addresses")?;
        check_self_capture6(&options.transfers6, &options.input, &local)?;
        log::info!("IPv6 transfers");
    }
    let poll = Poll::new().context("cannot create the event loop")?;
    let mut captures = open_captures(&options)?;
    crate::event_loop::register_captures(&mut captures, poll.registry())?;
    poll.registry()
        .register(&mut signals, SIGNAL_TOKEN, mio::Interest::READABLE)?;
    let offline = crate::offline::from_input(&options.input)?;
    let _pid_file = match &options.pid_file {
        Some(path) => Some(daemon::PidFile::create(path)?),
        None => None,
    };
    let metrics = crate::event_loop::bind_metrics(options.metrics, poll.registry())?;
    let mut udp = UdpLoop {
        metrics,
        stats_json_file: options.stats_json_file.clone(),
        report_file: options.report_file.clone(),
        poll,
        replayer: UdpReplayer::new(UdpConfig {
            transfers6: options.transfers6.clone(),
            client_prefix6: options.client_prefix6,
            ..UdpConfig::from_replay(&options.replay)
        }),
        sender,
        captures,
        offline,
        signals,
        link_drops: DropCounters::default(),
        capture_errors: 0,
        sent_packets: 0,
        send_errors: 0,
        send_error_log: RateLimit::new(Duration::from_secs(10), 3),
        writable_watched: false,
        started: Instant::now(),
        sighup_stops: options.log_file.is_none() && !options.daemon,
        memory_limit_bytes: options.memory_limit_bytes,
        capture_lost_exit: options.capture_lost_exit,
    };
    if let Some(d) = detached {
        d.ready().context("cannot detach from the terminal")?;
    }
    let stop = udp.run();
    if let StopReason::CaptureFailed(e) = &stop {
        log::error!("{e}");
        eprintln!("tcpcopy: {e}");
    }
    Ok(stop.exit_code())
}

/// Hands the waiting packets to `sender`, in order, until the queue is empty (false) or the
/// sender is full (true: the rest wait). A packet the sender refuses is given up, counted in
/// `errors` and reported to `on_error` (its length and the error); `sent` counts the packets
/// sent.
fn send_queued(
    replayer: &mut UdpReplayer,
    sender: &mut dyn Sender,
    sent: &mut u64,
    errors: &mut u64,
    on_error: &mut dyn FnMut(usize, &io::Error),
) -> bool {
    loop {
        let mut batch = [Outgoing {
            bytes: &[],
            transfer: 0,
        }; SEND_BATCH];
        let mut n = 0;
        for (bytes, transfer) in replayer.queued().take(SEND_BATCH) {
            batch[n] = Outgoing { bytes, transfer };
            n += 1;
        }
        if n == 0 {
            return false;
        }
        let first_len = batch[0].bytes.len();
        match sender.send_batch(&batch[..n]) {
            Ok(k) => {
                *sent += k as u64;
                if k == 0 {
                    *errors += 1;
                }
                replayer.consume(k.clamp(1, n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) => {
                *errors += 1;
                on_error(first_len, &e);
                replayer.consume(1);
            }
        }
    }
}

struct UdpLoop {
    /// `--metrics`, `--stats-json`.
    metrics: Option<MetricsServer>,
    stats_json_file: Option<std::path::PathBuf>,
    /// `--report`: the datagram counts at exit.
    report_file: Option<std::path::PathBuf>,
    poll: Poll,
    replayer: UdpReplayer,
    sender: Box<dyn Sender>,
    captures: Vec<Reopening<dyn Capture>>,
    offline: Option<OfflineSource>,
    signals: Signals,
    link_drops: DropCounters,
    capture_errors: u64,
    sent_packets: u64,
    send_errors: u64,
    send_error_log: RateLimit,
    writable_watched: bool,
    started: Instant,
    /// SIGHUP stops the run in the foreground without `-l` (as the TCP loop).
    sighup_stops: bool,
    memory_limit_bytes: u64,
    capture_lost_exit: Duration,
}

impl UdpLoop {
    fn run(&mut self) -> StopReason {
        let mut events = Events::with_capacity(1024);
        let start = self.started;
        log::info!("event loop running (udp)");
        let mut next_stats = start + STATS_PERIOD;
        let mut next_memory = start + MEMORY_PERIOD;
        let mut next_device_check = Duration::ZERO;
        let mut pending = vec![false; self.captures.len()];
        let mut offline_wake = self.offline.as_ref().map(|_| start);
        let stop = loop {
            let now = Instant::now();
            let mut deadline = next_stats.min(next_memory);
            if let Some(d) = self.replayer.next_deadline() {
                deadline = deadline.min(d);
            }
            if let Some(d) = offline_wake {
                deadline = deadline.min(d);
            }
            if self.replayer.queued_packets() > 0 {
                deadline = deadline.min(now + SEND_RETRY_PERIOD);
            }
            if let Some(d) = self.metrics.as_ref().and_then(MetricsServer::next_deadline) {
                deadline = deadline.min(d);
            }
            let timeout = if pending.iter().any(|p| *p) {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(now)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    break StopReason::CaptureFailed(format!("poll: {e}"));
                }
            }
            let mut stop = None;
            for event in events.iter() {
                let token = event.token();
                if token == SIGNAL_TOKEN {
                    for sig in self.signals.pending() {
                        if sig == SIGPIPE || (sig == SIGHUP && !self.sighup_stops) {
                            continue;
                        }
                        stop = Some(StopReason::Signal(sig));
                    }
                } else if token == OUTPUT_TOKEN {
                    self.flush();
                } else if self.metrics.as_ref().is_some_and(|m| m.owns(token)) {
                    let text = self.render_metrics();
                    if let Some(m) = self.metrics.as_mut() {
                        m.on_event(self.poll.registry(), token, Instant::now(), || text);
                    }
                } else if token.0 < self.captures.len() {
                    pending[token.0] = true;
                }
            }
            for (i, more) in pending.iter_mut().enumerate() {
                if *more {
                    match self.drain_capture(i) {
                        Ok(n) => *more = n >= CAPTURE_BUDGET,
                        Err(e) => {
                            *more = false;
                            self.capture_errors += 1;
                            self.captures[i].lose(start.elapsed(), &e);
                        }
                    }
                }
            }
            if let Some(s) = self.reopen_captures(&mut next_device_check) {
                stop = stop.or(Some(s));
            }
            if let Some(m) = self.metrics.as_mut() {
                m.tick(self.poll.registry(), Instant::now());
            }
            if offline_wake.is_some_and(|d| d <= Instant::now()) {
                let (wake, s) = crate::offline::after_step(self.poll_offline());
                offline_wake = wake;
                stop = stop.or(s);
            }
            let now = Instant::now();
            if self.replayer.next_deadline().is_some_and(|d| d <= now) {
                self.replayer.on_timer(now);
            }
            self.flush();
            if now >= next_stats {
                next_stats = now + STATS_PERIOD;
                self.log_stats();
            }
            if now >= next_memory {
                next_memory = now + MEMORY_PERIOD;
                if let Some(rss) = current_rss_bytes() {
                    log::info!("memory size:{} KB", rss / 1024);
                    if rss > self.memory_limit_bytes {
                        log::warn!(
                            "occupies too much memory, limit:{} KB",
                            self.memory_limit_bytes / 1024
                        );
                        stop = stop.or(Some(StopReason::MemoryLimit {
                            rss,
                            limit: self.memory_limit_bytes,
                        }));
                    }
                }
            }
            if let Some(s) = stop {
                break s;
            }
        };
        match &stop {
            StopReason::Signal(sig) => log::warn!("sig {sig} received"),
            other => log::warn!("stopping: {other:?}"),
        }
        let give_up = Instant::now() + SEND_DRAIN_AT_EXIT;
        self.flush();
        while self.replayer.queued_packets() > 0 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(5));
            self.flush();
        }
        if self.replayer.queued_packets() > 0 {
            log::warn!(
                "{} packets still waiting for the send backend at exit: not sent",
                self.replayer.queued_packets()
            );
        }
        self.log_stats();
        if let Some(path) = &self.report_file {
            // The UDP report: the datagram counts (there are no sessions to judge).
            let mut value = self.stats_json();
            value["mode"] = "udp".into();
            match crate::report::write_file(path, &value) {
                Ok(()) => log::info!("report written to {}", path.display()),
                Err(e) => log::error!("cannot write the report {}: {e}", path.display()),
            }
        }
        stop
    }

    fn drain_capture(&mut self, i: usize) -> io::Result<usize> {
        let Self {
            captures,
            replayer,
            link_drops,
            ..
        } = self;
        let Some(capture) = captures[i].source_mut() else {
            return Ok(0);
        };
        let read = capture.read_frames(CAPTURE_BUDGET, &mut |link, frame| match ip_payload(
            link, frame,
        ) {
            Ok(ip) => replayer.on_packet(Instant::now(), ip),
            Err(reason) => link_drops.count(reason),
        });
        self.flush();
        read
    }

    fn poll_offline(&mut self) -> anyhow::Result<OfflineStatus> {
        let Self {
            offline,
            replayer,
            link_drops,
            ..
        } = self;
        let Some(source) = offline.as_mut() else {
            return Ok(OfflineStatus::Finished);
        };
        let now = Instant::now();
        // No session waits for answers: the tail after each pass ends at once.
        if source.in_tail() {
            source.end_tail(now);
        }
        let status = source.poll(now, CAPTURE_BUDGET, &mut |_, link, frame| match ip_payload(
            link, frame,
        ) {
            Ok(ip) => replayer.on_packet(now, ip),
            Err(reason) => link_drops.count(reason),
        });
        let status = match status {
            Ok(OfflineStatus::WakeAt(_)) if source.in_tail() => {
                source.end_tail(now);
                Ok(OfflineStatus::WakeAt(now))
            }
            other => other,
        };
        self.flush();
        status
    }

    /// Hands the waiting packets to the send backend until it is empty or full.
    fn flush(&mut self) {
        let started = self.started;
        let log = &mut self.send_error_log;
        let blocked = send_queued(
            &mut self.replayer,
            self.sender.as_mut(),
            &mut self.sent_packets,
            &mut self.send_errors,
            &mut |len, e| {
                if let Some(suppressed) = log.allow(started.elapsed()) {
                    log::warn!(
                        "send of a {len}-byte packet failed: {e} ({suppressed} more suppressed){}",
                        if e.raw_os_error() == Some(libc::EMSGSIZE) {
                            ": longer than the route's MTU, lower -M"
                        } else {
                            ""
                        }
                    );
                }
            },
        );
        if blocked {
            if !self.writable_watched {
                self.writable_watched = self
                    .sender
                    .register(self.poll.registry(), OUTPUT_TOKEN)
                    .unwrap_or(false);
            }
        } else if self.writable_watched {
            self.writable_watched = false;
            let _ = self.sender.deregister(self.poll.registry());
        }
    }

    fn reopen_captures(&mut self, next_check: &mut Duration) -> Option<StopReason> {
        let dead = crate::capture::reopen_lost(
            &mut self.captures,
            self.poll.registry(),
            self.started.elapsed(),
            next_check,
        )?;
        (dead >= self.capture_lost_exit).then(|| {
            StopReason::CaptureFailed(format!(
                "nothing could be captured for {} s: every capture device is lost",
                dead.as_secs()
            ))
        })
    }

    fn log_stats(&mut self) {
        for line in self.stats_lines() {
            log::info!("{line}");
        }
        if let Some(path) = &self.stats_json_file {
            let line = self.stats_json();
            if let Err(e) = crate::report::append_line(path, &line) {
                log::error!("cannot append statistics to {}: {e}", path.display());
            }
        }
    }

    /// One `--stats-json` line: the counters of the statistics lines.
    fn stats_json(&self) -> serde_json::Value {
        let s = self.replayer.stats();
        let f = self.replayer.fragment_stats();
        let dropped: serde_json::Map<String, serde_json::Value> = UdpDrop::ALL
            .iter()
            .map(|r| (r.as_str().replace(' ', "_"), s.dropped(*r).into()))
            .collect();
        let frag_dropped: serde_json::Map<String, serde_json::Value> = FragDrop::ALL
            .iter()
            .map(|r| (r.as_str().replace(' ', "_"), f.dropped(*r).into()))
            .collect();
        serde_json::json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "udp": {
                "packets_in": s.packets,
                "captured": s.captured,
                "replayed": s.queued,
                "fragmented": s.fragmented,
                "fragments_sent": s.fragments_queued,
                "packets_sent": self.sent_packets,
                "send_errors": self.send_errors,
                "waiting": self.replayer.queued_packets(),
                "link_drops": self.link_drops.total(),
                "capture_errors": self.capture_errors,
                "dropped": dropped,
                "fragments": {
                    "in": f.fragments,
                    "reassembled": f.reassembled,
                    "duplicates": f.duplicates,
                    "in_progress": self.replayer.reassembling(),
                    "dropped": frag_dropped,
                },
            },
        })
    }

    /// The Prometheus text of the statistics (`--metrics`).
    fn render_metrics(&self) -> String {
        let s = self.replayer.stats();
        let f = self.replayer.fragment_stats();
        let mut e = Exposition::new();
        e.counter(
            "tcpcopy_udp_packets_total",
            "IP packets handed to UDP replay (fragments each count).",
            s.packets,
        )
        .counter(
            "tcpcopy_udp_captured_total",
            "Whole datagrams to a -x source (udp packets captured).",
            s.captured,
        )
        .counter(
            "tcpcopy_udp_replayed_total",
            "Datagrams queued for the target, -n copies included.",
            s.queued,
        )
        .counter(
            "tcpcopy_udp_fragmented_total",
            "Replayed datagrams sent in fragments.",
            s.fragmented,
        )
        .counter(
            "tcpcopy_udp_sent_total",
            "Packets (whole datagrams and fragments) sent to the target.",
            self.sent_packets,
        )
        .counter(
            "tcpcopy_udp_send_errors_total",
            "Packets the send backend refused.",
            self.send_errors,
        )
        .gauge(
            "tcpcopy_udp_waiting",
            "Packets waiting for the send backend.",
            self.replayer.queued_packets(),
        )
        .counter(
            "tcpcopy_udp_fragments_total",
            "Captured fragments handed to reassembly.",
            f.fragments,
        )
        .counter(
            "tcpcopy_udp_reassembled_total",
            "Datagrams put back together from fragments.",
            f.reassembled,
        )
        .gauge(
            "tcpcopy_udp_reassembling",
            "Datagrams being reassembled.",
            self.replayer.reassembling(),
        );
        {
            let mut fam = e.family(
                "tcpcopy_udp_dropped_total",
                "Packets not replayed, by reason.",
                Kind::Counter,
            );
            for r in UdpDrop::ALL {
                fam.sample(&[("reason", r.as_str())], s.dropped(r));
            }
        }
        {
            let mut fam = e.family(
                "tcpcopy_udp_fragments_dropped_total",
                "Fragments dropped by reassembly, by reason.",
                Kind::Counter,
            );
            for r in FragDrop::ALL {
                fam.sample(&[("reason", r.as_str())], f.dropped(r));
            }
        }
        e.finish()
    }

    fn stats_lines(&mut self) -> Vec<String> {
        let s = self.replayer.stats();
        let f = self.replayer.fragment_stats();
        let kernel_drops: u64 = self
            .captures
            .iter_mut()
            .filter_map(|c| c.source_mut())
            .map(|c| c.dropped())
            .sum();
        let mut dropped: Vec<String> = UdpDrop::ALL
            .iter()
            .filter(|r| s.dropped(**r) > 0)
            .map(|r| format!("{}:{}", r.as_str(), s.dropped(*r)))
            .collect();
        if self.link_drops.total() > 0 {
            dropped.push(format!("link:{}", self.link_drops));
        }
        if dropped.is_empty() {
            dropped.push("none".into());
        }
        let mut frag_dropped: Vec<String> = FragDrop::ALL
            .iter()
            .filter(|r| f.dropped(**r) > 0)
            .map(|r| format!("{}:{}", r.as_str(), f.dropped(*r)))
            .collect();
        if frag_dropped.is_empty() {
            frag_dropped.push("none".into());
        }
        vec![
            // The original's line.
            format!(
                "udp packets captured:{},packets sent:{}",
                s.captured, self.sent_packets
            ),
            format!(
                "udp datagrams replayed:{},fragmented:{},fragments:{},packets queued:{},sent:{},send errors:{},waiting:{}",
                s.queued,
                s.fragmented,
                s.fragments_queued,
                s.packets_queued,
                self.sent_packets,
                self.send_errors,
                self.replayer.queued_packets()
            ),
            format!(
                "udp packets in:{},dropped:{},capture errors:{},kernel drops:{}",
                s.packets,
                dropped.join(","),
                self.capture_errors,
                kernel_drops
            ),
            format!(
                "udp fragments in:{},reassembled datagrams:{},duplicates:{},in progress:{},dropped:{}",
                f.fragments,
                f.reassembled,
                f.duplicates,
                self.replayer.reassembling(),
                frag_dropped.join(",")
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr_spec::{parse_transfers, resolve_transfers};

    fn transfers(text: &str) -> Vec<Transfer> {
        resolve_transfers(&parse_transfers(text).unwrap()).unwrap()
    }

    #[test]
    fn ipv6_filter_and_self_capture() {
        let t = crate::addr_spec6::parse_transfers6(
            "53-[2001:db8::30]:53,[2001:db8::20]:514-[2001:db8::31]:5514",
        )
        .unwrap();
        assert_eq!(
            auto_filter6(&t),
            "ip6 and ((udp and ((dst port 53) or (dst port 514 and dst host 2001:db8::20))) or (ip6[6] == 44 and not dst host 2001:db8::30 and not dst host 2001:db8::31))"
        );
        let both =
            crate::addr_spec6::parse_transfers6("[2001:db8::20]:53-[2001:db8::30]:53").unwrap();
        assert_eq!(
            auto_filter6(&both),
            "ip6 and ((udp and ((dst port 53 and dst host 2001:db8::20))) or (ip6[6] == 44 and (dst host 2001:db8::20)))"
        );
        let local: Vec<Ipv6Addr> = vec!["2001:db8::20".parse().unwrap()];
        assert!(check_self_capture6(&t, &Input::Raw, &local).is_ok());
        let own = crate::addr_spec6::parse_transfers6("53-[2001:db8::20]:53").unwrap();
        let e = check_self_capture6(&own, &Input::Raw, &local).unwrap_err();
        assert!(e.to_string().contains("captured again"), "{e}");
        let lo = crate::addr_spec6::parse_transfers6("53-[::1]:53").unwrap();
        assert!(check_self_capture6(&lo, &Input::Raw, &[]).is_err());
    }

    #[test]
    fn auto_filter_takes_the_fragments_too() {
        assert_eq!(
            auto_filter(&transfers("53-198.18.0.30:53")),
            "ip and udp and ((dst port 53) or (ip[6:2] & 0x1fff != 0 and not dst host 198.18.0.30))"
        );
        assert_eq!(
            auto_filter(&transfers(
                "198.18.0.20:53-198.18.0.30:53,198.18.0.21:514-198.18.0.30:514"
            )),
            "ip and udp and ((dst port 53 and dst host 198.18.0.20) or (dst port 514 and dst host 198.18.0.21) or (ip[6:2] & 0x1fff != 0 and (dst host 198.18.0.20 or dst host 198.18.0.21)))"
        );
    }

    /// The UDP path allocates nothing per packet once warm: link decoding, the replay
    /// machine (whole IPv4 datagrams, IPv4 fragments reassembled and sent in fragments, IPv6
    /// datagrams) and draining its queue.
    #[test]
    fn steady_state_udp_replay_allocates_nothing_per_packet() {
        use std::net::Ipv4Addr;
        use tc_core::packet::ipv6::{write_udp6_datagram, Udp6Spec};
        use tc_core::packet::udp::{fragment, write_udp_datagram, UdpSpec};
        use tc_core::packet::LinkType;
        use tc_core::session::ReplayConfig;
        let mut cfg = UdpConfig::from_replay(&ReplayConfig::default());
        cfg.transfers = transfers("53-198.18.0.30:53");
        cfg.transfers6 = crate::addr_spec6::parse_transfers6("53-[2001:db8::30]:53").unwrap();
        cfg.client_ips = (1..=254).map(|i| Ipv4Addr::new(203, 0, 113, i)).collect();
        cfg.replicas = 2;
        let mut r = UdpReplayer::new(cfg);
        // Raw-IP frames: small and large (fragmented) IPv4 datagrams from many clients, and
        // IPv6 ones.
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut buf = vec![0u8; 65536];
        for i in 0..1000u32 {
            let payload = vec![i as u8; if i % 10 == 0 { 3000 } else { 60 }];
            let n = write_udp_datagram(
                &mut buf,
                &UdpSpec {
                    src: Ipv4Addr::new(198, 18, 1 + (i % 50) as u8, 10),
                    dst: Ipv4Addr::new(198, 18, 0, 20),
                    src_port: 20000 + i as u16,
                    dst_port: 53,
                    tos: 0,
                    ttl: 64,
                    id: i as u16,
                    dont_fragment: false,
                    payload: &payload,
                },
            )
            .unwrap();
            fragment(&buf[..n], 1500, &mut [0u8; 1500], &mut |p| {
                frames.push(p.to_vec())
            })
            .unwrap();
            let n = write_udp6_datagram(
                &mut buf,
                &Udp6Spec {
                    src: "2001:db8::10".parse().unwrap(),
                    dst: "2001:db8::20".parse().unwrap(),
                    src_port: 30000 + i as u16,
                    dst_port: 53,
                    traffic_class: 0,
                    flow_label: 0,
                    hop_limit: 64,
                    payload: &payload[..60],
                },
            )
            .unwrap();
            frames.push(buf[..n].to_vec());
        }
        let now = Instant::now();
        let mut drops = DropCounters::default();
        let mut sent = 0usize;
        let mut turn = |r: &mut UdpReplayer, frames: &[Vec<u8>]| {
            for f in frames {
                match ip_payload(LinkType::RawIp, f) {
                    Ok(ip) => r.on_packet(now, ip),
                    Err(reason) => drops.count(reason),
                }
                let n = r.queued().count();
                sent += n;
                r.consume(n);
            }
        };
        let warm = frames.len() / 5;
        turn(&mut r, &frames[..warm]);
        let ((), allocations) = crate::alloc_steady::counted(|| turn(&mut r, &frames[warm..]));
        assert_eq!(drops.total(), 0);
        let s = r.stats();
        assert_eq!(s.captured, 2000);
        assert_eq!(r.fragment_stats().reassembled, 100);
        assert!(sent > 4000, "{sent}");
        assert_eq!(
            allocations,
            0,
            "allocations in {} packets",
            frames.len() - warm
        );
    }

    /// The sender's answers as the loop sees them: part of a batch, full (the rest waits, in
    /// order), a refused packet (given up, counted, the rest goes on).
    #[test]
    fn queued_packets_wait_for_a_full_sender_in_order() {
        use std::collections::VecDeque;
        use tc_core::packet::udp::{write_udp_datagram, UdpDatagram, UdpSpec};
        use tc_core::session::ReplayConfig;

        /// Takes what its script says per call; records the source ports it sent.
        struct Scripted {
            script: VecDeque<io::Result<usize>>,
            ports: Vec<u16>,
        }
        impl Sender for Scripted {
            fn send_batch(&mut self, batch: &[Outgoing<'_>]) -> io::Result<usize> {
                let k = self.script.pop_front().unwrap_or(Ok(usize::MAX))?;
                let k = k.min(batch.len());
                for o in &batch[..k] {
                    self.ports
                        .push(UdpDatagram::parse(o.bytes).unwrap().src_port);
                }
                Ok(k)
            }
        }
        let mut cfg = UdpConfig::from_replay(&ReplayConfig::default());
        cfg.transfers = transfers("53-198.18.0.30:53");
        let mut r = UdpReplayer::new(cfg);
        let mut buf = [0u8; 128];
        for port in 1000..1010u16 {
            let n = write_udp_datagram(
                &mut buf,
                &UdpSpec {
                    src: "198.18.0.10".parse().unwrap(),
                    dst: "198.18.0.20".parse().unwrap(),
                    src_port: port,
                    dst_port: 53,
                    tos: 0,
                    ttl: 64,
                    id: 1,
                    dont_fragment: false,
                    payload: b"q",
                },
            )
            .unwrap();
            r.on_packet(Instant::now(), &buf[..n]);
        }
        let mut s = Scripted {
            script: VecDeque::from([Ok(3), Err(io::ErrorKind::WouldBlock.into())]),
            ports: Vec::new(),
        };
        let (mut sent, mut errors, mut reported) = (0, 0, Vec::new());
        let blocked = send_queued(&mut r, &mut s, &mut sent, &mut errors, &mut |len, _| {
            reported.push(len)
        });
        assert!(blocked);
        assert_eq!((sent, errors, r.queued_packets()), (3, 0, 7));
        s.script = VecDeque::from([Ok(2), Err(io::Error::other("no route")), Ok(usize::MAX)]);
        let blocked = send_queued(&mut r, &mut s, &mut sent, &mut errors, &mut |len, _| {
            reported.push(len)
        });
        assert!(!blocked);
        assert_eq!((sent, errors, r.queued_packets()), (9, 1, 0));
        assert_eq!(reported, vec![29]);
        // In order; the refused one (1005) is given up, not retried.
        assert_eq!(
            s.ports,
            vec![1000, 1001, 1002, 1003, 1004, 1006, 1007, 1008, 1009]
        );
    }
}
