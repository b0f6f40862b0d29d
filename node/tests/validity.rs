//! Every validity check refuses the entry that breaks it: `ingest` rejects it with the
//! matching `Invalid` variant (a rule break names the rule) and changes nothing, and where
//! an operator could make the write through `prepare`, it is refused before signing with
//! the very message that every other node gives. Valid entries of every kind are accepted.

mod common;

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use common::*;
use rand::SeedableRng;
use spoc_node::charter::Charter;
use spoc_node::docs::DocId;
use spoc_node::docs::command::{Command, Refused};
use spoc_node::identity::{Scope, SecretKey};
use spoc_node::log::{EntryHash, Invalid, LogId, SignedEntry};
use spoc_node::replica::{Limits, MAX_AHEAD_MS, Replica};
use std::sync::Arc;

/// Each participant writes as incarnation 1 in these tests.
const INC: u32 = 1;

/// A replica holding one item of each collection.
struct World {
    net: Net,
    r: Replica,
    ulids: Ulids,
    meeting: String,
    obstacle: String,
    practice: String,
    expert: String,
}

impl World {
    fn new() -> World {
        let net = Net::new(11);
        let mut r = net.replica();
        let mut ulids = Ulids::new(12);
        let (_, meeting) = write(
            &mut r,
            net.key("IE"),
            INC,
            &convene("Plenary", "2026-12-10"),
            NOW,
            ulids.next(NOW),
        );
        let (_, obstacle) = write(
            &mut r,
            net.key("EL"),
            INC,
            &report_obstacle("Slow replies"),
            NOW,
            ulids.next(NOW),
        );
        let (_, practice) = write(
            &mut r,
            net.key("EL"),
            INC,
            &share_practice("One mailbox"),
            NOW,
            ulids.next(NOW),
        );
        write(
            &mut r,
            net.key("IE"),
            INC,
            &set_factsheet("notes", "Garda SPOC"),
            NOW,
            ulids.next(NOW),
        );
        let (_, expert) = write(
            &mut r,
            net.key("IE"),
            INC,
            &nominate("Digital evidence"),
            NOW,
            ulids.next(NOW),
        );
        World {
            net,
            r,
            ulids,
            meeting,
            obstacle,
            practice,
            expert,
        }
    }

    fn ulid(&mut self) -> ulid::Ulid {
        self.ulids.next(NOW)
    }

    fn doc(&self, id: &str) -> DocId {
        id.parse().expect("a document id")
    }

    /// The next entry of `code`'s log, signed, with `change` for `doc`.
    fn entry(&self, code: &str, doc: &DocId, change: Vec<u8>) -> spoc_node::log::Entry {
        next_entry(&self.r, self.net.key(code), INC, doc, NOW, change)
    }

    /// Checks that a change by `code` putting `value` at `key` of `doc`'s root, made and
    /// signed without the rule check, is refused with `rule`.
    fn assert_put_refused(&mut self, code: &str, doc: &DocId, key: &str, value: &str, rule: &str) {
        let entry = craft(&self.r, self.net.key(code), INC, doc, NOW, |tx, _| {
            tx.put(ROOT, key, value).expect("a put");
        });
        assert_refused(&mut self.r, entry, Invalid::Rule(rule.to_owned()));
    }

    /// Checks that `prepare` refuses `command` by `code` with `rule`, and that the same
    /// change, made and signed without the check, is rejected by `ingest` with that rule.
    fn assert_rule(&mut self, code: &str, command: &Command, rule: &str) {
        let ulid = self.ulid();
        let refused = self
            .r
            .prepare(self.net.key(code), INC, command, NOW, ulid)
            .expect_err("prepare should refuse");
        assert_eq!(refused, Refused::Rule(rule.to_owned()));
        let entry = craft_command(&self.r, self.net.key(code), INC, command, NOW, ulid);
        assert_refused(&mut self.r, entry, Invalid::Rule(rule.to_owned()));
    }
}

/// Ingests one entry and checks that it is rejected with `expected` and that the
/// documents, the heights and the pending set are as before.
fn assert_refused(r: &mut Replica, entry: SignedEntry, expected: Invalid) {
    let before = state(r);
    let pending = r.pending_count();
    let reason = expected.reason();
    let count = r.rejected_counts().get(reason).copied().unwrap_or(0);
    let hash = entry.hash();
    let report = r.ingest(vec![entry]).expect("ingest");
    assert!(report.accepted.is_empty(), "{report:?}");
    assert!(report.touched.is_empty(), "{report:?}");
    assert_eq!(report.rejected, vec![(hash, expected)]);
    assert_eq!(state(r), before, "a rejected entry changed the replica");
    assert_eq!(r.pending_count(), pending);
    assert!(!r.contains(&hash).expect("readable"));
    assert_eq!(r.rejected_counts()[reason], count + 1);
}

/// The offset of the signature in an encoded entry: its last 64 bytes.
fn signature_offset(entry: &SignedEntry) -> usize {
    entry.bytes().len() - 64
}

#[test]
fn a_bad_signature_is_refused_and_the_rest_of_the_batch_is_kept() {
    let mut w = World::new();
    let (good, _) =
        w.r.prepare(
            w.net.key("LT"),
            INC,
            &set_factsheet("notes", "LT SPOC"),
            NOW,
            w.ulids.next(NOW),
        )
        .expect("prepare");
    let (other, _) =
        w.r.prepare(
            w.net.key("FI"),
            INC,
            &set_factsheet("notes", "FI SPOC"),
            NOW,
            w.ulids.next(NOW),
        )
        .expect("prepare");
    for index in [signature_offset(&other), other.bytes().len() - 1] {
        let forged = SignedEntry::decode(&flip_byte(&other, index)).expect("still decodes");
        assert_eq!(forged.entry, other.entry);
        assert_eq!(
            forged.verify_signature(&w.net.scope()),
            Err(Invalid::BadSignature)
        );
        assert_refused(&mut w.r, forged, Invalid::BadSignature);
    }

    // In a batch, the forged entry fails the batch check and the others still pass alone.
    let forged =
        SignedEntry::decode(&flip_byte(&other, signature_offset(&other) + 10)).expect("decodes");
    let before = state(&w.r);
    let report = w.r.ingest(vec![forged.clone(), good.clone()]).unwrap();
    assert_eq!(
        report.rejected,
        vec![(forged.hash(), Invalid::BadSignature)]
    );
    assert_eq!(report.accepted, vec![good]);
    let after = state(&w.r);
    assert_eq!(after.docs.len(), before.docs.len() + 1);
    assert!(after.docs.contains_key("factsheets/LT"));
    assert!(!after.docs.contains_key("factsheets/FI"));
    assert_accepted(&w.r.ingest(vec![other]).unwrap(), 1);
}

#[test]
fn a_body_the_author_did_not_sign_is_refused() {
    let mut w = World::new();
    let (original, _) =
        w.r.prepare(
            w.net.key("LT"),
            INC,
            &set_factsheet("notes", "LT SPOC"),
            NOW,
            w.ulids.next(NOW),
        )
        .expect("prepare");
    // A later timestamp with the original signature.
    let mut altered = original.entry.clone();
    altered.timestamp_ms += 1;
    let mut bytes = altered
        .sign(w.net.key("LT"), &w.net.scope())
        .bytes()
        .to_vec();
    let at = bytes.len() - 64;
    bytes[at..].copy_from_slice(&original.signature.0);
    let forged = SignedEntry::decode(&bytes).expect("decodes");
    assert_eq!(forged.entry.timestamp_ms, original.entry.timestamp_ms + 1);
    assert_refused(&mut w.r, forged, Invalid::BadSignature);
    // The same body signed by another participant's key is refused too.
    let by_other = original.entry.clone().sign(w.net.key("FI"), &w.net.scope());
    assert_refused(&mut w.r, by_other, Invalid::BadSignature);
    assert_accepted(&w.r.ingest(vec![original]).unwrap(), 1);
}

