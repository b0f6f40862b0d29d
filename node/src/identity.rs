//! National keys, signatures with domain separation, and node certificates.
//!
//! A state's national ed25519 key signs every entry it contributes and the certificate of
//! each node it runs. This module owns the key types, their one canonical text form
//! (`ed25519:<64 hex digits>`), the key file format (plain or passphrase-protected, always
//! created 0600) and the certificate encoding. It does no network IO and imports no libp2p:
//! a node's peer id is carried as opaque bytes.

use std::collections::HashMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use zeroize::Zeroizing;

/// Domain of an entry signature bound to the network's name alone (rules version 1).
pub const DOMAIN_ENTRY: &str = "spocnet/entry/v1";
/// Domain of a node certificate signature bound to the network's name alone.
pub const DOMAIN_NODE_CERT: &str = "spocnet/node-cert/v1";
/// Domain of an entry signature bound to the genesis hash, which follows it.
pub const DOMAIN_ENTRY_GENESIS: &str = "spocnet/entry/v2";
/// Domain of a node certificate signature bound to the genesis hash, which follows it.
pub const DOMAIN_NODE_CERT_GENESIS: &str = "spocnet/node-cert/v2";

/// What a network's entry and certificate signatures are made for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The network's name, which entries and certificates carry (charters of rules
    /// version 1). Another network of the same name and keys can replay them.
    Name,
    /// The hash of the network's genesis charter, its identity (rules version 2 on):
    /// nothing signed for one network verifies in another, even one with the same name
    /// and the same national keys, such as a staging network beside production.
    Genesis([u8; 32]),
}

impl Scope {
    /// The domain of this network's entry signatures.
    pub fn entry_domain(&self) -> String {
        match self {
            Scope::Name => DOMAIN_ENTRY.to_owned(),
            Scope::Genesis(hash) => format!("{DOMAIN_ENTRY_GENESIS}/{}", hex::encode(hash)),
        }
    }

    /// The domain of this network's node certificate signatures.
    pub fn certificate_domain(&self) -> String {
        match self {
            Scope::Name => DOMAIN_NODE_CERT.to_owned(),
            Scope::Genesis(hash) => format!("{DOMAIN_NODE_CERT_GENESIS}/{}", hex::encode(hash)),
        }
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Name => f.write_str("Scope::Name"),
            Scope::Genesis(hash) => write!(f, "Scope::Genesis({})", hex::encode(&hash[..8])),
        }
    }
}

const KEY_FILE_MAGIC: &str = "spocnet-key-v1";
const TEXT_PREFIX: &str = "ed25519:";
const CERT_VERSION: u8 = 1;
const MAX_CERT_BYTES: usize = 1024;

/// The furthest ahead of a verifier's clock that a node certificate may expire. Nodes issue
/// certificates for 30 days and renew them; a longer one would outlive its node's removal
/// from the charter, or a stolen node key, for as long as it says.
pub const MAX_CERTIFICATE_VALIDITY_MS: u64 = 90 * 24 * 3600 * 1000;

/// Errors of keys, key files and certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed public key {0:?}: expected ed25519: followed by 64 hex digits")]
    MalformedKey(String),
    #[error("weak public key {0}")]
    WeakKey(PublicKey),
    #[error("bad signature")]
    BadSignature,
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("key file {path} is protected: a passphrase is needed")]
    PassphraseNeeded { path: String },
    #[error("key file {path}: wrong passphrase")]
    WrongPassphrase { path: String },
    #[error("key file {path} is readable by others (mode {mode:o}): chmod 600 it")]
    KeyFileMode { path: String, mode: u32 },
    #[error("malformed node certificate: {0}")]
    MalformedCertificate(&'static str),
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A national public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses 32 bytes, refusing points that are not valid or are weak.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, Error> {
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| Error::MalformedKey(hex::encode(bytes)))?;
        if key.is_weak() {
            return Err(Error::WeakKey(PublicKey(bytes)));
        }
        Ok(PublicKey(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The dalek key; `from_bytes` already proved the point decodes.
    pub(crate) fn verifying_key(&self) -> Result<VerifyingKey, Error> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| Error::BadSignature)
    }

    /// Verifies a signature over `domain || message`, strictly.
    pub fn verify(&self, domain: &str, message: &[u8], signature: &Signature) -> Result<(), Error> {
        verify_with(&self.verifying_key()?, domain, message, signature)
    }

    /// A short form for logs and tables: the first 8 hex digits.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TEXT_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl FromStr for PublicKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let malformed = || Error::MalformedKey(s.to_owned());
        let hex_part = s.strip_prefix(TEXT_PREFIX).ok_or_else(malformed)?;
        if hex_part.len() != 64 || hex_part.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(malformed());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| malformed())?;
        PublicKey::from_bytes(bytes).map_err(|_| malformed())
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..4]))
    }
}

