//! HTTP/1.x responses: status code, headers (less the ignored ones, names case-insensitive),
//! and the body after de-chunking and gzip/deflate decoding.

use std::collections::BTreeMap;

use super::body::{self, Decoded};
use super::{compare_bytes, Comparison, DiffKind, Difference, Excerpt, DEFAULT_IGNORED_HEADERS};

/// Largest response head parsed (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields parsed in one head.
pub const MAX_HEADERS: usize = 256;
/// Longest header name kept in a `Difference::header`.
const MAX_NAME_IN_DIFF: usize = 64;

/// Which headers are compared: all but the ignored ones, or only the chosen ones.
#[derive(Debug, Clone)]
pub struct HeaderFilter {
    ignored: Vec<String>,
    only: Option<Vec<String>>,
}

impl HeaderFilter {
    /// `extra_ignored` adds to `DEFAULT_IGNORED_HEADERS`; `only`, if given, limits the
    /// comparison to those names. Any case.
    pub fn new(extra_ignored: &[String], only: Option<&[String]>) -> HeaderFilter {
        let mut ignored: Vec<String> = DEFAULT_IGNORED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .chain(extra_ignored.iter().map(|s| s.trim().to_ascii_lowercase()))
            .collect();
        ignored.sort();
        ignored.dedup();
        let only = only.map(|names| {
            names
                .iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect()
        });
        HeaderFilter { ignored, only }
    }

    /// Whether header `name` (lower case) is compared.
    pub fn compares(&self, name: &str) -> bool {
        if self
            .ignored
            .binary_search_by(|s| s.as_str().cmp(name))
            .is_ok()
        {
            return false;
        }
        match &self.only {
            Some(only) => only.iter().any(|s| s == name),
            None => true,
        }
    }
}

impl Default for HeaderFilter {
    fn default() -> Self {
        HeaderFilter::new(&[], None)
    }
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Head<'a> {
    pub status: u16,
    /// The status line, without its line end.
    pub status_line: &'a [u8],
    /// Header fields in order, names lower-cased, values trimmed.
    pub headers: Vec<(String, &'a [u8])>,
    /// Offset of the first body byte.
    pub body_start: usize,
}

impl Head<'_> {
    /// The values of header `name` (lower case), in order.
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Whether this response has no body whatever its headers say (1xx, 204, 304).
    pub fn bodiless(&self) -> bool {
        matches!(self.status, 100..=199 | 204 | 304)
    }

    fn chunked(&self) -> bool {
        self.values("transfer-encoding")
            .flat_map(|v| v.split(|&b| b == b','))
            .last()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    }

    /// `Content-Length`, if present once (or repeated with one value) and valid.
    fn content_length(&self) -> Option<usize> {
        let mut len = None;
        for v in self.values("content-length") {
            let s = std::str::from_utf8(v).ok()?;
            let n: usize = s.trim().parse().ok()?;
            if len.is_some_and(|l| l != n) {
                return None;
            }
            len = Some(n);
        }
        len
    }
}

/// Parses the head of an HTTP/1.x response; `None` if it is not one or is incomplete.
pub fn parse_head(bytes: &[u8]) -> Option<Head<'_>> {
    let (status_line, mut pos) = body::line_at(bytes, 0, MAX_HEAD)?;
    let status = parse_status_line(status_line)?;
    let mut headers = Vec::new();
    loop {
        let (step, next) = step(bytes, pos, headers.len())?;
        pos = next;
        match step {
            Step::End => break,
            Step::Folded => {}
            Step::Field(name, value) => {
                headers.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value));
            }
        }
    }
    Some(Head {
        status,
        status_line,
        headers,
        body_start: pos,
    })
}

/// One line of a response head after the status line.
enum Step<'a> {
    /// A header field: its name as sent and its value, both trimmed.
    Field(&'a [u8], &'a [u8]),
    /// Obsolete line folding: part of the previous value; kept out of the comparison.
    Folded,
    /// The empty line that ends the head.
    End,
}

/// The line of the head at `pos` and the offset after it (`fields`: header fields before
/// it); `None` if the head is malformed, incomplete or too long.
fn step(bytes: &[u8], pos: usize, fields: usize) -> Option<(Step<'_>, usize)> {
    if pos > MAX_HEAD {
        return None;
    }
    let (line, next) = body::line_at(bytes, pos, MAX_HEAD)?;
    if line.is_empty() {
        return Some((Step::End, next));
    }
    if fields >= MAX_HEADERS {
        return None;
    }
    if line[0] == b' ' || line[0] == b'\t' {
        return Some((Step::Folded, next));
    }
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii();
    if name.is_empty() {
        return None;
    }
    Some((Step::Field(name, line[colon + 1..].trim_ascii()), next))
}

