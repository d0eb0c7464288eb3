//! Property tests of the response comparison (issue 19): no input panics, equal inputs compare
//! equal, the same content in other framings compares equal, and the pairer keeps its bounds.

use proptest::prelude::*;
use tc_core::compare::{
    body, http, resp, Comparator, Comparison, Gone, Options, Pairer, Pairing, Protocol, Record,
    Side, EXCERPT_MAX,
};

use crate::fixtures::{chunked, gzip};

fn comparator(protocol: Option<Protocol>, max_body: usize) -> Comparator {
    Comparator::new(&Options {
        protocol,
        max_body,
        ..Options::default()
    })
}

fn protocol() -> impl Strategy<Value = Option<Protocol>> {
    prop_oneof![
        Just(None),
        Just(Some(Protocol::Http)),
        Just(Some(Protocol::Redis)),
        Just(Some(Protocol::Bytes)),
    ]
}

/// Bytes that look like an HTTP response often enough to reach the body decoders.
fn http_like() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        Just("Transfer-Encoding: chunked".to_string()),
        Just("Content-Encoding: gzip".to_string()),
        Just("Content-Encoding: deflate".to_string()),
        Just("Date: x".to_string()),
        (0usize..100).prop_map(|n| format!("Content-Length: {n}")),
        "[A-Za-z-]{1,8}: [ -~]{0,8}",
    ];
    let piece = prop_oneof![
        Just(b"\r\n".to_vec()),
        Just(b"0\r\n\r\n".to_vec()),
        "[0-9a-fA-F;]{1,4}\r\n".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..16),
        Just(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]),
    ];
    (
        prop_oneof![Just(200u16), Just(204), Just(304), Just(404), 100u16..600],
        proptest::collection::vec(header, 0..5),
        proptest::collection::vec(piece, 0..8),
    )
        .prop_map(|(status, headers, pieces)| {
            let mut v = format!("HTTP/1.1 {status} X\r\n").into_bytes();
            for h in headers {
                v.extend_from_slice(h.as_bytes());
                v.extend_from_slice(b"\r\n");
            }
            v.extend_from_slice(b"\r\n");
            v.extend(pieces.concat());
            v
        })
}

/// Bytes made of RESP tokens, well-formed or not.
fn resp_like() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        (0usize..4).prop_map(|n| format!("*{n}\r\n")),
        (0usize..4).prop_map(|n| format!("%{n}\r\n")),
        (0usize..4).prop_map(|n| format!("~{n}\r\n")),
        (0usize..6).prop_map(|n| format!("${n}\r\n")),
        Just("$-1\r\n".to_string()),
        Just("*-1\r\n".to_string()),
        "[a-z]{0,5}\r\n",
        (-3i64..3).prop_map(|n| format!(":{n}\r\n")),
        Just("+OK\r\n".to_string()),
        Just("-ERR x\r\n".to_string()),
        Just("_\r\n".to_string()),
        Just("#t\r\n".to_string()),
        "[ -~]{0,3}",
    ];
    proptest::collection::vec(token, 0..12).prop_map(|t| t.concat().into_bytes())
}

fn any_response() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        http_like(),
        resp_like(),
    ]
}

fn check_excerpts(c: &Comparison) {
    if let Some(d) = c.difference() {
        for e in [&d.production, &d.target] {
            assert!(e.as_str().is_ascii());
            assert!(e.as_str().len() <= 4 * EXCERPT_MAX + 6, "{e:?}");
        }
    }
}

/// An input to the pairer.
#[derive(Debug, Clone)]
enum Event {
    Request(Side),
    Bytes(Side, Vec<u8>),
    End(Side, Gone),
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Production), Just(Side::Target)]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => side().prop_map(Event::Request),
        4 => (side(), any_response()).prop_map(|(s, b)| Event::Bytes(s, b)),
        1 => (side(), prop_oneof![Just(Gone::Closed), Just(Gone::TimedOut)])
            .prop_map(|(s, g)| Event::End(s, g)),
    ]
}

