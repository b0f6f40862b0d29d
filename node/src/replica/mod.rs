//! The replica: the state machine that decides which entries are accepted and what the
//! documents say, driven by `ingest` and `prepare`. It does no IO.
//!
//! `ingest` takes entries in any order, with duplicates, and accepts exactly those whose
//! causal past is accepted and that pass every check. Entries waiting for their past sit
//! in a bounded pending set and wake when what they wait for is accepted. Two entries of
//! one log with the same seq make a proof; the log is then cut before that seq on every
//! node, with everything that builds on the cut part, and the documents it touched are
//! rebuilt from what stays accepted, so the verdict is the same whichever of the two a
//! node saw first.
//!
//! What the replica holds in memory is bounded: each log's tip, the proofs, the pending
//! set, a cache of documents, and the entries accepted since the last flush (the
//! overlay). Everything older is read through a [`Backing`], which the store implements;
//! the caller makes each ingest durable and then calls [`Replica::flush`]. A replica with
//! the [`Nothing`] backing never flushes and keeps everything in memory.

pub mod backing;
mod cache;
mod charters;
mod overlay;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use automerge::{Automerge, Change, ChangeHash};

pub use backing::{Backing, Nothing};
use cache::{Cache, DocState};
use charters::Charters;
use overlay::Overlay;

use crate::charter::Charter;
use crate::docs::command::{Command, Refused, Writer};
use crate::docs::rules::{self, Staged};
use crate::docs::{Collection, DocId};
use crate::identity::{PublicKey, SecretKey};
use crate::log::{self, Entry, EntryHash, EquivocationProof, Invalid, LogId, SignedEntry, Tip};

/// Bounds of what the replica holds in memory, and how far ahead of its clock it takes
/// entries in.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_pending_entries: usize,
    pub max_pending_bytes: usize,
    /// Documents kept in memory beside those changed since the last flush.
    pub max_cached_docs: usize,
    /// How far an entry may be dated ahead of the replica's clock and still be taken in;
    /// a later one waits until the clock comes within this of its time.
    pub max_ahead_ms: u64,
    /// Of the pending entries, how many may wait for their time.
    pub max_waiting_for_time: usize,
    /// How long an entry may wait for its past before it is dropped; sync brings it again
    /// once its past can be had.
    pub max_pending_age_ms: u64,
}

/// The default tolerance of clocks: an entry dated up to five minutes ahead of the node's
/// clock is taken in at once, and a node whose clock is that far from its peers' says so.
pub const MAX_AHEAD_MS: u64 = 5 * 60 * 1000;

impl Limits {
    /// No bounds: for checking a whole store, whose every entry is taken in at once.
    pub fn unbounded() -> Limits {
        Limits {
            max_pending_entries: usize::MAX,
            max_pending_bytes: usize::MAX,
            max_cached_docs: usize::MAX,
            max_waiting_for_time: usize::MAX,
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending_entries: 20_000,
            max_pending_bytes: 64 * 1024 * 1024,
            max_cached_docs: 1024,
            max_ahead_ms: MAX_AHEAD_MS,
            max_waiting_for_time: 1024,
            max_pending_age_ms: 10 * 60 * 1000,
        }
    }
}

/// Entries whose changes Automerge could not apply that are remembered, so that they are
/// refused at once when they come again; older ones are forgotten and refused again by
/// the same check when they come back.
const MAX_POISONED: usize = 4096;

/// An internal failure: a bug, a corrupted document or a failed read of the backing,
/// never a peer's fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying changes to {doc} failed: {reason}")]
    Apply { doc: String, reason: String },
    #[error("reading the store failed: {0}")]
    Backing(#[from] backing::Error),
}

/// What one `ingest` did.
#[derive(Debug, Default)]
pub struct Report {
    /// Newly accepted entries, in the order they were accepted (causal order).
    pub accepted: Vec<SignedEntry>,
    pub rejected: Vec<(EntryHash, Invalid)>,
    pub duplicates: usize,
    /// Entries refused because the pending set was full.
    pub overflow: usize,
    pub new_proofs: Vec<EquivocationProof>,
    /// Entries accepted before and cut now, by a proof or because they build on a change
    /// that could not be applied: the store must delete them.
    pub removed: Vec<SignedEntry>,
    /// A rebuild ran: the documents in `rebuilt_docs` must be saved whole.
    pub rebuilt: bool,
    pub rebuilt_docs: BTreeSet<DocId>,
    /// Documents that changed.
    pub touched: BTreeSet<DocId>,
}

struct Candidate {
    entry: SignedEntry,
    change: Change,
    /// The change this entry waits for, if any, so that dropping it also forgets the wait.
    waits_for: Option<ChangeHash>,
    /// The time this entry waits for, if it is dated ahead of the clock.
    waits_until: Option<u64>,
    /// The clock when it came, if the replica knew the time.
    since_ms: Option<u64>,
    /// The version of the charter this entry waits for, if it names one not yet in force.
    waits_charter: Option<u32>,
    /// The rotated key this entry waits for, if its author's key came by a rotation not
    /// yet held here.
    waits_key: Option<PublicKey>,
}

impl Candidate {
    fn new(entry: SignedEntry, change: Change) -> Candidate {
        Candidate {
            entry,
            change,
            waits_for: None,
            waits_until: None,
            since_ms: None,
            waits_charter: None,
            waits_key: None,
        }
    }
}

type PendingKey = (LogId, u64, EntryHash);
/// A log and the first seq a rebuild cuts from it.
type Cut = (LogId, u64);

/// The state of one node's view of the network.
pub struct Replica<B: Backing = Nothing> {
    charters: Charters,
    limits: Limits,
    backing: B,
    tips: BTreeMap<LogId, Tip>,
    /// Per author: logs and entries, kept with the tips so that totals cost nothing.
    by_author: BTreeMap<crate::identity::PublicKey, (u64, u64)>,
    /// XOR of a hash of every log's tip: equal on two nodes that hold the same logs.
    digest: [u8; 32],
    overlay: Overlay,
    /// Entries of the backing cut since the last flush.
    cut: HashSet<EntryHash>,
    /// Documents a rebuild left with no entry since the last flush: the backing still
    /// holds them until the caller commits, and must not be read for them.
    emptied: HashSet<DocId>,
    /// Logs cut before their tip by a rebuild (log -> first seq cut): this node never
    /// signs those seqs again.
    truncated: BTreeMap<LogId, u64>,
    cache: Cache,
    entry_count: u64,
    pending: BTreeMap<PendingKey, Candidate>,
    pending_bytes: usize,
    waiting_dep: HashMap<ChangeHash, Vec<PendingKey>>,
    /// Pending entries dated ahead of the clock, by the time they wait for.
    waiting_time: BTreeSet<(u64, PendingKey)>,
    /// Pending entries that name a version of the charter not yet in force.
    waiting_charter: BTreeSet<(u32, PendingKey)>,
    /// Pending entries signed with a rotated key not yet held.
    waiting_key: BTreeSet<(PublicKey, PendingKey)>,
    /// The clock as last told by [`Replica::advance`]; a replica never told the time
    /// (a data generator, a check of a whole store) holds nothing back for it.
    now_ms: Option<u64>,
    /// When the pending set was last scanned for entries that waited too long.
    pruned_at_ms: Option<u64>,
    proofs: BTreeMap<LogId, EquivocationProof>,
    rejected: BTreeMap<&'static str, u64>,
    /// Entries whose changes Automerge could not apply, oldest first, bounded.
    poisoned: VecDeque<EntryHash>,
    poisoned_set: HashSet<EntryHash>,
}

impl<B: Backing> std::fmt::Debug for Replica<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("cached_docs", &self.cache.len())
            .field("logs", &self.tips.len())
            .field("entries", &self.entry_count)
            .field("pending", &self.pending.len())
            .field("proofs", &self.proofs.len())
            .finish()
    }
}

/// One document's changes accepted in a round, with the objects they make and, for each,
/// its last op counter (to check the changes that depend on them).
#[derive(Default)]
struct Stage {
    staged: Staged,
    changes: Vec<(Change, EntryHash)>,
    past: HashMap<ChangeHash, Past>,
}

