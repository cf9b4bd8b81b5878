//! `bounded-load`: consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam,
//! SODA 2018; HAProxy `hash-balance-factor`, Envoy `hash_balance_factor`) on a request key.
//!
//! Keys are placed on the same ketama ring as `consistent-hash` (160 points per unit of
//! weight, derived from the backends' addresses). A request walks the ring clockwise from
//! its key's point and goes to the first backend whose load (open connections plus
//! requests in flight) stays within the bound once it takes the request:
//!
//! `load + 1 ≤ ceil(factor × (total load + 1) × weight / total eligible weight)`
//!
//! which with equal weights is `ceil(factor × (total load + 1) / n)`: no backend is ever
//! given more than `factor` times the mean. Some backend always satisfies it (factor > 1),
//! so the walk ends; each distinct backend's load is read at most once per pick. While
//! loads are under the bound a key stays on its consistent-hash backend; a hot key spills
//! onto the next backends on the ring instead of overloading its own, and returns when the
//! load drops. The ring is rebuilt only when the pool's generation changes.
//!
//! Config (all optional):
//! - `factor` (default `1.25`, must be > 1): how far above the mean a backend may go. Lower
//!   is more even but moves more keys off their home backend; HAProxy and Envoy users
//!   commonly pick 1.25 (HAProxy `hash-balance-factor 125`).
//! - `key` (default `"client-ip"`): what to hash: `"client-ip"`, `"header:NAME"`,
//!   `"cookie:NAME"`, `"path"` (without the query) or `"query:NAME"`.
//! - `fallback` (default `"p2c"`): how a request without the key is placed: `"p2c"`,
//!   `"random"`, `"least-connections"` or `"round-robin"`.
//!
//! Use it when keys should stick to a backend (caches, sessions) but some keys are much
//! hotter than others, or for long-lived connections (WebSockets) that must not pile up.
//! It is not for strict affinity: a key may move while its backend is busy (use
//! `consistent-hash` or an affinity plugin for that). The bound is checked against live
//! counters that other threads update at the same time, so under concurrency it can be
//! passed by the few requests placed in the same instant. The total load counts every
//! member, so connections still open on a draining backend loosen the bound a little. A
//! request without the key goes to the fallback, which does not apply the bound.

use std::cell::RefCell;

use weir_guest::key::HashKey;
use weir_guest::ring::{self, Ring};
use weir_guest::select::{self, Fallback};
use weir_guest::types::{BackendId, PickError, PluginError};
use weir_guest::{PoolCache, pool};

wit_bindgen::generate!({
    world: "balancer-plugin",
    path: "../../wit",
    with: {
        "weir:plugin/types@0.1.0": weir_guest::types,
        "weir:plugin/pool@0.1.0": weir_guest::pool,
        "weir:plugin/request@0.1.0": weir_guest::request,
        "weir:plugin/log@0.1.0": weir_guest::log,
    },
});

/// The plugin's config table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// How far above the mean load a backend may go (> 1).
    factor: f64,
    /// What to hash.
    key: HashKey,
    /// How to place a request without the key.
    fallback: Fallback,
}

impl Default for Config {
    fn default() -> Self {
        Self { factor: 1.25, key: HashKey::default(), fallback: Fallback::default() }
    }
}

impl Config {
    fn parse(json: &str) -> Result<Self, PluginError> {
        let config: Self = weir_guest::parse_config(json)?;
        if !(config.factor.is_finite() && config.factor > 1.0) {
            return Err(PluginError::InvalidConfig(format!(
                "factor: must be a number greater than 1, got {}",
                config.factor
            )));
        }
        Ok(config)
    }
}

/// Most load a backend of `weight` may carry once the pool carries `total_after` (the
/// current total plus the request being placed): `ceil(factor × total_after × weight /
/// total_weight)`.
fn capacity(factor: f64, total_after: u64, weight: u32, total_weight: u64) -> u64 {
    (factor * total_after as f64 * f64::from(weight) / total_weight.max(1) as f64).ceil() as u64
}

#[derive(Default)]
struct State {
    config: Config,
    cache: PoolCache,
    ring: Ring,
    /// `seen[id] == pass` when backend `id` was already checked in the current pick.
    seen: Vec<u32>,
    pass: u32,
}

