//! A minimal HTTP endpoint for `GET /metrics` on the caller's mio poll: no thread, no
//! blocking call, bounded memory.
//!
//! Tokens: the listener is registered under the base token the caller gives, client slot `i`
//! under `base + 1 + i`, so the server uses `1 + max_clients` consecutive tokens
//! ([`Limits::tokens`]). A client sends one request (at most `max_request` bytes up to the
//! blank line ending its headers), gets one answer with `Connection: close`, and is closed;
//! one that has not finished within `timeout` of its accept is closed by [`MetricsServer::tick`].
//! A connection beyond `max_clients` gets a `503` and is closed at once.
//!
//! After an answer is written the server shuts its sending side and reads what the client
//! still sends until the client closes (or the timeout): closing with unread input would
//! reset the connection and could destroy the answer before the client read it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

/// Bounds of the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are answered `503` and closed.
    pub max_clients: usize,
    /// Longest request head (request line and headers) read; longer ones get `400`.
    pub max_request: usize,
    /// Time a client has from its accept to be done (request read, answer sent).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_clients: 8,
            max_request: 8 * 1024,
            timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Consecutive tokens the server takes from its base token (`max_clients` 0 counts as 1).
    pub fn tokens(&self) -> usize {
        1 + self.max_clients.max(1)
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics address {addr} is in use (another process listens on it)")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on metrics address {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
}

/// Bytes read and thrown away per event after the answer.
const DRAIN_BUDGET: usize = 64 * 1024;

/// The content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The listening endpoint and its clients.
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
    limits: Limits,
    base: Option<Token>,
    clients: Vec<Option<Client>>,
}

struct Client {
    stream: TcpStream,
    deadline: Instant,
    state: State,
}

enum State {
    /// Request head so far.
    Reading(Vec<u8>),
    /// The answer and how much of it was written.
    Writing(Vec<u8>, usize),
    /// Answer sent, sending side shut: reading until the client closes.
    Draining,
}

impl MetricsServer {
    /// Listens on `addr` (port 0: any free port, see [`MetricsServer::local_addr`]). Nothing
    /// happens until [`MetricsServer::register`].
    pub fn bind(addr: SocketAddr, limits: Limits) -> Result<MetricsServer, MetricsError> {
        let listener = TcpListener::bind(addr).map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                MetricsError::InUse { addr }
            } else {
                MetricsError::Listen { addr, source }
            }
        })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MetricsError::Listen { addr, source })?;
        let limits = Limits {
            max_clients: limits.max_clients.max(1),
            max_request: limits.max_request.max(16),
            ..limits
        };
        Ok(MetricsServer {
            listener,
            addr,
            limits,
            base: None,
            clients: (0..limits.max_clients).map(|_| None).collect(),
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The limits in force (`max_clients` at least 1).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Registers the listener under `base`; clients will use the next `max_clients` tokens.
    pub fn register(&mut self, registry: &Registry, base: Token) -> io::Result<()> {
        registry.register(&mut self.listener, base, Interest::READABLE)?;
        self.base = Some(base);
        Ok(())
    }

    /// Whether `token` is one of the server's (after [`MetricsServer::register`]).
    pub fn owns(&self, token: Token) -> bool {
        self.base
            .is_some_and(|b| token.0 >= b.0 && token.0 - b.0 < self.limits.tokens())
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.iter().filter(|c| c.is_some()).count()
    }

    /// Handles a readiness event; returns false (and does nothing) if `token` is not the
    /// server's. `render` is called, at most once, only when a `GET /metrics` is answered.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        token: Token,
        now: Instant,
        render: impl FnOnce() -> String,
    ) -> bool {
        let Some(base) = self.base.filter(|_| self.owns(token)) else {
            return false;
        };
        if token == base {
            self.accept(registry, now);
        } else {
            let slot = token.0 - base.0 - 1;
            if let Some(client) = self.clients[slot].as_mut() {
                if !client.advance(self.limits.max_request, render) {
                    self.close(registry, slot);
                }
            }
        }
        true
    }

    /// Closes clients past their deadline.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
        for slot in 0..self.clients.len() {
            if self.clients[slot]
                .as_ref()
                .is_some_and(|c| now >= c.deadline)
            {
                log::debug!("metrics: client timed out");
                self.close(registry, slot);
            }
        }
    }

    /// The earliest client deadline, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().flatten().map(|c| c.deadline).min()
    }

    /// Closes every client and deregisters the listener.
    pub fn deregister(&mut self, registry: &Registry) {
        for slot in 0..self.clients.len() {
            self.close(registry, slot);
        }
        if self.base.take().is_some() {
            let _ = registry.deregister(&mut self.listener);
        }
    }

    fn accept(&mut self, registry: &Registry, now: Instant) {
        let Some(base) = self.base else { return };
        loop {
            let mut stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors and the like: the connection stays queued.
                    log::warn!("metrics: accept on {}: {e}", self.addr);
                    return;
                }
            };
            let Some(slot) = self.clients.iter().position(Option::is_none) else {
                log::debug!("metrics: more than {} clients", self.limits.max_clients);
                // Best effort, without waiting: the answer fits an empty socket buffer; input
                // already there is read so that closing does not reset the connection.
                let _ = stream.write(&response(503, "Service Unavailable", "", b"busy\n"));
                let _ = stream.shutdown(Shutdown::Write);
                let _ = stream.read(&mut [0u8; 1024]);
                continue;
            };
            let token = Token(base.0 + 1 + slot);
            if let Err(e) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                log::warn!("metrics: register a client: {e}");
                continue;
            }
            self.clients[slot] = Some(Client {
                stream,
                deadline: now + self.limits.timeout,
                state: State::Reading(Vec::new()),
            });
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut client) = self.clients[slot].take() {
            let _ = registry.deregister(&mut client.stream);
        }
    }
}

