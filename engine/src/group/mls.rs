//! [`Mls`]: the group's MLS state of the current epoch, and every OpenMLS
//! call made on it.
//!
//! It owns the `MlsGroup` (tree, secrets, pending proposals and commit),
//! the key the group's leaf signs with, and the metadata the GroupContext
//! carries. It is the one place that knows how Kith configures OpenMLS
//! (ciphersuite, wire format, ratchet tolerance, past-epoch secrets) and
//! how OpenMLS errors map to [`GroupError`], and it checks everything
//! before it merges: every commit is validated exactly as every member
//! validates it (`validate`), and every proposal before it is stored.
//!
//! ```text
//!  build(intent) ─► plan ─► stage ─► validate as a receiver would ─► Built (or cleared)
//!  receive(message) ─► process ─► Received: a message, a checked proposal,
//!                                          a validated commit, or why not
//!  merge(commit) ─► the next epoch, and what it changed (Merge)
//! ```
//!
//! It never decides when: whether to merge, when to capture or restore a
//! snapshot, what to do with a message are the group's, with the other
//! parts. It writes nothing but OpenMLS's own storage.

use std::collections::{BTreeMap, BTreeSet};

use openmls::prelude::{
    Credential, CredentialWithKey, Extensions, GroupContext, GroupId, LeafNodeIndex,
    LeafNodeParameters, MlsGroup, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    PURE_CIPHERTEXT_WIRE_FORMAT_POLICY, ProcessMessageError, ProcessedMessageContent,
    ProposalOrRefType, ProtocolMessage, Sender, StageCommitError, StagedCommit, StagedWelcome,
    tls_codec::{self, Deserialize as _, Serialize as _},
};
use openmls_traits::OpenMlsProvider;

use super::{
    aad::{CLAIM_EXPORTER_LABEL, auth_digest},
    commit_plan::{GroupView, Plan, changed_metadata, plan_commit, proposal_refs},
    error::GroupError,
    identities::IdentityCache,
    intent::IntentKind,
    metadata::GroupMetadata,
    mls_config::{MAX_PAST_EPOCHS, fit_past_epochs, join_config, sender_ratchets},
    records::{DeniableState, RetiredGroup, RetiredLeaf},
    roster::Roster,
    signer::{Me, signer},
    store::GroupSnapshots,
    transcript::{GroupUpdateWire, group_update},
    validate::{
        CommitSummary, Verdict, check_own_metadata_change, check_proposal, check_welcome,
        validate_staged,
    },
};
use crate::identity::{
    BINDING_EXPORTER_LABEL, BINDING_EXPORTER_LEN, CIPHERSUITE, DEFAULT_LIFETIME_SECS, EphemeralKey,
    InboxId, InstallationId, deniable_capabilities, kith_capabilities, kith_credential,
    leaf_lifetime, pseudonym_credential_from_bytes,
};

/// Serialize an outgoing MLS message.
fn serialize(message: &MlsMessageOut) -> Result<Vec<u8>, GroupError> {
    message.tls_serialize_detached().map_err(GroupError::mls)
}

/// The identity a new group's creator takes: its installation, or in a
/// deniable DM a pseudonym and a fresh per-conversation key.
#[derive(Debug)]
pub(crate) enum CreatorLeaf {
    /// A Kith credential naming the inbox, signed by the installation.
    Installation,
    /// A pseudonym, signed by a key made for this one conversation.
    Pseudonym {
        /// The random pseudonym.
        pseudonym: [u8; 16],
        /// The leaf's key (boxed: the other variant is empty).
        key: Box<EphemeralKey>,
    },
}

/// What an intent came to.
#[derive(Debug)]
pub(crate) enum Built {
    /// Nothing was left to change.
    Done,
    /// A proposal to leave, for another member to commit.
    Leave(Vec<u8>),
    /// A standalone proposal.
    Proposed {
        /// The message.
        message: Vec<u8>,
        /// Its reference.
        reference: Vec<u8>,
    },
    /// A commit, staged as the pending commit.
    Commit {
        /// The commit.
        commit: Vec<u8>,
        /// The Welcome for its joiners, if it adds anyone.
        welcome: Option<Vec<u8>>,
        /// Whom the Welcome is for.
        welcome_to: Vec<InstallationId>,
        /// The reference of each of their key packages (in the order of
        /// `welcome_to`): which of the Welcome's secrets is whose.
        welcome_refs: Vec<Vec<u8>>,
    },
}

