//! MySQL/MariaDB logins: the server's greeting (protocol 10) carries a 20-byte nonce; the
//! client's handshake response carries the user and the answer of its auth plugin for that
//! nonce; the server answers OK, ERR, an auth-switch request (another plugin, a new nonce) or
//! more data (caching_sha2_password: fast path done, or full authentication wanted).
//!
//! Packets: 3-byte little-endian length, 1-byte sequence id, body.

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{cstr, ClientVerdict, Credentials, Refusal, RefusalKind, ServerEvent};

pub const NATIVE: &str = "mysql_native_password";
pub const CACHING_SHA2: &str = "caching_sha2_password";

/// Capability flags (client handshake response).
const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
const CLIENT_SSL: u32 = 0x0000_0800;
const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x0020_0000;

/// `mysql_native_password`: SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password))); empty for
/// an empty password.
pub fn native_password(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let h1 = Sha1::digest(password);
    let h2 = Sha1::digest(h1);
    let mut h = Sha1::new();
    h.update(nonce);
    h.update(h2);
    let h3 = h.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

/// `caching_sha2_password` (fast path): SHA256(password) XOR SHA256(SHA256(SHA256(password))
/// + nonce); empty for an empty password.
pub fn caching_sha2_password(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let h1 = Sha256::digest(password);
    let h2 = Sha256::digest(h1);
    let mut h = Sha256::new();
    h.update(h2);
    h.update(nonce);
    let h3 = h.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

/// The answer of `plugin` for `nonce`, if we can compute it.
pub fn scramble(plugin: &str, password: &[u8], nonce: &[u8]) -> Option<Vec<u8>> {
    match plugin {
        NATIVE => Some(native_password(password, nonce)),
        CACHING_SHA2 => Some(caching_sha2_password(password, nonce)),
        _ => None,
    }
}

/// One packet at the front of `b`: (sequence id, body, bytes used), if complete.
pub fn split_packet(b: &[u8]) -> Option<(u8, &[u8], usize)> {
    let h = b.get(..4)?;
    let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
    let body = b.get(4..4 + len)?;
    Some((h[3], body, 4 + len))
}

fn packet(seq: u8, body: &[u8], out: &mut Vec<u8>) {
    let len = body.len() as u32;
    out.extend_from_slice(&len.to_le_bytes()[..3]);
    out.push(seq);
    out.extend_from_slice(body);
}

/// The server's initial handshake (protocol 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub version: Vec<u8>,
    pub nonce: Vec<u8>,
    /// The server's default plugin (`mysql_native_password` when it names none).
    pub plugin: String,
    pub capabilities: u32,
}

/// Whether `b` starts like a greeting packet (detection of the protocol).
pub fn looks_like_greeting(b: &[u8]) -> bool {
    matches!(split_packet(b), Some((0, body, _)) if parse_greeting(body).is_some())
        || (b.len() >= 5 && b[3] == 0 && b[4] == 10 && b.len() < 4 + 8)
}

/// Parses a greeting body.
pub fn parse_greeting(body: &[u8]) -> Option<Greeting> {
    let (&proto, rest) = body.split_first()?;
    if proto != 10 {
        return None;
    }
    let (version, rest) = cstr(rest)?;
    // thread id, auth-plugin-data-part-1, filler, capability flags (lower).
    let rest = rest.get(4..)?;
    let part1 = rest.get(..8)?;
    let rest = rest.get(9..)?;
    let cap_lo = u32::from(u16::from_le_bytes([*rest.first()?, *rest.get(1)?]));
    let rest = &rest[2..];
    let mut nonce = part1.to_vec();
    let mut plugin = NATIVE.to_string();
    let mut capabilities = cap_lo;
    if rest.len() >= 16 {
        // charset, status flags, capability flags (upper), auth data length, 10 reserved.
        let cap_hi = u32::from(u16::from_le_bytes([rest[3], rest[4]]));
        capabilities |= cap_hi << 16;
        let data_len = usize::from(rest[5]);
        let rest = &rest[16..];
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = 13.max(data_len.saturating_sub(8));
            let part2 = rest.get(..n.min(rest.len()))?;
            // Part 2 ends with a NUL that is not part of the nonce.
            let part2 = part2.strip_suffix(&[0]).unwrap_or(part2);
            nonce.extend_from_slice(part2);
            let rest = &rest[n.min(rest.len())..];
            if capabilities & CLIENT_PLUGIN_AUTH != 0 {
                // Some servers leave out the final NUL.
                let name = cstr(rest).map_or(rest, |(n, _)| n);
                if !name.is_empty() {
                    plugin = String::from_utf8_lossy(name).into_owned();
                }
            }
        }
    }
    Some(Greeting {
        version: version.to_vec(),
        nonce,
        plugin,
        capabilities,
    })
}

