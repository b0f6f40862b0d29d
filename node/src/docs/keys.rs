//! The key records: one document per state, `keys/STATE`, in which that state alone
//! rotates its national key and revokes the certificates it issued to its nodes.
//!
//! A rotation is signed with the current key and names the new one. It also says how far
//! each log of the current key goes (`keep`): the entries of the current key past those
//! points are refused on every node, and cut where they were taken in, so that a key once
//! rotated signs nothing more. Everything signed within them stays valid. This module
//! owns the record's fields and the syntax of the points, which the rules, the commands,
//! the replica and the views share. An amendment of the charter that revokes a key uses
//! the same points (`charter::Revoked`).

use std::collections::BTreeMap;
use std::fmt;

use automerge::{Automerge, ObjType, ROOT, ReadDoc, ScalarValue, Value};

use crate::identity::PublicKey;

/// New key -> the rotation that introduced it.
pub const ROTATIONS: &str = "rotations";
/// The key a rotation retires: the key that signs it.
pub const FROM: &str = "from";
/// How far each log of the retired key goes.
pub const KEEP: &str = "keep";
/// Node (peer id) -> when the state revoked the certificates it issued to it.
pub const NODES_REVOKED: &str = "nodes_revoked";

/// Whether `peer` has the shape of a peer id as libp2p writes it (base58), which is all
/// a document can check of it.
pub fn is_peer_id(peer: &str) -> bool {
    (40..=64).contains(&peer.len())
        && peer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() && !matches!(b, b'0' | b'O' | b'I' | b'l'))
}

/// The nodes whose certificates a key record revokes, in every concurrent copy of its map.
pub fn revoked_nodes(doc: &Automerge) -> Vec<String> {
    let mut out = Vec::new();
    for (value, map) in doc.get_all(ROOT, NODES_REVOKED).unwrap_or_default() {
        if matches!(value, Value::Object(ObjType::Map)) {
            out.extend(doc.keys(&map).filter(|p| is_peer_id(p)));
        }
    }
    out
}

/// The most logs one key's points name: a node that restarts every day for ten years.
pub const MAX_POINTS: usize = 4096;

/// For each log (by incarnation) of a retired key, its last entry that stays valid. A log
/// not named keeps nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keep(pub BTreeMap<u32, u64>);

impl Keep {
    /// Whether the entry at `seq` of the log `incarnation` stays valid.
    pub fn keeps(&self, incarnation: u32, seq: u64) -> bool {
        self.0.get(&incarnation).is_some_and(|last| seq <= *last)
    }

    /// What both keep: the points of two retirements of one key.
    pub fn meet(&self, other: &Keep) -> Keep {
        Keep(
            self.0
                .iter()
                .filter_map(|(inc, seq)| Some((*inc, (*seq).min(*other.0.get(inc)?))))
                .collect(),
        )
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(i, s)| format!("{i}:{s}")).collect();
        f.write_str(&parts.join(" "))
    }
}

impl std::str::FromStr for Keep {
    type Err = String;

    /// `INCARNATION:SEQ` pairs separated by single spaces, each incarnation once; the
    /// empty text keeps nothing.
    fn from_str(text: &str) -> Result<Keep, String> {
        let mut points = BTreeMap::new();
        if text.is_empty() {
            return Ok(Keep(points));
        }
        for part in text.split(' ') {
            let bad = || format!("{part:?} is not INCARNATION:SEQ");
            let (inc, seq) = part.split_once(':').ok_or_else(bad)?;
            let inc: u32 = inc.parse().map_err(|_| bad())?;
            let seq: u64 = seq.parse().map_err(|_| bad())?;
            if points.insert(inc, seq).is_some() {
                return Err(format!("log {inc} is named twice"));
            }
        }
        if points.len() > MAX_POINTS {
            return Err(format!("more than {MAX_POINTS} logs"));
        }
        Ok(Keep(points))
    }
}

/// One rotation, as a key record holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub to: PublicKey,
    pub from: PublicKey,
    pub keep: Keep,
}

fn text(doc: &Automerge, obj: &automerge::ObjId, key: &str) -> Vec<String> {
    doc.get_all(obj, key)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(v, _)| match v {
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Str(t) => Some(t.to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Every rotation a key record holds, in every concurrent copy of its maps. Should a
/// rotation's points be written twice concurrently, each reading counts, and a key keeps
/// what both keep.
pub fn rotations(doc: &Automerge) -> Vec<Rotation> {
    let mut out = Vec::new();
    for (value, map) in doc.get_all(ROOT, ROTATIONS).unwrap_or_default() {
        if !matches!(value, Value::Object(ObjType::Map)) {
            continue;
        }
        for to in doc.keys(&map) {
            let Ok(to_key) = to.parse::<PublicKey>() else {
                continue;
            };
            for (value, rotation) in doc.get_all(&map, to.as_str()).unwrap_or_default() {
                if !matches!(value, Value::Object(ObjType::Map)) {
                    continue;
                }
                for from in text(doc, &rotation, FROM) {
                    let Ok(from) = from.parse::<PublicKey>() else {
                        continue;
                    };
                    for keep in text(doc, &rotation, KEEP) {
                        if let Ok(keep) = keep.parse::<Keep>() {
                            out.push(Rotation {
                                to: to_key,
                                from,
                                keep,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_read_back_and_meet() {
        let keep: Keep = "7:12 9:3".parse().unwrap();
        assert_eq!(keep.to_string(), "7:12 9:3");
        assert!(keep.keeps(7, 12) && !keep.keeps(7, 13) && !keep.keeps(8, 1));
        let other: Keep = "7:10 8:1".parse().unwrap();
        assert_eq!(keep.meet(&other).to_string(), "7:10");
        assert_eq!("".parse::<Keep>().unwrap(), Keep::default());
        for bad in ["7", "7:", "x:1", "7:1  8:2", "7:1 7:2", "-1:3"] {
            assert!(bad.parse::<Keep>().is_err(), "{bad}");
        }
    }
}
