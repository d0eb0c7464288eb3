//! Protocol edge cases of real traffic through tcpcopy + intercept (lab.md): memcached text
//! protocol with pipelining, `noreply` and `quit`; against nginx HTTP/1.1 pipelining (also
//! across responses), HTTP/1.0 `Connection: close`, half-closing and aborting (RST) clients;
//! idle keep-alive connections (also with a target that closes idle connections the online
//! server keeps); responses streamed in chunks with pauses; server-speaks-first protocols: SMTP
//! (Python's smtpd, curl) and a line protocol whose target greets 500 ms late. Each case
//! compares what the target received or did with the online side. Needs root and the packages
//! of scripts/test.sh (memcached, nginx-light, curl, python3).

mod real_common;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use real_common::*;
use tc_e2e::lab::*;

// ------------------------------------------------------------------------------------------
// A small buffered client connection with bounded reads.

/// A client connection: every read has a timeout, and the whole conversation a deadline.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
}

impl Conn {
    fn connect(addr: SocketAddrV4) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: Vec::new(),
            deadline: Instant::now() + Duration::from_secs(60),
        })
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.s.write_all(data)
    }

    /// Reads more into the buffer; false at EOF.
    fn fill(&mut self) -> io::Result<bool> {
        if Instant::now() > self.deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut chunk = [0u8; 65536];
        let n = self.s.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Everything up to and including the first `pat`.
    fn read_until(&mut self, pat: &[u8]) -> io::Result<Vec<u8>> {
        let mut from = 0;
        loop {
            if let Some(i) = find(&self.buf[from..], pat) {
                let end = from + i + pat.len();
                return Ok(self.buf.drain(..end).collect());
            }
            from = self.buf.len().saturating_sub(pat.len());
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    fn read_n(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads until the peer closes; what came after the buffered bytes.
    fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        while self.fill()? {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// One HTTP/1.x response: its status code and body (Content-Length, chunked, or up to
    /// the close).
    fn http_response(&mut self) -> io::Result<(u16, Vec<u8>)> {
        let head = String::from_utf8_lossy(&self.read_until(b"\r\n\r\n")?).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_ascii_lowercase())
            })
        };
        if let Some(len) = header("content-length").and_then(|v| v.parse().ok()) {
            return Ok((status, self.read_n(len)?));
        }
        if header("transfer-encoding").as_deref() == Some("chunked") {
            let mut body = Vec::new();
            for _ in 0..100_000 {
                let line = self.read_until(b"\r\n")?;
                let size = std::str::from_utf8(&line[..line.len() - 2])
                    .ok()
                    .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                    .ok_or(io::ErrorKind::InvalidData)?;
                if size == 0 {
                    self.read_until(b"\r\n")?;
                    return Ok((status, body));
                }
                body.extend(self.read_n(size + 2)?.into_iter().take(size));
            }
            return Err(io::ErrorKind::InvalidData.into());
        }
        Ok((status, self.read_to_end()?))
    }
}

/// Closes `s` with a RST (SO_LINGER 0).
fn abort(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized linger value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

/// An io::Result with what the client was doing, for failure messages.
trait Ctx<T> {
    fn ctx(self, what: impl std::fmt::Display) -> Result<T, String>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, what: impl std::fmt::Display) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

fn find(hay: &[u8], pat: &[u8]) -> Option<usize> {
    hay.windows(pat.len()).position(|w| w == pat)
}

/// Polls `f` until it is done or REPLAY_DEADLINE passed; on failure panics with `what`, the
/// last value and tcpcopy's and intercept's logs.
fn expect_replay<T: std::fmt::Debug>(
    lab: &Lab,
    what: &str,
    f: impl FnMut() -> (bool, T),
    extra: impl FnOnce() -> String,
) -> T {
    let (done, v) = poll(REPLAY_DEADLINE, f);
    if !done {
        panic!(
            "{what} (after {REPLAY_DEADLINE:?}): {v:#?}\n{}\n{}",
            extra(),
            replay_report(lab)
        );
    }
    v
}

/// tcpcopy's final statistics lines (tcpcopy is stopped), for the success message.
fn final_stats(lab: &Lab) -> String {
    let _ = lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(15));
    let log = lab.log("tcpcopy");
    [
        "active:",
        "conns:",
        "resp fin:",
        "send syn:",
        "reconnect:",
        "retransmit:",
    ]
    .iter()
    .filter_map(|key| {
        log.lines()
            .rev()
            .find_map(|l| {
                l.split_once("[notice] ")
                    .filter(|(_, r)| r.starts_with(key))
            })
            .map(|(_, r)| r)
    })
    .collect::<Vec<_>>()
    .join("; ")
}

// ------------------------------------------------------------------------------------------
// 1. memcached: text protocol, pipelining, noreply, a large value, quit.

const MC_ONLINE_PORT: u16 = 11211;
const MC_TARGET_PORT: u16 = 11212;
/// A second listener of each memcached, on loopback and not replayed, to read its state.
const MC_LOCAL_PORT: u16 = 11299;

fn start_memcached(lab: &Lab, host: &str, name: &str, port: u16) -> SocketAddrV4 {
    let ip = if host == ONLINE { ONLINE_IP } else { TARGET_IP };
    let listen = format!("{ip}:{port},127.0.0.1:{MC_LOCAL_PORT}");
    lab.spawn(
        host,
        name,
        &PathBuf::from("/usr/bin/memcached"),
        &[
            "-u", "nobody", "-U", "0", "-m", "64", "-c", "256", "-l", &listen,
        ],
    );
    wait_tcp(lab, host, SocketAddrV4::new(ip, port), name);
    SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, MC_LOCAL_PORT)
}

/// Writes `cmds` and a meta no-op in one write; everything answered before the `MN`.
fn mc(c: &mut Conn, cmds: &[u8]) -> io::Result<String> {
    let mut all = cmds.to_vec();
    all.extend_from_slice(b"mn\r\n");
    c.send(&all)?;
    let out = c.read_until(b"MN\r\n")?;
    Ok(String::from_utf8_lossy(&out[..out.len() - 4]).into_owned())
}

