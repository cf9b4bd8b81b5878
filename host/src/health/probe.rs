//! Timed probes: tcp, http and websocket, each on a connection of its own (or, for the
//! http probes of a [`Session`], one kept per backend between probes), each within the
//! probe's `timeout` (connect included). A probe only reports what it saw
//! ([`ProbeResult`]); counting results into verdicts is the evaluators' job.
//!
//! This runs for every backend of every probed pool on every interval, so the success
//! path allocates only what hyper or tungstenite need and logs nothing. The http probe
//! drives its hyper connection inside its own future instead of spawning it, so the
//! connection (and its socket) ends exactly when the probe does, timeout included; a
//! [`Session`]'s kept connection is only polled while a probe uses it.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::HeaderValue;
use http::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use memchr::memmem;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::Failure;
use crate::config::{MAX_PROBE_BODY, ProbeConfig, ProbeKind};

/// The outcome of one probe.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// `None` when the probe passed.
    pub failure: Option<Failure>,
    /// Why it failed, in one line for logs and the backend's status (`connect: connection
    /// refused`, `status 503 is not in 200-399`, `no answer within 1 s`). Empty when it
    /// passed.
    pub detail: String,
    /// The HTTP status, when there was one (http; websocket's 101 or refusal status).
    pub status: Option<u16>,
    /// Time from the start of the probe to the first response byte (http: the response
    /// head; websocket: the 101; tcp: the connect established). Zero when it failed before
    /// that.
    pub latency: Duration,
}

impl ProbeResult {
    /// Whether the probe passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// `User-Agent` of the http and websocket probes.
const USER_AGENT_VALUE: &str = concat!("weir-health/", env!("CARGO_PKG_VERSION"));

/// Payload of the websocket probe's ping (its pong must carry the same).
const PING_PAYLOAD: &[u8] = b"weir-health";

/// Largest websocket message or frame the probe accepts while it waits for its pong (a
/// backend may push its own messages first; they are read and ignored, but not without
/// bound).
const MAX_WS_MESSAGE: usize = 1 << 20;

/// Longest `expect_body` quoted in a failure's detail.
const MAX_QUOTE: usize = 64;

/// Probes one backend once, on a connection of its own, within `config.timeout` (connect
/// included). `addr` is the backend's address; `config.port` replaces its port when set.
/// `host` is the `Host` header (the caller passes `config.host`, or the backend's address
/// as written). Never panics, whatever the backend sends.
pub async fn probe(config: &ProbeConfig, addr: SocketAddr, host: &str) -> ProbeResult {
    let addr = config.port.map_or(addr, |port| SocketAddr::new(addr.ip(), port));
    let start = Instant::now();
    let mut seen = Seen { status: None, latency: Duration::ZERO, stage: Stage::Connect };
    let run = async {
        match config.kind {
            ProbeKind::Tcp => tcp(addr, start, &mut seen).await,
            ProbeKind::Http => http(config, addr, host, start, &mut seen).await,
            ProbeKind::WebSocket => websocket(config, addr, host, start, &mut seen).await,
        }
    };
    let outcome = tokio::time::timeout(config.timeout, run).await;
    let (failure, detail) = match outcome {
        Ok(Ok(())) => (None, String::new()),
        Ok(Err(Fail(failure, detail))) => (Some(failure), detail),
        Err(_) => (Some(Failure::Timeout), seen.stage.timed_out(config.timeout)),
    };
    ProbeResult { failure, detail, status: seen.status, latency: seen.latency }
}

/// What a probe saw before it ended, kept outside its timed future so that a timeout
/// still reports the status and latency of a response whose body never finished.
#[derive(Debug)]
struct Seen {
    status: Option<u16>,
    latency: Duration,
    stage: Stage,
}

/// What a probe is waiting for.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// The TCP connect.
    Connect,
    /// The response head (http) or the upgrade's answer (websocket).
    Answer,
    /// The rest of the body, looking for `expect_body`.
    Body,
    /// The pong.
    Pong,
}