#[test]
fn an_unknown_author_is_refused() {
    let mut w = World::new();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(99);
    let outsider = SecretKey::generate(&mut rng);
    let doc = DocId::factsheet("ZZ");
    let entry = craft(&w.r, &outsider, INC, &doc, NOW, |tx, _| {
        tx.put(ROOT, "notes", "not a participant").unwrap();
    });
    assert_refused(
        &mut w.r,
        entry,
        Invalid::UnknownAuthor(outsider.public().to_string()),
    );
    let ulid = w.ulid();
    let refused =
        w.r.prepare(&outsider, INC, &set_factsheet("notes", "x"), NOW, ulid)
            .expect_err("an outsider cannot write");
    assert_eq!(
        refused,
        Refused::Invalid(
            "this node's key is not a participant's key in the charter in force (version 0)".into()
        )
    );
}

#[test]
fn a_seq_gap_is_refused_and_a_missing_seq_is_waited_for() {
    let w = World::new();
    let doc = DocId::factsheet("LT");
    let change = craft_change(None, w.net.log("LT", INC), |tx, _| {
        tx.put(ROOT, "notes", "seq zero").unwrap();
    });
    // Logs start at seq 1: a seq 0 leaves a gap that nothing can fill.
    let mut zero = w.entry("LT", &doc, change);
    assert_eq!(zero.seq, 1);
    zero.seq = 0;
    let mut r = w.r;
    assert_refused(
        &mut r,
        zero.sign(w.net.key("LT"), &w.net.scope()),
        Invalid::SeqGap {
            expected: 1,
            found: 0,
        },
    );

    // An entry whose predecessor has not arrived is not refused: it waits for it, since a
    // later entry can always arrive before an earlier one.
    let mut writer = w.net.replica();
    let mut ulids = Ulids::new(3);
    let entries: Vec<SignedEntry> = (0..3)
        .map(|i| {
            write(
                &mut writer,
                w.net.key("LT"),
                INC,
                &set_factsheet("notes", &format!("version {i}")),
                NOW + i,
                ulids.next(NOW),
            )
            .0
        })
        .collect();
    let mut fresh = w.net.replica();
    let report = fresh
        .ingest(vec![entries[0].clone(), entries[2].clone()])
        .unwrap();
    assert_accepted(&report, 1);
    assert_eq!(fresh.pending_count(), 1);
    assert_eq!(fresh.heights()[&w.net.log("LT", INC)], 1);
    let report = fresh.ingest(vec![entries[1].clone()]).unwrap();
    assert_accepted(&report, 2);
    assert_eq!(fresh.pending_count(), 0);
    assert_eq!(state(&fresh), state(&writer));

    // An entry whose prev names an entry already held, but which claims a later seq than
    // the next one, skips seqs: it is refused at once.
    let mut other = w.net.replica();
    assert_accepted(&other.ingest(vec![entries[0].clone()]).unwrap(), 1);
    let mut skipping = entries[1].entry.clone();
    skipping.seq = 3;
    assert_refused(
        &mut other,
        skipping.sign(w.net.key("LT"), &w.net.scope()),
        Invalid::SeqGap {
            expected: 2,
            found: 3,
        },
    );
}

#[test]
fn a_wrong_prev_is_refused() {
    let mut w = World::new();
    let log = w.net.log("IE", INC);
    let height = w.r.heights()[&log];
    let doc = DocId::factsheet("IE");
    let change = craft_change(w.r.doc(&doc), log, |tx, _| {
        tx.put(ROOT, "notes", "wrong prev").unwrap();
    });
    let mut entry = w.entry("IE", &doc, change.clone());
    entry.prev = Some(EntryHash([7; 32]));
    assert_refused(
        &mut w.r,
        entry.clone().sign(w.net.key("IE"), &w.net.scope()),
        Invalid::WrongPrev { seq: height },
    );
    // The hash of an earlier entry of the same log is just as wrong.
    entry.prev = Some(w.r.entry(&log, height - 1).unwrap().unwrap().hash());
    assert_refused(
        &mut w.r,
        entry.clone().sign(w.net.key("IE"), &w.net.scope()),
        Invalid::WrongPrev { seq: height },
    );
    // A first entry names no predecessor, and a later one must.
    entry.prev = None;
    assert_refused(
        &mut w.r,
        entry.sign(w.net.key("IE"), &w.net.scope()),
        Invalid::WrongPrev { seq: height },
    );
    let mut first = w.entry("FI", &DocId::factsheet("FI"), {
        craft_change(None, w.net.log("FI", INC), |tx, _| {
            tx.put(ROOT, "notes", "first").unwrap();
        })
    });
    first.prev = Some(w.r.entry(&log, 1).unwrap().unwrap().hash());
    assert_refused(
        &mut w.r,
        first.sign(w.net.key("FI"), &w.net.scope()),
        Invalid::WrongPrev { seq: 0 },
    );
}

/// Midnight UTC at the start of 2027-01-01, when Lithuania's Presidency begins.
const LT_TERM: u64 = NOW + 31 * 24 * 60 * MINUTE;

fn escalate(obstacle: &str) -> Command {
    Command::ObstacleStatus {
        obstacle: obstacle.to_owned(),
        status: "escalated".into(),
        reference: None,
    }
}

#[test]
fn an_entry_dated_into_a_future_presidency_term_waits_until_that_time() {
    let mut w = World::new();
    assert_accepted(&w.r.advance(NOW).expect("advance"), 0);
    // Lithuania's node, its clock moved into its own term, escalates an obstacle.
    let ulid = w.ulid();
    let (entry, _) =
        w.r.prepare(w.net.key("LT"), INC, &escalate(&w.obstacle), LT_TERM, ulid)
            .expect("the Presidency of that date may escalate");
    let report = w.r.ingest(vec![entry.clone()]).expect("ingest");
    assert!(
        report.accepted.is_empty() && report.rejected.is_empty(),
        "{report:?}"
    );
    assert_eq!(w.r.waiting_for_time_count(), 1);
    assert!(!w.r.contains(&entry.hash()).expect("readable"));
    assert_eq!(json(&w.r, &w.obstacle)["status"], "reported");
    // It comes again, as sync and gossip bring it, and still waits.
    let again = w.r.ingest(vec![entry.clone()]).expect("ingest");
    assert_eq!((again.accepted.len(), again.duplicates), (0, 1));
    // A minute before the tolerance reaches its date, it still waits.
    let early =
        w.r.advance(LT_TERM - MAX_AHEAD_MS - MINUTE)
            .expect("advance");
    assert!(early.accepted.is_empty(), "{early:?}");
    assert_eq!(json(&w.r, &w.obstacle)["status"], "reported");
    // Then its time comes, and the rules of that date apply.
    let due = w.r.advance(LT_TERM - MAX_AHEAD_MS).expect("advance");
    assert_eq!(due.accepted, vec![entry]);
    assert_eq!(w.r.waiting_for_time_count(), 0);
    assert_eq!(w.r.pending_count(), 0);
    assert_eq!(json(&w.r, &w.obstacle)["status"], "escalated");
}

