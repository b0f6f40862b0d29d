//! Catch-up beyond one sync batch. Three states wrote 1,500 entries while a node was away,
//! each one answering the others on shared obstacles, so that almost every entry depends on
//! entries of other logs. The returning node must take them all, batch after batch: an
//! answer served log by log would leave each batch waiting on entries of logs that sort
//! later, and the node would be sent the same batch for ever.
//!
//! The serving node was started on a store written offline, so it serves in the causal
//! order that `Store::load` rebuilt, not in one it saw entries arrive in.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use spoc_node::log::SignedEntry;
use spoc_tests::history::{self, History};
use spoc_tests::{Proc, Testnet};

const ENTRIES: usize = 1_500;
const CATCH_UP: Duration = Duration::from_secs(180);

/// Each state's one log, answering the others on 12 shared obstacles.
const HISTORY: History = History {
    entries: ENTRIES,
    obstacles: 12,
    incarnation: |_| 1,
    seed: 1500,
};

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
    let history = history::write(&net, first, &HISTORY).context("writing the history")?;
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

    // The digest of every log's tip: equal when the nodes hold the same logs.
    let digest =
        |p: &Proc| -> Result<serde_json::Value> { Ok(p.get("/v1/status")?.1["digest"].clone()) };
    let expected = digest(&serving)?;
    ensure!(expected.is_string(), "no digest: {expected}");
    for p in [&behind, &late] {
        assert_eq!(digest(p)?, expected, "logs differ at {}", p.api);
        let status = p.get("/v1/status")?.1;
        assert_eq!(status["entries"], json!(ENTRIES), "{status}");
        assert_eq!(status["pending"], json!(0), "{status}");
    }
    Ok(())
}
