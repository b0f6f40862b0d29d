//! Tampering at rest: byte flips, truncation and deleted entries in a node's store file
//! are detected before anything uses them, and a node that meets a tampered row stops,
//! so nothing tampered with is served to peers.
//!
//! A start reads only each log's tip and the counters; every other row is read when it is
//! first used (to serve sync, load a document, list, page the audit trail) and every row
//! carries a seal that the read checks. *Detected* means that `Store::open`, `Store::load`,
//! one read of everything through the loaded replica (every log, every listed document,
//! every document, every entry's index row), or the full check after them
//! (`Store::verify`, what `spoc verify` runs) returns an error. A panic is counted apart,
//! never as a detection.
//!
//! A byte of the file can hold data or not: redb leaves free pages, slack at the end of
//! pages, and stale copies of pages from earlier transactions, and nothing reads them. So
//! every case is judged by two independent readers of its own copy of the tampered file:
//! - the *oracle* reads every table with the `redb` crate directly, without any spocnet
//!   check, and says whether the rows differ from the untampered file's (or cannot be read);
//! - spocnet's open, load, reads and full check say Ok or Err, and when Ok, whether what
//!   the reads returned (logs, entries, documents' heads) equals the untampered content, or
//!   the content from before the last commit (a *rollback* of the last write).
//!
//! A flip that changes the rows is *in data*, and must be detected. A flip that changes no
//! row is *harmless* when the store loads with identical content. The one outcome never
//! allowed, anywhere in the file, is a *silent* one: the store loads other content.
//!
//! The stores are built in-process (`Replica::prepare`, `ingest`, `Store::commit`, one
//! commit per write as the node does), and are tampered with as a clean shutdown leaves
//! them and as a crash leaves them (copied while still open, which makes redb repair the
//! file when it is opened).
//!
//! One gap is pinned down here and reported in RELIABILITY.md; the test that states the
//! requirement itself is `#[ignore]`d with the reason until it is fixed: after a
//! crash, a flip in the last commit's pages makes redb roll back that commit silently.
//! Some flips make redb panic instead of returning an error; `Store::open` and
//! `Store::load` turn such a panic into "store is corrupt", and
//! `flips_anywhere_in_the_file_never_panic` holds them to it.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, ensure};
use automerge::ChangeHash;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::json;
use spoc_node::charter::Charter;
use spoc_node::docs::Collection;
use spoc_node::docs::DocId;
use spoc_node::docs::command::Command;
use spoc_node::identity::SecretKey;
use spoc_node::log::{LogId, SignedEntry};
use spoc_node::replica::{Limits, Replica};
use spoc_node::store::{ListFilter, Reader, Store, entry_key};
use spoc_tests::{Proc, Testnet, refused_start};

/// The store's tables, as `spoc_node::store` defines them (the module is private).
const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const HASHES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("hashes");
const BYTE_TABLES: [&str; 8] = [
    "entries",
    "hashes",
    "logs",
    "doc_entries",
    "list",
    "terms",
    "proofs",
    "arrival",
];
const TEXT_TABLES: [&str; 4] = ["meta", "docs", "snapshots", "summaries"];

/// The participants of the in-process network; the first three form the core group.
const CODES: [&str; 5] = ["IE", "LT", "EL", "FI", "LV"];
/// Midnight UTC at the start of 2026-12-01, in Ireland's Presidency.
const NOW: u64 = 1_796_083_200_000;
/// How many data flips each store variant must see detected.
const DATA_FLIPS: usize = 500;
/// How many flips at uniformly random offsets, anywhere in the file.
const ANYWHERE_FLIPS: usize = 500;
const TRUNCATIONS: usize = 200;

thread_local! {
    /// Set on the thread that runs the cases: panics there are counted, not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that keeps quiet on a `QUIET` thread only, so that other
/// tests' failures still print.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into `Err("panic: ...")`.
fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET.with(|q| q.set(true));
    let r = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        format!("panic: {msg}")
    })
}

/// What a replica holds: its logs' heights, its entries and its documents' heads.
#[derive(Debug, PartialEq, Eq)]
struct Content {
    heights: BTreeMap<LogId, u64>,
    entries: BTreeSet<[u8; 32]>,
    docs: BTreeMap<DocId, Vec<ChangeHash>>,
    proofs: usize,
}

