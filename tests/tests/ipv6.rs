//! TCP replay over IPv6 (issue 21) in the namespace lab: the hosts get their 2001:db8::/64
//! addresses ([`Lab::enable_ipv6`]), real clients load real servers on online over IPv6,
//! tcpcopy replays them with `-x PORT-[2001:db8::30]:PORT -c 2001:db8:ffff::/64` (fake clients
//! the target routes to the assistant) and intercept --ipv6 on the assistant returns the
//! target's IPv6 answers over the control channel (itself IPv4). Every request must reach the
//! target, from a fake client: nginx (ab keep-alive and short connections, curl HTTP/1.1)
//! live and offline from a tcpdump capture, Redis (redis-cli, redis-benchmark) and PostgreSQL
//! (psql, pgbench) live. And tcpcopy asking an intercept without --ipv6 stops with a clear
//! error and exit status 1.
//!
//! Needs root and the packages of scripts/test.sh (nginx, ab, curl, redis, postgresql,
//! tcpdump).

mod real_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use real_common::*;
use tc_e2e::lab::*;

/// The IPv6 lab for `test` (needs root) and a temporary directory named after `tag`.
fn lab6(test: &str, tag: &str) -> (TempDir, Lab) {
    require_root(test);
    let tmp = TempDir::new(tag);
    let lab = Lab::start();
    lab.enable_ipv6();
    (tmp, lab)
}

/// The fake client prefix (routed to the assistant by the target).
const FAKES: &str = FAKE_PREFIX6;
/// How the target's logs show a fake client.
const FAKE_START: &str = "2001:db8:ffff::";

/// intercept --ipv6 on the assistant, capturing the target's answers from `port`.
fn start_intercept6(lab: &Lab, port: u16) {
    start_intercept_with(lab, port, &["--ipv6"]);
}

/// intercept --ipv6 on the assistant listening on its IPv6 address only (the control channel
/// over IPv6), for the tcpcopy at online's IPv6 address.
fn start_intercept6_on_ipv6(lab: &Lab, port: u16) {
    let filter = format!("tcp and src port {port}");
    let allow = ONLINE_IP6.to_string();
    lab.spawn(
        ASSIST,
        "intercept",
        &bin("intercept"),
        &[
            "-F", &filter, "-i", "eth0", "-b", ASSIST_IP6, "--allow", &allow, "--ipv6",
        ],
    );
    wait_for(
        Duration::from_secs(10),
        || lab.log("intercept").contains("msg listen socket"),
        || format!("intercept does not listen: {}", lab.log("intercept")),
    );
}

/// tcpcopy on online replaying `online_port` to `[TARGET_IP6]:target_port` (plus `extra`),
/// started and granted the IPv6 variant by intercept.
fn start_tcpcopy6(lab: &Lab, online_port: u16, target_port: u16, extra: &[&str]) {
    start_tcpcopy6_via(lab, "198.18.0.40", online_port, target_port, extra);
}

/// [`start_tcpcopy6`] with the intercept at `intercept` (`-s`).
fn start_tcpcopy6_via(
    lab: &Lab,
    intercept: &str,
    online_port: u16,
    target_port: u16,
    extra: &[&str],
) {
    let x = format!("{online_port}-[{TARGET_IP6}]:{target_port}");
    let mut args = vec!["-x", &x, "-s", intercept, "-c", FAKES];
    args.extend_from_slice(extra);
    start_tcpcopy_args(lab, &args);
    wait_for(
        Duration::from_secs(10),
        || lab.log("tcpcopy").contains("grants the IPv6 variant"),
        || format!("intercept did not grant IPv6: {}", lab.log("tcpcopy")),
    );
}

