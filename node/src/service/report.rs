//! The Presidency's draft note to the IXIM working party for one term, in Markdown.
//!
//! What happened in a term is read from the signed entries whose timestamps fall in it
//! (a meeting convened, an obstacle opened, resolved or escalated, a practice shared or
//! endorsed, an expert nominated or assessed), which the store indexes by term; the
//! documents' summaries give the titles. Its cost follows the term, not the history.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::charter::{Charter, parse_half_year};
use crate::docs::{Collection, DocId};
use crate::log::SignedEntry;
use crate::store::Reader;

use super::actor::Failure;

#[derive(Default)]
struct Tally {
    convened: BTreeSet<DocId>,
    opened: BTreeSet<DocId>,
    resolved: BTreeSet<DocId>,
    escalated: BTreeSet<DocId>,
    shared: BTreeSet<DocId>,
    endorsements: BTreeMap<DocId, BTreeSet<String>>,
    nominated: BTreeSet<DocId>,
    assessed: BTreeSet<DocId>,
    opportunities: BTreeSet<DocId>,
}

fn title(store: &Reader, id: &DocId) -> String {
    store
        .summary(id)
        .ok()
        .flatten()
        .and_then(|s| s.get("title").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| id.to_string())
}

/// The start and the end (excluded) of a term, in milliseconds since the epoch.
fn window(from: time::Date, to: time::Date) -> (u64, u64) {
    let ms = |d: time::Date| {
        u64::try_from(d.midnight().assume_utc().unix_timestamp()).unwrap_or(0) * 1000
    };
    (ms(from), to.next_day().map_or(u64::MAX, ms))
}

