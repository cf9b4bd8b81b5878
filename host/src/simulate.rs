//! Offline simulation: a real plugin in the real runtime against a simulated pool, with no
//! sockets. It powers `weir plugin simulate` and the algorithm property tests.
//!
//! Backends get stable fake addresses (`10.0.x.y:80`) that are never connected to. Load is
//! simulated by opening and closing connections on the backends' live counters, exactly
//! the figures the proxy maintains, so a plugin sees what it would see in production.
//! Membership changes rebuild the snapshot the way a config reload does: live counters
//! and the loaded plugin are kept, and the plugin sees a new generation.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::config::{
    BackendConfig, Config, OnPluginError, PluginLimits, PluginRef, PluginSettings, PluginSource, PoolConfig,
};
use crate::core::Protocol;
use crate::plugin::{CallError, LoadError, PickRequest, PluginRuntime, PluginStats};
use crate::state::{BuildError, Placement, Pool, Snapshot};

const POOL: &str = "sim";

/// A simulated backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimBackend {
    /// Weight (0 = never eligible).
    pub weight: u32,
    /// `max_connections` (0 = no limit).
    pub max_connections: u32,
}

impl SimBackend {
    /// Weight 1, no connection limit.
    pub const fn equal() -> Self {
        Self { weight: 1, max_connections: 0 }
    }
}

