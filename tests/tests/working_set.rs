//! A node's working set is bounded: with a cache of N documents it serves ten times as
//! many, every read correct, and never holds more than N of them in memory.

use anyhow::{Result, ensure};
use serde_json::json;
use spoc_tests::{Proc, Testnet};

const CACHED: usize = 8;

#[test]
fn a_node_with_a_cache_of_n_documents_serves_ten_n_of_them_correctly() -> Result<()> {
    let net = Testnet::new(2)?;
    let lt = net.node("LT")?;
    let node = Proc::start_with(lt, &[("SPOC_CACHED_DOCUMENTS", &CACHED.to_string())])?;
    let cached = |node: &Proc| -> Result<u64> {
        let (_, status) = node.get("/v1/status")?;
        status["cached_documents"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no cached_documents in {status}"))
    };
    let mut ids = Vec::new();
    for i in 0..10 * CACHED {
        let ack = node.write(&json!({
            "command": "obstacle_report",
            "title": format!("Obstacle {i}"),
            "type": "legal",
            "description": format!("Description {i}: replies take weeks."),
        }))?;
        ids.push(ack["id"].as_str().unwrap_or_default().to_owned());
        // A comment on an earlier obstacle brings an evicted document back, changes it
        // and evicts another.
        if i % 3 == 2 {
            node.write(&json!({
                "command": "obstacle_comment",
                "obstacle": ids[i / 2],
                "text": format!("Comment {i} on obstacle {}.", i / 2),
            }))?;
        }
        let held = cached(&node)?;
        ensure!(held <= CACHED as u64, "{held} documents in memory");
    }
    let comments = |i: usize| {
        (0..10 * CACHED)
            .filter(|c| c % 3 == 2 && c / 2 == i)
            .count()
    };
    // Every document read correctly, in one order and then the other, whatever was
    // evicted in between.
    for (i, id) in ids.iter().enumerate().chain(ids.iter().enumerate().rev()) {
        let (status, doc) = node.get(&format!("/v1/doc?id={id}"))?;
        ensure!(status == 200, "reading {id} answered {status}: {doc}");
        ensure!(doc["title"] == format!("Obstacle {i}"), "{id}: {doc}");
        let held = doc["comments"].as_object().map_or(0, serde_json::Map::len);
        ensure!(
            held == comments(i),
            "{id}: {held} comments, not {}",
            comments(i)
        );
        let held = cached(&node)?;
        ensure!(held <= CACHED as u64, "{held} documents in memory");
    }
    ensure!(node.list("obstacles")?.len() == 10 * CACHED);
    let (_, verify) = node.post("/v1/verify", &json!({}))?;
    ensure!(verify["ok"] == true, "{verify}");
    Ok(())
}
