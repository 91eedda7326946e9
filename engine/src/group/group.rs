//! [`Group`]: one conversation's MLS group, driven sans-IO: the API through
//! which the driver makes every call. It holds the group's parts and
//! coordinates them; every OpenMLS call goes through its MLS state.
//!
//! The driver (a `GroupActor`) calls, inside one storage step each:
//!
//! 1. inputs: [`Group::handle_envelope`] for every envelope of the group
//!    topic, in the node's order;
//! 2. commands: [`Group::send_message`], [`Group::queue_intent`];
//! 3. [`Group::advance`], which settles what is due, sends what waited, and
//!    turns the oldest waiting intent into a commit when none is pending;
//!
//! then commits the step and pulls the outputs: [`Group::poll_outbound`]
//! (publish each, then [`Group::ack_outbound`]) and [`Group::poll_event`].
//! If any call fails, the driver discards the step and reloads the group
//! with [`Group::load`]; nothing of the failed call remains.
//!
//! An envelope goes through an [`Input`], which routes it by what it is
//! (a rejoin request, an own commit, a commit for a past epoch that may
//! call for a rollback, one of a future epoch to hold, anything else for
//! the MLS state to process) and replays after a rollback. A command
//! becomes an intent in the outbox; [`Group::advance`] builds the waiting
//! intents (planned by `commit_plan`, staged and checked by the MLS state)
//! and publishes them. See the module map in `group/mod.rs`.
//!
//! Commit flow (DESIGN.md section 7): a commit is staged as the OpenMLS
//! pending commit, which does not move the epoch, and published, with the
//! hash of its bytes kept. If it comes back as the first commit of its
//! epoch it is merged; if another commit comes first, that one is validated
//! and merged (which clears ours) and the intent is regenerated on the new
//! epoch. Welcomes go out only after their commit settled.

use std::collections::{BTreeMap, BTreeSet};

use openmls::prelude::Credential;
use openmls_traits::{OpenMlsProvider, random::OpenMlsRand as _};
use prost::Message as _;

use super::{
    bindings::{Bindings, DmVerification},
    config::GroupConfig,
    content::{CONTENT_TYPE_BINDING, CONTENT_TYPE_EPOCH_DIGEST, Content, Outgoing, WelcomePayload},
    conversation::{self, NewGroup, new_metadata},
    error::GroupError,
    events::GroupEvent,
    forks::ForkMonitor,
    history::RewindHistory,
    identities::IdentityCache,
    input::Input,
    intent::{Intent, IntentKind},
    metadata::GroupMetadata,
    mls::{Built, CreatorLeaf, Mls},
    outbox::Outbox,
    parts::Parts,
    records::{ConversationId, CoreState, DeniableState, Fork, Outbound, RecordParts, RewindStats},
    roster::ReconcilePlan,
    signer::Me,
    store::{ClientStore, GroupSnapshots, KvStore},
    validate, welcome as continuity,
};
use crate::{
    delivery::{Envelope, Topic},
    identity::{EphemeralKey, InboxId, InstallationId},
};

/// How often every member publishes an epoch digest, even without
/// commits of its own (see [`CONTENT_TYPE_EPOCH_DIGEST`]).
pub const DIGEST_INTERVAL_MS: u64 = 60 * 60 * 1000;

/// One conversation's MLS group and its engine state. See the module docs.
#[derive(Debug)]
pub struct Group {
    parts: Parts,
    config: GroupConfig,
}

