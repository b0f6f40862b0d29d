//! The charter amended by quorum, with real `spoc-node` processes and the `spoc` CLI: five
//! nodes write while an amendment that adds a sixth state is proposed and signed, all of
//! them converge on it, and the new state's node, started from the genesis charter, is
//! admitted, catches up and writes. A second amendment removes a state: its node is let
//! go, and what it wrote stays.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::{Value, json};
use spoc_node::charter::Charter;
use spoc_tests::{Proc, Testnet, spoc};

const WAIT: Duration = Duration::from_secs(90);
/// Writes each node makes at most while the amendment goes round.
const MAX_WRITES: usize = 40;

fn status(node: &Proc) -> Result<Value> {
    let (code, body) = node.get("/v1/status")?;
    ensure!(code == 200, "status answered {code}: {body}");
    Ok(body)
}

fn entry_of(answer: &Value) -> Result<String> {
    answer["entry"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no entry in {answer}"))
}

#[test]
fn an_amendment_that_adds_a_state_takes_effect_on_five_writing_nodes_and_its_node_joins()
-> Result<()> {
    let net = Testnet::new(6)?;
    let joining = net.nodes[5].clone();
    let first = net.nodes[0].state.clone();
    // The genesis charter leaves the sixth state out, and gives its terms to the first.
    let full_text = std::fs::read_to_string(net.dir.path().join("net/charter.toml"))?;
    let full = Charter::parse(&full_text)?;
    let mut genesis = full.clone();
    genesis.participants.retain(|p| p.code != joining.state);
    for term in &mut genesis.presidency {
        if term.state == joining.state {
            term.state = first.clone();
        }
    }
    let genesis = Charter::parse(&genesis.to_toml())?;
    for node in &net.nodes {
        std::fs::write(node.data_dir.join("charter.toml"), genesis.to_toml())?;
    }

    let mut procs: Vec<Proc> = net.nodes[..5]
        .iter()
        .map(Proc::start)
        .collect::<Result<_>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let written: Vec<String> = std::thread::scope(|scope| -> Result<Vec<String>> {
        let writers: Vec<_> = procs
            .iter()
            .map(|node| {
                let stop = stop.clone();
                scope.spawn(move || -> Result<Vec<String>> {
                    let mut entries = Vec::new();
                    while !stop.load(Ordering::Relaxed) && entries.len() < MAX_WRITES {
                        let answer = node.write(&json!({
                            "command": "practice_share",
                            "title": format!("Practice {}", entries.len()),
                            "problem": "Requests get lost",
                            "practice": "A single mailbox per SPOC",
                        }))?;
                        entries.push(entry_of(&answer)?);
                    }
                    Ok(entries)
                })
            })
            .collect();
        let amended = amend(&procs, &net.dir.path().join("amended.toml"), &full_text);
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for w in writers {
            all.extend(w.join().map_err(|_| anyhow!("a writer panicked"))??);
        }
        all.extend(amended?);
        Ok(all)
    })?;
    for node in &mut procs {
        node.wait_log("the charter in force changed", WAIT)?;
    }
    for node in &procs {
        node.wait_entries(&written, WAIT)?;
    }
    let digests: Vec<Value> = procs
        .iter()
        .map(|p| status(p).map(|s| json!([s["charter_version"], s["digest"]])))
        .collect::<Result<_>>()?;
    ensure!(
        digests.iter().all(|d| *d == digests[0]) && digests[0][0] == 1,
        "the nodes did not converge on version 1: {digests:?}"
    );
    let shown = spoc(Some(&procs[3].data_dir), &["--json", "charter", "show"])?.ok()?;
    let shown = shown.json()?;
    ensure!(shown["version"] == 1, "{shown}");
    let added = shown["participants"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["code"] == joining.state.as_str()))
        .context("the new state is not in the charter shown")?;
    ensure!(added["key"].is_string(), "{added}");
    ensure!(
        shown["presidency"].as_array().is_some_and(|ts| ts
            .iter()
            .any(|t| t["state"] == joining.state.as_str()
                && t["from"].is_string()
                && t["to"].is_string())),
        "{shown}"
    );
    let tally = spoc(Some(&procs[4].data_dir), &["--json", "charter", "status"])?
        .ok()?
        .json()?;
    ensure!(
        tally["version"] == 1 && tally["proposals"][0]["state"] == "carried",
        "{tally}"
    );

    // The new state's node starts from the genesis charter, which does not name it: the
    // others admit it under the amendment, it catches up, and then it writes.
    let mut new = Proc::start(&joining)?;
    new.wait_log("the charter in force changed", WAIT)?;
    new.wait_entries(&written, WAIT)?;
    let answer = new.write(&json!({
        "command": "practice_share",
        "title": "The newcomer's practice",
        "problem": "Joining takes a flag day",
        "practice": "Amend the charter by quorum",
    }))?;
    let newcomer = entry_of(&answer)?;
    for node in &procs {
        node.wait_entries(std::slice::from_ref(&newcomer), WAIT)?;
    }

    // A second amendment removes the fifth state: the others let its node go, and what
    // it wrote stays.
    let leaving_state = status(&procs[4])?["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let its_entries = |node: &Proc| -> Result<Value> {
        Ok(status(node)?["states"][leaving_state.as_str()]["entries"].clone())
    };
    let before = its_entries(&procs[0])?;
    ensure!(before.as_u64().is_some_and(|n| n > 0), "{before}");
    let text = spoc(Some(&procs[0].data_dir), &["charter", "show"])?
        .ok()?
        .stdout;
    let mut smaller = Charter::parse(&text)?;
    smaller.participants.retain(|p| p.code != leaving_state);
    smaller.training_core_group.retain(|c| *c != leaving_state);
    for term in &mut smaller.presidency {
        if term.state == leaving_state {
            term.state = first.clone();
        }
    }
    let file = net.dir.path().join("smaller.toml");
    std::fs::write(&file, smaller.to_toml())?;
    let proposed = spoc(
        Some(&procs[0].data_dir),
        &["--json", "charter", "propose", "--file", path(&file)?],
    )?
    .ok()?
    .json()?;
    // The proposal retires the key of the state it removes, after all its node holds.
    ensure!(
        proposed["diff"]
            .as_array()
            .is_some_and(|d| d.iter().any(|l| l.as_str() == Some("+ [[revoked]]"))),
        "{proposed}"
    );
    let mut signed = vec![entry_of(&proposed)?];
    for node in &procs[1..4] {
        node.wait_entries(&signed, WAIT)?;
        let answer = spoc(Some(&node.data_dir), &["--json", "charter", "sign", "2"])?
            .ok()?
            .json()?;
        signed.push(entry_of(&answer)?);
    }
    let leaving_peer = status(&procs[4])?["peer_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    procs[0].wait_log("a peer's state left the charter; disconnecting", WAIT)?;
    // The status forgets the peer once the disconnection is done.
    procs[0].wait_log(
        &format!("peer refused and disconnected peer={leaving_peer}"),
        WAIT,
    )?;
    let peers = status(&procs[0])?["peers"].clone();
    ensure!(
        !peers
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["state"] == leaving_state.as_str())),
        "{leaving_state} is still a peer: {peers}"
    );
    procs[0].wait_entries(&written, WAIT)?;
    let after = its_entries(&procs[0])?;
    ensure!(
        after == before,
        "{leaving_state} held {before} entries, now {after}"
    );
    ensure!(status(&procs[0])?["charter_version"] == 2);
    Ok(())
}

