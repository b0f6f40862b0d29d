//! The charter amended by quorum: an amendment takes effect once the member states of the
//! version it amends signed it up to that version's threshold, on every node whatever the
//! order in which its entries arrive, and each entry is judged under the version it
//! names.

mod common;

use common::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use spoc_node::charter::{
    Charter, Kind, Participant, Revoked, Term, half_year_label, parse_half_year,
};
use spoc_node::docs::command::Command;
use spoc_node::docs::rules;
use spoc_node::identity::SecretKey;
use spoc_node::log::{Invalid, SignedEntry};
use spoc_node::replica::{Limits, Replica, Report};
use spoc_node::store::Store;
use time::macros::date;

const INC: u32 = 1;

fn propose(text: String) -> Command {
    Command::AmendmentPropose { text }
}

fn sign(amendment: &str) -> Command {
    Command::AmendmentSign {
        amendment: amendment.to_owned(),
    }
}

/// The charter in force with `edit` made to it, as the TOML an operator would propose.
fn amended(replica: &Replica, edit: impl FnOnce(&mut Charter)) -> String {
    let mut charter = (**replica.charter()).clone();
    edit(&mut charter);
    charter.to_toml()
}

fn sweden() -> SecretKey {
    SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(77))
}

fn with_sweden(charter: &mut Charter) {
    charter.participants.push(Participant {
        code: "SE".into(),
        name: "Sweden".into(),
        kind: Kind::MemberState,
        key: Some(sweden().public()),
        addresses: Vec::new(),
    });
}

/// Every entry `replica` holds.
fn history(replica: &Replica) -> Vec<SignedEntry> {
    let empty = Replica::new(replica.charters()[0].clone(), Limits::default());
    missing(replica, &empty)
}

/// A replica with its network and ULIDs, for writes by state code.
struct Council {
    net: Net,
    r: Replica,
    ulids: Ulids,
}

impl Council {
    fn new(seed: u64) -> Council {
        let net = Net::new(seed);
        let r = net.replica();
        Council {
            net,
            r,
            ulids: Ulids::new(seed + 1),
        }
    }

    fn write(&mut self, code: &str, command: &Command) -> (SignedEntry, String) {
        let ulid = self.ulids.next(NOW);
        write(&mut self.r, self.net.key(code), INC, command, NOW, ulid)
    }

    /// The one-line reason a write by `code` is refused.
    fn refused(&mut self, code: &str, command: &Command) -> String {
        let ulid = self.ulids.next(NOW);
        self.r
            .prepare(self.net.key(code), INC, command, NOW, ulid)
            .expect_err("the write is refused")
            .to_string()
    }

    /// What a faulty node of `code` could send: see [`forge`].
    fn forged(&mut self, code: &str, command: &Command, now_ms: u64, version: u32) -> SignedEntry {
        let Council { net, r, ulids } = self;
        forge(r, ulids, net.key(code), command, now_ms, version)
    }

    /// `by` proposes `text`, and each of `signers` signs it; returns the amendment's id.
    fn amend(&mut self, by: &str, text: String, signers: &[&str]) -> String {
        let (_, id) = self.write(by, &propose(text));
        for code in signers {
            self.write(code, &sign(&id));
        }
        id
    }
}

/// The one entry a report refused: its reason and its message.
fn refusal(report: &Report) -> (&'static str, String) {
    match report.rejected.as_slice() {
        [(_, invalid)] => (invalid.reason(), invalid.to_string()),
        other => panic!("not one refusal: {other:?}"),
    }
}

/// What a faulty node could send: the change `command` makes at `now_ms`, signed by `key`
/// in a log of its own without the rule check, and named for charter `version`.
fn forge(
    r: &Replica,
    ulids: &mut Ulids,
    key: &SecretKey,
    command: &Command,
    now_ms: u64,
    version: u32,
) -> SignedEntry {
    let ulid = ulids.next(now_ms);
    let mut entry = craft_command(r, key, INC + 1, command, now_ms, ulid).entry;
    entry.charter = version;
    entry.sign(key, &r.charter().scope())
}

