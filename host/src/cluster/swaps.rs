//! Shared plugins: a swap published once through one instance's admin API
//! (`?cluster=true`) runs on every instance.
//!
//! Keys:
//! - `<prefix>/plugins/<sha256>`: a component's manifest, `{"size": N, "chunks": K}`,
//!   written after its chunks `<prefix>/plugins/<sha256>/<n>` (`n` from `000000`), each
//!   at most [`CHUNK`] bytes: etcd refuses requests over 1.5 MiB by default
//!   (`--max-request-bytes`) and components weigh up to tens of MiB, so a component is
//!   stored in pieces, once per content, whoever publishes it again.
//! - `<prefix>/swaps/<pool>/<kind>`: the published choice, JSON ([`Publication`]): for
//!   each plugin either a pack name or a component's hash, its config and limits, with
//!   the node that published it and the publication it replaced (for a rollback).
//!
//! Every instance reads `<prefix>/swaps/` when its session opens (so one that starts or
//! reconnects later applies what was published meanwhile) and follows a watch on it. For
//! each publication it fetches the components (chunk by chunk), checks that their bytes
//! hash to the name they are stored under, and hands them to the safe-swap path the admin
//! API uses (load, configure and dry-run off the data path, then `Command::SwapPlugin`),
//! wired in by the server as a [`Swapper`] (the admin layer is above this one). A swap that
//! fails is logged with its key and shown in this instance's status; the others are not
//! affected. The publisher has swapped already (its admin call answered only once the
//! local swap succeeded), so it skips its own publication.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use etcd_client::{Client, EventType, WatchStream};
use serde::{Deserialize, Serialize};

use super::Cluster;
use super::stick::{escape, unescape};
use crate::control::{Control, PluginKind};

/// Largest piece of a component stored under one key (below etcd's default request
/// limit of 1.5 MiB with room for the request's own framing).
pub const CHUNK: usize = 1 << 20;

/// One plugin of a publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPlugin {
    /// A pack plugin's name (no component stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<String>,
    /// A component's SHA-256, lower-case hex (stored under `<prefix>/plugins/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The name it is shown under.
    pub name: String,
    /// Its config, a JSON object.
    pub config: serde_json::Value,
    /// Its memory limit in MiB, if it sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<u64>,
    /// Its call deadline in ms, if it sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout_ms: Option<u64>,
}

/// The value of `<prefix>/swaps/<pool>/<kind>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The plugin (the pool's whole list for `health`).
    pub plugins: Vec<PublishedPlugin>,
    /// The node that published it.
    pub by: String,
    /// The publication it replaced, without its own `previous` (what a rollback with
    /// `cluster = true` publishes again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<Publication>>,
}

/// A plugin to swap in: what was published, with its component's bytes (verified).
pub type Fetched = (PublishedPlugin, Option<Bytes>);

/// The safe-swap path, as the server wires it in (the admin API's).
pub trait Swapper: Send + Sync + std::fmt::Debug {
    /// Loads, configures and dry-runs `plugins` as `pool`'s `kind` off the data path, then
    /// has the one writer switch to it. The error says why it was refused.
    fn swap(
        &self,
        control: Arc<Control>,
        pool: String,
        kind: PluginKind,
        plugins: Vec<Fetched>,
    ) -> futures_util::future::BoxFuture<'static, Result<(), String>>;
}

/// What became of one published swap on this instance, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapState {
    /// The etcd key.
    pub key: String,
    /// Its `mod_revision` last seen.
    pub revision: i64,
    /// The plugins' names.
    pub plugins: String,
    /// The node that published it.
    pub by: String,
    /// Whether it is in place here.
    pub applied: bool,
    /// Why not, if it failed.
    pub error: Option<String>,
    /// When it was seen.
    pub at: SystemTime,
}

fn swaps_prefix(cluster: &Cluster) -> String {
    format!("{}/swaps/", cluster.config.prefix)
}

fn swap_key(cluster: &Cluster, pool: &str, kind: PluginKind) -> String {
    format!("{}/swaps/{}/{}", cluster.config.prefix, escape(pool), kind.as_str())
}

fn plugin_key(cluster: &Cluster, sha: &str) -> String {
    format!("{}/plugins/{sha}", cluster.config.prefix)
}

