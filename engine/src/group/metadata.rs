//! Group metadata: the Kith GroupContext extensions of DESIGN.md section 5,
//! their prost wire format, their limits, and the policy presets.
//!
//! The domain types here are what the engine reasons with; the `wire`
//! structs are private, so that a schema change stays inside this file.
//! Decoding never trusts its input: unknown enum values, malformed inbox ids
//! and over-long attributes are errors, not panics.

use std::collections::{BTreeMap, BTreeSet};

use openmls::prelude::{
    CredentialType, Extension, ExtensionType, Extensions, GroupContext,
    RequiredCapabilitiesExtension, UnknownExtension,
};
use prost::Message as _;

pub use super::gating::{
    Admission, Gating, GatingRule, MAX_GATING_RULE_LEN, MAX_GATING_RULES, Require, TokenRule,
};
use super::gating::{decode_gating, encode_gating};
use crate::identity::{
    DmMode, InboxId, KITH_CREDENTIAL_TYPE, KITH_EXTENSION_TYPES, PSEUDONYM_CREDENTIAL_TYPE,
};

/// Extension type of the immutable metadata.
pub const IMMUTABLE_METADATA_EXTENSION: u16 = KITH_EXTENSION_TYPES[0];
/// Extension type of the mutable metadata.
pub const MUTABLE_METADATA_EXTENSION: u16 = KITH_EXTENSION_TYPES[1];
/// Extension type of the policies.
pub const POLICIES_EXTENSION: u16 = KITH_EXTENSION_TYPES[2];
/// Extension type of the membership record.
pub const MEMBERSHIP_EXTENSION: u16 = KITH_EXTENSION_TYPES[3];
/// Extension type of the gating rules.
pub const GATING_EXTENSION: u16 = KITH_EXTENSION_TYPES[4];

/// The attribute holding a group's name.
pub const ATTRIBUTE_NAME: &str = "name";
/// The attribute holding a group's description.
pub const ATTRIBUTE_DESCRIPTION: &str = "description";
/// The attribute holding a group's image URL.
pub const ATTRIBUTE_IMAGE_URL: &str = "image_url";
/// The attribute holding opaque application data.
pub const ATTRIBUTE_APP_DATA: &str = "app_data";

/// The longest attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 64;
/// The most attributes a group may carry.
pub const MAX_ATTRIBUTES: usize = 32;
/// The most admins (and, separately, super admins) a group may list.
pub const MAX_ADMINS: usize = 100;
/// The longest legacy conversation id, in bytes.
pub const MAX_LEGACY_ID_LEN: usize = 256;
/// The most entries of legacy metadata, and the longest value in bytes
/// (keys are bounded like attribute keys).
pub const MAX_LEGACY_METADATA: usize = 32;
/// The longest value of legacy metadata, in bytes.
pub const MAX_LEGACY_VALUE_LEN: usize = 1024;

/// The longest value `key` may have, in bytes.
pub fn max_attribute_len(key: &str) -> usize {
    match key {
        ATTRIBUTE_NAME => 256,
        ATTRIBUTE_DESCRIPTION => 2048,
        ATTRIBUTE_IMAGE_URL => 2048,
        ATTRIBUTE_APP_DATA => 8192,
        _ => 1024,
    }
}

pub use super::error::MetadataError;

/// Whether a conversation is a group or a 1:1 chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConversationKind {
    /// A group chat.
    Group,
    /// A 1:1 chat between two inboxes.
    Dm,
}

/// The metadata fixed at creation (extension `0xff10`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImmutableMetadata {
    /// Group or DM.
    pub kind: ConversationKind,
    /// Who created it.
    pub creator: InboxId,
    /// For a DM, its two inboxes in ascending order.
    pub dm_members: Option<(InboxId, InboxId)>,
    /// For a DM, whether it can be denied; `None` for a group, which is
    /// always non-repudiable (see [`ImmutableMetadata::deniable`]).
    pub dm_mode: Option<DmMode>,
    /// When it was created, ms since the Unix epoch (the creator's clock).
    pub created_at_ms: u64,
    /// The conversation of an older protocol this one continues (a
    /// migrated conversation), fixed for the conversation's life.
    pub legacy: Option<LegacyConversation>,
}

