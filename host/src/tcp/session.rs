//! One client connection of a tcp or tls-passthrough listener, from accept to close:
//! the PROXY header (when the listener accepts one from this source), the ClientHello
//! peek (tls-passthrough), the route, the placement (affinity, then balancer), the
//! connect (retried once on another eligible backend), the PROXY header to the backend
//! (when the pool sends one), and then the bytes, spliced both ways until both sides are
//! done, the connection idles past `idle_timeout_ms` or outlives `max_lifetime_ms`, or a
//! drain cuts it at the pool's `drain_deadline_ms`.
//!
//! While it is joined to its backend the connection counts as one of the backend's
//! `active` connections (what `least-connections` compares) and is registered where a
//! drain finds it; a stick entry its affinity plugin set is held as long as it lives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::route::route;
use crate::config::TunnelLimits;
use crate::config::{ListenerConfig, ListenerProtocol};
use crate::core::Protocol;
use crate::http::Context;
use crate::net::connect::{self, ConnectError};
use crate::net::listen::{ListenerStats, Slot, Stop, aborted};
use crate::net::peek::PeekError;
use crate::net::proxy_protocol::{self, expect::ProxyError, send};
use crate::net::sni;
use crate::net::tunnel::{self, TunnelEntry};
use crate::plugin::PickRequest;
use crate::state::{ActiveGuard, Placement, StickHold};

/// Why a connection was closed before (or instead of) reaching a backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The PROXY header expected from this source was missing or wrong, or a source not
    /// allowed to send one did.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// No ClientHello arrived in time, or what arrived is not one.
    #[error("no TLS ClientHello: {0}")]
    Hello(#[from] PeekError),
    /// The route names a pool the snapshot lacks (a reload in between).
    #[error("no pool `{0}`")]
    NoPool(String),
    /// The pool has no backend that can take the connection.
    #[error("pool `{0}` has no backend to take the connection")]
    NoBackend(String),
    /// The balancer failed and the pool's policy is `reject`.
    #[error("pool `{0}`: the balancer failed and on_plugin_error is reject")]
    Rejected(String),
    /// No backend could be reached.
    #[error("pool `{pool}`: {source}")]
    Connect {
        /// The pool.
        pool: String,
        /// The last connect's failure.
        source: ConnectError,
    },
    /// Writing the PROXY header to the backend failed.
    #[error("sending the PROXY header to {backend}: {source}")]
    SendProxy {
        /// The backend.
        backend: String,
        /// Why.
        source: std::io::Error,
    },
    /// The tunnel ended with an error (a reset, a limit).
    #[error("{0}")]
    Tunnel(std::io::Error),
}

/// Serves one accepted connection; `slot` is its place in the listener's
/// `max_connections`, held until it closes; `stats` are its listener's counters. Ends
/// when the server aborts: while the connection is being opened, by the stop signal;
/// once it is joined to its backend, by the cut the server then orders every registered
/// tunnel ([`tunnel::Registry::cut_all`]). A joined connection's task does not watch the
/// stop signal, which would cost a poll (and the signal's lock) at every wake-up of a
/// connection that lives for hours.
pub(crate) async fn run(
    client: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    config: Arc<ListenerConfig>,
    stats: Arc<ListenerStats>,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<Stop>,
) {
    let _held = (ctx.connections.track(), slot);
    let listener = &config.name;
    let opened = tokio::select! {
        opened = open(client, peer, &config, &ctx) => opened,
        () = aborted(&mut stop) => return,
    };
    let done = match opened {
        // The registration came first: an abort sent since is seen here, one sent later
        // reaches the tunnel through its drain order.
        Ok(_) if *stop.borrow() == Stop::Abort => return,
        Ok(mut joined) => {
            drop(stop);
            tunnel::join_opaque(&mut joined.client, &mut joined.backend, joined.limits, &joined.entry.order)
                .await
                .map_err(SessionError::Tunnel)
        }
        Err(e) => Err(e),
    };
    match done {
        Ok(()) | Err(SessionError::Tunnel(_)) => {}
        Err(e @ (SessionError::Proxy(_) | SessionError::Hello(_))) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = %listener, %peer, error = %e, "connection refused");
        }
        Err(e) => {
            stats.unserved.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %listener, %peer, error = %e, "connection closed");
        }
    }
}

