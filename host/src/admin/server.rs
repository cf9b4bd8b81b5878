//! The admin listener: binds `[admin] listen`, serves HTTP/1.1 on it until the server
//! stops, and routes every request in one place, [`route`].
//!
//! To add an endpoint, add an arm to [`route`]'s `match (method, path segments)` that
//! calls a handler `async fn(&Admin, Request<Incoming>, ..) -> Reply`, and its path to
//! [`known`] so another method on it answers 405, not 404.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{Admin, Reply, candidates, dashboard, drain, error, metrics, plugins, status};
use crate::config::AdminConfig;
use crate::net::listen::{self, Acceptor, Stop};
use crate::state::CandidateKind;

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error("admin: cannot listen on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A non-loopback address without a token.
    #[error("admin: {0} is not a loopback address and no token is set: anyone who can reach it could swap plugins")]
    Exposed(SocketAddr),
}

/// Binds the admin listener of `config` (checking again that a non-loopback address has
/// a token) and serves it until `stop` says the server stops serving. Returns the bound
/// address.
pub(crate) async fn start(
    admin: Arc<Admin>,
    config: &AdminConfig,
    stop: watch::Receiver<Stop>,
) -> Result<SocketAddr, AdminError> {
    if config.token.is_none() && !config.listen.ip().is_loopback() {
        return Err(AdminError::Exposed(config.listen));
    }
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| AdminError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| AdminError::Bind { addr: config.listen, source })?;
    tokio::spawn(serve(admin, Acceptor::new(listener, "admin"), stop));
    tracing::info!(%addr, token = config.token.is_some(), "admin API listening");
    Ok(addr)
}

/// The accept loop: one task per connection, each closed when the server stops serving.
async fn serve(admin: Arc<Admin>, mut acceptor: Acceptor, mut stop: watch::Receiver<Stop>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = listen::stop_serving(&mut stop) => return,
        };
        let (admin, mut stop) = (admin.clone(), stop.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&admin, req).await) }
            });
            let conn = http1::Builder::new()
                .max_buf_size(64 * 1024)
                .header_read_timeout(std::time::Duration::from_secs(30))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = listen::stop_serving(&mut stop) => {}
            }
        });
    }
}

/// Percent-decodes one path segment (`%5B%3A%3A1%5D%3A80` is `[::1]:80`); `None` when the
/// result is not UTF-8 or an escape is malformed.
pub(crate) fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `method` changes something (and so needs the token).
fn mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether some method is served at `path` (for 405 rather than 404).
fn known(path: &[&str]) -> bool {
    matches!(
        path,
        ["api", "v1", "status"]
            | ["api", "v1", "reload"]
            | []
            | ["metrics"]
            | ["api", "v1", "dashboard"]
            | ["api", "v1", "pools", _, "shadow" | "canary"]
            | ["api", "v1", "pools", _, "shadow" | "canary", "promote"]
            | ["api", "v1", "pools", _, "balancer" | "affinity" | "health"]
            | ["api", "v1", "pools", _, "balancer" | "affinity" | "health", "rollback"]
            | ["api", "v1", "pools", _, "backends", _, "drain" | "undrain"]
    )
}

/// The candidate kind a path segment names (`shadow` or `canary`, matched by the route).
fn candidate(segment: &str) -> CandidateKind {
    CandidateKind::parse(segment).unwrap_or(CandidateKind::Shadow)
}

/// Every admin request, routed by method and path segments.
pub(crate) async fn route(admin: &Admin, req: Request<Incoming>) -> Reply {
    let Some(segments) = req.uri().path().split('/').filter(|s| !s.is_empty()).map(decode).collect::<Option<Vec<_>>>()
    else {
        return error(StatusCode::BAD_REQUEST, "the path is not valid percent-encoded UTF-8");
    };
    let path: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    if mutating(&method) && !admin.authorized(&req) {
        let mut r =
            error(StatusCode::UNAUTHORIZED, "this call needs `Authorization: Bearer <token>` (admin.token_file)");
        r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        return r;
    }
    match (&method, path.as_slice()) {
        (&Method::GET, ["api", "v1", "status"]) => status::get(admin, req).await,
        (&Method::POST, ["api", "v1", "reload"]) => status::reload(admin, req).await,
        (&Method::PUT, ["api", "v1", "pools", pool, kind @ ("balancer" | "affinity" | "health")]) => {
            plugins::swap(admin, req, pool, kind).await
        }
        (&Method::POST, ["api", "v1", "pools", pool, kind @ ("balancer" | "affinity" | "health"), "rollback"]) => {
            plugins::rollback(admin, req, pool, kind).await
        }
        (&Method::POST, ["api", "v1", "pools", pool, "backends", backend, action @ ("drain" | "undrain")]) => {
            drain::post(admin, req, pool, backend, *action == "undrain").await
        }
        (&Method::GET, []) => dashboard::page(admin, req).await,
        (&Method::GET, ["metrics"]) => metrics::get(admin, req).await,
        (&Method::GET, ["api", "v1", "dashboard"]) => dashboard::get(admin, req).await,
        (&Method::PUT, ["api", "v1", "pools", pool, kind @ ("shadow" | "canary")]) => {
            let (pool, kind) = (pool.to_string(), candidate(kind));
            candidates::set(admin, req, &pool, kind).await
        }
        (&Method::DELETE, ["api", "v1", "pools", pool, kind @ ("shadow" | "canary")]) => {
            candidates::remove(admin, pool, candidate(kind)).await
        }
        (&Method::POST, ["api", "v1", "pools", pool, kind @ ("shadow" | "canary"), "promote"]) => {
            candidates::promote(admin, pool, candidate(kind)).await
        }
        (_, p) if known(p) => {
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not served at {}", req.uri().path()))
        }
        _ => error(StatusCode::NOT_FOUND, format!("nothing at {}", req.uri().path())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode() {
        assert_eq!(decode("127.0.0.1:80").as_deref(), Some("127.0.0.1:80"));
        assert_eq!(decode("%5B%3A%3A1%5D%3A80").as_deref(), Some("[::1]:80"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("%FF"), None);
    }
}
