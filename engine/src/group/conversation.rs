//! The conversation's side of a group: its entry in the conversation list
//! and its stored messages, as the engine changes them.
//!
//! A conversation outlives its MLS groups (a DM may have several, and a
//! member re-added after a fork joins the same group id afresh), so these
//! records are keyed by conversation, not by group. The functions here
//! are the only ways the engine changes them: registering and retiring a
//! group, storing a received message (once per id), and moving a message
//! between delivery states. Each returns the events the application must
//! hear; none reads or writes anything of the MLS state. A new
//! conversation's metadata is made here too ([`NewGroup`]).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    content::Content,
    error::GroupError,
    events::{Events, GroupEvent},
    identities::IdentityCache,
    metadata::{
        ConversationKind, Gating, GroupMetadata, ImmutableMetadata, LegacyConversation,
        MutableMetadata, Policies, PolicyPreset,
    },
    records::{ConversationId, ConversationRecord, ConversationState, Delivery, StoredMessage},
    signer::Me,
    store::{ClientStore, KvStore},
};
use crate::identity::{DmMode, InboxId, InstallationId};

/// Add `group_id` to conversation `id` (creating the conversation, with
/// `dm_peer`, if it is new) and mark the conversation active.
pub(crate) fn register_group<S: KvStore + ?Sized>(
    kv: &S,
    id: &ConversationId,
    dm: Option<(InboxId, DmMode)>,
    group_id: &[u8],
    now_ms: u64,
) -> Result<(), GroupError> {
    check_dm_mode(kv, id, dm.map(|(_, mode)| mode))?;
    let store = ClientStore(kv);
    let mut record = store.conversation(id)?.unwrap_or(ConversationRecord {
        id: id.clone(),
        dm_peer: dm.map(|(peer, _)| peer),
        group_ids: Vec::new(),
        created_at_ms: now_ms,
        state: ConversationState::Active,
        dm_mode: dm.map(|(_, mode)| mode),
    });
    if !record.group_ids.contains(&group_id.to_vec()) {
        record.group_ids.push(group_id.to_vec());
    }
    record.state = ConversationState::Active;
    store.put_conversation(&record)
}

/// Refuse a group of conversation `id` whose DM mode is `mode` if the
/// conversation is stored with another: a DM's mode never changes once
/// the conversation exists, so that neither the peer nor anyone else can
/// move a deniable DM's sends into a non-repudiable group (which would
/// sign every later message with the installation key).
pub(crate) fn check_dm_mode<S: KvStore + ?Sized>(
    kv: &S,
    id: &ConversationId,
    mode: Option<DmMode>,
) -> Result<(), GroupError> {
    match ClientStore(kv).conversation(id)? {
        Some(record) if record.dm_mode.is_some() && record.dm_mode != mode => {
            Err(GroupError::NotPermitted(format!(
                "a group of DM {id} in another mode ({mode:?}) than the conversation's \
                 ({:?}): a DM's mode never changes",
                record.dm_mode
            )))
        }
        _ => Ok(()),
    }
}

/// This installation left `group_id` (it was removed): drop the group from
/// the conversation, and mark the conversation removed if it was its last.
pub(crate) fn retire_group<S: KvStore + ?Sized>(
    kv: &S,
    id: &ConversationId,
    group_id: &[u8],
) -> Result<(), GroupError> {
    let store = ClientStore(kv);
    if let Some(mut record) = store.conversation(id)? {
        record.group_ids.retain(|g| g != group_id);
        if record.group_ids.is_empty() {
            record.group_ids.push(group_id.to_vec());
            record.state = ConversationState::Removed;
        }
        store.put_conversation(&record)?;
    }
    Ok(())
}

/// A rollback brought this installation back into `group_id` (the replay
/// undid its removal): list the group and the conversation as active
/// again.
pub(crate) fn restore_group<S: KvStore + ?Sized>(
    kv: &S,
    id: &ConversationId,
    group_id: &[u8],
) -> Result<(), GroupError> {
    let store = ClientStore(kv);
    let mut record = store.conversation(id)?;
    if let Some(record) = record.as_mut()
        && (record.state != ConversationState::Active
            || !record.group_ids.contains(&group_id.to_vec()))
    {
        record.state = ConversationState::Active;
        if !record.group_ids.contains(&group_id.to_vec()) {
            record.group_ids.push(group_id.to_vec());
        }
        store.put_conversation(record)?;
    }
    Ok(())
}

