//! [`Group`]: one conversation's MLS group, driven sans-IO.
//!
//! The driver (a `GroupActor`) calls, inside one storage step each:
//!
//! 1. inputs: [`Group::handle_envelope`] for every envelope of the group
//!    topic, in canonical order;
//! 2. commands: [`Group::send_message`], [`Group::queue_intent`];
//! 3. [`Group::advance`], which turns the oldest waiting intent into a
//!    commit when none is pending;
//!
//! then commits the step and pulls the outputs: [`Group::poll_outbound`]
//! (publish each, then [`Group::ack_outbound`]) and [`Group::poll_event`].
//! If any call fails, the driver discards the step and reloads the group
//! with [`Group::load`]; nothing of the failed call remains.
//!
//! Commit flow (DESIGN.md section 7): a commit is staged as the OpenMLS
//! pending commit, which does not move the epoch, and published, with the
//! hash of its bytes kept on the intent. If it comes back as the first
//! commit of its epoch it is merged; if another commit comes first, that one
//! is validated and merged (which clears ours) and the intent is
//! regenerated on the new epoch. Welcomes go out only after their commit was
//! merged.
//!
//! Metadata changes and key updates go out first as standalone proposals
//! (when the policy says so), which every commit a member builds takes
//! along; see `docs/conflict-resolution.md`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use openmls::prelude::{
    ContentType, CredentialWithKey, GroupId, KeyPackage, LeafNodeIndex, LeafNodeParameters,
    MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn,
    PURE_CIPHERTEXT_WIRE_FORMAT_POLICY, ProcessMessageError, ProcessedMessageContent, Proposal,
    ProposalOrRefType, ProtocolMessage, Sender, SenderRatchetConfiguration, StageCommitError,
    StagedWelcome,
    tls_codec::{Deserialize as _, Serialize as _},
};
use openmls_traits::{OpenMlsProvider, random::OpenMlsRand as _};
use prost::Message as _;
use sha2::{Digest, Sha256};

use super::{
    config::GroupConfig,
    content::{CONTENT_TYPE_BINDING, Content, WelcomePayload, message_id},
    deniable::check_deniable_welcome,
    error::GroupError,
    events::GroupEvent,
    identities::IdentityCache,
    intent::{Intent, IntentKind, IntentState, ProposedChange, PublishedCommit},
    metadata::{
        ConversationKind, GroupMetadata, ImmutableMetadata, MutableMetadata, Policies, PolicyPreset,
    },
    records::{
        ConversationId, ConversationRecord, ConversationState, Delivery, DeniableState,
        GroupRecord, LeafAdded, Outbound, OwnCommit, RetainedEnvelope, StoredMessage,
        dm_conversation_id,
    },
    rewind::{COMMIT_HISTORY, MAX_HELD},
    signer::{Me, signer},
    store::{ClientStore, GroupSnapshots, KvStore},
    validate::{CommitSummary, Verdict, leaf_identity},
};
use crate::{
    delivery::{Envelope, Topic},
    identity::{
        CIPHERSUITE, DmMode, EphemeralKey, InboxId, InstallationId, deniable_capabilities,
        kith_capabilities, kith_credential, pseudonym_credential_from_bytes,
        validate_deniable_key_package, validate_key_package,
    },
};

/// How many past epochs' secrets are kept, so that application messages
/// sent just before a commit still decrypt after it.
pub const MAX_PAST_EPOCHS: usize = 16;

/// How many failed intents a group keeps in its store.
pub const KEPT_FAILED_INTENTS: usize = 32;

/// What to create.
#[derive(Debug, Clone)]
pub struct NewGroup {
    /// Group or DM.
    pub kind: ConversationKind,
    /// For a DM, the other inbox.
    pub dm_peer: Option<InboxId>,
    /// For a DM, whether it can be denied (ignored for groups, which never
    /// can). A deniable DM's members are added with
    /// [`IntentKind::AddDeniable`].
    pub dm_mode: DmMode,
    /// Initial attributes (name, description, ...).
    pub attributes: BTreeMap<String, String>,
    /// Policy preset (ignored for DMs, which use [`Policies::dm`]).
    pub preset: PolicyPreset,
    /// Creation time, ms since the Unix epoch.
    pub now_ms: u64,
}

/// One conversation's MLS group and its engine state. See the module docs.
#[derive(Debug)]
pub struct Group {
    pub(super) mls: MlsGroup,
    pub(super) record: GroupRecord,
    pub(super) metadata: GroupMetadata,
    pub(super) outbound: VecDeque<Outbound>,
    pub(super) events: VecDeque<GroupEvent>,
    pub(super) config: GroupConfig,
    /// In a deniable DM, the key this installation's leaf signs with.
    pub(super) ephemeral: Option<EphemeralKey>,
}

/// What one input call carries through routing and replay.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) identities: &'a IdentityCache,
    pub(crate) now_ms: u64,
    /// During a replay: the messages it delivered again.
    pub(crate) confirmed: Option<BTreeSet<[u8; 32]>>,
    /// Inside a rollback's replay, which routes held envelopes in their
    /// canonical place: merges and proposals release none meanwhile.
    pub(crate) replaying: bool,
    /// Set by a rollback that restored this epoch's snapshot and changed
    /// nothing since: the next commit applied need not capture it again.
    pub(crate) restored: Option<u64>,
}

/// How many generations behind the newest a sender's message may arrive
/// and still decrypt. OpenMLS's default (5) assumes one ordered stream;
/// envelopes of one sender reach members through different originator
/// nodes (the sender moved, replication lagged), so they can arrive far
/// out of order. The cost is up to this many kept keys per sender and
/// epoch.
pub const OUT_OF_ORDER_TOLERANCE: u32 = 128;

fn sender_ratchets() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, 1000)
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .sender_ratchet_configuration(sender_ratchets())
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub(crate) fn serialize(message: &openmls::prelude::MlsMessageOut) -> Result<Vec<u8>, GroupError> {
    message.tls_serialize_detached().map_err(GroupError::mls)
}

impl Group {
    // ----- lifecycle -----------------------------------------------------

    /// Create a group with this installation as its only member. Members
    /// are added by a following [`IntentKind::AddMembers`] (or, in a
    /// deniable DM, [`IntentKind::AddDeniable`]).
    ///
    /// A deniable DM's leaf carries a random pseudonym and a fresh
    /// per-conversation key, kept in the store: nothing in the group is
    /// signed by the installation's key.
    pub fn create<P: OpenMlsProvider, S: KvStore + ?Sized>(
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        new: NewGroup,
    ) -> Result<Self, GroupError> {
        let (dm_members, policies, super_admins) = match (new.kind, new.dm_peer) {
            (ConversationKind::Dm, Some(peer)) if peer != me.inbox => {
                let pair = if me.inbox < peer {
                    (me.inbox, peer)
                } else {
                    (peer, me.inbox)
                };
                (Some(pair), Policies::dm(), BTreeSet::new())
            }
            (ConversationKind::Dm, _) => {
                return Err(GroupError::InvalidInput(
                    "a DM needs one peer other than yourself".into(),
                ));
            }
            (ConversationKind::Group, _) => (
                None,
                Policies::preset(new.preset),
                BTreeSet::from([me.inbox]),
            ),
        };
        let metadata = GroupMetadata {
            immutable: ImmutableMetadata {
                kind: new.kind,
                creator: me.inbox,
                dm_mode: dm_members.map(|_| new.dm_mode),
                dm_members,
                created_at_ms: new.now_ms,
                legacy_conversation_id: None,
            },
            mutable: MutableMetadata {
                attributes: new.attributes,
                admins: BTreeSet::new(),
                super_admins,
            },
            policies,
            membership: BTreeMap::from([(me.inbox, identities.sequence(&me.inbox))]),
            gating: Vec::new(),
        };
        metadata.check_limits()?;
        let group_id = provider.rand().random_vec(16).map_err(GroupError::mls)?;
        let ephemeral = if metadata.immutable.deniable() {
            let seed =
                zeroize::Zeroizing::new(provider.rand().random_vec(32).map_err(GroupError::mls)?);
            Some(EphemeralKey::from_secret_bytes(&seed).map_err(GroupError::mls)?)
        } else {
            None
        };
        let (credential, capabilities) = match &ephemeral {
            Some(key) => {
                let pseudonym: [u8; 16] =
                    provider.rand().random_array().map_err(GroupError::mls)?;
                let credential = CredentialWithKey {
                    credential: pseudonym_credential_from_bytes(&pseudonym),
                    signature_key: key.public_key().to_vec().into(),
                };
                (credential, deniable_capabilities())
            }
            None => {
                let credential = CredentialWithKey {
                    credential: kith_credential(me.inbox),
                    signature_key: me.keys.id().as_bytes().to_vec().into(),
                };
                (credential, kith_capabilities())
            }
        };
        let mls = MlsGroup::builder()
            .with_group_id(GroupId::from_slice(&group_id))
            .ciphersuite(CIPHERSUITE)
            .with_capabilities(capabilities)
            .with_group_context_extensions(metadata.to_extensions())
            .use_ratchet_tree_extension(true)
            .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(sender_ratchets())
            .build(provider, &signer(&ephemeral, me), credential)
            .map_err(GroupError::mls)?;
        let conversation = conversation_id(&metadata, &group_id);
        let deniable = ephemeral
            .as_ref()
            .map(|key| DeniableState::new(key.public_key(), me.inbox, me.keys.id()));
        if let Some(key) = &ephemeral {
            ClientStore(kv).put_ephemeral_key(key)?;
        }
        let group = Self {
            mls,
            record: GroupRecord {
                conversation_id: Some(conversation.clone()),
                // The hourly epoch digest counts from creation.
                last_digest_ms: new.now_ms,
                own_installation: Some(me.keys.id()),
                deniable,
                ..GroupRecord::default()
            },
            metadata,
            outbound: VecDeque::new(),
            events: VecDeque::new(),
            config: GroupConfig::default(),
            ephemeral,
        };
        group.register_conversation(kv, me, new.now_ms)?;
        group.save_record(kv)?;
        group.keep_exporter(provider, kv)?;
        Ok(group)
    }

