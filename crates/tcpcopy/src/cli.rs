//! Command line: the single-letter options of the original tcpcopy (spec section 2) plus long
//! options choosing the run-time modes. Every option is defined once, in [`RawArgs`]: letter,
//! value name, help line, group and default; `tcpcopy -h` is generated from those definitions.
//!
//! Two steps, as the data flows: [`parse`] checks what was typed and gives [`Args`] (addresses
//! parsed by [`crate::addr_spec`], host names not looked up yet); [`Args::resolve`] then looks
//! the host names up and gives the [`Options`] of a run. Invalid addresses, ports, MACs and
//! out-of-range numbers are errors (the original truncated or zeroed them silently).

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use tc_core::capture::pcap_live::{MAX_DEVICES, MAX_FILTER_LEN};
use tc_core::capture::raw_socket::FlowShare;
use tc_core::control::DEFAULT_PORT;
use tc_core::session::{ReplayConfig, Transfer};

use crate::addr_spec::{self, InterceptSpec, SpecError, TransferSpec};
use crate::addr_spec6;
use crate::numbers;

pub const VERSION: &str = "1.3.0";
/// Control-protocol version sent in the first record of every tunnel.
pub const INTERNAL_VERSION: u16 = tc_core::control::PROTOCOL_VERSION;

