//! Helpers shared by the storage integration tests: members with their own
//! on-disk `KithProvider`, and a wire between them that goes through real
//! TLS-serialised bytes.

#![allow(dead_code, unreachable_pub)]

pub mod faulty;

use std::path::{Path, PathBuf};

use kith_storage::KithProvider;
use openmls::prelude::{tls_codec::Deserialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;

/// Errors in test helpers: anything, with its message.
pub type TestError = Box<dyn std::error::Error>;

pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// One client: a name, its own sled database, and its signature key.
pub struct Member {
    pub name: String,
    pub path: PathBuf,
    pub provider: KithProvider,
    pub signer: SignatureKeyPair,
    pub credential: CredentialWithKey,
}

impl Member {
    /// A new member whose database lives in `dir/name`.
    pub fn new(name: &str, dir: &Path) -> Self {
        let path = dir.join(name);
        let provider = KithProvider::open(&path).expect("open provider");
        let signer =
            SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).expect("signature key");
        signer.store(provider.storage()).expect("store signer");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self {
            name: name.to_owned(),
            path,
            provider,
            signer,
            credential,
        }
    }

    /// Close the database and open it again from disk, reading the signer
    /// back from storage: nothing but the files survives.
    pub fn reopen(self) -> Self {
        let Member {
            name,
            path,
            provider,
            signer,
            credential,
        } = self;
        let public = signer.public().to_vec();
        drop(signer);
        provider.storage().flush().expect("flush");
        drop(provider);
        let provider = KithProvider::open(&path).expect("reopen provider");
        let signer = SignatureKeyPair::read(
            provider.storage(),
            &public,
            CIPHERSUITE.signature_algorithm(),
        )
        .expect("signer persisted");
        Self {
            name,
            path,
            provider,
            signer,
            credential,
        }
    }

    pub fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .expect("key package")
            .key_package()
            .clone()
    }

    pub fn create_group(&self, group_id: &[u8]) -> MlsGroup {
        MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &create_config(),
            GroupId::from_slice(group_id),
            self.credential.clone(),
        )
        .expect("create group")
    }

    pub fn join(&self, welcome: &[u8]) -> MlsGroup {
        let welcome = MlsMessageIn::tls_deserialize_exact(welcome)
            .expect("welcome parses")
            .extract();
        let MlsMessageBodyIn::Welcome(welcome) = welcome else {
            panic!("expected a welcome");
        };
        self.provider
            .storage()
            .step(|| {
                let staged =
                    StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, None)?;
                Ok::<_, TestError>(staged.into_group(&self.provider)?)
            })
            .expect("join by welcome")
    }

    pub fn load(&self, group_id: &[u8]) -> MlsGroup {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(group_id))
            .expect("load")
            .expect("group is stored")
    }

    /// Encrypt `text` to the group, as one step.
    pub fn send(&self, group: &mut MlsGroup, text: &str) -> Vec<u8> {
        self.provider
            .storage()
            .step(|| {
                Ok::<_, TestError>(group.create_message(
                    &self.provider,
                    &self.signer,
                    text.as_bytes(),
                )?)
            })
            .map(|msg| wire(&msg))
            .expect("send")
    }

    /// Merge this member's own pending commit, as one step.
    pub fn merge_own(&self, group: &mut MlsGroup) {
        self.provider
            .storage()
            .step(|| {
                group.merge_pending_commit(&self.provider)?;
                Ok::<_, TestError>(())
            })
            .expect("merge own commit");
    }

    /// Process one message from the wire, as one step: application messages
    /// are returned, proposals stored, commits merged.
    pub fn receive(&self, group: &mut MlsGroup, bytes: &[u8]) -> Received {
        self.provider
            .storage()
            .step(|| receive(&self.provider, group, bytes))
            .expect("receive")
    }

    pub fn leaf_of(&self, group: &MlsGroup) -> LeafNodeIndex {
        group
            .members()
            .find(|m| m.credential == self.credential.credential)
            .expect("is a member")
            .index
    }
}

