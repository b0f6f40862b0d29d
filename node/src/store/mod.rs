//! The only place that touches disk: one redb database in the node's data directory, and
//! the key that seals its rows beside it.
//!
//! Accepted entries are appended with the position at which this node accepted them (a
//! causal order), under indexes by hash, by arrival, by document and by term; each log's
//! tip, each document's counters, snapshots, summaries and list indexes, and the
//! equivocation proofs sit in tables of their own (see `tables`). An ingest is written in
//! one transaction with immediate durability, so a write is acknowledged only after it is
//! on disk. A write appends its change: a document is saved whole only when its appended
//! changes pass [`COMPACT_AFTER`], in a compaction the node runs when it is idle, or after
//! a rebuild.
//!
//! Opening reads only what the start needs (the counters, each log's tip, the proofs);
//! every row is sealed, so whatever is read later, to serve sync, to load a document or
//! to verify, is refused when it was changed on disk, before anything uses it.
//! [`Store::verify`] reads and checks everything.

mod migrate;
mod reader;
mod seal;
mod tables;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::charter::Charter;
use crate::docs::DocId;
use crate::identity::Scope;
use crate::log::{EquivocationProof, LogId, SignedEntry, Tip};
use crate::operator::Operator;
use crate::replica::{Backing, Limits, Replica, Report};

pub use reader::{AuditPage, ListFilter, ListPage, Reader};
pub use seal::KeyError;
use seal::Sealer;

/// A document's appended changes past which a compaction saves it whole.
pub const COMPACT_AFTER: u64 = 64;

/// The layout of the tables this code writes; an older one is migrated at open.
pub const FORMAT_VERSION: &[u8] = b"3";
/// The most stream places a store keeps: more than the nodes of a network's participants.
pub const MAX_STREAMS: u64 = 64;

/// Store failures. `Corrupt` means the data on disk is not what was written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store {path} is in use by another process")]
    InUse { path: String },
    #[error("store {path} cannot be opened: {reason}")]
    Open { path: String, reason: String },
    #[error("store key: {0}")]
    Key(#[from] KeyError),
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

/// A key made of a length-prefixed text and a position: the rows of one document or one
/// term, in position order.
fn prefixed(text: &str, position: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + text.len() + 8);
    k.extend_from_slice(&u16::try_from(text.len()).unwrap_or(u16::MAX).to_be_bytes());
    k.extend_from_slice(text.as_bytes());
    k.extend_from_slice(&position.to_be_bytes());
    k
}

/// The half-year (`YYYY-H1`, `YYYY-H2`) a timestamp falls in.
pub fn term_of_ms(ms: u64) -> Option<String> {
    let date = crate::docs::rules::date_of_ms(ms)?;
    let half = if u8::from(date.month()) <= 6 { 1 } else { 2 };
    Some(format!("{}-H{half}", date.year()))
}

/// The database, closed inside a guard: redb closes a file when it is dropped, and can
/// panic there on a damaged file (an allocator assertion) instead of returning an error.
pub(crate) struct Db(Option<Database>);

impl std::ops::Deref for Db {
    type Target = Database;

    fn deref(&self) -> &Database {
        // Only `drop` takes the database out.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("the database is open until dropped"))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(db) = self.0.take()
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(db))).is_err()
        {
            tracing::error!("closing the store failed inside the database: the file is damaged");
        }
    }
}

/// The counters kept in `meta`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    entries: u64,
    docs: u64,
    next_position: u64,
}

/// The durable store of one node.
pub struct Store {
    db: Arc<Db>,
    sealer: Arc<Sealer>,
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

/// The memory the database may keep of the file's pages, unless the caller says otherwise:
/// the node's `store_cache_mib` setting. redb's own default, 1 GiB, would let a node's
/// memory follow the share of a decade's store its reads have reached.
pub const CACHE_BYTES: usize = 16 << 20;

/// The path of the key that seals a store's rows: beside it, named `<stem>.key`.
pub fn key_path(store: &Path) -> PathBuf {
    store.with_extension("key")
}

impl Store {
    /// Opens the store at `path`, creating it (and its key) when missing. Another process
    /// holding it is refused. A store of the first format is migrated, after the full
    /// check that format needed at every start.
    pub fn open(path: &Path) -> Result<Store, Error> {
        Store::open_with_cache(path, CACHE_BYTES)
    }

