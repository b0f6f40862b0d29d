//! The typed writes that operators make, and how each becomes one Automerge change.
//!
//! A `Command` names its target document (or a new one) and edits it in a transaction.
//! Friendly checks come first (an unknown id, a lifecycle step out of order); the rules of
//! `rules` are then checked on the change itself before it is signed, so a local write is
//! refused with the same message that every other node would give.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT, ReadDoc, Value};
use serde::{Deserialize, Serialize};
use time::Date;

use super::rules::{
    AGENDA_STATUSES, EXPERT_STATUSES, MEETING_STATUSES, OBSTACLE_STATUSES, STANCES,
};
use super::{Collection, DocId};

/// A write that was refused before it was signed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Refused {
    #[error("{0}")]
    Invalid(String),
    #[error("no {what} {id}")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Rule(String),
}

fn invalid(msg: impl Into<String>) -> Refused {
    Refused::Invalid(msg.into())
}

fn am(e: automerge::AutomergeError) -> Refused {
    Refused::Invalid(format!("document error: {e}"))
}

/// The largest text field an operator may write, so that an entry stays under its limit.
pub const MAX_TEXT: usize = 16 * 1024;

/// Every operator write. The API takes these as JSON bodies, tagged by `command`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    MeetingConvene {
        title: String,
        date: String,
        venue: String,
        #[serde(default)]
        format: Option<String>,
        #[serde(default)]
        end_date: Option<String>,
        #[serde(default)]
        number: Option<u64>,
    },
    MeetingPropose {
        meeting: String,
        title: String,
        #[serde(default)]
        description: Option<String>,
    },
    MeetingDecide {
        meeting: String,
        item: String,
        decision: String,
        #[serde(default)]
        reason: Option<String>,
    },
    MeetingAttend {
        meeting: String,
        present: bool,
        #[serde(default)]
        delegates: Option<u32>,
    },
    MeetingMinutes {
        meeting: String,
        text: String,
        #[serde(default)]
        item: Option<String>,
    },
    MeetingStatus {
        meeting: String,
        status: String,
    },
    MeetingComment {
        meeting: String,
        text: String,
        #[serde(default)]
        item: Option<String>,
    },
    ObstacleReport {
        title: String,
        #[serde(rename = "type")]
        kind: String,
        description: String,
        #[serde(default)]
        subtype: Option<String>,
        #[serde(default)]
        instrument: Option<String>,
        #[serde(default)]
        article: Option<String>,
        #[serde(default)]
        channel: Option<String>,
        #[serde(default)]
        states_concerned: Vec<String>,
        #[serde(default)]
        impact: Option<u8>,
        #[serde(default)]
        solution: Option<String>,
    },
    ObstacleEdit {
        obstacle: String,
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        solution: Option<String>,
    },
    ObstacleEndorse {
        obstacle: String,
        stance: String,
        #[serde(default)]
        note: Option<String>,
    },
    ObstacleComment {
        obstacle: String,
        text: String,
    },
    ObstacleStatus {
        obstacle: String,
        status: String,
        #[serde(default)]
        reference: Option<String>,
    },
    PracticeShare {
        title: String,
        problem: String,
        practice: String,
        #[serde(default)]
        prerequisites: Option<String>,
        #[serde(default)]
        results: Option<String>,
        #[serde(default)]
        transferability: Option<String>,
        #[serde(default)]
        contact: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        related_obstacles: Vec<String>,
    },
    PracticeEndorse {
        practice: String,
        stance: String,
    },
    PracticeComment {
        practice: String,
        text: String,
    },
    FactsheetSet {
        fields: BTreeMap<String, String>,
    },
    /// Publishes where this state's nodes listen, in place of what was published before.
    AddressSet {
        addresses: Vec<String>,
    },
    /// Proposes the charter `text` as the next version of the charter in force.
    AmendmentPropose {
        text: String,
    },
    /// Signs a proposed amendment, as read now (its digest).
    AmendmentSign {
        amendment: String,
    },
    /// Rotates this state's national key: signed with the key `from` (the node's own),
    /// names the new `key`, and keeps each log of `from` up to its point (`keep`, as
    /// `docs::keys::Keep` writes it). The node makes it (`Replica::rotation`).
    KeyRotate {
        key: String,
        from: String,
        keep: String,
    },
    /// Revokes the certificates this state issued to the node `peer` (its peer id): every
    /// node refuses it, whatever certificate of this state it shows.
    NodeRevoke {
        peer: String,
    },
    TrainingNominate {
        title: String,
        expertise: String,
        #[serde(default)]
        languages: Vec<String>,
    },
    TrainingOpportunity {
        title: String,
        date: String,
        description: String,
    },
    TrainingAssess {
        item: String,
        verdict: String,
        #[serde(default)]
        note: Option<String>,
    },
}

