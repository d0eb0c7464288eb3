//! What tcpcopy captures: the BPF filter built from `-x` (spec 6.2), the pcap devices of `-i`,
//! and the start-up check that it would not capture its own output (spec 6.6).

use std::net::Ipv4Addr;
use std::time::Duration;

use tc_core::capture::pcap_live::{self, PcapLiveOptions};
use tc_core::capture::reopen::{all_lost_for, Reopening};
use tc_core::capture::Capture;
use tc_core::session::Transfer;

use crate::cli::Input;

/// The BPF filter of spec 6.2: `tcp and ((dst port P and dst host A) or ...)`.
pub fn auto_filter(transfers: &[Transfer]) -> String {
    let terms: Vec<String> = transfers
        .iter()
        .map(|t| match t.src_ip {
            Some(ip) => format!("(dst port {} and dst host {})", t.src_port, ip),
            None => format!("(dst port {})", t.src_port),
        })
        .collect();
    format!("tcp and ({})", terms.join(" or "))
}

/// The pcap captures of `-i` with `--capture pcap` (see [`open_pcap_devices`]), filtered by
/// the user's `-F` or else by `auto()` built from the transfers; logged as the original logs
/// them.
pub fn open_pcap(
    devices: &[String],
    user_filter: Option<&String>,
    snaplen: u32,
    buffer_bytes: u32,
    auto: impl FnOnce() -> String,
) -> anyhow::Result<Vec<Reopening<dyn Capture>>> {
    log::info!("pcap version:{}", pcap_live::lib_version());
    let filter = match user_filter {
        Some(f) => {
            log::info!("user filter:{f}");
            f.clone()
        }
        None => {
            let f = auto();
            log::info!("filter = {f}");
            f
        }
    };
    open_pcap_devices(devices, &filter, snaplen, buffer_bytes)
}

/// Logs what became of a raw capture socket's kernel port filter (`protocol`: tcp or udp);
/// without it tcpcopy filters the packets itself.
pub fn log_port_filter(result: std::io::Result<bool>, protocol: &str, ports: &[u16]) {
    match result {
        Ok(true) => log::info!("capture: kernel filter keeps {protocol} dst ports {ports:?}"),
        Ok(false) => {}
        Err(e) => log::warn!("capture: no kernel port filter ({e}): filtering in tcpcopy"),
    }
}

/// The capture reopening of both event loops, at `now` (time since the start): every second
/// (`next_check`) the devices of `captures` are checked, and lost captures whose backoff
/// passed are reopened and registered again with `registry` under `Token(index)`. Returns
/// how long every capture has been lost, if all are.
pub fn reopen_lost(
    captures: &mut [Reopening<dyn Capture>],
    registry: &mio::Registry,
    now: Duration,
    next_check: &mut Duration,
) -> Option<Duration> {
    if now >= *next_check {
        *next_check = now + Duration::from_secs(1);
        for c in captures.iter_mut() {
            c.check_device(now);
        }
    }
    if !captures.iter().any(|c| c.is_lost()) {
        return None;
    }
    for (i, c) in captures.iter_mut().enumerate() {
        c.try_reopen(now, |src| {
            src.register(registry, mio::Token(i))
                .map_err(|e| format!("cannot poll it: {e}"))
        });
    }
    all_lost_for(captures, now)
}

/// Opens the pcap captures of `-i` (every device but `any` when `devices` is empty); each is
/// reopened by its device name when it is lost (interface deleted or gone down).
pub fn open_pcap_devices(
    devices: &[String],
    filter: &str,
    snaplen: u32,
    buffer_bytes: u32,
) -> anyhow::Result<Vec<Reopening<dyn Capture>>> {
    let opts = PcapLiveOptions {
        filter: filter.to_string(),
        snaplen: snaplen as i32,
        buffer_size: buffer_bytes as i32,
        promiscuous: true,
        immediate: true,
    };
    let opened = pcap_live::open_devices(devices, &opts).map_err(|e| {
        // `-i NAME` without a `/` or a capture extension is a device (cli::input_names_file):
        // say so when no interface has that name, in case a file was meant.
        let unknown: Vec<&str> = devices
            .iter()
            .map(String::as_str)
            .filter(|d| !std::path::Path::new("/sys/class/net").join(d).exists())
            .collect();
        if unknown.is_empty() {
            anyhow::anyhow!(e)
        } else {
            anyhow::anyhow!(
                "{e}; no network interface is named {}: -i takes a name without a / as a device (write ./NAME for a pcap file)",
                unknown.join(",")
            )
        }
    })?;
    Ok(opened
        .into_iter()
        .map(|c| {
            let (device, opts) = (c.device().to_string(), opts.clone());
            Reopening::new(&device.clone(), Box::new(c) as Box<dyn Capture>).with_reopen(Box::new(
                move || {
                    pcap_live::PcapLive::open(&device, &opts)
                        .map(|c| Box::new(c) as Box<dyn Capture>)
                        .map_err(|e| e.to_string())
                },
            ))
        })
        .collect())
}

