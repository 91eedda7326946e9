//! Typed message content: [`Content`] mirrors `kith::Content` (text,
//! replies, reactions, read receipts, inline and remote attachments, group
//! updates, and types this client does not know), with
//! [`message_content`] to decode a received [`Message`] and
//! [`remote_attachment_encrypt`] / [`remote_attachment_decrypt`] for files
//! uploaded elsewhere.
//!
//! A reply's content is a [`ReplyContent`], not a `Content`: `kith` only
//! lets a reply carry text, an attachment, a remote attachment or a type
//! it does not know (replies do not nest), and a separate enum says so in
//! every language's types, with no recursive type to generate.
//!
//! Message ids are hex, as everywhere; the fixed-size byte fields of a
//! [`RemoteAttachment`] are checked for length when they come back in.

use crate::{
    KithError, Message,
    types::{fixed_bytes, parse_inboxes, parse_message_id},
};

/// The content of an application message; the variants are
/// `kith::Content`'s.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Content {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// A reply to an earlier message.
    Reply {
        /// The reply.
        reply: Reply,
    },
    /// A reaction to an earlier message, or its withdrawal. Not listed:
    /// show it on the message it refers to.
    Reaction {
        /// The reaction.
        reaction: Reaction,
    },
    /// A read receipt: the sender has read everything up to the time it
    /// sent this. Not listed, never shown as a message.
    ReadReceipt,
    /// A file sent inline (at most 1 MiB).
    Attachment {
        /// The file.
        attachment: Attachment,
    },
    /// An encrypted file uploaded elsewhere.
    RemoteAttachment {
        /// Where it is and how to open it.
        remote_attachment: RemoteAttachment,
    },
    /// A change to a group's members or metadata. Made by the library
    /// itself for the transcript; applications cannot send it.
    GroupUpdated {
        /// The change.
        group_updated: GroupUpdated,
    },
    /// A type this client does not know: kept as it came, with the
    /// fallback its sender gave. Sent, it goes out as it is (a known type
    /// must be sent as its own variant).
    Unknown {
        /// Its content type id.
        content_type: String,
        /// Its body, undecoded.
        body: Vec<u8>,
        /// The sender's text for clients that do not know the type.
        fallback: Option<String>,
    },
}

/// What a [`Reply`] may carry: `kith` allows text, attachments and types
/// it does not know, never another reply, a reaction, a receipt or a
/// group update.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ReplyContent {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// A file sent inline.
    Attachment {
        /// The file.
        attachment: Attachment,
    },
    /// An encrypted file uploaded elsewhere.
    RemoteAttachment {
        /// Where it is and how to open it.
        remote_attachment: RemoteAttachment,
    },
    /// A type this client does not know (a reply carries no fallback for
    /// it).
    Unknown {
        /// Its content type id.
        content_type: String,
        /// Its body, undecoded.
        body: Vec<u8>,
    },
}

/// A reply to an earlier message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Reply {
    /// The message replied to (hex).
    pub reference_message_id: String,
    /// The reply itself.
    pub content: ReplyContent,
}

/// A reaction to an earlier message, or its withdrawal.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Reaction {
    /// The message reacted to (hex).
    pub reference_message_id: String,
    /// Whether the reaction is added or removed.
    pub action: ReactionAction,
    /// The reaction, usually an emoji: not empty, at most 256 bytes.
    pub content: String,
}

/// Whether a [`Reaction`] is added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ReactionAction {
    /// The sender reacts.
    Added,
    /// The sender withdraws an earlier reaction with the same content.
    Removed,
}

/// A file. `filename` and `mime_type` come from the sender: never use the
/// name as a path, nor trust the type without checking.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Attachment {
    /// The file's name, at most 255 bytes.
    pub filename: String,
    /// Its MIME type, at most 255 bytes.
    pub mime_type: String,
    /// Its bytes: at most 1 MiB when sent inline; any size encrypted for a
    /// [`RemoteAttachment`].
    pub data: Vec<u8>,
}

/// An attachment encrypted with a fresh key and uploaded elsewhere: where
/// it is, its key and its digest. Made by [`remote_attachment_encrypt`],
/// opened by [`remote_attachment_decrypt`]; fetching and uploading are the
/// application's.
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
pub struct RemoteAttachment {
    /// Where the ciphertext is: an `https://` URL of at most 2,048 bytes.
    pub url: String,
    /// The SHA-256 of the ciphertext (32 bytes).
    pub content_digest: Vec<u8>,
    /// The ChaCha20-Poly1305 key (32 bytes).
    pub secret: Vec<u8>,
    /// The ChaCha20-Poly1305 nonce (12 bytes).
    pub nonce: Vec<u8>,
    /// The length of the ciphertext, in bytes.
    pub content_length: u64,
    /// The file's name, to show before the download; the authoritative
    /// one is inside the encrypted attachment.
    pub filename: Option<String>,
}

/// Keeps the key out of logs, as `kith` does.
impl std::fmt::Debug for RemoteAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAttachment")
            .field("url", &self.url)
            .field("content_digest", &hex::encode(&self.content_digest))
            .field("secret", &"<redacted>")
            .field("nonce", &hex::encode(&self.nonce))
            .field("content_length", &self.content_length)
            .field("filename", &self.filename)
            .finish()
    }
}