/// What a received message is, once OpenMLS processed it and the commit or
/// proposal it carries was checked.
#[derive(Debug)]
pub(crate) enum Received {
    /// A commit referring to a proposal that has not arrived yet (it sorts
    /// before the commit, but came by a slower path): hold it.
    MissingProposal,
    /// OpenMLS could not process it.
    Unreadable(String),
    /// An application message from leaf `leaf`, whose credential in the
    /// sender's epoch is `credential`.
    Application {
        /// The sender's leaf.
        leaf: LeafNodeIndex,
        /// Its credential.
        credential: Credential,
        /// The plaintext.
        plaintext: Vec<u8>,
    },
    /// A member's proposal, checked and stored for the next commit;
    /// `leaving` if it removes its own sender.
    Proposal {
        /// Whether a member asks to leave.
        leaving: bool,
    },
    /// A commit that passed validation, not merged yet.
    Commit(Box<ValidCommit>),
    /// A commit or proposal that breaks a rule, or is not for Kith.
    Refused {
        /// Whether it was a commit (a rejected commit is an event of its
        /// own; anything else is skipped).
        commit: bool,
        /// Why.
        reason: String,
    },
    /// An own message, which OpenMLS cannot decrypt (sent messages are
    /// stored already, own commits are recognised by hash).
    Own,
}

/// A validated commit, ready to merge.
#[derive(Debug)]
pub(crate) struct ValidCommit {
    staged: StagedCommit,
    summary: CommitSummary,
}

/// A Welcome checked and staged, not joined yet (see [`Mls::stage_join`]):
/// what it would join, to compare with a state of the same group that this
/// installation already has before replacing it.
pub(crate) struct StagedJoin {
    staged: StagedWelcome,
    metadata: GroupMetadata,
    /// The signature key of the leaf that sent the Welcome (its committer).
    sender_key: Vec<u8>,
}

impl StagedJoin {
    /// The metadata of the epoch it joins.
    pub(crate) fn metadata(&self) -> &GroupMetadata {
        &self.metadata
    }

    /// The signature key of the member that sent it (its committer).
    pub(crate) fn sender_key(&self) -> &[u8] {
        &self.sender_key
    }

    /// The installation that sent it, if its leaf names one (not in a
    /// deniable DM, whose leaves carry pseudonyms).
    pub(crate) fn sender_installation(&self) -> Option<InstallationId> {
        let key: [u8; 32] = self.sender_key.as_slice().try_into().ok()?;
        self.staged
            .members()
            .find(|m| m.signature_key.as_slice() == self.sender_key)
            .and_then(|m| crate::identity::credential_inbox(&m.credential).ok())
            .map(|_| InstallationId(key))
    }
}

/// What a merge changed.
#[derive(Debug)]
pub(crate) struct Merge {
    /// Digest of the authenticator of the epoch the commit left.
    pub(crate) left_auth: [u8; 8],
    /// The claim key of the epoch the commit left (see [`Mls::claim_key`]).
    pub(crate) left_claim_key: zeroize::Zeroizing<[u8; 32]>,
    /// The references of the proposals it carried.
    pub(crate) included: BTreeSet<Vec<u8>>,
    /// What it changed.
    pub(crate) summary: CommitSummary,
    /// Whether it removed this installation.
    pub(crate) self_removed: bool,
    /// Its transcript entry, if it changed what a reader sees.
    pub(crate) update: Option<GroupUpdateWire>,
}

/// A group's MLS state. See the module docs.
#[derive(Debug)]
pub(crate) struct Mls {
    state: State,
    /// In a deniable DM, the key this installation's leaf signs with.
    ephemeral: Option<EphemeralKey>,
    metadata: GroupMetadata,
}

/// The MLS state proper, or what is left of it once this installation is
/// out of the group for good.
#[derive(Debug)]
enum State {
    /// The group's OpenMLS state.
    Live(Box<MlsGroup>),
    /// The group was left for good and its OpenMLS state deleted
    /// ([`Mls::retire`]): only public facts of its last epoch remain.
    Retired(Box<Retired>),
}

/// A retired group's last epoch, as kept.
#[derive(Debug)]
struct Retired {
    record: RetiredGroup,
    leaves: Vec<(Credential, Vec<u8>)>,
}

impl State {
    fn live(&self) -> Result<&MlsGroup, GroupError> {
        match self {
            Self::Live(group) => Ok(group),
            Self::Retired(_) => Err(GroupError::NotMember),
        }
    }

