//! Database logins that answer a challenge (tcpcopy `--auth-file`, `--protocol`).
//!
//! A captured login answers the *online* server's challenge; the target sends another one, so
//! replayed as captured it fails and every query after it is refused. A [`Login`] follows one
//! session's login: it reads the target's bytes (from intercept's payload records) for the
//! challenge, and for each captured client message of the login says whether it goes as
//! captured, must wait for the challenge, goes rewritten (the answer recomputed for the
//! target's challenge and the user's password from the [`Credentials`]), or cannot be
//! replayed (the session is then dropped, not replayed wrongly).
//!
//! Supported: MySQL/MariaDB `mysql_native_password`, `caching_sha2_password` (fast path) and
//! auth-switch requests ([`mysql`]); PostgreSQL cleartext, `md5` and `SCRAM-SHA-256`
//! ([`postgres`]). Pure logic: no I/O, time comes in as an argument.

pub mod mysql;
pub mod postgres;

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// The database protocol of the replayed sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Mysql,
    Postgres,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Mysql => "mysql",
            Protocol::Postgres => "postgres",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Protocol, String> {
        match s.to_ascii_lowercase().as_str() {
            "mysql" | "mariadb" => Ok(Protocol::Mysql),
            "postgres" | "postgresql" | "pgsql" => Ok(Protocol::Postgres),
            _ => Err(format!(
                "unknown protocol {s:?} (expected mysql, mariadb, postgres or postgresql)"
            )),
        }
    }
}

/// Passwords by user name, from `user:password` lines. Its `Debug` shows no password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    users: HashMap<String, Vec<u8>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({} users)", self.users.len())
    }
}

/// A line of an auth file that does not parse (the line's text is never shown: it may hold
/// a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("line {0}: expected user:password")]
    NoColon(usize),
    #[error("line {0}: empty user name")]
    EmptyUser(usize),
    #[error("line {line}: user {user:?} appears twice")]
    Duplicate { line: usize, user: String },
    #[error("no user:password line")]
    Empty,
}

impl Credentials {
    /// Parses `user:password` lines: split at the first `:` (a password may contain `:`), a
    /// trailing `\r` removed; blank lines and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<Credentials, CredentialsError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (user, password) = line
                .split_once(':')
                .ok_or(CredentialsError::NoColon(i + 1))?;
            if user.is_empty() {
                return Err(CredentialsError::EmptyUser(i + 1));
            }
            if users
                .insert(user.to_string(), password.as_bytes().to_vec())
                .is_some()
            {
                return Err(CredentialsError::Duplicate {
                    line: i + 1,
                    user: user.to_string(),
                });
            }
        }
        if users.is_empty() {
            return Err(CredentialsError::Empty);
        }
        Ok(Credentials { users })
    }

    pub fn password(&self, user: &str) -> Option<&[u8]> {
        self.users.get(user).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `--auth-file`; without it logins are only watched (a refusal by the target is counted).
    pub credentials: Option<Credentials>,
    /// `--protocol`; `None` = detected per session from its first bytes.
    pub protocol: Option<Protocol>,
}

/// Why a login is not replayed (the session is dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalKind {
    /// The user is not in the auth file.
    UnknownUser,
    /// An authentication method (or a step of one) we cannot answer.
    Unsupported,
    /// The target's challenge was not seen: no payload records (`--payload` on both sides?)
    /// or a challenge longer than a record carries.
    NoChallenge,
    /// The login switches to TLS: its bytes cannot be rewritten.
    Tls,
    /// The session's first client bytes are not the start of a login (it began before the
    /// capture, or is not this protocol).
    NotALogin,
    /// A message of the login does not parse, or is split over several segments.
    Malformed,
}

impl RefusalKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RefusalKind::UnknownUser => "user not in the auth file",
            RefusalKind::Unsupported => "unsupported method",
            RefusalKind::NoChallenge => "target challenge not seen",
            RefusalKind::Tls => "TLS",
            RefusalKind::NotALogin => "login not captured",
            RefusalKind::Malformed => "malformed login",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// The login's user, when known.
    pub user: Option<String>,
    /// The method (plugin or mechanism) or what about it is not supported.
    pub method: String,
}

