//! What the hashing balancers derive from the pool, written once: the [`Node`] list
//! (eligible backends with their stable identity, the address) and the ketama [`Ring`]
//! that `consistent-hash` and `bounded-load` both walk.
//!
//! Everything here is pure (no host calls), so it is built from a [`PoolCache`] only when
//! [`PoolCache::refresh`] reports a new generation, and it is unit-tested natively.
//!
//! A backend is placed by the hash of its *address*, never by its id: ids are positions in
//! the config and shift when a backend is added or removed, while the address survives
//! reorderings and reloads, so each backend keeps its points (and its keys) across them.

use crate::PoolCache;
use crate::hash::hash_seeded;
use crate::types::BackendId;

/// One eligible backend as the hashing structures see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node<'a> {
    /// Its id in the current generation (what `pick` returns).
    pub id: BackendId,
    /// Its address: the stable identity that is hashed.
    pub address: &'a str,
    /// Its weight (> 0 for an eligible backend).
    pub weight: u32,
}

/// The eligible backends of `cache`, in id order.
pub fn nodes(cache: &PoolCache) -> Vec<Node<'_>> {
    cache
        .eligible()
        .iter()
        .zip(cache.eligible_weights())
        .map(|(&id, &weight)| Node { id, address: cache.address(id), weight })
        .collect()
}

/// A ketama ring (Karger et al. 1997, as in libketama and nginx `hash ... consistent`):
/// each backend owns `points_per_weight × weight` pseudo-random points on a 64-bit circle,
/// point `j` being `hash_seeded(address, j)`, and a key belongs to the owner of the first
/// point at or after the key's hash, wrapping around.
///
/// Removing a backend moves only the keys that landed on its points (1/n of them);
/// changing a backend's weight adds or removes only its own points.
///
/// A lookup is memory-bound at large rings (131,072 points is 2 MiB), so it is laid out to
/// touch few cache lines: each point sits with its owner (one line gives both), and a
/// bucket index over the top bits of the circle (about one bucket per eight points, at
/// most 16,384 buckets: 64 KiB, which stays in cache) narrows the search to one bucket's
/// few adjacent points, instead of a binary search's ~17 scattered reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    /// The points, ascending by position.
    points: Vec<Point>,
    /// `buckets[b]` is the index of the first point whose top `bits` bits are `>= b`, for
    /// `b` in `0..=2^bits` (the last entry is `points.len()`).
    buckets: Vec<u32>,
    /// How many top bits of a hash select its bucket (0 for an empty ring).
    bits: u32,
}

/// One point of the ring and the backend that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    position: u64,
    owner: BackendId,
}

impl Ring {
    /// Points per unit of weight, as in libketama and nginx (40 MD5 digests × 4): enough
    /// for max/mean ≈ 1.1 over 10 equal backends.
    pub const POINTS_PER_WEIGHT: u32 = 160;

    /// Most points a ring holds (16 bytes each, so 2 MiB, about 10 ms to build). When
    /// `points_per_weight × total weight` is larger, every backend's count is scaled down
    /// proportionally (each keeps at least one point).
    pub const MAX_POINTS: u64 = 1 << 17;

    /// An empty ring, owning no points.
    pub const fn new() -> Self {
        Self { points: Vec::new(), buckets: Vec::new(), bits: 0 }
    }