/// Refuses configurations in which tcpcopy would capture its own output (spec 6.6): a target
/// equal to an online endpoint that some transfer captures. `local_ips` are this host's
/// addresses (raw capture only sees packets addressed to them).
pub fn check_self_capture(
    transfers: &[Transfer],
    input: &Input,
    local_ips: &[Ipv4Addr],
) -> anyhow::Result<()> {
    let pcap_auto = matches!(input, Input::Pcap { filter: None, .. });
    for (i, t) in transfers.iter().enumerate() {
        for src in transfers {
            if src.src_port != t.dst_port {
                continue;
            }
            let captured = match src.src_ip {
                Some(ip) => ip == t.dst_ip,
                // pcap sees outgoing frames too; the raw socket only inbound local traffic.
                None => {
                    pcap_auto
                        || t.dst_ip.is_loopback()
                        || matches!(t.dst_ip, std::net::IpAddr::V4(d) if local_ips.contains(&d))
                }
            };
            if captured {
                let hint = if pcap_auto {
                    " (captured port and target port are equal: set -F to capture packets)"
                } else {
                    ""
                };
                anyhow::bail!(
                    "-x transfer {}: target {}:{} would be captured again as online traffic; tcpcopy would replay its own output{hint}",
                    i + 1,
                    t.dst_ip,
                    t.dst_port
                );
            }
        }
    }
    Ok(())
}

/// This host's IPv4 addresses (to refuse targets that tcpcopy would capture again).
pub fn local_ipv4_addresses() -> std::io::Result<Vec<Ipv4Addr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, released below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family tells its real type.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: AF_INET addresses are sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr_spec::{parse_transfers, resolve_transfers};

    fn transfers(text: &str) -> Vec<Transfer> {
        resolve_transfers(&parse_transfers(text).unwrap()).unwrap()
    }

    #[test]
    fn auto_filter_terms() {
        let t = transfers("80-198.18.0.30:8080,198.18.0.20:443-198.18.0.30:8443");
        assert_eq!(
            auto_filter(&t),
            "tcp and ((dst port 80) or (dst port 443 and dst host 198.18.0.20))"
        );
    }

    #[test]
    fn self_capture_refused() {
        let local = [Ipv4Addr::new(198, 18, 0, 20)];
        let t = transfers("80-198.18.0.20:80");
        assert!(check_self_capture(&t, &Input::Raw, &local).is_err());
        let t = transfers("80-127.0.0.1:80");
        assert!(check_self_capture(&t, &Input::Raw, &local).is_err());
        // A remote target on the same port is fine for the raw socket (it sees inbound only)...
        let t = transfers("80-198.18.0.30:80");
        assert!(check_self_capture(&t, &Input::Raw, &local).is_ok());
        // ...but not with the auto pcap filter, which would match the replayed packets.
        let pcap = |user_filter: bool| Input::Pcap {
            devices: vec![],
            filter: user_filter.then(|| "tcp".to_string()),
            buffer_bytes: 0,
            snaplen: 0,
        };
        let e = check_self_capture(&t, &pcap(false), &local)
            .unwrap_err()
            .to_string();
        assert!(e.contains("-F"), "{e}");
        assert!(check_self_capture(&t, &pcap(true), &local).is_ok());
        // One transfer's target captured by another transfer.
        let t = transfers("80-198.18.0.30:8080,8080-198.18.0.20:8080");
        assert!(check_self_capture(&t, &Input::Raw, &local).is_err());
        let t = transfers("198.18.0.20:80-198.18.0.30:8080");
        assert!(check_self_capture(&t, &pcap(false), &local).is_ok());
    }
}
