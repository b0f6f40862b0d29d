//! An author that signs two different entries for one seq of one log (same key, same
//! incarnation) is caught and cut the same way everywhere: whichever entry a replica saw
//! first, it makes the same checkable proof, cuts the log before the forked seq, refuses
//! the log's later entries, and ends with the same documents; a proof handed to another
//! replica cuts it the same way, and forged proofs are refused.

mod common;

use common::*;
use spoc_node::docs::DocId;
use spoc_node::docs::command::{Command, Refused};
use spoc_node::log::{EquivocationProof, Invalid, LogId, SignedEntry};
use spoc_node::replica::{Replica, Report};

const IE: u32 = 1;
/// The incarnation that both of Lithuania's nodes use: the fork.
const LT: u32 = 7;
const EL: u32 = 3;
const FI: u32 = 4;

/// Lithuania's two nodes sign seq 3 from the same past: `branch_a` comments on its own
/// obstacle, `branch_b` retitles it. Greece builds on branch b.
struct Scenario {
    net: Net,
    /// Every author's entries before the fork.
    past: Vec<SignedEntry>,
    branch_a: SignedEntry,
    branch_b: SignedEntry,
    /// Lithuania's seq 4, after branch a.
    later: SignedEntry,
    /// Entries of Ireland and Finland that do not depend on the fork.
    others: Vec<SignedEntry>,
    /// Greece's comment on the obstacle, made after it received branch b, then its fact sheet.
    built_on_b: Vec<SignedEntry>,
    /// Greece's own node.
    el_node: Replica,
    obstacle: String,
}

impl Scenario {
    fn new() -> Scenario {
        let net = Net::new(5);
        let mut ulids = Ulids::new(6);
        let mut origin = net.replica();
        let mut past = Vec::new();
        let mut go = |r: &mut Replica, code: &str, inc: u32, command: Command, at: u64| {
            write(r, net.key(code), inc, &command, at, ulids.next(at))
        };
        let (e, meeting) = go(&mut origin, "IE", IE, convene("Plenary", "2026-12-10"), NOW);
        past.push(e);
        let (e, obstacle) = go(&mut origin, "LT", LT, report_obstacle("Slow replies"), NOW);
        past.push(e);
        let endorse = Command::ObstacleEndorse {
            obstacle: obstacle.clone(),
            stance: "support".into(),
            note: None,
        };
        past.push(go(&mut origin, "EL", EL, endorse, NOW + MINUTE).0);
        let propose = Command::MeetingPropose {
            meeting: meeting.clone(),
            title: "PNR".into(),
            description: None,
        };
        let (e, item) = go(&mut origin, "LT", LT, propose, NOW + MINUTE);
        past.push(e);

        let mut node_a = replica_with(&net, &past);
        let mut node_b = replica_with(&net, &past);
        let comment = Command::ObstacleComment {
            obstacle: obstacle.clone(),
            text: "branch a".into(),
        };
        let (branch_a, _) = go(&mut node_a, "LT", LT, comment, NOW + 2 * MINUTE);
        let retitle = Command::ObstacleEdit {
            obstacle: obstacle.clone(),
            title: Some("branch b".into()),
            description: None,
            solution: None,
        };
        let (branch_b, _) = go(&mut node_b, "LT", LT, retitle, NOW + 2 * MINUTE);
        assert_eq!((branch_a.entry.seq, branch_b.entry.seq), (3, 3));
        assert_eq!(branch_a.entry.prev, branch_b.entry.prev);
        assert_ne!(branch_a.hash(), branch_b.hash());
        let notes = set_factsheet("notes", "after the fork");
        let (later, _) = go(&mut node_a, "LT", LT, notes, NOW + 3 * MINUTE);

        let mut other = replica_with(&net, &past);
        let decide = Command::MeetingDecide {
            meeting,
            item,
            decision: "accepted".into(),
            reason: None,
        };
        let others = vec![
            go(&mut other, "IE", IE, decide, NOW + 2 * MINUTE).0,
            go(
                &mut other,
                "FI",
                FI,
                report_obstacle("Forms"),
                NOW + 2 * MINUTE,
            )
            .0,
            go(
                &mut other,
                "FI",
                FI,
                set_factsheet("notes", "FI"),
                NOW + 3 * MINUTE,
            )
            .0,
        ];

        let mut el_node = replica_with(&net, &past);
        assert_accepted(&el_node.ingest(vec![branch_b.clone()]).expect("ingest"), 1);
        let comment = Command::ObstacleComment {
            obstacle: obstacle.clone(),
            text: "Agree with the new title".into(),
        };
        let built_on_b = vec![
            go(&mut el_node, "EL", EL, comment, NOW + 3 * MINUTE).0,
            go(
                &mut el_node,
                "EL",
                EL,
                set_factsheet("notes", "EL"),
                NOW + 4 * MINUTE,
            )
            .0,
        ];
        Scenario {
            net,
            past,
            branch_a,
            branch_b,
            later,
            others,
            built_on_b,
            el_node,
            obstacle,
        }
    }