/// Exit status for command-line errors (clap's convention).
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptureKind {
    /// AF_INET raw socket: packets addressed to this host (default, as the original).
    Raw,
    /// libpcap on devices (`-i dev,...`, `-F`, `-B`, `-S`).
    Pcap,
    /// What the raw socket captures, read from a memory-mapped ring (TPACKET_V3).
    Ring,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendKind {
    /// Raw IPv4 socket with IP_HDRINCL through the host's routing (default).
    Raw,
    /// Ethernet frames injected on `-o dev` with the MACs of `-x`.
    Pcap,
}

const H_REQUIRED: &str = "Required";
const H_CONTROL: &str = "Control channel";
const H_REPLAY: &str = "Replay";
const H_CAPTURE: &str = "Capture";
const H_OFFLINE: &str = "Offline (-i <pcap file>)";
const H_SEND: &str = "Send";
const H_PROCESS: &str = "Process";
const H_REPORT: &str = "Reports";
const H_DIAGNOSIS: &str = "Diagnosis";
const H_DIFF: &str = "Compare the target's answers with production's";
const H_LOGINS: &str = "Database logins (need --payload here and on intercept)";
const H_UDP: &str = "UDP";

const EXAMPLE: &str = "\
Example:
  tcpcopy -x 80-198.18.0.30:8080 -s 198.18.0.40 -c 203.0.113.x
      copy port 80 of this host to 198.18.0.30:8080, intercept at 198.18.0.40, fake clients
      203.0.113.1-254
  tcpcopy --udp -x 53-198.18.0.30:53 -c 203.0.113.x
      copy the datagrams to port 53 of this host (DNS queries) to 198.18.0.30:53 from fake
      clients 203.0.113.1-254; no intercept, the answers are not tracked

Log level: RUST_LOG (error, warn, info, debug, trace; default info).";

/// Every option, once. Options whose default depends on another (`-k`), or that have none,
/// are `Option`s; the others carry their default here, and [`parse`] asks the matches whether
/// a mode-specific option was really typed.
#[derive(Parser, Debug)]
#[command(
    name = "tcpcopy",
    disable_help_flag = true,
    disable_version_flag = true,
    allow_negative_numbers = true,
    override_usage = "tcpcopy -x <transfers> -s <intercepts> [options]"
)]
struct RawArgs {
    #[arg(short = 'x', value_name = "transfers", help_heading = H_REQUIRED,
        help = "what to copy and where: SRC-DST[,SRC-DST...], each side [IP:]PORT[@MAC].\n\
                SRC without IP = any local address; DST needs an IP or a host\n\
                name (resolved once at start-up to its first IPv4 address).\n\
                e.g. 80-198.18.0.30:8080  or  198.18.0.20:80-testhost:8080\n\
                --send pcap: 80@<out if MAC>-198.18.0.30:8080@<next hop MAC>\n\
                IPv6: 80-[2001:db8::30]:8080 (literal addresses in brackets, one family\n\
                per run; -c PREFIX/LEN, e.g. -c 2001:db8:ffff::/64): every intercept\n\
                must run with --ipv6 (tcpcopy asks it first and stops if it does not)")]
    transfers: Option<String>,
    #[arg(short = 's', value_name = "intercepts", help_heading = H_REQUIRED,
        help = "intercept addresses HOST[:PORT][,HOST[:PORT]...] (at most 32),\n\
                HOST an IPv4 address, a host name or [IPv6 address]")]
    intercepts: Option<String>,

    #[arg(short = 'p', value_name = "port", help_heading = H_CONTROL,
        default_value_t = DEFAULT_PORT, value_parser = numbers::parse_port,
        help = "intercept port for -s entries without one")]
    intercept_port: u16,
    #[arg(short = 'C', value_name = "n", help_heading = H_CONTROL,
        default_value_t = 2, value_parser = numbers::parse_conns,
        help = "connections per intercept, 1..11")]
    conns: u16,
    #[arg(short = 'L', help_heading = H_CONTROL,
        help = "keep running when every intercept is gone; reconnect every 12 s")]
    lonely: bool,
    #[arg(long = "disable-combined", help_heading = H_CONTROL,
        help = "bare response records (intercept --disable-combined)")]
    disable_combined: bool,
    #[arg(long = "payload", alias = "with-resp-payload", help_heading = H_CONTROL,
        help = "192-byte response records carrying payload (intercept --payload)")]
    payload: bool,
    #[arg(long = "single", help_heading = H_CONTROL,
        help = "send no CLIENT_ADD (intercept --single)")]
    single: bool,

    #[arg(long = "auth-file", value_name = "file", help_heading = H_LOGINS,
        help = "user:password lines (mode 0600, owned by this user): recompute captured\n\
                MySQL/MariaDB and PostgreSQL password logins for the target's challenge")]
    auth_file: Option<PathBuf>,
    #[arg(long = "protocol", value_name = "proto", help_heading = H_LOGINS,
        value_parser = ["mysql", "mariadb", "postgres", "postgresql"],
        help = "protocol of the logins: mysql or postgres (default: detected per session);\n\
                without --auth-file logins are only watched: refusals are counted")]
    protocol: Option<String>,

    #[arg(short = 'c', value_name = "ips", help_heading = H_REPLAY,
        help = "rewrite client IPs: a.b.c.d or a.b.c.x (= .1-.254), comma separated,\n\
                at most 4096 (targets left out). e.g. -c 203.0.113.x")]
    client_ips: Option<String>,
    #[arg(short = 'H', value_name = "ip", help_heading = H_REPLAY,
        help = "source IP for captured packets from 127.0.0.1")]
    localhost_replacement: Option<String>,
    #[arg(short = 'n', value_name = "n", help_heading = H_REPLAY,
        default_value_t = 1, value_parser = numbers::parse_replicas,
        help = "copies of every session, 1..1023")]
    replicas: u16,
    #[arg(short = 'f', value_name = "n", help_heading = H_REPLAY,
        default_value_t = 0, value_parser = numbers::parse_port_shift,
        help = "port-shift factor for several tcpcopy instances, 0..255; above 31 the\n\
                shift wraps as in the original (one port for every connection)")]
    port_shift: u16,
    #[arg(short = 'r', value_name = "percent", help_heading = H_REPLAY,
        default_value_t = 0, value_parser = numbers::parse_percent,
        help = "replay this percentage of sessions, 0..100 (0 = all)")]
    sample_percent: u8,
    #[arg(short = 'g', help_heading = H_REPLAY,
        help = "ramp from 1% to 100% of sessions over about 100 s (overrides -r)")]
    gradual: bool,
    #[arg(short = 'O', help_heading = H_REPLAY,
        help = "only replay sessions whose SYN was captured (no mid-stream pickup)")]
    only_with_syn: bool,
    #[arg(short = 'W', help_heading = H_REPLAY,
        help = "do not wait for the response before sending the next request")]
    dont_wait: bool,
    #[arg(short = 'M', value_name = "bytes", help_heading = H_REPLAY,
        default_value_t = 1500, value_parser = numbers::parse_mtu,
        help = "MTU: longer captured packets are split, 128..65535")]
    mtu: u16,
    #[arg(short = 'D', value_name = "bytes", help_heading = H_REPLAY,
        default_value_t = 1460, value_parser = numbers::parse_mss,
        help = "MSS in faked SYNs")]
    mss: u16,
    #[arg(short = 'R', value_name = "ms", help_heading = H_REPLAY,
        default_value_t = 0, value_parser = numbers::parse_rtt,
        help = "fixed RTT instead of the measured one (0 = measure)")]
    rtt_ms: u16,
    #[arg(short = 't', value_name = "s", help_heading = H_REPLAY,
        default_value_t = 600, value_parser = numbers::parse_session_timeout,
        help = "session timeout: target silent this long")]
    session_timeout: u32,
    #[arg(short = 'k', value_name = "s", help_heading = H_REPLAY,
        value_parser = numbers::parse_keepalive_timeout,
        help = "keepalive timeout of idle sessions [default: -t + 120]")]
    keepalive_timeout: Option<u32>,
    #[arg(short = 'U', value_name = "KB", help_heading = H_REPLAY,
        value_parser = numbers::parse_pool_kb,
        help = "session pool size, accepted and ignored (1..63)")]
    pool_kb: Option<u16>,

    #[arg(long = "capture", value_name = "raw|ring|pcap", value_enum, hide_possible_values = true,
        help_heading = H_CAPTURE,
        help = "raw IP socket, the same read from a memory-mapped ring (TPACKET_V3, reports\n\
                kernel drops), or libpcap on devices [default: raw; -i <dev> implies pcap]")]
    capture: Option<CaptureKind>,
    /// pcap capture devices, or (offline) the pcap file.
    #[arg(short = 'i', value_name = "dev[,dev]", help_heading = H_CAPTURE,
        help = "pcap devices [default: all but `any`]; -i <file> = offline replay\n\
                (a file: exists, contains a /, or ends in .pcap/.pcapng/.cap)")]
    input: Option<String>,
    #[arg(short = 'F', value_name = "filter", help_heading = H_CAPTURE,
        help = "pcap BPF filter [default: built from -x]")]
    filter: Option<String>,
    #[arg(short = 'B', value_name = "MB", help_heading = H_CAPTURE,
        default_value_t = 16, value_parser = numbers::parse_pcap_buffer_mb,
        help = "pcap kernel buffer, 1..2047")]
    pcap_buffer_mb: u32,
    #[arg(short = 'S', value_name = "bytes", help_heading = H_CAPTURE,
        default_value_t = 65535, value_parser = numbers::parse_snaplen,
        help = "pcap snaplen, 64..65535")]
    snaplen: u32,
    #[arg(long = "capture-lost-exit", value_name = "secs", help_heading = H_CAPTURE,
        default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..),
        help = "a lost capture device (deleted, down) is reopened with a backoff; stop with an\n\
                error when none has worked this long")]
    capture_lost_exit: u64,
    #[arg(long = "fanout", value_name = "i/n", help_heading = H_CAPTURE,
        value_parser = parse_fanout,
        help = "capture only share i of n (1..n) of the client connections, split by client\n\
                address and port in the kernel filter: run n tcpcopy processes, --fanout 1/n\n\
                .. n/n, to use n cores; each connection is replayed by one of them. Give each\n\
                the same -f and -n (with --fanout they shift ports alike); --capture raw\n\
                or ring")]
    fanout: Option<FlowShare>,

    #[arg(short = 'a', value_name = "n", help_heading = H_OFFLINE,
        default_value_t = 1, value_parser = numbers::parse_accel,
        help = "replay n times faster")]
    accel: u32,
    #[arg(short = 'I', value_name = "ms", help_heading = H_OFFLINE,
        value_parser = numbers::parse_interval_ms,
        help = "skip gaps longer than this, 0 = off [default: off]")]
    interval_ms: Option<u32>,
    #[arg(short = 'T', value_name = "n", help_heading = H_OFFLINE,
        default_value_t = 1, value_parser = numbers::parse_passes,
        help = "passes over the file")]
    passes: u32,
    #[arg(long = "offline-tail", value_name = "s", help_heading = H_OFFLINE,
        default_value_t = 120, value_parser = clap::value_parser!(u32).range(0..=86_400),
        help = "keep running this long after each pass")]
    offline_tail: u32,

    #[arg(long = "send", value_name = "raw|pcap", value_enum, hide_possible_values = true,
        default_value_t = SendKind::Raw, help_heading = H_SEND,
        help = "raw IP socket, or Ethernet frames injected on -o")]
    send: SendKind,
    #[arg(short = 'o', value_name = "dev", help_heading = H_SEND,
        help = "output device for --send pcap")]
    output_device: Option<String>,

    #[arg(short = 'm', value_name = "MB", help_heading = H_PROCESS,
        default_value_t = 2048, value_parser = numbers::parse_memory_mb,
        help = "stop when the resident memory exceeds this")]
    memory_mb: u64,
    #[arg(short = 'l', value_name = "file", help_heading = H_PROCESS,
        help = "log file (appended) [default: stderr]")]
    log_file: Option<PathBuf>,
    #[arg(short = 'P', value_name = "file", help_heading = H_PROCESS,
        help = "pid file (refused while the process it names runs; removed at exit)")]
    pid_file: Option<PathBuf>,
    #[arg(short = 'd', help_heading = H_PROCESS, help = "run as a daemon")]
    daemon: bool,

    #[arg(long = "report", value_name = "file", help_heading = H_REPORT,
        help = "write the fidelity report (JSON) at exit: sessions by outcome, requests and\n\
                bytes captured vs sent, responses, replay lag (with --udp: the datagram counts)")]
    report: Option<PathBuf>,
    #[arg(long = "stats-json", value_name = "file", help_heading = H_REPORT,
        help = "append the statistics as one JSON object per line, every 30 s and at exit")]
    stats_json: Option<PathBuf>,
    #[arg(long = "metrics", value_name = "addr:port", help_heading = H_REPORT,
        help = "serve Prometheus metrics (tcpcopy_*) at http://ADDR:PORT/metrics [default: off]")]
    metrics: Option<std::net::SocketAddr>,

    #[arg(long = "full-payload", help_heading = H_CONTROL,
        help = "ask each intercept for the target's response bytes (intercept --full-payload;\n\
                stops with an error if one does not grant them) [default with --diff]")]
    full_payload: bool,
    #[arg(long = "diff", value_name = "file", help_heading = H_DIFF,
        help = "compare each target response with production's and write one JSON object per\n\
                difference to FILE (needs intercept --full-payload); summary in the statistics")]
    diff: Option<PathBuf>,
    #[arg(long = "diff-protocol", value_name = "http|redis|bytes", help_heading = H_DIFF,
        value_parser = ["http", "redis", "bytes"],
        help = "compare as this protocol [default: detected from each response's first bytes]")]
    diff_protocol: Option<String>,
    #[arg(long = "diff-ignore-header", value_name = "name", help_heading = H_DIFF,
        action = clap::ArgAction::Append,
        help = "HTTP header left out of the comparison (repeatable), besides Date, Server,\n\
                ETag, Last-Modified, Set-Cookie, Expires, Age, trace ids and framing")]
    diff_ignore_header: Vec<String>,
    #[arg(long = "diff-session-kb", value_name = "KiB", help_heading = H_DIFF,
        default_value_t = 4096, value_parser = clap::value_parser!(u32).range(4..=65_536),
        help = "response bytes held per connection while waiting for the other side; beyond\n\
                it responses are cut and reported as truncated")]
    diff_session_kb: u32,
    #[arg(long = "diff-memory-mb", value_name = "MiB", help_heading = H_DIFF,
        default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536),
        help = "response bytes held for comparison in all; beyond it responses are cut\n\
                (counted as memory cap hits)")]
    diff_memory_mb: u32,

    #[arg(long = "check", help_heading = H_DIAGNOSIS,
        help = "check the path and exit (0: it works, 1: it does not): connect to each intercept,\n\
                send one probe SYN per target from a fake client and name the broken hop")]
    check: bool,
    #[arg(long = "no-probe", help_heading = H_DIAGNOSIS,
        help = "no probe at start-up and no probe when sessions fail while running")]
    no_probe: bool,
    #[arg(long = "probe-client", value_name = "ip", help_heading = H_DIAGNOSIS,
        help = "the probe's fake client address [default: the first -c address; while\n\
                running without -c, the address of a captured client]")]
    probe_client: Option<String>,
    #[arg(long = "udp", help_heading = H_UDP,
        help = "replay UDP datagrams to the -x ports instead of TCP sessions (udpcopy): each\n\
                datagram is rewritten for the target and sent; the target's answers are NOT\n\
                tracked and no intercept is used (no -s). Applies -c, -H, -n, -r, -g, -f, -M\n\
                (longer datagrams leave as IP fragments); captured fragments are\n\
                reassembled first (bounded, 30 s), so a datagram goes whole or not at all.\n\
                IPv6: -x 53-[2001:db8::30]:53 (literal addresses in brackets, one family\n\
                per run), -c 2001:db8:ffff::/64")]
    udp: bool,
    #[arg(short = 'h', help_heading = H_PROCESS, help = "print this help and exit")]
    help: bool,
    #[arg(short = 'v', help_heading = H_PROCESS, help = "print the version and exit")]
    version: bool,
    /// Packaging: writes the man page and shell completions (scripts/package.sh).
    #[arg(long = "generate-docs", value_name = "dir", hide = true)]
    generate_docs: Option<PathBuf>,
}

