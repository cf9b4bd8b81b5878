//! HTTP/1.1 to backends: the handshake, and the idle keep-alive connections of every
//! backend ([`Idle`]), one exchange at a time on each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::ConnectError;
use crate::http::ClientBody;

/// An idle keep-alive connection.
#[derive(Debug)]
struct IdleConn {
    sender: SendRequest<ClientBody>,
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
    pub(super) async fn take(&self, backend: u64, idle_timeout: Duration) -> Option<SendRequest<ClientBody>> {
        loop {
            let mut idle = self.shard(backend).get_mut(&backend)?.pop()?;
            if idle.since.elapsed() >= idle_timeout || idle.sender.is_closed() {
                continue;
            }
            // The previous response was read to the end, so this resolves at once unless
            // the backend closed the connection meanwhile: looked at once without a timer
            // (one per request otherwise), and only if it is not ready yet given 50 ms.
            match std::future::poll_fn(|cx| Poll::Ready(idle.sender.poll_ready(cx))).await {
                Poll::Ready(Ok(())) => return Some(idle.sender),
                Poll::Ready(Err(_)) => continue,
                Poll::Pending => {}
            }
            if tokio::time::timeout(Duration::from_millis(50), idle.sender.ready()).await.is_ok_and(|r| r.is_ok()) {
                return Some(idle.sender);
            }
        }
    }

    /// Keeps a connection whose response was read to the end, if `backend` has fewer
    /// than `max` idle.
    pub(super) fn put(&self, backend: u64, sender: SendRequest<ClientBody>, max: usize) {
        let mut shard = self.shard(backend);
        let stack = shard.entry(backend).or_default();
        if stack.len() < max {
            stack.push(IdleConn { sender, since: Instant::now() });
        }
    }

    /// Closes every idle connection to `backend`.
    pub(super) fn forget(&self, backend: u64) -> usize {
        self.shard(backend).remove(&backend).map_or(0, |v| v.len())
    }
}

/// The HTTP/1.1 handshake on a connected socket (plain or TLS); the connection is driven
/// by a task of its own, upgrades (WebSocket) included.
pub(super) async fn handshake<S>(io: S, addr: SocketAddr) -> Result<SendRequest<ClientBody>, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
