//! `p2c` (also served as `least-request`): power of two choices. Two distinct eligible
//! backends are drawn at random (weighted), and the one with the lower
//! `(open connections + requests in flight) / weight` gets the request.
//!
//! Config: none (`{}`).
//!
//! Load is read live from the host, so it is global across threads. Two random candidates
//! are enough to keep the busiest backend close to the mean (Mitzenmacher: the maximum
//! excess drops from O(log n / log log n) for random to O(log log n)), at a constant cost of
//! one host read (both loads) per pick however large the pool. Use it as the default for request
//! traffic and for long-lived connections in large pools. It never piles onto the single
//! least-loaded backend the way `least-connections` can when several proxies share a pool
//! and all see the same minimum. It ignores latency: use `peak-ewma` when backends differ
//! in speed.

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

struct P2c;

impl exports::weir::plugin::balancer::Guest for P2c {
    fn configure(config: String) -> Result<(), PluginError> {
        weir_guest::no_config(&config)
    }

    fn pool_changed() {
        weir_guest::refresh_pool();
    }

    fn pick() -> Result<BackendId, PickError> {
        weir_guest::with_pool(select::p2c)
    }
}

export!(P2c);