/// What processing one message did.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Application(Vec<u8>),
    ProposalStored,
    CommitMerged,
}

pub fn receive<P: openmls::storage::OpenMlsProvider>(
    provider: &P,
    group: &mut MlsGroup,
    bytes: &[u8],
) -> Result<Received, TestError>
where
    P::StorageError: 'static,
{
    let message = MlsMessageIn::tls_deserialize_exact(bytes)?.try_into_protocol_message()?;
    let processed = group.process_message(provider, message)?;
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(app) => {
            Ok(Received::Application(app.into_bytes()))
        }
        ProcessedMessageContent::ProposalMessage(proposal) => {
            group.store_pending_proposal(provider.storage(), *proposal)?;
            Ok(Received::ProposalStored)
        }
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            group.merge_staged_commit(provider, *staged)?;
            Ok(Received::CommitMerged)
        }
        other => Err(format!("unexpected content {other:?}").into()),
    }
}

pub fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .build()
}

pub fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .build()
}

/// The bytes that would go on the wire.
pub fn wire(message: &MlsMessageOut) -> Vec<u8> {
    message.to_bytes().expect("serialise")
}

pub fn text(received: Received) -> String {
    match received {
        Received::Application(bytes) => String::from_utf8(bytes).expect("utf-8"),
        other => panic!("expected an application message, got {other:?}"),
    }
}

/// Everyone in `to` decrypts `bytes` from `from` and reads `expected`.
pub fn deliver(to: &mut [(&Member, &mut MlsGroup)], bytes: &[u8], expected: &str) {
    for (member, group) in to.iter_mut() {
        assert_eq!(
            text(member.receive(group, bytes)),
            expected,
            "{} read the wrong plaintext",
            member.name
        );
    }
}

/// A client generic over its provider, for tests that compare providers.
pub struct Client<'p, P> {
    pub provider: &'p P,
    pub signer: SignatureKeyPair,
    pub credential: CredentialWithKey,
}

impl<'p, P: openmls::storage::OpenMlsProvider> Client<'p, P>
where
    P::StorageError: 'static,
{
    pub fn new(name: &str, provider: &'p P) -> Self {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).expect("signer");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self {
            provider,
            signer,
            credential,
        }
    }

    pub fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .build(
                CIPHERSUITE,
                self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .expect("key package")
            .key_package()
            .clone()
    }
}

/// Alice and Bob in a group, on two providers of type `P`.
pub fn pair<'p, P: openmls::storage::OpenMlsProvider>(
    alice: &Client<'p, P>,
    bob: &Client<'p, P>,
) -> (MlsGroup, MlsGroup)
where
    P::StorageError: 'static,
{
    pair_with(alice, bob, &[])
}

/// Alice and Bob in a group with `others` added alongside Bob (their
/// Welcomes are never processed).
pub fn pair_with<'p, P: openmls::storage::OpenMlsProvider>(
    alice: &Client<'p, P>,
    bob: &Client<'p, P>,
    others: &[KeyPackage],
) -> (MlsGroup, MlsGroup)
where
    P::StorageError: 'static,
{
    let mut key_packages = vec![bob.key_package()];
    key_packages.extend_from_slice(others);
    let mut a = MlsGroup::new(
        alice.provider,
        &alice.signer,
        &create_config(),
        alice.credential.clone(),
    )
    .expect("create");
    let (_, welcome, _) = a
        .add_members(alice.provider, &alice.signer, &key_packages)
        .expect("add bob");
    a.merge_pending_commit(alice.provider).expect("merge");
    let welcome = MlsMessageIn::tls_deserialize_exact(wire(&welcome).as_slice())
        .expect("parse")
        .extract();
    let MlsMessageBodyIn::Welcome(welcome) = welcome else {
        panic!("expected a welcome")
    };
    let b = StagedWelcome::new_from_welcome(bob.provider, &join_config(), welcome, None)
        .expect("stage")
        .into_group(bob.provider)
        .expect("join");
    (a, b)
}
