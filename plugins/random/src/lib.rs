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

use weir_guest::select;
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

struct Random;

impl exports::weir::plugin::balancer::Guest for Random {
    fn configure(config: String) -> Result<(), PluginError> {
        weir_guest::no_config(&config)
    }

    fn pool_changed() {
        weir_guest::refresh_pool();
    }

    fn pick() -> Result<BackendId, PickError> {
        weir_guest::with_pool(select::random)
    }
}

export!(Random);
