//! The one writer (DESIGN convention 1; sozu's command state, linkerd's `Update`): every
//! change to a running server is a list of [`Command`]s applied by [`Control::apply`],
//! one list at a time, which builds the next snapshot beside the current one and
//! publishes it whole. A reload is the [`diff`] between the old and the new config;
//! the admin API, plugin file watch and health verdicts will send commands the same way.
//!
//! Applying is all or nothing: plugins are compiled and configured, and new listeners
//! bound, before anything is published; on any error nothing changes. Compiling runs on a
//! blocking thread, never on a worker that serves traffic. After publishing, the backends
//! that left their pool are retired: their idle upstream connections closed (on every
//! worker), their WebSockets drained (a close frame each, spread over the pool's
//! `drain_spread_ms`). A listener is bound once and accepted from on every worker
//! (`workers`).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::config::{CandidateConfig, Config, ListenerConfig, OnUnhealthy, PluginRef, PoolConfig};
use crate::core::Verdict;
use crate::discover;
use crate::health;
use crate::http;
use crate::metrics::Metrics;
use crate::net::listen::{self, Acceptor, ListenerStats, Slots, Stop};
use crate::net::tls::{self, Terminator};
use crate::plugin::{Affinity, Balancer, PluginRuntime};
use crate::state::{BuildError, CandidateKind, Pool, Snapshot};
use crate::tcp;

mod metrics;
mod workers;

pub use metrics::{ControlStats, Event, HISTORY};
pub(crate) use workers::Workers;
pub use workers::{WorkerError, WorkerThreads};

/// One change to a running server.
#[derive(Debug, Clone)]
// Commands are few and off the data path: their size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Add a pool, or replace the pool of that name (live backend state, counters, stick
    /// tables and unchanged pack plugins carry over).
    UpsertPool(PoolConfig),
    /// Remove a pool; its backends are retired.
    RemovePool(String),
    /// Add a listener (bound now), or change one: a new address rebinds it, anything
    /// else (routes, timeouts, limits) applies at once.
    UpsertListener(ListenerConfig),
    /// Close a listener: it accepts no more; its open connections finish.
    RemoveListener(String),
    /// Apply the verdicts of a pool's health evaluators: the pool's eligible set, panic
    /// state and slow starts follow, in a new generation. Verdicts of a health task that
    /// has since been replaced or stopped are dropped.
    Verdicts(health::Verdicts),
    /// A slow-start window of the pool has passed: a new view without its ramps, so
    /// placement stops checking them.
    RampsEnded(String),
    /// Read the certificate, key and client CA files of every TLS listener again (a
    /// reload, a file changed on disk): new handshakes use what loads; a listener whose
    /// files do not load keeps its certificates, and the error names the file.
    ReloadCertificates,
    /// Put a plugin version in place in a pool (an admin swap or rollback, the plugin
    /// file watch): already compiled, configured and dry-run off the data path, so this
    /// only switches. The version it replaces is kept for a rollback, and hands its
    /// per-thread state to the new one (WIT `state`). `file_entry` is what the config
    /// file said for this plugin when the swap was made: the swapped version stays
    /// through reloads until the file's entry changes.
    SwapPlugin {
        /// The pool.
        pool: String,
        /// The new version.
        plugin: Swapped,
        /// The config file's entry for this plugin at the time of the swap.
        file_entry: Option<PluginRef>,
    },
    /// Drain a backend (it takes no new work; its WebSockets get close frames over the
    /// pool's `drain_spread_ms`; its idle connections close) or undrain it.
    Drain {
        /// The pool.
        pool: String,
        /// The backend's address as the config writes it.
        backend: String,
        /// Undo a drain.
        undrain: bool,
    },
    /// Set (or, with `None`, remove) a pool's shadow or canary balancer: the pool is
    /// rebuilt with it, as [`Command::UpsertPool`] would (everything else carries over).
    SetCandidate {
        /// The pool.
        pool: String,
        /// Shadow or canary.
        kind: CandidateKind,
        /// The candidate, or none.
        candidate: Option<CandidateConfig>,
    },
    /// The backends a pool's discovery task found (its `discover`): the pool is rebuilt
    /// with the file's backends plus these, as [`Command::UpsertPool`] would (a backend
    /// found again keeps its state; one no longer found is retired). Sets of a task that
    /// has since been replaced or stopped are dropped, and so is a set that changes
    /// nothing.
    Discovered(discover::Found),
    /// Make a pool's shadow or canary its live balancer (and no longer a candidate): the
    /// candidate's plugin is loaded for the live pool (its compiled code is reused) and
    /// the pool switches to it atomically, as a reload that changed `balancer` would.
    Promote {
        /// The pool.
        pool: String,
        /// Shadow or canary.
        kind: CandidateKind,
    },
}

/// Which plugin of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PluginKind {
    /// The balancer.
    Balancer,
    /// The affinity plugin.
    Affinity,
    /// The health plugins (the pool's evaluators, all together).
    Health,
}

impl PluginKind {
    /// As the API and the config name it.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Balancer => "balancer",
            PluginKind::Affinity => "affinity",
            PluginKind::Health => "health",
        }
    }
}

/// A plugin version to put in place.
#[derive(Debug, Clone)]
pub enum Swapped {
    /// A balancer.
    Balancer(Arc<Balancer>),
    /// An affinity plugin, or none (a rollback to a pool without one).
    Affinity(Option<Arc<Affinity>>),
    /// A pool's whole list of health plugins (its evaluators), which replace those of
    /// its running health task.
    Health(health::Evaluators),
}

impl Swapped {
    /// Which plugin it is.
    pub fn kind(&self) -> PluginKind {
        match self {
            Swapped::Balancer(_) => PluginKind::Balancer,
            Swapped::Affinity(_) => PluginKind::Affinity,
            Swapped::Health(_) => PluginKind::Health,
        }
    }

    /// Its name (`none` for no affinity plugin).
    pub fn name(&self) -> String {
        match self {
            Swapped::Balancer(b) => b.name.to_string(),
            Swapped::Affinity(Some(a)) => a.name.to_string(),
            Swapped::Affinity(None) => "none".into(),
            Swapped::Health(h) => h.names(),
        }
    }
}

/// What a swap left behind for a rollback.
#[derive(Debug)]
struct SwapRecord {
    /// The config file's entry when the swap was made.
    file_entry: Option<PluginRef>,
    /// The version the swap replaced.
    previous: Swapped,
}

