//! Identity logs: the append-only, wallet-signed history of which
//! installations speak for an inbox.
//!
//! Each update is signed by the inbox's wallet with EIP-191 `personal_sign`
//! over a human-readable text, so that a person approving it in a wallet
//! sees exactly what they allow. An `AddInstallation` is also signed by the
//! new installation over the same text (proof of possession), so nobody can
//! claim a key they do not hold. For example:
//!
//! ```text
//! Kith identity update (v1)
//! Action: AddInstallation
//! Inbox: 0xEeFca179F40D3B8b3D941E6A13e48835a3aF8241
//! Installation key: df7d1b6555ad123e0f7d52fec87cdca3a16999c2bd559d45403dc687e029f89a
//! Identity key: c4904d84d3526f4b7f95ccafa75d3f3639f46fe55eb12c9bdbc4a87953795d70
//! Sequence: 1
//! Time (unix ms): 1795716485000
//! ```
//!
//! Lines end with `\n` and there is no trailing newline. The keys are the
//! installation's Ed25519 public key and its X25519 identity key in
//! lowercase hex; a `RevokeInstallation` names the same two keys of the
//! installation it revokes.
//!
//! [`IdentityState`] applies updates one at a time and rejects, each with
//! its own [`IdentityError`], anything that is not the next valid step.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;

use super::{
    error::IdentityError,
    installation::{InstallationId, InstallationKeys, verify_installation_signature},
    wallet::{InboxId, recover_signer},
};

/// What an identity update does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateAction {
    /// Add an installation to the inbox.
    AddInstallation,
    /// Revoke an installation for good.
    RevokeInstallation,
}

impl UpdateAction {
    fn name(self) -> &'static str {
        match self {
            UpdateAction::AddInstallation => "AddInstallation",
            UpdateAction::RevokeInstallation => "RevokeInstallation",
        }
    }
}

/// An identity update before the wallet signed it: the signature request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedIdentityUpdate {
    /// The inbox whose log this extends.
    pub inbox: InboxId,
    /// What it does.
    pub action: UpdateAction,
    /// The installation added or revoked.
    pub installation: InstallationId,
    /// That installation's X25519 identity key.
    pub identity_key: [u8; 32],
    /// Position in the log, starting at 1.
    pub sequence: u64,
    /// When it was made, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

impl UnsignedIdentityUpdate {
    /// A request to add the installation whose keys are `keys`.
    pub fn add_installation(
        inbox: InboxId,
        keys: &InstallationKeys,
        sequence: u64,
        time_ms: u64,
    ) -> Self {
        Self {
            inbox,
            action: UpdateAction::AddInstallation,
            installation: keys.id(),
            identity_key: keys.identity_public_key(),
            sequence,
            time_ms,
        }
    }

    /// A request to revoke `installation`, whose identity key is
    /// `identity_key`.
    pub fn revoke_installation(
        inbox: InboxId,
        installation: InstallationId,
        identity_key: [u8; 32],
        sequence: u64,
        time_ms: u64,
    ) -> Self {
        Self {
            inbox,
            action: UpdateAction::RevokeInstallation,
            installation,
            identity_key,
            sequence,
            time_ms,
        }
    }

    /// The exact text the wallet signs with EIP-191 `personal_sign` (and,
    /// for an add, the installation signs with Ed25519). See the module
    /// docs for its format.
    pub fn signature_text(&self) -> String {
        format!(
            "Kith identity update (v1)\nAction: {}\nInbox: {}\nInstallation key: {}\nIdentity key: {}\nSequence: {}\nTime (unix ms): {}",
            self.action.name(),
            self.inbox,
            self.installation,
            hex::encode(self.identity_key),
            self.sequence,
            self.time_ms,
        )
    }

    /// Attach the wallet's signature over [`Self::signature_text`]. For an
    /// `AddInstallation`, pass the new installation's keys, which sign the
    /// same text as proof of possession; for a revocation pass `None`.
    pub fn sign(
        self,
        wallet_signature: [u8; 65],
        installation: Option<&InstallationKeys>,
    ) -> IdentityUpdate {
        let installation_signature =
            installation.map(|keys| keys.sign(self.signature_text().as_bytes()));
        IdentityUpdate {
            unsigned: self,
            wallet_signature,
            installation_signature,
        }
    }
}

/// A signed identity update, as stored by the node and served to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityUpdate {
    /// The signed fields.
    pub unsigned: UnsignedIdentityUpdate,
    /// The wallet's EIP-191 signature, r ‖ s ‖ v.
    pub wallet_signature: [u8; 65],
    /// The new installation's Ed25519 signature (adds only).
    pub installation_signature: Option<[u8; 64]>,
}

