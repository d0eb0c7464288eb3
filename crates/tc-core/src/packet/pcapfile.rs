//! Capture files for offline replay (`--offline -i FILE`, spec 7.1): a reader for classic pcap
//! (either byte order, micro- or nanosecond timestamps) and pcapng, and a small classic-pcap
//! writer (tests make their captures with it).
//!
//! Why our own reader rather than libpcap (`pcap::Capture::from_file`) or the `pcap-file`
//! crate: both formats are small and fully specified, and reading them here gives
//! * errors that name the record index and byte offset where a file is truncated or corrupt
//!   (libpcap reports "truncated dump file" without either, and needs a `FILE*`);
//! * one reusable buffer, no allocation per record, and no C in the path, so the whole reader
//!   can be fuzzed in-process from arbitrary bytes;
//! * exact pcapng timestamp handling (`if_tsresol` in powers of 10 or 2, `if_tsoffset`) per
//!   interface, and each record tagged with its own interface's link type.
//!
//! Records are returned as they are; a record whose captured length is below its original
//! length is [`PcapRecord::is_truncated`] (the caller counts and drops it), and a link type we
//! do not decode is [`PcapRecord::link`] = `None` (the caller drops the record). A file that
//! ends inside a record, or holds an impossible record, ends reading with a [`PcapError`].

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use super::link::LinkType;

/// Largest captured length accepted for one record (libpcap's limit, 256 KiB): anything
/// beyond is taken as corruption rather than allocated.
pub const MAX_RECORD_LEN: usize = 262_144;
/// Largest pcapng block accepted (a packet block of [`MAX_RECORD_LEN`] plus generous room
/// for options).
const MAX_BLOCK_LEN: usize = MAX_RECORD_LEN + 65_536;

const PCAP_MAGIC_MICRO: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NANO: u32 = 0xa1b2_3c4d;
const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
const PCAPNG_BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const PCAPNG_IDB: u32 = 1;
const PCAPNG_OPB: u32 = 2;
const PCAPNG_SPB: u32 = 3;
const PCAPNG_EPB: u32 = 6;
/// Interfaces a pcapng section may describe before we call it corrupt.
const MAX_INTERFACES: usize = 1024;

/// One packet record of a capture file. `data` borrows the reader's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcapRecord<'a> {
    /// 0-based number of this packet record in the file.
    pub index: u64,
    /// Byte offset of the record (pcap record header / pcapng block) in the file.
    pub offset: u64,
    /// Capture time since the Unix epoch. pcapng simple packet blocks carry none: they get
    /// the previous record's time.
    pub timestamp: Duration,
    /// The raw link-type number of the record's interface (LINKTYPE_*, FCS bits removed).
    pub dlt: u32,
    /// The link type when we decode it.
    pub link: Option<LinkType>,
    /// Captured bytes.
    pub data: &'a [u8],
    /// Length of the packet on the wire.
    pub orig_len: u32,
}

impl PcapRecord<'_> {
    /// Fewer bytes were captured than the packet had (snaplen): not replayable as is.
    pub fn is_truncated(&self) -> bool {
        (self.data.len() as u64) < u64::from(self.orig_len)
    }
}

/// Why a capture file could not be read (further).
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("cannot open capture file {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("I/O error reading capture file at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    #[error("not a pcap or pcapng file (first bytes {magic:02x?})")]
    NotPcap { magic: Vec<u8> },
    #[error(
        "capture file truncated in {what} of record {index} (byte offset {offset}): \
         {need} bytes needed, {have} present"
    )]
    Truncated {
        what: &'static str,
        index: u64,
        offset: u64,
        need: u64,
        have: u64,
    },
    #[error("corrupt capture file at record {index} (byte offset {offset}): {what}")]
    Corrupt {
        what: String,
        index: u64,
        offset: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        match self {
            Endian::Little => u16::from_le_bytes(a),
            Endian::Big => u16::from_be_bytes(a),
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self {
            Endian::Little => u32::from_le_bytes(a),
            Endian::Big => u32::from_be_bytes(a),
        }
    }
    fn u64(self, b: &[u8]) -> u64 {
        let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        match self {
            Endian::Little => u64::from_le_bytes(a),
            Endian::Big => u64::from_be_bytes(a),
        }
    }
}

