//! The decade's data: ten years of a 31-state network, written into a real store file.
//!
//! The same commands as the other scenarios' history (`data::write_one`), by all 31 states
//! of a testnet, on a clock that runs one entry every `STEP_MS` so that 1,000,000 entries
//! make ten years. Every state restarts its node every one to five weeks, and each start
//! opens a new log (a new incarnation), as a node does. The Presidency follows a
//! calendar written into the testnet's charter for the whole decade.
//!
//! The history goes straight into a store, on two threads. The generator picks each
//! command (`data::write_one`) and makes its change on the document as it holds it, as
//! `Replica::prepare` does; the signer chains each change into its log, signs it, and
//! commits every 5,000 entries through `Store::commit`, as a node commits an ingest. The
//! rules are not checked while generating (that is what made it slow): the new node of
//! the scenario takes in the whole history and checks every entry, and a refused entry
//! fails the scenario. Memory holds only the documents written to recently; one written to again
//! after that is read back from the store. Each history is kept under `target/` beside
//! the testnet whose keys signed it, keyed by size, seed and the date it ends at, so that
//! a second run starts at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use automerge::Automerge;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use spoc_node::charter::{Charter, Kind, Term};
use spoc_node::docs::command::{Command, Refused, Writer};
use spoc_node::docs::{Collection, DocId};
use spoc_node::identity::SecretKey;
use spoc_node::log::{Entry, EntryHash, LogId, SignedEntry, Tip};
use spoc_node::replica::backing::{self, Backing, Nothing};
use spoc_node::replica::{Limits, Replica, Report};
use spoc_node::store::{Reader, Store};
use time::Date;

use crate::bench::data::{self, Model, Turn};

/// Time between two entries: a million entries make ten years.
pub const STEP_MS: u64 = 315_576;
/// States of the network.
pub const STATES: usize = 31;
/// Entries made durable in one commit while generating.
const BATCH: usize = 5_000;
/// A state restarts its node after this many days at least, and at most `RESTART_MAX`.
pub const RESTART_MIN_DAYS: u64 = 7;
pub const RESTART_MAX_DAYS: u64 = 36;
/// The generator lets go of a document no entry changed in this many entries; one it
/// writes to again is read back from the store.
const KEEP_ENTRIES: usize = 10_000;
/// The share of entries the Presidency writes (the others share the rest evenly).
const PRESIDENCY_SHARE: f64 = 0.1;
/// Raised when the cached layout changes, so that older caches are not reused.
const CACHE_VERSION: u32 = 3;

const DAY_MS: u64 = 86_400_000;

/// The testnet the history was written by, and where it is kept.
#[derive(Debug)]
pub struct Network {
    /// The cache directory: `net/` holds the testnet, one directory per size its history.
    pub dir: PathBuf,
    pub charter: Arc<Charter>,
    /// State codes, in the order of `testnet::generate`.
    pub states: Vec<String>,
    /// The end of every history: the first day of the current half-year, 00:00 UTC.
    pub end: Date,
}

/// What a history holds, kept beside its store (`facts.json`, written last).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Facts {
    pub entries: usize,
    pub documents: u64,
    pub logs: usize,
    pub store_bytes: u64,
    /// Seconds it took to generate, in the run that made it.
    pub generated_s: f64,
    /// Commands refused before signing while generating (retried with others).
    pub refused: usize,
    /// The most recent obstacles, meetings and practices, for reads and writes.
    pub obstacles: Vec<String>,
    pub practices: Vec<String>,
    /// The half-year the history's last entries fall in (`YYYY-H1`), and how many
    /// entries fall in it.
    pub term: String,
    pub term_entries: usize,
}

/// One generated history: its store (with `store.key` beside it) and its facts.
#[derive(Debug)]
pub struct History {
    pub store: PathBuf,
    pub facts: Facts,
    /// Whether this run generated it (or found it in the cache).
    pub generated: bool,
}

/// The directory the benchmark's caches live in: `target/spoc-bench-cache` when the
/// binary runs from a cargo target directory, else the system's temporary directory.
pub fn cache_root() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .filter(|target| target.join("CACHEDIR.TAG").exists() || target.ends_with("target"))
        .map(|target| target.join("spoc-bench-cache"))
        .unwrap_or_else(|| std::env::temp_dir().join("spoc-bench-cache"))
}

