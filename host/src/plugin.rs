//! The plugin runtime: one wasmtime `Engine` per process, compiled components cached on
//! disk, one `*Pre` per loaded plugin version, and one `Store` + instance per worker
//! thread built lazily from it.
//!
//! Lifetimes, longest first (STYLE rule 6): the engine and its epoch ticker live for the
//! process; a [`Balancer`] or [`Affinity`] (a compiled component, its world's `Pre` and its
//! config) lives while a snapshot uses it; an `InstanceState` lives in one thread's store
//! until the plugin is dropped or the instance traps.
//!
//! Every call runs under a deadline counted in the time it ran (an epoch deadline checked
//! against the thread's CPU clock when it passes, [`deadline`]) and a memory limit. A trap
//! (including a blown deadline or memory limit) drops that thread's instance — wasmtime
//! poisons an instance that trapped — and is counted and logged with the plugin's name;
//! the next call builds a fresh one. The caller (the state layer's placement) then
//! applies `on_plugin_error`.
//!
//! This layer sees a pool only through [`PoolHost`], which the state layer implements.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::config::{PluginRef, PluginSettings, PluginSource};
use crate::core::{Failure, Protocol, Verdict};
use crate::metrics::Histogram;

mod bindings;
mod cache;
mod deadline;
mod engine;
mod imports;
pub mod inspect;
mod instance;
pub mod pack;
mod world;

use bindings::{PickError, PluginError};
pub use instance::PoolHost;
use instance::{InstanceState, Live};
use world::{AffinityWorld, BalancerWorld, HealthExports, HealthWorld, World};

/// The request a plugin is asked about. The host moves it into the plugin's store for
/// the call and takes it back afterwards, so it is kept small: the HTTP head sits behind
/// a `Box` and a move copies a few words, not its ~250 bytes (moving it unboxed through
/// the call cost about 750 instructions per decision, a fifth of one, measured).
#[derive(Debug)]
pub struct PickRequest {
    /// Protocol.
    pub protocol: Protocol,
    /// Client address.
    pub client: SocketAddr,
    /// TLS SNI. Shared with the connection, so a request on a TLS connection does not
    /// copy it.
    pub sni: Option<Arc<str>>,
    /// The ALPN protocols a TLS client offered, in its order (none: it offered none, or
    /// the connection is not TLS). Shared with the connection, as `sni`.
    pub alpn: Option<Arc<[String]>>,
    /// The subject (RFC 4514) of the client certificate verified by an mTLS listener.
    pub client_subject: Option<Arc<str>>,
    /// The HTTP request head, for HTTP traffic.
    pub head: Option<Box<http::request::Parts>>,
}

/// A TCP connection from `0.0.0.0:0`: what the `request` import answers outside a call,
/// and a stand-in while a request is lent out.
impl Default for PickRequest {
    fn default() -> Self {
        PickRequest {
            protocol: Protocol::Tcp,
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            sni: None,
            alpn: None,
            client_subject: None,
            head: None,
        }
    }
}

/// Why a plugin could not be loaded. Each names the world it was loaded for.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The wasm engine could not be created.
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    /// The host imports could not be linked.
    #[error("cannot link host imports: {0}")]
    Link(String),
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why: said in the message, so not chained as its `source` too.
        error: std::io::Error,
    },
    /// Not in the pack, or in it for another world.
    #[error("{0}")]
    Pack(String),
    /// Not a valid component.
    #[error("not a valid component: {0}")]
    Compile(String),
    /// A component, but not one of the world it was loaded for.
    #[error("not a usable {world} component: {message}")]
    WrongWorld {
        /// `balancer` or `affinity`.
        world: &'static str,
        /// Why.
        message: String,
    },
    /// It refused its config.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// Instantiating it failed (its start function trapped or ran out of time, or the
    /// memory it asks for at start is over the limit). The message says why, and what to
    /// do about it when that can be told.
    #[error("{world} could not be instantiated: {message}")]
    Instantiate {
        /// `balancer`, `affinity` or `health`.
        world: &'static str,
        /// Why.
        message: String,
    },
    /// Its `configure` failed otherwise (trap, timeout, error).
    #[error("{world} could not be configured: {error}")]
    Configure {
        /// `balancer` or `affinity`.
        world: &'static str,
        /// Why (said in the message, not chained).
        error: CallError,
    },
    /// The blocking task that loaded it failed.
    #[error("loading was interrupted: {0}")]
    Interrupted(String),
}

/// Why one call did not produce a decision.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin answered `no-backend` (not a plugin failure).
    #[error("no backend")]
    NoBackend,
    /// The plugin trapped; its instance was dropped.
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past its deadline; the instance was dropped.
    #[error("deadline exceeded")]
    Timeout,
    /// The instance exceeded its memory limit; it was dropped.
    #[error("memory limit exceeded")]
    MemoryLimit,
    /// The plugin answered `failed` (pick) or an error from `configure`.
    #[error("plugin error: {0}")]
    Plugin(String),
    /// The plugin refused its config.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The plugin answered an id that is not eligible.
    #[error("picked backend {0}, which is not eligible")]
    InvalidBackend(u32),
    /// A fresh instance could not be created.
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
}

/// Per-plugin counters, shown by the admin API and asserted by tests.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls made (counted per thread: every decision adds one).
    pub calls: PerThreadCounter,
    /// Traps of any cause (including timeouts and memory).
    pub traps: AtomicU64,
    /// Calls past their deadline.
    pub timeouts: AtomicU64,
    /// Instances that hit the memory limit.
    pub memory_limits: AtomicU64,
    /// `failed` answers and ineligible picks.
    pub errors: AtomicU64,
    /// Decisions this plugin failed that the pool's built-in round robin made instead
    /// (`on_plugin_error = "fallback"`).
    pub fallbacks: AtomicU64,
    /// Instances created.
    pub instantiations: AtomicU64,
    /// Time one call took, ns, sampled: one call in [`DECISION_SAMPLE`] on each thread
    /// is timed, so the others pay nothing for it.
    pub decision_ns: Histogram<8>,
}

/// One call in this many is timed for [`PluginStats::decision_ns`] (a power of two).
pub const DECISION_SAMPLE: u64 = 64;

