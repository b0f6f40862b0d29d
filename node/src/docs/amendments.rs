//! Amendments of the charter: one document per proposal, `amendments/STATE/ULID`, made by
//! the participant that proposes it and signed by member states.
//!
//! A proposal names the version of the charter it amends (`amends`) and holds the whole
//! charter text it would put in force (`text`); both are written once, by the change that
//! creates the document. Each member state signs by putting, under its own code in
//! `signatures`, the digest of what it read, and nobody removes a signature. A proposal takes effect once the member
//! states of the version it amends that signed it reach that version's threshold
//! (`Charter::required_signatures`); the replica decides it (`replica::charters`). This
//! module owns the document's fields and the reads of them that the rules, the commands,
//! the replica and the views share.

use std::collections::BTreeSet;

use automerge::{Automerge, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde::{Deserialize, Serialize};

use super::DocId;
use crate::charter::Charter;

/// The version of the charter the proposal amends.
pub const AMENDS: &str = "amends";
/// The whole text of the charter the proposal would put in force.
pub const TEXT: &str = "text";
/// State code -> the digest of the reading it signed ([`digest`]).
pub const SIGNATURES: &str = "signatures";
/// The fields the creating change writes, and nothing else does.
pub const FIELDS: [&str; 4] = ["kind", "created", AMENDS, TEXT];

/// A proposal as a node holds it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: String,
    /// The participant that proposed it.
    pub by: String,
    pub amends: u32,
    /// What a signature names: [`digest`] of `amends` and `text`.
    pub digest: String,
    /// The states whose signature names this digest, member states or not (only member
    /// states of the version it amends count).
    pub signatures: BTreeSet<String>,
    pub text: String,
}

/// What a state signs: a hash of the version amended and the whole text, so that a
/// signature counts only for the text its signer read.
pub fn digest(amends: u32, text: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"spocnet/amendment/v1");
    h.update(&amends.to_be_bytes());
    h.update(text.as_bytes());
    hex::encode(&h.finalize().as_bytes()[..16])
}

fn scalars(doc: &Automerge, key: &str) -> Vec<ScalarValue> {
    doc.get_all(ROOT, key)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(v, _)| match v {
            Value::Scalar(s) => Some(s.into_owned()),
            _ => None,
        })
        .collect()
}

/// Every reading of a proposal. Its fields are written once, by the change that makes
/// the document; should its proposer write them again concurrently, each pair of values
/// is a reading of its own with the signatures that name it. A reading's signatures only
/// ever grow, so a reading that is carried stays carried.
pub fn read_all(id: &DocId, doc: &Automerge) -> Vec<Proposal> {
    let signed = signatures(doc);
    let mut out = Vec::new();
    for amends in scalars(doc, AMENDS) {
        let amends = match amends {
            ScalarValue::Uint(v) => u32::try_from(v).ok(),
            ScalarValue::Int(v) => u32::try_from(v).ok(),
            _ => None,
        };
        let Some(amends) = amends else { continue };
        for text in scalars(doc, TEXT) {
            let ScalarValue::Str(text) = text else {
                continue;
            };
            let digest = digest(amends, &text);
            let signatures = signed
                .iter()
                .filter(|(_, d)| *d == digest)
                .map(|(code, _)| code.clone())
                .collect();
            out.push(Proposal {
                id: id.to_string(),
                by: id.owner().to_owned(),
                amends,
                digest,
                signatures,
                text: text.to_string(),
            });
        }
    }
    out
}

/// The reading a view shows: the most signed.
pub fn read(id: &DocId, doc: &Automerge) -> Option<Proposal> {
    read_all(id, doc)
        .into_iter()
        .max_by_key(|p| p.signatures.len())
}

/// Each signature, as (state, digest), in every concurrent copy of the signatures map.
fn signatures(doc: &Automerge) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (value, obj) in doc.get_all(ROOT, SIGNATURES).unwrap_or_default() {
        if !matches!(value, Value::Object(ObjType::Map)) {
            continue;
        }
        for code in doc.keys(&obj) {
            for (v, _) in doc.get_all(&obj, code.as_str()).unwrap_or_default() {
                if let Value::Scalar(s) = v
                    && let ScalarValue::Str(d) = s.as_ref()
                {
                    out.push((code.clone(), d.to_string()));
                }
            }
        }
    }
    out
}

