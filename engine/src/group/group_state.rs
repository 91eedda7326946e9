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

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use openmls::prelude::{
    CredentialWithKey, GroupId, KeyPackage, LeafNodeIndex, MlsGroup, MlsGroupJoinConfig,
    MlsMessageBodyIn, MlsMessageIn, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY, ProcessedMessageContent,
    Proposal, ProtocolMessage, Sender, StagedWelcome,
    tls_codec::{Deserialize as _, Serialize as _},
};
use openmls_traits::{OpenMlsProvider, random::OpenMlsRand as _};
use prost::Message as _;
use sha2::{Digest, Sha256};

use super::{
    GroupError,
    content::{Content, WelcomePayload, message_id},
    identities::IdentityCache,
    intent::{Intent, IntentKind, IntentState},
    metadata::{
        ConversationKind, GroupMetadata, ImmutableMetadata, MutableMetadata, Policies, PolicyPreset,
    },
    store::{
        ClientStore, ConversationId, ConversationRecord, ConversationState, Delivery, GroupRecord,
        KvStore, Outbound, StoredMessage, dm_conversation_id,
    },
    validate::{CommitSummary, Verdict, leaf_identity, validate_commit},
};
use crate::{
    delivery::{Envelope, Topic},
    identity::{
        CIPHERSUITE, InboxId, InstallationId, InstallationKeys, kith_capabilities, kith_credential,
        validate_key_package,
    },
};

/// How many past epochs' secrets are kept, so that application messages
/// sent just before a commit still decrypt after it.
pub const MAX_PAST_EPOCHS: usize = 5;

/// The installation acting: its inbox and keys.
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    /// The inbox.
    pub inbox: InboxId,
    /// The installation's keys (its leaf signature key).
    pub keys: &'a InstallationKeys,
}

/// What to create.
#[derive(Debug, Clone)]
pub struct NewGroup {
    /// Group or DM.
    pub kind: ConversationKind,
    /// For a DM, the other inbox.
    pub dm_peer: Option<InboxId>,
    /// Initial attributes (name, description, ...).
    pub attributes: BTreeMap<String, String>,
    /// Policy preset (ignored for DMs, which use [`Policies::dm`]).
    pub preset: PolicyPreset,
    /// Creation time, ms since the Unix epoch.
    pub now_ms: u64,
}

/// Something the application should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupEvent {
    /// A message was stored (received, or sent by this installation).
    Message(StoredMessage),
    /// Installations joined or left.
    MembersChanged {
        /// Who committed the change.
        by: InboxId,
        /// Installations added.
        added: Vec<(InboxId, InstallationId)>,
        /// Installations removed.
        removed: Vec<(InboxId, InstallationId)>,
    },
    /// Attributes, admins or policies changed.
    MetadataChanged {
        /// Who committed the change.
        by: InboxId,
        /// The metadata now.
        metadata: Box<GroupMetadata>,
    },
    /// An intent is done.
    IntentDone {
        /// Its id.
        id: u64,
    },
    /// An intent failed for good.
    IntentFailed {
        /// Its id.
        id: u64,
        /// Why.
        reason: String,
        /// Whether the group's policy forbade it (rather than it no longer
        /// making sense).
        denied: bool,
    },
    /// A commit from another member broke a rule and was not merged.
    CommitRejected {
        /// Why.
        reason: String,
    },
    /// An envelope could not be used (malformed, stale, undecryptable).
    EnvelopeSkipped {
        /// Why.
        reason: String,
    },
    /// This installation is no longer a member.
    Removed,
}

/// One conversation's MLS group and its engine state. See the module docs.
#[derive(Debug)]
pub struct Group {
    mls: MlsGroup,
    record: GroupRecord,
    metadata: GroupMetadata,
    outbound: VecDeque<Outbound>,
    events: VecDeque<GroupEvent>,
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn serialize(message: &openmls::prelude::MlsMessageOut) -> Result<Vec<u8>, GroupError> {
    message.tls_serialize_detached().map_err(GroupError::mls)
}

impl Group {
    // ----- lifecycle -----------------------------------------------------