fn mc_set(key: &str, val: &[u8], noreply: bool) -> Vec<u8> {
    let mut out = format!(
        "set {key} 0 0 {}{}\r\n",
        val.len(),
        if noreply { " noreply" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(val);
    out.extend_from_slice(b"\r\n");
    out
}

/// Selected `stats` counters of the memcached of `host` (over its loopback listener;
/// `stats` changes none of them).
fn mc_stats(lab: &Lab, host: &str, local: SocketAddrV4) -> BTreeMap<String, String> {
    const SHOWN: [&str; 8] = [
        "cmd_get",
        "cmd_set",
        "get_hits",
        "get_misses",
        "incr_hits",
        "incr_misses",
        "curr_items",
        "bytes",
    ];
    lab.in_ns(host, || -> io::Result<BTreeMap<String, String>> {
        let mut c = Conn::connect(local)?;
        let stats = mc(&mut c, b"stats\r\n")?;
        Ok(stats
            .lines()
            .filter_map(|line| {
                let mut w = line.split_whitespace().skip(1);
                let (k, v) = (w.next()?, w.next()?);
                SHOWN.contains(&k).then(|| (k.to_string(), v.to_string()))
            })
            .collect())
    })
    .unwrap_or_else(|e| panic!("memcached stats in {host}: {e}"))
}

/// The values of `keys` in the memcached of `host` (a large one as its length and a
/// checksum). Counts as gets in its stats.
fn mc_values(
    lab: &Lab,
    host: &str,
    local: SocketAddrV4,
    keys: &[String],
) -> BTreeMap<String, String> {
    lab.in_ns(host, || -> io::Result<BTreeMap<String, String>> {
        let mut c = Conn::connect(local)?;
        let mut out = BTreeMap::new();
        for chunk in keys.chunks(50) {
            let text = mc(&mut c, format!("get {}\r\n", chunk.join(" ")).as_bytes())?;
            let mut lines = text.split("\r\n");
            while let Some(line) = lines.next() {
                let w: Vec<&str> = line.split_whitespace().collect();
                if w.len() == 4 && w[0] == "VALUE" {
                    let v = lines.next().unwrap_or_default();
                    let shown = if v.len() > 64 {
                        let sum: u64 = v
                            .bytes()
                            .enumerate()
                            .map(|(i, b)| i as u64 * b as u64)
                            .sum();
                        format!("{} bytes, sum {sum}", v.len())
                    } else {
                        v.to_string()
                    };
                    out.insert(w[1].to_string(), shown);
                }
            }
        }
        Ok(out)
    })
    .unwrap_or_else(|e| panic!("memcached values in {host}: {e}"))
}

fn map_diff(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> Vec<String> {
    want.iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: online {v}, target {:?}", got.get(k)))
        .take(20)
        .collect()
}

#[test]
#[ignore = "needs root"]
fn memcached_pipelined_text_protocol() {
    require("memcached_pipelined_text_protocol", &["memcached"]);
    let started = Instant::now();
    let lab = Lab::start();
    let online_local = start_memcached(&lab, ONLINE, "mc-online", MC_ONLINE_PORT);
    let target_local = start_memcached(&lab, TARGET, "mc-target", MC_TARGET_PORT);
    start_intercept(&lab, MC_TARGET_PORT);
    maybe_capture(&lab, MC_ONLINE_PORT, MC_TARGET_PORT);
    start_tcpcopy(&lab, MC_ONLINE_PORT, MC_TARGET_PORT);
    let online = SocketAddrV4::new(ONLINE_IP, MC_ONLINE_PORT);

    // The shared counter first, and on the target too before other connections touch it
    // (independent connections are not ordered on the target).
    lab.in_ns(CLIENT, || {
        let mut c = Conn::connect(online)?;
        let r = mc(&mut c, &mc_set("ctr", b"0", false))?;
        assert_eq!(r, "STORED\r\n");
        io::Result::Ok(())
    })
    .expect("counter set");
    expect_replay(
        &lab,
        "the counter did not reach the target",
        || {
            let st = mc_stats(&lab, TARGET, target_local);
            (st.get("curr_items").map(String::as_str) == Some("1"), st)
        },
        String::new,
    );

    let clients: Vec<JoinHandle<io::Result<()>>> = vec![
        // Pipelined: 10 writes of 5 sets, an incr and a multi-get with a miss each.
        lab.thread_in(CLIENT, move || {
            let mut c = Conn::connect(online)?;
            for b in 0..10 {
                let mut cmds = Vec::new();
                for i in 0..5 {
                    cmds.extend(mc_set(
                        &format!("p:{b}:{i}"),
                        format!("pv{b}.{i}").as_bytes(),
                        false,
                    ));
                }
                cmds.extend_from_slice(b"incr ctr 1\r\n");
                cmds.extend(format!("get p:{b}:0 p:{b}:4 missing:{b}\r\n").into_bytes());
                let r = mc(&mut c, &cmds)?;
                assert_eq!(r.matches("STORED").count(), 5, "{r}");
                assert!(
                    r.contains(&format!("VALUE p:{b}:4 0 5\r\npv{b}.4\r\nEND")),
                    "{r}"
                );
            }
            Ok(())
        }),
        // Fire and forget: 100 noreply sets and incrs in 4 writes, then one answered no-op.
        lab.thread_in(CLIENT, move || {
            let mut c = Conn::connect(online)?;
            for b in 0..4 {
                let mut cmds = Vec::new();
                for i in 0..25 {
                    cmds.extend(mc_set(
                        &format!("n:{b}:{i}"),
                        format!("nv{i}").as_bytes(),
                        true,
                    ));
                }
                cmds.extend_from_slice(b"incr ctr 2 noreply\r\n");
                c.send(&cmds)?;
                std::thread::sleep(Duration::from_millis(20));
            }
            let r = mc(&mut c, b"")?;
            assert_eq!(r, "");
            Ok(())
        }),
        // Lock-step incrs.
        lab.thread_in(CLIENT, move || {
            let mut c = Conn::connect(online)?;
            for _ in 0..30 {
                c.send(b"incr ctr 1\r\n")?;
                c.read_until(b"\r\n")?;
            }
            Ok(())
        }),
        // A 200 KB value: a request and a response of many segments.
        lab.thread_in(CLIENT, move || {
            let mut c = Conn::connect(online)?;
            let val: Vec<u8> = (0..200_000).map(|i| b'a' + (i % 23) as u8).collect();
            assert_eq!(mc(&mut c, &mc_set("big", &val, false))?, "STORED\r\n");
            let r = mc(&mut c, b"get big\r\n")?;
            assert_eq!(
                r.len(),
                val.len() + "VALUE big 0 200000\r\n\r\nEND\r\n".len()
            );
            assert_eq!(mc(&mut c, b"append big 0 0 3\r\nxyz\r\n")?, "STORED\r\n");
            Ok(())
        }),
    ];
    for (i, t) in clients.into_iter().enumerate() {
        t.join()
            .expect("memcached client thread")
            .unwrap_or_else(|e| panic!("memcached client {i}: {e}"));
    }
    // Short connections closed by the server: `quit` (memcached closes first).
    lab.in_ns(CLIENT, || {
        for i in 0..8 {
            let mut c = Conn::connect(online)?;
            let mut cmds = mc_set(&format!("s:{i}"), format!("sv{i}").as_bytes(), false);
            cmds.extend(format!("incr ctr 10\r\nget s:{i}\r\nquit\r\n").into_bytes());
            c.send(&cmds)?;
            let rest = String::from_utf8_lossy(&c.read_to_end()?).into_owned();
            assert!(rest.ends_with("END\r\n"), "{rest}");
        }
        io::Result::Ok(())
    })
    .expect("short memcached connections");
    let clients_done = started.elapsed();

    let mut keys: Vec<String> = vec!["ctr".into(), "big".into()];
    for b in 0..10 {
        keys.extend((0..5).map(|i| format!("p:{b}:{i}")));
    }
    for b in 0..4 {
        keys.extend((0..25).map(|i| format!("n:{b}:{i}")));
    }
    keys.extend((0..8).map(|i| format!("s:{i}")));
    let want_stats = mc_stats(&lab, ONLINE, online_local);
    let want = mc_values(&lab, ONLINE, online_local, &keys);
    assert_eq!(
        want.get("ctr").map(String::as_str),
        Some("128"),
        "online counter: {want:?}"
    );
    assert_eq!(want.len(), keys.len(), "online keys: {want:?}");
    // Stats first (reading values counts gets), then the values.
    expect_replay(
        &lab,
        "memcached_pipelined_text_protocol: the target's stats differ from the online's",
        || {
            let d = map_diff(&want_stats, &mc_stats(&lab, TARGET, target_local));
            (d.is_empty(), d)
        },
        || format!("online stats {want_stats:?}"),
    );
    expect_replay(
        &lab,
        "memcached_pipelined_text_protocol: the target's values differ from the online's",
        || {
            let d = map_diff(&want, &mc_values(&lab, TARGET, target_local, &keys));
            (d.is_empty(), d)
        },
        String::new,
    );
    eprintln!(
        "memcached: {} keys, counter 128; clients took {clients_done:?}, identical after {:?}\n{}",
        keys.len(),
        started.elapsed(),
        final_stats(&lab)
    );
}

// ------------------------------------------------------------------------------------------
// HTTP with nginx: pipelining, HTTP/1.0 close, half-close, idle keep-alive.

/// A second access log with the client port and the request's number on its connection.
const EDGE_LOG: &str = "log_format edge '$remote_addr $remote_port $connection_requests \
     \"$request\" $status $body_bytes_sent';\n\
     access_log {dir}/edge.log edge;";

fn multiset(entries: &[AccessEntry]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in entries {
        *out.entry(e.req.clone()).or_insert(0) += 1;
    }
    out
}

/// Requests per connection (by client address and port), in their order on it.
fn by_conn(entries: &[AccessEntry]) -> BTreeMap<(String, u16), Vec<String>> {
    let mut conns: BTreeMap<(String, u16), Vec<(u32, String)>> = BTreeMap::new();
    for e in entries {
        conns
            .entry((e.ip.clone(), e.port))
            .or_default()
            .push((e.nth, e.req.clone()));
    }
    conns
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            (k, v.into_iter().map(|(_, r)| r).collect())
        })
        .collect()
}

/// nginx on online:80 and target:8080 (`target_extra` in the target's server block),
/// intercept and tcpcopy.
struct Http {
    lab: Lab,
    _tmp: TempDir,
    online_log: PathBuf,
    target_log: PathBuf,
    online: SocketAddrV4,
    started: Instant,
}

fn http_lab(target_extra: &str) -> Http {
    http_lab_with(target_extra, &[])
}

/// [`http_lab`] with `sysctls` (`name=value`) set on online and client before anything
/// listens or connects.
fn http_lab_with(target_extra: &str, sysctls: &[&str]) -> Http {
    let started = Instant::now();
    let tmp = TempDir::new("edge-http");
    let lab = Lab::start();
    for host in [ONLINE, CLIENT] {
        for kv in sysctls {
            must(Some(&lab), host, 10, "sysctl", &["-qw", kv], None);
        }
    }
    let mut logs = Vec::new();
    for (host, name, port, dir, extra) in [
        (ONLINE, "nginx-online", HTTP_ONLINE_PORT, "online", ""),
        (
            TARGET,
            "nginx-target",
            HTTP_TARGET_PORT,
            "target",
            target_extra,
        ),
    ] {
        let dir = tmp.sub(dir);
        start_nginx_with(&lab, host, name, port, &dir, EDGE_LOG, extra);
        logs.push(dir.join("edge.log"));
    }
    start_intercept(&lab, HTTP_TARGET_PORT);
    maybe_capture(&lab, HTTP_ONLINE_PORT, HTTP_TARGET_PORT);
    start_tcpcopy(&lab, HTTP_ONLINE_PORT, HTTP_TARGET_PORT);
    let target_log = logs.pop().unwrap();
    let online_log = logs.pop().unwrap();
    Http {
        lab,
        _tmp: tmp,
        online_log,
        target_log,
        online: SocketAddrV4::new(ONLINE_IP, HTTP_ONLINE_PORT),
        started,
    }
}

impl Http {
    /// The online log with `expected` requests, and the target's once it has the same
    /// requests (method, URI, status, bytes): (online, target) entries.
    fn expect_same_requests(
        &self,
        test: &str,
        expected: usize,
    ) -> (Vec<AccessEntry>, Vec<AccessEntry>) {
        let (_, online) = poll(Duration::from_secs(5), || {
            let e = read_access_log(&self.online_log);
            (e.len() >= expected, e)
        });
        assert_eq!(online.len(), expected, "online requests: {online:#?}");
        let want = multiset(&online);
        let target = expect_replay(
            &self.lab,
            &format!("{test}: the target's requests differ from the online's"),
            || {
                let t = read_access_log(&self.target_log);
                (multiset(&t) == want, t)
            },
            || {
                format!(
                    "differences: {:#?}\n--- nginx-target log, tail ---\n{}",
                    count_diff(&want, &multiset(&read_access_log(&self.target_log))),
                    tail(&self.lab.log("nginx-target"), 20)
                )
            },
        );
        for e in &target {
            assert!(e.ip.starts_with("203.0.113."), "target request from {e:?}");
        }
        (online, target)
    }
}

#[test]
#[ignore = "needs root"]
fn http_pipelining_close_and_half_close() {
    require("http_pipelining_close_and_half_close", &["nginx"]);
    let h = http_lab("");
    let online = h.online;
    h.lab
        .in_ns(CLIENT, || -> Result<(), String> {
            // 20 requests in one write (one segment), then 20 with a 300-byte header in one
            // write (several segments), on one connection.
            let mut c = Conn::connect(online).ctx("pipelined connect")?;
            for (batch, pad) in [("a", 0), ("b", 300)] {
                let mut reqs = Vec::new();
                for i in 0..20 {
                    reqs.extend(
                        format!(
                            "GET /small.txt?pipe={batch}{i} HTTP/1.1\r\nHost: edge\r\nX-Pad: \
                             {}\r\n\r\n",
                            "p".repeat(pad)
                        )
                        .into_bytes(),
                    );
                }
                c.send(&reqs).ctx(batch)?;
                for i in 0..20 {
                    let (status, body) = c.http_response().ctx(format!("{batch}{i}"))?;
                    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]), "{batch}{i}");
                }
            }
            drop(c);
            // Pipelining across responses: 10 requests, 3 responses read, 10 more requests
            // (their segment acknowledges response data: a new request for tcpcopy while the
            // first ones are answered), then the 17 other responses.
            let mut c = Conn::connect(online).ctx("interleaved connect")?;
            let batch = |from: usize| -> Vec<u8> {
                (from..from + 10)
                    .flat_map(|i| {
                        format!("GET /index.html?inter={i} HTTP/1.1\r\nHost: edge\r\n\r\n")
                            .into_bytes()
                    })
                    .collect()
            };
            c.send(&batch(0)).ctx("inter 0-9")?;
            for i in 0..3 {
                c.http_response().ctx(format!("inter={i}"))?;
            }
            c.send(&batch(10)).ctx("inter 10-19")?;
            for i in 3..20 {
                let (status, _) = c.http_response().ctx(format!("inter={i}"))?;
                assert_eq!(status, 200);
            }
            drop(c);
            // A client that aborts (RST) after reading its response.
            for i in 0..3 {
                let what = format!("abort={i}");
                let mut c = Conn::connect(online).ctx(&what)?;
                c.send(
                    format!("GET /small.txt?abort={i} HTTP/1.1\r\nHost: edge\r\n\r\n").as_bytes(),
                )
                .ctx(&what)?;
                c.http_response().ctx(&what)?;
                abort(c.s);
            }
            // HTTP/1.0 with Connection: close: the server closes first.
            for i in 0..5 {
                let what = format!("close={i}");
                let mut c = Conn::connect(online).ctx(&what)?;
                c.send(
                    format!("GET /index.html?close={i} HTTP/1.0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .ctx(&what)?;
                let (status, _) = c.http_response().ctx(&what)?;
                assert_eq!(status, 200);
                assert!(c.read_to_end().ctx(&what)?.is_empty());
            }
            // Half-close right after the request (keep-alive HTTP/1.1), then read the
            // response: 5 GETs, and 2 POSTs with a 3 KB body (several segments; nginx answers
            // 405 for a static file). Only responses of one write: nginx aborts a longer
            // response (499) when it sees the client's FIN while still sending.
            for i in 0..7 {
                let what = format!("half={i}");
                let mut c = Conn::connect(online).ctx(&what)?;
                let req = if i < 5 {
                    format!("GET /index.html?half={i} HTTP/1.1\r\nHost: edge\r\n\r\n")
                } else {
                    let body = format!("{i}").repeat(3000);
                    format!(
                        "POST /index.html?half={i} HTTP/1.1\r\nHost: edge\r\nContent-Length: \
                         {}\r\n\r\n{body}",
                        body.len()
                    )
                };
                c.send(req.as_bytes()).ctx(&what)?;
                c.s.shutdown(Shutdown::Write).ctx(&what)?;
                let (status, _) = c.http_response().ctx(&what)?;
                assert_eq!(status, if i < 5 { 200 } else { 405 }, "{what}");
                assert!(c.read_to_end().ctx(&what)?.is_empty());
            }
            Ok(())
        })
        .expect("http client");
    let clients_done = h.started.elapsed();
    let test = "http_pipelining_close_and_half_close";
    let (online, target) = h.expect_same_requests(test, 75);
    // The pipelined connections: the same requests in the same order on one connection.
    let pipelined = |e: &[AccessEntry]| -> Vec<Vec<String>> {
        by_conn(e)
            .into_values()
            .filter(|reqs| reqs.len() > 1)
            .collect()
    };
    assert_eq!(
        pipelined(&target),
        pipelined(&online),
        "pipelined connection"
    );
    eprintln!(
        "{test}: 75 requests; clients took {clients_done:?}, identical after {:?}\n{}",
        h.started.elapsed(),
        final_stats(&h.lab)
    );
}