/// A national secret key. It never appears in `Debug` output or logs.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public: {})", self.public())
    }
}

impl SecretKey {
    /// Generates a key from the given randomness (an OS generator in production, a seeded
    /// one in tests).
    pub fn generate(rng: &mut dyn RngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        SecretKey(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `domain || message`.
    pub fn sign(&self, domain: &str, message: &[u8]) -> Signature {
        Signature(self.0.sign(&domain_message(domain, message)).to_bytes())
    }

    /// The raw 32-byte seed, for deriving a libp2p keypair from the node key file.
    pub fn seed_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// Writes the key to a new file with mode 0600; refuses to overwrite an existing file.
    pub fn save(&self, path: &Path, passphrase: Option<&str>) -> Result<(), Error> {
        let body = match passphrase {
            None => {
                let secret = Zeroizing::new(self.0.to_bytes());
                let hex = Zeroizing::new(hex::encode(secret.as_ref()));
                Zeroizing::new(format!("{KEY_FILE_MAGIC}\nplain\n{}\n", hex.as_str()))
            }
            Some(pass) => {
                let mut salt = [0u8; 16];
                let mut nonce = [0u8; 12];
                rand::rng().fill_bytes(&mut salt);
                rand::rng().fill_bytes(&mut nonce);
                let kdf = Kdf::default();
                let cipher = sealed_cipher(pass, &salt, kdf).map_err(|reason| Error::KeyFile {
                    path: path.display().to_string(),
                    reason,
                })?;
                use chacha20poly1305::aead::Aead;
                let secret = Zeroizing::new(self.0.to_bytes());
                let sealed = cipher
                    .encrypt(chacha20poly1305::Nonce::from_slice(&nonce), secret.as_ref())
                    .map_err(|_| Error::KeyFile {
                        path: path.display().to_string(),
                        reason: "encryption failed".into(),
                    })?;
                Zeroizing::new(format!(
                    "{KEY_FILE_MAGIC}\nargon2id-chacha20poly1305 {kdf}\n{}\n{}\n{}\n",
                    hex::encode(salt),
                    hex::encode(nonce),
                    hex::encode(sealed)
                ))
            }
        };
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.write_all(body.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Reads a key file. Refuses files that others may read, and protected files without
    /// the right passphrase.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<Self, Error> {
        let shown = path.display().to_string();
        let io = |source| Error::Io {
            path: shown.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyFileMode { path: shown, mode });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        let bad = |reason: &str| Error::KeyFile {
            path: shown.clone(),
            reason: reason.to_owned(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_MAGIC) {
            return Err(bad("not a spocnet key file"));
        }
        let hex32 = |s: Option<&str>, what: &str| -> Result<Zeroizing<Vec<u8>>, Error> {
            let s = s.ok_or_else(|| bad(&format!("missing {what}")))?;
            hex::decode(s.trim())
                .map(Zeroizing::new)
                .map_err(|_| bad(&format!("malformed {what}")))
        };
        let protection = lines.next().unwrap_or_default();
        let (scheme, params) = protection.split_once(' ').unwrap_or((protection, ""));
        let secret: Zeroizing<Vec<u8>> = match scheme {
            "plain" => hex32(lines.next(), "secret")?,
            "argon2id-chacha20poly1305" => {
                // Files written before the parameters were recorded used the defaults.
                let kdf = if params.is_empty() {
                    Kdf::default()
                } else {
                    params.parse().map_err(|r: String| bad(&r))?
                };
                let pass = passphrase.ok_or_else(|| Error::PassphraseNeeded {
                    path: shown.clone(),
                })?;
                let salt = hex32(lines.next(), "salt")?;
                let nonce = hex32(lines.next(), "nonce")?;
                let sealed = hex32(lines.next(), "ciphertext")?;
                if nonce.len() != 12 {
                    return Err(bad("malformed nonce"));
                }
                let cipher = sealed_cipher(pass, &salt, kdf).map_err(|r| bad(&r))?;
                use chacha20poly1305::aead::Aead;
                Zeroizing::new(
                    cipher
                        .decrypt(chacha20poly1305::Nonce::from_slice(&nonce), sealed.as_ref())
                        .map_err(|_| Error::WrongPassphrase {
                            path: shown.clone(),
                        })?,
                )
            }
            _ => return Err(bad("unknown protection")),
        };
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            secret
                .as_slice()
                .try_into()
                .map_err(|_| bad("secret is not 32 bytes"))?,
        );
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }
}

/// The Argon2id parameters a protected key file was sealed with, recorded in the file so
/// that a later change of the defaults still opens it: memory in KiB, passes, lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Kdf {
    m: u32,
    t: u32,
    p: u32,
}

impl Kdf {
    /// The most memory a key file may ask for: 1 GiB, so that a damaged or hostile file
    /// cannot make the node allocate without bound.
    const MAX_M: u32 = 1 << 20;
    const MAX_T: u32 = 64;
    const MAX_P: u32 = 16;
}

impl Default for Kdf {
    fn default() -> Self {
        Kdf {
            m: argon2::Params::DEFAULT_M_COST,
            t: argon2::Params::DEFAULT_T_COST,
            p: argon2::Params::DEFAULT_P_COST,
        }
    }
}

impl fmt::Display for Kdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={},t={},p={}", self.m, self.t, self.p)
    }
}

