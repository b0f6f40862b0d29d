//! Histories written offline into a node's store before it starts, as its node would have
//! committed them: the testnet's states write through `Replica::prepare`, some reporting
//! obstacles and the others answering on them, so that most entries depend on entries of
//! other logs.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, ensure};
use rand::{Rng, SeedableRng};
use serde_json::json;
use spoc_node::charter::Charter;
use spoc_node::docs::command::Command;
use spoc_node::identity::SecretKey;
use spoc_node::log::SignedEntry;
use spoc_node::replica::{Limits, Replica, Report};
use spoc_node::store::Store;

use crate::{NodeInfo, Testnet};

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct History {
    pub entries: usize,
    /// The first entries report this many obstacles; every later one comments on one.
    pub obstacles: usize,
    /// The incarnation that writes the `i`th entry (the writing state goes round the
    /// testnet's states).
    pub incarnation: fn(usize) -> u32,
    pub seed: u64,
}

/// Writes `history` into `into`'s store; returns the entries in the order written (a
/// causal order).
pub fn write(net: &Testnet, into: &NodeInfo, history: &History) -> Result<Vec<SignedEntry>> {
    let settings = spoc_node::config::Settings::load(&into.data_dir, &|_| None)?;
    let charter = Arc::new(Charter::parse(&std::fs::read_to_string(
        &settings.charter,
    )?)?);
    let mut keys = Vec::new();
    for node in &net.nodes {
        let s = spoc_node::config::Settings::load(&node.data_dir, &|_| None)?;
        keys.push(SecretKey::load(&s.key, None)?);
    }
    let mut replica = Replica::new(charter, Limits::default());
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(history.seed);
    let mut report = Report::default();
    let mut obstacles = Vec::new();
    let mut all = Vec::with_capacity(history.entries);
    let now = 1_796_083_200_000_u64;
    for i in 0..history.entries {
        let key = &keys[i % keys.len()];
        let command: Command = if obstacles.len() < history.obstacles {
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
            .prepare(
                key,
                (history.incarnation)(i),
                &command,
                now + i as u64,
                ulid,
            )
            .map_err(|e| anyhow!("entry {i}: {e}"))?;
        if obstacles.len() < history.obstacles {
            obstacles.push(item);
        }
        let mut accepted = replica.ingest(vec![entry.clone()])?;
        ensure!(accepted.accepted.len() == 1, "entry {i} was refused");
        report.accepted.append(&mut accepted.accepted);
        report.touched.append(&mut accepted.touched);
        all.push(entry);
    }
    let store = Store::open(&into.data_dir.join(spoc_node::config::STORE_FILE))?;
    store
        .commit(&replica, &report)
        .context("committing the history")?;
    Ok(all)
}
