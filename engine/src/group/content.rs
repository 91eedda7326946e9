//! What travels inside MLS application messages and Welcome envelopes.
//!
//! Application messages carry a content type and a message id, so that a
//! receiver can tell text from control content and de-duplicate a message
//! that was sent twice. A Welcome travels with the cursor of the group topic
//! just past its commit, from which the joiner reads.

use openmls_traits::random::OpenMlsRand;
use prost::Message as _;
use sha2::{Digest, Sha256};

use super::error::GroupError;
use crate::{
    delivery::{Cursor, Topic},
    identity::InboxId,
};

/// The content type of plain text.
pub const CONTENT_TYPE_TEXT: &str = "text/plain";

/// A control message: the digest of the sender's epoch authenticator,
/// published by a committer once its commit merged, and by every member
/// on a timer. It is never shown. Its real work is the traffic: its
/// authenticated data names the sender's branch, which lets a member on a
/// fork find out (see `rewind`).
pub const CONTENT_TYPE_EPOCH_DIGEST: &str = "kith/epoch-digest";

/// A control message of deniable DMs: the sender's binding, one MAC per
/// installation of the two inboxes, saying which installation its leaf
/// speaks for (see `deniable`). It is never shown.
pub const CONTENT_TYPE_BINDING: &str = "kith/deniable-binding";

/// A transcript entry (`transcript.rs`): what a merged commit changed,
/// stored by the engine among the messages; never sent.
pub const CONTENT_TYPE_GROUP_UPDATED: &str = "kith/group-updated";

/// The prefix of the engine's own content types, which applications may
/// not send.
pub const CONTROL_CONTENT_PREFIX: &str = "kith/";

/// The longest content type, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 128;

/// The longest fallback text, in bytes.
pub const MAX_FALLBACK_LEN: usize = 4096;

/// Why a payload did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct ContentError {
    /// What was being decoded.
    pub what: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// The id of a message: `SHA-256("kith message id v1" ‖ sender ‖ group ‖
/// nonce)`.
pub fn message_id(sender: InboxId, group_id: &[u8], nonce: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"kith message id v1");
    hasher.update(sender.as_bytes());
    hasher.update((group_id.len() as u32).to_be_bytes());
    hasher.update(group_id);
    hasher.update(nonce);
    hasher.finalize().into()
}

/// The plaintext of an application message.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Content {
    /// The content type.
    #[prost(string, tag = "1")]
    pub content_type: String,
    /// The message id.
    #[prost(bytes = "vec", tag = "2")]
    pub message_id: Vec<u8>,
    /// The body.
    #[prost(bytes = "vec", tag = "3")]
    pub body: Vec<u8>,
    /// The sender's clock, ms since the Unix epoch.
    #[prost(uint64, tag = "4")]
    pub sent_at_ms: u64,
    /// Text to show in place of a content type the reader does not know.
    #[prost(string, optional, tag = "5")]
    pub fallback: Option<String>,
}

impl Content {
    /// The content of a new message from `sender` in `group_id`, with a
    /// fresh id (from 16 random bytes); returns it with that id.
    pub(crate) fn fresh(
        rand: &impl OpenMlsRand,
        sender: InboxId,
        group_id: &[u8],
        message: Outgoing<'_>,
        sent_at_ms: u64,
    ) -> Result<(Self, [u8; 32]), GroupError> {
        let nonce = rand.random_vec(16).map_err(GroupError::mls)?;
        let id = message_id(sender, group_id, &nonce);
        let content = Self {
            content_type: message.content_type.to_owned(),
            message_id: id.to_vec(),
            body: message.body.to_vec(),
            sent_at_ms,
            fallback: message.fallback.map(str::to_owned),
        };
        Ok((content, id))
    }