/// The first day of the half-year `today` is in.
pub fn half_year_start(today: Date) -> Result<Date> {
    let label = spoc_node::charter::half_year_label(today);
    spoc_node::charter::parse_half_year(&label)
        .map(|(from, _)| from)
        .ok_or_else(|| anyhow!("no half-year for {today}"))
}

impl Network {
    /// The 31-state testnet of `seed` whose histories end at `end`, laid out under the
    /// cache the first time.
    pub fn open(seed: u64, end: Date) -> Result<Network> {
        // The rules version is part of what the testnet's genesis hash covers, so stores
        // signed under another one are not reused; a store of an older format would be
        // migrated, a write, at the first start of every copy.
        let rules = spoc_node::charter::RULES_VERSION;
        let format = String::from_utf8_lossy(spoc_node::store::FORMAT_VERSION);
        let dir = cache_root().join(format!(
            "decade-v{CACHE_VERSION}-r{rules}-f{format}-seed{seed}-{end}"
        ));
        let net = dir.join("net");
        let states_file = net.join("states.json");
        if !states_file.exists() {
            // A half-made layout from an interrupted run is laid out again.
            if net.exists() {
                std::fs::remove_dir_all(&net)?;
            }
            std::fs::create_dir_all(&dir)?;
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let nodes = spoc_node::testnet::generate(&net, STATES, end, &mut rng)?;
            let text = decade_charter(&std::fs::read_to_string(net.join("charter.toml"))?, end)?;
            std::fs::write(net.join("charter.toml"), &text)?;
            for node in &nodes {
                std::fs::write(node.data_dir.join("charter.toml"), &text)?;
            }
            let states: Vec<&str> = nodes.iter().map(|n| n.state.as_str()).collect();
            std::fs::write(&states_file, serde_json::to_vec(&states)?)?;
        }
        let states: Vec<String> = serde_json::from_slice(&std::fs::read(&states_file)?)?;
        let charter = Arc::new(Charter::parse(&std::fs::read_to_string(
            net.join("charter.toml"),
        )?)?);
        Ok(Network {
            dir,
            charter,
            states,
            end,
        })
    }

