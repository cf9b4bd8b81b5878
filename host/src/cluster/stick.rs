//! Shared stick tables: the etcd side of the events [`crate::state::StickTable`] queues.
//!
//! An entry is the key `<prefix>/stick/<pool>/<table>/<key as 16 hex digits>` whose value
//! is the backend's configured address (names, not ids, so instances whose pools list
//! the backends in another order agree). `/` and `%` in a pool or table name are
//! escaped as `%2F` and `%25`.
//!
//! Writes, by what happened locally:
//! - a new pin is created only if the key is absent (a transaction comparing its
//!   `create_revision` with 0); otherwise the transaction returns the entry, and a
//!   different backend there is adopted locally: whoever wrote first wins, everywhere;
//! - a changed pin (the plugin re-picked) overwrites;
//! - a renewal (an entry used after half its TTL, or held by a tunnel for half its TTL)
//!   rewrites the entry with a fresh lease if it still holds our backend, adopts the
//!   other one if not, and creates it again if it expired meanwhile;
//! - a hold itself queues and writes nothing: every request's binding holds its entry
//!   while it is served, so writing on a hold cost one write per request (two per new
//!   session, as measured before this was found), and queueing it an event per request;
//!   each tick scans the holds and renews those that kept their entry half a TTL.
//!
//! So one new session costs one write (the create), and a session in use one renewal
//! per half TTL, whichever instance it goes through.
//! Leases: each write takes the lease of its TTL's current bucket. A bucket lasts `w` =
//! a quarter of the TTL (1 s to 60 s) and its lease `TTL + w` (+1 s), so an entry
//! outlives its last write by at least the TTL and at most `TTL + w + 1 s`, and a
//! thousand new pins a second cost one lease grant per bucket, not a thousand.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, KvClient, PutOptions, Txn, TxnOp, TxnOpResponse, WatchStream,
};

use super::Cluster;
use crate::control::Control;
use crate::state::{Snapshot, StickChange, StickEvent, address_key};

/// Writes in flight at once in one batch.
const CONCURRENCY: usize = 64;

/// The replication state that outlives a session: leases by TTL.
#[derive(Debug, Default)]
pub(super) struct Replicator {
    /// TTL in ms -> (lease id, when granted).
    leases: HashMap<u64, (i64, Instant)>,
}

/// What one write came to.
enum Outcome {
    Published,
    /// Another instance's backend (its address) holds the key.
    Adopt(String),
}

/// `/` and `%` escaped, so a name is one key segment.
pub(super) fn escape(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains(['/', '%']) { name.replace('%', "%25").replace('/', "%2F").into() } else { name.into() }
}

pub(super) fn unescape(segment: &str) -> std::borrow::Cow<'_, str> {
    if segment.contains('%') { segment.replace("%2F", "/").replace("%25", "%").into() } else { segment.into() }
}

/// The prefix of every stick entry of the cluster.
pub(super) fn prefix(cluster: &Cluster) -> String {
    format!("{}/stick/", cluster.config.prefix)
}

/// The etcd key of one entry.
fn entry_key(cluster: &Cluster, pool: &str, table: &str, key: u64) -> String {
    format!("{}/stick/{}/{}/{key:016x}", cluster.config.prefix, escape(pool), escape(table))
}

/// `(pool, table, key)` of an etcd key under [`prefix`].
fn parse_key<'a>(prefix: &str, key: &'a str) -> Option<(std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>, u64)> {
    let rest = key.strip_prefix(prefix)?;
    let mut parts = rest.split('/');
    let (pool, table, k) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || k.len() != 16 {
        return None;
    }
    Some((unescape(pool), unescape(table), u64::from_str_radix(k, 16).ok()?))
}

/// Sticks a key as etcd says, if this instance shares that pool's tables.
fn apply_one(cluster: &Cluster, snapshot: &Snapshot, prefix: &str, key: &[u8], value: &[u8]) {
    let (Ok(key), Ok(address)) = (std::str::from_utf8(key), std::str::from_utf8(value)) else { return };
    let Some((pool, table, k)) = parse_key(prefix, key) else { return };
    let Some(pool) = snapshot.pools.get(&*pool) else { return };
    if !pool.config.share_stick_tables {
        return;
    }
    let Some(table) = pool.view.live.stick_table_named(&table) else { return };
    table.set_remote(k, address_key(address));
    cluster.stats.stick_received.inc();
}

impl Replicator {
    /// A session ended: its leases may be gone with it.
    pub(super) fn session_lost(&mut self) {
        self.leases.clear();
    }