/// A conversation of an older protocol (an XMTP V2 topic, say) that a
/// Kith conversation continues: its id, and the metadata it came with.
/// Part of the immutable metadata, so every member checks on every commit
/// and Welcome that it never changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LegacyConversation {
    /// Its id in the older protocol.
    pub id: String,
    /// What the older protocol kept with it (its context metadata).
    pub metadata: BTreeMap<String, String>,
}

impl ImmutableMetadata {
    /// Whether the conversation is a deniable DM. Groups never are.
    pub fn deniable(&self) -> bool {
        self.kind == ConversationKind::Dm && self.dm_mode == Some(DmMode::Deniable)
    }
}

/// The metadata members may change (extension `0xff11`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MutableMetadata {
    /// String attributes: name, description, image URL, app data, ...
    pub attributes: BTreeMap<String, String>,
    /// Admins.
    pub admins: BTreeSet<InboxId>,
    /// Super admins (who may also manage admins and policies).
    pub super_admins: BTreeSet<InboxId>,
}

/// Who may do something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// A member's standing in a group, as policies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// An ordinary member.
    Member,
    /// An admin.
    Admin,
    /// A super admin.
    SuperAdmin,
}

impl Permission {
    /// Whether a member with `role` is allowed.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Permission::Allow => true,
            Permission::Deny => false,
            Permission::AdminOnly => role >= Role::Admin,
            Permission::SuperAdminOnly => role == Role::SuperAdmin,
        }
    }

    fn to_wire(self) -> i32 {
        match self {
            Permission::Allow => 1,
            Permission::Deny => 2,
            Permission::AdminOnly => 3,
            Permission::SuperAdminOnly => 4,
        }
    }

    fn from_wire(value: i32) -> Result<Self, MetadataError> {
        Ok(match value {
            1 => Permission::Allow,
            2 => Permission::Deny,
            3 => Permission::AdminOnly,
            4 => Permission::SuperAdminOnly,
            other => {
                return Err(MetadataError::Malformed {
                    extension: "policies",
                    reason: format!("unknown permission {other}"),
                });
            }
        })
    }
}

/// Per-action permissions (extension `0xff12`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    /// Adding a new inbox.
    pub add_member: Permission,
    /// Removing an inbox (all its installations).
    pub remove_member: Permission,
    /// Updating an attribute with no entry in `update_attribute`.
    pub update_attribute_default: Permission,
    /// Updating specific attributes.
    pub update_attribute: BTreeMap<String, Permission>,
    /// Adding or removing admins. Super admins are always managed by super
    /// admins only.
    pub manage_admins: Permission,
    /// Changing these policies or the gating rules.
    pub change_policies: Permission,
}

/// The policy presets a group is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyPreset {
    /// Anyone may add members and edit attributes; admins remove members;
    /// super admins manage admins and policies.
    #[default]
    Default,
    /// Only admins add and remove members and edit attributes.
    AdminsOnly,
}

impl Policies {
    /// The policies of `preset`.
    pub fn preset(preset: PolicyPreset) -> Self {
        let (add, attrs) = match preset {
            PolicyPreset::Default => (Permission::Allow, Permission::Allow),
            PolicyPreset::AdminsOnly => (Permission::AdminOnly, Permission::AdminOnly),
        };
        Self {
            add_member: add,
            remove_member: Permission::AdminOnly,
            update_attribute_default: attrs,
            update_attribute: BTreeMap::new(),
            manage_admins: Permission::SuperAdminOnly,
            change_policies: Permission::SuperAdminOnly,
        }
    }

    /// The policies of a DM: nobody adds or removes inboxes, admins do not
    /// exist, and both sides may edit attributes.
    pub fn dm() -> Self {
        Self {
            add_member: Permission::Deny,
            remove_member: Permission::Deny,
            update_attribute_default: Permission::Allow,
            update_attribute: BTreeMap::new(),
            manage_admins: Permission::Deny,
            change_policies: Permission::Deny,
        }
    }

    /// The permission for updating attribute `key`.
    pub fn attribute(&self, key: &str) -> Permission {
        self.update_attribute
            .get(key)
            .copied()
            .unwrap_or(self.update_attribute_default)
    }
}

