//! Redis replies (RESP2 and RESP3): type and value, arrays, maps and sets element by element,
//! in order.

use std::ops::Range;

use super::{compare_bytes, Comparison, DiffKind, Difference};

/// Deepest nesting of aggregates parsed; deeper is malformed.
pub const MAX_DEPTH: usize = 64;

/// The type of a reply, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `+`
    Simple,
    /// `-`
    Error,
    /// `:`
    Integer,
    /// `$`
    Bulk,
    /// `*`
    Array,
    /// `_` (RESP3)
    Null,
    /// `#` (RESP3)
    Boolean,
    /// `,` (RESP3)
    Double,
    /// `(` (RESP3)
    BigNumber,
    /// `!` (RESP3)
    BulkError,
    /// `=` (RESP3)
    Verbatim,
    /// `%` (RESP3)
    Map,
    /// `~` (RESP3)
    Set,
    /// `|` (RESP3)
    Attribute,
    /// `>` (RESP3)
    Push,
}

impl Kind {
    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            b'+' => Kind::Simple,
            b'-' => Kind::Error,
            b':' => Kind::Integer,
            b'$' => Kind::Bulk,
            b'*' => Kind::Array,
            b'_' => Kind::Null,
            b'#' => Kind::Boolean,
            b',' => Kind::Double,
            b'(' => Kind::BigNumber,
            b'!' => Kind::BulkError,
            b'=' => Kind::Verbatim,
            b'%' => Kind::Map,
            b'~' => Kind::Set,
            b'|' => Kind::Attribute,
            b'>' => Kind::Push,
            _ => return None,
        })
    }
}

/// The value of a reply, borrowing the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// The line of a simple string, error, integer, null, boolean, double or big number.
    Line(&'a [u8]),
    /// The payload of a bulk string, bulk error or verbatim string; `None` for `$-1`.
    Blob(Option<&'a [u8]>),
    /// The elements of an array, set, push, map or attribute (a map's keys and values
    /// alternate); `None` for `*-1`.
    Items(Option<Vec<Reply<'a>>>),
}

/// One reply: its type, value and where it lies in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'a> {
    pub kind: Kind,
    pub value: Value<'a>,
    pub span: Range<usize>,
}

/// Why a reply did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The input ends inside the reply.
    Incomplete,
    /// Not RESP.
    Malformed,
}

/// Parses the reply starting at `pos`.
pub fn parse_reply(input: &[u8], pos: usize) -> Result<Reply<'_>, Error> {
    parse_at(input, pos, 0)
}

/// Parses replies one after another; returns those that parsed and the offset of the first
/// byte that did not (the input's length if all did).
pub fn parse_all(input: &[u8]) -> (Vec<Reply<'_>>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        match parse_at(input, pos, 0) {
            Ok(r) => {
                pos = r.span.end;
                out.push(r);
            }
            Err(_) => break,
        }
    }
    (out, pos)
}

/// The length of the first reply, for pairing by position: `None` while incomplete or not
/// RESP (the framing is lost: the rest of the stream becomes one message at its end); at
/// `eof`, the rest.
pub fn reply_len(input: &[u8], eof: bool) -> Option<usize> {
    match parse_at(input, 0, 0) {
        Ok(r) => Some(r.span.end),
        Err(_) => eof.then_some(input.len()),
    }
}

/// Whether these first bytes of a response look like RESP: a type byte and a first reply that
/// parses or is only incomplete.
pub fn looks_like_resp(first: &[u8]) -> bool {
    !first.is_empty() && !matches!(parse_at(first, 0, 0), Err(Error::Malformed))
}

fn parse_at(input: &[u8], pos: usize, depth: usize) -> Result<Reply<'_>, Error> {
    if depth > MAX_DEPTH {
        return Err(Error::Malformed);
    }
    let &tag = input.get(pos).ok_or(Error::Incomplete)?;
    let kind = Kind::from_byte(tag).ok_or(Error::Malformed)?;
    let (line, mut end) = line(input, pos + 1)?;
    let value = match kind {
        Kind::Simple
        | Kind::Error
        | Kind::Integer
        | Kind::Null
        | Kind::Boolean
        | Kind::Double
        | Kind::BigNumber => {
            check_line(kind, line)?;
            Value::Line(line)
        }
        Kind::Bulk | Kind::BulkError | Kind::Verbatim => match length(line)? {
            None if kind == Kind::Bulk => Value::Blob(None),
            None => return Err(Error::Malformed),
            Some(n) => {
                let data_end = end.checked_add(n).ok_or(Error::Malformed)?;
                let after = data_end.checked_add(2).ok_or(Error::Malformed)?;
                if after > input.len() {
                    return Err(Error::Incomplete);
                }
                if &input[data_end..after] != b"\r\n" {
                    return Err(Error::Malformed);
                }
                let data = &input[end..data_end];
                end = after;
                Value::Blob(Some(data))
            }
        },
        Kind::Array | Kind::Map | Kind::Set | Kind::Attribute | Kind::Push => {
            match length(line)? {
                None if kind == Kind::Array => Value::Items(None),
                None => return Err(Error::Malformed),
                Some(n) => {
                    let per = if matches!(kind, Kind::Map | Kind::Attribute) {
                        2
                    } else {
                        1
                    };
                    let count = n.checked_mul(per).ok_or(Error::Malformed)?;
                    // Each element takes at least 3 bytes: no allocation beyond the input.
                    if count > (input.len() - end) / 3 {
                        return Err(Error::Incomplete);
                    }
                    let mut items = Vec::with_capacity(count);
                    for _ in 0..count {
                        let r = parse_at(input, end, depth + 1)?;
                        end = r.span.end;
                        items.push(r);
                    }
                    Value::Items(Some(items))
                }
            }
        }
    };
    Ok(Reply {
        kind,
        value,
        span: pos..end,
    })
}

