//! `intercept --route PREFIX`: intercept on the target host itself.
//!
//! At start it creates the TUN device [`DEVICE`] and routes PREFIX (the fake clients of
//! tcpcopy's `-c`) to it, so the test server's answers to those clients reach intercept's
//! descriptor and go no further; they take the same path as captured frames (the server's
//! routing to tunnels, the record building). At exit it deletes the route and closes the
//! device, which the kernel then removes.
//!
//! Ownership: the device is never made persistent, so it exists only while a process holds
//! it open; the kernel deletes it, with every route through it, when intercept ends, also by
//! SIGKILL. Nothing of ours can therefore be left behind after a crash, and anything found at
//! start (a device named [`DEVICE`], a route to PREFIX) is someone else's: intercept says
//! what it is and exits non-zero, touching nothing. The route and device are made through
//! netlink ([`Rtnl`]) and the TUN ioctl; nothing runs `ip`.
//!
//! rp_filter is only checked: strict mode (1) on the interface that receives tcpcopy's
//! packets drops them (their source routes to the TUN device, not back out of that
//! interface); intercept logs what the operator must change and sets nothing itself.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{anyhow, bail};
use log::{info, warn};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::tun::{self, TunSource};

/// The TUN device's name (one `intercept --route` per host, or per network namespace).
pub const DEVICE: &str = "tcrs0";

/// An IPv4 prefix: the fake clients whose packets are routed to the TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Prefix {
    fn mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        }
    }

    /// `A.B.C.D/LEN` (a bare address is a /32). The host bits must be zero, and /0 (every
    /// address, the host's whole traffic) is refused.
    pub fn parse(s: &str) -> Result<Ipv4Prefix, String> {
        let (addr, len) = match s.split_once('/') {
            None => (s, 32),
            Some((a, l)) => match l.parse::<u8>() {
                Ok(l) if l <= 32 => (a, l),
                _ => return Err(format!("{s:?}: the prefix length must be 0 to 32")),
            },
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 prefix (e.g. 203.0.113.0/24)"))?;
        if len == 0 {
            return Err(format!(
                "{s:?}: a /0 would route every address, the host's whole traffic, into intercept"
            ));
        }
        let net = Ipv4Addr::from(u32::from(addr) & Self::mask(len));
        if net != addr {
            return Err(format!(
                "{s:?} has host bits set: did you mean {net}/{len}?"
            ));
        }
        Ok(Ipv4Prefix { addr, len })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.len) == u32::from(self.addr)
    }

    /// True when `other` lies inside this prefix (and is not the same).
    pub fn strictly_contains(&self, other: &Ipv4Prefix) -> bool {
        other.len > self.len && self.contains(other.addr)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

// ------------------------------------------------------------------------------------------
// rp_filter

/// The rp_filter lines the operator must act on: for every interface (but loopback and our
/// own device) whose effective mode (the larger of `all` and its own) is strict (1). `ifaces`
/// are (name, value) pairs; `all` is `net.ipv4.conf.all.rp_filter`.
pub fn rp_filter_problems(all: u8, ifaces: &[(String, u8)], prefix: Ipv4Prefix) -> Vec<String> {
    let mut out = Vec::new();
    for (name, own) in ifaces {
        if name == "lo" || name == DEVICE || name == "all" || name == "default" {
            continue;
        }
        if all.max(*own) != 1 {
            continue;
        }
        // The effective mode is the larger of the two: 2 on the interface is enough.
        let fix = format!("sysctl -w net.ipv4.conf.{name}.rp_filter=2");
        out.push(format!(
            "rp_filter is strict on {name} (all={all}, {name}={own}): packets from the fake \
             clients in {prefix} arriving on {name} are dropped, since their answers route to \
             {DEVICE}; if tcpcopy's packets arrive on {name}, make it loose: {fix}"
        ));
    }
    out
}

/// Reads `/proc/sys/net/ipv4/conf/*/rp_filter` and logs what must change (nothing is set).
fn check_rp_filter(prefix: Ipv4Prefix) {
    let read = |name: &str| -> Option<u8> {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let Some(all) = read("all") else {
        warn!("cannot read net.ipv4.conf.all.rp_filter: rp_filter not checked");
        return;
    };
    let mut ifaces: Vec<(String, u8)> = std::fs::read_dir("/proc/sys/net/ipv4/conf")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    read(&name).map(|v| (name, v))
                })
                .collect()
        })
        .unwrap_or_default();
    ifaces.sort();
    let problems = rp_filter_problems(all, &ifaces, prefix);
    for p in &problems {
        warn!("{p}");
    }
    if problems.is_empty() {
        info!("rp_filter: loose or off on every interface (all={all}): fake sources pass");
    }
}