/// Timestamp resolution: units per second, and a fixed offset in seconds (pcapng).
#[derive(Debug, Clone, Copy)]
struct Clock {
    units_per_sec: u64,
    offset_secs: i64,
}

impl Clock {
    const MICRO: Clock = Clock {
        units_per_sec: 1_000_000,
        offset_secs: 0,
    };

    fn to_duration(self, units: u64) -> Duration {
        let secs = units / self.units_per_sec;
        let rem = units % self.units_per_sec;
        let nanos = (u128::from(rem) * 1_000_000_000 / u128::from(self.units_per_sec)) as u32;
        // Before the epoch makes no sense for replay pacing: clamp at 0.
        let secs = if self.offset_secs >= 0 {
            secs.saturating_add(self.offset_secs.unsigned_abs())
        } else {
            secs.saturating_sub(self.offset_secs.unsigned_abs())
        };
        Duration::new(secs, nanos)
    }
}

#[derive(Debug, Clone, Copy)]
struct Interface {
    dlt: u32,
    snaplen: u32,
    clock: Clock,
}

#[derive(Debug)]
enum Format {
    Pcap {
        endian: Endian,
        clock: Clock,
        dlt: u32,
    },
    PcapNg {
        endian: Endian,
        interfaces: Vec<Interface>,
    },
}

/// Reads records from a classic pcap or pcapng stream (format found from the first bytes).
#[derive(Debug)]
pub struct PcapReader<R> {
    input: R,
    format: Format,
    /// Bytes consumed so far (offset of the next record).
    offset: u64,
    /// Packet records returned so far.
    index: u64,
    last_timestamp: Duration,
    buf: Vec<u8>,
    /// Set after an error: later calls return `Ok(None)`.
    failed: bool,
}

impl PcapReader<BufReader<File>> {
    /// Opens a capture file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PcapError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| PcapError::Open {
            path: path.display().to_string(),
            source,
        })?;
        PcapReader::new(BufReader::with_capacity(1 << 16, file))
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut have = 0;
    while have < buf.len() {
        match input.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(have)
}

/// Link type from a pcap/pcapng link-type field: the low 16 bits (the upper bits of the
/// classic header's field carry FCS information).
fn dlt_of(field: u32) -> u32 {
    field & 0xffff
}

fn link_of(dlt: u32) -> Option<LinkType> {
    i32::try_from(dlt).ok().and_then(LinkType::from_dlt)
}

impl<R: Read> PcapReader<R> {
    /// Reads the file header (classic) or first section header (pcapng).
    pub fn new(mut input: R) -> Result<Self, PcapError> {
        let mut head = [0u8; 4];
        let n = read_full(&mut input, &mut head)
            .map_err(|source| PcapError::Io { offset: 0, source })?;
        let mut reader = PcapReader {
            input,
            format: Format::PcapNg {
                endian: Endian::Little,
                interfaces: Vec::new(),
            },
            offset: 0,
            index: 0,
            last_timestamp: Duration::ZERO,
            buf: Vec::new(),
            failed: false,
        };
        if n < 4 {
            return Err(PcapError::NotPcap {
                magic: head[..n].to_vec(),
            });
        }
        let le = u32::from_le_bytes(head);
        let be = u32::from_be_bytes(head);
        if le == PCAPNG_SHB {
            reader.read_section_header()?;
            return Ok(reader);
        }
        let (endian, units_per_sec) = match (le, be) {
            (PCAP_MAGIC_MICRO, _) => (Endian::Little, 1_000_000),
            (PCAP_MAGIC_NANO, _) => (Endian::Little, 1_000_000_000),
            (_, PCAP_MAGIC_MICRO) => (Endian::Big, 1_000_000),
            (_, PCAP_MAGIC_NANO) => (Endian::Big, 1_000_000_000),
            _ => {
                return Err(PcapError::NotPcap {
                    magic: head.to_vec(),
                })
            }
        };
        let mut rest = [0u8; 20];
        reader.fill(&mut rest, "file header", 4)?;
        let major = endian.u16(&rest[0..2]);
        if major != 2 {
            return Err(reader.corrupt(format!("unsupported pcap version {major}"), 0));
        }
        reader.format = Format::Pcap {
            endian,
            clock: Clock {
                units_per_sec,
                offset_secs: 0,
            },
            dlt: dlt_of(endian.u32(&rest[16..20])),
        };
        reader.offset = 24;
        Ok(reader)
    }