impl FromStr for Kdf {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("malformed key derivation parameters {s:?}");
        let mut kdf = Kdf { m: 0, t: 0, p: 0 };
        let mut seen = 0;
        for part in s.split(',') {
            let (name, value) = part.split_once('=').ok_or_else(bad)?;
            let value: u32 = value.parse().map_err(|_| bad())?;
            let (slot, bit) = match name {
                "m" => (&mut kdf.m, 1),
                "t" => (&mut kdf.t, 2),
                "p" => (&mut kdf.p, 4),
                _ => return Err(bad()),
            };
            *slot = value;
            seen |= bit;
        }
        if seen != 7 {
            return Err(bad());
        }
        if kdf.m > Kdf::MAX_M || kdf.t > Kdf::MAX_T || kdf.p > Kdf::MAX_P {
            return Err(format!(
                "key derivation parameters {s} are beyond the limits"
            ));
        }
        Ok(kdf)
    }
}

fn sealed_cipher(
    passphrase: &str,
    salt: &[u8],
    kdf: Kdf,
) -> Result<chacha20poly1305::ChaCha20Poly1305, String> {
    use chacha20poly1305::KeyInit;
    let mut key = Zeroizing::new([0u8; 32]);
    let params = argon2::Params::new(kdf.m, kdf.t, kdf.p, Some(32))
        .map_err(|e| format!("key derivation parameters {kdf}: {e}"))?;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
        .map_err(|e| format!("key derivation failed: {e}"))?;
    chacha20poly1305::ChaCha20Poly1305::new_from_slice(key.as_ref())
        .map_err(|_| "key derivation failed".to_owned())
}

