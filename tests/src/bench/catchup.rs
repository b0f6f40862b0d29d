//! Scenario 4, catch-up: a node was offline while the others wrote N entries; it comes
//! back and pulls until it holds them all. Two real nodes hold the common base and the N
//! new entries; the third holds the base only. Measured: the time from its "node running"
//! until `/v1/wait` shows the tip of every log, and the TCP payload bytes its sockets moved
//! (both ways). Baseline: Automerge's sync protocol for the same divergence, document by
//! document, the returning side speaking first: bytes of the sync messages and round trips.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use spoc_tests::Proc;

use super::amsync;
use super::report::{Outcome, Row};
use super::stats::{human, human_bytes, round3};
use super::{Context as Ctx, data, procs, size_label};

/// The batch limit of a pull response (`spoc_node::service::sync::BATCH_ENTRIES`).
const BATCH: usize = spoc_node::service::sync::BATCH_ENTRIES;

/// A wait this long without progress means the catch-up has stalled: it is longer than
/// the anti-entropy period, so every peer was asked again within it.
const STALL: Duration = Duration::from_secs(15);

/// The figures of one divergence.
#[derive(Debug)]
struct Measured {
    n: usize,
    caught_up: bool,
    held: u64,
    /// Entries the returning node holds but cannot accept yet (their past is missing).
    pending: u64,
    time: Duration,
    bytes_sent: Option<u64>,
    bytes_received: Option<u64>,
    baseline: amsync::SyncCost,
}

/// Runs the scenario for each divergence of the plan.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut measured = Vec::new();
    let mut failures = Vec::new();
    for &n in &ctx.plan.catchup_sizes {
        // A failed size is reported, and the others are still measured.
        match measure(ctx, n).with_context(|| format!("{} entries", size_label(n))) {
            Ok(m) => measured.push(m),
            Err(e) => failures.push(format!("FAILED: {e:#}")),
        }
    }
    let mut o = outcome(ctx, &measured);
    if !failures.is_empty() {
        o.failed = true;
        o.json["errors"] = serde_json::json!(failures);
        o.notes.extend(failures);
    }
    if let Some(m) = measured.iter().find(|m| !m.caught_up) {
        o.failed = true;
        o.notes.push(format!(
            "FAILED: after {} the returning node held {} of {} entries and had stopped progressing",
            human(m.time),
            m.held,
            ctx.plan.catchup_base + m.n
        ));
    }
    Ok(o)
}

fn measure(ctx: &Ctx, n: usize) -> Result<Measured> {
    let base = ctx.plan.catchup_base;
    let full = &ctx.work.entries[..base + n];
    let [online_a, online_b, returning] = [&ctx.nodes[0], &ctx.nodes[1], &ctx.nodes[2]];
    let store = |node: &spoc_node::testnet::Node| node.data_dir.join(spoc_node::config::STORE_FILE);
    let (ahead, behind) = (ctx.work.snapshot(base + n)?, ctx.work.snapshot(base)?);
    data::copy_store(&ahead.store, &store(online_a))?;
    data::copy_store(&ahead.store, &store(online_b))?;
    data::copy_store(&behind.store, &store(returning))?;

    let mut a = Proc::start(&procs::info(online_a))?;
    let mut b = Proc::start(&procs::info(online_b))?;
    for p in [&mut a, &mut b] {
        let api = procs::Api::of(p)?;
        procs::await_admitted(p, &api, 1, Duration::from_secs(60))?;
    }

    let r = Proc::start(&procs::info(returning))?;
    let start = Instant::now();
    let api = procs::Api::of(&r)?;
    let tips = procs::tips(full);
    let deadline = start + ctx.plan.catchup_timeout(n);
    let mut caught_up = false;
    let mut held = api.status()?["entries"].as_u64().unwrap_or(0);
    while Instant::now() < deadline {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(STALL);
        if api.wait(&tips, left)? {
            caught_up = true;
            break;
        }
        // A window longer than the anti-entropy period without one more entry: stalled.
        let now_held = api.status()?["entries"].as_u64().unwrap_or(0);
        if now_held == held {
            break;
        }
        held = now_held;
    }
    let time = start.elapsed();
    let status = api.status()?;
    let held = status["entries"].as_u64().unwrap_or(0);
    let pending = status["pending"].as_u64().unwrap_or(0);
    let pid = r.pid().ok_or_else(|| anyhow!("no pid"))?;
    let api_ports: HashSet<u16> = [online_a, online_b, returning]
        .iter()
        .map(|node| procs::api_port(&node.api))
        .collect::<Result<_>>()?;
    let bytes = procs::tcp_bytes(&[pid], &api_ports)?.and_then(|m| m.get(&pid).copied());
    drop((r, a, b));

    let mut sources = amsync::docs_of(full)?;
    let mut targets = amsync::docs_of(&full[..base])?;
    let baseline = amsync::sync_all(&mut sources, &mut targets)?;
    if !caught_up && held as usize >= full.len() {
        bail!("the node holds every entry but /v1/wait did not say so");
    }
    Ok(Measured {
        n,
        caught_up,
        held,
        pending,
        time,
        bytes_sent: bytes.map(|b| b.0),
        bytes_received: bytes.map(|b| b.1),
        baseline,
    })
}

