//! Control-channel topologies and wire options end to end (tcpcopy.md 5, intercept.md 1, 4,
//! 5), with nginx on the online and target hosts of the lab (lab.md): two tcpcopy instances on
//! two online hosts sharing one intercept, one tcpcopy with two intercepts on two assistant
//! hosts, an intercept restarted under `tcpcopy -L`, `--single`, `--disable-combined` and
//! `--payload` (and a payload mismatch), `-C 1` / `-C 8` with two transfers, and intercept's
//! `-D` and `--dnat` behind a user-space address rewriter (the lab kernel has no netfilter).
//! Each case compares the target's access log with the online's (request, status, bytes), per
//! online host, client or port. Needs root and nginx-light, apache2-utils (ab), curl, tcpdump.
//!
//! The cases run one at a time (they load both CPUs): see [`serial`].

mod real_common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use real_common::*;
use tc_e2e::lab::*;

const ONLINE2: &str = "online2";
const ONLINE2_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 21);
const ASSIST2: &str = "assist2";
const ASSIST2_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 41);
/// A second address of the client host (a second real client IP for `-c`).
const CLIENT2_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const TARGET_PORT2: u16 = 8081;
const ONLINE_PORT2: u16 = 81;

/// One case at a time: each loads both CPUs.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One access-log line: `$remote_addr $remote_port $server_port "$request" $status
/// $body_bytes_sent`.
#[derive(Debug, Clone)]
struct Entry {
    ip: String,
    sport: u16,
    /// `"METHOD URI PROTO" status bytes`
    req: String,
}

fn read_log(path: &PathBuf) -> Vec<Entry> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(4, ' ');
            let ip = it.next()?.to_string();
            let _rport: u16 = it.next()?.parse().ok()?;
            Some(Entry {
                ip,
                sport: it.next()?.parse().ok()?,
                req: it.next()?.to_string(),
            })
        })
        .collect()
}

/// Multiset of `class | request` over the entries `class` keeps.
fn classes(entries: &[Entry], class: impl Fn(&Entry) -> Option<String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in entries {
        if let Some(c) = class(e) {
            *out.entry(format!("{c} | {}", e.req)).or_insert(0) += 1;
        }
    }
    out
}

