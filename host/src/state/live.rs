//! Live figures that survive snapshot rebuilds, kept in atomics beside the immutable
//! snapshot (STYLE rules 3 and 4): per backend ([`BackendLive`]: connections, requests in
//! flight, latency, open tunnels) and per pool ([`PoolLive`]: the named counters, stick
//! tables and secrets plugins reach by handle, the fallback round robin, the total load).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::stick::{StickSink, StickTable};
use crate::core::{Failure, Verdict, clock};
use crate::metrics::Histogram;
use crate::plugin::Observation;

/// An observation of live traffic about one backend (by [`BackendLive::key`]), on its way
/// to the pool's health task.
pub type Report = (u64, Observation);

/// Where a pool's reports go: the sending side of its health task's queue.
pub type Reporter = tokio::sync::mpsc::Sender<Report>;

/// Most names of each kind (counters, stick tables, secrets) one pool holds. Plugins
/// name these objects, and the host keeps them outside the plugin's memory limit, so a
/// plugin asking for ever new names would otherwise grow the host without bound.
pub const MAX_NAMES: usize = 256;

/// Keys of [`BackendLive`]s never repeat in a process.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// Live, per-backend state that survives snapshot rebuilds.
#[derive(Debug)]
pub struct BackendLive {
    /// Identifies this backend's live state for the layers that keep per-backend state of
    /// their own (idle upstream connections, open tunnels' drain orders).
    key: u64,
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
    /// Responses by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]` (for metrics).
    pub responses: [AtomicU64; 5],
    /// Time to the response head, µs (for metrics).
    pub latency: Histogram<6>,
    /// Decisions a pool's shadow balancer would have sent here.
    pub shadow_picks: AtomicU64,
    /// Decisions a pool's canary balancer sent here.
    pub canary_picks: AtomicU64,
    /// Open tunnels (WebSockets).
    tunnels: AtomicU32,
    /// Set when the backend left its pool: nothing new is kept for it (idle connections).
    retired: AtomicBool,
    /// Set by an operator's drain (admin API): the backend takes no new work until
    /// undrained. Read when a pool view is built, never per request; kept across reloads
    /// with the rest of the backend's live state.
    drained: AtomicBool,
    /// The [`Verdict`] the one writer applied (its discriminant). Read when a pool view is
    /// built, never per request.
    verdict: AtomicU8,
    /// When (process clock, ms) the backend last became usable after being unhealthy, or
    /// joined a running pool: slow start ramps its share from here. `clock::NEVER`: no ramp.
    usable_since_ms: AtomicU64,
    /// Live-traffic outcomes since the health task last read them (its `tick` window).
    passive: Passive,
    /// The last transition, for the status API.
    status: Mutex<HealthStatus>,
}

/// What live traffic did to a backend, counted on the data path with no lock: a success
/// is one relaxed add and one relaxed load ([`BackendLive::exchange_succeeded`]).
#[derive(Debug, Default)]
struct Passive {
    successes: AtomicU32,
    failures: AtomicU32,
    /// Set by a failure, cleared by the next success (which is then reported).
    failing: AtomicBool,
}

/// A backend's health as last decided: the verdict, why, and since when.
#[derive(Debug, Clone)]
pub struct HealthStatus {
    /// The verdict.
    pub verdict: Verdict,
    /// Why (the evaluator's reason); empty for a backend never judged.
    pub reason: String,
    /// When the verdict was applied (wall clock, for people).
    pub since: SystemTime,
}

impl BackendLive {
    pub(crate) fn new(pool: Arc<PoolLive>) -> Self {
        Self {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            pool,
            active: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            latency_ewma_us: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            responses: Default::default(),
            latency: Histogram::default(),
            shadow_picks: AtomicU64::new(0),
            canary_picks: AtomicU64::new(0),
            tunnels: AtomicU32::new(0),
            retired: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            verdict: AtomicU8::new(Verdict::Healthy as u8),
            usable_since_ms: AtomicU64::new(clock::NEVER),
            passive: Passive::default(),
            status: Mutex::new(HealthStatus {
                verdict: Verdict::Healthy,
                reason: String::new(),
                since: SystemTime::now(),
            }),
        }
    }

