//! Upstream HTTP/1.1 connections: the idle keep-alive connections of every backend
//! ([`IdlePool`]), the connect with its timeout, and the response body wrapper that hands a
//! connection back once its response has been read to the end.
//!
//! weir connects before it sends, rather than using a generic pooled client, so that a
//! failed connect leaves the request untouched and it can be retried on another backend,
//! and so that each connection in use is counted in its backend's `active` figure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::ClientBody;
use crate::net;
use crate::net::proxy_protocol::send;
use crate::state::{ActiveGuard, BackendLive};

/// An idle keep-alive connection.
#[derive(Debug)]
pub(crate) struct IdleConn {
    sender: SendRequest<ClientBody>,
    since: Instant,
}

/// Shards of the idle pool (a power of two).
const SHARDS: usize = 16;

/// The idle keep-alive connections of every backend, by [`BackendLive::key`]. Kept here,
/// beside the snapshot rather than in it, so a backend that leaves its pool has its idle
/// connections closed at once ([`IdlePool::forget`]) whoever still holds an old snapshot.
/// Sharded, each shard locked for one push or pop.
#[derive(Debug, Default)]
pub(crate) struct IdlePool {
    shards: [Mutex<HashMap<u64, Vec<IdleConn>>>; SHARDS],
}

impl IdlePool {
    fn shard(&self, backend: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<IdleConn>>> {
        self.shards[backend as usize % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pop(&self, backend: u64) -> Option<IdleConn> {
        self.shard(backend).get_mut(&backend)?.pop()
    }

    fn push(&self, backend: u64, conn: IdleConn, max: usize) {
        let mut shard = self.shard(backend);
        let stack = shard.entry(backend).or_default();
        if stack.len() < max {
            stack.push(conn);
        }
    }

    /// Closes every idle connection to `backend` (it left its pool).
    pub(crate) fn forget(&self, backend: u64) -> usize {
        let gone = self.shard(backend).remove(&backend);
        gone.map_or(0, |v| v.len())
    }
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
    /// The HTTP/1 handshake failed.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The backend.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
}

/// A connection taken for one request. While the request waits for its response head it
/// counts in the backend's `in_flight`; while the response body streams, in `active`
/// (see [`UpstreamBody`]), so one exchange never counts twice.
#[derive(Debug)]
pub(crate) struct Checkout {
    pub(crate) sender: SendRequest<ClientBody>,
    /// Whether it came from the idle stack (and so may have been closed by the backend).
    pub(crate) reused: bool,
}

/// Takes an idle connection to the backend, or opens a new one. With a PROXY header to
/// send (`proxy`), always a new one that starts with it: such a connection names one
/// client, so it is never shared.
pub(crate) async fn checkout(
    pool: &IdlePool,
    live: &BackendLive,
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    proxy: Option<&send::Header>,
) -> Result<Checkout, ConnectError> {
    if let Some(header) = proxy {
        return connect_with(addr, connect_timeout, header.as_bytes()).await;
    }
    loop {
        let Some(mut idle) = pool.pop(live.key()) else { break };
        if idle.since.elapsed() >= idle_timeout || idle.sender.is_closed() {
            continue;
        }
        // The previous response was read to the end, so this resolves at once unless the
        // backend closed the connection meanwhile.
        if tokio::time::timeout(Duration::from_millis(50), idle.sender.ready()).await.is_ok_and(|r| r.is_ok()) {
            return Ok(Checkout { sender: idle.sender, reused: true });
        }
    }
    connect(addr, connect_timeout).await
}

/// Opens a new connection.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Checkout, ConnectError> {
    connect_with(addr, timeout, &[]).await
}

/// Opens a new connection whose first bytes are `preface` (a PROXY header, or nothing).
async fn connect_with(addr: SocketAddr, timeout: Duration, preface: &[u8]) -> Result<Checkout, ConnectError> {
    let mut stream = net::connect::connect(addr, timeout).await?;
    if !preface.is_empty() {
        use tokio::io::AsyncWriteExt;
        stream.write_all(preface).await.map_err(|source| ConnectError::Preface { addr, source })?;
    }
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Checkout { sender, reused: false })
}

impl ConnectError {
    /// The health failure this is.
    pub(crate) fn failure(&self) -> crate::core::Failure {
        match self {
            ConnectError::Tcp(e) => e.failure(),
            ConnectError::Handshake { .. } | ConnectError::Preface { .. } => crate::core::Failure::Connect,
        }
    }
}

/// A response body from a backend. When it has been read to the end its connection goes
/// back on the backend's idle stack; if it is dropped early the connection is closed.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: Incoming,
    conn: Option<Checkout>,
    /// Where the connection goes back to.
    pool: Arc<IdlePool>,
    /// Counts the connection in `active` until the body is done or dropped.
    active: ActiveGuard,
    max_idle: usize,
    finished: bool,
}

impl UpstreamBody {
    pub(crate) fn new(
        inner: Incoming,
        conn: Checkout,
        pool: Arc<IdlePool>,
        live: Arc<BackendLive>,
        max_idle: usize,
    ) -> Self {
        Self { inner, conn: Some(conn), pool, active: ActiveGuard::new(live), max_idle, finished: false }
    }

    fn release(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.max_idle == 0 || conn.sender.is_closed() || self.active.live().is_retired() {
            return;
        }
        let idle = IdleConn { sender: conn.sender, since: Instant::now() };
        self.pool.push(self.active.live().key(), idle, self.max_idle);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                self.finished = true;
                self.release();
            }
            Poll::Ready(Some(Err(_))) => {
                // Cut mid-response: the backend's fault, which its health evaluators hear of.
                self.conn = None;
                self.active.live().exchange_failed(crate::core::Failure::Reset, None, 0);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.finished || self.inner.is_end_stream() {
            self.release();
        }
    }
}
