//! Response comparison (issue 19): the first byte picks the protocol (or detection) and the
//! decoded-body bound, the second where the rest splits into production and target. No input
//! may panic; a response compares equal to itself; equality is symmetric; excerpts stay short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tc_core::compare::{
    body, http, resp, Comparator, Comparison, Options, Protocol, EXCERPT_MAX,
};

const PROTOCOLS: [Option<Protocol>; 4] = [
    None,
    Some(Protocol::Http),
    Some(Protocol::Redis),
    Some(Protocol::Bytes),
];

fuzz_target!(|data: &[u8]| {
    let [sel, split, rest @ ..] = data else {
        return;
    };
    let c = Comparator::new(&Options {
        protocol: PROTOCOLS[usize::from(sel & 3)],
        max_body: usize::from(sel >> 2) * 1024,
        ..Options::default()
    });
    let at = usize::from(*split) * rest.len() / 255;
    let (p, t) = rest.split_at(at.min(rest.len()));
    let r = c.compare(p, t);
    if let Some(d) = r.difference() {
        for e in [&d.production, &d.target] {
            assert!(e.as_str().is_ascii() && e.as_str().len() <= 4 * EXCERPT_MAX + 6);
        }
    }
    assert_eq!(r.is_equal(), c.compare(t, p).is_equal(), "symmetric");
    assert_eq!(c.compare(p, p), Comparison::Equal);
    let _ = (http::message_len(p, false), resp::reply_len(p, false));
    let _ = (body::dechunk(p, 4096), body::decode("deflate", p, 4096));
});
