//! tcpcopy: copies live TCP traffic captured on this host to a target server, with responses
//! reported back by intercept. See ../../shared/spec/tcpcopy.md for the behaviour.

mod addr_spec;
mod addr_spec6;
#[cfg(test)]
mod alloc_steady;
mod auth_file;
mod capture;
mod check;
mod cli;
mod diagnosis;
mod diff;
mod event_loop;
mod numbers;
mod offline;
mod output;
mod report;
mod tunnels;
mod udp_mode;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tc_core::capture::pcap_live;
use tc_core::capture::raw_socket::RawSocketCapture;
use tc_core::capture::raw_socket6::RawSocketCapture6;
use tc_core::capture::reopen::Reopening;
use tc_core::capture::ring::{RingCapture, RingOptions};
use tc_core::capture::Capture;
use tc_core::daemon;
use tc_core::logging;
use tc_core::send::pcap_inject::PcapInject;
use tc_core::send::raw_socket::RawSocketSend;
use tc_core::send::Sender;
use tc_core::session::Replayer;

use cli::{Command, Input, Options, OutputKind};

/// Blocking connect limit per tunnel at start-up (the original waits as long as the kernel:
/// a few lost SYNs must not fail the start).
const STARTUP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args_os()) {
        Ok(Command::Help) => {
            // A closed pipe (`tcpcopy -h | head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(cli::help().as_bytes());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            let _ = writeln!(
                std::io::stdout(),
                "{}\n{}",
                cli::version_line(),
                cli::build_line()
            );
            return ExitCode::SUCCESS;
        }
        Ok(Command::GenerateDocs(dir)) => {
            return match cli::generate_docs(&dir) {
                Ok(files) => {
                    for f in files {
                        println!("{}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tcpcopy: writing the docs to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
        Ok(Command::Run(args)) => args,
        Err(e) => {
            eprintln!("tcpcopy: {e}");
            return ExitCode::from(cli::EXIT_USAGE as u8);
        }
    };
    // Host names are looked up once the whole command line is known to be valid.
    let options = match args.resolve() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("tcpcopy: {e}");
            return ExitCode::from(cli::EXIT_USAGE as u8);
        }
    };
    if let Err(e) = logging::init(options.log_file.as_deref(), "notice") {
        eprintln!("tcpcopy: {e:#}");
        return ExitCode::from(cli::EXIT_USAGE as u8);
    }
    match run(options) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("tcpcopy: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The send backend of `-o`/`--send`.
fn open_sender(options: &Options) -> anyhow::Result<Box<dyn Sender>> {
    Ok(match &options.output {
        OutputKind::Raw => {
            log::info!("send: raw socket");
            Box::new(RawSocketSend::open().context("Create raw socket to output failed")?)
        }
        OutputKind::Pcap { device } => {
            log::info!("send: pcap inject on {device}");
            let macs = options
                .replay
                .transfers
                .iter()
                .map(|t| (t.src_mac.unwrap_or_default(), t.dst_mac.unwrap_or_default()))
                .collect();
            Box::new(PcapInject::open(device, options.replay.mtu, macs)?)
        }
    })
}

fn run(options: Options) -> anyhow::Result<i32> {
    if options.check {
        // No capture, no daemon: one probe per target, findings on stdout.
        let poll = mio::Poll::new().context("cannot create the event loop")?;
        let sender = open_sender(&options)?;
        return check::run(&options, sender, poll);
    }
    let signals = event_loop::install_signals().context("cannot install signal handlers")?;
    if options.log_file.is_some() {
        // logrotate: SIGHUP reopens the log file (the event loop then logs a line to it).
        logging::reopen_on_sighup().context("cannot install the SIGHUP handler")?;
    }
    // -d: the rest of the start-up runs in the daemon while the parent waits, so a failure
    // (intercept, capture, output, pid file) still gives a message and a non-zero exit.
    let detached = if options.daemon {
        Some(daemon::detach().context("cannot become a daemon")?)
    } else {
        None
    };
    log::info!("{}", cli::version_line());
    for w in &options.warnings {
        log::warn!("{w}");
    }
    if options.udp {
        // Stateless UDP replay: no intercept, no sessions (udp_mode).
        let sender = if options.transfers6.is_empty() {
            open_sender(&options)?
        } else {
            udp_mode::open_sender6(&options)?
        };
        return udp_mode::run(options, sender, signals, detached);
    }
    log::info!("tcpcopy internal version:{}", cli::INTERNAL_VERSION);
    log::info!("target:{}", options.transfers_text);
    log::info!("s parameter:{}", options.intercepts_text);
    if let Some(c) = &options.client_ips_text {
        log::info!("raw_clt_tf_ip:{c}");
    }
    let r = &options.replay;
    log::info!(
        "session timeout:{},keepalive timeout:{}",
        r.session_timeout.as_secs(),
        r.keepalive_timeout.as_secs()
    );
    if r.replicas > 1 {
        log::info!("repl num:{}", r.replicas);
    }
    if r.gradual {
        log::info!("gradully replay");
    }
    log::info!(
        "parallel connections per target:{}",
        options.conns_per_intercept
    );
    log::info!(
        "control channel: {} records{}{}",
        if options.wire.combined {
            "combined"
        } else {
            "bare"
        },
        if options.wire.payload {
            ", with payload"
        } else {
            ""
        },
        if r.single { ", single mode" } else { "" }
    );
    if let Some(auth) = &r.auth {
        log::info!(
            "database logins: {}, {}",
            auth.protocol
                .map_or("protocol detected per session", |p| p.as_str()),
            match &auth.credentials {
                Some(c) => format!(
                    "answers recomputed for {} user(s) of the auth file",
                    c.len()
                ),
                None => "watched only (no --auth-file): refusals are counted".into(),
            }
        );
    }

    let local_ips = capture::local_ipv4_addresses().context("cannot list local addresses")?;
    capture::check_self_capture(&options.replay.transfers, &options.input, &local_ips)?;
    if options
        .replay
        .transfers
        .iter()
        .any(|t| t.dst_ip.is_loopback())
    {
        log::info!("target host is 127.0.0.1");
    }

    let poll = mio::Poll::new().context("cannot create the event loop")?;

    // Start-up order of the original: intercepts, then output, then input.
    let tunnels = tunnels::Tunnels::connect_all_variants(
        &options.intercepts,
        options.conns_per_intercept,
        options.wire,
        poll.registry(),
        STARTUP_CONNECT_TIMEOUT,
        options.full_payload,
        options.ipv6,
    )?;
    if options.full_payload {
        log::info!("full payload: asked each intercept for the target's response bytes");
    }
    if options.ipv6 {
        log::info!("TCP over IPv6: asked each intercept for the IPv6 variant (intercept --ipv6); capture starts once every intercept granted it");
    }

    let sender = if options.ipv6 {
        udp_mode::open_sender6(&options)?
    } else {
        open_sender(&options)?
    };

    let captures: Vec<Reopening<dyn Capture>> = match &options.input {
        Input::Raw if options.ipv6 => {
            let c = RawSocketCapture6::open_protocol(libc::IPPROTO_TCP)
                .context("Create raw IPv6 socket to input failed")?;
            let ports = options.replay.online_ports();
            capture::log_port_filter(c.keep_only_dst_ports(&ports), "tcp", &ports);
            log::info!("capture: raw IPv6 socket");
            vec![Reopening::new(
                "raw IPv6 socket",
                Box::new(c) as Box<dyn Capture>,
            )]
        }
        Input::Raw => {
            let c = RawSocketCapture::open().context("Create raw socket to input failed")?;
            let ports = options.replay.online_ports();
            let filtered = c.keep_only(&ports, options.fanout);
            if let (Some(_), Err(e)) = (options.fanout, &filtered) {
                // The share is the filter: without it this process would replay every
                // connection, the other processes' too.
                anyhow::bail!(
                    "--fanout: cannot install the kernel filter that splits the connections: {e}"
                );
            }
            capture::log_port_filter(filtered, "tcp", &ports);
            let rcvbuf = c.receive_buffer().unwrap_or(0);
            log::info!("capture: raw socket, receive buffer {rcvbuf} bytes");
            // The kernel reports twice the size set; 64 MiB past net.core.rmem_max needs
            // SO_RCVBUFFORCE, i.e. CAP_NET_ADMIN (CAP_NET_RAW alone gets rmem_max).
            if rcvbuf < tc_core::capture::raw_socket::RAW_CAPTURE_RCVBUF {
                log::warn!(
                    "capture: receive buffer {rcvbuf} bytes, below the original's 64 MiB: give tcpcopy CAP_NET_ADMIN or raise net.core.rmem_max, or bursts are dropped in the kernel"
                );
            }
            // Not bound to a device: nothing to reopen.
            vec![Reopening::new(
                "raw socket",
                Box::new(c) as Box<dyn Capture>,
            )]
        }
        Input::Ring => {
            let ports = options.replay.online_ports();
            let opts = RingOptions {
                share: options.fanout,
                ..RingOptions::default()
            };
            let c = RingCapture::open(&ports, opts).context(
                "Create capture ring to input failed (--capture raw reads a raw socket instead)",
            )?;
            log::info!(
                "capture: TPACKET_V3 ring of {} bytes, kernel filter keeps tcp dst ports {ports:?}",
                c.ring_bytes()
            );
            vec![Reopening::new(
                "capture ring",
                Box::new(c) as Box<dyn Capture>,
            )]
        }
        Input::Pcap {
            devices,
            filter,
            buffer_bytes,
            snaplen,
        } => capture::open_pcap(devices, filter.as_ref(), *snaplen, *buffer_bytes, || {
            capture::auto_filter(&options.replay.transfers)
        })?,
        Input::Offline { .. } => Vec::new(),
    };
    if let Some(share) = options.fanout {
        log::info!(
            "capture: share {} of {} of the client connections (--fanout, split by client address and port)",
            share.index + 1,
            share.count
        );
    }
    let offline = offline::from_input(&options.input)?;

    // --diff: production's answers come from this host's outgoing segments (the raw socket
    // sees incoming ones only), or from the offline file.
    let diff =
        match &options.diff {
            Some(cfg) => {
                let engine = diff::DiffEngine::open(cfg.clone())?;
                log::info!(
                "diff: comparing the target's answers with production's ({}), differences to {}",
                cfg.protocol.map(|p| p.name()).unwrap_or("protocol detected"),
                engine.path()
            );
                if options.replay.replicas > 1 {
                    log::info!("diff: only the first copy of each session (-n) is compared");
                }
                Some(engine)
            }
            None => None,
        };
    let responses: Option<Box<dyn Capture>> = match (&options.diff, &options.input) {
        (Some(_), Input::Raw | Input::Ring | Input::Pcap { .. }) => {
            let filter = diff::production_filter(&options.replay.transfers);
            let opts = pcap_live::PcapLiveOptions {
                filter: filter.clone(),
                snaplen: 65535,
                buffer_size: 32 << 20,
                promiscuous: false,
                // Not compared at once anyway: in blocks the buffer holds ~30,000 answers of
                // a typical size instead of ~500 slots of 64 KiB (a burst of ab -c 50 lost
                // 2637 of 10,000 in immediate mode).
                immediate: false,
            };
            let c = pcap_live::PcapLive::open("any", &opts).with_context(|| {
                format!("--diff: cannot capture production's answers (pcap on any, {filter})")
            })?;
            log::info!("diff: production's answers captured on any with filter {filter}");
            Some(Box::new(c))
        }
        _ => None,
    };

    let output = output::ReplayOutput::new(
        sender,
        &options.replay.transfers,
        tunnels,
        options.replay.single,
    );
    let record_len = options.wire.record_len();
    let replayer = Replayer::new(options.replay.clone());

    let _pid_file = match &options.pid_file {
        Some(path) => Some(daemon::PidFile::create(path)?),
        None => None,
    };

    let mut event_loop = event_loop::EventLoop::new(
        poll,
        replayer,
        output,
        event_loop::Inputs {
            captures,
            offline,
            responses,
        },
        signals,
        event_loop::LoopConfig {
            lonely: options.lonely,
            memory_limit_bytes: options.memory_limit_bytes,
            sighup: if options.log_file.is_some() {
                event_loop::Sighup::ReopenLog
            } else if options.daemon {
                event_loop::Sighup::Ignore
            } else {
                event_loop::Sighup::Stop
            },
            report_file: options.report_file.clone(),
            capture_lost_exit: options.capture_lost_exit,
            metrics: options.metrics,
            stats_json_file: options.stats_json_file.clone(),
            // Offline runs probe too: the path to the target is the same.
            // The path probe speaks IPv4 (the original's records): not for IPv6 transfers.
            probe: (options.probe && !options.ipv6).then(|| diagnosis::ProbePlan::of(&options)),
            diff,
            full_payload: options.full_payload,
            ipv6: options.ipv6,
            // SAFETY: isatty only inspects the descriptor.
            progress_tty: options.log_file.is_none()
                && !options.daemon
                && unsafe { libc::isatty(libc::STDERR_FILENO) } == 1,
        },
        record_len,
    )?;
    if let Some(d) = detached {
        d.ready().context("cannot detach from the terminal")?;
    }
    let stop = event_loop.run();
    let code = stop.exit_code();
    match &stop {
        event_loop::StopReason::NoIntercept => {
            let msg = "every intercept is gone (use -L to keep running and reconnect)";
            log::error!("{msg}");
            eprintln!("tcpcopy: {msg}");
        }
        event_loop::StopReason::MemoryLimit { rss, limit } => {
            let msg = format!("memory {rss} bytes exceeds the -m limit of {limit} bytes");
            log::error!("{msg}");
            eprintln!("tcpcopy: {msg}");
        }
        event_loop::StopReason::CaptureFailed(e)
        | event_loop::StopReason::FullPayload(e)
        | event_loop::StopReason::Ipv6(e) => {
            log::error!("{e}");
            eprintln!("tcpcopy: {e}");
        }
        event_loop::StopReason::Signal(_) | event_loop::StopReason::OfflineDone => {}
    }
    Ok(code)
}
