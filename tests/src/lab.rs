//! The namespace lab of all end-to-end tests (lab.md topology): namespaces `client`, `online`,
//! `target`, `assist` on a bridge in a `sw` namespace, in-process recording servers and workload
//! clients running on threads that entered a namespace (a socket, raw ones included, keeps the
//! namespace it was created in), and the tcpcopy / intercept binaries started with
//! `ip netns exec`.
//!
//! Rules: lab hosts only in 198.18.0.0/15 and fake clients only in 203.0.113.0/24; namespace
//! names carry a unique prefix per lab (`tcl<pid>x<n>`), so tests run in parallel; a [`Lab`]
//! removes its processes, logs and namespaces on drop, also when the test panics; every wait
//! is bounded. Tests are `#[ignore = "needs root"]` (a plain `cargo test` lists them as ignored;
//! `scripts/test.sh` runs them as root with `--include-ignored`) and call [`require_root`] or
//! [`require`] first, which fail the test when root or a program is missing.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const CLIENT: &str = "client";
pub const ONLINE: &str = "online";
pub const TARGET: &str = "target";
pub const ASSIST: &str = "assist";
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const ONLINE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
pub const TARGET_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 30);
pub const ASSIST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 40);
/// IPv6 addresses of the four hosts after [`Lab::enable_ipv6`] (documentation prefix), and
/// the fake client prefix the target routes to the assistant.
pub const CLIENT_IP6: &str = "2001:db8::10";
pub const ONLINE_IP6: &str = "2001:db8::20";
pub const TARGET_IP6: &str = "2001:db8::30";
pub const ASSIST_IP6: &str = "2001:db8::40";
pub const FAKE_PREFIX6: &str = "2001:db8:ffff::/64";

// Every end-to-end test is `#[ignore = "needs root"]` and calls one of these first (see
// tc-test-support): without root or a program it needs, it fails with what is missing.
pub use tc_test_support::{require, require_root, wait_for};

/// Path of a workspace binary, built once per test process.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-q", "-p", "tcpcopy", "-p", "intercept"])
            .status()
            .expect("cargo build");
        assert!(st.success(), "building tcpcopy and intercept failed");
    });
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    dir.join(name)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Lab {
    prefix: String,
    children: Mutex<Vec<(String, Child)>>,
    /// Every process name spawned (their logs are shown on failure and removed at the end).
    names: Mutex<Vec<String>>,
    /// Hosts added by [`Lab::add_host`] (their namespaces are removed on drop too).
    extra: Mutex<Vec<String>>,
}

