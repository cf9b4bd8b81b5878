//! `round-robin`: a strict global cycle over the eligible backends.
//!
//! The position is a host counter shared by every instance on every thread, so N
//! requests over k eligible backends give each exactly N/k (±1), however many worker
//! threads serve them. Weights are ignored (see `weighted-round-robin`).

use std::cell::RefCell;

use weir_guest::types::{BackendId, PickError, PluginError};
use weir_guest::{PoolCache, select};

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

thread_local! {
    static POOL: RefCell<PoolCache> = const { RefCell::new(PoolCache::new()) };
}

struct RoundRobin;

impl exports::weir::plugin::balancer::Guest for RoundRobin {
    fn configure(config: String) -> Result<(), PluginError> {
        weir_guest::no_config(&config)
    }

    fn pool_changed() {
        POOL.with_borrow_mut(|cache| cache.refresh());
    }

    fn pick() -> Result<BackendId, PickError> {
        POOL.with_borrow(select::round_robin)
    }
}

export!(RoundRobin);
