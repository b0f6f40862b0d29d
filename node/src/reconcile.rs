//! Range-based set reconciliation over logs, without IO: which logs two nodes hold
//! differently, found in messages whose size does not depend on how many logs exist.
//!
//! Each log a node holds is an [`Item`]: its [`Key`] (author and incarnation), its height,
//! the hash of its entry at that height and whether an equivocation proof cut it. The
//! [`Fingerprint`] of a range of keys is the XOR of its items' BLAKE3 hashes and their
//! count. A [`Set`] holds one node's items; a [`Session`] is the requester's side of one
//! pull. The requester asks about ranges with its own fingerprints; the responder answers
//! each range whose fingerprint differs from its own with its items, when there are at most
//! [`MAX_ITEMS`], or with the fingerprints of [`PARTS`] sub-ranges of equal item count. The
//! requester compares each answer with its own set: it learns the logs it lacks, is behind
//! on, holds another entry of at the same height (a fork), or lacks the proof of, and which
//! sub-ranges to ask about next. Every message and all of a session's state are bounded by
//! the constants below, whether there are ten logs or a hundred thousand.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::log::{EntryHash, LogId};

/// Ranges asked about in one request.
pub const MAX_ASKED: usize = 32;
/// Logs whose entries one request asks for.
pub const MAX_WANTED: usize = 256;
/// The most items a range answer lists; a range with more is split.
pub const MAX_ITEMS: usize = 64;
/// The most sub-ranges a range is split into: as many as it takes for each to hold at
/// most [`MAX_ITEMS`], so that they are answered with items next.
pub const PARTS: usize = 16;
/// Ranges a session keeps to ask about later; beyond it, the last ones are merged.
pub const MAX_QUEUED: usize = 512;
/// Logs a session keeps wanted, to ask for [`MAX_WANTED`] at a time. Ranges are asked
/// about only while their items would fit.
pub const MAX_BACKLOG: usize = 2 * MAX_ASKED * MAX_ITEMS;

/// Why a peer's range answers were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("answer to range {0}, which was not asked or was answered before")]
    Unasked(u32),
    #[error("{0} items in one range answer, over the limit of {MAX_ITEMS}")]
    TooManyItems(usize),
    #[error("{0} sub-ranges in one range answer, outside 2 to {PARTS}")]
    Parts(usize),
    #[error("a range answer is out of order or outside its range")]
    OutOfRange,
}

/// A log's place in the order of logs: its author's key, then its incarnation big-endian,
/// which is the order of [`LogId`]. Range bounds are keys too, and need not name a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(#[serde(with = "serde_bytes")] pub [u8; 36]);

impl Key {
    /// The first key of all.
    pub const MIN: Key = Key([0; 36]);

    pub fn of(log: &LogId) -> Key {
        let mut key = [0; 36];
        key[..32].copy_from_slice(log.author.as_bytes());
        key[32..].copy_from_slice(&log.incarnation.to_be_bytes());
        Key(key)
    }
}

/// What a node holds of one log. A log without entries or proof is not held at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Item {
    pub log: Key,
    /// The log's last accepted seq; 0 when a proof cut it before its first entry.
    pub seq: u64,
    /// The hash of the entry at `seq`; zeros when `seq` is 0.
    #[serde(with = "serde_bytes")]
    pub tip: [u8; 32],
    /// Whether an equivocation proof cut the log.
    pub proven: bool,
}

impl Item {
    /// The item of a log that a node does not hold.
    pub fn absent(log: Key) -> Item {
        Item {
            log,
            seq: 0,
            tip: [0; 32],
            proven: false,
        }
    }

    fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"spocnet/reconcile/item/v1\0");
        h.update(&self.log.0);
        h.update(&self.seq.to_be_bytes());
        h.update(&self.tip);
        h.update(&[u8::from(self.proven)]);
        *h.finalize().as_bytes()
    }

    /// Whether a node holding `mine` of this log wants it from a peer holding `self`: the
    /// peer is further, holds another entry at the same seq, or holds a proof we lack.
    pub fn wanted_over(&self, mine: &Item) -> bool {
        self.seq > mine.seq
            || (self.seq == mine.seq && self.tip != mine.tip)
            || (self.proven && !mine.proven)
    }
}

/// The XOR of the item hashes of a range, and their count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    #[serde(with = "serde_bytes")]
    pub xor: [u8; 32],
    pub count: u64,
}

impl Fingerprint {
    fn add(&mut self, hash: &[u8; 32]) {
        for (x, h) in self.xor.iter_mut().zip(hash) {
            *x ^= h;
        }
        self.count += 1;
    }
}

/// The keys from `start` (included) to `end` (excluded; `None` runs to the last key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub start: Key,
    pub end: Option<Key>,
}

impl Range {
    /// Every key.
    pub const ALL: Range = Range {
        start: Key::MIN,
        end: None,
    };

