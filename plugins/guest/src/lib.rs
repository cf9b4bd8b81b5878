//! What several weir plugins need, written once: bindings to the host imports (`pool`,
//! `request`, `log`), config parsing that turns a bad key into
//! `invalid-config` instead of a trap, a per-instance cache of the pool that is
//! refreshed only when the host's generation changes, the pack's one hash function
//! ([`hash`]), hash keys ([`key`]), a fast random source ([`rng`]) and the selection
//! primitives several algorithms share ([`select`]), and what the health plugins share
//! ([`health`]: the per-backend book kept by address, the evaluator trait and its glue).
//!
//! A plugin crate generates the bindings for its own world and maps the shared
//! interfaces onto the ones here:
//!
//! ```ignore
//! wit_bindgen::generate!({
//!     world: "balancer-plugin",
//!     path: "../../wit",
//!     with: {
//!         "weir:plugin/types@0.1.0": weir_guest::types,
//!         "weir:plugin/pool@0.1.0": weir_guest::pool,
//!         "weir:plugin/request@0.1.0": weir_guest::request,
//!         "weir:plugin/log@0.1.0": weir_guest::log,
//!     },
//! });
//! ```

mod bindings {
    wit_bindgen::generate!({
        inline: "
            package weir:guest;
            world imports {
                import weir:plugin/pool@0.1.0;
                import weir:plugin/request@0.1.0;
                import weir:plugin/log@0.1.0;
            }
        ",
        path: "../../wit",
        generate_all,
    });
}

pub use bindings::weir::plugin::{log, pool, request, types};

pub mod hash;
pub mod health;
pub mod key;
pub mod ring;
pub mod rng;
pub mod select;
pub mod stick;
use serde::de::DeserializeOwned;
use types::{Backend, BackendId, PluginError};

/// Parses a plugin's JSON config into `T`; any error becomes `invalid-config` with
/// serde's message, prefixed by the path of the offending key (`factor: invalid type:
/// string "x", expected f64 ...`). Use `#[serde(deny_unknown_fields)]` on `T` so a
/// misspelt key is refused rather than ignored.
pub fn parse_config<T: DeserializeOwned>(json: &str) -> Result<T, PluginError> {
    let mut de = serde_json::Deserializer::from_str(json);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // The top level (`.`) names nothing; a message may already start with its key.
        if path == "." || message.starts_with(&format!("{path}:")) {
            PluginError::InvalidConfig(message)
        } else {
            PluginError::InvalidConfig(format!("{path}: {message}"))
        }
    })?;
    de.end().map_err(|e| PluginError::InvalidConfig(e.to_string()))?;
    Ok(value)
}

/// Accepts only an empty config (`{}` or `null`), for plugins that take no options.
pub fn no_config(json: &str) -> Result<(), PluginError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}
    match json.trim() {
        "" | "null" => Ok(()),
        _ => parse_config::<Empty>(json).map(|_| ()),
    }
}

/// A per-instance copy of the pool, refreshed only when the host's generation changes.
///
/// Reading `pool.generation` is one cheap host call; the lists are copied into the
/// plugin only after a change, never per request.
#[derive(Debug, Default)]
pub struct PoolCache {
    generation: Option<u64>,
    eligible: Vec<BackendId>,
    eligible_weights: Vec<u32>,
    total_weight: u64,
    /// Walker's alias table over `eligible`, for O(1) weighted draws.
    alias: AliasTable,
    members: Vec<Backend>,
    /// `weights[id]`: the members' weights packed by id, so the per-pick weight lookup
    /// reads 4 bytes, not a whole `Backend` record.
    weights: Vec<u32>,
    round_robin_counter: u32,
}

impl PoolCache {
    /// An empty cache; the first [`PoolCache::refresh`] fills it.
    pub const fn new() -> Self {
        Self {
            generation: None,
            eligible: Vec::new(),
            eligible_weights: Vec::new(),
            total_weight: 0,
            alias: AliasTable::new(),
            members: Vec::new(),
            weights: Vec::new(),
            round_robin_counter: 0,
        }
    }

    /// Re-reads the pool if the generation changed; call it from `pool-changed`. Returns
    /// true when it did, so a plugin can rebuild what it derives from the pool (a ring, a
    /// table).
    pub fn refresh(&mut self) -> bool {
        let generation = pool::generation();
        if self.generation == Some(generation) {
            return false;
        }
        self.generation = Some(generation);
        self.round_robin_counter = pool::counter("round-robin");
        self.members = pool::members();
        self.weights = self.members.iter().map(|b| b.weight).collect();
        self.eligible = pool::eligible();
        self.eligible_weights = self.eligible.iter().map(|&id| self.weight(id)).collect();
        self.total_weight = self.eligible_weights.iter().map(|&w| u64::from(w)).sum();
        self.alias = AliasTable::build(&self.eligible_weights);
        true
    }

    /// Draws an index into [`PoolCache::eligible`] with probability weight / total
    /// weight, in O(1) with [`AliasTable`]; `None` when no eligible backend has weight.
    pub fn weighted_index(&self, column: u64, coin: u64) -> Option<usize> {
        self.alias.draw(column, coin)
    }

    /// Handle of the pool's shared `round-robin` counter.
    pub fn round_robin_counter(&self) -> u32 {
        self.round_robin_counter
    }

    /// The generation of the last refresh.
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// The ids that may take new work, ascending, as of the last refresh.
    pub fn eligible(&self) -> &[BackendId] {
        &self.eligible
    }

    /// Weights of [`PoolCache::eligible`], in the same order.
    pub fn eligible_weights(&self) -> &[u32] {
        &self.eligible_weights
    }

    /// Sum of the eligible backends' weights.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Every configured backend (`members()[id].id == id`), as of the last refresh.
    pub fn members(&self) -> &[Backend] {
        &self.members
    }