impl Stage {
    fn timed_out(self, after: Duration) -> String {
        let after = crate::config::human(after);
        match self {
            Stage::Connect => format!("connect: no answer within {after}"),
            Stage::Answer => format!("no answer within {after}"),
            Stage::Body => format!("body not complete within {after}"),
            Stage::Pong => format!("no pong within {after}"),
        }
    }
}

/// A failed probe: what kind of failure, and the detail.
#[derive(Debug)]
struct Fail(Failure, String);

async fn connect(addr: SocketAddr) -> Result<TcpStream, Fail> {
    TcpStream::connect(addr).await.map_err(|e| Fail(Failure::Connect, format!("connect: {}", io_reason(&e))))
}

async fn tcp(addr: SocketAddr, start: Instant, seen: &mut Seen) -> Result<(), Fail> {
    let mut stream = connect(addr).await?;
    seen.latency = start.elapsed();
    // Only the connect counts: the close is a courtesy, sent as a FIN.
    let _ = stream.shutdown().await;
    Ok(())
}

async fn http(config: &ProbeConfig, addr: SocketAddr, host: &str, start: Instant, seen: &mut Seen) -> Result<(), Fail> {
    let request = request(&config.path, host, true)?;
    // No TCP_NODELAY: the request is one write on a fresh connection, which Nagle's
    // algorithm never holds back (a syscall saved per probe).
    let stream = connect(addr).await?;
    seen.stage = Stage::Answer;
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| Fail(Failure::Protocol, format!("http: {e}")))?;
    let mut conn = Some(conn);
    let exchange = std::pin::pin!(async {
        let response =
            sender.send_request(request).await.map_err(|e| exchange_failure(&e, "response", Failure::Protocol))?;
        check(config, response, start, seen, None).await.map(|_| ())
    });
    drive(&mut conn, exchange).await
}

/// Polls `exchange` and, beside it, the connection that carries it (never spawned: it ends
/// with the probe). The exchange goes first, so its request is queued before the
/// connection first reads (else a server that speaks first, as SSH does, fails the idle
/// connection and the request only learns it was canceled), and again after, to take what
/// the connection just delivered. A connection that has finished is dropped (`conn` is
/// left `None`), which also fails a request it never took.
async fn drive<T>(
    conn: &mut Option<http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>>,
    mut exchange: Pin<&mut impl Future<Output = T>>,
) -> T {
    poll_fn(|cx| {
        if let Some(c) = conn.as_mut() {
            if let Poll::Ready(done) = exchange.as_mut().poll(cx) {
                return Poll::Ready(done);
            }
            if Pin::new(c).poll(cx).is_ready() {
                *conn = None;
            }
        }
        exchange.as_mut().poll(cx)
    })
    .await
}

/// Checks a response: its status, then (if asked) its body for `expect_body`. With
/// `to_end`, a response that passes also has the rest of its body read, up to
/// [`MAX_PROBE_BODY`] in all and until the deadline given, so that its connection can carry
/// the next probe: returns whether the body was read to its end (false: longer, slower, or
/// a read that failed after the verdict, which does not change it).
async fn check(
    config: &ProbeConfig,
    response: http::Response<hyper::body::Incoming>,
    start: Instant,
    seen: &mut Seen,
    to_end: Option<tokio::time::Instant>,
) -> Result<bool, Fail> {
    let status = response.status().as_u16();
    seen.status = Some(status);
    seen.latency = start.elapsed();
    if !config.expect_status.contains(status) {
        return Err(Fail(Failure::Status, format!("status {status} is not in {}", config.expect_status)));
    }
    let mut body = response.into_body();
    let mut read = 0;
    if let Some(needle) = config.expect_body.as_deref() {
        seen.stage = Stage::Body;
        let mut search = BodySearch::new(needle.as_bytes());
        loop {
            let data = match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue, // trailers
                },
                Some(Err(e)) => return Err(exchange_failure(&e, "body", Failure::Reset)),
                None => return Err(Fail(Failure::Body, format!("body does not contain `{}`", quote(needle)))),
            };
            read += data.len();
            match search.push(&data) {
                Search::Found => break,
                Search::More => {}
                Search::Exhausted => {
                    return Err(Fail(
                        Failure::Body,
                        format!("body does not contain `{}` in its first {} KiB", quote(needle), MAX_PROBE_BODY >> 10),
                    ));
                }
            }
        }
    }
    // The verdict is in: what follows only decides whether the connection is kept, and
    // ends by the probe's deadline (this timer is polled before the probe's own).
    let Some(deadline) = to_end else { return Ok(false) };
    let rest = async {
        while !body.is_end_stream() {
            if body.size_hint().lower() > MAX_PROBE_BODY.saturating_sub(read) as u64 {
                return false;
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, Bytes::len);
                    if read > MAX_PROBE_BODY {
                        return false;
                    }
                }
                Some(Err(_)) => return false,
                None => break,
            }
        }
        true
    };
    Ok(tokio::time::timeout_at(deadline, rest).await.unwrap_or(false))
}

