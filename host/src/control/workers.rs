//! The workers that serve connections. With `[runtime] worker_threads` above 1, each
//! worker is a thread of its own (`weir-worker-K`) running a tokio current-thread runtime,
//! and every listener has an accept loop on each of them: a connection's task, its
//! upstream connections (each worker keeps its own idle pool), HTTP/2 streams and tunnels
//! all live on the worker that accepted it, and no task moves between threads. One
//! multi-thread runtime instead makes clients and backends sleep and be woken far more
//! often (BENCHMARKS.md, issue 16, "Why the peers sleep" and "Worker model"). With one
//! worker, the runtime the server was started on serves, as it serves the control plane
//! (reloads, health, admin) in every case.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::http;

/// How a listener's connections reach the workers. (Measurement switch, issue 16:
/// `WEIR_WORKER_MODEL=shared|reuseport|multi`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Model {
    /// One socket per listener, its descriptor duplicated into each worker's reactor.
    Shared,
    /// One socket per listener and worker, bound with `SO_REUSEPORT`.
    ReusePort,
    /// The caller's runtime (a multi-thread one) serves everything.
    Multi,
}

impl Model {
    /// The model `WEIR_WORKER_MODEL` names (`shared` when unset).
    pub(crate) fn from_env() -> Self {
        match std::env::var("WEIR_WORKER_MODEL").as_deref() {
            Ok("reuseport") => Model::ReusePort,
            Ok("multi") => Model::Multi,
            _ => Model::Shared,
        }
    }
}

/// One worker: where its accept loops run, and what its connections share.
#[derive(Debug)]
pub(crate) struct Worker {
    /// Its runtime.
    pub(crate) handle: Handle,
    /// The server's context with this worker's own idle upstream connections.
    pub(crate) ctx: Arc<http::Context>,
    /// Connections its accept loops took.
    pub(crate) accepted: AtomicU64,
}

/// A server's workers.
#[derive(Debug)]
pub(crate) struct Workers {
    /// Each worker, by index.
    pub(crate) each: Vec<Arc<Worker>>,
    /// How listeners reach them.
    pub(crate) model: Model,
    /// Each accept loop yields after each connection (`WEIR_ACCEPT_YIELD=1`, measuring).
    pub(crate) yield_each: bool,
}

/// What keeps the worker threads running: dropping it ends them, and with them every task
/// on them at once (the server holds it, so dropping the server does).
#[derive(Debug)]
pub struct WorkerThreads {
    _stops: Vec<oneshot::Sender<()>>,
}

/// A worker thread could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start worker thread weir-worker-{index}: {reason}")]
pub struct WorkerError {
    /// Which.
    pub index: usize,
    /// Why.
    pub reason: String,
}

impl Workers {
    /// `count` workers sharing `ctx` (each with an idle pool of its own); one (or the
    /// multi-thread model) is the current runtime with `ctx` itself.
    pub(crate) fn start(count: usize, ctx: &Arc<http::Context>) -> Result<(Self, WorkerThreads), WorkerError> {
        let model = Model::from_env();
        if count <= 1 || model == Model::Multi {
            let only = Worker { handle: Handle::current(), ctx: ctx.clone(), accepted: AtomicU64::new(0) };
            return Ok((
                Self { each: vec![Arc::new(only)], model: Model::Multi, yield_each: false },
                WorkerThreads { _stops: Vec::new() },
            ));
        }
        let mut each = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let (handle, stop) = crate::core::side_runtime(&format!("weir-worker-{index}"))
                .map_err(|reason| WorkerError { index, reason })?;
            let ctx = Arc::new(http::Context {
                snapshot: ctx.snapshot.clone(),
                idle: Arc::default(),
                tunnels: ctx.tunnels.clone(),
                connections: ctx.connections.clone(),
            });
            each.push(Arc::new(Worker { handle, ctx, accepted: AtomicU64::new(0) }));
            stops.push(stop);
        }
        let yield_each = std::env::var("WEIR_ACCEPT_YIELD").as_deref() == Ok("1");
        Ok((Self { each, model, yield_each }, WorkerThreads { _stops: stops }))
    }

    /// Lets go of every idle upstream connection to `backend` on every worker.
    pub(crate) fn forget_idle(&self, backend: u64) -> usize {
        self.each.iter().map(|w| w.ctx.idle.forget(backend)).sum()
    }
}
