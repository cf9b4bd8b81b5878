//! `consistent-hash`: a ketama ring on a request key (libketama, nginx `hash ... consistent`,
//! HAProxy `hash-type consistent`, Envoy `RING_HASH`).
//!
//! Each eligible backend owns 160 points per unit of weight on a 64-bit circle, derived
//! from its address (so its points survive reorderings and reloads); a request goes to the
//! owner of the first point at or after the hash of its key (binary search, O(log points)).
//! The ring is rebuilt only when the pool's generation changes. Removing one backend of n
//! moves only the keys it owned (about 1/n); the others keep their backend. The spread is
//! not perfectly even: over 10 equal backends the busiest gets about 1.13× the mean.
//!
//! Config (all optional):
//! - `key` (default `"client-ip"`): what to hash: `"client-ip"`, `"header:NAME"`,
//!   `"cookie:NAME"`, `"path"` (without the query) or `"query:NAME"`.
//! - `fallback` (default `"p2c"`): how a request without the key is placed: `"p2c"`,
//!   `"random"`, `"least-connections"` or `"round-robin"`.
//!
//! Use it to keep a key on one backend (a cache shard, a session, a tenant) while the pool
//! changes. It ignores load, so one hot key overloads its backend: use `bounded-load` for
//! that. `maglev` spreads keys more evenly with O(1) picks; `rendezvous` needs no table.

use std::cell::RefCell;

use weir_guest::PoolCache;
use weir_guest::key::KeyConfig;
use weir_guest::ring::{self, Ring};
use weir_guest::types::{BackendId, PickError, PluginError};

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

#[derive(Default)]
struct State {
    config: KeyConfig,
    cache: PoolCache,
    ring: Ring,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct ConsistentHash;

impl exports::weir::plugin::balancer::Guest for ConsistentHash {
    fn configure(config: String) -> Result<(), PluginError> {
        let config: KeyConfig = weir_guest::parse_config(&config)?;
        STATE.with_borrow_mut(|state| state.config = config);
        Ok(())
    }

    fn pool_changed() {
        STATE.with_borrow_mut(|state| {
            if state.cache.refresh() {
                state.ring = Ring::build(&ring::nodes(&state.cache), Ring::POINTS_PER_WEIGHT);
            }
        });
    }

    fn pick() -> Result<BackendId, PickError> {
        STATE.with_borrow_mut(|state| {
            if state.ring.is_empty() {
                return Err(PickError::NoBackend);
            }
            state.config.place(&state.cache, |h| state.ring.get(h).ok_or(PickError::NoBackend))
        })
    }
}

export!(ConsistentHash);
