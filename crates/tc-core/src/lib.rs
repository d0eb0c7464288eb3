//! tc-core: everything of tcpcopy-rs that is not a binary.
//!
//! Modules follow the data: `packet` (decode, validate, rewrite), `offline` (pacing of a
//! capture file's records), `session` (the sans-IO TCP replay machine), `udp_replay` (the
//! stateless UDP replay of `--udp`), `control` (the
//! tcpcopy <-> intercept wire protocol), `capture` and `send` (I/O backends behind small
//! traits).
//!
//! The pure core (`packet`, `offline`, `session`, the `control` codecs and routing) touches no socket and
//! reads no clock: time comes in as arguments. Everything that does I/O (`capture`, `send`,
//! `control::conn`, `logging`, `metrics`) is behind the default feature `io`, so
//! `cargo build -p tc-core --no-default-features` proves the core needs none of mio, libc,
//! pcap, socket2 or env_logger. The binaries' man pages and shell completions (`docs`) are
//! behind the feature `docs`, which the binaries enable.

pub mod auth;
#[cfg(feature = "io")]
pub mod capture;
pub mod compare;
pub mod control;
#[cfg(feature = "io")]
pub mod daemon;
pub mod diagnose;
#[cfg(feature = "docs")]
pub mod docs;
#[cfg(feature = "io")]
pub mod logging;
#[cfg(feature = "io")]
pub mod metrics;
pub mod offline;
pub mod packet;
#[cfg(feature = "io")]
pub mod send;
pub mod session;
pub mod udp_replay;
