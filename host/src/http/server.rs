//! The HTTP server side: one task per listener accepts, one task per client connection
//! (after its TLS handshake, on a TLS listener) serves it with hyper (HTTP/1.1, or
//! HTTP/2), and [`handle`] takes each request from routing to the response.
//!
//! A cleartext connection speaks HTTP/1.1 unless its first bytes are HTTP/2's connection
//! preface (h2c with prior knowledge, RFC 9113 §3.3): [`ClientIo`] reads those bytes once
//! and hands them back to whichever of hyper's two servers takes the connection, so h1
//! and h2c share a port. A TLS connection whose ALPN chose `h2` is served by
//! [`serve_h2`], HTTP/2 only. Either way each request (each HTTP/2 stream) is one
//! decision through its pool's plugins, as an HTTP/1.1 request is.
//!
//! HTTP/2 connections are held to the listener's `http2` limits (streams, header list,
//! windows). Against floods of streams a client opens and resets at once (CVE-2023-44487)
//! hyper's h2 counts the streams reset before weir has taken them and answers more than
//! [`H2_MAX_PENDING_RESETS`] with `GOAWAY (ENHANCE_YOUR_CALM)`; a flood of CONTINUATION
//! frames is cut by the header list limit, which h2 applies to the block as it grows
//! (h2 0.4.4 and later); streams weir itself has to reset are capped the same way
//! ([`H2_MAX_LOCAL_RESETS`]).
//!
//! A listener's settings (routes, timeouts, limits) are read from the current snapshot:
//! routes per request, so a reload changes them at once; hyper's limits per connection,
//! so they apply to connections accepted after the reload. Every connection task watches
//! the server's [`Stop`]: on `Graceful` it lets the requests in flight finish and closes
//! (hyper's graceful shutdown; `GOAWAY` on HTTP/2), on `Abort` it drops the connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::errors::{ClientIo, ProxyError, Sniffed, looks_bare};
use super::forward::{Exchange, Failure, forward};
use super::headers::{
    ForwardedFor, check_host, connect_to_upgrade, extended_connect, is_websocket_upgrade, prepare_upstream_head,
};
use super::route::route;
use super::{ClientBody, ClientFault, Context, ProxyBody, RequestBody};
use crate::config::ListenerConfig;
use crate::core::wake::Flagged;
use crate::core::{Count, Counted, Protocol};
use crate::net::listen::{ListenerStats, Slot, Stop};
use crate::net::proxy_protocol;
use crate::net::tls::{Acceptor, TlsInfo};
use crate::plugin::PickRequest;
use crate::state::Placement;

mod h1;

pub(crate) use h1::OwnBody;

/// Most streams of one HTTP/2 connection the client may reset before weir has taken
/// them (hyper's default); past it the connection gets `GOAWAY (ENHANCE_YOUR_CALM)`.
pub(crate) const H2_MAX_PENDING_RESETS: usize = 20;

/// Most streams of one HTTP/2 connection weir may have to reset for the client's errors
/// before it closes the connection (hyper's default).
pub(crate) const H2_MAX_LOCAL_RESETS: usize = 1024;

/// Serves one accepted client connection of an http listener with hyper until it
/// closes or the server aborts; `slot` is its place in the listener's `max_connections`.
/// On a TLS listener (`tls`) the handshake runs here, after the PROXY header and under
/// the listener's handshake timeout; a connection whose handshake fails or times out is
/// closed and counted in the listener's `refused`. ALPN `h2` is served by [`serve_h2`],
/// anything else by [`serve`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    worker: Option<Counted>,
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
    // The client as plugins, stick tables and X-Forwarded-For see it, and the address it
    // connected to (named in a PROXY header weir sends a backend).
    let Some(local) = from.destination.or_else(|| stream.local_addr().ok()) else { return };
    let peer = from.addr;
    let Some(tls) = tls else {
        return serve(stream, Accepted { peer, local, tls: None, slot: Arc::new(slot), worker, config, ctx, stop })
            .await;
    };
    match tls.accept(stream).await {
        Ok((stream, info)) => {
            stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            let h2 = info.alpn.as_deref() == Some(b"h2".as_slice());
            let (tls, slot) = (Some(Arc::new(info)), Arc::new(slot));
            let client = Accepted { peer, local, tls, slot, worker, config, ctx, stop };
            if h2 { serve_h2(stream, client).await } else { serve(stream, client).await }
        }
        Err(e) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            stats.tls_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = %config.name, %peer, error = %e, "TLS handshake failed");
        }
    }
}

