//! Scenarios 2 and 5 on one real `spoc-node` process whose store holds N entries, written
//! before it starts with the testnet's own keys.
//!
//! Cold start: from spawning the process until its API answers with every document loaded
//! (the node loads and verifies everything before "node running"), and its peak RSS.
//! Baseline: `Automerge::load` of the same documents from their saved bytes, and the peak
//! RSS of a process that loads and holds them (this binary, run as `hold-docs`).
//!
//! Publish: one operator contribution, from the API call to the acknowledgement of the
//! signed, durable entry, p50 and p99. Baseline: the same edit as an Automerge `commit`
//! plus one durable redb commit of the change's bytes.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjType, ROOT, ReadDoc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use redb::TableDefinition;
use serde_json::{Value, json};

use super::report::{Outcome, Row};
use super::stats::{
    human, human_bytes, human_ms, latency_json, median, per_entry_us, percentile_ms, round3,
};
use super::{Context as Ctx, data, procs, size_label};

/// A table of the baseline's own, in a copy of the node's store file.
const BASELINE_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("bench_changes");

/// The figures of one size.
#[derive(Debug)]
struct Measured {
    n: usize,
    docs: usize,
    store_bytes: u64,
    cold: Vec<Duration>,
    load: Vec<Duration>,
    node_hwm_kib: u64,
    node_rss_kib: u64,
    held: Value,
    publish: Vec<Duration>,
    baseline: Vec<Duration>,
}

/// Runs both scenarios; returns (publish, cold start).
pub fn run(ctx: &Ctx) -> Result<(Outcome, Outcome)> {
    let mut measured = Vec::new();
    for &n in &ctx.plan.sizes {
        measured.push(measure(ctx, n).with_context(|| format!("{} entries", size_label(n)))?);
    }
    Ok((publish_outcome(ctx, &measured), cold_outcome(&measured)))
}

fn measure(ctx: &Ctx, n: usize) -> Result<Measured> {
    let node = &ctx.nodes[0];
    let store_path = node.data_dir.join(spoc_node::config::STORE_FILE);
    let snapshot = ctx.work.snapshot(n)?;
    data::copy_store(&snapshot.store, &store_path)?;
    let store_bytes = std::fs::metadata(&store_path)?.len();
    let saved: Vec<Vec<u8>> = snapshot.docs.values().cloned().collect();

    // Baseline of the cold start: load every document from its saved bytes.
    let mut load = Vec::new();
    for _ in 0..ctx.plan.reps(n) {
        let t = Instant::now();
        let docs = saved
            .iter()
            .map(|b| Automerge::load(b))
            .collect::<Result<Vec<_>, _>>()?;
        load.push(t.elapsed());
        drop(docs);
    }
    let held = hold_in_child(&saved)?;

    // The node's cold starts; the last one stays up for the publish samples.
    let (cold, p, api) = procs::cold_starts(node, ctx.plan.reps(n).min(3), |status| {
        if status["documents"].as_u64() != Some(saved.len() as u64)
            || status["entries"].as_u64() != Some(n as u64)
        {
            bail!(
                "the node started with {} entries and {} documents, not {n} and {}",
                status["entries"],
                status["documents"],
                saved.len()
            );
        }
        Ok(())
    })?;
    let pid = p.pid().ok_or_else(|| anyhow!("the node has no pid"))?;
    let node_hwm_kib = procs::vm_kib(pid, "VmHWM")?;
    let node_rss_kib = procs::vm_kib(pid, "VmRSS")?;

    // Publish: comments on existing obstacles, each acknowledged once durable.
    let obstacles = ctx.work.obstacles_within(n);
    if obstacles.is_empty() {
        bail!("no obstacle to comment on");
    }
    let mut rng = ChaCha20Rng::seed_from_u64(ctx.plan.seed ^ n as u64);
    let mut picks = Vec::new();
    for _ in 0..ctx.plan.publish_samples + 5 {
        let o = obstacles[rng.random_range(0..obstacles.len())];
        picks.push((o.to_owned(), data::text_in(&mut rng, 60..400)));
    }
    let mut publish = Vec::new();
    for (i, (obstacle, text)) in picks.iter().enumerate() {
        let command = json!({"command": "obstacle_comment", "obstacle": obstacle, "text": text});
        let t = Instant::now();
        api.write(&command)?;
        // The first five warm the connection and the node's caches.
        if i >= 5 {
            publish.push(t.elapsed());
        }
    }
    drop(p);

    // Baseline of publish: the same edits, as Automerge commits plus durable redb commits.
    let mut docs: BTreeMap<&str, Automerge> = BTreeMap::new();
    for (id, _) in &picks {
        if !docs.contains_key(id.as_str()) {
            let saved = snapshot
                .docs
                .get(id.as_str())
                .ok_or_else(|| anyhow!("no document {id}"))?;
            let mut copy = Automerge::load(saved)?;
            copy.set_actor(ActorId::from(vec![7u8; 36]));
            docs.insert(id, copy);
        }
    }
    // The baseline commits into a copy of the node's store file, and overwrites a few keys
    // of a table of its own: like the node's after its first writes, its commits then reuse
    // freed pages instead of growing the file. On this disk an fdatasync that allocates
    // blocks waits for a journal commit (about 3.5 ms), one that does not takes 0.25 ms.
    let dir = tempfile::tempdir()?;
    let baseline_path = dir.path().join("baseline.redb");
    std::fs::copy(&snapshot.store, &baseline_path)?;
    let db = redb::Database::create(&baseline_path)?;
    let mut baseline = Vec::new();
    for (i, (id, text)) in picks.iter().enumerate() {
        let doc = docs
            .get_mut(id.as_str())
            .ok_or_else(|| anyhow!("no document {id}"))?;
        let t = Instant::now();
        baseline_publish(doc, &db, (i % 4) as u64, i, text)?;
        if i >= 5 {
            baseline.push(t.elapsed());
        }
    }
    drop(db);
    Ok(Measured {
        n,
        docs: saved.len(),
        store_bytes,
        cold,
        load,
        node_hwm_kib,
        node_rss_kib,
        held,
        publish,
        baseline,
    })
}