    /// Copies the testnet to `out` (which must not exist) and returns its nodes, with
    /// their ports moved to free ones (`procs::relocate_ports`).
    pub fn lay_out(&self, out: &Path) -> Result<Vec<spoc_node::testnet::Node>> {
        copy_dir(&self.dir.join("net"), out)?;
        let mut nodes = Vec::new();
        for state in &self.states {
            let data_dir = out.join(state.to_lowercase());
            let settings = std::fs::read_to_string(data_dir.join(spoc_node::config::FILE))?;
            // `testnet::generate` writes `api = "..."` and `listen = ["..."]`, one a line.
            let field = |name: &str| -> Result<String> {
                settings
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix('='))
                    .and_then(|v| v.split('"').nth(1))
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("no {name} in the node.toml of {state}"))
            };
            nodes.push(spoc_node::testnet::Node {
                state: state.clone(),
                api: field("api")?,
                listen: field("listen")?,
                data_dir,
            });
        }
        crate::bench::procs::relocate_ports(out, &mut nodes)?;
        Ok(nodes)
    }

    /// The history of `n` entries: from the cache, or generated now (`progress` hears of
    /// it as it goes).
    pub fn history(&self, n: usize, progress: &mut dyn FnMut(&str)) -> Result<History> {
        let dir = self.dir.join(n.to_string());
        let store = dir.join(spoc_node::config::STORE_FILE);
        let facts_file = dir.join("facts.json");
        if let Ok(bytes) = std::fs::read(&facts_file)
            && let Ok(facts) = serde_json::from_slice::<Facts>(&bytes)
            && store.exists()
        {
            return Ok(History {
                store,
                facts,
                generated: false,
            });
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let facts = self.generate(n, &store, progress)?;
        std::fs::write(&facts_file, serde_json::to_vec_pretty(&facts)?)?;
        Ok(History {
            store,
            facts,
            generated: true,
        })
    }

    fn keys(&self) -> Result<Vec<SecretKey>> {
        self.states
            .iter()
            .map(|s| {
                let path = self
                    .dir
                    .join("net")
                    .join(s.to_lowercase())
                    .join("national.key");
                SecretKey::load(&path, None).with_context(|| format!("the key of {s}"))
            })
            .collect()
    }

    fn generate(
        &self,
        n: usize,
        store_path: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Facts> {
        let started = Instant::now();
        let keys = self.keys()?;
        let mut rng = ChaCha20Rng::seed_from_u64(n as u64 ^ 0xdeca_de00);
        let end_ms = ms_of(self.end)?;
        let start_ms = end_ms
            .checked_sub(n as u64 * STEP_MS)
            .ok_or_else(|| anyhow!("the history would start before 1970"))?;
        let store = Store::open(store_path)?;
        let mut maker = Maker::new(store.reader(), self.charter.clone());
        let (jobs, received) = std::sync::mpsc::sync_channel::<Job>(4_096);
        let (acks, acked) = std::sync::mpsc::sync_channel::<()>(1);
        let signer = Signer::new(self.charter.clone(), &keys, store);
        std::thread::scope(|scope| -> Result<Facts> {
            // The signer chains, signs and commits each entry while the next is made.
            let signing = scope.spawn(move || signer.run(received, acks));
            let mut model = Model::default();
            let mut lives = Lives::new(&mut rng, keys.len(), start_ms);
            let mut refused = 0usize;
            let mut presidency = String::new();
            let mut last_report = Instant::now();
            for i in 0..n {
                let now = start_ms + i as u64 * STEP_MS;
                let date = spoc_node::docs::rules::date_of_ms(now)
                    .ok_or_else(|| anyhow!("no date for {now}"))?;
                let holder = self
                    .charter
                    .presidency_at(date)
                    .map(|t| t.state.clone())
                    .ok_or_else(|| anyhow!("no Presidency on {date}"))?;
                if holder != presidency {
                    // A new Presidency convenes its own meetings.
                    model.new_presidency();
                    presidency = holder;
                }
                // The Presidency runs the meetings: it writes more than the others.
                let a = match self.states.iter().position(|s| *s == presidency) {
                    Some(p) if rng.random_bool(PRESIDENCY_SHARE) => p,
                    _ => rng.random_range(0..keys.len()),
                };
                let incarnation = lives.incarnation(&mut rng, a, now);
                let today = date.to_string();
                let turn = Turn {
                    author: &self.states[a],
                    presidency: &presidency,
                    today: &today,
                    now,
                };
                let log = LogId {
                    author: keys[a].public(),
                    incarnation,
                };
                let mut drain = || -> Result<()> {
                    // A document let go of is read back from the store once everything
                    // made so far is durable there.
                    jobs.send(Job::Flush)
                        .map_err(|_| anyhow!("the signer stopped"))?;
                    acked.recv().map_err(|_| anyhow!("the signer stopped"))
                };
                let ((doc_id, doc), item, _, effect) = data::write_one(
                    &mut rng,
                    &model,
                    &turn,
                    &mut roll,
                    &mut refused,
                    |command, ulid| {
                        maker.make(&self.states[a], log, command, now, ulid, i, &mut drain)
                    },
                )?;
                model.record(effect, item, &self.states[a]);
                if jobs
                    .send(Job::Sign {
                        key: a,
                        log,
                        now,
                        doc_id,
                        doc,
                    })
                    .is_err()
                {
                    break;
                }
                if (i + 1) % BATCH == 0 {
                    maker.let_go(i);
                    if last_report.elapsed() > Duration::from_secs(15) {
                        last_report = Instant::now();
                        progress(&format!(
                            "decade: {} of {n} entries made, {:.0} s",
                            i + 1,
                            started.elapsed().as_secs_f64(),
                        ));
                    }
                }
            }
            drop(jobs);
            let (store, logs) = signing
                .join()
                .map_err(|_| anyhow!("the signer panicked"))??;
            let documents = store.reader().doc_count()?;
            drop(store);
            let (obstacles, practices) = model.recent_items(30);
            Ok(Facts {
                entries: n,
                documents,
                logs,
                store_bytes: std::fs::metadata(store_path)?.len(),
                generated_s: started.elapsed().as_secs_f64(),
                refused,
                obstacles,
                practices,
                term: spoc_node::store::term_of_ms(end_ms.saturating_sub(1)).unwrap_or_default(),
                term_entries: term_entries(start_ms, end_ms, n)?,
            })
        })
    }
}

/// Work for the signer.
enum Job {
    /// Sign the last change of `doc`, made by `log` at `now`, as the next entry of `log`.
    Sign {
        key: usize,
        log: LogId,
        now: u64,
        doc_id: DocId,
        doc: Arc<Automerge>,
    },
    /// Commit what is signed, then say so.
    Flush,
}

/// The generator's side of the history: the documents it still writes to. Each change
/// is made on a fork of the document, which then replaces it: a document once handed to
/// the signer is never changed again.
struct Maker {
    /// The store as committed so far, to read back a document let go of.
    reader: Reader,
    /// Documents by id, with the index of the entry that last changed them.
    docs: HashMap<DocId, (Arc<Automerge>, usize)>,
    /// Every document made so far.
    known: HashSet<DocId>,
    /// The charter the history is written under.
    charter: Arc<Charter>,
}

impl Maker {
    fn new(reader: Reader, charter: Arc<Charter>) -> Maker {
        Maker {
            charter,
            reader,
            docs: HashMap::new(),
            known: HashSet::new(),
        }
    }

    /// Makes the change of `command` in `log`, as `Replica::prepare` does, on the
    /// document as the generator holds it; returns the document after it and the item
    /// made. The rules are not checked here: every node checks each entry when it takes
    /// it in, and the catch-up of this scenario takes in the whole history.
    #[allow(clippy::too_many_arguments)]
    fn make(
        &mut self,
        code: &str,
        log: LogId,
        command: &Command,
        now: u64,
        ulid: ulid::Ulid,
        i: usize,
        drain: &mut dyn FnMut() -> Result<()>,
    ) -> Result<((DocId, Arc<Automerge>), String), Refused> {
        let today = spoc_node::docs::rules::date_of_ms(now)
            .ok_or_else(|| Refused::Invalid("the clock is out of range".into()))?;
        let writer = Writer {
            code,
            now_ms: now,
            today,
            charter: &self.charter,
        };
        let id = command.target(&writer, ulid)?;
        let doc = match self.docs.get(&id) {
            Some((doc, _)) => doc.clone(),
            None if self.known.contains(&id) => {
                drain().map_err(|e| Refused::Invalid(format!("{e:#}")))?;
                let doc = self
                    .reader
                    .doc(&id)
                    .map_err(|e| Refused::Invalid(e.0))?
                    .unwrap_or_default();
                Arc::new(doc)
            }
            None => Arc::new(Automerge::new()),
        };
        let mut fork = doc.fork();
        fork.set_actor(log.actor());
        let mut tx = fork.transaction();
        let item = command.apply(&mut tx, &doc, &id, &writer, ulid)?;
        let options = automerge::transaction::CommitOptions::default()
            .with_time(i64::try_from(now / 1000).unwrap_or(i64::MAX));
        let (hash, _) = tx.commit_with(options);
        if hash.is_none() {
            return Err(Refused::Invalid("nothing to change".into()));
        }
        let fork = Arc::new(fork);
        self.known.insert(id.clone());
        self.docs.insert(id.clone(), (fork.clone(), i));
        Ok(((id, fork), item))
    }

    /// Lets go of the documents no entry changed in the last `KEEP_ENTRIES` entries.
    fn let_go(&mut self, i: usize) {
        let from = i.saturating_sub(KEEP_ENTRIES);
        self.docs.retain(|_, (_, last)| *last >= from);
    }
}

/// The signer: chains each change into its log, signs it, and commits the entries in
/// batches as a node commits an ingest.
struct Signer<'k> {
    charter: Arc<Charter>,
    keys: &'k [SecretKey],
    store: Store,
    tips: BTreeMap<LogId, Tip>,
    /// Changes appended to each document since the store last saved it whole.
    tails: HashMap<DocId, u64>,
    pending: Vec<SignedEntry>,
    /// The batch's documents as they are after it.
    latest: HashMap<DocId, Arc<Automerge>>,
}