/// The commands that turn `old` into `new`: only what changed.
pub fn diff(old: &Config, new: &Config) -> Vec<Command> {
    let mut commands = Vec::new();
    for (name, pool) in &new.pools {
        if old.pools.get(name) != Some(pool) {
            commands.push(Command::UpsertPool(pool.clone()));
        }
    }
    for name in old.pools.keys().filter(|n| !new.pools.contains_key(*n)) {
        commands.push(Command::RemovePool(name.clone()));
    }
    let old_listeners: BTreeMap<&str, &ListenerConfig> = old.listeners.iter().map(|l| (l.name.as_str(), l)).collect();
    let new_names: HashSet<&str> = new.listeners.iter().map(|l| l.name.as_str()).collect();
    for l in &new.listeners {
        if old_listeners.get(l.name.as_str()) != Some(&l) {
            commands.push(Command::UpsertListener(l.clone()));
        }
    }
    for name in old_listeners.keys().filter(|n| !new_names.contains(*n)) {
        commands.push(Command::RemoveListener((*name).to_owned()));
    }
    commands
}

/// Why commands could not be applied. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A pool could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listener could not bind.
    #[error("listener `{name}`: cannot listen on {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A listener's TLS certificates or settings could not be loaded.
    #[error("listener `{name}`: {source}")]
    Tls {
        /// Listener name.
        name: String,
        /// Why.
        source: tls::TlsError,
    },
    /// A listener names a pool that does not exist after the commands.
    #[error("listener `{listener}`: no pool named `{pool}`")]
    NoPool {
        /// Listener name.
        listener: String,
        /// The missing pool.
        pool: String,
    },
    /// A pool's upstream TLS settings were refused (a client key its crypto provider
    /// cannot use, or not the certificate's).
    #[error("pool `{pool}`: upstream TLS: {message}")]
    UpstreamTls {
        /// The pool.
        pool: String,
        /// Where the file writes it, and why.
        message: String,
    },
    /// The blocking task building the pools failed.
    #[error("building the snapshot was interrupted: {0}")]
    Interrupted(String),
    /// A command names a pool that does not exist.
    #[error("no pool named `{0}`")]
    NoSuchPool(String),
    /// A command names a backend its pool does not have.
    #[error("pool `{pool}` has no backend `{backend}`")]
    NoSuchBackend {
        /// The pool.
        pool: String,
        /// The address asked for.
        backend: String,
    },
    /// A rollback with nothing to roll back to.
    #[error("pool `{pool}`: no previous {kind} to roll back to (nothing was swapped since the config last set it)")]
    NothingToRollBack {
        /// The pool.
        pool: String,
        /// `balancer` or `affinity`.
        kind: &'static str,
    },
    /// A health plugin swap on a pool that no health task watches.
    #[error(
        "pool `{0}` has no health checks (no `probe` and no `health` plugins in the config file): a swap replaces the plugins of a running health task; set `probe` or `health` in the file and reload"
    )]
    NoHealthChecks(String),
    /// A promotion names a candidate the pool does not have.
    #[error("pool `{pool}` has no {kind} to promote")]
    NoCandidate {
        /// The pool.
        pool: String,
        /// Shadow or canary.
        kind: CandidateKind,
    },
}

/// What [`Control::apply`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Pools added or replaced.
    pub pools: usize,
    /// Pools removed.
    pub pools_removed: usize,
    /// Listeners bound.
    pub listeners_bound: usize,
    /// Listeners whose settings changed in place.
    pub listeners_changed: usize,
    /// Listeners closed.
    pub listeners_closed: usize,
    /// Backends retired (left their pool).
    pub backends_retired: usize,
    /// Tunnels ordered to drain.
    pub tunnels_drained: usize,
    /// Idle upstream connections closed.
    pub idle_closed: usize,
    /// Backends whose health verdict changed.
    pub verdicts: usize,
    /// Plugins swapped in.
    pub swaps: usize,
    /// Backends drained or undrained.
    pub drains: usize,
    /// TLS listeners whose certificates were read again.
    pub tls_reloaded: usize,
    /// TLS listeners whose files did not load (they kept their certificates).
    pub tls_failed: usize,
    /// Why each of those did not load, naming the listener and the file.
    pub tls_errors: Vec<String>,
}

/// A running listener's accept tasks (one per worker) and where it is bound.
#[derive(Debug)]
struct Running {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// Its connections against its `max_connections`.
    slots: Arc<Slots>,
    /// Its TLS settings, when it terminates TLS.
    tls: Arc<Terminator>,
}