    /// Decode and check an application message's plaintext.
    pub fn decode_checked(bytes: &[u8]) -> Result<(Self, [u8; 32]), ContentError> {
        let content = Self::decode(bytes).map_err(|e| ContentError {
            what: "message content",
            reason: e.to_string(),
        })?;
        let id: [u8; 32] = content
            .message_id
            .as_slice()
            .try_into()
            .map_err(|_| ContentError {
                what: "message content",
                reason: format!("message id is {} bytes, not 32", content.message_id.len()),
            })?;
        if content.content_type.len() > MAX_CONTENT_TYPE_LEN || content.content_type.is_empty() {
            return Err(ContentError {
                what: "message content",
                reason: "content type is empty or longer than 128 bytes".into(),
            });
        }
        if content
            .fallback
            .as_ref()
            .is_some_and(|f| f.len() > MAX_FALLBACK_LEN)
        {
            return Err(ContentError {
                what: "message content",
                reason: format!("fallback text longer than {MAX_FALLBACK_LEN} bytes"),
            });
        }
        Ok((content, id))
    }
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
struct CursorEntry {
    #[prost(uint32, tag = "1")]
    node: u32,
    #[prost(uint64, tag = "2")]
    sequence: u64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
struct BranchEntry {
    #[prost(uint64, tag = "1")]
    epoch: u64,
    #[prost(bytes = "vec", tag = "2")]
    auth_digest: Vec<u8>,
    #[prost(uint64, tag = "3")]
    time_ms: u64,
    #[prost(uint32, tag = "4")]
    node: u32,
    #[prost(uint64, tag = "5")]
    sequence: u64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
struct WelcomeWire {
    #[prost(bytes = "vec", tag = "1")]
    welcome: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    group_id: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    cursor: Vec<CursorEntry>,
    #[prost(message, repeated, tag = "4")]
    branch: Vec<BranchEntry>,
    /// SHA-256 of the shared GroupInfo, when `welcome` holds only the
    /// joiner's own part.
    #[prost(bytes = "vec", tag = "5")]
    shared_hash: Vec<u8>,
    /// SHA-256 of each part of the shared GroupInfo, in order.
    #[prost(bytes = "vec", repeated, tag = "6")]
    shared_parts: Vec<Vec<u8>>,
}

/// Where the part of a Welcome its joiners share is, and how to recognise
/// it: carried by each joiner's own [`WelcomePayload`] when the Welcome was
/// split (see `group::shared_welcome` and `welcome-shared/` topics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedWelcome {
    /// SHA-256 of the whole encrypted GroupInfo; it names the topic.
    pub hash: [u8; 32],
    /// SHA-256 of each part, in order.
    pub parts: Vec<[u8; 32]>,
}

impl SharedWelcome {
    /// The topic the parts are published on.
    pub fn topic(&self) -> Topic {
        Topic::WelcomeShared(self.hash)
    }
}

/// One commit of the branch a Welcome leads into: the epoch it left, that
/// epoch's authenticator digest, and the commit's canonical position
/// `(originator time, node, sequence)`.
pub type BranchCommit = (u64, [u8; 8], (u64, u32, u64));

/// A Welcome as published on a `welcome/<installation>` topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WelcomePayload {
    /// The TLS-serialized `MlsMessage` holding the Welcome: whole, or, when
    /// `shared` is set, with this joiner's secrets and an empty GroupInfo.
    pub welcome: Vec<u8>,
    /// The group it is for.
    pub group_id: Vec<u8>,
    /// The group topic's cursor just past the commit that added the joiner.
    pub cursor: Cursor,
    /// The last commits of the committer's branch, newest first (the one
    /// that added the joiner included), so that the joiner can tell, from
    /// members' messages, whether that branch lost (a fork). Not
    /// authenticated by MLS: a forged history can only make the joiner
    /// believe it is forked and ask to be re-added.
    pub branch: Vec<BranchCommit>,
    /// Where the GroupInfo is, if it was published apart, once for every
    /// joiner of the commit.
    pub shared: Option<SharedWelcome>,
}

impl WelcomePayload {
    /// Encode.
    pub fn to_bytes(&self) -> Vec<u8> {
        WelcomeWire {
            welcome: self.welcome.clone(),
            group_id: self.group_id.clone(),
            cursor: self
                .cursor
                .entries()
                .map(|(node, sequence)| CursorEntry { node, sequence })
                .collect(),
            branch: self
                .branch
                .iter()
                .map(|(epoch, auth, (time_ms, node, sequence))| BranchEntry {
                    epoch: *epoch,
                    auth_digest: auth.to_vec(),
                    time_ms: *time_ms,
                    node: *node,
                    sequence: *sequence,
                })
                .collect(),
            shared_hash: self
                .shared
                .as_ref()
                .map(|s| s.hash.to_vec())
                .unwrap_or_default(),
            shared_parts: self
                .shared
                .iter()
                .flat_map(|s| s.parts.iter().map(|p| p.to_vec()))
                .collect(),
        }
        .encode_to_vec()
    }

