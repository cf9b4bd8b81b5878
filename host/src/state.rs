//! The runtime snapshot: every pool with its backends, its eligible set and its loaded
//! plugins, and every listener's routes, built from a [`Config`] and published whole
//! behind one `ArcSwap` by the one writer ([`crate::control`]).
//!
//! A snapshot is immutable. What changes per request lives beside it in atomics
//! ([`BackendLive`], [`PoolLive`]), shared by address with the next snapshot so a rebuild
//! keeps them (STYLE rule 3). Plugins read the pool through [`PoolView`], pinned for the
//! duration of one call so `members`, `eligible` and `generation` always agree.
//!
//! A pool may hold candidate balancers beside its live one ([`Candidate`]: a shadow
//! asked on a sample of decisions that never acts, a canary that places a share), and
//! its metrics are read from all of this at scrape time ([`SnapshotMetrics`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::config::{Config, ListenerConfig, OnPluginError, PluginRef, PluginSource, PoolConfig};
use crate::plugin::{Affinity, Balancer, CallError, LoadError, PickRequest, PluginRuntime, PoolHost};

mod candidate;
mod live;
mod metrics;
mod stick;
mod view;

pub use candidate::{Candidate, CandidateKind, CandidateStats};
pub use live::{ActiveGuard, BackendLive, HealthStatus, MAX_NAMES, PoolLive, Report, Reporter};
pub use metrics::{SnapshotMetrics, encode_plugins};
pub use stick::{StickChange, StickEvent, StickHold, StickSink, StickTable, TableShare, address_key};
pub use view::{Backend, PoolView};