impl Refusal {
    fn new(kind: RefusalKind, user: Option<&str>, method: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            user: user.map(str::to_string),
            method: method.into(),
        }
    }
}

/// What to do with a captured client message of the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientVerdict {
    /// Send it as captured.
    Pass,
    /// Hold it: the answer needs a challenge from the target that has not come yet.
    Wait,
    /// Send these bytes instead (its length may differ).
    Replace(Vec<u8>),
    /// Drop the session.
    Refuse(Refusal),
}

/// What the target's bytes showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// The target accepted the login.
    Accepted,
    /// The target refused the login (an error after the answer).
    Rejected { user: Option<String> },
    /// The target asks for something that cannot be replayed: drop the session.
    Refuse(Refusal),
}

/// Most target bytes kept while a message is incomplete. Login messages are short; a longer
/// one ends the watch (a challenge cannot be that long).
const MAX_SERVER_BUF: usize = 4096;
/// How long a client answer waits for the target's challenge.
pub const CHALLENGE_WAIT: Duration = Duration::from_secs(3);

enum Machine {
    Detect,
    Mysql(mysql::Machine),
    Postgres(postgres::Machine),
}

/// One session's login. See the module docs.
pub struct Login {
    machine: Machine,
    /// Target bytes of an incomplete message.
    buf: Vec<u8>,
    /// Some target bytes of the login were not seen: the stream cannot be parsed any more.
    blind: bool,
    done: bool,
    waiting_since: Option<Instant>,
    /// Answers were recomputed.
    rewritten: bool,
}

impl Login {
    pub fn new(protocol: Option<Protocol>) -> Login {
        let machine = match protocol {
            None => Machine::Detect,
            Some(Protocol::Mysql) => Machine::Mysql(mysql::Machine::default()),
            Some(Protocol::Postgres) => Machine::Postgres(postgres::Machine::default()),
        };
        Login {
            machine,
            buf: Vec::new(),
            blind: false,
            done: false,
            waiting_since: None,
            rewritten: false,
        }
    }

    /// Nothing more to watch: the login is over (or was never one).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// At least one answer of this login was recomputed.
    pub fn rewritten(&self) -> bool {
        self.rewritten
    }

    pub fn protocol(&self) -> Option<Protocol> {
        match self.machine {
            Machine::Detect => None,
            Machine::Mysql(_) => Some(Protocol::Mysql),
            Machine::Postgres(_) => Some(Protocol::Postgres),
        }
    }

    /// The next bytes of the target's stream, in order.
    pub fn on_server(&mut self, data: &[u8]) -> Option<ServerEvent> {
        if self.done || self.blind || data.is_empty() {
            return None;
        }
        if matches!(self.machine, Machine::Detect) {
            // A server that speaks first: a MySQL greeting, or not a protocol we know.
            if mysql::looks_like_greeting(data) {
                self.machine = Machine::Mysql(mysql::Machine::default());
            } else {
                self.done = true;
                return None;
            }
        }
        if self.buf.len() + data.len() > MAX_SERVER_BUF {
            self.blind = true;
            self.buf = Vec::new();
            return None;
        }
        self.buf.extend_from_slice(data);
        let mut at = 0;
        let mut event = None;
        while event.is_none() && !self.done {
            let step = match &mut self.machine {
                Machine::Detect => break,
                Machine::Mysql(m) => m.on_server(&self.buf[at..]),
                Machine::Postgres(m) => m.on_server(&self.buf[at..]),
            };
            let Some((used, ev, done)) = step else {
                break;
            };
            at += used;
            event = ev;
            self.done |= done;
        }
        self.buf.drain(..at);
        if matches!(
            event,
            Some(ServerEvent::Refuse(_)) | Some(ServerEvent::Rejected { .. })
        ) {
            self.done = true;
        }
        event
    }

    /// `len` target bytes that were not seen (a record without payload).
    pub fn on_server_missing(&mut self, len: usize) {
        if len > 0 && !self.done && !matches!(self.machine, Machine::Detect) {
            self.blind = true;
            self.buf = Vec::new();
        }
        if matches!(self.machine, Machine::Detect) && len > 0 {
            // The server spoke first and we cannot tell what it said.
            self.blind = true;
        }
    }

