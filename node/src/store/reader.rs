//! Reads of the committed state: the replica's [`Backing`], and the indexed reads the
//! node serves (lists by filter with a cursor, the audit trail by arrival, a term's
//! entries). Every row is unsealed before use; a row that does not match its seal is an
//! error that names it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use automerge::Automerge;
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde_json::Value;

use super::seal::Sealer;
use super::{Counts, DocCounts, Error, dberr, entry_key, prefixed, tables, u64_at};
use crate::charter::Charter;
use crate::docs::{Collection, DocId};
use crate::identity::PublicKey;
use crate::log::{EntryHash, EquivocationProof, LogId, SignedEntry, Tip};
use crate::replica::backing::{self, Backing};
use crate::replica::{Limits, Replica};

/// Rows a list page may scan past when its filters leave most of them out; the page then
/// ends early with a cursor to go on from.
const MAX_SCAN: usize = 10_000;

/// A reader of the store's committed state. Cheap to clone; each read is one read
/// transaction.
#[derive(Clone)]
pub struct Reader {
    db: Arc<super::Db>,
    sealer: Arc<Sealer>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader")
    }
}

/// What a list keeps: every filter given must match.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub status: Option<String>,
    pub state: Option<String>,
    pub kind: Option<String>,
    /// Changed at or after this time.
    pub since_ms: Option<u64>,
}

/// One page of a list, and the cursor of the next page when there may be one.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub next: Option<String>,
}

/// One page of the audit trail, oldest first, and the cursor of the page before it.
#[derive(Debug, Clone)]
pub struct AuditPage {
    /// Each entry with the position this node accepted it at.
    pub entries: Vec<(u64, SignedEntry)>,
    pub next: Option<u64>,
}

fn corrupt(table: &str, key: &[u8]) -> backing::Error {
    backing::Error(format!(
        "store is corrupt: a {table} row under {} does not match its seal",
        hex::encode(key)
    ))
}

fn read_err<E: std::fmt::Display>(e: E) -> backing::Error {
    backing::Error(format!("store error: {e}"))
}

/// Turns a panic inside redb (a damaged page) into an error.
fn guarded<T>(read: impl FnOnce() -> Result<T, backing::Error>) -> Result<T, backing::Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| {
        Err(backing::Error(
            "store is corrupt: reading it failed inside the database".into(),
        ))
    })
}

/// Turns a panic inside redb into `Corrupt`, for the reads that are not the replica's.
fn caught<T>(read: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| {
        Err(Error::Corrupt(
            "the store file is damaged: reading it failed inside the database".into(),
        ))
    })
}

pub(super) fn read_counts(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    sealer: &Sealer,
) -> Result<Counts, Error> {
    let Some(row) = meta.get("counts").map_err(dberr)? else {
        return Ok(Counts::default());
    };
    let value = sealer
        .open_row("meta", b"counts", row.value())
        .ok_or_else(|| Error::Corrupt("the store's counters do not match their seal".into()))?;
    match (u64_at(value, 0), u64_at(value, 8), u64_at(value, 16)) {
        (Some(entries), Some(docs), Some(next_position)) => Ok(Counts {
            entries,
            docs,
            next_position,
        }),
        _ => Err(Error::Corrupt("the store's counters are malformed".into())),
    }
}

/// A stored summary: the time its document last changed, and the summary.
pub(super) fn decode_summary(value: &[u8]) -> Option<(u64, Value)> {
    let updated_ms = u64_at(value, 0)?;
    let summary = serde_json::from_slice(value.get(8..)?).ok()?;
    Some((updated_ms, summary))
}

const FIELD_STATUS: u8 = b's';
const FIELD_STATE: u8 = b'o';
const FIELD_KIND: u8 = b'k';
const FIELD_UPDATED: u8 = b'u';
/// A meeting's date (`YYYY-MM-DD`), so that a term's meetings are one range of the index.
const FIELD_DATE: u8 = b'd';

fn index_key(collection: Collection, field: u8, value: &[u8], id: Option<&DocId>) -> Vec<u8> {
    let c = collection.as_str();
    let mut k = Vec::with_capacity(8 + c.len() + value.len() + 64);
    k.extend_from_slice(&u16::try_from(c.len()).unwrap_or(u16::MAX).to_be_bytes());
    k.extend_from_slice(c.as_bytes());
    k.push(field);
    k.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
    k.extend_from_slice(value);
    if let Some(id) = id {
        k.extend_from_slice(id.as_str().as_bytes());
    }
    k
}

/// The field of a summary that `kind` filters on, by collection.
fn kind_of(id: &DocId, summary: &Value) -> Option<String> {
    let field = match id.collection() {
        Collection::Obstacles => "type",
        Collection::Training => "kind",
        Collection::Meetings => "format",
        Collection::Practices
        | Collection::Factsheets
        | Collection::Addresses
        | Collection::Amendments
        | Collection::Keys => return None,
    };
    summary.get(field)?.as_str().map(str::to_owned)
}

fn status_of(summary: &Value) -> Option<String> {
    summary.get("status")?.as_str().map(str::to_owned)
}

