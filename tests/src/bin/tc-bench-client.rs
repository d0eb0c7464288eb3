//! Benchmark load generator: `conns` keep-alive connections sending requests of the bench
//! protocol at a fixed total rate (0: as fast as the answers come, like `ab -k`) for a fixed
//! time, or until `requests=N` requests were answered; prints `requests_ok N`. With `short`,
//! every request goes on a connection of its own (connect, request, response, close).
//!
//! usage: tc-bench-client ADDR:PORT CONNS RATE_PER_SECOND SECONDS [short] [requests=N]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: tc-bench-client ADDR:PORT CONNS RATE SECONDS [short] [requests=N]");
        std::process::exit(2);
    };
    if a.len() < 5 {
        usage();
    }
    let mut short = false;
    let mut max_requests = u64::MAX;
    for opt in &a[5..] {
        match opt.split_once('=') {
            None if opt == "short" => short = true,
            Some(("requests", n)) => max_requests = n.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let addr = a[1].clone();
    let conns: u64 = a[2].parse().expect("CONNS");
    let rate: f64 = a[3].parse().expect("RATE");
    let secs: u64 = a[4].parse().expect("SECONDS");
    // Rate 0: no pacing.
    let per_conn = if rate > 0.0 {
        Duration::from_secs_f64(conns as f64 / rate)
    } else {
        Duration::ZERO
    };
    let end = Instant::now() + Duration::from_secs(secs);
    // Requests started so far, by all connections (bounded by `max_requests`).
    let started = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let addr = addr.clone();
            let started = started.clone();
            std::thread::spawn(move || {
                let open = || {
                    let s = TcpStream::connect(&addr).ok()?;
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    Some(s)
                };
                let Some(mut s) = open() else {
                    return 0u64;
                };
                let mut ok = 0u64;
                let mut next = Instant::now() + per_conn.mul_f64((i as f64) / (conns as f64));
                let mut buf = [0u8; 100];
                while Instant::now() < end {
                    if started.fetch_add(1, Ordering::Relaxed) >= max_requests {
                        break;
                    }
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    next += per_conn;
                    if short && ok > 0 {
                        match open() {
                            Some(fresh) => s = fresh,
                            None => break,
                        }
                    }
                    let req = format!("REQ 100 {i} {ok} {}\n", "x".repeat(60));
                    if s.write_all(req.as_bytes()).is_err() || s.read_exact(&mut buf).is_err() {
                        break;
                    }
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    println!("requests_ok {total}");
}
