//! Upstream connections, the shared core: what a request needs to reach a backend
//! ([`Target`]), the connect (TCP, PROXY header, TLS) with its timeout, the sender a
//! request is handed ([`Checkout`]), and the response body wrapper ([`UpstreamBody`]).
//! One file per protocol beside it: [`h1`] keeps idle keep-alive connections, one
//! exchange at a time on each; [`h2`] keeps one shared connection per backend whose
//! streams carry many exchanges at once.
//!
//! weir connects before it sends, rather than using a generic pooled client, so that a
//! failed connect (a TLS handshake included) leaves the request untouched and it can be
//! retried on another backend. Every exchange counts in its backend's figures the same
//! way whatever the protocol: in `in_flight` while it waits for its response head, then
//! in `active` while its response body streams ([`UpstreamBody`]); so an HTTP/2 stream
//! weighs what an HTTP/1.1 connection in use weighs, and least-request and
//! least-connections compare backends fairly across protocols.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use tokio::time::Instant;

use super::ClientBody;
use crate::config::{BackendConfig, UpstreamConfig, UpstreamProtocol};
use crate::net;
use crate::net::proxy_protocol::send;
use crate::state::{ActiveGuard, BackendLive};

pub(crate) mod h1;
pub(crate) mod h2;

/// The upstream connections of every backend kept for reuse, by [`BackendLive::key`]:
/// idle HTTP/1.1 connections and shared HTTP/2 ones. Kept here, beside the snapshot
/// rather than in it, so a backend that leaves its pool has its connections let go at
/// once ([`IdlePool::forget`]) whoever still holds an old snapshot.
#[derive(Debug, Default)]
pub(crate) struct IdlePool {
    h1: h1::Idle,
    h2: h2::Shared,
}

impl IdlePool {
    /// Lets go of every kept connection to `backend` (it left its pool): idle ones close,
    /// a shared HTTP/2 one closes once its open streams end. Returns how many.
    pub(crate) fn forget(&self, backend: u64) -> usize {
        self.h1.forget(backend) + self.h2.forget(backend)
    }
}

/// Where one request goes: the backend and how its pool speaks to it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// The backend.
    pub(crate) backend: &'a BackendConfig,
    /// The pool's protocol and TLS.
    pub(crate) upstream: &'a UpstreamConfig,
    /// The pool's connect timeout (TCP connect, PROXY header and TLS handshake together).
    pub(crate) connect_timeout: Duration,
    /// How long an idle keep-alive connection is kept (HTTP/1.1).
    pub(crate) idle_timeout: Duration,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The TCP connect failed or timed out.
    #[error(transparent)]
    Tcp(#[from] net::connect::ConnectError),
    /// The PROXY header could not be written.
    #[error("sending the PROXY header to {addr} failed: {source}")]
    Preface {
        /// The backend.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The pool's TLS settings could not be made (found at load; here only for a pool
    /// built without the one writer).
    #[error(transparent)]
    Settings(#[from] net::tls::client::SettingsError),
    /// The backend's name is not one a certificate can hold.
    #[error("TLS to {addr}: {reason}")]
    ServerName {
        /// The backend.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed (an untrusted certificate, a refused client certificate,
    /// a backend that does not speak TLS) or timed out.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls {
        /// The backend.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// An `h2` pool's backend did not pick HTTP/2 by ALPN.
    #[error("{addr} does not speak HTTP/2 over TLS (ALPN picked {picked}), but its pool's upstream protocol is \"h2\"")]
    Alpn {
        /// The backend.
        addr: SocketAddr,
        /// What it picked.
        picked: String,
    },
    /// The HTTP handshake failed.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The backend.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
    /// A new connection closed before it took the request (nothing was sent).
    #[error("the connection to {addr} closed before the request was sent: {reason}")]
    Closed {
        /// The backend.
        addr: SocketAddr,
        /// Why, as hyper saw it.
        reason: String,
    },
    /// Another request's connect to this backend, which this one waited for, failed.
    #[error("{0}")]
    Shared(String),
}

impl ConnectError {
    /// The health failure this is.
    pub(crate) fn failure(&self) -> crate::core::Failure {
        match self {
            ConnectError::Tcp(e) => e.failure(),
            _ => crate::core::Failure::Connect,
        }
    }
}

/// Where a request is sent: an HTTP/1.1 connection of its own (weir's client, or hyper's
/// for an upgrade), or a stream of a shared HTTP/2 connection.
#[derive(Debug)]
pub(crate) enum Sender {
    /// An HTTP/1.1 connection, the request's alone until its response is read.
    H1(Box<h1::Conn>),
    /// hyper's HTTP/1.1 client on a connection, for a request that asks for an upgrade
    /// (WebSocket): it serves that request alone.
    Upgrade(http1::SendRequest<ClientBody>),
    /// A handle on a backend's shared HTTP/2 connection.
    H2(http2::SendRequest<ClientBody>),
}

/// Why an exchange with a backend failed after its request was (maybe) sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Through hyper's client (HTTP/2, upgrades).
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// Through weir's HTTP/1.1 client.
    #[error(transparent)]
    H1(#[from] h1::Error),
    /// No response head within the pool's response timeout (hyper's client).
    #[error("no response head within the response timeout")]
    Timeout,
}

impl Error {
    /// The health failure this is: a response that is not HTTP is `Protocol`, anything
    /// else (a reset, a close, a TLS alert) `Reset`.
    pub(crate) fn failure(&self) -> crate::core::Failure {
        if self.is_timeout() {
            return crate::core::Failure::Timeout;
        }
        let parse = match self {
            Error::Hyper(e) => e.is_parse(),
            Error::H1(e) => e.is_parse(),
            Error::Timeout => false,
        };
        if parse { crate::core::Failure::Protocol } else { crate::core::Failure::Reset }
    }

    /// Whether no response head came within the response timeout.
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout | Error::H1(h1::Error::Timeout))
    }

    /// Whether it was the client's request body that failed.
    pub(crate) fn is_client(&self) -> bool {
        matches!(self, Error::H1(h1::Error::ClientBody(_)))
    }
}

/// A failed send: why, and the request if it may be sent again (nothing of it reached
/// the backend, or the reused connection had closed before any answer).
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) error: Error,
    pub(crate) request: Option<Request<ClientBody>>,
}

