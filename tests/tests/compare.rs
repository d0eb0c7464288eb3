//! `tcpcopy --diff` (issue 19) in the namespace lab: production (online) and target run the
//! same server with a few differences on purpose; tcpcopy pairs each production answer with
//! the target's (intercept --full-payload) and the diff file must list exactly the requests
//! whose answers differ, none other. Needs root, nginx-light, apache2-utils (ab) and
//! redis-server/redis-tools (the packages of scripts/test.sh).

mod real_common;

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use real_common::*;
use serde_json::Value;
use tc_e2e::lab::*;

const METRICS_PORT: u16 = 9419;
/// Requests of the identical-servers run (the 10k), from 50 keep-alive clients: the
/// replay answers one request per connection at a time, and each of these answers, shorter
/// on the target (no version in `Server:`), ends after the 20 ms quiet period: 200 per
/// connection take ~5 s (measured: 10,000 compared 5.1 s after ab started; without --diff
/// 4.7 s).
const N_SAME: usize = 10_000;

fn start_intercept_full(lab: &Lab, target_port: u16) {
    start_intercept_with(lab, target_port, &["--full-payload"]);
}

/// tcpcopy with `--diff` on online, its metrics on 127.0.0.1 (in online's namespace).
fn start_tcpcopy_diff(lab: &Lab, online_port: u16, target_port: u16, diff: &Path, extra: &[&str]) {
    let x = format!("{online_port}-{TARGET_IP}:{target_port}");
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let mut args = vec![
        "-s",
        "198.18.0.40",
        "-x",
        &x,
        "-c",
        "203.0.113.x",
        "--diff",
        s(diff),
        "--metrics",
        &metrics,
    ];
    args.extend_from_slice(extra);
    start_tcpcopy_args(lab, &args);
    let (granted, _) = poll(Duration::from_secs(10), || {
        (lab.log("tcpcopy").contains("grants full payloads"), ())
    });
    assert!(granted, "no grant: {}", lab.log("tcpcopy"));
}

/// A counter of tcpcopy's metrics (0 when absent).
fn metric(lab: &Lab, name: &str) -> u64 {
    let addr = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
    let text = lab
        .in_ns(ONLINE, || tc_test_support::http_get(addr, "/metrics"))
        .map(|(_, body)| body)
        .unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Waits until `expected` responses were compared or reported unpaired, stops tcpcopy and
/// returns the diff file's objects and the report.
fn finish(lab: &Lab, expected: u64, diff: &Path, report: &Path) -> (Vec<Value>, Value) {
    // Done when the count reached `expected` and stayed for a second (clients such as
    // redis-benchmark send a few requests of their own).
    let mut last = (0, Instant::now());
    let (done, seen) = poll(Duration::from_secs(40), || {
        let n =
            metric(lab, "tcpcopy_diff_compared_total") + metric(lab, "tcpcopy_diff_unpaired_total");
        if n != last.0 {
            last = (n, Instant::now());
        }
        (
            n >= expected && last.1.elapsed() >= Duration::from_secs(1),
            n,
        )
    });
    let code = lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(15));
    assert!(
        done,
        "{seen} of {expected} responses compared; tcpcopy exit {code:?}\n{}\n--- intercept ---\n{}",
        tail(&lab.log("tcpcopy"), 40),
        tail(&lab.log("intercept"), 10)
    );
    let text = std::fs::read_to_string(diff).expect("diff file");
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report).expect("report")).expect("json");
    (lines, report)
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join("www").join(name), text).unwrap();
}

/// nginx on online:80 and target:8080 (the target without version in `Server:`).
fn nginx_pair(lab: &Lab, tmp: &TempDir) -> (PathBuf, PathBuf) {
    let online = tmp.sub("online");
    let target = tmp.sub("target");
    start_nginx_with(
        lab,
        ONLINE,
        "nginx-online",
        HTTP_ONLINE_PORT,
        &online,
        "",
        "",
    );
    start_nginx_with(
        lab,
        TARGET,
        "nginx-target",
        HTTP_TARGET_PORT,
        &target,
        "server_tokens off;",
        "",
    );
    (online, target)
}

fn ab(lab: &Lab, n: usize, c: usize, path: &str) {
    let url = format!("http://{ONLINE_IP}:{HTTP_ONLINE_PORT}{path}");
    let (n, c) = (n.to_string(), c.to_string());
    // ab counts a 404 as a "Non-2xx" response, not a failure.
    let out = must(
        Some(lab),
        CLIENT,
        60,
        "ab",
        &["-k", "-n", &n, "-c", &c, &url],
        None,
    );
    assert!(out.contains("Failed requests:        0"), "ab {url}: {out}");
}