/// A backend's http probes, one after another, on one connection kept open between them
/// (`reuse_connection`, as Envoy's health checker does by default): a probe is then one
/// write and one read on an established connection, with no handshake, no accept and no
/// TIME_WAIT. Any other probe (tcp, websocket, or http without `reuse_connection`) runs as
/// [`probe`] does, on a connection of its own.
///
/// The kept connection is not polled between probes; a backend that closed it meanwhile
/// is found out when the next probe uses it, which then goes again once on a new
/// connection, within the same timeout: a closed idle connection is not a failure. Any
/// failure, a response that says `Connection: close`, or a body over 64 KiB drops the
/// connection, so the next probe starts afresh. A connection weir closes (dropped, or the
/// session with it) is closed with a reset (SO_LINGER 0, as HAProxy's checks do), which
/// leaves no TIME_WAIT behind.
#[derive(Debug, Default)]
pub struct Session {
    kept: Option<Kept>,
}

/// An established probe connection and its sender.
struct Kept {
    sender: http1::SendRequest<Empty<Bytes>>,
    conn: http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").finish_non_exhaustive()
    }
}

/// How an attempt on a kept connection ended.
// Returned once per probe and moved at once: boxing the connection would cost an
// allocation per probe.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    /// It passed; the connection may carry the next probe.
    Passed(Option<Kept>),
    /// The connection was closed before an answer: on a kept one, go again on a new one
    /// (on a new one, that is the failure).
    Stale(Fail),
    /// A real failure.
    Failed(Fail),
}

impl Session {
    /// A session with no connection yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a connection is kept for the next probe.
    pub fn is_connected(&self) -> bool {
        self.kept.is_some()
    }

    /// Probes one backend once, as [`probe`] does, on the kept connection when there is
    /// one and `config` asks for it (http with `reuse_connection`).
    pub async fn probe(&mut self, config: &ProbeConfig, addr: SocketAddr, host: &str) -> ProbeResult {
        if config.kind != ProbeKind::Http || !config.reuse_connection {
            self.kept = None;
            return probe(config, addr, host).await;
        }
        let addr = config.port.map_or(addr, |port| SocketAddr::new(addr.ip(), port));
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + config.timeout;
        let mut seen = Seen { status: None, latency: Duration::ZERO, stage: Stage::Answer };
        let kept = &mut self.kept;
        let run = async {
            if let Some(old) = kept.take().filter(|k| !k.sender.is_closed()) {
                match attempt(config, old, request(&config.path, host, false)?, (start, deadline), &mut seen).await {
                    Attempt::Passed(again) => {
                        *kept = again;
                        return Ok(());
                    }
                    Attempt::Failed(fail) => return Err(fail),
                    Attempt::Stale(_) => {}
                }
            }
            seen.stage = Stage::Connect;
            let stream = connect(addr).await?;
            // Closed by weir, it is reset: no TIME_WAIT (it is only closed this way).
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            seen.stage = Stage::Answer;
            let (sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| Fail(Failure::Protocol, format!("http: {e}")))?;
            match attempt(
                config,
                Kept { sender, conn },
                request(&config.path, host, false)?,
                (start, deadline),
                &mut seen,
            )
            .await
            {
                Attempt::Passed(again) => {
                    *kept = again;
                    Ok(())
                }
                Attempt::Failed(fail) | Attempt::Stale(fail) => Err(fail),
            }
        };
        let outcome = tokio::time::timeout_at(deadline, run).await;
        let (failure, detail) = match outcome {
            Ok(Ok(())) => (None, String::new()),
            Ok(Err(Fail(failure, detail))) => (Some(failure), detail),
            Err(_) => (Some(Failure::Timeout), seen.stage.timed_out(config.timeout)),
        };
        if failure.is_some() {
            self.kept = None;
        }
        ProbeResult { failure, detail, status: seen.status, latency: seen.latency }
    }
}