/// How loaded content differs from the expected: entries, logs and documents.
fn difference(want: &Content, got: &Content) -> String {
    let logs = want
        .heights
        .iter()
        .filter(|(l, h)| got.heights.get(l) != Some(h))
        .map(|(l, h)| {
            format!(
                "log {} height {h} -> {:?}",
                l.incarnation,
                got.heights.get(l)
            )
        })
        .collect::<Vec<_>>();
    let docs = want
        .docs
        .iter()
        .filter(|(id, heads)| got.docs.get(id) != Some(heads))
        .count();
    format!(
        "{} entries instead of {}; {}; {docs} documents differ",
        got.entries.len(),
        want.entries.len(),
        logs.join(", ")
    )
}

/// What an in-memory replica holds.
fn content(r: &Replica) -> Content {
    let heights = r.heights();
    let entries = heights
        .keys()
        .flat_map(|l| r.log_entries(l).expect("in memory"))
        .map(|e| e.hash().0)
        .collect();
    let docs = r
        .docs()
        .map(|(id, d)| {
            let mut heads = d.get_heads();
            heads.sort();
            (id.clone(), heads)
        })
        .collect();
    Content {
        heights,
        entries,
        docs,
        proofs: r.proofs().count(),
    }
}

/// What a loaded store holds, read as use reads it: every log, every listed document and
/// every document itself. The first read that fails is the error.
fn used_content(
    store: &Store,
    r: &mut Replica<Reader>,
) -> Result<Content, spoc_node::store::Error> {
    let corrupt = |e: spoc_node::replica::Error| spoc_node::store::Error::Corrupt(e.to_string());
    let heights = r.heights();
    let mut entries = BTreeSet::new();
    for log in heights.keys() {
        for e in r.log_entries(log).map_err(corrupt)? {
            if !r.contains(&e.hash()).map_err(corrupt)? {
                return Err(spoc_node::store::Error::Corrupt(format!(
                    "entry {} is not in the hash index",
                    e.hash()
                )));
            }
            entries.insert(e.hash().0);
        }
    }
    let mut docs = BTreeMap::new();
    for collection in Collection::ALL {
        let mut cursor = None;
        loop {
            let page =
                store
                    .reader()
                    .list(collection, &ListFilter::default(), cursor.as_deref(), 100)?;
            for item in &page.items {
                let id: DocId = item["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| spoc_node::store::Error::Corrupt("a listed id".into()))?;
                let doc = r.load_doc(&id).map_err(corrupt)?.ok_or_else(|| {
                    spoc_node::store::Error::Corrupt(format!("{id} is listed but missing"))
                })?;
                let mut heads = doc.get_heads();
                heads.sort();
                docs.insert(id, heads);
            }
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
    }
    Ok(Content {
        heights,
        entries,
        docs,
        proofs: r.proofs().count(),
    })
}

/// Every row of every table, as redb returns them without any spocnet check.
type Rows = Vec<(&'static str, Vec<u8>, Vec<u8>)>;

fn rows(path: &Path) -> Result<Rows, String> {
    let db = redb::Database::open(path).map_err(|e| e.to_string())?;
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for name in BYTE_TABLES {
        if name == "arrival" {
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(name);
            let t = tx.open_table(def).map_err(|e| e.to_string())?;
            for row in t.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                out.push((name, k.value().to_be_bytes().to_vec(), v.value().to_vec()));
            }
            continue;
        }
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(name);
        let t = tx.open_table(def).map_err(|e| e.to_string())?;
        for row in t.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            out.push((name, k.value().to_vec(), v.value().to_vec()));
        }
    }
    for name in TEXT_TABLES {
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(name);
        let t = tx.open_table(def).map_err(|e| e.to_string())?;
        for row in t.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            out.push((name, k.value().as_bytes().to_vec(), v.value().to_vec()));
        }
    }
    Ok(out)
}

/// Opens and loads a store, reads everything through it as use would, and then runs the
/// full check (`spoc verify`), which reaches the rows no read does.
fn load(path: &Path, charter: &Arc<Charter>) -> Result<Content, spoc_node::store::Error> {
    let store = Store::open(path)?;
    let mut replica = store.load(charter.clone(), Limits::default(), &mut |_, _, _| {})?;
    let content = used_content(&store, &mut replica)?;
    drop(replica);
    store.verify(charter.clone(), &mut |_, _, _| {})?;
    Ok(content)
}

