//! The state layer's metrics (registered as `weir_backend_*`, `weir_pool_*`,
//! `weir_plugin_*` and `weir_candidate_*`), read from the current snapshot at each
//! scrape: every backend's live atomics, every balancer's, affinity plugin's and
//! candidate's counters. Nothing is registered per backend or per plugin, so what a
//! reload adds or removes shows at the next scrape, and the data path does no work for
//! a scrape.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;

use super::{Pool, Snapshot};
use crate::core::Verdict;
use crate::metrics::{Collector, DescriptorEncoder, Family, MetricType, Metrics};
use crate::plugin::{PluginInfo, PluginStats};

/// The status classes of `BackendLive::responses`, in order.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Reads the snapshot behind `0` at each scrape.
#[derive(Debug, Clone)]
pub struct SnapshotMetrics(pub Arc<ArcSwap<Snapshot>>);

impl SnapshotMetrics {
    /// Registers the backend, pool, plugin and candidate metrics of the snapshots
    /// published behind `snapshot`.
    pub fn register(metrics: &Metrics, snapshot: Arc<ArcSwap<Snapshot>>) {
        let me = Arc::new(Self(snapshot));
        metrics.register("backend", Backends(me.clone()));
        metrics.register("pool", Pools(me.clone()));
        metrics.register("plugin", Plugins(me.clone()));
        metrics.register("candidate", Candidates(me));
    }
}

#[derive(Debug)]
struct Backends(Arc<SnapshotMetrics>);
#[derive(Debug)]
struct Pools(Arc<SnapshotMetrics>);
#[derive(Debug)]
struct Plugins(Arc<SnapshotMetrics>);
#[derive(Debug)]
struct Candidates(Arc<SnapshotMetrics>);

/// Writes one family with one sample per backend: `value(pool, backend)`.
fn per_backend(
    encoder: &mut DescriptorEncoder,
    snapshot: &Snapshot,
    name: &str,
    help: &str,
    kind: MetricType,
    value: impl Fn(&Pool, u32, &super::Backend) -> u64,
) -> std::fmt::Result {
    let mut f = Family::new(encoder, name, help, kind)?;
    for (pool_name, pool) in &snapshot.pools {
        for (id, b) in pool.view.members.iter().enumerate() {
            let labels = [("pool", pool_name.as_str()), ("backend", b.config.address.as_str())];
            let v = value(pool, id as u32, b);
            match kind {
                MetricType::Counter => f.counter(&labels, v)?,
                _ => f.gauge(&labels, v)?,
            }
        }
    }
    Ok(())
}

