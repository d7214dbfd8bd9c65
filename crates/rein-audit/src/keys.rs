//! The Ed25519 key that signs checkpoints: created on first use with mode 0600, identified by
//! the first eight bytes of the SHA-256 of its public key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::AuditError;
use crate::merkle::{hex, unhex};

/// A public key as rein prints it: `ed25519:<hex>`.
pub fn format_public(key: &VerifyingKey) -> String {
    format!("ed25519:{}", hex(key.as_bytes()))
}

/// Reads a public key printed by `rein audit key` (with or without the `ed25519:` prefix).
pub fn parse_public(text: &str) -> Result<VerifyingKey, AuditError> {
    let hex_text = text.trim().trim_start_matches("ed25519:");
    let bytes: [u8; 32] = unhex(hex_text)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            AuditError::Key("a public key is 64 hex digits, optionally after `ed25519:`".into())
        })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| AuditError::Key(format!("not an Ed25519 public key: {e}")))
}

/// The id of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes())[..8])
}

/// Loads the signing key at `path`, creating it (mode 0600) if it does not exist. A key file
/// that others can read is refused.
///
/// Many processes may start on a new state directory at once: a new key is written whole to a
/// file of its own, then linked into place, which fails if another process got there first (its
/// key is then read). No process ever reads a key file that is still being written.
pub(crate) fn load_or_create(path: &Path) -> Result<SigningKey, AuditError> {
    let io = |e: std::io::Error| AuditError::Io {
        path: path.display().to_string(),
        source: e,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(AuditError::Key(format!(
                    "{} can be read by others (mode {mode:o}); run `chmod 600` on it",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(path).map_err(io)?;
            let bytes: [u8; 32] = unhex(text.trim())
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    AuditError::Key(format!("{} does not hold a signing key", path.display()))
                })?;
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed)
                .map_err(|e| AuditError::Key(format!("no randomness for a new key: {e}")))?;
            let key = SigningKey::from_bytes(&seed);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let mut nonce = [0u8; 8];
            getrandom::fill(&mut nonce)
                .map_err(|e| AuditError::Key(format!("no randomness for a new key: {e}")))?;
            let tmp = path.with_extension(format!("new-{}", hex(&nonce)));
            let written = (|| {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(format!("{}\n", hex(&seed)).as_bytes())?;
                file.sync_all()?;
                std::fs::hard_link(&tmp, path)
            })();
            let _ = std::fs::remove_file(&tmp);
            match written {
                Ok(()) => Ok(key),
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(path),
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

/// Signs a message.
pub(crate) fn sign(key: &SigningKey, message: &[u8]) -> String {
    hex(&key.sign(message).to_bytes())
}

/// Checks a hex signature.
pub(crate) fn verify(key: &VerifyingKey, message: &[u8], signature: &str) -> bool {
    let Some(bytes) = unhex(signature).and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
        return false;
    };
    key.verify(message, &Signature::from_bytes(&bytes)).is_ok()
}