    /// Builds the ring of `nodes` with `points_per_weight` points per unit of weight, at
    /// most about [`Ring::MAX_POINTS`] in all. Nodes of weight 0 get no point.
    pub fn build(nodes: &[Node<'_>], points_per_weight: u32) -> Self {
        let total: u64 = nodes.iter().map(|n| u64::from(n.weight) * u64::from(points_per_weight)).sum();
        let count = |n: &Node<'_>| -> u64 {
            let wanted = u64::from(n.weight) * u64::from(points_per_weight);
            if total <= Self::MAX_POINTS || wanted == 0 {
                wanted
            } else {
                // u128: wanted × MAX_POINTS may pass u64 for absurd weights.
                ((u128::from(wanted) * u128::from(Self::MAX_POINTS) / u128::from(total)) as u64).max(1)
            }
        };
        let mut pairs: Vec<(u64, BackendId)> = Vec::with_capacity(total.min(Self::MAX_POINTS) as usize);
        for n in nodes {
            let key = n.address.as_bytes();
            pairs.extend((0..count(n)).map(|j| (hash_seeded(key, j), n.id)));
        }
        // Ties (two equal 64-bit points) are vanishingly rare; breaking them by address keeps
        // the ring independent of id order even then.
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| address_of(nodes, a.1).cmp(address_of(nodes, b.1))));
        let points: Vec<Point> = pairs.into_iter().map(|(position, owner)| Point { position, owner }).collect();
        let (buckets, bits) = bucket_index(&points);
        Self { points, buckets, bits }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring has no point (no eligible backend).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Index of the point a key hash lands on: the first at or after it, wrapping to 0.
    /// O(log points). Meaningless on an empty ring (returns 0).
    pub fn position(&self, key_hash: u64) -> usize {
        let i = match self.bucket_bounds(key_hash) {
            Some((lo, hi)) => lo + self.points[lo..hi].partition_point(|p| p.position < key_hash),
            None => self.points.partition_point(|p| p.position < key_hash),
        };
        if i == self.points.len() { 0 } else { i }
    }

    /// The range of point indices that holds the first point at or after `key_hash`, or
    /// the end of the ring (`lo..hi`, searched by [`Ring::position`]).
    fn bucket_bounds(&self, key_hash: u64) -> Option<(usize, usize)> {
        if self.bits == 0 {
            return None;
        }
        let b = (key_hash >> (64 - self.bits)) as usize;
        let lo = *self.buckets.get(b)? as usize;
        let hi = *self.buckets.get(b + 1)? as usize;
        // A point at or after the key in a later bucket is the first of that bucket,
        // so `hi` (the next bucket's first point) is where the search ends.
        (lo <= hi && hi <= self.points.len()).then_some((lo, hi))
    }

    /// The backend that owns `key_hash`, or `None` on an empty ring.
    pub fn get(&self, key_hash: u64) -> Option<BackendId> {
        self.points.get(self.position(key_hash)).map(|p| p.owner)
    }

    /// The owners of every point once around the ring, clockwise from where `key_hash`
    /// lands (so a backend appears as often as it has points). For bounded loads: the
    /// first owner that may take more work gets the key.
    pub fn walk(&self, key_hash: u64) -> impl Iterator<Item = BackendId> + '_ {
        let start = self.position(key_hash);
        self.points[start..].iter().chain(&self.points[..start]).map(|p| p.owner)
    }
}

/// The bucket index of sorted `points`: about one bucket per eight points (at most 2^14
/// buckets), each entry the index of the bucket's first point. Returns it and the number
/// of top bits that select a bucket (0, and no index, for an empty ring).
fn bucket_index(points: &[Point]) -> (Vec<u32>, u32) {
    if points.is_empty() {
        return (Vec::new(), 0);
    }
    let bits = (usize::BITS - (points.len() / 8).max(1).leading_zeros()).min(14);
    let count = 1usize << bits;
    let mut buckets = Vec::with_capacity(count + 1);
    let mut i = 0usize;
    for b in 0..count {
        while i < points.len() && ((points[i].position >> (64 - bits)) as usize) < b {
            i += 1;
        }
        buckets.push(i as u32);
    }
    buckets.push(points.len() as u32);
    (buckets, bits)
}

