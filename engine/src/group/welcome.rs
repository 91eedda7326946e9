//! What a Welcome must satisfy before it is joined: every member's
//! Welcome for a group id this installation already holds must continue
//! that group, and a DM's Welcome must be for this inbox's DM, with its two
//! inboxes and in its mode. Anyone can fetch an installation's key
//! packages and make a valid MLS Welcome for it; these checks are what
//! keep a stranger's Welcome from taking over a conversation
//! (docs/security.md, attacks 2 and 3). Pure checks: nothing is written.

use std::collections::BTreeSet;

use super::{
    conversation,
    error::GroupError,
    mls::{Mls, StagedJoin},
    store::KvStore,
};
use crate::identity::{InboxId, InstallationId};

/// Whether the staged Welcome `join` continues this group, as held
/// here, so that it may replace (or later rejoin) it: the committer was
/// a member in the last tree this installation trusted, and the immutable
/// metadata (kind, creator, DM members and mode, creation time, legacy
/// id) is unchanged. Anyone can fetch this installation's key packages and
/// make a valid Welcome for a group of the same id; only a member of this
/// group can continue it.
///
/// The last tree trusted is this state's, or, for a member on a fork,
/// the tree where its branch parted from the canonical one (`parted_at`,
/// the epoch whose canonical commit it missed): its own branch may since
/// have removed the member that re-adds it. That tree is not kept, so a
/// committer counts if it is in this state's tree or this branch removed
/// it at or after the parting (`removed`).
///
/// OpenMLS 0.9 joins a Welcome with an empty resumption-PSK store, so
/// a resumption PSK of an earlier epoch cannot be asked for here.
pub(crate) fn check_continuity(
    held: &Mls,
    parted_at: Option<u64>,
    removed: &[(u64, InstallationId)],
    join: &StagedJoin,
) -> Result<(), GroupError> {
    let removed_since_parting = parted_at.is_some_and(|parted| {
        removed.iter().any(|(left, installation)| {
            *left >= parted && installation.as_bytes().as_slice() == join.sender_key()
        })
    });
    if !held.has_leaf_key(join.sender_key()) && !removed_since_parting {
        return Err(GroupError::NotPermitted(
            "a Welcome for a group this installation holds, from an installation that was \
             not a member of it: refused"
                .into(),
        ));
    }
    if join.metadata().immutable != held.metadata().immutable {
        return Err(GroupError::NotPermitted(
            "a Welcome for a group this installation holds, with other immutable metadata \
             (creator, kind or DM members): refused"
                .into(),
        ));
    }
    Ok(())
}

/// A DM's Welcome must be for a DM of this installation's inbox, with
/// exactly the two inboxes it names as members (every leaf is checked
/// against the membership record by the staging), and in the mode of the
/// conversation if it exists already. Otherwise a stranger could make
/// "the DM of A and B" with itself as a third member, or the peer could
/// move the conversation into a non-repudiable group.
pub(crate) fn check_dm_join<S: KvStore + ?Sized>(
    kv: &S,
    join: &StagedJoin,
    me: InboxId,
    group_id: &[u8],
) -> Result<(), GroupError> {
    let metadata = join.metadata();
    let Some((a, b)) = metadata.immutable.dm_members else {
        return Ok(());
    };
    if a == b || (me != a && me != b) {
        return Err(GroupError::NotPermitted(
            "a DM Welcome for a DM this inbox is not one side of: refused".into(),
        ));
    }
    if metadata.membership.keys().copied().collect::<BTreeSet<_>>() != BTreeSet::from([a, b]) {
        return Err(GroupError::NotPermitted(
            "a DM Welcome whose members are not exactly the DM's two inboxes: refused".into(),
        ));
    }
    conversation::check_dm_mode(
        kv,
        &conversation::conversation_id(metadata, group_id),
        metadata.immutable.dm_mode,
    )
}
