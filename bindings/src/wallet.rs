//! [`Wallet`]: the key that owns an inbox, either a private key held here
//! or a foreign [`WalletSigner`] (a phone's wallet app, a hardware wallet)
//! that is handed the text to sign and returns the signature.

use std::sync::Arc;

use kith::{InboxId, LocalWallet};

use crate::{KithError, SignerError};

/// A wallet that signs outside this library.
///
/// It signs once per identity update (registering or revoking an
/// installation), never per message. It is called on a thread of its own,
/// so it may block while its user confirms.
#[uniffi::export(with_foreign)]
pub trait WalletSigner: Send + Sync {
    /// Sign `text` with EIP-191 `personal_sign` and return the 65-byte
    /// `r ‖ s ‖ v` signature (`v` 27 or 28, as Ethereum libraries give).
    fn sign_personal(&self, text: String) -> Result<Vec<u8>, SignerError>;
}

/// The wallet that owns an inbox; its address is the inbox id.
#[derive(uniffi::Object)]
pub struct Wallet {
    signer: Arc<dyn kith::WalletSigner>,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet")
            .field("address", &self.signer.inbox_id())
            .finish_non_exhaustive()
    }
}

impl Wallet {
    pub(crate) fn signer(&self) -> Arc<dyn kith::WalletSigner> {
        Arc::clone(&self.signer)
    }
}

#[uniffi::export]
impl Wallet {
    /// A wallet from a 32-byte secp256k1 private key in hex (with or
    /// without `0x`).
    #[uniffi::constructor]
    pub fn from_private_key(hex_key: String) -> Result<Arc<Self>, KithError> {
        let wallet = LocalWallet::from_private_key_hex(&hex_key)
            .map_err(|e| KithError::Wallet(e.to_string()))?;
        Ok(Arc::new(Self {
            signer: Arc::new(wallet),
        }))
    }

    /// A new random wallet, held in memory only: for tests and bots that
    /// keep no inbox across runs.
    #[uniffi::constructor]
    pub fn generate() -> Arc<Self> {
        Arc::new(Self {
            signer: Arc::new(LocalWallet::generate(&mut rand_core::OsRng)),
        })
    }

    /// The wallet at `address` (`0x` and 40 hex digits) whose signatures
    /// `signer` makes. A signature that is not `address`'s is refused
    /// before it is used.
    #[uniffi::constructor]
    pub fn from_signer(
        address: String,
        signer: Arc<dyn WalletSigner>,
    ) -> Result<Arc<Self>, KithError> {
        let inbox: InboxId = address
            .parse()
            .map_err(|e| KithError::InvalidInput(format!("wallet address {address:?}: {e}")))?;
        Ok(Arc::new(Self {
            signer: Arc::new(ForeignSigner { inbox, signer }),
        }))
    }

    /// The wallet's address, EIP-55 checksummed: the inbox id.
    pub fn address(&self) -> String {
        self.signer.inbox_id().to_string()
    }
}

/// A foreign [`WalletSigner`] as `kith` sees it.
struct ForeignSigner {
    inbox: InboxId,
    signer: Arc<dyn WalletSigner>,
}

#[async_trait::async_trait]
impl kith::WalletSigner for ForeignSigner {
    fn inbox_id(&self) -> InboxId {
        self.inbox
    }

    async fn sign_personal(&self, text: &str) -> Result<[u8; 65], String> {
        let signer = Arc::clone(&self.signer);
        let owned = text.to_owned();
        // The foreign call may block on its user; keep it off the workers.
        let signature = tokio::task::spawn_blocking(move || signer.sign_personal(owned))
            .await
            .map_err(|e| format!("the signer did not return: {e}"))?
            .map_err(|e| e.to_string())?;
        let signature: [u8; 65] = signature.as_slice().try_into().map_err(|_| {
            format!(
                "a signature is 65 bytes (r, s, v); the signer returned {}",
                signature.len()
            )
        })?;
        match kith_engine::identity::recover_signer(text.as_bytes(), &signature) {
            Ok(signer) if signer == self.inbox => Ok(signature),
            Ok(other) => Err(format!(
                "the signature is {other}'s, not {}'s: is the signer for another account?",
                self.inbox
            )),
            Err(e) => Err(format!("the signature does not verify: {e}")),
        }
    }
}
