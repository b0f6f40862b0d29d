//! Catch-up beyond one sync batch. Three states wrote 1,500 entries while a node was away,
//! each one answering the others on shared obstacles, so that almost every entry depends on
//! entries of other logs. The returning node must take them all, batch after batch: an
//! answer served log by log would leave each batch waiting on entries of logs that sort
//! later, and the node would be sent the same batch for ever.
//!
//! The serving node was started on a store written offline, so it serves in the causal
//! order that `Store::load` rebuilt, not in one it saw entries arrive in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rand::{Rng, SeedableRng};
use serde_json::json;
use spoc_node::charter::Charter;
use spoc_node::docs::command::Command;
use spoc_node::identity::SecretKey;
use spoc_node::log::SignedEntry;
use spoc_node::replica::{Limits, Replica, Report};
use spoc_node::store::Store;
use spoc_tests::{NodeInfo, Proc, Testnet};

const ENTRIES: usize = 1_500;
const OBSTACLES: usize = 12;
const CATCH_UP: Duration = Duration::from_secs(180);

/// Writes `ENTRIES` entries of every node's state into `info`'s store.
fn write_history(net: &Testnet, into: &NodeInfo) -> Result<Vec<SignedEntry>> {
    let settings = spoc_node::config::Settings::load(&into.data_dir, &|_| None)?;
    let charter = Arc::new(Charter::parse(&std::fs::read_to_string(
        &settings.charter,
    )?)?);
    let mut keys = Vec::new();
    for node in &net.nodes {
        let s = spoc_node::config::Settings::load(&node.data_dir, &|_| None)?;
        keys.push((node.state.clone(), SecretKey::load(&s.key, None)?));
    }
    let mut replica = Replica::new(charter, Limits::default());
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1500);
    let mut report = Report::default();
    let mut obstacles = Vec::new();
    let mut all = Vec::new();
    let now = 1_796_083_200_000_u64;
    for i in 0..ENTRIES {
        let (_, key) = &keys[i % keys.len()];
        let command: Command = if obstacles.len() < OBSTACLES {
            serde_json::from_value(json!({
                "command": "obstacle_report", "title": format!("Obstacle {i}"),
                "type": "legal", "description": "Waits for a reply from every state.",
            }))?
        } else {
            let obstacle: &String = &obstacles[rng.random_range(0..obstacles.len())];
            serde_json::from_value(json!({
                "command": "obstacle_comment", "obstacle": obstacle,
                "text": format!("Reply {i}: our legislation differs on this point."),
            }))?
        };
        let ulid = ulid::Ulid::from_parts(now + i as u64, rng.random::<u128>());
        let (entry, item) = replica
            .prepare(key, 1, &command, now + i as u64, ulid)
            .map_err(|e| anyhow::anyhow!("entry {i}: {e}"))?;
        if obstacles.len() < OBSTACLES {
            obstacles.push(item);
        }
        let mut accepted = replica.ingest(vec![entry.clone()])?;
        ensure!(accepted.accepted.len() == 1, "entry {i} was refused");
        report.accepted.append(&mut accepted.accepted);
        report.touched.append(&mut accepted.touched);
        all.push(entry);
    }
    let store = Store::open(&into.data_dir.join(spoc_node::config::STORE_FILE))?;
    store.commit(&replica, &report)?;
    Ok(all)
}

/// The hash of the last entry of each log.
fn tips(entries: &[SignedEntry]) -> Vec<String> {
    let mut last = HashMap::new();
    for e in entries {
        last.insert(e.entry.log(), e.hash().to_string());
    }
    last.into_values().collect()
}

#[test]
fn a_node_catches_up_on_more_than_one_batch_of_interdependent_entries() -> Result<()> {
    let batch = spoc_node::service::sync::BATCH_ENTRIES;
    ensure!(
        ENTRIES >= 3 * batch,
        "the history must span several batches"
    );
    let net = Testnet::new(3)?;
    let (first, second, third) = (&net.nodes[0], &net.nodes[1], &net.nodes[2]);
    let history = write_history(&net, first).context("writing the history")?;
    let tips = tips(&history);

    let serving = Proc::start(first)?;
    let behind = Proc::start(second)?;
    behind
        .wait_entries(&tips, CATCH_UP)
        .context("the returning node did not catch up from one peer")?;

    // The third node can pull from both, and must end with the same entries.
    let late = Proc::start(third)?;
    late.wait_entries(&tips, CATCH_UP)
        .context("the late node did not catch up from two peers")?;

    let heights =
        |p: &Proc| -> Result<serde_json::Value> { Ok(p.get("/v1/status")?.1["heights"].clone()) };
    let expected = heights(&serving)?;
    ensure!(
        expected.as_object().is_some_and(|h| !h.is_empty()),
        "no heights: {expected}"
    );
    for p in [&behind, &late] {
        assert_eq!(heights(p)?, expected, "heights differ at {}", p.api);
        let status = p.get("/v1/status")?.1;
        assert_eq!(status["entries"], json!(ENTRIES), "{status}");
        assert_eq!(status["pending"], json!(0), "{status}");
    }
    Ok(())
}