/// The clap command: [`RawArgs`] with the texts built at run time.
fn command() -> clap::Command {
    RawArgs::command()
        .about(format!(
            "tcpcopy {VERSION} (tcpcopy-rs): copies live TCP traffic to a test server."
        ))
        .after_help(EXAMPLE)
}

/// The `-h` text, generated from the option definitions.
pub fn help() -> String {
    command().render_help().to_string()
}

/// `--generate-docs <dir>`: tcpcopy.8 and the bash, zsh and fish completions, from the same
/// definitions as `-h`. Returns the files written.
pub fn generate_docs(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let cmd = command()
        .about("copy live TCP traffic to a test server")
        .long_about(format!(
            "tcpcopy {VERSION} (tcpcopy-rs): copies live TCP traffic to a test server. \
             intercept, on the test server's side, passes the responses back."
        ));
    let package = format!("tcpcopy-rs {}", env!("CARGO_PKG_VERSION"));
    let extras = tc_core::docs::ManExtras {
        package: &package,
        see_also: &["intercept(8)"],
    };
    tc_core::docs::generate(cmd, &extras, dir)
}

/// Where packets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Raw,
    /// `--capture ring`: what `Raw` captures, from a TPACKET_V3 ring.
    Ring,
    Pcap {
        /// Empty = every device except `any`.
        devices: Vec<String>,
        /// `-F`, used verbatim; `None`: built from the transfers
        /// ([`crate::capture::auto_filter`]).
        filter: Option<String>,
        buffer_bytes: u32,
        snaplen: u32,
    },
    /// `-i file`: replay a pcap file.
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

/// The control-channel variant (`--disable-combined`, `--payload`), shared with intercept;
/// must match intercept's (nothing on the wire announces it).
pub type WireOptions = tc_core::control::WireFormat;

