//! The HTTP/1.1 server side: one task per listener accepts, one task per client
//! connection (after its TLS handshake, on a TLS listener) serves it with hyper, and [`handle`] takes each request from routing to
//! the response.
//!
//! A listener's settings (routes, timeouts, limits) are read from the current snapshot:
//! routes per request, so a reload changes them at once; hyper's limits per connection,
//! so they apply to connections accepted after the reload. Every connection task watches
//! the server's [`Stop`]: on `Graceful` it lets the request in flight finish and closes
//! (hyper's graceful shutdown), on `Abort` it drops the connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::errors::{ClientIo, ProxyError, looks_bare};
use super::forward::{Exchange, Failure, forward};
use super::headers::{check_host, is_websocket_upgrade, prepare_upstream_head};
use super::route::route;
use super::{ClientBody, ClientFault, Context, ProxyBody};
use crate::config::ListenerConfig;
use crate::core::Protocol;
use crate::net::listen::{ListenerStats, Slot, Stop};
use crate::net::proxy_protocol;
use crate::net::tls::{Acceptor, TlsInfo};
use crate::plugin::PickRequest;
use crate::state::Placement;

/// Serves one accepted client connection of an http listener with hyper until it
/// closes or the server aborts; `slot` is its place in the listener's `max_connections`.
/// On a TLS listener (`tls`) the handshake runs here, after the PROXY header and under
/// the listener's handshake timeout; a connection whose handshake fails or times out is
/// closed and counted in the listener's `refused`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    config: Arc<ListenerConfig>,
    stats: Arc<ListenerStats>,
    ctx: Arc<Context>,
    stop: watch::Receiver<Stop>,
    tls: Option<Arc<Acceptor>>,
) {
    let _open = ctx.connections.track();
    let mut stream = stream;
    let from =
        match proxy_protocol::client_of(&mut stream, peer, config.proxy_protocol.as_ref(), config.peek_timeout).await {
            Ok(from) => from,
            Err(e) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = %config.name, %peer, error = %e, "connection refused");
                return;
            }
        };
    // The address the client connected to (or, behind a proxy, asked for), named in a
    // PROXY header weir sends a backend.
    let Some(local) = from.destination.or_else(|| stream.local_addr().ok()) else { return };
    // The client as plugins, stick tables and X-Forwarded-For see it.
    let peer = from.addr;
    let Some(tls) = tls else {
        return serve(stream, Client { peer, local, tls: None }, slot, &config, ctx, stop).await;
    };
    match tls.accept(stream).await {
        Ok((stream, info)) => {
            serve(stream, Client { peer, local, tls: Some(Arc::new(info)) }, slot, &config, ctx, stop).await
        }
        Err(e) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = %config.name, %peer, error = %e, "TLS handshake failed");
        }
    }
}

/// Who a connection serves: the client, the address it reached, and what its TLS
/// handshake learnt (none in clear text).
#[derive(Clone)]
struct Client {
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<Arc<TlsInfo>>,
}

