//! The writer's metrics: its own counters (`weir_control_*`: reloads, swaps, rollbacks,
//! drains, promotions), its listeners' (`weir_listener_*`) and its pools' health
//! plugins' (`weir_health_plugin_*`), read at each scrape. Also the recent history of
//! changes the dashboard shows.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError, Weak};
use std::time::SystemTime;

use super::Control;
use crate::metrics::{Collector, Counter, DescriptorEncoder, Family, MetricType, Metrics, NO_LABELS};

/// Most entries [`ControlStats::history`] keeps.
pub const HISTORY: usize = 64;

/// What the one writer did, counted. The admin API bumps the counters of the calls it
/// serves (`swaps`, `drains`, ...) and records them in the history; reloads and
/// promotions are counted here.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Reloads applied (SIGHUP, `POST /api/v1/reload`, file watch).
    pub reloads: Counter,
    /// Reloads refused (nothing changed).
    pub reload_failures: Counter,
    /// Plugin swaps applied.
    pub swaps: Counter,
    /// Plugin swaps refused (the old plugin kept serving).
    pub swap_failures: Counter,
    /// Rollbacks applied.
    pub rollbacks: Counter,
    /// Backends drained.
    pub drains: Counter,
    /// Backends undrained.
    pub undrains: Counter,
    /// Candidates promoted to live balancer.
    pub promotions: Counter,
    /// Recent changes, newest last, at most [`HISTORY`].
    history: Mutex<VecDeque<Event>>,
}

/// One change in [`ControlStats::history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When (wall clock).
    pub at: SystemTime,
    /// What kind: `reload`, `swap`, `rollback`, `drain`, `promote`, ...
    pub kind: &'static str,
    /// The pool, if one.
    pub pool: String,
    /// What changed, for people (e.g. `balancer round-robin -> p2c`).
    pub detail: String,
    /// Whether it was applied.
    pub ok: bool,
}

impl ControlStats {
    /// Records a change in the history (the oldest entry goes past [`HISTORY`]).
    pub fn record(&self, kind: &'static str, pool: &str, detail: impl Into<String>, ok: bool) {
        let mut h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(Event { at: SystemTime::now(), kind, pool: pool.to_owned(), detail: detail.into(), ok });
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<Event> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}

/// Registers the writer's metrics; they read `control` while it lives.
pub(super) fn register(metrics: &Metrics, control: Weak<Control>) {
    metrics.register("control", Counters(control.clone()));
    metrics.register("listener", Listeners(control.clone()));
    metrics.register("health_plugin", HealthPlugins(control));
}

#[derive(Debug)]
struct Counters(Weak<Control>);
#[derive(Debug)]
struct Listeners(Weak<Control>);
#[derive(Debug)]
struct HealthPlugins(Weak<Control>);

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(control) = self.0.upgrade() else { return Ok(()) };
        let s = &control.counters;
        let all: [(&str, &str, &Counter); 8] = [
            ("reloads", "Reloads applied.", &s.reloads),
            ("reload_failures", "Reloads refused (nothing changed).", &s.reload_failures),
            ("swaps", "Plugin swaps applied.", &s.swaps),
            ("swap_failures", "Plugin swaps refused (the old plugin kept serving).", &s.swap_failures),
            ("rollbacks", "Rollbacks applied.", &s.rollbacks),
            ("drains", "Backends drained.", &s.drains),
            ("undrains", "Backends undrained.", &s.undrains),
            ("promotions", "Candidates promoted to live balancer.", &s.promotions),
        ];
        for (name, help, c) in all {
            Family::new(&mut encoder, name, help, MetricType::Counter)?.counter(&NO_LABELS, c.get())?;
        }
        let ctx = &control.ctx;
        Family::new(
            &mut encoder,
            "client_connections",
            "Open client connections (every listener).",
            MetricType::Gauge,
        )?
        .gauge(&NO_LABELS, ctx.connections.open() as u64)?;
        Family::new(
            &mut encoder,
            "tunnels",
            "Open tunnels: WebSockets, and tcp and tls-passthrough connections joined to their backend.",
            MetricType::Gauge,
        )?
        .gauge(&NO_LABELS, ctx.tunnels.len() as u64)?;
        let mut f = Family::new(
            &mut encoder,
            "worker_connections",
            "Client connections served, by worker thread (accepted by it or handed to it).",
            MetricType::Counter,
        )?;
        for (index, worker) in control.workers.each.iter().enumerate() {
            let index = index.to_string();
            f.counter(&[("worker", index.as_str())], worker.accepted.load(Ordering::Relaxed))?;
        }
        // Counted only with more than one worker (one has nobody to hand connections to).
        if control.workers.each.len() > 1 {
            let mut f = Family::new(
                &mut encoder,
                "worker_serving",
                "Client connections and WebSocket tunnels each worker thread serves now (with more than one worker).",
                MetricType::Gauge,
            )?;
            for (index, worker) in control.workers.each.iter().enumerate() {
                f.gauge(&[("worker", index.to_string().as_str())], worker.live.now() as u64)?;
            }
        }
        Ok(())
    }
}

impl Collector for Listeners {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(control) = self.0.upgrade() else { return Ok(()) };
        let stats: Vec<_> = control
            .stats
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        type Read = fn(&crate::net::listen::ListenerStats) -> u64;
        let all: [(&str, &str, Read); 5] = [
            ("connections", "Connections accepted.", |s| s.accepted.load(Ordering::Relaxed)),
            ("refused", "Connections closed for what the client sent or did not send in time.", |s| {
                s.refused.load(Ordering::Relaxed)
            }),
            ("unserved", "tcp connections no backend could take.", |s| s.unserved.load(Ordering::Relaxed)),
            ("tls_handshakes", "TLS handshakes completed.", |s| s.tls_handshakes.load(Ordering::Relaxed)),
            ("tls_handshake_failures", "TLS handshakes that failed or timed out.", |s| {
                s.tls_failures.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, read) in all {
            let mut f = Family::new(&mut encoder, name, help, MetricType::Counter)?;
            for (listener, s) in &stats {
                f.counter(&[("listener", listener.as_str())], read(s))?;
            }
        }
        Ok(())
    }
}

impl Collector for HealthPlugins {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(control) = self.0.upgrade() else { return Ok(()) };
        let snapshot = control.ctx.snapshot.load();
        let held: Vec<(&str, std::sync::Arc<crate::plugin::Health>)> = snapshot
            .pools
            .keys()
            .flat_map(|name| control.health_plugins(name).into_iter().map(move |h| (name.as_str(), h)))
            .collect();
        let plugins: Vec<(&str, &str, &crate::plugin::PluginInfo)> =
            held.iter().map(|(pool, h)| (*pool, "health", &***h)).collect();
        // Under `weir_health_plugin_*`, the same families as the decision plugins'.
        crate::state::encode_plugins(&mut encoder, &plugins)
    }
}
