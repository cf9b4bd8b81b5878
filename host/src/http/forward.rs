//! One request to one backend: take a connection (idle or new), let the affinity plugin
//! bind, send the head and stream the body, and turn the backend's answer (or failure)
//! into the client's response. A failed connect leaves the request untouched so it can
//! be retried on another backend.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{Request, Response, StatusCode};

use super::errors::ProxyError;
use super::headers::{add_headers, remove_hop_by_hop};
use super::server::Held;
use super::upstream::{self, ConnectError, UpstreamBody};
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
    pub(crate) client_fault: Arc<ClientFault>,
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
    let addr = backend.config.socket_addr;
    let cfg = &pool.config;
    let proxy = cfg.send_proxy.map(|v| send::encode(v.into(), pick.client, exchange.held.local));
    let mut conn = upstream::checkout(&ctx.idle, live, addr, cfg.connect_timeout, cfg.idle_timeout, proxy.as_ref())
        .await
        .map_err(|e| {
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

    let (Some(head), Some(incoming)) = (pick.head.take(), exchange.body.take()) else {
        return Err(Failure::Answer(ProxyError::Internal("request lost")));
    };
    let mut request = Request::from_parts(*head, incoming);

    live.request_started();
    let started = Instant::now();
    let result = loop {
        match tokio::time::timeout(cfg.response_timeout, conn.sender.try_send_request(request)).await {
            Err(_) => {
                live.exchange_failed(HealthFailure::Timeout, None, 0);
                break Err(ProxyError::Timeout {
                    backend: backend.config.address.clone(),
                    after: cfg.response_timeout,
                });
            }
            Ok(Ok(res)) => break Ok(res),
            Ok(Err(mut e)) => match e.take_message() {
                // A reused keep-alive connection the backend had closed: nothing was sent,
                // so open a fresh one and send it there.
                Some(req) if conn.reused => {
                    request = req;
                    match upstream::connect(addr, cfg.connect_timeout).await {
                        Ok(fresh) => conn = fresh,
                        Err(e) => {
                            live.exchange_failed(e.failure(), None, 0);
                            live.request_finished();
                            let (head, b) = request.into_parts();
                            pick.head = Some(Box::new(head));
                            exchange.body = Some(b);
                            return Err(Failure::Connect(e));
                        }
                    }
                }
                _ => {
                    let source = e.into_error();
                    // The exchange failed because the client's body did: its fault.
                    if let Some(why) = exchange.client_fault.get() {
                        break Err(ProxyError::ClientBody(why.to_owned()));
                    }
                    let failure = if source.is_parse() { HealthFailure::Protocol } else { HealthFailure::Reset };
                    live.exchange_failed(failure, None, 0);
                    break Err(ProxyError::Upstream { backend: backend.config.address.clone(), source });
                }
            },
        }
    };
    live.request_finished();
    let res = result.map_err(Failure::Answer)?;
    let latency_us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
    live.observe_latency(latency_us);
    let status = res.status().as_u16();
    if cfg.health.passive_failure_statuses.contains(status) {
        live.exchange_failed(HealthFailure::Status, Some(status), latency_us);
    } else {
        live.exchange_succeeded(Some(status), latency_us);
    }

    if res.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = exchange.client_upgrade.take()
    {
        // The connection now belongs to the tunnel; its request sender is no longer needed.
        drop(conn);
        let held = exchange.held.clone();
        let mut res = websocket::upgrade(ctx, res, client, live.clone(), bound.hold, exchange.tunnel_limits, held);
        add_headers(res.headers_mut(), bound.headers);
        return Ok(res);
    }
    let (mut parts, incoming) = res.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    add_headers(&mut parts.headers, bound.headers);
    // A connection that began with a PROXY header names its client: never reused.
    let max_idle = if proxy.is_some() { 0 } else { cfg.max_idle_per_backend };
    let body = UpstreamBody::new(incoming, conn, ctx.idle.clone(), live.clone(), max_idle);
    Ok(Response::from_parts(parts, ProxyBody::Upstream(body)))
}
