//! Prometheus metrics for both binaries (`--metrics ADDR:PORT`): the text exposition format
//! ([`exposition`]) and a small HTTP endpoint serving it from the caller's mio loop
//! ([`server`]). Off by default: nothing listens unless a binary binds a [`MetricsServer`].
//!
//! The values are the binaries' own statistics counters, read when a scrape arrives: the
//! render closure handed to [`MetricsServer::on_event`] builds an [`Exposition`] from them.
//!
//! In an event loop (tokens `METRICS..METRICS + limits.tokens()` kept free for the server):
//!
//! ```
//! use std::time::{Duration, Instant};
//! use mio::{Events, Poll, Token};
//! use tc_core::metrics::{Exposition, Limits, MetricsServer};
//!
//! const METRICS: Token = Token(1000);
//! let mut poll = Poll::new()?;
//! // `--metrics ADDR:PORT`; a taken port: "metrics address ADDR is in use (...)".
//! let mut metrics = MetricsServer::bind("127.0.0.1:0".parse()?, Limits::default())?;
//! metrics.register(poll.registry(), METRICS)?;
//! let (sent, active) = (1234u64, 17usize); // the loop's own statistics
//! let mut events = Events::with_capacity(256);
//! # for _ in 0..1 {
//! // Wake up for the server's next client deadline (or call tick() from the loop's own timer).
//! let wait = metrics
//!     .next_deadline()
//!     .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(Instant::now()));
//! # let wait = wait.min(Duration::from_millis(10));
//! poll.poll(&mut events, Some(wait))?;
//! let now = Instant::now();
//! for event in events.iter() {
//!     let render = || {
//!         let mut e = Exposition::new();
//!         e.counter("tcpcopy_packets_sent_total", "Packets sent to the target.", sent)
//!             .gauge("tcpcopy_sessions_active", "Sessions being replayed.", active);
//!         e.finish()
//!     };
//!     if metrics.on_event(poll.registry(), event.token(), now, render) {
//!         continue;
//!     }
//!     // ... the loop's other tokens
//! }
//! metrics.tick(poll.registry(), now);
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod exposition;
pub mod server;

pub use exposition::{Exposition, Family, Kind, Value};
pub use server::{Limits, MetricsError, MetricsServer, CONTENT_TYPE};
