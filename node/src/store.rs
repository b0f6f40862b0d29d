//! The only place that touches disk: one redb database in the node's data directory.
//!
//! Accepted entries, the hash index, per-document Automerge snapshots and equivocation
//! proofs are written in one transaction per ingest, with immediate durability, so a write
//! is acknowledged only after it is on disk. Opening re-checks every log chain and every
//! signature, and checks each snapshot against the entries it must cover, so a flipped
//! byte, a truncated file or a deleted entry is reported instead of served.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use automerge::{Automerge, Change, ChangeHash};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::charter::Charter;
use crate::docs::DocId;
use crate::log::{EquivocationProof, LogId, SignedEntry};
use crate::replica::{Limits, Replica, Report};

/// The tables of the store.
mod tables {
    use redb::TableDefinition;

    /// (author 32 bytes, incarnation u32 BE, seq u64 BE) -> encoded entry.
    pub const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
    /// Entry hash -> entry key.
    pub const HASHES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("hashes");
    /// Document id -> Automerge `save()` of the document.
    pub const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
    /// Log id (author, incarnation) -> encoded equivocation proof.
    pub const PROOFS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("proofs");
    /// Settings of the store itself: format version, network id.
    pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
}

const FORMAT_VERSION: &[u8] = b"1";

/// Store failures. `Corrupt` means the data on disk is not what was written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store {path} is in use by another process")]
    InUse { path: String },
    #[error("store {path} cannot be opened: {reason}")]
    Open { path: String, reason: String },
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error("store belongs to network {found:?}, not {expected:?}")]
    WrongNetwork { expected: String, found: String },
    #[error("store error: {0}")]
    Db(String),
    #[error(transparent)]
    Replica(#[from] crate::replica::Error),
}

fn dberr<E: std::fmt::Display>(e: E) -> Error {
    Error::Db(e.to_string())
}

/// Runs a read of the file, turning a panic into `Corrupt`: redb can panic on some damaged
/// pages (a key that is not UTF-8, an index out of range) instead of returning an error.
fn guarded<T>(read: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| {
        Err(Error::Corrupt(
            "the store file is damaged: reading it failed inside the database".into(),
        ))
    })
}

/// The key of an entry: its log and seq, ordered so that a log's entries are contiguous.
pub fn entry_key(log: &LogId, seq: u64) -> [u8; 44] {
    let mut k = [0u8; 44];
    k[..32].copy_from_slice(log.author.as_bytes());
    k[32..36].copy_from_slice(&log.incarnation.to_be_bytes());
    k[36..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn log_key(log: &LogId) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(log.author.as_bytes());
    k[32..].copy_from_slice(&log.incarnation.to_be_bytes());
    k
}

/// The durable store of one node.
pub struct Store {
    db: Database,
    path: PathBuf,
    /// Where a crash test wants the process held, and the commits made so far.
    failpoint: Option<Failpoint>,
    commits: std::sync::atomic::AtomicU64,
}

/// A step of [`Store::commit`] at which a crash test holds the process until it kills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStep {
    /// Everything is written into the transaction, which is not committed yet.
    BeforeCommit,
    /// The transaction is durable; the caller has not acknowledged anything yet.
    AfterCommit,
}

/// Holds the process at `step` of the `at`th commit since the store was opened (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failpoint {
    pub step: CommitStep,
    pub at: u64,
}

impl std::str::FromStr for Failpoint {
    type Err = String;

    /// `before-commit:N` or `after-commit:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not before-commit:N or after-commit:N (N from 1)");
        let (step, at) = s.split_once(':').ok_or_else(bad)?;
        let step = match step {
            "before-commit" => CommitStep::BeforeCommit,
            "after-commit" => CommitStep::AfterCommit,
            _ => return Err(bad()),
        };
        let at: u64 = at.parse().map_err(|_| bad())?;
        if at == 0 {
            return Err(bad());
        }
        Ok(Failpoint { step, at })
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// What `open` found, for progress reports.
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

impl Store {
    /// Opens the store at `path`, creating it when missing. Another process holding it is
    /// refused.
    pub fn open(path: &Path) -> Result<Store, Error> {
        guarded(|| Store::open_inner(path))
    }