impl Running {
    /// Stops its accept loops (on whichever worker each runs).
    fn abort(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The writer's own state: what it alone changes.
#[derive(Debug)]
struct Writer {
    listeners: BTreeMap<String, Running>,
    /// The swaps in force, by pool and plugin.
    swaps: BTreeMap<(String, PluginKind), SwapRecord>,
}

/// Why a reload did not happen. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server was not started from a file.
    #[error("the server was not started from a config file: there is nothing to read again")]
    NoFile,
    /// The file did not load.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Its changes could not be applied.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Why a pool shared through etcd was refused. Nothing changed: the pool's last good
/// version (if any) still serves.
#[derive(Debug, thiserror::Error)]
pub enum ClusterPoolError {
    /// Its TOML is not a valid pool table.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The config file defines a pool of that name: the file's wins.
    #[error("the config file defines a pool `{0}`: the file's wins, this one is not applied")]
    FileDefines(String),
    /// It could not be built (an unknown plugin, a plugin refusing its config, ...).
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// The one writer of a server's snapshot.
#[derive(Debug)]
pub struct Control {
    /// The config the snapshot was last built from (held across a reload, so two reloads
    /// never interleave).
    config: Mutex<Config>,
    /// The pools shared through etcd (`<prefix>/pools/NAME`), as last applied; changed
    /// only while `config` is held. They serve beside the file's, whose names win.
    cluster_pools: std::sync::Mutex<BTreeMap<String, PoolConfig>>,
    /// Whether listeners may name a pool no one defines yet (`[cluster]` is set: it may
    /// come from etcd; until it does, its requests answer 503).
    pools_may_come: std::sync::atomic::AtomicBool,
    pub(crate) ctx: Arc<http::Context>,
    /// Where connections are served: each listener has an accept loop on each worker.
    workers: Workers,
    plugins: Arc<PluginRuntime>,
    /// The pools' health tasks; their verdicts come back as [`Command::Verdicts`].
    health: health::Monitor,
    /// The pools' discovery tasks; what they find comes back as [`Command::Discovered`].
    discover: discover::Monitor,
    /// Commands the writer gives itself for later (the end of a slow start).
    later: tokio::sync::mpsc::UnboundedSender<Command>,
    stop: watch::Receiver<Stop>,
    writer: Mutex<Writer>,
    /// Bound listener addresses by name, readable without waiting for the writer.
    addrs: std::sync::RwLock<Vec<(String, SocketAddr)>>,
    /// Each listener's counters, by name (kept across a rebind to another address).
    stats: std::sync::RwLock<BTreeMap<String, Arc<ListenerStats>>>,
    /// What the writer did, counted, and its recent history.
    counters: ControlStats,
    /// The server's metrics registry.
    metrics: Arc<Metrics>,
}

impl Control {
    /// A writer for `ctx`'s snapshot (empty at first: apply commands to fill it), with
    /// the task that applies the health tasks' verdicts (it ends with the writer).
    pub(crate) fn new(
        ctx: Arc<http::Context>,
        workers: Workers,
        plugins: Arc<PluginRuntime>,
        stop: watch::Receiver<Stop>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (verdicts, mut incoming) = tokio::sync::mpsc::unbounded_channel();
        let (later, mut due) = tokio::sync::mpsc::unbounded_channel();
        let (found, mut discovered) = tokio::sync::mpsc::unbounded_channel();
        let control = Arc::new(Self {
            health: health::Monitor::new(ctx.snapshot.clone(), verdicts),
            discover: discover::Monitor::new(found),
            later,
            ctx,
            workers,
            plugins,
            stop,
            writer: Mutex::new(Writer { listeners: BTreeMap::new(), swaps: BTreeMap::new() }),
            config: Mutex::new(Config::empty()),
            cluster_pools: std::sync::Mutex::default(),
            pools_may_come: std::sync::atomic::AtomicBool::new(false),
            addrs: std::sync::RwLock::default(),
            stats: std::sync::RwLock::default(),
            counters: ControlStats::default(),
            metrics,
        });
        metrics::register(&control.metrics, Arc::downgrade(&control));
        // Certificate files changed on disk are read again (DESIGN convention 5: the
        // watcher ends when the server stops serving).
        let files = {
            let snapshot = control.ctx.snapshot.clone();
            move || {
                let snapshot = snapshot.load();
                let tls = snapshot.listeners.values().filter_map(|l| l.tls.as_ref());
                tls.flat_map(|t| t.files().map(std::path::Path::to_path_buf)).collect::<Vec<_>>()
            }
        };
        let reload = control.later.clone();
        tokio::spawn(tls::watch(files, move || reload.send(Command::ReloadCertificates).is_ok(), control.stop.clone()));
        let writer = Arc::downgrade(&control);
        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    Some(v) = incoming.recv() => Command::Verdicts(v),
                    Some(c) = due.recv() => c,
                    Some(f) = discovered.recv() => Command::Discovered(f),
                    else => return,
                };
                let Some(control) = writer.upgrade() else { return };
                // Verdicts that arrived together go in one snapshot.
                let mut commands = vec![first];
                while let Ok(more) = incoming.try_recv() {
                    commands.push(Command::Verdicts(more));
                }
                if let Err(e) = control.apply(commands).await {
                    tracing::error!(error = %e, "health verdicts could not be applied");
                }
            }
        });
        control
    }

    /// What the writer did, counted (the admin API bumps the counters of its calls), and
    /// the recent history of changes.
    pub fn counters(&self) -> &ControlStats {
        &self.counters
    }

    /// The server's metrics registry (each subsystem registers its own metrics in it).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Applies `config` to a server that has applied nothing yet (at start).
    pub(crate) async fn load(&self, config: Config) -> Result<Applied, ControlError> {
        let mut current = self.config.lock().await;
        self.pools_may_come.store(config.cluster.is_some(), std::sync::atomic::Ordering::Relaxed);
        if config.cluster.is_some() {
            for l in &config.listeners {
                for pool in std::iter::once(&l.pool).chain(l.routes.iter().map(|r| &r.pool)) {
                    if !config.pools.contains_key(pool) {
                        tracing::warn!(listener = %l.name, %pool, "no pool of that name in the config file: expected from the cluster (etcd); its requests answer 503 until it arrives");
                    }
                }
            }
        }
        let applied = self.apply(diff(&current, &config)).await?;
        *current = config;
        Ok(applied)
    }

    /// Applies a new config to the running server: the difference from the current one
    /// becomes commands (see [`crate::Server::reload`] for what changes and what does
    /// not). Every TLS listener reads its certificate files again. On any error nothing
    /// changes.
    pub async fn reload(&self, config: Config) -> Result<Applied, ControlError> {
        let mut current = self.config.lock().await;
        if current.plugins != config.plugins {
            tracing::warn!("reload: [plugins] is read at start only; restart weir to apply its changes");
        }
        if current.runtime != config.runtime {
            tracing::warn!("reload: [runtime] is read at start only; restart weir to apply its changes");
        }
        if current.admin != config.admin {
            tracing::warn!("reload: [admin] is read at start only; restart weir to apply its changes");
        }
        // Certificate files are read again even where their names did not change. The
        // pools shared through etcd stay (where the file does not define their names).
        let mut commands = diff(&self.with_cluster_pools(&current), &self.with_cluster_pools(&config));
        commands.push(Command::ReloadCertificates);
        let applied = match self.apply(commands).await {
            Ok(applied) => applied,
            Err(e) => {
                self.counters.reload_failures.inc();
                self.counters.record("reload", "", e.to_string(), false);
                return Err(e);
            }
        };
        self.counters.reloads.inc();
        let detail = format!("{} pools changed, {} removed", applied.pools, applied.pools_removed);
        self.counters.record("reload", "", detail, true);
        *current = config;
        Ok(applied)
    }

    /// Reads the config file the server runs from again and applies it ([`Self::reload`]):
    /// what SIGHUP and `POST /api/v1/reload` do. Reading it (which resolves host names)
    /// happens on a blocking thread.
    pub async fn reload_file(&self) -> Result<Applied, ReloadError> {
        let Some(path) = self.config.lock().await.source.clone() else { return Err(ReloadError::NoFile) };
        let config = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| ControlError::Interrupted(e.to_string()))??;
        Ok(self.reload(config).await?)
    }

    /// `config` with the pools shared through etcd beside the file's (a name the file
    /// defines is the file's).
    fn with_cluster_pools(&self, config: &Config) -> Config {
        let shared = self.cluster_pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if shared.is_empty() {
            return config.clone();
        }
        let mut merged = config.clone();
        for (name, pool) in shared.iter() {
            merged.pools.entry(name.clone()).or_insert_with(|| pool.clone());
        }
        merged
    }

    /// Applies a pool shared through etcd: `text` is its TOML (the keys of a
    /// `[pool.NAME]` table) read at etcd key `source`, or `None` when the key was
    /// deleted (the pool leaves). Applied like a reload of that one pool, through the one
    /// writer. On any error nothing changes: the last good version keeps serving.
    /// Returns whether anything changed.
    pub async fn set_cluster_pool(
        &self,
        name: &str,
        text: Option<&str>,
        source: &str,
    ) -> Result<bool, ClusterPoolError> {
        let config = self.config.lock().await;
        let was = self.cluster_pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned();
        let pool = match text {
            Some(text) => {
                let base =
                    config.source.as_deref().and_then(std::path::Path::parent).unwrap_or(std::path::Path::new("."));
                Some(Config::parse_pool(name, text, source, base)?)
            }
            None => None,
        };
        if pool.is_some() && config.pools.contains_key(name) {
            return Err(ClusterPoolError::FileDefines(name.to_owned()));
        }
        let command = match (&pool, &was) {
            (Some(p), Some(w)) if p == w => return Ok(false),
            (Some(p), _) => Command::UpsertPool(p.clone()),
            (None, Some(_)) if !config.pools.contains_key(name) => Command::RemovePool(name.to_owned()),
            (None, Some(_)) => {
                self.cluster_pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
                return Ok(false);
            }
            (None, None) => return Ok(false),
        };
        let what = if pool.is_some() { "set" } else { "removed" };
        match self.apply(vec![command]).await {
            Ok(_) => {
                self.counters.record("cluster-pool", name, format!("{what} from {source}"), true);
                let mut shared = self.cluster_pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match pool {
                    Some(p) => shared.insert(name.to_owned(), p),
                    None => shared.remove(name),
                };
                Ok(true)
            }
            Err(e) => {
                self.counters.record("cluster-pool", name, e.to_string(), false);
                Err(e.into())
            }
        }
    }

    /// The names of the pools shared through etcd that serve now.
    pub fn cluster_pool_names(&self) -> Vec<String> {
        self.cluster_pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner).keys().cloned().collect()
    }

    /// The file the server's config came from, if any (`None` too while a reload holds
    /// the config: this never waits).
    pub fn config_file_now(&self) -> Option<std::path::PathBuf> {
        self.config.try_lock().ok().and_then(|c| c.source.clone())
    }

    /// The plugin runtime (for loading a swap's candidate).
    pub(crate) fn plugins(&self) -> &Arc<PluginRuntime> {
        &self.plugins
    }

    /// Whether a health task watches `pool` (a health plugin swap needs one).
    pub fn watches_health(&self, pool: &str) -> bool {
        self.health.watches(pool)
    }

    /// The health plugins watching `pool`, with their counters (calls, traps, timeouts).
    pub fn health_plugins(&self, pool: &str) -> Vec<Arc<crate::plugin::Health>> {
        self.health.evaluators(pool)
    }

    /// What `pool`'s discovery (its `discover`) did last, if it discovers.
    pub fn discovery(&self, pool: &str) -> Option<discover::Status> {
        self.discover.status(pool)
    }

    /// Turns the backends found by discovery tasks into the pool upserts they amount to,
    /// and gives a pool the file upserts (a reload) the backends its discovery found so
    /// far, while its `dns` name stays the same (a changed name starts over: until its new
    /// task answers, the pool has the file's backends only).
    fn discovered_as_upserts(&self, commands: Vec<Command>, current: &Snapshot) -> Vec<Command> {
        let mut out = Vec::with_capacity(commands.len());
        for c in commands {
            match c {
                Command::Discovered(found) => {
                    if !self.discover.current(&found.pool, found.task) {
                        continue;
                    }
                    let Some(live) = current.pools.get(&found.pool) else { continue };
                    let mut config = live.config.clone();
                    with_discovered(&mut config, &found.backends);
                    if config.backends == live.config.backends {
                        continue;
                    }
                    let (now, was) = (config.backends.len(), live.config.backends.len());
                    self.counters.record("discover", &found.pool, format!("{was} -> {now} backends"), true);
                    out.push(Command::UpsertPool(config));
                }
                Command::UpsertPool(mut config)
                    if config.discover.is_some() && !config.backends.iter().any(|b| b.discovered) =>
                {
                    let live = current.pools.get(&config.name).filter(|live| {
                        live.config.discover.as_ref().map(|d| &d.dns) == config.discover.as_ref().map(|d| &d.dns)
                    });
                    if let Some(live) = live {
                        let found: Vec<_> = live.config.backends.iter().filter(|b| b.discovered).cloned().collect();
                        with_discovered(&mut config, &found);
                    }
                    out.push(Command::UpsertPool(config));
                }
                c => out.push(c),
            }
        }
        out
    }

    /// The counters of the named listener.
    pub fn listener_stats(&self, name: &str) -> Option<Arc<ListenerStats>> {
        self.stats.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    /// Connections each worker was given to serve, by worker index (one entry when the runtime the
    /// server started on serves).
    pub fn worker_connections(&self) -> Vec<u64> {
        self.workers.each.iter().map(|w| w.accepted.load(std::sync::atomic::Ordering::Relaxed)).collect()
    }

    /// The connections and WebSocket tunnels each worker serves now, by worker index
    /// (counted only with more than one worker: all zero with one).
    pub fn worker_serving(&self) -> Vec<usize> {
        self.workers.each.iter().map(|w| w.live.now()).collect()
    }

    /// The bound address of each listener, by name, in name order.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.addrs.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Applies `commands` as one change: all of them or, on any error, none.
    pub async fn apply(&self, commands: Vec<Command>) -> Result<Applied, ControlError> {
        let mut writer = self.writer.lock().await;
        let started = Instant::now();
        let current = self.ctx.snapshot.load_full();
        let mut applied = Applied::default();
        let (commands, promotions) = candidates_as_upserts(commands, &current)?;
        let commands = self.discovered_as_upserts(commands, &current);

        // Build the changed pools off the serving threads.
        let upserts: Vec<(PoolConfig, Option<Arc<Pool>>)> = commands
            .iter()
            .filter_map(|c| match c {
                Command::UpsertPool(p) => Some((p.clone(), current.pools.get(&p.name).cloned())),
                _ => None,
            })
            .collect();
        for (config, _) in &upserts {
            upstream_tls(config)?;
        }
        let plugins = self.plugins.clone();
        let needs_evaluators: HashSet<String> = upserts
            .iter()
            .filter(|(config, _)| self.health.needs_evaluators(config))
            .map(|(config, _)| config.name.clone())
            .collect();
        let (built, evaluators) = tokio::task::spawn_blocking(move || {
            let mut built = Vec::with_capacity(upserts.len());
            let mut evaluators = std::collections::HashMap::new();
            for (config, old) in upserts {
                let pool = Pool::build(&config, &plugins, old.as_deref())?;
                if needs_evaluators.contains(&config.name) {
                    evaluators.insert(config.name.clone(), health::load(&config, &plugins, &pool)?);
                }
                built.push(Arc::new(pool));
            }
            Ok::<_, BuildError>((built, evaluators))
        })
        .await
        .map_err(|e| ControlError::Interrupted(e.to_string()))??;

        let mut pools = current.pools.clone();
        for mut pool in built {
            let name = pool.config.name.clone();
            // A swapped plugin stays until the file's entry for it changes.
            if let Some(was) = current.pools.get(&name) {
                pool = Self::keep_swaps(&mut writer, was, pool);
            }
            pools.insert(name, pool);
            applied.pools += 1;
        }
        for (name, pool) in &pools {
            let was = current.pools.get(name).is_some_and(|p| p.view.panic);
            if !current.pools.get(name).is_some_and(|p| Arc::ptr_eq(p, pool)) {
                log_panic(&pool.config, was, pool.view.panic);
            }
        }
        // Backends drained (key, spread, deadline): their tunnels and idle connections are
        // closed once the snapshot without them is out. Swaps to record, likewise.
        let mut drains: Vec<(u64, std::time::Duration, std::time::Duration)> = Vec::new();
        let mut records: Vec<((String, PluginKind), SwapRecord)> = Vec::new();
        // Health plugin swaps: the pool's health task takes them once the rest is out.
        let mut health_swaps: Vec<(String, health::Evaluators)> = Vec::new();
        for c in &commands {
            match c {
                Command::Verdicts(v) if self.health.current(&v.pool, v.task) => {
                    if let Some(pool) = pools.get(&v.pool) {
                        let pool = self.apply_verdicts(pool, &v.changes, &mut applied);
                        pools.insert(v.pool.clone(), pool);
                    }
                }
                Command::RampsEnded(name) => {
                    if let Some(pool) = pools.get(name).filter(|p| p.view.ramping()) {
                        let pool = Arc::new(pool.with_new_verdicts());
                        pools.insert(name.clone(), pool);
                    }
                }
                Command::SwapPlugin { pool: name, plugin: Swapped::Health(evaluators), .. } => {
                    if !pools.contains_key(name) {
                        return Err(ControlError::NoSuchPool(name.clone()));
                    }
                    if !self.health.watches(name) {
                        return Err(ControlError::NoHealthChecks(name.clone()));
                    }
                    health_swaps.push((name.clone(), evaluators.clone()));
                    applied.swaps += 1;
                }
                Command::SwapPlugin { pool: name, plugin, file_entry } => {
                    let pool = pools.get(name).ok_or_else(|| ControlError::NoSuchPool(name.clone()))?;
                    let (next, previous) = match plugin {
                        Swapped::Balancer(b) => {
                            b.succeed(&pool.balancer);
                            (pool.with_balancer(b.clone()), Swapped::Balancer(pool.balancer.clone()))
                        }
                        Swapped::Affinity(a) => {
                            if let (Some(new), Some(old)) = (a, &pool.affinity) {
                                new.succeed(old);
                            }
                            (pool.with_affinity(a.clone()), Swapped::Affinity(pool.affinity.clone()))
                        }
                        // Matched by the arm above.
                        Swapped::Health(_) => continue,
                    };
                    tracing::info!(pool = %name, kind = plugin.kind().as_str(), from = %previous.name(), to = %plugin.name(), "plugin swapped");
                    let record = SwapRecord { file_entry: file_entry.clone(), previous };
                    records.push(((name.clone(), plugin.kind()), record));
                    pools.insert(name.clone(), Arc::new(next));
                    applied.swaps += 1;
                }
                Command::Drain { pool: name, backend, undrain } => {
                    let pool = pools.get(name).ok_or_else(|| ControlError::NoSuchPool(name.clone()))?;
                    let Some(member) = pool.view.members.iter().find(|m| m.config.address == *backend) else {
                        return Err(ControlError::NoSuchBackend { pool: name.clone(), backend: backend.clone() });
                    };
                    let was = member.live.set_drained(!*undrain);
                    if was == *undrain {
                        tracing::info!(pool = %name, %backend, drained = !*undrain, "backend {}", if *undrain { "undrained" } else { "drained" });
                        if *undrain {
                            // Unless its health drain still goes on.
                            if member.live.verdict() != Verdict::Unhealthy {
                                self.ctx.tunnels.undrain(member.live.key());
                            }
                        } else {
                            drains.push((member.live.key(), pool.config.drain_spread, pool.config.drain_deadline));
                        }
                        let next = Arc::new(pool.with_new_verdicts());
                        pools.insert(name.clone(), next);
                        applied.drains += 1;
                    }
                }
                _ => {}
            }
        }
        let mut listeners = current.listeners.clone();
        let mut to_bind: Vec<ListenerConfig> = Vec::new();
        let mut to_close: Vec<String> = Vec::new();
        let mut changed: Vec<String> = Vec::new();
        for c in &commands {
            match c {
                Command::UpsertPool(_)
                | Command::Discovered(_)
                | Command::SetCandidate { .. }
                | Command::Promote { .. }
                | Command::Verdicts(_)
                | Command::RampsEnded(_)
                | Command::ReloadCertificates
                | Command::SwapPlugin { .. }
                | Command::Drain { .. } => {}
                Command::RemovePool(name) => {
                    writer.swaps.retain(|(pool, _), _| pool != name);
                    if pools.remove(name).is_some() {
                        applied.pools_removed += 1;
                    }
                }
                Command::UpsertListener(l) => {
                    match writer.listeners.get(&l.name) {
                        Some(running) if running.addr == l.listen || l.listen.port() == 0 => {
                            applied.listeners_changed += 1;
                            changed.push(l.name.clone());
                        }
                        Some(_) => {
                            to_close.push(l.name.clone());
                            to_bind.push(l.clone());
                        }
                        None => to_bind.push(l.clone()),
                    }
                    listeners.insert(l.name.clone(), Arc::new(l.clone()));
                }
                Command::RemoveListener(name) => {
                    listeners.remove(name);
                    to_close.push(name.clone());
                }
            }
        }
        let pools_may_come = self.pools_may_come.load(std::sync::atomic::Ordering::Relaxed);
        for l in listeners.values().filter(|_| !pools_may_come) {
            for pool in std::iter::once(&l.pool).chain(l.routes.iter().map(|r| &r.pool)) {
                if !pools.contains_key(pool) {
                    return Err(ControlError::NoPool { listener: l.name.clone(), pool: pool.clone() });
                }
            }
        }
        // TLS settings of changed listeners, built (their files read) before anything is
        // published, so a file that does not load changes nothing.
        let mut tls_changes: Vec<(Arc<Terminator>, Option<Arc<tls::Acceptor>>)> = Vec::new();
        for name in &changed {
            if let (Some(running), Some(l)) = (writer.listeners.get(name), listeners.get(name)) {
                let acceptor = Self::build_tls(&running.tls, l)?;
                tls_changes.push((running.tls.clone(), acceptor));
            }
        }
        // Bind before publishing, so a busy port changes nothing: one socket for every
        // worker, its descriptor cloned into each worker's reactor.
        let mut bound = Vec::with_capacity(to_bind.len());
        for l in &to_bind {
            let bind_err = |source| ControlError::Bind { name: l.name.clone(), addr: l.listen, source };
            let terminator = Arc::new(Terminator::default());
            terminator.set(Self::build_tls(&terminator, l)?);
            let sockets = listen::bind(l.listen, self.workers.each.len()).map_err(bind_err)?;
            let addr = sockets[0].local_addr().map_err(bind_err)?;
            let mut acceptors = Vec::with_capacity(sockets.len());
            for (worker, socket) in self.workers.each.iter().zip(sockets) {
                let _on = worker.handle.enter();
                let listener = tokio::net::TcpListener::from_std(socket).map_err(bind_err)?;
                acceptors.push((worker.clone(), Acceptor::new(listener, l.name.clone())));
            }
            bound.push((l.name.clone(), acceptors, addr, terminator));
        }

        let next = Arc::new(Snapshot { pools, listeners, built_at: Instant::now() });
        // A listener turning TLS on gets its acceptor before the snapshot that says so,
        // one turning it off loses it after: no connection is served in clear text under
        // settings that say TLS.
        for (terminator, acceptor) in &tls_changes {
            if acceptor.is_some() {
                terminator.set(acceptor.clone());
            }
        }
        self.ctx.snapshot.store(next.clone());
        writer.swaps.extend(records);
        for (key, spread, deadline) in drains {
            applied.idle_closed += self.workers.forget_idle(key);
            applied.tunnels_drained += self.ctx.tunnels.drain(key, spread, deadline);
        }
        for (terminator, acceptor) in tls_changes {
            if acceptor.is_none() {
                terminator.set(None);
            }
        }
        if commands.iter().any(|c| matches!(c, Command::ReloadCertificates)) {
            self.reload_certificates(&writer, &next, &changed, &mut applied);
        }
        for name in &changed {
            // Its max_connections may have changed: a full accept loop looks again.
            if let Some(running) = writer.listeners.get(name) {
                running.slots.limit_changed();
            }
        }

        for name in &to_close {
            if let Some(running) = writer.listeners.remove(name) {
                running.abort();
                if !to_bind.iter().any(|l| &l.name == name) {
                    applied.listeners_closed += 1;
                    self.stats.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
                }
                tracing::info!(listener = %name, addr = %running.addr, "listener closed");
            }
        }
        for (name, acceptors, addr, tls) in bound {
            let pool = next.listeners.get(&name).map(|l| l.pool.clone()).unwrap_or_default();
            tracing::info!(listener = %name, %addr, %pool, workers = acceptors.len(), "listening");
            let slots = Arc::new(Slots::default());
            let stats = self
                .stats
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(name.clone())
                .or_default()
                .clone();
            let label: Arc<str> = name.as_str().into();
            let tasks = acceptors
                .into_iter()
                .map(|(worker, acceptor)| {
                    let accept =
                        self.accept_loop(&worker, acceptor, slots.clone(), label.clone(), stats.clone(), tls.clone());
                    worker.handle.spawn(accept)
                })
                .collect();
            writer.listeners.insert(name, Running { addr, tasks, slots, tls });
            applied.listeners_bound += 1;
        }
        *self.addrs.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            writer.listeners.iter().map(|(n, r)| (n.clone(), r.addr)).collect();

        self.health.sync(&current, &next, evaluators);
        for (pool, evaluators) in health_swaps {
            if !self.health.swap(&pool, evaluators) {
                tracing::error!(%pool, "the pool's health task ended before its plugins could be swapped");
            }
        }
        self.discover.sync(&next);
        // A pool whose new view has backends in slow start gets a view without them when
        // the window has passed, so placement stops checking (and a later start is seen).
        for (name, pool) in &next.pools {
            if pool.view.ramping() && !current.pools.get(name).is_some_and(|p| Arc::ptr_eq(p, pool)) {
                let (later, name) = (self.later.clone(), name.clone());
                let wait = pool.config.health.slow_start + std::time::Duration::from_millis(10);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = later.send(Command::RampsEnded(name));
                });
            }
        }
        self.retire_removed(&current, &next, &mut applied);
        for (pool, detail) in promotions {
            self.counters.promotions.inc();
            self.counters.record("promote", &pool, detail, true);
        }
        tracing::debug!(?applied, took_ms = started.elapsed().as_millis() as u64, "snapshot published");
        Ok(applied)
    }

    /// The acceptor for a listener's TLS settings (none for a cleartext listener), built
    /// with `terminator`'s session state.
    fn build_tls(terminator: &Terminator, l: &ListenerConfig) -> Result<Option<Arc<tls::Acceptor>>, ControlError> {
        match &l.tls {
            None => Ok(None),
            Some(config) => {
                terminator.build(config).map(Some).map_err(|source| ControlError::Tls { name: l.name.clone(), source })
            }
        }
    }

    /// Reads every TLS listener's files again, except those of `skip` (just built), and
    /// swaps in what loads; a listener whose files do not load keeps its certificates.
    fn reload_certificates(&self, writer: &Writer, next: &Snapshot, skip: &[String], applied: &mut Applied) {
        for (name, running) in &writer.listeners {
            let Some(l) = next.listeners.get(name).filter(|l| l.tls.is_some()) else { continue };
            if skip.contains(name) {
                continue;
            }
            match Self::build_tls(&running.tls, l) {
                Ok(acceptor) => {
                    running.tls.set(acceptor);
                    applied.tls_reloaded += 1;
                    tracing::info!(listener = %name, "TLS certificates reloaded");
                }
                Err(e) => {
                    applied.tls_failed += 1;
                    tracing::error!(error = %e, "TLS certificates not reloaded; the listener keeps its current ones");
                    applied.tls_errors.push(e.to_string());
                }
            }
        }
    }

    /// A listener's accept loop: each connection is served as the listener's current
    /// settings say (so a reload that changes its protocol takes effect for the next
    /// connection, with no rebind).
    fn accept_loop(
        &self,
        worker: &Arc<workers::Worker>,
        acceptor: Acceptor,
        slots: Arc<Slots>,
        name: Arc<str>,
        stats: Arc<ListenerStats>,
        tls: Arc<Terminator>,
    ) -> impl Future<Output = ()> + use<> {
        let (stop, worker, all) = (self.stop.clone(), worker.clone(), self.workers.each.clone());
        let snapshot = worker.ctx.snapshot.clone();
        let limit = {
            let name = name.clone();
            move || snapshot.load().listeners.get(&*name).and_then(|l| l.max_connections)
        };
        listen::serve(acceptor, slots, limit, stop.clone(), move |stream, peer, slot| {
            // Removed by a reload that has not stopped this loop yet: stop.
            let Some(config) = worker.ctx.snapshot.load().listeners.get(&*name).cloned() else { return false };
            stats.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (target, live) = worker.choose(&all);
            target.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (ctx, stop, stats) = (target.ctx.clone(), stop.clone(), stats.clone());
            let tls = match (&config.tls, tls.current()) {
                (None, _) => None,
                (Some(_), Some(acceptor)) => Some(acceptor),
                // Between the snapshot that turns TLS off and the acceptor's removal:
                // never serve clear text under settings that say TLS.
                (Some(_), None) => {
                    stats.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return true;
                }
            };
            // Boxed: tokio copies a task's whole future when it spawns it (twice) and when
            // it finishes (three times), and an HTTP connection's is about 10 KB; boxed,
            // each is a pointer's copy (about 2,000 instructions a tcp connection,
            // BENCHMARKS.md, L4; ~105,000 of memcpy a TLS connection, "Resumed TLS 1.3
            // handshakes").
            let serve = move |stream| -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
                if config.protocol.is_l4() {
                    Box::pin(async move {
                        let _live = live;
                        tcp::session::run(stream, peer, slot, config, stats, ctx, stop).await;
                    })
                } else {
                    Box::pin(http::server::connection(stream, peer, slot, live, config, stats, ctx, stop, tls))
                }
            };
            if Arc::ptr_eq(target, &worker) {
                tokio::spawn(serve(stream));
                return true;
            }
            // Handed over: out of this worker's reactor, into the other's.
            match stream.into_std() {
                Ok(stream) => {
                    target.handle.spawn(async move {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => serve(stream).await,
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "a connection handed to another worker was lost")
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!(%peer, error = %e, "a connection handed to another worker was lost"),
            }
            true
        })
    }

    /// Applies health verdicts to `pool`'s backends (each transition logged once; the
    /// tunnels of a backend turning unhealthy drained if the pool says so) and returns the
    /// pool with a new view of them. Verdicts about backends that left are ignored.
    fn apply_verdicts(&self, pool: &Arc<Pool>, changes: &[health::Change], applied: &mut Applied) -> Arc<Pool> {
        let config = &pool.config;
        let mut unhealthy = Vec::new();
        let mut changed = 0;
        // One pass to index the members, not one search per change (a pool entering panic
        // at 10,000 backends changes thousands of verdicts at once).
        let by_key: std::collections::HashMap<u64, usize> =
            pool.view.members.iter().enumerate().map(|(i, m)| (m.live.key(), i)).collect();
        for change in changes {
            let Some(&id) = by_key.get(&change.key) else { continue };
            let m = &pool.view.members[id];
            let was = m.live.set_verdict(change.verdict, &change.reason);
            if was == change.verdict {
                continue;
            }
            changed += 1;
            let (pool, backend, reason) = (&config.name, &m.config.address, &change.reason);
            match change.verdict {
                Verdict::Unhealthy => {
                    unhealthy.push((id as u32, change.key));
                    tracing::warn!(%pool, %backend, from = %was, to = %change.verdict, %reason, "backend health changed");
                }
                _ => {
                    if was == Verdict::Unhealthy && !m.live.is_drained() {
                        // Its new tunnels are not the drain's: that ended with the recovery
                        // (unless an operator drained it too).
                        self.ctx.tunnels.undrain(change.key);
                    }
                    tracing::info!(%pool, %backend, from = %was, to = %change.verdict, %reason, "backend health changed")
                }
            }
        }
        applied.verdicts += changed;
        if changed == 0 {
            return pool.clone();
        }
        let next = Arc::new(pool.with_new_verdicts());
        log_panic(config, pool.view.panic, next.view.panic);
        if config.health.on_unhealthy == OnUnhealthy::Drain {
            // Only backends that really leave: in panic mode an unhealthy one still serves.
            for (id, key) in unhealthy.into_iter().filter(|(id, _)| !next.view.is_eligible(*id)) {
                let drained = self.ctx.tunnels.drain(key, config.drain_spread, config.drain_deadline);
                applied.tunnels_drained += drained;
                if drained > 0 {
                    let backend = &next.view.members[id as usize].config.address;
                    tracing::info!(pool = %config.name, %backend, tunnels = drained, "draining the tunnels of an unhealthy backend");
                }
            }
        }
        next
    }

    /// Retires every backend of `old` that `new` no longer has (by live state): closes
    /// its idle connections and drains its tunnels over its pool's drain settings (the
    /// new pool's, if the pool stays). O(backends).
    fn retire_removed(&self, old: &Snapshot, new: &Snapshot, applied: &mut Applied) {
        for (name, old_pool) in &old.pools {
            let new_pool = new.pools.get(name);
            if new_pool.is_some_and(|p| Arc::ptr_eq(p, old_pool)) {
                continue;
            }
            let kept: HashSet<u64> =
                new_pool.map(|p| p.view.members.iter().map(|m| m.live.key()).collect()).unwrap_or_default();
            let config = new_pool.map_or(&old_pool.config, |p| &p.config);
            for member in &old_pool.view.members {
                let key = member.live.key();
                if kept.contains(&key) {
                    continue;
                }
                member.live.retire();
                let idle = self.workers.forget_idle(key);
                let tunnels = self.ctx.tunnels.drain(key, config.drain_spread, config.drain_deadline);
                applied.backends_retired += 1;
                applied.idle_closed += idle;
                applied.tunnels_drained += tunnels;
                tracing::info!(pool = %name, backend = %member.config.address, tunnels, idle, "backend removed; draining its tunnels");
            }
        }
    }

    /// `built`, a pool a reload rebuilt from the file, with the plugins swapped into `was`
    /// (its version before) kept where the file's entry for them did not change since the
    /// swap; swaps whose entry changed end (the file's plugin serves, and the rollback
    /// record goes).
    fn keep_swaps(writer: &mut Writer, was: &Arc<Pool>, built: Arc<Pool>) -> Arc<Pool> {
        let name = built.config.name.clone();
        let mut pool = built;
        if let Some(record) = writer.swaps.get(&(name.clone(), PluginKind::Balancer)) {
            if record.file_entry.as_ref() == Some(&pool.config.balancer) {
                if !Arc::ptr_eq(&pool.balancer, &was.balancer) {
                    pool = Arc::new(pool.with_balancer(was.balancer.clone()));
                }
            } else {
                tracing::info!(pool = %name, balancer = %pool.config.balancer.source, "the config file changed the balancer: it replaces the swapped one");
                writer.swaps.remove(&(name.clone(), PluginKind::Balancer));
            }
        }
        if let Some(record) = writer.swaps.get(&(name.clone(), PluginKind::Affinity)) {
            if record.file_entry == pool.config.affinity {
                pool = Arc::new(pool.with_affinity(was.affinity.clone()));
            } else {
                tracing::info!(pool = %name, "the config file changed the affinity plugin: it replaces the swapped one");
                writer.swaps.remove(&(name, PluginKind::Affinity));
            }
        }
        pool
    }

    /// Puts `plugin` in place in `pool` (already loaded, configured and dry-run): a swap
    /// through the one writer, recorded against the config file's current entry for it.
    pub async fn swap(&self, pool: &str, plugin: Swapped) -> Result<Applied, ControlError> {
        // Held so a reload cannot come between reading the file's entry and the swap.
        let config = self.config.lock().await;
        let shared = self.cluster_pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(pool).cloned();
        let file = config.pools.get(pool).or(shared.as_ref());
        let file_entry = match plugin.kind() {
            PluginKind::Balancer => file.map(|p| p.balancer.clone()),
            PluginKind::Affinity => file.and_then(|p| p.affinity.clone()),
            // The health task itself remembers the file's evaluators.
            PluginKind::Health => None,
        };
        self.apply(vec![Command::SwapPlugin { pool: pool.to_owned(), plugin, file_entry }]).await
    }

    /// The version a rollback of `pool`'s `kind` goes back to: the one the last swap
    /// replaced.
    pub async fn previous(&self, pool: &str, kind: PluginKind) -> Result<Swapped, ControlError> {
        let writer = self.writer.lock().await;
        if kind == PluginKind::Health {
            return self
                .health
                .previous(pool)
                .map(Swapped::Health)
                .ok_or(ControlError::NothingToRollBack { pool: pool.to_owned(), kind: kind.as_str() });
        }
        writer
            .swaps
            .get(&(pool.to_owned(), kind))
            .map(|r| r.previous.clone())
            .ok_or_else(|| ControlError::NothingToRollBack { pool: pool.to_owned(), kind: kind.as_str() })
    }

    /// Drains (or undrains) the backend at `backend` in `pool`.
    pub async fn drain(&self, pool: &str, backend: &str, undrain: bool) -> Result<Applied, ControlError> {
        let applied =
            self.apply(vec![Command::Drain { pool: pool.to_owned(), backend: backend.to_owned(), undrain }]).await;
        let (kind, counter) =
            if undrain { ("undrain", &self.counters.undrains) } else { ("drain", &self.counters.drains) };
        if applied.is_ok() {
            counter.inc();
        }
        self.counters.record(kind, pool, backend, applied.is_ok());
        applied
    }

    /// Stops accepting on every listener (open connections are left to the caller).
    pub(crate) async fn close_listeners(&self) {
        let mut writer = self.writer.lock().await;
        for (_, running) in std::mem::take(&mut writer.listeners) {
            running.abort();
        }
    }

    /// Aborts every accept task now (for `Drop`, which cannot wait for the writer).
    pub(crate) fn abort_listeners(&self) {
        if let Ok(mut writer) = self.writer.try_lock() {
            for (_, running) in std::mem::take(&mut writer.listeners) {
                running.abort();
            }
        }
    }
}