/// A store built in-process, with everything needed to judge a tampered copy.
struct Base {
    _dir: tempfile::TempDir,
    /// The file as a clean shutdown leaves it.
    clean: Vec<u8>,
    /// The file as a crash leaves it (copied while the store was open).
    crashed: Vec<u8>,
    charter: Arc<Charter>,
    content: Content,
    /// What the store held before its last commit.
    before_last: Content,
    rows: Rows,
    entries: Vec<SignedEntry>,
    /// Each document's last snapshot, as the store wrote it.
    snapshots: Vec<Vec<u8>>,
    /// The key that seals the store's rows, which lives beside the file.
    key: Vec<u8>,
    scratch: PathBuf,
}

fn command(value: serde_json::Value) -> Command {
    serde_json::from_value(value).expect("a valid command")
}

/// A write that a test asks for at the end of the store.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A new obstacle.
    Report,
    /// A comment on the last obstacle reported.
    CommentOnLast,
}

/// Writes `writes` contributions, one commit each, as five states taking turns: reports,
/// comments and endorsements on each other's obstacles (so documents hold changes of
/// several authors that depend on each other), and a second incarnation of LT halfway, as
/// after a restart; then the writes of `tail`.
fn build(seed: u64, writes: usize) -> Result<Base> {
    build_with(seed, writes, &[])
}

fn build_with(seed: u64, writes: usize, tail: &[(&str, Step)]) -> Result<Base> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let today = time::macros::date!(2026 - 12 - 01);
    let (charter, keys) = spoc_node::testnet::fixture(&CODES, &CODES[..3], today, &mut rng)?;
    let charter = Arc::new(charter);
    let dir = scratch_dir()?;
    let path = dir.path().join("store.redb");
    let store = Store::open(&path)?;
    let mut replica = Replica::new(charter.clone(), Limits::default());
    let mut obstacles: Vec<String> = Vec::new();
    let mut entries = Vec::new();
    let mut before_last = content(&replica);
    for i in 0..writes + tail.len() {
        before_last = content(&replica);
        if i + 1 == writes + tail.len() {
            // Every document saved whole, as compaction leaves them, so that snapshots
            // are in the file to be tampered with; the last commit is still a write.
            for (id, _) in replica.docs() {
                store.save_whole(id)?;
            }
        }
        let (code, step) = match tail.get(i.wrapping_sub(writes)) {
            Some((code, step)) if i >= writes => (*code, Some(*step)),
            _ => (CODES[i % CODES.len()], None),
        };
        let key: &SecretKey = &keys[code];
        let incarnation = if code == "LT" && i >= writes / 2 {
            2
        } else {
            1
        };
        let now = NOW + (i as u64) * 60_000;
        let cmd = match (step, i % 3, obstacles.len()) {
            (Some(Step::CommentOnLast), _, n) if n > 0 => command(json!({
                "command": "obstacle_comment",
                "obstacle": obstacles[n - 1],
                "text": format!("Comment {i} by {code} on the last obstacle."),
            })),
            (None, 1, n) if n > 0 => command(json!({
                "command": "obstacle_comment",
                "obstacle": obstacles[rng.random_range(0..n)],
                "text": format!("Comment {i} by {code}: the reply came after two weeks."),
            })),
            (None, 2, n) if n > 0 => command(json!({
                "command": "obstacle_endorse",
                "obstacle": obstacles[rng.random_range(0..n)],
                "stance": "support",
                "note": format!("Note {i}"),
            })),
            _ => command(json!({
                "command": "obstacle_report",
                "title": format!("Obstacle {i} of {code}"),
                "type": if i.is_multiple_of(2) { "legal" } else { "pragmatic" },
                "description": format!("Obstacle {i}: a court order is needed before data leaves {code}."),
            })),
        };
        let ulid = ulid::Ulid::from_parts(now, rng.random::<u128>());
        let (entry, id) = replica
            .prepare(key, incarnation, &cmd, now, ulid)
            .map_err(|e| anyhow!("write {i} refused: {e}"))?;
        if matches!(cmd, Command::ObstacleReport { .. }) {
            obstacles.push(id);
        }
        let report = replica.ingest(vec![entry.clone()])?;
        ensure!(
            report.accepted.len() == 1,
            "write {i} not accepted: {report:?}"
        );
        store.commit(&replica, &report)?;
        entries.push(entry);
    }
    let snapshots = replica.docs().map(|(_, d)| d.save()).collect();
    let key = std::fs::read(spoc_node::store::key_path(&path))?;
    let crashed = std::fs::read(&path)?;
    drop(store);
    let clean = std::fs::read(&path)?;
    let base_rows = rows(&path).map_err(|e| anyhow!(e))?;
    let loaded = load(&path, &charter)?;
    ensure!(
        loaded == content(&replica),
        "the store does not load as written"
    );
    Ok(Base {
        scratch: dir.path().to_owned(),
        _dir: dir,
        clean,
        crashed,
        charter,
        content: content(&replica),
        before_last,
        rows: base_rows,
        entries,
        snapshots,
        key,
    })
}

