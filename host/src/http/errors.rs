//! Every response weir makes itself: a [`ProxyError`] says what went wrong and where it
//! came from ([`Origin`]), and the status, the one-line `text/plain` body and the log
//! fields all derive from it (DESIGN convention 7).
//!
//! A request head hyper cannot parse (malformed, too large) never reaches weir's handler:
//! hyper answers it itself, with an empty body, and closes. [`ClientIo`] sits under hyper
//! on each client connection and turns those answers into weir's own, so they too carry
//! the one-line body, while hyper keeps enforcing the limits exactly as configured.
//! [`ClientIo`] also reads a connection's first bytes to tell HTTP/2's preface from
//! HTTP/1.1 ([`ClientIo::sniff`]); on HTTP/2 it rewrites nothing (hyper's h2 answers a
//! bad request with a stream reset, never with an HTTP/1 head).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ProxyBody;
use super::upstream::ConnectError;
use crate::core::Origin;

/// A failure weir answers itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The request's `Host` is missing, repeated or malformed, or its target's authority
    /// is (RFC 9112 §3.2).
    #[error(transparent)]
    Host(#[from] HostError),
    /// weir lost track of the request (a bug; never expected).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The route names a pool the snapshot does not have.
    #[error("pool `{0}` is not configured")]
    NoPool(String),
    /// No backend of the pool can take the request.
    #[error("no eligible backend in pool `{0}`")]
    NoBackend(String),
    /// The balancer failed and the pool's policy is `reject`.
    #[error("the balancer of pool `{0}` failed and on_plugin_error is \"reject\"")]
    Rejected(String),
    /// Connecting failed on every backend tried.
    #[error("cannot connect to a backend of pool `{pool}`: {source}")]
    Connect {
        /// The pool.
        pool: String,
        /// The last failure.
        source: ConnectError,
    },
    /// The request head cannot be parsed (answered for hyper by [`ClientIo`]).
    #[error("the request head is malformed")]
    MalformedHead,
    /// The request head is over the listener's limits (answered for hyper by
    /// [`ClientIo`]).
    #[error(
        "the request head is larger than max_header_bytes ({max_bytes}) or has more than max_headers ({max_headers}) headers"
    )]
    HeadTooLarge {
        /// The listener's `max_header_bytes`.
        max_bytes: usize,
        /// The listener's `max_headers`.
        max_headers: usize,
    },
    /// The request target is longer than hyper takes (answered for hyper by [`ClientIo`]).
    #[error("the request target is too long")]
    TargetTooLong,
    /// An HTTP/2 `CONNECT` that is not a WebSocket's extended CONNECT (RFC 8441): weir
    /// opens no TCP tunnels for clients.
    #[error("CONNECT is only for WebSockets (:protocol = websocket) here")]
    PlainConnect,
    /// The client's request body could not be read (malformed, or cut short).
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
    /// The backend failed after the request was sent (with hyper's reason and what
    /// caused it: a reset, a TLS alert).
    #[error("backend {backend} failed: {}", super::error_chain(source))]
    Upstream {
        /// The backend's address.
        backend: String,
        /// Why.
        source: super::upstream::Error,
    },
    /// A WebSocket upgrade to a pool that speaks HTTP/2 to its backends (HTTP/1.1's
    /// Upgrade does not exist there; RFC 8441 to backends is not built).
    #[error("pool `{pool}` speaks HTTP/2 to its backends; a WebSocket needs upstream.protocol = \"http1\"")]
    UpgradeOverH2 {
        /// The pool.
        pool: String,
    },
    /// The backend did not answer in time.
    #[error("backend {backend} did not answer in {after:?}")]
    Timeout {
        /// The backend's address.
        backend: String,
        /// The response timeout.
        after: std::time::Duration,
    },
}

/// What is wrong with a request's host (RFC 9112 §3.2, RFC 9110 §4.2).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostError {
    /// An HTTP/1.1 request without `Host`.
    #[error("the request has no Host header")]
    Missing,
    /// More than one `Host` line.
    #[error("the request has {count} Host headers; one is allowed")]
    Repeated {
        /// How many.
        count: usize,
    },
    /// A `Host` that is not `host[:port]`.
    #[error("the Host header {value:?} is not host[:port]")]
    Malformed {
        /// The value as received (shortened).
        value: String,
    },
    /// An absolute-form target whose authority is not `host[:port]` (userinfo included).
    #[error("the request target's authority {authority:?} is not host[:port]")]
    Target {
        /// The authority as received (shortened).
        authority: String,
    },
}