fn path(p: &std::path::Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("a path that is not UTF-8"))
}

/// The amendment that adds the sixth state, as operators make it: the first node's head
/// shows the charter, proposes it with the new state, and three more member states sign
/// it by the version it would make. Returns the entries of the proposal and signatures.
fn amend(procs: &[Proc], file: &std::path::Path, full_text: &str) -> Result<Vec<String>> {
    let shown = spoc(Some(&procs[0].data_dir), &["charter", "show"])?.ok()?;
    let in_force = Charter::parse(&shown.stdout)?;
    ensure!(in_force.version == 0);
    std::fs::write(file, full_text)?;
    let proposed = spoc(
        Some(&procs[0].data_dir),
        &["--json", "charter", "propose", "--file", path(file)?],
    )?
    .ok()?
    .json()?;
    ensure!(proposed["version"] == 1, "{proposed}");
    ensure!(
        proposed["diff"].as_array().is_some_and(|d| d
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.starts_with("+ code = ")))),
        "{proposed}"
    );
    let mut entries = vec![entry_of(&proposed)?];
    for node in &procs[1..4] {
        node.wait_entries(&entries[..1], WAIT)?;
        let answer = spoc(Some(&node.data_dir), &["--json", "charter", "sign", "1"])?
            .ok()?
            .json()?;
        entries.push(entry_of(&answer)?);
    }
    Ok(entries)
}
