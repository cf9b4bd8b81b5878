//! `first`: HAProxy's `first`. Backends are filled in id (config) order: the first eligible
//! backend whose open connections are below its `max_connections` gets the work; the next
//! one is used only once it is full. A backend with `max_connections = 0` (no limit) is never
//! full, so nothing after it gets work while it is eligible. Weights are ignored, as in
//! HAProxy.
//!
//! Config: none (`{}`). The limits are the backends' own `max_connections`.
//!
//! When every eligible backend is full, HAProxy queues the connection until a slot frees
//! up. A balancer cannot queue, so `first` then picks the backend that is least full
//! relative to its limit (`open / max_connections`, ties to the lowest id) and lets the host
//! apply its limit: weir places no work on a full backend, so the request is answered as
//! having no backend (503) until a slot frees up.
//!
//! Use it to run on as few backends as possible, so that the others can be scaled down or
//! powered off when traffic is low, mostly for long-lived connections (WebSocket, TCP,
//! RDP, IMAP). It only makes sense with `max_connections` set on every backend but the
//! last. Do not use it to spread load: below the first limit, one backend takes
//! everything. Cost per pick: one host read per backend up to the first one with room.

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

struct First;

impl exports::weir::plugin::balancer::Guest for First {
    fn configure(config: String) -> Result<(), PluginError> {
        weir_guest::no_config(&config)
    }

    fn pool_changed() {
        weir_guest::refresh_pool();
    }

    fn pick() -> Result<BackendId, PickError> {
        weir_guest::with_pool(first)
    }
}

/// The first eligible backend with room; if all are full, the least full one.
fn first(cache: &PoolCache) -> Result<BackendId, PickError> {
    let members = cache.members();
    // The least full so far, as (open, max, id): compared as open / max without division.
    let mut least: Option<(u64, u64, BackendId)> = None;
    for &id in cache.eligible() {
        let max = members.get(id as usize).map_or(0, |b| b.max_connections);
        let open = pool::active_connections(id);
        if max == 0 || open < max {
            return Ok(id);
        }
        let (open, max) = (u64::from(open), u64::from(max));
        match least {
            Some((lo, lm, _)) if open * lm >= lo * max => {}
            _ => least = Some((open, max, id)),
        }
    }
    least.map(|(_, _, id)| id).ok_or(PickError::NoBackend)
}

export!(First);