#[test]
fn an_amendment_below_the_threshold_has_no_effect_and_takes_effect_at_it() {
    let mut c = Council::new(41);
    // Four member states: two thirds of four is three signatures.
    assert_eq!(c.r.charter().required_signatures(), 3);
    let text = amended(&c.r, with_sweden);
    let id = c.amend("IE", text, &["LT"]);
    // The observer cannot sign, and two member states are below the threshold.
    let refused = c.refused("EUROPOL", &sign(&id));
    assert!(
        refused.contains("only member states sign amendments"),
        "{refused}"
    );
    assert_eq!(c.r.charter().version, 0);
    assert!(c.r.charter().participant("SE").is_none());

    c.write("EL", &sign(&id));
    assert_eq!(c.r.charter().version, 1);
    assert_eq!(
        c.r.charter().participant("SE").unwrap().kind,
        Kind::MemberState
    );
    assert_eq!(c.r.charter().genesis(), c.r.charters()[0].genesis());
    // Five member states now: the next amendment needs four.
    assert_eq!(c.r.charter().required_signatures(), 4);
    // A signature of a proposal that amended an older version is refused.
    let late = c.refused("FI", &sign(&id));
    assert!(late.contains("must be proposed again"), "{late}");
}

#[test]
fn the_threshold_changes_only_by_an_amendment_that_reaches_the_old_one() {
    let mut c = Council::new(43);
    let text = amended(&c.r, |c| {
        c.amendment_threshold = Some("4/4".parse().unwrap())
    });
    c.amend("FI", text, &["IE", "LT"]);
    assert_eq!(c.r.charter().version, 1);
    assert_eq!(c.r.charter().required_signatures(), 4);
    // A threshold of one half or less would let two amendments of one version both pass.
    let half = amended(&c.r, |c| c.amendment_threshold = None)
        .replace("network = ", "amendment_threshold = \"1/2\"\nnetwork = ");
    let refused = c.refused("FI", &propose(half));
    assert!(refused.contains("above 1/2"), "{refused}");
}

#[test]
fn two_concurrent_amendments_get_the_same_verdict_on_every_node_whatever_the_order() {
    // Three nodes of one network: two propose at the same time, each without the other's
    // proposal.
    let (mut a, mut b, mut c) = (Council::new(45), Council::new(45), Council::new(45));
    let sweden_text = amended(&a.r, with_sweden);
    let core_text = amended(&b.r, |c| c.training_core_group = vec!["EL".into()]);
    let p1 = a.amend("IE", sweden_text, &[]);
    let p2 = b.amend("LT", core_text, &[]);
    a.r.ingest(history(&b.r)).unwrap();
    // A state signs one amendment of each version: LT proposed the other.
    let refused = a.refused("LT", &sign(&p1));
    assert!(
        refused.contains("signs one amendment of each version"),
        "{refused}"
    );
    // EL signs the first on one node, FI on another, both concurrently with the second.
    a.write("EL", &sign(&p1));
    let el = a.net.key("EL").public();
    let without_el: Vec<SignedEntry> = history(&a.r)
        .into_iter()
        .filter(|e| e.entry.author != el)
        .collect();
    c.r.ingest(without_el).unwrap();
    c.write("FI", &sign(&p1));
    let mut all = history(&a.r);
    all.extend(history(&c.r));

    let mut seen = None;
    let mut rng = ChaCha20Rng::seed_from_u64(47);
    for _ in 0..8 {
        all.shuffle(&mut rng);
        let mut node = Council::new(45);
        for e in &all {
            node.r.ingest(vec![e.clone()]).unwrap();
        }
        assert_eq!(node.r.pending_count(), 0);
        let verdict = (node.r.charter().version, node.r.charter().hash());
        assert_eq!(verdict.0, 1);
        assert!(node.r.charter().participant("SE").is_some(), "{p1} carried");
        assert_eq!(*seen.get_or_insert(verdict), verdict);
        // The other amends a version no longer in force: it must be proposed again.
        let stale = node.refused("EL", &sign(&p2));
        assert!(stale.contains("must be proposed again"), "{stale}");
    }
}