/// A client joined to its backend, with what the connection holds while it lives.
struct Joined {
    client: TcpStream,
    backend: TcpStream,
    limits: TunnelLimits,
    /// Where a drain (or the server's abort) finds the connection; unregisters on drop.
    entry: TunnelEntry,
    /// One of the backend's `active` connections while it lives.
    _active: ActiveGuard,
    /// The stick entry the affinity plugin set, held as long as the connection lives.
    _stick: Option<StickHold>,
}

/// Opens the connection: the PROXY header and ClientHello peek, the route, the
/// placement, the connect (retried once), the PROXY header to the backend; then registers
/// it as a tunnel of its backend.
async fn open(
    mut client: TcpStream,
    peer: SocketAddr,
    config: &ListenerConfig,
    ctx: &Context,
) -> Result<Joined, SessionError> {
    let from =
        proxy_protocol::client_of(&mut client, peer, config.proxy_protocol.as_ref(), config.peek_timeout).await?;
    let (protocol, sni, alpn) = match config.protocol {
        ListenerProtocol::TlsPassthrough => {
            // Peeked, not read: the ClientHello reaches the backend untouched.
            let hello = sni::peek_sni(&client, config.peek_timeout, sni::PEEK_MAX).await?;
            (
                Protocol::TlsPassthrough,
                hello.sni.map(Arc::from),
                (!hello.alpn.is_empty()).then(|| Arc::from(hello.alpn)),
            )
        }
        _ => (Protocol::Tcp, None, None),
    };
    let (pool, limits) = {
        let snapshot = ctx.snapshot.load();
        let name = route(config, sni.as_deref());
        match snapshot.pools.get(name) {
            Some(pool) => (pool.clone(), config.tunnels),
            None => return Err(SessionError::NoPool(name.to_owned())),
        }
    };
    let mut pick = PickRequest { protocol, client: from.addr, sni, alpn, client_subject: None, head: None };
    let mut avoid = None;
    let mut attempt = 0;
    let (id, mut backend) = loop {
        let (returned, placement) = pool.place(pick, avoid);
        pick = returned;
        let id = match placement {
            Placement::Backend(id) => id,
            Placement::NoBackend => return Err(SessionError::NoBackend(pool.view.name.to_string())),
            Placement::Rejected => return Err(SessionError::Rejected(pool.view.name.to_string())),
        };
        let member = &pool.view.members[id as usize];
        let started = Instant::now();
        match connect::connect(member.config.socket_addr, pool.config.connect_timeout).await {
            Ok(stream) => {
                let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                member.live.observe_latency(micros);
                member.live.exchange_succeeded(None, micros);
                break (id, stream);
            }
            Err(e) => {
                member.live.connect_failures.fetch_add(1, Ordering::Relaxed);
                member.live.exchange_failed(e.failure(), None, 0);
                tracing::warn!(pool = %pool.view.name, backend = %member.config.address, attempt, error = %e, "connect failed");
                if attempt == 0 && pool.view.eligible.len() > 1 {
                    attempt += 1;
                    avoid = Some(id);
                    continue;
                }
                return Err(SessionError::Connect { pool: pool.view.name.to_string(), source: e });
            }
        }
    };
    let member = &pool.view.members[id as usize];
    if let Some(version) = pool.config.send_proxy {
        // To the backend, the client is who weir took it for, and the address it
        // connected to is the one it asked for (behind a proxy, the one its header named).
        let to = match from.destination {
            Some(to) => to,
            None => client.local_addr().map_err(SessionError::Tunnel)?,
        };
        let header = send::encode(version.into(), from.addr, to);
        backend
            .write_all(header.as_bytes())
            .await
            .map_err(|source| SessionError::SendProxy { backend: member.config.address.clone(), source })?;
    }
    let live = member.live.clone();
    let active = ActiveGuard::new(live.clone());
    // The backend is settled: let the affinity plugin pin the client to it. There is no
    // response to carry a header, so only what it sticks (a stick table entry) counts,
    // held for as long as the connection lives.
    let stick = pool.bind(pick, id).1.hold;
    let entry = ctx.tunnels.register(&live);
    Ok(Joined { client, backend, limits, entry, _active: active, _stick: stick })
}
