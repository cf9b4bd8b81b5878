//! Timed probes: tcp, http and websocket, each on a connection of its own (or, for the
//! http probes of a [`Session`], one kept per backend between probes), each within the
//! probe's `timeout` (connect included). A probe only reports what it saw
//! ([`ProbeResult`]); counting results into verdicts is the evaluators' job.
//!
//! This runs for every backend of every probed pool on every interval, so the success
//! path logs nothing and, for an http probe on a [`Session`]'s kept connection, allocates
//! nothing. The http probe speaks HTTP/1.1 itself on its socket (its request written
//! whole, the response parsed with httparse, the body decoded only as far as needed), with
//! no connection task: the connection (and its socket) is only read while a probe uses
//! it, and ends exactly when the probe does, timeout included.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::HeaderValue;
use http::header::{CONNECTION, HOST, USER_AGENT};
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let start = tokio::time::Instant::now();
    probe_by(tokio::time::sleep_until(start + config.timeout), start, config, addr, host).await
}

/// [`probe`] from `start` (now), cut short by `deadline`, a future that completes at
/// `start + config.timeout`.
async fn probe_by(
    deadline: impl Future<Output = ()>,
    start: tokio::time::Instant,
    config: &ProbeConfig,
    addr: SocketAddr,
    host: &str,
) -> ProbeResult {
    let addr = config.port.map_or(addr, |port| SocketAddr::new(addr.ip(), port));
    let start = start.into_std();
    let mut seen = Seen { status: None, latency: Duration::ZERO, stage: Stage::Connect };
    let run = async {
        match config.kind {
            ProbeKind::Tcp => tcp(addr, start, &mut seen).await,
            ProbeKind::Http => http(config, addr, host, start, &mut seen).await,
            ProbeKind::WebSocket => websocket(config, addr, host, start, &mut seen).await,
        }
    };
    let outcome = within(deadline, run).await;
    let (failure, detail) = match outcome {
        Some(Ok(())) => (None, String::new()),
        Some(Err(Fail(failure, detail))) => (Some(failure), detail),
        None => (Some(Failure::Timeout), seen.stage.timed_out(config.timeout)),
    };
    ProbeResult { failure, detail, status: seen.status, latency: seen.latency }
}

/// `run`, unless `deadline` completes first (`None`). The caller's deadline rather than a
/// timer made per probe (as `tokio::time::timeout` makes): a prober waits on its pool's
/// probe clock, which files the deadlines of a slot's probes once (BENCHMARKS.md, health).
async fn within<T>(deadline: impl Future<Output = ()>, run: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        done = run => Some(done),
        () = deadline => None,
    }
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
    let mut request = Vec::new();
    write_request(&mut request, &config.path, host, true)?;
    // No TCP_NODELAY: the request is one write on a fresh connection, which Nagle's
    // algorithm never holds back (a syscall saved per probe).
    let stream = connect(addr).await?;
    seen.stage = Stage::Answer;
    match exchange(&mut Conn::new(stream), &request, config, start, seen, None).await {
        Attempt::Passed(_) => Ok(()),
        Attempt::Stale(fail) | Attempt::Failed(fail) => Err(fail),
    }
}

/// Longest response head (status line and headers, 1xx heads included) a probe reads.
const MAX_HEAD: usize = 64 << 10;

/// Most headers a response head may have (hyper's default).
const MAX_HEADERS: usize = 100;

/// Longest chunk-size line, or trailer section, a chunked body may have.
const MAX_CHUNK_LINE: usize = 4 << 10;

/// A probe's HTTP/1.1 connection: the request is written whole, the response read into a
/// buffer of the connection's own and parsed in place (httparse), its body decoded only as
/// far as the probe needs. No task, no header map, no allocation per probe once the buffer
/// has grown to the responses' size.
struct Conn {
    stream: TcpStream,
    /// Bytes read; `buf[pos..]` are not consumed yet.
    buf: Vec<u8>,
    pos: usize,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("buffered", &(self.buf.len() - self.pos)).finish_non_exhaustive()
    }
}