/// nginx on online ([2001:db8::20]:80) and on the target ([2001:db8::30]:8080), each also on
/// its IPv4 address (the readiness probe's); their access logs.
fn nginx_pair(lab: &Lab, tmp: &TempDir) -> (PathBuf, PathBuf) {
    let online = start_nginx_with(
        lab,
        ONLINE,
        "nginx-online",
        HTTP_ONLINE_PORT,
        &tmp.sub("online"),
        "",
        &format!("listen [{ONLINE_IP6}]:{HTTP_ONLINE_PORT};"),
    );
    let target = start_nginx_with(
        lab,
        TARGET,
        "nginx-target",
        HTTP_TARGET_PORT,
        &tmp.sub("target"),
        "",
        &format!("listen [{TARGET_IP6}]:{HTTP_TARGET_PORT};"),
    );
    (online, target)
}

/// The HTTP load over IPv6: ab keep-alive and short connections, curl HTTP/1.1 keep-alive;
/// the number of requests.
fn http_load(lab: &Lab) -> usize {
    let base = format!("http://[{ONLINE_IP6}]:{HTTP_ONLINE_PORT}");
    ab_keepalive_and_short(lab, &base);
    // HTTP/1.1 keep-alive: 10 URLs over one connection (no globbing: the address has
    // brackets).
    let urls: Vec<String> = (1..=10)
        .map(|i| format!("{base}/index.html?q={i}"))
        .collect();
    let mut args = vec!["-s", "-f", "-g"];
    for u in &urls {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    must(Some(lab), CLIENT, 30, "curl", &args, None);
    200 + 30 + 10
}

/// The online access log has `expected` requests from the client; the target's ends with
/// the same requests (method, URL, status, bytes), every one from a fake client.
fn same_requests(lab: &Lab, online_log: &Path, target_log: &Path, expected: usize, what: &str) {
    let (settled, (online_n, online_reqs)) = poll(Duration::from_secs(5), || {
        let l = access_log(online_log);
        (l.0 >= expected, l)
    });
    assert!(settled, "online served {online_n} of {expected} requests");
    assert_eq!(online_n, expected, "online requests");
    let (same, (target_n, target_reqs)) = poll(REPLAY_DEADLINE, || {
        let l = access_log(target_log);
        (l.1 == online_reqs, l)
    });
    assert!(
        same,
        "{what}: target served {target_n} requests, online {online_n}; differences e.g. {:?}\n\
         --- tcpcopy log, tail ---\n{}\n--- intercept log, tail ---\n{}",
        count_diff(&online_reqs, &target_reqs),
        tail(&lab.log("tcpcopy"), 60),
        tail(&lab.log("intercept"), 20)
    );
    for ip in access_log_clients(target_log) {
        assert!(
            ip.starts_with(FAKE_START),
            "target request from {ip} (not a -c address)"
        );
    }
}

/// HTTP over IPv6, live: every request of the load reaches the target from a fake client.
#[test]
#[ignore = "needs root"]
fn ipv6_http_live() {
    let test = "ipv6_http_live";
    let started = Instant::now();
    let (tmp, lab) = lab6(test, "v6http");
    let (online_log, target_log) = nginx_pair(&lab, &tmp);
    start_intercept6(&lab, HTTP_TARGET_PORT);
    start_tcpcopy6(&lab, HTTP_ONLINE_PORT, HTTP_TARGET_PORT, &[]);
    let expected = http_load(&lab);
    same_requests(&lab, &online_log, &target_log, expected, test);
    let report = replay_report(&lab);
    assert!(report.contains("exit Some(0)"), "{report}");
    eprintln!(
        "{test}: {expected} requests replayed over IPv6 in {:?}",
        started.elapsed()
    );
}

/// HTTP over IPv6, live, captured with libpcap (the filter built from -x) and sent as
/// Ethernet frames (`--send pcap` with the MACs of -x).
#[test]
#[ignore = "needs root"]
fn ipv6_http_live_pcap_capture_and_send() {
    let test = "ipv6_http_live_pcap_capture_and_send";
    let (tmp, lab) = lab6(test, "v6pcap");
    let (online_log, target_log) = nginx_pair(&lab, &tmp);
    start_intercept6(&lab, HTTP_TARGET_PORT);
    let x = format!(
        "{HTTP_ONLINE_PORT}@{}-[{TARGET_IP6}]:{HTTP_TARGET_PORT}@{}",
        lab.mac(ONLINE),
        lab.mac(TARGET)
    );
    let args = [
        "-x",
        &x,
        "-s",
        "198.18.0.40",
        "-c",
        FAKES,
        "--capture",
        "pcap",
        "-i",
        "eth0",
        "--send",
        "pcap",
        "-o",
        "eth0",
    ];
    lab.spawn(ONLINE, "tcpcopy", &bin("tcpcopy"), &args);
    wait_for(
        Duration::from_secs(10),
        || lab.log("tcpcopy").contains("grants the IPv6 variant"),
        || format!("tcpcopy did not start: {}", lab.log("tcpcopy")),
    );
    let expected = http_load(&lab);
    same_requests(&lab, &online_log, &target_log, expected, test);
}

/// HTTP over IPv6 offline: a tcpdump capture (Ethernet) of the load replayed with `-i`, the
/// control channel with `--payload` on both sides (212-byte IPv6 records).
#[test]
#[ignore = "needs root"]
fn ipv6_http_offline() {
    let test = "ipv6_http_offline";
    let (tmp, lab) = lab6(test, "v6off");
    let (online_log, target_log) = nginx_pair(&lab, &tmp);
    let file = tmp.path().join("http6.pcap");
    let filter = format!("ip6 and tcp port {HTTP_ONLINE_PORT}");
    start_tcpdump(&lab, ONLINE, "record", &file, &["-i", "eth0"], &filter);
    let expected = http_load(&lab);
    stop_tcpdump(&lab, "record");
    start_intercept_with(&lab, HTTP_TARGET_PORT, &["--ipv6", "--payload"]);
    let extra = ["-a", "4", "--payload"];
    replay_offline6(&lab, &file, HTTP_ONLINE_PORT, HTTP_TARGET_PORT, &extra);
    same_requests(&lab, &online_log, &target_log, expected, test);
}

/// Redis on `host` listening on its IPv4 and IPv6 addresses; its local socket.
fn start_redis6(lab: &Lab, host: &str, tmp: &TempDir) -> PathBuf {
    let (name, port, ip6, dir) = if host == ONLINE {
        ("redis-online", REDIS_ONLINE_PORT, ONLINE_IP6, "online")
    } else {
        ("redis-target", REDIS_TARGET_PORT, TARGET_IP6, "target")
    };
    start_redis_on(lab, host, name, port, &tmp.sub(dir), &[ip6])
}

/// Redis over IPv6, live: pipelined, benchmark and short connections; the target's data set
/// ends equal to the online one. The control channel runs over IPv6 too (intercept -b
/// 2001:db8::40, tcpcopy -s [2001:db8::40]).
#[test]
#[ignore = "needs root"]
fn ipv6_redis_live() {
    let test = "ipv6_redis_live";
    let (tmp, lab) = lab6(test, "v6redis");
    let online_sock = start_redis6(&lab, ONLINE, &tmp);
    let target_sock = start_redis6(&lab, TARGET, &tmp);
    start_intercept6_on_ipv6(&lab, REDIS_TARGET_PORT);
    let intercept = format!("[{ASSIST_IP6}]");
    start_tcpcopy6_via(&lab, &intercept, REDIS_ONLINE_PORT, REDIS_TARGET_PORT, &[]);
    assert!(
        lab.log("tcpcopy")
            .contains(&format!("connect to remote server([{ASSIST_IP6}]:36524)"))
            && lab
                .log("intercept")
                .contains(&format!("from [{ONLINE_IP6}]:")),
        "control channel over IPv6: {}\n{}",
        lab.log("tcpcopy"),
        lab.log("intercept")
    );
    redis_load6(&lab);
    let online = redis_dump(&online_sock);
    assert_eq!(
        online.get("counter").map(String::as_str),
        Some("\"400\""),
        "online counter"
    );
    expect_redis_data(&lab, test, &target_sock, &online);
}

/// PostgreSQL over IPv6, live: psql creates a table, pgbench inserts rows from several
/// connections; the target ends with the same rows.
#[test]
#[ignore = "needs root"]
fn ipv6_postgres_live() {
    let test = "ipv6_postgres_live";
    let (tmp, lab) = lab6(test, "v6pg");
    let template = pg_template6(&tmp);
    let online = start_pg6(&lab, ONLINE, &template, &tmp);
    let target = start_pg6(&lab, TARGET, &template, &tmp);
    start_intercept6(&lab, PG_TARGET_PORT);
    start_tcpcopy6(&lab, PG_ONLINE_PORT, PG_TARGET_PORT, &[]);
    psql6(&lab, PG_CREATE_TABLE);
    let (created, _) = poll(REPLAY_DEADLINE, || {
        let t = target.try_query("SELECT to_regclass('replay_t') IS NOT NULL");
        (t.as_deref().map(str::trim) == Some("t"), ())
    });
    assert!(
        created,
        "{test}: the replayed CREATE TABLE did not reach the target\n{}\n--- pg-target ---\n{}",
        replay_report(&lab),
        tail(&lab.log("pg-target"), 30)
    );
    pg_inserts6(&lab, &tmp.sub("scripts"));
    let summary = online.query(PG_SUMMARY);
    assert_eq!(
        online.query("SELECT count(*) FROM replay_t").trim(),
        "125",
        "online rows: {summary}"
    );
    let (same, target_summary) = poll(REPLAY_DEADLINE, || {
        let t = target.try_query(PG_SUMMARY).unwrap_or_default();
        (t == summary, t)
    });
    assert!(
        same,
        "{test}: target rows differ:\n online:\n{summary}\n target:\n{target_summary}\n{}",
        replay_report(&lab)
    );
}

/// An intercept without --ipv6 refuses the IPv6 variant: tcpcopy stops with a message that
/// names the intercept and says what to do, exit status 1, and captured nothing.
#[test]
#[ignore = "needs root"]
fn ipv6_refused_by_an_intercept_without_the_option() {
    require_root("ipv6_refused_by_an_intercept_without_the_option");
    let lab = Lab::start();
    lab.enable_ipv6();
    start_intercept(&lab, HTTP_TARGET_PORT);
    let x = format!("{HTTP_ONLINE_PORT}-[{TARGET_IP6}]:{HTTP_TARGET_PORT}");
    lab.spawn(
        ONLINE,
        "tcpcopy",
        &bin("tcpcopy"),
        &["-x", &x, "-s", "198.18.0.40", "-c", FAKES],
    );
    let (ended, _) = poll(Duration::from_secs(15), || (!lab.running("tcpcopy"), ()));
    let code = lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(5));
    let log = lab.log("tcpcopy");
    assert!(ended, "tcpcopy still running: {log}");
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("intercept 198.18.0.40:36524 refuses the IPv6 variant")
            && log.contains("--ipv6"),
        "{log}"
    );
    assert!(
        lab.log("intercept").contains("asks for the IPv6 variant"),
        "{}",
        lab.log("intercept")
    );
}