/// Who writes, when, and under which charter.
#[derive(Clone, Copy, Debug)]
pub struct Writer<'a> {
    pub code: &'a str,
    pub now_ms: u64,
    pub today: Date,
    /// The charter in force, which an amendment amends.
    pub charter: &'a crate::charter::Charter,
}

/// The fields a fact sheet holds.
pub const FACTSHEET_FIELDS: [&str; 7] = [
    "composition",
    "availability_24_7",
    "languages",
    "judicial_authorisation",
    "contacts",
    "last_reviewed",
    "notes",
];

fn parse_doc(id: &str, collection: Collection) -> Result<DocId, Refused> {
    let doc: DocId = id
        .parse()
        .map_err(|e: super::DocIdError| Refused::Invalid(e.to_string()))?;
    if doc.collection() != collection {
        return Err(invalid(format!("{id} is not a {}", collection.item())));
    }
    Ok(doc)
}

fn check_text(field: &str, value: &str, required: bool) -> Result<(), Refused> {
    if required && value.trim().is_empty() {
        return Err(invalid(format!("missing {field}")));
    }
    if value.len() > MAX_TEXT {
        return Err(invalid(format!(
            "{field} is {} bytes, over the limit of {MAX_TEXT}",
            value.len()
        )));
    }
    Ok(())
}

fn check_date(field: &str, value: &str) -> Result<Date, Refused> {
    Date::parse(value, &time::format_description::well_known::Iso8601::DATE)
        .map_err(|_| invalid(format!("{field} {value:?} is not a date (YYYY-MM-DD)")))
}

fn check_code(value: &str) -> Result<(), Refused> {
    if (2..=8).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(invalid(format!("{value:?} is not a state code")))
    }
}

/// An id for a keyed item (agenda item, comment): the writer's code, then a ULID.
fn item_key(code: &str, ulid: ulid::Ulid) -> String {
    format!("{code}-{ulid}")
}

fn get_str<R: ReadDoc>(doc: &R, obj: &automerge::ObjId, key: &str) -> Option<String> {
    match doc.get(obj, key).ok().flatten() {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            automerge::ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        Some((Value::Object(ObjType::Text), id)) => doc.text(&id).ok(),
        _ => None,
    }
}

fn get_map<R: ReadDoc>(doc: &R, obj: &automerge::ObjId, key: &str) -> Option<automerge::ObjId> {
    match doc.get(obj, key).ok().flatten() {
        Some((Value::Object(ObjType::Map), id)) => Some(id),
        _ => None,
    }
}

/// The item `key` of the shared container `container` at the root, searched in every
/// concurrent copy of the container, the winning copy first: the item that the views show
/// (see `view::document`).
fn container_item<R: ReadDoc>(doc: &R, container: &str, key: &str) -> Option<automerge::ObjId> {
    let copies = doc.get_all(&ROOT, container).ok()?;
    copies.iter().rev().find_map(|(value, obj)| match value {
        Value::Object(ObjType::Map) => get_map(doc, obj, key),
        _ => None,
    })
}