/// A message this installation (`me`) is sending through `group_id`,
/// as stored before it reaches the node; its place in the conversation is
/// when it was written.
pub(crate) fn own_message(
    conversation_id: ConversationId,
    group_id: &[u8],
    me: Me<'_>,
    message_id: [u8; 32],
    content: Content,
) -> StoredMessage {
    StoredMessage {
        conversation_id,
        group_id: group_id.to_vec(),
        message_id,
        sender_inbox: me.inbox,
        sender_installation: me.keys.id(),
        content_type: content.content_type,
        body: content.body,
        sent_at_ms: content.sent_at_ms,
        time_ms: content.sent_at_ms,
        delivery: Delivery::Unpublished,
        unbound_leaf: None,
        fallback: content.fallback,
    }
}

/// Store a received message, once per id. A message already stored as
/// [`Delivery::Superseded`] is delivered again: its sender's re-sent copy
/// arrived in the canonical branch.
pub(crate) fn store_received<S: KvStore + ?Sized>(
    kv: &S,
    message: StoredMessage,
    events: &mut Events,
) -> Result<(), GroupError> {
    let store = ClientStore(kv);
    if store.insert_message(&message)? {
        events.push_back(GroupEvent::Message(message));
    } else if let Some(mut stored) = store.message(&message.conversation_id, &message.message_id)?
        && stored.delivery == Delivery::Superseded
    {
        stored.delivery = Delivery::Published;
        store.update_message(&stored)?;
        events.push_back(GroupEvent::MessageConfirmed {
            message_id: message.message_id,
        });
    }
    Ok(())
}

/// Move an own message from `Unpublished` to `Published` (its payload
/// reached the node). A message failed meanwhile stays failed.
pub(crate) fn mark_published<S: KvStore + ?Sized>(
    kv: &S,
    conversation: &ConversationId,
    message_id: &[u8; 32],
) -> Result<(), GroupError> {
    let store = ClientStore(kv);
    if let Some(mut message) = store.message(conversation, message_id)?
        && message.delivery == Delivery::Unpublished
    {
        message.delivery = Delivery::Published;
        store.update_message(&message)?;
    }
    Ok(())
}

/// Mark an own message failed, and say why.
pub(crate) fn mark_failed<S: KvStore + ?Sized>(
    kv: &S,
    conversation: &ConversationId,
    message_id: &[u8; 32],
    reason: &str,
    events: &mut Events,
) -> Result<(), GroupError> {
    let store = ClientStore(kv);
    if let Some(mut message) = store.message(conversation, message_id)? {
        message.delivery = Delivery::Failed;
        store.update_message(&message)?;
    }
    events.push_back(GroupEvent::MessageFailed {
        message_id: *message_id,
        reason: reason.into(),
    });
    Ok(())
}

/// Mark received messages known only from a branch that lost as
/// superseded (those not superseded already), and say so.
pub(crate) fn supersede<'a, S: KvStore + ?Sized>(
    kv: &S,
    conversation: &ConversationId,
    ids: impl IntoIterator<Item = &'a [u8; 32]>,
    events: &mut Events,
) -> Result<(), GroupError> {
    let store = ClientStore(kv);
    for id in ids {
        if let Some(mut message) = store.message(conversation, id)?
            && message.delivery != Delivery::Superseded
        {
            message.delivery = Delivery::Superseded;
            store.update_message(&message)?;
            events.push_back(GroupEvent::MessageSuperseded { message_id: *id });
        }
    }
    Ok(())
}

/// An own message taken back from a fork: its id and encoded content.
pub(crate) type TakenBack = ([u8; 32], Vec<u8>);

