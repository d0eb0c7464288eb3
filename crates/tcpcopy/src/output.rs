//! Where the replay machine's queued output goes: the send backend, the control tunnels, and
//! the safety check that nothing is ever sent anywhere but a configured `-x` target.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tc_core::logging::RateLimit;
use tc_core::send::Sender;
use tc_core::session::{Outbox, Transfer};

use crate::tunnels::Tunnels;

#[derive(Debug, Clone, Copy, Default)]
pub struct SendStats {
    pub sent: u64,
    pub send_errors: u64,
    /// Datagrams refused because their destination is not a `-x` target.
    pub refused_not_target: u64,
}

pub struct ReplayOutput {
    sender: Box<dyn Sender>,
    targets: Vec<(Ipv4Addr, u16)>,
    pub tunnels: Tunnels,
    pub stats: SendStats,
    single: bool,
    /// Origin of the rate limits' clock.
    started: Instant,
    error_log: RateLimit,
    refusal_log: RateLimit,
}

impl ReplayOutput {
    pub fn new(
        sender: Box<dyn Sender>,
        transfers: &[Transfer],
        tunnels: Tunnels,
        single: bool,
    ) -> Self {
        ReplayOutput {
            sender,
            targets: transfers.iter().map(|t| (t.dst_ip, t.dst_port)).collect(),
            tunnels,
            stats: SendStats::default(),
            single,
            started: Instant::now(),
            error_log: RateLimit::new(Duration::from_secs(1), 1),
            refusal_log: RateLimit::new(Duration::from_secs(1), 1),
        }
    }
}