    pub fn contains(&self, key: &Key) -> bool {
        *key >= self.start && self.end.is_none_or(|end| *key < end)
    }

    /// The bounds for a `BTreeMap` range, or `None` when the range is empty.
    fn bounds(&self) -> Option<(Bound<Key>, Bound<Key>)> {
        match self.end {
            Some(end) if end <= self.start => None,
            Some(end) => Some((Bound::Included(self.start), Bound::Excluded(end))),
            None => Some((Bound::Included(self.start), Bound::Unbounded)),
        }
    }
}

/// A range the requester asks about, with its own fingerprint of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    pub range: Range,
    pub fingerprint: Fingerprint,
}

/// One sub-range of a split range: it runs from `start` to the next part's start, and the
/// last one to the end of the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub start: Key,
    pub fingerprint: Fingerprint,
}

/// The responder's side of an asked range whose fingerprint differs from its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Every item the responder holds in the range, in key order.
    Items(Vec<Item>),
    /// The range split into sub-ranges of about equal item count, in key order.
    Parts(Vec<Part>),
}

/// The answer to the asked range at `index`; ranges whose fingerprints match get none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub index: u32,
    pub body: Body,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    log: LogId,
    item: Item,
    hash: [u8; 32],
}

/// One node's items, in key order, with their hashes.
#[derive(Clone, Debug, Default)]
pub struct Set {
    items: BTreeMap<Key, Held>,
}

impl Set {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sets what the node holds of `log`: its height, the hash of its entry there, and
    /// whether a proof cut it. A log at seq 0 without proof is removed.
    pub fn insert(&mut self, log: LogId, seq: u64, tip: Option<EntryHash>, proven: bool) {
        let key = Key::of(&log);
        let item = Item {
            log: key,
            seq,
            tip: tip.filter(|_| seq > 0).map_or([0; 32], |t| t.0),
            proven,
        };
        if item == Item::absent(key) {
            self.items.remove(&key);
        } else {
            let hash = item.hash();
            self.items.insert(key, Held { log, item, hash });
        }
    }

    /// Raises `log` to `seq` after its entry `tip` was accepted; a lower seq changes
    /// nothing.
    pub fn advance(&mut self, log: LogId, seq: u64, tip: EntryHash) {
        let held = self.items.get(&Key::of(&log)).map(|h| h.item);
        if held.is_none_or(|h| h.seq < seq) {
            self.insert(log, seq, Some(tip), held.is_some_and(|h| h.proven));
        }
    }

    /// Marks `log` as cut by a proof.
    pub fn prove(&mut self, log: LogId) {
        let held = self.item(&Key::of(&log));
        self.insert(log, held.seq, Some(EntryHash(held.tip)), true);
    }

    /// What the node holds of the log at `key`; [`Item::absent`] when nothing.
    pub fn item(&self, key: &Key) -> Item {
        self.items.get(key).map_or(Item::absent(*key), |h| h.item)
    }

    /// The log at `key` and its item, when the node holds it.
    pub fn log(&self, key: &Key) -> Option<(LogId, Item)> {
        self.items.get(key).map(|h| (h.log, h.item))
    }

    fn within(&self, range: &Range) -> impl Iterator<Item = &Held> {
        range
            .bounds()
            .into_iter()
            .flat_map(|bounds| self.items.range(bounds).map(|(_, h)| h))
    }

    pub fn fingerprint(&self, range: &Range) -> Fingerprint {
        let mut f = Fingerprint::default();
        for h in self.within(range) {
            f.add(&h.hash);
        }
        f
    }

    /// The items in `range`, in key order.
    pub fn items(&self, range: &Range) -> Vec<Item> {
        self.within(range).map(|h| h.item).collect()
    }

    /// Splits `range` into sub-ranges of equal item count, each with its fingerprint: as
    /// many as it takes for each to hold at most [`MAX_ITEMS`], at least 2 and at most
    /// [`PARTS`] (fewer when it holds fewer items). The first starts where `range` starts.
    pub fn split(&self, range: &Range) -> Vec<Part> {
        let held: Vec<&Held> = self.within(range).collect();
        let parts = held
            .len()
            .div_ceil(MAX_ITEMS)
            .clamp(2, PARTS)
            .min(held.len().max(1));
        (0..parts)
            .map(|i| {
                let (from, to) = (i * held.len() / parts, (i + 1) * held.len() / parts);
                let mut fingerprint = Fingerprint::default();
                for h in &held[from..to] {
                    fingerprint.add(&h.hash);
                }
                let start = if i == 0 {
                    range.start
                } else {
                    held[from].item.log
                };
                Part { start, fingerprint }
            })
            .collect()
    }