    fn open_inner(path: &Path) -> Result<Store, Error> {
        let shown = path.display().to_string();
        let database = match Database::create(path) {
            Ok(database) => database,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(Error::InUse { path: shown });
            }
            Err(e) => {
                return Err(Error::Open {
                    path: shown,
                    reason: e.to_string(),
                });
            }
        };
        let store = Store {
            db: database,
            path: path.to_owned(),
            failpoint: None,
            commits: std::sync::atomic::AtomicU64::new(0),
        };
        let tx = store.db.begin_write().map_err(dberr)?;
        {
            for t in [tables::ENTRIES, tables::HASHES, tables::PROOFS] {
                tx.open_table(t).map_err(dberr)?;
            }
            tx.open_table(tables::SNAPSHOTS).map_err(dberr)?;
            let mut meta = tx.open_table(tables::META).map_err(dberr)?;
            let version = meta
                .get("format")
                .map_err(dberr)?
                .map(|v| v.value().to_vec());
            match version {
                None => {
                    meta.insert("format", FORMAT_VERSION).map_err(dberr)?;
                }
                Some(v) if v == FORMAT_VERSION => {}
                Some(v) => {
                    return Err(Error::Corrupt(format!(
                        "unknown store format {:?}",
                        String::from_utf8_lossy(&v)
                    )));
                }
            }
        }
        tx.commit().map_err(dberr)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size of the database file in bytes.
    pub fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Loads and verifies everything: every entry decodes and sits under its own key, the
    /// hash index matches, every log chain is whole, every signature verifies, every proof
    /// re-checks, and every snapshot covers exactly its document's entries.
    pub fn load(
        &self,
        charter: Arc<Charter>,
        limits: Limits,
        progress: Progress<'_>,
    ) -> Result<Replica, Error> {
        guarded(|| self.load_inner(charter, limits, progress))
    }

    fn load_inner(
        &self,
        charter: Arc<Charter>,
        limits: Limits,
        progress: Progress<'_>,
    ) -> Result<Replica, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let meta = tx.open_table(tables::META).map_err(dberr)?;
        if let Some(found) = meta.get("network").map_err(dberr)? {
            let found = String::from_utf8_lossy(found.value()).into_owned();
            if found != charter.network {
                return Err(Error::WrongNetwork {
                    expected: charter.network.clone(),
                    found,
                });
            }
        }
        let entries_table = tx.open_table(tables::ENTRIES).map_err(dberr)?;
        let total = entries_table.len().map_err(dberr)? as usize;
        let mut entries: Vec<SignedEntry> = Vec::with_capacity(total);
        let mut prev_tip: Option<(LogId, u64, crate::log::EntryHash, u64)> = None;
        for row in entries_table.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let e = SignedEntry::decode(v.value()).map_err(|err| {
                Error::Corrupt(format!("entry under key {}: {err}", hex::encode(k.value())))
            })?;
            let log = e.entry.log();
            if k.value() != entry_key(&log, e.entry.seq) {
                return Err(Error::Corrupt(format!(
                    "entry {} is stored under another key",
                    e.hash()
                )));
            }
            // Keys sort by log then seq, so each log's chain is read in order.
            let expected = match prev_tip {
                Some((l, seq, hash, ts)) if l == log => Some(crate::log::Tip {
                    seq,
                    hash,
                    timestamp_ms: ts,
                }),
                _ => None,
            };
            crate::log::check_chain(&e.entry, expected.as_ref()).map_err(|err| {
                Error::Corrupt(format!(
                    "log {} of {} breaks at seq {}: {err}",
                    log.incarnation,
                    log.author.short(),
                    e.entry.seq
                ))
            })?;
            prev_tip = Some((log, e.entry.seq, e.hash(), e.entry.timestamp_ms));
            entries.push(e);
            if entries.len().is_multiple_of(1000) {
                progress("reading entries", entries.len(), total);
            }
        }
        progress("reading entries", entries.len(), total);

