//! `GET /metrics`: every metric the subsystems registered ([`crate::metrics`]), in the
//! OpenMetrics text format Prometheus scrapes. Rendering reads the live atomics; it
//! changes nothing and takes no lock the data path takes.

use bytes::Bytes;

use crate::control::Control;
use crate::metrics::CONTENT_TYPE;

/// The `GET /metrics` response.
pub fn response(control: &Control) -> http::Response<Bytes> {
    let mut res = http::Response::new(Bytes::from(control.metrics().render()));
    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE));
    res
}
