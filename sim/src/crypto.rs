//! Deterministic crypto for the simulator: [`SeededCrypto`], RustCrypto
//! with every random byte drawn from a seed.
//!
//! OpenMLS takes randomness in two places: through the provider's
//! `OpenMlsRand` (group ids, path secrets, leaf keys, nonces, message ids)
//! and inside the crypto provider's HPKE, whose encryption draws its
//! ephemeral key from the operating system. Here the first comes from a
//! ChaCha20 stream, and HPKE's from a hash of a key drawn from that stream
//! and of the encryption's inputs (recipient key, info, AAD, plaintext):
//! OpenMLS encrypts a commit's path secrets on rayon's threads, in an order
//! that varies, so HPKE must not draw from a shared stream. A seed thus
//! gives the same bytes on every run: the same commits, Welcomes and
//! ciphertexts, and the same decisions taken on their hashes. Everything
//! else (hashing, signing, AEAD, decapsulation) is RustCrypto's,
//! unchanged.
//!
//! Never use it outside tests: its keys are only as secret as the seed.

use std::sync::{Mutex, PoisonError};

use hpke_rs::{Hpke, Mode};
use hpke_rs_crypto::{
    HpkeCrypto, HpkeTestRng, TryCryptoRng, TryRng,
    error::Error as HpkeError,
    types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm},
};
use hpke_rs_rust_crypto::HpkeRustCrypto;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::{
    crypto::OpenMlsCrypto,
    random::OpenMlsRand,
    types::{
        AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeAeadType, HpkeCiphertext,
        HpkeConfig, HpkeKdfType, HpkeKemType, HpkeKeyPair, KemOutput, SignatureScheme,
    },
};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};
use tls_codec::SecretVLBytes;

/// RustCrypto, with its randomness (and its HPKE's) drawn from a seed.
pub struct SeededCrypto {
    inner: RustCrypto,
    rng: Mutex<ChaCha20Rng>,
    /// Keys the HPKE randomness of each encryption.
    hpke_key: [u8; 32],
}

impl std::fmt::Debug for SeededCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededCrypto").finish_non_exhaustive()
    }
}

impl SeededCrypto {
    /// Crypto whose every random byte comes from `seed`.
    pub fn new(seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut hpke_key = [0u8; 32];
        rng.fill_bytes(&mut hpke_key);
        Self {
            inner: RustCrypto::default(),
            rng: Mutex::new(rng),
            hpke_key,
        }
    }

    fn fill(&self, out: &mut [u8]) {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fill_bytes(out);
    }

    /// An HPKE context whose ephemeral randomness is keyed by this
    /// provider's seed and bound to the encryption's `inputs`: the same
    /// whichever thread asks, in whichever order.
    fn hpke(&self, config: HpkeConfig, inputs: &[&[u8]]) -> Result<Hpke<SeededHpke>, CryptoError> {
        let mut hash = Sha256::new()
            .chain_update(b"kith sim hpke randomness")
            .chain_update(self.hpke_key);
        for input in inputs {
            hash.update((input.len() as u64).to_be_bytes());
            hash.update(input);
        }
        let seed: [u8; 32] = hash.finalize().into();
        NEXT_HPKE_SEED.with(|next| next.set(Some(seed)));
        let hpke =
            Hpke::<SeededHpke>::new(Mode::Base, kem(config.0)?, kdf(config.1), aead(config.2)?);
        NEXT_HPKE_SEED.with(|next| next.set(None));
        Ok(hpke)
    }
}

impl OpenMlsRand for SeededCrypto {
    type Error = std::convert::Infallible;

    fn random_array<const N: usize>(&self) -> Result<[u8; N], Self::Error> {
        let mut out = [0u8; N];
        self.fill(&mut out);
        Ok(out)
    }

    fn random_vec(&self, len: usize) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![0u8; len];
        self.fill(&mut out);
        Ok(out)
    }
}

fn kem(kem: HpkeKemType) -> Result<KemAlgorithm, CryptoError> {
    match kem {
        HpkeKemType::DhKem25519 => Ok(KemAlgorithm::DhKem25519),
        HpkeKemType::DhKemP256 => Ok(KemAlgorithm::DhKemP256),
        _ => Err(CryptoError::UnsupportedCiphersuite),
    }
}

fn kdf(kdf: HpkeKdfType) -> KdfAlgorithm {
    match kdf {
        HpkeKdfType::HkdfSha256 => KdfAlgorithm::HkdfSha256,
        HpkeKdfType::HkdfSha384 => KdfAlgorithm::HkdfSha384,
        HpkeKdfType::HkdfSha512 => KdfAlgorithm::HkdfSha512,
    }
}

