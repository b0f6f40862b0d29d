//! Many logs. Every start of a node opens a new log, so a network that has run for years
//! holds thousands of them. Two nodes share 10,000 logs of one entry each, written offline
//! into the first node's store: 100 obstacle reports, then comments on them, so that most
//! entries depend on entries of other logs. The second node starts empty and catches up;
//! halfway through, it is killed and goes on from its place in the first node's stream;
//! then both go on pulling from each other through several anti-entropy rounds. Neither
//! refuses nor cuts off the other, and once they are in sync their requests to each other
//! are a few hundred bytes, as they would be with ten logs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use spoc_node::service::sync::ANTI_ENTROPY;
use spoc_tests::history::{self, History};
use spoc_tests::{Proc, Testnet};

const LOGS: usize = 10_000;
const CATCH_UP: Duration = Duration::from_secs(300);
/// Anti-entropy rounds each node must go through once in sync.
const ROUNDS: usize = 3;
/// The most an in-sync request may take: a few KiB.
const IN_SYNC_BYTES: u64 = 2 * 1024;

/// A new log for every entry, as if each entry were written after a restart.
const HISTORY: History = History {
    entries: LOGS,
    obstacles: 100,
    incarnation: |i| u32::try_from(i).unwrap_or(u32::MAX - 1) + 1,
    seed: 10_000,
};

fn status(node: &Proc) -> Result<Value> {
    let (code, body) = node.get("/v1/status")?;
    ensure!(code == 200, "status answered {code}: {body}");
    Ok(body)
}

#[test]
fn two_nodes_sharing_ten_thousand_logs_stay_in_sync_with_small_requests() -> Result<()> {
    let net = Testnet::new(2)?;
    let (first, second) = (&net.nodes[0], &net.nodes[1]);
    let written = Instant::now();
    let entries = history::write(&net, first, &HISTORY).context("writing the history")?;
    let hashes: Vec<String> = entries.iter().map(|e| e.hash().to_string()).collect();
    eprintln!("{LOGS} logs written in {:?}", written.elapsed());

    let env = [("SPOC_LOG_LEVEL", "info,spoc_node::service::sync=debug")];
    let mut serving = Proc::start_with(first, &env)?;
    let started = Instant::now();
    let mut fresh = Proc::start_with(second, &env)?;
    // It lacked more logs than one request names: it takes the serving node's entries in
    // the order that node accepted them (its stream), so none waits for a past still to
    // come. Killed halfway through, it goes on from its place in that stream.
    fresh
        .wait_entries(&hashes[..LOGS / 2], CATCH_UP)
        .context("the fresh node did not take half of the history")?;
    fresh.kill9()?;
    let mut fresh = Proc::start_with(second, &env)?;
    let line = fresh.wait_log("resume=Some(", CATCH_UP)?;
    let place: usize = line
        .split("resume=Some(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no place in {line:?}"))?;
    // The place is kept after each batch of 500 and made durable by the next commit.
    ensure!(
        place + 2 * 500 >= LOGS / 2,
        "the catch-up went on from {place}, not from about {}: {line}",
        LOGS / 2
    );
    fresh
        .wait_entries(&hashes, CATCH_UP)
        .context("the fresh node did not catch up")?;
    let caught_up = started.elapsed();

    // Once in sync, each node pulls from the other every anti-entropy period. The pull
    // that caught up may still be ending: it is one more line.
    for (node, extra) in [(&mut serving, 0), (&mut fresh, 1)] {
        node.skip_log();
        for _ in 0..ROUNDS + extra {
            node.wait_log("pull done", ANTI_ENTROPY * 3)?;
        }
    }

    let (a, b) = (status(&serving)?, status(&fresh)?);
    ensure!(
        a["digest"].is_string() && a["digest"] == b["digest"],
        "the logs differ"
    );
    for s in [&a, &b] {
        assert_eq!(s["entries"], json!(LOGS), "{}", s["entries"]);
        assert_eq!(s["logs"], json!(LOGS));
        assert_eq!(s["pending"], json!(0));
        assert_eq!(s["refused_peers"], json!({}), "{}", s["refused_peers"]);
        assert_eq!(s["invalid_from_peers"], json!(0));
        let peers = s["peers"].as_array().context("no peers")?;
        assert_eq!(peers.len(), 1, "{peers:?}");
        let peer = &peers[0];
        assert_eq!(peer["entries_behind"], json!(0), "{peer}");
        let bytes = peer["last_request_bytes"].as_u64().unwrap_or(u64::MAX);
        assert!(
            bytes <= IN_SYNC_BYTES,
            "an in-sync request of {bytes} bytes from {peer}"
        );
        eprintln!(
            "{}: the in-sync request from its peer took {bytes} bytes",
            s["state"]
        );
    }
    eprintln!(
        "{LOGS} logs: caught up in {caught_up:?}, then {ROUNDS} anti-entropy rounds each way in sync"
    );
    Ok(())
}