/// What [`remote_attachment_encrypt`] returns: the message to send and the
/// bytes to upload to its URL.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct EncryptedAttachment {
    /// Send this (as `Content.RemoteAttachment`) once `ciphertext` is
    /// uploaded.
    pub remote: RemoteAttachment,
    /// Upload this to `remote.url`.
    pub ciphertext: Vec<u8>,
}

/// A change to a group: who made it, who joined or left, which metadata
/// changed.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct GroupUpdated {
    /// Who made the change.
    pub by_inbox_id: String,
    /// Inboxes added.
    pub added: Vec<String>,
    /// Inboxes removed.
    pub removed: Vec<String>,
    /// Metadata changed.
    pub changes: Vec<FieldChange>,
}

/// A change to one metadata field of a group.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FieldChange {
    /// The field.
    pub field: String,
    /// Its value before, if it had one.
    pub old: Option<String>,
    /// Its value after, if it has one.
    pub new: Option<String>,
}

/// The decoded content of `message`. A content type this client does not
/// know comes back as `Content.Unknown` with its fallback; a known type
/// whose body does not decode raises `KithError.Content` (show the
/// message's `fallback` then).
#[uniffi::export]
pub fn message_content(message: Message) -> Result<Content, KithError> {
    Ok(kith::Content::decode(&message.content_type, &message.body, message.fallback)?.into())
}

/// Encrypt `attachment` for upload to `url` (an `https://` URL) with a
/// fresh key: returns the `RemoteAttachment` to send and the ciphertext to
/// upload. Its data may be larger than an inline attachment's.
#[uniffi::export]
pub fn remote_attachment_encrypt(
    attachment: Attachment,
    url: String,
) -> Result<EncryptedAttachment, KithError> {
    let (remote, ciphertext) = kith::RemoteAttachment::encrypt(&attachment.into(), url)?;
    Ok(EncryptedAttachment {
        remote: remote.into(),
        ciphertext,
    })
}

/// Open the `ciphertext` downloaded from `remote.url`: its length and
/// digest are checked before it is decrypted, so bytes that are not the
/// file sent raise `KithError.Content`.
#[uniffi::export]
pub fn remote_attachment_decrypt(
    remote: RemoteAttachment,
    ciphertext: Vec<u8>,
) -> Result<Attachment, KithError> {
    let remote = kith::RemoteAttachment::try_from(remote)?;
    Ok(remote.decrypt(&ciphertext)?.into())
}

impl From<kith::Content> for Content {
    fn from(content: kith::Content) -> Self {
        use kith::Content as C;
        match content {
            C::Text(text) => Self::Text { text },
            C::Reply(reply) => Self::Reply {
                reply: reply.into(),
            },
            C::Reaction(reaction) => Self::Reaction {
                reaction: reaction.into(),
            },
            C::ReadReceipt(_) => Self::ReadReceipt,
            C::Attachment(attachment) => Self::Attachment {
                attachment: attachment.into(),
            },
            C::RemoteAttachment(remote) => Self::RemoteAttachment {
                remote_attachment: remote.into(),
            },
            C::GroupUpdated(update) => Self::GroupUpdated {
                group_updated: update.into(),
            },
            C::Unknown {
                content_type,
                body,
                fallback,
            } => Self::Unknown {
                content_type,
                body,
                fallback,
            },
            // `kith::Content` is non-exhaustive: a type added there shows
            // here as one this version does not know, until it gets a
            // variant of its own.
            other => Self::Unknown {
                content_type: other.content_type().to_owned(),
                body: other.encode().unwrap_or_default(),
                fallback: other.fallback(),
            },
        }
    }
}

impl TryFrom<Content> for kith::Content {
    type Error = KithError;

    /// Fails on an id or a fixed-size field that does not convert.
    fn try_from(content: Content) -> Result<Self, KithError> {
        Ok(match content {
            Content::Text { text } => Self::Text(text),
            Content::Reply { reply } => Self::Reply(reply.try_into()?),
            Content::Reaction { reaction } => Self::Reaction(reaction.try_into()?),
            Content::ReadReceipt => Self::ReadReceipt(kith::ReadReceipt),
            Content::Attachment { attachment } => Self::Attachment(attachment.into()),
            Content::RemoteAttachment { remote_attachment } => {
                Self::RemoteAttachment(remote_attachment.try_into()?)
            }
            Content::GroupUpdated { group_updated } => {
                Self::GroupUpdated(group_updated.try_into()?)
            }
            Content::Unknown {
                content_type,
                body,
                fallback,
            } => Self::Unknown {
                content_type,
                body,
                fallback,
            },
        })
    }
}

