//! Scenario 3, propagation: N real `spoc-node` processes on loopback, each from
//! `spoc_node::testnet::generate`. From a contribution on one node (the API call) until
//! every other node's API shows it (`/v1/wait?entries=H`), p50 and p99 over several
//! contributions from each node in turn. Baseline: raw gossipsub delivery of a message of
//! the same size to every node, plus one durable redb commit, measured in the same run.

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use redb::TableDefinition;
use serde_json::{Value, json};
use spoc_tests::Proc;

use super::report::{Outcome, Row};
use super::stats::{human_bytes, human_ms, latency_json, percentile_ms, round3};
use super::{Context as Ctx, data, gossip, procs};

/// How long a contribution may take to reach every node before the scenario fails.
const REACH: Duration = Duration::from_secs(60);

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");

/// One node's waiter: a thread that long-polls the node for each hash it is given.
struct Waiter {
    hashes: mpsc::SyncSender<String>,
    thread: std::thread::JoinHandle<()>,
}

/// The figures of one network size.
#[derive(Debug)]
struct Measured {
    nodes: usize,
    all: Vec<Duration>,
    each: Vec<Duration>,
    acks: Vec<Duration>,
    gossip: Vec<Duration>,
    commits: Vec<Duration>,
    entry_bytes: usize,
    /// Measured TCP payload bytes sent per node per contribution, when `ss` is there.
    sent_per_node: Option<f64>,
    window: Duration,
}

/// Runs the scenario for each network size of the plan.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let size = entry_size(ctx);
    let mut measured = Vec::new();
    let mut failures = Vec::new();
    for &n in &ctx.plan.propagation_nodes {
        // A failed size is reported, and the others are still measured.
        match measure(ctx, n, size).with_context(|| format!("{n} nodes")) {
            Ok(m) => measured.push(m),
            Err(e) => failures.push(format!("FAILED: {e:#}")),
        }
    }
    let mut o = outcome(&measured);
    if !failures.is_empty() {
        o.failed = true;
        o.json["errors"] = json!(failures);
        o.notes.extend(failures);
    }
    Ok(o)
}

/// The mean size of a comment entry in the generated data: what the nodes gossip here.
fn entry_size(ctx: &Ctx) -> usize {
    ctx.work
        .mix(ctx.work.entries.len())
        .get("obstacle_comment")
        .map_or(600, |(_, mean)| *mean)
}