/// One request on `kept`, its response checked and read to its end.
async fn attempt(
    config: &ProbeConfig,
    kept: Kept,
    request: http::Request<Empty<Bytes>>,
    (start, deadline): (Instant, tokio::time::Instant),
    seen: &mut Seen,
) -> Attempt {
    let Kept { mut sender, conn } = kept;
    let mut conn = Some(conn);
    let outcome = {
        let exchange = std::pin::pin!(async {
            let response = match poll_fn(|cx| sender.poll_ready(cx)).await {
                Ok(()) => sender.send_request(request).await,
                Err(e) => Err(e),
            };
            let response = match response {
                Ok(response) => response,
                Err(e) => {
                    let fail = exchange_failure(&e, "response", Failure::Protocol);
                    // Before any answer, a connection that ended is one the backend closed.
                    let stale = e.is_canceled() || e.is_closed() || fail.0 == Failure::Reset;
                    return Err(if stale { Attempt::Stale(fail) } else { Attempt::Failed(fail) });
                }
            };
            let close = response
                .headers()
                .get_all(CONNECTION)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))));
            let to_end = check(config, response, start, seen, Some(deadline)).await.map_err(Attempt::Failed)?;
            Ok(to_end && !close)
        });
        drive(&mut conn, exchange).await
    };
    match outcome {
        Ok(keep) => Attempt::Passed(conn.filter(|_| keep).map(|conn| Kept { sender, conn })),
        Err(attempt) => attempt,
    }
}

/// The probe's request: `GET path` with `Host`, `User-Agent`, `Accept` and, with
/// `close`, `Connection: close`.
fn request(path: &str, host: &str, close: bool) -> Result<http::Request<Empty<Bytes>>, Fail> {
    let uri =
        http::Uri::try_from(path).map_err(|_| Fail(Failure::Protocol, format!("`{path}` is not a request path")))?;
    let host =
        HeaderValue::from_str(host).map_err(|_| Fail(Failure::Protocol, format!("`{host}` is not a Host header")))?;
    let mut request = http::Request::new(Empty::new());
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.reserve(4);
    headers.insert(HOST, host);
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(request)
}

/// Classifies an error of the exchange by its root cause: what was not HTTP is `Protocol`,
/// a connection that ended (reset, closed, cut short) is `Reset`, anything else
/// `otherwise`. `what` says what was being read.
fn exchange_failure(e: &hyper::Error, what: &str, otherwise: Failure) -> Fail {
    // hyper wraps the cause of a request it never sent ("canceled") and of a failed body.
    let mut root = e;
    let mut io = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            root = h;
        } else if let Some(i) = s.downcast_ref::<io::Error>() {
            io = Some(i);
            break;
        }
        source = s.source();
    }
    match io {
        Some(io) if matches!(io.kind(), io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput) => {
            Fail(Failure::Protocol, format!("{what}: {io}"))
        }
        Some(io) => Fail(Failure::Reset, format!("{what}: {}", io_reason(io))),
        None if root.is_parse() => Fail(Failure::Protocol, format!("{what}: {root}")),
        None if root.is_incomplete_message() || root.is_closed() => Fail(Failure::Reset, format!("{what}: {root}")),
        None => Fail(otherwise, format!("{what}: {root}")),
    }
}