    /// Weight of backend `id` (0 if unknown).
    pub fn weight(&self, id: BackendId) -> u32 {
        self.weights.get(id as usize).copied().unwrap_or(0)
    }

    /// Address of backend `id` (empty if unknown): its stable identity for hashing.
    pub fn address(&self, id: BackendId) -> &str {
        self.members.get(id as usize).map_or("", |b| b.address.as_str())
    }
}

/// Walker's alias method (Vose's construction) in exact integer arithmetic: a weighted
/// draw among n items is one uniform column and one biased coin, O(1) whatever n and the
/// weights, where a binary search over running sums is O(log n) and, at 10,000 backends,
/// the most expensive part of a `random` or `p2c` pick (measured).
///
/// Column `i` keeps item `i` with probability `keep[i] / total` and otherwise gives
/// `alias[i]`; with weights scaled by n, every column holds exactly `total` of
/// probability mass, so item `i` comes out with probability `weight[i] / total`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AliasTable {
    keep: Vec<u64>,
    alias: Vec<u32>,
    total: u64,
}

impl AliasTable {
    /// An empty table (every draw is `None`).
    pub const fn new() -> Self {
        Self { keep: Vec::new(), alias: Vec::new(), total: 0 }
    }

    /// The table of `weights` (weight 0 is never drawn). O(n).
    pub fn build(weights: &[u32]) -> Self {
        let n = weights.len() as u64;
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total == 0 {
            return Self::new();
        }
        // Mass of each column in units where a full column is `total`.
        let mut mass: Vec<u64> = weights.iter().map(|&w| u64::from(w) * n).collect();
        let mut keep = vec![total; weights.len()];
        let mut alias: Vec<u32> = (0..weights.len() as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..weights.len()).partition(|&i| mass[i] < total);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = mass[s];
            alias[s] = l as u32;
            // `l` gives column `s` what `s` lacks.
            mass[l] -= total - mass[s];
            if mass[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // What is left holds exactly a full column (exact arithmetic), so it keeps itself.
        Self { keep, alias, total }
    }

    /// The item for a uniform `column` draw in `0..n` and a uniform `coin` in
    /// `0..total`, each given as 64 random bits and scaled here
    /// ([`crate::rng::scale`]); `None` for an empty table.
    pub fn draw(&self, column: u64, coin: u64) -> Option<usize> {
        let n = self.keep.len() as u64;
        if n == 0 {
            return None;
        }
        let i = crate::rng::scale(column, n) as usize;
        let coin = crate::rng::scale(coin, self.total);
        if coin < *self.keep.get(i)? { Some(i) } else { self.alias.get(i).map(|&a| a as usize) }
    }
}

thread_local! {
    static POOL: std::cell::RefCell<PoolCache> = const { std::cell::RefCell::new(PoolCache::new()) };
}

/// Refreshes the instance's own [`PoolCache`]; for plugins whose only state is the pool,
/// call it from `pool-changed`. Returns what [`PoolCache::refresh`] returns.
pub fn refresh_pool() -> bool {
    POOL.with_borrow_mut(PoolCache::refresh)
}

/// Reads the instance's own [`PoolCache`] (see [`refresh_pool`]); for `pick`.
pub fn with_pool<R>(f: impl FnOnce(&PoolCache) -> R) -> R {
    POOL.with_borrow(f)
}

/// Writes a log line through the host, formatted like `format!`.
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::write($crate::log::Level::$level, &format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::AliasTable;

    /// The exact probability mass each item gets from `table`, in units of
    /// `total / n` per column: must equal `weight × n`.
    fn mass(table: &AliasTable) -> Vec<u64> {
        let mut mass = vec![0u64; table.keep.len()];
        for (i, (&keep, &alias)) in table.keep.iter().zip(&table.alias).enumerate() {
            mass[i] += keep;
            mass[alias as usize] += table.total - keep;
        }
        mass
    }

    #[test]
    fn every_item_gets_exactly_its_weight() {
        let cases: &[&[u32]] = &[
            &[1],
            &[1, 1, 1],
            &[5, 1, 1],
            &[1, 2, 3, 1, 2, 3, 1],
            &[0, 7, 0, 1],
            &[u32::MAX, 1, u32::MAX / 3],
            &[1000, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        ];
        for weights in cases {
            let table = AliasTable::build(weights);
            let n = weights.len() as u64;
            let want: Vec<u64> = weights.iter().map(|&w| u64::from(w) * n).collect();
            assert_eq!(mass(&table), want, "{weights:?}");
        }
        let many: Vec<u32> = (0..10_000).map(|i| i % 3 + 1).collect();
        let table = AliasTable::build(&many);
        assert_eq!(mass(&table), many.iter().map(|&w| u64::from(w) * 10_000).collect::<Vec<_>>());
    }

    #[test]
    fn draws_follow_the_weights_and_never_pick_weight_zero() {
        let table = AliasTable::build(&[5, 0, 1, 2]);
        let mut counts = [0u32; 4];
        for _ in 0..80_000 {
            let i = table.draw(crate::rng::next_u64(), crate::rng::next_u64()).unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts[1], 0);
        for (i, want) in [(0, 50_000.0), (2, 10_000.0), (3, 20_000.0)] {
            let got = f64::from(counts[i]);
            assert!((got - want).abs() < want * 0.05, "{counts:?}");
        }
        // The extremes of the random bits stay in range.
        for bits in [0, u64::MAX] {
            assert!(table.draw(bits, bits).is_some_and(|i| i < 4));
        }
        assert_eq!(AliasTable::build(&[]).draw(1, 1), None);
        assert_eq!(AliasTable::build(&[0, 0]).draw(1, 1), None);
    }
}