        let hashes = tx.open_table(tables::HASHES).map_err(dberr)?;
        if hashes.len().map_err(dberr)? as usize != entries.len() {
            return Err(Error::Corrupt(format!(
                "the hash index holds {} entries, the log {}",
                hashes.len().map_err(dberr)?,
                entries.len()
            )));
        }
        for e in &entries {
            let key = entry_key(&e.entry.log(), e.entry.seq);
            match hashes.get(e.hash().0.as_slice()).map_err(dberr)? {
                Some(v) if v.value() == key => {}
                _ => {
                    return Err(Error::Corrupt(format!(
                        "the hash index does not name entry {}",
                        e.hash()
                    )));
                }
            }
        }

        for (i, chunk) in entries.chunks(1024).enumerate() {
            let items: Vec<_> = chunk
                .iter()
                .map(|e| {
                    (
                        &e.entry.author,
                        crate::identity::DOMAIN_ENTRY,
                        e.body(),
                        &e.signature,
                    )
                })
                .collect();
            let verdicts = crate::identity::verify_many(&items);
            if let Some((e, _)) = chunk.iter().zip(verdicts).find(|(_, ok)| !ok) {
                return Err(Error::Corrupt(format!(
                    "entry {} has a bad signature",
                    e.hash()
                )));
            }
            progress(
                "checking signatures",
                (i * 1024 + chunk.len()).min(entries.len()),
                entries.len(),
            );
        }

        let mut proofs = Vec::new();
        for row in tx
            .open_table(tables::PROOFS)
            .map_err(dberr)?
            .iter()
            .map_err(dberr)?
        {
            let (_, v) = row.map_err(dberr)?;
            let proof = EquivocationProof::decode(v.value())
                .map_err(|e| Error::Corrupt(format!("equivocation proof: {e}")))?;
            proof
                .verify(&charter)
                .map_err(|e| Error::Corrupt(format!("equivocation proof: {e}")))?;
            proofs.push(proof);
        }

