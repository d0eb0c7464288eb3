//! Command line: the single letters of the original intercept with their meanings, plus long
//! options for what the original chose at compile time (`--single`, `--disable-combined`,
//! `--payload`, `--dnat`) and an allow list of tcpcopy peers.
//!
//! [`parse`] turns the arguments into a validated [`Config`] or a [`CliExit`] telling `main` what
//! to print and which status to return; nothing here touches the network (the hidden
//! `--generate-docs <dir>` of packaging writes files and exits).

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use tc_core::control::{WireFormat, MAX_BATCH};

pub const VERSION: &str = "1.0.0";
pub use tc_core::control::DEFAULT_PORT;
/// [`DEFAULT_PORT`] as clap shows and parses it.
static DEFAULT_PORT_TEXT: LazyLock<String> = LazyLock::new(|| DEFAULT_PORT.to_string());
pub const DEFAULT_DELAY_TABLE: usize = 65536;
/// Tunnels one peer address may hold (tcpcopy opens `-C` (at most 11) per intercept).
pub const DEFAULT_PEER_TUNNELS: usize = 32;
/// Seconds after which a tunnel that holds no route and sent nothing is closed.
/// Off by default: the original tcpcopy sends nothing on a tunnel between sessions, so a
/// quiet production would lose its tunnels (and, without `-L`, its tcpcopy). tcpcopy-rs sends
/// a keepalive every 20 s: with only tcpcopy-rs peers, 60 is safe.
pub const DEFAULT_IDLE_TUNNEL_SECS: u64 = 0;
/// Seconds without any working capture device before intercept gives up.
pub const DEFAULT_CAPTURE_LOST_EXIT_SECS: u64 = 60;
/// Memory of the delay table, MiB.
pub const DEFAULT_DELAY_MEM_MIB: usize = 32;
pub const DEFAULT_MAX_ROUTES: usize = 1 << 20;
/// Idle route lifetime (the original's unused `DEFAULT_TIMEOUT`).
pub const DEFAULT_ROUTE_TIMEOUT_SECS: u64 = 1200;
pub use tc_core::capture::pcap_live::{MAX_DEVICES, MAX_FILTER_LEN};
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_DEVICE_NAME: usize = 15;
pub const MISSING_FILTER: &str = "please set filter (-F param) for capturing packets";

/// Which interfaces to capture on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    /// No `-i`, or `-i any`: every device pcap lists, each opened separately.
    All,
    /// An explicit list (`any` inside a list is the Linux "any" pseudo-device).
    List(Vec<String>),
}

/// An allowed tcpcopy peer: one address or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNet {
    /// An IPv4 or IPv6 network (an IPv6 peer connects over an IPv6 listener, `-b ::`).
    pub addr: IpAddr,
    pub prefix: u8,
}

impl PeerNet {
    /// `--allow any`: every address.
    pub const ANY: PeerNet = PeerNet {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        prefix: 0,
    };

    /// `--allow any` (a /0) takes every peer of either family; otherwise the families match.
    pub fn contains(&self, ip: impl Into<IpAddr>) -> bool {
        if self.prefix == 0 {
            return true;
        }
        match (self.addr, ip.into()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX << (32 - u32::from(self.prefix.min(32)));
                u32::from(ip) & mask == u32::from(net) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX << (128 - u32::from(self.prefix.min(128)));
                u128::from(ip) & mask == u128::from(net) & mask
            }
            _ => false,
        }
    }
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub filter: String,
    pub devices: Devices,
    pub port: u16,
    pub bind: IpAddr,
    /// Records per combined frame, 1..=16 (1..=6 with payloads).
    pub batch: usize,
    /// Delay table capacity (distinct connections waiting for their CLIENT_ADD).
    pub delay_table: usize,
    /// Delay table memory cap, bytes (records, entries and bookkeeping).
    pub delay_mem: usize,
    /// `-D A-B`: responses to A are rewritten and routed to B.
    pub docker_rewrite: Option<(Ipv4Addr, Ipv4Addr)>,
    pub log_file: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub daemon: bool,
    pub single: bool,
    /// `-c` (single mode): refuse a new tcpcopy while the old one still has tunnels.
    pub protect: bool,
    pub combined: bool,
    pub payload: bool,
    /// `--full-payload`: grant tcpcopies that ask (`tcpcopy --full-payload`) the target's
    /// response bytes, up to a cap per response.
    pub full_payload: bool,
    /// `--ipv6`: capture IPv6 answers too and grant the IPv6 variant of the control channel
    /// to a tcpcopy that asks (see `tc_core::control::ipv6`).
    pub ipv6: bool,
    pub dnat: bool,
    /// Empty: everyone may connect (the command line only allows that when listening on a
    /// loopback address; `--allow any` is [`PeerNet::ANY`]).
    pub allow: Vec<PeerNet>,
    pub route_timeout: Duration,
    pub max_routes: usize,
    /// Most simultaneous tunnels (main derives it from the open-files limit unless given).
    pub max_tunnels: usize,
    /// Exit (non-zero) when no capture device has worked for this long.
    pub capture_lost_exit: Duration,
    /// `--metrics ADDR:PORT`: serve Prometheus metrics there (off by default).
    pub metrics: Option<std::net::SocketAddr>,
    /// `--route PREFIX`: answers to PREFIX are routed to a TUN device and read there instead
    /// of captured (the filter and devices are then unused).
    pub route: Option<crate::route::Ipv4Prefix>,
    /// `--max-tunnels` as typed.
    pub max_tunnels_given: Option<usize>,
    /// Most simultaneous tunnels from one peer address.
    pub peer_tunnels: usize,
    /// A handshaken tunnel that holds no route and sent nothing this long is closed (zero:
    /// never).
    pub idle_tunnel_timeout: Duration,
}

