//! One request to one backend: take a connection (idle or new), let the affinity plugin
//! bind, send the head and stream the body, and turn the backend's answer (or failure)
//! into the client's response. A failed connect leaves the request untouched so it can
//! be retried on another backend.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use super::errors::ProxyError;
use super::headers::{add_headers, remove_hop_by_hop};
use super::server::Held;
use super::upstream::{self, Checkout, ConnectError, SendError, Sender, Source, Target, UpstreamBody};
use super::{ClientBody, ClientFault, Context, ProxyBody, websocket};
use crate::config::TunnelLimits;
use crate::core::Failure as HealthFailure;
use crate::net::proxy_protocol::send;
use crate::plugin::PickRequest;
use crate::state::{Binding, Pool};

/// What went wrong forwarding one request.
pub(crate) enum Failure {
    /// Nothing was sent; the request can go elsewhere.
    Connect(ConnectError),
    /// The request was sent (or cannot be retried); answer this.
    Answer(ProxyError),
}

/// What a request brings to [`forward`] besides its head.
pub(crate) struct Exchange {
    /// The request body, until it is sent.
    pub(crate) body: Option<ClientBody>,
    /// Set when the request body could not be read: the client's fault.
    /// Where the client's body notes a read error (none without a body).
    pub(crate) client_fault: Option<Arc<ClientFault>>,
    /// The client side of a WebSocket upgrade, if the request asks for one.
    pub(crate) client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The listener's tunnel limits.
    pub(crate) tunnel_limits: TunnelLimits,
    /// The server's stop signal and the connection's slot, for a tunnel.
    pub(crate) held: Held,
}

/// Sends the request to backend `id` and returns its response. On a connect failure the
/// request head and body are left in place for a retry.
pub(crate) async fn forward(
    ctx: &Context,
    pool: &Arc<Pool>,
    id: u32,
    pick: &mut PickRequest,
    exchange: &mut Exchange,
) -> Result<Response<ProxyBody>, Failure> {
    let backend = &pool.view.members[id as usize];
    let live = &backend.live;
    let cfg = &pool.config;
    let h2 = cfg.upstream.protocol.is_h2();
    if h2 && exchange.client_upgrade.is_some() {
        return Err(Failure::Answer(ProxyError::UpgradeOverH2 { pool: pool.view.name.to_string() }));
    }
    let target = Target {
        backend: &backend.config,
        upstream: &cfg.upstream,
        connect_timeout: cfg.connect_timeout,
        idle_timeout: cfg.idle_timeout,
    };
    let proxy = cfg.send_proxy.map(|v| send::encode(v.into(), pick.client, exchange.held.local));
    let mut conn = upstream::checkout(&ctx.idle, live, target, proxy.as_ref()).await.map_err(|e| {
        live.exchange_failed(e.failure(), None, 0);
        Failure::Connect(e)
    })?;
    live.requests.fetch_add(1, Ordering::Relaxed);
    // The backend is settled: let the affinity plugin pin the client to it.
    let bound = if pool.affinity.is_some() {
        let (req, bound) = pool.bind(std::mem::take(pick), id);
        *pick = req;
        bound
    } else {
        Binding::default()
    };

    let (Some(mut head), Some(incoming)) = (pick.head.take(), exchange.body.take()) else {
        return Err(Failure::Answer(ProxyError::Internal("request lost")));
    };
    if h2 {
        to_h2(&mut head, cfg.upstream.tls.is_some(), &backend.config.address);
    }
    let mut request = Request::from_parts(*head, incoming);

    if exchange.client_upgrade.is_some() {
        // hyper's client drives an upgrade (and the tunnel after it).
        conn = conn.for_upgrade().await.map_err(|e| {
            live.exchange_failed(e.failure(), None, 0);
            Failure::Connect(e)
        })?;
    }
    live.request_started();
    let started = Instant::now();
    let mut deadline = deadline_after(started, cfg.response_timeout);
    let result = loop {
        let reused = conn.reused;
        let sent = match conn.sender {
            // weir's HTTP/1.1 client, awaited here rather than inside `Checkout::send`:
            // its future is built in place, not moved into another.
            Sender::H1(c) => match upstream::h1::send(c, reused, request, deadline).await {
                Ok(res) => Ok(res.map(Source::H1)),
                Err(e) => Err(SendError::from(e)),
            },
            sender => Checkout { sender, reused }.send(request, deadline).await,
        };
        match sent {
            Err(SendError { error, .. }) if error.is_timeout() => {
                live.exchange_failed(HealthFailure::Timeout, None, 0);
                break Err(ProxyError::Timeout {
                    backend: backend.config.address.clone(),
                    after: cfg.response_timeout,
                });
            }
            Ok(res) => break Ok(res),
            Err(SendError { error, request: back }) => match back {
                // A reused connection the backend had closed before answering, with
                // nothing of the body lost: open a fresh one (replace the shared HTTP/2
                // one) and send it there, once.
                Some(req) if reused => {
                    tracing::debug!(backend = %backend.config.address, error = %error, "a reused connection failed; sending again on a new one");
                    request = req;
                    match upstream::reconnect(&ctx.idle, live, target, proxy.as_ref()).await {
                        Ok(fresh) => {
                            conn = Checkout { reused: false, ..fresh };
                            deadline = deadline_after(Instant::now(), cfg.response_timeout);
                        }
                        Err(e) => {
                            live.exchange_failed(e.failure(), None, 0);
                            live.request_finished();
                            let (mut head, b) = request.into_parts();
                            if h2 {
                                from_h2(&mut head);
                            }
                            pick.head = Some(Box::new(head));
                            exchange.body = Some(b);
                            return Err(Failure::Connect(e));
                        }
                    }
                    if exchange.client_upgrade.is_some() {
                        conn = match conn.for_upgrade().await {
                            Ok(c) => c,
                            Err(e) => {
                                live.exchange_failed(e.failure(), None, 0);
                                break Err(ProxyError::Connect { pool: pool.view.name.to_string(), source: e });
                            }
                        };
                    }
                }
                // A new connection that closed before it took the request (a TLS 1.3
                // backend refusing weir's client certificate says so only after the
                // handshake): nothing was sent, so the request may go to another backend.
                Some(req) => {
                    let closed =
                        ConnectError::Closed { addr: backend.config.socket_addr, reason: super::error_chain(&error) };
                    live.exchange_failed(closed.failure(), None, 0);
                    live.request_finished();
                    let (mut head, b) = req.into_parts();
                    if h2 {
                        from_h2(&mut head);
                    }
                    pick.head = Some(Box::new(head));
                    exchange.body = Some(b);
                    return Err(Failure::Connect(closed));
                }
                None => {
                    // The exchange failed because the client's body did: its fault.
                    if let Some(why) = exchange.client_fault.as_deref().and_then(ClientFault::get) {
                        break Err(ProxyError::ClientBody(why.to_owned()));
                    }
                    live.exchange_failed(error.failure(), None, 0);
                    break Err(ProxyError::Upstream { backend: backend.config.address.clone(), source: error });
                }
            },
        }
    };
    live.request_finished();
    let res = result.map_err(Failure::Answer)?;
    let latency_us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
    live.observe_latency(latency_us);
    let status = res.status().as_u16();
    live.answered(status, latency_us);
    if cfg.health.passive_failure_statuses.contains(status) {
        live.exchange_failed(HealthFailure::Status, Some(status), latency_us);
    } else {
        live.exchange_succeeded(Some(status), latency_us);
    }

    if res.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = exchange.client_upgrade.take()
    {
        let (parts, Source::Hyper(body, sender)) = res.into_parts() else {
            return Err(Failure::Answer(ProxyError::Internal("an upgrade answered outside hyper")));
        };
        // The connection now belongs to the tunnel; its request sender is no longer needed.
        drop(sender);
        let res = Response::from_parts(parts, body);
        let held = exchange.held.clone();
        let mut res = websocket::upgrade(ctx, res, client, live.clone(), bound.hold, exchange.tunnel_limits, held);
        add_headers(res.headers_mut(), bound.headers);
        return Ok(res);
    }
    let (mut parts, incoming) = res.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    if h2 {
        announce_grpc_trailers(&mut parts.headers);
    }
    add_headers(&mut parts.headers, bound.headers);
    // A connection that began with a PROXY header names its client: never reused.
    let max_idle = if proxy.is_some() { 0 } else { cfg.max_idle_per_backend };
    let body = UpstreamBody::new(incoming, ctx.idle.clone(), live.clone(), max_idle);
    Ok(Response::from_parts(parts, ProxyBody::Upstream(body)))
}

