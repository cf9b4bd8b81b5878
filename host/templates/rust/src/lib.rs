//! {{name}}: a weighted round robin over the eligible backends. Each backend gets a share
//! of the requests proportional to its weight; the position is a host counter, shared by
//! every instance of the plugin on every worker thread.
//!
//! The pool is read in `pool-changed` (called before the first `pick` and whenever the
//! pool's membership, weights or health change), never in `pick`.

use std::cell::RefCell;

wit_bindgen::generate!({
    world: "balancer-plugin",
    path: "wit",
});

use exports::weir::plugin::balancer::Guest;
use weir::plugin::pool;
use weir::plugin::types::{BackendId, PickError, PluginError};

/// What `pick` needs, derived from the pool when it changes.
#[derive(Default)]
struct State {
    /// The eligible backends and the running sum of their weights (`ends[i]` is the sum
    /// of the weights of `eligible[..=i]`).
    eligible: Vec<BackendId>,
    ends: Vec<u64>,
    /// Handle of the host counter that holds the position.
    counter: u32,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Plugin;

impl Guest for Plugin {
    fn configure(config: String) -> Result<(), PluginError> {
        // This plugin takes no options yet: anything but an empty table is refused, so a
        // misspelt key is an error, not silently ignored.
        match config.trim() {
            "" | "{}" | "null" => Ok(()),
            other => Err(PluginError::InvalidConfig(format!("unknown keys in {other}: {{name}} takes no config"))),
        }
    }

    fn pool_changed() {
        let members = pool::members();
        let eligible = pool::eligible();
        let mut ends = Vec::with_capacity(eligible.len());
        let mut total = 0u64;
        for &id in &eligible {
            total += u64::from(members.get(id as usize).map_or(0, |b| b.weight));
            ends.push(total);
        }
        let counter = pool::counter("{{name}}");
        STATE.with(|s| *s.borrow_mut() = State { eligible, ends, counter });
    }

    fn pick() -> Result<BackendId, PickError> {
        STATE.with(|s| {
            let s = s.borrow();
            let total = *s.ends.last().ok_or(PickError::NoBackend)?;
            if total == 0 {
                return Err(PickError::NoBackend);
            }
            let at = pool::counter_next(s.counter) % total;
            // The first backend whose running sum passes `at`.
            let i = s.ends.partition_point(|&end| end <= at);
            s.eligible.get(i).copied().ok_or(PickError::Failed)
        })
    }
}

export!(Plugin);
