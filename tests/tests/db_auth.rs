//! Database logins with passwords (README "Database logins"): PostgreSQL (scram-sha-256 and
//! md5 in pg_hba.conf) and MariaDB (mysql_native_password) with a password user on online and
//! on target. A real client load (pgbench, mysqlslap) logs in to the online server; tcpcopy
//! with `--payload --auth-file` (intercept `--payload`) recomputes every login's answer for
//! the target's own challenge, live and offline (a tcpdump capture of the same load), and the
//! target executes every statement the online server executed. Without `--auth-file` the
//! replayed logins fail at the target and tcpcopy counts them.
//! Needs root and the packages of scripts/test.sh (postgresql, mariadb-server).

mod real_common;

use std::net::SocketAddrV4;
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
            "--payload",
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
    let args = [
        "-Z",
        "root",
        "-U",
        "--immediate-mode",
        "-B",
        "32768",
        "-s",
        "4096",
        "-i",
        "eth0",
        "-w",
        s(path),
        &filter,
    ];
    lab.spawn(ONLINE, "record", &PathBuf::from("/usr/bin/tcpdump"), &args);
    let (listening, _) = poll(Duration::from_secs(10), || {
        (lab.log("record").contains("listening on"), ())
    });
    assert!(listening, "tcpdump: {}", lab.log("record"));
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
        let code = lab.stop("record", libc::SIGINT, Duration::from_secs(10));
        assert_eq!(code, Some(0), "tcpdump: {}", lab.log("record"));
        assert!(
            lab.log("record")
                .lines()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "tcpdump dropped packets: {}",
            lab.log("record")
        );
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