fn measure(ctx: &Ctx, n: usize, entry_bytes: usize) -> Result<Measured> {
    let dir = tempfile::tempdir()?;
    let mut rng = ChaCha20Rng::seed_from_u64(ctx.plan.seed ^ ((n as u64) << 8));
    let out = dir.path().join("net");
    let mut layout = spoc_node::testnet::generate(&out, n, ctx.today, &mut rng)?;
    procs::relocate_ports(&out, &mut layout)?;
    let mut nodes: Vec<Proc> = Vec::with_capacity(n);
    for node in &layout {
        nodes.push(Proc::start(&procs::info(node))?);
    }
    let apis: Vec<procs::Api> = nodes.iter().map(procs::Api::of).collect::<Result<_>>()?;
    for (p, api) in nodes.iter_mut().zip(&apis) {
        procs::await_admitted(p, api, n - 1, REACH)?;
    }
    let (results_tx, results) = mpsc::sync_channel::<(usize, Instant, Result<bool>)>(4 * n);
    let mut waiters = Vec::with_capacity(n);
    for (i, api) in apis.iter().enumerate() {
        let (tx, rx) = mpsc::sync_channel::<String>(16);
        let (api, results_tx) = (api.clone(), results_tx.clone());
        let thread = std::thread::spawn(move || {
            while let Ok(hash) = rx.recv() {
                let present = api.wait(std::slice::from_ref(&hash), REACH);
                if results_tx.send((i, Instant::now(), present)).is_err() {
                    break;
                }
            }
        });
        waiters.push(Waiter { hashes: tx, thread });
    }
    // Awaits one entry on every node but the origin; returns when each node had it.
    let reach = |hash: &str, origin: usize, start: Instant| -> Result<Vec<Duration>> {
        for (i, w) in waiters.iter().enumerate() {
            if i != origin {
                w.hashes.send(hash.to_owned())?;
            }
        }
        let mut times = Vec::with_capacity(n - 1);
        for _ in 0..n - 1 {
            let (i, at, present) = results
                .recv_timeout(REACH + Duration::from_secs(5))
                .map_err(|_| anyhow!("no answer from the waiters"))?;
            if !present? {
                bail!(
                    "node {} did not receive {hash} within {REACH:?}",
                    layout[i].state
                );
            }
            times.push(at - start);
        }
        Ok(times)
    };

    // Warm-up: one obstacle, then one comment from each node, each awaited everywhere.
    let hash = apis[0].write(&json!({
        "command": "obstacle_report", "title": "Replies take weeks", "type": "pragmatic",
        "description": "A court order is needed before data leaves the country.",
    }))?;
    reach(&hash, 0, Instant::now())?;
    let (_, listed) = apis[0].get("/v1/docs?collection=obstacles")?;
    let obstacle = listed["items"][0]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no obstacle listed: {listed}"))?
        .to_owned();
    let mut text_rng = ChaCha20Rng::seed_from_u64(ctx.plan.seed);
    let comment = |rng: &mut ChaCha20Rng| -> Value {
        // About the size of the generated comments.
        let text = data::text(rng, entry_bytes.saturating_sub(330).max(60));
        json!({"command": "obstacle_comment", "obstacle": obstacle, "text": text})
    };
    for (i, api) in apis.iter().enumerate() {
        let hash = api.write(&comment(&mut text_rng))?;
        reach(&hash, i, Instant::now())?;
    }

    let pids: Vec<u32> = nodes.iter().filter_map(Proc::pid).collect();
    let api_ports: HashSet<u16> = layout
        .iter()
        .map(|node| procs::api_port(&node.api))
        .collect::<Result<_>>()?;
    let before = procs::tcp_bytes(&pids, &api_ports)?;
    let window = Instant::now();
    let k = ctx.plan.contributions(n);
    let (mut all, mut each, mut acks) = (Vec::new(), Vec::new(), Vec::new());
    for c in 0..k {
        let origin = c % n;
        let command = comment(&mut text_rng);
        let start = Instant::now();
        let hash = apis[origin].write(&command)?;
        acks.push(start.elapsed());
        let times = reach(&hash, origin, start)?;
        all.push(times.iter().copied().max().unwrap_or_default());
        each.extend(times);
    }
    let window = window.elapsed();
    let after = procs::tcp_bytes(&pids, &api_ports)?;
    let sent_per_node = match (before, after) {
        (Some(b), Some(a)) => {
            let total: u64 = pids
                .iter()
                .map(|p| {
                    let (x, y) = (a.get(p).map_or(0, |v| v.0), b.get(p).map_or(0, |v| v.0));
                    x.saturating_sub(y)
                })
                .sum();
            Some(total as f64 / n as f64 / k as f64)
        }
        _ => None,
    };
    for w in waiters {
        drop(w.hashes);
        let _ = w.thread.join();
    }
    drop(nodes);

    let gossip = gossip::deliveries(n, entry_bytes, k)?;
    let commits = durable_commits(entry_bytes, k)?;
    Ok(Measured {
        nodes: n,
        all,
        each,
        acks,
        gossip,
        commits,
        entry_bytes,
        sent_per_node,
        window,
    })
}

/// `k` durable redb commits of `size` bytes each, timed one by one, after five untimed
/// ones. Each overwrites one of four keys, so that the commits reuse freed pages as a
/// node's do once warm, instead of growing the file (see `publish`).
fn durable_commits(size: usize, k: usize) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let db = redb::Database::create(dir.path().join("baseline.redb"))?;
    let bytes = vec![0xa5_u8; size];
    let mut times = Vec::with_capacity(k);
    for i in 0..k + 5 {
        let t = Instant::now();
        let mut w = db.begin_write()?;
        w.set_durability(redb::Durability::Immediate)?;
        {
            let mut table = w.open_table(TABLE)?;
            table.insert((i % 4) as u64, bytes.as_slice())?;
        }
        w.commit()?;
        if i >= 5 {
            times.push(t.elapsed());
        }
    }
    Ok(times)
}

/// The gossipsub fan-out estimate of bytes sent per node per message: the origin sends to
/// every peer, and every receiver forwards to its mesh peers (at most `mesh_n` = 6)
/// except the one it got it from.
fn estimated_sent_per_node(n: usize, wire: usize) -> f64 {
    let forwards = (n - 1) * (n.saturating_sub(2)).min(5);
    ((n - 1) + forwards) as f64 * wire as f64 / n as f64
}