/// The topic of group `group_id`.
fn topic(group_id: &[u8]) -> Topic {
    Topic::Group(group_id.to_vec())
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
        let group_id = provider.rand().random_vec(16).map_err(GroupError::mls)?;
        Self::create_with_id(provider, kv, me, identities, new, group_id)
    }

    fn create_with_id<P: OpenMlsProvider, S: KvStore + ?Sized>(
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        new: NewGroup,
        group_id: Vec<u8>,
    ) -> Result<Self, GroupError> {
        let metadata = new_metadata(&new, me.inbox, identities)?;
        let rand = provider.rand();
        let mut deniable = None;
        let leaf = if metadata.immutable.deniable() {
            let seed = zeroize::Zeroizing::new(rand.random_vec(32).map_err(GroupError::mls)?);
            let key = EphemeralKey::from_secret_bytes(&seed).map_err(GroupError::mls)?;
            ClientStore(kv).put_ephemeral_key(&key)?;
            deniable = Some(DeniableState::new(key.public_key(), me.inbox, me.keys.id()));
            let pseudonym = rand.random_array().map_err(GroupError::mls)?;
            CreatorLeaf::Pseudonym {
                pseudonym,
                key: Box::new(key),
            }
        } else {
            CreatorLeaf::Installation
        };
        let conversation = conversation::conversation_id(&metadata, &group_id);
        let mls = Mls::create(provider, me, &group_id, metadata, leaf, new.now_ms)?;
        let parts = RecordParts {
            core: CoreState {
                conversation_id: Some(conversation),
                // The hourly epoch digest counts from creation.
                last_digest_ms: new.now_ms,
                own_installation: Some(me.keys.id()),
                ..CoreState::default()
            },
            deniable,
            ..RecordParts::default()
        };
        let group = Self::assemble(mls, parts, None);
        group.register_conversation(kv, me, new.now_ms)?;
        group.parts.keep_exporter(provider, kv)?;
        group.parts.save(kv)?;
        Ok(group)
    }

    /// Load a stored group; `None` if there is none with this id.
    pub fn load<P: OpenMlsProvider, S: KvStore + ?Sized>(
        provider: &P,
        kv: &S,
        group_id: &[u8],
    ) -> Result<Option<Self>, GroupError> {
        let store = ClientStore(kv);
        let mut mls = match Mls::load(provider, group_id)? {
            Some(mls) => mls,
            None => match store.retired_group(group_id)? {
                Some(retired) => Mls::retired(retired)?,
                None => return Ok(None),
            },
        };
        let parts = store.group_record(group_id)?.into_parts();
        if let Some(state) = &parts.deniable {
            mls.set_leaf_key(store.ephemeral_key(&state.own_leaf_key)?.ok_or_else(|| {
                GroupError::Corrupt("a deniable DM whose leaf key is not kept".into())
            })?);
        }
        let outbox = Outbox::load(kv, group_id, parts.outbox)?;
        Ok(Some(Self::assemble(mls, parts, Some(outbox))))
    }

    /// Join a group from a Welcome payload. Every member's leaf is checked
    /// against the identity logs at the sequence numbers the group records.
    /// Returns `Ok(None)` if this installation already has the group.
    ///
    /// A Welcome for a group this installation is a live member of is kept
    /// for later, unopened (a re-add's commit may remove the leaf in use).
    /// One for a group it is on a fork of (or was removed from) is taken
    /// only if it continues that group (see `check_continuity`); any other
    /// is refused with [`GroupError::NotPermitted`], and the state held is
    /// untouched. If taken, the old state is replaced: its MLS state and
    /// everything kept of its branch are dropped first, its messages stay.
    ///
    /// OpenMLS spends the key package a Welcome is for when it opens it,
    /// before anything in it can be checked: run the join in a storage
    /// step and discard the step on an error, so that a refused Welcome
    /// leaves the store as it was (the actors do).
    pub fn join<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Option<Self>, GroupError> {
        Self::join_checked(provider, kv, me, identities, payload, now_ms, true)
    }

    fn join_checked<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        payload: &[u8],
        now_ms: u64,
        check_dm: bool,
    ) -> Result<Option<Self>, GroupError> {
        let welcome = WelcomePayload::from_bytes(payload)
            .map_err(|e| GroupError::InvalidInput(e.to_string()))?;
        let group_id = welcome.group_id.as_slice();
        let old = Self::load(provider, kv, group_id)?;
        if let Some(old) = &old
            && !old.needs_rejoin()
        {
            // Kept unopened: opening a Welcome spends the key package it is
            // for, and it is only needed once a re-add removes the leaf in
            // use. It is checked like any other when it is used.
            let starts = welcome
                .branch
                .first()
                .map_or(0, |(left, ..)| left.saturating_add(1));
            old.parts
                .forks
                .keep_welcome(kv, old.epoch(), starts, payload)?;
            return Ok(None);
        }
        let staged = Mls::stage_join(provider, &welcome.welcome, group_id, identities)?;
        if check_dm {
            continuity::check_dm_join(kv, &staged, me.inbox, group_id)?;
        }
        let mut replaced = None;
        let mut healed = false;
        if let Some(old) = old {
            healed = old.parts.forks.is_forked();
            continuity::check_continuity(
                &old.parts.mls,
                old.parts.forks.parted_at(),
                &old.parts.core.removed_installations,
                &staged,
            )?;
            replaced = Some(old.replace(kv)?);
        }
        let welcomed_by = staged.sender_installation();
        let mut mls = Mls::finish_join(provider, staged)?;
        let epoch = mls.epoch();
        let store = ClientStore(kv);
        store.put_cursor(&topic(group_id), &welcome.cursor)?;
        let mut parts = match &replaced {
            Some((parts, _, _)) => {
                ForkMonitor::forget(kv, group_id, epoch)?;
                parts.clone()
            }
            None => RecordParts {
                core: CoreState {
                    conversation_id: Some(conversation::conversation_id(mls.metadata(), group_id)),
                    ..CoreState::default()
                },
                ..RecordParts::default()
            },
        };
        // Healed from a fork, it was in the others' tree all along (its
        // re-add replaced its own leaf), for the rejoin requests it answers.
        parts.core.member_since_epoch = healed.then(|| parts.core.member_since());
        parts.core.joined_at_epoch = epoch;
        parts.core.welcomed_by = welcomed_by;
        parts.core.last_digest_ms = now_ms;
        parts.core.own_installation = Some(me.keys.id());
        parts.deniable = None;
        if mls.metadata().immutable.deniable() {
            let (state, key) = Bindings::joined(kv, mls.own_leaf_key(), me)?;
            parts.deniable = Some(state);
            mls.set_leaf_key(key);
        }
        let mut joined = Self::assemble(mls, parts, None);
        if let Some((_, forked_at, _)) = replaced {
            joined
                .parts
                .events
                .push_back(GroupEvent::Rejoined { epoch, forked_at });
        }
        // The branch it joins, as its adder tells it (unauthenticated, and
        // with no claim keys: it names commits this installation did not
        // see). It lets a rejoin request name a commit the joiner's adder
        // applied; it is no evidence of anything.
        for (left, auth, key) in welcome.branch.iter().filter(|(left, ..)| *left < epoch) {
            joined
                .parts
                .history
                .record_commit(kv, *left, *key, *auth, None)?;
        }
        joined.register_conversation(kv, me, now_ms)?;
        joined.parts.keep_exporter(provider, kv)?;
        joined.parts.save(kv)?;
        if let Some((_, _, Some(old))) = replaced
            && joined
                .parts
                .bindings
                .as_ref()
                .map(|b| b.state().own_leaf_key)
                != Some(old)
        {
            // The old state's leaf key signs nothing any more (unless a
            // last-resort package made it the key of other DMs too).
            store.retire_ephemeral_key(&old)?;
        }
        Ok(Some(joined))
    }

    /// Join a group again from a Welcome kept by [`Group::join`] while this
    /// installation was still a member, once it needs one (it was removed,
    /// or found itself on a fork). Drivers call it after handling envelopes;
    /// it does nothing while the group does not need a rejoin. Kept
    /// Welcomes are tried newest first; one that cannot be used is dropped.
    /// Returns the group joined again, whose events include
    /// [`GroupEvent::Rejoined`].
    pub fn rejoin_deferred<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        group_id: &[u8],
        now_ms: u64,
    ) -> Result<Option<Self>, GroupError> {
        if ForkMonitor::kept_welcomes(kv, group_id)?.is_empty() {
            return Ok(None);
        }
        let Some(current) = Self::load(provider, kv, group_id)? else {
            return Ok(None);
        };
        if !current.needs_rejoin() {
            return Ok(None);
        }
        ForkMonitor::rejoin_from_kept(
            kv,
            group_id,
            current.parts.core.joined_at_epoch,
            |payload| Self::join(provider, kv, me, identities, payload, now_ms),
        )
    }

    fn assemble(mls: Mls, record: RecordParts, outbox: Option<Outbox>) -> Self {
        Self {
            parts: Parts::new(mls, record, outbox),
            config: GroupConfig::default(),
        }
    }

    /// Drop this state of a group that a Welcome replaces (it is forked or
    /// was removed): everything kept of its branch and its MLS state.
    /// Returned: what carries over (the record less the fork), the epoch it
    /// was forked at, and its deniable leaf key.
    fn replace<S: GroupSnapshots + ?Sized>(
        self,
        kv: &S,
    ) -> Result<(RecordParts, u64, Option<[u8; 32]>), GroupError> {
        let forked_at = self.parts.forks.fork().map_or(self.epoch(), |f| f.epoch);
        let leaf_key = self.parts.bindings.as_ref().map(|b| b.state().own_leaf_key);
        let mut parts = self.parts.record();
        parts.forks = Default::default();
        let group_id = self.group_id();
        Outbox::forget_branch(kv, group_id)?;
        RewindHistory::forget(kv, group_id)?;
        Bindings::forget(kv, group_id)?;
        kv.delete_group(group_id).map_err(GroupError::store)?;
        ClientStore(kv).remove_retired_group(group_id)?;
        Ok((parts, forked_at, leaf_key))
    }

    fn register_conversation<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        me: Me<'_>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let dm = self
            .dm_peer(me.inbox)
            .zip(self.metadata().immutable.dm_mode);
        conversation::register_group(kv, &self.conversation_id(), dm, self.group_id(), now_ms)
    }

    // ----- getters -------------------------------------------------------

    /// The MLS group id.
    pub fn group_id(&self) -> &[u8] {
        self.parts.mls.group_id()
    }

    /// The conversation this group belongs to.
    pub fn conversation_id(&self) -> ConversationId {
        self.parts
            .core
            .conversation_id
            .clone()
            .unwrap_or_else(|| ConversationId(self.group_id().to_vec()))
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.parts.mls.epoch()
    }

    /// The metadata of the current epoch.
    pub fn metadata(&self) -> &GroupMetadata {
        self.parts.mls.metadata()
    }

    /// Whether this installation is still a member.
    pub fn is_active(&self) -> bool {
        self.parts.mls.is_active()
    }

    /// Whether this installation was removed and the group's secrets are
    /// deleted (its removal settled and its grace,
    /// [`GroupConfig::retire_grace_ms`], passed): what is left is the
    /// conversation's public record, read-only.
    pub fn is_retired(&self) -> bool {
        self.parts.mls.is_retired()
    }

    /// Whether a commit of ours is staged and waiting.
    pub fn has_pending_commit(&self) -> bool {
        self.parts.mls.has_pending_commit()
    }

    /// The members' installations, by inbox.
    pub fn members(&self) -> BTreeMap<InboxId, BTreeSet<InstallationId>> {
        self.parts.members()
    }

    /// Each leaf's credential and signature key, as the tree holds them:
    /// all that the tree (and a leaked copy of it) says of who is in the
    /// group. In a deniable DM, pseudonyms and per-conversation keys.
    pub fn leaves(&self) -> Vec<(Credential, Vec<u8>)> {
        self.parts.mls.leaves()
    }

    /// For a DM, the inbox that is not `me`.
    pub fn dm_peer(&self, me: InboxId) -> Option<InboxId> {
        validate::dm_peer(self.metadata(), me)
    }

    /// The epoch authenticator, equal on every member in the same epoch.
    pub fn epoch_authenticator(&self) -> Vec<u8> {
        self.parts.mls.epoch_authenticator()
    }

    /// A short digest of the epoch authenticator: what tells two branches'
    /// epochs of the same number apart in message AAD and in the stored
    /// commit records ([`ClientStore::commit_record`]).
    pub fn epoch_digest(&self) -> [u8; 8] {
        self.parts.mls.auth_digest()
    }

    /// This installation's leaf index in the group's tree.
    pub fn own_leaf_index(&self) -> u32 {
        self.parts.mls.own_leaf_index()
    }

    /// When installations were last reconciled, ms since the Unix epoch.
    pub fn last_reconciled_ms(&self) -> u64 {
        self.parts.core.last_reconciled_ms
    }

    /// Installations the identity logs say should be added (per inbox,
    /// with the log sequence read) and leaves whose installation is no
    /// longer active.
    ///
    /// Empty for a deniable DM: its leaves are added from deniable key
    /// packages ([`IntentKind::AddDeniable`]), not from the logs.
    pub fn reconcile_plan(&self, identities: &IdentityCache) -> ReconcilePlan {
        self.parts.roster().map_or_else(
            |_| ReconcilePlan::default(),
            |roster| roster.reconcile_plan(self.metadata(), identities),
        )
    }

    /// The configuration in force.
    pub fn config(&self) -> GroupConfig {
        self.config
    }

    /// Set the configuration (from the node's settle window and the
    /// client's settings). Not stored: the driver sets it whenever it loads
    /// the group.
    pub fn set_config(&mut self, config: GroupConfig) {
        self.config = config;
        self.parts.history.set_policy(config.rewind);
        self.parts.forks.set_retry_ms(config.rejoin_retry_ms);
    }

    /// Rollback metrics.
    pub fn rewind_stats(&self) -> RewindStats {
        self.parts.history.stats()
    }

    /// Whether this installation found itself on a fork, and why.
    pub fn fork(&self) -> Option<&Fork> {
        self.parts.forks.fork()
    }

    /// When the oldest retained snapshot settles by time (so that the
    /// driver can wake up then), if any is retained.
    pub fn next_settle_ms<S: KvStore + ?Sized>(&self, kv: &S) -> Result<Option<u64>, GroupError> {
        self.parts.history.next_settle_ms(kv)
    }

    /// Whether this installation needs a Welcome to take part again: it is
    /// on a fork, or was removed. Its state is dropped when it joins again
    /// (from a new Welcome, or from a kept one: [`Group::rejoin_deferred`]).
    pub fn needs_rejoin(&self) -> bool {
        self.parts.forks.is_forked() || !self.parts.mls.is_active()
    }

    /// Whether this group is a deniable DM.
    pub fn is_deniable(&self) -> bool {
        self.metadata().immutable.deniable()
    }

    /// Where a deniable DM stands; `None` for groups and non-repudiable
    /// DMs, whose leaves are checked against the identity logs instead.
    pub fn verification(&self) -> Option<DmVerification> {
        Some(
            self.parts
                .bindings
                .as_ref()?
                .verification(self.parts.mls.group().ok()?.members()),
        )
    }

    // ----- outputs -------------------------------------------------------

    /// The next payload to publish (on each of its topics). It stays in the
    /// store's outbox until [`Group::ack_outbound`].
    pub fn poll_outbound(&mut self) -> Option<Outbound> {
        self.parts.outbox.poll()
    }

    /// The payloads waiting to be published, without taking them.
    pub fn pending_outbound(&self) -> impl Iterator<Item = &Outbound> {
        self.parts.outbox.pending()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GroupEvent> {
        self.parts.events.pop_front()
    }

    /// Record that `item` was published.
    pub fn ack_outbound<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        item: &Outbound,
    ) -> Result<(), GroupError> {
        let conversation = self.conversation_id();
        self.parts.outbox.ack(kv, item, &conversation)
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
        message: Outgoing<'_>,
        now_ms: u64,
    ) -> Result<[u8; 32], GroupError> {
        if !self.parts.mls.is_active() {
            return Err(GroupError::NotMember);
        }
        message.check().map_err(GroupError::InvalidInput)?;
        let (content, id) =
            Content::fresh(provider.rand(), me.inbox, self.group_id(), message, now_ms)?;
        let encoded = content.encode_to_vec();
        // A message that cannot go out now waits in the history, and
        // `advance` sends it (with this id) once it can.
        let deferred = self.parts.must_hold_messages();
        let out = match deferred {
            true => None,
            false => Some(self.encrypt(kv, provider, me, &encoded)?),
        };
        let (epoch, auth) = (self.epoch(), self.parts.mls.auth_digest());
        self.parts
            .history
            .track_send(kv, id, encoded, epoch, auth, deferred)?;
        let message =
            conversation::own_message(self.conversation_id(), self.group_id(), me, id, content);
        ClientStore(kv).insert_message(&message)?;
        if let Some(out) = out {
            let topics = [topic(self.group_id())];
            self.parts.outbox.push(kv, &topics, out, Some(id))?;
        }
        self.parts.events.push_back(GroupEvent::Message(message));
        self.parts.save(kv)?;
        Ok(id)
    }

    /// Encrypt an application message (encoded [`Content`]) in the current
    /// epoch, with Kith's authenticated data: readable without the epoch
    /// secret, so that a member on another branch can tell which branch
    /// sorts first.
    fn encrypt<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        provider: &P,
        me: Me<'_>,
        content: &[u8],
    ) -> Result<Vec<u8>, GroupError> {
        let aad = self
            .parts
            .history
            .aad(kv, self.epoch(), self.parts.mls.auth_digest())?;
        self.parts.mls.encrypt(provider, me, aad.encode(), content)
    }

    /// Encrypt a control message of the engine's and queue it.
    fn send_control<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        provider: &P,
        me: Me<'_>,
        content_type: &str,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let message = Outgoing::new(content_type, &body);
        let (content, _) =
            Content::fresh(provider.rand(), me.inbox, self.group_id(), message, now_ms)?;
        let out = self.encrypt(kv, provider, me, &content.encode_to_vec())?;
        self.parts
            .outbox
            .push(kv, &[topic(self.group_id())], out, None)
    }

    /// Store an intent; [`Group::advance`] acts on it. Returns its id.
    pub fn queue_intent<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        kind: IntentKind,
    ) -> Result<u64, GroupError> {
        if !self.parts.mls.is_active() {
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
        let id = self.parts.outbox.queue(kv, kind)?;
        self.parts.save(kv)?;
        Ok(id)
    }

    /// Record that installations were reconciled at `now_ms`.
    pub fn mark_reconciled<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        self.parts.core.last_reconciled_ms = now_ms;
        self.parts.save(kv)
    }

    /// Settle what is due, re-send own messages whose epoch lost, and, if
    /// no commit of ours is pending, turn the oldest waiting intent into a
    /// published commit (or proposal). Intents that cannot be carried out
    /// fail with an event.
    ///
    /// Call it after reading the group topic up to the node's head: an
    /// epoch transition settles once `now_ms` is past its commit's time
    /// plus the settle window, on the ground that every envelope sorting
    /// before it has then been read. Once this installation's removal has
    /// settled and nothing of its own is left to go out, the group's
    /// secrets are deleted (the group stays, read-only, with its messages).
    pub fn advance<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        if self.parts.mls.is_retired() {
            return Ok(());
        }
        // Bindings first: held messages go out only after them.
        self.verify_bindings(kv, me, identities)?;
        self.send_binding(provider, kv, me, identities, now_ms)?;
        self.resend_lost(provider, kv, me, now_ms)?;
        self.parts.settle(kv, Some(now_ms), now_ms)?;
        if self.parts.forks.is_forked() {
            // Nothing built on a fork reaches the others: ask to be
            // re-added, and wait.
            if self.parts.bindings.is_none()
                && let Some(request) = self.parts.forks.rejoin_request(me.inbox, me.keys, now_ms)
            {
                self.parts
                    .outbox
                    .push(kv, &[topic(self.group_id())], request, None)?;
            }
        } else {
            self.publish_digest(provider, kv, me, now_ms)?;
            self.build_intents(provider, kv, me, identities, now_ms)?;
        }
        let grace_ms = self.config.retire_after_ms();
        self.parts.retire_if_done(kv, now_ms, grace_ms)?;
        self.parts.save(kv)
    }

    /// Act on the waiting intents, oldest first, until one is published as
    /// a commit (which must come back before the next) or none is left;
    /// then commit the proposal of ours that nobody committed in time.
    fn build_intents<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        while !self.parts.mls.has_pending_commit() {
            let intents = self.parts.outbox.intents(kv)?;
            let Some(intent) = intents.iter().find(|i| i.state.is_waiting()).cloned() else {
                return self.commit_due_proposal(provider, kv, me, identities, intents, now_ms);
            };
            if !self.parts.mls.is_active() {
                let reason = "this installation left the group".into();
                self.parts
                    .outbox
                    .fail(kv, intent.id, reason, false, &mut self.parts.events)?;
                continue;
            }
            let deniable = self.parts.bindings.as_ref().map(Bindings::state);
            let built = if self.config.proposals.propose_first && intent.kind.is_proposable() {
                let members = self.parts.members();
                self.parts.mls.propose(provider, me, &intent.kind, &members)
            } else {
                self.parts
                    .mls
                    .build(provider, me, identities, deniable, &intent.kind, now_ms)
            };
            if self.parts.built(kv, intent, built, None, now_ms)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Commit the proposal of ours that nobody committed within the
    /// policy's proposal wait (with whatever else is pending), under its
    /// intent. The others are carried out by the same commit.
    fn commit_due_proposal<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        intents: Vec<Intent>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let due = Outbox::due_proposal(intents, self.epoch(), now_ms, self.config.proposals);
        let Some((intent, reference)) = due else {
            return Ok(());
        };
        let deniable = self.parts.bindings.as_ref().map(Bindings::state);
        let kind = IntentKind::CommitPending;
        match self
            .parts
            .mls
            .build(provider, me, identities, deniable, &kind, now_ms)
        {
            // The proposal is not in the store any more: propose again.
            Ok(Built::Done | Built::Leave(_) | Built::Proposed { .. }) => {
                self.parts.outbox.regenerate(kv, intent)
            }
            built => self
                .parts
                .built(kv, intent, built, Some(reference), now_ms)
                .map(|_| ()),
        }
    }

    // ----- inputs --------------------------------------------------------

    /// Process one envelope of the group topic, in arrival order. Envelopes
    /// the cursor has passed are ignored; bad envelopes from peers become
    /// events, never errors. Errors are ours (or
    /// [`GroupError::NeedIdentities`]).
    ///
    /// A commit that sorts before the one applied for its epoch rolls the
    /// group back and replays (see the rewind history), which is why the
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
        let topic = topic(self.group_id());
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
        // Without its secrets, a retired group can read nothing.
        if !self.parts.mls.is_retired() {
            let entry = self.parts.history.arrive(envelope);
            Input::new(&mut self.parts, provider, kv, identities, now_ms).run(entry)?;
        }
        cursor.advance(envelope);
        store.put_cursor(&topic, &cursor)?;
        self.parts.save(kv)
    }

    /// Give up on `envelope` for good: move the topic's cursor past it and
    /// report [`GroupEvent::EnvelopeSkipped`] with `reason`. Drivers call it
    /// when [`Group::handle_envelope`] keeps failing on one envelope for a
    /// reason that will not go away (a commit whose membership the identity
    /// logs never reach, say), so that one bad envelope cannot stop the
    /// group from reading the ones after it. The group's state is not
    /// touched otherwise.
    ///
    /// # Errors
    /// A store error; an envelope of another topic.
    pub fn skip_envelope<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        envelope: &Envelope,
        reason: String,
    ) -> Result<(), GroupError> {
        self.parts.skip_envelope(kv, envelope, reason)
    }

    /// Re-send the own messages flagged for it (their epoch lost, or they
    /// waited), in the current epoch and in the order they were written.
    fn resend_lost<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        // On a fork, sent now, it would stay on the fork. A removed member's
        // store may keep proposals: it fails the messages instead.
        let active = self.parts.mls.is_active();
        if self.parts.forks.is_forked() || (active && self.parts.must_hold_messages()) {
            return Ok(());
        }
        let conversation = self.conversation_id();
        for send in self.parts.history.to_resend(kv)? {
            if !active {
                self.parts.history.forget_send(kv, &send.message_id)?;
                let reason = "sent in an epoch that lost, after which this installation was no \
                              longer a member";
                conversation::mark_failed(
                    kv,
                    &conversation,
                    &send.message_id,
                    reason,
                    &mut self.parts.events,
                )?;
                continue;
            }
            let out = self.encrypt(kv, provider, me, &send.content)?;
            let topics = [topic(self.group_id())];
            self.parts
                .outbox
                .push(kv, &topics, out, Some(send.message_id))?;
            // Its place is when it went out: a fork found later fails what
            // was sent on it by that time.
            ClientStore(kv).restamp_message(&conversation, &send.message_id, now_ms)?;
            let (epoch, auth) = (self.epoch(), self.parts.mls.auth_digest());
            self.parts.history.resent(kv, send, epoch, auth)?;
        }
        Ok(())
    }

    /// Publish an epoch digest if an own commit merged since the last one,
    /// or [`DIGEST_INTERVAL_MS`] passed. MLS sends no application message
    /// while proposals wait for a commit: the digest waits too.
    fn publish_digest<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let interval_passed = now_ms
            >= self
                .parts
                .core
                .last_digest_ms
                .saturating_add(DIGEST_INTERVAL_MS);
        let due = self.parts.core.digest_due || interval_passed;
        if !due || !self.parts.mls.is_active() || self.parts.mls.has_pending_proposals() {
            return Ok(());
        }
        self.parts.core.digest_due = false;
        self.parts.core.last_digest_ms = now_ms;
        let body = self.parts.mls.auth_digest().to_vec();
        self.send_control(kv, provider, me, CONTENT_TYPE_EPOCH_DIGEST, body, now_ms)
    }

    // ----- deniable bindings ---------------------------------------------

    /// Check the bindings received since the last call.
    fn verify_bindings<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
    ) -> Result<(), GroupError> {
        let conversation = self.conversation_id();
        let dm = self.metadata().immutable.dm_members;
        match self.parts.bindings.as_mut() {
            Some(bindings) => bindings.verify(
                kv,
                me,
                identities,
                dm,
                &conversation,
                &mut self.parts.events,
            ),
            None => Ok(()),
        }
    }

    /// Send this installation's binding, if one is due and it can go out.
    fn send_binding<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let Some(bindings) = &self.parts.bindings else {
            return Ok(());
        };
        if !bindings.due()
            || !self.parts.mls.is_active()
            || self.parts.forks.is_forked()
            || self.parts.mls.has_pending_proposals()
        {
            return Ok(());
        }
        let Some(dm) = self.metadata().immutable.dm_members else {
            return Err(GroupError::Corrupt(
                "a deniable DM without its inboxes".into(),
            ));
        };
        let exporter = self.parts.mls.binding_exporter(provider)?;
        let epoch = self.epoch();
        let body = bindings.binding(me, identities, dm, epoch, &exporter)?;
        self.send_control(kv, provider, me, CONTENT_TYPE_BINDING, body, now_ms)?;
        if let Some(bindings) = self.parts.bindings.as_mut() {
            bindings.sent(epoch);
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "test-suite"))]
impl Group {
    /// Test hook: join from a Welcome without the DM checks, as a node or
    /// stranger that got hold of a Welcome meant for someone else would.
    ///
    /// # Errors
    /// As [`Group::join`].
    pub fn join_unchecked_for_tests<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Option<Self>, GroupError> {
        Self::join_checked(provider, kv, me, identities, payload, now_ms, false)
    }

