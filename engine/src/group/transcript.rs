//! Transcript entries: what a merged commit changed (who joined or left,
//! which attributes, admins, policies or gating rules changed, and who
//! made the change), stored among the conversation's messages so that an
//! application can show it in place.
//!
//! The engine writes an entry in the same storage step as the merge, so a
//! crash never keeps one without the other. Its content type is a control
//! type (`kith/…`): an application cannot send one, and one that arrives
//! over the network is skipped, so an entry in the list was always made by
//! this installation from a commit every member checked.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;

use super::{
    content::{CONTENT_TYPE_GROUP_UPDATED, message_id},
    conversation,
    error::GroupError,
    events::Events,
    metadata::GroupMetadata,
    records::{ConversationId, Delivery, OrderKey, RetainedEnvelope, StoredMessage},
    store::KvStore,
    validate::CommitSummary,
};
use crate::identity::{InboxId, InstallationId};

/// The most inboxes and field changes one entry lists; a commit that
/// changes more (the creation of a large group, say) lists the first
/// ones, added inboxes first.
pub const MAX_TRANSCRIPT_ENTRIES: usize = 1024;

/// The field of a change to the admin list (the value is the inbox).
pub const FIELD_ADMIN: &str = "admin";
/// The field of a change to the super-admin list.
pub const FIELD_SUPER_ADMIN: &str = "super_admin";
/// The field of a change to the policies (no values).
pub const FIELD_POLICIES: &str = "policies";
/// The field of a change to the gating rules (no values).
pub const FIELD_GATING: &str = "gating";

/// A transcript entry on the wire (protobuf): the body of a
/// [`CONTENT_TYPE_GROUP_UPDATED`] message.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupUpdateWire {
    /// The committer's inbox (20 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub by: Vec<u8>,
    /// Inboxes that joined.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub added: Vec<Vec<u8>>,
    /// Inboxes that left.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub removed: Vec<Vec<u8>>,
    /// Changed fields: attributes by key, and the `FIELD_*` names.
    #[prost(message, repeated, tag = "4")]
    pub changes: Vec<FieldChangeWire>,
}

/// One changed field of a [`GroupUpdateWire`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FieldChangeWire {
    /// The attribute key, or one of the `FIELD_*` names.
    #[prost(string, tag = "1")]
    pub field: String,
    /// The value before (`None`: unset, or an added list entry).
    #[prost(string, optional, tag = "2")]
    pub old: Option<String>,
    /// The value after (`None`: cleared, or a removed list entry).
    #[prost(string, optional, tag = "3")]
    pub new: Option<String>,
}

/// What `summary`'s commit changed against `before`, if a reader would
/// see anything: `None` for a commit that only moved keys or
/// installations of inboxes that stay, and in deniable DMs, whose
/// committers are not known by name when their commits merge.
pub(crate) fn group_update(
    before: &GroupMetadata,
    summary: &CommitSummary,
) -> Option<GroupUpdateWire> {
    summary.committer_installation?;
    let after = &summary.metadata;
    let inboxes = |list: &[(InboxId, InstallationId)], keep: &dyn Fn(&InboxId) -> bool| {
        list.iter()
            .map(|(inbox, _)| *inbox)
            .filter(|i| keep(i))
            .collect::<BTreeSet<_>>()
    };
    let added = inboxes(&summary.added, &|i| !before.membership.contains_key(i));
    let removed = inboxes(&summary.removed, &|i| !after.membership.contains_key(i));
    let mut changes = Vec::new();
    if summary.metadata_changed {
        attribute_changes(
            &before.mutable.attributes,
            &after.mutable.attributes,
            &mut changes,
        );
        list_changes(
            FIELD_ADMIN,
            &before.mutable.admins,
            &after.mutable.admins,
            &mut changes,
        );
        list_changes(
            FIELD_SUPER_ADMIN,
            &before.mutable.super_admins,
            &after.mutable.super_admins,
            &mut changes,
        );
        for (field, changed) in [
            (FIELD_POLICIES, before.policies != after.policies),
            (FIELD_GATING, !before.gating.same_rules(&after.gating)),
        ] {
            if changed {
                changes.push(FieldChangeWire {
                    field: field.into(),
                    old: None,
                    new: None,
                });
            }
        }
    }
    if added.is_empty() && removed.is_empty() && changes.is_empty() {
        return None;
    }
    let mut room = MAX_TRANSCRIPT_ENTRIES;
    let mut take = |n: usize| {
        let n = n.min(room);
        room -= n;
        n
    };
    let (n_added, n_removed) = (take(added.len()), take(removed.len()));
    let n_changes = take(changes.len());
    let bytes = |set: BTreeSet<InboxId>, n| {
        set.into_iter()
            .take(n)
            .map(|i| i.as_bytes().to_vec())
            .collect()
    };
    changes.truncate(n_changes);
    Some(GroupUpdateWire {
        by: summary.committer.as_bytes().to_vec(),
        added: bytes(added, n_added),
        removed: bytes(removed, n_removed),
        changes,
    })
}

