//! Real servers and real clients through tcpcopy + intercept in the namespace lab (lab.md):
//! Redis, PostgreSQL and nginx run on online and on target (Debian packages), their own
//! clients (redis-cli / redis-benchmark, psql / pgbench, ab / curl) load the online server
//! from the client namespace, and the replayed traffic must leave the target in the same
//! state as the online server: same keys and counters, same table and rows, same requests
//! in the access log. Needs root and the packages of scripts/test.sh.

mod real_common;

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::{Duration, Instant};

use real_common::*;
use tc_e2e::lab::*;

#[test]
#[ignore = "needs root"]
fn redis_target_ends_with_the_online_data_set() {
    require_root("redis_target_ends_with_the_online_data_set");
    let started = Instant::now();
    let tmp = TempDir::new("redis");
    let lab = Lab::start();
    let (online_sock, target_sock) = start_redis_pair(&lab, &tmp);
    start_intercept(&lab, REDIS_TARGET_PORT);
    maybe_capture(&lab, REDIS_ONLINE_PORT, REDIS_TARGET_PORT);
    start_tcpcopy(&lab, REDIS_ONLINE_PORT, REDIS_TARGET_PORT);

    let online = SocketAddrV4::new(ONLINE_IP, REDIS_ONLINE_PORT);
    let host = ONLINE_IP.to_string();
    let port = REDIS_ONLINE_PORT.to_string();
    let long_n = 100;
    // A long-lived connection running while the other clients come and go.
    let long = lab.thread_in(CLIENT, move || redis_long_lived(online, long_n));

    // Pipelined by redis-cli --pipe: 300 SETs and 50 INCRs in one stream.
    let mut pipe = Vec::new();
    for i in 0..300 {
        pipe.extend(resp_command(&[
            "SET",
            &format!("key:{i}"),
            &format!("value:{i}"),
        ]));
        if i % 6 == 0 {
            pipe.extend(resp_command(&["INCR", "counter"]));
        }
    }
    let out = must(
        Some(&lab),
        CLIENT,
        20,
        "redis-cli",
        &["-h", &host, "-p", &port, "--pipe"],
        Some(pipe),
    );
    assert!(
        out.contains("errors: 0, replies: 350"),
        "redis-cli --pipe: {out}"
    );
    // Pipelined by redis-benchmark: 4 connections, 16 commands per round trip, random keys.
    // One value for all: two connections may set the same random key, and the order of
    // independent connections on the target need not be the online order.
    must(
        Some(&lab),
        CLIENT,
        30,
        "redis-benchmark",
        &[
            "-h",
            &host,
            "-p",
            &port,
            "-c",
            "4",
            "-n",
            "400",
            "-P",
            "16",
            "-r",
            "100000",
            "-q",
            "SET",
            "bench:__rand_int__",
            "bench-value",
        ],
        None,
    );
    // Not pipelined: 5 connections of INCRs.
    must(
        Some(&lab),
        CLIENT,
        30,
        "redis-benchmark",
        &[
            "-h", &host, "-p", &port, "-c", "5", "-n", "200", "-q", "INCR", "counter",
        ],
        None,
    );
    // Short connections: one command each.
    for i in 0..20 {
        must(
            Some(&lab),
            CLIENT,
            10,
            "redis-cli",
            &[
                "-h",
                &host,
                "-p",
                &port,
                "SET",
                &format!("short:{i}"),
                &format!("value:{i}"),
            ],
            None,
        );
    }
    long.join()
        .expect("long-lived client thread")
        .expect("long-lived connection");
    let clients_done = started.elapsed();

    let expected_counter = 50 + 200 + long_n;
    let online_data = redis_dump(&online_sock);
    assert_eq!(
        online_data.get("counter").map(String::as_str),
        Some(format!("\"{expected_counter}\"").as_str()),
        "online counter"
    );
    // key:N, short:N, long:N, counter (and the random bench: keys).
    let fixed_keys = 300 + 20 + long_n + 1;
    assert!(online_data.len() >= fixed_keys, "online keys");

    let (same, target_data) = poll(REPLAY_DEADLINE, || {
        let t = redis_dump(&target_sock);
        (t == online_data, t)
    });
    if !same {
        let missing: Vec<&String> = online_data
            .keys()
            .filter(|k| !target_data.contains_key(*k))
            .take(10)
            .collect();
        let differ: Vec<(&String, &String, Option<&String>)> = online_data
            .iter()
            .filter(|(k, v)| target_data.get(*k).is_some_and(|t| t != *v))
            .take(10)
            .map(|(k, v)| (k, v, target_data.get(k)))
            .collect();
        panic!(
            "target data set differs after {REPLAY_DEADLINE:?}: online {} keys, target {} keys, \
             counter online {:?} target {:?}; missing e.g. {missing:?}; different e.g. \
             {differ:?}\n{}\n--- target INFO commandstats ---\n{}",
            online_data.len(),
            target_data.len(),
            online_data.get("counter"),
            target_data.get("counter"),
            replay_report(&lab),
            redis_local(&target_sock, &["INFO", "commandstats"]),
        );
    }
    eprintln!(
        "redis: {} keys, counter {expected_counter}; clients took {clients_done:?}, \
         identical after {:?}",
        online_data.len(),
        started.elapsed()
    );
}