    fn lt(&self) -> LogId {
        self.net.log("LT", LT)
    }

    /// A replica holding everything that does not depend on the fork.
    fn base(&self) -> Replica {
        let mut r = replica_with(&self.net, &self.past);
        assert_accepted(
            &r.ingest(self.others.clone()).expect("ingest"),
            self.others.len(),
        );
        r
    }
}

/// A fresh replica that ingested `entries` and accepted them all.
fn replica_with(net: &Net, entries: &[SignedEntry]) -> Replica {
    let mut r = net.replica();
    assert_accepted(&r.ingest(entries.to_vec()).expect("ingest"), entries.len());
    r
}

/// The one proof a report brings, after checking that it is the only one.
fn only_proof(report: &Report) -> EquivocationProof {
    assert_eq!(report.new_proofs.len(), 1, "{report:?}");
    assert!(report.rebuilt);
    report.new_proofs[0].clone()
}

#[test]
fn both_orders_of_arrival_give_the_same_proof_and_the_same_cut() {
    let s = Scenario::new();

    // X sees branch a first, with the log's later entry, then branch b and what built on it.
    let mut x = s.base();
    assert_accepted(
        &x.ingest(vec![s.branch_a.clone(), s.later.clone()]).unwrap(),
        2,
    );
    assert_eq!(x.heights()[&s.lt()], 4);
    let report_x = x.ingest(vec![s.branch_b.clone()]).unwrap();
    let proof_x = only_proof(&report_x);
    assert!(report_x.accepted.is_empty());
    // The rebuild drops the log's entries from the fork on.
    for e in [&s.branch_a, &s.later] {
        assert!(
            report_x
                .rejected
                .contains(&(e.hash(), Invalid::Equivocated { seq: 3 })),
            "{report_x:?}"
        );
    }
    let report = x.ingest(s.built_on_b.clone()).unwrap();
    assert!(report.accepted.is_empty() && report.rejected.is_empty());

    // Y sees branch b first, and what built on it, then the rest, branch a last.
    let mut y = replica_with(&s.net, &s.past);
    assert_accepted(&y.ingest(vec![s.branch_b.clone()]).unwrap(), 1);
    assert_accepted(&y.ingest(s.built_on_b.clone()).unwrap(), 2);
    assert_accepted(&y.ingest(s.others.clone()).unwrap(), 3);
    let report_y = y.ingest(vec![s.later.clone(), s.branch_a.clone()]).unwrap();
    let proof_y = only_proof(&report_y);

    // The same proof, checkable by anyone holding the charter, and it survives the wire.
    assert_eq!(proof_x, proof_y);
    let proof = proof_x;
    assert_eq!(proof.verify(&s.net.charter), Ok(()));
    assert_eq!((proof.log(), proof.seq()), (s.lt(), 3));
    let mut pair = [proof.a.hash(), proof.b.hash()];
    pair.sort();
    let mut branches = [s.branch_a.hash(), s.branch_b.hash()];
    branches.sort();
    assert_eq!(pair, branches);
    let decoded = EquivocationProof::decode(&proof.encode()).expect("decodes");
    assert_eq!(decoded, proof);
    assert_eq!(decoded.id(), proof.id());
    assert_eq!(decoded.verify(&s.net.charter), Ok(()));
    assert_eq!(x.proofs().cloned().collect::<Vec<_>>(), vec![proof.clone()]);
    assert_eq!(y.proofs().cloned().collect::<Vec<_>>(), vec![proof]);

    // The same verdict: Lithuania's log ends before the fork, Greece's entries that built
    // on branch b wait, and the documents are equal.
    assert_eq!(x.heights()[&s.lt()], 2);
    assert_eq!(x.heights()[&s.net.log("EL", EL)], 1);
    assert_eq!(state(&x), state(&y));
    assert_eq!(x.pending_count(), s.built_on_b.len());
    assert_eq!(y.pending_count(), s.built_on_b.len());
    let obstacle = json(&x, &s.obstacle);
    assert_eq!(obstacle["title"], "Slow replies");
    assert_eq!(obstacle["comments"], serde_json::json!({}));
    assert_eq!(obstacle["endorsements"]["EL"]["stance"], "support");
    assert!(x.doc(&DocId::factsheet("LT")).is_none());
    assert!(x.doc(&DocId::factsheet("EL")).is_none());
    for e in &s.others {
        assert!(x.contains(&e.hash()).unwrap() && y.contains(&e.hash()).unwrap());
    }
}