/// The line from `pos` to CRLF and the offset after the CRLF.
fn line(input: &[u8], pos: usize) -> Result<(&[u8], usize), Error> {
    let rest = input.get(pos..).ok_or(Error::Incomplete)?;
    match rest.iter().position(|&b| b == b'\n') {
        Some(nl) if nl > 0 && rest[nl - 1] == b'\r' => {
            let line = &rest[..nl - 1];
            if line.contains(&b'\r') {
                return Err(Error::Malformed);
            }
            Ok((line, pos + nl + 1))
        }
        Some(_) => Err(Error::Malformed),
        None if rest.contains(&b'\r') && !rest.ends_with(b"\r") => Err(Error::Malformed),
        None => Err(Error::Incomplete),
    }
}

/// A length line: `-1` is `None`, a non-negative decimal is `Some`.
fn length(line: &[u8]) -> Result<Option<usize>, Error> {
    if line == b"-1" {
        return Ok(None);
    }
    if line.is_empty() || line.len() > 18 || !line.iter().all(u8::is_ascii_digit) {
        return Err(Error::Malformed);
    }
    Ok(Some(
        line.iter()
            .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0')),
    ))
}

fn check_line(kind: Kind, line: &[u8]) -> Result<(), Error> {
    let ok = match kind {
        Kind::Integer | Kind::BigNumber => {
            let digits = line.strip_prefix(b"-").unwrap_or(line);
            let digits = digits.strip_prefix(b"+").unwrap_or(digits);
            !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
        }
        Kind::Null => line.is_empty(),
        Kind::Boolean => line == b"t" || line == b"f",
        Kind::Double => !line.is_empty(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Malformed)
    }
}

/// Compares the replies of two responses in order: type, then value; aggregates element by
/// element. Bytes that do not parse are compared as bytes after the replies that do.
pub fn compare(production: &[u8], target: &[u8]) -> Comparison {
    if production == target {
        return Comparison::Equal;
    }
    let (pr, p_end) = parse_all(production);
    let (tr, t_end) = parse_all(target);
    if pr.is_empty() != tr.is_empty() {
        return Comparison::Different(Difference::at_first_mismatch(
            DiffKind::Malformed,
            production,
            target,
        ));
    }
    for (p, t) in pr.iter().zip(&tr) {
        if let Some(d) = compare_reply(p, t, production, target) {
            return Comparison::Different(d);
        }
    }
    let (p_rest, t_rest) = (&production[p_end..], &target[t_end..]);
    if pr.len() != tr.len() {
        // One side has more replies; if the other has bytes that are not RESP instead, those
        // are malformed, else it is short.
        let kind = if p_rest.is_empty() && t_rest.is_empty() {
            DiffKind::Length
        } else {
            DiffKind::Malformed
        };
        let at = pr.len().min(tr.len());
        let p_at = pr.get(at).map_or(p_end, |r| r.span.start);
        let t_at = tr.get(at).map_or(t_end, |r| r.span.start);
        return Comparison::Different(Difference::at_first_mismatch(
            kind,
            &production[p_at..],
            &target[t_at..],
        ));
    }
    match compare_bytes(p_rest, t_rest) {
        Comparison::Equal => Comparison::Equal,
        Comparison::Different(d) => Comparison::Different(Difference {
            kind: DiffKind::Malformed,
            ..d
        }),
    }
}

/// The first difference between two replies, `None` if equal.
pub fn compare_reply(p: &Reply<'_>, t: &Reply<'_>, pin: &[u8], tin: &[u8]) -> Option<Difference> {
    let raw =
        |kind| Difference::at_first_mismatch(kind, &pin[p.span.clone()], &tin[t.span.clone()]);
    if p.kind != t.kind {
        return Some(raw(DiffKind::Type));
    }
    match (&p.value, &t.value) {
        (Value::Items(Some(pi)), Value::Items(Some(ti))) => {
            if pi.len() != ti.len() {
                return Some(raw(DiffKind::Length));
            }
            pi.iter()
                .zip(ti)
                .find_map(|(a, b)| compare_reply(a, b, pin, tin))
        }
        (a, b) if a == b => None,
        _ => Some(raw(DiffKind::Value)),
    }
}
