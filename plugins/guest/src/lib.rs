//! What several weir plugins need, written once: bindings to the host imports (`pool`,
//! `request`, `log`), config parsing that turns a bad key into
//! `invalid-config` instead of a trap, a per-instance cache of the pool that is
//! refreshed only when the host's generation changes, the pack's one hash function
//! ([`hash`]), hash keys ([`key`]), a fast random source ([`rng`]) and the selection
//! primitives several algorithms share ([`select`]).
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
    /// `cumulative[i]` = sum of `eligible_weights[..=i]`, for O(log n) weighted draws.
    cumulative: Vec<u64>,
    total_weight: u64,
    members: Vec<Backend>,
    round_robin_counter: u32,
}

impl PoolCache {
    /// An empty cache; the first [`PoolCache::refresh`] fills it.
    pub const fn new() -> Self {
        Self {
            generation: None,
            eligible: Vec::new(),
            eligible_weights: Vec::new(),
            cumulative: Vec::new(),
            total_weight: 0,
            members: Vec::new(),
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
        self.eligible = pool::eligible();
        self.eligible_weights = self.eligible.iter().map(|&id| self.weight(id)).collect();
        let mut sum = 0u64;
        self.cumulative = self
            .eligible_weights
            .iter()
            .map(|&w| {
                sum += u64::from(w);
                sum
            })
            .collect();
        self.total_weight = sum;
        true
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

    /// Running sums of [`PoolCache::eligible_weights`]: `cumulative()[i]` is the total
    /// weight of the first `i + 1` eligible backends.
    pub fn cumulative_weights(&self) -> &[u64] {
        &self.cumulative
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
        self.members.get(id as usize).map_or(0, |b| b.weight)
    }

    /// Address of backend `id` (empty if unknown): its stable identity for hashing.
    pub fn address(&self, id: BackendId) -> &str {
        self.members.get(id as usize).map_or("", |b| b.address.as_str())
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