fn attribute_changes(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    changes: &mut Vec<FieldChangeWire>,
) {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let (old, new) = (before.get(key), after.get(key));
        if old != new {
            changes.push(FieldChangeWire {
                field: key.clone(),
                old: old.cloned(),
                new: new.cloned(),
            });
        }
    }
}

fn list_changes(
    field: &str,
    before: &BTreeSet<InboxId>,
    after: &BTreeSet<InboxId>,
    changes: &mut Vec<FieldChangeWire>,
) {
    for inbox in after.difference(before) {
        changes.push(FieldChangeWire {
            field: field.into(),
            old: None,
            new: Some(inbox.to_string()),
        });
    }
    for inbox in before.difference(after) {
        changes.push(FieldChangeWire {
            field: field.into(),
            old: Some(inbox.to_string()),
            new: None,
        });
    }
}

/// The id of the transcript entry of the commit at `key` on `group_id`'s
/// topic. Named by the commit's place, not its bytes (OpenMLS may order a
/// commit's proposals differently run to run; a place holds one commit),
/// and not by its committer, so that a rollback can name the entries of
/// the commits it replays without reading them.
pub(crate) fn entry_id(group_id: &[u8], key: OrderKey) -> [u8; 32] {
    let (time_ms, node, sequence) = key;
    let mut place = b"kith transcript v1".to_vec();
    place.extend_from_slice(&time_ms.to_be_bytes());
    place.extend_from_slice(&u64::from(node).to_be_bytes());
    place.extend_from_slice(&sequence.to_be_bytes());
    message_id(InboxId::from_bytes([0; 20]), group_id, &place)
}

/// Store the transcript entry of the commit in `entry` and announce it as
/// a message; returns its id. A replay of the same commit (after a
/// rollback) stores nothing new, and confirms an entry the rollback had
/// marked superseded, as for any message.
pub(crate) fn record<S: KvStore + ?Sized>(
    kv: &S,
    conversation_id: ConversationId,
    group_id: &[u8],
    entry: &RetainedEnvelope,
    committer: (InboxId, InstallationId),
    update: &GroupUpdateWire,
    events: &mut Events,
) -> Result<[u8; 32], GroupError> {
    let id = entry_id(group_id, entry.key);
    let (inbox, installation) = committer;
    let message = StoredMessage {
        conversation_id,
        group_id: group_id.to_vec(),
        message_id: id,
        sender_inbox: inbox,
        sender_installation: installation,
        content_type: CONTENT_TYPE_GROUP_UPDATED.into(),
        body: update.encode_to_vec(),
        sent_at_ms: entry.key.0,
        time_ms: entry.key.0,
        delivery: Delivery::Published,
        unbound_leaf: None,
        fallback: None,
    };
    conversation::store_received(kv, message, events)?;
    Ok(id)
}
