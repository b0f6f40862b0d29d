//! National keys with real `spoc-node` processes and the `spoc` CLI: a state rotates its
//! key and writes on, across a restart, and a node that starts empty takes in and
//! verifies the whole history; a compromised key is revoked from an entry by an
//! amendment, its later entries are cut on every node, and its node is refused.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::{Value, json};
use spoc_tests::{Proc, Testnet, spoc};

const WAIT: Duration = Duration::from_secs(90);

fn status(node: &Proc) -> Result<Value> {
    let (code, body) = node.get("/v1/status")?;
    ensure!(code == 200, "status answered {code}: {body}");
    Ok(body)
}

fn practice(node: &Proc, title: &str) -> Result<String> {
    let answer = node.write(&json!({
        "command": "practice_share",
        "title": title,
        "problem": "Requests get lost",
        "practice": "A single mailbox per SPOC",
    }))?;
    answer["entry"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no entry in {answer}"))
}

#[test]
fn a_state_rotates_its_key_writes_on_and_a_node_that_starts_empty_verifies_it_all() -> Result<()> {
    let net = Testnet::new(3)?;
    let (ie_info, lt_info, el_info) = (&net.nodes[0], &net.nodes[1], &net.nodes[2]);
    let mut ie = Proc::start(ie_info)?;
    let lt = Proc::start(lt_info)?;
    let mut el = Proc::start(el_info)?;
    let mut entries = vec![practice(&ie, "Before the rotation")?];

    let old = std::fs::read(ie_info.data_dir.join("national.key"))?;
    let rotated = spoc(Some(&ie.data_dir), &["--json", "key", "rotate"])?
        .ok()?
        .json()?;
    let new_key = rotated["key"].as_str().context("no key")?.to_owned();
    entries.push(rotated["entry"].as_str().context("no entry")?.to_owned());
    ensure!(
        std::fs::read(ie_info.data_dir.join("national.key"))? != old,
        "the key file did not change"
    );
    let aside: Vec<_> = std::fs::read_dir(&ie_info.data_dir)?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("national.key.retired-")
        })
        .collect();
    ensure!(aside.len() == 1, "the old key is not kept aside: {aside:?}");
    ensure!(std::fs::read(aside[0].path())? == old);
    ensure!(aside[0].metadata()?.permissions().mode() & 0o777 == 0o600);

    // The new key writes at once, and after a restart.
    entries.push(practice(&ie, "After the rotation")?);
    ie.terminate()?;
    ie = Proc::start(ie_info)?;
    entries.push(practice(&ie, "After the restart")?);
    // What the new key signs is the same state's.
    let states = status(&ie)?["states"].clone();
    ensure!(
        states.as_object().is_some_and(|s| s.len() == 1)
            && states[&ie_info.state]["entries"] == entries.len()
            && states[&ie_info.state]["logs"] == 3,
        "{states} ({new_key})"
    );
    for node in [&lt, &el] {
        node.wait_entries(&entries, WAIT)?;
    }

    // A node that starts empty takes in and verifies the whole history.
    el.terminate()?;
    std::fs::remove_file(el_info.data_dir.join("store.redb"))?;
    std::fs::remove_file(el_info.data_dir.join("store.key"))?;
    el = Proc::start(el_info)?;
    el.wait_entries(&entries, WAIT)?;
    let verified = spoc(Some(&el.data_dir), &["--json", "verify"])?
        .ok()?
        .json()?;
    ensure!(verified["ok"] == true, "{verified}");
    ensure!(
        status(&el)?["digest"] == status(&lt)?["digest"],
        "the fresh node differs"
    );
    Ok(())
}

