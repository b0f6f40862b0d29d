//! A first end-to-end pass through the core: write, ingest, read back.

use std::sync::Arc;

use rand::SeedableRng;
use spoc_node::docs::command::Command;
use spoc_node::replica::{Limits, Replica};
use spoc_node::testnet;
use time::macros::date;

const NOW: u64 = 1_764_547_200_000; // 2025-12-01

#[test]
fn convene_propose_report_endorse() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let today = date!(2026 - 12 - 01);
    let now = (today.midnight().assume_utc().unix_timestamp() as u64) * 1000;
    let _ = NOW;
    let (charter, keys) =
        testnet::fixture(&["IE", "LT", "EL", "EUROPOL"], &["IE"], today, &mut rng).unwrap();
    let mut r = Replica::new(Arc::new(charter), Limits::default());
    let mut ulids = (1u128..).map(ulid::Ulid::from);
    let (e, id) = r
        .prepare(
            &keys["IE"],
            1,
            &Command::MeetingConvene {
                title: "Heads of SPOC".into(),
                date: "2026-12-10".into(),
                venue: "Dublin".into(),
                format: None,
                end_date: None,
                number: Some(1),
            },
            now,
            ulids.next().unwrap(),
        )
        .unwrap();
    let rep = r.ingest(vec![e]).unwrap();
    assert_eq!(rep.accepted.len(), 1, "{rep:?}");
    let (e, _) = r
        .prepare(
            &keys["LT"],
            7,
            &Command::MeetingPropose {
                meeting: id.clone(),
                title: "PNR".into(),
                description: None,
            },
            now,
            ulids.next().unwrap(),
        )
        .unwrap();
    assert_eq!(r.ingest(vec![e]).unwrap().accepted.len(), 1);
    let err = r
        .prepare(
            &keys["LT"],
            7,
            &Command::MeetingConvene {
                title: "x".into(),
                date: "2026-12-10".into(),
                venue: "V".into(),
                format: None,
                end_date: None,
                number: None,
            },
            now,
            ulids.next().unwrap(),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "only the Presidency (IE) may convene a meeting"
    );
    let (e, ob) = r
        .prepare(
            &keys["EL"],
            3,
            &Command::ObstacleReport {
                title: "Slow replies".into(),
                kind: "legal".into(),
                description: "Art. 4 delays".into(),
                subtype: None,
                instrument: None,
                article: None,
                channel: None,
                states_concerned: vec!["LT".into()],
                impact: Some(3),
                solution: None,
            },
            now,
            ulids.next().unwrap(),
        )
        .unwrap();
    assert_eq!(r.ingest(vec![e]).unwrap().accepted.len(), 1);
    let (e, _) = r
        .prepare(
            &keys["LT"],
            7,
            &Command::ObstacleEndorse {
                obstacle: ob.clone(),
                stance: "support".into(),
                note: None,
            },
            now,
            ulids.next().unwrap(),
        )
        .unwrap();
    assert_eq!(r.ingest(vec![e]).unwrap().accepted.len(), 1);
    let err = r
        .prepare(
            &keys["EUROPOL"],
            9,
            &Command::ObstacleEndorse {
                obstacle: ob.clone(),
                stance: "support".into(),
                note: None,
            },
            now,
            ulids.next().unwrap(),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "an observer (EUROPOL) may not endorse");
    let doc = r.doc(&ob.parse().unwrap()).unwrap();
    let v = spoc_node::docs::view::summary(&ob.parse().unwrap(), doc);
    assert_eq!(v["endorsements"][0]["state"], "LT", "{v}");
    let m =
        spoc_node::docs::view::summary(&id.parse().unwrap(), r.doc(&id.parse().unwrap()).unwrap());
    assert_eq!(m["agenda"][0]["proposer"], "LT", "{m}");
}