// ------------------------------------------------------------------------------------------
// Netlink (NETLINK_ROUTE), synchronous: a handful of requests at start and at exit.

/// How long a netlink answer may take (the kernel answers at once; this only bounds a bug).
const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

/// A route socket: requests and their answers, one at a time.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// A network device as netlink describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// `IFLA_INFO_KIND` (`tun`, `veth`, ...), if the device has one.
    pub kind: Option<String>,
    /// For a TUN device: whether it is persistent and how many descriptors hold it.
    pub tun: Option<TunState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunState {
    pub persist: bool,
    /// Queues attached (open descriptors); the kernel tells only for multi-queue devices.
    pub queues: Option<u32>,
}

// IFLA_TUN_* (linux/if_link.h).
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_NUM_QUEUES: u16 = 8;

/// An IPv4 route of the main table, as far as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Prefix,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let tv = libc::timeval {
            tv_sec: NETLINK_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a valid timeval on our socket.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends one request; returns the messages of the answer (a dump's parts, or none for an
    /// acknowledged change). A netlink error comes back as the `io::Error` of its errno.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        hdr.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.sock.send(&out, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answer = Vec::new();
        // Bounded: every part is at least a header, and the kernel ends with DONE or an
        // error/ACK; a silent kernel ends the wait with the receive timeout.
        for _ in 0..100_000 {
            let n = match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut at = 0;
            while at < n {
                let part = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = part.header.length as usize;
                if len == 0 {
                    break;
                }
                at += len;
                if part.header.sequence_number != self.seq {
                    continue;
                }
                match part.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        answer.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(answer);
                        }
                    }
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(answer),
                    _ => {}
                }
            }
        }
        Err(io::Error::other("netlink answer without an end"))
    }

    /// The device `name`, or None when there is none.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(answer) => Ok(answer.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The name of device `index` (for messages).
    pub fn link_name(&mut self, index: u32) -> Option<String> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let answer = self.request(RouteNetlinkMessage::GetLink(msg), 0).ok()?;
        answer.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            }),
            _ => None,
        })
    }

    /// Sets device `index` up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
            .map(|_| ())
    }

    /// The IPv4 routes of the main table.
    pub fn main_routes(&mut self) -> io::Result<Vec<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let answer = self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_of(&r),
                _ => None,
            })
            .collect())
    }

    /// Every IPv4 address of this host (network namespace).
    pub fn local_addrs(&mut self) -> io::Result<Vec<Ipv4Addr>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let answer = self.request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in answer {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                for attr in a.attributes {
                    if let AddressAttribute::Local(IpAddr::V4(ip))
                    | AddressAttribute::Address(IpAddr::V4(ip)) = attr
                    {
                        if !out.contains(&ip) {
                            out.push(ip);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn route_msg(prefix: Ipv4Prefix, oif: u32) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = prefix.len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = RouteScope::Link;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(prefix.addr)));
        msg.attributes.push(RouteAttribute::Oif(oif));
        msg
    }

    /// Adds `prefix dev <oif>`; EEXIST when a route to `prefix` with the same metric exists.
    pub fn add_route(&mut self, prefix: Ipv4Prefix, oif: u32) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(Self::route_msg(prefix, oif)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
    }

    pub fn del_route(&mut self, prefix: Ipv4Prefix, oif: u32) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::DelRoute(Self::route_msg(prefix, oif)),
            NLM_F_ACK,
        )
        .map(|_| ())
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut kind = None;
    let mut tun = None;
    for a in &l.attributes {
        let LinkAttribute::LinkInfo(infos) = a else {
            continue;
        };
        for info in infos {
            match info {
                LinkInfo::Kind(InfoKind::Tun) => kind = Some("tun".to_string()),
                LinkInfo::Kind(k) => kind = Some(k.to_string()),
                LinkInfo::Data(InfoData::Tun(attrs)) => {
                    let mut state = TunState {
                        persist: false,
                        queues: None,
                    };
                    for attr in attrs {
                        let mut value = vec![0u8; attr.value_len()];
                        attr.emit_value(&mut value);
                        match attr.kind() {
                            IFLA_TUN_PERSIST => state.persist = value.first() == Some(&1),
                            IFLA_TUN_NUM_QUEUES if value.len() >= 4 => {
                                state.queues = Some(u32::from_ne_bytes([
                                    value[0], value[1], value[2], value[3],
                                ]))
                            }
                            _ => {}
                        }
                    }
                    tun = Some(state);
                }
                _ => {}
            }
        }
    }
    Link {
        index: l.header.index,
        kind,
        tun,
    }
}

