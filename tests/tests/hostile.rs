//! Hostile peers against real `spoc-node` processes.
//!
//! Each test lays out a three-state testnet and starts the nodes of the first two states
//! (A, the Presidency, and B). The hostile peer (`spoc_tests::hostile`) is a real libp2p
//! node in the test process, built on `spoc_node::network`, so it speaks admission, gossip
//! and pull sync exactly as a node does. When it needs a valid node certificate it issues
//! one with the third state's national key while that state's own node stays down: a
//! compromised participant.
//!
//! The scenarios: a peer with another charter, peers without a valid certificate, invalid
//! entries pushed by gossip and served to the nodes' pulls, an oversized sync request, a
//! flood of sync requests, an equivocation, replayed entries, a peer that withholds its
//! answers, and a sustained flood of certified flooders and raw dials. Every wait is on an
//! event, a log line or `/v1/wait`, with a timeout. The tests run one at a time, so that
//! timings are not skewed by each other.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use serde_json::Value;
use spoc_node::charter::Charter;
use spoc_node::docs::command::Command;
use spoc_node::identity::{NodeCertificate, SecretKey};
use spoc_node::log::SignedEntry;
use spoc_node::network::{MAX_PENDING_INCOMING, PeerId, SyncRequest, SyncResponse};
use spoc_node::reconcile::{self, Body, Item, Key};
use spoc_node::replica::{Limits, Replica};
use spoc_tests::hostile::*;
use spoc_tests::silent::Silent;

/// The nodes' sync frame limit (`network::Config::new`'s default).
const NODE_FRAME_BYTES: usize = 8 * 1024 * 1024;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn a_peer_with_another_charter_gets_nothing_and_is_refused() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    // The network module's debug lines show each connection opening and closing.
    let mut net = Net::start_with(&[("SPOC_LOG_LEVEL", "info,spoc_node::network=debug")])?;

    // Peers running an amended charter (one core group member fewer), with an otherwise
    // valid certificate.
    let mut amended = Charter::parse(&net.charter.to_toml())?;
    amended.training_core_group.pop();
    let other = Charter::parse(&amended.to_toml())?.hash();
    ensure!(
        other != net.charter.hash(),
        "the amended charter has the same hash"
    );
    // Both sides check the charter hash, and the first to read the other's hangs up: when
    // the peer is first, the node never reads its hash and has nothing to refuse. So fresh
    // peers try until each node has refused one itself.
    let mut peers = Vec::new();
    let mut refusals = [0u64; 2];
    let mut hung_up = 0;
    for (i, node_id) in [net.a_id, net.b_id].into_iter().enumerate() {
        for _ in 0..10 {
            let mut config = net.rogue_config(&[i])?;
            config.charter_hash = other;
            let h = net.spawn(config, SyncResponse::default())?;
            let node = if i == 0 { &mut net.a } else { &mut net.b };
            match admission_outcome(node, &h.id)? {
                Some(line) => {
                    ensure!(line.contains("different charter hash"), "{line}");
                    refusals[i] += 1;
                }
                None => hung_up += 1,
            }
            let pulled = h.sync(&net.rt, node_id, SyncRequest::default());
            assert!(
                pulled.is_err(),
                "a peer of another charter synced: {pulled:?}"
            );
            peers.push(h);
            if refusals[i] > 0 {
                break;
            }
        }
    }
    for (i, node) in [&net.a, &net.b].into_iter().enumerate() {
        let s = status(node)?;
        assert_eq!(
            refusals[i],
            count(&s, "refused_peers", "different charter hash")
        );
        assert!(refusals[i] > 0, "the node never refused a peer itself: {s}");
        assert!(
            peers.iter().all(|h| !lists(&s, &h.id)),
            "a peer is listed: {s}"
        );
    }

    // An entry written after the refusals reaches B, and none of the refused peers.
    let ack = net.a.write(&report("After the refusal"))?;
    net.b.wait_entries(&[hash(&ack)], WAIT)?;
    let mut own = 0;
    for h in &mut peers {
        assert_eq!(h.gossip_from(&net.a_id) + h.gossip_from(&net.b_id), 0);
        own += h.history_of(|s| {
            matches!(s, Seen::Refused(p, r) if [net.a_id, net.b_id].contains(p) && r.contains("charter"))
        });
    }
    eprintln!(
        "another charter: {} peers; refused by A {}, by B {}; hung up first {hung_up}; the peers refused the nodes {own} times; {:?}",
        peers.len(),
        refusals[0],
        refusals[1],
        started.elapsed()
    );
    Ok(())
}

