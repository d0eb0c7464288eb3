//! Property test of the replay machine's safety: arbitrary event scripts (client packets,
//! mangled packets, response records, garbage records, time) never make it panic, send to
//! anything but a configured target, or leave a session behind (see `session_driver`).

mod session_driver;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_scripts_keep_the_safety_properties(
        data in prop::collection::vec(any::<u8>(), 0..4000)
    ) {
        session_driver::drive(&data);
    }
}

/// A script of plausible traffic (handshakes, data, responses in order) also holds them.
#[test]
fn a_plausible_script_keeps_the_safety_properties() {
    let mut data = vec![0u8];
    for i in 0..200u32 {
        // client packet on port 40000 + i % 4 with payload, then a response, then time.
        data.extend_from_slice(&[0, (i % 4) as u8, 0x18]);
        data.extend_from_slice(&(i * 100).to_be_bytes()[2..]);
        data.extend_from_slice(&[0, 0, 0, 1, 0, 100, 0, 0xff, 0xff]);
        data.extend_from_slice(&[
            2,
            0x02,
            (i % 4) as u8,
            0,
            0,
            0,
            1,
            0,
            0,
            0x12,
            0xff,
            0xff,
            0,
            0,
        ]);
        data.extend_from_slice(&[4, 0, 200]);
    }
    session_driver::drive(&data);
}

/// Found by the fuzzer: two real clients mapped onto one fake endpoint, one to each
/// transfer's target; their packets must not be mixed into one session.
#[test]
fn one_fake_endpoint_to_two_targets_is_two_sessions() {
    session_driver::drive(&[
        0x00, 0x00, 0xff, 0x8f, 0x97, 0x8f, 0x26, 0xde, 0xde, 0xde, 0xde, 0xde, 0xde, 0x93, 0x93,
        0xff, 0xff, 0xff, 0x00, 0x93, 0x89, 0x93, 0x93, 0x93, 0x93, 0x93, 0x93, 0x93, 0x93, 0x93,
        0x93, 0x93, 0x93, 0x93, 0x93, 0x93, 0x00, 0x10, 0x23, 0x00, 0x92, 0x49, 0xff, 0xff, 0x0b,
        0x24, 0x19,
    ]);
}