impl Collector for Backends {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let snapshot = self.0.0.load();
        let e = &mut encoder;
        use MetricType::{Counter, Gauge};
        per_backend(
            e,
            &snapshot,
            "requests",
            "Requests and connections placed on the backend.",
            Counter,
            |_, _, b| b.live.requests.load(Ordering::Relaxed),
        )?;
        {
            let mut f = Family::new(e, "responses", "Backend responses by status class.", Counter)?;
            for (pool_name, pool) in &snapshot.pools {
                for b in &pool.view.members {
                    for (class, n) in CLASSES.iter().zip(&b.live.responses) {
                        let labels =
                            [("pool", pool_name.as_str()), ("backend", b.config.address.as_str()), ("class", class)];
                        f.counter(&labels, n.load(Ordering::Relaxed))?;
                    }
                }
            }
        }
        per_backend(e, &snapshot, "connect_failures", "Connects to the backend that failed.", Counter, |_, _, b| {
            b.live.connect_failures.load(Ordering::Relaxed)
        })?;
        per_backend(
            e,
            &snapshot,
            "active_connections",
            "Open connections (in use, and tunnels).",
            Gauge,
            |_, _, b| u64::from(b.live.active.load(Ordering::Relaxed)),
        )?;
        per_backend(e, &snapshot, "in_flight", "Requests sent and not yet answered.", Gauge, |_, _, b| {
            u64::from(b.live.in_flight.load(Ordering::Relaxed))
        })?;
        per_backend(e, &snapshot, "websockets", "Open WebSocket tunnels.", Gauge, |_, _, b| b.live.tunnels() as u64)?;
        per_backend(e, &snapshot, "eligible", "1 if the backend takes new work.", Gauge, |p, id, _| {
            u64::from(p.view.is_eligible(id))
        })?;
        {
            let mut f = Family::new(e, "health", "1 for the backend's health verdict (a state set).", Gauge)?;
            for (pool_name, pool) in &snapshot.pools {
                for b in &pool.view.members {
                    let now = b.live.verdict();
                    for v in [Verdict::Healthy, Verdict::Degraded, Verdict::Unhealthy] {
                        let labels = [
                            ("pool", pool_name.as_str()),
                            ("backend", b.config.address.as_str()),
                            ("state", v.as_str()),
                        ];
                        f.gauge(&labels, u64::from(now == v))?;
                    }
                }
            }
        }
        {
            let mut f = Family::new(e, "latency_ewma_seconds", "Response-head latency EWMA.", Gauge)?;
            for (pool_name, pool) in &snapshot.pools {
                for b in &pool.view.members {
                    let labels = [("pool", pool_name.as_str()), ("backend", b.config.address.as_str())];
                    f.gauge(&labels, f64::from(b.live.latency_ewma_us.load(Ordering::Relaxed)) / 1e6)?;
                }
            }
        }
        let mut f = Family::new(e, "latency_seconds", "Time to the backend's response head.", MetricType::Histogram)?;
        for (pool_name, pool) in &snapshot.pools {
            for b in &pool.view.members {
                let labels = [("pool", pool_name.as_str()), ("backend", b.config.address.as_str())];
                f.histogram(&labels, &b.live.latency, 1e6)?;
            }
        }
        Ok(())
    }
}

