//! Scenario 8, the decade: a node after ten years of a 31-state network, beside the same
//! node after five weeks (10,000 entries), measured in the same run.
//!
//! `history` writes each store (1,000,000 entries, about 200,000 documents and more than
//! 5,000 logs for the decade; 100,000 in the quick run) and keeps it under `target/`. On
//! a copy of each store, one real `spoc-node` process is measured: its cold start (until
//! its API answers), its RSS after the start and after 10,000 mixed reads and writes
//! through the API, the latency of a write, of a filtered list, of a page of the audit
//! trail and of a term's report; then a new, empty node of the same testnet catches up
//! from it (time and bytes), and two more nodes started on copies of the store, so in
//! sync, run their anti-entropy rounds (bytes).
//! Every figure of the large store is divided by the same figure of the small one.

pub mod history;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::{Value, json};
use spoc_tests::Proc;

use super::procs::{self, Api};
use super::report::{Outcome, Row};
use super::stats::{human, human_bytes, human_ms, latency_json, median, percentile_ms, round3};
use super::{data, size_label};
use history::{History, Network};

pub const TITLE: &str = "8. decade: a node after ten years, beside the same node after five weeks";

/// Cold starts of each store (the median is kept).
const STARTS: usize = 3;

/// How much each store is exercised: less in the quick run, which CI runs.
#[derive(Debug, Clone, Copy)]
pub struct Effort {
    /// Mixed API operations after which the RSS is read again.
    pub mixed_ops: usize,
    /// Samples of each timed read and of the writes.
    pub samples: usize,
    /// Reports of the term (the median is kept).
    pub reports: usize,
    /// The anti-entropy window over which two nodes in sync are watched.
    pub sync_window: Duration,
}

impl Effort {
    pub fn new(quick: bool) -> Effort {
        if quick {
            Effort {
                mixed_ops: 2_000,
                samples: 100,
                reports: 1,
                sync_window: Duration::from_secs(20),
            }
        } else {
            Effort {
                mixed_ops: 10_000,
                samples: 200,
                reports: 3,
                sync_window: Duration::from_secs(30),
            }
        }
    }
}
/// A catch-up that brings nothing for this long has stalled.
const STALL: Duration = Duration::from_secs(90);
/// The longest a catch-up may take, per entry beyond a minute.
const CATCH_UP_PER_ENTRY: Duration = Duration::from_millis(4);

/// The targets: growth at most 1.2x, RSS under 300 MiB, a cold start under a second.
const GROWTH: f64 = 1.2;
const RSS_LIMIT_KIB: u64 = 300 * 1024;
const COLD_LIMIT: Duration = Duration::from_secs(1);

/// The figures of one store.
#[derive(Debug)]
struct Measured {
    history: History,
    cold: Vec<Duration>,
    rss_start_kib: u64,
    hwm_start_kib: u64,
    /// After the samples and the reports, before the mixed operations.
    rss_report_kib: u64,
    rss_ops_kib: u64,
    hwm_ops_kib: u64,
    cached_docs: u64,
    publish: Vec<Duration>,
    list: Vec<Duration>,
    audit: Vec<Duration>,
    doc: Vec<Duration>,
    mixed: Duration,
    report: Vec<Duration>,
    /// The obstacles the report counts as opened in its term.
    report_obstacles: u64,
    catch_up: CatchUp,
    sync: Sync,
}

/// A new node's full catch-up from the measured node.
#[derive(Debug, Default)]
struct CatchUp {
    done: bool,
    time: Duration,
    held: u64,
    of: u64,
    bytes: Option<u64>,
    /// Why one node cut the other off, when one did (then the catch-up cannot finish).
    cut_off: Option<String>,
}

/// Two nodes in sync, watched over a window of anti-entropy periods.
#[derive(Debug, Default)]
struct Sync {
    logs: u64,
    bytes: Option<u64>,
    /// Anti-entropy periods in the window.
    periods: f64,
    peers_at_end: usize,
    /// Why one node refused the other for good, when one did.
    refused: Option<String>,
}

impl Sync {
    fn per_period(&self) -> Option<f64> {
        self.bytes.map(|b| b as f64 / self.periods.max(1.0))
    }
}

