//! The control-channel codecs live in tc-core (`tc_core::control`), shared with tcpcopy.

pub use tc_core::control::*;