impl Collector for Pools {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let snapshot = self.0.0.load();
        let e = &mut encoder;
        let mut f = Family::new(
            e,
            "panic",
            "1 while too few backends are usable and every one takes work.",
            MetricType::Gauge,
        )?;
        for (name, pool) in &snapshot.pools {
            f.gauge(&[("pool", name.as_str())], u64::from(pool.view.panic))?;
        }
        let mut f = Family::new(e, "eligible_backends", "Backends that take new work.", MetricType::Gauge)?;
        for (name, pool) in &snapshot.pools {
            f.gauge(&[("pool", name.as_str())], pool.view.eligible.len() as u64)?;
        }
        let mut f = Family::new(
            e,
            "generation",
            "The pool's generation (changes with membership and health).",
            MetricType::Gauge,
        )?;
        for (name, pool) in &snapshot.pools {
            f.gauge(&[("pool", name.as_str())], pool.view.generation)?;
        }
        let mut f = Family::new(
            e,
            "health_reports_dropped",
            "Live-traffic reports dropped on a full health queue.",
            MetricType::Counter,
        )?;
        for (name, pool) in &snapshot.pools {
            f.counter(&[("pool", name.as_str())], pool.view.live.reports_dropped.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

/// Every decision plugin of the snapshot: `(pool, role, plugin)`.
fn decision_plugins(snapshot: &Snapshot) -> Vec<(&str, &'static str, &PluginInfo)> {
    let mut out = Vec::new();
    for (name, pool) in &snapshot.pools {
        out.push((name.as_str(), "balancer", &**pool.balancer));
        if let Some(a) = &pool.affinity {
            out.push((name.as_str(), "affinity", &**a));
        }
        for c in [&pool.shadow, &pool.canary].into_iter().flatten() {
            out.push((name.as_str(), c.kind.as_str(), &**c.balancer));
        }
    }
    out
}

/// Writes the plugin families for `plugins`, `(pool, role, info)`: the state layer's
/// decision plugins, and (from the writer) the health plugins.
pub fn encode_plugins(encoder: &mut DescriptorEncoder, plugins: &[(&str, &str, &PluginInfo)]) -> std::fmt::Result {
    type Read = fn(&PluginStats) -> u64;
    let counters: [(&str, &str, Read); 7] = [
        ("calls", "Calls into the plugin.", |s| s.calls.get()),
        ("traps", "Traps (the instance was dropped), timeouts and memory included.", |s| {
            s.traps.load(Ordering::Relaxed)
        }),
        ("timeouts", "Calls past their deadline.", |s| s.timeouts.load(Ordering::Relaxed)),
        ("memory_limits", "Instances that hit the memory limit.", |s| s.memory_limits.load(Ordering::Relaxed)),
        ("errors", "Wrong answers (failed, ineligible or unknown backend, bad header).", |s| {
            s.errors.load(Ordering::Relaxed)
        }),
        ("fallbacks", "Decisions the built-in round robin made because the plugin failed.", |s| {
            s.fallbacks.load(Ordering::Relaxed)
        }),
        ("instantiations", "Instances created.", |s| s.instantiations.load(Ordering::Relaxed)),
    ];
    for (name, help, read) in counters {
        let mut f = Family::new(encoder, name, help, MetricType::Counter)?;
        for (pool, role, info) in plugins {
            f.counter(&[("pool", *pool), ("role", *role), ("plugin", &*info.name)], read(&info.stats))?;
        }
    }
    let help = "Time one call took (one call in 64 per thread is timed).";
    let mut f = Family::new(encoder, "decision_seconds", help, MetricType::Histogram)?;
    for (pool, role, info) in plugins {
        f.histogram(&[("pool", *pool), ("role", *role), ("plugin", &*info.name)], &info.stats.decision_ns, 1e9)?;
    }
    Ok(())
}

impl Collector for Plugins {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let snapshot = self.0.0.load();
        encode_plugins(&mut encoder, &decision_plugins(&snapshot))
    }
}

impl Collector for Candidates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let snapshot = self.0.0.load();
        let e = &mut encoder;
        let candidates: Vec<(&str, &super::Candidate)> = snapshot
            .pools
            .iter()
            .flat_map(|(n, p)| [&p.shadow, &p.canary].into_iter().flatten().map(move |c| (n.as_str(), c)))
            .collect();
        type Read = fn(&super::CandidateStats) -> u64;
        let counters: [(&str, &str, Read); 3] = [
            ("decisions", "Decisions the candidate was asked about (shadow) or given (canary).", |s| {
                s.asked.load(Ordering::Relaxed)
            }),
            ("agreements", "Shadow: picks equal to where the request went. Canary: picks that stood.", |s| {
                s.agreed.load(Ordering::Relaxed)
            }),
            ("failures", "Decisions the candidate failed.", |s| s.failed.load(Ordering::Relaxed)),
        ];
        for (name, help, read) in counters {
            let mut f = Family::new(e, name, help, MetricType::Counter)?;
            for (pool, c) in &candidates {
                f.counter(
                    &[("pool", *pool), ("kind", c.kind.as_str()), ("plugin", &*c.balancer.name)],
                    read(&c.stats),
                )?;
            }
        }
        {
            let mut f = Family::new(e, "share_percent", "The candidate's share of the decisions.", MetricType::Gauge)?;
            for (pool, c) in &candidates {
                let labels = [("pool", *pool), ("kind", c.kind.as_str()), ("plugin", &*c.balancer.name)];
                f.gauge(&labels, c.config.percent())?;
            }
        }
        let mut f = Family::new(
            e,
            "picks",
            "Decisions a candidate sent (canary) or would have sent (shadow) to each backend.",
            MetricType::Counter,
        )?;
        for (pool_name, pool) in &snapshot.pools {
            for (kind, on) in [("shadow", pool.shadow.is_some()), ("canary", pool.canary.is_some())] {
                if !on {
                    continue;
                }
                for b in &pool.view.members {
                    let n = if kind == "shadow" { &b.live.shadow_picks } else { &b.live.canary_picks };
                    let labels = [("pool", pool_name.as_str()), ("kind", kind), ("backend", b.config.address.as_str())];
                    f.counter(&labels, n.load(Ordering::Relaxed))?;
                }
            }
        }
        Ok(())
    }
}