/// What a change that others depend on contributes to their checks.
#[derive(Clone, Copy)]
struct Past {
    max_op: u64,
    /// Automerge's time of the change, in whole seconds.
    time: i64,
}

/// Per-document work staged during one ingest, applied in one `apply_changes` call.
#[derive(Default)]
struct Round {
    staged: HashMap<DocId, Stage>,
}

enum Verdict {
    Accept,
    WaitPrev,
    WaitDep(ChangeHash),
    /// Dated ahead of the clock: waits until the clock reaches this time.
    WaitTime(u64),
    /// Names a version of the charter not yet in force here.
    WaitCharter(u32),
    /// Signed with a key that a rotation not yet held here introduced.
    WaitKey(PublicKey),
    Duplicate,
    Reject(Invalid),
    Equivocation(Box<SignedEntry>),
}

impl Replica<Nothing> {
    /// A replica that keeps everything in memory.
    pub fn new(charter: Arc<Charter>, limits: Limits) -> Replica<Nothing> {
        let limits = Limits {
            max_cached_docs: usize::MAX,
            ..limits
        };
        Replica::with_backing(charter, limits, Nothing, BTreeMap::new(), Vec::new())
    }
}

impl<B: Backing> Replica<B> {
    /// A replica over a backing that holds `tips` and `proofs` (read from a store).
    pub fn with_backing(
        charter: Arc<Charter>,
        limits: Limits,
        backing: B,
        tips: BTreeMap<LogId, Tip>,
        proofs: Vec<EquivocationProof>,
    ) -> Replica<B> {
        let entry_count = backing.entry_count();
        let mut replica = Replica {
            charters: Charters::new(charter),
            limits,
            backing,
            tips: BTreeMap::new(),
            by_author: BTreeMap::new(),
            digest: [0; 32],
            overlay: Overlay::default(),
            cut: HashSet::new(),
            emptied: HashSet::new(),
            truncated: BTreeMap::new(),
            cache: Cache::new(limits.max_cached_docs),
            entry_count,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            waiting_dep: HashMap::new(),
            waiting_time: BTreeSet::new(),
            waiting_charter: BTreeSet::new(),
            waiting_key: BTreeSet::new(),
            now_ms: None,
            pruned_at_ms: None,
            proofs: BTreeMap::new(),
            rejected: BTreeMap::new(),
            poisoned: VecDeque::new(),
            poisoned_set: HashSet::new(),
        };
        for p in proofs {
            replica.add_proof(p);
        }
        for (log, tip) in tips {
            replica.set_tip(log, Some(tip));
        }
        replica
    }

    /// Reads the amendments the backing holds and puts in force those that were carried:
    /// what a replica over a store does once, when it opens.
    pub fn load_charters(&mut self) -> Result<(), Error> {
        let ids = self.backing.doc_ids(Collection::Amendments)?;
        self.charters.proposals.extend(ids);
        let ids = self.backing.doc_ids(Collection::Keys)?;
        self.charters.key_records.extend(ids);
        self.carry()?;
        // A store holds only what passed under the keys it holds: nothing to cut.
        self.refresh_keys()?;
        Ok(())
    }

    /// Reads the rotations of every key record and the revocations of every version.
    /// Returns the keys new to the node and where the logs of the keys retired since go
    /// beyond their points (each log and its first seq to cut).
    fn refresh_keys(&mut self) -> Result<(Vec<PublicKey>, Vec<Cut>), Error> {
        let ids: Vec<DocId> = self.charters.key_records.iter().cloned().collect();
        let mut rotations = Vec::new();
        let mut nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for id in ids {
            if let Some(doc) = self.load_doc(&id)? {
                let state = id.owner().to_owned();
                rotations.extend(
                    crate::docs::keys::rotations(doc)
                        .into_iter()
                        .map(|r| (state.clone(), r)),
                );
                for peer in crate::docs::keys::revoked_nodes(doc) {
                    nodes.entry(peer).or_default().insert(state.clone());
                }
            }
        }
        self.charters.revoked_nodes = nodes;
        let (new_keys, changed) = self.charters.refresh(rotations);
        let mut cuts = Vec::new();
        for key in changed {
            let Some(keep) = self.charters.retired(&key).cloned() else {
                continue;
            };
            let first = LogId {
                author: key,
                incarnation: 0,
            };
            for (log, tip) in self
                .tips
                .range(first..)
                .take_while(|(l, _)| l.author == key)
            {
                let last = keep.0.get(&log.incarnation).copied().unwrap_or(0);
                if tip.seq > last {
                    cuts.push((*log, last + 1));
                }
            }
        }
        Ok((new_keys, cuts))
    }

    /// The participant `key` signs for under version `version`, and whether its key came
    /// by a rotation; `None` for a version not in force here or a key it does not know.
    pub fn signer(
        &self,
        version: u32,
        key: &PublicKey,
    ) -> Option<(&crate::charter::Participant, bool)> {
        let charter = self.charters.get(version)?;
        let p = self.charters.participant(charter, key)?;
        Some((p, charter.participant_by_key(key).is_none()))
    }

    /// The nodes (peer ids) whose certificates their states revoked, with those states.
    pub fn revoked_nodes(&self) -> &BTreeMap<String, BTreeSet<String>> {
        &self.charters.revoked_nodes
    }

    /// The keys that rotations introduced (with their state), and the keys retired by a
    /// rotation or revoked: what admission checks node certificates against.
    pub fn keys(
        &self,
    ) -> (
        &BTreeMap<PublicKey, String>,
        &BTreeMap<PublicKey, crate::docs::keys::Keep>,
    ) {
        self.charters.keys()
    }

    /// Puts in force every amendment carried by the proposals held, one version after
    /// the other. Returns whether a version came into force.
    fn carry(&mut self) -> Result<bool, Error> {
        let mut changed = false;
        loop {
            let ids: Vec<DocId> = self.charters.proposals.iter().cloned().collect();
            let mut proposals = Vec::new();
            for id in ids {
                if let Some(doc) = self.load_doc(&id)? {
                    proposals.extend(crate::docs::amendments::read_all(&id, doc));
                }
            }
            match self.charters.next(&proposals) {
                Some(next) => {
                    self.charters.push(next);
                    changed = true;
                }
                None => return Ok(changed),
            }
        }
    }

    /// Moves a log's tip, keeping the per-author totals and the digest.
    fn set_tip(&mut self, log: LogId, tip: Option<Tip>) {
        let old = match tip {
            Some(tip) => self.tips.insert(log, tip),
            None => self.tips.remove(&log),
        };
        let totals = self.by_author.entry(log.author).or_default();
        if let Some(old) = old {
            totals.0 -= 1;
            totals.1 -= old.seq;
            xor(&mut self.digest, &tip_hash(&log, &old));
        }
        if let Some(new) = tip {
            totals.0 += 1;
            totals.1 += new.seq;
            xor(&mut self.digest, &tip_hash(&log, &new));
        }
        if totals.0 == 0 {
            self.by_author.remove(&log.author);
        }
    }

    /// Each author's logs and entries.
    pub fn authors(&self) -> &BTreeMap<crate::identity::PublicKey, (u64, u64)> {
        &self.by_author
    }

    /// A digest of every log's tip: two nodes with the same digest hold the same logs.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The charter in force: the latest version this replica holds.
    pub fn charter(&self) -> &Arc<Charter> {
        self.charters.in_force()
    }

    /// Every version of the charter this replica holds, the genesis charter first.
    pub fn charters(&self) -> &[Arc<Charter>] {
        self.charters.all()
    }

