#![no_main]
//! tcpcopy -> intercept records: any byte stream, reassembled into 14-byte records by the
//! reassembler intercept's tunnels use (reads of the first byte's low 7 bits' size), each
//! record decoded with the first-record handshake rule. With the first byte's high bit, the
//! framing of intercept --ipv6: 14-byte records and 50-byte IPv6 CLIENT_ADDs.

use std::io::{ErrorKind, Read};

use libfuzzer_sys::fuzz_target;
use tc_core::control::conn::{ClientRecords, ClientRecords6, Framing, Reassembler};
use tc_core::control::ipv6::{client_unit_len, ClientAdd6, CLIENT_ADD6, CLIENT_ADD6_LEN};
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
        step: usize::from(step & 0x7f).max(1),
    };
    if step & 0x80 != 0 {
        return ipv6(&mut src, rest);
    }
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

/// The IPv6 variant's framing: every unit is a 14-byte record or a 50-byte IPv6 CLIENT_ADD,
/// the units cover the stream in order, and what is left is an incomplete unit.
fn ipv6(src: &mut Pieces<'_>, rest: &[u8]) {
    let framing = ClientRecords6;
    let mut r = Reassembler::new(framing.max_frame_len());
    let mut used = 0usize;
    r.read_from(src, &framing, usize::MAX, |unit| {
        assert_eq!(Some(unit.len()), client_unit_len(unit));
        assert_eq!(
            unit,
            &rest[used..used + unit.len()],
            "units in stream order"
        );
        used += unit.len();
        if unit.len() == CLIENT_ADD6_LEN {
            let a = ClientAdd6::parse(unit).expect("a CLIENT_ADD6 unit parses");
            assert_eq!(&a.encode()[CLIENT_MSG_LEN..], &unit[CLIENT_MSG_LEN..]);
        } else {
            let raw: [u8; CLIENT_MSG_LEN] = unit.try_into().expect("14 bytes");
            assert_ne!(ClientMsg::parse(&raw).kind, CLIENT_ADD6);
        }
    })
    .expect("client records never fail");
    assert_eq!(used + r.pending(), rest.len());
    assert!(r.pending() < CLIENT_ADD6_LEN);
}