    /// Opens the store as [`Store::open`] does, letting the database keep up to
    /// `cache_bytes` of the file's pages in memory (at least 1 MiB). Pages beyond it are read
    /// again from the file, which the kernel caches.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Store, Error> {
        guarded(|| Store::open_inner(path, cache_bytes.max(1 << 20)))
    }

    fn open_inner(path: &Path, cache_bytes: usize) -> Result<Store, Error> {
        let shown = path.display().to_string();
        let database = match redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
        {
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
        let format = {
            let tx = database.begin_read().map_err(dberr)?;
            match tx.open_table(tables::META) {
                Ok(meta) => meta
                    .get("format")
                    .map_err(dberr)?
                    .map(|v| v.value().to_vec()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(dberr(e)),
            }
        };
        // The format row is the one row that is not sealed: it says how to read the rest.
        let fresh = format.is_none();
        let legacy = format.as_deref() == Some(b"1");
        match format.as_deref() {
            None | Some(b"1" | b"2") => {}
            Some(v) if v == FORMAT_VERSION => {}
            Some(v) => {
                return Err(Error::Corrupt(format!(
                    "unknown store format {:?}",
                    String::from_utf8_lossy(v)
                )));
            }
        }
        let sealer = Sealer::open(&key_path(path), fresh || legacy)?;
        let store = Store {
            db: Arc::new(Db(Some(database))),
            sealer: Arc::new(sealer),
            path: path.to_owned(),
            failpoint: None,
            commits: std::sync::atomic::AtomicU64::new(0),
        };
        if fresh {
            let tx = store.db.begin_write().map_err(dberr)?;
            create_tables(&tx)?;
            tx.open_table(tables::META)
                .map_err(dberr)?
                .insert("format", FORMAT_VERSION)
                .map_err(dberr)?;
            tx.commit().map_err(dberr)?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size of the database file in bytes.
    pub fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// A reader of the committed state, which the replica reads through.
    pub fn reader(&self) -> Reader {
        Reader::new(self.db.clone(), self.sealer.clone())
    }

    /// Opens the replica: the counters, each log's tip and the proofs, each checked
    /// before use. Nothing else is read. A store of the first format is migrated first.
    pub fn load(
        &self,
        charter: Arc<Charter>,
        limits: Limits,
        progress: Progress<'_>,
    ) -> Result<Replica<Reader>, Error> {
        guarded(|| {
            match self.format()?.as_deref() {
                Some(b"1") => migrate::run(self, &charter, progress)?,
                Some(b"2") => migrate::meeting_dates(self)?,
                _ => {}
            }
            self.load_inner(charter, limits)
        })
    }

    fn format(&self) -> Result<Option<Vec<u8>>, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let meta = tx.open_table(tables::META).map_err(dberr)?;
        Ok(meta
            .get("format")
            .map_err(dberr)?
            .map(|v| v.value().to_vec()))
    }

    fn load_inner(&self, charter: Arc<Charter>, limits: Limits) -> Result<Replica<Reader>, Error> {
        let reader = self.reader();
        if let Some(found) = reader.network()?
            && found != charter.network
        {
            return Err(Error::WrongNetwork {
                expected: charter.network.clone(),
                found,
            });
        }
        // The tips' entries are not read here: a start costs the number of logs in sealed
        // rows, not one random read of the entry table per log. A log whose last entries
        // were deleted is found by the first read of it (`Replica::log_entries` checks the
        // chain up to the tip) or by `verify`.
        let tips = reader.tips()?;
        let proofs = reader.proofs(&charter)?;
        let mut replica = Replica::with_backing(charter, limits, reader, tips, proofs);
        replica
            .load_charters()
            .map_err(|e| Error::Corrupt(format!("reading the amendments failed: {e}")))?;
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

    /// Makes an ingest durable, in one transaction: its accepted entries and their
    /// indexes, the entries it cut, the logs' tips, the documents it rebuilt, the
    /// summaries of the documents it touched, and its proofs. The replica must still hold
    /// the touched documents (they are pinned until it is flushed).
    pub fn commit<B: Backing>(&self, replica: &Replica<B>, report: &Report) -> Result<(), Error> {
        self.commit_by(replica, report, None)
    }

    /// Commits an operator's own write like [`Store::commit`], and records in the same
    /// transaction which operator made its entries (the local audit).
    pub fn commit_local<B: Backing>(
        &self,
        replica: &Replica<B>,
        report: &Report,
        operator: &str,
    ) -> Result<(), Error> {
        self.commit_by(replica, report, Some(operator))
    }

    fn commit_by<B: Backing>(
        &self,
        replica: &Replica<B>,
        report: &Report,
        operator: Option<&str>,
    ) -> Result<(), Error> {
        if report.accepted.is_empty()
            && report.new_proofs.is_empty()
            && report.removed.is_empty()
            && report.rebuilt_docs.is_empty()
        {
            return Ok(());
        }
        let commit = 1 + self
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tx = self.db.begin_write().map_err(dberr)?;
        self.write(&tx, replica, report)?;
        if let Some(name) = operator {
            let mut written_by = tx.open_table(tables::WRITTEN_BY).map_err(dberr)?;
            for e in &report.accepted {
                let key = e.hash().0;
                let sealed = self.sealer.seal("written_by", &key, name.as_bytes());
                written_by
                    .insert(key.as_slice(), sealed.as_slice())
                    .map_err(dberr)?;
            }
        }
        self.reached(CommitStep::BeforeCommit, commit);
        tx.commit().map_err(dberr)?;
        self.reached(CommitStep::AfterCommit, commit);
        Ok(())
    }

    fn write<B: Backing>(
        &self,
        tx: &WriteTransaction,
        replica: &Replica<B>,
        report: &Report,
    ) -> Result<(), Error> {
        let mut w = Writer::open(tx, &self.sealer)?;
        w.meta_put("network", replica.charter().network.as_bytes())?;
        let mut logs: BTreeSet<LogId> = BTreeSet::new();
        for e in &report.removed {
            logs.insert(e.entry.log());
            w.remove_entry(e)?;
        }
        for e in &report.accepted {
            logs.insert(e.entry.log());
            w.append_entry(e)?;
        }
        for log in logs {
            w.put_tip(&log, replica.tips().get(&log))?;
        }
        for id in &report.rebuilt_docs {
            w.save_doc(id, replica.doc(id))?;
        }
        for id in &report.touched {
            match replica.doc(id) {
                Some(doc) => w.put_summary(id, &crate::docs::view::summary(id, doc))?,
                None => w.drop_summary(id)?,
            }
        }
        for p in &report.new_proofs {
            w.put_proof(p)?;
        }
        w.finish()
    }

    /// Saves a document whole when it has more than [`COMPACT_AFTER`] changes appended
    /// since its snapshot. Returns whether it did.
    pub fn compact(&self, id: &DocId) -> Result<bool, Error> {
        self.save_if_longer(id, COMPACT_AFTER)
    }

    /// Saves a document whole now, whatever was appended since its snapshot.
    pub fn save_whole(&self, id: &DocId) -> Result<bool, Error> {
        self.save_if_longer(id, 0)
    }

    fn save_if_longer(&self, id: &DocId, appended: u64) -> Result<bool, Error> {
        guarded(|| {
            let reader = self.reader();
            if reader.doc_tail(id)? <= appended {
                return Ok(false);
            }
            let Some(doc) = reader.doc(id).map_err(|e| Error::Corrupt(e.0))? else {
                return Ok(false);
            };
            let tx = self.db.begin_write().map_err(dberr)?;
            {
                let mut w = Writer::open(&tx, &self.sealer)?;
                w.save_doc(id, Some(&doc))?;
                w.finish()?;
            }
            tx.commit().map_err(dberr)?;
            Ok(true)
        })
    }

    /// Everything `load` checks, and then everything else: every row's seal, every
    /// entry's key and index rows, every log chain and every signature, every proof, and
    /// every rule again: all entries are replayed in the order this node accepted them
    /// into a fresh replica, which must accept each of them and build the same documents
    /// and summaries. Returns the number of entries and documents.
    pub fn verify(
        &self,
        charter: Arc<Charter>,
        progress: Progress<'_>,
    ) -> Result<(usize, usize), Error> {
        guarded(|| {
            let loaded = self.load(charter.clone(), Limits::default(), progress)?;
            self.reader().verify(charter, &loaded, progress)
        })
    }

    /// Every operator, revoked ones included, each row checked against its seal.
    pub fn operators(&self) -> Result<Vec<Operator>, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let table = match tx.open_table(tables::OPERATORS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(dberr(e)),
        };
        let mut operators = Vec::new();
        for row in table.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let name = k.value();
            let value = self
                .sealer
                .open_row("operators", name.as_bytes(), v.value())
                .ok_or_else(|| Writer::corrupt("operators", name.as_bytes()))?;
            let op = Operator::decode(name, value)
                .map_err(|e| Error::Corrupt(format!("operator row {name:?}: {e}")))?;
            operators.push(op);
        }
        Ok(operators)
    }

    /// Adds or replaces an operator, durably.
    pub fn put_operator(&self, op: &Operator) -> Result<(), Error> {
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut table = tx.open_table(tables::OPERATORS).map_err(dberr)?;
            let sealed = self
                .sealer
                .seal("operators", op.name.as_bytes(), &op.encode());
            table
                .insert(op.name.as_str(), sealed.as_slice())
                .map_err(dberr)?;
        }
        tx.commit().map_err(dberr)
    }

    /// Where each peer's stream goes on, for the catch-ups left in the middle.
    pub fn streams(&self) -> Result<Vec<(String, u64)>, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let table = match tx.open_table(tables::STREAMS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(dberr(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let peer = k.value();
            let position = self
                .sealer
                .open_row("streams", peer.as_bytes(), v.value())
                .and_then(|v| Some(u64::from_be_bytes(v.try_into().ok()?)))
                .ok_or_else(|| Writer::corrupt("streams", peer.as_bytes()))?;
            out.push((peer.to_owned(), position));
        }
        Ok(out)
    }

    /// Keeps where `peer`'s stream goes on, or forgets it (`None`). The write is not made
    /// durable by itself: the next commit of entries carries it, and a place lost in a
    /// crash only makes the next catch-up start earlier. At most [`MAX_STREAMS`] places
    /// are kept; a new one beyond them replaces the first in key order.
    pub fn put_stream(&self, peer: &str, position: Option<u64>) -> Result<(), Error> {
        let mut tx = self.db.begin_write().map_err(dberr)?;
        tx.set_durability(redb::Durability::None).map_err(dberr)?;
        {
            let mut table = tx.open_table(tables::STREAMS).map_err(dberr)?;
            match position {
                None => {
                    table.remove(peer).map_err(dberr)?;
                }
                Some(position) => {
                    if table.get(peer).map_err(dberr)?.is_none()
                        && table.len().map_err(dberr)? >= MAX_STREAMS
                    {
                        let first = table
                            .first()
                            .map_err(dberr)?
                            .map(|(k, _)| k.value().to_owned());
                        if let Some(first) = first {
                            table.remove(first.as_str()).map_err(dberr)?;
                        }
                    }
                    let sealed =
                        self.sealer
                            .seal("streams", peer.as_bytes(), &position.to_be_bytes());
                    table.insert(peer, sealed.as_slice()).map_err(dberr)?;
                }
            }
        }
        tx.commit().map_err(dberr)
    }

    /// The entries stored, without any check: for audits of a damaged store.
    pub fn raw_entry_count(&self) -> Result<u64, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        tx.open_table(tables::ENTRIES)
            .map_err(dberr)?
            .len()
            .map_err(dberr)
    }
}

fn create_tables(tx: &WriteTransaction) -> Result<(), Error> {
    for t in [
        tables::ENTRIES,
        tables::HASHES,
        tables::LOGS,
        tables::DOC_ENTRIES,
        tables::LIST,
        tables::TERMS,
        tables::PROOFS,
    ] {
        tx.open_table(t).map_err(dberr)?;
    }
    for t in [
        tables::META,
        tables::DOCS,
        tables::SNAPSHOTS,
        tables::SUMMARIES,
    ] {
        tx.open_table(t).map_err(dberr)?;
    }
    tx.open_table(tables::ARRIVAL).map_err(dberr)?;
    Ok(())
}

/// The writes of one transaction, sealing every value.
struct Writer<'t> {
    sealer: &'t Sealer,
    meta: redb::Table<'t, &'static str, &'static [u8]>,
    entries: redb::Table<'t, &'static [u8], &'static [u8]>,
    hashes: redb::Table<'t, &'static [u8], &'static [u8]>,
    arrival: redb::Table<'t, u64, &'static [u8]>,
    logs: redb::Table<'t, &'static [u8], &'static [u8]>,
    doc_entries: redb::Table<'t, &'static [u8], &'static [u8]>,
    docs: redb::Table<'t, &'static str, &'static [u8]>,
    snapshots: redb::Table<'t, &'static str, &'static [u8]>,
    summaries: redb::Table<'t, &'static str, &'static [u8]>,
    list: redb::Table<'t, &'static [u8], &'static [u8]>,
    terms: redb::Table<'t, &'static [u8], &'static [u8]>,
    proofs: redb::Table<'t, &'static [u8], &'static [u8]>,
    counts: Counts,
}