#[test]
fn peers_without_a_valid_certificate_get_nothing_and_are_refused() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    let mut net = Net::start()?;
    let stranger = SecretKey::generate(&mut rand::rng());
    let mut peers = Vec::new();
    for case in ["garbage", "stranger", "stolen"] {
        let keypair = fresh_keypair()?;
        let own = keypair.public().to_peer_id().to_bytes();
        let (certificate, reason) = match case {
            "garbage" => (
                b"not a node certificate".to_vec(),
                "malformed node certificate",
            ),
            // Signed by a key that is no participant's.
            "stranger" => (
                NodeCertificate::issue(
                    &stranger,
                    &net.charter.network,
                    &net.charter.scope(),
                    &own,
                    now_ms() + 3_600_000,
                )
                .encode(),
                "certificate issuer is not a participant of the charter",
            ),
            // A participant's genuine certificate, issued for another peer id.
            _ => (
                net.certify(&fresh_keypair()?),
                "certificate names another peer id",
            ),
        };
        let config = net.config(keypair, certificate, &[0, 1])?;
        let h = net.spawn(config, SyncResponse::default())?;
        refused_log(&mut net.a, &h.id, reason)?;
        refused_log(&mut net.b, &h.id, reason)?;
        for (node, id) in [(&net.a, net.a_id), (&net.b, net.b_id)] {
            let s = status(node)?;
            let refusals: u64 = s["refused_peers"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(r, _)| r.contains(reason))
                .filter_map(|(_, n)| n.as_u64())
                .sum();
            assert_eq!(refusals, 1, "{case}: {s}");
            assert!(!lists(&s, &h.id), "{case}: the refused peer is listed: {s}");
            let pulled = h.sync(&net.rt, id, SyncRequest::default());
            assert!(pulled.is_err(), "{case}: synced: {pulled:?}");
        }
        peers.push((case, h));
    }

    // The nodes still replicate with each other, and none of the refused peers got an entry.
    let ack = net.a.write(&report("After the refusals"))?;
    net.b.wait_entries(&[hash(&ack)], WAIT)?;
    for (case, h) in &mut peers {
        assert_eq!(
            h.gossip_from(&net.a_id) + h.gossip_from(&net.b_id),
            0,
            "{case}: got gossip"
        );
    }
    eprintln!(
        "no valid certificate: 3 peers refused by A and B in {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn invalid_entries_are_refused_by_every_node_and_relayed_by_none() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    let mut net = Net::start()?;
    let (a_id, b_id) = (net.a_id, net.b_id);
    let before = [status(&net.a)?, status(&net.b)?];

    // H1, connected to A only, pushes an entry with a bad signature by gossip.
    let bad_gossip = net.bad_signature("Forged by gossip")?;
    let mut h1 = net.spawn(net.rogue_config(&[0])?, SyncResponse::default())?;
    h1.wait_admitted_by(&net.rt, &a_id)?;
    // Gossip flows both ways once A's gossip reaches H1.
    let ack = net.a.write(&report("Before the gossip"))?;
    let honest = hash(&ack);
    h1.wait(&net.rt, "gossip from A", |s| {
        matches!(s, Seen::Gossip(p, data) if *p == a_id
            && SignedEntry::decode(data).is_ok_and(|e| e.hash().to_string() == honest))
    })?;
    h1.publish(&net.rt, bad_gossip.bytes().to_vec())?;
    h1.wait_gone(&net.rt, &a_id)?;
    refused_log(&mut net.a, &h1.id, "relayed an invalid entry")?;

    // H2, connected to A and B, answers their pulls with a rule-breaking entry and one
    // with a bad signature.
    let bad_rule = net.foreign_owner("Forged for another owner")?;
    let bad_pulled = net.bad_signature("Forged for pulls")?;
    let answer = SyncResponse {
        entries: vec![
            bad_rule.bytes().to_vec().into(),
            bad_pulled.bytes().to_vec().into(),
        ],
        ..SyncResponse::default()
    };
    let mut h2 = net.spawn(net.rogue_config(&[0, 1])?, answer)?;
    h2.wait_gone(&net.rt, &a_id)?;
    h2.wait_gone(&net.rt, &b_id)?;
    refused_log(&mut net.a, &h2.id, "sent invalid entries")?;
    refused_log(&mut net.b, &h2.id, "sent invalid entries")?;

    // An honest entry written afterwards on A reaches B: propagation happened.
    let ack = net.a.write(&report("After the forgeries"))?;
    net.b.wait_entries(&[hash(&ack)], WAIT)?;

    let bad = [&bad_gossip, &bad_rule, &bad_pulled];
    let mut accepted = 0;
    for node in [&net.a, &net.b] {
        for e in bad {
            if holds(node, &e.hash().to_string())? {
                accepted += 1;
            }
        }
    }
    let after = [status(&net.a)?, status(&net.b)?];
    let delta = |i: usize, reason: &str| {
        count(&after[i], "rejected", reason) - count(&before[i], "rejected", reason)
    };
    eprintln!(
        "invalid entries: accepted {accepted} of 6 deliveries; rejected on A {} bad signature + {} rule, on B {} + {}; {:?}",
        delta(0, "bad_signature"),
        delta(0, "rule"),
        delta(1, "bad_signature"),
        delta(1, "rule"),
        started.elapsed()
    );
    assert_eq!(accepted, 0, "invalid entries were accepted");
    // A refused the gossiped one and both pulled ones; B only the pulled ones, so A did
    // not relay the gossiped entry (B would have refused it, and cut A off).
    assert_eq!((delta(0, "bad_signature"), delta(0, "rule")), (2, 1));
    assert_eq!((delta(1, "bad_signature"), delta(1, "rule")), (1, 1));
    assert_eq!(
        count(&after[0], "refused_peers", "relayed an invalid entry"),
        1
    );
    assert_eq!(
        count(&after[1], "refused_peers", "relayed an invalid entry"),
        0
    );
    for (i, s) in after.iter().enumerate() {
        assert_eq!(count(s, "refused_peers", "sent invalid entries"), 1, "{s}");
        assert!(!lists(s, &h1.id) && !lists(s, &h2.id), "{s}");
        assert!(lists(s, [&b_id, &a_id][i]), "A and B no longer peers: {s}");
        assert_eq!(s["pending"], 0, "{s}");
    }
    Ok(())
}

