//! Durability: every contribution that the node acknowledged survives `kill -9`, the store
//! always opens, and a tampered store is found before it is used, with a clear message.

use std::collections::BTreeSet;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use serde_json::json;
use spoc_tests::{Proc, Testnet, spoc, stops_at_first_read};

fn report(i: usize) -> serde_json::Value {
    json!({
        "command": "obstacle_report",
        "title": format!("Obstacle {i}"),
        "type": if i.is_multiple_of(2) { "legal" } else { "pragmatic" },
        "description": format!("Description of obstacle {i}, long enough to be a real text."),
    })
}

/// The ids of the obstacles a node holds.
fn obstacle_ids(node: &Proc) -> Result<BTreeSet<String>> {
    Ok(node
        .list("obstacles")?
        .iter()
        .filter_map(|o| o["id"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn acknowledged_contributions_survive_kill_9() -> Result<()> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0x5eed);
    let net = Testnet::new(2)?;
    let lt = net.node("LT")?;
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut written = 0usize;
    let mut kills = 0usize;
    while acknowledged.len() < 100 {
        let mut node = Proc::start(lt)?;
        // Everything acknowledged before is still there after each restart.
        let present = obstacle_ids(&node)?;
        let lost: Vec<_> = acknowledged.difference(&present).collect();
        assert!(lost.is_empty(), "lost after {kills} kills: {lost:?}");

        for _ in 0..rng.random_range(1..8) {
            let (status, ack) = node.post("/v1/commands", &report(written))?;
            written += 1;
            assert_eq!(status, 200, "{ack}");
            acknowledged.insert(ack["id"].as_str().unwrap_or_default().to_owned());
        }
        // Kill with a write in flight: its outcome is unknown to the client, so it is not
        // counted as acknowledged unless the answer arrived.
        let api = node.api.clone();
        let token = std::fs::read_to_string(lt.data_dir.join("api.token"))?;
        let body = report(written);
        written += 1;
        let in_flight = std::thread::spawn(move || -> Option<String> {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(std::time::Duration::from_secs(30)))
                .build()
                .into();
            let mut r = agent
                .post(&format!("http://{api}/v1/commands"))
                .header("Authorization", &format!("Bearer {}", token.trim()))
                .send_json(&body)
                .ok()?;
            let v: serde_json::Value = r.body_mut().read_json().ok()?;
            v["id"].as_str().map(str::to_owned)
        });
        if rng.random_bool(0.5) {
            // Sometimes let the in-flight write land first.
            if let Ok(Some(id)) = in_flight.join() {
                acknowledged.insert(id);
            }
            node.kill9()?;
        } else {
            node.kill9()?;
            if let Ok(Some(id)) = in_flight.join() {
                acknowledged.insert(id);
            }
        }
        kills += 1;
    }
    let node = Proc::start(lt)?;
    let present = obstacle_ids(&node)?;
    assert!(
        acknowledged.is_subset(&present),
        "lost acknowledged contributions"
    );
    let (_, verify) = node.post("/v1/verify", &json!({}))?;
    assert_eq!(verify["ok"], true, "{verify}");
    eprintln!(
        "crash run: {} acknowledged, {} present, {written} attempted, {kills} kills, 0 lost",
        acknowledged.len(),
        present.len()
    );
    Ok(())
}

#[test]
fn a_flipped_byte_in_the_store_is_detected() -> Result<()> {
    let net = Testnet::new(2)?;
    let lt = net.node("LT")?;
    let dir = lt.data_dir.as_path();
    let mut node = Proc::start(lt)?;
    let mut hashes = Vec::new();
    for i in 0..5 {
        let (status, ack) = node.post("/v1/commands", &report(i))?;
        assert_eq!(status, 200);
        hashes.push(ack["entry"].as_str().unwrap_or_default().to_owned());
    }
    let log = spoc(Some(dir), &["log", "--json"])?.ok()?.json()?;
    assert_eq!(log.as_array().map(Vec::len), Some(5));
    node.terminate()?;

    // Flip one byte inside the third entry's title, in every copy the store file holds.
    let path = dir.join("store.redb");
    let mut bytes = std::fs::read(&path)?;
    let needle = b"Obstacle 2";
    let mut flipped = 0;
    for at in 0..bytes.len().saturating_sub(needle.len()) {
        if &bytes[at..at + needle.len()] == needle {
            bytes[at + 1] ^= 0x20;
            flipped += 1;
        }
    }
    assert!(flipped > 0, "entry bytes not found in the store");
    std::fs::write(&path, &bytes)?;

    // A start reads only the tips; the first read of the entry finds it and stops.
    let line = stops_at_first_read(lt)?;
    assert!(line.contains("store is corrupt"), "{line}");
    Ok(())
}
