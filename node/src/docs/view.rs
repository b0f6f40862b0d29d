//! Typed reads: documents as JSON, and the summaries that lists show.
//!
//! A document is rendered whole (text objects become strings, and concurrent copies of a
//! map show as their union), then each collection's summary picks and derives the fields
//! that operators see in lists. Keyed maps (agenda, endorsements, comments) come out in key
//! order, which is creation order within a state because keys end in a ULID.

use automerge::{Automerge, ObjId, ObjType, Prop, ROOT, ReadDoc};
use serde_json::{Map, Value, json};

use super::{Collection, DocId};

/// The whole document as JSON, with its id.
///
/// A map made more than once under the same key by concurrent changes shows the union of
/// its copies. A document's owner can re-create a shared container (`endorsements`,
/// `comments`, `agenda`, `attendance`) with a change that has no dependencies, and its
/// copy then wins the Automerge conflict; the views still show every contribution written
/// into any copy. For a key that several copies hold, the copy that Automerge lets win
/// shows, which is also where `command` writes.
pub fn document(id: &DocId, doc: &Automerge) -> Value {
    let mut m = map(doc, std::slice::from_ref(&ROOT));
    m.insert("id".into(), json!(id.as_str()));
    Value::Object(m)
}

/// The union of the copies of a map, given in Automerge's order (the winning copy last).
fn map(doc: &Automerge, copies: &[ObjId]) -> Map<String, Value> {
    let mut out = Map::new();
    for obj in copies {
        for key in doc.keys(obj) {
            let v = value(doc, obj, Prop::Map(key.clone()));
            out.insert(key, v);
        }
    }
    out
}

fn value(doc: &Automerge, obj: &ObjId, prop: Prop) -> Value {
    let all = doc.get_all(obj, prop).unwrap_or_default();
    let Some((winner, id)) = all.last() else {
        return Value::Null;
    };
    match winner {
        automerge::Value::Object(ObjType::Map | ObjType::Table) => {
            let copies: Vec<ObjId> = all
                .iter()
                .filter(|(v, _)| {
                    matches!(v, automerge::Value::Object(ObjType::Map | ObjType::Table))
                })
                .map(|(_, id)| id.clone())
                .collect();
            Value::Object(map(doc, &copies))
        }
        automerge::Value::Object(ObjType::Text) => doc.text(id).map_or(Value::Null, Value::String),
        automerge::Value::Object(ObjType::List) => Value::Array(
            (0..doc.length(id))
                .map(|i| value(doc, id, Prop::Seq(i)))
                .collect(),
        ),
        automerge::Value::Scalar(s) => serde_json::to_value(s.as_ref()).unwrap_or(Value::Null),
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or(&Value::Null)
}

fn keyed(v: &Value, k: &str) -> Map<String, Value> {
    v.get(k)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// The summary of a document for a list, by collection.
pub fn summary(id: &DocId, doc: &Automerge) -> Value {
    let d = document(id, doc);
    let endorsements = || -> Value {
        keyed(&d, "endorsements")
            .into_iter()
            .map(|(state, e)| json!({"state": state, "stance": s(&e, "stance")}))
            .collect()
    };
    match id.collection() {
        Collection::Meetings => {
            let agenda: Vec<Value> = keyed(&d, "agenda")
                .into_iter()
                .map(|(item, a)| {
                    json!({
                        "id": item,
                        "title": s(&a, "title"),
                        "proposer": s(&a, "proposer"),
                        "status": s(&a, "status"),
                        "reason": s(&a, "reason"),
                    })
                })
                .collect();
            let attendance = keyed(&d, "attendance");
            let present = attendance
                .values()
                .filter(|a| a.get("present") == Some(&Value::Bool(true)))
                .count();
            json!({
                "id": id.as_str(),
                "title": s(&d, "title"),
                "presidency": id.owner(),
                "term": s(&d, "term"),
                "date": s(&d, "date"),
                "venue": s(&d, "venue"),
                "format": s(&d, "format"),
                "status": s(&d, "status"),
                "agenda": agenda,
                "attendance": present,
            })
        }
        Collection::Obstacles => json!({
            "id": id.as_str(),
            "title": s(&d, "title"),
            "type": s(&d, "type"),
            "reporter": id.owner(),
            "status": s(&d, "status"),
            "impact": s(&d, "impact"),
            "states_concerned": keyed(&d, "states_concerned").keys().cloned().collect::<Vec<_>>(),
            "endorsements": endorsements(),
            "comments": keyed(&d, "comments").len(),
        }),
        Collection::Practices => json!({
            "id": id.as_str(),
            "title": s(&d, "title"),
            "author": id.owner(),
            "tags": s(&d, "tags"),
            "endorsements": endorsements(),
            "comments": keyed(&d, "comments").len(),
        }),
        Collection::Factsheets => json!({
            "id": id.as_str(),
            "state": id.owner(),
            "last_reviewed": s(&d, "last_reviewed"),
        }),
        Collection::Addresses => json!({
            "id": id.as_str(),
            "state": id.owner(),
            "addresses": s(&d, super::addresses::FIELD),
            "updated": s(&d, "updated"),
        }),
        Collection::Amendments => json!({
            "id": id.as_str(),
            "by": id.owner(),
            "amends": d.get(super::amendments::AMENDS).cloned().unwrap_or(Value::Null),
            "signatures": keyed(&d, super::amendments::SIGNATURES).keys().cloned().collect::<Vec<_>>(),
        }),
        Collection::Keys => json!({
            "id": id.as_str(),
            "state": id.owner(),
            "rotations": keyed(&d, super::keys::ROTATIONS).keys().cloned().collect::<Vec<_>>(),
        }),
        Collection::Training => json!({
            "id": id.as_str(),
            "kind": s(&d, "kind"),
            "title": s(&d, "title"),
            "state": id.owner(),
            "status": s(&d, "status"),
            "date": s(&d, "date"),
            "assessments": keyed(&d, "assessments").len(),
        }),
    }
}

/// A one-line description of what a change did, for the audit trail: its map puts and
/// makes by key, and its text edits counted.
pub fn change_summary(change_bytes: &[u8]) -> String {
    let Ok(change) = automerge::Change::from_bytes(change_bytes.to_vec()) else {
        return "undecodable change".into();
    };
    let expanded = change.decode();
    let mut parts: Vec<String> = Vec::new();
    let mut text_ops = 0usize;
    for op in &expanded.operations {
        use automerge::legacy::{Key, OpType};
        let key = match &op.key {
            Key::Map(k) => k.to_string(),
            Key::Seq(_) => {
                text_ops += 1;
                continue;
            }
        };
        let part = match &op.action {
            OpType::Make(t) => format!("make {key} ({t})"),
            OpType::Put(v) => {
                let mut value = v.to_string();
                if value.chars().count() > 40 {
                    value = value.chars().take(39).collect::<String>() + "…";
                }
                format!("put {key}={value}")
            }
            OpType::Delete => format!("delete {key}"),
            OpType::Increment(n) => format!("increment {key} by {n}"),
            OpType::MarkBegin(_) | OpType::MarkEnd(_) => format!("mark {key}"),
        };
        parts.push(part);
    }
    if text_ops > 0 {
        parts.push(format!("{text_ops} text edits"));
    }
    let total = parts.len();
    if total > 5 {
        parts.truncate(5);
        parts.push(format!("(+{} more)", total - 5));
    }
    if parts.is_empty() {
        "empty change".into()
    } else {
        parts.join("; ")
    }
}