impl<'k> Signer<'k> {
    fn new(charter: Arc<Charter>, keys: &'k [SecretKey], store: Store) -> Signer<'k> {
        Signer {
            charter,
            keys,
            store,
            tips: BTreeMap::new(),
            tails: HashMap::new(),
            pending: Vec::new(),
            latest: HashMap::new(),
        }
    }

    /// Signs and commits until the jobs end; returns the store and the number of logs.
    fn run(
        mut self,
        jobs: std::sync::mpsc::Receiver<Job>,
        acks: std::sync::mpsc::SyncSender<()>,
    ) -> Result<(Store, usize)> {
        for job in jobs {
            match job {
                Job::Sign {
                    key,
                    log,
                    now,
                    doc_id,
                    doc,
                } => {
                    self.sign(key, log, now, doc_id, doc)?;
                    if self.pending.len() == BATCH {
                        self.commit()?;
                    }
                }
                Job::Flush => {
                    self.commit()?;
                    if acks.send(()).is_err() {
                        break;
                    }
                }
            }
        }
        self.commit()?;
        let logs = self.tips.len();
        Ok((self.store, logs))
    }

    fn sign(
        &mut self,
        key: usize,
        log: LogId,
        now: u64,
        doc_id: DocId,
        doc: Arc<Automerge>,
    ) -> Result<()> {
        let key = self.keys.get(key).ok_or_else(|| anyhow!("no key {key}"))?;
        let mut change = doc
            .get_last_local_change()
            .ok_or_else(|| anyhow!("a made document has no change"))?;
        let tip = self.tips.get(&log).copied();
        let entry = Entry {
            network: self.charter.network.clone(),
            author: key.public(),
            incarnation: log.incarnation,
            seq: tip.map_or(1, |t| t.seq + 1),
            prev: tip.map(|t| t.hash),
            timestamp_ms: tip.map_or(now, |t| t.timestamp_ms.max(now)),
            doc: doc_id.clone(),
            change: change.bytes().into_owned(),
            charter: 0,
            flags: 0,
        };
        if entry.change.len() + 512 > spoc_node::log::MAX_ENTRY_BYTES {
            bail!("a made change of {doc_id} is over the entry limit");
        }
        let entry = entry.sign(key, &self.charter.scope());
        self.tips.insert(log, Tip::from(&entry));
        *self.tails.entry(doc_id.clone()).or_default() += 1;
        self.latest.insert(doc_id, doc);
        self.pending.push(entry);
        Ok(())
    }

    /// Commits the pending entries, through a replica that holds the batch's documents
    /// and the tips; a document with enough changes appended is saved whole, as a
    /// node's compaction does.
    fn commit(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut report = Report::default();
        let mut docs = HashMap::new();
        for (id, doc) in self.latest.drain() {
            let tail = self.tails.entry(id.clone()).or_default();
            if *tail > spoc_node::store::COMPACT_AFTER {
                *tail = 0;
                report.rebuilt_docs.insert(id.clone());
            }
            report.touched.insert(id.clone());
            docs.insert(id, Automerge::clone(&doc));
        }
        report.accepted = std::mem::take(&mut self.pending);
        let mut replica = Replica::with_backing(
            self.charter.clone(),
            Limits {
                max_pending_entries: 0,
                max_pending_bytes: 0,
                max_cached_docs: usize::MAX,
                ..Limits::default()
            },
            Given(std::sync::Mutex::new(docs)),
            self.tips.clone(),
            Vec::new(),
        );
        for id in &report.touched {
            replica.load_doc(id)?;
        }
        self.store.commit(&replica, &report)?;
        Ok(())
    }
}

/// The backing of the signer's replica: the documents of one batch, each given once,
/// and nothing else (every other read is `Nothing`'s).
struct Given(std::sync::Mutex<HashMap<DocId, Automerge>>);

impl Backing for Given {
    fn doc(&self, id: &DocId) -> Result<Option<Automerge>, backing::Error> {
        let mut docs = self
            .0
            .lock()
            .map_err(|_| backing::Error("the batch's documents are poisoned".into()))?;
        Ok(docs.remove(id))
    }
    fn entry(&self, log: &LogId, seq: u64) -> Result<Option<SignedEntry>, backing::Error> {
        Nothing.entry(log, seq)
    }
    fn locate(&self, hash: &EntryHash) -> Result<Option<(LogId, u64)>, backing::Error> {
        Nothing.locate(hash)
    }
    fn doc_entries(&self, id: &DocId) -> Result<Vec<SignedEntry>, backing::Error> {
        Nothing.doc_entries(id)
    }
    fn log_from(&self, log: &LogId, seq: u64) -> Result<Vec<SignedEntry>, backing::Error> {
        Nothing.log_from(log, seq)
    }
    fn entries_in_order(
        &self,
        from: &[(LogId, u64)],
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SignedEntry>, bool), backing::Error> {
        Nothing.entries_in_order(from, max, max_bytes)
    }
    fn position(&self, log: &LogId, seq: u64) -> Result<Option<u64>, backing::Error> {
        Nothing.position(log, seq)
    }
    fn arrived_from(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SignedEntry>, Option<u64>), backing::Error> {
        Nothing.arrived_from(from, max, max_bytes)
    }
    fn doc_ids(&self, collection: Collection) -> Result<Vec<DocId>, backing::Error> {
        Nothing.doc_ids(collection)
    }
    fn entry_count(&self) -> u64 {
        Nothing.entry_count()
    }
}

/// The roll of the next command: the shared mix, with one roll in twenty a new
/// obstacle, so that a million entries make about 200,000 documents.
fn roll(rng: &mut ChaCha20Rng) -> u32 {
    if rng.random_bool(0.05) {
        rng.random_range(21..28)
    } else {
        rng.random_range(0..100)
    }
}

/// Each state's node: its incarnation, and when it restarts next.
struct Lives {
    lives: Vec<(u32, u64)>,
    used: HashSet<u32>,
}

impl Lives {
    /// Every node starts at `start_ms`, and first restarts at some time within the
    /// longest interval, so that the restarts do not fall together.
    fn new(rng: &mut ChaCha20Rng, states: usize, start_ms: u64) -> Lives {
        let mut lives = Lives {
            lives: Vec::with_capacity(states),
            used: HashSet::new(),
        };
        for _ in 0..states {
            let incarnation = lives.fresh(rng);
            let first = start_ms + rng.random_range(0..RESTART_MAX_DAYS * DAY_MS);
            lives.lives.push((incarnation, first));
        }
        lives
    }

