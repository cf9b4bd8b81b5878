//! `POST /api/v1/pools/{pool}/backends/{address}/drain` and `.../undrain`: an operator
//! takes a backend out of the rotation (no new requests or connections; its WebSockets
//! get close frames spread over the pool's `drain_spread_ms`, cut at `drain_deadline_ms`;
//! its idle upstream connections close; requests in flight finish) and puts it back. A
//! drain is live backend state: it survives reloads while the backend stays in its pool.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{Admin, Reply, error, json as reply};
use crate::control::ControlError;

/// Drains or undrains `backend` of `pool`.
pub(crate) async fn post(admin: &Admin, req: Request<Incoming>, pool: &str, backend: &str, undrain: bool) -> Reply {
    if let Err(r) = super::body(req).await {
        return r;
    }
    match admin.control.drain(pool, backend, undrain).await {
        Ok(applied) => reply(
            StatusCode::OK,
            &json!({
                "pool": pool,
                "backend": backend,
                "drained": !undrain,
                "changed": applied.drains > 0,
                "tunnels_drained": applied.tunnels_drained,
                "idle_closed": applied.idle_closed,
            }),
        ),
        Err(e @ (ControlError::NoSuchPool(_) | ControlError::NoSuchBackend { .. })) => error(StatusCode::NOT_FOUND, e),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}