/// Headers that frame the body: bodies are compared after them, so two raw bodies are only
/// the same body under the same framing.
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "content-encoding"];

/// Whether `compare` would find the two responses equal, decided without allocating (the
/// common case of a regression run): the same status code, the same compared and framing
/// header fields in the same order, no content encoding, and the same bytes after both
/// heads, at most `max_body` of them. `false` only means "not shown here": the full
/// comparison decides then.
pub fn quick_equal(p: &[u8], t: &[u8], filter: &HeaderFilter, max_body: usize) -> bool {
    let (Some((pl, mut pp)), Some((tl, mut tp))) =
        (body::line_at(p, 0, MAX_HEAD), body::line_at(t, 0, MAX_HEAD))
    else {
        return false;
    };
    match (parse_status_line(pl), parse_status_line(tl)) {
        (Some(a), Some(b)) if a == b => {}
        _ => return false,
    }
    let (mut pn, mut tn) = (0, 0);
    loop {
        let (Some(a), Some(b)) = (
            next_kept(p, &mut pp, &mut pn, filter),
            next_kept(t, &mut tp, &mut tn, filter),
        ) else {
            return false;
        };
        match (a, b) {
            (None, None) => {
                return p.len() - pp <= max_body && p[pp..] == t[tp..];
            }
            (Some((an, av)), Some((bn, bv))) if an.eq_ignore_ascii_case(bn) && av == bv => {
                if an.eq_ignore_ascii_case(b"content-encoding") {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// The next header field at `*pos` that the comparison looks at (compared, or framing):
/// `Some(None)` at the end of the head; `None` if the head is malformed or a name cannot be
/// looked up without allocating (not UTF-8, or longer than 64 bytes).
fn next_kept<'a>(
    bytes: &'a [u8],
    pos: &mut usize,
    fields: &mut usize,
    filter: &HeaderFilter,
) -> Option<Option<(&'a [u8], &'a [u8])>> {
    loop {
        let (step, next) = step(bytes, *pos, *fields)?;
        *pos = next;
        match step {
            Step::End => return Some(None),
            Step::Folded => {}
            Step::Field(name, value) => {
                *fields += 1;
                let mut buf = [0u8; MAX_NAME_IN_DIFF];
                let lower = buf.get_mut(..name.len())?;
                for (d, s) in lower.iter_mut().zip(name) {
                    *d = s.to_ascii_lowercase();
                }
                let lower = std::str::from_utf8(lower).ok()?;
                if FRAMING.contains(&lower) || filter.compares(lower) {
                    return Some(Some((name, value)));
                }
            }
        }
    }
}

/// `HTTP/1.x DDD[ reason]` -> the status code.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    if !minor.is_ascii_digit() {
        return None;
    }
    let rest = rest.strip_prefix(b" ")?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    code.iter()
        .try_fold(0u16, |n, &d| Some(n * 10 + u16::from(d - b'0')))
}

/// A parsed response: its head and its decoded body.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub head: Head<'a>,
    pub body: Decoded,
}

/// Parses a response and decodes its body (de-chunked, then gzip/deflate decoded; a body that
/// does not decode is kept as sent), each step bounded to `max_body` bytes.
pub fn parse(bytes: &[u8], max_body: usize) -> Option<Message<'_>> {
    let head = parse_head(bytes)?;
    let rest = &bytes[head.body_start..];
    let framed = if head.bodiless() {
        Decoded::default()
    } else if head.chunked() {
        body::dechunk(rest, max_body).0
    } else if let Some(len) = head.content_length() {
        let take = len.min(rest.len()).min(max_body);
        Decoded {
            bytes: rest[..take].to_vec(),
            truncated: take < len.min(rest.len()),
            incomplete: rest.len() < len,
        }
    } else {
        let take = rest.len().min(max_body);
        Decoded {
            bytes: rest[..take].to_vec(),
            truncated: take < rest.len(),
            incomplete: false,
        }
    };
    let encoding: Vec<u8> = head
        .values("content-encoding")
        .collect::<Vec<_>>()
        .join(&b","[..]);
    let body = if encoding.is_empty() {
        framed
    } else {
        let enc = String::from_utf8_lossy(&encoding).into_owned();
        match body::decode(&enc, &framed.bytes, max_body) {
            Some(d) => Decoded {
                bytes: d.bytes,
                truncated: d.truncated || framed.truncated,
                incomplete: framed.incomplete,
            },
            None => framed,
        }
    };
    Some(Message { head, body })
}