fn put_text<T: Transactable>(tx: &mut T, key: &str, text: &str) -> Result<(), Refused> {
    let obj = tx.put_object(ROOT, key, ObjType::Text).map_err(am)?;
    tx.splice_text(&obj, 0, 0, text).map_err(am)
}

/// Replaces a text field's content with a minimal edit, keeping concurrent edits apart.
fn update_text<T: Transactable>(tx: &mut T, key: &str, text: &str) -> Result<(), Refused> {
    match tx.get(ROOT, key).map_err(am)? {
        Some((Value::Object(ObjType::Text), obj)) => tx.update_text(&obj, text).map_err(am),
        _ => put_text(tx, key, text),
    }
}

fn put_opt<T: Transactable>(
    tx: &mut T,
    obj: &automerge::ObjId,
    key: &str,
    v: &Option<String>,
) -> Result<(), Refused> {
    if let Some(v) = v {
        check_text(key, v, false)?;
        tx.put(obj, key, v.as_str()).map_err(am)?;
    }
    Ok(())
}

impl Command {
    /// The document this command writes: an existing one, or a new id.
    pub fn target(&self, writer: &Writer<'_>, ulid: ulid::Ulid) -> Result<DocId, Refused> {
        use Command::*;
        Ok(match self {
            MeetingConvene { .. } => DocId::new(Collection::Meetings, writer.code, ulid),
            MeetingPropose { meeting, .. }
            | MeetingDecide { meeting, .. }
            | MeetingAttend { meeting, .. }
            | MeetingMinutes { meeting, .. }
            | MeetingStatus { meeting, .. }
            | MeetingComment { meeting, .. } => parse_doc(meeting, Collection::Meetings)?,
            ObstacleReport { .. } => DocId::new(Collection::Obstacles, writer.code, ulid),
            ObstacleEdit { obstacle, .. }
            | ObstacleEndorse { obstacle, .. }
            | ObstacleComment { obstacle, .. }
            | ObstacleStatus { obstacle, .. } => parse_doc(obstacle, Collection::Obstacles)?,
            PracticeShare { .. } => DocId::new(Collection::Practices, writer.code, ulid),
            PracticeEndorse { practice, .. } | PracticeComment { practice, .. } => {
                parse_doc(practice, Collection::Practices)?
            }
            FactsheetSet { .. } => DocId::factsheet(writer.code),
            AddressSet { .. } => DocId::addresses(writer.code),
            AmendmentPropose { .. } => DocId::new(Collection::Amendments, writer.code, ulid),
            AmendmentSign { amendment } => parse_doc(amendment, Collection::Amendments)?,
            KeyRotate { .. } | NodeRevoke { .. } => DocId::keys(writer.code),
            TrainingNominate { .. } | TrainingOpportunity { .. } => {
                DocId::new(Collection::Training, writer.code, ulid)
            }
            TrainingAssess { item, .. } => parse_doc(item, Collection::Training)?,
        })
    }

    /// Whether the command creates its document.
    pub fn creates(&self) -> bool {
        matches!(
            self,
            Command::MeetingConvene { .. }
                | Command::ObstacleReport { .. }
                | Command::PracticeShare { .. }
                | Command::TrainingNominate { .. }
                | Command::TrainingOpportunity { .. }
                | Command::AmendmentPropose { .. }
        )
    }