#[test]
fn a_compromised_key_is_revoked_from_an_entry_and_cut_on_every_node() -> Result<()> {
    let net = Testnet::new(3)?;
    let mut procs: Vec<Proc> = net.nodes.iter().map(Proc::start).collect::<Result<_>>()?;
    let lt_state = net.nodes[1].state.clone();
    let honest = practice(&procs[1], "Honest")?;
    let forged = practice(&procs[1], "Forged")?;
    let also = practice(&procs[1], "Forged too")?;
    let all = [honest.clone(), forged.clone(), also.clone()];
    for node in &procs {
        node.wait_entries(&all, WAIT)?;
    }

    // LT makes a new key out of band; IE proposes the revocation, EL signs it.
    let replacement = net.dir.path().join("lt-new.key");
    let made = spoc(
        None,
        &[
            "--json",
            "keygen",
            "--out",
            replacement.to_str().context("path")?,
        ],
    )?
    .ok()?
    .json()?;
    let new_key = made["public_key"].as_str().context("no key")?.to_owned();
    let proposed = spoc(
        Some(&procs[0].data_dir),
        &[
            "--json", "key", "revoke", "--state", &lt_state, "--from", &forged, "--key", &new_key,
        ],
    )?
    .ok()?
    .json()?;
    ensure!(
        proposed["diff"].as_array().is_some_and(|d| d
            .iter()
            .any(|l| l.as_str() == Some("[[revoked]]") || l.as_str() == Some("+ [[revoked]]"))),
        "{proposed}"
    );
    let entry = proposed["entry"].as_str().context("no entry")?.to_owned();
    procs[2].wait_entries(std::slice::from_ref(&entry), WAIT)?;
    spoc(
        Some(&procs[2].data_dir),
        &["--json", "charter", "sign", "1"],
    )?
    .ok()?;
    procs[0].wait_log("the charter in force changed", WAIT)?;
    procs[2].wait_log("the charter in force changed", WAIT)?;

    // Both honest nodes cut the two forged entries and keep the first.
    for node in &procs[..1] {
        let practices = node.list("practices")?;
        let titles: Vec<&str> = practices
            .iter()
            .filter_map(|p| p["title"].as_str())
            .collect();
        ensure!(titles == ["Honest"], "{titles:?} {:?}", practices);
    }
    let practices = procs[2].list("practices")?;
    ensure!(practices.len() == 1, "{practices:?}");
    ensure!(status(&procs[0])?["digest"] == status(&procs[2])?["digest"]);
    // The compromised node is let go: its certificate is of the revoked key.
    let lt_peer = status(&procs[1])?["peer_id"]
        .as_str()
        .context("no peer id")?
        .to_owned();
    procs[0].wait_log("a peer's certifying key was revoked; disconnecting", WAIT)?;
    // The status forgets the peer once the disconnection is done.
    procs[0].wait_log(
        &format!("peer refused and disconnected peer={lt_peer}"),
        WAIT,
    )?;
    let peers = status(&procs[0])?["peers"].clone();
    ensure!(
        !peers
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["state"] == lt_state.as_str())),
        "the compromised node is still a peer: {peers}"
    );
    // EL relayed the entries that were cut, and stays IE's peer.
    let el_state = net.nodes[2].state.as_str();
    ensure!(
        peers
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["state"] == el_state)),
        "an honest relay was cut off: {peers}"
    );
    Ok(())
}

#[test]
fn a_state_revokes_its_node_and_every_node_refuses_it_until_it_has_a_new_node_key() -> Result<()> {
    let net = Testnet::new(3)?;
    let mut ie = Proc::start(&net.nodes[0])?;
    let lt_info = &net.nodes[1];
    let mut lt = Proc::start(lt_info)?;
    let mut el = Proc::start(&net.nodes[2])?;
    let first = practice(&lt, "Before")?;
    ie.wait_entries(std::slice::from_ref(&first), WAIT)?;
    let peer = status(&lt)?["peer_id"]
        .as_str()
        .context("no peer id")?
        .to_owned();

    let revoked = spoc(Some(&lt.data_dir), &["--json", "key", "revoke-node", &peer])?
        .ok()?
        .json()?;
    ensure!(revoked["id"] == peer.as_str(), "{revoked}");
    for node in [&mut ie, &mut el] {
        node.wait_log(
            "its state revoked a peer's certificates; disconnecting",
            WAIT,
        )?;
        // The status forgets the peer once the disconnection is done.
        node.wait_log(&format!("peer refused and disconnected peer={peer}"), WAIT)?;
        let peers = status(node)?["peers"].clone();
        ensure!(
            !peers.to_string().contains(&peer),
            "the revoked node is still a peer: {peers}"
        );
    }

    // A new node key gets it in again: its state's national key still certifies it.
    lt.terminate()?;
    std::fs::remove_file(lt_info.data_dir.join("node.key"))?;
    lt = Proc::start(lt_info)?;
    let new_peer = status(&lt)?["peer_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(new_peer != peer);
    ie.wait_log(&format!("peer admitted peer={new_peer}"), WAIT)?;
    let after = practice(&lt, "After")?;
    ie.wait_entries(std::slice::from_ref(&after), WAIT)?;
    Ok(())
}