    /// Load a stored group; `None` if there is none with this id.
    pub fn load<P: OpenMlsProvider, S: KvStore + ?Sized>(
        provider: &P,
        kv: &S,
        group_id: &[u8],
    ) -> Result<Option<Self>, GroupError> {
        let Some(mls) = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(GroupError::mls)?
        else {
            return Ok(None);
        };
        let metadata = GroupMetadata::from_extensions(mls.extensions())?;
        let store = ClientStore(kv);
        let record = store.group_record(group_id)?;
        let outbound = store.outbox(group_id)?.into();
        let ephemeral = match &record.deniable {
            Some(state) => Some(store.ephemeral_key(&state.own_leaf_key)?.ok_or_else(|| {
                GroupError::Corrupt("a deniable DM whose leaf key is not kept".into())
            })?),
            None => None,
        };
        Ok(Some(Self {
            mls,
            record,
            metadata,
            outbound,
            events: VecDeque::new(),
            config: GroupConfig::default(),
            ephemeral,
        }))
    }

    /// Join a group from a Welcome payload. Every member's leaf is checked
    /// against the identity logs at the sequence numbers the group records.
    /// Returns `Ok(None)` if this installation already has the group.
    ///
    /// A group this installation has but is on a fork of (or was removed
    /// from) is replaced: its MLS state and everything kept of its branch
    /// are dropped first, its messages stay.
    pub fn join<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Option<Self>, GroupError> {
        let bytes = payload;
        let payload = WelcomePayload::from_bytes(payload)
            .map_err(|e| GroupError::InvalidInput(e.to_string()))?;
        let mut carried = None;
        if let Some(old) = Self::load(provider, kv, &payload.group_id)? {
            if !old.needs_rejoin() {
                old.defer_welcome(kv, &payload, bytes)?;
                return Ok(None);
            }
            let forked_at = old.record.forked.as_ref().map_or(old.epoch(), |f| f.epoch);
            let mut record = old.record.clone();
            record.forked = None;
            record.earlier_commit = None;
            carried = Some((record, forked_at));
            Self::forget_branch(kv, &payload.group_id)?;
            kv.delete_group(&payload.group_id)
                .map_err(GroupError::store)?;
        }
        let message = MlsMessageIn::tls_deserialize_exact(payload.welcome.as_slice())
            .map_err(|e| GroupError::InvalidInput(format!("welcome: {e}")))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(GroupError::InvalidInput("not a Welcome message".into()));
        };
        let staged = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, None)
            .map_err(|e| GroupError::InvalidInput(format!("welcome: {e:?}")))?;
        let metadata = GroupMetadata::from_extensions(staged.group_context().extensions())?;
        if staged.group_context().group_id().as_slice() != payload.group_id.as_slice() {
            return Err(GroupError::InvalidInput(
                "the Welcome names another group than its envelope".into(),
            ));
        }
        let need = identities.behind(&metadata.membership);
        if !need.is_empty() {
            return Err(GroupError::NeedIdentities(need));
        }
        let deniable = metadata.immutable.deniable();
        if deniable {
            check_deniable_welcome(&metadata, staged.members())?;
        }
        let mut inboxes = BTreeSet::new();
        // A deniable DM's leaves are pseudonyms: its bindings check them.
        for member in staged.members().filter(|_| !deniable) {
            let inbox = crate::identity::credential_inbox(&member.credential)
                .map_err(|e| GroupError::InvalidInput(format!("a member's leaf: {e}")))?;
            let installation =
                InstallationId(
                    member.signature_key.as_slice().try_into().map_err(|_| {
                        GroupError::InvalidInput("a leaf key is not Ed25519".into())
                    })?,
                );
            let sequence = metadata.membership.get(&inbox).copied().ok_or_else(|| {
                GroupError::InvalidInput(format!("member {inbox} is not in the membership record"))
            })?;
            if identities.active_at(&inbox, &installation, sequence) != Some(true) {
                return Err(GroupError::InvalidInput(format!(
                    "member installation {installation} is not active for {inbox}"
                )));
            }
            inboxes.insert(inbox);
        }
        if !deniable && inboxes != metadata.membership.keys().copied().collect() {
            return Err(GroupError::InvalidInput(
                "the membership record does not match the members".into(),
            ));
        }
        let mls = staged.into_group(provider).map_err(GroupError::mls)?;
        let group_id = mls.group_id().as_slice().to_vec();
        let store = ClientStore(kv);
        store.put_cursor(&Topic::Group(group_id.clone()), &payload.cursor)?;
        // The branch it joins, for fork detection (`check_branch`): without
        // it a joiner of a committer that was itself on a fork would never
        // learn it.
        for (epoch, auth, key) in &payload.branch {
            if *epoch < mls.epoch().as_u64() {
                store.put_commit_key(&group_id, *epoch, (*key, *auth), COMMIT_HISTORY)?;
            }
        }
        let mut events = VecDeque::new();
        let mut record = match carried {
            Some((record, forked_at)) => {
                events.push_back(GroupEvent::Rejoined {
                    epoch: mls.epoch().as_u64(),
                    forked_at,
                });
                record
            }
            None => GroupRecord {
                conversation_id: Some(conversation_id(&metadata, &group_id)),
                ..GroupRecord::default()
            },
        };
        record.joined_at_epoch = mls.epoch().as_u64();
        record.last_digest_ms = now_ms;
        record.own_installation = Some(me.keys.id());
        let mut ephemeral = None;
        record.deniable = None;
        if deniable {
            // The leaf is one of this installation's deniable key packages,
            // whose key was kept when the package was made.
            let leaf_key: [u8; 32] = mls
                .own_leaf_node()
                .and_then(|leaf| leaf.signature_key().as_slice().try_into().ok())
                .ok_or_else(|| GroupError::InvalidInput("the Welcome has no leaf for us".into()))?;
            let key = store.ephemeral_key(&leaf_key)?.ok_or_else(|| {
                GroupError::InvalidInput(
                    "the Welcome uses a deniable key package whose leaf key this installation \
                     does not hold"
                        .into(),
                )
            })?;
            let mut state = DeniableState::new(leaf_key, me.inbox, me.keys.id());
            state.binding_due = true;
            record.deniable = Some(state);
            ephemeral = Some(key);
        }
        let group = Self {
            record,
            mls,
            metadata,
            outbound: VecDeque::new(),
            events,
            config: GroupConfig::default(),
            ephemeral,
        };
        group.register_conversation(kv, me, now_ms)?;
        group.save_record(kv)?;
        group.keep_exporter(provider, kv)?;
        Ok(Some(group))
    }

    fn register_conversation<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        me: Me<'_>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let id = self.conversation_id();
        let group_id = self.group_id().to_vec();
        let mut record = store.conversation(&id)?.unwrap_or(ConversationRecord {
            id: id.clone(),
            dm_peer: self.dm_peer(me.inbox),
            group_ids: Vec::new(),
            created_at_ms: now_ms,
            state: ConversationState::Active,
        });
        if !record.group_ids.contains(&group_id) {
            record.group_ids.push(group_id);
        }
        record.state = ConversationState::Active;
        store.put_conversation(&record)
    }

    pub(super) fn save_record<S: KvStore + ?Sized>(&self, kv: &S) -> Result<(), GroupError> {
        ClientStore(kv).put_group_record(self.group_id(), &self.record)
    }

    // ----- getters -------------------------------------------------------

    /// The MLS group id.
    pub fn group_id(&self) -> &[u8] {
        self.mls.group_id().as_slice()
    }

    /// The conversation this group belongs to.
    pub fn conversation_id(&self) -> ConversationId {
        self.record
            .conversation_id
            .clone()
            .unwrap_or_else(|| ConversationId(self.group_id().to_vec()))
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.mls.epoch().as_u64()
    }

    /// The metadata of the current epoch.
    pub fn metadata(&self) -> &GroupMetadata {
        &self.metadata
    }

    /// Whether this installation is still a member.
    pub fn is_active(&self) -> bool {
        self.mls.is_active()
    }

    /// Whether a commit of ours is staged and waiting.
    pub fn has_pending_commit(&self) -> bool {
        self.mls.pending_commit().is_some()
    }

    /// The members' installations, by inbox.
    pub fn members(&self) -> BTreeMap<InboxId, BTreeSet<InstallationId>> {
        let mut out: BTreeMap<InboxId, BTreeSet<InstallationId>> = BTreeMap::new();
        for member in self.mls.members() {
            if let Some((inbox, installation)) = self.identity_of(member.index) {
                out.entry(inbox).or_default().insert(installation);
            }
        }
        out
    }

    /// Each leaf's credential and signature key, as the tree holds them:
    /// all that the tree (and a leaked copy of it) says of who is in the
    /// group. In a deniable DM, pseudonyms and per-conversation keys.
    pub fn leaves(&self) -> Vec<(openmls::prelude::Credential, Vec<u8>)> {
        self.mls
            .members()
            .map(|m| (m.credential, m.signature_key))
            .collect()
    }

    /// For a DM, the inbox that is not `me`.
    pub fn dm_peer(&self, me: InboxId) -> Option<InboxId> {
        self.metadata
            .immutable
            .dm_members
            .map(|(a, b)| if a == me { b } else { a })
    }

    /// The epoch authenticator, equal on every member in the same epoch.
    pub fn epoch_authenticator(&self) -> Vec<u8> {
        self.mls.epoch_authenticator().as_slice().to_vec()
    }

    /// This installation's leaf index in the group's tree.
    pub fn own_leaf_index(&self) -> u32 {
        self.mls.own_leaf_index().u32()
    }

    /// When installations were last reconciled, ms since the Unix epoch.
    pub fn last_reconciled_ms(&self) -> u64 {
        self.record.last_reconciled_ms
    }

    /// Installations the identity logs say should be added (per inbox,
    /// with the log sequence read) and leaves whose installation is no
    /// longer active.
    ///
    /// Empty for a deniable DM: its leaves are added from deniable key
    /// packages ([`IntentKind::AddDeniable`]), not from the logs.
    pub fn reconcile_plan(&self, identities: &IdentityCache) -> ReconcilePlan {
        let mut plan = ReconcilePlan::default();
        if self.is_deniable() {
            return plan;
        }
        let members = self.members();
        for (inbox, installations) in &members {
            let Some(state) = identities.state(inbox) else {
                continue;
            };
            let recorded = self.metadata.membership.get(inbox).copied().unwrap_or(0);
            let mut changed = false;
            for (installation, _) in state.active_installations() {
                if !installations.contains(installation) {
                    plan.add.push((*inbox, *installation));
                    changed = true;
                }
            }
            for installation in installations {
                if !state.is_active(installation) {
                    plan.remove.push(*installation);
                    changed = true;
                }
            }
            if changed || state.sequence() > recorded {
                plan.sequences.push((*inbox, state.sequence()));
            }
        }
        if plan.add.is_empty() && plan.remove.is_empty() {
            plan.sequences.clear();
        }
        plan
    }

    // ----- outputs -------------------------------------------------------

    /// The next payload to publish (on each of its topics). It stays in the
    /// store's outbox until
    /// [`Group::ack_outbound`].
    pub fn poll_outbound(&mut self) -> Option<Outbound> {
        self.outbound.pop_front()
    }

    /// The payloads waiting to be published, without taking them.
    pub fn pending_outbound(&self) -> impl Iterator<Item = &Outbound> {
        self.outbound.iter()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GroupEvent> {
        self.events.pop_front()
    }

    /// Record that `item` was published as `envelope`.
    pub fn ack_outbound<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        item: &Outbound,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        store.remove_outbox(self.group_id(), item.id)?;
        self.outbound.retain(|o| o.id != item.id);
        if let Some(id) = item.message_id {
            let conversation = self.conversation_id();
            // A message failed meanwhile (sent on a fork) stays failed.
            if let Some(mut message) = store.message(&conversation, &id)?
                && message.delivery == Delivery::Unpublished
            {
                message.delivery = Delivery::Published;
                store.update_message(&message)?;
            }
        }
        Ok(())
    }

    pub(super) fn push_outbound<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        topics: &[Topic],
        payload: Vec<u8>,
        message_id: Option<[u8; 32]>,
    ) -> Result<(), GroupError> {
        let item = Outbound {
            id: self.record.next_outbox_id,
            topics: topics.iter().map(Topic::to_string).collect(),
            payload,
            message_id,
        };
        self.record.next_outbox_id += 1;
        ClientStore(kv).push_outbox(self.group_id(), &item)?;
        self.save_record(kv)?;
        self.outbound.push_back(item);
        Ok(())
    }

    // ----- commands ------------------------------------------------------

    /// Encrypt and queue an application message; returns its id. Works
    /// while a commit of ours is pending (it uses the application ratchet
    /// of the current epoch).
    pub fn send_message<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        content_type: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<[u8; 32], GroupError> {
        if !self.mls.is_active() {
            return Err(GroupError::NotMember);
        }
        if content_type.is_empty() || content_type.len() > super::content::MAX_CONTENT_TYPE_LEN {
            return Err(GroupError::InvalidInput(
                "the content type must be 1 to 128 bytes".into(),
            ));
        }
        if content_type.starts_with(super::content::CONTROL_CONTENT_PREFIX) {
            return Err(GroupError::InvalidInput(format!(
                "content types starting with {:?} are the engine's control messages",
                super::content::CONTROL_CONTENT_PREFIX
            )));
        }
        let nonce = provider.rand().random_vec(16).map_err(GroupError::mls)?;
        let id = message_id(me.inbox, self.group_id(), &nonce);
        let content = Content {
            content_type: content_type.to_owned(),
            message_id: id.to_vec(),
            body: body.to_vec(),
            sent_at_ms: now_ms,
        };
        // MLS sends no application message while proposals wait for a
        // commit, and nobody would read one sent on a fork: the message
        // waits in the outbox, and `advance` sends it (with this id) once
        // the proposals are committed or this installation is re-added.
        // In a deniable DM, nothing goes out before every leaf is bound.
        let deferred = self.record.forked.is_some()
            || self.mls.pending_proposals().next().is_some()
            || self.awaiting_bindings();
        let out = if deferred {
            None
        } else {
            Some(self.encrypt(provider, kv, me, &content.encode_to_vec())?)
        };
        self.track_send(kv, &content, id, deferred)?;
        let message = StoredMessage {
            conversation_id: self.conversation_id(),
            group_id: self.group_id().to_vec(),
            message_id: id,
            sender_inbox: me.inbox,
            sender_installation: me.keys.id(),
            content_type: content_type.to_owned(),
            body: body.to_vec(),
            sent_at_ms: now_ms,
            time_ms: now_ms,
            delivery: Delivery::Unpublished,
            unbound_leaf: None,
        };
        ClientStore(kv).insert_message(&message)?;
        if let Some(out) = out {
            self.push_outbound(kv, &[Topic::Group(self.group_id().to_vec())], out, Some(id))?;
        }
        self.events.push_back(GroupEvent::Message(message));
        Ok(id)
    }

    /// Encrypt an application message (encoded [`Content`]) in the current
    /// epoch, with Kith's authenticated data: readable without the epoch
    /// secret, so that a member on another branch can tell which branch
    /// sorts first (see `rewind`). Returns the serialized message.
    pub(super) fn encrypt<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        content: &[u8],
    ) -> Result<Vec<u8>, GroupError> {
        let aad = self.current_aad(kv)?;
        self.mls.set_aad(aad.encode());
        let out = self
            .mls
            .create_message(provider, &signer(&self.ephemeral, me), content)
            .map_err(GroupError::mls)?;
        serialize(&out)
    }

    /// Store an intent; [`Group::advance`] acts on it. Returns its id.
    pub fn queue_intent<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        kind: IntentKind,
    ) -> Result<u64, GroupError> {
        if !self.mls.is_active() {
            return Err(GroupError::NotMember);
        }
        // Refuse a mistake now; by the time the intent is built, another
        // member's commit may have made the same change, which satisfies it.
        if let IntentKind::RemoveMembers { inboxes } = &kind {
            let members = self.members();
            if let Some(stranger) = inboxes.iter().find(|i| !members.contains_key(*i)) {
                return Err(GroupError::InvalidInput(format!(
                    "{stranger} is not a member"
                )));
            }
        }
        let intent = Intent {
            id: self.record.next_intent_id,
            kind,
            state: IntentState::ToPublish,
        };
        self.record.next_intent_id += 1;
        ClientStore(kv).put_intent(self.group_id(), &intent)?;
        self.save_record(kv)?;
        Ok(intent.id)
    }

    /// Record that installations were reconciled at `now_ms`.
    pub fn mark_reconciled<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        self.record.last_reconciled_ms = now_ms;
        self.save_record(kv)
    }

    /// Settle what is due, re-send own messages whose epoch lost, and, if
    /// no commit of ours is pending, turn the oldest waiting intent into a
    /// published commit (or proposal). Intents that cannot be carried out
    /// fail with an event.
    ///
    /// Call it after reading the group topic up to the node's head: an
    /// epoch transition settles once `now_ms` is past its commit's time
    /// plus the settle window, on the ground that every envelope sorting
    /// before it has then been read.
    pub fn advance<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        // Bindings first: held messages go out only after them.
        self.verify_bindings(kv, me, identities)?;
        self.send_binding(provider, kv, me, identities, now_ms)?;
        self.resend_lost(provider, kv, me, now_ms)?;
        self.settle(kv, Some(now_ms), now_ms)?;
        if self.record.forked.is_some() {
            // Nothing built on a fork reaches the others: wait to be
            // re-added.
            return self.ask_to_rejoin(kv, me, now_ms);
        }
        self.publish_digest(provider, kv, me, now_ms)?;
        loop {
            if self.mls.pending_commit().is_some() {
                return Ok(());
            }
            let intents = store.intents(self.group_id())?;
            let waiting = intents.iter().find(|i| i.state.is_waiting()).cloned();
            let Some(mut intent) = waiting else {
                return self.commit_due_proposals(provider, kv, me, identities, intents, now_ms);
            };
            if !self.mls.is_active() {
                self.fail_intent(
                    kv,
                    intent.id,
                    "this installation left the group".into(),
                    false,
                )?;
                continue;
            }
            let outcome = if self.config.proposals.propose_first && intent.kind.is_proposable() {
                self.propose(provider, kv, me, &intent.kind)
            } else {
                self.build(provider, kv, me, identities, &intent.kind, now_ms)
            };
            match outcome {
                Ok(Built::Proposed(proposal_ref)) => {
                    intent.state = IntentState::Proposed(ProposedChange {
                        epoch: self.epoch(),
                        proposal_ref,
                        proposed_at_ms: now_ms,
                    });
                    store.put_intent(self.group_id(), &intent)?;
                }
                Ok(Built::Commit {
                    commit,
                    welcome,
                    welcome_to,
                }) => {
                    return self.publish_commit(kv, intent, commit, welcome, welcome_to, None);
                }
                Ok(Built::Done) => {
                    store.remove_intent(self.group_id(), intent.id)?;
                    self.events
                        .push_back(GroupEvent::IntentDone { id: intent.id });
                }
                Err(GroupError::NotPermitted(reason)) => {
                    self.fail_intent(kv, intent.id, reason, true)?;
                }
                // Missing identity logs can be fetched, and a failing store
                // may recover: the intent waits. Anything else would fail
                // the same way on every retry and wedge the group behind it,
                // so the intent fails for good.
                Err(
                    e @ (GroupError::NeedIdentities(_)
                    | GroupError::Store(_)
                    | GroupError::Corrupt(_)),
                ) => return Err(e),
                Err(GroupError::InvalidInput(reason)) => {
                    self.fail_intent(kv, intent.id, reason, false)?;
                }
                Err(other) => {
                    self.fail_intent(kv, intent.id, other.to_string(), false)?;
                }
            }
        }
    }

    /// Commit the proposals of ours that nobody committed within the
    /// policy's proposal wait (with whatever else is pending), under the
    /// oldest of their intents. The others are carried out by the same
    /// commit.
    fn commit_due_proposals<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        intents: Vec<Intent>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let epoch = self.epoch();
        let due = intents.into_iter().find(|i| match &i.state {
            IntentState::Proposed(p) => {
                p.epoch == epoch
                    && now_ms
                        >= p.proposed_at_ms
                            .saturating_add(self.config.proposals.proposal_wait_ms)
            }
            _ => false,
        });
        let Some(mut intent) = due else {
            return Ok(());
        };
        let IntentState::Proposed(proposed) = &intent.state else {
            return Ok(());
        };
        let proposal_ref = proposed.proposal_ref.clone();
        match self.build(
            provider,
            kv,
            me,
            identities,
            &IntentKind::CommitPending,
            now_ms,
        ) {
            Ok(Built::Commit {
                commit,
                welcome,
                welcome_to,
            }) => self.publish_commit(kv, intent, commit, welcome, welcome_to, Some(proposal_ref)),
            Ok(_) => {
                // The proposal is not in the store any more: propose again.
                intent.state = IntentState::Regenerate;
                store.put_intent(self.group_id(), &intent)
            }
            Err(
                e @ (GroupError::NeedIdentities(_) | GroupError::Store(_) | GroupError::Corrupt(_)),
            ) => Err(e),
            Err(GroupError::NotPermitted(reason)) => self.fail_intent(kv, intent.id, reason, true),
            Err(other) => self.fail_intent(kv, intent.id, other.to_string(), false),
        }
    }

    /// Record a commit just staged for `intent` (with its Welcome, and the
    /// reference of the intent's proposal it carries, if any), mark the
    /// intent published, and queue the commit for publishing.
    fn publish_commit<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        mut intent: Intent,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        welcome_to: Vec<InstallationId>,
        proposal_ref: Option<Vec<u8>>,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let topic = Topic::Group(self.group_id().to_vec());
        let published = PublishedCommit {
            epoch: self.epoch(),
            commit_hash: sha256(&commit),
            proposal_ref,
        };
        store.put_own_commit(
            self.group_id(),
            &OwnCommit {
                hash: published.commit_hash,
                intent_id: intent.id,
                epoch: published.epoch,
                auth_digest: self.auth_digest(),
                welcome,
                welcome_to,
                joiner_cursor: store.cursor(&topic)?,
            },
        )?;
        intent.state = IntentState::Published(published);
        store.put_intent(self.group_id(), &intent)?;
        self.push_outbound(kv, &[topic], commit, None)
    }

    /// Send `kind` (see [`IntentKind::is_proposable`]) as a standalone
    /// proposal, after checking it exactly as a commit carrying it will be
    /// checked. `Built::Done` if there is nothing left to change.
    fn propose<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        kind: &IntentKind,
    ) -> Result<Built, GroupError> {
        let (message, proposal_ref) = if *kind == IntentKind::UpdateKeys {
            self.mls
                .propose_self_update(
                    provider,
                    &signer(&self.ephemeral, me),
                    LeafNodeParameters::default(),
                )
                .map_err(GroupError::mls)?
        } else {
            let metadata = self.changed_metadata(kind)?;
            if metadata == self.metadata {
                // Another member's commit already made this change.
                return Ok(Built::Done);
            }
            metadata.check_limits()?;
            self.check_own_metadata_change(&metadata, me)?;
            self.mls
                .propose_group_context_extensions(
                    provider,
                    metadata.to_extensions(),
                    &signer(&self.ephemeral, me),
                )
                .map_err(GroupError::mls)?
        };
        self.push_outbound(
            kv,
            &[Topic::Group(self.group_id().to_vec())],
            serialize(&message)?,
            None,
        )?;
        Ok(Built::Proposed(proposal_ref.as_slice().to_vec()))
    }

    /// The metadata after a metadata intent (attributes, admins,
    /// policies); the current metadata for any other kind.
    fn changed_metadata(&self, kind: &IntentKind) -> Result<GroupMetadata, GroupError> {
        let mut metadata = self.metadata.clone();
        match kind {
            IntentKind::UpdateAttributes { changes } => {
                for (key, value) in changes {
                    match value {
                        Some(v) => metadata.mutable.attributes.insert(key.clone(), v.clone()),
                        None => metadata.mutable.attributes.remove(key),
                    };
                }
            }
            IntentKind::UpdateAdmins {
                add,
                remove,
                super_admin,
            } => {
                let members = self.members();
                let list = if *super_admin {
                    &mut metadata.mutable.super_admins
                } else {
                    &mut metadata.mutable.admins
                };
                for inbox in add {
                    if !members.contains_key(inbox) {
                        return Err(GroupError::InvalidInput(format!("{inbox} is not a member")));
                    }
                    list.insert(*inbox);
                }
                for inbox in remove {
                    list.remove(inbox);
                }
            }
            IntentKind::SetPolicies { encoded } => {
                let mut extensions = metadata.to_extensions();
                extensions
                    .add_or_replace(openmls::prelude::Extension::Unknown(
                        super::metadata::POLICIES_EXTENSION,
                        openmls::prelude::UnknownExtension(encoded.clone()),
                    ))
                    .map_err(GroupError::mls)?;
                metadata = GroupMetadata::from_extensions(&extensions)?;
            }
            _ => {}
        }
        Ok(metadata)
    }

    /// Move an intent to `Failed` and tell the application. The newest
    /// [`KEPT_FAILED_INTENTS`] failed intents stay in the store, for
    /// inspection after a restart.
    fn fail_intent<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        id: u64,
        reason: String,
        denied: bool,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let intents = store.intents(self.group_id())?;
        if let Some(mut intent) = intents.iter().find(|i| i.id == id).cloned() {
            intent.state = IntentState::Failed {
                reason: reason.clone(),
                denied,
            };
            store.put_intent(self.group_id(), &intent)?;
        }
        let failed: Vec<u64> = intents
            .iter()
            .filter(|i| i.state.is_final() || i.id == id)
            .map(|i| i.id)
            .collect();
        for old in failed
            .iter()
            .take(failed.len().saturating_sub(KEPT_FAILED_INTENTS))
        {
            store.remove_intent(self.group_id(), *old)?;
        }
        self.events
            .push_back(GroupEvent::IntentFailed { id, reason, denied });
        Ok(())
    }

    fn build<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        kind: &IntentKind,
        now_ms: u64,
    ) -> Result<Built, GroupError> {
        let mut metadata = self.changed_metadata(kind)?;
        let members = self.members();
        let mut adds: Vec<KeyPackage> = Vec::new();
        let mut welcome_to = Vec::new();
        let mut removals: Vec<LeafNodeIndex> = Vec::new();
        let mut commit_pending = false;
        let mut force_update = false;
        let leaves_of = |pred: &dyn Fn(InboxId, InstallationId) -> bool| -> Vec<LeafNodeIndex> {
            self.mls
                .members()
                .filter(|m| self.identity_of(m.index).is_some_and(|(i, x)| pred(i, x)))
                .map(|m| m.index)
                .collect()
        };
        let mut take_packages = |packages: &[Vec<u8>],
                                 sequences: &[(InboxId, u64)],
                                 metadata: &mut GroupMetadata|
         -> Result<(), GroupError> {
            for (inbox, sequence) in sequences {
                let entry = metadata.membership.entry(*inbox).or_insert(0);
                *entry = (*entry).max(*sequence);
            }
            for bytes in packages {
                let (inbox, valid) = checked_key_package(provider, identities, bytes, now_ms)?;
                let state = identities
                    .state(&inbox)
                    .ok_or_else(|| GroupError::NeedIdentities(vec![(inbox, 1)]))?;
                if members
                    .get(&inbox)
                    .is_some_and(|set| set.contains(&valid.installation))
                {
                    continue;
                }
                metadata
                    .membership
                    .entry(inbox)
                    .or_insert_with(|| state.sequence());
                welcome_to.push(valid.installation);
                adds.push(valid.key_package);
            }
            Ok(())
        };
        match kind {
            IntentKind::AddMembers { .. } if self.is_deniable() => {
                return Err(GroupError::InvalidInput(
                    "a deniable DM takes deniable key packages (IntentKind::AddDeniable)".into(),
                ));
            }
            IntentKind::AddDeniable { .. } if !self.is_deniable() => {
                return Err(GroupError::InvalidInput(
                    "deniable key packages are for deniable DMs only".into(),
                ));
            }
            IntentKind::AddDeniable {
                key_packages,
                sequences,
            } => {
                let dm = self.metadata.immutable.dm_members;
                for (inbox, sequence) in sequences {
                    if !dm.is_some_and(|(a, b)| *inbox == a || *inbox == b) {
                        return Err(GroupError::NotPermitted(
                            "a DM cannot take other inboxes".into(),
                        ));
                    }
                    let entry = metadata.membership.entry(*inbox).or_insert(0);
                    *entry = (*entry).max(*sequence);
                }
                let present: BTreeSet<Vec<u8>> = self
                    .mls
                    .members()
                    .map(|m| m.signature_key.clone())
                    .collect();
                for add in key_packages {
                    let valid = checked_deniable_key_package(provider, &add.key_package, now_ms)?;
                    if present.contains(valid.leaf_key.as_slice()) {
                        continue;
                    }
                    welcome_to.push(add.installation);
                    adds.push(valid.key_package);
                }
                if adds.is_empty() {
                    return Ok(Built::Done);
                }
            }
            IntentKind::AddMembers {
                key_packages,
                sequences,
            } => {
                let dm = self.metadata.immutable.dm_members;
                if dm.is_some_and(|(a, b)| sequences.iter().any(|(i, _)| *i != a && *i != b)) {
                    return Err(GroupError::NotPermitted(
                        "a DM cannot take other inboxes".into(),
                    ));
                }
                take_packages(key_packages, sequences, &mut metadata)?;
                if adds.is_empty() {
                    return Ok(Built::Done);
                }
            }
            IntentKind::RemoveMembers { inboxes } => {
                // Inboxes already gone were removed by another member's
                // commit: that part of the intent is satisfied.
                for inbox in inboxes {
                    metadata.membership.remove(inbox);
                }
                removals = leaves_of(&|i, _| inboxes.contains(&i));
            }
            // Their metadata is `changed_metadata`'s.
            IntentKind::UpdateAttributes { .. }
            | IntentKind::UpdateAdmins { .. }
            | IntentKind::SetPolicies { .. } => {}
            IntentKind::Reconcile {
                key_packages,
                remove,
                sequences,
            } => {
                take_packages(key_packages, sequences, &mut metadata)?;
                removals = leaves_of(&|_, x| remove.contains(&x));
                if adds.is_empty() && removals.is_empty() {
                    return Ok(Built::Done);
                }
            }
            IntentKind::CommitPending => commit_pending = true,
            IntentKind::UpdateKeys => force_update = true,
            IntentKind::Readd {
                installation,
                key_package,
                stale_leaf,
            } => {
                let Some(leaf) = self.leaf_of(installation) else {
                    return Ok(Built::Done);
                };
                if self.leaf_encryption_key(leaf) != *stale_leaf {
                    // Re-added (or updated) since it asked.
                    return Ok(Built::Done);
                }
                let (_, valid) = checked_key_package(provider, identities, key_package, now_ms)?;
                if valid.installation != *installation {
                    return Err(GroupError::InvalidInput(
                        "the key package is not the forked installation's".into(),
                    ));
                }
                removals = vec![leaf];
                welcome_to.push(valid.installation);
                adds.push(valid.key_package);
            }
            IntentKind::Leave => {
                if self.mls.pending_proposals().any(|p| {
                    matches!(p.proposal(), Proposal::Remove(r) if r.removed() == self.mls.own_leaf_index())
                }) {
                    return Ok(Built::Done);
                }
                let proposal = self
                    .mls
                    .leave_group(provider, &signer(&self.ephemeral, me))
                    .map_err(GroupError::mls)?;
                self.push_outbound(
                    kv,
                    &[Topic::Group(self.group_id().to_vec())],
                    serialize(&proposal)?,
                    None,
                )?;
                return Ok(Built::Done);
            }
        }
        let own_change =
            metadata != self.metadata || !adds.is_empty() || !removals.is_empty() || force_update;
        let riders = self.pending_riders(&members, &mut metadata);
        let carries_others = commit_pending && !riders.is_empty();
        if !(own_change || carries_others) {
            // Another member's commit already made this change.
            return Ok(Built::Done);
        }
        metadata.check_limits()?;
        let metadata_changed = metadata != self.metadata;
        if metadata_changed {
            self.check_own_metadata_change(&metadata, me)?;
        }
        let mut builder = self
            .mls
            .commit_builder()
            .consume_proposal_store(true)
            .force_self_update(force_update)
            .propose_adds(adds)
            .propose_removals(removals);
        if metadata_changed {
            builder = builder
                .propose_group_context_extensions(metadata.to_extensions())
                .map_err(GroupError::mls)?;
        }
        let bundle = builder
            .load_psks(provider.storage())
            .map_err(GroupError::mls)?
            .build(
                provider.rand(),
                provider.crypto(),
                &signer(&self.ephemeral, me),
                |queued| {
                    queued.proposal_or_ref_type() == ProposalOrRefType::Proposal
                        || riders.contains(queued.proposal_reference_ref().as_slice())
                },
            )
            .map_err(|e| GroupError::InvalidInput(format!("cannot build the commit: {e:?}")))?
            .stage_commit(provider)
            .map_err(GroupError::mls)?;
        // Check our own commit exactly as every receiver will, so that a
        // forbidden change fails here instead of forking us off the group.
        let own_leaf = self.mls.own_leaf_index();
        let verdict = match self.mls.pending_commit() {
            Some(staged) => self.validate_staged(staged, own_leaf, identities),
            None => Err(Verdict::Reject("the staged commit vanished".into())),
        };
        if let Err(verdict) = verdict {
            self.mls
                .clear_pending_commit(provider.storage())
                .map_err(GroupError::mls)?;
            return Err(match verdict {
                Verdict::NeedIdentities(need) => GroupError::NeedIdentities(need),
                Verdict::Reject(reason) => GroupError::NotPermitted(reason),
            });
        }
        let welcome = bundle.to_welcome_msg().map(|w| serialize(&w)).transpose()?;
        Ok(Built::Commit {
            commit: serialize(bundle.commit())?,
            welcome,
            welcome_to,
        })
    }

    /// The proposals other members (or this installation) sent that ride
    /// along with a commit this installation builds: members leaving (whose
    /// inboxes leave `metadata`'s membership when their last leaf goes) and
    /// key updates, always; a group-context change only if the commit makes
    /// no metadata change of its own (a commit carries at most one), this
    /// installation's own first.
    fn pending_riders(
        &self,
        members: &BTreeMap<InboxId, BTreeSet<InstallationId>>,
        metadata: &mut GroupMetadata,
    ) -> BTreeSet<Vec<u8>> {
        let own_leaf = self.mls.own_leaf_index();
        let mut riders = BTreeSet::new();
        let mut remaining = members.clone();
        let mut context_change: Option<(bool, Vec<u8>)> = None;
        for queued in self.mls.pending_proposals() {
            let Sender::Member(sender) = queued.sender() else {
                continue;
            };
            let reference = queued.proposal_reference_ref().as_slice().to_vec();
            match queued.proposal() {
                Proposal::Remove(r) if r.removed() == *sender => {
                    if let Some((inbox, installation)) = self.identity_of(*sender)
                        && let Some(set) = remaining.get_mut(&inbox)
                    {
                        set.remove(&installation);
                        if set.is_empty() {
                            metadata.membership.remove(&inbox);
                        }
                    }
                    riders.insert(reference);
                }
                Proposal::Update(_) => {
                    riders.insert(reference);
                }
                Proposal::GroupContextExtensions(_) => {
                    let own = *sender == own_leaf;
                    if context_change
                        .as_ref()
                        .is_none_or(|(was_own, _)| own && !was_own)
                    {
                        context_change = Some((own, reference));
                    }
                }
                _ => {}
            }
        }
        if *metadata == self.metadata
            && let Some((_, reference)) = context_change
        {
            riders.insert(reference);
        }
        riders
    }

    // ----- inputs --------------------------------------------------------

    /// Process one envelope of the group topic, in arrival order. Envelopes
    /// the cursor has passed are ignored; bad envelopes from peers become
    /// events, never errors. Errors are ours (or
    /// [`GroupError::NeedIdentities`]).
    ///
    /// A commit that sorts before the one applied for its epoch rolls the
    /// group back and replays (see [`super::rewind`]), which is why the
    /// store must also take [`GroupSnapshots`].
    pub fn handle_envelope<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        identities: &IdentityCache,
        envelope: &Envelope,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let topic = Topic::Group(self.group_id().to_vec());
        if envelope.topic != topic {
            return Err(GroupError::InvalidInput(format!(
                "envelope of {} handed to group {}",
                envelope.topic, topic
            )));
        }
        let mut cursor = store.cursor(&topic)?;
        if !cursor.is_before(envelope) {
            return Ok(());
        }
        let entry = RetainedEnvelope::new(self.record.next_arrival, envelope);
        self.record.next_arrival += 1;
        let mut ctx = Ctx {
            identities,
            now_ms,
            confirmed: None,
            replaying: false,
            restored: None,
        };
        self.route(provider, kv, &mut ctx, entry, true)?;
        cursor.advance(envelope);
        store.put_cursor(&topic, &cursor)?;
        self.save_record(kv)
    }

    pub(super) fn skip(&mut self, reason: String) {
        self.events
            .push_back(GroupEvent::EnvelopeSkipped { reason });
    }

    /// Decide what an envelope is and where it goes: applied now, held for
    /// a future epoch, or (a commit for a past epoch) a rollback or a drop.
    pub(super) fn route<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        ctx: &mut Ctx<'_>,
        mut entry: RetainedEnvelope,
        allow_rollback: bool,
    ) -> Result<(), GroupError> {
        if super::heal::RejoinRequest::is_request(&entry.payload) {
            return self.rejoin_requested(kv, &entry.payload);
        }
        let store = ClientStore(kv);
        let current = self.epoch();
        if let Some(own) = store.own_commit(self.group_id(), &sha256(&entry.payload))? {
            entry.epoch = own.epoch;
            if own.epoch == current
                && own.auth_digest == self.auth_digest()
                && self.mls.pending_commit().is_some()
            {
                return self.merge_own(provider, kv, ctx, entry, own);
            }
            if own.epoch < current {
                return self.past_commit(provider, kv, ctx, entry, allow_rollback);
            }
            // Built on a branch that was rolled away.
            self.skip(format!(
                "an own commit for epoch {} of an abandoned branch",
                own.epoch
            ));
            return Ok(());
        }
        let protocol = match MlsMessageIn::tls_deserialize_exact(entry.payload.as_slice())
            .map_err(|e| format!("malformed MLS message: {e}"))
            .and_then(|m| {
                m.try_into_protocol_message()
                    .map_err(|e| format!("not a group message: {e:?}"))
            }) {
            Ok(p) => p,
            Err(reason) => {
                self.skip(reason);
                return Ok(());
            }
        };
        if protocol.group_id().as_slice() != self.group_id() {
            self.skip("a message for another group".into());
            return Ok(());
        }
        entry.epoch = protocol.epoch().as_u64();
        let is_commit = protocol.content_type() == ContentType::Commit;
        if entry.epoch < self.record.joined_at_epoch {
            // From before this installation joined: a joiner reads the topic
            // from where its adder staged the commit, so it meets a few.
            // Their authenticated data still shows whether the branch it
            // joined is the others'.
            self.check_branch_of(kv, &protocol, ctx.now_ms)?;
            return Ok(());
        }
        if is_commit && entry.epoch < current {
            return self.past_commit(provider, kv, ctx, entry, allow_rollback);
        }
        if !self.mls.is_active() {
            // Removed: only a rollback can bring it back, and then it needs
            // what arrived meanwhile (kept only while snapshots are). The
            // removal may also have been a fork's, past rolling back: the
            // members' messages still tell (and then it asks back in).
            self.check_branch_of(kv, &protocol, ctx.now_ms)?;
            return self.retain(kv, &entry);
        }
        if protocol.content_type() == ContentType::Proposal && entry.epoch < current {
            // MLS takes no proposal of a past epoch, but a rollback may
            // need it: keep it, and see whether one is due.
            self.retain(kv, &entry)?;
            if allow_rollback {
                return self.late_proposal(provider, kv, ctx, &entry);
            }
            return Ok(());
        }
        if entry.epoch > current {
            self.check_branch_of(kv, &protocol, ctx.now_ms)?;
            return self.hold(kv, entry);
        }
        self.apply(provider, kv, ctx, entry, protocol, is_commit)
    }

    /// [`Group::check_branch`] on a member's message this installation
    /// does not decrypt (commits carry no Kith authenticated data).
    fn check_branch_of<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        protocol: &ProtocolMessage,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        match protocol {
            ProtocolMessage::PrivateMessage(m) if m.content_type() != ContentType::Commit => {
                let aad = m.aad().to_vec();
                self.check_branch(kv, &aad, now_ms)
            }
            _ => Ok(()),
        }
    }

    /// Keep an envelope of a future epoch until the group reaches it.
    fn hold<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        mut entry: RetainedEnvelope,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let held = store
            .retained(self.group_id())?
            .iter()
            .filter(|e| e.held)
            .count();
        if held >= MAX_HELD {
            self.skip(format!(
                "a message of future epoch {} (already holding {MAX_HELD})",
                entry.epoch
            ));
            return Ok(());
        }
        entry.held = true;
        store.put_retained(self.group_id(), &entry)
    }

    /// After the epoch moved, apply the held envelopes it unblocked.
    pub(super) fn release_held<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), GroupError> {
        if ctx.replaying {
            return Ok(());
        }
        let store = ClientStore(kv);
        let current = self.epoch();
        let mut ready: Vec<RetainedEnvelope> = store
            .retained(self.group_id())?
            .into_iter()
            .filter(|e| e.held && e.epoch <= current)
            .collect();
        ready.sort_by_key(|e| e.key);
        for mut entry in ready {
            store.remove_retained(self.group_id(), entry.arrival)?;
            entry.held = false;
            // It is applied now, after the snapshot this merge may just have
            // taken: number it as arriving now, so that a rollback to that
            // snapshot replays it.
            entry.arrival = self.record.next_arrival;
            self.record.next_arrival += 1;
            self.route(provider, kv, ctx, entry, false)?;
        }
        Ok(())
    }

    /// Keep an applied envelope for replay while the ring holds snapshots.
    fn retain<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        entry: &RetainedEnvelope,
    ) -> Result<(), GroupError> {
        if self.config.rewind.retains() && self.ring_len(kv)? > 0 {
            ClientStore(kv).put_retained(self.group_id(), entry)?;
        }
        Ok(())
    }

    /// Apply an envelope of the current epoch (or an application message
    /// of a past one).
    fn apply<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        ctx: &mut Ctx<'_>,
        mut entry: RetainedEnvelope,
        protocol: ProtocolMessage,
        is_commit: bool,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let aad = match &protocol {
            ProtocolMessage::PrivateMessage(m) => m.aad().to_vec(),
            ProtocolMessage::PublicMessage(_) => Vec::new(),
        };
        let epoch = entry.epoch;
        // The snapshot is taken before the commit is even decrypted, so
        // that a restore leaves its handshake generation unspent. Right
        // after a rollback restored this epoch, the stored snapshot is
        // that state already (`None`: nothing to capture or write again).
        let restored = ctx.restored.take() == Some(epoch);
        let before = if is_commit && self.config.rewind.retains() {
            let state = if restored {
                None
            } else {
                Some(self.capture(kv)?)
            };
            Some((state, self.auth_digest()))
        } else {
            None
        };
        let processed = match self.mls.process_message(provider, protocol) {
            Ok(p) => p,
            Err(ProcessMessageError::InvalidCommit(StageCommitError::MissingProposal)) => {
                // It refers to a proposal that has not reached us yet (it
                // sorts before the commit, but came by a slower path).
                return self.hold(kv, entry);
            }
            Err(e) => {
                if !is_commit {
                    self.check_branch(kv, &aad, ctx.now_ms)?;
                }
                self.skip(format!("cannot process: {e}"));
                return self.retain(kv, &entry);
            }
        };
        let sender = processed.sender().clone();
        let credential = processed.credential().clone();
        let signer = crate::identity::credential_inbox(&credential).ok();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let Sender::Member(leaf) = sender else {
                    self.skip("an application message from a non-member".into());
                    return Ok(());
                };
                let (content, id) = match Content::decode_checked(&app.into_bytes()) {
                    Ok(c) => c,
                    Err(e) => {
                        self.skip(e.to_string());
                        return Ok(());
                    }
                };
                // Who sent it: in groups, the credential of the epoch's
                // tree names the inbox. In a deniable DM, the leaf's
                // binding does, once it verified; the leaf is still the
                // sender's only if its pseudonym is the one OpenMLS saw.
                let (inbox, installation, unbound_leaf) = if let Some(state) = &self.record.deniable
                {
                    let Some(member) = self
                        .mls
                        .member_at(leaf)
                        .filter(|m| m.credential == credential)
                    else {
                        self.skip("a message from a leaf that has left the DM".into());
                        return self.retain(kv, &entry);
                    };
                    let Ok(leaf_key) = <[u8; 32]>::try_from(member.signature_key.as_slice()) else {
                        self.skip("a leaf key that is not Ed25519".into());
                        return self.retain(kv, &entry);
                    };
                    if content.content_type == CONTENT_TYPE_BINDING {
                        if let Err(reason) = self.receive_binding(
                            kv,
                            ctx.identities,
                            leaf_key,
                            epoch,
                            &content.body,
                        )? {
                            self.fail_binding(reason);
                        }
                        return self.retain(kv, &entry);
                    }
                    match self.identity_of(leaf) {
                        Some((inbox, installation)) => (inbox, installation, None),
                        // Not shown as verified, and not as anyone's, until
                        // the leaf's binding verifies.
                        None => {
                            let peer = self.dm_peer(state.own_inbox).unwrap_or(state.own_inbox);
                            (peer, InstallationId::UNKNOWN, Some(leaf_key))
                        }
                    }
                } else {
                    let Some(signer) = signer else {
                        self.skip("an application message with a foreign credential".into());
                        return Ok(());
                    };
                    // A message of a past epoch may come from a leaf that has
                    // left since (or been taken by someone else): OpenMLS
                    // checked it against that epoch's tree, whose credential
                    // names the inbox; the installation is known only if the
                    // leaf is still the sender's.
                    match leaf_identity(&self.mls, leaf) {
                        Some((inbox, installation)) if inbox == signer => {
                            (inbox, installation, None)
                        }
                        _ => (signer, InstallationId::UNKNOWN, None),
                    }
                };
                if content.content_type == CONTENT_TYPE_BINDING {
                    self.skip("a deniable binding in a group that is not a deniable DM".into());
                    return self.retain(kv, &entry);
                }
                if content.content_type == super::content::CONTENT_TYPE_EPOCH_DIGEST {
                    // Decrypting it proves the same epoch secret, so the
                    // digest can only match; a mismatch means a broken peer.
                    if epoch == self.epoch() && content.body != self.auth_digest() {
                        self.skip("an epoch digest that does not match ours".into());
                    }
                    return self.retain(kv, &entry);
                }
                let message = StoredMessage {
                    conversation_id: self.conversation_id(),
                    group_id: self.group_id().to_vec(),
                    message_id: id,
                    sender_inbox: inbox,
                    sender_installation: installation,
                    content_type: content.content_type,
                    body: content.body,
                    sent_at_ms: content.sent_at_ms,
                    time_ms: entry.key.0,
                    delivery: Delivery::Published,
                    unbound_leaf,
                };
                entry.message_id = Some(id);
                if let Some(confirmed) = ctx.confirmed.as_mut() {
                    confirmed.insert(id);
                }
                if store.insert_message(&message)? {
                    self.events.push_back(GroupEvent::Message(message));
                } else if let Some(mut stored) = store.message(&message.conversation_id, &id)?
                    && stored.delivery == Delivery::Superseded
                {
                    stored.delivery = Delivery::Published;
                    store.update_message(&stored)?;
                    self.events
                        .push_back(GroupEvent::MessageConfirmed { message_id: id });
                }
                self.retain(kv, &entry)
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                // Checked now, as a commit including it will be, so that
                // nobody's commit picks up a proposal that would sink it.
                let leaving = match self.check_proposal(&proposal) {
                    Ok(leaving) => leaving,
                    Err(reason) => {
                        self.skip(reason);
                        return Ok(());
                    }
                };
                self.mls
                    .store_pending_proposal(provider.storage(), *proposal)
                    .map_err(GroupError::mls)?;
                // A leaving member cannot commit its own removal: someone
                // else must. Other proposers commit their own in time.
                let intents = store.intents(self.group_id())?;
                if leaving
                    && !intents
                        .iter()
                        .any(|i| i.kind == IntentKind::CommitPending && i.state.is_waiting())
                {
                    self.queue_intent(kv, IntentKind::CommitPending)?;
                }
                self.retain(kv, &entry)?;
                // A commit that refers to it may be waiting for it.
                self.release_held(provider, kv, ctx)
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let Sender::Member(committer) = sender else {
                    self.skip("a commit from a non-member".into());
                    return Ok(());
                };
                match self.validate_staged(&staged, committer, ctx.identities) {
                    Ok(summary) => {
                        let self_removed = staged.self_removed();
                        let left_auth = self.auth_digest();
                        let included = proposal_refs(staged.queued_proposals());
                        if let Some((state, auth)) = &before {
                            self.keep_snapshot(
                                kv,
                                state.as_deref().map(|s| s.as_slice()),
                                &entry,
                                epoch,
                                *auth,
                                ctx.now_ms,
                            )?;
                        }
                        self.mls
                            .merge_staged_commit(provider, *staged)
                            .map_err(GroupError::mls)?;
                        // A pending commit of ours lost, and proposals of
                        // ours were committed or are void: see which.
                        self.resolve_intents(kv, epoch, &included, sha256(&entry.payload), None)?;
                        let merge = Merge {
                            left_auth,
                            summary,
                            self_removed,
                        };
                        self.merged(provider, kv, ctx, &entry, merge)
                    }
                    Err(Verdict::NeedIdentities(need)) => Err(GroupError::NeedIdentities(need)),
                    Err(Verdict::Reject(reason)) => {
                        self.events.push_back(GroupEvent::CommitRejected { reason });
                        Ok(())
                    }
                }
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                self.skip("external join proposals are not used by Kith".into());
                Ok(())
            }
            // Our own messages, which OpenMLS cannot decrypt: sent messages
            // are stored already, and own commits are recognised by hash.
            _ => Ok(()),
        }
    }

    /// Bookkeeping after any merge: the commit's position, the envelope
    /// kept for replay, the ring bound, events, and held envelopes.
    fn merged<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        ctx: &mut Ctx<'_>,
        entry: &RetainedEnvelope,
        merge: Merge,
    ) -> Result<(), GroupError> {
        let Merge {
            left_auth,
            summary,
            self_removed,
        } = merge;
        let store = ClientStore(kv);
        store.put_commit_key(
            self.group_id(),
            entry.epoch,
            (entry.key, left_auth),
            COMMIT_HISTORY,
        )?;
        for (_, installation) in &summary.added {
            if let Some(leaf) = self.leaf_of(installation) {
                let added = LeafAdded {
                    commit_time_ms: entry.key.0,
                    encryption_key: self.leaf_encryption_key(leaf),
                };
                store.put_leaf_added(self.group_id(), installation, &added)?;
            }
        }
        self.retain(kv, entry)?;
        let leaves_added = summary.leaves_added;
        self.after_merge(kv, summary, self_removed)?;
        self.after_deniable_merge(provider, kv, leaves_added)?;
        if self.config.rewind.retains() {
            // Only the ring's bound: settling by time waits for `advance`,
            // which the driver calls once it has read the topic's backlog.
            self.settle(kv, None, ctx.now_ms)?;
        } else {
            // No rollback is possible: the transition settles at once.
            self.settle(kv, Some(ctx.now_ms), ctx.now_ms)?;
        }
        self.release_held(provider, kv, ctx)
    }

    fn merge_own<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        ctx: &mut Ctx<'_>,
        entry: RetainedEnvelope,
        own: OwnCommit,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let intent = store
            .intents(self.group_id())?
            .into_iter()
            .find(|i| i.id == own.intent_id);
        let own_leaf = self.mls.own_leaf_index();
        let summary = match self.mls.pending_commit() {
            Some(staged) => self.validate_staged(staged, own_leaf, ctx.identities),
            None => Err(Verdict::Reject("no pending commit".into())),
        };
        let summary = match summary {
            Ok(s) => s,
            Err(Verdict::NeedIdentities(need)) => return Err(GroupError::NeedIdentities(need)),
            Err(Verdict::Reject(reason)) => {
                // Every other member rejects it too, so the epoch stays.
                self.mls
                    .clear_pending_commit(provider.storage())
                    .map_err(GroupError::mls)?;
                if intent.is_some() {
                    self.fail_intent(kv, own.intent_id, reason, true)?;
                }
                return Ok(());
            }
        };
        if self.config.rewind.retains() {
            let state = self.capture(kv)?;
            let auth = self.auth_digest();
            self.keep_snapshot(kv, Some(&state), &entry, entry.epoch, auth, ctx.now_ms)?;
        }
        let left_auth = self.auth_digest();
        let included = self
            .mls
            .pending_commit()
            .map(|staged| proposal_refs(staged.queued_proposals()))
            .unwrap_or_default();
        self.mls
            .merge_pending_commit(provider)
            .map_err(GroupError::mls)?;
        self.record.digest_due = true;
        self.resolve_intents(kv, own.epoch, &included, own.hash, Some(own.intent_id))?;
        if let Some(mut intent) = intent {
            let commit = match intent.state {
                IntentState::Published(commit) => commit,
                // Regenerated meanwhile, then rolled back to the state in
                // which this commit is pending: it is this commit that won.
                _ => PublishedCommit {
                    epoch: own.epoch,
                    commit_hash: own.hash,
                    proposal_ref: None,
                },
            };
            intent.state = IntentState::Committed {
                commit,
                joiner_cursor: own.joiner_cursor.clone(),
            };
            store.put_intent(self.group_id(), &intent)?;
        }
        let merge = Merge {
            left_auth,
            summary,
            self_removed: false,
        };
        self.merged(provider, kv, ctx, &entry, merge)
    }

    /// Whether a member's standalone proposal may be stored for the next
    /// commit: a member leaving (`Ok(true)`), a key update that keeps the
    /// member's identity, or a metadata change the proposer's role allows
    /// that leaves the membership and the immutable metadata alone.
    fn check_proposal(&self, queued: &openmls::prelude::QueuedProposal) -> Result<bool, String> {
        let Sender::Member(sender) = queued.sender() else {
            return Err("a proposal from outside the group".into());
        };
        // In a deniable DM the proposer is a pseudonym: its binding, not
        // its leaf, says who it is, and every member may do what a DM allows.
        let proposer = if self.is_deniable() {
            None
        } else {
            Some(
                leaf_identity(&self.mls, *sender)
                    .ok_or("a proposal from a leaf without a Kith credential")?,
            )
        };
        match queued.proposal() {
            Proposal::Remove(r) if r.removed() == *sender => Ok(true),
            Proposal::Update(update) => {
                match proposer {
                    Some((inbox, installation)) => {
                        super::validate::check_update(update.leaf_node(), inbox, installation)?
                    }
                    None => super::deniable::check_deniable_update(
                        self.mls.member_at(*sender),
                        update.leaf_node(),
                    )?,
                }
                Ok(false)
            }
            Proposal::GroupContextExtensions(change) => {
                let new = GroupMetadata::from_extensions(change.extensions())
                    .map_err(|e| format!("a proposed metadata change: {e}"))?;
                if new.immutable != self.metadata.immutable
                    || new.membership != self.metadata.membership
                {
                    return Err(
                        "a proposed metadata change touches the immutable metadata or the \
                         membership"
                            .into(),
                    );
                }
                match proposer {
                    Some((inbox, _)) => {
                        super::validate::check_metadata_change(&self.metadata, &new, &inbox)?;
                    }
                    None => super::validate::check_metadata_change_by_role(
                        &self.metadata,
                        &new,
                        super::Role::Member,
                        "a member of this DM",
                    )?,
                }
                Ok(false)
            }
            other => Err(format!(
                "a standalone {:?} proposal, which Kith does not use",
                other.proposal_type()
            )),
        }
    }

    /// After a commit for `epoch` merged: proposals of ours that it
    /// included are carried out (`Committed` until it settles); those it
    /// left out are void in the new epoch and proposed again. So is an own
    /// commit that lost, unless the winner included its proposal. The
    /// intent of an own commit that won (`own_intent`) is its caller's.
    fn resolve_intents<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        epoch: u64,
        included: &BTreeSet<Vec<u8>>,
        commit_hash: [u8; 32],
        own_intent: Option<u64>,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        for mut intent in store.intents(self.group_id())? {
            if Some(intent.id) == own_intent {
                continue;
            }
            let carried = match &intent.state {
                IntentState::Published(commit) => commit
                    .proposal_ref
                    .as_ref()
                    .is_some_and(|reference| included.contains(reference)),
                // An own commit leaves this installation's own key-update
                // proposal out and updates its keys by its path instead.
                IntentState::Proposed(p)
                    if own_intent.is_some() && intent.kind == IntentKind::UpdateKeys =>
                {
                    p.epoch == epoch
                }
                IntentState::Proposed(p) => included.contains(&p.proposal_ref),
                _ => continue,
            };
            intent.state = if carried {
                IntentState::Committed {
                    commit: PublishedCommit {
                        epoch,
                        commit_hash,
                        proposal_ref: None,
                    },
                    joiner_cursor: crate::delivery::Cursor::default(),
                }
            } else {
                IntentState::Regenerate
            };
            store.put_intent(self.group_id(), &intent)?;
        }
        Ok(())
    }

    fn after_merge<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        summary: CommitSummary,
        self_removed: bool,
    ) -> Result<(), GroupError> {
        if !summary.added.is_empty() || !summary.removed.is_empty() {
            self.events.push_back(GroupEvent::MembersChanged {
                by: summary.committer,
                added: summary.added,
                removed: summary.removed,
            });
        }
        if summary.metadata_changed {
            self.events.push_back(GroupEvent::MetadataChanged {
                by: summary.committer,
                metadata: Box::new(summary.metadata.clone()),
            });
        }
        self.metadata = summary.metadata;
        if self_removed || !self.mls.is_active() {
            let store = ClientStore(kv);
            if let Some(mut record) = store.conversation(&self.conversation_id())? {
                let group_id = self.group_id().to_vec();
                record.group_ids.retain(|g| *g != group_id);
                if record.group_ids.is_empty() {
                    record.group_ids.push(group_id);
                    record.state = ConversationState::Removed;
                }
                store.put_conversation(&record)?;
            }
            for intent in store.intents(self.group_id())? {
                // A merged commit of ours still owes its joiners their
                // Welcome once it settles.
                if intent.state.is_final() || matches!(intent.state, IntentState::Committed { .. })
                {
                    continue;
                }
                self.fail_intent(kv, intent.id, "this installation was removed".into(), false)?;
            }
            self.events.push_back(GroupEvent::Removed);
        }
        Ok(())
    }
}