fn aead(aead: HpkeAeadType) -> Result<AeadAlgorithm, CryptoError> {
    match aead {
        HpkeAeadType::AesGcm128 => Ok(AeadAlgorithm::Aes128Gcm),
        HpkeAeadType::AesGcm256 => Ok(AeadAlgorithm::Aes256Gcm),
        HpkeAeadType::ChaCha20Poly1305 => Ok(AeadAlgorithm::ChaCha20Poly1305),
        HpkeAeadType::Export => Err(CryptoError::UnsupportedAeadAlgorithm),
    }
}

impl OpenMlsCrypto for SeededCrypto {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        self.inner.supports(ciphersuite)
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        self.inner.supported_ciphersuites()
    }

    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hkdf_extract(hash_type, salt, ikm)
    }

    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hmac(hash_type, key, message)
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hkdf_expand(hash_type, prk, info, okm_len)
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.hash(hash_type, data)
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        match alg {
            SignatureScheme::ED25519 => {
                let mut seed = [0u8; 32];
                self.fill(&mut seed);
                let key = ed25519_dalek::SigningKey::from_bytes(&seed);
                Ok((
                    key.to_bytes().to_vec(),
                    key.verifying_key().to_bytes().to_vec(),
                ))
            }
            _ => Err(CryptoError::UnsupportedSignatureScheme),
        }
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner.verify_signature(alg, data, pk, signature)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.sign(alg, data, key)
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        let (kem_output, ciphertext) = self
            .hpke(config, &[pk_r, info, aad, ptxt])?
            .seal(&pk_r.into(), info, aad, ptxt, None, None, None)
            .map_err(|_| CryptoError::CryptoLibraryError)?;
        Ok(HpkeCiphertext {
            kem_output: kem_output.into(),
            ciphertext: ciphertext.into(),
        })
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.hpke_open(config, input, sk_r, info, aad)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        let (kem_output, context) = self
            .hpke(
                config,
                &[
                    pk_r,
                    info,
                    exporter_context,
                    &(exporter_length as u64).to_be_bytes(),
                ],
            )?
            .setup_sender(&pk_r.into(), info, None, None, None)
            .map_err(|_| CryptoError::SenderSetupError)?;
        let secret = context
            .export(exporter_context, exporter_length)
            .map_err(|_| CryptoError::ExporterError)?;
        Ok((kem_output, secret.into()))
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.inner.hpke_setup_receiver_and_export(
            config,
            enc,
            sk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> Result<HpkeKeyPair, CryptoError> {
        self.inner.derive_hpke_keypair(config, ikm)
    }
}

thread_local! {
    /// The seed of the next HPKE context made on this thread: hpke-rs asks
    /// its crypto backend for a fresh PRNG through a function that takes no
    /// argument, so the seed travels beside the call.
    static NEXT_HPKE_SEED: std::cell::Cell<Option<[u8; 32]>> = const { std::cell::Cell::new(None) };
}

/// hpke-rs's RustCrypto backend, with a PRNG seeded by [`SeededCrypto`].
#[derive(Debug)]
struct SeededHpke;

/// A ChaCha20 stream for hpke-rs.
struct SeededPrng(ChaCha20Rng);

impl zeroize::Zeroize for SeededPrng {
    fn zeroize(&mut self) {
        // The stream is re-seeded for every HPKE context; nothing to wipe
        // that the seed does not already give away.
    }
}

impl TryRng for SeededPrng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl TryCryptoRng for SeededPrng {}

impl HpkeTestRng for SeededPrng {
    type Error = std::convert::Infallible;

    fn try_fill_test_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }

    fn seed(&mut self, seed: &[u8]) {
        let mut bytes = [0u8; 32];
        for (b, s) in bytes.iter_mut().zip(seed) {
            *b = *s;
        }
        self.0 = ChaCha20Rng::from_seed(bytes);
    }
}

impl HpkeCrypto for SeededHpke {
    type HpkePrng = SeededPrng;

    fn name() -> String {
        "seeded RustCrypto".into()
    }

    fn supports_kdf(alg: KdfAlgorithm) -> Result<(), HpkeError> {
        HpkeRustCrypto::supports_kdf(alg)
    }

    fn supports_kem(alg: KemAlgorithm) -> Result<(), HpkeError> {
        HpkeRustCrypto::supports_kem(alg)
    }

    fn supports_aead(alg: AeadAlgorithm) -> Result<(), HpkeError> {
        HpkeRustCrypto::supports_aead(alg)
    }