impl Client {
    /// Reads, answers and drains as far as the socket allows; false: close it now.
    fn advance(&mut self, max_request: usize, render: impl FnOnce() -> String) -> bool {
        if let State::Reading(buf) = &mut self.state {
            let mut chunk = [0u8; 1024];
            let request = loop {
                let room = (max_request - buf.len()).min(chunk.len());
                if room == 0 {
                    break Request::TooLong;
                }
                match self.stream.read(&mut chunk[..room]) {
                    Ok(0) => return false,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(request) = parse_request(buf) {
                            break request;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            };
            self.state = State::Writing(answer(request, render), 0);
        }
        if let State::Writing(out, pos) = &mut self.state {
            while *pos < out.len() {
                match self.stream.write(&out[*pos..]) {
                    Ok(0) => return false,
                    Ok(n) => *pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            if self.stream.shutdown(Shutdown::Write).is_err() {
                return false;
            }
            self.state = State::Draining;
        }
        // A client that keeps sending gets a budget per event (it will have more events) and
        // its deadline.
        let mut sink = [0u8; 1024];
        let mut budget = DRAIN_BUDGET;
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) => return false,
                Ok(n) if n >= budget => return true,
                Ok(n) => budget -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// What a complete (or hopeless) request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// `GET /metrics` (`head`: `HEAD /metrics`, the same without a body).
    Metrics { head: bool },
    /// A well-formed GET or HEAD of another path.
    NotFound,
    /// A well-formed request with another method.
    MethodNotAllowed,
    /// Not an HTTP/1.0 or 1.1 request.
    Bad,
    /// No blank line within the size bound.
    TooLong,
}

/// Parses a request head once it is complete (ends with an empty line); None: not yet.
/// Anything after the head (a body) is ignored.
pub(crate) fn parse_request(buf: &[u8]) -> Option<Request> {
    // The head ends at the first empty line (CRLF or bare LF line ends, even mixed).
    let end = (0..buf.len()).find(|&i| {
        buf[i] == b'\n' && (buf[i + 1..].starts_with(b"\n") || buf[i + 1..].starts_with(b"\r\n"))
    })?;
    let head = &buf[..end];
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Request::Bad);
    };
    let is_token = |s: &[u8]| !s.is_empty() && s.iter().all(|b| b.is_ascii_alphanumeric());
    let is_target = |s: &[u8]| s.first() == Some(&b'/') && s.iter().all(|b| b.is_ascii_graphic());
    if !is_token(method) || !is_target(target) || !matches!(version, b"HTTP/1.0" | b"HTTP/1.1") {
        return Some(Request::Bad);
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    Some(match method {
        b"GET" | b"HEAD" if path == b"/metrics" => Request::Metrics {
            head: method == b"HEAD",
        },
        b"GET" | b"HEAD" => Request::NotFound,
        _ => Request::MethodNotAllowed,
    })
}

fn answer(request: Request, render: impl FnOnce() -> String) -> Vec<u8> {
    match request {
        Request::Metrics { head } => {
            let body = render();
            let mut out = response(200, "OK", "", body.as_bytes());
            if head {
                out.truncate(out.len() - body.len());
            }
            out
        }
        Request::NotFound => response(404, "Not Found", "", b"not found: try /metrics\n"),
        Request::MethodNotAllowed => response(
            405,
            "Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            b"method not allowed\n",
        ),
        Request::Bad => response(400, "Bad Request", "", b"bad request\n"),
        Request::TooLong => response(400, "Bad Request", "", b"request too long\n"),
    }
}

fn response(status: u16, reason: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let content_type = if status == 200 {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests() {
        let cases: &[(&[u8], Option<Request>)] = &[
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Some(Request::Metrics { head: false }),
            ),
            (
                b"GET /metrics HTTP/1.0\r\n\r\n",
                Some(Request::Metrics { head: false }),
            ),
            (
                b"GET /metrics?x=1 HTTP/1.0\n\n",
                Some(Request::Metrics { head: false }),
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                Some(Request::Metrics { head: true }),
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Some(Request::NotFound)),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Some(Request::NotFound)),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                Some(Request::MethodNotAllowed),
            ),
            (b"GET /metrics HTTP/2.0\r\n\r\n", Some(Request::Bad)),
            (b"GET /metrics\r\n\r\n", Some(Request::Bad)),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Some(Request::Bad)),
            (b"G\xc3T /metrics HTTP/1.1\r\n\r\n", Some(Request::Bad)),
            (b"\r\n\r\n", Some(Request::Bad)),
            (b"GET /metrics HTTP/1.1\r\n", None),
            (b"", None),
            (b"GET /metrics HTTP/1.1\r\n\r", None),
            (
                b"GET /metrics HTTP/1.1\n\r\n",
                Some(Request::Metrics { head: false }),
            ),
            (b"\n\r\n", Some(Request::Bad)),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                parse_request(bytes),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn head_has_headers_only() {
        let get = answer(Request::Metrics { head: false }, || "a 1\n".into());
        let head = answer(Request::Metrics { head: true }, || "a 1\n".into());
        assert_eq!(&get[..head.len()], &head[..]);
        assert!(String::from_utf8(head)
            .unwrap()
            .ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_request(&bytes);
        }

        #[test]
        fn any_request_line_parses_without_panic(
            line in "[A-Z]{0,8}[ ]{0,2}[ -~]{0,40}[ ]{0,2}(HTTP/1\\.[01])?(\r?\n[ -~]{0,30}){0,3}\r?\n\r?\n"
        ) {
            let r = parse_request(line.as_bytes());
            prop_assert!(r.is_some());
        }
    }
}
