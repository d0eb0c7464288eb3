//! Real captures: two network namespaces joined by a veth pair (198.18.0.1 <-> 198.18.0.2),
//! tcpdump writing pcap files with Ethernet, Linux cooked v1 and v2 link layers (and
//! nanosecond timestamps), one TCP connection across, and our reader must decode the captured
//! SYN and data segment from each file.
//!
//! Needs root, `ip` and `tcpdump`: ignored in a plain `cargo test`, fails without them when run.
//! Self-contained on purpose (the shared lab library lives in the tc-e2e crate).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tc_core::packet::{decode_frame, LinkType, PcapReader};
use tc_test_support::require;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PORT: u16 = 8099;
const REQUEST: &[u8] = b"hello capture";

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces and the veth pair between them; deleted on drop (also on panic).
struct Lab {
    client_ns: String,
    server_ns: String,
}

impl Lab {
    fn create() -> Result<Lab, String> {
        let id = std::process::id();
        let lab = Lab {
            client_ns: format!("tcpkt{id}c"),
            server_ns: format!("tcpkt{id}s"),
        };
        let (c, s) = (lab.client_ns.as_str(), lab.server_ns.as_str());
        let (vc, vs) = (format!("tpk{id}c"), format!("tpk{id}s"));
        run(&["ip", "netns", "add", c])?;
        run(&["ip", "netns", "add", s])?;
        // Created inside the namespaces: nothing is ever added to the host's namespace.
        run(&[
            "ip", "-n", c, "link", "add", &vc, "type", "veth", "peer", "name", &vs, "netns", s,
        ])?;
        run(&["ip", "-n", c, "addr", "add", "198.18.0.1/24", "dev", &vc])?;
        run(&["ip", "-n", s, "addr", "add", "198.18.0.2/24", "dev", &vs])?;
        for (ns, dev) in [(c, vc.as_str()), (s, vs.as_str()), (c, "lo"), (s, "lo")] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(lab)
    }

    fn client_dev(&self) -> String {
        format!("tpk{}c", std::process::id())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// Runs `f` on a thread that entered network namespace `ns`; sockets it creates stay there.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// A tcpdump process, killed on drop.
struct Tcpdump {
    child: Child,
    file: PathBuf,
    what: String,
}

impl Tcpdump {
    /// Starts tcpdump in `ns` and waits (bounded) until it reports it is listening.
    fn start(ns: &str, iface: &str, extra: &[&str], file: PathBuf, what: &str) -> Tcpdump {
        let file_arg = file.display().to_string();
        let port = PORT.to_string();
        let mut args = vec!["netns", "exec", ns, "tcpdump", "-i", iface, "-n", "-U"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-w", &file_arg, "tcp", "port", &port]);
        let mut child = Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut dump = Tcpdump {
            child,
            file,
            what: what.into(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let status = dump.child.try_wait().ok().flatten();
                    panic!("tcpdump ({what}) not listening (exit {status:?}): {seen:?}");
                }
            }
        }
        dump
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        // Only our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a capture file holds of our connection.
#[derive(Debug, Default)]
struct Found {
    link: Option<LinkType>,
    syn: bool,
    syn_mss: Option<u16>,
    request: bool,
    timestamps: Vec<Duration>,
}

fn scan(file: &Path) -> Found {
    let mut found = Found::default();
    let Ok(mut reader) = PcapReader::open(file) else {
        return found; // not written yet
    };
    found.link = reader.link_type();
    for _ in 0..10_000 {
        let rec = match reader.next_record() {
            Ok(Some(rec)) => rec,
            // A record still being written ends the scan; the next poll sees it whole.
            Ok(None) | Err(_) => break,
        };
        let Some(link) = rec.link else { continue };
        let Ok(p) = decode_frame(link, rec.data) else {
            continue;
        };
        if p.src_ip() != CLIENT_IP || p.dst_ip() != SERVER_IP || p.dst_port() != PORT {
            continue;
        }
        found.timestamps.push(rec.timestamp);
        if p.syn() && !p.ack_flag() {
            found.syn = true;
            found.syn_mss = p.options().mss;
        }
        if p.payload() == REQUEST {
            found.request = true;
        }
    }
    found
}

fn connect_and_talk(lab: &Lab) {
    let listener = in_netns(&lab.server_ns, || {
        TcpListener::bind((SERVER_IP, PORT)).expect("bind in server namespace")
    })
    .join()
    .expect("server namespace thread");
    listener.set_nonblocking(true).unwrap();
    let server = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut conn, _) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection arrived");
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = vec![0u8; REQUEST.len()];
        conn.read_exact(&mut got).expect("server read");
        assert_eq!(got, REQUEST);
        conn.write_all(b"pong").unwrap();
    });
    in_netns(&lab.client_ns, || {
        let to = SocketAddr::from((SERVER_IP, PORT));
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(REQUEST).unwrap();
        let mut reply = [0u8; 4];
        s.read_exact(&mut reply).expect("client read");
        assert_eq!(&reply, b"pong");
    })
    .join()
    .expect("client thread");
    server.join().expect("server thread");
}

/// True when tcpdump offers `dlt` on `iface` in `ns`.
fn offers_dlt(ns: &str, iface: &str, dlt: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "tcpdump", "-L", "-i", iface])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w == dlt)
        })
        .unwrap_or(false)
}

