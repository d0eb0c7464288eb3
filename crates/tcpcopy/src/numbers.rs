//! The numbers of the command line. The original read every number with `atoi` (garbage = 0,
//! no range check) and kept several in narrow bit-fields or clamped them (spec 2.1, 2.2), so a
//! typo silently became another setting. Here a number out of range is an error, and the error
//! says what the original would have done with it, so an operator moving from the original
//! knows what changed. Each `parse_*` function is the clap value parser of one option.

use std::ops::RangeInclusive;

/// What C's `atoi` makes of `text`: leading blanks, an optional sign, then digits up to the
/// first non-digit; no digits = 0. Saturates where C would overflow.
pub fn atoi(text: &str) -> i64 {
    let t = text.trim_start();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let mut v: i64 = 0;
    for b in digits.bytes().take_while(u8::is_ascii_digit) {
        v = v.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    if neg {
        -v
    } else {
        v
    }
}

/// `v` kept in an unsigned field of `bits` bits, as the original's bit-fields do.
fn narrow(v: i64, bits: u32) -> i64 {
    v.rem_euclid(1 << bits)
}

/// "300 cut to 8 bits = 44", or just "300" when the field holds it.
fn read_as(v: i64, bits: u32) -> String {
    let b = narrow(v, bits);
    if b == v {
        format!("{v}")
    } else {
        format!("{v} cut to {bits} bits = {b}")
    }
}

/// `text` as a number in `range`; otherwise an error naming the range and, through
/// `original`, what the original did with the value (as its `atoi` read it).
fn check(
    text: &str,
    range: RangeInclusive<i64>,
    original: fn(i64) -> String,
) -> Result<i64, String> {
    let (lo, hi) = (*range.start(), *range.end());
    match text.trim().parse::<i64>() {
        Ok(v) if range.contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not in {lo}..={hi} ({})", original(v))),
        Err(_) => {
            let v = atoi(text);
            Err(format!(
                "\"{text}\" is not a number, expected {lo}..={hi} (atoi made it {v}: {})",
                original(v)
            ))
        }
    }
}

/// Converts a checked value to the option's type (the range makes it fit).
fn to<T: TryFrom<i64>>(v: i64) -> T {
    T::try_from(v).unwrap_or_else(|_| unreachable!("value checked against its range"))
}

/// `-p`: intercept port.
pub fn parse_port(s: &str) -> Result<u16, String> {
    check(s, 1..=65535, |v| {
        format!(
            "the original read {} and would have connected to port {}",
            read_as(v, 16),
            narrow(v, 16)
        )
    })
    .map(to)
}

/// `-C`: connections per intercept.
pub fn parse_conns(s: &str) -> Result<u16, String> {
    check(s, 1..=11, |v| {
        let b = narrow(v, 8);
        let used = b.clamp(1, 11);
        format!(
            "the original read {} and opened {used} connection{} per intercept",
            read_as(v, 8),
            if used == 1 { "" } else { "s" }
        )
    })
    .map(to)
}

/// `-n`: copies of every session.
pub fn parse_replicas(s: &str) -> Result<u16, String> {
    check(s, 1..=1023, |v| {
        let b = narrow(v, 10);
        let what = if b <= 1 {
            "replayed every session once (no copies)".to_string()
        } else {
            format!("replayed every session {b} times")
        };
        format!("the original read {} and {what}", read_as(v, 10))
    })
    .map(to)
}

/// `-f`: port-shift factor. The original's 8-bit field is accepted whole; above 31 the shift
/// wraps (spec 2.6) and the caller warns.
pub fn parse_port_shift(s: &str) -> Result<u16, String> {
    check(s, 0..=255, |v| {
        let b = narrow(v, 8);
        let what = if b == 0 {
            "no shift".to_string()
        } else {
            format!("shift factor {b}")
        };
        format!("the original read {}: {what}", read_as(v, 8))
    })
    .map(to)
}

/// `-r`: percentage of sessions replayed; 100 = all, as 0.
pub fn parse_percent(s: &str) -> Result<u8, String> {
    check(s, 0..=100, |v| {
        let b = narrow(v, 7);
        let what = if b == 0 || b > 99 {
            "replayed every session".to_string()
        } else {
            format!("replayed {b}% of the sessions")
        };
        format!("the original read {} and {what}", read_as(v, 7))
    })
    .map(to)
}

/// `-m`: memory limit in MB.
pub fn parse_memory_mb(s: &str) -> Result<u64, String> {
    check(s, 1..=1_048_576, |v| {
        // Stored as KB in 32 bits.
        let kb = v.saturating_mul(1024).rem_euclid(1 << 32);
        if kb == 0 {
            "the original's limit would have been 0: it stopped at its first memory check, after 60 s"
                .to_string()
        } else {
            format!(
                "the original kept the limit in KB in 32 bits: {} MB",
                kb / 1024
            )
        }
    })
    .map(to)
}

/// `-M`: MTU.
pub fn parse_mtu(s: &str) -> Result<u16, String> {
    check(s, 128..=65535, |v| {
        let b = narrow(v, 16);
        if b < 128 {
            format!(
                "the original read {} and split every captured packet longer than {b} bytes, leaving no room for payload after the headers",
                read_as(v, 16)
            )
        } else {
            format!("the original read {} (MTU {b})", read_as(v, 16))
        }
    })
    .map(to)
}

/// `-D`: MSS of faked SYNs.
pub fn parse_mss(s: &str) -> Result<u16, String> {
    check(s, 1..=65535, |v| {
        format!(
            "the original read {} and put MSS {} in faked SYNs",
            read_as(v, 16),
            narrow(v, 16)
        )
    })
    .map(to)
}

/// `-R`: fixed RTT in ms, 0 = measure.
pub fn parse_rtt(s: &str) -> Result<u16, String> {
    check(s, 0..=65535, |v| {
        format!(
            "the original read {} and, by a bug, never applied -R (its timers then ran at 1 ms)",
            read_as(v, 16)
        )
    })
    .map(to)
}

/// `-U`: session pool size in KB, accepted and ignored.
pub fn parse_pool_kb(s: &str) -> Result<u16, String> {
    check(s, 1..=63, |v| {
        // KB * 1024 kept in 16 bits; 0 = its default of 1 KB.
        let bytes = v.saturating_mul(1024).rem_euclid(1 << 16);
        let what = if bytes == 0 {
            "its default pool of 1 KB".to_string()
        } else {
            format!("a pool of {bytes} bytes")
        };
        format!("the original kept {v} KB in 16 bits as bytes: {what}; tcpcopy-rs ignores -U")
    })
    .map(to)
}

/// `-t`: session timeout in seconds.
pub fn parse_session_timeout(s: &str) -> Result<u32, String> {
    check(s, 0..=31_536_000, |v| {
        if v < 0 {
            "the original used its default of 600 s for a negative -t".to_string()
        } else {
            format!("the original waited {v} s")
        }
    })
    .map(to)
}

/// `-k`: keepalive timeout in seconds.
pub fn parse_keepalive_timeout(s: &str) -> Result<u32, String> {
    check(s, 1..=31_536_000, |v| {
        if v <= 0 {
            format!("the original used its default (-t + 120 s) for {v}: leave -k out for that")
        } else {
            format!("the original waited {v} s")
        }
    })
    .map(to)
}

/// `-B`: pcap buffer in MB.
pub fn parse_pcap_buffer_mb(s: &str) -> Result<u32, String> {
    check(s, 1..=2047, |v| {
        // MB * 1048576 in a C int.
        let bytes = v.saturating_mul(1 << 20) as i32;
        format!("the original passed {bytes} bytes to pcap_set_buffer_size")
    })
    .map(to)
}

/// `-S`: pcap snaplen.
pub fn parse_snaplen(s: &str) -> Result<u32, String> {
    check(s, 64..=65535, |v| {
        if v > 65535 {
            "the original capped it at 65535".to_string()
        } else if v <= 0 {
            format!("the original passed {v} to libpcap, which takes its default snaplen")
        } else {
            format!(
                "the original kept only the first {v} bytes of each frame, too few for the IPv4 and TCP headers"
            )
        }
    })
    .map(to)
}

/// `-a`: offline acceleration.
pub fn parse_accel(s: &str) -> Result<u32, String> {
    check(s, 1..=100_000, at_least_one).map(to)
}

/// `-T`: offline passes.
pub fn parse_passes(s: &str) -> Result<u32, String> {
    check(s, 1..=1_000_000, at_least_one).map(to)
}

fn at_least_one(v: i64) -> String {
    if v < 1 {
        format!("the original used 1 for {v}")
    } else {
        format!("the original took {v}")
    }
}

/// `-I`: offline gap limit in ms; 0 = off, as the original's default.
pub fn parse_interval_ms(s: &str) -> Result<u32, String> {
    check(s, 0..=86_400_000, |v| {
        if v < 0 {
            "the original cut every gap between packets (as fast as it could)".to_string()
        } else {
            format!("the original cut gaps longer than {v} ms")
        }
    })
    .map(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoi_as_in_c() {
        for (text, v) in [
            ("12", 12),
            ("  -7x", -7),
            ("+3", 3),
            ("abc", 0),
            ("", 0),
            ("4k", 4),
            ("99999999999999999999999", i64::MAX),
        ] {
            assert_eq!(atoi(text), v, "{text:?}");
        }
    }

    #[test]
    fn in_range_values_pass() {
        assert_eq!(parse_port_shift("0"), Ok(0));
        assert_eq!(parse_port_shift("255"), Ok(255));
        assert_eq!(parse_percent("100"), Ok(100));
        assert_eq!(parse_interval_ms("0"), Ok(0));
        assert_eq!(parse_conns(" 11 "), Ok(11));
    }

    /// Each refusal says what the original would have done (spec 2.2).
    #[test]
    fn refusals_name_the_original_behaviour() {
        type Parse = fn(&str) -> Result<i64, String>;
        let cases: &[(Parse, &str, &str)] = &[
            (
                |s| parse_port_shift(s).map(i64::from),
                "256",
                "256 cut to 8 bits = 0: no shift",
            ),
            (
                |s| parse_port_shift(s).map(i64::from),
                "300",
                "shift factor 44",
            ),
            (
                |s| parse_percent(s).map(i64::from),
                "150",
                "150 cut to 7 bits = 22 and replayed 22%",
            ),
            (
                |s| parse_percent(s).map(i64::from),
                "120",
                "replayed every session",
            ),
            (
                |s| parse_conns(s).map(i64::from),
                "0",
                "opened 1 connection per",
            ),
            (
                |s| parse_conns(s).map(i64::from),
                "12",
                "opened 11 connections",
            ),
            (
                |s| parse_conns(s).map(i64::from),
                "-1",
                "= 255 and opened 11",
            ),
            (
                |s| parse_conns(s).map(i64::from),
                "256",
                "= 0 and opened 1 connection",
            ),
            (|s| parse_replicas(s).map(i64::from), "1024", "no copies"),
            (|s| parse_replicas(s).map(i64::from), "1027", "3 times"),
            (
                |s| parse_session_timeout(s).map(i64::from),
                "-1",
                "default of 600 s",
            ),
            (
                |s| parse_keepalive_timeout(s).map(i64::from),
                "0",
                "-t + 120 s",
            ),
            (
                |s| parse_pool_kb(s).map(i64::from),
                "64",
                "default pool of 1 KB",
            ),
            (
                |s| parse_snaplen(s).map(i64::from),
                "70000",
                "capped it at 65535",
            ),
            (|s| parse_snaplen(s).map(i64::from), "40", "first 40 bytes"),
            (|s| parse_accel(s).map(i64::from), "0", "used 1 for 0"),
            (|s| parse_port(s).map(i64::from), "abc", "atoi made it 0"),
            (
                |s| parse_mtu(s).map(i64::from),
                "65536",
                "= 0 and split every",
            ),
            (
                |s| parse_memory_mb(s).map(|v| v as i64),
                "0",
                "first memory check",
            ),
            (|s| parse_rtt(s).map(i64::from), "65536", "never applied -R"),
        ];
        for (parse, text, needle) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e:?} lacks {needle:?}");
        }
    }
}
