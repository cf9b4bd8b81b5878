//! `round-robin`: a strict global cycle over the eligible backends.
//!
//! The position is a host counter shared by every instance on every thread, so N
//! requests over k eligible backends give each exactly N/k (±1), however many worker
//! threads serve them. Weights are ignored (see `weighted-round-robin`).

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

struct RoundRobin;

impl exports::weir::plugin::balancer::Guest for RoundRobin {
    fn configure(config: String) -> Result<(), PluginError> {
        weir_guest::no_config(&config)
    }

    fn pool_changed() {
        weir_guest::refresh_pool();
    }

    fn pick() -> Result<BackendId, PickError> {
        weir_guest::with_pool(select::round_robin)
    }
}

export!(RoundRobin);