/// A count that every thread adds to on the hot path without sharing a cache line with
/// another thread: each thread has its own cell, and reading sums them. (One shared
/// atomic written by every decision on every thread bounces its cache line between
/// cores.)
#[derive(Debug, Default)]
pub struct PerThreadCounter(thread_local::ThreadLocal<AtomicU64>);

impl PerThreadCounter {
    /// Adds one on the calling thread; returns this thread's count.
    pub fn add(&self) -> u64 {
        let cell = self.0.get_or_default();
        // Only this thread writes its cell, so a plain load and store is enough.
        let n = cell.load(Ordering::Relaxed) + 1;
        cell.store(n, Ordering::Relaxed);
        n
    }

    /// The sum over every thread.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Compiled components by content hash, held by the plugins that use them.
type Loaded = std::collections::HashMap<[u8; 32], std::sync::Weak<Component>>;

/// Loads plugins: compiles (or fetches from the disk cache), links and validates them.
pub struct PluginRuntime {
    engine: &'static Engine,
    linker: Arc<Linker<InstanceState>>,
    cache: Option<cache::DiskCache>,
    /// The components loaded plugins use, by content hash: every pool that names the same
    /// component shares one copy of its code (about 400 KiB of a `round-robin` pool's
    /// memory before it was shared). An entry lives while a plugin holds it.
    loaded: std::sync::Mutex<Loaded>,
    settings: PluginSettings,
    /// Components compiled by cranelift (cache misses).
    pub compiled: AtomicU64,
    /// Components loaded from the disk cache.
    pub cache_hits: AtomicU64,
    /// Loads answered by a component already in memory.
    pub shared: AtomicU64,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("cache", &self.cache)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// A runtime with these limits; the engine is shared by every runtime in the process.
    pub fn new(settings: PluginSettings) -> Result<Self, LoadError> {
        let engine = engine::engine()?;
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker))
            .and_then(|()| bindings::add_to_linker(&mut linker))
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let cache = cache::DiskCache::open(engine, settings.cache_dir.as_deref());
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            cache,
            loaded: std::sync::Mutex::default(),
            settings,
            compiled: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            shared: AtomicU64::new(0),
        })
    }

    /// The limits plugins run under.
    pub fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    /// Reads a plugin's bytes.
    pub fn bytes(source: &PluginSource) -> Result<std::borrow::Cow<'static, [u8]>, LoadError> {
        match source {
            PluginSource::Pack(name) => pack::get(name)
                .map(std::borrow::Cow::Borrowed)
                .ok_or_else(|| LoadError::Pack(format!("no plugin `{name}` in the pack"))),
            PluginSource::File(path) => std::fs::read(path)
                .map(std::borrow::Cow::Owned)
                .map_err(|error| LoadError::Read { path: path.display().to_string(), error }),
        }
    }

    /// The compiled component of `bytes`: the copy a loaded plugin already uses, else
    /// loaded from the disk cache, else compiled (and written to the disk cache).
    pub fn compile(&self, bytes: &[u8]) -> Result<(Arc<Component>, [u8; 32]), LoadError> {
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(c) = self.loaded().get(&sha).and_then(std::sync::Weak::upgrade) {
            self.shared.fetch_add(1, Ordering::Relaxed);
            return Ok((c, sha));
        }
        // Compiled without the lock: two loads of a new component at once may both compile
        // it, and the second copy is shared from then on.
        let component = match self.cache.as_ref().and_then(|c| c.get(self.engine, &sha)) {
            Some(c) => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                c
            }
            None => {
                self.compiled.fetch_add(1, Ordering::Relaxed);
                let c = Component::new(self.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
                if let Some(cache) = &self.cache {
                    cache.put(&sha, &c);
                }
                c
            }
        };
        let component = Arc::new(component);
        let mut loaded = self.loaded();
        loaded.retain(|_, c| c.strong_count() > 0);
        loaded.insert(sha, Arc::downgrade(&component));
        Ok((component, sha))
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, Loaded> {
        // A poisoned lock only means a load panicked mid-way: the map is still valid.
        self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Loads a balancer for `pool`, then validates it: a scratch instance is created and
    /// configured, so a bad component or a bad config is an error here, never later.
    /// Compiling may take a while: call it off the threads that serve traffic.
    pub fn load_balancer(
        &self,
        pool: &str,
        plugin: &PluginRef,
        view: &Arc<dyn PoolHost>,
    ) -> Result<Arc<Balancer>, LoadError> {
        self.load::<BalancerWorld>(pool, plugin, view, pack::Role::Balancer).map(|p| Arc::new(Balancer(p)))
    }

    /// Loads an affinity plugin for `pool` and validates it, as [`Self::load_balancer`].
    pub fn load_affinity(
        &self,
        pool: &str,
        plugin: &PluginRef,
        view: &Arc<dyn PoolHost>,
    ) -> Result<Arc<Affinity>, LoadError> {
        self.load::<AffinityWorld>(pool, plugin, view, pack::Role::Affinity).map(|p| Arc::new(Affinity(p)))
    }

    /// Loads a health plugin for `pool` and validates it, as [`Self::load_balancer`].
    pub fn load_health(
        &self,
        pool: &str,
        plugin: &PluginRef,
        view: &Arc<dyn PoolHost>,
    ) -> Result<Arc<Health>, LoadError> {
        self.load::<HealthWorld>(pool, plugin, view, pack::Role::Health)
            .map(|p| Arc::new(Health(p, std::sync::Mutex::default())))
    }

    fn load<W: World>(
        &self,
        pool: &str,
        plugin: &PluginRef,
        view: &Arc<dyn PoolHost>,
        role: pack::Role,
    ) -> Result<Plugin<W>, LoadError> {
        pack::check(&plugin.source, role).map_err(LoadError::Pack)?;
        let bytes = Self::bytes(&plugin.source)?;
        self.load_bytes(pool, plugin.source.to_string().into(), &bytes, &plugin.config_json, plugin.limits, view)
    }

    /// Compiles `bytes` (or finds them compiled), checks the world, and creates and
    /// configures a scratch instance.
    fn load_bytes<W: World>(
        &self,
        pool: &str,
        name: Arc<str>,
        bytes: &[u8],
        config_json: &str,
        limits: crate::config::PluginLimits,
        view: &Arc<dyn PoolHost>,
    ) -> Result<Plugin<W>, LoadError> {
        let (component, sha256) = self.compile(bytes)?;
        let unusable = |e: wasmtime::Error| LoadError::WrongWorld { world: W::NAME, message: format!("{e:#}") };
        let pre = W::pre(self.linker.instantiate_pre(&component).map_err(unusable)?).map_err(unusable)?;
        let call_timeout = limits.call_timeout.unwrap_or(self.settings.call_timeout);
        let plugin = Plugin {
            _component: component,
            info: PluginInfo {
                name,
                pool: pool.into(),
                sha256,
                size: bytes.len(),
                loaded_at: SystemTime::now(),
                stats: PluginStats::default(),
            },
            pre,
            config_json: config_json.to_owned(),
            call_timeout,
            call_ticks: engine::ticks(call_timeout),
            rebuild_timeout: self.settings.rebuild_timeout,
            rebuild_ticks: engine::ticks(self.settings.rebuild_timeout),
            memory_limit: limits.memory_limit.unwrap_or(self.settings.memory_limit),
            instances: thread_local::ThreadLocal::new(),
            predecessor: std::sync::Mutex::new(None),
        };
        plugin.instantiate(view).map_err(|(phase, e)| match (phase, e) {
            (_, CallError::InvalidConfig(m)) => LoadError::InvalidConfig(m),
            (Phase::Instantiate, CallError::MemoryLimit) => LoadError::Instantiate {
                world: W::NAME,
                message: format!(
                    "{} (the component asks for more than the {} MiB of memory_limit_mib before its first call; \
                     raise the limit, or reserve less at start: a C plugin built by zig reserves a 16 MiB stack \
                     unless linked with -Wl,-z,stack-size=65536)",
                    CallError::MemoryLimit,
                    plugin.memory_limit >> 20
                ),
            },
            (Phase::Instantiate, source) => LoadError::Instantiate { world: W::NAME, message: source.to_string() },
            (Phase::Configure, error) => LoadError::Configure { world: W::NAME, error },
        })?;
        Ok(plugin)
    }

    /// Loads a candidate balancer for a swap: `bytes` named `name` (a pack name, a path
    /// or an upload's name), validated as [`Self::load_balancer`] does. Call it off the
    /// threads that serve traffic.
    pub fn candidate_balancer(
        &self,
        pool: &str,
        name: &str,
        bytes: &[u8],
        config_json: &str,
        limits: crate::config::PluginLimits,
        view: &Arc<dyn PoolHost>,
    ) -> Result<Arc<Balancer>, LoadError> {
        self.load_bytes::<BalancerWorld>(pool, name.into(), bytes, config_json, limits, view)
            .map(|p| Arc::new(Balancer(p)))
    }

    /// Loads a candidate affinity plugin for a swap, as [`Self::candidate_balancer`].
    pub fn candidate_affinity(
        &self,
        pool: &str,
        name: &str,
        bytes: &[u8],
        config_json: &str,
        limits: crate::config::PluginLimits,
        view: &Arc<dyn PoolHost>,
    ) -> Result<Arc<Affinity>, LoadError> {
        self.load_bytes::<AffinityWorld>(pool, name.into(), bytes, config_json, limits, view)
            .map(|p| Arc::new(Affinity(p)))
    }
}

impl PluginRuntime {
    /// Loads a candidate health plugin for a swap, as [`Self::candidate_balancer`]: world
    /// `health-plugin` or `health-batch-plugin`.
    pub fn candidate_health(
        &self,
        pool: &str,
        name: &str,
        bytes: &[u8],
        config_json: &str,
        limits: crate::config::PluginLimits,
        view: &Arc<dyn PoolHost>,
    ) -> Result<Arc<Health>, LoadError> {
        self.load_bytes::<HealthWorld>(pool, name.into(), bytes, config_json, limits, view)
            .map(|p| Arc::new(Health(p, std::sync::Mutex::default())))
    }
}

/// What every loaded plugin is, whatever its world: its identity and its counters.
#[derive(Debug)]
pub struct PluginInfo {
    /// Pack name or file path.
    pub name: Arc<str>,
    /// The pool it serves (for logs).
    pub pool: Arc<str>,
    /// SHA-256 of the component bytes.
    pub sha256: [u8; 32],
    /// Component size in bytes.
    pub size: usize,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Counters.
    pub stats: PluginStats,
}

/// A loaded plugin of world `W`: one version, one config, one instance per thread.
struct Plugin<W: World> {
    /// Holds the shared compiled component (see [`PluginRuntime::compile`]).
    _component: Arc<Component>,
    info: PluginInfo,
    pre: W::Pre,
    config_json: String,
    /// Deadline of one decision call, in time the call ran (see [`deadline`]), and the
    /// epoch ticks after which it is first checked.
    call_timeout: std::time::Duration,
    call_ticks: u64,
    /// Deadline of `configure`, instantiation and `pool-changed`, likewise.
    rebuild_timeout: std::time::Duration,
    rebuild_ticks: u64,
    memory_limit: usize,
    instances: thread_local::ThreadLocal<std::cell::RefCell<Slot<W>>>,
    /// The version this one replaced in a swap, whose instance on each thread hands its
    /// state (WIT `state`) to this version's first instance on that thread. Read once per
    /// thread, when that instance is created, never per call.
    predecessor: std::sync::Mutex<Option<Arc<dyn StateSource>>>,
}

/// A plugin version whose instances can hand their state to the next version.
trait StateSource: Send + Sync {
    /// The state of this thread's instance (WIT `state.export-state`), if there is one and
    /// it exports state.
    fn export_here(&self) -> Option<Vec<u8>>;
}

/// One thread's instance of a plugin, the last generation in which `pool-changed`
/// failed on this thread, and whether this thread's first instance was offered its
/// predecessor's state.
struct Slot<W: World> {
    live: Option<Live<W>>,
    failed_rebuild: u64,
    inherited: bool,
}

impl<W: World> Default for Slot<W> {
    fn default() -> Self {
        Self { live: None, failed_rebuild: 0, inherited: false }
    }
}

/// The step of making an instance that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Instantiating the component (its memories, its start functions).
    Instantiate,
    /// Its `configure` call.
    Configure,
}

