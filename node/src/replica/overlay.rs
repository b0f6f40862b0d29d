//! The entries accepted since the last flush: what the backing does not hold yet. A
//! replica without a backing never flushes, so for it the overlay is every entry.

use std::collections::{BTreeMap, HashMap};

use crate::docs::DocId;
use crate::log::{EntryHash, LogId, SignedEntry};

#[derive(Default)]
pub(super) struct Overlay {
    /// (log, seq) -> (position in acceptance order, entry).
    entries: BTreeMap<(LogId, u64), (u64, SignedEntry)>,
    by_hash: HashMap<EntryHash, (LogId, u64)>,
    by_doc: HashMap<DocId, Vec<(LogId, u64)>>,
    next: u64,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn push(&mut self, entry: SignedEntry) {
        let at = (entry.entry.log(), entry.entry.seq);
        self.by_hash.insert(entry.hash(), at);
        self.by_doc
            .entry(entry.entry.doc.clone())
            .or_default()
            .push(at);
        self.entries.insert(at, (self.next, entry));
        self.next += 1;
    }

    pub fn remove(&mut self, log: &LogId, seq: u64) -> Option<SignedEntry> {
        let (_, entry) = self.entries.remove(&(*log, seq))?;
        self.by_hash.remove(&entry.hash());
        if let Some(list) = self.by_doc.get_mut(&entry.entry.doc) {
            list.retain(|at| *at != (*log, seq));
            if list.is_empty() {
                self.by_doc.remove(&entry.entry.doc);
            }
        }
        Some(entry)
    }

    pub fn get(&self, log: &LogId, seq: u64) -> Option<&SignedEntry> {
        self.entries.get(&(*log, seq)).map(|(_, e)| e)
    }

    pub fn get_with_position(&self, log: &LogId, seq: u64) -> Option<(u64, SignedEntry)> {
        self.entries
            .get(&(*log, seq))
            .map(|(position, e)| (*position, e.clone()))
    }

    pub fn locate(&self, hash: &EntryHash) -> Option<(LogId, u64)> {
        self.by_hash.get(hash).copied()
    }

    /// The entries of a document, in the order they were accepted.
    pub fn doc_entries(&self, id: &DocId) -> Vec<SignedEntry> {
        let mut out: Vec<(u64, SignedEntry)> = self
            .by_doc
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|(log, seq)| self.get_with_position(log, *seq))
            .collect();
        out.sort_by_key(|(position, _)| *position);
        out.into_iter().map(|(_, e)| e).collect()
    }

    /// The entries of `log` from `seq` on.
    pub fn log_from(&self, log: &LogId, seq: u64) -> Vec<SignedEntry> {
        self.entries
            .range((*log, seq)..=(*log, u64::MAX))
            .map(|(_, (_, e))| e.clone())
            .collect()
    }

    pub fn doc_ids(&self) -> impl Iterator<Item = &DocId> {
        self.by_doc.keys()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_hash.clear();
        self.by_doc.clear();
    }
}

impl Overlay {
    /// The entries after each `(log, seq)` of `from` in acceptance order; see
    /// [`super::backing::Backing::entries_in_order`].
    pub fn entries_in_order(
        &self,
        from: &[(LogId, u64)],
        max: usize,
        max_bytes: usize,
    ) -> (Vec<SignedEntry>, bool) {
        let starts: Vec<(LogId, u64)> = from
            .iter()
            .filter_map(|(log, seq)| {
                self.entries
                    .range((*log, *seq)..=(*log, u64::MAX))
                    .next()
                    .map(|((log, seq), _)| (*log, *seq))
            })
            .collect();
        super::backing::merge_in_order(&starts, max, max_bytes, |log, seq| {
            Ok(self.get_with_position(log, seq))
        })
        .unwrap_or_default()
    }
}
