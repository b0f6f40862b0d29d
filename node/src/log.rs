//! Signed entries, their logs, their deterministic validation, and equivocation proofs.
//!
//! Every write is an entry in an append-only log that belongs to one author (a national
//! key) and one incarnation of that author's node. An entry's validity depends only on the
//! entry, the charter and the entry's causal past, so every honest node reaches the same
//! verdict whatever the order in which entries arrive. This module does no IO.

use std::fmt;

use automerge::{ActorId, Change};

use crate::charter::Charter;
use crate::codec::{Reader, Writer};
use crate::docs::DocId;
use crate::identity::{PublicKey, Scope, SecretKey, Signature};

/// The largest encoded entry: well under gossipsub's 64 KiB default.
pub const MAX_ENTRY_BYTES: usize = 60 * 1024;
/// The encoding of an entry under the genesis charter.
const ENTRY_VERSION: u8 = 1;
/// The encoding of an entry that names a later version of the charter or a rotated key:
/// the same fields, then the version and the flags. An entry under the genesis charter
/// with no flag is always encoded in version 1, so that each entry has one encoding and
/// the entries signed before amendments existed keep their bytes and hashes.
const ENTRY_VERSION_CHARTER: u8 = 2;
/// The flag of an entry signed with a key that a rotation introduced.
pub const FLAG_ROTATED_KEY: u8 = 1;
const PROOF_VERSION: u8 = 1;

/// The hash that names an entry: BLAKE3 over its encoded bytes, signature included.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryHash(pub [u8; 32]);

impl fmt::Display for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryHash({})", &hex::encode(self.0)[..12])
    }
}

/// One log: an author and one incarnation of its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogId {
    pub author: PublicKey,
    pub incarnation: u32,
}

impl LogId {
    /// The Automerge actor of every change in this log: the author's key, then the
    /// incarnation, so a change cannot claim another author and two incarnations never
    /// share an Automerge (actor, seq).
    pub fn actor(&self) -> ActorId {
        let mut bytes = Vec::with_capacity(36);
        bytes.extend_from_slice(self.author.as_bytes());
        bytes.extend_from_slice(&self.incarnation.to_be_bytes());
        ActorId::from(bytes)
    }

    /// Reads the log id back from an actor, if the actor has that shape.
    pub fn from_actor(actor: &ActorId) -> Option<LogId> {
        let bytes = actor.to_bytes();
        if bytes.len() != 36 {
            return None;
        }
        let author: [u8; 32] = bytes[..32].try_into().ok()?;
        let inc: [u8; 4] = bytes[32..].try_into().ok()?;
        Some(LogId {
            author: PublicKey::from_bytes(author).ok()?,
            incarnation: u32::from_be_bytes(inc),
        })
    }
}

/// The fields an author signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub network: String,
    pub author: PublicKey,
    pub incarnation: u32,
    pub seq: u64,
    pub prev: Option<EntryHash>,
    pub timestamp_ms: u64,
    pub doc: DocId,
    pub change: Vec<u8>,
    /// The version of the charter the entry is judged under: its author's charter in
    /// force when it wrote it. Every node judges the entry under that version once it
    /// holds it, so the verdict does not depend on which amendments a node has seen.
    pub charter: u32,
    /// [`FLAG_ROTATED_KEY`]: the author's key came by a rotation, which a node that has
    /// not seen it yet waits for, instead of refusing an unknown author.
    pub flags: u8,
}

impl Entry {
    pub fn log(&self) -> LogId {
        LogId {
            author: self.author,
            incarnation: self.incarnation,
        }
    }

    fn body(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.str16(&self.network);
        w.raw(self.author.as_bytes());
        w.u32(self.incarnation);
        w.u64(self.seq);
        match &self.prev {
            None => w.u8(0),
            Some(h) => {
                w.u8(1);
                w.raw(&h.0);
            }
        }
        w.u64(self.timestamp_ms);
        w.str16(self.doc.as_str());
        w.bytes32(&self.change);
        if self.charter != 0 || self.flags != 0 {
            w.u32(self.charter);
            w.u8(self.flags);
        }
        w.into_inner()
    }

    /// Signs the entry with the author's key, for `scope` (`Charter::scope`).
    pub fn sign(self, key: &SecretKey, scope: &Scope) -> SignedEntry {
        let body = self.body();
        let signature = key.sign(&scope.entry_domain(), &body);
        SignedEntry::assemble(self, body, signature)
    }
}

