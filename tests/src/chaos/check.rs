//! The checker: how long the nodes take to converge after each heal, and the final verdict.
//!
//! Convergence is awaited with the nodes' long poll (`/v1/wait`), never by polling on a
//! timer. A *convergence sample* is one node after one heal: the milliseconds from the heal
//! (firewall rules gone, stopped nodes continued, killed nodes being restarted) until that
//! node holds every entry acknowledged so far that was not yet seen on every node.
//!
//! The final verdict, once the writers have stopped and the last fault is healed:
//! - *lost*: acknowledged entries that some node does not hold (`lost_everywhere`: that no
//!   node holds);
//! - *unexpected*: what no client wrote: an obstacle whose title no client attempted, an
//!   acknowledged id under another title, a title twice, or more entries by a state than it
//!   had acknowledged plus unknown-outcome writes;
//! - *converged*: every round converged within the bound, every node ends with identical
//!   heights and an identical obstacle list, and every node's `/v1/verify` passes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use super::helper::Helper;
use super::lab::Lab;
use super::schedule::Round;
use super::workload::{self, Kind, Shared};

/// How many hashes one long poll names (its URL stays short).
const CHUNK: usize = 100;

/// Waits until the node holds every one of `hashes`, or `deadline`; returns the missing
/// ones (empty when all are there).
fn await_entries(helper: &Helper, hashes: &[String], deadline: Instant) -> Vec<String> {
    let mut missing = Vec::new();
    for chunk in hashes.chunks(CHUNK) {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(120))
            .max(Duration::from_millis(1));
        let path = format!(
            "/v1/wait?entries={}&timeout_ms={}",
            chunk.join(","),
            left.as_millis()
        );
        match helper.get(&path, left + Duration::from_secs(5)) {
            Ok(r) if r.status == 200 && r.body["present"] == Value::Bool(true) => {}
            Ok(r) if r.status == 200 => missing.extend(
                r.body["missing"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|h| h.as_str().map(str::to_owned)),
            ),
            _ => missing.extend(chunk.iter().cloned()),
        }
    }
    missing
}

/// Each node's convergence after one heal.
#[derive(Debug, Default)]
pub struct Convergence {
    /// Per node: ms from the heal until it held everything, or `None` if it did not
    /// within the bound.
    pub per_node_ms: Vec<Option<u64>>,
    /// Per node: how many entries it still lacked at the bound.
    pub missing: Vec<usize>,
    /// How many entries were awaited.
    pub awaited: usize,
}

impl Convergence {
    pub fn converged(&self) -> bool {
        self.per_node_ms.iter().all(Option::is_some)
    }

    pub fn max_ms(&self) -> Option<u64> {
        self.per_node_ms.iter().flatten().max().copied()
    }