/// The list index rows of one document.
pub(super) fn index_keys(id: &DocId, summary: &Value, updated_ms: u64) -> Vec<Vec<u8>> {
    let c = id.collection();
    let mut keys = vec![
        index_key(c, FIELD_STATE, id.owner().as_bytes(), Some(id)),
        index_key(c, FIELD_UPDATED, &updated_ms.to_be_bytes(), Some(id)),
    ];
    if let Some(status) = status_of(summary) {
        keys.push(index_key(c, FIELD_STATUS, status.as_bytes(), Some(id)));
    }
    if let Some(kind) = kind_of(id, summary) {
        keys.push(index_key(c, FIELD_KIND, kind.as_bytes(), Some(id)));
    }
    if let Some(date) = date_of(id, summary) {
        keys.push(index_key(c, FIELD_DATE, date.as_bytes(), Some(id)));
    }
    keys
}

/// The date a meeting's summary gives, when it is one.
fn date_of<'a>(id: &DocId, summary: &'a Value) -> Option<&'a str> {
    (id.collection() == Collection::Meetings)
        .then(|| summary.get("date")?.as_str())
        .flatten()
}

/// The index rows of meeting dates, for a store of format 2, which had none.
pub(super) fn date_keys(id: &DocId, summary: &Value) -> Option<Vec<u8>> {
    date_of(id, summary)
        .map(|date| index_key(id.collection(), FIELD_DATE, date.as_bytes(), Some(id)))
}

/// The document id at the end of an index key that starts with `prefix_len` bytes of
/// collection, field and value.
fn id_of_index_key(key: &[u8]) -> Option<DocId> {
    let c_len = usize::from(u16::from_be_bytes(key.get(..2)?.try_into().ok()?));
    let v_at = 2 + c_len + 1;
    let v_len = usize::from(u16::from_be_bytes(
        key.get(v_at..v_at + 2)?.try_into().ok()?,
    ));
    let id = std::str::from_utf8(key.get(v_at + 2 + v_len..)?).ok()?;
    id.parse().ok()
}

impl Reader {
    pub(super) fn new(db: Arc<super::Db>, sealer: Arc<Sealer>) -> Reader {
        Reader { db, sealer }
    }

    fn tx(&self) -> Result<ReadTransaction, backing::Error> {
        self.db.begin_read().map_err(read_err)
    }

