//! The store keeps what was committed and reports what it cannot trust: ten thousand
//! entries come back as the same documents and heights after a reopen; a flipped byte, a
//! truncated file and a second opener are errors, never panics; an equivocation proof
//! survives a restart; a store of the first format is migrated once and keeps everything.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use spoc_node::docs::command::{Command, Refused};
use spoc_node::docs::{Collection, DocId, view};
use spoc_node::log::{EquivocationProof, Invalid, SignedEntry};
use spoc_node::replica::{Limits, Replica};
use spoc_node::store::{Error, ListFilter, Reader, Store};
use tempfile::TempDir;

const INC: u32 = 1;

/// What the generator has made, by kind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Item {
    Meeting,
    Obstacle,
    Practice,
    Training,
}

/// Makes `n` valid entries: every participant in turn, one second apart, reports, shares,
/// nominates, convenes, comments, endorses, proposes, attends and updates its fact sheet,
/// over a few hundred documents.
fn generate(net: &Net, n: usize, seed: u64) -> Vec<SignedEntry> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut ulids = Ulids::new(seed);
    let mut writer = net.replica();
    let mut items: Vec<(Item, String)> = Vec::new();
    let mut entries = Vec::with_capacity(n);
    let mut turn = 0u64;
    while entries.len() < n {
        turn += 1;
        let code = CODES[(turn % 5) as usize];
        let now = NOW + turn * 1_000;
        let roll: u32 = rng.random_range(0..100);
        // Comment on, endorse or attend one of the recent items.
        let recent = &items[items.len().saturating_sub(40)..];
        let target = (!recent.is_empty()).then(|| &recent[rng.random_range(0..recent.len())]);
        let (command, made) = match (roll, target) {
            (0..3, _) if code == "IE" => (
                convene(&format!("Meeting {turn}"), "2026-12-14"),
                Some(Item::Meeting),
            ),
            (0..3, _) => (
                report_obstacle(&format!("Obstacle {turn}")),
                Some(Item::Obstacle),
            ),
            (3..5, _) => (
                share_practice(&format!("Practice {turn}")),
                Some(Item::Practice),
            ),
            (5..6, _) => (nominate(&format!("Expert {turn}")), Some(Item::Training)),
            (6..12, _) | (_, None) => (set_factsheet("notes", &format!("Notes {turn}")), None),
            (_, Some((Item::Meeting, id))) if roll.is_multiple_of(2) => (
                Command::MeetingPropose {
                    meeting: id.clone(),
                    title: format!("Item {turn}"),
                    description: None,
                },
                None,
            ),
            (_, Some((Item::Meeting, id))) => (
                Command::MeetingAttend {
                    meeting: id.clone(),
                    present: roll.is_multiple_of(3),
                    delegates: Some(turn as u32 % 5),
                },
                None,
            ),
            (_, Some((Item::Obstacle, id))) if roll.is_multiple_of(3) && code != "EUROPOL" => (
                Command::ObstacleEndorse {
                    obstacle: id.clone(),
                    stance: "support".into(),
                    note: Some(format!("Turn {turn}")),
                },
                None,
            ),
            (_, Some((Item::Obstacle, id))) => (
                Command::ObstacleComment {
                    obstacle: id.clone(),
                    text: format!("Comment {turn}"),
                },
                None,
            ),
            (_, Some((Item::Practice, id))) => (
                Command::PracticeComment {
                    practice: id.clone(),
                    text: format!("Comment {turn}"),
                },
                None,
            ),
            (_, Some((Item::Training, id))) if CORE.contains(&code) => (
                Command::TrainingAssess {
                    item: id.clone(),
                    verdict: "assessed".into(),
                    note: Some(format!("Turn {turn}")),
                },
                None,
            ),
            (_, Some(_)) => (
                set_factsheet("contacts", &format!("desk-{turn}@example.eu")),
                None,
            ),
        };
        match writer.prepare(net.key(code), INC, &command, now, ulids.next(now)) {
            Ok((entry, id)) => {
                let report = writer.ingest_verified(vec![entry.clone()]).expect("ingest");
                assert_accepted(&report, 1);
                if let Some(kind) = made {
                    items.push((kind, id));
                }
                entries.push(entry);
            }
            Err(Refused::Invalid(why)) if why == "nothing to change" => {}
            Err(e) => panic!("{code} could not write {command:?}: {e}"),
        }
    }
    entries
}

fn store_path(dir: &TempDir) -> PathBuf {
    dir.path().join("spoc.redb")
}