/// Decode a deniable key package as the node hands it out (an
/// `MlsMessage`) and validate it (it names nobody: nothing to check
/// against a log).
fn checked_deniable_key_package<P: OpenMlsProvider>(
    provider: &P,
    bytes: &[u8],
    now_ms: u64,
) -> Result<crate::identity::ValidatedDeniableKeyPackage, GroupError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| GroupError::InvalidInput(format!("deniable key package: {e}")))?;
    let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
        return Err(GroupError::InvalidInput(
            "a key package message holds no key package".into(),
        ));
    };
    Ok(validate_deniable_key_package(
        provider.crypto(),
        key_package,
        now_ms / 1000,
    )?)
}

/// Decode a key package as the node hands it out (an `MlsMessage`) and
/// validate it against its inbox's identity log.
fn checked_key_package<P: OpenMlsProvider>(
    provider: &P,
    identities: &IdentityCache,
    bytes: &[u8],
    now_ms: u64,
) -> Result<(InboxId, crate::identity::ValidatedKeyPackage), GroupError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| GroupError::InvalidInput(format!("key package: {e}")))?;
    let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
        return Err(GroupError::InvalidInput(
            "a key package message holds no key package".into(),
        ));
    };
    let inbox = crate::identity::credential_inbox(&key_package.unverified_credential().credential)
        .map_err(|e| GroupError::InvalidInput(format!("key package: {e}")))?;
    let state = identities
        .state(&inbox)
        .ok_or_else(|| GroupError::NeedIdentities(vec![(inbox, 1)]))?;
    let valid = validate_key_package(provider.crypto(), key_package, now_ms / 1000, state)?;
    Ok((inbox, valid))
}