    fn unseal<'a>(
        &self,
        table: &str,
        key: &[u8],
        value: &'a [u8],
    ) -> Result<&'a [u8], backing::Error> {
        self.sealer
            .open_row(table, key, value)
            .ok_or_else(|| corrupt(table, key))
    }

    /// Reads one entry row: its position and the entry, checked to sit under its own key.
    fn entry_row(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        key: &[u8],
    ) -> Result<Option<(u64, SignedEntry)>, backing::Error> {
        let Some(row) = table.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        self.decode_entry(key, row.value()).map(Some)
    }

    fn decode_entry(
        &self,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<(u64, SignedEntry), backing::Error> {
        let value = self.unseal("entries", key, sealed)?;
        let position = u64_at(value, 0).ok_or_else(|| corrupt("entries", key))?;
        let entry = SignedEntry::decode(&value[8..]).map_err(|e| {
            backing::Error(format!(
                "store is corrupt: entry under key {}: {e}",
                hex::encode(key)
            ))
        })?;
        if entry_key(&entry.entry.log(), entry.entry.seq).as_slice() != key {
            return Err(backing::Error(format!(
                "store is corrupt: entry {} is stored under another key",
                entry.hash()
            )));
        }
        Ok((position, entry))
    }

    fn counts(&self) -> Result<Counts, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let meta = tx.open_table(tables::META).map_err(dberr)?;
        read_counts(&meta, &self.sealer)
    }

    /// The number of documents.
    pub fn doc_count(&self) -> Result<u64, Error> {
        caught(|| self.doc_count_inner())
    }

    fn doc_count_inner(&self) -> Result<u64, Error> {
        Ok(self.counts()?.docs)
    }

    /// The network the store belongs to, once it holds anything.
    pub fn network(&self) -> Result<Option<String>, Error> {
        caught(|| self.network_inner())
    }

    fn network_inner(&self) -> Result<Option<String>, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let meta = tx.open_table(tables::META).map_err(dberr)?;
        let Some(row) = meta.get("network").map_err(dberr)? else {
            return Ok(None);
        };
        let value = self
            .sealer
            .open_row("meta", b"network", row.value())
            .ok_or_else(|| Error::Corrupt("the store's network does not match its seal".into()))?;
        Ok(Some(String::from_utf8_lossy(value).into_owned()))
    }

    /// Every log's tip.
    pub fn tips(&self) -> Result<BTreeMap<LogId, Tip>, Error> {
        caught(|| self.tips_inner())
    }

    fn tips_inner(&self) -> Result<BTreeMap<LogId, Tip>, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let logs = tx.open_table(tables::LOGS).map_err(dberr)?;
        let mut tips = BTreeMap::new();
        for row in logs.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let key = k.value();
            let value = self
                .sealer
                .open_row("logs", key, v.value())
                .ok_or_else(|| Error::Corrupt(corrupt("logs", key).0))?;
            let parsed = (|| {
                let author = PublicKey::from_bytes(key.get(..32)?.try_into().ok()?).ok()?;
                let incarnation = u32::from_be_bytes(key.get(32..36)?.try_into().ok()?);
                let seq = u64_at(value, 0)?;
                let hash = EntryHash(value.get(8..40)?.try_into().ok()?);
                let timestamp_ms = u64_at(value, 40)?;
                Some((
                    LogId {
                        author,
                        incarnation,
                    },
                    Tip {
                        seq,
                        hash,
                        timestamp_ms,
                    },
                ))
            })();
            let (log, tip) =
                parsed.ok_or_else(|| Error::Corrupt("a log tip is malformed".into()))?;
            tips.insert(log, tip);
        }
        Ok(tips)
    }

    /// The proofs, each checked against the charter.
    pub fn proofs(&self, charter: &Charter) -> Result<Vec<EquivocationProof>, Error> {
        caught(|| self.proofs_inner(charter))
    }

    fn proofs_inner(&self, charter: &Charter) -> Result<Vec<EquivocationProof>, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
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
            // The proof was checked under its version of the charter when it was stored;
            // its signatures are checked again, as the versions are read after it.
            proof
                .verify_signatures(&charter.network, &charter.scope())
                .map_err(|e| Error::Corrupt(format!("equivocation proof: {e}")))?;
            proofs.push(proof);
        }
        Ok(proofs)
    }

    fn doc_counts(&self, tx: &ReadTransaction, id: &DocId) -> Result<Option<DocCounts>, Error> {
        let docs = tx.open_table(tables::DOCS).map_err(dberr)?;
        let Some(row) = docs.get(id.as_str()).map_err(dberr)? else {
            return Ok(None);
        };
        let value = self
            .sealer
            .open_row("docs", id.as_str().as_bytes(), row.value())
            .and_then(DocCounts::decode)
            .ok_or_else(|| Error::Corrupt(corrupt("docs", id.as_str().as_bytes()).0))?;
        Ok(Some(value))
    }

    /// How many changes were appended to a document since its snapshot.
    pub fn doc_tail(&self, id: &DocId) -> Result<u64, Error> {
        caught(|| self.doc_tail_inner(id))
    }

    fn doc_tail_inner(&self, id: &DocId) -> Result<u64, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        Ok(self.doc_counts(&tx, id)?.map_or(0, |c| c.tail))
    }

    /// The entry keys of a document from `after` on (exclusive), in position order.
    fn doc_keys(
        &self,
        tx: &ReadTransaction,
        id: &DocId,
        after: Option<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, backing::Error> {
        let table = tx.open_table(tables::DOC_ENTRIES).map_err(read_err)?;
        let lower = match after {
            Some(p) => prefixed(id.as_str(), p.saturating_add(1)),
            None => prefixed(id.as_str(), 0),
        };
        let upper = prefixed(id.as_str(), u64::MAX);
        let mut keys = Vec::new();
        if after == Some(u64::MAX) {
            return Ok(keys);
        }
        for row in table
            .range(lower.as_slice()..=upper.as_slice())
            .map_err(read_err)?
        {
            let (k, v) = row.map_err(read_err)?;
            let key = k.value();
            let entry = self.unseal("doc_entries", key, v.value())?.to_vec();
            let position = u64_at(key, key.len() - 8).ok_or_else(|| corrupt("doc_entries", key))?;
            keys.push((position, entry));
        }
        Ok(keys)
    }

    fn doc_entries_after(
        &self,
        tx: &ReadTransaction,
        id: &DocId,
        after: Option<u64>,
    ) -> Result<Vec<SignedEntry>, backing::Error> {
        let entries = tx.open_table(tables::ENTRIES).map_err(read_err)?;
        let mut out = Vec::new();
        for (position, key) in self.doc_keys(tx, id, after)? {
            let (at, e) = self.entry_row(&entries, &key)?.ok_or_else(|| {
                backing::Error(format!(
                    "store is corrupt: an entry of {id} is missing (key {})",
                    hex::encode(&key)
                ))
            })?;
            if at != position || e.entry.doc != *id {
                return Err(corrupt("doc_entries", &key));
            }
            out.push(e);
        }
        Ok(out)
    }

    /// A document's summary, if it has one.
    pub fn summary(&self, id: &DocId) -> Result<Option<Value>, Error> {
        caught(|| self.summary_inner(id))
    }

    fn summary_inner(&self, id: &DocId) -> Result<Option<Value>, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let table = tx.open_table(tables::SUMMARIES).map_err(dberr)?;
        let Some(row) = table.get(id.as_str()).map_err(dberr)? else {
            return Ok(None);
        };
        let (_, summary) = self
            .sealer
            .open_row("summaries", id.as_str().as_bytes(), row.value())
            .and_then(decode_summary)
            .ok_or_else(|| Error::Corrupt(corrupt("summaries", id.as_str().as_bytes()).0))?;
        Ok(Some(summary))
    }

    /// One page of a collection's summaries that match `filter`, in document id order,
    /// from an index: the document's state, status or kind when the filter names one, the
    /// time it last changed when only `since` is given, and all documents otherwise.
    pub fn list(
        &self,
        collection: Collection,
        filter: &ListFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, Error> {
        caught(|| self.list_inner(collection, filter, cursor, limit))
    }

    fn list_inner(
        &self,
        collection: Collection,
        filter: &ListFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, Error> {
        let bad_cursor = || Error::Corrupt("the list cursor is not one this node gave".into());
        let after = cursor
            .map(|c| hex::decode(c).map_err(|_| bad_cursor()))
            .transpose()?;
        let tx = self.db.begin_read().map_err(dberr)?;
        let summaries = tx.open_table(tables::SUMMARIES).map_err(dberr)?;
        let (field, value): (u8, Vec<u8>) = if let Some(state) = &filter.state {
            (FIELD_STATE, state.as_bytes().to_vec())
        } else if let Some(status) = &filter.status {
            (FIELD_STATUS, status.as_bytes().to_vec())
        } else if let Some(kind) = &filter.kind {
            (FIELD_KIND, kind.as_bytes().to_vec())
        } else if filter.since_ms.is_some() {
            (FIELD_UPDATED, Vec::new())
        } else {
            (0, Vec::new())
        };
        let mut page = ListPage {
            items: Vec::new(),
            next: None,
        };
        let mut scanned = 0usize;
        let mut take = |key: Vec<u8>, id: DocId, page: &mut ListPage| -> Result<bool, Error> {
            scanned += 1;
            if page.items.len() == limit || scanned > MAX_SCAN {
                return Ok(false);
            }
            let Some(row) = summaries.get(id.as_str()).map_err(dberr)? else {
                return Err(Error::Corrupt(format!(
                    "no summary of {id} behind its index"
                )));
            };
            let (updated_ms, summary) = self
                .sealer
                .open_row("summaries", id.as_str().as_bytes(), row.value())
                .and_then(decode_summary)
                .ok_or_else(|| Error::Corrupt(corrupt("summaries", id.as_str().as_bytes()).0))?;
            let keep = filter.state.as_deref().is_none_or(|s| id.owner() == s)
                && filter
                    .status
                    .as_deref()
                    .is_none_or(|s| status_of(&summary).as_deref() == Some(s))
                && filter
                    .kind
                    .as_deref()
                    .is_none_or(|k| kind_of(&id, &summary).as_deref() == Some(k))
                && filter.since_ms.is_none_or(|since| updated_ms >= since);
            if keep {
                page.items.push(summary);
            }
            page.next = Some(hex::encode(&key));
            Ok(true)
        };
        if field == 0 {
            let lower = format!("{}/", collection.as_str());
            let upper = format!("{}0", collection.as_str());
            let start = match &after {
                Some(a) => String::from_utf8(a.clone()).map_err(|_| bad_cursor())?,
                None => lower.clone(),
            };
            let rows = summaries
                .range(start.as_str()..upper.as_str())
                .map_err(dberr)?;
            let mut done = true;
            for row in rows {
                let (k, _) = row.map_err(dberr)?;
                let key = k.value().to_owned();
                if after.as_deref() == Some(key.as_bytes()) {
                    continue;
                }
                let id: DocId = key
                    .parse()
                    .map_err(|_| Error::Corrupt(format!("a summary key {key:?} is not an id")))?;
                if !take(key.as_bytes().to_vec(), id, &mut page)? {
                    done = false;
                    break;
                }
            }
            if done {
                page.next = None;
            }
            return Ok(page);
        }
        let list = tx.open_table(tables::LIST).map_err(dberr)?;
        let base = index_key(collection, field, &value, None);
        let lower = match (&after, field, filter.since_ms) {
            (Some(a), _, _) => a.clone(),
            (None, FIELD_UPDATED, Some(since)) => {
                index_key(collection, field, &since.to_be_bytes(), None)
            }
            _ => base.clone(),
        };
        // Keys of the updated index carry the time as their value: its prefix ends at the
        // field byte.
        let prefix_len = if field == FIELD_UPDATED {
            2 + collection.as_str().len() + 1
        } else {
            base.len()
        };
        let mut done = true;
        for row in list.range(lower.as_slice()..).map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let key = k.value().to_vec();
            if key.get(..prefix_len) != base.get(..prefix_len) {
                break;
            }
            if after.as_deref() == Some(key.as_slice()) {
                continue;
            }
            if self.sealer.open_row("list", &key, v.value()).is_none() {
                return Err(Error::Corrupt(corrupt("list", &key).0));
            }
            let id = id_of_index_key(&key)
                .ok_or_else(|| Error::Corrupt("a list index row is malformed".into()))?;
            if !take(key, id, &mut page)? {
                done = false;
                break;
            }
        }
        if done {
            page.next = None;
        }
        Ok(page)
    }

    /// The summaries of the meetings dated from `from` to `to` (`YYYY-MM-DD`, both
    /// included), read from one range of the date index: a term's report reads its own
    /// meetings, however many the network held before.
    pub fn meetings_dated(&self, from: &str, to: &str) -> Result<Vec<Value>, Error> {
        caught(|| {
            let tx = self.db.begin_read().map_err(dberr)?;
            let list = tx.open_table(tables::LIST).map_err(dberr)?;
            let summaries = tx.open_table(tables::SUMMARIES).map_err(dberr)?;
            let field = index_key(Collection::Meetings, FIELD_DATE, &[], None);
            let prefix = &field[..field.len() - 2];
            let lower = index_key(Collection::Meetings, FIELD_DATE, from.as_bytes(), None);
            let mut out = Vec::new();
            for row in list.range(lower.as_slice()..).map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                let key = k.value();
                if !key.starts_with(prefix) {
                    break;
                }
                let malformed = || Error::Corrupt("a meeting date index row is malformed".into());
                let len = key
                    .get(prefix.len()..prefix.len() + 2)
                    .and_then(|b| b.try_into().ok())
                    .map(u16::from_be_bytes)
                    .ok_or_else(malformed)?;
                let date = key
                    .get(prefix.len() + 2..prefix.len() + 2 + usize::from(len))
                    .ok_or_else(malformed)?;
                if date > to.as_bytes() {
                    break;
                }
                if self.sealer.open_row("list", key, v.value()).is_none() {
                    return Err(Error::Corrupt(corrupt("list", key).0));
                }
                let id = id_of_index_key(key)
                    .ok_or_else(|| Error::Corrupt("a list index row is malformed".into()))?;
                let row = summaries
                    .get(id.as_str())
                    .map_err(dberr)?
                    .ok_or_else(|| Error::Corrupt(format!("the summary of {id} is missing")))?;
                let (_, summary) = self
                    .sealer
                    .open_row("summaries", id.as_str().as_bytes(), row.value())
                    .and_then(decode_summary)
                    .ok_or_else(|| {
                        Error::Corrupt(corrupt("summaries", id.as_str().as_bytes()).0)
                    })?;
                out.push(summary);
            }
            Ok(out)
        })
    }

    /// One page of the audit trail: up to `limit` entries accepted before position
    /// `before` (all when `None`), newest first as scanned and returned oldest first,
    /// of one author or one document when given.
    /// The operators whose writes made these entries (the local audit), where known: a
    /// peer's entries and this node's entries made before operators existed have none.
    pub fn written_by(&self, hashes: &[EntryHash]) -> Result<Vec<Option<String>>, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let table = match tx.open_table(tables::WRITTEN_BY) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; hashes.len()]),
            Err(e) => return Err(dberr(e)),
        };
        hashes
            .iter()
            .map(|h| {
                let Some(row) = table.get(h.0.as_slice()).map_err(dberr)? else {
                    return Ok(None);
                };
                let name = self
                    .sealer
                    .open_row("written_by", &h.0, row.value())
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .ok_or_else(|| Error::Corrupt(corrupt("written_by", &h.0).0))?;
                Ok(Some(name.to_owned()))
            })
            .collect()
    }

    pub fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
        author: Option<&PublicKey>,
        doc: Option<&DocId>,
    ) -> Result<AuditPage, Error> {
        caught(|| self.audit_inner(before, limit, author, doc))
    }

    fn audit_inner(
        &self,
        before: Option<u64>,
        limit: usize,
        author: Option<&PublicKey>,
        doc: Option<&DocId>,
    ) -> Result<AuditPage, Error> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let entries = tx.open_table(tables::ENTRIES).map_err(dberr)?;
        let mut page = AuditPage {
            entries: Vec::new(),
            next: None,
        };
        let upper = before.unwrap_or(u64::MAX);
        // One pass over the candidates, newest first; each is read when its turn comes,
        // so a page costs what it returns plus what the author filter skips.
        let mut scanned = 0;
        let mut visit = |position: u64, key: &[u8]| -> Result<bool, Error> {
            scanned += 1;
            page.next = Some(position);
            if author.is_some_and(|a| key.get(..32) != Some(a.as_bytes().as_slice())) {
                return Ok(scanned >= MAX_SCAN);
            }
            let (at, e) = self
                .entry_row(&entries, key)
                .map_err(|e| Error::Corrupt(e.0))?
                .ok_or_else(|| Error::Corrupt(format!("entry {} is missing", hex::encode(key))))?;
            if at != position {
                return Err(Error::Corrupt(
                    corrupt("arrival", &position.to_be_bytes()).0,
                ));
            }
            page.entries.push((position, e));
            Ok(page.entries.len() == limit || scanned >= MAX_SCAN)
        };
        match doc {
            Some(id) => {
                let keys = self
                    .doc_keys(&tx, id, None)
                    .map_err(|e| Error::Corrupt(e.0))?;
                for (position, key) in keys.into_iter().rev().filter(|(p, _)| *p < upper) {
                    if visit(position, &key)? {
                        break;
                    }
                }
            }
            None => {
                let arrival = tx.open_table(tables::ARRIVAL).map_err(dberr)?;
                for row in arrival.range(..upper).map_err(dberr)?.rev() {
                    let (k, v) = row.map_err(dberr)?;
                    let position = k.value();
                    let key = self
                        .sealer
                        .open_row("arrival", &position.to_be_bytes(), v.value())
                        .ok_or_else(|| {
                            Error::Corrupt(corrupt("arrival", &position.to_be_bytes()).0)
                        })?;
                    if visit(position, key)? {
                        break;
                    }
                }
            }
        }
        if page.next == Some(0) || page.entries.len() < limit && scanned < MAX_SCAN {
            page.next = None;
        }
        page.entries.reverse();
        Ok(page)
    }

    /// Visits the entries dated in a term, one at a time, in the order this node
    /// accepted them; a visit that returns an error ends the walk with it.
    pub fn for_each_term_entry<E: From<Error>>(
        &self,
        term: &str,
        visit: impl FnMut(SignedEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut visit = visit;
        let mut failed = None;
        caught(|| {
            let tx = self.db.begin_read().map_err(dberr)?;
            let terms = tx.open_table(tables::TERMS).map_err(dberr)?;
            let entries = tx.open_table(tables::ENTRIES).map_err(dberr)?;
            let lower = prefixed(term, 0);
            let upper = prefixed(term, u64::MAX);
            for row in terms
                .range(lower.as_slice()..=upper.as_slice())
                .map_err(dberr)?
            {
                let (k, v) = row.map_err(dberr)?;
                let key = self
                    .sealer
                    .open_row("terms", k.value(), v.value())
                    .ok_or_else(|| Error::Corrupt(corrupt("terms", k.value()).0))?;
                let (_, e) = self
                    .entry_row(&entries, key)
                    .map_err(|e| Error::Corrupt(e.0))?
                    .ok_or_else(|| Error::Corrupt("an entry of a term is missing".into()))?;
                if let Err(e) = visit(e) {
                    failed = Some(e);
                    break;
                }
            }
            Ok(())
        })
        .map_err(E::from)?;
        failed.map_or(Ok(()), Err)
    }

    /// Checks everything `load` does not read (see [`super::Store::verify`]).
    pub(super) fn verify(
        &self,
        charter: Arc<Charter>,
        loaded: &Replica<Reader>,
        progress: super::Progress<'_>,
    ) -> Result<(usize, usize), Error> {
        let c = |e: backing::Error| Error::Corrupt(e.0);
        let scope = charter.scope();
        let tx = self.db.begin_read().map_err(dberr)?;
        let counts = self.counts()?;
        let entries = tx.open_table(tables::ENTRIES).map_err(dberr)?;
        let hashes = tx.open_table(tables::HASHES).map_err(dberr)?;
        let arrival = tx.open_table(tables::ARRIVAL).map_err(dberr)?;
        let total = entries.len().map_err(dberr)?;
        for (name, len) in [
            ("hash index", hashes.len().map_err(dberr)?),
            ("arrival index", arrival.len().map_err(dberr)?),
            ("entry counter", counts.entries),
        ] {
            if len != total {
                return Err(Error::Corrupt(format!(
                    "the {name} holds {len} entries, the log {total}"
                )));
            }
        }
        // Every entry in the order this node accepted it, with its chain, its index rows
        // and its signature checked, then every rule again in a fresh replica.
        let proofs: Vec<EquivocationProof> = loaded.proofs().cloned().collect();
        let mut fresh = Replica::with_backing(
            charter,
            Limits::unbounded(),
            backing::Nothing,
            BTreeMap::new(),
            proofs,
        );
        let mut tips: HashMap<LogId, Tip> = HashMap::new();
        let mut batch: Vec<SignedEntry> = Vec::with_capacity(1024);
        let mut done = 0usize;
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        let mut flush = |batch: &mut Vec<SignedEntry>,
                         fresh: &mut Replica<backing::Nothing>,
                         done: &mut usize|
         -> Result<(), Error> {
            super::check_signatures(batch, &scope)?;
            let report = fresh.ingest_verified(std::mem::take(batch))?;
            if let Some((hash, invalid)) = report.rejected.first() {
                return Err(Error::Corrupt(format!("entry {hash}: {invalid}")));
            }
            *done += report.accepted.len();
            progress("checking entries and rules", *done, total);
            Ok(())
        };
        for row in arrival.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let position = k.value();
            let key = self
                .unseal("arrival", &position.to_be_bytes(), v.value())
                .map_err(c)?;
            let (at, e) = self
                .entry_row(&entries, key)
                .map_err(c)?
                .ok_or_else(|| Error::Corrupt(format!("entry {} is missing", hex::encode(key))))?;
            if at != position {
                return Err(Error::Corrupt(
                    corrupt("arrival", &position.to_be_bytes()).0,
                ));
            }
            match hashes.get(e.hash().0.as_slice()).map_err(dberr)? {
                Some(row)
                    if self.sealer.open_row("hashes", &e.hash().0, row.value()) == Some(key) => {}
                _ => {
                    return Err(Error::Corrupt(format!(
                        "the hash index does not name entry {}",
                        e.hash()
                    )));
                }
            }
            let log = e.entry.log();
            crate::log::check_chain(&e.entry, tips.get(&log)).map_err(|err| {
                Error::Corrupt(format!(
                    "log {} of {} breaks at seq {}: {err}",
                    log.incarnation,
                    log.author.short(),
                    e.entry.seq
                ))
            })?;
            tips.insert(log, Tip::from(&e));
            batch.push(e);
            if batch.len() == 1024 {
                flush(&mut batch, &mut fresh, &mut done)?;
            }
        }
        flush(&mut batch, &mut fresh, &mut done)?;
        if fresh.pending_count() > 0 {
            return Err(Error::Corrupt(format!(
                "{} entries lack their causal past",
                fresh.pending_count()
            )));
        }
        let stored = self.tips()?;
        if stored.len() != tips.len() || stored.iter().any(|(log, tip)| tips.get(log) != Some(tip))
        {
            return Err(Error::Corrupt(
                "the log tips do not match the entries".into(),
            ));
        }
        let docs: Vec<(DocId, Automerge)> = fresh
            .docs()
            .map(|(id, doc)| (id.clone(), doc.clone()))
            .collect();
        if u64::try_from(docs.len()).ok() != Some(counts.docs) {
            return Err(Error::Corrupt(format!(
                "the document counter says {}, the entries make {}",
                counts.docs,
                docs.len()
            )));
        }
        for (id, doc) in &docs {
            let stored = self.doc(id).map_err(c)?;
            let mut a = stored.map(|d| d.get_heads()).unwrap_or_default();
            let mut b = doc.get_heads();
            a.sort();
            b.sort();
            if a != b {
                return Err(Error::Corrupt(format!("{id} does not match its entries")));
            }
            if self.summary(id)? != Some(crate::docs::view::summary(id, doc)) {
                return Err(Error::Corrupt(format!(
                    "the summary of {id} does not match the document"
                )));
            }
        }
        let summaries = tx.open_table(tables::SUMMARIES).map_err(dberr)?;
        if summaries.len().map_err(dberr)? != counts.docs {
            return Err(Error::Corrupt("a summary has no document".into()));
        }
        self.verify_rows(&tx, &docs, counts)?;
        Ok((done, docs.len()))
    }

    /// Every row of every table matches its seal, and every index holds exactly the rows
    /// its source calls for: a row that no read reaches is checked here too.
    fn verify_rows(
        &self,
        tx: &ReadTransaction,
        docs: &[(DocId, Automerge)],
        counts: Counts,
    ) -> Result<(), Error> {
        let sealed = |table: &str, key: &[u8], value: &[u8]| -> Result<(), Error> {
            self.sealer
                .open_row(table, key, value)
                .map(|_| ())
                .ok_or_else(|| Error::Corrupt(corrupt(table, key).0))
        };
        let mut lens: HashMap<&str, u64> = HashMap::new();
        for (name, def) in [
            ("entries", tables::ENTRIES),
            ("hashes", tables::HASHES),
            ("logs", tables::LOGS),
            ("doc_entries", tables::DOC_ENTRIES),
            ("list", tables::LIST),
            ("terms", tables::TERMS),
        ] {
            let table = tx.open_table(def).map_err(dberr)?;
            for row in table.iter().map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                sealed(name, k.value(), v.value())?;
            }
            lens.insert(name, table.len().map_err(dberr)?);
        }
        for (name, def) in [
            ("meta", tables::META),
            ("docs", tables::DOCS),
            ("snapshots", tables::SNAPSHOTS),
            ("summaries", tables::SUMMARIES),
        ] {
            let table = tx.open_table(def).map_err(dberr)?;
            for row in table.iter().map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                // The format row says how to read the rest, and is the one row not sealed.
                if name == "meta" && k.value() == "format" {
                    continue;
                }
                sealed(name, k.value().as_bytes(), v.value())?;
            }
            lens.insert(name, table.len().map_err(dberr)?);
        }
        let arrival = tx.open_table(tables::ARRIVAL).map_err(dberr)?;
        for row in arrival.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            sealed("arrival", &k.value().to_be_bytes(), v.value())?;
        }
        let mut index_rows = 0u64;
        let mut entries_in_docs = 0u64;
        for (id, doc) in docs {
            let tx_counts = self
                .doc_counts(tx, id)?
                .ok_or_else(|| Error::Corrupt(format!("{id} has no counters")))?;
            entries_in_docs += tx_counts.entries;
            index_rows += index_keys(id, &crate::docs::view::summary(id, doc), 0).len() as u64;
        }
        let terms = self.term_count(tx).map_err(|e| Error::Corrupt(e.0))?;
        for (name, found, want) in [
            ("doc_entries", lens["doc_entries"], counts.entries),
            ("document counters", entries_in_docs, counts.entries),
            ("docs", lens["docs"], counts.docs),
            ("list", lens["list"], index_rows),
            ("terms", lens["terms"], terms),
        ] {
            if found != want {
                return Err(Error::Corrupt(format!(
                    "the {name} table holds {found} rows where {want} are due"
                )));
            }
        }
        if lens["snapshots"] > counts.docs {
            return Err(Error::Corrupt("a snapshot has no document".into()));
        }
        Ok(())
    }

    /// How many entries have a term: those whose timestamp is a date.
    fn term_count(&self, tx: &ReadTransaction) -> Result<u64, backing::Error> {
        let entries = tx.open_table(tables::ENTRIES).map_err(read_err)?;
        let mut n = 0;
        for row in entries.iter().map_err(read_err)? {
            let (k, v) = row.map_err(read_err)?;
            let (_, e) = self.decode_entry(k.value(), v.value())?;
            if super::term_of_ms(e.entry.timestamp_ms).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }
}

