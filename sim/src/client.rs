//! A simulated installation: its own sled store and engine, attached to
//! one node, able to crash (losing its in-memory state and any open step)
//! and restart from its store.

use std::collections::BTreeMap;

use kith_engine::{
    delivery::{Envelope, Topic},
    group::{ClientStore, Group, GroupConfig, GroupError, GroupEvent, IdentityCache, Me},
    identity::{InboxId, InstallationKeys},
};
use kith_storage::{Codec, Durability, KithProvider, SledMlsStorage, StorageConfig, StorageError};

/// Why a step did not commit.
#[derive(Debug)]
pub enum StepError {
    /// The engine refused or failed.
    Group(GroupError),
    /// The store failed.
    Storage(StorageError),
    /// The simulator crashed the client inside the step.
    Crash,
}

impl From<StorageError> for StepError {
    fn from(e: StorageError) -> Self {
        Self::Storage(e)
    }
}

impl From<GroupError> for StepError {
    fn from(e: GroupError) -> Self {
        Self::Group(e)
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Group(e) => write!(f, "engine: {e}"),
            Self::Storage(e) => write!(f, "store: {e}"),
            Self::Crash => write!(f, "crashed"),
        }
    }
}

/// One installation of one inbox.
#[derive(Debug)]
pub struct Client {
    /// Its index in the simulation.
    pub index: usize,
    /// Its inbox.
    pub inbox: InboxId,
    /// Its installation keys.
    pub keys: InstallationKeys,
    /// Its store and crypto.
    pub provider: KithProvider,
    /// Its group, when loaded (`None` while crashed or before joining).
    pub group: Option<Group>,
    /// The group id, once it is a member.
    pub group_id: Option<Vec<u8>>,
    /// The node it reads from and publishes to.
    pub node: usize,
    /// Down until this time, if crashed.
    pub down_until: Option<u64>,
    /// Per topic, how far into its node's log it has read.
    pub read: BTreeMap<String, usize>,
    /// The epoch it joined at.
    pub join_epoch: Option<u64>,
    /// Its key package, while nobody has used it.
    pub key_package: Option<Vec<u8>>,
    /// Every event its engine emitted.
    pub events: Vec<GroupEvent>,
}

impl Client {
    /// A client with a fresh in-memory sled store.
    pub fn new(
        index: usize,
        inbox: InboxId,
        keys: InstallationKeys,
        node: usize,
    ) -> Result<Self, StepError> {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .map_err(|e| StepError::Storage(StorageError::from(e)))?;
        // Buffered, because a simulated crash loses the process, not the
        // disk.
        let storage = SledMlsStorage::from_db(
            db,
            StorageConfig {
                codec: Codec::MessagePack,
                durability: Durability::Buffered {
                    flush_every_ms: 3_600_000,
                },
            },
        )?;
        Ok(Self {
            index,
            inbox,
            keys,
            provider: KithProvider::from_storage(storage),
            group: None,
            group_id: None,
            node,
            down_until: None,
            read: BTreeMap::new(),
            join_epoch: None,
            key_package: None,
            events: Vec::new(),
        })
    }

    /// An independent copy of this client, store and all (for benchmarks
    /// that need the same starting state on every iteration).
    pub fn copy(&self) -> Result<Self, StepError> {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .map_err(|e| StepError::Storage(StorageError::from(e)))?;
        db.import(self.storage().db().export());
        let storage = SledMlsStorage::from_db(db, self.storage().config())?;
        let mut copy = Self {
            index: self.index,
            inbox: self.inbox,
            keys: self.keys.clone(),
            provider: KithProvider::from_storage(storage),
            group: None,
            group_id: self.group_id.clone(),
            node: self.node,
            down_until: None,
            read: BTreeMap::new(),
            join_epoch: self.join_epoch,
            key_package: self.key_package.clone(),
            events: Vec::new(),
        };
        let policy = self
            .group
            .as_ref()
            .map_or_else(GroupConfig::default, Group::config);
        copy.reload(policy)?;
        Ok(copy)
    }

