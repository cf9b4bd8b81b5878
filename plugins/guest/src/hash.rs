//! The one hash function of the pack: XXH3-64 (via `xxhash-rust`). Fast on short keys,
//! well distributed in every bit, and stable across versions and platforms, so a key maps
//! to the same backend on every weir instance and after every restart. Every hashing
//! plugin (ip-hash, consistent-hash, maglev, rendezvous, bounded-load) uses these
//! functions and nothing else.

/// Hash of `bytes`.
pub fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Hash of `bytes` under `seed`: independent hash functions for Maglev's offset/skip
/// and for ketama's points.
pub fn hash_seeded(bytes: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, seed)
}

/// Combines two hashes into one (for rendezvous: hash(key) with hash(backend)).
/// A 64-bit finaliser (splitmix64) over their xor-rotation, so both inputs matter in
/// every output bit.
pub fn combine(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