    /// Makes the edits in `tx`, over `doc` (the document before the edit; empty when it is
    /// new). Returns the id of the item written: the document, or a key inside it.
    pub fn apply<T: Transactable>(
        &self,
        tx: &mut T,
        doc: &Automerge,
        id: &DocId,
        writer: &Writer<'_>,
        ulid: ulid::Ulid,
    ) -> Result<String, Refused> {
        use Command::*;
        let exists = !doc.get_heads().is_empty();
        if !self.creates()
            && !exists
            && !matches!(
                self,
                FactsheetSet { .. } | AddressSet { .. } | KeyRotate { .. } | NodeRevoke { .. }
            )
        {
            return Err(Refused::NotFound {
                what: id.collection().item(),
                id: id.to_string(),
            });
        }
        let now = i64::try_from(writer.now_ms).unwrap_or(i64::MAX);
        let created = |tx: &mut T, kind: &str| -> Result<(), Refused> {
            tx.put(ROOT, "kind", kind).map_err(am)?;
            tx.put(ROOT, "created", now).map_err(am)?;
            Ok(())
        };
        match self {
            MeetingConvene {
                title,
                date,
                venue,
                format,
                end_date,
                number,
            } => {
                check_text("title", title, true)?;
                check_text("venue", venue, true)?;
                let day = check_date("date", date)?;
                if let Some(end) = end_date
                    && check_date("end_date", end)? < day
                {
                    return Err(invalid("end_date is before date"));
                }
                let format = format.clone().unwrap_or_else(|| "physical".into());
                if !["physical", "hybrid", "virtual"].contains(&format.as_str()) {
                    return Err(invalid("format is physical, hybrid or virtual"));
                }
                created(tx, "meeting")?;
                tx.put(ROOT, "title", title.as_str()).map_err(am)?;
                tx.put(ROOT, "date", date.as_str()).map_err(am)?;
                put_opt(tx, &ROOT, "end_date", end_date)?;
                tx.put(ROOT, "venue", venue.as_str()).map_err(am)?;
                tx.put(ROOT, "format", format.as_str()).map_err(am)?;
                tx.put(ROOT, "term", crate::charter::half_year_label(day))
                    .map_err(am)?;
                if let Some(n) = number {
                    tx.put(ROOT, "number", *n).map_err(am)?;
                }
                tx.put(ROOT, "status", "convened").map_err(am)?;
                for container in ["agenda", "attendance", "comments", "actions"] {
                    tx.put_object(ROOT, container, ObjType::Map).map_err(am)?;
                }
                put_text(tx, "minutes", "")?;
                Ok(id.to_string())
            }
            MeetingPropose {
                title, description, ..
            } => {
                check_text("title", title, true)?;
                let status = get_str(doc, &ROOT, "status").unwrap_or_default();
                if status != "convened" {
                    return Err(invalid(format!(
                        "the agenda is closed to proposals (meeting status {status})"
                    )));
                }
                let agenda = get_map(doc, &ROOT, "agenda")
                    .ok_or_else(|| invalid("meeting has no agenda"))?;
                let key = item_key(writer.code, ulid);
                let item = tx
                    .put_object(&agenda, key.as_str(), ObjType::Map)
                    .map_err(am)?;
                tx.put(&item, "title", title.as_str()).map_err(am)?;
                tx.put(&item, "proposer", writer.code).map_err(am)?;
                put_opt(tx, &item, "description", description)?;
                tx.put(&item, "status", "proposed").map_err(am)?;
                Ok(key)
            }
            MeetingDecide {
                item,
                decision,
                reason,
                ..
            } => {
                if !AGENDA_STATUSES[1..].contains(&decision.as_str()) {
                    return Err(invalid("a decision is accepted, deferred or rejected"));
                }
                let entry =
                    container_item(doc, "agenda", item).ok_or_else(|| Refused::NotFound {
                        what: "agenda item",
                        id: item.clone(),
                    })?;
                put_opt(tx, &entry, "reason", reason)?;
                tx.put(&entry, "status", decision.as_str()).map_err(am)?;
                Ok(item.clone())
            }
            MeetingAttend {
                present, delegates, ..
            } => {
                let attendance = get_map(doc, &ROOT, "attendance")
                    .ok_or_else(|| invalid("meeting has no attendance"))?;
                let mine = match container_item(doc, "attendance", writer.code) {
                    Some(m) => m,
                    None => tx
                        .put_object(&attendance, writer.code, ObjType::Map)
                        .map_err(am)?,
                };
                tx.put(&mine, "present", *present).map_err(am)?;
                tx.put(
                    &mine,
                    "delegates",
                    i64::from(delegates.unwrap_or(u32::from(*present))),
                )
                .map_err(am)?;
                Ok(writer.code.to_owned())
            }
            MeetingMinutes { text, item, .. } => {
                check_text("minutes", text, true)?;
                match item {
                    None => update_text(tx, "minutes", text)?,
                    Some(item) => {
                        let entry = container_item(doc, "agenda", item).ok_or_else(|| {
                            Refused::NotFound {
                                what: "agenda item",
                                id: item.clone(),
                            }
                        })?;
                        tx.put(&entry, "minutes", text.as_str()).map_err(am)?;
                    }
                }
                Ok(id.to_string())
            }
            MeetingStatus { status, .. } => {
                let current = get_str(doc, &ROOT, "status").unwrap_or_default();
                let pos = |s: &str| MEETING_STATUSES.iter().position(|x| *x == s);
                let to = pos(status).ok_or_else(|| {
                    invalid("a meeting status is one of convened, agenda_frozen, held, minutes_approved, closed")
                })?;
                match pos(&current) {
                    Some(from) if to == from + 1 => {}
                    _ => {
                        return Err(invalid(format!(
                            "a meeting moves from {current} only to {}",
                            MEETING_STATUSES
                                .iter()
                                .position(|x| *x == current)
                                .and_then(|i| MEETING_STATUSES.get(i + 1))
                                .unwrap_or(&"nothing")
                        )));
                    }
                }
                tx.put(ROOT, "status", status.as_str()).map_err(am)?;
                Ok(id.to_string())
            }
            MeetingComment { text, item, .. } => {
                check_text("text", text, true)?;
                comment(tx, doc, writer, ulid, text, item.as_deref(), now)
            }
            ObstacleReport {
                title,
                kind,
                description,
                subtype,
                instrument,
                article,
                channel,
                states_concerned,
                impact,
                solution,
            } => {
                check_text("title", title, true)?;
                check_text("description", description, true)?;
                if kind != "legal" && kind != "pragmatic" {
                    return Err(invalid("type is legal or pragmatic"));
                }
                if let Some(i) = impact
                    && !(1..=4).contains(i)
                {
                    return Err(invalid("impact is 1 to 4"));
                }
                created(tx, "obstacle")?;
                tx.put(ROOT, "title", title.as_str()).map_err(am)?;
                tx.put(ROOT, "type", kind.as_str()).map_err(am)?;
                tx.put(ROOT, "reporter", writer.code).map_err(am)?;
                put_text(tx, "description", description)?;
                for (k, v) in [
                    ("subtype", subtype),
                    ("instrument", instrument),
                    ("article", article),
                    ("channel", channel),
                    ("solution", solution),
                ] {
                    put_opt(tx, &ROOT, k, v)?;
                }
                if let Some(i) = impact {
                    tx.put(ROOT, "impact", i64::from(*i)).map_err(am)?;
                }
                let concerned = tx
                    .put_object(ROOT, "states_concerned", ObjType::Map)
                    .map_err(am)?;
                for code in states_concerned {
                    check_code(code)?;
                    tx.put(&concerned, code.as_str(), true).map_err(am)?;
                }
                tx.put(ROOT, "status", "reported").map_err(am)?;
                tx.put_object(ROOT, "endorsements", ObjType::Map)
                    .map_err(am)?;
                tx.put_object(ROOT, "comments", ObjType::Map).map_err(am)?;
                Ok(id.to_string())
            }
            ObstacleEdit {
                title,
                description,
                solution,
                ..
            } => {
                if title.is_none() && description.is_none() && solution.is_none() {
                    return Err(invalid("nothing to edit"));
                }
                if let Some(t) = title {
                    check_text("title", t, true)?;
                    tx.put(ROOT, "title", t.as_str()).map_err(am)?;
                }
                if let Some(d) = description {
                    check_text("description", d, true)?;
                    update_text(tx, "description", d)?;
                }
                put_opt(tx, &ROOT, "solution", solution)?;
                Ok(id.to_string())
            }
            ObstacleEndorse { stance, .. } | PracticeEndorse { stance, .. }
                if !STANCES.contains(&stance.as_str()) =>
            {
                Err(invalid("stance is support, object or abstain"))
            }
            ObstacleEndorse { stance, note, .. } => endorse(tx, doc, writer, stance, note, now),
            PracticeEndorse { stance, .. } => endorse(tx, doc, writer, stance, &None, now),
            ObstacleComment { text, .. } | PracticeComment { text, .. } => {
                check_text("text", text, true)?;
                comment(tx, doc, writer, ulid, text, None, now)
            }
            ObstacleStatus {
                status, reference, ..
            } => {
                if !OBSTACLE_STATUSES.contains(&status.as_str()) {
                    return Err(invalid(format!(
                        "status is one of {}",
                        OBSTACLE_STATUSES.join(", ")
                    )));
                }
                put_opt(tx, &ROOT, "status_ref", reference)?;
                tx.put(ROOT, "status", status.as_str()).map_err(am)?;
                Ok(id.to_string())
            }
            PracticeShare {
                title,
                problem,
                practice,
                prerequisites,
                results,
                transferability,
                contact,
                tags,
                related_obstacles,
            } => {
                check_text("title", title, true)?;
                check_text("problem", problem, true)?;
                check_text("practice", practice, true)?;
                if let Some(c) = contact
                    && !c.contains('@')
                {
                    return Err(invalid("contact is a functional mailbox (name@domain)"));
                }
                created(tx, "practice")?;
                tx.put(ROOT, "title", title.as_str()).map_err(am)?;
                tx.put(ROOT, "author", writer.code).map_err(am)?;
                tx.put(ROOT, "problem", problem.as_str()).map_err(am)?;
                put_text(tx, "practice", practice)?;
                for (k, v) in [
                    ("prerequisites", prerequisites),
                    ("results", results),
                    ("transferability", transferability),
                    ("contact", contact),
                ] {
                    put_opt(tx, &ROOT, k, v)?;
                }
                tx.put(ROOT, "tags", tags.join(",")).map_err(am)?;
                for o in related_obstacles {
                    parse_doc(o, Collection::Obstacles)?;
                }
                tx.put(ROOT, "related_obstacles", related_obstacles.join(","))
                    .map_err(am)?;
                tx.put_object(ROOT, "endorsements", ObjType::Map)
                    .map_err(am)?;
                tx.put_object(ROOT, "comments", ObjType::Map).map_err(am)?;
                Ok(id.to_string())
            }
            FactsheetSet { fields } => {
                if fields.is_empty() {
                    return Err(invalid("no fields to set"));
                }
                for (k, v) in fields {
                    if !FACTSHEET_FIELDS.contains(&k.as_str()) {
                        return Err(invalid(format!(
                            "unknown fact sheet field {k:?} (one of {})",
                            FACTSHEET_FIELDS.join(", ")
                        )));
                    }
                    check_text(k, v, false)?;
                }
                if !exists {
                    created(tx, "factsheet")?;
                    tx.put(ROOT, "state", writer.code).map_err(am)?;
                }
                for (k, v) in fields {
                    tx.put(ROOT, k.as_str(), v.as_str()).map_err(am)?;
                }
                tx.put(ROOT, "last_reviewed", writer.today.to_string())
                    .map_err(am)?;
                Ok(id.to_string())
            }
            AddressSet { addresses } => {
                let text = addresses.join(" ");
                super::addresses::parse(&text).map_err(invalid)?;
                if !exists {
                    created(tx, "addresses")?;
                    tx.put(ROOT, "state", writer.code).map_err(am)?;
                }
                tx.put(ROOT, super::addresses::FIELD, text).map_err(am)?;
                tx.put(ROOT, "updated", writer.today.to_string())
                    .map_err(am)?;
                Ok(id.to_string())
            }
            AmendmentPropose { text } => {
                use super::amendments::{AMENDS, SIGNATURES, TEXT, check_text, digest};
                check_text(text, &writer.charter.network).map_err(invalid)?;
                let proposed = writer.charter.amend(text).map_err(|e| {
                    invalid(format!(
                        "the proposed charter is no amendment of version {}: {e}",
                        writer.charter.version
                    ))
                })?;
                if proposed.hash() == writer.charter.hash() {
                    return Err(invalid("the proposed charter is the charter in force"));
                }
                created(tx, "amendment")?;
                tx.put(ROOT, AMENDS, u64::from(writer.charter.version))
                    .map_err(am)?;
                tx.put(ROOT, TEXT, text.as_str()).map_err(am)?;
                let signatures = tx.put_object(ROOT, SIGNATURES, ObjType::Map).map_err(am)?;
                // A member state that proposes signs what it proposes.
                if writer
                    .charter
                    .participant(writer.code)
                    .is_some_and(|p| p.kind == crate::charter::Kind::MemberState)
                {
                    tx.put(
                        &signatures,
                        writer.code,
                        digest(writer.charter.version, text),
                    )
                    .map_err(am)?;
                }
                Ok(id.to_string())
            }
            AmendmentSign { .. } => {
                use super::amendments::{SIGNATURES, read};
                let proposal = read(id, doc)
                    .ok_or_else(|| invalid(format!("{id} is not a well-formed amendment")))?;
                if proposal.amends != writer.charter.version {
                    return Err(invalid(format!(
                        "{id} amends version {}, and version {} is in force: it must be proposed again",
                        proposal.amends, writer.charter.version
                    )));
                }
                if proposal.signatures.contains(writer.code) {
                    return Err(invalid(format!("{} signed {id} already", writer.code)));
                }
                let signatures = get_map(doc, &ROOT, SIGNATURES)
                    .ok_or_else(|| invalid(format!("{id} has no signatures")))?;
                tx.put(&signatures, writer.code, proposal.digest.as_str())
                    .map_err(am)?;
                Ok(id.to_string())
            }
            KeyRotate { key, from, keep } => {
                use super::keys::{FROM, KEEP, Keep, ROTATIONS};
                let to: crate::identity::PublicKey = key
                    .parse()
                    .map_err(|_| invalid(format!("{key:?} is not a public key")))?;
                keep.parse::<Keep>()
                    .map_err(|e| invalid(format!("a rotation's points: {e}")))?;
                if !exists {
                    created(tx, "keys")?;
                    tx.put(ROOT, "state", writer.code).map_err(am)?;
                }
                let rotations = match get_map(doc, &ROOT, ROTATIONS) {
                    Some(rotations) => rotations,
                    None => tx.put_object(ROOT, ROTATIONS, ObjType::Map).map_err(am)?,
                };
                if get_map(doc, &rotations, &to.to_string()).is_some() {
                    return Err(invalid(format!("{to} was rotated to already")));
                }
                let rotation = tx
                    .put_object(&rotations, to.to_string(), ObjType::Map)
                    .map_err(am)?;
                tx.put(&rotation, FROM, from.as_str()).map_err(am)?;
                tx.put(&rotation, KEEP, keep.as_str()).map_err(am)?;
                Ok(to.to_string())
            }
            NodeRevoke { peer } => {
                use super::keys::{NODES_REVOKED, is_peer_id};
                if !is_peer_id(peer) {
                    return Err(invalid(format!("{peer:?} is not a node's peer id")));
                }
                if !exists {
                    created(tx, "keys")?;
                    tx.put(ROOT, "state", writer.code).map_err(am)?;
                }
                let nodes = match get_map(doc, &ROOT, NODES_REVOKED) {
                    Some(nodes) => nodes,
                    None => tx
                        .put_object(ROOT, NODES_REVOKED, ObjType::Map)
                        .map_err(am)?,
                };
                if doc.get(&nodes, peer.as_str()).ok().flatten().is_some() {
                    return Err(invalid(format!("node {peer} is revoked already")));
                }
                tx.put(&nodes, peer.as_str(), now).map_err(am)?;
                Ok(peer.clone())
            }
            TrainingNominate {
                title,
                expertise,
                languages,
            } => {
                check_text("title", title, true)?;
                check_text("expertise", expertise, true)?;
                created(tx, "expert")?;
                tx.put(ROOT, "title", title.as_str()).map_err(am)?;
                tx.put(ROOT, "expertise", expertise.as_str()).map_err(am)?;
                tx.put(ROOT, "languages", languages.join(",")).map_err(am)?;
                tx.put(ROOT, "state", writer.code).map_err(am)?;
                tx.put(ROOT, "status", "nominated").map_err(am)?;
                tx.put_object(ROOT, "assessments", ObjType::Map)
                    .map_err(am)?;
                Ok(id.to_string())
            }
            TrainingOpportunity {
                title,
                date,
                description,
            } => {
                check_text("title", title, true)?;
                check_text("description", description, true)?;
                check_date("date", date)?;
                created(tx, "opportunity")?;
                tx.put(ROOT, "title", title.as_str()).map_err(am)?;
                tx.put(ROOT, "date", date.as_str()).map_err(am)?;
                tx.put(ROOT, "organiser", writer.code).map_err(am)?;
                put_text(tx, "description", description)?;
                Ok(id.to_string())
            }
            TrainingAssess { verdict, note, .. } => {
                if !EXPERT_STATUSES[1..].contains(&verdict.as_str()) {
                    return Err(invalid("a verdict is assessed, listed or retired"));
                }
                if get_str(doc, &ROOT, "kind").as_deref() != Some("expert") {
                    return Err(invalid(format!("{id} is not an expert nomination")));
                }
                let assessments =
                    get_map(doc, &ROOT, "assessments").ok_or_else(|| invalid("no assessments"))?;
                let mine = tx
                    .put_object(&assessments, writer.code, ObjType::Map)
                    .map_err(am)?;
                tx.put(&mine, "verdict", verdict.as_str()).map_err(am)?;
                put_opt(tx, &mine, "note", note)?;
                tx.put(ROOT, "status", verdict.as_str()).map_err(am)?;
                Ok(id.to_string())
            }
        }
    }
}

