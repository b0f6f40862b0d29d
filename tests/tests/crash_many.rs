//! Crash consistency under many crashes: 500 `kill -9`s of one real `spoc-node` while
//! writes are in flight. Three in four land at a seeded random moment; the fourth at a
//! failpoint of the store's commit (`SPOC_FAILPOINT`): with the transaction written but not
//! committed, or committed but not yet acknowledged, where the node holds until the test,
//! seeing its log line, kills it. After every restart the store opens,
//! every contribution the node acknowledged is there, and nothing is there that no client
//! wrote; the node's full verification passes along the way and at the end.
//!
//! It took 157 s in a debug build (dependencies optimised) on two cores shared with other
//! builds, most of it in the 501 node starts, each of which reloads and re-verifies the
//! store; the later restarts are slower, as the store grows to about 700 entries.
//!
//! A write counts as acknowledged only when its answer (id and entry hash) reached the
//! client before the kill. A write cut by the kill has an unknown outcome: it may have been
//! committed (and then it must be whole) or not; both are counted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use spoc_tests::{Proc, Testnet};

/// How many times the node is killed.
const KILLS: usize = 500;
/// One kill in this many is at a failpoint of the store's commit instead of a random moment.
const FAILPOINT_EVERY: usize = 4;
/// How often (in kills) the node re-checks its whole store with `/v1/verify`.
const VERIFY_EVERY: usize = 50;

fn report(title: &str) -> Value {
    json!({
        "command": "obstacle_report",
        "title": title,
        "type": "pragmatic",
        "description": "Written while the node may be killed at any moment.",
    })
}

/// Sends one write on its own connection; returns the answer if it came.
fn post(api: &str, token: &str, body: &Value) -> Option<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut r = agent
        .post(&format!("http://{api}/v1/commands"))
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(body)
        .ok()?;
    r.body_mut().read_json().ok()
}

/// The obstacles the node holds: id to title.
fn obstacles(node: &Proc) -> Result<BTreeMap<String, String>> {
    Ok(node
        .list("obstacles")?
        .iter()
        .filter_map(|o| {
            Some((
                o["id"].as_str()?.to_owned(),
                o["title"].as_str()?.to_owned(),
            ))
        })
        .collect())
}

/// What every write became.
#[derive(Debug, Default)]
struct Ledger {
    /// Acknowledged: id to title.
    acked: BTreeMap<String, String>,
    /// Titles of writes cut by a kill (no answer).
    unknown: BTreeSet<String>,
    /// In-flight writes whose answer came before the kill.
    in_flight_acked: usize,
}

impl Ledger {
    /// Checks what a restarted node holds against what was written.
    fn check(&self, present: &BTreeMap<String, String>, kills: usize) -> Result<()> {
        for (id, title) in &self.acked {
            match present.get(id) {
                Some(t) if t == title => {}
                Some(t) => bail!("after {kills} kills, {id} is titled {t:?}, not {title:?}"),
                None => bail!("after {kills} kills, acknowledged {id} ({title}) is lost"),
            }
        }
        for (id, title) in present {
            if !self.acked.contains_key(id) && !self.unknown.contains(title) {
                bail!("after {kills} kills, {id} ({title}) was never written");
            }
        }
        Ok(())
    }
}