/// Take back the messages `me` sent through `group_id` at or after
/// `since_ms` (on a fork that began then, which the other members never
/// saw): each goes back to [`Delivery::Unpublished`], and its content is
/// returned, oldest first, for re-sending with its id once this
/// installation is in the group again. Receivers that read it on the fork
/// keep the copy they have; a re-sent copy with the same id is a no-op.
pub(crate) fn take_back_sent_since<S: KvStore + ?Sized>(
    kv: &S,
    conversation: &ConversationId,
    group_id: &[u8],
    me: InstallationId,
    since_ms: u64,
) -> Result<Vec<TakenBack>, GroupError> {
    use prost::Message as _;

    let store = ClientStore(kv);
    let mut mine: Vec<StoredMessage> = store
        .messages(conversation)?
        .into_iter()
        .filter(|m| {
            // Transcript entries are this installation's record of a
            // commit, not messages it sent.
            m.content_type != super::content::CONTENT_TYPE_GROUP_UPDATED
                && m.group_id == group_id
                && m.sender_installation == me
                && m.time_ms >= since_ms
                && m.delivery != Delivery::Failed
        })
        .collect();
    mine.sort_by_key(|m| (m.time_ms, m.sent_at_ms));
    let mut taken = Vec::with_capacity(mine.len());
    for mut message in mine {
        let content = Content {
            content_type: message.content_type.clone(),
            message_id: message.message_id.to_vec(),
            body: message.body.clone(),
            sent_at_ms: message.sent_at_ms,
            fallback: message.fallback.clone(),
        };
        message.delivery = Delivery::Unpublished;
        store.update_message(&message)?;
        taken.push((message.message_id, content.encode_to_vec()));
    }
    Ok(taken)
}