fn pairing() -> impl Strategy<Value = Pairing> {
    prop_oneof![
        Just(Pairing::LockStep),
        Just(Pairing::Positional(Protocol::Http)),
        Just(Pairing::Positional(Protocol::Redis)),
        Just(Pairing::Positional(Protocol::Bytes)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_and_excerpts_stay_short(
        p in any_response(),
        t in any_response(),
        proto in protocol(),
        max_body in 0usize..300,
    ) {
        let c = comparator(proto, max_body);
        let r = c.compare(&p, &t);
        check_excerpts(&r);
        // Equal one way, equal the other.
        prop_assert_eq!(r.is_equal(), c.compare(&t, &p).is_equal());
        let _ = (Protocol::detect(&p), http::message_len(&p, false), resp::reply_len(&p, true));
        let _ = (body::dechunk(&p, max_body), body::decode("gzip", &p, max_body));
    }

    #[test]
    fn equal_inputs_compare_equal(x in any_response(), proto in protocol()) {
        let c = comparator(proto, 1 << 16);
        prop_assert_eq!(c.compare(&x, &x.clone()), Comparison::Equal);
    }

    /// The allocation-free shortcut never calls equal what the full comparison (parsing
    /// both, comparing headers by name and decoded bodies) would not.
    #[test]
    fn quick_equal_agrees_with_the_full_comparison(
        x in http_like(),
        date in "[ -~]{0,8}",
        server in "[ -~]{0,8}",
        mutate in any::<bool>(),
        y in http_like(),
        max_body in 0usize..200,
    ) {
        let at = x.iter().position(|&b| b == b'\n').map_or(x.len(), |i| i + 1);
        let other = if mutate {
            y
        } else {
            [&x[..at], format!("Date: {date}\r\nServer: {server}\r\n").as_bytes(), &x[at..]].concat()
        };
        let filter = http::HeaderFilter::default();
        if http::quick_equal(&x, &other, &filter, max_body) {
            let (p, t) = (http::parse(&x, max_body), http::parse(&other, max_body));
            prop_assert!(p.is_some() && t.is_some());
            let (p, t) = (p.unwrap(), t.unwrap());
            prop_assert_eq!(http::compare_messages(&p, &t, &filter), Comparison::Equal);
        }
    }

    #[test]
    fn same_content_other_framing_is_equal(
        body in proptest::collection::vec(any::<u8>(), 0..2000),
        piece in 1usize..300,
        gz in any::<bool>(),
    ) {
        let plain = [
            format!("HTTP/1.1 200 OK\r\nDate: a\r\nContent-Length: {}\r\n\r\n", body.len())
                .as_bytes(),
            &body,
        ]
        .concat();
        let (enc, data) = if gz { ("Content-Encoding: gzip\r\n", gzip(&body)) } else { ("", body.clone()) };
        let other = [
            format!("HTTP/1.1 200 OK\r\nDate: b\r\n{enc}Transfer-Encoding: chunked\r\n\r\n")
                .as_bytes(),
            &chunked(&data, piece),
        ]
        .concat();
        let c = comparator(None, 1 << 16);
        prop_assert_eq!(c.compare(&plain, &other), Comparison::Equal);
        prop_assert_eq!(http::message_len(&other, false), Some(other.len()));
        let (d, used) = body::dechunk(&chunked(&body, piece), usize::MAX);
        prop_assert_eq!((d.bytes, d.incomplete, used), (body.clone(), false, chunked(&body, piece).len()));
    }

    #[test]
    fn pairer_keeps_its_bounds(
        mode in pairing(),
        max_bytes in 0usize..600,
        events in proptest::collection::vec(event(), 0..40),
    ) {
        let mut pairer = Pairer::new(mode, max_bytes).with_max_pending(8);
        let mut last = None;
        let mut check = |pairer: &mut Pairer| -> Result<(), TestCaseError> {
            prop_assert!(pairer.held_bytes() <= max_bytes);
            while let Some(r) = pairer.poll() {
                let (n, sizes) = match &r {
                    Record::Pair(p) => (p.request, vec![p.production.bytes.len(), p.target.bytes.len()]),
                    Record::Unpaired(u) => (u.request, vec![u.response.bytes.len()]),
                };
                prop_assert!(last.is_none_or(|l| n > l), "{:?} after {:?}", n, last);
                prop_assert!(sizes.iter().all(|&s| s <= max_bytes / 2));
                last = Some(n);
            }
            Ok(())
        };
        for e in events {
            match e {
                Event::Request(s) => pairer.request(s),
                Event::Bytes(s, b) => pairer.response(s, &b),
                Event::End(s, g) => pairer.end(s, g),
            }
            check(&mut pairer)?;
        }
        pairer.end(Side::Production, Gone::Closed);
        pairer.end(Side::Target, Gone::Closed);
        check(&mut pairer)?;
        prop_assert!(pairer.is_finished());
        prop_assert_eq!(pairer.held_bytes(), 0);
    }

    #[test]
    fn positional_pairs_do_not_depend_on_the_split(
        stream in resp_like(),
        cut_p in proptest::collection::vec(1usize..20, 0..10),
        cut_t in proptest::collection::vec(1usize..20, 0..10),
    ) {
        let mut pairer = Pairer::new(Pairing::Positional(Protocol::Redis), 1 << 16);
        for (side, cuts) in [(Side::Production, &cut_p), (Side::Target, &cut_t)] {
            let mut rest = &stream[..];
            for &c in cuts {
                let (a, b) = rest.split_at(c.min(rest.len()));
                pairer.response(side, a);
                rest = b;
            }
            pairer.response(side, rest);
        }
        pairer.end(Side::Production, Gone::Closed);
        pairer.end(Side::Target, Gone::Closed);
        let c = comparator(Some(Protocol::Redis), 1 << 16);
        while let Some(r) = pairer.poll() {
            let Record::Pair(p) = r else {
                return Err(TestCaseError::fail(format!("unpaired {r:?}")));
            };
            prop_assert_eq!(&p.production, &p.target);
            prop_assert_eq!(c.compare_pair(&p), Comparison::Equal);
        }
    }
}
