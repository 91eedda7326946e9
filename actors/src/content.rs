//! Standard content types of application messages, and their codecs.
//!
//! The engine carries every application message as a content type id and
//! opaque body bytes; this module gives those bytes meaning for the types
//! every Kith client is expected to understand (text, replies, reactions,
//! read receipts, inline and remote attachments, group updates), and a
//! short human-readable fallback for clients that do not understand a type.
//! Everything read from the wire is untrusted: each decoder checks the
//! same bounds as its encoder and reports a [`ContentError`], never panics.

use chacha20poly1305::{
    ChaCha20Poly1305, Key, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use kith_engine::identity::InboxId;
use prost::Message as _;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::MessageId;

/// Plain UTF-8 text. The body is the text's bytes, not a protobuf, so that
/// it stays the engine's own text type.
pub const TEXT: &str = kith_engine::group::CONTENT_TYPE_TEXT;
/// A reply to an earlier message: see [`Reply`].
pub const REPLY: &str = "kith.im/reply:1.0";
/// A reaction to an earlier message: see [`Reaction`].
pub const REACTION: &str = "kith.im/reaction:1.0";
/// A read receipt: see [`ReadReceipt`].
pub const READ_RECEIPT: &str = "kith.im/read-receipt:1.0";
/// A file sent inside the message: see [`Attachment`].
pub const ATTACHMENT: &str = "kith.im/attachment:1.0";
/// A file uploaded elsewhere, encrypted: see [`RemoteAttachment`].
pub const REMOTE_ATTACHMENT: &str = "kith.im/remote-attachment:1.0";
/// A change to a group's membership or metadata: see [`GroupUpdated`].
/// Only the engine makes these (a control type, which applications cannot
/// send).
pub const GROUP_UPDATED: &str = kith_engine::group::CONTENT_TYPE_GROUP_UPDATED;

/// The most bytes of attachment data sent inline, in an [`Attachment`];
/// larger files go as a [`RemoteAttachment`]. Every member stores and
/// forwards inline data, so it must stay small.
pub const MAX_INLINE_ATTACHMENT: usize = 1024 * 1024;
/// The longest reaction, in bytes: room for any emoji sequence (flags,
/// skin tones, families) or a short word, not for a message.
pub const MAX_REACTION_LEN: usize = 256;
/// The longest file name, in bytes: the usual file system limit.
pub const MAX_FILENAME_LEN: usize = 255;
/// The longest MIME type, in bytes: RFC 6838 allows 127 characters each
/// for type and subtype.
pub const MAX_MIME_TYPE_LEN: usize = 255;
/// The longest remote attachment URL, in bytes: what browsers and most
/// servers reliably accept.
pub const MAX_URL_LEN: usize = 2048;
/// The most entries of a [`GroupUpdated`]: added plus removed inboxes plus
/// field changes.
pub const MAX_GROUP_UPDATE_ENTRIES: usize = kith_engine::group::MAX_TRANSCRIPT_ENTRIES;
/// The longest field name of a [`FieldChange`], in bytes: the engine's
/// limit on metadata attribute keys.
pub const MAX_FIELD_NAME_LEN: usize = kith_engine::group::metadata::MAX_ATTRIBUTE_KEY_LEN;
/// The longest old or new value of a [`FieldChange`], in bytes: the
/// engine's largest metadata attribute (application data).
pub const MAX_FIELD_VALUE_LEN: usize = 8192;
/// The longest content type id carried inside a [`Reply`] or kept in
/// [`Content::Unknown`], in bytes: the engine's own limit.
pub const MAX_CONTENT_TYPE_LEN: usize = kith_engine::group::MAX_CONTENT_TYPE_LEN;
/// The longest text [`Content::fallback`] returns, in bytes; longer text
/// is cut on a character boundary and ends with `…`.
pub const MAX_FALLBACK_LEN: usize = 1024;

/// The associated data of remote attachment encryption. It cannot be the
/// content digest (that is computed over the ciphertext), and it leaves
/// the URL out so that a file may be moved or mirrored without
/// re-encrypting it.
const REMOTE_ATTACHMENT_AAD: &[u8] = b"kith remote attachment v1";

/// Why content could not be encoded, decoded or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// A value is longer than its documented limit.
    #[error("{what} is {len} bytes, over the limit of {limit}")]
    TooLarge {
        /// What is too long.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A list has more entries than its documented limit.
    #[error("{what} has {count} entries, over the limit of {limit}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// How many entries it has.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A value that must not be empty is empty.
    #[error("{what} must not be empty")]
    Empty {
        /// What is empty.
        what: &'static str,
    },
    /// A body of a known content type does not decode, or a value cannot
    /// be represented on the wire.
    #[error("malformed {content_type} content: {reason}")]
    Malformed {
        /// The content type.
        content_type: String,
        /// What is wrong.
        reason: String,
    },
    /// A reply may only contain text, attachments or unknown types.
    #[error("a reply cannot contain {0} content")]
    NotAllowedInReply(String),
    /// A remote attachment URL is not an `https://` URL, or holds
    /// whitespace or control characters.
    #[error("a remote attachment URL must be an https:// URL without spaces")]
    InsecureUrl,
    /// The downloaded attachment has another length than its message says:
    /// it was truncated, or is not the file that was sent.
    #[error("the downloaded attachment is {actual} bytes, but {expected} were sent")]
    LengthMismatch {
        /// The length the message gives.
        expected: u64,
        /// The length downloaded.
        actual: u64,
    },
    /// The downloaded attachment is not the file that was sent.
    #[error("the downloaded attachment does not match its digest")]
    DigestMismatch,
    /// The attachment matches its digest but does not decrypt: the sender
    /// sent the wrong key.
    #[error("the attachment could not be decrypted")]
    Decrypt,
    /// The attachment is too large to encrypt.
    #[error("the attachment could not be encrypted")]
    Encrypt,
    /// The operating system gave no randomness for a key.
    #[error("no randomness from the operating system: {0}")]
    Randomness(String),
}

/// The content of an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Content {
    /// Plain text ([`TEXT`]).
    Text(String),
    /// A reply to an earlier message ([`REPLY`]).
    Reply(Reply),
    /// A reaction to an earlier message ([`REACTION`]).
    Reaction(Reaction),
    /// A read receipt ([`READ_RECEIPT`]).
    ReadReceipt(ReadReceipt),
    /// A file sent inline ([`ATTACHMENT`]).
    Attachment(Attachment),
    /// An encrypted file uploaded elsewhere ([`REMOTE_ATTACHMENT`]).
    RemoteAttachment(RemoteAttachment),
    /// A change to the group ([`GROUP_UPDATED`]).
    GroupUpdated(GroupUpdated),
    /// A type this client does not know: kept as it came, with the fallback
    /// its sender gave.
    Unknown {
        /// Its content type id.
        content_type: String,
        /// Its body, undecoded.
        body: Vec<u8>,
        /// The sender's text for clients that do not know the type.
        fallback: Option<String>,
    },
}

/// A reply to an earlier message.
///
/// The inner content may be text, an attachment, a remote attachment or a
/// type this client does not know, never a reply, reaction, read receipt
/// or group update: replies do not nest, and the others are not messages
/// one answers with. An unknown inner type keeps its type and body but not
/// its fallback, which the wire does not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The message replied to.
    pub reference: MessageId,
    /// The reply itself.
    pub content: Box<Content>,
}

