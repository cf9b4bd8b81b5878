//! The admin listener's parts (DESIGN: "admin only renders"): the metrics exposition
//! ([`metrics`]) and the live dashboard with the JSON it polls ([`dashboard`]). They read
//! the snapshot and the writer's counters and send Commands; they own no state.

pub mod dashboard;
pub mod metrics;

use bytes::Bytes;

use crate::control::Control;

/// The `GET` routes these parts answer (`/`, `/metrics`, `/api/v1/dashboard`); `None`
/// for any other path.
pub fn get(control: &Control, path: &str) -> Option<http::Response<Bytes>> {
    match path {
        "/" => Some(dashboard::page()),
        "/metrics" => Some(metrics::response(control)),
        "/api/v1/dashboard" => Some(dashboard::response(control)),
        _ => None,
    }
}