    fn prng() -> Self::HpkePrng {
        // Outside `SeededCrypto::hpke` (a context cloned for its key
        // schedule) no randomness is drawn: a fixed seed does.
        let seed = NEXT_HPKE_SEED.with(|next| next.get()).unwrap_or([0; 32]);
        SeededPrng(ChaCha20Rng::from_seed(seed))
    }

    fn kdf_extract(alg: KdfAlgorithm, salt: &[u8], ikm: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::kdf_extract(alg, salt, ikm)
    }

    fn kdf_expand(
        alg: KdfAlgorithm,
        prk: &[u8],
        info: &[u8],
        output_size: usize,
    ) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::kdf_expand(alg, prk, info, output_size)
    }

    fn dh(alg: KemAlgorithm, pk: &[u8], sk: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::dh(alg, pk, sk)
    }

    fn secret_to_public(alg: KemAlgorithm, sk: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::secret_to_public(alg, sk)
    }

    fn kem_key_gen(
        _: KemAlgorithm,
        _: &mut Self::HpkePrng,
    ) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
        // Only the post-quantum KEMs use it; Kith's suite is DH-KEM X25519.
        Err(HpkeError::UnsupportedKemOperation)
    }

    fn kem_key_gen_derand(alg: KemAlgorithm, seed: &[u8]) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
        HpkeRustCrypto::kem_key_gen_derand(alg, seed)
    }

    fn kem_encaps(
        _: KemAlgorithm,
        _: &[u8],
        _: &mut Self::HpkePrng,
    ) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
        Err(HpkeError::UnsupportedKemOperation)
    }

    fn kem_decaps(alg: KemAlgorithm, ct: &[u8], sk_r: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::kem_decaps(alg, ct, sk_r)
    }

    fn dh_validate_sk(alg: KemAlgorithm, sk: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::dh_validate_sk(alg, sk)
    }

    fn aead_seal(
        alg: AeadAlgorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        msg: &[u8],
    ) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::aead_seal(alg, key, nonce, aad, msg)
    }

    fn aead_open(
        alg: AeadAlgorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        msg: &[u8],
    ) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::aead_open(alg, key, nonce, aad, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: HpkeConfig = HpkeConfig(
        HpkeKemType::DhKem25519,
        HpkeKdfType::HkdfSha256,
        HpkeAeadType::AesGcm128,
    );

    #[test]
    fn the_same_seed_seals_the_same_bytes_and_they_open() {
        let receiver = SeededCrypto::new([1; 32]);
        let keys = receiver
            .derive_hpke_keypair(CONFIG, &[2; 32])
            .expect("keys");
        let seal = |seed| {
            SeededCrypto::new(seed)
                .hpke_seal(CONFIG, keys.public.as_slice(), b"info", b"aad", b"secret")
                .expect("seal")
        };
        let (one, two, other) = (seal([3; 32]), seal([3; 32]), seal([4; 32]));
        assert_eq!(one, two, "same seed, same ciphertext");
        assert_ne!(one.kem_output, other.kem_output);
        let opened = receiver
            .hpke_open(CONFIG, &one, keys.private.as_ref(), b"info", b"aad")
            .expect("open");
        assert_eq!(opened, b"secret");
    }

    /// OpenMLS seals a commit's path secrets on several threads: the
    /// bytes must not depend on which seal runs first.
    #[test]
    fn seals_do_not_depend_on_their_order() {
        let keys = SeededCrypto::new([1; 32])
            .derive_hpke_keypair(CONFIG, &[2; 32])
            .expect("keys");
        let seal = |crypto: &SeededCrypto, plaintext: &[u8]| {
            crypto
                .hpke_seal(CONFIG, keys.public.as_slice(), b"info", b"aad", plaintext)
                .expect("seal")
        };
        let (first, second) = (SeededCrypto::new([3; 32]), SeededCrypto::new([3; 32]));
        let (a1, b1) = (seal(&first, b"a"), seal(&first, b"b"));
        let (b2, a2) = (seal(&second, b"b"), seal(&second, b"a"));
        assert_eq!((a1.clone(), b1.clone()), (a2, b2));
        assert_ne!(
            a1.kem_output, b1.kem_output,
            "each seal its own ephemeral key"
        );
    }

    #[test]
    fn randomness_follows_the_seed() {
        let (a, b) = (SeededCrypto::new([5; 32]), SeededCrypto::new([5; 32]));
        assert_eq!(a.random_vec(40).ok(), b.random_vec(40).ok());
        let next: Result<[u8; 16], _> = a.random_array();
        assert_ne!(
            next.ok(),
            a.random_array::<16>().ok(),
            "a stream, not a constant"
        );
    }
}