/// The parts of a client handshake response (protocol 4.1) the rewriting needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    pub seq: u8,
    pub capabilities: u32,
    pub user: String,
    /// Offsets into the body: the auth response's length field starts at `auth_at`, its data
    /// ends at `auth_end`.
    pub auth_at: usize,
    pub auth_end: usize,
    pub auth: Vec<u8>,
    /// The client's plugin (`mysql_native_password` when it names none).
    pub plugin: String,
}

/// What a client's first packet is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFirst {
    Response(HandshakeResponse),
    /// An SSL request: the login continues in TLS.
    SslRequest,
}

fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let (&first, rest) = b.split_first()?;
    Some(match first {
        0..=250 => (u64::from(first), 1),
        0xfc => (
            u64::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?)),
            3,
        ),
        0xfd => {
            let r = rest.get(..3)?;
            (
                u64::from(r[0]) | u64::from(r[1]) << 8 | u64::from(r[2]) << 16,
                4,
            )
        }
        0xfe => (u64::from_le_bytes(rest.get(..8)?.try_into().ok()?), 9),
        _ => return None,
    })
}

fn put_lenenc(n: usize, out: &mut Vec<u8>) {
    if n < 251 {
        out.push(n as u8);
    } else if n < 1 << 16 {
        out.push(0xfc);
        out.extend_from_slice(&(n as u16).to_le_bytes());
    } else {
        out.push(0xfd);
        out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
    }
}

/// Parses a client's first packet body (after the greeting).
pub fn parse_client_first(seq: u8, body: &[u8]) -> Option<ClientFirst> {
    let caps = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    if caps & CLIENT_PROTOCOL_41 == 0 {
        return None;
    }
    if body.len() == 32 && caps & CLIENT_SSL != 0 {
        return Some(ClientFirst::SslRequest);
    }
    // capabilities, max packet size, charset, 23 filler bytes.
    let rest = body.get(32..)?;
    let (user, _) = cstr(rest)?;
    let auth_at = 32 + user.len() + 1;
    let after = &body[auth_at..];
    let (auth_len, head) = if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        let (n, h) = lenenc(after)?;
        (usize::try_from(n).ok()?, h)
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        (usize::from(*after.first()?), 1)
    } else {
        // A NUL-terminated answer (pre-4.1 style): the scramble may contain NUL bytes.
        return None;
    };
    let auth = after.get(head..head.checked_add(auth_len)?)?;
    let auth_end = auth_at + head + auth_len;
    let mut rest = &body[auth_end..];
    if caps & CLIENT_CONNECT_WITH_DB != 0 {
        rest = cstr(rest).map_or(&[][..], |(_, r)| r);
    }
    let mut plugin = NATIVE.to_string();
    if caps & CLIENT_PLUGIN_AUTH != 0 {
        if let Some((name, _)) = cstr(rest) {
            if !name.is_empty() {
                plugin = String::from_utf8_lossy(name).into_owned();
            }
        }
    }
    Some(ClientFirst::Response(HandshakeResponse {
        seq,
        capabilities: caps,
        user: String::from_utf8_lossy(user).into_owned(),
        auth_at,
        auth_end,
        auth: auth.to_vec(),
        plugin,
    }))
}

