//! intercept: see the library crate for the parts; this only wires them in startup order
//! (arguments, log and SIGHUP, `-d` detach, captures, listener, signals, pid file, then the
//! parent of `-d` exits and the loop runs).

use std::os::unix::io::AsRawFd;
use std::process::ExitCode;

use anyhow::Context;
use intercept::{cli, route, server};
use log::{error, info, warn};
use tc_core::{daemon, logging};

fn main() -> ExitCode {
    let cfg = match cli::parse(std::env::args_os()) {
        Ok(cfg) => cfg,
        Err(exit) => {
            if exit.status == 0 {
                println!("{}", exit.message.trim_end());
            } else {
                eprintln!("{}", exit.message);
            }
            return ExitCode::from(exit.status as u8);
        }
    };
    if let Err(e) = logging::init(cfg.log_file.as_deref(), "info") {
        eprintln!("{e:#}");
        return ExitCode::FAILURE;
    }
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            if cfg.log_file.is_some() {
                eprintln!("intercept: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: &cli::Config) -> anyhow::Result<()> {
    // SIGHUP reopens the log file (logrotate) and no longer ends intercept.
    logging::reopen_on_sighup().context("cannot install the SIGHUP handler")?;
    // -d: the start-up below runs in the daemon while the parent waits for its outcome, so a
    // failure still reaches the terminal with a non-zero exit.
    let detached = if cfg.daemon {
        Some(daemon::detach().context("cannot become a daemon")?)
    } else {
        None
    };
    info!("intercept version:{}", cli::VERSION);
    let mut cfg = cfg.clone();
    let fd_cap = match server::raise_nofile_limit() {
        Ok((before, after)) => {
            info!("open files limit:{after} (soft limit was {before})");
            Some(server::tunnel_cap(after))
        }
        Err(e) => {
            warn!("cannot read or raise the open files limit: {e}");
            None
        }
    };
    cfg.max_tunnels = match (cfg.max_tunnels_given, fd_cap) {
        (Some(n), Some(cap)) if n > cap => {
            warn!("--max-tunnels {n} is more than the open files limit allows ({cap}): accepts may fail with EMFILE");
            n
        }
        (Some(n), _) => n,
        (None, Some(cap)) => cap,
        (None, None) => server::MAX_TUNNELS,
    };
    cfg.peer_tunnels = cfg.peer_tunnels.min(cfg.max_tunnels);
    info!(
        "tunnels at most:{}, per peer address:{}",
        cfg.max_tunnels, cfg.peer_tunnels
    );
    let cfg = &cfg;
    info!(
        "intercept internal version:{}",
        tc_core::control::PROTOCOL_VERSION
    );
    let mut modes = vec!["TC_ADVANCED"];
    if cfg.combined {
        modes.push("TC_COMBINED");
    }
    if cfg.payload {
        modes.push("TC_PAYLOAD");
    }
    if cfg.full_payload {
        modes.push("FULL_PAYLOAD");
    }
    if cfg.single {
        modes.push("TC_SINGLE");
    }
    if cfg.dnat {
        modes.push("TC_DNAT");
    }
    info!(
        "modes:{} (batch {}), pcap version:{}",
        modes.join(","),
        cfg.batch,
        tc_core::capture::pcap_live::lib_version()
    );
    match (&cfg.route, &cfg.devices) {
        (Some(prefix), _) => info!("route:{prefix} (TUN device {})", route::DEVICE),
        (None, cli::Devices::All) => info!("device:all"),
        (None, cli::Devices::List(l)) => info!("device:{}", l.join(",")),
    }
    if cfg.route.is_none() {
        info!("user filter:{}", cfg.filter);
    }
    if cfg.route.is_none() {
        // With --route the answers go into the TUN device: no filter, nothing forwarded.
        if let Some(w) = intercept::probe::filter_warning(&cfg.filter) {
            warn!("{w}");
        }
        if intercept::probe::ip_forward() == Some(true) {
            warn!("this host forwards IP packets (net.ipv4.ip_forward=1): the target's answers intercept captures also go on to the fake clients, which answer or reset them; on this host: sysctl -w net.ipv4.ip_forward=0");
        }
    }
    if let Some((a, b)) = cfg.docker_rewrite {
        info!("-D para:{a}-{b}");
    }
    if cfg.open_to_anyone() {
        warn!(
            "--allow any: anyone who reaches {}:{} can connect, announce connections and read their responses",
            cfg.bind, cfg.port
        );
    } else if !cfg.allow.is_empty() {
        let list: Vec<String> = cfg
            .allow
            .iter()
            .map(|n| format!("{}/{}", n.addr, n.prefix))
            .collect();
        info!("allowed tcpcopy peers:{}", list.join(","));
    }
    // Before anything listens: a stop signal from then on is a graceful stop.
    let signals = server::install_signals()?;
    // Captures first: once tcpcopy can connect, responses are already being captured.
    // With --route, the TUN device instead; its guard is dropped after the server (declared
    // before it), deleting the route and the device at any exit from here on.
    let (_route, sources) = match cfg.route {
        Some(prefix) => {
            let (guard, tun) = route::RouteDevice::create(prefix)?;
            let source = server::NamedSource::new(route::DEVICE, Box::new(tun));
            (Some(guard), vec![source])
        }
        None => (None, server::open_captures(cfg)?),
    };
    let listener = server::bind_listener(cfg.bind, cfg.port)?;
    info!(
        "msg listen socket:{} on {}",
        listener.as_raw_fd(),
        listener.local_addr()?
    );
    let mut server = server::Server::new(cfg, listener, sources)?;
    // Signals are handled before the pid file exists: whoever reads it may stop us at once.
    server.handle_signals(signals)?;
    // Removed when dropped, at the end of this function.
    let _pid_file = match &cfg.pid_file {
        Some(p) => Some(daemon::PidFile::create(p)?),
        None => None,
    };
    if let Some(d) = detached {
        d.ready().context("cannot detach from the terminal")?;
    }
    server.run().map(|_| ())
}
