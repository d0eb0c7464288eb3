//! tc-core: everything of tcpcopy-rs that is not a binary.
//!
//! Modules follow the data: `packet` (decode, validate, rewrite), `session` (the sans-IO TCP
//! replay machine), `control` (the tcpcopy <-> intercept wire protocol), `capture` and `send`
//! (I/O backends behind small traits).

pub mod capture;
pub mod control;
pub mod daemon;
pub mod logging;
pub mod packet;
pub mod send;
pub mod session;