/// An intercept that reads the records and never answers (what the original intercept does
/// with the IPv6 request: "unknown msg type", ignored): tcpcopy captures nothing, and stops
/// after a few seconds with exit status 1 and a message naming it. What the silent intercept
/// received is the version record and the request, and nothing else (no IPv6 CLIENT_ADD).
#[test]
#[ignore = "needs root"]
fn ipv6_stops_when_the_intercept_never_answers() {
    use std::io::Read;
    require_root("ipv6_stops_when_the_intercept_never_answers");
    let lab = Lab::start();
    lab.enable_ipv6();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let silent = lab.thread_in(ASSIST, move || {
        let l = std::net::TcpListener::bind((ASSIST_IP, INTERCEPT_PORT)).expect("bind");
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut received = Vec::new();
        l.set_nonblocking(true).unwrap();
        let mut conns = Vec::new();
        while Instant::now() < deadline {
            if let Ok((c, _)) = l.accept() {
                c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                conns.push(c);
            }
            let mut open = false;
            for c in conns.iter_mut() {
                let mut buf = [0u8; 512];
                match c.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        received.extend_from_slice(&buf[..n]);
                        open = true;
                    }
                    Err(_) => open = true,
                }
            }
            if !conns.is_empty() && !open {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        received
    });
    ready_rx.recv().unwrap();
    let x = format!("{HTTP_ONLINE_PORT}-[{TARGET_IP6}]:{HTTP_TARGET_PORT}");
    let started = Instant::now();
    lab.spawn(
        ONLINE,
        "tcpcopy",
        &bin("tcpcopy"),
        &["-x", &x, "-s", "198.18.0.40", "-c", FAKES],
    );
    // Online traffic meanwhile: nothing of it may be announced.
    let nginx_dir = TempDir::new("v6silent");
    start_nginx_with(
        &lab,
        ONLINE,
        "nginx-online",
        HTTP_ONLINE_PORT,
        nginx_dir.path(),
        "",
        &format!("listen [{ONLINE_IP6}]:{HTTP_ONLINE_PORT};"),
    );
    must(
        Some(&lab),
        CLIENT,
        10,
        "curl",
        &[
            "-s",
            "-g",
            "-o",
            "/dev/null",
            &format!("http://[{ONLINE_IP6}]:80/"),
        ],
        None,
    );
    let (ended, _) = poll(Duration::from_secs(15), || (!lab.running("tcpcopy"), ()));
    let code = lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(5));
    let log = lab.log("tcpcopy");
    assert!(ended, "tcpcopy still running: {log}");
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("intercept 198.18.0.40:36524 did not answer the IPv6 request"),
        "{log}"
    );
    eprintln!("tcpcopy stopped after {:?}", started.elapsed());
    let received = silent.join().expect("silent intercept");
    // Per tunnel: the version record and the request (14 bytes each), nothing more.
    let records: Vec<&[u8]> = received.chunks(14).collect();
    assert!(
        received.len().is_multiple_of(14)
            && records
                .iter()
                .all(|r| r[6..8] == [0, 6] || r[6..8] == [0x74, 0x36]),
        "the silent intercept got more than version records and requests: {received:02x?}"
    );
}