fn route_of(r: &RouteMessage) -> Option<Route> {
    if r.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(r.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(Route {
        dst: Ipv4Prefix {
            addr: dst,
            len: r.header.destination_prefix_length,
        },
        gateway,
        oif,
    })
}

// ------------------------------------------------------------------------------------------
// The device and its route.

/// Why `--route` needs CAP_NET_ADMIN, for the errors that lack it.
const NEED_CAP: &str = "intercept --route needs CAP_NET_ADMIN to create its TUN device and \
     route (run it as root, or give it the capability: setcap cap_net_admin+ep $(command -v intercept))";

fn with_cap_hint(what: String, e: io::Error) -> anyhow::Error {
    if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
        anyhow!("{what}: {e}: {NEED_CAP}")
    } else {
        anyhow!("{what}: {e}")
    }
}

/// Why an existing device named [`DEVICE`] is not intercept's to take or remove.
fn describe_existing(link: &Link) -> String {
    match (link.kind.as_deref(), link.tun) {
        // A TUN device that is not persistent exists only while a descriptor holds it.
        (Some("tun"), Some(t)) if !t.persist || t.queues.is_some_and(|q| q > 0) => format!(
            "a TUN device {DEVICE} already exists and a running process holds it open: \
             another intercept --route? Only one intercept --route can run per host (network \
             namespace); stop the other one first"
        ),
        (Some("tun"), Some(_)) => format!(
            "a persistent TUN device {DEVICE} exists: intercept never makes \
             its device persistent, so it is not one intercept left behind (ip tuntap add?); \
             delete it (ip link del {DEVICE}) if nothing uses it"
        ),
        (kind, _) => format!(
            "a network device {DEVICE} (kind {}) already exists and is not intercept's; \
             delete or rename it if it is not needed",
            kind.unwrap_or("unknown")
        ),
    }
}

/// The route to PREFIX through [`DEVICE`]: removes the route and closes the device when
/// dropped (the kernel then deletes the device).
pub struct RouteDevice {
    prefix: Ipv4Prefix,
    index: u32,
    rtnl: Rtnl,
    /// A descriptor of the device besides the capture source's: the device stays until this
    /// guard is dropped, so the route is deleted while its device still exists.
    fd: Option<OwnedFd>,
}