#[test]
#[ignore = "needs root"]
fn nginx_differences_are_exactly_the_requests_to_the_changed_paths() {
    require_root("nginx_differences_are_exactly_the_requests_to_the_changed_paths");
    let started = Instant::now();
    let tmp = TempDir::new("diff-nginx");
    let lab = Lab::start();
    let (online, target) = nginx_pair(&lab, &tmp);
    for dir in [&online, &target] {
        write(dir, "same.txt", "the same on both\n");
    }
    write(&online, "body1.txt", "production body one\n");
    write(&target, "body1.txt", "target body, one\n");
    write(&online, "body2.html", "<p>two</p>\n");
    write(&target, "body2.html", "<p>2</p>\n");
    write(&online, "gone.txt", "only production has it\n");
    start_intercept_full(&lab, HTTP_TARGET_PORT);
    let diff = tmp.path().join("diff.jsonl");
    let report = tmp.path().join("report.json");
    start_tcpcopy_diff(
        &lab,
        HTTP_ONLINE_PORT,
        HTTP_TARGET_PORT,
        &diff,
        &["--report", s(&report)],
    );

    let plan = [
        ("/same.txt", 300, 4),
        ("/index.html", 200, 4),
        ("/body1.txt", 40, 2),
        ("/body2.html", 25, 1),
        ("/gone.txt", 15, 3),
    ];
    for (path, n, c) in plan {
        ab(&lab, n, c, path);
    }
    let total: u64 = plan.iter().map(|p| p.1 as u64).sum();
    let (lines, report) = finish(&lab, total, &diff, &report);

    let differences: Vec<&Value> = lines.iter().filter(|v| v["kind"] != "unpaired").collect();
    let mut by_path = std::collections::BTreeMap::<String, (usize, Vec<String>)>::new();
    for d in &differences {
        let req = d["request_excerpt"].as_str().unwrap_or("");
        let path = req.split_whitespace().nth(1).unwrap_or("?").to_string();
        let e = by_path.entry(path).or_default();
        e.0 += 1;
        e.1.push(d["kind"].as_str().unwrap_or("").to_string());
    }
    let counts: Vec<(String, usize)> = by_path.iter().map(|(p, (n, _))| (p.clone(), *n)).collect();
    assert_eq!(
        counts,
        vec![
            ("/body1.txt".to_string(), 40),
            ("/body2.html".to_string(), 25),
            ("/gone.txt".to_string(), 15),
        ],
        "differences by path; e.g. {:?}",
        differences.first()
    );
    assert!(by_path["/body1.txt"].1.iter().all(|k| k == "body"));
    assert!(by_path["/gone.txt"].1.iter().all(|k| k == "status"));
    let d = &report["diff"];
    assert_eq!(d["different"], 80, "{d}");
    assert_eq!(d["different_by_kind"]["status"], 15, "{d}");
    assert_eq!(d["different_by_kind"]["body"], 65, "{d}");
    assert_eq!(
        d["compared"].as_u64().unwrap() + d["unpaired"].as_u64().unwrap(),
        total,
        "{d}"
    );
    assert_eq!(
        d["equal"].as_u64().unwrap(),
        d["compared"].as_u64().unwrap() - 80
    );
    eprintln!("nginx diff: {d} in {:?}", started.elapsed());
}

#[test]
#[ignore = "needs root"]
fn identical_servers_show_no_difference_with_date_and_server_differing() {
    require_root("identical_servers_show_no_difference_with_date_and_server_differing");
    let started = Instant::now();
    let tmp = TempDir::new("diff-same");
    let lab = Lab::start();
    nginx_pair(&lab, &tmp);
    start_intercept_full(&lab, HTTP_TARGET_PORT);
    let diff = tmp.path().join("diff.jsonl");
    let report = tmp.path().join("report.json");
    start_tcpcopy_diff(
        &lab,
        HTTP_ONLINE_PORT,
        HTTP_TARGET_PORT,
        &diff,
        &["--report", s(&report)],
    );
    ab(&lab, N_SAME, 50, "/index.html");
    let (lines, report) = finish(&lab, N_SAME as u64, &diff, &report);
    let d = &report["diff"];
    let differences: Vec<&Value> = lines.iter().filter(|v| v["kind"] != "unpaired").collect();
    assert!(
        differences.is_empty(),
        "{} differences, e.g. {:?}",
        differences.len(),
        differences.first()
    );
    assert_eq!(d["different"], 0, "{d}");
    assert_eq!(d["compared"], N_SAME as u64, "{d}");
    assert_eq!(d["unpaired"], 0, "{d}");
    assert_eq!(d["production_capture_drops"], 0, "{d}");
    eprintln!("identical: {d} in {:?}", started.elapsed());
}

