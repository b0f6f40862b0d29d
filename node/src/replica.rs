//! The replica: the accepted logs, the documents they build, the pending set and the
//! equivocation proofs, driven by `ingest` and `prepare`. It does no IO.
//!
//! `ingest` takes entries in any order, with duplicates, and accepts exactly those whose
//! causal past is accepted and that pass every check. Entries waiting for their past sit
//! in a bounded pending set and wake when what they wait for is accepted. Two entries of
//! one log with the same seq make a proof; the log is then cut before that seq on every
//! node, and the documents are rebuilt from what stays accepted, so the verdict is the
//! same whichever of the two a node saw first.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use automerge::{ActorId, Automerge, Change, ChangeHash};

use crate::charter::Charter;
use crate::docs::DocId;
use crate::docs::command::{Command, Refused, Writer};
use crate::docs::rules::{self, Staged};
use crate::identity::SecretKey;
use crate::log::{self, Entry, EntryHash, EquivocationProof, Invalid, LogId, SignedEntry, Tip};

/// Bounds of the pending set.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_pending_entries: usize,
    pub max_pending_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending_entries: 20_000,
            max_pending_bytes: 64 * 1024 * 1024,
        }
    }
}

/// An internal failure: a bug or a corrupted document, never a peer's fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying changes to {doc} failed: {reason}")]
    Apply { doc: String, reason: String },
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
    /// The accepted set was recomputed after a proof: the store must be rewritten.
    pub rebuilt: bool,
    /// Documents that changed.
    pub touched: BTreeSet<DocId>,
}

struct Candidate {
    entry: SignedEntry,
    change: Change,
}

type PendingKey = (LogId, u64, EntryHash);

#[derive(Default)]
struct DocState {
    doc: Automerge,
    /// The last Automerge seq of each actor in this document.
    seqs: HashMap<ActorId, u64>,
}

/// The state of one node's view of the network.
pub struct Replica {
    charter: Arc<Charter>,
    limits: Limits,
    docs: BTreeMap<DocId, DocState>,
    logs: HashMap<LogId, Vec<SignedEntry>>,
    /// Every accepted entry as (log, seq), in a causal order: each entry after its
    /// predecessor in its log and after the entries whose changes its change depends on.
    /// Sync serves from it, so that any prefix of an answer is acceptable on its own.
    order: Vec<(LogId, u64)>,
    /// For each log, the position in `order` of each of its entries.
    positions: HashMap<LogId, Vec<usize>>,
    accepted: HashMap<EntryHash, (LogId, u64)>,
    pending: BTreeMap<PendingKey, Candidate>,
    pending_bytes: usize,
    waiting_dep: HashMap<ChangeHash, Vec<PendingKey>>,
    proofs: BTreeMap<LogId, EquivocationProof>,
    rejected: BTreeMap<&'static str, u64>,
    /// Entries whose changes Automerge could not apply: refused whenever they come again.
    poisoned: HashSet<EntryHash>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("docs", &self.docs.len())
            .field("logs", &self.logs.len())
            .field("entries", &self.accepted.len())
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
    max_ops: HashMap<ChangeHash, u64>,
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
    Duplicate,
    Reject(Invalid),
    Equivocation(Box<SignedEntry>),
}

impl Replica {
    pub fn new(charter: Arc<Charter>, limits: Limits) -> Replica {
        Replica {
            charter,
            limits,
            docs: BTreeMap::new(),
            logs: HashMap::new(),
            order: Vec::new(),
            positions: HashMap::new(),
            accepted: HashMap::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            waiting_dep: HashMap::new(),
            proofs: BTreeMap::new(),
            rejected: BTreeMap::new(),
            poisoned: HashSet::new(),
        }
    }

    /// Rebuilds a replica from a store: entries whose chains and signatures were checked,
    /// in a causal order, and snapshots checked to cover exactly those entries' changes.
    pub fn restore(
        charter: Arc<Charter>,
        limits: Limits,
        entries: Vec<SignedEntry>,
        docs: Vec<(DocId, Automerge)>,
        proofs: Vec<EquivocationProof>,
    ) -> Replica {
        let mut replica = Replica::new(charter, limits);
        for e in entries {
            let log = e.entry.log();
            replica.accepted.insert(e.hash(), (log, e.entry.seq));
            replica.push_accepted(log, e);
        }
        for (id, doc) in docs {
            replica.install_snapshot(id, doc);
        }
        for p in proofs {
            replica.add_proof(p);
        }
        replica
    }