impl Config {
    /// A config with the defaults and the given filter (tests and embedding).
    pub fn with_filter(filter: &str) -> Config {
        Config {
            filter: filter.to_string(),
            devices: Devices::All,
            port: DEFAULT_PORT,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            batch: MAX_BATCH,
            delay_table: DEFAULT_DELAY_TABLE,
            delay_mem: DEFAULT_DELAY_MEM_MIB << 20,
            docker_rewrite: None,
            log_file: None,
            pid_file: None,
            daemon: false,
            single: false,
            protect: false,
            combined: true,
            payload: false,
            full_payload: false,
            ipv6: false,
            dnat: false,
            allow: Vec::new(),
            route_timeout: Duration::from_secs(DEFAULT_ROUTE_TIMEOUT_SECS),
            max_routes: DEFAULT_MAX_ROUTES,
            max_tunnels: crate::server::MAX_TUNNELS,
            max_tunnels_given: None,
            capture_lost_exit: Duration::from_secs(DEFAULT_CAPTURE_LOST_EXIT_SECS),
            metrics: None,
            route: None,
            peer_tunnels: DEFAULT_PEER_TUNNELS,
            idle_tunnel_timeout: Duration::from_secs(DEFAULT_IDLE_TUNNEL_SECS),
        }
    }

    /// Records per combined frame at most (the wire maximum tcpcopy accepts).
    pub fn max_batch(&self) -> usize {
        WireFormat {
            combined: self.combined,
            payload: self.payload,
        }
        .max_batch()
    }

    pub fn peer_allowed(&self, ip: impl Into<IpAddr> + Copy) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip))
    }

    /// Anyone who reaches the listener may connect (`--allow any`, or a /0 in the list).
    pub fn open_to_anyone(&self) -> bool {
        self.allow.iter().any(|n| n.prefix == 0)
            || (self.allow.is_empty() && !self.bind.is_loopback())
    }
}

/// Why parsing did not produce a config: `main` prints `message` (to stdout when `status` is
/// 0, else to stderr) and exits with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliExit {
    pub message: String,
    pub status: i32,
}

impl CliExit {
    fn error(message: impl Into<String>) -> CliExit {
        CliExit {
            message: format!("intercept: {}", message.into()),
            status: 1,
        }
    }
}

const H_CAPTURE: &str = "Capture";
const H_CONTROL: &str = "Control channel (tcpcopy peers)";
const H_ROUTING: &str = "Routing and batching";
const H_VARIANTS: &str = "Wire variants (must match the tcpcopy side)";
const H_PROCESS: &str = "Process";

const EXAMPLES: &str = "\
Examples:
  intercept --route 203.0.113.0/24 --allow 10.0.0.1
      on the target host itself: answers to the fake clients 203.0.113.0/24 are routed to the
      TUN device tcrs0 (created at start, removed at exit) and read there; needs CAP_NET_ADMIN
      and rp_filter loose (2) or off (0) on the interface tcpcopy's packets arrive on
  intercept -F 'tcp and src port 8080' -i eth0 --allow 10.0.0.1
      capture the answers of a test server on port 8080 arriving on eth0, for the tcpcopy at
      10.0.0.1
  intercept -F 'tcp and src host 10.0.0.2 and src port 80' -b 10.0.0.5 --allow 10.0.0.1 -d -P /run/intercept.pid -l /var/log/intercept.log
      listen only on 10.0.0.5, accept only the tcpcopy at 10.0.0.1, run in the background