/// The protobuf form of an [`IdentityUpdate`]. The node stores and serves
/// this encoding; it is `kith.v1.IdentityUpdate`:
///
/// ```proto
/// message IdentityUpdate {
///   bytes inbox = 1;                         // 20-byte address
///   Action action = 2;                       // 1 = add, 2 = revoke
///   bytes installation_key = 3;              // 32-byte Ed25519 public key
///   bytes identity_key = 4;                  // 32-byte X25519 public key
///   uint64 sequence = 5;
///   uint64 time_ms = 6;
///   bytes wallet_signature = 7;              // 65 bytes, r || s || v
///   optional bytes installation_signature = 8; // 64 bytes, adds only
/// }
/// ```
#[derive(Clone, PartialEq, prost::Message)]
struct IdentityUpdateProto {
    #[prost(bytes = "vec", tag = "1")]
    inbox: Vec<u8>,
    #[prost(enumeration = "ActionProto", tag = "2")]
    action: i32,
    #[prost(bytes = "vec", tag = "3")]
    installation_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    identity_key: Vec<u8>,
    #[prost(uint64, tag = "5")]
    sequence: u64,
    #[prost(uint64, tag = "6")]
    time_ms: u64,
    #[prost(bytes = "vec", tag = "7")]
    wallet_signature: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "8")]
    installation_signature: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
enum ActionProto {
    Unspecified = 0,
    AddInstallation = 1,
    RevokeInstallation = 2,
}

fn fixed<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], IdentityError> {
    bytes.try_into().map_err(|_| {
        IdentityError::Malformed(format!("{what} must be {N} bytes, got {}", bytes.len()))
    })
}

impl IdentityUpdate {
    /// The protobuf encoding (see [`IdentityUpdateProto`] above).
    pub fn to_bytes(&self) -> Vec<u8> {
        let u = &self.unsigned;
        IdentityUpdateProto {
            inbox: u.inbox.as_bytes().to_vec(),
            action: match u.action {
                UpdateAction::AddInstallation => ActionProto::AddInstallation,
                UpdateAction::RevokeInstallation => ActionProto::RevokeInstallation,
            } as i32,
            installation_key: u.installation.0.to_vec(),
            identity_key: u.identity_key.to_vec(),
            sequence: u.sequence,
            time_ms: u.time_ms,
            wallet_signature: self.wallet_signature.to_vec(),
            installation_signature: self.installation_signature.map(|s| s.to_vec()),
        }
        .encode_to_vec()
    }

    /// Decode the protobuf encoding. Only the shape is checked here;
    /// [`IdentityState::apply`] checks the signatures and the rules.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let proto = IdentityUpdateProto::decode(bytes)
            .map_err(|e| IdentityError::Malformed(e.to_string()))?;
        let action = match ActionProto::try_from(proto.action) {
            Ok(ActionProto::AddInstallation) => UpdateAction::AddInstallation,
            Ok(ActionProto::RevokeInstallation) => UpdateAction::RevokeInstallation,
            _ => {
                return Err(IdentityError::Malformed(format!(
                    "unknown action {}",
                    proto.action
                )));
            }
        };
        Ok(Self {
            unsigned: UnsignedIdentityUpdate {
                inbox: InboxId::from_bytes(fixed(&proto.inbox, "inbox")?),
                action,
                installation: InstallationId(fixed(&proto.installation_key, "installation key")?),
                identity_key: fixed(&proto.identity_key, "identity key")?,
                sequence: proto.sequence,
                time_ms: proto.time_ms,
            },
            wallet_signature: fixed(&proto.wallet_signature, "wallet signature")?,
            installation_signature: proto
                .installation_signature
                .as_deref()
                .map(|s| fixed(s, "installation signature"))
                .transpose()?,
        })
    }
}

/// Limits of an identity log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityConfig {
    /// The most installations an inbox may have active at once.
    pub max_installations: usize,
}

/// The default limit of active installations per inbox.
pub const DEFAULT_MAX_INSTALLATIONS: usize = 10;

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            max_installations: DEFAULT_MAX_INSTALLATIONS,
        }
    }
}

/// An update of a log that failed to verify, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identity update #{index} of the log is invalid: {error}")]
pub struct LogError {
    /// The position of the bad update in the given log (0-based).
    pub index: usize,
    /// Why it was rejected.
    pub error: IdentityError,
}

/// An active installation as the log describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveInstallation {
    /// Its X25519 identity key.
    pub identity_key: [u8; 32],
    /// The sequence number of the update that added it.
    pub added_at: u64,
}

/// The verified state of one inbox's identity log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityState {
    inbox: InboxId,
    config: IdentityConfig,
    sequence: u64,
    last_time_ms: u64,
    active: BTreeMap<InstallationId, ActiveInstallation>,
    revoked: BTreeSet<InstallationId>,
}