/// An entry with its signature, its encoded bytes and its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEntry {
    pub entry: Entry,
    pub signature: Signature,
    bytes: Vec<u8>,
    hash: EntryHash,
    body_len: usize,
}

/// Why bytes are not an entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("entry of {0} bytes is over the limit of {MAX_ENTRY_BYTES}")]
    TooLarge(usize),
    #[error("malformed entry: {0}")]
    Malformed(String),
}

impl SignedEntry {
    fn assemble(entry: Entry, body: Vec<u8>, signature: Signature) -> SignedEntry {
        let mut bytes = Vec::with_capacity(1 + body.len() + 64);
        bytes.push(if entry.charter == 0 && entry.flags == 0 {
            ENTRY_VERSION
        } else {
            ENTRY_VERSION_CHARTER
        });
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&signature.0);
        let hash = EntryHash(*blake3::hash(&bytes).as_bytes());
        SignedEntry {
            entry,
            signature,
            body_len: body.len(),
            bytes,
            hash,
        }
    }

    pub fn hash(&self) -> EntryHash {
        self.hash
    }

    /// The encoded entry, as stored and sent.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The signed body (without the version byte and signature).
    pub fn body(&self) -> &[u8] {
        &self.bytes[1..1 + self.body_len]
    }

    /// Decodes an entry, refusing anything over `MAX_ENTRY_BYTES` before reading it.
    /// Decoding checks the form only: `validate` checks the meaning.
    pub fn decode(bytes: &[u8]) -> Result<SignedEntry, DecodeError> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let m = |what: &str| DecodeError::Malformed(what.to_owned());
        let mut r = Reader::new(bytes);
        let version = r.u8().map_err(|_| m("empty"))?;
        if version != ENTRY_VERSION && version != ENTRY_VERSION_CHARTER {
            return Err(m("unknown version"));
        }
        let network = r.str16().map_err(|_| m("network"))?;
        let author = PublicKey::from_bytes(r.array32().map_err(|_| m("author"))?)
            .map_err(|_| m("author key"))?;
        let incarnation = r.u32().map_err(|_| m("incarnation"))?;
        let seq = r.u64().map_err(|_| m("seq"))?;
        let prev = match r.u8().map_err(|_| m("prev"))? {
            0 => None,
            1 => Some(EntryHash(r.array32().map_err(|_| m("prev"))?)),
            _ => return Err(m("prev tag")),
        };
        let timestamp_ms = r.u64().map_err(|_| m("timestamp"))?;
        let doc: DocId = r
            .str16()
            .map_err(|_| m("doc"))?
            .parse()
            .map_err(|e: crate::docs::DocIdError| m(&e.to_string()))?;
        let change = r.bytes32().map_err(|_| m("change"))?.to_vec();
        let (charter, flags) = if version == ENTRY_VERSION_CHARTER {
            let charter = r.u32().map_err(|_| m("charter version"))?;
            let flags = r.u8().map_err(|_| m("flags"))?;
            if flags & !FLAG_ROTATED_KEY != 0 {
                return Err(m("unknown flags"));
            }
            if charter == 0 && flags == 0 {
                return Err(m(
                    "an entry of the genesis charter with no flag in version 2",
                ));
            }
            (charter, flags)
        } else {
            (0, 0)
        };
        let body_len = bytes.len() - 1 - r.remaining();
        let signature = Signature(r.array64().map_err(|_| m("signature"))?);
        r.finish().map_err(|_| m("trailing bytes"))?;
        let entry = Entry {
            network,
            author,
            incarnation,
            seq,
            prev,
            timestamp_ms,
            doc,
            change,
            charter,
            flags,
        };
        Ok(SignedEntry {
            entry,
            signature,
            bytes: bytes.to_vec(),
            hash: EntryHash(*blake3::hash(bytes).as_bytes()),
            body_len,
        })
    }

    /// Checks the signature alone, as made for `scope` (`Charter::scope`).
    pub fn verify_signature(&self, scope: &Scope) -> Result<(), Invalid> {
        self.entry
            .author
            .verify(&scope.entry_domain(), self.body(), &self.signature)
            .map_err(|_| Invalid::BadSignature)
    }
}