/// A client connection accepted by an http listener, ready for HTTP: who it is, where it
/// connected, and what it shares with its listener and server.
pub(crate) struct Accepted {
    /// The client as plugins, stick tables and `X-Forwarded-For` see it.
    pub(crate) peer: SocketAddr,
    /// The address the client connected to (or, behind a proxy, asked for).
    pub(crate) local: SocketAddr,
    /// What the TLS handshake learnt (none in clear text).
    pub(crate) tls: Option<Arc<TlsInfo>>,
    /// The connection's place in its listener's `max_connections`.
    pub(crate) slot: Arc<Slot>,
    /// The connection in its worker's count of what it serves (with more than one worker).
    pub(crate) worker: Option<Counted>,
    /// The listener's settings as the connection was accepted.
    pub(crate) config: Arc<ListenerConfig>,
    /// What every connection of the server shares.
    pub(crate) ctx: Arc<Context>,
    /// The server's stop signal.
    pub(crate) stop: watch::Receiver<Stop>,
}

/// Serves a connection that speaks HTTP/1.1 or, when its first bytes are HTTP/2's
/// connection preface, HTTP/2 (h2c with prior knowledge on a cleartext listener; also
/// right for a TLS connection whose ALPN chose `http/1.1` or nothing). HTTP/1.1 keeps
/// WebSocket upgrades and weir's own answers to heads hyper cannot parse ([`ClientIo`]).
/// The preface is awaited for at most the listener's `header_read_timeout`.
pub(crate) async fn serve<S>(io: S, client: Accepted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &client.config;
    let lookalikes = Arc::new(AtomicUsize::new(0));
    let mut io = ClientIo::new(io, config.max_header_bytes, config.max_headers, lookalikes.clone());
    let sniffed = match tokio::time::timeout(config.header_read_timeout, io.sniff()).await {
        Ok(Ok(sniffed)) => sniffed,
        Ok(Err(e)) => {
            tracing::debug!(peer = %client.peer, error = %e, "client connection ended before its first request");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %client.peer, "client sent nothing within header_read_timeout");
            return;
        }
    };
    let Accepted { peer, config, stop, .. } = &client;
    let (peer, stop) = (*peer, stop.clone());
    match sniffed {
        Sniffed::Http2 => {
            let conn = h2_builder(config).serve_connection(TokioIo::new(io), h2_service(&client, lookalikes));
            drive(conn, stop, peer, |c| c.graceful_shutdown()).await;
        }
        Sniffed::Http1 => {
            // weir's own HTTP/1.1 server ([`h1`]), which hands to hyper what it does not take.
            let graceful = Arc::new(AtomicBool::new(false));
            let conn = h1::serve(io, Client::new(&client, lookalikes), config.clone(), graceful.clone());
            drive(conn, stop, peer, move |_| graceful.store(true, Ordering::Relaxed)).await;
        }
    }
}

/// Serves a connection as HTTP/2 only, without looking for the preface first: the path
/// for a TLS connection whose ALPN negotiated `h2` (RFC 9113 §3.2), called by the TLS
/// side once its handshake is done. The same limits, decisions and shutdown as h2c.
pub(crate) async fn serve_h2<S>(io: S, client: Accepted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (peer, stop) = (client.peer, client.stop.clone());
    // No hyper error head on HTTP/2 for ClientIo to rewrite: the connection as it is.
    let conn = h2_builder(&client.config)
        .serve_connection(TokioIo::new(io), h2_service(&client, Arc::new(AtomicUsize::new(0))));
    drive(conn, stop, peer, |c| c.graceful_shutdown()).await;
}