/// An I/O error in a few words: `connection refused` rather than `Connection refused (os
/// error 111)`.
fn io_reason(e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof => "closed early".to_owned(),
        kind @ (ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
        | AddrNotAvailable | AddrInUse | HostUnreachable | NetworkUnreachable | NetworkDown | TimedOut
        | PermissionDenied) => kind.to_string(),
        _ => e.to_string(),
    }
}

/// `expect_body` as quoted in a detail: its first [`MAX_QUOTE`] bytes (to a character
/// boundary).
fn quote(text: &str) -> &str {
    if text.len() <= MAX_QUOTE {
        return text;
    }
    let mut end = MAX_QUOTE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Looks for a needle in a body that arrives in pieces, within its first
/// [`MAX_PROBE_BODY`] bytes. Keeps only the last `needle.len() - 1` bytes seen, to find a
/// needle split between two pieces; nothing is allocated when the needle is in the first.
#[derive(Debug)]
struct BodySearch<'n> {
    finder: memmem::Finder<'n>,
    /// The end of the body so far, at most `needle.len() - 1` bytes (once a second piece
    /// has come).
    tail: Vec<u8>,
    /// Bytes of the body looked at.
    read: usize,
}

/// Where a [`BodySearch`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    /// The needle is in the body.
    Found,
    /// Not yet found: more of the body is needed.
    More,
    /// Not found in the first [`MAX_PROBE_BODY`] bytes.
    Exhausted,
}

impl<'n> BodySearch<'n> {
    fn new(needle: &'n [u8]) -> Self {
        Self { finder: memmem::Finder::new(needle), tail: Vec::new(), read: 0 }
    }

    fn push(&mut self, piece: &[u8]) -> Search {
        let piece = &piece[..piece.len().min(MAX_PROBE_BODY - self.read)];
        let keep = self.finder.needle().len().saturating_sub(1);
        if self.read > 0 && keep > 0 {
            // A needle that starts in the tail ends within the piece's first `keep` bytes.
            let old = self.tail.len();
            self.tail.extend_from_slice(&piece[..piece.len().min(keep)]);
            if self.finder.find(&self.tail).is_some() {
                return Search::Found;
            }
            self.tail.truncate(old);
        }
        if self.finder.find(piece).is_some() {
            return Search::Found;
        }
        self.read += piece.len();
        if self.read >= MAX_PROBE_BODY {
            return Search::Exhausted;
        }
        if keep > 0 {
            if piece.len() >= keep {
                self.tail.clear();
                self.tail.extend_from_slice(&piece[piece.len() - keep..]);
            } else {
                self.tail.extend_from_slice(piece);
                let excess = self.tail.len().saturating_sub(keep);
                self.tail.drain(..excess);
            }
        }
        Search::More
    }
}

async fn websocket(
    config: &ProbeConfig,
    addr: SocketAddr,
    host: &str,
    start: Instant,
    seen: &mut Seen,
) -> Result<(), Fail> {
    let request = upgrade_request(&config.path, host)?;
    // No TCP_NODELAY: each write (upgrade, ping, close) follows an answer that acknowledged
    // the previous one, so Nagle's algorithm never holds one back.
    let stream = connect(addr).await?;
    seen.stage = Stage::Answer;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE));
    let (mut ws, response) = match tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config)).await {
        Ok(done) => done,
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            seen.status = Some(status);
            seen.latency = start.elapsed();
            return Err(Fail(Failure::Status, format!("websocket upgrade answered {status}")));
        }
        Err(e) => return Err(ws_failure(&e, "websocket upgrade")),
    };
    seen.status = Some(response.status().as_u16());
    seen.latency = start.elapsed();
    seen.stage = Stage::Pong;
    ws.send(Message::Ping(Bytes::from_static(PING_PAYLOAD)))
        .await
        .map_err(|e| Fail(Failure::Protocol, format!("websocket ping: {e}")))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Pong(payload))) if payload == PING_PAYLOAD => break,
            Some(Ok(Message::Close(_))) | None => {
                return Err(Fail(Failure::Protocol, "websocket closed before answering the ping".to_owned()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Fail(Failure::Protocol, format!("websocket: {e}"))),
        }
    }
    // The close frame is a courtesy: sent if the socket takes it at once, never awaited.
    let _ = ws.close(None).now_or_never();
    Ok(())
}

