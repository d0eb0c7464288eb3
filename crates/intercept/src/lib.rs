//! intercept: captures the test server's responses and passes their headers back, over the
//! control channel, to the tcpcopy that announced each connection.
//!
//! `cli` (arguments -> [`cli::Config`]), `router` (pure routing logic), `server` (the mio loop:
//! capture, tunnels, batching, statistics); logging, daemon and pid file are tc_core's.

pub mod cli;
pub mod router;
pub mod server;
