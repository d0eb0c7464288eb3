//! intercept: captures the test server's responses and passes their headers back, over the
//! control channel, to the tcpcopy that announced each connection.
//!
//! `cli` (arguments -> [`cli::Config`]), `server` (the mio loop: capture, tunnels, batching,
//! statistics), `probe` (answers to tcpcopy's path probe, start-up checks of this host),
//! `route` and `tun` (`--route`: the TUN device on the target host and its route). The
//! routing decisions (which tunnel gets a response) are pure logic in
//! `tc_core::control::routing`; logging, daemon and pid file are tc_core's.

pub mod cli;
pub mod probe;
pub mod route;
pub mod server;
pub mod tun;
