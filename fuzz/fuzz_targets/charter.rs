//! Charter parsing and validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoc_node::charter::Charter;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(charter) = Charter::parse(text) {
            // A valid charter renders to a text that parses to the same hash.
            let again = Charter::parse(&charter.to_toml()).map(|c| c.hash());
            assert_eq!(again.ok(), Some(charter.hash()));
        }
    }
});