#[test]
#[ignore = "needs root"]
fn postgres_target_ends_with_the_online_rows() {
    require_root("postgres_target_ends_with_the_online_rows");
    let started = Instant::now();
    let tmp = TempDir::new("pg");
    chown_postgres(tmp.path());
    let template = tmp.path().join("template");
    pg_initdb(&template);
    let lab = Lab::start();
    let (online, target) = start_pg_pair(&lab, &template, &tmp);
    start_intercept(&lab, PG_TARGET_PORT);
    maybe_capture(&lab, PG_ONLINE_PORT, PG_TARGET_PORT);
    start_tcpcopy(&lab, PG_ONLINE_PORT, PG_TARGET_PORT);

    let psql = |sql: Option<&str>, input: Option<Vec<u8>>| online_psql(&lab, sql, input);
    psql(Some(PG_CREATE_TABLE), None);
    // The replayed CREATE TABLE must reach the target before the replayed INSERTs: the
    // connections are independent, as they would be in production.
    let (created, _) = poll(REPLAY_DEADLINE, || {
        let t = target.try_query("SELECT to_regclass('replay_t') IS NOT NULL");
        (t.as_deref().map(str::trim) == Some("t"), ())
    });
    assert!(
        created,
        "the replayed CREATE TABLE did not reach the target within {REPLAY_DEADLINE:?}\n{}\n\
         --- pg-target log ---\n{}",
        replay_report(&lab),
        lab.log("pg-target")
    );

    pg_insert_workload(
        &lab,
        &tmp.sub("scripts"),
        ("4", "60"),
        ("3", "40"),
        ("2", "30"),
        50,
    );
    let clients_done = started.elapsed();

    let online_summary = online.query(PG_SUMMARY);
    let online_rows = online.query("SELECT count(*) FROM replay_t");
    assert_eq!(online_rows.trim(), "470", "online rows: {online_summary}");

    let (same, target_summary) = poll(REPLAY_DEADLINE, || {
        let t = target.try_query(PG_SUMMARY).unwrap_or_default();
        (t == online_summary, t)
    });
    assert!(
        same,
        "target rows differ after {REPLAY_DEADLINE:?}:\n online:\n{online_summary}\n target:\n\
         {target_summary}\n{}\n--- pg-target log (tail) ---\n{}",
        replay_report(&lab),
        tail(&lab.log("pg-target"), 40)
    );
    eprintln!(
        "postgres: {} rows; clients took {clients_done:?}, identical after {:?}",
        online_rows.trim(),
        started.elapsed()
    );
}

/// What a workload of the HTTP tests gets: the lab, the online base URL, a scratch directory.
struct HttpClient<'a> {
    lab: &'a Lab,
    base: String,
    tmp: &'a Path,
}

impl HttpClient<'_> {
    /// `ab` from the client namespace; every request must succeed.
    fn ab(&self, args: &[&str]) {
        let out = must(Some(self.lab), CLIENT, 60, "ab", args, None);
        assert!(
            out.contains("Failed requests:        0"),
            "ab {args:?}: {out}"
        );
    }
}

