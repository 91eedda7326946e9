//! The records and enums that cross the boundary, each converted from (or
//! to) the `kith` type of the same name and nothing more.
//!
//! Ids are strings: inbox ids as EIP-55 addresses, every other id as
//! lowercase hex. [`parse_inbox`], [`parse_conversation`] and
//! [`parse_message_id`] turn a foreign string back into an id, and
//! [`fixed_bytes`] foreign bytes into a fixed-size array, or into
//! `KithError::InvalidInput`.
//!
//! The records of the newer areas have modules of their own: content
//! types in [`content`](crate::content), message and conversation queries
//! in [`query`](crate::query), token gating in [`gating`](crate::gating).

use std::collections::HashMap;

use kith::{ConversationId, InboxId, MessageId};

use crate::{Gating, KithError};

/// An inbox id from a foreign string.
pub(crate) fn parse_inbox(inbox: &str) -> Result<InboxId, KithError> {
    inbox
        .parse()
        .map_err(|e| KithError::InvalidInput(format!("inbox id {inbox:?}: {e}")))
}

/// Inbox ids from foreign strings; the first bad one fails the call.
pub(crate) fn parse_inboxes(inboxes: &[String]) -> Result<Vec<InboxId>, KithError> {
    inboxes.iter().map(|i| parse_inbox(i)).collect()
}

/// A conversation id from lowercase or uppercase hex.
pub(crate) fn parse_conversation(id: &str) -> Result<ConversationId, KithError> {
    hex::decode(id)
        .map(ConversationId)
        .map_err(|e| KithError::InvalidInput(format!("conversation id {id:?} is not hex: {e}")))
}

/// A message id from 64 hex digits.
pub(crate) fn parse_message_id(id: &str) -> Result<MessageId, KithError> {
    hex::decode(id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .map(MessageId)
        .ok_or_else(|| KithError::InvalidInput(format!("message id {id:?} is not 64 hex digits")))
}

/// `bytes` as an array of exactly `N` bytes; `what` names it in the error.
pub(crate) fn fixed_bytes<const N: usize>(what: &str, bytes: &[u8]) -> Result<[u8; N], KithError> {
    bytes.try_into().map_err(|_| {
        KithError::InvalidInput(format!("{what} must be {N} bytes, not {}", bytes.len()))
    })
}

/// Group or DM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConversationKind {
    /// A group chat.
    Group,
    /// A 1:1 chat between two inboxes.
    Dm,
}

impl From<kith::ConversationKind> for ConversationKind {
    fn from(kind: kith::ConversationKind) -> Self {
        match kind {
            kith::ConversationKind::Group => Self::Group,
            kith::ConversationKind::Dm => Self::Dm,
        }
    }
}

impl From<ConversationKind> for kith::ConversationKind {
    fn from(kind: ConversationKind) -> Self {
        match kind {
            ConversationKind::Group => Self::Group,
            ConversationKind::Dm => Self::Dm,
        }
    }
}

/// How a DM proves who is in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, uniffi::Enum)]
pub enum DmMode {
    /// Identity bound by MACs either side could have made: a leaked
    /// transcript proves nothing to a third party. The default.
    #[default]
    Deniable,
    /// Every message signed by a key the sender's wallet vouched for.
    NonRepudiable,
}

impl From<kith::DmMode> for DmMode {
    fn from(mode: kith::DmMode) -> Self {
        match mode {
            kith::DmMode::Deniable => Self::Deniable,
            kith::DmMode::NonRepudiable => Self::NonRepudiable,
        }
    }
}

impl From<DmMode> for kith::DmMode {
    fn from(mode: DmMode) -> Self {
        match mode {
            DmMode::Deniable => Self::Deniable,
            DmMode::NonRepudiable => Self::NonRepudiable,
        }
    }
}

/// Whether a deniable DM's members have proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum DmVerification {
    /// Not every binding has arrived or been checked: messages out wait.
    Pending,
    /// Every member is bound to one of the two inboxes.
    Verified,
    /// A binding did not verify: nothing is sent; tell the user.
    Failed {
        /// Why.
        reason: String,
    },
}

impl From<kith::DmVerification> for DmVerification {
    fn from(v: kith::DmVerification) -> Self {
        match v {
            kith::DmVerification::Pending => Self::Pending,
            kith::DmVerification::Verified => Self::Verified,
            kith::DmVerification::Failed(reason) => Self::Failed { reason },
        }
    }
}

/// Who may make a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Permission {
    /// Any member.
    Allow,
    /// Nobody.
    Deny,
    /// Admins and super admins.
    AdminOnly,
    /// Super admins only.
    SuperAdminOnly,
}