    /// Reads every shared entry (the cluster's value wins over a local one), publishes
    /// the local entries etcd lacks, and watches the prefix from the revision read.
    pub(super) async fn resync(
        &mut self,
        cluster: &Cluster,
        control: &std::sync::Weak<Control>,
        client: &Client,
    ) -> Result<WatchStream, String> {
        let prefix = prefix(cluster);
        let (resp, revision) = super::read_prefix(client, &prefix).await?;
        let Some(control) = control.upgrade() else { return Err("server gone".into()) };
        let snapshot = control.ctx.snapshot.load_full();
        let mut seen = HashSet::with_capacity(resp.kvs().len());
        for e in resp.kvs() {
            apply_one(cluster, &snapshot, &prefix, e.key(), e.value());
            seen.insert(e.key().to_vec());
        }
        let mut missing = Vec::new();
        for pool in snapshot.pools.values().filter(|p| p.config.share_stick_tables) {
            for (name, table) in pool.view.live.stick_tables() {
                let Some(share) = table.share_handle() else { continue };
                for (key, backend) in table.live_entries() {
                    if !seen.contains(entry_key(cluster, &pool.config.name, &name, key).as_bytes()) {
                        missing.push(StickEvent { table: share.clone(), key, backend, change: StickChange::Pinned });
                    }
                }
            }
        }
        if !missing.is_empty() {
            tracing::info!(node = %cluster.config.node, entries = missing.len(), "cluster: publishing local stick entries etcd lacks");
        }
        self.publish(cluster, &control, client, missing.into_iter()).await?;
        super::watch_after(client, &prefix, revision).await
    }

    /// Applies what the watch saw: puts stick (deletes are expiries: every instance
    /// expires its copy by itself).
    pub(super) fn apply(&self, cluster: &Cluster, control: &Control, events: &[etcd_client::Event]) {
        let prefix = prefix(cluster);
        let snapshot = control.ctx.snapshot.load();
        for e in events {
            if e.event_type() == EventType::Put
                && let Some(kv) = e.kv()
            {
                apply_one(cluster, &snapshot, &prefix, kv.key(), kv.value());
            }
        }
    }