    /// The responder's answers to a requester's ranges: the first [`MAX_ASKED`] of them,
    /// as long as they are disjoint and in key order (as a session asks them), so that one
    /// request reads each item at most once.
    pub fn answer(&self, asked: &[Asked]) -> Vec<Answer> {
        let mut floor = Some(Key::MIN);
        asked
            .iter()
            .take(MAX_ASKED)
            .take_while(|a| {
                let after = floor.is_some_and(|f| a.range.start >= f);
                floor = a.range.end;
                after
            })
            .zip(0u32..)
            .filter_map(|(a, index)| {
                let ours = self.fingerprint(&a.range);
                if ours == a.fingerprint {
                    return None;
                }
                let body = if ours.count <= MAX_ITEMS as u64 {
                    Body::Items(self.items(&a.range))
                } else {
                    Body::Parts(self.split(&a.range))
                };
                Some(Answer { index, body })
            })
            .collect()
    }
}

/// One request's questions: ranges to reconcile, and the logs whose entries the requester
/// wants, each with what the requester holds of it; or, for a requester that lacks more
/// logs than one request can name, a place in the responder's stream of entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ask {
    pub ranges: Vec<Asked>,
    pub wanted: Vec<Item>,
    pub stream: Option<Stream>,
}

/// Asks for the responder's entries of every log, in the order it accepted them, which is
/// a causal order: each entry comes after the entries it depends on, whatever their log.
/// Asking for logs by name cannot promise that when the requester lacks more logs than
/// one request names, and entries whose past is in logs not asked for yet wait, or are
/// sent again, until that past arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// From the responder's first entry.
    Start,
    /// From this position of the responder's order, as its last answer said.
    From(u64),
}

/// Where a session stands with the responder's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Streaming {
    /// Not decided: logs are asked for by name while one request can name them all; past
    /// that, they wait until the ranges are explored or the backlog is full, and then the
    /// session decides.
    No,
    /// Asked for, and the responder has more from this place.
    At(Stream),
    /// Over, or decided against: logs are asked for by name. A session streams at most
    /// once, and reconciles again after it.
    Over,
}

/// The requester's side of one pull from one peer.
#[derive(Clone, Debug)]
pub struct Session {
    /// Ranges still to ask about: disjoint, in key order, at most [`MAX_QUEUED`].
    queue: Vec<Range>,
    /// Logs the peer holds more of, at most [`MAX_BACKLOG`]; each request asks for the
    /// entries of the first [`MAX_WANTED`].
    wanted: BTreeSet<Key>,
    /// The ranges of the request in flight, by index.
    asked: Vec<Range>,
    /// The logs whose entries the request in flight asks for.
    asked_wanted: Vec<Key>,
    streaming: Streaming,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            queue: vec![Range::ALL],
            wanted: BTreeSet::new(),
            asked: Vec::new(),
            asked_wanted: Vec::new(),
            streaming: Streaming::No,
        }
    }
}

impl Session {
    /// A session that starts with every key to reconcile.
    pub fn new() -> Session {
        Session::default()
    }

    /// A session that goes on with a stream an earlier session of the same peer left at
    /// `position`.
    pub fn resume(position: u64) -> Session {
        Session {
            streaming: Streaming::At(Stream::From(position)),
            ..Session::default()
        }
    }

    /// Where the responder's stream goes on, while the session takes it.
    pub fn stream_position(&self) -> Option<u64> {
        match self.streaming {
            Streaming::At(Stream::Start) => Some(0),
            Streaming::At(Stream::From(position)) => Some(position),
            Streaming::No | Streaming::Over => None,
        }
    }

    /// The next request's questions, or `None` when the session is over: nothing is left
    /// to reconcile and no log is wanted.
    pub fn ask(&mut self, set: &Set) -> Option<Ask> {
        if let Streaming::At(stream) = self.streaming {
            self.asked = Vec::new();
            self.asked_wanted = Vec::new();
            return Some(Ask {
                ranges: Vec::new(),
                wanted: Vec::new(),
                stream: Some(stream),
            });
        }
        if self.queue.is_empty() && self.wanted.is_empty() {
            return None;
        }
        let undecided = self.streaming == Streaming::No && self.wanted.len() > MAX_WANTED;
        self.asked_wanted = if undecided {
            Vec::new()
        } else {
            self.wanted.iter().take(MAX_WANTED).copied().collect()
        };
        // Ask about as many ranges as could be answered with items that all differ, once
        // the logs asked for now are served.
        let left = self.wanted.len() - self.asked_wanted.len();
        let ranges = ((MAX_BACKLOG - left) / MAX_ITEMS).min(MAX_ASKED);
        self.asked = self.queue.drain(..ranges.min(self.queue.len())).collect();
        Some(Ask {
            ranges: self
                .asked
                .iter()
                .map(|range| Asked {
                    range: *range,
                    fingerprint: set.fingerprint(range),
                })
                .collect(),
            wanted: self.asked_wanted.iter().map(|k| set.item(k)).collect(),
            stream: None,
        })
    }

    /// Whether the request in flight asks for the responder's stream.
    pub fn is_streaming(&self) -> bool {
        matches!(self.streaming, Streaming::At(_))
    }

