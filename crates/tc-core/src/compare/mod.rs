//! Comparing the target's answers with production's (issue 19): the pure core.
//!
//! Sans-IO, like the rest of the pure core: the caller feeds bytes and events, nothing here
//! reads a socket or a clock.
//!
//! - `pairing`: within one connection, which production response goes with which target
//!   response (lock-step by request boundaries, or by position for pipelined protocols), with
//!   a bound on the bytes buffered per session; unpaired responses are reported as such.
//! - `http`, `resp`, and the byte comparison here: one `Comparison` per pair: equal, or the
//!   first difference found with its kind and short excerpts of both sides.
//! - `body`: HTTP body decoding (de-chunking, gzip/deflate), bounded in output size.
//! - `summary`: counters over many comparisons.
//!
//! No input makes any of this panic: malformed messages fall back to a byte comparison.

pub mod body;
pub mod http;
pub mod pairing;
pub mod resp;
pub mod summary;

pub use pairing::{Gone, Pair, Pairer, Pairing, Record, Response, Side, Unpaired};
pub use summary::Summary;

/// Longest excerpt of one side kept in a difference, in input bytes.
pub const EXCERPT_MAX: usize = 200;

/// Bytes of context shown before the first differing byte in an excerpt.
const EXCERPT_BEFORE: usize = 40;

/// The protocol a pair is compared as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 and HTTP/1.1 responses.
    Http,
    /// Redis replies, RESP2 and RESP3.
    Redis,
    /// Anything else: byte for byte.
    Bytes,
}

impl Protocol {
    /// Parses the name given on the command line: `http`, `redis` or `bytes`.
    pub fn from_name(name: &str) -> Option<Protocol> {
        match name.to_ascii_lowercase().as_str() {
            "http" => Some(Protocol::Http),
            "redis" | "resp" => Some(Protocol::Redis),
            "bytes" => Some(Protocol::Bytes),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Redis => "redis",
            Protocol::Bytes => "bytes",
        }
    }

    /// Guesses the protocol from the first bytes of a response: `HTTP/1.` is HTTP, a RESP type
    /// byte followed by a well-formed first line is Redis, anything else is bytes.
    pub fn detect(first: &[u8]) -> Protocol {
        if first.starts_with(b"HTTP/1.") {
            Protocol::Http
        } else if resp::looks_like_resp(first) {
            Protocol::Redis
        } else {
            Protocol::Bytes
        }
    }
}

/// What differs between the two responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiffKind {
    /// HTTP status code.
    Status,
    /// An HTTP header (its name in `Difference::header`): present on one side only, or with
    /// other values.
    Header,
    /// HTTP body (after de-chunking and decoding), or the bytes of a non-HTTP response.
    Body,
    /// RESP reply type (e.g. bulk string against error).
    Type,
    /// RESP reply value.
    Value,
    /// One side is a strict prefix of the other: a shorter body, fewer replies, a shorter
    /// array.
    Length,
    /// Equal as far as both were kept, but at least one side was cut (buffer bound or decoded
    /// size bound), so the rest is unknown.
    Truncated,
    /// One side parses as the protocol and the other does not.
    Malformed,
}