        let mut snapshots = HashMap::new();
        for row in tx
            .open_table(tables::SNAPSHOTS)
            .map_err(dberr)?
            .iter()
            .map_err(dberr)?
        {
            let (k, v) = row.map_err(dberr)?;
            let id: DocId = k
                .value()
                .parse()
                .map_err(|e| Error::Corrupt(format!("snapshot key: {e}")))?;
            snapshots.insert(id, v.value().to_vec());
        }
        let replica = restore(charter, limits, entries, snapshots, proofs, progress)?;
        Ok(replica)
    }

    /// Arms a failpoint: the commit it names holds its thread for good, so that a crash
    /// test can kill the process at that exact step. Never set in production.
    pub fn with_failpoint(mut self, failpoint: Option<Failpoint>) -> Store {
        self.failpoint = failpoint;
        self
    }

    fn reached(&self, step: CommitStep, commit: u64) {
        if self.failpoint == Some(Failpoint { step, at: commit }) {
            tracing::warn!(?step, commit, "failpoint reached, holding until killed");
            loop {
                std::thread::park();
            }
        }
    }

    /// Makes an ingest durable: its accepted entries, the snapshots of the documents it
    /// touched and its proofs, in one transaction. After a rebuild, the whole store is
    /// rewritten from the replica.
    pub fn commit(&self, replica: &Replica, report: &Report) -> Result<(), Error> {
        if report.accepted.is_empty() && report.new_proofs.is_empty() && !report.rebuilt {
            return Ok(());
        }
        let commit = 1 + self
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut entries = tx.open_table(tables::ENTRIES).map_err(dberr)?;
            let mut hashes = tx.open_table(tables::HASHES).map_err(dberr)?;
            let mut snapshots = tx.open_table(tables::SNAPSHOTS).map_err(dberr)?;
            let mut proofs = tx.open_table(tables::PROOFS).map_err(dberr)?;
            let mut meta = tx.open_table(tables::META).map_err(dberr)?;
            meta.insert("network", replica.charter().network.as_bytes())
                .map_err(dberr)?;
            if report.rebuilt {
                entries.retain(|_, _| false).map_err(dberr)?;
                hashes.retain(|_, _| false).map_err(dberr)?;
                snapshots.retain(|_, _| false).map_err(dberr)?;
                let mut logs: Vec<LogId> = replica.heights().into_keys().collect();
                logs.sort();
                for log in logs {
                    for e in replica.log_entries(&log) {
                        let key = entry_key(&log, e.entry.seq);
                        entries.insert(key.as_slice(), e.bytes()).map_err(dberr)?;
                        hashes
                            .insert(e.hash().0.as_slice(), key.as_slice())
                            .map_err(dberr)?;
                    }
                }
                for (id, doc) in replica.docs() {
                    snapshots
                        .insert(id.as_str(), doc.save().as_slice())
                        .map_err(dberr)?;
                }
            } else {
                for e in &report.accepted {
                    let key = entry_key(&e.entry.log(), e.entry.seq);
                    entries.insert(key.as_slice(), e.bytes()).map_err(dberr)?;
                    hashes
                        .insert(e.hash().0.as_slice(), key.as_slice())
                        .map_err(dberr)?;
                }
                for id in &report.touched {
                    if let Some(doc) = replica.doc(id) {
                        snapshots
                            .insert(id.as_str(), doc.save().as_slice())
                            .map_err(dberr)?;
                    }
                }
            }
            for p in replica.proofs() {
                proofs
                    .insert(log_key(&p.log()).as_slice(), p.encode().as_slice())
                    .map_err(dberr)?;
            }
        }
        self.reached(CommitStep::BeforeCommit, commit);
        tx.commit().map_err(dberr)?;
        self.reached(CommitStep::AfterCommit, commit);
        Ok(())
    }

    /// Everything `load` checks, and then every rule again: all entries are replayed into a
    /// fresh replica, which must accept each of them and build the same documents.
    /// Returns the number of entries and documents.
    pub fn verify(
        &self,
        charter: Arc<Charter>,
        progress: Progress<'_>,
    ) -> Result<(usize, usize), Error> {
        let loaded = self.load(charter.clone(), Limits::default(), progress)?;
        let mut fresh = Replica::new(
            charter,
            Limits {
                max_pending_entries: usize::MAX,
                max_pending_bytes: usize::MAX,
            },
        );
        let mut entries = Vec::with_capacity(loaded.entry_count());
        for log in loaded.heights().into_keys() {
            entries.extend(loaded.log_entries(&log).iter().cloned());
        }
        progress("checking rules", 0, entries.len());
        let report = fresh.ingest_verified(entries)?;
        if let Some((hash, invalid)) = report.rejected.first() {
            return Err(Error::Corrupt(format!("entry {hash}: {invalid}")));
        }
        if fresh.pending_count() > 0 {
            return Err(Error::Corrupt(format!(
                "{} entries lack their causal past",
                fresh.pending_count()
            )));
        }
        for (id, doc) in loaded.docs() {
            let mut a = doc.get_heads();
            let mut b = fresh.doc(id).map(|d| d.get_heads()).unwrap_or_default();
            a.sort();
            b.sort();
            if a != b {
                return Err(Error::Corrupt(format!("{id} does not match its entries")));
            }
        }
        progress("checking rules", loaded.entry_count(), loaded.entry_count());
        Ok((loaded.entry_count(), loaded.docs().count()))
    }

    /// The entries stored, in key order, without any check: for audits of a damaged store.
    pub fn raw_entry_count(&self) -> Result<u64, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        tx.open_table(tables::ENTRIES)
            .map_err(dberr)?
            .len()
            .map_err(dberr)
    }
}

