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
