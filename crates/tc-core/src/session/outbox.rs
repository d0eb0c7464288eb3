//! What the replay machine wants done, queued while it processes its input and pulled by the
//! driver afterwards: CLIENT_ADD announcements for the intercepts and datagrams for the
//! targets. The machine never performs I/O; the driver drains the queues after each batch of
//! input (announcements first, so an intercept knows a session before its SYN's answer), in as
//! few system calls as its backends allow, then [`Outbox::clear`]s them.
//!
//! The buffers are kept across batches: in steady state queuing allocates nothing.

use std::net::IpAddr;

/// A session to announce to every intercept (CLIENT_ADD) before its SYN is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAdd {
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub target_ip: IpAddr,
    pub target_port: u16,
}

/// One queued IPv4 datagram (checksums valid) for the target of `transfer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub bytes: &'a [u8],
    pub transfer: usize,
}

/// Where a queued datagram's bytes are in [`Outbox::bytes`].
#[derive(Debug, Clone, Copy)]
struct Queued {
    start: usize,
    end: usize,
    transfer: usize,
}

/// The machine's output queues. See the module docs.
#[derive(Debug, Default)]
pub struct Outbox {
    client_adds: Vec<ClientAdd>,
    bytes: Vec<u8>,
    datagrams: Vec<Queued>,
}

impl Outbox {
    pub(crate) fn announce(&mut self, add: ClientAdd) {
        self.client_adds.push(add);
    }

    pub(crate) fn send(&mut self, datagram: &[u8], transfer: usize) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(datagram);
        self.datagrams.push(Queued {
            start,
            end: self.bytes.len(),
            transfer,
        });
    }

    /// The announcements queued since the last [`Outbox::clear`], oldest first.
    pub fn client_adds(&self) -> &[ClientAdd] {
        &self.client_adds
    }

    /// The datagrams queued since the last [`Outbox::clear`], in sending order.
    pub fn datagrams(&self) -> impl ExactSizeIterator<Item = Datagram<'_>> + '_ {
        self.datagrams.iter().map(|q| Datagram {
            bytes: &self.bytes[q.start..q.end],
            transfer: q.transfer,
        })
    }

    /// Bytes of the queued datagrams (a driver may drain early past a bound).
    pub fn queued_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.client_adds.is_empty() && self.datagrams.is_empty()
    }

    /// Empties the queues (keeping their buffers) once the driver has drained them.
    pub fn clear(&mut self) {
        self.client_adds.clear();
        self.bytes.clear();
        self.datagrams.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn queues_keep_order_and_bytes() {
        let mut o = Outbox::default();
        assert!(o.is_empty());
        o.send(&[1, 2, 3], 0);
        o.announce(ClientAdd {
            client_ip: Ipv4Addr::new(203, 0, 113, 1).into(),
            client_port: 40000,
            target_ip: Ipv4Addr::new(198, 18, 0, 30).into(),
            target_port: 8080,
        });
        o.send(&[4, 5], 1);
        let d: Vec<_> = o.datagrams().collect();
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].bytes, d[0].transfer), (&[1u8, 2, 3][..], 0));
        assert_eq!((d[1].bytes, d[1].transfer), (&[4u8, 5][..], 1));
        assert_eq!(o.client_adds().len(), 1);
        assert_eq!(o.queued_bytes(), 5);
        o.clear();
        assert!(o.is_empty());
        assert_eq!(o.datagrams().len(), 0);
    }
}