impl IdentityState {
    /// The empty log of `inbox`, with the default limits.
    pub fn new(inbox: InboxId) -> Self {
        Self::with_config(inbox, IdentityConfig::default())
    }

    /// The empty log of `inbox`.
    pub fn with_config(inbox: InboxId, config: IdentityConfig) -> Self {
        Self {
            inbox,
            config,
            sequence: 0,
            last_time_ms: 0,
            active: BTreeMap::new(),
            revoked: BTreeSet::new(),
        }
    }

    /// Verify a whole log from scratch: every update, in order.
    pub fn from_log<'a>(
        inbox: InboxId,
        config: IdentityConfig,
        updates: impl IntoIterator<Item = &'a IdentityUpdate>,
    ) -> Result<Self, LogError> {
        let mut state = Self::with_config(inbox, config);
        for (index, update) in updates.into_iter().enumerate() {
            state
                .apply(update)
                .map_err(|error| LogError { index, error })?;
        }
        Ok(state)
    }

    /// The inbox.
    pub fn inbox(&self) -> InboxId {
        self.inbox
    }

    /// The sequence number of the last applied update (0 for an empty log).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Whether `installation` is active.
    pub fn is_active(&self, installation: &InstallationId) -> bool {
        self.active.contains_key(installation)
    }

    /// Whether `installation` was revoked.
    pub fn is_revoked(&self, installation: &InstallationId) -> bool {
        self.revoked.contains(installation)
    }

    /// An active installation's details.
    pub fn installation(&self, installation: &InstallationId) -> Option<&ActiveInstallation> {
        self.active.get(installation)
    }

    /// The active installations, in id order.
    pub fn active_installations(
        &self,
    ) -> impl Iterator<Item = (&InstallationId, &ActiveInstallation)> {
        self.active.iter()
    }

    /// Validate `update` as the next step of this log and apply it. On error
    /// the state is unchanged.
    pub fn apply(&mut self, update: &IdentityUpdate) -> Result<(), IdentityError> {
        let u = &update.unsigned;
        if u.inbox != self.inbox {
            return Err(IdentityError::WrongInbox {
                log: self.inbox.to_string(),
                update: u.inbox.to_string(),
            });
        }
        let expected = self.sequence + 1;
        if u.sequence < expected {
            return Err(IdentityError::Replay {
                expected,
                got: u.sequence,
            });
        }
        if u.sequence > expected {
            return Err(IdentityError::SequenceGap {
                expected,
                got: u.sequence,
            });
        }
        if u.time_ms < self.last_time_ms {
            return Err(IdentityError::TimeWentBackwards {
                previous_ms: self.last_time_ms,
                got_ms: u.time_ms,
            });
        }

        let text = u.signature_text();
        let signer = recover_signer(text.as_bytes(), &update.wallet_signature)?;
        if signer != self.inbox {
            return Err(IdentityError::ForeignWalletSignature {
                inbox: self.inbox.to_string(),
                signer: signer.to_string(),
            });
        }

        let id = u.installation;
        match u.action {
            UpdateAction::AddInstallation => {
                let proof = update
                    .installation_signature
                    .ok_or(IdentityError::MissingProofOfPossession)?;
                verify_installation_signature(&id, text.as_bytes(), &proof)?;
                x25519_key_is_valid(&u.identity_key)?;
                if self.revoked.contains(&id) {
                    return Err(IdentityError::InstallationRevoked(id.to_string()));
                }
                if self.active.contains_key(&id) {
                    return Err(IdentityError::DuplicateInstallation(id.to_string()));
                }
                if self.active.len() >= self.config.max_installations {
                    return Err(IdentityError::TooManyInstallations {
                        limit: self.config.max_installations,
                    });
                }
                self.active.insert(
                    id,
                    ActiveInstallation {
                        identity_key: u.identity_key,
                        added_at: u.sequence,
                    },
                );
            }
            UpdateAction::RevokeInstallation => {
                if update.installation_signature.is_some() {
                    return Err(IdentityError::UnexpectedInstallationSignature);
                }
                let Some(active) = self.active.get(&id) else {
                    return Err(IdentityError::UnknownInstallation(id.to_string()));
                };
                if active.identity_key != u.identity_key {
                    return Err(IdentityError::IdentityKeyMismatch(id.to_string()));
                }
                self.active.remove(&id);
                self.revoked.insert(id);
            }
        }
        self.sequence = u.sequence;
        self.last_time_ms = u.time_ms;
        Ok(())
    }
}

/// An all-zero X25519 key would make every DH with it zero.
fn x25519_key_is_valid(key: &[u8; 32]) -> Result<(), IdentityError> {
    if key.iter().all(|b| *b == 0) {
        return Err(IdentityError::InvalidKey(
            "all-zero X25519 identity key".into(),
        ));
    }
    Ok(())
}
