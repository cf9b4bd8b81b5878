//! Stick tables: what the `pool.stick-*` imports read and write. A table maps 64-bit keys
//! (hashed by the plugin: a session header, a client address) to a backend, named by a
//! hash of its address so an entry survives snapshot rebuilds and reorderings.
//!
//! An entry expires `ttl` after it was last read or written, but never while a tunnel
//! bound through it is open ([`StickHold`]); then `ttl` after the last one closed, as
//! HAProxy users expect of a stick table under long-lived connections. The table is split
//! into shards, each behind its own mutex held for one hash-map operation, so threads
//! placing different keys rarely meet. Expired entries are swept from a shard when it has
//! doubled since its last sweep, so memory follows the live entries.
//!
//! A table of a pool with `share_stick_tables` also has a [`TableShare`]: the sending end
//! of a bounded queue to the cluster's background task (`crate::cluster`), which
//! replicates entries through etcd. The request path only ever `try_send`s on it (a full
//! queue drops the event, counted; the next resync publishes the entry anyway): a new or
//! changed pin, a use of an entry not published for half its TTL, a tunnel holding one.
//! Entries the cluster learns of come back through [`StickTable::set_remote`], which
//! publishes nothing.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::mpsc;

use crate::core::clock::now_ms;

/// Shards per table (a power of two).
const SHARDS: usize = 16;

/// The identity a stick entry names a backend by: a hash of its configured address,
/// which (unlike its id) does not change when the pool is rebuilt.
pub fn address_key(address: &str) -> u64 {
    let mut h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
    h.write(address.as_bytes());
    h.finish()
}

#[derive(Debug)]
struct Entry {
    backend: u64,
    last_ms: u64,
    /// When this instance last published the entry, or learnt it from the cluster.
    published_ms: u64,
    /// Open tunnels bound through this entry.
    open: u32,
}

/// What happened to a shared stick entry, for the cluster to replicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickChange {
    /// A key pinned for the first time here: created in etcd unless another instance
    /// pinned it first (then that pin is adopted).
    Pinned,
    /// A key pinned before, now to another backend (its backend left, or the plugin
    /// re-picked): overwrites the shared entry.
    Repinned,
    /// An entry in use, due for its TTL to be renewed in etcd.
    Refresh,
    /// A hold (a tunnel) has kept the entry for half its TTL since it was last written:
    /// renewed, as long as the hold lives ([`StickTable::due_holds`]).
    Held,
}

/// One event of a shared stick table.
#[derive(Debug)]
pub struct StickEvent {
    /// The table.
    pub table: Arc<TableShare>,
    /// The plugin's key.
    pub key: u64,
    /// The backend (its address key).
    pub backend: u64,
    /// What happened.
    pub change: StickChange,
}

/// Where a pool's shared stick tables send their events (the cluster task's queue).
#[derive(Debug, Clone)]
pub struct StickSink {
    /// The queue.
    pub tx: mpsc::Sender<StickEvent>,
    /// Events dropped because the queue was full.
    pub dropped: Arc<AtomicU64>,
}

/// A shared stick table's identity in the cluster and its sink.
#[derive(Debug)]
pub struct TableShare {
    /// The pool's name.
    pub pool: Arc<str>,
    /// The table's name (as the plugin named it).
    pub name: Arc<str>,
    /// The table itself, weakly (the cluster reads its TTL and holds).
    pub table: std::sync::Weak<StickTable>,
    sink: StickSink,
}

impl TableShare {
    fn send(self: &Arc<Self>, key: u64, backend: u64, change: StickChange) {
        let event = StickEvent { table: self.clone(), key, backend, change };
        if self.sink.tx.try_send(event).is_err() {
            self.sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<u64, Entry>,
    /// Size after the last sweep.
    swept_len: usize,
    /// The keys of the entries a hold keeps open (for the cluster's renewals: a scan of
    /// the holds, not of every entry).
    held: std::collections::HashSet<u64>,
}

/// One named stick table of a pool.
#[derive(Debug)]
pub struct StickTable {
    ttl_ms: AtomicU64,
    shards: [Mutex<Shard>; SHARDS],
    /// Live tunnels holding an entry of this table (for tests and the admin API).
    pub holds: AtomicU64,
    /// Set when the table is replicated through the cluster.
    share: ArcSwapOption<TableShare>,
}

impl StickTable {
    /// An empty table whose entries expire `ttl` after their last use.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl_ms: AtomicU64::new(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            shards: std::array::from_fn(|_| Mutex::default()),
            holds: AtomicU64::new(0),
            share: ArcSwapOption::empty(),
        }
    }