/// The handshake response packet (header included) with its auth response replaced.
pub fn rewrite_response(body: &[u8], r: &HandshakeResponse, answer: &[u8]) -> Vec<u8> {
    let mut new = Vec::with_capacity(body.len() + answer.len() + 8);
    new.extend_from_slice(&body[..r.auth_at]);
    if r.capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        put_lenenc(answer.len(), &mut new);
    } else {
        new.push(answer.len() as u8);
    }
    new.extend_from_slice(answer);
    new.extend_from_slice(&body[r.auth_end..]);
    let mut out = Vec::with_capacity(new.len() + 4);
    packet(r.seq, &new, &mut out);
    out
}

/// What a server packet during the login is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerReply {
    Ok,
    Err,
    /// Another plugin and its nonce.
    AuthSwitch {
        plugin: String,
        nonce: Vec<u8>,
    },
    /// Plugin-specific data (caching_sha2_password: 3 = fast path done, 4 = full auth wanted).
    MoreData(Vec<u8>),
    Other,
}

pub fn parse_reply(body: &[u8]) -> ServerReply {
    match body.first() {
        Some(0x00) => ServerReply::Ok,
        Some(0xff) => ServerReply::Err,
        Some(0xfe) if body.len() > 1 => {
            let rest = &body[1..];
            let (name, data) = cstr(rest).unwrap_or((rest, &[]));
            let data = data.strip_suffix(&[0]).unwrap_or(data);
            ServerReply::AuthSwitch {
                plugin: String::from_utf8_lossy(name).into_owned(),
                nonce: data.to_vec(),
            }
        }
        // An old-style switch to mysql_old_password.
        Some(0xfe) => ServerReply::AuthSwitch {
            plugin: "mysql_old_password".into(),
            nonce: Vec::new(),
        },
        Some(0x01) => ServerReply::MoreData(body[1..].to_vec()),
        _ => ServerReply::Other,
    }
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Greeting,
    /// The target's greeting: the client's handshake response comes next.
    Response { nonce: Vec<u8> },
    /// Our answer went; the target's verdict comes next.
    Verdict { plugin: String },
    /// The target asked for another plugin: the next client packet answers it.
    Switch {
        plugin: String,
        nonce: Vec<u8>,
        seq: u8,
    },
    /// Answered the switch (`synthesized`: the answer was not in the capture, it went in
    /// front of the next command).
    Done,
}

/// The MySQL side of [`super::Login`].
#[derive(Debug, Default)]
pub struct Machine {
    state: State,
    user: Option<String>,
}

impl Machine {
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn refuse(&self, kind: RefusalKind, method: impl Into<String>) -> Refusal {
        Refusal::new(kind, self.user.as_deref(), method)
    }

    /// One complete packet at the front of `b`: (bytes used, event, login over).
    pub fn on_server(&mut self, b: &[u8]) -> Option<(usize, Option<ServerEvent>, bool)> {
        let (seq, body, used) = split_packet(b)?;
        let state = std::mem::take(&mut self.state);
        let (event, next) = match state {
            State::Greeting => match parse_greeting(body) {
                Some(g) => (None, State::Response { nonce: g.nonce }),
                // An error instead of a greeting (too many connections, host blocked).
                None => (None, State::Done),
            },
            State::Verdict { plugin } => match parse_reply(body) {
                ServerReply::Ok => (Some(ServerEvent::Accepted), State::Done),
                ServerReply::Err => (
                    Some(ServerEvent::Rejected {
                        user: self.user.clone(),
                    }),
                    State::Done,
                ),
                ServerReply::AuthSwitch { plugin, nonce } => {
                    (None, State::Switch { plugin, nonce, seq })
                }
                ServerReply::MoreData(d) if plugin == CACHING_SHA2 && d.first() == Some(&3) => {
                    (None, State::Verdict { plugin })
                }
                ServerReply::MoreData(d) if plugin == CACHING_SHA2 && d.first() == Some(&4) => (
                    Some(ServerEvent::Refuse(self.refuse(
                        RefusalKind::Unsupported,
                        "caching_sha2_password full authentication (needs TLS or RSA; the fast path works once the target has cached the user)",
                    ))),
                    State::Done,
                ),
                _ => (
                    Some(ServerEvent::Refuse(self.refuse(
                        RefusalKind::Unsupported,
                        format!("{plugin}: extra authentication round"),
                    ))),
                    State::Done,
                ),
            },
            s @ (State::Response { .. } | State::Switch { .. }) => {
                // The target spoke out of turn: leave the rest to it.
                (None, s)
            }
            State::Done => (None, State::Done),
        };
        let done = matches!(next, State::Done);
        self.state = next;
        Some((used, event, done))
    }

