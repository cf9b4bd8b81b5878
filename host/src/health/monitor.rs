//! The health task of each watched pool: it runs the pool's probers, hears their results
//! and the live-traffic reports of the data path, asks the pool's evaluators (health
//! plugins, one instance each, called only from this task) what they make of them, and
//! sends the verdicts that change to the one writer as [`Verdicts`].
//!
//! Each backend's verdict is the worst of its evaluators' latest opinions. An evaluator
//! whose call fails (trap, deadline, memory) is counted and logged by the plugin layer,
//! and its opinion of that backend becomes the host's built-in rule's (HAProxy's rise 2,
//! fall 3 over the timed probes) until it answers again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::probe;
use super::ticks::Ticks;
use crate::config::{HealthConfig, PluginRef, PoolConfig, ProbeConfig};
use crate::core::{KeyMap, Verdict, clock};
use crate::plugin::{self, Assessment, LoadError, Observation, PluginRuntime, PoolHost, Window};
use crate::state::{BuildError, Pool, PoolView, Report, Snapshot};

/// How many reports a pool's queue holds before the data path drops new ones (counted in
/// `PoolLive::reports_dropped`; the failures still reach the evaluators' `tick` windows).
const QUEUE: usize = 4096;

/// Most probe results the task takes from its queue at once: the results of a slot, which
/// arrive together, are evaluated together (one `observe-batch` call per evaluator that
/// takes batches).
const BATCH: usize = 256;

/// After a health plugin swap, how long (in rounds of the larger of the probe interval and
/// the tick) a verdict kept from the previous evaluators stands for a backend the new ones
/// have not judged: long enough for a rise/fall rule to speak (threshold's default fall is
/// 3 probes), short enough that a plugin which only reports changes (and so never repeats
/// "healthy") does not leave a recovered backend out for good.
pub const HOLD_ROUNDS: u32 = 5;

/// Verdicts of one pool for the one writer to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts {
    /// The pool.
    pub pool: String,
    /// The health task that sent them (see [`Monitor::current`]).
    pub task: u64,
    /// What changed.
    pub changes: Vec<Change>,
}

/// A backend's new verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The backend, by [`crate::state::BackendLive::key`].
    pub key: u64,
    /// Its verdict now.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
}

/// A pool's loaded evaluators, in config order.
#[derive(Debug, Clone)]
pub struct Evaluators(Vec<Arc<plugin::Health>>);

impl Evaluators {
    /// These evaluators, already loaded (a health plugin swap's).
    pub fn new(evaluators: Vec<Arc<plugin::Health>>) -> Self {
        Self(evaluators)
    }

    /// Each evaluator.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<plugin::Health>> {
        self.0.iter()
    }

    /// Their names, comma-separated.
    pub fn names(&self) -> String {
        self.0.iter().map(|h| &*h.name).collect::<Vec<_>>().join(", ")
    }
}

/// Loads `config`'s evaluators for `pool`, validating each (a scratch instance is
/// configured). Compiles: call it off the threads that serve traffic.
pub fn load(config: &PoolConfig, plugins: &PluginRuntime, pool: &Pool) -> Result<Evaluators, BuildError> {
    let host: Arc<dyn PoolHost> = pool.view.clone();
    let mut loaded = Vec::with_capacity(config.health.plugins.len());
    for p in &config.health.plugins {
        let evaluator = plugins.load_health(&config.name, p, &host).map_err(|error| {
            let at = match &error {
                LoadError::InvalidConfig(_) | LoadError::Configure { .. } => p.config_at.clone().or(p.at.clone()),
                _ => p.at.clone(),
            };
            BuildError::Plugin {
                pool: config.name.clone(),
                role: "health",
                plugin: p.source.to_string(),
                at: at.map(Box::new),
                error,
            }
        })?;
        loaded.push(evaluator);
    }
    Ok(Evaluators(loaded))
}