/// A reaction to an earlier message, or its withdrawal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The message reacted to.
    pub reference: MessageId,
    /// Whether the reaction is added or removed.
    pub action: ReactionAction,
    /// The reaction, usually an emoji: not empty, at most
    /// [`MAX_REACTION_LEN`] bytes.
    pub content: String,
}

/// Whether a [`Reaction`] is added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReactionAction {
    /// The sender reacts.
    Added,
    /// The sender withdraws an earlier reaction with the same content.
    Removed,
}

/// A read receipt: the sender has read everything in the conversation up
/// to the time it sent this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReadReceipt;

/// A file sent inside the message.
///
/// `filename` and `mime_type` come from the sender: an application must
/// not use the name as a path, nor trust the type without checking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file's name, at most [`MAX_FILENAME_LEN`] bytes.
    pub filename: String,
    /// Its MIME type, at most [`MAX_MIME_TYPE_LEN`] bytes.
    pub mime_type: String,
    /// Its bytes: at most [`MAX_INLINE_ATTACHMENT`] when sent inline; any
    /// size inside a [`RemoteAttachment`].
    pub data: Vec<u8>,
}

/// An attachment encrypted with a fresh key and uploaded elsewhere; the
/// message carries where it is, its key and its digest.
///
/// Make one with [`RemoteAttachment::encrypt`], upload the ciphertext to
/// `url`, and send this. A receiver downloads the ciphertext itself and
/// opens it with [`RemoteAttachment::decrypt`].
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteAttachment {
    /// Where the ciphertext is: an `https://` URL of at most
    /// [`MAX_URL_LEN`] bytes.
    pub url: String,
    /// The SHA-256 of the ciphertext.
    pub content_digest: [u8; 32],
    /// The ChaCha20-Poly1305 key.
    pub secret: [u8; 32],
    /// The ChaCha20-Poly1305 nonce.
    pub nonce: [u8; 12],
    /// The length of the ciphertext, in bytes.
    pub content_length: u64,
    /// The file's name, at most [`MAX_FILENAME_LEN`] bytes, so that it can
    /// be shown before the download. The authoritative name is the one
    /// inside the encrypted attachment.
    pub filename: Option<String>,
}

/// Keeps the key out of logs.
impl std::fmt::Debug for RemoteAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAttachment")
            .field("url", &self.url)
            .field("content_digest", &hex::encode(self.content_digest))
            .field("secret", &"<redacted>")
            .field("nonce", &hex::encode(self.nonce))
            .field("content_length", &self.content_length)
            .field("filename", &self.filename)
            .finish()
    }
}

/// A change to a group: who made it, who joined or left, and which
/// metadata changed. Generated locally for the transcript when a commit
/// changes the group; it encodes like any other content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupUpdated {
    /// Who made the change.
    pub by: InboxId,
    /// Inboxes added.
    pub added: Vec<InboxId>,
    /// Inboxes removed.
    pub removed: Vec<InboxId>,
    /// Metadata changed.
    pub changes: Vec<FieldChange>,
}

/// A change to one metadata field of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    /// The field: not empty, at most [`MAX_FIELD_NAME_LEN`] bytes.
    pub field: String,
    /// Its value before, if it had one; at most [`MAX_FIELD_VALUE_LEN`]
    /// bytes.
    pub old: Option<String>,
    /// Its value after, if it has one; at most [`MAX_FIELD_VALUE_LEN`]
    /// bytes.
    pub new: Option<String>,
}

impl Content {
    /// The content type id of this content.
    pub fn content_type(&self) -> &str {
        match self {
            Content::Text(_) => TEXT,
            Content::Reply(_) => REPLY,
            Content::Reaction(_) => REACTION,
            Content::ReadReceipt(_) => READ_RECEIPT,
            Content::Attachment(_) => ATTACHMENT,
            Content::RemoteAttachment(_) => REMOTE_ATTACHMENT,
            Content::GroupUpdated(_) => GROUP_UPDATED,
            Content::Unknown { content_type, .. } => content_type,
        }
    }

    /// Encode to body bytes, checking every bound the decoder checks, so
    /// that what is sent is what every receiver accepts.
    pub fn encode(&self) -> Result<Vec<u8>, ContentError> {
        match self {
            Content::Text(text) => Ok(text.as_bytes().to_vec()),
            Content::Reply(reply) => reply.encode(),
            Content::Reaction(reaction) => reaction.encode(),
            Content::ReadReceipt(_) => Ok(wire::ReadReceipt {}.encode_to_vec()),
            Content::Attachment(attachment) => {
                attachment.validate(true)?;
                Ok(attachment.to_wire().encode_to_vec())
            }
            Content::RemoteAttachment(remote) => remote.encode(),
            Content::GroupUpdated(update) => update.encode(),
            Content::Unknown {
                content_type, body, ..
            } => {
                check_content_type(content_type)?;
                // Sent as Unknown, a known type would skip its own checks and
                // reach receivers that reject it.
                if is_known(content_type) {
                    return Err(malformed(
                        content_type,
                        "a known type must be sent as its own variant",
                    ));
                }
                Ok(body.clone())
            }
        }
    }

    /// Decode a body of `content_type`. An unknown type gives
    /// [`Content::Unknown`], keeping `fallback`; a known type that does not
    /// decode, or breaks a bound, is an error.
    pub fn decode(
        content_type: &str,
        body: &[u8],
        fallback: Option<String>,
    ) -> Result<Content, ContentError> {
        match content_type {
            TEXT => String::from_utf8(body.to_vec())
                .map(Content::Text)
                .map_err(|e| malformed(TEXT, e)),
            REPLY => Reply::decode(body).map(Content::Reply),
            REACTION => Reaction::decode(body).map(Content::Reaction),
            READ_RECEIPT => wire::ReadReceipt::decode(body)
                .map(|_| Content::ReadReceipt(ReadReceipt))
                .map_err(|e| malformed(READ_RECEIPT, e)),
            ATTACHMENT => {
                let wire = wire::Attachment::decode(body).map_err(|e| malformed(ATTACHMENT, e))?;
                let attachment = Attachment::from_wire(wire);
                attachment.validate(true)?;
                Ok(Content::Attachment(attachment))
            }
            REMOTE_ATTACHMENT => RemoteAttachment::decode(body).map(Content::RemoteAttachment),
            GROUP_UPDATED => GroupUpdated::decode(body).map(Content::GroupUpdated),
            _ => {
                check_content_type(content_type)?;
                Ok(Content::Unknown {
                    content_type: content_type.to_owned(),
                    body: body.to_vec(),
                    fallback,
                })
            }
        }
    }