#[allow(clippy::print_stderr)]
#[test]
fn five_hundred_kills_during_writes_lose_no_acknowledged_contribution() -> Result<()> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0xc0a5_5e5d);
    let net = Testnet::new(2)?;
    let lt = net.node("LT")?;
    let began = Instant::now();
    let mut ledger = Ledger::default();
    let mut written = 0usize;
    let mut restart = Duration::ZERO;
    let mut write_time = Duration::ZERO;
    let mut timed_writes = 0u32;
    // The longest pause between sending the in-flight writes and the kill: about the
    // time a write takes, so that kills land before, during and after the commit.
    let mut window_us = 20_000u64;
    let mut held = [0usize; 2];
    // After a failpoint kill: that round's in-flight titles and how many of them must be
    // present, since each write is one commit and the failpoint names the commit.
    let mut expected: Option<(Vec<String>, usize)> = None;
    for kills in 0..=KILLS {
        // The writes of this round: some acknowledged before anything happens (few: every
        // entry makes each later restart slower, as the node re-verifies its whole store),
        // then one or two in flight at the kill.
        let before = rng.random_range(0..2);
        let in_flight = rng.random_range(1..=2);
        // Every fourth kill lands at a failpoint of the store's commit, on one of the
        // in-flight writes: the node holds there, says so, and is killed on that event.
        let failpoint = (kills % FAILPOINT_EVERY == FAILPOINT_EVERY - 1).then(|| {
            let step = rng.random_range(0..2);
            held[step] += 1;
            let k = rng.random_range(1..=in_flight);
            // Held before its commit, the kth in-flight write is lost and the ones before it
            // are kept; held after it, the kth is kept too.
            let kept = if step == 0 { k - 1 } else { k };
            (
                format!("{}:{}", ["before-commit", "after-commit"][step], before + k),
                kept,
            )
        });
        let t = Instant::now();
        let mut node = match &failpoint {
            Some((f, _)) => Proc::start_with(lt, &[("SPOC_FAILPOINT", f.as_str())])?,
            None => Proc::start(lt)?,
        };
        restart += t.elapsed();
        let present = obstacles(&node)?;
        ledger.check(&present, kills)?;
        if let Some((titles, kept)) = expected.take() {
            let found = present.values().filter(|t| titles.contains(t)).count();
            ensure!(
                found == kept,
                "after kill {kills} at a failpoint, {found} of {titles:?} are present, not {kept}"
            );
        }
        if kills.is_multiple_of(VERIFY_EVERY) || kills == KILLS {
            let (_, v) = node.post("/v1/verify", &json!({}))?;
            ensure!(v["ok"] == true, "after {kills} kills, verify: {v}");
            eprintln!(
                "crash_many: {kills} kills, {} acknowledged, {} cut by a kill, verify ok, {:?}",
                ledger.acked.len(),
                ledger.unknown.len(),
                began.elapsed()
            );
        }
        if kills == KILLS {
            break;
        }

        for _ in 0..before {
            let title = format!("Write {written}");
            written += 1;
            let t = Instant::now();
            let ack = node.write(&report(&title))?;
            write_time += t.elapsed();
            timed_writes += 1;
            let id = ack["id"].as_str().unwrap_or_default().to_owned();
            ledger.acked.insert(id, title);
        }
        if timed_writes > 0 {
            let mean = write_time.as_micros() as u64 / u64::from(timed_writes);
            window_us = (mean * 3 / 2).max(1_000);
        }

        // One or two writes in flight, and the kill at a random moment among them.
        let token = std::fs::read_to_string(lt.data_dir.join("api.token"))?
            .trim()
            .to_owned();
        let mut flights = Vec::new();
        for _ in 0..in_flight {
            let title = format!("Write {written}");
            written += 1;
            let (api, token) = (node.api.clone(), token.clone());
            flights.push((
                title.clone(),
                std::thread::spawn(move || post(&api, &token, &report(&title))),
            ));
        }
        match &failpoint {
            Some((f, kept)) => {
                node.wait_log("failpoint reached", Duration::from_secs(30))
                    .map_err(|e| e.context(format!("failpoint {f}")))?;
                let titles = flights.iter().map(|(t, _)| t.clone()).collect();
                expected = Some((titles, *kept));
            }
            // The chaos schedule: a seeded moment, not a wait for an event.
            None => std::thread::sleep(Duration::from_micros(rng.random_range(0..window_us))),
        }
        node.kill9()?;
        for (title, flight) in flights {
            match flight.join() {
                Ok(Some(ack)) if ack["id"].is_string() => {
                    let id = ack["id"].as_str().unwrap_or_default().to_owned();
                    ledger.acked.insert(id, title);
                    ledger.in_flight_acked += 1;
                }
                _ => {
                    ledger.unknown.insert(title);
                }
            }
        }
    }
    let node = Proc::start(lt)?;
    let present = obstacles(&node)?;
    ledger.check(&present, KILLS)?;
    let landed = present
        .values()
        .filter(|t| ledger.unknown.contains(*t))
        .count();
    eprintln!(
        "crash_many: {KILLS} kill -9s ({} held before and {} after a commit at failpoints), {written} writes, {} acknowledged ({} of them in flight at the kill), \
         {} cut by the kill ({landed} of which were committed anyway), 0 lost, 0 unexpected; \
         {} entries at the end; mean restart {:?}; {:?} in all",
        held[0],
        held[1],
        ledger.acked.len(),
        ledger.in_flight_acked,
        ledger.unknown.len(),
        present.len(),
        restart / (KILLS as u32 + 1),
        began.elapsed()
    );
    Ok(())
}
