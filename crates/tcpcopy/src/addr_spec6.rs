//! The IPv6 forms of the address grammars (UDP replay, and TCP replay with intercept --ipv6):
//!
//! - `-x`: `SRC-DST[,SRC-DST...]`, SRC `[ADDR]:PORT` or `PORT` (any local address), DST
//!   `[ADDR]:PORT`, each side with `@MAC` for `--send pcap`: literal IPv6 addresses in
//!   brackets, no host names;
//! - `-c`: `PREFIX/LEN`, fake clients PREFIX+1, PREFIX+2, ... (at most 4096).
//!
//! A `-x` is IPv6 when it contains a `[`; IPv4 and IPv6 transfers cannot be mixed in one
//! run, and the `-c` family must match the transfers'.

use std::net::Ipv6Addr;

use tc_core::udp_replay::{ClientPrefix6, Transfer6};

use crate::addr_spec::{SpecError, MAX_TRANSFERS};

fn err<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// Whether `-x` is written with IPv6 addresses.
pub fn is_ipv6_transfers(text: &str) -> bool {
    text.contains('[')
}

fn parse_port(text: &str, what: &str) -> Result<u16, SpecError> {
    match text.trim().parse::<u16>() {
        Ok(0) => err(format!("{what}: port 0 is not valid")),
        Ok(p) => Ok(p),
        Err(_) => err(format!("{what}: \"{text}\" is not a valid port (1..65535)")),
    }
}

/// `[ADDR]:PORT` (address required) or `PORT` (address optional); `None` when the side is
/// not written in the IPv6 form at all (an IPv4 address or a host name).
/// One side: address (if written), port, MAC (if written).
type Side6 = (Option<Ipv6Addr>, u16, Option<[u8; 6]>);

fn parse_side(text: &str, what: &str, needs_addr: bool) -> Result<Option<Side6>, SpecError> {
    let (text, mac) = match text.trim().split_once('@') {
        Some((t, m)) => (t, Some(crate::addr_spec::parse_mac(m, what)?)),
        None => (text.trim(), None),
    };
    Ok(parse_addr_port(text, what, needs_addr)?.map(|(ip, port)| (ip, port, mac)))
}

fn parse_addr_port(
    text: &str,
    what: &str,
    needs_addr: bool,
) -> Result<Option<(Option<Ipv6Addr>, u16)>, SpecError> {
    if let Some(rest) = text.strip_prefix('[') {
        let Some((addr, port)) = rest.split_once(']') else {
            return err(format!("{what}: \"{text}\" lacks the closing ]"));
        };
        let Ok(ip) = addr.parse::<Ipv6Addr>() else {
            return err(format!("{what}: \"{addr}\" is not a valid IPv6 address"));
        };
        let Some(port) = port.strip_prefix(':') else {
            return err(format!(
                "{what}: \"{text}\" needs a port after the address ([ADDR]:PORT)"
            ));
        };
        return Ok(Some((Some(ip), parse_port(port, what)?)));
    }
    if !needs_addr && !text.contains(':') && !text.contains('.') {
        return Ok(Some((None, parse_port(text, what)?)));
    }
    Ok(None)
}

fn mixed(item: &str) -> SpecError {
    SpecError(format!(
        "-x \"{item}\": IPv4 and IPv6 cannot be mixed in -x (one run replays one address family; write IPv6 as [ADDR]:PORT)"
    ))
}

/// `-x` in its IPv6 form.
pub fn parse_transfers6(text: &str) -> Result<Vec<Transfer6>, SpecError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return err(format!("-x: empty transfer in \"{text}\""));
        }
        let Some((src, dst)) = item.split_once('-') else {
            return err(format!(
                "-x: target \"{item}\" is invalid (expected SRC-DST, e.g. 53-[2001:db8::30]:53)"
            ));
        };
        let what = format!("-x \"{item}\"");
        let (src_ip, src_port, src_mac) =
            parse_side(src, &format!("{what} source"), false)?.ok_or_else(|| mixed(item))?;
        let (dst_ip, dst_port, dst_mac) =
            parse_side(dst, &format!("{what} target"), true)?.ok_or_else(|| mixed(item))?;
        let Some(dst_ip) = dst_ip else {
            return Err(mixed(item));
        };
        if dst_ip.is_unspecified() || dst_ip.is_multicast() {
            return err(format!(
                "{what}: {dst_ip} cannot be a target (unspecified or multicast)"
            ));
        }
        if src_ip == Some(dst_ip) && src_port == dst_port {
            return err(format!(
                "{what}: the target is the online endpoint itself; tcpcopy would replay its own output"
            ));
        }
        if out.len() == MAX_TRANSFERS {
            return err(format!("-x: at most {MAX_TRANSFERS} transfers"));
        }
        out.push(Transfer6 {
            src_ip,
            src_port,
            dst_ip,
            dst_port,
            src_mac,
            dst_mac,
        });
    }
    Ok(out)
}