/// Builds a replica from verified entries and snapshots, checking that each snapshot
/// covers exactly its document's entries. A snapshot is trusted only for what its heads
/// prove: the same heads mean the same set of changes, since each change names its deps by
/// hash.
fn restore(
    charter: Arc<Charter>,
    limits: Limits,
    entries: Vec<SignedEntry>,
    snapshots: HashMap<DocId, Vec<u8>>,
    proofs: Vec<EquivocationProof>,
    progress: Progress<'_>,
) -> Result<Replica, Error> {
    // Decoding the changes and loading the snapshots are independent per item: both run
    // on every core.
    let decoded = par_map(&entries, |e| {
        Change::from_bytes(e.entry.change.clone())
            .map(|c| (c.hash(), c.deps().to_vec()))
            .map_err(|err| format!("entry {}: {err}", e.hash()))
    })
    .ok_or_else(|| Error::Corrupt("an entry's change could not be decoded".into()))?;
    let mut changes = Vec::with_capacity(entries.len());
    let mut per_doc: BTreeMap<DocId, (HashSet<ChangeHash>, HashSet<ChangeHash>)> = BTreeMap::new();
    for (e, change) in entries.iter().zip(decoded) {
        let (hash, deps) = change.map_err(Error::Corrupt)?;
        let (hashes, all_deps) = per_doc.entry(e.entry.doc.clone()).or_default();
        hashes.insert(hash);
        all_deps.extend(deps.iter().copied());
        changes.push((hash, deps));
    }
    let entries = causal_order(entries, &changes)?;
    let total = per_doc.len();
    progress("loading documents", 0, total);
    let mut wanted = Vec::with_capacity(total);
    for (id, (hashes, deps)) in per_doc {
        let bytes = snapshots
            .get(&id)
            .ok_or_else(|| Error::Corrupt(format!("no snapshot of {id}")))?;
        let mut expected: Vec<ChangeHash> = hashes.difference(&deps).copied().collect();
        expected.sort();
        wanted.push((id, bytes.as_slice(), expected));
    }
    let loaded = par_map(&wanted, |(id, bytes, expected)| {
        let doc = Automerge::load(bytes).map_err(|e| format!("snapshot of {id}: {e}"))?;
        let mut heads = doc.get_heads();
        heads.sort();
        if heads != *expected {
            return Err(format!("snapshot of {id} does not match its entries"));
        }
        Ok((id.clone(), doc))
    })
    .ok_or_else(|| Error::Corrupt("a snapshot could not be loaded".into()))?;
    let docs = loaded
        .into_iter()
        .collect::<Result<Vec<_>, String>>()
        .map_err(Error::Corrupt)?;
    if docs.len() != snapshots.len() {
        return Err(Error::Corrupt(
            "a snapshot has no entries: an entry is missing".into(),
        ));
    }
    progress("loading documents", total, total);
    Ok(Replica::restore(charter, limits, entries, docs, proofs))
}

/// Puts entries read in log order into a causal order: each after its predecessor in its
/// log and after the entries whose changes its change depends on. `changes` holds each
/// entry's change hash and deps, by index. Sync serves entries in this order.
fn causal_order(
    entries: Vec<SignedEntry>,
    changes: &[(ChangeHash, Vec<ChangeHash>)],
) -> Result<Vec<SignedEntry>, Error> {
    let by_change: HashMap<ChangeHash, usize> = changes
        .iter()
        .enumerate()
        .map(|(i, (hash, _))| (*hash, i))
        .collect();
    // Each entry waits for its deps and, unless it opens its log, for the entry before it,
    // which `load` read just before it.
    let mut waiting = vec![0usize; entries.len()];
    let mut wakes: Vec<Vec<usize>> = vec![Vec::new(); entries.len()];
    for (i, e) in entries.iter().enumerate() {
        if e.entry.seq > 1 {
            let Some(before) = i.checked_sub(1) else {
                return Err(Error::Corrupt(format!(
                    "entry {} has no predecessor",
                    e.hash()
                )));
            };
            waiting[i] += 1;
            wakes[before].push(i);
        }
        for dep in &changes[i].1 {
            let Some(&j) = by_change.get(dep) else {
                return Err(Error::Corrupt(format!(
                    "entry {} depends on a change the store does not hold",
                    e.hash()
                )));
            };
            waiting[i] += 1;
            wakes[j].push(i);
        }
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..entries.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(entries.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &k in &wakes[i] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.push_back(k);
            }
        }
    }
    if order.len() != entries.len() {
        return Err(Error::Corrupt(format!(
            "{} entries depend on each other in a cycle",
            entries.len() - order.len()
        )));
    }
    let mut slots: Vec<Option<SignedEntry>> = entries.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// Maps `f` over `items` on every core, keeping the order. None when a worker panicked
/// (Automerge can panic on a malformed document).
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Option<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(8);
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for w in workers {
            out.extend(w.join().ok()?);
        }
        Some(out)
    })
}