/// Waits until the target's Redis holds `online`'s data set (bounded), else fails with both
/// sizes and the replay's report.
fn expect_redis_data(lab: &Lab, test: &str, target_sock: &Path, online: &BTreeMap<String, String>) {
    let (same, target) = poll(REPLAY_DEADLINE, || {
        let t = redis_dump(target_sock);
        (t == *online, t)
    });
    assert!(
        same,
        "{test}: target has {} keys (counter {:?}), online {} keys\n{}",
        target.len(),
        target.get("counter"),
        online.len(),
        replay_report(lab)
    );
}

/// The Redis load over IPv6 of [`ipv6_redis_live`] and [`ipv6_redis_offline`]: 200 SETs and
/// 200 INCRs pipelined, 200 INCRs from redis-benchmark's 4 connections, 10 short connections.
fn redis_load6(lab: &Lab) {
    let port = REDIS_ONLINE_PORT.to_string();
    let mut pipe = Vec::new();
    for i in 0..200 {
        pipe.extend(resp_command(&[
            "SET",
            &format!("key:{i}"),
            &format!("v{i}"),
        ]));
        pipe.extend(resp_command(&["INCR", "counter"]));
    }
    let out = must(
        Some(lab),
        CLIENT,
        20,
        "redis-cli",
        &["-h", ONLINE_IP6, "-p", &port, "--pipe"],
        Some(pipe),
    );
    assert!(out.contains("errors: 0, replies: 400"), "redis-cli: {out}");
    must(
        Some(lab),
        CLIENT,
        30,
        "redis-benchmark",
        &[
            "-h", ONLINE_IP6, "-p", &port, "-c", "4", "-n", "200", "-q", "INCR", "counter",
        ],
        None,
    );
    for i in 0..10 {
        must(
            Some(lab),
            CLIENT,
            10,
            "redis-cli",
            &[
                "-h",
                ONLINE_IP6,
                "-p",
                &port,
                "SET",
                &format!("short:{i}"),
                "x",
            ],
            None,
        );
    }
}