    /// A captured client segment's payload.
    pub fn on_client(
        &mut self,
        creds: Option<&Credentials>,
        payload: &[u8],
        blind: bool,
    ) -> ClientVerdict {
        let Some((seq, body, used)) = split_packet(payload) else {
            self.state = State::Done;
            return ClientVerdict::Refuse(
                self.refuse(RefusalKind::Malformed, "a packet split over segments"),
            );
        };
        match std::mem::take(&mut self.state) {
            State::Greeting if blind => {
                ClientVerdict::Refuse(self.refuse(RefusalKind::NoChallenge, "greeting"))
            }
            State::Greeting => {
                self.state = State::Greeting;
                ClientVerdict::Wait
            }
            State::Response { nonce } => {
                if used != payload.len() {
                    return ClientVerdict::Refuse(
                        self.refuse(RefusalKind::Malformed, "handshake response"),
                    );
                }
                let r = match parse_client_first(seq, body) {
                    Some(ClientFirst::Response(r)) => r,
                    Some(ClientFirst::SslRequest) => {
                        return ClientVerdict::Refuse(self.refuse(RefusalKind::Tls, "SSL request"))
                    }
                    None if seq == 0 => {
                        return ClientVerdict::Refuse(self.refuse(
                            RefusalKind::NotALogin,
                            "the session began before the capture",
                        ))
                    }
                    None => {
                        return ClientVerdict::Refuse(
                            self.refuse(RefusalKind::Malformed, "handshake response"),
                        )
                    }
                };
                self.user = Some(r.user.clone());
                let plugin = r.plugin.clone();
                self.state = State::Verdict {
                    plugin: plugin.clone(),
                };
                let Some(creds) = creds else {
                    return ClientVerdict::Pass;
                };
                let Some(password) = creds.password(&r.user) else {
                    return ClientVerdict::Refuse(self.refuse(RefusalKind::UnknownUser, plugin));
                };
                if r.auth.is_empty() && !password.is_empty() {
                    // The online client answered with nothing (it expects a switch).
                    return ClientVerdict::Pass;
                }
                match scramble(&plugin, password, &nonce) {
                    Some(answer) => ClientVerdict::Replace(rewrite_response(body, &r, &answer)),
                    None => ClientVerdict::Refuse(self.refuse(RefusalKind::Unsupported, plugin)),
                }
            }
            State::Verdict { plugin } => {
                // The target has not given its verdict yet.
                self.state = State::Verdict { plugin };
                if blind {
                    // Its verdict was not seen: nothing more to follow.
                    self.state = State::Done;
                    return ClientVerdict::Pass;
                }
                ClientVerdict::Wait
            }
            State::Switch {
                plugin,
                nonce,
                seq: server_seq,
            } => {
                let Some(user) = self.user.clone() else {
                    self.state = State::Done;
                    return ClientVerdict::Pass;
                };
                let Some(creds) = creds else {
                    self.state = State::Verdict { plugin };
                    return ClientVerdict::Pass;
                };
                let Some(password) = creds.password(&user) else {
                    return ClientVerdict::Refuse(self.refuse(RefusalKind::UnknownUser, plugin));
                };
                let Some(answer) = scramble(&plugin, password, &nonce) else {
                    return ClientVerdict::Refuse(self.refuse(RefusalKind::Unsupported, plugin));
                };
                let mut out = Vec::with_capacity(payload.len() + answer.len() + 4);
                packet(server_seq.wrapping_add(1), &answer, &mut out);
                if seq == server_seq.wrapping_add(1) {
                    // The captured answer to the same request: replaced.
                    out.extend_from_slice(&payload[used..]);
                } else {
                    // The online server asked for no switch: our answer goes in front of
                    // the client's next command.
                    out.extend_from_slice(payload);
                }
                self.state = State::Verdict { plugin };
                ClientVerdict::Replace(out)
            }
            State::Done => {
                self.state = State::Done;
                ClientVerdict::Pass
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// A MariaDB 10.11 greeting (nonce "abcdefgh" + "ijklmnopqrst").
    pub(crate) fn greeting(plugin: &str) -> Vec<u8> {
        let mut b = vec![10];
        b.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(b"abcdefgh\0");
        let caps: u32 = 0xf7fe | CLIENT_PLUGIN_AUTH | CLIENT_SECURE_CONNECTION;
        b.extend_from_slice(&(caps as u16).to_le_bytes());
        b.push(45);
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        b.push(21);
        b.extend_from_slice(&[0; 10]);
        b.extend_from_slice(b"ijklmnopqrst\0");
        b.extend_from_slice(plugin.as_bytes());
        b.push(0);
        let mut out = Vec::new();
        packet(0, &b, &mut out);
        out
    }

    pub(crate) fn response(user: &str, auth: &[u8], plugin: &str, db: Option<&str>) -> Vec<u8> {
        let mut caps = CLIENT_PROTOCOL_41
            | CLIENT_SECURE_CONNECTION
            | CLIENT_PLUGIN_AUTH
            | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
        if db.is_some() {
            caps |= CLIENT_CONNECT_WITH_DB;
        }
        let mut b = caps.to_le_bytes().to_vec();
        b.extend_from_slice(&(1u32 << 24).to_le_bytes());
        b.push(45);
        b.extend_from_slice(&[0; 23]);
        b.extend_from_slice(user.as_bytes());
        b.push(0);
        put_lenenc(auth.len(), &mut b);
        b.extend_from_slice(auth);
        if let Some(db) = db {
            b.extend_from_slice(db.as_bytes());
            b.push(0);
        }
        b.extend_from_slice(plugin.as_bytes());
        b.push(0);
        b.extend_from_slice(b"\x0c\x03_os\x05Linux\x01x\x01y");
        let mut out = Vec::new();
        packet(1, &b, &mut out);
        out
    }

    #[test]
    fn native_password_vectors() {
        // Computed independently (Python hashlib): password "secret", nonce bytes 1..=20.
        let nonce: Vec<u8> = (1..=20).collect();
        assert_eq!(
            hex(&native_password(b"secret", &nonce)),
            "b32bb3a583e1340c0a1108d58b1be49781ad8c2f"
        );
        assert!(native_password(b"", &nonce).is_empty());
        assert_eq!(
            hex(&caching_sha2_password(b"secret", &nonce)),
            "746ebe205d56a0707acb3e796e834e0dd7b1d61743b26bd5202c7a623230c7c9"
        );
    }

    #[test]
    fn greeting_parses() {
        let g = greeting(NATIVE);
        let (seq, body, used) = split_packet(&g).unwrap();
        assert_eq!((seq, used), (0, g.len()));
        let p = parse_greeting(body).unwrap();
        assert_eq!(p.nonce, b"abcdefghijklmnopqrst");
        assert_eq!(p.plugin, NATIVE);
        assert!(looks_like_greeting(&g));
        assert!(!looks_like_greeting(b"HTTP/1.1 200 OK\r\n"));
        assert!(g.len() <= 128, "a greeting fits a payload record");
    }

    #[test]
    fn response_rewritten_with_target_nonce() {
        let creds = Credentials::parse("bench:secret\n").unwrap();
        let online = native_password(b"secret", b"ONLINEONLINEONLINE00");
        let resp = response("bench", &online, NATIVE, Some("sbtest"));
        let mut m = Machine::default();
        assert_eq!(m.on_client(Some(&creds), &resp, false), ClientVerdict::Wait);
        let g = greeting(NATIVE);
        assert_eq!(m.on_server(&g), Some((g.len(), None, false)));
        let ClientVerdict::Replace(new) = m.on_client(Some(&creds), &resp, false) else {
            panic!("not rewritten");
        };
        assert_eq!(new.len(), resp.len());
        let (_, body, _) = split_packet(&new).unwrap();
        let Some(ClientFirst::Response(r)) = parse_client_first(1, body) else {
            panic!()
        };
        assert_eq!(r.user, "bench");
        assert_eq!(r.auth, native_password(b"secret", b"abcdefghijklmnopqrst"));
        assert_eq!(&new[new.len() - 12..], &resp[resp.len() - 12..]);
        // The target accepts.
        let ok = [7, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(
            m.on_server(&ok),
            Some((11, Some(ServerEvent::Accepted), true))
        );
    }

    #[test]
    fn plugin_change_changes_the_length() {
        // Online answered caching_sha2 (32 bytes); the target switches to native (20).
        let creds = Credentials::parse("u:pw\n").unwrap();
        let resp = response("u", &[9; 32], CACHING_SHA2, None);
        let mut m = Machine::default();
        m.on_server(&greeting(NATIVE)).unwrap();
        let ClientVerdict::Replace(first) = m.on_client(Some(&creds), &resp, false) else {
            panic!()
        };
        assert_eq!(first.len(), resp.len());
        let mut switch = vec![0xfe];
        switch.extend_from_slice(b"mysql_native_password\0");
        switch.extend_from_slice(b"ZYXWVUTSRQPONMLKJIHG\0");
        let mut pkt = Vec::new();
        packet(2, &switch, &mut pkt);
        assert_eq!(m.on_server(&pkt), Some((pkt.len(), None, false)));
        // The capture has no switch answer: the next command gets one in front.
        let query = [5, 0, 0, 0, 3, b'S', b'E', b'L', b'1'];
        let ClientVerdict::Replace(out) = m.on_client(Some(&creds), &query, false) else {
            panic!()
        };
        let (seq, body, used) = split_packet(&out).unwrap();
        assert_eq!(seq, 3);
        assert_eq!(body, native_password(b"pw", b"ZYXWVUTSRQPONMLKJIHG"));
        assert_eq!(&out[used..], &query);
    }

    #[test]
    fn caching_sha2_full_path_and_unknown_user() {
        let creds = Credentials::parse("u:pw\n").unwrap();
        let mut m = Machine::default();
        m.on_server(&greeting(CACHING_SHA2)).unwrap();
        let resp = response("u", &[1; 32], CACHING_SHA2, None);
        assert!(matches!(
            m.on_client(Some(&creds), &resp, false),
            ClientVerdict::Replace(_)
        ));
        let mut pkt = Vec::new();
        packet(2, &[1, 4], &mut pkt);
        let Some((_, Some(ServerEvent::Refuse(r)), true)) = m.on_server(&pkt) else {
            panic!()
        };
        assert_eq!(r.kind, RefusalKind::Unsupported);
        assert!(r.method.contains("full authentication"));

        let mut m = Machine::default();
        m.on_server(&greeting(NATIVE)).unwrap();
        let resp = response("nobody", &[1; 20], NATIVE, None);
        let ClientVerdict::Refuse(r) = m.on_client(Some(&creds), &resp, false) else {
            panic!()
        };
        assert_eq!(r.kind, RefusalKind::UnknownUser);
        assert_eq!(r.user.as_deref(), Some("nobody"));
    }

    #[test]
    fn fast_path_then_ok() {
        let creds = Credentials::parse("u:pw\n").unwrap();
        let mut m = Machine::default();
        m.on_server(&greeting(CACHING_SHA2)).unwrap();
        let resp = response("u", &[1; 32], CACHING_SHA2, None);
        let ClientVerdict::Replace(new) = m.on_client(Some(&creds), &resp, false) else {
            panic!()
        };
        let (_, body, _) = split_packet(&new).unwrap();
        let Some(ClientFirst::Response(r)) = parse_client_first(1, body) else {
            panic!()
        };
        assert_eq!(
            r.auth,
            caching_sha2_password(b"pw", b"abcdefghijklmnopqrst")
        );
        let mut pkts = Vec::new();
        packet(2, &[1, 3], &mut pkts);
        packet(3, &[0, 0, 0, 2, 0, 0, 0], &mut pkts);
        let (used, ev, done) = m.on_server(&pkts).unwrap();
        assert_eq!((ev, done), (None, false));
        assert_eq!(
            m.on_server(&pkts[used..]).map(|x| x.1),
            Some(Some(ServerEvent::Accepted))
        );
    }
}
