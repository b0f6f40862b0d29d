//! Five real `spoc-node` processes from `spoc testnet --nodes 5` replicate with no server:
//! a contribution on any node reaches all others, a node killed while others write
//! catches up after its restart, a node cut off (stopped) and resumed loses nothing, and at
//! the end every node has identical heights and identical lists.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use spoc_tests::{Proc, Testnet, spoc};

const REACH: Duration = Duration::from_secs(60);

fn hash(ack: &Value) -> String {
    ack["entry"].as_str().unwrap_or_default().to_owned()
}

fn report(i: usize) -> Value {
    json!({
        "command": "obstacle_report",
        "title": format!("Obstacle {i}"),
        "type": "pragmatic",
        "description": format!("Observed delay number {i}."),
    })
}

#[test]
fn five_nodes_converge_through_kills_and_cuts() -> Result<()> {
    let net = Testnet::new(5)?;
    let mut nodes: Vec<Proc> = net.nodes.iter().map(Proc::start).collect::<Result<_>>()?;
    let codes: Vec<String> = net.nodes.iter().map(|n| n.state.clone()).collect();
    let mut hashes: Vec<String> = Vec::new();

    // The Presidency convenes; every other state proposes, reports and shares.
    let meeting = nodes[0].write(&json!({
        "command": "meeting_convene", "title": "Heads of SPOC, 2nd meeting",
        "date": "2026-12-10", "venue": "Dublin", "format": "hybrid",
    }))?;
    hashes.push(hash(&meeting));
    let meeting_id = meeting["id"].as_str().unwrap_or_default().to_owned();
    for n in &nodes {
        n.wait_entries(&hashes, REACH)?;
    }
    let mut obstacles = Vec::new();
    for (i, n) in nodes.iter().enumerate().skip(1) {
        hashes.push(hash(&n.write(&json!({
            "command": "meeting_propose", "meeting": meeting_id, "title": format!("Item from {}", codes[i]),
        }))?));
        let o = n.write(&report(i))?;
        hashes.push(hash(&o));
        obstacles.push(o["id"].as_str().unwrap_or_default().to_owned());
        hashes.push(hash(&n.write(&json!({
            "command": "practice_share", "title": format!("Practice of {}", codes[i]),
            "problem": "Requests wait in several queues", "practice": "One queue",
        }))?));
    }
    // Each state endorses the next state's obstacle: this needs the other's entry first.
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let target = &obstacles[i % obstacles.len()];
        n.wait_entries(&hashes, REACH)?;
        hashes.push(hash(&n.write(&json!({
            "command": "obstacle_endorse", "obstacle": target, "stance": "support",
        }))?));
    }
    for n in &nodes {
        n.wait_entries(&hashes, REACH)?;
    }

    // A node killed while the others keep writing catches up after its restart.
    nodes[2].kill9()?;
    for (i, n) in nodes.iter().enumerate() {
        if i != 2 {
            hashes.push(hash(&n.write(&report(100 + i))?));
        }
    }
    nodes[2] = Proc::start(&net.nodes[2])?;
    nodes[2].wait_entries(&hashes, REACH)?;

    // A node cut off (stopped) while others write loses nothing when it resumes.
    nodes[4].signal(nix::sys::signal::Signal::SIGSTOP)?;
    for (i, n) in nodes.iter().enumerate().take(4) {
        hashes.push(hash(&n.write(&report(200 + i))?));
    }
    nodes[4].signal(nix::sys::signal::Signal::SIGCONT)?;
    // And its own writes made after the cut reach the others.
    hashes.push(hash(&nodes[4].write(&report(300))?));
    for n in &nodes {
        n.wait_entries(&hashes, REACH)?;
    }

    // Identical heights and identical lists everywhere.
    let first = nodes[0].get("/v1/status")?.1;
    for n in &nodes[1..] {
        let status = n.get("/v1/status")?.1;
        assert!(first["digest"].is_string(), "{first}");
        assert_eq!(
            (&status["digest"], &status["entries"]),
            (&first["digest"], &first["entries"]),
            "logs differ at {}",
            status["state"]
        );
        assert_eq!(status["pending"], 0);
    }
    for what in ["meeting", "obstacle", "practice"] {
        let lists: Vec<String> = nodes
            .iter()
            .map(|n| {
                spoc(Some(&n.data_dir), &[what, "list", "--json"])
                    .and_then(|o| o.ok())
                    .map(|o| o.stdout)
            })
            .collect::<Result<_>>()?;
        assert!(lists.iter().all(|l| *l == lists[0]), "{what} lists differ");
    }
    let meetings: Value = serde_json::from_str(
        &spoc(Some(&nodes[3].data_dir), &["meeting", "list", "--json"])?
            .ok()?
            .stdout,
    )?;
    assert_eq!(meetings[0]["agenda"].as_array().map(Vec::len), Some(4));
    Ok(())
}
