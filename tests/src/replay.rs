//! What the replay tests share on top of the [`crate::lab`]: intercept on the assistant,
//! tcpcopy on the online host, their statistics lines, and a sniffer that records the TCP
//! headers crossing a host's interface with their times.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tc_core::capture::pcap_live::{PcapLive, PcapLiveOptions};
use tc_core::capture::Capture;
use tc_core::packet::{ipv4_payload, Completeness, TcpPacket};

use crate::lab::{bin, wait_for, Lab, ASSIST, ASSIST_IP, ONLINE, ONLINE_IP};

pub const INTERCEPT_PORT: u16 = 36524;
/// Where the intercept of [`start_intercept`] serves its metrics (loopback of the assistant).
pub const INTERCEPT_METRICS: &str = "127.0.0.1:9478";

/// Starts intercept on the assistant with `filter`, accepting the online host and serving
/// its metrics at [`INTERCEPT_METRICS`], and waits until it listens.
pub fn start_intercept(lab: &Lab, filter: &str) {
    lab.spawn(
        ASSIST,
        "intercept",
        &bin("intercept"),
        &[
            "-F",
            filter,
            "-i",
            "eth0",
            "--allow",
            &ONLINE_IP.to_string(),
            "--metrics",
            INTERCEPT_METRICS,
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

/// Starts tcpcopy `name` on online with `-s <assistant>` and `args`, and waits for its event
/// loop.
pub fn start_tcpcopy(lab: &Lab, name: &str, args: &[&str]) {
    let assist = ASSIST_IP.to_string();
    let mut all: Vec<&str> = vec!["-s", &assist];
    all.extend_from_slice(args);
    let before = lab.log_count(name, "event loop running");
    lab.spawn(ONLINE, name, &bin("tcpcopy"), &all);
    wait_for(
        Duration::from_secs(15),
        || {
            assert!(
                lab.running(name),
                "tcpcopy did not start: {}",
                lab.log(name)
            );
            lab.log_count(name, "event loop running") > before
        },
        || format!("tcpcopy's event loop: {}", lab.log(name)),
    );
}

/// Stops tcpcopy `name` with SIGTERM; it must exit 0. Returns its log.
pub fn stop_tcpcopy(lab: &Lab, name: &str) -> String {
    let code = lab.stop(name, libc::SIGTERM, Duration::from_secs(15));
    let log = lab.log(name);
    assert_eq!(code, Some(0), "tcpcopy exit: {log}");
    log
}

/// The number after `name` in the last line of `log` that has it.
pub fn last_counter(log: &str, name: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        let at = l.find(name)? + name.len();
        let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// One TCP segment seen on the wire.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Payload length from the IP total length (the capture keeps headers only).
    pub len: u32,
    /// The first payload bytes captured.
    pub head: Vec<u8>,
}

impl Seen {
    pub fn syn(&self) -> bool {
        self.flags & 0x02 != 0
    }
    pub fn fin(&self) -> bool {
        self.flags & 0x01 != 0
    }
    pub fn rst(&self) -> bool {
        self.flags & 0x04 != 0
    }
    /// Neither SYN, FIN nor RST, and no payload.
    pub fn pure_ack(&self) -> bool {
        self.flags & 0x07 == 0 && self.len == 0
    }
}

/// Records the TCP segments matching a pcap filter on a host's `eth0`, with the times they
/// were read (in capture order).
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sniffer {
    pub fn start(lab: &Lab, host: &str, filter: &str) -> Sniffer {
        let mut cap = lab.in_ns(host, || {
            let mut opts = PcapLiveOptions::new(filter);
            opts.snaplen = 256;
            PcapLive::open("eth0", &opts).expect("sniffer capture")
        });
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (s, out) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let n = cap
                    .read_frames(256, &mut |link, frame| {
                        let at = Instant::now();
                        let Ok(ip) = ipv4_payload(link, frame) else {
                            return;
                        };
                        let Ok(p) = TcpPacket::parse(ip, Completeness::HeadersOnly) else {
                            return;
                        };
                        let head = ip
                            .get(p.headers_len()..)
                            .map(|h| h[..h.len().min(128)].to_vec())
                            .unwrap_or_default();
                        out.lock().unwrap().push(Seen {
                            at,
                            src: p.src_ip(),
                            dst: p.dst_ip(),
                            sport: p.src_port(),
                            dport: p.dst_port(),
                            seq: p.seq(),
                            ack: p.ack(),
                            flags: p.flags(),
                            window: p.window(),
                            len: p.payload_len() as u32,
                            head,
                        });
                    })
                    .unwrap_or(0);
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Sniffer {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// What was seen so far.
    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops capturing; everything seen.
    pub fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("sniffer thread");
        }
        self.snapshot()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
