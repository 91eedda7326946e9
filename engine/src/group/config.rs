//! [`GroupConfig`]: the knobs of one group's engine, which the driver sets
//! whenever it loads the group (they are not stored with it).
//!
//! Each part of the engine reads its own piece: the rewind history the
//! [`RewindPolicy`], the outbox the [`ProposalPolicy`], the fork monitor
//! the rejoin retry and the retirement grace.

/// How long a member on a fork waits for its re-add before asking again,
/// by default.
pub const REJOIN_RETRY_MS: u64 = 30_000;

/// How long a removed member keeps the group's state after its removal
/// settled, by default: a day.
pub const RETIRE_GRACE_MS: u64 = 24 * 60 * 60 * 1000;

/// How one group behaves: rollback, proposals, and fork healing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// How far back the group can roll, and for how long.
    pub rewind: RewindPolicy,
    /// Whether changes go out as proposals first, and how long to wait for
    /// another member to commit them.
    pub proposals: ProposalPolicy,
    /// How long a member on a fork waits for its re-add before asking
    /// again, in ms (default [`REJOIN_RETRY_MS`]).
    pub rejoin_retry_ms: u64,
    /// How long a removed member keeps the group's state after it applied
    /// its removal, in ms (default [`RETIRE_GRACE_MS`]), before deleting
    /// its secrets for good.
    ///
    /// A removal that settled can still turn out to be a losing branch's:
    /// a commit that sorts before it may arrive after the settle window,
    /// once a partition heals, and the members on that branch still count
    /// this installation in. Only with its state can it see that fork and
    /// ask to be re-added; a retired group sees nothing. So the state is
    /// kept for as long as the deployment's longest partition, and the
    /// cost is forward secrecy for that long (RFC 9420 section 8 asks for
    /// the secrets to go; this delays it, bounded). 0 retires as soon as
    /// the removal settled; so does a strong order (a settle window of 0),
    /// where no branch can lose.
    pub retire_grace_ms: u64,
}

impl GroupConfig {
    /// How long a removed member keeps the state in fact: with a strong
    /// order no removal can turn out to be a losing branch's, so there is
    /// nothing to wait for.
    pub(crate) fn retire_after_ms(&self) -> u64 {
        if self.rewind.retains() {
            self.retire_grace_ms
        } else {
            0
        }
    }
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            rewind: RewindPolicy::default(),
            proposals: ProposalPolicy::default(),
            rejoin_retry_ms: REJOIN_RETRY_MS,
            retire_grace_ms: RETIRE_GRACE_MS,
        }
    }
}

/// How far back a group can roll, and for how long (DESIGN.md section 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewindPolicy {
    /// At most this many unsettled epoch transitions are kept (default 5).
    pub max_rewind: usize,
    /// How long after its commit's originator time a transition settles,
    /// in ms. Taken from the node's info: 0 for a strong order.
    pub settle_window_ms: u64,
}

impl Default for RewindPolicy {
    fn default() -> Self {
        Self {
            max_rewind: 5,
            settle_window_ms: 0,
        }
    }
}

impl RewindPolicy {
    /// Whether snapshots are taken at all: not with a strong order (a
    /// settle window of 0), where no commit can arrive out of order.
    pub fn retains(&self) -> bool {
        self.max_rewind > 0 && self.settle_window_ms > 0
    }
}

/// Whether metadata changes and key updates go out first as standalone
/// proposals, so that whoever commits next includes them and fewer commits
/// collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProposalPolicy {
    /// Send proposable changes as proposals first (default true). Off,
    /// every change is its own commit.
    pub propose_first: bool,
    /// How long a proposer waits for another member's commit to include
    /// its proposal before committing it itself, in ms (default 0: at the
    /// next [`Group::advance`](crate::group::Group::advance)).
    pub proposal_wait_ms: u64,
}

impl Default for ProposalPolicy {
    fn default() -> Self {
        Self {
            propose_first: true,
            proposal_wait_ms: 0,
        }
    }
}