/// One comment as a plain Automerge commit, then one durable redb commit of its bytes.
fn baseline_publish(
    doc: &mut Automerge,
    db: &redb::Database,
    key: u64,
    i: usize,
    text: &str,
) -> Result<()> {
    let comments = match doc.get(ROOT, "comments")? {
        Some((_, id)) => id,
        None => bail!("no comments map"),
    };
    let mut tx = doc.transaction();
    let c = tx.put_object(&comments, format!("IE-{i:026}"), ObjType::Map)?;
    tx.put(&c, "author", "IE")?;
    tx.put(&c, "text", text)?;
    tx.put(&c, "at", 1_796_083_200_000i64)?;
    tx.commit();
    let mut change = doc
        .get_last_local_change()
        .ok_or_else(|| anyhow!("no change"))?;
    let mut w = db.begin_write()?;
    w.set_durability(redb::Durability::Immediate)?;
    {
        let mut t = w.open_table(BASELINE_TABLE)?;
        t.insert(key, change.bytes().as_ref())?;
    }
    w.commit()?;
    Ok(())
}

/// Loads the documents in a child process (this binary, `hold-docs`) and returns what it
/// reports of its memory.
fn hold_in_child(saved: &[Vec<u8>]) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("docs.bin");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for doc in saved {
        file.write_all(&(doc.len() as u64).to_le_bytes())?;
        file.write_all(doc)?;
    }
    file.into_inner().map_err(|e| anyhow!("{e}"))?.sync_all()?;
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("hold-docs")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "hold-docs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The `hold-docs FILE` child: loads every document of FILE, keeps them, and prints its
/// memory (KiB) as JSON.
pub fn hold_docs(path: &Path) -> Result<Value> {
    let own = std::process::id();
    let before = procs::vm_kib(own, "VmRSS")?;
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut docs = Vec::new();
    let mut len = [0u8; 8];
    loop {
        match std::io::Read::read_exact(&mut file, &mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let mut bytes = vec![0u8; usize::try_from(u64::from_le_bytes(len))?];
        std::io::Read::read_exact(&mut file, &mut bytes)?;
        docs.push(Automerge::load(&bytes)?);
    }
    Ok(json!({
        "docs": docs.len(),
        "rss_before_kib": before,
        "vm_hwm_kib": procs::vm_kib(own, "VmHWM")?,
        "vm_rss_kib": procs::vm_kib(own, "VmRSS")?,
    }))
}

fn publish_outcome(ctx: &Ctx, measured: &[Measured]) -> Outcome {
    let mut o = Outcome::new(
        "publish",
        "2. publish: one contribution, API call to durable acknowledgement",
    );
    let mut sizes = Vec::new();
    let mut all_met = true;
    for m in measured {
        let label = format!("{} entries", size_label(m.n));
        let (p50, p99) = (
            percentile_ms(&m.publish, 50.0),
            percentile_ms(&m.publish, 99.0),
        );
        let (b50, b99) = (
            percentile_ms(&m.baseline, 50.0),
            percentile_ms(&m.baseline, 99.0),
        );
        let ratio99 = p99 / b99;
        all_met &= ratio99 <= 1.5;
        o.rows.push(Row::ratio(
            label.clone(),
            "p99",
            human_ms(p99),
            human_ms(b99),
            ratio99,
            Some(1.5),
        ));
        o.rows.push(Row::ratio(
            label,
            "p50",
            human_ms(p50),
            human_ms(b50),
            p50 / b50,
            None,
        ));
        sizes.push(json!({
            "entries": m.n,
            "spoc": latency_json(&m.publish),
            "baseline": latency_json(&m.baseline),
            "ratio_p50": round3(p50 / b50),
            "ratio_p99": round3(ratio99),
            "target_met": ratio99 <= 1.5,
        }));
    }
    o.json = json!({
        "target": "publish p99 / baseline p99 <= 1.5",
        "samples": ctx.plan.publish_samples,
        "sizes": sizes,
        "target_met": all_met,
    });
    o.notes.push(format!(
        "spocnet: POST /v1/commands (obstacle_comment on an existing obstacle) to a real spoc-node over a kept-alive \
         HTTP connection, {} samples after 5 warm-up writes; baseline: the same comment as an Automerge commit on \
         the same document plus one redb commit (Durability::Immediate) of the change's bytes into a copy of the \
         node's store file (overwriting one of 4 keys, so that it reuses freed pages as the node's commits do), \
         in process",
        ctx.plan.publish_samples
    ));
    o
}

fn cold_outcome(measured: &[Measured]) -> Outcome {
    let mut o = Outcome::new(
        "cold_start",
        "5. cold start: a node process on a store of N entries, until its API answers",
    );
    let mut sizes = Vec::new();
    let mut all_met = true;
    for m in measured {
        let label = format!("{} entries", size_label(m.n));
        let (cold, load) = (median(&m.cold), median(&m.load));
        let ratio = cold.as_secs_f64() / load.as_secs_f64();
        let held_hwm = m.held["vm_hwm_kib"].as_u64().unwrap_or(0);
        let rss_ratio = m.node_hwm_kib as f64 / held_hwm.max(1) as f64;
        all_met &= ratio <= 1.2 && rss_ratio <= 1.5;
        o.rows.push(Row::ratio(
            label.clone(),
            "time",
            format!("{} ({} µs/entry)", human(cold), per_entry_us(cold, m.n)),
            format!("{} ({} µs/entry)", human(load), per_entry_us(load, m.n)),
            ratio,
            Some(1.2),
        ));
        o.rows.push(Row::ratio(
            label,
            "peak RSS",
            human_bytes(m.node_hwm_kib as f64 * 1024.0),
            human_bytes(held_hwm as f64 * 1024.0),
            rss_ratio,
            Some(1.5),
        ));
        sizes.push(json!({
            "entries": m.n,
            "documents": m.docs,
            "store_bytes": m.store_bytes,
            "starts": m.cold.len(),
            "spoc_ms": round3(cold.as_secs_f64() * 1e3),
            "spoc_us_per_entry": round3(cold.as_secs_f64() * 1e6 / m.n as f64),
            "baseline_load_ms": round3(load.as_secs_f64() * 1e3),
            "baseline_us_per_entry": round3(load.as_secs_f64() * 1e6 / m.n as f64),
            "ratio": round3(ratio),
            "spoc_vm_hwm_kib": m.node_hwm_kib,
            "spoc_vm_rss_kib": m.node_rss_kib,
            "baseline": m.held,
            "rss_ratio": round3(rss_ratio),
            "target_met": ratio <= 1.2 && rss_ratio <= 1.5,
        }));
        o.notes.push(format!(
            "{}: {} documents, store {}; the plain-Automerge process held {} before loading",
            size_label(m.n),
            m.docs,
            human_bytes(m.store_bytes as f64),
            human_bytes(m.held["rss_before_kib"].as_u64().unwrap_or(0) as f64 * 1024.0)
        ));
    }
    o.json = json!({
        "target": "cold start / Automerge::load <= 1.2 and peak RSS / plain Automerge peak RSS <= 1.5",
        "sizes": sizes,
        "target_met": all_met,
    });
    o.notes.push(
        "spocnet: spawn of spoc-node until GET /v1/status answers with every entry and document (store \
         verified: chains, signatures, snapshots); baseline: Automerge::load of every document's saved bytes \
         in process; RSS: the node's VmHWM against the VmHWM of a process that loads the same documents"
            .into(),
    );
    o
}