impl Backing for Reader {
    fn entry(&self, log: &LogId, seq: u64) -> Result<Option<SignedEntry>, backing::Error> {
        guarded(|| {
            let tx = self.tx()?;
            let entries = tx.open_table(tables::ENTRIES).map_err(read_err)?;
            Ok(self
                .entry_row(&entries, &entry_key(log, seq))?
                .map(|(_, e)| e))
        })
    }

    fn locate(&self, hash: &EntryHash) -> Result<Option<(LogId, u64)>, backing::Error> {
        guarded(|| {
            let tx = self.tx()?;
            let hashes = tx.open_table(tables::HASHES).map_err(read_err)?;
            let Some(row) = hashes.get(hash.0.as_slice()).map_err(read_err)? else {
                return Ok(None);
            };
            let key = self.unseal("hashes", &hash.0, row.value())?;
            let parsed = (|| {
                let author = PublicKey::from_bytes(key.get(..32)?.try_into().ok()?).ok()?;
                let incarnation = u32::from_be_bytes(key.get(32..36)?.try_into().ok()?);
                let seq = u64_at(key, 36)?;
                Some((
                    LogId {
                        author,
                        incarnation,
                    },
                    seq,
                ))
            })();
            parsed.map(Some).ok_or_else(|| corrupt("hashes", &hash.0))
        })
    }