    /// Create a group with this installation as its only member. Members
    /// are added by a following [`IntentKind::AddMembers`].
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
        let credential = CredentialWithKey {
            credential: kith_credential(me.inbox),
            signature_key: me.keys.id().as_bytes().to_vec().into(),
        };
        let mls = MlsGroup::builder()
            .with_group_id(GroupId::from_slice(&group_id))
            .ciphersuite(CIPHERSUITE)
            .with_capabilities(kith_capabilities())
            .with_group_context_extensions(metadata.to_extensions())
            .use_ratchet_tree_extension(true)
            .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .build(provider, me.keys, credential)
            .map_err(GroupError::mls)?;
        let conversation = conversation_id(&metadata, &group_id);
        let group = Self {
            mls,
            record: GroupRecord {
                conversation_id: Some(conversation.clone()),
                ..GroupRecord::default()
            },
            metadata,
            outbound: VecDeque::new(),
            events: VecDeque::new(),
        };
        group.register_conversation(kv, me, new.now_ms)?;
        group.save_record(kv)?;
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
        Ok(Some(Self {
            mls,
            record,
            metadata,
            outbound,
            events: VecDeque::new(),
        }))
    }

    /// Join a group from a Welcome payload. Every member's leaf is checked
    /// against the identity logs at the sequence numbers the group records.
    /// Returns `Ok(None)` if this installation already has the group.
    pub fn join<P: OpenMlsProvider, S: KvStore + ?Sized>(
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Option<Self>, GroupError> {
        let payload = WelcomePayload::from_bytes(payload)
            .map_err(|e| GroupError::InvalidInput(e.to_string()))?;
        if MlsGroup::load(provider.storage(), &GroupId::from_slice(&payload.group_id))
            .map_err(GroupError::mls)?
            .is_some()
        {
            return Ok(None);
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
        let need: Vec<_> = metadata
            .membership
            .iter()
            .filter(|(inbox, seq)| identities.sequence(inbox) < **seq)
            .map(|(i, s)| (*i, *s))
            .collect();
        if !need.is_empty() {
            return Err(GroupError::NeedIdentities(need));
        }
        let mut inboxes = BTreeSet::new();
        for member in staged.members() {
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
        if inboxes != metadata.membership.keys().copied().collect() {
            return Err(GroupError::InvalidInput(
                "the membership record does not match the members".into(),
            ));
        }
        let mls = staged.into_group(provider).map_err(GroupError::mls)?;
        let group_id = mls.group_id().as_slice().to_vec();
        let store = ClientStore(kv);
        store.put_cursor(&Topic::Group(group_id.clone()), &payload.cursor)?;
        let group = Self {
            record: GroupRecord {
                conversation_id: Some(conversation_id(&metadata, &group_id)),
                ..GroupRecord::default()
            },
            mls,
            metadata,
            outbound: VecDeque::new(),
            events: VecDeque::new(),
        };
        group.register_conversation(kv, me, now_ms)?;
        group.save_record(kv)?;
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

    fn save_record<S: KvStore + ?Sized>(&self, kv: &S) -> Result<(), GroupError> {
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
            if let Some((inbox, installation)) = leaf_identity(&self.mls, member.index) {
                out.entry(inbox).or_default().insert(installation);
            }
        }
        out
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

    /// When installations were last reconciled, ms since the Unix epoch.
    pub fn last_reconciled_ms(&self) -> u64 {
        self.record.last_reconciled_ms
    }

    /// Installations the identity logs say should be added (per inbox,
    /// with the log sequence read) and leaves whose installation is no
    /// longer active.
    pub fn reconcile_plan(&self, identities: &IdentityCache) -> ReconcilePlan {
        let members = self.members();
        let mut plan = ReconcilePlan::default();
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
            if let Some(mut message) = store.message(&conversation, &id)? {
                message.delivery = Delivery::Published;
                store.update_message(&message)?;
            }
        }
        Ok(())
    }

    fn push_outbound<S: KvStore + ?Sized>(
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
        let nonce = provider.rand().random_vec(16).map_err(GroupError::mls)?;
        let id = message_id(me.inbox, self.group_id(), &nonce);
        let content = Content {
            content_type: content_type.to_owned(),
            message_id: id.to_vec(),
            body: body.to_vec(),
            sent_at_ms: now_ms,
        };
        let out = self
            .mls
            .create_message(provider, me.keys, &content.encode_to_vec())
            .map_err(GroupError::mls)?;
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
        };
        ClientStore(kv).insert_message(&message)?;
        self.push_outbound(
            kv,
            &[Topic::Group(self.group_id().to_vec())],
            serialize(&out)?,
            Some(id),
        )?;
        self.events.push_back(GroupEvent::Message(message));
        Ok(id)
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

    /// If no commit of ours is pending, turn the oldest waiting intent into
    /// a published commit (or proposal). Intents that cannot be carried out
    /// fail with an event.
    pub fn advance<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        loop {
            if self.mls.pending_commit().is_some() {
                return Ok(());
            }
            let intents = store.intents(self.group_id())?;
            let Some(mut intent) = intents
                .into_iter()
                .find(|i| i.state == IntentState::ToPublish)
            else {
                return Ok(());
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
            match self.build(provider, kv, me, identities, &intent.kind, now_ms) {
                Ok(Built::Commit {
                    commit,
                    welcome,
                    welcome_to,
                }) => {
                    intent.state = IntentState::Published {
                        epoch: self.epoch(),
                        commit_hash: sha256(&commit),
                        welcome,
                        welcome_to,
                    };
                    store.put_intent(self.group_id(), &intent)?;
                    self.push_outbound(
                        kv,
                        &[Topic::Group(self.group_id().to_vec())],
                        commit,
                        None,
                    )?;
                    return Ok(());
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

    fn fail_intent<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        id: u64,
        reason: String,
        denied: bool,
    ) -> Result<(), GroupError> {
        ClientStore(kv).remove_intent(self.group_id(), id)?;
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
        let mut metadata = self.metadata.clone();
        let members = self.members();
        let mut adds: Vec<KeyPackage> = Vec::new();
        let mut welcome_to = Vec::new();
        let mut removals: Vec<LeafNodeIndex> = Vec::new();
        let mut consume_proposals = false;
        let mut force_update = false;
        let leaves_of = |pred: &dyn Fn(InboxId, InstallationId) -> bool| -> Vec<LeafNodeIndex> {
            self.mls
                .members()
                .filter(|m| leaf_identity(&self.mls, m.index).is_some_and(|(i, x)| pred(i, x)))
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
                // Key packages travel as `MlsMessage`s, as the node stores them.
                let message = MlsMessageIn::tls_deserialize_exact(bytes.as_slice())
                    .map_err(|e| GroupError::InvalidInput(format!("key package: {e}")))?;
                let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
                    return Err(GroupError::InvalidInput(
                        "a key package message holds no key package".into(),
                    ));
                };
                let inbox = crate::identity::credential_inbox(
                    &key_package.unverified_credential().credential,
                )
                .map_err(|e| GroupError::InvalidInput(format!("key package: {e}")))?;
                let state = identities
                    .state(&inbox)
                    .ok_or_else(|| GroupError::NeedIdentities(vec![(inbox, 1)]))?;
                let valid =
                    validate_key_package(provider.crypto(), key_package, now_ms / 1000, state)?;
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
                for inbox in inboxes {
                    if !members.contains_key(inbox) {
                        return Err(GroupError::InvalidInput(format!("{inbox} is not a member")));
                    }
                    metadata.membership.remove(inbox);
                }
                removals = leaves_of(&|i, _| inboxes.contains(&i));
            }
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
            IntentKind::CommitPending => {
                let pending: Vec<LeafNodeIndex> = self
                    .mls
                    .pending_proposals()
                    .filter_map(|p| match p.proposal() {
                        Proposal::Remove(r) => Some(r.removed()),
                        _ => None,
                    })
                    .collect();
                if pending.is_empty() {
                    return Ok(Built::Done);
                }
                // Inboxes that lose their last leaf leave the membership.
                let mut remaining = members.clone();
                for leaf in &pending {
                    if let Some((inbox, installation)) = leaf_identity(&self.mls, *leaf)
                        && let Some(set) = remaining.get_mut(&inbox)
                    {
                        set.remove(&installation);
                        if set.is_empty() {
                            metadata.membership.remove(&inbox);
                        }
                    }
                }
                consume_proposals = true;
            }
            IntentKind::UpdateKeys => force_update = true,
            IntentKind::Leave => {
                if self.mls.pending_proposals().any(|p| {
                    matches!(p.proposal(), Proposal::Remove(r) if r.removed() == self.mls.own_leaf_index())
                }) {
                    return Ok(Built::Done);
                }
                let proposal = self
                    .mls
                    .leave_group(provider, me.keys)
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
        metadata.check_limits()?;
        let metadata_changed = metadata != self.metadata;
        if metadata_changed {
            super::validate::check_metadata_change(&self.metadata, &metadata, &me.inbox)
                .map_err(GroupError::NotPermitted)?;
        }
        let mut builder = self
            .mls
            .commit_builder()
            .consume_proposal_store(consume_proposals)
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
            .build(provider.rand(), provider.crypto(), me.keys, |_| true)
            .map_err(|e| GroupError::InvalidInput(format!("cannot build the commit: {e:?}")))?
            .stage_commit(provider)
            .map_err(GroupError::mls)?;
        // Check our own commit exactly as every receiver will, so that a
        // forbidden change fails here instead of forking us off the group.
        let own_leaf = self.mls.own_leaf_index();
        let verdict = match self.mls.pending_commit() {
            Some(staged) => {
                validate_commit(&self.mls, &self.metadata, staged, own_leaf, identities)
            }
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

    // ----- inputs --------------------------------------------------------

    /// Process one envelope of the group topic. Envelopes the cursor has
    /// passed are ignored; bad envelopes from peers become events, never
    /// errors. Errors are ours (or [`GroupError::NeedIdentities`]).
    pub fn handle_envelope<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        identities: &IdentityCache,
        envelope: &Envelope,
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
        self.process(provider, kv, identities, envelope)?;
        cursor.advance(envelope);
        store.put_cursor(&topic, &cursor)?;
        Ok(())
    }

    fn skip(&mut self, reason: String) {
        self.events
            .push_back(GroupEvent::EnvelopeSkipped { reason });
    }

    fn process<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        identities: &IdentityCache,
        envelope: &Envelope,
    ) -> Result<(), GroupError> {
        let hash = sha256(&envelope.payload);
        let store = ClientStore(kv);
        let published = store.intents(self.group_id())?.into_iter().find(|i| {
            matches!(&i.state, IntentState::Published { commit_hash, .. } if *commit_hash == hash)
        });
        if let Some(intent) = published {
            return self.merge_own(provider, kv, identities, envelope, intent);
        }
        if !self.mls.is_active() {
            return Ok(());
        }
        let message = match MlsMessageIn::tls_deserialize_exact(envelope.payload.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                self.skip(format!("malformed MLS message: {e}"));
                return Ok(());
            }
        };
        let protocol: ProtocolMessage = match message.try_into_protocol_message() {
            Ok(p) => p,
            Err(e) => {
                self.skip(format!("not a group message: {e:?}"));
                return Ok(());
            }
        };
        let processed = match self.mls.process_message(provider, protocol) {
            Ok(p) => p,
            Err(e) => {
                self.skip(format!("cannot process: {e}"));
                return Ok(());
            }
        };
        let sender = processed.sender().clone();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let Sender::Member(leaf) = sender else {
                    self.skip("an application message from a non-member".into());
                    return Ok(());
                };
                let Some((inbox, installation)) = leaf_identity(&self.mls, leaf) else {
                    self.skip("an application message from an invalid leaf".into());
                    return Ok(());
                };
                let (content, id) = match Content::decode_checked(&app.into_bytes()) {
                    Ok(c) => c,
                    Err(e) => {
                        self.skip(e.to_string());
                        return Ok(());
                    }
                };
                let message = StoredMessage {
                    conversation_id: self.conversation_id(),
                    group_id: self.group_id().to_vec(),
                    message_id: id,
                    sender_inbox: inbox,
                    sender_installation: installation,
                    content_type: content.content_type,
                    body: content.body,
                    sent_at_ms: content.sent_at_ms,
                    time_ms: envelope.originator_time_ms,
                    delivery: Delivery::Published,
                };
                if store.insert_message(&message)? {
                    self.events.push_back(GroupEvent::Message(message));
                }
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                // Kith sends one kind of standalone proposal: a member
                // removing its own leaf (leaving). Whoever commits next
                // includes it.
                let own_removal = matches!(
                    (proposal.proposal(), proposal.sender()),
                    (Proposal::Remove(r), Sender::Member(s)) if r.removed() == *s
                );
                if !own_removal {
                    self.skip("a standalone proposal other than leaving".into());
                    return Ok(());
                }
                self.mls
                    .store_pending_proposal(provider.storage(), *proposal)
                    .map_err(GroupError::mls)?;
                let intents = store.intents(self.group_id())?;
                if !intents.iter().any(|i| i.kind == IntentKind::CommitPending) {
                    self.queue_intent(kv, IntentKind::CommitPending)?;
                }
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let Sender::Member(committer) = sender else {
                    self.skip("a commit from a non-member".into());
                    return Ok(());
                };
                match validate_commit(&self.mls, &self.metadata, &staged, committer, identities) {
                    Ok(summary) => {
                        let self_removed = staged.self_removed();
                        self.mls
                            .merge_staged_commit(provider, *staged)
                            .map_err(GroupError::mls)?;
                        // A pending commit of ours lost: regenerate it.
                        for mut intent in store.intents(self.group_id())? {
                            if matches!(intent.state, IntentState::Published { .. }) {
                                intent.state = IntentState::ToPublish;
                                store.put_intent(self.group_id(), &intent)?;
                            }
                        }
                        self.after_merge(kv, summary, self_removed)?;
                    }
                    Err(Verdict::NeedIdentities(need)) => {
                        return Err(GroupError::NeedIdentities(need));
                    }
                    Err(Verdict::Reject(reason)) => {
                        self.events.push_back(GroupEvent::CommitRejected { reason });
                    }
                }
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                self.skip("external join proposals are not used by Kith".into());
            }
            _ => {
                // Our own private message (we cannot decrypt our own sends):
                // it is stored already.
            }
        }
        Ok(())
    }

    fn merge_own<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        identities: &IdentityCache,
        envelope: &Envelope,
        intent: Intent,
    ) -> Result<(), GroupError> {
        let IntentState::Published {
            welcome,
            welcome_to,
            ..
        } = intent.state
        else {
            return Ok(());
        };
        let own_leaf = self.mls.own_leaf_index();
        let summary = match self.mls.pending_commit() {
            Some(staged) => {
                validate_commit(&self.mls, &self.metadata, staged, own_leaf, identities)
            }
            None => Err(Verdict::Reject("no pending commit".into())),
        };
        let store = ClientStore(kv);
        let summary = match summary {
            Ok(s) => s,
            Err(Verdict::NeedIdentities(need)) => return Err(GroupError::NeedIdentities(need)),
            Err(Verdict::Reject(reason)) => {
                self.mls
                    .clear_pending_commit(provider.storage())
                    .map_err(GroupError::mls)?;
                self.fail_intent(kv, intent.id, reason, true)?;
                return Ok(());
            }
        };
        self.mls
            .merge_pending_commit(provider)
            .map_err(GroupError::mls)?;
        store.remove_intent(self.group_id(), intent.id)?;
        if let Some(welcome) = welcome {
            // The joiner reads the group topic from just past this commit.
            let mut cursor = store.cursor(&Topic::Group(self.group_id().to_vec()))?;
            cursor.advance(envelope);
            let payload = WelcomePayload {
                welcome,
                group_id: self.group_id().to_vec(),
                cursor,
            }
            .to_bytes();
            let topics: Vec<Topic> = welcome_to.into_iter().map(Topic::Welcome).collect();
            self.push_outbound(kv, &topics, payload, None)?;
        }
        self.after_merge(kv, summary, false)?;
        self.events
            .push_back(GroupEvent::IntentDone { id: intent.id });
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
                self.fail_intent(kv, intent.id, "this installation was removed".into(), false)?;
            }
            self.events.push_back(GroupEvent::Removed);
        }
        Ok(())
    }
}

enum Built {
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
