//! Command line: the single-letter options of the original tcpcopy (spec section 2) plus long
//! options choosing the run-time modes. Everything is validated here; invalid addresses, ports,
//! MACs and out-of-range numbers are errors (the original truncated or zeroed them silently).

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use tc_core::session::{ReplayConfig, Transfer};

pub const VERSION: &str = "1.3.0";
/// Control-protocol version sent in the first record of every tunnel.
pub const INTERNAL_VERSION: u16 = tc_core::control::PROTOCOL_VERSION;
pub const MAX_INTERCEPTS: usize = 32;
pub const MAX_TRANSFERS: usize = 32;
pub const MAX_CLIENT_IPS: usize = 4096;
pub const MAX_PCAP_DEVICES: usize = 32;
pub const MAX_FILTER_LEN: usize = 4095;

/// Exit status for command-line errors (clap's convention).
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptureKind {
    /// AF_INET raw socket: packets addressed to this host (default).
    Raw,
    /// libpcap on devices (`-i dev,...`, `-F`, `-B`, `-S`).
    Pcap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendKind {
    /// Raw IPv4 socket with IP_HDRINCL through the host's routing (default).
    Raw,
    /// Ethernet frames injected on `-o dev` with the MACs of `-x`.
    Pcap,
}

/// Raw clap view. Numbers carry their ranges so clap reports out-of-range values clearly.
#[derive(Parser, Debug)]
#[command(
    name = "tcpcopy",
    disable_help_flag = true,
    disable_version_flag = true,
    allow_negative_numbers = true,
    override_usage = "tcpcopy -x <transfers> -s <intercepts> [options]   (tcpcopy -h for help)"
)]
struct RawArgs {
    #[arg(short = 'x')]
    transfers: Option<String>,
    #[arg(short = 'c')]
    client_ips: Option<String>,
    #[arg(short = 'H')]
    localhost_replacement: Option<String>,
    #[arg(short = 's')]
    intercepts: Option<String>,
    #[arg(short = 'p', value_parser = clap::value_parser!(u16).range(1..))]
    intercept_port: Option<u16>,
    #[arg(short = 'C', value_parser = clap::value_parser!(u16).range(1..=11))]
    conns: Option<u16>,
    #[arg(short = 'n', value_parser = clap::value_parser!(u16).range(1..=1023))]
    replicas: Option<u16>,
    #[arg(short = 'f', value_parser = clap::value_parser!(u16).range(0..=31))]
    port_shift: Option<u16>,
    #[arg(short = 'r', value_parser = clap::value_parser!(u8).range(0..=100))]
    sample_percent: Option<u8>,
    #[arg(short = 'g')]
    gradual: bool,
    #[arg(short = 'm', value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    memory_mb: Option<u64>,
    #[arg(short = 'M', value_parser = clap::value_parser!(u16).range(128..))]
    mtu: Option<u16>,
    #[arg(short = 'D', value_parser = clap::value_parser!(u16).range(1..))]
    mss: Option<u16>,
    #[arg(short = 'R', value_parser = clap::value_parser!(u16).range(0..))]
    rtt_ms: Option<u16>,
    #[arg(short = 'U', value_parser = clap::value_parser!(u16).range(1..=63))]
    pool_kb: Option<u16>,
    #[arg(short = 't', value_parser = clap::value_parser!(u32).range(0..=31_536_000))]
    session_timeout: Option<u32>,
    #[arg(short = 'k', value_parser = clap::value_parser!(u32).range(1..=31_536_000))]
    keepalive_timeout: Option<u32>,
    #[arg(short = 'l')]
    log_file: Option<PathBuf>,
    #[arg(short = 'P')]
    pid_file: Option<PathBuf>,
    #[arg(short = 'O')]
    only_with_syn: bool,
    #[arg(short = 'W')]
    dont_wait: bool,
    #[arg(short = 'L')]
    lonely: bool,
    #[arg(short = 'd')]
    daemon: bool,
    /// pcap capture devices, or (offline) the pcap file.
    #[arg(short = 'i')]
    input: Option<String>,
    #[arg(short = 'F')]
    filter: Option<String>,
    #[arg(short = 'B', value_parser = clap::value_parser!(u32).range(1..=2047))]
    pcap_buffer_mb: Option<u32>,
    #[arg(short = 'S', value_parser = clap::value_parser!(u32).range(64..=65535))]
    snaplen: Option<u32>,
    #[arg(short = 'o')]
    output_device: Option<String>,
    #[arg(short = 'a', value_parser = clap::value_parser!(u32).range(1..=100_000))]
    accel: Option<u32>,
    #[arg(short = 'I', value_parser = clap::value_parser!(u32).range(1..))]
    interval_ms: Option<u32>,
    #[arg(short = 'T', value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    passes: Option<u32>,
    #[arg(short = 'h')]
    help: bool,
    #[arg(short = 'v')]
    version: bool,
    /// Offline: seconds to keep running after the end of each pass (default 120).
    #[arg(long = "offline-tail", value_parser = clap::value_parser!(u32).range(0..=86_400))]
    offline_tail: Option<u32>,
    #[arg(long = "capture", value_enum)]
    capture: Option<CaptureKind>,
    #[arg(long = "send", value_enum)]
    send: Option<SendKind>,
    #[arg(long = "disable-combined")]
    disable_combined: bool,
    #[arg(long = "payload", alias = "with-resp-payload")]
    payload: bool,
    #[arg(long = "single")]
    single: bool,
}

/// Where packets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Raw,
    Pcap {
        /// Empty = every device except `any`.
        devices: Vec<String>,
        /// `-F`, used verbatim; otherwise [`auto_filter`] of the transfers.
        filter: String,
        user_filter: bool,
        buffer_bytes: u32,
        snaplen: u32,
    },
    /// `-i file`: replay a pcap file (next issue).
    Offline {
        file: PathBuf,
        accel: u32,
        max_gap: Option<Duration>,
        passes: u32,
        /// Time the sessions get to finish after each pass (`--offline-tail`).
        tail: Duration,
    },
}

