//! Helpers shared by the real-server tests (real_servers.rs: live replay, real_offline.rs:
//! offline replay of tcpdump captures): temporary directories, commands in namespaces,
//! bounded polling, intercept and tcpcopy, and the Redis, PostgreSQL and nginx servers with
//! the readers of their state. Each test file declares `mod real_common;` at its root; the
//! lab itself is `tc_e2e::lab`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tc_e2e::lab::*;

pub const INTERCEPT_PORT: u16 = 36524;
/// How long the target may lag behind the online server once the clients are done.
pub const REPLAY_DEADLINE: Duration = Duration::from_secs(30);
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

// ------------------------------------------------------------------------------------------
// Helpers: temporary directories, commands in namespaces, bounded polling, tcpcopy/intercept.

/// A per-run directory removed on drop (declare it before the lab: dropped after it).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
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

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn sub(&self, name: &str) -> PathBuf {
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

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs `prog args` (in `host`'s namespace, or in the root namespace for `None`) under
/// `timeout`, with `input` on stdin; its output.
pub fn run(
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
pub fn must(
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
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> (bool, T)) -> (bool, T) {
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

/// Starts `tcpdump <base> <opts> -w path <filter>` in `host` as the lab process `name` and
/// waits until it listens. Base options: -Z root (write the file as root: Debian's tcpdump
/// drops to its own user otherwise); -U and --immediate-mode (every packet is in the file as
/// soon as it is captured); -B 32768 -s 4096 (immediate mode uses fixed ring slots of the
/// snaplen: -s 0 drops packets of bursts even with -B 32 MB; the lab's packets are at most
/// 1514 bytes, no offloads, and -s 4096 keeps them whole).
pub fn start_tcpdump(lab: &Lab, host: &str, name: &str, path: &Path, opts: &[&str], filter: &str) {
    let mut args = vec![
        "-Z",
        "root",
        "-U",
        "--immediate-mode",
        "-B",
        "32768",
        "-s",
        "4096",
    ];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["-w", s(path), filter]);
    lab.spawn(host, name, &PathBuf::from("/usr/bin/tcpdump"), &args);
    let (listening, _) = poll(Duration::from_secs(10), || {
        (lab.log(name).contains("listening on"), ())
    });
    assert!(listening, "tcpdump {args:?}: {}", lab.log(name));
}

/// Stops the tcpdump `name` (SIGINT closes its file) and checks it ended well and the kernel
/// dropped none of the packets.
pub fn stop_tcpdump(lab: &Lab, name: &str) {
    let code = lab.stop(name, libc::SIGINT, Duration::from_secs(10));
    let log = lab.log(name);
    assert_eq!(code, Some(0), "tcpdump: {log}");
    assert!(
        log.lines()
            .any(|l| l.trim() == "0 packets dropped by kernel"),
        "tcpdump dropped packets: {log}"
    );
}

pub fn start_intercept(lab: &Lab, target_port: u16) {
    start_intercept_with(lab, target_port, &[]);
}

/// [`start_intercept`] with `extra` flags (`--payload`, `--full-payload`...).
pub fn start_intercept_with(lab: &Lab, target_port: u16, extra: &[&str]) {
    let filter = format!("tcp and src port {target_port}");
    let mut args = vec!["-F", &filter, "-i", "eth0", "--allow", "198.18.0.20"];
    args.extend_from_slice(extra);
    lab.spawn(ASSIST, "intercept", &bin("intercept"), &args);
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
pub fn start_tcpcopy(lab: &Lab, online_port: u16, target_port: u16) {
    let x = format!("{online_port}-{TARGET_IP}:{target_port}");
    start_tcpcopy_args(lab, &["-s", "198.18.0.40", "-x", &x, "-c", "203.0.113.x"]);
}

/// Starts tcpcopy on online with the caller's whole argument list (named "tcpcopy") and
/// waits for its event loop.
pub fn start_tcpcopy_args(lab: &Lab, args: &[&str]) {
    // TC_CAPTURE=ring (or pcap...) runs these tests with another capture backend.
    let capture = std::env::var("TC_CAPTURE").ok();
    let mut args = args.to_vec();
    if let Some(c) = capture.as_deref().filter(|c| !c.is_empty()) {
        args.extend(["--capture", c]);
    }
    let before = lab.log_count("tcpcopy", "event loop running");
    lab.spawn(ONLINE, "tcpcopy", &bin("tcpcopy"), &args);
    let deadline = Instant::now() + Duration::from_secs(15);
    while lab.log_count("tcpcopy", "event loop running") <= before {
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
pub fn replay_report(lab: &Lab) -> String {
    let code = lab.stop("tcpcopy", libc::SIGTERM, Duration::from_secs(15));
    format!(
        "--- tcpcopy (exit {code:?}) log, tail ---\n{}\n--- intercept log, tail ---\n{}",
        tail(&lab.log("tcpcopy"), 60),
        tail(&lab.log("intercept"), 20)
    )
}

/// With TC_REAL_PCAP=<dir>, tcpdump records the service's packets on online and on target
/// (`<dir>/<namespace>-<online port>.pcap`) for diagnosing a failed replay.
pub fn maybe_capture(lab: &Lab, online_port: u16, target_port: u16) {
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

pub fn wait_tcp(lab: &Lab, host: &str, addr: SocketAddrV4, what: &str) {
    assert!(
        lab.wait_listening(host, addr, Duration::from_secs(15)),
        "{what} does not listen on {addr}: {}",
        lab.log(what)
    );
}

/// The usual HTTP load from the client against `base`: ab, 200 keep-alive requests for
/// /index.html on 4 connections, then 30 short connections (2 at a time) for /small.txt;
/// every request must succeed.
pub fn ab_keepalive_and_short(lab: &Lab, base: &str) {
    let index = format!("{base}/index.html");
    let small = format!("{base}/small.txt");
    let loads: [&[&str]; 2] = [
        &["-q", "-k", "-n", "200", "-c", "4", &index],
        &["-q", "-n", "30", "-c", "2", &small],
    ];
    for args in loads {
        ab_ok(lab, args);
    }
}

/// ab from the client with `args`: every request must succeed. Its output.
pub fn ab_ok(lab: &Lab, args: &[&str]) -> String {
    let out = must(Some(lab), CLIENT, 60, "ab", args, None);
    assert!(
        out.contains("Failed requests:        0"),
        "ab {args:?}: {out}"
    );
    out
}

// ------------------------------------------------------------------------------------------
// Redis

pub const REDIS_ONLINE_PORT: u16 = 6379;
pub const REDIS_TARGET_PORT: u16 = 6380;

pub fn start_redis(lab: &Lab, host: &str, name: &str, port: u16, dir: &Path) -> PathBuf {
    start_redis_on(lab, host, name, port, dir, &[])
}

/// [`start_redis`] listening on `more` addresses too (e.g. the host's IPv6 address).
pub fn start_redis_on(
    lab: &Lab,
    host: &str,
    name: &str,
    port: u16,
    dir: &Path,
    more: &[&str],
) -> PathBuf {
    let ip = if host == ONLINE { ONLINE_IP } else { TARGET_IP };
    let sock = dir.join("redis.sock");
    let port_s = port.to_string();
    let ip_s = ip.to_string();
    std::fs::create_dir_all(dir).unwrap();
    let mut bind = vec!["--bind", ip_s.as_str()];
    bind.extend_from_slice(more);
    let rest = [
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
    ];
    bind.extend_from_slice(&rest);
    lab.spawn(host, name, &PathBuf::from("/usr/bin/redis-server"), &bind);
    wait_tcp(lab, host, SocketAddrV4::new(ip, port), name);
    sock
}

/// redis-cli over the server's unix socket (never through the replayed TCP port).
/// Redis on online (REDIS_ONLINE_PORT) and on the target (REDIS_TARGET_PORT), their data in
/// `tmp`'s online and target folders; their local sockets.
pub fn start_redis_pair(lab: &Lab, tmp: &TempDir) -> (PathBuf, PathBuf) {
    let online = start_redis(
        lab,
        ONLINE,
        "redis-online",
        REDIS_ONLINE_PORT,
        &tmp.sub("online"),
    );
    let target = start_redis(
        lab,
        TARGET,
        "redis-target",
        REDIS_TARGET_PORT,
        &tmp.sub("target"),
    );
    (online, target)
}

pub fn redis_local(sock: &Path, args: &[&str]) -> String {
    let mut all = vec!["-s", s(sock)];
    all.extend_from_slice(args);
    must(None, "root", 10, "redis-cli", &all, None)
}

/// The whole data set: every key with its value (strings only in this workload).
pub fn redis_dump(sock: &Path) -> BTreeMap<String, String> {
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

pub fn resp_command(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
    }
    out
}

/// One connection kept open through the whole workload: INCRs and SETs in lock-step.
pub fn redis_long_lived(addr: SocketAddrV4, n: usize) -> std::io::Result<()> {
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

// ------------------------------------------------------------------------------------------
// PostgreSQL

pub const PG_ONLINE_PORT: u16 = 5432;
pub const PG_TARGET_PORT: u16 = 5433;

/// Stops a cluster with `pg_ctl stop -m fast` on drop (a SIGTERM to the postmaster would wait
/// for replayed sessions to end). Declare after the lab: dropped before it.
pub struct PgCluster {
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
    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql)
            .unwrap_or_else(|| panic!("psql on port {} failed: {sql}", self.port))
    }

    /// [`Self::query`], `None` when psql fails (server not up yet, table missing).
    pub fn try_query(&self, sql: &str) -> Option<String> {
        let port = self.port.to_string();
        let out = run(
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
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

pub fn chown_postgres(p: &Path) {
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
pub fn pg_initdb(template: &Path) {
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

pub fn start_pg(
    lab: &Lab,
    host: &str,
    name: &str,
    port: u16,
    template: &Path,
    dir: &Path,
) -> PgCluster {
    let ip = if host == ONLINE { ONLINE_IP } else { TARGET_IP };
    start_pg_listen(lab, host, name, port, &ip.to_string(), template, dir)
}

/// [`start_pg`] listening on `listen` (postgres `-h`: comma-separated addresses).
pub fn start_pg_listen(
    lab: &Lab,
    host: &str,
    name: &str,
    port: u16,
    listen: &str,
    template: &Path,
    dir: &Path,
) -> PgCluster {
    let data = dir.join("data");
    let sockdir = dir.join("sock");
    must(None, "root", 30, "cp", &["-a", s(template), s(&data)], None);
    std::fs::create_dir_all(&sockdir).unwrap();
    chown_postgres(dir);
    let postgres = format!("{PG_BIN}/postgres");
    let port_s = port.to_string();
    let ip_s = listen.to_string();
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

/// PostgreSQL from `template` on online (PG_ONLINE_PORT) and on the target (PG_TARGET_PORT),
/// their data in `tmp`'s online and target folders.
pub fn start_pg_pair(lab: &Lab, template: &Path, tmp: &TempDir) -> (PgCluster, PgCluster) {
    let online = start_pg(
        lab,
        ONLINE,
        "pg-online",
        PG_ONLINE_PORT,
        template,
        &tmp.sub("online"),
    );
    let target = start_pg(
        lab,
        TARGET,
        "pg-target",
        PG_TARGET_PORT,
        template,
        &tmp.sub("target"),
    );
    (online, target)
}

pub fn pgbench(lab: &Lab, mode: &str, script: &Path, clients: &str, tx: &str) -> String {
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

/// psql against the online server from the client namespace: `sql` with `-c`, or the
/// script on standard input.
pub fn online_psql(lab: &Lab, sql: Option<&str>, input: Option<Vec<u8>>) -> String {
    let host = ONLINE_IP.to_string();
    let port = PG_ONLINE_PORT.to_string();
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
    must(Some(lab), CLIENT, 30, "psql", &args, input)
}

pub const PG_CREATE_TABLE: &str =
    "CREATE TABLE replay_t (id bigint NOT NULL, kind text NOT NULL, n int NOT NULL)";

/// The INSERT workload against the online server: pgbench with named prepared statements,
/// the simple protocol and unnamed statements (`(clients, transactions)` each), then one psql
/// session: a transaction of `psql_rows` INSERTs and an UPDATE. Scripts go to `scripts`.
pub fn pg_insert_workload(
    lab: &Lab,
    scripts: &Path,
    prepared: (&str, &str),
    simple: (&str, &str),
    extended: (&str, &str),
    psql_rows: usize,
) {
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
    for (mode, (clients, tx)) in [
        ("prepared", prepared),
        ("simple", simple),
        ("extended", extended),
    ] {
        pgbench(lab, mode, &script(mode), clients, tx);
    }
    let mut session = String::from("BEGIN;\n");
    for i in 0..psql_rows {
        session.push_str(&format!(
            "INSERT INTO replay_t (id, kind, n) VALUES ({}, 'psql', {i});\n",
            1_000_000_000 + i
        ));
    }
    session.push_str("UPDATE replay_t SET n = n + 1000 WHERE kind = 'psql' AND n % 2 = 0;\n");
    session.push_str("COMMIT;\n");
    online_psql(lab, None, Some(session.into_bytes()));
}

pub const PG_SUMMARY: &str =
    "SELECT kind, count(*), sum(id), sum(n) FROM replay_t GROUP BY kind ORDER BY kind";

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ------------------------------------------------------------------------------------------
// HTTP: nginx

pub const HTTP_ONLINE_PORT: u16 = 80;
pub const HTTP_TARGET_PORT: u16 = 8080;

pub fn start_nginx(lab: &Lab, host: &str, name: &str, port: u16, dir: &Path) -> PathBuf {
    start_nginx_with(lab, host, name, port, dir, "", "")
}

/// [`start_nginx`] with extra directives in the `http` block (e.g. a second `log_format` and
/// `access_log`; `{dir}` in them stands for `dir`) and in the `server` block (locations).
pub fn start_nginx_with(
    lab: &Lab,
    host: &str,
    name: &str,
    port: u16,
    dir: &Path,
    http_extra: &str,
    server_extra: &str,
) -> PathBuf {
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
               {http_extra}\n\
               server {{\n\
                 listen {ip}:{port};\n\
                 root {www};\n\
                 {server_extra}\n\
               }}\n\
             }}\n",
            dir = s(dir),
            log = s(&log),
            www = s(&www),
            http_extra = http_extra.replace("{dir}", s(dir)),
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
pub fn access_log(path: &Path) -> (usize, BTreeMap<String, usize>) {
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

pub fn access_log_clients(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ips: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

// ------------------------------------------------------------------------------------------
// nginx access logs: `$remote_addr $remote_port $connection_requests "$request" ...`

/// One access-log line of the format above.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessEntry {
    pub ip: String,
    pub port: u16,
    /// The request's place on its connection (`$connection_requests`).
    pub nth: u32,
    /// The rest of the line: `"METHOD URI PROTO" status bytes ...`.
    pub req: String,
}

pub fn read_access_log(path: &Path) -> Vec<AccessEntry> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(4, ' ');
            Some(AccessEntry {
                ip: it.next()?.to_string(),
                port: it.next()?.parse().ok()?,
                nth: it.next()?.parse().ok()?,
                req: it.next()?.to_string(),
            })
        })
        .collect()
}

/// The first differences between two multisets (online, target), for a failure message.
pub fn count_diff(
    online: &BTreeMap<String, usize>,
    target: &BTreeMap<String, usize>,
) -> Vec<String> {
    online
        .iter()
        .filter(|(k, v)| target.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: online {v}, target {:?}", target.get(k)))
        .chain(
            target
                .iter()
                .filter(|(k, _)| !online.contains_key(*k))
                .map(|(k, v)| format!("{k}: online 0, target {v}")),
        )
        .take(12)
        .collect()
}
