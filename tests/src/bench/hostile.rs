//! Scenario 7: an honest node under a sustained hostile flood.
//!
//! A three-state testnet (`spoc_tests::hostile::Net`): nodes A and B run, and the third
//! state is compromised: its national key certifies as many hostile peer ids as it likes.
//! The flood (`Net::flood`) sends fresh certified peers at A two at a time, each either
//! firing 200 concurrent sync requests or answering A's pull with invalid entries, the
//! next one as soon as A has cut the last off, beside a dial flood of raw TCP connections
//! that send garbage where a Noise handshake should be.
//!
//! Measured on A, in one run: the API latency of a write (POST /v1/commands, signed and
//! durable) and of GET /v1/status, p50 and p99, first without the flood (the baseline),
//! then under it; A's peak RSS before and under the flood; the time from each flooder's
//! first hostile act until A disconnected it; and the invalid entries A accepted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::{Value, json};
use spoc_tests::hostile::{FLOODER_ADMISSION, FloodReport, Net};

use super::procs::{self, Api};
use super::report::{Outcome, Row};
use super::stats::{human_ms, latency_json, percentile_ms, round3};

pub const TITLE: &str = "7. hostile: an honest node's API under a sustained flood";

/// The target: API p99 under the flood within twice its p99 without.
const TARGET: f64 = 2.0;

/// API samples of each kind, at least, in each phase.
const MIN_SAMPLES: usize = 200;

/// Latency samples of one phase.
#[derive(Debug, Default)]
struct Phase {
    write: Vec<Duration>,
    status: Vec<Duration>,
}

/// Runs the scenario; `quick` keeps each phase short.
pub fn run(quick: bool) -> Result<Outcome> {
    let phase_length = if quick {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(45)
    };
    let net = Net::start()?;
    let pid = net.a.pid().ok_or_else(|| anyhow!("no pid"))?;
    let api = Api::of(&net.a)?;
    let before = api.status()?;
    // Warm-up, outside the samples.
    let mut n = 0usize;
    for _ in 0..5 {
        write(&api, &mut n)?;
    }
    let (rss_start, writes_start) = (procs::vm_kib(pid, "VmRSS")?, n);
    let quiet = sample(&api, &mut n, phase_length)?;
    let hwm_quiet = procs::vm_kib(pid, "VmHWM")?;
    let (rss_quiet, writes_quiet) = (procs::vm_kib(pid, "VmRSS")?, n);

    let mut flood = net.flood(2)?;
    // The flood is under way: flooders of both kinds came and went, and more raw
    // connections were opened than A lets wait in their handshake.
    let slots = u64::from(spoc_node::network::MAX_PENDING_INCOMING);
    flood.wait_for(&net.rt, Duration::from_secs(60), |p| {
        p.invalid_answers >= 1 && p.requests >= 1 && p.dials >= 2 * slots
    })?;
    let flooded = sample(&api, &mut n, phase_length)?;
    let hwm_flood = procs::vm_kib(pid, "VmHWM")?;
    let rss_flood = procs::vm_kib(pid, "VmRSS")?;
    let report = flood.stop(&net.rt)?;

    let after = api.status()?;
    let entries = |s: &Value| s["entries"].as_u64().unwrap_or(0);
    // Every entry A gained is one of its own writes: anything more was accepted from
    // the flood.
    let gained = entries(&after).saturating_sub(entries(&before));
    let invalid_accepted = gained.saturating_sub(n as u64);
    let rejected = |s: &Value| {
        s["rejected"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>())
    };
    let rejected = rejected(&after) - rejected(&before);
    ensure!(
        after["pending"] == 0,
        "A holds entries it cannot accept: {after}"
    );
    Ok(outcome(
        &quiet,
        &flooded,
        &report,
        Memory {
            hwm_quiet,
            hwm_flood,
            rss_flood,
            quiet_growth: growth_per_1k(rss_start, rss_quiet, writes_quiet - writes_start),
            flood_growth: growth_per_1k(rss_quiet, rss_flood, n - writes_quiet),
        },
        invalid_accepted,
        rejected,
        phase_length,
    ))
}

/// One write of a new obstacle report; counts it in `n`.
fn write(api: &Api, n: &mut usize) -> Result<Duration> {
    let t = Instant::now();
    api.write(&json!({
        "command": "obstacle_report",
        "title": format!("Measured under load {n}"),
        "type": "pragmatic",
        "description": "Requests wait in several queues.",
    }))
    .with_context(|| format!("write {n}"))?;
    *n += 1;
    Ok(t.elapsed())
}

/// Writes and status reads, alternately, for `length` and at least `MIN_SAMPLES` each.
fn sample(api: &Api, n: &mut usize, length: Duration) -> Result<Phase> {
    let mut phase = Phase::default();
    let start = Instant::now();
    while start.elapsed() < length || phase.write.len() < MIN_SAMPLES {
        phase.write.push(write(api, n)?);
        let t = Instant::now();
        api.status()?;
        phase.status.push(t.elapsed());
    }
    Ok(phase)
}

/// RSS growth in KiB per thousand writes, between two readings.
fn growth_per_1k(from_kib: u64, to_kib: u64, writes: usize) -> f64 {
    (to_kib as f64 - from_kib as f64) * 1_000.0 / writes.max(1) as f64
}

/// The node's memory, from `/proc/PID/status`, in KiB.
#[derive(Debug)]
struct Memory {
    hwm_quiet: u64,
    hwm_flood: u64,
    rss_flood: u64,
    /// RSS growth per thousand writes without the flood, and under it: the writes hold
    /// entries in memory, so the flood's own cost is the difference.
    quiet_growth: f64,
    flood_growth: f64,
}