/// A DM's conversation id comes from its two inboxes, so that every DM
/// group between them (both sides may create one at once) is shown as one
/// conversation; a group's is its group id.
pub(crate) fn conversation_id(metadata: &GroupMetadata, group_id: &[u8]) -> ConversationId {
    match metadata.immutable.dm_members {
        Some((a, b)) => super::records::dm_conversation_id(a, b),
        None => ConversationId(group_id.to_vec()),
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct NewGroup {
    /// Group or DM.
    pub kind: ConversationKind,
    /// For a DM, the other inbox.
    pub dm_peer: Option<InboxId>,
    /// For a DM, whether it can be denied (ignored for groups, which never
    /// can). A deniable DM's members are added with
    /// [`IntentKind::AddDeniable`](super::intent::IntentKind::AddDeniable).
    pub dm_mode: DmMode,
    /// Initial attributes (name, description, ...).
    pub attributes: BTreeMap<String, String>,
    /// Policy preset (ignored for DMs, which use [`Policies::dm`]).
    pub preset: PolicyPreset,
    /// Creation time, ms since the Unix epoch.
    pub now_ms: u64,
    /// The conversation of an older protocol this one continues, if it is
    /// a migration (fixed for its life).
    pub legacy: Option<LegacyConversation>,
    /// The rules new members must satisfy (groups only; none: anyone the
    /// policies let in). Changed later under the `change_policies` policy.
    pub gating: Gating,
}

/// The metadata of a new conversation made by `me`.
pub(crate) fn new_metadata(
    new: &NewGroup,
    me: InboxId,
    identities: &IdentityCache,
) -> Result<GroupMetadata, GroupError> {
    let (dm_members, policies, super_admins) = match (new.kind, new.dm_peer) {
        (ConversationKind::Dm, Some(peer)) if peer != me => {
            let pair = if me < peer { (me, peer) } else { (peer, me) };
            (Some(pair), Policies::dm(), BTreeSet::new())
        }
        (ConversationKind::Dm, _) => {
            return Err(GroupError::InvalidInput(
                "a DM needs one peer other than yourself".into(),
            ));
        }
        (ConversationKind::Group, _) => (None, Policies::preset(new.preset), BTreeSet::from([me])),
    };
    let metadata = GroupMetadata {
        immutable: ImmutableMetadata {
            kind: new.kind,
            creator: me,
            dm_mode: dm_members.map(|_| new.dm_mode),
            dm_members,
            created_at_ms: new.now_ms,
            legacy: new.legacy.clone(),
        },
        mutable: MutableMetadata {
            attributes: new.attributes.clone(),
            admins: BTreeSet::new(),
            super_admins,
        },
        policies,
        membership: BTreeMap::from([(me, identities.sequence(&me))]),
        gating: new.gating.clone(),
    };
    if metadata.immutable.dm_members.is_some() && metadata.gating.is_gated() {
        return Err(GroupError::InvalidInput("a DM cannot be gated".into()));
    }
    metadata.check_limits()?;
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::store::MemoryKvStore;

    fn message(conversation: &ConversationId, id: u8, time_ms: u64) -> StoredMessage {
        StoredMessage {
            conversation_id: conversation.clone(),
            group_id: b"group".to_vec(),
            message_id: [id; 32],
            sender_inbox: InboxId::from_bytes([1; 20]),
            sender_installation: InstallationId([2; 32]),
            content_type: "text/plain".into(),
            body: vec![id],
            sent_at_ms: time_ms,
            time_ms,
            delivery: Delivery::Published,
            unbound_leaf: None,
            fallback: None,
        }
    }

    #[test]
    fn a_message_is_stored_and_announced_once() {
        let kv = MemoryKvStore::default();
        let conversation = ConversationId(b"c".to_vec());
        let mut events = Events::new();
        store_received(&kv, message(&conversation, 1, 10), &mut events).expect("store");
        store_received(&kv, message(&conversation, 1, 20), &mut events).expect("store");
        assert_eq!(events.len(), 1, "{events:?}");
        let stored = ClientStore(&kv).messages(&conversation).expect("read");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].time_ms, 10);
    }

    #[test]
    fn a_superseded_message_is_confirmed_by_its_copy() {
        let kv = MemoryKvStore::default();
        let conversation = ConversationId(b"c".to_vec());
        let mut events = Events::new();
        store_received(&kv, message(&conversation, 1, 10), &mut events).expect("store");
        supersede(&kv, &conversation, [&[1; 32]], &mut events).expect("supersede");
        // Twice is once.
        supersede(&kv, &conversation, [&[1; 32]], &mut events).expect("supersede");
        store_received(&kv, message(&conversation, 1, 30), &mut events).expect("store");
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                GroupEvent::Message(_) => "message",
                GroupEvent::MessageSuperseded { .. } => "superseded",
                GroupEvent::MessageConfirmed { .. } => "confirmed",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["message", "superseded", "confirmed"]);
        let stored = ClientStore(&kv).messages(&conversation).expect("read");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].delivery, Delivery::Published);
    }

    #[test]
    fn only_own_messages_of_the_fork_are_taken_back() {
        let kv = MemoryKvStore::default();
        let conversation = ConversationId(b"c".to_vec());
        let store = ClientStore(&kv);
        let me = InstallationId([2; 32]);
        let mut before = message(&conversation, 1, 10);
        before.delivery = Delivery::Published;
        let mut after = message(&conversation, 2, 20);
        after.delivery = Delivery::Published;
        let mut theirs = message(&conversation, 3, 30);
        theirs.sender_installation = InstallationId([9; 32]);
        for m in [&before, &after, &theirs] {
            store.insert_message(m).expect("insert");
        }
        let taken = take_back_sent_since(&kv, &conversation, b"group", me, 15).expect("take");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, [2; 32]);
        let (content, id) = Content::decode_checked(&taken[0].1).expect("content");
        assert_eq!(id, [2; 32]);
        assert_eq!(content.body, after.body);
        assert_eq!(content.sent_at_ms, after.sent_at_ms);
        let stored = store.messages(&conversation).expect("read");
        let states: Vec<Delivery> = stored.iter().map(|m| m.delivery).collect();
        assert_eq!(
            states,
            [
                Delivery::Published,
                Delivery::Unpublished,
                Delivery::Published
            ]
        );
    }

    #[test]
    fn a_group_is_retired_and_restored() {
        let kv = MemoryKvStore::default();
        let id = ConversationId(b"c".to_vec());
        register_group(&kv, &id, None, b"g1", 5).expect("register");
        // A DM's mode is fixed by its first group.
        let dm = ConversationId(b"dm".to_vec());
        let peer = crate::identity::InboxId::from_bytes([7; 20]);
        register_group(&kv, &dm, Some((peer, DmMode::Deniable)), b"d1", 5).expect("register");
        assert!(matches!(
            register_group(&kv, &dm, Some((peer, DmMode::NonRepudiable)), b"d0", 6),
            Err(GroupError::NotPermitted(_))
        ));
        register_group(&kv, &dm, Some((peer, DmMode::Deniable)), b"d2", 7).expect("same mode");
        retire_group(&kv, &id, b"g1").expect("retire");
        let record = ClientStore(&kv)
            .conversation(&id)
            .expect("read")
            .expect("kept");
        assert_eq!(record.state, ConversationState::Removed);
        assert_eq!(record.group_ids, vec![b"g1".to_vec()]);
        restore_group(&kv, &id, b"g1").expect("restore");
        let record = ClientStore(&kv)
            .conversation(&id)
            .expect("read")
            .expect("kept");
        assert_eq!(record.state, ConversationState::Active);
        assert_eq!(record.created_at_ms, 5);
    }
}
