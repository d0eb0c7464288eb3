#![no_main]
//! intercept's routing decisions (`control::routing::Router`): a stream of client messages
//! (CLIENT_ADD/DEL/other records on one of 8 tunnels), captured responses, tunnel closes and
//! clock steps, with small tables so eviction, expiry and the delay table's limits are hit.
//! A response is only ever routed to the tunnel that last announced its connection and is
//! still open; held responses come back with their own connection's CLIENT_ADD, in order.

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
    let mut router: Router<(RouteKey, u32)> = Router::new(
        usize::from(*routes & 15) + 1,
        idle_ms,
        usize::from(*delays & 15) + 1,
        now,
    );
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
                    let k = key(&[msg.client_ip.octets()[3], msg.client_port as u8]);
                    announced.insert(k, tunnel);
                    if let Some(held) = router.client_add(k, tunnel, now) {
                        assert!(held.len() <= DELAY_RECORDS_PER_KEY);
                        assert!(held.iter().all(|(hk, _)| *hk == k));
                        assert!(held.windows(2).all(|w| w[0].1 < w[1].1), "out of order");
                    }
                }
            }
            1 => {
                let [a, b, flags, ..] = ops else { break };
                let k = key(&[*a, *b]);
                ops = &ops[3..];
                serial += 1;
                match router.route(&k, flags & 1 == 1, &(k, serial), now) {
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
