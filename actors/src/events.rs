//! What a client tells its application: messages, membership and metadata
//! changes, and failures that need attention, as [`Event`]s.

use std::collections::{BTreeMap, BTreeSet};

use crate::content::{Content, ContentError};
use kith_engine::{
    group::{
        ConversationId, ConversationKind, Delivery, GroupEvent, GroupMetadata, LegacyConversation,
        StoredMessage, gating::Gating,
    },
    identity::{DmMode, InboxId, InstallationId},
};

/// A message id: SHA-256 of sender, group and a random nonce.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 32]);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// A message in a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its id; the same on every member.
    pub id: MessageId,
    /// The conversation.
    pub conversation: ConversationId,
    /// Who sent it.
    pub sender: InboxId,
    /// From which installation.
    pub sender_installation: InstallationId,
    /// Its content type (`text/plain` for text).
    pub content_type: String,
    /// Its body.
    pub body: Vec<u8>,
    /// The sender's clock when sending, ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// Its place in the conversation: the node's time (local time for own
    /// messages), ms since the Unix epoch.
    pub time_ms: u64,
    /// Whether it is on the node (always true for received messages).
    pub published: bool,
    /// Where it is in delivery: not yet on the node, on it, superseded by
    /// a rollback, or failed for good (see [`Delivery`]).
    pub delivery: Delivery,
    /// The text its sender gave for clients that do not know its content
    /// type (see [`Content::fallback`]).
    pub fallback: Option<String>,
    /// Whether its sender is known. False only in a deniable DM, for a
    /// message that arrived before its sender's binding verified: the
    /// sender fields are then placeholders. It turns true (with the real
    /// sender) when the binding verifies, announced by
    /// [`Event::MemberVerified`].
    pub verified: bool,
}

impl Message {
    /// The body as text, if it is text.
    pub fn text(&self) -> Option<&str> {
        if self.content_type == kith_engine::group::CONTENT_TYPE_TEXT {
            std::str::from_utf8(&self.body).ok()
        } else {
            None
        }
    }

    /// The decoded content. A content type this client does not know
    /// comes back as [`Content::Unknown`] with its fallback; a known type
    /// whose body does not decode (a sender's client that is broken or
    /// altered) is an error, and the application may show
    /// [`Message::fallback`] instead.
    pub fn content(&self) -> Result<Content, ContentError> {
        Content::decode(&self.content_type, &self.body, self.fallback.clone())
    }

    /// Whether it belongs in a message list: false for reactions and read
    /// receipts, which an application shows on the messages they refer
    /// to. Decided by the content type alone.
    pub fn is_listed(&self) -> bool {
        crate::content::is_listed_type(&self.content_type)
    }
}

impl From<StoredMessage> for Message {
    fn from(m: StoredMessage) -> Self {
        let verified = m.is_verified();
        Self {
            id: MessageId(m.message_id),
            conversation: m.conversation_id,
            sender: m.sender_inbox,
            sender_installation: m.sender_installation,
            content_type: m.content_type,
            body: m.body,
            sent_at_ms: m.sent_at_ms,
            time_ms: m.time_ms,
            published: m.delivery == Delivery::Published,
            delivery: m.delivery,
            fallback: m.fallback,
            verified,
        }
    }
}

/// A conversation's metadata as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Group or DM.
    pub kind: ConversationKind,
    /// For a DM, whether it is deniable; `None` for a group (always
    /// non-repudiable). Fixed at creation.
    pub dm_mode: Option<DmMode>,
    /// Who created it.
    pub creator: InboxId,
    /// When it was created (the creator's clock), ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The name, if set.
    pub name: Option<String>,
    /// The description, if set.
    pub description: Option<String>,
    /// Every attribute, including name and description.
    pub attributes: BTreeMap<String, String>,
    /// Admins.
    pub admins: BTreeSet<InboxId>,
    /// Super admins.
    pub super_admins: BTreeSet<InboxId>,
    /// The conversation of an older protocol this one continues, if it
    /// was migrated. Fixed at creation.
    pub legacy: Option<LegacyConversation>,
    /// The rules new members must satisfy, and the admissions of the last
    /// commit that added inboxes (see [`GatingVerifier`](crate::GatingVerifier)).
    pub gating: Gating,
}

