//! Affinity through a host stick table: the request's key (a header, the client
//! address; see [`HashKey`]) is hashed and looked up in a table shared by every instance
//! of the pool, so a client pinned on one worker thread is pinned on all of them. The host
//! keeps an entry alive while a tunnel bound through it is open, and expires it `ttl`
//! after its last use. Used by the `header` and `source-ip` plugins.

use crate::key::HashKey;
use crate::pool;
use crate::types::BackendId;

/// A stick table and the key that indexes it.
#[derive(Debug)]
pub struct Sticky {
    table: u32,
    key: HashKey,
}

impl Sticky {
    /// Resolves the pool's table `name` (created with `ttl_s` seconds of TTL if new);
    /// call it from `configure`.
    pub fn new(name: &str, ttl_s: u64, key: HashKey) -> Self {
        Self { table: pool::stick_table(name, ttl_s.saturating_mul(1000)), key }
    }

    /// The backend the request's key is stuck to, if any (the host checks it is
    /// eligible).
    pub fn pinned(&self) -> Option<BackendId> {
        pool::stick_get(self.table, self.key.hash()?)
    }

    /// Sticks the request's key (if it has one) to `chosen`, refreshing the entry.
    pub fn bind(&self, chosen: BackendId) {
        if let Some(h) = self.key.hash() {
            pool::stick_set(self.table, h, chosen);
        }
    }
}

thread_local! {
    static STICKY: std::cell::OnceCell<Sticky> = const { std::cell::OnceCell::new() };
}

/// Makes `sticky` this instance's table; call it from `configure`. A stick-table plugin
/// then answers `pinned` with [`pinned`] and `bind` with [`bind`].
pub fn install(sticky: Sticky) {
    STICKY.with(|s| {
        let _ = s.set(sticky);
    });
}

/// `affinity.pinned` of a stick-table plugin: the installed table's answer.
pub fn pinned() -> Option<BackendId> {
    STICKY.with(|s| s.get().and_then(Sticky::pinned))
}

/// `affinity.bind` of a stick-table plugin: sticks the request to `chosen`; no header.
pub fn bind(chosen: BackendId) -> Vec<(String, String)> {
    STICKY.with(|s| s.get().map(|s| s.bind(chosen)));
    Vec::new()
}
