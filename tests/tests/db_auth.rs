//! Database logins with passwords (README "Database logins"): PostgreSQL (scram-sha-256 and
//! md5 in pg_hba.conf) and MariaDB (mysql_native_password) with a password user on online and
//! on target. A real client load (pgbench, mysqlslap) logs in to the online server; tcpcopy
//! with `--payload --auth-file` (intercept `--payload`) recomputes every login's answer for
//! the target's own challenge, live and offline (a tcpdump capture of the same load), and the
//! target executes every statement the online server executed. Without `--auth-file` the
//! replayed logins fail at the target and tcpcopy counts them.
//! Needs root and the packages of scripts/test.sh (postgresql, mariadb-server).

mod real_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use real_common::*;
use tc_e2e::lab::*;

const PASSWORD: &str = "s3cret-pw";
/// The offline replay's fake client (the live one is 203.0.113.x = .1): no TIME_WAIT of the
/// live replay's connections on the target is in its way.
const OFFLINE_CLIENT: &str = "203.0.113.7";

/// intercept with payload records (the target's challenges reach tcpcopy).
fn start_intercept_payload(lab: &Lab, target_port: u16) {
    start_intercept_with(lab, target_port, &["--payload"]);
}

/// The auth file (mode 0600): the user's password.
fn auth_file(dir: &Path, user: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("auth");
    std::fs::write(&p, format!("# logins replayed\n{user}:{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Live tcpcopy with payload records and `extra` (named `name`).
fn start_live(lab: &Lab, name: &str, online_port: u16, target_port: u16, extra: &[&str]) {
    let x = format!("{online_port}-{TARGET_IP}:{target_port}");
    let mut args = vec![
        "-s",
        "198.18.0.40",
        "-x",
        &x,
        "-c",
        "203.0.113.x",
        "--payload",
    ];
    args.extend_from_slice(extra);
    lab.spawn(ONLINE, name, &bin("tcpcopy"), &args);
    let (up, _) = poll(Duration::from_secs(15), || {
        (lab.log(name).contains("event loop running"), ())
    });
    assert!(up, "tcpcopy did not start: {}", lab.log(name));
}

/// Stops a tcpcopy (it logs its final counters) and returns its log.
fn stop_tcpcopy(lab: &Lab, name: &str) -> String {
    lab.stop(name, libc::SIGTERM, Duration::from_secs(15));
    lab.log(name)
}

/// The value of `key:N` in the last line of `log` that has it.
fn stat(log: &str, key: &str) -> u64 {
    let pat = format!("{key}:");
    let Some(line) = log.lines().rev().find(|l| l.contains(&pat)) else {
        return 0;
    };
    let rest = &line[line.rfind(&pat).unwrap() + pat.len()..];
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

/// tcpdump of the service port on online, to replay offline.
struct Recording {
    path: PathBuf,
}

fn record(lab: &Lab, path: &Path, port: u16) -> Recording {
    let filter = format!("tcp port {port}");
    start_tcpdump(lab, ONLINE, "record", path, &["-i", "eth0"], &filter);
    Recording {
        path: path.to_path_buf(),
    }
}

impl Recording {
    fn stop(self, lab: &Lab) -> PathBuf {
        let mut last = 0;
        let (quiet, _) = poll(Duration::from_secs(10), || {
            let n = std::fs::metadata(&self.path).map_or(0, |m| m.len());
            let same = n > 0 && n == last;
            last = n;
            (same, ())
        });
        assert!(quiet, "capture keeps growing");
        stop_tcpdump(lab, "record");
        self.path
    }
}

/// Offline tcpcopy of `file` with `extra`, until it ends by itself; its log.
fn replay_offline(
    lab: &Lab,
    file: &Path,
    online_port: u16,
    target_port: u16,
    extra: &[&str],
) -> String {
    let x = format!("{online_port}-{TARGET_IP}:{target_port}");
    let mut args = vec![
        "-i",
        s(file),
        "-x",
        &x,
        "-s",
        "198.18.0.40",
        "-c",
        OFFLINE_CLIENT,
        "--payload",
        "--offline-tail",
        "5",
    ];
    args.extend_from_slice(extra);
    lab.spawn(ONLINE, "offline", &bin("tcpcopy"), &args);
    let (ended, _) = poll(Duration::from_secs(60), || (!lab.running("offline"), ()));
    let code = lab.stop("offline", libc::SIGTERM, Duration::from_secs(10));
    let log = lab.log("offline");
    assert!(
        ended && code == Some(0),
        "offline tcpcopy (exit {code:?}): {}",
        tail(&log, 40)
    );
    log
}

// ------------------------------------------------------------------------------------------
// PostgreSQL

const PG_TABLE: &str = "CREATE TABLE auth_t (id bigint NOT NULL, n int NOT NULL)";

/// A cluster template whose lab networks log in with `method`, and a password user `bench`
/// owning the table (created on each server directly, through its unix socket).
fn pg_template(tmp: &TempDir, method: &str) -> PathBuf {
    chown_postgres(tmp.path());
    let template = tmp.path().join("template");
    pg_initdb(&template);
    std::fs::write(
        template.join("pg_hba.conf"),
        format!(
            "local all all trust\nhost all postgres 127.0.0.1/32 trust\n\
             host all all 198.18.0.0/15 {method}\nhost all all 203.0.113.0/24 {method}\n"
        ),
    )
    .unwrap();
    chown_postgres(&template);
    template
}

fn pg_setup(c: &PgCluster, method: &str) {
    let encryption = if method == "md5" {
        "md5"
    } else {
        "scram-sha-256"
    };
    c.query(&format!(
        "SET password_encryption = '{encryption}'; CREATE ROLE bench LOGIN PASSWORD '{PASSWORD}'"
    ));
    c.query(PG_TABLE);
    c.query("ALTER TABLE auth_t OWNER TO bench");
    let stored = c.query("SELECT left(rolpassword, 5) FROM pg_authid WHERE rolname = 'bench'");
    let want = if method == "md5" { "md5" } else { "SCRAM" };
    assert!(stored.starts_with(want), "stored password: {stored}");
}

/// pgbench as `bench` (password from the environment), a new connection per transaction
/// (-C): every transaction logs in. Returns the number of transactions.
fn pg_load(lab: &Lab, script: &Path, clients: u32, tx: u32) -> u64 {
    let env = format!("PGPASSWORD={PASSWORD}");
    let host = ONLINE_IP.to_string();
    let port = PG_ONLINE_PORT.to_string();
    let (c, t) = (clients.to_string(), tx.to_string());
    let out = run(
        Some(lab),
        CLIENT,
        60,
        "env",
        &[
            &env,
            "pgbench",
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "bench",
            "-n",
            "-C",
            "-f",
            s(script),
            "-c",
            &c,
            "-t",
            &t,
            "postgres",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "pgbench: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    u64::from(clients * tx)
}

fn rows(c: &PgCluster) -> u64 {
    c.try_query("SELECT count(*) FROM auth_t")
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the target has `want` rows.
fn pg_wait_rows(lab: &Lab, target: &PgCluster, want: u64, what: &str, tcpcopy: &str) {
    let (same, got) = poll(Duration::from_secs(30), || {
        let n = rows(target);
        (n == want, n)
    });
    assert!(
        same,
        "{what}: target has {got} rows, online executed {want}\n--- {tcpcopy} ---\n{}\n\
         --- pg-target log (tail) ---\n{}",
        tail(&lab.log(tcpcopy), 40),
        tail(&lab.log("pg-target"), 30)
    );
}

fn pg_case(test: &str, method: &str) {
    require_root(test);
    let started = Instant::now();
    let tmp = TempDir::new("pg-auth");
    let template = pg_template(&tmp, method);
    let lab = Lab::start();
    let (online, target) = start_pg_pair(&lab, &template, &tmp);
    pg_setup(&online, method);
    pg_setup(&target, method);
    let auth = auth_file(tmp.path(), "bench");
    let script = tmp.path().join("insert.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 1000000000)\nINSERT INTO auth_t (id, n) VALUES (:id, :client_id);\n",
    )
    .unwrap();
    start_intercept_payload(&lab, PG_TARGET_PORT);

    // Live, recorded at the same time for the offline replay.
    let rec = record(&lab, &tmp.path().join("pg.pcap"), PG_ONLINE_PORT);
    start_live(
        &lab,
        "tcpcopy",
        PG_ONLINE_PORT,
        PG_TARGET_PORT,
        &["--auth-file", s(&auth)],
    );
    let logins = pg_load(&lab, &script, 3, 15);
    let online_rows = rows(&online);
    assert_eq!(online_rows, logins, "online rows");
    pg_wait_rows(&lab, &target, online_rows, "live", "tcpcopy");
    let log = stop_tcpcopy(&lab, "tcpcopy");
    let pcap = rec.stop(&lab);
    let rewritten = stat(&log, "rewritten");
    assert!(
        rewritten >= logins,
        "live: {rewritten} logins rewritten, {logins} made: {}",
        tail(&log, 30)
    );
    assert!(!log.contains(PASSWORD), "the password is in tcpcopy's log");

    // Offline: the challenge comes from the target at replay time.
    let log = replay_offline(
        &lab,
        &pcap,
        PG_ONLINE_PORT,
        PG_TARGET_PORT,
        &["--auth-file", s(&auth)],
    );
    pg_wait_rows(&lab, &target, 2 * online_rows, "offline", "offline");
    assert!(
        stat(&log, "rewritten") >= logins,
        "offline: {}",
        tail(&log, 30)
    );

    // Without --auth-file the captured answers fail at the target, and are counted.
    start_live(
        &lab,
        "watch",
        PG_ONLINE_PORT,
        PG_TARGET_PORT,
        &["--protocol", "postgres"],
    );
    let more = pg_load(&lab, &script, 2, 4);
    assert_eq!(rows(&online), online_rows + more);
    let (failed, _) = poll(Duration::from_secs(20), || {
        let n = lab
            .log("pg-target")
            .matches("authentication failed")
            .count()
            + lab.log("pg-target").matches("invalid SCRAM").count();
        (n as u64 >= more, ())
    });
    let log = stop_tcpcopy(&lab, "watch");
    assert!(
        failed,
        "the target did not refuse the replayed logins: {}",
        tail(&lab.log("pg-target"), 20)
    );
    assert_eq!(
        rows(&target),
        2 * online_rows,
        "rows added without the password"
    );
    let rejected = stat(&log, "rejected by target");
    assert!(
        rejected >= more,
        "{rejected} refusals counted for {more} failed logins: {}",
        tail(&log, 30)
    );
    eprintln!(
        "{test}: {logins} logins live ({rewritten} rewritten) and offline, {rejected} refusals counted without --auth-file; {:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "needs root"]
fn postgres_scram_sha_256_logins_replay() {
    pg_case("postgres_scram_sha_256_logins_replay", "scram-sha-256");
}

#[test]
#[ignore = "needs root"]
fn postgres_md5_logins_replay() {
    pg_case("postgres_md5_logins_replay", "md5");
}

// ------------------------------------------------------------------------------------------
// MariaDB

const MY_ONLINE_PORT: u16 = 3306;
const MY_TARGET_PORT: u16 = 3307;

/// A mariadbd in a lab host; shut down (mariadb-admin over its socket, then the lab's
/// SIGTERM) on drop. Declare after the lab: dropped before it.
struct MariaDb {
    sock: PathBuf,
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = run(
            None,
            "root",
            20,
            "mariadb-admin",
            &[
                "--no-defaults",
                "-S",
                s(&self.sock),
                "-u",
                "root",
                "shutdown",
            ],
            None,
        );
    }
}

impl MariaDb {
    fn try_query(&self, sql: &str) -> Option<String> {
        let out = run(
            None,
            "root",
            10,
            "mariadb",
            &[
                "--no-defaults",
                "-S",
                s(&self.sock),
                "-u",
                "root",
                "-N",
                "-B",
                "-e",
                sql,
            ],
            None,
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn query(&self, sql: &str) -> String {
        self.try_query(sql)
            .unwrap_or_else(|| panic!("mariadb {}: {sql}", self.sock.display()))
    }

    /// A global status counter (Com_select, Questions, Access_denied_errors...).
    fn status(&self, name: &str) -> u64 {
        self.try_query(&format!("SHOW GLOBAL STATUS LIKE '{name}'"))
            .and_then(|t| t.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    }
}

fn mariadb_template(tmp: &TempDir) -> PathBuf {
    let dir = tmp.path().join("template");
    must(
        None,
        "root",
        90,
        "mariadb-install-db",
        &[
            "--no-defaults",
            &format!("--datadir={}", s(&dir)),
            "--user=mysql",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        None,
    );
    dir
}

fn start_mariadb(
    lab: &Lab,
    host: &str,
    name: &str,
    port: u16,
    template: &Path,
    dir: &Path,
) -> MariaDb {
    let ip = if host == ONLINE { ONLINE_IP } else { TARGET_IP };
    std::fs::create_dir_all(dir).unwrap();
    let data = dir.join("data");
    must(None, "root", 30, "cp", &["-a", s(template), s(&data)], None);
    must(
        None,
        "root",
        10,
        "chown",
        &["-R", "mysql:mysql", s(dir)],
        None,
    );
    let sock = dir.join("sock");
    let args = [
        "--no-defaults".to_string(),
        format!("--datadir={}", s(&data)),
        format!("--socket={}", s(&sock)),
        format!("--pid-file={}", s(&dir.join("pid"))),
        format!("--port={port}"),
        format!("--bind-address={ip}"),
        "--user=mysql".into(),
        "--skip-name-resolve".into(),
        "--max-connections=60".into(),
        "--innodb-buffer-pool-size=16M".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.spawn(host, name, &PathBuf::from("/usr/sbin/mariadbd"), &args);
    let db = MariaDb { sock };
    let (ready, _) = poll(Duration::from_secs(30), || {
        (db.try_query("SELECT 1").is_some(), ())
    });
    assert!(ready, "{name} does not start: {}", tail(&lab.log(name), 30));
    db.query(&format!(
        "CREATE USER bench@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON *.* TO bench@'%'; \
         CREATE DATABASE slap"
    ));
    let plugin = db.query("SELECT plugin FROM mysql.user WHERE user = 'bench'");
    assert_eq!(plugin.trim(), "mysql_native_password");
    db
}

/// mysqlslap as `bench` against online: `clients` connections per iteration, each logging
/// in and running its share of `queries` SELECTs.
fn mysqlslap(lab: &Lab, clients: u32, iterations: u32, queries: u32) {
    let host = ONLINE_IP.to_string();
    let port = MY_ONLINE_PORT.to_string();
    let pw = format!("-p{PASSWORD}");
    let (c, i, q) = (
        clients.to_string(),
        iterations.to_string(),
        queries.to_string(),
    );
    must(
        Some(lab),
        CLIENT,
        60,
        "mysqlslap",
        &[
            "--no-defaults",
            "-h",
            &host,
            "-P",
            &port,
            "-u",
            "bench",
            &pw,
            "--create-schema=slap",
            "--no-drop",
            "--query=SELECT COUNT(*) FROM mysql.user",
            "--concurrency",
            &c,
            "--iterations",
            &i,
            "--number-of-queries",
            &q,
        ],
        None,
    );
}

/// Waits until the target's `Com_select` grew by `want` since `base`.
fn wait_selects(lab: &Lab, target: &MariaDb, base: u64, want: u64, what: &str, tcpcopy: &str) {
    let (same, got) = poll(Duration::from_secs(30), || {
        let n = target.status("Com_select") - base;
        (n == want, n)
    });
    assert!(
        same,
        "{what}: the target ran {got} SELECTs, online {want}\n--- {tcpcopy} ---\n{}\n\
         --- mariadb-target log (tail) ---\n{}",
        tail(&lab.log(tcpcopy), 40),
        tail(&lab.log("mariadb-target"), 20)
    );
}

#[test]
#[ignore = "needs root"]
fn mariadb_native_password_logins_replay() {
    let test = "mariadb_native_password_logins_replay";
    require_root(test);
    let started = Instant::now();
    let tmp = TempDir::new("mariadb-auth");
    let template = mariadb_template(&tmp);
    let lab = Lab::start();
    let online = start_mariadb(
        &lab,
        ONLINE,
        "mariadb-online",
        MY_ONLINE_PORT,
        &template,
        &tmp.sub("online"),
    );
    let target = start_mariadb(
        &lab,
        TARGET,
        "mariadb-target",
        MY_TARGET_PORT,
        &template,
        &tmp.sub("target"),
    );
    let auth = auth_file(tmp.path(), "bench");
    start_intercept_payload(&lab, MY_TARGET_PORT);

    // Live, recorded at the same time for the offline replay.
    let (online_base, target_base) = (online.status("Com_select"), target.status("Com_select"));
    let rec = record(&lab, &tmp.path().join("mariadb.pcap"), MY_ONLINE_PORT);
    start_live(
        &lab,
        "tcpcopy",
        MY_ONLINE_PORT,
        MY_TARGET_PORT,
        &["--auth-file", s(&auth)],
    );
    mysqlslap(&lab, 3, 5, 30);
    let selects = online.status("Com_select") - online_base;
    // A connection per client and iteration (mysqlslap's own first one comes on top).
    let logins = 3 * 5;
    assert!(selects >= 150, "online ran {selects} SELECTs");
    wait_selects(&lab, &target, target_base, selects, "live", "tcpcopy");
    let log = stop_tcpcopy(&lab, "tcpcopy");
    let pcap = rec.stop(&lab);
    let rewritten = stat(&log, "rewritten");
    assert!(
        rewritten >= logins && stat(&log, "accepted") == rewritten,
        "live: {rewritten} logins rewritten, {logins} made: {}",
        tail(&log, 30)
    );
    assert_eq!(target.status("Access_denied_errors"), 0);
    assert!(!log.contains(PASSWORD), "the password is in tcpcopy's log");

    // Offline: the target's greeting gives the nonce at replay time.
    let log = replay_offline(
        &lab,
        &pcap,
        MY_ONLINE_PORT,
        MY_TARGET_PORT,
        &["--auth-file", s(&auth)],
    );
    wait_selects(
        &lab,
        &target,
        target_base,
        2 * selects,
        "offline",
        "offline",
    );
    assert!(
        stat(&log, "rewritten") >= logins,
        "offline: {}",
        tail(&log, 30)
    );

    // Without --auth-file: access denied at the target, counted by tcpcopy.
    let denied = target.status("Access_denied_errors");
    start_live(
        &lab,
        "watch",
        MY_ONLINE_PORT,
        MY_TARGET_PORT,
        &["--protocol", "mysql"],
    );
    mysqlslap(&lab, 2, 2, 4);
    let more = 2 * 2;
    let (failed, n) = poll(Duration::from_secs(20), || {
        let n = target.status("Access_denied_errors") - denied;
        (n >= more, n)
    });
    let log = stop_tcpcopy(&lab, "watch");
    assert!(failed, "the target denied {n} of {more} replayed logins");
    let rejected = stat(&log, "rejected by target");
    assert!(
        rejected >= more,
        "{rejected} refusals counted for {more} failed logins: {}",
        tail(&log, 30)
    );
    eprintln!(
        "{test}: {selects} SELECTs over {logins} logins live ({rewritten} rewritten) and offline, {rejected} refusals counted without --auth-file; {:?}",
        started.elapsed()
    );
}