    /// A captured client message of the login (a segment's whole payload), about to be sent
    /// for the first time. `creds`: `None` watches without rewriting.
    pub fn on_client(
        &mut self,
        now: Instant,
        creds: Option<&Credentials>,
        payload: &[u8],
    ) -> ClientVerdict {
        if self.done {
            return ClientVerdict::Pass;
        }
        if matches!(self.machine, Machine::Detect) {
            if self.blind {
                // The server spoke first, unseen: cannot tell the protocol.
                self.done = true;
                return match creds {
                    Some(_) => ClientVerdict::Refuse(Refusal::new(
                        RefusalKind::NoChallenge,
                        None,
                        "server greeting",
                    )),
                    None => ClientVerdict::Pass,
                };
            }
            if postgres::looks_like_first_message(payload) {
                self.machine = Machine::Postgres(postgres::Machine::default());
            } else {
                // A client that speaks first in another protocol: nothing to do.
                self.done = true;
                return ClientVerdict::Pass;
            }
        }
        let step = match &mut self.machine {
            Machine::Detect => return ClientVerdict::Pass,
            Machine::Mysql(m) => m.on_client(creds, payload, self.blind),
            Machine::Postgres(m) => m.on_client(creds, payload, self.blind),
        };
        let verdict = match step {
            ClientVerdict::Wait => {
                let since = *self.waiting_since.get_or_insert(now);
                if now.saturating_duration_since(since) < CHALLENGE_WAIT {
                    return ClientVerdict::Wait;
                }
                let user = self.user().map(str::to_string);
                ClientVerdict::Refuse(Refusal {
                    kind: RefusalKind::NoChallenge,
                    user,
                    method: "no answer from the target".into(),
                })
            }
            v => v,
        };
        self.waiting_since = None;
        match &verdict {
            ClientVerdict::Replace(_) => self.rewritten = true,
            ClientVerdict::Refuse(_) => self.done = true,
            _ => {}
        }
        if creds.is_none() {
            // Watching only: never rewrite, never refuse.
            if matches!(verdict, ClientVerdict::Refuse(_)) {
                self.done = true;
            }
            return ClientVerdict::Pass;
        }
        let finished = match &self.machine {
            Machine::Mysql(m) => m.is_done(),
            Machine::Postgres(m) => m.is_done(),
            Machine::Detect => true,
        };
        self.done |= finished;
        verdict
    }

    /// The login's user, once the client named it.
    pub fn user(&self) -> Option<&str> {
        match &self.machine {
            Machine::Mysql(m) => m.user(),
            Machine::Postgres(m) => m.user(),
            Machine::Detect => None,
        }
    }
}

/// Counters of the logins of all sessions, and the (user, method) pairs already logged.
#[derive(Debug, Default)]
pub struct AuthReport {
    /// Logins whose answer was recomputed for the target's challenge.
    pub rewritten: u64,
    /// Logins the target accepted (when its answer was seen).
    pub accepted: u64,
    /// Logins the target refused.
    pub rejected: u64,
    /// Sessions dropped because their login could not be replayed, by kind.
    pub refused_unknown_user: u64,
    pub refused_unsupported: u64,
    pub refused_no_challenge: u64,
    pub refused_tls: u64,
    pub refused_not_login: u64,
    pub refused_malformed: u64,
    logged: std::collections::HashSet<(String, String)>,
}

/// Most distinct (user, method) pairs remembered for logging once.
const MAX_LOGGED: usize = 4096;

