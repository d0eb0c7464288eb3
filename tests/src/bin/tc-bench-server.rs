//! Benchmark server: the request/response protocol of the session scenarios (a request is a
//! line `REQ <resp_len> ...\n`, the answer `resp_len` bytes), a thread per connection, the
//! number of requests answered written to `--count-file` every 100 ms and at SIGTERM.
//!
//! usage: tc-bench-server ADDR:PORT COUNT_FILE

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn serve(stream: TcpStream, count: Arc<AtomicU64>) {
    let _ = stream.set_nodelay(true);
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut body = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let len: usize = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
            .min(1 << 24);
        body.resize(len, b'r');
        if out.write_all(&body).is_err() {
            return;
        }
        count.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: tc-bench-server ADDR:PORT COUNT_FILE");
        std::process::exit(2);
    }
    let listener = TcpListener::bind(&args[1]).unwrap_or_else(|e| {
        eprintln!("tc-bench-server: bind {}: {e}", args[1]);
        std::process::exit(1);
    });
    // std listens with a backlog of 128: an offline replay at full speed opens its 2000
    // connections within milliseconds, which overflowed it (SYN cookies, dropped ACKs, one
    // or more seconds of retransmission per connection dropped) and made the wall time a
    // matter of luck. Listening again raises it to the lab's somaxconn, as a server built for
    // load would.
    // SAFETY: listen(2) on the listener's own descriptor; no memory is passed.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) } != 0 {
        eprintln!(
            "tc-bench-server: listen: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    let count = Arc::new(AtomicU64::new(0));
    let file = args[2].clone();
    let c = count.clone();
    std::thread::spawn(move || loop {
        let _ = std::fs::write(&file, format!("{}\n", c.load(Ordering::Relaxed)));
        std::thread::sleep(Duration::from_millis(100));
    });
    for stream in listener.incoming().flatten() {
        let c = count.clone();
        let _ = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || serve(stream, c));
    }
}