#[test]
#[ignore = "needs root"]
fn redis_differences_are_exactly_the_gets_of_the_changed_key() {
    require_root("redis_differences_are_exactly_the_gets_of_the_changed_key");
    let started = Instant::now();
    let tmp = TempDir::new("diff-redis");
    let lab = Lab::start();
    let (online_sock, target_sock) = start_redis_pair(&lab, &tmp);
    for sock in [&online_sock, &target_sock] {
        redis_local(sock, &["SET", "same", "value"]);
    }
    redis_local(&online_sock, &["SET", "changed", "production"]);
    redis_local(&target_sock, &["SET", "changed", "target!"]);
    start_intercept_full(&lab, REDIS_TARGET_PORT);
    let diff = tmp.path().join("diff.jsonl");
    let report = tmp.path().join("report.json");
    start_tcpcopy_diff(
        &lab,
        REDIS_ONLINE_PORT,
        REDIS_TARGET_PORT,
        &diff,
        &["--report", s(&report), "--diff-protocol", "redis"],
    );
    let host = ONLINE_IP.to_string();
    let port = REDIS_ONLINE_PORT.to_string();
    let bench = |n: &str, key: &str| {
        must(
            Some(&lab),
            CLIENT,
            30,
            "redis-benchmark",
            &[
                "-h", &host, "-p", &port, "-c", "2", "-n", n, "-q", "GET", key,
            ],
            None,
        );
    };
    bench("300", "same");
    bench("120", "changed");
    bench("100", "same");
    // redis-benchmark asks for a few CONFIG values first, on connections of its own.
    let (lines, report) = finish(&lab, 520, &diff, &report);
    let differences: Vec<&Value> = lines.iter().filter(|v| v["kind"] != "unpaired").collect();
    let not_changed: Vec<&&Value> = differences
        .iter()
        .filter(|v| {
            !v["request_excerpt"]
                .as_str()
                .unwrap_or("")
                .contains("changed")
        })
        .collect();
    assert!(
        not_changed.is_empty(),
        "unexpected: {:?}",
        not_changed.first()
    );
    assert_eq!(differences.len(), 120, "e.g. {:?}", differences.first());
    assert!(
        differences.iter().all(|v| v["kind"] == "value"),
        "{:?}",
        differences[0]
    );
    let d = &report["diff"];
    assert_eq!(d["different"], 120, "{d}");
    eprintln!("redis diff: {d} in {:?}", started.elapsed());
}

/// Redis pipelines (`redis-benchmark -P 16`) on identical servers: paired by position
/// (`--diff-protocol redis`), no reply differs, whatever segments each side's pipelines
/// and answers came in.
#[test]
#[ignore = "needs root"]
fn redis_pipelines_on_identical_servers_show_no_difference() {
    require_root("redis_pipelines_on_identical_servers_show_no_difference");
    let started = Instant::now();
    let tmp = TempDir::new("diff-pipeline");
    let lab = Lab::start();
    let (online_sock, target_sock) = start_redis_pair(&lab, &tmp);
    let socks = [online_sock, target_sock];
    for sock in &socks {
        redis_local(sock, &["SET", "key:__rand_int__", "value"]);
    }
    start_intercept_full(&lab, REDIS_TARGET_PORT);
    let diff = tmp.path().join("diff.jsonl");
    let report = tmp.path().join("report.json");
    start_tcpcopy_diff(
        &lab,
        REDIS_ONLINE_PORT,
        REDIS_TARGET_PORT,
        &diff,
        &["--report", s(&report), "--diff-protocol", "redis"],
    );
    let host = ONLINE_IP.to_string();
    let port = REDIS_ONLINE_PORT.to_string();
    // GETs of one key (the same on both), 16 per pipeline from 4 clients, then PINGs; ~500
    // per connection, within what waits for its pair by position (4096 replies a side).
    for test in ["get", "ping_mbulk"] {
        must(
            Some(&lab),
            CLIENT,
            30,
            "redis-benchmark",
            &[
                "-h", &host, "-p", &port, "-c", "4", "-n", "2000", "-P", "16", "-q", "-t", test,
            ],
            None,
        );
    }
    // redis-benchmark asks for a few CONFIG values of its own first.
    let (lines, report) = finish(&lab, 4000, &diff, &report);
    let d = &report["diff"];
    let differences: Vec<&Value> = lines.iter().filter(|v| v["kind"] != "unpaired").collect();
    assert!(
        differences.is_empty(),
        "{} differences, e.g. {:?}",
        differences.len(),
        differences.first()
    );
    assert_eq!(d["different"], 0, "{d}");
    assert_eq!(d["unpaired"], 0, "{d}");
    assert!(d["compared"].as_u64().unwrap() >= 4000, "{d}");
    eprintln!("redis pipelines: {d} in {:?}", started.elapsed());
}

