//! The comparators on real-looking nginx and Redis responses, and the pairer step by step.

use std::io::Write;

use tc_core::compare::*;

use crate::fixtures::{chunked, gzip};

const PAGE: &str = "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n\
<body>\n<h1>Welcome to nginx!</h1>\n<p>If you see this page, the nginx web server is \
successfully installed and working.</p>\n</body>\n</html>\n";

fn nginx(status: &str, date: &str, server: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nServer: {server}\r\nDate: {date}\r\nContent-Type: text/html\r\n\
         Content-Length: {}\r\nLast-Modified: Tue, 15 Apr 2025 13:42:04 GMT\r\n\
         Connection: keep-alive\r\nETag: \"67fe61cc-267\"\r\nAccept-Ranges: bytes\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn with_body(head: &str, body: &[u8]) -> Vec<u8> {
    let mut v = head.as_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn cmp(p: &[u8], t: &[u8]) -> Comparison {
    Comparator::new(&Options::default()).compare(p, t)
}

fn kind(c: &Comparison) -> Option<DiffKind> {
    c.difference().map(|d| d.kind)
}

const DATE1: &str = "Mon, 30 Nov 2026 15:00:00 GMT";
const DATE2: &str = "Mon, 30 Nov 2026 15:00:07 GMT";

#[test]
fn http_same_but_date_and_server_is_equal() {
    let p = nginx("200 OK", DATE1, "nginx/1.22.1", PAGE);
    let t = nginx("200 OK", DATE2, "nginx/1.27.3", PAGE);
    assert_eq!(cmp(&p, &t), Comparison::Equal);
}

/// The common case of a regression run, an equal pair whose Date and Server differ, is
/// decided without allocating (`http::quick_equal`); other framings take the full path.
#[test]
fn an_equal_nginx_pair_is_compared_without_allocating() {
    let p = nginx("200 OK", DATE1, "nginx/1.22.1", PAGE);
    let t = nginx("200 OK", DATE2, "nginx", PAGE);
    let c = Comparator::new(&Options::default());
    let before = crate::counting::allocations();
    let r = c.compare(&p, &t);
    let made = crate::counting::allocations() - before;
    assert_eq!(r, Comparison::Equal);
    assert_eq!(made, 0, "allocations comparing an equal pair");
    let filter = http::HeaderFilter::default();
    assert!(http::quick_equal(&p, &t, &filter, 1 << 20));
    // Another body, or the same body in another framing: not decided here.
    let other = nginx(
        "200 OK",
        DATE2,
        "nginx",
        &PAGE.replace("working", "broken!"),
    );
    assert!(!http::quick_equal(&p, &other, &filter, 1 << 20));
    let chunked_page = with_body(
        "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: x\r\nContent-Type: text/html\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        &chunked(PAGE.as_bytes(), 100),
    );
    assert!(!http::quick_equal(&p, &chunked_page, &filter, 1 << 20));
    assert_eq!(c.compare(&p, &chunked_page), Comparison::Equal);
    // A body past the decoding bound is a truncation for the full comparison.
    assert!(!http::quick_equal(&p, &t, &filter, 10));
}

#[test]
fn http_different_body() {
    let p = nginx("200 OK", DATE1, "nginx", PAGE);
    let t = nginx(
        "200 OK",
        DATE1,
        "nginx",
        &PAGE.replace("working", "broken!"),
    );
    let c = cmp(&p, &t);
    let d = c.difference().expect("different");
    assert_eq!(d.kind, DiffKind::Body);
    assert!(d.production.as_str().contains("working"), "{d:?}");
    assert!(d.target.as_str().contains("broken!"), "{d:?}");
    assert!(d.production.as_str().starts_with("..."));
}

#[test]
fn http_status_200_vs_404() {
    let p = nginx("200 OK", DATE1, "nginx", PAGE);
    let t = nginx("404 Not Found", DATE1, "nginx", "<html>404</html>");
    let d = cmp(&p, &t).difference().cloned().expect("different");
    assert_eq!(d.kind, DiffKind::Status);
    assert_eq!(d.production.as_str(), "HTTP/1.1 200 OK");
    assert_eq!(d.target.as_str(), "HTTP/1.1 404 Not Found");
}

#[test]
fn http_chunked_vs_content_length_same_body_is_equal() {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";
    let body = br#"{"items":[1,2,3,4,5,6,7,8,9,10],"next":null}"#;
    let p = with_body(
        &format!("{head}Content-Length: {}\r\n\r\n", body.len()),
        body,
    );
    let t = with_body(
        &format!("{head}Transfer-Encoding: chunked\r\n\r\n"),
        &chunked(body, 7),
    );
    assert_eq!(cmp(&p, &t), Comparison::Equal);
    let t2 = with_body(
        &format!("{head}Transfer-Encoding: chunked\r\n\r\n"),
        &chunked(b"{\"items\":[]}", 5),
    );
    assert_eq!(kind(&cmp(&p, &t2)), Some(DiffKind::Body));
}

#[test]
fn http_gzip_vs_plain_same_content_is_equal() {
    let z = gzip(PAGE.as_bytes());
    let p = nginx("200 OK", DATE1, "nginx", PAGE);
    let t = with_body(
        &format!(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: {DATE2}\r\nContent-Type: text/html\r\n\
             Content-Length: {}\r\nContent-Encoding: gzip\r\n\r\n",
            z.len()
        ),
        &z,
    );
    assert_eq!(cmp(&p, &t), Comparison::Equal);
    // gzip inside chunked.
    let t = with_body(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\
         Content-Encoding: gzip\r\n\r\n",
        &chunked(&z, 100),
    );
    assert_eq!(cmp(&p, &t), Comparison::Equal);
}

#[test]
fn http_deflate_zlib_and_raw_decode() {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(b"hello hello hello").unwrap();
    let zlib = z.finish().unwrap();
    let mut r = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    r.write_all(b"hello hello hello").unwrap();
    let raw = r.finish().unwrap();
    for data in [zlib, raw] {
        let d = body::decode("deflate", &data, 100).expect("decodes");
        assert_eq!(d.bytes, b"hello hello hello");
        assert!(!d.truncated);
    }
    assert_eq!(body::decode("br", b"x", 100), None);
    assert_eq!(body::decode("gzip", b"not gzip at all", 100), None);
}

#[test]
fn gzip_bomb_is_bounded() {
    let z = gzip(&vec![0u8; 8 << 20]);
    assert!(z.len() < 64 * 1024);
    let d = body::decode("gzip", &z, 1 << 20).expect("decodes");
    assert_eq!(d.bytes.len(), 1 << 20);
    assert!(d.truncated);
    let p = with_body(
        &format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            z.len()
        ),
        &z,
    );
    let t = with_body(
        &format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\ncontent-length: {}\r\n\r\n",
            z.len()
        ),
        &z,
    );
    // Equal as far as decoded, the rest unknown.
    assert_eq!(kind(&cmp(&p, &t)), Some(DiffKind::Truncated));
}