impl From<&GroupMetadata> for Metadata {
    fn from(m: &GroupMetadata) -> Self {
        Self {
            kind: m.immutable.kind,
            dm_mode: m.immutable.dm_mode,
            creator: m.immutable.creator,
            created_at_ms: m.immutable.created_at_ms,
            name: m.name().map(str::to_owned),
            description: m.description().map(str::to_owned),
            attributes: m.mutable.attributes.clone(),
            admins: m.mutable.admins.clone(),
            super_admins: m.mutable.super_admins.clone(),
            legacy: m.immutable.legacy.clone(),
            gating: m.gating.clone(),
        }
    }
}

/// Something that happened in one of the client's conversations.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message was received, or sent by this installation.
    Message(Message),
    /// Installations joined or left a conversation.
    MembersChanged {
        /// The conversation.
        conversation: ConversationId,
        /// Who made the change.
        by: InboxId,
        /// Installations added.
        added: Vec<(InboxId, InstallationId)>,
        /// Installations removed.
        removed: Vec<(InboxId, InstallationId)>,
    },
    /// A conversation's name, description, admins or policies changed.
    MetadataChanged {
        /// The conversation.
        conversation: ConversationId,
        /// Who made the change.
        by: InboxId,
        /// The metadata now.
        metadata: Metadata,
    },
    /// This installation joined a conversation (created it, or was added).
    Joined {
        /// The conversation.
        conversation: ConversationId,
    },
    /// This installation was removed from a conversation (or left it).
    Removed {
        /// The conversation.
        conversation: ConversationId,
    },
    /// A change this installation asked for failed for good.
    ChangeFailed {
        /// The conversation.
        conversation: ConversationId,
        /// Why.
        reason: String,
    },
    /// Another member's commit broke the group's rules and was ignored.
    CommitRejected {
        /// The conversation.
        conversation: ConversationId,
        /// Why.
        reason: String,
    },
    /// A received message turned out to belong only to a branch of the
    /// group that lost to another (the network delivered commits out of
    /// order). It stays stored, marked superseded, until its sender's
    /// re-sent copy arrives ([`Event::MessageConfirmed`]).
    MessageSuperseded {
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        id: MessageId,
    },
    /// A superseded message's re-sent copy arrived: it is delivered after
    /// all.
    MessageConfirmed {
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        id: MessageId,
    },
    /// An own message could not be delivered (it was sent on a branch of
    /// the group that lost, and could not be re-sent).
    MessageFailed {
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        id: MessageId,
        /// Why.
        reason: String,
    },
    /// Commits arrived out of canonical order and the conversation was
    /// rolled back and replayed; the counters cover its whole life.
    RolledBack {
        /// The conversation.
        conversation: ConversationId,
        /// The epoch restored.
        to_epoch: u64,
        /// Envelopes replayed by this rollback.
        replayed: u64,
        /// Rollbacks so far.
        rollbacks: u64,
        /// The oldest any snapshot got, in ms.
        max_snapshot_age_ms: u64,
    },
    /// This installation found itself on a fork of the conversation (it
    /// settled a commit that lost elsewhere). It asks to be re-added, which
    /// any member does without the application's help.
    Forked {
        /// The conversation.
        conversation: ConversationId,
        /// Why it knows.
        reason: String,
    },
    /// This installation joined the conversation again after a fork;
    /// messages from the time it was on the fork may be missing.
    Rejoined {
        /// The conversation.
        conversation: ConversationId,
        /// The epoch it joined at.
        epoch: u64,
    },
    /// In a deniable DM, an installation's binding verified: its messages
    /// are now shown with their sender, and once every installation is
    /// bound, held messages go out.
    MemberVerified {
        /// The conversation.
        conversation: ConversationId,
        /// The inbox.
        inbox: InboxId,
        /// Its installation.
        installation: InstallationId,
    },
    /// In a deniable DM, a binding did not verify (a key package the node
    /// substituted, say). The DM is unverified for good: nothing more is
    /// sent in it. Start a new DM, and tell the user.
    VerificationFailed {
        /// The conversation.
        conversation: ConversationId,
        /// Why.
        reason: String,
    },
    /// An envelope of the conversation's topic was passed over for good,
    /// and the conversation read on past it.
    ///
    /// Most are harmless: junk anyone may publish, a replay, a message this
    /// installation cannot decrypt. One that failed for a reason that does
    /// not go away (invalid, or a commit whose members the identity logs
    /// the node serves never reach) is skipped after a few syncs (three),
    /// so that it cannot stop the conversation. If it was a commit that the
    /// others applied, this installation no longer follows them: expect
    /// their messages to stop arriving here until it is re-added.
    EnvelopeSkipped {
        /// The conversation.
        conversation: ConversationId,
        /// Why.
        reason: String,
    },
    /// A Welcome was refused because it would have changed a conversation
    /// this installation holds: from someone who was not a member of it,
    /// with other immutable metadata, a DM with other members or in
    /// another mode. Nothing changed; it may be an attack.
    WelcomeRefused {
        /// Why.
        reason: String,
    },
    /// The stream fell behind and this many events were lost to it (the
    /// client keeps the last 4,096 for slow readers). Nothing is lost from
    /// the store: re-read what the application shows (messages with
    /// [`Conversation::find_messages`](crate::Conversation::find_messages),
    /// conversations with
    /// [`Client::list_conversations`](crate::Client::list_conversations)).
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
}