    fn live_mut(&mut self) -> Result<&mut MlsGroup, GroupError> {
        match self {
            Self::Live(group) => Ok(group),
            Self::Retired(_) => Err(GroupError::NotMember),
        }
    }
}

impl Mls {
    // ----- lifecycle -----------------------------------------------------------

    /// A new group `group_id` with `me` as its only member, carrying
    /// `metadata` in its GroupContext extensions, made at `now_ms` (the
    /// creator's leaf lifetime counts from it, not from the system clock).
    pub(crate) fn create<P: OpenMlsProvider>(
        provider: &P,
        me: Me<'_>,
        group_id: &[u8],
        metadata: GroupMetadata,
        leaf: CreatorLeaf,
        now_ms: u64,
    ) -> Result<Self, GroupError> {
        let (credential, capabilities, ephemeral) = match leaf {
            CreatorLeaf::Pseudonym { pseudonym, key } => (
                CredentialWithKey {
                    credential: pseudonym_credential_from_bytes(&pseudonym),
                    signature_key: key.public_key().to_vec().into(),
                },
                deniable_capabilities(),
                Some(*key),
            ),
            CreatorLeaf::Installation => (
                CredentialWithKey {
                    credential: kith_credential(me.inbox),
                    signature_key: me.keys.id().as_bytes().to_vec().into(),
                },
                kith_capabilities(),
                None,
            ),
        };
        let group = MlsGroup::builder()
            .with_group_id(GroupId::from_slice(group_id))
            .ciphersuite(CIPHERSUITE)
            .with_capabilities(capabilities)
            .with_group_context_extensions(metadata.to_extensions())
            .use_ratchet_tree_extension(true)
            .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(sender_ratchets())
            .lifetime(leaf_lifetime(now_ms / 1000, DEFAULT_LIFETIME_SECS))
            .build(provider, &signer(&ephemeral, me), credential)
            .map_err(GroupError::mls)?;
        Ok(Self {
            state: State::Live(Box::new(group)),
            ephemeral,
            metadata,
        })
    }

    /// The stored group `group_id`, if any, with `ephemeral` its leaf key
    /// in a deniable DM (looked up by `leaf_key` from its record).
    pub(crate) fn load<P: OpenMlsProvider>(
        provider: &P,
        group_id: &[u8],
    ) -> Result<Option<Self>, GroupError> {
        let Some(group) = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(GroupError::mls)?
        else {
            return Ok(None);
        };
        let metadata = GroupMetadata::from_extensions(group.extensions())?;
        Ok(Some(Self {
            state: State::Live(Box::new(group)),
            ephemeral: None,
            metadata,
        }))
    }