/// Runs the scenario on the stores of `sizes` (the first is the reference, the last the
/// decade), generating those not in the cache.
pub fn run(
    sizes: &[usize],
    seed: u64,
    effort: Effort,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome> {
    let today = time::OffsetDateTime::now_utc().date();
    let end = history::half_year_start(today)?;
    let network = Network::open(seed, end)?;
    let mut histories = Vec::new();
    for &n in sizes {
        let h = network.history(n, progress)?;
        progress(&format!(
            "decade: {} entries, {} documents, {} logs, store {} ({})",
            size_label(n),
            h.facts.documents,
            h.facts.logs,
            human_bytes(h.facts.store_bytes as f64),
            if h.generated {
                format!("generated in {:.1} s", h.facts.generated_s)
            } else {
                "from the cache".into()
            }
        ));
        histories.push(h);
    }
    let mut measured = Vec::new();
    for h in histories {
        let n = h.facts.entries;
        progress(&format!("decade: measuring {} entries", size_label(n)));
        measured.push(
            measure(&network, h, seed, effort, progress)
                .with_context(|| format!("{} entries", size_label(n)))?,
        );
    }
    Ok(outcome(&measured, effort))
}

fn measure(
    network: &Network,
    history: History,
    seed: u64,
    effort: Effort,
    progress: &mut dyn FnMut(&str),
) -> Result<Measured> {
    let n = history.facts.entries;
    let root = tempfile::tempdir()?;
    let nodes = network.lay_out(&root.path().join("net"))?;
    let [serving, joining] = [&nodes[0], &nodes[1]];
    // Two more nodes, 2 and 3, are started in sync at the end.
    data::copy_store(
        &history.store,
        &serving.data_dir.join(spoc_node::config::STORE_FILE),
    )?;

    // Cold starts: from the spawn until the API answers with the whole store.
    let (cold, p, api) = procs::cold_starts(serving, STARTS, |status| {
        if status["entries"].as_u64() != Some(n as u64)
            || status["logs"].as_u64() != Some(history.facts.logs as u64)
        {
            bail!(
                "the node started with {} entries and {} logs, not {n} and {}",
                status["entries"],
                status["logs"],
                history.facts.logs
            );
        }
        Ok(())
    })?;
    let pid = p.pid().ok_or_else(|| anyhow!("the node has no pid"))?;
    let rss_start_kib = procs::vm_kib(pid, "VmRSS")?;
    let hwm_start_kib = procs::vm_kib(pid, "VmHWM")?;

    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ n as u64);
    let pool = Pool::gather(&api, &history, &mut rng)?;

    // Writes: a comment on a recent obstacle, until it is signed and durable.
    let mut publish = Vec::new();
    for i in 0..effort.samples + 5 {
        let t = Instant::now();
        api.write(&pool.comment(&mut rng))?;
        if i >= 5 {
            publish.push(t.elapsed());
        }
    }
    let timed = |path: &str| -> Result<Duration> {
        let t = Instant::now();
        let (status, body) = api.get(path)?;
        let elapsed = t.elapsed();
        if status != 200 {
            bail!("GET {path} answered {status}: {body}");
        }
        Ok(elapsed)
    };
    let mut list = Vec::new();
    let mut audit = Vec::new();
    let mut doc = Vec::new();
    for _ in 0..effort.samples {
        list.push(timed(&pool.list(&mut rng))?);
        audit.push(timed(&pool.audit(&mut rng))?);
        doc.push(timed(&pool.doc(&mut rng))?);
    }
    let mut report = Vec::new();
    let mut report_obstacles = 0;
    for _ in 0..effort.reports {
        let path = format!("/v1/report?term={}", history.facts.term);
        let t = Instant::now();
        let (status, body) = api.get(&path)?;
        report.push(t.elapsed());
        if status != 200 {
            bail!("GET {path} answered {status}: {body}");
        }
        report_obstacles = body["obstacles_opened"].as_u64().unwrap_or(0);
    }

    let rss_report_kib = procs::vm_kib(pid, "VmRSS")?;

    // Mixed reads and writes: documents, filtered lists and audit pages, one write in five.
    progress(&format!(
        "decade: {} mixed operations on {} entries",
        effort.mixed_ops,
        size_label(n)
    ));
    let t = Instant::now();
    for _ in 0..effort.mixed_ops {
        match rng.random_range(0..100u32) {
            0..=39 => {
                timed(&pool.doc(&mut rng))?;
            }
            40..=64 => {
                timed(&pool.list(&mut rng))?;
            }
            65..=79 => {
                timed(&pool.audit(&mut rng))?;
            }
            _ => {
                api.write(&pool.write(&mut rng))?;
            }
        }
    }
    let mixed = t.elapsed();
    let rss_ops_kib = procs::vm_kib(pid, "VmRSS")?;
    let hwm_ops_kib = procs::vm_kib(pid, "VmHWM")?;
    let cached_docs = api.status()?["cached_documents"].as_u64().unwrap_or(0);

    progress(&format!(
        "decade: a new node catches up on {} entries",
        size_label(n)
    ));
    let catch_up = catch_up(&api, joining, &nodes)?;
    drop(p);
    progress(&format!(
        "decade: two nodes in sync on {} entries",
        size_label(n)
    ));
    let sync = in_sync(&history, [&nodes[2], &nodes[3]], &nodes, effort.sync_window)?;
    Ok(Measured {
        history,
        cold,
        rss_start_kib,
        hwm_start_kib,
        rss_report_kib,
        rss_ops_kib,
        hwm_ops_kib,
        cached_docs,
        publish,
        list,
        audit,
        doc,
        mixed,
        report,
        report_obstacles,
        catch_up,
        sync,
    })
}

