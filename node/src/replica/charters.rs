//! The versions of the charter in force: the genesis charter, then each amendment that
//! the member states carried, in order.
//!
//! Version N+1 is the proposal that amends version N and that the member states of
//! version N signed up to its threshold. Signatures only ever grow, so a proposal once
//! carried stays carried; with a threshold above one half, two proposals of one version
//! are both carried only if some state signed both, which an honest node never does.
//! Should it happen all the same, the proposal whose document id sorts first wins on
//! every node. A proposal whose text is no valid amendment of its version (it renames the
//! network, or lowers the rules version) never takes effect.
//!
//! Beside the versions, the keys: the keys that rotations introduced (each of one state,
//! whatever the version), and the keys retired by a rotation or revoked by an amendment,
//! with how far each of their logs stays valid.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::charter::{Charter, Participant};
use crate::docs::DocId;
use crate::docs::amendments::Proposal;
use crate::docs::keys::{Keep, Rotation};
use crate::identity::PublicKey;

/// The chain of versions, and the documents that propose the next ones.
#[derive(Debug)]
pub(super) struct Charters {
    versions: Vec<Arc<Charter>>,
    /// Every amendment document accepted: tens over a decade, one per proposal.
    pub(super) proposals: BTreeSet<DocId>,
    /// Every key record accepted: one per state.
    pub(super) key_records: BTreeSet<DocId>,
    /// Keys that rotations introduced, with their state.
    rotated: BTreeMap<PublicKey, String>,
    /// Keys retired by a rotation or revoked by an amendment.
    retired: BTreeMap<PublicKey, Keep>,
    /// Nodes (peer ids) whose certificates their states revoked, with those states.
    pub(super) revoked_nodes: BTreeMap<String, BTreeSet<String>>,
}

impl Charters {
    pub(super) fn new(genesis: Arc<Charter>) -> Charters {
        Charters {
            versions: vec![genesis],
            proposals: BTreeSet::new(),
            key_records: BTreeSet::new(),
            rotated: BTreeMap::new(),
            retired: BTreeMap::new(),
            revoked_nodes: BTreeMap::new(),
        }
    }

    /// The charter in force: the latest version.
    pub(super) fn in_force(&self) -> &Arc<Charter> {
        // The chain always holds the genesis charter.
        &self.versions[self.versions.len() - 1]
    }

    pub(super) fn get(&self, version: u32) -> Option<&Arc<Charter>> {
        self.versions.get(usize::try_from(version).ok()?)
    }

    pub(super) fn all(&self) -> &[Arc<Charter>] {
        &self.versions
    }

    /// Of `proposals`, the amendment of the charter in force that its member states
    /// carried, if any: the charter it makes.
    pub(super) fn next(&self, proposals: &[Proposal]) -> Option<Charter> {
        let parent = self.in_force();
        let mut carried: Vec<&Proposal> = proposals.iter().filter(|p| p.carried(parent)).collect();
        carried.sort_by(|a, b| (&a.id, &a.digest).cmp(&(&b.id, &b.digest)));
        carried.into_iter().find_map(|p| match parent.amend(&p.text) {
            Ok(next) => Some(next),
            Err(e) => {
                tracing::warn!(amendment = %p.id, error = %e, "a carried amendment is not valid and does not take effect");
                None
            }
        })
    }

    /// The participant that `key` signs for under `charter`: the one whose key it is, or
    /// the state a rotation gave it to.
    pub(super) fn participant<'c>(
        &self,
        charter: &'c Charter,
        key: &PublicKey,
    ) -> Option<&'c Participant> {
        charter
            .participant_by_key(key)
            .or_else(|| charter.participant(self.rotated.get(key)?))
    }

    /// Whether `key` came by a rotation.
    pub(super) fn is_rotated(&self, key: &PublicKey) -> bool {
        self.rotated.contains_key(key)
    }

    /// How far `key`'s logs stay valid, if it was retired or revoked.
    pub(super) fn retired(&self, key: &PublicKey) -> Option<&Keep> {
        self.retired.get(key)
    }

    /// Takes in the rotations of the key records (by state) and the revocations of every
    /// version, and returns the keys new to the node and the keys whose points changed.
    pub(super) fn refresh(
        &mut self,
        rotations: Vec<(String, Rotation)>,
    ) -> (Vec<PublicKey>, Vec<PublicKey>) {
        let mut rotated = BTreeMap::new();
        let mut retired: BTreeMap<PublicKey, Keep> = BTreeMap::new();
        let mut retire = |key: PublicKey, keep: &Keep| {
            let met = match retired.get(&key) {
                Some(old) => old.meet(keep),
                None => keep.clone(),
            };
            retired.insert(key, met);
        };
        for (state, r) in rotations {
            rotated.insert(r.to, state);
            retire(r.from, &r.keep);
        }
        for charter in &self.versions {
            for r in &charter.revoked {
                retire(r.key, &r.keep);
            }
        }
        let new_keys = rotated
            .keys()
            .filter(|k| !self.rotated.contains_key(k))
            .copied()
            .collect();
        let changed = retired
            .iter()
            .filter(|(k, keep)| self.retired.get(k) != Some(keep))
            .map(|(k, _)| *k)
            .collect();
        self.rotated = rotated;
        self.retired = retired;
        (new_keys, changed)
    }

    /// The keys that rotations introduced, and the retired keys: what admission needs.
    pub(super) fn keys(&self) -> (&BTreeMap<PublicKey, String>, &BTreeMap<PublicKey, Keep>) {
        (&self.rotated, &self.retired)
    }

    pub(super) fn push(&mut self, next: Charter) {
        tracing::info!(
            version = next.version,
            hash = %next.hash_hex(),
            "a new version of the charter is in force"
        );
        self.versions.push(Arc::new(next));
    }
}