#[test]
fn entries_dated_ahead_are_bounded_and_the_furthest_ahead_go_first() {
    let net = Net::new(11);
    let limits = Limits {
        max_waiting_for_time: 2,
        ..Limits::default()
    };
    let mut r = Replica::new(net.charter.clone(), limits);
    r.advance(NOW).expect("advance");
    // Each from a new log of its own, dated one day further ahead than the last.
    let entries: Vec<SignedEntry> = (1..=3u32)
        .map(|i| {
            let mut ahead = Replica::new(net.charter.clone(), Limits::default());
            let when = NOW + u64::from(i) * 24 * 60 * MINUTE;
            let ulid = Ulids::new(u64::from(i)).next(when);
            ahead
                .prepare(
                    net.key("IE"),
                    100 + i,
                    &set_factsheet("notes", "ahead"),
                    when,
                    ulid,
                )
                .expect("a write")
                .0
        })
        .collect();
    let report = r.ingest(entries.clone()).expect("ingest");
    assert_eq!(report.overflow, 1);
    assert_eq!(r.waiting_for_time_count(), 2);
    let woke = r.advance(NOW + 3 * 24 * 60 * MINUTE).expect("advance");
    assert_eq!(woke.accepted, entries[..2].to_vec());
}

#[test]
fn an_entry_whose_past_does_not_come_is_dropped_after_ten_minutes_and_taken_when_it_comes() {
    let net = Net::new(11);
    let mut r = net.replica();
    r.advance(NOW).expect("advance");
    let mut writer = net.replica();
    let mut ulids = Ulids::new(5);
    let (first, _) = write(
        &mut writer,
        net.key("LT"),
        INC,
        &set_factsheet("notes", "a"),
        NOW,
        ulids.next(NOW),
    );
    let (second, _) = write(
        &mut writer,
        net.key("LT"),
        INC,
        &set_factsheet("notes", "b"),
        NOW,
        ulids.next(NOW),
    );
    let report = r.ingest(vec![second.clone()]).expect("ingest");
    assert!(
        report.accepted.is_empty() && report.rejected.is_empty(),
        "{report:?}"
    );
    assert_eq!(r.pending_count(), 1);
    let limit = Limits::default().max_pending_age_ms;
    assert_eq!(r.advance(NOW + limit).expect("advance").overflow, 0);
    assert_eq!(r.pending_count(), 1);
    // The set is scanned at most once per tenth of the age allowed.
    assert_eq!(r.advance(NOW + limit + 1).expect("advance").overflow, 0);
    assert_eq!(
        r.advance(NOW + limit + limit / 10)
            .expect("advance")
            .overflow,
        1
    );
    assert_eq!(r.pending_count(), 0);
    // Sync brings both again once the first can be had.
    let report = r
        .ingest(vec![second.clone(), first.clone()])
        .expect("ingest");
    assert_eq!(report.accepted, vec![first, second]);
}

#[test]
fn an_entry_dated_before_a_change_it_depends_on_is_refused() {
    let mut w = World::new();
    // Lithuania's first entry of a new log, so no entry of its own log dates it, endorses
    // an obstacle reported at NOW while claiming to be an hour older.
    let endorse = Command::ObstacleEndorse {
        obstacle: w.obstacle.clone(),
        stance: "support".into(),
        note: None,
    };
    let ulid = w.ulid();
    let backdated = craft_command(&w.r, w.net.key("LT"), 7, &endorse, NOW - 60 * MINUTE, ulid);
    assert_refused(
        &mut w.r,
        backdated,
        Invalid::TimestampBeforePast {
            past: spoc_node::log::change_time(NOW),
            found: NOW - 60 * MINUTE,
        },
    );
    let honest = craft_command(&w.r, w.net.key("LT"), 7, &endorse, NOW, ulid);
    assert_accepted(&w.r.ingest(vec![honest]).expect("ingest"), 1);
}

#[test]
fn a_change_whose_time_is_not_its_entrys_is_refused() {
    let mut w = World::new();
    let log = w.net.log("IE", INC);
    let doc = DocId::factsheet("IE");
    let change = craft_change_at(w.r.doc(&doc), log, NOW - 60 * MINUTE, |tx, _| {
        tx.put(ROOT, "notes", "an hour off").unwrap();
    });
    let entry = w.entry("IE", &doc, change);
    let signed = entry.clone().sign(w.net.key("IE"), &w.net.scope());
    assert_refused(
        &mut w.r,
        signed,
        Invalid::ChangeTime {
            change: spoc_node::log::change_time(NOW - 60 * MINUTE),
            entry: entry.timestamp_ms,
        },
    );
}

#[test]
fn a_timestamp_earlier_than_prev_is_refused() {
    let mut w = World::new();
    let log = w.net.log("IE", INC);
    let prev =
        w.r.entry(&log, w.r.heights()[&log])
            .unwrap()
            .unwrap()
            .entry
            .timestamp_ms;
    let doc = DocId::factsheet("IE");
    let change = craft_change_at(w.r.doc(&doc), log, prev - 1, |tx, _| {
        tx.put(ROOT, "notes", "from the past").unwrap();
    });
    let mut entry = w.entry("IE", &doc, change);
    entry.timestamp_ms = prev - 1;
    assert_refused(
        &mut w.r,
        entry.sign(w.net.key("IE"), &w.net.scope()),
        Invalid::TimestampBeforePrev {
            prev,
            found: prev - 1,
        },
    );
    // A local write with a clock that went back keeps its log's order instead.
    let ulid = w.ulid();
    let (entry, _) = write(
        &mut w.r,
        w.net.key("IE"),
        INC,
        &set_factsheet("notes", "clock went back"),
        NOW - MINUTE,
        ulid,
    );
    assert_eq!(entry.entry.timestamp_ms, prev);
}

#[test]
fn a_change_by_another_authors_or_incarnations_actor_is_refused() {
    let mut w = World::new();
    let doc = DocId::factsheet("LT");
    for actor in [w.net.log("IE", INC), w.net.log("LT", INC + 1)] {
        let change = craft_change(None, actor, |tx, _| {
            tx.put(ROOT, "notes", "whose change?").unwrap();
        });
        let entry = w
            .entry("LT", &doc, change)
            .sign(w.net.key("LT"), &w.net.scope());
        assert_refused(&mut w.r, entry, Invalid::ActorMismatch);
    }
    // An actor that is not a log id at all.
    let change = {
        let mut d = automerge::Automerge::new();
        d.set_actor(automerge::ActorId::from(b"someone".as_slice()));
        let mut tx = d.transaction();
        tx.put(ROOT, "notes", "anonymous").unwrap();
        tx.commit();
        d.get_last_local_change().unwrap().bytes().into_owned()
    };
    let entry = w
        .entry("LT", &doc, change)
        .sign(w.net.key("LT"), &w.net.scope());
    assert_refused(&mut w.r, entry, Invalid::ActorMismatch);
}