impl Lab {
    /// Builds the topology of lab.md with unique namespace names.
    pub fn start() -> Lab {
        static N: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "tcl{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            prefix,
            children: Mutex::new(Vec::new()),
            names: Mutex::new(Vec::new()),
            extra: Mutex::new(Vec::new()),
        };
        let sw = lab.ns("sw");
        sh(&["ip", "netns", "add", &sw]);
        sh(&[
            "ip",
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        sh(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for (host, ip) in [
            (CLIENT, CLIENT_IP),
            (ONLINE, ONLINE_IP),
            (TARGET, TARGET_IP),
            (ASSIST, ASSIST_IP),
        ] {
            lab.attach(host, ip);
        }
        sh(&[
            "ip",
            "-n",
            &lab.ns(TARGET),
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &ASSIST_IP.to_string(),
        ]);
        lab
    }

    /// Adds one more host namespace `host` with `ip`/24 on the bridge, set up like the four of
    /// [`Lab::start`] (lab.md settings: rp_filter 0, ip_forward 0; transmit checksum offload on, TSO/GSO/GRO off), e.g. a second
    /// online or assistant host; removed with the lab. `ip` must be a free 198.18.0.0/24
    /// address and `host` a new name (at most 7 characters: it names the bridge port too).
    pub fn add_host(&self, host: &str, ip: Ipv4Addr) {
        assert!(
            ip.octets()[..3] == [198, 18, 0] && host.len() <= 7,
            "add_host {host} {ip}: lab hosts are 198.18.0.x, names at most 7 characters"
        );
        self.extra.lock().unwrap().push(host.to_string());
        self.attach(host, ip);
    }

    /// Creates `host`'s namespace and connects it to the bridge with `ip`/24.
    fn attach(&self, host: &str, ip: Ipv4Addr) {
        let lab = self;
        let sw = lab.ns("sw");
        let ns = lab.ns(host);
        let port = format!("v{host}");
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        sh(&["ip", "-n", &sw, "link", "set", &port, "master", "br0", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.eth0.rp_filter=0",
            "net.ipv4.conf.lo.rp_filter=0",
            "net.ipv4.ip_forward=0",
            "net.ipv4.ip_local_port_range=10000 60999",
            // No reuse of TIME_WAIT ports: every client connection of a test has its own
            // port, which is how tests pair online and target connections.
            "net.ipv4.tcp_tw_reuse=0",
            "net.core.somaxconn=4096",
        ]);
        // Transmit checksum offload ON on both ends (the veth default, as on Docker and
        // Kubernetes bridges and most VMs): a host's own segments then carry partial
        // checksums up to the receiving host's stack, so tcpcopy's capture and the tcpdump
        // captures of the offline tests see them as real hosts do, and a replay that
        // forwards them unchanged is dropped by the target (issue 13: the lab had offload
        // off on the bridge ports, which computed every checksum in software and hid it).
        // TSO/GSO/GRO stay off: MTU-sized segments, as on a wire (one test turns them on).
        for (n, dev) in [(&ns, "eth0"), (&sw, port.as_str())] {
            sh(&[
                "ip", "netns", "exec", n, "ethtool", "-K", dev, "tx", "on", "tso", "off", "gso",
                "off", "gro", "off",
            ]);
        }
    }

    /// Gives the four hosts their IPv6 addresses (`2001:db8::10/20/30/40`/64 on eth0, no
    /// duplicate address detection, so they work at once) and routes [`FAKE_PREFIX6`] from
    /// the target to the assistant (which does not forward: answers to fake clients end
    /// there, as for IPv4).
    pub fn enable_ipv6(&self) {
        for (host, ip) in [
            (CLIENT, CLIENT_IP6),
            (ONLINE, ONLINE_IP6),
            (TARGET, TARGET_IP6),
            (ASSIST, ASSIST_IP6),
        ] {
            let ns = self.ns(host);
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=0",
                "net.ipv6.conf.eth0.disable_ipv6=0",
                "net.ipv6.conf.all.forwarding=0",
            ]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
        }
        sh(&[
            "ip",
            "-n",
            &self.ns(TARGET),
            "-6",
            "route",
            "add",
            FAKE_PREFIX6,
            "via",
            ASSIST_IP6,
        ]);
        // Until its link-local address has passed duplicate address detection (a second or
        // two after the link came up), a host sends no neighbour solicitation for a packet
        // from an address that is not its own, such as a replayed one from a fake client:
        // the first replayed packets would wait for a neighbour that is never asked for.
        let hosts = [CLIENT, ONLINE, TARGET, ASSIST];
        let tentative = |host: &str| {
            let out = Command::new("ip")
                .args([
                    "-n",
                    &self.ns(host),
                    "-6",
                    "addr",
                    "show",
                    "dev",
                    "eth0",
                    "tentative",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            out.contains("inet6")
        };
        wait_for(
            Duration::from_secs(10),
            || !hosts.iter().any(|h| tentative(h)),
            || "IPv6 link-local addresses still tentative after 10 s".to_string(),
        );
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn mac(&self, host: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns(host), "link", "show", "eth0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("link/ether")
            .to_string()
    }

    /// Starts `program args` in `host` with `RUST_LOG=info`, stdout+stderr appended to a log
    /// file read by [`Lab::log`] (a restarted process of the same name keeps the earlier lines).
    pub fn spawn(&self, host: &str, name: &str, program: &PathBuf, args: &[&str]) {
        self.spawn_env(host, name, program, args, &[("RUST_LOG", "info")]);
    }

    /// [`Lab::spawn`] with the environment variables `env` (and no default `RUST_LOG`).
    pub fn spawn_env(
        &self,
        host: &str,
        name: &str,
        program: &PathBuf,
        args: &[&str],
        env: &[(&str, &str)],
    ) {
        let log = self.log_path(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        self.children
            .lock()
            .unwrap()
            .push((name.to_string(), child));
        let mut names = self.names.lock().unwrap();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }

    /// How many lines of `name`'s log contain `marker`. A process started again under the
    /// same name appends to the same log: wait for this count to grow, not for the marker.
    pub fn log_count(&self, name: &str, marker: &str) -> usize {
        self.log(name).matches(marker).count()
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("{}-{name}.log", self.prefix))
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Sends `sig` to the process `name` and waits (bounded) for it to exit; its exit code.
    pub fn stop(&self, name: &str, sig: i32, within: Duration) -> Option<i32> {
        let mut children = self.children.lock().unwrap();
        let i = children.iter().position(|(n, _)| n == name)?;
        let (_, mut child) = children.remove(i);
        // SAFETY: kill on the pid of our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the process `name` (e.g. SIGSTOP / SIGCONT), leaving it in the lab.
    pub fn signal(&self, name: &str, sig: i32) {
        let children = self.children.lock().unwrap();
        let (_, child) = children
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name} in the lab"));
        // SAFETY: kill on the pid of our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
    }

    /// The process id of `name` (spawned by [`Lab::spawn`]: `ip netns exec` execs the
    /// program, so it is the program's own), while it is in the lab.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let children = self.children.lock().unwrap();
        children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    pub fn running(&self, name: &str) -> bool {
        let mut children = self.children.lock().unwrap();
        children
            .iter_mut()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `f` on a thread inside `host`'s namespace and returns its result; sockets it
    /// creates (raw ones included) stay in that namespace. `f` may borrow from the caller.
    pub fn in_ns<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns(host));
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(&path);
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// Spawns a thread inside `host`'s namespace (for servers, captures and clients that run
    /// while the test goes on).
    pub fn thread_in<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.ns(host));
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// Waits until something listens on `addr` inside `host` (bounded).
    pub fn wait_listening(&self, host: &str, addr: SocketAddrV4, within: Duration) -> bool {
        self.in_ns(host, move || {
            let deadline = Instant::now() + within;
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_millis(200))
                    .is_ok()
                {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
    }
}

fn enter(path: &str) {
    let f = std::fs::File::open(path).expect("open netns");
    // SAFETY: setns on the calling thread with a valid namespace fd.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for (_, child) in children.iter_mut() {
            // SAFETY: signals to our own children.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        for name in names.iter() {
            if std::thread::panicking() {
                eprintln!("---- log of {name} ----\n{}", self.log(name));
            }
            let _ = std::fs::remove_file(self.log_path(name));
        }
        let extra = self.extra.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for host in ["sw", CLIENT, ONLINE, TARGET, ASSIST]
            .into_iter()
            .chain(extra.iter().map(String::as_str))
        {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .status();
        }
    }
}

// ------------------------------------------------------------------------------------------
// Recording request/response server and workload clients.
//
// Protocol: the client sends `REQ <body> <resp>\n` and <body> bytes; the server answers <resp>
// bytes. A server-first server greets each connection with `HELLO\n` before reading. Every
// byte a server receives is recorded per connection.

#[derive(Debug, Clone)]
pub struct ConnLog {
    pub peer: SocketAddrV4,
    pub received: Vec<u8>,
    pub closed: bool,
}

pub struct Server {
    pub conns: Arc<Mutex<Vec<ConnLog>>>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

/// How a [`Server`] answers: [`Answer::default`] is at once and in full, as the online
/// servers; a target can be slower or answer shorter than online did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Answer {
    /// Waits this long before each answer.
    pub delay: Duration,
    /// Answers this many bytes fewer than asked (at least 1 byte).
    pub short_by: usize,
}

impl Server {
    pub fn start(lab: &Lab, host: &str, addr: SocketAddrV4, greeting: bool) -> Server {
        Server::start_answering(lab, host, addr, greeting, Answer::default())
    }

    /// [`Server::start`] with answers shaped by `answer`.
    pub fn start_answering(
        lab: &Lab,
        host: &str,
        addr: SocketAddrV4,
        greeting: bool,
        answer: Answer,
    ) -> Server {
        let conns: Arc<Mutex<Vec<ConnLog>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let listener = lab.in_ns(host, move || {
            let l = TcpListener::bind(addr).expect("bind test server");
            l.set_nonblocking(true).unwrap();
            l
        });
        let (c, s) = (conns.clone(), stop.clone());
        let accept_thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, SocketAddr::V4(peer))) => {
                        let index = {
                            let mut all = c.lock().unwrap();
                            all.push(ConnLog {
                                peer,
                                received: Vec::new(),
                                closed: false,
                            });
                            all.len() - 1
                        };
                        let c2 = c.clone();
                        std::thread::spawn(move || serve_conn(stream, greeting, answer, c2, index));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            conns,
            stop,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn snapshot(&self) -> Vec<ConnLog> {
        self.conns.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_conn(
    mut stream: TcpStream,
    greeting: bool,
    answer: Answer,
    log: Arc<Mutex<Vec<ConnLog>>>,
    index: usize,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let _ = stream.set_nodelay(true);
    if greeting && stream.write_all(b"HELLO\n").is_err() {
        return;
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        log.lock().unwrap()[index]
            .received
            .extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        // Answer every complete request in `pending`.
        while let Some(eol) = pending.iter().position(|b| *b == b'\n') {
            let header = String::from_utf8_lossy(&pending[..eol]).into_owned();
            let mut words = header.split_whitespace();
            let (Some("REQ"), Some(body), Some(resp)) = (words.next(), words.next(), words.next())
            else {
                return;
            };
            let (Ok(body), Ok(resp)) = (body.parse::<usize>(), resp.parse::<usize>()) else {
                return;
            };
            if pending.len() < eol + 1 + body {
                break;
            }
            pending.drain(..eol + 1 + body);
            if !answer.delay.is_zero() {
                std::thread::sleep(answer.delay);
            }
            let resp = resp.saturating_sub(answer.short_by).max(1);
            if stream.write_all(&pattern(resp)).is_err() {
                return;
            }
        }
    }
    log.lock().unwrap()[index].closed = true;
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// One request with a body that names its connection (so streams are unique).
pub fn request(tag: &str, body: usize, resp: usize) -> Vec<u8> {
    let mut r = format!("REQ {body} {resp}\n").into_bytes();
    let fill = tag.as_bytes();
    r.extend((0..body).map(|i| fill[i % fill.len()]));
    r
}

/// A client connection: connect, optional greeting, requests in lock-step, close.
pub fn converse(
    server: SocketAddrV4,
    tag: &str,
    greeting: bool,
    requests: &[(usize, usize)],
    pause: Duration,
) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(server), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    if greeting {
        let mut hello = [0u8; 6];
        s.read_exact(&mut hello)?;
        assert_eq!(&hello, b"HELLO\n");
    }
    let mut buf = vec![0u8; 65536];
    for (i, &(body, resp)) in requests.iter().enumerate() {
        s.write_all(&request(&format!("{tag}/{i};"), body, resp))?;
        let mut got = 0;
        while got < resp {
            let n = s.read(&mut buf[..(resp - got).min(65536)])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Ok(())
}

/// Waits (bounded) until `check` holds on the target's connections; returns the last snapshot.
pub fn wait_until(
    server: &Server,
    within: Duration,
    mut check: impl FnMut(&[ConnLog]) -> bool,
) -> (bool, Vec<ConnLog>) {
    let deadline = Instant::now() + within;
    loop {
        let snap = server.snapshot();
        if check(&snap) {
            return (true, snap);
        }
        if Instant::now() > deadline {
            return (false, snap);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