/// Validated options for a run.
#[derive(Debug, Clone)]
pub struct Options {
    pub replay: ReplayConfig,
    pub intercepts: Vec<std::net::SocketAddr>,
    pub conns_per_intercept: usize,
    pub input: Input,
    pub output: OutputKind,
    pub wire: WireOptions,
    pub lonely: bool,
    pub daemon: bool,
    pub log_file: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    /// `--report`, `--stats-json`.
    pub report_file: Option<PathBuf>,
    pub stats_json_file: Option<PathBuf>,
    /// `--metrics`.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--check`: probe the path and exit.
    pub check: bool,
    /// `--udp`: stateless UDP replay (no intercept, no sessions).
    pub udp: bool,
    /// `-x` in its IPv6 form (`--udp` only); then `replay.transfers` is empty.
    pub transfers6: Vec<tc_core::udp_replay::Transfer6>,
    /// `-c PREFIX/LEN` with IPv6 transfers.
    pub client_prefix6: Option<tc_core::udp_replay::ClientPrefix6>,
    /// Probe at start-up and when sessions fail (not `--no-probe`).
    pub probe: bool,
    /// `--probe-client`.
    pub probe_client: Option<Ipv4Addr>,
    pub memory_limit_bytes: u64,
    /// `--capture-lost-exit`.
    pub capture_lost_exit: Duration,
    /// `--fanout i/n`: this process's share of the captured connections.
    pub fanout: Option<FlowShare>,
    /// The `-x` text as given, for the start-up log.
    pub transfers_text: String,
    pub intercepts_text: String,
    pub client_ips_text: Option<String>,
    /// Settings the original accepted that work against the operator (logged at start-up).
    pub warnings: Vec<String>,
    /// `--full-payload` (implied by `--diff`).
    pub full_payload: bool,
    /// TCP replay over IPv6 (an IPv6 `-x` without `--udp`): every intercept is asked for the
    /// IPv6 variant of the control channel (`intercept --ipv6`), see
    /// `tc_core::control::ipv6`.
    pub ipv6: bool,
    /// `--diff` and its options.
    pub diff: Option<crate::diff::DiffConfig>,
}

/// A validated command line whose host names are not looked up yet: [`Args::resolve`] gives
/// the [`Options`] of the run.
#[derive(Debug, Clone)]
pub struct Args {
    pub transfers: Vec<TransferSpec>,
    pub intercepts: Vec<InterceptSpec>,
    /// `-c` expanded; the targets are left out once they are resolved.
    pub client_ips: Option<Vec<Ipv4Addr>>,
    /// Everything else; `replay.transfers`, `replay.client_ips` and `intercepts` are empty
    /// until [`Args::resolve`] fills them.
    options: Options,
}