    /// Decode.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ContentError> {
        let wire = WelcomeWire::decode(bytes).map_err(|e| ContentError {
            what: "welcome payload",
            reason: e.to_string(),
        })?;
        let branch = wire
            .branch
            .iter()
            .map(|e| {
                let auth: [u8; 8] =
                    e.auth_digest
                        .as_slice()
                        .try_into()
                        .map_err(|_| ContentError {
                            what: "welcome payload",
                            reason: format!(
                                "a branch entry's digest is {} bytes, not 8",
                                e.auth_digest.len()
                            ),
                        })?;
                Ok((e.epoch, auth, (e.time_ms, e.node, e.sequence)))
            })
            .collect::<Result<Vec<_>, ContentError>>()?;
        let digest = |bytes: &[u8]| -> Result<[u8; 32], ContentError> {
            bytes.try_into().map_err(|_| ContentError {
                what: "welcome payload",
                reason: format!("a shared-part digest is {} bytes, not 32", bytes.len()),
            })
        };
        let shared = if wire.shared_hash.is_empty() && wire.shared_parts.is_empty() {
            None
        } else {
            Some(SharedWelcome {
                hash: digest(&wire.shared_hash)?,
                parts: wire
                    .shared_parts
                    .iter()
                    .map(|p| digest(p))
                    .collect::<Result<_, _>>()?,
            })
        };
        Ok(Self {
            shared,
            welcome: wire.welcome,
            group_id: wire.group_id,
            cursor: wire.cursor.iter().map(|e| (e.node, e.sequence)).collect(),
            branch,
        })
    }
}

/// Check a content type an application sends: 1 to
/// [`MAX_CONTENT_TYPE_LEN`] bytes, and not one of the engine's own.
/// An application message to send: its content type, body, and the
/// text a client that does not know the type shows instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing<'a> {
    /// The content type, e.g. `text/plain`.
    pub content_type: &'a str,
    /// The body, in the content type's encoding.
    pub body: &'a [u8],
    /// The fallback text, at most [`MAX_FALLBACK_LEN`] bytes.
    pub fallback: Option<&'a str>,
}

impl<'a> Outgoing<'a> {
    /// A message of `content_type` without fallback text.
    pub fn new(content_type: &'a str, body: &'a [u8]) -> Self {
        Self {
            content_type,
            body,
            fallback: None,
        }
    }

    /// Plain text.
    pub fn text(text: &'a str) -> Self {
        Self::new(CONTENT_TYPE_TEXT, text.as_bytes())
    }

    /// With `fallback` as the text for readers that do not know the type.
    pub fn with_fallback(mut self, fallback: &'a str) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// Why an application may not send it, if it may not.
    pub(crate) fn check(&self) -> Result<(), String> {
        check_application_type(self.content_type)?;
        match self.fallback {
            Some(f) if f.len() > MAX_FALLBACK_LEN => Err(format!(
                "the fallback text is {} bytes; the limit is {MAX_FALLBACK_LEN}",
                f.len()
            )),
            _ => Ok(()),
        }
    }
}

pub(crate) fn check_application_type(content_type: &str) -> Result<(), String> {
    if content_type.is_empty() || content_type.len() > MAX_CONTENT_TYPE_LEN {
        return Err("the content type must be 1 to 128 bytes".into());
    }
    if content_type.starts_with(CONTROL_CONTENT_PREFIX) {
        return Err(format!(
            "content types starting with {CONTROL_CONTENT_PREFIX:?} are the engine's control \
             messages"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(fallback: Option<String>) -> Vec<u8> {
        Content {
            content_type: "example.com/poll:1.0".into(),
            message_id: vec![7; 32],
            body: vec![1, 2, 3],
            sent_at_ms: 5,
            fallback,
        }
        .encode_to_vec()
    }

    #[test]
    fn a_fallback_round_trips_and_an_over_long_one_is_refused() {
        let (decoded, id) =
            Content::decode_checked(&content(Some("A poll".into()))).expect("decodes");
        assert_eq!(id, [7; 32]);
        assert_eq!(decoded.fallback.as_deref(), Some("A poll"));
        let (decoded, _) = Content::decode_checked(&content(None)).expect("decodes");
        assert_eq!(decoded.fallback, None);
        let err = Content::decode_checked(&content(Some("x".repeat(MAX_FALLBACK_LEN + 1))))
            .expect_err("too long");
        assert!(err.reason.contains("fallback"), "{err}");
    }

    #[test]
    fn an_application_may_not_send_an_over_long_fallback_or_a_control_type() {
        let long = "x".repeat(MAX_FALLBACK_LEN + 1);
        assert!(Outgoing::text("hi").with_fallback(&long).check().is_err());
        assert!(
            Outgoing::new(CONTENT_TYPE_EPOCH_DIGEST, b"")
                .check()
                .is_err()
        );
        assert!(Outgoing::text("hi").with_fallback("hi").check().is_ok());
    }
}
