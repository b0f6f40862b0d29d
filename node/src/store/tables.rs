//! The tables of the store. Every value is sealed (see `seal`): its last bytes are a MAC
//! over the table, the key and the value, so a row changed on disk is refused when read.

use redb::TableDefinition;

/// Settings and counters of the store itself: format, network, counts, next position.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Entry key (author 32 bytes, incarnation u32 BE, seq u64 BE) -> position u64 BE and
/// the encoded entry.
pub const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
/// Entry hash -> entry key.
pub const HASHES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("hashes");
/// Position (the order this node accepted entries in, a causal order) -> entry key.
pub const ARRIVAL: TableDefinition<u64, &[u8]> = TableDefinition::new("arrival");
/// Log key (author, incarnation) -> its tip: seq u64, hash, timestamp u64.
pub const LOGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("logs");
/// Document id (length-prefixed) and position -> entry key: each document's entries.
pub const DOC_ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("doc_entries");
/// Document id -> entries u64, entries since the snapshot u64, last timestamp u64.
pub const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
/// Document id -> the last position the snapshot covers u64, and Automerge `save()`.
pub const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// Document id -> the summary a list shows, as JSON.
pub const SUMMARIES: TableDefinition<&str, &[u8]> = TableDefinition::new("summaries");
/// Index key (collection, field, value, document id) -> nothing but the seal.
pub const LIST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("list");
/// Term (length-prefixed, `YYYY-H1`) and position -> entry key: the entries dated in it.
pub const TERMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("terms");
/// Operator name -> its role, the hash of its token, and when it was added and revoked
/// (`operator::Operator::encode`). Made by the first commit that needs it.
pub const OPERATORS: TableDefinition<&str, &[u8]> = TableDefinition::new("operators");
/// Entry hash -> the name of the operator whose write made it: the local audit, which is
/// never replicated. Made by the first commit that needs it.
pub const WRITTEN_BY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("written_by");
/// Peer id (text) -> where that peer's stream goes on (u64 BE): the place of a catch-up
/// left in the middle, kept across restarts. At most [`super::MAX_STREAMS`] rows. Made by
/// the first write that needs it.
pub const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
/// Log key -> encoded equivocation proof (re-checked when read).
pub const PROOFS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("proofs");