#[test]
fn a_state_an_amendment_adds_writes_and_its_entries_wait_on_nodes_without_the_amendment() {
    let mut c = Council::new(48);
    let se = sweden();
    // Before the amendment, its key is no participant's.
    let ulid = c.ulids.next(NOW);
    let early =
        c.r.prepare(&se, INC, &report_obstacle("Too early"), NOW, ulid)
            .expect_err("an outsider cannot write");
    assert!(early.to_string().contains("version 0"), "{early}");

    let text = amended(&c.r, with_sweden);
    c.amend("IE", text, &["LT", "EL"]);
    let amendment = history(&c.r);
    let ulid = c.ulids.next(NOW);
    let (entry, obstacle) = write(
        &mut c.r,
        &se,
        INC,
        &report_obstacle("Sweden's first"),
        NOW + MINUTE,
        ulid,
    );
    assert_eq!(entry.entry.charter, 1);

    // A node that has not seen the amendment holds Sweden's entry back; it neither
    // refuses it nor applies it, and takes it once the amendment comes.
    let mut other = c.net.replica();
    let report = other.ingest(vec![entry.clone()]).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert!(report.accepted.is_empty());
    assert_eq!(other.pending_count(), 1);
    let report = other.ingest(amendment).unwrap();
    assert_eq!(report.accepted.len(), 4, "{report:?}");
    assert_eq!(other.pending_count(), 0);
    assert_eq!(state(&other), state(&c.r));
    assert_eq!(json(&other, &obstacle)["title"], "Sweden's first");

    // An entry by a key that the version it names does not know is refused at once.
    let forged = forge(
        &c.r,
        &mut c.ulids,
        &se,
        &report_obstacle("Under the genesis charter"),
        NOW + MINUTE,
        0,
    );
    let report = c.net.replica().ingest(vec![forged]).unwrap();
    assert_eq!(refusal(&report).0, "unknown_author");
}

#[test]
fn a_state_an_amendment_removes_writes_no_more_and_its_past_entries_stay_valid() {
    let mut c = Council::new(50);
    let (_, obstacle) = c.write("FI", &report_obstacle("Finland's"));
    // As `spoc charter propose` does, the amendment that removes a state also retires its
    // key after everything the proposer holds of it.
    let fi = c.net.key("FI").public();
    let keep = c.r.keep_all(&fi);
    assert_eq!(keep.to_string(), format!("{INC}:1"));
    let text = amended(&c.r, |c| {
        c.revoked.push(Revoked { key: fi, keep });
        c.participants.retain(|p| p.code != "FI");
        c.training_core_group.retain(|s| s != "FI");
        for t in &mut c.presidency {
            if t.state == "FI" {
                t.state = "IE".into();
            }
        }
    });
    c.amend("IE", text, &["LT", "EL"]);
    assert_eq!(c.r.charter().version, 1);
    assert!(c.r.charter().participant("FI").is_none());
    let refused = c.refused("FI", &report_obstacle("After"));
    assert!(refused.contains("rotated or revoked"), "{refused}");
    // Its entry made under version 1 is refused everywhere.
    let late = c.forged("FI", &report_obstacle("Crafted after"), NOW, 1);
    let report = c.r.ingest(vec![late]).unwrap();
    assert_eq!(refusal(&report).0, "unknown_author");
    // Nor does it write on under the version before its removal, which named it.
    let older = c.forged("FI", &report_obstacle("Crafted under version 0"), NOW, 0);
    let report = c.r.ingest(vec![older]).unwrap();
    assert_eq!(refusal(&report).0, "key_retired");
    // Its past stays: a node that starts empty takes in the whole history.
    let mut fresh = c.net.replica();
    let report = fresh.ingest(history(&c.r)).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(fresh.charter().version, 1);
    assert_eq!(json(&fresh, &obstacle)["title"], "Finland's");
}

#[test]
fn an_amendment_extends_the_presidency_calendar_past_2030() {
    let mut c = Council::new(52);
    let (_, obstacle) = c.write("EL", &report_obstacle("Long-lived"));
    let last = c.r.charter().presidency.last().unwrap().to;
    assert!(last < date!(2031 - 01 - 01));
    let text = amended(&c.r, |c| {
        let mut from = last.next_day().unwrap();
        while from <= date!(2031 - 12 - 31) {
            let (_, to) = parse_half_year(&half_year_label(from)).unwrap();
            c.presidency.push(Term {
                state: "LT".into(),
                from,
                to,
            });
            from = to.next_day().unwrap();
        }
    });
    c.amend("IE", text, &["LT", "FI"]);
    let in_2031 = 1_930_000_000_000; // 2031-02-28
    let term =
        c.r.charter()
            .presidency_at(rules::date_of_ms(in_2031).unwrap());
    assert_eq!(term.unwrap().state, "LT");
    let triage = Command::ObstacleStatus {
        obstacle: obstacle.clone(),
        status: "triaged".into(),
        reference: None,
    };
    // Under the genesis charter no one held the Presidency in 2031.
    let old = c.forged("LT", &triage, in_2031, 0);
    let report = c.r.ingest(vec![old]).unwrap();
    let (reason, message) = refusal(&report);
    assert!(
        reason == "rule" && message.contains("Presidency"),
        "{message}"
    );
    let ulid = c.ulids.next(in_2031);
    write(&mut c.r, c.net.key("LT"), INC, &triage, in_2031, ulid);
    assert_eq!(json(&c.r, &obstacle)["status"], "triaged");
}

