//! Token buckets for key-package fetches: per requester, per target
//! installation, and per requester and target pair. Time comes in as a
//! parameter (ms), so tests drive it.

use std::{collections::HashMap, hash::Hash};

/// A token bucket's shape: `burst` tokens at most, refilled at `per_minute`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketLimit {
    /// The most tokens the bucket holds (and starts with).
    pub burst: u32,
    /// Tokens added per minute.
    pub per_minute: u32,
}

/// Tokens are counted in units of 1/60,000 of a token, so that a refill of
/// `per_minute` tokens per minute adds exactly `per_minute` units per
/// millisecond and no rounding accumulates.
const UNITS_PER_TOKEN: u64 = 60_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    units: u64,
    updated_ms: u64,
}

impl Bucket {
    fn refill(&mut self, limit: BucketLimit, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        let capacity = u64::from(limit.burst) * UNITS_PER_TOKEN;
        self.units = self
            .units
            .saturating_add(elapsed.saturating_mul(u64::from(limit.per_minute)))
            .min(capacity);
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    /// Milliseconds until `cost` tokens are available (`u64::MAX`: never).
    fn wait_ms(&self, limit: BucketLimit, cost: u32) -> u64 {
        let needed = u64::from(cost) * UNITS_PER_TOKEN;
        if self.units >= needed {
            return 0;
        }
        if limit.per_minute == 0 || cost > limit.burst {
            return u64::MAX;
        }
        (needed - self.units).div_ceil(u64::from(limit.per_minute))
    }
}

impl Bucket {
    /// Its stored form, for a store shared by several node processes
    /// (`NodeStore::charge_buckets`): units, then the time, big-endian.
    fn encode(&self) -> Vec<u8> {
        let mut bytes = self.units.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.updated_ms.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let units = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let updated_ms = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self { units, updated_ms })
    }

    fn full(limit: BucketLimit, now_ms: u64) -> Self {
        Self {
            units: u64::from(limit.burst) * UNITS_PER_TOKEN,
            updated_ms: now_ms,
        }
    }
}

/// Charge the buckets whose stored states are `states`, each with its
/// `(limit, cost)` from `charges`, all or none: returns 0 and updates the
/// states when every one can be taken now, else the wait in ms (`u64::MAX`:
/// never) and leaves them as they were. A state that is missing (or not
/// one this node wrote) is a full bucket.
pub(crate) fn charge_states(
    states: &mut [Option<Vec<u8>>],
    charges: &[(BucketLimit, u32)],
    now_ms: u64,
) -> u64 {
    let buckets: Vec<Bucket> = states
        .iter()
        .zip(charges)
        .map(|(state, (limit, _))| {
            let mut bucket = state
                .as_deref()
                .and_then(Bucket::decode)
                .unwrap_or_else(|| Bucket::full(*limit, now_ms));
            bucket.refill(*limit, now_ms);
            bucket
        })
        .collect();
    let wait = buckets
        .iter()
        .zip(charges)
        .map(|(bucket, (limit, cost))| bucket.wait_ms(*limit, *cost))
        .max()
        .unwrap_or(0);
    if wait == 0 {
        for ((state, mut bucket), (_, cost)) in states.iter_mut().zip(buckets).zip(charges) {
            bucket.units = bucket
                .units
                .saturating_sub(u64::from(*cost) * UNITS_PER_TOKEN);
            *state = Some(bucket.encode());
        }
    }
    wait
}

/// How long after its last charge a bucket of `limit` is surely full
/// again, in ms; `None` if it never refills.
pub(crate) fn refill_ms(limit: BucketLimit) -> Option<u64> {
    (limit.per_minute > 0)
        .then(|| (u64::from(limit.burst) * UNITS_PER_TOKEN).div_ceil(u64::from(limit.per_minute)))
}

/// Below this many buckets a table is never swept.
const MIN_SWEEP: usize = 1_024;

/// Token buckets by key (an installation, or a requester and target pair).
///
/// A bucket that has refilled to its burst is the same as no bucket, so a
/// table drops such buckets whenever it has grown to twice its size after
/// the last sweep: its memory stays proportional to the keys charged within
/// one refill period, however many keys were ever seen.
#[derive(Debug)]
pub(crate) struct Buckets<K> {
    limit: BucketLimit,
    buckets: HashMap<K, Bucket>,
    sweep_at: usize,
}

impl<K: Copy + Eq + Hash> Buckets<K> {
    pub(crate) fn new(limit: BucketLimit) -> Self {
        Self {
            limit,
            buckets: HashMap::new(),
            sweep_at: MIN_SWEEP,
        }
    }

    /// How many buckets the table holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Milliseconds until every `(key, cost)` of `charges` can be taken (0:
    /// now; `u64::MAX`: never). Takes nothing.
    pub(crate) fn wait_ms(&self, charges: &[(K, u32)], now_ms: u64) -> u64 {
        let limit = self.limit;
        charges
            .iter()
            .map(|(key, cost)| {
                let mut bucket = self.buckets.get(key).copied().unwrap_or(Bucket {
                    units: u64::from(limit.burst) * UNITS_PER_TOKEN,
                    updated_ms: now_ms,
                });
                bucket.refill(limit, now_ms);
                bucket.wait_ms(limit, *cost)
            })
            .max()
            .unwrap_or(0)
    }