impl<W: World> Plugin<W> {
    /// Creates and configures a fresh instance; on failure, says which step failed.
    fn instantiate(&self, view: &Arc<dyn PoolHost>) -> Result<Live<W>, (Phase, CallError)> {
        let _running = engine::Running::start();
        let info = &self.info;
        info.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        let mut live = Live::<W>::new(W::engine(&self.pre), info.name.clone(), info.pool.clone(), self.memory_limit);
        live.arm(self.rebuild_ticks, self.rebuild_timeout);
        let exports = W::instantiate(&self.pre, &mut live.store)
            .map_err(|e| (Phase::Instantiate, self.classify(&live, e, true)))?;
        live.store.data_mut().pin(view);
        let configured = match W::configure(&exports, &mut live.store, &self.config_json) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(PluginError::InvalidConfig(m))) => Err(CallError::InvalidConfig(m)),
            Ok(Err(PluginError::Internal(m))) => Err(CallError::Plugin(m)),
            Ok(Err(PluginError::NoBackend)) => Err(CallError::Plugin("configure answered no-backend".into())),
            Err(e) => Err(self.classify(&live, e, true)),
        };
        configured.map_err(|e| (Phase::Configure, e))?;
        live.exports = Some(exports);
        Ok(live)
    }

    /// Offers this thread's new instance the state of the predecessor's instance on this
    /// thread (WIT `state`), when both versions have the interface. A refused import is
    /// logged and the instance starts fresh; a trap drops it.
    fn inherit(&self, live: &mut Live<W>) -> Result<(), CallError> {
        let predecessor = self.predecessor.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(predecessor) = predecessor else { return Ok(()) };
        if live.exports.as_ref().and_then(W::state).is_none() {
            return Ok(());
        }
        let Some(bytes) = predecessor.export_here() else { return Ok(()) };
        live.arm(self.rebuild_ticks, self.rebuild_timeout);
        let Some(state) = live.exports.as_ref().and_then(W::state) else { return Ok(()) };
        let info = &self.info;
        match state.call_import_state(&mut live.store, &bytes) {
            Ok(Ok(())) => {
                tracing::debug!(plugin = %info.name, pool = %info.pool, bytes = bytes.len(), "state carried from the previous version");
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::warn!(plugin = %info.name, pool = %info.pool, error = ?e, "the previous version's state was refused; starting fresh");
                Ok(())
            }
            Err(e) => Err(self.classify(live, e, false)),
        }
    }

    /// This thread's instance's state, if it has an instance that exports state. A trap
    /// drops the instance.
    fn export_here(&self) -> Option<Vec<u8>> {
        let cell = self.instances.get()?;
        let mut slot = cell.try_borrow_mut().ok()?;
        let live = slot.live.as_mut()?;
        live.arm(self.rebuild_ticks, self.rebuild_timeout);
        let state = W::state(live.exports.as_ref()?)?;
        match state.call_export_state(&mut live.store) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.classify(live, e, false);
                slot.live = None;
                None
            }
        }
    }

    /// A new version of the same component and config, with no instance yet (for a
    /// rollback: the version rolled back to gets fresh instances, which take the state of
    /// the version they replace).
    fn fresh(&self) -> Self {
        let info = &self.info;
        Plugin {
            _component: self._component.clone(),
            info: PluginInfo {
                name: info.name.clone(),
                pool: info.pool.clone(),
                sha256: info.sha256,
                size: info.size,
                loaded_at: SystemTime::now(),
                stats: PluginStats::default(),
            },
            pre: self.pre.clone(),
            config_json: self.config_json.clone(),
            call_timeout: self.call_timeout,
            call_ticks: self.call_ticks,
            rebuild_timeout: self.rebuild_timeout,
            rebuild_ticks: self.rebuild_ticks,
            memory_limit: self.memory_limit,
            instances: thread_local::ThreadLocal::new(),
            predecessor: std::sync::Mutex::new(None),
        }
    }

    /// Makes this version the successor of `old`: each of its instances takes the state
    /// of `old`'s instance on the same thread. `old` forgets its own predecessor, so
    /// versions are never chained.
    fn succeed(&self, old: Arc<dyn StateSource>, old_plugin: &Self) {
        *old_plugin.predecessor.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        *self.predecessor.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(old);
    }

    /// Runs one data-path call on this thread's instance, with `req` readable through the
    /// `request` import: creates the instance if needed, tells it first of a pool change,
    /// and drops it if the call traps. Never panics and never leaves a poisoned instance
    /// behind; gives the request back.
    fn call<R>(
        &self,
        view: &Arc<dyn PoolHost>,
        req: PickRequest,
        f: impl FnOnce(&W::Exports, &mut wasmtime::Store<InstanceState>) -> wasmtime::Result<R>,
    ) -> (PickRequest, Result<R, CallError>) {
        let cell = self.instances.get_or(Default::default);
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return (req, Err(CallError::Instantiate("re-entrant call".into())));
        };
        self.call_in(&mut slot, view, req, false, f)
    }

    /// [`Self::call`] on the instance in `slot`. `long`: the call runs under the rebuild
    /// deadline (health plugins, off the data path), not the decision deadline.
    fn call_in<R>(
        &self,
        slot: &mut Slot<W>,
        view: &Arc<dyn PoolHost>,
        req: PickRequest,
        long: bool,
        f: impl FnOnce(&W::Exports, &mut wasmtime::Store<InstanceState>) -> wasmtime::Result<R>,
    ) -> (PickRequest, Result<R, CallError>) {
        let _running = engine::Running::start();
        let info = &self.info;
        let timed = (info.stats.calls.add() & (DECISION_SAMPLE - 1) == 0).then(std::time::Instant::now);
        let (req, result) = self.call_inner(slot, view, req, long, f);
        if let Some(started) = timed {
            info.stats.decision_ns.observe(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        (req, result)
    }

    /// [`Self::call_in`] past its counting and timing. A host function that panics under
    /// the plugin is its trap, not the thread's: wasmtime-wasi's blocking calls
    /// (`pollable.block`, `poll`, blocking stream writes, so `sleep` and `println!`) block
    /// on the ambient tokio runtime, which panics on a runtime worker. wasmtime unwinds the
    /// wasm frames and resumes the panic here; the instance is dropped like a trapped one,
    /// and the call fails with a reason the plugin's author can act on.
    fn call_inner<R>(
        &self,
        slot: &mut Slot<W>,
        view: &Arc<dyn PoolHost>,
        req: PickRequest,
        long: bool,
        f: impl FnOnce(&W::Exports, &mut wasmtime::Store<InstanceState>) -> wasmtime::Result<R>,
    ) -> (PickRequest, Result<R, CallError>) {
        let run = std::panic::AssertUnwindSafe(|| self.call_unguarded(slot, view, req, long, f));
        match std::panic::catch_unwind(run) {
            Ok(done) => done,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let req = slot.live.take().and_then(|mut l| l.store.data_mut().request.take()).unwrap_or_default();
                let info = &self.info;
                info.stats.traps.fetch_add(1, Ordering::Relaxed);
                let err = CallError::Trap(format!(
                    "a host call made by the plugin failed (plugins may not block: no sleep, poll or blocking I/O such as printing to stdout; use log.write): {what}"
                ));
                tracing::warn!(plugin = %info.name, pool = %info.pool, world = W::NAME, error = %err, "plugin trapped; instance dropped");
                (req, Err(err))
            }
        }
    }

    /// [`Self::call_inner`] without its guard against panics.
    fn call_unguarded<R>(
        &self,
        slot: &mut Slot<W>,
        view: &Arc<dyn PoolHost>,
        req: PickRequest,
        long: bool,
        f: impl FnOnce(&W::Exports, &mut wasmtime::Store<InstanceState>) -> wasmtime::Result<R>,
    ) -> (PickRequest, Result<R, CallError>) {
        let info = &self.info;
        if slot.live.is_none() {
            match self.instantiate(view) {
                Ok(mut live) => {
                    if !std::mem::replace(&mut slot.inherited, true)
                        && let Err(e) = self.inherit(&mut live)
                    {
                        return (req, Err(e));
                    }
                    slot.live = Some(live);
                }
                Err((_, e)) => {
                    tracing::warn!(plugin = %info.name, pool = %info.pool, world = W::NAME, error = %e, "plugin instance could not be created");
                    return (req, Err(e));
                }
            }
        }
        let Some(live) = slot.live.as_mut() else { return (req, Err(CallError::Instantiate("no instance".into()))) };
        live.store.data_mut().pin(view);
        let generation = view.generation();
        if live.generation != generation {
            // Tell the plugin its pool changed, so it rebuilds what it derives from it. This
            // gets the long deadline, except when `pool-changed` itself already failed in
            // this generation on this thread, so a plugin that cannot rebuild is not granted
            // it on every request. A failed call does not cost the next instance its grace.
            if slot.failed_rebuild == generation && !long {
                live.arm(self.call_ticks, self.call_timeout);
            } else {
                live.arm(self.rebuild_ticks, self.rebuild_timeout);
            }
            let changed = match &live.exports {
                Some(x) => W::pool_changed(x, &mut live.store),
                None => Err(wasmtime::Error::msg("instance has no exports")),
            };
            if let Err(e) = changed {
                let e = self.classify(live, e, false);
                slot.live = None;
                slot.failed_rebuild = generation;
                return (req, Err(e));
            }
            live.generation = generation;
        }
        if long {
            live.arm(self.rebuild_ticks, self.rebuild_timeout);
        } else {
            live.arm(self.call_ticks, self.call_timeout);
        }
        live.store.data_mut().request = Some(req);
        let result = match &live.exports {
            Some(x) => f(x, &mut live.store),
            None => Err(wasmtime::Error::msg("instance has no exports")),
        };
        // Only this function moves the request in and out, so it is always there.
        let req = live.store.data_mut().request.take().unwrap_or_default();
        match result {
            Ok(r) => (req, Ok(r)),
            Err(e) => {
                let e = self.classify(live, e, false);
                slot.live = None;
                (req, Err(e))
            }
        }
    }

    /// Bytes of linear memory of the calling thread's instance, if it has one.
    fn instance_memory(&self) -> Option<usize> {
        let slot = self.instances.get()?.try_borrow().ok()?;
        slot.live.as_ref().map(|live| live.store.data().memory_bytes())
    }

    /// Counts and logs a plugin's wrong answer.
    fn misbehaved(&self, what: &str, e: CallError) -> CallError {
        let info = &self.info;
        info.stats.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %info.name, pool = %info.pool, world = W::NAME, error = %e, "plugin {what}");
        e
    }

    /// Turns a wasmtime error into a [`CallError`], counting and logging it.
    fn classify(&self, live: &Live<W>, e: wasmtime::Error, loading: bool) -> CallError {
        let stats = &self.info.stats;
        let err = if live.store.data().memory_exceeded() {
            stats.memory_limits.fetch_add(1, Ordering::Relaxed);
            CallError::MemoryLimit
        } else if matches!(e.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
            stats.timeouts.fetch_add(1, Ordering::Relaxed);
            CallError::Timeout
        } else if e.downcast_ref::<wasmtime::Trap>().is_some() {
            CallError::Trap(format!("{e:#}"))
        } else {
            return CallError::Instantiate(format!("{e:#}"));
        };
        if !loading {
            stats.traps.fetch_add(1, Ordering::Relaxed);
            let info = &self.info;
            tracing::warn!(plugin = %info.name, pool = %info.pool, world = W::NAME, error = %err, "plugin trapped; instance dropped");
        }
        err
    }
}

