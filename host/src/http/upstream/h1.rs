//! HTTP/1.1 to backends: the handshake, and the idle keep-alive connections of every
//! backend ([`Idle`]), one exchange at a time on each.
//!
//! A connection is driven by the task of the request that uses it, not by a task of its
//! own: [`Conn`] holds hyper's request sender beside the connection future ([`Driver`]),
//! and whoever waits on the connection (the send in `forward`, the response body in
//! `UpstreamBody`, a checkout) polls the driver first. With a task per connection, one
//! exchange crossed between the two tasks four or five times (the request handed over,
//! the response head handed back, the body wanted, then sent), each a wake-up through
//! the scheduler; driven in place, none does. An idle connection is polled by nobody
//! until it is checked out again, when a close by the backend meanwhile is read and the
//! connection dropped. A WebSocket upgrade hands its driver to a task of its own
//! ([`Conn::detach`]), which completes the upgrade and hands the socket to the tunnel.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::ConnectError;
use crate::http::ClientBody;

/// A connection's future: reads and writes its socket; ends when the connection closes
/// or is upgraded.
pub(crate) type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An HTTP/1.1 connection to a backend: the request sender and, unless handed to a task
/// of its own, the connection's driver.
pub(crate) struct Conn {
    sender: SendRequest<ClientBody>,
    driver: Option<Driver>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("sender", &self.sender).field("driven", &self.driver.is_some()).finish()
    }
}

impl Conn {
    /// Polls the driver, if this task drives the connection; once it ended (the
    /// connection closed or was upgraded) it is dropped.
    #[inline]
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = self.driver.as_mut()
            && driver.as_mut().poll(cx).is_ready()
        {
            self.driver = None;
        }
    }

    /// Sends `req` and waits for the response head, driving the connection meanwhile; a
    /// request the connection could not take (it had closed) comes back in the error.
    pub(crate) async fn try_send(
        &mut self,
        req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ClientBody>>> {
        // hyper queues the request at once; the future only waits for the answer.
        let mut response = std::pin::pin!(self.sender.try_send_request(req));
        std::future::poll_fn(|cx| {
            if let Some(driver) = self.driver.as_mut()
                && driver.as_mut().poll(cx).is_ready()
            {
                self.driver = None;
            }
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Hands the driver to a task of its own, for an exchange that may outlive the
    /// request's task (a WebSocket upgrade, which completes when the driver ends).
    pub(crate) fn detach(&mut self) {
        if let Some(driver) = self.driver.take() {
            tokio::spawn(driver);
        }
    }

    /// Whether the connection is closed (as far as it was last driven).
    pub(crate) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Ready for a request: drives the connection until hyper says it can take one, or
    /// it closed.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        self.drive(cx);
        match self.sender.poll_ready(cx) {
            Poll::Ready(r) => Poll::Ready(r.is_ok()),
            Poll::Pending if self.driver.is_none() => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An idle keep-alive connection.
#[derive(Debug)]
struct IdleConn {
    conn: Conn,
    since: Instant,
}

/// Shards of the idle stacks (a power of two).
const SHARDS: usize = 16;

/// The idle keep-alive connections of every backend, by key. Sharded, each shard locked
/// for one push or pop.
#[derive(Debug, Default)]
pub(crate) struct Idle {
    shards: [Mutex<HashMap<u64, Vec<IdleConn>>>; SHARDS],
}

impl Idle {
    fn shard(&self, backend: u64) -> MutexGuard<'_, HashMap<u64, Vec<IdleConn>>> {
        self.shards[backend as usize % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection to `backend` that is still open and ready, if there is one.
    pub(super) async fn take(&self, backend: u64, idle_timeout: Duration) -> Option<Conn> {
        loop {
            let mut idle = self.shard(backend).get_mut(&backend)?.pop()?;
            if idle.since.elapsed() >= idle_timeout || idle.conn.is_closed() {
                continue;
            }
            // The previous response was read to the end, so this resolves at once unless
            // the backend closed the connection meanwhile (driving it reads the close).
            let ready = std::future::poll_fn(|cx| idle.conn.poll_ready(cx));
            if tokio::time::timeout(Duration::from_millis(50), ready).await.unwrap_or(false) {
                return Some(idle.conn);
            }
        }
    }

    /// Keeps a connection whose response was read to the end, if `backend` has fewer
    /// than `max` idle.
    pub(super) fn put(&self, backend: u64, conn: Conn, max: usize) {
        let mut shard = self.shard(backend);
        let stack = shard.entry(backend).or_default();
        if stack.len() < max {
            stack.push(IdleConn { conn, since: Instant::now() });
        }
    }

    /// Closes every idle connection to `backend`.
    pub(super) fn forget(&self, backend: u64) -> usize {
        self.shard(backend).remove(&backend).map_or(0, |v| v.len())
    }
}

/// The HTTP/1.1 handshake on a connected socket (plain or TLS); the connection is driven
/// by whoever uses it ([`Conn`]), upgrades (WebSocket) included.
pub(super) async fn handshake<S>(io: S, addr: SocketAddr) -> Result<Conn, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    let driver: Driver = Box::pin(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Conn { sender, driver: Some(driver) })
}
