//! Operator records and tokens: a stored row read back under any name, a token checked
//! against the operators the API accepts, and a hello asked with any id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spoc_node::operator::{self, Access, HELLO_ID, Operator, Role, Token};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b) % 40).min(data.len());
    let (name, row) = data.split_at(split);
    let name = String::from_utf8_lossy(name);
    if let Ok(op) = Operator::decode(&name, row) {
        // What decodes encodes back to the same row.
        assert_eq!(op.encode(), row);
    }
    // Any text as a name or a token: refused with an error, or a known operator.
    let head = Token::from_text(&"ab".repeat(32));
    let Ok(first) = operator::add(&[], "head", Role::Head, &head, 0) else {
        return;
    };
    let _ = operator::add(std::slice::from_ref(&first), &name, Role::Reader, &head, 1);
    let access = Access::new(&[first]);
    let text = String::from_utf8_lossy(data);
    if let Some(caller) = access.caller(&text) {
        assert_eq!(caller.name, "head");
    }
    if let Ok(id) = <[u8; HELLO_ID]>::try_from(&data[..data.len().min(HELLO_ID)]) {
        let _ = access.hello(&id, &[0; 32]);
    }
});