/// Where replayed packets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    Raw,
    Pcap { device: String },
}

/// Control-channel variant; must match intercept's (nothing on the wire announces it).
/// The control-channel variant (`--disable-combined`, `--payload`), shared with intercept.
pub type WireOptions = tc_core::control::WireFormat;

/// Validated options for a run.
#[derive(Debug, Clone)]
pub struct Options {
    pub replay: ReplayConfig,
    pub intercepts: Vec<SocketAddrV4>,
    pub conns_per_intercept: usize,
    pub input: Input,
    pub output: OutputKind,
    pub wire: WireOptions,
    pub lonely: bool,
    pub daemon: bool,
    pub log_file: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub memory_limit_bytes: u64,
    /// The `-x` text as given, for the start-up log.
    pub transfers_text: String,
    pub intercepts_text: String,
    pub client_ips_text: Option<String>,
}

#[derive(Debug)]
pub enum Command {
    Run(Box<Options>),
    Help,
    Version,
}

/// A command-line error: printed on stderr, exit status [`EXIT_USAGE`].
#[derive(Debug, PartialEq, Eq)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

fn err<T>(msg: impl Into<String>) -> Result<T, CliError> {
    Err(CliError(msg.into()))
}

pub fn version_line() -> String {
    format!("tcpcopy version:{VERSION}")
}

pub const HELP: &str = "\
tcpcopy 1.3.0 (tcpcopy-rs): copies live TCP traffic to a test server.

Usage: tcpcopy -x <transfers> -s <intercepts> [options]

Required:
  -x <transfers>   what to copy and where: SRC-DST[,SRC-DST...], each side [IP:]PORT[@MAC].
                   SRC without IP = any local address; DST needs an IP or a host
                   name (resolved once at start-up to its first IPv4 address).
                   e.g. 80-198.18.0.30:8080  or  198.18.0.20:80-testhost:8080
                   --send pcap: 80@<out if MAC>-198.18.0.30:8080@<next hop MAC>
  -s <intercepts>  intercept addresses HOST[:PORT][,HOST[:PORT]...] (at most 32),
                   HOST an IPv4 address or a host name

Control channel:
  -p <port>        intercept port for -s entries without one (default 36524)
  -C <n>           connections per intercept, 1..11 (default 2)
  -L               keep running when every intercept is gone; reconnect every 12 s
  --disable-combined  bare response records (intercept --disable-combined)
  --payload        192-byte response records carrying payload (intercept --payload)
  --single         send no CLIENT_ADD (intercept --single)

Replay:
  -c <ips>         rewrite client IPs: a.b.c.d or a.b.c.x (= .1-.254), comma separated,
                   at most 4096 (targets left out). e.g. -c 203.0.113.x
  -H <ip>          source IP for captured packets from 127.0.0.1
  -n <n>           copies of every session, 1..1023 (default 1)
  -f <n>           port-shift factor for several tcpcopy instances, 0..31 (default 0)
  -r <percent>     replay this percentage of sessions, 0..100 (default 0 = all)
  -g               ramp from 1% to 100% of sessions over about 100 s (overrides -r)
  -O               only replay sessions whose SYN was captured (no mid-stream pickup)
  -W               do not wait for the response before sending the next request
  -M <bytes>       MTU: longer captured packets are split, 128..65535 (default 1500)
  -D <bytes>       MSS in faked SYNs (default 1460)
  -R <ms>          fixed RTT instead of the measured one (default 0 = measure)
  -t <s>           session timeout: target silent this long (default 600)
  -k <s>           keepalive timeout of idle sessions (default -t + 120)
  -U <KB>          session pool size, accepted and ignored (1..63)

Capture:
  --capture <raw|pcap>  raw IP socket (default) or libpcap on devices; -i <dev> implies pcap
  -i <dev[,dev]>   pcap devices (default: all but `any`); -i <file> = offline replay
  -F <filter>      pcap BPF filter (default: built from -x)
  -B <MB>          pcap kernel buffer, 1..2047 (default 16)
  -S <bytes>       pcap snaplen, 64..65535 (default 65535)

Offline (-i <pcap file>):
  -a <n>           replay n times faster (default 1)
  -I <ms>          skip gaps longer than this (default off)
  -T <n>           passes over the file (default 1)
  --offline-tail <s>  keep running this long after each pass (default 120)

Send:
  --send <raw|pcap>  raw IP socket (default) or Ethernet frames injected on -o
  -o <dev>         output device for --send pcap

Process:
  -m <MB>          stop when the resident memory exceeds this (default 2048)
  -l <file>        log file (default stderr); RUST_LOG sets the level (default info)
  -P <file>        pid file
  -d               run as a daemon
  -h               this help
  -v               version

Example:
  tcpcopy -x 80-198.18.0.30:8080 -s 198.18.0.40 -c 203.0.113.x
";

/// Parses the command line (`args` includes the program name).
pub fn parse<I, T>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let raw = RawArgs::try_parse_from(args).map_err(|e| {
        // clap's own rendering names the option and the accepted range.
        let text = e.render().to_string();
        CliError(text.trim_end().to_string())
    })?;
    if raw.help {
        return Ok(Command::Help);
    }
    if raw.version {
        return Ok(Command::Version);
    }
    validate(raw).map(|o| Command::Run(Box::new(o)))
}

