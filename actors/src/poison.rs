//! Poison envelopes: which failures to apply an envelope of a group topic
//! are retried, and which make the group skip the envelope, after how many
//! tries (DESIGN.md section 7, invariant 4: one that fails for good never
//! wedges the group).
//!
//! A group reads its topic in canonical order and stores its cursor only
//! past what it applied, so an envelope that fails on every sync would stop
//! the group from reading anything after it. Failures therefore come in two
//! kinds ([`Blame`]):
//!
//! - **Transient**: the node cannot be reached or refused or garbled an
//!   answer (`ClientError`, including the refusals of `CheckedClient`), or
//!   the local store failed (an I/O error). Retrying later can succeed, so
//!   the envelope is retried on every sync and never skipped: skipping a
//!   commit because the network was down would cut this installation off
//!   the group.
//! - **Permanent**: the envelope is refused for a reason that is the same on
//!   every try, because the same input meets the same state: invalid input,
//!   a policy refusal, a stored record that does not decode, an MLS failure,
//!   or identity logs that the engine needs and the node still does not
//!   serve after a fresh fetch ([`IDENTITY_FETCHES`] of them). After [`MAX_TRIES`] syncs in a row that fail on the same
//!   envelope, and once its settle window has passed (so that, over nodes
//!   that replicate, what it refers to had time to arrive), it is skipped
//!   with `Group::skip_envelope`: the cursor moves past it and the
//!   application gets `Event::EnvelopeSkipped` with the reason.
//!
//! A skipped commit is not applied: this installation stays in the epoch
//! before it while the others move on. That is no worse than a node that
//! withholds the commit, which a node can always do.

use kith_engine::{
    delivery::{Envelope, NodeId},
    group::GroupError,
};

/// How many syncs in a row may fail on one envelope, for a reason that
/// will not go away, before the envelope is skipped.
pub(crate) const MAX_TRIES: u32 = 3;

/// How many times one try fetches the identity logs the engine asks for
/// before the envelope counts as failing for good.
pub(crate) const IDENTITY_FETCHES: usize = 3;

/// Whether a failure can go away by itself. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blame {
    /// Retry later, never skip.
    Transient,
    /// The same on every try: skip after [`MAX_TRIES`].
    Permanent,
}

/// The blame of an engine error raised while applying an envelope.
pub(crate) fn blame(error: &GroupError) -> Blame {
    match error {
        // The local store failed: the next try may find it working.
        GroupError::Store(_) => Blame::Transient,
        // The driver fetches these and tries again; it counts as permanent
        // only when fetching did not help (see `IDENTITY_FETCHES`).
        GroupError::NeedIdentities(_) | GroupError::IdentitiesDisputed(_) => Blame::Transient,
        GroupError::NotPermitted(_)
        | GroupError::InvalidInput(_)
        | GroupError::NotMember
        | GroupError::Metadata(_)
        | GroupError::KeyPackage(_)
        | GroupError::Corrupt(_)
        | GroupError::Mls(_) => Blame::Permanent,
        // An error kind added later is retried until it is classified:
        // retrying loses nothing, skipping may.
        _ => Blame::Transient,
    }
}

/// The envelope a group keeps failing on, and how many syncs failed on it.
/// Only the first envelope that fails matters: a sync stops there.
#[derive(Debug, Default)]
pub(crate) struct Tries {
    current: Option<((NodeId, u64), u32)>,
}

impl Tries {
    /// Count a permanent failure on `envelope`; returns how many syncs in
    /// a row failed on it.
    pub(crate) fn failed(&mut self, envelope: &Envelope) -> u32 {
        let key = (envelope.originator_node_id, envelope.originator_sequence_id);
        let count = match self.current {
            Some((current, count)) if current == key => count.saturating_add(1),
            _ => 1,
        };
        self.current = Some((key, count));
        count
    }

    /// The envelope was applied or skipped: start over.
    pub(crate) fn clear(&mut self) {
        self.current = None;
    }
}

/// Whether an envelope that failed for good `tries` times is skipped now:
/// after [`MAX_TRIES`], and not before its settle window has passed.
pub(crate) fn give_up(tries: u32, envelope: &Envelope, settle_window_ms: u64, now_ms: u64) -> bool {
    tries >= MAX_TRIES && now_ms >= envelope.originator_time_ms.saturating_add(settle_window_ms)
}

#[cfg(test)]
mod tests {
    use kith_engine::delivery::Topic;

    use super::*;

    fn envelope(sequence: u64) -> Envelope {
        Envelope {
            topic: Topic::Group(vec![1]),
            payload: vec![],
            originator_node_id: 1,
            originator_sequence_id: sequence,
            originator_time_ms: 1_000,
        }
    }

    #[test]
    fn tries_count_per_envelope_and_start_over() {
        let mut tries = Tries::default();
        assert_eq!(tries.failed(&envelope(5)), 1);
        assert_eq!(tries.failed(&envelope(5)), 2);
        assert_eq!(tries.failed(&envelope(6)), 1, "another envelope");
        tries.clear();
        assert_eq!(tries.failed(&envelope(6)), 1);
    }

    #[test]
    fn an_envelope_is_given_up_after_max_tries_and_its_settle_window() {
        let e = envelope(5);
        assert!(!give_up(MAX_TRIES - 1, &e, 0, 1_000));
        assert!(give_up(MAX_TRIES, &e, 0, 1_000));
        assert!(
            !give_up(MAX_TRIES, &e, 500, 1_499),
            "inside its settle window"
        );
        assert!(give_up(MAX_TRIES, &e, 500, 1_500));
    }

    #[test]
    fn store_failures_are_transient_and_bad_input_is_not() {
        assert_eq!(blame(&GroupError::Store("io".into())), Blame::Transient);
        assert_eq!(
            blame(&GroupError::NeedIdentities(Vec::new())),
            Blame::Transient
        );
        for error in [
            GroupError::InvalidInput("x".into()),
            GroupError::NotPermitted("x".into()),
            GroupError::Corrupt("x".into()),
            GroupError::Mls("x".into()),
        ] {
            assert_eq!(blame(&error), Blame::Permanent, "{error}");
        }
    }
}