Log level: RUST_LOG (error, warn, info, debug, trace; default info).
Statistics are logged every 30 s and at exit. SIGINT/SIGTERM stop it.";

fn command() -> Command {
    Command::new("intercept")
        .about(
            "intercept 1.0.0 (tcpcopy-rs): captures the test server's responses and passes \
             their headers back to the tcpcopy that announced each connection",
        )
        .override_usage("intercept -F <filter> [options]\n       intercept --route <prefix> [options]")
        .disable_version_flag(true)
        .disable_help_flag(true)
        .after_help(EXAMPLES)
        .arg(
            Arg::new("filter")
                .short('F')
                .value_name("filter")
                .help_heading(H_CAPTURE)
                .help("pcap filter selecting the responses, e.g. 'tcp and src port 8080' (required unless --route)"),
        )
        .arg(
            Arg::new("route")
                .long("route")
                .value_name("prefix")
                .help_heading(H_CAPTURE)
                .help(ROUTE_HELP),
        )
        .arg(
            Arg::new("devices")
                .short('i')
                .value_name("dev[,dev...]")
                .help_heading(H_CAPTURE)
                .help("interfaces to capture on; 'any' alone = every interface [default: every interface]"),
        )
        .arg(
            Arg::new("metrics")
                .long("metrics")
                .value_name("addr:port")
                .value_parser(clap::value_parser!(std::net::SocketAddr))
                .help_heading(H_PROCESS)
                .help("serve Prometheus metrics (intercept_*) at http://ADDR:PORT/metrics [default: off]"),
        )
        .arg(
            Arg::new("capture_lost_exit")
                .long("capture-lost-exit")
                .value_name("secs")
                .value_parser(clap::value_parser!(u64).range(1..))
                .default_value("60")
                .help_heading(H_CAPTURE)
                .help("a lost capture device (deleted, down) is reopened with a backoff; exit with an error when none has worked this long"),
        )
        .arg(
            Arg::new("port")
                .short('p')
                .value_name("port")
                .value_parser(clap::value_parser!(u16))
                .default_value(DEFAULT_PORT_TEXT.as_str())
                .help_heading(H_CONTROL)
                .help("TCP port to listen on for tcpcopy"),
        )
        .arg(
            Arg::new("bind")
                .short('b')
                .value_name("ip")
                .value_parser(clap::value_parser!(IpAddr))
                .default_value("0.0.0.0")
                .help_heading(H_CONTROL)
                .help("address to listen on (IPv4, or IPv6 for tcpcopies that reach intercept over IPv6: -b :: or an address, with IPv6 --allow entries)"),
        )
        .arg(
            Arg::new("allow")
                .long("allow")
                .value_name("ip[/len][,...]")
                .help_heading(H_CONTROL)
                .help("accept tcpcopy connections only from these peers, IPv4 or IPv6 (others are refused and logged); 'any' = everyone. Required unless -b is a loopback address"),
        )
        .arg(
            Arg::new("peer_tunnels")
                .long("peer-tunnels")
                .value_name("num")
                .value_parser(clap::value_parser!(u64).range(1..=65536))
                .default_value("32")
                .help_heading(H_CONTROL)
                .help("tunnels one peer address may hold at once; more are refused"),
        )
        .arg(
            Arg::new("max_tunnels")
                .long("max-tunnels")
                .value_name("num")
                .value_parser(clap::value_parser!(u64).range(1..=1048576))
                .help_heading(H_CONTROL)
                .help("tunnels at once, all peers [default: the open-files limit (raised to its hard limit at start) less 64]"),
        )
        .arg(
            Arg::new("idle_tunnel_timeout")
                .long("idle-tunnel-timeout")
                .value_name("secs")
                .value_parser(|v: &str| -> Result<u64, String> {
                    let n: u64 = v.parse().map_err(|e| format!("{e}"))?;
                    if n != 0 && n < 30 {
                        return Err("0 (never) or at least 30: tcpcopy-rs sends a keepalive every 20 s, the original tcpcopy none".into());
                    }
                    Ok(n)
                })
                .default_value("0")
                .help_heading(H_CONTROL)
                .help("close a tunnel that holds no route and sent nothing this long: 0 (never) or >= 30; not with --single. tcpcopy-rs sends a keepalive every 20 s, the original tcpcopy nothing between sessions: set it only when every peer is tcpcopy-rs"),
        )
        .arg(
            Arg::new("batch")
                .short('n')
                .value_name("num")
                .value_parser(clap::value_parser!(usize))
                .help_heading(H_ROUTING)
                .help("records per combined frame, 1..16 (1..6 with --payload) [default: 16, 6 with --payload]"),
        )
        .arg(
            Arg::new("delay")
                .short('s')
                .value_name("num")
                .value_parser(clap::value_parser!(usize))
                .default_value("65536")
                .help_heading(H_ROUTING)
                .help("delay table: connections whose SYN-ACK/RST may wait (30 s) for their CLIENT_ADD; the original's bucket count (chained, unbounded), here entries, at least 65536"),
        )
        .arg(
            Arg::new("delay_mem")
                .long("delay-mem")
                .value_name("MiB")
                .value_parser(clap::value_parser!(u64).range(1..=4096))
                .default_value("32")
                .help_heading(H_ROUTING)
                .help("memory of the delay table at most; SYN-ACKs beyond it are not held"),
        )
        .arg(
            Arg::new("rewrite")
                .short('D')
                .value_name("A-B")
                .help_heading(H_ROUTING)
                .help("rewrite the destination A of responses to B (docker setups) before routing"),
        )
        .arg(
            Arg::new("route_timeout")
                .short('t')
                .long("route-timeout")
                .value_name("secs")
                .value_parser(clap::value_parser!(u64).range(1..))
                .default_value("1200")
                .help_heading(H_ROUTING)
                .help("forget routes idle this long (a connection the target ended: after 30 to 60 s)"),
        )
        .arg(
            Arg::new("max_routes")
                .long("max-routes")
                .value_name("num")
                .value_parser(clap::value_parser!(usize))
                .default_value("1048576")
                .help_heading(H_ROUTING)
                .help("route table capacity; the least recently used routes are evicted beyond it"),
        )
        .arg(
            Arg::new("single")
                .long("single")
                .action(ArgAction::SetTrue)
                .help_heading(H_VARIANTS)
                .help("one tcpcopy only: no routes, responses spread over its tunnels by hash"),
        )
        .arg(
            Arg::new("protect")
                .short('c')
                .action(ArgAction::SetTrue)
                .help_heading(H_VARIANTS)
                .help("with --single: refuse a second tcpcopy while the first is connected"),
        )
        .arg(
            Arg::new("disable_combined")
                .long("disable-combined")
                .action(ArgAction::SetTrue)
                .help_heading(H_VARIANTS)
                .help("send each record alone, without the 2-byte count prefix"),
        )
        .arg(
            Arg::new("payload")
                .long("payload")
                .alias("with-resp-payload")
                .action(ArgAction::SetTrue)
                .help_heading(H_VARIANTS)
                .help("192-byte records carrying up to 128 bytes of response payload"),
        )
        .arg(
            Arg::new("full_payload")
                .long("full-payload")
                .action(ArgAction::SetTrue)
                .help_heading(H_VARIANTS)
                .help("send the target's response bytes (up to 64 KiB per response) to a tcpcopy that asks with --full-payload (tcpcopy --diff); others get the records only"),
        )
        .arg(
            Arg::new("ipv6")
                .long("ipv6")
                .action(ArgAction::SetTrue)
                .help_heading(H_VARIANTS)
                .help("capture IPv6 answers too and route them to a tcpcopy replaying IPv6 (its tunnels ask for the IPv6 variant of the control channel; without --ipv6 they are refused and tcpcopy stops). The filter must match them: 'tcp and src port 8080' does"),
        )
        .arg(
            Arg::new("dnat")
                .long("dnat")
                .action(ArgAction::SetTrue)
                .help_heading(H_VARIANTS)
                .help("route without the target IP (responses come from another address)"),
        )
        .arg(
            Arg::new("log")
                .short('l')
                .value_name("file")
                .value_parser(clap::value_parser!(PathBuf))
                .help_heading(H_PROCESS)
                .help("log file (appended) [default: stderr]"),
        )
        .arg(
            Arg::new("pid")
                .short('P')
                .value_name("file")
                .value_parser(clap::value_parser!(PathBuf))
                .help_heading(H_PROCESS)
                .help("write the process id to this file (after -d detaches)"),
        )
        .arg(
            Arg::new("daemon")
                .short('d')
                .action(ArgAction::SetTrue)
                .help_heading(H_PROCESS)
                .help("run in the background, once listening and capturing work"),
        )
        .arg(
            Arg::new("version")
                .short('v')
                .action(ArgAction::SetTrue)
                .help_heading(H_PROCESS)
                .help("print the version and exit"),
        )
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::SetTrue)
                .help_heading(H_PROCESS)
                .help("print this help and exit"),
        )
        .arg(
            Arg::new("generate_docs")
                .long("generate-docs")
                .value_name("dir")
                .value_parser(clap::value_parser!(PathBuf))
                .hide(true)
                .help("Packaging: writes the man page and shell completions (scripts/package.sh)"),
        )
}