/// A scratch directory in memory when there is one (each case writes two file copies).
fn scratch_dir() -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    Ok(if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    })
}

/// How one tampered file fared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// `open` + `load` returned an error.
    Detected(String),
    /// It loaded, with the untampered content.
    Harmless,
    /// It loaded the content from before the last commit: the last write is gone.
    RolledBack,
    /// It loaded, with other content (described): never allowed.
    Silent(String),
    /// Something panicked.
    Panicked(String),
}

/// Whether the oracle saw the rows change (or could not read them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rowset {
    Same,
    Changed,
    Unreadable,
}

impl Base {
    /// Judges `bytes` as a store file.
    fn judge(&self, bytes: &[u8]) -> Result<(Rowset, Verdict)> {
        let oracle = self.scratch.join("oracle.redb");
        let subject = self.scratch.join("subject.redb");
        std::fs::write(&oracle, bytes)?;
        std::fs::write(&subject, bytes)?;
        let key = spoc_node::store::key_path(&subject);
        if !key.exists() {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key)?
                .write_all(&self.key)?;
        }
        let rowset = match no_panic(|| rows(&oracle)) {
            Ok(Ok(r)) if r == self.rows => Rowset::Same,
            Ok(Ok(_)) => Rowset::Changed,
            Ok(Err(_)) | Err(_) => Rowset::Unreadable,
        };
        let verdict = match no_panic(|| load(&subject, &self.charter)) {
            Ok(Err(e)) => Verdict::Detected(e.to_string()),
            Ok(Ok(got)) => {
                if got == self.content {
                    Verdict::Harmless
                } else if got == self.before_last {
                    Verdict::RolledBack
                } else {
                    Verdict::Silent(difference(&self.content, &got))
                }
            }
            Err(p) => Verdict::Panicked(p),
        };
        std::fs::remove_file(&oracle)?;
        std::fs::remove_file(&subject)?;
        Ok((rowset, verdict))
    }

    /// The file offsets that hold the store's data, found by searching the file for the
    /// bytes of every entry, entry key, hash and snapshot. A pattern can occur more than
    /// once (a stale copy in a free page); every occurrence is a candidate, and the oracle
    /// tells the live ones.
    fn data_offsets(&self, file: &[u8]) -> Vec<usize> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for e in &self.entries {
            patterns.push(e.bytes().to_vec());
            patterns.push(e.hash().0.to_vec());
            patterns.push(entry_key(&e.entry.log(), e.entry.seq).to_vec());
        }
        patterns.extend(self.snapshots.iter().cloned());
        let mut offsets = BTreeSet::new();
        for p in &patterns {
            let mut from = 0;
            while let Some(at) = find(&file[from..], p) {
                offsets.extend(from + at..from + at + p.len());
                from += at + 1;
            }
        }
        offsets.into_iter().collect()
    }
}

/// Decodes a hex string (an entry hash as the API gives it).
fn unhex(s: &str) -> Result<Vec<u8>> {
    ensure!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(Into::into))
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The tally of a series of cases.
#[derive(Debug, Default)]
struct Tally {
    name: String,
    cases: usize,
    detected: usize,
    harmless: usize,
    rolled_back: Vec<String>,
    silent: Vec<String>,
    panicked: Vec<String>,
    /// Cases where the oracle saw the rows change or could not read them.
    in_data: usize,
    in_data_detected: usize,
    /// Data flips drawn at offsets that turned out to be stale copies (rows unchanged).
    stale: usize,
    reasons: BTreeMap<String, usize>,
}