/// Verifies a signature over `domain || message` with a key already decompressed.
fn verify_with(
    key: &VerifyingKey,
    domain: &str,
    message: &[u8],
    signature: &Signature,
) -> Result<(), Error> {
    let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify_strict(&domain_message(domain, message), &sig)
        .map_err(|_| Error::BadSignature)
}

fn domain_message(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.len() + 1 + message.len());
    out.extend_from_slice(domain.as_bytes());
    out.push(0);
    out.extend_from_slice(message);
    out
}

/// Verifies many signatures strictly, spread over the cores; returns each verdict.
///
/// Each signature gets the same strict check as `PublicKey::verify`. Batch verification
/// (`ed25519_dalek::verify_batch`) is faster, but it accepts signatures that the strict
/// check refuses (a small-order `R`), so a verdict would depend on which other entries
/// arrived in the same batch, and honest nodes could disagree for good.
///
/// Each distinct key is decompressed once for the whole batch: a batch holds the entries
/// of a few dozen authors, and decompressing a point costs a fifth of a check.
pub fn verify_many(items: &[(&PublicKey, &str, &[u8], &Signature)]) -> Vec<bool> {
    let mut keys: HashMap<PublicKey, Option<VerifyingKey>> = HashMap::new();
    for (key, ..) in items {
        keys.entry(**key)
            .or_insert_with(|| key.verifying_key().ok());
    }
    let keys = &keys;
    let one = |(key, domain, message, signature): &(&PublicKey, &str, &[u8], &Signature)| {
        keys.get(*key)
            .and_then(Option::as_ref)
            .is_some_and(|k| verify_with(k, domain, message, signature).is_ok())
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(8);
    if items.len() < 64 || threads < 2 {
        return items.iter().map(one).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<bool>>()))
            .collect();
        workers
            .into_iter()
            .zip(items.chunks(chunk))
            .flat_map(|(w, part)| {
                // A worker that panicked gives no verdicts: check its part again here.
                w.join().unwrap_or_else(|_| part.iter().map(one).collect())
            })
            .collect()
    })
}

/// A national key's statement that a libp2p peer id is one of its nodes, until `not_after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertificate {
    pub network: String,
    pub peer_id: Vec<u8>,
    pub not_after_ms: u64,
    pub issuer: PublicKey,
    pub signature: Signature,
}

impl NodeCertificate {
    /// A certificate for the network named `network`, signed for `scope`.
    pub fn issue(
        key: &SecretKey,
        network: &str,
        scope: &Scope,
        peer_id: &[u8],
        not_after_ms: u64,
    ) -> NodeCertificate {
        let body = cert_body(network, peer_id, not_after_ms, &key.public());
        NodeCertificate {
            network: network.to_owned(),
            peer_id: peer_id.to_vec(),
            not_after_ms,
            issuer: key.public(),
            signature: key.sign(&scope.certificate_domain(), &body),
        }
    }

