//! The API's JSON bodies: parsed as commands, then prepared (rules checked, signed) by a
//! replica on behalf of each state of the fixture.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoc_node::docs::command::Command;
use spoc_node::replica::{Limits, Replica};

fuzz_target!(|data: &[u8]| {
    let Ok(command) = serde_json::from_slice::<Command>(data) else {
        return;
    };
    let (charter, keys) = spoc_fuzz::fixture();
    let mut replica = Replica::new(charter.clone(), Limits::default());
    for (i, key) in keys.values().enumerate() {
        let ulid = ulid::Ulid::from(i as u128 + 1);
        if let Ok((entry, _)) = replica.prepare(key, 1, &command, spoc_fuzz::NOW_MS, ulid) {
            // What the node's own rules accept before signing, ingest must accept too.
            let report = replica.ingest(vec![entry]).unwrap_or_default();
            assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        }
    }
});