impl Tally {
    fn new(name: String) -> Tally {
        Tally {
            name,
            ..Tally::default()
        }
    }

    fn add(&mut self, what: String, rowset: Rowset, verdict: Verdict) {
        self.cases += 1;
        let data = rowset != Rowset::Same;
        if data {
            self.in_data += 1;
        }
        match verdict {
            Verdict::Detected(e) => {
                self.detected += 1;
                if data {
                    self.in_data_detected += 1;
                }
                *self.reasons.entry(reason(&e)).or_default() += 1;
            }
            Verdict::Harmless => self.harmless += 1,
            Verdict::RolledBack => self.rolled_back.push(format!("{what} ({rowset:?})")),
            Verdict::Silent(d) => self.silent.push(format!("{what} ({rowset:?}): {d}")),
            Verdict::Panicked(p) => self.panicked.push(format!("{what}: {p}")),
        }
    }

    fn line(&self) -> String {
        let mut panics: BTreeMap<String, usize> = BTreeMap::new();
        for p in &self.panicked {
            let msg = p.split_once("panic: ").map_or(p.as_str(), |(_, m)| m);
            *panics.entry(reason(msg)).or_default() += 1;
        }
        format!(
            "{}: {} cases: {} detected, {} harmless (loaded unchanged), {} rolled back the last write, {} silent, {} panics {:?}; \
             in data (rows changed or unreadable): {} of which {} detected{}; reasons {:?}",
            self.name,
            self.cases,
            self.detected,
            self.harmless,
            self.rolled_back.len(),
            self.silent.len(),
            self.panicked.len(),
            panics,
            self.in_data,
            self.in_data_detected,
            if self.stale > 0 {
                format!(
                    "; {} more data flips landed in stale copies (rows unchanged)",
                    self.stale
                )
            } else {
                String::new()
            },
            self.reasons
        )
    }

    /// Nothing loads with content other than the untampered one or, at worst, the one
    /// from before the last commit (see the tests for when that happens).
    fn assert_no_silent(&self) {
        assert!(
            self.silent.is_empty(),
            "{}: silent corruption: {:?}",
            self.name,
            self.silent
        );
    }

    /// Every case in data detected, nothing rolled back, no panic.
    fn assert_all_detected(&self) {
        self.assert_no_silent();
        assert!(
            self.panicked.is_empty(),
            "{}: panics: {:?}",
            self.name,
            self.panicked
        );
        assert!(
            self.rolled_back.is_empty(),
            "{}: the last write was silently rolled back: {:?}",
            self.name,
            self.rolled_back
        );
        assert_eq!(
            self.in_data, self.in_data_detected,
            "{}: tampered data was not detected",
            self.name
        );
    }
}

/// The kind of an error message, without its variable parts (hashes, numbers).
fn reason(e: &str) -> String {
    let words: Vec<&str> = e
        .split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()) && !w.contains('/'))
        .take(7)
        .collect();
    words.join(" ")
}

fn flip(bytes: &mut [u8], at: usize, rng: &mut ChaCha20Rng) {
    bytes[at] ^= rng.random_range(1..=255u8);
}

#[allow(clippy::print_stderr)]
fn report(line: &str) {
    eprintln!("tamper: {line}");
}

/// The file as a clean shutdown leaves it, or as a crash does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Clean,
    Crashed,
}

impl Base {
    fn file(&self, v: Variant) -> &[u8] {
        match v {
            Variant::Clean => &self.clean,
            Variant::Crashed => &self.crashed,
        }
    }
}

