//! The national key file through a rotation, so that a crash at any step leaves one key
//! to sign with and loses none.
//!
//! 1. The new key is written beside the current one, as `KEY.next` (0600).
//! 2. The rotation entry, signed with the current key, is committed to the store.
//! 3. The current key moves aside to `KEY.retired-<its public key>` (0600), and the new
//!    one takes its place.
//!
//! A start finds `KEY.next` after a crash: if the store holds the rotation to it, the
//! start finishes step 3; if not, the rotation never happened and the file is removed.

use std::path::{Path, PathBuf};

use crate::identity::{PublicKey, SecretKey};
use crate::replica::{Backing, Replica};

/// A failed step of a rotation, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("a rotation is under way ({0} exists): restart the node to finish it")]
    UnderWay(String),
}

fn file(path: &Path, reason: impl ToString) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Where the new key waits until its rotation is committed.
pub fn next_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

/// Where a rotated key is kept aside.
pub fn retired_path(key: &Path, public: &PublicKey) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(format!(".retired-{}", public.short()));
    PathBuf::from(name)
}

/// Step 1: makes the new key and writes it beside the current one.
pub fn begin(key: &Path, passphrase: Option<&str>) -> Result<SecretKey, Error> {
    let next = next_path(key);
    if next.exists() {
        return Err(Error::UnderWay(next.display().to_string()));
    }
    let new = SecretKey::generate(&mut rand::rng());
    new.save(&next, passphrase).map_err(|e| file(&next, e))?;
    Ok(new)
}

/// Step 3: keeps the current key aside and puts the new one in its place.
pub fn complete(key: &Path, current: &PublicKey) -> Result<(), Error> {
    let next = next_path(key);
    let aside = retired_path(key, current);
    std::fs::rename(key, &aside).map_err(|e| file(&aside, e))?;
    std::fs::rename(&next, key).map_err(|e| file(key, e))?;
    if let Some(dir) = key.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| file(dir, e))?;
    }
    Ok(())
}

/// Before the key is read at start: a crash between the two renames of step 3 left the
/// new key alone; it takes its place.
pub fn recover(key: &Path) -> Result<(), Error> {
    let next = next_path(key);
    if !key.exists() && next.exists() {
        std::fs::rename(&next, key).map_err(|e| file(key, e))?;
    }
    Ok(())
}

/// At start: finishes a rotation that a crash interrupted after its commit, and returns
/// the new key; or removes the new key of a rotation that was never committed.
pub fn finish<B: Backing>(
    key: &Path,
    passphrase: Option<&str>,
    current: &SecretKey,
    replica: &Replica<B>,
) -> Result<Option<SecretKey>, Error> {
    let next = next_path(key);
    if !next.exists() {
        return Ok(None);
    }
    let new = SecretKey::load(&next, passphrase).map_err(|e| file(&next, e))?;
    let (rotated, retired) = replica.keys();
    if retired.contains_key(&current.public()) && rotated.contains_key(&new.public()) {
        complete(key, &current.public())?;
        tracing::info!(key = %new.public(), "a key rotation that a restart interrupted is finished");
        Ok(Some(new))
    } else {
        std::fs::remove_file(&next).map_err(|e| file(&next, e))?;
        tracing::warn!("a key rotation that was never committed is abandoned");
        Ok(None)
    }
}
