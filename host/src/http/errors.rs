//! Every response weir makes itself: a [`ProxyError`] says what went wrong and where it
//! came from ([`Origin`]), and the status, the one-line `text/plain` body and the log
//! fields all derive from it (DESIGN convention 7).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::ProxyBody;
use super::upstream::ConnectError;
use crate::core::Origin;

/// A failure weir answers itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The request's `Host` is missing, repeated or malformed, or its target's authority
    /// is (RFC 9112 §3.2).
    #[error("{0}")]
    Host(#[from] HostError),
    /// weir lost track of the request (a bug; never expected).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The route names a pool the snapshot does not have.
    #[error("pool `{0}` is not configured")]
    NoPool(String),
    /// No backend of the pool can take the request.
    #[error("no eligible backend in pool `{0}`")]
    NoBackend(String),
    /// The balancer failed and the pool's policy is `reject`.
    #[error("the balancer of pool `{0}` failed and on_plugin_error is \"reject\"")]
    Rejected(String),
    /// Connecting failed on every backend tried.
    #[error("cannot connect to a backend of pool `{pool}`: {source}")]
    Connect {
        /// The pool.
        pool: String,
        /// The last failure.
        source: ConnectError,
    },
    /// The client's request body could not be read (malformed, or cut short).
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
    /// The backend failed after the request was sent.
    #[error("backend {backend} failed: {source}")]
    Upstream {
        /// The backend's address.
        backend: String,
        /// Why.
        source: hyper::Error,
    },
    /// The backend did not answer in time.
    #[error("backend {backend} did not answer in {after:?}")]
    Timeout {
        /// The backend's address.
        backend: String,
        /// The response timeout.
        after: std::time::Duration,
    },
}

/// What is wrong with a request's host (RFC 9112 §3.2, RFC 9110 §4.2).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostError {
    /// An HTTP/1.1 request without `Host`.
    #[error("the request has no Host header")]
    Missing,
    /// More than one `Host` line.
    #[error("the request has {count} Host headers; one is allowed")]
    Repeated {
        /// How many.
        count: usize,
    },
    /// A `Host` that is not `host[:port]`.
    #[error("the Host header {value:?} is not host[:port]")]
    Malformed {
        /// The value as received (shortened).
        value: String,
    },
    /// An absolute-form target whose authority is not `host[:port]` (userinfo included).
    #[error("the request target's authority {authority:?} is not host[:port]")]
    Target {
        /// The authority as received (shortened).
        authority: String,
    },
}

impl ProxyError {
    /// Whose fault it is.
    pub(crate) fn origin(&self) -> Origin {
        match self {
            ProxyError::Host(_) | ProxyError::ClientBody(_) => Origin::Client,
            // weir itself, as configured, could not serve it.
            ProxyError::NoPool(_) | ProxyError::NoBackend(_) | ProxyError::Internal(_) => Origin::Config,
            ProxyError::Rejected(_) => Origin::Plugin,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } | ProxyError::Timeout { .. } => Origin::Upstream,
        }
    }

    /// The status the client gets.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::Host(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoPool(_) | ProxyError::NoBackend(_) | ProxyError::Rejected(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response: the status and `weir: <what went wrong>` on one line. Logged with
    /// its origin.
    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let origin = self.origin();
        // A backend's failure is the operator's business; the others are the client's, or
        // were logged where they arose (plugins), or would flood the log (no backend).
        match origin {
            Origin::Upstream => {
                tracing::warn!(origin = %origin, status = status.as_u16(), error = %self, "request failed")
            }
            _ => tracing::debug!(origin = %origin, status = status.as_u16(), error = %self, "request failed"),
        }
        let mut res = Response::new(ProxyBody::Local(Full::new(Bytes::from(format!("weir: {self}\n")))));
        *res.status_mut() = status;
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if origin == Origin::Client {
            // What else the client sends on this connection cannot be trusted either.
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}
