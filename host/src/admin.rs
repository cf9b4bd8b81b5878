//! The admin API (DESIGN "Admin API"): an HTTP/1.1 listener, separate from the proxy's,
//! where an operator reads what weir is doing (`GET /api/v1/status`) and changes it
//! (plugin swaps, rollbacks, reloads, drains).
//!
//! It only reads state and sends [`crate::control::Command`]s to the one writer: nothing
//! here writes the snapshot (DESIGN convention 1). Every request is routed by one
//! function, [`server::route`]; each endpoint is a handler
//! `async fn(&Admin, Request<Incoming>, ..) -> Reply` in the module that owns it
//! ([`status`], [`plugins`], [`drain`]; [`metrics`] renders what the subsystems registered,
//! [`dashboard`] serves the live page and the JSON it polls, [`candidates`] sets and
//! promotes shadow and canary balancers). Mutating calls need the bearer token when one is
//! configured (a wrong or missing one is answered 401, counted, and changes nothing);
//! bodies are limited to [`MAX_BODY`] bytes; every error is JSON, `{"error": "..."}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::control::Control;

pub(crate) mod candidates;
pub(crate) mod dashboard;
pub(crate) mod drain;
pub(crate) mod metrics;
pub mod plugins;
pub mod server;
pub(crate) mod status;

/// The largest request body the admin API reads: a plugin component (the pack's are
/// 60-400 KiB; 16 MiB leaves room for a component built with a language runtime inside).
pub const MAX_BODY: usize = 16 << 20;

/// What every admin response is.
pub type Reply = Response<Full<Bytes>>;

/// What the admin handlers share: the one writer (and through it the snapshot), the
/// token, and the API's own counters.
#[derive(Debug)]
pub struct Admin {
    /// The one writer: handlers read its snapshot and send it commands.
    pub(crate) control: Arc<Control>,
    /// The bearer token mutating calls must present, if any.
    token: Option<Arc<str>>,
    /// Calls refused for a wrong or missing token.
    pub unauthorized: AtomicU64,
    /// When the server started.
    pub started_at: SystemTime,
    /// The etcd cluster, when the server is in one.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Admin {
    /// The admin state of a server whose one writer is `control`.
    pub(crate) fn new(
        control: Arc<Control>,
        token: Option<Arc<str>>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Self {
        Self { control, token, unauthorized: AtomicU64::new(0), started_at: SystemTime::now(), cluster }
    }

    /// Whether `req` may make a mutating call: no token is configured, or it carries
    /// `Authorization: Bearer <token>` (compared in constant time). A refusal is counted.
    pub(crate) fn authorized<B>(&self, req: &http::Request<B>) -> bool {
        let Some(token) = &self.token else { return true };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            self.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// A JSON error: `{"error": reason}`.
pub(crate) fn error(status: StatusCode, reason: impl std::fmt::Display) -> Reply {
    json(status, &serde_json::json!({ "error": reason.to_string() }))
}

/// The whole body of `req`, at most [`MAX_BODY`] bytes; else the error reply (413 when it
/// is larger, 400 when it could not be read).
pub(crate) async fn body(req: http::Request<Incoming>) -> Result<(http::request::Parts, Bytes), Reply> {
    let (parts, body) = req.into_parts();
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok((parts, b.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than the admin API's limit of {MAX_BODY} bytes"),
        )),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))),
    }
}

/// `t` as RFC 3339 UTC, to the second (`1970-01-01T00:00:00Z`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_300_000), "2026-12-03T12:13:20Z");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