#[test]
fn an_oversized_sync_request_is_refused_and_the_node_keeps_serving() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    let mut net = Net::start()?;
    let a_id = net.a_id;
    let mut config = net.rogue_config(&[0])?;
    config.max_frame_bytes = 8 * NODE_FRAME_BYTES;
    let mut h = net.spawn(config, SyncResponse::default())?;
    h.wait_admitted_by(&net.rt, &a_id)?;

    // No honest request comes near the limit: it names at most 256 logs, this one 200,000.
    let big = SyncRequest {
        ranges: Vec::new(),
        wanted: vec![Item::absent(Key([7; 36])); 200_000],
        max_entries: 500,
        ..SyncRequest::default()
    };
    let size = big.encoded_len();
    assert!(size > NODE_FRAME_BYTES, "{size} bytes is not oversized");
    let sent = Instant::now();
    let refused = h.sync(&net.rt, a_id, big);
    let took = sent.elapsed();
    assert!(refused.is_err(), "an oversized request was answered");

    // The node cuts the sender off: an unreadable frame is a protocol violation.
    let refusals = |s: &Value| s["refused_peers"]["oversized sync frame"].as_u64();
    net.a.wait_log("oversized sync frame", WAIT)?;
    assert_eq!(refusals(&status(&net.a)?), Some(1));
    // And it still serves the others: A and B replicate both ways, and A answers a fresh
    // peer's ordinary pull with what it holds.
    let from_a = net.a.write(&report("After the big frame, from A"))?;
    net.b.wait_entries(&[hash(&from_a)], WAIT)?;
    let from_b = net.b.write(&report("After the big frame, from B"))?;
    net.a.wait_entries(&[hash(&from_b)], WAIT)?;
    let mut fresh = net.spawn(net.rogue_config(&[0])?, SyncResponse::default())?;
    fresh.wait_admitted_by(&net.rt, &a_id)?;
    let pulled = fresh.pull(&net.rt, a_id)?;
    assert!(!pulled.is_empty(), "A answered with no entries");
    eprintln!(
        "oversized frame: {size} bytes refused in {took:?} ({}), sender cut off; a fresh peer then pulled {} entries; {:?}",
        refused.err().map(|e| e.to_string()).unwrap_or_default(),
        pulled.len(),
        started.elapsed()
    );
    Ok(())
}

