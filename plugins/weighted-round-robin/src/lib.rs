//! `weighted-round-robin`: smooth weighted round robin, as nginx does it. Over every cycle of
//! `sum(weights)` picks each eligible backend gets exactly its weight, and its turns are
//! spread through the cycle instead of coming in a burst: weights 5, 1, 1 give
//! `a a b a c a a`, not `a a a a a b c`.
//!
//! Config: none (`{}`). Weights are the backends' own `weight`.
//!
//! The cycle is computed once per pool generation (when membership, weights or health
//! change), with nginx's algorithm: every backend's current weight grows by its weight, the
//! largest (first in id order on ties) is chosen and shrinks by the total. Weights are
//! divided by their greatest common divisor first, so 300, 100, 100 is the cycle of 3, 1, 1.
//! A pick indexes the cycle with the host counter `weighted-round-robin`, shared by every
//! instance on every thread, so the sequence is global: N concurrent workers together
//! produce exactly one smooth cycle, not N interleaved ones. A pick costs two host calls
//! and no allocation.
//!
//! Bounds. The cycle is at most 65,536 entries (plus one per backend; 256 KiB per instance)
//! and its build at most about 2²⁴ steps (cycle length × eligible backends), measured at
//! up to ~14 ms: within the long deadline of the first call after a generation change.
//! Weights whose reduced sum is larger (say 100000, 99999, 1) are scaled down in
//! proportion to fit, each keeping at least 1; a backend's share is then off by at most
//! about (backends + 1) / cycle length (under 0.01% for three backends). All-equal weights
//! give the plain id-order cycle without a build. Past about 2,900 eligible backends with
//! unequal weights no bounded smooth cycle exists: it falls back to weighted random
//! (shares right on average, not per cycle) and logs a warning at each rebuild.
//!
//! Use it when backends have different capacities and requests cost about the same. It
//! does not look at load: for long-lived connections or requests of very uneven cost use
//! `least-connections` or `p2c`, which are weight-aware too.

use std::cell::RefCell;

use weir_guest::types::{BackendId, PickError, PluginError};
use weir_guest::{PoolCache, pool, select};

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

/// The host counter that positions every instance in the cycle.
const COUNTER: &str = "weighted-round-robin";
/// Longest cycle kept, in picks.
const MAX_CYCLE: u64 = 1 << 16;
/// Most build steps (cycle length × eligible backends) a cycle may take, up to a factor 2.
const BUILD_BUDGET: u64 = 1 << 23;

/// What a pick indexes, derived from the pool once per generation.
#[derive(Debug, Default)]
enum Plan {
    /// Nothing is eligible.
    #[default]
    Empty,
    /// One smooth cycle of backend ids.
    Cycle(Vec<BackendId>),
    /// The pool is too large for a bounded cycle: weighted random.
    Random,
}

thread_local! {
    static POOL: RefCell<PoolCache> = const { RefCell::new(PoolCache::new()) };
    static PLAN: RefCell<Plan> = const { RefCell::new(Plan::Empty) };
    /// Handle of the shared cycle position, resolved in `pool_changed`.
    static POSITION: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

struct WeightedRoundRobin;

impl exports::weir::plugin::balancer::Guest for WeightedRoundRobin {
    fn configure(config: String) -> Result<(), PluginError> {
        weir_guest::no_config(&config)
    }

    fn pool_changed() {
        POOL.with_borrow_mut(|cache| {
            if cache.refresh() {
                PLAN.with_borrow_mut(|plan| rebuild(plan, cache.eligible(), cache.eligible_weights()));
                POSITION.set(pool::counter(COUNTER));
            }
        });
    }

    fn pick() -> Result<BackendId, PickError> {
        POOL.with_borrow(|cache| {
            PLAN.with_borrow(|plan| match plan {
                Plan::Empty => Err(PickError::NoBackend),
                Plan::Cycle(cycle) => {
                    let n = pool::counter_next(POSITION.get());
                    Ok(cycle[(n % cycle.len() as u64) as usize])
                }
                Plan::Random => select::random(cache),
            })
        })
    }
}

/// Replaces `plan` with the one for `eligible` with `weights`, reusing its allocation.
fn rebuild(plan: &mut Plan, eligible: &[BackendId], weights: &[u32]) {
    let mut cycle = match std::mem::take(plan) {
        Plan::Cycle(mut v) => {
            v.clear();
            v
        }
        _ => Vec::new(),
    };
    if weights.iter().all(|&w| w == 0) {
        *plan = Plan::Empty;
        return;
    }
    *plan = match cycle_weights(weights) {
        Some(w) if w.iter().all(|&x| x == 1) => {
            cycle.extend_from_slice(eligible);
            Plan::Cycle(cycle)
        }
        Some(w) => {
            smooth_cycle(eligible, &w, &mut cycle);
            Plan::Cycle(cycle)
        }
        None => {
            weir_guest::log!(
                Warn,
                "{} eligible backends with unequal weights: too many for a bounded smooth cycle, using weighted random",
                eligible.len()
            );
            Plan::Random
        }
    };
}

/// The weights one cycle is built from: divided by their gcd and, if the cycle would be too
/// long or too slow to build, scaled down in proportion (each keeping at least 1). `None`
/// when no bounded cycle exists (thousands of backends with unequal weights).
fn cycle_weights(weights: &[u32]) -> Option<Vec<u64>> {
    let n = weights.len() as u64;
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x)).collect();
    reduce(&mut w);
    let total: u64 = w.iter().sum();
    if w.iter().all(|&x| x == 1) || n == 0 {
        return Some(w);
    }
    let cap = MAX_CYCLE.min(BUILD_BUDGET / n).max(n);
    if total > cap {
        for x in &mut w {
            // x ≤ 2³², cap ≤ 2¹⁶: no overflow.
            *x = (*x * cap / total).max(1);
        }
        reduce(&mut w);
    }
    let total: u64 = w.iter().sum();
    (total.saturating_mul(n) <= 2 * BUILD_BUDGET).then_some(w)
}

/// Divides every weight by their greatest common divisor.
fn reduce(w: &mut [u64]) {
    let g = w.iter().fold(0, |a, &b| gcd(a, b));
    if g > 1 {
        for x in w {
            *x /= g;
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Appends nginx's smooth weighted round robin over one cycle (`sum(weights)` picks) to
/// `out`: each step, every backend's current weight grows by its weight; the largest (the
/// first on ties) is chosen and its current weight shrinks by the total.
fn smooth_cycle(ids: &[BackendId], weights: &[u64], out: &mut Vec<BackendId>) {
    let total: u64 = weights.iter().sum();
    out.reserve(total as usize);
    // |current| stays below the total (≤ 2¹⁷ here), so i64 is plenty.
    let mut current = vec![0i64; ids.len()];
    let total = total as i64;
    for _ in 0..total {
        // Largest current weight after the increment, first on ties.
        let mut best = (0, i64::MIN);
        for (i, (c, &w)) in current.iter_mut().zip(weights).enumerate() {
            *c += w as i64;
            if *c > best.1 {
                best = (i, *c);
            }
        }
        let best = best.0;
        current[best] -= total;
        out.push(ids[best]);
    }
}

export!(WeightedRoundRobin);
