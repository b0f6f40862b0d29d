//! Address records: any text as a record's addresses, checked as the rules check it, and
//! read back from a document that holds it, as the node reads it to dial.
#![no_main]

use automerge::transaction::Transactable;
use libfuzzer_sys::fuzz_target;
use spoc_node::docs::addresses;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = addresses::parse(&text);
    if let Ok(parsed) = &parsed {
        // What is accepted is at most eight well-formed addresses, given back as written.
        assert!(!parsed.is_empty() && parsed.len() <= addresses::MAX_ADDRESSES);
        assert_eq!(parsed.join(" "), text);
        for a in parsed {
            assert!(addresses::check(a).is_ok());
        }
    }
    // A document holding the text gives back exactly what the check accepts, or nothing.
    // (Arbitrary bytes are not loaded as a document: the node loads only the snapshots it
    // sealed itself, and `Automerge::load` panics on some malformed input.)
    let mut doc = automerge::AutoCommit::new();
    if doc.put(automerge::ROOT, addresses::FIELD, text.as_ref()).is_ok() {
        let read = addresses::of(doc.document());
        let expected: Vec<String> = parsed
            .map(|a| a.into_iter().map(str::to_owned).collect())
            .unwrap_or_default();
        assert_eq!(read, expected);
    }
});