#[test]
fn http_headers_compared_ignored_and_chosen() {
    let p = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-App: 1\r\nSet-Cookie: a=1\r\nX-Request-Id: 7\r\nContent-Length: 2\r\n\r\nok";
    let t = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nX-App: 2\r\nSet-Cookie: a=2\r\nx-request-id: 8\r\nContent-Length: 2\r\n\r\nok";
    let d = cmp(p, t).difference().cloned().expect("different");
    assert_eq!(d.kind, DiffKind::Header);
    assert_eq!(d.production.as_str(), "text/html");
    assert_eq!(d.target.as_str(), "text/plain");
    assert_eq!(d.header.as_deref(), Some("content-type"));
    assert_eq!(d.to_string(), "header content-type");

    let opts = Options {
        ignore_headers: vec!["Content-Type".into()],
        ..Options::default()
    };
    let c = Comparator::new(&opts).compare(p, t);
    assert_eq!(
        c.difference().and_then(|d| d.header.clone()).as_deref(),
        Some("x-app")
    );
    let opts = Options {
        ignore_headers: vec!["CONTENT-TYPE".into(), " x-app ".into()],
        ..Options::default()
    };
    assert_eq!(Comparator::new(&opts).compare(p, t), Comparison::Equal);
    let opts = Options {
        only_headers: Some(vec!["X-Other".into(), "Set-Cookie".into()]),
        ..Options::default()
    };
    assert_eq!(Comparator::new(&opts).compare(p, t), Comparison::Equal);

    // A header on one side only.
    let t = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-App: 1\r\nX-New: y\r\nContent-Length: 2\r\n\r\nok";
    let d = cmp(p, t).difference().cloned().expect("different");
    assert_eq!(
        (d.kind, d.header.as_deref()),
        (DiffKind::Header, Some("x-new"))
    );
    assert_eq!(d.production.as_str(), "");
    assert_eq!(d.target.as_str(), "y");
}