fn kind_of(name: &str) -> Option<PluginKind> {
    match name {
        "balancer" => Some(PluginKind::Balancer),
        "affinity" => Some(PluginKind::Affinity),
        "health" => Some(PluginKind::Health),
        _ => None,
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(bytes);
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The manifest of a stored component.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    size: usize,
    chunks: usize,
}

impl Cluster {
    /// What became of each published swap here, by `pool/kind`.
    pub fn swaps(&self) -> BTreeMap<String, SwapState> {
        self.swaps.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Publishes a swap this instance has just made (its admin API's `?cluster=true`):
    /// stores the components etcd lacks, then writes the choice, which every other
    /// instance follows. With `plugins` `None`, a rollback: publishes again the
    /// publication the current one replaced, which every instance, this one too, applies
    /// through its watch. Returns what was published.
    pub async fn publish(
        &self,
        pool: &str,
        kind: PluginKind,
        plugins: Option<Vec<Fetched>>,
    ) -> Result<Publication, String> {
        let client = super::connect(&self.config).await?;
        let mut kv = client.kv_client();
        let key = swap_key(self, pool, kind);
        let current = kv.get(key.as_str(), None).await.map_err(|e| format!("read {key}: {e}"))?;
        let current: Option<Publication> = current.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok());
        let rollback = plugins.is_none();
        let publication = match plugins {
            Some(plugins) => {
                let mut published = Vec::with_capacity(plugins.len());
                for (mut p, bytes) in plugins {
                    if let Some(bytes) = bytes {
                        let sha = sha256_hex(&bytes);
                        self.store(&client, &sha, &bytes).await?;
                        p.sha256 = Some(sha);
                        p.pack = None;
                    }
                    published.push(p);
                }
                let previous = current.map(|mut c| {
                    c.previous = None;
                    Box::new(c)
                });
                Publication { plugins: published, by: self.config.node.clone(), previous }
            }
            None => {
                let Some(current) = current else {
                    return Err(format!("nothing is published at {key}: nothing to roll back to"));
                };
                let Some(mut previous) = current.previous.clone() else {
                    return Err(format!("{key} holds the first publication: nothing to roll back to"));
                };
                let mut was = current;
                was.previous = None;
                previous.previous = Some(Box::new(was));
                previous.by = self.config.node.clone();
                *previous
            }
        };
        let value = serde_json::to_string(&publication).map_err(|e| e.to_string())?;
        let resp = kv.put(key.as_str(), value, None).await.map_err(|e| format!("write {key}: {e}"))?;
        let revision = resp.header().map_or(0, etcd_client::ResponseHeader::revision);
        if !rollback {
            // This instance has it in place already: its watch skips it. (A rollback is
            // applied here through the watch, like everywhere.)
            self.swapped(&key, revision, &publication, Ok(()));
        }
        tracing::info!(node = %self.config.node, %key, revision, "cluster: swap published");
        Ok(publication)
    }

    /// Stores a component under its hash, unless it is there already.
    async fn store(&self, client: &Client, sha: &str, bytes: &[u8]) -> Result<(), String> {
        let mut kv = client.kv_client();
        let key = plugin_key(self, sha);
        let there = kv.get(key.as_str(), None).await.map_err(|e| format!("read {key}: {e}"))?;
        if there.count() > 0 {
            return Ok(());
        }
        let chunks = bytes.chunks(CHUNK);
        let manifest = Manifest { size: bytes.len(), chunks: chunks.len() };
        for (n, chunk) in chunks.enumerate() {
            let k = format!("{key}/{n:06}");
            kv.put(k.as_str(), chunk, None).await.map_err(|e| format!("write {k}: {e}"))?;
        }
        let manifest = serde_json::to_string(&manifest).map_err(|e| e.to_string())?;
        kv.put(key.as_str(), manifest, None).await.map_err(|e| format!("write {key}: {e}"))?;
        tracing::info!(node = %self.config.node, %key, size = bytes.len(), "cluster: component stored");
        Ok(())
    }

    /// Records what became of a publication here.
    fn swapped(&self, key: &str, revision: i64, p: &Publication, result: Result<(), String>) {
        let name = key.strip_prefix(&swaps_prefix(self)).unwrap_or(key).to_owned();
        let plugins = p.plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
        let state = SwapState {
            key: key.to_owned(),
            revision,
            plugins,
            by: p.by.clone(),
            applied: result.is_ok(),
            error: result.err(),
            at: SystemTime::now(),
        };
        self.swaps.lock().unwrap_or_else(PoisonError::into_inner).insert(name, state);
    }

    fn seen_swap(&self, key: &str, revision: i64) -> bool {
        let name = key.strip_prefix(&swaps_prefix(self)).unwrap_or(key);
        self.swaps.lock().unwrap_or_else(PoisonError::into_inner).get(name).is_some_and(|s| s.revision >= revision)
    }
}

/// A component's bytes from etcd, checked against the hash they are stored under. The
/// outer error is etcd's (the session ends and the resync tries again), the inner one a
/// refusal.
async fn fetch(cluster: &Cluster, client: &Client, sha: &str) -> Result<Result<Bytes, String>, String> {
    let mut kv = client.kv_client();
    let key = plugin_key(cluster, sha);
    let resp = kv.get(key.as_str(), None).await.map_err(|e| format!("read {key}: {e}"))?;
    let Some(manifest) = resp.kvs().first() else { return Ok(Err(format!("{key}: no such component stored"))) };
    let manifest: Manifest = match serde_json::from_slice(manifest.value()) {
        Ok(m) => m,
        Err(e) => return Ok(Err(format!("{key}: not a component manifest: {e}"))),
    };
    let mut bytes = Vec::with_capacity(manifest.size.min(1 << 30));
    for n in 0..manifest.chunks {
        let k = format!("{key}/{n:06}");
        let resp = kv.get(k.as_str(), None).await.map_err(|e| format!("read {k}: {e}"))?;
        let Some(chunk) = resp.kvs().first() else { return Ok(Err(format!("{k}: chunk missing"))) };
        bytes.extend_from_slice(chunk.value());
    }
    let got = sha256_hex(&bytes);
    if got != sha || bytes.len() != manifest.size {
        return Ok(Err(format!(
            "{key}: the stored bytes ({} bytes, sha256 {got}) do not match their hash; refused",
            bytes.len()
        )));
    }
    Ok(Ok(Bytes::from(bytes)))
}

/// Reads every publication, applies those not seen yet, and watches the prefix from the
/// revision read.
pub(super) async fn resync(cluster: &Cluster, control: &Weak<Control>, client: &Client) -> Result<WatchStream, String> {
    let prefix = swaps_prefix(cluster);
    let (resp, revision) = super::read_prefix(client, &prefix).await?;
    for kv in resp.kvs() {
        let Some(c) = control.upgrade() else { return Err("server gone".into()) };
        put(cluster, &c, client, kv.key(), kv.value(), kv.mod_revision()).await?;
    }
    super::watch_after(client, &prefix, revision).await
}

/// Applies what the watch saw, in order. Fails only when etcd does (the session ends).
pub(super) async fn apply(
    cluster: &Cluster,
    control: &Arc<Control>,
    client: &Client,
    events: &[etcd_client::Event],
) -> Result<(), String> {
    for e in events {
        if e.event_type() != EventType::Put {
            continue;
        }
        let Some(kv) = e.kv() else { continue };
        put(cluster, control, client, kv.key(), kv.value(), kv.mod_revision()).await?;
    }
    Ok(())
}

/// One publication not seen yet (this instance's own swaps are recorded as seen when it
/// publishes them; a restarted instance applies them again).
async fn put(
    cluster: &Cluster,
    control: &Arc<Control>,
    client: &Client,
    key: &[u8],
    value: &[u8],
    revision: i64,
) -> Result<(), String> {
    let key = String::from_utf8_lossy(key).into_owned();
    let node = &cluster.config.node;
    if cluster.seen_swap(&key, revision) {
        return Ok(());
    }
    let Some((pool, kind)) = key.strip_prefix(&swaps_prefix(cluster)).and_then(|rest| rest.split_once('/')) else {
        return Ok(());
    };
    let (pool, Some(kind)) = (unescape(pool).into_owned(), kind_of(kind)) else {
        tracing::warn!(%node, %key, "cluster: not a swap key (`<prefix>/swaps/POOL/balancer|affinity|health`); ignored");
        return Ok(());
    };
    let publication: Publication = match serde_json::from_slice(value) {
        Ok(p) => p,
        Err(e) => {
            let error = format!("{key}: not a publication: {e}");
            tracing::error!(%node, %key, %error, "cluster: published swap refused");
            let empty = Publication { plugins: Vec::new(), by: String::new(), previous: None };
            cluster.swapped(&key, revision, &empty, Err(error));
            return Ok(());
        }
    };
    let mut plugins = Vec::with_capacity(publication.plugins.len());
    let mut refused = None;
    for p in &publication.plugins {
        match &p.sha256 {
            Some(sha) => match fetch(cluster, client, sha).await? {
                Ok(bytes) => plugins.push((p.clone(), Some(bytes))),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            },
            None => plugins.push((p.clone(), None)),
        }
    }
    let result = match refused {
        Some(e) => Err(e),
        None => cluster.swapper.swap(control.clone(), pool.clone(), kind, plugins).await,
    };
    match &result {
        Ok(()) => {
            cluster.stats.swaps_applied.inc();
            tracing::info!(%node, %key, revision, by = %publication.by, "cluster: published swap applied");
        }
        Err(e) => {
            cluster.stats.swaps_failed.inc();
            tracing::error!(%node, %key, revision, by = %publication.by, error = %e, "cluster: published swap failed here; the plugin in place keeps serving");
        }
    }
    cluster.swapped(&key, revision, &publication, result);
    Ok(())
}
