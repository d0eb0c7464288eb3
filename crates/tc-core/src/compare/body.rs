//! HTTP body decoding for the comparison: de-chunking and gzip/deflate, each bounded in the
//! size it produces. Never fails hard: what cannot be decoded is reported so the caller can
//! compare the raw bytes instead.

use std::io::Read;

/// A decoded body: the bytes kept, whether the output bound cut it, and whether the input
/// ended before the framing said it should.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decoded {
    pub bytes: Vec<u8>,
    /// Cut at the output bound.
    pub truncated: bool,
    /// The input ended early (a chunk or a `Content-Length` longer than the bytes captured),
    /// or a chunk header was malformed: the bytes are what could be read.
    pub incomplete: bool,
}

/// Longest chunk-size line read (hex digits and extensions).
const MAX_CHUNK_LINE: usize = 1024;

/// De-chunks a `Transfer-Encoding: chunked` body, keeping at most `max` bytes. Returns the
/// body and how many input bytes the chunked encoding used (the whole input if it never
/// reached its last chunk).
pub fn dechunk(input: &[u8], max: usize) -> (Decoded, usize) {
    let mut out = Decoded::default();
    let mut pos = 0usize;
    loop {
        let Some((line, next)) = line_at(input, pos, MAX_CHUNK_LINE) else {
            out.incomplete = true;
            return (out, input.len());
        };
        let Some(size) = chunk_size(line) else {
            out.incomplete = true;
            return (out, input.len());
        };
        pos = next;
        if size == 0 {
            // Trailer fields up to an empty line (the body is whole without it, but the
            // message is not).
            while let Some((line, next)) = line_at(input, pos, MAX_CHUNK_LINE) {
                pos = next;
                if line.is_empty() {
                    return (out, pos);
                }
            }
            out.incomplete = true;
            return (out, input.len());
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let take = size.min(input.len() - pos);
        push_bounded(&mut out, &input[pos..pos + take], max);
        pos += take;
        if take < size {
            out.incomplete = true;
            return (out, input.len());
        }
        // The CRLF after the data.
        match line_at(input, pos, 0) {
            Some((_, next)) => pos = next,
            None => {
                out.incomplete = true;
                return (out, input.len());
            }
        }
    }
}

/// Decodes a `Content-Encoding` (`gzip`, `x-gzip`, `deflate`; `identity` and none pass
/// through), keeping at most `max` bytes of output. `None` for an encoding not known or data
/// that does not decode: compare the raw bytes then.
pub fn decode(encoding: &str, input: &[u8], max: usize) -> Option<Decoded> {
    let enc = encoding.trim().to_ascii_lowercase();
    match enc.as_str() {
        "" | "identity" => {
            let mut out = Decoded::default();
            push_bounded(&mut out, input, max);
            Some(out)
        }
        "gzip" | "x-gzip" => read_bounded(flate2::read::MultiGzDecoder::new(input), max),
        // "deflate" is meant as zlib-wrapped, but some servers send raw deflate.
        "deflate" => read_bounded(flate2::read::ZlibDecoder::new(input), max)
            .or_else(|| read_bounded(flate2::read::DeflateDecoder::new(input), max)),
        _ => None,
    }
}

/// Reads a decoder to its end or to `max` bytes (one more is read to tell a cut).
fn read_bounded<R: Read>(r: R, max: usize) -> Option<Decoded> {
    let mut bytes = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    r.take(limit).read_to_end(&mut bytes).ok()?;
    let truncated = bytes.len() > max;
    bytes.truncate(max);
    Some(Decoded {
        bytes,
        truncated,
        incomplete: false,
    })
}

fn push_bounded(out: &mut Decoded, data: &[u8], max: usize) {
    let room = max.saturating_sub(out.bytes.len());
    if data.len() > room {
        out.truncated = true;
    }
    out.bytes.extend_from_slice(&data[..data.len().min(room)]);
}

/// The line starting at `pos` (without its CRLF or LF) and the offset after it; `None` if no
/// line end comes within `max_len` bytes.
pub(crate) fn line_at(input: &[u8], pos: usize, max_len: usize) -> Option<(&[u8], usize)> {
    let rest = input.get(pos..)?;
    let scan = &rest[..rest.len().min(max_len.saturating_add(2))];
    let nl = scan.iter().position(|&b| b == b'\n')?;
    let line = &rest[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, pos + nl + 1))
}

/// The size of a chunk-size line (hex, extensions after `;` ignored); `None` if malformed or
/// over 2^60.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let hex = line.split(|&b| b == b';').next().unwrap_or(&[]);
    let hex = hex.trim_ascii();
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    let mut n = 0u64;
    for &b in hex {
        let d = char::from(b).to_digit(16)?;
        n = n * 16 + u64::from(d);
    }
    Some(n)
}
