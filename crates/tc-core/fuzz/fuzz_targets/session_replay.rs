#![no_main]
//! The replay machine under arbitrary event scripts: client packets (plausible, cut short,
//! with changed header bytes), response records (plausible and garbage) and time. Every
//! datagram it emits must be valid and go to a configured target from a `-c` address; no
//! panic; every session ends once its timers run out. The driver is shared with the
//! property test `tests/session_props.rs`.

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/session_driver/mod.rs"]
mod session_driver;

fuzz_target!(|data: &[u8]| {
    session_driver::drive(data);
});