/// Why reading the response stopped short.
enum ReadError {
    /// The backend closed the connection.
    Closed,
    /// The socket failed.
    Io(io::Error),
    /// What came is not HTTP/1.x (the detail says what).
    Protocol(String),
}

impl ReadError {
    /// As a probe's failure, `what` saying what was being read.
    fn fail(self, what: &str) -> Fail {
        match self {
            ReadError::Closed => Fail(Failure::Reset, format!("{what}: closed early")),
            ReadError::Io(e) if matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput) => {
                Fail(Failure::Protocol, format!("{what}: {e}"))
            }
            ReadError::Io(e) => Fail(Failure::Reset, format!("{what}: {}", io_reason(&e))),
            ReadError::Protocol(detail) => Fail(Failure::Protocol, format!("{what}: {detail}")),
        }
    }
}

/// How a response's body is delimited, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// This many bytes (`content-length`, or none at all).
    Length(u64),
    /// Chunked, at this point of its framing.
    Chunked(Chunk),
    /// Up to the end of the connection.
    Close,
    /// Read to its end.
    Done,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// At the CRLF that ends a chunk's data.
    DataEnd,
    /// In the trailer section, after the last chunk.
    Trailers,
}

/// What a probe needs of a response head.
#[derive(Debug)]
struct Head {
    status: u16,
    body: Body,
    /// Whether the connection may carry another request after this response (HTTP/1.1,
    /// no `Connection: close`, a body that does not end with the connection).
    reusable: bool,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Self { stream, buf: Vec::with_capacity(1 << 10), pos: 0 }
    }

    /// Whether a kept connection can carry a request: nothing came on it since the last
    /// response (no end of stream, no unasked bytes). Costs no syscall while tokio knows
    /// the socket has nothing to read.
    fn idle(&self) -> bool {
        self.pos == self.buf.len()
            && matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads more of the response into the buffer.
    async fn fill(&mut self) -> Result<(), ReadError> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.buf.capacity() - self.buf.len() < 512 && self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(self.buf.capacity().max(4 << 10));
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(ReadError::Closed),
            Ok(_) => Ok(()),
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// Reads the response head (skipping 1xx heads but 101). `Err(None)`: the connection
    /// ended before any byte of the answer.
    async fn head(&mut self) -> Result<Head, Option<ReadError>> {
        let mut answered = false;
        loop {
            // Nothing buffered (the usual start of an answer) is nothing to parse.
            let parsed = match &self.buf[self.pos..] {
                [] => None,
                bytes => parse_head(bytes).map_err(|e| Some(ReadError::Protocol(e)))?,
            };
            if let Some((len, head)) = parsed {
                self.pos += len;
                answered = true;
                match head {
                    Some(head) => return Ok(head),
                    None => continue, // 1xx
                }
            }
            if self.buf.len() - self.pos >= MAX_HEAD {
                return Err(Some(ReadError::Protocol(format!("head over {} KiB", MAX_HEAD >> 10))));
            }
            answered |= self.buf.len() > self.pos;
            match self.fill().await {
                Ok(()) => {}
                Err(ReadError::Closed) if !answered => return Err(None),
                Err(ReadError::Io(e)) if !answered && is_reset(&e) => return Err(None),
                Err(e) => return Err(Some(e)),
            }
        }
    }

    /// The next piece of the body, as a range of `self.buf` (consumed: valid until the
    /// next call); `None` at its end.
    async fn piece(&mut self, body: &mut Body) -> Result<Option<std::ops::Range<usize>>, ReadError> {
        loop {
            let available = self.buf.len() - self.pos;
            match body {
                Body::Done | Body::Length(0) => {
                    *body = Body::Done;
                    return Ok(None);
                }
                Body::Length(left) | Body::Chunked(Chunk::Data(left)) => {
                    if available == 0 {
                        self.fill().await?;
                        continue;
                    }
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(available);
                    *left -= n as u64;
                    if *body == Body::Chunked(Chunk::Data(0)) {
                        *body = Body::Chunked(Chunk::DataEnd);
                    }
                    self.pos += n;
                    return Ok(Some(self.pos - n..self.pos));
                }
                Body::Close => {
                    if available == 0 {
                        match self.fill().await {
                            Err(ReadError::Closed) => *body = Body::Done,
                            other => other?,
                        }
                        continue;
                    }
                    self.pos += available;
                    return Ok(Some(self.pos - available..self.pos));
                }
                Body::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&self.buf[self.pos..]) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        self.pos += len;
                        *body = Body::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                    }
                    Ok(httparse::Status::Partial) if available < MAX_CHUNK_LINE => self.fill().await?,
                    _ => return Err(ReadError::Protocol("invalid chunk size".to_owned())),
                },
                Body::Chunked(Chunk::DataEnd) => {
                    if available < 2 {
                        self.fill().await?;
                        continue;
                    }
                    if &self.buf[self.pos..self.pos + 2] != b"\r\n" {
                        return Err(ReadError::Protocol("chunk data not followed by CRLF".to_owned()));
                    }
                    self.pos += 2;
                    *body = Body::Chunked(Chunk::Size);
                }
                Body::Chunked(Chunk::Trailers) => match memchr::memmem::find(&self.buf[self.pos..], b"\r\n") {
                    // The empty line ends the body; a trailer is skipped.
                    Some(0) => {
                        self.pos += 2;
                        *body = Body::Done;
                    }
                    Some(at) => self.pos += at + 2,
                    None if available < MAX_CHUNK_LINE => self.fill().await?,
                    None => return Err(ReadError::Protocol("trailer line too long".to_owned())),
                },
            }
        }
    }
}