/// Why a simulation could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The plugin runtime could not start, or the plugin could not be read.
    #[error(transparent)]
    Runtime(#[from] LoadError),
    /// The plugin did not load or refused its config.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The config is not JSON.
    #[error("plugin config is not JSON: {0}")]
    Config(#[from] serde_json::Error),
    /// No backend with that id.
    #[error("no backend {0}")]
    NoSuchBackend(u32),
}

/// A plugin running against a simulated pool.
#[derive(Debug)]
pub struct Sim {
    plugins: PluginRuntime,
    config: Config,
    snapshot: Snapshot,
    next_address: u32,
}

impl Sim {
    /// Loads `plugin` (a pack name, or a path to a `.wasm` component) with `config_json`
    /// for a pool of `backends`.
    ///
    /// Offline, a decision is never late: the deadlines are generous (1 s per call, 60 s
    /// per rebuild), so a busy machine (or valgrind) does not turn a slow call or table
    /// rebuild into a fallback placement. [`Sim::with_settings`] chooses them.
    pub fn new(plugin: &str, config_json: &str, backends: &[SimBackend]) -> Result<Self, SimError> {
        let settings = PluginSettings {
            call_timeout: Duration::from_secs(1),
            rebuild_timeout: Duration::from_secs(60),
            ..PluginSettings::default()
        };
        Self::with_settings(plugin, config_json, backends, settings)
    }

    /// As [`Sim::new`], with the plugin runtime's deadlines and limits given (for example
    /// the proxy's defaults, [`PluginSettings::default`]).
    pub fn with_settings(
        plugin: &str,
        config_json: &str,
        backends: &[SimBackend],
        settings: PluginSettings,
    ) -> Result<Self, SimError> {
        let value: serde_json::Value = serde_json::from_str(config_json)?;
        let source = PluginSource::parse(plugin, std::path::Path::new("."));
        let plugins = PluginRuntime::new(settings.clone())?;
        let mut next_address = 0;
        let pool = PoolConfig {
            name: POOL.into(),
            backends: backends.iter().map(|b| fake_backend(&mut next_address, *b)).collect(),
            balancer: PluginRef {
                source,
                config_json: value.to_string(),
                limits: PluginLimits::default(),
                at: None,
                config_at: None,
            },
            affinity: None,
            on_plugin_error: OnPluginError::Reject,
            shadow: None,
            canary: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle_per_backend: 0,
            drain_spread: Duration::ZERO,
            drain_deadline: Duration::ZERO,
            health: crate::config::HealthConfig::default(),
            send_proxy: None,
            upstream: Default::default(),
            discover: None,
            share_stick_tables: false,
        };
        let config = Config { plugins: settings, pools: BTreeMap::from([(POOL.to_owned(), pool)]), ..Config::empty() };
        let snapshot = Snapshot::build(&config, &plugins, None)?;
        Ok(Self { plugins, config, snapshot, next_address })
    }

    fn rebuild(&mut self, change: impl FnOnce(&mut Vec<BackendConfig>)) -> Result<(), SimError> {
        let mut config = self.config.clone();
        if let Some(pool) = config.pools.get_mut(POOL) {
            change(&mut pool.backends);
        }
        self.snapshot = Snapshot::build(&config, &self.plugins, Some(&self.snapshot))?;
        self.config = config;
        Ok(())
    }

    /// The pool as the proxy sees it.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.snapshot.pools[POOL]
    }

    /// The request the plugin is asked about for `key`: client ip derived from the key,
    /// header `x-key`, cookie `key`, path `/k/{key}?key={key}`. `None`: client 192.0.2.1,
    /// path `/`, and no header, cookie or query.
    pub fn request(key: Option<u64>) -> PickRequest {
        let mut builder = http::Request::builder().header("host", "sim.example");
        let client = match key {
            Some(k) => {
                let text = k.to_string();
                builder = builder
                    .uri(format!("/k/{text}?key={text}"))
                    .header("x-key", HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0")))
                    .header("cookie", format!("key={text}"));
                let ip = 0x0b00_0000u32.wrapping_add(k as u32); // 11.0.0.0 + k
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), 40_000)
            }
            None => {
                builder = builder.uri("/");
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40_000)
            }
        };
        let head = builder.body(()).ok().map(|r| Box::new(r.into_parts().0));
        PickRequest { protocol: Protocol::Http1, client, sni: None, alpn: None, client_subject: None, head }
    }

    /// [`Sim::request`] with `headers` added; a `{key}` in a value becomes the key (or
    /// is removed when there is none), so each key can carry its own header value.
    pub fn request_with(key: Option<u64>, headers: &[(String, String)]) -> PickRequest {
        let mut req = Self::request(key);
        if let Some(head) = req.head.as_mut() {
            let key = key.map(|k| k.to_string()).unwrap_or_default();
            for (name, value) in headers {
                let value = value.replace("{key}", &key);
                if let (Ok(n), Ok(v)) = (http::HeaderName::try_from(name.as_str()), HeaderValue::try_from(value)) {
                    head.headers.append(n, v);
                }
            }
        }
        req
    }

    /// Asks the balancer directly, as the proxy does before its own policies (affinity,
    /// `max_connections`, slow start, `on_plugin_error`): the plugin's answer, or why it
    /// gave none. An id that is not eligible is an error ([`CallError::InvalidBackend`]).
    /// Unlike [`Sim::place`], an empty pool is asked too.
    pub fn ask(&self, req: PickRequest) -> (PickRequest, Result<u32, CallError>) {
        let pool = self.pool();
        pool.balancer.pick(pool.host(), req)
    }

    /// Bytes of linear memory of the balancer's instance on this thread (`None` before
    /// the first decision, or after a trap dropped it).
    pub fn instance_memory(&self) -> Option<usize> {
        self.pool().balancer.instance_memory()
    }

    /// Places one request for `key` (see [`Sim::request`]).
    pub fn pick(&self, key: Option<u64>) -> Placement {
        self.pool().place(Self::request(key), None).1
    }

    /// Places a prepared request, returning it for reuse.
    pub fn place(&self, req: PickRequest) -> (PickRequest, Placement) {
        self.pool().place(req, None)
    }

    fn live(&self, id: u32) -> Option<&crate::state::BackendLive> {
        self.pool().view.live(id)
    }

    /// Opens a long-lived connection to backend `id`.
    pub fn open(&self, id: u32) {
        if let Some(l) = self.live(id) {
            l.open();
        }
    }

    /// Closes a connection opened with [`Sim::open`].
    pub fn close(&self, id: u32) {
        if let Some(l) = self.live(id) {
            l.close();
        }
    }

    /// Open connections of backend `id`.
    pub fn active(&self, id: u32) -> u32 {
        self.live(id).map_or(0, |l| l.active.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Sets backend `id`'s latency EWMA.
    pub fn set_latency_us(&self, id: u32, us: u32) {
        if let Some(l) = self.live(id) {
            l.latency_ewma_us.store(us, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The stable address of backend `id` (empty if there is none).
    pub fn address(&self, id: u32) -> String {
        self.pool().view.members.get(id as usize).map(|b| b.config.address.clone()).unwrap_or_default()
    }

    /// Removes backend `id`; later ids shift down by one. Live state of the others is kept.
    pub fn remove(&mut self, id: u32) -> Result<(), SimError> {
        if id as usize >= self.len() {
            return Err(SimError::NoSuchBackend(id));
        }
        self.rebuild(|l| {
            l.remove(id as usize);
        })
    }

    /// Sets backend `id`'s weight (0: it is no longer eligible), as a reload would.
    pub fn set_weight(&mut self, id: u32, weight: u32) -> Result<(), SimError> {
        if id as usize >= self.len() {
            return Err(SimError::NoSuchBackend(id));
        }
        self.rebuild(|l| l[id as usize].weight = weight)
    }

    /// Gives backend `id` a health verdict (unhealthy: it is no longer eligible), as the
    /// health task would.
    pub fn set_verdict(&mut self, id: u32, verdict: crate::core::Verdict) -> Result<(), SimError> {
        let live = self.live(id).ok_or(SimError::NoSuchBackend(id))?;
        live.set_verdict(verdict, "simulated");
        // A pool nothing judges resets its verdicts when rebuilt: it is judged now (the
        // evaluator is named, never run: the simulation has no health task).
        if let Some(pool) = self.config.pools.get_mut(POOL)
            && pool.health.plugins.is_empty()
        {
            pool.health.plugins.push(PluginRef::pack("threshold"));
        }
        self.rebuild(|_| {})
    }

    /// Sets backend `id`'s labels (what `pool.members` answers), as a reload would.
    pub fn set_labels(&mut self, id: u32, labels: Vec<(String, String)>) -> Result<(), SimError> {
        if id as usize >= self.len() {
            return Err(SimError::NoSuchBackend(id));
        }
        self.rebuild(|l| l[id as usize].labels = labels)
    }

    /// Adds a backend at the end, with a new address.
    pub fn add(&mut self, b: SimBackend) -> Result<(), SimError> {
        let backend = fake_backend(&mut self.next_address, b);
        self.rebuild(|l| l.push(backend))
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.pool().view.members.len()
    }

    /// Whether the pool has no backends.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The plugin's counters (traps, errors, ...).
    pub fn stats(&self) -> &PluginStats {
        &self.pool().balancer.stats
    }
}

/// A backend with the next unused fake address (`10.0.x.y:80`, never connected to).
fn fake_backend(next: &mut u32, b: SimBackend) -> BackendConfig {
    let n = *next;
    *next += 1;
    let socket_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, (n >> 8) as u8, n as u8)), 80 + (n >> 16) as u16);
    BackendConfig {
        address: socket_addr.to_string(),
        socket_addr,
        weight: b.weight,
        max_connections: b.max_connections,
        labels: Vec::new(),
        discovered: false,
    }
}

/// What `weir plugin simulate` runs.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Pack name or `.wasm` path.
    pub plugin: String,
    /// Plugin config, JSON.
    pub config_json: String,
    /// The pool.
    pub backends: Vec<SimBackend>,
    /// Requests (or connections) to place.
    pub requests: u64,
    /// Distinct hash keys, cycled over the requests; 0 = requests carry no key.
    pub keys: u64,
    /// Connections stay open, so load accumulates.
    pub long_lived: bool,
    /// Latency EWMA per backend, µs (shorter lists leave the rest at 0).
    pub latency_us: Vec<u32>,
    /// Backends to remove (the last ones) after the run.
    pub remove: u32,
    /// Backends to add after the run.
    pub add: u32,
    /// Labels `(backend id, key, value)` the plugin reads in `pool.members`.
    pub labels: Vec<(u32, String, String)>,
    /// Headers every request carries (a `{key}` in a value becomes the request's key).
    pub headers: Vec<(String, String)>,
    /// The plugin limits (a config file's `[plugins]`); `None`: generous offline
    /// deadlines ([`Sim::new`]).
    pub settings: Option<PluginSettings>,
}