impl Event {
    /// The conversation it is about; `None` for [`Event::WelcomeRefused`]
    /// and [`Event::Lagged`], which are about none in particular.
    pub fn conversation(&self) -> Option<&ConversationId> {
        match self {
            Event::Message(m) => Some(&m.conversation),
            Event::MembersChanged { conversation, .. }
            | Event::MetadataChanged { conversation, .. }
            | Event::Joined { conversation }
            | Event::Removed { conversation }
            | Event::ChangeFailed { conversation, .. }
            | Event::CommitRejected { conversation, .. }
            | Event::MessageSuperseded { conversation, .. }
            | Event::MessageConfirmed { conversation, .. }
            | Event::MessageFailed { conversation, .. }
            | Event::RolledBack { conversation, .. }
            | Event::Forked { conversation, .. }
            | Event::Rejoined { conversation, .. }
            | Event::MemberVerified { conversation, .. }
            | Event::VerificationFailed { conversation, .. }
            | Event::EnvelopeSkipped { conversation, .. } => Some(conversation),
            Event::WelcomeRefused { .. } | Event::Lagged { .. } => None,
        }
    }

    /// The public event for an engine event, if the application should see
    /// it.
    pub(crate) fn from_group(conversation: &ConversationId, event: GroupEvent) -> Option<Self> {
        let conversation = conversation.clone();
        Some(match event {
            GroupEvent::Message(m) => Event::Message(m.into()),
            GroupEvent::MembersChanged { by, added, removed } => Event::MembersChanged {
                conversation,
                by,
                added,
                removed,
            },
            GroupEvent::MetadataChanged { by, metadata } => Event::MetadataChanged {
                conversation,
                by,
                metadata: Metadata::from(&*metadata),
            },
            GroupEvent::IntentFailed { reason, .. } => Event::ChangeFailed {
                conversation,
                reason,
            },
            GroupEvent::CommitRejected { reason } => Event::CommitRejected {
                conversation,
                reason,
            },
            GroupEvent::Removed => Event::Removed { conversation },
            GroupEvent::MessageSuperseded { message_id } => Event::MessageSuperseded {
                conversation,
                id: MessageId(message_id),
            },
            GroupEvent::MessageConfirmed { message_id } => Event::MessageConfirmed {
                conversation,
                id: MessageId(message_id),
            },
            GroupEvent::MessageFailed { message_id, reason } => Event::MessageFailed {
                conversation,
                id: MessageId(message_id),
                reason,
            },
            GroupEvent::RolledBack {
                to_epoch,
                replayed,
                stats,
            } => Event::RolledBack {
                conversation,
                to_epoch,
                replayed,
                rollbacks: stats.rollbacks,
                max_snapshot_age_ms: stats.max_snapshot_age_ms,
            },
            GroupEvent::Forked { reason, .. } => Event::Forked {
                conversation,
                reason,
            },
            GroupEvent::Rejoined { epoch, .. } => Event::Rejoined {
                conversation,
                epoch,
            },
            GroupEvent::MemberVerified {
                inbox,
                installation,
            } => Event::MemberVerified {
                conversation,
                inbox,
                installation,
            },
            GroupEvent::BindingFailed { reason } => Event::VerificationFailed {
                conversation,
                reason,
            },
            GroupEvent::EnvelopeSkipped { reason } => Event::EnvelopeSkipped {
                conversation,
                reason,
            },
            _ => return None,
        })
    }
}
