//! A document's owner cannot hide the other states' contributions by making a shared
//! container again. A change with no dependencies, from a new incarnation, may make
//! `endorsements`, `comments`, `agenda` or `attendance` anew with a higher operation
//! counter, and its empty map then wins the Automerge conflict. The views show the union
//! of every copy, on every node whatever the order it received them in, and later writes
//! still reach the items in the losing copy.

mod common;

use std::num::NonZeroU64;

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT};
use common::*;
use spoc_node::docs::command::Command;
use spoc_node::docs::{DocId, view};
use spoc_node::log::SignedEntry;
use spoc_node::replica::Replica;

const INC: u32 = 1;
/// The incarnation from which the owner makes the containers again.
const ATTACK: u32 = 2;

/// A change by `code`'s incarnation `ATTACK` with no dependencies that makes each of
/// `containers` at the root of `doc` again (and puts `extra`), its operation counter set far
/// above anything the document holds, signed as the first entry of that log.
fn recreate(
    net: &Net,
    replica: &Replica,
    code: &str,
    doc: &DocId,
    containers: &[&str],
    extra: &[(&str, &str)],
) -> SignedEntry {
    let change = craft_change(None, net.log(code, ATTACK), |tx, _| {
        for container in containers {
            tx.put_object(ROOT, *container, ObjType::Map)
                .expect("a map");
        }
        for (key, value) in extra {
            tx.put(ROOT, *key, *value).expect("a put");
        }
    });
    let change = automerge::Change::from_bytes(change).expect("a change");
    let mut expanded = change.decode();
    assert!(expanded.deps.is_empty());
    expanded.start_op = NonZeroU64::new(1_000).expect("non-zero");
    let mut change = automerge::Change::from(expanded);
    let key = net.key(code);
    next_entry(replica, key, ATTACK, doc, NOW, change.bytes().into_owned()).sign(key, &net.scope())
}

/// A second node that receives the attack before everything `a` holds, and checks that
/// it ends with the same documents as `a`.
fn took_the_attack_first(net: &Net, a: &Replica) -> Replica {
    let mut b = net.replica();
    let mut entries = missing(a, &b);
    let attack = entries
        .iter()
        .position(|e| e.entry.incarnation == ATTACK)
        .expect("the attack");
    let attack = entries.remove(attack);
    entries.insert(0, attack);
    let n = entries.len();
    assert_accepted(&b.ingest(entries).expect("ingest"), n);
    assert_eq!(state(a).docs, state(&b).docs);
    b
}

fn endorse(obstacle: &str, stance: &str) -> Command {
    Command::ObstacleEndorse {
        obstacle: obstacle.to_owned(),
        stance: stance.to_owned(),
        note: None,
    }
}

