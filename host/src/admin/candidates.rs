//! A pool's shadow and canary balancers through the API: `PUT
//! /api/v1/pools/{pool}/{shadow,canary}` sets one (JSON `{plugin, config, percent}`;
//! `percent` is the shadow's sample or the canary's share; `memory_limit_mib` and
//! `call_timeout_ms` its own limits, as in the file), `DELETE` removes it, `POST
//! .../promote` makes it the live balancer. Each is one Command to the one writer, so
//! the candidate is compiled, instantiated and configured before anything changes, and
//! a refusal answers 4xx with the reason while the pool keeps what it had.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{Admin, Reply, error};
use crate::config::{CandidateConfig, PluginRef, PluginSource};
use crate::control::{Command, ControlError};
use crate::state::CandidateKind;

/// What `PUT` takes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    /// A pack name or a path to a `.wasm` on the server.
    plugin: String,
    /// The plugin's options. Default `{}`.
    #[serde(default)]
    config: Option<serde_json::Map<String, serde_json::Value>>,
    /// The share of decisions, in percent (above 0, at most 100).
    percent: f64,
    /// The candidate's memory limit per instance, MiB (as a plugin entry's; default
    /// `[plugins] memory_limit_mib`).
    #[serde(default)]
    memory_limit_mib: Option<u64>,
    /// The deadline of one of its decisions (as a plugin entry's; default `[plugins]
    /// call_timeout_ms`).
    #[serde(default)]
    call_timeout_ms: Option<crate::config::FileDuration>,
}

/// `PUT /api/v1/pools/{pool}/{kind}`.
pub(crate) async fn set(admin: &Admin, req: Request<Incoming>, pool: &str, kind: CandidateKind) -> Reply {
    let (_, bytes) = match super::body(req).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let body: Body = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("expected {{plugin, config, percent}}: {e}")),
    };
    if !(body.percent > 0.0 && body.percent <= 100.0) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("percent {} is out of range (above 0, at most 100)", body.percent),
        );
    }
    let limits = match super::plugins::limits(body.memory_limit_mib, body.call_timeout_ms.map(|t| t.0), true) {
        Ok(l) => l,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let config_json = serde_json::Value::Object(body.config.unwrap_or_default()).to_string();
    let plugin = PluginRef {
        source: PluginSource::parse(&body.plugin, std::path::Path::new(".")),
        config_json,
        at: None,
        config_at: None,
        limits,
    };
    let candidate = CandidateConfig::new(plugin, body.percent);
    let detail = format!("{kind} {} on {}%", body.plugin, candidate.percent());
    apply(admin, Command::SetCandidate { pool: pool.into(), kind, candidate: Some(candidate) }, pool, detail).await
}

/// `DELETE /api/v1/pools/{pool}/{kind}`.
pub(crate) async fn remove(admin: &Admin, pool: &str, kind: CandidateKind) -> Reply {
    apply(admin, Command::SetCandidate { pool: pool.into(), kind, candidate: None }, pool, format!("{kind} removed"))
        .await
}

/// `POST /api/v1/pools/{pool}/{kind}/promote`.
pub(crate) async fn promote(admin: &Admin, pool: &str, kind: CandidateKind) -> Reply {
    // The writer records the promotion itself (counter and history).
    let started = std::time::Instant::now();
    match admin.control.apply(vec![Command::Promote { pool: pool.into(), kind }]).await {
        Ok(_) => {
            let snapshot = admin.control.ctx.snapshot.load();
            let balancer = snapshot.pools.get(pool).map(|p| p.balancer.name.to_string());
            super::json(
                StatusCode::OK,
                &json!({ "pool": pool, "promoted": kind.as_str(), "balancer": balancer, "took_ms": started.elapsed().as_secs_f64() * 1e3 }),
            )
        }
        Err(e) => refused(e),
    }
}

async fn apply(admin: &Admin, command: Command, pool: &str, detail: String) -> Reply {
    let started = std::time::Instant::now();
    let counters = admin.control.counters();
    match admin.control.apply(vec![command]).await {
        Ok(_) => {
            counters.record("candidate", pool, detail.clone(), true);
            super::json(
                StatusCode::OK,
                &json!({ "pool": pool, "applied": detail, "took_ms": started.elapsed().as_secs_f64() * 1e3 }),
            )
        }
        Err(e) => {
            counters.record("candidate", pool, format!("{detail}: {e}"), false);
            refused(e)
        }
    }
}

/// A refused command: 404 for a pool or candidate that does not exist, else 422.
fn refused(e: ControlError) -> Reply {
    let status = match e {
        ControlError::NoSuchPool(_) | ControlError::NoCandidate { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, e)
}
