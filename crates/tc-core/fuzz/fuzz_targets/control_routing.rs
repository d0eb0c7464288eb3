#![no_main]
//! intercept's routing decisions (`control::routing::Router`): a stream of client messages
//! (CLIENT_ADD/DEL/other records on one of 8 tunnels), captured responses, tunnel closes and
//! clock steps, with small tables so eviction, expiry and the delay table's limits are hit.
//! Tunnels belong to two peer addresses. A response is only ever routed to the tunnel that
//! last announced its connection with success (another peer's CLIENT_ADD is refused while the
//! owner's tunnel lives) and is still open; held responses come back with their own
//! connection's CLIENT_ADD, in order.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use tc_core::control::routing::{RouteKey, Routed, Router, TunnelId, DELAY_RECORDS_PER_KEY};
use tc_core::control::{ClientMsg, ClientMsgKind, CLIENT_MSG_LEN};

/// Keys from few bytes, so the same connections come back often.
fn key(b: &[u8]) -> RouteKey {
    RouteKey::new(
        Ipv4Addr::new(203, 0, 113, b[0] & 7),
        u16::from(b[1] & 7),
        Ipv4Addr::new(198, 18, 0, 30),
        8080,
        false,
    )
}

fuzz_target!(|data: &[u8]| {
    let [routes, delays, idle, rest @ ..] = data else {
        return;
    };
    let mut ops: &[u8] = rest;
    let mut now = 1_000u64;
    let idle_ms = u64::from(*idle) * 100 + 1;
    let mut router = Router::new(
        usize::from(*routes & 15) + 1,
        idle_ms,
        usize::from(*delays & 15) + 1,
        (usize::from(*delays >> 4) + 1) * 256,
        now,
    );
    // A record: the key's two bytes, then a serial number.
    let record = |a: u8, b: u8, serial: u32| {
        let mut r = [0u8; 8];
        r[0] = a & 7;
        r[1] = b & 7;
        r[2..6].copy_from_slice(&serial.to_be_bytes());
        r
    };
    let peer = |t: TunnelId| Ipv4Addr::new(198, 18, 0, 20 + (t & 1) as u8);
    // The model: which tunnel announced each connection last, which tunnels are closed.
    let mut announced: HashMap<RouteKey, TunnelId> = HashMap::new();
    let mut closed: HashSet<TunnelId> = HashSet::new();
    let mut serial = 0u32;
    while let [op, tail @ ..] = ops {
        ops = tail;
        match op % 4 {
            0 => {
                let [tunnel, msg @ ..] = ops else { break };
                let Some(msg) = msg.get(..CLIENT_MSG_LEN) else { break };
                let tunnel = TunnelId::from(*tunnel & 7);
                let msg = ClientMsg::parse(msg.try_into().unwrap());
                ops = &ops[1 + CLIENT_MSG_LEN..];
                if msg.classify() == ClientMsgKind::Add && !closed.contains(&tunnel) {
                    // Folded into the responses' small key space (the other fields of
                    // the message only matter to the codec, fuzzed by control_client_msg).
                    let (a, b) = (msg.client_ip.octets()[3] & 7, msg.client_port as u8 & 7);
                    let k = key(&[a, b]);
                    let owner = announced.get(&k).copied();
                    match router.client_add(k, tunnel, peer(tunnel), now) {
                        Ok(held) => {
                            announced.insert(k, tunnel);
                            if let Some(held) = held {
                                assert!(held.len() <= DELAY_RECORDS_PER_KEY);
                                let serials: Vec<u32> = held
                                    .records()
                                    .map(|r| {
                                        assert_eq!((r[0], r[1]), (a, b), "another key's record");
                                        u32::from_be_bytes([r[2], r[3], r[4], r[5]])
                                    })
                                    .collect();
                                assert!(serials.windows(2).all(|w| w[0] < w[1]), "out of order");
                            }
                        }
                        Err(_) => {
                            // Only another peer's live route refuses.
                            let o = owner.expect("refused without an owner");
                            assert_ne!(peer(o), peer(tunnel), "refused its own peer");
                        }
                    }
                }
            }
            1 => {
                let [a, b, flags, ..] = ops else { break };
                let k = key(&[*a, *b]);
                ops = &ops[3..];
                serial += 1;
                match router.route(&k, *flags, &record(*a, *b, serial), now) {
                    Routed::Tunnel(t) => {
                        assert_eq!(announced.get(&k), Some(&t), "routed to a stranger");
                        assert!(!closed.contains(&t), "routed to a closed tunnel");
                    }
                    Routed::Delayed | Routed::Dropped => {}
                }
            }
            2 => {
                let [t, ..] = ops else { break };
                let t = TunnelId::from(*t & 7);
                ops = &ops[1..];
                router.tunnel_closed(t);
                closed.insert(t);
                announced.retain(|_, v| *v != t);
            }
            _ => {
                let [a, b, ..] = ops else { break };
                now += u64::from(u16::from_le_bytes([*a, *b]));
                ops = &ops[2..];
                router.tick(now);
            }
        }
    }
});