fn outcome(
    quiet: &Phase,
    flooded: &Phase,
    report: &FloodReport,
    memory: Memory,
    invalid_accepted: u64,
    rejected: u64,
    phase_length: Duration,
) -> Outcome {
    let mut o = Outcome::new("hostile", TITLE);
    let mut rows = Vec::new();
    for (name, q, f) in [
        ("write", &quiet.write, &flooded.write),
        ("status", &quiet.status, &flooded.status),
    ] {
        let (q99, f99) = (percentile_ms(q, 99.0), percentile_ms(f, 99.0));
        rows.push(Row::ratio(
            "flood",
            format!("{name} p99"),
            human_ms(f99),
            human_ms(q99),
            f99 / q99,
            Some(TARGET),
        ));
        let (q50, f50) = (percentile_ms(q, 50.0), percentile_ms(f, 50.0));
        rows.push(Row::ratio(
            "flood",
            format!("{name} p50"),
            human_ms(f50),
            human_ms(q50),
            f50 / q50,
            None,
        ));
    }
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    rows.push(Row::ratio(
        "flood",
        "peak RSS",
        mib(memory.hwm_flood),
        mib(memory.hwm_quiet),
        memory.hwm_flood as f64 / memory.hwm_quiet as f64,
        None,
    ));
    let per_1k = |kib: f64| format!("{:.1} MiB / 1k writes", kib / 1024.0);
    // A ratio only between two real growths; otherwise the two figures side by side.
    if memory.quiet_growth > 0.0 && memory.flood_growth >= 0.0 {
        rows.push(Row::ratio(
            "flood",
            "RSS growth",
            per_1k(memory.flood_growth),
            per_1k(memory.quiet_growth),
            memory.flood_growth / memory.quiet_growth,
            None,
        ));
    } else {
        rows.push(Row::context(
            "flood",
            "RSS growth",
            per_1k(memory.flood_growth),
            per_1k(memory.quiet_growth),
        ));
    }
    let cut = &report.cut_off;
    rows.push(Row::context(
        "flood",
        "time to cut off a flooder",
        format!(
            "p50 {} / max {}",
            human_ms(percentile_ms(cut, 50.0)),
            human_ms(percentile_ms(cut, 100.0))
        ),
        format!("{} flooders", report.flooders),
    ));
    rows.push(Row {
        case: "flood".into(),
        measure: "invalid entries accepted".into(),
        spoc: invalid_accepted.to_string(),
        baseline: format!("{} sent", report.invalid_sent),
        ratio: None,
        target: "0".into(),
        met: Some(invalid_accepted == 0),
    });
    o.rows = rows;
    o.notes.push(format!(
        "each phase {:.0} s and at least {MIN_SAMPLES} samples of each call, one after the other over a kept-alive connection; baseline = the same calls on the same node just before the flood",
        phase_length.as_secs_f64()
    ));
    o.notes.push(format!(
        "the flood: {} certified flooders two at a time ({} with {} invalid entries in their answers, the others {} sync requests in all, {} answered before the cut-off; {} more never got in within {} s, A's {} slots for incoming handshakes being held by the dial flood); {} raw TCP connections to A's network port, {} closed by A while the flood lasted",
        report.flooders,
        report.invalid_answers,
        report.invalid_sent,
        report.requests,
        report.answered,
        report.starved,
        FLOODER_ADMISSION.as_secs(),
        spoc_node::network::MAX_PENDING_INCOMING,
        report.dials,
        report.dials_closed
    ));
    o.notes.push(format!(
        "A's RSS under the flood {}; peak {} (before the flood {}); the writes of both phases stay in memory (every entry is held), so the RSS growth per thousand writes, without the flood and under it, shows what the flood itself costs; A refused {rejected} invalid entries",
        mib(memory.rss_flood),
        mib(memory.hwm_flood),
        mib(memory.hwm_quiet)
    ));
    o.json = json!({
        "write_quiet": latency_json(&quiet.write),
        "write_flood": latency_json(&flooded.write),
        "status_quiet": latency_json(&quiet.status),
        "status_flood": latency_json(&flooded.status),
        "write_p99_ratio": round3(percentile_ms(&flooded.write, 99.0) / percentile_ms(&quiet.write, 99.0)),
        "status_p99_ratio": round3(percentile_ms(&flooded.status, 99.0) / percentile_ms(&quiet.status, 99.0)),
        "peak_rss_quiet_kib": memory.hwm_quiet,
        "peak_rss_flood_kib": memory.hwm_flood,
        "rss_flood_kib": memory.rss_flood,
        "rss_growth_quiet_kib_per_1k_writes": round3(memory.quiet_growth),
        "rss_growth_flood_kib_per_1k_writes": round3(memory.flood_growth),
        "flooders": report.flooders,
        "cut_off_p50_ms": round3(percentile_ms(cut, 50.0)),
        "cut_off_max_ms": round3(percentile_ms(cut, 100.0)),
        "requests": report.requests,
        "answered": report.answered,
        "invalid_sent": report.invalid_sent,
        "invalid_rejected": rejected,
        "invalid_accepted": invalid_accepted,
        "starved": report.starved,
        "dials": report.dials,
        "dials_closed": report.dials_closed,
    });
    if invalid_accepted > 0 {
        o.failed = true;
        o.notes.push(format!(
            "FAILED: A accepted {invalid_accepted} flooded entries"
        ));
    }
    o
}