#[test]
fn an_entry_for_another_network_is_refused() {
    let mut w = World::new();
    let doc = DocId::factsheet("LT");
    let change = craft_change(None, w.net.log("LT", INC), |tx, _| {
        tx.put(ROOT, "notes", "elsewhere").unwrap();
    });
    let mut entry = w.entry("LT", &doc, change);
    entry.network = "othernet".into();
    assert_refused(
        &mut w.r,
        entry.sign(w.net.key("LT"), &w.net.scope()),
        Invalid::WrongNetwork {
            expected: "testnet".into(),
            found: "othernet".into(),
        },
    );
}

#[test]
fn an_entry_of_another_network_with_the_same_name_and_keys_is_refused() {
    let mut w = World::new();
    // A staging network beside production: the same name and national keys, and a charter
    // that differs in one line, so another genesis.
    let mut staging = Charter::parse(&w.net.charter.to_toml()).expect("the charter");
    staging.training_core_group.pop();
    let staging = Arc::new(Charter::parse(&staging.to_toml()).expect("the staging charter"));
    assert_eq!(staging.network, w.net.charter.network);
    assert_ne!(staging.scope(), w.net.scope());
    let mut elsewhere = Replica::new(staging, Limits::default());
    let ulid = w.ulid();
    let (entry, _) = write(
        &mut elsewhere,
        w.net.key("LT"),
        INC,
        &set_factsheet("notes", "Written in staging"),
        NOW,
        ulid,
    );
    assert_eq!(entry.entry.network, w.net.charter.network);
    assert_eq!(
        entry.verify_signature(&w.net.scope()),
        Err(Invalid::BadSignature)
    );
    assert_refused(&mut w.r, entry, Invalid::BadSignature);
}

#[test]
fn a_network_of_rules_version_one_keeps_its_signatures_bound_to_its_name() {
    let mut w = World::new();
    let text = w.net.charter.to_toml();
    assert!(text.contains("rules_version = 3\n"), "{text}");
    let first = Arc::new(
        Charter::parse(&text.replace("rules_version = 3\n", "rules_version = 1\n"))
            .expect("a charter of rules version 1"),
    );
    assert_eq!(first.scope(), Scope::Name);
    // Its entries are signed and checked as before genesis binding, so the stores and the
    // networks of that version keep every entry.
    let mut old = Replica::new(first, Limits::default());
    let ulid = w.ulid();
    let (entry, _) = write(
        &mut old,
        w.net.key("LT"),
        INC,
        &set_factsheet("notes", "Signed for the name"),
        NOW,
        ulid,
    );
    entry
        .verify_signature(&Scope::Name)
        .expect("a name-bound signature");
    assert_refused(&mut w.r, entry, Invalid::BadSignature);
}

#[test]
fn a_malformed_change_is_refused() {
    let mut w = World::new();
    let entry = w
        .entry(
            "LT",
            &DocId::factsheet("LT"),
            b"not an automerge change".to_vec(),
        )
        .sign(w.net.key("LT"), &w.net.scope());
    let before = state(&w.r);
    let report = w.r.ingest(vec![entry]).unwrap();
    assert!(report.accepted.is_empty());
    assert!(
        matches!(
            report.rejected.as_slice(),
            [(_, Invalid::MalformedChange(_))]
        ),
        "{report:?}"
    );
    assert_eq!(state(&w.r), before);
}

#[test]
fn only_the_presidency_may_convene_a_meeting() {
    let mut w = World::new();
    for code in ["LT", "EL", "FI"] {
        w.assert_rule(
            code,
            &convene("Rival plenary", "2026-12-15"),
            "only the Presidency (IE) may convene a meeting",
        );
    }
    // Ireland may not convene in Lithuania's term, and Lithuania may.
    w.assert_rule(
        "IE",
        &convene("Spring plenary", "2027-03-10"),
        "only the Presidency (LT) may convene a meeting",
    );
    let ulid = w.ulid();
    let (_, id) = write(
        &mut w.r,
        w.net.key("LT"),
        INC,
        &convene("Spring plenary", "2027-03-10"),
        NOW,
        ulid,
    );
    assert_eq!(json(&w.r, &id)["term"], "2027-H1");
    // An observer is never the Presidency.
    let refused =
        w.r.prepare(
            w.net.key("EUROPOL"),
            INC,
            &convene("Observer meeting", "2026-12-15"),
            NOW,
            ulid,
        )
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "only the Presidency (IE) may convene a meeting"
    );
}

#[test]
fn only_a_state_publishes_its_nodes_addresses_and_only_well_formed_ones() {
    let mut w = World::new();
    let publish = |addresses: &[&str]| Command::AddressSet {
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
    };
    let ulid = w.ulid();
    let (_, id) = write(
        &mut w.r,
        w.net.key("IE"),
        INC,
        &publish(&["/ip4/10.0.0.7/tcp/4001"]),
        NOW,
        ulid,
    );
    assert_eq!(id, "addresses/IE");
    assert_eq!(json(&w.r, &id)["addresses"], "/ip4/10.0.0.7/tcp/4001");
    // A second publication replaces the first.
    let ulid = w.ulid();
    write(
        &mut w.r,
        w.net.key("IE"),
        INC,
        &publish(&["/dns/spoc.garda.ie/tcp/443", "/ip6/::1/tcp/4001"]),
        NOW,
        ulid,
    );
    assert_eq!(
        json(&w.r, &id)["addresses"],
        "/dns/spoc.garda.ie/tcp/443 /ip6/::1/tcp/4001"
    );
    // Lithuania cannot publish where Ireland's nodes are.
    w.assert_put_refused(
        "LT",
        &DocId::addresses("IE"),
        "addresses",
        "/ip4/10.6.6.6/tcp/4001",
        "only IE may publish its nodes' addresses",
    );
    // Nor can Ireland publish what no node could be dialled at, or anything else.
    let ulid = w.ulid();
    let refused =
        w.r.prepare(
            w.net.key("IE"),
            INC,
            &publish(&["/ip4/10.0.0.7/udp/4001"]),
            NOW,
            ulid,
        )
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "address \"/ip4/10.0.0.7/udp/4001\" is not /ip4|ip6|dns/HOST/tcp/PORT"
    );
    w.assert_put_refused(
        "IE",
        &DocId::addresses("IE"),
        "addresses",
        "/ip4/10.0.0.7/tcp/99999",
        "address \"/ip4/10.0.0.7/tcp/99999\" has a bad port",
    );
    w.assert_put_refused(
        "IE",
        &DocId::addresses("IE"),
        "notes",
        "a note",
        "an address record holds only its state, its addresses and when they were updated, not notes",
    );
}

#[test]
fn a_state_may_not_write_another_states_fact_sheet() {
    let mut w = World::new();
    let theirs = DocId::factsheet("IE");
    w.assert_put_refused(
        "LT",
        &theirs,
        "notes",
        "written by LT",
        "only IE may write its fact sheet",
    );
    // Nor create one for a state that has none yet.
    w.assert_put_refused(
        "LT",
        &DocId::factsheet("FI"),
        "notes",
        "written by LT",
        "only FI may create factsheets/FI",
    );
    // `prepare` only ever writes the writer's own fact sheet.
    let ulid = w.ulid();
    let (entry, id) = write(
        &mut w.r,
        w.net.key("LT"),
        INC,
        &set_factsheet("notes", "LT SPOC"),
        NOW,
        ulid,
    );
    assert_eq!(id, "factsheets/LT");
    assert_eq!(entry.entry.doc, DocId::factsheet("LT"));
    assert_eq!(json(&w.r, "factsheets/IE")["notes"], "Garda SPOC");
}

