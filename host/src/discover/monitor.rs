//! The discovery task of each pool with `discover`: it looks the name up, and sends the
//! set of backends it finds to the one writer as [`Found`] whenever it differs from the
//! last one it sent. A failing or empty answer sends nothing (the pool keeps its last good
//! set) and is logged once per change of state, not at every refresh.
//!
//! The tasks run on a thread of their own (a single-threaded tokio runtime), as the
//! health tasks do: a lookup, its timeouts and retries never hold a worker that serves
//! traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::lookup::{self, LookupError};
use crate::config::{BackendConfig, DiscoverConfig};
use crate::state::Snapshot;

/// A refresh is never sooner than this after the last, whatever the records' TTL (unless
/// `refresh_ms` is shorter): a TTL of 0 must not make a busy loop.
const MIN_WAIT: Duration = Duration::from_secs(1);

/// A pool's discovered backends, for the one writer to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The pool.
    pub pool: String,
    /// The task that found them (see [`Monitor::current`]).
    pub task: u64,
    /// The backends found, in address order, each marked `discovered`.
    pub backends: Vec<BackendConfig>,
}

/// What a pool's discovery did last (the admin API's status).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// The `dns` setting as written.
    pub dns: String,
    /// `"starting"`, `"ok"`, `"empty"` (no records: the last set stays) or `"failing"` (the
    /// last set stays).
    pub state: &'static str,
    /// When the last answer with backends came, in milliseconds since the Unix epoch.
    pub last_refresh_unix_ms: Option<u64>,
    /// The records of the last answer with backends.
    pub records: usize,
    /// The backends the pool has from it.
    pub backends: usize,
    /// Why the last lookup failed, while it fails.
    pub last_error: Option<String>,
    /// Lookups made.
    pub lookups: u64,
    /// Lookups that failed or found nothing.
    pub failures: u64,
}