impl State {
    /// Walks the ring from `key_hash` to the first backend within the bound.
    fn place(&mut self, key_hash: u64) -> Result<BackendId, PickError> {
        let total_weight = self.cache.total_weight();
        // Most picks end at the key's own backend: check it before setting up the walk,
        // so the common case touches no `seen` entry and makes one host call.
        let home = self.ring.get(key_hash).ok_or(PickError::NoBackend)?;
        let (home_load, total) = select::unpack(pool::load_and_total(home));
        let (home_load, total_after, home_weight) =
            (u64::from(home_load), u64::from(total) + 1, self.cache.weight(home));
        if home_load < capacity(self.config.factor, total_after, home_weight, total_weight) {
            return Ok(home);
        }
        self.pass = self.pass.wrapping_add(1);
        if self.pass == 0 {
            self.seen.fill(0);
            self.pass = 1;
        }
        if let Some(seen) = self.seen.get_mut(home as usize) {
            *seen = self.pass;
        }
        let eligible = self.cache.eligible().len();
        if eligible <= 1 {
            return Ok(home);
        }
        let mut checked = 1;
        // The least loaded per unit of weight: only used if live counters moved under us.
        let mut least: Option<(f64, BackendId)> = Some((home_load as f64 / f64::from(home_weight.max(1)), home));
        for id in self.ring.walk(key_hash) {
            let Some(seen) = self.seen.get_mut(id as usize) else { continue };
            if *seen == self.pass {
                continue;
            }
            *seen = self.pass;
            let weight = self.cache.weight(id);
            let load = select::load(id);
            if load < capacity(self.config.factor, total_after, weight, total_weight) {
                return Ok(id);
            }
            let relative = load as f64 / f64::from(weight.max(1));
            if least.is_none_or(|(l, _)| relative < l) {
                least = Some((relative, id));
            }
            checked += 1;
            if checked == eligible {
                break;
            }
        }
        least.map(|(_, id)| id).ok_or(PickError::NoBackend)
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct BoundedLoad;

impl exports::weir::plugin::balancer::Guest for BoundedLoad {
    fn configure(config: String) -> Result<(), PluginError> {
        let config = Config::parse(&config)?;
        STATE.with_borrow_mut(|state| state.config = config);
        Ok(())
    }

    fn pool_changed() {
        STATE.with_borrow_mut(|state| {
            if state.cache.refresh() {
                state.ring = Ring::build(&ring::nodes(&state.cache), Ring::POINTS_PER_WEIGHT);
                state.seen = vec![0; state.cache.members().len()];
                state.pass = 0;
            }
        });
    }

    fn pick() -> Result<BackendId, PickError> {
        STATE.with_borrow_mut(|state| {
            if state.ring.is_empty() {
                return Err(PickError::NoBackend);
            }
            match state.config.key.hash() {
                Some(key_hash) => state.place(key_hash),
                None => state.config.fallback.pick(&state.cache),
            }
        })
    }
}

export!(BoundedLoad);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_the_ceiling_of_factor_times_the_fair_share() {
        // Equal weights: ceil(1.25 × (T + 1) / n).
        assert_eq!(capacity(1.25, 1, 1, 10), 1);
        assert_eq!(capacity(1.25, 8, 1, 10), 1);
        assert_eq!(capacity(1.25, 9, 1, 10), 2);
        assert_eq!(capacity(1.25, 1000, 1, 10), 125);
        assert_eq!(capacity(1.25, 1001, 1, 10), 126);
        // Weighted: a backend of weight 3 of 4 may carry 3/4 of factor × total.
        assert_eq!(capacity(2.0, 10, 3, 4), 15);
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(Config::parse("{}").unwrap().factor, 1.25);
        assert_eq!(
            Config::parse(r#"{"factor": 1.5, "key": "header:X-User"}"#).unwrap().key,
            HashKey::Header("x-user".into())
        );
        for (bad, names) in [
            (r#"{"factor": 0.5}"#, "factor: "),
            (r#"{"factor": 1}"#, "factor: "),
            (r#"{"factor": "x"}"#, "factor: "),
            (r#"{"key": "nope"}"#, "key: "),
            (r#"{"fallback": "nope"}"#, "fallback: "),
            (r#"{"facto": 2}"#, "`facto`"),
            (r#"{} {}"#, "trailing"),
        ] {
            let Err(PluginError::InvalidConfig(m)) = Config::parse(bad) else { panic!("{bad} accepted") };
            assert!(m.starts_with(names) || m.contains(names), "{bad}: {m}");
            assert!(!m.starts_with("key: key:"), "{m}");
        }
    }
}