#[test]
fn a_state_may_not_record_another_states_attendance() {
    let mut w = World::new();
    let meeting = w.doc(&w.meeting.clone());
    let command = Command::MeetingAttend {
        meeting: w.meeting.clone(),
        present: true,
        delegates: Some(2),
    };
    let ulid = w.ulid();
    write(&mut w.r, w.net.key("IE"), INC, &command, NOW, ulid);
    // LT replaces Ireland's attendance record, then edits it in place.
    let entry = craft(&w.r, w.net.key("LT"), INC, &meeting, NOW, |tx, doc| {
        let (_, attendance) = doc.get(ROOT, "attendance").unwrap().unwrap();
        let record = tx.put_object(&attendance, "IE", ObjType::Map).expect("put");
        tx.put(&record, "present", false).unwrap();
    });
    assert_refused(
        &mut w.r,
        entry,
        Invalid::Rule("only IE may record IE's attendance".into()),
    );
    let entry = craft(&w.r, w.net.key("LT"), INC, &meeting, NOW, |tx, doc| {
        let (_, attendance) = doc.get(ROOT, "attendance").unwrap().unwrap();
        let (_, record) = doc.get(&attendance, "IE").unwrap().unwrap();
        tx.put(&record, "present", false).unwrap();
    });
    assert_refused(
        &mut w.r,
        entry,
        Invalid::Rule("only IE may record IE's attendance".into()),
    );
    assert_eq!(json(&w.r, &w.meeting)["attendance"]["IE"]["present"], true);
    // `prepare` only ever records the writer's own attendance.
    let ulid = w.ulid();
    let (_, item) = write(&mut w.r, w.net.key("LT"), INC, &command, NOW, ulid);
    assert_eq!(item, "LT");
}

#[test]
fn an_observer_may_not_endorse() {
    let mut w = World::new();
    let rule = "an observer (EUROPOL) may not endorse";
    let obstacle = Command::ObstacleEndorse {
        obstacle: w.obstacle.clone(),
        stance: "support".into(),
        note: None,
    };
    w.assert_rule("EUROPOL", &obstacle, rule);
    let practice = Command::PracticeEndorse {
        practice: w.practice.clone(),
        stance: "support".into(),
    };
    w.assert_rule("EUROPOL", &practice, rule);
    // An observer may still comment, and a state may endorse.
    let ulid = w.ulid();
    write(
        &mut w.r,
        w.net.key("EUROPOL"),
        INC,
        &Command::ObstacleComment {
            obstacle: w.obstacle.clone(),
            text: "Seen in our cases too".into(),
        },
        NOW,
        ulid,
    );
    let ulid = w.ulid();
    write(&mut w.r, w.net.key("FI"), INC, &obstacle, NOW, ulid);
    let doc = json(&w.r, &w.obstacle);
    assert_eq!(doc["endorsements"]["FI"]["stance"], "support");
    assert!(doc["endorsements"].get("EUROPOL").is_none());
}

#[test]
fn the_presidency_closes_an_obstacle_only_with_a_minutes_reference() {
    let mut w = World::new();
    for status in ["resolved", "closed_no_action"] {
        let rule = format!(
            "the Presidency sets an obstacle {status} only with a reference to a meeting's minutes item (meetings/STATE/ID#ITEM)"
        );
        for reference in [None, Some("see the December minutes"), Some("meetings/IE")] {
            let command = Command::ObstacleStatus {
                obstacle: w.obstacle.clone(),
                status: status.into(),
                reference: reference.map(str::to_owned),
            };
            w.assert_rule("IE", &command, &rule);
        }
    }
    assert_eq!(json(&w.r, &w.obstacle)["status"], "reported");
    let reference = minutes_ref(&mut w.ulids);
    assert!(reference.starts_with("meetings/IE/") && reference.contains("#IE-"));
    let ulid = w.ulid();
    write(
        &mut w.r,
        w.net.key("IE"),
        INC,
        &Command::ObstacleStatus {
            obstacle: w.obstacle.clone(),
            status: "resolved".into(),
            reference: Some(reference.clone()),
        },
        NOW,
        ulid,
    );
    let doc = json(&w.r, &w.obstacle);
    assert_eq!(doc["status"], "resolved");
    assert_eq!(doc["status_ref"], reference.as_str());
    // The reporter cannot close it, even with a reference.
    w.assert_rule(
        "EL",
        &Command::ObstacleStatus {
            obstacle: w.obstacle.clone(),
            status: "closed_no_action".into(),
            reference: Some(reference),
        },
        "only the Presidency (IE) may set an obstacle's status to closed_no_action",
    );
}

#[test]
fn only_the_reporter_may_edit_an_obstacles_text() {
    let mut w = World::new();
    let edits = [
        (
            "title",
            Command::ObstacleEdit {
                obstacle: w.obstacle.clone(),
                title: Some("Hijacked".into()),
                description: None,
                solution: None,
            },
        ),
        (
            "description",
            Command::ObstacleEdit {
                obstacle: w.obstacle.clone(),
                title: None,
                description: Some("Rewritten by someone else".into()),
                solution: None,
            },
        ),
    ];
    for code in ["IE", "LT", "EUROPOL"] {
        for (field, command) in &edits {
            w.assert_rule(
                code,
                command,
                &format!("only the reporter (EL) may edit the obstacle's {field}"),
            );
        }
    }
    // Editing the description text object directly, character by character.
    let obstacle = w.doc(&w.obstacle.clone());
    let entry = craft(&w.r, w.net.key("LT"), INC, &obstacle, NOW, |tx, doc| {
        let (_, text) = doc.get(ROOT, "description").unwrap().unwrap();
        tx.splice_text(&text, 0, 4, "Fast").unwrap();
    });
    assert_refused(
        &mut w.r,
        entry,
        Invalid::Rule("only the reporter (EL) may edit the obstacle's description".into()),
    );
    let before = json(&w.r, &w.obstacle);
    assert_eq!(before["title"], "Slow replies");
    for (_, command) in &edits {
        let ulid = w.ulid();
        write(&mut w.r, w.net.key("EL"), INC, command, NOW, ulid);
    }
    let after = json(&w.r, &w.obstacle);
    assert_eq!(after["title"], "Hijacked");
    assert_eq!(after["description"], "Rewritten by someone else");
}

