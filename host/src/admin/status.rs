//! `GET /api/v1/status`: what the server is doing, read from the current snapshot and the
//! live counters beside it (nothing is locked on the data path to answer it); and
//! `POST /api/v1/reload`, the file read again through the one writer.

use std::sync::atomic::Ordering;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Admin, Reply, error, json as reply, rfc3339};
use crate::control::ReloadError;
use crate::plugin::PluginInfo;
use crate::state::Pool;

/// `GET /api/v1/status`.
pub(crate) async fn get(admin: &Admin, _req: Request<Incoming>) -> Reply {
    reply(StatusCode::OK, &status(admin))
}

/// The whole status document.
pub(crate) fn status(admin: &Admin) -> Value {
    let control = &admin.control;
    let snapshot = control.ctx.snapshot.load_full();
    let listeners: Vec<Value> = control
        .listeners()
        .into_iter()
        .map(|(name, addr)| {
            let config = snapshot.listeners.get(&name);
            let stats = control.listener_stats(&name);
            let count = |f: fn(&crate::net::listen::ListenerStats) -> u64| stats.as_deref().map_or(0, f);
            json!({
                "name": name,
                "address": addr.to_string(),
                "protocol": config.map(|c| c.protocol.as_str()),
                "pool": config.map(|c| c.pool.as_str()),
                "tls": config.is_some_and(|c| c.tls.is_some()),
                "accepted": count(|s| s.accepted.load(Ordering::Relaxed)),
                "refused": count(|s| s.refused.load(Ordering::Relaxed)),
                "unserved": count(|s| s.unserved.load(Ordering::Relaxed)),
            })
        })
        .collect();
    let pools: Vec<Value> = snapshot.pools.values().map(|p| pool(admin, p)).collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339(admin.started_at),
        "uptime_s": admin.started_at.elapsed().map_or(0, |d| d.as_secs()),
        "config_file": snapshot_source(admin),
        "admin": { "unauthorized": admin.unauthorized.load(Ordering::Relaxed) },
        "cluster": admin.cluster.as_deref().map(cluster),
        "listeners": listeners,
        "pools": pools,
    })
}

/// `cluster`: this instance's etcd session and what it replicated.
fn cluster(c: &crate::cluster::Cluster) -> Value {
    let session = c.session();
    let s = &c.stats;
    json!({
        "node": c.config.node,
        "etcd": c.config.etcd,
        "prefix": c.config.prefix,
        "connected": session.connected,
        "since": session.since.map(rfc3339),
        "last_error": session.last_error,
        "reconnects": s.reconnects.get(),
        "stick": {
            "published": s.stick_published.get(),
            "received": s.stick_received.get(),
            "adopted": s.stick_adopted.get(),
            "unpublished": s.stick_unpublished.get(),
            "dropped": c.dropped(),
            "leases": s.leases.get(),
        },
        "pools": c.pools().into_iter().map(|(name, p)| (name, json!({
            "key": p.key,
            "revision": p.revision,
            "applied": p.applied,
            "error": p.error,
            "at": rfc3339(p.at),
        }))).collect::<serde_json::Map<String, Value>>(),
        "swaps": c.swaps().into_iter().map(|(name, w)| (name, json!({
            "key": w.key,
            "revision": w.revision,
            "plugins": w.plugins,
            "by": w.by,
            "applied": w.applied,
            "error": w.error,
            "at": rfc3339(w.at),
        }))).collect::<serde_json::Map<String, Value>>(),
    })
}

fn snapshot_source(admin: &Admin) -> Option<String> {
    admin.control.config_file_now().map(|p| p.display().to_string())
}

/// One pool: its backends with health, load and request counts, and its plugins.
fn pool(admin: &Admin, pool: &Pool) -> Value {
    let view = &pool.view;
    let backends: Vec<Value> = view
        .members
        .iter()
        .enumerate()
        .map(|(id, m)| {
            let live = &m.live;
            let health = live.health_status();
            json!({
                "id": id,
                "address": m.config.address,
                "weight": m.config.weight,
                "discovered": m.config.discovered,
                "eligible": view.is_eligible(id as u32),
                "drained": live.is_drained(),
                "health": {
                    "verdict": health.verdict.as_str(),
                    "reason": health.reason,
                    "since": rfc3339(health.since),
                },
                "active": live.active.load(Ordering::Relaxed),
                "in_flight": live.in_flight.load(Ordering::Relaxed),
                "load": live.load(),
                "requests": live.requests.load(Ordering::Relaxed),
                "connect_failures": live.connect_failures.load(Ordering::Relaxed),
                "latency_ewma_us": live.latency_ewma_us.load(Ordering::Relaxed),
                "tunnels": live.tunnels(),
            })
        })
        .collect();
    let health: Vec<Value> =
        admin.control.health_plugins(&pool.config.name).iter().map(|h| plugin(h, h.world())).collect();
    json!({
        "name": pool.config.name,
        "generation": view.generation,
        "panic": view.panic,
        "eligible": view.eligible.len(),
        "backends": backends,
        "balancer": plugin(&pool.balancer, "balancer"),
        "affinity": pool.affinity.as_ref().map(|a| plugin(a, "affinity")),
        "health": health,
        "shadow": pool.shadow.as_ref().map(|c| super::dashboard::candidate(pool, c)),
        "canary": pool.canary.as_ref().map(|c| super::dashboard::candidate(pool, c)),
        "discovery": admin.control.discovery(&pool.config.name),
    })
}

/// One loaded plugin: identity and counters.
pub(crate) fn plugin(info: &PluginInfo, world: &str) -> Value {
    let s = &info.stats;
    json!({
        "name": &*info.name,
        "world": world,
        "sha256": hex(&info.sha256),
        "size": info.size,
        "loaded_at": rfc3339(info.loaded_at),
        "calls": s.calls.get(),
        "traps": s.traps.load(Ordering::Relaxed),
        "timeouts": s.timeouts.load(Ordering::Relaxed),
        "errors": s.errors.load(Ordering::Relaxed),
        "fallbacks": s.fallbacks.load(Ordering::Relaxed),
    })
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `POST /api/v1/reload`: the config file read again and applied, as SIGHUP does.
pub(crate) async fn reload(admin: &Admin, req: Request<Incoming>) -> Reply {
    // A body is not needed, but one larger than the limit is refused like anywhere else.
    if let Err(r) = super::body(req).await {
        return r;
    }
    let started = std::time::Instant::now();
    match admin.control.reload_file().await {
        Ok(applied) => {
            tracing::info!(?applied, "reloaded (admin API)");
            reply(
                StatusCode::OK,
                &json!({
                    "reloaded": true,
                    "took_ms": started.elapsed().as_secs_f64() * 1e3,
                    "pools_changed": applied.pools,
                    "pools_removed": applied.pools_removed,
                    "listeners_bound": applied.listeners_bound,
                    "listeners_changed": applied.listeners_changed,
                    "listeners_closed": applied.listeners_closed,
                    "backends_retired": applied.backends_retired,
                    "tls_reloaded": applied.tls_reloaded,
                    "tls_failed": applied.tls_failed,
                    "tls_errors": applied.tls_errors,
                }),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed (admin API); config unchanged");
            let status = match e {
                ReloadError::NoFile => StatusCode::CONFLICT,
                ReloadError::Config(_) | ReloadError::Control(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            error(status, e)
        }
    }
}