/// `--generate-docs <dir>`: intercept.8 and the bash, zsh and fish completions, from the same
/// definitions as `-h`. Returns the files written.
pub fn generate_docs(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let cmd = command()
        .about("pass a test server's responses back to tcpcopy")
        .long_about(format!(
            "intercept {VERSION} (tcpcopy-rs): captures the test server's responses and passes \
             their headers back to the tcpcopy that announced each connection."
        ));
    let package = format!("tcpcopy-rs {}", env!("CARGO_PKG_VERSION"));
    let extras = tc_core::docs::ManExtras {
        package: &package,
        see_also: &["tcpcopy(8)"],
    };
    tc_core::docs::generate(cmd, &extras, dir)
}

/// The second line of `-v`: this implementation's version and the git commit it was built
/// from (build.rs; "unknown" without git).
pub fn build_line() -> String {
    format!(
        "tcpcopy-rs {} (git commit {})",
        env!("CARGO_PKG_VERSION"),
        env!("TC_GIT_COMMIT")
    )
}

/// Parses and validates the command line (`args` includes the program name).
pub fn parse<I, T>(args: I) -> Result<Config, CliExit>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = command();
    let m = match cmd.try_get_matches_from_mut(args) {
        Ok(m) => m,
        Err(e) => {
            return Err(CliExit {
                message: e.render().to_string().trim_end().to_string(),
                status: 2,
            })
        }
    };
    if m.get_flag("help") {
        return Err(CliExit {
            message: cmd.render_help().to_string(),
            status: 0,
        });
    }
    if m.get_flag("version") {
        return Err(CliExit {
            message: format!("intercept version:{VERSION}\n{}", build_line()),
            status: 0,
        });
    }
    if let Some(dir) = m.get_one::<PathBuf>("generate_docs") {
        return Err(match generate_docs(dir) {
            Ok(files) => CliExit {
                message: files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
                status: 0,
            },
            Err(e) => CliExit::error(format!("writing the docs to {}: {e}", dir.display())),
        });
    }
    from_matches(&m)
}

