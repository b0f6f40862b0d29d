//! The clients: one writer per node, writing contributions through the node's API all
//! through the run, and the ledger of what each write became.
//!
//! A write is *acknowledged* when the node answered 200 with the item's id and entry hash:
//! the node promises it is durably stored. A write the node refused (4xx) is known not to
//! be stored. A write whose answer never came (time-out, reset, node killed or stopped) has
//! an *unknown* outcome: it may or may not be stored, and the checker allows for it. A
//! write whose connection was refused never reached a node and is *undelivered*.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::{Value, json};

use super::helper::Helper;

/// How long a write may take before its outcome is counted as unknown.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A stop flag that sleepers wake up for.
#[derive(Debug, Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Paces the workload: returns after `d`, or as soon as the flag is set; returns
    /// whether it is set.
    pub fn pause(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        while !*stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *stopped
    }
}

/// What a write was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Report,
    Comment,
    Endorse,
}

/// An acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    pub node: usize,
    pub kind: Kind,
    /// The id the node answered: the obstacle for a report, the item key otherwise.
    pub id: String,
    pub entry: String,
    /// The report's title, unique in the run (empty for other kinds).
    pub title: String,
    /// The obstacle a comment or endorsement was on.
    pub obstacle: Option<String>,
}

/// A write whose answer never came.
#[derive(Debug, Clone)]
pub struct Unknown {
    pub node: usize,
    pub kind: Kind,
    pub title: String,
    pub obstacle: Option<String>,
}

/// Every write of the run and what became of it.
#[derive(Debug, Default)]
pub struct Ledger {
    pub acks: Vec<Ack>,
    pub unknown: Vec<Unknown>,
    pub undelivered: u64,
    pub refused: BTreeMap<String, u64>,
    /// Entries acknowledged but not yet seen on every node by a convergence check.
    pub unconfirmed: Vec<String>,
}

impl Ledger {
    pub fn attempted(&self) -> u64 {
        (self.acks.len() + self.unknown.len()) as u64
            + self.undelivered
            + self.refused.values().sum::<u64>()
    }
}

pub type Shared = Arc<Mutex<Ledger>>;

pub fn lock(ledger: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One client: writes to node `node` (state `state`) until stopped, every `pace` on
/// average, choosing what to write from its own seeded generator.
pub fn writer(
    node: usize,
    state: String,
    helper: &Helper,
    ledger: &Shared,
    stop: &Stop,
    seed: u64,
    pace: Duration,
) {
    let mut rng =
        ChaCha20Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ node as u64);
    let mut n = 0u64;
    let pace_ms = u64::try_from(pace.as_millis()).unwrap_or(1000).max(2);
    loop {
        let gap = Duration::from_millis(rng.random_range(pace_ms / 2..pace_ms * 3 / 2));
        if stop.pause(gap) {
            return;
        }
        n += 1;
        // A report most of the time; otherwise a comment or an endorsement on a recent
        // acknowledged obstacle (of any node), which ties entries of different authors.
        let target = {
            let l = lock(ledger);
            let reports: Vec<&Ack> = l
                .acks
                .iter()
                .rev()
                .filter(|a| a.kind == Kind::Report)
                .take(50)
                .collect();
            (!reports.is_empty()).then(|| reports[rng.random_range(0..reports.len())].id.clone())
        };
        let roll = rng.random_range(0..100u32);
        let (kind, body, title) = match (roll, target.clone()) {
            (0..20, Some(obstacle)) => (
                Kind::Comment,
                json!({"command": "obstacle_comment", "obstacle": obstacle,
                       "text": format!("Comment {n} by {state} in the chaos run")}),
                String::new(),
            ),
            (20..28, Some(obstacle)) => {
                let stance = ["support", "object", "abstain"][rng.random_range(0..3)];
                (
                    Kind::Endorse,
                    json!({"command": "obstacle_endorse", "obstacle": obstacle, "stance": stance}),
                    String::new(),
                )
            }
            _ => {
                let title = format!("Chaos {state} #{n}");
                (
                    Kind::Report,
                    json!({"command": "obstacle_report", "title": title,
                           "type": if n.is_multiple_of(2) { "legal" } else { "pragmatic" },
                           "description": format!("Written by the {state} client of the chaos run.")}),
                    title,
                )
            }
        };
        let obstacle = if kind == Kind::Report { None } else { target };
        let outcome = helper.post("/v1/commands", body, WRITE_TIMEOUT);
        let mut l = lock(ledger);
        match outcome {
            Ok(r) if r.status == 200 => {
                let field = |k: &str| r.body[k].as_str().unwrap_or_default().to_owned();
                let entry = field("entry");
                l.unconfirmed.push(entry.clone());
                l.acks.push(Ack {
                    node,
                    kind,
                    id: field("id"),
                    entry,
                    title,
                    obstacle,
                });
            }
            Ok(r) if (400..500).contains(&r.status) => {
                let why = r.body["error"].as_str().unwrap_or_default();
                *l.refused
                    .entry(format!("{} {}", r.status, short(why)))
                    .or_default() += 1;
            }
            Ok(_) => l.unknown.push(Unknown {
                node,
                kind,
                title,
                obstacle,
            }),
            Err(e) if format!("{e:#}").contains("Connection refused") => l.undelivered += 1,
            Err(_) => l.unknown.push(Unknown {
                node,
                kind,
                title,
                obstacle,
            }),
        }
    }
}

/// The reason of a refusal without the ids in it, so that refusals group.
fn short(why: &str) -> String {
    why.split_whitespace()
        .filter(|w| !w.contains('/'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The obstacle ids in the summaries of `/v1/docs?collection=obstacles`, with their titles.
pub fn obstacle_titles(list: &[Value]) -> BTreeMap<String, String> {
    list.iter()
        .filter_map(|o| {
            Some((
                o["id"].as_str()?.to_owned(),
                o["title"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}
