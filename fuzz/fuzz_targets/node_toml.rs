//! `node.toml` parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoc_node::config::Settings;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Settings::parse(std::path::Path::new("/data"), "node.toml", text, &|_| None);
    }
});