#[test]
fn a_valid_entry_of_every_kind_is_accepted() {
    let mut w = World::new();
    let mut entries = Vec::new();
    let mut go = |w: &mut World, code: &str, command: Command| -> String {
        let ulid = w.ulid();
        let (entry, item) = write(&mut w.r, w.net.key(code), INC, &command, NOW, ulid);
        entries.push(entry);
        item
    };
    let meeting = go(&mut w, "IE", convene("Plenary 2", "2026-12-17"));
    let item = go(
        &mut w,
        "LT",
        Command::MeetingPropose {
            meeting: meeting.clone(),
            title: "PNR requests".into(),
            description: Some("Turnaround".into()),
        },
    );
    let rejected_item = go(
        &mut w,
        "EUROPOL",
        Command::MeetingPropose {
            meeting: meeting.clone(),
            title: "SIENA".into(),
            description: None,
        },
    );
    go(
        &mut w,
        "IE",
        Command::MeetingDecide {
            meeting: meeting.clone(),
            item: item.clone(),
            decision: "accepted".into(),
            reason: None,
        },
    );
    go(
        &mut w,
        "IE",
        Command::MeetingDecide {
            meeting: meeting.clone(),
            item: rejected_item.clone(),
            decision: "rejected".into(),
            reason: Some("Out of scope".into()),
        },
    );
    for code in ["LT", "EUROPOL"] {
        go(
            &mut w,
            code,
            Command::MeetingAttend {
                meeting: meeting.clone(),
                present: true,
                delegates: None,
            },
        );
    }
    go(
        &mut w,
        "FI",
        Command::MeetingComment {
            meeting: meeting.clone(),
            text: "We will join online".into(),
            item: Some(item.clone()),
        },
    );
    go(
        &mut w,
        "IE",
        Command::MeetingStatus {
            meeting: meeting.clone(),
            status: "agenda_frozen".into(),
        },
    );
    go(
        &mut w,
        "IE",
        Command::MeetingMinutes {
            meeting: meeting.clone(),
            text: "Agreed to pilot".into(),
            item: Some(item.clone()),
        },
    );
    go(
        &mut w,
        "IE",
        Command::MeetingMinutes {
            meeting: meeting.clone(),
            text: "Minutes of the plenary".into(),
            item: None,
        },
    );
    let obstacle = w.obstacle.clone();
    go(
        &mut w,
        "EL",
        Command::ObstacleEdit {
            obstacle: obstacle.clone(),
            title: None,
            description: Some("Replies take weeks".into()),
            solution: Some("Deadlines".into()),
        },
    );
    go(
        &mut w,
        "LT",
        Command::ObstacleEndorse {
            obstacle: obstacle.clone(),
            stance: "object".into(),
            note: Some("Not our experience".into()),
        },
    );
    go(
        &mut w,
        "EUROPOL",
        Command::ObstacleComment {
            obstacle: obstacle.clone(),
            text: "Noted".into(),
        },
    );
    go(
        &mut w,
        "IE",
        Command::ObstacleStatus {
            obstacle: obstacle.clone(),
            status: "triaged".into(),
            reference: None,
        },
    );
    go(
        &mut w,
        "EL",
        Command::ObstacleStatus {
            obstacle: obstacle.clone(),
            status: "solution_proposed".into(),
            reference: None,
        },
    );
    let practice = go(&mut w, "FI", share_practice("Shared inbox"));
    go(
        &mut w,
        "IE",
        Command::PracticeEndorse {
            practice: practice.clone(),
            stance: "support".into(),
        },
    );
    go(
        &mut w,
        "EUROPOL",
        Command::PracticeComment {
            practice: practice.clone(),
            text: "Useful".into(),
        },
    );
    go(
        &mut w,
        "EUROPOL",
        set_factsheet("contacts", "ops@example.eu"),
    );
    go(&mut w, "EL", report_obstacle("Missing forms"));
    let expert = go(&mut w, "EL", nominate("Crypto tracing"));
    go(
        &mut w,
        "FI",
        Command::TrainingOpportunity {
            title: "Summer school".into(),
            date: "2027-06-01".into(),
            description: "Two weeks in Helsinki".into(),
        },
    );
    for (code, verdict) in [("LT", "assessed"), ("IE", "listed")] {
        go(
            &mut w,
            code,
            Command::TrainingAssess {
                item: expert.clone(),
                verdict: verdict.into(),
                note: None,
            },
        );
    }
    let own_expert = w.expert.clone();
    go(
        &mut w,
        "IE",
        Command::TrainingAssess {
            item: own_expert,
            verdict: "assessed".into(),
            note: Some("Own expert".into()),
        },
    );

    let m = json(&w.r, &meeting);
    assert_eq!(m["status"], "agenda_frozen");
    assert_eq!(m["minutes"], "Minutes of the plenary");
    assert_eq!(m["agenda"][&item]["status"], "accepted");
    assert_eq!(m["agenda"][&item]["minutes"], "Agreed to pilot");
    assert_eq!(m["agenda"][&rejected_item]["status"], "rejected");
    assert_eq!(m["attendance"]["EUROPOL"]["present"], true);
    let o = json(&w.r, &obstacle);
    assert_eq!(o["description"], "Replies take weeks");
    assert_eq!(o["endorsements"]["LT"]["stance"], "object");
    assert_eq!(o["status"], "solution_proposed");
    assert_eq!(
        json(&w.r, &practice)["endorsements"]["IE"]["stance"],
        "support"
    );
    assert_eq!(json(&w.r, &expert)["status"], "listed");
    assert_eq!(
        json(&w.r, "factsheets/EUROPOL")["contacts"],
        "ops@example.eu"
    );
    // The list summaries read the same documents.
    let summary = |id: &str| {
        let id: DocId = id.parse().unwrap();
        spoc_node::docs::view::summary(&id, w.r.doc(&id).unwrap())
    };
    let m = summary(&meeting);
    assert_eq!(m["presidency"], "IE");
    assert_eq!(m["attendance"], 2);
    let proposers: Vec<&serde_json::Value> = m["agenda"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["proposer"])
        .collect();
    assert_eq!(proposers.len(), 2);
    assert!(proposers.contains(&&serde_json::json!("LT")));
    let o = summary(&obstacle);
    assert_eq!(o["endorsements"][0]["state"], "LT");
    assert_eq!(o["comments"], 1);
    assert_eq!(summary(&expert)["assessments"], 2);

    // Another node, given the same entries newest first, accepts every one of them.
    let mut other = w.net.replica();
    let mut all: Vec<SignedEntry> = Vec::new();
    for log in w.r.heights().into_keys() {
        all.extend(w.r.log_entries(&log).unwrap());
    }
    all.reverse();
    let report = other.ingest(all.clone()).unwrap();
    assert_accepted(&report, all.len());
    assert_eq!(other.pending_count(), 0);
    assert_eq!(state(&other), state(&w.r));
    assert!(entries.iter().all(|e| other.contains(&e.hash()).unwrap()));
}

#[test]
fn refused_entries_leave_documents_and_heights_unchanged() {
    let mut w = World::new();
    let ulid = w.ulid();
    let stranger = LogId {
        author: w.net.key("FI").public(),
        incarnation: 42,
    };
    let bad = vec![
        craft_command(
            &w.r,
            w.net.key("LT"),
            INC,
            &convene("Rival", "2026-12-20"),
            NOW,
            ulid,
        ),
        craft_command(
            &w.r,
            w.net.key("EUROPOL"),
            INC,
            &Command::ObstacleEndorse {
                obstacle: w.obstacle.clone(),
                stance: "support".into(),
                note: None,
            },
            NOW,
            ulid,
        ),
        w.entry(
            "FI",
            &DocId::factsheet("FI"),
            craft_change(None, stranger, |tx, _| {
                tx.put(ROOT, "notes", "x").unwrap();
            }),
        )
        .sign(w.net.key("FI"), &w.net.scope()),
        craft(
            &w.r,
            w.net.key("EL"),
            INC,
            &w.doc(&w.expert),
            NOW,
            |tx, _| {
                tx.put(ROOT, "status", "listed").unwrap();
            },
        ),
    ];
    let before = state(&w.r);
    let entries = w.r.entry_count();
    let report = w.r.ingest(bad.clone()).unwrap();
    assert!(report.accepted.is_empty());
    assert!(report.touched.is_empty());
    assert!(!report.rebuilt);
    let mut reasons: Vec<&str> = report.rejected.iter().map(|(_, i)| i.reason()).collect();
    reasons.sort();
    assert_eq!(reasons, ["actor_mismatch", "rule", "rule", "rule"]);
    assert_eq!(state(&w.r), before);
    assert_eq!(w.r.entry_count(), entries);
    assert_eq!(w.r.pending_count(), 0);
    // Sent again, they are refused again, with the same verdicts.
    let again = w.r.ingest(bad).unwrap();
    assert_eq!(again.rejected, report.rejected);
    assert_eq!(state(&w.r), before);
}