impl From<Permission> for kith::Permission {
    fn from(p: Permission) -> Self {
        match p {
            Permission::Allow => Self::Allow,
            Permission::Deny => Self::Deny,
            Permission::AdminOnly => Self::AdminOnly,
            Permission::SuperAdminOnly => Self::SuperAdminOnly,
        }
    }
}

/// The policies a group starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, uniffi::Enum)]
pub enum PolicyPreset {
    /// Anyone adds members and edits attributes; admins remove members;
    /// super admins manage admins and policies.
    #[default]
    Default,
    /// Only admins add and remove members and edit attributes.
    AdminsOnly,
}

impl From<PolicyPreset> for kith::PolicyPreset {
    fn from(p: PolicyPreset) -> Self {
        match p {
            PolicyPreset::Default => Self::Default,
            PolicyPreset::AdminsOnly => Self::AdminsOnly,
        }
    }
}

/// A group's policies, for `KithConversation::set_policies`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Policies {
    /// Adding a new inbox.
    pub add_member: Permission,
    /// Removing an inbox.
    pub remove_member: Permission,
    /// Updating an attribute with no entry in `update_attribute`.
    pub update_attribute_default: Permission,
    /// Updating specific attributes.
    #[uniffi(default)]
    pub update_attribute: HashMap<String, Permission>,
    /// Adding or removing admins.
    pub manage_admins: Permission,
    /// Changing the policies.
    pub change_policies: Permission,
}

impl From<Policies> for kith::Policies {
    fn from(p: Policies) -> Self {
        Self {
            add_member: p.add_member.into(),
            remove_member: p.remove_member.into(),
            update_attribute_default: p.update_attribute_default.into(),
            update_attribute: p
                .update_attribute
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect(),
            manage_admins: p.manage_admins.into(),
            change_policies: p.change_policies.into(),
        }
    }
}

/// A conversation of an older protocol that a Kith conversation continues
/// (a migration): its id and the metadata it came with. Fixed for the
/// conversation's life; every member checks it on every commit.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct LegacyConversation {
    /// Its id in the older protocol.
    pub id: String,
    /// What the older protocol kept with it.
    #[uniffi(default)]
    pub metadata: HashMap<String, String>,
}

impl From<LegacyConversation> for kith::LegacyConversation {
    fn from(l: LegacyConversation) -> Self {
        Self {
            id: l.id,
            metadata: l.metadata.into_iter().collect(),
        }
    }
}

impl From<kith::LegacyConversation> for LegacyConversation {
    fn from(l: kith::LegacyConversation) -> Self {
        Self {
            id: l.id,
            metadata: l.metadata.into_iter().collect(),
        }
    }
}

/// Options for `KithClient::create_group`; every field may be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct GroupOptions {
    /// The group's name.
    #[uniffi(default)]
    pub name: Option<String>,
    /// Its description.
    #[uniffi(default)]
    pub description: Option<String>,
    /// Its image URL.
    #[uniffi(default)]
    pub image_url: Option<String>,
    /// Other attributes.
    #[uniffi(default)]
    pub attributes: HashMap<String, String>,
    /// The policy preset (default `PolicyPreset.Default`).
    #[uniffi(default)]
    pub preset: Option<PolicyPreset>,
    /// The older protocol's conversation this group continues, if it is a
    /// migration.
    #[uniffi(default)]
    pub legacy: Option<LegacyConversation>,
    /// The rules every inbox added (from the first) must satisfy; none:
    /// the group is not gated. Its `admissions` are ignored.
    #[uniffi(default)]
    pub gating: Option<Gating>,
}

impl TryFrom<GroupOptions> for kith::GroupOptions {
    type Error = KithError;

    /// Fails only on gating rules that do not convert.
    fn try_from(o: GroupOptions) -> Result<Self, KithError> {
        let mut options =
            kith::GroupOptions::default().policies(o.preset.unwrap_or_default().into());
        if let Some(name) = o.name {
            options = options.name(name);
        }
        if let Some(description) = o.description {
            options = options.description(description);
        }
        if let Some(url) = o.image_url {
            options = options.image_url(url);
        }
        // Sorted, so that the same options always make the same group.
        let mut attributes: Vec<_> = o.attributes.into_iter().collect();
        attributes.sort();
        for (key, value) in attributes {
            options = options.attribute(key, value);
        }
        if let Some(legacy) = o.legacy {
            options = options.migrated_from(legacy.into());
        }
        if let Some(gating) = o.gating {
            options = options.gating(gating.try_into()?);
        }
        Ok(options)
    }
}

/// Where a message is in delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Delivery {
    /// Sent by this installation, not yet on the node.
    Unpublished,
    /// On the node.
    Published,
    /// Received only in an epoch that lost to another branch of the
    /// group; it turns back into `Published` when the sender's re-sent
    /// copy arrives.
    Superseded,
    /// Sent by this installation in an epoch that lost, and it could not
    /// be re-sent.
    Failed,
}