/// Destination IP and TCP port of an IPv4/TCP datagram; `None` when it is not one.
pub fn tcp_destination(datagram: &[u8]) -> Option<(Ipv4Addr, u16)> {
    let first = *datagram.first()?;
    if first >> 4 != 4 || datagram.get(9) != Some(&6) {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let d = datagram.get(16..20)?;
    let p = datagram.get(ihl + 2..ihl + 4)?;
    Some((
        Ipv4Addr::new(d[0], d[1], d[2], d[3]),
        u16::from_be_bytes([p[0], p[1]]),
    ))
}

/// The transfer whose target is `dst`: `hint` first, then the first one that matches.
pub fn allowed_transfer(
    targets: &[(Ipv4Addr, u16)],
    hint: usize,
    dst: (Ipv4Addr, u16),
) -> Option<usize> {
    if targets.get(hint) == Some(&dst) {
        return Some(hint);
    }
    targets.iter().position(|t| *t == dst)
}

impl ReplayOutput {
    /// Performs what the replay machine queued: announcements, then datagrams.
    pub fn flush(&mut self, outbox: &Outbox) {
        if !self.single {
            // intercept --single forwards everything to its one tcpcopy: nothing to announce.
            for a in outbox.client_adds() {
                self.tunnels
                    .client_add(a.client_ip, a.client_port, a.target_ip, a.target_port);
            }
        }
        for d in outbox.datagrams() {
            self.send_to_target(d.bytes, d.transfer);
        }
    }

    /// Sends one datagram, if (and only if) it goes to a configured `-x` target.
    pub fn send_to_target(&mut self, datagram: &[u8], transfer: usize) {
        let allowed = tcp_destination(datagram)
            .and_then(|dst| allowed_transfer(&self.targets, transfer, dst));
        let Some(index) = allowed else {
            self.stats.refused_not_target += 1;
            if let Some(suppressed) = self.refusal_log.allow(self.started.elapsed()) {
                log::error!(
                    "refused to send a datagram to {:?} (not a -x target; transfer {transfer}; {suppressed} more suppressed)",
                    tcp_destination(datagram)
                );
            }
            return;
        };
        match self.sender.send(datagram, index) {
            Ok(()) => self.stats.sent += 1,
            Err(e) => {
                self.stats.send_errors += 1;
                if let Some(suppressed) = self.error_log.allow(self.started.elapsed()) {
                    log::error!(
                        "send to back error,tot_len is:{}: {e} ({suppressed} more suppressed)",
                        datagram.len()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(dst: [u8; 4], port: u16) -> Vec<u8> {
        let mut d = vec![0u8; 40];
        d[0] = 0x45;
        d[9] = 6;
        d[16..20].copy_from_slice(&dst);
        d[22..24].copy_from_slice(&port.to_be_bytes());
        d
    }

    #[test]
    fn destination_parsing() {
        assert_eq!(
            tcp_destination(&datagram([198, 18, 0, 30], 8080)),
            Some((Ipv4Addr::new(198, 18, 0, 30), 8080))
        );
        let mut udp = datagram([198, 18, 0, 30], 8080);
        udp[9] = 17;
        assert_eq!(tcp_destination(&udp), None);
        assert_eq!(tcp_destination(&datagram([1, 2, 3, 4], 1)[..22]), None);
        assert_eq!(tcp_destination(&[]), None);
        let mut v6 = datagram([1, 2, 3, 4], 1);
        v6[0] = 0x60;
        assert_eq!(tcp_destination(&v6), None);
    }

    #[test]
    fn only_targets_are_allowed() {
        let t = [
            (Ipv4Addr::new(198, 18, 0, 30), 8080),
            (Ipv4Addr::new(198, 18, 0, 31), 80),
        ];
        assert_eq!(allowed_transfer(&t, 0, t[0]), Some(0));
        assert_eq!(allowed_transfer(&t, 0, t[1]), Some(1));
        assert_eq!(allowed_transfer(&t, 7, t[1]), Some(1));
        assert_eq!(
            allowed_transfer(&t, 0, (Ipv4Addr::new(198, 18, 0, 30), 80)),
            None
        );
        assert_eq!(
            allowed_transfer(&t, 1, (Ipv4Addr::new(198, 18, 0, 20), 80)),
            None
        );
    }

    type SentLog = std::rc::Rc<std::cell::RefCell<Vec<(usize, Vec<u8>)>>>;
    struct Recorder(SentLog);

    impl Sender for Recorder {
        fn send(&mut self, datagram: &[u8], transfer: usize) -> std::io::Result<()> {
            self.0.borrow_mut().push((transfer, datagram.to_vec()));
            Ok(())
        }
    }

    #[test]
    fn output_refuses_everything_but_targets() {
        use crate::addr_spec::{parse_transfers, resolve_transfers};
        use crate::cli::WireOptions;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            panic!("v4")
        };
        let poll = mio::Poll::new().unwrap();
        let wire = WireOptions {
            combined: true,
            payload: false,
        };
        let tunnels =
            Tunnels::connect_all(&[addr], 1, wire, poll.registry(), Duration::from_secs(3))
                .unwrap();
        let transfers =
            resolve_transfers(&parse_transfers("80-198.18.0.30:8080,81-198.18.0.31:8081").unwrap())
                .unwrap();
        let sent = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut out =
            ReplayOutput::new(Box::new(Recorder(sent.clone())), &transfers, tunnels, false);
        out.send_to_target(&datagram([198, 18, 0, 30], 8080), 0);
        // Wrong index hint, right target: sent with the matching transfer's index.
        out.send_to_target(&datagram([198, 18, 0, 31], 8081), 0);
        // Not a target: the online server, a target IP with the wrong port, junk.
        out.send_to_target(&datagram([198, 18, 0, 20], 80), 0);
        out.send_to_target(&datagram([198, 18, 0, 30], 8081), 0);
        out.send_to_target(&[0x45, 0, 0], 0);
        let sent = sent.borrow();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].0, 0);
        assert_eq!(sent[1].0, 1);
        assert_eq!(out.stats.sent, 2);
        assert_eq!(out.stats.refused_not_target, 3);
    }
}