/// A loaded balancer plugin (world `balancer-plugin`).
pub struct Balancer(Plugin<BalancerWorld>);

/// A loaded affinity plugin (world `affinity-plugin`). Its failures never fail a request:
/// a failed `lookup` leaves the choice to the balancer, a failed `bind` adds no header.
pub struct Affinity(Plugin<AffinityWorld>);

/// A loaded health plugin (world `health-plugin`): one instance per pool, not per thread,
/// called off the data path by the pool's health task, in order, so the plugin may keep
/// per-backend state. Calls run under the rebuild deadline.
pub struct Health(Plugin<HealthWorld>, std::sync::Mutex<Slot<HealthWorld>>);

macro_rules! plugin_newtype {
    ($t:ty) => {
        impl $t {
            /// The memory limit its instances run under (all their linear memories
            /// together), in bytes: its entry's `memory_limit_mib`, else `[plugins]`'s.
            pub fn memory_limit(&self) -> usize {
                self.0.memory_limit
            }

            /// The deadline of one decision call: its entry's `call_timeout_ms`, else
            /// `[plugins]`'s.
            pub fn call_timeout(&self) -> std::time::Duration {
                self.0.call_timeout
            }
        }

        impl std::ops::Deref for $t {
            type Target = PluginInfo;
            fn deref(&self) -> &PluginInfo {
                &self.0.info
            }
        }

        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("name", &self.0.info.name)
                    .field("pool", &self.0.info.pool)
                    .finish_non_exhaustive()
            }
        }
    };
}
plugin_newtype!(Balancer);
plugin_newtype!(Affinity);
plugin_newtype!(Health);

