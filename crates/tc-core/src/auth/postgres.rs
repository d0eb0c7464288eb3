//! PostgreSQL logins (protocol 3): the client's startup message names the user; the server
//! asks for a password (cleartext), an MD5 answer (4-byte salt) or SASL (SCRAM-SHA-256:
//! server-first with the combined nonce, salt and iteration count, then the client-final
//! with the proof). An `SSLRequest`/`GSSENCRequest` answered `N` goes on in the clear.
//!
//! Server messages: type byte, 4-byte big-endian length (itself included), body. Client
//! messages after the startup: the same; the startup message has no type byte.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};

use super::{cstr, ClientVerdict, Credentials, Refusal, RefusalKind, ServerEvent};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// Most SCRAM iterations answered (a login asking for more is not replayed).
pub const MAX_ITERATIONS: u32 = 100_000;

/// `md5` + hex(md5(hex(md5(password + user)) + salt)).
pub fn md5_password(user: &[u8], password: &[u8], salt: &[u8]) -> String {
    let mut h = Md5::new();
    h.update(password);
    h.update(user);
    let inner = hex(&h.finalize());
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// The SCRAM-SHA-256 client proof (RFC 5802 section 3) for `auth_message`.
pub fn scram_proof(password: &[u8], salt: &[u8], iterations: u32, auth_message: &[u8]) -> [u8; 32] {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let signature = hmac_sha256(&stored_key, auth_message);
    let mut proof = client_key;
    proof.iter_mut().zip(signature).for_each(|(p, s)| *p ^= s);
    proof
}

/// A SCRAM server-first message: `r=<nonce>,s=<salt>,i=<iterations>[,ext]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFirst {
    pub nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

pub fn parse_server_first(s: &str) -> Option<ServerFirst> {
    let (mut nonce, mut salt, mut iterations) = (None, None, None);
    for attr in s.split(',') {
        match attr.split_once('=')? {
            ("r", v) => nonce = Some(v.to_string()),
            ("s", v) => salt = Some(B64.decode(v).ok()?),
            ("i", v) => iterations = Some(v.parse::<u32>().ok()?),
            ("m", _) => return None,
            _ => {}
        }
    }
    let iterations = iterations?;
    // More would stall the event loop: PBKDF2 runs in it (PostgreSQL uses 4096).
    if !(1..=MAX_ITERATIONS).contains(&iterations) {
        return None;
    }
    Some(ServerFirst {
        nonce: nonce?,
        salt: salt?,
        iterations,
    })
}

/// The client-final message for the target: the captured channel-binding attribute and
/// extensions, the target's nonce, the proof for the password.
pub fn client_final(
    captured: &str,
    client_first_bare: &str,
    server_first: &str,
    sf: &ServerFirst,
    password: &[u8],
) -> Option<String> {
    let (without_proof, _) = captured.rsplit_once(",p=")?;
    let mut parts = Vec::new();
    for attr in without_proof.split(',') {
        match attr.split_once('=')? {
            ("r", _) => parts.push(format!("r={}", sf.nonce)),
            _ => parts.push(attr.to_string()),
        }
    }
    let without_proof = parts.join(",");
    if !without_proof.starts_with("c=") || !without_proof.contains(",r=") {
        return None;
    }
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let proof = scram_proof(password, &sf.salt, sf.iterations, auth_message.as_bytes());
    Some(format!("{without_proof},p={}", B64.encode(proof)))
}

/// Whether `b` is a client's first message (startup, SSL/GSS request, cancel).
pub fn looks_like_first_message(b: &[u8]) -> bool {
    let Some(h) = b.get(..8) else {
        return false;
    };
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let code = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    len == b.len()
        && (code >> 16 == 3
            || (len == 8 && (code == SSL_REQUEST || code == GSSENC_REQUEST))
            || (len == 16 && code == CANCEL_REQUEST))
}

/// A typed message: (type, body, bytes used).
pub type Message<'a> = (u8, &'a [u8], usize);