/// What every request of one client connection shares, made once per connection (so a
/// request clones one `Arc`, not each part).
struct Client {
    /// The client as plugins, stick tables and `X-Forwarded-For` see it.
    peer: SocketAddr,
    /// `peer`'s address as the `X-Forwarded-For` entry weir adds.
    forwarded_for: ForwardedFor,
    /// The address the client connected to (or, behind a proxy, asked for).
    local: SocketAddr,
    /// What the TLS handshake learnt (none in clear text).
    tls: Option<Arc<TlsInfo>>,
    /// The listener's name, to find its routes in the current snapshot.
    listener: Box<str>,
    /// What every connection of the server shares.
    ctx: Arc<Context>,
    /// The server's stop signal, for a WebSocket's tunnel.
    stop: watch::Receiver<Stop>,
    /// The connection's slot in its listener's `max_connections`.
    slot: Arc<Slot>,
    /// Its worker's count of what it serves, where a WebSocket's tunnel counts too.
    worker: Option<Arc<Count>>,
    /// Backend answers that [`ClientIo`] must not take for hyper's own.
    lookalikes: Arc<AtomicUsize>,
}

/// The service hyper's HTTP/1.1 server calls for each request of a connection (one that
/// [`h1`] handed on): [`respond`], with what the connection lends each request. hyper
/// keeps the request's future in one place per connection, so it is not boxed.
fn service(
    client: Arc<Client>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |req| respond(req, client.clone()))
}

/// The service hyper's HTTP/2 server calls for each stream: [`service`]'s, with the
/// request's future boxed, since hyper moves it into a task of its own per stream and
/// tokio copies a task's future whole each time its stage changes: a pointer is cheaper
/// to move than the 3 KB of the request's states.
fn h2_service(
    client: &Accepted,
    lookalikes: Arc<AtomicUsize>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = BoxedAnswer,
> + Clone
+ Send
+ 'static {
    let client = Client::new(client, lookalikes);
    hyper::service::service_fn(move |req| Box::pin(respond(req, client.clone())) as BoxedAnswer)
}

/// A request's answer to come, boxed.
type BoxedAnswer = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl Client {
    fn new(client: &Accepted, lookalikes: Arc<AtomicUsize>) -> Arc<Self> {
        Arc::new(Client {
            peer: client.peer,
            forwarded_for: ForwardedFor::new(client.peer.ip()),
            local: client.local,
            tls: client.tls.clone(),
            listener: client.config.name.as_str().into(),
            ctx: client.ctx.clone(),
            stop: client.stop.clone(),
            slot: client.slot.clone(),
            worker: client.worker.as_ref().map(|w| w.count().clone()),
            lookalikes,
        })
    }
}

/// One request of `client`'s: [`handle`], and the answer counted if [`ClientIo`] could
/// take it for hyper's own.
async fn respond(req: Request<Incoming>, client: Arc<Client>) -> Result<Response<ProxyBody>, Infallible> {
    let res = handle(req.map(RequestBody::Hyper), &client).await;
    if looks_bare(&res) {
        client.lookalikes.fetch_add(1, Ordering::Relaxed);
    }
    Ok(res)
}

/// Runs a connection until it ends; on `Graceful` it is asked to finish what is in flight
/// (`graceful`), on `Abort` it is dropped.
///
/// The stop signal is polled only when it woke the task ([`Flagged`]), not at each of
/// the connection's wake-ups (two a request: a `watch`'s poll takes its waiters' lock,
/// about 200 instructions; `tokio::select!` polls every branch at every wake).
async fn drive<F, E>(conn: F, mut stop: watch::Receiver<Stop>, peer: SocketAddr, graceful: impl Fn(Pin<&mut F>))
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let mut asked = false;
    let woke = Flagged::default();
    loop {
        let changed = {
            let mut changed = std::pin::pin!(stop.changed());
            // A new `changed` future is polled once, to register its waiter.
            woke.rearm();
            std::future::poll_fn(|cx| {
                if let Poll::Ready(done) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Err(done));
                }
                woke.poll(cx, |cx| changed.as_mut().poll(cx).map(|c| Ok(c.is_ok())))
            })
            .await
        };
        match changed {
            Err(done) => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            Ok(changed) => {
                let now = if changed { *stop.borrow_and_update() } else { Stop::Abort };
                match now {
                    Stop::Abort => return,
                    Stop::Graceful if !asked => {
                        asked = true;
                        graceful(conn.as_mut());
                    }
                    _ => {}
                }
            }
        }
    }
}

