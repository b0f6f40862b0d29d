//! A long history stays whole: a proof that arrives at a node holding more entries and
//! more bytes than the pending set's bounds cuts only the forked log, and every other
//! entry stays, in memory and in the store after a reopen.

mod common;

use common::*;
use rand::SeedableRng;
use rand::distr::{Alphanumeric, SampleString};
use rand_chacha::ChaCha20Rng;
use spoc_node::docs::command::Command;
use spoc_node::log::{Invalid, SignedEntry};
use spoc_node::replica::{Backing, Limits, Replica};
use spoc_node::store::Store;

/// Each entry shares a practice whose problem statement is this many bytes (one scalar
/// value, so that making them is quick), so that 20,001 entries pass 64 MiB.
const PROBLEM: usize = 3_800;
const ENTRIES: usize = 20_001;

fn practice(title: String, problem: String) -> Command {
    Command::PracticeShare {
        title,
        problem,
        practice: "A single mailbox per SPOC".into(),
        prerequisites: None,
        results: None,
        transferability: None,
        contact: None,
        tags: Vec::new(),
        related_obstacles: Vec::new(),
    }
}

/// Ingests `entries` in batches into a store-backed replica, committing and flushing
/// each batch as the node does.
fn ingest<B: Backing>(store: &Store, replica: &mut Replica<B>, entries: &[SignedEntry]) {
    for chunk in entries.chunks(500) {
        let report = replica.ingest_verified(chunk.to_vec()).expect("ingest");
        assert_accepted(&report, chunk.len());
        store.commit(replica, &report).expect("commit");
        replica.flush();
    }
}

#[test]
fn a_proof_at_a_node_past_the_pending_bounds_keeps_every_valid_entry() {
    let net = Net::new(41);
    let mut rng = ChaCha20Rng::seed_from_u64(41);
    let mut ulids = Ulids::new(41);
    let mut writer = net.replica();
    let mut history = Vec::with_capacity(ENTRIES);
    for i in 0..ENTRIES {
        let code = ["IE", "LT", "EL", "FI"][i % 4];
        let text = Alphanumeric.sample_string(&mut rng, PROBLEM);
        let now = NOW + i as u64;
        let (entry, _) = write(
            &mut writer,
            net.key(code),
            1,
            &practice(format!("Practice {i}"), text),
            now,
            ulids.next(now),
        );
        history.push(entry);
    }
    let bytes: usize = history.iter().map(|e| e.bytes().len()).sum();
    let limits = Limits::default();
    assert!(history.len() > limits.max_pending_entries);
    assert!(bytes > limits.max_pending_bytes, "{bytes} bytes");

    // Lithuania forks a log of a new incarnation: two different entries at seq 1.
    let fork = |text: &str, ulids: &mut Ulids| -> SignedEntry {
        let mut branch = net.replica();
        let now = NOW + ENTRIES as u64;
        write(
            &mut branch,
            net.key("LT"),
            2,
            &set_factsheet("notes", text),
            now,
            ulids.next(now),
        )
        .0
    };
    let branch_a = fork("branch a", &mut ulids);
    let branch_b = fork("branch b", &mut ulids);
    assert_eq!(branch_a.entry.seq, branch_b.entry.seq);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    {
        let store = Store::open(&path).expect("open");
        let mut node = store
            .load(net.charter.clone(), limits, &mut |_, _, _| {})
            .expect("load");
        ingest(&store, &mut node, &history);
        ingest(&store, &mut node, std::slice::from_ref(&branch_a));
        assert_eq!(node.entry_count(), ENTRIES + 1);

        let report = node.ingest(vec![branch_b.clone()]).expect("ingest");
        assert_eq!(report.new_proofs.len(), 1, "{report:?}");
        assert_eq!(
            report.rejected,
            vec![(branch_a.hash(), Invalid::Equivocated { seq: 1 })]
        );
        assert_eq!(report.removed, vec![branch_a.clone()]);
        store.commit(&node, &report).expect("commit");
        node.flush();
        // Every valid entry is still accepted, and only the fork is gone.
        assert_eq!(node.entry_count(), ENTRIES);
        for e in &history {
            assert!(node.contains(&e.hash()).unwrap(), "entry {} lost", e.hash());
        }
        assert!(!node.contains(&branch_a.hash()).unwrap());
    }

    // And after a reopen, the store holds them all and passes the full check.
    let store = Store::open(&path).expect("reopen");
    let node = store
        .load(net.charter.clone(), limits, &mut |_, _, _| {})
        .expect("load");
    assert_eq!(node.entry_count(), ENTRIES);
    assert_eq!(node.proofs().count(), 1);
    for e in history.iter().step_by(97) {
        assert_eq!(
            node.entry(&e.entry.log(), e.entry.seq).unwrap().as_ref(),
            Some(e)
        );
    }
    let (entries, _) = store
        .verify(net.charter.clone(), &mut |_, _, _| {})
        .expect("the store passes the full check");
    assert_eq!(entries, ENTRIES);
}
