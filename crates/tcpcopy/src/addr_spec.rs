//! The address grammars of the command line, parsed and validated without any look-up:
//!
//! - `-x` transfers (spec 2.3): `SRC-DST[,SRC-DST...]`, each side `[HOST:]PORT[@MAC]`;
//! - `-s` intercepts: `HOST[:PORT][,HOST[:PORT]...]`;
//! - `-c` client addresses (spec 2.4): `a.b.c.d` or `a.b.c.x` (= a.b.c.1-254), comma separated.
//!
//! A HOST is an IPv4 address or a host name ([`Host`]). Names are resolved in a separate step,
//! after everything was parsed ([`resolve_transfers`], [`resolve_intercepts`]); address checks
//! run on literal addresses while parsing and again on the resolved ones.
//! Invalid parts are errors (the original truncated or zeroed them silently).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tc_core::session::Transfer;

pub const MAX_INTERCEPTS: usize = 32;
pub const MAX_TRANSFERS: usize = 32;
pub const MAX_CLIENT_IPS: usize = 4096;

/// Why an address argument is invalid; the text names the option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

fn err<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// An IPv4 address, or a host name still to be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(Ipv4Addr),
    /// An IPv6 literal (`-s [2001:db8::40]:36524` only: the control channel over IPv6).
    Ip6(std::net::Ipv6Addr),
    Name(String),
}