/// Serves a connection (clear or TLS, whatever the stream) with hyper.
async fn serve<S>(
    stream: S,
    client: Client,
    slot: Slot,
    config: &ListenerConfig,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<Stop>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slot = Arc::new(slot);
    let peer = client.peer;
    let name: Arc<str> = Arc::from(config.name.as_str());
    let builder = builder(config);
    let lookalikes = Arc::new(AtomicUsize::new(0));
    let io = ClientIo::new(stream, config.max_header_bytes, config.max_headers, lookalikes.clone());
    let service = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        hyper::service::service_fn(move |req| {
            let (ctx, name, stop, lookalikes) = (ctx.clone(), name.clone(), stop.clone(), lookalikes.clone());
            let (slot, client) = (slot.clone(), client.clone());
            async move {
                let held = Held { stop, slot, local: client.local };
                let res = handle(req, client.peer, client.tls.as_deref(), &name, &ctx, held).await;
                if looks_bare(&res) {
                    lookalikes.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Infallible>(res)
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut graceful = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            changed = stop.changed() => {
                let now = if changed.is_ok() { *stop.borrow_and_update() } else { Stop::Abort };
                match now {
                    Stop::Abort => return,
                    Stop::Graceful if !graceful => {
                        graceful = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ => {}
                }
            }
        }
    }
}

/// hyper's server settings for a listener.
fn builder(config: &ListenerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        // A client may shut down its sending side once its request is out and still wait
        // for the response; without this hyper takes the end of its input for the client
        // leaving and drops the request in flight.
        .half_close(true)
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_header_bytes)
        .max_buf_size(config.max_header_bytes.max(400 << 10))
        .max_headers(config.max_headers);
    builder
}

/// What a request's connection lends it: the server's stop signal, and the connection's
/// slot in its listener's `max_connections` (a WebSocket keeps it while its tunnel lives).
pub(crate) struct Held {
    pub(crate) stop: watch::Receiver<Stop>,
    pub(crate) slot: Arc<Slot>,
    /// The address the client connected to (or, behind a proxy, asked for).
    pub(crate) local: SocketAddr,
}

/// Handles one request end to end. Never fails: every error becomes a response.
async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    tls: Option<&TlsInfo>,
    listener: &str,
    ctx: &Context,
    held: Held,
) -> Response<ProxyBody> {
    let (mut head, body) = req.into_parts();
    if let Err(e) = check_host(&head) {
        return ProxyError::from(e).into_response();
    }
    // One snapshot load: the route, the pool and the listener's limits all come from it.
    let (pool, tunnel_limits, subject_header) = {
        let snapshot = ctx.snapshot.load();
        let Some(config) = snapshot.listeners.get(listener) else {
            return ProxyError::NoPool(format!("(listener `{listener}` was removed)")).into_response();
        };
        let pool_name = route(config, &head);
        let subject_header = config.tls.as_ref().and_then(|t| t.client_subject_header.clone());
        match snapshot.pools.get(pool_name) {
            Some(pool) => (pool.clone(), config.tunnels, subject_header),
            None => return ProxyError::NoPool(pool_name.to_owned()).into_response(),
        }
    };
    let websocket = is_websocket_upgrade(&head.headers);
    let client_upgrade = if websocket { head.extensions.remove::<hyper::upgrade::OnUpgrade>() } else { None };
    prepare_upstream_head(&mut head, peer, tls.is_some());
    if let Some(name) = subject_header {
        // Only weir says who the client is: a client's own header of that name is dropped.
        head.headers.remove(&name);
        if let Some(value) = tls.and_then(|t| t.client_subject.as_deref()).and_then(|s| HeaderValue::from_str(s).ok()) {
            head.headers.insert(name, value);
        }
    }
    if websocket {
        // Hop-by-hop, but the upgrade is what the request is for: ask the backend for it.
        head.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let protocol = if websocket { Protocol::WebSocket } else { Protocol::Http1 };
    let mut pick = PickRequest {
        protocol,
        client: peer,
        sni: tls.and_then(|t| t.sni.clone()),
        alpn: tls.map(|t| t.offered_alpn.clone()).unwrap_or_default(),
        client_subject: tls.and_then(|t| t.client_subject.clone()),
        head: Some(Box::new(head)),
    };
    let client_fault = Arc::new(ClientFault::default());
    let body = ClientBody::new(body, client_fault.clone());
    let mut exchange = Exchange { body: Some(body), client_fault, client_upgrade, tunnel_limits, held };
    let mut avoid = None;
    for attempt in 0..2 {
        let (returned, placement) = pool.place(pick, avoid);
        pick = returned;
        let id = match placement {
            Placement::Backend(id) => id,
            Placement::NoBackend => return ProxyError::NoBackend(pool.view.name.to_string()).into_response(),
            Placement::Rejected => return ProxyError::Rejected(pool.view.name.to_string()).into_response(),
        };
        match forward(ctx, &pool, id, &mut pick, &mut exchange).await {
            Ok(res) => return res,
            Err(Failure::Connect(e)) => {
                let backend = &pool.view.members[id as usize];
                backend.live.connect_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(pool = %pool.view.name, backend = %backend.config.address, attempt, error = %e, "connect failed");
                if attempt == 0 && pool.view.eligible.len() > 1 {
                    avoid = Some(id);
                    continue;
                }
                return ProxyError::Connect { pool: pool.view.name.to_string(), source: e }.into_response();
            }
            Err(Failure::Answer(e)) => return e.into_response(),
        }
    }
    ProxyError::NoBackend(pool.view.name.to_string()).into_response()
}