/// An empty node of the same testnet starts and pulls everything from the serving node;
/// then the two, in sync, are watched over `window`.
fn catch_up(
    api: &Api,
    joining: &spoc_node::testnet::Node,
    nodes: &[spoc_node::testnet::Node],
) -> Result<CatchUp> {
    let target = api.status()?;
    let of = target["entries"].as_u64().unwrap_or(0);
    let digest = target["digest"].clone();
    let mut new = Proc::start(&procs::info(joining))?;
    let start = Instant::now();
    let new_api = Api::of(&new)?;
    let pid = new
        .pid()
        .ok_or_else(|| anyhow!("the new node has no pid"))?;
    let api_ports: HashSet<u16> = nodes
        .iter()
        .map(|node| procs::api_port(&node.api))
        .collect::<Result<_>>()?;
    let limit = Duration::from_secs(60) + CATCH_UP_PER_ENTRY * u32::try_from(of)?;
    let mut held = 0;
    let mut moved = Instant::now();
    let mut done = false;
    let mut cut_off = None;
    let mut polls = 0u64;
    while moved.elapsed() < STALL && start.elapsed() < limit {
        let status = new_api.status()?;
        if status["digest"] == digest {
            done = true;
            held = status["entries"].as_u64().unwrap_or(0);
            break;
        }
        let now_held = status["entries"].as_u64().unwrap_or(0);
        if now_held != held {
            held = now_held;
            moved = Instant::now();
        }
        // A node that refused the other (an oversized sync request, say) deny-lists it:
        // the catch-up cannot finish with this protocol, and waiting proves nothing more.
        polls += 1;
        if polls.is_multiple_of(10) {
            for (who, s) in [
                ("the new node", &status),
                ("the serving node", &api.status()?),
            ] {
                if let Some((reason, n)) = lasting_refusal(s) {
                    cut_off = Some(format!("{who} refused its peer {n} times: {reason}"));
                }
            }
            if cut_off.is_some() {
                held = now_held;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let time = start.elapsed();
    let bytes = procs::tcp_bytes(&[pid], &api_ports)?
        .and_then(|m| m.get(&pid).copied())
        .map(|(s, r)| s + r);
    let catch_up = CatchUp {
        done,
        time,
        held,
        of,
        bytes,
        cut_off,
    };
    new.kill9()?;
    Ok(catch_up)
}

/// Two more nodes of the testnet start on copies of the history's store, so that they
/// hold the same logs from the start, and are watched for `window` once one has admitted
/// the other: what their sockets carry is the anti-entropy (pull requests holding every
/// log's height, answers holding nothing), beside gossipsub's heartbeats and pings.
fn in_sync(
    history: &History,
    pair: [&spoc_node::testnet::Node; 2],
    nodes: &[spoc_node::testnet::Node],
    window: Duration,
) -> Result<Sync> {
    for node in pair {
        data::copy_store(
            &history.store,
            &node.data_dir.join(spoc_node::config::STORE_FILE),
        )?;
    }
    let api_ports: HashSet<u16> = nodes
        .iter()
        .map(|node| procs::api_port(&node.api))
        .collect::<Result<_>>()?;
    let mut watched = Proc::start(&procs::info(pair[0]))?;
    let other = Proc::start(&procs::info(pair[1]))?;
    watched.wait_log("peer admitted", Duration::from_secs(60))?;
    let pid = watched
        .pid()
        .ok_or_else(|| anyhow!("the watched node has no pid"))?;
    let before = procs::tcp_bytes(&[pid], &api_ports)?.and_then(|m| m.get(&pid).copied());
    let t = Instant::now();
    std::thread::sleep(window);
    let after = procs::tcp_bytes(&[pid], &api_ports)?.and_then(|m| m.get(&pid).copied());
    let mut sync = Sync {
        logs: history.facts.logs as u64,
        periods: t.elapsed().as_secs_f64() / spoc_node::service::sync::ANTI_ENTROPY.as_secs_f64(),
        ..Sync::default()
    };
    for p in [&watched, &other] {
        let status = Api::of(p)?.status()?;
        if let Some((reason, n)) = lasting_refusal(&status) {
            sync.refused = Some(format!("refused its peer {n} times: {reason}"));
        }
        if p.pid() == Some(pid) {
            sync.peers_at_end = status["peers"].as_array().map_or(0, Vec::len);
        }
    }
    // A refused peer's sockets are closed, and their counters with them.
    if sync.refused.is_none() {
        sync.bytes = before
            .zip(after)
            .map(|(b, a)| (a.0 + a.1).saturating_sub(b.0 + b.1));
    }
    drop((watched, other));
    Ok(sync)
}

/// A refusal of a peer that lasts (a deny-listing), from a node's status: a late
/// admission is not one.
fn lasting_refusal(status: &Value) -> Option<(String, Value)> {
    status["refused_peers"]
        .as_object()?
        .iter()
        .find(|(k, _)| !k.starts_with("no admission"))
        .map(|(k, n)| (k.clone(), n.clone()))
}

/// What the operations read and write: recent obstacles and practices, and documents
/// from all over the history (found through audit pages at random positions).
struct Pool {
    entries: u64,
    obstacles: Vec<String>,
    practices: Vec<String>,
    docs: Vec<String>,
    states: Vec<String>,
}

impl Pool {
    fn gather(api: &Api, history: &History, rng: &mut ChaCha20Rng) -> Result<Pool> {
        let entries = history.facts.entries as u64;
        let mut docs = HashSet::new();
        for _ in 0..50 {
            let before = rng.random_range(1..=entries);
            let (status, body) = api.get(&format!("/v1/log?limit=20&before={before}"))?;
            if status != 200 {
                bail!("/v1/log answered {status}: {body}");
            }
            for e in body["entries"].as_array().into_iter().flatten() {
                if let Some(d) = e["doc"].as_str() {
                    docs.insert(d.to_owned());
                }
            }
        }
        let mut docs: Vec<String> = docs.into_iter().collect();
        docs.sort();
        let status = api.status()?;
        let states = status["states"]
            .as_object()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        if history.facts.obstacles.is_empty() || docs.is_empty() {
            bail!("the history has no obstacle or no document to read");
        }
        Ok(Pool {
            entries,
            obstacles: history.facts.obstacles.clone(),
            practices: history.facts.practices.clone(),
            docs,
            states,
        })
    }

    fn pick<'a>(rng: &mut ChaCha20Rng, items: &'a [String]) -> &'a str {
        items
            .get(rng.random_range(0..items.len().max(1)))
            .map_or("", String::as_str)
    }

    fn comment(&self, rng: &mut ChaCha20Rng) -> Value {
        json!({
            "command": "obstacle_comment",
            "obstacle": Self::pick(rng, &self.obstacles),
            "text": data::text_in(rng, 60..400),
        })
    }

    fn write(&self, rng: &mut ChaCha20Rng) -> Value {
        match rng.random_range(0..4u32) {
            0 if !self.practices.is_empty() => json!({
                "command": "practice_comment",
                "practice": Self::pick(rng, &self.practices),
                "text": data::text_in(rng, 60..400),
            }),
            1 => json!({
                "command": "obstacle_report",
                "title": "A delay in cross-border requests",
                "type": "pragmatic",
                "description": data::text_in(rng, 300..1_200),
            }),
            _ => self.comment(rng),
        }
    }

    fn doc(&self, rng: &mut ChaCha20Rng) -> String {
        format!("/v1/doc?id={}", Self::pick(rng, &self.docs))
    }

    fn list(&self, rng: &mut ChaCha20Rng) -> String {
        let state = Self::pick(rng, &self.states);
        match rng.random_range(0..3u32) {
            0 => format!("/v1/docs?collection=obstacles&state={state}&limit=50"),
            1 => "/v1/docs?collection=obstacles&status=reported&limit=50".into(),
            _ => format!("/v1/docs?collection=practices&state={state}&limit=50"),
        }
    }

    fn audit(&self, rng: &mut ChaCha20Rng) -> String {
        let before = rng.random_range(1..=self.entries);
        format!("/v1/log?limit=50&before={before}")
    }
}

/// A latency compared between the stores: its key, its name, the large store's samples
/// and the small one's, the percentile and the growth allowed.
type LatencyRow<'a> = (
    &'a str,
    &'a str,
    &'a [Duration],
    &'a [Duration],
    f64,
    Option<f64>,
);

