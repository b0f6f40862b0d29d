//! Seals on stored rows: a keyed BLAKE3 MAC over the table, the key and the value,
//! appended to the value. The key lives beside the store file (`store.key`, 0600), not in
//! it, so a row changed in the store file, or moved to another key or table, is refused
//! when it is read. This is the record that a row was verified when it was written: a
//! start need not check every signature again, and every read still detects tampering
//! before anything uses the row.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::RngCore;
use zeroize::Zeroizing;

/// Bytes of MAC appended to every value.
pub const MAC_BYTES: usize = 16;

pub struct Sealer {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

/// Why the seal key cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path} is missing: restore it from the backup of the data directory")]
    Missing { path: String },
    #[error("{path} is readable by others (mode {mode:o}): chmod 600 it")]
    Loose { path: String, mode: u32 },
    #[error("{path} is not a store key")]
    Malformed { path: String },
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

impl Sealer {
    /// Reads the key at `path`; with `create`, makes a new one (0600) when it is missing.
    pub fn open(path: &Path, create: bool) -> Result<Sealer, KeyError> {
        let shown = path.display().to_string();
        let io = |e: std::io::Error| KeyError::Io {
            path: shown.clone(),
            reason: e.to_string(),
        };
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Loose { path: shown, mode });
                }
                let bytes = Zeroizing::new(std::fs::read(path).map_err(io)?);
                let key: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| KeyError::Malformed {
                            path: shown.clone(),
                        })?;
                Ok(Sealer {
                    key: Zeroizing::new(key),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut key = Zeroizing::new([0u8; 32]);
                rand::rng().fill_bytes(key.as_mut());
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                file.write_all(key.as_ref())
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                Ok(Sealer { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(KeyError::Missing { path: shown })
            }
            Err(e) => Err(io(e)),
        }
    }

    fn mac(&self, table: &str, key: &[u8], value: &[u8]) -> [u8; MAC_BYTES] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&(table.len() as u64).to_be_bytes());
        h.update(table.as_bytes());
        h.update(&(key.len() as u64).to_be_bytes());
        h.update(key);
        h.update(value);
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&h.finalize().as_bytes()[..MAC_BYTES]);
        out
    }

    /// The value with its seal.
    pub fn seal(&self, table: &str, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len() + MAC_BYTES);
        out.extend_from_slice(value);
        out.extend_from_slice(&self.mac(table, key, value));
        out
    }

    /// The value without its seal, if the seal holds.
    pub fn open_row<'a>(&self, table: &str, key: &[u8], sealed: &'a [u8]) -> Option<&'a [u8]> {
        let split = sealed.len().checked_sub(MAC_BYTES)?;
        let (value, mac) = sealed.split_at(split);
        let want = self.mac(table, key, value);
        // Constant time is not needed: the MAC guards against changes, not guesses.
        (mac == want).then_some(value)
    }
}