#[test]
fn a_later_entry_of_a_cut_log_is_refused() {
    let s = Scenario::new();
    let mut x = s.base();
    let report = x
        .ingest(vec![s.branch_a.clone(), s.branch_b.clone()])
        .unwrap();
    only_proof(&report);
    assert_eq!(x.heights()[&s.lt()], 2);
    let before = state(&x);
    for e in [&s.later, &s.branch_a, &s.branch_b] {
        let report = x.ingest(vec![e.clone()]).unwrap();
        assert_eq!(
            report.rejected,
            vec![(e.hash(), Invalid::Equivocated { seq: 3 })]
        );
        assert!(report.new_proofs.is_empty());
    }
    assert_eq!(state(&x), before);

    // Lithuania's node may not extend the cut log; a new incarnation writes normally.
    let mut ulids = Ulids::new(8);
    let notes = set_factsheet("notes", "restarted");
    let refused = x
        .prepare(
            s.net.key("LT"),
            LT,
            &notes,
            NOW + 9 * MINUTE,
            ulids.next(NOW),
        )
        .unwrap_err();
    assert_eq!(
        refused,
        Refused::Invalid(
            "this log is cut by an equivocation proof: restart the node for a new incarnation"
                .into()
        )
    );
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(3);
    let fresh = x.fresh_incarnation(&s.net.key("LT").public(), &mut rng);
    assert_ne!(fresh, LT);
    let (entry, _) = write(
        &mut x,
        s.net.key("LT"),
        fresh,
        &notes,
        NOW + 9 * MINUTE,
        ulids.next(NOW),
    );
    assert_eq!(entry.entry.seq, 1);
    assert_eq!(json(&x, "factsheets/LT")["notes"], "restarted");
}

#[test]
fn a_proof_cuts_a_replica_that_accepted_one_branch_the_same_way() {
    let s = Scenario::new();
    let mut x = s.base();
    let proof = only_proof(
        &x.ingest(vec![s.branch_b.clone(), s.branch_a.clone()])
            .unwrap(),
    );
    x.ingest(s.built_on_b.clone()).unwrap();

    // Z has only branch a and the later entry; the proof alone cuts it.
    let mut z = s.base();
    assert_accepted(
        &z.ingest(vec![s.branch_a.clone(), s.later.clone()]).unwrap(),
        2,
    );
    let report = z.add_proofs(vec![proof.clone()]).unwrap();
    assert_eq!(only_proof(&report), proof);
    assert!(
        report
            .rejected
            .contains(&(s.later.hash(), Invalid::Equivocated { seq: 3 }))
    );
    assert_eq!(z.heights()[&s.lt()], 2);
    let expected = state(&x);
    assert_eq!(z.ingest(s.built_on_b.clone()).unwrap().accepted.len(), 0);
    assert_eq!(state(&z), expected);
    // A second time, the proof is known and changes nothing.
    let again = z.add_proofs(vec![proof.clone()]).unwrap();
    assert!(again.new_proofs.is_empty() && !again.rebuilt);

    // W received the proof before either branch: both branches are refused on arrival.
    let mut w = s.base();
    only_proof(&w.add_proofs(vec![proof]).unwrap());
    let report = w
        .ingest(vec![
            s.later.clone(),
            s.branch_a.clone(),
            s.branch_b.clone(),
        ])
        .unwrap();
    assert_eq!(report.rejected.len(), 3);
    assert!(
        report
            .rejected
            .iter()
            .all(|(_, i)| *i == Invalid::Equivocated { seq: 3 })
    );
    w.ingest(s.built_on_b.clone()).unwrap();
    assert_eq!(state(&w), expected);
}

