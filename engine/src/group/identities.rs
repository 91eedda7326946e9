//! The identity cache: verified identity logs of the inboxes this client
//! talks to, and the question commit validation asks of them: was this
//! installation active at that sequence number?

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::{
    IdentityError, IdentityState, IdentityUpdate, InboxId, InstallationId, UpdateAction,
};

#[derive(Debug, Clone)]
struct CachedLog {
    updates: Vec<IdentityUpdate>,
    state: IdentityState,
}

/// Verified identity logs, by inbox. Updates are verified once, when they
/// enter the cache; later questions replay the verified actions only.
#[derive(Debug, Clone, Default)]
pub struct IdentityCache {
    logs: BTreeMap<InboxId, CachedLog>,
    /// Whether a node may revise these logs (replicating nodes), so that
    /// an input that disputes a cached log asks for it to be read again
    /// ([`GroupError::IdentitiesDisputed`]) before it is rejected.
    ///
    /// [`GroupError::IdentitiesDisputed`]: crate::group::GroupError::IdentitiesDisputed
    revisable: bool,
    /// Inboxes whose whole log the driver read again because an input
    /// disputed the cached one. Not persisted.
    reread: BTreeSet<InboxId>,
}

impl IdentityCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sequence number the cache holds for `inbox` (0 if none).
    pub fn sequence(&self, inbox: &InboxId) -> u64 {
        self.logs.get(inbox).map_or(0, |l| l.state.sequence())
    }

    /// The entries of a membership record (inbox -> identity-log sequence)
    /// the cache has not read up to: the logs to fetch first.
    pub fn behind(&self, membership: &BTreeMap<InboxId, u64>) -> Vec<(InboxId, u64)> {
        membership
            .iter()
            .filter(|(inbox, sequence)| self.sequence(inbox) < **sequence)
            .map(|(inbox, sequence)| (*inbox, *sequence))
            .collect()
    }

    /// The verified state of `inbox`, if cached.
    pub fn state(&self, inbox: &InboxId) -> Option<&IdentityState> {
        self.logs.get(inbox).map(|l| &l.state)
    }

    /// The cached updates of `inbox`.
    pub fn updates(&self, inbox: &InboxId) -> &[IdentityUpdate] {
        self.logs.get(inbox).map_or(&[], |l| l.updates.as_slice())
    }

    /// The cached inboxes.
    pub fn inboxes(&self) -> impl Iterator<Item = &InboxId> {
        self.logs.keys()
    }

    /// Verify and append `updates` of `inbox` (which must continue the
    /// cached log; updates the cache already holds are skipped). Returns
    /// whether anything was added. On error nothing changes.
    pub fn extend(
        &mut self,
        inbox: InboxId,
        updates: impl IntoIterator<Item = IdentityUpdate>,
    ) -> Result<bool, IdentityError> {
        let mut log = self.logs.get(&inbox).cloned().unwrap_or_else(|| CachedLog {
            updates: Vec::new(),
            state: IdentityState::new(inbox),
        });
        let mut changed = false;
        for update in updates {
            if update.unsigned.sequence <= log.state.sequence() {
                continue;
            }
            log.state.apply(&update)?;
            log.updates.push(update);
            changed = true;
        }
        if changed || !self.logs.contains_key(&inbox) {
            self.logs.insert(inbox, log);
        }
        Ok(changed)
    }

    /// Replace the cached log of `inbox` with `updates`, a whole log read
    /// again (a replicating node revised it: another device's update with
    /// the same sequence came first). Returns whether the cached log
    /// changed. On error (it does not verify) nothing changes, and a log
    /// shorter than the cached one is not taken: it could hide an update
    /// the cache verified (a revocation) as easily as revise one.
    pub fn replace(
        &mut self,
        inbox: InboxId,
        updates: Vec<IdentityUpdate>,
    ) -> Result<bool, IdentityError> {
        let mut state = IdentityState::new(inbox);
        for update in &updates {
            state.apply(update)?;
        }
        if self
            .logs
            .get(&inbox)
            .is_some_and(|l| l.updates == updates || l.updates.len() > updates.len())
        {
            return Ok(false);
        }
        self.logs.insert(inbox, CachedLog { updates, state });
        Ok(true)
    }

    /// Say that a node may revise the cached logs (on replicating nodes,
    /// two devices can register with one sequence number, and one update
    /// loses): an input that disputes a cached log then asks the driver to
    /// read that log again before it is rejected. Off by default, where a
    /// cached log is final.
    pub fn allow_revisions(&mut self) {
        self.revisable = true;
    }

    /// Whether the cached log of `inbox` is final for validation: an input
    /// that disputes it is rejected. True unless [`Self::allow_revisions`]
    /// was called and the log has not been [`Self::mark_reread`] since.
    pub fn is_final(&self, inbox: &InboxId) -> bool {
        !self.revisable || self.reread.contains(inbox)
    }

    /// Note that `inbox`'s whole log was just read again from the node (and
    /// [`Self::replace`]d if it differed): until [`Self::forget_reread`],
    /// validation takes the cached log as final for it, and rejects an
    /// input that disputes it rather than ask for it again.
    pub fn mark_reread(&mut self, inbox: InboxId) {
        self.reread.insert(inbox);
    }

    /// End [`Self::mark_reread`] for `inboxes`: a later dispute asks for
    /// their logs again (a node may revise a log more than once).
    pub fn forget_reread<'a>(&mut self, inboxes: impl IntoIterator<Item = &'a InboxId>) {
        for inbox in inboxes {
            self.reread.remove(inbox);
        }
    }

    /// Whether `installation` was active in the log of `inbox` after its
    /// update `sequence`; `None` if the cache has not reached `sequence`.
    pub fn active_at(
        &self,
        inbox: &InboxId,
        installation: &InstallationId,
        sequence: u64,
    ) -> Option<bool> {
        let log = self.logs.get(inbox);
        if sequence > log.map_or(0, |l| l.state.sequence()) {
            return None;
        }
        let mut active = false;
        for update in log.map_or(&[][..], |l| &l.updates) {
            if update.unsigned.sequence > sequence {
                break;
            }
            if update.unsigned.installation == *installation {
                active = update.unsigned.action == UpdateAction::AddInstallation;
            }
        }
        Some(active)
    }
}