fn validate(raw: RawArgs) -> Result<Options, CliError> {
    let Some(transfers_text) = raw.transfers.clone() else {
        return err("no -x argument (what to copy and where, e.g. -x 80-198.18.0.30:8080)");
    };
    let Some(intercepts_text) = raw.intercepts.clone() else {
        return err("tcpcopy needs -s (intercept addresses, e.g. -s 198.18.0.40)");
    };
    let transfers = parse_transfers(&transfers_text)?;
    let intercept_port = raw.intercept_port.unwrap_or(tc_core::control::DEFAULT_PORT);
    let intercepts = parse_intercepts(&intercepts_text, intercept_port)?;

    let target_ips: Vec<Ipv4Addr> = transfers.iter().map(|t| t.dst_ip).collect();
    let client_ips = match &raw.client_ips {
        Some(text) => parse_client_ips(text, &target_ips)?,
        None => Vec::new(),
    };
    let localhost_replacement = match &raw.localhost_replacement {
        Some(text) => Some(parse_ip(text, "-H")?),
        None => None,
    };

    let input = input_mode(&raw, &transfers)?;
    let output = match raw.send.unwrap_or(SendKind::Raw) {
        SendKind::Raw => {
            if raw.output_device.is_some() {
                return err("-o only applies to --send pcap");
            }
            OutputKind::Raw
        }
        SendKind::Pcap => {
            let Some(device) = raw.output_device.clone() else {
                return err("--send pcap needs -o <device> (the interface frames leave from)");
            };
            if device.is_empty() {
                return err("-o: empty device name");
            }
            for (i, t) in transfers.iter().enumerate() {
                if t.src_mac.is_none() {
                    return err(format!(
                        "-x transfer {}: src mac address is invalid or not set (--send pcap needs SRC@MAC of -o)",
                        i + 1
                    ));
                }
                if t.dst_mac.is_none() {
                    return err(format!(
                        "-x transfer {}: dst mac address is invalid or not set (--send pcap needs DST@MAC of the next hop)",
                        i + 1
                    ));
                }
            }
            OutputKind::Pcap { device }
        }
    };

    let session_timeout = raw.session_timeout.unwrap_or(600);
    let keepalive_timeout = raw
        .keepalive_timeout
        .unwrap_or(session_timeout.saturating_add(120));
    let replay = ReplayConfig {
        transfers,
        client_ips,
        localhost_replacement,
        replicas: raw.replicas.unwrap_or(1),
        port_shift: raw.port_shift.unwrap_or(0),
        sample_percent: match raw.sample_percent.unwrap_or(0) {
            100 => 0,
            p => p,
        },
        gradual: raw.gradual,
        mtu: raw.mtu.unwrap_or(1500),
        fake_syn_mss: raw.mss.unwrap_or(1460),
        fixed_rtt: match raw.rtt_ms {
            None | Some(0) => None,
            Some(ms) => Some(Duration::from_millis(u64::from(ms))),
        },
        session_timeout: Duration::from_secs(u64::from(session_timeout)),
        keepalive_timeout: Duration::from_secs(u64::from(keepalive_timeout)),
        only_with_syn: raw.only_with_syn,
        dont_wait: raw.dont_wait,
        single: raw.single,
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()),
        ..ReplayConfig::default()
    };

    Ok(Options {
        replay,
        intercepts,
        conns_per_intercept: usize::from(raw.conns.unwrap_or(2)),
        input,
        output,
        wire: WireOptions {
            combined: !raw.disable_combined,
            payload: raw.payload,
        },
        lonely: raw.lonely,
        daemon: raw.daemon,
        log_file: raw.log_file,
        pid_file: raw.pid_file,
        memory_limit_bytes: raw.memory_mb.unwrap_or(2048) * 1024 * 1024,
        transfers_text,
        intercepts_text,
        client_ips_text: raw.client_ips,
    })
}

/// Chooses the capture: `--capture` when given; otherwise `-i` naming an existing regular file
/// means offline, `-i` naming anything else means pcap devices, no `-i` means the raw socket.
fn input_mode(raw: &RawArgs, transfers: &[Transfer]) -> Result<Input, CliError> {
    let input_is_file = raw
        .input
        .as_deref()
        .map(|p| std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false))
        .unwrap_or(false);
    let pcap_only = [
        ("-F", raw.filter.is_some()),
        ("-B", raw.pcap_buffer_mb.is_some()),
        ("-S", raw.snaplen.is_some()),
    ];
    let offline_only = [
        ("-a", raw.accel.is_some()),
        ("-I", raw.interval_ms.is_some()),
        ("-T", raw.passes.is_some()),
        ("--offline-tail", raw.offline_tail.is_some()),
    ];
    let kind = match (raw.capture, raw.input.as_deref()) {
        (Some(CaptureKind::Raw), Some(_)) => {
            return err("-i does not apply to --capture raw (use --capture pcap -i <dev>, or -i <pcap file> for offline)")
        }
        (Some(CaptureKind::Raw), None) | (None, None) => CaptureKind::Raw,
        (Some(CaptureKind::Pcap), Some(_)) if input_is_file => {
            return err("-i names a file: offline replay is chosen by -i <file> without --capture pcap")
        }
        (Some(CaptureKind::Pcap), _) => CaptureKind::Pcap,
        (None, Some(_)) if input_is_file => {
            for (flag, set) in pcap_only {
                if set {
                    return err(format!("{flag} only applies to --capture pcap, not to offline replay"));
                }
            }
            let file = PathBuf::from(raw.input.clone().unwrap_or_default());
            return Ok(Input::Offline {
                file,
                accel: raw.accel.unwrap_or(1),
                max_gap: raw
                    .interval_ms
                    .map(|ms| Duration::from_millis(u64::from(ms))),
                passes: raw.passes.unwrap_or(1),
                tail: Duration::from_secs(u64::from(raw.offline_tail.unwrap_or(120))),
            });
        }
        (None, Some(_)) => CaptureKind::Pcap,
    };
    for (flag, set) in offline_only {
        if set {
            return err(format!(
                "{flag} only applies to offline replay (-i <pcap file>)"
            ));
        }
    }
    match kind {
        CaptureKind::Raw => {
            for (flag, set) in pcap_only {
                if set {
                    return err(format!("{flag} only applies to --capture pcap"));
                }
            }
            Ok(Input::Raw)
        }
        CaptureKind::Pcap => {
            let devices = match raw.input.as_deref() {
                None => Vec::new(),
                Some(list) => parse_devices(list)?,
            };
            let (filter, user_filter) = match &raw.filter {
                Some(f) if f.trim().is_empty() => return err("-F: empty filter"),
                Some(f) if f.len() > MAX_FILTER_LEN => {
                    return err(format!(
                        "-F: user filter is too long ({} chars, at most {MAX_FILTER_LEN})",
                        f.len()
                    ))
                }
                Some(f) => (f.clone(), true),
                None => (auto_filter(transfers), false),
            };
            Ok(Input::Pcap {
                devices,
                filter,
                user_filter,
                buffer_bytes: raw.pcap_buffer_mb.unwrap_or(16) * 1024 * 1024,
                snaplen: raw.snaplen.unwrap_or(65535),
            })
        }
    }
}