fn from_matches(m: &ArgMatches) -> Result<Config, CliExit> {
    let route = match m.get_one::<String>("route") {
        None => None,
        Some(s) => Some(
            crate::route::Ipv4Prefix::parse(s)
                .map_err(|e| CliExit::error(format!("--route {e}")))?,
        ),
    };
    if route.is_some() && (m.contains_id("filter") || m.contains_id("devices")) {
        return Err(CliExit::error(
            "--route reads the answers from its TUN device: -F and -i do not apply with it",
        ));
    }
    let filter = match m.get_one::<String>("filter") {
        Some(f) if !f.trim().is_empty() => f.clone(),
        _ if route.is_some() => String::new(),
        _ => {
            return Err(CliExit {
                message: MISSING_FILTER.to_string(),
                status: 1,
            })
        }
    };
    if filter.len() > MAX_FILTER_LEN {
        return Err(CliExit::error(format!(
            "filter too long ({} bytes, at most {MAX_FILTER_LEN})",
            filter.len()
        )));
    }
    let devices = match m.get_one::<String>("devices") {
        None => Devices::All,
        Some(s) => parse_devices(s)?,
    };
    let payload = m.get_flag("payload");
    let mut cfg = Config::with_filter(&filter);
    cfg.devices = devices;
    cfg.payload = payload;
    cfg.full_payload = m.get_flag("full_payload");
    cfg.ipv6 = m.get_flag("ipv6");
    cfg.port = *m.get_one::<u16>("port").unwrap_or(&DEFAULT_PORT);
    cfg.bind = *m
        .get_one::<IpAddr>("bind")
        .unwrap_or(&IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let max_batch = cfg.max_batch();
    cfg.batch = match m.get_one::<usize>("batch") {
        None => max_batch,
        Some(&n) if (1..=max_batch).contains(&n) => n,
        Some(&n) => {
            return Err(CliExit::error(format!(
                "-n {n}: the batch size must be between 1 and {max_batch}"
            )))
        }
    };
    cfg.delay_table = match m.get_one::<usize>("delay") {
        Some(&0) => {
            return Err(CliExit::error(
                "-s 0: the delay table needs at least 1 slot",
            ))
        }
        Some(&n) => n,
        None => DEFAULT_DELAY_TABLE,
    };
    cfg.delay_mem = m
        .get_one::<u64>("delay_mem")
        .map_or(DEFAULT_DELAY_MEM_MIB << 20, |&mib| (mib as usize) << 20);
    cfg.docker_rewrite = match m.get_one::<String>("rewrite") {
        None => None,
        Some(s) => Some(parse_rewrite(s)?),
    };
    cfg.allow = match m.get_one::<String>("allow") {
        None if !cfg.bind.is_loopback() => {
            return Err(CliExit::error(format!("-b {}: {ALLOW_REQUIRED}", cfg.bind)))
        }
        None => Vec::new(),
        Some(s) => parse_allow(s)?,
    };
    cfg.route_timeout = Duration::from_secs(
        *m.get_one::<u64>("route_timeout")
            .unwrap_or(&DEFAULT_ROUTE_TIMEOUT_SECS),
    );
    cfg.max_routes = match m.get_one::<usize>("max_routes") {
        Some(&0) => return Err(CliExit::error("--max-routes 0: need at least 1 route")),
        Some(&n) => n,
        None => DEFAULT_MAX_ROUTES,
    };
    cfg.peer_tunnels = m
        .get_one::<u64>("peer_tunnels")
        .map_or(DEFAULT_PEER_TUNNELS, |&n| n as usize);
    cfg.max_tunnels_given = m.get_one::<u64>("max_tunnels").map(|&n| n as usize);
    cfg.idle_tunnel_timeout = Duration::from_secs(
        *m.get_one::<u64>("idle_tunnel_timeout")
            .unwrap_or(&DEFAULT_IDLE_TUNNEL_SECS),
    );
    cfg.metrics = m.get_one::<std::net::SocketAddr>("metrics").copied();
    cfg.route = route;
    cfg.capture_lost_exit = Duration::from_secs(
        *m.get_one::<u64>("capture_lost_exit")
            .unwrap_or(&DEFAULT_CAPTURE_LOST_EXIT_SECS),
    );
    cfg.log_file = m.get_one::<PathBuf>("log").cloned();
    cfg.pid_file = m.get_one::<PathBuf>("pid").cloned();
    cfg.daemon = m.get_flag("daemon");
    cfg.single = m.get_flag("single");
    cfg.protect = m.get_flag("protect");
    if cfg.protect && !cfg.single {
        return Err(CliExit::error("-c only applies with --single"));
    }
    cfg.combined = !m.get_flag("disable_combined");
    cfg.dnat = m.get_flag("dnat");
    Ok(cfg)
}

fn parse_devices(s: &str) -> Result<Devices, CliExit> {
    if s == "any" {
        return Ok(Devices::All);
    }
    let mut list: Vec<String> = Vec::new();
    for name in s.split(',') {
        if name.is_empty() {
            return Err(CliExit::error(format!("-i {s:?}: empty interface name")));
        }
        if name.len() > MAX_DEVICE_NAME {
            return Err(CliExit::error(format!(
                "-i: interface name {name:?} is longer than {MAX_DEVICE_NAME} characters"
            )));
        }
        if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    }
    if list.len() > MAX_DEVICES {
        return Err(CliExit::error(format!(
            "-i: at most {MAX_DEVICES} interfaces ({} given)",
            list.len()
        )));
    }
    Ok(Devices::List(list))
}

fn parse_rewrite(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), CliExit> {
    let bad = || {
        CliExit::error(format!(
            "dockered ips \"{s}\" is invalid (expected A-B, two IPv4 addresses)"
        ))
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
    Ok((a, b))
}

const ROUTE_HELP: &str = "run on the target host itself: route PREFIX (the fake clients of tcpcopy -c, e.g. 203.0.113.0/24) to the TUN device tcrs0 and read the answers there, instead of capturing with -F/-i; the device and route are removed at exit [default: off]";

/// Why intercept does not start open to anyone by default.
pub const ALLOW_REQUIRED: &str = "listening on a non-loopback address without --allow would let anyone who reaches the port announce connections and read their responses: add --allow <tcpcopy host address>[,...] (an address or address/prefix, e.g. --allow 10.0.0.1), or --allow any to accept every peer, or -b 127.0.0.1 to listen on loopback only";

fn parse_allow(s: &str) -> Result<Vec<PeerNet>, CliExit> {
    let mut out = Vec::new();
    for item in s.split(',') {
        if item.trim() == "any" {
            out.push(PeerNet::ANY);
            continue;
        }
        let bad = || {
            CliExit::error(format!(
                "--allow: {item:?} is not an IP address or address/prefix"
            ))
        };
        let (addr, prefix) = match item.split_once('/') {
            None => (item, None),
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        out.push(PeerNet { addr, prefix });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Config, CliExit> {
        let mut v = vec!["intercept"];
        v.extend_from_slice(args);
        parse(v)
    }

    #[test]
    fn ipv6_listener_allow_list_and_variant() {
        let c = p(&[
            "-F",
            "tcp and src port 8080",
            "-b",
            "::",
            "--allow",
            "2001:db8::20,2001:db8:1::/48,198.18.0.20",
            "--ipv6",
        ])
        .unwrap();
        assert!(c.ipv6);
        assert_eq!(c.bind, "::".parse::<IpAddr>().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c.peer_allowed(ip("2001:db8::20")));
        assert!(c.peer_allowed(ip("2001:db8:1:ffff::9")));
        assert!(!c.peer_allowed(ip("2001:db8::21")));
        assert!(c.peer_allowed(ip("198.18.0.20")));
        assert!(!c.peer_allowed(ip("198.18.0.21")));
        assert!(PeerNet::ANY.contains(ip("2001:db8::99")));
        assert!(!c.open_to_anyone());
        for bad in ["2001:db8::/129", "198.18.0.0/33", "2001:db8::x"] {
            let e = p(&["-F", "tcp", "--allow", bad]).unwrap_err();
            assert!(
                e.message.contains("not an IP address"),
                "{bad}: {}",
                e.message
            );
        }
        // Without --allow an IPv6 wildcard listener is refused like 0.0.0.0.
        let e = p(&["-F", "tcp", "-b", "::"]).unwrap_err();
        assert!(e.message.contains("--allow"), "{}", e.message);
        assert!(!p(&["-F", "tcp", "--allow", "any"]).unwrap().ipv6);
    }

    #[test]
    fn missing_filter_is_the_original_message() {
        let e = p(&["-i", "eth0"]).unwrap_err();
        assert_eq!(e.message, MISSING_FILTER);
        assert_ne!(e.status, 0);
    }

    #[test]
    fn version_and_help() {
        let v = p(&["-v"]).unwrap_err();
        assert_eq!(v.status, 0);
        let lines: Vec<&str> = v.message.lines().collect();
        assert_eq!(lines[0], "intercept version:1.0.0");
        let build = format!("tcpcopy-rs {} (git commit ", env!("CARGO_PKG_VERSION"));
        assert!(lines[1].starts_with(&build), "{lines:?}");
        let h = p(&["-h"]).unwrap_err();
        assert_eq!(h.status, 0);
        for flag in [
            "-i", "-F", "-n", "-p", "-s", "-D", "-l", "-P", "-b", "-v", "-h", "-d",
        ] {
            assert!(
                h.message.contains(flag),
                "help lacks {flag}:\n{}",
                h.message
            );
        }
        assert!(h.message.contains("36524") && h.message.contains("Examples"));
    }

    #[test]
    fn defaults() {
        let c = p(&["-F", "tcp and src port 8080", "--allow", "any"]).unwrap();
        assert_eq!(c.port, 36524);
        assert_eq!(c.bind, Ipv4Addr::UNSPECIFIED);
        assert_eq!(c.devices, Devices::All);
        assert_eq!((c.batch, c.delay_table), (16, 65536));
        assert_eq!(c.delay_mem, 32 << 20);
        assert!(c.combined && !c.payload && !c.single && !c.dnat && !c.daemon);
        assert!(c.peer_allowed(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(c.open_to_anyone());
    }

    /// Issue 15.1: no longer open to anyone by default.
    #[test]
    fn open_listener_needs_an_allow_list() {
        for args in [&["-F", "tcp"][..], &["-F", "tcp", "-b", "198.18.0.40"]] {
            let e = p(args).unwrap_err();
            assert_ne!(e.status, 0);
            assert!(
                e.message.contains("--allow <tcpcopy host address>")
                    && e.message.contains("--allow any"),
                "{}",
                e.message
            );
        }
        // Loopback only: nobody else can reach it.
        let c = p(&["-F", "tcp", "-b", "127.0.0.1"]).unwrap();
        assert!(c.allow.is_empty() && !c.open_to_anyone());
        let c = p(&["-F", "tcp", "--allow", "198.18.0.20"]).unwrap();
        assert!(!c.open_to_anyone());
        assert!(!c.peer_allowed(Ipv4Addr::new(198, 18, 0, 21)));
        let c = p(&["-F", "tcp", "--allow", "198.18.0.20,any"]).unwrap();
        assert!(c.open_to_anyone());
    }

    #[test]
    fn options() {
        let c = p(&[
            "-F",
            "tcp",
            "-i",
            "eth0,any,eth0",
            "-p",
            "4000",
            "-b",
            "127.0.0.1",
            "-n",
            "5",
            "-s",
            "10",
            "-D",
            "10.0.0.1-10.0.0.2",
            "-P",
            "/tmp/x.pid",
            "-d",
            "--payload",
            "--dnat",
            "--disable-combined",
            "--allow",
            "198.18.0.20,198.18.1.0/24",
        ])
        .unwrap();
        assert_eq!(c.devices, Devices::List(vec!["eth0".into(), "any".into()]));
        assert_eq!((c.port, c.batch, c.delay_table), (4000, 5, 10));
        assert_eq!(c.bind, Ipv4Addr::LOCALHOST);
        assert_eq!(
            c.docker_rewrite,
            Some((Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)))
        );
        assert!(c.payload && c.dnat && !c.combined && c.daemon);
        assert!(c.peer_allowed(Ipv4Addr::new(198, 18, 0, 20)));
        assert!(c.peer_allowed(Ipv4Addr::new(198, 18, 1, 77)));
        assert!(!c.peer_allowed(Ipv4Addr::new(198, 18, 0, 21)));
        assert_eq!(
            p(&["-F", "tcp", "-i", "any", "-b", "127.0.0.1"])
                .unwrap()
                .devices,
            Devices::All
        );
        assert_eq!(
            p(&["-F", "tcp", "--payload", "--allow", "any"])
                .unwrap()
                .batch,
            6
        );
    }

    /// Issue 17: `--route PREFIX` replaces -F/-i.
    #[test]
    fn route_takes_a_prefix_and_replaces_the_filter() {
        let c = p(&["--route", "203.0.113.0/24", "--allow", "198.18.0.20"]).unwrap();
        assert_eq!(
            c.route,
            Some(crate::route::Ipv4Prefix {
                addr: Ipv4Addr::new(203, 0, 113, 0),
                len: 24
            })
        );
        assert!(c.filter.is_empty());
        assert_eq!(
            p(&["-F", "tcp", "-b", "127.0.0.1"]).unwrap().route,
            None,
            "off by default"
        );
        let h = p(&["-h"]).unwrap_err().message;
        assert!(h.contains("--route") && h.contains("tcrs0"), "{h}");
        for (args, says) in [
            (
                &["--route", "203.0.113.0/24", "-F", "tcp", "-b", "127.0.0.1"][..],
                "-F and -i do not apply",
            ),
            (
                &["--route", "203.0.113.0/24", "-i", "eth0", "-b", "127.0.0.1"],
                "-F and -i do not apply",
            ),
            (
                &["--route", "203.0.113.9/24", "-b", "127.0.0.1"],
                "did you mean 203.0.113.0/24",
            ),
            (
                &["--route", "0.0.0.0/0", "-b", "127.0.0.1"],
                "whole traffic",
            ),
            (&["--route", "x", "-b", "127.0.0.1"], "not an IPv4 prefix"),
            // The allow list is still required off loopback.
            (&["--route", "203.0.113.0/24"], "--allow"),
        ] {
            let e = p(args).unwrap_err();
            assert_ne!(e.status, 0, "{args:?}");
            assert!(e.message.contains(says), "{args:?}: {}", e.message);
        }
    }

    #[test]
    fn bad_arguments_fail_clearly() {
        for args in [
            &["-F", "tcp", "-x"][..],
            &["-F"],
            &["-F", "tcp", "-p"],
            &["-F", "tcp", "-p", "70000"],
            &["-F", "tcp", "-p", "abc"],
            &["-F", "tcp", "-b", "1.2.3"],
            &["-F", "tcp", "-n", "0"],
            &["-F", "tcp", "-n", "17"],
            &["-F", "tcp", "--payload", "-n", "7"],
            &["-F", "tcp", "-s", "0"],
            &["-F", "tcp", "-D", "1.2.3.4"],
            &["-F", "tcp", "-D", "1.2.3.4-x"],
            &["-F", "tcp", "--allow", "1.2.3.4/33"],
            &["-F", "tcp", "--allow", "host"],
            &["-F", "tcp", "-i", "a,,b"],
            &["-F", "tcp", "-i", "averyveryverylongname0"],
            &["-F", "tcp", "-c"],
            &["-F", "tcp", "-t", "0"],
        ] {
            let e = p(args).unwrap_err();
            assert_ne!(e.status, 0, "{args:?}");
            assert!(!e.message.is_empty(), "{args:?}");
        }
        let e = p(&["-F", "tcp", "-D", "1.2.3.4"]).unwrap_err();
        assert!(
            e.message.contains("dockered ips \"1.2.3.4\" is invalid"),
            "{}",
            e.message
        );
        let long = "x".repeat(5000);
        assert!(p(&["-F", &long])
            .unwrap_err()
            .message
            .contains("filter too long"));
    }
}
