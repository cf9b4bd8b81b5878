//! Several weir instances acting as one through etcd (`[cluster]`): one background task
//! per instance holds the etcd session and replicates what the instances share; the
//! request path never waits for it and never fails because of it.
//!
//! Shared are pools ([`pools`]: `<prefix>/pools/<name>`, TOML, applied like a reload
//! through the one writer; a bad value is refused and the last good one kept) and the
//! stick tables of pools with `share_stick_tables`
//! ([`stick`]): entries live under `<prefix>/stick/<pool>/<table>/<key>`, each written
//! with a lease that carries its TTL (one lease per TTL bucket, not one per entry), and
//! every instance keeps its local copy current from a watch on that prefix. Two instances
//! pinning the same key at once converge through a create-if-absent transaction: the
//! loser adopts the winner's backend from the transaction's answer.
//!
//! etcd down: everything serves on the local copy; events still arrive (holds are still
//! tracked, writes are dropped), the task reconnects with back-off (100 ms doubling to
//! 5 s) and resyncs: it reads the prefix again (the shared value wins), publishes the
//! local entries still alive that etcd lacks, and watches from the revision it read.
//! The state of the session shows in `GET /api/v1/status` (`cluster`) and in the
//! `weir_cluster_*` metrics.
//!
//! Layering: below `control` (it reads the one snapshot the writer publishes and will
//! send it commands) and above `admin` (which renders its status) and `server` (which
//! starts it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::config::ClusterConfig;
use crate::control::Control;
use crate::metrics::{Collector, Counter, DescriptorEncoder, Family, MetricType, Metrics, NO_LABELS};
use crate::net::listen::Stop;
use crate::state::{StickEvent, StickSink};

mod pools;
mod stick;
mod swaps;

/// Reads every key under `prefix`: the response and the revision it was read at, from
/// which a watch ([`watch_after`]) misses nothing.
async fn read_prefix(client: &etcd_client::Client, prefix: &str) -> Result<(etcd_client::GetResponse, i64), String> {
    let resp = client
        .kv_client()
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("read {prefix}: {e}"))?;
    let revision = resp.header().map_or(0, etcd_client::ResponseHeader::revision);
    Ok((resp, revision))
}

/// Watches every key under `prefix` from the revision after `revision` (a
/// [`read_prefix`]'s).
async fn watch_after(
    client: &etcd_client::Client,
    prefix: &str,
    revision: i64,
) -> Result<etcd_client::WatchStream, String> {
    let options = etcd_client::WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    client.clone().watch(prefix, Some(options)).await.map_err(|e| format!("watch {prefix}: {e}"))
}

pub use pools::PoolState;
pub use swaps::{CHUNK, Fetched, Publication, PublishedPlugin, SwapState, Swapper, sha256_hex};

/// Events a shared stick table may queue before new ones are dropped (counted).
const QUEUE: usize = 16 * 1024;
/// First wait before reconnecting; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait before reconnecting.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often held entries are renewed and pools' sharing is brought up to date.
const TICK: Duration = Duration::from_millis(250);
/// Interval of the connection's keep-alive pings. etcd (gRPC) refuses pings more
/// frequent than its `--grpc-keepalive-min-time`, 5 s by default: after a few it closes
/// the connection (`GOAWAY too_many_pings`), which every instance then saw as a lost
/// session every 8 s, each followed by a full resync.
const KEEP_ALIVE: Duration = Duration::from_secs(6);
/// Deadline of one etcd call (a dead etcd is noticed within it).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the cluster task did, counted.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Sessions with etcd opened after the first.
    pub reconnects: Counter,
    /// Failed etcd calls and sessions.
    pub errors: Counter,
    /// Stick entries written to etcd (created, overwritten or renewed).
    pub stick_published: Counter,
    /// Local pins replaced by another instance's (a lost race, or a resync).
    pub stick_adopted: Counter,
    /// Stick entries learnt from etcd (the watch and resyncs).
    pub stick_received: Counter,
    /// Leases granted.
    pub leases: Counter,
    /// Events not published because etcd was down (the resync publishes them).
    pub stick_unpublished: Counter,
    /// Shared pool values applied (or found unchanged).
    pub pool_updates: Counter,
    /// Shared pool values refused.
    pub pool_refused: Counter,
    /// Published swaps applied here.
    pub swaps_applied: Counter,
    /// Published swaps that failed here.
    pub swaps_failed: Counter,
}

/// The state of the etcd session, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// Whether the session is up (the prefix read and watched).
    pub connected: bool,
    /// When it last went up or down (`None`: not tried yet).
    pub since: Option<SystemTime>,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// One instance's membership of the cluster: its config, the session's state and the