/// `-c PREFIX/LEN` for IPv6 transfers; the targets must not be among the fake clients.
pub fn parse_client_prefix6(
    text: &str,
    transfers: &[Transfer6],
) -> Result<ClientPrefix6, SpecError> {
    let text = text.trim();
    let Some((addr, len)) = text.split_once('/') else {
        return err(format!(
            "-c \"{text}\": with IPv6 transfers -c takes a prefix PREFIX/LEN, e.g. 2001:db8:ffff::/64"
        ));
    };
    let Ok(prefix) = addr.parse::<Ipv6Addr>() else {
        return err(format!(
            "-c \"{text}\": \"{addr}\" is not a valid IPv6 address (IPv6 transfers need an IPv6 -c)"
        ));
    };
    let len = match len.parse::<u8>() {
        Ok(l) if (1..=126).contains(&l) => l,
        _ => {
            return err(format!(
            "-c \"{text}\": prefix length \"{len}\" is not in 1..126 (at least two fake clients)"
        ))
        }
    };
    let p = ClientPrefix6 { prefix, len };
    let last = p.client(p.count() - 1);
    for t in transfers {
        if (p.client(0)..=last).contains(&t.dst_ip) {
            return err(format!(
                "-c \"{text}\": the target {} is among the fake clients {}..{}; choose a prefix apart from the targets",
                t.dst_ip,
                p.client(0),
                last
            ));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_in_the_ipv6_form() {
        let t = parse_transfers6("53-[2001:db8::30]:5353, [2001:db8::20]:514-[2001:db8::31]:514")
            .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].src_ip, None);
        assert_eq!((t[0].src_port, t[0].dst_port), (53, 5353));
        assert_eq!(t[1].src_ip, Some("2001:db8::20".parse().unwrap()));
        assert!(is_ipv6_transfers("53-[2001:db8::30]:53"));
        let m =
            parse_transfers6("53@02:00:00:00:00:01-[2001:db8::30]:53@02:00:00:00:00:02").unwrap();
        assert_eq!(m[0].src_mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(m[0].dst_mac, Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(m[0].dst_ip, "2001:db8::30".parse::<Ipv6Addr>().unwrap());
        assert!(!is_ipv6_transfers("53-198.18.0.30:53"));
    }

    #[test]
    fn mixed_families_and_bad_forms_are_refused() {
        for (text, says) in [
            ("53-[2001:db8::30]:53,53-198.18.0.30:53", "cannot be mixed"),
            ("198.18.0.20:53-[2001:db8::30]:53", "cannot be mixed"),
            ("[2001:db8::20]:53-198.18.0.30:53", "cannot be mixed"),
            ("53-[2001:db8::30]", "needs a port"),
            ("53-[2001:db8::zz]:53", "not a valid IPv6 address"),
            ("53-[2001:db8::30:53", "closing ]"),
            ("53-[ff02::1]:53", "cannot be a target"),
            (
                "[2001:db8::30]:53-[2001:db8::30]:53",
                "online endpoint itself",
            ),
            ("53@aa:bb:cc:dd:ee-[2001:db8::30]:53", "MAC"),
            ("53-[2001:db8::30]:0", "port 0"),
        ] {
            let e = parse_transfers6(text).unwrap_err().0;
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn client_prefix() {
        let t = parse_transfers6("53-[2001:db8::30]:53").unwrap();
        let p = parse_client_prefix6("2001:db8:ffff::/64", &t).unwrap();
        assert_eq!(p.client(0), "2001:db8:ffff::1".parse::<Ipv6Addr>().unwrap());
        for (text, says) in [
            ("203.0.113.x", "prefix PREFIX/LEN"),
            ("2001:db8:ffff::", "prefix PREFIX/LEN"),
            ("203.0.113.0/24", "not a valid IPv6 address"),
            ("2001:db8::/127", "not in 1..126"),
            ("2001:db8::/64", "is among the fake clients"),
        ] {
            let e = parse_client_prefix6(text, &t).unwrap_err().0;
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