/// The length of the first complete response in `bytes`, for pairing by position; `None`
/// while it is incomplete. A response framed by the connection's end (no length, not chunked)
/// is complete only at `eof`. Responses to HEAD requests cannot be told from their headers:
/// pair those lock-step.
pub fn message_len(bytes: &[u8], eof: bool) -> Option<usize> {
    let head = parse_head(bytes)?;
    let start = head.body_start;
    if head.bodiless() {
        return Some(start);
    }
    if head.chunked() {
        // Only the framing matters here: keep no body byte.
        let (d, used) = body::dechunk(&bytes[start..], 0);
        return (!d.incomplete || eof).then_some(start + used);
    }
    if let Some(len) = head.content_length() {
        let end = start.checked_add(len)?;
        return if end <= bytes.len() {
            Some(end)
        } else {
            eof.then_some(bytes.len())
        };
    }
    eof.then_some(bytes.len())
}

/// Compares two HTTP responses: status code, then headers (names in order), then body. When
/// a side holds several messages (an interim `100 Continue` before the answer), they are
/// compared in order and a missing one is a `Length` difference. If one side is not an HTTP
/// response the result is `Malformed`; if neither is, bytes.
pub fn compare(
    production: &[u8],
    target: &[u8],
    filter: &HeaderFilter,
    max_body: usize,
) -> Comparison {
    let (mut p, mut t) = (production, target);
    loop {
        if p == t || quick_equal(p, t, filter, max_body) {
            return Comparison::Equal;
        }
        let kind = match (parse(p, max_body), parse(t, max_body)) {
            (Some(pm), Some(tm)) => {
                let c = compare_messages(&pm, &tm, filter);
                if !c.is_equal() {
                    return c;
                }
                // Both framings end within the input at its end (eof).
                p = &p[message_len(p, true).unwrap_or(p.len())..];
                t = &t[message_len(t, true).unwrap_or(t.len())..];
                continue;
            }
            _ if p.is_empty() || t.is_empty() => DiffKind::Length,
            (None, None) => return compare_bytes(p, t),
            _ => DiffKind::Malformed,
        };
        return Comparison::Different(Difference::at_first_mismatch(kind, p, t));
    }
}

/// Compares two parsed responses.
pub fn compare_messages(p: &Message<'_>, t: &Message<'_>, filter: &HeaderFilter) -> Comparison {
    if p.head.status != t.head.status {
        return Comparison::Different(Difference {
            kind: DiffKind::Status,
            header: None,
            production: Excerpt::of(p.head.status_line),
            target: Excerpt::of(t.head.status_line),
        });
    }
    let (ph, th) = (
        compared_headers(&p.head, filter),
        compared_headers(&t.head, filter),
    );
    let names: std::collections::BTreeSet<&String> = ph.keys().chain(th.keys()).copied().collect();
    for name in names {
        let (pv, tv) = (ph.get(name), th.get(name));
        if pv != tv {
            return Comparison::Different(Difference {
                kind: DiffKind::Header,
                header: Some(diff_name(name)),
                production: Excerpt::of(&pv.map(|v| v.join(&b", "[..])).unwrap_or_default()),
                target: Excerpt::of(&tv.map(|v| v.join(&b", "[..])).unwrap_or_default()),
            });
        }
    }
    let (pb, tb) = (&p.body, &t.body);
    if pb.bytes != tb.bytes {
        let n = pb.bytes.len().min(tb.bytes.len());
        let kind = if pb.bytes[..n] != tb.bytes[..n] {
            DiffKind::Body
        } else if pb.truncated || tb.truncated || pb.incomplete || tb.incomplete {
            DiffKind::Truncated
        } else {
            DiffKind::Length
        };
        return Comparison::Different(Difference::at_first_mismatch(kind, &pb.bytes, &tb.bytes));
    }
    if pb.truncated || tb.truncated || pb.incomplete != tb.incomplete {
        return Comparison::Different(Difference::at_first_mismatch(
            DiffKind::Truncated,
            &pb.bytes,
            &tb.bytes,
        ));
    }
    Comparison::Equal
}

fn compared_headers<'h>(
    head: &'h Head<'_>,
    filter: &HeaderFilter,
) -> BTreeMap<&'h String, Vec<&'h [u8]>> {
    let mut map: BTreeMap<&String, Vec<&[u8]>> = BTreeMap::new();
    for (name, value) in &head.headers {
        if filter.compares(name) {
            map.entry(name).or_default().push(value);
        }
    }
    map
}

/// A header name as shown in a difference: printable, at most `MAX_NAME_IN_DIFF` bytes.
fn diff_name(name: &str) -> String {
    let cut = &name.as_bytes()[..name.len().min(MAX_NAME_IN_DIFF)];
    Excerpt::of(cut).as_str().to_string()
}