/// The response timeout's deadline for a request sent at `sent` (30 years on for a timeout
/// too long for the clock, as tokio's own timeout does).
fn deadline_after(sent: Instant, timeout: Duration) -> Instant {
    sent.checked_add(timeout).unwrap_or_else(|| sent + Duration::from_secs(86400 * 365 * 30))
}

/// Makes an HTTP/1.1 request head (as [`prepare_upstream_head`] left it) an HTTP/2 one:
/// the target in absolute form, whose scheme and authority hyper sends as `:scheme` and
/// `:authority`, from the `Host` header (which HTTP/2 replaces), or the backend's address
/// when the request had none (HTTP/1.0).
///
/// [`prepare_upstream_head`]: super::headers::prepare_upstream_head
fn to_h2(head: &mut http::request::Parts, tls: bool, backend: &str) {
    let authority = match head.headers.remove(header::HOST) {
        Some(host) => Authority::from_maybe_shared(Bytes::copy_from_slice(host.as_bytes())).ok(),
        None => None,
    };
    let authority = authority.or_else(|| Authority::from_maybe_shared(Bytes::copy_from_slice(backend.as_bytes())).ok());
    let mut parts = std::mem::take(&mut head.uri).into_parts();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    head.uri = Uri::from_parts(parts).unwrap_or_default();
    head.version = Version::HTTP_2;
}

/// Undoes [`to_h2`] for a request that goes back for a retry elsewhere.
fn from_h2(head: &mut http::request::Parts) {
    if let Some(authority) = head.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        head.headers.insert(header::HOST, host);
    }
    let pq = head.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    head.uri = Uri::from(pq);
    head.version = Version::HTTP_11;
}

/// The trailers a gRPC response ends with, announced in `Trailer` when an HTTP/2 backend
/// did not announce its own (HTTP/2 does not need to). hyper's HTTP/1.1 server writes a
/// trailer only if the client sent `TE: trailers`, the body is chunked, and the response
/// names the field in `Trailer`; without this a gRPC status would never reach an HTTP/1.1
/// client.
fn announce_grpc_trailers(headers: &mut http::HeaderMap) {
    let grpc = headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc && !headers.contains_key(header::TRAILER) {
        headers.insert(header::TRAILER, HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"));
    }
}
