//! The runtime snapshot: every pool with its backends, its eligible set and its loaded
//! plugins, built from a [`Config`] and published whole behind one `ArcSwap`.
//!
//! A snapshot is immutable. What changes per request lives beside it in atomics
//! ([`BackendLive`]: active connections, in-flight requests, latency EWMA, idle upstream
//! connections), shared by address with the next snapshot so a rebuild keeps them
//! (STYLE rule 3). Plugins read the pool through [`PoolView`], pinned for the duration of
//! one call so `members`, `eligible` and `generation` always agree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::{BackendConfig, Config, OnPluginError, PluginSource, PoolConfig};
use crate::plugin::{Balancer, CallError, LoadError, PickRequest, PluginRuntime};

/// Generations never repeat, across pools and rebuilds.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Live, per-backend state that survives snapshot rebuilds.
#[derive(Debug)]
pub struct BackendLive {
    /// The pool-wide figures this backend adds to.
    pool: Arc<PoolLive>,
    /// Open connections (upstream HTTP connections in use, tunnels).
    pub active: AtomicU32,
    /// Requests sent and not yet answered.
    pub in_flight: AtomicU32,
    /// Response-head latency EWMA in µs (0 = no sample yet).
    pub latency_ewma_us: AtomicU32,
    /// Requests (or connections) placed on this backend.
    pub requests: AtomicU64,
    /// Connect failures.
    pub connect_failures: AtomicU64,
    /// Idle upstream keep-alive connections.
    pub(crate) idle: Mutex<Vec<crate::proxy::upstream::IdleConn>>,
}

impl BackendLive {
    fn new(pool: Arc<PoolLive>) -> Self {
        Self {
            pool,
            active: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            latency_ewma_us: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A connection to this backend opened (or was taken from the idle stack).
    pub fn open(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.pool.total_load.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection opened with [`BackendLive::open`] closed (or went idle).
    pub fn close(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.pool.total_load.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request was sent to this backend.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.pool.total_load.fetch_add(1, Ordering::Relaxed);
    }

    /// A request sent with [`BackendLive::request_started`] got its answer (or failed).
    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.pool.total_load.fetch_sub(1, Ordering::Relaxed);
    }

    /// Folds one latency sample into the EWMA (weight 1/8 for the new sample).
    pub fn observe_latency(&self, micros: u32) {
        let _ = self.latency_ewma_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 { micros.max(1) } else { ((u64::from(old) * 7 + u64::from(micros)) / 8).max(1) as u32 })
        });
    }
}

/// One backend in one snapshot.
#[derive(Debug)]
pub struct Backend {
    /// What the config said.
    pub config: BackendConfig,
    /// Live state, shared across snapshots by address.
    pub live: Arc<BackendLive>,
}

/// Live figures of a whole pool, shared across snapshots and plugins: the counters of
/// `pool.counter`/`pool.counter-next`, the fallback round robin and the pool's total load.
#[derive(Debug, Default)]
pub struct PoolLive {
    /// Counter names; a counter's handle is its index here.
    names: Mutex<Vec<Box<str>>>,
    /// Counter values by handle; replaced (never mutated) when a counter is added, so
    /// `counter-next` takes no lock.
    values: ArcSwap<Vec<Arc<AtomicU64>>>,
    /// Position of the built-in fallback round robin.
    fallback: AtomicU64,
    /// Sum of `active + in_flight` over the pool's backends.
    pub total_load: AtomicU64,
}

impl PoolLive {
    /// The handle of the named counter, created at 0 if new.
    pub fn counter(&self, name: &str) -> u32 {
        let mut names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = names.iter().position(|n| &**n == name) {
            return i as u32;
        }
        names.push(name.into());
        let mut values = (**self.values.load()).clone();
        values.push(Arc::new(AtomicU64::new(0)));
        self.values.store(Arc::new(values));
        (names.len() - 1) as u32
    }

    /// Returns counter `id`'s value and advances it; 0 for an unknown handle.
    pub fn next(&self, id: u32) -> u64 {
        self.values.load().get(id as usize).map_or(0, |c| c.fetch_add(1, Ordering::Relaxed))
    }

    /// Returns the fallback round robin's position and advances it.
    fn next_fallback(&self) -> u64 {
        self.fallback.fetch_add(1, Ordering::Relaxed)
    }
}

/// What a plugin sees of its pool during one call.
#[derive(Debug)]
pub struct PoolView {
    /// Pool name.
    pub name: Arc<str>,
    /// Changes with membership, weights or health; never repeats.
    pub generation: u64,
    /// All backends, config order; index = backend id.
    pub members: Vec<Backend>,
    /// Ids of backends that may take new work, ascending.
    pub eligible: Vec<u32>,
    /// `eligible_mask[id]` iff `eligible` contains `id`.
    eligible_mask: Vec<bool>,
    /// `max_connections` by id (0 = no limit), packed so the per-decision check touches
    /// 4 bytes, not a whole backend record.
    limits: Vec<u32>,
    /// Pool-wide live figures (counters, total load).
    pub live: Arc<PoolLive>,
}

impl PoolView {
    /// Whether backend `id` may take new work.
    pub fn is_eligible(&self, id: u32) -> bool {
        self.eligible_mask.get(id as usize).copied().unwrap_or(false)
    }

    /// The live state of backend `id`, if it exists.
    pub fn live(&self, id: u32) -> Option<&BackendLive> {
        self.members.get(id as usize).map(|b| &*b.live)
    }
}

