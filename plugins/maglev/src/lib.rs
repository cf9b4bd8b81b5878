//! `maglev`: Maglev consistent hashing (Eisenbud et al., NSDI 2016; Envoy `MAGLEV`) on a
//! request key.
//!
//! A lookup table of 65537 slots (a prime) is filled from the eligible backends: each one
//! walks its own permutation of the slots, `offset + j × skip (mod 65537)`, with `offset`
//! and `skip` taken from two seeded hashes of its address, and the backends take turns
//! claiming their next free slot until the table is full. Weights are honoured by giving a
//! backend of weight `w` a turn in `w / max weight` of the rounds (as Envoy does), so slots
//! are shared in proportion to weight. Backends take turns in address order, so the table
//! depends only on addresses and weights, not on ids or config order. A request goes to
//! `table[hash(key) mod 65537]`: one hash and one load, O(1).
//!
//! The table is rebuilt (1–2 ms) only when the pool's generation changes. Spread is
//! near-perfect (each of n equal backends owns 65537/n slots ±1). Removing one backend of
//! n moves its own keys plus a few more (10.3% of keys for 1 of 10 in our tests: Maglev's
//! disruption is near-minimal, not exactly 1/n as with a ring or rendezvous).
//!
//! Config (all optional):
//! - `key` (default `"client-ip"`): what to hash: `"client-ip"`, `"header:NAME"`,
//!   `"cookie:NAME"`, `"path"` (without the query) or `"query:NAME"`.
//! - `fallback` (default `"p2c"`): how a request without the key is placed: `"p2c"`,
//!   `"random"`, `"least-connections"` or `"round-robin"`.
//!
//! Use it for key affinity with the most even spread and the cheapest pick, in pools of up
//! to a few thousand backends (with more than 65537 some get no slot). It ignores load: a
//! hot key overloads its backend (see `bounded-load`).

use std::cell::RefCell;

use weir_guest::PoolCache;
use weir_guest::hash::hash_seeded;
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

/// Slots in the lookup table: a prime, as the paper requires, so every `skip` generates a
/// full permutation. 65537 keeps the spread within 0.2% for up to ~100 backends.
const TABLE_SIZE: u32 = 65_537;
/// Seed of the hash giving a backend's first slot.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_2d6f;
/// Seed of the hash giving a backend's stride.
const SKIP_SEED: u64 = 0x6d61_676c_6576_2d73;