fn parse_devices(list: &str) -> Result<Vec<String>, CliError> {
    let mut devices = Vec::new();
    for name in list.split(',').map(str::trim) {
        if name.is_empty() {
            return err(format!("-i: empty device name in \"{list}\""));
        }
        if name.len() >= 32 {
            return err(format!("-i: device name \"{name}\" is too long"));
        }
        if name == "any" {
            // As the original: `any` means every device (each opened on its own).
            devices.clear();
            return Ok(devices);
        }
        if devices.len() == MAX_PCAP_DEVICES {
            return err(format!("-i: at most {MAX_PCAP_DEVICES} devices"));
        }
        devices.push(name.to_string());
    }
    Ok(devices)
}

/// The BPF filter of spec 6.2: `tcp and ((dst port P and dst host A) or ...)`.
pub fn auto_filter(transfers: &[Transfer]) -> String {
    let terms: Vec<String> = transfers
        .iter()
        .map(|t| match t.src_ip {
            Some(ip) => format!("(dst port {} and dst host {})", t.src_port, ip),
            None => format!("(dst port {})", t.src_port),
        })
        .collect();
    format!("tcp and ({})", terms.join(" or "))
}

/// An IPv4 address, or a host name resolved once at start-up to its first IPv4 address
/// (`-x 80-testhost:8080 -s intercept-host`).
pub fn parse_host(text: &str, what: &str) -> Result<Ipv4Addr, CliError> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    let plausible = !text.is_empty()
        && text.len() <= 253
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !plausible {
        return err(format!(
            "{what}: \"{text}\" is not a valid IPv4 address or host name"
        ));
    }
    use std::net::ToSocketAddrs;
    let found = (text, 0u16).to_socket_addrs().map(|addrs| {
        addrs
            .filter_map(|a| match a {
                std::net::SocketAddr::V4(v4) => Some(*v4.ip()),
                std::net::SocketAddr::V6(_) => None,
            })
            .next()
    });
    match found {
        Ok(Some(ip)) => Ok(ip),
        Ok(None) => err(format!("{what}: host \"{text}\" has no IPv4 address")),
        Err(e) => err(format!("{what}: cannot resolve host \"{text}\": {e}")),
    }
}

/// A dotted-quad IPv4 address (no abbreviations, no leading/trailing junk).
pub fn parse_ip(text: &str, what: &str) -> Result<Ipv4Addr, CliError> {
    text.trim()
        .parse::<Ipv4Addr>()
        .or_else(|_| err(format!("{what}: \"{text}\" is not a valid IPv4 address")))
}

fn parse_port(text: &str, what: &str) -> Result<u16, CliError> {
    match text.trim().parse::<u16>() {
        Ok(0) => err(format!("{what}: port 0 is not valid")),
        Ok(p) => Ok(p),
        Err(_) => err(format!("{what}: \"{text}\" is not a valid port (1..65535)")),
    }
}

/// `aa:bb:cc:dd:ee:ff`: six pairs of hex digits separated by `:`.
pub fn parse_mac(text: &str, what: &str) -> Result<[u8; 6], CliError> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = || {
        CliError(format!(
            "{what}: \"{text}\" is not a valid MAC address (aa:bb:cc:dd:ee:ff)"
        ))
    };
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// One side of a transfer: `[IP:]PORT[@MAC]`.
type Endpoint = (Option<Ipv4Addr>, u16, Option<[u8; 6]>);

fn parse_endpoint(text: &str, what: &str) -> Result<Endpoint, CliError> {
    let (addr, mac) = match text.split_once('@') {
        Some((a, m)) => (a, Some(parse_mac(m, what)?)),
        None => (text, None),
    };
    let (ip, port) = match addr.split_once(':') {
        Some((ip, port)) => (Some(parse_host(ip, what)?), parse_port(port, what)?),
        None => (None, parse_port(addr, what)?),
    };
    Ok((ip, port, mac))
}

