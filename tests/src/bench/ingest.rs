//! Scenario 1, ingest: an empty node takes in N entries of several authors, in batches of
//! 500, each batch decoded, signature-checked in one batch, checked against the rules,
//! applied and durably committed to a real redb file. Baseline: Automerge's sync protocol
//! bringing an empty set of documents up to date with the same changes, unsigned, in
//! memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use spoc_node::charter::Charter;
use spoc_node::log::SignedEntry;
use spoc_node::replica::{Limits, Replica};
use spoc_node::store::Store;

use super::amsync;
use super::report::{Outcome, Row};
use super::stats::{human, human_bytes, median, per_entry_us, round3};
use super::{Plan, size_label};

/// The batch of a sync response, as the node takes them.
pub const BATCH: usize = 500;

/// Where one ingest run spent its time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Run {
    pub decode: Duration,
    pub ingest: Duration,
    pub commit: Duration,
    pub total: Duration,
    pub store_bytes: u64,
}

/// Ingests `entries` into an empty replica and store, from their encoded bytes.
pub fn spoc_ingest(charter: &Arc<Charter>, entries: &[SignedEntry]) -> Result<Run> {
    let wire: Vec<Vec<u8>> = entries.iter().map(|e| e.bytes().to_vec()).collect();
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("store.redb"))?;
    let mut replica = Replica::new(charter.clone(), Limits::default());
    let mut run = Run::default();
    let start = Instant::now();
    for chunk in wire.chunks(BATCH) {
        let t = Instant::now();
        let batch = chunk
            .iter()
            .map(|b| SignedEntry::decode(b))
            .collect::<Result<Vec<_>, _>>()?;
        let t1 = Instant::now();
        let report = replica.ingest(batch)?;
        let t2 = Instant::now();
        if let Some((hash, why)) = report.rejected.first() {
            bail!("entry {hash} refused: {why}");
        }
        store.commit(&replica, &report)?;
        run.decode += t1 - t;
        run.ingest += t2 - t1;
        run.commit += t2.elapsed();
    }
    run.total = start.elapsed();
    if replica.entry_count() != entries.len() || replica.pending_count() != 0 {
        bail!(
            "ingest accepted {} of {} entries ({} pending)",
            replica.entry_count(),
            entries.len(),
            replica.pending_count()
        );
    }
    run.store_bytes = store.size_bytes();
    Ok(run)
}

/// Runs the scenario over the plan's sizes.
pub fn run(plan: &Plan, charter: &Arc<Charter>, entries: &[SignedEntry]) -> Result<Outcome> {
    let mut o = Outcome::new("ingest", "1. ingest: an empty node takes in N entries");
    let mut sizes = Vec::new();
    let mut all_met = true;
    for &n in &plan.sizes {
        let slice = &entries[..n];
        let reps = plan.reps(n);
        let mut runs = Vec::new();
        for _ in 0..reps {
            runs.push(spoc_ingest(charter, slice)?);
        }
        let totals: Vec<Duration> = runs.iter().map(|r| r.total).collect();
        let spoc = median(&totals);
        let Some(mid) = runs.iter().find(|r| r.total == spoc).copied() else {
            bail!("no median run");
        };
        let mut baselines = Vec::new();
        let mut target_times = Vec::new();
        let mut cost = amsync::SyncCost::default();
        for _ in 0..reps {
            let mut sources = amsync::docs_of(slice)?;
            let mut targets = std::collections::BTreeMap::new();
            cost = amsync::sync_all(&mut sources, &mut targets)?;
            baselines.push(cost.time);
            target_times.push(cost.target_time);
        }
        let base = median(&baselines);
        let ratio = spoc.as_secs_f64() / base.as_secs_f64();
        all_met &= ratio <= 1.3;
        let label = size_label(n);
        o.rows.push(Row::ratio(
            format!("{label} entries"),
            "time",
            format!("{} ({} µs/entry)", human(spoc), per_entry_us(spoc, n)),
            format!("{} ({} µs/entry)", human(base), per_entry_us(base, n)),
            ratio,
            Some(1.3),
        ));
        o.rows.push(Row::context(
            format!("{label} entries"),
            "where the time goes",
            format!(
                "decode {} / ingest {} / commit {} µs/entry",
                per_entry_us(mid.decode, n),
                per_entry_us(mid.ingest, n),
                per_entry_us(mid.commit, n)
            ),
            format!(
                "receiver's share {} µs/entry",
                per_entry_us(median(&target_times), n)
            ),
        ));
        sizes.push(json!({
            "entries": n,
            "runs": reps,
            "spoc_ms": round3(spoc.as_secs_f64() * 1e3),
            "spoc_us_per_entry": per_entry_us(spoc, n),
            "spoc_decode_us_per_entry": per_entry_us(mid.decode, n),
            "spoc_ingest_us_per_entry": per_entry_us(mid.ingest, n),
            "spoc_commit_us_per_entry": per_entry_us(mid.commit, n),
            "spoc_store_bytes": mid.store_bytes,
            "baseline_ms": round3(base.as_secs_f64() * 1e3),
            "baseline_us_per_entry": per_entry_us(base, n),
            "baseline_receiver_ms": round3(median(&target_times).as_secs_f64() * 1e3),
            "baseline_docs": cost.docs,
            "baseline_sync_bytes": cost.bytes,
            "ratio": round3(ratio),
            "target_met": ratio <= 1.3,
        }));
        o.notes.push(format!(
            "{label}: store file {}; {} documents; Automerge sync sent {} in {} messages",
            human_bytes(mid.store_bytes as f64),
            cost.docs,
            human_bytes(cost.bytes as f64),
            cost.messages
        ));
    }
    o.json = json!({
        "target": "ingest time / Automerge sync time <= 1.3",
        "batch": BATCH,
        "sizes": Value::Array(sizes),
        "target_met": all_met,
    });
    o.notes.push(
        "spocnet: decode + signature checks + rules + apply + durable redb commit per batch of 500, \
         entries in the order they were written; baseline: Automerge sync of every document into an \
         empty one (both sides' work, messages encoded and decoded), unsigned, in memory, no disk"
            .into(),
    );
    Ok(o)
}
