//! The `openmls_traits` `StorageProvider` implementation of
//! [`SledMlsStorage`].
//!
//! Every method maps to one atomic write (or one read) through the
//! primitives in `mls_storage.rs`, so that inside a step they are buffered
//! and outside one each is applied on its own. Values are encoded with the
//! configured [`Codec`](crate::Codec); keys follow the layout in `keys.rs`.

use openmls_traits::storage::{CURRENT_VERSION, Entity, StorageProvider, traits};
use serde::Serialize;

use crate::{
    error::StorageError,
    keys::{self, EntryKind},
    mls_storage::{Overlay, SledMlsStorage},
};

/// Group-scoped single-value helpers.
impl SledMlsStorage {
    fn write_group_value<G: Serialize, V: Serialize + ?Sized>(
        &self,
        group_id: &G,
        kind: EntryKind,
        value: &V,
    ) -> Result<(), StorageError> {
        let key = keys::group_key(group_id, kind, &[])?;
        self.put(key, self.encode(value)?)
    }

    fn read_group_value<G: Serialize, V: Entity<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        kind: EntryKind,
    ) -> Result<Option<V>, StorageError> {
        let key = keys::group_key(group_id, kind, &[])?;
        self.get(&key)?.map(|bytes| self.decode(&bytes)).transpose()
    }

    fn delete_group_value<G: Serialize>(
        &self,
        group_id: &G,
        kind: EntryKind,
    ) -> Result<(), StorageError> {
        self.remove(keys::group_key(group_id, kind, &[])?)
    }

    fn write_global<K: Serialize, V: Serialize>(
        &self,
        kind: EntryKind,
        key: &K,
        value: &V,
    ) -> Result<(), StorageError> {
        self.put(keys::global_key(kind, key)?, self.encode(value)?)
    }

    fn read_global<K: Serialize, V: Entity<CURRENT_VERSION>>(
        &self,
        kind: EntryKind,
        key: &K,
    ) -> Result<Option<V>, StorageError> {
        let key = keys::global_key(kind, key)?;
        self.get(&key)?.map(|bytes| self.decode(&bytes)).transpose()
    }

    fn delete_global<K: Serialize>(&self, kind: EntryKind, key: &K) -> Result<(), StorageError> {
        self.remove(keys::global_key(kind, key)?)
    }

    fn read_list<V: Entity<CURRENT_VERSION>>(&self, key: &[u8]) -> Result<Vec<V>, StorageError> {
        match self.get(key)? {
            None => Ok(Vec::new()),
            Some(list) => keys::decode_list(&list)?
                .iter()
                .map(|item| self.decode(item))
                .collect(),
        }
    }

    fn list_items(&self, key: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
        self.get(key)?
            .map_or(Ok(Vec::new()), |list| keys::decode_list(&list))
    }

    fn epoch_key_pairs_key<G: Serialize, E: Serialize>(
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> Result<Vec<u8>, StorageError> {
        let sub_key = keys::encode_key(&(epoch, leaf_index))?;
        keys::group_key(group_id, EntryKind::EpochKeyPairs, &sub_key)
    }
}

impl StorageProvider<CURRENT_VERSION> for SledMlsStorage {
    type Error = StorageError;

