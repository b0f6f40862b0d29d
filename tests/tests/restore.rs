//! Restore safety: a node restored from an older backup of its store, whose own log is
//! behind what its peers hold, catches up and signs new entries without ever forking its
//! log: no node ever holds an equivocation proof against it.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use spoc_tests::{Proc, Testnet};

const REACH: Duration = Duration::from_secs(60);

fn report(title: &str) -> Value {
    json!({
        "command": "obstacle_report", "title": title, "type": "legal",
        "description": "Restored nodes must not fork their logs.",
    })
}

fn entry(ack: &Value) -> String {
    ack["entry"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_node_restored_from_an_old_backup_catches_up_and_never_forks() -> Result<()> {
    let net = Testnet::new(2)?;
    let (ie, lt) = (net.node("IE")?, net.node("LT")?);
    let ie_node = Proc::start(ie)?;
    let mut lt_node = Proc::start(lt)?;
    let mut hashes = Vec::new();
    for title in ["Before the backup 1", "Before the backup 2"] {
        hashes.push(entry(&lt_node.write(&report(title))?));
    }
    ie_node.wait_entries(&hashes, REACH)?;

    // The backup: a copy of the store taken while the node is stopped.
    assert_eq!(lt_node.terminate()?, 0);
    let store = lt.data_dir.join("store.redb");
    let backup = net.dir.path().join("lt-store.backup");
    std::fs::copy(&store, &backup)?;

    // Life goes on after the backup; its seqs reach the peer.
    let mut lt_node = Proc::start(lt)?;
    let before = lt_node.get("/v1/status")?.1;
    for title in ["After the backup 1", "After the backup 2"] {
        hashes.push(entry(&lt_node.write(&report(title))?));
    }
    ie_node.wait_entries(&hashes, REACH)?;
    assert_eq!(lt_node.terminate()?, 0);

    // The disk is lost and the node is restored from the backup, behind its peer.
    std::fs::copy(&backup, &store)?;
    let lt_node = Proc::start(lt)?;
    let restored = lt_node.get("/v1/status")?.1;
    assert_ne!(
        restored["incarnation"], before["incarnation"],
        "a restart must start a new log"
    );
    // It signs at once, in a new log, and catches up what it had lost.
    hashes.push(entry(&lt_node.write(&report("After the restore"))?));
    lt_node.wait_entries(&hashes, REACH)?;
    ie_node.wait_entries(&hashes, REACH)?;

    for node in [&ie_node, &lt_node] {
        let status = node.get("/v1/status")?.1;
        assert_eq!(
            status["equivocations"],
            json!([]),
            "{} holds a proof of a fork: {status}",
            status["state"]
        );
        assert_eq!(status["rejected"], json!({}), "{status}");
    }
    let (a, b) = (ie_node.get("/v1/status")?.1, lt_node.get("/v1/status")?.1);
    assert!(a["digest"].is_string(), "{a}");
    assert_eq!((&a["digest"], &a["entries"]), (&b["digest"], &b["entries"]));
    // Three logs of LT: before the backup, after it, and after the restore.
    assert_eq!(a["states"]["LT"]["logs"], 3, "{a}");
    Ok(())
}
