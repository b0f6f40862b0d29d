//! The seed corpus of the `entry` fuzz target holds valid entries of this build: signed for
//! the genesis of the fuzz fixture (`fuzz/src/lib.rs`), under today's rules. A change of
//! what the genesis covers (the charter's form, the rules version) makes them stale, and
//! the fuzzer would then start from entries refused at their signature;
//! `cargo run --bin seeds` in `fuzz/` writes them again.

use std::sync::Arc;

use rand::SeedableRng;
use spoc_node::log::SignedEntry;
use spoc_node::replica::{Limits, Replica};

#[test]
fn the_entry_seeds_of_the_fuzz_corpus_are_valid_entries_of_this_build() {
    // The fuzz fixture, built the same way as `spoc_fuzz::fixture`.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0xf022);
    let today = time::macros::date!(2026 - 12 - 01);
    let (charter, _) = spoc_node::testnet::fixture(
        &["IE", "LT", "EL", "EUROPOL"],
        &["IE", "LT"],
        today,
        &mut rng,
    )
    .expect("the fixture");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/entry");
    let mut entries = Vec::new();
    for i in 0.. {
        let Ok(bytes) = std::fs::read(dir.join(format!("seed{i}"))) else {
            break;
        };
        entries.push(SignedEntry::decode(&bytes).unwrap_or_else(|e| panic!("seed{i}: {e}")));
    }
    assert!(entries.len() >= 5, "only {} seeds", entries.len());
    let mut replica = Replica::new(Arc::new(charter), Limits::default());
    let report = replica.ingest(entries.clone()).expect("ingest");
    assert_eq!(
        report.accepted.len(),
        entries.len(),
        "the entry seeds are stale ({:?}): run `cargo run --bin seeds` in fuzz/",
        report.rejected.first()
    );
}