/// Parses a response head at the start of `bytes`: `None` if it is not complete yet,
/// else its length and what the probe needs of it (`None` for a 1xx head to skip).
/// The header slots are left uninitialised for httparse to fill (initialising 100 of them
/// was a tenth of a probe's instructions: BENCHMARKS.md, health).
fn parse_head(bytes: &[u8]) -> Result<Option<(usize, Option<Head>)>, String> {
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, bytes, &mut headers);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let status = response.code.unwrap_or(0);
    if (100..200).contains(&status) && status != 101 {
        return Ok(Some((len, None)));
    }
    let mut close = response.version != Some(1);
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            close |= h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only if it is the last coding.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for v in h.value.split(|&b| b == b',') {
                let v = std::str::from_utf8(v.trim_ascii())
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| "invalid content-length".to_owned())?;
                if length.is_some_and(|l| l != v) {
                    return Err("conflicting content-length".to_owned());
                }
                length = Some(v);
            }
        }
    }
    let body = match (status, chunked, length) {
        (101 | 204 | 304, _, _) => Body::Length(0),
        (_, Some(true), _) => Body::Chunked(Chunk::Size),
        (_, Some(false), _) | (_, None, None) => Body::Close,
        (_, None, Some(n)) => Body::Length(n),
    };
    let reusable = !close && status != 101 && body != Body::Close;
    Ok(Some((len, Some(Head { status, body, reusable }))))
}

/// Whether a socket error means the peer ended the connection.
fn is_reset(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected | UnexpectedEof)
}

/// How an exchange ended.
#[derive(Debug)]
enum Attempt {
    /// It passed; with `true`, the connection may carry the next probe.
    Passed(bool),
    /// The connection was closed before an answer: on a kept one, go again on a new one
    /// (on a new one, that is the failure).
    Stale(Fail),
    /// A real failure.
    Failed(Fail),
}

