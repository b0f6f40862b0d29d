//! Shared fixtures of the integration tests: a five-participant testnet on a fixed clock,
//! deterministic ULIDs, the typed commands, hand-made (unchecked) entries, and snapshots
//! of what a replica holds.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use automerge::transaction::Transaction;
use automerge::{Automerge, ChangeHash, ObjType, ROOT, ReadDoc, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use spoc_node::charter::Charter;
use spoc_node::docs::command::{Command, Writer};
use spoc_node::docs::{DocId, rules, view};
use spoc_node::identity::{Scope, SecretKey};
use spoc_node::log::{Entry, LogId, SignedEntry};
use spoc_node::replica::{Limits, Replica, Report};
use spoc_node::testnet;
use time::Date;
use time::macros::date;

/// The day every test runs on: in Ireland's Presidency (2026-H2).
pub const TODAY: Date = date!(2026 - 12 - 01);
/// Midnight UTC at the start of `TODAY`, in milliseconds.
pub const NOW: u64 = 1_796_083_200_000;
/// The participants: four member states, then an observer.
pub const CODES: [&str; 5] = ["IE", "LT", "EL", "FI", "EUROPOL"];
/// The training core group.
pub const CORE: [&str; 2] = ["IE", "LT"];
pub const MINUTE: u64 = 60_000;

/// A testnet: its charter and every participant's national key.
#[derive(Debug)]
pub struct Net {
    pub charter: Arc<Charter>,
    pub keys: BTreeMap<String, SecretKey>,
}

impl Net {
    pub fn new(seed: u64) -> Net {
        assert_eq!(
            NOW,
            TODAY.midnight().assume_utc().unix_timestamp() as u64 * 1000
        );
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (charter, keys) = testnet::fixture(&CODES, &CORE, TODAY, &mut rng).expect("fixture");
        Net {
            charter: Arc::new(charter),
            keys,
        }
    }

    pub fn key(&self, code: &str) -> &SecretKey {
        &self.keys[code]
    }

    pub fn log(&self, code: &str, incarnation: u32) -> LogId {
        LogId {
            author: self.key(code).public(),
            incarnation,
        }
    }

    /// What this network's entries are signed for.
    pub fn scope(&self) -> Scope {
        self.charter.scope()
    }

    /// An empty replica with default limits.
    pub fn replica(&self) -> Replica {
        Replica::new(self.charter.clone(), Limits::default())
    }
}

/// Deterministic ULIDs: the clock's millisecond, then seeded randomness.
#[derive(Debug)]
pub struct Ulids(ChaCha20Rng);

impl Ulids {
    pub fn new(seed: u64) -> Ulids {
        Ulids(ChaCha20Rng::seed_from_u64(seed))
    }

    pub fn next(&mut self, now_ms: u64) -> ulid::Ulid {
        ulid::Ulid::from_parts(now_ms, self.0.random::<u128>())
    }
}

/// Prepares a write, ingests it, checks that it was accepted, and returns the entry and
/// the id of the item written.
pub fn write(
    replica: &mut Replica,
    key: &SecretKey,
    incarnation: u32,
    command: &Command,
    now_ms: u64,
    ulid: ulid::Ulid,
) -> (SignedEntry, String) {
    let (entry, item) = replica
        .prepare(key, incarnation, command, now_ms, ulid)
        .unwrap_or_else(|e| panic!("{command:?} was refused: {e}"));
    let report = replica.ingest(vec![entry.clone()]).expect("ingest");
    assert_accepted(&report, 1);
    (entry, item)
}

/// Checks that an ingest accepted `n` entries and refused none.
pub fn assert_accepted(report: &Report, n: usize) {
    assert!(
        report.rejected.is_empty(),
        "rejected: {:?}",
        report.rejected
    );
    assert_eq!(report.accepted.len(), n, "{report:?}");
}

/// Makes one Automerge change on a fork of `base` (or of an empty document) as the actor of
/// `log`, without any rule check, and returns its bytes.
pub fn craft_change(
    base: Option<&Automerge>,
    log: LogId,
    edit: impl FnOnce(&mut Transaction<'_>, &Automerge),
) -> Vec<u8> {
    craft_change_at(base, log, NOW, edit)
}

/// A change that `edit` makes to `base` (or to an empty document), as `log`'s actor, for
/// an entry dated `timestamp_ms`: what a faulty or hostile node could send.
pub fn craft_change_at(
    base: Option<&Automerge>,
    log: LogId,
    timestamp_ms: u64,
    edit: impl FnOnce(&mut Transaction<'_>, &Automerge),
) -> Vec<u8> {
    let empty = Automerge::new();
    let base = base.unwrap_or(&empty);
    let mut fork = base.fork();
    fork.set_actor(log.actor());
    let mut tx = fork.transaction();
    edit(&mut tx, base);
    // A change carries its entry's time.
    let options = automerge::transaction::CommitOptions::default()
        .with_time(spoc_node::log::change_time(timestamp_ms));
    let (hash, _) = tx.commit_with(options);
    assert!(hash.is_some(), "the crafted edit changed nothing");
    fork.get_last_local_change()
        .expect("a local change")
        .bytes()
        .into_owned()
}

/// The unsigned entry that would come next in the author's log in `replica`.
pub fn next_entry(
    replica: &Replica,
    key: &SecretKey,
    incarnation: u32,
    doc: &DocId,
    now_ms: u64,
    change: Vec<u8>,
) -> Entry {
    let log = LogId {
        author: key.public(),
        incarnation,
    };
    let height = replica.heights().get(&log).copied().unwrap_or(0);
    let prev = replica.entry(&log, height).expect("reading an entry");
    Entry {
        network: replica.charter().network.clone(),
        author: key.public(),
        incarnation,
        seq: height + 1,
        prev: prev.as_ref().map(SignedEntry::hash),
        timestamp_ms: next_timestamp(replica, log, now_ms),
        doc: doc.clone(),
        change,
        charter: replica.charter().version,
        flags: 0,
    }
}

/// The timestamp of the next entry of `log` made at `now_ms`: never before its log's last.
pub fn next_timestamp(replica: &Replica, log: LogId, now_ms: u64) -> u64 {
    let height = replica.heights().get(&log).copied().unwrap_or(0);
    let prev = replica.entry(&log, height).expect("reading an entry");
    prev.map_or(now_ms, |p| p.entry.timestamp_ms.max(now_ms))
}

/// Signs, as the next entry of the author's log, a change that `edit` makes to `doc`
/// with no rule check: what a faulty or hostile node could send.
pub fn craft(
    replica: &Replica,
    key: &SecretKey,
    incarnation: u32,
    doc: &DocId,
    now_ms: u64,
    edit: impl FnOnce(&mut Transaction<'_>, &Automerge),
) -> SignedEntry {
    let log = LogId {
        author: key.public(),
        incarnation,
    };
    let timestamp_ms = next_timestamp(replica, log, now_ms);
    let change = craft_change_at(replica.doc(doc), log, timestamp_ms, edit);
    next_entry(replica, key, incarnation, doc, now_ms, change).sign(key, &replica.charter().scope())
}

/// Signs the change that `command` makes, skipping the rule check that `prepare` does.
pub fn craft_command(
    replica: &Replica,
    key: &SecretKey,
    incarnation: u32,
    command: &Command,
    now_ms: u64,
    ulid: ulid::Ulid,
) -> SignedEntry {
    // A key the charter in force no longer names still writes as its state in a crafted
    // entry, as a removed state's node could.
    let code = replica
        .charters()
        .iter()
        .rev()
        .find_map(|c| c.participant_by_key(&key.public()))
        .map_or_else(|| "ZZ".to_owned(), |p| p.code.clone());
    let charter = replica.charter().clone();
    let writer = Writer {
        code: &code,
        now_ms,
        today: rules::date_of_ms(now_ms).expect("a date"),
        charter: &charter,
    };
    let id = command.target(&writer, ulid).expect("a target");
    craft(replica, key, incarnation, &id, now_ms, |tx, doc| {
        command
            .apply(tx, doc, &id, &writer, ulid)
            .unwrap_or_else(|e| panic!("{command:?} cannot be applied: {e}"));
    })
}

/// Re-encodes an entry with one byte of its encoding flipped.
pub fn flip_byte(entry: &SignedEntry, index: usize) -> Vec<u8> {
    let mut bytes = entry.bytes().to_vec();
    bytes[index] ^= 0x01;
    bytes
}

/// Everything a replica's readers see: each document's sorted heads and JSON, and each
/// log's height.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub docs: BTreeMap<String, (Vec<ChangeHash>, serde_json::Value)>,
    pub heights: BTreeMap<LogId, u64>,
}

pub fn state(replica: &Replica) -> State {
    let docs = replica
        .docs()
        .map(|(id, doc)| {
            let mut heads = doc.get_heads();
            heads.sort();
            (id.to_string(), (heads, view::document(id, doc)))
        })
        .collect();
    State {
        docs,
        heights: replica.heights(),
    }
}

/// The document of `id` as JSON, for spot checks.
pub fn json(replica: &Replica, id: &str) -> serde_json::Value {
    let id: DocId = id.parse().expect("a document id");
    view::document(&id, replica.doc(&id).expect("the document"))
}

/// Every entry of `from` that `to` lacks, in log order.
pub fn missing(from: &Replica, to: &Replica) -> Vec<SignedEntry> {
    let heights: HashMap<LogId, u64> = to.heights().into_iter().collect();
    let (entries, more) = from
        .entries_after(&heights, usize::MAX, usize::MAX)
        .expect("reading entries");
    assert!(!more);
    entries
}

/// A root-level string of a document, as the replica holds it.
pub fn root_str(replica: &Replica, id: &DocId, key: &str) -> Option<String> {
    let doc = replica.doc(id)?;
    match doc.get(ROOT, key).ok().flatten() {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            automerge::ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// The keys of a root-level map of a document, as the replica holds it.
pub fn root_keys(replica: &Replica, id: &DocId, map: &str) -> Vec<String> {
    let Some(doc) = replica.doc(id) else {
        return Vec::new();
    };
    match doc.get(ROOT, map).ok().flatten() {
        Some((Value::Object(ObjType::Map), obj)) => doc.keys(&obj).collect(),
        _ => Vec::new(),
    }
}

pub fn convene(title: &str, date: &str) -> Command {
    Command::MeetingConvene {
        title: title.into(),
        date: date.into(),
        venue: "Brussels".into(),
        format: None,
        end_date: None,
        number: None,
    }
}

pub fn report_obstacle(title: &str) -> Command {
    Command::ObstacleReport {
        title: title.into(),
        kind: "legal".into(),
        description: format!("{title}: replies take months"),
        subtype: None,
        instrument: Some("Directive 2014/41/EU".into()),
        article: None,
        channel: None,
        states_concerned: vec!["LT".into()],
        impact: Some(2),
        solution: None,
    }
}

pub fn share_practice(title: &str) -> Command {
    Command::PracticeShare {
        title: title.into(),
        problem: "Requests get lost".into(),
        practice: "A single mailbox per SPOC".into(),
        prerequisites: None,
        results: None,
        transferability: None,
        contact: Some("spoc@example.eu".into()),
        tags: vec!["mailbox".into()],
        related_obstacles: Vec::new(),
    }
}

pub fn set_factsheet(field: &str, value: &str) -> Command {
    Command::FactsheetSet {
        fields: BTreeMap::from([(field.to_owned(), value.to_owned())]),
    }
}

pub fn nominate(title: &str) -> Command {
    Command::TrainingNominate {
        title: title.into(),
        expertise: "cybercrime".into(),
        languages: vec!["en".into()],
    }
}

/// A reference to an agenda item in the minutes of one of Ireland's meetings.
pub fn minutes_ref(ulids: &mut Ulids) -> String {
    let meeting = DocId::new(spoc_node::docs::Collection::Meetings, "IE", ulids.next(NOW));
    format!("{meeting}#IE-{}", ulids.next(NOW))
}