    /// Check a Welcome and stage it, without joining yet: every leaf
    /// against the identity logs, its metadata, and that it is for
    /// `group_id`. Nothing is written; [`Mls::finish_join`] joins.
    pub(crate) fn stage_join<P: OpenMlsProvider>(
        provider: &P,
        welcome: &[u8],
        group_id: &[u8],
        identities: &IdentityCache,
    ) -> Result<StagedJoin, GroupError> {
        let message = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|e| GroupError::InvalidInput(format!("welcome: {e}")))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(GroupError::InvalidInput("not a Welcome message".into()));
        };
        // Staged beside any state of the same group id this installation
        // holds: the caller compares the two before it lets one replace the
        // other (and deletes the old state first).
        let staged =
            StagedWelcome::build_from_welcome(provider, &join_config(MAX_PAST_EPOCHS), welcome)
                .and_then(|builder| builder.replace_old_group().build())
                .map_err(|e| GroupError::InvalidInput(format!("welcome: {e:?}")))?;
        let metadata = GroupMetadata::from_extensions(staged.group_context().extensions())?;
        if staged.group_context().group_id().as_slice() != group_id {
            return Err(GroupError::InvalidInput(
                "the Welcome names another group than its envelope".into(),
            ));
        }
        check_welcome(&metadata, staged.members().collect(), identities)?;
        let sender_key = staged
            .welcome_sender()
            .map_err(GroupError::mls)?
            .signature_key()
            .as_slice()
            .to_vec();
        Ok(StagedJoin {
            staged,
            metadata,
            sender_key,
        })
    }

    /// Join the group a staged Welcome is for (writing its state into
    /// OpenMLS's storage, over any state of the same group id).
    pub(crate) fn finish_join<P: OpenMlsProvider>(
        provider: &P,
        join: StagedJoin,
    ) -> Result<Self, GroupError> {
        let mut group = join.staged.into_group(provider).map_err(GroupError::mls)?;
        fit_past_epochs(provider, &mut group)?;
        Ok(Self {
            state: State::Live(Box::new(group)),
            ephemeral: None,
            metadata: join.metadata,
        })
    }

    /// A group this installation retired (see [`Self::retire`]), as kept.
    pub(crate) fn retired(record: RetiredGroup) -> Result<Self, GroupError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            GroupError::Corrupt(format!("a retired group's {what}: {e}"))
        };
        let extensions = Extensions::<GroupContext>::tls_deserialize_exact(&record.extensions)
            .map_err(|e| corrupt("extensions", &e))?;
        let metadata = GroupMetadata::from_extensions(&extensions)?;
        let leaves = record
            .leaves
            .iter()
            .map(|leaf| {
                Credential::tls_deserialize_exact(&leaf.credential)
                    .map(|credential| (credential, leaf.signature_key.clone()))
                    .map_err(|e| corrupt("leaf credential", &e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            state: State::Retired(Box::new(Retired { record, leaves })),
            ephemeral: None,
            metadata,
        })
    }

    /// Leave the MLS state for good: the returned record keeps the public
    /// facts of the last epoch (its tree's leaves, `members`, metadata and
    /// authenticator) and this state answers from it from now on. The
    /// caller deletes the OpenMLS state from the store.
    pub(crate) fn retire(
        &mut self,
        members: &BTreeMap<InboxId, BTreeSet<InstallationId>>,
        now_ms: u64,
    ) -> Result<RetiredGroup, GroupError> {
        let group = self.state.live()?;
        let encode = |e: tls_codec::Error| GroupError::Corrupt(format!("encoding: {e}"));
        let leaves = group
            .members()
            .map(|m| {
                Ok(RetiredLeaf {
                    credential: m.credential.tls_serialize_detached().map_err(encode)?,
                    signature_key: m.signature_key,
                })
            })
            .collect::<Result<_, GroupError>>()?;
        let record = RetiredGroup {
            group_id: group.group_id().as_slice().to_vec(),
            epoch: group.epoch().as_u64(),
            epoch_authenticator: group.epoch_authenticator().as_slice().to_vec(),
            extensions: group
                .extensions()
                .tls_serialize_detached()
                .map_err(encode)?,
            leaves,
            members: members
                .iter()
                .map(|(inbox, set)| (*inbox, set.iter().copied().collect()))
                .collect(),
            own_leaf_index: group.own_leaf_index().u32(),
            retired_at_ms: now_ms,
        };
        *self = Self::retired(record.clone())?;
        Ok(record)
    }

    /// Whether the MLS state was deleted (see [`Self::retire`]).
    pub(crate) fn is_retired(&self) -> bool {
        matches!(self.state, State::Retired(_))
    }

    /// Whether a leaf of the current tree has the signature key `key`.
    pub(crate) fn has_leaf_key(&self, key: &[u8]) -> bool {
        match &self.state {
            State::Live(group) => group
                .members()
                .any(|member| member.signature_key.as_slice() == key),
            State::Retired(r) => r.leaves.iter().any(|(_, k)| k.as_slice() == key),
        }
    }

    /// Give a deniable DM its leaf key (kept in the store).
    pub(crate) fn set_leaf_key(&mut self, key: EphemeralKey) {
        self.ephemeral = Some(key);
    }

    // ----- getters -------------------------------------------------------------

    /// The group, to read; [`GroupError::NotMember`] once retired.
    pub(crate) fn group(&self) -> Result<&MlsGroup, GroupError> {
        self.state.live()
    }

    /// Each leaf's credential and signature key.
    pub(crate) fn leaves(&self) -> Vec<(Credential, Vec<u8>)> {
        match &self.state {
            State::Live(group) => group
                .members()
                .map(|m| (m.credential, m.signature_key))
                .collect(),
            State::Retired(r) => r.leaves.clone(),
        }
    }

    /// The members' installations, by inbox.
    pub(crate) fn members(
        &self,
        deniable: Option<&DeniableState>,
    ) -> BTreeMap<InboxId, BTreeSet<InstallationId>> {
        match &self.state {
            State::Live(group) => Roster::new(group, deniable).members(),
            State::Retired(r) => r
                .record
                .members
                .iter()
                .map(|(inbox, set)| (*inbox, set.iter().copied().collect()))
                .collect(),
        }
    }

    /// This installation's leaf index (its last one, once removed).
    pub(crate) fn own_leaf_index(&self) -> u32 {
        match &self.state {
            State::Live(group) => group.own_leaf_index().u32(),
            State::Retired(r) => r.record.own_leaf_index,
        }
    }

    /// The current epoch's authenticator.
    pub(crate) fn epoch_authenticator(&self) -> Vec<u8> {
        match &self.state {
            State::Live(group) => group.epoch_authenticator().as_slice().to_vec(),
            State::Retired(r) => r.record.epoch_authenticator.clone(),
        }
    }

    /// The metadata of the current epoch.
    pub(crate) fn metadata(&self) -> &GroupMetadata {
        &self.metadata
    }

    /// The group id.
    pub(crate) fn group_id(&self) -> &[u8] {
        match &self.state {
            State::Live(group) => group.group_id().as_slice(),
            State::Retired(r) => &r.record.group_id,
        }
    }

    /// The current epoch.
    pub(crate) fn epoch(&self) -> u64 {
        match &self.state {
            State::Live(group) => group.epoch().as_u64(),
            State::Retired(r) => r.record.epoch,
        }
    }

    /// The digest of the current epoch's authenticator.
    pub(crate) fn auth_digest(&self) -> [u8; 8] {
        auth_digest(&self.epoch_authenticator())
    }

    /// Whether this installation is a member.
    pub(crate) fn is_active(&self) -> bool {
        self.state.live().is_ok_and(MlsGroup::is_active)
    }

    /// Whether proposals wait for a commit (MLS sends no application
    /// message meanwhile).
    pub(crate) fn has_pending_proposals(&self) -> bool {
        self.state
            .live()
            .is_ok_and(|g| g.pending_proposals().next().is_some())
    }

    /// Whether a commit of ours is staged.
    pub(crate) fn has_pending_commit(&self) -> bool {
        self.state
            .live()
            .is_ok_and(|g| g.pending_commit().is_some())
    }

    /// The signature key of this installation's leaf.
    pub(crate) fn own_leaf_key(&self) -> Option<[u8; 32]> {
        self.state
            .live()
            .ok()?
            .own_leaf_node()
            .and_then(|leaf| leaf.signature_key().as_slice().try_into().ok())
    }

    fn roster<'a>(&'a self, deniable: Option<&'a DeniableState>) -> Result<Roster<'a>, GroupError> {
        Ok(Roster::new(self.state.live()?, deniable))
    }

    // ----- sending -------------------------------------------------------------

    /// Encrypt an application message with `aad` as its authenticated data.
    pub(crate) fn encrypt<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        me: Me<'_>,
        aad: Vec<u8>,
        content: &[u8],
    ) -> Result<Vec<u8>, GroupError> {
        let group = self.state.live_mut()?;
        group.set_aad(aad);
        let out = group
            .create_message(provider, &signer(&self.ephemeral, me), content)
            .map_err(GroupError::mls)?;
        serialize(&out)
    }

    /// Send `kind` (see [`IntentKind::is_proposable`]) as a standalone
    /// proposal, after checking it exactly as a commit carrying it will be
    /// checked. [`Built::Done`] if there is nothing left to change.
    pub(crate) fn propose<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        me: Me<'_>,
        kind: &IntentKind,
        members: &BTreeMap<InboxId, BTreeSet<InstallationId>>,
    ) -> Result<Built, GroupError> {
        let signer = signer(&self.ephemeral, me);
        let (message, reference) = if *kind == IntentKind::UpdateKeys {
            self.state
                .live_mut()?
                .propose_self_update(provider, &signer, LeafNodeParameters::default())
                .map_err(GroupError::mls)?
        } else {
            let metadata = changed_metadata(&self.metadata, members, kind)?;
            if metadata == self.metadata {
                // Another member's commit already made this change.
                return Ok(Built::Done);
            }
            metadata.check_limits()?;
            check_own_metadata_change(&self.metadata, &metadata, me.inbox)?;
            self.state
                .live_mut()?
                .propose_group_context_extensions(provider, metadata.to_extensions(), &signer)
                .map_err(GroupError::mls)?
        };
        Ok(Built::Proposed {
            message: serialize(&message)?,
            reference: reference.as_slice().to_vec(),
        })
    }

    /// Build what `kind` comes to, planned at `now_ms` with the identity
    /// logs: stage its commit (checked exactly as every receiver will check
    /// it, so that a forbidden change fails here instead of forking us off
    /// the group), or make the proposal to leave.
    pub(crate) fn build<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        me: Me<'_>,
        identities: &IdentityCache,
        deniable: Option<&DeniableState>,
        kind: &IntentKind,
        now_ms: u64,
    ) -> Result<Built, GroupError> {
        let view = GroupView {
            mls: self.state.live()?,
            roster: self.roster(deniable)?,
            metadata: &self.metadata,
        };
        let plan = match plan_commit(provider.crypto(), view, me.inbox, identities, kind, now_ms)? {
            Plan::Done => return Ok(Built::Done),
            Plan::Leave => {
                let proposal = self
                    .state
                    .live_mut()?
                    .leave_group(provider, &signer(&self.ephemeral, me))
                    .map_err(GroupError::mls)?;
                return Ok(Built::Leave(serialize(&proposal)?));
            }
            Plan::Commit(plan) => *plan,
        };
        let welcome_to = plan.welcome_to.clone();
        let welcome_refs = plan
            .adds
            .iter()
            .map(|kp| {
                kp.hash_ref(provider.crypto())
                    .map(|r| r.as_slice().to_vec())
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(GroupError::mls)?;
        let riders = plan.riders;
        let mut builder = self
            .state
            .live_mut()?
            .commit_builder()
            .consume_proposal_store(true)
            .force_self_update(plan.force_update)
            .propose_adds(plan.adds)
            .propose_removals(plan.removals);
        if plan.metadata_changed {
            builder = builder
                .propose_group_context_extensions(plan.metadata.to_extensions())
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
        let group = self.state.live()?;
        let verdict = match group.pending_commit() {
            Some(staged) => self.validate(staged, group.own_leaf_index(), identities, deniable),
            None => Err(Verdict::Reject("the staged commit vanished".into())),
        };
        if let Err(verdict) = verdict {
            self.clear_pending(provider)?;
            return Err(match verdict {
                Verdict::NeedIdentities(need) => GroupError::NeedIdentities(need),
                Verdict::Disputed(inboxes) => GroupError::IdentitiesDisputed(inboxes),
                Verdict::Reject(reason) => GroupError::NotPermitted(reason),
            });
        }
        Ok(Built::Commit {
            commit: serialize(bundle.commit())?,
            welcome: bundle.to_welcome_msg().map(|w| serialize(&w)).transpose()?,
            welcome_to,
            welcome_refs,
        })
    }

    /// Drop the staged commit of ours.
    pub(crate) fn clear_pending<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
    ) -> Result<(), GroupError> {
        self.state
            .live_mut()?
            .clear_pending_commit(provider.storage())
            .map_err(GroupError::mls)
    }

    // ----- receiving -----------------------------------------------------------

    /// Process a message of the current epoch (or an application message
    /// of a past one) and check what it carries. A valid proposal is stored
    /// for the next commit; a valid commit is returned for merging.
    pub(crate) fn receive<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        message: ProtocolMessage,
        identities: &IdentityCache,
        deniable: Option<&DeniableState>,
    ) -> Result<Received, GroupError> {
        let processed = match self.state.live_mut()?.process_message(provider, message) {
            Ok(p) => p,
            Err(ProcessMessageError::InvalidCommit(StageCommitError::MissingProposal)) => {
                return Ok(Received::MissingProposal);
            }
            Err(e) => return Ok(Received::Unreadable(format!("cannot process: {e}"))),
        };
        let sender = processed.sender().clone();
        let credential = processed.credential().clone();
        let refused = |commit, reason: &str| Received::Refused {
            commit,
            reason: reason.into(),
        };
        Ok(match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => match sender {
                Sender::Member(leaf) => Received::Application {
                    leaf,
                    credential,
                    plaintext: app.into_bytes(),
                },
                _ => refused(false, "an application message from a non-member"),
            },
            ProcessedMessageContent::ProposalMessage(proposal) => {
                match check_proposal(self.state.live()?, &self.metadata, &proposal) {
                    Ok(leaving) => {
                        self.state
                            .live_mut()?
                            .store_pending_proposal(provider.storage(), *proposal)
                            .map_err(GroupError::mls)?;
                        Received::Proposal { leaving }
                    }
                    Err(reason) => refused(false, &reason),
                }
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let Sender::Member(committer) = sender else {
                    return Ok(refused(false, "a commit from a non-member"));
                };
                match self.validate(&staged, committer, identities, deniable) {
                    Ok(summary) => Received::Commit(Box::new(ValidCommit {
                        staged: *staged,
                        summary,
                    })),
                    Err(Verdict::NeedIdentities(need)) => {
                        return Err(GroupError::NeedIdentities(need));
                    }
                    Err(Verdict::Disputed(inboxes)) => {
                        return Err(GroupError::IdentitiesDisputed(inboxes));
                    }
                    Err(Verdict::Reject(reason)) => refused(true, &reason),
                }
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                refused(false, "external join proposals are not used by Kith")
            }
            _ => Received::Own,
        })
    }

    /// Validate a staged commit by leaf `committer`, as every member will.
    fn validate(
        &self,
        staged: &StagedCommit,
        committer: LeafNodeIndex,
        identities: &IdentityCache,
        deniable: Option<&DeniableState>,
    ) -> Result<CommitSummary, Verdict> {
        let group = self
            .state
            .live()
            .map_err(|e| Verdict::Reject(e.to_string()))?;
        validate_staged(
            group,
            &self.metadata,
            deniable,
            staged,
            committer,
            identities,
        )
    }

    /// Merge another member's validated commit.
    pub(crate) fn merge<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        commit: ValidCommit,
    ) -> Result<Merge, GroupError> {
        let ValidCommit { staged, summary } = commit;
        let merge = Merge {
            update: group_update(&self.metadata, &summary),
            left_auth: self.auth_digest(),
            left_claim_key: self.claim_key(provider)?,
            included: proposal_refs(staged.queued_proposals()),
            self_removed: staged.self_removed(),
            summary,
        };
        let group = self.state.live_mut()?;
        group
            .merge_staged_commit(provider, staged)
            .map_err(GroupError::mls)?;
        if merge.summary.changed_leaves() {
            fit_past_epochs(provider, group)?;
        }
        self.metadata = merge.summary.metadata.clone();
        Ok(merge)
    }

    /// Check our own pending commit as a receiver would, now that it came
    /// back first in its epoch: `Ok(Err(reason))` if it breaks a rule
    /// (every other member rejects it too; it is cleared and the epoch
    /// stays).
    pub(crate) fn check_own<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        identities: &IdentityCache,
        deniable: Option<&DeniableState>,
    ) -> Result<Result<CommitSummary, String>, GroupError> {
        let group = self.state.live()?;
        let verdict = match group.pending_commit() {
            Some(staged) => self.validate(staged, group.own_leaf_index(), identities, deniable),
            None => Err(Verdict::Reject("no pending commit".into())),
        };
        match verdict {
            Ok(summary) => Ok(Ok(summary)),
            Err(Verdict::NeedIdentities(need)) => Err(GroupError::NeedIdentities(need)),
            Err(Verdict::Disputed(inboxes)) => Err(GroupError::IdentitiesDisputed(inboxes)),
            Err(Verdict::Reject(reason)) => {
                self.clear_pending(provider)?;
                Ok(Err(reason))
            }
        }
    }

    /// Merge our own pending commit, checked by [`Self::check_own`].
    pub(crate) fn merge_own<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        summary: CommitSummary,
    ) -> Result<Merge, GroupError> {
        let merge = Merge {
            left_auth: self.auth_digest(),
            left_claim_key: self.claim_key(provider)?,
            included: self
                .state
                .live()?
                .pending_commit()
                .map(|staged| proposal_refs(staged.queued_proposals()))
                .unwrap_or_default(),
            self_removed: false,
            update: group_update(&self.metadata, &summary),
            summary,
        };
        let group = self.state.live_mut()?;
        group
            .merge_pending_commit(provider)
            .map_err(GroupError::mls)?;
        if merge.summary.changed_leaves() {
            fit_past_epochs(provider, group)?;
        }
        self.metadata = merge.summary.metadata.clone();
        Ok(merge)
    }

    // ----- secrets and snapshots -----------------------------------------------

    /// The current epoch's binding exporter secret (deniable DMs).
    pub(crate) fn binding_exporter<P: OpenMlsProvider>(
        &self,
        provider: &P,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, GroupError> {
        self.state
            .live()?
            .export_secret(
                provider.crypto(),
                BINDING_EXPORTER_LABEL,
                &[],
                BINDING_EXPORTER_LEN,
            )
            .map(zeroize::Zeroizing::new)
            .map_err(GroupError::mls)
    }

    /// The current epoch's claim key: the exporter secret that MACs claims
    /// about this epoch's commit in other members' authenticated data
    /// ([`BranchClaim`](super::aad::BranchClaim)). Only members of the epoch
    /// can derive it.
    pub(crate) fn claim_key<P: OpenMlsProvider>(
        &self,
        provider: &P,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, GroupError> {
        let secret = zeroize::Zeroizing::new(
            self.state
                .live()?
                .export_secret(provider.crypto(), CLAIM_EXPORTER_LABEL, &[], 32)
                .map_err(GroupError::mls)?,
        );
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        if secret.len() != 32 {
            return Err(GroupError::Mls(
                "the exporter gave a claim key of the wrong length".into(),
            ));
        }
        key.copy_from_slice(&secret);
        Ok(key)
    }

    /// Capture everything stored for the group (including a pending commit
    /// and the epoch's key pairs), to restore later. The bytes hold
    /// secrets.
    pub(crate) fn capture<S: GroupSnapshots + ?Sized>(
        &self,
        kv: &S,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, GroupError> {
        kv.snapshot_group(self.group_id())
            .map_err(GroupError::store)
    }

    /// Put the group's stored state back to `state` and load it; returns
    /// the state it replaced (group and metadata), which
    /// [`Self::put_back`] can reinstate.
    pub(crate) fn restore<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        state: &[u8],
    ) -> Result<(MlsGroup, GroupMetadata), GroupError> {
        let group_id = self.group_id().to_vec();
        kv.restore_group(&group_id, state)
            .map_err(GroupError::store)?;
        let restored = MlsGroup::load(provider.storage(), &GroupId::from_slice(&group_id))
            .map_err(GroupError::mls)?
            .ok_or_else(|| GroupError::Corrupt("the restored group does not load".into()))?;
        // Commits that change neither metadata nor membership (key updates)
        // leave the extensions as they were: decoding them again is wasted.
        let current = self.state.live_mut()?;
        let metadata = if restored.extensions() == current.extensions() {
            self.metadata.clone()
        } else {
            GroupMetadata::from_extensions(restored.extensions())?
        };
        Ok((
            std::mem::replace(current, restored),
            std::mem::replace(&mut self.metadata, metadata),
        ))
    }

    /// Reinstate a state [`Self::restore`] replaced (the store holds it
    /// again).
    pub(crate) fn put_back(&mut self, (group, metadata): (MlsGroup, GroupMetadata)) {
        self.state = State::Live(Box::new(group));
        self.metadata = metadata;
    }
}

/// Test-only hooks, apart from the rest so that the file's size check
/// (`engine/tests/layers.rs`) counts every line of real code.
#[cfg(any(test, feature = "test-suite"))]
impl Mls {
    /// A commit that adds `adds` (key packages as the node hands them out)
    /// and sets the group context to `metadata`, unchecked, and the pending
    /// state discarded: what a member's altered client could publish. For
    /// tests of what every receiver refuses.
    pub(crate) fn forged_metadata_commit<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        me: Me<'_>,
        metadata: &GroupMetadata,
        adds: &[Vec<u8>],
    ) -> Result<Vec<u8>, GroupError> {
        use openmls::prelude::{
            MlsMessageBodyIn, MlsMessageIn, ProtocolVersion, tls_codec::Deserialize as _,
        };
        let mut key_packages = Vec::new();
        for bytes in adds {
            let message = MlsMessageIn::tls_deserialize_exact(bytes.as_slice())
                .map_err(|e| GroupError::InvalidInput(e.to_string()))?;
            let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
                return Err(GroupError::InvalidInput("not a key package".into()));
            };
            let key_package = key_package
                .validate(provider.crypto(), ProtocolVersion::Mls10)
                .map_err(|e| GroupError::InvalidInput(e.to_string()))?;
            key_packages.push(key_package);
        }
        let bundle = self
            .state
            .live_mut()?
            .commit_builder()
            .propose_adds(key_packages)
            .propose_group_context_extensions(metadata.to_extensions())
            .map_err(GroupError::mls)?
            .load_psks(provider.storage())
            .map_err(GroupError::mls)?
            .build(
                provider.rand(),
                provider.crypto(),
                &signer(&self.ephemeral, me),
                |_| true,
            )
            .map_err(|e| GroupError::InvalidInput(format!("cannot build the commit: {e:?}")))?
            .stage_commit(provider)
            .map_err(GroupError::mls)?;
        let commit = serialize(bundle.commit())?;
        self.clear_pending(provider)?;
        Ok(commit)
    }

    /// How many past epochs' message secrets OpenMLS keeps for the group.
    pub(crate) fn past_epochs_kept(&self) -> Option<usize> {
        use openmls::group::PastEpochDeletionPolicy as Policy;
        match self.state.live().ok()?.past_epoch_deletion_policy() {
            Policy::MaxEpochs(epochs) => Some(*epochs),
            Policy::KeepAll => None,
        }
    }
}
