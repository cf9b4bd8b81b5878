//! The workers that serve connections. With `[runtime] worker_threads` above 1, each
//! worker is a thread of its own (`weir-worker-K`) running a tokio current-thread runtime,
//! and every listener has an accept loop on each of them, all accepting from the
//! listener's one socket: a connection's task, its upstream connections (each worker keeps
//! its own idle pool), HTTP/2 streams and tunnels all live on the worker that serves it,
//! and no task moves between threads. A worker serves the connections it accepts, unless
//! it serves more than one more than the least busy worker: that one is handed the new
//! connection ([`Worker::choose`]). One multi-thread runtime instead makes clients
//! and backends sleep and be woken far more often, and costs more CPU per request
//! (BENCHMARKS.md, issue 16, "Why the peers sleep" and "Worker model"). With one worker,
//! the runtime the server was started on serves. The control plane (the one writer,
//! admin API, cluster, file watches, signals) stays on the runtime the server was started
//! on in every case; health probes and discovery have threads of their own.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::core::{Count, Counted};
use crate::http;

/// One worker: where its accept loops run, and what its connections share.
#[derive(Debug)]
pub(crate) struct Worker {
    /// Its runtime.
    pub(crate) handle: Handle,
    /// The server's context, with this worker's own idle upstream connections.
    pub(crate) ctx: Arc<http::Context>,
    /// Connections it was given to serve (by its own accept loops or handed over).
    pub(crate) accepted: AtomicU64,
    /// Connections and WebSocket tunnels it serves now (counted only with more than one
    /// worker). A tunnel counts apart from the connection that opened it: an HTTP/1.1
    /// connection ends at its upgrade, while its tunnel may be carried by this worker for
    /// hours.
    pub(crate) live: Arc<Count>,
}

impl Worker {
    fn new(handle: Handle, ctx: Arc<http::Context>) -> Self {
        Worker { handle, ctx, accepted: AtomicU64::new(0), live: Arc::default() }
    }

    /// Which worker should serve a connection `self` just accepted: `self`, unless it
    /// serves more than one connection more than the least busy worker, which then does
    /// (HAProxy hands connections to its least loaded thread the same way). The kernel
    /// gives a burst of connections on the shared socket to whichever worker's accept
    /// comes first, which then takes them all (a client pool opening its keep-alive
    /// connections at once landed 0/65 and 17/0 on two workers: BENCHMARKS.md, "Worker
    /// model"). The chosen worker counts the connection from now on, until the guard is
    /// dropped; a WebSocket tunnel the connection opens is counted again for its own life.
    pub(crate) fn choose<'a>(self: &'a Arc<Self>, all: &'a [Arc<Worker>]) -> (&'a Arc<Worker>, Option<Counted>) {
        if all.len() <= 1 {
            return (self, None);
        }
        let mine = self.live.now();
        let (least, fewest) = all.iter().map(|w| (w, w.live.now())).min_by_key(|&(_, n)| n).unwrap_or((self, mine));
        let target = if mine > fewest + 1 { least } else { self };
        (target, Some(Counted::new(&target.live)))
    }
}

/// A server's workers, by index.
#[derive(Debug)]
pub(crate) struct Workers {
    pub(crate) each: Vec<Arc<Worker>>,
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
    /// `count` worker threads sharing `ctx` (each with an idle pool of its own); for one,
    /// the current runtime with `ctx` itself.
    pub(crate) fn start(count: usize, ctx: &Arc<http::Context>) -> Result<(Self, WorkerThreads), WorkerError> {
        if count <= 1 {
            let only = Worker::new(Handle::current(), ctx.clone());
            return Ok((Self { each: vec![Arc::new(only)] }, WorkerThreads { _stops: Vec::new() }));
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
            each.push(Arc::new(Worker::new(handle, ctx)));
            stops.push(stop);
        }
        Ok((Self { each }, WorkerThreads { _stops: stops }))
    }

    /// Lets go of every idle upstream connection to `backend` on every worker.
    pub(crate) fn forget_idle(&self, backend: u64) -> usize {
        self.each.iter().map(|w| w.ctx.idle.forget(backend)).sum()
    }
}
