//! The HTTP/1.1 reverse proxy: accepts client connections, routes each request to a pool,
//! asks the pool's plugins for a backend, and streams the exchange both ways.
//!
//! Per request the hot path loads the snapshot once, matches routes without allocating,
//! moves the request head into the plugin call and back, and never copies the backend
//! list. Bodies are streamed frame by frame in both directions and never buffered whole.
//! Every failure becomes a response whose one-line body says where it came from: 502
//! (upstream), 503 (no backend, or plugin rejected), 504 (upstream too slow), 431 (client
//! sent too large a head, answered by hyper).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::Shared;
use crate::config::ListenerConfig;
use crate::plugin::{Bound, PickRequest, Protocol};
use crate::state::{Placement, Pool};

pub(crate) mod drain;
mod splice;
mod tunnel;
pub(crate) mod upstream;

use upstream::{ConnectError, UpstreamBody};

/// The body of a response weir sends to a client.
#[derive(Debug)]
pub(crate) enum ProxyBody {
    /// Streamed from a backend.
    Upstream(UpstreamBody),
    /// Made by weir (errors).
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Local(b) => Pin::new(b).poll_frame(cx).map(|f| f.map(|r| r.map_err(|e: Infallible| match e {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Local(b) => b.size_hint(),
        }
    }
}

/// A response made by weir itself, with a one-line plain-text body.
fn local(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::Local(Full::new(Bytes::from(message + "\n"))));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}

/// Accepts connections on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, config: Arc<ListenerConfig>, shared: Arc<Shared>) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_header_bytes)
        .max_buf_size(config.max_header_bytes.max(400 << 10))
        .max_headers(config.max_headers);
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(listener = %config.name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (builder, config, shared) = (builder.clone(), config.clone(), shared.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (config, shared) = (config.clone(), shared.clone());
                async move { Ok::<_, Infallible>(handle(req, peer, &config, &shared).await) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).with_upgrades().await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
        });
    }
}

/// Host of the request: the URI authority (absolute-form) or the `Host` header.
fn request_host(req: &http::request::Parts) -> Option<&str> {
    req.uri.authority().map(|a| a.as_str()).or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// Picks the pool for a request: first matching route, else the listener's default.
fn route<'a>(config: &'a ListenerConfig, head: &http::request::Parts) -> &'a str {
    let host = request_host(head);
    let path = head.uri.path();
    config.routes.iter().find(|r| r.matches(host, path)).map_or(config.pool.as_str(), |r| r.pool.as_str())
}

/// Handles one request end to end. Never fails: every error becomes a response.
async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    config: &ListenerConfig,
    shared: &Shared,
) -> Response<ProxyBody> {
    let (mut head, body) = req.into_parts();
    let pool_name = route(config, &head);
    let websocket = is_websocket_upgrade(&head.headers);
    let mut client_upgrade = if websocket { head.extensions.remove::<hyper::upgrade::OnUpgrade>() } else { None };
    prepare_upstream_head(&mut head, peer);
    if websocket {
        // Hop-by-hop, but the upgrade is what the request is for: ask the backend for it.
        head.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let Some(pool) = shared.runtime.load().pools.get(pool_name).cloned() else {
        return local(StatusCode::SERVICE_UNAVAILABLE, format!("weir: pool `{pool_name}` is not configured"));
    };
    let protocol = if websocket { Protocol::WebSocket } else { Protocol::Http1 };
    let mut pick = PickRequest { protocol, client: peer, sni: None, head: Some(Box::new(head)) };
    let mut avoid = None;
    let mut body = Some(body);
    for attempt in 0..2 {
        let (returned, placement) = pool.place(pick, avoid);
        pick = returned;
        let id = match placement {
            Placement::Backend(id) => id,
            Placement::NoBackend => {
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("weir: no eligible backend in pool `{}`", pool.view.name),
                );
            }
            Placement::Rejected => {
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("weir: the balancer of pool `{}` failed and on_plugin_error is \"reject\"", pool.view.name),
                );
            }
        };
        match forward(&pool, id, &mut pick, &mut body, &mut client_upgrade, config.tunnels).await {
            Ok(res) => return res,
            Err(Failure::Connect(e)) => {
                let backend = &pool.view.members[id as usize];
                backend.live.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pool = %pool.view.name, backend = %backend.config.address, attempt, error = %e, "connect failed");
                if attempt == 0 && pool.view.eligible.len() > 1 {
                    avoid = Some(id);
                    continue;
                }
                return local(
                    StatusCode::BAD_GATEWAY,
                    format!("weir: cannot connect to a backend of pool `{}`: {e}", pool.view.name),
                );
            }
            Err(Failure::Response(res)) => return res,
        }
    }
    local(StatusCode::BAD_GATEWAY, format!("weir: no backend of pool `{}` could be reached", pool.view.name))
}

/// What went wrong forwarding one request.
enum Failure {
    /// Nothing was sent; the request can go elsewhere.
    Connect(ConnectError),
    /// The request was sent (or cannot be retried); answer this.
    Response(Response<ProxyBody>),
}