impl Tally {
    /// Takes in one entry of the term: what its change made or set.
    fn take(&mut self, charter: &Charter, e: &SignedEntry) {
        let Ok(change) = automerge::Change::from_bytes(e.entry.change.clone()) else {
            return;
        };
        let creating = change.deps().is_empty();
        let id = e.entry.doc.clone();
        // Only these keys count, by collection. A change whose bytes do not hold one of
        // them cannot set it, since Automerge keeps map keys as plain UTF-8 in the stored
        // (uncompressed) change: it is not decoded into one legacy operation per character
        // of its text, which is most of a report's time and memory.
        let keys: &[&str] = match id.collection() {
            Collection::Obstacles => &["status"],
            Collection::Practices => &["stance"],
            Collection::Training => &["kind", "verdict"],
            Collection::Meetings
            | Collection::Factsheets
            | Collection::Addresses
            | Collection::Amendments
            | Collection::Keys => &[],
        };
        let puts: Vec<(String, String)> = if keys.iter().any(|k| may_put(&change, k)) {
            change
                .decode()
                .operations
                .iter()
                .filter_map(|op| match (&op.key, &op.action) {
                    (automerge::legacy::Key::Map(k), automerge::legacy::OpType::Put(v))
                        if keys.contains(&k.as_str()) =>
                    {
                        Some((k.to_string(), v.as_str().unwrap_or_default().to_owned()))
                    }
                    _ => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let put = |key: &str, value: &str| puts.iter().any(|(k, v)| k == key && v == value);
        match id.collection() {
            Collection::Meetings if creating => {
                self.convened.insert(id);
            }
            Collection::Obstacles => {
                if creating {
                    self.opened.insert(id.clone());
                }
                if put("status", "resolved") || put("status", "closed_no_action") {
                    self.resolved.insert(id.clone());
                }
                if put("status", "escalated") {
                    self.escalated.insert(id);
                }
            }
            Collection::Practices => {
                if creating {
                    self.shared.insert(id.clone());
                }
                if put("stance", "support") {
                    let code = charter
                        .participant_by_key(&e.entry.author)
                        .map(|p| p.code.clone())
                        .unwrap_or_default();
                    self.endorsements.entry(id).or_default().insert(code);
                }
            }
            Collection::Training => {
                if creating && put("kind", "expert") {
                    self.nominated.insert(id.clone());
                }
                if creating && put("kind", "opportunity") {
                    self.opportunities.insert(id.clone());
                }
                if puts.iter().any(|(k, _)| k == "verdict") {
                    self.assessed.insert(id);
                }
            }
            _ => {}
        }
    }
}

/// Whether `change` may put `key` in a map: its stored bytes, uncompressed, hold the key.
fn may_put(change: &automerge::Change, key: &str) -> bool {
    change
        .raw_bytes()
        .windows(key.len())
        .any(|w| w == key.as_bytes())
}

/// The meetings dated in a term, whenever they were convened.
fn meetings_in(store: &Reader, from: time::Date, to: time::Date) -> Result<Vec<Value>, Failure> {
    Ok(store.meetings_dated(&from.to_string(), &to.to_string())?)
}

/// Drafts the note for `term` (`YYYY-H1` or `YYYY-H2`). It reads the term's entries one
/// at a time from the store, and runs beside the node's actor, never on it.
pub fn draft(charter: &Charter, store: &Reader, term: &str) -> Result<Value, Failure> {
    let (from, to) = parse_half_year(term)
        .ok_or_else(|| Failure::BadRequest(format!("term {term:?} is not YYYY-H1 or YYYY-H2")))?;
    let presidency = charter.presidency_at(from).map(|t| t.state.clone());
    let (start_ms, end_ms) = window(from, to);
    let mut tally = Tally::default();
    store.for_each_term_entry(term, |e| {
        if (start_ms..end_ms).contains(&e.entry.timestamp_ms) {
            tally.take(charter, &e);
        }
        Ok::<_, Failure>(())
    })?;
    let meetings = meetings_in(store, from, to)?;

    let name = presidency
        .as_deref()
        .and_then(|p| charter.participant(p))
        .map_or("the", |p| p.name.as_str());
    let mut md = format!(
        "# European network of Heads of SPOC: report of the {name} Presidency, {term}\n\n\
         Draft note from the Presidency to the IXIM working party, covering {from} to {to}.\n\n"
    );
    md.push_str("## Meetings\n\n");
    if meetings.is_empty() {
        md.push_str("No meeting was held in this term.\n\n");
    }
    let mut topics = Vec::new();
    for m in &meetings {
        let attended = m["attendance"].as_u64().unwrap_or(0);
        md.push_str(&format!(
            "- {} ({}, {}, {}): {}; {attended} {} attended.\n",
            m["title"].as_str().unwrap_or_default(),
            m["date"].as_str().unwrap_or_default(),
            m["venue"].as_str().unwrap_or_default(),
            m["format"].as_str().unwrap_or_default(),
            m["status"].as_str().unwrap_or_default(),
            if attended == 1 {
                "participant"
            } else {
                "participants"
            },
        ));
        for item in m["agenda"].as_array().into_iter().flatten() {
            if item["status"] == "accepted" {
                topics.push(format!(
                    "- {} (proposed by {})\n",
                    item["title"].as_str().unwrap_or_default(),
                    item["proposer"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    md.push_str("\n## Topics\n\n");
    if topics.is_empty() {
        md.push_str("No agenda item was accepted in this term.\n");
    }
    for t in &topics {
        md.push_str(t);
    }
    let list = |md: &mut String, heading: &str, ids: &BTreeSet<DocId>| {
        md.push_str(&format!("\n### {heading}: {}\n\n", ids.len()));
        for id in ids {
            md.push_str(&format!(
                "- {} ({}, {})\n",
                title(store, id),
                id.owner(),
                id
            ));
        }
    };
    md.push_str("\n## Obstacles to cross-border cooperation\n");
    list(&mut md, "Opened", &tally.opened);
    list(&mut md, "Resolved or closed", &tally.resolved);
    list(&mut md, "Escalated", &tally.escalated);
    md.push_str("\n## Best practices\n");
    list(&mut md, "Shared", &tally.shared);
    md.push_str(&format!("\n### Endorsed: {}\n\n", tally.endorsements.len()));
    for (id, states) in &tally.endorsements {
        md.push_str(&format!(
            "- {} (supported by {})\n",
            title(store, id),
            states.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    md.push_str("\n## Training\n");
    list(&mut md, "Experts nominated", &tally.nominated);
    list(&mut md, "Experts assessed", &tally.assessed);
    list(&mut md, "Training opportunities", &tally.opportunities);
    Ok(json!({
        "term": term,
        "presidency": presidency,
        "markdown": md,
        "meetings": meetings.len(),
        "convened": tally.convened.len(),
        "obstacles_opened": tally.opened.len(),
        "obstacles_resolved": tally.resolved.len(),
        "obstacles_escalated": tally.escalated.len(),
        "practices_shared": tally.shared.len(),
        "practices_endorsed": tally.endorsements.len(),
        "experts_nominated": tally.nominated.len(),
    }))
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{Automerge, Change, ObjType, ROOT};

    /// The keys a change puts in maps, decoded the slow way.
    fn put_keys(change: &Change) -> Vec<String> {
        change
            .decode()
            .operations
            .iter()
            .filter_map(|op| match (&op.key, &op.action) {
                (automerge::legacy::Key::Map(k), automerge::legacy::OpType::Put(_)) => {
                    Some(k.to_string())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_change_that_puts_a_key_holds_it_in_its_bytes_even_when_it_travelled_compressed() {
        let mut doc = Automerge::new();
        let long = "delay in the exchange of data with the court ".repeat(200);
        let mut tx = doc.transaction();
        tx.put(ROOT, "title", "A long report").expect("put");
        let text = tx
            .put_object(ROOT, "description", ObjType::Text)
            .expect("text");
        tx.splice_text(&text, 0, 0, &long).expect("splice");
        tx.commit();
        let mut tx = doc.transaction();
        tx.put(ROOT, "status", "resolved").expect("put");
        tx.commit();
        let mut tx = doc.transaction();
        let comments = tx.put_object(ROOT, "comments", ObjType::Map).expect("map");
        tx.put(&comments, "c1", long.as_str()).expect("put");
        tx.commit();
        for mut change in doc.get_changes(&[]) {
            // A change arrives as the bytes its author sent: compressed when it is large.
            let sent = change.bytes().into_owned();
            let got = Change::from_bytes(sent).expect("a change");
            for key in ["title", "status", "stance", "kind", "verdict", "c1"] {
                if put_keys(&got).iter().any(|k| k == key) {
                    assert!(super::may_put(&got, key), "{key} put but not found");
                }
            }
            let puts_status = put_keys(&got).iter().any(|k| k == "status");
            if !puts_status {
                // The long text does not hold the word: nothing to decode.
                assert!(!super::may_put(&got, "status"));
            }
        }
    }
}