    fn doc(&self, id: &DocId) -> Result<Option<Automerge>, backing::Error> {
        guarded(|| {
            let tx = self.tx()?;
            let snapshots = tx.open_table(tables::SNAPSHOTS).map_err(read_err)?;
            let (mut doc, covered) = match snapshots.get(id.as_str()).map_err(read_err)? {
                Some(row) => {
                    let value = self.unseal("snapshots", id.as_str().as_bytes(), row.value())?;
                    let covered = u64_at(value, 0)
                        .ok_or_else(|| corrupt("snapshots", id.as_str().as_bytes()))?;
                    let doc = Automerge::load(&value[8..]).map_err(|e| {
                        backing::Error(format!("store is corrupt: snapshot of {id}: {e}"))
                    })?;
                    (doc, Some(covered))
                }
                None => (Automerge::new(), None),
            };
            let tail = self.doc_entries_after(&tx, id, covered)?;
            if covered.is_none() && tail.is_empty() {
                return Ok(None);
            }
            let changes = tail
                .iter()
                .map(|e| automerge::Change::from_bytes(e.entry.change.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| backing::Error(format!("store is corrupt: a change of {id}: {e}")))?;
            doc.apply_changes(changes)
                .map_err(|e| backing::Error(format!("store is corrupt: {id}: {e}")))?;
            Ok(Some(doc))
        })
    }

    fn doc_entries(&self, id: &DocId) -> Result<Vec<SignedEntry>, backing::Error> {
        guarded(|| {
            let tx = self.tx()?;
            self.doc_entries_after(&tx, id, None)
        })
    }

    fn log_from(&self, log: &LogId, seq: u64) -> Result<Vec<SignedEntry>, backing::Error> {
        guarded(|| {
            let tx = self.tx()?;
            let entries = tx.open_table(tables::ENTRIES).map_err(read_err)?;
            let lower = entry_key(log, seq);
            let upper = entry_key(log, u64::MAX);
            let mut out = Vec::new();
            for row in entries
                .range(lower.as_slice()..=upper.as_slice())
                .map_err(read_err)?
            {
                let (k, v) = row.map_err(read_err)?;
                let (_, e) = self.decode_entry(k.value(), v.value())?;
                out.push(e);
            }
            Ok(out)
        })
    }

    fn entries_in_order(
        &self,
        from: &[(LogId, u64)],
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SignedEntry>, bool), backing::Error> {
        guarded(|| {
            let tx = self.tx()?;
            let entries = tx.open_table(tables::ENTRIES).map_err(read_err)?;
            backing::merge_in_order(from, max, max_bytes, |log, seq| {
                self.entry_row(&entries, &entry_key(log, seq))
            })
        })
    }

    fn position(&self, log: &LogId, seq: u64) -> Result<Option<u64>, backing::Error> {
        guarded(|| {
            let tx = self.tx()?;
            let entries = tx.open_table(tables::ENTRIES).map_err(read_err)?;
            Ok(self
                .entry_row(&entries, &entry_key(log, seq))?
                .map(|(position, _)| position))
        })
    }

    fn arrived_from(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SignedEntry>, Option<u64>), backing::Error> {
        guarded(|| {
            let tx = self.tx()?;
            let entries = tx.open_table(tables::ENTRIES).map_err(read_err)?;
            let arrival = tx.open_table(tables::ARRIVAL).map_err(read_err)?;
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            for row in arrival.range(from..).map_err(read_err)? {
                let (k, v) = row.map_err(read_err)?;
                let position = k.value();
                if out.len() >= max.max(1) || (!out.is_empty() && bytes >= max_bytes) {
                    return Ok((out, Some(position)));
                }
                let key = self.unseal("arrival", &position.to_be_bytes(), v.value())?;
                let (at, entry) = self
                    .entry_row(&entries, key)?
                    .ok_or_else(|| corrupt("arrival", &position.to_be_bytes()))?;
                if at != position {
                    return Err(corrupt("arrival", &position.to_be_bytes()));
                }
                bytes += entry.bytes().len();
                out.push(entry);
            }
            Ok((out, None))
        })
    }

    fn doc_ids(&self, collection: crate::docs::Collection) -> Result<Vec<DocId>, backing::Error> {
        guarded(|| {
            let tx = self.tx()?;
            let docs = tx.open_table(tables::DOCS).map_err(read_err)?;
            let lower = format!("{}/", collection.as_str());
            let upper = format!("{}0", collection.as_str());
            let mut out = Vec::new();
            for row in docs
                .range(lower.as_str()..upper.as_str())
                .map_err(read_err)?
            {
                let (k, _) = row.map_err(read_err)?;
                let id: DocId = k
                    .value()
                    .parse()
                    .map_err(|_| corrupt("docs", k.value().as_bytes()))?;
                out.push(id);
            }
            Ok(out)
        })
    }

    fn entry_count(&self) -> u64 {
        self.counts().map_or(0, |c| c.entries)
    }
}