/// One request on `conn` and its response checked: its status, then (if asked) its body
/// for `expect_body`. With `to_end`, a response that passes also has the rest of its body
/// read, up to [`MAX_PROBE_BODY`] in all and until the deadline given, so that its
/// connection can carry the next probe: `Passed(true)` if it can (false: longer, slower,
/// a read that failed after the verdict, which does not change it, or a response that
/// closes the connection).
async fn exchange(
    conn: &mut Conn,
    request: &[u8],
    config: &ProbeConfig,
    start: Instant,
    seen: &mut Seen,
    to_end: Option<tokio::time::Instant>,
) -> Attempt {
    if let Err(e) = conn.stream.write_all(request).await {
        let fail = Fail(Failure::Reset, format!("request: {}", io_reason(&e)));
        return if is_reset(&e) { Attempt::Stale(fail) } else { Attempt::Failed(fail) };
    }
    let head = match conn.head().await {
        Ok(head) => head,
        Err(None) => return Attempt::Stale(Fail(Failure::Reset, "response: closed before the answer".to_owned())),
        Err(Some(e)) => return Attempt::Failed(e.fail("response")),
    };
    seen.status = Some(head.status);
    seen.latency = start.elapsed();
    if !config.expect_status.contains(head.status) {
        let fail = Fail(Failure::Status, format!("status {} is not in {}", head.status, config.expect_status));
        return Attempt::Failed(fail);
    }
    let mut body = head.body;
    let mut read = 0;
    if let Some(needle) = config.expect_body.as_deref() {
        seen.stage = Stage::Body;
        let mut search = BodySearch::new(needle.as_bytes());
        loop {
            let piece = match conn.piece(&mut body).await {
                Ok(Some(piece)) => piece,
                Ok(None) => {
                    return Attempt::Failed(Fail(Failure::Body, format!("body does not contain `{}`", quote(needle))));
                }
                Err(e) => return Attempt::Failed(e.fail("body")),
            };
            read += piece.len();
            match search.push(&conn.buf[piece]) {
                Search::Found => break,
                Search::More => {}
                Search::Exhausted => {
                    return Attempt::Failed(Fail(
                        Failure::Body,
                        format!("body does not contain `{}` in its first {} KiB", quote(needle), MAX_PROBE_BODY >> 10),
                    ));
                }
            }
        }
    }
    // The verdict is in: what follows only decides whether the connection is kept, and
    // ends by the probe's deadline (this timer is polled before the probe's own).
    let Some(deadline) = to_end else { return Attempt::Passed(false) };
    if !head.reusable {
        return Attempt::Passed(false);
    }
    let rest = async {
        loop {
            if let Body::Length(left) | Body::Chunked(Chunk::Data(left)) = body
                && left > MAX_PROBE_BODY.saturating_sub(read) as u64
            {
                return false;
            }
            match conn.piece(&mut body).await {
                Ok(Some(piece)) => {
                    read += piece.len();
                    if read > MAX_PROBE_BODY {
                        return false;
                    }
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        // Bytes past the response were not asked for: the connection is not trusted.
        if conn.pos != conn.buf.len() {
            return false;
        }
        // A buffer grown by a large response is not kept for the next probe.
        if conn.buf.capacity() > 16 << 10 {
            conn.buf = Vec::with_capacity(1 << 10);
            conn.pos = 0;
        }
        true
    };
    // Usually the rest is in the buffer already: the deadline's timer is only made when
    // it is not.
    let mut rest = std::pin::pin!(rest);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(rest.as_mut().poll(cx))).await;
    Attempt::Passed(match first {
        std::task::Poll::Ready(keep) => keep,
        std::task::Poll::Pending => tokio::time::timeout_at(deadline, rest).await.unwrap_or(false),
    })
}

/// A backend's http probes, one after another, on one connection kept open between them
/// (`reuse_connection`, as Envoy's health checker does by default): a probe is then one
/// write and one read on an established connection, with no handshake, no accept and no
/// TIME_WAIT. Any other probe (tcp, websocket, or http without `reuse_connection`) runs as
/// [`probe`] does, on a connection of its own.
///
/// The kept connection is not read between probes; a backend that closed it meanwhile is
/// found out when the next probe is about to use it (tokio has seen it readable), or when
/// it does, which then goes again once on a new connection, within the same timeout: a
/// closed idle connection is not a failure. Any failure, a response that says
/// `Connection: close` (or is HTTP/1.0, or ends with the connection), or a body over 64 KiB
/// drops the connection, so the next probe starts afresh. A connection weir closes
/// (dropped, or the session with it) is closed with a reset (SO_LINGER 0, as HAProxy's
/// checks do), which leaves no TIME_WAIT behind.
///
/// The request is built once and kept with the session, for as long as the path and host
/// stay the same.
#[derive(Debug, Default)]
pub struct Session {
    kept: Option<Conn>,
    request: Request,
}

/// A session's request, as bytes, and the path and host it was built for.
#[derive(Debug, Default)]
struct Request {
    path: String,
    host: String,
    bytes: Vec<u8>,
}

impl Request {
    /// The request for `path` and `host`, built if they changed.
    fn for_target(&mut self, path: &str, host: &str) -> Result<&[u8], Fail> {
        if self.bytes.is_empty() || self.path != path || self.host != host {
            self.bytes.clear();
            write_request(&mut self.bytes, path, host, false)?;
            path.clone_into(&mut self.path);
            host.clone_into(&mut self.host);
        }
        Ok(&self.bytes)
    }
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
        let start = tokio::time::Instant::now();
        self.probe_by(tokio::time::sleep_until(start + config.timeout), start, config, addr, host).await
    }

    /// [`Self::probe`] from `start` (now: the caller's reading of the clock, which the
    /// probe's latency counts from), cut short by `deadline`, a future that completes at
    /// `start + config.timeout` (a prober passes a wait on its pool's probe clock, so a
    /// probe makes no timer of its own).
    pub async fn probe_by(
        &mut self,
        deadline: impl Future<Output = ()>,
        start: tokio::time::Instant,
        config: &ProbeConfig,
        addr: SocketAddr,
        host: &str,
    ) -> ProbeResult {
        if config.kind != ProbeKind::Http || !config.reuse_connection {
            self.kept = None;
            return probe_by(deadline, start, config, addr, host).await;
        }
        let addr = config.port.map_or(addr, |port| SocketAddr::new(addr.ip(), port));
        // Reading the rest of a passed response ends by then too.
        let ends = start + config.timeout;
        let start = start.into_std();
        let mut seen = Seen { status: None, latency: Duration::ZERO, stage: Stage::Answer };
        let Self { kept, request } = self;
        let run = async {
            let request = request.for_target(&config.path, host)?;
            if let Some(mut conn) = kept.take().filter(Conn::idle) {
                match exchange(&mut conn, request, config, start, &mut seen, Some(ends)).await {
                    Attempt::Passed(keep) => {
                        *kept = keep.then_some(conn);
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
            let mut conn = Conn::new(stream);
            match exchange(&mut conn, request, config, start, &mut seen, Some(ends)).await {
                Attempt::Passed(keep) => {
                    *kept = keep.then_some(conn);
                    Ok(())
                }
                Attempt::Failed(fail) | Attempt::Stale(fail) => Err(fail),
            }
        };
        let outcome = within(deadline, run).await;
        let (failure, detail) = match outcome {
            Some(Ok(())) => (None, String::new()),
            Some(Err(Fail(failure, detail))) => (Some(failure), detail),
            None => (Some(Failure::Timeout), seen.stage.timed_out(config.timeout)),
        };
        if failure.is_some() {
            self.kept = None;
        }
        ProbeResult { failure, detail, status: seen.status, latency: seen.latency }
    }
}

/// Appends the probe's request to `out`: `GET path` with `Host`, `User-Agent`, `Accept`
/// and, with `close`, `Connection: close`. The path and host are checked as a request path
/// and a header value.
fn write_request(out: &mut Vec<u8>, path: &str, host: &str, close: bool) -> Result<(), Fail> {
    if http::Uri::try_from(path).is_err() {
        return Err(Fail(Failure::Protocol, format!("`{path}` is not a request path")));
    }
    if HeaderValue::from_str(host).is_err() {
        return Err(Fail(Failure::Protocol, format!("`{host}` is not a Host header")));
    }
    for part in [
        "GET ",
        path,
        " HTTP/1.1\r\nhost: ",
        host,
        "\r\nuser-agent: ",
        USER_AGENT_VALUE,
        "\r\naccept: */*\r\n",
        if close { "connection: close\r\n\r\n" } else { "\r\n" },
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    Ok(())
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