impl From<kith::Content> for ReplyContent {
    /// `kith` decodes only the allowed kinds inside a reply; any other is
    /// passed on as a type this version does not know.
    fn from(content: kith::Content) -> Self {
        use kith::Content as C;
        match content {
            C::Text(text) => Self::Text { text },
            C::Attachment(attachment) => Self::Attachment {
                attachment: attachment.into(),
            },
            C::RemoteAttachment(remote) => Self::RemoteAttachment {
                remote_attachment: remote.into(),
            },
            C::Unknown {
                content_type, body, ..
            } => Self::Unknown { content_type, body },
            other => Self::Unknown {
                content_type: other.content_type().to_owned(),
                body: other.encode().unwrap_or_default(),
            },
        }
    }
}

impl TryFrom<ReplyContent> for kith::Content {
    type Error = KithError;

    fn try_from(content: ReplyContent) -> Result<Self, KithError> {
        Ok(match content {
            ReplyContent::Text { text } => Self::Text(text),
            ReplyContent::Attachment { attachment } => Self::Attachment(attachment.into()),
            ReplyContent::RemoteAttachment { remote_attachment } => {
                Self::RemoteAttachment(remote_attachment.try_into()?)
            }
            ReplyContent::Unknown { content_type, body } => Self::Unknown {
                content_type,
                body,
                fallback: None,
            },
        })
    }
}

impl From<kith::Reply> for Reply {
    fn from(r: kith::Reply) -> Self {
        Self {
            reference_message_id: r.reference.to_string(),
            content: (*r.content).into(),
        }
    }
}

impl TryFrom<Reply> for kith::Reply {
    type Error = KithError;

    fn try_from(r: Reply) -> Result<Self, KithError> {
        Ok(Self {
            reference: parse_message_id(&r.reference_message_id)?,
            content: Box::new(r.content.try_into()?),
        })
    }
}

impl From<kith::Reaction> for Reaction {
    fn from(r: kith::Reaction) -> Self {
        Self {
            reference_message_id: r.reference.to_string(),
            action: r.action.into(),
            content: r.content,
        }
    }
}

impl TryFrom<Reaction> for kith::Reaction {
    type Error = KithError;

    fn try_from(r: Reaction) -> Result<Self, KithError> {
        Ok(Self {
            reference: parse_message_id(&r.reference_message_id)?,
            action: r.action.into(),
            content: r.content,
        })
    }
}

impl From<kith::ReactionAction> for ReactionAction {
    fn from(a: kith::ReactionAction) -> Self {
        match a {
            kith::ReactionAction::Added => Self::Added,
            kith::ReactionAction::Removed => Self::Removed,
        }
    }
}

impl From<ReactionAction> for kith::ReactionAction {
    fn from(a: ReactionAction) -> Self {
        match a {
            ReactionAction::Added => Self::Added,
            ReactionAction::Removed => Self::Removed,
        }
    }
}

impl From<kith::Attachment> for Attachment {
    fn from(a: kith::Attachment) -> Self {
        Self {
            filename: a.filename,
            mime_type: a.mime_type,
            data: a.data,
        }
    }
}

impl From<Attachment> for kith::Attachment {
    fn from(a: Attachment) -> Self {
        Self {
            filename: a.filename,
            mime_type: a.mime_type,
            data: a.data,
        }
    }
}

impl From<kith::RemoteAttachment> for RemoteAttachment {
    fn from(r: kith::RemoteAttachment) -> Self {
        Self {
            url: r.url,
            content_digest: r.content_digest.to_vec(),
            secret: r.secret.to_vec(),
            nonce: r.nonce.to_vec(),
            content_length: r.content_length,
            filename: r.filename,
        }
    }
}

impl TryFrom<RemoteAttachment> for kith::RemoteAttachment {
    type Error = KithError;

    /// Fails on a digest, key or nonce of the wrong length.
    fn try_from(r: RemoteAttachment) -> Result<Self, KithError> {
        Ok(Self {
            content_digest: fixed_bytes("a remote attachment's content_digest", &r.content_digest)?,
            secret: fixed_bytes("a remote attachment's secret", &r.secret)?,
            nonce: fixed_bytes("a remote attachment's nonce", &r.nonce)?,
            url: r.url,
            content_length: r.content_length,
            filename: r.filename,
        })
    }
}

impl From<kith::GroupUpdated> for GroupUpdated {
    fn from(u: kith::GroupUpdated) -> Self {
        let ids = |list: Vec<kith::InboxId>| list.iter().map(ToString::to_string).collect();
        Self {
            by_inbox_id: u.by.to_string(),
            added: ids(u.added),
            removed: ids(u.removed),
            changes: u.changes.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<GroupUpdated> for kith::GroupUpdated {
    type Error = KithError;

    fn try_from(u: GroupUpdated) -> Result<Self, KithError> {
        Ok(Self {
            by: crate::types::parse_inbox(&u.by_inbox_id)?,
            added: parse_inboxes(&u.added)?,
            removed: parse_inboxes(&u.removed)?,
            changes: u.changes.into_iter().map(Into::into).collect(),
        })
    }
}

impl From<kith::FieldChange> for FieldChange {
    fn from(c: kith::FieldChange) -> Self {
        Self {
            field: c.field,
            old: c.old,
            new: c.new,
        }
    }
}

impl From<FieldChange> for kith::FieldChange {
    fn from(c: FieldChange) -> Self {
        Self {
            field: c.field,
            old: c.old,
            new: c.new,
        }
    }
}