#[test]
fn a_sync_request_flood_is_cut_off() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    let mut net = Net::start()?;
    let a_id = net.a_id;
    let mut h = net.spawn(net.rogue_config(&[0])?, SyncResponse::default())?;
    h.wait_admitted_by(&net.rt, &a_id)?;
    let ordinary = h.pull(&net.rt, a_id)?;
    assert!(!ordinary.is_empty(), "A answered with no entries");

    const FLOOD: usize = 200;
    let fired = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    {
        let _runtime = net.rt.enter();
        for _ in 0..FLOOD {
            let peer = h.net.clone();
            requests.spawn(async move { peer.sync(a_id, SyncRequest::default()).await });
        }
    }
    h.wait_gone(&net.rt, &a_id)?;
    let cut_off = fired.elapsed();
    refused_log(&mut net.a, &h.id, "request flood")?;
    let results = net.rt.block_on(requests.join_all());
    let answered = results.iter().filter(|r| r.is_ok()).count();

    let s = status(&net.a)?;
    assert_eq!(count(&s, "refused_peers", "request flood"), 1, "{s}");
    assert!(!lists(&s, &h.id), "the flooder is still listed: {s}");
    assert!(answered < FLOOD, "every flooded request was answered");

    // A still serves its API, B, and a newly admitted peer.
    let from_b = net.b.write(&report("After the flood, from B"))?;
    net.a.wait_entries(&[hash(&from_b)], WAIT)?;
    let from_a = net.a.write(&report("After the flood, from A"))?;
    net.b.wait_entries(&[hash(&from_a)], WAIT)?;
    let mut fresh = net.spawn(net.rogue_config(&[0])?, SyncResponse::default())?;
    fresh.wait_admitted_by(&net.rt, &a_id)?;
    let pulled = fresh.pull(&net.rt, a_id)?;
    assert!(
        !pulled.is_empty(),
        "A answered the new peer with no entries"
    );
    eprintln!(
        "flood: {FLOOD} concurrent sync requests, {answered} answered, flooder cut off after {cut_off:?}; {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn an_equivocation_sent_to_two_nodes_ends_with_both_holding_the_proof() -> Result<()> {
    let _serial = serial();
    let mut net = Net::start()?;
    let (a_id, b_id) = (net.a_id, net.b_id);
    // Two entries of one log (same key, same incarnation) with the same seq.
    let incarnation = rand::random::<u32>() | 1;
    let fork = |title: &str| -> Result<SignedEntry> {
        let mut replica = Replica::new(net.charter.clone(), Limits::default());
        let command: Command = serde_json::from_value(report(title))?;
        let ulid = (u128::from(now_ms()) << 80) | u128::from(rand::random::<u64>());
        Ok(replica
            .prepare(&net.rogue_key, incarnation, &command, now_ms(), ulid.into())?
            .0)
    };
    let (one, two) = (fork("First branch")?, fork("Second branch")?);
    assert_eq!((one.entry.seq, two.entry.seq), (1, 1));
    assert_ne!(one.hash(), two.hash());
    // Each node pulls one branch from a peer that only it is connected to.
    let answer = |e: &SignedEntry| SyncResponse {
        entries: vec![serde_bytes::ByteBuf::from(e.bytes().to_vec())],
        ..SyncResponse::default()
    };
    let mut to_a = net.spawn(net.rogue_config(&[0])?, answer(&one))?;
    let mut to_b = net.spawn(net.rogue_config(&[1])?, answer(&two))?;
    to_a.wait_admitted_by(&net.rt, &a_id)?;
    to_b.wait_admitted_by(&net.rt, &b_id)?;
    // A and B find the fork when they next sync with each other, and exchange the proof.
    net.a.wait_log("equivocation", Duration::from_secs(60))?;
    net.b.wait_log("equivocation", Duration::from_secs(60))?;
    for node in [&net.a, &net.b] {
        let s = status(node)?;
        let listed = s["equivocations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["state"] == net.rogue.as_str() && e["incarnation"] == incarnation && e["seq"] == 1
            });
        assert!(listed, "{} does not report {}: {s}", s["state"], net.rogue);
        // Neither branch counts.
        assert!(!holds(node, &one.hash().to_string())?);
        assert!(!holds(node, &two.hash().to_string())?);
    }
    eprintln!("equivocation by {} reported by both nodes", net.rogue);
    Ok(())
}