/// The last value of `name:<n>` in a log (statistics lines), if any.
fn stat(log: &str, name: &str) -> Option<u64> {
    let pat = format!("{name}:");
    log.lines().rev().find_map(|l| {
        let i = l.find(&pat)?;
        let rest = &l[i + pat.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// The statistics and diagnostics of a tcpcopy or intercept log (for reports).
fn stat_lines(log: &str) -> String {
    let keys = [
        "intercepts active",
        "session drops",
        "conns:",
        "active:",
        "send syn",
        "broken",
        "protocol",
        "frame",
        "total resp packs",
        "route hit",
        "records sent",
        "delayed:",
        "panicked",
        "error",
        "ERROR",
        "WARN",
    ];
    let mut lines: Vec<&str> = log
        .lines()
        .filter(|l| keys.iter().any(|k| l.contains(k)))
        .collect();
    if lines.len() > 40 {
        lines.drain(..lines.len() - 40);
    }
    lines.join("\n")
}

/// A lab with nginx servers; tcpcopy and intercept processes are started by each case.
/// Field order is drop order: rewriters, the lab, then the files.
struct Topo {
    mirrors: Vec<Mirror>,
    lab: Lab,
    tmp: TempDir,
    /// Access log of each nginx host.
    logs: BTreeMap<String, PathBuf>,
    tcpcopies: Mutex<Vec<String>>,
    intercepts: Mutex<Vec<String>>,
    started: Instant,
}

fn setup(test: &str) -> (MutexGuard<'static, ()>, Topo) {
    require(test, &["nginx", "curl", "ab"]);
    let guard = serial();
    let tmp = TempDir::new("topo");
    let lab = Lab::start();
    (
        guard,
        Topo {
            mirrors: Vec::new(),
            lab,
            tmp,
            logs: BTreeMap::new(),
            tcpcopies: Mutex::new(Vec::new()),
            intercepts: Mutex::new(Vec::new()),
            started: Instant::now(),
        },
    )
}

impl Topo {
    /// nginx on `host` (address `ip`) listening on `ports`, one access log.
    fn nginx(&mut self, host: &str, ip: Ipv4Addr, ports: &[u16]) {
        let dir = self.tmp.sub(host);
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::create_dir_all(dir.join("body")).unwrap();
        std::fs::write(
            www.join("index.html"),
            "<html><body>replay</body></html>\n".repeat(20),
        )
        .unwrap();
        std::fs::write(www.join("small.txt"), "ok\n").unwrap();
        std::fs::write(www.join("k16.bin"), vec![b'k'; 16 << 10]).unwrap();
        let log = dir.join("access.log");
        let listens: String = ports
            .iter()
            .map(|p| format!("listen {ip}:{p};\n"))
            .collect();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\n\
                 master_process on;\n\
                 worker_processes 1;\n\
                 pid {dir}/nginx.pid;\n\
                 error_log stderr warn;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n\
                   log_format topo '$remote_addr $remote_port $server_port \"$request\" \
                 $status $body_bytes_sent';\n\
                   access_log {log} topo;\n\
                   client_body_temp_path {dir}/body;\n\
                   keepalive_requests 100000;\n\
                   keepalive_timeout 60s;\n\
                   server {{\n\
                     {listens}\
                     root {www};\n\
                   }}\n\
                 }}\n",
                dir = s(&dir),
                log = s(&log),
                www = s(&www),
            ),
        )
        .unwrap();
        let name = format!("nginx-{host}");
        let prefix = format!("{}/", s(&dir));
        self.lab.spawn(
            host,
            &name,
            &PathBuf::from("/usr/sbin/nginx"),
            &["-p", &prefix, "-e", "stderr", "-c", s(&conf)],
        );
        for &p in ports {
            wait_tcp(&self.lab, host, SocketAddrV4::new(ip, p), &name);
        }
        self.logs.insert(host.to_string(), log);
    }

    /// The usual pair: nginx on online:80 and target:8080.
    fn servers(&mut self) {
        self.nginx(ONLINE, ONLINE_IP, &[HTTP_ONLINE_PORT]);
        self.nginx(TARGET, TARGET_IP, &[HTTP_TARGET_PORT]);
    }

    /// intercept `name` in `host` (address `ip`) capturing the target's answers on `dev`, with
    /// `extra` options, accepting the tcpcopy hosts (online, online2); waits until it listens
    /// (probed from the client host, so the probe is not counted as a tunnel from online).
    fn intercept_on(&self, name: &str, host: &str, ip: Ipv4Addr, dev: &str, extra: &[&str]) {
        let filter = format!("tcp and (src port {HTTP_TARGET_PORT} or src port {TARGET_PORT2})");
        let allow = format!("{ONLINE_IP},{ONLINE2_IP}");
        let mut args = vec!["-F", filter.as_str(), "-i", dev, "--allow", allow.as_str()];
        args.extend_from_slice(extra);
        self.lab.spawn(host, name, &bin("intercept"), &args);
        assert!(
            self.lab.wait_listening(
                CLIENT,
                SocketAddrV4::new(ip, INTERCEPT_PORT),
                Duration::from_secs(10)
            ),
            "{name} does not listen: {}",
            self.lab.log(name)
        );
        let mut names = self.intercepts.lock().unwrap();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }

    fn intercept(&self, extra: &[&str]) {
        self.intercept_on("intercept", ASSIST, ASSIST_IP, "eth0", extra);
    }

    /// tcpcopy `name` in `host` with `args`; waits for its event loop.
    fn tcpcopy_on(&self, name: &str, host: &str, args: &[&str]) {
        // A tcpcopy started again under the same name appends to the same log: wait for a
        // new "event loop running" line, not the last run's (the workload would otherwise
        // start before this run captures: its first connections were missed, under load).
        let before = self.lab.log_count(name, "event loop running");
        self.lab.spawn(host, name, &bin("tcpcopy"), args);
        let (up, _) = poll(Duration::from_secs(15), || {
            (
                self.lab.log_count(name, "event loop running") > before || !self.lab.running(name),
                (),
            )
        });
        assert!(
            up && self.lab.running(name),
            "{name} did not start: {}",
            self.lab.log(name)
        );
        self.tcpcopies.lock().unwrap().push(name.to_string());
    }

    /// The usual tcpcopy on online (80 -> target:8080, intercept .40, fake clients
    /// 203.0.113.x) with `extra` options.
    fn tcpcopy(&self, extra: &[&str]) {
        let x = format!("{HTTP_ONLINE_PORT}-{TARGET_IP}:{HTTP_TARGET_PORT}");
        let mut args = vec!["-x", x.as_str(), "-s", "198.18.0.40"];
        if !extra.contains(&"-c") {
            args.extend(["-c", "203.0.113.x"]);
        }
        args.extend_from_slice(extra);
        self.tcpcopy_on("tcpcopy", ONLINE, &args);
    }

    /// Stops tcpcopy `name` (final statistics) and returns its log; it must exit with 0.
    fn stop_tcpcopy(&self, name: &str) -> String {
        let code = self.lab.stop(name, libc::SIGTERM, Duration::from_secs(15));
        let log = self.lab.log(name);
        assert_eq!(code, Some(0), "{name} exit: {}", tail(&log, 40));
        log
    }

    /// Stops every process still running and returns the statistics of every tcpcopy and
    /// intercept, for failure messages.
    fn report(&self) -> String {
        let mut out = String::new();
        for name in self
            .tcpcopies
            .lock()
            .unwrap()
            .iter()
            .chain(self.intercepts.lock().unwrap().iter())
        {
            let code = self.lab.stop(name, libc::SIGTERM, Duration::from_secs(15));
            out += &format!(
                "--- {name} (exit {code:?}) statistics ---\n{}\n",
                stat_lines(&self.lab.log(name))
            );
        }
        out
    }

    /// ab from the client namespace; every request must succeed.
    fn ab(&self, args: &[&str]) {
        let out = must(Some(&self.lab), CLIENT, 60, "ab", args, None);
        assert!(
            out.contains("Failed requests:        0") && !out.contains("Non-2xx responses"),
            "ab {args:?}: {out}"
        );
    }

    /// The standard load against `base` (`http://ip:port`): keep-alive and short connections
    /// and 16 KB answers, every URI tagged with `tag`; optionally from source address `from`.
    /// The number of requests.
    fn load(&self, base: &str, tag: &str, from: Option<Ipv4Addr>) -> usize {
        let from = from.map(|ip| ip.to_string());
        let bind: Vec<&str> = match &from {
            Some(ip) => vec!["-B", ip.as_str()],
            None => vec![],
        };
        let run = |extra: &[&str], url: String| {
            let mut args = vec!["-q"];
            args.extend_from_slice(&bind);
            args.extend_from_slice(extra);
            args.push(&url);
            self.ab(&args);
        };
        run(
            &["-k", "-c", "8", "-n", "300"],
            format!("{base}/index.html?{tag}"),
        );
        run(&["-c", "8", "-n", "100"], format!("{base}/small.txt?{tag}"));
        run(
            &["-k", "-c", "2", "-n", "20"],
            format!("{base}/k16.bin?{tag}"),
        );
        420
    }

    /// Waits until `host`'s access log has at least `n` lines; its entries.
    fn online(&self, host: &str, n: usize) -> Vec<Entry> {
        let path = &self.logs[host];
        let (ok, entries) = poll(Duration::from_secs(10), || {
            let e = read_log(path);
            (e.len() >= n, e)
        });
        assert!(ok, "{host} served {} of {n} requests", entries.len());
        entries
    }

    /// The target's log must come to hold exactly `want` (classes of [`classes`] with
    /// `class`), from fake client addresses only.
    fn expect(
        &self,
        test: &str,
        want: &BTreeMap<String, usize>,
        class: impl Fn(&Entry) -> Option<String>,
    ) {
        let path = &self.logs[TARGET];
        let (same, got) = poll(REPLAY_DEADLINE, || {
            let got = classes(&read_log(path), &class);
            (&got == want, got)
        });
        if !same {
            let n: usize = want.values().sum();
            let m: usize = got.values().sum();
            panic!(
                "{test}: target served {m} of the selected requests, online {n}, after \
                 {REPLAY_DEADLINE:?}; differences e.g. {:#?}\n{}",
                count_diff(want, &got),
                self.report()
            );
        }
        let foreign: Vec<String> = read_log(path)
            .into_iter()
            .map(|e| e.ip)
            .filter(|ip| !ip.starts_with("203.0.113."))
            .take(5)
            .collect();
        assert!(
            foreign.is_empty(),
            "{test}: target requests from {foreign:?}"
        );
        eprintln!(
            "{test}: {} requests replayed exactly, after {:?}",
            want.values().sum::<usize>(),
            self.started.elapsed()
        );
    }

    /// The standard case: tcpcopy and intercept already running, [`Topo::load`] on online:80,
    /// the target must serve the same (the requests of this load).
    fn expect_standard(&self, test: &str) {
        let before = read_log(&self.logs[ONLINE]).len();
        let n = self.load(&format!("http://{ONLINE_IP}"), test, None);
        let tag = format!("?{test} ");
        let mine = |e: &Entry| e.req.contains(&tag).then(String::new);
        let want = classes(&self.online(ONLINE, before + n), mine);
        self.expect(test, &want, mine);
    }

    /// Number of control connections intercept `name` accepted from `from`.
    fn tunnels_from(&self, name: &str, from: Ipv4Addr) -> usize {
        let pat = format!("from {from}:");
        self.lab
            .log(name)
            .lines()
            .filter(|l| l.contains("it adds fd") && l.contains(&pat))
            .count()
    }
}