    /// Checks the signature (made for `scope`: with a genesis, a certificate of another
    /// network with the same name fails here), then the network's name and the peer id, and then the expiry
    /// at `now_ms`: refuses a certificate that has expired or that expires more than
    /// [`MAX_CERTIFICATE_VALIDITY_MS`] after `now_ms`. Nothing the certificate says is
    /// compared before its signature holds, and time comes last, so that only a genuine
    /// certificate is refused for its time.
    pub fn verify(
        &self,
        network: &str,
        scope: &Scope,
        peer_id: &[u8],
        now_ms: u64,
    ) -> Result<(), CertificateFault> {
        let body = cert_body(
            &self.network,
            &self.peer_id,
            self.not_after_ms,
            &self.issuer,
        );
        if self
            .issuer
            .verify(&scope.certificate_domain(), &body, &self.signature)
            .is_err()
        {
            return Err(CertificateFault::BadSignature);
        }
        if self.network != network {
            return Err(CertificateFault::OtherNetwork);
        }
        if self.peer_id != peer_id {
            return Err(CertificateFault::OtherPeer);
        }
        if now_ms > self.not_after_ms {
            return Err(CertificateFault::Expired);
        }
        if self.not_after_ms - now_ms > MAX_CERTIFICATE_VALIDITY_MS {
            return Err(CertificateFault::TooFarAhead);
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![CERT_VERSION];
        out.extend_from_slice(&cert_body(
            &self.network,
            &self.peer_id,
            self.not_after_ms,
            &self.issuer,
        ));
        out.extend_from_slice(&self.signature.0);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<NodeCertificate, Error> {
        if bytes.len() > MAX_CERT_BYTES {
            return Err(Error::MalformedCertificate("too large"));
        }
        let mut r = crate::codec::Reader::new(bytes);
        let m = Error::MalformedCertificate;
        if r.u8().map_err(|_| m("empty"))? != CERT_VERSION {
            return Err(m("unknown version"));
        }
        let network = r.str16().map_err(|_| m("network"))?;
        let peer_id = r.bytes16().map_err(|_| m("peer id"))?.to_vec();
        let not_after_ms = r.u64().map_err(|_| m("expiry"))?;
        let issuer = PublicKey::from_bytes(r.array32().map_err(|_| m("issuer"))?)
            .map_err(|_| m("issuer key"))?;
        let signature = Signature(r.array64().map_err(|_| m("signature"))?);
        r.finish().map_err(|_| m("trailing bytes"))?;
        Ok(NodeCertificate {
            network,
            peer_id,
            not_after_ms,
            issuer,
            signature,
        })
    }
}

/// Why a node certificate does not verify: a fixed set of reasons, so that a reason never
/// carries what a peer wrote (reasons become map keys and metric labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateFault {
    OtherNetwork,
    OtherPeer,
    BadSignature,
    Expired,
    TooFarAhead,
}

impl CertificateFault {
    /// The one-line reason.
    pub fn reason(self) -> &'static str {
        match self {
            CertificateFault::OtherNetwork => "certificate is for another network",
            CertificateFault::OtherPeer => "certificate names another peer id",
            CertificateFault::BadSignature => "certificate signature does not verify",
            CertificateFault::Expired => "certificate has expired",
            CertificateFault::TooFarAhead => "certificate expires too far ahead",
        }
    }

    /// Whether only the certificate's time is wrong: the node behind it is genuine, and a
    /// fresh certificate (or a corrected clock) lets it in.
    pub fn is_about_time(self) -> bool {
        matches!(
            self,
            CertificateFault::Expired | CertificateFault::TooFarAhead
        )
    }
}

impl fmt::Display for CertificateFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for CertificateFault {}