fn endorse<T: Transactable>(
    tx: &mut T,
    doc: &Automerge,
    writer: &Writer<'_>,
    stance: &str,
    note: &Option<String>,
    now: i64,
) -> Result<String, Refused> {
    let endorsements =
        get_map(doc, &ROOT, "endorsements").ok_or_else(|| invalid("no endorsements"))?;
    let mine = match container_item(doc, "endorsements", writer.code) {
        Some(m) => m,
        None => tx
            .put_object(&endorsements, writer.code, ObjType::Map)
            .map_err(am)?,
    };
    tx.put(&mine, "stance", stance).map_err(am)?;
    tx.put(&mine, "at", now).map_err(am)?;
    put_opt(tx, &mine, "note", note)?;
    Ok(writer.code.to_owned())
}

fn comment<T: Transactable>(
    tx: &mut T,
    doc: &Automerge,
    writer: &Writer<'_>,
    ulid: ulid::Ulid,
    text: &str,
    item: Option<&str>,
    now: i64,
) -> Result<String, Refused> {
    let comments = get_map(doc, &ROOT, "comments").ok_or_else(|| invalid("no comments"))?;
    let key = item_key(writer.code, ulid);
    let c = tx
        .put_object(&comments, key.as_str(), ObjType::Map)
        .map_err(am)?;
    tx.put(&c, "author", writer.code).map_err(am)?;
    tx.put(&c, "text", text).map_err(am)?;
    tx.put(&c, "at", now).map_err(am)?;
    if let Some(item) = item {
        tx.put(&c, "item", item).map_err(am)?;
    }
    Ok(key)
}