    pub fn charter(&self) -> &Arc<Charter> {
        &self.charter
    }

    /// Takes in entries from anywhere, in any order. Signatures are checked in one batch.
    pub fn ingest(&mut self, entries: Vec<SignedEntry>) -> Result<Report, Error> {
        self.ingest_inner(entries, true)
    }

    /// Takes in entries whose signatures were already verified (a store being reopened).
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
            if self.accepted.contains_key(&hash)
                || self.pending.contains_key(&key)
                || !seen.insert(hash)
            {
                report.duplicates += 1;
                continue;
            }
            if self.poisoned.contains(&hash) {
                self.reject(
                    &mut report,
                    hash,
                    Invalid::MalformedChange("the change cannot be applied to its document".into()),
                );
                continue;
            }
            match log::check_intrinsic(&entry, &self.charter) {
                Ok((_, change)) => fresh.push(Candidate { entry, change }),
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
            let key = (c.entry.entry.log(), c.entry.entry.seq, c.entry.hash());
            self.pending_bytes += size;
            self.pending.insert(key, c);
            queue.push_back(key);
        }
        // Lower seqs first, so that one pass accepts a log that arrived in order.
        queue.make_contiguous().sort();
        self.drain(queue, &mut report)?;
        report.overflow += self.trim_pending();
        if !report.new_proofs.is_empty() {
            self.rebuild(&mut report)?;
        }
        Ok(report)
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

    fn reject(&mut self, report: &mut Report, hash: EntryHash, invalid: Invalid) {
        *self.rejected.entry(invalid.reason()).or_default() += 1;
        report.rejected.push((hash, invalid));
    }