    /// The verdict in force.
    pub fn verdict(&self) -> Verdict {
        Verdict::from_u8(self.verdict.load(Ordering::Relaxed))
    }

    /// Applies a verdict (the one writer calls this, then publishes a new view). Returns
    /// the previous one. A backend whose verdict improves (it may now take work it could
    /// not take before) starts its slow start now.
    pub fn set_verdict(&self, verdict: Verdict, reason: &str) -> Verdict {
        let was = Verdict::from_u8(self.verdict.swap(verdict as u8, Ordering::Relaxed));
        if verdict < was {
            self.usable_since_ms.store(clock::now_ms(), Ordering::Relaxed);
        }
        if was != verdict {
            let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            *status = HealthStatus { verdict, reason: reason.to_owned(), since: SystemTime::now() };
        }
        was
    }

    /// The backend's health status (verdict, reason, since).
    pub fn health_status(&self) -> HealthStatus {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// When the backend last became usable (process clock), if slow start may apply.
    pub fn usable_since_ms(&self) -> Option<u64> {
        Some(self.usable_since_ms.load(Ordering::Relaxed)).filter(|&t| t != clock::NEVER)
    }

    /// Marks the backend as just joined a running pool (slow start ramps from now).
    pub fn joined(&self) {
        self.usable_since_ms.store(clock::now_ms(), Ordering::Relaxed);
    }

    /// An exchange with the backend succeeded (`status`, if HTTP, after `latency_us` to
    /// its response head). Only counted, with no lock and no plugin call, unless it is the
    /// first success after a failure, which the pool's health evaluators hear of.
    #[inline]
    pub fn exchange_succeeded(&self, status: Option<u16>, latency_us: u32) {
        self.passive.successes.fetch_add(1, Ordering::Relaxed);
        if self.passive.failing.load(Ordering::Relaxed) {
            self.recovered(status, latency_us);
        }
    }

    #[cold]
    fn recovered(&self, status: Option<u16>, latency_us: u32) {
        if self.passive.failing.swap(false, Ordering::Relaxed) {
            let obs = Observation { active_probe: false, failure: None, status, latency_us, at_ms: clock::now_ms() };
            self.pool.report(self.key, obs);
        }
    }

    /// An exchange with the backend failed: counted, and the pool's health evaluators
    /// hear of it.
    #[cold]
    pub fn exchange_failed(&self, failure: Failure, status: Option<u16>, latency_us: u32) {
        self.passive.failures.fetch_add(1, Ordering::Relaxed);
        self.passive.failing.store(true, Ordering::Relaxed);
        let obs =
            Observation { active_probe: false, failure: Some(failure), status, latency_us, at_ms: clock::now_ms() };
        self.pool.report(self.key, obs);
    }

    /// `(successes, failures)` since the previous call, and starts a new window.
    pub fn take_window(&self) -> (u32, u32) {
        (self.passive.successes.swap(0, Ordering::Relaxed), self.passive.failures.swap(0, Ordering::Relaxed))
    }

    /// Marks the backend as gone from its pool (a reload removed it).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Drains (`true`) or undrains the backend; returns whether it was drained. The one
    /// writer calls this, then publishes a new view.
    pub fn set_drained(&self, drained: bool) -> bool {
        self.drained.swap(drained, Ordering::Relaxed)
    }

    /// Whether an operator drained the backend.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Whether the backend left its pool.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// This backend's key, unique in the process.
    pub fn key(&self) -> u64 {
        self.key
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
        self.tunnels.load(Ordering::Relaxed) as usize
    }

    /// A tunnel to this backend opened.
    pub fn tunnel_opened(&self) {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
    }

    /// A tunnel counted by [`BackendLive::tunnel_opened`] closed.
    pub fn tunnel_closed(&self) {
        self.tunnels.fetch_sub(1, Ordering::Relaxed);
    }

    /// The backend answered `status` after `latency_us` (to its response head): counted
    /// in its status class and latency histogram, three relaxed adds.
    #[inline]
    pub fn answered(&self, status: u16, latency_us: u32) {
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(u64::from(latency_us));
    }

    /// Folds one latency sample into the EWMA (weight 1/8 for the new sample).
    pub fn observe_latency(&self, micros: u32) {
        let _ = self.latency_ewma_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 { micros.max(1) } else { ((u64::from(old) * 7 + u64::from(micros)) / 8).max(1) as u32 })
        });
    }
}