fn outcome(measured: &[Measured]) -> Outcome {
    let mut o = Outcome::new(
        "propagation",
        "3. propagation: a contribution until every node's API shows it",
    );
    let mut sizes = Vec::new();
    let mut met = true;
    for m in measured {
        let baseline: Vec<Duration> = m
            .gossip
            .iter()
            .zip(&m.commits)
            .map(|(g, c)| *g + *c)
            .collect();
        let (p50, p99) = (percentile_ms(&m.all, 50.0), percentile_ms(&m.all, 99.0));
        let (b50, b99) = (
            percentile_ms(&baseline, 50.0),
            percentile_ms(&baseline, 99.0),
        );
        let ratio = p50 / b50;
        // The target is set at 31 nodes; smaller networks are shown against it too.
        let target = (m.nodes == 31).then_some(2.0);
        if m.nodes == 31 {
            met &= ratio <= 2.0;
        }
        let case = format!("{} nodes", m.nodes);
        o.rows.push(Row::ratio(
            case.clone(),
            "p50",
            human_ms(p50),
            human_ms(b50),
            ratio,
            target,
        ));
        o.rows.push(Row::ratio(
            case.clone(),
            "p99",
            human_ms(p99),
            human_ms(b99),
            p99 / b99,
            None,
        ));
        // Every node but the origin must receive the entry once: the floor of the bytes
        // sent, shared out over the nodes.
        let floor = m.entry_bytes as f64 * (m.nodes - 1) as f64 / m.nodes as f64;
        let estimate = estimated_sent_per_node(m.nodes, m.entry_bytes + 150);
        match m.sent_per_node {
            Some(b) => o.rows.push(Row::ratio(
                case,
                "bytes sent/node/contribution",
                format!("{} measured", human_bytes(b)),
                format!("{} floor", human_bytes(floor)),
                b / floor,
                None,
            )),
            None => o.rows.push(Row::context(
                case,
                "bytes sent/node/contribution",
                format!("{} estimated", human_bytes(estimate)),
                format!("{} floor", human_bytes(floor)),
            )),
        }
        sizes.push(json!({
            "nodes": m.nodes,
            "contributions": m.all.len(),
            "entry_bytes": m.entry_bytes,
            "spoc_all_nodes": latency_json(&m.all),
            "spoc_each_node": latency_json(&m.each),
            "spoc_origin_ack": latency_json(&m.acks),
            "baseline": latency_json(&baseline),
            "baseline_gossip": latency_json(&m.gossip),
            "baseline_commit": latency_json(&m.commits),
            "ratio_p50": round3(ratio),
            "ratio_p99": round3(p99 / b99),
            "bytes_sent_per_node_per_contribution_measured": m.sent_per_node.map(round3),
            "measurement_window_ms": round3(m.window.as_secs_f64() * 1e3),
            "bytes_sent_per_node_per_contribution_estimated": round3(estimate),
            "bytes_sent_per_node_per_contribution_floor": round3(floor),
            "target_met": target.map(|t| ratio <= t),
        }));
    }
    let at31 = measured.iter().any(|m| m.nodes == 31);
    o.json = json!({
        "target": "p50 at 31 nodes / baseline p50 <= 2",
        "sizes": sizes,
        "target_met": if at31 { Value::Bool(met) } else { Value::Null },
    });
    if !at31 {
        o.notes
            .push("the target is set at 31 nodes, which this run (--quick) does not start".into());
    }
    o.notes.push(
        "spocnet: from POST /v1/commands on the origin (signed, durably committed, then gossiped) until \
         /v1/wait answers on every other node (each receiver validated and durably committed it); a wait \
         is sent to each node as soon as the origin acknowledges, so a node that already holds the entry \
         counts the moment it was asked; baseline: in-process gossipsub swarms (TCP+Noise+Yamux, signed, \
         full mesh, no validation) delivering a message of the same size to all, plus one durable redb commit"
            .into(),
    );
    o.notes.push(format!(
        "bytes: measured = TCP payload sent by the node processes between nodes (kernel per-socket \
         counters via `ss`, API sockets left out) over the measurement window, divided by nodes and \
         contributions, so it includes the pull anti-entropy every {} s and pings; floor = the entry's bytes \
         × (n-1)/n, what each node must receive once; estimated (JSON, and the table when `ss` is \
         missing) = (entry + ~150 B gossipsub framing) × (origin to n-1 peers + each receiver forwarding to \
         up to 5 mesh peers) / n",
        spoc_node::service::sync::ANTI_ENTROPY.as_secs()
    ));
    o
}