    // ----- group state writers ------------------------------------------

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<(), Self::Error> {
        self.write_group_value(group_id, EntryKind::JoinConfig, config)
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<(), Self::Error> {
        let key = keys::group_key(group_id, EntryKind::OwnLeafNodes, &[])?;
        let mut items = self.list_items(&key)?;
        items.push(self.encode(leaf_node)?);
        self.put(key, keys::encode_list(&items))
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
        let proposal_key = keys::group_key(
            group_id,
            EntryKind::QueuedProposal,
            &keys::encode_key(proposal_ref)?,
        )?;
        let refs_key = keys::group_key(group_id, EntryKind::ProposalQueueRefs, &[])?;
        let mut refs = self.list_items(&refs_key)?;
        let encoded_ref = self.encode(proposal_ref)?;
        // Queuing the same proposal twice must not list it twice.
        if !refs.contains(&encoded_ref) {
            refs.push(encoded_ref);
        }
        self.write(Overlay::from([
            (proposal_key, Some(self.encode(proposal)?)),
            (refs_key, Some(keys::encode_list(&refs))),
        ]))
    }

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), Self::Error> {
        self.write_group_value(group_id, EntryKind::Tree, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), Self::Error> {
        self.write_group_value(
            group_id,
            EntryKind::InterimTranscriptHash,
            interim_transcript_hash,
        )
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), Self::Error> {
        self.write_group_value(group_id, EntryKind::GroupContext, group_context)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), Self::Error> {
        self.write_group_value(group_id, EntryKind::ConfirmationTag, confirmation_tag)
    }

    fn write_group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<(), Self::Error> {
        self.write_group_value(group_id, EntryKind::GroupState, group_state)
    }

    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<(), Self::Error> {
        self.write_group_value(group_id, EntryKind::MessageSecrets, message_secrets)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<(), Self::Error> {
        self.write_group_value(
            group_id,
            EntryKind::ResumptionPskStore,
            resumption_psk_store,
        )
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<(), Self::Error> {
        self.write_group_value(group_id, EntryKind::OwnLeafIndex, own_leaf_index)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<(), Self::Error> {
        self.write_group_value(group_id, EntryKind::EpochSecrets, group_epoch_secrets)
    }

    // ----- crypto object writers -----------------------------------------

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<(), Self::Error> {
        self.write_global(EntryKind::SignatureKeyPair, public_key, signature_key_pair)
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<(), Self::Error> {
        self.write_global(EntryKind::EncryptionKeyPair, public_key, key_pair)
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
        let key = Self::epoch_key_pairs_key(group_id, epoch, leaf_index)?;
        self.put(key, self.encode(key_pairs)?)
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<(), Self::Error> {
        self.write_global(EntryKind::KeyPackage, hash_ref, key_package)
    }

    fn write_psk<
        PskId: traits::PskId<CURRENT_VERSION>,
        PskBundle: traits::PskBundle<CURRENT_VERSION>,
    >(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<(), Self::Error> {
        self.write_global(EntryKind::Psk, psk_id, psk)
    }

    // ----- group state getters ---------------------------------------------

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>, Self::Error> {
        self.read_group_value(group_id, EntryKind::JoinConfig)
    }

    fn own_leaf_nodes<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>, Self::Error> {
        self.read_list(&keys::group_key(group_id, EntryKind::OwnLeafNodes, &[])?)
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>, Self::Error> {
        self.read_list(&keys::group_key(
            group_id,
            EntryKind::ProposalQueueRefs,
            &[],
        )?)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::Error> {
        let refs: Vec<ProposalRef> = self.queued_proposal_refs(group_id)?;
        refs.into_iter()
            .map(|proposal_ref| {
                let key = keys::group_key(
                    group_id,
                    EntryKind::QueuedProposal,
                    &keys::encode_key(&proposal_ref)?,
                )?;
                let bytes = self
                    .get(&key)?
                    .ok_or_else(|| StorageError::corrupt("a listed queued proposal is missing"))?;
                Ok((proposal_ref, self.decode(&bytes)?))
            })
            .collect()
    }

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, Self::Error> {
        self.read_group_value(group_id, EntryKind::Tree)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, Self::Error> {
        self.read_group_value(group_id, EntryKind::GroupContext)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, Self::Error> {
        self.read_group_value(group_id, EntryKind::InterimTranscriptHash)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, Self::Error> {
        self.read_group_value(group_id, EntryKind::ConfirmationTag)
    }

    fn group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>, Self::Error> {
        self.read_group_value(group_id, EntryKind::GroupState)
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>, Self::Error> {
        self.read_group_value(group_id, EntryKind::MessageSecrets)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>, Self::Error> {
        self.read_group_value(group_id, EntryKind::ResumptionPskStore)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>, Self::Error> {
        self.read_group_value(group_id, EntryKind::OwnLeafIndex)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>, Self::Error> {
        self.read_group_value(group_id, EntryKind::EpochSecrets)
    }

    // ----- crypto object getters -------------------------------------------

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>, Self::Error> {
        self.read_global(EntryKind::SignatureKeyPair, public_key)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>, Self::Error> {
        self.read_global(EntryKind::EncryptionKeyPair, public_key)
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
        let key = Self::epoch_key_pairs_key(group_id, epoch, leaf_index)?;
        self.get(&key)?
            .map_or(Ok(Vec::new()), |bytes| self.decode(&bytes))
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>, Self::Error> {
        self.read_global(EntryKind::KeyPackage, hash_ref)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>, Self::Error> {
        self.read_global(EntryKind::Psk, psk_id)
    }

    // ----- group state deleters ----------------------------------------------

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), Self::Error> {
        let proposal_key = keys::group_key(
            group_id,
            EntryKind::QueuedProposal,
            &keys::encode_key(proposal_ref)?,
        )?;
        let refs_key = keys::group_key(group_id, EntryKind::ProposalQueueRefs, &[])?;
        let encoded_ref = self.encode(proposal_ref)?;
        let refs: Vec<Vec<u8>> = self
            .list_items(&refs_key)?
            .into_iter()
            .filter(|r| *r != encoded_ref)
            .collect();
        let refs_value = (!refs.is_empty()).then(|| keys::encode_list(&refs));
        self.write(Overlay::from([
            (proposal_key, None),
            (refs_key, refs_value),
        ]))
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        // OpenMLS calls this once the leaf nodes of own update proposals are
        // no longer needed (a commit was merged, or the group is deleted),
        // but it never deletes their HPKE key pairs: delete them here.
        let key = keys::group_key(group_id, EntryKind::OwnLeafNodes, &[])?;
        let mut ops: Overlay = self
            .own_leaf_key_pair_keys_at(&key)?
            .into_iter()
            .map(|k| (k, None))
            .collect();
        ops.insert(key, None);
        self.write(ops)
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_value(group_id, EntryKind::JoinConfig)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_value(group_id, EntryKind::Tree)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_value(group_id, EntryKind::ConfirmationTag)
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_value(group_id, EntryKind::GroupState)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_value(group_id, EntryKind::GroupContext)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_value(group_id, EntryKind::InterimTranscriptHash)
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_value(group_id, EntryKind::MessageSecrets)
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_value(group_id, EntryKind::ResumptionPskStore)
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_value(group_id, EntryKind::OwnLeafIndex)
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_value(group_id, EntryKind::EpochSecrets)
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        // Delete by prefix scan rather than by walking the reference list, so
        // that no proposal can outlive the queue even if the list and the
        // entries ever disagree.
        let prefix = keys::group_kind_prefix(group_id, EntryKind::QueuedProposal)?;
        let mut ops: Overlay = self
            .scan(&prefix)?
            .into_iter()
            .map(|(k, _)| (k, None))
            .collect();
        ops.insert(
            keys::group_key(group_id, EntryKind::ProposalQueueRefs, &[])?,
            None,
        );
        self.write(ops)
    }

    // ----- crypto object deleters --------------------------------------------

    fn delete_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<(), Self::Error> {
        self.delete_global(EntryKind::SignatureKeyPair, public_key)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<(), Self::Error> {
        self.delete_global(EntryKind::EncryptionKeyPair, public_key)
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
        self.remove(Self::epoch_key_pairs_key(group_id, epoch, leaf_index)?)
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<(), Self::Error> {
        self.delete_global(EntryKind::KeyPackage, hash_ref)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskKey,
    ) -> Result<(), Self::Error> {
        self.delete_global(EntryKind::Psk, psk_id)
    }
}