impl StateSource for Balancer {
    fn export_here(&self) -> Option<Vec<u8>> {
        self.0.export_here()
    }
}

impl StateSource for Affinity {
    fn export_here(&self) -> Option<Vec<u8>> {
        self.0.export_here()
    }
}

/// The requests of a dry run: HTTP/1.1 GETs from different clients, paths, query keys,
/// headers and cookies, so a hashing plugin sees varied keys.
fn dry_run_requests(n: u32) -> impl Iterator<Item = PickRequest> {
    (0..n).map(|i| {
        let head = http::Request::get(format!("/dry-run/{i}?key={i}"))
            .header(http::header::HOST, "dry-run.weir")
            .header("x-key", i.to_string())
            .header(http::header::COOKIE, format!("key={i}"))
            .body(())
            .map(|r| Box::new(r.into_parts().0))
            .ok();
        PickRequest {
            protocol: Protocol::Http1,
            client: SocketAddr::from(([192, 0, 2, (i % 250) as u8 + 1], 40_000 + (i % 1000) as u16)),
            head,
            ..PickRequest::default()
        }
    })
}

/// The pool as a dry run sees it: the live view for everything the plugin reads, but
/// counters of its own (a dry run of `round-robin` must not move the live rotation) and no
/// stick entries (it neither pins a client nor refreshes a live pin).
#[derive(Debug)]
struct DryRunView {
    live: Arc<dyn PoolHost>,
    counters: std::sync::Mutex<std::collections::HashMap<u32, u64>>,
}

