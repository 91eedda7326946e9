//! The wallet of a bot or a CLI user, kept as a hex private key in
//! `DIR/wallet.key`: made on first start, read on every later one.
//!
//! The echo bot and `kith-chat` both keep their identity this way, so that
//! restarting them on the same directory reopens the same inbox. The key is
//! the whole identity: anyone who reads the file can register installations
//! for the inbox, which is why it is created readable by its owner only.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use kith::LocalWallet;
use rand_core::{OsRng, RngCore as _};
use zeroize::Zeroizing;

/// The name of the key file inside a data directory.
pub const WALLET_FILE: &str = "wallet.key";

/// A random 32-byte string is a valid secp256k1 scalar except with
/// probability about 2^-128; a handful of tries only guards against a
/// broken random source, which then shows as an error instead of a loop.
const GENERATE_ATTEMPTS: u32 = 8;

/// Why the wallet file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletFileError {
    /// The file or its directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file does not hold a private key.
    #[error(
        "{path} does not hold a valid private key ({reason}); restore it or use another data directory"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why the key was refused.
        reason: String,
    },
    /// A key was given to import, but the directory already has another one.
    #[error(
        "{path} already holds the key of another inbox ({existing}); use another data directory to import this key"
    )]
    OtherKey {
        /// The file.
        path: PathBuf,
        /// The inbox of the key that is there.
        existing: kith::InboxId,
    },
    /// The key given to import is not a private key.
    #[error("the key to import is not a 32-byte hex private key: {0}")]
    BadImport(String),
    /// The OS random source failed.
    #[error("cannot generate a key: {0}")]
    Random(String),
}

/// The wallet kept in `dir/wallet.key`, generated and written there if the
/// file does not exist yet (the directory is created too).
pub fn load_or_create(dir: &Path) -> Result<LocalWallet, WalletFileError> {
    load_or_import(dir, None)
}

/// Like [`load_or_create`], but on first use takes `import` (hex, with or
/// without `0x`) instead of a new random key. If the file exists, `import`
/// must be its key: a directory never changes inbox.
pub fn load_or_import(dir: &Path, import: Option<&str>) -> Result<LocalWallet, WalletFileError> {
    let path = dir.join(WALLET_FILE);
    let imported = import
        .map(|hex_key| {
            LocalWallet::from_private_key_hex(hex_key.trim())
                .map(|wallet| (wallet, normalize(hex_key)))
                .map_err(|e| WalletFileError::BadImport(e.to_string()))
        })
        .transpose()?;
    match fs::read_to_string(&path) {
        Ok(contents) => {
            let contents = Zeroizing::new(contents);
            let wallet = LocalWallet::from_private_key_hex(contents.trim()).map_err(|e| {
                WalletFileError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            if let Some((import, _)) = imported
                && import.inbox_id() != wallet.inbox_id()
            {
                return Err(WalletFileError::OtherKey {
                    path,
                    existing: wallet.inbox_id(),
                });
            }
            Ok(wallet)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (wallet, hex_key) = match imported {
                Some(imported) => imported,
                None => generate()?,
            };
            write_atomically(dir, &path, &hex_key)?;
            Ok(wallet)
        }
        Err(source) => Err(WalletFileError::Io { path, source }),
    }
}

fn normalize(hex_key: &str) -> Zeroizing<String> {
    let trimmed = hex_key.trim();
    Zeroizing::new(
        trimmed
            .strip_prefix("0x")
            .unwrap_or(trimmed)
            .to_ascii_lowercase(),
    )
}

/// A new key from the OS. `LocalWallet::generate` cannot hand its key
/// out, so the bytes are drawn here and validated by the wallet.
fn generate() -> Result<(LocalWallet, Zeroizing<String>), WalletFileError> {
    for _ in 0..GENERATE_ATTEMPTS {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng
            .try_fill_bytes(bytes.as_mut())
            .map_err(|e| WalletFileError::Random(e.to_string()))?;
        let hex_key = Zeroizing::new(hex::encode(bytes.as_ref()));
        if let Ok(wallet) = LocalWallet::from_private_key_hex(&hex_key) {
            return Ok((wallet, hex_key));
        }
    }
    Err(WalletFileError::Random(format!(
        "{GENERATE_ATTEMPTS} random draws were all invalid keys"
    )))
}

/// Write the key to a temporary file (owner-only), flush it to disk and
/// rename it into place, so that a crash leaves either no key file or a
/// whole one: a half-written key would lock the inbox away for good.
fn write_atomically(dir: &Path, path: &Path, hex_key: &str) -> Result<(), WalletFileError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| WalletFileError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let temporary = dir.join(format!("{WALLET_FILE}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary).map_err(io(&temporary))?;
    file.write_all(hex_key.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(io(&temporary))?;
    drop(file);
    fs::rename(&temporary, path).map_err(io(path))?;
    // The rename itself lives in the directory: flush it too, where the
    // platform lets a directory be opened.
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let first = load_or_create(dir.path()).expect("create");
        let second = load_or_create(dir.path()).expect("reopen");
        assert_eq!(first.inbox_id(), second.inbox_id());
        assert!(!dir.path().join("wallet.key.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(WALLET_FILE))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "owner-only");
        }
    }

    #[test]
    fn an_imported_key_is_kept_and_a_different_one_refused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let key = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
        let wallet = load_or_import(dir.path(), Some(key)).expect("import");
        let again = load_or_create(dir.path()).expect("reopen");
        assert_eq!(wallet.inbox_id(), again.inbox_id());
        load_or_import(dir.path(), Some(key)).expect("the same key again is fine");

        let other = "0x".to_owned() + &"11".repeat(32);
        assert!(matches!(
            load_or_import(dir.path(), Some(&other)),
            Err(WalletFileError::OtherKey { existing, .. }) if existing == wallet.inbox_id()
        ));
        assert!(matches!(
            load_or_import(dir.path(), Some("not hex")),
            Err(WalletFileError::BadImport(_))
        ));
    }

    #[test]
    fn a_damaged_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().expect("temporary directory");
        fs::write(dir.path().join(WALLET_FILE), "abc").expect("write");
        let error = load_or_create(dir.path()).expect_err("corrupt");
        assert!(matches!(error, WalletFileError::Corrupt { .. }));
        assert!(error.to_string().contains("wallet.key"), "{error}");
        assert_eq!(
            fs::read_to_string(dir.path().join(WALLET_FILE)).expect("read"),
            "abc"
        );
    }
}
