//! Topics: the named streams of the delivery network.
//!
//! ```text
//! group/<group id, lowercase hex>
//! welcome/<installation id, 64 lowercase hex digits>
//! welcome-shared/<SHA-256 of a Welcome's encrypted GroupInfo, 64 lowercase hex digits>
//! identity/<inbox id, EIP-55 address>
//! ```

use std::{fmt, str::FromStr};

use crate::identity::{InboxId, InstallationId};

/// The longest group id a topic may name, in bytes.
pub const MAX_GROUP_ID_LEN: usize = 255;

/// A delivery-network topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// A group's handshake and application messages.
    Group(Vec<u8>),
    /// Welcomes addressed to one installation.
    Welcome(InstallationId),
    /// The part of one commit's Welcome that all its joiners share (the
    /// encrypted GroupInfo, with the ratchet tree), named by its SHA-256 and
    /// published once, in one or more envelopes (see
    /// [`crate::group::SharedWelcome`]).
    WelcomeShared([u8; 32]),
    /// An inbox's identity updates.
    Identity(InboxId),
}

/// Why a string is not a topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic {topic:?}: {reason}")]
pub struct TopicError {
    /// The string that was given.
    pub topic: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Topic {
    /// A canonical byte encoding for storage keys: one kind byte, then the
    /// raw id. Distinct topics have distinct encodings.
    pub fn to_key(&self) -> Vec<u8> {
        let (kind, id): (u8, &[u8]) = match self {
            Topic::Group(id) => (b'g', id),
            Topic::Welcome(id) => (b'w', id.as_bytes()),
            Topic::WelcomeShared(hash) => (b's', hash),
            Topic::Identity(id) => (b'i', id.as_bytes()),
        };
        let mut key = Vec::with_capacity(1 + id.len());
        key.push(kind);
        key.extend_from_slice(id);
        key
    }

    /// Decode [`Topic::to_key`].
    pub fn from_key(key: &[u8]) -> Option<Self> {
        let (kind, id) = key.split_first()?;
        match kind {
            b'g' if !id.is_empty() && id.len() <= MAX_GROUP_ID_LEN => {
                Some(Topic::Group(id.to_vec()))
            }
            b'w' => Some(Topic::Welcome(InstallationId(id.try_into().ok()?))),
            b's' => Some(Topic::WelcomeShared(id.try_into().ok()?)),
            b'i' => Some(Topic::Identity(InboxId::from_bytes(id.try_into().ok()?))),
            _ => None,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Group(id) => write!(f, "group/{}", hex::encode(id)),
            Topic::Welcome(id) => write!(f, "welcome/{id}"),
            Topic::WelcomeShared(hash) => write!(f, "welcome-shared/{}", hex::encode(hash)),
            Topic::Identity(id) => write!(f, "identity/{id}"),
        }
    }
}

impl FromStr for Topic {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| TopicError {
            topic: s.to_owned(),
            reason,
        };
        let (kind, id) = s
            .split_once('/')
            .ok_or_else(|| err("expected <kind>/<id>"))?;
        let hash = |what| -> Result<[u8; 32], TopicError> {
            let mut bytes = [0u8; 32];
            if id.len() != 64 || id.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(err(what));
            }
            hex::decode_to_slice(id, &mut bytes).map_err(|_| err(what))?;
            Ok(bytes)
        };
        match kind {
            "group" => {
                if id.is_empty() || id.chars().any(|c| c.is_ascii_uppercase()) {
                    return Err(err("a group id is non-empty lowercase hex"));
                }
                let bytes = hex::decode(id).map_err(|_| err("a group id is lowercase hex"))?;
                if bytes.len() > MAX_GROUP_ID_LEN {
                    return Err(err("group id longer than 255 bytes"));
                }
                Ok(Topic::Group(bytes))
            }
            "welcome" => Ok(Topic::Welcome(InstallationId(hash(
                "an installation id is 64 lowercase hex digits",
            )?))),
            "welcome-shared" => Ok(Topic::WelcomeShared(hash(
                "a shared Welcome is named by 64 lowercase hex digits (its SHA-256)",
            )?)),
            "identity" => {
                let inbox: InboxId = id
                    .parse()
                    .map_err(|_| err("an inbox id is an EIP-55 address"))?;
                // One topic has one name: an all-lowercase or all-uppercase
                // address is the same inbox, but not its topic's name.
                if inbox.to_string() != id {
                    return Err(err(
                        "an inbox id in a topic is written with its EIP-55 checksum (mixed case)",
                    ));
                }
                Ok(Topic::Identity(inbox))
            }
            _ => Err(err(
                "unknown topic kind (group, welcome, welcome-shared, identity)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_strings_and_keys() {
        let inbox: InboxId = "0xB5b61b1Ef312c72F648B49c08E83f0cDf8fBEf7b"
            .parse()
            .expect("inbox");
        for topic in [
            Topic::Group(vec![0xab, 0x01]),
            Topic::Welcome(InstallationId([7; 32])),
            Topic::WelcomeShared([9; 32]),
            Topic::Identity(inbox),
        ] {
            let text = topic.to_string();
            assert_eq!(text.parse::<Topic>().expect("parses"), topic, "{text}");
            assert_eq!(Topic::from_key(&topic.to_key()), Some(topic));
        }
        assert_eq!(Topic::Group(vec![0xab]).to_string(), "group/ab");
    }

    #[test]
    fn malformed_topics_are_rejected() {
        for bad in [
            "",
            "group",
            "group/",
            "group/AB",
            "group/xyz",
            "group/abc",
            "welcome/00",
            &format!("welcome/{}", "A".repeat(64)),
            "welcome-shared/00",
            &format!("welcome-shared/{}", "AB".repeat(32)),
            "identity/0x1234",
            "identity/0xb5b61b1ef312c72f648b49c08e83f0cdf8fbef7b",
            "identity/0xB5B61B1EF312C72F648B49C08E83F0CDF8FBEF7B",
            "inbox/00",
            &format!("group/{}", "00".repeat(256)),
        ] {
            assert!(bad.parse::<Topic>().is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(Topic::from_key(b""), None);
        assert_eq!(Topic::from_key(b"g"), None);
        assert_eq!(Topic::from_key(b"w\x01"), None);
        assert_eq!(Topic::from_key(b"s\x01"), None);
        assert_eq!(Topic::from_key(b"x\x01"), None);
    }
}
