//! A simulated installation: its own sled store and engine, attached to
//! one node, able to crash (losing its in-memory state and any open step)
//! and restart from its store, or to lose power (losing, besides, every
//! step committed since the store was last flushed).

use std::collections::BTreeMap;

use kith_engine::{
    delivery::{Envelope, Topic},
    group::{ClientStore, Group, GroupConfig, GroupError, GroupEvent, IdentityCache, Me},
    identity::{InboxId, InstallationKeys},
};
use kith_storage::{Codec, Durability, KithProvider, SledMlsStorage, StorageConfig, StorageError};
use openmls_traits::{OpenMlsProvider as _, random::OpenMlsRand as _};

use crate::crypto::SeededCrypto;

/// The provider a simulated installation runs on: sled, and crypto whose
/// randomness comes from the run's seed.
pub type SimProvider = KithProvider<SeededCrypto>;

/// How long the simulator's key packages live, in seconds. Runs start at a
/// fixed time (so that a seed replays byte for byte), and OpenMLS checks a
/// key package's lifetime against the real clock: the lifetime must reach
/// past any day the tests run on.
pub const KEY_PACKAGE_LIFETIME_SECS: u64 = 100 * 365 * 24 * 60 * 60;

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
    pub provider: SimProvider,
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
    /// Its key package as the node holds it, while nobody has fetched it
    /// (the node's copy: a power loss of the client does not bring it
    /// back).
    pub key_package: Option<Vec<u8>>,
    /// Every event its engine emitted.
    pub events: Vec<GroupEvent>,
    /// How many times it joined the group (creating it counts as the
    /// first): each join after a fork or a removal replaces the state of
    /// the one before.
    pub incarnation: u32,
    /// What the disk held at the last flush: what a power loss goes back to.
    disk: Option<Disk>,
}

/// A sled export: per tree, its kind, name and key-value pairs.
type Image = Vec<(Vec<u8>, Vec<u8>, Vec<Vec<Vec<u8>>>)>;

/// The store, and what the client knew with it, at a flush.
#[derive(Debug)]
struct Disk {
    image: Image,
    group_id: Option<Vec<u8>>,
    join_epoch: Option<u64>,
    incarnation: u32,
    events: usize,
}

impl Client {
    /// A client with a fresh in-memory sled store, whose randomness comes
    /// from `seed`.
    pub fn new(
        index: usize,
        inbox: InboxId,
        keys: InstallationKeys,
        node: usize,
        seed: [u8; 32],
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
            provider: KithProvider::with_crypto(storage, SeededCrypto::new(seed)),
            group: None,
            group_id: None,
            node,
            down_until: None,
            read: BTreeMap::new(),
            join_epoch: None,
            key_package: None,
            events: Vec::new(),
            incarnation: 0,
            disk: None,
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
        let seed = self
            .provider
            .rand()
            .random_array()
            .unwrap_or_else(|e| match e {});
        let mut copy = Self {
            index: self.index,
            inbox: self.inbox,
            keys: self.keys.clone(),
            provider: KithProvider::with_crypto(storage, SeededCrypto::new(seed)),
            group: None,
            group_id: self.group_id.clone(),
            node: self.node,
            down_until: None,
            read: BTreeMap::new(),
            join_epoch: self.join_epoch,
            key_package: self.key_package.clone(),
            events: Vec::new(),
            incarnation: self.incarnation,
            disk: None,
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
        f: impl FnOnce(&mut Group, &SimProvider, &SledMlsStorage) -> Result<T, StepError>,
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

    /// Flush the store: what is committed now survives a power loss. A
    /// driver must do this before anything it encrypted leaves the process
    /// (the simulator does it before every publish), or a power loss would
    /// rewind a sender ratchet past a ciphertext already out.
    pub fn flush(&mut self) {
        let image = self
            .storage()
            .db()
            .export()
            .into_iter()
            .map(|(kind, name, entries)| (kind, name, entries.collect()))
            .collect();
        self.disk = Some(Disk {
            image,
            group_id: self.group_id.clone(),
            join_epoch: self.join_epoch,
            incarnation: self.incarnation,
            events: self.events.len(),
        });
    }

    /// Lose power: everything in memory, and every step committed since
    /// the last flush, is gone; the process restarts at `until` with fresh
    /// randomness from `seed`.
    pub fn power_loss(&mut self, until: u64, seed: [u8; 32]) -> Result<(), StepError> {
        let Some(disk) = &self.disk else {
            return Err(StepError::Storage(StorageError::Corrupt(
                "a power loss before the first flush".into(),
            )));
        };
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .map_err(|e| StepError::Storage(StorageError::from(e)))?;
        db.import(
            disk.image
                .iter()
                .map(|(kind, name, entries)| {
                    (kind.clone(), name.clone(), entries.clone().into_iter())
                })
                .collect(),
        );
        let storage = SledMlsStorage::from_db(db, self.storage().config())?;
        self.provider = KithProvider::with_crypto(storage, SeededCrypto::new(seed));
        self.group_id = disk.group_id.clone();
        self.join_epoch = disk.join_epoch;
        self.incarnation = disk.incarnation;
        self.events.truncate(disk.events);
        self.crash(until);
        Ok(())
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
        join: impl FnOnce(&SimProvider, &SledMlsStorage, Me<'_>) -> Result<Option<Group>, GroupError>,
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
        self.incarnation += 1;
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
/// Keys and each client's crypto randomness come from `rng`, so a seed
/// gives the same identities and the same bytes.
pub fn population(
    rng: &mut rand_chacha::ChaCha20Rng,
    count: usize,
    nodes: usize,
    now_ms: u64,
) -> Result<(IdentityCache, Vec<Client>), StepError> {
    use kith_engine::identity::{LocalWallet, UnsignedIdentityUpdate, generate_key_package};
    use openmls::prelude::{MlsMessageOut, tls_codec::Serialize as _};
    use rand_core::RngCore as _;

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
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut client = Client::new(index, wallet.inbox_id(), keys, index % nodes.max(1), seed)?;
        let key_package = generate_key_package(
            &client.provider,
            &client.keys,
            client.inbox,
            now_ms / 1000,
            KEY_PACKAGE_LIFETIME_SECS,
            false,
        )
        .map_err(|e| StepError::Group(e.into()))?;
        client.key_package = Some(
            MlsMessageOut::from(key_package)
                .tls_serialize_detached()
                .map_err(|e| StepError::Group(GroupError::Mls(e.to_string())))?,
        );
        // Flushed before the key package is uploaded.
        client.flush();
        clients.push(client);
    }
    Ok((identities, clients))
}