    pub fn missing_summary(&self) -> String {
        self.missing
            .iter()
            .enumerate()
            .filter(|(_, m)| **m > 0)
            .map(|(i, m)| format!("node {i} lacks {m}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Awaits `hashes` on every node at once, measuring from `since`.
fn converge(
    lab: &Lab,
    hashes: &[String],
    since: Instant,
    reach: Duration,
) -> Result<(Convergence, BTreeSet<String>)> {
    let helpers: Vec<_> = lab
        .nodes
        .iter()
        .map(|n| n.helper())
        .collect::<Result<_>>()?;
    let deadline = Instant::now().max(since) + reach;
    let results: Vec<(Option<u64>, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = helpers
            .iter()
            .map(|h| {
                scope.spawn(move || {
                    let missing = await_entries(h, hashes, deadline);
                    let took = missing
                        .is_empty()
                        .then(|| u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX));
                    (took, missing)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((None, Vec::new())))
            .collect()
    });
    let mut c = Convergence {
        awaited: hashes.len(),
        ..Convergence::default()
    };
    let mut all_missing = BTreeSet::new();
    for (took, missing) in results {
        c.per_node_ms.push(took);
        c.missing.push(missing.len());
        all_missing.extend(missing);
    }
    Ok((c, all_missing))
}

/// After a round's heal: awaits, on every node, the entries acknowledged and not yet seen
/// everywhere. Those still missing at the bound are awaited again after the next heal.
pub fn converge_round(
    lab: &Lab,
    ledger: &Shared,
    healed: Instant,
    reach: Duration,
) -> Result<Convergence> {
    let hashes = std::mem::take(&mut workload::lock(ledger).unconfirmed);
    let (c, missing) = converge(lab, &hashes, healed, reach)?;
    workload::lock(ledger).unconfirmed.extend(missing);
    Ok(c)
}

/// One round in the report.
#[derive(Debug, Serialize)]
pub struct RoundReport {
    pub index: usize,
    pub label: String,
    pub fault: Round,
    pub awaited: usize,
    pub converge_max_ms: Option<u64>,
    pub converged: bool,
}

/// The figures of a run.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub nodes: usize,
    pub seed: u64,
    pub duration_s: u64,
    pub fault_seconds: f64,
    pub slow_node: Option<String>,
    pub delay_ms: u64,
    /// The number of fault rounds.
    pub faults: usize,
    /// The number of rounds of each kind of fault.
    pub fault_kinds: BTreeMap<String, usize>,
    pub rounds: Vec<RoundReport>,
    pub rounds_not_converged: usize,
    pub kills: u64,
    pub stops: u64,
    pub restarts: usize,
    pub restart_p50_ms: Option<u64>,
    pub restart_max_ms: Option<u64>,
    #[serde(skip)]
    pub restart_ms: Vec<u64>,
    pub proxy_connections: u64,
    pub attempted: u64,
    pub acknowledged: usize,
    pub acknowledged_by_kind: BTreeMap<String, usize>,
    pub unknown_outcome: usize,
    pub undelivered: u64,
    pub refused: BTreeMap<String, u64>,
    pub lost: usize,
    pub lost_everywhere: usize,
    pub unexpected: usize,
    pub unexpected_detail: Vec<String>,
    pub converged: bool,
    /// What a convergence sample is.
    pub converge_per: &'static str,
    pub converge_samples: usize,
    pub converge_p50_ms: Option<u64>,
    pub converge_p99_ms: Option<u64>,
    pub converge_max_ms: Option<u64>,
    #[serde(skip)]
    samples: Vec<u64>,
    /// Per node: ms from the end of the faults until it held every acknowledged entry.
    pub final_converge_ms: Vec<Option<u64>>,
    pub entries: u64,
    pub obstacles: usize,
    pub heights_identical: bool,
    pub lists_identical: bool,
    pub verified: bool,
    pub verify_errors: Vec<String>,
    /// The highest resident memory of any node, sampled at every heal and at the end.
    pub max_rss_mib: f64,
    /// Each node's resident memory at the end.
    pub rss_mib: Vec<f64>,
    pub unexpected_exits: Vec<String>,
    pub interrupted: bool,
    pub elapsed_s: f64,
    #[serde(skip)]
    started: Option<Instant>,
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Summary {
    pub fn new(
        nodes: usize,
        seed: u64,
        duration_s: u64,
        slow_node: Option<String>,
        delay_ms: u64,
    ) -> Summary {
        Summary {
            nodes,
            seed,
            duration_s,
            slow_node,
            delay_ms,
            converge_per: "node per heal: ms from a heal until that node held every entry acknowledged before it",
            started: Some(Instant::now()),
            ..Summary::default()
        }
    }

    pub fn record_round(&mut self, round: &Round, c: &Convergence, lab: &Lab) {
        self.faults += 1;
        let kind = serde_json::to_value(&round.fault)
            .ok()
            .and_then(|v| v["kind"].as_str().map(str::to_owned))
            .unwrap_or_default();
        *self.fault_kinds.entry(kind).or_default() += 1;
        if c.awaited > 0 {
            self.samples.extend(c.per_node_ms.iter().flatten());
        }
        if !c.converged() {
            self.rounds_not_converged += 1;
        }
        for n in &lab.nodes {
            self.max_rss_mib = self.max_rss_mib.max(n.rss_mib().unwrap_or(0.0));
        }
        self.rounds.push(RoundReport {
            index: round.index,
            label: round.label(),
            fault: round.clone(),
            awaited: c.awaited,
            converge_max_ms: c.max_ms(),
            converged: c.converged(),
        });
    }

    /// Whether the run passed: nothing lost, nothing unexpected, converged, no node died by
    /// itself, and the run was not cut short.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.unexpected == 0
            && self.converged
            && self.unexpected_exits.is_empty()
            && !self.interrupted
    }

    /// The figures for a person.
    pub fn text(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
        let mut t = format!(
            "spoc-chaos: {} nodes, seed {}, {:.0} s of faults ({} rounds {:?}; {} kill -9, {} SIGSTOP), slow node {} (+{} ms each way, {} proxied connections)\n",
            self.nodes,
            self.seed,
            self.fault_seconds,
            self.faults,
            self.fault_kinds,
            self.kills,
            self.stops,
            self.slow_node.as_deref().unwrap_or("none"),
            self.delay_ms,
            self.proxy_connections
        );
        t.push_str(&format!(
            "writes: {} attempted, {} acknowledged {:?}, {} unknown outcome, {} undelivered, refused {:?}\n",
            self.attempted, self.acknowledged, self.acknowledged_by_kind, self.unknown_outcome, self.undelivered, self.refused
        ));
        t.push_str(&format!(
            "lost: {} (on no node: {}); unexpected: {}; entries {} on every node, {} obstacles\n",
            self.lost, self.lost_everywhere, self.unexpected, self.entries, self.obstacles
        ));
        t.push_str(&format!(
            "convergence after a heal ({} samples, per node per heal): p50 {}, p99 {}, max {}; rounds not converged: {}\n",
            self.converge_samples,
            ms(self.converge_p50_ms),
            ms(self.converge_p99_ms),
            ms(self.converge_max_ms),
            self.rounds_not_converged
        ));
        t.push_str(&format!(
            "final: heights identical {}, lists identical {}, verify {}; restarts {} (p50 {}, max {}); max RSS {:.0} MiB (at the end {:?}); unexpected exits {}\n",
            self.heights_identical,
            self.lists_identical,
            self.verified,
            self.restarts,
            ms(self.restart_p50_ms),
            ms(self.restart_max_ms),
            self.max_rss_mib,
            self.rss_mib,
            self.unexpected_exits.len()
        ));
        for d in self
            .unexpected_detail
            .iter()
            .chain(&self.verify_errors)
            .chain(&self.unexpected_exits)
        {
            t.push_str(&format!("  {d}\n"));
        }
        t.push_str(if self.ok() { "PASS" } else { "FAIL" });
        t
    }
}

/// Every entry of a node's audit trail, with its author.
fn log_entries(h: &super::helper::Helper, timeout: Duration) -> Result<Vec<(String, String)>> {
    let log = spoc_tests::all_pages(|path| h.get_ok(path, timeout), "/v1/log?limit=1000")?;
    Ok(log
        .iter()
        .filter_map(|e| {
            Some((
                e["hash"].as_str()?.to_owned(),
                e["author"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect())
}

/// The final check, after the faults: see the module comment.
pub fn final_check(lab: &Lab, ledger: &Shared, reach: Duration, s: &mut Summary) -> Result<()> {
    let long = Duration::from_secs(120);
    let helpers: Vec<_> = lab
        .nodes
        .iter()
        .map(|n| n.helper())
        .collect::<Result<_>>()?;
    let (acked, unknown, l_undelivered, l_refused, l_attempted) = {
        let l = workload::lock(ledger);
        (
            l.acks.clone(),
            l.unknown.clone(),
            l.undelivered,
            l.refused.clone(),
            l.attempted(),
        )
    };
    s.attempted = l_attempted;
    s.acknowledged = acked.len();
    s.unknown_outcome = unknown.len();
    s.undelivered = l_undelivered;
    s.refused = l_refused;
    for a in &acked {
        let kind = serde_json::to_value(a.kind)?
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *s.acknowledged_by_kind.entry(kind).or_default() += 1;
    }

    // Every acknowledged entry, on every node.
    let hashes: Vec<String> = acked.iter().map(|a| a.entry.clone()).collect();
    let since = Instant::now();
    let (c, _) = converge(lab, &hashes, since, reach)?;
    s.final_converge_ms = c.per_node_ms.clone();

    // Then whatever any node holds (writes of unknown outcome that landed), on every node,
    // so that the heights can be compared.
    let mut union: BTreeSet<String> = BTreeSet::new();
    for h in &helpers {
        union.extend(log_entries(h, long)?.into_iter().map(|(hash, _)| hash));
    }
    let union: Vec<String> = union.into_iter().collect();
    let (u, _) = converge(lab, &union, Instant::now(), reach)?;

    // What each node holds now.
    let mut logs: Vec<HashSet<String>> = Vec::new();
    let mut by_author: Vec<HashMap<String, Vec<String>>> = Vec::new();
    let mut heights = Vec::new();
    let mut lists = Vec::new();
    for h in &helpers {
        let entries = log_entries(h, long)?;
        let mut authors: HashMap<String, Vec<String>> = HashMap::new();
        for (hash, author) in &entries {
            authors
                .entry(author.clone())
                .or_default()
                .push(hash.clone());
        }
        logs.push(entries.into_iter().map(|(hash, _)| hash).collect());
        by_author.push(authors);
        heights.push(h.get_ok("/v1/status", long)?);
        lists.push(spoc_tests::all_pages(
            |path| h.get_ok(path, long),
            "/v1/docs?collection=obstacles&limit=1000",
        )?);
    }
    s.heights_identical = heights
        .windows(2)
        .all(|w| w[0]["digest"] == w[1]["digest"] && w[0]["entries"] == w[1]["entries"]);
    s.lists_identical = lists.windows(2).all(|w| w[0] == w[1]);
    s.entries = heights[0]["entries"].as_u64().unwrap_or_default();

    // Lost: acknowledged, and not on some node.
    for a in &acked {
        let on = logs.iter().filter(|log| log.contains(&a.entry)).count();
        if on < logs.len() {
            s.lost += 1;
            if s.unexpected_detail.len() < 20 {
                s.unexpected_detail.push(format!(
                    "lost: {:?} {} (entry {}) written on node {} is on {on} of {} nodes",
                    a.kind,
                    a.id,
                    a.entry,
                    a.node,
                    logs.len()
                ));
            }
        }
        if on == 0 {
            s.lost_everywhere += 1;
        }
    }

    // Unexpected: obstacles and entries that no client wrote.
    let acked_titles: HashMap<&str, &str> = acked
        .iter()
        .filter(|a| a.kind == Kind::Report)
        .map(|a| (a.id.as_str(), a.title.as_str()))
        .collect();
    let attempted_titles: HashSet<&str> = acked
        .iter()
        .map(|a| a.title.as_str())
        .chain(unknown.iter().map(|u| u.title.as_str()))
        .filter(|t| !t.is_empty())
        .collect();
    let mut unexpected = Vec::new();
    for (i, list) in lists.iter().enumerate() {
        let obstacles = workload::obstacle_titles(list);
        s.obstacles = s.obstacles.max(obstacles.len());
        let mut seen: HashSet<&str> = HashSet::new();
        for (id, title) in &obstacles {
            if !attempted_titles.contains(title.as_str()) {
                unexpected.push(format!(
                    "node {i}: obstacle {id} titled {title:?} was never written"
                ));
            } else if acked_titles.get(id.as_str()).is_some_and(|t| t != title) {
                unexpected.push(format!(
                    "node {i}: obstacle {id} is titled {title:?}, not as written"
                ));
            } else if !seen.insert(title.as_str()) {
                unexpected.push(format!("node {i}: the title {title:?} is on two obstacles"));
            }
        }
    }
    // Comments and endorsements: each obstacle has at least the acknowledged comments on it
    // and at most those plus the unknown-outcome ones, and every acknowledged endorser.
    let mut comments: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut endorsers: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for a in &acked {
        match (a.kind, a.obstacle.as_deref()) {
            (Kind::Comment, Some(o)) => comments.entry(o).or_default().0 += 1,
            (Kind::Endorse, Some(o)) => {
                endorsers
                    .entry(o)
                    .or_default()
                    .insert(lab.nodes[a.node].state.as_str());
            }
            _ => {}
        }
    }
    for u in &unknown {
        if let (Kind::Comment, Some(o)) = (u.kind, u.obstacle.as_deref()) {
            comments.entry(o).or_default().1 += 1;
        }
    }
    for (i, list) in lists.iter().enumerate() {
        for o in list.iter() {
            let id = o["id"].as_str().unwrap_or_default();
            let count = o["comments"].as_u64().unwrap_or_default();
            let (acked_comments, unknown_comments) = comments.get(id).copied().unwrap_or_default();
            if count < acked_comments || count > acked_comments + unknown_comments {
                unexpected.push(format!(
                    "node {i}: {id} has {count} comments; {acked_comments} acknowledged, {unknown_comments} unknown"
                ));
            }
            let present: BTreeSet<&str> = o["endorsements"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["state"].as_str())
                .collect();
            if let Some(want) = endorsers.get(id)
                && !want.is_subset(&present)
            {
                unexpected.push(format!(
                    "node {i}: {id} lacks acknowledged endorsements: has {present:?}, expected {want:?}"
                ));
            }
        }
    }
    let acked_hashes: HashSet<&str> = acked.iter().map(|a| a.entry.as_str()).collect();
    for (i, authors) in by_author.iter().enumerate() {
        for (author, entries) in authors {
            let extra = entries
                .iter()
                .filter(|h| !acked_hashes.contains(h.as_str()))
                .count();
            let node = lab.nodes.iter().position(|n| &n.state == author);
            let allowed = unknown.iter().filter(|u| Some(u.node) == node).count();
            if extra > allowed {
                unexpected.push(format!(
                    "node {i}: {extra} entries by {author} were not acknowledged, and only {allowed} writes there had an unknown outcome"
                ));
            }
        }
    }
    s.unexpected = unexpected.len();
    s.unexpected_detail.extend(unexpected.into_iter().take(20));

    // Every node re-checks every signature, chain and rule from its store.
    s.verified = true;
    for (i, h) in helpers.iter().enumerate() {
        let r = h.post(
            "/v1/verify",
            serde_json::json!({}),
            Duration::from_secs(600),
        )?;
        if r.status != 200 || r.body["ok"] != Value::Bool(true) {
            s.verified = false;
            s.verify_errors.push(format!(
                "node {i}: verify answered {}: {}",
                r.status, r.body
            ));
        }
    }
    for n in &lab.nodes {
        let rss = n.rss_mib().unwrap_or(0.0);
        s.rss_mib.push((rss * 10.0).round() / 10.0);
        s.max_rss_mib = s.max_rss_mib.max(rss);
    }

    let mut sorted = s.samples.clone();
    sorted.sort_unstable();
    s.converge_samples = sorted.len();
    s.converge_p50_ms = percentile(&sorted, 50.0);
    s.converge_p99_ms = percentile(&sorted, 99.0);
    s.converge_max_ms = sorted.last().copied();
    let mut restarts = s.restart_ms.clone();
    restarts.sort_unstable();
    s.restarts = restarts.len();
    s.restart_p50_ms = percentile(&restarts, 50.0);
    s.restart_max_ms = restarts.last().copied();
    s.converged = s.rounds_not_converged == 0
        && c.converged()
        && u.converged()
        && s.heights_identical
        && s.lists_identical
        && s.verified;
    s.elapsed_s = s.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(())
}
