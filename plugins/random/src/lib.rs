//! `random`: weighted random. Each eligible backend gets a request with probability
//! weight / total weight, drawn independently per request from a per-instance generator.
//!
//! Config: none (`{}`).
//!
//! Use it as a baseline, or where picks must not depend on any shared state: it reads no
//! load figures and no counter, so it costs one host call (`pool.generation`) plus an
//! O(eligible) walk of the cached weights. Shares are right only on average: over N picks a
//! backend's count varies by about √N, and with long-lived connections the busiest
//! backend drifts well above the mean (use `least-connections` or `p2c` there).

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

struct Random;

impl exports::weir::plugin::balancer::Guest for Random {
    fn configure(config: String) -> Result<(), PluginError> {
        weir_guest::no_config(&config)
    }

    fn pool_changed() {
        POOL.with_borrow_mut(|cache| {
            cache.refresh();
        });
    }

    fn pick() -> Result<BackendId, PickError> {
        POOL.with_borrow_mut(|cache| select::random(cache))
    }
}

export!(Random);
