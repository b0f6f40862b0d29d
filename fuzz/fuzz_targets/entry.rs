//! Entry decoding and full validation: any bytes, decoded, then ingested by a replica.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoc_node::log::SignedEntry;
use spoc_node::replica::{Limits, Replica};

fuzz_target!(|data: &[u8]| {
    let (charter, _) = spoc_fuzz::fixture();
    // Several entries in one input, split on a separator, exercise ordering and pending.
    let entries: Vec<SignedEntry> = data
        .split(|b| *b == 0xfe)
        .filter_map(|chunk| SignedEntry::decode(chunk).ok())
        .collect();
    let mut replica = Replica::new(charter.clone(), Limits::default());
    if let Ok(report) = replica.ingest(entries) {
        assert!(report.accepted.len() <= replica.entry_count());
    }
});
