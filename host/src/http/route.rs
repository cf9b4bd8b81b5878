//! Routing: which pool a request goes to, by its host and path.

use http::header;

use crate::config::ListenerConfig;

/// Host of the request: the URI authority (absolute-form) or the `Host` header.
pub(crate) fn request_host(req: &http::request::Parts) -> Option<&str> {
    req.uri.authority().map(|a| a.as_str()).or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// Picks the pool for a request: first matching route, else the listener's default.
pub(crate) fn route<'a>(config: &'a ListenerConfig, head: &http::request::Parts) -> &'a str {
    let host = request_host(head);
    let path = head.uri.path();
    config.routes.iter().find(|r| r.matches(host, path)).map_or(config.pool.as_str(), |r| r.pool.as_str())
}