fn outcome(ctx: &Ctx, measured: &[Measured]) -> Outcome {
    let mut o = Outcome::new(
        "catch_up",
        "4. catch-up: a node back after others wrote N entries",
    );
    let mut sizes = Vec::new();
    let mut met = true;
    for m in measured {
        let case = format!("{} entries", size_label(m.n));
        let wire = m.bytes_sent.zip(m.bytes_received).map(|(s, r)| s + r);
        let ratio = wire.map(|w| w as f64 / m.baseline.bytes.max(1) as f64);
        // A pull asks again while the answer says `more`: one round trip per batch.
        let round_trips = m.n.div_ceil(BATCH).max(1) as u64;
        let ok = m.caught_up && ratio.is_some_and(|r| r <= 1.0) && round_trips <= 2;
        met &= ok;
        match ratio {
            Some(r) => o.rows.push(Row::ratio(
                case.clone(),
                "bytes on the wire",
                format!(
                    "{} ({:.0} B/entry)",
                    human_bytes(wire.unwrap_or(0) as f64),
                    wire.unwrap_or(0) as f64 / m.n as f64
                ),
                format!(
                    "{} ({:.0} B/entry)",
                    human_bytes(m.baseline.bytes as f64),
                    m.baseline.bytes as f64 / m.n as f64
                ),
                r,
                Some(1.0),
            )),
            None => o.rows.push(Row {
                met: Some(false),
                target: "≤ 1×".into(),
                ..Row::context(
                    case.clone(),
                    "bytes on the wire",
                    "not measured (no ss)".into(),
                    human_bytes(m.baseline.bytes as f64),
                )
            }),
        }
        o.rows.push(Row {
            met: Some(m.caught_up && round_trips <= 2),
            target: "≤ 2".into(),
            ..Row::context(
                case.clone(),
                "round trips",
                if m.caught_up {
                    format!("{round_trips} per peer")
                } else {
                    "unbounded (stalled)".into()
                },
                format!("{}", m.baseline.round_trips),
            )
        });
        o.rows.push(Row::ratio(
            case.clone(),
            "time",
            if m.caught_up {
                human(m.time)
            } else {
                format!("NOT caught up after {}", human(m.time))
            },
            format!("{} (in memory)", human(m.baseline.time)),
            m.time.as_secs_f64() / m.baseline.time.as_secs_f64(),
            None,
        ));
        sizes.push(json!({
            "entries": m.n,
            "base_entries": ctx.plan.catchup_base,
            "caught_up": m.caught_up,
            "held_entries": m.held,
            "pending_entries": m.pending,
            "spoc_ms": round3(m.time.as_secs_f64() * 1e3),
            "spoc_bytes_sent": m.bytes_sent,
            "spoc_bytes_received": m.bytes_received,
            "spoc_bytes": wire,
            "spoc_bytes_per_entry": wire.map(|w| round3(w as f64 / m.n as f64)),
            "spoc_round_trips_per_peer": m.caught_up.then_some(round_trips),
            "baseline_bytes": m.baseline.bytes,
            "baseline_bytes_per_entry": round3(m.baseline.bytes as f64 / m.n as f64),
            "baseline_messages": m.baseline.messages,
            "baseline_round_trips": m.baseline.round_trips,
            "baseline_docs": m.baseline.docs,
            "baseline_ms": round3(m.baseline.time.as_secs_f64() * 1e3),
            "ratio_bytes": ratio.map(round3),
            "ratio_time": round3(m.time.as_secs_f64() / m.baseline.time.as_secs_f64()),
            "target_met": ok,
        }));
    }
    o.json = json!({
        "target": "bytes / Automerge sync bytes <= 1.0 in <= 2 round trips",
        "sizes": sizes,
        "target_met": met,
    });
    o.notes.push(format!(
        "spocnet: two nodes hold {} common + N new entries, the returning node the {} common ones; \
         from its \"node running\" until /v1/wait shows every log's tip; bytes = TCP payload its sockets \
         sent and received (kernel counters via `ss`), which includes admission, gossipsub, identify \
         and the pulls from both peers; round trips = ⌈N/{BATCH}⌉ sequential pull requests per peer \
         (each answer holds at most {BATCH} entries), from the protocol, not counted on the wire",
        ctx.plan.catchup_base, ctx.plan.catchup_base
    ));
    o.notes.push(
        "baseline: Automerge sync of each document (the returning side speaks first; a document it \
         lacks starts empty), encoded message bytes both ways, round trips of the longest exchange; \
         it assumes the document ids are known, which spocnet's heights give for free"
            .into(),
    );
    o
}