    /// Test hook: create a group with the id `group_id`, as a client
    /// altered to copy another group's id would.
    ///
    /// # Errors
    /// As [`Group::create`].
    pub fn create_with_id_for_tests<P: OpenMlsProvider, S: KvStore + ?Sized>(
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        new: NewGroup,
        group_id: &[u8],
    ) -> Result<Self, GroupError> {
        Self::create_with_id(provider, kv, me, identities, new, group_id.to_vec())
    }

    /// Test hook: this installation's binding exporter secret of the
    /// current epoch, as a member (and so a forger) holds it.
    ///
    /// # Errors
    /// If OpenMLS cannot export (the group is inactive).
    pub fn binding_exporter_for_tests<P: OpenMlsProvider>(
        &self,
        provider: &P,
    ) -> Result<Vec<u8>, GroupError> {
        Ok(self.parts.mls.binding_exporter(provider)?.to_vec())
    }

    /// Test hook: the commit a member's altered client would publish to
    /// set the group's metadata to `metadata` (the immutable part too),
    /// past every local check; this member's own state does not change.
    ///
    /// # Errors
    /// If OpenMLS cannot build the commit.
    pub fn forged_metadata_commit_for_tests<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        me: Me<'_>,
        metadata: &GroupMetadata,
    ) -> Result<Vec<u8>, GroupError> {
        self.parts
            .mls
            .forged_metadata_commit(provider, me, metadata, &[])
    }

    /// Test hook: a commit that adds `key_packages` (as the node hands
    /// them out) with the group context set to `metadata`, unchecked: what
    /// an altered client could publish, e.g. skipping the gating check.
    ///
    /// # Errors
    /// When a key package does not parse, or OpenMLS cannot build it.
    pub fn forged_add_commit_for_tests<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        me: Me<'_>,
        metadata: &GroupMetadata,
        key_packages: &[Vec<u8>],
    ) -> Result<Vec<u8>, GroupError> {
        self.parts
            .mls
            .forged_metadata_commit(provider, me, metadata, key_packages)
    }

    /// Test hook: how many past epochs' message secrets this member keeps
    /// (see [`past_epochs_for`](super::past_epochs_for)); `None` once it is
    /// no longer a member (or if it kept every epoch, which Kith never sets).
    pub fn past_epochs_kept_for_tests(&self) -> Option<usize> {
        self.parts.mls.past_epochs_kept()
    }

    /// Test hook: encrypt and queue `content_type` and `body` at once, past
    /// every hold, as a member whose client was altered would.
    ///
    /// # Errors
    /// As [`Group::send_message`].
    pub fn send_unchecked_for_tests<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        content_type: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), GroupError> {
        self.send_control(kv, provider, me, content_type, body.to_vec(), now_ms)?;
        self.parts.save(kv)
    }
}
