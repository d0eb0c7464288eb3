//! intercept's side of tcpcopy's path probe (`tcpcopy --check`, see tc_core::diagnose): the
//! answers to the probe questions, the broad captures ("watches") that see everything a
//! target sends to this host whatever `-F` says, and the start-up checks of this host
//! (IP forwarding, a filter that cannot match TCP answers).

use std::net::{Ipv4Addr, SocketAddrV4};

use tc_core::capture::pcap_live::{self, PcapLive, PcapLiveOptions};
use tc_core::capture::Capture;
use tc_core::control::probe::{ProbeReply, ReplyKind};
use tc_core::control::routing::TunnelId;
use tc_core::control::WireFormat;
use tc_core::packet::{ipv4_payload, Completeness, TcpPacket};

use crate::cli::Devices;

/// Watches open at once (each is a pcap handle per device): questions beyond replace the
/// oldest, so a peer cannot pile them up.
const MAX_WATCHES: usize = 4;
/// A watch nobody asked about is closed after this (ms).
const WATCH_LIFETIME_MS: u64 = 15_000;
const WATCH_SNAPLEN: i32 = 128;
const WATCH_BUFFER: i32 = 1 << 20;
/// At most this many watches are opened per second (opening one costs a pcap handle per
/// device): questions beyond are answered without a watch.
const MAX_OPENS_PER_SECOND: usize = 8;

/// `net.ipv4.ip_forward` of this host (network namespace): `None` if unreadable.
pub fn ip_forward() -> Option<bool> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok()?;
    Some(text.trim() != "0")
}

