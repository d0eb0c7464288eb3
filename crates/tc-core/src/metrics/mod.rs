//! Prometheus metrics for both binaries (`--metrics ADDR:PORT`): the text exposition format
//! ([`exposition`]).
//!
//! The values are the binaries' own statistics counters, read when a scrape arrives and
//! written into an [`Exposition`].

pub mod exposition;

pub use exposition::{Exposition, Family, Kind, Value};