/// A response body as it comes from the backend.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "HTTP/1.1 is the common case; boxing it would cost an allocation per request"
)]
pub(crate) enum Source {
    /// hyper's (HTTP/2, or an upgrade's answer), with the handle that keeps its
    /// connection open.
    Hyper(Incoming, Sender),
    /// weir's HTTP/1.1 client's.
    H1(h1::Body),
}

/// A connection taken for one request.
#[derive(Debug)]
pub(crate) struct Checkout {
    pub(crate) sender: Sender,
    /// Whether it was open before (and so may have been closed by the backend since).
    pub(crate) reused: bool,
}

impl Checkout {
    /// Makes an HTTP/1.1 connection one hyper's client drives (for an upgrade).
    pub(crate) async fn for_upgrade(self) -> Result<Checkout, ConnectError> {
        match self.sender {
            Sender::H1(conn) => Ok(Checkout { sender: Sender::Upgrade(conn.into_hyper().await?), reused: self.reused }),
            sender => Ok(Checkout { sender, ..self }),
        }
    }

    /// Sends `req` and returns the response head (its body streams after), which must
    /// come by `deadline`, else [`Error::Timeout`]. A request that may be sent again
    /// comes back in the error.
    ///
    /// weir's HTTP/1.1 client keeps the deadline on its connection's timer (and the
    /// request path awaits [`h1::send`] itself, so that its future is not moved into
    /// this one's); hyper's clients get a timeout around them.
    pub(crate) async fn send(self, req: Request<ClientBody>, deadline: Instant) -> Result<Response<Source>, SendError> {
        let sent = match self.sender {
            Sender::H1(conn) => {
                return h1::send(conn, self.reused, req, deadline)
                    .await
                    .map(|res| res.map(Source::H1))
                    .map_err(SendError::from);
            }
            Sender::Upgrade(mut s) => match tokio::time::timeout_at(deadline, s.try_send_request(req)).await {
                Ok(Ok(res)) => Ok(res.map(|b| Source::Hyper(b, Sender::Upgrade(s)))),
                Ok(Err(e)) => Err(e),
                Err(_) => return Err(SendError { error: Error::Timeout, request: None }),
            },
            Sender::H2(mut s) => match tokio::time::timeout_at(deadline, s.try_send_request(req)).await {
                Ok(Ok(res)) => Ok(res.map(|b| Source::Hyper(b, Sender::H2(s)))),
                Ok(Err(e)) => Err(e),
                Err(_) => return Err(SendError { error: Error::Timeout, request: None }),
            },
        };
        sent.map_err(|mut e| SendError { request: e.take_message(), error: e.into_error().into() })
    }
}

impl From<h1::SendError> for SendError {
    fn from(e: h1::SendError) -> Self {
        SendError { error: e.error.into(), request: e.request }
    }
}

/// Takes a connection for one request to `target`: an idle HTTP/1.1 one or a new one,
/// or the backend's shared HTTP/2 one (opened if there is none). With a PROXY header to
/// send (`proxy`), always a new one that starts with it and serves this request alone:
/// such a connection names one client, so it is never shared.
pub(crate) async fn checkout(
    pool: &IdlePool,
    live: &BackendLive,
    target: Target<'_>,
    proxy: Option<&send::Header>,
) -> Result<Checkout, ConnectError> {
    if let Some(header) = proxy {
        return open(target, header.as_bytes()).await;
    }
    match target.upstream.protocol {
        UpstreamProtocol::Http1 => match pool.h1.take(live.key(), target.idle_timeout) {
            Some(conn) => Ok(Checkout { sender: Sender::H1(conn), reused: true }),
            None => open(target, &[]).await,
        },
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => pool.h2.checkout(live, target).await,
    }
}

