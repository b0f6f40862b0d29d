//! Addresses out of the consensus, with real `spoc-node` processes: a state publishes where
//! its node listens with `spoc address set`, the node moves to that port, and a peer that
//! starts afterwards dials it there. The charter is never touched.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use spoc_tests::{Proc, Testnet, spoc};

const WAIT: Duration = Duration::from_secs(60);
/// The network module's debug lines say when a dialled address is first reached.
const NETWORK_DEBUG: (&str, &str) = ("SPOC_LOG_LEVEL", "info,spoc_node::network=debug");

#[test]
fn a_node_that_moves_to_a_new_port_is_dialled_there_with_no_charter_change() -> Result<()> {
    let net = Testnet::new(3)?;
    let (first, second, moving) = (&net.nodes[0], &net.nodes[1], &net.nodes[2]);
    let mut a = Proc::start(first)?;
    let b = Proc::start(second)?;
    let mut c = Proc::start(moving)?;
    let charter = |node: &Proc| -> Result<String> {
        let (_, status) = node.get("/v1/status")?;
        Ok(status["charter_hash"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    };
    let hash = charter(&a)?;

    let port = spoc_node::testnet::free_port()?;
    let moved = format!("/ip4/127.0.0.1/tcp/{port}");
    let published = spoc(Some(&c.data_dir), &["--json", "address", "set", &moved])?.ok()?;
    let published = published.json()?;
    let entry = published["entry"].as_str().unwrap_or_default().to_owned();
    ensure!(
        published["id"] == format!("addresses/{}", moving.state),
        "{published}"
    );
    a.wait_entries(std::slice::from_ref(&entry), WAIT)?;
    b.wait_entries(std::slice::from_ref(&entry), WAIT)?;
    a.wait_log("the addresses to dial changed", WAIT)?;
    let shown = spoc(
        Some(&a.data_dir),
        &["--json", "address", "show", &moving.state],
    )?
    .ok()?;
    ensure!(
        shown.json()?["addresses"] == moved.as_str(),
        "{}",
        shown.stdout
    );

    // The node moves while the first one is down, so the first one finds it only at the
    // address it published.
    a.terminate()?;
    c.terminate()?;
    let settings = moving.data_dir.join("node.toml");
    let text = std::fs::read_to_string(&settings)?;
    let listen = text
        .lines()
        .find(|l| l.starts_with("listen = "))
        .context("no listen line in node.toml")?;
    std::fs::write(
        &settings,
        text.replace(listen, &format!("listen = [{moved:?}]")),
    )?;
    c = Proc::start(moving)?;
    a = Proc::start_with(first, &[NETWORK_DEBUG])?;
    a.wait_log(&format!("dialled address reached address={moved}"), WAIT)?;

    // Everything flows as before, and every node keeps the charter it had.
    let write = c.write(&serde_json::json!({
        "command": "practice_share", "title": "One mailbox",
        "problem": "Requests get lost", "practice": "A single mailbox per SPOC",
    }))?;
    let entry = write["entry"].as_str().unwrap_or_default().to_owned();
    a.wait_entries(std::slice::from_ref(&entry), WAIT)?;
    b.wait_entries(std::slice::from_ref(&entry), WAIT)?;
    for node in [&a, &b, &c] {
        ensure!(charter(node)? == hash, "a charter changed");
    }
    Ok(())
}