#[test]
fn http_length_truncated_and_malformed() {
    let p = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    let t = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhel";
    assert_eq!(kind(&cmp(p, t)), Some(DiffKind::Length));
    // Captured short of its Content-Length.
    let t = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel";
    assert_eq!(kind(&cmp(p, t)), Some(DiffKind::Truncated));
    // Not HTTP on one side.
    assert_eq!(kind(&cmp(p, b"HTTP/1.1 2")), Some(DiffKind::Malformed));
    let c = Comparator::new(&Options {
        protocol: Some(Protocol::Http),
        ..Options::default()
    });
    assert_eq!(
        kind(&c.compare(b"garbage", b"garbagf")),
        Some(DiffKind::Body)
    );
    // Bad chunk sizes do not panic and the rest is unknown.
    let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\nhello";
    assert!(!cmp(bad, huge).is_equal());
    let (d, _) = body::dechunk(b"fffffffffffffff\r\nhello", 1 << 20);
    assert_eq!(d.bytes, b"hello");
    assert!(d.incomplete);
}

#[test]
fn http_bodiless_and_head_parse() {
    let p = b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\nContent-Length: 612\r\n\r\n";
    let t = b"HTTP/1.1 304 Not Modified\r\nETag: \"b\"\r\n\r\n";
    assert_eq!(cmp(p, t), Comparison::Equal);
    let h = http::parse_head(b"HTTP/1.0 204 \r\nA: b\r\n\r\n").expect("head");
    assert_eq!(h.status, 204);
    assert_eq!(h.headers, vec![("a".to_string(), &b"b"[..])]);
    assert!(http::parse_head(b"HTTP/1.1 20 OK\r\n\r\n").is_none());
    assert!(http::parse_head(b"HTTP/2 200 OK\r\n\r\n").is_none());
    assert!(http::parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_none());
    assert!(http::parse_head(b"HTTP/1.1 200 OK\nA: b\n\n").is_some());
}

#[test]
fn http_several_messages_in_one_response() {
    let cont = "HTTP/1.1 100 Continue\r\n\r\n";
    let ok = "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    let p = format!("{cont}{ok}");
    let t = format!("{cont}HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nko");
    assert_eq!(
        kind(&cmp(p.as_bytes(), t.as_bytes())),
        Some(DiffKind::Status)
    );
    let t = format!("{cont}{}", ok.replace("ok", "OK"));
    assert_eq!(kind(&cmp(p.as_bytes(), t.as_bytes())), Some(DiffKind::Body));
    // The interim answer on one side only.
    assert_eq!(
        kind(&cmp(p.as_bytes(), ok.as_bytes())),
        Some(DiffKind::Status)
    );
    // A second message on one side only.
    let two = format!("{ok}{ok}");
    let d = cmp(two.as_bytes(), ok.as_bytes()).difference().cloned();
    let d = d.expect("different");
    assert_eq!(d.kind, DiffKind::Length);
    assert!(d.production.as_str().starts_with("HTTP/1.1 201 Created"));
    assert_eq!(d.target.as_str(), "");
}

