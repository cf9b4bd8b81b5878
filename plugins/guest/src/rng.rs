//! A small, fast per-instance random generator (splitmix64), seeded once from the host's
//! secure random source (WASI `random`, reached through std's `RandomState`). Used for
//! tie-breaks and sampling, where speed matters and cryptographic strength does not.
//!
//! Only 64-bit multiplies: wasm32 has no 64×64→128 multiply, so every `u128` product
//! is a call to a compiler helper, and a weighted draw used to make four of them.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    /// 0 until the first draw seeds it (a const initialiser needs no lazy-init check).
    static STATE: Cell<u64> = const { Cell::new(0) };
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish() | 1
}

/// The next 64 random bits.
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = seed();
        }
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A uniform number in `0..n` (`n > 0`), without modulo bias worth measuring
/// (Lemire's multiply-shift).
pub fn below(n: u64) -> u64 {
    scale(next_u64(), n)
}

/// Maps 64 uniform random bits onto `0..n` (`n > 0`) by multiply-shift. For `n` up to
/// 2^32, the usual case, from the top 32 bits with one 64-bit multiply (bias under
/// n / 2^32); larger `n` takes the 128-bit product.
pub fn scale(bits: u64, n: u64) -> u64 {
    if n <= 1 << 32 { ((bits >> 32) * n) >> 32 } else { ((u128::from(bits) * u128::from(n)) >> 64) as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_stays_in_range_and_covers_it() {
        for n in [1u64, 2, 3, 10, 1 << 32, (1 << 32) + 1, u64::MAX] {
            assert_eq!(scale(0, n), 0);
            assert_eq!(scale(u64::MAX, n), n - 1, "n={n}");
        }
        let mut seen = [0u32; 7];
        for _ in 0..70_000 {
            seen[below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (9_000..11_000).contains(&c)), "{seen:?}");
    }
}