    /// Text for clients that do not know this type, at most
    /// [`MAX_FALLBACK_LEN`] bytes:
    ///
    /// - text: `None`, it is its own text;
    /// - reply: `Replied to an earlier message: <inner text or inner
    ///   fallback>`, or just `Replied to an earlier message` when the inner
    ///   content has none;
    /// - reaction: `Reacted "👍" to an earlier message`, or
    ///   `Removed the reaction "👍" from an earlier message`;
    /// - read receipt: `None`, a receipt is never shown;
    /// - attachment and remote attachment: `Sent an attachment: <file
    ///   name>`, or `Sent an attachment` without a name;
    /// - group update: `<by> updated the group: added <inbox or N
    ///   members>, removed <inbox or N members>, set <field> to "<value>",
    ///   cleared <field>`;
    /// - unknown: the fallback its sender gave, if any.
    pub fn fallback(&self) -> Option<String> {
        let text = match self {
            Content::Text(_) => return None,
            Content::Reply(reply) => {
                let quoted = match reply.content.as_ref() {
                    Content::Text(text) => Some(text.clone()),
                    inner => inner.fallback(),
                };
                match quoted {
                    Some(quoted) => {
                        format!(
                            "Replied to an earlier message: {}",
                            prefix(&quoted, MAX_FALLBACK_LEN)
                        )
                    }
                    None => "Replied to an earlier message".to_owned(),
                }
            }
            Content::Reaction(reaction) => match reaction.action {
                ReactionAction::Added => {
                    format!("Reacted \"{}\" to an earlier message", reaction.content)
                }
                ReactionAction::Removed => format!(
                    "Removed the reaction \"{}\" from an earlier message",
                    reaction.content
                ),
            },
            // A receipt is never shown, so a reader that does not know the
            // type has nothing to show either.
            Content::ReadReceipt(_) => return None,
            Content::Attachment(attachment) => sent_attachment(Some(&attachment.filename)),
            Content::RemoteAttachment(remote) => sent_attachment(remote.filename.as_deref()),
            Content::GroupUpdated(update) => update.describe(),
            Content::Unknown { fallback, .. } => return fallback.as_deref().map(capped),
        };
        Some(capped(&text))
    }

    /// Whether it belongs in a transcript: false for reactions and read
    /// receipts, which applications show on the messages they refer to
    /// rather than as messages of their own. Unknown types are listed, with
    /// their fallback.
    pub fn is_listed(&self) -> bool {
        is_listed_type(self.content_type())
    }
}

/// Whether messages of `content_type` belong in a message list: all but
/// reactions and read receipts.
pub(crate) fn is_listed_type(content_type: &str) -> bool {
    !matches!(content_type, REACTION | READ_RECEIPT)
}

impl Reply {
    fn encode(&self) -> Result<Vec<u8>, ContentError> {
        let content_type = self.content.content_type();
        check_allowed_in_reply(content_type)?;
        let body = self.content.encode()?;
        Ok(wire::Reply {
            reference: self.reference.0.to_vec(),
            content_type: content_type.to_owned(),
            body,
        }
        .encode_to_vec())
    }

    fn decode(body: &[u8]) -> Result<Reply, ContentError> {
        let wire = wire::Reply::decode(body).map_err(|e| malformed(REPLY, e))?;
        let reference = MessageId(fixed(REPLY, "reference", &wire.reference)?);
        check_content_type(&wire.content_type)?;
        // Checked before the inner body is decoded, so that a reply cannot
        // smuggle in content that would need the nesting we refuse.
        check_allowed_in_reply(&wire.content_type)?;
        let content = Content::decode(&wire.content_type, &wire.body, None)?;
        Ok(Reply {
            reference,
            content: Box::new(content),
        })
    }
}

impl Reaction {
    fn validate(&self) -> Result<(), ContentError> {
        if self.content.is_empty() {
            return Err(ContentError::Empty {
                what: "the reaction",
            });
        }
        check_len("the reaction", self.content.len(), MAX_REACTION_LEN)
    }

    fn encode(&self) -> Result<Vec<u8>, ContentError> {
        self.validate()?;
        let action = match self.action {
            ReactionAction::Added => wire::REACTION_ADDED,
            ReactionAction::Removed => wire::REACTION_REMOVED,
        };
        Ok(wire::Reaction {
            reference: self.reference.0.to_vec(),
            action,
            content: self.content.clone(),
        }
        .encode_to_vec())
    }

    fn decode(body: &[u8]) -> Result<Reaction, ContentError> {
        let wire = wire::Reaction::decode(body).map_err(|e| malformed(REACTION, e))?;
        let action = match wire.action {
            wire::REACTION_ADDED => ReactionAction::Added,
            wire::REACTION_REMOVED => ReactionAction::Removed,
            other => return Err(malformed(REACTION, format!("unknown action {other}"))),
        };
        let reaction = Reaction {
            reference: MessageId(fixed(REACTION, "reference", &wire.reference)?),
            action,
            content: wire.content,
        };
        reaction.validate()?;
        Ok(reaction)
    }
}

impl Attachment {
    /// `inline` applies the data bound, which a remote attachment exists to
    /// escape.
    fn validate(&self, inline: bool) -> Result<(), ContentError> {
        check_len("the file name", self.filename.len(), MAX_FILENAME_LEN)?;
        check_len("the MIME type", self.mime_type.len(), MAX_MIME_TYPE_LEN)?;
        if inline {
            check_len(
                "the inline attachment",
                self.data.len(),
                MAX_INLINE_ATTACHMENT,
            )?;
        }
        Ok(())
    }

    fn to_wire(&self) -> wire::Attachment {
        wire::Attachment {
            filename: self.filename.clone(),
            mime_type: self.mime_type.clone(),
            data: self.data.clone(),
        }
    }

    fn from_wire(wire: wire::Attachment) -> Attachment {
        Attachment {
            filename: wire.filename,
            mime_type: wire.mime_type,
            data: wire.data,
        }
    }
}