    /// The lease for an entry of TTL `ttl` written now.
    async fn lease(&mut self, cluster: &Cluster, client: &Client, ttl: Duration) -> Result<i64, String> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let width = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        if let Some((id, granted)) = self.leases.get(&ms)
            && granted.elapsed() < width
        {
            return Ok(*id);
        }
        let secs = i64::try_from((ttl + width).as_secs() + 2).unwrap_or(i64::MAX);
        let granted = Instant::now();
        let resp = client.lease_client().grant(secs, None).await.map_err(|e| format!("lease grant: {e}"))?;
        cluster.stats.leases.inc();
        self.leases.insert(ms, (resp.id(), granted));
        Ok(resp.id())
    }

    /// Writes a batch of events to etcd (up to [`CONCURRENCY`] at once), adopting the
    /// backends of keys another instance pinned first.
    pub(super) async fn publish(
        &mut self,
        cluster: &Cluster,
        control: &Control,
        client: &Client,
        events: impl Iterator<Item = StickEvent>,
    ) -> Result<(), String> {
        let snapshot = control.ctx.snapshot.load_full();
        let mut writes = Vec::new();
        for ev in events {
            let Some(table) = ev.table.table.upgrade() else { continue };
            let ttl = table.ttl();
            if ttl.is_zero() {
                continue;
            }
            let Some(pool) = snapshot.pools.get(&*ev.table.pool) else { continue };
            let Some(address) = pool.view.address_of(ev.backend) else { continue };
            let lease = self.lease(cluster, client, ttl).await?;
            let key = entry_key(cluster, &ev.table.pool, &ev.table.name, ev.key);
            writes.push((table, ev.key, key, address.to_owned(), lease, ev.change));
        }
        let kv = client.kv_client();
        let mut pending = writes.into_iter();
        loop {
            let round: Vec<_> = pending.by_ref().take(CONCURRENCY).collect();
            if round.is_empty() {
                return Ok(());
            }
            let results = futures_util::future::join_all(
                round
                    .iter()
                    .map(|(_, _, key, address, lease, change)| write(kv.clone(), key, address, *lease, *change)),
            )
            .await;
            for ((table, k, _, _, _, _), result) in round.iter().zip(results) {
                match result? {
                    Outcome::Published => cluster.stats.stick_published.inc(),
                    Outcome::Adopt(other) => {
                        table.set_remote(*k, address_key(&other));
                        cluster.stats.stick_adopted.inc();
                    }
                }
            }
        }
    }

    /// Renews the entries holds (tunnels) have kept for half their TTL since they were
    /// last written or learnt ([`crate::state::StickTable::due_holds`]: a scan of the
    /// holds only). The local tables queue nothing for a hold: every request's binding
    /// holds its entry while it is served, and queueing that cost an event per request.
    pub(super) async fn renew_held(
        &mut self,
        cluster: &Cluster,
        control: &Control,
        client: &Client,
    ) -> Result<(), String> {
        let snapshot = control.ctx.snapshot.load_full();
        let mut due = Vec::new();
        for pool in snapshot.pools.values().filter(|p| p.config.share_stick_tables) {
            for (_, table) in pool.view.live.stick_tables() {
                let Some(share) = table.share_handle() else { continue };
                for (key, backend) in table.due_holds() {
                    due.push(StickEvent { table: share.clone(), key, backend, change: StickChange::Held });
                }
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        self.publish(cluster, control, client, due.into_iter()).await
    }
}

/// One write (see the module doc for which by what happened).
async fn write(mut kv: KvClient, key: &str, address: &str, lease: i64, change: StickChange) -> Result<Outcome, String> {
    let put = || TxnOp::put(key, address, Some(PutOptions::new().with_lease(lease)));
    let fail = |e: etcd_client::Error| format!("write {key}: {e}");
    let create = |kv: &mut KvClient| {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([put()])
            .or_else([TxnOp::get(key, None)]);
        let mut kv = kv.clone();
        async move { kv.txn(txn).await }
    };
    let current = |resp: &etcd_client::TxnResponse| {
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|e| e.value().to_vec())),
            _ => None,
        })
    };
    match change {
        StickChange::Repinned => {
            kv.put(key, address, Some(PutOptions::new().with_lease(lease))).await.map_err(fail)?;
            Ok(Outcome::Published)
        }
        StickChange::Pinned => {
            let resp = create(&mut kv).await.map_err(fail)?;
            if resp.succeeded() {
                return Ok(Outcome::Published);
            }
            match current(&resp).flatten() {
                Some(v) if v == address.as_bytes() => {
                    // Pinned the same way elsewhere (or by us before a resync): renew.
                    kv.put(key, address, Some(PutOptions::new().with_lease(lease))).await.map_err(fail)?;
                    Ok(Outcome::Published)
                }
                Some(v) => Ok(Outcome::Adopt(String::from_utf8_lossy(&v).into_owned())),
                // Deleted between the compare and the get: nothing to adopt; try once more.
                None => {
                    let resp = create(&mut kv).await.map_err(fail)?;
                    match current(&resp).flatten() {
                        Some(v) if v != address.as_bytes() => {
                            Ok(Outcome::Adopt(String::from_utf8_lossy(&v).into_owned()))
                        }
                        _ => Ok(Outcome::Published),
                    }
                }
            }
        }
        StickChange::Refresh | StickChange::Held => {
            let txn = Txn::new()
                .when([Compare::value(key, CompareOp::Equal, address)])
                .and_then([put()])
                .or_else([TxnOp::get(key, None)]);
            let resp = kv.txn(txn).await.map_err(fail)?;
            if resp.succeeded() {
                return Ok(Outcome::Published);
            }
            match current(&resp).flatten() {
                Some(v) => Ok(Outcome::Adopt(String::from_utf8_lossy(&v).into_owned())),
                None => {
                    let resp = create(&mut kv).await.map_err(fail)?;
                    match current(&resp).flatten() {
                        Some(v) if v != address.as_bytes() => {
                            Ok(Outcome::Adopt(String::from_utf8_lossy(&v).into_owned()))
                        }
                        _ => Ok(Outcome::Published),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_to_one_segment_and_back() {
        for name in ["web", "a/b", "50%/x", "%2F"] {
            assert_eq!(unescape(&escape(name)), name);
            assert!(!escape(name).contains('/'));
        }
        let key = format!("/weir/stick/{}/{}/{:016x}", escape("a/b"), escape("sess"), 0xdead_beef_u64);
        let (pool, table, k) = parse_key("/weir/stick/", &key).unwrap();
        assert_eq!((&*pool, &*table, k), ("a/b", "sess", 0xdead_beef));
        assert!(parse_key("/weir/stick/", "/weir/stick/web/sess/12").is_none());
        assert!(parse_key("/weir/stick/", "/weir/stick/web/sess/00000000000000zz").is_none());
    }
}
