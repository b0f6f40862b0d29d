//! The benchmark's scenarios, the data they share and the plan of a run.
//!
//! Every figure is a ratio against a baseline measured in the same run on the same data:
//! `ingest`, `publish` (with the cold start), `propagation` and `catchup` each compare
//! spocnet with plain Automerge, redb and libp2p doing the least the same job needs;
//! `decade` compares a node after ten years with the same node after five weeks.

pub mod amsync;
pub mod catchup;
pub mod data;
pub mod decade;
pub mod gossip;
pub mod hostile;
pub mod ingest;
#[cfg(feature = "peer-iroh")]
pub mod peer;
pub mod procs;
pub mod propagation;
pub mod publish;
pub mod report;
pub mod stats;

use std::time::Duration;

/// What a run measures, and how much.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub seed: u64,
    /// Entries held or taken in, for ingest, publish and cold start.
    pub sizes: Vec<usize>,
    /// Entries written while the returning node was away.
    pub catchup_sizes: Vec<usize>,
    /// Entries every node holds before the catch-up's divergence.
    pub catchup_base: usize,
    pub propagation_nodes: Vec<usize>,
    pub publish_samples: usize,
    /// Entries of the decade scenario's stores: the reference first, the decade last.
    pub decade_sizes: Vec<usize>,
    /// Replaces the repetitions of in-process measures (for profiling).
    pub reps: Option<usize>,
}

impl Plan {
    pub fn new(quick: bool, seed: u64) -> Plan {
        if quick {
            Plan {
                quick,
                seed,
                sizes: vec![1_000, 10_000],
                catchup_sizes: vec![1_000, 10_000],
                catchup_base: 1_000,
                propagation_nodes: vec![5],
                publish_samples: 50,
                decade_sizes: vec![10_000, 100_000],
                reps: None,
            }
        } else {
            Plan {
                quick,
                seed,
                sizes: vec![1_000, 10_000, 100_000],
                catchup_sizes: vec![1_000, 10_000, 100_000],
                catchup_base: 1_000,
                propagation_nodes: vec![5, 15, 31],
                publish_samples: 200,
                decade_sizes: vec![10_000, 1_000_000],
                reps: None,
            }
        }
    }

    /// The entries the run needs generated.
    pub fn entries_needed(&self) -> usize {
        let held = self.sizes.iter().copied().max().unwrap_or(0);
        let diverged = self
            .catchup_sizes
            .iter()
            .map(|n| n + self.catchup_base)
            .max()
            .unwrap_or(0);
        held.max(diverged).max(1_000)
    }

    /// The prefixes whose state the scenarios start nodes on.
    pub fn boundaries(&self) -> std::collections::BTreeSet<usize> {
        let mut b: std::collections::BTreeSet<usize> = self.sizes.iter().copied().collect();
        if !self.catchup_sizes.is_empty() {
            b.insert(self.catchup_base);
            b.extend(self.catchup_sizes.iter().map(|n| n + self.catchup_base));
        }
        b
    }

    /// Repetitions of an in-process measure at size `n` (the median is kept).
    pub fn reps(&self, n: usize) -> usize {
        if let Some(r) = self.reps {
            return r.max(1);
        }
        match (self.quick, n) {
            (_, 0..=1_000) => 5,
            (false, 1_001..=10_000) => 3,
            _ => 1,
        }
    }

    /// Contributions measured on a network of `n` nodes.
    pub fn contributions(&self, n: usize) -> usize {
        match (self.quick, n) {
            (true, _) => 20,
            (false, 0..=5) => 50,
            _ => 31,
        }
    }

    /// How long a returning node may take to catch up on `n` entries.
    pub fn catchup_timeout(&self, n: usize) -> Duration {
        Duration::from_secs(20) + Duration::from_millis(2 * n as u64)
    }
}

/// What the scenarios share: the plan, the data and the testnet whose keys wrote it.
#[derive(Debug)]
pub struct Context {
    pub plan: Plan,
    pub today: time::Date,
    pub work: data::Workload,
    /// A five-state testnet: its first node serves publish and cold start, its first three
    /// the catch-up.
    pub nodes: Vec<spoc_node::testnet::Node>,
}

/// 1k, 10k, 100k, 1M.
pub fn size_label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}