impl RemoteAttachment {
    /// Encrypt `attachment` for upload to `url`: returns the
    /// `RemoteAttachment` to send and the ciphertext to upload.
    ///
    /// The key and nonce are fresh from the operating system. The
    /// plaintext is the whole attachment, so its name and MIME type are
    /// encrypted too; its data may be larger than
    /// [`MAX_INLINE_ATTACHMENT`].
    pub fn encrypt(
        attachment: &Attachment,
        url: impl Into<String>,
    ) -> Result<(RemoteAttachment, Vec<u8>), ContentError> {
        let url = url.into();
        check_url(&url)?;
        attachment.validate(false)?;
        let mut secret = [0u8; 32];
        let mut nonce = [0u8; 12];
        OsRng
            .try_fill_bytes(&mut secret)
            .and_then(|()| OsRng.try_fill_bytes(&mut nonce))
            .map_err(|e| ContentError::Randomness(e.to_string()))?;
        let plaintext = attachment.to_wire().encode_to_vec();
        let ciphertext = ChaCha20Poly1305::new(Key::from_slice(&secret))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plaintext,
                    aad: REMOTE_ATTACHMENT_AAD,
                },
            )
            .map_err(|_| ContentError::Encrypt)?;
        let remote = RemoteAttachment {
            url,
            content_digest: Sha256::digest(&ciphertext).into(),
            secret,
            nonce,
            content_length: ciphertext.len() as u64,
            filename: (!attachment.filename.is_empty()).then(|| attachment.filename.clone()),
        };
        Ok((remote, ciphertext))
    }

    /// Open downloaded bytes: checks their length and digest first, so that
    /// bytes that are not the file sent are refused before any decryption,
    /// then decrypts and decodes them. Fetching them is the application's
    /// job.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Attachment, ContentError> {
        let actual = ciphertext.len() as u64;
        if actual != self.content_length {
            return Err(ContentError::LengthMismatch {
                expected: self.content_length,
                actual,
            });
        }
        let digest: [u8; 32] = Sha256::digest(ciphertext).into();
        if digest != self.content_digest {
            return Err(ContentError::DigestMismatch);
        }
        let plaintext = ChaCha20Poly1305::new(Key::from_slice(&self.secret))
            .decrypt(
                Nonce::from_slice(&self.nonce),
                Payload {
                    msg: ciphertext,
                    aad: REMOTE_ATTACHMENT_AAD,
                },
            )
            .map_err(|_| ContentError::Decrypt)?;
        let wire = wire::Attachment::decode(plaintext.as_slice())
            .map_err(|e| malformed(REMOTE_ATTACHMENT, e))?;
        let attachment = Attachment::from_wire(wire);
        attachment.validate(false)?;
        Ok(attachment)
    }

    fn validate(&self) -> Result<(), ContentError> {
        check_url(&self.url)?;
        if let Some(filename) = &self.filename {
            check_len("the file name", filename.len(), MAX_FILENAME_LEN)?;
        }
        Ok(())
    }

    fn encode(&self) -> Result<Vec<u8>, ContentError> {
        self.validate()?;
        Ok(wire::RemoteAttachment {
            url: self.url.clone(),
            content_digest: self.content_digest.to_vec(),
            secret: self.secret.to_vec(),
            nonce: self.nonce.to_vec(),
            content_length: self.content_length,
            filename: self.filename.clone(),
        }
        .encode_to_vec())
    }

    fn decode(body: &[u8]) -> Result<RemoteAttachment, ContentError> {
        let wire =
            wire::RemoteAttachment::decode(body).map_err(|e| malformed(REMOTE_ATTACHMENT, e))?;
        let remote = RemoteAttachment {
            content_digest: fixed(REMOTE_ATTACHMENT, "content digest", &wire.content_digest)?,
            secret: fixed(REMOTE_ATTACHMENT, "secret", &wire.secret)?,
            nonce: fixed(REMOTE_ATTACHMENT, "nonce", &wire.nonce)?,
            url: wire.url,
            content_length: wire.content_length,
            filename: wire.filename,
        };
        remote.validate()?;
        Ok(remote)
    }
}

impl GroupUpdated {
    fn validate(&self) -> Result<(), ContentError> {
        let count = self.added.len() + self.removed.len() + self.changes.len();
        if count > MAX_GROUP_UPDATE_ENTRIES {
            return Err(ContentError::TooMany {
                what: "the group update",
                count,
                limit: MAX_GROUP_UPDATE_ENTRIES,
            });
        }
        for change in &self.changes {
            if change.field.is_empty() {
                return Err(ContentError::Empty {
                    what: "a changed field's name",
                });
            }
            check_len(
                "a changed field's name",
                change.field.len(),
                MAX_FIELD_NAME_LEN,
            )?;
            for value in [&change.old, &change.new].into_iter().flatten() {
                check_len("a changed field's value", value.len(), MAX_FIELD_VALUE_LEN)?;
            }
        }
        Ok(())
    }

    fn encode(&self) -> Result<Vec<u8>, ContentError> {
        self.validate()?;
        let inboxes = |list: &[InboxId]| list.iter().map(|i| i.as_bytes().to_vec()).collect();
        Ok(wire::GroupUpdated {
            by: self.by.as_bytes().to_vec(),
            added: inboxes(&self.added),
            removed: inboxes(&self.removed),
            changes: self
                .changes
                .iter()
                .map(|c| wire::FieldChange {
                    field: c.field.clone(),
                    old: c.old.clone(),
                    new: c.new.clone(),
                })
                .collect(),
        }
        .encode_to_vec())
    }

    fn decode(body: &[u8]) -> Result<GroupUpdated, ContentError> {
        let wire = wire::GroupUpdated::decode(body).map_err(|e| malformed(GROUP_UPDATED, e))?;
        let inbox = |bytes: &[u8]| fixed(GROUP_UPDATED, "inbox", bytes).map(InboxId::from_bytes);
        let inboxes =
            |list: &[Vec<u8>]| list.iter().map(|b| inbox(b)).collect::<Result<Vec<_>, _>>();
        let update = GroupUpdated {
            by: inbox(&wire.by)?,
            added: inboxes(&wire.added)?,
            removed: inboxes(&wire.removed)?,
            changes: wire
                .changes
                .into_iter()
                .map(|c| FieldChange {
                    field: c.field,
                    old: c.old,
                    new: c.new,
                })
                .collect(),
        };
        update.validate()?;
        Ok(update)
    }

    /// The fallback text, built only as far as the fallback can show, so
    /// that a large update costs no more than a small one.
    fn describe(&self) -> String {
        /// A changed value is cut shorter than the whole fallback, so that
        /// one long description leaves room for the rest of the update.
        const MAX_VALUE_SHOWN: usize = 64;
        let members = |verb: &str, list: &[InboxId]| match list {
            [] => None,
            [one] => Some(format!("{verb} {one}")),
            many => Some(format!("{verb} {} members", many.len())),
        };
        let fields = self.changes.iter().map(|c| match &c.new {
            Some(value) => {
                let shown = prefix(value, MAX_VALUE_SHOWN);
                let ellipsis = if shown.len() < value.len() { "…" } else { "" };
                format!("set {} to \"{shown}{ellipsis}\"", c.field)
            }
            None => format!("cleared {}", c.field),
        });
        let mut out = format!("{} updated the group", self.by);
        let parts = members("added", &self.added)
            .into_iter()
            .chain(members("removed", &self.removed))
            .chain(fields);
        for (i, part) in parts.enumerate() {
            if out.len() > MAX_FALLBACK_LEN {
                break;
            }
            out.push_str(if i == 0 { ": " } else { ", " });
            out.push_str(&part);
        }
        out
    }
}

fn sent_attachment(filename: Option<&str>) -> String {
    match filename {
        Some(name) if !name.is_empty() => format!("Sent an attachment: {name}"),
        _ => "Sent an attachment".to_owned(),
    }
}

fn is_known(content_type: &str) -> bool {
    matches!(
        content_type,
        TEXT | REPLY | REACTION | READ_RECEIPT | ATTACHMENT | REMOTE_ATTACHMENT | GROUP_UPDATED
    )
}

fn check_allowed_in_reply(content_type: &str) -> Result<(), ContentError> {
    match content_type {
        REPLY | REACTION | READ_RECEIPT | GROUP_UPDATED => {
            Err(ContentError::NotAllowedInReply(content_type.to_owned()))
        }
        _ => Ok(()),
    }
}

fn check_content_type(content_type: &str) -> Result<(), ContentError> {
    if content_type.is_empty() {
        return Err(ContentError::Empty {
            what: "the content type",
        });
    }
    check_len("the content type", content_type.len(), MAX_CONTENT_TYPE_LEN)
}

/// Only https: a plain http URL would tell every network on the way which
/// file a member fetches, and other schemes could make a client read local
/// files or reach services it should not.
fn check_url(url: &str) -> Result<(), ContentError> {
    check_len("the URL", url.len(), MAX_URL_LEN)?;
    const SCHEME: &str = "https://";
    let scheme_ok = url
        .get(..SCHEME.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME));
    let rest_ok =
        url.len() > SCHEME.len() && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if scheme_ok && rest_ok {
        Ok(())
    } else {
        Err(ContentError::InsecureUrl)
    }
}

