//! Address records: any text as a record's addresses, checked as the rules check it, then
//! any bytes as a document holding it, read as the node reads it to dial.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoc_node::docs::addresses;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(parsed) = addresses::parse(&text) {
        // What is accepted is at most eight well-formed addresses, given back as written.
        assert!(!parsed.is_empty() && parsed.len() <= addresses::MAX_ADDRESSES);
        assert_eq!(parsed.join(" "), text);
        for a in &parsed {
            assert!(addresses::check(a).is_ok());
        }
    }
    // Bytes that load as a document give the addresses they hold, or none.
    if let Ok(doc) = automerge::Automerge::load(data) {
        for a in addresses::of(&doc) {
            assert!(addresses::check(&a).is_ok());
        }
    }
});