/// Named objects of a pool that plugins reach by a handle (counters, stick tables).
/// Resolving a name takes a lock (once per instance); using a handle takes none: the
/// list is replaced, never mutated, when an object is added. At most [`MAX_NAMES`].
#[derive(Debug)]
struct Registry<T> {
    kind: &'static str,
    names: Mutex<Vec<Box<str>>>,
    values: ArcSwap<Vec<Arc<T>>>,
    /// Names refused since the cap was reached (logged once, at the first).
    refused: AtomicU64,
}

impl<T> Registry<T> {
    fn new(kind: &'static str) -> Self {
        Self { kind, names: Mutex::default(), values: ArcSwap::from_pointee(Vec::new()), refused: AtomicU64::new(0) }
    }

    /// The handle of `name`, created with `make` if new; `None` when the pool already
    /// holds [`MAX_NAMES`] of this kind (logged).
    fn resolve(&self, pool: &str, name: &str, make: impl FnOnce() -> T) -> Option<u32> {
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = names.iter().position(|n| &**n == name) {
            return Some(i as u32);
        }
        if names.len() >= MAX_NAMES {
            if self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::error!(
                    pool,
                    kind = self.kind,
                    limit = MAX_NAMES,
                    "a plugin asked for more {}s than a pool may hold; refusing new names",
                    self.kind
                );
            }
            return None;
        }
        names.push(name.into());
        let mut values = (**self.values.load()).clone();
        values.push(Arc::new(make()));
        self.values.store(Arc::new(values));
        Some((names.len() - 1) as u32)
    }

    /// The object named `name`, if it exists.
    fn named(&self, name: &str) -> Option<Arc<T>> {
        let id = self.names.lock().unwrap_or_else(PoisonError::into_inner).iter().position(|n| &**n == name)?;
        self.with(id as u32, Arc::clone)
    }

    /// Runs `f` on the object behind `id`; `None` for an unknown handle.
    fn with<R>(&self, id: u32, f: impl FnOnce(&Arc<T>) -> R) -> Option<R> {
        self.values.load().get(id as usize).map(f)
    }

    /// Every object with its name.
    fn all(&self) -> Vec<(Box<str>, Arc<T>)> {
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let values = self.values.load();
        names.iter().cloned().zip(values.iter().cloned()).collect()
    }

    /// Objects held.
    fn len(&self) -> usize {
        self.values.load().len()
    }
}

/// Live figures of a whole pool, shared across snapshots and plugins: the counters of
/// `pool.counter`/`pool.counter-next`, the stick tables of `pool.stick-*`, the secrets of
/// `pool.secret`, the fallback round robin and the pool's total load.
#[derive(Debug)]
pub struct PoolLive {
    name: Arc<str>,
    counters: Registry<AtomicU64>,
    sticks: Registry<StickTable>,
    /// Where the stick tables send their events when the pool shares them.
    stick_sink: arc_swap::ArcSwapOption<StickSink>,
    secrets: Registry<[u8; 32]>,
    /// Position of the built-in fallback round robin.
    fallback: AtomicU64,
    /// Sum of `active + in_flight` over the pool's backends.
    pub total_load: AtomicU64,
    /// The pool's health task, when something watches its health.
    reporter: arc_swap::ArcSwapOption<Reporter>,
    /// Reports dropped because the health task's queue was full.
    pub reports_dropped: AtomicU64,
}