impl ProxyError {
    /// Whose fault it is.
    pub(crate) fn origin(&self) -> Origin {
        match self {
            ProxyError::Host(_)
            | ProxyError::ClientBody(_)
            | ProxyError::MalformedHead
            | ProxyError::HeadTooLarge { .. }
            | ProxyError::TargetTooLong
            | ProxyError::PlainConnect => Origin::Client,
            // weir itself, as configured, could not serve it.
            ProxyError::NoPool(_)
            | ProxyError::NoBackend(_)
            | ProxyError::Internal(_)
            | ProxyError::UpgradeOverH2 { .. } => Origin::Config,
            ProxyError::Rejected(_) => Origin::Plugin,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } | ProxyError::Timeout { .. } => Origin::Upstream,
        }
    }

    /// The status the client gets.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::Host(_) | ProxyError::ClientBody(_) | ProxyError::MalformedHead => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::TargetTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::PlainConnect => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::UpgradeOverH2 { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::NoPool(_) | ProxyError::NoBackend(_) | ProxyError::Rejected(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response: the status and `weir: <what went wrong>` on one line. Logged with
    /// its origin.
    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let origin = self.origin();
        self.log();
        let mut res = Response::new(ProxyBody::Local(Full::new(Bytes::from(self.body()))));
        *res.status_mut() = status;
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if origin == Origin::Client {
            // What else the client sends on this connection cannot be trusted either.
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }

    /// The one-line body: `weir: <what went wrong>`.
    fn body(&self) -> String {
        format!("weir: {self}\n")
    }

    /// Logs the failure with its origin. A backend's failure is the operator's business;
    /// the others are the client's, or were logged where they arose (plugins), or would
    /// flood the log (no backend).
    fn log(&self) {
        let (status, origin) = (self.status().as_u16(), self.origin());
        match origin {
            Origin::Upstream => tracing::warn!(origin = %origin, status, error = %self, "request failed"),
            _ => tracing::debug!(origin = %origin, status, error = %self, "request failed"),
        }
    }
}

/// The longest error response hyper writes by itself (status line, `connection`,
/// `content-length: 0` and `date`); anything longer is not one.
const BARE_MAX: usize = 256;

/// HTTP/2's connection preface (RFC 9113 §3.4): a client that starts with it speaks h2.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which HTTP a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// Anything but the HTTP/2 preface (HTTP/1.x, or garbage for hyper's h1 to refuse).
    Http1,
    /// The HTTP/2 connection preface (h2c with prior knowledge).
    Http2,
}

/// A client connection as hyper's server sees it. Bytes pass through untouched, except
/// the bare error responses hyper writes by itself for a request head it cannot parse
/// (400, 414, 431, empty bodies), which are written as weir's own instead: the same
/// status, a one-line `text/plain` body, `connection: close`.
///
/// A backend's own error can look the same byte for byte; the connection's service
/// counts each such response it hands hyper in `lookalikes` ([`looks_bare`]), and the
/// next that many lookalike writes pass untouched. hyper writes its own error only when
/// no response is in progress, so it never comes before a backend's that is counted.
#[derive(Debug)]
pub(crate) struct ClientIo<S> {
    inner: S,
    /// The listener's limits, for the 431 body.
    limits: (usize, usize),
    /// Backend responses handed to hyper that will look like its own errors.
    lookalikes: Arc<AtomicUsize>,
    /// weir's answer being written in place of hyper's: the bytes, how many are written,
    /// and how many of hyper's bytes it stands for.
    replacing: Option<(Bytes, usize, usize)>,
    /// The connection's first bytes, read by [`ClientIo::sniff`] and handed to hyper
    /// before anything else: the bytes, how many there are, how many were handed on.
    first: ([u8; PREFACE.len()], u8, u8),
    /// The connection speaks HTTP/2: nothing is rewritten.
    h2: bool,
    /// Bytes read before hyper took the connection over from weir's own HTTP/1.1
    /// server, handed to hyper (after `first`) before anything else.
    replay: Bytes,
}