/// The typed message at the front of `b`, if complete; `Err` for an impossible length.
pub fn split_message(b: &[u8]) -> Option<Result<Message<'_>, ()>> {
    let h = b.get(..5)?;
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len < 4 {
        return Some(Err(()));
    }
    let body = b.get(5..1 + len)?;
    Some(Ok((h[0], body, 1 + len)))
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The user of a startup message's body (after the length and version).
fn startup_user(params: &[u8]) -> Option<String> {
    let mut rest = params;
    while let Some((key, r)) = cstr(rest) {
        if key.is_empty() {
            break;
        }
        let (value, r) = cstr(r)?;
        if key == b"user" {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = r;
    }
    None
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Startup,
    /// An SSL or GSS encryption request went: the server's one-byte answer comes next.
    EncReply,
    /// The startup message went: the server's authentication request comes next.
    AuthRequest,
    Password(Method),
    /// The SASL initial response went: the server-first comes next.
    ServerFirst {
        bare: String,
        cnonce: String,
    },
    ClientFinal {
        bare: String,
        server_first: String,
        sf: ServerFirst,
    },
    /// The last answer went: the verdict comes next.
    Verdict,
    Done,
}

#[derive(Debug)]
enum Method {
    Clear,
    Md5([u8; 4]),
    Sasl,
}

/// The PostgreSQL side of [`super::Login`].
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

    /// One complete message at the front of `b`: (bytes used, event, login over).
    pub fn on_server(&mut self, b: &[u8]) -> Option<(usize, Option<ServerEvent>, bool)> {
        if matches!(self.state, State::EncReply) {
            let first = *b.first()?;
            self.state = if first == b'N' {
                State::Startup
            } else {
                // 'S' / 'G': the rest is encrypted (the client's next bytes say so too).
                State::Done
            };
            let done = self.is_done();
            return Some((1, None, done));
        }
        let (kind, body, used) = match split_message(b)? {
            Ok(m) => m,
            Err(()) => {
                self.state = State::Done;
                return Some((b.len(), None, true));
            }
        };
        let event = match kind {
            b'E' => {
                self.state = State::Done;
                Some(ServerEvent::Rejected {
                    user: self.user.clone(),
                })
            }
            b'R' => self.on_auth_message(body),
            // NegotiateProtocolVersion, notices: the login goes on.
            _ => None,
        };
        let done = self.is_done();
        Some((used, event, done))
    }

    fn on_auth_message(&mut self, body: &[u8]) -> Option<ServerEvent> {
        let Some(code) = body
            .get(..4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        else {
            self.state = State::Done;
            return None;
        };
        let state = std::mem::take(&mut self.state);
        let (next, event) = match (code, state) {
            (0, _) => (State::Done, Some(ServerEvent::Accepted)),
            (3, _) => (State::Password(Method::Clear), None),
            (5, _) => match body.get(4..8) {
                Some(s) => (State::Password(Method::Md5([s[0], s[1], s[2], s[3]])), None),
                None => (State::Done, None),
            },
            (10, _) => {
                let mut mechs = Vec::new();
                let mut rest = &body[4..];
                while let Some((m, r)) = cstr(rest) {
                    if m.is_empty() {
                        break;
                    }
                    mechs.push(String::from_utf8_lossy(m).into_owned());
                    rest = r;
                }
                if mechs.iter().any(|m| m == SCRAM_SHA_256) {
                    (State::Password(Method::Sasl), None)
                } else {
                    let r = self.refuse(RefusalKind::Unsupported, format!("SASL {mechs:?}"));
                    (State::Done, Some(ServerEvent::Refuse(r)))
                }
            }
            (11, State::ServerFirst { bare, cnonce }) => {
                let text = String::from_utf8_lossy(&body[4..]).into_owned();
                match parse_server_first(&text) {
                    Some(sf) if sf.nonce.starts_with(&cnonce) => (
                        State::ClientFinal {
                            bare,
                            server_first: text,
                            sf,
                        },
                        None,
                    ),
                    _ => {
                        let r = self.refuse(RefusalKind::Malformed, "SCRAM server-first");
                        (State::Done, Some(ServerEvent::Refuse(r)))
                    }
                }
            }
            (12, State::Verdict) => (State::Verdict, None),
            (code, _) => {
                let name = match code {
                    2 => "Kerberos V5",
                    7 | 8 => "GSSAPI",
                    9 => "SSPI",
                    _ => "an authentication request",
                };
                let r = self.refuse(RefusalKind::Unsupported, format!("{name} ({code})"));
                (State::Done, Some(ServerEvent::Refuse(r)))
            }
        };
        self.state = next;
        event
    }

    /// A captured client segment's payload.
    pub fn on_client(
        &mut self,
        creds: Option<&Credentials>,
        payload: &[u8],
        blind: bool,
    ) -> ClientVerdict {
        let state = std::mem::take(&mut self.state);
        match state {
            State::Startup => self.on_first(payload),
            State::Done => {
                self.state = State::Done;
                ClientVerdict::Pass
            }
            s @ (State::EncReply | State::AuthRequest | State::ServerFirst { .. }) if !blind => {
                // The target's answer has not come yet.
                self.state = s;
                ClientVerdict::Wait
            }
            State::EncReply | State::AuthRequest | State::ServerFirst { .. } => {
                ClientVerdict::Refuse(
                    self.refuse(RefusalKind::NoChallenge, "authentication request"),
                )
            }
            State::Verdict if !blind => {
                self.state = State::Verdict;
                ClientVerdict::Wait
            }
            // Its verdict was not seen (too long for a record): nothing more to follow.
            State::Verdict => {
                self.state = State::Done;
                ClientVerdict::Pass
            }
            State::Password(m) => self.on_password(creds, m, payload),
            State::ClientFinal {
                bare,
                server_first,
                sf,
            } => self.on_client_final(creds, payload, &bare, &server_first, &sf),
        }
    }

    fn on_first(&mut self, payload: &[u8]) -> ClientVerdict {
        if !looks_like_first_message(payload) {
            return ClientVerdict::Refuse(self.refuse(
                RefusalKind::NotALogin,
                "the session began before the capture",
            ));
        }
        let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        self.state = match code {
            SSL_REQUEST | GSSENC_REQUEST => State::EncReply,
            CANCEL_REQUEST => State::Done,
            _ => {
                self.user = startup_user(&payload[8..]);
                State::AuthRequest
            }
        };
        ClientVerdict::Pass
    }

    /// The client's password message (`p`), whole in `payload`.
    fn password_message<'a>(&self, payload: &'a [u8]) -> Result<&'a [u8], Refusal> {
        match split_message(payload) {
            Some(Ok((b'p', body, used))) if used == payload.len() => Ok(body),
            _ => Err(self.refuse(RefusalKind::Malformed, "password message")),
        }
    }

    fn password<'c>(&self, creds: &'c Credentials, method: &str) -> Result<&'c [u8], Refusal> {
        let user = self.user.as_deref().unwrap_or("");
        creds
            .password(user)
            .ok_or_else(|| self.refuse(RefusalKind::UnknownUser, method))
    }

    fn on_password(
        &mut self,
        creds: Option<&Credentials>,
        m: Method,
        payload: &[u8],
    ) -> ClientVerdict {
        let body = match self.password_message(payload) {
            Ok(b) => b,
            Err(r) => return ClientVerdict::Refuse(r),
        };
        self.state = State::Verdict;
        let name = match m {
            Method::Clear => "password",
            Method::Md5(_) => "md5",
            Method::Sasl => SCRAM_SHA_256,
        };
        let password = match creds.map(|c| self.password(c, name)) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(r)) => return ClientVerdict::Refuse(r),
        };
        match m {
            Method::Clear => match password {
                Some(p) => {
                    let mut b = p.to_vec();
                    b.push(0);
                    ClientVerdict::Replace(message(b'p', &b))
                }
                None => ClientVerdict::Pass,
            },
            Method::Md5(salt) => match password {
                Some(p) => {
                    let user = self.user.as_deref().unwrap_or("");
                    let mut b = md5_password(user.as_bytes(), p, &salt).into_bytes();
                    b.push(0);
                    ClientVerdict::Replace(message(b'p', &b))
                }
                None => ClientVerdict::Pass,
            },
            Method::Sasl => {
                // SASLInitialResponse: mechanism, length, client-first.
                let parsed = cstr(body).and_then(|(mech, rest)| {
                    let n = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
                    let data = rest.get(4..4 + usize::try_from(n).ok()?)?;
                    Some((mech, data))
                });
                let Some((mech, data)) = parsed else {
                    return ClientVerdict::Refuse(
                        self.refuse(RefusalKind::Malformed, "SASL initial response"),
                    );
                };
                if mech != SCRAM_SHA_256.as_bytes() {
                    let mech = String::from_utf8_lossy(mech).into_owned();
                    let kind = if mech.ends_with("-PLUS") {
                        RefusalKind::Tls
                    } else {
                        RefusalKind::Unsupported
                    };
                    return ClientVerdict::Refuse(self.refuse(kind, mech));
                }
                let text = String::from_utf8_lossy(data);
                // gs2 header: channel-binding flag, authzid, then the bare message.
                let mut it = text.splitn(3, ',');
                let (cb, _authzid, bare) = match (it.next(), it.next(), it.next()) {
                    (Some(cb), Some(a), Some(b)) => (cb, a, b),
                    _ => {
                        return ClientVerdict::Refuse(
                            self.refuse(RefusalKind::Malformed, "SCRAM client-first"),
                        )
                    }
                };
                if cb.starts_with("p=") {
                    return ClientVerdict::Refuse(
                        self.refuse(RefusalKind::Tls, "SCRAM channel binding"),
                    );
                }
                let cnonce = bare
                    .split(',')
                    .find_map(|a| a.strip_prefix("r="))
                    .unwrap_or("")
                    .to_string();
                if cnonce.is_empty() {
                    return ClientVerdict::Refuse(
                        self.refuse(RefusalKind::Malformed, "SCRAM client-first"),
                    );
                }
                self.state = State::ServerFirst {
                    bare: bare.to_string(),
                    cnonce,
                };
                // Replayed as captured: the client nonce is the client's own.
                ClientVerdict::Pass
            }
        }
    }

    fn on_client_final(
        &mut self,
        creds: Option<&Credentials>,
        payload: &[u8],
        bare: &str,
        server_first: &str,
        sf: &ServerFirst,
    ) -> ClientVerdict {
        let body = match self.password_message(payload) {
            Ok(b) => b,
            Err(r) => return ClientVerdict::Refuse(r),
        };
        self.state = State::Verdict;
        let Some(creds) = creds else {
            return ClientVerdict::Pass;
        };
        let password = match self.password(creds, SCRAM_SHA_256) {
            Ok(p) => p,
            Err(r) => return ClientVerdict::Refuse(r),
        };
        let captured = String::from_utf8_lossy(body);
        match client_final(&captured, bare, server_first, sf, password) {
            Some(f) => ClientVerdict::Replace(message(b'p', f.as_bytes())),
            None => {
                ClientVerdict::Refuse(self.refuse(RefusalKind::Malformed, "SCRAM client-final"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7677_scram_sha_256_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let sf = parse_server_first(server_first).unwrap();
        assert_eq!(sf.iterations, 4096);
        // The captured client-final answered another server (other nonce, other proof).
        let captured = "c=biws,r=rOprNGfwEbeRWgbNEkqOsomethingelse,p=AAAA";
        let f = client_final(captured, bare, server_first, &sf, b"pencil").unwrap();
        assert_eq!(
            f,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
    }

    #[test]
    fn md5_vector() {
        // Computed independently (Python hashlib).
        assert_eq!(
            md5_password(b"bench", b"secret", &[1, 2, 3, 4]),
            "md58d824187b66621214caa97994f319ba8"
        );
    }

    fn startup(user: &str) -> Vec<u8> {
        let mut b = 196608u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"user\0");
        b.extend_from_slice(user.as_bytes());
        b.extend_from_slice(b"\0database\0db\0\0");
        let mut out = (b.len() as u32 + 4).to_be_bytes().to_vec();
        out.extend_from_slice(&b);
        out
    }

    fn auth(code: u32, data: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(data);
        message(b'R', &b)
    }

    #[test]
    fn md5_login_rewritten() {
        let creds = Credentials::parse("bench:secret").unwrap();
        let mut m = Machine::default();
        let mut ssl = 8u32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        assert!(looks_like_first_message(&ssl));
        assert_eq!(m.on_client(Some(&creds), &ssl, false), ClientVerdict::Pass);
        assert_eq!(m.on_server(b"N"), Some((1, None, false)));
        let st = startup("bench");
        assert!(looks_like_first_message(&st));
        assert_eq!(m.on_client(Some(&creds), &st, false), ClientVerdict::Pass);
        assert_eq!(m.user(), Some("bench"));
        let captured = message(b'p', b"md5ffffffffffffffffffffffffffffffff\0");
        assert_eq!(
            m.on_client(Some(&creds), &captured, false),
            ClientVerdict::Wait
        );
        let req = auth(5, &[1, 2, 3, 4]);
        assert_eq!(m.on_server(&req), Some((req.len(), None, false)));
        let ClientVerdict::Replace(new) = m.on_client(Some(&creds), &captured, false) else {
            panic!()
        };
        assert_eq!(new, message(b'p', b"md58d824187b66621214caa97994f319ba8\0"));
        let ok = auth(0, &[]);
        assert_eq!(
            m.on_server(&ok),
            Some((ok.len(), Some(ServerEvent::Accepted), true))
        );
    }

    #[test]
    fn scram_login_rewritten() {
        let creds = Credentials::parse("user:pencil").unwrap();
        let mut m = Machine::default();
        m.on_client(Some(&creds), &startup("user"), false);
        let req = auth(10, b"SCRAM-SHA-256\0\0");
        m.on_server(&req).unwrap();
        let first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let mut b = b"SCRAM-SHA-256\0".to_vec();
        b.extend_from_slice(&(first.len() as i32).to_be_bytes());
        b.extend_from_slice(first);
        let initial = message(b'p', &b);
        assert_eq!(
            m.on_client(Some(&creds), &initial, false),
            ClientVerdict::Pass
        );
        let sf = auth(
            11,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        );
        m.on_server(&sf).unwrap();
        let captured = message(
            b'p',
            b"c=biws,r=rOprNGfwEbeRWgbNEkqOONLINEONLINEONLINEONLINE,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        );
        let ClientVerdict::Replace(new) = m.on_client(Some(&creds), &captured, false) else {
            panic!()
        };
        assert_eq!(
            new,
            message(
                b'p',
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
            )
        );
        let err = message(b'E', b"SFATAL\0C28P01\0Mpassword authentication failed\0\0");
        assert_eq!(
            m.on_server(&err).map(|x| x.1),
            Some(Some(ServerEvent::Rejected {
                user: Some("user".into())
            }))
        );
    }

    #[test]
    fn unknown_user_and_unsupported() {
        let creds = Credentials::parse("alice:x").unwrap();
        let mut m = Machine::default();
        m.on_client(Some(&creds), &startup("bob"), false);
        m.on_server(&auth(5, &[1, 2, 3, 4])).unwrap();
        let ClientVerdict::Refuse(r) = m.on_client(Some(&creds), &message(b'p', b"md5x\0"), false)
        else {
            panic!()
        };
        assert_eq!(
            (r.kind, r.user.as_deref()),
            (RefusalKind::UnknownUser, Some("bob"))
        );

        let mut m = Machine::default();
        m.on_client(Some(&creds), &startup("alice"), false);
        let (_, ev, done) = m.on_server(&auth(7, &[])).unwrap();
        assert!(done);
        assert!(matches!(ev, Some(ServerEvent::Refuse(r)) if r.kind == RefusalKind::Unsupported));

        // A session picked up mid-stream.
        let mut m = Machine::default();
        let q = message(b'Q', b"select 1\0");
        assert!(matches!(
            m.on_client(Some(&creds), &q, false),
            ClientVerdict::Refuse(r) if r.kind == RefusalKind::NotALogin
        ));
    }
}