impl RouteDevice {
    /// Checks that nothing is in the way, creates the device, routes `prefix` to it and
    /// returns the guard and the capture source reading the device.
    pub fn create(prefix: Ipv4Prefix) -> anyhow::Result<(RouteDevice, TunSource)> {
        let mut rtnl = Rtnl::open().map_err(|e| anyhow!("cannot open a netlink socket: {e}"))?;
        if let Some(link) = rtnl
            .link_by_name(DEVICE)
            .map_err(|e| anyhow!("cannot look up device {DEVICE}: {e}"))?
        {
            bail!("--route {prefix}: {}", describe_existing(&link));
        }
        let routes = rtnl
            .main_routes()
            .map_err(|e| anyhow!("cannot read the routing table: {e}"))?;
        for r in &routes {
            if r.dst == prefix {
                let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                let dev = r
                    .oif
                    .and_then(|i| rtnl.link_name(i))
                    .map(|n| format!(" dev {n}"))
                    .unwrap_or_default();
                bail!(
                    "--route {prefix}: a route to {prefix} already exists ({prefix}{via}{dev}) \
                     and is not intercept's (intercept's own route goes away with its device \
                     {DEVICE}); remove it (ip route del {prefix}) if the answers to {prefix} \
                     should come to this intercept"
                );
            }
            if prefix.strictly_contains(&r.dst) {
                warn!(
                    "--route {prefix}: a more specific route to {} exists: answers to those \
                     addresses follow it, not {DEVICE}",
                    r.dst
                );
            }
        }
        let local = rtnl
            .local_addrs()
            .map_err(|e| anyhow!("cannot read the host's addresses: {e}"))?;
        if let Some(ip) = local.iter().find(|ip| prefix.contains(**ip)) {
            bail!(
                "--route {prefix}: {prefix} contains {ip}, an address of this host: its traffic \
                 would go into intercept; use the range of the fake clients (tcpcopy -c)"
            );
        }
        let fd = match tun::create(DEVICE) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => bail!(
                "cannot create the TUN device {DEVICE}: /dev/net/tun is missing (load the tun \
                 module: modprobe tun)"
            ),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let why = match rtnl.link_by_name(DEVICE) {
                    Ok(Some(link)) => describe_existing(&link),
                    _ => format!("a device {DEVICE} appeared meanwhile"),
                };
                bail!("--route {prefix}: {why}")
            }
            Err(e) => {
                return Err(with_cap_hint(
                    format!("cannot create the TUN device {DEVICE}"),
                    e,
                ))
            }
        };
        let guard_fd = fd
            .try_clone()
            .map_err(|e| anyhow!("cannot duplicate the TUN descriptor: {e}"))?;
        // From here on, an error drops `fd` and `guard_fd`: the kernel deletes the device.
        let link = rtnl
            .link_by_name(DEVICE)
            .map_err(|e| anyhow!("cannot look up the new device {DEVICE}: {e}"))?
            .ok_or_else(|| anyhow!("the new device {DEVICE} is gone"))?;
        rtnl.set_up(link.index)
            .map_err(|e| with_cap_hint(format!("cannot set {DEVICE} up"), e))?;
        match rtnl.add_route(prefix, link.index) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => bail!(
                "--route {prefix}: a route to {prefix} appeared meanwhile and is not \
                 intercept's"
            ),
            Err(e) => {
                return Err(with_cap_hint(
                    format!("cannot add the route {prefix} dev {DEVICE}"),
                    e,
                ))
            }
        }
        info!(
            "route {prefix} dev {DEVICE} (index {}): answers to {prefix} are read from the TUN \
             device (removed at exit)",
            link.index
        );
        check_rp_filter(prefix);
        Ok((
            RouteDevice {
                prefix,
                index: link.index,
                rtnl,
                fd: Some(guard_fd),
            },
            TunSource::new(fd),
        ))
    }

    pub fn prefix(&self) -> Ipv4Prefix {
        self.prefix
    }
}