/// hyper's HTTP/1.1 server settings for a listener.
fn h1_builder(config: &ListenerConfig) -> http1::Builder {
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

/// hyper's HTTP/2 server settings for a listener: its `http2` limits, extended CONNECT
/// (RFC 8441) for WebSockets, and the reset-flood caps.
fn h2_builder(config: &ListenerConfig) -> http2::Builder<TokioExecutor> {
    let limits = &config.http2;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .initial_stream_window_size(limits.initial_stream_window_size)
        .initial_connection_window_size(limits.initial_connection_window_size)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .enable_connect_protocol();
    builder
}

/// What a request's connection lends it: the server's stop signal, and the connection's
/// slot in its listener's `max_connections` (a WebSocket keeps it while its tunnel lives).
#[derive(Clone)]
pub(crate) struct Held {
    pub(crate) stop: watch::Receiver<Stop>,
    pub(crate) slot: Arc<Slot>,
    /// The address the client connected to (or, behind a proxy, asked for).
    pub(crate) local: SocketAddr,
    /// The request is an HTTP/2 extended CONNECT (RFC 8441): its tunnel is answered
    /// `200`, not `101`.
    pub(crate) extended_connect: bool,
    /// A WebSocket's place in its worker's count, which its tunnel keeps (the
    /// connection's own place ends with the connection, at the upgrade on HTTP/1.1).
    pub(crate) worker: Option<Counted>,
}

/// Handles one request of `client`'s end to end. Never fails: every error becomes a
/// response.
async fn handle(req: Request<RequestBody>, client: &Client) -> Response<ProxyBody> {
    let (peer, tls, listener, ctx) = (client.peer, client.tls.as_deref(), &*client.listener, &*client.ctx);
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
    let h2 = head.version == http::Version::HTTP_2;
    // A WebSocket: an HTTP/1.1 upgrade, or on HTTP/2 an extended CONNECT (RFC 8441),
    // which becomes an HTTP/1.1 upgrade to the backend all the same.
    let connect = h2 && extended_connect(&head);
    if h2 && !connect && head.method == http::Method::CONNECT {
        return ProxyError::PlainConnect.into_response();
    }
    let websocket = connect || (!h2 && is_websocket_upgrade(&head.headers));
    let client_upgrade = if websocket { head.extensions.remove::<hyper::upgrade::OnUpgrade>() } else { None };
    prepare_upstream_head(&mut head, &client.forwarded_for, tls.is_some());
    if let Some(name) = subject_header {
        // Only weir says who the client is: a client's own header of that name is dropped.
        head.headers.remove(&name);
        if let Some(value) = tls.and_then(|t| t.client_subject.as_deref()).and_then(|s| HeaderValue::from_str(s).ok()) {
            head.headers.insert(name, value);
        }
    }
    if connect {
        connect_to_upgrade(&mut head);
    } else if websocket {
        // Hop-by-hop, but the upgrade is what the request is for: ask the backend for it.
        head.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let protocol = match (websocket, h2) {
        (true, _) => Protocol::WebSocket,
        (false, true) => Protocol::Http2,
        (false, false) => Protocol::Http1,
    };
    let held = Held {
        stop: client.stop.clone(),
        slot: client.slot.clone(),
        local: client.local,
        extended_connect: connect,
        worker: if websocket { client.worker.as_ref().map(Counted::new) } else { None },
    };
    let mut pick = PickRequest {
        protocol,
        client: peer,
        sni: tls.and_then(|t| t.sni.clone()),
        alpn: tls.and_then(|t| t.offered_alpn.clone()),
        client_subject: tls.and_then(|t| t.client_subject.clone()),
        head: Some(Box::new(head)),
    };
    // A body that cannot fail needs no note of its failure (an allocation a GET saves).
    let client_fault = (!matches!(body, RequestBody::Empty)).then(|| Arc::new(ClientFault::default()));
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
