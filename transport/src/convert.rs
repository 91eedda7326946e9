//! Conversions between the generated `kith.v1` types and engine types, in
//! one place, so that node and client code never handle prost types
//! directly. Every conversion from the wire validates and says which field
//! was wrong.

use kith_engine::{
    delivery::{Cursor, Envelope, SealedEnvelope},
    identity::{IdentityUpdate, InboxId, InstallationId},
};
use prost::Message as _;

use crate::proto;

/// A wire value that does not make a valid engine value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConvertError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConvertError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// The wire form of an envelope, without a seal.
pub fn envelope_to_proto(envelope: &Envelope) -> proto::Envelope {
    proto::Envelope {
        topic: envelope.topic.to_string(),
        payload: envelope.payload.clone(),
        originator_node_id: envelope.originator_node_id,
        originator_sequence_id: envelope.originator_sequence_id,
        originator_time_ms: envelope.originator_time_ms,
        originator_signature: Vec::new(),
    }
}

/// The wire form of a sealed envelope, as a node serves it.
pub fn sealed_to_proto(sealed: &SealedEnvelope) -> proto::Envelope {
    proto::Envelope {
        originator_signature: sealed.seal.clone(),
        ..envelope_to_proto(&sealed.envelope)
    }
}

/// A sealed envelope from the wire (the seal is checked by whoever knows
/// the originator's key).
pub fn sealed_from_proto(mut envelope: proto::Envelope) -> Result<SealedEnvelope, ConvertError> {
    let seal = std::mem::take(&mut envelope.originator_signature);
    Ok(SealedEnvelope {
        envelope: envelope_from_proto(envelope)?,
        seal,
    })
}

/// Envelopes a client receives from a node.
pub fn envelope_from_proto(envelope: proto::Envelope) -> Result<Envelope, ConvertError> {
    Ok(Envelope {
        topic: envelope
            .topic
            .parse()
            .map_err(|e: kith_engine::delivery::TopicError| {
                ConvertError::new("envelope.topic", e.reason)
            })?,
        payload: envelope.payload,
        originator_node_id: envelope.originator_node_id,
        originator_sequence_id: envelope.originator_sequence_id,
        originator_time_ms: envelope.originator_time_ms,
    })
}

/// The wire form of a cursor.
pub fn cursor_to_proto(cursor: &Cursor) -> proto::Cursor {
    proto::Cursor {
        last_seen: cursor.entries().collect(),
    }
}

/// A cursor from the wire (absent means empty).
pub fn cursor_from_proto(cursor: Option<proto::Cursor>) -> Cursor {
    cursor.map_or_else(Cursor::new, |c| c.last_seen.into_iter().collect())
}

pub(crate) fn inbox(field: &'static str, bytes: &[u8]) -> Result<InboxId, ConvertError> {
    bytes
        .try_into()
        .map(InboxId::from_bytes)
        .map_err(|_| ConvertError::new(field, format!("expected 20 bytes, got {}", bytes.len())))
}

pub(crate) fn installation(
    field: &'static str,
    bytes: &[u8],
) -> Result<InstallationId, ConvertError> {
    bytes
        .try_into()
        .map(InstallationId)
        .map_err(|_| ConvertError::new(field, format!("expected 32 bytes, got {}", bytes.len())))
}

/// The engine encodes identity updates with its own prost message, which is
/// the same schema as `kith.v1.IdentityUpdate`; converting through the bytes
/// keeps one definition of the field checks (the engine's).
/// The wire form of an identity update.
pub fn identity_update_to_proto(
    update: &IdentityUpdate,
) -> Result<proto::IdentityUpdate, ConvertError> {
    proto::IdentityUpdate::decode(update.to_bytes().as_slice())
        .map_err(|e| ConvertError::new("identity update", e.to_string()))
}

/// An identity update from the wire, with its fields' shapes checked.
pub fn identity_update_from_proto(
    update: &proto::IdentityUpdate,
) -> Result<IdentityUpdate, ConvertError> {
    IdentityUpdate::from_bytes(&update.encode_to_vec())
        .map_err(|e| ConvertError::new("identity update", e.to_string()))
}