/// All of a group's Kith metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// Fixed at creation.
    pub immutable: ImmutableMetadata,
    /// Attributes and admins.
    pub mutable: MutableMetadata,
    /// Permissions.
    pub policies: Policies,
    /// Inbox -> identity-log sequence number the group is caught up to
    /// (extension `0xff13`).
    pub membership: BTreeMap<InboxId, u64>,
    /// Gating rules, and the admissions of the last commit that added
    /// inboxes (extension `0xff14`).
    pub gating: Gating,
}

impl GroupMetadata {
    /// The role of `inbox`.
    pub fn role(&self, inbox: &InboxId) -> Role {
        if self.mutable.super_admins.contains(inbox) {
            Role::SuperAdmin
        } else if self.mutable.admins.contains(inbox) {
            Role::Admin
        } else {
            Role::Member
        }
    }

    /// The group's name, if set.
    pub fn name(&self) -> Option<&str> {
        self.mutable
            .attributes
            .get(ATTRIBUTE_NAME)
            .map(String::as_str)
    }

    /// The group's description, if set.
    pub fn description(&self) -> Option<&str> {
        self.mutable
            .attributes
            .get(ATTRIBUTE_DESCRIPTION)
            .map(String::as_str)
    }

    /// Check every documented limit.
    pub fn check_limits(&self) -> Result<(), MetadataError> {
        if let Some(legacy) = &self.immutable.legacy {
            if legacy.id.is_empty() || legacy.id.len() > MAX_LEGACY_ID_LEN {
                return Err(MetadataError::TooLong {
                    what: "the legacy conversation id (1 byte at least)".into(),
                    len: legacy.id.len(),
                    limit: MAX_LEGACY_ID_LEN,
                });
            }
            if legacy.metadata.len() > MAX_LEGACY_METADATA {
                return Err(MetadataError::TooLong {
                    what: "the number of legacy metadata entries".into(),
                    len: legacy.metadata.len(),
                    limit: MAX_LEGACY_METADATA,
                });
            }
            for (key, value) in &legacy.metadata {
                let (what, len, limit) = if key.len() > MAX_ATTRIBUTE_KEY_LEN {
                    ("key", key.len(), MAX_ATTRIBUTE_KEY_LEN)
                } else {
                    ("value", value.len(), MAX_LEGACY_VALUE_LEN)
                };
                if len > limit {
                    return Err(MetadataError::TooLong {
                        what: format!("legacy metadata {what} of {key:?}"),
                        len,
                        limit,
                    });
                }
            }
        }
        let attributes = &self.mutable.attributes;
        if attributes.len() > MAX_ATTRIBUTES {
            return Err(MetadataError::TooLong {
                what: "the number of attributes".into(),
                len: attributes.len(),
                limit: MAX_ATTRIBUTES,
            });
        }
        for (key, value) in attributes {
            if key.len() > MAX_ATTRIBUTE_KEY_LEN {
                return Err(MetadataError::TooLong {
                    what: format!("attribute key {key:?}"),
                    len: key.len(),
                    limit: MAX_ATTRIBUTE_KEY_LEN,
                });
            }
            let limit = max_attribute_len(key);
            if value.len() > limit {
                return Err(MetadataError::TooLong {
                    what: format!("attribute {key:?}"),
                    len: value.len(),
                    limit,
                });
            }
        }
        for (what, list) in [
            ("the admin list", &self.mutable.admins),
            ("the super-admin list", &self.mutable.super_admins),
        ] {
            if list.len() > MAX_ADMINS {
                return Err(MetadataError::TooLong {
                    what: what.into(),
                    len: list.len(),
                    limit: MAX_ADMINS,
                });
            }
        }
        self.gating.check_limits()
    }