/// `large / small`.
fn growth(large: f64, small: f64) -> f64 {
    large / small.max(f64::MIN_POSITIVE)
}

fn outcome(measured: &[Measured], effort: Effort) -> Outcome {
    let mut o = Outcome::new("decade", TITLE);
    let sizes: Vec<Value> = measured.iter().map(|m| size_json(m, effort)).collect();
    let (Some(small), Some(large)) = (measured.first(), measured.last()) else {
        o.json = json!({"sizes": sizes, "target_met": Value::Null});
        return o;
    };
    let case = format!(
        "{} vs {}",
        size_label(large.history.facts.entries),
        size_label(small.history.facts.entries)
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mib = |kib: u64| human_bytes(kib as f64 * 1024.0);
    let mut ratios = serde_json::Map::new();
    let mut add = |o: &mut Outcome,
                   key: &str,
                   measure: &str,
                   large_text: String,
                   small_text: String,
                   ratio: f64,
                   limit: Option<f64>| {
        ratios.insert(key.into(), json!(round3(ratio)));
        o.rows.push(Row::ratio(
            case.clone(),
            measure,
            large_text,
            small_text,
            ratio,
            limit,
        ));
    };
    let cold = (median(&large.cold), median(&small.cold));
    add(
        &mut o,
        "cold_start",
        "cold start (until the API answers)",
        human(cold.0),
        human(cold.1),
        growth(ms(cold.0), ms(cold.1)),
        None,
    );
    o.rows.push(Row {
        met: Some(cold.0 < COLD_LIMIT),
        target: "< 1 s".into(),
        ..Row::context(
            case.clone(),
            "cold start, absolute",
            human(cold.0),
            human(cold.1),
        )
    });
    for (key, measure, l, s) in [
        (
            "rss_start",
            "RSS after the start",
            large.rss_start_kib,
            small.rss_start_kib,
        ),
        (
            "rss_after_ops",
            "RSS after the mixed operations",
            large.rss_ops_kib,
            small.rss_ops_kib,
        ),
    ] {
        add(
            &mut o,
            key,
            measure,
            mib(l),
            mib(s),
            growth(l as f64, s as f64),
            Some(GROWTH),
        );
        o.rows.push(Row {
            met: Some(l < RSS_LIMIT_KIB),
            target: "< 300 MiB".into(),
            ..Row::context(case.clone(), format!("{measure}, absolute"), mib(l), mib(s))
        });
    }
    let latencies: [LatencyRow<'_>; 5] = [
        (
            "publish_p50",
            "publish p50",
            &large.publish,
            &small.publish,
            50.0,
            Some(GROWTH),
        ),
        (
            "publish_p99",
            "publish p99",
            &large.publish,
            &small.publish,
            99.0,
            Some(GROWTH),
        ),
        (
            "list_p50",
            "filtered list p50",
            &large.list,
            &small.list,
            50.0,
            Some(GROWTH),
        ),
        (
            "audit_p50",
            "audit page p50",
            &large.audit,
            &small.audit,
            50.0,
            None,
        ),
        (
            "doc_p50",
            "document read p50",
            &large.doc,
            &small.doc,
            50.0,
            None,
        ),
    ];
    for (key, measure, l, s, pct, limit) in latencies {
        let (a, b) = (percentile_ms(l, pct), percentile_ms(s, pct));
        add(
            &mut o,
            key,
            measure,
            human_ms(a),
            human_ms(b),
            growth(a, b),
            limit,
        );
    }
    let report = (median(&large.report), median(&small.report));
    add(
        &mut o,
        "report",
        "report of a term",
        format!(
            "{} ({} entries)",
            human(report.0),
            large.history.facts.term_entries
        ),
        format!(
            "{} ({} entries)",
            human(report.1),
            small.history.facts.term_entries
        ),
        growth(ms(report.0), ms(report.1)),
        None,
    );
    let catch = |m: &Measured| {
        let c = &m.catch_up;
        let bytes = c
            .bytes
            .map_or_else(|| "bytes not measured".into(), |b| human_bytes(b as f64));
        if c.done {
            format!("{}, {bytes}", human(c.time))
        } else {
            format!(
                "NOT caught up: {} of {} after {}{}, {bytes}",
                c.held,
                c.of,
                human(c.time),
                if c.cut_off.is_some() {
                    " (cut off)"
                } else {
                    ""
                }
            )
        }
    };
    add(
        &mut o,
        "catch_up_time_per_entry",
        "new node's catch-up (time per entry)",
        catch(large),
        catch(small),
        growth(
            ms(large.catch_up.time) / large.catch_up.of.max(1) as f64,
            ms(small.catch_up.time) / small.catch_up.of.max(1) as f64,
        ),
        None,
    );
    if let (Some(l), Some(s)) = (large.catch_up.bytes, small.catch_up.bytes) {
        add(
            &mut o,
            "catch_up_bytes_per_entry",
            "new node's catch-up (bytes per entry)",
            format!("{:.0} B/entry", l as f64 / large.catch_up.of.max(1) as f64),
            format!("{:.0} B/entry", s as f64 / small.catch_up.of.max(1) as f64),
            growth(
                l as f64 / large.catch_up.of.max(1) as f64,
                s as f64 / small.catch_up.of.max(1) as f64,
            ),
            None,
        );
    }
    let sync_text = |m: &Measured| match (m.sync.per_period(), &m.sync.refused) {
        (Some(b), _) => format!("{} per 10 s ({} logs)", human_bytes(b), m.sync.logs),
        (None, Some(why)) => format!("a node {why} ({} logs)", m.sync.logs),
        (None, None) => format!("not measured ({} logs)", m.sync.logs),
    };
    match (large.sync.per_period(), small.sync.per_period()) {
        (Some(l), Some(s)) => add(
            &mut o,
            "sync_in_sync_bytes",
            "two nodes in sync: bytes",
            sync_text(large),
            sync_text(small),
            growth(l, s),
            Some(GROWTH),
        ),
        _ => o.rows.push(Row {
            met: Some(false),
            target: format!("≤ {GROWTH}×"),
            ..Row::context(
                case.clone(),
                "two nodes in sync: bytes",
                sync_text(large),
                sync_text(small),
            )
        }),
    }
    let met = o.target_met();
    let failed: Vec<String> = measured
        .iter()
        .filter(|m| !m.catch_up.done)
        .map(|m| {
            let why = match &m.catch_up.cut_off {
                Some(reason) => format!("{reason} (a deny-listed peer is not pulled from)"),
                None => format!(
                    "it had stopped progressing for {} s or run out of time",
                    STALL.as_secs()
                ),
            };
            format!(
                "FAILED: at {} entries the new node held {} of {} entries after {}: {why}",
                size_label(m.history.facts.entries),
                m.catch_up.held,
                m.catch_up.of,
                human(m.catch_up.time),
            )
        })
        .collect();
    o.failed = !failed.is_empty();
    o.json = json!({
        "target": "at the decade size: RSS <= 1.2x the small store's and < 300 MiB, cold start < 1 s, \
                   publish p50 and p99 and filtered list p50 <= 1.2x, bytes of two nodes in sync <= 1.2x",
        "sizes": sizes,
        "ratios": Value::Object(ratios),
        "target_met": met,
    });
    o.notes.extend(failed);
    o.notes.push(format!(
        "data: a 31-state testnet; {} entries make {} documents and {} logs (store {}), {} entries \
         make {} documents and {} logs (store {}); one entry every {:.0} s of history, so 1,000,000 \
         entries make ten years; every state restarts every {}–{} days and each start opens a log",
        large.history.facts.entries,
        large.history.facts.documents,
        large.history.facts.logs,
        human_bytes(large.history.facts.store_bytes as f64),
        small.history.facts.entries,
        small.history.facts.documents,
        small.history.facts.logs,
        human_bytes(small.history.facts.store_bytes as f64),
        history::STEP_MS as f64 / 1e3,
        history::RESTART_MIN_DAYS,
        history::RESTART_MAX_DAYS,
    ));
    for m in measured {
        let f = &m.history.facts;
        o.notes.push(format!(
            "{}: {}; the node held {} documents in memory after the mixed operations ({} in {})",
            size_label(f.entries),
            if m.history.generated {
                format!("generated in {:.1} s in this run", f.generated_s)
            } else {
                format!(
                    "taken from the cache (generated in {:.1} s when it was made)",
                    f.generated_s
                )
            },
            m.cached_docs,
            effort.mixed_ops,
            human(m.mixed),
        ));
    }
    o.notes.push(format!(
        "measured on one real spoc-node per store (a copy, its page cache warm from the copy): \
         cold start = spawn until GET /v1/status answers (median of {STARTS}); RSS = VmRSS; publish = \
         POST /v1/commands (a comment on a recent obstacle) until signed and durable, {} \
         samples after 5 warm-ups; list = GET /v1/docs with a state or status filter, first page of \
         50; audit = GET /v1/log?limit=50&before=P at random positions; document = GET /v1/doc of \
         documents from all over the history; report = GET /v1/report of the last half-year \
         (median of {}); {} mixed operations: 40% document reads, 25% lists, 15% audit pages, 20% \
         writes",
        effort.samples, effort.reports, effort.mixed_ops
    ));
    o.notes.push(format!(
        "catch-up: an empty node of the same testnet starts beside the serving node and pulls until \
         their digests are equal; bytes = the TCP payload its sockets sent and received (kernel \
         counters via `ss`). In sync: two more nodes start on copies of the same store and are \
         watched for {} s once admitted: the bytes are one node's, both ways, per 10-second \
         anti-entropy period, which holds one pull each way (in sync, one range fingerprint \
         each way) beside gossipsub heartbeats and pings. The new node takes the serving \
         node's stream once it wants more logs than one request names (above 256 logs)",
        effort.sync_window.as_secs()
    ));
    o
}

fn size_json(m: &Measured, effort: Effort) -> Value {
    let f = &m.history.facts;
    json!({
        "entries": f.entries,
        "documents": f.documents,
        "logs": f.logs,
        "store_bytes": f.store_bytes,
        "generated_in_this_run": m.history.generated,
        "generation_s": round3(f.generated_s),
        "term": f.term,
        "cold_start_ms": m.cold.iter().map(|d| round3(d.as_secs_f64() * 1e3)).collect::<Vec<_>>(),
        "cold_start_median_ms": round3(median(&m.cold).as_secs_f64() * 1e3),
        "rss_after_start_kib": m.rss_start_kib,
        "hwm_after_start_kib": m.hwm_start_kib,
        "rss_after_samples_and_reports_kib": m.rss_report_kib,
        "rss_after_mixed_ops_kib": m.rss_ops_kib,
        "hwm_after_mixed_ops_kib": m.hwm_ops_kib,
        "cached_documents_after_ops": m.cached_docs,
        "mixed_ops": effort.mixed_ops,
        "mixed_ops_ms": round3(m.mixed.as_secs_f64() * 1e3),
        "publish": latency_json(&m.publish),
        "list": latency_json(&m.list),
        "audit": latency_json(&m.audit),
        "doc": latency_json(&m.doc),
        "report_ms": m.report.iter().map(|d| round3(d.as_secs_f64() * 1e3)).collect::<Vec<_>>(),
        "report_term_entries": f.term_entries,
        "report_obstacles_opened": m.report_obstacles,
        "catch_up": {
            "caught_up": m.catch_up.done,
            "time_ms": round3(m.catch_up.time.as_secs_f64() * 1e3),
            "held_entries": m.catch_up.held,
            "of_entries": m.catch_up.of,
            "bytes": m.catch_up.bytes,
            "cut_off": m.catch_up.cut_off,
        },
        "in_sync": {
            "logs": m.sync.logs,
            "window_s": effort.sync_window.as_secs(),
            "bytes": m.sync.bytes,
            "bytes_per_period": m.sync.per_period().map(round3),
            "peers_at_end": m.sync.peers_at_end,
            "refused": m.sync.refused,
        },
    })
}