/// `-x`: spec 2.3, with invalid parts rejected instead of zeroed.
pub fn parse_transfers(text: &str) -> Result<Vec<Transfer>, CliError> {
    let mut transfers = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return err(format!("-x: empty transfer in \"{text}\""));
        }
        let Some((src, dst)) = item.split_once('-') else {
            return err(format!(
                "-x: target \"{item}\" is invalid (expected SRC-DST, e.g. 80-198.18.0.30:8080)"
            ));
        };
        let what = format!("-x \"{item}\"");
        let (src_ip, src_port, src_mac) = parse_endpoint(src, &format!("{what} source"))?;
        let (dst_ip, dst_port, dst_mac) = parse_endpoint(dst, &format!("{what} target"))?;
        let Some(dst_ip) = dst_ip else {
            return err(format!(
                "{what}: the target needs an IP address (e.g. 198.18.0.30:{dst_port})"
            ));
        };
        if dst_ip.is_unspecified() || dst_ip.is_broadcast() || dst_ip.is_multicast() {
            return err(format!(
                "{what}: {dst_ip} cannot be a target (unspecified, broadcast or multicast)"
            ));
        }
        if src_ip == Some(dst_ip) && src_port == dst_port {
            return err(format!(
                "{what}: the target is the online endpoint itself; tcpcopy would replay its own output"
            ));
        }
        if transfers.len() == MAX_TRANSFERS {
            return err(format!("-x: at most {MAX_TRANSFERS} transfers"));
        }
        transfers.push(Transfer {
            src_ip,
            src_port,
            dst_ip,
            dst_port,
            src_mac,
            dst_mac,
        });
    }
    Ok(transfers)
}

/// `-s`: `IP[:PORT]` items, port 0 or missing = `default_port`.
pub fn parse_intercepts(text: &str, default_port: u16) -> Result<Vec<SocketAddrV4>, CliError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return err(format!("-s: empty address in \"{text}\""));
        }
        let (ip, port) = match item.split_once(':') {
            Some((ip, port)) => {
                let port = match port.trim().parse::<u16>() {
                    Ok(0) => default_port,
                    Ok(p) => p,
                    Err(_) => {
                        return err(format!(
                            "-s: \"{port}\" in \"{item}\" is not a valid port (1..65535)"
                        ))
                    }
                };
                (parse_host(ip, "-s")?, port)
            }
            None => (parse_host(item, "-s")?, default_port),
        };
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return err(format!("-s: {ip} cannot be an intercept address"));
        }
        if out.len() == MAX_INTERCEPTS {
            return err(format!("-s: at most {MAX_INTERCEPTS} intercepts"));
        }
        out.push(SocketAddrV4::new(ip, port));
    }
    Ok(out)
}

/// `-c`: spec 2.4. `a.b.c.x` = a.b.c.1-254; targets are left out; `*` is refused with a hint.
pub fn parse_client_ips(text: &str, targets: &[Ipv4Addr]) -> Result<Vec<Ipv4Addr>, CliError> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    let push = |ip: Ipv4Addr, out: &mut Vec<Ipv4Addr>| -> Result<(), CliError> {
        if targets.contains(&ip) {
            return Ok(());
        }
        if out.len() == MAX_CLIENT_IPS {
            return err(format!("-c: more than {MAX_CLIENT_IPS} client addresses"));
        }
        out.push(ip);
        Ok(())
    };
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return err(format!("-c: empty item in \"{text}\""));
        }
        if item.ends_with('*') {
            return err(format!(
                "-c: {item} not valid, use x instead of * (e.g. 203.0.113.x)"
            ));
        }
        if let Some(prefix) = item.strip_suffix('x').or_else(|| item.strip_suffix('X')) {
            // The prefix must be exactly three octets and a dot.
            let octets: Vec<&str> = prefix.split('.').collect();
            let valid = octets.len() == 4 && octets[3].is_empty();
            let base = if valid {
                parse_ip(&format!("{prefix}0"), "-c").ok()
            } else {
                None
            };
            let Some(base) = base else {
                return err(format!(
                    "-c: \"{item}\" is not a valid subnet (expected a.b.c.x, e.g. 203.0.113.x)"
                ));
            };
            let [a, b, c, _] = base.octets();
            for d in 1..=254u8 {
                push(Ipv4Addr::new(a, b, c, d), &mut out)?;
            }
        } else {
            let ip = parse_ip(item, "-c")?;
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                return err(format!("-c: {ip} cannot be a client address"));
            }
            push(ip, &mut out)?;
        }
    }
    if out.is_empty() {
        return err("-c: no client address left (every one is a target address)");
    }
    Ok(out)
}

