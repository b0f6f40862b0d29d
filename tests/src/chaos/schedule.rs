//! The fault schedule: an endless, seeded sequence of rounds, each one fault held for a
//! while and then healed. The same seed gives the same sequence; how many rounds fit in a
//! run depends on its duration and on how fast the nodes converge after each heal.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

/// One fault.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// The nodes split in two groups that cannot reach each other.
    Halves { a: Vec<usize>, b: Vec<usize> },
    /// One node cut off from all others.
    Isolate { node: usize },
    /// Each node reaches only its two neighbours on a ring, in a seeded order.
    Ring { order: Vec<usize> },
    /// Random packet loss on every node's link.
    Loss { probability: f64 },
    /// `kill -9` of some nodes at seeded moments in the round; restarted at the heal.
    Kill { nodes: Vec<usize>, at_ms: Vec<u64> },
    /// `kill -9` and immediate restart of one node, again and again through the round.
    CrashLoop { node: usize, at_ms: Vec<u64> },
    /// SIGSTOP of some nodes for the round; SIGCONT at the heal.
    Stop { nodes: Vec<usize> },
    /// One node cut off, taking writes only it holds, then `kill -9` while still cut off;
    /// restarted at the heal, it must still have them and pass them on.
    IsolateAndKill { node: usize, at_ms: u64 },
}

/// One round: a fault, optionally with packet loss on top, held for `hold`.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub index: usize,
    pub fault: Fault,
    /// Extra loss on every link during the round (0 for none).
    pub loss: f64,
    #[serde(rename = "hold_ms", serialize_with = "millis")]
    pub hold: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Round {
    /// Which nodes each node cannot reach during the round.
    pub fn blocked(&self, n: usize) -> Vec<Vec<usize>> {
        let mut blocked = vec![Vec::new(); n];
        match &self.fault {
            Fault::Halves { a, b } => {
                for &i in a {
                    blocked[i] = b.clone();
                }
                for &i in b {
                    blocked[i] = a.clone();
                }
            }
            Fault::Isolate { node } | Fault::IsolateAndKill { node, .. } => {
                for (i, list) in blocked.iter_mut().enumerate() {
                    if i == *node {
                        *list = (0..n).filter(|&j| j != *node).collect();
                    } else {
                        *list = vec![*node];
                    }
                }
            }
            Fault::Ring { order } => {
                for (k, &i) in order.iter().enumerate() {
                    let prev = order[(k + n - 1) % n];
                    let next = order[(k + 1) % n];
                    blocked[i] = (0..n)
                        .filter(|&j| j != i && j != prev && j != next)
                        .collect();
                }
            }
            Fault::Loss { .. }
            | Fault::Kill { .. }
            | Fault::CrashLoop { .. }
            | Fault::Stop { .. } => {}
        }
        blocked
    }

    /// The loss on each node's link during the round.
    pub fn loss(&self, n: usize) -> Vec<f64> {
        let base = match self.fault {
            Fault::Loss { probability } => probability,
            _ => 0.0,
        };
        vec![base.max(self.loss); n]
    }

    /// A short label for reports.
    pub fn label(&self) -> String {
        let fault = match &self.fault {
            Fault::Halves { a, b } => format!("halves {a:?}|{b:?}"),
            Fault::Isolate { node } => format!("isolate {node}"),
            Fault::Ring { order } => format!("ring {order:?}"),
            Fault::Loss { probability } => format!("loss {:.0}%", probability * 100.0),
            Fault::Kill { nodes, .. } => format!("kill -9 {nodes:?}"),
            Fault::CrashLoop { node, at_ms } => format!("crash loop {node} x{}", at_ms.len()),
            Fault::Stop { nodes } => format!("SIGSTOP {nodes:?}"),
            Fault::IsolateAndKill { node, .. } => format!("isolate {node} then kill -9 it"),
        };
        if self.loss > 0.0 {
            format!("{fault} + loss {:.0}%", self.loss * 100.0)
        } else {
            fault
        }
    }
}

/// The seeded sequence of rounds.
#[derive(Debug)]
pub struct Schedule {
    rng: ChaCha20Rng,
    n: usize,
    next: usize,
    /// The longest a fault is held; shorter runs hold faults for less.
    max_hold: Duration,
}

impl Schedule {
    pub fn new(seed: u64, n: usize, max_hold: Duration) -> Schedule {
        Schedule {
            rng: ChaCha20Rng::seed_from_u64(seed ^ 0x5c4e_d01e),
            n,
            next: 0,
            max_hold,
        }
    }

    fn some_nodes(&mut self, max: usize) -> Vec<usize> {
        let count = self.rng.random_range(1..=max.max(1));
        let mut all: Vec<usize> = (0..self.n).collect();
        all.shuffle(&mut self.rng);
        all.truncate(count);
        all.sort_unstable();
        all
    }

    fn moments(&mut self, count: usize, hold: Duration) -> Vec<u64> {
        let span = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(2);
        let mut at: Vec<u64> = (0..count)
            .map(|_| self.rng.random_range(0..span * 3 / 4))
            .collect();
        at.sort_unstable();
        at
    }

    /// The next round.
    pub fn next_round(&mut self) -> Round {
        let n = self.n;
        let min_ms = 3_000u64.min(u64::try_from(self.max_hold.as_millis()).unwrap_or(3_000));
        let max_ms = u64::try_from(self.max_hold.as_millis())
            .unwrap_or(u64::MAX)
            .max(min_ms + 1);
        let hold = Duration::from_millis(self.rng.random_range(min_ms..max_ms));
        let minority = (n - 1) / 2;
        let fault = match self.rng.random_range(0..8u32) {
            0 => {
                let mut all: Vec<usize> = (0..n).collect();
                all.shuffle(&mut self.rng);
                let cut = self.rng.random_range(1..n);
                let (a, b) = all.split_at(cut);
                let (mut a, mut b) = (a.to_vec(), b.to_vec());
                a.sort_unstable();
                b.sort_unstable();
                Fault::Halves { a, b }
            }
            1 => Fault::Isolate {
                node: self.rng.random_range(0..n),
            },
            2 if n >= 4 => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut self.rng);
                Fault::Ring { order }
            }
            2 | 3 => Fault::Loss {
                probability: [0.05, 0.1, 0.2, 0.3, 0.5][self.rng.random_range(0..5)],
            },
            4 => {
                let nodes = self.some_nodes(minority);
                let at_ms = self.moments(nodes.len(), hold);
                Fault::Kill { nodes, at_ms }
            }
            5 => {
                let node = self.rng.random_range(0..n);
                let count = self.rng.random_range(2..=5);
                let at_ms = self.moments(count, hold);
                Fault::CrashLoop { node, at_ms }
            }
            6 => Fault::Stop {
                nodes: self.some_nodes(minority),
            },
            _ => {
                let node = self.rng.random_range(0..n);
                let span = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(4);
                let at_ms = self.rng.random_range(span / 2..span);
                Fault::IsolateAndKill { node, at_ms }
            }
        };
        // A third of the rounds add some loss on top of their fault.
        let loss = if self.rng.random_bool(1.0 / 3.0) && !matches!(fault, Fault::Loss { .. }) {
            [0.02, 0.05, 0.1][self.rng.random_range(0..3)]
        } else {
            0.0
        };
        let round = Round {
            index: self.next,
            fault,
            loss,
            hold,
        };
        self.next += 1;
        round
    }
}