/// Ingests `entries` in batches of `batch` into `replica`, committing each report.
/// Signatures are checked when `verify` is set.
fn ingest_and_commit<B: spoc_node::replica::Backing>(
    store: &Store,
    replica: &mut Replica<B>,
    entries: &[SignedEntry],
    batch: usize,
    verify: bool,
) {
    for chunk in entries.chunks(batch) {
        let report = if verify {
            replica.ingest(chunk.to_vec())
        } else {
            replica.ingest_verified(chunk.to_vec())
        }
        .expect("ingest");
        assert_accepted(&report, chunk.len());
        store.commit(replica, &report).expect("commit");
        replica.flush();
    }
}

/// Opens and loads a store, then reads everything through it as use would: every log's
/// entries, every listed document and every document itself. Returns what a reader sees,
/// or the first error: a store is trusted only for what its reads prove.
fn load(path: &Path, net: &Net) -> Result<State, Error> {
    let store = Store::open(path)?;
    let mut replica = store.load(net.charter.clone(), Limits::default(), &mut |_, _, _| {})?;
    used_state(&store, &mut replica)
}

fn used_state(store: &Store, replica: &mut Replica<Reader>) -> Result<State, Error> {
    let corrupt = |e: spoc_node::replica::Error| Error::Corrupt(e.to_string());
    for log in replica.heights().into_keys() {
        let entries = replica.log_entries(&log).map_err(corrupt)?;
        assert_eq!(entries.len() as u64, replica.heights()[&log]);
    }
    let mut docs = std::collections::BTreeMap::new();
    for collection in Collection::ALL {
        let mut cursor = None;
        loop {
            let page =
                store
                    .reader()
                    .list(collection, &ListFilter::default(), cursor.as_deref(), 100)?;
            for item in &page.items {
                let id: DocId = item["id"].as_str().expect("an id").parse().expect("an id");
                let doc = replica
                    .load_doc(&id)
                    .map_err(corrupt)?
                    .expect("a listed document");
                let mut heads = doc.get_heads();
                heads.sort();
                docs.insert(id.to_string(), (heads, view::document(&id, doc)));
            }
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
    }
    Ok(State {
        docs,
        heights: replica.heights(),
    })
}

/// A small store of `n` entries, written in one commit, and its state.
fn small_store(net: &Net, n: usize) -> (TempDir, Vec<SignedEntry>, State) {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = generate(net, n, 3);
    let store = Store::open(&store_path(&dir)).expect("open");
    let mut replica = net.replica();
    ingest_and_commit(&store, &mut replica, &entries, n, true);
    (dir, entries, state(&replica))
}

/// Every offset at which `needle` occurs in `haystack`.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Flips one byte at `offset` into every copy of `needle` in the file, and returns how
/// many copies there were.
fn flip_in_file(path: &Path, needle: &[u8], offset: usize) -> usize {
    let mut bytes = std::fs::read(path).expect("read");
    let found = find_all(&bytes, needle);
    for at in &found {
        bytes[at + offset] ^= 0x10;
    }
    std::fs::write(path, bytes).expect("write");
    found.len()
}

#[test]
fn ten_thousand_entries_come_back_the_same_after_a_reopen() {
    let net = Net::new(1);
    let entries = generate(&net, 10_000, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(&dir);
    let expected = {
        let store = Store::open(&path).expect("open");
        let mut node = net.replica();
        // The generator signed these entries itself, and `load` checks every signature
        // again; skipping the check here saves most of a minute in a debug build.
        ingest_and_commit(&store, &mut node, &entries, 500, false);
        assert_eq!(node.entry_count(), 10_000);
        assert_eq!(store.raw_entry_count().unwrap(), 10_000);
        state(&node)
    };
    assert!(
        expected.docs.len() > 200,
        "{} documents",
        expected.docs.len()
    );
    assert_eq!(expected.heights.len(), CODES.len());

    let store = Store::open(&path).expect("reopen");
    let mut replica = store
        .load(net.charter.clone(), Limits::default(), &mut |_, _, _| {})
        .expect("load");
    assert_eq!(replica.entry_count(), 10_000);
    assert_eq!(replica.pending_count(), 0);
    // The start read no document: they come from the store when they are used.
    assert_eq!(replica.cached_docs(), 0);
    assert_eq!(used_state(&store, &mut replica).expect("reads"), expected);
    let mut steps: Vec<(String, usize, usize)> = Vec::new();
    let (entries, docs) = store
        .verify(net.charter.clone(), &mut |what, done, total| {
            steps.push((what.to_owned(), done, total))
        })
        .expect("verify");
    assert_eq!((entries, docs), (10_000, expected.docs.len()));
    assert!(
        steps.contains(&("checking entries and rules".to_owned(), 10_000, 10_000)),
        "the full check did not finish: {steps:?}"
    );
}

#[test]
fn a_reopened_store_takes_new_writes_and_keeps_them() {
    let net = Net::new(2);
    let entries = generate(&net, 300, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(&dir);
    {
        let store = Store::open(&path).expect("open");
        let mut node = net.replica();
        ingest_and_commit(&store, &mut node, &entries[..200], 50, true);
    }
    let expected = {
        let store = Store::open(&path).expect("reopen");
        let mut node = store
            .load(net.charter.clone(), Limits::default(), &mut |_, _, _| {})
            .expect("load");
        assert_eq!(node.entry_count(), 200);
        ingest_and_commit(&store, &mut node, &entries[200..], 50, true);
        // Entries already stored are duplicates, and committing them changes nothing.
        let report = node.ingest(entries[..10].to_vec()).unwrap();
        assert_eq!(report.duplicates, 10);
        store.commit(&node, &report).unwrap();
        node.flush();
        used_state(&store, &mut node).unwrap()
    };
    assert_eq!(load(&path, &net).expect("load"), expected);
}

#[test]
fn a_flipped_byte_in_a_stored_signature_is_detected() {
    let net = Net::new(3);
    for (case, pick) in [
        ("the last entry of a log", true),
        ("an entry in the middle", false),
    ] {
        let (dir, entries, _) = small_store(&net, 40);
        let path = store_path(&dir);
        let last_seq = |e: &SignedEntry| {
            entries
                .iter()
                .filter(|o| o.entry.log() == e.entry.log())
                .map(|o| o.entry.seq)
                .max()
        };
        let victim = entries
            .iter()
            .find(|e| (Some(e.entry.seq) == last_seq(e)) == pick && e.entry.seq > 1)
            .expect("an entry");
        let copies = flip_in_file(&path, &victim.signature.0, 17);
        assert!(copies >= 1, "{case}: the signature is not in the file");
        let result = std::panic::catch_unwind(|| load(&path, &net));
        let err = result.expect("no panic").expect_err(case);
        assert!(matches!(err, Error::Corrupt(_)), "{case}: {err:?}");
        // The row no longer matches the seal it was written with.
        let message = err.to_string();
        assert!(message.starts_with("store is corrupt: "), "{message}");
        assert!(
            message.contains("entries row") && message.contains("does not match its seal"),
            "{case}: {message}"
        );
    }
}

#[test]
fn a_flipped_byte_in_a_stored_body_or_snapshot_is_detected() {
    let net = Net::new(4);
    let (dir, entries, _) = small_store(&net, 40);
    let path = store_path(&dir);
    // The change bytes of an entry: the entry no longer matches its signature and hash.
    let victim = &entries[20];
    let change = &victim.entry.change;
    assert!(flip_in_file(&path, change, change.len() / 2) >= 1);
    let err = load(&path, &net).expect_err("a flipped body byte");
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");

    // A snapshot whose heads no longer match the entries.
    let (dir, _, state) = small_store(&net, 40);
    let path = store_path(&dir);
    let doc = {
        let store = Store::open(&path).expect("open");
        let mut replica = store
            .load(net.charter.clone(), Limits::default(), &mut |_, _, _| {})
            .expect("load");
        let id: DocId = state
            .docs
            .keys()
            .next()
            .expect("a document")
            .parse()
            .unwrap();
        // The store saves a document whole once a compaction finds it long enough;
        // this one is saved now, so that its snapshot is in the file.
        store.save_whole(&id).expect("a snapshot");
        replica.load_doc(&id).unwrap().expect("the document").save()
    };
    assert!(state.docs.len() > 1);
    let found = flip_in_file(&path, &doc[doc.len() - 40..], 10);
    assert!(found >= 1, "the snapshot is not in the file");
    let result = std::panic::catch_unwind(|| load(&path, &net));
    let err = result
        .expect("no panic")
        .expect_err("a flipped snapshot byte");
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("store is corrupt: ")
            && message.contains("a snapshots row")
            && message.contains("does not match its seal"),
        "{message}"
    );
}

#[test]
fn a_truncated_file_is_an_error_not_a_panic() {
    let net = Net::new(5);
    for fraction in [2, 4, 10] {
        let (dir, _, _) = small_store(&net, 60);
        let path = store_path(&dir);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / fraction).unwrap();
        drop(file);
        let result = std::panic::catch_unwind(|| load(&path, &net));
        let err = result
            .expect("no panic")
            .expect_err("a truncated store must not load");
        assert!(
            matches!(err, Error::Open { .. } | Error::Corrupt(_) | Error::Db(_)),
            "1/{fraction}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()) || message.contains("corrupt"),
            "{message}"
        );
    }
}

#[test]
fn a_store_in_use_is_refused() {
    let net = Net::new(6);
    let (dir, _, expected) = small_store(&net, 10);
    let path = store_path(&dir);
    let first = Store::open(&path).expect("open");
    let err = Store::open(&path).expect_err("a second opener");
    assert!(matches!(err, Error::InUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("store {} is in use by another process", path.display())
    );
    // The holder is unaffected, and the store opens again once it lets go.
    let mut replica = first
        .load(net.charter.clone(), Limits::default(), &mut |_, _, _| {})
        .unwrap();
    assert_eq!(used_state(&first, &mut replica).unwrap(), expected);
    drop(replica);
    drop(first);
    assert_eq!(load(&path, &net).expect("reopen"), expected);
}

#[test]
fn an_equivocation_proof_survives_a_reopen() {
    let net = Net::new(7);
    let mut ulids = Ulids::new(7);
    let past = generate(&net, 30, 7);
    let mut fork_at = |text: &str| {
        let mut node = net.replica();
        node.ingest(past.clone()).unwrap();
        let command = set_factsheet("notes", text);
        write(
            &mut node,
            net.key("LT"),
            INC,
            &command,
            NOW + 3_600_000,
            ulids.next(NOW),
        )
    };
    let (a, _) = fork_at("branch a");
    let (b, _) = fork_at("branch b");
    assert_eq!(a.entry.seq, b.entry.seq);
    let seq = a.entry.seq;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(&dir);
    let (expected, proof) = {
        let store = Store::open(&path).expect("open");
        let mut node = net.replica();
        ingest_and_commit(&store, &mut node, &past, 10, true);
        ingest_and_commit(&store, &mut node, std::slice::from_ref(&a), 1, true);
        let report = node.ingest(vec![b.clone()]).unwrap();
        assert!(report.rebuilt);
        let proof: EquivocationProof = report.new_proofs[0].clone();
        store.commit(&node, &report).unwrap();
        assert_eq!(node.heights()[&net.log("LT", INC)], seq - 1);
        (state(&node), proof)
    };

    assert_eq!(load(&path, &net).expect("load"), expected);
    let store = Store::open(&path).expect("open");
    let mut replica = store
        .load(net.charter.clone(), Limits::default(), &mut |_, _, _| {})
        .expect("load");
    assert_eq!(replica.proofs().cloned().collect::<Vec<_>>(), vec![proof]);
    assert_eq!(replica.heights()[&net.log("LT", INC)], seq - 1);
    for e in [a, b] {
        let report = replica.ingest(vec![e.clone()]).unwrap();
        assert_eq!(
            report.rejected,
            vec![(e.hash(), Invalid::Equivocated { seq })]
        );
    }
    let refused = replica
        .prepare(
            net.key("LT"),
            INC,
            &set_factsheet("notes", "c"),
            NOW + 3_600_000,
            ulids.next(NOW),
        )
        .unwrap_err();
    assert!(refused.to_string().contains("cut by an equivocation proof"));
}

/// Every filter of a list, and paging, give exactly what filtering every summary gives.
#[test]
fn lists_filter_and_page_from_their_indexes() {
    let net = Net::new(8);
    let (dir, _, state) = small_store(&net, 300);
    let store = Store::open(&store_path(&dir)).expect("open");
    let all: Vec<serde_json::Value> = {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .reader()
                .list(
                    Collection::Obstacles,
                    &ListFilter::default(),
                    cursor.as_deref(),
                    2,
                )
                .expect("a page");
            assert!(page.items.len() <= 2);
            all.extend(page.items);
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        all
    };
    let obstacles = state
        .docs
        .keys()
        .filter(|k| k.starts_with("obstacles/"))
        .count();
    assert!(obstacles >= 5, "{obstacles} obstacles");
    assert_eq!(all.len(), obstacles);
    let filters = [
        ListFilter {
            state: Some("LT".into()),
            ..ListFilter::default()
        },
        ListFilter {
            status: Some("reported".into()),
            ..ListFilter::default()
        },
        ListFilter {
            kind: Some("legal".into()),
            ..ListFilter::default()
        },
        ListFilter {
            state: Some("EL".into()),
            kind: Some("legal".into()),
            ..ListFilter::default()
        },
        ListFilter {
            since_ms: Some(0),
            ..ListFilter::default()
        },
    ];
    for filter in filters {
        let mut got = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .reader()
                .list(Collection::Obstacles, &filter, cursor.as_deref(), 3)
                .expect("a page");
            got.extend(page.items);
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        let mut want: Vec<&serde_json::Value> = all
            .iter()
            .filter(|o| {
                let id = o["id"].as_str().unwrap_or_default();
                filter
                    .state
                    .as_deref()
                    .is_none_or(|s| id.split('/').nth(1) == Some(s))
                    && filter.status.as_deref().is_none_or(|s| o["status"] == s)
                    && filter.kind.as_deref().is_none_or(|k| o["type"] == k)
            })
            .collect();
        let mut got: Vec<&serde_json::Value> = got.iter().collect();
        let by_id = |v: &&serde_json::Value| v["id"].as_str().unwrap_or_default().to_owned();
        want.sort_by_key(by_id);
        got.sort_by_key(by_id);
        if filter.since_ms.is_some() {
            assert_eq!(want.len(), obstacles);
        }
        assert_eq!(got, want, "{filter:?}");
    }
    // A cursor that this node did not give is a clear error.
    let err = store
        .reader()
        .list(Collection::Obstacles, &ListFilter::default(), Some("zz"), 3)
        .expect_err("a bad cursor");
    assert!(err.to_string().contains("cursor"), "{err}");
}

/// The tables of the first format, as its writer laid them out: each entry unsealed under
/// its key, its hash, each document saved whole, the proofs and two settings.
mod first_format {
    use redb::TableDefinition;

    pub const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
    pub const HASHES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("hashes");
    pub const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
    pub const PROOFS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("proofs");
    pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
}

/// Opens and loads the store at `path`, with the steps its start went through.
fn load_with_steps(path: &Path, net: &Net) -> (Store, Replica<Reader>, Vec<String>) {
    let store = Store::open(path).expect("open");
    let mut steps = Vec::new();
    let replica = store
        .load(net.charter.clone(), Limits::default(), &mut |what, _, _| {
            steps.push(what.to_owned())
        })
        .expect("load");
    (store, replica, steps)
}

#[test]
fn a_store_of_the_first_format_is_migrated_once_and_keeps_everything() {
    let net = Net::new(4);
    let entries = generate(&net, 400, 4);
    // What the same entries make in a store of today's format.
    let today = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(&store_path(&today)).expect("open");
        let mut replica = net.replica();
        ingest_and_commit(&store, &mut replica, &entries, 100, true);
    }
    let expected = load(&store_path(&today), &net).expect("today's store");

    // The same entries as the first format's writer stored them.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(&dir);
    {
        let mut replica = net.replica();
        let report = replica.ingest(entries.clone()).expect("ingest");
        assert_eq!(report.accepted.len(), entries.len());
        let db = redb::Database::create(&path).expect("create");
        let tx = db.begin_write().expect("write");
        {
            use first_format::*;
            let mut rows = tx.open_table(ENTRIES).expect("entries");
            let mut hashes = tx.open_table(HASHES).expect("hashes");
            let mut snapshots = tx.open_table(SNAPSHOTS).expect("snapshots");
            tx.open_table(PROOFS).expect("proofs");
            let mut meta = tx.open_table(META).expect("meta");
            meta.insert("format", b"1".as_slice()).expect("format");
            meta.insert("network", net.charter.network.as_bytes())
                .expect("network");
            for e in &entries {
                let key = spoc_node::store::entry_key(&e.entry.log(), e.entry.seq);
                rows.insert(key.as_slice(), e.bytes()).expect("entry");
                hashes
                    .insert(e.hash().0.as_slice(), key.as_slice())
                    .expect("hash");
            }
            for e in &entries {
                let id = e.entry.doc.clone();
                let doc = replica.load_doc(&id).expect("read").expect("a document");
                snapshots
                    .insert(id.as_str(), doc.save().as_slice())
                    .expect("snapshot");
            }
        }
        tx.commit().expect("commit");
    }

    // The first start migrates: the same logs and documents as today's store, and the
    // full check passes.
    let (store, mut replica, steps) = load_with_steps(&path, &net);
    assert!(steps.iter().any(|s| s == "reading entries"), "{steps:?}");
    assert_eq!(replica.entry_count(), entries.len());
    assert_eq!(used_state(&store, &mut replica).expect("reads"), expected);
    let (checked, _) = store
        .verify(net.charter.clone(), &mut |_, _, _| {})
        .expect("verify");
    assert_eq!(checked, entries.len());
    drop(replica);
    drop(store);

    // The next start finds today's format: no migration, the same content.
    let (store, mut replica, steps) = load_with_steps(&path, &net);
    assert!(steps.iter().all(|s| s != "reading entries"), "{steps:?}");
    assert_eq!(used_state(&store, &mut replica).expect("reads"), expected);
}

/// The summaries of every meeting dated from `from` to `to`, found by listing them all.
fn meetings_listed(reader: &Reader, from: &str, to: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = reader
            .list(
                Collection::Meetings,
                &ListFilter::default(),
                cursor.as_deref(),
                1000,
            )
            .expect("a page");
        out.extend(
            page.items
                .into_iter()
                .filter(|m| m["date"].as_str().is_some_and(|d| d >= from && d <= to)),
        );
        cursor = page.next;
        if cursor.is_none() {
            return out;
        }
    }
}