/// Offline replay of `file` to `[TARGET_IP6]:target_port` (plus `extra`) until tcpcopy exits
/// by itself, which it must do with status 0 and a complete replay.
fn replay_offline6(lab: &Lab, file: &Path, online_port: u16, target_port: u16, extra: &[&str]) {
    let x = format!("{online_port}-[{TARGET_IP6}]:{target_port}");
    let mut args = vec![
        "-i",
        s(file),
        "-x",
        &x,
        "-s",
        "198.18.0.40",
        "-c",
        FAKES,
        "--offline-tail",
        "10",
    ];
    args.extend_from_slice(extra);
    lab.spawn(ONLINE, "tcpcopy", &bin("tcpcopy"), &args);
    let (ended, _) = poll(Duration::from_secs(90), || (!lab.running("tcpcopy"), ()));
    let code = lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(10));
    let log = lab.log("tcpcopy");
    assert!(
        ended && code == Some(0) && log.contains("offline replay is complete"),
        "offline IPv6 replay did not complete (exit {code:?}): {}",
        tail(&log, 60)
    );
}

/// Redis over IPv6 offline: a tcpdump capture of the load of [`ipv6_redis_live`] replayed
/// with `-i`; the target's data set ends equal to the online one.
#[test]
#[ignore = "needs root"]
fn ipv6_redis_offline() {
    let test = "ipv6_redis_offline";
    let (tmp, lab) = lab6(test, "v6redisoff");
    let online_sock = start_redis6(&lab, ONLINE, &tmp);
    let file = tmp.path().join("redis6.pcap");
    let filter = format!("ip6 and tcp port {REDIS_ONLINE_PORT}");
    start_tcpdump(&lab, ONLINE, "record", &file, &["-i", "eth0"], &filter);
    redis_load6(&lab);
    stop_tcpdump(&lab, "record");
    let online = redis_dump(&online_sock);
    assert_eq!(
        online.get("counter").map(String::as_str),
        Some("\"400\""),
        "online counter"
    );
    let target_sock = start_redis6(&lab, TARGET, &tmp);
    start_intercept6(&lab, REDIS_TARGET_PORT);
    replay_offline6(&lab, &file, REDIS_ONLINE_PORT, REDIS_TARGET_PORT, &[]);
    expect_redis_data(&lab, test, &target_sock, &online);
    eprintln!("{test}: {} keys replayed", online.len());
}

