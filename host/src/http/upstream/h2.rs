//! HTTP/2 to backends (`h2` over TLS by ALPN, `h2c` with prior knowledge): one shared
//! connection per backend ([`Shared`]) whose streams carry every request sent to it.
//!
//! The first request to a backend opens the connection while the requests arriving
//! meanwhile wait for it (one connect, not a storm of them); from then on a request
//! takes a handle on it under one shard lock, with no I/O. A connection that closed (the
//! backend went away, sent GOAWAY, or stopped answering the keep-alive PINGs) is dropped
//! at the next checkout and replaced. Past the backend's `max_concurrent_streams`,
//! requests wait in hyper's queue for a stream (under the pool's response timeout):
//! weir does not open a second connection to the same backend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Checkout, ConnectError, Sender, Target};
use crate::http::ClientBody;
use crate::state::BackendLive;

/// Shards of the shared connections (a power of two).
const SHARDS: usize = 16;

/// A PING goes to a backend whose connection has been silent this long, and the
/// connection is dropped if the answer takes as long again: a backend that vanished
/// without closing is found without waiting for requests to time out.
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// The shared HTTP/2 connection of every backend, by key.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
}

/// One backend's connection, or the opening of one.
#[derive(Debug, Default)]
struct Entry {
    sender: Option<SendRequest<ClientBody>>,
    /// Held by the request that opens the connection; the others wait on it.
    opening: Arc<tokio::sync::Mutex<()>>,
    /// Connects begun.
    attempts: u64,
    /// Why the last one failed, if it did: the requests that waited for it fail with it
    /// rather than each trying again in turn.
    failed: Option<String>,
}

impl Shared {
    fn shard(&self, backend: u64) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.shards[backend as usize % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A stream on `backend`'s connection, opened first if it has none (or its last one
    /// closed).
    pub(super) async fn checkout(&self, live: &BackendLive, target: Target<'_>) -> Result<Checkout, ConnectError> {
        let backend = live.key();
        let (opening, seen) = {
            let mut shard = self.shard(backend);
            let entry = shard.entry(backend).or_default();
            if let Some(sender) = entry.open_sender() {
                return Ok(Checkout { sender: Sender::H2(sender), reused: true });
            }
            (entry.opening.clone(), entry.attempts)
        };
        let _opening = opening.lock().await;
        {
            let mut shard = self.shard(backend);
            let entry = shard.entry(backend).or_default();
            if let Some(sender) = entry.open_sender() {
                return Ok(Checkout { sender: Sender::H2(sender), reused: true });
            }
            if entry.attempts != seen
                && let Some(why) = &entry.failed
            {
                return Err(ConnectError::Shared(why.clone()));
            }
            entry.attempts += 1;
        }
        let result = super::open(target, &[]).await;
        // A backend that left its pool meanwhile keeps nothing (its entry is gone).
        if !live.is_retired() {
            let mut shard = self.shard(backend);
            let entry = shard.entry(backend).or_default();
            match &result {
                Ok(Checkout { sender: Sender::H2(sender), .. }) => {
                    entry.sender = Some(sender.clone());
                    entry.failed = None;
                }
                Err(e) => entry.failed = Some(e.to_string()),
                Ok(_) => {}
            }
        }
        result
    }

    /// Drops `backend`'s connection (a request it could not take), so the next checkout
    /// opens another. Its open streams finish on it.
    pub(super) fn replace(&self, backend: u64) {
        if let Some(entry) = self.shard(backend).get_mut(&backend) {
            entry.sender = None;
        }
    }

    /// Lets go of `backend`'s connection (it left its pool): it closes once its open
    /// streams end. Returns 1 if there was one.
    pub(super) fn forget(&self, backend: u64) -> usize {
        self.shard(backend).remove(&backend).map_or(0, |e| usize::from(e.sender.is_some()))
    }
}

impl Entry {
    /// A handle on the connection if it is open; a closed one is dropped.
    fn open_sender(&mut self) -> Option<SendRequest<ClientBody>> {
        match &self.sender {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                self.sender = None;
                None
            }
            None => None,
        }
    }
}

/// The HTTP/2 handshake on a connected socket (plain for `h2c`, TLS with ALPN `h2` for
/// `h2`): the preface and SETTINGS are written, not waited for. The connection is driven
/// by a task of its own until every handle on it is dropped and its streams have ended.
pub(super) async fn handshake<S>(io: S, addr: SocketAddr) -> Result<SendRequest<ClientBody>, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}
