//! A fault-injecting `StorageProvider` wrapper: it delegates every call to
//! the wrapped storage, and makes the N-th write fail, so that a test can
//! break an OpenMLS operation part-way through.
//!
//! The delegating methods were generated from the trait definition in
//! openmls_traits 0.6 (all methods not behind a feature flag); every method
//! whose name starts with write_, append_, queue_, delete_, remove_ or
//! clear_ counts as a write.

use std::sync::atomic::{AtomicUsize, Ordering};

use openmls_traits::storage::{CURRENT_VERSION, StorageProvider, traits};

/// Why a wrapped call failed.
#[derive(Debug, thiserror::Error)]
pub enum FaultError<E: std::error::Error + 'static> {
    /// The injected fault.
    #[error("injected write fault")]
    Injected,
    /// The wrapped storage failed.
    #[error(transparent)]
    Inner(E),
}

/// Wraps a storage; see the module docs.
pub struct Faulty<S> {
    pub inner: S,
    /// Writes still allowed before the next one fails; `usize::MAX` never
    /// fails.
    allowed: AtomicUsize,
    /// Writes that went through.
    pub writes: AtomicUsize,
    /// Faults injected.
    pub faults: AtomicUsize,
}

impl<S> Faulty<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            allowed: AtomicUsize::new(usize::MAX),
            writes: AtomicUsize::new(0),
            faults: AtomicUsize::new(0),
        }
    }

    /// Let `n` more writes through, then fail every later one.
    pub fn fail_after(&self, n: usize) {
        self.allowed.store(n, Ordering::SeqCst);
        self.writes.store(0, Ordering::SeqCst);
        self.faults.store(0, Ordering::SeqCst);
    }

    /// Never fail again.
    pub fn heal(&self) {
        self.allowed.store(usize::MAX, Ordering::SeqCst);
    }

    fn before_write<E: std::error::Error + 'static>(&self) -> Result<(), FaultError<E>> {
        let allowed = self.allowed.load(Ordering::SeqCst);
        if allowed == 0 {
            self.faults.fetch_add(1, Ordering::SeqCst);
            return Err(FaultError::Injected);
        }
        if allowed != usize::MAX {
            self.allowed.store(allowed - 1, Ordering::SeqCst);
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl<S> StorageProvider<CURRENT_VERSION> for Faulty<S>
where
    S: StorageProvider<CURRENT_VERSION>,
    S::Error: 'static,
{
    type Error = FaultError<S::Error>;

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_mls_join_config::<GroupId, MlsGroupJoinConfig>(group_id, config)
            .map_err(FaultError::Inner)
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .append_own_leaf_node::<GroupId, LeafNode>(group_id, leaf_node)
            .map_err(FaultError::Inner)
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .queue_proposal::<GroupId, ProposalRef, QueuedProposal>(
                group_id,
                proposal_ref,
                proposal,
            )
            .map_err(FaultError::Inner)
    }

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_tree::<GroupId, TreeSync>(group_id, tree)
            .map_err(FaultError::Inner)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_interim_transcript_hash::<GroupId, InterimTranscriptHash>(
                group_id,
                interim_transcript_hash,
            )
            .map_err(FaultError::Inner)
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_context::<GroupId, GroupContext>(group_id, group_context)
            .map_err(FaultError::Inner)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_confirmation_tag::<GroupId, ConfirmationTag>(group_id, confirmation_tag)
            .map_err(FaultError::Inner)
    }

    fn write_group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_group_state::<GroupState, GroupId>(group_id, group_state)
            .map_err(FaultError::Inner)
    }

    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_message_secrets::<GroupId, MessageSecrets>(group_id, message_secrets)
            .map_err(FaultError::Inner)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_resumption_psk_store::<GroupId, ResumptionPskStore>(
                group_id,
                resumption_psk_store,
            )
            .map_err(FaultError::Inner)
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_own_leaf_index::<GroupId, LeafNodeIndex>(group_id, own_leaf_index)
            .map_err(FaultError::Inner)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_group_epoch_secrets::<GroupId, GroupEpochSecrets>(group_id, group_epoch_secrets)
            .map_err(FaultError::Inner)
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_signature_key_pair::<SignaturePublicKey, SignatureKeyPair>(
                public_key,
                signature_key_pair,
            )
            .map_err(FaultError::Inner)
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_encryption_key_pair::<EncryptionKey, HpkeKeyPair>(public_key, key_pair)
            .map_err(FaultError::Inner)
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_encryption_epoch_key_pairs::<GroupId, EpochKey, HpkeKeyPair>(
                group_id, epoch, leaf_index, key_pairs,
            )
            .map_err(FaultError::Inner)
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_key_package::<HashReference, KeyPackage>(hash_ref, key_package)
            .map_err(FaultError::Inner)
    }

    fn write_psk<
        PskId: traits::PskId<CURRENT_VERSION>,
        PskBundle: traits::PskBundle<CURRENT_VERSION>,
    >(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .write_psk::<PskId, PskBundle>(psk_id, psk)
            .map_err(FaultError::Inner)
    }

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>, Self::Error> {
        self.inner
            .mls_group_join_config::<GroupId, MlsGroupJoinConfig>(group_id)
            .map_err(FaultError::Inner)
    }

    fn own_leaf_nodes<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>, Self::Error> {
        self.inner
            .own_leaf_nodes::<GroupId, LeafNode>(group_id)
            .map_err(FaultError::Inner)
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>, Self::Error> {
        self.inner
            .queued_proposal_refs::<GroupId, ProposalRef>(group_id)
            .map_err(FaultError::Inner)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::Error> {
        self.inner
            .queued_proposals::<GroupId, ProposalRef, QueuedProposal>(group_id)
            .map_err(FaultError::Inner)
    }

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, Self::Error> {
        self.inner
            .tree::<GroupId, TreeSync>(group_id)
            .map_err(FaultError::Inner)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, Self::Error> {
        self.inner
            .group_context::<GroupId, GroupContext>(group_id)
            .map_err(FaultError::Inner)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, Self::Error> {
        self.inner
            .interim_transcript_hash::<GroupId, InterimTranscriptHash>(group_id)
            .map_err(FaultError::Inner)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, Self::Error> {
        self.inner
            .confirmation_tag::<GroupId, ConfirmationTag>(group_id)
            .map_err(FaultError::Inner)
    }

    fn group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>, Self::Error> {
        self.inner
            .group_state::<GroupState, GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>, Self::Error> {
        self.inner
            .message_secrets::<GroupId, MessageSecrets>(group_id)
            .map_err(FaultError::Inner)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>, Self::Error> {
        self.inner
            .resumption_psk_store::<GroupId, ResumptionPskStore>(group_id)
            .map_err(FaultError::Inner)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>, Self::Error> {
        self.inner
            .own_leaf_index::<GroupId, LeafNodeIndex>(group_id)
            .map_err(FaultError::Inner)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>, Self::Error> {
        self.inner
            .group_epoch_secrets::<GroupId, GroupEpochSecrets>(group_id)
            .map_err(FaultError::Inner)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>, Self::Error> {
        self.inner
            .signature_key_pair::<SignaturePublicKey, SignatureKeyPair>(public_key)
            .map_err(FaultError::Inner)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>, Self::Error> {
        self.inner
            .encryption_key_pair::<HpkeKeyPair, EncryptionKey>(public_key)
            .map_err(FaultError::Inner)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>, Self::Error> {
        self.inner
            .encryption_epoch_key_pairs::<GroupId, EpochKey, HpkeKeyPair>(
                group_id, epoch, leaf_index,
            )
            .map_err(FaultError::Inner)
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>, Self::Error> {
        self.inner
            .key_package::<KeyPackageRef, KeyPackage>(hash_ref)
            .map_err(FaultError::Inner)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>, Self::Error> {
        self.inner
            .psk::<PskBundle, PskId>(psk_id)
            .map_err(FaultError::Inner)
    }

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .remove_proposal::<GroupId, ProposalRef>(group_id, proposal_ref)
            .map_err(FaultError::Inner)
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_own_leaf_nodes::<GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_group_config::<GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_tree::<GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_confirmation_tag::<GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_group_state::<GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_context::<GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_interim_transcript_hash::<GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_message_secrets::<GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_all_resumption_psk_secrets::<GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_own_leaf_index::<GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_group_epoch_secrets::<GroupId>(group_id)
            .map_err(FaultError::Inner)
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .clear_proposal_queue::<GroupId, ProposalRef>(group_id)
            .map_err(FaultError::Inner)
    }

    fn delete_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_signature_key_pair::<SignaturePublicKey>(public_key)
            .map_err(FaultError::Inner)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_encryption_key_pair::<EncryptionKey>(public_key)
            .map_err(FaultError::Inner)
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_encryption_epoch_key_pairs::<GroupId, EpochKey>(group_id, epoch, leaf_index)
            .map_err(FaultError::Inner)
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_key_package::<KeyPackageRef>(hash_ref)
            .map_err(FaultError::Inner)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskKey,
    ) -> Result<(), Self::Error> {
        self.before_write()?;
        self.inner
            .delete_psk::<PskKey>(psk_id)
            .map_err(FaultError::Inner)
    }
}

/// An OpenMLS provider over a [`Faulty`] sled storage.
pub struct FaultyProvider {
    pub crypto: openmls_rust_crypto::RustCrypto,
    pub storage: Faulty<kith_storage::SledMlsStorage>,
}

impl FaultyProvider {
    pub fn open(path: &std::path::Path) -> Self {
        Self {
            crypto: Default::default(),
            storage: Faulty::new(kith_storage::SledMlsStorage::open(path).expect("open")),
        }
    }
}

impl openmls_traits::OpenMlsProvider for FaultyProvider {
    type CryptoProvider = openmls_rust_crypto::RustCrypto;
    type RandProvider = openmls_rust_crypto::RustCrypto;
    type StorageProvider = Faulty<kith_storage::SledMlsStorage>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}