/// intercept's version as three numbers.
fn version() -> (u8, u8, u8) {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse::<u8>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

struct Watch {
    tunnel: TunnelId,
    client: SocketAddrV4,
    target: SocketAddrV4,
    captures: Vec<PcapLive>,
    opened_at: u64,
    from_target: u32,
    to_client: u32,
    to_client_flags: u8,
    other_destination: Ipv4Addr,
}

impl Watch {
    fn drain(&mut self) {
        let Watch {
            captures,
            client,
            from_target,
            to_client,
            to_client_flags,
            other_destination,
            ..
        } = self;
        for c in captures.iter_mut() {
            // A failing watch just sees nothing more.
            let _ = c.read_frames(4096, &mut |link, frame| {
                let Ok(ip) = ipv4_payload(link, frame) else {
                    return;
                };
                let Ok(pkt) = TcpPacket::parse(ip, Completeness::HeadersOnly) else {
                    return;
                };
                *from_target = from_target.saturating_add(1);
                if pkt.dst_ip() == *client.ip() {
                    *to_client = to_client.saturating_add(1);
                    *to_client_flags |= pkt.flags();
                } else if let std::net::IpAddr::V4(d) = pkt.dst_ip() {
                    *other_destination = d;
                }
            });
        }
    }
}

/// The open watches and what a reply needs to know of this intercept.
pub struct Watches {
    devices: Vec<String>,
    fmt: WireFormat,
    /// `--route`: answers go into our TUN device, whatever IP forwarding says.
    route_mode: bool,
    /// intercept runs with `--full-payload` (told in the hello reply).
    full_payload: bool,
    list: Vec<Watch>,
    /// When the last watches were opened (ms), for the rate limit.
    opened: Vec<u64>,
}

impl Watches {
    pub fn new(devices: &Devices, fmt: WireFormat, route_mode: bool) -> Watches {
        Watches {
            devices: match devices {
                Devices::All => Vec::new(),
                Devices::List(l) => l.clone(),
            },
            fmt,
            route_mode,
            full_payload: false,
            list: Vec::new(),
            opened: Vec::new(),
        }
    }

    pub fn with_full_payload(mut self, on: bool) -> Watches {
        self.full_payload = on;
        self
    }

    fn reply(&self, kind: ReplyKind, client: SocketAddrV4, target: SocketAddrV4) -> ProbeReply {
        ProbeReply {
            kind,
            version: version(),
            combined: self.fmt.combined,
            payload: self.fmt.payload,
            full_payload: self.full_payload,
            ip_forward: if self.route_mode {
                Some(false)
            } else {
                ip_forward()
            },
            watching: false,
            client,
            target,
            from_target: 0,
            to_client: 0,
            to_client_flags: 0,
            other_destination: Ipv4Addr::UNSPECIFIED,
            captured_total: 0,
        }
    }

    /// The hello: opens a watch on everything `target` sends (replacing an older one of the
    /// same tunnel and probe) and says who we are.
    pub fn hello(
        &mut self,
        tunnel: TunnelId,
        client: SocketAddrV4,
        target: SocketAddrV4,
        now: u64,
    ) -> ProbeReply {
        self.list
            .retain(|w| !(w.tunnel == tunnel && w.client == client && w.target == target));
        if self.list.len() >= MAX_WATCHES {
            self.list.remove(0);
        }
        let mut reply = self.reply(ReplyKind::Hello, client, target);
        self.opened.retain(|&t| now.saturating_sub(t) < 1000);
        if self.opened.len() >= MAX_OPENS_PER_SECOND {
            log::warn!("probe from tunnel {tunnel}: too many probes this second, no watch");
            return reply;
        }
        self.opened.push(now);
        let mut opts = PcapLiveOptions::new(&format!("tcp and src host {}", target.ip()));
        opts.snaplen = WATCH_SNAPLEN;
        opts.buffer_size = WATCH_BUFFER;
        match pcap_live::open_devices(&self.devices, &opts) {
            Ok(captures) if !captures.is_empty() => {
                log::info!(
                    "probe from tunnel {tunnel}: watching packets from {} for {client}",
                    target.ip()
                );
                reply.watching = true;
                self.list.push(Watch {
                    tunnel,
                    client,
                    target,
                    captures,
                    opened_at: now,
                    from_target: 0,
                    to_client: 0,
                    to_client_flags: 0,
                    other_destination: Ipv4Addr::UNSPECIFIED,
                });
            }
            Ok(_) => log::warn!("probe: no device to watch packets from {}", target.ip()),
            Err(e) => log::warn!("probe: cannot watch packets from {}: {e}", target.ip()),
        }
        reply
    }

    /// The query: what the watch of that probe saw (it is closed).
    pub fn query(
        &mut self,
        tunnel: TunnelId,
        client: SocketAddrV4,
        target: SocketAddrV4,
        captured_total: u64,
    ) -> ProbeReply {
        let mut reply = self.reply(ReplyKind::Seen, client, target);
        reply.captured_total = captured_total.min(u64::from(u32::MAX)) as u32;
        if let Some(i) = self
            .list
            .iter()
            .position(|w| w.tunnel == tunnel && w.client == client && w.target == target)
        {
            let mut w = self.list.remove(i);
            w.drain();
            reply.watching = true;
            reply.from_target = w.from_target;
            reply.to_client = w.to_client;
            reply.to_client_flags = w.to_client_flags;
            reply.other_destination = w.other_destination;
            log::info!(
                "probe from tunnel {tunnel}: {} packets from {}, {} to {client}",
                w.from_target,
                target.ip(),
                w.to_client
            );
        }
        reply
    }

    /// Reads the open watches (so their buffers do not fill) and closes old ones.
    pub fn tick(&mut self, now: u64) {
        self.list
            .retain(|w| now.saturating_sub(w.opened_at) < WATCH_LIFETIME_MS);
        for w in &mut self.list {
            w.drain();
        }
    }

    /// A tunnel is gone: so are its watches.
    pub fn forget_tunnel(&mut self, tunnel: TunnelId) {
        self.list.retain(|w| w.tunnel != tunnel);
    }
}

/// A warning when the capture filter cannot match a TCP answer: every TCP segment built from
/// the ports and addresses the filter names (and common service ports) is tried against it.
/// `None` when one matches (or the filter cannot be compiled here: the capture says why).
pub fn filter_warning(filter: &str) -> Option<String> {
    let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).ok()?;
    let program = dead.compile(filter, true).ok()?;
    let mut ports: Vec<u16> = vec![80, 443, 8080, 3306, 5432, 6379, 11211, 1];
    let mut ips: Vec<Ipv4Addr> = vec![Ipv4Addr::new(198, 18, 0, 2)];
    for word in filter.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
        if let Ok(p) = word.parse::<u16>() {
            ports.push(p);
        } else if let Ok(ip) = word.parse::<Ipv4Addr>() {
            ips.push(ip);
        }
    }
    let flags_tried = [0x12u8, 0x10, 0x18, 0x04, 0x11];
    for &src in &ips {
        for &dst in &ips {
            for &sport in &ports {
                for &dport in &ports {
                    for &flags in &flags_tried {
                        let frame = ethernet_tcp(src, dst, sport, dport, flags);
                        if program.filter(&frame) {
                            return None;
                        }
                    }
                }
            }
        }
    }
    Some(format!(
        "the filter '{filter}' matches none of the TCP answers tried (from the ports and addresses it names): it may capture none of the target's answers (e.g. -F 'tcp and src port 8080')"
    ))
}

fn ethernet_tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20 + 4];
    f[12] = 0x08;
    let spec = tc_core::packet::build::SegmentSpec {
        src: src.into(),
        dst: dst.into(),
        src_port: sport,
        dst_port: dport,
        seq: 1,
        ack: 1,
        flags,
        window: 1000,
        ip_id: 1,
        mss: None,
        timestamps: None,
        payload: b"ab\r\n",
    };
    let n = tc_core::packet::build::build_segment(&spec, &mut f[14..]).unwrap_or(0);
    f.truncate(14 + n);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_that_cannot_match_tcp_answers_are_told() {
        assert_eq!(filter_warning("tcp and src port 8080"), None);
        assert_eq!(filter_warning("tcp and src host 198.18.0.20"), None);
        assert_eq!(filter_warning("src port 6379"), None);
        assert!(filter_warning("udp and src port 53").is_some());
        assert!(filter_warning("ip6 and tcp").is_some());
        assert!(filter_warning("icmp").is_some());
    }
}
