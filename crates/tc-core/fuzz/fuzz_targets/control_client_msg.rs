#![no_main]
//! tcpcopy -> intercept records: any byte stream, cut into 14-byte records as intercept reads
//! it, with the first-record handshake rule.

use libfuzzer_sys::fuzz_target;
use tc_core::control::{ClientMsg, ClientMsgKind, CLIENT_MSG_LEN};

fuzz_target!(|data: &[u8]| {
    for (i, chunk) in data.chunks_exact(CLIENT_MSG_LEN).enumerate() {
        let raw: [u8; CLIENT_MSG_LEN] = chunk.try_into().expect("14 bytes");
        let m = ClientMsg::parse(&raw);
        assert_eq!(m.encode(), raw, "decode/encode round trip");
        if i == 0 {
            let _ = m.check_version_record();
        } else if let ClientMsgKind::Unknown(k) = m.classify() {
            assert!(k != 1 && k != 2);
        }
    }
});