/// Promotions made by a list of commands: `(pool, what)`.
type Promotions = Vec<(String, String)>;

/// Turns the candidate commands into the pool upserts they amount to, from the pools of
/// `current`; also returns each promotion's `(pool, what)`.
fn candidates_as_upserts(
    mut commands: Vec<Command>,
    current: &Snapshot,
) -> Result<(Vec<Command>, Promotions), ControlError> {
    let mut promotions = Vec::new();
    for c in &mut commands {
        let (pool, kind) = match c {
            Command::SetCandidate { pool, kind, .. } | Command::Promote { pool, kind } => (pool.clone(), *kind),
            _ => continue,
        };
        let Some(live) = current.pools.get(&pool) else { return Err(ControlError::NoSuchPool(pool)) };
        let mut config = live.config.clone();
        let slot = match kind {
            CandidateKind::Shadow => &mut config.shadow,
            CandidateKind::Canary => &mut config.canary,
        };
        match c {
            Command::SetCandidate { candidate, .. } => *slot = candidate.clone(),
            _ => {
                let Some(candidate) = slot.take() else { return Err(ControlError::NoCandidate { pool, kind }) };
                let detail = format!("{kind} {} -> balancer (was {})", candidate.plugin.source, config.balancer.source);
                tracing::info!(%pool, %kind, plugin = %candidate.plugin.source, "candidate promoted to live balancer");
                config.balancer = candidate.plugin;
                promotions.push((pool, detail));
            }
        }
        *c = Command::UpsertPool(config);
    }
    Ok((commands, promotions))
}