    /// The proposed amendments this replica holds, in every reading.
    pub fn proposals(&mut self) -> Result<Vec<crate::docs::amendments::Proposal>, Error> {
        let ids: Vec<DocId> = self.charters.proposals.iter().cloned().collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(doc) = self.load_doc(&id)? {
                out.extend(crate::docs::amendments::read_all(&id, doc));
            }
        }
        Ok(out)
    }

    pub fn backing(&self) -> &B {
        &self.backing
    }

    /// The caller made everything accepted so far durable in the backing: the overlay
    /// is dropped and no document stays pinned in the cache. A replica whose backing
    /// holds nothing keeps everything.
    pub fn flush(&mut self) {
        if !self.backing.is_durable() {
            return;
        }
        self.overlay.clear();
        self.cut.clear();
        self.emptied.clear();
        self.cache.flushed();
    }

    /// Takes in entries from anywhere, in any order. Signatures are checked in one batch.
    pub fn ingest(&mut self, entries: Vec<SignedEntry>) -> Result<Report, Error> {
        self.ingest_inner(entries, true)
    }

    /// Takes in entries whose signatures were already verified (a node's own writes).
    pub fn ingest_verified(&mut self, entries: Vec<SignedEntry>) -> Result<Report, Error> {
        self.ingest_inner(entries, false)
    }

    fn ingest_inner(&mut self, entries: Vec<SignedEntry>, verify: bool) -> Result<Report, Error> {
        let mut report = Report::default();
        let mut fresh: Vec<Candidate> = Vec::with_capacity(entries.len());
        let mut seen = HashSet::with_capacity(entries.len());
        for entry in entries {
            let hash = entry.hash();
            let key = (entry.entry.log(), entry.entry.seq, hash);
            if self.pending.contains_key(&key) || !seen.insert(hash) || self.holds(&hash)? {
                report.duplicates += 1;
                continue;
            }
            if self.poisoned_set.contains(&hash) {
                self.reject(
                    &mut report,
                    hash,
                    Invalid::MalformedChange("the change cannot be applied to its document".into()),
                );
                continue;
            }
            // An author that the version its entry names does not know is refused before
            // its signature costs anything; an entry naming a version not yet in force
            // here waits for it, within the pending set's bounds.
            let checked =
                log::check_intrinsic(&entry, &self.charter().network).and_then(|change| {
                    let e = &entry.entry;
                    match self.charters.get(e.charter) {
                        Some(charter)
                            if self.charters.participant(charter, &e.author).is_some() =>
                        {
                            log::check_change_time(&entry, &change, charter).map(|_| change)
                        }
                        // A key that came by a rotation not yet held here waits for it.
                        Some(_) if e.flags & log::FLAG_ROTATED_KEY != 0 => Ok(change),
                        Some(_) => Err(Invalid::UnknownAuthor(e.author.to_string())),
                        None => Ok(change),
                    }
                });
            match checked {
                Ok(change) => fresh.push(Candidate::new(entry, change)),
                Err(invalid) => self.reject(&mut report, hash, invalid),
            }
        }
        if verify {
            fresh = self.verify_signatures(fresh, &mut report);
        }
        let mut queue = VecDeque::with_capacity(fresh.len());
        for c in fresh {
            let size = c.entry.bytes().len();
            let log = c.entry.entry.log();
            // The next entry of its log may be what the waiting ones wait for: it is taken
            // in even when the set is full, and the set is trimmed after the drain.
            let next = c.entry.entry.seq == self.tip(&log).map_or(0, |t| t.seq) + 1;
            if !next && self.over_limits(size) {
                report.overflow += 1;
                continue;
            }
            let key = (log, c.entry.entry.seq, c.entry.hash());
            self.pending_bytes += size;
            self.pending.insert(
                key,
                Candidate {
                    since_ms: self.now_ms,
                    ..c
                },
            );
            queue.push_back(key);
        }
        self.settle(queue, &mut report)?;
        Ok(report)
    }

    /// Judges the queued pending entries, lower seqs first so that one pass accepts a log
    /// that arrived in order; trims the pending set to its bounds, and cuts what new
    /// proofs and unappliable changes take away.
    fn settle(
        &mut self,
        mut queue: VecDeque<PendingKey>,
        report: &mut Report,
    ) -> Result<(), Error> {
        queue.make_contiguous().sort();
        let mut poisoned = self.drain(queue, report)?;
        // An amendment carried, or a key rotated or retired, by what was just accepted
        // wakes the entries that wait for it, and they may carry the next.
        let mut cuts = Vec::new();
        loop {
            let touched = |c: Collection| report.touched.iter().any(|d| d.collection() == c);
            let (amendments, keys) = (touched(Collection::Amendments), touched(Collection::Keys));
            let mut woken = Vec::new();
            let amended = amendments && self.carry()?;
            if amended {
                let version = self.charter().version;
                for (v, key) in self.waiting_charter.clone() {
                    if v <= version {
                        woken.push(key);
                    }
                }
            }
            if amended || keys {
                let (new_keys, retired) = self.refresh_keys()?;
                cuts.extend(retired);
                for author in new_keys {
                    let first = (
                        author,
                        (
                            LogId {
                                author,
                                incarnation: 0,
                            },
                            0,
                            EntryHash([0; 32]),
                        ),
                    );
                    woken.extend(
                        self.waiting_key
                            .range(first..)
                            .take_while(|(a, _)| *a == author)
                            .map(|(_, k)| *k),
                    );
                }
            }
            if woken.is_empty() {
                break;
            }
            let mut queue = VecDeque::with_capacity(woken.len());
            for key in woken {
                if let Some(c) = self.pending.get_mut(&key) {
                    if let Some(v) = c.waits_charter.take() {
                        self.waiting_charter.remove(&(v, key));
                    }
                    if let Some(a) = c.waits_key.take() {
                        self.waiting_key.remove(&(a, key));
                    }
                }
                queue.push_back(key);
            }
            queue.make_contiguous().sort();
            poisoned.extend(self.drain(queue, report)?);
        }
        report.overflow += self.trim_pending();
        if !report.new_proofs.is_empty() || !poisoned.is_empty() || !cuts.is_empty() {
            self.rebuild(report, &poisoned, &cuts)?;
        }
        Ok(())
    }

    /// Whether the entry named `hash` is accepted.
    fn holds(&self, hash: &EntryHash) -> Result<bool, Error> {
        if self.overlay.locate(hash).is_some() {
            return Ok(true);
        }
        if self.cut.contains(hash) {
            return Ok(false);
        }
        Ok(self.backing.locate(hash)?.is_some())
    }

    fn locate(&self, hash: &EntryHash) -> Result<Option<(LogId, u64)>, Error> {
        if let Some(at) = self.overlay.locate(hash) {
            return Ok(Some(at));
        }
        if self.cut.contains(hash) {
            return Ok(None);
        }
        Ok(self.backing.locate(hash)?)
    }

    fn over_limits(&self, extra: usize) -> bool {
        self.pending.len() >= self.limits.max_pending_entries
            || self.pending_bytes + extra > self.limits.max_pending_bytes
    }

    /// Drops the waiting entries furthest from their logs' tips until the set is within
    /// its limits; sync brings them again later. Returns how many were dropped.
    fn trim_pending(&mut self) -> usize {
        let mut dropped = 0;
        while self.pending.len() > self.limits.max_pending_entries
            || self.pending_bytes > self.limits.max_pending_bytes
        {
            let Some(key) = self
                .pending
                .keys()
                .max_by_key(|(log, seq, _)| seq.saturating_sub(self.tip(log).map_or(0, |t| t.seq)))
                .copied()
            else {
                break;
            };
            self.take_pending(&key);
            dropped += 1;
        }
        dropped
    }

    /// Drops the entries dated furthest ahead until at most `max_waiting_for_time` wait
    /// for their time; sync brings them again later. Returns how many were dropped.
    fn trim_waiting_for_time(&mut self) -> usize {
        let mut dropped = 0;
        while self.waiting_time.len() > self.limits.max_waiting_for_time {
            let Some((_, key)) = self.waiting_time.last().copied() else {
                break;
            };
            self.take_pending(&key);
            dropped += 1;
        }
        dropped
    }

    /// Drops the entries that have waited for their past longer than
    /// `max_pending_age_ms`: a past that never comes (a dependency no one holds) must not
    /// hold a place for good. Entries waiting for their time are not counted: they wait
    /// for a known date. Returns how many were dropped.
    fn prune_pending(&mut self, now_ms: u64) -> usize {
        let max_age = self.limits.max_pending_age_ms;
        // A scan of the set at most once per tenth of the age allowed.
        if self
            .pruned_at_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < max_age / 10)
        {
            return 0;
        }
        self.pruned_at_ms = Some(now_ms);
        let old: Vec<PendingKey> = self
            .pending
            .iter()
            .filter(|(_, c)| {
                c.waits_until.is_none()
                    && c.since_ms
                        .is_some_and(|since| now_ms.saturating_sub(since) > max_age)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in &old {
            self.take_pending(key);
        }
        old.len()
    }

    /// Tells the replica the time. From now on, an entry dated more than
    /// `max_ahead_ms` after it waits in the pending set; those whose time has come are
    /// judged now, and what they accept is returned like an ingest's.
    pub fn advance(&mut self, now_ms: u64) -> Result<Report, Error> {
        self.now_ms = Some(now_ms);
        let mut report = Report::default();
        report.overflow += self.prune_pending(now_ms);
        let mut queue = VecDeque::new();
        while let Some(&(until, key)) = self.waiting_time.first() {
            if until > now_ms {
                break;
            }
            self.waiting_time.remove(&(until, key));
            if let Some(c) = self.pending.get_mut(&key) {
                c.waits_until = None;
            }
            queue.push_back(key);
        }
        if !queue.is_empty() {
            self.settle(queue, &mut report)?;
        }
        Ok(report)
    }

    fn reject(&mut self, report: &mut Report, hash: EntryHash, invalid: Invalid) {
        *self.rejected.entry(invalid.reason()).or_default() += 1;
        report.rejected.push((hash, invalid));
    }

    fn verify_signatures(&mut self, fresh: Vec<Candidate>, report: &mut Report) -> Vec<Candidate> {
        let domain = self.charter().scope().entry_domain();
        let verdicts = {
            let items: Vec<_> = fresh
                .iter()
                .map(|c| {
                    (
                        &c.entry.entry.author,
                        domain.as_str(),
                        c.entry.body(),
                        &c.entry.signature,
                    )
                })
                .collect();
            crate::identity::verify_many(&items)
        };
        let mut good = Vec::with_capacity(fresh.len());
        for (c, ok) in fresh.into_iter().zip(verdicts) {
            if ok {
                good.push(c);
            } else {
                self.reject(report, c.entry.hash(), Invalid::BadSignature);
            }
        }
        good
    }

    fn tip(&self, log: &LogId) -> Option<Tip> {
        self.tips.get(log).copied()
    }

    /// The entry of `log` at `seq`, from the overlay or the backing.
    fn read(&self, log: &LogId, seq: u64) -> Result<Option<SignedEntry>, Error> {
        if let Some(e) = self.overlay.get(log, seq) {
            return Ok(Some(e.clone()));
        }
        if self.tip(log).is_none_or(|t| seq > t.seq) {
            return Ok(None);
        }
        Ok(self
            .backing
            .entry(log, seq)?
            .filter(|e| !self.cut.contains(&e.hash())))
    }

    /// Loads a document into the cache, if it exists.
    fn load(&mut self, id: &DocId) -> Result<(), Error> {
        if self.cache.contains(id) {
            self.cache.touch(id);
            return Ok(());
        }
        let extra = self.overlay.doc_entries(id);
        let stored = if self.emptied.contains(id) {
            None
        } else {
            self.backing.doc(id)?
        };
        let doc = match stored {
            Some(mut doc) => {
                if !extra.is_empty() {
                    apply_whole(&mut doc, id, &extra)?;
                }
                doc
            }
            None if extra.is_empty() => return Ok(()),
            None => {
                let mut doc = Automerge::new();
                apply_whole(&mut doc, id, &extra)?;
                doc
            }
        };
        self.cache.insert(id.clone(), DocState::new(doc), false);
        Ok(())
    }

    /// Builds a document from its accepted entries, leaving out `without`.
    fn replay(&self, id: &DocId, without: &HashSet<EntryHash>) -> Result<Automerge, Error> {
        let mut entries = self.backing.doc_entries(id)?;
        entries.retain(|e| !self.cut.contains(&e.hash()));
        entries.extend(self.overlay.doc_entries(id));
        entries.retain(|e| !without.contains(&e.hash()));
        let mut doc = Automerge::new();
        apply_whole(&mut doc, id, &entries)?;
        Ok(doc)
    }

    fn drain(
        &mut self,
        mut queue: VecDeque<PendingKey>,
        report: &mut Report,
    ) -> Result<Vec<EntryHash>, Error> {
        let mut round = Round::default();
        while let Some(key) = queue.pop_front() {
            let Some(doc_id) = self.pending.get(&key).map(|c| c.entry.entry.doc.clone()) else {
                continue;
            };
            self.load(&doc_id)?;
            let Some(candidate) = self.pending.get(&key) else {
                continue;
            };
            match self.judge(&key, candidate, &mut round)? {
                Verdict::WaitPrev => {}
                Verdict::WaitDep(hash) => {
                    if let Some(c) = self.pending.get_mut(&key) {
                        c.waits_for = Some(hash);
                    }
                    self.waiting_dep.entry(hash).or_default().push(key);
                }
                Verdict::WaitTime(until) => {
                    if let Some(c) = self.pending.get_mut(&key) {
                        c.waits_until = Some(until);
                    }
                    self.waiting_time.insert((until, key));
                    report.overflow += self.trim_waiting_for_time();
                }
                Verdict::WaitCharter(version) => {
                    if let Some(c) = self.pending.get_mut(&key) {
                        c.waits_charter = Some(version);
                    }
                    self.waiting_charter.insert((version, key));
                }
                Verdict::WaitKey(author) => {
                    if let Some(c) = self.pending.get_mut(&key) {
                        c.waits_key = Some(author);
                    }
                    self.waiting_key.insert((author, key));
                }
                Verdict::Duplicate => {
                    self.take_pending(&key);
                    report.duplicates += 1;
                }
                Verdict::Reject(invalid) => {
                    self.take_pending(&key);
                    self.reject(report, key.2, invalid);
                }
                Verdict::Equivocation(existing) => {
                    if let Some(c) = self.take_pending(&key) {
                        let proof = EquivocationProof::new(*existing, c.entry);
                        if self.add_proof(proof.clone()) {
                            report.new_proofs.push(proof);
                        }
                    }
                }
                Verdict::Accept => {
                    let Some(c) = self.take_pending(&key) else {
                        continue;
                    };
                    let (log, seq, hash) = key;
                    let change_hash = c.change.hash();
                    let state = match self.cache.get_mut(&doc_id) {
                        Some(state) => state,
                        None => {
                            self.cache.insert(doc_id.clone(), DocState::default(), true);
                            self.cache.get_mut(&doc_id).ok_or_else(|| Error::Apply {
                                doc: doc_id.to_string(),
                                reason: "the document cache refused it".into(),
                            })?
                        }
                    };
                    state
                        .seqs
                        .insert(c.change.actor_id().clone(), c.change.seq());
                    let stage = round.staged.entry(doc_id.clone()).or_default();
                    let past = Past {
                        max_op: c.change.max_op(),
                        time: c.change.timestamp(),
                    };
                    stage.past.insert(change_hash, past);
                    stage.changes.push((c.change, hash));
                    self.set_tip(log, Some(Tip::from(&c.entry)));
                    match doc_id.collection() {
                        Collection::Amendments => {
                            self.charters.proposals.insert(doc_id.clone());
                        }
                        Collection::Keys => {
                            self.charters.key_records.insert(doc_id.clone());
                        }
                        _ => {}
                    }
                    self.overlay.push(c.entry.clone());
                    self.entry_count += 1;
                    report.touched.insert(doc_id);
                    report.accepted.push(c.entry);
                    // Wake what waited for this entry: the next of its log, and the
                    // entries whose changes depend on its change.
                    let next = (log, seq + 1, EntryHash([0; 32]));
                    for (k, _) in self
                        .pending
                        .range(next..)
                        .take_while(|(k, _)| k.0 == log && k.1 == seq + 1)
                    {
                        queue.push_back(*k);
                    }
                    if let Some(waiters) = self.waiting_dep.remove(&change_hash) {
                        for k in &waiters {
                            if let Some(c) = self.pending.get_mut(k) {
                                c.waits_for = None;
                            }
                        }
                        queue.extend(waiters);
                    }
                }
            }
        }
        let mut poisoned = Vec::new();
        for (doc_id, stage) in round.staged {
            poisoned.extend(self.apply_guarded(&doc_id, stage.changes)?);
        }
        for hash in &poisoned {
            self.poison(*hash);
            self.reject(
                report,
                *hash,
                Invalid::MalformedChange("the change cannot be applied to its document".into()),
            );
        }
        Ok(poisoned)
    }

    fn poison(&mut self, hash: EntryHash) {
        if self.poisoned_set.insert(hash) {
            self.poisoned.push_back(hash);
        }
        while self.poisoned.len() > MAX_POISONED {
            if let Some(old) = self.poisoned.pop_front() {
                self.poisoned_set.remove(&old);
            }
        }
    }

    /// Applies a document's staged changes in one call. Automerge panics on some malformed
    /// changes (an insert after an element that does not exist, for one). After a panic or
    /// an error the document is rebuilt from its other accepted entries, and the staged
    /// changes are tried one by one to find those that cannot be applied, which are
    /// returned with those that depend on them.
    fn apply_guarded(
        &mut self,
        doc_id: &DocId,
        changes: Vec<(Change, EntryHash)>,
    ) -> Result<Vec<EntryHash>, Error> {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let Some(state) = self.cache.get_mut(doc_id) else {
            return Ok(Vec::new());
        };
        let batch: Vec<Change> = changes.iter().map(|(c, _)| c.clone()).collect();
        if matches!(
            catch_unwind(AssertUnwindSafe(|| state.doc.apply_changes(batch))),
            Ok(Ok(()))
        ) {
            return Ok(Vec::new());
        }
        tracing::warn!(doc = %doc_id, "a change could not be applied; rebuilding the document");
        let staged: HashSet<EntryHash> = changes.iter().map(|(_, h)| *h).collect();
        let mut doc = self.replay(doc_id, &staged).unwrap_or_default();
        let mut bad = Vec::new();
        let mut refused: HashSet<ChangeHash> = HashSet::new();
        for (change, hash) in changes {
            if change.deps().iter().any(|d| refused.contains(d)) {
                refused.insert(change.hash());
                bad.push(hash);
                continue;
            }
            let mut trial = doc.clone();
            let one = change.clone();
            match catch_unwind(AssertUnwindSafe(|| trial.apply_changes([one]))) {
                Ok(Ok(())) => doc = trial,
                _ => {
                    refused.insert(change.hash());
                    bad.push(hash);
                }
            }
        }
        self.cache.insert(doc_id.clone(), DocState::new(doc), true);
        Ok(bad)
    }

    fn take_pending(&mut self, key: &PendingKey) -> Option<Candidate> {
        let c = self.pending.remove(key)?;
        self.pending_bytes = self.pending_bytes.saturating_sub(c.entry.bytes().len());
        if let Some(dep) = c.waits_for
            && let Some(waiters) = self.waiting_dep.get_mut(&dep)
        {
            waiters.retain(|k| k != key);
            if waiters.is_empty() {
                self.waiting_dep.remove(&dep);
            }
        }
        if let Some(until) = c.waits_until {
            self.waiting_time.remove(&(until, *key));
        }
        if let Some(version) = c.waits_charter {
            self.waiting_charter.remove(&(version, *key));
        }
        if let Some(author) = c.waits_key {
            self.waiting_key.remove(&(author, *key));
        }
        Some(c)
    }

    fn judge(&self, key: &PendingKey, c: &Candidate, round: &mut Round) -> Result<Verdict, Error> {
        let (log, seq, hash) = *key;
        if let Some(proof) = self.proofs.get(&log)
            && seq >= proof.seq()
        {
            return Ok(Verdict::Reject(Invalid::Equivocated { seq: proof.seq() }));
        }
        // A retired key's entries past its points are refused wherever they stand in
        // their log, so that none waits for a predecessor that was refused.
        if let Some(keep) = self.charters.retired(&log.author)
            && !keep.keeps(log.incarnation, seq)
        {
            return Ok(Verdict::Reject(Invalid::KeyRetired {
                key: log.author.to_string(),
                incarnation: log.incarnation,
                seq,
            }));
        }
        let tip = self.tip(&log);
        let tip_seq = tip.map_or(0, |t| t.seq);
        if seq <= tip_seq {
            let Some(existing) = self.read(&log, seq)? else {
                return Err(Error::Backing(backing::Error(format!(
                    "entry {seq} of a log with tip {tip_seq} is missing"
                ))));
            };
            return Ok(if existing.hash() == hash {
                Verdict::Duplicate
            } else {
                Verdict::Equivocation(Box::new(existing))
            });
        }
        if seq > tip_seq + 1 {
            // An entry ahead of its log whose prev names an entry we hold shows its own gap
            // at once; otherwise it waits for its predecessor.
            if let Some(prev) = c.entry.entry.prev.as_ref()
                && let Some((prev_log, prev_seq)) = self.locate(prev)?
            {
                if prev_log != log {
                    return Ok(Verdict::Reject(Invalid::WrongPrev { seq: seq - 1 }));
                }
                return Ok(Verdict::Reject(Invalid::SeqGap {
                    expected: prev_seq + 1,
                    found: seq,
                }));
            }
            return Ok(Verdict::WaitPrev);
        }
        if let Err(invalid) = log::check_chain(&c.entry.entry, tip.as_ref()) {
            return Ok(Verdict::Reject(invalid));
        }
        // The entry is judged under the version of the charter it names, once that
        // version is in force here: every node judges it under the same one.
        let Some(charter) = self.charters.get(c.entry.entry.charter) else {
            return Ok(Verdict::WaitCharter(c.entry.entry.charter));
        };
        let key = c.entry.entry.author;
        let author = match self.charters.participant(charter, &key) {
            Some(author) => author,
            None if c.entry.entry.flags & log::FLAG_ROTATED_KEY != 0 => {
                return Ok(Verdict::WaitKey(key));
            }
            None => return Ok(Verdict::Reject(Invalid::UnknownAuthor(key.to_string()))),
        };
        if let Err(invalid) = log::check_change_time(&c.entry, &c.change, charter) {
            return Ok(Verdict::Reject(invalid));
        }

        let doc_id = &c.entry.entry.doc;
        let empty = DocState::default();
        let state = self.cache.get(doc_id).unwrap_or(&empty);
        let stage = round.staged.entry(doc_id.clone()).or_default();
        let mut deps_max_op = 0;
        let mut deps_time = i64::MIN;
        for dep in c.change.deps() {
            let past = stage.past.get(dep).copied().or_else(|| {
                state.doc.get_change_meta_by_hash(dep).map(|m| Past {
                    max_op: m.max_op,
                    time: m.timestamp,
                })
            });
            match past {
                Some(p) => {
                    deps_max_op = deps_max_op.max(p.max_op);
                    deps_time = deps_time.max(p.time);
                }
                None => return Ok(Verdict::WaitDep(*dep)),
            }
        }
        let timestamp_ms = c.entry.entry.timestamp_ms;
        if charter.honest_time() && log::change_time(timestamp_ms) < deps_time {
            return Ok(Verdict::Reject(Invalid::TimestampBeforePast {
                past: deps_time,
                found: timestamp_ms,
            }));
        }
        // Waiting is not a verdict: an entry dated ahead of the clock is judged once the
        // clock comes near its time, by the same rules as on every other node.
        if let Some(now) = self.now_ms
            && timestamp_ms > now.saturating_add(self.limits.max_ahead_ms)
        {
            return Ok(Verdict::WaitTime(
                timestamp_ms.saturating_sub(self.limits.max_ahead_ms),
            ));
        }
        // Op counters are Lamport clocks: a change's ops come after all of its past.
        if c.change.start_op().get() <= deps_max_op {
            return Ok(Verdict::Reject(Invalid::MalformedChange(format!(
                "change ops start at {} but its dependencies reach {deps_max_op}",
                c.change.start_op()
            ))));
        }
        let last = state.seqs.get(c.change.actor_id()).copied().unwrap_or(0);
        if c.change.seq() != last + 1 {
            return Ok(Verdict::Reject(Invalid::MalformedChange(format!(
                "change seq {} is not the next of its actor in {doc_id} (expected {})",
                c.change.seq(),
                last + 1
            ))));
        }
        let ctx = rules::Context {
            charter,
            doc: doc_id,
            author,
            log,
            seq,
            timestamp_ms: c.entry.entry.timestamp_ms,
        };
        Ok(
            match rules::check(&ctx, &state.doc, &mut stage.staged, &c.change) {
                Ok(()) => Verdict::Accept,
                Err(rule) => Verdict::Reject(Invalid::Rule(rule)),
            },
        )
    }

    /// Records a proof; returns whether it cuts its log earlier than any proof before.
    fn add_proof(&mut self, proof: EquivocationProof) -> bool {
        match self.proofs.get(&proof.log()) {
            Some(p) if p.seq() <= proof.seq() => false,
            _ => {
                self.proofs.insert(proof.log(), proof);
                true
            }
        }
    }

    /// Takes in proofs learnt from peers. Invalid proofs are refused.
    pub fn add_proofs(&mut self, proofs: Vec<EquivocationProof>) -> Result<Report, Error> {
        let mut report = Report::default();
        for p in proofs {
            // A proof is checked under the version its first entry names; a proof of a
            // version not yet in force here comes again with a later sync.
            let known = self
                .charters
                .get(p.a.entry.charter)
                .is_some_and(|charter| p.verify(charter).is_ok());
            if known && self.add_proof(p.clone()) {
                report.new_proofs.push(p);
            }
        }
        if !report.new_proofs.is_empty() {
            self.rebuild(&mut report, &[], &[])?;
        }
        Ok(report)
    }

    /// Cuts what the new proofs, the retired keys and the changes that could not be
    /// applied take away: each proven log from its fork on, each log of a retired key past
    /// its point, each poisoned entry, and everything that builds
    /// on a cut entry (the rest of its log, and the changes that depend on its change, in
    /// any log). Nothing else is touched: every other accepted entry stays, however many
    /// there are, and the documents the cut entries belong to are rebuilt from the
    /// entries that remain.
    fn rebuild(
        &mut self,
        report: &mut Report,
        poisoned: &[EntryHash],
        retired: &[Cut],
    ) -> Result<(), Error> {
        let mut queue: VecDeque<(LogId, u64)> = retired.iter().copied().collect();
        for proof in &report.new_proofs {
            queue.push_back((proof.log(), proof.seq()));
        }
        for hash in poisoned {
            if let Some(at) = self.locate(hash)? {
                queue.push_back(at);
            }
        }
        // The first seq cut in each log, and the cut entries by document.
        let mut cut_from: BTreeMap<LogId, u64> = BTreeMap::new();
        let mut cut: BTreeMap<EntryHash, SignedEntry> = BTreeMap::new();
        let mut cut_changes: HashSet<ChangeHash> = HashSet::new();
        while let Some((log, seq)) = queue.pop_front() {
            if cut_from.get(&log).is_some_and(|&s| s <= seq) {
                continue;
            }
            let upto = cut_from.get(&log).copied().unwrap_or(u64::MAX);
            cut_from.insert(log, seq);
            let mut entries = self.backing.log_from(&log, seq)?;
            entries.retain(|e| !self.cut.contains(&e.hash()) && e.entry.seq < upto);
            entries.extend(
                self.overlay
                    .log_from(&log, seq)
                    .into_iter()
                    .filter(|e| e.entry.seq < upto),
            );
            let mut docs = BTreeSet::new();
            for e in entries {
                if let Ok(change) = Change::from_bytes(e.entry.change.clone()) {
                    cut_changes.insert(change.hash());
                }
                docs.insert(e.entry.doc.clone());
                cut.insert(e.hash(), e);
            }
            // Changes that depend on a cut change, in the documents touched, are cut with
            // their logs from there on. Dependencies never cross documents.
            for id in docs {
                let mut doc_entries = self.backing.doc_entries(&id)?;
                doc_entries.extend(self.overlay.doc_entries(&id));
                for e in doc_entries {
                    if cut.contains_key(&e.hash()) {
                        continue;
                    }
                    let Ok(change) = Change::from_bytes(e.entry.change.clone()) else {
                        continue;
                    };
                    if change.deps().iter().any(|d| cut_changes.contains(d)) {
                        queue.push_back((e.entry.log(), e.entry.seq));
                    }
                }
            }
        }
        report.rebuilt = true;
        if cut.is_empty() {
            return Ok(());
        }
        let mut docs = BTreeSet::new();
        let without: HashSet<EntryHash> = cut.keys().copied().collect();
        // Entries of a proven log from its fork on are refused for good; entries that
        // only built on them wait in the pending set like any entry whose past is missing.
        let mut waiting = VecDeque::new();
        for (hash, e) in cut {
            docs.insert(e.entry.doc.clone());
            // A replica without a durable backing keeps its entries in the overlay even
            // after a caller stored them, so the store is told of every cut entry.
            if self.overlay.remove(&e.entry.log(), e.entry.seq).is_none() {
                self.cut.insert(hash);
            }
            report.removed.push(e.clone());
            self.entry_count = self.entry_count.saturating_sub(1);
            match self.proofs.get(&e.entry.log()) {
                Some(p) if e.entry.seq >= p.seq() => {
                    let seq = p.seq();
                    self.reject(report, hash, Invalid::Equivocated { seq });
                }
                // Refused already, as a change that cannot be applied.
                _ if self.poisoned_set.contains(&hash) => {}
                // Past the points of a retired key: refused for good, like a fork.
                _ if self
                    .charters
                    .retired(&e.entry.author)
                    .is_some_and(|keep| !keep.keeps(e.entry.incarnation, e.entry.seq)) =>
                {
                    let invalid = Invalid::KeyRetired {
                        key: e.entry.author.to_string(),
                        incarnation: e.entry.incarnation,
                        seq: e.entry.seq,
                    };
                    self.reject(report, hash, invalid);
                }
                _ => {
                    if let Ok(change) = Change::from_bytes(e.entry.change.clone()) {
                        let key = (e.entry.log(), e.entry.seq, hash);
                        self.pending_bytes += e.bytes().len();
                        let since_ms = self.now_ms;
                        self.pending.insert(
                            key,
                            Candidate {
                                since_ms,
                                ..Candidate::new(e, change)
                            },
                        );
                        waiting.push_back(key);
                    }
                }
            }
        }
        report.accepted.retain(|e| !without.contains(&e.hash()));
        for (log, seq) in cut_from {
            let tip = match seq.checked_sub(1).filter(|s| *s > 0) {
                Some(before) => self.read(&log, before)?.map(|e| Tip::from(&e)),
                None => None,
            };
            self.set_tip(log, tip);
            if !self.proofs.contains_key(&log) {
                self.truncated.insert(log, seq);
            }
        }
        for id in docs {
            let doc = self.replay(&id, &without)?;
            self.cache.remove(&id);
            if doc.get_heads().is_empty() {
                self.emptied.insert(id.clone());
                report.touched.insert(id.clone());
                report.rebuilt_docs.insert(id);
                continue;
            }
            self.cache.insert(id.clone(), DocState::new(doc), true);
            report.touched.insert(id.clone());
            report.rebuilt_docs.insert(id);
        }
        if !waiting.is_empty() {
            // Once the documents are rebuilt, the entries that built on the cut ones wait
            // for what was cut, and the set is trimmed to its bounds as after any ingest.
            let poisoned = self.drain(waiting, report)?;
            report.overflow += self.trim_pending();
            if !poisoned.is_empty() {
                self.rebuild(report, &poisoned, &[])?;
            }
        }
        Ok(())
    }

    /// Prepares a local write: builds the change, checks the rules before signing, then
    /// signs the entry. The caller ingests it and makes it durable.
    pub fn prepare(
        &mut self,
        key: &SecretKey,
        incarnation: u32,
        command: &Command,
        now_ms: u64,
        ulid: ulid::Ulid,
    ) -> Result<(SignedEntry, String), Refused> {
        let charter = self.charter().clone();
        if self.charters.retired(&key.public()).is_some() {
            return Err(Refused::Invalid(
                "this node's key was rotated or revoked: it signs nothing more".into(),
            ));
        }
        let rotated = charter.participant_by_key(&key.public()).is_none()
            && self.charters.is_rotated(&key.public());
        let author = self.charters.participant(&charter, &key.public()).ok_or_else(|| {
            Refused::Invalid(format!(
                "this node's key is not a participant's key in the charter in force (version {})",
                charter.version
            ))
        })?;
        let log = LogId {
            author: key.public(),
            incarnation,
        };
        if self.proofs.contains_key(&log) {
            return Err(Refused::Invalid(
                "this log is cut by an equivocation proof: restart the node for a new incarnation"
                    .into(),
            ));
        }
        // An entry of this log that waits here was signed but cannot be accepted, as when
        // it built on a branch that a proof cut: signing its seq again would make this
        // author equivocate in turn.
        let first = (log, 0, EntryHash([0; 32]));
        if self.truncated.contains_key(&log)
            || self
                .pending
                .range(first..)
                .next()
                .is_some_and(|(k, _)| k.0 == log)
        {
            return Err(Refused::Invalid(
                "this log's entries built on a cut branch: restart the node for a new incarnation"
                    .into(),
            ));
        }
        let today = rules::date_of_ms(now_ms)
            .ok_or_else(|| Refused::Invalid("the clock is out of range".into()))?;
        let doc_id = command.target(
            &Writer {
                code: &author.code,
                now_ms,
                today,
                charter: &charter,
            },
            ulid,
        )?;
        if let Command::AmendmentSign { .. } = command {
            self.check_one_signature(&author.code, charter.version, &doc_id)?;
        }
        self.load(&doc_id)
            .map_err(|e| Refused::Invalid(format!("the document cannot be read: {e}")))?;
        let empty = DocState::default();
        let state = self.cache.get(&doc_id).unwrap_or(&empty);
        // The entry is dated no earlier than its log's last entry and the changes it
        // builds on (made by clocks that may run a little ahead of this one), so that
        // every node takes it in under the same rules.
        let tip = self.tip(&log);
        let past_ms = state
            .doc
            .get_heads()
            .iter()
            .filter_map(|h| state.doc.get_change_meta_by_hash(h))
            .map(|m| u64::try_from(m.timestamp).unwrap_or(0).saturating_mul(1000))
            .max()
            .unwrap_or(0);
        let clock_ms = now_ms;
        let now_ms = now_ms.max(tip.map_or(0, |t| t.timestamp_ms)).max(past_ms);
        if now_ms > clock_ms.saturating_add(self.limits.max_ahead_ms) {
            return Err(Refused::Invalid(format!(
                "the document or this log holds changes dated {} s ahead of this node's clock: check the clock",
                (now_ms - clock_ms) / 1000
            )));
        }
        let today = rules::date_of_ms(now_ms)
            .ok_or_else(|| Refused::Invalid("the clock is out of range".into()))?;
        let writer = Writer {
            code: &author.code,
            now_ms,
            today,
            charter: &charter,
        };
        let mut fork = state.doc.fork();
        fork.set_actor(log.actor());
        let mut tx = fork.transaction();
        let item = command.apply(&mut tx, &state.doc, &doc_id, &writer, ulid)?;
        let options =
            automerge::transaction::CommitOptions::default().with_time(log::change_time(now_ms));
        let (hash, _) = tx.commit_with(options);
        if hash.is_none() {
            return Err(Refused::Invalid("nothing to change".into()));
        }
        let mut change = fork
            .get_last_local_change()
            .ok_or_else(|| Refused::Invalid("nothing to change".into()))?;
        let ctx = rules::Context {
            charter: &charter,
            doc: &doc_id,
            author,
            log,
            seq: tip.map_or(1, |t| t.seq + 1),
            timestamp_ms: now_ms,
        };
        rules::check(&ctx, &state.doc, &mut Staged::default(), &change).map_err(Refused::Rule)?;
        let entry = Entry {
            network: charter.network.clone(),
            author: key.public(),
            incarnation,
            seq: tip.map_or(1, |t| t.seq + 1),
            prev: tip.map(|t| t.hash),
            timestamp_ms: now_ms,
            doc: doc_id,
            change: change.bytes().into_owned(),
            charter: charter.version,
            flags: if rotated { log::FLAG_ROTATED_KEY } else { 0 },
        };
        if entry.change.len() + 512 > log::MAX_ENTRY_BYTES {
            return Err(Refused::Invalid(format!(
                "the change is {} bytes, over the entry limit",
                entry.change.len()
            )));
        }
        Ok((entry.sign(key, &charter.scope()), item))
    }

    /// The rotation of `old`, this node's key, to `new`, as `prepare` signs it in the log
    /// of `incarnation`: it keeps every log of `old` held here up to its tip, and this log
    /// up to the rotation itself. Logs of `old` that no node had shown this one are cut.
    pub fn rotation(&self, old: &PublicKey, incarnation: u32, new: &PublicKey) -> Command {
        let first = LogId {
            author: *old,
            incarnation: 0,
        };
        let mut keep: BTreeMap<u32, u64> = self
            .tips
            .range(first..)
            .take_while(|(l, _)| l.author == *old)
            .map(|(l, t)| (l.incarnation, t.seq))
            .collect();
        let own = LogId {
            author: *old,
            incarnation,
        };
        keep.insert(incarnation, self.tip(&own).map_or(1, |t| t.seq + 1));
        Command::KeyRotate {
            key: new.to_string(),
            from: old.to_string(),
            keep: crate::docs::keys::Keep(keep).to_string(),
        }
    }

    /// Every log of `key` up to its tip as this node holds it: where an amendment that
    /// takes the key out of the charter keeps it, so that it signs nothing more.
    pub fn keep_all(&self, key: &PublicKey) -> crate::docs::keys::Keep {
        let first = LogId {
            author: *key,
            incarnation: 0,
        };
        crate::docs::keys::Keep(
            self.tips
                .range(first..)
                .take_while(|(l, _)| l.author == *key)
                .map(|(l, t)| (l.incarnation, t.seq))
                .collect(),
        )
    }

    /// Where a revocation of the key that signed `from` keeps each of that key's logs:
    /// the log of `from` up to the entry before it, and every other log of the key up to
    /// its last entry dated before `from`. `None` when the node does not hold `from`.
    pub fn keep_before(
        &self,
        from: &EntryHash,
    ) -> Result<Option<(PublicKey, crate::docs::keys::Keep)>, Error> {
        let Some((at_log, at_seq)) = self.locate(from)? else {
            return Ok(None);
        };
        let Some(entry) = self.read(&at_log, at_seq)? else {
            return Ok(None);
        };
        let before = entry.entry.timestamp_ms;
        let author = at_log.author;
        let first = LogId {
            author,
            incarnation: 0,
        };
        let logs: Vec<LogId> = self
            .tips
            .range(first..)
            .take_while(|(l, _)| l.author == author)
            .map(|(l, _)| *l)
            .collect();
        let mut keep = BTreeMap::new();
        for log in logs {
            let last = if log == at_log {
                at_seq - 1
            } else {
                // A log's timestamps never go back, so its entries dated before `from`
                // come first.
                self.log_entries(&log)?
                    .iter()
                    .take_while(|e| e.entry.timestamp_ms < before)
                    .count() as u64
            };
            if last > 0 {
                keep.insert(log.incarnation, last);
            }
        }
        Ok(Some((author, crate::docs::keys::Keep(keep))))
    }

    /// A state signs one amendment of each version: two carried amendments of one version
    /// would otherwise be possible, and only the order of their ids would choose.
    fn check_one_signature(
        &mut self,
        code: &str,
        version: u32,
        doc_id: &DocId,
    ) -> Result<(), Refused> {
        let proposals = self
            .proposals()
            .map_err(|e| Refused::Invalid(format!("the amendments cannot be read: {e}")))?;
        match proposals
            .iter()
            .find(|p| p.amends == version && p.id != doc_id.as_str() && p.signatures.contains(code))
        {
            Some(signed) => Err(Refused::Invalid(format!(
                "{code} signed {} for version {version} already: a state signs one amendment of each version",
                signed.id
            ))),
            None => Ok(()),
        }
    }

    /// An incarnation this author has not used in any log known here.
    pub fn fresh_incarnation(
        &self,
        author: &crate::identity::PublicKey,
        rng: &mut dyn rand::RngCore,
    ) -> u32 {
        loop {
            let candidate = rng.next_u32();
            let log = LogId {
                author: *author,
                incarnation: candidate,
            };
            let used = self.tips.contains_key(&log) || self.proofs.contains_key(&log);
            if candidate != 0 && !used {
                return candidate;
            }
        }
    }

    /// The document, if it is in memory (see [`Replica::load_doc`]).
    pub fn doc(&self, id: &DocId) -> Option<&Automerge> {
        self.cache.get(id).map(|s| &s.doc)
    }

    /// The document, loaded into the cache when it is not in memory.
    pub fn load_doc(&mut self, id: &DocId) -> Result<Option<&Automerge>, Error> {
        self.load(id)?;
        Ok(self.cache.get(id).map(|s| &s.doc))
    }

    /// The documents in memory, by id: every document, for a replica without a backing.
    pub fn docs(&self) -> impl Iterator<Item = (&DocId, &Automerge)> {
        let mut docs: Vec<(&DocId, &Automerge)> =
            self.cache.iter().map(|(id, s)| (id, &s.doc)).collect();
        docs.sort_by(|a, b| a.0.cmp(b.0));
        docs.into_iter()
    }

    /// How many documents are in memory.
    pub fn cached_docs(&self) -> usize {
        self.cache.len()
    }

    /// The documents changed since the last flush.
    pub fn unflushed_docs(&self) -> impl Iterator<Item = &DocId> {
        self.overlay.doc_ids()
    }

    /// Each log's last accepted seq.
    pub fn heights(&self) -> BTreeMap<LogId, u64> {
        self.tips.iter().map(|(log, tip)| (*log, tip.seq)).collect()
    }

    /// Each log's tip.
    pub fn tips(&self) -> &BTreeMap<LogId, Tip> {
        &self.tips
    }

    pub fn entry(&self, log: &LogId, seq: u64) -> Result<Option<SignedEntry>, Error> {
        self.read(log, seq)
    }

    /// Every accepted entry of a log, in order, checked to chain up to the log's tip.
    pub fn log_entries(&self, log: &LogId) -> Result<Vec<SignedEntry>, Error> {
        let mut entries = self.backing.log_from(log, 1)?;
        entries.retain(|e| !self.cut.contains(&e.hash()));
        entries.extend(self.overlay.log_from(log, 1));
        entries.sort_by_key(|e| e.entry.seq);
        entries.dedup_by_key(|e| e.entry.seq);
        let mut prev: Option<Tip> = None;
        for e in &entries {
            log::check_chain(&e.entry, prev.as_ref()).map_err(|invalid| {
                backing::Error(format!(
                    "store is corrupt: log {} of {} breaks at seq {}: {invalid}",
                    log.incarnation,
                    log.author.short(),
                    e.entry.seq
                ))
            })?;
            prev = Some(Tip::from(e));
        }
        if prev != self.tip(log) {
            return Err(Error::Backing(backing::Error(format!(
                "store is corrupt: log {} of {} ends before its tip",
                log.incarnation,
                log.author.short()
            ))));
        }
        Ok(entries)
    }

    pub fn entry_count(&self) -> usize {
        usize::try_from(self.entry_count).unwrap_or(usize::MAX)
    }

    pub fn contains(&self, hash: &EntryHash) -> Result<bool, Error> {
        self.holds(hash)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Entries dated ahead of the clock, waiting for their time.
    pub fn waiting_for_time_count(&self) -> usize {
        self.waiting_time.len()
    }

    /// Entries waiting for a missing change, as the waiting map counts them.
    pub fn waiting_count(&self) -> usize {
        self.waiting_dep.values().map(Vec::len).sum()
    }

    pub fn proofs(&self) -> impl Iterator<Item = &EquivocationProof> {
        self.proofs.values()
    }

    pub fn rejected_counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejected
    }

    /// The entries a peer with `heights` lacks, at most `max` of them and about `max_bytes`
    /// (always at least one), in the order this node accepted them: each log's entries
    /// in log order, and every entry after the entries it depends on, so that the peer can
    /// accept any prefix of the answer at once. Returns whether more remain.
    pub fn entries_after(
        &self,
        heights: &HashMap<LogId, u64>,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SignedEntry>, bool), Error> {
        let from: Vec<(LogId, u64)> = self
            .tips
            .iter()
            .filter_map(|(log, tip)| {
                let have = heights.get(log).copied().unwrap_or(0);
                (tip.seq > have).then_some((*log, have + 1))
            })
            .collect();
        self.entries_from(&from, max, max_bytes)
    }

    /// The position the entry of `log` at `seq` was accepted at, once it is durable.
    pub fn position(&self, log: &LogId, seq: u64) -> Result<Option<u64>, Error> {
        Ok(self.backing.position(log, seq)?)
    }

    /// The durable entries of every log in the order this node accepted them, from
    /// position `from` on, leaving out entries a proof cut; the position to go on from
    /// when more remain.
    pub fn entries_since(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SignedEntry>, Option<u64>), Error> {
        let (mut out, next) = self.backing.arrived_from(from, max, max_bytes)?;
        out.retain(|e| !self.cut.contains(&e.hash()));
        Ok((out, next))
    }

    /// The entries of the logs of `from`, each from its seq on, in the order this node
    /// accepted them (see [`Replica::entries_after`]).
    pub fn entries_from(
        &self,
        from: &[(LogId, u64)],
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SignedEntry>, bool), Error> {
        if from.is_empty() {
            return Ok((Vec::new(), false));
        }
        let (mut out, more) = self.backing.entries_in_order(from, max, max_bytes)?;
        out.retain(|e| !self.cut.contains(&e.hash()));
        if more || self.overlay.is_empty() {
            return Ok((out, more));
        }
        let bytes: usize = out.iter().map(|e| e.bytes().len()).sum();
        let (rest, more) = self.overlay.entries_in_order(
            from,
            max.saturating_sub(out.len()),
            max_bytes.saturating_sub(bytes),
        );
        if out.len() == max && !rest.is_empty() {
            return Ok((out, true));
        }
        out.extend(rest);
        Ok((out, more))
    }
}

/// Applies a document's entries in one call, guarded against Automerge's panics.
fn apply_whole(doc: &mut Automerge, id: &DocId, entries: &[SignedEntry]) -> Result<(), Error> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let changes = entries
        .iter()
        .map(|e| Change::from_bytes(e.entry.change.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Apply {
            doc: id.to_string(),
            reason: e.to_string(),
        })?;
    match catch_unwind(AssertUnwindSafe(|| doc.apply_changes(changes))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Apply {
            doc: id.to_string(),
            reason: e.to_string(),
        }),
        Err(_) => Err(Error::Apply {
            doc: id.to_string(),
            reason: "automerge panicked".into(),
        }),
    }
}

fn tip_hash(log: &LogId, tip: &Tip) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(log.author.as_bytes());
    h.update(&log.incarnation.to_be_bytes());
    h.update(&tip.seq.to_be_bytes());
    h.update(&tip.hash.0);
    *h.finalize().as_bytes()
}

fn xor(into: &mut [u8; 32], other: &[u8; 32]) {
    for (a, b) in into.iter_mut().zip(other) {
        *a ^= b;
    }
}
