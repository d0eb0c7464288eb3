//! Encoded bodies, built with flate2's encoders and by hand for chunking.

use std::io::Write;

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `data` in chunks of `piece` bytes (the chunk-size line with an extension), ended by a
/// last chunk and a trailer field.
pub fn chunked(data: &[u8], piece: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for c in data.chunks(piece) {
        v.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    v
}