/// The outcome of placing one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Send it to this backend id.
    Backend(u32),
    /// No backend can take it (503).
    NoBackend,
    /// The plugin failed and the pool's policy is `reject` (503).
    Rejected,
}

/// One pool in one snapshot.
#[derive(Debug)]
pub struct Pool {
    /// What the config said.
    pub config: PoolConfig,
    /// The plugin-visible view.
    pub view: Arc<PoolView>,
    /// The balancer.
    pub balancer: Arc<Balancer>,
}

impl Pool {
    /// Places a request: asks the balancer, and applies `on_plugin_error` when it fails.
    /// `avoid` is a backend that just failed to connect; if the plugin picks it again the
    /// next eligible backend is used instead. Gives the request back for the I/O.
    pub fn place(&self, req: PickRequest, avoid: Option<u32>) -> (PickRequest, Placement) {
        let view = &self.view;
        if view.eligible.is_empty() {
            return (req, Placement::NoBackend);
        }
        let (req, outcome) = self.balancer.pick(view, req);
        let placement = match outcome {
            Ok(id) if Some(id) == avoid => self.next_after(id),
            Ok(id) => Placement::Backend(id),
            Err(CallError::NoBackend) => Placement::NoBackend,
            Err(_) => match self.config.on_plugin_error {
                OnPluginError::Reject => Placement::Rejected,
                OnPluginError::Fallback => self.fallback(avoid),
            },
        };
        let placement = match placement {
            Placement::Backend(id) if self.is_full(id) => self.next_not_full(id),
            other => other,
        };
        (req, placement)
    }

    /// Whether backend `id` has reached its `max_connections`.
    fn is_full(&self, id: u32) -> bool {
        match self.view.limits.get(id as usize) {
            Some(&max) if max > 0 => self.view.live(id).is_some_and(|l| l.active.load(Ordering::Relaxed) >= max),
            _ => false,
        }
    }

    /// The first eligible backend after `id` (wrapping) that is not full; `NoBackend` when
    /// every one is. Only runs when the plugin picked a full backend.
    fn next_not_full(&self, id: u32) -> Placement {
        let e = &self.view.eligible;
        let start = e.partition_point(|&x| x <= id);
        (0..e.len())
            .map(|i| e[(start + i) % e.len()])
            .find(|&c| !self.is_full(c))
            .map_or(Placement::NoBackend, Placement::Backend)
    }

    /// The built-in round robin over eligible backends.
    fn fallback(&self, avoid: Option<u32>) -> Placement {
        let n = self.view.live.next_fallback();
        let e = &self.view.eligible;
        let id = e[(n % e.len() as u64) as usize];
        if Some(id) == avoid { self.next_after(id) } else { Placement::Backend(id) }
    }

    /// The eligible backend after `id`, wrapping; `id` itself if it is the only one.
    fn next_after(&self, id: u32) -> Placement {
        let e = &self.view.eligible;
        let pos = e.partition_point(|&x| x <= id);
        Placement::Backend(e[pos % e.len()])
    }
}

/// One complete runtime snapshot.
#[derive(Debug)]
pub struct Runtime {
    /// Pools by name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// When it was built.
    pub built_at: Instant,
}

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A plugin did not load or refused its config.
    #[error("pool `{pool}`: balancer `{plugin}`: {source}")]
    Plugin {
        /// Pool.
        pool: String,
        /// Plugin source.
        plugin: String,
        /// Why.
        source: LoadError,
    },
}

impl Runtime {
    /// Builds a snapshot; reuses live backend state and counters from `previous`.
    pub fn build(config: &Config, plugins: &PluginRuntime, previous: Option<&Runtime>) -> Result<Self, BuildError> {
        let mut pools = BTreeMap::new();
        for (name, pc) in &config.pools {
            let old = previous.and_then(|p| p.pools.get(name));
            let name: Arc<str> = Arc::from(name.as_str());
            let pool_live: Arc<PoolLive> = old.map_or_else(Default::default, |o| o.view.live.clone());
            let members: Vec<Backend> = pc
                .backends
                .iter()
                .map(|b| {
                    let live = old
                        .and_then(|o| o.view.members.iter().find(|m| m.config.address == b.address))
                        .map_or_else(|| Arc::new(BackendLive::new(pool_live.clone())), |m| m.live.clone());
                    Backend { config: b.clone(), live }
                })
                .collect();
            let eligible: Vec<u32> =
                members.iter().enumerate().filter(|(_, b)| b.config.weight > 0).map(|(i, _)| i as u32).collect();
            let mut eligible_mask = vec![false; members.len()];
            for &i in &eligible {
                eligible_mask[i as usize] = true;
            }
            let view = Arc::new(PoolView {
                name: name.clone(),
                generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
                limits: members.iter().map(|b| b.config.max_connections).collect(),
                members,
                eligible,
                eligible_mask,
                live: pool_live,
            });
            let balancer = match old {
                Some(o) if o.config.balancer == pc.balancer && matches!(pc.balancer.source, PluginSource::Pack(_)) => {
                    o.balancer.clone()
                }
                _ => plugins.load_balancer(&name, &pc.balancer, &view).map_err(|source| BuildError::Plugin {
                    pool: name.to_string(),
                    plugin: pc.balancer.source.to_string(),
                    source,
                })?,
            };
            pools.insert(name.to_string(), Arc::new(Pool { config: pc.clone(), view, balancer }));
        }
        Ok(Runtime { pools, built_at: Instant::now() })
    }
}
