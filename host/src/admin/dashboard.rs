//! The live dashboard: `GET /` is one self-contained page ([`PAGE`]: its plots are drawn
//! on canvases by its own script, nothing is fetched from elsewhere) that polls
//! `GET /api/v1/dashboard` ([`json`]) every second and keeps the last five minutes in the
//! browser: traffic share per backend, decisions per second and decision-time
//! percentiles, health and eligibility, open WebSockets per backend, plugin traps and
//! fallbacks, the history of changes, and each shadow's agreement (a canary's share).
//!
//! The JSON holds counters as they are now; the page turns them into rates. It is built
//! from the current snapshot and the writer's counters, like the metrics, so serving it
//! costs the data path nothing.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Admin, Reply};
use crate::control::Control;
use crate::plugin::PluginInfo;
use crate::state::{Candidate, Pool};

/// The page.
pub(crate) const PAGE: &str = include_str!("dashboard.html");

/// `GET /`: the page.
pub(crate) async fn page(_admin: &Admin, _req: Request<Incoming>) -> Reply {
    let mut res = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
    // Only this page's own script and style, and requests to this origin.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    );
    res
}

/// `GET /api/v1/dashboard`: what the page plots, now.
pub(crate) async fn get(admin: &Admin, _req: Request<Incoming>) -> Reply {
    super::json(StatusCode::OK, &json(&admin.control))
}

/// What the page plots, now.
pub(crate) fn json(control: &Control) -> Value {
    let snapshot = control.ctx.snapshot.load();
    let pools: Vec<Value> = snapshot.pools.values().map(|p| pool(control, p)).collect();
    let history: Vec<Value> = control
        .counters()
        .history()
        .into_iter()
        .map(|e| {
            let at_ms = e.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            json!({ "at_ms": at_ms, "kind": e.kind, "pool": e.pool, "detail": e.detail, "ok": e.ok })
        })
        .collect();
    json!({
        "pools": pools,
        "history": history,
        "client_connections": control.ctx.connections.open(),
        "tunnels": control.ctx.tunnels.len(),
    })
}

fn pool(control: &Control, p: &Pool) -> Value {
    let backends: Vec<Value> = p
        .view
        .members
        .iter()
        .enumerate()
        .map(|(id, b)| {
            let l = &b.live;
            let health = l.health_status();
            json!({
                "address": b.config.address,
                "weight": b.config.weight,
                "requests": l.requests.load(Ordering::Relaxed),
                "responses": l.responses.iter().map(|r| r.load(Ordering::Relaxed)).collect::<Vec<_>>(),
                "connect_failures": l.connect_failures.load(Ordering::Relaxed),
                "active": l.active.load(Ordering::Relaxed),
                "in_flight": l.in_flight.load(Ordering::Relaxed),
                "websockets": l.tunnels(),
                "latency_ewma_us": l.latency_ewma_us.load(Ordering::Relaxed),
                "health": health.verdict.as_str(),
                "reason": health.reason,
                "eligible": p.view.is_eligible(id as u32),
                "drained": l.is_drained(),
            })
        })
        .collect();
    let mut plugins = vec![plugin("balancer", &p.balancer)];
    if let Some(a) = &p.affinity {
        plugins.push(plugin("affinity", a));
    }
    for c in [&p.shadow, &p.canary].into_iter().flatten() {
        plugins.push(plugin(c.kind.as_str(), &c.balancer));
    }
    for h in control.health_plugins(&p.config.name) {
        plugins.push(plugin("health", &h));
    }
    json!({
        "name": p.config.name,
        "generation": p.view.generation,
        "panic": p.view.panic,
        "backends": backends,
        "plugins": plugins,
        "shadow": p.shadow.as_ref().map(|c| candidate(p, c)),
        "canary": p.canary.as_ref().map(|c| candidate(p, c)),
    })
}

fn plugin(role: &str, info: &PluginInfo) -> Value {
    let s = &info.stats;
    let us = |q| s.decision_ns.quantile(q).map(|ns| ns as f64 / 1000.0);
    json!({
        "role": role,
        "plugin": &*info.name,
        "calls": s.calls.get(),
        "traps": s.traps.load(Ordering::Relaxed),
        "timeouts": s.timeouts.load(Ordering::Relaxed),
        "fallbacks": s.fallbacks.load(Ordering::Relaxed),
        "errors": s.errors.load(Ordering::Relaxed),
        "p50_us": us(0.5),
        "p99_us": us(0.99),
    })
}

/// A pool's candidate as JSON (also for the status API): plugin, share, counts, picks
/// by backend id.
pub(crate) fn candidate(p: &Pool, c: &Candidate) -> Value {
    let s = &c.stats;
    let picks: Vec<u64> = p
        .view
        .members
        .iter()
        .map(|m| match c.kind {
            crate::state::CandidateKind::Shadow => m.live.shadow_picks.load(Ordering::Relaxed),
            crate::state::CandidateKind::Canary => m.live.canary_picks.load(Ordering::Relaxed),
        })
        .collect();
    json!({
        "plugin": &*c.balancer.name,
        "percent": c.config.percent(),
        "asked": s.asked.load(Ordering::Relaxed),
        "agreed": s.agreed.load(Ordering::Relaxed),
        "failed": s.failed.load(Ordering::Relaxed),
        "agreement": s.agreement(),
        "picks": picks,
    })
}