/// nginx on online:80 and target:8080, intercept and tcpcopy; `workload` loads the online
/// server and returns the number of requests it made. The target's access log must end with
/// the same requests (method, URL, status, bytes sent) as the online's.
fn http_case(test: &str, workload: impl FnOnce(&HttpClient) -> usize) {
    require_root(test);
    let started = Instant::now();
    let tmp = TempDir::new("http");
    let lab = Lab::start();
    let online_log = start_nginx(
        &lab,
        ONLINE,
        "nginx-online",
        HTTP_ONLINE_PORT,
        &tmp.sub("online"),
    );
    let target_log = start_nginx(
        &lab,
        TARGET,
        "nginx-target",
        HTTP_TARGET_PORT,
        &tmp.sub("target"),
    );
    // wait_tcp's probes send no request: nginx logs nothing for them.
    start_intercept(&lab, HTTP_TARGET_PORT);
    maybe_capture(&lab, HTTP_ONLINE_PORT, HTTP_TARGET_PORT);
    start_tcpcopy(&lab, HTTP_ONLINE_PORT, HTTP_TARGET_PORT);

    let client = HttpClient {
        lab: &lab,
        base: format!("http://{ONLINE_IP}:{HTTP_ONLINE_PORT}"),
        tmp: tmp.path(),
    };
    let expected = workload(&client);
    let clients_done = started.elapsed();

    let (settled, (online_n, online_reqs)) = poll(Duration::from_secs(5), || {
        let l = access_log(&online_log);
        (l.0 >= expected, l)
    });
    assert!(settled, "online served {online_n} of {expected} requests");
    assert_eq!(online_n, expected, "online requests");

    let (same, (target_n, target_reqs)) = poll(REPLAY_DEADLINE, || {
        let l = access_log(&target_log);
        (l.1 == online_reqs, l)
    });
    if !same {
        let differ: Vec<String> = online_reqs
            .iter()
            .filter(|(k, v)| target_reqs.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: online {v}, target {:?}", target_reqs.get(k)))
            .chain(
                target_reqs
                    .iter()
                    .filter(|(k, _)| !online_reqs.contains_key(*k))
                    .map(|(k, v)| format!("{k}: online 0, target {v}")),
            )
            .take(10)
            .collect();
        panic!(
            "{test}: target served {target_n} requests, online {online_n} after \
             {REPLAY_DEADLINE:?}; differences e.g. {differ:?}\n{}\n--- nginx-target log, tail \
             ---\n{}",
            replay_report(&lab),
            tail(&lab.log("nginx-target"), 20)
        );
    }
    for ip in access_log_clients(&target_log) {
        assert!(
            ip.starts_with("203.0.113."),
            "target request from {ip} (not a -c address)"
        );
    }
    eprintln!(
        "{test}: {online_n} requests; clients took {clients_done:?}, identical after {:?}",
        started.elapsed()
    );
}

/// Keep-alive (HTTP/1.0 from ab, HTTP/1.1 from curl), short connections and POSTs with bodies.
#[test]
#[ignore = "needs root"]
fn nginx_target_serves_the_online_requests() {
    http_case("nginx_target_serves_the_online_requests", |c| {
        let body = c.tmp.join("post.txt");
        std::fs::write(&body, "field=value&".repeat(200)).unwrap();
        // Keep-alive: 4 connections, 300 requests.
        c.ab(&[
            "-q",
            "-k",
            "-n",
            "300",
            "-c",
            "4",
            &format!("{}/index.html", c.base),
        ]);
        // Short connections: one request each.
        c.ab(&[
            "-q",
            "-n",
            "40",
            "-c",
            "2",
            &format!("{}/small.txt", c.base),
        ]);
        // Keep-alive POSTs with a 2.4 KB body (nginx answers 405 for a static file).
        c.ab(&[
            "-q",
            "-k",
            "-n",
            "30",
            "-c",
            "2",
            "-p",
            s(&body),
            "-T",
            "application/x-www-form-urlencoded",
            &format!("{}/index.html", c.base),
        ]);
        // HTTP/1.1 keep-alive from curl: 20 URLs over one connection.
        must(
            Some(c.lab),
            CLIENT,
            30,
            "curl",
            &[
                "-s",
                "-f",
                "-o",
                "/dev/null",
                &format!("{}/index.html?q=[1-20]", c.base),
            ],
            None,
        );
        300 + 40 + 30 + 20
    });
}

/// Keep-alive connections whose responses are 1 MB each: the target's response takes many
/// windows (each paced by tcpcopy's ACKs through intercept), and the next request and the
/// client's FIN must not be sent before it is complete.
#[test]
#[ignore = "needs root"]
fn nginx_target_serves_1mb_responses_over_keepalive() {
    http_case("nginx_target_serves_1mb_responses_over_keepalive", |c| {
        let url = format!("{}/big.bin", c.base);
        c.ab(&["-q", "-k", "-n", "10", "-c", "1", &url]);
        c.ab(&["-q", "-k", "-n", "10", "-c", "2", &url]);
        20
    });
}