/// Offline, with both directions in the file: tcpdump records ab's requests and online's
/// answers on online's interface; tcpcopy replays the file (`-i FILE --diff`) to a target
/// that differs on one path, and takes production's answers from the file: the diff lists
/// exactly the requests to that path.
#[test]
#[ignore = "needs root"]
fn offline_capture_of_both_directions_is_compared() {
    require_root("offline_capture_of_both_directions_is_compared");
    let started = Instant::now();
    let tmp = TempDir::new("diff-offline");
    let lab = Lab::start();
    let (online, target) = nginx_pair(&lab, &tmp);
    for dir in [&online, &target] {
        write(dir, "same.txt", "the same on both\n");
    }
    write(&online, "changed.txt", "production's version\n");
    write(&target, "changed.txt", "the target's version\n");
    // Recorded as an operator would: both directions, whole packets (the lab's are at most
    // 1514 bytes: no offloads), every packet written at once.
    let pcap = tmp.path().join("both.pcap");
    let filter = format!("tcp port {HTTP_ONLINE_PORT}");
    start_tcpdump(&lab, ONLINE, "tcpdump", &pcap, &["-i", "eth0"], &filter);
    let plan = [
        ("/same.txt", 60, 2),
        ("/changed.txt", 25, 1),
        ("/index.html", 40, 2),
    ];
    for (path, n, c) in plan {
        ab(&lab, n, c, path);
    }
    // Done when the file stops growing (tcpdump -U writes each packet as it comes).
    let mut last = (0, Instant::now());
    let (quiet, _) = poll(Duration::from_secs(10), || {
        let n = std::fs::metadata(&pcap).map(|m| m.len()).unwrap_or(0);
        if n != last.0 {
            last = (n, Instant::now());
        }
        (n > 0 && last.1.elapsed() >= Duration::from_millis(600), ())
    });
    assert!(quiet, "the capture keeps growing");
    stop_tcpdump(&lab, "tcpdump");

    start_intercept_full(&lab, HTTP_TARGET_PORT);
    let diff = tmp.path().join("diff.jsonl");
    let report = tmp.path().join("report.json");
    let x = format!("{HTTP_ONLINE_PORT}-{TARGET_IP}:{HTTP_TARGET_PORT}");
    let args = [
        "-i",
        s(&pcap),
        "-x",
        &x,
        "-s",
        "198.18.0.40",
        "-c",
        "203.0.113.x",
        "--offline-tail",
        "5",
        "--diff",
        s(&diff),
        "--report",
        s(&report),
    ];
    lab.spawn(ONLINE, "tcpcopy", &bin("tcpcopy"), &args);
    let (ended, _) = poll(Duration::from_secs(60), || (!lab.running("tcpcopy"), ()));
    let code = lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(10));
    let log = lab.log("tcpcopy");
    assert!(
        ended && code == Some(0),
        "offline tcpcopy exit {code:?}:\n{}",
        tail(&log, 40)
    );
    let lines: Vec<Value> = std::fs::read_to_string(&diff)
        .expect("diff file")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let d = &report["diff"];
    let total: u64 = plan.iter().map(|p| p.1 as u64).sum();
    assert_eq!(d["compared"], total, "{d}\n{}", tail(&log, 30));
    assert_eq!(d["unpaired"], 0, "{d}");
    assert_eq!(d["different"], 25, "{d}");
    assert_eq!(d["different_by_kind"]["body"], 25, "{d}");
    assert_eq!(lines.len(), 25, "{lines:?}");
    for v in &lines {
        let req = v["request_excerpt"].as_str().unwrap_or("");
        assert!(req.starts_with("GET /changed.txt "), "{v}");
        assert!(
            v["production"]
                .as_str()
                .unwrap_or("")
                .contains("production's")
                && v["target"].as_str().unwrap_or("").contains("target's"),
            "{v}"
        );
    }
    eprintln!("offline diff: {d} in {:?}", started.elapsed());
}