    /// Take every `(key, cost)` of `charges`; call after
    /// [`Self::wait_ms`] said 0.
    pub(crate) fn take(&mut self, charges: &[(K, u32)], now_ms: u64) {
        let limit = self.limit;
        for (key, cost) in charges {
            let bucket = self.buckets.entry(*key).or_insert(Bucket {
                units: u64::from(limit.burst) * UNITS_PER_TOKEN,
                updated_ms: now_ms,
            });
            bucket.refill(limit, now_ms);
            bucket.units = bucket
                .units
                .saturating_sub(u64::from(*cost) * UNITS_PER_TOKEN);
        }
        if self.buckets.len() >= self.sweep_at {
            self.sweep(now_ms);
        }
    }

    /// Drop the buckets that have refilled to their burst.
    fn sweep(&mut self, now_ms: u64) {
        let limit = self.limit;
        let capacity = u64::from(limit.burst) * UNITS_PER_TOKEN;
        self.buckets.retain(|_, bucket| {
            bucket.refill(limit, now_ms);
            bucket.units < capacity
        });
        self.sweep_at = (self.buckets.len() * 2).max(MIN_SWEEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_states_charge_like_the_in_memory_buckets() {
        let limit = BucketLimit {
            burst: 2,
            per_minute: 60,
        };
        let mut states = vec![None];
        assert_eq!(charge_states(&mut states, &[(limit, 1)], 0), 0);
        assert_eq!(charge_states(&mut states, &[(limit, 1)], 0), 0);
        let before = states.clone();
        // Empty: one token comes back in a second, and a refused charge
        // leaves the state alone.
        assert_eq!(charge_states(&mut states, &[(limit, 1)], 0), 1_000);
        assert_eq!(states, before);
        assert_eq!(charge_states(&mut states, &[(limit, 1)], 1_000), 0);
        // More than the burst: never.
        assert_eq!(charge_states(&mut [None], &[(limit, 3)], 0), u64::MAX);
        // All or none: a second bucket that cannot pay stops the first.
        let mut two = vec![None, before[0].clone()];
        assert_eq!(charge_states(&mut two, &[(limit, 1), (limit, 1)], 0), 1_000);
        assert_eq!(two[0], None);
        assert_eq!(refill_ms(limit), Some(2_000));
        assert_eq!(
            refill_ms(BucketLimit {
                burst: 1,
                per_minute: 0
            }),
            None
        );
    }

    type Id = u32;

    fn take_one(buckets: &mut Buckets<Id>, id: Id, cost: u32, now_ms: u64) -> Result<(), u64> {
        match buckets.wait_ms(&[(id, cost)], now_ms) {
            0 => {
                buckets.take(&[(id, cost)], now_ms);
                Ok(())
            }
            wait => Err(wait),
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut buckets = Buckets::new(BucketLimit {
            burst: 3,
            per_minute: 60,
        });
        for _ in 0..3 {
            assert_eq!(take_one(&mut buckets, 1, 1, 0), Ok(()));
        }
        assert_eq!(take_one(&mut buckets, 1, 1, 0), Err(1_000));
        assert_eq!(take_one(&mut buckets, 1, 1, 999), Err(1));
        assert_eq!(take_one(&mut buckets, 1, 1, 1_000), Ok(()));
        // Never more than the burst, however long it waits.
        for _ in 0..3 {
            assert_eq!(take_one(&mut buckets, 1, 1, 1_000_000), Ok(()));
        }
        assert!(take_one(&mut buckets, 1, 1, 1_000_000).is_err());
        // More than the burst can never pass.
        assert_eq!(take_one(&mut buckets, 2, 4, 0), Err(u64::MAX));
    }

    #[test]
    fn asking_takes_nothing() {
        let mut buckets = Buckets::new(BucketLimit {
            burst: 2,
            per_minute: 1,
        });
        assert_eq!(buckets.wait_ms(&[(1, 2)], 0), 0);
        assert_eq!(buckets.wait_ms(&[(1, 2)], 0), 0);
        assert_eq!(buckets.len(), 0, "a question makes no bucket");
        buckets.take(&[(1, 2)], 0);
        assert_eq!(buckets.wait_ms(&[(1, 1), (2, 1)], 0), 60_000);
    }

    #[test]
    fn idle_buckets_are_dropped_so_the_table_stays_bounded() {
        let limit = BucketLimit {
            burst: 2,
            per_minute: 60,
        };
        let mut buckets = Buckets::new(limit);
        // A million keys, each charged once, a millisecond apart: a bucket
        // refills in a second, so only the last thousand or so are live.
        for id in 0..1_000_000u32 {
            buckets.take(&[(id, 1)], u64::from(id));
        }
        assert!(
            buckets.len() <= 2 * MIN_SWEEP,
            "{} buckets kept",
            buckets.len()
        );
        // A live bucket was not dropped: its key is still charged.
        let last = 999_999;
        buckets.take(&[(last, 1)], u64::from(last));
        assert!(buckets.wait_ms(&[(last, 1)], u64::from(last)) > 0);
    }
}