/// Why an entry is refused. Every honest node gives the same verdict on the same entry.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Invalid {
    #[error("bad signature")]
    BadSignature,
    #[error("entry is for network {found:?}, not {expected:?}")]
    WrongNetwork { expected: String, found: String },
    #[error("author {0} is not a participant of the charter")]
    UnknownAuthor(String),
    #[error(
        "the key {key} was rotated or revoked before this entry (log {incarnation}, seq {seq})"
    )]
    KeyRetired {
        key: String,
        incarnation: u32,
        seq: u64,
    },
    #[error("seq gap: expected seq {expected}, got {found}")]
    SeqGap { expected: u64, found: u64 },
    #[error("prev hash does not match the log's entry {seq}")]
    WrongPrev { seq: u64 },
    #[error("timestamp {found} is earlier than the previous entry's {prev}")]
    TimestampBeforePrev { prev: u64, found: u64 },
    #[error("timestamp {found} is earlier than a change it depends on, made at {past} s")]
    TimestampBeforePast { past: i64, found: u64 },
    #[error("the change's time {change} s is not the entry's timestamp {entry} ms")]
    ChangeTime { change: i64, entry: u64 },
    #[error("change actor is not the author's key and incarnation")]
    ActorMismatch,
    #[error("malformed change: {0}")]
    MalformedChange(String),
    #[error("change depends on changes of another document")]
    ForeignDeps,
    #[error("rule: {0}")]
    Rule(String),
    #[error("author equivocated at seq {seq} of this log")]
    Equivocated { seq: u64 },
}

impl Invalid {
    /// Whether a peer that sends such an entry is at fault. An entry of a log cut by an
    /// equivocation proof, or of a key retired after it, was valid when an honest peer
    /// took it in and relayed it.
    pub fn blames_sender(&self) -> bool {
        !matches!(
            self,
            Invalid::Equivocated { .. } | Invalid::KeyRetired { .. }
        )
    }

    /// A short, stable reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::BadSignature => "bad_signature",
            Invalid::WrongNetwork { .. } => "wrong_network",
            Invalid::UnknownAuthor(_) => "unknown_author",
            Invalid::KeyRetired { .. } => "key_retired",
            Invalid::SeqGap { .. } => "seq_gap",
            Invalid::WrongPrev { .. } => "wrong_prev",
            Invalid::TimestampBeforePrev { .. } => "timestamp_before_prev",
            Invalid::TimestampBeforePast { .. } => "timestamp_before_past",
            Invalid::ChangeTime { .. } => "change_time",
            Invalid::ActorMismatch => "actor_mismatch",
            Invalid::MalformedChange(_) => "malformed_change",
            Invalid::ForeignDeps => "foreign_deps",
            Invalid::Rule(_) => "rule",
            Invalid::Equivocated { .. } => "equivocated",
        }
    }
}

/// What validation needs to know of the previous entry of a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    pub seq: u64,
    pub hash: EntryHash,
    pub timestamp_ms: u64,
}

impl From<&SignedEntry> for Tip {
    fn from(e: &SignedEntry) -> Self {
        Tip {
            seq: e.entry.seq,
            hash: e.hash(),
            timestamp_ms: e.entry.timestamp_ms,
        }
    }
}

/// Checks what the entry alone decides, except the signature (checked in batches by the
/// caller), and returns the decoded change. What depends on the charter is checked by
/// [`check_author`], under the version the entry names.
pub fn check_intrinsic(entry: &SignedEntry, network: &str) -> Result<Change, Invalid> {
    let e = &entry.entry;
    if e.network != network {
        return Err(Invalid::WrongNetwork {
            expected: network.to_owned(),
            found: e.network.clone(),
        });
    }
    if e.seq == 0 {
        return Err(Invalid::SeqGap {
            expected: 1,
            found: 0,
        });
    }
    if (e.seq == 1) != e.prev.is_none() {
        return Err(Invalid::WrongPrev { seq: e.seq - 1 });
    }
    let change = Change::from_bytes(e.change.clone())
        .map_err(|err| Invalid::MalformedChange(err.to_string()))?;
    if *change.actor_id() != e.log().actor() {
        return Err(Invalid::ActorMismatch);
    }
    Ok(change)
}

/// Under honest time (from the rules version of the charter the entry names), checks that
/// its change carries its timestamp, so that the changes that depend on it can be held to
/// it from the document alone.
pub fn check_change_time(
    entry: &SignedEntry,
    change: &Change,
    charter: &Charter,
) -> Result<(), Invalid> {
    let e = &entry.entry;
    if charter.honest_time() && change.timestamp() != change_time(e.timestamp_ms) {
        return Err(Invalid::ChangeTime {
            change: change.timestamp(),
            entry: e.timestamp_ms,
        });
    }
    Ok(())
}