    fn verify_signatures(&mut self, fresh: Vec<Candidate>, report: &mut Report) -> Vec<Candidate> {
        let verdicts = {
            let items: Vec<_> = fresh
                .iter()
                .map(|c| {
                    (
                        &c.entry.entry.author,
                        crate::identity::DOMAIN_ENTRY,
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

    /// Appends an accepted entry to its log and to the causal order.
    fn push_accepted(&mut self, log: LogId, entry: SignedEntry) {
        self.positions
            .entry(log)
            .or_default()
            .push(self.order.len());
        self.order.push((log, entry.entry.seq));
        self.logs.entry(log).or_default().push(entry);
    }

    fn tip(&self, log: &LogId) -> Option<Tip> {
        self.logs
            .get(log)
            .and_then(|entries| entries.last())
            .map(Tip::from)
    }

    fn drain(&mut self, mut queue: VecDeque<PendingKey>, report: &mut Report) -> Result<(), Error> {
        let mut round = Round::default();
        while let Some(key) = queue.pop_front() {
            let Some(candidate) = self.pending.get(&key) else {
                continue;
            };
            match self.judge(&key, candidate, &mut round) {
                Verdict::WaitPrev => {}
                Verdict::WaitDep(hash) => self.waiting_dep.entry(hash).or_default().push(key),
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
                    let doc_id = c.entry.entry.doc.clone();
                    let state = self.docs.entry(doc_id.clone()).or_default();
                    state
                        .seqs
                        .insert(c.change.actor_id().clone(), c.change.seq());
                    let stage = round.staged.entry(doc_id.clone()).or_default();
                    stage.max_ops.insert(change_hash, c.change.max_op());
                    stage.changes.push((c.change, hash));
                    self.push_accepted(log, c.entry.clone());
                    self.accepted.insert(hash, (log, seq));
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
                        queue.extend(waiters);
                    }
                }
            }
        }
        let mut poisoned = Vec::new();
        for (doc_id, stage) in round.staged {
            poisoned.extend(self.apply_guarded(&doc_id, stage.changes));
        }
        if !poisoned.is_empty() {
            // A change that Automerge cannot apply is refused on every node alike: the
            // accepted set is recomputed without it (and without what depends on it).
            for hash in poisoned {
                self.poisoned.insert(hash);
                self.reject(
                    report,
                    hash,
                    Invalid::MalformedChange("the change cannot be applied to its document".into()),
                );
            }
            self.rebuild(report)?;
        }
        Ok(())
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
    ) -> Vec<EntryHash> {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let Some(state) = self.docs.get_mut(doc_id) else {
            return Vec::new();
        };
        let batch: Vec<Change> = changes.iter().map(|(c, _)| c.clone()).collect();
        if matches!(
            catch_unwind(AssertUnwindSafe(|| state.doc.apply_changes(batch))),
            Ok(Ok(()))
        ) {
            return Vec::new();
        }
        tracing::warn!(doc = %doc_id, "a change could not be applied; rebuilding the document");
        let staged: HashSet<EntryHash> = changes.iter().map(|(_, h)| *h).collect();
        let mut doc = Automerge::new();
        let earlier: Vec<Change> = self
            .logs
            .values()
            .flatten()
            .filter(|e| e.entry.doc == *doc_id && !staged.contains(&e.hash()))
            .filter_map(|e| Change::from_bytes(e.entry.change.clone()).ok())
            .collect();
        if !matches!(
            catch_unwind(AssertUnwindSafe(|| doc.apply_changes(earlier))),
            Ok(Ok(()))
        ) {
            doc = Automerge::new();
        }
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
        if let Some(state) = self.docs.get_mut(doc_id) {
            state.doc = doc;
        }
        bad
    }

    fn take_pending(&mut self, key: &PendingKey) -> Option<Candidate> {
        let c = self.pending.remove(key)?;
        self.pending_bytes = self.pending_bytes.saturating_sub(c.entry.bytes().len());
        Some(c)
    }

    fn judge(&self, key: &PendingKey, c: &Candidate, round: &mut Round) -> Verdict {
        let (log, seq, hash) = *key;
        if let Some(proof) = self.proofs.get(&log)
            && seq >= proof.seq()
        {
            return Verdict::Reject(Invalid::Equivocated { seq: proof.seq() });
        }
        let tip = self.tip(&log);
        let tip_seq = tip.map_or(0, |t| t.seq);
        if seq <= tip_seq {
            let existing = &self.logs[&log][(seq - 1) as usize];
            return if existing.hash() == hash {
                Verdict::Duplicate
            } else {
                Verdict::Equivocation(Box::new(existing.clone()))
            };
        }
        if seq > tip_seq + 1 {
            // An entry ahead of its log whose prev names an entry we hold shows its own gap
            // at once; otherwise it waits for its predecessor.
            if let Some(&(prev_log, prev_seq)) = c
                .entry
                .entry
                .prev
                .as_ref()
                .and_then(|p| self.accepted.get(p))
            {
                if prev_log != log {
                    return Verdict::Reject(Invalid::WrongPrev { seq: seq - 1 });
                }
                return Verdict::Reject(Invalid::SeqGap {
                    expected: prev_seq + 1,
                    found: seq,
                });
            }
            return Verdict::WaitPrev;
        }
        if let Err(invalid) = log::check_chain(&c.entry.entry, tip.as_ref()) {
            return Verdict::Reject(invalid);
        }
        let doc_id = &c.entry.entry.doc;
        let empty = DocState::default();
        let state = self.docs.get(doc_id).unwrap_or(&empty);
        let stage = round.staged.entry(doc_id.clone()).or_default();
        let mut deps_max_op = 0;
        for dep in c.change.deps() {
            let max_op = stage
                .max_ops
                .get(dep)
                .copied()
                .or_else(|| state.doc.get_change_meta_by_hash(dep).map(|m| m.max_op));
            match max_op {
                Some(m) => deps_max_op = deps_max_op.max(m),
                None => return Verdict::WaitDep(*dep),
            }
        }
        // Op counters are Lamport clocks: a change's ops come after all of its past.
        if c.change.start_op().get() <= deps_max_op {
            return Verdict::Reject(Invalid::MalformedChange(format!(
                "change ops start at {} but its dependencies reach {deps_max_op}",
                c.change.start_op()
            )));
        }
        let last = state.seqs.get(c.change.actor_id()).copied().unwrap_or(0);
        if c.change.seq() != last + 1 {
            return Verdict::Reject(Invalid::MalformedChange(format!(
                "change seq {} is not the next of its actor in {doc_id} (expected {})",
                c.change.seq(),
                last + 1
            )));
        }
        let Some(author) = self.charter.participant_by_key(&c.entry.entry.author) else {
            return Verdict::Reject(Invalid::UnknownAuthor(c.entry.entry.author.to_string()));
        };
        let ctx = rules::Context {
            charter: &self.charter,
            doc: doc_id,
            author,
            timestamp_ms: c.entry.entry.timestamp_ms,
        };
        match rules::check(&ctx, &state.doc, &mut stage.staged, &c.change) {
            Ok(()) => Verdict::Accept,
            Err(rule) => Verdict::Reject(Invalid::Rule(rule)),
        }
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
            if p.verify(&self.charter).is_ok() && self.add_proof(p.clone()) {
                report.new_proofs.push(p);
            }
        }
        if !report.new_proofs.is_empty() {
            self.rebuild(&mut report)?;
        }
        Ok(report)
    }

    /// Recomputes the accepted set and the documents from every entry known, with the
    /// proven logs cut before their forks.
    fn rebuild(&mut self, report: &mut Report) -> Result<(), Error> {
        let mut all: Vec<SignedEntry> = self.logs.drain().flat_map(|(_, v)| v).collect();
        self.order.clear();
        self.positions.clear();
        all.retain(|e| !self.poisoned.contains(&e.hash()));
        all.extend(
            std::mem::take(&mut self.pending)
                .into_values()
                .map(|c| c.entry),
        );
        self.docs.clear();
        self.accepted.clear();
        self.waiting_dep.clear();
        self.pending_bytes = 0;
        let before: BTreeSet<DocId> = all.iter().map(|e| e.entry.doc.clone()).collect();
        let mut inner = self.ingest_inner(all, false)?;
        report.rebuilt = true;
        report.touched.extend(before);
        report.accepted.clear();
        report.rejected.append(&mut inner.rejected);
        Ok(())
    }

    /// Prepares a local write: builds the change, checks the rules before signing, then
    /// signs the entry. The caller ingests it and makes it durable.
    pub fn prepare(
        &self,
        key: &SecretKey,
        incarnation: u32,
        command: &Command,
        now_ms: u64,
        ulid: ulid::Ulid,
    ) -> Result<(SignedEntry, String), Refused> {
        let author = self
            .charter
            .participant_by_key(&key.public())
            .ok_or_else(|| {
                Refused::Invalid("this node's key is not a participant's key in the charter".into())
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
        if self
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
        let writer = Writer {
            code: &author.code,
            now_ms,
            today,
        };
        let doc_id = command.target(&writer, ulid)?;
        let empty = DocState::default();
        let state = self.docs.get(&doc_id).unwrap_or(&empty);
        let mut fork = state.doc.fork();
        fork.set_actor(log.actor());
        let mut tx = fork.transaction();
        let item = command.apply(&mut tx, &state.doc, &doc_id, &writer, ulid)?;
        let options = automerge::transaction::CommitOptions::default()
            .with_time(i64::try_from(now_ms / 1000).unwrap_or(i64::MAX));
        let (hash, _) = tx.commit_with(options);
        if hash.is_none() {
            return Err(Refused::Invalid("nothing to change".into()));
        }
        let mut change = fork
            .get_last_local_change()
            .ok_or_else(|| Refused::Invalid("nothing to change".into()))?;
        let ctx = rules::Context {
            charter: &self.charter,
            doc: &doc_id,
            author,
            timestamp_ms: now_ms,
        };
        rules::check(&ctx, &state.doc, &mut Staged::default(), &change).map_err(Refused::Rule)?;
        let tip = self.tip(&log);
        let entry = Entry {
            network: self.charter.network.clone(),
            author: key.public(),
            incarnation,
            seq: tip.map_or(1, |t| t.seq + 1),
            prev: tip.map(|t| t.hash),
            timestamp_ms: tip.map_or(now_ms, |t| t.timestamp_ms.max(now_ms)),
            doc: doc_id,
            change: change.bytes().into_owned(),
        };
        if entry.change.len() + 512 > log::MAX_ENTRY_BYTES {
            return Err(Refused::Invalid(format!(
                "the change is {} bytes, over the entry limit",
                entry.change.len()
            )));
        }
        Ok((entry.sign(key), item))
    }

    /// An incarnation this author has not used in any log known here.
    pub fn fresh_incarnation(
        &self,
        author: &crate::identity::PublicKey,
        rng: &mut dyn rand::RngCore,
    ) -> u32 {
        loop {
            let candidate = rng.next_u32();
            let used = self
                .logs
                .keys()
                .chain(self.proofs.keys())
                .any(|l| l.author == *author && l.incarnation == candidate);
            if candidate != 0 && !used {
                return candidate;
            }
        }
    }

    pub fn doc(&self, id: &DocId) -> Option<&Automerge> {
        self.docs.get(id).map(|s| &s.doc)
    }

    pub fn docs(&self) -> impl Iterator<Item = (&DocId, &Automerge)> {
        self.docs.iter().map(|(id, s)| (id, &s.doc))
    }

    /// Replaces a document by one loaded from a snapshot that covers the same changes.
    fn install_snapshot(&mut self, id: DocId, doc: Automerge) {
        let seqs = doc
            .get_changes_meta(&[])
            .into_iter()
            .map(|m| (m.actor.into_owned(), m.seq))
            .fold(HashMap::new(), |mut acc: HashMap<ActorId, u64>, (a, s)| {
                let e = acc.entry(a).or_default();
                *e = (*e).max(s);
                acc
            });
        self.docs.insert(id, DocState { doc, seqs });
    }

    /// Each log's last accepted seq.
    pub fn heights(&self) -> BTreeMap<LogId, u64> {
        self.logs
            .iter()
            .map(|(log, entries)| (*log, entries.len() as u64))
            .collect()
    }

    pub fn entry(&self, log: &LogId, seq: u64) -> Option<&SignedEntry> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.logs.get(log)?.get(index)
    }

    pub fn log_entries(&self, log: &LogId) -> &[SignedEntry] {
        self.logs.get(log).map_or(&[], Vec::as_slice)
    }

    pub fn entry_count(&self) -> usize {
        self.accepted.len()
    }

    pub fn contains(&self, hash: &EntryHash) -> bool {
        self.accepted.contains_key(hash)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn proofs(&self) -> impl Iterator<Item = &EquivocationProof> {
        self.proofs.values()
    }

    pub fn rejected_counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejected
    }

    /// The entries a peer with `heights` lacks, at most `max` of them and about `max_bytes`
    /// (always at least one), in the order this replica accepted them: each log's entries
    /// in log order, and every entry after the entries it depends on, so that the peer can
    /// accept any prefix of the answer at once. Returns whether more remain.
    pub fn entries_after(
        &self,
        heights: &HashMap<LogId, u64>,
        max: usize,
        max_bytes: usize,
    ) -> (Vec<&SignedEntry>, bool) {
        let have = |log: &LogId| heights.get(log).copied().unwrap_or(0);
        // The first position in the order that the peer lacks.
        let start = self
            .positions
            .iter()
            .filter_map(|(log, positions)| {
                usize::try_from(have(log))
                    .ok()
                    .and_then(|h| positions.get(h))
            })
            .min();
        let Some(&start) = start else {
            return (Vec::new(), false);
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (log, seq) in &self.order[start..] {
            if *seq <= have(log) {
                continue;
            }
            let Some(e) = self.entry(log, *seq) else {
                continue;
            };
            if out.len() == max || (!out.is_empty() && bytes + e.bytes().len() > max_bytes) {
                return (out, true);
            }
            bytes += e.bytes().len();
            out.push(e);
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn report(i: usize) -> Command {
        serde_json::from_value(serde_json::json!({
            "command": "obstacle_report", "title": format!("Obstacle {i}"),
            "type": "legal", "description": "A description.",
        }))
        .unwrap()
    }

    #[test]
    fn the_pending_set_is_bounded() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let today = time::macros::date!(2026 - 12 - 01);
        let now = 1_796_083_200_000;
        let (charter, keys) = crate::testnet::fixture(&["IE", "LT"], &[], today, &mut rng).unwrap();
        let charter = Arc::new(charter);
        let mut author = Replica::new(charter.clone(), Limits::default());
        let mut entries = Vec::new();
        for i in 0..10 {
            let (e, _) = author
                .prepare(
                    &keys["LT"],
                    1,
                    &report(i),
                    now,
                    ulid::Ulid::from(i as u128 + 1),
                )
                .unwrap();
            author.ingest(vec![e.clone()]).unwrap();
            entries.push(e);
        }
        let limits = Limits {
            max_pending_entries: 3,
            max_pending_bytes: usize::MAX,
        };
        let mut r = Replica::new(charter.clone(), limits);
        // Without the first entry, every other one waits; only three fit.
        let report = r.ingest(entries[1..].to_vec()).unwrap();
        assert_eq!((report.accepted.len(), report.overflow), (0, 6));
        assert_eq!(r.pending_count(), 3);
        // The first entry wakes the three that wait; the overflow comes again by sync.
        let report = r.ingest(vec![entries[0].clone()]).unwrap();
        assert_eq!(report.accepted.len(), 4, "{report:?}");
        assert_eq!(r.pending_count(), 0);
        // Sync offers everything again; each round gets as far as the limits allow.
        let report = r.ingest(entries.clone()).unwrap();
        assert_eq!((report.accepted.len(), report.overflow), (3, 3));
        let report = r.ingest(entries.clone()).unwrap();
        assert_eq!(report.accepted.len(), 3);
        assert_eq!(r.entry_count(), 10);

        let tight = Limits {
            max_pending_entries: usize::MAX,
            max_pending_bytes: entries[1].bytes().len() * 2,
        };
        let mut r = Replica::new(charter, tight);
        let report = r.ingest(entries[1..].to_vec()).unwrap();
        assert_eq!(r.pending_count(), 2, "{report:?}");
    }

    #[test]
    fn sync_answers_in_causal_order_across_logs() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let today = time::macros::date!(2026 - 12 - 01);
        let now = 1_796_083_200_000;
        let (charter, keys) = crate::testnet::fixture(&["IE", "LT"], &[], today, &mut rng).unwrap();
        let charter = Arc::new(charter);
        let mut source = Replica::new(charter.clone(), Limits::default());
        let (first, doc) = source
            .prepare(&keys["LT"], 1, &report(0), now, ulid::Ulid::from(1u128))
            .unwrap();
        source.ingest(vec![first]).unwrap();
        // The two states answer each other in one thread, so that every entry of each log
        // depends on the entry just before it in the other log.
        for i in 0..40u64 {
            let code = if i % 2 == 0 { "IE" } else { "LT" };
            let comment: Command = serde_json::from_value(serde_json::json!({
                "command": "obstacle_comment", "obstacle": doc, "text": format!("Reply {i}."),
            }))
            .unwrap();
            let (e, _) = source
                .prepare(
                    &keys[code],
                    1,
                    &comment,
                    now + i,
                    ulid::Ulid::from(100 + u128::from(i)),
                )
                .unwrap();
            let report = source.ingest(vec![e]).unwrap();
            assert_eq!(report.accepted.len(), 1);
        }
        // A peer whose pending set holds no more than one batch still takes every batch
        // whole: nothing in it waits for a later one.
        let limits = Limits {
            max_pending_entries: 4,
            max_pending_bytes: usize::MAX,
        };
        let mut peer = Replica::new(charter, limits);
        let mut rounds = 0;
        loop {
            let heights: HashMap<LogId, u64> = peer.heights().into_iter().collect();
            let (batch, more) = source.entries_after(&heights, 4, usize::MAX);
            let batch: Vec<SignedEntry> = batch.into_iter().cloned().collect();
            let sent = batch.len();
            let report = peer.ingest(batch).unwrap();
            assert_eq!(report.accepted.len(), sent, "round {rounds}: {report:?}");
            rounds += 1;
            if !more {
                break;
            }
        }
        assert_eq!(rounds, 41_usize.div_ceil(4));
        assert_eq!(peer.heights(), source.heights());
        assert_eq!(peer.entry_count(), 41);
    }
}