#[test]
fn a_recreated_endorsements_or_comments_map_hides_nothing_on_any_node() {
    let net = Net::new(21);
    let mut a = net.replica();
    let mut ulids = Ulids::new(22);
    let (_, obstacle) = write(
        &mut a,
        net.key("EL"),
        INC,
        &report_obstacle("Slow replies"),
        NOW,
        ulids.next(NOW),
    );
    write(
        &mut a,
        net.key("FI"),
        INC,
        &endorse(&obstacle, "support"),
        NOW,
        ulids.next(NOW),
    );
    let (_, comment) = write(
        &mut a,
        net.key("IE"),
        INC,
        &Command::ObstacleComment {
            obstacle: obstacle.clone(),
            text: "Seen in our cases too".into(),
        },
        NOW + MINUTE,
        ulids.next(NOW + MINUTE),
    );
    let id: DocId = obstacle.parse().expect("an id");

    let attack = recreate(&net, &a, "EL", &id, &["endorsements", "comments"], &[]);
    let report = a.ingest(vec![attack]).expect("ingest");
    assert_accepted(&report, 1);
    // The owner's empty copies win the conflict: a view of the winning values alone would
    // show no endorsement and no comment.
    assert!(root_keys(&a, &id, "endorsements").is_empty());
    assert!(root_keys(&a, &id, "comments").is_empty());

    let b = took_the_attack_first(&net, &a);

    for replica in [&a, &b] {
        let doc = json(replica, &obstacle);
        assert_eq!(doc["endorsements"]["FI"]["stance"], "support", "{doc}");
        assert_eq!(doc["comments"][&comment]["author"], "IE", "{doc}");
        let summary = view::summary(&id, replica.doc(&id).expect("the obstacle"));
        assert_eq!(
            summary["endorsements"],
            serde_json::json!([{"state": "FI", "stance": "support"}])
        );
        assert_eq!(summary["comments"], 1);
    }

    // Later endorsements go to the winning copy, and a state that endorsed in the losing
    // copy changes its stance where the views read it.
    write(
        &mut a,
        net.key("LT"),
        INC,
        &endorse(&obstacle, "object"),
        NOW + 2 * MINUTE,
        ulids.next(NOW + 2 * MINUTE),
    );
    write(
        &mut a,
        net.key("FI"),
        INC,
        &endorse(&obstacle, "abstain"),
        NOW + 2 * MINUTE,
        ulids.next(NOW + 2 * MINUTE),
    );
    let doc = json(&a, &obstacle);
    assert_eq!(doc["endorsements"]["LT"]["stance"], "object", "{doc}");
    assert_eq!(doc["endorsements"]["FI"]["stance"], "abstain", "{doc}");
    assert_eq!(doc["comments"][&comment]["text"], "Seen in our cases too");
}

#[test]
fn a_recreated_agenda_or_attendance_map_hides_nothing_and_its_items_can_still_be_decided() {
    let net = Net::new(23);
    let mut a = net.replica();
    let mut ulids = Ulids::new(24);
    let (_, meeting) = write(
        &mut a,
        net.key("IE"),
        INC,
        &convene("Plenary", "2026-12-10"),
        NOW,
        ulids.next(NOW),
    );
    let (_, item) = write(
        &mut a,
        net.key("LT"),
        INC,
        &Command::MeetingPropose {
            meeting: meeting.clone(),
            title: "Response times".into(),
            description: None,
        },
        NOW,
        ulids.next(NOW),
    );
    write(
        &mut a,
        net.key("FI"),
        INC,
        &Command::MeetingAttend {
            meeting: meeting.clone(),
            present: true,
            delegates: Some(2),
        },
        NOW,
        ulids.next(NOW),
    );
    let id: DocId = meeting.parse().expect("an id");

    let attack = recreate(
        &net,
        &a,
        "IE",
        &id,
        &["agenda", "attendance"],
        &[("date", "2026-12-10")],
    );
    assert_accepted(&a.ingest(vec![attack]).expect("ingest"), 1);
    assert!(root_keys(&a, &id, "agenda").is_empty());

    let b = took_the_attack_first(&net, &a);
    for replica in [&a, &b] {
        let doc = json(replica, &meeting);
        assert_eq!(doc["agenda"][&item]["title"], "Response times", "{doc}");
        assert_eq!(doc["attendance"]["FI"]["delegates"], 2, "{doc}");
        let summary = view::summary(&id, replica.doc(&id).expect("the meeting"));
        assert_eq!(summary["attendance"], 1);
        assert_eq!(summary["agenda"][0]["id"], item.as_str());
    }

    // The Presidency still decides on the item in the losing copy, and FI still changes its
    // own attendance there.
    write(
        &mut a,
        net.key("IE"),
        INC,
        &Command::MeetingDecide {
            meeting: meeting.clone(),
            item: item.clone(),
            decision: "accepted".into(),
            reason: None,
        },
        NOW + MINUTE,
        ulids.next(NOW + MINUTE),
    );
    write(
        &mut a,
        net.key("FI"),
        INC,
        &Command::MeetingAttend {
            meeting: meeting.clone(),
            present: true,
            delegates: Some(3),
        },
        NOW + MINUTE,
        ulids.next(NOW + MINUTE),
    );
    let doc = json(&a, &meeting);
    assert_eq!(doc["agenda"][&item]["status"], "accepted", "{doc}");
    assert_eq!(doc["attendance"]["FI"]["delegates"], 3, "{doc}");
}