/// The upgrade request: `GET path` on `ws://host`, with the `Host` header `host` as given.
fn upgrade_request(path: &str, host: &str) -> Result<tungstenite::handshake::client::Request, Fail> {
    let uri = http::Uri::builder()
        .scheme("ws")
        .authority(host)
        .path_and_query(path)
        .build()
        .map_err(|_| Fail(Failure::Protocol, format!("`ws://{host}{path}` is not a websocket URI")))?;
    let host =
        HeaderValue::from_str(host).map_err(|_| Fail(Failure::Protocol, format!("`{host}` is not a Host header")))?;
    let key = HeaderValue::try_from(generate_key())
        .map_err(|_| Fail(Failure::Protocol, "bad Sec-WebSocket-Key".to_owned()))?;
    let mut request = http::Request::new(());
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.reserve(6);
    headers.insert(HOST, host);
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(http::header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    headers.insert(http::header::SEC_WEBSOCKET_KEY, key);
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    Ok(request)
}

/// Classifies an error of the upgrade: a connection that ended before the answer is
/// `Reset`, anything else `Protocol`.
fn ws_failure(e: &tungstenite::Error, what: &str) -> Fail {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Io(io)
            if !matches!(io.kind(), io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput) =>
        {
            Fail(Failure::Reset, format!("{what}: {}", io_reason(io)))
        }
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Protocol(ProtocolError::HandshakeIncomplete) => {
            Fail(Failure::Reset, format!("{what}: closed before the answer"))
        }
        e => Fail(Failure::Protocol, format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` to a search in pieces cut at `cuts`.
    fn search_in(needle: &str, body: &[u8], cuts: &[usize]) -> Search {
        let mut search = BodySearch::new(needle.as_bytes());
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&body.len())) {
            match search.push(&body[from..to]) {
                Search::More => from = to,
                done => return done,
            }
        }
        Search::More
    }

    #[test]
    fn a_needle_is_found_however_the_body_is_cut() {
        let body = b"xxhello worldxx";
        for needle in ["hello world", "h", "xxhello worldxx", "d", "o w"] {
            for a in 0..=body.len() {
                for b in a..=body.len() {
                    assert_eq!(search_in(needle, body, &[a, b]), Search::Found, "{needle:?} cut at {a}, {b}");
                }
            }
        }
    }

    #[test]
    fn a_needle_split_over_many_small_pieces_is_found() {
        let body = b"..abcdefgh..";
        let cuts: Vec<usize> = (1..body.len()).collect();
        assert_eq!(search_in("abcdefgh", body, &cuts), Search::Found);
        assert_eq!(search_in("abcdefgX", body, &cuts), Search::More);
    }

    #[test]
    fn an_absent_needle_is_not_found() {
        let body = b"hello worl";
        for a in 0..=body.len() {
            assert_eq!(search_in("world", body, &[a]), Search::More);
        }
    }

    #[test]
    fn only_the_first_64_kib_are_searched() {
        let mut body = vec![b'x'; MAX_PROBE_BODY + 100];
        body[MAX_PROBE_BODY - 2..MAX_PROBE_BODY].copy_from_slice(b"ok");
        assert_eq!(search_in("ok", &body, &[1000, 40_000]), Search::Found);
        let mut body = vec![b'x'; MAX_PROBE_BODY + 100];
        body[MAX_PROBE_BODY - 1..MAX_PROBE_BODY + 1].copy_from_slice(b"ok");
        assert_eq!(search_in("ok", &body, &[1000, 40_000]), Search::Exhausted);
        assert_eq!(search_in("ok", &body, &[1000, MAX_PROBE_BODY]), Search::Exhausted);
    }

    #[test]
    fn long_quotes_are_cut_on_a_character_boundary() {
        let text = "é".repeat(100);
        let q = quote(&text);
        assert!(q.len() <= MAX_QUOTE && q.len() >= MAX_QUOTE - 1, "{}", q.len());
        assert_eq!(quote("ok"), "ok");
    }
}