#[test]
fn a_term_reads_its_meetings_from_the_date_index_and_a_second_format_store_gains_it() {
    let net = Net::new(4);
    let entries = generate(&net, 400, 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(&dir);
    {
        let store = Store::open(&path).expect("open");
        let mut replica = net.replica();
        ingest_and_commit(&store, &mut replica, &entries, 100, true);
    }
    let (from, to) = ("2026-12-01", "2027-06-30");
    let expected = {
        let store = Store::open(&path).expect("open");
        let reader = store.reader();
        let mut listed = meetings_listed(&reader, from, to);
        let mut indexed = reader.meetings_dated(from, to).expect("indexed");
        assert!(!listed.is_empty());
        let by_id = |v: &serde_json::Value| v["id"].as_str().unwrap_or_default().to_owned();
        listed.sort_by_key(by_id);
        indexed.sort_by_key(by_id);
        assert_eq!(indexed, listed);
        let none = reader
            .meetings_dated("2020-01-01", "2020-06-30")
            .expect("indexed");
        assert!(none.is_empty());
        indexed
    };

    // A store of the second format had no date index: its rows go, and its format says 2.
    {
        let db = redb::Database::create(&path).expect("open");
        let tx = db.begin_write().expect("write");
        {
            let list: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("list");
            let mut list = tx.open_table(list).expect("list");
            let date_field = [&8u16.to_be_bytes()[..], b"meetings", b"d"].concat();
            list.retain(|k, _| !k.starts_with(&date_field))
                .expect("retain");
            let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
            tx.open_table(meta)
                .expect("meta")
                .insert("format", b"2".as_slice())
                .expect("format");
        }
        tx.commit().expect("commit");
    }
    let store = Store::open(&path).expect("open");
    assert!(
        store
            .reader()
            .meetings_dated(from, to)
            .expect("read")
            .is_empty()
    );
    let replica = store
        .load(net.charter.clone(), Limits::default(), &mut |_, _, _| {})
        .expect("load");
    let mut indexed = store.reader().meetings_dated(from, to).expect("read");
    indexed.sort_by_key(|v| v["id"].as_str().unwrap_or_default().to_owned());
    assert_eq!(indexed, expected);
    drop(replica);
    let (checked, _) = store
        .verify(net.charter.clone(), &mut |_, _, _| {})
        .expect("verify");
    assert_eq!(checked, entries.len());
}

#[test]
fn the_places_in_peers_streams_outlive_a_reopen_and_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(&dir);
    {
        let store = Store::open(&path).expect("open");
        for i in 0..70u64 {
            store
                .put_stream(&format!("peer-{i:03}"), Some(i * 500))
                .expect("put");
        }
        store.put_stream("peer-069", Some(40_000)).expect("put");
        store.put_stream("peer-068", None).expect("forget");
        // A durable commit of something else carries the places to the disk.
        let net = Net::new(4);
        let mut replica = net.replica();
        ingest_and_commit(&store, &mut replica, &generate(&net, 5, 4), 5, true);
    }
    let store = Store::open(&path).expect("open");
    let places = store.streams().expect("places");
    assert_eq!(places.len() as u64, spoc_node::store::MAX_STREAMS - 1);
    assert!(places.contains(&("peer-069".to_owned(), 40_000)));
    assert!(places.iter().all(|(peer, _)| peer != "peer-068"));
}
