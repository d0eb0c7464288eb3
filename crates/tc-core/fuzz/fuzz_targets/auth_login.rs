//! Database logins (issue 22): the first byte picks the protocol (detected, MySQL, PostgreSQL)
//! and whether there are credentials; the rest is a script of chunks `[kind][len][bytes]`:
//! target bytes, unseen target bytes, or a captured client message. No input may panic; a
//! rewritten message stays bounded; the parsers take any bytes.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tc_core::auth::{mysql, postgres, ClientVerdict, Credentials, Login, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let protocol = match sel % 3 {
        0 => None,
        1 => Some(Protocol::Mysql),
        _ => Some(Protocol::Postgres),
    };
    let creds = Credentials::parse("bench:secret\nuser:pencil\nroot:\n").unwrap();
    let creds = (sel & 4 == 0).then_some(&creds);
    let mut login = Login::new(protocol);
    let mut now = Instant::now();
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        match kind % 4 {
            0 => {
                let _ = login.on_server(chunk);
            }
            1 => login.on_server_missing(n),
            2 => now += Duration::from_secs(2),
            _ => {
                if let ClientVerdict::Replace(new) = login.on_client(now, creds, chunk) {
                    assert!(creds.is_some(), "rewritten without credentials");
                    assert!(new.len() <= chunk.len() + 512, "rewritten answer too long");
                }
            }
        }
        // The parsers on their own.
        let _ = mysql::parse_greeting(chunk);
        let _ = mysql::parse_client_first(1, chunk);
        let _ = mysql::parse_reply(chunk);
        let _ = mysql::looks_like_greeting(chunk);
        let _ = postgres::looks_like_first_message(chunk);
        let _ = postgres::split_message(chunk);
        if let Ok(text) = std::str::from_utf8(chunk) {
            let _ = postgres::parse_server_first(text);
        }
    }
});