impl Drop for RouteDevice {
    fn drop(&mut self) {
        let prefix = self.prefix;
        let already_gone = match self.rtnl.del_route(prefix, self.index) {
            Ok(()) => false,
            // Deleted with its device by someone else while intercept ran.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENODEV)) => true,
            Err(e) => {
                warn!("cannot delete the route {prefix} dev {DEVICE}: {e}");
                false
            }
        };
        drop(self.fd.take());
        match self.rtnl.link_by_name(DEVICE) {
            Ok(Some(l)) if l.index == self.index => warn!(
                "the device {DEVICE} is still there: another process holds its descriptor; it \
                 goes when that process ends"
            ),
            Ok(_) if already_gone => {
                info!("the route {prefix} and the device {DEVICE} were already gone")
            }
            Ok(_) => info!("removed the route {prefix} and the device {DEVICE}"),
            Err(e) => warn!("cannot check that {DEVICE} is gone: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Ipv4Prefix {
        Ipv4Prefix::parse(s).unwrap()
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            p("203.0.113.0/24"),
            Ipv4Prefix {
                addr: Ipv4Addr::new(203, 0, 113, 0),
                len: 24
            }
        );
        assert_eq!(p("203.0.113.7").len, 32);
        assert!(p("203.0.113.0/24").contains(Ipv4Addr::new(203, 0, 113, 255)));
        assert!(!p("203.0.113.0/24").contains(Ipv4Addr::new(203, 0, 114, 0)));
        assert!(p("203.0.113.0/24").strictly_contains(&p("203.0.113.128/25")));
        assert!(!p("203.0.113.0/24").strictly_contains(&p("203.0.113.0/24")));
        assert!(!p("203.0.113.0/24").strictly_contains(&p("203.0.0.0/16")));
        assert_eq!(p("10.0.0.0/8").to_string(), "10.0.0.0/8");
        for bad in [
            "",
            "x",
            "203.0.113.0/33",
            "203.0.113.0/",
            "203.0.113/24",
            "0.0.0.0/0",
            "::1/128",
        ] {
            assert!(Ipv4Prefix::parse(bad).is_err(), "{bad:?}");
        }
        let e = Ipv4Prefix::parse("203.0.113.5/24").unwrap_err();
        assert!(e.contains("did you mean 203.0.113.0/24"), "{e}");
        assert!(Ipv4Prefix::parse("0.0.0.0/0")
            .unwrap_err()
            .contains("whole traffic"));
    }

    #[test]
    fn rp_filter_strict_is_reported_with_the_fix() {
        let prefix = p("203.0.113.0/24");
        let ifaces = |v: &[(&str, u8)]| -> Vec<(String, u8)> {
            v.iter().map(|(n, x)| (n.to_string(), *x)).collect()
        };
        // Loose or off everywhere: nothing to say.
        let ok = ifaces(&[("all", 0), ("eth0", 2), ("lo", 1), (DEVICE, 1)]);
        assert!(rp_filter_problems(0, &ok, prefix).is_empty());
        assert!(rp_filter_problems(2, &ok, prefix).is_empty());
        // Strict on one interface.
        let v = rp_filter_problems(0, &ifaces(&[("eth0", 1), ("eth1", 0)]), prefix);
        assert_eq!(v.len(), 1);
        assert!(
            v[0].contains("eth0") && v[0].contains("net.ipv4.conf.eth0.rp_filter=2"),
            "{v:?}"
        );
        // Strict through `all`: every interface whose own value does not exceed it.
        let v = rp_filter_problems(1, &ifaces(&[("eth0", 0), ("eth1", 2)]), prefix);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("all=1, eth0=0") && v[0].contains("net.ipv4.conf.eth0.rp_filter=2"),
            "{v:?}"
        );
    }

    #[test]
    fn existing_devices_are_described() {
        let held = Link {
            index: 5,
            kind: Some("tun".into()),
            tun: Some(TunState {
                persist: false,
                queues: None,
            }),
        };
        assert!(describe_existing(&held).contains("another intercept --route"));
        let persistent = Link {
            index: 5,
            kind: Some("tun".into()),
            tun: Some(TunState {
                persist: true,
                queues: None,
            }),
        };
        assert!(describe_existing(&persistent).contains("ip link del tcrs0"));
        let veth = Link {
            index: 5,
            kind: Some("veth".into()),
            tun: None,
        };
        assert!(describe_existing(&veth).contains("kind veth"));
    }
}