    /// Read the metadata out of a group context's extensions.
    pub fn from_extensions(extensions: &Extensions<GroupContext>) -> Result<Self, MetadataError> {
        let find = |ty: u16, name: &'static str| -> Result<&[u8], MetadataError> {
            extensions
                .unknown(ty)
                .map(|e| e.0.as_slice())
                .ok_or(MetadataError::Missing(name))
        };
        let immutable =
            decode_immutable(find(IMMUTABLE_METADATA_EXTENSION, "immutable metadata")?)?;
        let mutable = decode_mutable(find(MUTABLE_METADATA_EXTENSION, "mutable metadata")?)?;
        let policies = decode_policies(find(POLICIES_EXTENSION, "policies")?)?;
        let membership = decode_membership(find(MEMBERSHIP_EXTENSION, "membership")?)?;
        let gating = decode_gating(find(GATING_EXTENSION, "gating rules")?)?;
        let metadata = Self {
            immutable,
            mutable,
            policies,
            membership,
            gating,
        };
        metadata.check_limits()?;
        Ok(metadata)
    }

    /// The group-context extensions carrying this metadata, plus the
    /// required-capabilities extension that makes every member support them.
    pub fn to_extensions(&self) -> Extensions<GroupContext> {
        let unknown = |ty: u16, bytes: Vec<u8>| Extension::Unknown(ty, UnknownExtension(bytes));
        let required = RequiredCapabilitiesExtension::new(
            &KITH_EXTENSION_TYPES
                .iter()
                .map(|t| ExtensionType::Unknown(*t))
                .collect::<Vec<_>>(),
            &[],
            // A deniable DM's leaves carry pseudonyms, everyone else's the
            // Kith credential.
            &[CredentialType::Other(if self.immutable.deniable() {
                PSEUDONYM_CREDENTIAL_TYPE
            } else {
                KITH_CREDENTIAL_TYPE
            })],
        );
        let list = vec![
            Extension::RequiredCapabilities(required),
            unknown(
                IMMUTABLE_METADATA_EXTENSION,
                encode_immutable(&self.immutable),
            ),
            unknown(MUTABLE_METADATA_EXTENSION, encode_mutable(&self.mutable)),
            unknown(POLICIES_EXTENSION, encode_policies(&self.policies)),
            unknown(MEMBERSHIP_EXTENSION, encode_membership(&self.membership)),
            unknown(GATING_EXTENSION, encode_gating(&self.gating)),
        ];
        // Each type appears once, and all are valid in a group context, so
        // this cannot fail; fall back to an empty set rather than panic.
        Extensions::from_vec(list).unwrap_or_default()
    }
}

mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Immutable {
        #[prost(uint32, tag = "1")]
        pub kind: u32,
        #[prost(bytes = "vec", tag = "2")]
        pub creator: Vec<u8>,
        #[prost(bytes = "vec", repeated, tag = "3")]
        pub dm_members: Vec<Vec<u8>>,
        #[prost(uint64, tag = "4")]
        pub created_at_ms: u64,
        #[prost(string, optional, tag = "5")]
        pub legacy_conversation_id: Option<String>,
        /// 1 non-repudiable, 2 deniable; 0 (absent) for a group.
        #[prost(uint32, tag = "6")]
        pub dm_mode: u32,
        /// The legacy conversation's metadata; empty without a legacy id.
        #[prost(btree_map = "string, string", tag = "7")]
        pub legacy_metadata: std::collections::BTreeMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Mutable {
        #[prost(btree_map = "string, string", tag = "1")]
        pub attributes: std::collections::BTreeMap<String, String>,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub admins: Vec<Vec<u8>>,
        #[prost(bytes = "vec", repeated, tag = "3")]
        pub super_admins: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Policies {
        #[prost(int32, tag = "1")]
        pub add_member: i32,
        #[prost(int32, tag = "2")]
        pub remove_member: i32,
        #[prost(int32, tag = "3")]
        pub update_attribute_default: i32,
        #[prost(btree_map = "string, int32", tag = "4")]
        pub update_attribute: std::collections::BTreeMap<String, i32>,
        #[prost(int32, tag = "5")]
        pub manage_admins: i32,
        #[prost(int32, tag = "6")]
        pub change_policies: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct MemberEntry {
        #[prost(bytes = "vec", tag = "1")]
        pub inbox: Vec<u8>,
        #[prost(uint64, tag = "2")]
        pub sequence: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Membership {
        #[prost(message, repeated, tag = "1")]
        pub members: Vec<MemberEntry>,
    }
}

fn malformed(extension: &'static str) -> impl Fn(prost::DecodeError) -> MetadataError {
    move |e| MetadataError::Malformed {
        extension,
        reason: e.to_string(),
    }
}

fn inbox(bytes: &[u8], extension: &'static str) -> Result<InboxId, MetadataError> {
    let raw: [u8; 20] = bytes.try_into().map_err(|_| MetadataError::Malformed {
        extension,
        reason: format!("an inbox id is 20 bytes, not {}", bytes.len()),
    })?;
    Ok(InboxId::from_bytes(raw))
}

fn inbox_set(
    list: &[Vec<u8>],
    extension: &'static str,
) -> Result<BTreeSet<InboxId>, MetadataError> {
    list.iter().map(|b| inbox(b, extension)).collect()
}

fn encode_immutable(m: &ImmutableMetadata) -> Vec<u8> {
    wire::Immutable {
        kind: match m.kind {
            ConversationKind::Group => 1,
            ConversationKind::Dm => 2,
        },
        creator: m.creator.as_bytes().to_vec(),
        dm_members: m
            .dm_members
            .iter()
            .flat_map(|(a, b)| [a.as_bytes().to_vec(), b.as_bytes().to_vec()])
            .collect(),
        created_at_ms: m.created_at_ms,
        legacy_conversation_id: m.legacy.as_ref().map(|l| l.id.clone()),
        legacy_metadata: m
            .legacy
            .as_ref()
            .map(|l| l.metadata.clone())
            .unwrap_or_default(),
        dm_mode: match m.dm_mode {
            None => 0,
            Some(DmMode::NonRepudiable) => 1,
            Some(DmMode::Deniable) => 2,
        },
    }
    .encode_to_vec()
}

fn decode_immutable(bytes: &[u8]) -> Result<ImmutableMetadata, MetadataError> {
    const EXT: &str = "immutable metadata";
    let w = wire::Immutable::decode(bytes).map_err(malformed(EXT))?;
    let kind = match w.kind {
        1 => ConversationKind::Group,
        2 => ConversationKind::Dm,
        other => {
            return Err(MetadataError::Malformed {
                extension: EXT,
                reason: format!("unknown conversation kind {other}"),
            });
        }
    };
    let dm_members = match (kind, w.dm_members.as_slice()) {
        (ConversationKind::Group, []) => None,
        (ConversationKind::Dm, [a, b]) => {
            let (a, b) = (inbox(a, EXT)?, inbox(b, EXT)?);
            if a >= b {
                return Err(MetadataError::Malformed {
                    extension: EXT,
                    reason: "a DM names two distinct inboxes in ascending order".into(),
                });
            }
            Some((a, b))
        }
        _ => {
            return Err(MetadataError::Malformed {
                extension: EXT,
                reason: "a DM names exactly two inboxes and a group none".into(),
            });
        }
    };
    let dm_mode = match (kind, w.dm_mode) {
        (ConversationKind::Group, 0) => None,
        (ConversationKind::Dm, 1) => Some(DmMode::NonRepudiable),
        (ConversationKind::Dm, 2) => Some(DmMode::Deniable),
        (ConversationKind::Group, _) => {
            return Err(MetadataError::Malformed {
                extension: EXT,
                reason: "a group has no DM mode: groups are always non-repudiable".into(),
            });
        }
        (ConversationKind::Dm, other) => {
            return Err(MetadataError::Malformed {
                extension: EXT,
                reason: format!("unknown DM mode {other}"),
            });
        }
    };
    Ok(ImmutableMetadata {
        kind,
        creator: inbox(&w.creator, EXT)?,
        dm_members,
        dm_mode,
        created_at_ms: w.created_at_ms,
        legacy: match (w.legacy_conversation_id, w.legacy_metadata) {
            (Some(id), metadata) => Some(LegacyConversation { id, metadata }),
            (None, metadata) if metadata.is_empty() => None,
            (None, _) => {
                return Err(MetadataError::Malformed {
                    extension: EXT,
                    reason: "legacy metadata without a legacy conversation id".into(),
                });
            }
        },
    })
}

fn encode_mutable(m: &MutableMetadata) -> Vec<u8> {
    wire::Mutable {
        attributes: m.attributes.clone(),
        admins: m.admins.iter().map(|i| i.as_bytes().to_vec()).collect(),
        super_admins: m
            .super_admins
            .iter()
            .map(|i| i.as_bytes().to_vec())
            .collect(),
    }
    .encode_to_vec()
}

fn decode_mutable(bytes: &[u8]) -> Result<MutableMetadata, MetadataError> {
    const EXT: &str = "mutable metadata";
    let w = wire::Mutable::decode(bytes).map_err(malformed(EXT))?;
    Ok(MutableMetadata {
        attributes: w.attributes,
        admins: inbox_set(&w.admins, EXT)?,
        super_admins: inbox_set(&w.super_admins, EXT)?,
    })
}

/// The policies extension's encoding of `p`.
pub fn encode_policies(p: &Policies) -> Vec<u8> {
    wire::Policies {
        add_member: p.add_member.to_wire(),
        remove_member: p.remove_member.to_wire(),
        update_attribute_default: p.update_attribute_default.to_wire(),
        update_attribute: p
            .update_attribute
            .iter()
            .map(|(k, v)| (k.clone(), v.to_wire()))
            .collect(),
        manage_admins: p.manage_admins.to_wire(),
        change_policies: p.change_policies.to_wire(),
    }
    .encode_to_vec()
}

fn decode_policies(bytes: &[u8]) -> Result<Policies, MetadataError> {
    let w = wire::Policies::decode(bytes).map_err(malformed("policies"))?;
    if w.update_attribute.len() > MAX_ATTRIBUTES {
        return Err(MetadataError::TooLong {
            what: "the number of attribute policies".into(),
            len: w.update_attribute.len(),
            limit: MAX_ATTRIBUTES,
        });
    }
    Ok(Policies {
        add_member: Permission::from_wire(w.add_member)?,
        remove_member: Permission::from_wire(w.remove_member)?,
        update_attribute_default: Permission::from_wire(w.update_attribute_default)?,
        update_attribute: w
            .update_attribute
            .into_iter()
            .map(|(k, v)| Ok((k, Permission::from_wire(v)?)))
            .collect::<Result<_, MetadataError>>()?,
        manage_admins: Permission::from_wire(w.manage_admins)?,
        change_policies: Permission::from_wire(w.change_policies)?,
    })
}

fn encode_membership(m: &BTreeMap<InboxId, u64>) -> Vec<u8> {
    wire::Membership {
        members: m
            .iter()
            .map(|(inbox, sequence)| wire::MemberEntry {
                inbox: inbox.as_bytes().to_vec(),
                sequence: *sequence,
            })
            .collect(),
    }
    .encode_to_vec()
}

fn decode_membership(bytes: &[u8]) -> Result<BTreeMap<InboxId, u64>, MetadataError> {
    const EXT: &str = "membership";
    let w = wire::Membership::decode(bytes).map_err(malformed(EXT))?;
    let mut out = BTreeMap::new();
    for entry in w.members {
        if out
            .insert(inbox(&entry.inbox, EXT)?, entry.sequence)
            .is_some()
        {
            return Err(MetadataError::Malformed {
                extension: EXT,
                reason: "an inbox is listed twice".into(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GroupMetadata {
        let a = InboxId::from_bytes([1; 20]);
        let b = InboxId::from_bytes([2; 20]);
        GroupMetadata {
            immutable: ImmutableMetadata {
                kind: ConversationKind::Dm,
                creator: a,
                dm_members: Some((a, b)),
                dm_mode: Some(DmMode::Deniable),
                created_at_ms: 7,
                legacy: Some(LegacyConversation {
                    id: "legacy".into(),
                    metadata: BTreeMap::from([("topic".into(), "/xmtp/0/m-1/proto".into())]),
                }),
            },
            mutable: MutableMetadata {
                attributes: [("name".to_string(), "x".to_string())].into(),
                admins: [b].into(),
                super_admins: [a].into(),
            },
            policies: Policies::preset(PolicyPreset::AdminsOnly),
            membership: [(a, 1), (b, 3)].into(),
            gating: Gating {
                rules: vec![GatingRule {
                    kind: "erc20".into(),
                    data: vec![1, 2],
                }],
                require: Require::Any,
                admissions: vec![Admission {
                    inbox: b,
                    rules_digest: [4; 32],
                    evidence: vec![b"block 19000000".to_vec()],
                }],
            },
        }
    }

    #[test]
    fn round_trips_through_extensions() {
        let metadata = sample();
        let back = GroupMetadata::from_extensions(&metadata.to_extensions());
        assert_eq!(back, Ok(metadata));
    }

    #[test]
    fn rejects_bad_bytes_and_limits() {
        let mut extensions = sample().to_extensions();
        extensions
            .add_or_replace(Extension::Unknown(
                POLICIES_EXTENSION,
                UnknownExtension(vec![0x08, 0x09]),
            ))
            .ok();
        assert!(matches!(
            GroupMetadata::from_extensions(&extensions),
            Err(MetadataError::Malformed {
                extension: "policies",
                ..
            })
        ));

        let mut long = sample();
        long.mutable
            .attributes
            .insert(ATTRIBUTE_NAME.into(), "n".repeat(257));
        assert!(matches!(
            GroupMetadata::from_extensions(&long.to_extensions()),
            Err(MetadataError::TooLong { limit: 256, .. })
        ));
    }

    #[test]
    fn a_dm_records_its_mode_and_a_group_has_none() {
        for mode in [DmMode::Deniable, DmMode::NonRepudiable] {
            let mut metadata = sample();
            metadata.immutable.dm_mode = Some(mode);
            let back = GroupMetadata::from_extensions(&metadata.to_extensions()).expect("decode");
            assert_eq!(back.immutable.dm_mode, Some(mode));
            assert_eq!(back.immutable.deniable(), mode == DmMode::Deniable);
        }

        let with_mode = |kind, dm_members, dm_mode| {
            let mut metadata = sample();
            metadata.immutable.kind = kind;
            metadata.immutable.dm_members = dm_members;
            metadata.immutable.dm_mode = dm_mode;
            GroupMetadata::from_extensions(&metadata.to_extensions())
        };
        let pair = sample().immutable.dm_members;
        // A group cannot be made deniable, and a DM must say what it is.
        for (kind, members, mode) in [
            (ConversationKind::Group, None, Some(DmMode::Deniable)),
            (ConversationKind::Group, None, Some(DmMode::NonRepudiable)),
            (ConversationKind::Dm, pair, None),
        ] {
            assert!(
                matches!(
                    with_mode(kind, members, mode),
                    Err(MetadataError::Malformed {
                        extension: "immutable metadata",
                        ..
                    })
                ),
                "{kind:?} with mode {mode:?} was accepted"
            );
        }
        let group = with_mode(ConversationKind::Group, None, None).expect("a group");
        assert!(!group.immutable.deniable());
    }

    /// A legacy id out of bounds, or legacy metadata without an id, in a
    /// received group context (a member's altered client wrote it) is
    /// refused when decoded, as the other limits are.
    #[test]
    fn a_received_legacy_conversation_out_of_bounds_is_refused() {
        let mut metadata = sample();
        if let Some(legacy) = metadata.immutable.legacy.as_mut() {
            legacy.id = "x".repeat(MAX_LEGACY_ID_LEN + 1);
        }
        assert!(matches!(
            GroupMetadata::from_extensions(&metadata.to_extensions()),
            Err(MetadataError::TooLong { .. })
        ));
        let mut metadata = sample();
        if let Some(legacy) = metadata.immutable.legacy.as_mut() {
            legacy
                .metadata
                .insert("big".into(), "v".repeat(MAX_LEGACY_VALUE_LEN + 1));
        }
        assert!(matches!(
            GroupMetadata::from_extensions(&metadata.to_extensions()),
            Err(MetadataError::TooLong { .. })
        ));
        let orphan = wire::Immutable {
            kind: 1,
            creator: vec![1; 20],
            legacy_metadata: BTreeMap::from([("k".into(), "v".into())]),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(
            decode_immutable(&orphan),
            Err(MetadataError::Malformed { .. })
        ));
    }

    #[test]
    fn permissions_follow_roles() {
        assert!(Permission::AdminOnly.allows(Role::Admin));
        assert!(!Permission::AdminOnly.allows(Role::Member));
        assert!(!Permission::SuperAdminOnly.allows(Role::Admin));
        assert!(!Permission::Deny.allows(Role::SuperAdmin));
        assert!(Permission::Allow.allows(Role::Member));
    }
}