/// The health tasks of one server, by pool. Only the one writer changes it.
///
/// The tasks, and the probers and evaluator calls they make, run on a thread of their own
/// (a single-threaded tokio runtime): a plugin call never holds a worker that serves
/// traffic, even one that loops until its deadline, and a probe's timer, socket and
/// evaluation stay on one thread, with no wake-up of another per probe.
#[derive(Debug)]
pub struct Monitor {
    pools: std::sync::Mutex<HashMap<String, PoolMonitor>>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    verdicts: mpsc::UnboundedSender<Verdicts>,
    /// Where the tasks run; `None` if the thread could not be started (logged).
    runtime: Option<tokio::runtime::Handle>,
    /// Ends the health thread when the monitor is dropped.
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// One pool's health task.
#[derive(Debug)]
struct PoolMonitor {
    /// Tells this task's verdicts from those of one it replaced.
    id: u64,
    /// The config file's evaluators when the task started (a reload that leaves them so
    /// keeps the task, and any evaluators swapped into it).
    plugins: Vec<PluginRef>,
    evaluators: Evaluators,
    /// The evaluators the last swap replaced, for a rollback.
    previous: Option<Evaluators>,
    /// Hands the task the evaluators of a swap.
    swaps: mpsc::UnboundedSender<Vec<Arc<plugin::Health>>>,
    settings: watch::Sender<HealthConfig>,
    members_changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for PoolMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Task ids never repeat in a process.
static NEXT_TASK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Monitor {
    /// A monitor reading pools from `snapshot` and sending verdicts to `verdicts`, with
    /// its thread started.
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, verdicts: mpsc::UnboundedSender<Verdicts>) -> Self {
        // Until the monitor is dropped; dropping the stop sender then ends every task.
        let (runtime, stop) = match crate::core::side_runtime("weir-health") {
            Ok((handle, stop)) => (Some(handle), Some(stop)),
            Err(e) => {
                tracing::error!(error = %e, "the health thread could not start: no pool is health-checked");
                (None, None)
            }
        };
        Self { pools: std::sync::Mutex::default(), snapshot, verdicts, runtime, _stop: stop }
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<String, PoolMonitor>> {
        self.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The evaluators watching `pool` (for their counters).
    pub fn evaluators(&self, pool: &str) -> Vec<Arc<plugin::Health>> {
        self.pools().get(pool).map(|m| m.evaluators.0.clone()).unwrap_or_default()
    }

    /// Puts `evaluators` (loaded, configured and dry-run) in place of `pool`'s in its
    /// running task, which keeps its probers, its queue and the verdicts in force (see
    /// [`HOLD_ROUNDS`]). Returns false when no task watches `pool`.
    pub fn swap(&self, pool: &str, evaluators: Evaluators) -> bool {
        let mut pools = self.pools();
        let Some(m) = pools.get_mut(pool) else { return false };
        if m.swaps.send(evaluators.0.clone()).is_err() {
            return false;
        }
        tracing::info!(%pool, from = %m.evaluators.names(), to = %evaluators.names(), "health plugins swapped");
        m.previous = Some(std::mem::replace(&mut m.evaluators, evaluators));
        true
    }

    /// Whether a health task watches `pool`.
    pub fn watches(&self, pool: &str) -> bool {
        self.pools().contains_key(pool)
    }

    /// The evaluators the last swap on `pool` replaced (a rollback's), if any since its
    /// task started.
    pub fn previous(&self, pool: &str) -> Option<Evaluators> {
        self.pools().get(pool).and_then(|m| m.previous.clone())
    }

    /// Whether verdicts from task `task` of `pool` still stand: it is the pool's current
    /// task (verdicts a stopped or replaced task sent before it ended are dropped).
    pub fn current(&self, pool: &str, task: u64) -> bool {
        self.pools().get(pool).is_some_and(|m| m.id == task)
    }

    /// Whether `config` needs evaluators loaded: its health is watched and no task
    /// already runs the same evaluators (a task keeps its evaluators, and their state,
    /// across reloads that leave `health` as it was).
    pub fn needs_evaluators(&self, config: &PoolConfig) -> bool {
        config.health.enabled() && self.pools().get(&config.name).is_none_or(|m| m.plugins != config.health.plugins)
    }

    /// Brings the tasks in line with `snapshot` (just published in place of `previous`):
    /// starts a task for each pool `loaded` has evaluators for (replacing its old one),
    /// tells the others whose pool changed of new settings and members, and stops those of
    /// pools no longer watched.
    pub fn sync(&self, previous: &Snapshot, snapshot: &Snapshot, mut loaded: HashMap<String, Evaluators>) {
        let mut pools = self.pools();
        pools.retain(|name, _| snapshot.pools.get(name).is_some_and(|p| p.config.health.enabled()));
        for (name, pool) in &snapshot.pools {
            let health = &pool.config.health;
            if !health.enabled() {
                pool.view.live.set_reporter(None);
                continue;
            }
            if let Some(evaluators) = loaded.remove(name) {
                let Some(monitor) = self.start(pool, evaluators) else { continue };
                if pools.insert(name.clone(), monitor).is_some() {
                    tracing::info!(pool = %name, "health evaluators changed: their verdicts start over");
                }
            } else if let Some(m) = pools.get(name) {
                if previous.pools.get(name).is_some_and(|p| Arc::ptr_eq(p, pool)) {
                    continue;
                }
                m.settings.send_if_modified(|s| {
                    let changed = s != health;
                    if changed {
                        *s = health.clone();
                    }
                    changed
                });
                m.members_changed.notify_one();
            } else {
                tracing::error!(pool = %name, "health is configured but no evaluator was loaded; not watched");
            }
        }
    }

    fn start(&self, pool: &Pool, evaluators: Evaluators) -> Option<PoolMonitor> {
        let runtime = self.runtime.as_ref()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let reporter = Arc::new(tx);
        // What live traffic did before the task existed is no window of its.
        for m in &pool.view.members {
            m.live.take_window();
        }
        pool.view.live.set_reporter(Some(reporter));
        let (settings, settings_rx) = watch::channel(pool.config.health.clone());
        let members_changed = Arc::new(Notify::new());
        let (probe_tx, probes) = mpsc::channel::<ProbeReport>(QUEUE);
        let (swaps, swapped) = mpsc::unbounded_channel();
        let id = NEXT_TASK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let task = Task {
            id,
            pool: pool.config.name.clone(),
            snapshot: self.snapshot.clone(),
            config: pool.config.health.clone(),
            probe_tx,
            ticks: Ticks::new(),
            evaluators: evaluators.0.clone(),
            verdicts: self.verdicts.clone(),
            generation: 0,
            ids: KeyMap::default(),
            backends: KeyMap::default(),
            requested: KeyMap::default(),
            strikes: vec![(0, 0); evaluators.0.len()],
            batch: Vec::new(),
            batch_keys: Vec::new(),
            hold_until: None,
        };
        let task = runtime.spawn(task.run(rx, probes, swapped, settings_rx, members_changed.clone()));
        Some(PoolMonitor {
            id,
            plugins: pool.config.health.plugins.clone(),
            evaluators,
            previous: None,
            swaps,
            settings,
            members_changed,
            task,
        })
    }
}

/// The host's built-in rule over the timed probes: rise 2, fall 3 (HAProxy's defaults).
#[derive(Debug, Default, Clone, Copy)]
struct Builtin {
    successes: u32,
    failures: u32,
    verdict: Verdict,
}

impl Builtin {
    const RISE: u32 = 2;
    const FALL: u32 = 3;

    fn probed(&mut self, ok: bool) {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= Self::RISE {
                self.verdict = Verdict::Healthy;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= Self::FALL {
                self.verdict = Verdict::Unhealthy;
            }
        }
    }

    fn reason(&self) -> String {
        match self.verdict {
            Verdict::Unhealthy => format!("built-in rule: {} consecutive probe failures", self.failures),
            _ => "built-in rule: probes pass".to_owned(),
        }
    }
}

/// What the task knows of one backend.
#[derive(Debug)]
struct Book {
    /// Each evaluator's latest opinion and its reason.
    opinions: Vec<(Verdict, String)>,
    /// Per evaluator: its opinion is a verdict kept from before a swap, which it has not
    /// judged since (released at [`Task::hold_until`]).
    held: Vec<bool>,
    builtin: Builtin,
    /// The last failed probe's detail, appended to a reason for going unhealthy.
    last_probe_failure: Option<String>,
    /// The backend's prober, when the pool has a probe.
    prober: Option<JoinHandle<()>>,
}

impl Drop for Book {
    fn drop(&mut self) {
        if let Some(p) = self.prober.take() {
            p.abort();
        }
    }
}

/// A probe's result on its way to the task.
type ProbeReport = (u64, Observation, String);

struct Task {
    id: u64,
    pool: String,
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// The pool's health settings as of the last change.
    config: HealthConfig,
    /// Where the probers send their results.
    probe_tx: mpsc::Sender<ProbeReport>,
    /// The probers' clock (driven by a task of the health task's own).
    ticks: Arc<Ticks>,
    evaluators: Vec<Arc<plugin::Health>>,
    verdicts: mpsc::UnboundedSender<Verdicts>,
    /// The generation `ids` and the books were built for.
    generation: u64,
    /// Backend id by live key, in that generation.
    ids: KeyMap<u32>,
    backends: KeyMap<Book>,
    /// Verdicts sent to the writer and not yet seen applied.
    requested: KeyMap<Verdict>,
    /// Each evaluator's failures in a row, and until when (process clock, ms) it is not
    /// called: a plugin that traps or loops on every call costs one call per backoff.
    strikes: Vec<(u32, u64)>,
    /// The probe results being evaluated together, as `(id, observation)`, and their
    /// backends' keys (kept to reuse their memory).
    batch: Vec<(u32, Observation)>,
    batch_keys: Vec<u64>,
    /// When verdicts kept across a swap of the evaluators stop standing in for the new
    /// evaluators' silence (process clock, ms).
    hold_until: Option<u64>,
}

/// Ends a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The first pause after an evaluator fails; it doubles with each failure in a row.
const FIRST_BACKOFF_MS: u64 = 1000;
/// The longest pause.
const MAX_BACKOFF_MS: u64 = 60_000;

impl Task {
    async fn run(
        mut self,
        mut reports: mpsc::Receiver<Report>,
        mut probes: mpsc::Receiver<ProbeReport>,
        mut swaps: mpsc::UnboundedReceiver<Vec<Arc<plugin::Health>>>,
        mut settings: watch::Receiver<HealthConfig>,
        members_changed: Arc<Notify>,
    ) {
        self.config = settings.borrow_and_update().clone();
        // The probers' clock runs as long as this task (and so its probers) does.
        let _driver = AbortOnDrop(tokio::spawn(self.ticks.clone().drive()));
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        self.refresh(true);
        self.send(self.backends.keys().copied().collect());
        let mut results: Vec<ProbeReport> = Vec::new();
        loop {
            let mut changed = Vec::new();
            tokio::select! {
                Some((key, obs)) = reports.recv() => self.observed(key, obs, &mut changed),
                // The task holds a sender itself, so the queue never closes while it runs.
                n = probes.recv_many(&mut results, BATCH), if !probes.is_closed() => {
                    if n > 0 {
                        self.probed(&mut results, &mut changed);
                    }
                }
                _ = tick.tick() => self.tick(&mut changed),
                Some(evaluators) = swaps.recv() => self.take_over(evaluators, &mut changed),
                _ = members_changed.notified() => {
                    if self.refresh(false) {
                        changed.extend(self.backends.keys().copied());
                    }
                }
                Ok(()) = settings.changed() => {
                    let new = settings.borrow_and_update().clone();
                    let probe_changed = new.probe != self.config.probe;
                    if new.tick != self.config.tick {
                        tick = tokio::time::interval(new.tick);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        tick.reset();
                    }
                    self.config = new;
                    self.refresh(probe_changed);
                    changed.extend(self.backends.keys().copied());
                }
                else => break,
            }
            self.send(changed);
        }
    }

    /// The pool as published now, if it still exists.
    fn view(&self) -> Option<Arc<PoolView>> {
        self.snapshot.load().pools.get(&self.pool).map(|p| p.view.clone())
    }

    /// Whether evaluator `i` is called now (not in a backoff after failures).
    fn callable(&self, i: usize, now: u64) -> bool {
        self.strikes.get(i).is_none_or(|&(_, until)| now >= until)
    }

    /// Records evaluator `i`'s call outcome.
    fn strike(&mut self, i: usize, failed: bool, now: u64) {
        let Some((failures, until)) = self.strikes.get_mut(i) else { return };
        if failed {
            *failures += 1;
            let pause = (FIRST_BACKOFF_MS << (*failures - 1).min(16)).min(MAX_BACKOFF_MS);
            *until = now + pause;
            tracing::warn!(
                pool = %self.pool,
                plugin = %self.evaluators[i].name,
                failures = *failures,
                pause_ms = pause,
                "health plugin failed; the built-in rule stands in for it until it is asked again"
            );
        } else {
            *failures = 0;
        }
    }

    /// Re-reads the pool's members if they changed (or `restart_probers`): maps keys to
    /// ids, starts probers for new backends, forgets backends that left (their probers
    /// end). Returns whether it did.
    fn refresh(&mut self, restart_probers: bool) -> bool {
        let Some(view) = self.view() else { return false };
        if view.generation == self.generation && !restart_probers {
            return false;
        }
        self.generation = view.generation;
        self.ids = view.members.iter().enumerate().map(|(i, m)| (m.live.key(), i as u32)).collect();
        self.backends.retain(|k, _| self.ids.contains_key(k));
        self.requested.retain(|k, _| self.ids.contains_key(k));
        let evaluators = self.evaluators.len();
        for m in &view.members {
            let key = m.live.key();
            // A backend new to the task starts healthy in every evaluator's eyes, as it
            // does in the plugin's own (the WIT says so): a task that starts because the
            // evaluators changed starts their verdicts over.
            let book = self.backends.entry(key).or_insert_with(|| Book {
                opinions: vec![(Verdict::Healthy, "health evaluators started".to_owned()); evaluators],
                held: vec![false; evaluators],
                builtin: Builtin::default(),
                last_probe_failure: None,
                prober: None,
            });
            if restart_probers || book.prober.is_none() {
                if let Some(p) = book.prober.take() {
                    p.abort();
                }
                book.prober = self.config.probe.as_ref().map(|probe| {
                    let host = probe.host.clone().unwrap_or_else(|| m.config.address.clone());
                    let (tx, ticks) = (self.probe_tx.clone(), self.ticks.clone());
                    tokio::spawn(prober(key, m.config.socket_addr, host, probe.clone(), tx, ticks))
                });
            }
        }
        true
    }

    /// One observation of live traffic: every evaluator hears of it.
    fn observed(&mut self, key: u64, obs: Observation, changed: &mut Vec<u64>) {
        let Some(view) = self.catch_up(changed) else { return };
        let Some(&id) = self.ids.get(&key) else { return };
        let host: Arc<dyn PoolHost> = view.clone();
        let now = clock::now_ms();
        for i in 0..self.evaluators.len() {
            let evaluator = self.evaluators[i].clone();
            if !self.callable(i, now) {
                self.fall_back(i, Some(key), changed);
                continue;
            }
            let answer = evaluator.observe(&host, id, &obs);
            self.answered(&view, i, answer.ok(), now, changed);
        }
    }

    /// Probe results that arrived together (`results`, emptied): the built-in rule counts
    /// each, then every evaluator hears of them, in order: in one call if it takes batches
    /// (`health-batch`), else one call each.
    fn probed(&mut self, results: &mut Vec<ProbeReport>, changed: &mut Vec<u64>) {
        let Some(view) = self.catch_up(changed) else {
            results.clear();
            return;
        };
        let mut batch = std::mem::take(&mut self.batch);
        let mut keys = std::mem::take(&mut self.batch_keys);
        batch.clear();
        keys.clear();
        for (key, obs, detail) in results.drain(..) {
            let (Some(&id), Some(book)) = (self.ids.get(&key), self.backends.get_mut(&key)) else { continue };
            book.builtin.probed(obs.failure.is_none());
            book.last_probe_failure = if obs.failure.is_some() { Some(detail) } else { None };
            batch.push((id, obs));
            keys.push(key);
        }
        if !batch.is_empty() {
            let host: Arc<dyn PoolHost> = view.clone();
            let now = clock::now_ms();
            for i in 0..self.evaluators.len() {
                let evaluator = self.evaluators[i].clone();
                if evaluator.batches() {
                    if !self.callable(i, now) {
                        for &key in &keys {
                            self.fall_back(i, Some(key), changed);
                        }
                        continue;
                    }
                    let answer = evaluator.observe_batch(&host, &batch);
                    self.answered(&view, i, answer.ok(), now, changed);
                    continue;
                }
                for (&key, (id, obs)) in keys.iter().zip(&batch) {
                    if !self.callable(i, now) {
                        self.fall_back(i, Some(key), changed);
                        continue;
                    }
                    let answer = evaluator.observe(&host, *id, obs);
                    self.answered(&view, i, answer.ok(), now, changed);
                }
            }
        }
        self.batch = batch;
        self.batch_keys = keys;
    }

    /// The pool as published now, with the task caught up with its members if they
    /// changed before the writer's notice arrived (the notice then finds nothing to do).
    fn catch_up(&mut self, changed: &mut Vec<u64>) -> Option<Arc<PoolView>> {
        let view = self.view()?;
        if view.generation != self.generation && self.refresh(false) {
            changed.extend(self.backends.keys().copied());
        }
        Some(view)
    }

    /// A swap's evaluators take over from the current ones. The probers, the queues and
    /// the backends' books stay; each new evaluator's opinion of a backend starts as the
    /// verdict in force (or last asked for), so a swap changes no verdict by itself. A
    /// kept verdict other than healthy stands until the evaluator judges that backend or,
    /// failing that, for [`HOLD_ROUNDS`] rounds; then the evaluator's silence counts as
    /// healthy, as it does for one that just started.
    fn take_over(&mut self, evaluators: Vec<Arc<plugin::Health>>, changed: &mut Vec<u64>) {
        let Some(view) = self.catch_up(changed) else { return };
        let n = evaluators.len();
        for m in &view.members {
            let key = m.live.key();
            let Some(book) = self.backends.get_mut(&key) else { continue };
            let verdict = self.requested.get(&key).copied().unwrap_or_else(|| m.live.verdict());
            let reason = book
                .opinions
                .iter()
                .filter(|(v, _)| *v == verdict)
                .map(|(_, r)| r.clone())
                .next()
                .unwrap_or_else(|| m.live.health_status().reason);
            book.opinions = vec![(verdict, reason); n];
            book.held = vec![verdict != Verdict::Healthy; n];
        }
        let round = self.config.tick.max(self.config.probe.as_ref().map_or(Duration::ZERO, |p| p.interval));
        self.hold_until = Some(clock::now_ms() + (round * HOLD_ROUNDS).as_millis() as u64);
        self.strikes = vec![(0, 0); n];
        self.evaluators = evaluators;
    }

    /// Ends the verdicts kept across a swap that the new evaluators did not judge in time.
    fn release_held(&mut self, now: u64, changed: &mut Vec<u64>) {
        if self.hold_until.is_none_or(|until| now < until) {
            return;
        }
        self.hold_until = None;
        for (&key, book) in &mut self.backends {
            for (i, held) in book.held.iter_mut().enumerate() {
                if std::mem::take(held) {
                    let name = self.evaluators.get(i).map_or("the health plugin", |e| &*e.name);
                    book.opinions[i] =
                        (Verdict::Healthy, format!("{name} found nothing wrong since it was swapped in"));
                    changed.push(key);
                }
            }
        }
    }

    /// The evaluators' timer: every member's live-traffic window.
    fn tick(&mut self, changed: &mut Vec<u64>) {
        self.release_held(clock::now_ms(), changed);
        let Some(view) = self.view() else { return };
        if view.generation != self.generation {
            // The writer's notice is on its way; the window waits for the next tick.
            return;
        }
        let now = clock::now_ms();
        if (0..self.evaluators.len()).all(|i| !self.callable(i, now)) {
            return;
        }
        let windows: Vec<Window> = view
            .members
            .iter()
            .map(|m| {
                let (successes, failures) = m.live.take_window();
                let latency_ewma_us = m.live.latency_ewma_us.load(std::sync::atomic::Ordering::Relaxed);
                Window { successes, failures, latency_ewma_us }
            })
            .collect();
        let host: Arc<dyn PoolHost> = view.clone();
        for i in 0..self.evaluators.len() {
            let evaluator = self.evaluators[i].clone();
            if !self.callable(i, now) {
                continue;
            }
            let answer = evaluator.tick(&host, now, &windows);
            self.answered(&view, i, answer.ok(), now, changed);
        }
        // Verdicts the writer has applied need no more asking.
        for m in &view.members {
            let key = m.live.key();
            if self.requested.get(&key) == Some(&m.live.verdict()) {
                self.requested.remove(&key);
            }
        }
    }

    /// Evaluator `i` answered `assessments`, or failed (`None`: counted and logged by the
    /// plugin layer): its opinions change accordingly, and its backoff.
    fn answered(
        &mut self,
        view: &PoolView,
        i: usize,
        assessments: Option<Vec<Assessment>>,
        now: u64,
        changed: &mut Vec<u64>,
    ) {
        self.strike(i, assessments.is_none(), now);
        match assessments {
            Some(a) => self.apply(view, i, a, changed),
            None => self.fall_back(i, None, changed),
        }
    }

    fn apply(&mut self, view: &PoolView, evaluator: usize, assessments: Vec<Assessment>, changed: &mut Vec<u64>) {
        for a in assessments {
            let Some(m) = view.members.get(a.id as usize) else { continue };
            let key = m.live.key();
            if let Some(book) = self.backends.get_mut(&key) {
                book.opinions[evaluator] = (a.verdict, a.reason);
                book.held[evaluator] = false;
                changed.push(key);
            }
        }
    }

    /// Evaluator `i` failed (its instance is gone, and with it what it knew) or is left
    /// alone: its opinion of backend `key`, or of every backend, is the built-in rule's,
    /// until it assesses that backend again.
    fn fall_back(&mut self, evaluator: usize, key: Option<u64>, changed: &mut Vec<u64>) {
        let mut fall_back = |k: u64, book: &mut Book| {
            book.opinions[evaluator] = (book.builtin.verdict, book.builtin.reason());
            book.held[evaluator] = false;
            changed.push(k);
        };
        match key {
            Some(key) => {
                if let Some(book) = self.backends.get_mut(&key) {
                    fall_back(key, book);
                }
            }
            None => {
                for (&k, book) in &mut self.backends {
                    fall_back(k, book);
                }
            }
        }
    }

    /// Sends the writer the backends among `keys` whose verdict (the worst opinion) is
    /// not the one in force, or not the one last asked for.
    fn send(&mut self, mut keys: Vec<u64>) {
        if keys.is_empty() {
            return;
        }
        let Some(view) = self.view() else { return };
        keys.sort_unstable();
        keys.dedup();
        let mut changes = Vec::new();
        for key in keys {
            let (Some(book), Some(&id)) = (self.backends.get(&key), self.ids.get(&key)) else { continue };
            let Some(m) = view.members.get(id as usize) else { continue };
            let Some((verdict, reason)) = book.opinions.iter().max_by_key(|(v, _)| *v) else { continue };
            let asked = self.requested.get(&key).copied();
            // Nothing to do when it is what was last asked for, or, with nothing asked,
            // what is in force. (When something else was asked and is not applied yet, the
            // writer must hear this too, or it would apply the stale verdict last.)
            if asked == Some(*verdict) || (asked.is_none() && *verdict == m.live.verdict()) {
                continue;
            }
            self.requested.insert(key, *verdict);
            let mut reason = reason.clone();
            if *verdict == Verdict::Unhealthy
                && let Some(detail) = &book.last_probe_failure
            {
                reason = format!("{reason}; last probe: {detail}");
            }
            changes.push(Change { key, verdict: *verdict, reason });
        }
        if !changes.is_empty() {
            let _ = self.verdicts.send(Verdicts { pool: self.pool.clone(), task: self.id, changes });
        }
    }
}

/// Probes one backend forever: the first probe at a random point of the first interval
/// (so a pool's probes, or 10,000 backends', do not go out in one burst), then one per
/// interval, each jittered by up to ±10 %. It waits for its next probe, and each probe
/// for its deadline, on the pool's probe clock (`ticks`): no timer of its own.
async fn prober(
    key: u64,
    addr: SocketAddr,
    host: String,
    config: ProbeConfig,
    tx: mpsc::Sender<ProbeReport>,
    ticks: Arc<Ticks>,
) {
    let mut rng = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ clock::now_ms();
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let interval = config.interval;
    let first = interval.mul_f64((next() >> 11) as f64 / (1u64 << 53) as f64);
    ticks.until(clock::now_ms() + first.as_millis() as u64).await;
    // The timeout in whole milliseconds, rounded up.
    let timeout_ms = u64::try_from(config.timeout.as_micros().div_ceil(1000)).unwrap_or(u64::MAX / 2);
    let mut session = probe::Session::new();
    loop {
        let started = tokio::time::Instant::now();
        let started_ms = clock::ms_at(started.into_std());
        // The deadline on the process clock, rounded up: never before `started + timeout`
        // (and the same instant for the probes of a slot).
        let deadline = ticks.until(started_ms + timeout_ms + 1);
        let result = session.probe_by(deadline, started, &config, addr, &host).await;
        let obs = Observation {
            active_probe: true,
            failure: result.failure,
            status: result.status,
            latency_us: u32::try_from(result.latency.as_micros()).unwrap_or(u32::MAX),
            at_ms: clock::now_ms(),
        };
        if tx.send((key, obs, result.detail)).await.is_err() {
            return;
        }
        let jitter = 0.9 + 0.2 * ((next() >> 11) as f64 / (1u64 << 53) as f64);
        let due = started_ms + interval.mul_f64(jitter).as_millis().max(1) as u64;
        ticks.until(slotted(due, interval)).await;
    }
}

/// `due` (process clock, ms), moved to the nearest boundary of a slot of 1/20 of
/// `interval` (1 to 100 ms): probes due within one slot start together, so the health
/// thread wakes once for several of them, and their answers, which come back close
/// together, take fewer wake-ups too. A probe moves by at most 2.5 % of its interval,
/// within its ±10 % jitter. (With 1,000 backends probed every second, slots of 1/100 cost
/// the health thread about 0.55 wake-ups per probe, slots of 1/20 about 0.16:
/// BENCHMARKS.md.)
fn slotted(due: u64, interval: Duration) -> u64 {
    let slot = (interval.as_millis() as u64 / 20).clamp(1, 100);
    (due + slot / 2) / slot * slot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_moves_a_probe_by_at_most_half_a_slot() {
        for (interval_ms, slot_ms) in [(10, 1), (1000, 50), (2000, 100), (60_000, 100)] {
            let interval = Duration::from_millis(interval_ms);
            for due in 1_000..(1_000 + 3 * slot_ms) {
                let at = slotted(due, interval);
                assert_eq!(at % slot_ms, 0, "{interval_ms} ms: {due} went to {at}, not a boundary");
                assert!(at.abs_diff(due) <= slot_ms / 2, "{interval_ms} ms: {due} went to {at}");
            }
        }
    }
}