/// The author's signature over `entry`'s body with the identity point as its `R`, a
/// small-order point that strict verification refuses: only the author's key can make it.
fn small_order_signature(entry: &SignedEntry, key: &SecretKey, scope: &Scope) -> SignedEntry {
    let a = ed25519_dalek::SigningKey::from_bytes(&key.seed_bytes()).to_scalar();
    let mut r = [0u8; 32];
    r[0] = 1;
    let mut message = r.to_vec();
    message.extend_from_slice(key.public().as_bytes());
    message.extend_from_slice(scope.entry_domain().as_bytes());
    message.push(0);
    message.extend_from_slice(entry.body());
    // s = H(R || A || M) * a, so that [s]B = R + [H(R || A || M)]A with R the identity.
    let s = mod_l(a, &sha512(&message)) * a;
    let mut bytes = entry.bytes().to_vec();
    let n = bytes.len();
    bytes[n - 64..n - 32].copy_from_slice(&r);
    bytes[n - 32..].copy_from_slice(&s.to_bytes());
    SignedEntry::decode(&bytes).expect("decodes")
}

/// A little-endian 512-bit number reduced modulo the group order, in the scalar type of
/// `_like`.
fn mod_l<S>(_like: S, bytes: &[u8; 64]) -> S
where
    S: From<u16> + Copy + std::ops::Mul<Output = S> + std::ops::Add<Output = S>,
{
    let base = S::from(256);
    bytes
        .iter()
        .rev()
        .fold(S::from(0), |acc, b| acc * base + S::from(u16::from(*b)))
}

