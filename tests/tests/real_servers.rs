//! Real servers and real clients through tcpcopy + intercept in the namespace lab (lab.md):
//! Redis, PostgreSQL and nginx run on online and on target (Debian packages), their own
//! clients (redis-cli / redis-benchmark, psql / pgbench, ab / curl) load the online server
//! from the client namespace, and the replayed traffic must leave the target in the same
//! state as the online server: same keys and counters, same table and rows, same requests
//! in the access log. Needs root and the packages of scripts/test.sh.

mod tcpcopy_lab;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tcpcopy_lab::*;

const INTERCEPT_PORT: u16 = 36524;
/// How long the target may lag behind the online server once the clients are done.
const REPLAY_DEADLINE: Duration = Duration::from_secs(30);
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

// ------------------------------------------------------------------------------------------
// Helpers: temporary directories, commands in namespaces, bounded polling, tcpcopy/intercept.

/// A per-run directory removed on drop (declare it before the lab: dropped after it).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tcreal-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn sub(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).expect("create temp subdir");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs `prog args` (in `host`'s namespace, or in the root namespace for `None`) under
/// `timeout`, with `input` on stdin; its output.
fn run(
    lab: Option<&Lab>,
    host: &str,
    secs: u64,
    prog: &str,
    args: &[&str],
    input: Option<Vec<u8>>,
) -> Output {
    let mut cmd = match lab {
        Some(lab) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &lab.ns(host)]);
            c.arg("timeout");
            c
        }
        None => Command::new("timeout"),
    };
    cmd.args(["-k", "2", &secs.to_string(), prog])
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{prog} {args:?}: {e}"));
    let writer = input.map(|data| {
        let mut stdin = child.stdin.take().expect("stdin");
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    });
    let out = child.wait_with_output().expect("wait for command");
    if let Some(w) = writer {
        let _ = w.join();
    }
    out
}