/// Flips one random byte at a time in the bytes that hold data (see `data_offsets`) until
/// `DATA_FLIPS` flips have landed in live data.
fn data_flips(seed: u64, v: Variant) -> Result<Tally> {
    quiet_panics();
    let base = build(seed, 30)?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xf11b);
    let file = base.file(v);
    let offsets = base.data_offsets(file);
    ensure!(!offsets.is_empty(), "no data found in the file");
    let mut tally = Tally::new(format!("data flips, {v:?} file of {} bytes", file.len()));
    while tally.in_data < DATA_FLIPS {
        ensure!(
            tally.cases + tally.stale < 20 * DATA_FLIPS,
            "too few live data bytes"
        );
        let at = offsets[rng.random_range(0..offsets.len())];
        let mut bytes = file.to_vec();
        flip(&mut bytes, at, &mut rng);
        let (rowset, verdict) = base.judge(&bytes)?;
        if rowset == Rowset::Same {
            // A stale copy: nothing reads it, and the store must load unchanged.
            tally.stale += 1;
            assert!(
                matches!(verdict, Verdict::Harmless | Verdict::Detected(_)),
                "{v:?}: a flip at {at} in a stale copy gave {verdict:?}"
            );
            continue;
        }
        tally.add(format!("{v:?} flip at {at}"), rowset, verdict);
    }
    report(&tally.line());
    Ok(tally)
}

/// Flips one byte at a uniformly random offset of the whole file, `ANYWHERE_FLIPS` times.
fn anywhere_flips(seed: u64, v: Variant) -> Result<Tally> {
    quiet_panics();
    let base = build(seed, 30)?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xa11);
    let file = base.file(v);
    let mut tally = Tally::new(format!(
        "flips anywhere, {v:?} file of {} bytes",
        file.len()
    ));
    for _ in 0..ANYWHERE_FLIPS {
        let at = rng.random_range(0..file.len());
        let mut bytes = file.to_vec();
        flip(&mut bytes, at, &mut rng);
        let (rowset, verdict) = base.judge(&bytes)?;
        tally.add(format!("{v:?} flip at {at}"), rowset, verdict);
    }
    report(&tally.line());
    Ok(tally)
}

/// Cuts the file at a uniformly random length, `TRUNCATIONS` times.
fn truncations(seed: u64, v: Variant) -> Result<Tally> {
    quiet_panics();
    let base = build(seed, 30)?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x7c);
    let file = base.file(v);
    let mut tally = Tally::new(format!("truncations, {v:?} file of {} bytes", file.len()));
    for _ in 0..TRUNCATIONS {
        let len = rng.random_range(0..file.len());
        let (rowset, verdict) = base.judge(&file[..len])?;
        tally.add(format!("{v:?} truncated to {len}"), rowset, verdict);
    }
    report(&tally.line());
    Ok(tally)
}

/// At rest after a clean shutdown, every flip in the stored data is detected.
#[test]
fn every_flip_in_stored_data_is_detected() -> Result<()> {
    let tally = data_flips(0x7a3e, Variant::Clean)?;
    tally.assert_all_detected();
    assert_eq!(tally.detected, DATA_FLIPS);
    Ok(())
}

/// After a crash, redb repairs the file on open, and where a checksum of the last commit's
/// pages fails it falls back to the commit before: the flip is then not detected, and the
/// store loads without its last write. This pins that down: every data flip is detected
/// or rolls back exactly the last write, never anything else, and nothing panics.
#[test]
fn flips_in_stored_data_after_a_crash_are_detected_or_roll_back_the_last_write() -> Result<()> {
    let tally = data_flips(0x7a3e, Variant::Crashed)?;
    tally.assert_no_silent();
    assert!(tally.panicked.is_empty(), "panics: {:?}", tally.panicked);
    assert_eq!(tally.detected + tally.rolled_back.len(), tally.cases);
    Ok(())
}

/// The requirement itself for a crashed file: every data flip detected.
#[test]
#[ignore = "known gap: after a crash, redb's repair silently falls back to the previous commit \
            when the last commit's page checksums fail, so a flip there loses the last \
            acknowledged write without an error (see RELIABILITY.md)"]
fn every_flip_in_stored_data_after_a_crash_is_detected() -> Result<()> {
    data_flips(0x7a3e, Variant::Crashed)?.assert_all_detected();
    Ok(())
}

/// Anywhere in the file, a flip is detected, or harmless (the store loads unchanged), or
/// (after a crash only) rolls back the last write; it never loads other content. Panics
/// inside redb are counted and reported here, and refused by the next test.
#[test]
fn flips_anywhere_in_the_file_never_load_other_content() -> Result<()> {
    let mut panics = Vec::new();
    for v in [Variant::Clean, Variant::Crashed] {
        let tally = anywhere_flips(0x7a3f, v)?;
        tally.assert_no_silent();
        if v == Variant::Clean {
            assert!(tally.rolled_back.is_empty(), "{:?}", tally.rolled_back);
        }
        panics.extend(tally.panicked);
    }
    if !panics.is_empty() {
        report(&format!(
            "redb panicked (instead of an error) on: {panics:?}"
        ));
    }
    Ok(())
}