/// One backend's row of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendRow {
    /// Address.
    pub address: String,
    /// Weight.
    pub weight: u32,
    /// Requests placed on it.
    pub picks: u64,
    /// Its share of the placed requests.
    pub share: f64,
    /// Open connections at the end (long-lived runs).
    pub active: u32,
}

/// The outcome of a scenario.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Plugin.
    pub plugin: String,
    /// Per backend, in pool order.
    pub backends: Vec<BackendRow>,
    /// Requests placed.
    pub placed: u64,
    /// Requests the plugin could not place (no backend, or it failed).
    pub unplaced: u64,
    /// Busiest backend's picks over the mean of the eligible backends' picks.
    pub max_over_mean: f64,
    /// Fraction of keys mapped to another backend after the pool change, if there was one.
    pub remapped: Option<f64>,
    /// Mean time of one placement through the runtime, ns (timed around each call). Calls
    /// that built an instance (the first, and each after a trap) are left out: their
    /// cost is `instantiations`'.
    pub ns_per_decision: f64,
    /// Traps during the run (each dropped the instance; the next call built another).
    pub traps: u64,
    /// Instances built during the run, and their mean cost (instantiation, `configure`,
    /// `pool-changed` and that call's decision), µs.
    pub instantiations: u64,
    /// See `instantiations`.
    pub instantiation_us: f64,
}