impl Host {
    /// An IPv4 address, or text that can be a host name (letters, digits, `-` and `.`, not
    /// all digits and dots). `what` names the option in errors.
    pub fn parse(text: &str, what: &str) -> Result<Host, SpecError> {
        let text = text.trim();
        if let Ok(ip) = text.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(ip));
        }
        let plausible = !text.is_empty()
            && text.len() <= 253
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if !plausible {
            return err(format!(
                "{what}: \"{text}\" is not a valid IPv4 address or host name (the original's inet_addr made it 255.255.255.255)"
            ));
        }
        Ok(Host::Name(text.to_string()))
    }

    /// The literal address, if it is one.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Ip6(_) | Host::Name(_) => None,
        }
    }

    /// The address; a name is looked up (its first IPv4 address).
    pub fn resolve(&self, what: &str) -> Result<Ipv4Addr, SpecError> {
        let name = match self {
            Host::Ip(ip) => return Ok(*ip),
            Host::Ip6(ip) => return err(format!("{what}: {ip} is an IPv6 address")),
            Host::Name(name) => name,
        };
        use std::net::ToSocketAddrs;
        let found = (name.as_str(), 0u16).to_socket_addrs().map(|addrs| {
            addrs
                .filter_map(|a| match a {
                    std::net::SocketAddr::V4(v4) => Some(*v4.ip()),
                    std::net::SocketAddr::V6(_) => None,
                })
                .next()
        });
        match found {
            Ok(Some(ip)) => Ok(ip),
            Ok(None) => err(format!("{what}: host \"{name}\" has no IPv4 address")),
            Err(e) => err(format!("{what}: cannot resolve host \"{name}\": {e}")),
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Ip6(ip) => write!(f, "[{ip}]"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A dotted-quad IPv4 address (no abbreviations, no leading/trailing junk).
pub fn parse_ip(text: &str, what: &str) -> Result<Ipv4Addr, SpecError> {
    text.trim()
        .parse::<Ipv4Addr>()
        .or_else(|_| {
            err(format!(
                "{what}: \"{text}\" is not a valid IPv4 address (the original's inet_addr made it 255.255.255.255)"
            ))
        })
}

fn parse_port(text: &str, what: &str) -> Result<u16, SpecError> {
    match text.trim().parse::<u16>() {
        Ok(0) => err(format!("{what}: port 0 is not valid")),
        Ok(p) => Ok(p),
        Err(_) => err(format!("{what}: \"{text}\" is not a valid port (1..65535)")),
    }
}

/// `aa:bb:cc:dd:ee:ff`: six pairs of hex digits separated by `:`.
pub fn parse_mac(text: &str, what: &str) -> Result<[u8; 6], SpecError> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = || {
        SpecError(format!(
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

/// One `-x` item: `SRC-DST`, hosts not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSpec {
    /// The item as written, for error messages.
    pub text: String,
    /// Online address to match; `None` = any local address.
    pub src: Option<Host>,
    pub src_port: u16,
    pub src_mac: Option<[u8; 6]>,
    pub dst: Host,
    pub dst_port: u16,
    pub dst_mac: Option<[u8; 6]>,
}

/// One side of a transfer: `[HOST:]PORT[@MAC]`.
type Endpoint = (Option<Host>, u16, Option<[u8; 6]>);

fn parse_endpoint(text: &str, what: &str) -> Result<Endpoint, SpecError> {
    let (addr, mac) = match text.split_once('@') {
        Some((a, m)) => (a, Some(parse_mac(m, what)?)),
        None => (text, None),
    };
    let (host, port) = match addr.split_once(':') {
        Some((host, port)) => (Some(Host::parse(host, what)?), parse_port(port, what)?),
        None => (None, parse_port(addr, what)?),
    };
    Ok((host, port, mac))
}

/// `-x`: every item parsed; literal addresses checked.
pub fn parse_transfers(text: &str) -> Result<Vec<TransferSpec>, SpecError> {
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
        let (src, src_port, src_mac) = parse_endpoint(src, &format!("{what} source"))?;
        let (dst, dst_port, dst_mac) = parse_endpoint(dst, &format!("{what} target"))?;
        let Some(dst) = dst else {
            return err(format!(
                "{what}: the target needs an IP address (e.g. 198.18.0.30:{dst_port}); the original would have sent to 0.0.0.0"
            ));
        };
        if transfers.len() == MAX_TRANSFERS {
            return err(format!("-x: at most {MAX_TRANSFERS} transfers"));
        }
        let spec = TransferSpec {
            text: item.to_string(),
            src,
            src_port,
            src_mac,
            dst,
            dst_port,
            dst_mac,
        };
        if let Some(dst_ip) = spec.dst.ip() {
            check_transfer(&spec, spec.src.as_ref().and_then(Host::ip), dst_ip)?;
        }
        transfers.push(spec);
    }
    Ok(transfers)
}

/// The address checks of a transfer (on literal or resolved addresses).
fn check_transfer(
    spec: &TransferSpec,
    src_ip: Option<Ipv4Addr>,
    dst_ip: Ipv4Addr,
) -> Result<(), SpecError> {
    let what = format!("-x \"{}\"", spec.text);
    if dst_ip.is_unspecified() || dst_ip.is_broadcast() || dst_ip.is_multicast() {
        return err(format!(
            "{what}: {dst_ip} cannot be a target (unspecified, broadcast or multicast)"
        ));
    }
    if src_ip == Some(dst_ip) && spec.src_port == spec.dst_port {
        return err(format!(
            "{what}: the target is the online endpoint itself; tcpcopy would replay its own output"
        ));
    }
    Ok(())
}

/// The transfers with their host names resolved, checked again.
pub fn resolve_transfers(specs: &[TransferSpec]) -> Result<Vec<Transfer>, SpecError> {
    specs
        .iter()
        .map(|spec| {
            let what = format!("-x \"{}\"", spec.text);
            let src_ip = match &spec.src {
                Some(host) => Some(host.resolve(&format!("{what} source"))?),
                None => None,
            };
            let dst_ip = spec.dst.resolve(&format!("{what} target"))?;
            check_transfer(spec, src_ip, dst_ip)?;
            Ok(Transfer {
                src_ip: src_ip.map(Into::into),
                src_port: spec.src_port,
                dst_ip: dst_ip.into(),
                dst_port: spec.dst_port,
                src_mac: spec.src_mac,
                dst_mac: spec.dst_mac,
            })
        })
        .collect()
}

/// One `-s` item, host not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptSpec {
    pub host: Host,
    pub port: u16,
}

fn check_intercept(ip: Ipv4Addr) -> Result<(), SpecError> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return err(format!("-s: {ip} cannot be an intercept address"));
    }
    Ok(())
}

/// `-s`: `HOST[:PORT]` items, port 0 or missing = `default_port`.
pub fn parse_intercepts(text: &str, default_port: u16) -> Result<Vec<InterceptSpec>, SpecError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return err(format!("-s: empty address in \"{text}\""));
        }
        if let Some(spec) = parse_intercept6(item, default_port)? {
            if out.len() == MAX_INTERCEPTS {
                return err(format!("-s: at most {MAX_INTERCEPTS} intercepts"));
            }
            out.push(spec);
            continue;
        }
        let (host, port) = match item.split_once(':') {
            Some((host, port)) => {
                let port = match port.trim().parse::<u16>() {
                    Ok(0) => default_port,
                    Ok(p) => p,
                    Err(_) => {
                        return err(format!(
                            "-s: \"{port}\" in \"{item}\" is not a valid port (1..65535)"
                        ))
                    }
                };
                (Host::parse(host, "-s")?, port)
            }
            None => (Host::parse(item, "-s")?, default_port),
        };
        if let Some(ip) = host.ip() {
            check_intercept(ip)?;
        }
        if out.len() == MAX_INTERCEPTS {
            return err(format!(
                "-s: at most {MAX_INTERCEPTS} intercepts (the original used the first {MAX_INTERCEPTS} and ignored the rest with a warning)"
            ));
        }
        out.push(InterceptSpec { host, port });
    }
    Ok(out)
}