#[test]
fn a_reopened_store_holds_the_version_in_force_and_verifies() {
    let mut c = Council::new(54);
    let text = amended(&c.r, with_sweden);
    c.amend("IE", text, &["LT", "EL"]);
    c.write("FI", &report_obstacle("Under version 1"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = Store::open(&path).unwrap();
        let mut node = store
            .load(c.net.charter.clone(), Limits::default(), &mut |_, _, _| {})
            .unwrap();
        let report = node.ingest(history(&c.r)).unwrap();
        assert_eq!(report.accepted.len(), 4, "pending {}", node.pending_count());
        store.commit(&node, &report).unwrap();
        node.flush();
        assert_eq!(node.charter().version, 1);
    }
    let store = Store::open(&path).unwrap();
    let node = store
        .load(c.net.charter.clone(), Limits::default(), &mut |_, _, _| {})
        .unwrap();
    assert_eq!(node.charter().version, 1);
    assert_eq!(node.charter().hash(), c.r.charter().hash());
    let (entries, _) = store
        .verify(c.net.charter.clone(), &mut |_, _, _| {})
        .unwrap();
    assert_eq!(entries, 4);
}

fn key(seed: u64) -> SecretKey {
    SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

#[test]
fn a_state_rotates_its_key_writes_on_and_a_node_that_starts_empty_verifies_it_all() {
    let mut c = Council::new(60);
    let old = c.net.key("IE").public();
    let new = key(61);
    let (before, _) = c.write("IE", &report_obstacle("Before the rotation"));
    let rotation = c.r.rotation(&old, INC, &new.public());
    let (rotated, _) = c.write("IE", &rotation);
    // The new key writes in a log of its own, as the state it was rotated for.
    let ulid = c.ulids.next(NOW);
    let (after, obstacle) = write(
        &mut c.r,
        &new,
        INC + 1,
        &report_obstacle("After the rotation"),
        NOW + MINUTE,
        ulid,
    );
    assert_eq!(after.entry.flags, spoc_node::log::FLAG_ROTATED_KEY);
    assert_eq!(json(&c.r, &obstacle)["title"], "After the rotation");
    assert_eq!(obstacle.split('/').nth(1), Some("IE"));

    // The old key signs nothing more: its node refuses, and every node refuses what it
    // signs after the rotation, in its log or in a new one.
    let refused = c.refused("IE", &report_obstacle("Old key"));
    assert!(refused.contains("rotated or revoked"), "{refused}");
    for incarnation in [INC, INC + 5] {
        let ulid = c.ulids.next(NOW);
        let late = craft_command(
            &c.r,
            c.net.key("IE"),
            incarnation,
            &report_obstacle("Late"),
            NOW,
            ulid,
        );
        let report = c.r.ingest(vec![late]).unwrap();
        assert_eq!(refusal(&report).0, "key_retired");
        assert!(!report.rejected[0].1.blames_sender());
    }

    // A node that starts empty takes in the whole history, whatever the order; one that
    // gets the new key's entry first holds it back until the rotation comes.
    let mut all = history(&c.r);
    let mut rng = ChaCha20Rng::seed_from_u64(62);
    for _ in 0..4 {
        all.shuffle(&mut rng);
        let mut fresh = Council::new(60);
        let report = fresh.r.ingest(all.clone()).unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        assert_eq!(state(&fresh.r), state(&c.r));
    }
    let mut fresh = Council::new(60);
    let report = fresh.r.ingest(vec![after.clone()]).unwrap();
    assert!(report.rejected.is_empty() && report.accepted.is_empty());
    assert_eq!(fresh.r.pending_count(), 1);
    let report = fresh
        .r
        .ingest(vec![before.clone(), rotated.clone()])
        .unwrap();
    assert_eq!(report.accepted.len(), 3, "{:?}", report.rejected);
    // An unknown key that claims no rotation is refused at once, as before.
    let stranger = key(63);
    let ulid = c.ulids.next(NOW);
    let mut forged = craft_command(
        &c.r,
        &stranger,
        INC,
        &report_obstacle("Stranger"),
        NOW,
        ulid,
    )
    .entry;
    forged.flags = 0;
    let report = fresh
        .r
        .ingest(vec![forged.sign(&stranger, &c.net.scope())])
        .unwrap();
    assert_eq!(refusal(&report).0, "unknown_author");
}

#[test]
fn a_rotation_keeps_the_entry_that_makes_it() {
    let mut c = Council::new(64);
    let old = c.net.key("LT").public();
    let new = key(65);
    // A rotation whose points leave out its own entry would undo itself when cut.
    let bad = Command::KeyRotate {
        key: new.public().to_string(),
        from: old.to_string(),
        keep: String::new(),
    };
    let refused = c.refused("LT", &bad);
    assert!(
        refused.contains("keep the entry that makes it"),
        "{refused}"
    );
    // Nor may it be signed with a key other than the one it retires.
    let other = Command::KeyRotate {
        key: new.public().to_string(),
        from: c.net.key("IE").public().to_string(),
        keep: format!("{INC}:1"),
    };
    let refused = c.refused("LT", &other);
    assert!(
        refused.contains("signed with the key it retires"),
        "{refused}"
    );
}

#[test]
fn a_key_revoked_from_a_point_is_cut_on_every_node_whatever_the_order() {
    let mut c = Council::new(66);
    let compromised = c.net.key("LT").public();
    let replacement = key(67);
    // LT writes three entries; the last two are the attacker's. Europol comments on the
    // attacker's obstacle, which builds on it. (A cut takes the rest of a log with it, as
    // after an equivocation: a signer whose log built on the cut entries would lose its
    // signature with them.)
    let (_, honest) = c.write("LT", &report_obstacle("Honest"));
    let (_, forged) = c.write("LT", &report_obstacle("Forged"));
    c.write("LT", &set_factsheet("notes", "Forged too"));
    c.write(
        "EUROPOL",
        &Command::ObstacleComment {
            obstacle: forged.clone(),
            text: "We see this too".into(),
        },
    );
    let before_revocation = history(&c.r);

    let text = amended(&c.r, |ch| {
        for p in &mut ch.participants {
            if p.code == "LT" {
                p.key = Some(replacement.public());
            }
        }
        ch.revoked.push(Revoked {
            key: compromised,
            keep: format!("{INC}:1").parse().unwrap(),
        });
    });
    let id = c.amend("IE", text, &["EL"]);
    // The last signature carries the revocation: the node that made it cuts LT's two
    // later entries, and Europol's comment that builds on them, as it takes it in.
    let ulid = c.ulids.next(NOW);
    let (last, _) =
        c.r.prepare(c.net.key("FI"), INC, &sign(&id), NOW, ulid)
            .unwrap();
    let report = c.r.ingest(vec![last]).unwrap();
    assert_eq!(report.accepted.len(), 1);
    assert_eq!(report.removed.len(), 3, "{:?}", report.removed);
    assert!(report.rejected.iter().all(|(_, i)| !i.blames_sender()));
    assert_eq!(c.r.charter().version, 1);
    // Node A held the entries before the revocation came: it cuts them, and what built
    // on them.
    assert_eq!(json(&c.r, &honest)["title"], "Honest");
    assert!(c.r.doc(&forged.parse().unwrap()).is_none());
    let a = state(&c.r);
    // Node B gets the revocation first, then the entries: the same documents.
    let all = history(&c.r);
    let revocation: Vec<SignedEntry> = all
        .iter()
        .filter(|e| !before_revocation.contains(e))
        .cloned()
        .collect();
    let mut b = Council::new(66);
    // B holds LT's first entry, which the revocation keeps.
    b.r.ingest(before_revocation[..1].to_vec()).unwrap();
    b.r.ingest(revocation).unwrap();
    assert_eq!(b.r.charter().version, 1);
    let report = b.r.ingest(before_revocation.clone()).unwrap();
    assert!(
        report
            .rejected
            .iter()
            .all(|(_, i)| matches!(i, Invalid::KeyRetired { .. }) && !i.blames_sender()),
        "{:?}",
        report.rejected
    );
    assert_eq!(b.r.pending_count(), 1, "the comment waits for what was cut");
    assert_eq!(state(&b.r), a);
    // The state writes on with its replacement key.
    let ulid = c.ulids.next(NOW);
    write(
        &mut c.r,
        &replacement,
        INC,
        &report_obstacle("After"),
        NOW,
        ulid,
    );
}