/// psql on the client against online's PostgreSQL over IPv6.
fn psql6(lab: &Lab, sql: &str) -> String {
    let port = PG_ONLINE_PORT.to_string();
    must(
        Some(lab),
        CLIENT,
        30,
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            ONLINE_IP6,
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ],
        None,
    )
}

/// The PostgreSQL inserts of [`ipv6_postgres_live`] and [`ipv6_postgres_offline`] (the table
/// exists): pgbench, 3 connections x 40 prepared INSERTs, then 5 psql INSERTs.
fn pg_inserts6(lab: &Lab, dir: &Path) {
    let script = dir.join("insert.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 1000000000)\nINSERT INTO replay_t (id, kind, n) VALUES (:id, 'bench', :client_id);\n",
    )
    .unwrap();
    let port = PG_ONLINE_PORT.to_string();
    must(
        Some(lab),
        CLIENT,
        60,
        "pgbench",
        &[
            "-h",
            ONLINE_IP6,
            "-p",
            &port,
            "-U",
            "postgres",
            "-n",
            "-M",
            "prepared",
            "-c",
            "3",
            "-j",
            "2",
            "-t",
            "40",
            "-f",
            s(&script),
            "postgres",
        ],
        None,
    );
    for i in 0..5 {
        psql6(
            lab,
            &format!(
                "INSERT INTO replay_t (id, kind, n) VALUES ({}, 'psql', {i})",
                2_000_000_000 + i
            ),
        );
    }
}

