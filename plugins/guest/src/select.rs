//! Selection primitives shared by the balancers, so that each algorithm is written once:
//! the plugins named after them call these, and the hashing plugins call them as their
//! fallback when a request has no key.
//!
//! All take the instance's [`PoolCache`] (refreshed by the caller) and read live load
//! from the host (`pool.load`, `pool.load-pair`), which is global across threads.

use crate::types::{BackendId, PickError};
use crate::{PoolCache, pool, rng};

/// Load figure of a backend for least-load algorithms: open connections (WebSocket
/// tunnels and upstream connections streaming a response) plus requests in flight, read
/// in one host call.
pub fn load(id: BackendId) -> u64 {
    pool::load(id)
}

/// Splits what `pool.load-pair` and `pool.latency-pair` answer into the figures of their
/// first and second backend.
pub fn unpack(pair: u64) -> (u32, u32) {
    ((pair >> 32) as u32, pair as u32)
}

/// Weighted random: each eligible backend with probability weight / total weight.
/// O(1): one draw from the alias table built at refresh.
pub fn random(cache: &PoolCache) -> Result<BackendId, PickError> {
    let i = cache.weighted_index(rng::next_u64(), rng::next_u64()).ok_or(PickError::NoBackend)?;
    cache.eligible().get(i).copied().ok_or(PickError::NoBackend)
}

/// Power of two choices: two distinct backends drawn at random (weighted), the one with
/// the lower `load / weight` wins. Near-optimal balance for the price of one host read
/// (`pool.load-pair`).
pub fn p2c(cache: &PoolCache) -> Result<BackendId, PickError> {
    let (a, b) = match two_choices(cache)? {
        (a, Some(b)) => (a, b),
        (a, None) => return Ok(a),
    };
    let (la, lb) = unpack(pool::load_pair(a, b));
    // Compare la / wa with lb / wb without division.
    let (wa, wb) = (u64::from(cache.weight(a).max(1)), u64::from(cache.weight(b).max(1)));
    Ok(if u64::from(lb) * wa < u64::from(la) * wb { b } else { a })
}

/// The two candidates of power of two choices: two distinct eligible backends, each drawn
/// at random with probability weight / total weight (the second is `None` when only one
/// backend is eligible). For balancers that compare the pair themselves (`peak-ewma`);
/// [`p2c`] is this plus a `cost / weight` comparison.
pub fn two_choices(cache: &PoolCache) -> Result<(BackendId, Option<BackendId>), PickError> {
    let eligible = cache.eligible();
    match eligible.len() {
        0 => return Err(PickError::NoBackend),
        1 => return Ok((eligible[0], None)),
        _ => {}
    }
    let a = random(cache)?;
    let mut b = random(cache)?;
    for _ in 0..4 {
        if b != a {
            break;
        }
        b = random(cache)?;
    }
    if b == a {
        // Very uneven weights: take any other backend.
        let i = rng::below(eligible.len() as u64 - 1) as usize;
        b = eligible.iter().copied().filter(|&x| x != a).nth(i).unwrap_or(a);
    }
    Ok((a, (b != a).then_some(b)))
}

/// Least connections, weight-aware (`load / weight`), ties broken at random.
/// O(eligible) per call (every load read in one `pool.loads` call), which is why p2c
/// exists.
pub fn least_connections(cache: &PoolCache) -> Result<BackendId, PickError> {
    use std::cmp::Ordering;
    let loads = pool::loads();
    // (load, weight, id) of the best so far. Loads and weights are u32, so l / w is compared
    // with bl / bw as l × bw against bl × w in u64: exact, and no 128-bit multiply (a
    // helper call on wasm32).
    let mut best: Option<(u64, u64, BackendId)> = None;
    let mut ties = 0u64;
    for (&id, &w) in cache.eligible().iter().zip(cache.eligible_weights()) {
        let (l, w) = (loads.get(id as usize).map_or(0, |&l| u64::from(l)), u64::from(w.max(1)));
        let order = best.map_or(Ordering::Less, |(bl, bw, _)| (l * bw).cmp(&(bl * w)));
        match order {
            Ordering::Greater => {}
            Ordering::Equal => {
                ties += 1;
                if rng::below(ties + 1) == 0 {
                    best = Some((l, w, id));
                }
            }
            Ordering::Less => {
                best = Some((l, w, id));
                ties = 0;
            }
        }
    }
    best.map(|(_, _, id)| id).ok_or(PickError::NoBackend)
}

/// What a hashing balancer does with a request that has no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Power of two choices on load (the default).
    #[default]
    P2c,
    /// Weighted random.
    Random,
    /// Least connections.
    LeastConnections,
    /// Global round robin.
    RoundRobin,
}

impl Fallback {
    /// Places a request without a key.
    pub fn pick(self, cache: &PoolCache) -> Result<BackendId, PickError> {
        match self {
            Fallback::P2c => p2c(cache),
            Fallback::Random => random(cache),
            Fallback::LeastConnections => least_connections(cache),
            Fallback::RoundRobin => round_robin(cache),
        }
    }
}

/// Strict global round robin over the eligible backends, on the pool's `round-robin`
/// host counter (shared by every instance on every thread).
pub fn round_robin(cache: &PoolCache) -> Result<BackendId, PickError> {
    let eligible = cache.eligible();
    if eligible.is_empty() {
        return Err(PickError::NoBackend);
    }
    let n = pool::counter_next(cache.round_robin_counter());
    Ok(eligible[(n % eligible.len() as u64) as usize])
}