#[cfg(test)]
mod tests {
    use rand_core::SeedableRng as _;

    use super::IdentityCache;
    use crate::identity::{IdentityUpdate, InstallationKeys, LocalWallet, UnsignedIdentityUpdate};

    #[test]
    fn a_whole_log_replaces_the_cached_one_but_never_a_longer_one() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let wallet = LocalWallet::generate(&mut rng);
        let inbox = wallet.inbox_id();
        let add = |keys: &InstallationKeys, sequence: u64| -> IdentityUpdate {
            let unsigned = UnsignedIdentityUpdate::add_installation(inbox, keys, sequence, 1);
            let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
            unsigned.sign(signature, Some(keys))
        };
        let keys: Vec<InstallationKeys> = (0..4)
            .map(|_| InstallationKeys::generate(&mut rng))
            .collect();
        let (first, loser, winner, third) = (
            add(&keys[0], 1),
            add(&keys[1], 2),
            add(&keys[2], 2),
            add(&keys[3], 3),
        );
        let mut cache = IdentityCache::new();
        assert!(cache.extend(inbox, [first.clone(), loser]).expect("extend"));

        // Revised at sequence 2: taken.
        let revised = vec![first.clone(), winner.clone()];
        assert!(cache.replace(inbox, revised.clone()).expect("replace"));
        assert_eq!(cache.updates(&inbox), revised.as_slice());
        assert!(!cache.replace(inbox, revised.clone()).expect("the same"));
        // Shorter: not taken.
        assert!(!cache.replace(inbox, vec![first.clone()]).expect("shorter"));
        assert_eq!(cache.updates(&inbox), revised.as_slice());
        // Not a log (sequence 3 without 2): an error, nothing changes.
        assert!(
            cache
                .replace(inbox, vec![first.clone(), third.clone()])
                .is_err()
        );
        assert_eq!(cache.updates(&inbox), revised.as_slice());
        assert_eq!(cache.sequence(&inbox), 2);
        // Longer: taken.
        assert!(
            cache
                .replace(inbox, vec![first, winner, third])
                .expect("longer")
        );
        assert_eq!(cache.sequence(&inbox), 3);
    }

    #[test]
    fn a_cached_log_is_final_unless_revisions_are_allowed_and_it_was_not_read_again() {
        let inbox =
            LocalWallet::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(4)).inbox_id();
        let mut cache = IdentityCache::new();
        assert!(cache.is_final(&inbox), "by default a cached log is final");
        cache.allow_revisions();
        assert!(!cache.is_final(&inbox), "a node may have revised it");
        cache.mark_reread(inbox);
        assert!(cache.is_final(&inbox), "read again: final for this input");
        cache.forget_reread(&[inbox]);
        assert!(!cache.is_final(&inbox), "the next input may ask again");
    }
}