/// The references of the proposals a commit carries.
fn proposal_refs<'a>(
    queued: impl Iterator<Item = &'a openmls::prelude::QueuedProposal>,
) -> BTreeSet<Vec<u8>> {
    queued
        .map(|q| q.proposal_reference_ref().as_slice().to_vec())
        .collect()
}

/// What a merge left behind, for [`Group::merged`].
struct Merge {
    /// Digest of the authenticator of the epoch the commit left.
    left_auth: [u8; 8],
    summary: CommitSummary,
    self_removed: bool,
}

enum Built {
    /// Sent as a standalone proposal, with this reference.
    Proposed(Vec<u8>),
    Commit {
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        welcome_to: Vec<InstallationId>,
    },
    Done,
}

/// What [`Group::reconcile_plan`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcilePlan {
    /// Installations to add (their key packages must be fetched).
    pub add: Vec<(InboxId, InstallationId)>,
    /// Installations to remove.
    pub remove: Vec<InstallationId>,
    /// Inbox -> log sequence to record.
    pub sequences: Vec<(InboxId, u64)>,
}

impl ReconcilePlan {
    /// Whether nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// A DM's conversation id comes from its two inboxes, so that every DM
/// group between them (both sides may create one at once) is shown as one
/// conversation; a group's is its group id.
fn conversation_id(metadata: &GroupMetadata, group_id: &[u8]) -> ConversationId {
    match metadata.immutable.dm_members {
        Some((a, b)) => dm_conversation_id(a, b),
        None => ConversationId(group_id.to_vec()),
    }
}