#[test]
fn a_sync_answer_over_the_batch_limit_or_malformed_cuts_the_peer_off() -> Result<()> {
    let _serial = serial();
    let mut net = Net::start()?;
    let a_id = net.a_id;
    // 501 entries, one over the batch limit; the node counts them before decoding any.
    let answer = SyncResponse {
        entries: vec![serde_bytes::ByteBuf::from(vec![1u8; 8]); 501],
        ..SyncResponse::default()
    };
    let mut h = net.spawn(net.rogue_config(&[0])?, answer)?;
    h.wait_admitted_by(&net.rt, &a_id)?;
    let line = refused_log(&mut net.a, &h.id, "sync batch over the limit")?;
    assert!(line.contains("sync batch over the limit"), "{line}");
    // Range answers over the limit, and one to a range that was not asked about.
    let item = |i: u8| Item::absent(Key([i; 36]));
    let over = SyncResponse {
        ranges: vec![reconcile::Answer {
            index: 0,
            body: Body::Items((0..65).map(item).collect()),
        }],
        ..SyncResponse::default()
    };
    let unasked = SyncResponse {
        ranges: vec![reconcile::Answer {
            index: 7,
            body: Body::Items(vec![item(1)]),
        }],
        ..SyncResponse::default()
    };
    let mut malformed = Vec::new();
    for answer in [over, unasked] {
        let mut h = net.spawn(net.rogue_config(&[0])?, answer)?;
        h.wait_admitted_by(&net.rt, &a_id)?;
        malformed.push(refused_log(&mut net.a, &h.id, "malformed range answer")?);
    }
    assert!(malformed[0].contains("65 items"), "{}", malformed[0]);
    assert!(malformed[1].contains("range 7"), "{}", malformed[1]);
    // The status and the metrics count them under one fixed reason; the details, which
    // repeat what the peers sent, are in the log only.
    let s = status(&net.a)?;
    assert_eq!(
        count(&s, "refused_peers", "malformed sync answer"),
        3,
        "{s}"
    );
    // The node goes on serving the others.
    let ack = net.b.write(&report("After the oversized batch"))?;
    net.a.wait_entries(&[hash(&ack)], WAIT)?;
    Ok(())
}

/// Writes on A until one entry reaches `watcher` (connected to B only) by gossip, which
/// says the watcher is in B's gossip mesh; returns the entries written.
fn through_b(net: &Net, watcher: &mut Hostile, title: &str) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for _ in 0..20 {
        let entry = hash(&net.a.write(&report(title))?);
        written.push(entry.clone());
        let seen =
            watcher.wait_within(&net.rt, "an entry through B", Duration::from_secs(2), |s| {
                matches!(s, Seen::Gossip(_, data)
                if SignedEntry::decode(data).is_ok_and(|e| e.hash().to_string() == entry))
            });
        if seen.is_ok() {
            return Ok(written);
        }
    }
    bail!("no entry written on A reached the watcher through B")
}

