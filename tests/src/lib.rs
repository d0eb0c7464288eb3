//! End-to-end tests of tcpcopy and intercept, and what they share: the network-namespace lab
//! ([`lab`]) and the benchmark helpers in `src/bin`.

pub mod lab;
pub mod replay;