/// Generations never repeat, across pools and rebuilds.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

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
    /// The same view, as the plugin layer takes it.
    host: Arc<dyn PoolHost>,
    /// The balancer.
    pub balancer: Arc<Balancer>,
    /// The affinity plugin, if the pool has one.
    pub affinity: Option<Arc<Affinity>>,
    /// A candidate asked beside the balancer on a sample of decisions, never acting.
    pub shadow: Option<Candidate>,
    /// A candidate placing a share of the decisions instead of the balancer.
    pub canary: Option<Candidate>,
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
            Some(affinity) if avoid.is_none() => match affinity.lookup(&self.host, req) {
                (req, Some(id)) if view.is_eligible(id) && !self.is_full(id) => return (req, Placement::Backend(id)),
                (req, _) => req,
            },
            _ => req,
        };
        let canary = self.canary.as_ref().filter(|c| c.sampled());
        let (balancer, host) = match canary {
            Some(c) => (&c.balancer, &c.host),
            None => (&self.balancer, &self.host),
        };
        let (req, outcome) = balancer.pick(host, req);
        let picked = outcome.as_ref().ok().copied();
        let placement = match outcome {
            Ok(id) if Some(id) == avoid => self.next_after(id),
            Ok(id) => Placement::Backend(id),
            Err(CallError::NoBackend) => Placement::NoBackend,
            Err(_) => match self.config.on_plugin_error {
                OnPluginError::Reject => Placement::Rejected,
                OnPluginError::Fallback => {
                    balancer.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                    self.fallback(avoid)
                }
            },
        };
        let placement = match placement {
            Placement::Backend(id) if self.is_full(id) => self.next_not_full(id),
            Placement::Backend(id) if view.ramping() && !admitted(view.ramp(id)) => self.instead_of_ramping(id),
            other => other,
        };
        if let Some(c) = canary {
            self.canary_placed(c, picked, placement);
        }
        // A retry after a failed connect (`avoid`) is not a new decision for the shadow.
        match (&self.shadow, placement) {
            (Some(s), Placement::Backend(went)) if avoid.is_none() && s.sampled() => {
                (self.shadow_pick(s, req, went), placement)
            }
            _ => (req, placement),
        }
    }

    /// Counts a decision the canary was given: `picked` is its answer, `placement` where
    /// the request goes.
    fn canary_placed(&self, c: &Candidate, picked: Option<u32>, placement: Placement) {
        c.stats.asked.fetch_add(1, Ordering::Relaxed);
        let Some(id) = picked else {
            c.stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let Some(live) = self.view.live(id) {
            live.canary_picks.fetch_add(1, Ordering::Relaxed);
        }
        if placement == Placement::Backend(id) {
            c.stats.agreed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks the shadow where it would have sent a request that goes to `went`, and
    /// counts its answer; nothing else follows from it.
    fn shadow_pick(&self, s: &Candidate, req: PickRequest, went: u32) -> PickRequest {
        s.stats.asked.fetch_add(1, Ordering::Relaxed);
        let (req, outcome) = s.balancer.pick(&s.host, req);
        match outcome {
            Ok(id) => {
                if id == went {
                    s.stats.agreed.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(live) = self.view.live(id) {
                    live.shadow_picks.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                s.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        req
    }

    /// The pool's candidate of `kind`, if it has one.
    pub fn candidate(&self, kind: CandidateKind) -> Option<&Candidate> {
        match kind {
            CandidateKind::Shadow => self.shadow.as_ref(),
            CandidateKind::Canary => self.canary.as_ref(),
        }
    }

    /// Another backend for work the slow-starting backend `id` declined: the built-in
    /// round robin over the eligible backends that are not ramping and not full (so the
    /// declined share spreads evenly); `id` itself when there is none.
    #[cold]
    fn instead_of_ramping(&self, id: u32) -> Placement {
        let e = &self.view.eligible;
        let start = self.view.live.next_fallback() as usize;
        (0..e.len())
            .map(|i| e[(start + i) % e.len()])
            .find(|&c| self.view.ramp(c) == 1024 && !self.is_full(c))
            .map_or(Placement::Backend(id), Placement::Backend)
    }

    /// Tells the affinity plugin (if any) where `req` went; returns what it wants added to
    /// the response and the hold on the stick entry it set.
    pub fn bind(&self, req: PickRequest, id: u32) -> (PickRequest, Binding) {
        let Some(affinity) = &self.affinity else { return (req, Binding::default()) };
        let (req, bound) = affinity.bind(&self.host, req, id);
        let hold = bound.stuck.and_then(|(table, key)| self.view.live.with_stick_table(table, |t| t.hold(key)));
        (req, Binding { headers: bound.headers, hold })
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

/// Whether a backend that may take `share`/1024 of its work takes this one: a draw,
/// only made for backends in slow start.
fn admitted(share: u32) -> bool {
    if share >= 1024 {
        return true;
    }
    ((draw() >> 54) as u32) < share
}

/// A draw from a per-thread generator (splitmix64): slow start's admissions, candidates'
/// samples.
#[inline]
fn draw() -> u64 {
    use std::cell::Cell;
    static SEEDS: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);
    thread_local!(static STATE: Cell<u64> = Cell::new(SEEDS.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)));
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// What an affinity plugin's `bind` leaves for the response and the connection.
#[derive(Debug, Default)]
pub struct Binding {
    /// Headers to add to the response.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The stick entry the plugin set, held for as long as this value lives (a tunnel
    /// keeps it; a plain response drops it).
    pub hold: Option<StickHold>,
}

impl Pool {
    /// Builds a pool from its config. Backends that `old` (the pool's previous version)
    /// also has, by address, keep their live state; its counters and stick tables carry
    /// over; its plugins are reused when their source and config did not change and they
    /// come from the pack. O(backends). Loading a plugin compiles it: call this off the
    /// threads that serve traffic.
    pub fn build(config: &PoolConfig, plugins: &PluginRuntime, old: Option<&Pool>) -> Result<Self, BuildError> {
        let name: Arc<str> = Arc::from(config.name.as_str());
        let pool_live: Arc<PoolLive> =
            old.map_or_else(|| Arc::new(PoolLive::new(name.clone())), |o| o.view.live.clone());
        let previous: HashMap<&str, &Arc<BackendLive>> = old
            .map(|o| o.view.members.iter().map(|m| (m.config.address.as_str(), &m.live)).collect())
            .unwrap_or_default();
        let ramp_new = old.is_some() && !config.health.slow_start.is_zero();
        let members: Vec<Backend> = config
            .backends
            .iter()
            .map(|b| {
                let live = previous.get(b.address.as_str()).map_or_else(
                    || {
                        let live = Arc::new(BackendLive::new(pool_live.clone()));
                        if ramp_new {
                            live.joined();
                        }
                        live
                    },
                    |l| Arc::clone(l),
                );
                Backend { config: b.clone(), live }
            })
            .collect();
        if !config.health.enabled() {
            // Nothing judges this pool (any more): verdicts from when something did would
            // never be revised.
            for m in &members {
                m.live.set_verdict(crate::core::Verdict::Healthy, "health checks removed");
            }
        }
        let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        let view = Arc::new(PoolView::new(name.clone(), generation, members, pool_live, &config.health));
        let host: Arc<dyn PoolHost> = view.clone();
        let reusable = |was: &PluginRef, now: &PluginRef| was == now && matches!(now.source, PluginSource::Pack(_));
        let failed = |role: &'static str, plugin: &PluginRef| {
            let (pool, at, config_at) = (name.to_string(), plugin.at.clone(), plugin.config_at.clone());
            let plugin = plugin.source.to_string();
            move |error: LoadError| {
                // A refused config is blamed on the `config` the file writes (if it does).
                let at = match &error {
                    LoadError::InvalidConfig(_) | LoadError::Configure { .. } => config_at.or(at),
                    _ => at,
                };
                BuildError::Plugin { pool, role, plugin, at: at.map(Box::new), error }
            }
        };
        let balancer = match old {
            Some(o) if reusable(&o.config.balancer, &config.balancer) => o.balancer.clone(),
            _ => plugins.load_balancer(&name, &config.balancer, &host).map_err(failed("balancer", &config.balancer))?,
        };
        let affinity = match (&config.affinity, old) {
            (None, _) => None,
            (Some(a), Some(o)) if o.config.affinity.as_ref().is_some_and(|was| reusable(was, a)) => o.affinity.clone(),
            (Some(a), _) => Some(plugins.load_affinity(&name, a, &host).map_err(failed("affinity", a))?),
        };
        let candidate = |kind: CandidateKind, wanted: &Option<crate::config::CandidateConfig>| {
            let Some(c) = wanted else { return Ok(None) };
            let was = old.and_then(|o| o.candidate(kind));
            if let Some(was) = was.filter(|w| &w.config == c && matches!(c.plugin.source, PluginSource::Pack(_))) {
                return Ok(Some(was.over(&view)));
            }
            let (host, objects) = Candidate::fresh_host(&view);
            let balancer = plugins.load_balancer(&name, &c.plugin, &host).map_err(failed(kind.as_str(), &c.plugin))?;
            Ok::<_, BuildError>(Some(Candidate::new(kind, c.clone(), balancer, host, objects)))
        };
        let shadow = candidate(CandidateKind::Shadow, &config.shadow)?;
        let canary = candidate(CandidateKind::Canary, &config.canary)?;
        Ok(Pool { config: config.clone(), view, host, balancer, affinity, shadow, canary })
    }
}

impl Pool {
    /// The same pool (same view, same generation) with another balancer: a swap.
    pub fn with_balancer(&self, balancer: Arc<Balancer>) -> Self {
        Pool {
            config: self.config.clone(),
            view: self.view.clone(),
            host: self.host.clone(),
            balancer,
            affinity: self.affinity.clone(),
            shadow: self.shadow.as_ref().map(|c| c.over(&self.view)),
            canary: self.canary.as_ref().map(|c| c.over(&self.view)),
        }
    }

    /// The same pool with another affinity plugin (or none): a swap.
    pub fn with_affinity(&self, affinity: Option<Arc<Affinity>>) -> Self {
        Pool {
            config: self.config.clone(),
            view: self.view.clone(),
            host: self.host.clone(),
            balancer: self.balancer.clone(),
            affinity,
            shadow: self.shadow.as_ref().map(|c| c.over(&self.view)),
            canary: self.canary.as_ref().map(|c| c.over(&self.view)),
        }
    }

    /// The pool's view as the plugin layer takes it (for loading and dry-running a
    /// candidate plugin against the live pool, and for tools that call a plugin directly,
    /// `weir plugin test`).
    pub fn host(&self) -> &Arc<dyn PoolHost> {
        &self.host
    }

    /// The same pool with a new view of its members, for verdicts the one writer just
    /// applied to their live state: the eligible set, panic and slow start follow them,
    /// and the generation changes, so plugins hear of it in `pool-changed`. O(backends).
    pub fn with_new_verdicts(&self) -> Self {
        let members: Vec<Backend> =
            self.view.members.iter().map(|m| Backend { config: m.config.clone(), live: m.live.clone() }).collect();
        let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        let view = Arc::new(PoolView::new(
            self.view.name.clone(),
            generation,
            members,
            self.view.live.clone(),
            &self.config.health,
        ));
        let host: Arc<dyn PoolHost> = view.clone();
        Pool {
            config: self.config.clone(),
            shadow: self.shadow.as_ref().map(|c| c.over(&view)),
            canary: self.canary.as_ref().map(|c| c.over(&view)),
            view,
            host,
            balancer: self.balancer.clone(),
            affinity: self.affinity.clone(),
        }
    }
}

/// One complete runtime snapshot: what every connection reads, whole, from one load.
#[derive(Debug)]
pub struct Snapshot {
    /// Pools by name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// Listeners by name: their routes and limits as of this snapshot.
    pub listeners: BTreeMap<String, Arc<ListenerConfig>>,
    /// When it was built.
    pub built_at: Instant,
}

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A plugin did not load or refused its config.
    #[error("{}pool `{pool}`: {role} `{plugin}`: {error}", at.as_ref().map(|a| format!("{a}: ")).unwrap_or_default())]
    Plugin {
        /// Pool.
        pool: String,
        /// `balancer`, `affinity`, `shadow` or `canary`.
        role: &'static str,
        /// Plugin source.
        plugin: String,
        /// Where the config names it.
        at: Option<Box<crate::config::Location>>,
        /// Why: said in the message, so not chained as its `source` too (a renderer that
        /// prints the chain, `{:#}` of anyhow, would say it twice).
        error: LoadError,
    },
}

impl Snapshot {
    /// An empty snapshot: no pool, no listener.
    pub fn empty() -> Self {
        Self { pools: BTreeMap::new(), listeners: BTreeMap::new(), built_at: Instant::now() }
    }

    /// Builds a whole snapshot from `config`, reusing live state, counters and unchanged
    /// pack plugins from `previous`. (The running server changes its snapshot through
    /// [`crate::control`], pool by pool; this is for `weir check` and offline tools.)
    pub fn build(config: &Config, plugins: &PluginRuntime, previous: Option<&Snapshot>) -> Result<Self, BuildError> {
        let mut pools = BTreeMap::new();
        for (name, pc) in &config.pools {
            let old = previous.and_then(|p| p.pools.get(name));
            pools.insert(name.clone(), Arc::new(Pool::build(pc, plugins, old.map(|p| &**p))?));
        }
        let listeners = config.listeners.iter().map(|l| (l.name.clone(), Arc::new(l.clone()))).collect();
        Ok(Snapshot { pools, listeners, built_at: Instant::now() })
    }
}