impl Proposal {
    /// The member states of `parent` (the version it amends) that signed.
    pub fn counted(&self, parent: &Charter) -> usize {
        parent
            .member_states()
            .filter(|p| self.signatures.contains(&p.code))
            .count()
    }

    /// Whether the member states of `parent` that signed reach its threshold.
    pub fn carried(&self, parent: &Charter) -> bool {
        self.amends == parent.version && self.counted(parent) >= parent.required_signatures()
    }
}

/// Checks a proposal's text when it is made: a charter of the same network. Whether it
/// is a valid amendment of its version is decided when it is carried, against that
/// version (`Charter::amend`).
pub fn check_text(text: &str, network: &str) -> Result<(), String> {
    let proposed = Charter::parse(text).map_err(|e| format!("the proposed {e}"))?;
    if proposed.network != network {
        return Err(format!(
            "the proposed charter is for network {}, not {network}",
            proposed.network
        ));
    }
    Ok(())
}

/// One version of the charter, as the API serves it and the CLI shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub version: u32,
    /// The hash of this version's content.
    pub hash: String,
    /// The hash of the genesis charter: the network's identity, the same in every version.
    pub genesis: String,
    /// How many member states' signatures an amendment of this version needs.
    pub required_signatures: usize,
    /// The charter's text, which `Charter::parse` reads and an amendment may start from.
    pub toml: String,
}

impl Version {
    pub fn of(charter: &Charter) -> Version {
        Version {
            version: charter.version,
            hash: charter.hash_hex(),
            genesis: hex::encode(charter.genesis()),
            required_signatures: charter.required_signatures(),
            toml: charter.to_toml(),
        }
    }
}

/// Where amending stands: the version in force, the versions before it, and every
/// proposal with the signatures that count for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: u32,
    pub hash: String,
    pub required_signatures: usize,
    /// Each version's number and hash, the genesis charter first.
    pub versions: Vec<(u32, String)>,
    pub proposals: Vec<ProposalStatus>,
}

/// A proposal and what its signatures count for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalStatus {
    pub id: String,
    pub by: String,
    pub amends: u32,
    pub digest: String,
    pub signatures: BTreeSet<String>,
    /// The signatures of member states of the version it amends.
    pub counted: usize,
    /// The signatures that version needs.
    pub required: usize,
    /// `pending` (it amends the version in force), `carried` (it made a later version),
    /// or `superseded` (another proposal amended its version first).
    pub state: String,
}

impl Status {
    /// Where amending stands, from the versions of the charter (genesis first) and the
    /// proposals held.
    pub fn of(versions: &[std::sync::Arc<Charter>], proposals: &[Proposal]) -> Status {
        let in_force = versions.last().map(|c| (**c).clone());
        let (version, hash, required_signatures) =
            in_force.as_ref().map_or((0, String::new(), 0), |c| {
                (c.version, c.hash_hex(), c.required_signatures())
            });
        let mut list: Vec<ProposalStatus> = proposals
            .iter()
            .map(|p| {
                let parent = versions.get(p.amends as usize);
                let child = versions.get(p.amends as usize + 1);
                let carried = match (parent, child) {
                    (Some(parent), Some(child)) => {
                        parent
                            .amend(&p.text)
                            .is_ok_and(|c| c.hash() == child.hash())
                            && p.carried(parent)
                    }
                    _ => false,
                };
                let state = if carried {
                    "carried"
                } else if p.amends == version {
                    "pending"
                } else {
                    "superseded"
                };
                ProposalStatus {
                    id: p.id.clone(),
                    by: p.by.clone(),
                    amends: p.amends,
                    digest: p.digest.clone(),
                    signatures: p.signatures.clone(),
                    counted: parent.map_or(0, |c| p.counted(c)),
                    required: parent.map_or(0, |c| c.required_signatures()),
                    state: state.to_owned(),
                }
            })
            .collect();
        list.sort_by(|a, b| (a.amends, &a.id).cmp(&(b.amends, &b.id)));
        Status {
            version,
            hash,
            required_signatures,
            versions: versions.iter().map(|c| (c.version, c.hash_hex())).collect(),
            proposals: list,
        }
    }
}