/// The requirement itself: no flip anywhere makes opening the store panic.
#[test]
fn flips_anywhere_in_the_file_never_panic() -> Result<()> {
    for v in [Variant::Clean, Variant::Crashed] {
        let tally = anywhere_flips(0x7a3f, v)?;
        assert!(tally.panicked.is_empty(), "{v:?}: {:?}", tally.panicked);
    }
    Ok(())
}

#[test]
fn truncations_are_detected() -> Result<()> {
    for v in [Variant::Clean, Variant::Crashed] {
        truncations(0x7a40, v)?.assert_all_detected();
    }
    Ok(())
}

/// Removes rows from a copy of the store with redb directly: the entry of `key`, and
/// its hash index row when `index` is set.
fn delete_entry(path: &Path, key: &[u8], hash: &[u8], index: bool) -> Result<()> {
    let db = redb::Database::open(path)?;
    let tx = db.begin_write()?;
    {
        let mut entries = tx.open_table(ENTRIES)?;
        ensure!(entries.remove(key)?.is_some(), "no entry under that key");
        if index {
            let mut hashes = tx.open_table(HASHES)?;
            ensure!(hashes.remove(hash)?.is_some(), "no hash row");
        }
    }
    tx.commit()?;
    Ok(())
}

#[test]
fn an_entry_deleted_from_the_middle_of_a_log_is_detected() -> Result<()> {
    quiet_panics();
    let base = build(0x7a41, 30)?;
    let tips: BTreeMap<LogId, u64> = base.content.heights.clone();
    let mut tally = Tally::new(
        "entries deleted from the middle of their log (alone, and with their index row)".into(),
    );
    let path = base.scratch.join("deleted.redb");
    for e in &base.entries {
        let log = e.entry.log();
        if tips.get(&log) == Some(&e.entry.seq) {
            continue;
        }
        for index in [false, true] {
            std::fs::write(&path, &base.clean)?;
            let key = entry_key(&log, e.entry.seq);
            delete_entry(&path, &key, &e.hash().0, index)?;
            let bytes = std::fs::read(&path)?;
            let (rowset, verdict) = base.judge(&bytes)?;
            assert_eq!(rowset, Rowset::Changed);
            assert!(
                matches!(&verdict, Verdict::Detected(m) if m.contains("breaks at seq")),
                "seq {} deleted (index row too: {index}): {verdict:?}",
                e.entry.seq
            );
            tally.add(
                format!("seq {} index {index}", e.entry.seq),
                rowset,
                verdict,
            );
        }
    }
    report(&tally.line());
    tally.assert_all_detected();
    ensure!(tally.cases >= 40, "only {} cases", tally.cases);
    Ok(())
}

/// The last entry of each log deleted: alone (the index then names an entry that is not
/// there), and with its index row. With both rows gone the store looks like a consistent
/// earlier state of that log; what gives it away is the documents: when the change is a
/// head of its document, the snapshot's heads differ, and when another author's later
/// change in the same document depends on it (the last two writes here: IE reports an
/// obstacle, LT comments on it), that change's causal past is missing. The load must find
/// every case, and the full verification (`Store::verify`, `spoc verify`) too.
#[test]
fn a_log_tip_deleted_is_detected() -> Result<()> {
    quiet_panics();
    let base = build_with(
        0x7a42,
        30,
        &[("IE", Step::Report), ("LT", Step::CommentOnLast)],
    )?;
    let path = base.scratch.join("tip.redb");
    let mut tally = Tally::new("log tips deleted (alone, and with their index row)".into());
    let mut by_verify = 0;
    for (log, &seq) in &base.content.heights {
        let e = base
            .entries
            .iter()
            .find(|e| e.entry.log() == *log && e.entry.seq == seq)
            .context("the tip entry")?;
        for index in [false, true] {
            std::fs::write(&path, &base.clean)?;
            delete_entry(&path, &entry_key(log, seq), &e.hash().0, index)?;
            let bytes = std::fs::read(&path)?;
            let (rowset, verdict) = base.judge(&bytes)?;
            assert_eq!(rowset, Rowset::Changed);
            assert!(
                matches!(verdict, Verdict::Detected(_)),
                "tip {seq} of {} deleted (index row too: {index}): {verdict:?}",
                e.entry.doc
            );
            tally.add(format!("tip {seq} index {index}"), rowset, verdict);
            std::fs::write(&path, &bytes)?;
            let verified =
                no_panic(|| Store::open(&path)?.verify(base.charter.clone(), &mut |_, _, _| {}))
                    .map_err(|p| anyhow!(p))?;
            ensure!(
                verified.is_err(),
                "tip {seq} of {} deleted (index row too: {index}): verify passed",
                e.entry.doc
            );
            by_verify += 1;
        }
    }
    report(&format!(
        "{}; also refused by verify: {by_verify} of {}",
        tally.line(),
        tally.cases
    ));
    tally.assert_all_detected();
    ensure!(tally.cases >= 10, "only {} cases", tally.cases);
    Ok(())
}