/// PostgreSQL on `host` (online or target) listening on its IPv4 and IPv6 addresses.
fn start_pg6(lab: &Lab, host: &str, template: &Path, tmp: &TempDir) -> PgCluster {
    let (name, port, ip4, ip6, dir) = if host == ONLINE {
        ("pg-online", PG_ONLINE_PORT, ONLINE_IP, ONLINE_IP6, "online")
    } else {
        ("pg-target", PG_TARGET_PORT, TARGET_IP, TARGET_IP6, "target")
    };
    let listen = format!("{ip4},{ip6}");
    start_pg_listen(lab, host, name, port, &listen, template, &tmp.sub(dir))
}

/// A PostgreSQL template whose pg_hba.conf trusts the lab's IPv6 addresses.
fn pg_template6(tmp: &TempDir) -> PathBuf {
    chown_postgres(tmp.path());
    let template = tmp.path().join("template");
    pg_initdb(&template);
    use std::io::Write;
    let mut hba = std::fs::OpenOptions::new()
        .append(true)
        .open(template.join("pg_hba.conf"))
        .expect("pg_hba.conf");
    writeln!(hba, "host all all 2001:db8::/32 trust").unwrap();
    template
}

/// PostgreSQL over IPv6 offline: a tcpdump capture of psql's CREATE TABLE, pgbench's and
/// psql's INSERTs replayed with `-i` at the capture's pace; the target ends with the rows.
#[test]
#[ignore = "needs root"]
fn ipv6_postgres_offline() {
    let test = "ipv6_postgres_offline";
    let (tmp, lab) = lab6(test, "v6pgoff");
    let template = pg_template6(&tmp);
    let online = start_pg6(&lab, ONLINE, &template, &tmp);
    let file = tmp.path().join("pg6.pcap");
    let filter = format!("ip6 and tcp port {PG_ONLINE_PORT}");
    start_tcpdump(&lab, ONLINE, "record", &file, &["-i", "eth0"], &filter);
    psql6(&lab, PG_CREATE_TABLE);
    pg_inserts6(&lab, &tmp.sub("scripts"));
    stop_tcpdump(&lab, "record");
    let summary = online.query(PG_SUMMARY);
    assert_eq!(
        online.query("SELECT count(*) FROM replay_t").trim(),
        "125",
        "online rows: {summary}"
    );
    let target = start_pg6(&lab, TARGET, &template, &tmp);
    start_intercept6(&lab, PG_TARGET_PORT);
    replay_offline6(&lab, &file, PG_ONLINE_PORT, PG_TARGET_PORT, &[]);
    let (same, target_summary) = poll(REPLAY_DEADLINE, || {
        let t = target.try_query(PG_SUMMARY).unwrap_or_default();
        (t == summary, t)
    });
    assert!(
        same,
        "{test}: target rows differ:\n online:\n{summary}\n target:\n{target_summary}\n{}",
        replay_report(&lab)
    );
    eprintln!("{test}: 125 rows replayed");
}
