//! `peak-ewma`: power of two choices on expected latency, as Linkerd and Finagle do it. Two
//! distinct eligible backends are drawn at random (weighted); each costs
//! `latency EWMA × (open connections + requests in flight + 1) / weight`, and the cheaper
//! one gets the request. A backend that answers slowly, or that has work piling up, is
//! avoided at once, with no health check and no threshold to tune.
//!
//! Config:
//! - `default_latency_us` (integer ≥ 1, default: unset): the latency assumed for a backend
//!   that has not answered yet (its EWMA is 0).
//!
//! A backend with no sample must still be tried, or it never gets one. Neither fixed guess
//! is safe by default:
//! - 0 (free) would send it every request until its first answer comes back: a new or
//!   restarted backend would be flooded, and a hanging one would swallow everything.
//! - a high guess (Linkerd's 30 ms) starves it whenever its peers are faster and idle, and
//!   the host's EWMA only moves on answers, never with time (tower's decays), so under
//!   light load it could stay untried for good.
//!
//! So by default an unsampled backend borrows the EWMA of the candidate it is compared
//! with: the pair is decided on load alone, the newcomer gets about its fair share of new
//! work, and its own estimate takes over after its first answer. When neither candidate
//! has a sample, load alone decides. Set `default_latency_us` to use a fixed guess
//! instead (a high one keeps new backends cold until traffic spills onto them).
//!
//! Use it when backends differ in speed (mixed hardware, noisy neighbours, a backend in
//! another zone) or slow down under load: it shifts work away from slow backends within a
//! few requests. Avoid it when latency is dominated by the request rather than the backend
//! (a mix of cheap and very expensive endpoints on one pool), where the EWMA mostly
//! measures which backend drew the expensive requests; use `p2c` there. The host keeps a
//! plain EWMA (new sample weight 1/8) rather than Finagle's peak-sensitive, time-decayed
//! one; the `+ load` factor still reacts at once to a backend whose requests pile up.
//! Cost per pick: two host reads (`pool.load-pair`, `pool.latency-pair`), independent of
//! pool size.

use std::cell::{Cell, RefCell};

use serde::{Deserialize, Deserializer, de::Error as _};
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

/// The plugin's config table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Latency assumed for a backend with no sample yet; `None` borrows the rival's.
    #[serde(default, deserialize_with = "latency_us")]
    default_latency_us: Option<u32>,
}

/// An optional latency of at least 1 µs (`weir_guest::parse_config` names the key).
fn latency_us<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<u32>::deserialize(d)? {
        Some(0) => {
            Err(D::Error::custom("must be at least 1 (omit it to let an untried backend borrow its rival's latency)"))
        }
        v => Ok(v),
    }
}

thread_local! {
    static POOL: RefCell<PoolCache> = const { RefCell::new(PoolCache::new()) };
    static DEFAULT_LATENCY_US: Cell<Option<u32>> = const { Cell::new(None) };
}

struct PeakEwma;

impl exports::weir::plugin::balancer::Guest for PeakEwma {
    fn configure(config: String) -> Result<(), PluginError> {
        let config: Config = match config.trim() {
            "" | "null" => Config::default(),
            json => weir_guest::parse_config(json)?,
        };
        DEFAULT_LATENCY_US.set(config.default_latency_us);
        Ok(())
    }

    fn pool_changed() {
        POOL.with_borrow_mut(|cache| {
            cache.refresh();
        });
    }

    fn pick() -> Result<BackendId, PickError> {
        POOL.with_borrow_mut(|cache| {
            let (a, b) = match select::two_choices(cache)? {
                (a, Some(b)) => (a, b),
                (a, None) => return Ok(a),
            };
            let (load_a, load_b) = select::unpack(pool::load_pair(a, b));
            let (ewma_a, ewma_b) = select::unpack(pool::latency_pair(a, b));
            let (la, lb) = latencies(ewma_a, ewma_b, DEFAULT_LATENCY_US.get());
            let cost = |id: BackendId, latency: u64, load: u32| {
                latency as f64 * (f64::from(load) + 1.0) / f64::from(cache.weight(id).max(1))
            };
            Ok(if cost(b, lb, load_b) < cost(a, la, load_a) { b } else { a })
        })
    }
}

/// The latencies to compare two candidates on, given their EWMAs (0 = no sample yet).
fn latencies(a: u32, b: u32, default: Option<u32>) -> (u64, u64) {
    let (a, b) = match (default, a, b) {
        (Some(d), a, b) => (if a == 0 { d } else { a }, if b == 0 { d } else { b }),
        // Neither has a sample: load alone decides.
        (None, 0, 0) => (1, 1),
        // One has none: it borrows its rival's, so load alone decides.
        (None, 0, b) => (b, b),
        (None, a, 0) => (a, a),
        (None, a, b) => (a, b),
    };
    (u64::from(a), u64::from(b))
}

export!(PeakEwma);