/// Sets `config`'s backends to the file's (those not discovered) followed by `found`,
/// less those the file already lists (the file's entry wins: its weight, its limits).
fn with_discovered(config: &mut PoolConfig, found: &[crate::config::BackendConfig]) {
    config.backends.retain(|b| !b.discovered);
    let written: HashSet<String> = config.backends.iter().map(|b| b.address.clone()).collect();
    let file_addrs: HashSet<SocketAddr> = config.backends.iter().map(|b| b.socket_addr).collect();
    config.backends.extend(
        found.iter().filter(|b| !written.contains(&b.address) && !file_addrs.contains(&b.socket_addr)).cloned(),
    );
}

/// Builds a pool's upstream TLS settings now, so a refused key fails the load rather
/// than every connection, and says loudly that a pool does not verify its backends.
fn upstream_tls(config: &PoolConfig) -> Result<(), ControlError> {
    let Some(tls) = &config.upstream.tls else { return Ok(()) };
    crate::net::tls::client::settings(tls, config.upstream.protocol)
        .map_err(|e| ControlError::UpstreamTls { pool: config.name.clone(), message: e.to_string() })?;
    if !tls.verify {
        tracing::warn!(
            pool = %config.name,
            at = %tls.at,
            "upstream TLS certificates are NOT verified (verify = false): anyone on the path to the backends can read and change the traffic"
        );
    }
    Ok(())
}

/// Logs a pool entering or leaving panic mode.
fn log_panic(config: &PoolConfig, was: bool, is: bool) {
    match (was, is) {
        (false, true) => tracing::error!(
            pool = %config.name,
            threshold_percent = config.health.panic_threshold_percent,
            "too few backends are usable: panic mode, every backend takes work"
        ),
        (true, false) => tracing::info!(pool = %config.name, "enough backends are usable again: panic mode over"),
        _ => {}
    }
}