    fn fresh(&mut self, rng: &mut ChaCha20Rng) -> u32 {
        loop {
            let candidate = rng.random::<u32>();
            if candidate != 0 && self.used.insert(candidate) {
                return candidate;
            }
        }
    }

    /// The incarnation of state `a` at `now`: a new one when its node restarted since.
    fn incarnation(&mut self, rng: &mut ChaCha20Rng, a: usize, now: u64) -> u32 {
        let (_, restart) = self.lives[a];
        if now >= restart {
            let incarnation = self.fresh(rng);
            let next = now + rng.random_range(RESTART_MIN_DAYS * DAY_MS..RESTART_MAX_DAYS * DAY_MS);
            self.lives[a] = (incarnation, next);
        }
        self.lives[a].0
    }
}

/// The testnet's charter with a Presidency calendar for the decade: member states in
/// turn, one half-year each, from eleven years before `end` to four years after it.
fn decade_charter(text: &str, end: Date) -> Result<String> {
    let mut charter = Charter::parse(text)?;
    let members: Vec<String> = charter
        .participants
        .iter()
        .filter(|p| p.kind == Kind::MemberState)
        .map(|p| p.code.clone())
        .collect();
    if members.is_empty() {
        bail!("the testnet has no member state");
    }
    let mut from = Date::from_calendar_date(end.year() - 11, time::Month::January, 1)?;
    let mut terms = Vec::new();
    while from.year() < end.year() + 4 {
        let label = spoc_node::charter::half_year_label(from);
        let (_, to) = spoc_node::charter::parse_half_year(&label)
            .ok_or_else(|| anyhow!("no half-year {label}"))?;
        terms.push(Term {
            state: members[terms.len() % members.len()].clone(),
            from,
            to,
        });
        from = to
            .next_day()
            .ok_or_else(|| anyhow!("the calendar runs out of dates"))?;
    }
    charter.presidency = terms;
    let text = charter.to_toml();
    // The text must parse back: it is what every node reads.
    Charter::parse(&text)?;
    Ok(text)
}

/// How many of the `n` entries from `start_ms` fall in the half-year before `end_ms`.
fn term_entries(start_ms: u64, end_ms: u64, n: usize) -> Result<usize> {
    let last = spoc_node::docs::rules::date_of_ms(end_ms.saturating_sub(1))
        .ok_or_else(|| anyhow!("no date before {end_ms}"))?;
    let from = ms_of(half_year_start(last)?)?;
    let before = from.saturating_sub(start_ms).div_ceil(STEP_MS);
    Ok(n.saturating_sub(usize::try_from(before)?))
}

fn ms_of(date: Date) -> Result<u64> {
    Ok(u64::try_from(date.midnight().assume_utc().unix_timestamp())? * 1_000)
}

/// Copies a directory tree (files and directories only), keeping each file's mode.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for item in std::fs::read_dir(from)? {
        let item = item?;
        let target = to.join(item.file_name());
        if item.file_type()?.is_dir() {
            copy_dir(&item.path(), &target)?;
        } else {
            std::fs::copy(item.path(), &target)?;
        }
    }
    Ok(())
}