impl<S> ClientIo<S> {
    /// Wraps a client connection of a listener with these `max_header_bytes` and
    /// `max_headers`; `lookalikes` is shared with the connection's service.
    pub(crate) fn new(inner: S, max_header_bytes: usize, max_headers: usize, lookalikes: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            limits: (max_header_bytes, max_headers),
            lookalikes,
            replacing: None,
            first: ([0; PREFACE.len()], 0, 0),
            h2: false,
            replay: Bytes::new(),
        }
    }

    /// [`ClientIo::new`] for a connection whose first bytes were read already (by weir's
    /// own HTTP/1.1 server): hyper reads `replay` first.
    pub(crate) fn replaying(
        inner: S,
        replay: Bytes,
        max_header_bytes: usize,
        max_headers: usize,
        lookalikes: Arc<AtomicUsize>,
    ) -> Self {
        Self { replay, ..Self::new(inner, max_header_bytes, max_headers, lookalikes) }
    }

    /// The connection itself, and what was read of it by [`ClientIo::sniff`] that hyper
    /// has not taken (nothing, once hyper has read a request head).
    pub(crate) fn into_inner(self) -> (S, Bytes) {
        let (first, len, taken) = self.first;
        let first = &first[usize::from(taken)..usize::from(len)];
        let unread = match (first.is_empty(), self.replay.is_empty()) {
            (true, _) => self.replay,
            (false, true) => Bytes::copy_from_slice(first),
            (false, false) => [first, &self.replay[..]].concat().into(),
        };
        (self.inner, unread)
    }

    /// Looks at what hyper writes; if it is one of hyper's bare errors, arranges for
    /// weir's answer to be written instead.
    fn inspect(&mut self, data: &[u8]) {
        if self.h2 {
            return;
        }
        let Some((version, status, date)) = bare_error(data) else { return };
        if self.lookalikes.load(Ordering::Relaxed) > 0 {
            // A backend's own answer, counted by the service: pass it on as it is.
            self.lookalikes.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let error = match status {
            431 => ProxyError::HeadTooLarge { max_bytes: self.limits.0, max_headers: self.limits.1 },
            414 => ProxyError::TargetTooLong,
            _ => ProxyError::MalformedHead,
        };
        error.log();
        let body = error.body();
        let status = error.status();
        let mut text = format!(
            "{version} {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(date) = date {
            text.push_str(date);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.push_str(&body);
        self.replacing = Some((Bytes::from(text), 0, data.len()));
    }
}

impl<S: AsyncRead + Unpin> ClientIo<S> {
    /// Reads the connection's first bytes, as far as they agree with HTTP/2's preface (24
    /// bytes at most, no buffer allocated), and says which HTTP the client speaks. The
    /// bytes read are kept and handed to hyper first. A client that closes first is
    /// [`Sniffed::Http1`] with nothing read (hyper's h1 sees the end and closes quietly).
    pub(crate) async fn sniff(&mut self) -> io::Result<Sniffed> {
        use tokio::io::AsyncReadExt;
        let (first, len, _) = &mut self.first;
        let mut n = 0;
        while n < PREFACE.len() {
            let read = self.inner.read(&mut first[n..]).await?;
            if read == 0 {
                break;
            }
            n += read;
            if first[..n] != PREFACE[..n] {
                break;
            }
        }
        *len = n as u8;
        self.h2 = n == PREFACE.len() && first == PREFACE;
        Ok(if self.h2 { Sniffed::Http2 } else { Sniffed::Http1 })
    }
}

impl<S: AsyncWrite + Unpin> ClientIo<S> {
    /// Writes the replacement; when all of it is out, reports hyper's bytes as written.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((bytes, written, stands_for)) = &mut self.replacing else { return Poll::Ready(Ok(0)) };
        while *written < bytes.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        let n = *stands_for;
        self.replacing = None;
        Poll::Ready(Ok(n))
    }
}

/// Whether a write whose first non-empty slice is `first` can be one of hyper's bare
/// errors ([`bare_error`]): hyper writes a response head in one slice, so its status line
/// is there whole; a slice too short to hold it is given the benefit of the doubt.
fn may_be_bare(first: &[u8]) -> bool {
    first.starts_with(b"HTTP/1.") && first.get(9..12).is_none_or(|code| matches!(code, b"400" | b"414" | b"431"))
}

/// If `data` is exactly one response head as hyper writes it for an unparsable request
/// (`HTTP/1.x 400|414|431`, `content-length: 0`, nothing but `connection` and `date`
/// beside it, no body), its version, status and `date` line.
fn bare_error(data: &[u8]) -> Option<(&str, u16, Option<&str>)> {
    if data.len() > BARE_MAX || !data.starts_with(b"HTTP/1.") {
        return None;
    }
    let text = std::str::from_utf8(data).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = text.split("\r\n");
    let (version, rest) = lines.next()?.split_once(' ')?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0")
        || !matches!(status, 400 | 414 | 431)
        || rest.as_bytes().get(3) != Some(&b' ')
    {
        return None;
    }
    let (mut empty, mut date) = (false, None);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" if value.trim() == "0" => empty = true,
            "date" => date = Some(line),
            "connection" => {}
            _ => return None,
        }
    }
    empty.then_some((version, status, date))
}

