//! The narrow interface through which the replica reads what earlier commits made
//! durable, so that the replica holds only a bounded working set and does no IO itself.
//!
//! The store implements it over its tables; [`Nothing`] is the backing of a replica that
//! keeps everything in memory (tests, generators of data sets). A backing only ever holds
//! entries that the replica accepted and then flushed, so every read is of valid data, and
//! a read that finds the data damaged returns an error instead.

use automerge::Automerge;

use crate::docs::DocId;
use crate::log::{EntryHash, LogId, SignedEntry};

/// A read of the backing failed: the data is damaged or the disk failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Error(pub String);

/// Durable reads of accepted entries and documents.
pub trait Backing {
    /// The entry of `log` at `seq`.
    fn entry(&self, log: &LogId, seq: u64) -> Result<Option<SignedEntry>, Error>;

    /// Where the entry named `hash` sits.
    fn locate(&self, hash: &EntryHash) -> Result<Option<(LogId, u64)>, Error>;

    /// The document, loaded from its snapshot and the changes appended since.
    fn doc(&self, id: &DocId) -> Result<Option<Automerge>, Error>;

    /// Every entry of a document, in a causal order.
    fn doc_entries(&self, id: &DocId) -> Result<Vec<SignedEntry>, Error>;

    /// The entries of `log` from `seq` on, in log order.
    fn log_from(&self, log: &LogId, seq: u64) -> Result<Vec<SignedEntry>, Error>;

    /// Entries in the order they were accepted, starting at each `(log, seq)` of `from`
    /// and going on in each of those logs: at most `max` entries and about `max_bytes`
    /// (always at least one). Returns whether more remain.
    fn entries_in_order(
        &self,
        from: &[(LogId, u64)],
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SignedEntry>, bool), Error>;

    /// The position the entry of `log` at `seq` was accepted at.
    fn position(&self, log: &LogId, seq: u64) -> Result<Option<u64>, Error>;

    /// Entries of every log in the order they were accepted, from position `from` on: at
    /// most `max` entries and about `max_bytes` (always at least one). Returns the
    /// position to go on from when more remain.
    fn arrived_from(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SignedEntry>, Option<u64>), Error>;

    /// The ids of the documents of `collection` that the backing holds.
    fn doc_ids(&self, collection: crate::docs::Collection) -> Result<Vec<DocId>, Error>;

    /// How many entries the backing holds.
    fn entry_count(&self) -> u64;

    /// Whether what the caller commits lands here, so that the replica may drop it from
    /// memory once it is flushed.
    fn is_durable(&self) -> bool {
        true
    }
}

/// The backing of a replica that keeps everything in memory: it holds nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Nothing;

impl Backing for Nothing {
    fn entry(&self, _: &LogId, _: u64) -> Result<Option<SignedEntry>, Error> {
        Ok(None)
    }
    fn locate(&self, _: &EntryHash) -> Result<Option<(LogId, u64)>, Error> {
        Ok(None)
    }
    fn doc(&self, _: &DocId) -> Result<Option<Automerge>, Error> {
        Ok(None)
    }
    fn doc_entries(&self, _: &DocId) -> Result<Vec<SignedEntry>, Error> {
        Ok(Vec::new())
    }
    fn log_from(&self, _: &LogId, _: u64) -> Result<Vec<SignedEntry>, Error> {
        Ok(Vec::new())
    }
    fn entries_in_order(
        &self,
        _: &[(LogId, u64)],
        _: usize,
        _: usize,
    ) -> Result<(Vec<SignedEntry>, bool), Error> {
        Ok((Vec::new(), false))
    }
    fn position(&self, _: &LogId, _: u64) -> Result<Option<u64>, Error> {
        Ok(None)
    }
    fn arrived_from(
        &self,
        _: u64,
        _: usize,
        _: usize,
    ) -> Result<(Vec<SignedEntry>, Option<u64>), Error> {
        Ok((Vec::new(), None))
    }
    fn doc_ids(&self, _: crate::docs::Collection) -> Result<Vec<DocId>, Error> {
        Ok(Vec::new())
    }
    fn entry_count(&self) -> u64 {
        0
    }
    fn is_durable(&self) -> bool {
        false
    }
}

/// Merges logs by the position each entry was accepted at: the shared walk behind
/// [`Backing::entries_in_order`]. `read` gives the position and entry of `(log, seq)`.
pub fn merge_in_order(
    from: &[(LogId, u64)],
    max: usize,
    max_bytes: usize,
    mut read: impl FnMut(&LogId, u64) -> Result<Option<(u64, SignedEntry)>, Error>,
) -> Result<(Vec<SignedEntry>, bool), Error> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut heap = BinaryHeap::with_capacity(from.len());
    let mut held = std::collections::HashMap::with_capacity(from.len());
    for (log, seq) in from {
        if let Some((position, entry)) = read(log, *seq)? {
            heap.push(Reverse((position, *log, *seq)));
            held.insert((*log, *seq), entry);
        }
    }
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(Reverse((_, log, seq))) = heap.pop() {
        let Some(entry) = held.remove(&(log, seq)) else {
            continue;
        };
        if out.len() == max || (!out.is_empty() && bytes + entry.bytes().len() > max_bytes) {
            return Ok((out, true));
        }
        bytes += entry.bytes().len();
        out.push(entry);
        if let Some((position, next)) = read(&log, seq + 1)? {
            heap.push(Reverse((position, log, seq + 1)));
            held.insert((log, seq + 1), next);
        }
    }
    Ok((out, false))
}