// ------------------------------------------------------------------------------------------
// A user-space address rewriter: the lab kernel has no netfilter to NAT with.

/// Copies the frames arriving on `eth0` of a host to a veth pair `mir1` -> `mir0` in the same
/// host, with the IPv4 source and/or destination address rewritten (IP checksum fixed, TCP
/// checksum left alone): what an intercept capturing on `mir0` sees is what it would see
/// behind a NAT. The original frames still reach `eth0` (and stop there: ip_forward=0).
struct Mirror {
    stop: Arc<AtomicBool>,
    copied: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

const MIR_MAC: [u8; 6] = [0x02, 0x18, 0, 0, 0, 0x01];

fn packet_socket(dev: &str) -> OwnedFd {
    // SAFETY: plain socket calls on a fresh descriptor owned by the OwnedFd.
    unsafe {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32);
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let name = std::ffi::CString::new(dev).unwrap();
        let index = libc::if_nametoindex(name.as_ptr());
        assert!(index > 0, "no device {dev}");
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind {dev}: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        // A user-space copier falls behind on a busy machine (the suite runs these tests in
        // parallel): a deep buffer keeps bursts instead of dropping response headers the
        // intercept behind it must see (the default ~200 KB lost a few under load).
        let size: libc::c_int = 16 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        fd
    }
}

