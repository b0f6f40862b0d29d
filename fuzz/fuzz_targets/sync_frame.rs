//! Sync frame decoding, through the same codec and size limit as the swarm, and the
//! inflating of a packed batch of entries within the same bounds as a node's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoc_node::network::protocol::{SyncFrame, decode_sync_frame, encode_sync_frame, unpack};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_sync_frame(data, 1024 * 1024) {
        // What decodes must encode again and decode to the same frame.
        let bytes = encode_sync_frame(&frame).unwrap_or_default();
        let again = decode_sync_frame(&bytes, 64 * 1024 * 1024).ok();
        assert_eq!(again.as_ref(), Some(&frame));
        if let SyncFrame::Response(r) = &frame
            && let Some(packed) = &r.packed
            && let Ok(entries) = unpack(packed, 500, 4 * 1024 * 1024)
        {
            assert!(entries.len() <= 500);
            assert!(entries.iter().map(|e| e.len() + 4).sum::<usize>() <= 4 * 1024 * 1024);
        }
    }
    // Any bytes at all, as a packed batch: bounded, never a panic.
    if let Ok(entries) = unpack(data, 500, 64 * 1024) {
        assert!(entries.iter().map(|e| e.len() + 4).sum::<usize>() <= 64 * 1024);
    }
});
