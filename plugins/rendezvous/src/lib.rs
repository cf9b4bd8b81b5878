//! `rendezvous`: rendezvous or highest-random-weight hashing (Thaler & Ravishankar 1998) on
//! a request key.
//!
//! Every eligible backend gets a score for the key, `combine(hash(key), hash(address))`,
//! and the highest score wins. With weights the score is `-weight / ln(u)`, `u` being that
//! hash mapped into (0, 1) (Schindelhauer & Schomaker's logarithmic method), so a backend
//! wins a share of keys exactly proportional to its weight; when all eligible weights are
//! equal the raw hashes are compared, which is the same order without the logarithm.
//!
//! There is no table: nothing to build but the backends' address hashes (when the pool's
//! generation changes), nothing to tune, and the best possible stability: removing a
//! backend moves exactly the keys it won, each to its second choice, and adding one takes
//! exactly its fair share. The price is inherent: a pick scores every eligible backend,
//! O(n) (one hash combine per backend, plus a logarithm when weights differ), against O(1)
//! for `maglev` and O(log n) for `consistent-hash`.
//!
//! Config (all optional):
//! - `key` (default `"client-ip"`): what to hash: `"client-ip"`, `"header:NAME"`,
//!   `"cookie:NAME"`, `"path"` (without the query) or `"query:NAME"`.
//! - `fallback` (default `"p2c"`): how a request without the key is placed: `"p2c"`,
//!   `"random"`, `"least-connections"` or `"round-robin"`.
//!
//! Use it for key affinity in small and medium pools (up to a few hundred backends), or
//! when weights change often. In large pools prefer `maglev`. It ignores load: a hot key
//! overloads its backend (see `bounded-load`).

use std::cell::RefCell;

use weir_guest::PoolCache;
use weir_guest::hash::{combine, hash};
use weir_guest::key::KeyConfig;
use weir_guest::ring::{self, Node};
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

/// One eligible backend, as scored.
#[derive(Debug, Clone, Copy)]
struct Contender {
    id: BackendId,
    /// Hash of its address.
    identity: u64,
    weight: f64,
}

/// The eligible backends, ready to be scored.
#[derive(Debug, Default)]
struct Contenders {
    all: Vec<Contender>,
    /// All weights are equal: compare raw hashes.
    equal: bool,
}

impl Contenders {
    fn new(nodes: &[Node<'_>]) -> Self {
        let all: Vec<Contender> = nodes
            .iter()
            .filter(|n| n.weight > 0)
            .map(|n| Contender { id: n.id, identity: hash(n.address.as_bytes()), weight: f64::from(n.weight) })
            .collect();
        let equal = all.windows(2).all(|w| w[0].weight == w[1].weight);
        Self { all, equal }
    }

    /// The winner for `key_hash`, or `None` when there is no contender.
    fn winner(&self, key_hash: u64) -> Option<BackendId> {
        if self.equal {
            return self.all.iter().max_by_key(|c| combine(key_hash, c.identity)).map(|c| c.id);
        }
        let score = |c: &Contender| {
            // u in (0, 1): the top 53 bits, centred so that neither 0 nor 1 is reached.
            let u = ((combine(key_hash, c.identity) >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
            -c.weight / u.ln()
        };
        self.all.iter().max_by(|a, b| score(a).total_cmp(&score(b))).map(|c| c.id)
    }
}

#[derive(Default)]
struct State {
    config: KeyConfig,
    cache: PoolCache,
    contenders: Contenders,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Rendezvous;

impl exports::weir::plugin::balancer::Guest for Rendezvous {
    fn configure(config: String) -> Result<(), PluginError> {
        let config: KeyConfig = weir_guest::parse_config(&config)?;
        STATE.with_borrow_mut(|state| state.config = config);
        Ok(())
    }

    fn pool_changed() {
        STATE.with_borrow_mut(|state| {
            if state.cache.refresh() {
                state.contenders = Contenders::new(&ring::nodes(&state.cache));
            }
        });
    }

    fn pick() -> Result<BackendId, PickError> {
        STATE.with_borrow_mut(|state| {
            if state.contenders.all.is_empty() {
                return Err(PickError::NoBackend);
            }
            state.config.place(&state.cache, |h| state.contenders.winner(h).ok_or(PickError::NoBackend))
        })
    }
}

export!(Rendezvous);

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(n: u32) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:80", i >> 8, i & 0xff)).collect()
    }

    fn nodes<'a>(addrs: &'a [String], weights: &[u32]) -> Vec<Node<'a>> {
        addrs
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (a, &weight))| Node { id: i as BackendId, address: a, weight })
            .collect()
    }

    fn shares(c: &Contenders, n: usize, keys: u64) -> Vec<f64> {
        let mut counts = vec![0u32; n];
        for k in 0..keys {
            counts[c.winner(hash(&k.to_le_bytes())).unwrap() as usize] += 1;
        }
        counts.into_iter().map(|x| f64::from(x) / keys as f64).collect()
    }

    #[test]
    fn weighted_shares_follow_weights() {
        let addrs = addresses(3);
        let c = Contenders::new(&nodes(&addrs, &[1, 2, 5]));
        assert!(!c.equal);
        for (share, w) in shares(&c, 3, 80_000).into_iter().zip([1.0, 2.0, 5.0]) {
            assert!((share / (w / 8.0) - 1.0).abs() < 0.05, "{share} for weight {w}");
        }
    }

    #[test]
    fn equal_weights_take_the_fast_path_and_agree_with_the_weighted_formula() {
        let addrs = addresses(8);
        let fast = Contenders::new(&nodes(&addrs, &[3; 8]));
        assert!(fast.equal);
        let slow = Contenders { equal: false, ..Contenders::new(&nodes(&addrs, &[3; 8])) };
        for k in 0..5000u64 {
            let h = hash(&k.to_le_bytes());
            assert_eq!(fast.winner(h), slow.winner(h));
        }
    }

    #[test]
    fn removal_moves_only_the_removed_backends_keys() {
        let addrs = addresses(10);
        let all = nodes(&addrs, &[1; 10]);
        let before = Contenders::new(&all);
        let after = Contenders::new(&all.iter().copied().filter(|n| n.id != 6).collect::<Vec<_>>());
        for k in 0..10_000u64 {
            let h = hash(&k.to_le_bytes());
            let (a, b) = (before.winner(h).unwrap(), after.winner(h).unwrap());
            assert!(a == b || a == 6);
        }
        assert_eq!(Contenders::new(&[]).winner(1), None);
    }
}
