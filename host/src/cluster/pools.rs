//! Shared configuration: pools kept in etcd under `<prefix>/pools/<name>`, each value
//! the TOML body of a `[pool.NAME]` table (the same keys as in the file).
//!
//! Every instance reads the prefix when its session opens, then follows a watch on it;
//! each value is handed to the one writer ([`Control::set_cluster_pool`]), which parses,
//! builds and applies it like a reload of that one pool. A value that does not parse or
//! build (a TOML error, an unknown key, an unknown plugin, a plugin refusing its config)
//! is refused by every instance alike, logged with its etcd key and shown in status; the
//! last good version keeps serving. A deleted key removes the pool. The file wins: a pool
//! the config file defines is never replaced from etcd (refused, with the reason).

use std::collections::BTreeMap;
use std::sync::{PoisonError, Weak};
use std::time::SystemTime;

use etcd_client::{Client, EventType, WatchStream};

use super::Cluster;
use super::stick::{escape, unescape};
use crate::control::Control;

/// What became of one etcd pool key, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    /// The etcd key.
    pub key: String,
    /// The key's `mod_revision` last seen.
    pub revision: i64,
    /// Whether that value serves (`false`: refused, or the key was deleted).
    pub applied: bool,
    /// Why it was refused, if it was.
    pub error: Option<String>,
    /// When it was last seen change.
    pub at: SystemTime,
}

/// The prefix of every shared pool.
pub(super) fn prefix(cluster: &Cluster) -> String {
    format!("{}/pools/", cluster.config.prefix)
}

/// Reads every shared pool, applies what changed since last seen (a pool no longer in
/// etcd leaves), and watches the prefix from the revision read.
pub(super) async fn resync(cluster: &Cluster, control: &Weak<Control>, client: &Client) -> Result<WatchStream, String> {
    let prefix = prefix(cluster);
    let (resp, revision) = super::read_prefix(client, &prefix).await?;
    let Some(control) = control.upgrade() else { return Err("server gone".into()) };
    let mut present = Vec::with_capacity(resp.kvs().len());
    for kv in resp.kvs() {
        if let Some(name) = put(cluster, &control, &prefix, kv.key(), kv.value(), kv.mod_revision()).await {
            present.push(name);
        }
    }
    for name in control.cluster_pool_names() {
        if !present.contains(&name) {
            let key = format!("{prefix}{}", escape(&name));
            delete(cluster, &control, &name, &key, revision).await;
        }
    }
    super::watch_after(client, &prefix, revision).await
}

/// Applies what the watch saw, in order.
pub(super) async fn apply(cluster: &Cluster, control: &Control, events: &[etcd_client::Event]) {
    let prefix = prefix(cluster);
    for e in events {
        let Some(kv) = e.kv() else { continue };
        match e.event_type() {
            EventType::Put => {
                put(cluster, control, &prefix, kv.key(), kv.value(), kv.mod_revision()).await;
            }
            EventType::Delete => {
                let Ok(key) = std::str::from_utf8(kv.key()) else { continue };
                let Some(name) = name_of(&prefix, key) else { continue };
                delete(cluster, control, &name, key, kv.mod_revision()).await;
            }
        }
    }
}

/// The pool name of an etcd key under `prefix` (one segment).
fn name_of(prefix: &str, key: &str) -> Option<String> {
    let rest = key.strip_prefix(prefix)?;
    (!rest.is_empty() && !rest.contains('/')).then(|| unescape(rest).into_owned())
}

/// One pool's value: applied unless this revision was seen already. Returns its name.
async fn put(
    cluster: &Cluster,
    control: &Control,
    prefix: &str,
    key: &[u8],
    value: &[u8],
    revision: i64,
) -> Option<String> {
    let key = String::from_utf8_lossy(key);
    let Some(name) = name_of(prefix, &key) else {
        tracing::warn!(node = %cluster.config.node, %key, "cluster: not a pool key (`<prefix>/pools/NAME`); ignored");
        return None;
    };
    if seen(cluster, &name, revision) {
        return Some(name);
    }
    let result = match std::str::from_utf8(value) {
        Ok(text) => control.set_cluster_pool(&name, Some(text), &key).await.map_err(|e| e.to_string()),
        Err(_) => Err(format!("{key}: the value is not UTF-8 text")),
    };
    record(cluster, &name, &key, revision, result);
    Some(name)
}

/// A pool's key deleted: the pool leaves.
async fn delete(cluster: &Cluster, control: &Control, name: &str, key: &str, revision: i64) {
    let result = control.set_cluster_pool(name, None, key).await.map_err(|e| e.to_string());
    if result.is_ok() {
        tracing::info!(node = %cluster.config.node, %key, pool = %name, "cluster: pool key deleted; the pool is removed");
        cluster.pools.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        return;
    }
    record(cluster, name, key, revision, result);
}

/// Whether `revision` of `name` was applied or refused already.
fn seen(cluster: &Cluster, name: &str, revision: i64) -> bool {
    cluster.pools.lock().unwrap_or_else(PoisonError::into_inner).get(name).is_some_and(|s| s.revision == revision)
}

/// Logs and keeps what became of a value.
fn record(cluster: &Cluster, name: &str, key: &str, revision: i64, result: Result<bool, String>) {
    let node = &cluster.config.node;
    let error = match result {
        Ok(changed) => {
            cluster.stats.pool_updates.inc();
            if changed {
                tracing::info!(%node, %key, pool = %name, revision, "cluster: pool applied");
            }
            None
        }
        Err(e) => {
            cluster.stats.pool_refused.inc();
            tracing::error!(%node, %key, pool = %name, revision, error = %e, "cluster: pool refused; the last good version keeps serving");
            Some(e)
        }
    };
    let state = PoolState { key: key.to_owned(), revision, applied: error.is_none(), error, at: SystemTime::now() };
    cluster.pools.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), state);
}

/// Each shared pool's state, by name.
pub(super) fn states(cluster: &Cluster) -> BTreeMap<String, PoolState> {
    cluster.pools.lock().unwrap_or_else(PoisonError::into_inner).clone()
}