/// sink its shared stick tables send to.
#[derive(Debug)]
pub struct Cluster {
    /// `[cluster]`.
    pub config: ClusterConfig,
    /// Counters.
    pub stats: ClusterStats,
    connected: AtomicBool,
    state: Mutex<SessionState>,
    sink: StickSink,
    /// What became of each shared pool's key, by pool name.
    pools: Mutex<std::collections::BTreeMap<String, PoolState>>,
    /// What became of each published swap here, by `pool/kind`.
    swaps: Mutex<std::collections::BTreeMap<String, SwapState>>,
    /// The safe-swap path, wired in by the server.
    swapper: Arc<dyn Swapper>,
}

impl Cluster {
    /// The session's state.
    pub fn session(&self) -> SessionState {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// What became of each pool shared through etcd, by pool name.
    pub fn pools(&self) -> std::collections::BTreeMap<String, PoolState> {
        pools::states(self)
    }

    /// Whether the session is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Stick events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.sink.dropped.load(Ordering::Relaxed)
    }

    fn up(&self) {
        self.connected.store(true, Ordering::Relaxed);
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.connected = true;
        s.since = Some(SystemTime::now());
    }

    fn down(&self, error: String) {
        self.stats.errors.inc();
        let was = self.connected.swap(false, Ordering::Relaxed);
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if was || s.since.is_none() {
            s.since = Some(SystemTime::now());
        }
        s.connected = false;
        s.last_error = Some(error);
    }

    /// Attaches the sink to every pool that shares its stick tables, detaches it from
    /// those that stopped (a reload may change `share_stick_tables`).
    fn share_pools(&self, control: &Control) {
        let snapshot = control.ctx.snapshot.load();
        for pool in snapshot.pools.values() {
            let sink = pool.config.share_stick_tables.then_some(&self.sink);
            pool.view.live.share_stick_tables(sink);
        }
    }
}

/// Starts the cluster task of a server: it ends when the server stops serving. Published
/// plugin swaps go through `swapper`.
pub fn start(
    config: ClusterConfig,
    control: &Arc<Control>,
    swapper: Arc<dyn Swapper>,
    stop: watch::Receiver<Stop>,
) -> Arc<Cluster> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let cluster = Arc::new(Cluster {
        config,
        stats: ClusterStats::default(),
        connected: AtomicBool::new(false),
        state: Mutex::new(SessionState { connected: false, since: None, last_error: None }),
        sink: StickSink { tx, dropped: Arc::default() },
        pools: Mutex::default(),
        swaps: Mutex::default(),
        swapper,
    });
    cluster.share_pools(control);
    register(control.metrics(), Arc::downgrade(&cluster));
    tokio::spawn(run(cluster.clone(), Arc::downgrade(control), rx, stop));
    cluster
}