    /// The link type of a classic pcap file, or of the first interface of a pcapng file
    /// (`None` before one is described, or when it is not one we decode).
    pub fn link_type(&self) -> Option<LinkType> {
        match &self.format {
            Format::Pcap { dlt, .. } => link_of(*dlt),
            Format::PcapNg { interfaces, .. } => interfaces.first().and_then(|i| link_of(i.dlt)),
        }
    }

    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Packet records returned so far.
    pub fn records_read(&self) -> u64 {
        self.index
    }

    fn corrupt(&mut self, what: String, offset: u64) -> PcapError {
        self.failed = true;
        PcapError::Corrupt {
            what,
            index: self.index,
            offset,
        }
    }

    /// Fills `dst` from the input; `at` is the file offset of `dst[0]`.
    fn fill(&mut self, dst: &mut [u8], what: &'static str, at: u64) -> Result<(), PcapError> {
        let have = match read_full(&mut self.input, dst) {
            Ok(n) => n,
            Err(source) => {
                self.failed = true;
                return Err(PcapError::Io { offset: at, source });
            }
        };
        if have < dst.len() {
            self.failed = true;
            return Err(PcapError::Truncated {
                what,
                index: self.index,
                offset: self.offset,
                need: dst.len() as u64,
                have: have as u64,
            });
        }
        Ok(())
    }

    /// Reads `len` bytes into the internal buffer.
    fn fill_buf(&mut self, len: usize, what: &'static str, at: u64) -> Result<(), PcapError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len, 0);
        let r = self.fill(&mut buf, what, at);
        self.buf = buf;
        r
    }

    /// Reads the next record header: `Ok(None)` at a clean end of file.
    fn record_header<const N: usize>(&mut self) -> Result<Option<[u8; N]>, PcapError> {
        let mut hdr = [0u8; N];
        let have = match read_full(&mut self.input, &mut hdr) {
            Ok(n) => n,
            Err(source) => {
                self.failed = true;
                return Err(PcapError::Io {
                    offset: self.offset,
                    source,
                });
            }
        };
        if have == 0 {
            return Ok(None);
        }
        if have < N {
            self.failed = true;
            return Err(PcapError::Truncated {
                what: "record header",
                index: self.index,
                offset: self.offset,
                need: N as u64,
                have: have as u64,
            });
        }
        Ok(Some(hdr))
    }