#[test]
fn http_message_len() {
    let a = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1";
    assert_eq!(http::message_len(a, false), Some(a.len() - 8));
    let c = with_body(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        &chunked(b"abcdef", 4),
    );
    let mut two = c.clone();
    two.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(http::message_len(&two, false), Some(c.len()));
    assert_eq!(http::message_len(&c[..c.len() - 3], false), None);
    assert_eq!(
        http::message_len(&c[..c.len() - 3], true),
        Some(c.len() - 3)
    );
    let close = b"HTTP/1.0 200 OK\r\n\r\nuntil the end";
    assert_eq!(http::message_len(close, false), None);
    assert_eq!(http::message_len(close, true), Some(close.len()));
    assert_eq!(
        http::message_len(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", false),
        Some(25)
    );
}

#[test]
fn redis_replies() {
    let c = Comparator::new(&Options {
        protocol: Some(Protocol::Redis),
        ..Options::default()
    });
    assert_eq!(c.compare(b"+OK\r\n", b"+OK\r\n"), Comparison::Equal);
    assert_eq!(
        kind(&c.compare(b"$5\r\nhello\r\n", b"$5\r\nworld\r\n")),
        Some(DiffKind::Value)
    );
    let d = c
        .compare(b"$5\r\nhello\r\n", b"-ERR unknown command 'GETX'\r\n")
        .difference()
        .cloned()
        .expect("different");
    assert_eq!(d.kind, DiffKind::Type);
    assert_eq!(d.production.as_str(), "$5\\x0d\\x0ahello\\x0d\\x0a");
    assert_eq!(
        kind(&c.compare(b":1\r\n", b":0\r\n")),
        Some(DiffKind::Value)
    );
    assert_eq!(
        kind(&c.compare(b"$-1\r\n", b"$0\r\n\r\n")),
        Some(DiffKind::Value)
    );
    // LRANGE: nested arrays, element by element.
    let p = b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n:2\r\n$1\r\nc\r\n";
    let t = b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n:3\r\n$1\r\nc\r\n";
    let d = c.compare(p, t).difference().cloned().expect("different");
    assert_eq!(d.kind, DiffKind::Value);
    assert_eq!(
        (d.production.as_str(), d.target.as_str()),
        (":2\\x0d\\x0a", ":3\\x0d\\x0a")
    );
    let t = b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n:2\r\n";
    assert_eq!(kind(&c.compare(p, t)), Some(DiffKind::Length));
    // Two replies against one.
    assert_eq!(
        kind(&c.compare(b"+OK\r\n+OK\r\n", b"+OK\r\n")),
        Some(DiffKind::Length)
    );
    // Garbage after equal replies.
    assert_eq!(
        kind(&c.compare(b"+OK\r\nxx", b"+OK\r\nyy")),
        Some(DiffKind::Malformed)
    );
    assert_eq!(
        kind(&c.compare(b"+OK\r\n", b"OK\r\n")),
        Some(DiffKind::Malformed)
    );
    // RESP3: map, set, double, boolean, null, verbatim, big number.
    let p =
        b"%2\r\n+a\r\n#t\r\n+b\r\n,3.14\r\n~2\r\n_\r\n(12345678901234567890\r\n=8\r\ntxt:abcd\r\n";
    assert_eq!(c.compare(p, &p.clone()), Comparison::Equal);
    let (r, end) = resp::parse_all(p);
    assert_eq!((r.len(), end), (3, p.len()));
    assert_eq!(r[0].kind, resp::Kind::Map);
    let t =
        b"%2\r\n+a\r\n#f\r\n+b\r\n,3.14\r\n~2\r\n_\r\n(12345678901234567890\r\n=8\r\ntxt:abcd\r\n";
    assert_eq!(kind(&c.compare(p, t)), Some(DiffKind::Value));
}

#[test]
fn redis_truncated_and_malformed_parse() {
    use resp::Error;
    assert_eq!(resp::parse_reply(b"$10\r\nhel", 0), Err(Error::Incomplete));
    assert_eq!(
        resp::parse_reply(b"*3\r\n:1\r\n", 0),
        Err(Error::Incomplete)
    );
    assert_eq!(
        resp::parse_reply(b"*99999999999\r\n", 0),
        Err(Error::Incomplete)
    );
    assert_eq!(
        resp::parse_reply(b"$3\r\nabcd\r\n", 0),
        Err(Error::Malformed)
    );
    assert_eq!(resp::parse_reply(b":x\r\n", 0), Err(Error::Malformed));
    assert_eq!(resp::parse_reply(b"+a\nb\r\n", 0), Err(Error::Malformed));
    let deep = "*1\r\n".repeat(100) + ":1\r\n";
    assert_eq!(resp::parse_reply(deep.as_bytes(), 0), Err(Error::Malformed));
    assert_eq!(resp::reply_len(b"+OK\r\n+O", false), Some(5));
    assert_eq!(resp::reply_len(b"+O", false), None);
    assert_eq!(resp::reply_len(b"+O", true), Some(2));
}

#[test]
fn detection() {
    assert_eq!(Protocol::detect(b"HTTP/1.1 200 OK\r\n"), Protocol::Http);
    assert_eq!(Protocol::detect(b"+PONG\r\n"), Protocol::Redis);
    assert_eq!(Protocol::detect(b"*2\r\n$3\r\nfoo"), Protocol::Redis);
    assert_eq!(Protocol::detect(b"-ERR wrong"), Protocol::Redis);
    assert_eq!(Protocol::detect(b"VALUE k 0 1\r\n"), Protocol::Bytes);
    assert_eq!(Protocol::detect(b"\x00\x00\x00\x08R"), Protocol::Bytes);
    assert_eq!(Protocol::detect(b""), Protocol::Bytes);
    assert_eq!(Protocol::from_name("HTTP"), Some(Protocol::Http));
    assert_eq!(Protocol::from_name("redis"), Some(Protocol::Redis));
    assert_eq!(Protocol::from_name("bytes"), Some(Protocol::Bytes));
    assert_eq!(Protocol::from_name("pg"), None);
    // Detection on the target's bytes when production's are empty.
    let c = Comparator::new(&Options::default());
    assert_eq!(c.protocol_for(b"", b"+OK\r\n"), Protocol::Redis);
}

#[test]
fn bytes_and_excerpts() {
    assert_eq!(compare_bytes(b"abc", b"abc"), Comparison::Equal);
    assert_eq!(kind(&compare_bytes(b"abc", b"abd")), Some(DiffKind::Body));
    assert_eq!(kind(&compare_bytes(b"abc", b"ab")), Some(DiffKind::Length));
    let e = Excerpt::of(b"a\\b\"c\x00\xff");
    assert_eq!(e.as_str(), "a\\\\b\"c\\x00\\xff");
    let long = vec![b'x'; 1000];
    let e = Excerpt::around(&long, 500);
    assert_eq!(e.as_str().len(), EXCERPT_MAX + 6);
    assert!(e.as_str().starts_with("...") && e.as_str().ends_with("..."));
    assert_eq!(Excerpt::around(b"ab", 99).as_str(), "ab");
}

/// One input to the pairer.
enum Step<'a> {
    Req(Side),
    Bytes(Side, &'a [u8]),
    End(Side, Gone),
}

use Side::{Production, Target};
use Step::{Bytes, End, Req};

/// Feeds `steps` to the pairer and returns the records it gives out.
fn run(p: &mut Pairer, steps: &[Step]) -> Vec<Record> {
    for step in steps {
        match *step {
            Req(side) => p.request(side),
            Bytes(side, b) => p.response(side, b),
            End(side, why) => p.end(side, why),
        }
    }
    std::iter::from_fn(|| p.poll()).collect()
}

/// Feeds `steps` and checks the records that come out.
fn expect(p: &mut Pairer, steps: &[Step], want: &[Record]) {
    assert_eq!(run(p, steps), want);
}

fn assert_finished(p: &Pairer) {
    assert!(p.is_finished());
    assert_eq!(p.held_bytes(), 0);
}

fn response(bytes: &[u8], truncated: bool) -> Response {
    Response {
        bytes: bytes.to_vec(),
        truncated,
    }
}

fn pair(n: u64, prod: &[u8], target: &[u8]) -> Record {
    Record::Pair(Pair {
        request: n,
        production: response(prod, false),
        target: response(target, false),
    })
}

fn unpaired(n: u64, side: Side, bytes: &[u8], gone: Gone) -> Record {
    Record::Unpaired(Unpaired {
        request: n,
        side,
        response: response(bytes, false),
        gone,
    })
}

#[test]
fn lockstep_pairs_by_request_with_a_lagging_target() {
    let mut p = Pairer::new(Pairing::LockStep, 1 << 16);
    for i in 1..=3u8 {
        let steps = [
            Req(Production),
            Bytes(Production, &[b'a', i]),
            Bytes(Production, &[b'b', i]),
        ];
        expect(&mut p, &steps, &[]);
    }
    expect(&mut p, &[End(Production, Gone::Closed)], &[]);
    expect(
        &mut p,
        &[Req(Target), Bytes(Target, b"a\x01b\x01"), Req(Target)],
        &[pair(1, b"a\x01b\x01", b"a\x01b\x01")],
    );
    expect(
        &mut p,
        &[Bytes(Target, b"x"), End(Target, Gone::TimedOut)],
        &[
            pair(2, b"a\x02b\x02", b"x"),
            unpaired(3, Production, b"a\x03b\x03", Gone::TimedOut),
        ],
    );
    assert_finished(&p);
}

#[test]
fn lockstep_greeting_and_no_response() {
    let mut p = Pairer::new(Pairing::LockStep, 1 << 16);
    let greet = [
        Bytes(Production, b"220 hello\r\n"),
        Bytes(Target, b"220 hi\r\n"),
        Req(Production),
        Req(Target),
    ];
    expect(&mut p, &greet, &[pair(0, b"220 hello\r\n", b"220 hi\r\n")]);
    // Request 1: production answers, target does not and moves on.
    expect(
        &mut p,
        &[Bytes(Production, b"ok"), Req(Production), Req(Target)],
        &[unpaired(1, Production, b"ok", Gone::NoResponse)],
    );
    // Request 2: neither answers: nothing.
    expect(&mut p, &[Req(Production), Req(Target)], &[]);
    let last = [
        Bytes(Target, b"late"),
        End(Production, Gone::Closed),
        End(Target, Gone::Closed),
    ];
    expect(
        &mut p,
        &last,
        &[unpaired(3, Target, b"late", Gone::NoResponse)],
    );
    assert_finished(&p);
}

#[test]
fn lockstep_bound_truncates_and_counts() {
    // 5 bytes per side.
    let mut p = Pairer::new(Pairing::LockStep, 10);
    let steps = [
        Req(Production),
        Bytes(Production, b"0123456789abc"),
        Req(Target),
        Bytes(Target, b"01234"),
    ];
    expect(&mut p, &steps, &[]);
    assert_eq!(p.held_bytes(), 10);
    assert_eq!((p.truncated_bytes(), p.truncated_responses()), (8, 1));
    let recs = run(
        &mut p,
        &[End(Production, Gone::Closed), End(Target, Gone::Closed)],
    );
    let [Record::Pair(pr)] = &recs[..] else {
        panic!("one pair: {recs:?}")
    };
    assert_eq!(pr.production, response(b"01234", true));
    assert_eq!(pr.target, response(b"01234", false));
    let c = Comparator::new(&Options::default());
    assert_eq!(kind(&c.compare_pair(pr)), Some(DiffKind::Truncated));
    assert_finished(&p);
    // Cut bytes that already differ: the protocol comparison decides.
    let other = Pair {
        target: response(b"9", false),
        ..pr.clone()
    };
    assert_eq!(kind(&c.compare_pair(&other)), Some(DiffKind::Body));
}

#[test]
fn positional_http_pipelined() {
    let a = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
    let b = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb";
    let both = [&a[..], &b[..]].concat();
    let mut p = Pairer::new(Pairing::Positional(Protocol::Http), 1 << 16);
    let mut steps = vec![Req(Production), Req(Production), Bytes(Production, &both)];
    steps.extend(both.chunks(5).map(|piece| Bytes(Target, piece)));
    expect(&mut p, &steps, &[pair(1, a, a), pair(2, b, b)]);
    let close_delimited = b"HTTP/1.0 200 OK\r\n\r\ntail";
    let last = [
        Bytes(Production, close_delimited),
        End(Production, Gone::Closed),
        End(Target, Gone::TimedOut),
    ];
    expect(
        &mut p,
        &last,
        &[unpaired(3, Production, close_delimited, Gone::TimedOut)],
    );
    assert_eq!(p.requests(Production), 2);
    assert_finished(&p);
}

#[test]
fn positional_redis_and_overflow() {
    // 24 bytes per side.
    let mut p = Pairer::new(Pairing::Positional(Protocol::Redis), 48);
    expect(
        &mut p,
        &[
            Bytes(Production, b"+OK\r\n:1\r\n$3\r\nab"),
            Bytes(Target, b"+OK\r\n:2\r\n"),
        ],
        &[
            pair(1, b"+OK\r\n", b"+OK\r\n"),
            pair(2, b":1\r\n", b":2\r\n"),
        ],
    );
    // Past the bound: the partial reply goes out cut, and the side is no longer followed.
    let over = [Bytes(Production, b"c\r\n$20\r\n01234567890123456789\r\n")];
    expect(&mut p, &over, &[]);
    assert_eq!((p.truncated_bytes(), p.truncated_responses()), (12, 1));
    expect(
        &mut p,
        &[Bytes(Target, b"$3\r\nabc\r\n")],
        &[pair(3, b"$3\r\nabc\r\n", b"$3\r\nabc\r\n")],
    );
    let cut = Record::Pair(Pair {
        request: 4,
        production: response(b"$20\r\n0123456789", true),
        target: response(b"+more\r\n", false),
    });
    expect(
        &mut p,
        &[Bytes(Target, b"+more\r\n+again\r\n")],
        &[cut, unpaired(5, Target, b"+again\r\n", Gone::Overflow)],
    );
}

#[test]
fn max_pending_ends_a_side() {
    let mut p = Pairer::new(Pairing::LockStep, 1 << 16).with_max_pending(2);
    let mut steps = Vec::new();
    for _ in 0..5 {
        steps.extend([Req(Production), Bytes(Production, b"r")]);
    }
    steps.extend([Req(Target), Bytes(Target, b"r"), End(Target, Gone::Closed)]);
    expect(&mut p, &steps, &[pair(1, b"r", b"r")]);
    expect(&mut p, &[End(Production, Gone::Closed)], &[]);
    assert_finished(&p);

    // By position: the messages past the limit and the unframed rest are dropped.
    let mut p = Pairer::new(Pairing::Positional(Protocol::Redis), 1 << 16).with_max_pending(2);
    expect(
        &mut p,
        &[Bytes(Production, b"+a\r\n+b\r\n+c\r\n+d\r\n+e")],
        &[],
    );
    assert_eq!((p.held_bytes(), p.truncated_bytes()), (8, 10));
    expect(
        &mut p,
        &[Bytes(Target, b"+a\r\n"), End(Target, Gone::Closed)],
        &[
            pair(1, b"+a\r\n", b"+a\r\n"),
            unpaired(2, Production, b"+b\r\n", Gone::Closed),
        ],
    );
    assert_finished(&p);
}

#[test]
fn summary_counts() {
    let mut s = Summary::default();
    s.record(&Comparison::Equal);
    s.record(&cmp(b"+a\r\n", b"+b\r\n"));
    s.record(&cmp(
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\n\r\n",
    ));
    s.record_unpaired(&Unpaired {
        request: 1,
        side: Side::Target,
        response: Response::default(),
        gone: Gone::TimedOut,
    });
    s.record_truncation(1, 100);
    let mut all = Summary::default();
    all.merge(&s);
    all.merge(&s);
    assert_eq!((all.compared, all.equal, all.different()), (6, 2, 4));
    assert_eq!(all.different_by(DiffKind::Value), 2);
    assert_eq!(all.different_by(DiffKind::Status), 2);
    assert_eq!(all.unpaired(), 2);
    assert_eq!(all.unpaired_by(Gone::TimedOut), 2);
    assert_eq!((all.truncated_responses, all.truncated_bytes), (2, 200));
    assert_eq!(all.differences().count(), DiffKind::ALL.len());
    assert_eq!(all.unpaired_reasons().map(|(_, n)| n).sum::<u64>(), 2);
}