impl DryRunView {
    fn wrap(live: &Arc<dyn PoolHost>) -> Arc<dyn PoolHost> {
        Arc::new(Self { live: live.clone(), counters: std::sync::Mutex::default() })
    }
}

impl PoolHost for DryRunView {
    fn generation(&self) -> u64 {
        self.live.generation()
    }
    fn members(&self) -> &[crate::config::BackendConfig] {
        self.live.members()
    }
    fn eligible(&self) -> &[u32] {
        self.live.eligible()
    }
    fn is_eligible(&self, id: u32) -> bool {
        self.live.is_eligible(id)
    }
    fn active(&self, id: u32) -> u32 {
        self.live.active(id)
    }
    fn in_flight(&self, id: u32) -> u32 {
        self.live.in_flight(id)
    }
    fn load(&self, id: u32) -> u64 {
        self.live.load(id)
    }
    fn latency_ewma_us(&self, id: u32) -> u32 {
        self.live.latency_ewma_us(id)
    }
    fn total_load(&self) -> u64 {
        self.live.total_load()
    }
    fn counter(&self, name: &str) -> Option<u32> {
        self.live.counter(name)
    }
    fn counter_next(&self, id: u32) -> u64 {
        let mut counters = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = counters.entry(id).or_insert(0);
        *n += 1;
        *n - 1
    }
    fn secret(&self, name: &str) -> Option<[u8; 32]> {
        self.live.secret(name)
    }
    fn stick_table(&self, name: &str, ttl: std::time::Duration) -> Option<u32> {
        self.live.stick_table(name, ttl)
    }
    fn stick_get(&self, _table: u32, _key: u64) -> Option<u32> {
        None
    }
    fn stick_set(&self, _table: u32, _key: u64, _id: u32) -> bool {
        false
    }
}

impl Balancer {
    /// The same component and config as a new version with no instances (a rollback's).
    pub fn fresh(&self) -> Arc<Balancer> {
        Arc::new(Balancer(self.0.fresh()))
    }

    /// Makes this version `old`'s successor: its first instance on each thread takes the
    /// state of `old`'s instance there (WIT `state`), when both have the interface.
    pub fn succeed(&self, old: &Arc<Balancer>) {
        self.0.succeed(old.clone(), &old.0);
    }

    /// A dry run of `n` picks against `view` on a scratch instance (not one that serves):
    /// `pool-changed`, then every answer must be an eligible backend (or `no-backend`).
    /// Off the data path: picks run under the rebuild deadline. They are not counted as
    /// the plugin's calls, and the pool's counters and stick tables are not touched
    /// ([`DryRunView`]).
    pub fn dry_run(&self, view: &Arc<dyn PoolHost>, n: u32) -> Result<(), CallError> {
        if view.eligible().is_empty() {
            return Ok(());
        }
        let view = &DryRunView::wrap(view);
        let mut slot = Slot { inherited: true, ..Slot::default() };
        for req in dry_run_requests(n) {
            let (_, result) =
                self.0.call_inner(&mut slot, view, req, true, |x, store| x.weir_plugin_balancer().call_pick(store));
            match result? {
                Ok(id) if view.is_eligible(id) => {}
                Ok(id) => return Err(CallError::InvalidBackend(id)),
                Err(PickError::NoBackend) => {}
                Err(PickError::Failed) => return Err(CallError::Plugin("pick failed".into())),
            }
        }
        Ok(())
    }

    /// Asks the plugin which backend should take `req`.
    pub fn pick(&self, view: &Arc<dyn PoolHost>, req: PickRequest) -> (PickRequest, Result<u32, CallError>) {
        let (req, result) = self.0.call(view, req, |x, store| x.weir_plugin_balancer().call_pick(store));
        let outcome = match result {
            Ok(Ok(id)) if view.is_eligible(id) => Ok(id),
            Ok(Ok(id)) => {
                Err(self.0.misbehaved("picked a backend that is not eligible", CallError::InvalidBackend(id)))
            }
            Ok(Err(PickError::NoBackend)) => Err(CallError::NoBackend),
            Ok(Err(PickError::Failed)) => {
                Err(self.0.misbehaved("could not decide", CallError::Plugin("pick failed".into())))
            }
            Err(e) => Err(e),
        };
        (req, outcome)
    }
}