    /// Takes in where the responder's stream goes on after its answer to the request in
    /// flight; `None` when it sent all it holds, or does not stream. The stream over, the
    /// session reconciles every key again: what the stream did not bring is found as if
    /// the pull had just begun.
    pub fn streamed(&mut self, next: Option<u64>) {
        if !self.is_streaming() {
            return;
        }
        match next {
            Some(position) => self.streaming = Streaming::At(Stream::From(position)),
            None => {
                self.streaming = Streaming::Over;
                self.queue = vec![Range::ALL];
                self.wanted.clear();
                self.asked_wanted.clear();
            }
        }
    }

    /// Checks a peer's answers to the request in flight: each answers an asked range once,
    /// in order, within the limits, and stays inside its range.
    pub fn check(&self, answers: &[Answer]) -> Result<(), Error> {
        let mut next = 0;
        for a in answers {
            let index = usize::try_from(a.index).unwrap_or(usize::MAX);
            let range = match self.asked.get(index) {
                Some(range) if index >= next => range,
                _ => return Err(Error::Unasked(a.index)),
            };
            next = index + 1;
            let keys: Vec<Key> = match &a.body {
                Body::Items(items) if items.len() > MAX_ITEMS => {
                    return Err(Error::TooManyItems(items.len()));
                }
                Body::Items(items) => items.iter().map(|i| i.log).collect(),
                Body::Parts(parts) if !(2..=PARTS).contains(&parts.len()) => {
                    return Err(Error::Parts(parts.len()));
                }
                Body::Parts(parts) if parts[0].start != range.start => {
                    return Err(Error::OutOfRange);
                }
                Body::Parts(parts) => parts.iter().map(|p| p.start).collect(),
            };
            let ordered = keys.windows(2).all(|w| w[0] < w[1]);
            if !ordered || !keys.iter().all(|k| range.contains(k)) {
                return Err(Error::OutOfRange);
            }
        }
        Ok(())
    }

