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
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{BackendConfig, Config, OnPluginError, PluginSource, PoolConfig};
use crate::plugin::{Affinity, Balancer, Bound, CallError, LoadError, PickRequest, PluginRuntime};

mod stick;
pub use stick::{StickHold, StickTable};

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
    /// Open tunnels (WebSockets), so a drain can reach them.
    pub(crate) tunnels: Arc<crate::proxy::drain::Tunnels>,
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
            tunnels: Arc::default(),
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

    /// `active + in_flight`: the load figure least-load balancers compare.
    pub fn load(&self) -> u64 {
        u64::from(self.active.load(Ordering::Relaxed)) + u64::from(self.in_flight.load(Ordering::Relaxed))
    }

    /// [`BackendLive::load`] capped at `u32::MAX`, as the packed plugin reads give it.
    pub fn load_u32(&self) -> u32 {
        u32::try_from(self.load()).unwrap_or(u32::MAX)
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

    /// Open tunnels (WebSockets) to this backend.
    pub fn tunnels(&self) -> usize {
        self.tunnels.len()
    }

    /// Orders this backend's open tunnels to close gracefully: a close frame each, spread
    /// evenly over `spread`, and a cut at `deadline` for those still open. Returns how
    /// many were ordered.
    pub fn drain_tunnels(&self, spread: Duration, deadline: Duration) -> usize {
        self.tunnels.drain(spread, deadline)
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

/// Named objects of a pool that plugins reach by a handle (counters, stick tables).
/// Resolving a name takes a lock (once per instance); using a handle takes none: the
/// list is replaced, never mutated, when an object is added.
#[derive(Debug)]
struct Registry<T> {
    names: Mutex<Vec<Box<str>>>,
    values: ArcSwap<Vec<Arc<T>>>,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self { names: Mutex::default(), values: ArcSwap::from_pointee(Vec::new()) }
    }
}

impl<T> Registry<T> {
    /// The handle of `name`, created with `make` if new.
    fn resolve(&self, name: &str, make: impl FnOnce() -> T) -> u32 {
        let mut names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = names.iter().position(|n| &**n == name) {
            return i as u32;
        }
        names.push(name.into());
        let mut values = (**self.values.load()).clone();
        values.push(Arc::new(make()));
        self.values.store(Arc::new(values));
        (names.len() - 1) as u32
    }

    /// The object named `name`, if it exists.
    fn named(&self, name: &str) -> Option<Arc<T>> {
        let id =
            self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().position(|n| &**n == name)?;
        self.with(id as u32, Arc::clone)
    }

    /// Runs `f` on the object behind `id`; `None` for an unknown handle.
    fn with<R>(&self, id: u32, f: impl FnOnce(&Arc<T>) -> R) -> Option<R> {
        self.values.load().get(id as usize).map(f)
    }
}

/// Live figures of a whole pool, shared across snapshots and plugins: the counters of
/// `pool.counter`/`pool.counter-next`, the stick tables of `pool.stick-*`, the fallback
/// round robin and the pool's total load.
#[derive(Debug, Default)]
pub struct PoolLive {
    counters: Registry<AtomicU64>,
    sticks: Registry<StickTable>,
    secrets: Registry<[u8; 32]>,
    /// Position of the built-in fallback round robin.
    fallback: AtomicU64,
    /// Sum of `active + in_flight` over the pool's backends.
    pub total_load: AtomicU64,
}

impl PoolLive {
    /// The handle of the named counter, created at 0 if new.
    pub fn counter(&self, name: &str) -> u32 {
        self.counters.resolve(name, || AtomicU64::new(0))
    }

    /// Returns counter `id`'s value and advances it; 0 for an unknown handle.
    pub fn next(&self, id: u32) -> u64 {
        self.counters.with(id, |c| c.fetch_add(1, Ordering::Relaxed)).unwrap_or(0)
    }

    /// The handle of the named stick table, created if new; its TTL becomes `ttl`.
    pub fn stick_table(&self, name: &str, ttl: Duration) -> u32 {
        let id = self.sticks.resolve(name, || StickTable::new(ttl));
        self.sticks.with(id, |t| t.set_ttl(ttl));
        id
    }

    /// The stick table named `name` (as a plugin named it), if one was made.
    pub fn stick_table_named(&self, name: &str) -> Option<Arc<StickTable>> {
        self.sticks.named(name)
    }

    /// Runs `f` on stick table `id`; `None` for an unknown handle.
    pub fn with_stick_table<R>(&self, id: u32, f: impl FnOnce(&Arc<StickTable>) -> R) -> Option<R> {
        self.sticks.with(id, f)
    }

    /// The named random secret of this pool, made on first use.
    pub fn secret(&self, name: &str) -> [u8; 32] {
        let id = self.secrets.resolve(name, || {
            let mut key = [0u8; 32];
            if let Err(e) = getrandom::fill(&mut key) {
                // Without the OS's randomness the secret is all zeros: predictable, so say
                // so loudly; the plugin still works, its signatures are just forgeable.
                tracing::error!(pool_secret = name, error = %e, "no random source; the secret is predictable");
            }
            key
        });
        self.secrets.with(id, |k| **k).unwrap_or_default()
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
    /// Each member's live state by id, packed for the same reason: a plugin's load read
    /// (`pool.load`, `pool.load-pair`) follows one pointer from a dense array instead of
    /// first reading a whole `Backend` record (a cache miss each at 10,000 backends).
    lives: Vec<Arc<BackendLive>>,
    /// Backend id by [`stick::address_key`] of its address, for stick entries.
    by_address: std::collections::HashMap<u64, u32>,
    /// Pool-wide live figures (counters, stick tables, total load).
    pub live: Arc<PoolLive>,
}

impl PoolView {
    /// Whether backend `id` may take new work.
    pub fn is_eligible(&self, id: u32) -> bool {
        self.eligible_mask.get(id as usize).copied().unwrap_or(false)
    }

    /// The current id of the backend a stick entry names, if it is still a member.
    pub fn by_address_key(&self, key: u64) -> Option<u32> {
        self.by_address.get(&key).copied()
    }

    /// The key stick entries name backend `id` by.
    pub fn address_key(&self, id: u32) -> Option<u64> {
        self.members.get(id as usize).map(|b| stick::address_key(&b.config.address))
    }

    /// The live state of backend `id`, if it exists.
    pub fn live(&self, id: u32) -> Option<&BackendLive> {
        self.lives.get(id as usize).map(|l| &**l)
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
    /// The affinity plugin, if the pool has one.
    pub affinity: Option<Arc<Affinity>>,
}

impl Pool {
    /// Places a request: asks the affinity plugin for a pinned backend, then (when there
    /// is none, or it is not eligible or full) the balancer, and applies
    /// `on_plugin_error` when the balancer fails. `avoid` is a backend that just failed to
    /// connect: affinity is not asked again, and if the balancer picks it again the next
    /// eligible backend is used instead. Gives the request back for the I/O.
    pub fn place(&self, req: PickRequest, avoid: Option<u32>) -> (PickRequest, Placement) {
        let view = &self.view;
        if view.eligible.is_empty() {
            return (req, Placement::NoBackend);
        }
        let req = match &self.affinity {
            Some(affinity) if avoid.is_none() => match affinity.lookup(view, req) {
                (req, Some(id)) if view.is_eligible(id) && !self.is_full(id) => return (req, Placement::Backend(id)),
                (req, _) => req,
            },
            _ => req,
        };
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

    /// Tells the affinity plugin (if any) where `req` went; returns what it wants added to
    /// the response.
    pub fn bind(&self, req: PickRequest, id: u32) -> (PickRequest, Bound) {
        match &self.affinity {
            Some(affinity) => affinity.bind(&self.view, req, id),
            None => (req, Bound::default()),
        }
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
    #[error("pool `{pool}`: {role} `{plugin}`: {source}")]
    Plugin {
        /// Pool.
        pool: String,
        /// `balancer` or `affinity`.
        role: &'static str,
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
                lives: members.iter().map(|b| b.live.clone()).collect(),
                by_address: members
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (stick::address_key(&b.config.address), i as u32))
                    .collect(),
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
                    role: "balancer",
                    plugin: pc.balancer.source.to_string(),
                    source,
                })?,
            };
            let affinity = match (&pc.affinity, old) {
                (None, _) => None,
                (Some(a), Some(o))
                    if o.config.affinity.as_ref() == Some(a) && matches!(a.source, PluginSource::Pack(_)) =>
                {
                    o.affinity.clone()
                }
                (Some(a), _) => Some(plugins.load_affinity(&name, a, &view).map_err(|source| BuildError::Plugin {
                    pool: name.to_string(),
                    role: "affinity",
                    plugin: a.source.to_string(),
                    source,
                })?),
            };
            pools.insert(name.to_string(), Arc::new(Pool { config: pc.clone(), view, balancer, affinity }));
        }
        Ok(Runtime { pools, built_at: Instant::now() })
    }
}
