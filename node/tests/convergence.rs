//! Replicas converge whatever the order: five authors, each on its own replica that only
//! sometimes syncs with another, make realistic concurrent writes to all five
//! collections; fresh replicas then take in every signed entry shuffled, with duplicates,
//! in batches of random sizes, and all reach the same documents and log heights, with
//! nothing refused and nothing left pending.

mod common;

use std::sync::LazyLock;

use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use spoc_node::docs::DocId;
use spoc_node::docs::command::{Command, FACTSHEET_FIELDS, Refused};
use spoc_node::log::SignedEntry;
use spoc_node::replica::Replica;

static NET: LazyLock<Net> = LazyLock::new(|| Net::new(2024));

/// What an author knows how to write to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Meeting,
    Obstacle,
    Practice,
    Expert,
    Opportunity,
}

#[derive(Debug)]
struct Author {
    code: &'static str,
    incarnation: u32,
    replica: Replica,
}

/// The generator's state: the authors, every item made so far, the clock and every entry
/// signed.
struct Script {
    authors: Vec<Author>,
    items: Vec<(Item, DocId)>,
    now: u64,
    ulids: Ulids,
    entries: Vec<SignedEntry>,
    /// Writes made without some earlier write to the same document: concurrent ones.
    concurrent: usize,
}

/// The kinds of write, by the number of `Script::command`; edits of existing items come
/// twice as often as creations, so that several authors work on the same items.
const KINDS: [u8; 29] = [
    0, 1, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 13, 13, 14, 14, 15, 16, 17,
    18, 18,
];
const STANCES: [&str; 3] = ["support", "object", "abstain"];

impl Script {
    /// A script whose authors share a past: a meeting, an obstacle, a practice and an
    /// expert, which every author has received.
    fn new(seed: u64) -> Script {
        let authors = CODES
            .iter()
            .enumerate()
            .map(|(i, code)| Author {
                code,
                incarnation: 100 + i as u32,
                replica: NET.replica(),
            })
            .collect();
        let mut script = Script {
            authors,
            items: Vec::new(),
            now: NOW + 9 * 3_600_000,
            ulids: Ulids::new(seed),
            entries: Vec::new(),
            concurrent: 0,
        };
        for (author, kind) in [(0, 0), (2, 7), (3, 12), (1, 16)] {
            assert!(script.write(author, kind, seed as u8));
        }
        for a in 0..CODES.len() {
            for from in 0..CODES.len() {
                script.sync(a, from);
            }
        }
        script
    }

    /// One step: `who` either pulls what another author has, or writes.
    fn step(&mut self, who: u8, action: u8, param: u8) {
        let a = usize::from(who) % self.authors.len();
        self.now += 1 + u64::from(param) * 1_000;
        if action.is_multiple_of(4) {
            self.sync(a, usize::from(param) % self.authors.len());
            return;
        }
        // Try the chosen kind of write, then the next ones, until one is possible.
        let first = usize::from(action / 4);
        let wrote =
            (0..KINDS.len()).any(|k| self.write(a, KINDS[(first + k) % KINDS.len()], param));
        assert!(wrote, "reporting an obstacle is always possible");
    }

    /// Author `a` receives what author `from` has.
    fn sync(&mut self, a: usize, from: usize) {
        if from == a {
            return;
        }
        let entries = missing(&self.authors[from].replica, &self.authors[a].replica);
        let report = self.authors[a]
            .replica
            .ingest_verified(entries)
            .expect("ingest");
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    }

    /// Author `a` makes a write of `kind`; returns false if it has nothing to write it to.
    fn write(&mut self, a: usize, kind: u8, param: u8) -> bool {
        let Some((command, item)) = self.command(a, kind, param) else {
            return false;
        };
        let author = &mut self.authors[a];
        let ulid = self.ulids.next(self.now);
        let key = NET.key(author.code);
        let entry = match author
            .replica
            .prepare(key, author.incarnation, &command, self.now, ulid)
        {
            Ok((entry, id)) => {
                if let Some(item) = item {
                    self.items.push((item, id.parse().expect("an id")));
                }
                entry
            }
            // Setting what is already set is a no-op, not a write.
            Err(Refused::Invalid(why)) if why == "nothing to change" => return true,
            Err(e) => panic!("{} could not write {command:?}: {e}", author.code),
        };
        let unseen = self.entries.iter().any(|e| {
            e.entry.doc == entry.entry.doc && !author.replica.contains(&e.hash()).expect("contains")
        });
        if unseen {
            self.concurrent += 1;
        }
        let report = author
            .replica
            .ingest_verified(vec![entry.clone()])
            .expect("ingest");
        assert_accepted(&report, 1);
        self.entries.push(entry);
        true
    }