#[test]
fn replayed_entries_change_nothing_and_are_relayed_by_none() -> Result<()> {
    let _serial = serial();
    // The nodes log each gossiped entry they already hold (a debug line of the sync task).
    let mut net = Net::start_with(&[("SPOC_LOG_LEVEL", "info,spoc_node::service::sync=debug")])?;
    let (a_id, b_id) = (net.a_id, net.b_id);
    // Valid rogue entries reach A and B by pull only, so they never travelled by gossip.
    let chain = net.forge_chain("Replayed", 3)?;
    let hashes: Vec<String> = chain.iter().map(|e| e.hash().to_string()).collect();
    let bytes: Vec<serde_bytes::ByteBuf> =
        chain.iter().map(|e| e.bytes().to_vec().into()).collect();
    let answer = SyncResponse {
        entries: bytes.clone(),
        ..SyncResponse::default()
    };
    let source = net.spawn(net.rogue_config(&[0, 1])?, answer.clone())?;
    net.a.wait_entries(&hashes, WAIT)?;
    net.b.wait_entries(&hashes, WAIT)?;
    drop(source);

    // The watcher, connected to B only, sees everything B relays, once it is in B's
    // gossip mesh: entries written on A until one reaches it through B say so.
    let mut watcher = net.spawn(net.rogue_config(&[1])?, SyncResponse::default())?;
    watcher.wait_admitted_by(&net.rt, &b_id)?;
    let mut honest = through_b(&net, &mut watcher, "Before the replay")?;
    let before = [status(&net.a)?, status(&net.b)?];

    // The replayer answers both nodes' pulls with the held entries, then gossips them.
    let mut replayer = net.spawn(net.rogue_config(&[0, 1])?, answer)?;
    replayer.wait_admitted_by(&net.rt, &a_id)?;
    replayer.wait_admitted_by(&net.rt, &b_id)?;
    let pushed = through_b(&net, &mut watcher, "While the replayer connects")?;
    honest.extend(pushed.iter().cloned());
    for e in &chain {
        replayer.publish(&net.rt, e.bytes().to_vec())?;
    }
    // Both nodes received every replay by gossip, found it held, and did not relay it.
    for node in [&mut net.a, &mut net.b] {
        for _ in &chain {
            node.wait_log("gossiped entry already held", WAIT)?;
        }
    }
    // Entries written after the replay travel A, B, watcher: had B relayed a replayed
    // entry, the watcher would have had it first.
    let after_replay = through_b(&net, &mut watcher, "After the replay")?;
    honest.extend(after_replay.iter().cloned());
    let relayed = watcher.history_of(|s| {
        matches!(s, Seen::Gossip(_, data)
            if SignedEntry::decode(data).is_ok_and(|e| hashes.contains(&e.hash().to_string())))
    });
    net.b.wait_entries(&honest, WAIT)?;
    let written_since = (pushed.len() + after_replay.len()) as u64;

    let after = [status(&net.a)?, status(&net.b)?];
    for (b, a) in before.iter().zip(&after) {
        let entries = |s: &Value| s["entries"].as_u64().unwrap_or(0);
        assert_eq!(
            entries(a),
            entries(b) + written_since,
            "replays changed the entries: {a}"
        );
        assert_eq!(
            a["rejected"], b["rejected"],
            "a replay counted as invalid: {a}"
        );
        assert_eq!(a["refused_peers"], b["refused_peers"], "{a}");
        assert_eq!(a["pending"], 0, "{a}");
        assert!(lists(a, &replayer.id), "the replayer was cut off: {a}");
    }
    for node in [&net.a, &net.b] {
        for h in &hashes {
            assert!(holds(node, h)?, "{h} lost");
        }
    }
    assert_eq!(relayed, 0, "B relayed {relayed} replayed entries");
    eprintln!(
        "replay: {} held entries replayed by pull to A and B and by gossip; 0 changed, 0 relayed",
        chain.len()
    );
    Ok(())
}

