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

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::charter::Charter;
use crate::docs::DocId;
use crate::docs::amendments::Proposal;

/// The chain of versions, and the documents that propose the next ones.
#[derive(Debug)]
pub(super) struct Charters {
    versions: Vec<Arc<Charter>>,
    /// Every amendment document accepted: tens over a decade, one per proposal.
    pub(super) proposals: BTreeSet<DocId>,
}

impl Charters {
    pub(super) fn new(genesis: Arc<Charter>) -> Charters {
        Charters {
            versions: vec![genesis],
            proposals: BTreeSet::new(),
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

    pub(super) fn push(&mut self, next: Charter) {
        tracing::info!(
            version = next.version,
            hash = %next.hash_hex(),
            "a new version of the charter is in force"
        );
        self.versions.push(Arc::new(next));
    }
}
