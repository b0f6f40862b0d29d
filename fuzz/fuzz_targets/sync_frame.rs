//! Sync frame decoding, through the same codec and size limit as the swarm.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoc_node::network::protocol::{decode_sync_frame, encode_sync_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_sync_frame(data, 1024 * 1024) {
        // What decodes must encode again and decode to the same frame.
        let bytes = encode_sync_frame(&frame).unwrap_or_default();
        let again = decode_sync_frame(&bytes, 64 * 1024 * 1024).ok();
        assert_eq!(again.as_ref(), Some(&frame));
    }
});