/// The session loop: connect, resync, serve; on any error wait and start again.
async fn run(
    cluster: Arc<Cluster>,
    control: Weak<Control>,
    mut rx: mpsc::Receiver<StickEvent>,
    mut stop: watch::Receiver<Stop>,
) {
    let mut sticks = stick::Replicator::default();
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    loop {
        if !first {
            cluster.stats.reconnects.inc();
        }
        first = false;
        let result = tokio::select! {
            r = session(&cluster, &control, &mut rx, &mut sticks) => r,
            () = crate::net::listen::stop_serving(&mut stop) => return,
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                if cluster.connected() {
                    tracing::warn!(node = %cluster.config.node, error = %e, "cluster: etcd session lost; serving on the local copy");
                    backoff = BACKOFF_MIN;
                } else {
                    tracing::debug!(node = %cluster.config.node, error = %e, "cluster: etcd unreachable");
                }
                cluster.down(e);
                sticks.session_lost();
            }
        }
        // Waiting: holds are still tracked; what would have been written is left to the
        // resync.
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                ev = rx.recv() => match ev {
                    Some(_) => cluster.stats.stick_unpublished.inc(),
                    None => return,
                },
                () = crate::net::listen::stop_serving(&mut stop) => return,
            }
            if let Some(c) = control.upgrade() {
                cluster.share_pools(&c);
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One session with etcd; returns `Ok` only when the server is gone.
async fn session(
    cluster: &Arc<Cluster>,
    control: &Weak<Control>,
    rx: &mut mpsc::Receiver<StickEvent>,
    sticks: &mut stick::Replicator,
) -> Result<(), String> {
    let client = connect(&cluster.config).await?;
    let Some(c) = control.upgrade() else { return Ok(()) };
    cluster.share_pools(&c);
    drop(c);
    let mut watch = sticks.resync(cluster, control, &client).await?;
    let mut pool_watch = pools::resync(cluster, control, &client).await?;
    let mut swap_watch = swaps::resync(cluster, control, &client).await?;
    cluster.up();
    tracing::info!(node = %cluster.config.node, etcd = ?cluster.config.etcd, "cluster: etcd session up");
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(256);
    loop {
        tokio::select! {
            msg = watch.message() => {
                let msg = msg.map_err(|e| format!("watch: {e}"))?.ok_or("watch: etcd closed the stream")?;
                if msg.canceled() {
                    return Err(format!("watch canceled: {}", msg.cancel_reason()));
                }
                let Some(c) = control.upgrade() else { return Ok(()) };
                sticks.apply(cluster, &c, msg.events());
            }
            msg = pool_watch.message() => {
                let msg = msg.map_err(|e| format!("watch: {e}"))?.ok_or("watch: etcd closed the stream")?;
                if msg.canceled() {
                    return Err(format!("watch canceled: {}", msg.cancel_reason()));
                }
                let Some(c) = control.upgrade() else { return Ok(()) };
                pools::apply(cluster, &c, msg.events()).await;
            }
            msg = swap_watch.message() => {
                let msg = msg.map_err(|e| format!("watch: {e}"))?.ok_or("watch: etcd closed the stream")?;
                if msg.canceled() {
                    return Err(format!("watch canceled: {}", msg.cancel_reason()));
                }
                let Some(c) = control.upgrade() else { return Ok(()) };
                swaps::apply(cluster, &c, &client, msg.events()).await?;
            }
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return Ok(());
                }
                let Some(c) = control.upgrade() else { return Ok(()) };
                let result = sticks.publish(cluster, &c, &client, batch.drain(..)).await;
                result?;
            }
            _ = tick.tick() => {
                let Some(c) = control.upgrade() else { return Ok(()) };
                cluster.share_pools(&c);
                sticks.renew_held(cluster, &c, &client).await?;
            }
        }
    }
}

/// A client for `config`'s endpoints, checked with one call (the channel connects
/// lazily).
async fn connect(config: &ClusterConfig) -> Result<etcd_client::Client, String> {
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE, CALL_TIMEOUT)
        .with_keep_alive_while_idle(true);
    if config.ca.is_some() || config.identity.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &config.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(&**ca));
        }
        if let Some((cert, key)) = &config.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(&**cert, &**key));
        }
        options = options.with_tls(tls);
    }
    if let Some((user, password)) = &config.credentials {
        options = options.with_user(user.clone(), password.to_string());
    }
    let mut client =
        etcd_client::Client::connect(&config.etcd, Some(options)).await.map_err(|e| format!("connect: {e}"))?;
    client.status().await.map_err(|e| format!("status: {e}"))?;
    Ok(client)
}

/// Registers the `weir_cluster_*` metrics.
fn register(metrics: &Metrics, cluster: Weak<Cluster>) {
    metrics.register("cluster", Counters(cluster));
}

#[derive(Debug)]
struct Counters(Weak<Cluster>);

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(cluster) = self.0.upgrade() else { return Ok(()) };
        Family::new(&mut encoder, "connected", "Whether the etcd session is up (1) or not (0).", MetricType::Gauge)?
            .gauge(&NO_LABELS, u64::from(cluster.connected()))?;
        let s = &cluster.stats;
        let all: [(&str, &str, u64); 12] = [
            ("reconnects", "etcd sessions opened after the first.", s.reconnects.get()),
            ("errors", "Failed etcd calls and sessions.", s.errors.get()),
            ("stick_published", "Stick entries written to etcd.", s.stick_published.get()),
            ("stick_adopted", "Local pins replaced by another instance's.", s.stick_adopted.get()),
            ("stick_received", "Stick entries learnt from etcd.", s.stick_received.get()),
            ("leases", "etcd leases granted for stick entries.", s.leases.get()),
            ("stick_unpublished", "Stick events not published while etcd was down.", s.stick_unpublished.get()),
            ("stick_dropped", "Stick events dropped because the queue was full.", cluster.dropped()),
            ("pool_updates", "Shared pool values applied.", s.pool_updates.get()),
            ("pool_refused", "Shared pool values refused (the last good one kept).", s.pool_refused.get()),
            ("swaps_applied", "Published plugin swaps applied here.", s.swaps_applied.get()),
            ("swaps_failed", "Published plugin swaps that failed here.", s.swaps_failed.get()),
        ];
        for (name, help, v) in all {
            Family::new(&mut encoder, name, help, MetricType::Counter)?.counter(&NO_LABELS, v)?;
        }
        Ok(())
    }
}