impl From<kith::Delivery> for Delivery {
    fn from(d: kith::Delivery) -> Self {
        match d {
            kith::Delivery::Unpublished => Self::Unpublished,
            kith::Delivery::Published => Self::Published,
            kith::Delivery::Superseded => Self::Superseded,
            kith::Delivery::Failed => Self::Failed,
        }
    }
}

impl From<Delivery> for kith::Delivery {
    fn from(d: Delivery) -> Self {
        match d {
            Delivery::Unpublished => Self::Unpublished,
            Delivery::Published => Self::Published,
            Delivery::Superseded => Self::Superseded,
            Delivery::Failed => Self::Failed,
        }
    }
}

/// A message in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Message {
    /// Its id (hex), the same on every member.
    pub id: String,
    /// The conversation (hex).
    pub conversation_id: String,
    /// The sender's inbox.
    pub sender_inbox_id: String,
    /// The sender's installation (hex).
    pub sender_installation_id: String,
    /// The content type (`text/plain` for text).
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
    /// The body as text, if it is text.
    pub text: Option<String>,
    /// The sender's clock when sending, ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// Its place in the conversation, ms since the Unix epoch.
    pub time_ms: u64,
    /// Whether it is on the node.
    pub published: bool,
    /// Where it is in delivery.
    pub delivery: Delivery,
    /// The text its sender gave for clients that do not know its content
    /// type.
    pub fallback: Option<String>,
    /// Whether it belongs in a message list: false for reactions and read
    /// receipts, which an application shows on the messages they refer
    /// to.
    pub is_listed: bool,
    /// Whether its sender is known (false only for a deniable DM message
    /// whose sender has not proved who it is yet).
    pub verified: bool,
}

impl From<kith::Message> for Message {
    fn from(m: kith::Message) -> Self {
        Self {
            text: m.text().map(str::to_owned),
            is_listed: m.is_listed(),
            id: m.id.to_string(),
            conversation_id: m.conversation.to_string(),
            sender_inbox_id: m.sender.to_string(),
            sender_installation_id: m.sender_installation.to_string(),
            content_type: m.content_type,
            body: m.body,
            sent_at_ms: m.sent_at_ms,
            time_ms: m.time_ms,
            published: m.published,
            delivery: m.delivery.into(),
            fallback: m.fallback,
            verified: m.verified,
        }
    }
}

/// A member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Member {
    /// The inbox.
    pub inbox_id: String,
    /// Its installations in the conversation (hex).
    pub installation_ids: Vec<String>,
}

impl From<kith::Member> for Member {
    fn from(m: kith::Member) -> Self {
        Self {
            inbox_id: m.inbox.to_string(),
            installation_ids: m.installations.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A conversation's metadata.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Metadata {
    /// Group or DM.
    pub kind: ConversationKind,
    /// For a DM, its mode; none for a group.
    pub dm_mode: Option<DmMode>,
    /// Who created it.
    pub creator_inbox_id: String,
    /// When, by the creator's clock, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The name, if set.
    pub name: Option<String>,
    /// The description, if set.
    pub description: Option<String>,
    /// Every attribute, name and description included.
    pub attributes: HashMap<String, String>,
    /// Admins' inboxes.
    pub admins: Vec<String>,
    /// Super admins' inboxes.
    pub super_admins: Vec<String>,
    /// The older protocol's conversation this one continues, if migrated.
    pub legacy: Option<LegacyConversation>,
    /// The rules new members must satisfy (none: not gated), and the
    /// admissions of the last commit that added inboxes.
    pub gating: Gating,
}

impl From<kith::Metadata> for Metadata {
    fn from(m: kith::Metadata) -> Self {
        Self {
            kind: m.kind.into(),
            dm_mode: m.dm_mode.map(Into::into),
            creator_inbox_id: m.creator.to_string(),
            created_at_ms: m.created_at_ms,
            name: m.name,
            description: m.description,
            attributes: m.attributes.into_iter().collect(),
            admins: m.admins.iter().map(ToString::to_string).collect(),
            super_admins: m.super_admins.iter().map(ToString::to_string).collect(),
            legacy: m.legacy.map(Into::into),
            gating: m.gating.into(),
        }
    }
}

/// An installation of an inbox: the pair an event names.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct InstallationRef {
    /// The inbox.
    pub inbox_id: String,
    /// The installation (hex).
    pub installation_id: String,
}

impl From<(InboxId, kith::InstallationId)> for InstallationRef {
    fn from((inbox, installation): (InboxId, kith::InstallationId)) -> Self {
        Self {
            inbox_id: inbox.to_string(),
            installation_id: installation.to_string(),
        }
    }
}