impl DiffKind {
    pub const ALL: [DiffKind; 8] = [
        DiffKind::Status,
        DiffKind::Header,
        DiffKind::Body,
        DiffKind::Type,
        DiffKind::Value,
        DiffKind::Length,
        DiffKind::Truncated,
        DiffKind::Malformed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DiffKind::Status => "status",
            DiffKind::Header => "header",
            DiffKind::Body => "body",
            DiffKind::Type => "type",
            DiffKind::Value => "value",
            DiffKind::Length => "length",
            DiffKind::Truncated => "truncated",
            DiffKind::Malformed => "malformed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A short, printable piece of one side: at most `EXCERPT_MAX` input bytes, printable ASCII
/// kept, `\` doubled, every other byte as `\xNN`; `...` marks a cut at either end. Plain
/// UTF-8 text, ready to be JSON-escaped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Excerpt(String);

impl Excerpt {
    /// The excerpt of `bytes` that shows offset `at` (the first differing byte), with some
    /// context before it.
    pub fn around(bytes: &[u8], at: usize) -> Excerpt {
        let start = at.min(bytes.len()).saturating_sub(EXCERPT_BEFORE);
        let end = start.saturating_add(EXCERPT_MAX).min(bytes.len());
        let mut s = String::new();
        if start > 0 {
            s.push_str("...");
        }
        for &b in &bytes[start..end] {
            match b {
                b'\\' => s.push_str("\\\\"),
                0x20..=0x7e => s.push(char::from(b)),
                _ => s.push_str(&format!("\\x{b:02x}")),
            }
        }
        if end < bytes.len() {
            s.push_str("...");
        }
        Excerpt(s)
    }

    /// The excerpt of the start of `bytes`.
    pub fn of(bytes: &[u8]) -> Excerpt {
        Excerpt::around(bytes, 0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The first difference found between a production and a target response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub kind: DiffKind,
    /// For `DiffKind::Header`: the header's name, lower case, printable, at most 64 bytes.
    pub header: Option<String>,
    pub production: Excerpt,
    pub target: Excerpt,
}

impl Difference {
    /// A difference whose excerpts show both sides from the first byte where they differ.
    pub fn at_first_mismatch(kind: DiffKind, production: &[u8], target: &[u8]) -> Difference {
        let at = first_mismatch(production, target);
        Difference {
            kind,
            header: None,
            production: Excerpt::around(production, at),
            target: Excerpt::around(target, at),
        }
    }
}

impl std::fmt::Display for Difference {
    /// The kind, with the header's name for a header: `status`, `header content-type`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind.name())?;
        match &self.header {
            Some(name) => write!(f, " {name}"),
            None => Ok(()),
        }
    }
}

/// The result of comparing one pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    Equal,
    Different(Difference),
}

impl Comparison {
    pub fn is_equal(&self) -> bool {
        matches!(self, Comparison::Equal)
    }

    pub fn difference(&self) -> Option<&Difference> {
        match self {
            Comparison::Equal => None,
            Comparison::Different(d) => Some(d),
        }
    }
}

/// Headers ignored by default (lower case): they differ between two servers, or between two
/// answers of one server, whatever the application does. `Content-Length`,
/// `Transfer-Encoding` and `Content-Encoding` are framing: bodies are compared after
/// de-chunking and decoding, so a length or encoding difference shows as a body difference;
/// `Accept-Ranges` goes with them (servers drop it from compressed answers).
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "etag",
    "last-modified",
    "set-cookie",
    "expires",
    "age",
    "x-request-id",
    "x-correlation-id",
    "x-trace-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "traceparent",
    "tracestate",
    "x-amzn-trace-id",
    "x-amzn-requestid",
    "x-runtime",
    "x-response-time",
    "server-timing",
    "x-powered-by",
    "via",
    "x-served-by",
    "x-cache",
    "x-cache-hits",
    "x-timer",
    "cf-ray",
    "report-to",
    "nel",
    "keep-alive",
    "connection",
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "accept-ranges",
];

/// How to compare. `Default` compares HTTP status, every header but the ignored ones, and
/// bodies decoded up to 1 MiB.
#[derive(Debug, Clone)]
pub struct Options {
    /// `None`: detect from the first bytes of each pair.
    pub protocol: Option<Protocol>,
    /// Header names (any case) ignored besides `DEFAULT_IGNORED_HEADERS`
    /// (`--diff-ignore-header NAME`).
    pub ignore_headers: Vec<String>,
    /// If set, only these headers (any case) are compared; the ignore lists still apply.
    pub only_headers: Option<Vec<String>>,
    /// Largest HTTP body kept after de-chunking and after decoding gzip/deflate; past it the
    /// body is cut and flagged (a gzip bomb stops here).
    pub max_body: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            protocol: None,
            ignore_headers: Vec::new(),
            only_headers: None,
            max_body: 1 << 20,
        }
    }
}

/// Compares pairs with a fixed set of options (header names normalized once).
#[derive(Debug, Clone)]
pub struct Comparator {
    protocol: Option<Protocol>,
    http: http::HeaderFilter,
    max_body: usize,
}

impl Comparator {
    pub fn new(opts: &Options) -> Comparator {
        Comparator {
            protocol: opts.protocol,
            http: http::HeaderFilter::new(&opts.ignore_headers, opts.only_headers.as_deref()),
            max_body: opts.max_body,
        }
    }

    /// The protocol a pair is compared as: the configured one, or detected from production's
    /// first bytes (the target's if production's are empty).
    pub fn protocol_for(&self, production: &[u8], target: &[u8]) -> Protocol {
        self.protocol.unwrap_or_else(|| {
            Protocol::detect(if production.is_empty() {
                target
            } else {
                production
            })
        })
    }

    /// Compares two complete responses.
    pub fn compare(&self, production: &[u8], target: &[u8]) -> Comparison {
        match self.protocol_for(production, target) {
            Protocol::Http => http::compare(production, target, &self.http, self.max_body),
            Protocol::Redis => resp::compare(production, target),
            Protocol::Bytes => compare_bytes(production, target),
        }
    }

    /// Compares a pair from the `Pairer`. When a side was cut by the buffer bound and both
    /// agree on the bytes kept, the result is a `Truncated` difference (the rest is unknown);
    /// otherwise the protocol comparison decides.
    pub fn compare_pair(&self, pair: &Pair) -> Comparison {
        let (p, t) = (&pair.production, &pair.target);
        if p.truncated || t.truncated {
            let n = p.bytes.len().min(t.bytes.len());
            if p.bytes[..n] == t.bytes[..n] {
                return Comparison::Different(Difference::at_first_mismatch(
                    DiffKind::Truncated,
                    &p.bytes,
                    &t.bytes,
                ));
            }
        }
        self.compare(&p.bytes, &t.bytes)
    }
}

/// Byte-for-byte comparison: `Length` when one is a strict prefix of the other, `Body`
/// otherwise.
pub fn compare_bytes(production: &[u8], target: &[u8]) -> Comparison {
    if production == target {
        return Comparison::Equal;
    }
    let n = production.len().min(target.len());
    let kind = if production[..n] == target[..n] {
        DiffKind::Length
    } else {
        DiffKind::Body
    };
    Comparison::Different(Difference::at_first_mismatch(kind, production, target))
}

/// Offset of the first byte where `a` and `b` differ (the shorter length if one is a prefix
/// of the other).
pub fn first_mismatch(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}