impl Scenario {
    /// Runs the scenario.
    pub fn run(&self) -> Result<Report, SimError> {
        let mut sim = match &self.settings {
            Some(settings) => Sim::with_settings(&self.plugin, &self.config_json, &self.backends, settings.clone())?,
            None => Sim::new(&self.plugin, &self.config_json, &self.backends)?,
        };
        let mut labels: BTreeMap<u32, Vec<(String, String)>> = BTreeMap::new();
        for (id, k, v) in &self.labels {
            labels.entry(*id).or_default().push((k.clone(), v.clone()));
        }
        for (id, l) in labels {
            sim.set_labels(id, l)?;
        }
        for (id, &us) in self.latency_us.iter().enumerate() {
            sim.set_latency_us(id as u32, us);
        }
        let mut picks = vec![0u64; sim.len()];
        let (mut unplaced, mut nanos, mut timed) = (0u64, 0u128, 0u64);
        let (mut built, mut build_nanos) = (0u64, 0u128);
        let instantiations = || sim.stats().instantiations.load(std::sync::atomic::Ordering::Relaxed);
        let traps_before = sim.stats().traps.load(std::sync::atomic::Ordering::Relaxed);
        for i in 0..self.requests {
            let req = Sim::request_with((self.keys > 0).then(|| i % self.keys), &self.headers);
            let before = instantiations();
            let started = std::time::Instant::now();
            let (_, placement) = sim.place(req);
            let took = started.elapsed().as_nanos();
            if instantiations() == before {
                nanos += took;
                timed += 1;
            } else {
                built += 1;
                build_nanos += took;
            }
            match placement {
                Placement::Backend(id) => {
                    picks[id as usize] += 1;
                    if self.long_lived {
                        sim.open(id);
                    }
                }
                Placement::NoBackend | Placement::Rejected => unplaced += 1,
            }
        }
        let placed = self.requests - unplaced;
        let backends: Vec<BackendRow> = picks
            .iter()
            .enumerate()
            .map(|(id, &n)| BackendRow {
                address: sim.address(id as u32),
                weight: self.backends[id].weight,
                picks: n,
                share: if placed == 0 { 0.0 } else { n as f64 / placed as f64 },
                active: sim.active(id as u32),
            })
            .collect();
        let eligible = self.backends.iter().filter(|b| b.weight > 0).count().max(1);
        let mean = placed as f64 / eligible as f64;
        let max = picks.iter().copied().max().unwrap_or(0) as f64;

        let remapped = if self.keys > 0 && (self.remove > 0 || self.add > 0) {
            let map = |sim: &Sim| -> Vec<String> {
                (0..self.keys)
                    .map(|k| match sim.pick(Some(k)) {
                        Placement::Backend(id) => sim.address(id),
                        _ => String::new(),
                    })
                    .collect()
            };
            let before = map(&sim);
            for _ in 0..self.remove.min(sim.len() as u32) {
                sim.remove(sim.len() as u32 - 1)?;
            }
            for _ in 0..self.add {
                sim.add(SimBackend::equal())?;
            }
            let after = map(&sim);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            Some(moved as f64 / self.keys as f64)
        } else {
            None
        };
        Ok(Report {
            plugin: self.plugin.clone(),
            backends,
            placed,
            unplaced,
            max_over_mean: if mean > 0.0 { max / mean } else { 0.0 },
            remapped,
            ns_per_decision: if timed == 0 { 0.0 } else { nanos as f64 / timed as f64 },
            traps: sim.stats().traps.load(std::sync::atomic::Ordering::Relaxed) - traps_before,
            instantiations: built,
            instantiation_us: if built == 0 { 0.0 } else { build_nanos as f64 / built as f64 / 1e3 },
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "plugin {}: {} placed, {} unplaced", self.plugin, self.placed, self.unplaced)?;
        writeln!(f, "{:<18} {:>6} {:>10} {:>8} {:>8}", "backend", "weight", "picks", "share", "active")?;
        for b in &self.backends {
            writeln!(f, "{:<18} {:>6} {:>10} {:>7.2}% {:>8}", b.address, b.weight, b.picks, b.share * 100.0, b.active)?;
        }
        writeln!(f, "max/mean        {:.3}", self.max_over_mean)?;
        if let Some(r) = self.remapped {
            writeln!(f, "keys remapped   {r:.4} ({:.1}%)", r * 100.0)?;
        }
        writeln!(f, "ns/decision     {:.0}", self.ns_per_decision)?;
        writeln!(
            f,
            "instances built {} ({:.0} µs each, not in ns/decision)",
            self.instantiations, self.instantiation_us
        )?;
        if self.traps > 0 {
            writeln!(f, "traps           {} (each dropped its instance)", self.traps)?;
        }
        Ok(())
    }
}