/// SHA-512 (FIPS 180-4), which no dependency of the crate exposes.
fn sha512(message: &[u8]) -> [u8; 64] {
    const K: [u64; 80] = [
        0x428a2f98d728ae22,
        0x7137449123ef65cd,
        0xb5c0fbcfec4d3b2f,
        0xe9b5dba58189dbbc,
        0x3956c25bf348b538,
        0x59f111f1b605d019,
        0x923f82a4af194f9b,
        0xab1c5ed5da6d8118,
        0xd807aa98a3030242,
        0x12835b0145706fbe,
        0x243185be4ee4b28c,
        0x550c7dc3d5ffb4e2,
        0x72be5d74f27b896f,
        0x80deb1fe3b1696b1,
        0x9bdc06a725c71235,
        0xc19bf174cf692694,
        0xe49b69c19ef14ad2,
        0xefbe4786384f25e3,
        0x0fc19dc68b8cd5b5,
        0x240ca1cc77ac9c65,
        0x2de92c6f592b0275,
        0x4a7484aa6ea6e483,
        0x5cb0a9dcbd41fbd4,
        0x76f988da831153b5,
        0x983e5152ee66dfab,
        0xa831c66d2db43210,
        0xb00327c898fb213f,
        0xbf597fc7beef0ee4,
        0xc6e00bf33da88fc2,
        0xd5a79147930aa725,
        0x06ca6351e003826f,
        0x142929670a0e6e70,
        0x27b70a8546d22ffc,
        0x2e1b21385c26c926,
        0x4d2c6dfc5ac42aed,
        0x53380d139d95b3df,
        0x650a73548baf63de,
        0x766a0abb3c77b2a8,
        0x81c2c92e47edaee6,
        0x92722c851482353b,
        0xa2bfe8a14cf10364,
        0xa81a664bbc423001,
        0xc24b8b70d0f89791,
        0xc76c51a30654be30,
        0xd192e819d6ef5218,
        0xd69906245565a910,
        0xf40e35855771202a,
        0x106aa07032bbd1b8,
        0x19a4c116b8d2d0c8,
        0x1e376c085141ab53,
        0x2748774cdf8eeb99,
        0x34b0bcb5e19b48a8,
        0x391c0cb3c5c95a63,
        0x4ed8aa4ae3418acb,
        0x5b9cca4f7763e373,
        0x682e6ff3d6b2b8a3,
        0x748f82ee5defb2fc,
        0x78a5636f43172f60,
        0x84c87814a1f0ab72,
        0x8cc702081a6439ec,
        0x90befffa23631e28,
        0xa4506cebde82bde9,
        0xbef9a3f7b2c67915,
        0xc67178f2e372532b,
        0xca273eceea26619c,
        0xd186b8c721c0c207,
        0xeada7dd6cde0eb1e,
        0xf57d4f7fee6ed178,
        0x06f067aa72176fba,
        0x0a637dc5a2c898a6,
        0x113f9804bef90dae,
        0x1b710b35131c471b,
        0x28db77f523047d84,
        0x32caab7b40c72493,
        0x3c9ebe0a15c9bebc,
        0x431d67c49c100d4c,
        0x4cc5d4becb3e42b6,
        0x597f299cfc657e2a,
        0x5fcb6fab3ad6faec,
        0x6c44198c4a475817,
    ];
    let mut h: [u64; 8] = [
        0x6a09e667f3bcc908,
        0xbb67ae8584caa73b,
        0x3c6ef372fe94f82b,
        0xa54ff53a5f1d36f1,
        0x510e527fade682d1,
        0x9b05688c2b3e6c1f,
        0x1f83d9abfb41bd6b,
        0x5be0cd19137e2179,
    ];
    let mut data = message.to_vec();
    data.push(0x80);
    while data.len() % 128 != 112 {
        data.push(0);
    }
    data.extend_from_slice(&(message.len() as u128 * 8).to_be_bytes());
    for block in data.chunks(128) {
        let mut w = [0u64; 80];
        for (i, word) in block.chunks(8).enumerate() {
            w[i] = u64::from_be_bytes(word.try_into().expect("8 bytes"));
        }
        for i in 16..80 {
            let s0 = w[i - 15].rotate_right(1) ^ w[i - 15].rotate_right(8) ^ (w[i - 15] >> 7);
            let s1 = w[i - 2].rotate_right(19) ^ w[i - 2].rotate_right(61) ^ (w[i - 2] >> 6);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..80 {
            let s1 = e.rotate_right(14) ^ e.rotate_right(18) ^ e.rotate_right(41);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(28) ^ a.rotate_right(34) ^ a.rotate_right(39);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 64];
    for (chunk, word) in out.chunks_mut(8).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// A signature's verdict must not depend on the other entries of its batch. Today a batch
/// that passes `verify_batch` (cofactorless, with no small-order check on `R`) is not
/// re-checked, while a batch that fails is re-checked entry by entry with `verify_strict`:
/// an author can sign an entry that nodes accept or refuse depending on what arrived with
/// it, and their documents then differ for good.
#[test]
fn a_signatures_verdict_does_not_depend_on_its_batch() {
    let mut w = World::new();
    let (honest, _) =
        w.r.prepare(
            w.net.key("LT"),
            INC,
            &set_factsheet("notes", "LT SPOC"),
            NOW,
            ulid::Ulid::from_parts(NOW, 1),
        )
        .expect("prepare");
    assert_eq!(
        hex::encode(&sha512(b"abc")[..8]),
        "ddaf35a193617aba",
        "the test's SHA-512"
    );
    let odd = small_order_signature(&honest, w.net.key("LT"), &w.net.scope());
    assert_eq!(odd.entry, honest.entry);
    assert_eq!(
        odd.verify_signature(&w.net.scope()),
        Err(Invalid::BadSignature)
    );
    let (other, _) =
        w.r.prepare(
            w.net.key("FI"),
            INC,
            &set_factsheet("notes", "FI SPOC"),
            NOW,
            ulid::Ulid::from_parts(NOW, 2),
        )
        .expect("prepare");
    let forged = SignedEntry::decode(&flip_byte(&other, signature_offset(&other))).unwrap();

    // Node P receives the entry alone; node Q with an entry whose signature is broken.
    let mut p = World::new().r;
    let mut q = World::new().r;
    let alone = p.ingest(vec![odd.clone()]).unwrap();
    let with_forged = q.ingest(vec![odd.clone(), forged]).unwrap();
    assert_eq!(
        p.contains(&odd.hash()).unwrap(),
        q.contains(&odd.hash()).unwrap(),
        "alone: accepted {}; in a batch with a forged entry: {:?}",
        alone.accepted.len(),
        with_forged.rejected
    );
}

/// The objects that a refused change makes do not exist for the changes judged after it in
/// the same batch. Lithuania signs a refused endorsement (a bad stance) that makes its
/// endorsement map, then a second change for the same seq that writes into that map
/// without making it: no node has the map, so every node must refuse the second change,
/// whether the two arrive together or apart.
#[test]
fn a_refused_changes_objects_do_not_exist_for_the_rest_of_its_batch() {
    let w = World::new();
    let obstacle = w.doc(&w.obstacle);
    let lt = w.net.key("LT");
    let refused = craft(&w.r, lt, INC, &obstacle, NOW, |tx, doc| {
        let (_, endorsements) = doc.get(ROOT, "endorsements").unwrap().unwrap();
        let mine = tx.put_object(&endorsements, "LT", ObjType::Map).unwrap();
        tx.put(&mine, "stance", "bogus").unwrap();
    });
    let change = automerge::Change::from_bytes(refused.entry.change.clone()).unwrap();
    let mut expanded = automerge::ExpandedChange::from(&change);
    assert_eq!(expanded.operations.len(), 2);
    assert!(matches!(
        expanded.operations[0].action,
        automerge::legacy::OpType::Make(_)
    ));
    // The same change without the op that makes the map, its put (now of a good stance)
    // keeping its op id.
    expanded.operations.remove(0);
    expanded.operations[0].action = automerge::legacy::OpType::Put("support".into());
    expanded.start_op = expanded.start_op.checked_add(1).unwrap();
    expanded.hash = None;
    let orphan_change = automerge::Change::from(expanded).bytes().into_owned();
    let orphan = w
        .entry("LT", &obstacle, orphan_change)
        .sign(lt, &w.net.scope());
    // Within a batch, entries of one log and seq are judged in hash order: make the refused
    // one come first.
    let refused = (0..)
        .map(|ms| {
            let mut e = refused.entry.clone();
            e.timestamp_ms += ms;
            e.sign(lt, &w.net.scope())
        })
        .find(|e| e.hash() < orphan.hash())
        .unwrap();

    let mut apart = World::new().r;
    let first = apart.ingest(vec![refused.clone()]).unwrap();
    assert_eq!(
        first.rejected,
        vec![(
            refused.hash(),
            Invalid::Rule("a stance is support, object or abstain".into())
        )]
    );
    let second = apart.ingest(vec![orphan.clone()]).unwrap();
    assert!(
        matches!(&second.rejected[..], [(h, Invalid::Rule(m))] if *h == orphan.hash() && m.starts_with("operation on unknown object")),
        "{second:?}"
    );

    let mut together = World::new().r;
    let before = state(&together);
    let report = together.ingest(vec![orphan.clone(), refused.clone()]);
    let report = report.expect("a peer's entries never make ingest fail");
    assert!(!together.contains(&orphan.hash()).unwrap(), "{report:?}");
    assert_eq!(report.rejected.len(), 2, "{report:?}");
    assert_eq!(state(&together), before);
    assert_eq!(state(&together), state(&apart));
}

/// A way to break a well-formed Automerge change.
type Alter = Box<dyn Fn(&mut automerge::ExpandedChange)>;

/// Lithuania's own edit of its obstacle's description, altered by `alter` after the fact
/// and signed: what a hostile node could send. Returns the replica and the entry.
fn altered_edit(alter: &Alter) -> (Replica, SignedEntry) {
    let net = Net::new(21);
    let mut r = net.replica();
    let mut ulids = Ulids::new(22);
    let lt = net.key("LT");
    let (_, id) = write(
        &mut r,
        lt,
        INC,
        &report_obstacle("Slow"),
        NOW,
        ulids.next(NOW),
    );
    let doc: DocId = id.parse().expect("a document id");
    let edit = craft(&r, lt, INC, &doc, NOW, |tx, d| {
        let (_, text) = d
            .get(ROOT, "description")
            .expect("get")
            .expect("a description");
        tx.splice_text(&text, 0, 1, "Z").expect("splice");
    });
    let change = automerge::Change::from_bytes(edit.entry.change.clone()).expect("a change");
    let mut expanded = automerge::ExpandedChange::from(&change);
    alter(&mut expanded);
    expanded.hash = None;
    let bytes = automerge::Change::from(expanded).bytes().into_owned();
    let entry = next_entry(&r, lt, INC, &doc, NOW, bytes).sign(lt, &r.charter().scope());
    (r, entry)
}

/// A change that Automerge would refuse to build must be refused, never applied: applying
/// it panics inside Automerge (an insert after an element that does not exist), or breaks
/// the op order that Automerge relies on (op ids not after the change's dependencies, a
/// debug assertion, and silent disorder in a release build). Such an entry from one
/// hostile participant takes down every node that receives it.
#[test]
fn a_malformed_automerge_change_is_refused_not_applied() {
    let variants: [(&str, Alter); 2] = [
        (
            "an insert after an element that does not exist",
            Box::new(|x| {
                let actor = x.actor_id.clone();
                for op in &mut x.operations {
                    if op.insert {
                        op.key = automerge::legacy::Key::Seq(automerge::legacy::ElementId::Id(
                            automerge::legacy::OpId::new(999, &actor),
                        ));
                    }
                }
            }),
        ),
        (
            "op ids before those of its dependencies",
            Box::new(|x| x.start_op = std::num::NonZeroU64::new(1).unwrap()),
        ),
    ];
    for (case, alter) in variants {
        let (mut r, entry) = altered_edit(&alter);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.ingest(vec![entry.clone()])
        }));
        let report = outcome
            .unwrap_or_else(|_| panic!("{case}: ingest panicked"))
            .unwrap_or_else(|e| panic!("{case}: ingest failed: {e}"));
        assert!(!r.contains(&entry.hash()).unwrap(), "{case}: accepted");
        assert_eq!(report.rejected.len(), 1, "{case}");
    }
}
