//! What the transport tests share: a registered identity that makes key
//! packages and signs its requests.

#![allow(dead_code, unreachable_pub)]

use kith_engine::identity::{
    InstallationKeys, LocalWallet, UnsignedIdentityUpdate, generate_deniable_key_package,
    generate_key_package, upload_key, upload_tag,
};
use kith_transport::{
    client::{ClientError, DeliveryClient},
    node::{
        DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage, KeyPackageFetch,
        KeyPackageUpload, deniable_fetch_bytes, deniable_upload_bytes, fetch_signed_bytes,
        upload_signed_bytes,
    },
};
use openmls::prelude::MlsMessageOut;
use openmls_rust_crypto::OpenMlsRustCrypto;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

pub struct Identity {
    pub wallet: LocalWallet,
    pub keys: InstallationKeys,
}

impl Identity {
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        Self {
            wallet: LocalWallet::generate(&mut rng),
            keys: InstallationKeys::generate(&mut rng),
        }
    }

    pub async fn register(&self, client: &dyn DeliveryClient) {
        let request = UnsignedIdentityUpdate::add_installation(
            self.wallet.inbox_id(),
            &self.keys,
            1,
            now_ms(),
        );
        let signature = self
            .wallet
            .sign_personal(request.signature_text().as_bytes());
        let sequence = client
            .publish_identity_update(request.sign(signature, Some(&self.keys)))
            .await
            .expect("register");
        assert_eq!(sequence, 1);
    }

    pub fn key_package(&self, last_resort: bool) -> Vec<u8> {
        let kp = generate_key_package(
            &OpenMlsRustCrypto::default(),
            &self.keys,
            self.wallet.inbox_id(),
            now_ms() / 1000,
            30 * 24 * 3600,
            last_resort,
        )
        .expect("key package");
        MlsMessageOut::from(kp).to_bytes().expect("serialise")
    }

    /// Upload `one_time` packages and a last-resort one to `client`.
    pub async fn upload(
        &self,
        client: &dyn DeliveryClient,
        one_time: Vec<Vec<u8>>,
        last_resort: Vec<u8>,
    ) {
        let t = now_ms();
        let signed = upload_signed_bytes(t, &self.keys.id(), &one_time, Some(&last_resort));
        client
            .upload_key_packages(KeyPackageUpload {
                installation: self.keys.id(),
                signature: self.keys.sign(&signed).to_vec(),
                one_time,
                last_resort: Some(last_resort),
                timestamp_ms: t,
            })
            .await
            .expect("upload");
    }

    /// Fetch one package of `target` through `client`, signed as this
    /// identity.
    pub async fn fetch(&self, client: &dyn DeliveryClient, target: &Identity) -> FetchedKeyPackage {
        self.try_fetch(client, target).await.expect("fetch")
    }

    /// [`Identity::fetch`], or the node's refusal.
    pub async fn try_fetch(
        &self,
        client: &dyn DeliveryClient,
        target: &Identity,
    ) -> Result<FetchedKeyPackage, ClientError> {
        let t = now_ms();
        let targets = vec![target.keys.id()];
        let signed = fetch_signed_bytes(t, &self.wallet.inbox_id(), &self.keys.id(), &targets);
        let mut fetched = client
            .fetch_key_packages(KeyPackageFetch {
                signature: self.keys.sign(&signed).to_vec(),
                targets,
                requester_inbox: self.wallet.inbox_id(),
                requester: self.keys.id(),
                timestamp_ms: t,
            })
            .await?;
        assert_eq!(fetched.len(), 1);
        Ok(fetched.remove(0))
    }

    /// A deniable key package (its own leaf key, a pseudonym credential).
    pub fn deniable_package(&self, last_resort: bool) -> Vec<u8> {
        let made = generate_deniable_key_package(
            &OpenMlsRustCrypto::default(),
            &mut rand_core::OsRng,
            now_ms() / 1000,
            30 * 24 * 3600,
            last_resort,
        )
        .expect("deniable key package");
        MlsMessageOut::from(made.key_package)
            .to_bytes()
            .expect("serialise")
    }

    /// The MAC key this installation shares with the node `client` reaches.
    async fn mac_key(&self, client: &dyn DeliveryClient) -> [u8; 32] {
        let node_key = client.node_info().await.expect("node info").static_key;
        *upload_key(self.keys.identity_secret(), &node_key).expect("mac key")
    }

    /// Upload deniable packages to the node `client` reaches, MACed for it.
    pub async fn upload_deniable(
        &self,
        client: &dyn DeliveryClient,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) {
        let key = self.mac_key(client).await;
        let (t, inbox) = (now_ms(), self.wallet.inbox_id());
        let macd = deniable_upload_bytes(
            t,
            &inbox,
            &self.keys.id(),
            &one_time,
            last_resort.as_deref(),
        );
        client
            .upload_deniable_key_packages(DeniableKeyPackageUpload {
                inbox,
                installation: self.keys.id(),
                one_time,
                last_resort,
                timestamp_ms: t,
                mac: upload_tag(&key, &macd).to_vec(),
            })
            .await
            .expect("deniable upload");
    }

    /// Fetch `target`'s deniable packages through `client`, MACed for the
    /// node it reaches.
    pub async fn fetch_deniable(
        &self,
        client: &dyn DeliveryClient,
        target: &Identity,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        let key = self.mac_key(client).await;
        let (t, inbox) = (now_ms(), self.wallet.inbox_id());
        let macd = deniable_fetch_bytes(t, &inbox, &self.keys.id(), &target.wallet.inbox_id());
        client
            .fetch_deniable_key_packages(DeniableKeyPackageFetch {
                target: target.wallet.inbox_id(),
                requester_inbox: inbox,
                requester: self.keys.id(),
                timestamp_ms: t,
                mac: upload_tag(&key, &macd).to_vec(),
            })
            .await
    }
}