#[cfg(test)]
mod tests {
    use kith_engine::{
        delivery::Topic,
        identity::{InstallationKeys, LocalWallet, UnsignedIdentityUpdate},
    };
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn identity_updates_round_trip_through_the_wire_schema() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let wallet = LocalWallet::generate(&mut rng);
        let keys = InstallationKeys::generate(&mut rng);
        let request = UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, 5);
        let signature = wallet.sign_personal(request.signature_text().as_bytes());
        let update = request.sign(signature, Some(&keys));

        let wire = identity_update_to_proto(&update).expect("to proto");
        assert_eq!(wire.inbox, wallet.inbox_id().as_bytes());
        assert_eq!(wire.action, proto::IdentityAction::AddInstallation as i32);
        assert_eq!(wire.sequence, 1);
        assert_eq!(wire.installation_signature.as_ref().map(Vec::len), Some(64));
        assert_eq!(
            identity_update_from_proto(&wire).expect("from proto"),
            update
        );

        let mut bad = wire.clone();
        bad.inbox.pop();
        assert!(identity_update_from_proto(&bad).is_err());
        let mut unknown = wire;
        unknown.action = 9;
        assert!(identity_update_from_proto(&unknown).is_err());
    }

    #[test]
    fn envelopes_and_cursors_round_trip() {
        let envelope = Envelope {
            topic: Topic::Group(vec![1, 2]),
            payload: b"hi".to_vec(),
            originator_node_id: 3,
            originator_sequence_id: 4,
            originator_time_ms: 5,
        };
        let wire = envelope_to_proto(&envelope);
        assert_eq!(wire.topic, "group/0102");
        assert_eq!(envelope_from_proto(wire.clone()).expect("valid"), envelope);
        let mut bad = wire;
        bad.topic = "groups/01".into();
        let error = envelope_from_proto(bad).expect_err("bad topic");
        assert_eq!(error.field, "envelope.topic");

        let cursor = Cursor::from_iter([(1, 10), (2, 20)]);
        assert_eq!(cursor_from_proto(Some(cursor_to_proto(&cursor))), cursor);
        assert_eq!(cursor_from_proto(None), Cursor::new());
    }

    /// `envelopes.proto` documents the Welcome payload for clients written
    /// from the proto files alone: the engine's bytes must decode as that
    /// message, field for field, and back.
    #[test]
    fn welcome_payloads_follow_the_documented_schema() {
        use kith_engine::group::{SharedWelcome, WelcomePayload};
        let payload = WelcomePayload {
            welcome: vec![0, 1, 0, 3, 9],
            group_id: vec![0xab; 16],
            cursor: [(1, 10), (2, 3)].into_iter().collect(),
            branch: vec![(3, [9; 8], (1_767_225_500_000, 1, 42))],
            shared: Some(SharedWelcome {
                hash: [5; 32],
                parts: vec![[6; 32], [7; 32]],
            }),
        };
        let wire = proto::WelcomePayload::decode(payload.to_bytes().as_slice()).expect("decodes");
        assert_eq!(wire.welcome, payload.welcome);
        assert_eq!(wire.group_id, payload.group_id);
        let cursor: Vec<(u32, u64)> = wire.cursor.iter().map(|e| (e.node, e.sequence)).collect();
        assert_eq!(cursor, vec![(1, 10), (2, 3)]);
        let branch = &wire.branch[0];
        assert_eq!(
            (
                branch.epoch,
                branch.auth_digest.as_slice(),
                branch.time_ms,
                branch.node,
                branch.sequence
            ),
            (3, &[9u8; 8][..], 1_767_225_500_000, 1, 42)
        );
        assert_eq!(wire.shared_hash, vec![5; 32]);
        assert_eq!(wire.shared_parts, vec![vec![6; 32], vec![7; 32]]);
        assert_eq!(
            WelcomePayload::from_bytes(&wire.encode_to_vec()).expect("back"),
            payload
        );
        let whole = proto::WelcomePayload {
            shared_hash: Vec::new(),
            shared_parts: Vec::new(),
            ..wire
        };
        assert_eq!(
            WelcomePayload::from_bytes(&whole.encode_to_vec())
                .expect("whole")
                .shared,
            None
        );
    }

    #[test]
    fn ids_must_have_their_length() {
        assert!(inbox("inbox", &[0; 19]).is_err());
        assert!(inbox("inbox", &[0; 20]).is_ok());
        assert!(installation("installation_id", &[0; 31]).is_err());
        assert_eq!(
            installation("installation_id", &[0; 33])
                .expect_err("too long")
                .field,
            "installation_id"
        );
    }
}
