//! A running weir: the wiring of the layers ([`Server::start`]), reloads
//! ([`Server::reload`], through the one writer in [`crate::control`]) and shutdown.
//!
//! Connections are served on the server's workers (`[runtime] worker_threads`): above 1,
//! threads of their own, each with a current-thread runtime and an accept loop per
//! listener ([`crate::control`]'s `workers`); with 1, the runtime `start` was called on.
//! The control plane stays on that runtime.
//!
//! Everything a server starts ends with it: its accept loops, its connection tasks and
//! its tunnels all watch the server's stop signal, and its worker threads end when it is
//! dropped. [`Server::shutdown`] is graceful
//! (stop accepting, let requests in flight finish, drain WebSockets, up to each pool's
//! `drain_deadline_ms`); dropping a `Server` without it closes everything at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::admin::{self, Admin, server::AdminError};
use crate::cluster::{self, Cluster};
use crate::config::Config;
use crate::control::{Applied, Control, ControlError, WorkerError, WorkerThreads, Workers};
use crate::http;
use crate::metrics::Metrics;
use crate::net::listen::{Connections, Stop};
use crate::plugin::{LoadError, PluginRuntime};
use crate::state::{Snapshot, SnapshotMetrics};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The plugin runtime could not be created. (Transparent: a message that said its
    /// cause and chained it too would say it twice in a renderer of the chain.)
    #[error(transparent)]
    Runtime(#[from] LoadError),
    /// A pool could not be built or a listener not bound.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The admin API could not start.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A worker thread could not start.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// A running proxy. Dropping it stops accepting and closes every connection and tunnel
/// it serves at once; [`Server::shutdown`] first lets them finish.
#[derive(Debug)]
pub struct Server {
    control: Arc<Control>,
    stop: watch::Sender<Stop>,
    /// Where the admin API listens, when the config has `[admin]`.
    admin: Option<SocketAddr>,
    /// This instance's membership of the etcd cluster, when the config has `[cluster]`.
    cluster: Option<Arc<Cluster>>,
    /// The worker threads (`[runtime] worker_threads` above 1): they end, with every task
    /// on them, when the server is dropped (after `Drop::drop` has aborted the rest).
    _workers: WorkerThreads,
}

impl Server {
    /// Loads every plugin, binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let plugins = Arc::new(PluginRuntime::new(config.plugins.clone())?);
        let ctx = Arc::new(http::Context {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            idle: Arc::default(),
            tunnels: Arc::default(),
            connections: Arc::new(Connections::default()),
        });
        let (stop, stop_rx) = watch::channel(Stop::Serve);
        let metrics = Arc::new(Metrics::default());
        SnapshotMetrics::register(&metrics, ctx.snapshot.clone());
        let (workers, threads) = Workers::start(config.runtime.worker_threads, &ctx)?;
        let control = Control::new(ctx, workers, plugins, stop_rx.clone(), metrics);
        let admin_config = config.admin.clone();
        let cluster_config = config.cluster.clone();
        let watch = config.plugins.watch;
        control.load(config).await?;
        if watch {
            tokio::spawn(admin::plugins::watch(Arc::downgrade(&control), stop_rx.clone()));
        }
        // Published swaps take the admin API's safe path (admin is above cluster).
        let cluster = cluster_config
            .map(|c| cluster::start(c, &control, Arc::new(admin::plugins::ClusterSwaps), stop_rx.clone()));
        let admin = match admin_config {
            Some(a) => {
                let state = Arc::new(Admin::new(control.clone(), a.token.clone(), cluster.clone()));
                Some(admin::server::start(state, &a, stop_rx).await?)
            }
            None => None,
        };
        Ok(Self { control, stop, admin, cluster, _workers: threads })
    }

    /// Where the admin API listens, if the config has `[admin]`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// This instance's membership of the cluster, if the config has `[cluster]`.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The bound address of each listener, by name.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.control.listeners()
    }

    /// The bound address of the named listener.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.control.listeners().into_iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.control.ctx.snapshot.load_full()
    }

    /// The one writer, for callers that send their own commands.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Applies a new config to the running server: the difference from the current one
    /// becomes commands for the one writer. Changed pools are rebuilt beside the current
    /// ones (live backend figures, counters and stick tables carry over by address,
    /// unchanged pack plugins are reused); listeners added to the file are bound, removed
    /// ones closed, changed ones take their new routes and limits at once; every TLS
    /// listener reads its certificate files again (for new handshakes). New work
    /// follows the new snapshot; requests and tunnels in progress keep the backend they
    /// have, except that the WebSockets of a backend that left its pool are drained (a
    /// close frame each, spread over the pool's `drain_spread_ms`, cut at
    /// `drain_deadline_ms`). `[plugins]` and `[runtime]` are read at start only (a
    /// warning says so). On any error nothing changes.
    pub async fn reload(&self, config: Config) -> Result<Applied, ControlError> {
        self.control.reload(config).await
    }

    /// Graceful shutdown: stops accepting, lets every request in flight finish and
    /// closes idle connections, drains every tunnel (close frames spread over each pool's
    /// `drain_spread_ms`), and returns once nothing is left or the longest
    /// `drain_deadline_ms` has passed, when whatever remains is closed. Returns how many
    /// tunnels were drained.
    pub async fn shutdown(&self) -> usize {
        let _ = self.stop.send(Stop::Graceful);
        self.control.close_listeners().await;
        let ctx = &self.control.ctx;
        let snapshot = ctx.snapshot.load_full();
        let mut drained = 0;
        let mut longest = Duration::ZERO;
        for pool in snapshot.pools.values() {
            longest = longest.max(pool.config.drain_deadline);
            for m in &pool.view.members {
                drained += ctx.tunnels.drain(m.live.key(), pool.config.drain_spread, pool.config.drain_deadline);
            }
        }
        // A little beyond the deadline, for the cut tunnels to unregister.
        let give_up = longest + Duration::from_millis(500);
        let everything_done = async {
            ctx.connections.all_closed().await;
            while ctx.tunnels.len() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(give_up, everything_done).await.is_err() {
            tracing::warn!(
                connections = ctx.connections.open(),
                tunnels = ctx.tunnels.len(),
                "drain deadline passed; closing what is left"
            );
        }
        self.abort();
        drained
    }

    /// Tells every connection to close now: the ones being opened by the stop signal,
    /// the ones joined to a backend (tunnels) by a cut order (they do not watch the
    /// signal). The signal goes first, so a connection registering meanwhile sees it.
    fn abort(&self) {
        let _ = self.stop.send(Stop::Abort);
        self.control.ctx.tunnels.cut_all();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.abort();
        self.control.abort_listeners();
    }
}