/// Sends the request to backend `id` and returns its response. On a connect failure the
/// request head and body are left in place for a retry.
async fn forward(
    pool: &Pool,
    id: u32,
    pick: &mut PickRequest,
    body: &mut Option<Incoming>,
    client_upgrade: &mut Option<hyper::upgrade::OnUpgrade>,
    tunnel_limits: crate::config::TunnelLimits,
) -> Result<Response<ProxyBody>, Failure> {
    let backend = &pool.view.members[id as usize];
    let live = &backend.live;
    let addr = backend.config.socket_addr;
    let cfg = &pool.config;
    let mut conn =
        upstream::checkout(live, addr, cfg.connect_timeout, cfg.idle_timeout).await.map_err(Failure::Connect)?;
    live.requests.fetch_add(1, Ordering::Relaxed);
    // The backend is settled: let the affinity plugin pin the client to it.
    let bound = if pool.affinity.is_some() {
        let (req, bound) = pool.bind(std::mem::take(pick), id);
        *pick = req;
        bound
    } else {
        Bound::default()
    };

    let (Some(head), Some(incoming)) = (pick.head.take(), body.take()) else {
        return Err(Failure::Response(local(StatusCode::INTERNAL_SERVER_ERROR, "weir: request lost".into())));
    };
    let mut request = Request::from_parts(*head, incoming);

    live.request_started();
    let started = Instant::now();
    let result = loop {
        match tokio::time::timeout(cfg.response_timeout, conn.sender.try_send_request(request)).await {
            Err(_) => {
                break Err(local(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("weir: backend {} did not answer in {:?}", backend.config.address, cfg.response_timeout),
                ));
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
                            live.request_finished();
                            let (head, b) = request.into_parts();
                            pick.head = Some(Box::new(head));
                            *body = Some(b);
                            return Err(Failure::Connect(e));
                        }
                    }
                }
                _ => {
                    let e = e.into_error();
                    break Err(local(
                        StatusCode::BAD_GATEWAY,
                        format!("weir: backend {} failed: {e}", backend.config.address),
                    ));
                }
            },
        }
    };
    live.request_finished();
    let res = result.map_err(Failure::Response)?;
    live.observe_latency(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));

    if res.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = client_upgrade.take()
    {
        // The connection now belongs to the tunnel; its request sender is no longer needed.
        drop(conn);
        let mut res = tunnel(res, client, live.clone(), bound.hold, tunnel_limits);
        add_headers(res.headers_mut(), bound.headers);
        return Ok(res);
    }
    let (mut parts, incoming) = res.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    add_headers(&mut parts.headers, bound.headers);
    let body = UpstreamBody::new(incoming, conn, live.clone(), cfg.max_idle_per_backend);
    Ok(Response::from_parts(parts, ProxyBody::Upstream(body)))
}

/// Appends the headers an affinity plugin asked for.
fn add_headers(to: &mut HeaderMap, headers: Vec<(HeaderName, HeaderValue)>) {
    for (name, value) in headers {
        to.append(name, value);
    }
}

/// Whether a request asks to become a WebSocket (`Connection: upgrade`, `Upgrade: websocket`).
fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// Hands a `101 Switching Protocols` back to the client and joins the two upgraded
/// connections in a tunnel that counts as one active connection of the backend for as
/// long as it is open.
fn tunnel(
    mut res: Response<Incoming>,
    client: hyper::upgrade::OnUpgrade,
    live: std::sync::Arc<crate::state::BackendLive>,
    stick: Option<crate::state::StickHold>,
    limits: crate::config::TunnelLimits,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut res);
    let (mut parts, _) = res.into_parts();
    let entry = live.tunnels.register();
    let active = upstream::ActiveGuard::new(live);
    tokio::spawn(async move {
        // These live as long as the tunnel: it is one of its backend's active connections
        // and open tunnels (where a drain finds it), and it keeps its stick entry (if any)
        // from expiring.
        let _held = (active, stick);
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        if let Err(e) = tunnel::join(client, upstream, limits, &entry.order).await {
            tracing::debug!(error = %e, "websocket tunnel ended with an error");
        }
    });
    remove_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Response::from_parts(parts, ProxyBody::Local(Full::new(Bytes::new())))
}

/// Rewrites a client request head for the backend: origin-form URI, hop-by-hop headers
/// removed, `X-Forwarded-*` added.
fn prepare_upstream_head(head: &mut http::request::Parts, peer: SocketAddr) {
    let host = request_host(head).and_then(|h| HeaderValue::from_str(h).ok());
    if head.uri.authority().is_some() {
        let pq = head.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = pq.parse() {
            head.uri = uri;
        }
    }
    if let Some(host) = &host {
        head.headers.entry(header::HOST).or_insert_with(|| host.clone());
    }
    head.version = http::Version::HTTP_11;
    remove_hop_by_hop(&mut head.headers);

    let ip = peer.ip().to_string();
    let xff = match head.headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        head.headers.insert(X_FORWARDED_FOR, v);
    }
    head.headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = host {
        head.headers.insert(X_FORWARDED_HOST, host);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including those named in `Connection`.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers_are_added_and_appended() {
        let req =
            Request::builder().uri("http://example.com/a?b=1").header("x-forwarded-for", "192.0.2.7").body(()).unwrap();
        let (mut head, ()) = req.into_parts();
        prepare_upstream_head(&mut head, "10.1.2.3:5555".parse().unwrap());
        assert_eq!(head.uri, "/a?b=1");
        assert_eq!(head.headers["host"], "example.com");
        assert_eq!(head.headers["x-forwarded-for"], "192.0.2.7, 10.1.2.3");
        assert_eq!(head.headers["x-forwarded-proto"], "http");
        assert_eq!(head.headers["x-forwarded-host"], "example.com");
    }
}