/// Address of `id` among `nodes` (empty if absent).
fn address_of<'a>(nodes: &[Node<'a>], id: BackendId) -> &'a str {
    nodes.iter().find(|n| n.id == id).map_or("", |n| n.address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash;

    fn addresses(n: u32) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:80", i >> 8, i & 0xff)).collect()
    }

    fn equal_nodes(addrs: &[String]) -> Vec<Node<'_>> {
        addrs.iter().enumerate().map(|(i, a)| Node { id: i as BackendId, address: a, weight: 1 }).collect()
    }

    fn key(k: u64) -> u64 {
        hash(k.to_string().as_bytes())
    }

    #[test]
    fn balance_of_ten_equal_backends() {
        let addrs = addresses(10);
        let ring = Ring::build(&equal_nodes(&addrs), Ring::POINTS_PER_WEIGHT);
        assert_eq!(ring.len(), 1600);
        let mut counts = [0u32; 10];
        for k in 0..100_000 {
            counts[ring.get(key(k)).unwrap() as usize] += 1;
        }
        let max = *counts.iter().max().unwrap();
        assert!(f64::from(max) / 10_000.0 <= 1.2, "{counts:?}");
    }

    #[test]
    fn same_address_same_points_whatever_the_id() {
        let addrs = addresses(5);
        let forward = Ring::build(&equal_nodes(&addrs), 40);
        let reversed: Vec<Node<'_>> =
            addrs.iter().rev().enumerate().map(|(i, a)| Node { id: i as BackendId, address: a, weight: 1 }).collect();
        let backward = Ring::build(&reversed, 40);
        for k in 0..1000 {
            let a = forward.get(key(k)).unwrap();
            let b = backward.get(key(k)).unwrap();
            assert_eq!(addrs[a as usize], addrs[4 - b as usize]);
        }
    }

    #[test]
    fn removal_moves_only_the_removed_backends_keys() {
        let addrs = addresses(10);
        let all = equal_nodes(&addrs);
        let before = Ring::build(&all, Ring::POINTS_PER_WEIGHT);
        let without: Vec<Node<'_>> = all.iter().copied().filter(|n| n.id != 3).collect();
        let after = Ring::build(&without, Ring::POINTS_PER_WEIGHT);
        for k in 0..10_000 {
            let (a, b) = (before.get(key(k)).unwrap(), after.get(key(k)).unwrap());
            assert!(a == b || a == 3, "key {k} moved from {a} to {b}");
        }
    }

    #[test]
    fn weights_scale_points_and_cap_holds() {
        let addrs = addresses(3);
        let mut nodes = equal_nodes(&addrs);
        nodes[1].weight = 3;
        nodes[2].weight = 0;
        let ring = Ring::build(&nodes, 10);
        assert_eq!(ring.len(), 40);
        assert_eq!(ring.points.iter().filter(|p| p.owner == 1).count(), 30);
        nodes[0].weight = u32::MAX;
        nodes[1].weight = u32::MAX / 2;
        let big = Ring::build(&nodes, Ring::POINTS_PER_WEIGHT);
        assert!(big.len() as u64 <= Ring::MAX_POINTS && big.len() > 1000);
        assert!(big.points.iter().any(|p| p.owner == 1));
    }

    #[test]
    fn the_bucket_index_finds_what_a_full_search_finds() {
        for n in [1, 2, 3, 10, 100, 1000] {
            let addrs = addresses(n);
            let ring = Ring::build(&equal_nodes(&addrs), Ring::POINTS_PER_WEIGHT);
            assert!(ring.bits > 0 && ring.buckets.len() == (1 << ring.bits) + 1);
            let full = |h: u64| {
                let i = ring.points.partition_point(|p| p.position < h);
                if i == ring.points.len() { 0 } else { i }
            };
            let mut probes: Vec<u64> = (0..20_000).map(key).collect();
            // The edges: each point itself, one either side, and the ends of the circle.
            for p in ring.points.iter().take(500).map(|p| p.position) {
                probes.extend([p, p.wrapping_sub(1), p.wrapping_add(1)]);
            }
            probes.extend([0, 1, u64::MAX, u64::MAX - 1, 1 << 63]);
            for h in probes {
                assert_eq!(ring.position(h), full(h), "n={n} h={h:#x}");
            }
        }
    }

    #[test]
    fn walk_visits_every_point_once_from_the_key() {
        let addrs = addresses(4);
        let ring = Ring::build(&equal_nodes(&addrs), 8);
        let h = key(7);
        let walked: Vec<BackendId> = ring.walk(h).collect();
        assert_eq!(walked.len(), 32);
        assert_eq!(walked[0], ring.get(h).unwrap());
        assert_eq!(ring.walk(u64::MAX).next(), ring.get(0));
        assert!(Ring::new().walk(1).next().is_none());
        assert_eq!(Ring::new().get(1), None);
    }
}