/// A connection for a request that a reused connection could not take (it had closed):
/// a new HTTP/1.1 connection, or the backend's HTTP/2 connection replaced.
pub(crate) async fn reconnect(
    pool: &IdlePool,
    live: &BackendLive,
    target: Target<'_>,
    proxy: Option<&send::Header>,
) -> Result<Checkout, ConnectError> {
    if proxy.is_none() && target.upstream.protocol.is_h2() {
        pool.h2.replace(live.key());
        return pool.h2.checkout(live, target).await;
    }
    open(target, proxy.map_or(&[][..], send::Header::as_bytes)).await
}

/// Opens a new connection of the target's protocol whose first bytes are `preface` (a
/// PROXY header, or nothing). The whole connect (TCP, header, TLS) has the pool's
/// connect timeout; HTTP/2's handshake sends its preface without waiting for an answer.
///
/// Boxed: the connect's states (TCP, TLS and HTTP handshakes) take about 8 KB, which every
/// request's future would otherwise carry, on a kept connection too, and which hyper
/// copies whole when it spawns an HTTP/2 stream's task.
fn open<'a>(
    target: Target<'a>,
    preface: &'a [u8],
) -> Pin<Box<dyn Future<Output = Result<Checkout, ConnectError>> + Send + 'a>> {
    Box::pin(connect(target, preface))
}

/// [`open`], unboxed.
async fn connect(target: Target<'_>, preface: &[u8]) -> Result<Checkout, ConnectError> {
    let addr = target.backend.socket_addr;
    let h2 = target.upstream.protocol.is_h2();
    let mut stream = net::connect::connect(addr, target.connect_timeout).await?;
    let started = Instant::now();
    if !preface.is_empty() {
        use tokio::io::AsyncWriteExt;
        stream.write_all(preface).await.map_err(|source| ConnectError::Preface { addr, source })?;
    }
    let sender = match &target.upstream.tls {
        None if h2 => Sender::H2(h2::handshake(stream, addr).await?),
        None => Sender::H1(h1::Conn::new(h1::Io::Plain(stream), addr)),
        Some(tls) => {
            let settings = net::tls::client::settings(tls, target.upstream.protocol)?;
            let name = net::tls::client::server_name(tls, &target.backend.address)
                .map_err(|reason| ConnectError::ServerName { addr, reason })?;
            let left = target.connect_timeout.saturating_sub(started.elapsed());
            let stream = match tokio::time::timeout(left, net::tls::client::connect(stream, settings, name)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(ConnectError::Tls { addr, reason: crate::http::error_chain(&e) }),
                Err(_) => {
                    let reason = format!("no handshake within the connect timeout ({:?})", target.connect_timeout);
                    return Err(ConnectError::Tls { addr, reason });
                }
            };
            if h2 {
                match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Sender::H2(h2::handshake(stream, addr).await?),
                    other => {
                        let picked = other.map_or("nothing".to_owned(), |p| String::from_utf8_lossy(p).into_owned());
                        return Err(ConnectError::Alpn { addr, picked });
                    }
                }
            } else {
                Sender::H1(h1::Conn::new(h1::Io::Tls(Box::new(stream)), addr))
            }
        }
    };
    Ok(Checkout { sender, reused: false })
}

/// A response body from a backend. When it has been read to the end an HTTP/1.1
/// connection goes back on its backend's idle stack (an HTTP/2 stream just ends); if it
/// is dropped early the connection is closed (the stream reset).
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: Option<Source>,
    /// Where an HTTP/1.1 connection goes back to.
    pool: Arc<IdlePool>,
    /// Counts the exchange in `active` until the body is done or dropped.
    active: ActiveGuard,
    max_idle: usize,
    finished: bool,
}

impl UpstreamBody {
    pub(crate) fn new(inner: Source, pool: Arc<IdlePool>, live: Arc<BackendLive>, max_idle: usize) -> Self {
        Self { inner: Some(inner), pool, active: ActiveGuard::new(live), max_idle, finished: false }
    }

    fn release(&mut self) {
        let Some(Source::H1(body)) = self.inner.take() else { return };
        if self.max_idle == 0 || self.active.live().is_retired() {
            return;
        }
        if let Some(conn) = body.into_reusable() {
            self.pool.h1.put(self.active.live().key(), conn, self.max_idle);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let polled = match &mut self.inner {
            Some(Source::H1(b)) => b.poll_frame(cx).map_err(Error::from),
            Some(Source::Hyper(b, _)) => Pin::new(b).poll_frame(cx).map_err(Error::from),
            None => return Poll::Ready(None),
        };
        match &polled {
            Poll::Ready(None) => {
                self.finished = true;
                self.release();
            }
            Poll::Ready(Some(Err(e))) => {
                // Cut mid-response: the backend's fault, which its health evaluators hear
                // of, unless it was the client's request body that failed.
                let failure = (!e.is_client()).then(|| e.failure());
                self.inner = None;
                if let Some(failure) = failure {
                    self.active.live().exchange_failed(failure, None, 0);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.finished
            || match &self.inner {
                Some(Source::H1(b)) => b.is_end_stream(),
                Some(Source::Hyper(b, _)) => b.is_end_stream(),
                None => true,
            }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(Source::H1(b)) => b.size_hint(),
            Some(Source::Hyper(b, _)) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.is_end_stream() {
            self.release();
        }
    }
}