    /// The next packet record, `Ok(None)` at the end of the file (and after an error).
    pub fn next_record(&mut self) -> Result<Option<PcapRecord<'_>>, PcapError> {
        if self.failed {
            return Ok(None);
        }
        match self.format {
            Format::Pcap { endian, clock, dlt } => self.next_pcap(endian, clock, dlt),
            Format::PcapNg { .. } => self.next_pcapng(),
        }
    }

    fn next_pcap(
        &mut self,
        endian: Endian,
        clock: Clock,
        dlt: u32,
    ) -> Result<Option<PcapRecord<'_>>, PcapError> {
        let start = self.offset;
        let Some(hdr) = self.record_header::<16>()? else {
            return Ok(None);
        };
        let secs = u64::from(endian.u32(&hdr[0..4]));
        let frac = u64::from(endian.u32(&hdr[4..8]));
        let caplen = endian.u32(&hdr[8..12]) as usize;
        let orig_len = endian.u32(&hdr[12..16]);
        if caplen > MAX_RECORD_LEN {
            return Err(self.corrupt(
                format!("captured length {caplen} exceeds the maximum {MAX_RECORD_LEN}"),
                start,
            ));
        }
        self.fill_buf(caplen, "packet data", start + 16)?;
        let timestamp = Duration::from_secs(secs) + clock.to_duration(frac);
        self.offset = start + 16 + caplen as u64;
        Ok(Some(self.emit(start, timestamp, dlt, 0..caplen, orig_len)))
    }

    fn emit(
        &mut self,
        offset: u64,
        timestamp: Duration,
        dlt: u32,
        range: std::ops::Range<usize>,
        orig_len: u32,
    ) -> PcapRecord<'_> {
        let index = self.index;
        self.index += 1;
        self.last_timestamp = timestamp;
        PcapRecord {
            index,
            offset,
            timestamp,
            dlt,
            link: link_of(dlt),
            data: &self.buf[range],
            orig_len,
        }
    }

    /// Reads a section header block whose type field (4 bytes) was already consumed at
    /// `self.offset`; sets the byte order and forgets earlier interfaces.
    fn read_section_header(&mut self) -> Result<(), PcapError> {
        let start = self.offset;
        let mut hdr = [0u8; 8];
        self.fill(&mut hdr, "section header", start + 4)?;
        let endian = match (
            u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
            u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
        ) {
            (PCAPNG_BYTE_ORDER_MAGIC, _) => Endian::Little,
            (_, PCAPNG_BYTE_ORDER_MAGIC) => Endian::Big,
            _ => return Err(self.corrupt("bad pcapng byte-order magic".into(), start)),
        };
        let total = endian.u32(&hdr[0..4]) as usize;
        // type, length, byte-order magic, version (4), section length (8), trailer.
        if total < 28 || !total.is_multiple_of(4) || total > MAX_BLOCK_LEN {
            return Err(self.corrupt(format!("bad section header length {total}"), start));
        }
        self.fill_buf(total - 12, "section header", start + 12)?;
        let major = endian.u16(&self.buf[0..2]);
        if major != 1 {
            return Err(self.corrupt(format!("unsupported pcapng version {major}"), start));
        }
        if endian.u32(&self.buf[total - 16..]) as usize != total {
            return Err(self.corrupt("section header trailer length mismatch".into(), start));
        }
        self.format = Format::PcapNg {
            endian,
            interfaces: Vec::new(),
        };
        self.offset = start + total as u64;
        Ok(())
    }

    fn next_pcapng(&mut self) -> Result<Option<PcapRecord<'_>>, PcapError> {
        // Bounded: every iteration consumes at least one 12-byte block of the file.
        loop {
            let Format::PcapNg { endian, .. } = self.format else {
                return Ok(None);
            };
            let start = self.offset;
            let Some(head) = self.record_header::<4>()? else {
                return Ok(None);
            };
            let block_type = endian.u32(&head);
            if u32::from_le_bytes(head) == PCAPNG_SHB {
                self.read_section_header()?;
                continue;
            }
            let mut len_bytes = [0u8; 4];
            self.fill(&mut len_bytes, "block header", start + 4)?;
            let total = endian.u32(&len_bytes) as usize;
            if total < 12 || !total.is_multiple_of(4) || total > MAX_BLOCK_LEN {
                return Err(self.corrupt(format!("bad block length {total}"), start));
            }
            // Body and trailing length.
            self.fill_buf(total - 8, "block", start + 8)?;
            let body_len = total - 12;
            if endian.u32(&self.buf[body_len..]) as usize != total {
                return Err(self.corrupt("block trailer length mismatch".into(), start));
            }
            self.offset = start + total as u64;
            match block_type {
                PCAPNG_IDB => self.add_interface(endian, body_len, start)?,
                PCAPNG_EPB | PCAPNG_OPB => {
                    return self
                        .packet_block(endian, block_type, body_len, start)
                        .map(Some)
                }
                PCAPNG_SPB => return self.simple_packet_block(endian, body_len, start).map(Some),
                _ => {} // statistics, name resolution, custom...: not needed.
            }
        }
    }

    fn interfaces(&self) -> &[Interface] {
        match &self.format {
            Format::PcapNg { interfaces, .. } => interfaces,
            Format::Pcap { .. } => &[],
        }
    }

    fn add_interface(
        &mut self,
        endian: Endian,
        body_len: usize,
        start: u64,
    ) -> Result<(), PcapError> {
        if body_len < 8 {
            return Err(self.corrupt("interface description block too short".into(), start));
        }
        let body = &self.buf[..body_len];
        let dlt = u32::from(endian.u16(&body[0..2]));
        let snaplen = endian.u32(&body[4..8]);
        let mut clock = Clock::MICRO;
        let mut bad_option = None;
        for_each_option(endian, &body[8..], |code, value| {
            match (code, value.len()) {
                // if_tsresol: 10^-v (high bit clear) or 2^-v seconds per unit.
                (9, 1) => {
                    let v = value[0];
                    let units = if v & 0x80 == 0 {
                        10u64.checked_pow(u32::from(v))
                    } else {
                        1u64.checked_shl(u32::from(v & 0x7f))
                    };
                    match units {
                        Some(u) if u > 0 => clock.units_per_sec = u,
                        _ => bad_option = Some(format!("unsupported if_tsresol {v:#04x}")),
                    }
                }
                // if_tsoffset: seconds added to every timestamp.
                (14, 8) => clock.offset_secs = endian.u64(value) as i64,
                _ => {}
            }
        });
        if let Some(what) = bad_option {
            return Err(self.corrupt(what, start));
        }
        let interface = Interface {
            dlt,
            snaplen,
            clock,
        };
        let full = self.interfaces().len() >= MAX_INTERFACES;
        if full {
            return Err(self.corrupt(format!("more than {MAX_INTERFACES} interfaces"), start));
        }
        if let Format::PcapNg { interfaces, .. } = &mut self.format {
            interfaces.push(interface);
        }
        Ok(())
    }

    fn interface(&mut self, id: usize, start: u64) -> Result<Interface, PcapError> {
        match self.interfaces().get(id) {
            Some(i) => Ok(*i),
            None => Err(self.corrupt(format!("packet of undeclared interface {id}"), start)),
        }
    }

    /// Enhanced (6) or obsolete (2) packet block.
    fn packet_block(
        &mut self,
        endian: Endian,
        block_type: u32,
        body_len: usize,
        start: u64,
    ) -> Result<PcapRecord<'_>, PcapError> {
        if body_len < 20 {
            return Err(self.corrupt("packet block too short".into(), start));
        }
        let b = &self.buf[..20];
        let id = if block_type == PCAPNG_EPB {
            endian.u32(&b[0..4]) as usize
        } else {
            usize::from(endian.u16(&b[0..2]))
        };
        let units = (u64::from(endian.u32(&b[4..8])) << 32) | u64::from(endian.u32(&b[8..12]));
        let caplen = endian.u32(&b[12..16]) as usize;
        let orig_len = endian.u32(&b[16..20]);
        if caplen > body_len - 20 {
            return Err(self.corrupt(
                format!(
                    "captured length {caplen} exceeds the block's {} data bytes",
                    body_len - 20
                ),
                start,
            ));
        }
        let interface = self.interface(id, start)?;
        let timestamp = interface.clock.to_duration(units);
        Ok(self.emit(start, timestamp, interface.dlt, 20..20 + caplen, orig_len))
    }

    fn simple_packet_block(
        &mut self,
        endian: Endian,
        body_len: usize,
        start: u64,
    ) -> Result<PcapRecord<'_>, PcapError> {
        if body_len < 4 {
            return Err(self.corrupt("simple packet block too short".into(), start));
        }
        let orig_len = endian.u32(&self.buf[0..4]);
        let interface = self.interface(0, start)?;
        // The captured length is implied: the original length cut by the snaplen and the block.
        let mut caplen = (orig_len as usize).min(body_len - 4);
        if interface.snaplen != 0 {
            caplen = caplen.min(interface.snaplen as usize);
        }
        let timestamp = self.last_timestamp;
        Ok(self.emit(start, timestamp, interface.dlt, 4..4 + caplen, orig_len))
    }
}