fn check_len(what: &'static str, len: usize, limit: usize) -> Result<(), ContentError> {
    if len > limit {
        Err(ContentError::TooLarge { what, len, limit })
    } else {
        Ok(())
    }
}

fn fixed<const N: usize>(
    content_type: &str,
    what: &str,
    bytes: &[u8],
) -> Result<[u8; N], ContentError> {
    bytes.try_into().map_err(|_| {
        malformed(
            content_type,
            format!("the {what} is {} bytes, not {N}", bytes.len()),
        )
    })
}

fn malformed(content_type: &str, reason: impl std::fmt::Display) -> ContentError {
    ContentError::Malformed {
        content_type: content_type.to_owned(),
        reason: reason.to_string(),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn capped(s: &str) -> String {
    if s.len() <= MAX_FALLBACK_LEN {
        return s.to_owned();
    }
    let mut out = prefix(s, MAX_FALLBACK_LEN - '…'.len_utf8()).to_owned();
    out.push('…');
    out
}

/// The protobuf encodings. Kept private so that the domain types, which
/// hold only valid values, are all that leaves this module.
mod wire {
    /// [`super::Reaction::action`]: 0 is left unused, so that a missing
    /// action is refused rather than read as one.
    pub(super) const REACTION_ADDED: u32 = 1;
    pub(super) const REACTION_REMOVED: u32 = 2;

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Reply {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) reference: Vec<u8>,
        #[prost(string, tag = "2")]
        pub(super) content_type: String,
        #[prost(bytes = "vec", tag = "3")]
        pub(super) body: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Reaction {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) reference: Vec<u8>,
        #[prost(uint32, tag = "2")]
        pub(super) action: u32,
        #[prost(string, tag = "3")]
        pub(super) content: String,
    }

    /// Empty today; a protobuf still, so that later versions can add
    /// fields that older clients skip.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ReadReceipt {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Attachment {
        #[prost(string, tag = "1")]
        pub(super) filename: String,
        #[prost(string, tag = "2")]
        pub(super) mime_type: String,
        #[prost(bytes = "vec", tag = "3")]
        pub(super) data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct RemoteAttachment {
        #[prost(string, tag = "1")]
        pub(super) url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub(super) content_digest: Vec<u8>,
        #[prost(bytes = "vec", tag = "3")]
        pub(super) secret: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub(super) nonce: Vec<u8>,
        #[prost(uint64, tag = "5")]
        pub(super) content_length: u64,
        #[prost(string, optional, tag = "6")]
        pub(super) filename: Option<String>,
    }

    // The engine writes transcript entries, so their wire is the engine's.
    pub(super) use kith_engine::group::{
        FieldChangeWire as FieldChange, GroupUpdateWire as GroupUpdated,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId([n; 32])
    }

    fn inbox(n: u8) -> InboxId {
        InboxId::from_bytes([n; 20])
    }

    fn attachment() -> Attachment {
        Attachment {
            filename: "photo.jpg".into(),
            mime_type: "image/jpeg".into(),
            data: vec![0xd8; 100],
        }
    }

    fn remote() -> RemoteAttachment {
        RemoteAttachment {
            url: "https://files.example/abc".into(),
            content_digest: [1; 32],
            secret: [2; 32],
            nonce: [3; 12],
            content_length: 1234,
            filename: Some("photo.jpg".into()),
        }
    }

    fn unknown() -> Content {
        Content::Unknown {
            content_type: "example.com/poll:1.0".into(),
            body: vec![1, 2, 3],
            fallback: None,
        }
    }

    fn update() -> GroupUpdated {
        GroupUpdated {
            by: inbox(1),
            added: vec![inbox(2), inbox(3)],
            removed: vec![inbox(4)],
            changes: vec![
                FieldChange {
                    field: "name".into(),
                    old: None,
                    new: Some("Climbing".into()),
                },
                FieldChange {
                    field: "description".into(),
                    old: Some("old".into()),
                    new: None,
                },
            ],
        }
    }

    fn reply(inner: Content) -> Content {
        Content::Reply(Reply {
            reference: id(9),
            content: Box::new(inner),
        })
    }

    /// One value of every known variant, and a reply around each content
    /// a reply may hold.
    fn samples() -> Vec<Content> {
        vec![
            Content::Text("hello, wörld".into()),
            Content::Text(String::new()),
            reply(Content::Text("yes".into())),
            reply(Content::Attachment(attachment())),
            reply(Content::RemoteAttachment(remote())),
            reply(unknown()),
            Content::Reaction(Reaction {
                reference: id(7),
                action: ReactionAction::Added,
                content: "👍🏽".into(),
            }),
            Content::Reaction(Reaction {
                reference: id(7),
                action: ReactionAction::Removed,
                content: "👍🏽".into(),
            }),
            Content::ReadReceipt(ReadReceipt),
            Content::Attachment(attachment()),
            Content::RemoteAttachment(remote()),
            Content::RemoteAttachment(RemoteAttachment {
                filename: None,
                ..remote()
            }),
            Content::GroupUpdated(update()),
        ]
    }

    fn encode(content: &Content) -> Vec<u8> {
        content.encode().expect("encodes")
    }

    fn decode(content_type: &str, body: &[u8]) -> Result<Content, ContentError> {
        Content::decode(content_type, body, None)
    }

    fn reaction_wire(content: &str) -> Vec<u8> {
        wire::Reaction {
            reference: vec![7; 32],
            action: wire::REACTION_ADDED,
            content: content.into(),
        }
        .encode_to_vec()
    }

    fn remote_wire() -> wire::RemoteAttachment {
        wire::RemoteAttachment {
            url: "https://files.example/abc".into(),
            content_digest: vec![1; 32],
            secret: vec![2; 32],
            nonce: vec![3; 12],
            content_length: 1234,
            filename: None,
        }
    }

    fn update_wire() -> wire::GroupUpdated {
        wire::GroupUpdated {
            by: vec![1; 20],
            added: vec![],
            removed: vec![],
            changes: vec![],
        }
    }

    fn too_large(what: &'static str, len: usize, limit: usize) -> ContentError {
        ContentError::TooLarge { what, len, limit }
    }

    fn is_malformed(result: Result<Content, ContentError>) -> bool {
        matches!(result, Err(ContentError::Malformed { .. }))
    }

    #[test]
    fn text_type_is_the_engines() {
        assert_eq!(TEXT, "text/plain");
        assert_eq!(TEXT, kith_engine::group::CONTENT_TYPE_TEXT);
    }

    #[test]
    fn every_variant_round_trips() {
        for content in samples() {
            let body = encode(&content);
            let decoded = decode(content.content_type(), &body).expect("decodes");
            assert_eq!(decoded, content);
        }
    }

    #[test]
    fn text_body_is_its_utf8_bytes() {
        assert_eq!(encode(&Content::Text("hi".into())), b"hi");
        assert!(is_malformed(decode(TEXT, &[0x68, 0xff])));
    }

    #[test]
    fn unknown_type_round_trips_with_its_fallback() {
        let fallback = Some("Poll: where to climb?".to_owned());
        let content =
            Content::decode("example.com/poll:1.0", &[9, 8, 7], fallback.clone()).expect("decodes");
        assert_eq!(
            content,
            Content::Unknown {
                content_type: "example.com/poll:1.0".into(),
                body: vec![9, 8, 7],
                fallback: fallback.clone(),
            }
        );
        assert_eq!(encode(&content), [9, 8, 7]);
        assert_eq!(content.content_type(), "example.com/poll:1.0");
        assert_eq!(content.fallback(), fallback);
        assert!(content.is_listed());
    }

    #[test]
    fn unknown_type_id_is_bounded() {
        let long = "x".repeat(MAX_CONTENT_TYPE_LEN + 1);
        let expected = too_large(
            "the content type",
            MAX_CONTENT_TYPE_LEN + 1,
            MAX_CONTENT_TYPE_LEN,
        );
        assert_eq!(decode(&long, b""), Err(expected.clone()));
        let content = Content::Unknown {
            content_type: long,
            body: vec![],
            fallback: None,
        };
        assert_eq!(content.encode(), Err(expected));
        assert!(matches!(decode("", b""), Err(ContentError::Empty { .. })));
    }

    #[test]
    fn known_type_cannot_be_sent_as_unknown() {
        let content = Content::Unknown {
            content_type: REACTION.into(),
            body: vec![0xff],
            fallback: None,
        };
        assert!(matches!(
            content.encode(),
            Err(ContentError::Malformed { .. })
        ));
    }

    #[test]
    fn reply_keeps_an_unknown_inner_type_but_not_its_fallback() {
        let sent = reply(Content::Unknown {
            content_type: "example.com/poll:1.0".into(),
            body: vec![1, 2, 3],
            fallback: Some("Poll".into()),
        });
        let received = decode(REPLY, &encode(&sent)).expect("decodes");
        assert_eq!(received, reply(unknown()));
    }

    #[test]
    fn reply_with_a_reaction_is_rejected_on_encode_and_decode() {
        let reaction = Content::Reaction(Reaction {
            reference: id(1),
            action: ReactionAction::Added,
            content: "👍".into(),
        });
        let inner_body = encode(&reaction);
        assert_eq!(
            reply(reaction).encode(),
            Err(ContentError::NotAllowedInReply(REACTION.into()))
        );
        let body = wire::Reply {
            reference: vec![9; 32],
            content_type: REACTION.into(),
            body: inner_body,
        }
        .encode_to_vec();
        assert_eq!(
            decode(REPLY, &body),
            Err(ContentError::NotAllowedInReply(REACTION.into()))
        );
    }

    #[test]
    fn replies_do_not_nest_nor_hold_receipts_or_updates() {
        for inner in [
            reply(Content::Text("x".into())),
            Content::ReadReceipt(ReadReceipt),
            Content::GroupUpdated(update()),
        ] {
            let content_type = inner.content_type().to_owned();
            let inner_body = encode(&inner);
            assert_eq!(
                reply(inner).encode(),
                Err(ContentError::NotAllowedInReply(content_type.clone()))
            );
            let body = wire::Reply {
                reference: vec![9; 32],
                content_type: content_type.clone(),
                body: inner_body,
            }
            .encode_to_vec();
            assert_eq!(
                decode(REPLY, &body),
                Err(ContentError::NotAllowedInReply(content_type))
            );
        }
    }

    #[test]
    fn reply_with_a_malformed_inner_body_is_an_error() {
        let body = wire::Reply {
            reference: vec![9; 32],
            content_type: ATTACHMENT.into(),
            body: vec![0xff, 0xff],
        }
        .encode_to_vec();
        assert!(is_malformed(decode(REPLY, &body)));
    }

    #[test]
    fn reaction_bounds_hold_on_encode_and_decode() {
        let long = "a".repeat(MAX_REACTION_LEN + 1);
        let expected = too_large("the reaction", MAX_REACTION_LEN + 1, MAX_REACTION_LEN);
        let reaction = |content: &str| {
            Content::Reaction(Reaction {
                reference: id(7),
                action: ReactionAction::Added,
                content: content.into(),
            })
        };
        assert_eq!(reaction(&long).encode(), Err(expected.clone()));
        assert_eq!(decode(REACTION, &reaction_wire(&long)), Err(expected));

        let empty = ContentError::Empty {
            what: "the reaction",
        };
        assert_eq!(reaction("").encode(), Err(empty.clone()));
        assert_eq!(decode(REACTION, &reaction_wire("")), Err(empty));

        let at_limit = "a".repeat(MAX_REACTION_LEN);
        assert_eq!(
            decode(REACTION, &reaction_wire(&at_limit)),
            Ok(reaction(&at_limit))
        );
    }

    #[test]
    fn attachment_bounds_hold_on_encode_and_decode() {
        let cases = [
            (
                Attachment {
                    filename: "f".repeat(MAX_FILENAME_LEN + 1),
                    ..attachment()
                },
                too_large("the file name", MAX_FILENAME_LEN + 1, MAX_FILENAME_LEN),
            ),
            (
                Attachment {
                    mime_type: "m".repeat(MAX_MIME_TYPE_LEN + 1),
                    ..attachment()
                },
                too_large("the MIME type", MAX_MIME_TYPE_LEN + 1, MAX_MIME_TYPE_LEN),
            ),
            (
                Attachment {
                    data: vec![0; MAX_INLINE_ATTACHMENT + 1],
                    ..attachment()
                },
                too_large(
                    "the inline attachment",
                    MAX_INLINE_ATTACHMENT + 1,
                    MAX_INLINE_ATTACHMENT,
                ),
            ),
        ];
        for (value, expected) in cases {
            let wire_body = value.to_wire().encode_to_vec();
            assert_eq!(Content::Attachment(value).encode(), Err(expected.clone()));
            assert_eq!(decode(ATTACHMENT, &wire_body), Err(expected));
        }
    }

    #[test]
    fn remote_attachment_bounds_hold_on_encode_and_decode() {
        let long_url = format!("https://e.example/{}", "a".repeat(MAX_URL_LEN));
        let long_name = "f".repeat(MAX_FILENAME_LEN + 1);
        let cases = [
            (
                RemoteAttachment {
                    url: long_url.clone(),
                    ..remote()
                },
                wire::RemoteAttachment {
                    url: long_url.clone(),
                    ..remote_wire()
                },
                too_large("the URL", long_url.len(), MAX_URL_LEN),
            ),
            (
                RemoteAttachment {
                    filename: Some(long_name.clone()),
                    ..remote()
                },
                wire::RemoteAttachment {
                    filename: Some(long_name),
                    ..remote_wire()
                },
                too_large("the file name", MAX_FILENAME_LEN + 1, MAX_FILENAME_LEN),
            ),
        ];
        for (value, wire_value, expected) in cases {
            assert_eq!(
                Content::RemoteAttachment(value).encode(),
                Err(expected.clone())
            );
            assert_eq!(
                decode(REMOTE_ATTACHMENT, &wire_value.encode_to_vec()),
                Err(expected)
            );
        }
    }

    #[test]
    fn non_https_urls_are_rejected() {
        for url in [
            "http://files.example/abc",
            "file:///etc/passwd",
            "ftp://files.example/abc",
            "https://",
            "https://files.example/a b",
            "files.example/abc",
            "",
        ] {
            let value = RemoteAttachment {
                url: url.into(),
                ..remote()
            };
            assert_eq!(
                Content::RemoteAttachment(value).encode(),
                Err(ContentError::InsecureUrl),
                "{url}"
            );
            let body = wire::RemoteAttachment {
                url: url.into(),
                ..remote_wire()
            }
            .encode_to_vec();
            assert_eq!(
                decode(REMOTE_ATTACHMENT, &body),
                Err(ContentError::InsecureUrl),
                "{url}"
            );
            assert_eq!(
                RemoteAttachment::encrypt(&attachment(), url),
                Err(ContentError::InsecureUrl),
                "{url}"
            );
        }
        let upper = RemoteAttachment {
            url: "HTTPS://files.example/abc".into(),
            ..remote()
        };
        assert!(Content::RemoteAttachment(upper).encode().is_ok());
    }

    #[test]
    fn group_update_bounds_hold_on_encode_and_decode() {
        let change = |field: String, new: Option<String>| FieldChange {
            field,
            old: None,
            new,
        };
        let wire_change = |c: &FieldChange| wire::FieldChange {
            field: c.field.clone(),
            old: c.old.clone(),
            new: c.new.clone(),
        };
        let too_many = MAX_GROUP_UPDATE_ENTRIES + 1;
        let cases = [
            (
                GroupUpdated {
                    added: vec![inbox(2); MAX_GROUP_UPDATE_ENTRIES],
                    removed: vec![inbox(3)],
                    ..update()
                },
                ContentError::TooMany {
                    what: "the group update",
                    count: too_many + update().changes.len(),
                    limit: MAX_GROUP_UPDATE_ENTRIES,
                },
            ),
            (
                GroupUpdated {
                    changes: vec![change("f".repeat(MAX_FIELD_NAME_LEN + 1), None)],
                    ..update()
                },
                too_large(
                    "a changed field's name",
                    MAX_FIELD_NAME_LEN + 1,
                    MAX_FIELD_NAME_LEN,
                ),
            ),
            (
                GroupUpdated {
                    changes: vec![change(
                        "name".into(),
                        Some("v".repeat(MAX_FIELD_VALUE_LEN + 1)),
                    )],
                    ..update()
                },
                too_large(
                    "a changed field's value",
                    MAX_FIELD_VALUE_LEN + 1,
                    MAX_FIELD_VALUE_LEN,
                ),
            ),
            (
                GroupUpdated {
                    changes: vec![FieldChange {
                        field: "name".into(),
                        old: Some("v".repeat(MAX_FIELD_VALUE_LEN + 1)),
                        new: None,
                    }],
                    ..update()
                },
                too_large(
                    "a changed field's value",
                    MAX_FIELD_VALUE_LEN + 1,
                    MAX_FIELD_VALUE_LEN,
                ),
            ),
            (
                GroupUpdated {
                    changes: vec![change(String::new(), None)],
                    ..update()
                },
                ContentError::Empty {
                    what: "a changed field's name",
                },
            ),
        ];
        for (value, expected) in cases {
            let inboxes = |l: &[InboxId]| l.iter().map(|i| i.as_bytes().to_vec()).collect();
            let wire_body = wire::GroupUpdated {
                by: value.by.as_bytes().to_vec(),
                added: inboxes(&value.added),
                removed: inboxes(&value.removed),
                changes: value.changes.iter().map(wire_change).collect(),
            }
            .encode_to_vec();
            assert_eq!(Content::GroupUpdated(value).encode(), Err(expected.clone()));
            assert_eq!(decode(GROUP_UPDATED, &wire_body), Err(expected));
        }
    }

    #[test]
    fn group_update_with_a_malformed_inbox_is_an_error() {
        let bad_by = wire::GroupUpdated {
            by: vec![1; 19],
            ..update_wire()
        };
        let bad_added = wire::GroupUpdated {
            added: vec![vec![2; 20], vec![3; 21]],
            ..update_wire()
        };
        let bad_removed = wire::GroupUpdated {
            removed: vec![vec![]],
            ..update_wire()
        };
        for body in [bad_by, bad_added, bad_removed] {
            assert!(is_malformed(decode(GROUP_UPDATED, &body.encode_to_vec())));
        }
    }

    #[test]
    fn fixed_size_fields_of_the_wrong_size_are_errors() {
        let reaction = wire::Reaction {
            reference: vec![7; 31],
            action: wire::REACTION_ADDED,
            content: "👍".into(),
        };
        assert!(is_malformed(decode(REACTION, &reaction.encode_to_vec())));
        let reply = wire::Reply {
            reference: vec![],
            content_type: TEXT.into(),
            body: b"hi".to_vec(),
        };
        assert!(is_malformed(decode(REPLY, &reply.encode_to_vec())));
        for body in [
            wire::RemoteAttachment {
                content_digest: vec![1; 33],
                ..remote_wire()
            },
            wire::RemoteAttachment {
                secret: vec![2; 16],
                ..remote_wire()
            },
            wire::RemoteAttachment {
                nonce: vec![3; 24],
                ..remote_wire()
            },
        ] {
            assert!(is_malformed(decode(
                REMOTE_ATTACHMENT,
                &body.encode_to_vec()
            )));
        }
    }

    #[test]
    fn reaction_action_must_be_known() {
        for action in [0, 3, u32::MAX] {
            let body = wire::Reaction {
                reference: vec![7; 32],
                action,
                content: "👍".into(),
            }
            .encode_to_vec();
            assert!(is_malformed(decode(REACTION, &body)), "{action}");
        }
    }

    #[test]
    fn garbage_bodies_of_known_types_are_errors() {
        let garbage: &[&[u8]] = &[&[0xff], &[0xff; 16], &[0x0a, 0x80], &[0x12, 0x05, 0xff]];
        for content_type in [
            REPLY,
            REACTION,
            READ_RECEIPT,
            ATTACHMENT,
            REMOTE_ATTACHMENT,
            GROUP_UPDATED,
        ] {
            for body in garbage {
                assert!(
                    decode(content_type, body).is_err(),
                    "{content_type} {body:?}"
                );
            }
        }
        // Missing required fields: an empty body is not a valid reply,
        // reaction, remote attachment or update.
        for content_type in [REPLY, REACTION, REMOTE_ATTACHMENT, GROUP_UPDATED] {
            assert!(decode(content_type, b"").is_err(), "{content_type}");
        }
    }

    /// Whatever a damaged body decodes to must itself be valid content:
    /// a decoder that accepted it but whose encoder refused it would let
    /// the wire carry what the API cannot.
    #[test]
    fn truncated_and_bit_flipped_bodies_never_panic() {
        let check = |content_type: &str, body: &[u8]| {
            if let Ok(content) = decode(content_type, body) {
                assert!(
                    content.encode().is_ok(),
                    "{content_type} decoded to invalid {content:?}"
                );
            }
        };
        for content in samples() {
            let content_type = content.content_type();
            let body = encode(&content);
            for len in 0..body.len() {
                check(content_type, &body[..len]);
            }
            for byte in 0..body.len().min(256) {
                for bit in 0..8 {
                    let mut flipped = body.clone();
                    flipped[byte] ^= 1 << bit;
                    check(content_type, &flipped);
                }
            }
        }
    }

    #[test]
    fn remote_attachment_encrypt_decrypt_round_trips() {
        let file = Attachment {
            data: (0..=255).cycle().take(MAX_INLINE_ATTACHMENT + 10).collect(),
            ..attachment()
        };
        let (remote, ciphertext) =
            RemoteAttachment::encrypt(&file, "https://files.example/abc").expect("encrypts");
        assert_eq!(remote.url, "https://files.example/abc");
        assert_eq!(remote.content_length, ciphertext.len() as u64);
        assert_eq!(remote.filename.as_deref(), Some("photo.jpg"));
        let digest: [u8; 32] = Sha256::digest(&ciphertext).into();
        assert_eq!(remote.content_digest, digest);
        assert_eq!(remote.decrypt(&ciphertext), Ok(file.clone()));

        // The message that carries it round-trips too.
        let content = Content::RemoteAttachment(remote.clone());
        assert_eq!(decode(REMOTE_ATTACHMENT, &encode(&content)), Ok(content));

        // Every upload has a key of its own.
        let (again, _) =
            RemoteAttachment::encrypt(&file, "https://files.example/abc").expect("encrypts");
        assert_ne!(again.secret, remote.secret);
        assert_ne!(again.nonce, remote.nonce);
    }

    #[test]
    fn unnamed_attachment_has_no_remote_filename() {
        let file = Attachment {
            filename: String::new(),
            ..attachment()
        };
        let (remote, ciphertext) =
            RemoteAttachment::encrypt(&file, "https://files.example/abc").expect("encrypts");
        assert_eq!(remote.filename, None);
        assert_eq!(remote.decrypt(&ciphertext), Ok(file));
    }

    #[test]
    fn tampered_ciphertext_fails_the_digest_check() {
        let (remote, mut ciphertext) =
            RemoteAttachment::encrypt(&attachment(), "https://files.example/abc")
                .expect("encrypts");
        ciphertext[3] ^= 1;
        assert_eq!(
            remote.decrypt(&ciphertext),
            Err(ContentError::DigestMismatch)
        );
    }

    #[test]
    fn wrong_length_fails_before_the_digest_check() {
        let (remote, mut ciphertext) =
            RemoteAttachment::encrypt(&attachment(), "https://files.example/abc")
                .expect("encrypts");
        let expected = ciphertext.len() as u64;
        ciphertext.push(0);
        assert_eq!(
            remote.decrypt(&ciphertext),
            Err(ContentError::LengthMismatch {
                expected,
                actual: expected + 1,
            })
        );
        assert_eq!(
            remote.decrypt(&ciphertext[..10]),
            Err(ContentError::LengthMismatch {
                expected,
                actual: 10,
            })
        );
    }

    #[test]
    fn wrong_key_or_nonce_fails_to_decrypt() {
        let (remote, ciphertext) =
            RemoteAttachment::encrypt(&attachment(), "https://files.example/abc")
                .expect("encrypts");
        let mut wrong_key = remote.clone();
        wrong_key.secret[0] ^= 1;
        assert_eq!(wrong_key.decrypt(&ciphertext), Err(ContentError::Decrypt));
        let mut wrong_nonce = remote;
        wrong_nonce.nonce[0] ^= 1;
        assert_eq!(wrong_nonce.decrypt(&ciphertext), Err(ContentError::Decrypt));
    }

    #[test]
    fn remote_attachment_debug_hides_the_key() {
        let shown = format!("{:?}", remote());
        assert!(!shown.contains(&hex::encode([2u8; 32])), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn fallback_texts_are_as_documented() {
        let reaction = |action| {
            Content::Reaction(Reaction {
                reference: id(7),
                action,
                content: "👍".into(),
            })
        };
        let cases = [
            (Content::Text("hi".into()), None),
            (
                reply(Content::Text("Saturday works".into())),
                Some("Replied to an earlier message: Saturday works".to_owned()),
            ),
            (
                reply(Content::Attachment(attachment())),
                Some("Replied to an earlier message: Sent an attachment: photo.jpg".to_owned()),
            ),
            (
                reply(unknown()),
                Some("Replied to an earlier message".to_owned()),
            ),
            (
                reaction(ReactionAction::Added),
                Some("Reacted \"👍\" to an earlier message".to_owned()),
            ),
            (
                reaction(ReactionAction::Removed),
                Some("Removed the reaction \"👍\" from an earlier message".to_owned()),
            ),
            (Content::ReadReceipt(ReadReceipt), None),
            (
                Content::Attachment(attachment()),
                Some("Sent an attachment: photo.jpg".to_owned()),
            ),
            (
                Content::Attachment(Attachment {
                    filename: String::new(),
                    ..attachment()
                }),
                Some("Sent an attachment".to_owned()),
            ),
            (
                Content::RemoteAttachment(remote()),
                Some("Sent an attachment: photo.jpg".to_owned()),
            ),
            (
                Content::RemoteAttachment(RemoteAttachment {
                    filename: None,
                    ..remote()
                }),
                Some("Sent an attachment".to_owned()),
            ),
            (
                Content::GroupUpdated(update()),
                Some(format!(
                    "{} updated the group: added 2 members, removed {}, \
                     set name to \"Climbing\", cleared description",
                    inbox(1),
                    inbox(4)
                )),
            ),
            (
                Content::GroupUpdated(GroupUpdated {
                    added: vec![],
                    removed: vec![],
                    changes: vec![],
                    ..update()
                }),
                Some(format!("{} updated the group", inbox(1))),
            ),
            (unknown(), None),
        ];
        for (content, expected) in cases {
            assert_eq!(content.fallback(), expected, "{content:?}");
        }
    }

    #[test]
    fn fallbacks_are_capped_on_a_char_boundary() {
        // 'é' is two bytes, so the cap falls inside a character.
        let long = "é".repeat(MAX_FALLBACK_LEN);
        let contents = [
            reply(Content::Text(long.clone())),
            Content::Unknown {
                content_type: "example.com/x".into(),
                body: vec![],
                fallback: Some(long.clone()),
            },
            Content::GroupUpdated(GroupUpdated {
                changes: (0..MAX_GROUP_UPDATE_ENTRIES)
                    .map(|i| FieldChange {
                        field: format!("field{i}"),
                        old: None,
                        new: Some(long[..MAX_FIELD_VALUE_LEN.min(long.len())].to_owned()),
                    })
                    .collect(),
                ..update()
            }),
        ];
        for content in contents {
            let text = content.fallback().expect("has a fallback");
            assert!(text.len() <= MAX_FALLBACK_LEN, "{}", text.len());
            assert!(text.len() > MAX_FALLBACK_LEN - 8, "{}", text.len());
            assert!(text.ends_with('…'));
        }
    }

    #[test]
    fn reactions_and_receipts_are_not_listed() {
        for content in samples() {
            let expected = !matches!(content, Content::Reaction(_) | Content::ReadReceipt(_));
            assert_eq!(content.is_listed(), expected, "{content:?}");
        }
        assert!(!Content::ReadReceipt(ReadReceipt).is_listed());
        assert!(Content::GroupUpdated(update()).is_listed());
        assert!(unknown().is_listed());
    }
}
