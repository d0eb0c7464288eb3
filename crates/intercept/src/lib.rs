//! intercept: captures the test server's responses and passes their headers back, over the
//! control channel, to the tcpcopy that announced each connection.
//!
//! `cli` (arguments -> [`cli::Config`]), `server` (the mio loop: capture, tunnels, batching,
//! statistics), `daemon` (logging is tc_core::logging). The routing decisions (which tunnel
//! gets a response) are pure logic in `tc_core::control::routing`.

pub mod cli;
pub mod daemon;
pub mod server;
pub mod wire;