impl AuthReport {
    /// Counts a refusal; returns the log line when this (user, method) was not logged yet.
    pub fn refused(&mut self, r: &Refusal) -> Option<String> {
        match r.kind {
            RefusalKind::UnknownUser => self.refused_unknown_user += 1,
            RefusalKind::Unsupported => self.refused_unsupported += 1,
            RefusalKind::NoChallenge => self.refused_no_challenge += 1,
            RefusalKind::Tls => self.refused_tls += 1,
            RefusalKind::NotALogin => self.refused_not_login += 1,
            RefusalKind::Malformed => self.refused_malformed += 1,
        }
        let user = r.user.clone().unwrap_or_else(|| "?".into());
        let key = (user.clone(), format!("{}: {}", r.kind.as_str(), r.method));
        if self.logged.len() >= MAX_LOGGED || !self.logged.insert(key) {
            return None;
        }
        let hint = match r.kind {
            RefusalKind::NoChallenge => {
                " (are tcpcopy and intercept both run with --payload? a challenge longer than 128 bytes is not carried)"
            }
            _ => "",
        };
        Some(format!(
            "login of user {user:?} not replayable: {}: {}; its sessions are dropped{hint}",
            r.kind.as_str(),
            r.method
        ))
    }

    /// Counts a refusal by the target; returns the log line the first time for this user.
    pub fn rejected(&mut self, user: Option<&str>) -> Option<String> {
        self.rejected += 1;
        let user = user.unwrap_or("?").to_string();
        let key = (user.clone(), "rejected by the target".to_string());
        if self.logged.len() >= MAX_LOGGED || !self.logged.insert(key) {
            return None;
        }
        Some(format!(
            "the target refused the login of user {user:?} (wrong password in the auth file, or no --auth-file?)"
        ))
    }

    /// Sessions dropped because of their login, all kinds.
    pub fn refused_total(&self) -> u64 {
        self.refused_unknown_user
            + self.refused_unsupported
            + self.refused_no_challenge
            + self.refused_tls
            + self.refused_not_login
            + self.refused_malformed
    }

    /// (name, count) of every non-zero counter, for the statistics line.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        [
            ("rewritten", self.rewritten),
            ("accepted", self.accepted),
            ("rejected by target", self.rejected),
            ("unknown user", self.refused_unknown_user),
            ("unsupported", self.refused_unsupported),
            ("no challenge", self.refused_no_challenge),
            ("tls", self.refused_tls),
            ("not a login", self.refused_not_login),
            ("malformed", self.refused_malformed),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// Bytes up to the first NUL and the rest after it.
pub(crate) fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == 0)?;
    Some((&b[..i], &b[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse() {
        let c = Credentials::parse("# comment\nalice:se:cret\r\n\nbob:\n").unwrap();
        assert_eq!(c.password("alice"), Some(&b"se:cret"[..]));
        assert_eq!(c.password("bob"), Some(&b""[..]));
        assert_eq!(c.password("carol"), None);
        assert_eq!(format!("{c:?}"), "Credentials(2 users)");
        assert_eq!(
            Credentials::parse("alice\n"),
            Err(CredentialsError::NoColon(1))
        );
        assert_eq!(
            Credentials::parse("a:1\n:x\n"),
            Err(CredentialsError::EmptyUser(2))
        );
        assert!(matches!(
            Credentials::parse("a:1\na:2"),
            Err(CredentialsError::Duplicate { line: 2, .. })
        ));
        assert_eq!(Credentials::parse("# x\n"), Err(CredentialsError::Empty));
    }

    #[test]
    fn report_logs_once_per_user_and_method() {
        let mut r = AuthReport::default();
        let refusal = Refusal::new(RefusalKind::UnknownUser, Some("bob"), "md5");
        let line = r.refused(&refusal).unwrap();
        assert!(line.contains("bob") && line.contains("md5"), "{line}");
        assert_eq!(r.refused(&refusal), None);
        assert!(r
            .refused(&Refusal::new(
                RefusalKind::UnknownUser,
                Some("bob"),
                "SCRAM-SHA-256"
            ))
            .is_some());
        assert_eq!(r.refused_unknown_user, 3);
        assert!(r.rejected(Some("bob")).is_some());
        assert!(r.rejected(Some("bob")).is_none());
        assert_eq!(r.rejected, 2);
    }

    #[test]
    fn protocol_names() {
        assert_eq!("MariaDB".parse::<Protocol>(), Ok(Protocol::Mysql));
        assert_eq!("postgresql".parse::<Protocol>(), Ok(Protocol::Postgres));
        assert!("oracle".parse::<Protocol>().is_err());
    }
}
