//! The documents the replica holds in memory: a least-recently-used cache of bounded
//! size. A document changed since the last flush is pinned: the backing does not have
//! its latest state yet, so it is never evicted before the flush.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::{ActorId, Automerge};

use crate::docs::DocId;

/// One document and the last Automerge seq of each actor in it.
#[derive(Default)]
pub(super) struct DocState {
    pub doc: Automerge,
    pub seqs: HashMap<ActorId, u64>,
}

impl DocState {
    /// Wraps a document loaded whole, reading each actor's last seq from its changes.
    pub fn new(doc: Automerge) -> DocState {
        let mut seqs: HashMap<ActorId, u64> = HashMap::new();
        for meta in doc.get_changes_meta(&[]) {
            let seq = seqs.entry(meta.actor.into_owned()).or_default();
            *seq = (*seq).max(meta.seq);
        }
        DocState { doc, seqs }
    }
}

pub(super) struct Cache {
    capacity: usize,
    docs: HashMap<DocId, (DocState, u64)>,
    /// Last use -> document, oldest first.
    uses: BTreeMap<u64, DocId>,
    clock: u64,
    dirty: HashSet<DocId>,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache {
            capacity: capacity.max(1),
            docs: HashMap::new(),
            uses: BTreeMap::new(),
            clock: 0,
            dirty: HashSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn contains(&self, id: &DocId) -> bool {
        self.docs.contains_key(id)
    }

    pub fn get(&self, id: &DocId) -> Option<&DocState> {
        self.docs.get(id).map(|(state, _)| state)
    }

    /// The document for a change: marked dirty and as just used.
    pub fn get_mut(&mut self, id: &DocId) -> Option<&mut DocState> {
        self.touch(id);
        self.dirty.insert(id.clone());
        self.docs.get_mut(id).map(|(state, _)| state)
    }

    /// Marks a document as just used.
    pub fn touch(&mut self, id: &DocId) {
        self.clock += 1;
        let clock = self.clock;
        if let Some((_, used)) = self.docs.get_mut(id) {
            self.uses.remove(used);
            *used = clock;
            self.uses.insert(clock, id.clone());
        }
    }

    /// Puts a document in, clean or dirty, then evicts the least recently used clean
    /// documents while the cache is over its capacity.
    pub fn insert(&mut self, id: DocId, state: DocState, dirty: bool) {
        self.remove(&id);
        self.clock += 1;
        self.uses.insert(self.clock, id.clone());
        if dirty {
            self.dirty.insert(id.clone());
        }
        self.docs.insert(id, (state, self.clock));
        self.evict();
    }

    pub fn remove(&mut self, id: &DocId) {
        if let Some((_, used)) = self.docs.remove(id) {
            self.uses.remove(&used);
        }
        self.dirty.remove(id);
    }

    /// Every change so far is durable: nothing is pinned any more.
    pub fn flushed(&mut self) {
        self.dirty.clear();
        self.evict();
    }

    fn evict(&mut self) {
        if self.docs.len() <= self.capacity {
            return;
        }
        let victims: Vec<(u64, DocId)> = self
            .uses
            .iter()
            .filter(|(_, id)| !self.dirty.contains(*id))
            .take(self.docs.len() - self.capacity)
            .map(|(used, id)| (*used, id.clone()))
            .collect();
        for (used, id) in victims {
            self.uses.remove(&used);
            self.docs.remove(&id);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&DocId, &DocState)> {
        self.docs.iter().map(|(id, (state, _))| (id, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u128) -> DocId {
        DocId::new(
            crate::docs::Collection::Obstacles,
            "LT",
            ulid::Ulid::from(i),
        )
    }

    #[test]
    fn the_least_recently_used_clean_document_goes_first() {
        let mut cache = Cache::new(2);
        cache.insert(id(1), DocState::default(), false);
        cache.insert(id(2), DocState::default(), false);
        cache.touch(&id(1));
        cache.insert(id(3), DocState::default(), false);
        assert!(cache.contains(&id(1)) && cache.contains(&id(3)));
        assert!(!cache.contains(&id(2)));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn changed_documents_stay_until_they_are_flushed() {
        let mut cache = Cache::new(1);
        cache.insert(id(1), DocState::default(), true);
        cache.insert(id(2), DocState::default(), true);
        cache.insert(id(3), DocState::default(), false);
        // The two changed ones are pinned; the clean one went at once.
        assert_eq!(cache.len(), 2);
        assert!(!cache.contains(&id(3)));
        cache.flushed();
        assert_eq!(cache.len(), 1);
        assert!(cache.contains(&id(2)), "the most recently used stays");
    }
}