    /// Takes in the peer's answers to the request in flight. `served` says the peer sent
    /// all it had of the wanted logs, or all it could for now: they are no longer wanted.
    /// Returns how many logs are newly wanted.
    pub fn receive(&mut self, set: &Set, answers: &[Answer], served: bool) -> Result<usize, Error> {
        self.check(answers)?;
        if served {
            for key in &self.asked_wanted {
                self.wanted.remove(key);
            }
        }
        let asked = std::mem::take(&mut self.asked);
        let mut found = 0;
        for a in answers {
            let range = asked[usize::try_from(a.index).unwrap_or_default()];
            match &a.body {
                Body::Items(items) => {
                    let differing = items.iter().filter(|t| t.wanted_over(&set.item(&t.log)));
                    for theirs in differing {
                        if self.wanted.len() == MAX_BACKLOG {
                            self.queue.push(Range {
                                start: theirs.log,
                                end: range.end,
                            });
                            break;
                        }
                        found += usize::from(self.wanted.insert(theirs.log));
                    }
                }
                Body::Parts(parts) => {
                    for (i, p) in parts.iter().enumerate() {
                        let end = parts.get(i + 1).map_or(range.end, |n| Some(n.start));
                        let part = Range {
                            start: p.start,
                            end,
                        };
                        if set.fingerprint(&part) != p.fingerprint {
                            self.queue.push(part);
                        }
                    }
                }
            }
        }
        // Once more logs are wanted than one request names, and the ranges are explored or
        // the backlog is full: a requester that wants more logs than it holds lacks most
        // of the peer's history, and the whole stream costs it little more than what it
        // lacks. One that holds more (a node back after weeks away) asks by name, since
        // the stream has no place to start from that both sides know.
        let explored = self.queue.is_empty() || self.wanted.len() + MAX_ITEMS > MAX_BACKLOG;
        if self.streaming == Streaming::No && self.wanted.len() > MAX_WANTED && explored {
            self.streaming = if set.len() < self.wanted.len() {
                Streaming::At(Stream::Start)
            } else {
                Streaming::Over
            };
        }
        self.queue.sort_by_key(|r| r.start);
        if self.queue.len() > MAX_QUEUED {
            let tail = self.queue.split_off(MAX_QUEUED - 1);
            if let (Some(first), Some(last)) = (tail.first(), tail.last()) {
                self.queue.push(Range {
                    start: first.start,
                    end: last.end,
                });
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::identity::{PublicKey, SecretKey};
    use crate::network::SyncResponse;
    use crate::network::protocol::{
        MAX_HONEST_REQUEST_BYTES, MAX_RANGE_ANSWERS_BYTES, SyncFrame, encode_sync_frame,
    };

    static EMPTY_RESPONSE: LazyLock<Vec<u8>> = LazyLock::new(|| {
        encode_sync_frame(&SyncFrame::Response(SyncResponse::default())).expect("encodes")
    });

    static AUTHORS: LazyLock<Vec<PublicKey>> = LazyLock::new(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(31);
        (0..31)
            .map(|_| SecretKey::generate(&mut rng).public())
            .collect()
    });

    /// The `i`th log: one of 31 authors, and an incarnation spread over the `u32`s.
    fn log(i: u32) -> LogId {
        LogId {
            author: AUTHORS[(i % 31) as usize],
            incarnation: i.wrapping_mul(0x9e37_79b1),
        }
    }

    fn tip(n: u64) -> Option<EntryHash> {
        Some(EntryHash(*blake3::hash(&n.to_be_bytes()).as_bytes()))
    }

    /// `n` logs, each at seq 3.
    fn set_of(n: u32) -> Set {
        let mut set = Set::default();
        for i in 0..n {
            set.insert(log(i), 3, tip(u64::from(i)), false);
        }
        set
    }

    /// What one pull of `theirs` into `mine` finds: the logs it wanted, and the rounds it
    /// took. Each wanted log is served whole, as `theirs` holds it. Checks every message
    /// and the session's state against their bounds on the way.
    fn pull(mine: &Set, theirs: &Set) -> (BTreeSet<Key>, usize) {
        let mut mine = mine.clone();
        let mut session = Session::new();
        let (mut found, mut rounds) = (BTreeSet::new(), 0);
        let mut answers = Vec::new();
        loop {
            session
                .receive(&mine, &answers, true)
                .expect("honest answers");
            assert!(session.queue.len() <= MAX_QUEUED && session.wanted.len() <= MAX_BACKLOG);
            assert!(
                session
                    .queue
                    .windows(2)
                    .all(|w| w[0].end.is_some_and(|e| e <= w[1].start))
            );
            let Some(ask) = session.ask(&mine) else {
                break;
            };
            rounds += 1;
            assert!(rounds <= 2_000, "no end in sight");
            assert!(ask.ranges.len() <= MAX_ASKED && ask.wanted.len() <= MAX_WANTED);
            let request = crate::service::sync::request_of(ask.clone());
            let frame = encode_sync_frame(&SyncFrame::Request(request)).expect("encodes");
            assert!(frame.len() <= MAX_HONEST_REQUEST_BYTES, "{}", frame.len());
            answers = theirs.answer(&ask.ranges);
            let response = SyncResponse {
                ranges: answers.clone(),
                ..SyncResponse::default()
            };
            let frame = encode_sync_frame(&SyncFrame::Response(response)).expect("encodes");
            assert!(frame.len() - EMPTY_RESPONSE.len() <= MAX_RANGE_ANSWERS_BYTES);
            session.check(&answers).expect("honest answers pass");
            for a in &answers {
                match &a.body {
                    Body::Items(items) => assert!(items.len() <= MAX_ITEMS),
                    Body::Parts(parts) => assert!((2..=PARTS).contains(&parts.len())),
                }
            }
            if ask.stream.is_some() {
                // The responder streams all it holds in one answer.
                for t in theirs.items(&Range::ALL) {
                    if t.wanted_over(&mine.item(&t.log)) {
                        found.insert(t.log);
                        let (log, _) = theirs.log(&t.log).expect("theirs");
                        mine.insert(log, t.seq, Some(EntryHash(t.tip)), t.proven);
                    }
                }
                session.streamed(None);
                continue;
            }
            for wanted in &ask.wanted {
                found.insert(wanted.log);
                let (log, t) = theirs.log(&wanted.log).expect("wanted logs are theirs");
                let proven = t.proven || wanted.proven;
                mine.insert(log, t.seq, Some(EntryHash(t.tip)), proven);
            }
        }
        (found, rounds)
    }

    /// The logs `mine` wants from `theirs`, found by looking at every one.
    fn differing(mine: &Set, theirs: &Set) -> BTreeSet<Key> {
        theirs
            .items(&Range::ALL)
            .into_iter()
            .filter(|t| t.wanted_over(&mine.item(&t.log)))
            .map(|t| t.log)
            .collect()
    }

    /// Rounds a pull may take: a few to descend the ranges (a factor 16 a round), then the
    /// differing ranges of at most `MAX_ITEMS` logs (at least half as many when split)
    /// `MAX_ASKED` at a time, then the differing logs `MAX_WANTED` at a time.
    fn round_bound(logs: usize, differing: usize) -> usize {
        let mut depth = 1;
        let mut span = MAX_ITEMS;
        while span < logs {
            span *= PARTS;
            depth += 1;
        }
        let leaves = differing.min(2 * logs / MAX_ITEMS + 1);
        2 * depth + 2 + leaves.div_ceil(MAX_ASKED) + differing.div_ceil(MAX_WANTED)
    }

    #[test]
    fn a_session_lacking_more_logs_than_a_request_names_streams_once_then_reconciles_again() {
        let theirs = set_of(2_000);
        let mut mine = Set::default();
        let mut session = Session::new();
        let mut answers = Vec::new();
        let mut rounds = 0;
        let first = loop {
            session.receive(&mine, &answers, true).expect("honest");
            let ask = session.ask(&mine).expect("the peer holds more");
            if ask.stream.is_some() {
                break ask;
            }
            rounds += 1;
            assert!(rounds < 10, "no stream after {rounds} rounds");
            answers = theirs.answer(&ask.ranges);
        };
        assert!(session.is_streaming());
        assert_eq!(first.stream, Some(Stream::Start));
        assert!(first.ranges.is_empty() && first.wanted.is_empty());
        // The responder goes on from where its answer says, asked nothing else.
        session.streamed(Some(7_000));
        session.receive(&mine, &[], false).expect("honest");
        let next = session.ask(&mine).expect("more to stream");
        assert_eq!(next.stream, Some(Stream::From(7_000)));
        assert!(next.ranges.is_empty() && next.wanted.is_empty());
        // The stream brought everything: a new reconciliation finds nothing more, and the
        // session never streams twice.
        for t in theirs.items(&Range::ALL) {
            let (log, _) = theirs.log(&t.log).expect("theirs");
            mine.insert(log, t.seq, Some(EntryHash(t.tip)), t.proven);
        }
        session.streamed(None);
        assert!(!session.is_streaming());
        session.receive(&mine, &[], true).expect("honest");
        let again = session.ask(&mine).expect("a new reconciliation");
        assert_eq!((again.stream, again.ranges.len()), (None, 1));
        assert!(theirs.answer(&again.ranges).is_empty());
        session
            .receive(&mine, &theirs.answer(&again.ranges), true)
            .expect("honest");
        assert!(session.ask(&mine).is_none());
        // A pull that ended in the middle of a stream leaves its place to the next one.
        let mut resumed = Session::resume(7_000);
        assert_eq!(resumed.stream_position(), Some(7_000));
        let ask = resumed.ask(&Set::default()).expect("a stream request");
        assert_eq!(ask.stream, Some(Stream::From(7_000)));
    }

    #[test]
    fn a_session_holding_more_logs_than_it_wants_asks_for_them_by_name() {
        let theirs = set_of(3_000);
        let mut mine = set_of(2_000);
        // The first 600 logs moved on at the peer.
        for i in 0..600 {
            mine.insert(log(i), 2, tip(u64::from(i) + 10_000), false);
        }
        let mut session = Session::new();
        let mut answers = Vec::new();
        for _ in 0..20 {
            session.receive(&mine, &answers, false).expect("honest");
            let Some(ask) = session.ask(&mine) else { break };
            assert_eq!(ask.stream, None);
            answers = theirs.answer(&ask.ranges);
        }
        assert!(session.wanted.len() > MAX_WANTED);
    }

    #[test]
    fn keys_sort_as_log_ids() {
        let mut logs: Vec<LogId> = (0..500).map(log).collect();
        let mut keys: Vec<Key> = logs.iter().map(Key::of).collect();
        logs.sort();
        keys.sort();
        assert_eq!(keys, logs.iter().map(Key::of).collect::<Vec<_>>());
    }

    #[test]
    fn fingerprints_add_up_over_ranges_and_empty_ranges_have_none() {
        let set = set_of(1_000);
        let all = set.fingerprint(&Range::ALL);
        assert_eq!(all.count, 1_000);
        let middle = set.items(&Range::ALL)[400].log;
        let low = Range {
            start: Key::MIN,
            end: Some(middle),
        };
        let high = Range {
            start: middle,
            end: None,
        };
        let (a, b) = (set.fingerprint(&low), set.fingerprint(&high));
        assert_eq!((a.count, b.count), (400, 600));
        let mut xor = a.xor;
        xor.iter_mut().zip(b.xor).for_each(|(x, y)| *x ^= y);
        assert_eq!(xor, all.xor);
        // A range that ends where it starts, or before, is empty (and does not panic).
        for end in [middle, Key::MIN] {
            let empty = Range {
                start: middle,
                end: Some(end),
            };
            assert_eq!(set.fingerprint(&empty), Fingerprint::default());
            assert!(set.items(&empty).is_empty());
        }
        // A log at seq 0 without proof is not held; one cut before its first entry is.
        let mut other = set.clone();
        other.insert(log(5_000), 0, None, false);
        assert_eq!(other.fingerprint(&Range::ALL), all);
        other.prove(log(5_000));
        assert_eq!(other.fingerprint(&Range::ALL).count, 1_001);
    }

    #[test]
    fn a_split_has_equal_parts_that_cover_the_range() {
        let set = set_of(1_000);
        let parts = set.split(&Range::ALL);
        assert_eq!(parts.len(), PARTS);
        assert_eq!(parts[0].start, Key::MIN);
        let counts: Vec<u64> = parts.iter().map(|p| p.fingerprint.count).collect();
        assert_eq!(counts.iter().sum::<u64>(), 1_000);
        assert!(counts.iter().all(|c| (62..=63).contains(c)), "{counts:?}");
        for (i, p) in parts.iter().enumerate() {
            let range = Range {
                start: p.start,
                end: parts.get(i + 1).map(|n| n.start),
            };
            assert_eq!(set.fingerprint(&range), p.fingerprint);
        }
        // Fewer parts when fewer make parts of at most `MAX_ITEMS`.
        assert_eq!(set_of(3).split(&Range::ALL).len(), 2);
        assert_eq!(set_of(200).split(&Range::ALL).len(), 4);
        assert_eq!(set_of(5_000).split(&Range::ALL).len(), PARTS);
    }

    #[test]
    fn a_responder_answers_only_differing_ranges_with_items_or_parts() {
        let (small, large) = (set_of(MAX_ITEMS as u32), set_of(1_000));
        let ask = |set: &Set| Asked {
            range: Range::ALL,
            fingerprint: set.fingerprint(&Range::ALL),
        };
        assert!(large.answer(&[ask(&large)]).is_empty());
        let answers = small.answer(&[ask(&large), ask(&small)]);
        assert_eq!(answers.len(), 1);
        assert!(matches!(&answers[0].body, Body::Items(i) if i.len() == MAX_ITEMS));
        let answers = large.answer(&[ask(&small)]);
        assert!(matches!(&answers[0].body, Body::Parts(p) if p.len() == PARTS));
        // No more ranges are answered than a request may ask, and none after one that
        // overlaps or comes before those asked earlier.
        let many: Vec<Asked> = (0..3 * MAX_ASKED as u32)
            .map(|i| Asked {
                range: Range {
                    start: Key::of(&log(i)),
                    end: Some(Key::of(&log(i))),
                },
                fingerprint: Fingerprint {
                    count: 1,
                    ..Fingerprint::default()
                },
            })
            .collect();
        let mut sorted = many.clone();
        sorted.sort_by_key(|a| a.range.start);
        assert_eq!(large.answer(&sorted).len(), MAX_ASKED);
        assert!(large.answer(&many).len() < MAX_ASKED);
        assert_eq!(large.answer(&vec![ask(&Set::default()); 3]).len(), 1);
    }

    #[test]
    fn two_nodes_in_sync_settle_it_in_one_small_round_however_many_logs() {
        for n in [0, 10, 10_000, 100_000] {
            let set = set_of(n);
            let mut session = Session::new();
            let ask = session.ask(&set).expect("a first question");
            assert_eq!((ask.ranges.len(), ask.wanted.len()), (1, 0), "{n} logs");
            let answers = set.clone().answer(&ask.ranges);
            assert!(answers.is_empty());
            assert_eq!(session.receive(&set, &answers, true), Ok(0));
            assert!(session.ask(&set).is_none(), "{n} logs");
        }
    }

    #[test]
    fn a_node_wants_what_it_lacks_is_behind_on_forked_from_or_has_no_proof_of() {
        let theirs = set_of(5_000);
        let mut mine = theirs.clone();
        mine.insert(log(1), 2, tip(99), false); // behind
        mine.insert(log(2), 0, None, false); // lacking
        mine.insert(log(3), 3, tip(98), false); // another entry at the same seq
        mine.insert(log(4), 4, tip(97), false); // ahead: the peer's business
        mine.insert(log(6_000), 1, tip(96), false); // the peer lacks it
        let mut theirs = theirs;
        theirs.prove(log(5)); // a proof we lack
        let expected: BTreeSet<Key> = [1, 2, 3, 5].map(|i| Key::of(&log(i))).into();
        assert_eq!(differing(&mine, &theirs), expected);
        let (found, rounds) = pull(&mine, &theirs);
        assert_eq!(found, expected);
        assert!(rounds <= round_bound(5_000, 4), "{rounds} rounds");
        // The other way, only the log we are ahead on and the one the peer lacks.
        let (found, _) = pull(&theirs, &mine);
        let expected: BTreeSet<Key> = [3, 4, 6_000].map(|i| Key::of(&log(i))).into();
        assert_eq!(found, expected);
    }

    #[test]
    fn a_fresh_node_finds_every_log_within_bounded_rounds() {
        let theirs = set_of(10_000);
        let (found, rounds) = pull(&Set::default(), &theirs);
        assert_eq!(found.len(), 10_000);
        assert!(rounds <= round_bound(10_000, 10_000), "{rounds} rounds");
        // With nothing to send back, the peer finds nothing.
        assert_eq!(pull(&theirs, &Set::default()), (BTreeSet::new(), 1));
    }

    #[test]
    fn a_full_backlog_holds_range_questions_back_and_what_does_not_fit_is_asked_again() {
        let theirs = set_of(10_000);
        let mine = Set::default();
        let mut session = Session::new();
        let mut answers = Vec::new();
        let (mut full, mut by_name) = (false, false);
        // The wanted logs are never served, so they stay wanted, and the peer does not
        // stream, so they are asked for by name.
        for _ in 0..60 {
            session.receive(&mine, &answers, false).expect("honest");
            assert!(session.wanted.len() <= MAX_BACKLOG);
            let Some(ask) = session.ask(&mine) else { break };
            if ask.stream.is_some() {
                session.streamed(None);
                by_name = true;
                answers = Vec::new();
                continue;
            }
            if !by_name {
                // Undecided: more logs are wanted than one request names, and none is.
                assert!(ask.wanted.is_empty() || session.wanted.len() <= MAX_WANTED);
                answers = theirs.answer(&ask.ranges);
                continue;
            }
            assert_eq!(ask.wanted.len(), session.wanted.len().min(MAX_WANTED));
            if session.wanted.len() == MAX_BACKLOG {
                full = true;
                assert!(
                    ask.ranges.len() <= MAX_WANTED / MAX_ITEMS,
                    "{}",
                    ask.ranges.len()
                );
            }
            answers = theirs.answer(&ask.ranges);
        }
        assert!(full && !session.queue.is_empty());
        // Served, every log is found.
        let (found, _) = pull(&mine, &theirs);
        assert_eq!(found.len(), 10_000);
    }

    #[test]
    fn malformed_answers_are_refused() {
        let theirs = set_of(1_000);
        let mut session = Session::new();
        let mine = Set::default();
        let ask = session.ask(&mine).expect("asks");
        let good = theirs.answer(&ask.ranges);
        assert_eq!(session.check(&good), Ok(()));
        let Body::Parts(parts) = &good[0].body else {
            panic!("a split was expected")
        };
        let item = Item::absent(Key::of(&log(1)));
        let with = |index: u32, body: Body| vec![Answer { index, body }];
        let cases = [
            (with(1, Body::Items(Vec::new())), Error::Unasked(1)),
            ([good.clone(), good.clone()].concat(), Error::Unasked(0)),
            (
                with(0, Body::Items(vec![item; MAX_ITEMS + 1])),
                Error::TooManyItems(MAX_ITEMS + 1),
            ),
            (with(0, Body::Items(vec![item; 2])), Error::OutOfRange),
            (with(0, Body::Parts(parts[..1].to_vec())), Error::Parts(1)),
            (
                with(0, Body::Parts([parts.clone(), parts.clone()].concat())),
                Error::Parts(2 * PARTS),
            ),
            (with(0, Body::Parts(parts[1..].to_vec())), Error::OutOfRange),
            (
                with(0, Body::Parts(parts.iter().rev().copied().collect())),
                Error::OutOfRange,
            ),
        ];
        for (answers, error) in cases {
            assert_eq!(session.check(&answers), Err(error.clone()));
            assert_eq!(session.clone().receive(&mine, &answers, true), Err(error));
        }
        // An answer outside a narrower range.
        let mut narrow = Session {
            queue: vec![Range {
                start: Key::of(&log(7)),
                end: None,
            }],
            ..Session::new()
        };
        narrow.ask(&mine);
        let below = Item::absent(Key::MIN);
        assert_eq!(
            narrow.check(&with(0, Body::Items(vec![below]))),
            Err(Error::OutOfRange)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 64,
            rng_seed: RngSeed::Fixed(0x0dd5_10b5),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Two random sets: a pull finds exactly the logs that differ, within bounded
        /// rounds, and every message stays within its bounds (checked by `pull`).
        #[test]
        fn two_random_sets_reconcile_to_exactly_their_differences(
            logs in 0u32..4_000,
            differ in 0.0f64..1.0,
            seed in any::<u64>(),
        ) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let (mut mine, mut theirs) = (Set::default(), Set::default());
            for i in 0..logs {
                let seq = rng.random_range(1..6);
                let base = rng.random::<u64>();
                let both = |set: &mut Set| set.insert(log(i), seq, tip(base), false);
                match (rng.random_bool(differ), rng.random_range(0..6)) {
                    (false, _) => {
                        both(&mut mine);
                        both(&mut theirs);
                    }
                    (true, 0) => both(&mut mine),
                    (true, 1) => both(&mut theirs),
                    (true, 2) => {
                        both(&mut mine);
                        theirs.insert(log(i), seq + 1, tip(base + 1), false);
                    }
                    (true, 3) => {
                        both(&mut theirs);
                        mine.insert(log(i), seq + 1, tip(base + 1), false);
                    }
                    (true, 4) => {
                        both(&mut mine);
                        theirs.insert(log(i), seq, tip(base + 1), false);
                    }
                    (true, _) => {
                        both(&mut mine);
                        both(&mut theirs);
                        theirs.prove(log(i));
                    }
                }
            }
            let expected = differing(&mine, &theirs);
            let (found, rounds) = pull(&mine, &theirs);
            prop_assert_eq!(&found, &expected);
            let bound = round_bound(mine.len().max(theirs.len()), expected.len());
            prop_assert!(rounds <= bound, "{} rounds, bound {}", rounds, bound);
        }
    }
}