/// Fills a Maglev lookup table from `nodes` (weight-0 nodes get no slot). Empty when no node
/// has weight. About 0.4 million probes for 65537 slots (1–2 ms in wasm).
fn build_table(nodes: &[Node<'_>]) -> Vec<BackendId> {
    /// One backend's place in the fill.
    struct Turn {
        id: BackendId,
        /// Every slot of its permutation before this one is taken.
        slot: u32,
        skip: u32,
        weight: u64,
        /// The backend takes a turn in round `r` when `r × weight ≥ target`.
        target: u64,
    }
    let m = u64::from(TABLE_SIZE);
    let mut turns: Vec<(&str, Turn)> = nodes
        .iter()
        .filter(|n| n.weight > 0)
        .map(|n| {
            let a = n.address.as_bytes();
            let slot = (hash_seeded(a, OFFSET_SEED) % m) as u32;
            let skip = (hash_seeded(a, SKIP_SEED) % (m - 1)) as u32 + 1;
            (n.address, Turn { id: n.id, slot, skip, weight: u64::from(n.weight), target: 0 })
        })
        .collect();
    let Some(max_weight) = turns.iter().map(|(_, t)| t.weight).max() else {
        return Vec::new();
    };
    // Turns in address order: the table does not depend on ids or config order.
    turns.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut table = vec![0; TABLE_SIZE as usize];
    // Which slots are taken, one bit each: 8 KiB, so the walks stay in L1 cache.
    let mut taken = vec![0u64; (TABLE_SIZE as usize).div_ceil(64)];
    let mut filled = 0;
    let mut round = 1u64;
    while filled < TABLE_SIZE {
        for (_, t) in &mut turns {
            if filled == TABLE_SIZE {
                break;
            }
            if round * t.weight < t.target {
                continue;
            }
            t.target += max_weight;
            // The permutation visits every slot once and the table is not full: this ends.
            while taken[(t.slot / 64) as usize] & (1 << (t.slot % 64)) != 0 {
                t.slot = next_slot(t.slot, t.skip);
            }
            taken[(t.slot / 64) as usize] |= 1 << (t.slot % 64);
            table[t.slot as usize] = t.id;
            t.slot = next_slot(t.slot, t.skip);
            filled += 1;
        }
        round += 1;
    }
    table
}

/// `(slot + skip) mod TABLE_SIZE`, for `slot, skip < TABLE_SIZE`.
fn next_slot(slot: u32, skip: u32) -> u32 {
    let s = slot + skip;
    if s >= TABLE_SIZE { s - TABLE_SIZE } else { s }
}

#[derive(Default)]
struct State {
    config: KeyConfig,
    cache: PoolCache,
    table: Vec<BackendId>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Maglev;

impl exports::weir::plugin::balancer::Guest for Maglev {
    fn configure(config: String) -> Result<(), PluginError> {
        let config: KeyConfig = weir_guest::parse_config(&config)?;
        STATE.with_borrow_mut(|state| state.config = config);
        Ok(())
    }

    fn pool_changed() {
        STATE.with_borrow_mut(|state| {
            if state.cache.refresh() {
                state.table = build_table(&ring::nodes(&state.cache));
            }
        });
    }

    fn pick() -> Result<BackendId, PickError> {
        STATE.with_borrow_mut(|state| {
            if state.table.is_empty() {
                return Err(PickError::NoBackend);
            }
            state.config.place(&state.cache, |h| {
                state.table.get((h % u64::from(TABLE_SIZE)) as usize).copied().ok_or(PickError::NoBackend)
            })
        })
    }
}

export!(Maglev);

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(n: u32) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:80", i >> 8, i & 0xff)).collect()
    }

    fn nodes(addrs: &[String]) -> Vec<Node<'_>> {
        addrs.iter().enumerate().map(|(i, a)| Node { id: i as BackendId, address: a, weight: 1 }).collect()
    }

    fn counts(table: &[BackendId], n: usize) -> Vec<u32> {
        let mut c = vec![0; n];
        for &id in table {
            c[id as usize] += 1;
        }
        c
    }

    #[test]
    fn equal_backends_share_slots_evenly() {
        let addrs = addresses(10);
        let table = build_table(&nodes(&addrs));
        assert_eq!(table.len(), TABLE_SIZE as usize);
        for c in counts(&table, 10) {
            assert!((6553..=6554).contains(&c), "{c}");
        }
    }

    #[test]
    fn weights_share_slots_proportionally() {
        let addrs = addresses(3);
        let mut ns = nodes(&addrs);
        ns[0].weight = 1;
        ns[1].weight = 2;
        ns[2].weight = 5;
        let c = counts(&build_table(&ns), 3);
        let per_unit = f64::from(TABLE_SIZE) / 8.0;
        for (i, w) in [1.0, 2.0, 5.0].into_iter().enumerate() {
            assert!((f64::from(c[i]) / (w * per_unit) - 1.0).abs() < 0.01, "{c:?}");
        }
        ns[2].weight = 0;
        assert!(!build_table(&ns).contains(&2));
        ns[0].weight = 0;
        ns[1].weight = 0;
        assert!(build_table(&ns).is_empty());
    }

    #[test]
    fn removal_disrupts_little_and_order_does_not_matter() {
        let addrs = addresses(10);
        let all = nodes(&addrs);
        let before = build_table(&all);
        let after = build_table(&all.iter().copied().filter(|n| n.id != 4).collect::<Vec<_>>());
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!((moved as f64) / f64::from(TABLE_SIZE) < 0.15, "{moved}");
        let reversed: Vec<Node<'_>> =
            addrs.iter().rev().enumerate().map(|(i, a)| Node { id: i as BackendId, address: a, weight: 1 }).collect();
        let mirrored = build_table(&reversed);
        assert!(before.iter().zip(&mirrored).all(|(&a, &b)| a == 9 - b));
    }
}
