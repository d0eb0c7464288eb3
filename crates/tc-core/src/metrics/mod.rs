//! Prometheus metrics for both binaries (`--metrics ADDR:PORT`): the text exposition format
//! ([`exposition`]) and a small HTTP endpoint serving it from the caller's mio loop
//! ([`server`]). Off by default: nothing listens unless a binary binds a [`MetricsServer`].
//!
//! The values are the binaries' own statistics counters, read when a scrape arrives: the
//! render closure handed to [`MetricsServer::on_event`] builds an [`Exposition`] from them.

pub mod exposition;
pub mod server;

pub use exposition::{Exposition, Family, Kind, Value};
pub use server::{Limits, MetricsError, MetricsServer, CONTENT_TYPE};