fn cert_body(network: &str, peer_id: &[u8], not_after_ms: u64, issuer: &PublicKey) -> Vec<u8> {
    let mut w = crate::codec::Writer::default();
    w.str16(network);
    w.bytes16(peer_id);
    w.u64(not_after_ms);
    w.raw(issuer.as_bytes());
    w.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn key(seed: u64) -> SecretKey {
        SecretKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn text_form_round_trips_and_rejects_variants() {
        let k = key(1).public();
        let text = k.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.parse::<PublicKey>().unwrap(), k);
        assert!(text.to_uppercase().parse::<PublicKey>().is_err());
        assert!(text[..text.len() - 2].parse::<PublicKey>().is_err());
        assert!("ed25519:zz".parse::<PublicKey>().is_err());
        // The identity point is a weak key.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert!(PublicKey::from_bytes(weak).is_err());
    }

    #[test]
    fn signatures_are_domain_separated() {
        let k = key(2);
        let sig = k.sign(DOMAIN_ENTRY, b"hello");
        k.public().verify(DOMAIN_ENTRY, b"hello", &sig).unwrap();
        assert!(k.public().verify(DOMAIN_NODE_CERT, b"hello", &sig).is_err());
        assert!(k.public().verify(DOMAIN_ENTRY, b"hellO", &sig).is_err());
        assert!(
            key(3)
                .public()
                .verify(DOMAIN_ENTRY, b"hello", &sig)
                .is_err()
        );
    }

    #[test]
    fn many_verdicts_match_single_ones() {
        // A batch as a node sees one: few authors, many entries each.
        let keys: Vec<SecretKey> = (0..7).map(key).collect();
        let signer = |i: usize| &keys[i % keys.len()];
        let mut pubs: Vec<PublicKey> = (0..100).map(|i| signer(i).public()).collect();
        let msgs: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10]).collect();
        let mut sigs: Vec<Signature> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| signer(i).sign(DOMAIN_ENTRY, m))
            .collect();
        sigs[3].0[5] ^= 1;
        sigs[97].0[40] ^= 1;
        // A good signature under the name of another author of the batch.
        pubs[50] = keys[0].public();
        let items: Vec<_> = pubs
            .iter()
            .zip(&msgs)
            .zip(&sigs)
            .map(|((p, m), s)| (p, DOMAIN_ENTRY, m.as_slice(), s))
            .collect();
        let verdicts = verify_many(&items);
        assert_eq!(verdicts.len(), 100);
        for (i, v) in verdicts.iter().enumerate() {
            let single = pubs[i].verify(DOMAIN_ENTRY, &msgs[i], &sigs[i]).is_ok();
            assert_eq!(*v, single, "signature {i}");
            assert_eq!(*v, ![3, 50, 97].contains(&i), "signature {i}");
        }
    }

    #[test]
    fn key_files_are_private_and_protected() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(4);
        let plain = dir.path().join("plain.key");
        k.save(&plain, None).unwrap();
        let mode = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SecretKey::load(&plain, None).unwrap().public(), k.public());
        assert!(k.save(&plain, None).is_err(), "never overwrites");

        let sealed = dir.path().join("sealed.key");
        k.save(&sealed, Some("correct horse")).unwrap();
        let text = std::fs::read_to_string(&sealed).unwrap();
        assert!(!text.contains(&hex::encode(k.seed_bytes().as_ref())));
        assert!(matches!(
            SecretKey::load(&sealed, None),
            Err(Error::PassphraseNeeded { .. })
        ));
        assert!(matches!(
            SecretKey::load(&sealed, Some("wrong")),
            Err(Error::WrongPassphrase { .. })
        ));
        assert_eq!(
            SecretKey::load(&sealed, Some("correct horse"))
                .unwrap()
                .public(),
            k.public()
        );

        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretKey::load(&plain, None).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!format!("{k:?}").contains(&hex::encode(k.seed_bytes().as_ref())));
    }

    #[test]
    fn a_protected_key_file_records_its_key_derivation_and_older_files_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(6);
        let sealed = dir.path().join("sealed.key");
        k.save(&sealed, Some("pass")).unwrap();
        let text = std::fs::read_to_string(&sealed).unwrap();
        let defaults = format!("argon2id-chacha20poly1305 {}", Kdf::default());
        assert_eq!(text.lines().nth(1), Some(defaults.as_str()));
        assert_eq!(Kdf::default().to_string(), "m=19456,t=2,p=1");
        // Rewrites the protection line, keeping the rest.
        let with = |line: &str| {
            let path = dir.path().join(format!("{}.key", line.len()));
            let rest: Vec<&str> = text.lines().skip(2).collect();
            let body = format!("{KEY_FILE_MAGIC}\n{line}\n{}\n", rest.join("\n"));
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            SecretKey::load(&path, Some("pass"))
        };
        // A file of the first form, without parameters, was sealed with the defaults.
        let old = with("argon2id-chacha20poly1305").unwrap();
        assert_eq!(old.public(), k.public());
        // The recorded parameters are the ones used: others derive another key.
        assert!(matches!(
            with("argon2id-chacha20poly1305 m=8192,t=2,p=1"),
            Err(Error::WrongPassphrase { .. })
        ));
        for (line, reason) in [
            (
                "argon2id-chacha20poly1305 m=4194304,t=2,p=1",
                "beyond the limits",
            ),
            (
                "argon2id-chacha20poly1305 m=19456,t=2",
                "malformed key derivation",
            ),
            (
                "argon2id-chacha20poly1305 m=x,t=2,p=1",
                "malformed key derivation",
            ),
        ] {
            let err = with(line).unwrap_err().to_string();
            assert!(err.contains(reason), "{line}: {err}");
        }
    }

    /// The network these tests certify for.
    const G: Scope = Scope::Genesis([7; 32]);

    #[test]
    fn certificates_bind_network_peer_and_expiry() {
        let k = key(5);
        let cert = NodeCertificate::issue(&k, "net", &G, b"peer-1", 1_000);
        let decoded = NodeCertificate::decode(&cert.encode()).unwrap();
        assert_eq!(decoded, cert);
        decoded.verify("net", &G, b"peer-1", 999).unwrap();
        assert!(decoded.verify("other", &G, b"peer-1", 999).is_err());
        // A network with the same name and another genesis (staging beside production).
        let staging = Scope::Genesis([8; 32]);
        assert_eq!(
            decoded.verify("net", &staging, b"peer-1", 999),
            Err(CertificateFault::BadSignature)
        );
        assert!(decoded.verify("net", &G, b"peer-2", 999).is_err());
        assert!(decoded.verify("net", &G, b"peer-1", 1_001).is_err());
        let mut bytes = cert.encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = NodeCertificate::decode(&bytes).unwrap();
        assert!(tampered.verify("net", &G, b"peer-1", 999).is_err());
        assert!(NodeCertificate::decode(&bytes[..10]).is_err());
    }

    #[test]
    fn a_certificate_is_valid_until_its_expiry_and_not_a_millisecond_longer() {
        let cert = NodeCertificate::issue(&key(6), "net", &G, b"peer-1", 1_000);
        cert.verify("net", &G, b"peer-1", 1_000).unwrap();
        let fault = cert.verify("net", &G, b"peer-1", 1_001).unwrap_err();
        assert_eq!(fault, CertificateFault::Expired);
        assert_eq!(fault.to_string(), "certificate has expired");
        assert!(fault.is_about_time());
    }

    #[test]
    fn a_certificate_expiring_more_than_ninety_days_ahead_is_refused() {
        let now = 1_796_083_200_000;
        let k = key(7);
        let cap = now + MAX_CERTIFICATE_VALIDITY_MS;
        NodeCertificate::issue(&k, "net", &G, b"peer-1", cap)
            .verify("net", &G, b"peer-1", now)
            .unwrap();
        let beyond = NodeCertificate::issue(&k, "net", &G, b"peer-1", cap + 1);
        let fault = beyond.verify("net", &G, b"peer-1", now).unwrap_err();
        assert_eq!(fault, CertificateFault::TooFarAhead);
        assert_eq!(fault.to_string(), "certificate expires too far ahead");
        assert!(fault.is_about_time());
        // The cap follows the verifier's clock: a millisecond later the same one is fine.
        beyond.verify("net", &G, b"peer-1", now + 1).unwrap();
        let forever = NodeCertificate::issue(&k, "net", &G, b"peer-1", u64::MAX);
        let fault = forever.verify("net", &G, b"peer-1", now).unwrap_err();
        assert_eq!(fault, CertificateFault::TooFarAhead);
    }

    #[test]
    fn only_genuine_certificates_are_refused_for_their_time() {
        let k = key(8);
        let mut forged = NodeCertificate::issue(&k, "net", &G, b"peer-1", 1_000);
        forged.signature.0[0] ^= 1;
        // Expired too, but refused for its signature.
        let fault = forged.verify("net", &G, b"peer-1", 5_000).unwrap_err();
        assert_eq!(fault, CertificateFault::BadSignature);
        assert!(!fault.is_about_time());
        // The reason never repeats what the peer wrote.
        let other = NodeCertificate::issue(&k, "other\nnetwork", &G, b"peer-1", 1_000);
        let fault = other.verify("net", &G, b"peer-1", 500).unwrap_err();
        assert_eq!(fault, CertificateFault::OtherNetwork);
        assert_eq!(fault.to_string(), "certificate is for another network");
    }
}