/// `-s` item in its IPv6 form: `[ADDR]`, `[ADDR]:PORT` or a bare IPv6 address; `None` when
/// the item is not written so.
fn parse_intercept6(item: &str, default_port: u16) -> Result<Option<InterceptSpec>, SpecError> {
    let (addr, port) = if let Some(rest) = item.strip_prefix('[') {
        let Some((addr, port)) = rest.split_once(']') else {
            return err(format!("-s: \"{item}\" lacks the closing ]"));
        };
        let port = match port.strip_prefix(':') {
            None if port.is_empty() => default_port,
            None => return err(format!("-s: \"{item}\": expected [ADDR]:PORT")),
            Some(p) => match p.trim().parse::<u16>() {
                Ok(0) => default_port,
                Ok(p) => p,
                Err(_) => {
                    return err(format!(
                        "-s: \"{p}\" in \"{item}\" is not a valid port (1..65535)"
                    ))
                }
            },
        };
        (addr, port)
    } else if item.matches(':').count() >= 2 {
        (item, default_port)
    } else {
        return Ok(None);
    };
    let Ok(ip) = addr.trim().parse::<std::net::Ipv6Addr>() else {
        return err(format!("-s: \"{addr}\" is not a valid IPv6 address"));
    };
    if ip.is_unspecified() || ip.is_multicast() {
        return err(format!("-s: {ip} cannot be an intercept address"));
    }
    Ok(Some(InterceptSpec {
        host: Host::Ip6(ip),
        port,
    }))
}

/// The intercept addresses with their host names resolved, checked again.
pub fn resolve_intercepts(specs: &[InterceptSpec]) -> Result<Vec<SocketAddr>, SpecError> {
    specs
        .iter()
        .map(|s| {
            if let Host::Ip6(ip) = s.host {
                return Ok(SocketAddr::new(ip.into(), s.port));
            }
            let ip = s.host.resolve("-s")?;
            check_intercept(ip)?;
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, s.port)))
        })
        .collect()
}

/// `-c` expanded, in order: `a.b.c.x` = a.b.c.1-254; `*` is refused with a hint. Use
/// [`select_client_ips`] to leave out the targets.
pub fn parse_client_ips(text: &str) -> Result<Vec<Ipv4Addr>, SpecError> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return err(format!(
                "-c: empty item in \"{text}\" (the original stopped reading -c there)"
            ));
        }
        if item.ends_with('*') {
            return err(format!(
                "-c: {item} not valid, use x instead of * (e.g. 203.0.113.x); the original skipped this item with an error and went on without it"
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
            out.extend((1..=254u8).map(|d| Ipv4Addr::new(a, b, c, d)));
        } else {
            let ip = parse_ip(item, "-c")?;
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                return err(format!("-c: {ip} cannot be a client address"));
            }
            out.push(ip);
        }
        // Targets left out later are at most a few: bound the expansion of absurd lists.
        if out.len() > 16 * MAX_CLIENT_IPS {
            return err(too_many_client_ips());
        }
    }
    Ok(out)
}

fn too_many_client_ips() -> String {
    format!(
        "-c: more than {MAX_CLIENT_IPS} client addresses (the original used the first {MAX_CLIENT_IPS} and ignored the rest with a warning)"
    )
}

