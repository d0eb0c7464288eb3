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
    let filter = format!("tcp and src port {target_port}");
    lab.spawn(
        ASSIST,
        "intercept",
        &bin("intercept"),
        &[
            "-F",
            &filter,
            "-i",
            "eth0",
            "--allow",
            "198.18.0.20",
            "--full-payload",
        ],
    );
    assert!(
        lab.wait_listening(
            ONLINE,
            SocketAddrV4::new(ASSIST_IP, INTERCEPT_PORT),
            Duration::from_secs(10)
        ),
        "intercept does not listen: {}",
        lab.log("intercept")
    );
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
    let online_sock = start_redis(
        &lab,
        ONLINE,
        "redis-online",
        REDIS_ONLINE_PORT,
        &tmp.sub("online"),
    );
    let target_sock = start_redis(
        &lab,
        TARGET,
        "redis-target",
        REDIS_TARGET_PORT,
        &tmp.sub("target"),
    );
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