impl Mirror {
    /// `src`/`dst`: (from, to) rewrites of the IPv4 source / destination.
    fn start(
        lab: &Lab,
        host: &str,
        src: Option<(Ipv4Addr, Ipv4Addr)>,
        dst: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Mirror {
        let ns = lab.ns(host);
        let mac = MIR_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        for args in [
            vec![
                "-n", &ns, "link", "add", "mir0", "address", &mac, "type", "veth", "peer", "name",
                "mir1",
            ],
            vec!["-n", &ns, "link", "set", "mir0", "up"],
            vec!["-n", &ns, "link", "set", "mir1", "up"],
        ] {
            must(None, "root", 10, "ip", &args, None);
        }
        let (rx, tx) = lab.in_ns(host, || (packet_socket("eth0"), packet_socket("mir1")));
        let stop = Arc::new(AtomicBool::new(false));
        let copied = Arc::new(AtomicU64::new(0));
        let (st, cp) = (stop.clone(), copied.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                // SAFETY: recvfrom into our buffer and address structure.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = unsafe {
                    libc::recvfrom(
                        rx.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                        &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                if n < 34 || sll.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                let f = &mut buf[..n as usize];
                if f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 {
                    continue;
                }
                let ihl = usize::from(f[14] & 0x0f) * 4;
                for (range, rule) in [(26..30, src), (30..34, dst)] {
                    if let Some((from, to)) = rule {
                        if f[range.clone()] == from.octets() {
                            f[range].copy_from_slice(&to.octets());
                        }
                    }
                }
                f[..6].copy_from_slice(&MIR_MAC);
                f[24..26].copy_from_slice(&[0, 0]);
                let sum = tc_core::packet::checksum::checksum(&f[14..14 + ihl.min(f.len() - 14)]);
                f[24..26].copy_from_slice(&sum.to_be_bytes());
                // SAFETY: send of our buffer on our socket.
                let sent = unsafe {
                    libc::send(
                        tx.as_raw_fd(),
                        f.as_ptr() as *const libc::c_void,
                        f.len(),
                        0,
                    )
                };
                if sent > 0 {
                    cp.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Mirror {
            stop,
            copied,
            thread: Some(thread),
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------------------------
// Cases

/// 1. Two tcpcopy instances on two online hosts (fake clients .5 and .6, the same target
///    port) share one intercept, under concurrent load: intercept routes each response to the
///    tunnel that announced its connection, so each tcpcopy gets only its own responses and
///    both replays are exact.
#[test]
#[ignore = "needs root"]
fn two_tcpcopies_one_intercept() {
    let test = "two_tcpcopies_one_intercept";
    let (_g, mut t) = setup(test);
    t.lab.add_host(ONLINE2, ONLINE2_IP);
    t.servers();
    t.nginx(ONLINE2, ONLINE2_IP, &[HTTP_ONLINE_PORT]);
    t.intercept(&[]);
    let x = format!("{HTTP_ONLINE_PORT}-{TARGET_IP}:{HTTP_TARGET_PORT}");
    for (name, host, fake) in [
        ("tcpcopy-a", ONLINE, "203.0.113.5"),
        ("tcpcopy-b", ONLINE2, "203.0.113.6"),
    ] {
        t.tcpcopy_on(name, host, &["-x", &x, "-s", "198.18.0.40", "-c", fake]);
    }
    let (na, nb) = std::thread::scope(|s| {
        let a = s.spawn(|| t.load(&format!("http://{ONLINE_IP}"), "a", None));
        let b = s.spawn(|| t.load(&format!("http://{ONLINE2_IP}"), "b", None));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut want = classes(&t.online(ONLINE, na), |_| Some("a".into()));
    want.extend(classes(&t.online(ONLINE2, nb), |_| Some("b".into())));
    t.expect(test, &want, |e| match e.ip.as_str() {
        "203.0.113.5" => Some("a".into()),
        "203.0.113.6" => Some("b".into()),
        other => Some(other.into()),
    });
    assert_eq!(t.tunnels_from("intercept", ONLINE_IP), 2);
    assert_eq!(t.tunnels_from("intercept", ONLINE2_IP), 2);
    for name in ["tcpcopy-a", "tcpcopy-b"] {
        let log = t.stop_tcpcopy(name);
        let unknown = stat(&log, "unknown response").unwrap_or(0);
        let records = stat(&log, "response records").unwrap_or(0);
        eprintln!("{test}: {name}: response records {records}, unknown responses {unknown}");
        assert!(
            records > 0,
            "{name}: no response records\n{}",
            stat_lines(&log)
        );
        assert_eq!(
            unknown,
            0,
            "{name} got responses of sessions it does not have\n{}",
            stat_lines(&log)
        );
    }
}

/// 2. One tcpcopy with two intercepts on two assistant hosts: the target routes
///    203.0.113.0/25 to .40 and 203.0.113.128/25 to .41; two real client addresses map to
///    fake clients .5 and .200, one in each half. Every intercept gets every CLIENT_ADD and
///    returns what it captures: both halves replay exactly.
#[test]
#[ignore = "needs root"]
fn one_tcpcopy_two_intercepts() {
    let test = "one_tcpcopy_two_intercepts";
    let (_g, mut t) = setup(test);
    t.lab.add_host(ASSIST2, ASSIST2_IP);
    let tgt = t.lab.ns(TARGET);
    for (net, via) in [
        ("203.0.113.0/25", ASSIST_IP),
        ("203.0.113.128/25", ASSIST2_IP),
    ] {
        must(
            None,
            "root",
            10,
            "ip",
            &["-n", &tgt, "route", "add", net, "via", &via.to_string()],
            None,
        );
    }
    let cl = t.lab.ns(CLIENT);
    let c2 = format!("{CLIENT2_IP}/24");
    must(
        None,
        "root",
        10,
        "ip",
        &["-n", &cl, "addr", "add", &c2, "dev", "eth0"],
        None,
    );
    t.servers();
    t.intercept(&[]);
    t.intercept_on("intercept2", ASSIST2, ASSIST2_IP, "eth0", &[]);
    let x = format!("{HTTP_ONLINE_PORT}-{TARGET_IP}:{HTTP_TARGET_PORT}");
    t.tcpcopy_on(
        "tcpcopy",
        ONLINE,
        &[
            "-x",
            &x,
            "-s",
            "198.18.0.40,198.18.0.41",
            "-c",
            "203.0.113.5,203.0.113.200",
        ],
    );
    // The first client address seen gets .5, the second .200 (-c is assigned in order).
    let base = format!("http://{ONLINE_IP}");
    for from in [CLIENT_IP, CLIENT2_IP] {
        must(
            Some(&t.lab),
            CLIENT,
            10,
            "curl",
            &[
                "-s",
                "-f",
                "-o",
                "/dev/null",
                "--interface",
                &from.to_string(),
                &format!("{base}/small.txt?first"),
            ],
            None,
        );
    }
    let n = std::thread::scope(|s| {
        let a = s.spawn(|| t.load(&base, "low", Some(CLIENT_IP)));
        let b = s.spawn(|| t.load(&base, "high", Some(CLIENT2_IP)));
        a.join().unwrap() + b.join().unwrap()
    });
    let half = |ip: &str| match ip {
        "198.18.0.10" | "203.0.113.5" => Some("low".to_string()),
        "198.18.0.11" | "203.0.113.200" => Some("high".to_string()),
        other => Some(other.to_string()),
    };
    let want = classes(&t.online(ONLINE, n + 2), |e| half(&e.ip));
    t.expect(test, &want, |e| half(&e.ip));
    let log = t.stop_tcpcopy("tcpcopy");
    let mut sent = Vec::new();
    for name in ["intercept", "intercept2"] {
        t.lab.stop(name, libc::SIGTERM, Duration::from_secs(10));
        let ilog = t.lab.log(name);
        sent.push((stat(&ilog, "records sent"), stat(&ilog, "route")));
    }
    eprintln!(
        "{test}: intercepts (records sent, routes): {sent:?}; tcpcopy: {}",
        stat_lines(&log).lines().next().unwrap_or("")
    );
    for (name, (records, _)) in ["intercept", "intercept2"].iter().zip(&sent) {
        assert!(
            records.unwrap_or(0) > 0,
            "{name} passed no response: {}",
            stat_lines(&t.lab.log(name))
        );
    }
}

/// 3. intercept restarted mid-run under `tcpcopy -L`: tcpcopy keeps running and reconnects
///    (every 12 s); connections started after that are replayed exactly (the ones started
///    while intercept was down are lost, as expected, and only counted).
#[test]
#[ignore = "needs root"]
fn intercept_restart_with_lonely_tcpcopy() {
    let test = "intercept_restart_with_lonely_tcpcopy";
    let (_g, mut t) = setup(test);
    t.servers();
    t.intercept(&[]);
    t.tcpcopy(&["-L"]);
    let base = format!("http://{ONLINE_IP}");
    let tagged = |tag: &'static str| move |e: &Entry| e.req.contains(tag).then(String::new);
    let n1 = t.load(&base, "before", None);
    let want = classes(&t.online(ONLINE, n1), tagged("?before"));
    t.expect(&format!("{test} (before)"), &want, tagged("?before"));

    let code = t
        .lab
        .stop("intercept", libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0), "intercept exit: {}", t.lab.log("intercept"));
    // tcpcopy has seen its tunnels close; with -L it must still be running after that.
    wait_for(
        Duration::from_secs(10),
        || t.lab.log("tcpcopy").contains("is inactive"),
        || format!("tcpcopy to notice: {}", tail(&t.lab.log("tcpcopy"), 30)),
    );
    assert!(
        t.lab.running("tcpcopy"),
        "tcpcopy -L stopped with intercept: {}",
        tail(&t.lab.log("tcpcopy"), 30)
    );
    t.ab(&[
        "-q",
        "-c",
        "4",
        "-n",
        "40",
        &format!("{base}/small.txt?down"),
    ]);

    t.intercept(&[]);
    let (back, _) = poll(Duration::from_secs(20), || {
        (t.tunnels_from("intercept", ONLINE_IP) >= 4, ())
    });
    assert!(
        back,
        "tcpcopy did not reconnect within 20 s ({} tunnels)\n{}",
        t.tunnels_from("intercept", ONLINE_IP),
        t.report()
    );
    assert!(t.lab.running("tcpcopy"));
    let n3 = t.load(&base, "after", None);
    let online = t.online(ONLINE, n1 + 40 + n3);
    let want = classes(&online, tagged("?after"));
    t.expect(&format!("{test} (after)"), &want, tagged("?after"));
    let down = read_log(&t.logs[TARGET])
        .iter()
        .filter(|e| e.req.contains("?down"))
        .count();
    let log = t.stop_tcpcopy("tcpcopy");
    eprintln!(
        "{test}: {down} of 40 requests sent while intercept was down reached the target; \
         tcpcopy: {}",
        stat_lines(&log)
            .lines()
            .rfind(|l| l.contains("intercepts active"))
            .unwrap_or("")
    );
}

/// 4. `--single` on both sides: no CLIENT_ADD, intercept spreads every response over the
///    tunnels of its one tcpcopy.
#[test]
#[ignore = "needs root"]
fn single_mode() {
    let test = "single_mode";
    let (_g, mut t) = setup(test);
    t.servers();
    t.intercept(&["--single"]);
    t.tcpcopy(&["--single"]);
    t.expect_standard(test);
    let log = t.stop_tcpcopy("tcpcopy");
    assert_eq!(stat(&log, "client add"), Some(0), "{}", stat_lines(&log));
}

/// 5a. `--disable-combined` on both sides (bare 64-byte records).
#[test]
#[ignore = "needs root"]
fn wire_disable_combined() {
    wire_variant("wire_disable_combined", &["--disable-combined"]);
}

/// 5b. `--payload` on both sides (192-byte records, frames of at most 6).
#[test]
#[ignore = "needs root"]
fn wire_payload() {
    wire_variant("wire_payload", &["--payload"]);
}

/// 5c. `--payload --disable-combined` on both sides (bare 192-byte records).
#[test]
#[ignore = "needs root"]
fn wire_payload_disable_combined() {
    wire_variant(
        "wire_payload_disable_combined",
        &["--payload", "--disable-combined"],
    );
}

fn wire_variant(test: &str, opts: &[&str]) {
    let (_g, mut t) = setup(test);
    t.servers();
    t.intercept(opts);
    t.tcpcopy(opts);
    t.expect_standard(test);
    let log = t.stop_tcpcopy("tcpcopy");
    assert_eq!(stat(&log, "broken frames"), Some(0), "{}", stat_lines(&log));
}

/// 5d. A mismatch: tcpcopy `--payload`, intercept default (64-byte records, combined). tcpcopy
///     must not crash, must say that the control stream is broken, and must send nothing
///     anywhere but the target (tcpdump on online's eth0: every packet it sends out with a
///     source other than online's own address goes to the target).
#[test]
#[ignore = "needs root"]
fn wire_mismatch_payload() {
    let test = "wire_mismatch_payload";
    let (_g, mut t) = setup(test);
    t.servers();
    t.intercept(&[]);
    t.lab.spawn(
        ONLINE,
        "tcpdump",
        &PathBuf::from("/usr/bin/tcpdump"),
        &[
            "-Q",
            "out",
            "-i",
            "eth0",
            "-n",
            "-l",
            "ip and not src host 198.18.0.20 and not dst host 198.18.0.30",
        ],
    );
    let (listening, _) = poll(Duration::from_secs(10), || {
        (t.lab.log("tcpdump").contains("listening on"), ())
    });
    assert!(listening, "tcpdump: {}", t.lab.log("tcpdump"));
    t.tcpcopy(&["--payload"]);
    let base = format!("http://{ONLINE_IP}");
    t.ab(&[
        "-q",
        "-k",
        "-c",
        "4",
        "-n",
        "100",
        &format!("{base}/index.html?m"),
    ]);
    t.ab(&["-q", "-c", "4", "-n", "40", &format!("{base}/small.txt?m")]);
    // tcpcopy reads what intercept sent and finds the stream broken: it closes the tunnel.
    wait_for(
        Duration::from_secs(15),
        || t.lab.log("tcpcopy").contains("tunnel closed"),
        || {
            format!(
                "tcpcopy to close the tunnel: {}",
                tail(&t.lab.log("tcpcopy"), 30)
            )
        },
    );
    let running = t.lab.running("tcpcopy");
    let code = t
        .lab
        .stop("tcpcopy", libc::SIGTERM, Duration::from_secs(15));
    let log = t.lab.log("tcpcopy");
    t.lab.stop("tcpdump", libc::SIGTERM, Duration::from_secs(5));
    let dump = t.lab.log("tcpdump");
    let stray: Vec<&str> = dump
        .lines()
        // Packet lines start with a time stamp `HH:MM:SS.frac`; the summary lines do not.
        .filter(|l| l.len() > 9 && l.as_bytes()[2] == b':' && l.as_bytes()[5] == b':')
        .take(10)
        .collect();
    let target = read_log(&t.logs[TARGET]).len();
    let broken = stat(&log, "broken frames").unwrap_or(0);
    let diag: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("broken") || l.contains("protocol") || l.contains("frame")
        })
        .take(5)
        .collect();
    eprintln!(
        "{test}: tcpcopy running after the load: {running}, exit {code:?}; target served \
         {target} of 140; broken frames {broken}; diagnostics: {diag:#?}\n{}",
        stat_lines(&log)
    );
    assert!(
        !log.contains("panicked"),
        "tcpcopy panicked: {}",
        tail(&log, 40)
    );
    assert_eq!(
        code.or(Some(0)),
        Some(0),
        "tcpcopy exit {code:?}: {}",
        tail(&log, 40)
    );
    assert!(
        broken > 0 || !diag.is_empty(),
        "tcpcopy did not report the broken control stream: {}",
        tail(&log, 40)
    );
    assert!(
        stray.is_empty(),
        "tcpcopy sent elsewhere than the target: {stray:#?}"
    );
}

/// 6a. `-C 1`: one tunnel.
#[test]
#[ignore = "needs root"]
fn tunnels_one() {
    let test = "tunnels_one";
    let (_g, mut t) = setup(test);
    t.servers();
    t.intercept(&[]);
    t.tcpcopy(&["-C", "1"]);
    t.expect_standard(test);
    assert_eq!(t.tunnels_from("intercept", ONLINE_IP), 1);
}

/// 6b. `-C 8` and two transfers in one tcpcopy (80 -> 8080, 81 -> 8081), loaded at once.
#[test]
#[ignore = "needs root"]
fn tunnels_eight_two_transfers() {
    let test = "tunnels_eight_two_transfers";
    let (_g, mut t) = setup(test);
    t.nginx(ONLINE, ONLINE_IP, &[HTTP_ONLINE_PORT, ONLINE_PORT2]);
    t.nginx(TARGET, TARGET_IP, &[HTTP_TARGET_PORT, TARGET_PORT2]);
    t.intercept(&[]);
    let x = format!(
        "{HTTP_ONLINE_PORT}-{TARGET_IP}:{HTTP_TARGET_PORT},{ONLINE_PORT2}-{TARGET_IP}:{TARGET_PORT2}"
    );
    t.tcpcopy_on(
        "tcpcopy",
        ONLINE,
        &[
            "-x",
            &x,
            "-s",
            "198.18.0.40",
            "-c",
            "203.0.113.x",
            "-C",
            "8",
        ],
    );
    let n = std::thread::scope(|s| {
        let a = s.spawn(|| {
            t.load(
                &format!("http://{ONLINE_IP}:{HTTP_ONLINE_PORT}"),
                "p80",
                None,
            )
        });
        let b = s.spawn(|| t.load(&format!("http://{ONLINE_IP}:{ONLINE_PORT2}"), "p81", None));
        a.join().unwrap() + b.join().unwrap()
    });
    let want = classes(&t.online(ONLINE, n), |e| Some(e.sport.to_string()));
    t.expect(test, &want, |e| {
        Some(match e.sport {
            HTTP_TARGET_PORT => HTTP_ONLINE_PORT.to_string(),
            TARGET_PORT2 => ONLINE_PORT2.to_string(),
            p => format!("target port {p}"),
        })
    });
    assert_eq!(t.tunnels_from("intercept", ONLINE_IP), 8);
}

/// The control of 7a/7b: with the rewriter but without the option, intercept cannot route
/// the answers (its route lookups are lost, it sends no record) and the target serves none of 5 requests; then
/// intercept and tcpcopy are stopped for the real run.
fn rewritten_without_option(t: &Topo, test: &str, tcpcopy_opts: &[&str]) {
    t.intercept_on("intercept", ASSIST, ASSIST_IP, "mir0", &[]);
    t.tcpcopy(tcpcopy_opts);
    for i in 0..5 {
        must(
            Some(&t.lab),
            CLIENT,
            10,
            "curl",
            &[
                "-s",
                "-f",
                "-o",
                "/dev/null",
                &format!("http://{ONLINE_IP}/small.txt?control{i}"),
            ],
            None,
        );
    }
    // Nothing to poll for: the right outcome is that nothing is replayed, and intercept counts
    // its lost lookups only in its exit statistics. This wait is the window for a wrong replay.
    std::thread::sleep(Duration::from_secs(2));
    t.stop_tcpcopy("tcpcopy");
    t.lab
        .stop("intercept", libc::SIGTERM, Duration::from_secs(10));
    let ilog = t.lab.log("intercept");
    let replayed = read_log(&t.logs[TARGET])
        .iter()
        .filter(|e| e.req.contains("?control"))
        .count();
    // SYN-ACKs without a route are looked up in vain ("lost") and wait in the delay table.
    let lost = stat(&ilog, "lost").unwrap_or(0);
    let sent = stat(&ilog, "records sent").unwrap_or(0);
    eprintln!("{test}: without the option: {replayed} of 5 replayed, {lost} lookups lost");
    assert!(
        replayed == 0 && lost > 0 && sent == 0,
        "{test}: the rewriter does not make the option necessary ({replayed} of 5 replayed \
         without it, {lost} lookups lost, {sent} records sent)\n{}",
        stat_lines(&ilog)
    );
}

/// 7a. intercept `-D A-B` (docker): intercept sees the answers to fake client 203.0.113.5
///     addressed to 203.0.113.105 (a rewriter between the assistant's eth0 and the device it
///     captures on plays the NAT); `-D 203.0.113.105-203.0.113.5` restores the destination
///     before routing, and the replay is exact (without `-D` nothing is replayed).
#[test]
#[ignore = "needs root"]
fn docker_rewrite() {
    let test = "docker_rewrite";
    let (_g, mut t) = setup(test);
    t.servers();
    let fake = Ipv4Addr::new(203, 0, 113, 5);
    let seen = Ipv4Addr::new(203, 0, 113, 105);
    let m = Mirror::start(&t.lab, ASSIST, None, Some((fake, seen)));
    t.mirrors.push(m);
    rewritten_without_option(&t, test, &["-c", "203.0.113.5"]);
    t.intercept_on(
        "intercept",
        ASSIST,
        ASSIST_IP,
        "mir0",
        &["-D", "203.0.113.105-203.0.113.5"],
    );
    t.tcpcopy(&["-c", "203.0.113.5"]);
    t.expect_standard(test);
    let copied = t.mirrors[0].copied.load(Ordering::Relaxed);
    eprintln!("{test}: rewriter copied {copied} frames");
    assert!(copied > 0);
}

/// 7b. intercept `--dnat`: the answers reach intercept from 198.18.0.35, not from the
///     target address tcpcopy sent to (a rewriter plays the DNAT box); routes without the
///     target IP still find the tunnel, and the replay is exact (without `--dnat` nothing is
///     replayed).
#[test]
#[ignore = "needs root"]
fn dnat_routes_without_target_ip() {
    let test = "dnat_routes_without_target_ip";
    let (_g, mut t) = setup(test);
    t.servers();
    let other = Ipv4Addr::new(198, 18, 0, 35);
    let m = Mirror::start(&t.lab, ASSIST, Some((TARGET_IP, other)), None);
    t.mirrors.push(m);
    rewritten_without_option(&t, test, &[]);
    t.intercept_on("intercept", ASSIST, ASSIST_IP, "mir0", &["--dnat"]);
    t.tcpcopy(&[]);
    t.expect_standard(test);
    assert!(t.mirrors[0].copied.load(Ordering::Relaxed) > 0);
}