/// Whether hyper will write this response of the service exactly as it writes its own
/// bare errors (see [`ClientIo`]): a 400, 414 or 431 from a backend with an empty body
/// and no header but `content-length`, `date` and `connection`.
pub(crate) fn looks_bare(res: &Response<ProxyBody>) -> bool {
    matches!(res.status().as_u16(), 400 | 414 | 431)
        && matches!(res.body(), ProxyBody::Upstream(_))
        && res.body().size_hint().exact() == Some(0)
        && res.headers().keys().all(|k| k == header::CONTENT_LENGTH || k == header::DATE || k == header::CONNECTION)
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (first, len, taken) = &mut this.first;
        if taken < len {
            let rest = &first[usize::from(*taken)..usize::from(*len)];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            *taken += n as u8;
            return Poll::Ready(Ok(()));
        }
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacing.is_none() {
            this.inspect(buf);
        }
        if this.replacing.is_some() {
            return this.poll_replacement(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacing.is_none() && !this.h2 {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            // Joined only when it may be one: every small response (most of them) would
            // otherwise be copied here (1,700 instructions a response, measured).
            if total <= BARE_MAX && bufs.iter().find(|b| !b.is_empty()).is_some_and(|b| may_be_bare(b)) {
                let mut joined = Vec::with_capacity(total);
                for b in bufs {
                    joined.extend_from_slice(b);
                }
                this.inspect(&joined);
            }
        }
        if this.replacing.is_some() {
            return this.poll_replacement(cx);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_heads_that_may_be_bare_errors_are_looked_at() {
        assert!(may_be_bare(b"HTTP/1.1 400 Bad Request\r\n"));
        assert!(may_be_bare(b"HTTP/1.0 431 Request Header Fields Too Large\r\n"));
        assert!(may_be_bare(b"HTTP/1.1 414 URI Too Long\r\n"));
        assert!(may_be_bare(b"HTTP/1.1 4"));
        assert!(!may_be_bare(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"));
        assert!(!may_be_bare(b"HTTP/1.1 404 Not Found\r\n"));
        assert!(!may_be_bare(b"ok"));
    }

    #[tokio::test]
    async fn the_preface_is_told_from_http1_and_every_byte_handed_back() {
        let mut h2 = PREFACE.to_vec();
        h2.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        let cases: [(&[u8], Sniffed); 6] = [
            (&h2, Sniffed::Http2),
            (PREFACE, Sniffed::Http2),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Sniffed::Http1),
            (b"PRI * HTTP/1.1\r\nHost: a\r\n\r\n", Sniffed::Http1),
            (b"PRI * HTTP/2.0\r\n", Sniffed::Http1),
            (b"", Sniffed::Http1),
        ];
        for (input, want) in cases {
            let reader = slow_reader(input);
            let mut io = ClientIo::new(tokio::io::join(reader, Vec::new()), 1024, 10, Arc::default());
            assert_eq!(io.sniff().await.unwrap(), want, "{input:?}");
            let mut all = Vec::new();
            io.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, input, "hyper reads every byte, the sniffed ones first");
        }
    }

    /// A reader that hands out its bytes three at a time, as a slow client sends them.
    fn slow_reader(bytes: &[u8]) -> impl AsyncRead + Unpin + use<> {
        let (mut w, r) = tokio::io::duplex(3);
        let bytes = bytes.to_vec();
        tokio::spawn(async move {
            for chunk in bytes.chunks(3) {
                let _ = w.write_all(chunk).await;
            }
        });
        r
    }

    #[tokio::test]
    async fn nothing_is_rewritten_on_http2() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        for (first, rewritten) in [(&PREFACE[..], false), (&b"GET /\r\n\r\n"[..], true)] {
            let mut io = ClientIo::new(tokio::io::join(first, Vec::new()), 1024, 10, Arc::default());
            io.sniff().await.unwrap();
            io.write_all(bare).await.unwrap();
            let written = io.into_inner().0.into_inner().1;
            assert_eq!(written != bare, rewritten, "{}", String::from_utf8_lossy(&written));
        }
    }

    #[test]
    fn only_hypers_bare_errors_are_recognised() {
        let date = "date: Thu, 03 Dec 2026 00:23:32 GMT";
        let bare = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n{date}\r\n\r\n"
        );
        assert_eq!(bare_error(bare.as_bytes()), Some(("HTTP/1.1", 431, Some(date))));
        let bad = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_error(bad.as_bytes()), Some(("HTTP/1.1", 400, None)));
        for not in [
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ncontent-type: text/plain\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore",
            "HTTP/1.1 400 Bad Request\r\n\r\n",
            "HTTP/1.1 4000 Bad Request\r\ncontent-length: 0\r\n\r\n",
            "HTTP/2.0 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert_eq!(bare_error(not.as_bytes()), None, "{not:?}");
        }
    }
}