#[test]
fn a_withholding_peer_holds_no_one_back() -> Result<()> {
    let _serial = serial();
    let net = Net::start()?;
    let (a_id, b_id) = (net.a_id, net.b_id);
    // The withholder gives its log to B only; A's pulls it holds unanswered, and it
    // relays nothing by gossip.
    let chain = net.forge_chain("Withheld from A", 2)?;
    let hashes: Vec<String> = chain.iter().map(|e| e.hash().to_string()).collect();
    let to_b = SyncResponse {
        entries: chain.iter().map(|e| e.bytes().to_vec().into()).collect(),
        ..SyncResponse::default()
    };
    let answer: Answer = Arc::new(move |peer: &PeerId| (*peer == b_id).then(|| to_b.clone()));
    let mut h = net.spawn_with(net.rogue_config(&[0, 1])?, answer)?;
    h.wait_admitted_by(&net.rt, &a_id)?;
    h.wait_admitted_by(&net.rt, &b_id)?;
    net.b.wait_entries(&hashes, WAIT)?;
    // A pull held by the withholder does not stop A's others: B serves the withheld log
    // within an anti-entropy round or two, well before the held pull times out.
    net.a
        .wait_entries(&hashes, spoc_node::service::sync::ANTI_ENTROPY * 2)?;
    // Writes still flow both ways.
    let from_b = hash(&net.b.write(&report("Written on B beside the withholder"))?);
    net.a.wait_entries(&[from_b], WAIT)?;
    let from_a = hash(&net.a.write(&report("Written on A beside the withholder"))?);
    net.b.wait_entries(&[from_a], WAIT)?;
    let withheld = h.history_of(|s| matches!(s, Seen::Withheld(p) if *p == a_id));
    let served_a = h.history_of(|s| matches!(s, Seen::Served(p) if *p == a_id));
    assert!(withheld >= 1, "A never pulled from the withholder");
    assert_eq!(served_a, 0, "the withholder answered A");
    let s = status(&net.a)?;
    assert_eq!(s["pending"], 0, "{s}");
    eprintln!("withholding: {withheld} pulls of A held unanswered; A got the log from B");
    Ok(())
}

#[test]
fn a_sustained_flood_is_cut_off_and_the_node_keeps_serving() -> Result<()> {
    let _serial = serial();
    let mut net = Net::start()?;
    let before = [status(&net.a)?, status(&net.b)?];
    let mut flood = net.flood(2)?;
    let slots = u64::from(MAX_PENDING_INCOMING);
    // The flood is under way: flooders of both kinds came and went, and A closed the raw
    // connections over its handshake slots at once. (Without that bound they would stay
    // open until their handshake timed out, 10 s, and the flood's 256 would all be open.)
    flood.wait_for(&net.rt, Duration::from_secs(60), |p| {
        p.invalid_answers >= 2
            && p.requests >= 2 * FLOOD_REQUESTS as u64
            && p.dials > 4 * slots
            && p.dials - p.dials_closed <= slots + 16
    })?;
    // Under it, A's operators write and B's writes arrive.
    let dials_before = flood.progress().dials;
    let mut written = Vec::new();
    for i in 0..10 {
        let on_a = report(&format!("Written on A under the flood {i}"));
        written.push(hash(&net.a.write(&on_a)?));
        let on_b = report(&format!("Written on B under the flood {i}"));
        written.push(hash(&net.b.write(&on_b)?));
    }
    net.a.wait_entries(&written, WAIT)?;
    net.b.wait_entries(&written, WAIT)?;
    // The flood went on meanwhile. (Its dial flood keeps A's handshake slots full, so most
    // new flooders cannot get in: the raw connections are what keeps coming.)
    let so_far = dials_before;
    flood.wait_for(&net.rt, Duration::from_secs(60), |p| {
        p.dials > so_far + slots
    })?;
    let peak_kib = spoc_tests::vm_kib(net.a.pid().unwrap_or(0), "VmHWM")?;
    let report = flood.stop(&net.rt)?;
    eprintln!("flood: {report:?}; A's peak RSS {} MiB", peak_kib / 1024);
    // A logs each refusal after counting it: one line per flooder it cut off.
    for _ in 0..report.flooders {
        net.a.wait_log("peer refused and disconnected", WAIT)?;
    }
    let after = [status(&net.a)?, status(&net.b)?];
    for (b, a) in before.iter().zip(&after) {
        // Only the 20 honest writes counted: no flooded entry was accepted.
        let entries = |s: &Value| s["entries"].as_u64().unwrap_or(0);
        assert_eq!(entries(a), entries(b) + 20, "{a}");
        assert_eq!(a["pending"], 0, "{a}");
    }
    let refused = |s: &Value| {
        s["refused_peers"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>())
    };
    // Every flooder that flooded was refused; one that gave up waiting for its admission
    // may have been refused too.
    let delta = refused(&after[0]) - refused(&before[0]);
    assert!(
        (report.flooders..=report.flooders + report.starved).contains(&delta),
        "{delta} refusals for {report:?}: {}",
        after[0]
    );
    // A still admits a newcomer once the flood is over.
    let mut fresh = net.spawn(net.rogue_config(&[0])?, SyncResponse::default())?;
    fresh.wait_admitted_by(&net.rt, &net.a_id)?;
    Ok(())
}