    /// The acting installation.
    pub fn me(&self) -> Me<'_> {
        Me {
            inbox: self.inbox,
            keys: &self.keys,
        }
    }

    /// The client's store.
    pub fn storage(&self) -> &SledMlsStorage {
        openmls::prelude::OpenMlsProvider::storage(&self.provider)
    }

    /// Whether it is running.
    pub fn is_up(&self) -> bool {
        self.down_until.is_none()
    }

    /// Whether it is running and an active member.
    pub fn is_member(&self) -> bool {
        self.is_up() && self.group.as_ref().is_some_and(Group::is_active)
    }

    /// Run `f` on the group inside one storage step; on any failure the
    /// step is discarded and the group reloaded from the store.
    pub fn step<T>(
        &mut self,
        f: impl FnOnce(&mut Group, &KithProvider, &SledMlsStorage) -> Result<T, StepError>,
    ) -> Result<T, StepError> {
        let Some(group) = self.group.as_mut() else {
            return Err(StepError::Group(GroupError::NotMember));
        };
        let provider = &self.provider;
        let storage = openmls::prelude::OpenMlsProvider::storage(provider);
        let result = storage.step(|| f(group, provider, storage));
        match result {
            Ok(value) => {
                while let Some(event) = group.poll_event() {
                    self.events.push(event);
                }
                Ok(value)
            }
            Err(e) => {
                self.reload(GroupConfig::default())?;
                Err(e)
            }
        }
    }

    /// Reload the group from the store (after a discarded step or a
    /// restart), keeping `policy` (or the loaded group's).
    pub fn reload(&mut self, fallback: GroupConfig) -> Result<(), StepError> {
        let policy = self.group.as_ref().map_or(fallback, Group::config);
        let Some(group_id) = self.group_id.clone() else {
            return Ok(());
        };
        let mut group = Group::load(&self.provider, self.storage(), &group_id)?
            .ok_or(StepError::Group(GroupError::NotMember))?;
        group.set_config(policy);
        self.group = Some(group);
        Ok(())
    }

    /// Crash: lose everything in memory; the store stays.
    pub fn crash(&mut self, until: u64) {
        self.group = None;
        self.read.clear();
        self.down_until = Some(until);
    }

    /// Read the new envelopes of `topic` from the attached node.
    pub fn take_new(&mut self, node: &crate::network::Node, topic: &Topic) -> Vec<Envelope> {
        let key = topic.to_string();
        let from = self.read.get(&key).copied().unwrap_or(0);
        let (envelopes, next) = node.read(topic, from);
        self.read.insert(key, next);
        envelopes
    }

    /// Join from a Welcome payload; `Ok(true)` if it joined.
    pub fn join(
        &mut self,
        identities: &IdentityCache,
        payload: &[u8],
        policy: GroupConfig,
        now: u64,
    ) -> Result<bool, StepError> {
        self.join_with(policy, |provider, storage, me| {
            Group::join(provider, storage, me, identities, payload, now)
        })
    }

    /// Join again from a Welcome the engine kept while this installation
    /// was still a member, if it needs one now; `Ok(true)` if it joined.
    pub fn rejoin_deferred(
        &mut self,
        identities: &IdentityCache,
        policy: GroupConfig,
        now: u64,
    ) -> Result<bool, StepError> {
        let Some(group_id) = self.group_id.clone() else {
            return Ok(false);
        };
        self.join_with(policy, |provider, storage, me| {
            Group::rejoin_deferred(provider, storage, me, identities, &group_id, now)
        })
    }

    /// Run a join in one step and take the group it joined as this
    /// client's.
    fn join_with(
        &mut self,
        policy: GroupConfig,
        join: impl FnOnce(&KithProvider, &SledMlsStorage, Me<'_>) -> Result<Option<Group>, GroupError>,
    ) -> Result<bool, StepError> {
        let provider = &self.provider;
        let storage = openmls::prelude::OpenMlsProvider::storage(provider);
        let me = Me {
            inbox: self.inbox,
            keys: &self.keys,
        };
        let joined = storage.step(|| Ok::<_, StepError>(join(provider, storage, me)?))?;
        Ok(self.adopt(joined, policy))
    }

    /// Take a group just joined (if any) as this client's.
    fn adopt(&mut self, joined: Option<Group>, policy: GroupConfig) -> bool {
        let Some(mut group) = joined else {
            return false;
        };
        // Joined again after a fork: read the group topic from the
        // Welcome's cursor, as a fresh member would.
        self.read
            .remove(&Topic::Group(group.group_id().to_vec()).to_string());
        group.set_config(policy);
        while let Some(event) = group.poll_event() {
            self.events.push(event);
        }
        self.join_epoch = Some(group.epoch());
        self.group_id = Some(group.group_id().to_vec());
        self.group = Some(group);
        true
    }

    /// The retained snapshots' ring entries of the group.
    pub fn snapshots(&self) -> Vec<kith_engine::group::records::EpochSnapshot> {
        self.group_id
            .as_ref()
            .and_then(|g| ClientStore(self.storage()).snapshots(g).ok())
            .unwrap_or_default()
    }
}

/// `count` clients, each with its own inbox (its identity log in
/// `identities`) and an unused key package, spread over `nodes` nodes.
/// Keys come from `rng`, so a seed gives the same identities.
pub fn population(
    rng: &mut rand_chacha::ChaCha20Rng,
    count: usize,
    nodes: usize,
    now_ms: u64,
) -> Result<(IdentityCache, Vec<Client>), StepError> {
    use kith_engine::identity::{
        DEFAULT_LIFETIME_SECS, LocalWallet, UnsignedIdentityUpdate, generate_key_package,
    };
    use openmls::prelude::{MlsMessageOut, tls_codec::Serialize as _};

    let mut identities = IdentityCache::new();
    let mut clients = Vec::with_capacity(count);
    for index in 0..count {
        let wallet = LocalWallet::generate(rng);
        let keys = InstallationKeys::generate(rng);
        let unsigned =
            UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, now_ms);
        let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
        identities
            .extend(wallet.inbox_id(), [unsigned.sign(signature, Some(&keys))])
            .map_err(|e| StepError::Group(GroupError::InvalidInput(e.to_string())))?;
        let mut client = Client::new(index, wallet.inbox_id(), keys, index % nodes.max(1))?;
        let key_package = generate_key_package(
            &client.provider,
            &client.keys,
            client.inbox,
            now_ms / 1000,
            DEFAULT_LIFETIME_SECS,
            false,
        )
        .map_err(|e| StepError::Group(e.into()))?;
        client.key_package = Some(
            MlsMessageOut::from(key_package)
                .tls_serialize_detached()
                .map_err(|e| StepError::Group(GroupError::Mls(e.to_string())))?,
        );
        clients.push(client);
    }
    Ok((identities, clients))
}
