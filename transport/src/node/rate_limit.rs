//! Token buckets for key-package fetches, per requester and per target
//! installation. Time comes in as a parameter (ms), so tests drive it.

use std::collections::HashMap;

use kith_engine::identity::InstallationId;

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

/// Buckets keyed by installation.
#[derive(Debug)]
pub(crate) struct Buckets {
    limit: BucketLimit,
    buckets: HashMap<InstallationId, Bucket>,
}

impl Buckets {
    pub(crate) fn new(limit: BucketLimit) -> Self {
        Self {
            limit,
            buckets: HashMap::new(),
        }
    }

    fn bucket(&mut self, id: &InstallationId, now_ms: u64) -> &mut Bucket {
        let limit = self.limit;
        let bucket = self.buckets.entry(*id).or_insert(Bucket {
            units: u64::from(limit.burst) * UNITS_PER_TOKEN,
            updated_ms: now_ms,
        });
        bucket.refill(limit, now_ms);
        bucket
    }
}

/// Charge every `(id, cost)` of every bucket set, and take the tokens only
/// if all of them have enough. Otherwise take nothing and return how long to
/// wait (ms) until all would.
pub(crate) fn take_all(
    charges: &mut [(&mut Buckets, Vec<(InstallationId, u32)>)],
    now_ms: u64,
) -> Result<(), u64> {
    let mut wait = 0;
    for (buckets, ids) in charges.iter_mut() {
        let limit = buckets.limit;
        for (id, cost) in ids.iter() {
            let bucket = buckets.bucket(id, now_ms);
            wait = wait.max(bucket.wait_ms(limit, *cost));
        }
    }
    if wait > 0 {
        return Err(wait);
    }
    for (buckets, ids) in charges.iter_mut() {
        for (id, cost) in ids.iter() {
            let bucket = buckets.bucket(id, now_ms);
            bucket.units = bucket
                .units
                .saturating_sub(u64::from(*cost) * UNITS_PER_TOKEN);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut buckets = Buckets::new(BucketLimit {
            burst: 3,
            per_minute: 60,
        });
        let id = InstallationId([1; 32]);
        for _ in 0..3 {
            assert_eq!(take_all(&mut [(&mut buckets, vec![(id, 1)])], 0), Ok(()));
        }
        assert_eq!(
            take_all(&mut [(&mut buckets, vec![(id, 1)])], 0),
            Err(1_000)
        );
        assert_eq!(take_all(&mut [(&mut buckets, vec![(id, 1)])], 999), Err(1));
        assert_eq!(
            take_all(&mut [(&mut buckets, vec![(id, 1)])], 1_000),
            Ok(())
        );
        // Never more than the burst, however long it waits.
        for _ in 0..3 {
            assert_eq!(
                take_all(&mut [(&mut buckets, vec![(id, 1)])], 1_000_000),
                Ok(())
            );
        }
        assert!(take_all(&mut [(&mut buckets, vec![(id, 1)])], 1_000_000).is_err());
        // More than the burst can never pass.
        let other = InstallationId([2; 32]);
        assert_eq!(
            take_all(&mut [(&mut buckets, vec![(other, 4)])], 0),
            Err(u64::MAX)
        );
    }

    #[test]
    fn all_or_nothing_across_buckets() {
        let mut requesters = Buckets::new(BucketLimit {
            burst: 10,
            per_minute: 60,
        });
        let mut targets = Buckets::new(BucketLimit {
            burst: 1,
            per_minute: 1,
        });
        let (r, t) = (InstallationId([1; 32]), InstallationId([2; 32]));
        let charge = |requesters: &mut Buckets, targets: &mut Buckets| {
            take_all(
                &mut [(requesters, vec![(r, 1)]), (targets, vec![(t, 1)])],
                0,
            )
        };
        assert!(charge(&mut requesters, &mut targets).is_ok());
        assert!(charge(&mut requesters, &mut targets).is_err());
        // The refused request took nothing from the requester: 9 are left.
        assert!(take_all(&mut [(&mut requesters, vec![(r, 9)])], 0).is_ok());
        assert!(take_all(&mut [(&mut requesters, vec![(r, 1)])], 0).is_err());
    }
}