impl PoolLive {
    /// The live figures of a new pool.
    pub fn new(name: Arc<str>) -> Self {
        Self {
            name,
            counters: Registry::new("counter"),
            sticks: Registry::new("stick table"),
            stick_sink: arc_swap::ArcSwapOption::empty(),
            secrets: Registry::new("secret"),
            fallback: AtomicU64::new(0),
            total_load: AtomicU64::new(0),
            reporter: arc_swap::ArcSwapOption::empty(),
            reports_dropped: AtomicU64::new(0),
        }
    }

    /// Sends this pool's live-traffic observations to `reporter` (`None`: nowhere).
    pub fn set_reporter(&self, reporter: Option<Arc<Reporter>>) {
        self.reporter.store(reporter);
    }

    /// Hands an observation to the pool's health task, if it has one; never waits (a
    /// full queue drops it, counted: the evaluators still see the failure in the window
    /// of their next `tick`).
    fn report(&self, key: u64, obs: Observation) {
        if let Some(tx) = &*self.reporter.load()
            && tx.try_send((key, obs)).is_err()
        {
            self.reports_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The handle of the named counter, created at 0 if new.
    pub fn counter(&self, name: &str) -> Option<u32> {
        self.counters.resolve(&self.name, name, || AtomicU64::new(0))
    }

    /// Returns counter `id`'s value and advances it; 0 for an unknown handle.
    pub fn next(&self, id: u32) -> u64 {
        self.counters.with(id, |c| c.fetch_add(1, Ordering::Relaxed)).unwrap_or(0)
    }

    /// The handle of the named stick table, created if new; its TTL becomes `ttl`.
    pub fn stick_table(&self, name: &str, ttl: Duration) -> Option<u32> {
        let id = self.sticks.resolve(&self.name, name, || StickTable::new(ttl))?;
        let sink = self.stick_sink.load();
        self.sticks.with(id, |t| {
            t.set_ttl(ttl);
            t.share(&self.name, name, sink.as_deref());
        });
        Some(id)
    }

    /// Replicates every stick table of the pool, and those made later, through `sink`;
    /// `None` stops. Cheap when nothing changes (the cluster calls it on every tick).
    pub fn share_stick_tables(&self, sink: Option<&StickSink>) {
        let current = self.stick_sink.load();
        let same = match (&*current, sink) {
            (None, None) => true,
            (Some(a), Some(b)) => a.tx.same_channel(&b.tx),
            _ => false,
        };
        if !same {
            self.stick_sink.store(sink.cloned().map(Arc::new));
        }
        for (name, table) in self.sticks.all() {
            table.share(&self.name, &name, sink);
        }
    }

    /// Every stick table of the pool, with its name.
    pub fn stick_tables(&self) -> Vec<(Box<str>, Arc<StickTable>)> {
        self.sticks.all()
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
    pub fn secret(&self, name: &str) -> Option<[u8; 32]> {
        let id = self.secrets.resolve(&self.name, name, || {
            let mut key = [0u8; 32];
            if let Err(e) = getrandom::fill(&mut key) {
                // Without the OS's randomness the secret is all zeros: predictable, so say
                // so loudly; the plugin still works, its signatures are just forgeable.
                tracing::error!(pool_secret = name, error = %e, "no random source; the secret is predictable");
            }
            key
        })?;
        self.secrets.with(id, |k| **k)
    }

    /// How many counters, stick tables and secrets the pool holds.
    pub fn names(&self) -> (usize, usize, usize) {
        (self.counters.len(), self.sticks.len(), self.secrets.len())
    }

    /// Returns the fallback round robin's position and advances it.
    pub(super) fn next_fallback(&self) -> u64 {
        self.fallback.fetch_add(1, Ordering::Relaxed)
    }
}

/// Counts a connection in its backend's `active` figure (see [`BackendLive::open`]) for
/// as long as it lives.
#[derive(Debug)]
pub struct ActiveGuard(Arc<BackendLive>);

impl ActiveGuard {
    /// Opens a connection of `live`'s backend until the guard drops.
    pub fn new(live: Arc<BackendLive>) -> Self {
        live.open();
        Self(live)
    }

    /// The backend.
    pub fn live(&self) -> &Arc<BackendLive> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}