/// The discovery tasks of one server, by pool. Only the one writer changes it.
#[derive(Debug)]
pub struct Monitor {
    pools: Mutex<HashMap<String, PoolDiscovery>>,
    found: mpsc::UnboundedSender<Found>,
    /// Where the tasks run; `None` if the thread could not be started (logged).
    runtime: Option<tokio::runtime::Handle>,
    /// Ends the thread when the monitor is dropped.
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// One pool's discovery task.
#[derive(Debug)]
struct PoolDiscovery {
    /// Tells this task's answers from those of one it replaced.
    id: u64,
    config: DiscoverConfig,
    status: Arc<Mutex<Status>>,
    task: JoinHandle<()>,
}

impl Drop for PoolDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Task ids never repeat in a process.
static NEXT_TASK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Monitor {
    /// A monitor sending what its tasks find to `found`, with its thread started.
    pub fn new(found: mpsc::UnboundedSender<Found>) -> Self {
        let (runtime, stop) = match crate::core::side_runtime("weir-discover") {
            Ok((handle, stop)) => (Some(handle), Some(stop)),
            Err(e) => {
                tracing::error!(error = %e, "the discovery thread could not start: no pool's backends are discovered");
                (None, None)
            }
        };
        Self { pools: Mutex::default(), found, runtime, _stop: stop }
    }

    /// Whether backends found by task `task` of `pool` still stand (answers of a stopped
    /// or replaced task are dropped).
    pub fn current(&self, pool: &str, task: u64) -> bool {
        lock(&self.pools).get(pool).is_some_and(|p| p.id == task)
    }

    /// What `pool`'s discovery did last, if the pool discovers.
    pub fn status(&self, pool: &str) -> Option<Status> {
        let pools = lock(&self.pools);
        let p = pools.get(pool)?;
        let status = lock(&p.status).clone();
        Some(status)
    }

    /// Brings the tasks in line with `snapshot` (just published): starts one for each pool
    /// whose `discover` is new or changed (replacing its old one), stops those of pools
    /// that no longer discover, and tells the others' status how many backends they have.
    pub fn sync(&self, snapshot: &Snapshot) {
        let mut pools = lock(&self.pools);
        pools.retain(|name, p| {
            snapshot.pools.get(name).and_then(|pool| pool.config.discover.as_ref()).is_some_and(|c| *c == p.config)
        });
        for (name, pool) in &snapshot.pools {
            let Some(config) = &pool.config.discover else { continue };
            let count = pool.config.backends.iter().filter(|b| b.discovered).count();
            if let Some(p) = pools.get(name) {
                lock(&p.status).backends = count;
                continue;
            }
            let Some(runtime) = &self.runtime else { continue };
            let id = NEXT_TASK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let status = Arc::new(Mutex::new(Status {
                dns: config.written(),
                state: "starting",
                backends: count,
                ..Status::default()
            }));
            let task = runtime.spawn(run(name.clone(), id, config.clone(), status.clone(), self.found.clone()));
            tracing::info!(pool = %name, dns = %config.written(), "discovery started");
            pools.insert(name.clone(), PoolDiscovery { id, config: config.clone(), status, task });
        }
    }
}

/// A task's state, for logging each change once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ok,
    Empty,
    Failing(&'static str),
}

/// One pool's discovery loop: look up, send what changed, wait for the next refresh.
async fn run(
    pool: String,
    task: u64,
    config: DiscoverConfig,
    status: Arc<Mutex<Status>>,
    found: mpsc::UnboundedSender<Found>,
) {
    let dns = config.written();
    let mut resolver = None;
    let mut last: Option<Vec<BackendConfig>> = None;
    let mut state = State::Starting;
    loop {
        let mut wait = config.refresh;
        let result = match &resolver {
            Some(r) => lookup::lookup(r, &config).await,
            None => match lookup::resolver(&config) {
                Ok(r) => lookup::lookup(resolver.insert(r), &config).await,
                Err(e) => Err(e),
            },
        };
        let (next, error) = match result {
            Ok(answer) if !answer.backends.is_empty() => {
                if let Some(ttl) = answer.ttl {
                    wait = wait.min(ttl.max(MIN_WAIT));
                }
                {
                    let mut s = lock(&status);
                    s.lookups += 1;
                    s.records = answer.records;
                    s.last_refresh_unix_ms =
                        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64);
                    s.last_error = None;
                    s.state = "ok";
                }
                if last.as_ref() != Some(&answer.backends) {
                    let (added, removed) = changes(last.as_deref(), &answer.backends);
                    tracing::info!(%pool, %dns, backends = answer.backends.len(), added, removed, "discovered backends changed");
                    let sent = Found { pool: pool.clone(), task, backends: answer.backends.clone() };
                    if found.send(sent).is_err() {
                        return;
                    }
                    last = Some(answer.backends);
                }
                (State::Ok, None)
            }
            Ok(answer) => {
                let e = format!("{dns}: {} records, no backend address", answer.records);
                (State::Empty, Some(e))
            }
            Err(e @ LookupError::NoRecords { .. }) => (State::Empty, Some(e.to_string())),
            Err(e) => (State::Failing(e.kind()), Some(e.to_string())),
        };
        if let Some(error) = error {
            {
                let mut s = lock(&status);
                s.lookups += 1;
                s.failures += 1;
                s.state = if next == State::Empty { "empty" } else { "failing" };
                s.last_error = Some(error.clone());
            }
            if next != state {
                let kept = last.as_ref().map_or(0, Vec::len);
                tracing::warn!(%pool, %dns, %error, kept, "discovery found no backends; the pool keeps its last good set");
            }
        } else if matches!(state, State::Empty | State::Failing(_)) {
            tracing::info!(%pool, %dns, "discovery answers again");
        }
        state = next;
        tokio::time::sleep(wait).await;
    }
}

/// How many backends `now` has that `was` had not, and the other way round.
fn changes(was: Option<&[BackendConfig]>, now: &[BackendConfig]) -> (usize, usize) {
    let was: std::collections::HashSet<&str> = was.unwrap_or_default().iter().map(|b| b.address.as_str()).collect();
    let kept = now.iter().filter(|b| was.contains(b.address.as_str())).count();
    (now.len() - kept, was.len() - kept)
}