/// What `docs` holds of one document.
#[derive(Debug, Default, Clone, Copy)]
struct DocCounts {
    entries: u64,
    tail: u64,
    updated_ms: u64,
}

impl DocCounts {
    fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.entries.to_be_bytes());
        b[8..16].copy_from_slice(&self.tail.to_be_bytes());
        b[16..].copy_from_slice(&self.updated_ms.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<DocCounts> {
        Some(DocCounts {
            entries: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            tail: u64::from_be_bytes(b.get(8..16)?.try_into().ok()?),
            updated_ms: u64::from_be_bytes(b.get(16..24)?.try_into().ok()?),
        })
    }
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl<'t> Writer<'t> {
    fn open(tx: &'t WriteTransaction, sealer: &'t Sealer) -> Result<Writer<'t>, Error> {
        let meta = tx.open_table(tables::META).map_err(dberr)?;
        let counts = reader::read_counts(&meta, sealer)?;
        Ok(Writer {
            sealer,
            meta,
            entries: tx.open_table(tables::ENTRIES).map_err(dberr)?,
            hashes: tx.open_table(tables::HASHES).map_err(dberr)?,
            arrival: tx.open_table(tables::ARRIVAL).map_err(dberr)?,
            logs: tx.open_table(tables::LOGS).map_err(dberr)?,
            doc_entries: tx.open_table(tables::DOC_ENTRIES).map_err(dberr)?,
            docs: tx.open_table(tables::DOCS).map_err(dberr)?,
            snapshots: tx.open_table(tables::SNAPSHOTS).map_err(dberr)?,
            summaries: tx.open_table(tables::SUMMARIES).map_err(dberr)?,
            list: tx.open_table(tables::LIST).map_err(dberr)?,
            terms: tx.open_table(tables::TERMS).map_err(dberr)?,
            proofs: tx.open_table(tables::PROOFS).map_err(dberr)?,
            counts,
        })
    }

    fn seal(&self, table: &str, key: &[u8], value: &[u8]) -> Vec<u8> {
        self.sealer.seal(table, key, value)
    }

    fn corrupt(table: &str, key: &[u8]) -> Error {
        Error::Corrupt(format!(
            "a {table} row under {} does not match its seal",
            hex::encode(key)
        ))
    }

    fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<(), Error> {
        let sealed = self.seal("meta", key.as_bytes(), value);
        self.meta.insert(key, sealed.as_slice()).map_err(dberr)?;
        Ok(())
    }

    fn doc_counts(&self, id: &DocId) -> Result<Option<DocCounts>, Error> {
        let Some(row) = self.docs.get(id.as_str()).map_err(dberr)? else {
            return Ok(None);
        };
        let value = self
            .sealer
            .open_row("docs", id.as_str().as_bytes(), row.value())
            .and_then(DocCounts::decode)
            .ok_or_else(|| Self::corrupt("docs", id.as_str().as_bytes()))?;
        Ok(Some(value))
    }

    fn put_doc_counts(&mut self, id: &DocId, counts: &DocCounts) -> Result<(), Error> {
        let sealed = self.seal("docs", id.as_str().as_bytes(), &counts.encode());
        self.docs
            .insert(id.as_str(), sealed.as_slice())
            .map_err(dberr)?;
        Ok(())
    }

    fn append_entry(&mut self, e: &SignedEntry) -> Result<(), Error> {
        let log = e.entry.log();
        let key = entry_key(&log, e.entry.seq);
        let position = self.counts.next_position;
        self.counts.next_position += 1;
        self.counts.entries += 1;
        let mut value = Vec::with_capacity(8 + e.bytes().len());
        value.extend_from_slice(&position.to_be_bytes());
        value.extend_from_slice(e.bytes());
        let sealed = self.seal("entries", &key, &value);
        self.entries
            .insert(key.as_slice(), sealed.as_slice())
            .map_err(dberr)?;
        let hash = e.hash();
        let sealed = self.seal("hashes", &hash.0, &key);
        self.hashes
            .insert(hash.0.as_slice(), sealed.as_slice())
            .map_err(dberr)?;
        let sealed = self.seal("arrival", &position.to_be_bytes(), &key);
        self.arrival
            .insert(position, sealed.as_slice())
            .map_err(dberr)?;
        let doc_key = prefixed(e.entry.doc.as_str(), position);
        let sealed = self.seal("doc_entries", &doc_key, &key);
        self.doc_entries
            .insert(doc_key.as_slice(), sealed.as_slice())
            .map_err(dberr)?;
        if let Some(term) = term_of_ms(e.entry.timestamp_ms) {
            let term_key = prefixed(&term, position);
            let sealed = self.seal("terms", &term_key, &key);
            self.terms
                .insert(term_key.as_slice(), sealed.as_slice())
                .map_err(dberr)?;
        }
        let mut counts = match self.doc_counts(&e.entry.doc)? {
            Some(c) => c,
            None => {
                self.counts.docs += 1;
                DocCounts::default()
            }
        };
        counts.entries += 1;
        counts.tail += 1;
        counts.updated_ms = counts.updated_ms.max(e.entry.timestamp_ms);
        self.put_doc_counts(&e.entry.doc, &counts)
    }

    fn remove_entry(&mut self, e: &SignedEntry) -> Result<(), Error> {
        let log = e.entry.log();
        let key = entry_key(&log, e.entry.seq);
        let position = {
            let Some(row) = self.entries.get(key.as_slice()).map_err(dberr)? else {
                return Ok(());
            };
            self.sealer
                .open_row("entries", &key, row.value())
                .and_then(|v| u64_at(v, 0))
                .ok_or_else(|| Self::corrupt("entries", &key))?
        };
        self.entries.remove(key.as_slice()).map_err(dberr)?;
        self.hashes.remove(e.hash().0.as_slice()).map_err(dberr)?;
        self.arrival.remove(position).map_err(dberr)?;
        self.doc_entries
            .remove(prefixed(e.entry.doc.as_str(), position).as_slice())
            .map_err(dberr)?;
        if let Some(term) = term_of_ms(e.entry.timestamp_ms) {
            self.terms
                .remove(prefixed(&term, position).as_slice())
                .map_err(dberr)?;
        }
        self.counts.entries = self.counts.entries.saturating_sub(1);
        if let Some(mut counts) = self.doc_counts(&e.entry.doc)? {
            counts.entries = counts.entries.saturating_sub(1);
            if counts.entries == 0 {
                self.docs.remove(e.entry.doc.as_str()).map_err(dberr)?;
                self.snapshots.remove(e.entry.doc.as_str()).map_err(dberr)?;
                self.counts.docs = self.counts.docs.saturating_sub(1);
            } else {
                self.put_doc_counts(&e.entry.doc, &counts)?;
            }
        }
        Ok(())
    }

    fn put_tip(&mut self, log: &LogId, tip: Option<&Tip>) -> Result<(), Error> {
        let key = log_key(log);
        match tip {
            Some(tip) => {
                let mut value = Vec::with_capacity(48);
                value.extend_from_slice(&tip.seq.to_be_bytes());
                value.extend_from_slice(&tip.hash.0);
                value.extend_from_slice(&tip.timestamp_ms.to_be_bytes());
                let sealed = self.seal("logs", &key, &value);
                self.logs
                    .insert(key.as_slice(), sealed.as_slice())
                    .map_err(dberr)?;
            }
            None => {
                self.logs.remove(key.as_slice()).map_err(dberr)?;
            }
        }
        Ok(())
    }

    /// Saves a document whole, covering every entry of it so far; `None` when none of its
    /// entries is left.
    fn save_doc(&mut self, id: &DocId, doc: Option<&automerge::Automerge>) -> Result<(), Error> {
        let Some(doc) = doc else {
            self.snapshots.remove(id.as_str()).map_err(dberr)?;
            return Ok(());
        };
        let prefix = prefixed(id.as_str(), 0);
        let upper = prefixed(id.as_str(), u64::MAX);
        let covered = match self
            .doc_entries
            .range(prefix.as_slice()..=upper.as_slice())
            .map_err(dberr)?
            .next_back()
        {
            Some(row) => {
                let (k, _) = row.map_err(dberr)?;
                u64_at(k.value(), k.value().len() - 8).unwrap_or(0)
            }
            None => 0,
        };
        let mut value = covered.to_be_bytes().to_vec();
        value.extend_from_slice(&doc.save());
        let sealed = self.seal("snapshots", id.as_str().as_bytes(), &value);
        self.snapshots
            .insert(id.as_str(), sealed.as_slice())
            .map_err(dberr)?;
        if let Some(mut counts) = self.doc_counts(id)? {
            counts.tail = 0;
            self.put_doc_counts(id, &counts)?;
        }
        Ok(())
    }

    fn put_summary(&mut self, id: &DocId, summary: &serde_json::Value) -> Result<(), Error> {
        let updated_ms = self.doc_counts(id)?.map_or(0, |c| c.updated_ms);
        self.drop_summary(id)?;
        let mut value = updated_ms.to_be_bytes().to_vec();
        value.extend_from_slice(&serde_json::to_vec(summary).map_err(dberr)?);
        let sealed = self.seal("summaries", id.as_str().as_bytes(), &value);
        self.summaries
            .insert(id.as_str(), sealed.as_slice())
            .map_err(dberr)?;
        for key in reader::index_keys(id, summary, updated_ms) {
            let sealed = self.seal("list", &key, &[]);
            self.list
                .insert(key.as_slice(), sealed.as_slice())
                .map_err(dberr)?;
        }
        Ok(())
    }

    /// Removes a document's summary and its index rows, found from the old summary.
    fn drop_summary(&mut self, id: &DocId) -> Result<(), Error> {
        let old = match self.summaries.get(id.as_str()).map_err(dberr)? {
            None => None,
            Some(row) => Some(
                self.sealer
                    .open_row("summaries", id.as_str().as_bytes(), row.value())
                    .and_then(reader::decode_summary)
                    .ok_or_else(|| Self::corrupt("summaries", id.as_str().as_bytes()))?,
            ),
        };
        let Some((updated_ms, old)) = old else {
            return Ok(());
        };
        self.summaries.remove(id.as_str()).map_err(dberr)?;
        for key in reader::index_keys(id, &old, updated_ms) {
            self.list.remove(key.as_slice()).map_err(dberr)?;
        }
        Ok(())
    }

    fn put_proof(&mut self, p: &EquivocationProof) -> Result<(), Error> {
        self.proofs
            .insert(log_key(&p.log()).as_slice(), p.encode().as_slice())
            .map_err(dberr)?;
        Ok(())
    }

    fn finish(mut self) -> Result<(), Error> {
        let c = self.counts;
        let mut value = Vec::with_capacity(24);
        value.extend_from_slice(&c.entries.to_be_bytes());
        value.extend_from_slice(&c.docs.to_be_bytes());
        value.extend_from_slice(&c.next_position.to_be_bytes());
        self.meta_put("counts", &value)
    }
}

/// Checks every entry's signature, strictly and on every core; the first bad one is
/// `Corrupt`.
fn check_signatures(entries: &[SignedEntry], scope: &Scope) -> Result<(), Error> {
    let domain = scope.entry_domain();
    let items: Vec<_> = entries
        .iter()
        .map(|e| (&e.entry.author, domain.as_str(), e.body(), &e.signature))
        .collect();
    let verdicts = crate::identity::verify_many(&items);
    match entries.iter().zip(verdicts).find(|(_, ok)| !ok) {
        Some((e, _)) => Err(Error::Corrupt(format!(
            "entry {} has a bad signature",
            e.hash()
        ))),
        None => Ok(()),
    }
}