    /// Replicates this table (named `name` in pool `pool`) through `sink`, or stops
    /// (`None`). Idempotent.
    pub fn share(self: &Arc<Self>, pool: &Arc<str>, name: &str, sink: Option<&StickSink>) {
        match sink {
            None => self.share.store(None),
            Some(sink) => {
                if let Some(s) = &*self.share.load()
                    && s.sink.tx.same_channel(&sink.tx)
                {
                    return;
                }
                let share = TableShare {
                    pool: pool.clone(),
                    name: Arc::from(name),
                    table: Arc::downgrade(self),
                    sink: sink.clone(),
                };
                self.share.store(Some(Arc::new(share)));
            }
        }
    }

    /// The table's identity in the cluster, when it is replicated.
    pub fn share_handle(&self) -> Option<Arc<TableShare>> {
        self.share.load_full()
    }

    /// Whether the table is replicated.
    pub fn is_shared(&self) -> bool {
        self.share.load().is_some()
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The plugin's keys are hashes already; the high bits pick the shard, the map
        // hashes the whole key again.
        self.shards[(key >> 60) as usize % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the TTL (a reloaded plugin config may change it); applies to every entry.
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn live(&self, e: &Entry, now: u64) -> bool {
        e.open > 0 || now.saturating_sub(e.last_ms) < self.ttl_ms.load(Ordering::Relaxed)
    }

    /// The backend (address key) `key` is stuck to, refreshing the entry; `None` if there
    /// is no live entry.
    pub fn get(&self, key: u64) -> Option<u64> {
        let now = now_ms();
        let mut shard = self.shard(key);
        match shard.entries.get_mut(&key) {
            Some(e) if self.live(e, now) => {
                e.last_ms = now;
                let backend = e.backend;
                if now.saturating_sub(e.published_ms) >= self.ttl_ms.load(Ordering::Relaxed) / 2 {
                    e.published_ms = now;
                    drop(shard);
                    if let Some(share) = &*self.share.load() {
                        share.send(key, backend, StickChange::Refresh);
                    }
                }
                Some(backend)
            }
            Some(_) => {
                shard.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Sticks `key` to `backend` (an address key), keeping the count of tunnels open on
    /// the entry.
    pub fn set(&self, key: u64, backend: u64) {
        let now = now_ms();
        let ttl = self.ttl_ms.load(Ordering::Relaxed);
        let mut shard = self.shard(key);
        let change = match shard.entries.get_mut(&key) {
            Some(e) => {
                let change = if e.backend != backend {
                    Some(StickChange::Repinned)
                } else if !(e.open > 0 || now.saturating_sub(e.last_ms) < ttl) {
                    Some(StickChange::Pinned)
                } else if now.saturating_sub(e.published_ms) >= ttl / 2 {
                    Some(StickChange::Refresh)
                } else {
                    None
                };
                e.backend = backend;
                e.last_ms = now;
                change
            }
            None => {
                shard.entries.insert(key, Entry { backend, last_ms: now, published_ms: now, open: 0 });
                Some(StickChange::Pinned)
            }
        };
        if change.is_some()
            && let Some(e) = shard.entries.get_mut(&key)
        {
            e.published_ms = now;
        }
        if shard.entries.len() >= 2 * shard.swept_len.max(32) {
            shard.entries.retain(|_, e| e.open > 0 || now.saturating_sub(e.last_ms) < ttl);
            shard.swept_len = shard.entries.len();
        }
        drop(shard);
        if let Some(change) = change
            && let Some(share) = &*self.share.load()
        {
            share.send(key, backend, change);
        }
    }

    /// Sticks `key` to `backend` as another instance did (learnt from the cluster):
    /// refreshes the entry and publishes nothing.
    pub fn set_remote(&self, key: u64, backend: u64) {
        let now = now_ms();
        let mut shard = self.shard(key);
        let e = shard.entries.entry(key).or_insert(Entry { backend, last_ms: now, published_ms: now, open: 0 });
        e.backend = backend;
        e.last_ms = now;
        e.published_ms = now;
    }

    /// Whether a tunnel holds `key`'s entry.
    pub fn is_held(&self, key: u64) -> bool {
        self.shard(key).entries.get(&key).is_some_and(|e| e.open > 0)
    }

    /// Every live entry, `(key, backend)`: what a resync publishes again.
    pub fn live_entries(&self) -> Vec<(u64, u64)> {
        let now = now_ms();
        let mut out = Vec::new();
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend(s.entries.iter().filter(|(_, e)| self.live(e, now)).map(|(k, e)| (*k, e.backend)));
        }
        out
    }

    /// Keeps `key`'s entry alive until the returned hold is dropped (a tunnel's life).
    /// Every request's binding takes one while it is served, so this queues nothing for
    /// the cluster: a shared table's holds are renewed by [`Self::due_holds`].
    pub fn hold(self: &Arc<Self>, key: u64) -> StickHold {
        let mut shard = self.shard(key);
        if let Some(e) = shard.entries.get_mut(&key) {
            e.open += 1;
            if e.open == 1 {
                shard.held.insert(key);
            }
        }
        drop(shard);
        self.holds.fetch_add(1, Ordering::Relaxed);
        StickHold { table: self.clone(), key }
    }

    /// The entries holds have kept open for half the TTL since they were last written or
    /// learnt, `(key, backend)`, marked written now: what the cluster renews (a WebSocket
    /// open on one instance keeps its entry alive for all). O(held entries).
    pub fn due_holds(&self) -> Vec<(u64, u64)> {
        let now = now_ms();
        let half = self.ttl_ms.load(Ordering::Relaxed) / 2;
        let mut due = Vec::new();
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
            let Shard { entries, held, .. } = &mut *s;
            for key in held.iter() {
                if let Some(e) = entries.get_mut(key)
                    && e.open > 0
                    && now.saturating_sub(e.published_ms) >= half
                {
                    e.published_ms = now;
                    due.push((*key, e.backend));
                }
            }
        }
        due
    }

    /// Live entries (swept or not), for tests and the admin API.
    pub fn len(&self) -> usize {
        let now = now_ms();
        self.shards
            .iter()
            .map(|s| {
                s.lock().unwrap_or_else(PoisonError::into_inner).entries.values().filter(|e| self.live(e, now)).count()
            })
            .sum()
    }

    /// Whether the table has no live entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps one stick entry alive while a tunnel bound through it is open; its drop starts
/// the entry's TTL.
#[derive(Debug)]
pub struct StickHold {
    table: Arc<StickTable>,
    key: u64,
}

impl Drop for StickHold {
    fn drop(&mut self) {
        let now = now_ms();
        let mut shard = self.table.shard(self.key);
        if let Some(e) = shard.entries.get_mut(&self.key) {
            e.open = e.open.saturating_sub(1);
            e.last_ms = now;
            if e.open == 0 {
                shard.held.remove(&self.key);
            }
        }
        drop(shard);
        self.table.holds.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_ttl_but_not_while_held() {
        let t = Arc::new(StickTable::new(Duration::from_millis(40)));
        t.set(1, 10);
        t.set(2, 20);
        let hold = t.hold(2);
        assert_eq!(t.get(1), Some(10));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.get(1), None, "expired");
        assert_eq!(t.get(2), Some(20), "held by an open tunnel");
        drop(hold);
        assert_eq!(t.get(2), Some(20), "the TTL starts when the last tunnel closes");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.get(2), None);
    }

    #[test]
    fn sweeping_keeps_memory_to_live_entries() {
        let t = StickTable::new(Duration::ZERO);
        for k in 0..100_000u64 {
            t.set(k.wrapping_mul(0x9e37_79b9_7f4a_7c15), 1);
        }
        let stored: usize = t.shards.iter().map(|s| s.lock().unwrap().entries.len()).sum();
        assert!(stored < 2 * 32 * SHARDS, "{stored} entries kept with a zero TTL");
    }
}