    /// Items of `kind` that author `a` has received, optionally only its own.
    fn known(&self, a: usize, kind: Item, own: bool) -> Vec<DocId> {
        let author = &self.authors[a];
        self.items
            .iter()
            .filter(|(k, id)| {
                *k == kind
                    && author.replica.doc(id).is_some()
                    && (!own || id.owner() == author.code)
            })
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// One of the three latest items of `kind` that author `a` has received.
    fn pick(&self, a: usize, kind: Item, own: bool, param: u8) -> Option<DocId> {
        let known = self.known(a, kind, own);
        let latest = &known[known.len().saturating_sub(3)..];
        latest
            .get(usize::from(param) % latest.len().max(1))
            .cloned()
    }

    /// The command of `kind` that author `a` could make now, and what it creates.
    fn command(&self, a: usize, kind: u8, p: u8) -> Option<(Command, Option<Item>)> {
        let author = &self.authors[a];
        let code = author.code;
        let r = &author.replica;
        let is_state = code != "EUROPOL";
        let text = |what: &str| format!("{what} {p} by {code}");
        let write = |c: Command| Some((c, None));
        let create = |c: Command, item: Item| Some((c, Some(item)));
        match kind {
            0 => {
                let date = match code {
                    "IE" => format!("2026-12-{:02}", 10 + p % 20),
                    "LT" => format!("2027-0{}-10", 1 + p % 6),
                    "EL" => format!("2027-{:02}-10", 7 + p % 6),
                    "FI" => format!("2028-0{}-10", 1 + p % 6),
                    _ => return None,
                };
                create(convene(&text("Meeting"), &date), Item::Meeting)
            }
            1 => {
                let meeting = self
                    .known(a, Item::Meeting, false)
                    .into_iter()
                    .filter(|m| root_str(r, m, "status").as_deref() == Some("convened"))
                    .nth(usize::from(p) % 3)?;
                write(Command::MeetingPropose {
                    meeting: meeting.to_string(),
                    title: text("Item"),
                    description: p.is_multiple_of(2).then(|| text("Why")),
                })
            }
            2 => {
                let meeting = self.pick(a, Item::Meeting, true, p)?;
                let agenda = root_keys(r, &meeting, "agenda");
                let item = agenda.get(usize::from(p) % agenda.len().max(1))?.clone();
                let decision = ["accepted", "deferred", "rejected"][usize::from(p) % 3];
                write(Command::MeetingDecide {
                    meeting: meeting.to_string(),
                    item,
                    decision: decision.into(),
                    reason: (decision == "rejected").then(|| text("Reason")),
                })
            }
            3 => write(Command::MeetingAttend {
                meeting: self.pick(a, Item::Meeting, false, p)?.to_string(),
                present: !p.is_multiple_of(3),
                delegates: Some(u32::from(p % 4)),
            }),
            4 => {
                let meeting = self.pick(a, Item::Meeting, true, p)?;
                let agenda = root_keys(r, &meeting, "agenda");
                write(Command::MeetingMinutes {
                    meeting: meeting.to_string(),
                    text: text("Minutes"),
                    item: agenda.get(usize::from(p) % (agenda.len() + 1)).cloned(),
                })
            }
            5 => {
                let meeting = self.pick(a, Item::Meeting, true, p)?;
                let statuses = spoc_node::docs::rules::MEETING_STATUSES;
                let now = root_str(r, &meeting, "status")?;
                let at = statuses.iter().position(|s| *s == now)?;
                write(Command::MeetingStatus {
                    meeting: meeting.to_string(),
                    status: (*statuses.get(at + 1)?).into(),
                })
            }
            6 => write(Command::MeetingComment {
                meeting: self.pick(a, Item::Meeting, false, p)?.to_string(),
                text: text("Comment"),
                item: None,
            }),
            7 => create(report_obstacle(&text("Obstacle")), Item::Obstacle),
            8 => {
                let obstacle = self.pick(a, Item::Obstacle, true, p)?.to_string();
                write(if p.is_multiple_of(2) {
                    Command::ObstacleEdit {
                        obstacle,
                        title: Some(text("Title")),
                        description: None,
                        solution: None,
                    }
                } else {
                    Command::ObstacleEdit {
                        obstacle,
                        title: None,
                        description: Some(text("Replies take months, then weeks")),
                        solution: Some(text("Solution")),
                    }
                })
            }
            9 if is_state => write(Command::ObstacleEndorse {
                obstacle: self.pick(a, Item::Obstacle, false, p)?.to_string(),
                stance: STANCES[usize::from(p) % 3].into(),
                note: (p % 2 == 1).then(|| text("Note")),
            }),
            10 => write(Command::ObstacleComment {
                obstacle: self.pick(a, Item::Obstacle, false, p)?.to_string(),
                text: text("Comment"),
            }),
            11 => {
                // Ireland is the Presidency: it moves any obstacle on; a reporter may
                // withdraw its own or propose a solution.
                let (obstacle, status) = if code == "IE" {
                    let statuses = [
                        "triaged",
                        "on_agenda",
                        "solution_proposed",
                        "endorsed",
                        "escalated",
                        "resolved",
                        "closed_no_action",
                    ];
                    (
                        self.pick(a, Item::Obstacle, false, p)?,
                        statuses[usize::from(p) % statuses.len()],
                    )
                } else {
                    (
                        self.pick(a, Item::Obstacle, true, p)?,
                        ["withdrawn", "solution_proposed", "reported"][usize::from(p) % 3],
                    )
                };
                let reference = matches!(status, "resolved" | "closed_no_action").then(|| {
                    let meeting = self.pick(a, Item::Meeting, false, p).map_or_else(
                        || "meetings/IE/01KB0000000000000000000000".into(),
                        |m| m.to_string(),
                    );
                    format!("{meeting}#IE-{p}")
                });
                write(Command::ObstacleStatus {
                    obstacle: obstacle.to_string(),
                    status: status.into(),
                    reference,
                })
            }
            12 => create(share_practice(&text("Practice")), Item::Practice),
            13 if is_state => write(Command::PracticeEndorse {
                practice: self.pick(a, Item::Practice, false, p)?.to_string(),
                stance: STANCES[usize::from(p) % 3].into(),
            }),
            14 => write(Command::PracticeComment {
                practice: self.pick(a, Item::Practice, false, p)?.to_string(),
                text: text("Comment"),
            }),
            15 => {
                let field = FACTSHEET_FIELDS[usize::from(p) % FACTSHEET_FIELDS.len()];
                write(set_factsheet(field, &text("Value")))
            }
            16 => create(nominate(&text("Expert")), Item::Expert),
            17 => create(
                Command::TrainingOpportunity {
                    title: text("Course"),
                    date: format!("2027-0{}-01", 1 + p % 9),
                    description: text("A week of"),
                },
                Item::Opportunity,
            ),
            18 if CORE.contains(&code) => write(Command::TrainingAssess {
                item: self.pick(a, Item::Expert, false, p)?.to_string(),
                verdict: ["assessed", "listed", "retired"][usize::from(p) % 3].into(),
                note: p.is_multiple_of(2).then(|| text("Note")),
            }),
            _ => None,
        }
    }
}

/// Ingests `entries` into a fresh replica, shuffled, with random duplicates, in batches
/// of 1 to 8, and returns the replica. Signatures are checked when `verify` is set.
fn replay(entries: &[SignedEntry], rng: &mut ChaCha20Rng, verify: bool) -> Replica {
    let mut order = entries.to_vec();
    order.shuffle(rng);
    let duplicates = rng.random_range(0..=entries.len() / 2);
    for _ in 0..duplicates {
        let e = entries.choose(rng).expect("entries").clone();
        order.insert(rng.random_range(0..=order.len()), e);
    }
    let mut replica = NET.replica();
    let mut seen_duplicates = 0;
    let mut rest = order.as_slice();
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at(rng.random_range(1..=rest.len().min(8)));
        let report = if verify {
            replica.ingest(batch.to_vec())
        } else {
            replica.ingest_verified(batch.to_vec())
        }
        .expect("ingest");
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        assert!(report.new_proofs.is_empty());
        assert_eq!(report.overflow, 0);
        seen_duplicates += report.duplicates;
        rest = tail;
    }
    assert_eq!(
        seen_duplicates, duplicates,
        "each duplicate is counted once"
    );
    assert_eq!(replica.pending_count(), 0);
    assert_eq!(replica.entry_count(), entries.len());
    replica
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 500,
        rng_seed: RngSeed::Fixed(0x5eed_c0de),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_converge_whatever_the_order_of_arrival(
        steps in vec((any::<u8>(), any::<u8>(), any::<u8>()), 10..32),
        seed in any::<u64>(),
    ) {
        let mut script = Script::new(seed);
        for (who, action, param) in steps {
            script.step(who, action, param);
        }
        let entries = std::mem::take(&mut script.entries);
        prop_assert!(!entries.is_empty());

        // Three fresh replicas. Signatures are checked in the coverage test below: in a
        // debug build each check costs milliseconds, and honest signatures pass in any
        // batch.
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let reference = state(&replay(&entries, &mut rng, false));
        for _ in 0..2 {
            let other = state(&replay(&entries, &mut rng, false));
            prop_assert_eq!(&other, &reference);
        }
        prop_assert!(reference.heights.len() >= 4);
        prop_assert!(reference.docs.len() >= 4);
        for (log, height) in &reference.heights {
            let signed = entries.iter().filter(|e| e.entry.log() == *log).count();
            prop_assert_eq!(*height, signed as u64);
        }

        // An author's own replica, which saw the writes in yet another order and wrote
        // some of them, agrees too once it has everything.
        let author = &mut script.authors[(seed % 5) as usize];
        author.replica.ingest_verified(entries.clone()).expect("ingest");
        prop_assert_eq!(author.replica.pending_count(), 0);
        prop_assert_eq!(&state(&author.replica), &reference);
    }
}

