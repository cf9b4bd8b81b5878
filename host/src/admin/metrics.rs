//! `GET /metrics`: every metric the subsystems registered ([`crate::metrics`]), in the
//! OpenMetrics text format Prometheus scrapes. Rendering reads the live atomics; it
//! changes nothing and takes no lock the data path takes.

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{Admin, Reply};
use crate::metrics::CONTENT_TYPE;

/// `GET /metrics`.
pub(crate) async fn get(admin: &Admin, _req: Request<Incoming>) -> Reply {
    let mut res = Response::new(Full::new(Bytes::from(admin.control.metrics().render())));
    res.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE));
    res
}
