//! `ip-hash`: `hash(client ip) mod n` over the eligible backends (nginx `ip_hash`,
//! HAProxy `balance source` with `hash-type map-based`).
//!
//! Config: none (`{}`). The key is always the client IP address.
//!
//! With weights, the hash is taken modulo the total weight and each eligible backend owns
//! `weight` consecutive residues, in id order; with equal weights this is exactly
//! `hash mod n`. A pick is one hash and a binary search over the eligible backends.
//!
//! It is shipped to show why modulo hashing breaks when the pool changes: every change of
//! `n` (a backend added, removed, drained or marked unhealthy) changes the residue of almost
//! every key, so removing 1 backend of 10 sends about 90% of clients to a different backend
//! (caches go cold, sessions are lost), not the 10% that were on the removed one. Use it
//! only for a fixed pool that never changes; otherwise use `consistent-hash`, `maglev` or
//! `rendezvous`, which move only the removed backend's share, and which can also hash a
//! header, cookie, path or query parameter instead of the client IP (clients behind one
//! NAT all share one IP, and so one backend).

use std::cell::RefCell;

use weir_guest::PoolCache;
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

/// The pool, and the running total of the eligible weights (`ends[i]` = sum of the weights
/// of eligible backends `0..=i`), rebuilt when the generation changes.
#[derive(Default)]
struct State {
    cache: PoolCache,
    ends: Vec<u64>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct IpHash;

impl exports::weir::plugin::balancer::Guest for IpHash {
    fn configure(config: String) -> Result<(), PluginError> {
        weir_guest::no_config(&config)
    }

    fn pool_changed() {
        STATE.with_borrow_mut(|state| {
            if state.cache.refresh() {
                let mut sum = 0u64;
                state.ends = state
                    .cache
                    .eligible_weights()
                    .iter()
                    .map(|&w| {
                        sum += u64::from(w);
                        sum
                    })
                    .collect();
            }
        });
    }

    fn pick() -> Result<BackendId, PickError> {
        STATE.with_borrow_mut(|state| {
            let total = state.ends.last().copied().unwrap_or(0);
            if total == 0 {
                return Err(PickError::NoBackend);
            }
            let residue = weir_guest::key::client_addr_hash() % total;
            let i = state.ends.partition_point(|&end| end <= residue);
            state.cache.eligible().get(i).copied().ok_or(PickError::NoBackend)
        })
    }
}

export!(IpHash);