#[test]
#[ignore = "needs root"]
fn decodes_segments_captured_by_tcpdump() {
    require("decodes_segments_captured_by_tcpdump", &["ip", "tcpdump"]);
    let lab = Lab::create().expect("create namespaces");
    let dir = std::env::temp_dir().join(format!("tc-core-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ns = lab.client_ns.clone();
    let dev = lab.client_dev();

    let mut variants: Vec<(&str, &str, Vec<&str>, LinkType)> = vec![
        (
            "ethernet",
            dev.as_str(),
            vec!["-y", "EN10MB"],
            LinkType::Ethernet,
        ),
        (
            "ethernet-ns",
            dev.as_str(),
            vec!["-y", "EN10MB", "--time-stamp-precision=nano"],
            LinkType::Ethernet,
        ),
        (
            "any-sll",
            "any",
            vec!["-y", "LINUX_SLL"],
            LinkType::LinuxSll,
        ),
        (
            "any-sll2",
            "any",
            vec!["-y", "LINUX_SLL2"],
            LinkType::LinuxSll2,
        ),
    ];
    if offers_dlt(&ns, &dev, "RAW") {
        variants.push(("raw", dev.as_str(), vec!["-y", "RAW"], LinkType::RawIp));
    } else {
        println!("SKIP raw-IP variant: tcpdump offers no RAW link type on a veth");
    }

    let dumps: Vec<(Tcpdump, LinkType)> = variants
        .iter()
        .map(|(what, iface, extra, link)| {
            let file = dir.join(format!("{what}.pcap"));
            (Tcpdump::start(&ns, iface, extra, file, what), *link)
        })
        .collect();

    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    connect_and_talk(&lab);

    for (dump, link) in &dumps {
        // Poll the file until both segments are in (tcpdump -U writes per packet).
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            let found = scan(&dump.file);
            if (found.syn && found.request) || Instant::now() > deadline {
                break found;
            }
            thread::sleep(Duration::from_millis(50));
        };
        let what = &dump.what;
        assert_eq!(found.link, Some(*link), "{what}: link type");
        assert!(found.syn, "{what}: SYN not decoded: {found:?}");
        assert!(found.syn_mss.is_some(), "{what}: SYN without MSS option");
        assert!(found.request, "{what}: data segment not decoded: {found:?}");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        for ts in &found.timestamps {
            // Capture clocks are the system clock: between the start (less slack) and now.
            assert!(
                *ts + Duration::from_secs(5) >= started && *ts <= now + Duration::from_secs(5),
                "{what}: timestamp {ts:?} outside [{started:?}, {now:?}]"
            );
        }
        if *what == "ethernet-ns" {
            assert!(
                found
                    .timestamps
                    .iter()
                    .any(|t| t.subsec_nanos() % 1000 != 0),
                "nanosecond capture shows only microsecond timestamps"
            );
        }
    }
    drop(dumps);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