/// Like [`run`], and the command must succeed; its stdout.
fn must(
    lab: Option<&Lab>,
    host: &str,
    secs: u64,
    prog: &str,
    args: &[&str],
    input: Option<Vec<u8>>,
) -> String {
    let out = run(lab, host, secs, prog, args, input);
    assert!(
        out.status.success(),
        "{prog} {args:?} in {host}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Calls `f` every 200 ms until it says done or `within` passed; the last value.
fn poll<T>(within: Duration, mut f: impl FnMut() -> (bool, T)) -> (bool, T) {
    let deadline = Instant::now() + within;
    let max_rounds = within.as_millis() / 200 + 2;
    let mut rounds = 0;
    loop {
        let (done, v) = f();
        rounds += 1;
        if done || Instant::now() > deadline || rounds >= max_rounds {
            return (done, v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_intercept(lab: &Lab, target_port: u16) {
    let filter = format!("tcp and src port {target_port}");
    lab.spawn(
        ASSIST,
        "intercept",
        &bin("intercept"),
        &["-F", &filter, "-i", "eth0"],
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

/// Starts tcpcopy on online (`-x online_port-target:target_port`, fake clients
/// 203.0.113.x) and waits for its event loop.
fn start_tcpcopy(lab: &Lab, online_port: u16, target_port: u16) {
    let x = format!("{online_port}-{TARGET_IP}:{target_port}");
    let args = ["-s", "198.18.0.40", "-x", &x, "-c", "203.0.113.x"];
    lab.spawn(ONLINE, "tcpcopy", &bin("tcpcopy"), &args);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lab.log("tcpcopy").contains("event loop running") {
        assert!(
            Instant::now() < deadline && lab.running("tcpcopy"),
            "tcpcopy did not start: {}",
            lab.log("tcpcopy")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// tcpcopy stopped (so it prints its final statistics) and the tails of tcpcopy's and
/// intercept's logs, for failure messages.
fn replay_report(lab: &Lab) -> String {
    let code = lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(15));
    format!(
        "--- tcpcopy (exit {code:?}) log, tail ---\n{}\n--- intercept log, tail ---\n{}",
        tail(&lab.log("tcpcopy"), 60),
        tail(&lab.log("intercept"), 20)
    )
}

/// With TC_REAL_PCAP=<dir>, tcpdump records the service's packets on online and on target
/// (`<dir>/<namespace>-<online port>.pcap`) for diagnosing a failed replay.
fn maybe_capture(lab: &Lab, online_port: u16, target_port: u16) {
    let Ok(dir) = std::env::var("TC_REAL_PCAP") else {
        return;
    };
    let filter = format!("tcp port {online_port} or tcp port {target_port}");
    for host in [ONLINE, TARGET] {
        let path = format!("{dir}/{}-{port}.pcap", lab.ns(host), port = online_port);
        let name = format!("tcpdump-{host}");
        lab.spawn(
            host,
            &name,
            &PathBuf::from("/usr/bin/tcpdump"),
            &["-i", "eth0", "-U", "-s", "128", "-w", &path, &filter],
        );
        let (listening, _) = poll(Duration::from_secs(10), || {
            (lab.log(&name).contains("listening on"), ())
        });
        assert!(listening, "tcpdump in {host}: {}", lab.log(&name));
    }
}

fn wait_tcp(lab: &Lab, host: &str, addr: SocketAddrV4, what: &str) {
    assert!(
        lab.wait_listening(host, addr, Duration::from_secs(15)),
        "{what} does not listen on {addr}: {}",
        lab.log(what)
    );
}

// ------------------------------------------------------------------------------------------
// Redis

const REDIS_ONLINE_PORT: u16 = 6379;
const REDIS_TARGET_PORT: u16 = 6380;

fn start_redis(lab: &Lab, host: &str, name: &str, port: u16, dir: &Path) -> PathBuf {
    let ip = if host == ONLINE { ONLINE_IP } else { TARGET_IP };
    let sock = dir.join("redis.sock");
    let port_s = port.to_string();
    let ip_s = ip.to_string();
    lab.spawn(
        host,
        name,
        &PathBuf::from("/usr/bin/redis-server"),
        &[
            "--bind",
            &ip_s,
            "--port",
            &port_s,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--dir",
            s(dir),
            "--unixsocket",
            s(&sock),
            "--unixsocketperm",
            "700",
            "--logfile",
            "",
        ],
    );
    wait_tcp(lab, host, SocketAddrV4::new(ip, port), name);
    sock
}

/// redis-cli over the server's unix socket (never through the replayed TCP port).
fn redis_local(sock: &Path, args: &[&str]) -> String {
    let mut all = vec!["-s", s(sock)];
    all.extend_from_slice(args);
    must(None, "root", 10, "redis-cli", &all, None)
}

/// The whole data set: every key with its value (strings only in this workload).
fn redis_dump(sock: &Path) -> BTreeMap<String, String> {
    let keys: Vec<String> = redis_local(sock, &["--scan"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(200) {
        let mut args = vec!["--no-raw", "MGET"];
        args.extend(chunk.iter().map(String::as_str));
        let mut all = vec!["-s", s(sock)];
        all.extend_from_slice(&args);
        let text = must(None, "root", 10, "redis-cli", &all, None);
        // --no-raw prints `N) "value"` per key.
        let values: Vec<String> = text
            .lines()
            .map(|l| {
                l.split_once(") ")
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_else(|| l.to_string())
            })
            .collect();
        for (k, v) in chunk.iter().zip(values) {
            out.insert(k.clone(), v);
        }
    }
    out
}

fn resp_command(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
    }
    out
}

/// One connection kept open through the whole workload: INCRs and SETs in lock-step.
fn redis_long_lived(addr: SocketAddrV4, n: usize) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    let mut buf = [0u8; 512];
    for i in 0..n {
        let key = format!("long:{i}");
        let val = format!("value:{i}");
        for cmd in [
            resp_command(&["INCR", "counter"]),
            resp_command(&["SET", &key, &val]),
        ] {
            s.write_all(&cmd)?;
            // Each reply is one short line (`:N\r\n` or `+OK\r\n`).
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                line.extend_from_slice(&buf[..n]);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[test]
fn redis_target_ends_with_the_online_data_set() {
    if !can_run("redis_target_ends_with_the_online_data_set") {
        return;
    }
    let started = Instant::now();
    let tmp = TempDir::new("redis");
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
            "v__rand_int__",
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

// ------------------------------------------------------------------------------------------
// PostgreSQL

const PG_ONLINE_PORT: u16 = 5432;
const PG_TARGET_PORT: u16 = 5433;

/// Stops a cluster with `pg_ctl stop -m fast` on drop (a SIGTERM to the postmaster would wait
/// for replayed sessions to end). Declare after the lab: dropped before it.
struct PgCluster {
    data: PathBuf,
    sockdir: PathBuf,
    port: u16,
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let _ = run(
            None,
            "root",
            20,
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &pg_ctl,
                "stop",
                "-s",
                "-D",
                s(&self.data),
                "-m",
                "fast",
                "-t",
                "15",
            ],
            None,
        );
    }
}

impl PgCluster {
    /// psql over the unix socket (not the replayed TCP port), unaligned tuples only.
    fn query(&self, sql: &str) -> String {
        let port = self.port.to_string();
        must(
            None,
            "root",
            10,
            "psql",
            &[
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                s(&self.sockdir),
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

    fn try_query(&self, sql: &str) -> Option<String> {
        let port = self.port.to_string();
        let out = run(
            None,
            "root",
            10,
            "psql",
            &[
                "-X",
                "-At",
                "-h",
                s(&self.sockdir),
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
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn chown_postgres(p: &Path) {
    must(
        None,
        "root",
        10,
        "chown",
        &["-R", "postgres:postgres", s(p)],
        None,
    );
}

/// initdb once (trust, the lab nets allowed) into `template`.
fn pg_initdb(template: &Path) {
    let initdb = format!("{PG_BIN}/initdb");
    must(
        None,
        "root",
        60,
        "runuser",
        &[
            "-u",
            "postgres",
            "--",
            &initdb,
            "-D",
            s(template),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
        None,
    );
    let hba = template.join("pg_hba.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&hba)
        .expect("pg_hba.conf");
    writeln!(
        f,
        "host all all 198.18.0.0/15 trust\nhost all all 203.0.113.0/24 trust"
    )
    .unwrap();
}

fn start_pg(
    lab: &Lab,
    host: &str,
    name: &str,
    port: u16,
    template: &Path,
    dir: &Path,
) -> PgCluster {
    let ip = if host == ONLINE { ONLINE_IP } else { TARGET_IP };
    let data = dir.join("data");
    let sockdir = dir.join("sock");
    must(None, "root", 30, "cp", &["-a", s(template), s(&data)], None);
    std::fs::create_dir_all(&sockdir).unwrap();
    chown_postgres(dir);
    let postgres = format!("{PG_BIN}/postgres");
    let port_s = port.to_string();
    let ip_s = ip.to_string();
    lab.spawn(
        host,
        name,
        &PathBuf::from("/usr/sbin/runuser"),
        &[
            "-u",
            "postgres",
            "--",
            &postgres,
            "-D",
            s(&data),
            "-p",
            &port_s,
            "-h",
            &ip_s,
            "-k",
            s(&sockdir),
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=16MB",
            "-c",
            "max_connections=40",
            "-c",
            "log_connections=on",
            "-c",
            "log_disconnections=on",
        ],
    );
    let cluster = PgCluster {
        data,
        sockdir,
        port,
    };
    let (ready, _) = poll(Duration::from_secs(20), || {
        (cluster.try_query("SELECT 1").is_some(), ())
    });
    assert!(ready, "{name} does not start: {}", lab.log(name));
    cluster
}

fn pgbench(lab: &Lab, mode: &str, script: &Path, clients: &str, tx: &str) -> String {
    let port = PG_ONLINE_PORT.to_string();
    let host = ONLINE_IP.to_string();
    must(
        Some(lab),
        CLIENT,
        60,
        "pgbench",
        &[
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "postgres",
            "-n",
            "-M",
            mode,
            "-f",
            s(script),
            "-c",
            clients,
            "-j",
            "2",
            "-t",
            tx,
            "postgres",
        ],
        None,
    )
}

const PG_SUMMARY: &str =
    "SELECT kind, count(*), sum(id), sum(n) FROM replay_t GROUP BY kind ORDER BY kind";

#[test]
fn postgres_target_ends_with_the_online_rows() {
    if !can_run("postgres_target_ends_with_the_online_rows") {
        return;
    }
    let started = Instant::now();
    let tmp = TempDir::new("pg");
    chown_postgres(tmp.path());
    let template = tmp.path().join("template");
    pg_initdb(&template);
    let lab = Lab::start();
    let online = start_pg(
        &lab,
        ONLINE,
        "pg-online",
        PG_ONLINE_PORT,
        &template,
        &tmp.sub("online"),
    );
    let target = start_pg(
        &lab,
        TARGET,
        "pg-target",
        PG_TARGET_PORT,
        &template,
        &tmp.sub("target"),
    );
    start_intercept(&lab, PG_TARGET_PORT);
    maybe_capture(&lab, PG_ONLINE_PORT, PG_TARGET_PORT);
    start_tcpcopy(&lab, PG_ONLINE_PORT, PG_TARGET_PORT);

    let host = ONLINE_IP.to_string();
    let port = PG_ONLINE_PORT.to_string();
    let psql = |sql: Option<&str>, input: Option<Vec<u8>>| {
        let mut args = vec![
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "postgres",
        ];
        match sql {
            Some(sql) => args.extend(["-c", sql]),
            None => args.extend(["-f", "-"]),
        }
        must(Some(&lab), CLIENT, 30, "psql", &args, input)
    };
    psql(
        Some("CREATE TABLE replay_t (id bigint NOT NULL, kind text NOT NULL, n int NOT NULL)"),
        None,
    );
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

    let scripts = tmp.sub("scripts");
    let script = |kind: &str| {
        let p = scripts.join(format!("{kind}.sql"));
        std::fs::write(
            &p,
            format!(
                "\\set id random(1, 1000000000)\n\
                 INSERT INTO replay_t (id, kind, n) VALUES (:id, '{kind}', :client_id);\n"
            ),
        )
        .unwrap();
        p
    };
    // Extended protocol with named prepared statements: 4 connections x 60.
    pgbench(&lab, "prepared", &script("prepared"), "4", "60");
    // Simple protocol: 3 connections x 40.
    pgbench(&lab, "simple", &script("simple"), "3", "40");
    // Extended protocol, unnamed statements: 2 connections x 30.
    pgbench(&lab, "extended", &script("extended"), "2", "30");
    // One psql session: a transaction of 50 INSERTs and an UPDATE.
    let mut session = String::from("BEGIN;\n");
    for i in 0..50 {
        session.push_str(&format!(
            "INSERT INTO replay_t (id, kind, n) VALUES ({}, 'psql', {i});\n",
            1_000_000_000 + i
        ));
    }
    session.push_str("UPDATE replay_t SET n = n + 1000 WHERE kind = 'psql' AND n % 2 = 0;\n");
    session.push_str("COMMIT;\n");
    psql(None, Some(session.into_bytes()));
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

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ------------------------------------------------------------------------------------------
// HTTP: nginx

const HTTP_ONLINE_PORT: u16 = 80;
const HTTP_TARGET_PORT: u16 = 8080;

fn start_nginx(lab: &Lab, host: &str, name: &str, port: u16, dir: &Path) -> PathBuf {
    let ip = if host == ONLINE { ONLINE_IP } else { TARGET_IP };
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(dir.join("body")).unwrap();
    std::fs::write(
        www.join("index.html"),
        "<html><body>replay</body></html>\n".repeat(20),
    )
    .unwrap();
    std::fs::write(www.join("small.txt"), "ok\n").unwrap();
    std::fs::write(www.join("big.bin"), vec![b'z'; 1 << 20]).unwrap();
    let log = dir.join("access.log");
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes 1;\n\
             pid {dir}/nginx.pid;\n\
             error_log stderr info;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n\
               log_format replay '$remote_addr \"$request\" $status $body_bytes_sent';\n\
               access_log {log} replay;\n\
               client_body_temp_path {dir}/body;\n\
               keepalive_requests 100000;\n\
               keepalive_timeout 60s;\n\
               server {{\n\
                 listen {ip}:{port};\n\
                 root {www};\n\
               }}\n\
             }}\n",
            dir = s(dir),
            log = s(&log),
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
    log
}

/// The access log without the client address, as a multiset of `"request" status bytes`.
fn access_log(path: &Path) -> (usize, BTreeMap<String, usize>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut n = 0;
    for line in text.lines() {
        let rest = line.split_once(' ').map(|(_, r)| r).unwrap_or(line);
        *out.entry(rest.to_string()).or_insert(0) += 1;
        n += 1;
    }
    (n, out)
}

fn access_log_clients(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ips: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    ips.sort();
    ips.dedup();
    ips
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
    if !can_run(test) {
        return;
    }
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
fn nginx_target_serves_1mb_responses_over_keepalive() {
    http_case("nginx_target_serves_1mb_responses_over_keepalive", |c| {
        let url = format!("{}/big.bin", c.base);
        c.ab(&["-q", "-k", "-n", "10", "-c", "1", &url]);
        c.ab(&["-q", "-k", "-n", "10", "-c", "2", &url]);
        20
    });
}