/// Calls `f(code, value)` for each pcapng option in `area` until opt_endofopt or a malformed
/// option (which ends the walk: options are advisory).
fn for_each_option(endian: Endian, mut area: &[u8], mut f: impl FnMut(u16, &[u8])) {
    while area.len() >= 4 {
        let code = endian.u16(&area[0..2]);
        let len = usize::from(endian.u16(&area[2..4]));
        if code == 0 {
            break;
        }
        let padded = len.div_ceil(4) * 4;
        let Some(value) = area.get(4..4 + len) else {
            break;
        };
        f(code, value);
        area = area.get(4 + padded..).unwrap_or(&[]);
    }
}

/// Writes a classic pcap file: little-endian, microsecond timestamps, snaplen 262144.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    nanos: bool,
    big_endian: bool,
}

impl PcapWriter<BufWriter<File>> {
    /// Creates (truncates) `path` and writes the file header.
    pub fn create(path: impl AsRef<Path>, link: LinkType) -> io::Result<Self> {
        PcapWriter::new(BufWriter::new(File::create(path)?), link)
    }
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header for `link` (microsecond timestamps, little-endian).
    pub fn new(out: W, link: LinkType) -> io::Result<Self> {
        PcapWriter::with_options(out, link.to_dlt() as u32, false, false)
    }