/// nginx for many connections on `host`:`port` (15,000 worker_connections, 20,000 open
/// files (the hard limit here), listen backlog 16384 with the namespace's somaxconn to match; no access log).
fn start_nginx_many(lab: &Lab, host: &str, name: &str, port: u16, dir: &Path) {
    let ip = if host == ONLINE { ONLINE_IP } else { TARGET_IP };
    for sysctl in [
        "net.core.somaxconn=16384",
        "net.ipv4.tcp_max_syn_backlog=16384",
    ] {
        must(Some(lab), host, 10, "sysctl", &["-qw", sysctl], None);
    }
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    // 2 KiB answers: production's run ahead of the target's, 20 MB for 10,000 connections
    // if nothing bounded them.
    std::fs::write(www.join("index.html"), "0123456789abcdef".repeat(128)).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes 1;\n\
             worker_rlimit_nofile 20000;\n\
             pid {dir}/nginx.pid;\n\
             error_log stderr warn;\n\
             events {{ worker_connections 15000; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {dir};\n\
               keepalive_requests 100000;\n\
               keepalive_timeout 120s;\n\
               server {{ listen {ip}:{port} backlog=16384; root {www}; }}\n\
             }}\n",
            dir = s(dir),
            www = s(&www),
        ),
    )
    .unwrap();
    let prefix = format!("{}/", s(dir));
    lab.spawn(
        host,
        name,
        &PathBuf::from("/usr/sbin/nginx"),
        &["-p", &prefix, "-e", "stderr", "-c", s(&conf)],
    );
    wait_tcp(lab, host, SocketAddrV4::new(ip, port), name);
}

/// Raises this process's soft open-files limit to its hard limit (the client's sockets);
/// the hard limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_max
}

/// One keep-alive request for /index.html and its whole answer (by Content-Length).
fn ask(conn: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::{Read, Write};
    conn.write_all(b"GET /index.html HTTP/1.1\r\nHost: online\r\n\r\n")?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return Ok(());
        }
    }
}

/// `VmHWM` (peak resident size) of `pid`, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Concurrent keep-alive connections held by the client (the hard open-files limit here is
/// 20,000, raised neither for the test process nor for nginx: 10,000 fit).
const N_CONNS: usize = 10_000;
/// Requests per connection, one connection after the other: each connection asks once a
/// round.
const ROUNDS: usize = 2;
/// Requests a second, all connections together.
const RATE: f64 = 2500.0;
/// The caps of the run: 4 KiB per connection, 2 MiB in all.
const SESSION_KB: &str = "4";
const MEMORY_MB: u64 = 2;
/// What tcpcopy's peak RSS may grow by during the run, besides the held answers (at most
/// MEMORY_MB): the replay of 10,000 sessions (measured without --diff: 17.3 MiB, VmHWM
/// 27.4 MiB from 10.1 MiB at start), and the --diff bookkeeping of 10,000 connections (pairer,
/// request excerpts, maps: ~2.6 KiB each, 26 MiB measured) at most 3 KiB each. The capture
/// buffer of production's answers (32 MiB) is in the start figure.
const REPLAY_GROWTH_KIB: u64 = 24 * 1024;
const DIFF_PER_CONN_KIB: u64 = 3;