impl Balancer {
    /// Bytes of linear memory of the calling thread's instance (`None` before its first
    /// call, or after a trap dropped it): what one instance of this plugin holds.
    pub fn instance_memory(&self) -> Option<usize> {
        self.0.instance_memory()
    }
}

impl Affinity {
    /// As [`Balancer::instance_memory`].
    pub fn instance_memory(&self) -> Option<usize> {
        self.0.instance_memory()
    }
}

impl Health {
    /// Bytes of linear memory of the pool's instance (`None` before its first call, or
    /// after a trap dropped it).
    pub fn instance_memory(&self) -> Option<usize> {
        let slot = self.1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.live.as_ref().map(|live| live.store.data().memory_bytes())
    }
}

/// What `affinity.bind` left for the response.
#[derive(Debug, Default)]
pub struct Bound {
    /// Headers to add to the response.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The `(table, key)` of the stick entry the plugin set, if any.
    pub stuck: Option<(u32, u64)>,
}

impl Affinity {
    /// The same component and config as a new version with no instances (a rollback's).
    pub fn fresh(&self) -> Arc<Affinity> {
        Arc::new(Affinity(self.0.fresh()))
    }

    /// Makes this version `old`'s successor, as [`Balancer::succeed`].
    pub fn succeed(&self, old: &Arc<Affinity>) {
        self.0.succeed(old.clone(), &old.0);
    }

    /// A dry run of `n` lookups and binds against `view` on a scratch instance: every
    /// backend it names must exist. Off the data path, under the rebuild deadline; not
    /// counted as calls, and no stick entry is read or set ([`DryRunView`]).
    pub fn dry_run(&self, view: &Arc<dyn PoolHost>, n: u32) -> Result<(), CallError> {
        let Some(&chosen) = view.eligible().first() else { return Ok(()) };
        let view = &DryRunView::wrap(view);
        let mut slot = Slot { inherited: true, ..Slot::default() };
        let members = view.members().len();
        for req in dry_run_requests(n) {
            let (req, pinned) =
                self.0.call_inner(&mut slot, view, req, true, |x, store| x.weir_plugin_affinity().call_pinned(store));
            match pinned? {
                Some(id) if id as usize >= members => return Err(CallError::InvalidBackend(id)),
                _ => {}
            }
            let (_, bound) = self
                .0
                .call_inner(&mut slot, view, req, true, |x, store| x.weir_plugin_affinity().call_bind(store, chosen));
            bound?;
        }
        Ok(())
    }

    /// The backend `req`'s client is pinned to, if the plugin names one that exists.
    pub fn lookup(&self, view: &Arc<dyn PoolHost>, req: PickRequest) -> (PickRequest, Option<u32>) {
        let (req, result) = self.0.call(view, req, |x, store| x.weir_plugin_affinity().call_pinned(store));
        let pinned = match result {
            Ok(Some(id)) if id as usize >= view.members().len() => {
                self.0.misbehaved("named a backend that does not exist", CallError::InvalidBackend(id));
                None
            }
            Ok(pinned) => pinned,
            Err(_) => None,
        };
        (req, pinned)
    }

    /// Tells the plugin that `req` goes to `chosen`; returns the headers it wants on the
    /// response and the stick entry it set. Headers that are not valid HTTP are dropped
    /// and counted as plugin errors.
    pub fn bind(&self, view: &Arc<dyn PoolHost>, req: PickRequest, chosen: u32) -> (PickRequest, Bound) {
        let (req, result) = self.0.call(view, req, |x, store| {
            store.data_mut().stuck = None;
            let headers = x.weir_plugin_affinity().call_bind(&mut *store, chosen)?;
            Ok((headers, store.data_mut().stuck.take()))
        });
        let mut bound = Bound::default();
        if let Ok((headers, stuck)) = result {
            bound.headers.reserve_exact(headers.len());
            for (name, value) in headers {
                match (http::HeaderName::try_from(name.as_str()), http::HeaderValue::try_from(value)) {
                    (Ok(n), Ok(v)) => bound.headers.push((n, v)),
                    _ => {
                        self.0.misbehaved("returned a header that is not valid HTTP", CallError::Plugin(name));
                    }
                }
            }
            bound.stuck = stuck;
        }
        (req, bound)
    }
}

/// One observation a health plugin is told of (the WIT `health.observation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The host's timed probe (else live traffic).
    pub active_probe: bool,
    /// What failed; `None`: it succeeded.
    pub failure: Option<Failure>,
    /// The HTTP status, if there was one.
    pub status: Option<u16>,
    /// Time to the first response byte, µs.
    pub latency_us: u32,
    /// When, on the process clock (ms).
    pub at_ms: u64,
}

impl Observation {
    /// As the WIT record.
    fn to_wit(self) -> bindings::wit_health::Observation {
        use bindings::wit_health::{Failure as F, Observation as O};
        let failure = self.failure.map(|f| match f {
            Failure::Connect => F::Connect,
            Failure::Timeout => F::Timeout,
            Failure::Status => F::Status,
            Failure::Body => F::Body,
            Failure::Reset => F::Reset,
            Failure::Protocol => F::Protocol,
        });
        O {
            active_probe: self.active_probe,
            failure,
            status: self.status,
            latency_us: self.latency_us,
            at_ms: self.at_ms,
        }
    }
}

/// What live traffic did to one backend since the previous tick (the WIT `health.window`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Exchanges that succeeded.
    pub successes: u32,
    /// Exchanges that failed.
    pub failures: u32,
    /// Response-head latency EWMA, µs (0: no sample).
    pub latency_ewma_us: u32,
}

/// A health plugin's verdict about one backend, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// Backend id in the generation of the view the call was made with.
    pub id: u32,
    /// The verdict.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
}

/// One call into a health instance that answers assessments (a dry run's step).
type HealthCall<'a> = dyn Fn(&HealthExports, &mut wasmtime::Store<InstanceState>) -> wasmtime::Result<Vec<bindings::wit_health::Assessment>>
    + 'a;

/// Backends a health dry run tells the plugin about (the first ones of the pool).
const DRY_RUN_BACKENDS: usize = 64;