/// The time, in Automerge's whole seconds, that a change of an entry made at
/// `timestamp_ms` carries.
pub fn change_time(timestamp_ms: u64) -> i64 {
    i64::try_from(timestamp_ms / 1000).unwrap_or(i64::MAX)
}

/// Checks the entry against the previous entry of its log.
pub fn check_chain(entry: &Entry, prev: Option<&Tip>) -> Result<(), Invalid> {
    match prev {
        None if entry.seq == 1 => Ok(()),
        None => Err(Invalid::SeqGap {
            expected: 1,
            found: entry.seq,
        }),
        Some(tip) => {
            if entry.seq != tip.seq + 1 {
                return Err(Invalid::SeqGap {
                    expected: tip.seq + 1,
                    found: entry.seq,
                });
            }
            if entry.prev != Some(tip.hash) {
                return Err(Invalid::WrongPrev { seq: tip.seq });
            }
            if entry.timestamp_ms < tip.timestamp_ms {
                return Err(Invalid::TimestampBeforePrev {
                    prev: tip.timestamp_ms,
                    found: entry.timestamp_ms,
                });
            }
            Ok(())
        }
    }
}

/// Two signed entries of one log with the same seq and different hashes: proof that the
/// author forked its log. Any node can re-check it with the charter alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EquivocationProof {
    pub a: SignedEntry,
    pub b: SignedEntry,
}

impl EquivocationProof {
    /// Orders the pair by hash, so both orders of arrival give the same proof.
    pub fn new(x: SignedEntry, y: SignedEntry) -> EquivocationProof {
        if x.hash() <= y.hash() {
            EquivocationProof { a: x, b: y }
        } else {
            EquivocationProof { a: y, b: x }
        }
    }

    pub fn log(&self) -> LogId {
        self.a.entry.log()
    }

    pub fn seq(&self) -> u64 {
        self.a.entry.seq
    }

    /// Names the proof: BLAKE3 of the two hashes in order.
    pub fn id(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&self.a.hash().0);
        h.update(&self.b.hash().0);
        *h.finalize().as_bytes()
    }

    /// Re-checks the proof: same log and seq, different entries, both signed by the author,
    /// who is a participant of this charter.
    pub fn verify(&self, charter: &Charter) -> Result<(), String> {
        if charter.participant_by_key(&self.a.entry.author).is_none() {
            return Err("the author is not a participant".into());
        }
        self.verify_signatures(&charter.network, &charter.scope())
    }

    /// Re-checks the proof but for its author's place in the charter: same log and seq,
    /// different entries of `network`, both signed by the author.
    pub fn verify_signatures(&self, network: &str, scope: &Scope) -> Result<(), String> {
        let (a, b) = (&self.a.entry, &self.b.entry);
        if a.log() != b.log() || a.seq != b.seq {
            return Err("the two entries are not of the same log and seq".into());
        }
        if self.a.hash() >= self.b.hash() {
            return Err("the two entries are the same, or out of order".into());
        }
        if a.network != network || b.network != network {
            return Err("an entry is for another network".into());
        }
        self.a
            .verify_signature(scope)
            .and_then(|_| self.b.verify_signature(scope))
            .map_err(|_| "a signature does not verify".to_owned())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(PROOF_VERSION);
        w.bytes32(self.a.bytes());
        w.bytes32(self.b.bytes());
        w.into_inner()
    }

    pub fn decode(bytes: &[u8]) -> Result<EquivocationProof, DecodeError> {
        if bytes.len() > 2 * MAX_ENTRY_BYTES + 16 {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let m = |what: &str| DecodeError::Malformed(format!("proof {what}"));
        let mut r = Reader::new(bytes);
        if r.u8().map_err(|_| m("empty"))? != PROOF_VERSION {
            return Err(m("version"));
        }
        let a = SignedEntry::decode(r.bytes32().map_err(|_| m("first entry"))?)?;
        let b = SignedEntry::decode(r.bytes32().map_err(|_| m("second entry"))?)?;
        r.finish().map_err(|_| m("trailing bytes"))?;
        Ok(EquivocationProof { a, b })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_over_the_limit_are_refused_before_decoding() {
        let big = vec![1u8; MAX_ENTRY_BYTES + 1];
        assert_eq!(
            SignedEntry::decode(&big),
            Err(DecodeError::TooLarge(MAX_ENTRY_BYTES + 1))
        );
        assert!(matches!(
            SignedEntry::decode(&[1, 0, 0]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            SignedEntry::decode(&[]),
            Err(DecodeError::Malformed(_))
        ));
    }
}