/// The generator really makes concurrent writes across all five collections: over a
/// fixed sample of scripts, every collection is written, several authors write to one
/// document, and some writes do not see writes that were made before them. These
/// replays check every signature, and every author's replica converges.
#[test]
fn the_generator_covers_every_collection_and_makes_concurrent_writes() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut collections = std::collections::BTreeSet::new();
    let mut shared_docs = 0;
    let mut concurrent = 0;
    let mut total = 0;
    let mut unseen = 0;
    for seed in 0..20 {
        let mut script = Script::new(seed);
        for _ in 0..40 {
            script.step(rng.random(), rng.random(), rng.random());
        }
        total += script.entries.len();
        unseen += script.concurrent;
        let replica = replay(&script.entries, &mut rng, true);
        let reference = state(&replica);
        for author in &mut script.authors {
            author
                .replica
                .ingest_verified(script.entries.clone())
                .expect("ingest");
            assert_eq!(state(&author.replica), reference);
        }
        for (id, doc) in replica.docs() {
            collections.insert(id.collection());
            let authors: std::collections::BTreeSet<_> = script
                .entries
                .iter()
                .filter(|e| &e.entry.doc == id)
                .map(|e| e.entry.author)
                .collect();
            if authors.len() > 1 {
                shared_docs += 1;
            }
            // Heads that no change merged yet, or a change that merged concurrent ones.
            let merged = doc.get_changes(&[]).iter().any(|c| c.deps().len() > 1);
            if doc.get_heads().len() > 1 || merged {
                concurrent += 1;
            }
        }
    }
    assert_eq!(collections.len(), 5, "{collections:?}");
    assert!(
        shared_docs >= 40,
        "{shared_docs} documents with several authors"
    );
    assert!(
        concurrent >= 30,
        "{concurrent} documents with concurrent changes"
    );
    assert!(
        unseen * 4 >= total,
        "{unseen} of {total} writes did not see an earlier write to their document"
    );
}