impl Health {
    /// The same component and config as a new version with no instance (a rollback's).
    pub fn fresh(&self) -> Arc<Health> {
        Arc::new(Health(self.0.fresh(), std::sync::Mutex::default()))
    }

    /// The world it was loaded as: `health-batch-plugin` or `health-plugin`.
    pub fn world(&self) -> &'static str {
        if self.batches() { "health-batch-plugin" } else { "health-plugin" }
    }

    /// A dry run against `view` on a scratch instance (not the one the health task calls,
    /// which stays unmade): `pool-changed`, a `tick` with every member's window (no
    /// exchanges, the live latency), then, for up to [`DRY_RUN_BACKENDS`] members, a
    /// passing and a failing probe result (through `observe-batch` too when the plugin
    /// takes batches). Every answer must name a member of the pool. Not counted as the
    /// plugin's calls; the pool's counters are the dry run's own ([`DryRunView`]).
    pub fn dry_run(&self, view: &Arc<dyn PoolHost>) -> Result<(), CallError> {
        use bindings::wit_health::{Failure as F, Observation as O, Window as W};
        let view = &DryRunView::wrap(view);
        let members = view.members().len();
        let mut slot = Slot { inherited: true, ..Slot::default() };
        let check =
            |answers: Vec<bindings::wit_health::Assessment>| match answers.iter().find(|a| a.id as usize >= members) {
                Some(a) => Err(CallError::InvalidBackend(a.id)),
                None => Ok(()),
            };
        let now = crate::core::clock::now_ms();
        let windows: Vec<W> = (0..members as u32)
            .map(|id| W { successes: 0, failures: 0, latency_ewma_us: view.latency_ewma_us(id) })
            .collect();
        let run = |slot: &mut Slot<HealthWorld>, f: &HealthCall<'_>| {
            self.0.call_inner(slot, view, PickRequest::default(), true, |x, store| f(x, store)).1
        };
        check(run(&mut slot, &|x, store| x.health.call_tick(store, now, &windows))?)?;
        let probe = |id: u32, ok: bool| {
            (
                id,
                O {
                    active_probe: true,
                    failure: if ok { None } else { Some(F::Connect) },
                    status: ok.then_some(200),
                    latency_us: if ok { 1000 } else { 0 },
                    at_ms: now,
                },
            )
        };
        let ids = (0..members.min(DRY_RUN_BACKENDS)) as std::ops::Range<usize>;
        for id in ids.clone() {
            for ok in [true, false] {
                let (id, obs) = probe(id as u32, ok);
                check(run(&mut slot, &|x, store| x.health.call_observe(store, id, obs))?)?;
            }
        }
        if self.batches() {
            let batch: Vec<_> = ids.flat_map(|id| [probe(id as u32, true), probe(id as u32, false)]).collect();
            check(run(&mut slot, &|x, store| match &x.batch {
                Some(b) => b.call_observe_batch(store, &batch),
                None => Ok(Vec::new()),
            })?)?;
        }
        Ok(())
    }

    /// Tells the plugin of one observation about backend `id`; returns the verdicts it
    /// changed. Assessments of ids outside the pool are dropped and counted.
    pub fn observe(&self, view: &Arc<dyn PoolHost>, id: u32, obs: &Observation) -> Result<Vec<Assessment>, CallError> {
        let o = obs.to_wit();
        let result = self.run(view, |x, store| x.health.call_observe(store, id, o))?;
        Ok(self.assessments(view, result))
    }

    /// Whether the plugin takes several observations in one call ([`Self::observe_batch`]:
    /// it exports `health-batch`).
    pub fn batches(&self) -> bool {
        self.0.pre.batches()
    }

    /// Tells the plugin of several observations `(id, observation)` in one call, as many
    /// [`Self::observe`] calls in order would; returns the verdicts they changed. Only for
    /// a plugin that [`Self::batches`]: for another, no call is made and it fails.
    pub fn observe_batch(
        &self,
        view: &Arc<dyn PoolHost>,
        observations: &[(u32, Observation)],
    ) -> Result<Vec<Assessment>, CallError> {
        if !self.batches() {
            return Err(CallError::Plugin("the plugin does not export health-batch".into()));
        }
        let batch: Vec<(u32, bindings::wit_health::Observation)> =
            observations.iter().map(|(id, obs)| (*id, obs.to_wit())).collect();
        let result = self.run(view, |x, store| match &x.batch {
            Some(b) => b.call_observe_batch(store, &batch),
            None => Err(wasmtime::Error::msg("the plugin does not export health-batch")),
        })?;
        Ok(self.assessments(view, result))
    }

    /// Tells the plugin of the time and every member's window (`windows[id]`); returns the
    /// verdicts it changed.
    pub fn tick(&self, view: &Arc<dyn PoolHost>, at_ms: u64, windows: &[Window]) -> Result<Vec<Assessment>, CallError> {
        use bindings::wit_health::Window as W;
        let windows: Vec<W> = windows
            .iter()
            .map(|w| W { successes: w.successes, failures: w.failures, latency_ewma_us: w.latency_ewma_us })
            .collect();
        let result = self.run(view, |x, store| x.health.call_tick(store, at_ms, &windows))?;
        Ok(self.assessments(view, result))
    }

    fn run<R>(
        &self,
        view: &Arc<dyn PoolHost>,
        f: impl FnOnce(&HealthExports, &mut wasmtime::Store<InstanceState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let mut slot = self.1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.0.call_in(&mut slot, view, PickRequest::default(), true, f).1
    }

    fn assessments(&self, view: &Arc<dyn PoolHost>, wit: Vec<bindings::wit_health::Assessment>) -> Vec<Assessment> {
        use bindings::wit_health::Verdict as V;
        let members = view.members().len();
        let mut out = Vec::with_capacity(wit.len());
        for a in wit {
            if a.id as usize >= members {
                self.0.misbehaved("judged a backend that does not exist", CallError::InvalidBackend(a.id));
                continue;
            }
            let verdict = match a.verdict {
                V::Healthy => Verdict::Healthy,
                V::Degraded => Verdict::Degraded,
                V::Unhealthy => Verdict::Unhealthy,
            };
            let mut reason = a.reason;
            if reason.len() > 256 {
                let mut cut = 256;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
            }
            out.push(Assessment { id: a.id, verdict, reason: reason.replace(['\r', '\n'], " ") });
        }
        out
    }
}
