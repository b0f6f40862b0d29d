//! The Automerge baselines: documents built from the same changes, and Automerge's own sync
//! protocol between two copies, its messages encoded and decoded as on a wire.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, Change};
use spoc_node::log::SignedEntry;

/// The documents that `entries` build, by document id, as plain Automerge documents.
pub fn docs_of(entries: &[SignedEntry]) -> Result<BTreeMap<String, Automerge>> {
    let mut changes: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    for e in entries {
        changes
            .entry(e.entry.doc.to_string())
            .or_default()
            .push(Change::from_bytes(e.entry.change.clone())?);
    }
    let mut docs = BTreeMap::new();
    for (id, cs) in changes {
        let mut doc = Automerge::new();
        doc.apply_changes(cs)?;
        docs.insert(id, doc);
    }
    Ok(docs)
}

/// What bringing documents up to date cost.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncCost {
    /// Encoded sync messages, both ways.
    pub bytes: u64,
    pub messages: u64,
    /// Round trips of the longest exchange (documents sync side by side).
    pub round_trips: u64,
    /// Both sides' work, in memory.
    pub time: Duration,
    /// The receiving side's share of `time`.
    pub target_time: Duration,
    pub docs: usize,
}

impl SyncCost {
    fn add(&mut self, other: &SyncCost) {
        self.bytes += other.bytes;
        self.messages += other.messages;
        self.round_trips = self.round_trips.max(other.round_trips);
        self.time += other.time;
        self.target_time += other.target_time;
        self.docs += other.docs;
    }
}

/// Brings `target` up to date with `source`, the target speaking first (it is the one that
/// comes back), until neither side has anything to say.
pub fn sync_pair(source: &mut Automerge, target: &mut Automerge) -> Result<SyncCost> {
    let mut source_state = sync::State::new();
    let mut target_state = sync::State::new();
    let mut cost = SyncCost {
        docs: 1,
        ..SyncCost::default()
    };
    let start = Instant::now();
    let mut quiet = 0;
    let mut target_turn = true;
    while quiet < 2 {
        if target_turn {
            let t = Instant::now();
            let message = target.generate_sync_message(&mut target_state);
            cost.target_time += t.elapsed();
            match message {
                Some(m) => {
                    let wire = m.encode();
                    cost.bytes += wire.len() as u64;
                    cost.messages += 1;
                    quiet = 0;
                    source
                        .receive_sync_message(&mut source_state, sync::Message::decode(&wire)?)?;
                }
                None => quiet += 1,
            }
        } else {
            match source.generate_sync_message(&mut source_state) {
                Some(m) => {
                    let wire = m.encode();
                    cost.bytes += wire.len() as u64;
                    cost.messages += 1;
                    quiet = 0;
                    let t = Instant::now();
                    target
                        .receive_sync_message(&mut target_state, sync::Message::decode(&wire)?)?;
                    cost.target_time += t.elapsed();
                }
                None => quiet += 1,
            }
        }
        target_turn = !target_turn;
        if cost.messages > 1_000 {
            bail!("the Automerge sync did not settle after 1000 messages");
        }
    }
    cost.time = start.elapsed();
    cost.round_trips = cost.messages.div_ceil(2);
    let (mut a, mut b) = (source.get_heads(), target.get_heads());
    a.sort();
    b.sort();
    if a != b {
        bail!("the Automerge sync ended with different heads");
    }
    Ok(cost)
}

/// Syncs every document of `sources` into the matching one of `targets` (an empty
/// document where the target lacks it).
pub fn sync_all(
    sources: &mut BTreeMap<String, Automerge>,
    targets: &mut BTreeMap<String, Automerge>,
) -> Result<SyncCost> {
    let mut total = SyncCost::default();
    for (id, source) in sources.iter_mut() {
        let target = targets.entry(id.clone()).or_default();
        total.add(&sync_pair(source, target)?);
    }
    Ok(total)
}