/// The issue's "10k concurrent keep-alive sessions: tcpcopy RSS stays under the configured
/// caps". 10,000 connections held open at once, 2 requests each for a 2 KiB answer (paced
/// at 2500/s: production's answers then fit the capture's buffer even with the other tests
/// of this file running), production's answers running ahead of the target's. Measured
/// (VmHWM from /proc, start -> peak): 43.5 -> 87.6 MiB (allowed 97.7), the held-bytes gauge
/// at most 2 MiB, 76,134 cap hits, 10.8 s. Without the global cap nothing is hit (the test
/// fails there); with 4 KiB answers and caps of 4 KiB / 64 MiB tcpcopy peaked at 137.6 MiB
/// (40.8 MB held), with the default caps at 213.1 MiB (98.8 MB held).
#[test]
#[ignore = "needs root"]
fn ten_thousand_keep_alive_sessions_stay_under_the_diff_caps() {
    require_root("ten_thousand_keep_alive_sessions_stay_under_the_diff_caps");
    let started = Instant::now();
    let nofile = raise_nofile();
    // The client holds N_CONNS sockets in this process, nginx as many in each namespace.
    assert!(
        nofile >= N_CONNS as u64 + 1000,
        "open files limited to {nofile}: {N_CONNS} connections cannot be held"
    );
    let tmp = TempDir::new("diff-many");
    let lab = Lab::start();
    for (host, name, port) in [
        (ONLINE, "nginx-online", HTTP_ONLINE_PORT),
        (TARGET, "nginx-target", HTTP_TARGET_PORT),
    ] {
        start_nginx_many(&lab, host, name, port, &tmp.sub(name));
    }
    let diff = tmp.path().join("diff.jsonl");
    let report = tmp.path().join("report.json");
    start_intercept_full(&lab, HTTP_TARGET_PORT);
    let memory_mb = MEMORY_MB.to_string();
    start_tcpcopy_diff(
        &lab,
        HTTP_ONLINE_PORT,
        HTTP_TARGET_PORT,
        &diff,
        &[
            "--report",
            s(&report),
            "--diff-session-kb",
            SESSION_KB,
            "--diff-memory-mb",
            &memory_mb,
        ],
    );
    let pid = lab.pid("tcpcopy").expect("tcpcopy pid");
    let start_kib = vm_hwm_kib(pid);
    let client = lab.thread_in(CLIENT, move || {
        let addr = SocketAddr::from((ONLINE_IP, HTTP_ONLINE_PORT));
        let mut conns = Vec::with_capacity(N_CONNS);
        for _ in 0..N_CONNS {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = c.set_nodelay(true);
                    conns.push(c);
                }
                Err(e) => return Err(format!("connection {}: {e}", conns.len() + 1)),
            }
        }
        let connected_at = Instant::now();
        let mut buf = Vec::with_capacity(8192);
        let mut answered = 0usize;
        // Paced (a load, not a wait): production's answers come at most RATE a second,
        // which tcpcopy's capture of them absorbs in the debug build.
        for _ in 0..ROUNDS {
            for c in conns.iter_mut() {
                ask(c, &mut buf).map_err(|e| format!("request {}: {e}", answered + 1))?;
                answered += 1;
                if answered.is_multiple_of(500) {
                    let due = connected_at + Duration::from_secs_f64(answered as f64 / RATE);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            }
        }
        // Closed: the last answer of each connection is complete at its end.
        let held = conns.len();
        drop(conns);
        Ok((held, answered))
    });
    let expected = (N_CONNS * ROUNDS) as u64;
    let mut max_held = 0;
    let (done, seen) = poll(Duration::from_secs(60), || {
        max_held = max_held.max(metric(&lab, "tcpcopy_diff_held_bytes"));
        let n = metric(&lab, "tcpcopy_diff_compared_total")
            + metric(&lab, "tcpcopy_diff_unpaired_total");
        (n >= expected || client.is_finished() && n == 0, n)
    });
    let peak_kib = vm_hwm_kib(pid);
    let client = client.join().expect("client thread");
    let code = lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(30));
    let log = tail(&lab.log("tcpcopy"), 30);
    assert_eq!(client, Ok((N_CONNS, N_CONNS * ROUNDS)), "the client");
    assert!(
        done,
        "{seen} of {expected} answers compared; exit {code:?}\n{log}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let d = &report["diff"];
    assert_eq!(d["connections"], N_CONNS as u64, "{d}");
    assert!(
        d["memory_cap_hits"].as_u64().unwrap() > 0,
        "cap hits counted: {d}"
    );
    assert!(max_held <= MEMORY_MB << 20, "held {max_held} bytes: {d}");
    let allowed_kib =
        start_kib + REPLAY_GROWTH_KIB + DIFF_PER_CONN_KIB * N_CONNS as u64 + (MEMORY_MB << 10);
    assert!(
        peak_kib <= allowed_kib,
        "tcpcopy's VmHWM {peak_kib} KiB over {allowed_kib} KiB (start {start_kib} KiB)\n{log}"
    );
    eprintln!(
        "10k sessions: VmHWM {start_kib} -> {peak_kib} KiB (allowed {allowed_kib}), held at most {max_held} bytes, cap hits {}, in {:?}",
        d["memory_cap_hits"],
        started.elapsed()
    );
}