    /// Any link-type number, byte order and timestamp precision (tests of the reader).
    pub fn with_options(out: W, dlt: u32, big_endian: bool, nanos: bool) -> io::Result<Self> {
        let mut w = PcapWriter {
            out,
            nanos,
            big_endian,
        };
        let magic = if nanos {
            PCAP_MAGIC_NANO
        } else {
            PCAP_MAGIC_MICRO
        };
        w.put32(magic)?;
        w.put16(2)?;
        w.put16(4)?;
        w.put32(0)?; // thiszone
        w.put32(0)?; // sigfigs
        w.put32(MAX_RECORD_LEN as u32)?;
        w.put32(dlt)?;
        Ok(w)
    }

    fn put16(&mut self, v: u16) -> io::Result<()> {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.out.write_all(&b)
    }

    fn put32(&mut self, v: u32) -> io::Result<()> {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.out.write_all(&b)
    }

    /// Appends a complete record.
    pub fn write(&mut self, ts: Duration, bytes: &[u8]) -> io::Result<()> {
        self.write_record(ts, bytes, bytes.len() as u32)
    }

    /// Appends a record that claims an original length of `orig_len` (a snaplen-cut record
    /// when `orig_len > bytes.len()`).
    pub fn write_record(&mut self, ts: Duration, bytes: &[u8], orig_len: u32) -> io::Result<()> {
        let secs = u32::try_from(ts.as_secs()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "timestamp beyond the pcap range",
            )
        })?;
        let frac = if self.nanos {
            ts.subsec_nanos()
        } else {
            ts.subsec_micros()
        };
        if bytes.len() > MAX_RECORD_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record longer than the snaplen",
            ));
        }
        self.put32(secs)?;
        self.put32(frac)?;
        self.put32(bytes.len() as u32)?;
        self.put32(orig_len)?;
        self.out.write_all(bytes)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and returns the output.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}
