//! Typed documents over Automerge, and the rules of who may write what.
//!
//! One small Automerge document per item, named by its collection, the state that created
//! it and a ULID (`obstacles/FI/01J9...`); a fact sheet is `factsheets/FI`. This module
//! owns the document ids (`DocId`), the write rules checked per Automerge operation
//! (`rules`), the typed writes that operators make (`command`) and the typed reads that
//! the API and CLI show (`view`). It does no IO.

pub mod addresses;
pub mod amendments;
pub mod command;
pub mod keys;
pub mod rules;
pub mod view;

use std::fmt;
use std::str::FromStr;

/// The collections: the network's work, and the address records of its nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collection {
    Meetings,
    Obstacles,
    Practices,
    Factsheets,
    Training,
    /// One record per state: where its nodes listen, written by that state alone.
    Addresses,
    /// Proposed amendments of the charter, with the member states' signatures.
    Amendments,
    /// One record per state: the rotations of its national key, written by that state.
    Keys,
}

impl Collection {
    pub const ALL: [Collection; 8] = [
        Collection::Meetings,
        Collection::Obstacles,
        Collection::Practices,
        Collection::Factsheets,
        Collection::Training,
        Collection::Addresses,
        Collection::Amendments,
        Collection::Keys,
    ];

    /// Whether each state has one document of this collection, `collection/STATE`.
    pub fn one_per_state(self) -> bool {
        matches!(
            self,
            Collection::Factsheets | Collection::Addresses | Collection::Keys
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Collection::Meetings => "meetings",
            Collection::Obstacles => "obstacles",
            Collection::Practices => "practices",
            Collection::Factsheets => "factsheets",
            Collection::Training => "training",
            Collection::Addresses => "addresses",
            Collection::Amendments => "amendments",
            Collection::Keys => "keys",
        }
    }

    /// The name of one item, for messages.
    pub fn item(self) -> &'static str {
        match self {
            Collection::Meetings => "meeting",
            Collection::Obstacles => "obstacle",
            Collection::Practices => "practice",
            Collection::Factsheets => "fact sheet",
            Collection::Training => "training item",
            Collection::Addresses => "address record",
            Collection::Amendments => "amendment",
            Collection::Keys => "key record",
        }
    }
}

impl FromStr for Collection {
    type Err = DocIdError;
    fn from_str(s: &str) -> Result<Self, DocIdError> {
        Collection::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| DocIdError(format!("unknown collection {s:?}")))
    }
}

/// A malformed document id.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("bad document id: {0}")]
pub struct DocIdError(String);

/// A document id: `collection/STATE/ULID`, or `factsheets/STATE` and `addresses/STATE`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId {
    text: String,
    collection: Collection,
    owner_len: usize,
}

impl DocId {
    /// A new item id in `collection`, created by `owner`, named by `ulid`.
    pub fn new(collection: Collection, owner: &str, ulid: ulid::Ulid) -> DocId {
        DocId {
            text: format!("{}/{owner}/{ulid}", collection.as_str()),
            collection,
            owner_len: owner.len(),
        }
    }

    pub fn factsheet(owner: &str) -> DocId {
        DocId::of_state(Collection::Factsheets, owner)
    }

    /// The address record of `owner`'s nodes.
    pub fn addresses(owner: &str) -> DocId {
        DocId::of_state(Collection::Addresses, owner)
    }

    /// The record of `owner`'s key rotations.
    pub fn keys(owner: &str) -> DocId {
        DocId::of_state(Collection::Keys, owner)
    }

    fn of_state(collection: Collection, owner: &str) -> DocId {
        DocId {
            text: format!("{}/{owner}", collection.as_str()),
            collection,
            owner_len: owner.len(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn collection(&self) -> Collection {
        self.collection
    }

    /// The state code that created the document and owns its main fields.
    pub fn owner(&self) -> &str {
        let start = self.collection.as_str().len() + 1;
        &self.text[start..start + self.owner_len]
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({})", self.text)
    }
}

impl FromStr for DocId {
    type Err = DocIdError;

    fn from_str(s: &str) -> Result<Self, DocIdError> {
        let bad = |why: &str| DocIdError(format!("{s:?}: {why}"));
        if s.len() > 128 {
            return Err(bad("too long"));
        }
        let mut parts = s.split('/');
        let collection: Collection = parts.next().unwrap_or_default().parse()?;
        let owner = parts.next().ok_or_else(|| bad("no state code"))?;
        if !(2..=8).contains(&owner.len()) || !owner.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(bad("the state code must be 2-8 capital letters"));
        }
        let item = parts.next();
        if parts.next().is_some() {
            return Err(bad("too many parts"));
        }
        match (collection, item) {
            (c, None) if c.one_per_state() => {}
            (c, Some(_)) if c.one_per_state() => {
                return Err(DocIdError(format!(
                    "{s:?}: a {} id is {}/STATE",
                    c.item(),
                    c.as_str()
                )));
            }
            (_, None) => return Err(bad("no item id")),
            (_, Some(u)) => {
                let parsed =
                    ulid::Ulid::from_string(u).map_err(|_| bad("item id is not a ULID"))?;
                if parsed.to_string() != u {
                    return Err(bad("item id is not a canonical ULID"));
                }
            }
        }
        Ok(DocId {
            text: s.to_owned(),
            collection,
            owner_len: owner.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_ids_parse_and_name_their_owner() {
        let id: DocId = "obstacles/FI/01J9Z3Y6K0000000000000000A".parse().unwrap();
        assert_eq!(id.collection(), Collection::Obstacles);
        assert_eq!(id.owner(), "FI");
        let fs: DocId = "factsheets/EUROPOL".parse().unwrap();
        assert_eq!(fs.owner(), "EUROPOL");
        for bad in [
            "obstacles/FI",
            "obstacles/fi/01J9Z3Y6K0000000000000000A",
            "factsheets/FI/01J9Z3Y6K0000000000000000A",
            "nope/FI/01J9Z3Y6K0000000000000000A",
            "obstacles/FI/not-a-ulid",
            "obstacles/FI/01J9Z3Y6K0000000000000000A/x",
            "",
        ] {
            assert!(bad.parse::<DocId>().is_err(), "{bad}");
        }
    }
}
