#![no_main]
//! tcpcopy -> intercept records: any byte stream, reassembled into 14-byte records by the
//! reassembler intercept's tunnels use (reads of the first byte's size), each record decoded
//! with the first-record handshake rule.

use std::io::{ErrorKind, Read};

use libfuzzer_sys::fuzz_target;
use tc_core::control::conn::{ClientRecords, Reassembler};
use tc_core::control::{ClientMsg, ClientMsgKind, CLIENT_MSG_LEN};

struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.data.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let mut src = Pieces {
        data: rest,
        step: usize::from(step).max(1),
    };
    let mut r = Reassembler::new(CLIENT_MSG_LEN);
    let mut i = 0usize;
    r.read_from(&mut src, &ClientRecords, usize::MAX, |unit| {
        let raw: [u8; CLIENT_MSG_LEN] = unit.try_into().expect("14 bytes");
        let m = ClientMsg::parse(&raw);
        assert_eq!(m.encode(), raw, "decode/encode round trip");
        if i == 0 {
            let _ = m.check_version_record();
        } else if let ClientMsgKind::Unknown(k) = m.classify() {
            assert!(k != 1 && k != 2);
        }
        i += 1;
    })
    .expect("client records never fail");
    assert_eq!(i, rest.len() / CLIENT_MSG_LEN);
    assert_eq!(r.pending(), rest.len() % CLIENT_MSG_LEN);
});