/// A real node meets a tampered store before it uses it: a damaged file refuses to start,
/// and a deleted or flipped row, which a start does not read, stops the node at the first
/// read of it, with one line that says why; nothing of it is served.
#[test]
fn a_node_with_a_tampered_store_stops_before_using_it() -> Result<()> {
    let net = Testnet::new(2)?;
    let lt = net.node("LT")?;
    let dir = lt.data_dir.as_path();
    let mut node = Proc::start(lt)?;
    let mut acks = Vec::new();
    for i in 0..6 {
        let ack = node.write(&json!({
            "command": "obstacle_report",
            "title": format!("Obstacle {i} before the tampering"),
            "type": "legal",
            "description": "A court order is needed before data leaves the country.",
        }))?;
        acks.push(ack);
    }
    node.terminate()?;
    let path = dir.join("store.redb");
    let pristine = std::fs::read(&path)?;

    // An entry deleted from the middle of the log (seq 3 of 6), index row and all.
    let third = &acks[2];
    let entries = {
        let db = redb::Database::open(&path)?;
        let tx = db.begin_read()?;
        let t = tx.open_table(HASHES)?;
        let hash = unhex(third["entry"].as_str().unwrap_or_default())?;
        // The row holds the entry key, then its seal.
        let key = t
            .get(hash.as_slice())?
            .context("the hash row")?
            .value()
            .get(..44)
            .context("a short hash row")?
            .to_vec();
        (key, hash)
    };
    delete_entry(&path, &entries.0, &entries.1, true)?;
    let line = spoc_tests::stops_at_first_read(lt)?;
    assert!(
        line.contains("store is corrupt") && line.contains("is missing"),
        "{line}"
    );
    report(&format!("deleted entry: {line}"));

    // A flipped byte inside the fourth entry's signed bytes.
    // Every copy of it: the entry's row, its summary and any stale page.
    let mut bytes = pristine.clone();
    let title = b"Obstacle 3 before the tampering";
    let mut from = 0;
    while let Some(at) = find(&bytes[from..], title) {
        bytes[from + at + 3] ^= 0x01;
        from += at + title.len();
    }
    ensure!(from > 0, "the title is not in the file");
    std::fs::write(&path, &bytes)?;
    let line = spoc_tests::stops_at_first_read(lt)?;
    assert!(
        line.contains("store is corrupt") && line.contains("does not match its seal"),
        "{line}"
    );
    report(&format!("flipped byte: {line}"));

    // The file cut in half.
    std::fs::write(&path, &pristine[..pristine.len() / 2])?;
    let line = refused_start(dir, &[])?;
    assert!(
        line.contains("corrupt")
            || line.contains("cannot be opened")
            || line.contains("store error"),
        "{line}"
    );
    report(&format!("truncated: {line}"));

    // And the untampered file starts again with every acknowledged contribution.
    std::fs::write(&path, &pristine)?;
    let node = Proc::start(lt)?;
    let hashes: Vec<String> = acks
        .iter()
        .map(|a| a["entry"].as_str().unwrap_or_default().to_owned())
        .collect();
    node.wait_entries(&hashes, std::time::Duration::from_secs(5))?;
    Ok(())
}