/// Refuses configurations in which tcpcopy would capture its own output (spec 6.6): a target
/// equal to an online endpoint that some transfer captures. `local_ips` are this host's
/// addresses (raw capture only sees packets addressed to them).
pub fn check_self_capture(
    transfers: &[Transfer],
    input: &Input,
    local_ips: &[Ipv4Addr],
) -> Result<(), CliError> {
    let pcap_auto = matches!(
        input,
        Input::Pcap {
            user_filter: false,
            ..
        }
    );
    for (i, t) in transfers.iter().enumerate() {
        for src in transfers {
            if src.src_port != t.dst_port {
                continue;
            }
            let captured = match src.src_ip {
                Some(ip) => ip == t.dst_ip,
                // pcap sees outgoing frames too; the raw socket only inbound local traffic.
                None => pcap_auto || t.dst_ip.is_loopback() || local_ips.contains(&t.dst_ip),
            };
            if captured {
                let hint = if pcap_auto {
                    " (captured port and target port are equal: set -F to capture packets)"
                } else {
                    ""
                };
                return err(format!(
                    "-x transfer {}: target {}:{} would be captured again as online traffic; tcpcopy would replay its own output{hint}",
                    i + 1,
                    t.dst_ip,
                    t.dst_port
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, CliError> {
        let mut v = vec!["tcpcopy"];
        v.extend_from_slice(args);
        match parse(v)? {
            Command::Run(o) => Ok(*o),
            other => panic!("expected a run, got {other:?}"),
        }
    }

    fn run_err(args: &[&str]) -> String {
        match run(args) {
            Ok(o) => panic!("expected an error, got {o:?}"),
            Err(e) => e.0,
        }
    }

    const BASE: [&str; 4] = ["-x", "80-198.18.0.30:8080", "-s", "198.18.0.40"];

    fn with(extra: &[&str]) -> Vec<&'static str> {
        let mut v: Vec<&str> = BASE.to_vec();
        v.extend_from_slice(extra);
        // The tests only pass literals.
        v.into_iter()
            .map(|s| &*Box::leak(s.to_string().into_boxed_str()))
            .collect()
    }

    #[test]
    fn defaults() {
        let o = run(&BASE).unwrap();
        assert_eq!(o.replay.transfers.len(), 1);
        assert_eq!(
            o.intercepts,
            vec![SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 40), 36524)]
        );
        assert_eq!(o.conns_per_intercept, 2);
        assert_eq!(o.replay.replicas, 1);
        assert_eq!(o.replay.port_shift, 0);
        assert_eq!(o.replay.sample_percent, 0);
        assert_eq!(o.replay.mtu, 1500);
        assert_eq!(o.replay.fake_syn_mss, 1460);
        assert_eq!(o.replay.fixed_rtt, None);
        assert_eq!(o.replay.session_timeout, Duration::from_secs(600));
        assert_eq!(o.replay.keepalive_timeout, Duration::from_secs(720));
        assert!(o.replay.client_ips.is_empty());
        assert_eq!(o.input, Input::Raw);
        assert_eq!(o.output, OutputKind::Raw);
        assert_eq!(
            o.wire,
            WireOptions {
                combined: true,
                payload: false
            }
        );
        assert_eq!(o.memory_limit_bytes, 2048 << 20);
        assert!(!o.lonely && !o.daemon && !o.replay.single);
    }

    #[test]
    fn help_and_version_need_nothing_else() {
        assert!(matches!(parse(["tcpcopy", "-h"]), Ok(Command::Help)));
        assert!(matches!(parse(["tcpcopy", "-v"]), Ok(Command::Version)));
        assert_eq!(version_line(), "tcpcopy version:1.3.0");
        for flag in [
            "-x", "-c", "-H", "-s", "-p", "-C", "-n", "-f", "-r", "-g", "-m", "-M", "-D", "-R",
            "-U", "-t", "-k", "-l", "-P", "-O", "-W", "-L", "-d", "-i", "-F", "-B", "-S", "-o",
            "-a", "-I", "-T", "-h", "-v",
        ] {
            assert!(HELP.contains(&format!("  {flag} ")), "help lacks {flag}");
        }
    }

    #[test]
    fn required_options() {
        assert!(run_err(&["-s", "198.18.0.40"]).contains("no -x"));
        assert!(run_err(&["-x", "80-198.18.0.30:8080"]).contains("-s"));
    }

    #[test]
    fn unknown_flag_and_missing_argument() {
        assert!(run_err(&with(&["-q"])).contains("-q"));
        assert!(parse(["tcpcopy", "-x"]).is_err());
        assert!(run_err(&with(&["--frobnicate"])).contains("frobnicate"));
    }

    #[test]
    fn transfers_full_syntax() {
        let t = parse_transfers(
            "192.168.0.1:80-192.168.0.2:8080, 8080-192.168.0.3:80,\
             80@00:13:21:b2:5e:42-121.55.111.148:18080@00:0F:1F:03:F2:E6",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].src_ip, Some(Ipv4Addr::new(192, 168, 0, 1)));
        assert_eq!((t[0].src_port, t[0].dst_port), (80, 8080));
        assert_eq!(t[1].src_ip, None);
        assert_eq!(t[1].dst_ip, Ipv4Addr::new(192, 168, 0, 3));
        assert_eq!(t[2].src_mac, Some([0x00, 0x13, 0x21, 0xb2, 0x5e, 0x42]));
        assert_eq!(t[2].dst_mac, Some([0x00, 0x0f, 0x1f, 0x03, 0xf2, 0xe6]));
    }

    /// Host names are resolved once (`-x 80-testhost:8080 -s intercept-host`); what cannot
    /// be a host name is refused without a lookup.
    #[test]
    fn host_names_in_transfers_and_intercepts() {
        let t = parse_transfers("80-localhost:8080").unwrap();
        assert_eq!(t[0].dst_ip, Ipv4Addr::LOCALHOST);
        let s = parse_intercepts("localhost:36525,198.18.0.40", 36524).unwrap();
        assert_eq!(s[0], SocketAddrV4::new(Ipv4Addr::LOCALHOST, 36525));
        assert_eq!(
            s[1],
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 40), 36524)
        );
        for bad in ["1.2.3", "a_b", "host name", ""] {
            assert!(parse_host(bad, "-s").is_err(), "{bad}");
        }
    }

    #[test]
    fn transfers_rejected() {
        for (bad, needle) in [
            ("80", "invalid"),
            ("80-8080", "needs an IP"),
            ("80-198.18.0.300:8080", "not a valid IPv4"),
            ("80-198.18.0.30:0", "port 0"),
            ("80-198.18.0.30:65536", "not a valid port"),
            ("x80-198.18.0.30:8080", "not a valid port"),
            ("80-0.0.0.0:8080", "cannot be a target"),
            ("80-198.18.0.30:8080@00:11:22:33:44", "MAC"),
            ("80-198.18.0.30:8080@00:11:22:33:44:GG", "MAC"),
            ("198.18.0.30:80-198.18.0.30:80", "online endpoint"),
            ("80-198.18.0.30:8080,", "empty transfer"),
        ] {
            let e = parse_transfers(bad).unwrap_err().0;
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let many = vec!["80-198.18.0.30:8080"; 33].join(",");
        assert!(parse_transfers(&many).unwrap_err().0.contains("at most 32"));
    }

    #[test]
    fn client_ips() {
        let targets = [Ipv4Addr::new(203, 0, 113, 7)];
        let ips = parse_client_ips("203.0.113.x", &targets).unwrap();
        assert_eq!(ips.len(), 253);
        assert_eq!(ips[0], Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(ips[252], Ipv4Addr::new(203, 0, 113, 254));
        assert!(!ips.contains(&targets[0]));
        let ips = parse_client_ips("203.0.113.5, 203.0.113.6", &[]).unwrap();
        assert_eq!(
            ips,
            vec![Ipv4Addr::new(203, 0, 113, 5), Ipv4Addr::new(203, 0, 113, 6)]
        );
        for (bad, needle) in [
            ("203.0.113.*", "use x instead of *"),
            ("203.0.113.256", "not a valid IPv4"),
            ("203.0.x", "not a valid subnet"),
            ("203.0.113.5,,203.0.113.6", "empty item"),
            ("203.0.113.7", "no client address left"),
        ] {
            let e = parse_client_ips(bad, &targets).unwrap_err().0;
            assert!(e.contains(needle), "{bad}: {e}");
        }
        // 17 subnets of 254 = 4318 > 4096.
        let many: Vec<String> = (0..17).map(|i| format!("10.0.{i}.x")).collect();
        assert!(parse_client_ips(&many.join(","), &[])
            .unwrap_err()
            .0
            .contains("4096"));
        let ok: Vec<String> = (0..16).map(|i| format!("10.0.{i}.x")).collect();
        assert_eq!(parse_client_ips(&ok.join(","), &[]).unwrap().len(), 4064);
    }

    #[test]
    fn client_ips_exclude_targets_via_cli() {
        let o = run(&[
            "-x",
            "80-203.0.113.9:8080",
            "-s",
            "198.18.0.40",
            "-c",
            "203.0.113.x",
        ])
        .unwrap();
        assert_eq!(o.replay.client_ips.len(), 253);
        assert!(!o.replay.client_ips.contains(&Ipv4Addr::new(203, 0, 113, 9)));
    }

    #[test]
    fn intercepts() {
        let s = parse_intercepts(" 198.18.0.40 , 198.18.0.41:9000,198.18.0.42:0", 36524).unwrap();
        assert_eq!(
            s,
            vec![
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 40), 36524),
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 41), 9000),
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 42), 36524),
            ]
        );
        let o = run(&[
            "-x",
            "80-198.18.0.30:8080",
            "-s",
            "198.18.0.40",
            "-p",
            "4000",
        ])
        .unwrap();
        assert_eq!(o.intercepts[0].port(), 4000);
        for bad in [
            "198.18.0",
            "198.18.0.40:70000",
            "198.18.0.40:x",
            "",
            "0.0.0.0",
        ] {
            assert!(parse_intercepts(bad, 36524).is_err(), "{bad}");
        }
        let many = vec!["198.18.0.40"; 33].join(",");
        assert!(parse_intercepts(&many, 1).unwrap_err().0.contains("32"));
    }

    #[test]
    fn numbers_in_range() {
        let o = run(&with(&[
            "-C", "11", "-n", "3", "-f", "31", "-r", "50", "-m", "100", "-M", "9000", "-D", "1400",
            "-R", "5", "-U", "63", "-t", "0", "-k", "30",
        ]))
        .unwrap();
        assert_eq!(o.conns_per_intercept, 11);
        assert_eq!(o.replay.replicas, 3);
        assert_eq!(o.replay.port_shift, 31);
        assert_eq!(o.replay.sample_percent, 50);
        assert_eq!(o.memory_limit_bytes, 100 << 20);
        assert_eq!(o.replay.mtu, 9000);
        assert_eq!(o.replay.fake_syn_mss, 1400);
        assert_eq!(o.replay.fixed_rtt, Some(Duration::from_millis(5)));
        assert_eq!(o.replay.session_timeout, Duration::ZERO);
        assert_eq!(o.replay.keepalive_timeout, Duration::from_secs(30));
        assert_eq!(run(&with(&["-r", "100"])).unwrap().replay.sample_percent, 0);
        assert_eq!(
            run(&with(&["-t", "10"])).unwrap().replay.keepalive_timeout,
            Duration::from_secs(130)
        );
    }

    #[test]
    fn numbers_out_of_range_are_errors() {
        for (flag, value) in [
            ("-C", "0"),
            ("-C", "12"),
            ("-C", "-1"),
            ("-n", "0"),
            ("-n", "1024"),
            ("-f", "32"),
            ("-r", "101"),
            ("-r", "150"),
            ("-m", "0"),
            ("-M", "100"),
            ("-M", "65536"),
            ("-D", "0"),
            ("-R", "65536"),
            ("-U", "64"),
            ("-t", "-1"),
            ("-k", "0"),
            ("-p", "0"),
            ("-p", "65536"),
            ("-n", "abc"),
        ] {
            let e = run_err(&with(&[flag, value]));
            assert!(e.contains(flag), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn bad_addresses_are_errors() {
        assert!(run_err(&with(&["-H", "127.0.0"])).contains("-H"));
        assert!(run_err(&with(&["-c", "300.1.1.1"])).contains("-c"));
        assert!(run_err(&["-x", "80-198.18.0.30:8080", "-s", "bad"]).contains("-s"));
    }

    #[test]
    fn capture_modes() {
        let o = run(&with(&["--capture", "pcap"])).unwrap();
        match o.input {
            Input::Pcap {
                devices,
                filter,
                user_filter,
                buffer_bytes,
                snaplen,
            } => {
                assert!(devices.is_empty());
                assert_eq!(filter, "tcp and ((dst port 80))");
                assert!(!user_filter);
                assert_eq!(buffer_bytes, 16 << 20);
                assert_eq!(snaplen, 65535);
            }
            other => panic!("{other:?}"),
        }
        let o = run(&with(&[
            "-i",
            "eth0,eth1",
            "-F",
            "tcp port 80",
            "-B",
            "4",
            "-S",
            "1600",
        ]))
        .unwrap();
        match o.input {
            Input::Pcap {
                devices,
                filter,
                user_filter,
                buffer_bytes,
                snaplen,
            } => {
                assert_eq!(devices, vec!["eth0", "eth1"]);
                assert_eq!(filter, "tcp port 80");
                assert!(user_filter);
                assert_eq!(buffer_bytes, 4 << 20);
                assert_eq!(snaplen, 1600);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run(&with(&["-i", "any"])).unwrap().input,
            Input::Pcap { ref devices, .. } if devices.is_empty()
        ));
        assert!(run_err(&with(&["-F", "tcp"])).contains("--capture pcap"));
        assert!(run_err(&with(&["-S", "1600"])).contains("--capture pcap"));
        assert!(run_err(&with(&["--capture", "raw", "-i", "eth0"])).contains("-i"));
        assert!(run_err(&with(&["-a", "2"])).contains("offline"));
        assert!(run_err(&with(&["--capture", "pcap", "-S", "10"])).contains("-S"));
        assert!(run_err(&with(&["--capture", "bogus"])).contains("bogus"));
    }

    #[test]
    fn offline_mode_from_regular_file() {
        let dir = std::env::temp_dir().join(format!("tcpcopy-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("in.pcap");
        std::fs::write(&file, b"").unwrap();
        let path = file.to_str().unwrap();
        let o = run(&with(&[
            "-i",
            path,
            "-a",
            "4",
            "-I",
            "100",
            "-T",
            "2",
            "--offline-tail",
            "5",
        ]))
        .unwrap();
        assert_eq!(
            o.input,
            Input::Offline {
                file: file.clone(),
                accel: 4,
                max_gap: Some(Duration::from_millis(100)),
                passes: 2,
                tail: Duration::from_secs(5),
            }
        );
        assert!(run_err(&with(&["-i", path, "-F", "tcp"])).contains("-F"));
        assert!(run_err(&with(&["-i", path, "-a", "0"])).contains("-a"));
        match run(&with(&["-i", path])).unwrap().input {
            Input::Offline {
                accel,
                passes,
                tail,
                max_gap,
                ..
            } => {
                assert_eq!((accel, passes, max_gap), (1, 1, None));
                assert_eq!(tail, Duration::from_secs(120));
            }
            other => panic!("{other:?}"),
        }
        assert!(run_err(&with(&["--offline-tail", "3"])).contains("offline"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pcap_send_needs_device_and_macs() {
        assert!(run_err(&with(&["--send", "pcap"])).contains("-o"));
        assert!(run_err(&with(&["-o", "eth0"])).contains("--send pcap"));
        let e = run_err(&with(&["--send", "pcap", "-o", "eth0"]));
        assert!(e.contains("src mac"), "{e}");
        let e = run_err(&[
            "-x",
            "80@02:00:00:00:00:01-198.18.0.30:8080",
            "-s",
            "198.18.0.40",
            "--send",
            "pcap",
            "-o",
            "eth0",
        ]);
        assert!(e.contains("dst mac"), "{e}");
        let o = run(&[
            "-x",
            "80@02:00:00:00:00:01-198.18.0.30:8080@02:00:00:00:00:02",
            "-s",
            "198.18.0.40",
            "--send",
            "pcap",
            "-o",
            "eth0",
        ])
        .unwrap();
        assert_eq!(
            o.output,
            OutputKind::Pcap {
                device: "eth0".into()
            }
        );
    }

    #[test]
    fn control_variants() {
        let o = run(&with(&[
            "--disable-combined",
            "--payload",
            "--single",
            "-L",
            "-d",
        ]))
        .unwrap();
        assert_eq!(
            o.wire,
            WireOptions {
                combined: false,
                payload: true
            }
        );
        assert!(o.replay.single && o.lonely && o.daemon);
    }

    #[test]
    fn auto_filter_terms() {
        let t = parse_transfers("80-198.18.0.30:8080,198.18.0.20:443-198.18.0.30:8443").unwrap();
        assert_eq!(
            auto_filter(&t),
            "tcp and ((dst port 80) or (dst port 443 and dst host 198.18.0.20))"
        );
    }

    #[test]
    fn self_capture_refused() {
        let local = [Ipv4Addr::new(198, 18, 0, 20)];
        let t = parse_transfers("80-198.18.0.20:80").unwrap();
        assert!(check_self_capture(&t, &Input::Raw, &local).is_err());
        let t = parse_transfers("80-127.0.0.1:80").unwrap();
        assert!(check_self_capture(&t, &Input::Raw, &local).is_err());
        // A remote target on the same port is fine for the raw socket (it sees inbound only)...
        let t = parse_transfers("80-198.18.0.30:80").unwrap();
        assert!(check_self_capture(&t, &Input::Raw, &local).is_ok());
        // ...but not with the auto pcap filter, which would match the replayed packets.
        let pcap = |user_filter| Input::Pcap {
            devices: vec![],
            filter: String::new(),
            user_filter,
            buffer_bytes: 0,
            snaplen: 0,
        };
        let e = check_self_capture(&t, &pcap(false), &local).unwrap_err().0;
        assert!(e.contains("-F"), "{e}");
        assert!(check_self_capture(&t, &pcap(true), &local).is_ok());
        // One transfer's target captured by another transfer.
        let t = parse_transfers("80-198.18.0.30:8080,8080-198.18.0.20:8080").unwrap();
        assert!(check_self_capture(&t, &Input::Raw, &local).is_err());
        let t = parse_transfers("198.18.0.20:80-198.18.0.30:8080").unwrap();
        assert!(check_self_capture(&t, &pcap(false), &local).is_ok());
    }
}