#[test]
fn forged_proofs_are_refused() {
    let s = Scenario::new();
    let charter = &s.net.charter;
    let genuine = EquivocationProof::new(s.branch_a.clone(), s.branch_b.clone());
    assert_eq!(genuine.verify(charter), Ok(()));

    let tampered = SignedEntry::decode(&flip_byte(&s.branch_a, s.branch_a.bytes().len() - 64))
        .expect("decodes");
    let forged = EquivocationProof::new(tampered, s.branch_b.clone());
    assert_eq!(
        forged.verify(charter),
        Err("a signature does not verify".into())
    );

    // LT's seq 2 and its seq 3 are two entries of one log, but not of one seq.
    let seq_two = s
        .past
        .iter()
        .find(|e| e.entry.log() == s.lt() && e.entry.seq == 2)
        .expect("LT's seq 2")
        .clone();
    let different_seqs = EquivocationProof::new(seq_two, s.branch_a.clone());
    assert_eq!(
        different_seqs.verify(charter),
        Err("the two entries are not of the same log and seq".into())
    );
    // Seq 1 of two logs of the same author.
    let mut ulids = Ulids::new(9);
    let mut other_log = s.net.replica();
    let (first_of_8, _) = write(
        &mut other_log,
        s.net.key("LT"),
        LT + 1,
        &set_factsheet("notes", "incarnation 8"),
        NOW,
        ulids.next(NOW),
    );
    let seq_one = s.past[1].clone();
    assert_eq!((seq_one.entry.log(), seq_one.entry.seq), (s.lt(), 1));
    let two_logs = EquivocationProof::new(seq_one, first_of_8);
    assert_eq!(
        two_logs.verify(charter),
        Err("the two entries are not of the same log and seq".into())
    );

    let same = EquivocationProof {
        a: s.branch_a.clone(),
        b: s.branch_a.clone(),
    };
    assert_eq!(
        same.verify(charter),
        Err("the two entries are the same, or out of order".into())
    );
    let swapped = EquivocationProof {
        a: genuine.b.clone(),
        b: genuine.a.clone(),
    };
    assert_eq!(
        swapped.verify(charter),
        Err("the two entries are the same, or out of order".into())
    );
    // Under another network's charter, Lithuania is not a participant.
    let stranger = Net::new(77);
    assert_eq!(
        genuine.verify(&stranger.charter),
        Err("the author is not a participant".into())
    );

    // A replica given the forged proofs ignores them.
    let mut x = s.base();
    assert_accepted(&x.ingest(vec![s.branch_a.clone()]).unwrap(), 1);
    let before = state(&x);
    let report = x
        .add_proofs(vec![forged, different_seqs, two_logs, same, swapped])
        .unwrap();
    assert!(report.new_proofs.is_empty() && !report.rebuilt);
    assert_eq!(x.proofs().count(), 0);
    assert_eq!(state(&x), before);

    // Malformed encodings do not decode.
    let bytes = genuine.encode();
    assert!(EquivocationProof::decode(&bytes[..bytes.len() - 1]).is_err());
    assert!(EquivocationProof::decode(&[&bytes[..], &[0]].concat()).is_err());
    assert!(EquivocationProof::decode(b"").is_err());
}

/// Greece built on branch b in good faith. When its own node learns of the fork, its
/// entries that built on branch b can never be accepted; its node must not sign a second,
/// different entry for their seqs, or Greece would equivocate in turn.
#[test]
fn an_author_that_built_on_a_cut_branch_is_not_made_to_equivocate() {
    let mut s = Scenario::new();
    let el = s.net.log("EL", EL);
    assert_eq!(s.el_node.heights()[&el], 3);
    only_proof(&s.el_node.ingest(vec![s.branch_a.clone()]).unwrap());
    assert_eq!(s.el_node.heights()[&el], 1);
    assert_eq!(s.el_node.pending_count(), 2);

    let mut ulids = Ulids::new(10);
    let notes = set_factsheet("notes", "EL again");
    match s.el_node.prepare(
        s.net.key("EL"),
        EL,
        &notes,
        NOW + 9 * MINUTE,
        ulids.next(NOW),
    ) {
        Err(Refused::Invalid(why)) => assert!(why.contains("new incarnation"), "{why}"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok((entry, _)) => {
            // Show what goes wrong: a node holding both of Greece's seq 2 entries proves
            // that Greece equivocated.
            let mut y = s.base();
            y.ingest(vec![s.branch_b.clone()]).unwrap();
            y.ingest(s.built_on_b.clone()).unwrap();
            let report = y.ingest(vec![entry.clone()]).unwrap();
            panic!(
                "Greece's node signed seq {} again; a peer holding both makes {} proof(s) against Greece",
                entry.entry.seq,
                report.new_proofs.len()
            );
        }
    }
    // With a new incarnation, Greece writes again.
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(4);
    let fresh = s
        .el_node
        .fresh_incarnation(&s.net.key("EL").public(), &mut rng);
    let (entry, _) = write(
        &mut s.el_node,
        s.net.key("EL"),
        fresh,
        &notes,
        NOW + 9 * MINUTE,
        ulids.next(NOW),
    );
    assert_eq!(entry.entry.seq, 1);
}