/// TCP Fast Open between the online client and server (`net.ipv4.tcp_fastopen=1027` on
/// both: client, server, and every listener): after the first connection got a cookie,
/// each request rides in its connection's SYN. The target (no Fast Open) takes the SYN
/// alone; tcpcopy sends the request after the handshake. Before: only the first request
/// reached the target (the others were lost, each after a 2 s wait and a new connection).
#[test]
#[ignore = "needs root"]
fn http_tcp_fast_open() {
    let test = "http_tcp_fast_open";
    require(test, &["nginx", "curl", "nstat"]);
    let h = http_lab_with("", &["net.ipv4.tcp_fastopen=1027"]);
    let n = 6;
    for i in 0..n {
        let url = format!("http://{}/small.txt?tfo={i}", h.online);
        must(
            Some(&h.lab),
            CLIENT,
            10,
            "curl",
            &["-sf", "--tcp-fastopen", "-o", "/dev/null", &url],
            None,
        );
    }
    let clients_done = h.started.elapsed();
    let counters = must(
        Some(&h.lab),
        ONLINE,
        10,
        "nstat",
        &["-az", "TcpExtTCPFastOpenPassive"],
        None,
    );
    let passive: u64 = counters
        .lines()
        .find_map(|l| l.strip_prefix("TcpExtTCPFastOpenPassive"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(passive >= 1, "online accepted no data in a SYN: {counters}");
    h.expect_same_requests(test, n);
    eprintln!(
        "{test}: {n} requests, {passive} of them in a SYN online; clients took {clients_done:?}, identical after {:?}\n{}",
        h.started.elapsed(),
        final_stats(&h.lab)
    );
}

/// Two connections, each sending a request every 3.5 s for 10.5 s; the target must serve
/// them all. With `target_extra` = `keepalive_timeout 2s`, the target closes the connections
/// between requests while the online server keeps them: the later requests go on new ones.
fn idle_case(test: &str, target_extra: &str) -> (Vec<AccessEntry>, Vec<AccessEntry>) {
    let h = http_lab(target_extra);
    let online = h.online;
    let clients: Vec<JoinHandle<io::Result<()>>> = (0..2)
        .map(|c| {
            h.lab.thread_in(CLIENT, move || {
                let mut conn = Conn::connect(online)?;
                for i in 0..4 {
                    if i > 0 {
                        std::thread::sleep(Duration::from_millis(3500));
                    }
                    conn.send(
                        format!("GET /small.txt?idle=c{c}r{i} HTTP/1.1\r\nHost: edge\r\n\r\n")
                            .as_bytes(),
                    )?;
                    let (status, _) = conn.http_response()?;
                    assert_eq!(status, 200);
                }
                Ok(())
            })
        })
        .collect();
    for t in clients {
        t.join().expect("client thread").expect("idle client");
    }
    let clients_done = h.started.elapsed();
    let (online, target) = h.expect_same_requests(test, 8);
    eprintln!(
        "{test}: 8 requests; target connections {:?}; clients took {clients_done:?}, identical \
         after {:?}\n{}",
        by_conn(&target),
        h.started.elapsed(),
        final_stats(&h.lab)
    );
    (online, target)
}

#[test]
#[ignore = "needs root"]
fn http_idle_keepalive() {
    require("http_idle_keepalive", &["nginx"]);
    let (online, target) = idle_case("http_idle_keepalive", "");
    // Same connections: each kept its 4 requests in order.
    let conns = |e: &[AccessEntry]| -> Vec<Vec<String>> { by_conn(e).into_values().collect() };
    let (mut o, mut t) = (conns(&online), conns(&target));
    o.sort();
    t.sort();
    assert_eq!(t, o, "requests per connection");
}

#[test]
#[ignore = "needs root"]
fn http_idle_keepalive_target_closes_first() {
    require("http_idle_keepalive_target_closes_first", &["nginx"]);
    let (_, target) = idle_case(
        "http_idle_keepalive_target_closes_first",
        "keepalive_timeout 2s;",
    );
    // Every request after a pause came on a new target connection.
    assert!(
        target.iter().all(|e| e.nth == 1),
        "target connections: {:#?}",
        by_conn(&target)
    );
}

// ------------------------------------------------------------------------------------------
// 4. Responses streamed in 5 chunks 300 ms apart.

const STREAM_ONLINE_PORT: u16 = 8000;
const STREAM_TARGET_PORT: u16 = 8001;
const STREAM_CHUNKS: usize = 5;
const STREAM_PAUSE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
enum Ev {
    /// A complete request arrived (its path).
    Request(String, Instant),
    /// The last byte of its response was written.
    Finished(Instant),
}

/// An HTTP/1.1 server answering each request with a chunked response of STREAM_CHUNKS
/// chunks, STREAM_PAUSE apart. A reader thread per connection records when requests arrive
/// (also while a response is streaming); a writer thread answers them in order.
struct StreamServer {
    conns: Arc<Mutex<Vec<Vec<Ev>>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl StreamServer {
    fn start(lab: &Lab, host: &str, addr: SocketAddrV4) -> StreamServer {
        let conns: Arc<Mutex<Vec<Vec<Ev>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let listener = lab.in_ns(host, move || {
            let l = TcpListener::bind(addr).expect("bind stream server");
            l.set_nonblocking(true).unwrap();
            l
        });
        let (c, st) = (conns.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let index = {
                            let mut all = c.lock().unwrap();
                            all.push(Vec::new());
                            all.len() - 1
                        };
                        stream_conn(stream, c.clone(), index, st.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        StreamServer {
            conns,
            stop,
            accept: Some(accept),
        }
    }

    fn snapshot(&self) -> Vec<Vec<Ev>> {
        self.conns.lock().unwrap().clone()
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn stream_conn(
    stream: TcpStream,
    log: Arc<Mutex<Vec<Vec<Ev>>>>,
    index: usize,
    stop: Arc<AtomicBool>,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let (tx, rx) = mpsc::channel::<String>();
    let rlog = log.clone();
    let rstop = stop.clone();
    // Reader: bounded by the stop flag and a 60 s lifetime.
    std::thread::spawn(move || {
        let mut stream = stream;
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        let end = Instant::now() + Duration::from_secs(60);
        while !rstop.load(Ordering::Relaxed) && Instant::now() < end {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            }
            while let Some(i) = find(&pending, b"\r\n\r\n") {
                let head: Vec<u8> = pending.drain(..i + 4).collect();
                let path = String::from_utf8_lossy(&head)
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("?")
                    .to_string();
                rlog.lock().unwrap()[index].push(Ev::Request(path.clone(), Instant::now()));
                if tx.send(path).is_err() {
                    return;
                }
            }
        }
    });
    // Writer.
    std::thread::spawn(move || {
        while let Ok(path) = rx.recv_timeout(Duration::from_secs(60)) {
            if stop.load(Ordering::Relaxed)
                || writer
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .is_err()
            {
                return;
            }
            for k in 0..STREAM_CHUNKS {
                if k > 0 {
                    std::thread::sleep(STREAM_PAUSE);
                }
                let data = format!("chunk {k} of {path} {}\n", "x".repeat(100));
                let last = if k + 1 == STREAM_CHUNKS {
                    "0\r\n\r\n"
                } else {
                    ""
                };
                let msg = format!("{:x}\r\n{data}\r\n{last}", data.len());
                if writer.write_all(msg.as_bytes()).is_err() {
                    return;
                }
            }
            log.lock().unwrap()[index].push(Ev::Finished(Instant::now()));
        }
    });
}

/// Per connection: its request paths in order, and for each request after the first how
/// many ms after the end of the previous response it arrived (negative: while that was
/// still streaming; NaN: that never finished).
fn stream_timeline(conn: &[Ev]) -> (Vec<String>, Vec<f64>) {
    let mut paths = Vec::new();
    let mut arrivals = Vec::new();
    let mut finishes = Vec::new();
    for e in conn {
        match e {
            Ev::Request(p, t) => {
                paths.push(p.clone());
                arrivals.push(*t);
            }
            Ev::Finished(t) => finishes.push(*t),
        }
    }
    let gaps = arrivals
        .iter()
        .skip(1)
        .zip(finishes.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(a, f)| match f {
            Some(f) if a >= f => (*a - *f).as_secs_f64() * 1000.0,
            Some(f) => -((*f - *a).as_secs_f64() * 1000.0),
            None => f64::NAN,
        })
        .collect();
    (paths, gaps)
}

#[test]
#[ignore = "needs root"]
fn streamed_responses_with_pauses() {
    require_root("streamed_responses_with_pauses");
    let started = Instant::now();
    let lab = Lab::start();
    let online_srv = StreamServer::start(
        &lab,
        ONLINE,
        SocketAddrV4::new(ONLINE_IP, STREAM_ONLINE_PORT),
    );
    let target_srv = StreamServer::start(
        &lab,
        TARGET,
        SocketAddrV4::new(TARGET_IP, STREAM_TARGET_PORT),
    );
    start_intercept(&lab, STREAM_TARGET_PORT);
    maybe_capture(&lab, STREAM_ONLINE_PORT, STREAM_TARGET_PORT);
    start_tcpcopy(&lab, STREAM_ONLINE_PORT, STREAM_TARGET_PORT);
    let online = SocketAddrV4::new(ONLINE_IP, STREAM_ONLINE_PORT);
    let clients: Vec<JoinHandle<io::Result<()>>> = (0..2)
        .map(|c| {
            lab.thread_in(CLIENT, move || {
                let mut conn = Conn::connect(online)?;
                for r in 0..5 {
                    let path = format!("/stream/c{c}/r{r}");
                    conn.send(format!("GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n").as_bytes())?;
                    let (status, body) = conn.http_response()?;
                    assert_eq!(status, 200);
                    let text = String::from_utf8_lossy(&body).into_owned();
                    assert_eq!(text.matches(&path).count(), STREAM_CHUNKS, "{text}");
                }
                Ok(())
            })
        })
        .collect();
    for t in clients {
        t.join().expect("client thread").expect("stream client");
    }
    let clients_done = started.elapsed();
    let timelines = |srv: &StreamServer| -> Vec<(Vec<String>, Vec<f64>)> {
        let mut v: Vec<_> = srv
            .snapshot()
            .iter()
            .map(|c| stream_timeline(c))
            .filter(|(p, _)| !p.is_empty())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let want: Vec<Vec<String>> = timelines(&online_srv).into_iter().map(|(p, _)| p).collect();
    assert_eq!(want.len(), 2, "online connections: {want:?}");
    let target = expect_replay(
        &lab,
        "streamed_responses_with_pauses: the target's requests differ from the online's",
        || {
            let t = timelines(&target_srv);
            let finished = target_srv
                .snapshot()
                .iter()
                .map(|c| c.iter().filter(|e| matches!(e, Ev::Finished(..))).count())
                .sum::<usize>();
            let paths: Vec<Vec<String>> = t.iter().map(|(p, _)| p.clone()).collect();
            (paths == want && finished == 10, t)
        },
        String::new,
    );
    // Tolerance: the replay delay of one request may exceed the next one's by a few ms.
    let early: Vec<(String, f64)> = target
        .iter()
        .flat_map(|(p, g)| p.iter().skip(1).cloned().zip(g.iter().copied()))
        .filter(|(_, gap)| *gap < -50.0)
        .collect();
    let gaps: Vec<Vec<f64>> = target.iter().map(|(_, g)| g.clone()).collect();
    let online_gaps: Vec<Vec<f64>> = timelines(&online_srv).into_iter().map(|(_, g)| g).collect();
    if !early.is_empty() {
        panic!(
            "streamed_responses_with_pauses: requests reached the target while the previous \
             response was still streaming (ms after its end): {early:?}; all target gaps \
             {gaps:?}, online gaps {online_gaps:?}\n{}",
            replay_report(&lab)
        );
    }
    // How much later than on online each request reached the target (ms).
    let arrivals = |srv: &StreamServer| -> BTreeMap<String, Instant> {
        srv.snapshot()
            .iter()
            .flatten()
            .filter_map(|e| match e {
                Ev::Request(p, t) => Some((p.clone(), *t)),
                Ev::Finished(_) => None,
            })
            .collect()
    };
    let online_at = arrivals(&online_srv);
    let delays: Vec<String> = arrivals(&target_srv)
        .iter()
        .map(|(p, t)| {
            let d = online_at
                .get(p)
                .map(|o| t.saturating_duration_since(*o).as_secs_f64() * 1000.0);
            format!("{p}: {d:.1?}")
        })
        .collect();
    eprintln!(
        "streamed_responses_with_pauses: 10 requests; target gaps after each response (ms) \
         {gaps:.1?}, online {online_gaps:.1?}; replay delays {delays:?}; clients took \
         {clients_done:?}, done after {:?}\n{}",
        started.elapsed(),
        final_stats(&lab)
    );
}

// ------------------------------------------------------------------------------------------
// 4b. A server-first line protocol whose greeting comes later on the target than online.

const GREET_ONLINE_PORT: u16 = 2600;
const GREET_TARGET_PORT: u16 = 2601;

/// Greets each connection with `220 ready` after `delay`, then answers each line with
/// `250 ok <line>` (`QUIT`: `221 bye` and close). Records the lines of each connection.
struct GreetServer {
    conns: Arc<Mutex<Vec<Vec<String>>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl GreetServer {
    fn start(lab: &Lab, host: &str, addr: SocketAddrV4, delay: Duration) -> GreetServer {
        let conns: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let listener = lab.in_ns(host, move || {
            let l = TcpListener::bind(addr).expect("bind greeting server");
            l.set_nonblocking(true).unwrap();
            l
        });
        let (c, st) = (conns.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let index = {
                    let mut all = c.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let c = c.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let Ok(mut conn) = (|| -> io::Result<Conn> {
                        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
                        Ok(Conn {
                            s: stream,
                            buf: Vec::new(),
                            deadline: Instant::now() + Duration::from_secs(60),
                        })
                    })() else {
                        return;
                    };
                    std::thread::sleep(delay);
                    if conn.send(b"220 ready\r\n").is_err() {
                        return;
                    }
                    for _ in 0..1000 {
                        let Ok(line) = conn.read_until(b"\r\n") else {
                            return;
                        };
                        let line = String::from_utf8_lossy(&line).trim_end().to_string();
                        c.lock().unwrap()[index].push(line.clone());
                        let reply = if line == "QUIT" {
                            "221 bye\r\n".to_string()
                        } else {
                            format!("250 ok {line}\r\n")
                        };
                        if conn.send(reply.as_bytes()).is_err() || line == "QUIT" {
                            return;
                        }
                    }
                });
            }
        });
        GreetServer {
            conns,
            stop,
            accept: Some(accept),
        }
    }

    fn sessions(&self) -> Vec<Vec<String>> {
        let mut v: Vec<Vec<String>> = self
            .conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect();
        v.sort();
        v
    }
}

impl Drop for GreetServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// The online server greets at once, the target 500 ms late: the client's first command
/// (captured right after the online greeting) must wait for the target's greeting and then
/// go out, without another client packet to trigger it.
#[test]
#[ignore = "needs root"]
fn server_first_target_greets_late() {
    require_root("server_first_target_greets_late");
    let started = Instant::now();
    let lab = Lab::start();
    let online_srv = GreetServer::start(
        &lab,
        ONLINE,
        SocketAddrV4::new(ONLINE_IP, GREET_ONLINE_PORT),
        Duration::ZERO,
    );
    let target_srv = GreetServer::start(
        &lab,
        TARGET,
        SocketAddrV4::new(TARGET_IP, GREET_TARGET_PORT),
        Duration::from_millis(500),
    );
    start_intercept(&lab, GREET_TARGET_PORT);
    maybe_capture(&lab, GREET_ONLINE_PORT, GREET_TARGET_PORT);
    start_tcpcopy(&lab, GREET_ONLINE_PORT, GREET_TARGET_PORT);
    let online = SocketAddrV4::new(ONLINE_IP, GREET_ONLINE_PORT);
    let clients: Vec<JoinHandle<Result<(), String>>> = (0..3)
        .map(|c| {
            lab.thread_in(CLIENT, move || {
                let mut conn = Conn::connect(online).ctx("connect")?;
                conn.read_until(b"\r\n").ctx("greeting")?;
                for i in 0..5 {
                    conn.send(format!("CMD c{c} n{i}\r\n").as_bytes()).ctx(i)?;
                    conn.read_until(b"\r\n").ctx(i)?;
                    std::thread::sleep(Duration::from_millis(50));
                }
                conn.send(b"QUIT\r\n").ctx("quit")?;
                conn.read_to_end().ctx("close")?;
                Ok(())
            })
        })
        .collect();
    for t in clients {
        t.join().expect("client thread").expect("greeting client");
    }
    let clients_done = started.elapsed();
    let want = online_srv.sessions();
    assert_eq!(want.len(), 3, "online sessions: {want:?}");
    let target = expect_replay(
        &lab,
        "server_first_target_greets_late: the target's sessions differ from the online's",
        || {
            let t = target_srv.sessions();
            (t == want, t)
        },
        || format!("online sessions: {want:#?}"),
    );
    eprintln!(
        "server_first_target_greets_late: {} sessions; clients took {clients_done:?}, \
         identical after {:?}\n{}",
        target.len(),
        started.elapsed(),
        final_stats(&lab)
    );
}

// ------------------------------------------------------------------------------------------
// 5. SMTP (server speaks first): Python's smtpd DebuggingServer, curl as client.

const SMTP_ONLINE_PORT: u16 = 25;
const SMTP_TARGET_PORT: u16 = 2525;

/// The messages a DebuggingServer printed, without the X-Peer header (the client address).
fn smtp_messages(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<&str>> = None;
    for line in log.lines() {
        if line.contains("---------- MESSAGE FOLLOWS ----------") {
            cur = Some(Vec::new());
        } else if line.contains("------------ END MESSAGE ------------") {
            if let Some(m) = cur.take() {
                out.push(m.join("\n"));
            }
        } else if let Some(m) = cur.as_mut() {
            if !line.contains("X-Peer:") {
                m.push(line);
            }
        }
    }
    out.sort();
    out
}

#[test]
#[ignore = "needs root"]
fn smtp_server_speaks_first() {
    require("smtp_server_speaks_first", &["curl"]);
    let started = Instant::now();
    let tmp = TempDir::new("edge-smtp");
    let lab = Lab::start();
    for (host, name, ip, port) in [
        (ONLINE, "smtp-online", ONLINE_IP, SMTP_ONLINE_PORT),
        (TARGET, "smtp-target", TARGET_IP, SMTP_TARGET_PORT),
    ] {
        let listen = format!("{ip}:{port}");
        lab.spawn_env(
            host,
            name,
            &PathBuf::from("/usr/bin/python3"),
            &[
                "-u",
                "-W",
                "ignore",
                "-m",
                "smtpd",
                "-n",
                "-c",
                "DebuggingServer",
                &listen,
            ],
            &[("PYTHONUNBUFFERED", "1")],
        );
        wait_tcp(&lab, host, SocketAddrV4::new(ip, port), name);
    }
    start_intercept(&lab, SMTP_TARGET_PORT);
    maybe_capture(&lab, SMTP_ONLINE_PORT, SMTP_TARGET_PORT);
    start_tcpcopy(&lab, SMTP_ONLINE_PORT, SMTP_TARGET_PORT);

    let url = format!("smtp://{ONLINE_IP}:{SMTP_ONLINE_PORT}/edge.example");
    let sends = 5;
    for i in 0..sends {
        let mail = tmp.path().join(format!("mail{i}.txt"));
        std::fs::write(
            &mail,
            format!(
                "From: a@example.com\r\nTo: b@example.com\r\nSubject: edge {i}\r\n\r\nHello {i}\r\n\
                 {}\r\n.leading dot line\r\nbye\r\n",
                "line of text ".repeat(10 * (i + 1))
            ),
        )
        .unwrap();
        let mut args = vec![
            "-s",
            "-S",
            "--max-time",
            "10",
            "--mail-from",
            "a@example.com",
            "--mail-rcpt",
            "b@example.com",
        ];
        if i % 2 == 1 {
            args.extend(["--mail-rcpt", "c@example.com"]);
        }
        args.extend(["--upload-file", s(&mail), &url]);
        must(Some(&lab), CLIENT, 15, "curl", &args, None);
    }
    // One session with two messages, RSET and NOOP, in lock-step from a raw client.
    lab.in_ns(CLIENT, || -> io::Result<()> {
        let mut c = Conn::connect(SocketAddrV4::new(ONLINE_IP, SMTP_ONLINE_PORT))?;
        let greeting = c.read_until(b"\r\n")?;
        assert!(greeting.starts_with(b"220"), "{greeting:?}");
        let mut say = |line: &str, code: &str| -> io::Result<()> {
            c.send(line.as_bytes())?;
            // Multi-line replies: `250-...` lines, then `250 ...`.
            for _ in 0..50 {
                let l = String::from_utf8_lossy(&c.read_until(b"\r\n")?).into_owned();
                assert!(l.starts_with(code), "{line:?}: {l:?}");
                if l.as_bytes().get(3) == Some(&b' ') {
                    return Ok(());
                }
            }
            Err(io::ErrorKind::InvalidData.into())
        };
        say("EHLO raw.example\r\n", "250")?;
        for m in 0..2 {
            say("MAIL FROM:<raw@example.com>\r\n", "250")?;
            say("RCPT TO:<b@example.com>\r\n", "250")?;
            say("DATA\r\n", "354")?;
            say(
                &format!("Subject: raw {m}\r\n\r\nraw body {m}\r\n.\r\n"),
                "250",
            )?;
            say("NOOP\r\n", "250")?;
        }
        say("MAIL FROM:<dropped@example.com>\r\n", "250")?;
        say("RSET\r\n", "250")?;
        say("QUIT\r\n", "221")?;
        Ok(())
    })
    .expect("raw SMTP session");
    let clients_done = started.elapsed();

    let (_, online) = poll(Duration::from_secs(5), || {
        let m = smtp_messages(&lab.log("smtp-online"));
        (m.len() >= sends + 2, m)
    });
    assert_eq!(
        online.len(),
        sends + 2,
        "online messages: {}",
        lab.log("smtp-online")
    );
    let target = expect_replay(
        &lab,
        "smtp_server_speaks_first: the target's messages differ from the online's",
        || {
            let t = smtp_messages(&lab.log("smtp-target"));
            (t == online, t)
        },
        || format!("online messages: {online:#?}"),
    );
    eprintln!(
        "smtp_server_speaks_first: {} messages; clients took {clients_done:?}, identical after \
         {:?}\n{}",
        target.len(),
        started.elapsed(),
        final_stats(&lab)
    );
}
