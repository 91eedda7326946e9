//! Small helpers over the seeded generator.

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore as _;

/// A number in `0..n` (0 if `n` is 0).
pub(crate) fn below(rng: &mut ChaCha20Rng, n: u64) -> u64 {
    if n == 0 { 0 } else { rng.next_u64() % n }
}

/// True with probability `per_mille` / 1000.
pub(crate) fn chance(rng: &mut ChaCha20Rng, per_mille: u64) -> bool {
    below(rng, 1000) < per_mille
}