#[derive(Debug)]
pub enum Command {
    Run(Box<Args>),
    Help,
    Version,
    /// `--generate-docs <dir>` (hidden).
    GenerateDocs(PathBuf),
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

impl From<SpecError> for CliError {
    fn from(e: SpecError) -> Self {
        CliError(e.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, CliError> {
    Err(CliError(msg.into()))
}

pub fn version_line() -> String {
    format!("tcpcopy version:{VERSION}")
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

/// Parses and validates the command line (`args` includes the program name). No host name
/// is looked up here.
pub fn parse<I, T>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let clap_error = |e: clap::Error| {
        // clap's own rendering names the option and the accepted range.
        let text = e.render().to_string();
        CliError(format!("{}\n(tcpcopy -h for help)", text.trim_end()))
    };
    let matches = command().try_get_matches_from(args).map_err(clap_error)?;
    let raw = RawArgs::from_arg_matches(&matches).map_err(clap_error)?;
    if raw.help {
        return Ok(Command::Help);
    }
    if raw.version {
        return Ok(Command::Version);
    }
    if let Some(dir) = raw.generate_docs {
        return Ok(Command::GenerateDocs(dir));
    }
    validate(raw, &matches).map(|a| Command::Run(Box::new(a)))
}

/// `--udp` replays datagrams without sessions or intercepts: the options of those are
/// refused rather than silently ignored.
fn udp_only_flags(raw: &RawArgs, m: &ArgMatches) -> Result<(), CliError> {
    let session_only = [
        ("-s", raw.intercepts.is_some()),
        ("-p", typed(m, "intercept_port")),
        ("-C", typed(m, "conns")),
        ("-L", raw.lonely),
        ("--disable-combined", raw.disable_combined),
        ("--payload", raw.payload),
        ("--single", raw.single),
        ("-O", raw.only_with_syn),
        ("-W", raw.dont_wait),
        ("-D", typed(m, "mss")),
        ("-R", typed(m, "rtt_ms")),
        ("-t", typed(m, "session_timeout")),
        ("-k", raw.keepalive_timeout.is_some()),
        ("-U", raw.pool_kb.is_some()),
        ("--check", raw.check),
        ("--probe-client", raw.probe_client.is_some()),
        ("--full-payload", raw.full_payload),
        ("--diff", raw.diff.is_some()),
        ("--auth-file", raw.auth_file.is_some()),
        ("--protocol", raw.protocol.is_some()),
    ];
    if raw.capture == Some(CaptureKind::Ring) {
        return err("--capture ring reads TCP only: with --udp use --capture raw or pcap");
    }
    for (flag, set) in session_only {
        if set {
            return err(format!(
                "{flag} does not apply to --udp (UDP replay has no sessions and no intercept: the target's answers are not tracked)"
            ));
        }
    }
    Ok(())
}

/// `--fanout i/n` (1-based on the command line, 1 <= i <= n <= 1024) as a 0-based share.
fn parse_fanout(s: &str) -> Result<FlowShare, String> {
    let bad = || {
        format!(
            "\"{s}\": expected i/n, this process's share i of n (1 <= i <= n <= 1024), e.g. 1/2"
        )
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let i: u32 = i.trim().parse().map_err(|_| bad())?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if i == 0 || i > n || n > 1024 {
        return Err(bad());
    }
    Ok(FlowShare {
        index: i - 1,
        count: n,
    })
}

/// `--fanout` splits the connections in the kernel filter of the raw socket or the ring:
/// refused where there is none.
fn fanout_applies(raw: &RawArgs, input: &Input) -> Result<(), CliError> {
    if raw.fanout.is_none() {
        return Ok(());
    }
    if raw.udp {
        return err("--fanout applies to TCP replay (not --udp)");
    }
    if raw
        .transfers
        .as_deref()
        .is_some_and(addr_spec6::is_ipv6_transfers)
    {
        // The IPv6 capture has no share in its filter: every process would replay all.
        return err("--fanout applies to IPv4 transfers (the raw IPv6 capture has no share in its kernel filter)");
    }
    match input {
        Input::Raw | Input::Ring => Ok(()),
        Input::Pcap { .. } => err(
            "--fanout needs --capture raw or ring (the kernel filter that splits the connections); with --capture pcap give each process its own -F",
        ),
        Input::Offline { .. } => err("--fanout does not apply to offline replay (-i <file>)"),
    }
}

/// The seed of the run's port offset `R` (spec 2.6, used by `-f` and `-n`): random per run,
/// except with `--fanout`, where the processes of a group must map client ports alike (two
/// offsets would let connections of different processes land on one fake port); then it is
/// derived from the `-x` text the processes share (FNV-1a).
fn replay_seed(fanout: bool, transfers_text: &str) -> u64 {
    if fanout {
        return transfers_text
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id())
}

/// Whether the option was typed (not just its default).
fn typed(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

/// TCP replay over IPv6: the options that speak IPv4 only are refused.
fn ipv6_tcp_flags(raw: &RawArgs, m: &ArgMatches) -> Result<(), CliError> {
    let _ = m;
    if raw.capture == Some(CaptureKind::Ring) {
        return err(
            "--capture ring reads IPv4 only: with IPv6 transfers use --capture raw or pcap",
        );
    }
    let refused = [
        ("--diff", raw.diff.is_some()),
        ("--full-payload", raw.full_payload),
        ("--check", raw.check),
        ("--probe-client", raw.probe_client.is_some()),
        ("--auth-file", raw.auth_file.is_some()),
        ("--protocol", raw.protocol.is_some()),
    ];
    for (flag, set) in refused {
        if set {
            return err(format!(
                "{flag} is not available with IPv6 transfers (TCP replay over IPv6 covers replay itself: capture, sessions, intercept --ipv6)"
            ));
        }
    }
    Ok(())
}

fn validate(raw: RawArgs, m: &ArgMatches) -> Result<Args, CliError> {
    let Some(transfers_text) = raw.transfers.clone() else {
        return err("no -x argument (what to copy and where, e.g. -x 80-198.18.0.30:8080)");
    };
    if raw.udp {
        udp_only_flags(&raw, m)?;
    }
    let intercepts_text = match raw.intercepts.clone() {
        Some(text) => text,
        None if raw.udp => String::new(),
        None => return err("tcpcopy needs -s (intercept addresses, e.g. -s 198.18.0.40)"),
    };
    let ipv6 = addr_spec6::is_ipv6_transfers(&transfers_text);
    let (transfers, transfers6) = if ipv6 {
        if !raw.udp {
            ipv6_tcp_flags(&raw, m)?;
        }
        (Vec::new(), addr_spec6::parse_transfers6(&transfers_text)?)
    } else {
        (addr_spec::parse_transfers(&transfers_text)?, Vec::new())
    };
    let intercepts = if raw.udp {
        Vec::new()
    } else {
        addr_spec::parse_intercepts(&intercepts_text, raw.intercept_port)?
    };
    let mut client_prefix6 = None;
    let client_ips = match &raw.client_ips {
        Some(text) if ipv6 => {
            client_prefix6 = Some(addr_spec6::parse_client_prefix6(text, &transfers6)?);
            None
        }
        Some(text) if text.contains(':') => {
            return err(format!(
                "-c \"{text}\": an IPv6 -c needs IPv6 transfers (-x 53-[ADDR]:PORT)"
            ))
        }
        Some(text) => Some(addr_spec::parse_client_ips(text)?),
        None => None,
    };
    if ipv6 {
        if raw.localhost_replacement.is_some() {
            return err("-H applies to IPv4 transfers only");
        }
        if raw.send == SendKind::Pcap {
            for (i, t) in transfers6.iter().enumerate() {
                if t.src_mac.is_none() || t.dst_mac.is_none() {
                    return err(format!(
                        "-x transfer {}: --send pcap needs SRC@MAC of -o and DST@MAC of the next hop (e.g. 53@02:00:00:00:00:01-[2001:db8::30]:53@02:00:00:00:00:02)",
                        i + 1
                    ));
                }
            }
        }
    }
    let localhost_replacement = match &raw.localhost_replacement {
        Some(text) => Some(addr_spec::parse_ip(text, "-H")?),
        None => None,
    };

    let probe_client = match &raw.probe_client {
        Some(text) => Some(addr_spec::parse_ip(text, "--probe-client")?),
        None => None,
    };
    if raw.check && raw.no_probe {
        return err("--check and --no-probe exclude each other");
    }
    if raw.check && probe_client.is_none() && client_ips.is_none() {
        return err("--check needs a fake client address to probe from: -c (e.g. -c 203.0.113.x) or --probe-client IP, one whose answers the target routes to intercept");
    }

    let auth = match (&raw.auth_file, &raw.protocol) {
        (None, None) => None,
        (file, protocol) => {
            if !raw.payload {
                return err(format!(
                    "{} needs --payload here and on intercept: the target's challenge comes in the response payload",
                    if file.is_some() { "--auth-file" } else { "--protocol" }
                ));
            }
            let credentials = match file {
                Some(path) => Some(crate::auth_file::load(path).map_err(CliError)?),
                None => None,
            };
            let protocol = match protocol {
                Some(p) => Some(p.parse().map_err(CliError)?),
                None => None,
            };
            Some(std::sync::Arc::new(tc_core::auth::AuthConfig {
                credentials,
                protocol,
            }))
        }
    };

    let input = input_mode(&raw, m)?;
    let output = match raw.send {
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

    fanout_applies(&raw, &input)?;
    let mut warnings = Vec::new();
    if raw.port_shift > 31 {
        // Spec 2.6: F*2048 + R no longer fits 16 bits, so wrap() maps every port P to
        // (1024 + F*2048 + R) mod 65536, the same port for every connection of a client.
        warnings.push(format!(
            "-f {}: above 31 the port shift wraps as in the original: every client port becomes one port ((1024 + {}*2048 + R) mod 65536, R random in 0..512), so the connections of one client address collide; use -f 1..31",
            raw.port_shift, raw.port_shift
        ));
    }
    let keepalive_timeout = raw
        .keepalive_timeout
        .unwrap_or(raw.session_timeout.saturating_add(120));
    let replay = ReplayConfig {
        transfers: Vec::new(),
        client_ips: Vec::new(),
        localhost_replacement: localhost_replacement.map(Into::into),
        replicas: raw.replicas,
        port_shift: raw.port_shift,
        sample_percent: match raw.sample_percent {
            100 => 0,
            p => p,
        },
        gradual: raw.gradual,
        mtu: raw.mtu,
        fake_syn_mss: raw.mss,
        fixed_rtt: match raw.rtt_ms {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        },
        session_timeout: Duration::from_secs(u64::from(raw.session_timeout)),
        keepalive_timeout: Duration::from_secs(u64::from(keepalive_timeout)),
        only_with_syn: raw.only_with_syn,
        dont_wait: raw.dont_wait,
        single: raw.single,
        auth,
        seed: replay_seed(raw.fanout.is_some(), &transfers_text),
        ..ReplayConfig::default()
    };

    let diff = diff_config(&raw, m)?;
    Ok(Args {
        transfers,
        intercepts,
        client_ips,
        options: Options {
            replay,
            intercepts: Vec::new(),
            conns_per_intercept: usize::from(raw.conns),
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
            report_file: raw.report,
            stats_json_file: raw.stats_json,
            metrics: raw.metrics,
            check: raw.check,
            udp: raw.udp,
            transfers6,
            client_prefix6,
            probe: !raw.no_probe,
            probe_client,
            memory_limit_bytes: raw.memory_mb * 1024 * 1024,
            capture_lost_exit: Duration::from_secs(raw.capture_lost_exit),
            fanout: raw.fanout,
            transfers_text,
            intercepts_text,
            client_ips_text: raw.client_ips,
            warnings,
            full_payload: raw.full_payload || diff.is_some(),
            diff,
            ipv6: ipv6 && !raw.udp,
        },
    })
}

/// `--diff` and its options (which need it).
fn diff_config(raw: &RawArgs, m: &ArgMatches) -> Result<Option<crate::diff::DiffConfig>, CliError> {
    let Some(file) = raw.diff.clone() else {
        for id in [
            "diff_protocol",
            "diff_ignore_header",
            "diff_session_kb",
            "diff_memory_mb",
        ] {
            if typed(m, id) {
                return err(format!("--{} needs --diff FILE", id.replace('_', "-")));
            }
        }
        return Ok(None);
    };
    if raw.check {
        return err("--check and --diff exclude each other");
    }
    Ok(Some(crate::diff::DiffConfig {
        file,
        protocol: raw
            .diff_protocol
            .as_deref()
            .and_then(tc_core::compare::Protocol::from_name),
        ignore_headers: raw.diff_ignore_header.clone(),
        max_session_bytes: raw.diff_session_kb as usize * 1024,
        max_total_bytes: raw.diff_memory_mb as usize * 1024 * 1024,
    }))
}

impl Args {
    /// Looks the host names of `-x` and `-s` up (each once, its first IPv4 address), checks
    /// the resolved addresses, and leaves the targets out of the `-c` addresses.
    pub fn resolve(self) -> Result<Options, CliError> {
        let mut options = self.options;
        if options.ipv6 {
            options.intercepts = addr_spec::resolve_intercepts(&self.intercepts)?;
            // TCP over IPv6: the IPv6 transfers and -c prefix are the replay's.
            options.replay.transfers = options
                .transfers6
                .iter()
                .map(|t| Transfer {
                    src_ip: t.src_ip.map(Into::into),
                    src_port: t.src_port,
                    dst_ip: t.dst_ip.into(),
                    dst_port: t.dst_port,
                    src_mac: t.src_mac,
                    dst_mac: t.dst_mac,
                })
                .collect();
            if let Some(p) = options.client_prefix6 {
                options.replay.client_ips = (0..p.count()).map(|i| p.client(i).into()).collect();
            }
            return Ok(options);
        }
        let transfers = addr_spec::resolve_transfers(&self.transfers)?;
        options.intercepts = addr_spec::resolve_intercepts(&self.intercepts)?;
        if let Some(ips) = &self.client_ips {
            let targets: Vec<Ipv4Addr> = transfers
                .iter()
                .filter_map(|t| match t.dst_ip {
                    std::net::IpAddr::V4(a) => Some(a),
                    std::net::IpAddr::V6(_) => None,
                })
                .collect();
            options.replay.client_ips = addr_spec::select_client_ips(ips, &targets)?
                .into_iter()
                .map(Into::into)
                .collect();
        }
        options.replay.transfers = transfers;
        Ok(options)
    }
}

/// Extensions that make `-i` a pcap file even when the file does not exist.
const CAPTURE_EXTENSIONS: [&str; 3] = [".pcap", ".pcapng", ".cap"];

/// How `-i` tells a pcap file from capture devices (the original had two builds for the two):
/// the text names a file when such a file exists, when it contains a `/` (no interface name
/// does), or when it ends in `.pcap`, `.pcapng` or `.cap`; anything else is a comma-separated
/// list of devices. `Err` for a file that does not exist or is not a regular file, so a
/// mistyped path says "no such file" instead of being opened as a device.
fn input_names_file(text: &str) -> Result<bool, CliError> {
    let lower = text.to_ascii_lowercase();
    let looks_like_file =
        text.contains('/') || CAPTURE_EXTENSIONS.iter().any(|e| lower.ends_with(e));
    match std::fs::metadata(text) {
        Ok(m) if m.is_file() => Ok(true),
        Ok(_) if looks_like_file => err(format!(
            "-i {text}: not a regular file (offline replay reads a pcap file)"
        )),
        Err(e) if looks_like_file && e.kind() == std::io::ErrorKind::NotFound => err(format!(
            "-i {text}: no such file (offline replay needs an existing pcap file)"
        )),
        Err(e) if looks_like_file => err(format!("-i {text}: {e}")),
        _ => Ok(false),
    }
}

/// Chooses the capture: `--capture` when given; otherwise `-i` naming a file (see
/// [`input_names_file`]) means offline, `-i` naming devices means pcap capture, no `-i`
/// means the raw socket.
fn input_mode(raw: &RawArgs, m: &ArgMatches) -> Result<Input, CliError> {
    let input_is_file = match raw.input.as_deref() {
        Some(text) => input_names_file(text)?,
        None => false,
    };
    let pcap_only = [
        ("-F", raw.filter.is_some()),
        ("-B", typed(m, "pcap_buffer_mb")),
        ("-S", typed(m, "snaplen")),
    ];
    let offline_only = [
        ("-a", typed(m, "accel")),
        ("-I", raw.interval_ms.is_some()),
        ("-T", typed(m, "passes")),
        ("--offline-tail", typed(m, "offline_tail")),
    ];
    let kind = match (raw.capture, raw.input.as_deref()) {
        (Some(k @ (CaptureKind::Raw | CaptureKind::Ring)), Some(_)) => {
            let name = if k == CaptureKind::Raw { "raw" } else { "ring" };
            return err(format!("-i does not apply to --capture {name} (use --capture pcap -i <dev>, or -i <pcap file> for offline)"));
        }
        (Some(CaptureKind::Ring), None) => CaptureKind::Ring,
        (Some(CaptureKind::Raw), None) | (None, None) => CaptureKind::Raw,
        (Some(CaptureKind::Pcap), Some(_)) if input_is_file => {
            return err(
                "-i names a file: offline replay is chosen by -i <file> without --capture pcap",
            )
        }
        (Some(CaptureKind::Pcap), _) => CaptureKind::Pcap,
        (None, Some(_)) if input_is_file => {
            for (flag, set) in pcap_only {
                if set {
                    return err(format!(
                        "{flag} only applies to --capture pcap, not to offline replay"
                    ));
                }
            }
            let file = PathBuf::from(raw.input.clone().unwrap_or_default());
            return Ok(Input::Offline {
                file,
                accel: raw.accel,
                max_gap: raw
                    .interval_ms
                    .filter(|ms| *ms > 0)
                    .map(|ms| Duration::from_millis(u64::from(ms))),
                passes: raw.passes,
                tail: Duration::from_secs(u64::from(raw.offline_tail)),
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
        CaptureKind::Raw | CaptureKind::Ring => {
            for (flag, set) in pcap_only {
                if set {
                    return err(format!("{flag} only applies to --capture pcap"));
                }
            }
            Ok(if kind == CaptureKind::Ring {
                Input::Ring
            } else {
                Input::Raw
            })
        }
        CaptureKind::Pcap => {
            let devices = match raw.input.as_deref() {
                None => Vec::new(),
                Some(list) => parse_devices(list)?,
            };
            let filter = match &raw.filter {
                Some(f) if f.trim().is_empty() => return err("-F: empty filter"),
                Some(f) if f.len() > MAX_FILTER_LEN => {
                    return err(format!(
                        "-F: user filter is too long ({} chars, at most {MAX_FILTER_LEN})",
                        f.len()
                    ))
                }
                Some(f) => Some(f.clone()),
                None => None,
            };
            Ok(Input::Pcap {
                devices,
                filter,
                buffer_bytes: raw.pcap_buffer_mb * 1024 * 1024,
                snaplen: raw.snaplen,
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
        if devices.len() == MAX_DEVICES {
            return err(format!(
                "-i: at most {MAX_DEVICES} devices (the original used the first {MAX_DEVICES} and ignored the rest)"
            ));
        }
        devices.push(name.to_string());
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, CliError> {
        let mut v = vec!["tcpcopy"];
        v.extend_from_slice(args);
        match parse(v)? {
            Command::Run(a) => a.resolve(),
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
            vec![std::net::SocketAddr::from((
                Ipv4Addr::new(198, 18, 0, 40),
                36524
            ))]
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
        let build = format!("tcpcopy-rs {} (git commit ", env!("CARGO_PKG_VERSION"));
        assert!(build_line().starts_with(&build), "{}", build_line());
        let help = help();
        for flag in [
            "-x", "-c", "-H", "-s", "-p", "-C", "-n", "-f", "-r", "-g", "-m", "-M", "-D", "-R",
            "-U", "-t", "-k", "-l", "-P", "-O", "-W", "-L", "-d", "-i", "-F", "-B", "-S", "-o",
            "-a", "-I", "-T", "-h", "-v",
        ] {
            assert!(help.contains(&format!("  {flag} ")), "help lacks {flag}");
        }
        for long in [
            "--disable-combined",
            "--payload",
            "--single",
            "--capture",
            "--offline-tail",
            "--send",
        ] {
            assert!(help.contains(&format!("  {long} ")), "help lacks {long}");
        }
        // The defaults of the definitions are shown.
        for default in [
            "[default: 36524]",
            "[default: 2]",
            "[default: 1500]",
            "[default: 1460]",
            "[default: 600]",
            "[default: 16]",
            "[default: 65535]",
            "[default: 120]",
            "[default: 2048]",
        ] {
            assert!(help.contains(default), "help lacks {default}");
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
        assert!(!o
            .replay
            .client_ips
            .contains(&Ipv4Addr::new(203, 0, 113, 9).into()));
    }

    #[test]
    fn intercept_port() {
        let o = run(&[
            "-x",
            "80-198.18.0.30:8080",
            "-s",
            "198.18.0.40,198.18.0.41:9000",
            "-p",
            "4000",
        ])
        .unwrap();
        assert_eq!(o.intercepts[0].port(), 4000);
        assert_eq!(o.intercepts[1].port(), 9000);
    }

    /// Host names pass parsing untouched; resolving them is the second step.
    #[test]
    fn parse_does_not_resolve() {
        let Ok(Command::Run(args)) = parse([
            "tcpcopy",
            "-x",
            "80-no-such-host.invalid:8080",
            "-s",
            "no-such-intercept.invalid",
        ]) else {
            panic!("host names must parse");
        };
        let e = args.resolve().unwrap_err().0;
        assert!(e.contains("no-such-host.invalid"), "{e}");
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
            ("-f", "256"),
            ("-f", "-1"),
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
            assert!(e.contains("the original"), "{flag} {value}: {e}");
        }
    }

    /// `-f`: the original's 8-bit field, with a warning where the shift wraps (spec 2.6).
    #[test]
    fn port_shift_accepts_the_original_range() {
        let o = run(&with(&["-f", "31"])).unwrap();
        assert_eq!(o.replay.port_shift, 31);
        assert!(o.warnings.is_empty());
        for f in ["32", "255"] {
            let o = run(&with(&["-f", f])).unwrap();
            assert_eq!(o.replay.port_shift.to_string(), f);
            assert_eq!(o.warnings.len(), 1);
            assert!(o.warnings[0].contains("wraps"), "{:?}", o.warnings);
        }
        let e = run_err(&with(&["-f", "256"]));
        assert!(e.contains("cut to 8 bits = 0: no shift"), "{e}");
    }

    #[test]
    fn bad_addresses_are_errors() {
        assert!(run_err(&with(&["-H", "127.0.0"])).contains("-H"));
        assert!(run_err(&with(&["-c", "300.1.1.1"])).contains("-c"));
        assert!(run_err(&["-x", "80-198.18.0.30:8080", "-s", "bad"]).contains("-s"));
    }

    #[test]
    fn fanout_shares() {
        let o = run(&with(&["--fanout", "2/3"])).unwrap();
        assert_eq!(o.fanout, Some(FlowShare { index: 1, count: 3 }));
        assert!(o.warnings.is_empty());
        assert_eq!(run(&BASE).unwrap().fanout, None);
        let ring = run(&with(&["--capture", "ring", "--fanout", "1/2"])).unwrap();
        assert_eq!(ring.fanout, Some(FlowShare { index: 0, count: 2 }));
        for bad in ["0/2", "3/2", "2", "1/0", "a/b", "1/2000", ""] {
            assert!(run_err(&with(&["--fanout", bad])).contains("i/n"), "{bad}");
        }
        assert!(run_err(&with(&["--capture", "pcap", "--fanout", "1/2"]))
            .contains("--capture raw or ring"));
        let file = std::env::temp_dir().join(format!("fanout-{}.pcap", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let f = file.to_str().unwrap();
        assert!(run_err(&with(&["-i", f, "--fanout", "1/2"])).contains("offline"));
        std::fs::remove_file(&file).unwrap();
        let v6 = [
            "-x",
            "80-[2001:db8::30]:8080",
            "-s",
            "198.18.0.40",
            "--fanout",
            "1/2",
        ];
        assert!(run_err(&v6).contains("IPv6"));
        // The processes of a group shift ports alike (-f, -n): one port offset for a -x.
        let a = run(&with(&["--fanout", "1/2", "-f", "1"])).unwrap();
        let b = run(&with(&["--fanout", "2/2", "-f", "1"])).unwrap();
        assert_eq!(a.replay.seed, b.replay.seed);
        assert_ne!(
            replay_seed(true, "80-198.18.0.30:8080"),
            replay_seed(true, "81-198.18.0.30:8080")
        );
    }

    #[test]
    fn capture_modes() {
        assert_eq!(
            run(&with(&["--capture", "ring"])).unwrap().input,
            Input::Ring
        );
        assert!(run_err(&with(&["--capture", "ring", "-i", "eth0"])).contains("ring"));
        assert!(run_err(&with(&["--capture", "ring", "-B", "8"])).contains("--capture pcap"));
        let o = run(&with(&["--capture", "pcap"])).unwrap();
        match o.input {
            Input::Pcap {
                devices,
                filter,
                buffer_bytes,
                snaplen,
            } => {
                assert!(devices.is_empty());
                assert_eq!(filter, None);
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
                buffer_bytes,
                snaplen,
            } => {
                assert_eq!(devices, vec!["eth0", "eth1"]);
                assert_eq!(filter.as_deref(), Some("tcp port 80"));
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
        // Typed at its default value is still typed: the mode check sees it.
        assert!(run_err(&with(&["-S", "65535"])).contains("--capture pcap"));
        assert!(run_err(&with(&["-T", "1"])).contains("offline"));
        assert!(run_err(&with(&["--capture", "pcap", "-S", "10"])).contains("-S"));
        assert!(run_err(&with(&["--capture", "bogus"])).contains("bogus"));
    }

    /// The rule by which `-i` names a file or devices (README "Offline replay").
    #[test]
    fn input_file_or_devices() {
        for devices in ["eth0", "eth0.100", "eth0,eth1", "any", "br-1a2b"] {
            assert_eq!(input_names_file(devices), Ok(false), "{devices}");
        }
        for missing in ["./eth0", "/no/such/file", "cap.PCAP", "x.pcapng", "x.cap"] {
            let e = input_names_file(missing).unwrap_err().0;
            assert!(e.contains("no such file"), "{missing}: {e}");
        }
        assert!(input_names_file("/")
            .unwrap_err()
            .0
            .contains("not a regular file"));
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
    fn udp_needs_no_intercept_and_refuses_session_options() {
        let o = run(&[
            "--udp",
            "-x",
            "53-198.18.0.30:53",
            "-c",
            "203.0.113.x",
            "-n",
            "2",
        ])
        .unwrap();
        assert!(o.udp && o.intercepts.is_empty());
        assert_eq!(o.replay.replicas, 2);
        assert_eq!(o.replay.client_ips.len(), 254);
        for extra in [
            &["-s", "198.18.0.40"][..],
            &["-W"],
            &["-t", "60"],
            &["--single"],
            &["--check"],
            &["--diff", "/tmp/x.json"],
        ] {
            let mut args = vec!["--udp", "-x", "53-198.18.0.30:53"];
            args.extend_from_slice(extra);
            let e = run_err(&args);
            assert!(
                e.contains(extra[0]) && e.contains("does not apply to --udp"),
                "{e}"
            );
        }
        // Offline and pcap capture work with --udp.
        let o = run(&["--udp", "-x", "53-198.18.0.30:53", "--capture", "pcap"]).unwrap();
        assert!(run(&[
            "--udp",
            "-x",
            "53-198.18.0.30:53",
            "--stats-json",
            "/tmp/s.jsonl"
        ])
        .is_ok());
        assert!(matches!(o.input, Input::Pcap { .. }));
        let help = help();
        assert!(help.contains("  --udp "), "{help}");
        assert!(help.contains("answers are NOT"), "{help}");
    }

    #[test]
    fn ipv6_transfers_for_tcp() {
        let o = run(&[
            "-x",
            "80-[2001:db8::30]:8080",
            "-s",
            "198.18.0.40",
            "-c",
            "2001:db8:ffff::/120",
        ])
        .unwrap();
        assert!(o.ipv6 && !o.udp);
        assert_eq!(o.replay.transfers.len(), 1);
        let t = o.replay.transfers[0];
        assert_eq!(
            t.dst_ip,
            "2001:db8::30".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!((t.src_ip, t.src_port, t.dst_port), (None, 80, 8080));
        assert_eq!(o.replay.client_ips.len(), 254);
        assert_eq!(
            o.replay.client_ips[0],
            "2001:db8:ffff::1".parse::<std::net::IpAddr>().unwrap()
        );
        // IPv4 runs do not ask for the IPv6 variant.
        assert!(!run(&with(&[])).unwrap().ipv6);
        for (args, says) in [
            (
                &[
                    "-x",
                    "80-[2001:db8::30]:8080",
                    "-s",
                    "198.18.0.40",
                    "--diff",
                    "d.log",
                ][..],
                "--diff is not available with IPv6",
            ),
            (
                &[
                    "-x",
                    "80-[2001:db8::30]:8080",
                    "-s",
                    "198.18.0.40",
                    "--capture",
                    "ring",
                ],
                "--capture ring reads IPv4 only",
            ),
            (
                &[
                    "-x",
                    "80-[2001:db8::30]:8080,81-198.18.0.30:81",
                    "-s",
                    "198.18.0.40",
                ],
                "cannot be mixed",
            ),
            (
                &[
                    "-x",
                    "80-[2001:db8::30]:8080",
                    "-s",
                    "198.18.0.40",
                    "-c",
                    "203.0.113.x",
                ],
                "PREFIX/LEN",
            ),
        ] {
            let e = run_err(args);
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }

    #[test]
    fn ipv6_transfers_with_udp() {
        let o = run(&[
            "--udp",
            "-x",
            "53-[2001:db8::30]:53",
            "-c",
            "2001:db8:ffff::/64",
        ])
        .unwrap();
        assert_eq!(o.transfers6.len(), 1);
        assert!(o.replay.transfers.is_empty());
        assert_eq!(o.client_prefix6.map(|p| p.len), Some(64));
        for (args, says) in [
            (
                &["--udp", "-x", "53-[2001:db8::30]:53", "-c", "203.0.113.x"][..],
                "PREFIX/LEN",
            ),
            (
                &["--udp", "-x", "53-198.18.0.30:53", "-c", "2001:db8::/64"],
                "needs IPv6 transfers",
            ),
            (
                &["--udp", "-x", "53-[2001:db8::30]:53,53-198.18.0.30:53"],
                "cannot be mixed",
            ),
            (
                &["--udp", "-x", "53-[2001:db8::30]:53", "-H", "198.18.0.1"],
                "-H",
            ),
            (
                &[
                    "--udp",
                    "-x",
                    "53-[2001:db8::30]:53",
                    "--send",
                    "pcap",
                    "-o",
                    "eth0",
                ],
                "SRC@MAC",
            ),
        ] {
            let e = run_err(args);
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }
}
