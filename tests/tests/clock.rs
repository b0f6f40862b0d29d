//! Honest time, with real `spoc-node` processes: a node whose clock is wrong says so, in
//! its status, its metrics and its log, and what it signs with that clock waits on the
//! other nodes until its time comes, so Presidency rights follow real time. Each node's
//! clock is moved with `SPOC_CLOCK_OFFSET_MS`.

use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use spoc_tests::{Proc, Testnet, spoc};

const WAIT: Duration = Duration::from_secs(60);
const HOUR_MS: i64 = 3_600_000;
/// The sync module's debug lines name each peer when its clock is first measured.
const SYNC_DEBUG: (&str, &str) = ("SPOC_LOG_LEVEL", "info,spoc_node::service::sync=debug");

fn offset(ms: i64) -> String {
    ms.to_string()
}

fn clock(status: &Value) -> (Option<i64>, bool) {
    (
        status["clock"]["offset_ms"].as_i64(),
        status["clock"]["skewed"].as_bool().unwrap_or(false),
    )
}

fn status(node: &Proc) -> Result<Value> {
    let (code, body) = node.get("/v1/status")?;
    ensure!(code == 200, "status answered {code}: {body}");
    Ok(body)
}

/// Waits until `node` has measured the clock of every peer in `peers`.
fn measured_all(node: &mut Proc, peers: &[&Proc]) -> Result<()> {
    let mut needles = Vec::new();
    for peer in peers {
        let id = status(peer)?["peer_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        needles.push(format!("first measure of a peer's clock peer={id}"));
    }
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    node.wait_logs(&needles, WAIT)
}

#[test]
fn a_node_whose_clock_is_an_hour_ahead_says_so_and_its_peers_do_not() -> Result<()> {
    let net = Testnet::new(3)?;
    let mut ie = Proc::start_with(net.node("IE")?, &[SYNC_DEBUG])?;
    let mut el = Proc::start_with(net.node("EL")?, &[SYNC_DEBUG])?;
    let hour = offset(HOUR_MS);
    let mut lt = Proc::start_with(
        net.node("LT")?,
        &[SYNC_DEBUG, ("SPOC_CLOCK_OFFSET_MS", hour.as_str())],
    )?;
    let needles = [
        "this node's clock is off its peers'",
        &format!(
            "first measure of a peer's clock peer={}",
            status(&ie)?["peer_id"].as_str().unwrap_or_default()
        ),
        &format!(
            "first measure of a peer's clock peer={}",
            status(&el)?["peer_id"].as_str().unwrap_or_default()
        ),
    ];
    lt.wait_logs(&needles, WAIT)?;
    measured_all(&mut ie, &[&lt, &el])?;
    measured_all(&mut el, &[&lt, &ie])?;

    let (ahead, skewed) = clock(&status(&lt)?);
    let ahead = ahead.unwrap_or_default();
    ensure!(skewed, "LT's status does not say its clock is off");
    ensure!(
        (HOUR_MS - 10_000..=HOUR_MS + 10_000).contains(&ahead),
        "LT's clock is {ahead} ms ahead, not an hour"
    );
    let (_, metrics) = lt.get_text("/metrics")?;
    ensure!(metrics.contains("spoc_clock_skewed 1\n"), "{metrics}");
    ensure!(metrics.contains("spoc_clock_offset_seconds 3"), "{metrics}");
    let text = spoc(Some(&lt.data_dir), &["status"])?.ok()?.stdout;
    ensure!(
        text.contains("clock          OFF: 3") && text.contains("ahead of its peers'"),
        "{text}"
    );

    // Of their two peers, one agrees with them: their clocks are not the ones to blame.
    for node in [&ie, &el] {
        let (offset, skewed) = clock(&status(node)?);
        ensure!(!skewed, "{} says its clock is off by {offset:?}", node.api);
        ensure!(offset.is_some_and(|o| o.abs() < 10_000), "{offset:?}");
        let (_, metrics) = node.get_text("/metrics")?;
        ensure!(metrics.contains("spoc_clock_skewed 0\n"), "{metrics}");
    }
    Ok(())
}

/// Milliseconds from now until a day into the next Presidency's term, whose state is the
/// second node of a testnet (the calendar's order from today).
fn into_next_term(net: &Testnet) -> Result<i64> {
    let text = std::fs::read_to_string(net.dir.path().join("net").join("charter.toml"))?;
    let charter = spoc_node::charter::Charter::parse(&text)?;
    let today = time::OffsetDateTime::now_utc();
    let next = &net.nodes[1].state;
    let term = charter
        .presidency
        .iter()
        .find(|t| &t.state == next && t.from > today.date())
        .ok_or_else(|| anyhow::anyhow!("no term of {next} ahead"))?;
    let from = term.from.midnight().assume_utc();
    Ok(i64::try_from((from - today).whole_milliseconds())? + 24 * HOUR_MS)
}

#[test]
fn an_escalation_dated_into_the_next_presidency_waits_on_every_other_node() -> Result<()> {
    // As an operator could: the next Presidency's node, its clock moved into its term,
    // escalates an obstacle, then comes back on the right time and connects.
    let net = Testnet::new(3)?;
    let (now, next, other) = (&net.nodes[0], &net.nodes[1], &net.nodes[2]);
    let mut presidency = Proc::start(now)?;
    let mut third = Proc::start(other)?;
    let mut early = Proc::start(next)?;
    let reported = third.write(&json!({
        "command": "obstacle_report", "title": "Slow replies", "type": "legal",
        "description": "Replies take months.",
    }))?;
    let obstacle = reported["id"].as_str().unwrap_or_default().to_owned();
    let reported = reported["entry"].as_str().unwrap_or_default().to_owned();
    early.wait_entries(std::slice::from_ref(&reported), WAIT)?;
    presidency.wait_entries(std::slice::from_ref(&reported), WAIT)?;
    early.terminate()?;

    // The other nodes may receive the escalation from the moved node itself, or only
    // later from the same node back on real time: their logs are read from here on.
    presidency.skip_log();
    third.skip_log();

    let ahead = offset(into_next_term(&net)?);
    let mut moved = Proc::start_with(next, &[("SPOC_CLOCK_OFFSET_MS", ahead.as_str())])?;
    let escalated = moved.write(&json!({
        "command": "obstacle_status", "obstacle": obstacle, "status": "escalated",
    }))?;
    let escalated = escalated["entry"].as_str().unwrap_or_default().to_owned();
    let (_, doc) = moved.get(&format!("/v1/doc?id={obstacle}"))?;
    ensure!(doc["status"] == "escalated", "{doc}");
    moved.terminate()?;

    let back = Proc::start(next)?;
    // The other nodes receive the escalation and hold it back: not applied, not relayed.
    for node in [&mut presidency, &mut third] {
        node.wait_log(
            "entries dated ahead of this node's clock wait for their time",
            WAIT,
        )?;
    }
    let s = status(&presidency)?;
    ensure!(s["waiting_for_time"] == 1, "{s}");
    for node in [&presidency, &third] {
        let (_, doc) = node.get(&format!("/v1/doc?id={obstacle}"))?;
        ensure!(doc["status"] == "reported", "{doc}");
        let (_, present) = node.get(&format!("/v1/wait?entries={escalated}&timeout_ms=100"))?;
        ensure!(present["present"] == false, "{present}");
    }
    // The Presidency of today escalates, and that is what every node applies.
    let today = presidency.write(&json!({
        "command": "obstacle_status", "obstacle": obstacle, "status": "escalated",
    }))?;
    let today = today["entry"].as_str().unwrap_or_default().to_owned();
    for node in [&third, &back] {
        node.wait_entries(std::slice::from_ref(&today), WAIT)?;
        let (_, doc) = node.get(&format!("/v1/doc?id={obstacle}"))?;
        ensure!(doc["status"] == "escalated", "{doc}");
    }
    Ok(())
}