#[test]
fn silent_uncertified_connections_leave_room_for_participants_and_the_nodes_own_dials() -> Result<()>
{
    let _serial = serial();
    let mut net = Net::start()?;
    let a_addr = spoc_node::network::parse_addr(&net.testnet.nodes[0].listen)?;
    // 200 outsiders from 50 addresses that are not the charter's, each connection with a
    // fresh peer id, silent, and back as soon as it is dropped.
    let silent = Silent::start(&net.rt, a_addr, 200, 50);
    net.a.wait_log("too many unadmitted connections", WAIT)?;
    silent.wait_for(&net.rt, WAIT, |p| p.connected >= 32 && p.refused >= 32)?;

    // B restarts under the flood: A admits it within 10 s of its start.
    net.b.terminate()?;
    net.a.skip_log();
    let restarted = Instant::now();
    net.b = spoc_tests::Proc::start(&net.testnet.nodes[1])?;
    let started_in = restarted.elapsed();
    let line = net
        .a
        .wait_log(&format!("peer admitted peer={}", net.b_id), WAIT)?;
    let admitted_in = restarted.elapsed();
    ensure!(line.contains("state="), "{line}");
    ensure!(
        admitted_in < Duration::from_secs(10),
        "B was admitted {admitted_in:?} after its start"
    );
    let ack = net
        .b
        .write(&report("Written on B under the silent flood"))?;
    net.a.wait_entries(&[hash(&ack)], WAIT)?;

    // A's own dial still succeeds: the third state's charter address, where a peer with
    // that state's certificate now listens and dials no one, so only A's dial reaches it.
    let mut config = net.rogue_config(&[])?;
    config.listen = vec![spoc_node::network::parse_addr(
        &net.testnet.nodes[2].listen,
    )?];
    let mut listener = net.spawn(config, SyncResponse::default())?;
    // A re-dials that address with a backoff capped at 30 s.
    listener.wait_within(
        &net.rt,
        "A's dial",
        Duration::from_secs(45),
        |s| matches!(s, Seen::Admitted(p) if *p == net.a_id),
    )?;

    // The addresses that keep failing admission are refused outright, for longer each time.
    net.a.wait_log(
        "address refused after repeated failures",
        Duration::from_secs(90),
    )?;
    let peak_kib = spoc_tests::vm_kib(net.a.pid().unwrap_or(0), "VmHWM")?;
    let progress = silent.stop(&net.rt)?;
    let s = status(&net.a)?;
    let denied = s["denied_incoming"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let refused = s["refused_peers"].as_object().cloned().unwrap_or_default();
    // A fixed set of reasons, whatever the number of peer ids and addresses.
    ensure!(denied.len() <= 5 && refused.len() <= 2, "{s}");
    let (metrics_code, metrics) = net.a.get_text("/metrics")?;
    ensure!(metrics_code == 200, "metrics answered {metrics_code}");
    ensure!(
        metrics
            .lines()
            .filter(|l| l.starts_with("spoc_incoming_denied_total{"))
            .count()
            == denied.len(),
        "{metrics}"
    );
    eprintln!(
        "silent flood: {progress:?}; B started in {started_in:?}, admitted {admitted_in:?} after its start; A refused {denied:?} \
         and cut off {refused:?}; A's peak RSS {} MiB",
        peak_kib / 1024
    );
    Ok(())
}
