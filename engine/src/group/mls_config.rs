//! How Kith configures OpenMLS for its groups: the wire format, the sender
//! ratchets' tolerance, and how many past epochs' secrets a member keeps.
//!
//! Past epochs are the one knob that depends on the group. OpenMLS keeps,
//! for every past epoch, that epoch's message secrets *and a copy of every
//! member* (credential and keys, so that it can check a late message's
//! sender), and it writes the whole store on every message and every
//! commit it processes. At 16 past epochs a member of a 1,000-installation
//! group wrote 16,000 member records per message, and processing a commit
//! took 65 ms where OpenMLS with no past epochs takes 5 ms (the `scale`
//! benchmark). So the number kept shrinks as the group grows: it keeps
//! [`PAST_EPOCH_MEMBER_BUDGET`] member copies in all, at least one epoch
//! and at most [`MAX_PAST_EPOCHS`] ([`past_epochs_for`]).
//!
//! What a member gives up: a message sent in epoch `e` decrypts while the
//! receiver is at most `past_epochs_for(n)` epochs past `e`. In a group of
//! up to 256 installations that is 16 commits; in one of over 2,048, one
//! commit, which covers a sender that had not yet seen the latest commit
//! when it sent, the common case.

use openmls::{
    group::PastEpochDeletionPolicy,
    prelude::{
        MlsGroup, MlsGroupJoinConfig, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
        SenderRatchetConfiguration,
    },
};
use openmls_traits::OpenMlsProvider;

use super::error::GroupError;

/// The most past epochs' secrets a member keeps (in a group of at most
/// `PAST_EPOCH_MEMBER_BUDGET / MAX_PAST_EPOCHS` installations), so that
/// application messages sent just before a commit still decrypt after it.
pub const MAX_PAST_EPOCHS: usize = 16;

/// How many member records the kept past epochs may hold in all: each
/// past epoch holds one per installation of the group (see the module
/// docs).
pub const PAST_EPOCH_MEMBER_BUDGET: usize = 4_096;

/// How many generations behind the newest a sender's message may arrive
/// and still decrypt. OpenMLS's default (5) assumes one ordered stream;
/// envelopes of one sender reach members through different originator
/// nodes (the sender moved, replication lagged), so they can arrive far
/// out of order. The cost is up to this many kept keys per sender and
/// epoch.
pub const OUT_OF_ORDER_TOLERANCE: u32 = 128;

/// How many past epochs' secrets a member of a group of `installations`
/// keeps: [`PAST_EPOCH_MEMBER_BUDGET`] member records in all, at least one
/// epoch, at most [`MAX_PAST_EPOCHS`].
///
/// ```
/// use kith_engine::group::{MAX_PAST_EPOCHS, past_epochs_for};
/// assert_eq!(past_epochs_for(2), MAX_PAST_EPOCHS);
/// assert_eq!(past_epochs_for(1_000), 4);
/// assert_eq!(past_epochs_for(10_000), 1);
/// ```
pub fn past_epochs_for(installations: usize) -> usize {
    (PAST_EPOCH_MEMBER_BUDGET / installations.max(1)).clamp(1, MAX_PAST_EPOCHS)
}

pub(crate) fn sender_ratchets() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, 1000)
}

/// The configuration a member runs a group with, keeping `past_epochs`.
pub(crate) fn join_config(past_epochs: usize) -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .sender_ratchet_configuration(sender_ratchets())
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(past_epochs)
        .build()
}

/// Set how many past epochs `group` keeps to what its size calls for
/// ([`past_epochs_for`]). Writes only when that changed: when the group
/// crossed a size threshold, or after a join.
pub(crate) fn fit_past_epochs<P: OpenMlsProvider>(
    provider: &P,
    group: &mut MlsGroup,
) -> Result<(), GroupError> {
    let wanted = past_epochs_for(group.members().count());
    if *group.past_epoch_deletion_policy() == PastEpochDeletionPolicy::MaxEpochs(wanted) {
        return Ok(());
    }
    group
        .set_configuration(provider.storage(), &join_config(wanted))
        .map_err(GroupError::store)
}