/// The client addresses of `-c` without the targets (a fake client must not be a target), at
/// most [`MAX_CLIENT_IPS`], at least one.
pub fn select_client_ips(
    ips: &[Ipv4Addr],
    targets: &[Ipv4Addr],
) -> Result<Vec<Ipv4Addr>, SpecError> {
    let kept: Vec<Ipv4Addr> = ips
        .iter()
        .copied()
        .filter(|ip| !targets.contains(ip))
        .collect();
    if kept.len() > MAX_CLIENT_IPS {
        return err(too_many_client_ips());
    }
    if kept.is_empty() {
        return err("-c: no client address left (every one is a target address)");
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfers(text: &str) -> Result<Vec<Transfer>, SpecError> {
        resolve_transfers(&parse_transfers(text)?)
    }

    fn intercepts(text: &str, port: u16) -> Result<Vec<SocketAddr>, SpecError> {
        resolve_intercepts(&parse_intercepts(text, port)?)
    }

    fn client_ips(text: &str, targets: &[Ipv4Addr]) -> Result<Vec<Ipv4Addr>, SpecError> {
        select_client_ips(&parse_client_ips(text)?, targets)
    }

    #[test]
    fn transfers_full_syntax() {
        let t = transfers(
            "192.168.0.1:80-192.168.0.2:8080, 8080-192.168.0.3:80,\
             80@00:13:21:b2:5e:42-121.55.111.148:18080@00:0F:1F:03:F2:E6",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].src_ip, Some(Ipv4Addr::new(192, 168, 0, 1).into()));
        assert_eq!((t[0].src_port, t[0].dst_port), (80, 8080));
        assert_eq!(t[1].src_ip, None);
        assert_eq!(t[1].dst_ip, Ipv4Addr::new(192, 168, 0, 3));
        assert_eq!(t[2].src_mac, Some([0x00, 0x13, 0x21, 0xb2, 0x5e, 0x42]));
        assert_eq!(t[2].dst_mac, Some([0x00, 0x0f, 0x1f, 0x03, 0xf2, 0xe6]));
    }

    #[test]
    fn ipv6_intercepts() {
        let s = intercepts(
            "[2001:db8::40]:9000,2001:db8::41,[2001:db8::42],198.18.0.40",
            36524,
        )
        .unwrap();
        let a = |t: &str| t.parse::<SocketAddr>().unwrap();
        assert_eq!(
            s,
            vec![
                a("[2001:db8::40]:9000"),
                a("[2001:db8::41]:36524"),
                a("[2001:db8::42]:36524"),
                a("198.18.0.40:36524"),
            ]
        );
        for (bad, says) in [
            ("[2001:db8::40", "closing ]"),
            ("[2001:db8::40]x", "[ADDR]:PORT"),
            ("[2001:db8::40]:99999", "not a valid port"),
            ("[::]", "cannot be an intercept"),
            ("[ff02::1]", "cannot be an intercept"),
            ("[2001:db8::zz]", "not a valid IPv6 address"),
        ] {
            let e = intercepts(bad, 36524).unwrap_err().0;
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// Parsing keeps host names as names (no look-up); resolving is a separate step
    /// (`-x 80-testhost:8080 -s intercept-host`). What cannot be a host name is refused.
    #[test]
    fn host_names_parsed_then_resolved() {
        let specs = parse_transfers("80-no-such-host.invalid:8080").unwrap();
        assert_eq!(specs[0].dst, Host::Name("no-such-host.invalid".into()));
        assert!(resolve_transfers(&specs).is_err());
        let t = transfers("80-localhost:8080").unwrap();
        assert_eq!(t[0].dst_ip, Ipv4Addr::LOCALHOST);
        let specs = parse_intercepts("localhost:36525,198.18.0.40", 36524).unwrap();
        assert_eq!(specs[0].host, Host::Name("localhost".into()));
        let s = resolve_intercepts(&specs).unwrap();
        assert_eq!(s[0], SocketAddr::from((Ipv4Addr::LOCALHOST, 36525)));
        assert_eq!(
            s[1],
            SocketAddr::from((Ipv4Addr::new(198, 18, 0, 40), 36524))
        );
        for bad in ["1.2.3", "a_b", "host name", ""] {
            assert!(Host::parse(bad, "-s").is_err(), "{bad}");
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
            // Every one of these is refused by parsing alone.
            let e = parse_transfers(bad).unwrap_err().0;
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let many = vec!["80-198.18.0.30:8080"; 33].join(",");
        assert!(parse_transfers(&many).unwrap_err().0.contains("at most 32"));
    }

    #[test]
    fn client_ips_expanded_and_selected() {
        let targets = [Ipv4Addr::new(203, 0, 113, 7)];
        let ips = client_ips("203.0.113.x", &targets).unwrap();
        assert_eq!(ips.len(), 253);
        assert_eq!(ips[0], Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(ips[252], Ipv4Addr::new(203, 0, 113, 254));
        assert!(!ips.contains(&targets[0]));
        let ips = client_ips("203.0.113.5, 203.0.113.6", &[]).unwrap();
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
            let e = client_ips(bad, &targets).unwrap_err().0;
            assert!(e.contains(needle), "{bad}: {e}");
        }
        // 17 subnets of 254 = 4318 > 4096.
        let many: Vec<String> = (0..17).map(|i| format!("10.0.{i}.x")).collect();
        assert!(client_ips(&many.join(","), &[])
            .unwrap_err()
            .0
            .contains("4096"));
        let ok: Vec<String> = (0..16).map(|i| format!("10.0.{i}.x")).collect();
        assert_eq!(client_ips(&ok.join(","), &[]).unwrap().len(), 4064);
    }

    #[test]
    fn intercept_list() {
        let s = intercepts(" 198.18.0.40 , 198.18.0.41:9000,198.18.0.42:0", 36524).unwrap();
        assert_eq!(
            s,
            vec![
                SocketAddr::from((Ipv4Addr::new(198, 18, 0, 40), 36524)),
                SocketAddr::from((Ipv4Addr::new(198, 18, 0, 41), 9000)),
                SocketAddr::from((Ipv4Addr::new(198, 18, 0, 42), 36524)),
            ]
        );
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
}
